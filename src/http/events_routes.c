/*
 * events_routes.c — the event and webhook routes of the HTTP API (see
 * events_routes.h): query-string parsing (a pure function over pointer and
 * length) and the JSON answers.
 *
 * Owns: only the mapping of parameters to store queries and of rows to JSON.
 * Must never: return a webhook secret; trust a parameter (every one is
 * decoded into a bounded buffer and checked).
 */
#include "http/events_routes.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "core/err.h"
#include "core/timefmt.h"
#include "store/events.h"

enum { PARAM_MAX = 512 };

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes (p, n) ('+' is a space, %XX a byte) into out; false when it does
 * not fit, has a bad escape or a NUL. */
static bool decode(const char *p, size_t n, char *out, size_t outlen)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		int c = (unsigned char)p[i];
		if (c == '+') {
			c = ' ';
		} else if (c == '%') {
			if (i + 2 >= n)
				return false;
			int a = hexval(p[i + 1]), b = hexval(p[i + 2]);
			if (a < 0 || b < 0)
				return false;
			c = a * 16 + b;
			i += 2;
		}
		if (c == 0 || o + 1 >= outlen)
			return false;
		out[o++] = (char)c;
	}
	out[o] = '\0';
	return true;
}

/*
 * Finds name's value in the query string; TERN_OK with it decoded in out,
 * TERN_ENOTFOUND when absent (or empty), TERN_EINVAL when undecodable.
 */
static int param(const char *qs, size_t len, const char *name, char *out, size_t outlen)
{
	size_t nl = strlen(name);
	const char *p = qs, *end = qs + len;
	while (p < end) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *e = amp ? amp : end;
		const char *eq = memchr(p, '=', (size_t)(e - p));
		if (eq && (size_t)(eq - p) == nl && memcmp(p, name, nl) == 0) {
			if (eq + 1 == e)
				return TERN_ENOTFOUND;
			return decode(eq + 1, (size_t)(e - eq - 1), out, outlen) ? TERN_OK
			                                                         : TERN_EINVAL;
		}
		p = e + 1;
	}
	return TERN_ENOTFOUND;
}

static int answer(json_t *j, char **body, int status)
{
	*body = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(j);
	if (!*body) {
		*body = strdup("{\"error\":\"out of memory\"}");
		return 500;
	}
	return status;
}

static int error(char **body, int status, const char *msg)
{
	return answer(json_pack("{s:s}", "error", msg), body, status);
}

static bool parse_u64(const char *s, long long lo, long long hi, long long *v)
{
	char *end;
	long long x = strtoll(s, &end, 10);
	if (*s < '0' || *s > '9' || *end || x < lo || x > hi)
		return false;
	*v = x;
	return true;
}

static void add_event(void *arg, int64_t id, const char *js)
{
	json_t *a = arg, *e = json_loads(js, 0, NULL);
	if (e)
		json_array_append_new(a, e);
}

int events_query_parse(const char *qs, size_t len, int64_t now, struct events_query *q,
                       struct events_query_buf *buf, const char **why)
{
	char v[PARAM_MAX];
	int rc;
	long long x;
	*q = (struct events_query){.limit = 100};
	if (!qs)
		len = 0;
	struct {
		const char *name;
		char *buf;
		const char **field;
	} strs[] = {
	    {"type", buf->type, &q->type},
	    {"recipient", buf->recipient, &q->recipient},
	    {"tag", buf->tag, &q->tag},
	    {"queue_id", buf->queue_id, &q->queue_id},
	};
	for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
		rc = param(qs, len, strs[i].name, strs[i].buf, sizeof(buf->type));
		if (rc == TERN_OK) {
			*strs[i].field = strs[i].buf;
		} else if (rc != TERN_ENOTFOUND) {
			*why = "a parameter is not percent-encoded properly";
			return TERN_EINVAL;
		}
	}
	if (q->type && events_type_parse(q->type) < 0) {
		*why = "type: not an event type";
		return TERN_EINVAL;
	}
	if ((rc = param(qs, len, "since", v, sizeof(v))) == TERN_OK) {
		if ((q->since = events_parse_time(v, now)) < 0) {
			*why = "since: an RFC 3339 time (2026-12-06T07:00:00Z), unix seconds or an "
			       "age (10min, 2h, 1d)";
			return TERN_EINVAL;
		}
	} else if (rc != TERN_ENOTFOUND) {
		*why = "cannot decode since";
		return TERN_EINVAL;
	}
	if ((rc = param(qs, len, "cursor", v, sizeof(v))) == TERN_OK) {
		if (!parse_u64(v, 0, INT64_MAX, &x)) {
			*why = "cursor: give back the next_cursor of a previous page";
			return TERN_EINVAL;
		}
		q->after = x;
	} else if (rc != TERN_ENOTFOUND) {
		*why = "cannot decode cursor";
		return TERN_EINVAL;
	}
	if ((rc = param(qs, len, "limit", v, sizeof(v))) == TERN_OK) {
		if (!parse_u64(v, 1, 1000, &x)) {
			*why = "limit: 1 to 1000";
			return TERN_EINVAL;
		}
		q->limit = (unsigned)x;
	} else if (rc != TERN_ENOTFOUND) {
		*why = "cannot decode limit";
		return TERN_EINVAL;
	}
	return TERN_OK;
}

