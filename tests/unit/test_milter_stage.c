/*
 * test_milter_stage.c — the pure parts of the session's milter stage
 * (src/smtp/milter_stage.c): header changes applied to message bytes
 * (milter_apply_mods: add, insert, change, delete, by name and index,
 * folded fields, a message without a body, the output cap) and which
 * listener an accepted connection belongs to (milter_stage_listener).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <netinet/in.h>

#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "smtp/milter_stage.h"

#define MSG                                                                                        \
	"Received: from x by y; date\r\n"                                                          \
	"From: a@example.org\r\n"                                                                  \
	"Subject: hello\r\n"                                                                       \
	"  folded\r\n"                                                                             \
	"X-Twice: one\r\n"                                                                         \
	"x-twice: two\r\n"                                                                         \
	"\r\n"                                                                                     \
	"Body line\r\n"                                                                            \
	"X-Not-A-Header: body\r\n"

static char *apply(const char *msg, const struct milter_mod *mods, size_t n, size_t max, int *rc)
{
	struct tbuf out = TBUF_INIT(max);
	*rc = milter_apply_mods(msg, strlen(msg), NULL, mods, n, &out);
	if (*rc != TERN_OK) {
		tbuf_free(&out);
		return NULL;
	}
	char *s = out.data ? out.data : tern_strdup("");
	return s;
}

#define MOD(k, i, n, v)                                                                            \
	{                                                                                          \
		(k), (i), (char *)(n), (char *)(v)                                                 \
	}

static void expect(const struct milter_mod *mods, size_t n, const char *want)
{
	int rc;
	char *got = apply(MSG, mods, n, 1 << 20, &rc);
	assert_int_equal(rc, TERN_OK);
	assert_string_equal(got, want);
	free(got);
}

static void test_no_mods_is_identity(void **state)
{
	expect(NULL, 0, MSG);
}

static void test_add_goes_after_the_last_field(void **state)
{
	struct milter_mod m[] = {MOD(MILTER_MOD_ADD, 0, "X-Spam", "Yes"),
	                         MOD(MILTER_MOD_ADD, 0, "X-Lead", " kept space"),
	                         MOD(MILTER_MOD_ADD, 0, "X-Fold", "a\r\n\tb")};
	expect(
	    m, 3,
	    "Received: from x by y; date\r\nFrom: a@example.org\r\nSubject: hello\r\n  folded\r\n"
	    "X-Twice: one\r\nx-twice: two\r\nX-Spam: Yes\r\nX-Lead: kept space\r\n"
	    "X-Fold: a\r\n\tb\r\n\r\nBody line\r\nX-Not-A-Header: body\r\n");
}

static void test_insert_by_position(void **state)
{
	struct milter_mod m[] = {MOD(MILTER_MOD_INSERT, 0, "X-Top", "1"),
	                         MOD(MILTER_MOD_INSERT, 2, "X-Third", "3"),
	                         MOD(MILTER_MOD_INSERT, 999, "X-End", "e")};
	expect(m, 3,
	       "X-Top: 1\r\nReceived: from x by y; date\r\nX-Third: 3\r\nFrom: a@example.org\r\n"
	       "Subject: hello\r\n  folded\r\nX-Twice: one\r\nx-twice: two\r\nX-End: e\r\n"
	       "\r\nBody line\r\nX-Not-A-Header: body\r\n");
}

static void test_change_by_name_and_index(void **state)
{
	/* a folded field is replaced whole; the second of two (any case) */
	struct milter_mod m[] = {MOD(MILTER_MOD_CHANGE, 1, "subject", "[SPAM] hello"),
	                         MOD(MILTER_MOD_CHANGE, 2, "X-Twice", "TWO")};
	expect(m, 2,
	       "Received: from x by y; date\r\nFrom: a@example.org\r\nsubject: [SPAM] hello\r\n"
	       "X-Twice: one\r\nX-Twice: TWO\r\n\r\nBody line\r\nX-Not-A-Header: body\r\n");
}

