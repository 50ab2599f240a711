/*
 * test_capture_tags.c — the tags a caught message gets (src/store/
 * capture_tags.c): Mailpit's name cleaning, plus addresses (last '+' of
 * the local part), X-Tags fields (several, folded, mixed case), the
 * per-message bound, and MP_TAGS_DISABLE's values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "store/capture_tags.h"

static void cleans_as_mailpit(void **state)
{
	char out[CAPTURE_TAG_MAX + 1];
	assert_int_equal(capture_tag_clean("  Hello,   World! ", 18, out), 11);
	assert_string_equal(out, "Hello World");
	capture_tag_clean("a_b-c.d", 7, out);
	assert_string_equal(out, "a_b-c.d");
	assert_int_equal(capture_tag_clean("<>!!", 4, out), 0);
	assert_int_equal(capture_tag_clean("caf\xc3\xa9 bar", 9, out), 7);
	assert_string_equal(out, "caf bar");
	char long_in[300];
	memset(long_in, 'x', sizeof(long_in));
	assert_int_equal(capture_tag_clean(long_in, sizeof(long_in), out), CAPTURE_TAG_MAX);
}

static void plus_addresses(void **state)
{
	struct capture_tag_set s = {.n = 0};
	capture_tags_plus("user+newsletter@example.com", &s);
	capture_tags_plus("user+a+b@example.com", &s);        /* the last '+' */
	capture_tags_plus("user+NewsLetter@example.com", &s); /* once, any case */
	capture_tags_plus("plain@example.com", &s);
	capture_tags_plus("+lead@example.com", &s); /* no user part: none */
	capture_tags_plus("user+@example.com", &s); /* empty: none */
	capture_tags_plus("user@ex+ample.com", &s); /* '+' in the domain: none */
	capture_tags_plus(NULL, &s);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.v[0], "newsletter");
	assert_string_equal(s.v[1], "b");
}

static void x_tags_fields(void **state)
{
	const char msg[] = "From: a@b\r\n"
	                   "x-tags: one, two ,,Three Words\r\n"
	                   "Subject: hi\r\n"
	                   "X-Tags: four,\r\n"
	                   "\tfive\r\n"
	                   "\r\n"
	                   "X-Tags: not-a-header\r\n";
	struct capture_tag_set s = {.n = 0};
	capture_tags_xtags(msg, sizeof(msg) - 1, &s);
	assert_int_equal(s.n, 5);
	assert_string_equal(s.v[0], "one");
	assert_string_equal(s.v[1], "two");
	assert_string_equal(s.v[2], "Three Words");
	assert_string_equal(s.v[3], "four");
	assert_string_equal(s.v[4], "five");
}

static void derive_follows_the_rules(void **state)
{
	const char msg[] = "X-Tags: alpha\n\nbody\n";
	const char *to[] = {"dev+beta@example.test", "ops@example.test"};
	struct capture_tag_set s;
	capture_tags_derive(NULL, msg, sizeof(msg) - 1, to, 2,
	                    CAPTURE_TAGS_PLUS | CAPTURE_TAGS_XTAGS, &s);
	assert_int_equal(s.n, 2);
	capture_tags_derive(NULL, msg, sizeof(msg) - 1, to, 2, CAPTURE_TAGS_XTAGS, &s);
	assert_int_equal(s.n, 1);
	assert_string_equal(s.v[0], "alpha");
	capture_tags_derive(NULL, msg, sizeof(msg) - 1, to, 2, CAPTURE_TAGS_PLUS, &s);
	assert_int_equal(s.n, 1);
	assert_string_equal(s.v[0], "beta");
	capture_tags_derive(NULL, msg, sizeof(msg) - 1, to, 2, 0, &s);
	assert_int_equal(s.n, 0);
}

static void bounded_per_message(void **state)
{
	char msg[4096] = "X-Tags: ";
	for (int i = 0; i < 50; i++) {
		char t[16];
		snprintf(t, sizeof(t), "t%d,", i);
		size_t l = strlen(msg);
		snprintf(msg + l, sizeof(msg) - l, "%s", t);
	}
	size_t l = strlen(msg);
	snprintf(msg + l, sizeof(msg) - l, "\n\n");
	struct capture_tag_set s = {.n = 0};
	capture_tags_xtags(msg, strlen(msg), &s);
	assert_int_equal(s.n, CAPTURE_TAGS_PER_MSG);
}

static void disable_values(void **state)
{
	unsigned r;
	assert_true(capture_tags_parse_disable("", &r));
	assert_int_equal(r, CAPTURE_TAGS_PLUS | CAPTURE_TAGS_XTAGS);
	assert_true(capture_tags_parse_disable("plus-addresses", &r));
	assert_int_equal(r, CAPTURE_TAGS_XTAGS);
	assert_true(capture_tags_parse_disable("X-Tags, plus-addresses", &r));
	assert_int_equal(r, 0);
	assert_false(capture_tags_parse_disable("everything", &r));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(cleans_as_mailpit),   cmocka_unit_test(plus_addresses),
	    cmocka_unit_test(x_tags_fields),       cmocka_unit_test(derive_follows_the_rules),
	    cmocka_unit_test(bounded_per_message), cmocka_unit_test(disable_values),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