int events_route_list(sqlite3 *db, const char *qs, size_t qs_len, const char *only_key, char **body)
{
	struct events_query q;
	struct events_query_buf buf;
	const char *why = NULL;
	if (events_query_parse(qs, qs_len, (int64_t)time(NULL), &q, &buf, &why) != TERN_OK)
		return error(body, 400, why);
	q.key = only_key;
	json_t *arr = json_array();
	if (!arr)
		return error(body, 500, "out of memory");
	int64_t last = 0;
	int n = events_query_run(db, &q, add_event, arr, &last);
	if (n < 0) {
		json_decref(arr);
		return error(body, 500, "the event store failed");
	}
	char cur[32];
	snprintf(cur, sizeof(cur), "%lld", (long long)last);
	/* A full page may have a next one; a short page is the end for now
	 * (poll again with the same cursor for newer events). */
	json_t *next = json_string(cur);
	return answer(json_pack("{s:o, s:o, s:b}", "events", arr, "next_cursor", next, "more",
	                        (unsigned)n == q.limit),
	              body, 200);
}

int events_route_webhooks(sqlite3 *db, char **body)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db,
	                       "SELECT w.id, w.url, w.events, w.key, w.status, "
	                       "(SELECT count(*) FROM outbox o WHERE o.endpoint = w.id AND "
	                       "o.done = 0) FROM webhooks w ORDER BY w.id",
	                       -1, &st, NULL) != SQLITE_OK)
		return error(body, 500, "the event store failed");
	json_t *arr = json_array();
	while (arr && sqlite3_step(st) == SQLITE_ROW)
		json_array_append_new(arr,
		                      json_pack("{s:I, s:s, s:s, s:s, s:s, s:I}", "id",
		                                (json_int_t)sqlite3_column_int64(st, 0), "url",
		                                (const char *)sqlite3_column_text(st, 1), "events",
		                                (const char *)sqlite3_column_text(st, 2), "key",
		                                (const char *)sqlite3_column_text(st, 3), "status",
		                                (const char *)sqlite3_column_text(st, 4), "pending",
		                                (json_int_t)sqlite3_column_int64(st, 5)));
	sqlite3_finalize(st);
	if (!arr)
		return error(body, 500, "out of memory");
	return answer(json_pack("{s:o}", "webhooks", arr), body, 200);
}

int events_route_attempts(sqlite3 *db, int64_t id, const char *qs, size_t qs_len, char **body)
{
	char v[PARAM_MAX];
	long long limit = 50;
	int rc = param(qs ? qs : "", qs ? qs_len : 0, "limit", v, sizeof(v));
	if (rc == TERN_OK && !parse_u64(v, 1, 1000, &limit))
		return error(body, 400, "limit: 1 to 1000");
	if (rc == TERN_EINVAL)
		return error(body, 400, "cannot decode limit");
	sqlite3_stmt *st = NULL;
	bool found = false;
	if (sqlite3_prepare_v2(db, "SELECT 1 FROM webhooks WHERE id = ?", -1, &st, NULL) ==
	    SQLITE_OK) {
		sqlite3_bind_int64(st, 1, id);
		found = sqlite3_step(st) == SQLITE_ROW;
	}
	sqlite3_finalize(st);
	if (!found)
		return error(body, 404, "no such webhook endpoint");
	char *node = events_node(db);
	if (sqlite3_prepare_v2(db,
	                       "SELECT * FROM (SELECT id, time, event, http_status, error FROM "
	                       "attempts WHERE endpoint = ? ORDER BY id DESC LIMIT ?) ORDER BY id",
	                       -1, &st, NULL) != SQLITE_OK) {
		free(node);
		return error(body, 500, "the event store failed");
	}
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_int64(st, 2, limit);
	json_t *arr = json_array();
	while (arr && sqlite3_step(st) == SQLITE_ROW) {
		char ts[TERN_RFC3339_MAX], ev[64];
		tern_rfc3339(sqlite3_column_int64(st, 1), ts, sizeof(ts));
		snprintf(ev, sizeof(ev), "evt_%s_%lld", node ? node : "0",
		         (long long)sqlite3_column_int64(st, 2));
		json_array_append_new(arr,
		                      json_pack("{s:s, s:s, s:i, s:s}", "time", ts, "event", ev,
		                                "http_status", sqlite3_column_int(st, 3), "error",
		                                (const char *)sqlite3_column_text(st, 4)));
	}
	sqlite3_finalize(st);
	free(node);
	if (!arr)
		return error(body, 500, "out of memory");
	return answer(json_pack("{s:o}", "attempts", arr), body, 200);
}
