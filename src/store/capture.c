/*
 * capture.c — the capture store (store.h): raw messages as files under
 * DIR/msg/XX/ID.eml, metadata, recipients, tags and a full-text index in
 * SQLite (DIR/capture.db), and the Mailpit-shaped JSON answers.
 *
 * Owns: the one SQLite connection (serialised by st->mu), the message
 * files, the in-memory counters (total, unread, raw bytes) and the list of
 * subscribers.
 * Must never: build SQL from user input (search goes through
 * capture_query.c, everything else is bound), accept an ID that is not
 * plain base62 (IDs become file names), call a subscriber while holding
 * the lock (a subscriber may call back into the store), or report a
 * message stored before its raw bytes are on disk.
 *
 * Durability: a message up to RAW_IN_DB_MAX keeps its bytes in the raw
 * table, inserted in the same transaction as its row; SQLite runs in WAL
 * mode with synchronous = FULL, so that COMMIT is durable when it returns
 * (one WAL sync per transaction, and a capture batch is one transaction).
 * With batch sync on, an add's transaction commits with synchronous =
 * NORMAL instead (no sync at COMMIT) and capture_sync() makes it durable
 * with one fdatasync of the WAL file: every frame committed before that
 * sync is in the WAL (or, after a checkpoint, which syncs both files, in
 * the database). So the next batch can be inserted while the last one
 * syncs (group commit, capture mode's ingest).
 * A larger message is written to a temp name, fsync'd, renamed to ID.eml
 * and its directory fsync'd (core/fsutil; with batch sync: by the next
 * capture_sync) before the add counts as done. Such files are the source
 * of truth: the database records a "clean" flag that is cleared while
 * open; after an unclean stop capture_open re-indexes every ID.eml that
 * has no row (losing only the SMTP envelope of those messages, which is
 * then taken from the headers).
 * Deletes remove rows first and files after the commit, so a crash can
 * resurrect a deleted message but never lose a stored one.
 */
#include "store/capture_tags.h"
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/id.h"
#include "core/log.h"
#include "core/timefmt.h"
#include "mime/mime.h"
#include "store/capture_query.h"
#include "store/msg_index.h"

#define SCHEMA_VERSION 3 /* 2: messages.username; 3: raw (small messages' bytes) */
/* Messages up to this size keep their bytes in the database (table raw), in
 * the same transaction as their row: no file to create per message, which
 * is what capped capture at ~1,000 messages/s. Larger ones get a file. */
#define RAW_IN_DB_MAX (256 * 1024)
#define ID_LEN 22
#define MAX_SUBS 16
#define MAX_LIST 100000 /* messages per page */
#define MAX_TAG_LEN 100

struct sub {
	capture_event_fn fn;
	void *arg;
};

/* Statements of the insert path, prepared once (prep_cached). */
enum { QC_SUMMARY, QC_SPOOL_ID, QC_LINK, QC_USERNAME, QC_INSERT_RAW, QC_READ_RAW, QC_N };

struct capture_store {
	pthread_mutex_t mu;
	sqlite3 *db;
	sqlite3_stmt *cached[QC_N]; /* owned; finalized by capture_close */
	struct msg_index_stmts ix;  /* the index inserts (msg_index.c); closed with it */
	char *dir;
	_Atomic bool batch_sync; /* capture_sync() makes adds durable, not each add */
	/* A large message's file was written without sync since the last
	 * capture_sync (batch sync); sync_mu serialises the syncs. */
	_Atomic bool files_unsynced;
	/* A batch-sync add committed without a WAL sync since the last
	 * capture_sync. */
	_Atomic bool rows_unsynced;
	pthread_mutex_t sync_mu;
	uint64_t total, unread, raw_bytes;
	uint64_t deleted; /* messages deleted since open, for /api/v1/info */
	struct sub subs[MAX_SUBS];
	size_t n_subs;
};

/* A pending event, sent after the lock is released. */
struct event {
	const char *type;
	json_t *data;
};

/* The index tables are msg_index.h's (shared with the archive). */
static const char *const SCHEMA = MSG_INDEX_SCHEMA
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    /* the bytes of messages up to RAW_IN_DB_MAX (larger ones: msg/XX/ID.eml) */
    "CREATE TABLE IF NOT EXISTS raw (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);"
    /* spool queue id -> capture id: a redelivery after a crash finds its copy */
    "CREATE TABLE IF NOT EXISTS spool_ids (queue_id TEXT PRIMARY KEY, id TEXT NOT NULL)"
    " WITHOUT ROWID;";

#define SUMMARY_COLS                                                                               \
	"m.id, m.message_id, m.read, m.from_name, m.from_addr, m.addrs, m.subject, m.created, "    \
	"m.size, m.attachments, m.snippet, "                                                       \
	"(SELECT json_group_array(name) FROM (SELECT t.name AS name FROM message_tags mt JOIN "    \
	"tags t ON t.id = mt.tag WHERE mt.msg = m.seq ORDER BY t.name COLLATE NOCASE)), "          \
	"m.username"

/* ---------------------------------------------------------------- helpers */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	if (!err || !errlen)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* IDs become file names: only plain base62 of sane length is accepted. */
static bool id_valid(const char *id)
{
	if (!id)
		return false;
	size_t n = 0;
	for (; id[n]; n++) {
		char c = id[n];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
			return false;
		if (n + 1 >= CAPTURE_ID_MAX)
			return false;
	}
	return n >= 2;
}

static int new_id(char out[CAPTURE_ID_MAX])
{
	static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
	size_t have = 0;
	while (have < ID_LEN) {
		unsigned char r[32];
		ssize_t got = getrandom(r, sizeof(r), 0);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			return TERN_EIO;
		}
		/* rejection sampling: 248 = 4 * 62, so no character is favoured */
		for (ssize_t i = 0; i < got && have < ID_LEN; i++)
			if (r[i] < 248)
				out[have++] = b62[r[i] % 62];
	}
	out[have] = '\0';
	return TERN_OK;
}

static void msg_path(const struct capture_store *st, const char *id, const char *ext, char *buf,
                     size_t len)
{
	snprintf(buf, len, "%s/msg/%.2s/%s%s", st->dir, id, id, ext);
}

/* msg/XX/ID.eml written atomically (core/fsutil). With batch_sync the
 * fsyncs are left to capture_sync(), which syncs the whole filesystem once
 * per delivery batch; otherwise the file, its directory and a new XX/ are
 * synced before this returns. */
static int write_raw(struct capture_store *st, const char *id, const char *raw, size_t len)
{
	char dir[4096], fin[4200];
	bool per_message = !atomic_load(&st->batch_sync);
	struct tern_write_opts o = {
	    .mode = 0600, .uid = (uid_t)-1, .gid = (gid_t)-1, .no_sync = !per_message};

	snprintf(dir, sizeof(dir), "%s/msg/%.2s", st->dir, id);
	int rc = tern_mkdir_p(dir, 0700, per_message, NULL);
	if (rc != TERN_OK)
		return rc;
	msg_path(st, id, ".eml", fin, sizeof(fin));
	rc = tern_write_file_atomic(fin, raw, len, &o);
	if (rc == TERN_OK && !per_message)
		atomic_store(&st->files_unsynced, true); /* only after the write completed */
	return rc;
}

static int read_raw_file(struct capture_store *st, const char *id, struct tbuf *out)
{
	char path[4200];
	msg_path(st, id, ".eml", path, sizeof(path));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? TERN_ENOTFOUND : TERN_EIO;
	int rc = TERN_OK;
	char chunk[65536];
	for (;;) {
		ssize_t r = read(fd, chunk, sizeof(chunk));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			rc = TERN_EIO;
			break;
		}
		if (r == 0)
			break;
		rc = tbuf_append(out, chunk, (size_t)r);
		if (rc != TERN_OK)
			break;
	}
	close(fd);
	return rc;
}

static sqlite3_stmt *prep_cached(struct capture_store *st, int slot, const char *sql);

/* A message's bytes: from the raw table (small messages), else its file.
 * Takes the lock for the table; never call it with the lock held. */
static int read_raw(struct capture_store *st, const char *id, struct tbuf *out)
{
	int rc = TERN_ENOTFOUND;
	pthread_mutex_lock(&st->mu);
	sqlite3_stmt *q = prep_cached(st, QC_READ_RAW,
	                              "SELECT r.data FROM raw r JOIN messages m "
	                              "ON m.seq = r.seq WHERE m.id = ?");
	if (q) {
		sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
		if (sqlite3_step(q) == SQLITE_ROW) {
			const void *b = sqlite3_column_blob(q, 0);
			int n = sqlite3_column_bytes(q, 0);
			rc = n > 0 ? tbuf_append(out, b, (size_t)n) : TERN_OK;
		}
		sqlite3_reset(q);
	}
	pthread_mutex_unlock(&st->mu);
	if (rc == TERN_ENOTFOUND)
		rc = read_raw_file(st, id, out);
	return rc;
}

/* json_string that never fails on odd bytes (the store only holds UTF-8,
 * but a NULL here would silently drop a field). */
static json_t *jstr(const char *s)
{
	json_t *j = json_string(s ? s : "");
	return j ? j : json_string("");
}

static json_t *addr_json(const char *name, const char *addr)
{
	return json_pack("{s:o,s:o}", "Name", jstr(name), "Address", jstr(addr));
}

static json_t *addrs_json(const struct mime_addrs *a)
{
	json_t *arr = json_array();
	for (size_t i = 0; arr && i < a->n; i++)
		json_array_append_new(arr, addr_json(a->v[i].name, a->v[i].addr));
	return arr;
}

