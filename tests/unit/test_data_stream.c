/*
 * test_data_stream.c — the BDAT line-end scan of a spilled message
 * (src/smtp/data_stream.c). What the session depends on: fed in pieces,
 * it finds a bare CR, a bare LF or a NUL exactly when smtp_scan_line_ends
 * over the whole message does (DESIGN §5.4: a BDAT message that is not
 * BINARYMIME follows the DATA rules), wherever the pieces are cut. And the
 * writer (made, written and synced on a pool): a stream freed while a job
 * runs, or after the loops stopped with a job's end still pending (a stop
 * in the middle of a large DATA), leaves neither memory (ASan) nor file.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "core/loop.h"
#include "queue/spill.h"
#include "smtp/data_stream.h"
#include "smtp/smtp.h"

static void test_line_scan_agrees_with_the_whole_message_scan_wherever_cut(void **st)
{
	(void)st;
	const char alphabet[] = {'a', '\r', '\n', '\0'};
	unsigned seed = 7;
	for (int iter = 0; iter < 4000; iter++) {
		char m[16];
		size_t n = (size_t)(iter % 16);
		for (size_t i = 0; i < n; i++) {
			seed = seed * 1103515245u + 12345u;
			m[i] = alphabet[(seed >> 16) % 4];
		}
		bool bare = false, nul = false;
		smtp_scan_line_ends(m, n, &bare, &nul);
		for (size_t a = 0; a <= n; a++) {
			for (size_t b = a; b <= n; b++) {
				struct data_line_scan sc = {0};
				data_line_scan_feed(&sc, m, a);
				data_line_scan_feed(&sc, m + a, b - a);
				data_line_scan_feed(&sc, m + b, n - b);
				data_line_scan_end(&sc);
				assert_int_equal(sc.bare_eol, bare);
				assert_int_equal(sc.has_nul, nul);
			}
		}
	}
}

struct waiter {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int ends;
};

static void on_resume(void *arg)
{
	struct waiter *wt = arg;
	pthread_mutex_lock(&wt->mu);
	wt->ends++;
	pthread_cond_signal(&wt->cond);
	pthread_mutex_unlock(&wt->mu);
}

static void wait_ends(struct waiter *wt, int n)
{
	pthread_mutex_lock(&wt->mu);
	while (wt->ends < n)
		pthread_cond_wait(&wt->cond, &wt->mu);
	pthread_mutex_unlock(&wt->mu);
}

static bool file_exists(const char *dir, const char *id)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/" SPILL_DIR "/%s.msg", dir, id);
	return access(p, F_OK) == 0;
}

/* A stream is the loop's: what the session does runs on the worker. */
struct step {
	const char *dir, *id;
	struct pool *pool;
	struct worker *w;
	struct waiter *wt;
	struct data_stream *ds;
	size_t push; /* bytes to push (0: none) */
	bool final, free_it, open_it;
	struct waiter done;
};

static void step_run(void *arg)
{
	struct step *x = arg;
	if (x->open_it)
		assert_int_equal(
		    data_stream_open(x->dir, x->id, x->pool, x->w, on_resume, x->wt, &x->ds),
		    TERN_OK);
	if (x->push)
		assert_int_equal(data_stream_push(x->ds, calloc(1, x->push), 0, x->push, x->final),
		                 TERN_OK);
	if (x->free_it)
		data_stream_free(x->ds, NULL);
	on_resume(&x->done);
}

static void on_loop(struct step *x)
{
	x->done =
	    (struct waiter){.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
	assert_int_equal(worker_post(x->w, step_run, x), TERN_OK);
	wait_ends(&x->done, 1);
}

static void test_stream_freed_mid_job_or_after_the_loop_stopped_leaves_nothing(void **st)
{
	(void)st;
	assert_int_equal(loop_global_init(), TERN_OK);
	char dir[] = "/tmp/tern-ds-XXXXXX";
	assert_non_null(mkdtemp(dir));
	struct worker *w = worker_new(0);
	assert_int_equal(worker_start(w), TERN_OK);
	struct pool *pool = pool_new(1);
	struct waiter wt = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
	size_t n = 4u << 20;

	/* freed while its file is being made (the job frees it) */
	for (int k = 0; k < 10; k++) {
		struct step x = {.dir = dir,
		                 .id = "0123456789ABCDE0",
		                 .pool = pool,
		                 .w = w,
		                 .wt = &wt,
		                 .open_it = true,
		                 .free_it = true};
		on_loop(&x);
	}
	/* made, then freed while a chunk is being written */
	struct step x = {
	    .dir = dir, .id = "0123456789ABCDE1", .pool = pool, .w = w, .wt = &wt, .open_it = true};
	int before = wt.ends;
	on_loop(&x);
	wait_ends(&wt, before + 1);
	assert_int_equal(data_stream_error(x.ds), TERN_OK);
	assert_true(file_exists(dir, "0123456789ABCDE1"));
	x.open_it = false;
	x.push = n;
	x.free_it = true;
	on_loop(&x);

	/* the stop: a job ends after the loop stopped (its end is never run),
	 * then the owner frees the stream (as smtp_server_free does) */
	struct step y = {
	    .dir = dir, .id = "0123456789ABCDE2", .pool = pool, .w = w, .wt = &wt, .open_it = true};
	pthread_mutex_lock(&wt.mu);
	before = wt.ends;
	pthread_mutex_unlock(&wt.mu);
	on_loop(&y);
	wait_ends(&wt, before + 1);
	y.open_it = false;
	y.push = n;
	y.final = true;
	on_loop(&y);
	worker_stop_and_join(w);
	pool_free(pool); /* the write and sync end; the event is activated on a stopped loop */
	data_stream_free(y.ds, NULL);
	worker_free(w);
	assert_false(file_exists(dir, "0123456789ABCDE0"));
	assert_false(file_exists(dir, "0123456789ABCDE1"));
	assert_false(file_exists(dir, "0123456789ABCDE2"));
	char sp[512];
	snprintf(sp, sizeof(sp), "%s/" SPILL_DIR, dir);
	rmdir(sp);
	assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_line_scan_agrees_with_the_whole_message_scan_wherever_cut),
	    cmocka_unit_test(test_stream_freed_mid_job_or_after_the_loop_stopped_leaves_nothing),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
