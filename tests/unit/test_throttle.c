/*
 * test_throttle.c — the login throttle (src/auth/throttle.c) on a fake
 * clock: delays that double, blocks per address and per user that end on
 * time, failures forgotten after a quiet window, IPv6 counted per /64, a
 * table that never grows past its size, and reasons fit for a log line.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "auth/auth.h"

#define SEC 1000ULL

static struct throttle_config small_cfg(void)
{
	struct throttle_config c = THROTTLE_CONFIG_DEFAULT;

	c.addr_block_after = 5;
	c.user_block_after = 8;
	c.block_seconds = 600;
	c.window_seconds = 3600;
	return c;
}

static void delay_doubles_to_its_cap(void **state)
{
	struct throttle_config c = THROTTLE_CONFIG_DEFAULT;
	struct throttle *t;
	struct throttle_result r;
	unsigned long long now = 1000 * SEC;
	const unsigned want[] = {1000, 2000, 4000, 8000, 16000, 16000, 16000};

	(void)state;
	c.addr_block_after = 0; /* never block: watch the delay alone */
	c.user_block_after = 0;
	t = throttle_new(&c);
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		throttle_fail(t, "192.0.2.7", "a@example.org", now, &r);
		assert_int_equal(r.verdict, THROTTLE_ALLOW);
		assert_int_equal(r.failures, i + 1);
		assert_int_equal(r.delay_ms, want[i]);
		now += SEC;
	}
	throttle_free(t);

	/* delay_after: the first failures are answered at once. */
	c.delay_after = 2;
	t = throttle_new(&c);
	throttle_fail(t, "192.0.2.7", NULL, now, &r);
	assert_int_equal(r.delay_ms, 0);
	throttle_fail(t, "192.0.2.7", NULL, now, &r);
	assert_int_equal(r.delay_ms, 0);
	throttle_fail(t, "192.0.2.7", NULL, now, &r);
	assert_int_equal(r.delay_ms, 1000);
	throttle_free(t);
}

static void address_block_and_its_end(void **state)
{
	struct throttle_config c = small_cfg();
	struct throttle *t = throttle_new(&c);
	struct throttle_result r;
	unsigned long long now = 5000 * SEC;

	(void)state;
	for (int i = 1; i <= 4; i++) {
		/* Different users each time: the address still adds up. */
		char user[32];

		snprintf(user, sizeof(user), "u%d@example.org", i);
		throttle_fail(t, "198.51.100.9", user, now, &r);
		assert_int_equal(r.verdict, THROTTLE_ALLOW);
		throttle_check(t, "198.51.100.9", NULL, now, &r);
		assert_int_equal(r.verdict, THROTTLE_ALLOW);
	}
	throttle_fail(t, "198.51.100.9", "u5@example.org", now, &r);
	assert_int_equal(r.verdict, THROTTLE_BLOCK_ADDR);
	assert_int_equal(r.retry_after_s, 600);
	assert_string_equal(r.reason, "addr=198.51.100.9 failures=5 blocked_for=600s");

	/* Blocked for everyone from there, whatever the user; not elsewhere. */
	throttle_check(t, "198.51.100.9", NULL, now + 599 * SEC, &r);
	assert_int_equal(r.verdict, THROTTLE_BLOCK_ADDR);
	assert_int_equal(r.retry_after_s, 1);
	throttle_check(t, "198.51.100.10", "u1@example.org", now, &r);
	assert_int_equal(r.verdict, THROTTLE_ALLOW);

	/* The block ends on time... */
	throttle_check(t, "198.51.100.9", NULL, now + 600 * SEC, &r);
	assert_int_equal(r.verdict, THROTTLE_ALLOW);
	/* ...but the count stays within the window: the next failure blocks
	 * again at once. */
	throttle_fail(t, "198.51.100.9", NULL, now + 601 * SEC, &r);
	assert_int_equal(r.verdict, THROTTLE_BLOCK_ADDR);
	assert_int_equal(r.failures, 6);
	throttle_free(t);
}

static void user_block_from_any_address(void **state)
{
	struct throttle_config c = small_cfg();
	struct throttle *t = throttle_new(&c);
	struct throttle_result r;
	unsigned long long now = 0;
	char addr[32];

	(void)state;
	/* A distributed guesser: one failure per address, same user. */
	for (int i = 1; i <= 7; i++) {
		snprintf(addr, sizeof(addr), "203.0.113.%d", i);
		throttle_fail(t, addr, "Victim@Example.org", now, &r);
		assert_int_equal(r.verdict, THROTTLE_ALLOW);
	}
	throttle_fail(t, "203.0.113.8", "victim@example.org", now, &r);
	assert_int_equal(r.verdict, THROTTLE_BLOCK_USER);
	assert_string_equal(r.reason, "user=victim@example.org failures=8 blocked_for=600s");
	/* The user (any case) is blocked from a fresh address; others not. */
	throttle_check(t, "203.0.113.99", "VICTIM@example.org", now + SEC, &r);
	assert_int_equal(r.verdict, THROTTLE_BLOCK_USER);
	throttle_check(t, "203.0.113.99", "other@example.org", now + SEC, &r);
	assert_int_equal(r.verdict, THROTTLE_ALLOW);
	throttle_check(t, "203.0.113.99", "victim@example.org", now + 600 * SEC, &r);
	assert_int_equal(r.verdict, THROTTLE_ALLOW);
	throttle_free(t);
}

