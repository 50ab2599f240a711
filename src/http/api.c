/*
 * api.c — the HTTP sending API of `tern serve` (api.h): routes, keys,
 * the spool commit and message status, on the capture HTTP server's
 * serve-mode hook (http_hooks.handle).
 *
 * Routes:
 *   GET  /healthz, /readyz             liveness; readiness (runtime, spool, keys)
 *   GET  /api/openapi.json             the OpenAPI 3 description (web/openapi.json)
 *   POST /api/v1/messages              native send (api_json_send)      -> 202
 *   POST /api/v1/messages/raw          an RFC 5322 message (api_json_raw) -> 202
 *   POST /api/v1/messages/batch        {"messages": [...]} up to 500, one result each
 *   GET  /api/v1/messages/{queue_id}   per-recipient state while queued
 *   POST /api/v1/send                  Mailpit's send (http_send_build) -> 200 {"ID"}
 *   GET  /api/v1/suppressions          the suppression list (suppress_routes.h)
 *   GET  /api/v1/suppressions/{address}
 *   PUT  /api/v1/suppressions/{address}
 *   DELETE /api/v1/suppressions/{address}
 *   POST /unsubscribe/{token}          RFC 8058 one-click (no key: the token is one)
 *   GET  /api/v1/events                stored events, paged (events_routes.h)
 *   GET  /api/v1/webhooks              webhook endpoints (admin)
 *   GET  /api/v1/webhooks/{id}/attempts  an endpoint's latest attempts (admin)
 *   GET  /api/v1/stats                 delivery statistics (admin; stats_routes.h)
 *   GET  /api/v1/queue                 the queue, paged (admin; queue_routes.h)
 *   POST /api/v1/queue/{queue_id}/retry    deliver now (admin)
 *   POST /api/v1/queue/{queue_id}/hold     hold its waiting recipients (admin)
 *   POST /api/v1/queue/{queue_id}/release  release its held recipients (admin)
 *   DELETE /api/v1/queue/{queue_id}        remove it, no DSN (admin)
 *   GET  /t/o/{token}, /t/c/{token}    open pixel, click redirect (http/tracking.h; no key)
 *   GET  /api/v1/archive               the message archive, searched (archive_routes.h; admin)
 *   GET  /api/v1/archive/export        matching messages as mbox or zip (admin)
 *   GET  /api/v1/archive/{id}/raw      an archived message's original bytes (admin)
 *   PUT  /api/v1/archive/{id}/hold     legal hold on (admin)
 *   DELETE /api/v1/archive/{id}/hold
 *   GET  /api/v1/keys                  API keys, never a secret (admin; keys_routes.h)
 *   POST /api/v1/keys                  make one: its token is in this answer only
 *   DELETE /api/v1/keys/{id}           revoke one (by name or id)
 *   /ui/...                            the web UI and its login (ui_routes.h)
 * A listener with tls = "implicit" speaks HTTPS (the SMTP listeners' TLS
 * context, so the same certificates, SNI choice and SIGHUP reload).
 * Every /api/v1 route needs a key: "Authorization: Bearer TOKEN", or Basic
 * with the token as password (Mailpit clients know Basic only). Sending
 * needs scope send or admin and a From domain the key allows. The
 * suppression routes need admin, or scope send and ?domain= one of the
 * key's domains. A logged-in web UI session (its cookie; and its
 * X-CSRF-Token on anything but GET) counts as an admin key (ui_routes.h).
 * Everything under /v2/ is the SES v2 compatible API (ses.h: SigV4, not a
 * bearer token; not in web/openapi.json); its SendEmail is committed here.
 *
 * send_at (scheduled sending) becomes the envelope's typed not-before time
 * (spool_msg.not_before): the scheduler tries nothing before it, the status
 * route shows such recipients as "scheduled".
 *
 * Owns: authentication and the from-domain rule, the Received field of
 * API mail, DKIM signing (smtp/sign.h, as for submission), the envelope,
 * and the spool commit: a 2xx is written only after spool_put's callback
 * said the message is on stable storage (DESIGN §5.1). One log line per
 * request: method, path, status, key, queue ids.
 * Threads: the HTTP server's own worker takes each /api/v1 and /unsubscribe
 * request apart and hands it to the API's pool (one thread, struct rjob):
 * the key lookup and the status reads (SQLite), JSON and MIME work, DKIM
 * signing, the suppression list run there, and the completion, back on the
 * worker, writes the reply or starts the commit. The worker never blocks:
 * nor does it wait for the disk's sync: a send is spool_put and its reply
 * is written when the committer's callback comes back (posted to the
 * worker), so requests from many clients join one group commit; a batch is
 * put whole. /healthz, /readyz and the OpenAPI file answer on the worker.
 * Must never: answer 2xx before the commit, accept part of a message,
 * send for a domain the key does not own, or log a token.
 */
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/codec.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/id.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/runtime.h"
#include "core/timefmt.h"
#include "deliver/pools.h"
#include "http/api.h"
#include "http/archive_routes.h"
#include "http/events_routes.h"
#include "http/keys_routes.h"
#include "http/queue_routes.h"
#include "http/stats_routes.h"
#include "queue/queue.h"
#include "smtp/sign.h"
#include "smtp/smtp.h"
#include "http/ses.h"
#include "http/suppress_routes.h"
#include "http/tracking.h"
#include "http/ui_routes.h"
#include "http/ui_session.h"
#include "store/apikeys.h"
#include "store/archive.h"
#include "store/events.h"
#include "store/quota.h"
#include "store/suppress.h"

#define TRACE_MAX 1024
#define BATCH_BODY_MAX ((size_t)64 * 1024 * 1024)

struct api {
	struct apikeys *keys;    /* the pool thread's connection */
	struct apikeys *results; /* the delivery threads' (under results_mu) */
	pthread_mutex_t results_mu;
	pthread_mutex_t mu; /* n_pending and each pending's outstanding */
	pthread_cond_t cv;
	size_t n_pending; /* requests waiting for the commit */
	struct spool *sp;
	struct scheduler *sched;
	struct worker *w;
	struct pool *pool; /* one thread: every request's blocking work (struct rjob) */
	char *data_dir;
	struct http_server *http[16];
	size_t n_http;
	bool started;
	sqlite3 *events; /* DATA/events.db for the event routes (the pool's), or NULL */
	/* Statistics and the queue (R_OPS) on a pool thread of their own, with
	 * their own connections: a 30-day count over a large event store takes
	 * seconds of SQLite, which must not hold up sends on a->pool. */
	struct pool *ops_pool;
	struct apikeys *ops_keys;
	sqlite3 *ops_events;
	struct archive *archive; /* ARCHIVE: opened at first use, on the ops pool */
	/* the tracking tokens' key (DATA/suppress.key), read on the pool at first use */
	unsigned char track_key[TRACK_KEY_LEN];
	bool track_key_ok;
	struct ui *ui; /* the web UI and its sessions (ui_routes.h) */
};

/* One request: what the log line says. */
struct req_ctx {
	struct api *a;
	struct evhttp_request *req;
	const char *method;
	char path[160];
	char peer[64];
	struct apikey key;
	bool have_key;
	/* the key store connection of the pool thread the request runs on */
	struct apikeys *keys;
	int64_t retry_after; /* > 0: a Retry-After field goes with the reply */
	char ids[160];       /* queue ids, comma-separated, for the log */
	/*
	 * A request whose work runs on the pool (struct rjob): everything it
	 * reads was taken from the request on the worker, and what it answers
	 * is recorded here and sent from the completion on the worker, since
	 * the request belongs to the worker's event loop.
	 */
	bool deferred;
	char *in_path, *in_query, *in_auth, *in_ctype; /* NULL when absent */
	char *in_cookie, *in_csrf;                     /* the web UI session's */
	struct evbuffer *in_body;                      /* moved out of the request */
	int d_status;                                  /* the recorded answer, */
	json_t *d_body;                                /* when d_replied */
	bool d_replied, d_www_auth;
	int d_kind;           /* or messages to commit (enum kind) */
	struct item *d_items; /* owned until handed to commit_start */
	size_t d_n;
	struct sigv4_header *in_hdrs; /* SES (/v2/): every request header, for SigV4 */
	size_t in_nh;
	const char *amz_type; /* SES: the x-amzn-ErrorType of an error answer */
	int d_track;          /* tracking: 'o' the pixel, 'c' a redirect to d_location */
	char *d_location;
	struct archive_answer d_bytes; /* ARCHIVE: a reply of bytes when .raw is set */
};

/* ---------------------------------------------------------------- replies */

static void reply_json(struct req_ctx *c, int code, json_t *j)
{
	if (c->deferred) { /* on the pool: the worker sends it (rjob_done) */
		if (c->d_replied) {
			json_decref(j);
			return;
		}
		c->d_replied = true;
		c->d_status = code;
		c->d_body = j;
		return;
	}
	struct evkeyvalq *oh = evhttp_request_get_output_headers(c->req);
	if (c->retry_after > 0) {
		char ra[24];
		snprintf(ra, sizeof(ra), "%lld", (long long)c->retry_after);
		evhttp_add_header(oh, "Retry-After", ra);
	}
	evhttp_add_header(oh, "Content-Type", "application/json; charset=utf-8");
	evhttp_add_header(oh, "Cache-Control", "no-store");
	evhttp_add_header(oh, "X-Content-Type-Options", "nosniff");
	if (c->amz_type)
		evhttp_add_header(oh, "x-amzn-ErrorType", c->amz_type);
	char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	struct evbuffer *b = evbuffer_new();
	if (code == 204 && b) { /* no body */
		free(s);
		evhttp_send_reply(c->req, 204, "No Content", b);
		evbuffer_free(b);
	} else if (!s || !b) {
		free(s);
		if (b)
			evbuffer_free(b);
		evhttp_send_error(c->req, 500, "out of memory");
		code = 500;
	} else {
		evbuffer_add(b, s, strlen(s));
		free(s);
		evhttp_send_reply(c->req, code, code == 202 ? "Accepted" : NULL, b);
		evbuffer_free(b);
	}
	char kq[APIKEY_NAME_MAX + 8];
	log_info("event=api method=%s path=%s status=%d key=%s peer=%s id=%s", c->method, c->path,
	         code,
	         c->have_key ? log_quote(c->key.name, strlen(c->key.name), kq, sizeof(kq)) : "-",
	         c->peer, c->ids[0] ? c->ids : "-");
}