static const char *col_text(sqlite3_stmt *s, int i)
{
	const unsigned char *t = sqlite3_column_text(s, i);
	return t ? (const char *)t : "";
}

static json_t *json_col(sqlite3_stmt *s, int i, size_t flags_is_array)
{
	json_t *j = json_loads(col_text(s, i), JSON_DECODE_ANY, NULL);
	if (!j)
		j = flags_is_array ? json_array() : json_object();
	return j;
}

/* One MessageSummary from a SUMMARY_COLS row. */
static json_t *summary_from_row(sqlite3_stmt *s)
{
	char created[TERN_RFC3339_MAX];
	tern_rfc3339_ms(sqlite3_column_int64(s, 7), created, sizeof(created));
	json_t *addrs = json_col(s, 5, 0);
	json_t *o = json_object();
	if (!o) {
		json_decref(addrs);
		return NULL;
	}
	json_object_set_new(o, "ID", jstr(col_text(s, 0)));
	json_object_set_new(o, "MessageID", jstr(col_text(s, 1)));
	json_object_set_new(o, "Read", json_boolean(sqlite3_column_int(s, 2) != 0));
	json_object_set_new(o, "From", addr_json(col_text(s, 3), col_text(s, 4)));
	static const char *const keys[] = {"To", "Cc", "Bcc", "ReplyTo"};
	for (size_t i = 0; i < 4; i++) {
		json_t *a = json_object_get(addrs, keys[i]);
		json_object_set_new(o, keys[i], json_is_array(a) ? json_incref(a) : json_array());
	}
	json_object_set_new(o, "Subject", jstr(col_text(s, 6)));
	json_object_set_new(o, "Created", jstr(created));
	json_object_set_new(o, "Username", jstr(col_text(s, 12)));
	json_object_set_new(o, "Tags", json_col(s, 11, 1));
	json_object_set_new(o, "Size", json_integer(sqlite3_column_int64(s, 8)));
	json_object_set_new(o, "Attachments", json_integer(sqlite3_column_int64(s, 9)));
	json_object_set_new(o, "Snippet", jstr(col_text(s, 10)));
	json_decref(addrs);
	return o;
}

/* ----------------------------------------------------------- SQL helpers */

static int exec(struct capture_store *st, const char *sql)
{
	char *msg = NULL;
	int rc = sqlite3_exec(st->db, sql, NULL, NULL, &msg);
	if (rc != SQLITE_OK) {
		char q[256];
		log_error("event=capture_sql_error error=%s",
		          log_quote(msg ? msg : "?", msg ? strlen(msg) : 1, q, sizeof(q)));
		sqlite3_free(msg);
		return TERN_EIO;
	}
	return TERN_OK;
}

static sqlite3_stmt *prep(struct capture_store *st, const char *sql)
{
	sqlite3_stmt *s = NULL;
	if (sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) != SQLITE_OK) {
		char q[256];
		const char *m = sqlite3_errmsg(st->db);
		log_error("event=capture_sql_error error=%s",
		          log_quote(m, strlen(m), q, sizeof(q)));
		return NULL;
	}
	return s;
}

/*
 * A statement of the insert path (lock held): prepared on first use and
 * kept, so a batch of thousands of messages does not parse the same SQL
 * thousands of times. Returned reset and unbound; the caller must not
 * finalize it and must sqlite3_reset it when done (a pending step would
 * keep a read transaction open).
 */
static sqlite3_stmt *prep_cached(struct capture_store *st, int slot, const char *sql)
{
	sqlite3_stmt *s = st->cached[slot];
	if (s) {
		sqlite3_reset(s);
		sqlite3_clear_bindings(s);
		return s;
	}
	if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, NULL) != SQLITE_OK) {
		char q[256];
		const char *m = sqlite3_errmsg(st->db);
		log_error("event=capture_sql_error error=%s",
		          log_quote(m, strlen(m), q, sizeof(q)));
		return NULL;
	}
	st->cached[slot] = s;
	return s;
}

static int64_t scalar_i64(struct capture_store *st, const char *sql)
{
	sqlite3_stmt *s = prep(st, sql);
	int64_t v = 0;
	if (s && sqlite3_step(s) == SQLITE_ROW)
		v = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	return v;
}

static void recount(struct capture_store *st)
{
	st->total = (uint64_t)scalar_i64(st, "SELECT COUNT(*) FROM messages");
	st->unread = (uint64_t)scalar_i64(st, "SELECT COUNT(*) FROM messages WHERE read = 0");
	st->raw_bytes = (uint64_t)scalar_i64(st, "SELECT COALESCE(SUM(size), 0) FROM messages");
}

/* seq of an ID (or of the newest message for "latest", as Mailpit allows);
 * 0 if none. Called with the lock held. */
static int64_t seq_of(struct capture_store *st, const char *id, char real_id[CAPTURE_ID_MAX])
{
	sqlite3_stmt *s;
	if (id && strcmp(id, "latest") == 0)
		s = prep(st,
		         "SELECT seq, id FROM messages ORDER BY created DESC, seq DESC LIMIT 1");
	else {
		if (!id_valid(id))
			return 0;
		s = prep(st, "SELECT seq, id FROM messages WHERE id = ?");
		if (s)
			sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
	}
	int64_t seq = 0;
	if (s && sqlite3_step(s) == SQLITE_ROW) {
		seq = sqlite3_column_int64(s, 0);
		if (real_id)
			tern_strlcpy(real_id, col_text(s, 1), CAPTURE_ID_MAX);
	}
	sqlite3_finalize(s);
	return seq;
}

static void emit(struct capture_store *st, struct event *ev)
{
	if (!ev->data)
		return;
	struct sub subs[MAX_SUBS];
	size_t n;
	pthread_mutex_lock(&st->mu);
	n = st->n_subs;
	memcpy(subs, st->subs, n * sizeof(subs[0]));
	pthread_mutex_unlock(&st->mu);
	for (size_t i = 0; i < n; i++)
		subs[i].fn(subs[i].arg, ev->type, ev->data);
	json_decref(ev->data);
	ev->data = NULL;
}

/* ------------------------------------------------------------- inserting */

static json_t *summary_by_seq(struct capture_store *st, int64_t seq)
{
	sqlite3_stmt *s =
	    prep_cached(st, QC_SUMMARY, "SELECT " SUMMARY_COLS " FROM messages m WHERE m.seq = ?");
	json_t *o = NULL;
	if (s) {
		sqlite3_bind_int64(s, 1, seq);
		if (sqlite3_step(s) == SQLITE_ROW)
			o = summary_from_row(s);
		sqlite3_reset(s);
	}
	return o;
}

uint64_t capture_deleted(struct capture_store *st)
{
	pthread_mutex_lock(&st->mu);
	uint64_t n = st->deleted;
	pthread_mutex_unlock(&st->mu);
	return n;
}

/* WAL frames between the automatic checkpoints of a batch-sync store. Each
 * checkpoint runs inside a COMMIT, on the ingest's committer and under the
 * store lock, and syncs both files: ~10 ms on this project's test disk,
 * every ~130 messages of 4 KiB at SQLite's default of 1,000 frames. Four
 * times the interval writes back fewer distinct pages per message (the
 * same index pages are rewritten by every batch) and pays the two syncs a
 * quarter as often; the WAL file stays under ~16 MB (4,000 frames). */
void capture_set_batch_sync(struct capture_store *st, bool on)
{
	atomic_store(&st->batch_sync, on);
	pthread_mutex_lock(&st->mu);
	exec(st, on ? "PRAGMA wal_autocheckpoint = 4000" : "PRAGMA wal_autocheckpoint = 1000");
	pthread_mutex_unlock(&st->mu);
}

/* fdatasync of DIR/capture.db-wal (any descriptor of the file will do:
 * the sync is of the file's data, whoever wrote it). */
static int sync_wal(struct capture_store *st)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/capture.db-wal", st->dir);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return TERN_EIO;
	int rc = fdatasync(fd) == 0 ? TERN_OK : TERN_EIO;
	close(fd);
	return rc;
}

