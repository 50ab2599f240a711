/*
 * archive.c — the message archive (archive.h): DATA/archive/index.sqlite
 * with the shared message index (msg_index.h, fed by mime/lite.h's
 * reading), the archive rows and the zstd-compressed bytes; a writer
 * thread fed by the spool's commit hook; retention; search, raw and
 * export.
 *
 * Owns: the SQLite connection (serialised by ar->mu), the writer thread and
 * its lock-free queues of locators (struct spool_ref: no message bytes),
 * the reading of DATA/archive/incoming/ (left by an older version).
 * Must never: block archive_on_commit on the writer or on SQLite, drop a
 * committed message (its spool pin is released only after the batch that
 * stores it is committed, or when the spool says it is damaged or gone),
 * build SQL from user input (search goes through capture_query.c), accept
 * an ID that is not a queue id (IDs become file names in incoming/), or
 * delete a message on hold.
 *
 * Why blobs in SQLite, not one file per message: a batch of messages is one
 * transaction and one sync, index and bytes are atomic together (no orphan
 * file, no row without bytes), and retention is a DELETE. A compressed copy
 * of a normal message is a few KiB, which SQLite stores well.
 */
#include "store/archive.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>
#include <zlib.h>
#include <zstd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/id.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/timefmt.h"
#include "mime/lite.h"
#include "mime/mime.h"
#include "store/capture_query.h"
#include "store/msg_index.h"

#define QUEUE_MAX_BYTES (64u << 20)   /* backlog past which the writer no longer defers */
#define BEHIND_LOG_BYTES (256u << 20) /* backlog worth a log line */
#define BATCH_MAX 256                 /* messages per transaction */
#define BATCH_WAIT_MS 200             /* how long a batch may fill */
#define QUIET_MS 50                   /* no commit for this long: the mail path is idle */
#define DEFER_MAX_MS 2000             /* the longest a batch waits for a quiet mail path */
#define ZSTD_LEVEL 3
#define LIST_MAX 1000         /* results per page */
#define EXPORT_MAX_MSGS 65535 /* a zip without zip64 */
#define EXPORT_MAX_BYTES (1u << 30)
#define EXPIRE_BATCH 1000
#define OUTCOMES_MAX 65536 /* results waiting for the writer */
#define WRITER_NICE 10     /* the writer thread's nice value (Linux: per thread) */

static const char *const SCHEMA = MSG_INDEX_SCHEMA
    /* one row per archived message, seq = messages.seq; id = the queue id */
    "CREATE TABLE IF NOT EXISTS archive ("
    " seq INTEGER PRIMARY KEY,"
    " direction TEXT NOT NULL,"
    " hold INTEGER NOT NULL DEFAULT 0,"
    " codec TEXT NOT NULL," /* "zstd" */
    " zsize INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS blobs (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);"
    /* remote recipients' results, by queue id (a result may come before its
     * message is written: no foreign key, joined when read) */
    "CREATE TABLE IF NOT EXISTS outcomes (queue_id TEXT NOT NULL, rcpt TEXT NOT NULL,"
    " state TEXT NOT NULL, reply TEXT NOT NULL, time INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS outcomes_queue_id ON outcomes(queue_id);";

/* A committed message the archive has not taken yet: where its record is
 * in the spool (no bytes; the spool keeps the segment for us). */
struct qitem {
	struct qitem *next;
	struct spool_ref ref;
};

struct outcome {
	struct outcome *next;
	char id[QUEUE_ID_LEN + 1];
	const char *state; /* static (rcpt_state_name) */
	int64_t time;
	char *rcpt, *reply; /* owned */
};

struct archive {
	pthread_mutex_t mu; /* db */
	sqlite3 *db;
	struct msg_index_stmts ix;
	sqlite3_stmt *st_exists, *st_arch, *st_blob; /* the insert path's (cached()) */
	ZSTD_CCtx *zc;                               /* the writer's, under mu */
	char *dir, *incoming;

	/* The queues are lock-free stacks (newest first), pushed by the spool's
	 * committer and the scheduler, taken whole by the writer: the writer
	 * runs at SCHED_IDLE and could be descheduled for long while holding a
	 * lock, so no lock is shared with the mail path. wake counts pushes that
	 * the writer should look at (the first of a batch, a full batch). */
	_Atomic(struct qitem *) qstack;
	_Atomic size_t q_bytes, q_n;
	size_t q_max;
	_Atomic(struct outcome *) ostack;
	_Atomic size_t o_n;
	sem_t wake;
	_Atomic bool closing;
	bool started;
	_Atomic(struct spool *) sp;     /* archive_catch_up's: spilled messages' files */
	_Atomic int64_t last_commit_ms; /* archive_on_commit's latest call (monotonic) */
	pthread_t thread;
	struct conf_archive conf;
	_Atomic bool incoming_dirty; /* incoming/ may hold files (an older version's) */
	_Atomic uint64_t archived, overflowed;
	_Atomic bool stopped;       /* archive_stop: the writer is gone, the spool may close */
	_Atomic bool warned_behind; /* the backlog line was logged (once per backlog) */
};

/* ---------------------------------------------------------------- helpers */

static bool id_ok(const char *id)
{
	return id && queue_id_valid(id, strlen(id)) && strlen(id) == QUEUE_ID_LEN;
}

