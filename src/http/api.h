/*
 * api.h — the HTTP sending API of `tern serve` (issue 12): the native JSON
 * API under /api/v1/ (docs: web/openapi.json, served at /api/openapi.json),
 * Mailpit's POST /api/v1/send, /healthz and /readyz, on listeners with
 * profile "http". It runs on the capture HTTP server (http.h) through its
 * serve-mode hook (http_hooks.handle).
 *
 * Two halves:
 *   - api_json.c: pure decoders from request JSON to a built message and
 *     its envelope (http_send_build does the MIME work), with errors that
 *     carry an HTTP status, a stable code and the field at fault;
 *   - api.c: routing, Bearer/Basic authentication against the key store
 *     (store/apikeys.h), the from-domain rule, the spool commit (DESIGN §4:
 *     202 only after it) and the status of a queued message.
 */
#ifndef TERN_HTTP_API_H
#define TERN_HTTP_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/http.h"

#define API_BATCH_MAX 500    /* messages in one POST /api/v1/messages/batch */
#define API_RCPTS_MAX 1000   /* envelope recipients of one message */
#define API_METADATA_MAX 50  /* keys in metadata */
#define API_METADATA_LEN 500 /* bytes of one metadata key or value */
/* How far ahead send_at may be: 72 hours (SES's scheduled-send horizon is
 * of that order); further is 422 send_at_too_far. */
#define API_SCHEDULE_MAX (72 * 3600)

/* An error for the client: {"error":{"code":..,"message":..,"field":..}}. */
struct api_error {
	int status;       /* 400, 401, 403, 404, 413, 415, 422, 500, 503 */
	const char *code; /* stable, listed in web/openapi.json (static text) */
	char message[320];
	char field[96]; /* "to[1]", "attachments[0].content"; "" when none */
};

void api_error_set(struct api_error *e, int status, const char *code, const char *field,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* A decoded send: the message with its envelope, and what the API needs
 * beside it. Free with api_send_free. */
struct api_send {
	struct http_send_msg msg; /* raw (CRLF), from, to[], tags[] */
	char *from_domain;        /* lowercased domain of the From header field */
	char *metadata;           /* compact JSON object, or NULL */
	bool list_unsub;          /* add RFC 8058 one-click List-Unsubscribe fields */
	char *unsub_mailto;       /* with a mailto: link to this address, or NULL */
	int64_t send_at;          /* not before this unix time; 0: at once */
};
void api_send_free(struct api_send *s);

/*
 * Native send: one message object (json, a JSON object already parsed) to
 * a built message. Keys: from, to, cc, bcc, reply_to (an address is
 * "a@b", "Name <a@b>" or {"email","name"}; lists may be one address),
 * subject, text, html (at least one of the two), attachments and inline
 * ([{filename, content, content_type, encoding: "base64", content_id
 * (inline only)}]), headers {name: value}, tags [..], metadata {k: "v"},
 * priority ("high"|"normal"|"low"), list_unsubscribe (true, or {"mailto":
 * ADDRESS}: one-click unsubscribe fields, added by the server side; only
 * for a message with exactly one recipient, else 422
 * list_unsubscribe_one_recipient, since the link names the recipient),
 * send_at (RFC 3339 text or unix seconds: a future time up to
 * API_SCHEDULE_MAX ahead goes into out->send_at, further is 422
 * send_at_too_far, a past one means now). now is the Date, msgid the
 * Message-ID ("local@domain"). TERN_OK, or TERN_ESYNTAX/TERN_ELIMIT/
 * TERN_ENOMEM with e filled. Pure.
 */
int api_json_send(json_t *obj, long long now, const char *msgid, struct api_send *out,
                  struct api_error *e);

/*
 * Raw send: {"from": envelope sender, "to": [recipients], "raw": base64 of
 * an RFC 5322 message} (bare LF line ends become CRLF). The From header
 * field's domain is taken for the from-domain rule. max bounds the
 * decoded message (413 message_too_large beyond). Pure.
 */
int api_json_raw(json_t *obj, size_t max, struct api_send *out, struct api_error *e);

/*
 * Parses a request body (len bytes) as one JSON object; 400 malformed_json
 * (or invalid_request when it is not an object) with e filled on failure.
 * The caller json_decrefs the result.
 */
json_t *api_json_parse(const char *body, size_t len, struct api_error *e);

/* The domain of the address in a From field value ("Name <a@b>", "a@b",
 * "a@b (comment)"), lowercased into out. false when there is not exactly
 * one mailbox. Pure. */
bool api_from_domain(const char *value, size_t n, char *out, size_t outlen);

/* --------------------------------------------------------- the server side */

struct spool;
struct scheduler;
struct api;
struct evhttp_request;

/*
 * Starts the API on the listening sockets fds[0..n_fds) (profile "http";
 * each taken over: set to -1); fds[i] speaks HTTPS when fd_tls[i], with
 * tls (tls_server_ctx: certificates by SNI, reloaded on SIGHUP; it must
 * outlive the API, and be set when any fd_tls[i] is), else plain HTTP.
 * Opens DATA/apikeys.db (created if missing),
 * makes a worker of its own for the HTTP servers and starts it, and
 * becomes the scheduler's result observer (the final state of each API
 * message is kept for GET /api/v1/messages/{id}). Call after the privilege
 * drop, once the runtime is installed, before anything is submitted (the
 * observer is set without a lock). NULL with err set
 * on failure (the fds not taken are still the caller's).
 */
struct api *api_start(const char *data_dir, struct spool *sp, struct scheduler *sched, int *fds,
                      const bool *fd_tls, size_t n_fds, struct ssl_ctx_st *tls, char *err,
                      size_t errlen);
/* Stops the worker (a request being committed finishes first) and frees
 * the servers: no request is served after. Call before the scheduler stops.
 * NULL is fine. */
void api_stop(struct api *a);
/* Frees the rest (api_stop first if not done): after the scheduler's last
 * result (scheduler_stop and scheduler_drain_results), since api_start made
 * it the scheduler's result observer. NULL is fine. */
void api_free(struct api *a);

#endif