static json_t *error_obj(const struct api_error *e)
{
	json_t *o = json_pack("{s:s, s:s}", "code", e->code, "message", e->message);
	if (o && e->field[0])
		json_object_set_new(o, "field", json_string(e->field));
	return o;
}

static void reply_error(struct req_ctx *c, const struct api_error *e)
{
	if (e->status == 401 && c->deferred) {
		c->d_www_auth = true;
	} else if (e->status == 401) {
		struct evkeyvalq *oh = evhttp_request_get_output_headers(c->req);
		evhttp_add_header(oh, "WWW-Authenticate", "Bearer realm=\"tern\"");
	}
	reply_json(c, e->status, json_pack("{s:o}", "error", error_obj(e)));
}

static void fail(struct req_ctx *c, int status, const char *code, const char *msg)
{
	struct api_error e;
	api_error_set(&e, status, code, NULL, "%s", msg);
	reply_error(c, &e);
}

static void add_id(struct req_ctx *c, const char *id)
{
	size_t n = strlen(c->ids);
	if (n + QUEUE_ID_LEN + 2 < sizeof(c->ids))
		snprintf(c->ids + n, sizeof(c->ids) - n, "%s%s", n ? "," : "", id);
}

/* ------------------------------------------------------------------ keys */

/* A request with the web UI's session cookie and no Authorization: an
 * admin key named "ui:USER" when the session lives (403 without its CSRF
 * token on a method that changes something). */
static bool ui_session_key(struct req_ctx *c)
{
	bool safe = strcmp(c->method, "GET") == 0 || strcmp(c->method, "HEAD") == 0;
	char user[UI_USER_MAX + 1];
	switch (ui_api_auth(c->a->ui, c->in_cookie, c->in_csrf, safe, user, sizeof(user))) {
	case UI_AUTH_OK:
		memset(&c->key, 0, sizeof(c->key));
		snprintf(c->key.name, sizeof(c->key.name), "ui:%.*s", APIKEY_NAME_MAX - 3, user);
		c->key.scope = APIKEY_ADMIN;
		c->have_key = true;
		return true;
	case UI_AUTH_CSRF:
		fail(c, 403, "csrf", "the X-CSRF-Token header is missing or wrong");
		return false;
	default:
		fail(c, 401, "unauthorized", "the session is unknown, expired or logged out");
		return false;
	}
}

/* The key of the request (Bearer, or Basic with the token as password). */
static bool authenticate(struct req_ctx *c)
{
	const char *h = c->in_auth;
	const char *tok = NULL;
	size_t tl = 0;
	struct tbuf dec = TBUF_INIT(1024);
	if (h && strncasecmp(h, "Bearer ", 7) == 0) {
		tok = h + 7;
		while (*tok == ' ')
			tok++;
		tl = strlen(tok);
		while (tl && tok[tl - 1] == ' ')
			tl--;
	} else if (h && strncasecmp(h, "Basic ", 6) == 0 && strlen(h + 6) < 800 &&
	           tern_base64_decode(h + 6, strlen(h + 6), &dec) == TERN_OK && dec.len) {
		const char *colon = memchr(dec.data, ':', dec.len);
		if (colon) {
			tok = colon + 1;
			tl = dec.len - (size_t)(colon + 1 - dec.data);
		}
	}
	const char *sv;
	size_t sl;
	if (!h && c->in_cookie && /* the web UI's session stands for an admin key */
	    ui_cookie_get(c->in_cookie, strlen(c->in_cookie), UI_SESSION_COOKIE, &sv, &sl)) {
		tbuf_free(&dec);
		return ui_session_key(c);
	}
	int rc =
	    tok ? apikeys_verify(c->keys ? c->keys : c->a->keys, tok, tl, &c->key) : TERN_ENOTFOUND;
	tbuf_free(&dec);
	if (rc == TERN_OK) {
		c->have_key = true;
		return true;
	}
	if (rc == TERN_EIO) {
		fail(c, 503, "store_unavailable", "the key store cannot be read now; try again");
		return false;
	}
	fail(c, 401, "unauthorized",
	     h ? "the API key is unknown, revoked or malformed"
	       : "an API key is required: Authorization: Bearer tern_...");
	return false;
}

static bool need_scope(struct req_ctx *c, enum apikey_scope s)
{
	if (c->key.scope >= s)
		return true;
	char m[160];
	snprintf(m, sizeof(m), "the key '%s' has scope %s; this needs %s", c->key.name,
	         apikey_scope_name(c->key.scope), apikey_scope_name(s));
	fail(c, 403, "forbidden_scope", m);
	return false;
}

/* ---------------------------------------------------------------- commit */

struct pending;

/* One message on its way to the spool. */
struct item {
	struct api_send s;
	char id[QUEUE_ID_LEN + 1];
	char msgid[QUEUE_ID_LEN + 64];
	struct tbuf data; /* trace + signatures + message */
	struct spool_rcpt *rcpts;
	size_t n_rcpts;
	bool ready; /* built, waiting for the commit */
	int err;    /* the commit's result */
	struct api_error e;
	bool over_quota; /* e is a 429: q says which window */
	struct quota_refusal q;
	struct pending *p;
};

static void item_free(struct item *it)
{
	api_send_free(&it->s);
	tbuf_free(&it->data);
	for (size_t i = 0; i < it->n_rcpts; i++)
		free(it->rcpts[i].addr);
	free(it->rcpts);
}

/* The envelope recipients of it, routed local or remote (aliases expanded
 * as for submission). */
static int route(const struct tern_config *conf, struct item *it)
{
	size_t cap = it->s.msg.n_to + 16;
	it->rcpts = calloc(cap, sizeof(*it->rcpts));
	if (!it->rcpts)
		return TERN_ENOMEM;
	for (size_t i = 0; i < it->s.msg.n_to; i++) {
		const char *to = it->s.msg.to[i];
		const char *at = strrchr(to, '@');
		bool local = at && conf_is_local_domain(conf, at + 1, strlen(at + 1));
		const struct conf_alias *al = NULL;
		char lc[SMTP_ADDR_MAX + 3];
		if (local) {
			tern_strlcpy(lc, to, sizeof(lc));
			tern_ascii_lower(lc);
			al = conf_find_alias(conf, lc);
		}
		size_t n = al ? al->n_to : 1;
		for (size_t j = 0; j < n; j++) {
			if (it->n_rcpts == cap) {
				struct spool_rcpt *v = realloc(it->rcpts, 2 * cap * sizeof(*v));
				if (!v)
					return TERN_ENOMEM;
				memset(v + cap, 0, cap * sizeof(*v));
				it->rcpts = v;
				cap *= 2;
			}
			const char *addr = al ? al->to[j] : to;
			const char *aat = strrchr(addr, '@');
			struct spool_rcpt *r = &it->rcpts[it->n_rcpts];
			if (!(r->addr = tern_strdup(addr)))
				return TERN_ENOMEM;
			r->local = aat && conf_is_local_domain(conf, aat + 1, strlen(aat + 1));
			it->n_rcpts++;
		}
	}
	return TERN_OK;
}

/*
 * Sending quotas (store/quota.h): the key's own and its From domain's
 * (quotas { }), charged one message when both have room; else a 429 that
 * names the window, and nothing queued. Charged before the spool put: a
 * put that fails afterwards still counts (rare, and errs on the safe side).
 */
static bool charge_quota(struct req_ctx *c, const struct tern_config *conf, struct item *it)
{
	const struct conf_quota *dq = conf_domain_quota(conf, it->s.from_domain);
	struct quota_ask asks[2] = {
	    {QUOTA_KEY, c->key.name, {c->key.per_second, c->key.per_hour, c->key.per_day}},
	    {QUOTA_DOMAIN, it->s.from_domain ? it->s.from_domain : "",
	     dq ? (struct quota_limits){dq->per_second, dq->per_hour, dq->per_day}
	        : (struct quota_limits){0, 0, 0}}};
	struct quota_refusal *q = &it->q;
	if (quota_take(asks, it->s.from_domain ? 2 : 1, (int64_t)time(NULL), q) == TERN_OK)
		return true;
	it->over_quota = true;
	api_error_set(&it->e, 429, "quota_exceeded", NULL,
	              "the %s '%.100s' may send %llu messages per %s; try again in %lld seconds",
	              quota_kind_name(q->kind), q->name, (unsigned long long)q->limit,
	              quota_window_name(q->window), (long long)q->retry_after);
	char kq[APIKEY_NAME_MAX + 8], nq[sizeof(q->name) * 4 + 8];
	log_info("event=api_quota_exceeded key=%s %s=%s window=%s limit=%llu retry_after=%lld",
	         log_quote(c->key.name, strlen(c->key.name), kq, sizeof(kq)),
	         quota_kind_name(q->kind), log_quote(q->name, strlen(q->name), nq, sizeof(nq)),
	         quota_window_name(q->window), (unsigned long long)q->limit,
	         (long long)q->retry_after);
	return false;
}

/*
 * Builds what goes to the spool for one decoded message: checks the
 * from-domain rule and the size, writes our Received field, signs, routes.
 * On failure it->e says why (the message is refused whole).
 */