int capture_sync(struct capture_store *st)
{
	/* Rows (and the bytes of messages in the raw table) are durable when
	 * their COMMIT returns (synchronous = FULL: one WAL sync per
	 * transaction, so per batch). What is left are the files of large
	 * messages written since the last call: one syncfs covers them all.
	 * sync_mu is held across the syncfs so that a caller finding the flag
	 * clear knows the sync that cleared it has finished. */
	int rc = TERN_OK;
	pthread_mutex_lock(&st->sync_mu);
	if (atomic_exchange(&st->rows_unsynced, false) && (rc = sync_wal(st)) != TERN_OK)
		atomic_store(&st->rows_unsynced, true); /* the next caller tries again */
	if (rc == TERN_OK && atomic_exchange(&st->files_unsynced, false)) {
		int fd = open(st->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		rc = fd >= 0 && syncfs(fd) == 0 ? TERN_OK : TERN_EIO;
		if (fd >= 0)
			close(fd);
		if (rc != TERN_OK)
			atomic_store(&st->files_unsynced, true); /* the next caller tries again */
	}
	pthread_mutex_unlock(&st->sync_mu);
	return rc;
}

static int link_queue_id(struct capture_store *st, const char *queue_id, const char *id);

/* The capture ID a spool message was already caught as (lock held). */
static bool lookup_queue_id(struct capture_store *st, const char *queue_id,
                            char id_out[CAPTURE_ID_MAX])
{
	sqlite3_stmt *q = prep_cached(st, QC_SPOOL_ID,
	                              "SELECT s.id FROM spool_ids s JOIN messages m ON m.id = s.id "
	                              "WHERE s.queue_id = ?");
	bool found = false;
	if (q) {
		sqlite3_bind_text(q, 1, queue_id, -1, SQLITE_STATIC);
		if (sqlite3_step(q) == SQLITE_ROW) {
			const char *id = (const char *)sqlite3_column_text(q, 0);
			if (id && strlen(id) < CAPTURE_ID_MAX) {
				memcpy(id_out, id, strlen(id) + 1);
				found = true;
			}
		}
		sqlite3_reset(q);
	}
	return found;
}

/* The tags a message gets on arrival (store/capture_tags.h), linked to
 * its row (lock held, inside its transaction). */
static int insert_auto_tags(struct capture_store *st, int64_t seq, const struct capture_item *it,
                            const struct mime_msg *mm)
{
	struct capture_tag_set ts;
	capture_tags_derive(mm, it->raw, it->len, it->env_to, it->n_to, capture_tags_rules(), &ts);
	if (ts.n == 0)
		return TERN_OK;
	sqlite3_stmt *ins = prep(st, "INSERT OR IGNORE INTO tags (name) VALUES (?)");
	sqlite3_stmt *link = prep(st, "INSERT OR IGNORE INTO message_tags (msg, tag) "
	                              "SELECT ?, id FROM tags WHERE name = ?");
	int rc = ins && link ? TERN_OK : TERN_EIO;
	for (size_t i = 0; i < ts.n && rc == TERN_OK; i++) {
		sqlite3_bind_text(ins, 1, ts.v[i], -1, SQLITE_STATIC);
		sqlite3_bind_int64(link, 1, seq);
		sqlite3_bind_text(link, 2, ts.v[i], -1, SQLITE_STATIC);
		if (sqlite3_step(ins) != SQLITE_DONE || sqlite3_step(link) != SQLITE_DONE)
			rc = TERN_EIO;
		sqlite3_reset(ins);
		sqlite3_reset(link);
	}
	sqlite3_finalize(ins);
	sqlite3_finalize(link);
	return rc;
}

/* Inserts one parsed message inside the batch transaction (lock held).
 * With savepoint, a failure rolls back only this message; without, the
 * caller must roll back the whole transaction on a failure. */
static int insert_one(struct capture_store *st, const struct capture_item *it,
                      const struct mime_msg *mm, int64_t *seq, bool savepoint)
{
	if (savepoint && exec(st, "SAVEPOINT one") != TERN_OK)
		return TERN_EIO;
	int rc = msg_index_insert(st->db, &st->ix, it->id, it->len, mm, it->env_from, it->env_to,
	                          it->n_to, now_us(), seq);
	if (rc == TERN_OK && it->username && *it->username) {
		sqlite3_stmt *up =
		    prep_cached(st, QC_USERNAME, "UPDATE messages SET username = ? WHERE seq = ?");
		rc = TERN_EIO;
		if (up) {
			sqlite3_bind_text(up, 1, it->username, -1, SQLITE_STATIC);
			sqlite3_bind_int64(up, 2, *seq);
			if (sqlite3_step(up) == SQLITE_DONE)
				rc = TERN_OK;
			sqlite3_reset(up);
		}
	}
	if (rc == TERN_OK)
		rc = insert_auto_tags(st, *seq, it, mm);
	if (rc == TERN_OK && it->len <= RAW_IN_DB_MAX) {
		sqlite3_stmt *ins =
		    prep_cached(st, QC_INSERT_RAW, "INSERT INTO raw (seq, data) VALUES (?, ?)");
		rc = TERN_EIO;
		if (ins) {
			sqlite3_bind_int64(ins, 1, *seq);
			sqlite3_bind_blob(ins, 2, it->raw ? it->raw : "", (int)it->len,
			                  SQLITE_STATIC);
			if (sqlite3_step(ins) == SQLITE_DONE)
				rc = TERN_OK;
			sqlite3_reset(ins);
		}
	}
	if (rc == TERN_OK && it->queue_id)
		rc = link_queue_id(st, it->queue_id, it->id);
	if (!savepoint)
		return rc;
	if (rc != TERN_OK)
		exec(st, "ROLLBACK TO one");
	exec(st, "RELEASE one");
	return rc;
}

static void unlink_raw(struct capture_store *st, const char *id)
{
	char path[4200];
	msg_path(st, id, ".eml", path, sizeof(path));
	unlink(path);
}

int capture_add_batch(struct capture_store *st, struct capture_item *items, size_t n)
{
	if (n == 0)
		return TERN_OK;
	struct mime_msg *mm = calloc(n, sizeof(*mm));
	int64_t *seq = calloc(n, sizeof(*seq));
	/* what happened to each: 0 nothing yet, 1 parsed, 2 written, 3 inserted, 4 found */
	unsigned char *step = calloc(n, 1);
	struct event *ev = calloc(n, sizeof(*ev));
	int rc = TERN_OK;
	for (size_t i = 0; i < n; i++) {
		items[i].rc = TERN_ENOMEM;
		items[i].id[0] = '\0';
		items[i].seq = 0;
	}
	if (!mm || !seq || !step || !ev) {
		rc = TERN_ENOMEM;
		goto out;
	}

	/* 1. Already caught? (A redelivery after a crash: keep one copy.) */
	pthread_mutex_lock(&st->mu);
	for (size_t i = 0; i < n; i++)
		if (items[i].queue_id && lookup_queue_id(st, items[i].queue_id, items[i].id)) {
			items[i].rc = TERN_OK;
			step[i] = 4;
		}
	pthread_mutex_unlock(&st->mu);

	/* 2. Parse and write the raw files without the lock: the slow part. */
	for (size_t i = 0; i < n; i++) {
		struct capture_item *it = &items[i];
		if (step[i])
			continue;
		it->rc = new_id(it->id);
		if (it->rc == TERN_OK)
			it->rc = mime_parse(it->raw, it->len, 0, &mm[i]);
		if (it->rc != TERN_OK)
			continue;
		step[i] = 1;
		/* small ones go into the raw table with their row (insert_one) */
		it->rc =
		    it->len <= RAW_IN_DB_MAX ? TERN_OK : write_raw(st, it->id, it->raw, it->len);
		if (it->rc == TERN_OK)
			step[i] = 2;
	}

	/* 3. Every row in one transaction: one WAL commit for the batch. First
	 * without a savepoint per message (FTS5 writes an index segment at each
	 * savepoint: one per message instead of one per batch); if a message
	 * fails, the batch is redone with savepoints so that it fails alone. */
	pthread_mutex_lock(&st->mu);
	/* batch sync: COMMIT without a sync, capture_sync syncs the WAL */
	bool deferred = atomic_load(&st->batch_sync);
	if (deferred)
		exec(st, "PRAGMA synchronous = NORMAL");
	bool savepoints = false;
redo:;
	int trc = exec(st, "BEGIN IMMEDIATE");
	size_t inserted = 0;
	for (size_t i = 0; trc == TERN_OK && i < n; i++) {
		struct capture_item *it = &items[i];
		if (step[i] != 2)
			continue;
		char found[CAPTURE_ID_MAX];
		if (it->queue_id && lookup_queue_id(st, it->queue_id, found)) {
			/* another thread caught it meanwhile */
			unlink_raw(st, it->id);
			memcpy(it->id, found, sizeof(found));
			it->rc = TERN_OK;
			step[i] = 4;
			continue;
		}
		it->rc = insert_one(st, it, &mm[i], &seq[i], savepoints);
		if (it->rc == TERN_OK) {
			step[i] = 3;
			inserted++;
		} else if (!savepoints) {
			exec(st, "ROLLBACK");
			for (size_t k = 0; k < n; k++)
				if (step[k] == 3)
					step[k] = 2; /* rolled back: inserted again below */
			savepoints = true;
			goto redo;
		}
	}
	/* Mappings of deleted messages are dead weight: sweep now and then. */
	if (trc == TERN_OK && inserted && st->total / 4096 != (st->total + inserted) / 4096)
		exec(st, "DELETE FROM spool_ids WHERE id NOT IN (SELECT id FROM messages)");
	if (trc == TERN_OK)
		trc = exec(st, "COMMIT");
	if (deferred) {
		exec(st, "PRAGMA synchronous = FULL");  /* other writes stay durable at COMMIT */
		atomic_store(&st->rows_unsynced, true); /* also after a failure: harmless */
	}
	if (trc != TERN_OK) {
		exec(st, "ROLLBACK");
		for (size_t i = 0; i < n; i++)
			if (step[i] == 3 || step[i] == 2) {
				items[i].rc = trc;
				step[i] = 2; /* its file goes below */
			}
	} else {
		for (size_t i = 0; i < n; i++) {
			if (step[i] != 3)
				continue;
			st->total++;
			st->unread++;
			st->raw_bytes += items[i].len;
			items[i].seq = seq[i];
			ev[i].type = "new";
			if (st->n_subs && !items[i].announce_later)
				ev[i].data = summary_by_seq(st, seq[i]);
		}
	}
	pthread_mutex_unlock(&st->mu);
	for (size_t i = 0; i < n; i++) {
		if (step[i] == 2)
			unlink_raw(st, items[i].id); /* written, never listed */
		if (items[i].rc != TERN_OK)
			items[i].id[0] = '\0';
		emit(st, &ev[i]);
	}
out:
	if (mm)
		for (size_t i = 0; i < n; i++)
			mime_msg_free(&mm[i]); /* safe on a zeroed one */
	free(mm);
	free(seq);
	free(step);
	free(ev);
	return rc;
}

void capture_announce(struct capture_store *st, const struct capture_item *items, size_t n)
{
	struct event *ev = calloc(n ? n : 1, sizeof(*ev));
	if (!ev)
		return; /* the live view misses them; the list has them */
	pthread_mutex_lock(&st->mu);
	for (size_t i = 0; st->n_subs && i < n; i++) {
		ev[i].type = "new";
		if (items[i].rc == TERN_OK && items[i].seq > 0)
			ev[i].data = summary_by_seq(st, items[i].seq); /* NULL: deleted meanwhile */
	}
	pthread_mutex_unlock(&st->mu);
	for (size_t i = 0; i < n; i++)
		emit(st, &ev[i]);
	free(ev);
}

static int add_one(struct capture_store *st, const char *queue_id, const char *username,
                   const char *raw, size_t len, const char *env_from, const char *const *env_to,
                   size_t n_to, char id_out[CAPTURE_ID_MAX])
{
	struct capture_item it = {.queue_id = queue_id,
	                          .username = username,
	                          .raw = raw,
	                          .len = len,
	                          .env_from = env_from,
	                          .env_to = env_to,
	                          .n_to = n_to};
	int rc = capture_add_batch(st, &it, 1);
	if (rc == TERN_OK)
		rc = it.rc;
	if (rc == TERN_OK)
		memcpy(id_out, it.id, CAPTURE_ID_MAX);
	return rc;
}

int capture_add(struct capture_store *st, const char *raw, size_t len, const char *env_from,
                const char *const *env_to, size_t n_to, char id_out[CAPTURE_ID_MAX])
{
	return add_one(st, NULL, NULL, raw, len, env_from, env_to, n_to, id_out);
}

int capture_add_once(struct capture_store *st, const char *queue_id, const char *username,
                     const char *raw, size_t len, const char *env_from, const char *const *env_to,
                     size_t n_to, char id_out[CAPTURE_ID_MAX])
{
	return add_one(st, queue_id, username, raw, len, env_from, env_to, n_to, id_out);
}

/* --------------------------------------------------------------- opening */

/* After an unclean stop: index every ID.eml without a row, drop ID.tmp. */
/* Records that spool message queue_id was caught as id (lock held, in a
 * transaction). */
static int link_queue_id(struct capture_store *st, const char *queue_id, const char *id)
{
	sqlite3_stmt *ins = prep_cached(st, QC_LINK,
	                                "INSERT OR REPLACE INTO spool_ids (queue_id, "
	                                "id) VALUES (?, ?)");
	if (!ins)
		return TERN_EIO;
	sqlite3_bind_text(ins, 1, queue_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(ins, 2, id, -1, SQLITE_STATIC);
	int rc = sqlite3_step(ins) == SQLITE_DONE ? TERN_OK : TERN_EIO;
	sqlite3_reset(ins);
	return rc;
}

/*
 * The spool queue id of a message tern received: its own Received header
 * says "by HOST (tern) with PROTO id QUEUEID". Used to re-link a message
 * re-indexed after a crash with the spool entry that will deliver it again.
 */
static bool queue_id_of(const char *raw, size_t len, char out[QUEUE_ID_LEN + 1])
{
	const char *end = raw + len;
	const char *hdr_end = memmem(raw, len, "\r\n\r\n", 4);
	if (hdr_end)
		end = hdr_end;
	const char *p = memmem(raw, (size_t)(end - raw), "(tern) with ", 12);
	if (!p)
		return false;
	const char *id = memmem(p, (size_t)(end - p), " id ", 4);
	if (!id || end - id < 4 + QUEUE_ID_LEN)
		return false;
	id += 4;
	if (!queue_id_valid(id, QUEUE_ID_LEN))
		return false;
	memcpy(out, id, QUEUE_ID_LEN);
	out[QUEUE_ID_LEN] = '\0';
	return true;
}

static void recover(struct capture_store *st)
{
	char mdir[4096];
	snprintf(mdir, sizeof(mdir), "%s/msg", st->dir);
	DIR *d = opendir(mdir);
	if (!d)
		return;
	size_t added = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.' || strlen(de->d_name) != 2)
			continue;
		char sub[4200];
		int sn = snprintf(sub, sizeof(sub), "%s/%s", mdir, de->d_name);
		if (sn < 0 || (size_t)sn >= sizeof(sub))
			continue;
		DIR *sd = opendir(sub);
		if (!sd)
			continue;
		struct dirent *fe;
		while ((fe = readdir(sd)) != NULL) {
			char id[CAPTURE_ID_MAX];
			/* ID.eml, or a temp file ID.eml.tmp.PID.N (ID.tmp before). */
			const char *dot = strchr(fe->d_name, '.');
			if (!dot || (size_t)(dot - fe->d_name) >= CAPTURE_ID_MAX)
				continue;
			memcpy(id, fe->d_name, (size_t)(dot - fe->d_name));
			id[dot - fe->d_name] = '\0';
			if (!id_valid(id))
				continue;
			char path[8400];
			int pn = snprintf(path, sizeof(path), "%s/%s", sub, fe->d_name);
			if (pn < 0 || (size_t)pn >= sizeof(path))
				continue;
			if (strcmp(dot, ".tmp") == 0 || strncmp(dot, ".eml.tmp.", 9) == 0) {
				unlink(path);
				continue;
			}
			if (strcmp(dot, ".eml") != 0 || seq_of(st, id, NULL) != 0)
				continue;
			struct tbuf raw = TBUF_INIT(SIZE_MAX / 2);
			struct stat sb;
			struct mime_msg mm;
			if (stat(path, &sb) != 0 || read_raw_file(st, id, &raw) != TERN_OK) {
				tbuf_free(&raw);
				continue;
			}
			if (mime_parse(raw.data ? raw.data : "", raw.len, 0, &mm) == TERN_OK) {
				int64_t seq;
				int64_t created = (int64_t)sb.st_mtim.tv_sec * 1000000 +
				                  sb.st_mtim.tv_nsec / 1000;
				if (exec(st, "BEGIN") == TERN_OK) {
					int rc = msg_index_insert(st->db, &st->ix, id, raw.len, &mm,
					                          mm.return_path, NULL, 0, created,
					                          &seq);
					char qid[QUEUE_ID_LEN + 1];
					/* The spool will deliver it again: let that find this copy.
					 */
					if (rc == TERN_OK &&
					    queue_id_of(raw.data ? raw.data : "", raw.len, qid))
						rc = link_queue_id(st, qid, id);
					if (rc == TERN_OK && exec(st, "COMMIT") == TERN_OK)
						added++;
					else
						exec(st, "ROLLBACK");
				}
			}
			mime_msg_free(&mm);
			tbuf_free(&raw);
		}
		closedir(sd);
	}
	closedir(d);
	if (added)
		log_warn("event=capture_recovered messages=%zu", added);
}

int capture_open(const char *dir, struct capture_store **out, char *err, size_t errlen)
{
	*out = NULL;
	mime_init();
	struct capture_store *st = calloc(1, sizeof(*st));
	if (!st) {
		set_err(err, errlen, "out of memory");
		return TERN_ENOMEM;
	}
	int rc = TERN_EIO;
	pthread_mutex_init(&st->mu, NULL);
	pthread_mutex_init(&st->sync_mu, NULL);
	st->dir = tern_strdup(dir);
	char path[4200];
	if (strlen(dir) > 3000) {
		set_err(err, errlen, "capture directory path too long");
		rc = TERN_EINVAL;
		goto fail;
	}
	if (!st->dir) {
		rc = TERN_ENOMEM;
		goto fail;
	}
	snprintf(path, sizeof(path), "%s/msg", dir);
	if (tern_mkdir_p(path, 0700, false, NULL) != TERN_OK) {
		set_err(err, errlen, "cannot create %s: %s", path, strerror(errno));
		goto fail;
	}
	snprintf(path, sizeof(path), "%s/capture.db", dir);
	if (sqlite3_open_v2(path, &st->db,
	                    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
	                    NULL) != SQLITE_OK) {
		set_err(err, errlen, "cannot open %s: %s", path,
		        st->db ? sqlite3_errmsg(st->db) : "out of memory");
		goto fail;
	}
	sqlite3_busy_timeout(st->db, 5000);
	int64_t ver = scalar_i64(st, "PRAGMA user_version");
	if (ver > SCHEMA_VERSION) {
		set_err(err, errlen, "%s: schema is newer than this tern", path);
		rc = TERN_ECORRUPT;
		goto fail;
	}
	if (exec(st, "PRAGMA journal_mode = WAL") != TERN_OK ||
	    exec(st, "PRAGMA synchronous = FULL") != TERN_OK || /* a COMMIT is durable */
	    exec(st, "PRAGMA temp_store = MEMORY") != TERN_OK || exec(st, "BEGIN") != TERN_OK ||
	    exec(st, SCHEMA) != TERN_OK ||
	    (scalar_i64(st, "SELECT COUNT(*) FROM pragma_table_info('messages') "
	                    "WHERE name = 'username'") == 0 &&
	     exec(st, "ALTER TABLE messages ADD COLUMN username TEXT NOT NULL DEFAULT ''") !=
	         TERN_OK) ||
	    exec(st, "PRAGMA user_version = 3") != TERN_OK || exec(st, "COMMIT") != TERN_OK) {
		set_err(err, errlen, "cannot set up %s: %s", path, sqlite3_errmsg(st->db));
		goto fail;
	}
	sqlite3_stmt *s = prep(st, "SELECT value FROM meta WHERE key = 'clean'");
	bool clean = s && sqlite3_step(s) == SQLITE_ROW && strcmp(col_text(s, 0), "1") == 0;
	sqlite3_finalize(s);
	if (!clean)
		recover(st);
	if (exec(st, "INSERT OR REPLACE INTO meta (key, value) VALUES ('clean', '0')") != TERN_OK) {
		set_err(err, errlen, "cannot write %s: %s", path, sqlite3_errmsg(st->db));
		goto fail;
	}
	recount(st);
	*out = st;
	return TERN_OK;
fail:
	if (st->db)
		sqlite3_close(st->db);
	pthread_mutex_destroy(&st->mu);
	pthread_mutex_destroy(&st->sync_mu);
	free(st->dir);
	free(st);
	return rc;
}

void capture_close(struct capture_store *st)
{
	if (!st)
		return;
	pthread_mutex_lock(&st->mu);
	exec(st, "INSERT OR REPLACE INTO meta (key, value) VALUES ('clean', '1')");
	exec(st, "PRAGMA optimize");
	for (size_t i = 0; i < QC_N; i++)
		sqlite3_finalize(st->cached[i]); /* else sqlite3_close refuses */
	msg_index_stmts_free(&st->ix);
	sqlite3_close(st->db);
	pthread_mutex_unlock(&st->mu);
	pthread_mutex_destroy(&st->mu);
	pthread_mutex_destroy(&st->sync_mu);
	free(st->dir);
	free(st);
}

/* --------------------------------------------------------------- listing */

static void bind_params(sqlite3_stmt *s, const struct capture_query *q)
{
	for (size_t i = 0; i < q->n_params; i++) {
		if (q->params[i].kind == CQ_TEXT)
			sqlite3_bind_text(s, (int)i + 1, q->params[i].text, -1, SQLITE_STATIC);
		else
			sqlite3_bind_int64(s, (int)i + 1, q->params[i].i);
	}
}

static json_t *tags_locked(struct capture_store *st)
{
	json_t *arr = json_array();
	sqlite3_stmt *s = prep(st, "SELECT name FROM tags ORDER BY name COLLATE NOCASE");
	while (arr && s && sqlite3_step(s) == SQLITE_ROW)
		json_array_append_new(arr, jstr(col_text(s, 0)));
	sqlite3_finalize(s);
	return arr;
}

static bool blank_query(const char *q)
{
	if (!q)
		return true;
	for (; *q; q++)
		if (*q != ' ' && *q != '\t' && *q != '\r' && *q != '\n')
			return false;
	return true;
}

json_t *capture_list(struct capture_store *st, const char *query, size_t start, size_t limit)
{
	struct capture_query q;
	bool all = blank_query(query);
	if (all)
		memset(&q, 0, sizeof(q));
	else if (capture_query_parse(query, strlen(query), &q) != TERN_OK) {
		capture_query_free(&q);
		return NULL;
	}
	if (limit == 0)
		limit = 50; /* Mailpit's default page */
	if (limit > MAX_LIST)
		limit = MAX_LIST;
	if (start > INT64_MAX)
		start = INT64_MAX;

	json_t *res = NULL, *msgs = json_array();
	sqlite3_stmt *s = NULL;
	struct tbuf sql = TBUF_INIT(1 << 20);
	pthread_mutex_lock(&st->mu);
	uint64_t mcount = st->total, munread = st->unread;
	if (!all) {
		tbuf_printf(&sql,
		            "SELECT COUNT(*), COALESCE(SUM(m.read = 0), 0) FROM messages m "
		            "WHERE %s",
		            q.where.data);
		s = prep(st, sql.data);
		if (!s)
			goto out;
		bind_params(s, &q);
		if (sqlite3_step(s) == SQLITE_ROW) {
			mcount = (uint64_t)sqlite3_column_int64(s, 0);
			munread = (uint64_t)sqlite3_column_int64(s, 1);
		}
		sqlite3_finalize(s);
		tbuf_reset(&sql);
	}
	tbuf_printf(&sql,
	            "SELECT " SUMMARY_COLS " FROM messages m WHERE %s "
	            "ORDER BY m.created DESC, m.seq DESC LIMIT ? OFFSET ?",
	            all ? "1" : q.where.data);
	s = prep(st, sql.data);
	if (!s)
		goto out;
	bind_params(s, &q);
	sqlite3_bind_int64(s, (int)q.n_params + 1, (sqlite3_int64)limit);
	sqlite3_bind_int64(s, (int)q.n_params + 2, (sqlite3_int64)start);
	while (msgs && sqlite3_step(s) == SQLITE_ROW)
		json_array_append_new(msgs, summary_from_row(s));
	res = json_object();
	if (!res || !msgs)
		goto out;
	json_object_set_new(res, "total", json_integer((json_int_t)st->total));
	json_object_set_new(res, "unread", json_integer((json_int_t)st->unread));
	json_object_set_new(res, "count", json_integer((json_int_t)json_array_size(msgs)));
	json_object_set_new(res, "messages_count", json_integer((json_int_t)mcount));
	json_object_set_new(res, "messages_unread", json_integer((json_int_t)munread));
	json_object_set_new(res, "start", json_integer((json_int_t)start));
	json_object_set_new(res, "tags", tags_locked(st));
	json_object_set_new(res, "messages", msgs);
	msgs = NULL;
out:
	pthread_mutex_unlock(&st->mu);
	sqlite3_finalize(s);
	tbuf_free(&sql);
	json_decref(msgs);
	capture_query_free(&q);
	return res;
}

/* ------------------------------------------------------- single messages */

static json_t *tags_of(struct capture_store *st, int64_t seq)
{
	json_t *arr = json_array();
	sqlite3_stmt *s =
	    prep(st, "SELECT t.name FROM message_tags mt JOIN tags t ON t.id = mt.tag "
	             "WHERE mt.msg = ? ORDER BY t.name COLLATE NOCASE");
	if (s)
		sqlite3_bind_int64(s, 1, seq);
	while (arr && s && sqlite3_step(s) == SQLITE_ROW)
		json_array_append_new(arr, jstr(col_text(s, 0)));
	sqlite3_finalize(s);
	return arr;
}

static json_t *part_json(const struct mime_part *p)
{
	return json_pack("{s:o,s:o,s:o,s:o,s:I,s:{s:o,s:o,s:o}}", "PartID", jstr(p->part_id),
	                 "FileName", jstr(p->filename), "ContentType", jstr(p->content_type),
	                 "ContentID", jstr(p->content_id), "Size", (json_int_t)p->size, "Checksums",
	                 "MD5", jstr(p->md5), "SHA1", jstr(p->sha1), "SHA256", jstr(p->sha256));
}

/* List-Unsubscribe: the header, its <links> (at most one mailto: and one
 * http(s):, as Mailpit reports) and what is wrong with it. */
static json_t *list_unsub_json(const struct mime_msg *mm)
{
	json_t *links = json_array();
	const char *h = mm->list_unsub;
	bool mailto = false, http = false;
	struct tbuf errs = TBUF_INIT(4096);
	for (const char *p = h; *p;) {
		const char *lt = strchr(p, '<');
		if (!lt)
			break;
		const char *gt = strchr(lt, '>');
		if (!gt) {
			tbuf_append_str(&errs, "unterminated link; ");
			break;
		}
		char *link = tern_strndup(lt + 1, (size_t)(gt - lt - 1));
		if (link) {
			if (strncasecmp(link, "mailto:", 7) == 0 && !mailto) {
				mailto = true;
				json_array_append_new(links, jstr(link));
			} else if ((strncasecmp(link, "https://", 8) == 0 ||
			            strncasecmp(link, "http://", 7) == 0) &&
			           !http) {
				http = true;
				json_array_append_new(links, jstr(link));
			} else {
				tbuf_append_str(&errs, "unsupported or repeated link; ");
			}
			free(link);
		}
		p = gt + 1;
	}
	if (h[0] && json_array_size(links) == 0 && errs.len == 0)
		tbuf_append_str(&errs, "no valid links; ");
	if (mm->list_unsub_post[0] && !http)
		tbuf_append_str(&errs, "List-Unsubscribe-Post without an HTTPS link; ");
	while (errs.len && (errs.data[errs.len - 1] == ' ' || errs.data[errs.len - 1] == ';'))
		errs.data[--errs.len] = '\0';
	json_t *o =
	    json_pack("{s:o,s:o,s:o,s:o}", "Header", jstr(h), "Links", links, "Errors",
	              jstr(errs.data ? errs.data : ""), "HeaderPost", jstr(mm->list_unsub_post));
	tbuf_free(&errs);
	return o;
}

json_t *capture_message(struct capture_store *st, const char *id, bool mark_read)
{
	char real[CAPTURE_ID_MAX];
	struct tbuf raw = TBUF_INIT(SIZE_MAX / 2);
	struct mime_msg mm;
	memset(&mm, 0, sizeof(mm));
	json_t *o = NULL, *tags = NULL;
	char env_from[1024] = "";
	int64_t created = 0;
	json_t *stored_bcc = NULL;
	char username[256] = "";
	struct event ev = {"update", NULL};

	pthread_mutex_lock(&st->mu);
	int64_t seq = seq_of(st, id, real);
	if (seq) {
		tags = tags_of(st, seq);
		sqlite3_stmt *s =
		    prep(st, "SELECT env_from, created, read, addrs, username FROM messages "
		             "WHERE seq = ?");
		bool was_read = false;
		if (s) {
			sqlite3_bind_int64(s, 1, seq);
			if (sqlite3_step(s) == SQLITE_ROW) {
				tern_strlcpy(env_from, col_text(s, 0), sizeof(env_from));
				created = sqlite3_column_int64(s, 1);
				was_read = sqlite3_column_int(s, 2) != 0;
				/* Bcc as stored: header Bcc plus envelope-only recipients. */
				json_t *addrs = json_col(s, 3, 0);
				json_t *b = json_object_get(addrs, "Bcc");
				if (json_is_array(b))
					stored_bcc = json_incref(b);
				json_decref(addrs);
				tern_strlcpy(username, col_text(s, 4), sizeof(username));
			}
		}
		sqlite3_finalize(s);
		if (mark_read && !was_read) {
			s = prep(st, "UPDATE messages SET read = 1 WHERE seq = ?");
			if (s) {
				sqlite3_bind_int64(s, 1, seq);
				if (sqlite3_step(s) == SQLITE_DONE && sqlite3_changes(st->db) > 0 &&
				    st->unread > 0) {
					st->unread--;
					ev.data = json_pack("{s:[s]}", "IDs", real);
				}
			}
			sqlite3_finalize(s);
		}
	}
	pthread_mutex_unlock(&st->mu);
	if (!seq)
		goto out;
	if (read_raw(st, real, &raw) != TERN_OK)
		goto out;
	if (mime_parse(raw.data ? raw.data : "", raw.len, MIME_CHECKSUMS, &mm) != TERN_OK)
		goto out;

	char date[TERN_RFC3339_MAX];
	/* no Date: field, or one past what RFC 3339 can say: the time it arrived */
	if (!mm.has_date || !tern_rfc3339_offset(mm.date, mm.date_tz_min, date, sizeof(date)))
		tern_rfc3339_ms(created, date, sizeof(date));
	json_t *att = json_array(), *inl = json_array();
	for (size_t i = 0; i < mm.n_parts; i++) {
		if (mm.parts[i].role == MIME_ROLE_ATTACHMENT)
			json_array_append_new(att, part_json(&mm.parts[i]));
		else if (mm.parts[i].role == MIME_ROLE_INLINE)
			json_array_append_new(inl, part_json(&mm.parts[i]));
	}
	o = json_object();
	if (!o) {
		json_decref(att);
		json_decref(inl);
		goto out;
	}
	json_object_set_new(o, "ID", jstr(real));
	json_object_set_new(o, "MessageID", jstr(mm.message_id));
	json_object_set_new(o, "From", addr_json(mm.from.name, mm.from.addr));
	json_object_set_new(o, "To", addrs_json(&mm.to));
	json_object_set_new(o, "Cc", addrs_json(&mm.cc));
	json_object_set_new(o, "Bcc", stored_bcc ? stored_bcc : addrs_json(&mm.bcc));
	stored_bcc = NULL;
	json_object_set_new(o, "ReplyTo", addrs_json(&mm.reply_to));
	json_object_set_new(o, "ReturnPath", jstr(mm.return_path[0] ? mm.return_path : env_from));
	json_object_set_new(o, "Subject", jstr(mm.subject));
	json_object_set_new(o, "ListUnsubscribe", list_unsub_json(&mm));
	json_object_set_new(o, "Date", jstr(date));
	json_object_set_new(o, "Tags", tags);
	tags = NULL;
	json_object_set_new(o, "Username", jstr(username));
	json_object_set_new(o, "Text", jstr(mm.text));
	json_object_set_new(o, "HTML", jstr(mm.html));
	json_object_set_new(o, "Size", json_integer((json_int_t)raw.len));
	json_object_set_new(o, "Inline", inl);
	json_object_set_new(o, "Attachments", att);
out:
	json_decref(stored_bcc);
	json_decref(tags);
	mime_msg_free(&mm);
	tbuf_free(&raw);
	emit(st, &ev);
	return o;
}

/* Go's textproto.CanonicalMIMEHeaderKey, which shapes Mailpit's header
 * names ("message-id" -> "Message-Id"); names with other bytes are kept. */
static void canonical_key(char *k)
{
	for (const char *p = k; *p; p++) {
		char c = *p;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || strchr("!#$%&'*+.^_`|~", c)))
			return;
	}
	bool upper = true;
	for (char *p = k; *p; p++) {
		if (upper && *p >= 'a' && *p <= 'z')
			*p = (char)(*p - 'a' + 'A');
		else if (!upper && *p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
		upper = *p == '-';
	}
}

