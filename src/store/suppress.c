/*
 * suppress.c — the suppression list's store (DATA/suppress.db), its token
 * schemes (VERP return paths, one-click unsubscribe URLs) and the intake of
 * reports sent to the suppression addresses. See suppress.h.
 *
 * Owns: the SQLite connection(s) to suppress.db, the key file.
 * Never: runs on an event loop (SQLite blocks), stores an address that is
 * not an addr-spec, or acts on a token whose HMAC does not verify.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "store/events.h"
#include "store/suppress.h"
#include "store/suppress_filter.h"

struct suppress_db {
	sqlite3 *db;
	pthread_mutex_t mu;
	/* suppress_check runs for every remote recipient: its statement is
	 * prepared once (under mu) and reset after each use, not parsed again
	 * per message. */
	sqlite3_stmt *check_st;
	sqlite3_stmt *begin_st, *end_st; /* its two lookups share one read transaction */
	/* Most recipients are on no list: the filter answers them from memory
	 * while DATA/suppress.gen says no tern process changed the entries
	 * since it was built (suppress_filter.h). dv_st reads PRAGMA
	 * data_version, which also catches writers that are not tern (the
	 * sqlite3 shell), within FILTER_RECHECK_MS. */
	struct suppress_gen gen;
	struct suppress_filter filter;
	sqlite3_stmt *dv_st;
	/* monotonic ms of the last build, 0 before the first: at most one a
	 * second (a script running `tern suppress add` in a loop against a long
	 * list must not turn every lookup into a full scan); in between,
	 * lookups ask SQLite, as they did before the filter. */
	int64_t built_at;
};

/* How long a filter is trusted without asking SQLite whether a writer that
 * does not count in DATA/suppress.gen changed the file. */
