/*
 * events.c — the event emitter, its writer thread and the event store's
 * schema and queries (see events.h).
 *
 * Owns: the bounded in-memory queue, the writer thread, DATA/events.db's
 * schema, the events' JSON shape (API, CLI and webhook bodies share it).
 *
 * Must never: make events_emit wait for the disk or for the writer; lose an
 * event silently (a dropped one is counted and logged); let the writer insert
 * an event without the outbox rows its endpoints call for (same transaction).
 */
#include "store/events.h"
#include "store/webhook.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/log.h"
#include "core/timefmt.h"

static const char *const type_names[EV__COUNT] = {
    "received",   "queued",     "delivered", "deferred", "bounced",
    "complained", "suppressed", "opened",    "clicked",  "unsubscribed",
};

const char *events_type_name(enum tern_event_type t)
{
	return (unsigned)t < EV__COUNT ? type_names[t] : NULL;
}

int events_type_parse(const char *name)
{
	if (!name)
		return -1;
	if (strncmp(name, "message.", 8) == 0)
		name += 8;
	for (int i = 0; i < EV__COUNT; i++)
		if (strcmp(name, type_names[i]) == 0)
			return i;
	return -1;
}

/* ---- the queue ---- */

/* One queued event: the struct and its strings, one after the other in a
 * chunk of the queue. */
struct qev {
	struct qev *next;
	struct tern_event ev;
	char strings[];
};

/* Emitters copy events into chunks, one after another (a bump allocation
 * under the queue's lock); the writer takes every queued event and the chunks
 * that hold them at once and frees the chunks when they are written: two
 * allocations a few hundred events instead of a malloc by the emitter and a
 * free by the writer (another thread's arena) per event. */
enum { CHUNK_SIZE = 64 * 1024 };

struct chunk {
	struct chunk *next;
	size_t used, cap;
	_Alignas(max_align_t) char data[];
};

static void chunks_free(struct chunk *c)
{
	while (c) {
		struct chunk *nx = c->next;
		free(c);
		c = nx;
	}
}

static struct {
	pthread_mutex_t lock;
	pthread_cond_t wake; /* the writer: work or stop */
	pthread_cond_t idle; /* events_flush: the queue is written */
	bool running, stopping, writing;
	struct qev *head, *tail;
	struct chunk *chunks, *chunk; /* the queued events' chunks, first and last */
	size_t n, max;
	pthread_t writer;
	sqlite3 *db;
	struct events_opts opts;
	struct webhook_sender *sender;
	_Atomic uint64_t dropped;
	_Atomic bool live; /* running: the emitters' lock-free fast path when not */
	int64_t last_drop_log;
} Q = {.lock = PTHREAD_MUTEX_INITIALIZER,
       .wake = PTHREAD_COND_INITIALIZER,
       .idle = PTHREAD_COND_INITIALIZER};

static int64_t now_sec(void)
{
	return (int64_t)time(NULL);
}

bool events_enabled(void)
{
	return atomic_load_explicit(&Q.live, memory_order_relaxed);
}

uint64_t events_dropped(void)
{
	return atomic_load(&Q.dropped);
}

static size_t slen(const char *s)
{
	return s ? strlen(s) + 1 : 0;
}

/* Copies s into *p and returns the copy (NULL stays NULL). */
static const char *put(char **p, const char *s)
{
	if (!s)
		return NULL;
	size_t n = strlen(s) + 1;
	memcpy(*p, s, n);
	const char *r = *p;
	*p += n;
	return r;
}

bool events_emit(const struct tern_event *ev)
{
	if (TERN_BUG_ON(!ev || (unsigned)ev->type >= EV__COUNT))
		return false;
	if (!atomic_load_explicit(&Q.live, memory_order_relaxed))
		return false;
	size_t n = sizeof(struct qev) + slen(ev->queue_id) + slen(ev->message_id) +
	           slen(ev->sender) + slen(ev->recipient) + slen(ev->key) + slen(ev->tags) +
	           slen(ev->metadata) + slen(ev->reply) + slen(ev->status) + slen(ev->relay);
	n = (n + _Alignof(max_align_t) - 1) & ~(size_t)(_Alignof(max_align_t) - 1);
	int64_t t = ev->time ? ev->time : now_sec();
	bool ok = false;
	pthread_mutex_lock(&Q.lock);
	if (!Q.running || Q.stopping) {
		pthread_mutex_unlock(&Q.lock);
		return false;
	}
	if (Q.n < Q.max) {
		struct chunk *c = Q.chunk;
		if (!c || c->cap - c->used < n) {
			size_t cap = n > CHUNK_SIZE - sizeof(*c) ? n : CHUNK_SIZE - sizeof(*c);
			if ((c = malloc(sizeof(*c) + cap))) {
				*c = (struct chunk){.cap = cap};
				if (Q.chunk)
					Q.chunk->next = c;
				else
					Q.chunks = c;
				Q.chunk = c;
			}
		}
		if (c) {
			/* A copy of a few hundred bytes under the lock: less than the
			 * malloc it replaces. */
			struct qev *q = (struct qev *)(void *)(c->data + c->used);
			char *p = q->strings;
			c->used += n;
			q->next = NULL;
			q->ev = *ev;
			q->ev.time = t;
			q->ev.queue_id = put(&p, ev->queue_id);
			q->ev.message_id = put(&p, ev->message_id);
			q->ev.sender = put(&p, ev->sender);
			q->ev.recipient = put(&p, ev->recipient);
			q->ev.key = put(&p, ev->key);
			q->ev.tags = put(&p, ev->tags);
			q->ev.metadata = put(&p, ev->metadata);
			q->ev.reply = put(&p, ev->reply);
			q->ev.status = put(&p, ev->status);
			q->ev.relay = put(&p, ev->relay);
			if (Q.tail)
				Q.tail->next = q;
			else
				Q.head = q;
			Q.tail = q;
			Q.n++;
			ok = true;
			pthread_cond_signal(&Q.wake);
		}
	}
	bool log_it = false;
	if (!ok) {
		atomic_fetch_add(&Q.dropped, 1);
		int64_t now = now_sec();
		if (now - Q.last_drop_log >= 60) {
			Q.last_drop_log = now;
			log_it = true;
		}
	}
	pthread_mutex_unlock(&Q.lock);
	if (log_it)
		log_warn("event=events_dropped id=%s type=%s dropped_total=%" PRIu64
		         " reason=\"event queue full or out of memory\"",
		         ev->queue_id ? ev->queue_id : "", type_names[ev->type],
		         atomic_load(&Q.dropped));
	return ok;
}

