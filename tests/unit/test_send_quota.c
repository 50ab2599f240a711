/*
 * test_send_quota.c — sending quota counters (src/store/quota.c) on a fake
 * clock: fixed windows that refuse the message after the limit and admit
 * again when the window turns, Retry-After seconds to the window's end,
 * all-or-nothing charges across a key and its domain, hour and day counts
 * that survive a close and reopen of DATA/quota.db, and the SES account
 * figures.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/err.h"
#include "store/quota.h"

/* 2026-12-06 10:00:00 UTC: the start of an hour */
#define HOUR0 1796551200LL

static void per_hour_refuses_then_admits_next_hour(void **state)
{
	(void)state;
	quota_open(NULL);
	struct quota_ask a = {QUOTA_KEY, "app", {0, 3, 0}};
	struct quota_refusal why;
	int64_t now = HOUR0 + 600;
	for (int i = 0; i < 3; i++)
		assert_int_equal(quota_take(&a, 1, now + i, &why), TERN_OK);
	assert_int_equal(quota_take(&a, 1, now + 10, &why), TERN_ELIMIT);
	assert_int_equal(why.window, QUOTA_HOUR);
	assert_int_equal(why.kind, QUOTA_KEY);
	assert_int_equal(why.limit, 3);
	assert_string_equal(why.name, "app");
	assert_int_equal(why.retry_after, 3600 - 610);
	assert_int_equal(quota_check(&a, 1, now + 10, &why), TERN_ELIMIT);
	uint64_t h = 0, d = 0;
	quota_count(QUOTA_KEY, "app", now + 10, NULL, &h, &d);
	assert_int_equal(h, 3); /* the refused one is not counted */
	assert_int_equal(d, 3);
	assert_int_equal(quota_take(&a, 1, HOUR0 + 3600, &why), TERN_OK);
	quota_count(QUOTA_KEY, "app", HOUR0 + 3600, NULL, &h, &d);
	assert_int_equal(h, 1);
	assert_int_equal(d, 4); /* same day */
	quota_close();
}

static void per_second_admits_in_the_next_second(void **state)
{
	(void)state;
	quota_open(NULL);
	struct quota_ask a = {QUOTA_USER, "alice@example.org", {1, 0, 0}};
	struct quota_refusal why;
	assert_int_equal(quota_take(&a, 1, HOUR0, &why), TERN_OK);
	assert_int_equal(quota_take(&a, 1, HOUR0, &why), TERN_ELIMIT);
	assert_int_equal(why.window, QUOTA_SECOND);
	assert_int_equal(why.retry_after, 1);
	assert_int_equal(quota_take(&a, 1, HOUR0 + 1, &why), TERN_OK);
	quota_close();
}

static void key_and_domain_all_or_nothing(void **state)
{
	(void)state;
	quota_open(NULL);
	struct quota_ask asks[2] = {{QUOTA_KEY, "one", {0, 0, 100}},
	                            {QUOTA_DOMAIN, "example.org", {0, 0, 2}}};
	struct quota_ask other = {QUOTA_KEY, "two", {0, 0, 0}};
	struct quota_ask two[2] = {other, asks[1]};
	struct quota_refusal why;
	assert_int_equal(quota_take(asks, 2, HOUR0, &why), TERN_OK);
	assert_int_equal(quota_take(two, 2, HOUR0, &why), TERN_OK);
	assert_int_equal(quota_take(asks, 2, HOUR0 + 5, &why), TERN_ELIMIT);
	assert_int_equal(why.kind, QUOTA_DOMAIN);
	assert_int_equal(why.window, QUOTA_DAY);
	assert_int_equal(why.retry_after, 86400 - (HOUR0 % 86400) - 5);
	uint64_t d = 0;
	quota_count(QUOTA_KEY, "one", HOUR0 + 5, NULL, NULL, &d);
	assert_int_equal(d, 1); /* the key was not charged for the refused one */
	quota_count(QUOTA_KEY, "two", HOUR0 + 5, NULL, NULL, &d);
	assert_int_equal(d, 1);
	quota_close();
}

static void counts_survive_a_reopen(void **state)
{
	(void)state;
	char dir[] = "/tmp/tern-quota-XXXXXX";
	assert_non_null(mkdtemp(dir));
	assert_int_equal(quota_open(dir), TERN_OK);
	struct quota_ask a = {QUOTA_KEY, "daily", {0, 0, 2}};
	struct quota_refusal why;
	assert_int_equal(quota_take(&a, 1, HOUR0, &why), TERN_OK);
	assert_int_equal(quota_take(&a, 1, HOUR0 + 1, &why), TERN_OK);
	quota_close(); /* writes what is left */
	assert_int_equal(quota_open(dir), TERN_OK);
	uint64_t s = 9, h = 0, d = 0;
	quota_count(QUOTA_KEY, "daily", HOUR0 + 2, &s, &h, &d);
	assert_int_equal(s, 0); /* seconds are memory only, and long gone */
	assert_int_equal(h, 2);
	assert_int_equal(d, 2);
	assert_int_equal(quota_take(&a, 1, HOUR0 + 2, &why), TERN_ELIMIT);
	quota_count(QUOTA_KEY, "daily", HOUR0 + 86400, NULL, &h, &d);
	assert_int_equal(d, 0); /* the next day */
	quota_close();
	char p[256];
	snprintf(p, sizeof(p), "%s/quota.db", dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/quota.db-journal", dir);
	unlink(p);
	assert_int_equal(rmdir(dir), 0);
}

static void many_subjects_keep_their_own_counts(void **state)
{
	(void)state;
	quota_open(NULL);
	char name[32];
	struct quota_refusal why;
	for (int i = 0; i < 3000; i++) { /* grows the table and its index several times */
		snprintf(name, sizeof(name), "d%d.example", i);
		struct quota_ask a = {QUOTA_DOMAIN, name, {0, (uint64_t)(i % 3) + 1, 0}};
		for (int k = 0; k <= i % 3; k++)
			assert_int_equal(quota_take(&a, 1, HOUR0, &why), TERN_OK);
		assert_int_equal(quota_take(&a, 1, HOUR0, &why), TERN_ELIMIT);
	}
	for (int i = 0; i < 3000; i += 7) {
		uint64_t h = 0;
		snprintf(name, sizeof(name), "d%d.example", i);
		quota_count(QUOTA_DOMAIN, name, HOUR0, NULL, &h, NULL);
		assert_int_equal(h, (uint64_t)(i % 3) + 1);
		quota_count(QUOTA_KEY, name, HOUR0, NULL, &h, NULL); /* another kind */
		assert_int_equal(h, 0);
	}
	quota_close();
}

static void ses_usage_figures(void **state)
{
	(void)state;
	quota_open(NULL);
	double max24, rate, sent;
	struct quota_limits l = {5, 100, 0};
	quota_usage("nobody-sent", &l, &max24, &rate, &sent);
	assert_true(max24 == 2400.0 && rate == 5.0 && sent == 0.0);
	struct quota_limits none = {0, 0, 0};
	quota_usage("nobody-sent", &none, &max24, &rate, &sent);
	assert_true(max24 == -1.0 && rate == -1.0);
	quota_close();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(per_hour_refuses_then_admits_next_hour),
	    cmocka_unit_test(per_second_admits_in_the_next_second),
	    cmocka_unit_test(key_and_domain_all_or_nothing),
	    cmocka_unit_test(counts_survive_a_reopen),
	    cmocka_unit_test(many_subjects_keep_their_own_counts),
	    cmocka_unit_test(ses_usage_figures),
	};
	return cmocka_run_group_tests_name("send_quota", tests, NULL, NULL);
}
