/*
 * test_buf.c — the growable buffer every module builds output in
 * (src/core/buf.c): appends past max are refused whole and leave the
 * buffer as it was, data[len] is always a NUL, an unlimited buffer
 * (max = SIZE_MAX, as the spool's read-back uses) grows like any other
 * (its max + 1 once wrapped to 0 and shrank the allocation to nothing),
 * and tbuf_steal hands the bytes over and leaves an empty buffer.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"

static void test_appends_within_max(void **st)
{
	(void)st;
	struct tbuf b = TBUF_INIT(8);
	assert_int_equal(tbuf_append_str(&b, "abcd"), TERN_OK);
	assert_int_equal(tbuf_append(&b, "efgh", 4), TERN_OK); /* exactly max */
	assert_int_equal(b.len, 8);
	assert_string_equal(b.data, "abcdefgh");
	assert_int_equal(tbuf_append(&b, "i", 1), TERN_ELIMIT); /* refused whole */
	assert_int_equal(b.len, 8);
	assert_string_equal(b.data, "abcdefgh");
	tbuf_free(&b);
}

static void test_unlimited_buffer_grows(void **st)
{
	(void)st;
	struct tbuf b;
	tbuf_init(&b, SIZE_MAX);
	char chunk[4096];
	memset(chunk, 'x', sizeof(chunk));
	for (int i = 0; i < 64; i++) /* 256 KiB, through many reallocations */
		assert_int_equal(tbuf_append(&b, chunk, sizeof(chunk)), TERN_OK);
	assert_int_equal(b.len, 64 * sizeof(chunk));
	assert_true(b.cap > b.len);
	assert_int_equal(b.data[b.len], '\0');
	assert_int_equal(tbuf_reserve(&b, 1u << 20), TERN_OK);
	assert_true(b.cap >= b.len + (1u << 20) + 1);
	assert_int_equal(tbuf_reserve(&b, SIZE_MAX), TERN_ELIMIT); /* len + extra would wrap */
	tbuf_free(&b);
}

static void test_steal_leaves_an_empty_buffer(void **st)
{
	(void)st;
	struct tbuf b = TBUF_INIT(100);
	assert_int_equal(tbuf_printf(&b, "%s-%d", "n", 42), TERN_OK);
	size_t len = 0;
	char *p = tbuf_steal(&b, &len);
	assert_non_null(p);
	assert_int_equal(len, 4);
	assert_string_equal(p, "n-42");
	free(p);
	assert_int_equal(b.len, 0);
	assert_null(b.data);
	assert_int_equal(tbuf_append_str(&b, "again"), TERN_OK);
	assert_string_equal(b.data, "again");
	tbuf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_appends_within_max),
	    cmocka_unit_test(test_unlimited_buffer_grows),
	    cmocka_unit_test(test_steal_leaves_an_empty_buffer),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