void events_emit_msg(enum tern_event_type type, const char *queue_id, const char *mid,
                     size_t mid_len, const char *sender, const char *recipient, const char *user)
{
	if (!atomic_load_explicit(&Q.live, memory_order_relaxed))
		return;
	char m[1000];
	if (mid_len >= sizeof(m))
		mid_len = sizeof(m) - 1;
	if (mid_len)
		memcpy(m, mid, mid_len);
	m[mid_len] = '\0';
	events_emit(&(struct tern_event){.type = type,
	                                 .queue_id = queue_id,
	                                 .message_id = m,
	                                 .sender = sender,
	                                 .recipient = recipient,
	                                 .key = user});
}

void events_emit_outcome(enum tern_event_type type, const char *queue_id, const char *mid,
                         size_t mid_len, const char *sender, const char *recipient,
                         const char *relay, const char *status, const char *reply,
                         int64_t next_attempt, bool hard)
{
	if (!atomic_load_explicit(&Q.live, memory_order_relaxed))
		return;
	char m[1000];
	if (mid_len >= sizeof(m))
		mid_len = sizeof(m) - 1;
	if (mid_len)
		memcpy(m, mid, mid_len);
	m[mid_len] = '\0';
	events_emit(&(struct tern_event){.type = type,
	                                 .queue_id = queue_id,
	                                 .message_id = m,
	                                 .sender = sender,
	                                 .recipient = recipient,
	                                 .relay = relay,
	                                 .status = status,
	                                 .reply = reply,
	                                 .next_attempt = next_attempt,
	                                 .hard = hard});
}

/* ---- the store ---- */

static const char schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=NORMAL;"
    "CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT);"
    "CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, time INTEGER NOT NULL,"
    " type TEXT NOT NULL, queue_id TEXT, message_id TEXT, sender TEXT, recipient TEXT,"
    " key TEXT, tags TEXT, metadata TEXT, reply TEXT, status TEXT, relay TEXT,"
    " next_attempt INTEGER, hard INTEGER);"
    /* No index on time: events_span keeps each minute's smallest and largest
     * id instead (one upsert a batch rather than a B-tree insert an event);
     * events_id_range turns a time window into an id range. An older store's
     * events_time is dropped when the writer first opens it (span_catch_up). */
    "CREATE TABLE IF NOT EXISTS events_span(minute INTEGER PRIMARY KEY, lo INTEGER NOT NULL,"
    " hi INTEGER NOT NULL);"
    /* No index on recipient: the one query that filters on it (events_query_run)
     * walks the primary key in id order ("?3 = '' OR recipient = ?3" cannot use
     * one), so events_rcpt (dropped from older stores here) only cost the writer
     * a NOCASE B-tree insert per event. */
    "DROP INDEX IF EXISTS events_rcpt;"
    /* By queue id, only a message's receipts (received, queued): the two
     * lookups by queue id want nothing else (the writer's origin of a later
     * event, stats' receipt time of a delivery), and a relayed message's
     * delivery is then one B-tree insert instead of two. Older stores' full
     * events_qid is replaced here (about a second on a million events). */
    "DROP INDEX IF EXISTS events_qid;"
    "CREATE INDEX IF NOT EXISTS events_receipt ON events(queue_id)"
    " WHERE type = 'received' OR type = 'queued';"
    "CREATE TABLE IF NOT EXISTS webhooks(id INTEGER PRIMARY KEY, url TEXT NOT NULL,"
    " secret TEXT NOT NULL, events TEXT NOT NULL DEFAULT '', key TEXT NOT NULL DEFAULT '',"
    " enabled INTEGER NOT NULL DEFAULT 1, status TEXT NOT NULL DEFAULT 'active',"
    " failing_since INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS outbox(id INTEGER PRIMARY KEY, endpoint INTEGER NOT NULL,"
    " event INTEGER NOT NULL, queue_id TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " next_try INTEGER NOT NULL DEFAULT 0, done INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(done, endpoint, queue_id, id);"
    "CREATE TABLE IF NOT EXISTS attempts(id INTEGER PRIMARY KEY, endpoint INTEGER NOT NULL,"
    " event INTEGER NOT NULL, time INTEGER NOT NULL, http_status INTEGER NOT NULL,"
    " error TEXT NOT NULL DEFAULT '');"
    "CREATE INDEX IF NOT EXISTS attempts_ep ON attempts(endpoint, id);"
    "INSERT OR IGNORE INTO meta(k, v) VALUES('node', lower(hex(randomblob(6))));";

/* mutex: SQLITE_OPEN_FULLMUTEX for a connection threads share, NOMUTEX for
 * the writer's own (one thread: a lock per sqlite3 call is pure cost there). */
static sqlite3 *db_open(const char *data_dir, int mutex, char *err, size_t errlen)
{
	char path[4096];
	sqlite3 *db = NULL;
	char *msg = NULL;
	snprintf(path, sizeof(path), "%s/events.db", data_dir);
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | mutex, NULL) !=
	    SQLITE_OK) {
		snprintf(err, errlen, "cannot open %s: %s", path,
		         db ? sqlite3_errmsg(db) : "no memory");
		goto fail;
	}
	sqlite3_busy_timeout(db, 5000);
	if (sqlite3_exec(db, schema, NULL, NULL, &msg) != SQLITE_OK) {
		snprintf(err, errlen, "%s: %s", path, msg ? msg : sqlite3_errmsg(db));
		sqlite3_free(msg);
		goto fail;
	}
	return db;
fail:
	sqlite3_close(db);
	return NULL;
}

sqlite3 *events_db_open(const char *data_dir, char *err, size_t errlen)
{
	return db_open(data_dir, SQLITE_OPEN_FULLMUTEX, err, errlen);
}

/* ---- spans: a time window as an id range ---- */

/* Events' times and ids rise together but not strictly (emitters stamp the
 * time before they queue; tests and imports give their own), so a minute's
 * span is the smallest and largest id among its events, and a window's ids
 * lie between the smallest lo and the largest hi of its minutes. meta's
 * span_id is the largest id the spans cover: rows above it (written by an
 * older tern, or by hand) have no span yet and are always included. */
static int64_t minute_of(int64_t t)
{
	return t / 60; /* SQL's time / 60 */
}