json_t *capture_headers(struct capture_store *st, const char *id)
{
	char real[CAPTURE_ID_MAX];
	pthread_mutex_lock(&st->mu);
	int64_t seq = seq_of(st, id, real);
	pthread_mutex_unlock(&st->mu);
	if (!seq)
		return NULL;
	struct tbuf raw = TBUF_INIT(SIZE_MAX / 2);
	json_t *o = NULL;
	struct mime_header *h = NULL;
	size_t n = 0;
	if (read_raw(st, real, &raw) != TERN_OK ||
	    mime_headers(raw.data ? raw.data : "", raw.len, &h, &n) != TERN_OK)
		goto out;
	o = json_object();
	for (size_t i = 0; o && i < n; i++) {
		canonical_key(h[i].name);
		json_t *arr = json_object_get(o, h[i].name);
		if (!arr) {
			arr = json_array();
			json_object_set_new(o, h[i].name, arr);
		}
		json_array_append_new(arr, jstr(h[i].value));
	}
out:
	mime_headers_free(h, n);
	tbuf_free(&raw);
	return o;
}

int capture_raw(struct capture_store *st, const char *id, struct tbuf *out)
{
	char real[CAPTURE_ID_MAX];
	pthread_mutex_lock(&st->mu);
	int64_t seq = seq_of(st, id, real);
	pthread_mutex_unlock(&st->mu);
	if (!seq)
		return TERN_ENOTFOUND;
	return read_raw(st, real, out);
}

