/*
 * fuzz_dns_rdata.c — libFuzzer target for the pure rdata decoders in
 * src/dns/rdata.c over arbitrary bytes (what a hostile DNS server could put
 * in an answer).
 *
 * Besides "no crash, no leak, no sanitizer report", it checks properties
 * the resolver and its callers rely on:
 *   - a decoded name is printable ASCII, has no uppercase letter, fits the
 *     buffer, and parses back (escapes undone) to the same wire name,
 *     lowercased; so an MX host can be queried again as is;
 *   - MX: the preference is the first two bytes and the name uses the rest
 *     exactly;
 *   - TXT: the text is the concatenation of the character-strings;
 *   - TLSA: the fields and data are the input bytes;
 *   - the PTR name of any address has the documented shape.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "dns/dns.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Presentation -> wire, undoing the escapes dns_parse_name emits. Returns
 * the wire length, or 0 on a malformed name. */
static size_t to_wire(const char *s, uint8_t *out, size_t outlen)
{
	size_t o = 0, lab = 0;
	if (*s == '\0') {
		out[0] = 0;
		return 1;
	}
	out[o++] = 0; /* length of the first label, patched below */
	for (const char *p = s;; p++) {
		if (*p == '.' || *p == '\0') {
			out[lab] = (uint8_t)(o - lab - 1);
			if (out[lab] == 0 || out[lab] > 63)
				return 0;
			if (*p == '\0')
				break;
			lab = o;
			if (o >= outlen)
				return 0;
			out[o++] = 0;
			continue;
		}
		int c = (unsigned char)*p;
		if (c == '\\') {
			p++;
			if (p[0] >= '0' && p[0] <= '9') {
				if (!(p[1] >= '0' && p[1] <= '9' && p[2] >= '0' && p[2] <= '9'))
					return 0;
				c = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
				if (c > 255)
					return 0;
				p += 2;
			} else if (*p == '\0') {
				return 0;
			} else {
				c = (unsigned char)*p;
			}
		}
		if (o >= outlen)
			return 0;
		out[o++] = (uint8_t)c;
	}
	if (o >= outlen)
		return 0;
	out[o++] = 0;
	return o;
}

static void check_name(const uint8_t *wire, size_t used, const char *name)
{
	uint8_t back[512];
	for (const char *p = name; *p; p++) {
		if (*p < 0x21 || *p > 0x7e || (*p >= 'A' && *p <= 'Z'))
			abort();
	}
	size_t n = strlen(name);
	if (n > 0 && name[n - 1] == '.' && (n < 2 || name[n - 2] != '\\'))
		abort(); /* no trailing dot */
	size_t bl = to_wire(name, back, sizeof(back));
	if (bl != used)
		abort();
	for (size_t i = 0; i < used; i++) {
		uint8_t c = wire[i];
		if (c >= 'A' && c <= 'Z')
			c = (uint8_t)(c - 'A' + 'a');
		if (back[i] != c)
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* name, with a buffer size picked by the first byte so that the
	 * "does not fit" paths are exercised too */
	if (size > 0) {
		char out[DNS_NAME_MAX + 1];
		size_t outlen = 1 + (size_t)data[0] % sizeof(out);
		size_t used = 0;
		memset(out, 'X', sizeof(out));
		if (dns_parse_name(data + 1, size - 1, out, outlen, &used)) {
			if (used == 0 || used > size - 1 || used > DNS_NAME_MAX ||
			    strlen(out) >= outlen)
				abort();
			check_name(data + 1, used, out);
		} else if (out[0] != '\0') {
			abort();
		}
	}

	char name[DNS_NAME_MAX + 1];
	size_t used = 0;
	if (dns_parse_name(data, size, name, sizeof(name), &used))
		check_name(data, used, name);

	struct dns_mx mx;
	if (dns_parse_mx(data, size, &mx)) {
		if (size < 3 || mx.preference != ((data[0] << 8) | data[1]))
			abort();
		if (!dns_parse_name(data + 2, size - 2, name, sizeof(name), &used) ||
		    used != size - 2 || strcmp(name, mx.host) != 0)
			abort();
	}

	char *txt = NULL;
	if (dns_parse_txt(data, size, &txt)) {
		/* the text is the strings' bytes, in order */
		size_t pos = 0, o = 0, tl = strlen(txt);
		while (pos < size) {
			size_t l = data[pos];
			if (o + l > tl || memcmp(txt + o, data + pos + 1, l) != 0)
				abort();
			o += l;
			pos += 1 + l;
		}
		if (pos != size || o != tl)
			abort();
		free(txt);
	} else if (txt) {
		abort();
	}

	struct dns_tlsa t;
	if (dns_parse_tlsa(data, size, &t)) {
		if (t.usage != data[0] || t.selector != data[1] || t.mtype != data[2] ||
		    t.len != size - 3 || (t.len && memcmp(t.data, data + 3, t.len) != 0))
			abort();
		free(t.data);
	}

	if (size >= 16) {
		char ptr[DNS_NAME_MAX + 1];
		if (!dns_ptr_name(AF_INET6, data, ptr, sizeof(ptr)) || strlen(ptr) != 72 ||
		    strcmp(ptr + 64, "ip6.arpa") != 0)
			abort();
		if (!dns_ptr_name(AF_INET, data, ptr, sizeof(ptr)) ||
		    strcmp(ptr + strlen(ptr) - 13, ".in-addr.arpa") != 0)
			abort();
	}
	return 0;
}