int events_id_range(sqlite3 *db, int64_t since, int64_t until, int64_t *lo, int64_t *hi)
{
	sqlite3_stmt *st = NULL;
	int rc = TERN_EIO;
	*lo = 1;
	*hi = 0;
	if (sqlite3_prepare_v2(db,
	                       "SELECT min(lo), max(hi), coalesce((SELECT CAST(v AS INTEGER) FROM "
	                       "meta WHERE k = 'span_id'), 0), coalesce((SELECT max(id) FROM "
	                       "events), 0) FROM events_span WHERE minute BETWEEN ?1 AND ?2",
	                       -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, minute_of(since));
	sqlite3_bind_int64(st, 2, minute_of(until));
	if (sqlite3_step(st) != SQLITE_ROW)
		goto out;
	bool any = sqlite3_column_type(st, 0) != SQLITE_NULL;
	int64_t covered = sqlite3_column_int64(st, 2), top = sqlite3_column_int64(st, 3);
	if (any) {
		*lo = sqlite3_column_int64(st, 0);
		*hi = sqlite3_column_int64(st, 1);
	}
	if (top > covered) {
		if (!any || *lo > covered + 1)
			*lo = covered + 1;
		*hi = INT64_MAX;
	}
	rc = TERN_OK;
out:
	sqlite3_finalize(st);
	return rc;
}

/*
 * Makes the spans cover every event (the writer's open: a store of an older
 * tern has none, or rows written since by one) and drops the time index such
 * a store has. One transaction; on a million events about a second, once.
 */
static int span_catch_up(sqlite3 *db)
{
	sqlite3_stmt *st = NULL;
	int rc = TERN_EIO;
	bool had_index = false;
	if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
		return TERN_EIO;
	if (sqlite3_prepare_v2(db,
	                       "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name = "
	                       "'events_time'",
	                       -1, &st, NULL) != SQLITE_OK ||
	    sqlite3_step(st) != SQLITE_ROW)
		goto out;
	had_index = sqlite3_column_int(st, 0) > 0;
	sqlite3_finalize(st);
	st = NULL;
	if (sqlite3_exec(
	        db,
	        "INSERT INTO events_span(minute, lo, hi) SELECT time / 60, min(id), max(id) "
	        "FROM events WHERE id > coalesce((SELECT CAST(v AS INTEGER) FROM meta "
	        "WHERE k = 'span_id'), 0) GROUP BY time / 60 ON CONFLICT(minute) DO UPDATE "
	        "SET lo = min(lo, excluded.lo), hi = max(hi, excluded.hi);"
	        "INSERT OR REPLACE INTO meta(k, v) VALUES('span_id', (SELECT "
	        "coalesce(max(id), 0) FROM events));"
	        "DROP INDEX IF EXISTS events_time;",
	        NULL, NULL, NULL) != SQLITE_OK)
		goto out;
	rc = TERN_OK;
out:
	sqlite3_finalize(st);
	if (rc == TERN_OK && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK) {
		if (had_index)
			log_info(
			    "event=events_migrated change=\"time index replaced by events_span\"");
		return TERN_OK;
	}
	log_error("event=events_failed reason=\"span catch-up: %s\"", sqlite3_errmsg(db));
	sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	return TERN_EIO;
}

/* The endpoints the writer matches events against; reloaded when another
 * connection (the CLI, the sender) changed the file (PRAGMA data_version). */
struct endpoint_filter {
	int64_t id;
	unsigned types; /* bit per enum tern_event_type; all when none named */
	char key[128];  /* only events of this API key or user; "" any */
};

static int load_filters(sqlite3 *db, struct endpoint_filter **out, size_t *n)
{
	sqlite3_stmt *st = NULL;
	struct endpoint_filter *f = NULL;
	size_t cnt = 0, cap = 0;
	int rc = TERN_EIO;
	if (sqlite3_prepare_v2(db, "SELECT id, events, key FROM webhooks", -1, &st, NULL) !=
	    SQLITE_OK)
		goto out;
	while (sqlite3_step(st) == SQLITE_ROW) {
		if (cnt == cap) {
			cap = cap ? cap * 2 : 8;
			struct endpoint_filter *nf = realloc(f, cap * sizeof(*f));
			if (!nf) {
				rc = TERN_ENOMEM;
				goto out;
			}
			f = nf;
		}
		f[cnt].id = sqlite3_column_int64(st, 0);
		f[cnt].types = webhook_filter_parse((const char *)sqlite3_column_text(st, 1));
		const unsigned char *k = sqlite3_column_text(st, 2);
		snprintf(f[cnt].key, sizeof(f[cnt].key), "%s", k ? (const char *)k : "");
		cnt++;
	}
	rc = TERN_OK;
out:
	sqlite3_finalize(st);
	if (rc != TERN_OK) {
		free(f);
		return rc;
	}
	free(*out);
	*out = f;
	*n = cnt;
	return TERN_OK;
}

/* The writer's statements, prepared once: parsing SQL per batch would cost
 * more than the inserts (callgrind: prepare was 40% of the daemon's work).
 * ins1 inserts one row, insg INSERT_GROUP rows in one statement: a statement's
 * own cost (its transaction and cursors opened and closed, its halt) was a
 * fifth of the writer's instructions when every event had its own. */
enum { INSERT_GROUP = 16, INSERT_COLS = 14 };

/* What a parameter of ins1 or insg holds now, when that is a constant: a
 * string that lives as long as the program ("" or a type name) or the
 * integer zero. Bindings outlast sqlite3_reset, so binding one again is
 * skipped (a bind costs about 190 instructions; a relayed message's three
 * rows hold some twenty such values). Anything else is bound every time. */
struct bound {
	const char *str; /* the constant string bound, or NULL */
	bool zero;       /* the integer 0 is bound */
};

struct wstmts {
	sqlite3_stmt *ver, *begin, *commit, *rollback, *ins1, *insg, *ob, *origin, *maxid;
	sqlite3_stmt *span, *span_id;
	struct bound b1[INSERT_COLS], bg[INSERT_GROUP * INSERT_COLS]; /* ins1's, insg's */
};

static const char ins_head[] = "INSERT INTO events(time, type, queue_id, message_id, sender, "
                               "recipient, key, tags, metadata, reply, status, relay, "
                               "next_attempt, hard) VALUES";
static const char ins_row[] = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?)";

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
	return sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) == SQLITE_OK
	           ? TERN_OK
	           : TERN_EIO;
}

