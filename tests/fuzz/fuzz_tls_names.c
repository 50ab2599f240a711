/*
 * fuzz_tls_names.c — libFuzzer target for tls_name_match() (src/tls/names.c),
 * which matches the SNI name a client sends against certificate names.
 *
 * Input: PATTERN '\n' HOST (no newline: the whole input is both). Each part
 * is copied into an exact-size heap block so ASan catches any read past its
 * length. Checked beyond "no crash":
 *   - a host holding '*' never matches;
 *   - case never matters (both lowercased give the same answer);
 *   - without a '*', a match means equal names (ignoring case and one
 *     trailing dot on either side);
 *   - a wildcard match means the host has exactly one label more than the
 *     pattern, and that label is not empty.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tls/tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
	if (!cond)
		abort();
}

static char *copy(const uint8_t *p, size_t n, int lower)
{
	char *s = malloc(n ? n : 1);
	check(s != NULL);
	for (size_t i = 0; i < n; i++) {
		char c = (char)p[i];
		s[i] = lower && c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
	}
	return s;
}

static size_t labels(const char *p, size_t n)
{
	size_t k = n ? 1 : 0;
	for (size_t i = 0; i < n; i++)
		k += p[i] == '.';
	return k;
}

static size_t strip_dot(const char *p, size_t n)
{
	return n && p[n - 1] == '.' ? n - 1 : n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nl = memchr(data, '\n', size);
	size_t plen = nl ? (size_t)(nl - data) : size;
	const uint8_t *h = nl ? nl + 1 : data;
	size_t hlen = nl ? size - plen - 1 : size;

	char *p = copy(data, plen, 0), *hs = copy(h, hlen, 0);
	char *pl = copy(data, plen, 1), *hl = copy(h, hlen, 1);
	int m = tls_name_match(p, plen, hs, hlen);
	check(m == tls_name_match(pl, plen, hl, hlen));
	if (m) {
		check(memchr(hs, '*', hlen) == NULL);
		size_t pn = strip_dot(pl, plen), hn = strip_dot(hl, hlen);
		if (!memchr(p, '*', plen)) {
			check(pn == hn && memcmp(pl, hl, pn) == 0);
		} else {
			check(pn >= 2 && pl[0] == '*' && pl[1] == '.');
			check(labels(hl, hn) == labels(pl, pn));
			check(hn > pn - 1 && memcmp(hl + (hn - (pn - 1)), pl + 1, pn - 1) == 0);
			check(hl[0] != '.');
		}
	}
	free(p);
	free(hs);
	free(pl);
	free(hl);
	return 0;
}
