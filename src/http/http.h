/*
 * http.h — the HTTP server of capture mode: Mailpit's REST API v1
 * (tests/data/mailpit-api/swagger.json), /view/ID.html and
 * /view/ID.txt, a server-sent-events stream for live UIs, and the web UI's
 * static files (embedded in the binary at build time from web/).
 *
 * Runs on its own event-loop worker (core/loop.h): store calls block on
 * disk briefly, which is why it never shares a worker with SMTP sessions.
 *
 * Routes beyond the swagger:
 *   GET /api/events   a WebSocket (RFC 6455) when asked to upgrade, with
 *                     Mailpit's {"Type","Data"} events (docs/capture.md);
 *                     otherwise text/event-stream; events "new" (MessageSummary),
 *                     "delete" ({"IDs":[...]} or {"All":true}), "update"
 *                     ({"IDs":[...]}), "stats" ({"Total":N,"Unread":N});
 *                     a comment line every 15 s keeps proxies from closing it
 *   GET /livez, /readyz  200 "ok" (health checks; no login, any Host)
 *   GET /             the web UI (index.html); GET /assets/...  its files
 */
#ifndef TERN_HTTP_HTTP_H
#define TERN_HTTP_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct capture_store;
struct http_auth;
struct pool;
struct ssl_ctx_st;
struct evhttp_request;
struct worker;

/* What the HTTP layer asks of the rest of tern. Callbacks may complete on
 * any thread; the HTTP server posts the completion back to its worker. */
struct http_hooks {
	void *ctx;
	/* POST /api/v1/send: queue a built message for capture as if received
	 * over SMTP. done(arg, err, id) runs once; id is the capture ID. */
	void (*send)(void *ctx, const char *raw, size_t len, const char *from,
	             const char *const *to, size_t n_to,
	             void (*done)(void *arg, int err, const char *id), void *arg);
	/* POST /api/v1/message/{ID}/release: relay a stored message to the given
	 * addresses through the normal outbound path. Returns TERN_OK, or
	 * TERN_EINVAL when release is not configured. */
	int (*release)(void *ctx, const char *id, const char *const *to, size_t n_to);
	/* GET/PUT /api/v1/chaos: the triggers as a ChaosTriggers JSON text
	 * (get writes into buf) / from one (set returns TERN_OK or TERN_ESYNTAX). */
	void (*chaos_get)(void *ctx, char *buf, size_t len);
	int (*chaos_set)(void *ctx, const char *json, size_t len);
	/* Whether release can work (a relayhost or route is configured). */
	bool (*release_enabled)(void *ctx);
	/* Counters for /api/v1/info RuntimeStats. */
	void (*runtime_stats)(void *ctx, uint64_t *smtp_accepted, uint64_t *smtp_accepted_size,
	                      uint64_t *smtp_rejected, uint64_t *messages_deleted);
	const char *version;
	const char *smtp_address; /* for /api/v1/info and the UI */
	/* Basic authentication for everything but /livez and /readyz
	 * (http/basic_auth.h), or NULL: open. Its cache is used on the HTTP
	 * worker only; new logins are verified on pool (below). */
	struct http_auth *ui_auth;
	/* HTTPS: every connection speaks TLS with this context (a reference is
	 * held by the caller for the server's life), or NULL: plain HTTP. */
	struct ssl_ctx_st *ui_tls;
	/* The thread pool for blocking work (the password check of ui_auth),
	 * or NULL: done on the HTTP worker. */
	struct pool *pool;
	/* Serve mode (http/api.h): when set, every request goes here instead of
	 * capture's routes and guard (st is then NULL); it answers req, at once
	 * or later on this worker. */
	void (*handle)(void *ctx, struct evhttp_request *req);
};

struct http_server;

/* Starts serving on listen_fd (bound, listening) on worker w. */
struct http_server *http_server_new(struct worker *w, int listen_fd, struct capture_store *st,
                                    const struct http_hooks *hooks);
/* Publishes a store change to every /api/events client (any thread). */
void http_server_publish(struct http_server *h, const char *type, const char *json);
void http_server_free(struct http_server *h);

