/*
 * fuzz_dsn.c — libFuzzer target for the suppression list's report parser
 * (store/suppress.h, suppress_parse_report) fed delivery status
 * notifications (seeds: RFC 3464 multipart/report DSNs).
 *
 * Beyond "no crash": every string of the result is NUL-terminated inside
 * its field, at most SUPPRESS_REPORT_RCPTS recipients are reported, a
 * recipient is "hard" only with action "failed" and a 5.x status, and the
 * parser is a pure function (the same input gives the same result).
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/suppress.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TERMINATED(f) assert(memchr((f), '\0', sizeof(f)) != NULL)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A copy of exactly size bytes: ASan sees any read past the end. */
	char *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	static struct suppress_report a, b;
	suppress_parse_report(buf, size, &a);
	suppress_parse_report(buf, size, &b);
	assert(memcmp(&a, &b, sizeof(a)) == 0);
	assert(a.n_rcpts <= SUPPRESS_REPORT_RCPTS);
	for (size_t i = 0; i < a.n_rcpts; i++) {
		const struct suppress_report_rcpt *r = &a.rcpts[i];
		TERMINATED(r->final_rcpt);
		TERMINATED(r->action);
		TERMINATED(r->status);
		TERMINATED(r->diagnostic);
		if (suppress_rcpt_is_hard(r))
			assert(strcmp(r->action, "failed") == 0 && r->status[0] == '5');
	}
	TERMINATED(a.orig_return_path);
	TERMINATED(a.orig_to);
	TERMINATED(a.orig_from);
	free(buf);
	return 0;
}