static bool prepare(struct req_ctx *c, const struct tern_config *conf, const struct smtp_signer *sg,
                    struct item *it)
{
	if (!apikey_allows_domain(&c->key, it->s.from_domain)) {
		api_error_set(&it->e, 403, "forbidden_from_domain", "from",
		              "the key '%s' may not send from %.200s (its domains: %.200s)",
		              c->key.name, it->s.from_domain, c->key.domains);
		return false;
	}
	if (it->s.msg.len > conf->limits.max_message_size) {
		api_error_set(&it->e, 413, "message_too_large", NULL,
		              "the message is %zu bytes; the limit is %llu", it->s.msg.len,
		              (unsigned long long)conf->limits.max_message_size);
		return false;
	}
	char date[TERN_RFC5322_DATE_MAX];
	tern_rfc5322_date((int64_t)time(NULL), date, sizeof(date));
	tbuf_init(&it->data, it->s.msg.len + TRACE_MAX + 64 * 1024);
	int rc = tbuf_printf(&it->data,
	                     "Received: from [%s] by %s (tern) with HTTP id %s\r\n\t(API key %s); "
	                     "%s\r\n",
	                     c->peer, conf->hostname, it->id, c->key.name, date);
	/* the first tag picks the IP pool (pool_select.tags, deliver/pools.h);
	 * in the trace part, not signed: remote delivery removes it */
	if (rc == TERN_OK && it->s.msg.n_tags && conf->shaping.n_sel_tags)
		rc = tbuf_printf(&it->data, "%s: %s\r\n", POOL_TAG_HEADER, it->s.msg.tags[0]);
	size_t trace = it->data.len;
	if (rc == TERN_OK && it->s.list_unsub) {
		/* RFC 8058: before the message's own fields, after our trace, so
		 * the DKIM signature below covers them (its field list has both) */
		char lu[4096];
		int urc =
		    it->s.msg.n_to == 1
		        ? suppress_list_unsubscribe_fields(conf, it->s.msg.from, it->s.msg.to[0],
		                                           it->s.unsub_mailto, lu, sizeof(lu))
		        : TERN_EINVAL;
		if (urc == TERN_ENOTFOUND) {
			api_error_set(&it->e, 422, "list_unsubscribe_unavailable",
			              "list_unsubscribe",
			              "one-click unsubscribe is not set up on this server "
			              "(suppression.unsubscribe_url)");
			return false;
		}
		if (urc != TERN_OK) {
			api_error_set(&it->e, urc == TERN_EIO ? 503 : 422,
			              urc == TERN_EIO ? "store_unavailable" : "invalid_field",
			              "list_unsubscribe",
			              "the List-Unsubscribe field cannot be made (%s)",
			              tern_strerror(urc));
			return false;
		}
		rc = tbuf_append_str(&it->data, lu);
	}
	if (rc == TERN_OK)
		rc = tbuf_append(&it->data, it->s.msg.raw, it->s.msg.len);
	if (rc == TERN_OK && sg) {
		struct smtp_sign_result r;
		smtp_sign_run(sg, it->id, it->data.data + trace, it->data.len - trace, &r);
		if (r.status == SMTP_SIGN_ERROR) {
			api_error_set(&it->e, 503, "signing_failed", NULL,
			              "the message could not be DKIM-signed (%.200s); nothing was "
			              "queued, try again later",
			              r.reason);
			smtp_sign_result_clear(&r);
			return false;
		}
		if (r.status == SMTP_SIGN_OK) {
			it->data.max += r.len;
			rc = smtp_sign_insert(&r, &it->data, trace);
		}
		smtp_sign_result_clear(&r);
	}
	if (rc == TERN_OK)
		rc = route(conf, it);
	if (rc != TERN_OK) {
		api_error_set(&it->e, 500, "internal", NULL, "out of memory");
		return false;
	}
	return charge_quota(c, conf, it);
}

/*
 * A request whose messages wait for the group commit. The worker goes on
 * serving; committed() (on the spool's committer thread) counts the puts
 * down, and the last one posts finish() back to the worker, which hands
 * the messages to the scheduler and writes the reply: never before the
 * commit. c.req is NULL once libevent finished the request itself (the
 * client went away: req_done); the messages are queued all the same.
 */
enum kind { NATIVE, RAW, MAILPIT, BATCH, SES };

struct pending {
	struct api *a;
	struct req_ctx c;
	enum kind kind;
	struct item *items;
	size_t n;
	size_t outstanding; /* puts not called back, +1 while starting; under a->mu */
};

static json_t *accepted_obj(const struct item *it)
{
	json_t *o = json_pack("{s:s, s:s}", "id", it->id, "status", "queued");
	if (o && it->msgid[0])
		json_object_set_new(o, "message_id", json_string(it->msgid));
	return o;
}

static void items_free(struct item *items, size_t n)
{
	for (size_t i = 0; items && i < n; i++)
		item_free(&items[i]);
	free(items);
}

/* The error of a refused item: with the window and Retry-After seconds of
 * a quota refusal. */
static json_t *item_error_obj(const struct item *it)
{
	json_t *o = error_obj(&it->e);
	if (o && it->over_quota) {
		json_object_set_new(o, "window", json_string(quota_window_name(it->q.window)));
		json_object_set_new(o, "limit", json_integer((json_int_t)it->q.limit));
		json_object_set_new(o, "retry_after", json_integer((json_int_t)it->q.retry_after));
	}
	return o;
}

/* The answer of a request once its items are decided. */
static void reply_items(struct req_ctx *c, enum kind kind, struct item *items, size_t n)
{
	for (size_t i = 0; kind != BATCH && i < n; i++) /* when it may come back */
		if (items[i].over_quota &&
		    (c->retry_after <= 0 || items[i].q.retry_after < c->retry_after))
			c->retry_after = items[i].q.retry_after;
	if (kind == MAILPIT) { /* Mailpit's own answers: {"ID"} or {"Error"} */
		if (items[0].ready)
			reply_json(c, 200, json_pack("{s:s}", "ID", items[0].id));
		else
			reply_json(c, items[0].e.status,
			           json_pack("{s:s}", "Error", items[0].e.message));
		return;
	}
	if (kind == SES) { /* SES's own answers: {"MessageId"} or an SES error */
		if (items[0].ready) {
			reply_json(c, 200, json_pack("{s:s}", "MessageId", items[0].id));
		} else {
			const char *t = ses_error_type(items[0].e.status, items[0].e.code);
			c->amz_type = t;
			bool bad = strcmp(t, "MessageRejected") == 0 ||
			           strcmp(t, "BadRequestException") == 0; /* SES says 400 */
			reply_json(c, bad ? 400 : items[0].e.status,
			           json_pack("{s:s}", "message", items[0].e.message));
		}
		return;
	}
	if (kind != BATCH) {
		if (items[0].ready)
			reply_json(c, 202, accepted_obj(&items[0]));
		else
			reply_json(c, items[0].e.status,
			           json_pack("{s:o}", "error", item_error_obj(&items[0])));
		return;
	}
	json_t *results = json_array();
	size_t ok = 0;
	for (size_t i = 0; results && i < n; i++) {
		json_t *r = items[i].ready ? accepted_obj(&items[i])
		                           : json_pack("{s:s, s:o}", "status", "rejected", "error",
		                                       item_error_obj(&items[i]));
		if (r) {
			json_object_set_new(r, "index", json_integer((json_int_t)i));
			json_object_set_new(r, "http_status",
			                    json_integer(items[i].ready ? 202 : items[i].e.status));
		}
		ok += items[i].ready;
		json_array_append_new(results, r ? r : json_null());
	}
	reply_json(c, 200,
	           results ? json_pack("{s:i, s:i, s:o}", "accepted", (int)ok, "rejected",
	                               (int)(n - ok), "results", results)
	                   : NULL);
}

/* On the worker: the commit is over for every item of p. */
static void finish(void *arg)
{
	struct pending *p = arg;
	struct req_ctx *c = &p->c;
	for (size_t i = 0; i < p->n; i++) {
		struct item *it = &p->items[i];
		if (!it->ready)
			continue;
		if (it->err != TERN_OK) {
			it->ready = false;
			log_error("event=spool_failed id=%s source=api reason=%s", it->id,
			          tern_strerror(it->err));
			api_error_set(&it->e, 503, "queue_unavailable", NULL,
			              "the message could not be written to the queue (%s); nothing "
			              "was queued, try again later",
			              tern_strerror(it->err));
			continue;
		}
		char kq[APIKEY_NAME_MAX + 8], mq[256];
		/* tags have no store in serve mode yet: the log line carries them */
		char tags[512] = "", tq[600];
		for (size_t t = 0; t < it->s.msg.n_tags; t++) {
			size_t tl = strlen(tags);
			snprintf(tags + tl, sizeof(tags) - tl, "%s%s", tl ? "," : "",
			         it->s.msg.tags[t]);
		}
		log_info("event=queued id=%s source=api key=%s from=<%s> nrcpt=%zu size=%zu "
		         "msgid=%s tags=%s",
		         it->id, log_quote(c->key.name, strlen(c->key.name), kq, sizeof(kq)),
		         it->s.msg.from, it->n_rcpts, it->data.len,
		         it->msgid[0] ? log_quote(it->msgid, strlen(it->msgid), mq, sizeof(mq))
		                      : "-",
		         tags[0] ? log_quote(tags, strlen(tags), tq, sizeof(tq)) : "-");
		if (it->s.send_at)
			log_info("event=scheduled id=%s source=api not_before=%lld", it->id,
			         (long long)it->s.send_at);
		if (it->s.metadata) {
			char md[1024];
			log_info("event=api_metadata id=%s metadata=%s", it->id,
			         log_quote(it->s.metadata, strlen(it->s.metadata), md, sizeof(md)));
		}
		/* EVENTS: received (its key, tags and metadata pass to the message's
		 * later events) and queued per recipient */
		struct tern_event ev = {.type = EV_RECEIVED,
		                        .queue_id = it->id,
		                        .message_id = it->msgid,
		                        .sender = it->s.msg.from,
		                        .key = c->key.name,
		                        .tags = tags,
		                        .metadata = it->s.metadata};
		events_emit(&ev);
		ev.type = EV_QUEUED;
		for (size_t k = 0; k < it->n_rcpts; k++) {
			ev.recipient = it->rcpts[k].addr;
			events_emit(&ev);
		}
		size_t len = it->data.len;
		char *data = tbuf_steal(&it->data, &len);
		scheduler_submit(p->a->sched, it->id, data, data ? len : 0);
		add_id(c, it->id);
	}
	if (c->req) {
		evhttp_request_set_on_complete_cb(c->req, NULL, NULL);
		reply_items(c, p->kind, p->items, p->n);
	} else {
		char kq[APIKEY_NAME_MAX + 8];
		log_info("event=api method=%s path=%s status=- key=%s peer=%s id=%s "
		         "reason=client_gone",
		         c->method, c->path,
		         log_quote(c->key.name, strlen(c->key.name), kq, sizeof(kq)), c->peer,
		         c->ids[0] ? c->ids : "-");
	}
	items_free(p->items, p->n);
	struct api *a = p->a;
	free(p);
	pthread_mutex_lock(&a->mu);
	a->n_pending--;
	pthread_cond_broadcast(&a->cv);
	pthread_mutex_unlock(&a->mu);
}

static void pending_dec(struct pending *p)
{
	pthread_mutex_lock(&p->a->mu);
	size_t left = --p->outstanding;
	pthread_mutex_unlock(&p->a->mu);
	if (left == 0 && worker_post(p->a->w, finish, p) != 0)
		log_error("event=api_reply_lost reason=nomem");
}

/* The spool's committer thread: one put is on disk (or failed). */
static void committed(void *arg, int err)
{
	struct item *it = arg;
	it->err = err;
	pending_dec(it->p);
}