static int wstmts_prepare(sqlite3 *db, struct wstmts *w)
{
	char one[sizeof(ins_head) + sizeof(ins_row)];
	char group[sizeof(ins_head) + INSERT_GROUP * sizeof(ins_row)];
	if (w->insg)
		return TERN_OK;
	snprintf(one, sizeof(one), "%s%s", ins_head, ins_row);
	size_t n = (size_t)snprintf(group, sizeof(group), "%s", ins_head);
	for (int i = 0; i < INSERT_GROUP; i++)
		n += (size_t)snprintf(group + n, sizeof(group) - n, "%s%s", i ? "," : "", ins_row);
	if (prepare(db, "PRAGMA data_version", &w->ver) != TERN_OK ||
	    prepare(db, "BEGIN IMMEDIATE", &w->begin) != TERN_OK ||
	    prepare(db, "COMMIT", &w->commit) != TERN_OK ||
	    prepare(db, "ROLLBACK", &w->rollback) != TERN_OK ||
	    prepare(db, "INSERT INTO outbox(endpoint, event, queue_id) VALUES(?,?,?)", &w->ob) !=
	        TERN_OK ||
	    prepare(db,
	            "SELECT key, tags, metadata FROM events WHERE queue_id = ? AND "
	            "type = 'received' ORDER BY id LIMIT 1",
	            &w->origin) != TERN_OK ||
	    prepare(db, "SELECT coalesce(max(id), 0) FROM events", &w->maxid) != TERN_OK ||
	    prepare(db,
	            "INSERT INTO events_span(minute, lo, hi) VALUES(?1, ?2, ?3) ON "
	            "CONFLICT(minute) DO UPDATE SET lo = min(lo, excluded.lo), hi = max(hi, "
	            "excluded.hi)",
	            &w->span) != TERN_OK ||
	    prepare(db, "INSERT OR REPLACE INTO meta(k, v) VALUES('span_id', ?)", &w->span_id) !=
	        TERN_OK ||
	    prepare(db, one, &w->ins1) != TERN_OK || prepare(db, group, &w->insg) != TERN_OK) {
		log_error("event=events_write_failed reason=\"%s\"", sqlite3_errmsg(db));
		return TERN_EIO;
	}
	return TERN_OK;
}

static void wstmts_free(struct wstmts *w)
{
	sqlite3_finalize(w->ver);
	sqlite3_finalize(w->begin);
	sqlite3_finalize(w->commit);
	sqlite3_finalize(w->rollback);
	sqlite3_finalize(w->ins1);
	sqlite3_finalize(w->insg);
	sqlite3_finalize(w->ob);
	sqlite3_finalize(w->origin);
	sqlite3_finalize(w->maxid);
	sqlite3_finalize(w->span);
	sqlite3_finalize(w->span_id);
	*w = (struct wstmts){0};
}

/* Runs a statement without results; true when it finished. */
static bool run(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	return rc == SQLITE_DONE;
}

static int64_t data_version(struct wstmts *w)
{
	int64_t v = -1;
	if (sqlite3_step(w->ver) == SQLITE_ROW)
		v = sqlite3_column_int64(w->ver, 0);
	sqlite3_reset(w->ver);
	return v;
}

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
	sqlite3_bind_text(st, i, s ? s : "", -1, SQLITE_STATIC);
}

/* The key, tags and metadata of recent received events, by queue id: a later
 * event of the message inherits them from here instead of an index lookup
 * per event (callgrind: the lookup was a large part of the writer's work).
 * Direct-mapped; a miss (evicted, or received before a restart) falls back to
 * the SELECT, so the cache only saves work and never changes a result. */
enum { ORIGIN_SLOTS = 4096, ORIGIN_MAX = 1024 /* bytes a slot may hold: 4 MiB in all */ };

struct origin_cache {
	/* "qid\0" then 'c' and "key\0tags\0metadata\0", or 's' alone: this
	 * queue id's origin is too large to hold, ask the store; one allocation */
	char *slot[ORIGIN_SLOTS];
};

static size_t origin_hash(const char *qid)
{
	uint32_t h = 2166136261u;
	for (; *qid; qid++)
		h = (h ^ (unsigned char)*qid) * 16777619u;
	return h % ORIGIN_SLOTS;
}

static void origin_clear(struct origin_cache *c)
{
	for (size_t i = 0; i < ORIGIN_SLOTS; i++) {
		free(c->slot[i]);
		c->slot[i] = NULL;
	}
}

/* Remembers a received event's origin; the first received event of a queue
 * id wins, as with the SELECT's ORDER BY id. */
static void origin_put(struct origin_cache *c, const struct tern_event *e)
{
	size_t h = origin_hash(e->queue_id);
	if (c->slot[h] && strcmp(c->slot[h], e->queue_id) == 0)
		return;
	const char *k = e->key ? e->key : "", *t = e->tags ? e->tags : "",
	           *m = e->metadata ? e->metadata : "";
	size_t nq = strlen(e->queue_id) + 1, nk = strlen(k) + 1, nt = strlen(t) + 1,
	       nm = strlen(m) + 1;
	bool hold = nq + 1 + nk + nt + nm <= ORIGIN_MAX;
	char *b = malloc(hold ? nq + 1 + nk + nt + nm : nq + 1);
	free(c->slot[h]);
	c->slot[h] = b;
	if (!b)
		return;
	memcpy(b, e->queue_id, nq);
	b[nq] = hold ? 'c' : 's';
	if (!hold)
		return;
	memcpy(b + nq + 1, k, nk);
	memcpy(b + nq + 1 + nk, t, nt);
	memcpy(b + nq + 1 + nk + nt, m, nm);
}

/* Fills e's key, tags and metadata from the cache (pointers into it, valid
 * until the next origin_put or origin_clear); false on a miss. */
static bool origin_get(const struct origin_cache *c, struct tern_event *e)
{
	const char *b = c->slot[origin_hash(e->queue_id)];
	if (!b || strcmp(b, e->queue_id) != 0)
		return false;
	b += strlen(b) + 1;
	if (*b != 'c')
		return false;
	e->key = b + 1;
	e->tags = e->key + strlen(e->key) + 1;
	e->metadata = e->tags + strlen(e->tags) + 1;
	return true;
}

/* A row waiting for its group's INSERT: the event (its strings live in the
 * queue entry until the batch is freed) with its id and, when it inherits
 * them, copies of its received event's key, tags and metadata (the origin
 * statement and the cache may both change before the group is written). */
struct pending {
	const struct tern_event *e;
	int64_t id;
	const char *key, *tags, *metadata;
	char *own; /* the copies' one allocation, or NULL (all three empty) */
};

static const char *nz(const char *s)
{
	return s ? s : "";
}

/* Makes p's inherited fields copies of (k, t, m); false when out of memory. */
static bool pending_inherit(struct pending *p, const char *k, const char *t, const char *m)
{
	k = nz(k), t = nz(t), m = nz(m);
	if (!*k && !*t && !*m) { /* the common case: mail with no key or tags */
		p->key = p->tags = p->metadata = "";
		return true;
	}
	size_t nk = strlen(k) + 1, nt = strlen(t) + 1, nm = strlen(m) + 1;
	if (!(p->own = malloc(nk + nt + nm)))
		return false;
	p->key = memcpy(p->own, k, nk);
	p->tags = memcpy(p->own + nk, t, nt);
	p->metadata = memcpy(p->own + nk + nt, m, nm);
	return true;
}

/* Binds a string that lives as long as the program ("" or a type name). */
static void bind_const(sqlite3_stmt *st, struct bound *b, int i, const char *s)
{
	if (b[i - 1].str == s)
		return;
	sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
	b[i - 1] = (struct bound){.str = s};
}

