/*
 * make_fixture.c — writes tests/data/spool_v1/seg-0000000001.log with the
 * version 1 spool (tern up to commit 78d754e), so that test_spool.c can
 * prove a spool written by that version still recovers. Not built by
 * CMake: it must be linked against the old library, e.g.
 *
 *   git archive 78d754e | tar -x -C /tmp/old && cmake -S /tmp/old -B /tmp/old-b \
 *     && cmake --build /tmp/old-b --target ternlib
 *   cc -std=c17 -D_GNU_SOURCE -I/tmp/old/src make_fixture.c /tmp/old-b/libternlib.a \
 *     -lpthread -o make_fixture && ./make_fixture DIR
 *
 * What it writes (test_spool.c checks exactly this): four messages with the
 * ids below, created 1700000000 + i, sender "v1-sender-I@example.org", one
 * local recipient "rcpt-I@example.test" each (message 2 has a second,
 * remote one, "far-2@example.net"), data "version 1 message I\r\n" repeated
 * I + 1 times. Then: message 1 delivered (so removed: a DEL record), message
 * 2's second recipient deferred (attempts 1, next_try 1700003600, reply
 * "451 4.4.1 later").
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "queue/queue.h"

static const char *ids[4] = {"0V1AAAAAAAAAAAA0", "0V1AAAAAAAAAAAA1", "0V1AAAAAAAAAAAA2",
                             "0V1AAAAAAAAAAAA3"};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int done;

static void cb(void *arg, int err)
{
	(void)arg;
	if (err != TERN_OK)
		abort();
	pthread_mutex_lock(&mu);
	done++;
	pthread_cond_signal(&cv);
	pthread_mutex_unlock(&mu);
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	struct spool *s;
	if (spool_open(argv[1], &s) != TERN_OK)
		return 1;
	for (int i = 0; i < 4; i++) {
		char sender[64], r0[64], data[1024] = "";
		snprintf(sender, sizeof(sender), "v1-sender-%d@example.org", i);
		snprintf(r0, sizeof(r0), "rcpt-%d@example.test", i);
		struct spool_rcpt rc[2] = {{.addr = r0, .local = true},
		                           {.addr = "far-2@example.net", .local = false}};
		struct spool_msg m = {.sender = sender, .created = 1700000000 + i,
		                      .rcpts = rc, .n_rcpts = i == 2 ? 2 : 1};
		memcpy(m.id, ids[i], 17);
		size_t n = 0;
		for (int k = 0; k <= i; k++)
			n += (size_t)snprintf(data + n, sizeof(data) - n, "version 1 message %d\r\n", i);
		if (spool_put(s, &m, data, n, cb, NULL) != TERN_OK)
			return 1;
		pthread_mutex_lock(&mu);
		while (done <= i)
			pthread_cond_wait(&cv, &mu);
		pthread_mutex_unlock(&mu);
	}
	if (spool_update_rcpt(s, ids[1], 0, RCPT_DELIVERED, 0, "250 2.0.0 ok") != TERN_OK ||
	    spool_update_rcpt(s, ids[2], 1, RCPT_DEFERRED, 1700003600, "451 4.4.1 later") != TERN_OK)
		return 1;
	spool_close(s);
	return 0;
}
