/*
 * webhook.c — Standard Webhooks signing, endpoint management and the sender
 * thread that drains the outbox of DATA/events.db (see webhook.h).
 *
 * Owns: its own SQLite connection and libcurl handle; the retry schedule;
 * disabling an endpoint that failed for the whole retry window.
 *
 * Must never: drop an outbox row that was not answered 2xx (a receiver that
 * is down only delays delivery); post a message's later event before its
 * earlier one reached the same endpoint; follow a redirect; log a secret.
 */
#include "store/webhook.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "core/err.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/timefmt.h"
#include "store/events.h"

int webhook_sign(const char *secret, const char *id, int64_t ts, const char *body, size_t body_len,
                 char *out, size_t outlen)
{
	unsigned char key[256], mac[EVP_MAX_MD_SIZE];
	unsigned mac_len = 0;
	int rc = TERN_EINVAL;
	if (!secret || strncmp(secret, "whsec_", 6) != 0 || outlen < 64)
		return TERN_EINVAL;
	const char *b64 = secret + 6;
	size_t n = strlen(b64);
	if (n == 0 || n % 4 != 0 || n / 4 * 3 > sizeof(key))
		return TERN_EINVAL;
	int kl = EVP_DecodeBlock(key, (const unsigned char *)b64, (int)n);
	if (kl < 0)
		return TERN_EINVAL;
	/* EVP_DecodeBlock counts the '=' padding as zero bytes: take them off. */
	if (n >= 1 && b64[n - 1] == '=')
		kl--;
	if (n >= 2 && b64[n - 2] == '=')
		kl--;
	char head[256];
	int hl = snprintf(head, sizeof(head), "%s.%" PRId64 ".", id, ts);
	if (hl < 0 || (size_t)hl >= sizeof(head))
		goto out;
	/* One buffer: HMAC() is the one-shot form OpenSSL 3 keeps undeprecated. */
	size_t ml = (size_t)hl + body_len;
	unsigned char *msg = malloc(ml ? ml : 1);
	if (!msg) {
		rc = TERN_ENOMEM;
		goto out;
	}
	memcpy(msg, head, (size_t)hl);
	memcpy(msg + hl, body, body_len);
	bool ok = HMAC(EVP_sha256(), key, kl, msg, ml, mac, &mac_len) != NULL;
	free(msg);
	if (!ok)
		goto out;
	memcpy(out, "v1,", 3);
	EVP_EncodeBlock((unsigned char *)out + 3, mac, (int)mac_len);
	rc = TERN_OK;
out:
	OPENSSL_cleanse(key, sizeof(key));
	return rc;
}

int webhook_secret_new(char *out, size_t outlen)
{
	unsigned char raw[24];
	if (outlen < 64 || RAND_bytes(raw, sizeof(raw)) != 1)
		return TERN_EINVAL;
	memcpy(out, "whsec_", 6);
	EVP_EncodeBlock((unsigned char *)out + 6, raw, sizeof(raw));
	OPENSSL_cleanse(raw, sizeof(raw));
	return TERN_OK;
}

/* Calls fn for each comma-separated name in list; stops when it returns false. */
static void each_name(const char *list, bool (*fn)(void *arg, const char *name), void *arg)
{
	while (list && *list) {
		char name[64];
		const char *c = strchr(list, ',');
		size_t n = c ? (size_t)(c - list) : strlen(list);
		while (n && (*list == ' ')) {
			list++;
			n--;
		}
		while (n && list[n - 1] == ' ')
			n--;
		if (n && n < sizeof(name)) {
			memcpy(name, list, n);
			name[n] = '\0';
			if (!fn(arg, name))
				return;
		} else if (n && !fn(arg, "?")) {
			return;
		}
		list = c ? c + 1 : NULL;
	}
}

static bool add_bit(void *arg, const char *name)
{
	int t = events_type_parse(name);
	if (t >= 0)
		*(unsigned *)arg |= 1u << t;
	return true;
}