int capture_part(struct capture_store *st, const char *id, const char *part_id, struct tbuf *out,
                 char *content_type, size_t ctlen, char *filename, size_t fnlen)
{
	char real[CAPTURE_ID_MAX];
	if (!part_id)
		return TERN_ENOTFOUND;
	pthread_mutex_lock(&st->mu);
	int64_t seq = seq_of(st, id, real);
	pthread_mutex_unlock(&st->mu);
	if (!seq)
		return TERN_ENOTFOUND;
	struct tbuf raw = TBUF_INIT(SIZE_MAX / 2);
	int rc = read_raw(st, real, &raw);
	if (rc == TERN_OK)
		rc = mime_part_get(raw.data ? raw.data : "", raw.len, part_id, out, content_type,
		                   ctlen, filename, fnlen);
	tbuf_free(&raw);
	return rc;
}

int capture_envelope(struct capture_store *st, const char *id, char **from, char ***to,
                     size_t *n_to)
{
	*from = NULL;
	*to = NULL;
	*n_to = 0;
	int rc = TERN_ENOTFOUND;
	json_t *arr = NULL;
	pthread_mutex_lock(&st->mu);
	int64_t seq = seq_of(st, id, NULL);
	sqlite3_stmt *s =
	    seq ? prep(st, "SELECT env_from, env_to FROM messages WHERE seq = ?") : NULL;
	if (s) {
		sqlite3_bind_int64(s, 1, seq);
		if (sqlite3_step(s) == SQLITE_ROW) {
			rc = TERN_ENOMEM;
			*from = tern_strdup(col_text(s, 0));
			arr = json_loads(col_text(s, 1), 0, NULL);
		}
	}
	sqlite3_finalize(s);
	pthread_mutex_unlock(&st->mu);
	if (!*from)
		goto out;
	size_t n = json_is_array(arr) ? json_array_size(arr) : 0;
	*to = calloc(n + 1, sizeof(char *));
	if (!*to)
		goto out;
	for (size_t i = 0; i < n; i++) {
		const char *v = json_string_value(json_array_get(arr, i));
		(*to)[*n_to] = tern_strdup(v ? v : "");
		if (!(*to)[*n_to])
			goto out;
		(*n_to)++;
	}
	rc = TERN_OK;
out:
	json_decref(arr);
	if (rc != TERN_OK) {
		free(*from);
		for (size_t i = 0; *to && i < *n_to; i++)
			free((*to)[i]);
		free(*to);
		*from = NULL;
		*to = NULL;
		*n_to = 0;
	}
	return rc;
}

