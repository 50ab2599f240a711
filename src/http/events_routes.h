/*
 * events_routes.h — the HTTP API's event and webhook routes, independent of
 * the listener that serves them (apiserve's src/http/api*.c wires them):
 *
 *   GET /api/v1/events?recipient=&type=&since=&tag=&queue_id=&cursor=&limit=
 *   GET /api/v1/webhooks
 *   GET /api/v1/webhooks/{id}/attempts?limit=
 *
 * Each takes the store and the raw query string (after '?', not decoded,
 * may be empty) and returns the HTTP status with a malloc'd JSON body in
 * *body (the caller frees it; set for every status: {"error": "..."} when
 * not 200).
 */
#ifndef TERN_HTTP_EVENTS_ROUTES_H
#define TERN_HTTP_EVENTS_ROUTES_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

struct events_query;
/* Scratch space for events_query_parse: the decoded parameters live here. */
struct events_query_buf {
	char type[512], recipient[512], tag[512], queue_id[512];
};
/*
 * The pure part of GET /api/v1/events: reads type, recipient, tag, queue_id,
 * since, cursor and limit out of the raw query string (qs, len) into *q
 * (strings pointing into *buf). TERN_OK, or TERN_EINVAL with what is wrong
 * in *why (a static string). now: for relative since= values.
 */
int events_query_parse(const char *qs, size_t len, int64_t now, struct events_query *q,
                       struct events_query_buf *buf, const char **why);

/* {"events":[...oldest first...],"next_cursor":"N","more":BOOL}: pass
 * next_cursor back as cursor= for the next page (or, when more is false, to
 * poll for newer events). only_key (not NULL): only that API key's events
 * (a key that is not an admin sees its own). 400 on a bad parameter (unknown type, unreadable
 * since, cursor or limit). */
int events_route_list(sqlite3 *db, const char *qs, size_t qs_len, const char *only_key,
                      char **body);
/* {"webhooks":[{"id","url","events","key","status","pending"}]} (no secrets). */
int events_route_webhooks(sqlite3 *db, char **body);
/* {"attempts":[{"time","event","http_status","error"}]}, newest last; 404
 * when there is no such endpoint. */
int events_route_attempts(sqlite3 *db, int64_t id, const char *qs, size_t qs_len, char **body);

#endif