unsigned webhook_filter_parse(const char *list)
{
	unsigned bits = 0;
	each_name(list, add_bit, &bits);
	return bits ? bits : (1u << EV__COUNT) - 1;
}

struct check_arg {
	char *bad;
	size_t len;
	bool ok;
};

static bool check_one(void *arg, const char *name)
{
	struct check_arg *c = arg;
	if (events_type_parse(name) >= 0)
		return true;
	snprintf(c->bad, c->len, "%s", name);
	c->ok = false;
	return false;
}

int webhook_filter_check(const char *list, char *bad, size_t badlen)
{
	struct check_arg c = {bad, badlen, true};
	each_name(list, check_one, &c);
	return c.ok ? TERN_OK : TERN_EINVAL;
}

int64_t webhook_backoff(uint32_t base, uint32_t max, uint32_t n)
{
	static const int64_t mul[] = {1, 6, 24, 120, 360, 720};
	size_t i = n ? n - 1 : 0;
	if (i >= sizeof(mul) / sizeof(mul[0]))
		i = sizeof(mul) / sizeof(mul[0]) - 1;
	int64_t d = (int64_t)(base ? base : 1) * mul[i];
	return max && d > (int64_t)max ? (int64_t)max : d;
}

/* ---- management ---- */

int webhook_add(sqlite3 *db, const char *url, const char *events, const char *key, int64_t *id,
                char *secret, size_t secretlen)
{
	sqlite3_stmt *st = NULL;
	int rc = webhook_secret_new(secret, secretlen);
	if (rc != TERN_OK)
		return rc;
	if (sqlite3_prepare_v2(db,
	                       "INSERT INTO webhooks(url, secret, events, key, created) "
	                       "VALUES(?,?,?,?,?)",
	                       -1, &st, NULL) != SQLITE_OK)
		return TERN_EIO;
	sqlite3_bind_text(st, 1, url, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, secret, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, events ? events : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, key ? key : "", -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, (int64_t)time(NULL));
	rc = sqlite3_step(st) == SQLITE_DONE ? TERN_OK : TERN_EIO;
	sqlite3_finalize(st);
	*id = sqlite3_last_insert_rowid(db);
	return rc;
}

int webhook_list(sqlite3 *db, FILE *out)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db,
	                       "SELECT w.id, w.url, w.events, w.key, w.status, "
	                       "(SELECT count(*) FROM outbox o WHERE o.endpoint = w.id AND "
	                       "o.done = 0) FROM webhooks w ORDER BY w.id",
	                       -1, &st, NULL) != SQLITE_OK)
		return TERN_EIO;
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *ev = (const char *)sqlite3_column_text(st, 2);
		const char *key = (const char *)sqlite3_column_text(st, 3);
		fprintf(out, "%lld %s events=%s key=%s pending=%lld status=%s\n",
		        (long long)sqlite3_column_int64(st, 0), sqlite3_column_text(st, 1),
		        ev && *ev ? ev : "all", key && *key ? key : "-",
		        (long long)sqlite3_column_int64(st, 5), sqlite3_column_text(st, 4));
	}
	sqlite3_finalize(st);
	return TERN_OK;
}

static int exec_id(sqlite3 *db, const char *sql, int64_t id, int *changes)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		return TERN_EIO;
	sqlite3_bind_int64(st, 1, id);
	int rc = sqlite3_step(st) == SQLITE_DONE ? TERN_OK : TERN_EIO;
	sqlite3_finalize(st);
	if (changes)
		*changes = sqlite3_changes(db);
	return rc;
}

