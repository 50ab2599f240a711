/*
 * quota.c — sending quota counters (store/quota.h): a process-wide table of
 * (kind, name) -> counts in fixed second/hour/day windows, with the hour
 * and day counts mirrored in DATA/quota.db so a restart keeps them.
 *
 * Owns: the table, its mutex and the SQLite handle.
 * Must never: write SQLite from a caller's thread (a write-behind thread
 * does, about once a second and at close), refuse a message when the store
 * cannot be written (counting goes on in memory).
 */
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "store/quota.h"

struct entry {
	enum quota_kind kind;
	char *name;
	int64_t win[3];    /* start of the current window, per enum quota_window */
	uint64_t count[3]; /* messages charged in it */
	bool dirty;        /* hour/day counts not yet written */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct entry *tab;
static size_t n_tab, cap_tab;
static sqlite3 *db; /* the flusher's once open() has loaded */
static unsigned opens;
static pthread_t flusher;
static bool flusher_on, stopping;
static pthread_cond_t flush_cv = PTHREAD_COND_INITIALIZER;

static const char schema[] = "CREATE TABLE IF NOT EXISTS quota ("
                             " kind INTEGER NOT NULL,"
                             " name TEXT NOT NULL,"
                             " hour_start INTEGER NOT NULL,"
                             " hour_count INTEGER NOT NULL,"
                             " day_start INTEGER NOT NULL,"
                             " day_count INTEGER NOT NULL,"
                             " PRIMARY KEY (kind, name));";

static const int64_t span[3] = {1, 3600, 86400};

const char *quota_window_name(enum quota_window w)
{
	return w == QUOTA_SECOND ? "second" : w == QUOTA_HOUR ? "hour" : "day";
}

const char *quota_kind_name(enum quota_kind k)
{
	return k == QUOTA_KEY ? "key" : k == QUOTA_DOMAIN ? "domain" : "user";
}

bool quota_limits_any(const struct quota_limits *l)
{
	return l->per_second || l->per_hour || l->per_day;
}

static int64_t win_start(enum quota_window w, int64_t now)
{
	return now - now % span[w];
}

static size_t *idx;    /* open addressing over tab: index + 1, 0 = empty */
static size_t cap_idx; /* a power of two, at least twice n_tab */

static size_t hash(enum quota_kind kind, const char *name)
{
	uint64_t h = 1469598103934665603ULL ^ (uint64_t)kind; /* FNV-1a */
	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		h = (h ^ *p) * 1099511628211ULL;
	return (size_t)h;
}

/* Rebuilds idx with cap slots (a power of two). Under mu. */
static bool reindex(size_t cap)
{
	size_t *v = calloc(cap, sizeof(*v));
	if (!v)
		return false;
	for (size_t i = 0; i < n_tab; i++) {
		size_t j = hash(tab[i].kind, tab[i].name) & (cap - 1);
		while (v[j])
			j = (j + 1) & (cap - 1);
		v[j] = i + 1;
	}
	free(idx);
	idx = v;
	cap_idx = cap;
	return true;
}

/* The entry of (kind, name), made when make is true; NULL when absent or
 * out of memory. Under mu. The pointer lasts until the next find(make). */
static struct entry *find(enum quota_kind kind, const char *name, bool make)
{
	size_t j = cap_idx ? hash(kind, name) & (cap_idx - 1) : 0;
	for (; cap_idx && idx[j]; j = (j + 1) & (cap_idx - 1)) {
		struct entry *e = &tab[idx[j] - 1];
		if (e->kind == kind && strcmp(e->name, name) == 0)
			return e;
	}
	if (!make)
		return NULL;
	if (n_tab == cap_tab) {
		size_t c = cap_tab ? 2 * cap_tab : 16;
		struct entry *v = realloc(tab, c * sizeof(*v));
		if (!v)
			return NULL;
		tab = v;
		cap_tab = c;
	}
	if (2 * (n_tab + 1) > cap_idx && !reindex(cap_idx ? 2 * cap_idx : 32))
		return NULL;
	char *dup = tern_strdup(name);
	if (!dup)
		return NULL;
	tab[n_tab] = (struct entry){.kind = kind, .name = dup};
	j = hash(kind, name) & (cap_idx - 1);
	while (idx[j])
		j = (j + 1) & (cap_idx - 1);
	idx[j] = n_tab + 1;
	return &tab[n_tab++];
}

/* The count of e's window w at now (0 once the window has moved on). */
static uint64_t current(const struct entry *e, enum quota_window w, int64_t now)
{
	return e && e->win[w] == win_start(w, now) ? e->count[w] : 0;
}

static void load(void)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db,
	                       "SELECT kind, name, hour_start, hour_count, day_start, day_count "
	                       "FROM quota",
	                       -1, &st, NULL) != SQLITE_OK)
		return;
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(st, 1);
		if (!name)
			continue;
		struct entry *e = find((enum quota_kind)sqlite3_column_int(st, 0), name, true);
		if (!e)
			break;
		e->win[QUOTA_HOUR] = sqlite3_column_int64(st, 2);
		e->count[QUOTA_HOUR] = (uint64_t)sqlite3_column_int64(st, 3);
		e->win[QUOTA_DAY] = sqlite3_column_int64(st, 4);
		e->count[QUOTA_DAY] = (uint64_t)sqlite3_column_int64(st, 5);
	}
	sqlite3_finalize(st);
}

