/*
 * http.h — the HTTP server of capture mode: Mailpit's REST API v1
 * (../shared/reference/mailpit-api/swagger.json), /view/ID.html and
 * /view/ID.txt, a server-sent-events stream for live UIs, and the web UI's
 * static files (embedded in the binary at build time from web/).
 *
 * Runs on its own event-loop worker (core/loop.h): store calls block on
 * disk briefly, which is why it never shares a worker with SMTP sessions.
 *
 * Routes beyond the swagger:
 *   GET /api/events   text/event-stream; events "new" (MessageSummary),
 *                     "delete" ({"IDs":[...]} or {"All":true}), "update"
 *                     ({"IDs":[...]}), "stats" ({"Total":N,"Unread":N});
 *                     a comment line every 15 s keeps proxies from closing it
 *   GET /             the web UI (index.html); GET /assets/...  its files
 */
#ifndef TERN_HTTP_HTTP_H
#define TERN_HTTP_HTTP_H

#include <stdbool.h>
#include <stddef.h>

struct capture_store;
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
	const char *version;
	const char *smtp_address; /* for /api/v1/info and the UI */
};

struct http_server;

/* Starts serving on listen_fd (bound, listening) on worker w. */
struct http_server *http_server_new(struct worker *w, int listen_fd, struct capture_store *st,
				    const struct http_hooks *hooks);
/* Publishes a store change to every /api/events client (any thread). */
void http_server_publish(struct http_server *h, const char *type, const char *json);
void http_server_free(struct http_server *h);

#endif
