/*
 * suppress_routes.h — the HTTP side of the suppression list (store/suppress.h):
 * the RFC 8058 one-click unsubscribe endpoint and the suppression API, as
 * handlers independent of any HTTP server: the caller hands over the
 * request's method, path (without the query), query, content type and body,
 * and sends back the status and the JSON body these return.
 *
 * Both block on SQLite: run them on the thread pool, never on an event loop.
 * The API handler does no authentication: the caller checks the API key
 * (scope admin, or the key's from-domains against the entry's domain)
 * before it routes a request here.
 */
#ifndef TERN_HTTP_SUPPRESS_ROUTES_H
#define TERN_HTTP_SUPPRESS_ROUTES_H

#include <stddef.h>

#include "core/buf.h"

/* The path prefix of the one-click URLs (suppress_unsub_headers). */
#define SUPPRESS_UNSUB_PATH "/unsubscribe/"
/* The API's collection. */
#define SUPPRESS_API_PATH "/api/v1/suppressions"

/*
 * POST /unsubscribe/TOKEN (RFC 8058 §3.1): token is what follows the prefix.
 * The body must hold "List-Unsubscribe=One-Click" (form-encoded or
 * multipart/form-data, as mail clients send it); then the address the token
 * names goes on its sending domain's list, reason unsubscribe. A repeated
 * POST is fine (200 again). Returns the HTTP status — 200; 400 for a body
 * without the One-Click field; 404 for a token that does not verify (no
 * difference between forged and mangled); 405 for any method but POST (a
 * GET, as link scanners send, must never unsubscribe); 500 if the store
 * fails — and appends a JSON body ({"unsubscribed": ADDRESS} or {"error":
 * CODE, "message": TEXT}) to out.
 */
int suppress_http_unsubscribe(const char *data_dir, const char *method, const char *token,
                              size_t token_len, const char *body, size_t body_len,
                              struct tbuf *out);

/*
 * The suppression API, path starting with SUPPRESS_API_PATH:
 *   GET    /api/v1/suppressions[?domain=D | ?domain=]   list (no domain: all;
 *          an empty domain: the global list) -> 200 {"suppressions": [ENTRY...]}
 *   GET    /api/v1/suppressions/ADDRESS[?domain=D]   -> 200 ENTRY, 404
 *   PUT    /api/v1/suppressions/ADDRESS  {"domain": D, "reason": R, "detail": T}
 *          (all optional; reason default manual)     -> 200 ENTRY
 *   DELETE /api/v1/suppressions/ADDRESS[?domain=D]   -> 204, 404
 * ENTRY is {"address", "domain" ("" global), "reason", "detail", "created"
 * (unix seconds), "queue_id"}. ADDRESS may be percent-encoded. Errors:
 * 400 bad address/JSON, 404, 405, 500; body {"error": CODE, "message": TEXT}.
 * Returns the status; the body is appended to out (empty for 204).
 */
int suppress_http_api(const char *data_dir, const char *method, const char *path, const char *query,
                      const char *body, size_t body_len, struct tbuf *out);

/*
 * The sending domain a suppression API request (the same method, query and
 * body as above) acts on, so the caller can check an API key against it
 * before routing: the same reading as suppress_http_api's (a PUT body's
 * "domain" over the query's; the last "domain=" of the query). Returns
 * SUPPRESS_SCOPE_ONE with the domain lowercased in out ("" = the global
 * list), SUPPRESS_SCOPE_ALL for a list of every scope (a GET of the
 * collection without domain=), or SUPPRESS_SCOPE_BAD when the query or
 * body is malformed (the handler answers 400 for it). Pure.
 */
enum suppress_scope_kind { SUPPRESS_SCOPE_BAD = -1, SUPPRESS_SCOPE_ONE = 0, SUPPRESS_SCOPE_ALL };
enum suppress_scope_kind suppress_http_api_scope(const char *method, const char *path,
                                                 const char *query, const char *body,
                                                 size_t body_len, char *out, size_t outlen);

#endif
