/*
 * capture_ingest.c — capture mode's acknowledgement path (issue 11 item 1,
 * DESIGN §6 "Capture mode acknowledges later ... Group-commit the store as
 * the spool does").
 *
 * Owns: the queue of messages that reached end of data (SMTP) or were
 * posted to /api/v1/send in capture mode, and two threads. The committer
 * puts every message queued meanwhile into the capture store in ONE SQLite
 * transaction, committed without a sync (the store's batch sync); the
 * syncer then makes every batch committed so far durable with ONE
 * capture_sync (an fdatasync of the WAL, plus a syncfs for large messages'
 * files) and only then runs each message's callback (the session's 250,
 * the API's 2xx). While the syncer waits on the disk, the committer
 * already inserts the next batch. A third thread, the announcer, then
 * sends each answered batch's "new" events (summaries for the web UI and
 * the webhook, capture_announce), so that this work, about 15 % of an
 * insert's instructions, is on neither the committer's nor the syncer's
 * path to the next answer. In capture mode the capture store is the
 * message's only durable home: nothing is delivered anywhere else, so the
 * spool's own sync would be a second sync for the same promise.
 *
 * Must never: answer a message before its row is committed and synced
 * (DESIGN §5.1: a kill -9 after the answer loses nothing), drop a message
 * without running its callback exactly once, or run on an event loop (it
 * blocks on SQLite and fsync; callbacks run on the syncer thread and must
 * only post to their own thread).
 *
 * Fault points (debug builds, as the spool's: TERN_TEST_FAULT=NAME[:N]):
 * capture_take (a batch taken, nothing stored yet: stops the committer)
 * and capture_commit (batches committed and synced, no callback run yet:
 * stops the syncer) stop that thread for good so that a test can kill -9
 * in exactly that phase.
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

#define INGEST_BATCH_MAX 256 /* messages per transaction */