#define FILTER_RECHECK_MS 1000

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS suppressed ("
    " scope TEXT NOT NULL, addr TEXT NOT NULL, reason TEXT NOT NULL,"
    " detail TEXT NOT NULL DEFAULT '', created INTEGER NOT NULL,"
    " queue_id TEXT NOT NULL DEFAULT '', PRIMARY KEY (scope, addr));"
    "CREATE TABLE IF NOT EXISTS verp ("
    " ref TEXT PRIMARY KEY, rcpt TEXT NOT NULL, sender_domain TEXT NOT NULL,"
    " created INTEGER NOT NULL);";

/* VERP map entries older than this are dropped (a bounce arrives within days). */
#define VERP_KEEP_SECONDS (30 * 86400)

static const char *const reason_names[] = {"bounce", "complaint", "unsubscribe", "manual"};

const char *suppress_reason_name(enum suppress_reason r)
{
	return (unsigned)r < 4 ? reason_names[r] : "unknown";
}

bool suppress_reason_parse(const char *s, enum suppress_reason *out)
{
	for (unsigned i = 0; i < 4; i++) {
		if (strcmp(s, reason_names[i]) == 0) {
			*out = (enum suppress_reason)i;
			return true;
		}
	}
	return false;
}

static void set_err(char *err, size_t errlen, const char *what, const char *path, sqlite3 *db)
{
	if (err && errlen)
		snprintf(err, errlen, "%s %s: %s", what, path,
		         db ? sqlite3_errmsg(db) : "out of memory");
}

/*
 * Run as root (the CLI), a new database file would belong to root and the
 * daemon, which runs as the account owning the data directory, could not
 * write it: give the files that account.
 */
static void own_like_dir(const char *data_dir, const char *db_path)
{
	struct stat st;
	if (geteuid() != 0 || stat(data_dir, &st) != 0 || st.st_uid == 0)
		return;
	const char *sfx[] = {"", "-wal", "-shm"};
	for (size_t i = 0; i < 3; i++) {
		char p[4200];
		snprintf(p, sizeof(p), "%s%s", db_path, sfx[i]);
		if (lchown(p, st.st_uid, st.st_gid) != 0 && errno != ENOENT)
			log_warn("event=chown_failed path=%s error=\"%s\"", p, strerror(errno));
	}
}

int suppress_open(const char *data_dir, struct suppress_db **out, char *err, size_t errlen)
{
	*out = NULL;
	char path[4096];
	if ((size_t)snprintf(path, sizeof(path), "%s/suppress.db", data_dir) >= sizeof(path))
		return TERN_ELIMIT;
	struct suppress_db *d = calloc(1, sizeof(*d));
	if (!d)
		return TERN_ENOMEM;
	pthread_mutex_init(&d->mu, NULL);
	int rc = TERN_EIO;
	if (tern_mkdir_p(data_dir, 0700, false, NULL) != TERN_OK) {
		if (err && errlen)
			snprintf(err, errlen, "cannot create %s: %s", data_dir, strerror(errno));
		goto fail;
	}
	if (sqlite3_open_v2(path, &d->db,
	                    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
	                    NULL) != SQLITE_OK) {
		set_err(err, errlen, "cannot open", path, d->db);
		goto fail;
	}
	sqlite3_busy_timeout(d->db, 5000);
	if (sqlite3_exec(d->db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(d->db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(d->db, SCHEMA, NULL, NULL, NULL) != SQLITE_OK) {
		set_err(err, errlen, "cannot set up", path, d->db);
		goto fail;
	}
	own_like_dir(data_dir, path);
	/* The change counter beside it: without it, every lookup asks SQLite. */
	char gpath[4096];
	suppress_filter_init(&d->filter);
	if ((size_t)snprintf(gpath, sizeof(gpath), "%s/suppress.gen", data_dir) < sizeof(gpath) &&
	    suppress_gen_open(&d->gen, gpath))
		own_like_dir(data_dir, gpath);
	*out = d;
	return TERN_OK;
fail:
	if (d->db)
		sqlite3_close(d->db);
	pthread_mutex_destroy(&d->mu);
	free(d);
	return rc;
}

void suppress_close(struct suppress_db *db)
{
	if (!db)
		return;
	sqlite3_finalize(db->check_st);
	sqlite3_finalize(db->begin_st);
	sqlite3_finalize(db->end_st);
	sqlite3_finalize(db->dv_st);
	sqlite3_close(db->db);
	suppress_filter_free(&db->filter);
	suppress_gen_close(&db->gen);
	pthread_mutex_destroy(&db->mu);
	free(db);
}

/* ---- the process-wide handle ----------------------------------------------- */

static pthread_mutex_t shared_mu = PTHREAD_MUTEX_INITIALIZER;
static struct suppress_db *shared_db;
static char shared_dir[4096];

struct suppress_db *suppress_shared(const char *data_dir)
{
	pthread_mutex_lock(&shared_mu);
	if (shared_db && strcmp(shared_dir, data_dir) != 0) {
		suppress_close(shared_db); /* the data dir changed (a reload) */
		shared_db = NULL;
	}
	if (!shared_db) {
		char err[512] = "";
		if (suppress_open(data_dir, &shared_db, err, sizeof(err)) == TERN_OK)
			tern_strlcpy(shared_dir, data_dir, sizeof(shared_dir));
		else
			log_error("event=suppress_open_failed reason=\"%s\"", err);
	}
	struct suppress_db *d = shared_db;
	pthread_mutex_unlock(&shared_mu);
	return d;
}

void suppress_shared_close(void)
{
	pthread_mutex_lock(&shared_mu);
	suppress_close(shared_db);
	shared_db = NULL;
	pthread_mutex_unlock(&shared_mu);
}

/* ---- entries ---------------------------------------------------------------- */

bool suppress_norm_addr(const char *addr, char *out, size_t outlen)
{
	if (!addr)
		return false;
	size_t n = strlen(addr);
	const char *at = strrchr(addr, '@');
	if (!at || at == addr || !at[1] || n + 1 > outlen)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)addr[i];
		if (c <= 0x20 || c == 0x7f || c == '<' || c == '>')
			return false;
	}
	memcpy(out, addr, n + 1);
	tern_ascii_lower(out + (at - addr));
	return true;
}

static bool norm_scope(const char *scope, char *out, size_t outlen)
{
	scope = scope ? scope : "";
	size_t n = strlen(scope);
	if (n + 1 > outlen || strchr(scope, '@'))
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)scope[i] <= 0x20 || scope[i] == 0x7f)
			return false;
	memcpy(out, scope, n + 1);
	tern_ascii_lower(out);
	return true;
}

void suppress_sender_domain(const char *sender, char *out, size_t outlen)
{
	const char *at = sender ? strrchr(sender, '@') : NULL;
	tern_strlcpy(out, at ? at + 1 : "", outlen);
	tern_ascii_lower(out);
}

/* ---- the filter (suppress_filter.h) ------------------------------------------- */

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Under mu: SQLite's data_version of this connection (it changes when any
 * other connection, tern or not, commits). false on an error. */
static bool data_version(struct suppress_db *db, int64_t *out)
{
	if (!db->dv_st &&
	    sqlite3_prepare_v3(db->db, "PRAGMA data_version", -1, SQLITE_PREPARE_PERSISTENT,
	                       &db->dv_st, NULL) != SQLITE_OK) {
		db->dv_st = NULL;
		return false;
	}
	bool ok = sqlite3_step(db->dv_st) == SQLITE_ROW;
	if (ok)
		*out = sqlite3_column_int64(db->dv_st, 0);
	sqlite3_reset(db->dv_st);
	return ok;
}

/*
 * Under mu: builds the filter from every entry, in one read transaction.
 * The counter is read before the scan: a change committed after it was
 * read bumps it again, so the filter is never taken as exact for a value
 * that came after a change it lacks.
 */
