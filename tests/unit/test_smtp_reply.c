/*
 * test_smtp_reply.c — the reply table (src/smtp/reply.c): every entry is a
 * reply a client can act on (a valid code whose class its RFC 3463
 * enhanced code shares, words without CR/LF, as many "%s" as it says), no
 * meaning is written twice, and smtp_reply_format renders lines exactly,
 * never lets an argument start a second line, and never overruns.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtp/smtp.h"

/* "d.ddd.ddd" with 1-3 digits per number (RFC 3463 §2); *cls gets the class. */
static bool enhanced_ok(const char *e, int *cls)
{
	if (!(e[0] == '2' || e[0] == '4' || e[0] == '5') || e[1] != '.')
		return false;
	*cls = e[0] - '0';
	const char *p = e + 2;
	for (int part = 0; part < 2; part++) {
		size_t n = 0;
		while (p[n] >= '0' && p[n] <= '9')
			n++;
		if (n < 1 || n > 3)
			return false;
		p += n;
		if (part == 0 && *p++ != '.')
			return false;
	}
	return *p == '\0';
}

/* The number of "%s" in t; -1 if a '%' starts anything else. */
static int markers(const char *t)
{
	int n = 0;
	for (const char *p = strchr(t, '%'); p; p = strchr(p + 2, '%')) {
		if (p[1] != 's')
			return -1;
		n++;
	}
	return n;
}

static void every_entry_is_a_valid_reply(void **state)
{
	for (int id = 0; id < SMTP_R__COUNT; id++) {
		const struct smtp_reply_def *d = smtp_reply_def((enum smtp_reply_id)id);
		assert_non_null(d);
		int cls = d->code / 100;
		if (d->code < 200 || d->code > 599)
			fail_msg("entry %d: code %d is not a reply code", id, d->code);
		assert_non_null(d->text);
		if (d->text[0] == '\0' || strpbrk(d->text, "\r\n"))
			fail_msg("entry %d: text empty or with CR/LF", id);
		if (markers(d->text) != (int)d->nargs)
			fail_msg("entry %d: \"%s\" does not take %u arguments", id, d->text,
			         d->nargs);
		if (d->enhanced) {
			int ecls = 0;
			if (!enhanced_ok(d->enhanced, &ecls))
				fail_msg("entry %d: bad enhanced code %s", id, d->enhanced);
			if (ecls != cls)
				fail_msg("entry %d: %d with %s: class mismatch", id, d->code,
				         d->enhanced);
		} else if (cls != 3 && id != SMTP_R_GREETING && id != SMTP_R_HELO &&
		           id != SMTP_R_EHLO) {
			/* RFC 2034 §3: only the greeting and the HELO/EHLO replies
			 * go without one (and 3xx, which are not status). */
			fail_msg("entry %d: %d without an enhanced code", id, d->code);
		}
	}
}

static void no_meaning_is_written_twice(void **state)
{
	for (int a = 0; a < SMTP_R__COUNT; a++)
		for (int b = a + 1; b < SMTP_R__COUNT; b++) {
			const struct smtp_reply_def *x = smtp_reply_def((enum smtp_reply_id)a);
			const struct smtp_reply_def *y = smtp_reply_def((enum smtp_reply_id)b);
			bool same_esc =
			    (!x->enhanced && !y->enhanced) ||
			    (x->enhanced && y->enhanced && strcmp(x->enhanced, y->enhanced) == 0);
			if (x->code == y->code && same_esc && strcmp(x->text, y->text) == 0)
				fail_msg("entries %d and %d are the same reply", a, b);
		}
}

