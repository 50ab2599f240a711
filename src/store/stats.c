/*
 * stats.c — delivery statistics computed from the event store (stats.h).
 *
 * Owns: the aggregation SQL over DATA/events.db (read only) and the naming
 * of providers (the domain table itself is deliver/shaping.c's).
 * Must never: write to the store, estimate (every figure is counted from the
 * stored rows), or run on an event loop.
 */
#include "store/stats.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/err.h"
#include "deliver/shaping.h"
#include "store/events.h"

static const char *const counter_names[ST__COUNT] = {
    "sent", "delivered", "deferred", "bounced", "complained", "opened", "clicked", "suppressed",
};

/* The event type each counter counts. */
static const char *const counter_types[ST__COUNT] = {
    "queued", "delivered", "deferred", "bounced", "complained", "opened", "clicked", "suppressed",
};

static const char *const group_names[] = {"none", "domain", "key", "tag", "provider"};

const char *stats_counter_name(enum stats_counter c)
{
	return (unsigned)c < ST__COUNT ? counter_names[c] : NULL;
}

const char *stats_group_name(enum stats_group g)
{
	return (unsigned)g < sizeof(group_names) / sizeof(group_names[0]) ? group_names[g] : NULL;
}

/* ---- providers ---- */

/* The shaping table's sites under the names people use for them. */
static const struct {
	const char *site, *name;
} site_names[] = {
    {"gmail.com", "google"},
    {"outlook.com", "microsoft"},
    {"yahoo.com", "yahoo"},
    {"icloud.com", "apple"},
};

const char *stats_provider(const char *domain, const char *relay)
{
	const char *site = domain && *domain ? shaping_site(domain) : NULL;
	/* a relay is "local", an MX host name or an address: only a name of a
	 * provider's MX suffix matches (a Google Workspace domain -> google) */
	if (!site && relay && *relay && strcmp(relay, "local") != 0)
		site = shaping_mx_site(relay);
	if (!site)
		return domain && *domain ? domain : "(none)";
	for (size_t i = 0; i < sizeof(site_names) / sizeof(site_names[0]); i++)
		if (strcmp(site_names[i].site, site) == 0)
			return site_names[i].name;
	return site;
}

/* ---- groups: (name, counter, count) triples, sorted and merged ---- */

struct triple {
	char *name;
	int counter;
	uint64_t count;
};

struct triples {
	struct triple *v;
	size_t n, cap;
};

static int triples_add(struct triples *t, const char *name, size_t len, int counter, uint64_t count)
{
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 64;
		struct triple *nv = realloc(t->v, cap * sizeof(*nv));
		if (!nv)
			return TERN_ENOMEM;
		t->v = nv;
		t->cap = cap;
	}
	if (len == 0) {
		name = "(none)";
		len = 6;
	}
	char *s = malloc(len + 1);
	if (!s)
		return TERN_ENOMEM;
	memcpy(s, name, len);
	s[len] = '\0';
	t->v[t->n++] = (struct triple){.name = s, .counter = counter, .count = count};
	return TERN_OK;
}

static void triples_free(struct triples *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->v[i].name);
	free(t->v);
}

static int by_name(const void *a, const void *b)
{
	return strcmp(((const struct triple *)a)->name, ((const struct triple *)b)->name);
}

static int by_volume(const void *a, const void *b)
{
	const struct stats_group_row *x = a, *y = b;
	for (int i = 0; i < 2; i++) /* sent, then delivered */
		if (x->c.n[i] != y->c.n[i])
			return x->c.n[i] > y->c.n[i] ? -1 : 1;
	return strcmp(x->name, y->name);
}