static void quiet_window_forgets(void **state)
{
	struct throttle_config c = small_cfg();
	struct throttle *t = throttle_new(&c);
	struct throttle_result r;
	unsigned long long now = 0;

	(void)state;
	for (int i = 0; i < 4; i++)
		throttle_fail(t, "192.0.2.1", NULL, now, &r);
	assert_int_equal(r.delay_ms, 8000);
	/* An hour without failures: a fresh start. */
	now += 3600 * SEC;
	throttle_fail(t, "192.0.2.1", NULL, now, &r);
	assert_int_equal(r.failures, 1);
	assert_int_equal(r.delay_ms, 1000);
	throttle_free(t);
}

static void success_forgets_the_user_not_the_address(void **state)
{
	struct throttle_config c = small_cfg();
	struct throttle *t = throttle_new(&c);
	struct throttle_result r;

	(void)state;
	for (int i = 0; i < 3; i++)
		throttle_fail(t, "192.0.2.1", "bob@example.org", 0, &r);
	throttle_success(t, "192.0.2.1", "bob@example.org");
	/* Bob's count is gone: a failure from elsewhere starts at one. */
	throttle_fail(t, "192.0.2.200", "bob@example.org", SEC, &r);
	assert_int_equal(r.failures, 1);
	/* The address keeps its three (a valid account must not reset the
	 * count between guesses at others). */
	throttle_fail(t, "192.0.2.1", "carol@example.org", SEC, &r);
	assert_int_equal(r.failures, 4);
	throttle_free(t);
}

static void ipv6_counts_per_64(void **state)
{
	struct throttle_config c = small_cfg();
	struct throttle *t = throttle_new(&c);
	struct throttle_result r;

	(void)state;
	/* Five addresses in one /64 (some bracketed) make one block. */
	throttle_fail(t, "2001:db8:1:2::1", NULL, 0, &r);
	throttle_fail(t, "2001:db8:1:2::2", NULL, 0, &r);
	throttle_fail(t, "[2001:db8:1:2:ffff::3]", NULL, 0, &r);
	throttle_fail(t, "2001:DB8:1:2:0:0:0:4", NULL, 0, &r);
	assert_int_equal(r.failures, 4);
	throttle_fail(t, "2001:db8:1:2::5", NULL, 0, &r);
	assert_int_equal(r.verdict, THROTTLE_BLOCK_ADDR);
	throttle_check(t, "2001:db8:1:2:aaaa:bbbb:cccc:dddd", NULL, SEC, &r);
	assert_int_equal(r.verdict, THROTTLE_BLOCK_ADDR);
	/* The next /64 is another network. */
	throttle_check(t, "2001:db8:1:3::1", NULL, SEC, &r);
	assert_int_equal(r.verdict, THROTTLE_ALLOW);
	/* An IPv4-mapped address is the IPv4 address. */
	for (int i = 0; i < 5; i++)
		throttle_fail(t, i % 2 ? "::ffff:192.0.2.33" : "192.0.2.33", NULL, 0, &r);
	assert_int_equal(r.verdict, THROTTLE_BLOCK_ADDR);
	throttle_check(t, "::ffff:192.0.2.33", NULL, SEC, &r);
	assert_int_equal(r.verdict, THROTTLE_BLOCK_ADDR);
	throttle_free(t);
}

static void table_stays_bounded(void **state)
{
	struct throttle_config c = small_cfg();
	struct throttle *t;
	struct throttle_result r;
	char user[64];

	(void)state;
	c.max_entries = 16;
	t = throttle_new(&c);
	/* An attacker spraying user names: the table holds 16 entries at most,
	 * and its own address (touched on every failure) is never the one
	 * dropped, so it is still blocked and still counted. */
	for (int i = 0; i < 1000; i++) {
		snprintf(user, sizeof(user), "user%d@example.org", i);
		throttle_fail(t, "192.0.2.66", user, (unsigned long long)i, &r);
		assert_true(throttle_entries(t) <= 16);
	}
	assert_int_equal(r.verdict, THROTTLE_BLOCK_ADDR);
	assert_int_equal(r.failures, 1000);
	throttle_free(t);

	/* A table of one still works (the address wins the slot). */
	c.max_entries = 1;
	t = throttle_new(&c);
	throttle_fail(t, "192.0.2.1", "x@example.org", 0, &r);
	throttle_fail(t, "192.0.2.1", "y@example.org", 0, &r);
	assert_int_equal(throttle_entries(t), 1);
	assert_int_equal(r.failures, 2);
	throttle_free(t);
}

static void reasons_are_quoted(void **state)
{
	struct throttle_config c = small_cfg();
	struct throttle *t = throttle_new(&c);
	struct throttle_result r;

	(void)state;
	/* A user name with a space and a forged field stays one quoted value. */
	for (int i = 0; i < 8; i++)
		throttle_fail(t, NULL, "x y result=ok", 0, &r);
	assert_int_equal(r.verdict, THROTTLE_BLOCK_USER);
	assert_string_equal(r.reason, "user=\"x y result=ok\" failures=8 blocked_for=600s");
	throttle_check(t, "192.0.2.1", NULL, 0, &r);
	assert_int_equal(r.verdict, THROTTLE_ALLOW);
	assert_string_equal(r.reason, "");
	throttle_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(delay_doubles_to_its_cap),
	    cmocka_unit_test(address_block_and_its_end),
	    cmocka_unit_test(user_block_from_any_address),
	    cmocka_unit_test(quiet_window_forgets),
	    cmocka_unit_test(success_forgets_the_user_not_the_address),
	    cmocka_unit_test(ipv6_counts_per_64),
	    cmocka_unit_test(table_stays_bounded),
	    cmocka_unit_test(reasons_are_quoted),
	};

	return cmocka_run_group_tests_name("throttle", tests, NULL, NULL);
}