int webhook_del(sqlite3 *db, int64_t id)
{
	int ch = 0;
	if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
		return TERN_EIO;
	int rc = exec_id(db, "DELETE FROM webhooks WHERE id = ?", id, &ch);
	if (rc == TERN_OK)
		rc = exec_id(db, "DELETE FROM outbox WHERE endpoint = ?", id, NULL);
	if (rc == TERN_OK && ch == 0)
		rc = TERN_ENOTFOUND;
	sqlite3_exec(db, rc == TERN_OK ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

int webhook_enable(sqlite3 *db, int64_t id)
{
	int ch = 0;
	if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
		return TERN_EIO;
	int rc = exec_id(db,
	                 "UPDATE webhooks SET enabled = 1, status = 'active', failing_since = 0 "
	                 "WHERE id = ?",
	                 id, &ch);
	if (rc == TERN_OK)
		rc = exec_id(db, "UPDATE outbox SET next_try = 0 WHERE endpoint = ? AND done = 0",
		             id, NULL);
	if (rc == TERN_OK && ch == 0)
		rc = TERN_ENOTFOUND;
	sqlite3_exec(db, rc == TERN_OK ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

int webhook_attempts(sqlite3 *db, int64_t id, unsigned limit, FILE *out)
{
	sqlite3_stmt *st = NULL;
	char *node = events_node(db);
	if (sqlite3_prepare_v2(db,
	                       "SELECT * FROM (SELECT a.id, a.time, a.event, a.http_status, "
	                       "a.error, e.type, e.queue_id FROM attempts a LEFT JOIN events e "
	                       "ON e.id = a.event WHERE a.endpoint = ? ORDER BY a.id DESC "
	                       "LIMIT ?) ORDER BY id",
	                       -1, &st, NULL) != SQLITE_OK) {
		free(node);
		return TERN_EIO;
	}
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_int(st, 2, (int)(limit ? limit : 50));
	while (sqlite3_step(st) == SQLITE_ROW) {
		char ts[TERN_RFC3339_MAX];
		tern_rfc3339(sqlite3_column_int64(st, 1), ts, sizeof(ts));
		const char *e = (const char *)sqlite3_column_text(st, 4);
		fprintf(out, "%s event=evt_%s_%lld type=%s id=%s http=%d%s%s\n", ts,
		        node ? node : "0", (long long)sqlite3_column_int64(st, 2),
		        sqlite3_column_text(st, 5) ? (const char *)sqlite3_column_text(st, 5) : "?",
		        sqlite3_column_text(st, 6) ? (const char *)sqlite3_column_text(st, 6) : "",
		        sqlite3_column_int(st, 3), e && *e ? " error=" : "", e && *e ? e : "");
	}
	sqlite3_finalize(st);
	free(node);
	return TERN_OK;
}

/* ---- the sender ---- */

struct webhook_sender {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop, kicked;
	sqlite3 *db;
	sqlite3_stmt *due; /* load_due's query, prepared once */
	char *node;
	uint32_t base, max, window, timeout;
};

/* One due outbox row, copied out of the SELECT before posting. */
struct due {
	int64_t outbox, endpoint, event, failing_since;
	uint32_t attempts;
	char *url, *secret, *body;
};

static size_t discard(char *p, size_t sz, size_t n, void *arg)
{
	return sz * n;
}

static int progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
	struct webhook_sender *s = arg;
	pthread_mutex_lock(&s->lock);
	bool stop = s->stop;
	pthread_mutex_unlock(&s->lock);
	return stop; /* nonzero aborts the transfer at shutdown */
}

/* POSTs one row; returns the HTTP status (0: none) and the error in err. */
static long post(struct webhook_sender *s, CURL *c, const struct due *d, char *err, size_t errlen)
{
	char id[64], ts[64], sig[128], hid[96], hts[96], hsig[160];
	int64_t now = (int64_t)time(NULL);
	snprintf(id, sizeof(id), "evt_%s_%" PRId64, s->node ? s->node : "0", d->event);
	snprintf(ts, sizeof(ts), "%" PRId64, now);
	err[0] = '\0';
	if (webhook_sign(d->secret, id, now, d->body, strlen(d->body), sig, sizeof(sig)) !=
	    TERN_OK) {
		snprintf(err, errlen, "the endpoint's secret is not whsec_BASE64");
		return 0;
	}
	snprintf(hid, sizeof(hid), "webhook-id: %s", id);
	snprintf(hts, sizeof(hts), "webhook-timestamp: %s", ts);
	snprintf(hsig, sizeof(hsig), "webhook-signature: %s", sig);
	struct curl_slist *h = NULL, *t;
	const char *hdrs[] = {"Content-Type: application/json",
	                      "User-Agent: tern-webhooks",
	                      hid,
	                      hts,
	                      hsig,
	                      "Expect:"};
	for (size_t i = 0; i < sizeof(hdrs) / sizeof(hdrs[0]); i++) {
		if (!(t = curl_slist_append(h, hdrs[i]))) {
			curl_slist_free_all(h);
			snprintf(err, errlen, "out of memory");
			return 0;
		}
		h = t;
	}
	char cerr[CURL_ERROR_SIZE] = "";
	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_URL, d->url);
	curl_easy_setopt(c, CURLOPT_POST, 1L);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, d->body);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(d->body));
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)s->timeout);
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
	curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, progress);
	curl_easy_setopt(c, CURLOPT_XFERINFODATA, s);
	CURLcode rc = curl_easy_perform(c);
	long code = 0;
	if (rc == CURLE_OK) {
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
		if (code < 200 || code > 299)
			snprintf(err, errlen, "HTTP %ld", code);
	} else {
		snprintf(err, errlen, "%s", cerr[0] ? cerr : curl_easy_strerror(rc));
	}
	curl_slist_free_all(h);
	return code;
}