/* Merges the triples into out's groups (the names move over). */
static int triples_merge(struct triples *t, struct stats_result *out)
{
	if (t->n == 0)
		return TERN_OK;
	qsort(t->v, t->n, sizeof(*t->v), by_name);
	size_t ng = 1;
	for (size_t i = 1; i < t->n; i++)
		if (strcmp(t->v[i].name, t->v[i - 1].name) != 0)
			ng++;
	if (!(out->groups = calloc(ng, sizeof(*out->groups))))
		return TERN_ENOMEM;
	for (size_t i = 0; i < t->n; i++) {
		struct stats_group_row *g = out->n_groups ? &out->groups[out->n_groups - 1] : NULL;
		if (!g || strcmp(g->name, t->v[i].name) != 0) {
			g = &out->groups[out->n_groups++];
			g->name = t->v[i].name;
			t->v[i].name = NULL;
		}
		g->c.n[t->v[i].counter] += t->v[i].count;
	}
	qsort(out->groups, out->n_groups, sizeof(*out->groups), by_volume);
	return TERN_OK;
}

/* Adds one aggregated row's count to the groups it belongs to. */
static int group_row(struct triples *t, enum stats_group g, const char *g1, const char *g2,
                     int counter, uint64_t count)
{
	if (g == STATS_GROUP_TAG) {
		/* tags are stored comma-separated: each tag gets the count */
		const char *p = g1;
		bool any = false;
		while (p && *p) {
			const char *c = strchr(p, ',');
			size_t n = c ? (size_t)(c - p) : strlen(p);
			if (n) {
				int rc = triples_add(t, p, n, counter, count);
				if (rc != TERN_OK)
					return rc;
				any = true;
			}
			p = c ? c + 1 : NULL;
		}
		return any ? TERN_OK : triples_add(t, "", 0, counter, count);
	}
	const char *name = g == STATS_GROUP_PROVIDER ? stats_provider(g1, g2) : g1;
	return triples_add(t, name ? name : "", name ? strlen(name) : 0, counter, count);
}

/* ---- the queries ---- */

#define TYPES_SQL                                                                                  \
	"type IN ('queued', 'delivered', 'deferred', 'bounced', 'complained', 'opened', "          \
	"'clicked', 'suppressed')"

/*
 * The counts of one group key while the rows are read: (g1, g2) as the
 * query gave them (the recipient's domain and the relay for providers, the
 * key, the tags), counted in a hash table. Mapping a key to its groups
 * (providers, each tag) happens once per distinct key at the end, not per
 * row: with SQL's GROUP BY the same count took 3 times the instructions
 * (callgrind, 825k events, group=provider).
 */
struct gkey {
	char *k; /* g1 '\0' g2 '\0' */
	size_t len;
	uint64_t hash;
	struct stats_counts c;
};

struct gtable {
	struct gkey *v;
	size_t n, cap; /* cap: a power of two, at most half full */
};

static uint64_t fnv(const char *p, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
	return h;
}

static int gtable_grow(struct gtable *t)
{
	size_t cap = t->cap ? t->cap * 2 : 256;
	struct gkey *v = calloc(cap, sizeof(*v));
	if (!v)
		return TERN_ENOMEM;
	for (size_t i = 0; i < t->cap; i++) {
		if (!t->v[i].k)
			continue;
		size_t j = t->v[i].hash & (cap - 1);
		while (v[j].k)
			j = (j + 1) & (cap - 1);
		v[j] = t->v[i];
	}
	free(t->v);
	t->v = v;
	t->cap = cap;
	return TERN_OK;
}

/* The counts of key (k, len), made (zero) when new; NULL out of memory. */
static struct stats_counts *gtable_get(struct gtable *t, const char *k, size_t len)
{
	if (2 * (t->n + 1) > t->cap && gtable_grow(t) != TERN_OK)
		return NULL;
	uint64_t h = fnv(k, len);
	size_t j = h & (t->cap - 1);
	for (; t->v[j].k; j = (j + 1) & (t->cap - 1))
		if (t->v[j].hash == h && t->v[j].len == len && memcmp(t->v[j].k, k, len) == 0)
			return &t->v[j].c;
	char *copy = malloc(len);
	if (!copy)
		return NULL;
	memcpy(copy, k, len);
	t->v[j] = (struct gkey){.k = copy, .len = len, .hash = h};
	t->n++;
	return &t->v[j].c;
}