/* libevent finished the request itself: never touch it again. */
static void req_done(struct evhttp_request *req, void *arg)
{
	struct pending *p = arg;
	p->c.req = NULL;
}

/* Puts every ready item; the reply follows in finish(). Takes items. */
static void commit_start(struct req_ctx *c, enum kind kind, struct item *items, size_t n)
{
	struct api *a = c->a;
	struct pending *p = calloc(1, sizeof(*p));
	if (!p) {
		fail(c, 500, "internal", "out of memory");
		items_free(items, n);
		return;
	}
	*p = (struct pending){
	    .a = a, .c = *c, .kind = kind, .items = items, .n = n, .outstanding = 1};
	pthread_mutex_lock(&a->mu);
	a->n_pending++;
	pthread_mutex_unlock(&a->mu);
	evhttp_request_set_on_complete_cb(c->req, req_done, p);
	char client[256];
	snprintf(client, sizeof(client), "addr=%s proto=HTTP key=%s", c->peer, c->key.name);
	int64_t now = (int64_t)time(NULL);
	for (size_t i = 0; i < n; i++) {
		struct item *it = &items[i];
		if (!it->ready)
			continue;
		bool eight = false;
		for (size_t k = 0; k < it->data.len && !eight; k++)
			eight = (unsigned char)it->data.data[k] >= 0x80;
		struct spool_msg env = {0};
		memcpy(env.id, it->id, sizeof(env.id));
		env.sender = it->s.msg.from;
		env.created = now;
		env.body = eight ? SMTP_BODY_8BITMIME : SMTP_BODY_NONE;
		env.trusted_client = true; /* an API key is an authenticated sender */
		env.client = client;
		env.api_key = c->key.name;      /* typed: the status routes read it back */
		env.not_before = it->s.send_at; /* send_at: the scheduler holds it back */
		env.size = it->data.len;
		env.rcpts = it->rcpts;
		env.n_rcpts = it->n_rcpts;
		it->p = p;
		pthread_mutex_lock(&a->mu);
		p->outstanding++;
		pthread_mutex_unlock(&a->mu);
		int rc = spool_put(a->sp, &env, it->data.data, it->data.len, committed, it);
		if (rc != TERN_OK) {
			pthread_mutex_lock(&a->mu);
			p->outstanding--;
			pthread_mutex_unlock(&a->mu);
			it->err = rc;
		}
	}
	pending_dec(p); /* the starting guard */
}

/* On the pool: the messages are built; the worker starts their commit
 * (rjob_done), since commit_start ties the reply to the request. Takes
 * items. */
static void defer_commit(struct req_ctx *c, enum kind kind, struct item *items, size_t n)
{
	TERN_BUG_ON(!c->deferred || c->d_items || c->d_replied);
	c->d_kind = (int)kind;
	c->d_items = items;
	c->d_n = n;
}

/* ---------------------------------------------------------------- bodies */

static const char *body_of(struct req_ctx *c, size_t max, size_t *len, bool *big)
{
	struct evbuffer *in = c->in_body;
	*len = in ? evbuffer_get_length(in) : 0;
	*big = *len > max;
	if (*big || !in)
		return *big ? NULL : "";
	const char *p = (const char *)evbuffer_pullup(in, -1);
	return p ? p : "";
}

static bool json_ctype(struct req_ctx *c)
{
	const char *ct = c->in_ctype;
	if (ct && http_ctype_is_json(ct, strlen(ct)))
		return true;
	fail(c, 415, "unsupported_media_type",
	     "the body must be JSON sent with Content-Type: application/json");
	return false;
}

/* The body as one JSON object, or an answer already given. */
static json_t *body_json(struct req_ctx *c, size_t max)
{
	size_t n;
	bool big;
	if (!json_ctype(c))
		return NULL;
	const char *b = body_of(c, max, &n, &big);
	if (big) {
		fail(c, 413, "request_too_large", "the request body is too large");
		return NULL;
	}
	struct api_error e;
	json_t *j = api_json_parse(b, n, &e);
	if (!j)
		reply_error(c, &e);
	return j;
}

static size_t max_body(const struct tern_config *conf)
{
	/* base64 grows 4/3, JSON escapes a little more */
	uint64_t m = conf->limits.max_message_size / 3 * 4 + 1024 * 1024;
	return m > BATCH_BODY_MAX ? BATCH_BODY_MAX : (size_t)m;
}

/* ---------------------------------------------------------------- routes */

/* On the pool: the tracking key, read once (the pool is one thread). */
static bool track_key(struct api *a)
{
	if (!a->track_key_ok)
		a->track_key_ok = suppress_key_load(a->data_dir, a->track_key) == TERN_OK;
	return a->track_key_ok;
}

/*
 * "track": {"opens": bool, "clicks": bool} of a native send: taken out of
 * obj (api_json_send knows nothing of it) into *opens, *clicks. False, with
 * it->e set, when it is malformed or tracking is not set up here.
 */
static bool take_track(struct req_ctx *c, const struct tern_config *conf, json_t *obj,
                       struct item *it, bool *opens, bool *clicks)
{
	*opens = *clicks = false;
	json_t *tr = json_is_object(obj) ? json_object_get(obj, "track") : NULL;
	if (!tr)
		return true;
	bool ok = json_is_object(tr) || json_is_null(tr);
	const char *k;
	json_t *v;
	if (json_is_object(tr))
		json_object_foreach(tr, k, v)
		{
			bool o = strcmp(k, "opens") == 0, cl = strcmp(k, "clicks") == 0;
			ok = ok && (o || cl) && json_is_boolean(v);
			if (o && json_is_true(v))
				*opens = true;
			if (cl && json_is_true(v))
				*clicks = true;
		}
	json_object_del(obj, "track");
	if (!ok) {
		api_error_set(&it->e, 422, "invalid_field", "track",
		              "track is {\"opens\": true|false, \"clicks\": true|false}");
		return false;
	}
	if ((*opens || *clicks) && !conf->tracking.base_url) {
		api_error_set(&it->e, 422, "tracking_unavailable", "track",
		              "open and click tracking is not set up on this server "
		              "(tracking.base_url)");
		return false;
	}
	if ((*opens || *clicks) && !track_key(c->a)) {
		api_error_set(&it->e, 503, "store_unavailable", "track",
		              "the tracking key cannot be read; nothing was queued");
		return false;
	}
	return true;
}

/*
 * With tracking asked: the HTML part of the decoded message (it->s) is
 * rewritten (http/tracking.h) and the message built again, before the
 * DKIM signature. The tokens name the queue id, and the recipient when
 * there is exactly one (the built message says how many).
 */
static int track_rebuild(struct req_ctx *c, const struct tern_config *conf, json_t *obj,
                         const char *msgid, bool opens, bool clicks, struct item *it)
{
	json_t *h = json_object_get(obj, "html");
	if (!json_is_string(h)) /* text only: nothing to track */
		return TERN_OK;
	char rcpt[SMTP_ADDR_MAX + 1] = "";
	if (it->s.msg.n_to == 1)
		tern_strlcpy(rcpt, it->s.msg.to[0], sizeof(rcpt));
	size_t n = json_string_length(h);
	struct tbuf out = TBUF_INIT(n * 3 + 1024 * 1024);
	int rc =
	    track_rewrite_html(c->a->track_key, conf->tracking.base_url, it->id,
	                       rcpt[0] ? rcpt : NULL, opens, clicks, json_string_value(h), n, &out);
	json_t *nh = rc == TERN_OK ? json_stringn(out.data ? out.data : "", out.len) : NULL;
	tbuf_free(&out);
	if (!nh || json_object_set_new(obj, "html", nh) != 0) {
		api_error_set(&it->e, 500, "internal", "html", "the tracked HTML cannot be made");
		return TERN_ENOMEM;
	}
	api_send_free(&it->s);
	return api_json_send(obj, (long long)time(NULL), msgid, &it->s, &it->e);
}

static void decode_one(struct req_ctx *c, const struct tern_config *conf, json_t *obj, enum kind k,
                       struct item *it)
{
	queue_id_new(it->id);
	int rc;
	bool opens = false, clicks = false;
	if (k == NATIVE && !take_track(c, conf, obj, it, &opens, &clicks))
		return;
	if (k == RAW) {
		rc = api_json_raw(obj, conf->limits.max_message_size, &it->s, &it->e);
	} else {
		char msgid[QUEUE_ID_LEN + 32];
		snprintf(msgid, sizeof(msgid), "%s@%s", it->id, conf->hostname);
		if (strlen(conf->hostname) < sizeof(it->msgid) - QUEUE_ID_LEN - 4)
			snprintf(it->msgid, sizeof(it->msgid), "<%s>", msgid);
		rc = api_json_send(obj, (long long)time(NULL), msgid, &it->s, &it->e);
		if (rc == TERN_OK && (opens || clicks))
			rc = track_rebuild(c, conf, obj, msgid, opens, clicks, it);
	}
	if (rc == TERN_OK)
		it->ready = true;
}

static void send_common(struct req_ctx *c, enum kind k)
{
	struct tern_runtime *rt = runtime_acquire();
	json_t *root = NULL;
	struct item *it = calloc(1, sizeof(*it));
	if (!rt || !it) {
		fail(c, 503, rt ? "internal" : "not_ready",
		     rt ? "out of memory" : "the server is starting");
		goto out;
	}
	if (!need_scope(c, APIKEY_SEND))
		goto out;
	if (!(root = body_json(c, max_body(rt->conf))))
		goto out;
	if (k == MAILPIT) {
		/* Mailpit's own JSON, through the same builder as capture mode */
		char *dumped = json_dumps(root, JSON_COMPACT), err[256];
		queue_id_new(it->id);
		char msgid[QUEUE_ID_LEN + 300];
		snprintf(msgid, sizeof(msgid), "%s@%s", it->id, rt->conf->hostname);
		int rc = dumped ? http_send_build(dumped, strlen(dumped), (long long)time(NULL),
		                                  msgid, &it->s.msg, err, sizeof(err))
		                : TERN_ENOMEM;
		free(dumped);
		char dom[SMTP_DOMAIN_MAX + 1];
		const char *at = rc == TERN_OK ? strrchr(it->s.msg.from, '@') : NULL;
		if (rc == TERN_OK && at && strlen(at + 1) < sizeof(dom)) {
			tern_strlcpy(dom, at + 1, sizeof(dom));
			tern_ascii_lower(dom);
			it->s.from_domain = tern_strdup(dom);
		}
		if (rc != TERN_OK || !it->s.from_domain) {
			reply_json(
			    c, 400,
			    json_pack("{s:s}", "Error", rc == TERN_OK ? "out of memory" : err));
			goto out;
		}
		it->ready = true;
	} else {
		decode_one(c, rt->conf, root, k, it);
	}
	if (it->ready && !prepare(c, rt->conf, rt->dkim_signer, it))
		it->ready = false;
	if (!it->ready) { /* refused whole: nothing to commit */
		reply_items(c, k, it, 1);
		goto out;
	}
	defer_commit(c, k, it, 1);
	it = NULL;
out:
	items_free(it, 1);
	json_decref(root);
	runtime_release(rt);
}

