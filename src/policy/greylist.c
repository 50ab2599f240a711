/*
 * greylist.c — the greylist: triplets (client network, sender, recipient)
 * in an in-memory table that answers at once, written behind to SQLite
 * (DATA_DIR/policy.db, table greylist) by one thread of its own.
 *
 * Owns: the table (keyed by 16 bytes of SHA-256 over the triplet, so its
 * memory per entry is fixed), its bound (GL_BUCKETS x GL_CHAIN_MAX), the
 * write-behind queue and the database file.
 * Must never: touch the disk from a caller's thread after greylist_open
 * (the event loop calls greylist_check), hold the lock across I/O, or grow
 * without bound (a full bucket drops its oldest entry, preferring ones that
 * never passed; the queue to the disk drops records past GL_QUEUE_MAX, which
 * only costs a re-greylisting after a restart).
 *
 * A lost write costs a client one more deferral, never a lost message: the
 * table is a cache of decisions, so it needs no fsync before replying.
 */
#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "core/loop.h"
#include "policy/policy_internal.h"

#define GL_BUCKETS 65536
#define GL_CHAIN_MAX 16
#define GL_QUEUE_MAX 100000
#define GL_DIGEST 16
/* A passed triplet's last use is written again only when it moved this far:
 * expiry counts in days, and every RCPT must not cost a write. */
#define GL_TOUCH_INTERVAL 3600
#define GL_PURGE_INTERVAL 3600

static const char SCHEMA[] = "CREATE TABLE IF NOT EXISTS greylist ("
                             " key BLOB PRIMARY KEY," /* 16 bytes of SHA-256 over the triplet */
                             " client_net TEXT NOT NULL,"
                             " sender TEXT NOT NULL,"
                             " rcpt TEXT NOT NULL,"
                             " first_seen INTEGER NOT NULL,"
                             " last_seen INTEGER NOT NULL,"
                             " passed INTEGER NOT NULL"
                             ") WITHOUT ROWID";

struct gl_entry {
	struct gl_entry *next;
	uint8_t key[GL_DIGEST];
	struct policy_grey_entry e;
	int64_t saved_last; /* last_seen as last queued for the disk */
};

/* One row to write, owned by the queue until the writer frees it. */
struct gl_rec {
	struct gl_rec *next;
	uint8_t key[GL_DIGEST];
	struct policy_grey_entry e;
	char net[POLICY_NET_TEXT_MAX];
	char *sender, *rcpt;
};

struct greylist {
	pthread_mutex_t lock;
	uint32_t seed;
	struct gl_entry **bucket;
	/* write-behind, under lock */
	struct gl_rec *q_head, *q_tail;
	size_t q_len;
	size_t dropped;
	bool flush_scheduled;
	struct policy_grey_params params; /* latest seen, for the writer's purge */
	/* the writer's own (only its thread, or open/close when it is idle) */
	struct pool *writer;
	char *path;
	sqlite3 *db;
	int64_t last_purge;
	bool db_failed_logged;
};

/* ------------------------------------------------------------- the table */

static bool triplet_digest(const uint8_t net[POLICY_NET_KEY_LEN], const char *sender,
                           const char *rcpt, uint8_t out[GL_DIGEST])
{
	uint8_t md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	bool ok = c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
	          EVP_DigestUpdate(c, net, POLICY_NET_KEY_LEN) == 1 &&
	          EVP_DigestUpdate(c, sender, strlen(sender) + 1) == 1 &&
	          EVP_DigestUpdate(c, rcpt, strlen(rcpt) + 1) == 1 &&
	          EVP_DigestFinal_ex(c, md, &mdlen) == 1 && mdlen >= GL_DIGEST;
	EVP_MD_CTX_free(c);
	if (ok)
		memcpy(out, md, GL_DIGEST);
	return ok;
}

static size_t bucket_of(const struct greylist *g, const uint8_t key[GL_DIGEST])
{
	uint32_t h = 2166136261u ^ g->seed;
	for (size_t i = 0; i < GL_DIGEST; i++)
		h = (h ^ key[i]) * 16777619u;
	return h % GL_BUCKETS;
}

static bool entry_expired(const struct policy_grey_entry *e, int64_t now,
                          const struct policy_grey_params *p)
{
	return e->passed ? now - e->last > (int64_t)p->expire
	                 : now - e->first > (int64_t)p->retry_window;
}