/* Binds an event's string (valid until the statement has run). */
static void bind_str(sqlite3_stmt *st, struct bound *b, int i, const char *s)
{
	if (!s || !*s) {
		bind_const(st, b, i, "");
		return;
	}
	sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
	b[i - 1] = (struct bound){0};
}

static void bind_int(sqlite3_stmt *st, struct bound *b, int i, int64_t v)
{
	if (v == 0 && b[i - 1].zero)
		return;
	sqlite3_bind_int64(st, i, v);
	b[i - 1] = (struct bound){.zero = v == 0};
}

/* Binds p as the row whose first parameter is base + 1. */
static void bind_row(sqlite3_stmt *st, struct bound *b, int base, const struct pending *p)
{
	const struct tern_event *e = p->e;
	sqlite3_bind_int64(st, base + 1, e->time);
	bind_const(st, b, base + 2, type_names[e->type]);
	bind_str(st, b, base + 3, e->queue_id);
	bind_str(st, b, base + 4, e->message_id);
	bind_str(st, b, base + 5, e->sender);
	bind_str(st, b, base + 6, e->recipient);
	bind_str(st, b, base + 7, p->key);
	bind_str(st, b, base + 8, p->tags);
	bind_str(st, b, base + 9, p->metadata);
	bind_str(st, b, base + 10, e->reply);
	bind_str(st, b, base + 11, e->status);
	bind_str(st, b, base + 12, e->relay);
	bind_int(st, b, base + 13, e->next_attempt);
	bind_int(st, b, base + 14, e->hard);
}

/* Inserts the k pending rows (one statement for a full group, one each
 * otherwise) and frees their copies; false when SQLite failed, or gave an
 * id other than the one the outbox rows were given (SQLite gives the largest
 * plus one until 2^63 - 1, then picks at random: never here, but a wrong
 * outbox row must not result). SQLite picks the id itself: it then appends
 * without a search from the root (an id given cost a seek a row, 8 % of the
 * writer). */
static bool pending_flush(struct wstmts *w, struct pending *pend, size_t k)
{
	sqlite3 *db = sqlite3_db_handle(w->insg);
	bool ok = true, same = true;
	if (k == INSERT_GROUP) {
		for (size_t i = 0; i < k; i++)
			bind_row(w->insg, w->bg, (int)i * INSERT_COLS, &pend[i]);
		ok = run(w->insg);
		same = !ok || sqlite3_last_insert_rowid(db) == pend[k - 1].id;
	} else {
		for (size_t i = 0; i < k && ok && same; i++) {
			bind_row(w->ins1, w->b1, 0, &pend[i]);
			ok = run(w->ins1);
			same = !ok || sqlite3_last_insert_rowid(db) == pend[i].id;
		}
	}
	if (TERN_BUG_ON(!same)) {
		log_error("event=events_write_failed reason=\"an event's id is not the one "
		          "expected\"");
		ok = false;
	}
	for (size_t i = 0; i < k; i++) {
		free(pend[i].own);
		pend[i].own = NULL;
	}
	return ok;
}

/* The spans of a batch's rows, written at its end (a batch covers a minute
 * or two; should one cover more, the older are written as they come). */
enum { SPAN_BATCH = 8 };

struct spans {
	struct span {
		int64_t minute, lo, hi;
	} v[SPAN_BATCH];
	size_t n;
};

static bool spans_flush(struct wstmts *w, struct spans *sp)
{
	for (size_t i = 0; i < sp->n; i++) {
		sqlite3_bind_int64(w->span, 1, sp->v[i].minute);
		sqlite3_bind_int64(w->span, 2, sp->v[i].lo);
		sqlite3_bind_int64(w->span, 3, sp->v[i].hi);
		if (!run(w->span))
			return false;
	}
	sp->n = 0;
	return true;
}

static bool spans_add(struct wstmts *w, struct spans *sp, int64_t t, int64_t id)
{
	int64_t m = minute_of(t);
	for (size_t i = sp->n; i-- > 0;)
		if (sp->v[i].minute == m) {
			if (id < sp->v[i].lo)
				sp->v[i].lo = id;
			if (id > sp->v[i].hi)
				sp->v[i].hi = id;
			return true;
		}
	if (sp->n == SPAN_BATCH && !spans_flush(w, sp))
		return false;
	sp->v[sp->n++] = (struct span){.minute = m, .lo = id, .hi = id};
	return true;
}

/* Inserts a batch and its outbox rows in one transaction; *n_outbox gets
 * the number of outbox rows made. Ids are known here (the largest so far
 * plus one, as SQLite gives them): the outbox rows need them before their
 * group's INSERT runs. */
