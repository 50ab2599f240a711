/*
 * fuzz_arf.c — libFuzzer target for the suppression list's report parser
 * (store/suppress.h, suppress_parse_report) fed abuse feedback reports
 * (seeds: RFC 5965 ARF reports).
 *
 * Beyond "no crash": the ARF fields are NUL-terminated inside their
 * buffers; an address found (Original-Rcpt-To, the returned message's To,
 * From, Return-Path) always holds an '@' and no blank, comma or angle bracket;
 * the parser is a pure function (the same input gives the same result).
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/suppress.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TERMINATED(f) assert(memchr((f), '\0', sizeof(f)) != NULL)

static void check_addr(const char *a)
{
	if (!a[0])
		return;
	assert(strchr(a, '@') != NULL);
	assert(strpbrk(a, " <>,") == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	static struct suppress_report a, b;
	suppress_parse_report(buf, size, &a);
	suppress_parse_report(buf, size, &b);
	assert(memcmp(&a, &b, sizeof(a)) == 0);
	TERMINATED(a.feedback_type);
	TERMINATED(a.original_rcpt_to);
	TERMINATED(a.original_mail_from);
	TERMINATED(a.orig_return_path);
	TERMINATED(a.orig_to);
	TERMINATED(a.orig_from);
	check_addr(a.original_rcpt_to);
	check_addr(a.orig_to);
	check_addr(a.orig_from);
	check_addr(a.orig_return_path);
	free(buf);
	return 0;
}
