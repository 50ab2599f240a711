/*
 * test_spool_retire.c — a finished segment's file is closed off the commit
 * path (src/queue/spool.c, seg_retire). The last close of an unlinked
 * segment frees its blocks: 10-25 ms for 64 MiB on the bench machine, and
 * while the committer did it every client waited that long for its 250.
 *
 * This binary is linked with -Wl,--wrap=close (CMakeLists.txt), so the
 * test can hold any close of a deleted segment file until it lets go: a
 * put must still be answered while one is held. Before the fix the
 * committer itself was the one held, and the put never was.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"
#include "queue/queue.h"
#include "queue/spool_internal.h"
#include "spool_fixture.h"

/* ---- close(), held for deleted segment files ---------------------------- */

static pthread_mutex_t hold_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hold_cv = PTHREAD_COND_INITIALIZER;
static bool hold_armed;   /* hold closes of deleted segments */
static int held;          /* closes that reached the hold */
static bool hold_release; /* let them go */

int __real_close(int fd);
int __wrap_close(int fd);

/* fd is a spool segment file whose name is gone. */
static bool deleted_segment(int fd)
{
	char link[64], target[4096];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, target, sizeof(target) - 1);
	if (n <= 0)
		return false;
	target[n] = '\0';
	static const char gone[] = " (deleted)";
	size_t g = sizeof(gone) - 1;
	return strstr(target, "/seg-") && (size_t)n > g && strcmp(target + n - g, gone) == 0;
}

int __wrap_close(int fd)
{
	pthread_mutex_lock(&hold_mu);
	bool armed = hold_armed;
	pthread_mutex_unlock(&hold_mu);
	if (armed && deleted_segment(fd)) {
		pthread_mutex_lock(&hold_mu);
		held++;
		pthread_cond_broadcast(&hold_cv);
		while (!hold_release)
			pthread_cond_wait(&hold_cv, &hold_mu);
		pthread_mutex_unlock(&hold_mu);
	}
	return __real_close(fd);
}

/* Waits until *flag-like condition cond() holds or secs pass (bounded, so a
 * broken build fails instead of hanging). Caller holds hold_mu. */
static bool wait_until(bool (*cond)(void *), void *arg, pthread_mutex_t *mu, pthread_cond_t *cv,
                       int secs)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += secs;
	while (!cond(arg))
		if (pthread_cond_timedwait(cv, mu, &until) == ETIMEDOUT)
			return cond(arg);
	return true;
}

static bool some_held(void *arg)
{
	(void)arg;
	return held > 0;
}

static bool put_done(void *arg)
{
	return ((struct waiter *)arg)->done > 0;
}

/* ---- messages ----------------------------------------------------------- */

#define BIG (200u * 1024u) /* 20 of them fill segments of 1, 2 and 4 MiB */

static struct spool_msg *make_msg(unsigned seed)
{
	struct spool_msg *m = fixture_msg(seed);
	m->size = BIG;
	return m;
}

static void put_sync(struct spool *s, struct spool_msg *m, const char *data)
{
	struct waiter w;
	waiter_init(&w);
	assert_int_equal(spool_put(s, m, data, BIG, put_cb, &w), TERN_OK);
	waiter_wait(&w, 1);
	assert_int_equal(w.ok, 1);
	waiter_destroy(&w);
}

/* ---- the test ------------------------------------------------------------ */

static void test_put_answered_while_a_dead_segment_closes(void **st)
{
	(void)st;
	enum { MAX_N = 200 };
	struct tmpdir td;
	tmpdir_make(&td);
	char *data = malloc(BIG);
	assert_non_null(data);
	memset(data, 'x', BIG);
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	struct spool_msg *m[MAX_N + 1];
	for (int i = 0; i <= MAX_N; i++)
		m[i] = make_msg((unsigned)i);
	/* Older segments that can finish: two at least, since the first to go
	 * is recycled (renamed to be a later segment, not closed). A segment
	 * grows past its prepared size while no spare is ready (a loaded
	 * machine), so the rotation is forced at 1 MiB and messages are put
	 * until there are three segments, not a fixed count. */
	spool_debug_set_segment_max(s, 1024 * 1024);
	int N = 0;
	struct spool_stats ss;
	do {
		put_sync(s, m[N++], data);
		spool_get_stats(s, &ss);
	} while (ss.segments < 3 && N < MAX_N);
	assert_true(ss.segments >= 3);

	pthread_mutex_lock(&hold_mu);
	hold_armed = true;
	pthread_mutex_unlock(&hold_mu);
	/* Every message of the older segments finishes: they are unlinked and
	 * their files closed, and that close is held. */
	for (int i = 0; i < N; i++)
		assert_int_equal(spool_remove(s, m[i]->id), TERN_OK);
	pthread_mutex_lock(&hold_mu);
	assert_true(wait_until(some_held, NULL, &hold_mu, &hold_cv, 30));
	pthread_mutex_unlock(&hold_mu);

	/* A new message is still committed and answered. */
	struct waiter w;
	waiter_init(&w);
	assert_int_equal(spool_put(s, m[N], data, BIG, put_cb, &w), TERN_OK);
	pthread_mutex_lock(&w.mu);
	bool answered = wait_until(put_done, &w, &w.mu, &w.cv, 30);
	pthread_mutex_unlock(&w.mu);

	pthread_mutex_lock(&hold_mu);
	hold_release = true;
	pthread_cond_broadcast(&hold_cv);
	pthread_mutex_unlock(&hold_mu);
	assert_true(answered);
	waiter_wait(&w, 1);
	assert_int_equal(w.ok, 1);
	waiter_destroy(&w);
	spool_close(s);

	/* Nothing lost, nothing back from the dead, no damage. */
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 1);
	struct spool_msg *g = spool_get(s, m[N]->id);
	assert_non_null(g);
	spool_msg_free(g);
	assert_int_equal(spool_foreach_damage(s, NULL, NULL), 0);
	spool_close(s);
	for (int i = 0; i <= MAX_N; i++)
		spool_msg_free(m[i]);
	free(data);
	tmpdir_rm(&td);
}

int main(void)
{
	log_set_level(LOG_LVL_WARN);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_put_answered_while_a_dead_segment_closes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