static int write_batch(sqlite3 *db, struct wstmts *w, struct origin_cache *oc, struct qev *batch,
                       const struct endpoint_filter *f, size_t nf, size_t *n_outbox)
{
	struct pending pend[INSERT_GROUP] = {0};
	struct spans sp = {.n = 0};
	size_t k = 0;
	int64_t id = 0;
	int rc = TERN_EIO;
	*n_outbox = 0;
	if (wstmts_prepare(db, w) != TERN_OK)
		return TERN_EIO;
	if (!run(w->begin))
		goto out;
	if (sqlite3_step(w->maxid) != SQLITE_ROW)
		goto out;
	id = sqlite3_column_int64(w->maxid, 0);
	sqlite3_reset(w->maxid);
	for (struct qev *q = batch; q; q = q->next) {
		const struct tern_event *e = &q->ev;
		struct pending *p = &pend[k];
		*p = (struct pending){
		    .e = e, .key = e->key, .tags = e->tags, .metadata = e->metadata};
		/* A later event of a message (delivered, bounced, ...) carries the
		 * key, tags and metadata its received event had (the spool does not
		 * keep them). */
		bool inherit = e->type != EV_RECEIVED && e->queue_id && *e->queue_id &&
		               !(e->key && *e->key) && !(e->tags && *e->tags) &&
		               !(e->metadata && *e->metadata);
		struct tern_event o = {.queue_id = e->queue_id};
		if (inherit && oc && origin_get(oc, &o)) {
			if (!pending_inherit(p, o.key, o.tags, o.metadata))
				goto out;
		} else if (inherit) {
			/* The store must hold every earlier row of the batch first:
			 * the received event may be one of them. */
			if (k && !pending_flush(w, pend, k))
				goto out;
			k = 0;
			p = &pend[0];
			*p = (struct pending){.e = e};
			sqlite3_bind_text(w->origin, 1, e->queue_id, -1, SQLITE_STATIC);
			bool found = sqlite3_step(w->origin) == SQLITE_ROW;
			bool copied = pending_inherit(
			    p, found ? (const char *)sqlite3_column_text(w->origin, 0) : NULL,
			    found ? (const char *)sqlite3_column_text(w->origin, 1) : NULL,
			    found ? (const char *)sqlite3_column_text(w->origin, 2) : NULL);
			sqlite3_reset(w->origin);
			if (!copied)
				goto out;
		}
		if (id == INT64_MAX) /* a store whose ids ran out: SQLite picks at random */
			goto out;
		p->id = ++id;
		k++;
		if (!spans_add(w, &sp, e->time, p->id))
			goto out;
		if (oc && e->type == EV_RECEIVED && e->queue_id && *e->queue_id)
			origin_put(oc, e);
		for (size_t i = 0; i < nf; i++) {
			if (!(f[i].types & (1u << e->type)))
				continue;
			if (f[i].key[0] && strcmp(f[i].key, nz(p->key)) != 0)
				continue;
			sqlite3_bind_int64(w->ob, 1, f[i].id);
			sqlite3_bind_int64(w->ob, 2, p->id);
			bind_text(w->ob, 3, e->queue_id);
			if (!run(w->ob))
				goto out;
			(*n_outbox)++;
		}
		if (k == INSERT_GROUP) {
			if (!pending_flush(w, pend, k))
				goto out;
			k = 0;
		}
	}
	if (k && !pending_flush(w, pend, k)) {
		k = 0;
		goto out;
	}
	k = 0;
	if (!spans_flush(w, &sp))
		goto out;
	sqlite3_bind_int64(w->span_id, 1, id);
	if (run(w->span_id) && run(w->commit))
		rc = TERN_OK;
out:
	for (size_t i = 0; i < k; i++)
		free(pend[i].own);
	sqlite3_reset(w->ins1);
	sqlite3_reset(w->insg);
	sqlite3_reset(w->ob);
	sqlite3_reset(w->origin);
	sqlite3_reset(w->maxid);
	sqlite3_reset(w->span);
	sqlite3_reset(w->span_id);
	if (rc != TERN_OK) {
		log_error("event=events_write_failed reason=\"%s\"", sqlite3_errmsg(db));
		if (!sqlite3_get_autocommit(db))
			run(w->rollback);
		*n_outbox = 0;
		if (oc) /* it may name received events the rollback undid */
			origin_clear(oc);
	}
	return rc;
}

/* Fewer events than this wait 25 ms for more: a batch is one transaction
 * (the writer takes every queued event, at most the queue's bound). */
enum { GATHER = 256 };

static void *writer_main(void *arg)
{
	pthread_setname_np(pthread_self(), "events"); /* for top -H, perf, ps -L */
	struct endpoint_filter *filters = NULL;
	size_t n_filters = 0;
	int64_t version = -2, next_prune = 0;
	struct wstmts w = {0};
	struct origin_cache *oc = calloc(1, sizeof(*oc));
	pthread_mutex_lock(&Q.lock);
	for (;;) {
		while (!Q.head && !Q.stopping) {
			if (Q.opts.retention && now_sec() >= next_prune) {
				/* Retention: at start, then hourly, in chunks between batches. */
				pthread_mutex_unlock(&Q.lock);
				int n =
				    events_prune(Q.db, now_sec() - (int64_t)Q.opts.retention, 5000);
				if (n > 0)
					log_info("event=events_pruned count=%d", n);
				next_prune = n == 5000 ? now_sec() : now_sec() + 3600;
				pthread_mutex_lock(&Q.lock);
				continue;
			}
			struct timespec dl;
			clock_gettime(CLOCK_REALTIME, &dl);
			dl.tv_sec += 60;
			pthread_cond_timedwait(&Q.wake, &Q.lock, &dl);
		}
		if (!Q.head && Q.stopping)
			break;
		if (Q.n < GATHER && !Q.stopping) {
			/* A few events: let more gather first. One commit per 25 ms at
			 * most costs far less than one per event (callgrind: a third of
			 * the writer's work was commits of one or two events). */
			pthread_mutex_unlock(&Q.lock);
			nanosleep(&(struct timespec){0, 25 * 1000 * 1000}, NULL);
			pthread_mutex_lock(&Q.lock);
		}
		/* Take every queued event and their chunks; emitters start new ones. */
		struct qev *batch = Q.head;
		struct chunk *chunks = Q.chunks;
		size_t k = Q.n;
		Q.head = Q.tail = NULL;
		Q.chunks = Q.chunk = NULL;
		Q.n = 0;
		Q.writing = true;
		pthread_mutex_unlock(&Q.lock);

		size_t n_outbox = 0;
		int64_t v = wstmts_prepare(Q.db, &w) == TERN_OK ? data_version(&w) : -1;
		if (v != version && load_filters(Q.db, &filters, &n_filters) == TERN_OK)
			version = v;
		/* without the cache (no memory) every inheritance is a SELECT */
		int rc = write_batch(Q.db, &w, oc, batch, filters, n_filters, &n_outbox);
		if (rc != TERN_OK) {
			atomic_fetch_add(&Q.dropped, k);
			log_error("event=events_dropped count=%zu reason=\"store write failed\"",
			          k);
		}
		chunks_free(chunks);
		if (n_outbox && Q.sender) /* no endpoint wants them: nothing to post */
			webhook_sender_kick(Q.sender);

		pthread_mutex_lock(&Q.lock);
		Q.writing = false;
		if (!Q.head)
			pthread_cond_broadcast(&Q.idle);
	}
	Q.writing = false;
	pthread_cond_broadcast(&Q.idle);
	pthread_mutex_unlock(&Q.lock);
	wstmts_free(&w);
	if (oc)
		origin_clear(oc);
	free(oc);
	free(filters);
	return NULL;
}

int events_start(const char *data_dir, const struct events_opts *o)
{
	char err[512];
	/* Only the writer thread uses it (events_start and events_stop run
	 * before and after it: pthread_create and pthread_join order them). */
	sqlite3 *db = db_open(data_dir, SQLITE_OPEN_NOMUTEX, err, sizeof(err));
	if (!db) {
		log_error("event=events_failed reason=\"%s\"", err);
		return TERN_EIO;
	}
	if (span_catch_up(db) != TERN_OK) {
		sqlite3_close(db);
		return TERN_EIO;
	}
	pthread_mutex_lock(&Q.lock);
	if (TERN_BUG_ON(Q.running)) {
		pthread_mutex_unlock(&Q.lock);
		sqlite3_close(db);
		return TERN_EINVAL;
	}
	Q.db = db;
	Q.opts = *o;
	Q.max = o->queue_max ? o->queue_max : 65536;
	Q.stopping = false;
	Q.running = true;
	atomic_store(&Q.live, true);
	pthread_mutex_unlock(&Q.lock);
	if (pthread_create(&Q.writer, NULL, writer_main, NULL) != 0) {
		pthread_mutex_lock(&Q.lock);
		Q.running = false;
		Q.db = NULL;
		pthread_mutex_unlock(&Q.lock);
		sqlite3_close(db);
		log_error("event=events_failed reason=\"cannot start the writer thread\"");
		return TERN_ENOMEM;
	}
	Q.sender = webhook_sender_start(data_dir, o);
	if (!Q.sender)
		log_error("event=webhooks_failed reason=\"cannot start the webhook sender\"");
	log_info("event=events_started store=%s/events.db", data_dir);
	return TERN_OK;
}