struct ingest_batch;

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
	pthread_cond_t cond;            /* the committer: a put, or stopping */
	pthread_cond_t scond;           /* the syncer: a committed batch, or the committer ended */
	struct ingest_msg *head, *tail; /* put, not yet committed */
	struct ingest_batch *shead, *stail; /* committed, not yet synced */
	pthread_cond_t acond; /* the announcer: an answered batch, or the syncer ended */
	struct ingest_batch *ahead, *atail; /* answered, "new" events not yet sent */
	bool stopping;       /* no more puts; the committer ends once head is empty */
	bool committer_done; /* the syncer ends once shead is empty */
	bool syncer_done;    /* the announcer ends once ahead is empty */
	pthread_t committer, syncer, announcer;
	bool committer_started, syncer_started, announcer_started;
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
	if (ci->stopping || !ci->committer_started) {
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

/* A batch committed (without a sync) and waiting for the syncer. */
struct ingest_batch {
	struct ingest_batch *next;
	struct ingest_msg **msgs;
	struct capture_item *items; /* NULL when out of memory: every rc is rc */
	size_t n;
	int rc;
};

/* The answers of a batch, after the sync that covers it (or its failure);
 * then the batch goes to the announcer (its items: rc and seq only). */
static void answer_batch(struct capture_ingest *ci, struct ingest_batch *b, int sync_rc)
{
	for (size_t i = 0; i < b->n; i++) {
		struct ingest_msg *m = b->msgs[i];
		int r = b->rc != TERN_OK ? b->rc : b->items[i].rc;
		if (r == TERN_OK)
			r = sync_rc;
		char qf[LOG_ADDR_MAX];
		if (r == TERN_OK)
			log_info("event=captured id=%s capture_id=%s from=%s nrcpt=%zu size=%zu",
			         m->qid, b->items[i].id, log_quote_addr(m->from, qf, sizeof(qf)),
			         m->n_to, m->len);
		else
			log_error("event=capture_failed id=%s reason=%s", m->qid, tern_strerror(r));
		m->cb(m->arg, r, r == TERN_OK ? b->items[i].id : NULL);
		msg_free(m);
	}
	free(b->msgs);
	b->msgs = NULL;
	b->next = NULL;
	pthread_mutex_lock(&ci->mu);
	if (ci->atail)
		ci->atail->next = b;
	else
		ci->ahead = b;
	ci->atail = b;
	pthread_cond_signal(&ci->acond);
	pthread_mutex_unlock(&ci->mu);
}

/* Every message of the batch into the store in one transaction, committed
 * without a sync (batch sync, store.h); the syncer makes it durable. */
static void commit_batch(struct capture_ingest *ci, struct ingest_batch *b)
{
	fault_point(ci, IF_TAKE);
	b->items = calloc(b->n, sizeof(*b->items));
	b->rc = b->items ? TERN_OK : TERN_ENOMEM;
	if (b->items) {
		for (size_t i = 0; i < b->n; i++) {
			struct ingest_msg *m = b->msgs[i];
			b->items[i] = (struct capture_item){.announce_later = true,
			                                    .username = m->username,
			                                    .raw = m->raw,
			                                    .len = m->len,
			                                    .env_from = m->from,
			                                    .env_to = (const char *const *)m->to,
			                                    .n_to = m->n_to};
		}
		b->rc = capture_add_batch(ci->st, b->items, b->n);
	}
	pthread_mutex_lock(&ci->mu);
	if (ci->stail)
		ci->stail->next = b;
	else
		ci->shead = b;
	ci->stail = b;
	pthread_cond_signal(&ci->scond);
	pthread_mutex_unlock(&ci->mu);
}

static void *committer_main(void *arg)
{
	pthread_setname_np(pthread_self(), "capture-commit"); /* for top -H, perf, ps -L */
	struct capture_ingest *ci = arg;
	for (;;) {
		pthread_mutex_lock(&ci->mu);
		while (!ci->head && !ci->stopping)
			pthread_cond_wait(&ci->cond, &ci->mu);
		if (!ci->head) { /* stopping and nothing left */
			ci->committer_done = true;
			pthread_cond_signal(&ci->scond);
			pthread_mutex_unlock(&ci->mu);
			return NULL;
		}
		/* Everything that reached end of data meanwhile, up to the cap. */
		size_t n = 0;
		for (struct ingest_msg *m = ci->head; m && n < INGEST_BATCH_MAX; m = m->next)
			n++;
		struct ingest_batch *b = calloc(1, sizeof(*b));
		struct ingest_msg **msgs = calloc(n, sizeof(*msgs));
		if (!b || !msgs) {
			/* Answer one message (TERN_ENOMEM) so that none waits forever. */
			free(b);
			free(msgs);
			struct ingest_msg *m = ci->head;
			ci->head = m->next;
			if (!ci->head)
				ci->tail = NULL;
			pthread_mutex_unlock(&ci->mu);
			log_error("event=capture_failed id=%s reason=%s", m->qid,
			          tern_strerror(TERN_ENOMEM));
			m->cb(m->arg, TERN_ENOMEM, NULL);
			msg_free(m);
			continue;
		}
		for (size_t i = 0; i < n; i++) {
			msgs[i] = ci->head;
			ci->head = ci->head->next;
		}
		if (!ci->head)
			ci->tail = NULL;
		pthread_mutex_unlock(&ci->mu);
		b->msgs = msgs;
		b->n = n;
		commit_batch(ci, b);
	}
}

/* One sync covers every batch committed before it; then their answers. */
static void *syncer_main(void *arg)
{
	pthread_setname_np(pthread_self(), "capture-sync"); /* for top -H, perf, ps -L */
	struct capture_ingest *ci = arg;
	for (;;) {
		pthread_mutex_lock(&ci->mu);
		while (!ci->shead && !ci->committer_done)
			pthread_cond_wait(&ci->scond, &ci->mu);
		struct ingest_batch *b = ci->shead;
		ci->shead = ci->stail = NULL;
		pthread_mutex_unlock(&ci->mu);
		if (!b) {
			/* the committer ended and everything was answered */
			pthread_mutex_lock(&ci->mu);
			ci->syncer_done = true;
			pthread_cond_signal(&ci->acond);
			pthread_mutex_unlock(&ci->mu);
			return NULL;
		}
		/* Rows are synced with the WAL; large messages' files too. */
		int rc = capture_sync(ci->st);
		fault_point(ci, IF_COMMIT);
		while (b) {
			struct ingest_batch *next = b->next;
			answer_batch(ci, b, rc);
			b = next;
		}
	}
}

/* The "new" events of answered batches, in their order. */
static void *announcer_main(void *arg)
{
	pthread_setname_np(pthread_self(), "capture-news"); /* for top -H, perf, ps -L */
	struct capture_ingest *ci = arg;
	for (;;) {
		pthread_mutex_lock(&ci->mu);
		while (!ci->ahead && !ci->syncer_done)
			pthread_cond_wait(&ci->acond, &ci->mu);
		struct ingest_batch *b = ci->ahead;
		ci->ahead = ci->atail = NULL;
		pthread_mutex_unlock(&ci->mu);
		if (!b)
			return NULL; /* the syncer ended and everything was announced */
		while (b) {
			struct ingest_batch *next = b->next;
			if (b->items && b->rc == TERN_OK)
				capture_announce(ci->st, b->items, b->n);
			free(b->items);
			free(b);
			b = next;
		}
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
	pthread_cond_init(&ci->scond, NULL);
	pthread_cond_init(&ci->acond, NULL);
	fault_arm(ci);
	if (pthread_create(&ci->announcer, NULL, announcer_main, ci) != 0) {
		capture_ingest_free(ci);
		return NULL;
	}
	ci->announcer_started = true;
	if (pthread_create(&ci->syncer, NULL, syncer_main, ci) != 0) {
		capture_ingest_free(ci);
		return NULL;
	}
	ci->syncer_started = true;
	if (pthread_create(&ci->committer, NULL, committer_main, ci) != 0) {
		capture_ingest_free(ci); /* the syncer ends: committer_done is set below */
		return NULL;
	}
	ci->committer_started = true;
	return ci;
}

void capture_ingest_stop(struct capture_ingest *ci)
{
	if (!ci)
		return;
	pthread_mutex_lock(&ci->mu);
	ci->stopping = true;
	if (!ci->committer_started)
		ci->committer_done = true; /* nothing will commit: the syncer may end */
	pthread_cond_broadcast(&ci->cond);
	pthread_cond_broadcast(&ci->scond);
	pthread_mutex_unlock(&ci->mu);
	/* The committer commits what is queued (the store is still open), the
	 * syncer syncs and answers it, then both end. */
	if (ci->committer_started)
		pthread_join(ci->committer, NULL);
	if (ci->syncer_started)
		pthread_join(ci->syncer, NULL);
	/* Then the announcer sends what was answered (also when the syncer
	 * never started: nothing will be answered) and ends. */
	pthread_mutex_lock(&ci->mu);
	ci->syncer_done = true;
	pthread_cond_broadcast(&ci->acond);
	pthread_mutex_unlock(&ci->mu);
	if (ci->announcer_started)
		pthread_join(ci->announcer, NULL);
	ci->committer_started = ci->syncer_started = ci->announcer_started = false;
	(void)TERN_BUG_ON(ci->head != NULL || ci->shead != NULL || ci->ahead != NULL);
}

void capture_ingest_free(struct capture_ingest *ci)
{
	if (!ci)
		return;
	capture_ingest_stop(ci);
	pthread_cond_destroy(&ci->acond);
	pthread_cond_destroy(&ci->scond);
	pthread_cond_destroy(&ci->cond);
	pthread_mutex_destroy(&ci->mu);
	free(ci);
}
