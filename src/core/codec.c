/*
 * codec.c — base64 (RFC 4648), quoted-printable (RFC 2045 §6.7) and URL
 * percent-decoding (RFC 3986 §2.1).
 *
 * Owns: the byte-level encodings only. Pure: no I/O, no global state, no
 * read past in + len (input is never assumed NUL-terminated); output is
 * appended to the caller's capped tbuf.
 * Must never: leave a partial encoding in the output on failure (every
 * function rolls the buffer back to its entry length), accept a base64
 * string that does not re-encode to itself, or emit an 8-bit or over-long
 * line from the QP encoder.
 */
#include "core/codec.h"

#include <stdbool.h>
#include <stdint.h>

#include "core/err.h"

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static const char hex_upper[] = "0123456789ABCDEF";

/* --------------------------------------------------------------- base64 */

size_t tern_base64_encoded_len(size_t n)
{
	size_t groups = n / 3 + (n % 3 != 0);
	if (groups > SIZE_MAX / 4)
		return SIZE_MAX;
	return groups * 4;
}

int tern_base64_encode(const void *in, size_t len, struct tbuf *out)
{
	const unsigned char *s = in;
	size_t need = tern_base64_encoded_len(len);
	if (need == SIZE_MAX)
		return TERN_ELIMIT;
	int rc = tbuf_reserve(out, need);
	if (rc != TERN_OK)
		return rc;
	char *d = out->data + out->len;
	size_t i = 0;
	for (; i + 3 <= len; i += 3) {
		uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
		*d++ = b64_alphabet[(v >> 18) & 63];
		*d++ = b64_alphabet[(v >> 12) & 63];
		*d++ = b64_alphabet[(v >> 6) & 63];
		*d++ = b64_alphabet[v & 63];
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)s[i] << 16;
		*d++ = b64_alphabet[(v >> 18) & 63];
		*d++ = b64_alphabet[(v >> 12) & 63];
		*d++ = '=';
		*d++ = '=';
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
		*d++ = b64_alphabet[(v >> 18) & 63];
		*d++ = b64_alphabet[(v >> 12) & 63];
		*d++ = b64_alphabet[(v >> 6) & 63];
		*d++ = '=';
	}
	out->len += need;
	out->data[out->len] = '\0';
	return TERN_OK;
}

/* 0..63 for a character of the base64 (RFC 4648 §4) or base64url (§5)
 * alphabet, -1 for anything else ('=' included). */
static int b64_value(unsigned char c, bool url)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == (url ? '-' : '+'))
		return 62;
	if (c == (url ? '_' : '/'))
		return 63;
	return -1;
}

/*
 * Decodes n alphabet characters without padding. A last group of 2 or 3
 * characters is a partial quantum; its unused bits must be zero (the
 * canonical form, RFC 4648 §3.5); a last group of 1 carries no whole byte.
 * Everything is validated before the buffer is touched, so a failure
 * leaves it unchanged without a rollback.
 */
static int b64_decode_unpadded(const unsigned char *s, size_t n, bool url, struct tbuf *out)
{
	size_t rem = n % 4, nout = n / 4 * 3 + (rem ? rem - 1 : 0);
	uint32_t v = 0;
	unsigned bits = 0;

	if (rem == 1)
		return TERN_ESYNTAX;
	for (size_t i = 0; i < n; i++)
		if (b64_value(s[i], url) < 0)
			return TERN_ESYNTAX;
	if (rem == 2 && (b64_value(s[n - 1], url) & 0x0f) != 0)
		return TERN_ESYNTAX;
	if (rem == 3 && (b64_value(s[n - 1], url) & 0x03) != 0)
		return TERN_ESYNTAX;
	int rc = tbuf_reserve(out, nout);
	if (rc != TERN_OK)
		return rc;
	for (size_t i = 0; i < n; i++) {
		v = v << 6 | (uint32_t)b64_value(s[i], url);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out->data[out->len++] = (char)(v >> bits & 0xff);
		}
	}
	out->data[out->len] = '\0';
	return TERN_OK;
}

int tern_base64_decode(const char *in, size_t len, struct tbuf *out)
{
	const unsigned char *s = (const unsigned char *)in;
	size_t pad = 0;

	if (len % 4 != 0)
		return TERN_ESYNTAX;
	if (len == 0)
		return TERN_OK;
	if (s[len - 1] == '=')
		pad = (s[len - 2] == '=') ? 2 : 1;
	return b64_decode_unpadded(s, len - pad, false, out);
}

int tern_base64url_decode(const char *in, size_t len, struct tbuf *out)
{
	return b64_decode_unpadded((const unsigned char *)in, len, true, out);
}

/* ------------------------------------------------------ quoted-printable */

