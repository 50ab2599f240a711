/*
 * dmarc_store.c — DATA/dmarc.db: DMARC evaluations (write-behind from the
 * mx session) and received aggregate report rows (store/dmarc_store.h).
 *
 * Owns: the schema, the write-behind queue and its one writer thread (as
 * policy/greylist.c does for greylisting), the daemon's default store.
 *
 * Must never: touch the disk from a caller's thread in dmarc_store_record,
 * wait on the writer from the mail path, or let a failure to record reach
 * the mail: it is logged and counted only.
 */
#include "store/dmarc_store.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "core/loop.h"

/* Rows waiting for the writer; past this they are dropped (and counted):
 * a wedged disk must not grow the daemon without bound. */
#define QUEUE_MAX 10000

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS evals ("
    " id INTEGER PRIMARY KEY, t INTEGER NOT NULL, ip TEXT NOT NULL,"
    " header_from TEXT NOT NULL, env_from TEXT NOT NULL, policy_domain TEXT NOT NULL, org_domain "
    "TEXT,"
    " p TEXT, sp TEXT, np TEXT, adkim TEXT, aspf TEXT, testing INTEGER, psd TEXT,"
    " disposition TEXT, dkim_eval TEXT, spf_eval TEXT, dkim TEXT,"
    " spf_domain TEXT, spf_scope TEXT, spf_result TEXT, rua TEXT, applied TEXT);"
    "CREATE INDEX IF NOT EXISTS evals_domain ON evals (policy_domain, t);"
    "CREATE TABLE IF NOT EXISTS received ("
    " id INTEGER PRIMARY KEY, stored INTEGER NOT NULL, reporter TEXT NOT NULL,"
    " reporter_email TEXT, report_id TEXT NOT NULL, begin INTEGER, end INTEGER,"
    " policy_domain TEXT NOT NULL, source_ip TEXT, count INTEGER, disposition TEXT,"
    " dkim TEXT, spf TEXT, header_from TEXT, envelope_from TEXT,"
    " dkim_auth TEXT, spf_auth TEXT);"
    "CREATE INDEX IF NOT EXISTS received_domain ON received (policy_domain, begin);";

struct rec_node {
	struct rec_node *next;
	struct dmarc_rec r;
};

struct dmarc_store {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct rec_node *q_head, *q_tail;
	size_t q_len;
	uint64_t queued, written; /* rows handed to the writer / finished by it */
	bool flush_scheduled;
	bool writing; /* the writer holds a batch taken off the queue */
	_Atomic uint64_t failures;
	/* the writer's own */
	struct pool *writer;
	char *data_dir;
	sqlite3 *db;
	bool db_failed_logged;
};

static _Atomic(struct dmarc_store *) default_store;

void dmarc_store_set_default(struct dmarc_store *s)
{
	atomic_store(&default_store, s);
}

struct dmarc_store *dmarc_store_default(void)
{
	return atomic_load(&default_store);
}

/* ------------------------------------------------------------ direct */

sqlite3 *dmarc_db_open(const char *data_dir, bool create, char *err, size_t errlen)
{
	char path[4200];
	sqlite3 *db = NULL;
	snprintf(path, sizeof(path), "%s/dmarc.db", data_dir);
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
	if (sqlite3_open_v2(path, &db, flags, NULL) != SQLITE_OK)
		goto fail;
	sqlite3_busy_timeout(db, 5000);
	if (sqlite3_exec(db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(db, SCHEMA, NULL, NULL, NULL) != SQLITE_OK)
		goto fail;
	return db;
fail:
	snprintf(err, errlen, "cannot open %s: %s", path,
	         db ? sqlite3_errmsg(db) : "out of memory");
	sqlite3_close(db);
	return NULL;
}

/* The DKIM results as a JSON array of {domain, selector, result, aligned}. */
static char *dkim_json(const struct dmarc_rec *r)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < r->n_dkim && i < DMARC_REC_DKIM_MAX; i++)
		json_array_append_new(a,
		                      json_pack("{s:s, s:s, s:s, s:b}", "domain", r->dkim[i].domain,
		                                "selector", r->dkim[i].selector, "result",
		                                r->dkim[i].result, "aligned", r->dkim[i].aligned));
	char *s = a ? json_dumps(a, JSON_COMPACT) : NULL;
	json_decref(a);
	return s;
}