/* -------------------------------------------------------------- deleting */

struct victims {
	int64_t *seq;
	char (*id)[CAPTURE_ID_MAX];
	size_t n, cap;
};

static int victims_add(struct victims *v, int64_t seq, const char *id)
{
	if (v->n == v->cap) {
		size_t nc = v->cap ? v->cap * 2 : 64;
		int64_t *ns = realloc(v->seq, nc * sizeof(*ns));
		if (!ns)
			return TERN_ENOMEM;
		v->seq = ns;
		char(*ni)[CAPTURE_ID_MAX] = realloc(v->id, nc * sizeof(*ni));
		if (!ni)
			return TERN_ENOMEM;
		v->id = ni;
		v->cap = nc;
	}
	v->seq[v->n] = seq;
	tern_strlcpy(v->id[v->n], id, CAPTURE_ID_MAX);
	v->n++;
	return TERN_OK;
}

static void victims_free(struct victims *v)
{
	free(v->seq);
	free(v->id);
	memset(v, 0, sizeof(*v));
}

/* Collects (seq, id) of a prepared SELECT seq, id ... */
static int collect(sqlite3_stmt *s, struct victims *v)
{
	int rc = TERN_OK, step;
	while ((step = sqlite3_step(s)) == SQLITE_ROW && rc == TERN_OK)
		rc = victims_add(v, sqlite3_column_int64(s, 0), col_text(s, 1));
	if (rc == TERN_OK && step != SQLITE_DONE && step != SQLITE_ROW)
		rc = TERN_EIO;
	return rc;
}