static int exec(struct archive *ar, const char *sql)
{
	char *msg = NULL;
	if (sqlite3_exec(ar->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		log_error("event=archive_sql_failed reason=\"%s\"", msg ? msg : "?");
		sqlite3_free(msg);
		return TERN_EIO;
	}
	return TERN_OK;
}

static sqlite3_stmt *prep(struct archive *ar, const char *sql)
{
	sqlite3_stmt *s = NULL;
	if (sqlite3_prepare_v2(ar->db, sql, -1, &s, NULL) != SQLITE_OK) {
		log_error("event=archive_sql_failed reason=\"%s\"", sqlite3_errmsg(ar->db));
		sqlite3_finalize(s);
		return NULL;
	}
	return s;
}

static json_t *jstr(const char *s)
{
	json_t *j = json_string(s ? s : "");
	return j ? j : json_string("");
}

static const char *col_text(sqlite3_stmt *s, int i)
{
	const unsigned char *t = sqlite3_column_text(s, i);
	return t ? (const char *)t : "";
}

/* ----------------------------------------------------------------- opening */

int archive_open(const char *data_dir, struct archive **out, char *err, size_t errlen)
{
	*out = NULL;
	struct archive *ar = calloc(1, sizeof(*ar));
	char path[4096];
	if (!ar) {
		snprintf(err, errlen, "out of memory");
		return TERN_ENOMEM;
	}
	pthread_mutex_init(&ar->mu, NULL);
	sem_init(&ar->wake, 0, 0);
	ar->q_max = QUEUE_MAX_BYTES;
	const char *qm = getenv("TERN_TEST_ARCHIVE_QUEUE_MAX"); /* tests force the overflow */
	if (qm && *qm)
		ar->q_max = (size_t)strtoull(qm, NULL, 10);
	snprintf(path, sizeof(path), "%s/archive", data_dir);
	ar->dir = tern_strdup(path);
	snprintf(path, sizeof(path), "%s/archive/incoming", data_dir);
	ar->incoming = tern_strdup(path);
	if (!ar->dir || !ar->incoming) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if (tern_mkdir_p(ar->incoming, 0750, true, NULL) != TERN_OK) {
		snprintf(err, errlen, "cannot create %s: %s", ar->incoming, strerror(errno));
		goto fail;
	}
	snprintf(path, sizeof(path), "%s/index.sqlite", ar->dir);
	if (sqlite3_open_v2(path, &ar->db,
	                    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
	                    NULL) != SQLITE_OK) {
		snprintf(err, errlen, "cannot open %s: %s", path,
		         ar->db ? sqlite3_errmsg(ar->db) : "out of memory");
		goto fail;
	}
	/* serve's writer, its API and the CLI share the file: wait, don't fail */
	sqlite3_busy_timeout(ar->db, 10000);
	if (exec(ar, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;") != TERN_OK ||
	    exec(ar, SCHEMA) != TERN_OK) {
		snprintf(err, errlen, "cannot set up %s: %s", path, sqlite3_errmsg(ar->db));
		goto fail;
	}
	atomic_store(&ar->incoming_dirty, true); /* look once: a crash may have left some */
	*out = ar;
	return TERN_OK;
fail:
	archive_close(ar);
	return TERN_EIO;
}

/* ---------------------------------------------------------------- adding */

/* A statement of the insert path, prepared once (lock held). */
static sqlite3_stmt *cached(struct archive *ar, sqlite3_stmt **slot, const char *sql)
{
	if (!*slot && sqlite3_prepare_v3(ar->db, sql, -1, SQLITE_PREPARE_PERSISTENT, slot, NULL) !=
	                  SQLITE_OK) {
		log_error("event=archive_sql_failed reason=\"%s\"", sqlite3_errmsg(ar->db));
		sqlite3_finalize(*slot);
		*slot = NULL;
	}
	if (*slot)
		sqlite3_reset(*slot);
	return *slot;
}

/* Inside a transaction, lock held. */
static int add_locked(struct archive *ar, const char *id, int64_t created_s, const char *sender,
                      const char *const *rcpts, size_t n_rcpts, const char *direction,
                      const void *data, size_t len)
{
	int rc = TERN_EIO;
	struct mime_msg mm;
	memset(&mm, 0, sizeof(mm)); /* mime_msg_free is safe on it from here */
	void *z = NULL;
	sqlite3_stmt *s = cached(ar, &ar->st_exists, "SELECT 1 FROM messages WHERE id = ?");
	if (!s)
		return TERN_EIO;
	sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
	int st = sqlite3_step(s);
	sqlite3_reset(s);
	if (st == SQLITE_ROW)
		return TERN_EEXIST;
	size_t zcap = ZSTD_compressBound(len);
	if (!ar->zc && !(ar->zc = ZSTD_createCCtx()))
		return TERN_ENOMEM;
	if (!(z = malloc(zcap ? zcap : 1))) {
		rc = TERN_ENOMEM;
		goto out;
	}
	/* one context for every message: no tables to allocate and clear each time */
	size_t zn = ZSTD_compressCCtx(ar->zc, z, zcap, data, len, ZSTD_LEVEL);
	if (ZSTD_isError(zn)) {
		log_error("event=archive_compress_failed id=%s reason=\"%s\"", id,
		          ZSTD_getErrorName(zn));
		goto out;
	}
	/* the index's fields only, without GMime's object tree (mime/lite.h):
	 * about half of what the writer spent per message */
	if ((rc = mime_lite_parse(data, len, &mm)) != TERN_OK)
		goto out;
	int64_t seq = 0;
	if ((rc = msg_index_insert(ar->db, &ar->ix, id, len, &mm, sender, rcpts, n_rcpts,
	                           created_s * INT64_C(1000000), &seq)) != TERN_OK)
		goto out;
	rc = TERN_EIO;
	if (!(s = cached(
	          ar, &ar->st_arch,
	          "INSERT INTO archive (seq, direction, codec, zsize) VALUES (?, ?, 'zstd', ?)")))
		goto out;
	sqlite3_bind_int64(s, 1, seq);
	sqlite3_bind_text(s, 2, direction, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 3, (sqlite3_int64)zn);
	st = sqlite3_step(s);
	sqlite3_reset(s);
	if (st != SQLITE_DONE)
		goto out;
	if (!(s = cached(ar, &ar->st_blob, "INSERT INTO blobs (seq, data) VALUES (?, ?)")))
		goto out;
	sqlite3_bind_int64(s, 1, seq);
	sqlite3_bind_blob64(s, 2, z, zn, SQLITE_STATIC);
	if (sqlite3_step(s) == SQLITE_DONE)
		rc = TERN_OK;
	sqlite3_reset(s);
out:
	free(z);
	mime_msg_free(&mm);
	return rc;
}

int archive_add(struct archive *ar, const char *id, int64_t created_s, const char *sender,
                const char *const *rcpts, size_t n_rcpts, const char *direction, const void *data,
                size_t len)
{
	if (!id_ok(id))
		return TERN_EINVAL;
	pthread_mutex_lock(&ar->mu);
	int rc = exec(ar, "BEGIN IMMEDIATE");
	if (rc == TERN_OK) {
		rc = add_locked(ar, id, created_s, sender, rcpts, n_rcpts, direction, data, len);
		exec(ar, rc == TERN_OK ? "COMMIT" : "ROLLBACK");
	}
	pthread_mutex_unlock(&ar->mu);
	return rc;
}

static const char *direction_of(const struct spool_msg *m, bool *in, bool *outb)
{
	*in = *outb = false;
	for (size_t i = 0; i < m->n_rcpts; i++) {
		if (m->rcpts[i].local)
			*in = true;
		else
			*outb = true;
	}
	return *in && *outb ? "mixed" : *in ? "inbound" : "outbound";
}

/* One queued or incoming message into the open transaction. */
static int add_msg(struct archive *ar, const struct spool_msg *m, const char *data, size_t len)
{
	const char **rcpts = calloc(m->n_rcpts ? m->n_rcpts : 1, sizeof(*rcpts));
	if (!rcpts)
		return TERN_ENOMEM;
	for (size_t i = 0; i < m->n_rcpts; i++)
		rcpts[i] = m->rcpts[i].addr;
	bool in, outb;
	const char *dir = direction_of(m, &in, &outb);
	int rc = add_locked(ar, m->id, m->created, m->sender ? m->sender : "", rcpts, m->n_rcpts,
	                    dir, data, len);
	free(rcpts);
	if (rc == TERN_EEXIST)
		rc = TERN_OK; /* archived before a crash: once is enough */
	return rc;
}

/* --------------------------------------------------- incoming/ (overflow) */

/* Parses an incoming file's header from p[0..n): fills m (sender and rcpts
 * owned by m) and *body_off. TERN_ESYNTAX when it is not one. */
static int overflow_parse(const char *p, size_t n, struct spool_msg *m, size_t *body_off)
{
	const char *nl = memchr(p, '\n', n);
	if (!nl || (size_t)(nl - p) < 16 || memcmp(p, "tern-archive ", 13) != 0 ||
	    (p[13] != '1' && p[13] != '2') || p[14] != ' ')
		return TERN_ESYNTAX;
	bool tail = p[13] == '2';
	const char *q = p + 15;
	long long created = 0;
	size_t nr = 0;
	int k = 0;
	while (q < nl && *q >= '0' && *q <= '9' && k++ < 18)
		created = created * 10 + (*q++ - '0');
	if (q >= nl || *q++ != ' ')
		return TERN_ESYNTAX;
	k = 0;
	while (q < nl && *q >= '0' && *q <= '9' && k++ < 6)
		nr = nr * 10 + (size_t)(*q++ - '0');
	if (q >= nl || *q++ != ' ' || nr == 0 || nr > 100000)
		return TERN_ESYNTAX;
	for (int f = 0; tail && f < 2; f++) { /* OFF SIZE: m->spill_off, m->spill_size */
		uint64_t v = 0;
		k = 0;
		while (q < nl && *q >= '0' && *q <= '9' && k++ < 18)
			v = v * 10 + (uint64_t)(*q++ - '0');
		if (k == 0 || q >= nl || *q++ != ' ')
			return TERN_ESYNTAX;
		*(f ? &m->spill_size : &m->spill_off) = v;
	}
	if (tail && m->spill_off > m->spill_size)
		return TERN_ESYNTAX;
	m->created = created;
	m->sender = tern_strndup(q, (size_t)(nl - q));
	m->rcpts = calloc(nr, sizeof(*m->rcpts));
	if (!m->sender || !m->rcpts)
		return TERN_ENOMEM;
	const char *e = p + n;
	q = nl + 1;
	for (size_t i = 0; i < nr; i++) {
		nl = memchr(q, '\n', (size_t)(e - q));
		if (!nl || nl - q < 2 || (q[0] != '0' && q[0] != '1') || q[1] != ' ')
			return TERN_ESYNTAX;
		m->rcpts[i].local = q[0] == '1';
		if (!(m->rcpts[i].addr = tern_strndup(q + 2, (size_t)(nl - q - 2))))
			return TERN_ENOMEM;
		m->n_rcpts = i + 1;
		q = nl + 1;
	}
	*body_off = (size_t)(q - p);
	return TERN_OK;
}

/* Appends bytes off..size of the file path to out. A missing file is
 * TERN_ESYNTAX (the incoming file cannot be archived whole: left there and
 * logged, not retried in a loop); a short one TERN_EIO. */
static int read_tail(const char *path, uint64_t off, uint64_t size, struct tbuf *out)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), rc = TERN_EIO;
	if (fd < 0) {
		log_error("event=archive_tail_missing file=%s errno=%d", path, errno);
		return errno == ENOENT ? TERN_ESYNTAX : TERN_EIO;
	}
	uint64_t want = size - off;
	if (want > SIZE_MAX / 4 || (rc = tbuf_reserve(out, (size_t)want + 1)) != TERN_OK)
		goto out;
	rc = TERN_EIO;
	uint64_t got = 0;
	while (got < want) {
		ssize_t r =
		    pread(fd, out->data + out->len, (size_t)(want - got), (off_t)(off + got));
		if (r <= 0)
			break;
		out->len += (size_t)r;
		got += (uint64_t)r;
	}
	if (got == want)
		rc = TERN_OK;
	else
		log_error("event=archive_tail_short file=%s want=%llu got=%llu", path,
		          (unsigned long long)want, (unsigned long long)got);
out:
	close(fd);
	return rc;
}

