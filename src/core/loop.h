/*
 * loop.h — event-loop workers, cross-thread posting, and the blocking-work
 * thread pool (DESIGN §2).
 *
 * A worker is one thread running one libevent base. A connection lives on
 * one worker for its whole life. Other threads hand work to a worker with
 * worker_post(): the closure runs on the worker's thread, in order. Work
 * that may block (fsync, crypt, big copies) goes to pool_submit(); its
 * completion is posted back to the worker that asked.
 *
 * Functions returning int return TERN_OK or a TERN_E* code (core/err.h).
 */
#ifndef TERN_CORE_LOOP_H
#define TERN_CORE_LOOP_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct worker;

typedef void (*task_fn)(void *arg);

/* Must be called once, before any worker is created. TERN_OK, or
 * TERN_ENOMEM if libevent cannot set up its locks. */
int loop_global_init(void);

/* Creates a worker (its event base exists at once; the thread starts with
 * worker_start, which returns TERN_OK or TERN_EIO if no thread could be
 * created). */
struct worker *worker_new(unsigned index);
int worker_start(struct worker *w);
/* Makes the worker's loop return once pending events ran; then joins. */
void worker_stop_and_join(struct worker *w);
/* Runs closures posted to a stopped worker (at shutdown). */
void worker_run_pending(struct worker *w);
void worker_free(struct worker *w);
struct event_base *worker_base(struct worker *w);
unsigned worker_index(const struct worker *w);
/* The worker's sends of the current loop turn (core/send_batch.h); NULL
 * when io_uring is unavailable: send at once. Only on w's thread. */
struct send_batch *worker_batch(struct worker *w);

/* Runs fn(arg) on w's thread. Safe from any thread, including w's own
 * (then it runs on the next loop iteration, never re-entrantly).
 * Returns TERN_OK, or TERN_ENOMEM (fn will not run). */
int worker_post(struct worker *w, task_fn fn, void *arg);

/* The thread pool for blocking work. */
struct pool;
struct pool *pool_new(unsigned threads);
/* Runs work(arg) on a pool thread, then done(arg) on worker w (if done is
 * not NULL). Returns TERN_OK, or TERN_ENOMEM (neither will run). */
int pool_submit(struct pool *p, task_fn work, struct worker *w, task_fn done, void *arg);
/* Finishes queued jobs, then stops the threads. */
void pool_free(struct pool *p);

#endif