static void send_batch(struct req_ctx *c)
{
	struct tern_runtime *rt = runtime_acquire();
	json_t *root = NULL;
	struct item *items = NULL;
	size_t n = 0;
	if (!rt) {
		fail(c, 503, "not_ready", "the server is starting");
		return;
	}
	if (!need_scope(c, APIKEY_SEND))
		goto out;
	if (!(root = body_json(c, BATCH_BODY_MAX)))
		goto out;
	json_t *msgs = json_object_get(root, "messages");
	if (!json_is_array(msgs) || json_object_size(root) != 1) {
		struct api_error e;
		api_error_set(&e, 422, "invalid_field", "messages",
		              "a batch is {\"messages\": [message, ...]}");
		reply_error(c, &e);
		goto out;
	}
	n = json_array_size(msgs);
	if (n == 0 || n > API_BATCH_MAX) {
		struct api_error e;
		api_error_set(&e, n ? 413 : 422, n ? "batch_too_large" : "missing_field",
		              "messages", "a batch has 1 to %d messages", API_BATCH_MAX);
		reply_error(c, &e);
		goto out;
	}
	if (!(items = calloc(n, sizeof(*items)))) {
		fail(c, 500, "internal", "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		decode_one(c, rt->conf, json_array_get(msgs, i), NATIVE, &items[i]);
		if (items[i].ready && !prepare(c, rt->conf, rt->dkim_signer, &items[i]))
			items[i].ready = false;
	}
	defer_commit(c, BATCH, items, n);
	items = NULL;
out:
	items_free(items, n);
	json_decref(root);
	runtime_release(rt);
}

static const char *state_name(enum rcpt_state s)
{
	switch (s) {
	case RCPT_QUEUED:
		return "queued";
	case RCPT_DEFERRED:
		return "deferred";
	case RCPT_DELIVERED:
		return "delivered";
	case RCPT_BOUNCED:
		return "bounced";
	case RCPT_HELD:
		return "held";
	case RCPT_SUPPRESSED:
		return "suppressed";
	}
	return "unknown";
}

/* The key name of a message the API queued (the envelope's typed field,
 * spool_msg.api_key), or NULL for any other message. */
static const char *owner_of(const struct spool_msg *m)
{
	return m->api_key;
}

struct past {
	struct req_ctx *c;
	json_t *rcpts;
	bool visible; /* the key may see it */
	char sender[SMTP_ADDR_MAX + 3];
	int64_t updated;
};

static void past_row(void *arg, const char *owner, const char *sender, const char *addr,
                     const char *state, const char *reply, int64_t updated)
{
	struct past *p = arg;
	if (p->c->key.scope >= APIKEY_ADMIN || strcmp(owner, p->c->key.name) == 0)
		p->visible = true;
	tern_strlcpy(p->sender, sender, sizeof(p->sender));
	if (updated > p->updated)
		p->updated = updated;
	json_t *o = json_pack("{s:s, s:s}", "address", addr, "state", state);
	if (o && reply)
		json_object_set_new(o, "reason", json_string(reply));
	json_array_append_new(p->rcpts, o ? o : json_null());
}

/* A message no longer in the queue: its recipients' last results. */
static void past_status(struct req_ctx *c, const char *id)
{
	struct past p = {.c = c, .rcpts = json_array()};
	int rc = p.rcpts ? apikeys_results(c->a->keys, id, past_row, &p) : TERN_ENOMEM;
	if (rc != TERN_OK || !p.visible) {
		json_decref(p.rcpts);
		fail(c, 404, "not_found",
		     "no such message: unknown, sent by another key, or removed from the queue "
		     "by an operator");
		return;
	}
	add_id(c, id);
	reply_json(c, 200,
	           json_pack("{s:s, s:s, s:b, s:I, s:o}", "id", id, "from", p.sender, "finished", 1,
	                     "updated", (json_int_t)p.updated, "recipients", p.rcpts));
}

static void message_status(struct req_ctx *c, const char *id)
{
	if (!need_scope(c, APIKEY_READ))
		return;
	struct spool_msg *m = queue_id_valid(id, strlen(id)) ? spool_get(c->a->sp, id) : NULL;
	/* A key sees the messages it sent (an admin key every one). */
	const char *owner = m ? owner_of(m) : NULL;
	if (m && (!owner || (c->key.scope < APIKEY_ADMIN && strcmp(owner, c->key.name) != 0))) {
		spool_msg_free(m);
		fail(c, 404, "not_found", "no such message: unknown, or sent by another key");
		return;
	}
	if (!m) {
		if (queue_id_valid(id, strlen(id)))
			past_status(c, id);
		else
			fail(c, 404, "not_found", "no such message: that is not a queue id");
		return;
	}
	json_t *rcpts = json_array();
	/* send_at not reached: a recipient not tried yet is "scheduled" */
	bool scheduled = m->not_before > (int64_t)time(NULL);
	for (size_t i = 0; rcpts && i < m->n_rcpts; i++) {
		const struct spool_rcpt *r = &m->rcpts[i];
		json_t *o = json_pack("{s:s, s:s, s:i}", "address", r->addr, "state",
		                      scheduled && r->state == RCPT_QUEUED ? "scheduled"
		                                                           : state_name(r->state),
		                      "attempts", (int)r->attempts);
		if (o && r->last_reply)
			json_object_set_new(o, "reason", json_string(r->last_reply));
		if (o && r->state == RCPT_DEFERRED && r->next_try)
			json_object_set_new(o, "next_try", json_integer((json_int_t)r->next_try));
		json_array_append_new(rcpts, o ? o : json_null());
	}
	add_id(c, m->id);
	json_t *body = json_pack("{s:s, s:s, s:b, s:I, s:I, s:o}", "id", m->id, "from", m->sender,
	                         "finished", 0, "created", (json_int_t)m->created, "size",
	                         (json_int_t)m->size, "recipients", rcpts ? rcpts : json_array());
	if (body && m->not_before)
		json_object_set_new(body, "send_at", json_integer((json_int_t)m->not_before));
	reply_json(c, 200, body);
	spool_msg_free(m);
}

/* On the pool. EVENTS: GET /api/v1/events (a key sees its own; admin every
 * one), and for admin keys /api/v1/webhooks and /api/v1/webhooks/ID/attempts
 * (http/events_routes.c). */
static void events_get(struct req_ctx *c, const char *r, const char *qs)
{
	if (!need_scope(c, APIKEY_READ))
		return;
	if (!c->a->events) {
		fail(c, 503, "store_unavailable", "the event store could not be opened");
		return;
	}
	bool admin = c->key.scope >= APIKEY_ADMIN;
	char *body = NULL;
	int st;
	if (strcmp(r, "events") == 0) {
		st = events_route_list(c->a->events, qs, qs ? strlen(qs) : 0,
		                       admin ? NULL : c->key.name, &body);
	} else if (!need_scope(c, APIKEY_ADMIN)) {
		return;
	} else if (strcmp(r, "webhooks") == 0) {
		st = events_route_webhooks(c->a->events, &body);
	} else {
		char *end = NULL;
		long long id = strtoll(r + 9, &end, 10);
		if (id <= 0 || !end || strcmp(end, "/attempts") != 0) {
			fail(c, 404, "not_found", "no such route (see /api/openapi.json)");
			return;
		}
		st = events_route_attempts(c->a->events, id, qs, qs ? strlen(qs) : 0, &body);
	}
	json_t *j = body ? json_loads(body, 0, NULL) : NULL;
	free(body);
	if (st != 200) {
		const char *m = json_string_value(json_object_get(j, "error"));
		fail(c, st,
		     st == 400   ? "invalid_request"
		     : st == 404 ? "not_found"
		                 : "store_unavailable",
		     m ? m : "the event store failed");
		json_decref(j);
		return;
	}
	reply_json(c, 200, j);
}

/* On the pool: /api/v1/keys (keys_routes.h), admin only. */
static void keys_api(struct req_ctx *c)
{
	if (!need_scope(c, APIKEY_ADMIN))
		return;
	size_t n;
	bool big;
	const char *b = body_of(c, 64 * 1024, &n, &big);
	if (big) {
		fail(c, 413, "request_too_large", "the request body is too large");
		return;
	}
	const char *name = c->in_path + 12; /* "/api/v1/keys" */
	json_t *out = NULL;
	struct api_error e;
	int st = keys_route(c->a->keys, c->method, *name == '/' ? name + 1 : name, b, n, &out, &e);
	if (out)
		reply_json(c, st, out);
	else
		reply_error(c, &e);
}

/* On the pool: GET /api/v1/stats and the queue routes, admin only (r: the
 * path after /api/v1/; http/stats_routes.h, http/queue_routes.h). */
static void ops_route(struct req_ctx *c, const char *r)
{
	if (!need_scope(c, APIKEY_ADMIN))
		return;
	json_t *body = NULL;
	const char *why = "the request failed";
	char id[QUEUE_ID_LEN + 1] = "";
	int st;
	if (strcmp(r, "stats") != 0) {
		st = queue_route(c->a->sp, c->a->sched, c->method, r + 5, c->in_query, c->key.name,
		                 id, &body, &why);
	} else if (!c->a->ops_events) {
		fail(c, 503, "store_unavailable", "the event store could not be opened");
		return;
	} else if (strcmp(c->method, "GET") == 0 || strcmp(c->method, "HEAD") == 0) {
		const char *qs = c->in_query;
		st = stats_route(c->a->ops_events, qs, qs ? strlen(qs) : 0, &body, &why);
	} else {
		st = 405;
		why = "this route does not take that method";
	}
	if (id[0])
		add_id(c, id);
	if (st == 200)
		reply_json(c, 200, body);
	else
		fail(c, st,
		     st == 400   ? "invalid_request"
		     : st == 404 ? "not_found"
		     : st == 405 ? "method_not_allowed"
		                 : "internal",
		     why);
}

/* ----------------------------------------------------------- suppression */

/* On the pool: the answer of a suppress_routes.h handler. The API's errors
 * get the API's shape ({"error": {"code", "message"}}); the unsubscribe
 * endpoint's stay as the handler wrote them. */
static void suppress_reply(struct req_ctx *c, bool unsub, int status, const struct tbuf *out)
{
	json_error_t jerr;
	json_t *body = out->len ? json_loadb(out->data, out->len, 0, &jerr) : NULL;
	if (status == 204) {
		json_decref(body);
		reply_json(c, 204, NULL);
	} else if (status >= 400 && !unsub && json_is_object(body)) {
		struct api_error e;
		const char *code = json_string_value(json_object_get(body, "error"));
		const char *msg = json_string_value(json_object_get(body, "message"));
		api_error_set(&e, status, code ? code : "internal", NULL, "%s", msg ? msg : "");
		reply_error(c, &e);
		json_decref(body);
	} else if (body) {
		reply_json(c, status, body);
	} else {
		fail(c, 500, "internal", "the suppression list gave no answer");
	}
}

/* On the pool: RFC 8058 one-click, POST /unsubscribe/TOKEN (no key: the
 * token is the credential). */
static void unsubscribe(struct req_ctx *c)
{
	size_t n;
	bool big;
	const char *b = body_of(c, 64 * 1024, &n, &big);
	if (big) {
		fail(c, 413, "request_too_large", "the request body is too large");
		return;
	}
	const char *tok = c->in_path + strlen(SUPPRESS_UNSUB_PATH);
	struct tbuf out = TBUF_INIT(64 * 1024);
	int st = suppress_http_unsubscribe(c->a->data_dir, c->method, tok, strlen(tok), b, n, &out);
	suppress_reply(c, true, st, &out);
	tbuf_free(&out);
}

/*
 * On the pool: the suppression API. An admin key may do anything; any
 * other key needs scope send and may touch only the list of a sending
 * domain it may send from (never the global list, nor every list). The
 * domain is read as the handler reads it (suppress_http_api_scope), so a
 * duplicated domain= cannot slip past the check.
 */
static void suppress_api(struct req_ctx *c)
{
	size_t n;
	bool big;
	const char *b = body_of(c, 1024 * 1024, &n, &big);
	if (big) {
		fail(c, 413, "request_too_large", "the request body is too large");
		return;
	}
	if (c->key.scope < APIKEY_ADMIN) {
		char dom[SUPPRESS_DOMAIN_MAX];
		enum suppress_scope_kind k = suppress_http_api_scope(
		    c->method, c->in_path, c->in_query, b, n, dom, sizeof(dom));
		if (!need_scope(c, APIKEY_SEND))
			return;
		if (k == SUPPRESS_SCOPE_BAD) {
			fail(c, 400, "invalid_request",
			     "the domain parameter or the body is malformed");
			return;
		}
		if (k == SUPPRESS_SCOPE_ALL || !dom[0] || !apikey_allows_domain(&c->key, dom)) {
			char m[512];
			snprintf(
			    m, sizeof(m),
			    "the key '%s' may manage only the lists of its own domains (%.200s): "
			    "give ?domain=D (or \"domain\" in a PUT body)",
			    c->key.name, c->key.domains[0] ? c->key.domains : "any");
			fail(c, 403, "forbidden_domain", m);
			return;
		}
	}
	struct tbuf out = TBUF_INIT(64 * 1024 * 1024);
	int st = suppress_http_api(c->a->data_dir, c->method, c->in_path, c->in_query, b, n, &out);
	suppress_reply(c, false, st, &out);
	tbuf_free(&out);
}

static void openapi(struct req_ctx *c)
{
	size_t n;
	const unsigned char *p = http_asset_find("/openapi.json", &n);
	if (!p) {
		fail(c, 404, "not_found", "the OpenAPI file is not built in");
		return;
	}
	struct evkeyvalq *oh = evhttp_request_get_output_headers(c->req);
	evhttp_add_header(oh, "Content-Type", "application/json; charset=utf-8");
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		evhttp_send_error(c->req, 500, "out of memory");
		return;
	}
	evbuffer_add_reference(b, p, n, NULL, NULL);
	evhttp_send_reply(c->req, 200, "OK", b);
	evbuffer_free(b);
	log_info("event=api method=%s path=%s status=200 key=- peer=%s id=-", c->method, c->path,
	         c->peer);
}

