/*
 * test_parts_exact.c — src/mime/parts_exact.c: where each part of a raw
 * message lies (PartIDs as mime.h numbers them, bodies without the CRLF
 * before a delimiter, digests defaulting to message/rfc822, transport
 * padding, a missing close delimiter), the first Content-Type of a header
 * block, and the same-length copy with later Content-Type fields renamed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/err.h"
#include "mime/parts_exact.h"

static const char *body_of(const char *raw, const struct mime_spans *s, const char *id, size_t *len)
{
	const struct mime_span *sp = mime_span_find(s, id);
	if (!sp)
		return NULL;
	*len = sp->body_len;
	return raw + sp->body_off;
}

static void assert_body(const char *raw, const struct mime_spans *s, const char *id,
                        const char *want)
{
	size_t n = 0;
	const char *b = body_of(raw, s, id, &n);
	if (!b)
		fail_msg("no part %s", id);
	if (n != strlen(want) || memcmp(b, want, n) != 0)
		fail_msg("part %s: got \"%.*s\", want \"%s\"", id, (int)n, b, want);
}

static void single_part_is_0(void **state)
{
	const char *m = "Subject: x\r\nContent-Type: TEXT/Plain; charset=x\r\n\r\nhello\r\n";
	struct mime_spans s;
	assert_int_equal(mime_spans(m, strlen(m), &s), TERN_OK);
	assert_int_equal(s.n, 1);
	assert_string_equal(s.v[0].part_id, "0");
	assert_string_equal(s.v[0].content_type, "text/plain");
	assert_body(m, &s, "0", "hello\r\n");
	mime_spans_free(&s);
}

static void nested_parts_and_rfc822(void **state)
{
	const char *m = "Content-Type: multipart/mixed; boundary=\"o\"\r\n\r\npreamble\r\n"
	                "--o\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n"
	                "--i\r\n\r\nplain\r\n--i \r\nContent-Type: text/html\r\n\r\n<p>h</p>\r\n"
	                "--i--\r\n--o\r\nContent-Type: message/rfc822\r\n"
	                "Content-Transfer-Encoding: 7BIT\r\n\r\nSubject: in\r\n\r\nbody\r\n\r\n"
	                "--o--\r\nepilogue\r\n";
	struct mime_spans s;
	assert_int_equal(mime_spans(m, strlen(m), &s), TERN_OK);
	assert_true(mime_span_find(&s, "1") == NULL); /* a multipart, not a leaf */
	assert_body(m, &s, "1.1", "plain");
	assert_body(m, &s, "1.2", "<p>h</p>"); /* "--i " with padding is a delimiter */
	assert_body(m, &s, "2", "Subject: in\r\n\r\nbody\r\n");
	assert_string_equal(mime_span_find(&s, "2")->content_type, "message/rfc822");
	assert_string_equal(mime_span_find(&s, "2")->cte, "7bit");
	assert_true(mime_span_find(&s, "3") == NULL);
	mime_spans_free(&s);
}

static void digest_defaults_and_missing_close(void **state)
{
	const char *m =
	    "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: a\r\n"
	    "\r\nA\r\n--d\r\nContent-Type: text/plain\r\n\r\nB\r\n--dd\r\nC";
	struct mime_spans s;
	assert_int_equal(mime_spans(m, strlen(m), &s), TERN_OK);
	assert_string_equal(mime_span_find(&s, "1")->content_type, "message/rfc822");
	assert_string_equal(mime_span_find(&s, "2")->content_type, "text/plain");
	/* "--dd" is not the delimiter; with no close the last part runs to the end */
	assert_body(m, &s, "2", "B\r\n--dd\r\nC");
	mime_spans_free(&s);
}

static void two_content_types(void **state)
{
	const char *m = "Content-Type: text/plain\r\nX: y\r\ncontent-type : text/html\r\n"
	                "CONTENT-TYPE: image/png\r\n\r\nbody";
	struct mime_spans s;
	size_t len = strlen(m);
	assert_int_equal(mime_spans(m, len, &s), TERN_OK);
	assert_string_equal(s.v[0].content_type, "text/plain");
	assert_int_equal(s.n_dups, 2);
	char *c = mime_first_ct_copy(m, len, &s);
	assert_non_null(c);
	const char *want = "Content-Type: text/plain\r\nX: y\r\n" MIME_DUP_CT_NAME
	                   " : text/html\r\n" MIME_DUP_CT_NAME ": image/png\r\n\r\nbody";
	assert_int_equal(strlen(want), len);
	assert_memory_equal(c, want, len);
	free(c);
	mime_spans_free(&s);
	/* one each: no copy */
	const char *one = "Content-Type: text/plain\r\n\r\nx";
	assert_int_equal(mime_spans(one, strlen(one), &s), TERN_OK);
	assert_null(mime_first_ct_copy(one, strlen(one), &s));
	mime_spans_free(&s);
}

static void broken_input(void **state)
{
	static const char *t[] = {"",
	                          "\r\n",
	                          "Content-Type: multipart/mixed; boundary=",
	                          "Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n",
	                          "Content-Type: multipart/x; boundary=a\r\n\r\n--a\r\n--a\r\n--a",
	                          "no colon line\r\n\r\n",
	                          "Content-Type:\r\n\r\n"};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct mime_spans s;
		assert_int_equal(mime_spans(t[i], strlen(t[i]), &s), TERN_OK);
		for (size_t k = 0; k < s.n; k++)
			assert_true(s.v[k].body_off + s.v[k].body_len <= strlen(t[i]));
		mime_spans_free(&s);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(single_part_is_0),
	    cmocka_unit_test(nested_parts_and_rfc822),
	    cmocka_unit_test(digest_defaults_and_missing_close),
	    cmocka_unit_test(two_content_types),
	    cmocka_unit_test(broken_input),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
