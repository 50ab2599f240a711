/*
 * spool_wait.c — spool_put for threads that may block (queue.h): the put,
 * then a wait on a condition variable until the committer says the message
 * is on stable storage.
 *
 * Owns: nothing beyond one wait's mutex and condition, on the caller's stack.
 * Never: runs on an event-loop worker (it blocks until a group commit's
 * sync), or returns before the commit callback ran.
 */
#include <pthread.h>
#include <stdbool.h>

#include "core/err.h"
#include "queue/queue.h"

struct commit_wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
	int err;
};

/* On the committer thread: wakes the waiting caller. */
static void commit_done(void *arg, int err)
{
	struct commit_wait *w = arg;
	pthread_mutex_lock(&w->mu);
	w->done = true;
	w->err = err;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

int spool_put_wait(struct spool *s, const struct spool_msg *env, const void *data, size_t len)
{
	struct commit_wait w = {
	    .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .done = false};
	int rc = spool_put(s, env, data, len, commit_done, &w);
	if (rc == TERN_OK) {
		pthread_mutex_lock(&w.mu);
		while (!w.done)
			pthread_cond_wait(&w.cv, &w.mu);
		rc = w.err;
		pthread_mutex_unlock(&w.mu);
	}
	pthread_cond_destroy(&w.cv);
	pthread_mutex_destroy(&w.mu);
	return rc;
}