/*
 * On the pool: the SES v2 compatible API (ses.h). ses_handle checks the
 * signature and answers all but SendEmail, whose message is built, checked
 * and committed here as any API message is.
 */
static void ses_route(struct req_ctx *c)
{
	struct tern_runtime *rt = runtime_acquire();
	struct item *it = NULL;
	struct ses_answer ans = {0};
	if (!rt) {
		c->amz_type = "ServiceUnavailable";
		reply_json(c, 503, json_pack("{s:s}", "message", "the server is starting"));
		return;
	}
	size_t n;
	bool big;
	const char *b = body_of(c, max_body(rt->conf), &n, &big);
	if (big) {
		c->amz_type = "BadRequestException";
		reply_json(c, 413, json_pack("{s:s}", "message", "the request body is too large"));
		goto out;
	}
	struct ses_request r = {.data_dir = c->a->data_dir,
	                        .keys = c->a->keys,
	                        .method = c->method,
	                        .path = c->in_path,
	                        .query = c->in_query,
	                        .hdr = c->in_hdrs,
	                        .n_hdr = c->in_nh,
	                        .body = b,
	                        .len = n,
	                        .now = (int64_t)time(NULL)};
	ses_handle(&r, &ans);
	if (ans.have_key) {
		c->key = ans.key;
		c->have_key = true;
	}
	if (!ans.send) {
		c->amz_type = ans.err_type;
		reply_json(c, ans.status, ans.body);
		ans.body = NULL;
		goto out;
	}
	if (!(it = calloc(1, sizeof(*it)))) {
		c->amz_type = "InternalFailure";
		reply_json(c, 500, json_pack("{s:s}", "message", "out of memory"));
		goto out;
	}
	decode_one(c, rt->conf, ans.send, ans.raw ? RAW : NATIVE, it);
	if (it->ready && !prepare(c, rt->conf, rt->dkim_signer, it))
		it->ready = false;
	if (!it->ready) {
		reply_items(c, SES, it, 1);
		goto out;
	}
	defer_commit(c, SES, it, 1);
	it = NULL;
out:
	items_free(it, 1);
	json_decref(ans.body);
	json_decref(ans.send);
	runtime_release(rt);
}

/* ------------------------------------------------------------ the pool */

enum route {
	R_NONE,
	R_UNSUB,
	R_TRACK,
	R_SUPP,
	R_NATIVE,
	R_RAW,
	R_BATCH,
	R_MAILPIT,
	R_STATUS,
	R_EVENTS,
	R_ARCHIVE,
	R_OPS, /* stats and queue */
	R_SES,
	R_KEYS
};

/*
 * One request on its way through the pool: what blocks (the key lookup
 * and the result store in SQLite, the spool read of a status, DKIM
 * signing, the suppression list, the unsubscribe key file) runs there, on
 * the API's pool thread (so a->keys stays one thread's; the stats and queue
 * routes run on a->ops_pool with connections of their own); the reply
 * or the commit starts from the completion, back on the worker. c.req is
 * NULL once libevent finished the request itself (the client went away).
 */
struct rjob {
	struct req_ctx c;
	enum route route;
};

static void rjob_free(struct rjob *j)
{
	struct req_ctx *c = &j->c;
	free(c->in_path);
	free(c->in_query);
	free(c->in_auth);
	free(c->in_ctype);
	free(c->in_cookie);
	free(c->in_csrf);
	if (c->in_body)
		evbuffer_free(c->in_body);
	json_decref(c->d_body);
	items_free(c->d_items, c->d_n);
	for (size_t i = 0; i < c->in_nh; i++) {
		free((char *)c->in_hdrs[i].name);
		free((char *)c->in_hdrs[i].value);
	}
	free(c->in_hdrs);
	free(c->d_location);
	free(c->d_bytes.raw);
	if (c->d_bytes.file) /* not handed to a reply */
		close(c->d_bytes.fd);
	free(j);
}

/*
 * On the pool: GET /t/o/TOKEN (the pixel) and /t/c/TOKEN (the redirect).
 * No key: the token's MAC is the credential. One that does not verify is a
 * 404 and no event: never a redirect to a URL we did not sign.
 */
static void track_hit(struct req_ctx *c)
{
	char kind = c->in_path[3];
	const char *tok = c->in_path + strlen(TRACK_OPEN_PATH);
	struct track_ref *r = calloc(1, sizeof(*r));
	if (!r) {
		fail(c, 500, "internal", "out of memory");
		return;
	}
	if (!track_key(c->a) || !track_verify(c->a->track_key, kind, tok, strlen(tok), r)) {
		fail(c, 404, "not_found", "no such tracking link");
		free(r);
		return;
	}
	json_t *md = kind == 'c' ? json_pack("{s:s}", "url", r->url) : NULL;
	char *mds = md ? json_dumps(md, JSON_COMPACT) : NULL;
	json_decref(md);
	struct tern_event ev = {.type = kind == 'c' ? EV_CLICKED : EV_OPENED,
	                        .queue_id = r->queue_id,
	                        .recipient = r->rcpt[0] ? r->rcpt : NULL,
	                        .metadata = mds}; /* no client address: it is the reader's */
	if (strcmp(c->method, "GET") == 0)
		events_emit(&ev);
	free(mds);
	add_id(c, r->queue_id);
	if (kind == 'c' && !(c->d_location = tern_strdup(r->url))) {
		fail(c, 500, "internal", "out of memory");
	} else {
		c->d_track = kind;
		c->d_replied = true;
		c->d_status = kind == 'c' ? 302 : 200;
	}
	free(r);
}

