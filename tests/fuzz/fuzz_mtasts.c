/*
 * fuzz_mtasts.c — libFuzzer target for the MTA-STS parsers (src/deliver/
 * mtasts.c): the whole input is parsed as a policy body and as a TXT record
 * text, each from an exact-size heap copy so ASan catches a read past len.
 * Checked beyond "no crash":
 *   - a policy that parses has a known mode, max_age at most a year, at most
 *     MTASTS_MAX_MX patterns, each non-empty, lowercase, NUL-terminated
 *     within its slot, and at least one unless the mode is none;
 *   - every pattern matches itself (a wildcard: with "x" for its '*');
 *   - a TXT record that parses gives an id of 1-32 letters and digits.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "deliver/mtasts.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
	if (!cond)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *p = malloc(size ? size : 1);
	check(p != NULL);
	memcpy(p, data, size);
	struct mtasts_policy pol;
	char err[128];
	if (mtasts_policy_parse(p, size, &pol, err, sizeof(err)) == 0) {
		check(pol.mode == MTASTS_NONE || pol.mode == MTASTS_TESTING ||
		      pol.mode == MTASTS_ENFORCE);
		check(pol.max_age <= MTASTS_MAX_AGE);
		check(pol.n_mx <= MTASTS_MAX_MX);
		check(pol.mode == MTASTS_NONE || pol.n_mx > 0);
		for (size_t i = 0; i < pol.n_mx; i++) {
			const char *m = pol.mx[i];
			size_t n = strnlen(m, sizeof(pol.mx[i]));
			check(n > 0 && n < sizeof(pol.mx[i]));
			for (size_t j = 0; j < n; j++)
				check(!(m[j] >= 'A' && m[j] <= 'Z'));
			char host[sizeof(pol.mx[i]) + 1];
			if (n >= 2 && m[0] == '*' && m[1] == '.') {
				host[0] = 'x';
				memcpy(host + 1, m + 1, n); /* with the NUL */
			} else {
				memcpy(host, m, n + 1);
			}
			check(mtasts_mx_match(&pol, host));
		}
	}
	char id[MTASTS_ID_MAX + 1];
	if (mtasts_txt_parse(p, size, id)) {
		size_t n = strlen(id);
		check(n >= 1 && n <= MTASTS_ID_MAX);
		for (size_t j = 0; j < n; j++)
			check((id[j] >= 'a' && id[j] <= 'z') || (id[j] >= 'A' && id[j] <= 'Z') ||
			      (id[j] >= '0' && id[j] <= '9'));
	}
	free(p);
	return 0;
}
