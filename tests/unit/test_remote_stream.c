/*
 * test_remote_stream.c — sending a spilled message from its file
 * (src/deliver/remote_stream.c). What delivery depends on: the DATA text
 * sent in pieces is byte for byte what smtp_data_encode makes of the whole
 * message (dot-stuffing, CRLF, NUL, the end line) wherever the pieces are
 * cut, and the pump sends exactly the file range it was given, in bounded
 * steps, and says so when the file is short; read ahead on a pool it sends
 * the same bytes, and with a CRC that differs it never sends the end (the
 * last chunk is held back); a pump closed while a read runs leaks nothing;
 * the Maildir copy checks the CRC too.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/loop.h"
#include "deliver/remote_stream.h"
#include "queue/spill.h"
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
	assert_int_equal(body_pump_open(&p, NULL, NULL, path, off, n - off, false, 0, NULL, NULL),
	                 TERN_OK);
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
	assert_int_equal(body_pump_open(&p, NULL, NULL, path, 0, n, false, 0, NULL, NULL), TERN_OK);
	body_pump_start(&p, true);
	tbuf_reset(&got);
	assert_int_equal(body_pump_fill(&p, STREAM_LOW, to_tbuf, &got), TERN_OK);
	assert_int_equal(got.len, 0);
	/* a file shorter than its range is an error, not a short message */
	body_pump_close(&p);
	assert_int_equal(body_pump_open(&p, NULL, NULL, path, 0, n + 10, false, 0, NULL, NULL),
	                 TERN_OK);
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

/* ---- read ahead on a pool, told through the worker's loop ---- */

struct drive {
	struct worker *w;
	struct pool *pool;
	const char *path;
	uint64_t off, len;
	uint32_t crc;
	const char *head;
	struct body_pump p;
	struct tbuf got;
	int rc;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	bool done;
};

static void drive_step(void *arg);

static void drive_more(void *arg)
{
	drive_step(arg);
}

/* On the worker: what on_wire_drained does, with nothing ever queued. */
static void drive_step(void *arg)
{
	struct drive *d = arg;
	if (d->done)
		return;
	int rc = body_pump_fill(&d->p, 0, to_tbuf, &d->got);
	if (rc == TERN_OK && d->p.active) {
		(void)worker_post(d->w, drive_step, d); /* or drive_more, when a read ends */
		return;
	}
	pthread_mutex_lock(&d->mu);
	d->rc = rc;
	d->done = true;
	pthread_cond_signal(&d->cond);
	pthread_mutex_unlock(&d->mu);
}

static void drive_start(void *arg)
{
	struct drive *d = arg;
	assert_int_equal(body_pump_open(&d->p, d->pool, d->w, d->path, d->off, d->len, true, d->crc,
	                                drive_more, d),
	                 TERN_OK);
	data_encoder_feed(&d->p.enc, d->head, strlen(d->head), to_tbuf, &d->got);
	body_pump_start(&d->p, false);
	drive_step(d);
}

static int drive_run(struct drive *d)
{
	pthread_mutex_init(&d->mu, NULL);
	pthread_cond_init(&d->cond, NULL);
	assert_int_equal(worker_post(d->w, drive_start, d), TERN_OK);
	pthread_mutex_lock(&d->mu);
	while (!d->done)
		pthread_cond_wait(&d->cond, &d->mu);
	pthread_mutex_unlock(&d->mu);
	pthread_mutex_destroy(&d->mu);
	pthread_cond_destroy(&d->cond);
	return d->rc;
}

static char *make_file(char *path, size_t n)
{
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	char *file = malloc(n);
	for (size_t i = 0; i < n; i++)
		file[i] = (i % 77 == 76) ? '\n' : (i % 77 == 0 ? '.' : (char)('a' + i % 26));
	assert_int_equal(write(fd, file, n), (ssize_t)n);
	close(fd);
	return file;
}