/* Deletes the rows of v in one transaction (lock held), then recounts. */
static int delete_rows(struct capture_store *st, const struct victims *v, bool all)
{
	static const char *const per_row[] = {
	    "DELETE FROM messages WHERE seq = ?",     "DELETE FROM recipients WHERE msg = ?",
	    "DELETE FROM message_tags WHERE msg = ?", "DELETE FROM fts WHERE rowid = ?",
	    "DELETE FROM raw WHERE seq = ?",
	};
	int rc = exec(st, "BEGIN IMMEDIATE");
	if (rc != TERN_OK)
		return rc;
	if (all) {
		rc = exec(st, "DELETE FROM messages; DELETE FROM recipients; "
		              "DELETE FROM message_tags; DELETE FROM fts; DELETE FROM raw;");
	} else {
		for (size_t k = 0; k < sizeof(per_row) / sizeof(per_row[0]) && rc == TERN_OK; k++) {
			sqlite3_stmt *s = prep(st, per_row[k]);
			if (!s) {
				rc = TERN_EIO;
				break;
			}
			for (size_t i = 0; i < v->n && rc == TERN_OK; i++) {
				sqlite3_reset(s);
				sqlite3_bind_int64(s, 1, v->seq[i]);
				if (sqlite3_step(s) != SQLITE_DONE)
					rc = TERN_EIO;
			}
			sqlite3_finalize(s);
		}
	}
	if (rc == TERN_OK)
		rc = exec(st, "DELETE FROM tags WHERE id NOT IN (SELECT tag FROM message_tags)");
	if (rc == TERN_OK)
		rc = exec(st, "COMMIT");
	if (rc != TERN_OK)
		exec(st, "ROLLBACK");
	uint64_t before = st->total;
	recount(st);
	if (st->total < before)
		st->deleted += before - st->total;
	return rc;
}

static void unlink_files(struct capture_store *st, const struct victims *v)
{
	for (size_t i = 0; i < v->n; i++) {
		char path[4200];
		msg_path(st, v->id[i], ".eml", path, sizeof(path));
		if (unlink(path) != 0 && errno != ENOENT)
			log_warn("event=capture_unlink_failed id=%s errno=%d", v->id[i], errno);
	}
}

static json_t *ids_event(const struct victims *v)
{
	json_t *ids = json_array();
	for (size_t i = 0; ids && i < v->n; i++)
		json_array_append_new(ids, jstr(v->id[i]));
	return json_pack("{s:o}", "IDs", ids);
}

/* The common tail: delete, unlock, unlink, notify. Lock held on entry. */
static int finish_delete(struct capture_store *st, struct victims *v, bool all)
{
	int rc = TERN_OK;
	struct event ev = {"delete", NULL};
	if (v->n || all)
		rc = delete_rows(st, v, all);
	pthread_mutex_unlock(&st->mu);
	if (rc == TERN_OK && (v->n || all)) {
		unlink_files(st, v);
		ev.data = all ? json_pack("{s:b}", "All", 1) : ids_event(v);
		emit(st, &ev);
	}
	victims_free(v);
	return rc;
}

int capture_delete(struct capture_store *st, const char *const *ids, size_t n)
{
	struct victims v = {0};
	int rc = TERN_OK;
	pthread_mutex_lock(&st->mu);
	if (n == 0) {
		sqlite3_stmt *s = prep(st, "SELECT seq, id FROM messages");
		rc = s ? collect(s, &v) : TERN_EIO;
		sqlite3_finalize(s);
	} else {
		for (size_t i = 0; i < n && rc == TERN_OK; i++) {
			char real[CAPTURE_ID_MAX];
			if (!id_valid(ids[i]))
				continue;
			int64_t seq = seq_of(st, ids[i], real);
			if (seq)
				rc = victims_add(&v, seq, real);
		}
	}
	if (rc != TERN_OK) {
		pthread_mutex_unlock(&st->mu);
		victims_free(&v);
		return rc;
	}
	return finish_delete(st, &v, n == 0);
}

int capture_delete_search(struct capture_store *st, const char *query)
{
	if (blank_query(query))
		return capture_delete(st, NULL, 0);
	struct capture_query q;
	int rc = capture_query_parse(query, strlen(query), &q);
	if (rc != TERN_OK) {
		capture_query_free(&q);
		return rc;
	}
	struct victims v = {0};
	struct tbuf sql = TBUF_INIT(1 << 20);
	tbuf_printf(&sql, "SELECT m.seq, m.id FROM messages m WHERE %s", q.where.data);
	pthread_mutex_lock(&st->mu);
	sqlite3_stmt *s = sql.data ? prep(st, sql.data) : NULL;
	if (s) {
		bind_params(s, &q);
		rc = collect(s, &v);
	} else {
		rc = TERN_EIO;
	}
	sqlite3_finalize(s);
	tbuf_free(&sql);
	capture_query_free(&q);
	if (rc != TERN_OK) {
		pthread_mutex_unlock(&st->mu);
		victims_free(&v);
		return rc;
	}
	return finish_delete(st, &v, false);
}

size_t capture_prune(struct capture_store *st, uint64_t max_messages, uint64_t max_age)
{
	struct victims v = {0};
	int rc = TERN_OK;
	pthread_mutex_lock(&st->mu);
	if (max_age) {
		sqlite3_stmt *s = prep(st, "SELECT seq, id FROM messages WHERE created < ?");
		if (s) {
			int64_t cutoff =
			    now_us() - (int64_t)(max_age > INT64_MAX / 2000000 ? INT64_MAX / 2
			                                                       : max_age * 1000000);
			sqlite3_bind_int64(s, 1, cutoff);
			rc = collect(s, &v);
		}
		sqlite3_finalize(s);
	}
	if (rc == TERN_OK && max_messages && st->total > max_messages) {
		/* newest-first on the created index; everything past the limit goes
		 * (rows already collected by age are skipped) */
		sqlite3_stmt *s =
		    prep(st, "SELECT seq, id FROM messages ORDER BY created DESC, seq "
		             "DESC LIMIT -1 OFFSET ?");
		if (s) {
			sqlite3_bind_int64(s, 1, (sqlite3_int64)max_messages);
			size_t before = v.n;
			int step;
			while ((step = sqlite3_step(s)) == SQLITE_ROW && rc == TERN_OK) {
				int64_t seq = sqlite3_column_int64(s, 0);
				bool dup = false;
				for (size_t i = 0; i < before && !dup; i++)
					dup = v.seq[i] == seq;
				if (!dup)
					rc = victims_add(&v, seq, col_text(s, 1));
			}
		}
		sqlite3_finalize(s);
	}
	size_t n = v.n;
	if (rc != TERN_OK) {
		pthread_mutex_unlock(&st->mu);
		victims_free(&v);
		return 0;
	}
	if (finish_delete(st, &v, false) != TERN_OK)
		return 0;
	return n;
}

/* ------------------------------------------------------ read and tagging */

int capture_set_read(struct capture_store *st, const char *const *ids, size_t n, bool read)
{
	struct victims v = {0};
	struct event ev = {"update", NULL};
	int rc = TERN_OK;
	pthread_mutex_lock(&st->mu);
	if (n == 0) {
		sqlite3_stmt *s = prep(st, "UPDATE messages SET read = ? WHERE read != ?");
		if (s) {
			sqlite3_bind_int(s, 1, read);
			sqlite3_bind_int(s, 2, read);
			if (sqlite3_step(s) != SQLITE_DONE)
				rc = TERN_EIO;
		} else {
			rc = TERN_EIO;
		}
		sqlite3_finalize(s);
		if (rc == TERN_OK)
			ev.data = json_pack("{s:b}", "All", 1);
	} else {
		rc = exec(st, "BEGIN IMMEDIATE");
		sqlite3_stmt *s =
		    rc == TERN_OK ? prep(st, "UPDATE messages SET read = ? WHERE id = ?") : NULL;
		for (size_t i = 0; s && i < n && rc == TERN_OK; i++) {
			if (!id_valid(ids[i]))
				continue;
			sqlite3_reset(s);
			sqlite3_bind_int(s, 1, read);
			sqlite3_bind_text(s, 2, ids[i], -1, SQLITE_STATIC);
			if (sqlite3_step(s) != SQLITE_DONE)
				rc = TERN_EIO;
			else if (sqlite3_changes(st->db) > 0)
				rc = victims_add(&v, 0, ids[i]);
		}
		sqlite3_finalize(s);
		if (rc == TERN_OK && !s)
			rc = TERN_EIO;
		if (rc == TERN_OK)
			rc = exec(st, "COMMIT");
		else
			exec(st, "ROLLBACK");
		if (rc == TERN_OK && v.n)
			ev.data = ids_event(&v);
	}
	st->unread = (uint64_t)scalar_i64(st, "SELECT COUNT(*) FROM messages WHERE read = 0");
	pthread_mutex_unlock(&st->mu);
	victims_free(&v);
	emit(st, &ev);
	return rc;
}

json_t *capture_tags(struct capture_store *st)
{
	pthread_mutex_lock(&st->mu);
	json_t *t = tags_locked(st);
	pthread_mutex_unlock(&st->mu);
	return t;
}

/* Tags are trimmed, must be non-empty, at most MAX_TAG_LEN bytes and free
 * of control characters (they end up in URLs and headers of the UI). */
