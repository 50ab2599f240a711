/*
 * websocket.c — RFC 6455 pieces for /api/events (see websocket.h): the
 * handshake's accept value and frame headers, both ways.
 *
 * Owns: pure functions over (pointer, length) only.
 * Must never: read past n, allocate, accept a client frame that is not
 * masked (§5.1: the server must close), or a control frame that is
 * fragmented or longer than 125 bytes (§5.5).
 */
#include "http/websocket.h"

#include <openssl/evp.h>
#include <string.h>
#include <strings.h>

#include "core/err.h"

static bool b64_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '+' || c == '/';
}

int ws_accept_key(const char *key, size_t n, char out[WS_ACCEPT_LEN + 1])
{
	while (n && (*key == ' ' || *key == '\t'))
		key++, n--;
	while (n && (key[n - 1] == ' ' || key[n - 1] == '\t'))
		n--;
	/* 16 bytes in base64: 22 characters and "==" */
	if (n != 24 || key[22] != '=' || key[23] != '=')
		return TERN_ESYNTAX;
	for (size_t i = 0; i < 22; i++)
		if (!b64_char(key[i]))
			return TERN_ESYNTAX;
	unsigned char in[24 + sizeof(WS_GUID)];
	memcpy(in, key, 24);
	memcpy(in + 24, WS_GUID, sizeof(WS_GUID) - 1);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	if (!EVP_Digest(in, 24 + sizeof(WS_GUID) - 1, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20)
		return TERN_ESYNTAX;
	/* EVP_EncodeBlock writes 28 characters and a NUL for 20 bytes */
	if (EVP_EncodeBlock((unsigned char *)out, md, 20) != WS_ACCEPT_LEN)
		return TERN_ESYNTAX;
	return TERN_OK;
}

bool ws_header_has_token(const char *value, const char *token)
{
	size_t tl = strlen(token);
	const char *p = value;
	while (p && *p) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		const char *e = p;
		while (*e && *e != ',')
			e++;
		const char *t = e;
		while (t > p && (t[-1] == ' ' || t[-1] == '\t'))
			t--;
		if ((size_t)(t - p) == tl && strncasecmp(p, token, tl) == 0)
			return true;
		p = e;
	}
	return false;
}

int ws_frame_parse(const uint8_t *p, size_t n, uint64_t max_payload, struct ws_frame *f)
{
	if (n < 2)
		return TERN_ENOTFOUND;
	memset(f, 0, sizeof(*f));
	f->fin = (p[0] & 0x80) != 0;
	f->opcode = p[0] & 0x0f;
	if (p[0] & 0x70)
		return TERN_ESYNTAX; /* no extension was negotiated */
	switch (f->opcode) {
	case WS_OP_CONT:
	case WS_OP_TEXT:
	case WS_OP_BINARY:
		break;
	case WS_OP_CLOSE:
	case WS_OP_PING:
	case WS_OP_PONG:
		if (!f->fin || (p[1] & 0x7f) > 125)
			return TERN_ESYNTAX;
		break;
	default:
		return TERN_ESYNTAX;
	}
	f->masked = (p[1] & 0x80) != 0;
	if (!f->masked)
		return TERN_ESYNTAX;
	uint64_t len = p[1] & 0x7f;
	size_t h = 2;
	if (len == 126) {
		if (n < 4)
			return TERN_ENOTFOUND;
		len = ((uint64_t)p[2] << 8) | p[3];
		if (len < 126)
			return TERN_ESYNTAX; /* §5.2: the minimal number of bytes */
		h = 4;
	} else if (len == 127) {
		if (n < 10)
			return TERN_ENOTFOUND;
		if (p[2] & 0x80)
			return TERN_ESYNTAX;
		len = 0;
		for (int i = 2; i < 10; i++)
			len = (len << 8) | p[i];
		if (len <= 0xffff)
			return TERN_ESYNTAX;
		h = 10;
	}
	if (n < h + 4)
		return TERN_ENOTFOUND;
	memcpy(f->mask, p + h, 4);
	h += 4;
	if (len > max_payload)
		return TERN_ELIMIT;
	f->header_len = h;
	f->payload_len = len;
	return TERN_OK;
}

void ws_unmask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t off)
{
	for (size_t i = 0; i < n; i++)
		p[i] ^= mask[(off + i) & 3];
}

size_t ws_frame_header(unsigned opcode, uint64_t len, uint8_t hdr[WS_HEADER_MAX])
{
	hdr[0] = (uint8_t)(0x80 | (opcode & 0x0f));
	if (len < 126) {
		hdr[1] = (uint8_t)len;
		return 2;
	}
	if (len <= 0xffff) {
		hdr[1] = 126;
		hdr[2] = (uint8_t)(len >> 8);
		hdr[3] = (uint8_t)len;
		return 4;
	}
	hdr[1] = 127;
	for (int i = 0; i < 8; i++)
		hdr[2 + i] = (uint8_t)(len >> (56 - 8 * i));
	return 10;
}