/* Puts a loaded or new entry into its bucket (lock held); evicts when the
 * bucket is full. NULL when out of memory. */
static struct gl_entry *table_insert(struct greylist *g, const uint8_t key[GL_DIGEST])
{
	size_t b = bucket_of(g, key);
	size_t n = 0;
	struct gl_entry *victim = NULL;
	for (struct gl_entry *e = g->bucket[b]; e; e = e->next) {
		n++;
		/* the oldest that never passed, else the least recently used */
		if (!victim || (victim->e.passed && !e->e.passed) ||
		    (victim->e.passed == e->e.passed && e->e.last < victim->e.last))
			victim = e;
	}
	struct gl_entry *e = n >= GL_CHAIN_MAX ? victim : calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	if (e != victim) {
		e->next = g->bucket[b];
		g->bucket[b] = e;
	}
	memcpy(e->key, key, GL_DIGEST);
	memset(&e->e, 0, sizeof(e->e));
	e->saved_last = 0;
	return e;
}

/* Finds key, dropping expired entries of its bucket on the way (lock held). */
static struct gl_entry *table_find(struct greylist *g, const uint8_t key[GL_DIGEST], int64_t now,
                                   const struct policy_grey_params *p)
{
	struct gl_entry **pp = &g->bucket[bucket_of(g, key)];
	struct gl_entry *found = NULL;
	while (*pp) {
		struct gl_entry *e = *pp;
		if (memcmp(e->key, key, GL_DIGEST) == 0) {
			found = e;
		} else if (entry_expired(&e->e, now, p)) {
			*pp = e->next;
			free(e);
			continue;
		}
		pp = &e->next;
	}
	return found;
}

/* ------------------------------------------------------------ the writer */

static void rec_free(struct gl_rec *r)
{
	free(r->sender);
	free(r->rcpt);
	free(r);
}

static int db_exec(sqlite3 *db, const char *sql)
{
	return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? TERN_OK : TERN_EIO;
}

/* Opens (creating if need be) the database; writer thread or start-up. */
static int db_open(struct greylist *g, bool create)
{
	if (g->db)
		return TERN_OK;
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
	if (sqlite3_open_v2(g->path, &g->db, flags, NULL) != SQLITE_OK)
		goto fail;
	sqlite3_busy_timeout(g->db, 5000);
	if (db_exec(g->db, "PRAGMA journal_mode = WAL") != TERN_OK ||
	    db_exec(g->db, "PRAGMA synchronous = NORMAL") != TERN_OK ||
	    db_exec(g->db, SCHEMA) != TERN_OK)
		goto fail;
	return TERN_OK;
fail:
	if (!g->db_failed_logged) {
		char q[512];
		log_error("event=greylist_db_failed path=%s reason=%s",
		          log_quote(g->path, strlen(g->path), q, sizeof(q)),
		          g->db ? sqlite3_errmsg(g->db) : "out-of-memory");
		g->db_failed_logged = true;
	}
	if (g->db)
		sqlite3_close(g->db);
	g->db = NULL;
	return TERN_EIO;
}

static void write_batch(struct greylist *g, struct gl_rec *recs, const struct policy_grey_params *p)
{
	if (db_open(g, true) != TERN_OK)
		return;
	sqlite3_stmt *st = NULL;
	int64_t now = (int64_t)time(NULL);
	if (db_exec(g->db, "BEGIN") != TERN_OK)
		goto fail;
	if (sqlite3_prepare_v2(g->db,
	                       "INSERT OR REPLACE INTO greylist (key, client_net, sender, rcpt, "
	                       "first_seen, last_seen, passed) VALUES (?, ?, ?, ?, ?, ?, ?)",
	                       -1, &st, NULL) != SQLITE_OK)
		goto fail;
	for (struct gl_rec *r = recs; r; r = r->next) {
		sqlite3_bind_blob(st, 1, r->key, GL_DIGEST, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, r->net, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, r->sender, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 4, r->rcpt, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 5, r->e.first);
		sqlite3_bind_int64(st, 6, r->e.last);
		sqlite3_bind_int(st, 7, r->e.passed ? 1 : 0);
		if (sqlite3_step(st) != SQLITE_DONE)
			goto fail;
		sqlite3_reset(st);
	}
	sqlite3_finalize(st);
	st = NULL;
	if (now - g->last_purge >= GL_PURGE_INTERVAL) {
		char sql[256];
		snprintf(sql, sizeof(sql),
		         "DELETE FROM greylist WHERE (passed = 1 AND last_seen < %lld) OR "
		         "(passed = 0 AND first_seen < %lld)",
		         (long long)(now - p->expire), (long long)(now - p->retry_window));
		if (db_exec(g->db, sql) != TERN_OK)
			goto fail;
		g->last_purge = now;
	}
	if (db_exec(g->db, "COMMIT") != TERN_OK)
		goto fail;
	return;
fail:
	log_error("event=greylist_write_failed reason=%s", sqlite3_errmsg(g->db));
	if (st)
		sqlite3_finalize(st);
	db_exec(g->db, "ROLLBACK");
}