static void test_read_ahead_sends_the_same_and_holds_back_a_damaged_end(void **st)
{
	(void)st;
	assert_int_equal(loop_global_init(), TERN_OK);
	struct worker *w = worker_new(0);
	assert_non_null(w);
	assert_int_equal(worker_start(w), TERN_OK);
	struct pool *pool = pool_new(2);
	assert_non_null(pool);
	char path[] = "/tmp/tern-pump-XXXXXX";
	size_t n = 7 * STREAM_READ + 4321, off = 70000; /* the CRC covers [0, off) too */
	char *file = make_file(path, n);
	const char *head = "Received: x\r\nSubject: y\r\n\r\n";
	struct tbuf whole = TBUF_INIT((size_t)1 << 30);
	assert_int_equal(tbuf_append(&whole, head, strlen(head)), TERN_OK);
	assert_int_equal(tbuf_append(&whole, file + off, n - off), TERN_OK);
	struct tbuf want = TBUF_INIT((size_t)1 << 30);
	smtp_data_encode(whole.data, whole.len, to_tbuf, &want);
	uint32_t crc = spill_crc32c(0, file, n);

	/* the right CRC: byte for byte what the whole message encodes to */
	struct drive d = {.w = w,
	                  .pool = pool,
	                  .path = path,
	                  .off = off,
	                  .len = n - off,
	                  .crc = crc,
	                  .head = head,
	                  .got = TBUF_INIT((size_t)1 << 30)};
	body_pump_init(&d.p);
	assert_int_equal(drive_run(&d), TERN_OK);
	assert_int_equal(d.got.len, want.len);
	assert_memory_equal(d.got.data, want.data, want.len);
	tbuf_free(&d.got);

	/* another CRC (a byte changed on disk): an error, and the end never sent */
	struct drive e = {.w = w,
	                  .pool = pool,
	                  .path = path,
	                  .off = off,
	                  .len = n - off,
	                  .crc = crc ^ 1u,
	                  .head = head,
	                  .got = TBUF_INIT((size_t)1 << 30)};
	body_pump_init(&e.p);
	assert_int_equal(drive_run(&e), TERN_ECORRUPT);
	assert_false(e.p.active);
	size_t last = (n - off) % STREAM_READ ? (n - off) % STREAM_READ : STREAM_READ;
	assert_true(e.got.len + last <= want.len);
	assert_memory_equal(e.got.data, want.data, e.got.len);
	tbuf_free(&e.got);

	/* closed at once, reads queued or running: they free the reader (ASan: no leak) */
	for (int k = 0; k < 20; k++) {
		struct body_pump q;
		body_pump_init(&q);
		assert_int_equal(
		    body_pump_open(&q, pool, w, path, off, n - off, true, crc, drive_more, NULL),
		    TERN_OK);
		body_pump_close(&q);
	}
	pool_free(pool);
	worker_stop_and_join(w);
	worker_free(w);
	unlink(path);
	free(file);
	tbuf_free(&whole);
	tbuf_free(&want);
}

static void test_maildir_copy_checks_the_crc(void **st)
{
	(void)st;
	char path[] = "/tmp/tern-copy-XXXXXX", dpath[] = "/tmp/tern-copy-dst-XXXXXX";
	size_t n = 3 * STREAM_READ + 99, off = 5000;
	char *file = make_file(path, n);
	uint32_t crc = spill_crc32c(0, file, n);
	int dst = mkstemp(dpath);
	assert_true(dst >= 0);
	assert_int_equal(stream_copy_file(dst, path, off, n - off, true, crc), TERN_OK);
	char *back = malloc(n);
	assert_int_equal(pread(dst, back, n, 0), (ssize_t)(n - off));
	assert_memory_equal(back, file + off, n - off);
	assert_int_equal(ftruncate(dst, 0), 0);
	assert_int_equal(lseek(dst, 0, SEEK_SET), 0);
	assert_int_equal(stream_copy_file(dst, path, off, n - off, true, crc + 1), TERN_ECORRUPT);
	/* unchecked, the copy is what it was (copy_file_range where it can) */
	assert_int_equal(ftruncate(dst, 0), 0);
	assert_int_equal(lseek(dst, 0, SEEK_SET), 0);
	assert_int_equal(stream_copy_file(dst, path, off, n - off, false, 0), TERN_OK);
	assert_int_equal(pread(dst, back, n, 0), (ssize_t)(n - off));
	assert_memory_equal(back, file + off, n - off);
	close(dst);
	unlink(dpath);
	unlink(path);
	free(back);
	free(file);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_encoder_equals_whole_message_encoding_wherever_cut),
	    cmocka_unit_test(test_pump_sends_the_range_after_the_head),
	    cmocka_unit_test(test_read_ahead_sends_the_same_and_holds_back_a_damaged_end),
	    cmocka_unit_test(test_maildir_copy_checks_the_crc),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