static void bind_exec(sqlite3 *db, const char *sql, int64_t a, int64_t b, const char *t)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
		log_error("event=webhook_store_failed reason=\"%s\"", sqlite3_errmsg(db));
		return;
	}
	sqlite3_bind_int64(st, 1, a);
	sqlite3_bind_int64(st, 2, b);
	if (t)
		sqlite3_bind_text(st, 3, t, -1, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_DONE)
		log_error("event=webhook_store_failed reason=\"%s\"", sqlite3_errmsg(db));
	sqlite3_finalize(st);
}

/* Records one attempt's result: the attempt, the row's state, the endpoint's. */
static void record(struct webhook_sender *s, const struct due *d, long code, const char *err,
                   int64_t now)
{
	bool ok = code >= 200 && code <= 299;
	sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(s->db,
	                       "INSERT INTO attempts(endpoint, event, time, http_status, error) "
	                       "VALUES(?,?,?,?,?)",
	                       -1, &st, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(st, 1, d->endpoint);
		sqlite3_bind_int64(st, 2, d->event);
		sqlite3_bind_int64(st, 3, now);
		sqlite3_bind_int64(st, 4, code);
		sqlite3_bind_text(st, 5, ok ? "" : err, -1, SQLITE_STATIC);
		sqlite3_step(st);
	}
	sqlite3_finalize(st);
	if (ok) {
		bind_exec(s->db,
		          "UPDATE outbox SET done = 1, attempts = attempts + 1 WHERE id = ?1 "
		          "AND ?2 = ?2",
		          d->outbox, 0, NULL);
		bind_exec(s->db, "UPDATE webhooks SET failing_since = 0 WHERE id = ?1 AND ?2 = ?2",
		          d->endpoint, 0, NULL);
		/* The receiver is back: what waits in backoff is due now, not in an hour. */
		if (d->failing_since)
			bind_exec(
			    s->db,
			    "UPDATE outbox SET next_try = 0 WHERE endpoint = ?1 AND done = 0 AND "
			    "next_try > ?2",
			    d->endpoint, now, NULL);
	} else {
		int64_t next = now + webhook_backoff(s->base, s->max, d->attempts + 1);
		bind_exec(s->db,
		          "UPDATE outbox SET attempts = attempts + 1, next_try = ?2 WHERE id = ?1",
		          d->outbox, next, NULL);
		int64_t since = d->failing_since ? d->failing_since : now;
		if (!d->failing_since)
			bind_exec(s->db,
			          "UPDATE webhooks SET failing_since = ?2 WHERE id = ?1 AND "
			          "failing_since = 0",
			          d->endpoint, now, NULL);
		if (now - since >= (int64_t)s->window) {
			char status[96], ts[TERN_RFC3339_MAX];
			tern_rfc3339(since, ts, sizeof(ts));
			snprintf(status, sizeof(status), "disabled: failing since %s", ts);
			bind_exec(s->db,
			          "UPDATE webhooks SET enabled = 0, status = ?3 WHERE id = ?1 AND "
			          "?2 = ?2",
			          d->endpoint, 0, status);
			log_warn("event=webhook_disabled endpoint=%" PRId64 " failing_since=%s",
			         d->endpoint, ts);
		}
	}
	if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
		log_error("event=webhook_store_failed reason=\"%s\"", sqlite3_errmsg(s->db));
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	}
}