static bool filter_build(struct suppress_db *db, int64_t now)
{
	uint64_t g = suppress_gen_load(&db->gen);
	sqlite3_stmt *cnt = NULL, *all = NULL;
	bool ok = false, txn = false;
	int64_t dv = 0, n = 0;
	db->filter.valid = false;
	if (sqlite3_exec(db->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
		goto out;
	txn = true;
	if (sqlite3_prepare_v2(db->db, "SELECT count(*) FROM suppressed", -1, &cnt, NULL) !=
	        SQLITE_OK ||
	    sqlite3_step(cnt) != SQLITE_ROW)
		goto out;
	n = sqlite3_column_int64(cnt, 0);
	if (n < 0 || !data_version(db, &dv) || !suppress_filter_reset(&db->filter, (size_t)n) ||
	    sqlite3_prepare_v2(db->db, "SELECT scope, addr FROM suppressed", -1, &all, NULL) !=
	        SQLITE_OK)
		goto out;
	int r;
	while ((r = sqlite3_step(all)) == SQLITE_ROW) {
		const char *sc = (const char *)sqlite3_column_text(all, 0);
		const char *a = (const char *)sqlite3_column_text(all, 1);
		if (!suppress_filter_add(&db->filter, sc ? sc : "", a ? a : ""))
			goto out; /* more rows than counted: cannot be, in one transaction */
	}
	ok = r == SQLITE_DONE;
out:
	sqlite3_finalize(cnt);
	sqlite3_finalize(all);
	if (txn)
		sqlite3_exec(db->db, "COMMIT", NULL, NULL, NULL);
	if (ok) {
		db->filter.valid = true;
		db->filter.gen = g;
		db->filter.dv = dv;
		db->filter.dv_at = now;
		log_debug("event=suppress_filter_built entries=%lld generation=%llu", (long long)n,
		          (unsigned long long)g);
	} else {
		log_warn("event=suppress_filter_failed reason=\"%s\"", sqlite3_errmsg(db->db));
	}
	return ok;
}

/* Under mu: whether the filter may answer "not suppressed" now, rebuilt
 * first when a change was counted since it was built. */
static bool filter_usable(struct suppress_db *db)
{
	if (!db->gen.counter)
		return false;
	int64_t now = mono_ms();
	struct suppress_filter *f = &db->filter;
	if (f->valid && suppress_gen_load(&db->gen) == f->gen) {
		if (now - f->dv_at < FILTER_RECHECK_MS)
			return true;
		int64_t dv;
		if (data_version(db, &dv) && dv == f->dv) {
			f->dv_at = now;
			return true;
		}
	}
	if (db->built_at && now - db->built_at < FILTER_RECHECK_MS)
		return false;
	db->built_at = now;
	return filter_build(db, now);
}

/* Under mu, after a committed change of (sc, a): counted in suppress.gen
 * for every process; this process's filter takes it in directly when it was
 * exact until now (a deleted key keeps its bits: it is only looked up). */
static void note_change(struct suppress_db *db, const char *sc, const char *a, bool added)
{
	uint64_t before = suppress_gen_bump(&db->gen);
	struct suppress_filter *f = &db->filter;
	if (f->valid && before == f->gen && (!added || suppress_filter_add(f, sc, a)))
		f->gen = before + 1;
	else
		f->valid = false;
}

int suppress_add(struct suppress_db *db, const char *scope, const char *addr,
                 enum suppress_reason reason, const char *detail, const char *queue_id)
{
	char a[SUPPRESS_ADDR_MAX], sc[SUPPRESS_DOMAIN_MAX];
	if (!suppress_norm_addr(addr, a, sizeof(a)) || !norm_scope(scope, sc, sizeof(sc)) ||
	    (unsigned)reason >= 4)
		return TERN_EINVAL;
	int rc = TERN_EIO;
	pthread_mutex_lock(&db->mu);
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db->db,
	                       "INSERT OR REPLACE INTO suppressed (scope, addr, reason, detail, "
	                       "created, queue_id) VALUES (?, ?, ?, ?, ?, ?)",
	                       -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, sc, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, a, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, reason_names[reason], -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, detail ? detail : "", -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)time(NULL));
	sqlite3_bind_text(st, 6, queue_id ? queue_id : "", -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_DONE) {
		rc = TERN_OK;
		note_change(db, sc, a, true);
	}
out:
	if (rc != TERN_OK)
		log_error("event=suppress_write_failed reason=\"%s\"", sqlite3_errmsg(db->db));
	sqlite3_finalize(st);
	pthread_mutex_unlock(&db->mu);
	return rc;
}

int suppress_del(struct suppress_db *db, const char *scope, const char *addr)
{
	char a[SUPPRESS_ADDR_MAX], sc[SUPPRESS_DOMAIN_MAX];
	if (!suppress_norm_addr(addr, a, sizeof(a)) || !norm_scope(scope, sc, sizeof(sc)))
		return TERN_EINVAL;
	int rc = TERN_EIO;
	pthread_mutex_lock(&db->mu);
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db->db, "DELETE FROM suppressed WHERE scope = ? AND addr = ?", -1,
	                       &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, sc, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, a, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_DONE)
		rc = sqlite3_changes(db->db) > 0 ? TERN_OK : TERN_ENOTFOUND;
	if (rc == TERN_OK)
		note_change(db, sc, a, false);