static void *flush_main(void *arg);

int quota_open(const char *data_dir)
{
	int rc = TERN_OK;
	pthread_mutex_lock(&mu);
	if (opens++ > 0 || !data_dir)
		goto out;
	char path[4096];
	snprintf(path, sizeof(path), "%s/quota.db", data_dir);
	if (sqlite3_open_v2(path, &db,
	                    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
	                    NULL) != SQLITE_OK ||
	    sqlite3_exec(db, schema, NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(db, "PRAGMA synchronous=OFF", NULL, NULL, NULL) != SQLITE_OK) {
		log_error("event=quota_open_failed path=%s reason=\"%s\"", path,
		          db ? sqlite3_errmsg(db) : "out of memory");
		sqlite3_close(db);
		db = NULL;
		rc = TERN_EIO;
		goto out;
	}
	sqlite3_busy_timeout(db, 2000);
	load();
	stopping = false;
	flusher_on = pthread_create(&flusher, NULL, flush_main, NULL) == 0;
out:
	pthread_mutex_unlock(&mu);
	return rc;
}

void quota_close(void)
{
	pthread_mutex_lock(&mu);
	if (opens == 1 && flusher_on) { /* the last one: write what is left */
		stopping = true;
		pthread_cond_signal(&flush_cv);
		pthread_mutex_unlock(&mu);
		pthread_join(flusher, NULL);
		pthread_mutex_lock(&mu);
		flusher_on = false;
	}
	if (opens > 0 && --opens == 0) {
		sqlite3_close(db);
		db = NULL;
		for (size_t i = 0; i < n_tab; i++)
			free(tab[i].name);
		free(tab);
		tab = NULL;
		n_tab = cap_tab = 0;
		free(idx);
		idx = NULL;
		cap_idx = 0;
	}
	pthread_mutex_unlock(&mu);
}

/* One row to write, copied out of the table under mu. */
struct row {
	enum quota_kind kind;
	char *name;
	int64_t win[3];
	uint64_t count[3];
};

/* Writes rows in one transaction (without mu: charges go on meanwhile). A
 * failure is logged, no more: the counts stay right in memory. */
static void write_rows(const struct row *r, size_t n)
{
	sqlite3_stmt *st = NULL;
	bool ok = sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK &&
	          sqlite3_prepare_v2(db,
	                             "INSERT OR REPLACE INTO quota (kind, name, hour_start, "
	                             "hour_count, day_start, day_count) VALUES (?, ?, ?, ?, ?, ?)",
	                             -1, &st, NULL) == SQLITE_OK;
	for (size_t i = 0; ok && i < n; i++) {
		sqlite3_reset(st);
		sqlite3_bind_int(st, 1, (int)r[i].kind);
		sqlite3_bind_text(st, 2, r[i].name, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, r[i].win[QUOTA_HOUR]);
		sqlite3_bind_int64(st, 4, (sqlite3_int64)r[i].count[QUOTA_HOUR]);
		sqlite3_bind_int64(st, 5, r[i].win[QUOTA_DAY]);
		sqlite3_bind_int64(st, 6, (sqlite3_int64)r[i].count[QUOTA_DAY]);
		ok = sqlite3_step(st) == SQLITE_DONE;
	}
	sqlite3_finalize(st);
	ok = ok && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK;
	if (!ok) {
		log_warn("event=quota_write_failed rows=%zu reason=\"%s\"", n, sqlite3_errmsg(db));
		sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	}
}

/* Takes the dirty entries and writes them. Called with mu held; drops it
 * while writing. */
static void flush_locked(void)
{
	size_t n = 0;
	for (size_t i = 0; i < n_tab; i++)
		n += tab[i].dirty;
	if (n == 0 || !db)
		return;
	struct row *r = calloc(n, sizeof(*r));
	size_t k = 0;
	for (size_t i = 0; r && i < n_tab && k < n; i++) {
		if (!tab[i].dirty || !(r[k].name = tern_strdup(tab[i].name)))
			continue;
		tab[i].dirty = false;
		r[k].kind = tab[i].kind;
		memcpy(r[k].win, tab[i].win, sizeof(r[k].win));
		memcpy(r[k].count, tab[i].count, sizeof(r[k].count));
		k++;
	}
	pthread_mutex_unlock(&mu);
	write_rows(r, k);
	for (size_t i = 0; i < k; i++)
		free(r[i].name);
	free(r);
	pthread_mutex_lock(&mu);
}

/* The write-behind thread: writes what changed about once a second, so a
 * charge never waits for the disk (SMTP charges on the event loop). */
static void *flush_main(void *arg)
{
	pthread_mutex_lock(&mu);
	while (!stopping) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&flush_cv, &mu, &ts);
		flush_locked();
	}
	flush_locked();
	pthread_mutex_unlock(&mu);
	return NULL;
}