/* Archives up to BATCH_MAX files of incoming/; the writer thread only. */
static void drain_incoming(struct archive *ar)
{
	if (!atomic_exchange(&ar->incoming_dirty, false))
		return;
	DIR *d = opendir(ar->incoming);
	if (!d)
		return;
	struct dirent *de;
	size_t done = 0;
	while ((de = readdir(d)) && done < BATCH_MAX) {
		size_t nl = strlen(de->d_name);
		char id[QUEUE_ID_LEN + 1], path[4400];
		if (nl != QUEUE_ID_LEN + 4 || strcmp(de->d_name + QUEUE_ID_LEN, ".msg") != 0)
			continue;
		memcpy(id, de->d_name, QUEUE_ID_LEN);
		id[QUEUE_ID_LEN] = '\0';
		if (!id_ok(id))
			continue;
		snprintf(path, sizeof(path), "%s/%s", ar->incoming, de->d_name);
		struct tbuf raw = TBUF_INIT(SIZE_MAX / 2);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		char buf[65536];
		ssize_t r = 0;
		while (fd >= 0 && (r = read(fd, buf, sizeof(buf))) > 0)
			if (tbuf_append(&raw, buf, (size_t)r) != TERN_OK)
				break;
		if (fd >= 0)
			close(fd);
		struct spool_msg m;
		memset(&m, 0, sizeof(m));
		memcpy(m.id, id, sizeof(m.id));
		size_t off = 0;
		int rc = raw.data ? overflow_parse(raw.data, raw.len, &m, &off) : TERN_EIO;
		char tpath[4400];
		snprintf(tpath, sizeof(tpath), "%s/%s.tail", ar->incoming, id);
		if (rc == TERN_OK && m.spill_size) /* SPILL: the rest from the linked file */
			rc = read_tail(tpath, m.spill_off, m.spill_size, &raw);
		if (rc == TERN_OK) {
			pthread_mutex_lock(&ar->mu);
			rc = exec(ar, "BEGIN IMMEDIATE");
			if (rc == TERN_OK) {
				rc = add_msg(ar, &m, raw.data + off, raw.len - off);
				if (exec(ar, rc == TERN_OK ? "COMMIT" : "ROLLBACK") != TERN_OK)
					rc = TERN_EIO;
			}
			pthread_mutex_unlock(&ar->mu);
		}
		free(m.sender);
		for (size_t i = 0; i < m.n_rcpts; i++)
			free(m.rcpts[i].addr);
		free(m.rcpts);
		tbuf_free(&raw);
		if (rc == TERN_OK) {
			unlink(path);
			unlink(tpath);
			atomic_fetch_add(&ar->archived, 1);
			log_info("event=archived id=%s from=incoming", id);
		} else if (rc == TERN_ESYNTAX) {
			log_error("event=archive_incoming_bad id=%s file=%s", id, path);
		} else {
			atomic_store(&ar->incoming_dirty, true); /* try again later */
		}
		done++;
	}
	closedir(d);
	if (done == BATCH_MAX)
		atomic_store(&ar->incoming_dirty, true);
}

/* ---------------------------------------------------------- catching up */

static bool archived_already(struct archive *ar, const char *id)
{
	pthread_mutex_lock(&ar->mu);
	sqlite3_stmt *s = cached(ar, &ar->st_exists, "SELECT 1 FROM messages WHERE id = ?");
	bool yes = true; /* on an error: do not add */
	if (s) {
		sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
		yes = sqlite3_step(s) == SQLITE_ROW;
		sqlite3_reset(s);
	}
	pthread_mutex_unlock(&ar->mu);
	return yes;
}

/* ----------------------------------------------------------- the writer */

static void qitem_free(struct qitem *it)
{
	free(it);
}

static bool included(const struct archive *ar, const struct spool_msg *m)
{
	bool in, outb;
	direction_of(m, &in, &outb);
	return (in && ar->conf.inbound) || (outb && ar->conf.outbound);
}

static void wake_writer(struct archive *ar)
{
	sem_post(&ar->wake);
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts); /* the vDSO's, no system call */
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool archive_want(void *arg, const struct spool_msg *m)
{
	struct archive *ar = arg;
	atomic_store_explicit(&ar->last_commit_ms, mono_ms(), memory_order_relaxed);
	return included(ar, m);
}

/* Pushes a locator for the writer (lock-free: see struct archive). */
static void push_ref(struct archive *ar, struct qitem *it)
{
	size_t bytes = atomic_fetch_add(&ar->q_bytes, it->ref.rec_len) + it->ref.rec_len;
	struct qitem *head = atomic_load(&ar->qstack);
	do
		it->next = head;
	while (!atomic_compare_exchange_weak(&ar->qstack, &head, it));
	/* the writer waits for a batch to fill (see writer_main) */
	size_t n = atomic_fetch_add(&ar->q_n, 1) + 1;
	/* two relaxed stores (one producer: the committer; the writer sets
	 * them after each batch too) */
	metric_set(M_ARCHIVE_BACKLOG_MSGS, (int64_t)n);
	metric_set(M_ARCHIVE_BACKLOG_BYTES, (int64_t)bytes);
	if (n == 1 || n == BATCH_MAX)
		wake_writer(ar);
}

void archive_on_commit(void *arg, const struct spool_ref *ref)
{
	struct archive *ar = arg;
	struct qitem *it = malloc(sizeof(*it));
	if (!it) {
		/* The pin stays (the segment is kept): the next start's
		 * catch-up archives it. Never dropped. */
		log_error("event=archive_deferred id=%s reason=nomem", ref->id);
		return;
	}
	it->ref = *ref;
	push_ref(ar, it);
}

/* At start: one record recovery pinned (queued or finished). */
struct catchup {
	struct archive *ar;
	struct spool *sp;
	size_t queued, had;
};

static void catchup_ref(void *arg, const struct spool_ref *r)
{
	struct catchup *c = arg;
	struct qitem *it;
	if (archived_already(c->ar, r->id)) {
		spool_archive_release(c->sp, r, 1);
		c->had++;
	} else if ((it = malloc(sizeof(*it)))) {
		it->ref = *r;
		push_ref(c->ar, it);
		c->queued++;
	} else {
		log_error("event=archive_deferred id=%s reason=nomem", r->id);
	}
}

size_t archive_catch_up(struct archive *ar, struct spool *sp)
{
	struct catchup c = {.ar = ar, .sp = sp};
	atomic_store(&ar->sp, sp);
	spool_archive_recovered(sp, catchup_ref, &c);
	log_info("event=archive_caught_up queued=%zu archived_before=%zu", c.queued, c.had);
	return c.queued;
}