static void gtable_free(struct gtable *t)
{
	for (size_t i = 0; i < t->cap; i++)
		free(t->v[i].k);
	free(t->v);
}

/* The counter of an event type, by its text (one of TYPES_SQL). */
static int counter_of_text(const unsigned char *t, int n)
{
	for (int i = 0; t && i < ST__COUNT; i++)
		if ((int)strlen(counter_types[i]) == n &&
		    memcmp(t, counter_types[i], (size_t)n) == 0)
			return i;
	return -1;
}

/* Builds the group key of a row into buf: "g1\0g2\0"; its length. */
static size_t row_key(sqlite3_stmt *st, enum stats_group g, char *buf, size_t cap)
{
	const char *a = (const char *)sqlite3_column_text(st, 2);
	const char *b = (const char *)sqlite3_column_text(st, 3);
	size_t n = 0;
	if (g == STATS_GROUP_DOMAIN || g == STATS_GROUP_PROVIDER) {
		/* the recipient's domain, lowercased */
		const char *at = a ? strrchr(a, '@') : NULL;
		for (const char *p = at ? at + 1 : ""; *p && n + 1 < cap / 2; p++)
			buf[n++] = (*p >= 'A' && *p <= 'Z') ? (char)(*p - 'A' + 'a') : *p;
	} else {
		for (const char *p = a ? a : ""; *p && n + 1 < cap / 2; p++)
			buf[n++] = *p;
	}
	buf[n++] = '\0';
	for (const char *p = b ? b : ""; *p && n + 1 < cap; p++)
		buf[n++] = *p;
	buf[n++] = '\0';
	return n;
}

/* The deliveries the count saw (queue id, time), for the latency: taken in
 * the same scan, so the window's rows are read once. */
struct deliveries {
	char *ids; /* NUL-terminated queue ids, one after another */
	size_t len, cap;
	struct delivery {
		size_t id; /* offset in ids */
		int64_t time;
	} * v;
	size_t n, vcap;
};

static int deliveries_add(struct deliveries *d, const unsigned char *id, int idlen, int64_t t)
{
	size_t n = id && idlen > 0 ? (size_t)idlen : 0;
	if (d->n == d->vcap) {
		size_t cap = d->vcap ? d->vcap * 2 : 256;
		struct delivery *v = realloc(d->v, cap * sizeof(*v));
		if (!v)
			return TERN_ENOMEM;
		d->v = v;
		d->vcap = cap;
	}
	if (d->len + n + 1 > d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 4096;
		while (cap < d->len + n + 1)
			cap *= 2;
		char *ids = realloc(d->ids, cap);
		if (!ids)
			return TERN_ENOMEM;
		d->ids = ids;
		d->cap = cap;
	}
	if (n)
		memcpy(d->ids + d->len, id, n);
	d->ids[d->len + n] = '\0';
	d->v[d->n++] = (struct delivery){.id = d->len, .time = t};
	d->len += n + 1;
	return TERN_OK;
}

static void deliveries_free(struct deliveries *d)
{
	free(d->ids);
	free(d->v);
}

/* The window's events lie between these ids (events_id_range: the store
 * has no index on time). */
struct idwin {
	int64_t lo, hi;
};