/*
 * Added by the HTTP module (declarations only; the contract above is unchanged).
 *
 * http_send_build: the pure half of POST /api/v1/send. Turns Mailpit's send
 * JSON (json, len) into an RFC 5322 / MIME message with CRLF line ends:
 * multipart/mixed > multipart/related > multipart/alternative as needed,
 * RFC 2047 encoded words for non-ASCII header text, RFC 2231 file names,
 * quoted-printable bodies and base64 attachments. Date comes from now,
 * Message-ID from msgid ("local@domain", no angle brackets) unless the
 * JSON's Headers set them. Bcc addresses go to the envelope only (no Bcc
 * header), as Mailpit does. On success fills out (free with
 * http_send_msg_free) and returns TERN_OK; on bad input returns
 * TERN_ESYNTAX (or TERN_ELIMIT) with a one-line reason in err.
 */
struct http_send_msg {
	char *raw; /* the message; NUL-terminated, len bytes */
	size_t len;
	char *from; /* envelope sender (From.Email) */
	char **to;  /* envelope recipients: To, Cc and Bcc addresses */
	size_t n_to;
	char **tags; /* Tags, to set on the stored message */
	size_t n_tags;
};
/* The ceiling of a /api/v1/send body whatever capture.http_max_body says
 * (the built message is bounded at 96 MiB in send.c anyway). */
#define HTTP_SEND_MAX_BODY (128u * 1024 * 1024)
int http_send_build(const char *json, size_t len, long long now, const char *msgid,
                    struct http_send_msg *out, char *err, size_t errlen);
/* The same from a send object already parsed (root: Mailpit's send JSON as
 * a jansson object, borrowed), without a text round trip: the native API
 * builds one (http/api.h). Same results and errors. */
struct json_t;
int http_send_build_obj(struct json_t *root, long long now, const char *msgid,
                        struct http_send_msg *out, char *err, size_t errlen);
void http_send_msg_free(struct http_send_msg *m);

/*
 * The request guard (guard.c): pure checks over header values, so that the
 * API answers only its own pages and programs, never a page of another site
 * that a browser runs (cross-site requests) or that reaches the listener
 * under a name of its own (DNS rebinding).
 *
 * http_parse_host: a Host header value (RFC 9110 §7.2) "name[:port]",
 * "a.b.c.d[:port]" or "[IPv6][:port]" into out: name lowercased with one
 * trailing dot dropped, IPv6 in inet_ntop's spelling inside brackets, port
 * -1 when absent. TERN_ESYNTAX for anything else (userinfo, two colons,
 * spaces inside, empty).
 *
 * http_host_allowed: whether a parsed Host names this listener: any IP
 * literal (a page can only send one it was itself loaded from), localhost
 * and *.localhost, own_hostname (the config's hostname; may be NULL), and
 * the allow-list: "*" allows every name, ".example.com" allows
 * example.com and every name under it, anything else one exact name
 * (case-insensitive). Ports are not compared.
 *
 * http_origin_same: whether an Origin header value (n bytes) is
 * "http[s]://HOST[:PORT]" for the very host and port of the request's Host
 * (a missing port is the scheme's default on both sides). "null" and any
 * other value are not.
 *
 * http_ctype_is_json: whether a Content-Type value's media type is
 * application/json (case-insensitive, parameters allowed).
 */
#define HTTP_HOST_NAME_MAX 253
struct http_hostport {
	char name[HTTP_HOST_NAME_MAX + 3]; /* room for "[" IPv6 "]" */
	int port;
	bool ip;
};
int http_parse_host(const char *s, size_t n, struct http_hostport *out);
bool http_host_allowed(const struct http_hostport *h, const char *const *allowed, size_t n_allowed,
                       const char *own_hostname);
bool http_origin_same(const char *origin, size_t n, const struct http_hostport *host);
bool http_ctype_is_json(const char *ct, size_t n);

/* The web UI's files, embedded at build time from web/ (generated source,
 * see src/http/embed_assets.cmake). path is "/index.html", "/assets/x.js"...
 * Returns the bytes and their length, or NULL when there is no such file. */
const unsigned char *http_asset_find(const char *path, size_t *len);
/* Pure: the Content-Type for an embedded file's name, by its extension
 * ("application/octet-stream" when unknown). */
const char *http_asset_type(const char *path);

#endif
