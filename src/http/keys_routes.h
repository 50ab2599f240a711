/*
 * keys_routes.h — /api/v1/keys of `tern serve` (issue 13 item 4): the API
 * keys listed, made and revoked over HTTP, for admins (an admin key or a
 * logged-in UI session), with the same store functions `tern apikey` uses
 * (store/apikeys.h).
 *
 *   GET    /api/v1/keys          {"keys": [{id, name, scope, from_domains,
 *                                 per_second, per_hour, per_day, created,
 *                                 revoked}]} — never a secret
 *   POST   /api/v1/keys          {"name", "scope", "from_domains": [...],
 *                                 "per_hour", "per_day", "per_second"} -> 201
 *                                 the key with "token": shown this once
 *   DELETE /api/v1/keys/{name}   revokes the live key of that name (or id)
 */
#ifndef TERN_HTTP_KEYS_ROUTES_H
#define TERN_HTTP_KEYS_ROUTES_H

#include <jansson.h>
#include <stddef.h>

struct apikeys;
struct api_error;

#define KEYS_DOMAINS_MAX 32

/*
 * One request: method ("GET", "POST", "DELETE"), name ("" for the
 * collection, else the path segment after keys/), body (n bytes, POST).
 * Returns the HTTP status; *out the answer (2xx) or e filled (4xx/5xx).
 * Blocking (SQLite): the API's pool only.
 */
int keys_route(struct apikeys *k, const char *method, const char *name, const char *body, size_t n,
               json_t **out, struct api_error *e);

#endif
