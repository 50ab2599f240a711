/*
 * loop.c — workers (one libevent base per thread), the cross-thread post
 * queue, and the blocking-work pool.
 *
 * A post appends to the worker's mutex-protected FIFO and, if the FIFO was
 * empty, activates one event on the worker's base (event_active is safe
 * from other threads once evthread_use_pthreads() ran). The worker drains
 * the whole FIFO in one callback, so a burst of posts costs one wakeup.
 */
#include "core/loop.h"

#include <event2/event.h>
#include <event2/thread.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/err.h"
#include "core/log.h"
#include "core/send_batch.h"

struct task {
	struct task *next;
	task_fn fn;
	void *arg;
	/* pool only */
	struct worker *reply_to;
	task_fn done;
};

struct worker {
	unsigned index;
	struct event_base *base;
	struct event *wake;
	struct send_batch *batch; /* this turn's sends (send_batch.h), or NULL */
	pthread_t thread;
	bool started;
	pthread_mutex_t lock;
	struct task *head, *tail;
};

int loop_global_init(void)
{
	/* libevent fails here only when it cannot allocate its locks. */
	return evthread_use_pthreads() == 0 ? TERN_OK : TERN_ENOMEM;
}

static void worker_drain(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	pthread_mutex_lock(&w->lock);
	struct task *t = w->head;
	w->head = w->tail = NULL;
	pthread_mutex_unlock(&w->lock);
	while (t) {
		struct task *next = t->next;
		t->fn(t->arg);
		free(t);
		t = next;
	}
}

struct worker *worker_new(unsigned index)
{
	struct worker *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->index = index;
	pthread_mutex_init(&w->lock, NULL);
	w->base = event_base_new();
	if (!w->base)
		goto fail;
	w->wake = event_new(w->base, -1, 0, worker_drain, w);
	if (!w->wake)
		goto fail;
	w->batch = send_batch_new(w->base);
	if (!w->batch) /* each send goes on its own, as before */
		log_info("event=send_batch state=off worker=%u reason=\"io_uring unavailable\"",
		         index);
	return w;
fail:
	worker_free(w);
	return NULL;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	char name[16]; /* the kernel keeps 15 characters */
	snprintf(name, sizeof(name), "worker-%u", w->index);
	pthread_setname_np(pthread_self(), name); /* for top -H, perf, ps -L */
	/* A persistent no-op timer keeps the loop alive with no connections. */
	struct event *keepalive = event_new(w->base, -1, EV_PERSIST, worker_drain, w);
	struct timeval tv = {3600, 0};
	if (keepalive)
		event_add(keepalive, &tv);
	event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
	if (keepalive)
		event_free(keepalive);
	return NULL;
}

int worker_start(struct worker *w)
{
	if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
		return TERN_EIO;
	w->started = true;
	return TERN_OK;
}

static void worker_break(void *arg)
{
	struct worker *w = arg;
	event_base_loopexit(w->base, NULL);
}

void worker_stop_and_join(struct worker *w)
{
	if (!w->started)
		return;
	worker_post(w, worker_break, w);
	pthread_join(w->thread, NULL);
	w->started = false;
	/* Run what was posted after the loop stopped, so no closure leaks. */
	worker_drain(-1, 0, w);
}

void worker_run_pending(struct worker *w)
{
	if (!w->started)
		worker_drain(-1, 0, w);
}

void worker_free(struct worker *w)
{
	if (!w)
		return;
	if (w->wake)
		event_free(w->wake);
	send_batch_free(w->batch);
	if (w->base)
		event_base_free(w->base);
	pthread_mutex_destroy(&w->lock);
	free(w);
}

struct event_base *worker_base(struct worker *w)
{
	return w->base;
}

struct send_batch *worker_batch(struct worker *w)
{
	return w->batch;
}

unsigned worker_index(const struct worker *w)
{
	return w->index;
}

int worker_post(struct worker *w, task_fn fn, void *arg)
{
	struct task *t = malloc(sizeof(*t));
	if (!t)
		return TERN_ENOMEM;
	t->next = NULL;
	t->fn = fn;
	t->arg = arg;
	pthread_mutex_lock(&w->lock);
	bool was_empty = w->head == NULL;
	if (w->tail)
		w->tail->next = t;
	else
		w->head = t;
	w->tail = t;
	pthread_mutex_unlock(&w->lock);
	if (was_empty)
		event_active(w->wake, 0, 0);
	return TERN_OK;
}

/* ------------------------------------------------------------------ pool */

struct pool {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct task *head, *tail;
	bool stopping;
	unsigned n;
	pthread_t *threads;
};

static void *pool_main(void *arg)
{
	pthread_setname_np(pthread_self(), "pool"); /* for top -H, perf, ps -L */
	struct pool *p = arg;
	for (;;) {
		pthread_mutex_lock(&p->lock);
		while (!p->head && !p->stopping)
			pthread_cond_wait(&p->cond, &p->lock);
		struct task *t = p->head;
		if (t) {
			p->head = t->next;
			if (!p->head)
				p->tail = NULL;
		}
		pthread_mutex_unlock(&p->lock);
		if (!t)
			return NULL; /* stopping and drained */
		t->fn(t->arg);
		if (t->done && t->reply_to) {
			if (worker_post(t->reply_to, t->done, t->arg) != 0)
				log_error("event=pool_post_failed reason=out-of-memory");
		}
		free(t);
	}
}

struct pool *pool_new(unsigned threads)
{
	struct pool *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	p->threads = calloc(threads, sizeof(pthread_t));
	if (!p->threads) {
		free(p);
		return NULL;
	}
	for (unsigned i = 0; i < threads; i++) {
		if (pthread_create(&p->threads[i], NULL, pool_main, p) != 0)
			break;
		p->n++;
	}
	if (p->n == 0) {
		/* A pool without threads would queue jobs forever. */
		pool_free(p);
		return NULL;
	}
	return p;
}

int pool_submit(struct pool *p, task_fn work, struct worker *w, task_fn done, void *arg)
{
	struct task *t = malloc(sizeof(*t));
	if (!t)
		return TERN_ENOMEM;
	t->next = NULL;
	t->fn = work;
	t->arg = arg;
	t->reply_to = w;
	t->done = done;
	pthread_mutex_lock(&p->lock);
	if (p->tail)
		p->tail->next = t;
	else
		p->head = t;
	p->tail = t;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->lock);
	return TERN_OK;
}

void pool_free(struct pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stopping = true;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	for (unsigned i = 0; i < p->n; i++)
		pthread_join(p->threads[i], NULL);
	free(p->threads);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->cond);
	free(p);
}