static void outcome_free(struct outcome *o)
{
	free(o->rcpt);
	free(o->reply);
	free(o);
}

void archive_on_result(void *arg, const struct spool_msg *m, size_t idx, enum rcpt_state st,
                       const char *reply)
{
	struct archive *ar = arg;
	if (!ar->conf.outbound || idx >= m->n_rcpts || m->rcpts[idx].local)
		return;
	struct outcome *o = calloc(1, sizeof(*o));
	if (o) {
		memcpy(o->id, m->id, sizeof(o->id));
		o->state = rcpt_state_name(st);
		o->time = (int64_t)time(NULL);
		o->rcpt = tern_strdup(m->rcpts[idx].addr ? m->rcpts[idx].addr : "");
		o->reply = tern_strdup(reply ? reply : "");
	}
	if (!o || !o->rcpt || !o->reply || !o->state) {
		if (o)
			outcome_free(o);
		log_error("event=archive_outcome_dropped id=%s reason=nomem", m->id);
		return;
	}
	/* several scheduler threads may push: the bound is approximate */
	if (atomic_load(&ar->closing) || atomic_fetch_add(&ar->o_n, 1) >= OUTCOMES_MAX) {
		log_warn("event=archive_outcome_dropped id=%s reason=queue_full", m->id);
		outcome_free(o);
		return;
	}
	struct outcome *head = atomic_load(&ar->ostack);
	do
		o->next = head;
	while (!atomic_compare_exchange_weak(&ar->ostack, &head, o));
	wake_writer(ar);
}

/* The writer: every queued result in one transaction. */
static void write_outcomes(struct archive *ar, struct outcome *list)
{
	pthread_mutex_lock(&ar->mu);
	int rc = exec(ar, "BEGIN IMMEDIATE");
	bool began = rc == TERN_OK;
	sqlite3_stmt *s = rc == TERN_OK ? prep(ar, "INSERT INTO outcomes (queue_id, rcpt, state, "
	                                           "reply, time) VALUES (?, ?, ?, ?, ?)")
	                                : NULL;
	if (rc == TERN_OK && !s)
		rc = TERN_EIO;
	for (struct outcome *o = list; rc == TERN_OK && o; o = o->next) {
		sqlite3_reset(s);
		sqlite3_bind_text(s, 1, o->id, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 2, o->rcpt, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 3, o->state, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 4, o->reply, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 5, o->time);
		if (sqlite3_step(s) != SQLITE_DONE)
			rc = TERN_EIO;
	}
	sqlite3_finalize(s);
	if (rc == TERN_OK)
		rc = exec(ar, "COMMIT");
	else if (began)
		exec(ar, "ROLLBACK");
	pthread_mutex_unlock(&ar->mu);
	if (rc != TERN_OK)
		log_error("event=archive_outcomes_failed err=%s", tern_strerror(rc));
	while (list) {
		struct outcome *nx = list->next;
		outcome_free(list);
		list = nx;
	}
}

#ifndef NDEBUG
/* Fault point (debug builds, like the spool's: TERN_TEST_FAULT=archive_commit
 * or archive_commit:N): the writer stops for good before its Nth batch's
 * SQLite commit, so a test can kill -9 with messages read but not kept. */
static void fault_commit(void)
{
	static atomic_uint hits;
	const char *v = getenv("TERN_TEST_FAULT");
	size_t n = strlen("archive_commit");
	if (!v || strncmp(v, "archive_commit", n) != 0 || (v[n] && v[n] != ':'))
		return;
	unsigned long after = v[n] == ':' ? strtoul(v + n + 1, NULL, 10) : 1;
	if (atomic_fetch_add(&hits, 1) + 1 < after)
		return;
	log_error("event=fault_point point=archive_commit");
	for (;;)
		pause();
}
#else
static void fault_commit(void)
{
}
#endif

/* Reads each message of the batch from the spool and stores them in one
 * transaction. Returns TERN_OK when every record is dealt with (archived,
 * excluded, or gone and logged): then their pins may go. */
static int write_batch(struct archive *ar, struct qitem *batch)
{
	struct spool *sp = atomic_load(&ar->sp);
	struct tbuf data = TBUF_INIT(SIZE_MAX / 2);
	pthread_mutex_lock(&ar->mu);
	int rc = exec(ar, "BEGIN IMMEDIATE");
	size_t n = 0;
	for (struct qitem *it = batch; rc == TERN_OK && it; it = it->next, n++) {
		struct spool_msg *m = NULL;
		data.len = 0;
		int r = spool_archive_read(sp, &it->ref, &m, &data);
		if (r == TERN_ENOMEM) {
			rc = r;
		} else if (r != TERN_OK) {
			/* damaged or gone: the spool logged it; nothing to keep */
			log_error("event=archive_read_failed id=%s seg=%" PRIu32 " err=%s",
			          it->ref.id, it->ref.seg, tern_strerror(r));
		} else if (included(ar, m)) {
			rc = add_msg(ar, m, data.data ? data.data : "", data.len);
			if (rc == TERN_OK)
				log_info("event=archived id=%s size=%zu", m->id, data.len);
		}
		spool_msg_free(m);
	}
	tbuf_free(&data);
	if (rc == TERN_OK) {
		fault_commit();
		rc = exec(ar, "COMMIT");
	} else {
		exec(ar, "ROLLBACK");
	}
	pthread_mutex_unlock(&ar->mu);
	if (rc != TERN_OK)
		log_error("event=archive_batch_failed messages=%zu err=%s action=\"kept in the "
		          "spool, retried\"",
		          n, tern_strerror(rc));
	else
		atomic_fetch_add(&ar->archived, n);
	return rc;
}

/* The spool may let go of what the batch held. */
static void release_batch(struct archive *ar, struct qitem *batch)
{
	struct spool_ref v[BATCH_MAX];
	size_t n = 0;
	for (struct qitem *it = batch; it; it = it->next) {
		v[n++] = it->ref;
		if (n == BATCH_MAX || !it->next) {
			spool_archive_release(atomic_load(&ar->sp), v, n);
			n = 0;
		}
	}
}

/*
 * The backlog bound: what the writer has not stored is kept by the spool
 * (pinned segments), so a writer that cannot keep up, or a broken archive
 * DB, grows the spool, within the spool's own disk limits (a full disk
 * refuses new mail with 452, it never drops archived mail). It is shown
 * (tern_archive_backlog_messages/bytes) and logged once past
 * BEHIND_LOG_BYTES, again when it is gone.
 */
static void backlog_update(struct archive *ar)
{
	size_t n = atomic_load(&ar->q_n), bytes = atomic_load(&ar->q_bytes);
	metric_set(M_ARCHIVE_BACKLOG_MSGS, (int64_t)n);
	metric_set(M_ARCHIVE_BACKLOG_BYTES, (int64_t)bytes);
	if (bytes >= BEHIND_LOG_BYTES && !atomic_exchange(&ar->warned_behind, true))
		log_warn("event=archive_behind messages=%zu bytes=%zu action=\"kept in the spool "
		         "until archived\"",
		         n, bytes);
	else if (n == 0 && atomic_exchange(&ar->warned_behind, false))
		log_info("event=archive_behind_cleared");
}

static uint32_t expire_every(uint32_t retention)
{
	uint32_t t = retention / 2;
	return t < 1 ? 1 : t > 60 ? 60 : t;
}

/* deadline = now + ms on CLOCK_REALTIME (what sem_timedwait takes) */
static struct timespec deadline_in(long ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

/*
 * Below the mail path: SCHED_IDLE (Linux, per thread) runs the writer only
 * on CPU time that no normal thread wants, so at saturation the accept and
 * delivery threads are not slowed by it (nice 10 still took about a tenth
 * of a core from them); the queue, then incoming/, absorb the backlog and
 * the writer catches up when the burst ends. Its disk writes get the idle
 * I/O class too (where the I/O scheduler has classes). Best effort: nice
 * 10 when SCHED_IDLE is refused.
 */
static void below_mail_path(void)
{
#ifdef SCHED_IDLE
	struct sched_param sp = {.sched_priority = 0};
	if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp) == 0)
		goto io;