static int counts(sqlite3 *db, const struct stats_query *q, const struct idwin *w,
                  struct stats_result *out, struct deliveries *dl)
{
	static const char *const g1[] = {"NULL", "recipient", "key", "tags", "recipient"};
	char sql[512], key[4096]; /* a domain, the relay; or the key or tags */
	snprintf(sql, sizeof(sql),
	         "SELECT type, time, %s, %s, queue_id FROM events WHERE id >= ?3 AND id <= ?4 "
	         "AND time >= ?1 AND time <= ?2 AND " TYPES_SQL,
	         g1[q->group], q->group == STATS_GROUP_PROVIDER ? "relay" : "NULL");
	sqlite3_stmt *st = NULL;
	struct gtable gt = {0};
	struct triples t = {0};
	int rc = TERN_EIO, src;
	int64_t first = q->since / q->bucket;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, q->since);
	sqlite3_bind_int64(st, 2, q->until);
	sqlite3_bind_int64(st, 3, w->lo);
	sqlite3_bind_int64(st, 4, w->hi);
	while ((src = sqlite3_step(st)) == SQLITE_ROW) {
		int c = counter_of_text(sqlite3_column_text(st, 0), sqlite3_column_bytes(st, 0));
		int64_t b = sqlite3_column_int64(st, 1) / q->bucket - first;
		if (TERN_BUG_ON(c < 0 || b < 0 || (size_t)b >= out->n_series))
			continue; /* the WHERE clause keeps both in range */
		out->totals.n[c]++;
		out->series[b].c.n[c]++;
		if (c == ST_DELIVERED &&
		    (rc =
		         deliveries_add(dl, sqlite3_column_text(st, 4), sqlite3_column_bytes(st, 4),
		                        sqlite3_column_int64(st, 1))) != TERN_OK)
			goto out;
		if (q->group == STATS_GROUP_NONE)
			continue;
		struct stats_counts *gc =
		    gtable_get(&gt, key, row_key(st, q->group, key, sizeof(key)));
		if (!gc) {
			rc = TERN_ENOMEM;
			goto out;
		}
		gc->n[c]++;
	}
	if (src != SQLITE_DONE) {
		rc = TERN_EIO;
		goto out;
	}
	rc = TERN_OK;
	for (size_t i = 0; i < gt.cap && rc == TERN_OK; i++) {
		const struct gkey *k = &gt.v[i];
		for (int c = 0; k->k && c < ST__COUNT && rc == TERN_OK; c++)
			if (k->c.n[c])
				rc = group_row(&t, q->group, k->k, k->k + strlen(k->k) + 1, c,
				               k->c.n[c]);
	}
	if (rc == TERN_OK)
		rc = triples_merge(&t, out);
out:
	sqlite3_finalize(st);
	gtable_free(&gt);
	triples_free(&t);
	return rc;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

/* Nearest rank: the smallest value with at least pct % of the values at or
 * below it. */
static int64_t rank(const int64_t *v, size_t n, unsigned pct)
{
	size_t k = (n * pct + 99) / 100;
	return v[k ? k - 1 : 0];
}

static int latency(sqlite3 *db, const struct deliveries *dl, struct stats_result *out)
{
	/* From the message's first receipt event (received, or queued for mail
	 * that has none) to each delivery. The first by id is one probe of the
	 * index of receipts (events_receipt, which holds nothing else); a min()
	 * over the message's events read each of its rows (callgrind: 1.4G of
	 * 4.0G instructions for 225k deliveries). Emitters record a message's
	 * receipt before any outcome, so the first is the earliest. */
	static const char sql[] = "SELECT type, time FROM events WHERE queue_id = ?1 AND (type = "
	                          "'received' OR type = 'queued') ORDER BY queue_id, id LIMIT 1";
	sqlite3_stmt *st = NULL;
	int64_t *v = NULL;
	size_t n = 0;
	int rc = TERN_EIO, src = SQLITE_DONE;
	if (dl->n == 0)
		return TERN_OK;
	if (!(v = malloc(dl->n * sizeof(*v))))
		return TERN_ENOMEM;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		goto out;
	for (size_t i = 0; i < dl->n; i++) {
		sqlite3_reset(st);
		sqlite3_bind_text(st, 1, dl->ids + dl->v[i].id, -1, SQLITE_STATIC);
		if ((src = sqlite3_step(st)) != SQLITE_ROW) {
			if (src != SQLITE_DONE)
				goto out;
			continue;
		}
		const char *type = (const char *)sqlite3_column_text(st, 0);
		if (!type || (strcmp(type, "received") != 0 && strcmp(type, "queued") != 0))
			continue; /* no receipt recorded (a DSN tern made, or pruned) */
		int64_t s = dl->v[i].time - sqlite3_column_int64(st, 1);
		v[n++] = (s > 0 ? s : 0) * 1000;
	}
	if (n) {
		qsort(v, n, sizeof(*v), cmp_i64);
		out->latency = (struct stats_latency){.count = n,
		                                      .p50 = rank(v, n, 50),
		                                      .p90 = rank(v, n, 90),
		                                      .p99 = rank(v, n, 99),
		                                      .max = v[n - 1]};
	}
	rc = TERN_OK;
out:
	sqlite3_finalize(st);
	free(v);
	return rc;
}

