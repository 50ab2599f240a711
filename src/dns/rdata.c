/*
 * rdata.c — pure decoders for the rdata libunbound hands back (MX, PTR/NS
 * names, TXT, TLSA), the reverse-lookup name of an address, and the
 * ownership rules of struct dns_result.
 *
 * Owns: turning untrusted wire bytes into bounded C values. Every function
 * here is a pure function over (pointer, length): no I/O, no globals, no
 * libunbound. It must never read outside [rdata, rdata + len), never accept
 * a compression pointer (libunbound decompresses; a pointer here means the
 * bytes are not what we think), and never produce a name that would not
 * parse back to the same wire name (so a decoded MX host can be queried).
 */
#include "dns/dns.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

const char *dns_status_name(enum dns_status s)
{
	switch (s) {
	case DNS_OK:
		return "ok";
	case DNS_NODATA:
		return "nodata";
	case DNS_NXDOMAIN:
		return "nxdomain";
	case DNS_TEMPFAIL:
		return "tempfail";
	case DNS_ERROR:
		return "error";
	}
	return "unknown";
}

/*
 * Frees what the result owns and leaves it empty (n == 0, pointers NULL),
 * but not the struct itself: results live on the stack in the resolver and
 * in callers' tests alike, so freeing the struct here would be a trap.
 */
void dns_result_free(struct dns_result *r)
{
	if (!r)
		return;
	if (r->txt) {
		for (size_t i = 0; i < r->n; i++)
			free(r->txt[i]);
	}
	if (r->ptr) {
		for (size_t i = 0; i < r->n; i++)
			free(r->ptr[i]);
	}
	if (r->tlsa) {
		for (size_t i = 0; i < r->n; i++)
			free(r->tlsa[i].data);
	}
	free(r->txt);
	free(r->ptr);
	free(r->tlsa);
	free(r->mx);
	free(r->a);
	free(r->aaaa);
	free(r->why_bogus);
	r->txt = NULL;
	r->ptr = NULL;
	r->tlsa = NULL;
	r->mx = NULL;
	r->a = NULL;
	r->aaaa = NULL;
	r->why_bogus = NULL;
	r->n = 0;
}

/* Appends one byte of a label in presentation form: lowercase, with '.' and
 * '\' escaped and anything outside printable ASCII as \DDD, which is exactly
 * what libunbound's name parser undoes. */
static bool put_label_byte(uint8_t c, char *out, size_t outlen, size_t *o)
{
	char tmp[5];
	size_t n;

	if (c >= 'A' && c <= 'Z') {
		tmp[0] = (char)(c - 'A' + 'a');
		n = 1;
	} else if (c == '.' || c == '\\') {
		tmp[0] = '\\';
		tmp[1] = (char)c;
		n = 2;
	} else if (c <= 0x20 || c >= 0x7f) {
		tmp[0] = '\\';
		tmp[1] = (char)('0' + c / 100);
		tmp[2] = (char)('0' + (c / 10) % 10);
		tmp[3] = (char)('0' + c % 10);
		n = 4;
	} else {
		tmp[0] = (char)c;
		n = 1;
	}
	/* keep one byte for the terminating NUL */
	if (*o + n >= outlen)
		return false;
	memcpy(out + *o, tmp, n);
	*o += n;
	return true;
}

bool dns_parse_name(const uint8_t *rdata, size_t len, char *out, size_t outlen, size_t *used)
{
	size_t pos = 0, o = 0;

	if (!rdata || !out || outlen == 0)
		return false;
	out[0] = '\0';
	for (;;) {
		if (pos >= len)
			goto bad; /* truncated: no root label */
		uint8_t l = rdata[pos];
		if (l == 0) {
			pos++;
			break;
		}
		/* 0xC0 is a compression pointer, 0x40/0x80 obsolete label
		 * types: none belongs in decompressed rdata */
		if (l & 0xC0)
			goto bad;
		if (pos + 1 + l > len)
			goto bad;
		/* RFC 1035 §3.1: 255 octets in wire form, root label included */
		if (pos + 1 + l + 1 > DNS_NAME_MAX)
			goto bad;
		if (o > 0) {
			if (o + 1 >= outlen)
				goto bad;
			out[o++] = '.';
		}
		for (size_t i = 0; i < l; i++) {
			if (!put_label_byte(rdata[pos + 1 + i], out, outlen, &o))
				goto bad;
		}
		pos += 1 + (size_t)l;
	}
	out[o] = '\0';
	if (used)
		*used = pos;
	return true;
bad:
	out[0] = '\0';
	return false;
}