/* On the worker: the pixel or the redirect track_hit recorded. */
static void reply_track(struct req_ctx *c)
{
	struct evkeyvalq *oh = evhttp_request_get_output_headers(c->req);
	evhttp_add_header(oh, "Cache-Control", "no-store");
	evhttp_add_header(oh, "Referrer-Policy", "no-referrer");
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		evhttp_send_error(c->req, 500, "out of memory");
	} else if (c->d_track == 'c') {
		evhttp_add_header(oh, "Location", c->d_location);
		evhttp_send_reply(c->req, 302, "Found", b);
	} else {
		evhttp_add_header(oh, "Content-Type", "image/gif");
		evbuffer_add(b, track_gif, sizeof(track_gif));
		evhttp_send_reply(c->req, 200, "OK", b);
	}
	if (b)
		evbuffer_free(b);
	log_info("event=api method=%s path=%s status=%d key=- peer=%s id=%s", c->method, c->path,
	         c->d_status, c->peer, c->ids[0] ? c->ids : "-");
}

/* On the pool. ARCHIVE: /api/v1/archive... for admin keys (archive_routes.h). */
static void archive_api(struct req_ctx *c, const char *rest)
{
	if (!need_scope(c, APIKEY_ADMIN))
		return;
	char err[512];
	if (!c->a->archive &&
	    archive_open(c->a->data_dir, &c->a->archive, err, sizeof(err)) != TERN_OK) {
		log_warn("event=api_archive_unavailable reason=\"%s\"", err);
		fail(c, 503, "store_unavailable", "the archive could not be opened");
		return;
	}
	struct archive_answer *ans = &c->d_bytes;
	archive_route(c->a->archive, c->method, rest, c->in_query, ans);
	if (ans->raw || ans->file) {
		c->d_replied = true;
		c->d_status = ans->status;
	} else if (ans->json || ans->status == 204) {
		reply_json(c, ans->status, ans->json);
		ans->json = NULL;
	} else {
		fail(c, 500, "internal", "out of memory");
	}
}

/* On the worker: the bytes archive_api recorded. */
static void reply_bytes(struct req_ctx *c)
{
	struct archive_answer *ans = &c->d_bytes;
	struct evkeyvalq *oh = evhttp_request_get_output_headers(c->req);
	evhttp_add_header(oh, "Content-Type", ans->ctype);
	evhttp_add_header(oh, "Cache-Control", "no-store");
	evhttp_add_header(oh, "X-Content-Type-Options", "nosniff");
	char disp[128];
	snprintf(disp, sizeof(disp), "attachment; filename=\"%s\"", ans->filename);
	if (ans->filename[0])
		evhttp_add_header(oh, "Content-Disposition", disp);
	struct evbuffer *b = evbuffer_new();
	int added = -1;
	size_t len = ans->file ? (size_t)ans->file_len : ans->raw_len;
	if (b && ans->file && ans->file_len == 0) {
		added = 0;           /* an empty export: nothing to send (rjob_free closes fd) */
	} else if (b && ans->file) { /* ARCHIVE export: sent from its file, never whole in memory */
		added = evbuffer_add_file(b, ans->fd, 0, (ev_off_t)ans->file_len);
		if (added == 0)
			ans->file = false; /* the buffer owns (and closes) the descriptor */
	} else if (b) {
		added = evbuffer_add(b, ans->raw, ans->raw_len);
	}
	if (added != 0)
		evhttp_send_error(c->req, 500, "out of memory");
	else
		evhttp_send_reply(c->req, ans->status, NULL, b);
	if (b)
		evbuffer_free(b);
	char kq[APIKEY_NAME_MAX + 8];
	log_info("event=api method=%s path=%s status=%d key=%s peer=%s id=- bytes=%zu", c->method,
	         c->path, ans->status,
	         c->have_key ? log_quote(c->key.name, strlen(c->key.name), kq, sizeof(kq)) : "-",
	         c->peer, len);
}

static void rjob_work(void *arg)
{
	struct rjob *j = arg;
	struct req_ctx *c = &j->c;
	bool get = strcmp(c->method, "GET") == 0 || strcmp(c->method, "HEAD") == 0,
	     post = strcmp(c->method, "POST") == 0;
	if (j->route == R_UNSUB) {
		unsubscribe(c);
		return;
	}
	if (j->route == R_TRACK) {
		if (get)
			track_hit(c);
		else
			fail(c, 405, "method_not_allowed", "this route does not take that method");
		return;
	}
	if (j->route == R_SES) { /* SigV4, not a bearer token */
		ses_route(c);
		return;
	}
	if (!authenticate(c))
		return;
	const char *r = c->in_path + 8;
	if (j->route == R_SUPP && strcmp(c->method, "HEAD") != 0)
		suppress_api(c);
	else if (j->route == R_NATIVE && post)
		send_common(c, NATIVE);
	else if (j->route == R_RAW && post)
		send_common(c, RAW);
	else if (j->route == R_BATCH && post)
		send_batch(c);
	else if (j->route == R_MAILPIT && post)
		send_common(c, MAILPIT);
	else if (j->route == R_STATUS && get)
		message_status(c, r + 9);
	else if (j->route == R_EVENTS && get)
		events_get(c, r, c->in_query); /* EVENTS */
	else if (j->route == R_ARCHIVE)
		archive_api(c, r + 7); /* ARCHIVE */
	else if (j->route == R_KEYS)
		keys_api(c);
	else if (j->route == R_OPS)
		ops_route(c, r);
	else
		fail(c, 405, "method_not_allowed", "this route does not take that method");
}

/* On the worker: send what the pool recorded, or start the commit. */
static void rjob_done(void *arg)
{
	struct rjob *j = arg;
	struct req_ctx *c = &j->c;
	struct api *a = c->a;
	c->deferred = false;
	if (!c->req) {
		char kq[APIKEY_NAME_MAX + 8];
		log_info("event=api method=%s path=%s status=- key=%s peer=%s id=- "
		         "reason=client_gone",
		         c->method, c->path,
		         c->have_key ? log_quote(c->key.name, strlen(c->key.name), kq, sizeof(kq))
		                     : "-",
		         c->peer);
	} else {
		evhttp_request_set_on_complete_cb(c->req, NULL, NULL);
		if (c->d_items) { /* built whole: the 2xx follows the commit */
			struct item *items = c->d_items;
			c->d_items = NULL;
			commit_start(c, (enum kind)c->d_kind, items, c->d_n);
		} else {
			if (c->d_www_auth) {
				struct evkeyvalq *oh = evhttp_request_get_output_headers(c->req);
				evhttp_add_header(oh, "WWW-Authenticate", "Bearer realm=\"tern\"");
			}
			json_t *b = c->d_body;
			c->d_body = NULL;
			if (c->d_track)
				reply_track(c);
			else if (c->d_bytes.raw || c->d_bytes.file)
				reply_bytes(c);
			else if (c->d_replied)
				reply_json(c, c->d_status, b);
			else
				fail(c, 500, "internal", "the request got no answer");
		}
	}
	rjob_free(j);
	pthread_mutex_lock(&a->mu);
	a->n_pending--;
	pthread_cond_broadcast(&a->cv);
	pthread_mutex_unlock(&a->mu);
}

static void rjob_req_gone(struct evhttp_request *req, void *arg)
{
	struct rjob *j = arg;
	j->c.req = NULL;
}

static char *dup_or_null(const char *s, bool *nomem)
{
	char *d = s ? tern_strdup(s) : NULL;
	if (s && !d)
		*nomem = true;
	return d;
}

/* On the worker: takes what the work needs from the request and hands it
 * to the pool. */
static void rjob_start(struct req_ctx *c, enum route route, const char *path)
{
	struct api *a = c->a;
	struct rjob *j = calloc(1, sizeof(*j));
	if (!j || !a->pool) {
		free(j);
		fail(c, j ? 503 : 500, j ? "not_ready" : "internal",
		     j ? "the server is starting" : "out of memory");
		return;
	}
	j->c = *c;
	j->route = route;
	struct req_ctx *jc = &j->c;
	/* stats, the queue and the archive (a long export) on their own thread
	 * (struct api), when it runs: never in the way of sends */
	struct pool *pool =
	    (route == R_OPS || route == R_ARCHIVE) && a->ops_pool ? a->ops_pool : a->pool;
	jc->keys = pool == a->ops_pool ? a->ops_keys : a->keys;
	struct evkeyvalq *ih = evhttp_request_get_input_headers(c->req);
	const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(c->req);
	bool nomem = false;
	jc->in_path = dup_or_null(path, &nomem);
	jc->in_query = dup_or_null(u ? evhttp_uri_get_query(u) : NULL, &nomem);
	jc->in_auth = dup_or_null(evhttp_find_header(ih, "Authorization"), &nomem);
	jc->in_ctype = dup_or_null(evhttp_find_header(ih, "Content-Type"), &nomem);
	jc->in_cookie = dup_or_null(evhttp_find_header(ih, "Cookie"), &nomem);
	jc->in_csrf = dup_or_null(evhttp_find_header(ih, "X-CSRF-Token"), &nomem);
	if (route == R_SES) { /* SigV4 signs any of them: take them all */
		size_t n = 0;
		for (struct evkeyval *kv = ih->tqh_first; kv; kv = kv->next.tqe_next)
			n++;
		if (n > 200 || !(jc->in_hdrs = calloc(n ? n : 1, sizeof(*jc->in_hdrs))))
			nomem = true;
		for (struct evkeyval *kv = ih->tqh_first; kv && !nomem; kv = kv->next.tqe_next) {
			struct sigv4_header *h = &jc->in_hdrs[jc->in_nh++];
			h->name = dup_or_null(kv->key, &nomem);
			h->value = dup_or_null(kv->value, &nomem);
		}
	}
	/* the body's chain moves over, no copy */
	if (!(jc->in_body = evbuffer_new()) ||
	    evbuffer_add_buffer(jc->in_body, evhttp_request_get_input_buffer(c->req)) != 0)
		nomem = true;
	if (nomem) {
		rjob_free(j);
		fail(c, 500, "internal", "out of memory");
		return;
	}
	jc->deferred = true;
	pthread_mutex_lock(&a->mu);
	a->n_pending++;
	pthread_mutex_unlock(&a->mu);
	evhttp_request_set_on_complete_cb(c->req, rjob_req_gone, j);
	if (pool_submit(pool, rjob_work, a->w, rjob_done, j) != TERN_OK) {
		evhttp_request_set_on_complete_cb(c->req, NULL, NULL);
		pthread_mutex_lock(&a->mu);
		a->n_pending--;
		pthread_mutex_unlock(&a->mu);
		rjob_free(j);
		fail(c, 500, "internal", "out of memory");
	}
}

