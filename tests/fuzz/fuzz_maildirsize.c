/*
 * fuzz_maildirsize.c — libFuzzer target for the quota parsers: the Maildir++
 * maildirsize file (maildirsize_parse, src/deliver/local.c; Dovecot and any
 * mail program can write it) and Dovecot's quota rule (users_parse_quota_rule,
 * users_parse_extra, src/auth/users.c; from the users file).
 *
 * Beyond "no crash, no leak": a maildirsize accepted ends with its line
 * break (a half-written append is never taken as the usage), and a rule
 * either gives a reason or a result, never both.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "auth/users_internal.h"
#include "core/err.h"
#include "deliver/deliver.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "invariant failed: %s (line %d)\n", #cond, __LINE__);      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data;
	struct maildirsize ms;
	bool applies, has;
	uint64_t bytes, b2;

	if (maildirsize_parse(p, size, &ms) == TERN_OK)
		CHECK(size > 0 && p[size - 1] == '\n');
	const char *why = users_parse_quota_rule(p, size, &applies, &bytes);
	CHECK(why == NULL || !applies);
	why = users_parse_extra(p, size, &has, &b2);
	CHECK(why == NULL || !has);
	return 0;
}
