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

static int counter_of(const char *type)
{
	for (int i = 0; type && i < ST__COUNT; i++)
		if (strcmp(type, counter_types[i]) == 0)
			return i;
	return -1;
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

/* The recipient's domain, lowercased ("" without an '@'). */
#define DOMAIN_SQL                                                                                 \
	"lower(CASE WHEN instr(recipient, '@') > 0 THEN substr(recipient, instr(recipient, "       \
	"'@') + 1) ELSE '' END)"

#define TYPES_SQL                                                                                  \
	"type IN ('queued', 'delivered', 'deferred', 'bounced', 'complained', 'opened', "          \
	"'clicked', 'suppressed')"

static int counts(sqlite3 *db, const struct stats_query *q, struct stats_result *out)
{
	static const char *const g1[] = {"''", DOMAIN_SQL, "key", "tags", DOMAIN_SQL};
	char sql[1024];
	snprintf(sql, sizeof(sql),
	         "SELECT type, time / ?3, %s, %s, count(*) FROM events WHERE time >= ?1 AND "
	         "time <= ?2 AND " TYPES_SQL " GROUP BY 1, 2, 3, 4",
	         g1[q->group], q->group == STATS_GROUP_PROVIDER ? "relay" : "''");
	sqlite3_stmt *st = NULL;
	struct triples t = {0};
	int rc = TERN_EIO, src;
	int64_t first = q->since / q->bucket;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, q->since);
	sqlite3_bind_int64(st, 2, q->until);
	sqlite3_bind_int64(st, 3, q->bucket);
	while ((src = sqlite3_step(st)) == SQLITE_ROW) {
		int c = counter_of((const char *)sqlite3_column_text(st, 0));
		int64_t b = sqlite3_column_int64(st, 1) - first;
		uint64_t n = (uint64_t)sqlite3_column_int64(st, 4);
		if (TERN_BUG_ON(c < 0 || b < 0 || (size_t)b >= out->n_series))
			continue; /* the WHERE clause keeps both in range */
		out->totals.n[c] += n;
		out->series[b].c.n[c] += n;
		if (q->group != STATS_GROUP_NONE &&
		    (rc = group_row(&t, q->group, (const char *)sqlite3_column_text(st, 2),
		                    (const char *)sqlite3_column_text(st, 3), c, n)) != TERN_OK)
			goto out;
	}
	rc = src == SQLITE_DONE ? triples_merge(&t, out) : TERN_EIO;
out:
	sqlite3_finalize(st);
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

static int latency(sqlite3 *db, const struct stats_query *q, struct stats_result *out)
{
	/* From the message's received event (or, for mail that has none, its
	 * first queued one) to each delivery. */
	static const char sql[] =
	    "SELECT d.time - (SELECT min(e.time) FROM events e WHERE e.queue_id = d.queue_id "
	    "AND e.type IN ('received', 'queued')) FROM events d WHERE d.time >= ?1 AND d.time "
	    "<= ?2 AND d.type = 'delivered'";
	sqlite3_stmt *st = NULL;
	int64_t *v = NULL;
	size_t n = 0, cap = 0;
	int rc = TERN_EIO, src;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, q->since);
	sqlite3_bind_int64(st, 2, q->until);
	while ((src = sqlite3_step(st)) == SQLITE_ROW) {
		if (sqlite3_column_type(st, 0) == SQLITE_NULL)
			continue; /* no receipt recorded (pruned): no latency to tell */
		if (n == cap) {
			cap = cap ? cap * 2 : 256;
			int64_t *nv = realloc(v, cap * sizeof(*v));
			if (!nv) {
				rc = TERN_ENOMEM;
				goto out;
			}
			v = nv;
		}
		int64_t s = sqlite3_column_int64(st, 0);
		v[n++] = (s > 0 ? s : 0) * 1000;
	}
	if (src != SQLITE_DONE)
		goto out;
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

static int reasons(sqlite3 *db, const struct stats_query *q, struct stats_result *out)
{
	/* The bare column reply comes from the row of max(id) (SQLite's rule
	 * for min/max aggregates): the latest reply with that status. */
	static const char sql[] =
	    "SELECT status, reply, count(*), max(id) FROM events WHERE time >= ?1 AND time <= ?2 "
	    "AND type = 'bounced' GROUP BY status ORDER BY 3 DESC, 1 LIMIT ?3";
	sqlite3_stmt *st = NULL;
	int rc = TERN_EIO, src;
	if (!(out->reasons = calloc(STATS_REASONS_MAX, sizeof(*out->reasons))))
		return TERN_ENOMEM;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, q->since);
	sqlite3_bind_int64(st, 2, q->until);
	sqlite3_bind_int(st, 3, STATS_REASONS_MAX);
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
	int rc = counts(db, q, out);
	if (rc == TERN_OK)
		rc = latency(db, q, out);
	if (rc == TERN_OK)
		rc = reasons(db, q, out);
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