static void test_change_of_a_missing_field_adds_it(void **state)
{
	struct milter_mod m[] = {MOD(MILTER_MOD_CHANGE, 3, "X-Twice", "three"),
	                         MOD(MILTER_MOD_CHANGE, 1, "X-Not-A-Header", "now one")};
	expect(
	    m, 2,
	    "Received: from x by y; date\r\nFrom: a@example.org\r\nSubject: hello\r\n  folded\r\n"
	    "X-Twice: one\r\nx-twice: two\r\nX-Twice: three\r\nX-Not-A-Header: now one\r\n"
	    "\r\nBody line\r\nX-Not-A-Header: body\r\n");
}

static void test_delete(void **state)
{
	/* the first X-Twice, then (indexes count what is left) the second
	 * becomes the first; a missing one is no error; the body is not a
	 * header section */
	struct milter_mod m[] = {
	    MOD(MILTER_MOD_DELETE, 1, "X-Twice", ""), MOD(MILTER_MOD_DELETE, 1, "X-TWICE", ""),
	    MOD(MILTER_MOD_DELETE, 1, "X-Not-A-Header", ""),
	    MOD(MILTER_MOD_DELETE, 5, "Subject", ""), MOD(MILTER_MOD_DELETE, 1, "Subject", "")};
	expect(m, 5,
	       "Received: from x by y; date\r\nFrom: a@example.org\r\n\r\nBody line\r\n"
	       "X-Not-A-Header: body\r\n");
}

static void test_message_without_body(void **state)
{
	struct milter_mod m[] = {MOD(MILTER_MOD_ADD, 0, "X-A", "1")};
	int rc;
	char *got = apply("Subject: x\r\n", m, 1, 1 << 20, &rc);
	assert_int_equal(rc, TERN_OK);
	assert_string_equal(got, "Subject: x\r\nX-A: 1\r\n");
	free(got);
	got = apply("", m, 1, 1 << 20, &rc);
	assert_int_equal(rc, TERN_OK);
	assert_string_equal(got, "X-A: 1\r\n");
	free(got);
	/* a message that starts with its body: the field goes before the empty line */
	got = apply("\r\nbody\r\n", m, 1, 1 << 20, &rc);
	assert_int_equal(rc, TERN_OK);
	assert_string_equal(got, "X-A: 1\r\n\r\nbody\r\n");
	free(got);
}

static void test_obsolete_space_before_colon_and_lines_without_colon(void **state)
{
	struct milter_mod m[] = {MOD(MILTER_MOD_CHANGE, 1, "Subject", "new")};
	int rc;
	char *got = apply("Subject : old\r\nno colon line\r\n\r\nb\r\n", m, 1, 1 << 20, &rc);
	assert_int_equal(rc, TERN_OK);
	assert_string_equal(got, "Subject: new\r\nno colon line\r\n\r\nb\r\n");
	free(got);
}