out:
	sqlite3_finalize(st);
	pthread_mutex_unlock(&db->mu);
	return rc;
}

static void row_entry(sqlite3_stmt *st, struct suppress_entry *e)
{
	memset(e, 0, sizeof(*e));
	const char *s;
	if ((s = (const char *)sqlite3_column_text(st, 0)))
		tern_strlcpy(e->scope, s, sizeof(e->scope));
	if ((s = (const char *)sqlite3_column_text(st, 1)))
		tern_strlcpy(e->addr, s, sizeof(e->addr));
	s = (const char *)sqlite3_column_text(st, 2);
	if (!s || !suppress_reason_parse(s, &e->reason))
		e->reason = SUPPRESS_MANUAL;
	if ((s = (const char *)sqlite3_column_text(st, 3)))
		tern_strlcpy(e->detail, s, sizeof(e->detail));
	e->created = sqlite3_column_int64(st, 4);
	if ((s = (const char *)sqlite3_column_text(st, 5)))
		tern_strlcpy(e->queue_id, s, sizeof(e->queue_id));
}

bool suppress_check(struct suppress_db *db, const char *sender_domain, const char *addr,
                    struct suppress_entry *e)
{
	char a[SUPPRESS_ADDR_MAX], sc[SUPPRESS_DOMAIN_MAX];
	if (!db || !suppress_norm_addr(addr, a, sizeof(a)) ||
	    !norm_scope(sender_domain, sc, sizeof(sc)))
		return false;
	bool found = false;
	pthread_mutex_lock(&db->mu);
	/* Point lookups on the primary key (scope, addr): the domain's entry
	 * first, then the global one. (One query with "scope = ? OR scope = ''"
	 * built a temporary b-tree for every call.) */
	if (!db->check_st &&
	    (sqlite3_prepare_v3(db->db,
	                        "SELECT scope, addr, reason, detail, created, queue_id FROM "
	                        "suppressed WHERE scope = ? AND addr = ?",
	                        -1, SQLITE_PREPARE_PERSISTENT, &db->check_st, NULL) != SQLITE_OK ||
	     sqlite3_prepare_v3(db->db, "BEGIN", -1, SQLITE_PREPARE_PERSISTENT, &db->begin_st,
	                        NULL) != SQLITE_OK ||
	     sqlite3_prepare_v3(db->db, "COMMIT", -1, SQLITE_PREPARE_PERSISTENT, &db->end_st,
	                        NULL) != SQLITE_OK)) {
		log_error("event=suppress_read_failed reason=\"%s\"", sqlite3_errmsg(db->db));
		sqlite3_finalize(db->check_st);
		sqlite3_finalize(db->begin_st);
		sqlite3_finalize(db->end_st);
		db->check_st = db->begin_st = db->end_st = NULL;
		goto out;
	}
	/* Nearly every recipient is on no list: answered from memory. */
	if (filter_usable(db) && !suppress_filter_maybe(&db->filter, sc, a) &&
	    !suppress_filter_maybe(&db->filter, "", a))
		goto out;
	sqlite3_stmt *st = db->check_st;
	const char *scopes[2] = {sc, ""};
	/* Two lookups: one read transaction (one WAL read lock), not two. */
	bool txn = sc[0] && sqlite3_step(db->begin_st) == SQLITE_DONE;
	sqlite3_reset(db->begin_st);
	for (size_t i = sc[0] ? 0 : 1; i < 2 && !found; i++) {
		sqlite3_bind_text(st, 1, scopes[i], -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, a, -1, SQLITE_STATIC);
		int r = sqlite3_step(st);
		if (r == SQLITE_ROW) {
			found = true;
			if (e)
				row_entry(st, e);
		} else if (r != SQLITE_DONE) {
			log_error("event=suppress_read_failed reason=\"%s\"",
			          sqlite3_errmsg(db->db));
		}
		sqlite3_reset(st);
	}
	if (txn) {
		(void)sqlite3_step(db->end_st); /* a read-only transaction: nothing to fail */
		sqlite3_reset(db->end_st);
	}
	sqlite3_clear_bindings(st); /* a and sc are on this stack */
out:
	pthread_mutex_unlock(&db->mu);
	return found;
}

int suppress_list(struct suppress_db *db, const char *scope,
                  bool (*fn)(const struct suppress_entry *e, void *arg), void *arg)
{
	char sc[SUPPRESS_DOMAIN_MAX];
	if (scope && !norm_scope(scope, sc, sizeof(sc)))
		return TERN_EINVAL;
	int n = 0;
	pthread_mutex_lock(&db->mu);
	sqlite3_stmt *st = NULL;
	const char *sql = scope ? "SELECT scope, addr, reason, detail, created, queue_id FROM "
	                          "suppressed WHERE scope = ? ORDER BY scope, addr"
	                        : "SELECT scope, addr, reason, detail, created, queue_id FROM "
	                          "suppressed ORDER BY scope, addr";
	if (sqlite3_prepare_v2(db->db, sql, -1, &st, NULL) != SQLITE_OK) {
		n = TERN_EIO;
		goto out;
	}
	if (scope)
		sqlite3_bind_text(st, 1, sc, -1, SQLITE_STATIC);
	int r;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		struct suppress_entry e;
		row_entry(st, &e);
		n++;
		if (!fn(&e, arg))
			break;
	}
	if (r != SQLITE_ROW && r != SQLITE_DONE)
		n = TERN_EIO;
