/*
 * fuzz_dmarc_from.c — libFuzzer target for the Author Domain extraction
 * (dmarc_from_domains in src/policy/dmarc_from.c) over arbitrary header
 * blocks, as any sender could write them.
 *
 * Besides "no crash, no sanitizer report", it checks:
 *   - the status agrees with the counts (ONE: one field and one domain;
 *     NONE: no domain; MULTI: more than one of either);
 *   - every domain kept is a normalised name: lowercase LDH(+_) labels of
 *     1..63 bytes, at most DMARC_DOMAIN_MAX, that normalises to itself,
 *     and the kept ones are distinct.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy/dmarc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dmarc_from f;
	char again[DMARC_DOMAIN_MAX + 1];

	dmarc_from_domains((const char *)data, size, &f);
	size_t kept = f.n_domains < DMARC_AUTHORS_MAX ? f.n_domains : DMARC_AUTHORS_MAX;
	switch (f.status) {
	case DMARC_FROM_ONE:
		if (f.n_fields != 1 || f.n_domains != 1)
			abort();
		break;
	case DMARC_FROM_NONE:
		if (f.n_domains != 0 || f.n_fields > 1)
			abort();
		break;
	case DMARC_FROM_MULTI:
		if (f.n_fields < 2 && f.n_domains < 2)
			abort();
		break;
	case DMARC_FROM_BAD:
		if (f.n_fields == 0)
			abort();
		break;
	default:
		abort();
	}
	for (size_t i = 0; i < kept; i++) {
		const char *d = f.domain[i];
		size_t n = strnlen(d, DMARC_DOMAIN_MAX + 1), label = 0;
		if (n == 0 || n > DMARC_DOMAIN_MAX)
			abort();
		for (size_t k = 0; k < n; k++) {
			char c = d[k];
			if (c == '.') {
				if (label == 0)
					abort();
				label = 0;
				continue;
			}
			if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
			      c == '_') ||
			    ++label > 63)
				abort();
		}
		if (label == 0 || !dmarc_domain_normalize(d, n, again) || strcmp(again, d) != 0)
			abort();
		for (size_t j = 0; j < i; j++)
			if (strcmp(f.domain[j], d) == 0)
				abort();
	}
	return 0;
}