/* The first full window of asks at now: TERN_ELIMIT and *why, else TERN_OK.
 * Under mu. */
static int check_locked(const struct quota_ask *asks, size_t n, int64_t now,
                        struct quota_refusal *why)
{
	int rc = TERN_OK;
	for (size_t i = 0; i < n && rc == TERN_OK; i++) {
		const struct entry *e = find(asks[i].kind, asks[i].name, false);
		const uint64_t lim[3] = {asks[i].lim.per_second, asks[i].lim.per_hour,
		                         asks[i].lim.per_day};
		for (int w = QUOTA_SECOND; w <= QUOTA_DAY; w++) {
			if (!lim[w] || current(e, (enum quota_window)w, now) < lim[w])
				continue;
			why->kind = asks[i].kind;
			snprintf(why->name, sizeof(why->name), "%s", asks[i].name);
			why->window = (enum quota_window)w;
			why->limit = lim[w];
			why->retry_after = win_start((enum quota_window)w, now) + span[w] - now;
			rc = TERN_ELIMIT;
			break;
		}
	}
	return rc;
}

int quota_check(const struct quota_ask *asks, size_t n, int64_t now, struct quota_refusal *why)
{
	pthread_mutex_lock(&mu);
	int rc = check_locked(asks, n, now, why);
	pthread_mutex_unlock(&mu);
	return rc;
}

int quota_take(const struct quota_ask *asks, size_t n, int64_t now, struct quota_refusal *why)
{
	pthread_mutex_lock(&mu);
	int rc = check_locked(asks, n, now, why);
	for (size_t i = 0; i < n && rc == TERN_OK; i++) {
		struct entry *e = find(asks[i].kind, asks[i].name, true);
		if (!e)
			continue; /* out of memory: not counted rather than refused */
		for (int w = QUOTA_SECOND; w <= QUOTA_DAY; w++) {
			int64_t s = win_start((enum quota_window)w, now);
			if (e->win[w] != s) {
				e->win[w] = s;
				e->count[w] = 0;
			}
			e->count[w]++;
		}
		e->dirty = true;
	}
	pthread_mutex_unlock(&mu);
	return rc;
}

void quota_count(enum quota_kind kind, const char *name, int64_t now, uint64_t *sec, uint64_t *hour,
                 uint64_t *day)
{
	pthread_mutex_lock(&mu);
	const struct entry *e = find(kind, name, false);
	if (sec)
		*sec = current(e, QUOTA_SECOND, now);
	if (hour)
		*hour = current(e, QUOTA_HOUR, now);
	if (day)
		*day = current(e, QUOTA_DAY, now);
	pthread_mutex_unlock(&mu);
}

void quota_usage(const char *key_name, const struct quota_limits *lim, double *max24h,
                 double *max_rate, double *sent24h)
{
	uint64_t day = 0;
	quota_count(QUOTA_KEY, key_name, (int64_t)time(NULL), NULL, NULL, &day);
	*max24h = lim->per_day    ? (double)lim->per_day
	          : lim->per_hour ? (double)lim->per_hour * 24
	                          : -1;
	*max_rate = lim->per_second ? (double)lim->per_second : -1;
	*sent24h = (double)day;
}