/* On the writer thread: everything queued so far, in one transaction. */
static void flush_work(void *arg)
{
	struct greylist *g = arg;
	pthread_mutex_lock(&g->lock);
	struct gl_rec *recs = g->q_head;
	struct policy_grey_params p = g->params;
	size_t dropped = g->dropped;
	g->q_head = g->q_tail = NULL;
	g->q_len = 0;
	g->dropped = 0;
	g->flush_scheduled = false;
	pthread_mutex_unlock(&g->lock);
	if (dropped)
		log_warn("event=greylist_queue_full dropped=%zu", dropped);
	if (recs)
		write_batch(g, recs, &p);
	while (recs) {
		struct gl_rec *next = recs->next;
		rec_free(recs);
		recs = next;
	}
}

/* Queues e's row for the writer (lock held). */
static void queue_write(struct greylist *g, const struct gl_entry *e, const char *net,
                        const char *sender, const char *rcpt)
{
	if (g->q_len >= GL_QUEUE_MAX) {
		g->dropped++;
		return;
	}
	struct gl_rec *r = calloc(1, sizeof(*r));
	char *s = tern_strdup(sender), *t = tern_strdup(rcpt);
	if (!r || !s || !t) {
		free(r);
		free(s);
		free(t);
		g->dropped++;
		return;
	}
	memcpy(r->key, e->key, GL_DIGEST);
	r->e = e->e;
	tern_strlcpy(r->net, net, sizeof(r->net));
	r->sender = s;
	r->rcpt = t;
	if (g->q_tail)
		g->q_tail->next = r;
	else
		g->q_head = r;
	g->q_tail = r;
	g->q_len++;
	if (!g->flush_scheduled && pool_submit(g->writer, flush_work, NULL, NULL, g) == 0)
		g->flush_scheduled = true;
}

/* ---------------------------------------------------------------- public */

enum policy_grey_result greylist_check(struct greylist *g, const uint8_t net[POLICY_NET_KEY_LEN],
                                       const char *net_text, const char *sender, const char *rcpt,
                                       int64_t now, const struct policy_grey_params *p,
                                       uint32_t *wait)
{
	uint8_t key[GL_DIGEST];
	if (!triplet_digest(net, sender, rcpt, key)) {
		/* cannot tell the triplet apart: let the mail through */
		*wait = 0;
		return POLICY_GREY_PASS;
	}
	pthread_mutex_lock(&g->lock);
	g->params = *p;
	struct gl_entry *e = table_find(g, key, now, p);
	bool exists = e != NULL;
	if (!e)
		e = table_insert(g, key);
	enum policy_grey_result res;
	if (!e) {
		*wait = 0;
		res = POLICY_GREY_PASS; /* out of memory: fail open */
	} else {
		res = policy_grey_step(&e->e, exists, now, p, wait);
		bool write = res == POLICY_GREY_NEW || res == POLICY_GREY_PASS_FIRST ||
		             (res == POLICY_GREY_PASS && now - e->saved_last >= GL_TOUCH_INTERVAL);
		if (write) {
			e->saved_last = e->e.last;
			queue_write(g, e, net_text, sender, rcpt);
		}
	}
	pthread_mutex_unlock(&g->lock);
	return res;
}