#endif
	if (setpriority(PRIO_PROCESS, (id_t)gettid(), WRITER_NICE) != 0)
		log_warn("event=archive_nice_failed errno=%d", errno);
#ifdef SCHED_IDLE
io:
#endif
#ifdef SYS_ioprio_set
	/* IOPRIO_WHO_PROCESS (1) of this thread, class IOPRIO_CLASS_IDLE (3) */
	(void)syscall(SYS_ioprio_set, 1, (int)gettid(), 3 << 13);
#endif
}

/* The stack taken whole, in push order (oldest first). */
static struct qitem *take_messages(struct archive *ar)
{
	struct qitem *it = atomic_exchange(&ar->qstack, NULL), *fifo = NULL;
	while (it) {
		struct qitem *nx = it->next;
		it->next = fifo;
		fifo = it;
		it = nx;
	}
	return fifo;
}

static struct outcome *take_outcomes(struct archive *ar)
{
	struct outcome *o = atomic_exchange(&ar->ostack, NULL), *fifo = NULL;
	size_t n = 0;
	while (o) {
		struct outcome *nx = o->next;
		o->next = fifo;
		fifo = o;
		o = nx;
		n++;
	}
	atomic_fetch_sub(&ar->o_n, n);
	return fifo;
}

/*
 * Index later: while mail is being accepted (a commit in the last
 * QUIET_MS) and the backlog is under three quarters of the queue, the
 * writer waits, so a burst is accepted with the archive's work after it,
 * not beside it (even at SCHED_IDLE the writer would take the cores' idle
 * moments between the mail path's syncs, and its caches and disk writes).
 * Past that backlog, or after DEFER_MAX_MS of waiting (so a steady stream
 * of mail is archived within seconds: a copy only in memory is lost to a
 * kill -9 once its message is delivered), it writes a batch anyway, below
 * the mail path.
 */
static bool mail_busy(struct archive *ar)
{
	return atomic_load(&ar->q_bytes) < ar->q_max / 4 * 3 &&
	       mono_ms() - atomic_load_explicit(&ar->last_commit_ms, memory_order_relaxed) <
	           QUIET_MS;
}

static void *writer_main(void *arg)
{
	pthread_setname_np(pthread_self(), "archive"); /* for top -H, perf, ps -L */
	struct archive *ar = arg;
	below_mail_path();
	time_t next_expire = time(NULL);
	struct qitem *pending = NULL, *ptail = NULL; /* taken, not yet written (FIFO) */
	for (;;) {
		while (!pending && !atomic_load(&ar->qstack) && !atomic_load(&ar->ostack) &&
		       !atomic_load(&ar->closing) && !atomic_load(&ar->incoming_dirty) &&
		       !(ar->conf.retention && time(NULL) >= next_expire)) {
			struct timespec ts = deadline_in(1000);
			sem_timedwait(&ar->wake, &ts);
		}
		/* Let a batch fill for up to BATCH_WAIT_MS: one transaction, and
		 * so one sync, per batch instead of per few messages, which would
		 * compete with the spool's syncs for the disk. */
		if (!pending && atomic_load(&ar->qstack) && !atomic_load(&ar->closing) &&
		    atomic_load(&ar->q_n) < BATCH_MAX) {
			struct timespec dl = deadline_in(BATCH_WAIT_MS);
			while (!atomic_load(&ar->closing) && atomic_load(&ar->q_n) < BATCH_MAX &&
			       sem_timedwait(&ar->wake, &dl) == 0)
				;
		}
		for (int64_t since = mono_ms(); !atomic_load(&ar->closing) && mail_busy(ar) &&
		                                mono_ms() - since < DEFER_MAX_MS;) {
			struct timespec dl = deadline_in(QUIET_MS);
			sem_timedwait(&ar->wake, &dl);
		}
		bool closing = atomic_load(&ar->closing);
		struct qitem *taken = take_messages(ar);
		if (taken) {
			if (ptail)
				ptail->next = taken;
			else
				pending = taken;
			for (ptail = taken; ptail->next; ptail = ptail->next)
				;
		}
		bool had = pending != NULL;
		if (pending) { /* up to BATCH_MAX messages per transaction */
			struct qitem *batch = pending, *last = pending;
			size_t n = 1, bytes = pending->ref.rec_len;
			while (last->next && n < BATCH_MAX) {
				last = last->next;
				bytes += last->ref.rec_len;
				n++;
			}
			pending = last->next;
			if (!pending)
				ptail = NULL;
			last->next = NULL;
			if (write_batch(ar, batch) != TERN_OK) {
				/* The archive DB failed (disk full?): the pins keep
				 * the messages in the spool; try again in a second,
				 * oldest first. Never dropped. */
				last->next = pending;
				pending = batch;
				if (!ptail)
					ptail = last;
				if (closing)
					break;
				struct timespec dl = deadline_in(1000);
				sem_timedwait(&ar->wake, &dl);
				continue;
			}
			release_batch(ar, batch);
			while (batch) {
				struct qitem *nx = batch->next;
				qitem_free(batch);
				batch = nx;
			}
			atomic_fetch_sub(&ar->q_bytes, bytes);
			atomic_fetch_sub(&ar->q_n, n);
		}
		backlog_update(ar);
		struct outcome *outs = take_outcomes(ar); /* after their messages */
		if (outs)
			write_outcomes(ar, outs);
		if (had)
			continue; /* the next batch (the quiet check first) */
		drain_incoming(ar);
		if (ar->conf.retention && time(NULL) >= next_expire) {
			size_t removed = 0;
			archive_expire(ar, (int64_t)time(NULL), ar->conf.retention, &removed);
			next_expire = time(NULL) + expire_every(ar->conf.retention);
		}
		if (closing && !atomic_load(&ar->qstack) && !atomic_load(&ar->ostack))
			break;
	}
	/* Only after a failed batch at close: the pins stay with the process,
	 * the records stay in the spool, the next start's catch-up takes them. */
	while (pending) {
		struct qitem *nx = pending->next;
		qitem_free(pending);
		pending = nx;
	}
	return NULL;
}

/* At start, before the hook can write there: what a crash left half-made
 * in incoming/ — an ID.tmp (killed while overflow_write wrote it) and an
 * ID.tail whose ID.msg was never written. Their messages, if still queued,
 * are archived by archive_catch_up from the spool. */
static void sweep_incoming(struct archive *ar)
{
	DIR *d = opendir(ar->incoming);
	if (!d)
		return;
	struct dirent *de;
	size_t removed = 0;
	while ((de = readdir(d))) {
		size_t nl = strlen(de->d_name);
		char path[4400];
		bool tmp = nl == QUEUE_ID_LEN + 4 && strcmp(de->d_name + QUEUE_ID_LEN, ".tmp") == 0;
		bool tail =
		    nl == QUEUE_ID_LEN + 5 && strcmp(de->d_name + QUEUE_ID_LEN, ".tail") == 0;
		if (!tmp && !tail)
			continue;
		if (tail) {
			snprintf(path, sizeof(path), "%s/%.*s.msg", ar->incoming, (int)QUEUE_ID_LEN,
			         de->d_name);
			if (access(path, F_OK) == 0)
				continue; /* its message is waiting: drain_incoming takes both */
		}
		snprintf(path, sizeof(path), "%s/%s", ar->incoming, de->d_name);
		if (unlink(path) == 0)
			removed++;
	}
	closedir(d);
	if (removed)
		log_info("event=archive_incoming_swept files=%zu", removed);
}

int archive_start(struct archive *ar, const struct conf_archive *c)
{
	ar->conf = *c;
#ifndef NDEBUG
	const char *fv = getenv("TERN_TEST_FAULT");
	if (fv && strncmp(fv, "archive_commit", strlen("archive_commit")) == 0)
		log_warn("event=fault_armed point=archive_commit value=%.32s", fv);
#endif
	sweep_incoming(ar);
	if (pthread_create(&ar->thread, NULL, writer_main, ar) != 0)
		return TERN_EIO;
	ar->started = true;
	log_info("event=archive_started dir=%s retention=%us inbound=%d outbound=%d", ar->dir,
	         (unsigned)c->retention, c->inbound, c->outbound);
	return TERN_OK;
}