int events_start_conf(const struct tern_config *conf)
{
	struct events_opts o = {.retry_base = conf->webhooks.retry_base,
	                        .retry_max = conf->webhooks.retry_max,
	                        .retry_window = conf->webhooks.retry_window,
	                        .timeout = conf->webhooks.timeout,
	                        .retention = conf->events.retention};
	return events_start(conf->data_dir, &o);
}

bool events_flush(int timeout_ms)
{
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += timeout_ms / 1000;
	dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&Q.lock);
	int rc = 0;
	while (Q.running && (Q.head || Q.writing) && rc == 0)
		rc = pthread_cond_timedwait(&Q.idle, &Q.lock, &dl);
	bool done = !Q.head && !Q.writing;
	pthread_mutex_unlock(&Q.lock);
	return done;
}

void events_stop(void)
{
	pthread_mutex_lock(&Q.lock);
	if (!Q.running) {
		pthread_mutex_unlock(&Q.lock);
		return;
	}
	Q.stopping = true;
	atomic_store(&Q.live, false);
	pthread_cond_broadcast(&Q.wake);
	pthread_mutex_unlock(&Q.lock);
	pthread_join(Q.writer, NULL);
	webhook_sender_stop(Q.sender);
	Q.sender = NULL;
	pthread_mutex_lock(&Q.lock);
	Q.running = false;
	Q.stopping = false;
	/* the writer took every event before it ended, and their chunks */
	TERN_BUG_ON(Q.head || Q.chunks);
	chunks_free(Q.chunks);
	Q.head = Q.tail = NULL;
	Q.chunks = Q.chunk = NULL;
	Q.n = 0;
	sqlite3_close(Q.db);
	Q.db = NULL;
	pthread_mutex_unlock(&Q.lock);
	log_info("event=events_stopped dropped=%" PRIu64, atomic_load(&Q.dropped));
}