static void the_sequence_replies_are_503_5_5_1(void **state)
{
	const enum smtp_reply_id seq[] = {SMTP_R_NEED_HELO,
	                                  SMTP_R_NEED_EHLO,
	                                  SMTP_R_NEED_MAIL,
	                                  SMTP_R_NEED_RCPT,
	                                  SMTP_R_IN_TRANSACTION,
	                                  SMTP_R_AFTER_BDAT,
	                                  SMTP_R_TLS_ACTIVE,
	                                  SMTP_R_ALREADY_AUTHENTICATED,
	                                  SMTP_R_BINARYMIME_NEEDS_BDAT};
	for (size_t i = 0; i < sizeof(seq) / sizeof(seq[0]); i++) {
		assert_int_equal(smtp_reply_def(seq[i])->code, 503);
		assert_string_equal(smtp_reply_def(seq[i])->enhanced, "5.5.1");
	}
	assert_int_equal(smtp_reply_def(SMTP_R_AUTH_REQUIRED)->code, 530); /* RFC 4954 §6 */
	assert_string_equal(smtp_reply_def(SMTP_R_AUTH_REQUIRED)->enhanced, "5.7.0");
}

static void formats_a_line(void **state)
{
	char out[256];
	size_t n = smtp_reply_format(out, sizeof(out), SMTP_R_NOMEM, 0, false, NULL, 0);
	assert_string_equal(out, "451 4.3.0 Out of memory, try again later");
	assert_int_equal(n, strlen(out));

	const char *a[] = {"alice@example.test"};
	smtp_reply_format(out, sizeof(out), SMTP_R_RCPT_OK, 0, false, a, 1);
	assert_string_equal(out, "250 2.1.5 Recipient <alice@example.test> ok");

	const char *e[] = {"mx.example.test", "client.example.org", "127.0.0.1"};
	smtp_reply_format(out, sizeof(out), SMTP_R_EHLO, 0, true, e, 3);
	assert_string_equal(out, "250-mx.example.test Hello client.example.org [127.0.0.1]");

	smtp_reply_format(out, sizeof(out), SMTP_R_DATA_GO, 0, false, NULL, 0);
	assert_string_equal(out, "354 End data with <CR><LF>.<CR><LF>");

	const char *empty[] = {""};
	smtp_reply_format(out, sizeof(out), SMTP_R_SASL_CHALLENGE, 0, false, empty, 1);
	assert_string_equal(out, "334 "); /* RFC 4954 §4: an empty challenge */
}

static void an_override_code_keeps_the_class(void **state)
{
	char out[256];
	smtp_reply_format(out, sizeof(out), SMTP_R_CHAOS_SENDER_PERM, 554, false, NULL, 0);
	assert_string_equal(out, "554 5.7.1 Chaos: sender rejected on purpose (chaos trigger)");
	smtp_reply_format(out, sizeof(out), SMTP_R_CHAOS_RCPT_TEMP, 421, false, NULL, 0);
	assert_string_equal(out, "421 4.2.0 Chaos: recipient rejected on purpose (chaos trigger)");
}

static void an_argument_cannot_start_a_second_line(void **state)
{
	char out[256];
	const char *a[] = {"x\r\n250 2.0.0 forged"};
	smtp_reply_format(out, sizeof(out), SMTP_R_SENDER_OK, 0, false, a, 1);
	assert_null(strpbrk(out, "\r\n"));
	assert_string_equal(out, "250 2.1.0 Sender <x??250 2.0.0 forged> ok");
}

static void a_short_buffer_is_cut_not_overrun(void **state)
{
	char big[512];
	size_t full = smtp_reply_format(big, sizeof(big), SMTP_R_SPOOL_FAILED, 0, false, NULL, 0);
	assert_int_equal(full, strlen(big));
	for (size_t len = 1; len <= full + 1; len++) {
		char *out = malloc(len); /* exact size: ASan sees any overrun */
		assert_non_null(out);
		size_t n = smtp_reply_format(out, len, SMTP_R_SPOOL_FAILED, 0, false, NULL, 0);
		assert_int_equal(n, full);
		assert_int_equal(strlen(out), len - 1 < full ? len - 1 : full);
		assert_memory_equal(out, big, strlen(out));
		free(out);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(every_entry_is_a_valid_reply),
	    cmocka_unit_test(no_meaning_is_written_twice),
	    cmocka_unit_test(the_sequence_replies_are_503_5_5_1),
	    cmocka_unit_test(formats_a_line),
	    cmocka_unit_test(an_override_code_keeps_the_class),
	    cmocka_unit_test(an_argument_cannot_start_a_second_line),
	    cmocka_unit_test(a_short_buffer_is_cut_not_overrun),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
