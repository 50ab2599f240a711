/*
 * stats_routes.c — GET /api/v1/stats (stats_routes.h): the query-string
 * parser (a pure function over pointer and length) and the JSON answer.
 *
 * Owns: the parameters' meaning and the answer's shape (the contract with
 * the web UI).
 * Must never: accept a parameter value it does not know (a clear 400
 * instead), or compute a figure itself: store/stats.c counts.
 */
#include "http/stats_routes.h"

#include <string.h>
#include <time.h>

#include "core/err.h"

bool http_qs_raw(const char *qs, size_t len, const char *name, const char **v, size_t *vlen)
{
	size_t nl = strlen(name);
	const char *p = qs, *end = qs ? qs + len : NULL;
	while (p && p < end) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *e = amp ? amp : end;
		const char *eq = memchr(p, '=', (size_t)(e - p));
		const char *ke = eq ? eq : e;
		if ((size_t)(ke - p) == nl && memcmp(p, name, nl) == 0) {
			*v = eq ? eq + 1 : e;
			*vlen = (size_t)(e - *v);
			return true;
		}
		p = e + 1;
	}
	return false;
}

static bool is(const char *v, size_t n, const char *word)
{
	return n == strlen(word) && memcmp(v, word, n) == 0;
}

/* "Nh" or "Nd" as seconds; -1 when it is neither or out of bounds. */
static int64_t age(const char *v, size_t n)
{
	int64_t x = 0;
	size_t i = 0;
	for (; i < n && v[i] >= '0' && v[i] <= '9'; i++) {
		x = x * 10 + (v[i] - '0');
		if (x > 100000)
			return -1;
	}
	if (i == 0 || i + 1 != n || x < 1)
		return -1;
	if (v[i] == 'h' && x <= 2400)
		return x * 3600;
	if (v[i] == 'd' && x <= 100)
		return x * 86400;
	return -1;
}

int stats_query_parse(const char *qs, size_t len, int64_t now, struct stats_query *q,
                      const char **why)
{
	const char *v;
	size_t n;
	int64_t span = 86400;
	*q = (struct stats_query){.until = now, .group = STATS_GROUP_NONE};
	if (http_qs_raw(qs, len, "since", &v, &n) && (span = age(v, n)) < 0) {
		*why = "since: an age such as 24h, 7d or 30d (1h to 2400h, 1d to 100d)";
		return TERN_EINVAL;
	}
	if (span > now) {
		*why = "since: before the epoch";
		return TERN_EINVAL;
	}
	q->since = now - span;
	q->bucket = span <= 2 * 86400 ? 3600 : 86400;
	if (http_qs_raw(qs, len, "bucket", &v, &n)) {
		if (is(v, n, "hour"))
			q->bucket = 3600;
		else if (is(v, n, "day"))
			q->bucket = 86400;
		else {
			*why = "bucket: hour or day";
			return TERN_EINVAL;
		}
	}
	if (http_qs_raw(qs, len, "group", &v, &n)) {
		bool found = false;
		for (enum stats_group g = STATS_GROUP_NONE; stats_group_name(g); g++)
			if (is(v, n, stats_group_name(g))) {
				q->group = g;
				found = true;
				break;
			}
		if (!found) {
			*why = "group: none, domain, key, tag or provider";
			return TERN_EINVAL;
		}
	}
	return TERN_OK;
}

static json_t *counts_obj(json_t *o, const struct stats_counts *c)
{
	for (int i = 0; o && i < ST__COUNT; i++)
		json_object_set_new(o, stats_counter_name(i), json_integer((json_int_t)c->n[i]));
	return o;
}

json_t *stats_result_json(const struct stats_query *q, const struct stats_result *r)
{
	json_t *series = json_array(), *groups = json_array(), *reasons = json_array();
	for (size_t i = 0; series && i < r->n_series; i++)
		json_array_append_new(
		    series, counts_obj(json_pack("{s:I}", "t", (json_int_t)r->series[i].t),
		                       &r->series[i].c));
	for (size_t i = 0; groups && i < r->n_groups; i++)
		json_array_append_new(
		    groups,
		    counts_obj(json_pack("{s:s}", "name", r->groups[i].name), &r->groups[i].c));
	for (size_t i = 0; reasons && i < r->n_reasons; i++)
		json_array_append_new(reasons,
		                      json_pack("{s:s, s:s, s:I}", "status", r->reasons[i].status,
		                                "reason", r->reasons[i].reason, "count",
		                                (json_int_t)r->reasons[i].count));
	const struct stats_latency *l = &r->latency;
	json_t *lat = json_pack("{s:I, s:I, s:I, s:I, s:I}", "count", (json_int_t)l->count, "p50",
	                        (json_int_t)l->p50, "p90", (json_int_t)l->p90, "p99",
	                        (json_int_t)l->p99, "max", (json_int_t)l->max);
	/* json_pack's "o" takes each reference, also when it fails */
	return json_pack("{s:I, s:I, s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:s}", "since",
	                 (json_int_t)q->since, "until", (json_int_t)q->until, "bucket",
	                 q->bucket == 3600 ? "hour" : "day", "group", stats_group_name(q->group),
	                 "totals", counts_obj(json_object(), &r->totals), "series", series,
	                 "groups", groups, "latency_ms", lat, "top_bounce_reasons", reasons,
	                 "opens_note", STATS_OPENS_NOTE);
}

int stats_route(sqlite3 *db, const char *qs, size_t len, json_t **body, const char **why)
{
	struct stats_query q;
	struct stats_result r;
	*body = NULL;
	if (stats_query_parse(qs, len, (int64_t)time(NULL), &q, why) != TERN_OK)
		return 400;
	int rc = stats_run(db, &q, &r);
	if (rc != TERN_OK) {
		*why = rc == TERN_ENOMEM ? "out of memory" : "the event store failed";
		return 500;
	}
	*body = stats_result_json(&q, &r);
	stats_result_free(&r);
	if (!*body) {
		*why = "out of memory";
		return 500;
	}
	return 200;
}