int events_prune(sqlite3 *db, int64_t before, unsigned max)
{
	sqlite3_stmt *st = NULL;
	int n = TERN_EIO;
	int64_t lo, hi;
	if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
		return TERN_EIO;
	/* the old events' ids: a walk from the first id up to hi at most */
	if (events_id_range(db, 0, before - 1, &lo, &hi) != TERN_OK ||
	    sqlite3_prepare_v2(db,
	                       "DELETE FROM events WHERE id IN (SELECT e.id FROM events e WHERE "
	                       "e.id <= ?3 AND e.time < ?1 AND NOT EXISTS (SELECT 1 FROM outbox o "
	                       "WHERE o.event = e.id AND o.done = 0) ORDER BY e.id LIMIT ?2)",
	                       -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, before);
	sqlite3_bind_int(st, 2, (int)max);
	sqlite3_bind_int64(st, 3, lo <= hi ? hi : 0);
	if (sqlite3_step(st) != SQLITE_DONE)
		goto out;
	n = sqlite3_changes(db);
	sqlite3_finalize(st);
	st = NULL;
	/* Spans wholly below the first event left name nothing. With the last
	 * events gone, their ids are given again: span_id must not claim them
	 * (a row an older tern writes there would have no span). */
	if (sqlite3_exec(db,
	                 "DELETE FROM outbox WHERE done = 1 AND event NOT IN (SELECT id FROM "
	                 "events);"
	                 "DELETE FROM events_span WHERE hi < (SELECT coalesce(min(id), "
	                 "9223372036854775807) FROM events);"
	                 "UPDATE meta SET v = min(CAST(v AS INTEGER), (SELECT coalesce(max(id), 0) "
	                 "FROM events)) WHERE k = 'span_id';",
	                 NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db, "DELETE FROM attempts WHERE time < ?", -1, &st, NULL) !=
	        SQLITE_OK) {
		n = TERN_EIO;
		goto out;
	}
	sqlite3_bind_int64(st, 1, before);
	if (sqlite3_step(st) != SQLITE_DONE)
		n = TERN_EIO;
out:
	sqlite3_finalize(st);
	if (n >= 0 && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK)
		return n;
	log_error("event=events_prune_failed reason=\"%s\"", sqlite3_errmsg(db));
	sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	return TERN_EIO;
}

/* ---- queries ---- */

static const char row_cols[] =
    "id, time, type, queue_id, message_id, sender, recipient, key, tags, metadata, reply, "
    "status, relay, next_attempt, hard";

const char *events_select_columns(void)
{
	return row_cols;
}

static void set_str(json_t *o, const char *k, const unsigned char *v)
{
	json_object_set_new(o, k, json_string(v ? (const char *)v : ""));
}

char *events_row_json(sqlite3_stmt *st, const char *node, bool envelope)
{
	char ts[TERN_RFC3339_MAX], na[TERN_RFC3339_MAX], eid[64];
	int64_t id = sqlite3_column_int64(st, 0);
	const char *type = (const char *)sqlite3_column_text(st, 2);
	tern_rfc3339(sqlite3_column_int64(st, 1), ts, sizeof(ts));
	snprintf(eid, sizeof(eid), "evt_%s_%" PRId64, node ? node : "0", id);
	json_t *d = json_object();
	if (!d)
		return NULL;
	json_object_set_new(d, "id", json_string(eid));
	json_object_set_new(d, "type", json_string(type ? type : ""));
	json_object_set_new(d, "time", json_string(ts));
	set_str(d, "queue_id", sqlite3_column_text(st, 3));
	set_str(d, "message_id", sqlite3_column_text(st, 4));
	set_str(d, "sender", sqlite3_column_text(st, 5));
	set_str(d, "recipient", sqlite3_column_text(st, 6));
	set_str(d, "key", sqlite3_column_text(st, 7));
	json_t *tags = json_array();
	const char *tg = (const char *)sqlite3_column_text(st, 8);
	while (tags && tg && *tg) {
		const char *c = strchr(tg, ',');
		size_t n = c ? (size_t)(c - tg) : strlen(tg);
		if (n)
			json_array_append_new(tags, json_stringn(tg, n));
		tg = c ? c + 1 : NULL;
	}
	json_object_set_new(d, "tags", tags ? tags : json_array());
	const char *md = (const char *)sqlite3_column_text(st, 9);
	json_t *meta = md && *md ? json_loads(md, 0, NULL) : NULL;
	json_object_set_new(d, "metadata", json_is_object(meta) ? meta : json_object());
	if (meta && !json_is_object(meta))
		json_decref(meta);
	set_str(d, "reply", sqlite3_column_text(st, 10));
	set_str(d, "status", sqlite3_column_text(st, 11));
	set_str(d, "relay", sqlite3_column_text(st, 12));
	if (type && strcmp(type, "deferred") == 0) {
		tern_rfc3339(sqlite3_column_int64(st, 13), na, sizeof(na));
		json_object_set_new(d, "next_attempt", json_string(na));
	}
	if (type && strcmp(type, "bounced") == 0)
		json_object_set_new(d, "bounce",
		                    json_string(sqlite3_column_int(st, 14) ? "hard" : "soft"));
	json_t *root = d;
	if (envelope) {
		char full[64];
		snprintf(full, sizeof(full), "message.%s", type ? type : "");
		root = json_pack("{s:s, s:s, s:o}", "type", full, "timestamp", ts, "data", d);
		if (!root)
			return NULL;
	}
	char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(root);
	return s;
}

char *events_node(sqlite3 *db)
{
	sqlite3_stmt *st = NULL;
	char *r = NULL;
	if (sqlite3_prepare_v2(db, "SELECT v FROM meta WHERE k='node'", -1, &st, NULL) ==
	        SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		r = tern_strdup((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return r;
}

/* The filters of events_query_run and events_query_tail; ?7 is theirs. */
static const char query_where[] =
    "id > ?1 AND id <= ?9 AND (?2 = '' OR type = ?2) AND"
    " (?3 = '' OR recipient = ?3 COLLATE NOCASE) AND (?4 = '' OR queue_id = ?4) AND"
    " (?5 = '' OR ',' || tags || ',' LIKE '%,' || ?5 || ',%') AND time >= ?6"
    " AND (?8 = '' OR key = ?8)";

/* Prepares sql (query_where's filters) with q's values bound, or *st NULL
 * when no event can match (since after the last one). TERN_OK or an error. */
static int query_prepare(sqlite3 *db, const struct events_query *q, const char *sql,
                         sqlite3_stmt **st)
{
	int type = -1;
	int64_t from = q->after, to = INT64_MAX, lo, hi;
	*st = NULL;
	if (q->type && *q->type && (type = events_type_parse(q->type)) < 0)
		return TERN_EINVAL;
	if (q->since > 0) { /* no index on time: the window's ids (events_id_range) */
		if (events_id_range(db, q->since, INT64_MAX, &lo, &hi) != TERN_OK)
			return TERN_EIO;
		if (lo > hi)
			return TERN_OK;
		from = lo - 1 > from ? lo - 1 : from;
		to = hi;
	}
	if (sqlite3_prepare_v2(db, sql, -1, st, NULL) != SQLITE_OK)
		return TERN_EIO;
	sqlite3_bind_int64(*st, 1, from);
	sqlite3_bind_int64(*st, 9, to);
	bind_text(*st, 2, type >= 0 ? type_names[type] : "");
	bind_text(*st, 3, q->recipient);
	bind_text(*st, 4, q->queue_id);
	bind_text(*st, 5, q->tag);
	sqlite3_bind_int64(*st, 6, q->since);
	bind_text(*st, 8, q->key);
	return TERN_OK;
}

int events_query_tail(sqlite3 *db, const struct events_query *q, unsigned n, int64_t *after)
{
	char sql[1024];
	sqlite3_stmt *st = NULL;
	struct events_query from_start = *q;
	from_start.after = 0;
	*after = 0;
	snprintf(sql, sizeof(sql),
	         "SELECT id FROM events WHERE %s ORDER BY id DESC LIMIT 1 OFFSET ?7", query_where);
	int rc = query_prepare(db, &from_start, sql, &st);
	if (rc != TERN_OK || !st)
		return rc;
	sqlite3_bind_int64(st, 7, n ? (int64_t)n - 1 : 0);
	int src = sqlite3_step(st);
	if (src == SQLITE_ROW)
		*after = sqlite3_column_int64(st, 0) - 1;
	else if (src != SQLITE_DONE)
		rc = TERN_EIO;
	sqlite3_finalize(st);
	return rc;
}

int events_query_run(sqlite3 *db, const struct events_query *q,
                     void (*cb)(void *arg, int64_t id, const char *json), void *arg,
                     int64_t *last_id)
{
	char sql[1024];
	unsigned limit = q->limit ? q->limit : 100;
	if (limit > 1000)
		limit = 1000;
	snprintf(sql, sizeof(sql), "SELECT %s FROM events WHERE %s ORDER BY id LIMIT ?7", row_cols,
	         query_where);
	sqlite3_stmt *st = NULL;
	*last_id = q->after;
	int rc = query_prepare(db, q, sql, &st);
	if (rc != TERN_OK || !st)
		return rc;
	sqlite3_bind_int(st, 7, (int)limit);
	char *node = events_node(db);
	int n = 0;
	int src;
	while ((src = sqlite3_step(st)) == SQLITE_ROW) {
		char *js = events_row_json(st, node, false);
		int64_t id = sqlite3_column_int64(st, 0);
		if (!js) {
			n = TERN_ENOMEM;
			break;
		}
		cb(arg, id, js);
		free(js);
		*last_id = id;
		n++;
	}
	if (n >= 0 && src != SQLITE_DONE && src != SQLITE_ROW)
		n = TERN_EIO;
	sqlite3_finalize(st);
	free(node);
	return n;
}

int64_t events_parse_time(const char *s, int64_t now)
{
	if (!s || !*s)
		return -1;
	size_t n = strlen(s);
	int y, mo, d, h, mi, se;
	char z;
	if (n == 20 && sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%c", &y, &mo, &d, &h, &mi, &se, &z) == 7 &&
	    z == 'Z') {
		struct tm tm = {.tm_year = y - 1900,
		                .tm_mon = mo - 1,
		                .tm_mday = d,
		                .tm_hour = h,
		                .tm_min = mi,
		                .tm_sec = se};
		return (int64_t)timegm(&tm);
	}
	char *end = NULL;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || end == s || v < 0)
		return -1;
	if (*end == '\0')
		return v;
	static const struct {
		const char *u;
		int64_t mul;
	} units[] = {{"s", 1}, {"min", 60}, {"m", 60}, {"h", 3600}, {"d", 86400}, {"w", 604800}};
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (strcmp(end, units[i].u) == 0) {
			/* an age beyond now (or beyond int64) means "since the start" */
			if (v > now / units[i].mul)
				return 0;
			return now - (int64_t)v * units[i].mul;
		}
	return -1;
}
