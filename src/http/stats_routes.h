/*
 * stats_routes.h — GET /api/v1/stats (issue 13 item 4) independent of the
 * listener that serves it (http/api.c routes it, admin scope, on its pool):
 *
 *   GET /api/v1/stats?since=24h|7d|30d&bucket=hour|day&group=none|domain|key|tag|provider
 *
 * The answer's shape is the contract with the web UI (docs: web/openapi.json):
 * {"since","until","bucket","group","totals":{8 counters},"series":[{"t",..}],
 *  "groups":[{"name",..}],"latency_ms":{"count","p50","p90","p99","max"},
 *  "top_bounce_reasons":[{"status","reason","count"}],"opens_note"}.
 */
#ifndef TERN_HTTP_STATS_ROUTES_H
#define TERN_HTTP_STATS_ROUTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <sqlite3.h>

#include "store/stats.h"

#define STATS_OPENS_NOTE                                                                           \
	"opens are approximate: Apple Mail Privacy Protection and image proxies open every "       \
	"message"

/*
 * Pure: the raw value of name in a query string (qs, len: after '?', not
 * decoded, may be NULL): true with *v, *vlen pointing into qs when the
 * parameter is there (the first one of that name; the value may be empty).
 */
bool http_qs_raw(const char *qs, size_t len, const char *name, const char **v, size_t *vlen);

/*
 * Pure: the stats parameters of a query string into *q. since: an age
 * "Nh" (1 to 2400) or "Nd" (1 to 100) before now, default 24h; bucket: hour
 * or day, default hour for at most 48 hours, else day; group: none, domain,
 * key, tag or provider, default none. until is now. TERN_OK, or TERN_EINVAL
 * with a message for the client in *why (static text). Parameters it does
 * not know are ignored.
 */
int stats_query_parse(const char *qs, size_t len, int64_t now, struct stats_query *q,
                      const char **why);

/* The API's answer for q and its result (NULL when out of memory). */
json_t *stats_result_json(const struct stats_query *q, const struct stats_result *r);

/*
 * The whole route on the store db (blocks on SQLite: the API's pool only):
 * 200 with *body, or 400/500 with *why (static text) and *body NULL.
 */
int stats_route(sqlite3 *db, const char *qs, size_t len, json_t **body, const char **why);

#endif
