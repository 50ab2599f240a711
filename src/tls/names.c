/*
 * names.c — RFC 6125 matching of a certificate's names against a host name,
 * for choosing the server certificate by SNI.
 *
 * Owns: tls_name_match, a pure function over (pointer, length) pairs.
 * Never: allocates, reads past the lengths given, or lets a '*' anywhere but
 * a whole left-most label match anything.
 */
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "tls/tls.h"

static unsigned char lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
}

static bool ieq(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
			return false;
	return true;
}

/* Labels separated by single dots, none empty, at least min of them. */
static bool labels_ok(const char *p, size_t n, size_t min)
{
	size_t labels = 0, len = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '.') {
			if (len == 0)
				return false;
			labels++;
			len = 0;
		} else {
			len++;
		}
	}
	if (len == 0)
		return false;
	return labels + 1 >= min;
}

bool tls_name_match(const char *pattern, size_t plen, const char *host, size_t hlen)
{
	if (!pattern || !host)
		return false;
	/* "example.com." is the same name as "example.com" */
	if (plen > 0 && pattern[plen - 1] == '.')
		plen--;
	if (hlen > 0 && host[hlen - 1] == '.')
		hlen--;
	if (plen == 0 || hlen == 0 || memchr(host, '*', hlen) || memchr(host, '\0', hlen) ||
	    memchr(pattern, '\0', plen) || !labels_ok(host, hlen, 1))
		return false;
	if (plen > 2 && pattern[0] == '*' && pattern[1] == '.') {
		const char *rest = pattern + 2;
		size_t rlen = plen - 2;
		/* "*.com" would cover a whole top-level domain: never. */
		if (memchr(rest, '*', rlen) || !labels_ok(rest, rlen, 2))
			return false;
		const char *dot = memchr(host, '.', hlen);
		if (!dot || dot == host)
			return false;
		size_t off = (size_t)(dot + 1 - host);
		return hlen - off == rlen && ieq(host + off, rest, rlen);
	}
	if (memchr(pattern, '*', plen))
		return false; /* partial-label wildcards (f*.example.com) are not honoured */
	return plen == hlen && ieq(pattern, host, hlen);
}