static void due_free(struct due *d, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(d[i].url);
		free(d[i].secret);
		free(d[i].body);
	}
}

static char *col_dup(sqlite3_stmt *st, int i)
{
	const unsigned char *t = sqlite3_column_text(st, i);
	return strdup(t ? (const char *)t : "");
}

enum { DUE_MAX = 64 };

/* Sets tern_webhook_backlog to the outbox rows not yet answered 2xx (every
 * endpoint, disabled ones too: their events wait). A covering index scan
 * (outbox_pending), once a pass: at most once a second when idle. */
static void set_backlog(sqlite3 *db)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db, "SELECT count(*) FROM outbox WHERE done = 0", -1, &st, NULL) ==
	        SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		metric_set(M_WEBHOOK_BACKLOG, sqlite3_column_int64(st, 0));
	sqlite3_finalize(st);
}

/* Loads the due rows: the oldest pending row of each (endpoint, message)
 * only, so a message's events reach an endpoint in order. */
static size_t load_due(struct webhook_sender *s, int64_t now, struct due *d)
{
	char sql[2400];
	/* events_select_columns names bare columns: qualify the ambiguous ones. */
	sqlite3_stmt *st = NULL;
	size_t n = 0;
	char qualified[1600];
	const char *cols = events_select_columns();
	size_t ql = 0;
	for (const char *p = cols; *p && ql + 16 < sizeof(qualified);) {
		const char *c = strchr(p, ',');
		size_t len = c ? (size_t)(c - p) : strlen(p);
		while (len && *p == ' ') {
			p++;
			len--;
		}
		ql += (size_t)snprintf(qualified + ql, sizeof(qualified) - ql, "%sevents.%.*s",
		                       ql ? ", " : "", (int)len, p);
		p = c ? c + 1 : p + len;
	}
	snprintf(sql, sizeof(sql),
	         "SELECT %s, o.id, o.endpoint, o.attempts, w.url, w.secret, w.failing_since "
	         "FROM outbox o JOIN webhooks w ON w.id = o.endpoint "
	         "JOIN events ON events.id = o.event "
	         "WHERE o.done = 0 AND w.enabled = 1 AND o.next_try <= ?1 AND NOT EXISTS "
	         "(SELECT 1 FROM outbox p WHERE p.done = 0 AND p.endpoint = o.endpoint AND "
	         "p.queue_id = o.queue_id AND p.id < o.id) ORDER BY o.id LIMIT %d",
	         qualified, DUE_MAX);
	if (!s->due && sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->due,
	                                  NULL) != SQLITE_OK) {
		log_error("event=webhook_store_failed reason=\"%s\"", sqlite3_errmsg(s->db));
		return 0;
	}
	st = s->due;
	sqlite3_bind_int64(st, 1, now);
	while (n < DUE_MAX && sqlite3_step(st) == SQLITE_ROW) {
		struct due *x = &d[n];
		x->body = events_row_json(st, s->node, true);
		x->event = sqlite3_column_int64(st, 0);
		x->outbox = sqlite3_column_int64(st, 15);
		x->endpoint = sqlite3_column_int64(st, 16);
		x->attempts = (uint32_t)sqlite3_column_int(st, 17);
		x->url = col_dup(st, 18);
		x->secret = col_dup(st, 19);
		x->failing_since = sqlite3_column_int64(st, 20);
		n++;
		if (!x->body || !x->url || !x->secret) {
			due_free(d, n);
			n = 0;
			break;
		}
	}
	sqlite3_reset(st);
	return n;
}