#define QP_LINE_MAX 76 /* RFC 2045 §6.7 rule 5, "=" of a soft break included */

static bool qp_literal(unsigned char c)
{
	return (c >= 33 && c <= 126 && c != '=') || c == ' ' || c == '\t';
}

int tern_qp_encode(const void *in, size_t len, struct tbuf *out)
{
	const unsigned char *s = in;
	size_t start = out->len;
	size_t col = 0;    /* characters on the current output line */
	bool soft = false; /* that line began after a soft line break */
	int rc = TERN_OK;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = s[i];
		if (c == '\r' && i + 1 < len && s[i + 1] == '\n') {
			rc = tbuf_append(out, "\r\n", 2);
			if (rc != TERN_OK)
				goto out;
			i++;
			col = 0;
			soft = false;
			continue;
		}
		/* Does this byte end its line (next is CR LF or the end)? Then
		 * whitespace must be encoded, and the token may use the 76th
		 * column since no soft-break "=" has to follow it. */
		bool line_end =
		    (i + 1 == len) || (s[i + 1] == '\r' && i + 2 < len && s[i + 2] == '\n');
		char tok[3];
		size_t tlen;
		if (qp_literal(c) && !((c == ' ' || c == '\t') && line_end)) {
			tok[0] = (char)c;
			tlen = 1;
		} else {
			tok[0] = '=';
			tok[1] = hex_upper[c >> 4];
			tok[2] = hex_upper[c & 15];
			tlen = 3;
		}
		size_t room = line_end ? QP_LINE_MAX : QP_LINE_MAX - 1;
		if (col + tlen > room) {
			rc = tbuf_append(out, "=\r\n", 3);
			if (rc != TERN_OK)
				goto out;
			col = 0;
			soft = true;
		}
		/* A soft break starts a line the input did not have; if it
		 * began "--" it could read as a MIME boundary delimiter of an
		 * enclosing multipart (RFC 2046 §5.1.1). "=2D" cannot. */
		if (soft && col == 0 && c == '-') {
			tok[0] = '=';
			tok[1] = '2';
			tok[2] = 'D';
			tlen = 3;
		}
		rc = tbuf_append(out, tok, tlen);
		if (rc != TERN_OK)
			goto out;
		col += tlen;
	}
out:
	if (rc != TERN_OK) {
		out->len = start;
		if (out->data)
			out->data[start] = '\0';
	}
	return rc;
}

static int hex_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int tern_qp_decode(const char *in, size_t len, struct tbuf *out)
{
	const unsigned char *s = (const unsigned char *)in;
	size_t start = out->len;
	int rc = TERN_OK;
	size_t i = 0;
	while (i < len) {
		/* One line: [i, eol) with its terminator [eol, next). */
		size_t eol = i;
		while (eol < len && s[eol] != '\n')
			eol++;
		size_t next = eol < len ? eol + 1 : len;
		if (eol > i && eol < len && s[eol - 1] == '\r')
			eol--;
		/* Rule 3: trailing whitespace was added in transport; drop it. */
		size_t end = eol;
		while (end > i && (s[end - 1] == ' ' || s[end - 1] == '\t'))
			end--;
		bool soft = false;
		for (size_t k = i; k < end; k++) {
			if (s[k] != '=') {
				rc = tbuf_append(out, &s[k], 1);
				if (rc != TERN_OK)
					goto out;
				continue;
			}
			if (k + 1 == end) {
				soft = true;
				break;
			}
			int hi = k + 2 < end ? hex_value(s[k + 1]) : -1;
			int lo = k + 2 < end ? hex_value(s[k + 2]) : -1;
			if (hi < 0 || lo < 0) {
				rc = TERN_ESYNTAX;
				goto out;
			}
			unsigned char b = (unsigned char)(hi << 4 | lo);
			rc = tbuf_append(out, &b, 1);
			if (rc != TERN_OK)
				goto out;
			k += 2;
		}
		if (!soft && next > eol) {
			rc = tbuf_append(out, s + eol, next - eol);
			if (rc != TERN_OK)
				goto out;
		}
		i = next;
	}
out:
	if (rc != TERN_OK) {
		out->len = start;
		if (out->data)
			out->data[start] = '\0';
	}
	return rc;
}

bool tern_pct_decode(const char *s, size_t n, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '%') {
			int hi = i + 2 < n ? hex_value((unsigned char)s[i + 1]) : -1;
			int lo = i + 2 < n ? hex_value((unsigned char)s[i + 2]) : -1;
			if (hi < 0 || lo < 0)
				return false;
			c = (unsigned char)(hi << 4 | lo);
			i += 2;
		}
		if (c == '\0' || o + 1 >= cap)
			return false;
		out[o++] = (char)c;
	}
	if (cap == 0)
		return false;
	out[o] = '\0';
	return true;
}