/* Loads the rows of an existing database into the table (start-up). */
static int load(struct greylist *g, char *err, size_t errlen)
{
	struct stat sb;
	if (stat(g->path, &sb) != 0) {
		if (errno == ENOENT)
			return TERN_OK; /* created on the first write */
		snprintf(err, errlen, "cannot read %s: %s", g->path, strerror(errno));
		return TERN_EIO;
	}
	if (db_open(g, false) != TERN_OK) {
		snprintf(err, errlen, "cannot open %s as a database", g->path);
		return TERN_EIO;
	}
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(g->db, "SELECT key, first_seen, last_seen, passed FROM greylist", -1,
	                       &st, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "cannot read %s: %s", g->path, sqlite3_errmsg(g->db));
		return TERN_EIO;
	}
	size_t n = 0;
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (sqlite3_column_bytes(st, 0) != GL_DIGEST)
			continue; /* not ours: skip rather than guess */
		struct gl_entry *e = table_insert(g, sqlite3_column_blob(st, 0));
		if (!e)
			break;
		e->e.first = sqlite3_column_int64(st, 1);
		e->e.last = e->saved_last = sqlite3_column_int64(st, 2);
		e->e.passed = sqlite3_column_int(st, 3) != 0;
		n++;
	}
	sqlite3_finalize(st);
	log_info("event=greylist_loaded entries=%zu", n);
	return TERN_OK;
}

/*
 * The database cannot be read: the greylist is a cache of decisions, so
 * start empty (costing clients one more deferral) rather than refuse to
 * start, and keep the file as PATH.damaged for the operator.
 */
static void set_aside(struct greylist *g, const char *why)
{
	static const char *const suffix[] = {"", "-wal", "-shm"};
	if (g->db)
		sqlite3_close(g->db);
	g->db = NULL;
	g->db_failed_logged = false; /* the fresh file's trouble is news */
	char from[4200], to[4200], q[600];
	for (size_t i = 0; i < 3; i++) {
		snprintf(from, sizeof(from), "%s%s", g->path, suffix[i]);
		snprintf(to, sizeof(to), "%s.damaged%s", g->path, suffix[i]);
		if (rename(from, to) != 0 && errno != ENOENT && i == 0)
			log_error("event=greylist_set_aside_failed path=%s reason=%s",
			          log_quote(from, strlen(from), q, sizeof(q)), strerror(errno));
	}
	char qk[600];
	snprintf(to, sizeof(to), "%s.damaged", g->path);
	log_error("event=greylist_load_failed reason=%s action=start-empty kept=%s",
	          log_quote(why, strlen(why), q, sizeof(q)),
	          log_quote(to, strlen(to), qk, sizeof(qk)));
}

struct greylist *greylist_open(const char *data_dir, char *err, size_t errlen)
{
	struct greylist *g = calloc(1, sizeof(*g));
	if (!g)
		goto nomem;
	pthread_mutex_init(&g->lock, NULL);
	if (getrandom(&g->seed, sizeof(g->seed), 0) != sizeof(g->seed))
		g->seed = (uint32_t)(uintptr_t)g;
	size_t n = strlen(data_dir) + sizeof("/policy.db");
	g->path = malloc(n);
	g->bucket = calloc(GL_BUCKETS, sizeof(*g->bucket));
	if (!g->path || !g->bucket)
		goto nomem;
	snprintf(g->path, n, "%s/policy.db", data_dir);
	if (load(g, err, errlen) != TERN_OK)
		set_aside(g, err);
	g->writer = pool_new(1);
	if (!g->writer)
		goto nomem;
	return g;
nomem:
	snprintf(err, errlen, "greylist: out of memory");
	greylist_close(g);
	return NULL;
}

void greylist_close(struct greylist *g)
{
	if (!g)
		return;
	pool_free(g->writer); /* runs the flush still queued */
	g->writer = NULL;
	if (g->q_head)
		flush_work(g); /* queued while a submit failed: the writer is gone, write here */
	for (struct gl_rec *r = g->q_head; r;) {
		struct gl_rec *next = r->next;
		rec_free(r);
		r = next;
	}
	for (size_t b = 0; g->bucket && b < GL_BUCKETS; b++) {
		struct gl_entry *e = g->bucket[b];
		while (e) {
			struct gl_entry *next = e->next;
			free(e);
			e = next;
		}
	}
	if (g->db)
		sqlite3_close(g->db);
	free(g->bucket);
	free(g->path);
	pthread_mutex_destroy(&g->lock);
	free(g);
}