static void handle(void *ctx, struct evhttp_request *req)
{
	struct req_ctx c = {.a = ctx, .req = req};
	int m = (int)evhttp_request_get_command(req);
	bool get = m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD, post = m == EVHTTP_REQ_POST;
	c.method = get                      ? (m == EVHTTP_REQ_GET ? "GET" : "HEAD")
	           : post                   ? "POST"
	           : m == EVHTTP_REQ_PUT    ? "PUT"
	           : m == EVHTTP_REQ_DELETE ? "DELETE"
	                                    : "OTHER";
	const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
	const char *path = u ? evhttp_uri_get_path(u) : NULL;
	char *peer = NULL;
	ev_uint16_t port = 0;
	evhttp_connection_get_peer(evhttp_request_get_connection(req), &peer, &port);
	tern_strlcpy(c.peer, peer ? peer : "?", sizeof(c.peer));
	if (!path || path[0] != '/') {
		tern_strlcpy(c.path, "-", sizeof(c.path));
		fail(&c, 400, "invalid_request", "bad request target");
		return;
	}
	log_quote(path, strlen(path), c.path, sizeof(c.path));
	if (strcmp(path, "/healthz") == 0 && get) {
		reply_json(&c, 200, json_pack("{s:s}", "status", "ok"));
		return;
	}
	if (strcmp(path, "/readyz") == 0 && get) {
		struct tern_runtime *rt = runtime_acquire();
		bool ready = rt != NULL;
		runtime_release(rt);
		if (ready)
			reply_json(&c, 200,
			           json_pack("{s:s, s:I}", "status", "ready", "queued",
			                     (json_int_t)spool_count(c.a->sp)));
		else
			fail(&c, 503, "not_ready", "the server is starting");
		return;
	}
	if (strcmp(path, "/api/openapi.json") == 0 && get) {
		openapi(&c);
		return;
	}
	if (ui_is_path(path)) {
		ui_handle(c.a->ui, req, path);
		return;
	}
	enum route rt = R_NONE;
	if (strncmp(path, SUPPRESS_UNSUB_PATH, strlen(SUPPRESS_UNSUB_PATH)) == 0 &&
	    !strchr(path + strlen(SUPPRESS_UNSUB_PATH), '/'))
		rt = R_UNSUB;
	if ((strncmp(path, TRACK_OPEN_PATH, strlen(TRACK_OPEN_PATH)) == 0 ||
	     strncmp(path, TRACK_CLICK_PATH, strlen(TRACK_CLICK_PATH)) == 0) &&
	    !strchr(path + strlen(TRACK_OPEN_PATH), '/')) {
		rt = R_TRACK; /* the token stays out of the log */
		snprintf(c.path, sizeof(c.path), "%.5s-", path);
	}
	if (strncmp(path, "/api/v1/", 8) == 0) {
		const char *r = path + 8;
		if (strcmp(r, "suppressions") == 0 ||
		    (strncmp(r, "suppressions/", 13) == 0 && r[13] && !strchr(r + 13, '/')))
			rt = R_SUPP;
		else if (strcmp(r, "messages") == 0)
			rt = R_NATIVE;
		else if (strcmp(r, "messages/raw") == 0)
			rt = R_RAW;
		else if (strcmp(r, "messages/batch") == 0)
			rt = R_BATCH;
		else if (strcmp(r, "send") == 0)
			rt = R_MAILPIT;
		else if (strncmp(r, "messages/", 9) == 0 && !strchr(r + 9, '/'))
			rt = R_STATUS;
		else if (strcmp(r, "events") == 0 || strcmp(r, "webhooks") == 0 ||
		         strncmp(r, "webhooks/", 9) == 0)
			rt = R_EVENTS; /* EVENTS */
		else if (strcmp(r, "archive") == 0 || strncmp(r, "archive/", 8) == 0)
			rt = R_ARCHIVE; /* ARCHIVE */
		else if (strcmp(r, "keys") == 0 ||
		         (strncmp(r, "keys/", 5) == 0 && r[5] && !strchr(r + 5, '/')))
			rt = R_KEYS;
		else if (strcmp(r, "stats") == 0 || strcmp(r, "queue") == 0 ||
		         strncmp(r, "queue/", 6) == 0)
			rt = R_OPS;
	}
	if (strncmp(path, "/v2/", 4) == 0)
		rt = R_SES;
	if (rt == R_NONE) {
		fail(&c, 404, "not_found", "no such route (see /api/openapi.json)");
		return;
	}
	rjob_start(&c, rt, path);
}

/* ------------------------------------------------------------- lifecycle */

#define API_WORKER_INDEX 1001 /* only for log lines: not an SMTP worker */
#define API_LISTENERS_MAX 16

/* A delivery thread recorded a result (scheduler_set_observer): keep the
 * API messages' ones, so their status outlives the queue. */
static void on_result(void *arg, const struct spool_msg *m, size_t idx, enum rcpt_state st,
                      const char *reply)
{
	struct api *a = arg;
	const char *owner = owner_of(m);
	if (!owner || idx >= m->n_rcpts)
		return;
	pthread_mutex_lock(&a->results_mu);
	int rc = apikeys_result_put(a->results, m->id, idx, owner, m->sender, m->rcpts[idx].addr,
	                            state_name(st), reply, (int64_t)time(NULL));
	pthread_mutex_unlock(&a->results_mu);
	if (rc != TERN_OK)
		log_warn("event=api_result_lost id=%s reason=%s", m->id, tern_strerror(rc));
}

struct api *api_start(const char *data_dir, struct spool *sp, struct scheduler *sched, int *fds,
                      const bool *fd_tls, size_t n_fds, struct ssl_ctx_st *tls, char *err,
                      size_t errlen)
{
	char path[4096];
	for (size_t i = 0; i < n_fds; i++) {
		if (fd_tls[i] && !tls) { /* conf.c asks for a certificate first */
			snprintf(err, errlen, "an HTTPS listener without a TLS certificate");
			return NULL;
		}
	}
	struct api *a = calloc(1, sizeof(*a));
	if (!a || n_fds > API_LISTENERS_MAX) {
		snprintf(err, errlen, a ? "too many http listeners" : "out of memory");
		free(a);
		return NULL;
	}
	a->sp = sp;
	a->sched = sched;
	if (!(a->data_dir = tern_strdup(data_dir))) {
		snprintf(err, errlen, "out of memory");
		free(a);
		return NULL;
	}
	pthread_mutex_init(&a->results_mu, NULL);
	pthread_mutex_init(&a->mu, NULL);
	pthread_cond_init(&a->cv, NULL);
	quota_open(data_dir); /* paired in api_free; a store error leaves memory counts */
	snprintf(path, sizeof(path), "%s/apikeys.db", data_dir);
	if (apikeys_open(path, true, &a->keys) != TERN_OK ||
	    apikeys_open(path, true, &a->results) != TERN_OK) {
		snprintf(err, errlen, "cannot open the API key store %s", path);
		goto fail;
	}
	/* One thread: a->keys is one thread's (apikeys.h). NULL is survivable:
	 * the routes answer 503 */
	a->pool = pool_new(1);
	char eerr[512]; /* EVENTS: the routes answer 503 without it */
	if (!(a->events = events_db_open(data_dir, eerr, sizeof(eerr))))
		log_warn("event=api_events_unavailable reason=\"%s\"", eerr);
	/* NULL is survivable: the stats and queue routes run on a->pool */
	if (apikeys_open(path, true, &a->ops_keys) == TERN_OK &&
	    (a->ops_events = events_db_open(data_dir, eerr, sizeof(eerr))))
		a->ops_pool = pool_new(1);
	if (!(a->w = worker_new(API_WORKER_INDEX)) || !(a->ui = ui_new(data_dir, a->w))) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	struct http_hooks hooks;
	memset(&hooks, 0, sizeof(hooks));
	hooks.ctx = a;
	hooks.handle = handle;
	hooks.version = "tern";
	for (size_t i = 0; i < n_fds; i++) {
		/* HTTPS as capture's --ui-tls-cert: the server's handshake per
		 * connection; the context is the SMTP listeners' (SNI, SIGHUP) */
		hooks.ui_tls = fd_tls[i] ? tls : NULL;
		a->http[i] = http_server_new(a->w, fds[i], NULL, &hooks);
		if (!a->http[i]) {
			snprintf(err, errlen, "cannot start the HTTP server");
			goto fail;
		}
		a->n_http++;
		fds[i] = -1; /* the server's now */
	}
	if (worker_start(a->w) != 0) {
		snprintf(err, errlen, "cannot start the HTTP API thread");
		goto fail;
	}
	a->started = true;
	scheduler_set_observer(sched, on_result, a);
	return a;
fail:
	api_free(a);
	return NULL;
}

void api_stop(struct api *a)
{
	if (!a)
		return;
	if (a->started)
		worker_stop_and_join(a->w);
	a->started = false;
	/* The pool's jobs finish; their completions are posted to the worker
	 * and run by the loop below (a commit they start, too). */
	pool_free(a->pool);
	a->pool = NULL;
	pool_free(a->ops_pool);
	a->ops_pool = NULL;
	ui_stop(a->ui); /* a login under way: its answer is posted to the worker */
	/* Requests still waiting for the commit: their finish() is posted to
	 * the stopped worker once the spool calls back; run it here, so each
	 * is answered (and freed) before the servers go. Bounded: 30 s. */
	for (int i = 0; a->w && i < 3000; i++) {
		worker_run_pending(a->w);
		pthread_mutex_lock(&a->mu);
		bool idle = a->n_pending == 0;
		if (!idle) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 10 * 1000 * 1000;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&a->cv, &a->mu, &ts);
		}
		pthread_mutex_unlock(&a->mu);
		if (idle)
			break;
	}
	if (a->n_pending)
		log_error("event=api_stop_incomplete pending=%zu", a->n_pending);
	for (size_t i = 0; i < a->n_http; i++)
		http_server_free(a->http[i]);
	a->n_http = 0;
	if (a->w) {
		worker_run_pending(a->w);
		worker_free(a->w);
		a->w = NULL;
	}
}

void api_free(struct api *a)
{
	if (!a)
		return;
	api_stop(a);
	apikeys_close(a->keys);
	apikeys_close(a->ops_keys);
	sqlite3_close(a->ops_events);
	apikeys_close(a->results);
	quota_close();
	sqlite3_close(a->events);
	archive_close(a->archive);
	ui_free(a->ui);
	pthread_mutex_destroy(&a->results_mu);
	pthread_mutex_destroy(&a->mu);
	pthread_cond_destroy(&a->cv);
	free(a->data_dir);
	free(a);
}