out:
	sqlite3_finalize(st);
	pthread_mutex_unlock(&db->mu);
	return n;
}

/* ---- the key ------------------------------------------------------------------ */

int suppress_key_load(const char *data_dir, unsigned char key[SUPPRESS_KEY_LEN])
{
	char path[4096];
	if ((size_t)snprintf(path, sizeof(path), "%s/suppress.key", data_dir) >= sizeof(path))
		return TERN_ELIMIT;
	for (int attempt = 0; attempt < 2; attempt++) {
		int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		if (fd >= 0) {
			ssize_t got = read(fd, key, SUPPRESS_KEY_LEN);
			close(fd);
			return got == SUPPRESS_KEY_LEN ? TERN_OK : TERN_EIO;
		}
		if (errno != ENOENT)
			return TERN_EIO;
		/* First use: a fresh key, made durable before any token uses it.
		 * O_EXCL: two processes racing both end up reading the winner's. */
		unsigned char fresh[SUPPRESS_KEY_LEN];
		if (RAND_bytes(fresh, sizeof(fresh)) != 1)
			return TERN_EIO;
		if (tern_mkdir_p(data_dir, 0700, false, NULL) != TERN_OK)
			return TERN_EIO;
		char tmp[4200];
		snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long)getpid());
		fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0)
			return TERN_EIO;
		bool ok = tern_write_full(fd, fresh, sizeof(fresh)) == TERN_OK && fsync(fd) == 0;
		ok = close(fd) == 0 && ok;
		/* link() fails with EEXIST if another process won the race. */
		if (ok && link(tmp, path) != 0 && errno != EEXIST)
			ok = false;
		unlink(tmp);
		OPENSSL_cleanse(fresh, sizeof(fresh));
		if (!ok)
			return TERN_EIO;
		tern_fsync_parent(path);
	}
	return TERN_EIO;
}

/* The HMAC-SHA256 of msg under key as lowercase hex, first hexlen digits. */
static void mac_hex(const unsigned char key[SUPPRESS_KEY_LEN], const char *domain_sep,
                    const void *msg, size_t len, char *out, size_t hexlen)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	/* A label per scheme, so a token of one kind is never valid as the other. */
	size_t sl = strlen(domain_sep);
	unsigned char *buf = malloc(sl + 1 + len);
	if (!buf) {
		memset(out, '0', hexlen);
		out[hexlen] = '\0';
		return;
	}
	memcpy(buf, domain_sep, sl);
	buf[sl] = 0;
	memcpy(buf + sl + 1, msg, len);
	HMAC(EVP_sha256(), key, SUPPRESS_KEY_LEN, buf, sl + 1 + len, md, &mdlen);
	free(buf);
	static const char hx[] = "0123456789abcdef";
	for (size_t i = 0; i < hexlen && i / 2 < mdlen; i++)
		out[i] = hx[(md[i / 2] >> (i % 2 ? 0 : 4)) & 15];
	out[hexlen] = '\0';
}

/* ---- VERP ---------------------------------------------------------------------- */

#define VERP_PREFIX "bounce+"
#define VERP_MAC_HEX 16

int suppress_verp_address(const unsigned char key[SUPPRESS_KEY_LEN], const char *queue_id,
                          size_t rcpt_idx, const char *verp_domain, char *out, size_t outlen)
{
	char ref[64], mac[VERP_MAC_HEX + 1];
	if ((size_t)snprintf(ref, sizeof(ref), "%s-%zu", queue_id, rcpt_idx) >= sizeof(ref))
		return TERN_ELIMIT;
	tern_ascii_lower(ref);
	mac_hex(key, "verp", ref, strlen(ref), mac, VERP_MAC_HEX);
	int n = snprintf(out, outlen, VERP_PREFIX "%s-%s@%s", ref, mac, verp_domain);
	if (n < 0 || (size_t)n >= outlen ||
	    strlen(VERP_PREFIX) + strlen(ref) + 1 + VERP_MAC_HEX > SUPPRESS_VERP_LOCAL_MAX)
		return TERN_ELIMIT;
	tern_ascii_lower(out);
	return TERN_OK;
}

