/*
 * test_remote_stream.c — sending a spilled message from its file
 * (src/deliver/remote_stream.c). What delivery depends on: the DATA text
 * sent in pieces is byte for byte what smtp_data_encode makes of the whole
 * message (dot-stuffing, CRLF, NUL, the end line) wherever the pieces are
 * cut, and the pump sends exactly the file range it was given, in bounded
 * steps, and says so when the file is short.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "deliver/remote_stream.h"
#include "smtp/smtp.h"

static void to_tbuf(void *arg, const char *p, size_t n)
{
	assert_true(n > 0);
	assert_int_equal(tbuf_append(arg, p, n), TERN_OK);
}

static void encode_split(const char *m, size_t n, const size_t *cuts, size_t ncuts,
                         struct tbuf *out)
{
	struct data_encoder e;
	data_encoder_init(&e);
	size_t at = 0;
	for (size_t k = 0; k <= ncuts; k++) {
		size_t to = k < ncuts ? cuts[k] : n;
		data_encoder_feed(&e, m + at, to - at, to_tbuf, out);
		at = to;
	}
	data_encoder_end(&e, to_tbuf, out);
}

/* Every input over the bytes that matter, cut at every one and two points. */
static void test_encoder_equals_whole_message_encoding_wherever_cut(void **st)
{
	(void)st;
	const char alphabet[] = {'a', '.', '\r', '\n', '\0'};
	unsigned seed = 12345;
	for (int iter = 0; iter < 3000; iter++) {
		char m[24];
		size_t n = (size_t)(iter % 24);
		for (size_t i = 0; i < n; i++) {
			seed = seed * 1103515245u + 12345u;
			m[i] = alphabet[(seed >> 16) % 5];
		}
		struct tbuf want = TBUF_INIT(1 << 16);
		smtp_data_encode(m, n, to_tbuf, &want);
		for (size_t a = 0; a <= n; a++) {
			for (size_t b = a; b <= n; b++) {
				size_t cuts[2] = {a, b};
				struct tbuf got = TBUF_INIT(1 << 16);
				encode_split(m, n, cuts, 2, &got);
				assert_int_equal(got.len, want.len);
				assert_memory_equal(got.data, want.data, want.len);
				tbuf_free(&got);
			}
		}
		tbuf_free(&want);
	}
}

/* The pump sends the file range [off, off+len) encoded after a head the
 * encoder saw first, tops up only while little is queued, and ends with
 * the end line once. */
static void test_pump_sends_the_range_after_the_head(void **st)
{
	(void)st;
	char path[] = "/tmp/tern-pump-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	size_t n = 3 * STREAM_LOW + 123;
	char *file = malloc(n);
	for (size_t i = 0; i < n; i++)
		file[i] = (i % 80 == 79) ? '\n' : (i % 80 == 0 ? '.' : (char)('a' + i % 26));
	assert_int_equal(write(fd, file, n), (ssize_t)n);
	close(fd);
	const char *head = "Received: x\r\nSubject: y\r\n\r\n";
	size_t off = 1000;

	struct tbuf whole = TBUF_INIT((size_t)1 << 30);
	assert_int_equal(tbuf_append(&whole, head, strlen(head)), TERN_OK);
	assert_int_equal(tbuf_append(&whole, file + off, n - off), TERN_OK);
	struct tbuf want = TBUF_INIT((size_t)1 << 30);
	smtp_data_encode(whole.data, whole.len, to_tbuf, &want);

	struct body_pump p;
	body_pump_init(&p);
	assert_int_equal(body_pump_open(&p, path, off, n - off), TERN_OK);
	struct tbuf got = TBUF_INIT((size_t)1 << 30);
	data_encoder_feed(&p.enc, head, strlen(head), to_tbuf, &got);
	body_pump_start(&p, false);
	int steps = 0;
	size_t sent = 0;
	while (p.active) {
		size_t before = got.len;
		assert_int_equal(body_pump_fill(&p, 0, to_tbuf, &got), TERN_OK);
		/* bounded: at most STREAM_LOW plus one read (and its stuffing) per step */
		assert_true(got.len - before <= STREAM_LOW + 2 * STREAM_READ);
		sent = got.len;
		steps++;
		assert_true(steps < 100);
	}
	(void)sent;
	assert_int_equal(got.len, want.len);
	assert_memory_equal(got.data, want.data, want.len);
	/* nothing queued while enough waits */
	body_pump_init(&p);
	assert_int_equal(body_pump_open(&p, path, 0, n), TERN_OK);
	body_pump_start(&p, true);
	tbuf_reset(&got);
	assert_int_equal(body_pump_fill(&p, STREAM_LOW, to_tbuf, &got), TERN_OK);
	assert_int_equal(got.len, 0);
	/* a file shorter than its range is an error, not a short message */
	body_pump_close(&p);
	assert_int_equal(body_pump_open(&p, path, 0, n + 10), TERN_OK);
	body_pump_start(&p, true);
	int rc = TERN_OK;
	for (int k = 0; k < 100 && p.active && rc == TERN_OK; k++)
		rc = body_pump_fill(&p, 0, to_tbuf, &got);
	assert_int_equal(rc, TERN_ECORRUPT);
	unlink(path);
	free(file);
	tbuf_free(&whole);
	tbuf_free(&want);
	tbuf_free(&got);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_encoder_equals_whole_message_encoding_wherever_cut),
	    cmocka_unit_test(test_pump_sends_the_range_after_the_head),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