void archive_stop(struct archive *ar)
{
	if (!ar || !ar->started || atomic_exchange(&ar->stopped, true))
		return;
	atomic_store(&ar->closing, true);
	wake_writer(ar);
	pthread_join(ar->thread, NULL);
}

void archive_close(struct archive *ar)
{
	if (!ar)
		return;
	archive_stop(ar);
	struct outcome *o = take_outcomes(ar); /* only if the writer never ran */
	while (o) {
		struct outcome *nx = o->next;
		outcome_free(o);
		o = nx;
	}
	struct qitem *it = take_messages(ar); /* only if the writer never ran */
	while (it) {
		struct qitem *nx = it->next;
		qitem_free(it);
		it = nx;
	}
	msg_index_stmts_free(&ar->ix);
	sqlite3_finalize(ar->st_exists);
	sqlite3_finalize(ar->st_arch);
	sqlite3_finalize(ar->st_blob);
	ZSTD_freeCCtx(ar->zc);
	if (ar->db)
		sqlite3_close(ar->db);
	pthread_mutex_destroy(&ar->mu);
	sem_destroy(&ar->wake);
	free(ar->dir);
	free(ar->incoming);
	free(ar);
}

void archive_counts(struct archive *ar, uint64_t *archived, uint64_t *overflowed)
{
	*archived = atomic_load(&ar->archived);
	*overflowed = atomic_load(&ar->overflowed);
}

/* ------------------------------------------------------------- retention */

int archive_expire(struct archive *ar, int64_t now_s, uint32_t retention_s, size_t *removed)
{
	*removed = 0;
	if (retention_s == 0)
		return TERN_OK;
	int64_t cut = (now_s - (int64_t)retention_s) * INT64_C(1000000);
	int64_t seqs[EXPIRE_BATCH];
	size_t n = 0;
	pthread_mutex_lock(&ar->mu);
	/* Select and delete in one write transaction: a hold set meanwhile by
	 * another connection (the CLI, the API) is either seen or waits. */
	int rc = exec(ar, "BEGIN IMMEDIATE");
	if (rc != TERN_OK)
		goto out;
	rc = TERN_EIO;
	sqlite3_stmt *s = prep(ar, "SELECT m.seq FROM messages m JOIN archive a ON a.seq = m.seq "
	                           "WHERE a.hold = 0 AND m.created < ? LIMIT ?");
	if (s) {
		sqlite3_bind_int64(s, 1, cut);
		sqlite3_bind_int(s, 2, EXPIRE_BATCH);
		while (n < EXPIRE_BATCH && sqlite3_step(s) == SQLITE_ROW)
			seqs[n++] = sqlite3_column_int64(s, 0);
		sqlite3_finalize(s);
		rc = TERN_OK;
	}
	static const char *const del[] = {
	    "DELETE FROM outcomes WHERE queue_id = (SELECT id FROM messages WHERE seq = ?)",
	    "DELETE FROM archive WHERE seq = ?", "DELETE FROM blobs WHERE seq = ?"};
	for (size_t i = 0; i < n && rc == TERN_OK; i++) {
		for (size_t k = 0; k < 3 && rc == TERN_OK; k++) {
			sqlite3_stmt *d = prep(ar, del[k]);
			if (!d) {
				rc = TERN_EIO;
				break;
			}
			sqlite3_bind_int64(d, 1, seqs[i]);
			if (sqlite3_step(d) != SQLITE_DONE)
				rc = TERN_EIO;
			sqlite3_finalize(d);
		}
		if (rc == TERN_OK) /* last: the first delete reads messages */
			rc = msg_index_delete(ar->db, seqs[i]);
	}
	if (rc == TERN_OK)
		rc = exec(ar, "COMMIT");
	else
		exec(ar, "ROLLBACK");
	if (rc == TERN_OK)
		*removed = n;
out:
	pthread_mutex_unlock(&ar->mu);
	if (*removed)
		log_info("event=archive_expired messages=%zu retention=%us", *removed,
		         (unsigned)retention_s);
	return rc;
}

/* ---------------------------------------------------------------- reading */

static void bind_params(sqlite3_stmt *s, const struct capture_query *q)
{
	for (size_t i = 0; i < q->n_params; i++) {
		if (q->params[i].kind == CQ_TEXT)
			sqlite3_bind_text(s, (int)i + 1, q->params[i].text, -1, SQLITE_STATIC);
		else
			sqlite3_bind_int64(s, (int)i + 1, q->params[i].i);
	}
}

static int parse_query(const char *query, struct capture_query *q)
{
	memset(q, 0, sizeof(*q));
	if (!query)
		query = "";
	int rc = capture_query_parse(query, strlen(query), q);
	return rc;
}

#define LIST_COLS                                                                                  \
	"m.id, m.message_id, m.from_name, m.from_addr, m.addrs, m.subject, m.created, m.size, "    \
	"a.direction, a.hold, m.snippet, m.env_from, m.env_to, "                                   \
	"(SELECT json_group_array(json_object('Recipient', o.rcpt, 'State', o.state, 'Reply', "    \
	"o.reply, 'Time', o.time)) FROM outcomes o WHERE o.queue_id = m.id)"

static json_t *summary_from_row(sqlite3_stmt *s)
{
	char created[TERN_RFC3339_MAX];
	tern_rfc3339_ms(sqlite3_column_int64(s, 6), created, sizeof(created));
	json_t *addrs = json_loads(col_text(s, 4), 0, NULL);
	json_t *envto = json_loads(col_text(s, 12), 0, NULL);
	json_t *to = addrs ? json_incref(json_object_get(addrs, "To")) : NULL;
	json_decref(addrs);
	json_t *outs = json_loads(col_text(s, 13), 0, NULL);
	json_t *o;
	size_t i;
	json_array_foreach(outs, i, o)
	{ /* unix seconds -> RFC 3339, as Created */
		char t[TERN_RFC3339_MAX];
		tern_rfc3339_ms((int64_t)json_integer_value(json_object_get(o, "Time")) * 1000000,
		                t, sizeof(t));
		json_object_set_new(o, "Time", json_string(t));
	}
	return json_pack("{s:o,s:o,s:{s:o,s:o},s:o,s:o,s:s,s:I,s:o,s:b,s:o,s:o,s:o,s:o}", "ID",
	                 jstr(col_text(s, 0)), "MessageID", jstr(col_text(s, 1)), "From", "Name",
	                 jstr(col_text(s, 2)), "Address", jstr(col_text(s, 3)), "To",
	                 to ? to : json_array(), "Subject", jstr(col_text(s, 5)), "Created",
	                 created, "Size", (json_int_t)sqlite3_column_int64(s, 7), "Direction",
	                 jstr(col_text(s, 8)), "Hold", sqlite3_column_int(s, 9) != 0, "Snippet",
	                 jstr(col_text(s, 10)), "EnvelopeFrom", jstr(col_text(s, 11)), "EnvelopeTo",
	                 envto ? envto : json_array(), "Outcomes", outs ? outs : json_array());
}