static void test_trace_prefix_follows_the_changes(void **state)
{
	const char *rcv = "Received: from x by y; date\r\n";
	struct tbuf out = TBUF_INIT(1 << 20);
	/* inserted above the client's first field: ours; added at the end: the client's */
	struct milter_mod m1[] = {MOD(MILTER_MOD_INSERT, 0, "X-Top", "1"),
	                          MOD(MILTER_MOD_INSERT, 2, "X-Second", "2"),
	                          MOD(MILTER_MOD_ADD, 0, "X-End", "e")};
	size_t prefix = strlen(rcv);
	assert_int_equal(milter_apply_mods(MSG, strlen(MSG), &prefix, m1, 3, &out), TERN_OK);
	assert_int_equal(prefix, strlen("X-Top: 1\r\n") + strlen(rcv) + strlen("X-Second: 2\r\n"));
	assert_memory_equal(out.data + prefix, "From: a@example.org\r\n", 21);
	/* the client's first field deleted: its second is the first now; a change
	 * of our Received keeps it ours */
	struct milter_mod m2[] = {MOD(MILTER_MOD_DELETE, 1, "From", ""),
	                          MOD(MILTER_MOD_CHANGE, 1, "Received", "from z")};
	prefix = strlen(rcv);
	assert_int_equal(milter_apply_mods(MSG, strlen(MSG), &prefix, m2, 2, &out), TERN_OK);
	assert_int_equal(prefix, strlen("Received: from z\r\n"));
	assert_memory_equal(out.data + prefix, "Subject: hello", 14);
	/* no field of the client's left: everything above the empty line is ours */
	struct milter_mod m3[] = {
	    MOD(MILTER_MOD_DELETE, 1, "From", ""), MOD(MILTER_MOD_DELETE, 1, "Subject", ""),
	    MOD(MILTER_MOD_DELETE, 1, "X-Twice", ""), MOD(MILTER_MOD_DELETE, 1, "X-Twice", "")};
	prefix = strlen(rcv);
	assert_int_equal(milter_apply_mods(MSG, strlen(MSG), &prefix, m3, 4, &out), TERN_OK);
	assert_int_equal(prefix, strlen(rcv));
	assert_memory_equal(out.data + prefix, "\r\nBody line", 11);
	tbuf_free(&out);
}

static void test_output_cap(void **state)
{
	struct milter_mod m[] = {MOD(MILTER_MOD_ADD, 0, "X-Big", "0123456789")};
	int rc;
	char *got = apply(MSG, m, 1, strlen(MSG) + 5, &rc);
	assert_null(got);
	assert_int_equal(rc, TERN_ELIMIT);
	got = apply(MSG, m, 1, strlen(MSG) + strlen("X-Big: 0123456789\r\n"), &rc);
	assert_int_equal(rc, TERN_OK);
	free(got);
}

static void test_listener_by_bound_address(void **state)
{
	char *m1[] = {(char *)"inet:127.0.0.1:11332"};
	struct conf_listener ls[] = {
	    {.name = (char *)"plain", .address = (char *)"127.0.0.1:25", .profile = (char *)"mx"},
	    {.name = (char *)"mx",
	     .address = (char *)"0.0.0.0:2525",
	     .profile = (char *)"mx",
	     .milters = m1,
	     .n_milters = 1},
	    {.name = (char *)"mx6",
	     .address = (char *)"[::1]:2525",
	     .profile = (char *)"mx",
	     .milters = m1,
	     .n_milters = 1},
	};
	struct tern_config c;
	memset(&c, 0, sizeof(c));
	c.listeners = ls;
	c.n_listeners = 3;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(2525)};
	assert_ptr_equal(milter_stage_listener(&c, (struct sockaddr *)&a), &ls[1]);
	/* a listener without milters is never the answer */
	a.sin_port = htons(25);
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	assert_null(milter_stage_listener(&c, (struct sockaddr *)&a));
	struct sockaddr_in6 b = {.sin6_family = AF_INET6, .sin6_port = htons(2525)};
	inet_pton(AF_INET6, "::1", &b.sin6_addr);
	assert_ptr_equal(milter_stage_listener(&c, (struct sockaddr *)&b), &ls[2]);
	b.sin6_port = htons(2526);
	assert_null(milter_stage_listener(&c, (struct sockaddr *)&b));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_no_mods_is_identity),
	    cmocka_unit_test(test_add_goes_after_the_last_field),
	    cmocka_unit_test(test_insert_by_position),
	    cmocka_unit_test(test_change_by_name_and_index),
	    cmocka_unit_test(test_change_of_a_missing_field_adds_it),
	    cmocka_unit_test(test_delete),
	    cmocka_unit_test(test_message_without_body),
	    cmocka_unit_test(test_obsolete_space_before_colon_and_lines_without_colon),
	    cmocka_unit_test(test_trace_prefix_follows_the_changes),
	    cmocka_unit_test(test_output_cap),
	    cmocka_unit_test(test_listener_by_bound_address),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