static int reasons(sqlite3 *db, const struct stats_query *q, const struct idwin *w,
                   struct stats_result *out)
{
	/* The bare column reply comes from the row of max(id) (SQLite's rule
	 * for min/max aggregates): the latest reply with that status. */
	static const char sql[] =
	    "SELECT status, reply, count(*), max(id) FROM events WHERE id >= ?4 AND id <= ?5 AND "
	    "time >= ?1 AND time <= ?2 AND type = 'bounced' GROUP BY status ORDER BY 3 DESC, 1 "
	    "LIMIT ?3";
	sqlite3_stmt *st = NULL;
	int rc = TERN_EIO, src;
	if (!(out->reasons = calloc(STATS_REASONS_MAX, sizeof(*out->reasons))))
		return TERN_ENOMEM;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, q->since);
	sqlite3_bind_int64(st, 2, q->until);
	sqlite3_bind_int(st, 3, STATS_REASONS_MAX);
	sqlite3_bind_int64(st, 4, w->lo);
	sqlite3_bind_int64(st, 5, w->hi);
	while ((src = sqlite3_step(st)) == SQLITE_ROW && out->n_reasons < STATS_REASONS_MAX) {
		const char *s = (const char *)sqlite3_column_text(st, 0);
		const char *r = (const char *)sqlite3_column_text(st, 1);
		struct stats_reason *x = &out->reasons[out->n_reasons];
		x->status = tern_strdup(s ? s : "");
		x->reason = tern_strdup(r ? r : "");
		x->count = (uint64_t)sqlite3_column_int64(st, 2);
		out->n_reasons++;
		if (!x->status || !x->reason) {
			rc = TERN_ENOMEM;
			goto out;
		}
	}
	rc = src == SQLITE_DONE || src == SQLITE_ROW ? TERN_OK : TERN_EIO;
out:
	sqlite3_finalize(st);
	return rc;
}

int stats_run(sqlite3 *db, const struct stats_query *q, struct stats_result *out)
{
	*out = (struct stats_result){0};
	if (!db || (q->bucket != 3600 && q->bucket != 86400) || q->since < 0 || q->since > q->until)
		return TERN_EINVAL;
	int64_t first = q->since / q->bucket, last = q->until / q->bucket;
	if (last - first + 1 > STATS_SERIES_MAX)
		return TERN_EINVAL;
	out->n_series = (size_t)(last - first + 1);
	if (!(out->series = calloc(out->n_series, sizeof(*out->series))))
		return TERN_ENOMEM;
	for (size_t i = 0; i < out->n_series; i++)
		out->series[i].t = (first + (int64_t)i) * q->bucket;
	/* One read transaction: the three answers see the same events even
	 * while the writer commits. */
	bool txn = sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK;
	struct deliveries dl = {0};
	struct idwin w;
	int rc = events_id_range(db, q->since, q->until, &w.lo, &w.hi);
	if (rc == TERN_OK)
		rc = counts(db, q, &w, out, &dl);
	if (rc == TERN_OK)
		rc = latency(db, &dl, out);
	deliveries_free(&dl);
	if (rc == TERN_OK)
		rc = reasons(db, q, &w, out);
	if (txn)
		sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
	if (rc != TERN_OK)
		stats_result_free(out);
	return rc;
}

void stats_result_free(struct stats_result *r)
{
	if (!r)
		return;
	free(r->series);
	for (size_t i = 0; i < r->n_groups; i++)
		free(r->groups[i].name);
	free(r->groups);
	for (size_t i = 0; i < r->n_reasons; i++) {
		free(r->reasons[i].status);
		free(r->reasons[i].reason);
	}
	free(r->reasons);
	*r = (struct stats_result){0};
}