json_t *archive_search(struct archive *ar, const char *query, size_t start, size_t limit, int *err)
{
	struct capture_query q;
	json_t *res = NULL, *msgs = json_array();
	struct tbuf sql = TBUF_INIT(1 << 20);
	sqlite3_stmt *s = NULL;
	int64_t total = 0, matched = 0;
	*err = parse_query(query, &q);
	if (*err != TERN_OK)
		goto out2;
	*err = TERN_EIO;
	if (limit == 0)
		limit = 50;
	if (limit > LIST_MAX)
		limit = LIST_MAX;
	if (start > INT32_MAX)
		start = INT32_MAX;
	pthread_mutex_lock(&ar->mu);
	if (!(s = prep(ar, "SELECT COUNT(*) FROM archive")))
		goto out;
	if (sqlite3_step(s) == SQLITE_ROW)
		total = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	tbuf_printf(&sql,
	            "SELECT COUNT(*) FROM messages m JOIN archive a ON a.seq = m.seq WHERE %s",
	            q.where.data);
	if (!(s = prep(ar, sql.data)))
		goto out;
	bind_params(s, &q);
	if (sqlite3_step(s) == SQLITE_ROW)
		matched = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	tbuf_reset(&sql);
	tbuf_printf(&sql,
	            "SELECT " LIST_COLS " FROM messages m JOIN archive a ON a.seq = m.seq "
	            "WHERE %s ORDER BY m.created DESC, m.seq DESC LIMIT ? OFFSET ?",
	            q.where.data);
	if (!(s = prep(ar, sql.data)))
		goto out;
	bind_params(s, &q);
	sqlite3_bind_int64(s, (int)q.n_params + 1, (sqlite3_int64)limit);
	sqlite3_bind_int64(s, (int)q.n_params + 2, (sqlite3_int64)start);
	while (msgs && sqlite3_step(s) == SQLITE_ROW)
		json_array_append_new(msgs, summary_from_row(s));
	if (!msgs)
		goto out;
	res = json_pack("{s:I,s:I,s:I,s:I,s:o}", "total", (json_int_t)total, "messages_count",
	                (json_int_t)matched, "start", (json_int_t)start, "count",
	                (json_int_t)json_array_size(msgs), "messages", msgs);
	msgs = NULL;
	*err = res ? TERN_OK : TERN_ENOMEM;
out:
	pthread_mutex_unlock(&ar->mu);
	sqlite3_finalize(s);
out2:
	tbuf_free(&sql);
	json_decref(msgs);
	capture_query_free(&q);
	return res;
}

/* Lock held: the original bytes of seq appended to out; dz: a context to
 * reuse (an export's), or NULL for a one-off. */
static int raw_locked(struct archive *ar, int64_t seq, int64_t size, struct tbuf *out,
                      ZSTD_DCtx *dz)
{
	int rc = TERN_EIO;
	sqlite3_stmt *s = prep(ar, "SELECT data FROM blobs WHERE seq = ?");
	if (!s)
		return TERN_EIO;
	sqlite3_bind_int64(s, 1, seq);
	if (sqlite3_step(s) != SQLITE_ROW) {
		rc = TERN_ENOTFOUND;
		goto out;
	}
	const void *z = sqlite3_column_blob(s, 0);
	size_t zn = (size_t)sqlite3_column_bytes(s, 0);
	unsigned long long want = ZSTD_getFrameContentSize(z, zn);
	if (want == ZSTD_CONTENTSIZE_ERROR || want == ZSTD_CONTENTSIZE_UNKNOWN ||
	    want != (unsigned long long)size) {
		rc = TERN_ECORRUPT;
		goto out;
	}
	if ((rc = tbuf_reserve(out, (size_t)want + 1)) != TERN_OK)
		goto out;
	size_t got = dz ? ZSTD_decompressDCtx(dz, out->data + out->len, (size_t)want, z, zn)
	                : ZSTD_decompress(out->data + out->len, (size_t)want, z, zn);
	if (ZSTD_isError(got) || got != want) {
		rc = TERN_ECORRUPT;
		goto out;
	}
	out->len += got;
	rc = TERN_OK;
out:
	sqlite3_finalize(s);
	return rc;
}

int archive_raw(struct archive *ar, const char *id, struct tbuf *out)
{
	if (!id_ok(id))
		return TERN_EINVAL;
	int rc = TERN_ENOTFOUND;
	pthread_mutex_lock(&ar->mu);
	sqlite3_stmt *s = prep(ar, "SELECT seq, size FROM messages WHERE id = ?");
	if (!s) {
		rc = TERN_EIO;
	} else {
		sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
		if (sqlite3_step(s) == SQLITE_ROW)
			rc = raw_locked(ar, sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 1),
			                out, NULL);
		sqlite3_finalize(s);
	}
	pthread_mutex_unlock(&ar->mu);
	return rc;
}

int archive_set_hold(struct archive *ar, const char *id, bool hold)
{
	if (!id_ok(id))
		return TERN_EINVAL;
	int rc = TERN_EIO;
	pthread_mutex_lock(&ar->mu);
	sqlite3_stmt *s = prep(ar, "UPDATE archive SET hold = ? WHERE seq = "
	                           "(SELECT seq FROM messages WHERE id = ?)");
	if (s) {
		sqlite3_bind_int(s, 1, hold ? 1 : 0);
		sqlite3_bind_text(s, 2, id, -1, SQLITE_STATIC);
		if (sqlite3_step(s) == SQLITE_DONE)
			rc = sqlite3_changes(ar->db) ? TERN_OK : TERN_ENOTFOUND;
		sqlite3_finalize(s);
	}
	pthread_mutex_unlock(&ar->mu);
	if (rc == TERN_OK)
		log_info("event=archive_%s id=%s", hold ? "hold" : "release", id);
	return rc;
}

/* ----------------------------------------------------------------- export */

bool archive_format_parse(const char *s, size_t n, enum archive_format *out)
{
	if (n == 4 && memcmp(s, "mbox", 4) == 0) {
		*out = ARCHIVE_MBOX;
		return true;
	}
	if (n == 3 && memcmp(s, "zip", 3) == 0) {
		*out = ARCHIVE_ZIP;
		return true;
	}
	return false;
}

int archive_mboxrd_quote(const char *data, size_t n, struct tbuf *out)
{
	int rc = TERN_OK;
	size_t i = 0;
	while (i < n && rc == TERN_OK) {
		const char *nl = memchr(data + i, '\n', n - i);
		size_t end = nl ? (size_t)(nl - data) + 1 : n;
		size_t j = i;
		while (j < end && data[j] == '>')
			j++;
		if (end - j >= 5 && memcmp(data + j, "From ", 5) == 0)
			rc = tbuf_append(out, ">", 1);
		if (rc == TERN_OK)
			rc = tbuf_append(out, data + i, end - i);
		i = end;
	}
	if (rc == TERN_OK && (n == 0 || data[n - 1] != '\n'))
		rc = tbuf_append(out, "\n", 1);
	return rc;
}

/*
 * Where an export goes: sink->out, and with fd >= 0 on to the file in
 * chunks of EXPORT_CHUNK (so an export to a file holds about one chunk
 * and one message in memory, whatever its size). off() is the offset in
 * the whole export (a zip's local headers need it).
 */
struct xsink {
	struct tbuf *out;
	int fd;           /* -1: everything stays in out */
	uint64_t flushed; /* bytes already written to fd */
	uint64_t max;     /* the export's size limit */
};

#define EXPORT_CHUNK (256u << 10)

static uint64_t sink_off(const struct xsink *s)
{
	return s->flushed + s->out->len;
}

static int sink_put(struct xsink *s, const void *p, size_t n)
{
	if (n > s->max || sink_off(s) > s->max - n)
		return TERN_ELIMIT;
	return tbuf_append(s->out, p, n);
}

static int sink_flush(struct xsink *s, bool all)
{
	if (s->fd < 0 || (!all && s->out->len < EXPORT_CHUNK) || s->out->len == 0)
		return TERN_OK;
	if (tern_write_full(s->fd, s->out->data, s->out->len) != TERN_OK) {
		log_error("event=archive_export_write_failed errno=%d", errno);
		return TERN_EIO;
	}
	s->flushed += s->out->len;
	tbuf_reset(s->out);
	return TERN_OK;
}

static void put16(unsigned char **p, unsigned v)
{
	(*p)[0] = (unsigned char)(v & 0xff);
	(*p)[1] = (unsigned char)((v >> 8) & 0xff);
	*p += 2;
}

static void put32(unsigned char **p, uint32_t v)
{
	put16(p, v & 0xffff);
	put16(p, v >> 16);
}

struct zent {
	char name[QUEUE_ID_LEN + 5];
	uint32_t crc, size, off;
	unsigned dtime, ddate;
};

static void dos_time(int64_t us, unsigned *t, unsigned *d)
{
	time_t secs = (time_t)(us / 1000000);
	struct tm tm;
	gmtime_r(&secs, &tm);
	if (tm.tm_year < 80) {
		*t = 0;
		*d = (1 << 5) | 1; /* 1980-01-01 */
		return;
	}
	*t = (unsigned)(tm.tm_hour << 11 | tm.tm_min << 5 | tm.tm_sec / 2);
	*d = (unsigned)((tm.tm_year - 80) << 9 | (tm.tm_mon + 1) << 5 | tm.tm_mday);
}