int dmarc_db_insert(sqlite3 *db, const struct dmarc_rec *r)
{
	sqlite3_stmt *st = NULL;
	char *dk = dkim_json(r);
	int rc = TERN_EIO;
	char adkim[2] = {r->adkim ? r->adkim : 'r', 0}, aspf[2] = {r->aspf ? r->aspf : 'r', 0};
	char psd[2] = {r->psd ? r->psd : 'u', 0};
	if (!dk)
		return TERN_ENOMEM;
	if (sqlite3_prepare_v2(
	        db,
	        "INSERT INTO evals (t, ip, header_from, env_from, policy_domain, p, "
	        "sp, np, adkim, aspf, testing, psd, disposition, dkim_eval, "
	        "spf_eval, dkim, spf_domain, spf_scope, spf_result, rua, org_domain, applied) "
	        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
	        -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, r->t);
	const char *text[] = {r->ip, r->header_from, r->env_from, r->policy_domain, r->p, r->sp,
	                      r->np, adkim,          aspf};
	for (int i = 0; i < 9; i++)
		sqlite3_bind_text(st, 2 + i, text[i], -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 11, r->testing ? 1 : 0);
	sqlite3_bind_text(st, 12, psd, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 13, r->disposition, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 14, r->dkim_eval, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 15, r->spf_eval, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 16, dk, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 17, r->spf_domain, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 18, r->spf_scope, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 19, r->spf_result, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 20, r->rua, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 21, r->org_domain, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 22, r->applied, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_DONE)
		rc = TERN_OK;
out:
	sqlite3_finalize(st);
	free(dk);
	return rc;
}

/* ------------------------------------------------------- write-behind */

static void write_batch(struct dmarc_store *s, struct rec_node *recs, size_t n)
{
	char err[512];
	if (!s->db && !(s->db = dmarc_db_open(s->data_dir, true, err, sizeof(err)))) {
		if (!s->db_failed_logged) {
			char q[600];
			log_error("event=dmarc_store_failed reason=%s",
			          log_quote(err, strlen(err), q, sizeof(q)));
			s->db_failed_logged = true;
		}
		atomic_fetch_add(&s->failures, n);
		return;
	}
	bool ok = sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK;
	for (struct rec_node *r = recs; ok && r; r = r->next)
		ok = dmarc_db_insert(s->db, &r->r) == TERN_OK;
	if (ok)
		ok = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK;
	if (!ok) {
		log_error("event=dmarc_store_write_failed rows=%zu reason=%s", n,
		          sqlite3_errmsg(s->db));
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
		atomic_fetch_add(&s->failures, n);
	}
}

/* On the writer thread: everything queued so far, in one transaction. */
static void flush_work(void *arg)
{
	struct dmarc_store *s = arg;
	pthread_mutex_lock(&s->lock);
	struct rec_node *recs = s->q_head;
	size_t n = s->q_len;
	s->q_head = s->q_tail = NULL;
	s->q_len = 0;
	s->flush_scheduled = false;
	s->writing = true;
	pthread_mutex_unlock(&s->lock);
	if (recs)
		write_batch(s, recs, n);
	while (recs) {
		struct rec_node *next = recs->next;
		free(recs);
		recs = next;
	}
	pthread_mutex_lock(&s->lock);
	s->written += n;
	s->writing = false;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

void dmarc_store_record(struct dmarc_store *s, const struct dmarc_rec *r)
{
	if (!s)
		return;
	struct rec_node *n = malloc(sizeof(*n));
	pthread_mutex_lock(&s->lock);
	if (!n || s->q_len >= QUEUE_MAX) {
		pthread_mutex_unlock(&s->lock);
		free(n);
		if (atomic_fetch_add(&s->failures, 1) % 1000 == 0)
			log_warn("event=dmarc_store_dropped reason=%s",
			         n ? "queue-full" : "out-of-memory");
		return;
	}
	n->next = NULL;
	n->r = *r;
	if (s->q_tail)
		s->q_tail->next = n;
	else
		s->q_head = n;
	s->q_tail = n;
	s->q_len++;
	s->queued++;
	if (!s->flush_scheduled && pool_submit(s->writer, flush_work, NULL, NULL, s) == 0)
		s->flush_scheduled = true;
	pthread_mutex_unlock(&s->lock);
}

uint64_t dmarc_store_failures(const struct dmarc_store *s)
{
	return s ? atomic_load(&((struct dmarc_store *)s)->failures) : 0;
}

void dmarc_store_sync(struct dmarc_store *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	uint64_t want = s->queued;
	/* bounded: the writer finishes or drops every queued row */
	while (s->written < want && (s->flush_scheduled || s->writing))
		pthread_cond_wait(&s->cond, &s->lock);
	pthread_mutex_unlock(&s->lock);
}

struct dmarc_store *dmarc_store_open(const char *data_dir, char *err, size_t errlen)
{
	struct dmarc_store *s = calloc(1, sizeof(*s));
	if (!s)
		goto nomem;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	s->data_dir = tern_strdup(data_dir);
	s->writer = pool_new(1);
	if (!s->data_dir || !s->writer)
		goto nomem;
	return s;
nomem:
	snprintf(err, errlen, "dmarc store: out of memory");
	dmarc_store_close(s);
	return NULL;
}

void dmarc_store_close(struct dmarc_store *s)
{
	if (!s)
		return;
	pool_free(s->writer); /* runs the flush still queued */
	s->writer = NULL;
	if (s->q_head)
		flush_work(s); /* queued while a submit failed: write here */
	uint64_t lost = atomic_load(&s->failures);
	if (lost)
		log_warn(
		    "event=dmarc_store_closed lost=%llu reason=\"evaluations that could not be "
		    "recorded (see the dmarc_store lines above)\"",
		    (unsigned long long)lost);
	if (s->db)
		sqlite3_close(s->db);
	free(s->data_dir);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	free(s);
}