bool suppress_verp_verify(const unsigned char key[SUPPRESS_KEY_LEN], const char *local_part,
                          char *ref, size_t reflen)
{
	size_t pl = strlen(VERP_PREFIX), n = strlen(local_part);
	if (n <= pl + VERP_MAC_HEX + 1 || n > SUPPRESS_VERP_LOCAL_MAX ||
	    strncasecmp(local_part, VERP_PREFIX, pl) != 0)
		return false;
	const char *tok = local_part + pl;
	size_t tl = n - pl;
	size_t rl = tl - VERP_MAC_HEX - 1;
	if (tok[rl] != '-' || rl + 1 > reflen || rl >= 64)
		return false;
	char r[64], mac[VERP_MAC_HEX + 1], given[VERP_MAC_HEX + 1];
	memcpy(r, tok, rl);
	r[rl] = '\0';
	tern_ascii_lower(r);
	memcpy(given, tok + rl + 1, VERP_MAC_HEX);
	given[VERP_MAC_HEX] = '\0';
	tern_ascii_lower(given);
	mac_hex(key, "verp", r, rl, mac, VERP_MAC_HEX);
	if (CRYPTO_memcmp(mac, given, VERP_MAC_HEX) != 0)
		return false;
	memcpy(ref, r, rl + 1);
	return true;
}

int suppress_verp_remember(struct suppress_db *db, const char *queue_id, size_t rcpt_idx,
                           const char *rcpt, const char *sender_domain)
{
	char ref[64];
	if ((size_t)snprintf(ref, sizeof(ref), "%s-%zu", queue_id, rcpt_idx) >= sizeof(ref))
		return TERN_ELIMIT;
	tern_ascii_lower(ref);
	int rc = TERN_EIO;
	int64_t now = (int64_t)time(NULL);
	pthread_mutex_lock(&db->mu);
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db->db,
	                       "INSERT OR REPLACE INTO verp (ref, rcpt, sender_domain, created) "
	                       "VALUES (?, ?, ?, ?)",
	                       -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, ref, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, rcpt, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, sender_domain ? sender_domain : "", -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)now);
	if (sqlite3_step(st) == SQLITE_DONE)
		rc = TERN_OK;
	/* Old entries go now and then (about one insert in 256). */
	if (rc == TERN_OK && (now & 0xff) == 0) {
		char sql[128];
		snprintf(sql, sizeof(sql), "DELETE FROM verp WHERE created < %lld",
		         (long long)(now - VERP_KEEP_SECONDS));
		sqlite3_exec(db->db, sql, NULL, NULL, NULL);
	}
out:
	if (rc != TERN_OK)
		log_error("event=suppress_write_failed reason=\"%s\"", sqlite3_errmsg(db->db));
	sqlite3_finalize(st);
	pthread_mutex_unlock(&db->mu);
	return rc;
}

int suppress_verp_lookup(struct suppress_db *db, const char *ref, char *rcpt, size_t rcptlen,
                         char *sender_domain, size_t sdlen)
{
	int rc = TERN_ENOTFOUND;
	pthread_mutex_lock(&db->mu);
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db->db, "SELECT rcpt, sender_domain FROM verp WHERE ref = ?", -1,
	                       &st, NULL) != SQLITE_OK) {
		rc = TERN_EIO;
		goto out;
	}
	sqlite3_bind_text(st, 1, ref, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		const char *a = (const char *)sqlite3_column_text(st, 0);
		const char *d = (const char *)sqlite3_column_text(st, 1);
		tern_strlcpy(rcpt, a ? a : "", rcptlen);
		tern_strlcpy(sender_domain, d ? d : "", sdlen);
		rc = TERN_OK;
	}
out:
	sqlite3_finalize(st);
	pthread_mutex_unlock(&db->mu);
	return rc;
}

/* ---- one-click unsubscribe ---------------------------------------------------- */

#define UNSUB_MAC_HEX 32