/* One stored entry: local header + data. */
static int zip_add(struct xsink *s, struct zent *z, const struct tbuf *raw)
{
	if (sink_off(s) > UINT32_MAX || raw->len > UINT32_MAX)
		return TERN_ELIMIT;
	z->off = (uint32_t)sink_off(s);
	z->size = (uint32_t)raw->len;
	z->crc = (uint32_t)crc32(0L, (const Bytef *)raw->data, (uInt)raw->len);
	unsigned char h[30], *p = h;
	put32(&p, 0x04034b50);
	put16(&p, 10); /* version needed: 1.0 (stored) */
	put16(&p, 0);  /* flags */
	put16(&p, 0);  /* method: stored, so the bytes are the original ones */
	put16(&p, z->dtime);
	put16(&p, z->ddate);
	put32(&p, z->crc);
	put32(&p, z->size);
	put32(&p, z->size);
	put16(&p, (unsigned)strlen(z->name));
	put16(&p, 0);
	int rc = sink_put(s, h, sizeof(h));
	if (rc == TERN_OK)
		rc = sink_put(s, z->name, strlen(z->name));
	return rc == TERN_OK ? sink_put(s, raw->data, raw->len) : rc;
}

static int zip_finish(struct xsink *s, const struct zent *z, size_t n)
{
	if (sink_off(s) > UINT32_MAX)
		return TERN_ELIMIT;
	uint32_t cd = (uint32_t)sink_off(s);
	int rc = TERN_OK;
	for (size_t i = 0; i < n && rc == TERN_OK; i++) {
		unsigned char h[46], *p = h;
		put32(&p, 0x02014b50);
		put16(&p, 20); /* made by */
		put16(&p, 10);
		put16(&p, 0);
		put16(&p, 0);
		put16(&p, z[i].dtime);
		put16(&p, z[i].ddate);
		put32(&p, z[i].crc);
		put32(&p, z[i].size);
		put32(&p, z[i].size);
		put16(&p, (unsigned)strlen(z[i].name));
		put16(&p, 0); /* extra */
		put16(&p, 0); /* comment */
		put16(&p, 0); /* disk */
		put16(&p, 0); /* internal attributes */
		put32(&p, 0); /* external attributes */
		put32(&p, z[i].off);
		rc = sink_put(s, h, sizeof(h));
		if (rc == TERN_OK)
			rc = sink_put(s, z[i].name, strlen(z[i].name));
		if (rc == TERN_OK)
			rc = sink_flush(s, false);
	}
	if (rc != TERN_OK)
		return rc;
	if (sink_off(s) > UINT32_MAX)
		return TERN_ELIMIT;
	uint32_t cdlen = (uint32_t)sink_off(s) - cd;
	unsigned char e[22], *p = e;
	put32(&p, 0x06054b50);
	put16(&p, 0);
	put16(&p, 0);
	put16(&p, (unsigned)n);
	put16(&p, (unsigned)n);
	put32(&p, cdlen);
	put32(&p, cd);
	put16(&p, 0); /* comment length */
	return sink_put(s, e, sizeof(e));
}

static int export_run(struct archive *ar, const char *query, enum archive_format f,
                      struct xsink *sink, size_t *count)
{
	struct capture_query q;
	struct tbuf sql = TBUF_INIT(1 << 20), raw = TBUF_INIT(SIZE_MAX / 2);
	struct zent *z = NULL;
	size_t n = 0;
	sqlite3_stmt *s = NULL;
	ZSTD_DCtx *dz = ZSTD_createDCtx(); /* one for every message: no allocation each */
	*count = 0;
	int rc = parse_query(query, &q);
	if (rc != TERN_OK)
		goto out2;
	if (!dz) {
		rc = TERN_ENOMEM;
		goto out2;
	}
	pthread_mutex_lock(&ar->mu);
	tbuf_printf(&sql,
	            "SELECT m.seq, m.size, m.id, m.env_from, m.created FROM messages m JOIN "
	            "archive a ON a.seq = m.seq WHERE %s ORDER BY m.created, m.seq LIMIT %d",
	            q.where.data, EXPORT_MAX_MSGS + 1);
	rc = TERN_EIO;
	if (!(s = prep(ar, sql.data)))
		goto out;
	bind_params(s, &q);
	if (f == ARCHIVE_ZIP && !(z = calloc(EXPORT_MAX_MSGS, sizeof(*z)))) {
		rc = TERN_ENOMEM;
		goto out;
	}
	rc = TERN_OK;
	int st;
	while (rc == TERN_OK && (st = sqlite3_step(s)) == SQLITE_ROW) {
		if (n == EXPORT_MAX_MSGS) {
			rc = TERN_ELIMIT;
			break;
		}
		tbuf_reset(&raw);
		int64_t created = sqlite3_column_int64(s, 4);
		rc = raw_locked(ar, sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 1), &raw,
		                dz);
		if (rc != TERN_OK)
			break;
		if (f == ARCHIVE_ZIP) {
			snprintf(z[n].name, sizeof(z[n].name), "%s.eml", col_text(s, 2));
			dos_time(created, &z[n].dtime, &z[n].ddate);
			rc = zip_add(sink, &z[n], &raw);
		} else {
			char when[64], line[1200];
			time_t t = (time_t)(created / 1000000);
			struct tm tm;
			gmtime_r(&t, &tm);
			strftime(when, sizeof(when), "%a %b %e %H:%M:%S %Y", &tm);
			const char *from = col_text(s, 3);
			int ln = snprintf(line, sizeof(line), "From %s %s\n",
			                  *from && !strpbrk(from, " \t\r\n") && strlen(from) < 1000
			                      ? from
			                      : "MAILER-DAEMON",
			                  when);
			rc = sink_put(sink, line, (size_t)ln);
			if (rc == TERN_OK)
				rc = archive_mboxrd_quote(raw.data, raw.len, sink->out);
			if (rc == TERN_OK && sink_off(sink) > sink->max)
				rc = TERN_ELIMIT;
			if (rc == TERN_OK)
				rc = sink_put(sink, "\n", 1);
		}
		if (rc == TERN_OK)
			rc = sink_flush(sink, false);
		n++;
	}
	if (rc == TERN_OK && f == ARCHIVE_ZIP)
		rc = zip_finish(sink, z, n);
	if (rc == TERN_OK && sink_off(sink) == 0 && f == ARCHIVE_MBOX && sink->fd < 0)
		rc = tbuf_reserve(sink->out, 1); /* an empty mbox is still a file */
	if (rc == TERN_OK)
		rc = sink_flush(sink, true);
	*count = n;
out:
	pthread_mutex_unlock(&ar->mu);
	sqlite3_finalize(s);
out2:
	ZSTD_freeDCtx(dz);
	free(z);
	tbuf_free(&raw);
	tbuf_free(&sql);
	capture_query_free(&q);
	return rc;
}

int archive_export(struct archive *ar, const char *query, enum archive_format f, struct tbuf *out,
                   size_t *count)
{
	struct xsink s = {
	    .out = out, .fd = -1, .max = out->max < EXPORT_MAX_BYTES ? out->max : EXPORT_MAX_BYTES};
	return export_run(ar, query, f, &s, count);
}

int archive_export_fd(struct archive *ar, const char *query, enum archive_format f, int fd,
                      uint64_t *bytes, size_t *count)
{
	struct tbuf chunk = TBUF_INIT(SIZE_MAX / 2);
	struct xsink s = {.out = &chunk, .fd = fd, .max = EXPORT_MAX_BYTES};
	int rc = export_run(ar, query, f, &s, count);
	*bytes = s.flushed;
	tbuf_free(&chunk);
	return rc;
}

int archive_tmpfile(struct archive *ar)
{
	int fd = open(ar->dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0)
		return fd;
	char path[4200];
	snprintf(path, sizeof(path), "%s/export-XXXXXX", ar->dir);
	fd = mkostemp(path, O_CLOEXEC);
	if (fd >= 0)
		unlink(path); /* only the descriptor: nothing to clean up after a crash */
	return fd;
}