static void *sender_main(void *arg)
{
	pthread_setname_np(pthread_self(), "webhooks"); /* for top -H, perf, ps -L */
	struct webhook_sender *s = arg;
	CURL *c = curl_easy_init();
	struct due *d = calloc(DUE_MAX, sizeof(*d));
	if (!c || !d) {
		log_error("event=webhooks_failed reason=\"out of memory\"");
		goto out;
	}
	for (;;) {
		pthread_mutex_lock(&s->lock);
		bool stop = s->stop;
		s->kicked = false;
		pthread_mutex_unlock(&s->lock);
		if (stop)
			break;
		set_backlog(s->db);
		int64_t now = (int64_t)time(NULL);
		size_t n = load_due(s, now, d);
		size_t sent = 0;
		int64_t failed[DUE_MAX];
		size_t n_failed = 0;
		for (size_t i = 0; i < n; i++) {
			/* After a failure, the endpoint's other rows wait for the next
			 * pass: a receiver that is down is not hammered. */
			bool skip = false;
			for (size_t k = 0; k < n_failed; k++)
				skip = skip || failed[k] == d[i].endpoint;
			pthread_mutex_lock(&s->lock);
			stop = s->stop;
			pthread_mutex_unlock(&s->lock);
			if (skip || stop)
				continue;
			char err[CURL_ERROR_SIZE + 32];
			long code = post(s, c, &d[i], err, sizeof(err));
			int64_t t = (int64_t)time(NULL);
			pthread_mutex_lock(&s->lock);
			stop = s->stop;
			pthread_mutex_unlock(&s->lock);
			if (stop && (code < 200 || code > 299))
				continue; /* aborted by the shutdown: not an attempt */
			record(s, &d[i], code, err, t);
			if (code >= 200 && code <= 299) {
				sent++;
				log_debug("event=webhook_sent endpoint=%" PRId64 " event=%" PRId64
				          " http=%ld",
				          d[i].endpoint, d[i].event, code);
			} else {
				failed[n_failed++] = d[i].endpoint;
				log_info("event=webhook_failed endpoint=%" PRId64 " event=%" PRId64
				         " attempt=%u http=%ld",
				         d[i].endpoint, d[i].event, d[i].attempts + 1, code);
			}
		}
		due_free(d, n);
		if (sent)
			continue; /* a message's next event may be due now */
		struct timespec dl;
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += 1; /* retries come due with time: look once a second */
		pthread_mutex_lock(&s->lock);
		while (!s->stop && !s->kicked)
			if (pthread_cond_timedwait(&s->cond, &s->lock, &dl) != 0)
				break;
		pthread_mutex_unlock(&s->lock);
	}
out:
	free(d);
	if (c)
		curl_easy_cleanup(c);
	return NULL;
}

struct webhook_sender *webhook_sender_start(const char *data_dir, const struct events_opts *o)
{
	char err[512];
	struct webhook_sender *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	s->db = events_db_open(data_dir, err, sizeof(err));
	if (!s->db) {
		log_error("event=webhooks_failed reason=\"%s\"", err);
		free(s);
		return NULL;
	}
	s->node = events_node(s->db);
	s->base = o->retry_base ? o->retry_base : 5;
	s->max = o->retry_max ? o->retry_max : 3600;
	s->window = o->retry_window ? o->retry_window : 86400;
	s->timeout = o->timeout ? o->timeout : 10;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	if (pthread_create(&s->thread, NULL, sender_main, s) != 0) {
		sqlite3_close(s->db);
		free(s->node);
		free(s);
		return NULL;
	}
	return s;
}

void webhook_sender_kick(struct webhook_sender *s)
{
	pthread_mutex_lock(&s->lock);
	s->kicked = true;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

void webhook_sender_stop(struct webhook_sender *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->stop = true;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->thread, NULL);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	sqlite3_finalize(s->due);
	sqlite3_close(s->db);
	free(s->node);
	free(s);
}
