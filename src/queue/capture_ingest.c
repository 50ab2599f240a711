/*
 * capture_ingest.c — capture mode's acknowledgement path (issue 11 item 1,
 * DESIGN §6 "Capture mode acknowledges later ... Group-commit the store as
 * the spool does").
 *
 * Owns: the queue of messages that reached end of data (SMTP) or were
 * posted to /api/v1/send in capture mode, and the committer threads that
 * put every message queued meanwhile into the capture store in ONE SQLite
 * transaction (one WAL sync, synchronous = FULL) plus one capture_sync for
 * large messages' files, and only then run each message's callback (the
 * session's 250, the API's 2xx). In capture mode the capture store is the
 * message's only durable home: nothing is delivered anywhere else, so the
 * spool's own sync would be a second sync for the same promise.
 *
 * Must never: answer a message before its row is committed and synced
 * (DESIGN §5.1: a kill -9 after the answer loses nothing), drop a message
 * without running its callback exactly once, or run on an event loop (it
 * blocks on SQLite and fsync; callbacks run on a committer thread and must
 * only post to their own thread).
 *
 * Fault points (debug builds, as the spool's: TERN_TEST_FAULT=NAME[:N]):
 * capture_take (a batch taken, nothing stored yet) and capture_commit (a
 * batch committed and synced, no callback run yet) stop the committer for
 * good so that a test can kill -9 in exactly that phase.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "queue/queue.h"
#include "store/store.h"

#define INGEST_THREADS 1     /* one transaction at a time: a batch grows while the last one syncs */
#define INGEST_BATCH_MAX 256 /* messages per transaction */

struct ingest_msg {
	struct ingest_msg *next;
	char qid[QUEUE_ID_LEN + 1];
	char *raw;
	size_t len;
	char *from;
	char **to;
	size_t n_to;
	char *username; /* or NULL */
	capture_put_cb cb;
	void *arg;
};

enum ingest_fault { IF_NONE, IF_TAKE, IF_COMMIT };

struct capture_ingest {
	struct capture_store *st;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	struct ingest_msg *head, *tail;
	bool stopping;
	unsigned n_threads;
	pthread_t threads[INGEST_THREADS];
	enum ingest_fault fault;
	unsigned fault_after;
	atomic_uint fault_hits;
};

/* ------------------------------------------------------------ fault points */

#ifndef NDEBUG
static const char *const fault_names[] = {"", "capture_take", "capture_commit"};

static void fault_arm(struct capture_ingest *ci)
{
	const char *v = getenv("TERN_TEST_FAULT");
	if (!v || !*v)
		return;
	const char *colon = strchr(v, ':');
	size_t n = colon ? (size_t)(colon - v) : strlen(v);
	for (size_t i = 1; i < sizeof(fault_names) / sizeof(fault_names[0]); i++)
		if (strlen(fault_names[i]) == n && strncmp(v, fault_names[i], n) == 0)
			ci->fault = (enum ingest_fault)i;
	if (ci->fault == IF_NONE)
		return; /* maybe the spool's: it says so itself */
	ci->fault_after = 1;
	if (colon) {
		char *end;
		unsigned long k = strtoul(colon + 1, &end, 10);
		if (*end == '\0' && k > 0 && k < 1000000)
			ci->fault_after = (unsigned)k;
	}
	log_warn("event=fault_armed point=%s after=%u", fault_names[ci->fault], ci->fault_after);
}

/* Stops the calling committer for good if the armed point is f. */
static void fault_point(struct capture_ingest *ci, enum ingest_fault f)
{
	if (ci->fault != f || atomic_fetch_add(&ci->fault_hits, 1) + 1 < ci->fault_after)
		return;
	log_error("event=fault_point point=%s", fault_names[f]);
	for (;;)
		pause();
}
#else
static void fault_arm(struct capture_ingest *ci)
{
	(void)ci;
}

static void fault_point(struct capture_ingest *ci, enum ingest_fault f)
{
	(void)ci;
	(void)f;
}
#endif

/* ------------------------------------------------------------------ queue */

static void msg_free(struct ingest_msg *m)
{
	if (!m)
		return;
	free(m->raw);
	free(m->from);
	for (size_t i = 0; i < m->n_to; i++)
		free(m->to[i]);
	free(m->to);
	free(m->username);
	free(m);
}

/* The capture store keeps the SMTP AUTH identity: the session writes it
 * last in the trace string (" auth=NAME"), as capture_batch reads it. */
static char *username_of(const char *client)
{
	const char *auth = client ? strstr(client, " auth=") : NULL;
	return auth && auth[6] ? tern_strdup(auth + 6) : NULL;
}