bool dns_parse_mx(const uint8_t *rdata, size_t len, struct dns_mx *out)
{
	size_t used = 0;

	if (!rdata || !out || len < 3)
		return false;
	out->preference = (uint16_t)((rdata[0] << 8) | rdata[1]);
	if (!dns_parse_name(rdata + 2, len - 2, out->host, sizeof(out->host), &used))
		return false;
	/* trailing bytes mean this was not an MX rdata after all */
	if (used != len - 2) {
		out->host[0] = '\0';
		return false;
	}
	return true;
}

/*
 * The character-strings are concatenated (RFC 7208 §3.3, RFC 6376 §3.6.2.2
 * read them that way). A NUL byte inside is rejected: the result is a C
 * string, and silently cutting "v=spf1 -all\0..." short would change what
 * a policy check reads.
 */
bool dns_parse_txt(const uint8_t *rdata, size_t len, char **out)
{
	char *s = NULL;
	size_t pos = 0, o = 0;

	if (!out)
		return false;
	*out = NULL;
	/* RFC 1035 §3.3.14: one or more character-strings */
	if (!rdata || len == 0)
		return false;
	s = malloc(len + 1);
	if (!s)
		return false;
	while (pos < len) {
		size_t l = rdata[pos];
		if (pos + 1 + l > len)
			goto bad;
		if (l > 0 && memchr(rdata + pos + 1, '\0', l))
			goto bad;
		memcpy(s + o, rdata + pos + 1, l);
		o += l;
		pos += 1 + l;
	}
	s[o] = '\0';
	*out = s;
	return true;
bad:
	free(s);
	return false;
}

bool dns_parse_tlsa(const uint8_t *rdata, size_t len, struct dns_tlsa *out)
{
	if (!out)
		return false;
	memset(out, 0, sizeof(*out));
	if (!rdata || len < 3)
		return false;
	out->usage = rdata[0];
	out->selector = rdata[1];
	out->mtype = rdata[2];
	out->len = len - 3;
	if (out->len > 0) {
		out->data = malloc(out->len);
		if (!out->data) {
			out->len = 0;
			return false;
		}
		memcpy(out->data, rdata + 3, out->len);
	}
	return true;
}

bool dns_ptr_name(int family, const void *addr, char *out, size_t outlen)
{
	static const char hex[] = "0123456789abcdef";
	int n;

	if (!addr || !out || outlen == 0)
		return false;
	out[0] = '\0';
	if (family == AF_INET) {
		const uint8_t *b = addr;
		n = snprintf(out, outlen, "%u.%u.%u.%u.in-addr.arpa", b[3], b[2], b[1], b[0]);
	} else if (family == AF_INET6) {
		const uint8_t *b = addr;
		/* 32 nibbles, each "x.", then "ip6.arpa" */
		char tmp[32 * 2 + sizeof("ip6.arpa")];
		size_t o = 0;
		for (int i = 15; i >= 0; i--) {
			tmp[o++] = hex[b[i] & 0x0f];
			tmp[o++] = '.';
			tmp[o++] = hex[b[i] >> 4];
			tmp[o++] = '.';
		}
		memcpy(tmp + o, "ip6.arpa", sizeof("ip6.arpa"));
		n = snprintf(out, outlen, "%s", tmp);
	} else {
		return false;
	}
	if (n < 0 || (size_t)n >= outlen) {
		out[0] = '\0';
		return false;
	}
	return true;
}