static int clean_tag(const char *in, char *out, size_t outlen)
{
	if (!in)
		return TERN_EINVAL;
	while (*in == ' ' || *in == '\t')
		in++;
	size_t n = strlen(in);
	while (n && (in[n - 1] == ' ' || in[n - 1] == '\t'))
		n--;
	if (n == 0 || n > MAX_TAG_LEN || n >= outlen)
		return TERN_EINVAL;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)in[i] < 0x20 || in[i] == 0x7f)
			return TERN_EINVAL;
	memcpy(out, in, n);
	out[n] = '\0';
	return TERN_OK;
}

int capture_set_tags(struct capture_store *st, const char *const *ids, size_t n,
                     const char *const *tags, size_t n_tags)
{
	char(*clean)[MAX_TAG_LEN + 1] = calloc(n_tags ? n_tags : 1, sizeof(*clean));
	if (!clean)
		return TERN_ENOMEM;
	int rc = TERN_OK;
	for (size_t i = 0; i < n_tags && rc == TERN_OK; i++)
		rc = clean_tag(tags[i], clean[i], sizeof(clean[i]));
	if (rc != TERN_OK) {
		free(clean);
		return rc;
	}
	struct victims v = {0};
	struct event ev = {"update", NULL};
	sqlite3_stmt *del = NULL, *ins_tag = NULL, *link = NULL;
	pthread_mutex_lock(&st->mu);
	rc = exec(st, "BEGIN IMMEDIATE");
	if (rc != TERN_OK)
		goto unlock;
	del = prep(st, "DELETE FROM message_tags WHERE msg = ?");
	ins_tag = prep(st, "INSERT OR IGNORE INTO tags (name) VALUES (?)");
	link = prep(st, "INSERT OR IGNORE INTO message_tags (msg, tag) "
	                "SELECT ?, id FROM tags WHERE name = ?");
	if (!del || !ins_tag || !link)
		rc = TERN_EIO;
	for (size_t i = 0; i < n && rc == TERN_OK; i++) {
		char real[CAPTURE_ID_MAX];
		int64_t seq = seq_of(st, ids[i], real);
		if (!seq)
			continue;
		sqlite3_reset(del);
		sqlite3_bind_int64(del, 1, seq);
		if (sqlite3_step(del) != SQLITE_DONE)
			rc = TERN_EIO;
		for (size_t t = 0; t < n_tags && rc == TERN_OK; t++) {
			sqlite3_reset(ins_tag);
			sqlite3_bind_text(ins_tag, 1, clean[t], -1, SQLITE_STATIC);
			sqlite3_reset(link);
			sqlite3_bind_int64(link, 1, seq);
			sqlite3_bind_text(link, 2, clean[t], -1, SQLITE_STATIC);
			if (sqlite3_step(ins_tag) != SQLITE_DONE ||
			    sqlite3_step(link) != SQLITE_DONE)
				rc = TERN_EIO;
		}
		if (rc == TERN_OK)
			rc = victims_add(&v, seq, real);
	}
	if (rc == TERN_OK)
		rc = exec(st, "DELETE FROM tags WHERE id NOT IN (SELECT tag FROM message_tags)");
	if (rc == TERN_OK)
		rc = exec(st, "COMMIT");
	else
		exec(st, "ROLLBACK");
	if (rc == TERN_OK && v.n)
		ev.data = ids_event(&v);
unlock:
	sqlite3_finalize(del);
	sqlite3_finalize(ins_tag);
	sqlite3_finalize(link);
	pthread_mutex_unlock(&st->mu);
	free(clean);
	victims_free(&v);
	emit(st, &ev);
	return rc;
}

/* IDs of the messages carrying a tag (lock held). */
static int tagged(struct capture_store *st, int64_t tag, struct victims *v)
{
	sqlite3_stmt *s = prep(st, "SELECT m.seq, m.id FROM message_tags mt JOIN messages m ON "
	                           "m.seq = mt.msg WHERE mt.tag = ?");
	if (!s)
		return TERN_EIO;
	sqlite3_bind_int64(s, 1, tag);
	int rc = collect(s, v);
	sqlite3_finalize(s);
	return rc;
}

static int64_t tag_id(struct capture_store *st, const char *name)
{
	sqlite3_stmt *s = prep(st, "SELECT id FROM tags WHERE name = ?");
	int64_t id = 0;
	if (s) {
		sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
		if (sqlite3_step(s) == SQLITE_ROW)
			id = sqlite3_column_int64(s, 0);
	}
	sqlite3_finalize(s);
	return id;
}

static int exec_bound(struct capture_store *st, const char *sql, int64_t a, int64_t b,
                      const char *text)
{
	sqlite3_stmt *s = prep(st, sql);
	if (!s)
		return TERN_EIO;
	if (text)
		sqlite3_bind_text(s, 1, text, -1, SQLITE_STATIC);
	else
		sqlite3_bind_int64(s, 1, a);
	sqlite3_bind_int64(s, 2, b);
	int rc = sqlite3_step(s) == SQLITE_DONE ? TERN_OK : TERN_EIO;
	sqlite3_finalize(s);
	return rc;
}

int capture_rename_tag(struct capture_store *st, const char *from, const char *to)
{
	char cfrom[MAX_TAG_LEN + 1], cto[MAX_TAG_LEN + 1];
	if (clean_tag(from, cfrom, sizeof(cfrom)) != TERN_OK ||
	    clean_tag(to, cto, sizeof(cto)) != TERN_OK)
		return TERN_EINVAL;
	struct victims v = {0};
	struct event ev = {"update", NULL};
	pthread_mutex_lock(&st->mu);
	int rc = TERN_ENOTFOUND;
	int64_t fid = tag_id(st, cfrom);
	if (!fid)
		goto unlock;
	rc = exec(st, "BEGIN IMMEDIATE");
	if (rc != TERN_OK)
		goto unlock;
	rc = tagged(st, fid, &v);
	int64_t tid = tag_id(st, cto);
	if (rc == TERN_OK && tid && tid != fid) {
		/* renaming onto an existing tag merges the two */
		rc = exec_bound(st,
		                "INSERT OR IGNORE INTO message_tags (msg, tag) SELECT msg, ? "
		                "FROM message_tags WHERE tag = ?",
		                tid, fid, NULL);
		if (rc == TERN_OK)
			rc = exec_bound(st, "DELETE FROM message_tags WHERE tag = ?1 AND ?2 = 0",
			                fid, 0, NULL);
	} else if (rc == TERN_OK) {
		rc = exec_bound(st, "UPDATE tags SET name = ? WHERE id = ?", 0, fid, cto);
	}
	if (rc == TERN_OK)
		rc = exec(st, "DELETE FROM tags WHERE id NOT IN (SELECT tag FROM message_tags)");
	if (rc == TERN_OK)
		rc = exec(st, "COMMIT");
	else
		exec(st, "ROLLBACK");
	if (rc == TERN_OK && v.n)
		ev.data = ids_event(&v);
unlock:
	pthread_mutex_unlock(&st->mu);
	victims_free(&v);
	emit(st, &ev);
	return rc;
}

int capture_delete_tag(struct capture_store *st, const char *tag)
{
	char ct[MAX_TAG_LEN + 1];
	if (clean_tag(tag, ct, sizeof(ct)) != TERN_OK)
		return TERN_EINVAL;
	struct victims v = {0};
	struct event ev = {"update", NULL};
	pthread_mutex_lock(&st->mu);
	int rc = TERN_ENOTFOUND;
	int64_t id = tag_id(st, ct);
	if (!id)
		goto unlock;
	rc = exec(st, "BEGIN IMMEDIATE");
	if (rc != TERN_OK)
		goto unlock;
	rc = tagged(st, id, &v);
	if (rc == TERN_OK)
		rc = exec_bound(st, "DELETE FROM message_tags WHERE tag = ?1 AND ?2 = 0", id, 0,
		                NULL);
	if (rc == TERN_OK)
		rc = exec_bound(st, "DELETE FROM tags WHERE id = ?1 AND ?2 = 0", id, 0, NULL);
	if (rc == TERN_OK)
		rc = exec(st, "COMMIT");
	else
		exec(st, "ROLLBACK");
	if (rc == TERN_OK && v.n)
		ev.data = ids_event(&v);
unlock:
	pthread_mutex_unlock(&st->mu);
	victims_free(&v);
	emit(st, &ev);
	return rc;
}

/* ------------------------------------------------------ stats, subscribe */

void capture_stats(struct capture_store *st, uint64_t *messages, uint64_t *unread, uint64_t *bytes)
{
	pthread_mutex_lock(&st->mu);
	uint64_t raw = st->raw_bytes;
	if (messages)
		*messages = st->total;
	if (unread)
		*unread = st->unread;
	pthread_mutex_unlock(&st->mu);
	if (bytes) {
		/* the database (with its WAL) plus the raw message files */
		static const char *const files[] = {"capture.db", "capture.db-wal"};
		uint64_t sum = raw;
		for (size_t i = 0; i < 2; i++) {
			char path[4200];
			struct stat sb;
			snprintf(path, sizeof(path), "%s/%s", st->dir, files[i]);
			if (stat(path, &sb) == 0)
				sum += (uint64_t)sb.st_size;
		}
		*bytes = sum;
	}
}

void capture_subscribe(struct capture_store *st, capture_event_fn fn, void *arg)
{
	pthread_mutex_lock(&st->mu);
	if (st->n_subs < MAX_SUBS && fn)
		st->subs[st->n_subs++] = (struct sub){fn, arg};
	else if (fn)
		log_warn("event=capture_too_many_subscribers max=%d", MAX_SUBS);
	pthread_mutex_unlock(&st->mu);
}