int capture_ingest_put(struct capture_ingest *ci, const struct spool_msg *env, const void *data,
                       size_t len, capture_put_cb cb, void *arg)
{
	if (!ci || !env || !cb)
		return TERN_EINVAL;
	for (size_t i = 0; i < env->n_rcpts; i++)
		if (!env->rcpts[i].local)
			return TERN_EINVAL; /* a recipient to deliver elsewhere: the spool's */
	struct ingest_msg *m = calloc(1, sizeof(*m));
	if (!m)
		return TERN_ENOMEM;
	int rc = TERN_ENOMEM;
	memcpy(m->qid, env->id, sizeof(m->qid));
	m->qid[QUEUE_ID_LEN] = '\0';
	m->raw = malloc(len ? len : 1);
	m->from = tern_strdup(env->sender ? env->sender : "");
	m->to = calloc(env->n_rcpts ? env->n_rcpts : 1, sizeof(*m->to));
	if (!m->raw || !m->from || !m->to)
		goto fail;
	if (len)
		memcpy(m->raw, data, len);
	m->len = len;
	for (size_t i = 0; i < env->n_rcpts; i++) {
		if (!(m->to[i] = tern_strdup(env->rcpts[i].addr)))
			goto fail;
		m->n_to++;
	}
	if (env->client && strstr(env->client, " auth=") &&
	    !(m->username = username_of(env->client)))
		goto fail;
	m->cb = cb;
	m->arg = arg;
	pthread_mutex_lock(&ci->mu);
	if (ci->stopping || ci->n_threads == 0) {
		pthread_mutex_unlock(&ci->mu);
		rc = TERN_EIO;
		goto fail;
	}
	if (ci->tail)
		ci->tail->next = m;
	else
		ci->head = m;
	ci->tail = m;
	pthread_cond_signal(&ci->cond);
	pthread_mutex_unlock(&ci->mu);
	return TERN_OK;
fail:
	msg_free(m);
	return rc;
}

/* ------------------------------------------------------------- committer */

/* One group commit: every message of the batch in one transaction, one
 * sync, then the answers. */
static void commit_batch(struct capture_ingest *ci, struct ingest_msg **b, size_t n)
{
	struct capture_item *items = calloc(n, sizeof(*items));
	int rc = TERN_ENOMEM;
	fault_point(ci, IF_TAKE);
	if (items) {
		for (size_t i = 0; i < n; i++)
			items[i] = (struct capture_item){.username = b[i]->username,
			                                 .raw = b[i]->raw,
			                                 .len = b[i]->len,
			                                 .env_from = b[i]->from,
			                                 .env_to = (const char *const *)b[i]->to,
			                                 .n_to = b[i]->n_to};
		rc = capture_add_batch(ci->st, items, n);
		/* Rows are durable at their COMMIT; this covers large files. */
		if (rc == TERN_OK)
			rc = capture_sync(ci->st);
	}
	fault_point(ci, IF_COMMIT);
	for (size_t i = 0; i < n; i++) {
		struct ingest_msg *m = b[i];
		int r = rc == TERN_OK ? items[i].rc : rc;
		char qf[LOG_ADDR_MAX];
		if (r == TERN_OK)
			log_info("event=captured id=%s capture_id=%s from=%s nrcpt=%zu size=%zu",
			         m->qid, items[i].id, log_quote_addr(m->from, qf, sizeof(qf)),
			         m->n_to, m->len);
		else
			log_error("event=capture_failed id=%s reason=%s", m->qid, tern_strerror(r));
		m->cb(m->arg, r, r == TERN_OK ? items[i].id : NULL);
		msg_free(m);
	}
	free(items);
}

static void *committer_main(void *arg)
{
	struct capture_ingest *ci = arg;
	struct ingest_msg *batch[INGEST_BATCH_MAX];
	for (;;) {
		size_t n = 0;
		pthread_mutex_lock(&ci->mu);
		while (!ci->head && !ci->stopping)
			pthread_cond_wait(&ci->cond, &ci->mu);
		/* Everything that reached end of data meanwhile, up to the cap. */
		while (ci->head && n < INGEST_BATCH_MAX) {
			batch[n++] = ci->head;
			ci->head = ci->head->next;
		}
		if (!ci->head)
			ci->tail = NULL;
		bool done = n == 0 && ci->stopping;
		pthread_mutex_unlock(&ci->mu);
		if (done)
			return NULL; /* stopping and nothing left: every put was answered */
		commit_batch(ci, batch, n);
	}
}

struct capture_ingest *capture_ingest_new(struct capture_store *st)
{
	struct capture_ingest *ci = calloc(1, sizeof(*ci));
	if (!ci)
		return NULL;
	ci->st = st;
	pthread_mutex_init(&ci->mu, NULL);
	pthread_cond_init(&ci->cond, NULL);
	fault_arm(ci);
	for (unsigned i = 0; i < INGEST_THREADS; i++) {
		if (pthread_create(&ci->threads[i], NULL, committer_main, ci) != 0)
			break;
		ci->n_threads++;
	}
	if (ci->n_threads == 0) {
		capture_ingest_free(ci);
		return NULL;
	}
	return ci;
}

void capture_ingest_stop(struct capture_ingest *ci)
{
	if (!ci)
		return;
	pthread_mutex_lock(&ci->mu);
	ci->stopping = true;
	pthread_cond_broadcast(&ci->cond);
	pthread_mutex_unlock(&ci->mu);
	/* The committers drain the queue (the store is still open) first. */
	for (unsigned i = 0; i < ci->n_threads; i++)
		pthread_join(ci->threads[i], NULL);
	ci->n_threads = 0;
	(void)TERN_BUG_ON(ci->head != NULL);
}

void capture_ingest_free(struct capture_ingest *ci)
{
	if (!ci)
		return;
	capture_ingest_stop(ci);
	pthread_cond_destroy(&ci->cond);
	pthread_mutex_destroy(&ci->mu);
	free(ci);
}