int suppress_unsub_token(const unsigned char key[SUPPRESS_KEY_LEN], const char *scope,
                         const char *addr, char *out, size_t outlen)
{
	char a[SUPPRESS_ADDR_MAX], sc[SUPPRESS_DOMAIN_MAX];
	if (!suppress_norm_addr(addr, a, sizeof(a)) || !norm_scope(scope, sc, sizeof(sc)))
		return TERN_EINVAL;
	char payload[SUPPRESS_ADDR_MAX + SUPPRESS_DOMAIN_MAX + 2];
	int pl = snprintf(payload, sizeof(payload), "%s\n%s", sc, a);
	if (pl < 0 || (size_t)pl >= sizeof(payload))
		return TERN_ELIMIT;
	if ((size_t)pl * 2 + 1 + UNSUB_MAC_HEX + 1 > outlen)
		return TERN_ELIMIT;
	static const char hx[] = "0123456789abcdef";
	size_t k = 0;
	for (int i = 0; i < pl; i++) {
		out[k++] = hx[(unsigned char)payload[i] >> 4];
		out[k++] = hx[(unsigned char)payload[i] & 15];
	}
	out[k++] = '.';
	mac_hex(key, "unsubscribe", payload, (size_t)pl, out + k, UNSUB_MAC_HEX);
	return TERN_OK;
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

bool suppress_unsub_verify(const unsigned char key[SUPPRESS_KEY_LEN], const char *tok,
                           size_t toklen, char *scope, size_t scopelen, char *addr, size_t addrlen)
{
	const char *dot = memchr(tok, '.', toklen);
	if (!dot)
		return false;
	size_t hl = (size_t)(dot - tok);
	if (hl == 0 || hl % 2 || toklen - hl - 1 != UNSUB_MAC_HEX)
		return false;
	char payload[SUPPRESS_ADDR_MAX + SUPPRESS_DOMAIN_MAX + 2];
	if (hl / 2 + 1 > sizeof(payload))
		return false;
	for (size_t i = 0; i < hl; i += 2) {
		int h = hexval(tok[i]), l = hexval(tok[i + 1]);
		if (h < 0 || l < 0)
			return false;
		payload[i / 2] = (char)(h << 4 | l);
	}
	size_t pl = hl / 2;
	payload[pl] = '\0';
	if (memchr(payload, '\0', pl))
		return false;
	char mac[UNSUB_MAC_HEX + 1];
	mac_hex(key, "unsubscribe", payload, pl, mac, UNSUB_MAC_HEX);
	if (CRYPTO_memcmp(mac, dot + 1, UNSUB_MAC_HEX) != 0)
		return false;
	char *nl = strchr(payload, '\n');
	if (!nl)
		return false;
	*nl = '\0';
	if (strlen(payload) + 1 > scopelen || strlen(nl + 1) + 1 > addrlen)
		return false;
	memcpy(scope, payload, strlen(payload) + 1);
	memcpy(addr, nl + 1, strlen(nl + 1) + 1);
	return true;
}

int suppress_unsub_headers(const unsigned char key[SUPPRESS_KEY_LEN], const char *base_url,
                           const char *scope, const char *addr, const char *mailto, char *out,
                           size_t outlen)
{
	char tok[(SUPPRESS_ADDR_MAX + SUPPRESS_DOMAIN_MAX + 2) * 2 + 64];
	int rc = suppress_unsub_token(key, scope, addr, tok, sizeof(tok));
	if (rc != TERN_OK)
		return rc;
	size_t bl = strlen(base_url);
	while (bl > 0 && base_url[bl - 1] == '/')
		bl--;
	int n = snprintf(out, outlen,
	                 "List-Unsubscribe: <%.*s/unsubscribe/%s>%s%s%s\r\n"
	                 "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
	                 (int)bl, base_url, tok, mailto ? ", <mailto:" : "", mailto ? mailto : "",
	                 mailto ? ">" : "");
	return n < 0 || (size_t)n >= outlen ? TERN_ELIMIT : TERN_OK;
}

int suppress_list_unsubscribe_fields(const struct tern_config *conf, const char *sender,
                                     const char *rcpt, const char *mailto, char *out, size_t outlen)
{
	if (!conf->suppression.enabled || !conf->suppression.unsubscribe_url)
		return TERN_ENOTFOUND;
	unsigned char key[SUPPRESS_KEY_LEN];
	if (suppress_key_load(conf->data_dir, key) != TERN_OK)
		return TERN_EIO;
	char sd[SUPPRESS_DOMAIN_MAX];
	suppress_sender_domain(sender, sd, sizeof(sd));
	int rc = suppress_unsub_headers(key, conf->suppression.unsubscribe_url, sd, rcpt, mailto,
	                                out, outlen);
	OPENSSL_cleanse(key, sizeof(key));
	return rc;
}

/* ---- intake ----------------------------------------------------------------------- */

/* Whether rcpt is a VERP return path under the configured domain; its local
 * part into lp. */
static bool verp_rcpt(const struct tern_config *conf, const char *rcpt, char *lp, size_t lplen)
{
	const char *vd = conf->suppression.verp_domain;
	const char *at = strrchr(rcpt, '@');
	if (!vd || !at || strcasecmp(at + 1, vd) != 0)
		return false;
	size_t n = (size_t)(at - rcpt);
	if (n < strlen(VERP_PREFIX) || strncasecmp(rcpt, VERP_PREFIX, strlen(VERP_PREFIX)) != 0 ||
	    n + 1 > lplen)
		return false;
	memcpy(lp, rcpt, n);
	lp[n] = '\0';
	return true;
}

bool suppress_intake_match(const struct tern_config *conf, const char *rcpt)
{
	char lp[256];
	if (!conf->suppression.enabled || !rcpt)
		return false;
	if (conf->suppression.feedback_address &&
	    strcasecmp(rcpt, conf->suppression.feedback_address) == 0)
		return true;
	return verp_rcpt(conf, rcpt, lp, sizeof(lp));
}

void suppress_emit_event(int type, const char *queue_id, const char *addr, const char *scope,
                         const char *detail)
{
	if (!events_enabled())
		return;
	json_t *md = json_pack("{s:s}", "domain", scope ? scope : "");
	char *mds = md ? json_dumps(md, JSON_COMPACT) : NULL;
	events_emit(&(struct tern_event){.type = (enum tern_event_type)type,
	                                 .queue_id = queue_id,
	                                 .recipient = addr,
	                                 .metadata = mds,
	                                 .reply = detail});
	free(mds);
	json_decref(md);
}

void suppress_intake(const struct tern_config *conf, const char *rcpt, const char *msg, size_t len,
                     const char *queue_id, struct suppress_intake_result *res)
{
	memset(res, 0, sizeof(*res));
	struct suppress_report *rep = malloc(sizeof(*rep));
	unsigned char key[SUPPRESS_KEY_LEN];
	struct suppress_db *db = suppress_shared(conf->data_dir);
	if (!rep || !db || suppress_key_load(conf->data_dir, key) != TERN_OK) {
		tern_strlcpy(res->what, "store-unavailable", sizeof(res->what));
		free(rep);
		return;
	}
	suppress_parse_report(msg, len, rep);
	char ref[64], addr[SUPPRESS_ADDR_MAX] = "", scope[SUPPRESS_DOMAIN_MAX] = "";
	char lp[256];
	enum suppress_reason reason = SUPPRESS_BOUNCE;
	char detail[512] = "";
	if (verp_rcpt(conf, rcpt, lp, sizeof(lp))) {
		if (!suppress_verp_verify(key, lp, ref, sizeof(ref))) {
			tern_strlcpy(res->what, "forged-token", sizeof(res->what));
			goto out;
		}
		if (suppress_verp_lookup(db, ref, addr, sizeof(addr), scope, sizeof(scope)) !=
		    TERN_OK) {
			tern_strlcpy(res->what, "unknown-token", sizeof(res->what));
			goto out;
		}
		/* The token names the recipient; the DSN must say it failed for
		 * good. With several recipient blocks, the one naming it counts,
		 * else any (a DSN about a VERP message has one recipient). */
		const struct suppress_report_rcpt *hard = NULL;
		for (size_t i = 0; rep->kind == SUPPRESS_REPORT_DSN && i < rep->n_rcpts; i++) {
			if (!suppress_rcpt_is_hard(&rep->rcpts[i]))
				continue;
			if (!hard || strcasecmp(rep->rcpts[i].final_rcpt, addr) == 0)
				hard = &rep->rcpts[i];
		}
		if (!hard) {
			snprintf(res->what, sizeof(res->what), "%s-not-permanent",
			         rep->kind == SUPPRESS_REPORT_DSN ? "dsn" : "not-a-dsn");
			goto out;
		}
		snprintf(detail, sizeof(detail), "%s %s (asynchronous DSN)", hard->status,
		         hard->diagnostic);
		snprintf(res->what, sizeof(res->what), "dsn %s", hard->status);
	} else {
		/* The feedback address: an ARF report. */
		if (rep->kind != SUPPRESS_REPORT_ARF) {
			tern_strlcpy(res->what, "not-arf", sizeof(res->what));
			goto out;
		}
		reason = SUPPRESS_COMPLAINT;
		char mf[SUPPRESS_ADDR_MAX];
		if (verp_rcpt(conf, rep->orig_return_path, lp, sizeof(lp))) {
			/* One of our VERP return paths: the token names recipient and
			 * sending domain, and a report whose token does not verify is
			 * forged (a real one carries the return path we sent). */
			if (!suppress_verp_verify(key, lp, ref, sizeof(ref))) {
				tern_strlcpy(res->what, "forged-token", sizeof(res->what));
				goto out;
			}
			if (suppress_verp_lookup(db, ref, addr, sizeof(addr), scope,
			                         sizeof(scope)) != TERN_OK) {
				tern_strlcpy(res->what, "unknown-token", sizeof(res->what));
				goto out;
			}
		} else {
			tern_strlcpy(
			    addr, rep->original_rcpt_to[0] ? rep->original_rcpt_to : rep->orig_to,
			    sizeof(addr));
			tern_strlcpy(mf,
			             rep->original_mail_from[0] ? rep->original_mail_from
			                                        : rep->orig_from,
			             sizeof(mf));
			suppress_sender_domain(mf, scope, sizeof(scope));
		}
		if (!addr[0]) {
			tern_strlcpy(res->what, "arf-no-recipient", sizeof(res->what));
			goto out;
		}
		snprintf(detail, sizeof(detail), "feedback-type=%s",
		         rep->feedback_type[0] ? rep->feedback_type : "unknown");
		snprintf(res->what, sizeof(res->what), "arf %s",
		         rep->feedback_type[0] ? rep->feedback_type : "unknown");
	}
	if (suppress_add(db, scope, addr, reason, detail, queue_id) == TERN_OK) {
		res->suppressed = true;
		suppress_norm_addr(addr, res->addr, sizeof(res->addr));
		tern_strlcpy(res->scope, scope, sizeof(res->scope));
		/* A complaint is an event of its own (an asynchronous DSN is the
		 * remote's word on a message already counted delivered). The queue
		 * id is the report's; metadata names the list's sending domain. */
		if (reason == SUPPRESS_COMPLAINT)
			suppress_emit_event(EV_COMPLAINED, queue_id, res->addr, scope, detail);
	} else {
		tern_strlcpy(res->what, "bad-address", sizeof(res->what));
	}
out:
	OPENSSL_cleanse(key, sizeof(key));
	free(rep);
}
