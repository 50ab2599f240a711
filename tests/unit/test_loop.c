/*
 * test_loop.c — the worker loop (src/core/loop.c): closures posted from
 * another thread run in the order they were posted, and those still queued
 * when the worker stops run at the join (none is lost).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/err.h"
#include "core/loop.h"

struct order {
	pthread_mutex_t lock;
	int log[16];
	int n;
	struct worker *w;
};

static void record(struct order *o, int what)
{
	pthread_mutex_lock(&o->lock);
	if (o->n < (int)(sizeof(o->log) / sizeof(o->log[0])))
		o->log[o->n++] = what;
	pthread_mutex_unlock(&o->lock);
}

struct post {
	struct order *o;
	int id;
};

static void posted(void *arg)
{
	struct post *p = arg;
	record(p->o, p->id);
}

static void posts_run_in_order_and_none_is_lost_at_stop(void **state)
{
	(void)state;
	assert_int_equal(loop_global_init(), TERN_OK);
	struct order o;
	memset(&o, 0, sizeof(o));
	pthread_mutex_init(&o.lock, NULL);
	o.w = worker_new(1);
	assert_non_null(o.w);
	assert_int_equal(worker_start(o.w), TERN_OK);
	struct post posts[10];
	for (int i = 0; i < 10; i++) {
		posts[i] = (struct post){.o = &o, .id = i + 1};
		assert_int_equal(worker_post(o.w, posted, &posts[i]), TERN_OK);
	}
	worker_stop_and_join(o.w); /* runs what is left */
	assert_int_equal(o.n, 10);
	for (int i = 0; i < 10; i++)
		assert_int_equal(o.log[i], i + 1);
	worker_free(o.w);
	pthread_mutex_destroy(&o.lock);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(posts_run_in_order_and_none_is_lost_at_stop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
