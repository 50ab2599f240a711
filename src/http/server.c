/*
 * server.c — the capture-mode HTTP server on libevent's evhttp: Mailpit's
 * REST API v1 (tests/data/mailpit-api/swagger.json), /view/ID.html
 * and /view/ID.txt, the /api/events server-sent-events stream, and the
 * embedded web UI.
 *
 * Owns: routing, request validation and bounds (URL, headers, bodies),
 * the request guard (Host, Origin, JSON bodies: see guard.c) and the cap
 * on concurrent connections, mapping store answers and errors to Mailpit's
 * status codes and JSON, response headers (content types, dispositions,
 * the CSP of rendered mail), and the lists of live connections and
 * event-stream clients.
 * Runs on one worker's thread only: every evhttp object is touched there;
 * other threads reach it through worker_post (publish, send completions).
 * Store calls block briefly, which is why this worker serves HTTP alone.
 * Must never: serve a message's HTML without the CSP that blocks scripts
 * and (unless asked) remote content, put untrusted bytes in a response
 * header without checking them, touch a request libevent has freed, hold
 * a request body or URL beyond its bound, answer a Host that is not one of
 * the listener's own names, or act on a request that changes something
 * (any method but GET and HEAD) from another site's page.
 *
 * Choices where Mailpit's behaviour is not in the swagger:
 *   - errors are text/plain with the reason (400), "not found" (404);
 *     /api/v1/send answers errors as {"Error": "..."} as the swagger says;
 *   - html-check, link-check and sa-check run on the server's own check
 *     pool (http/checks.c, store/checks.h); as Mailpit, html-check of a
 *     message without HTML and sa-check without a scanner answer 400 with
 *     the reason; webui reports SpamAssassin true when one is set;
 *   - part/{PartID}/thumb answers the image part itself (no JPEG scaling),
 *     404 for parts that are not images;
 *   - /view/ID.html inlines cid: images as data: URIs, so the strict CSP
 *     (img-src data: cid:) still shows them; ?embed=1 adds <base
 *     target="_blank">; ?remote=1 allows http:/https: images.
 *   - the tz parameter of search is accepted and ignored (dates are UTC).
 *   - bodies must be application/json (415), changes need a same-origin
 *     Origin or none (403), Host must name this listener (403); these
 *     refusals answer {"Error": "..."}. A body over capture.http_max_body
 *     gets libevent's own 413 page (2.1 lets no caller word it), one over
 *     a route's own bound a JSON 413.
 */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
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
#include "http/basic_auth.h"
#include "http/checks.h"
#include "http/http.h"
#include "http/websocket.h"
#include "store/store.h"

#define URL_MAX 8192
#define HEADERS_MAX (64 * 1024)
#define JSON_BODY_MAX (4u * 1024 * 1024) /* every route but send */
#define LIST_LIMIT_MAX 100000
#define SSE_CLIENTS_MAX 256
#define SSE_BACKLOG_MAX (8u * 1024 * 1024) /* a client this far behind is dropped */
#define SSE_HEARTBEAT_SEC 15
#define WS_MESSAGE_MAX (64u * 1024)    /* a client message (the UI sends none) */
#define INLINE_MAX (32u * 1024 * 1024) /* cid: images inlined into one view */
#define IO_TIMEOUT_SEC 120
#define PART_MAX ((size_t)200 * 1024 * 1024)
/* Bounds when no runtime is installed (never in the daemon); the config's
 * capture.http_max_body and http_max_connections have the same defaults. */
#define FALLBACK_MAX_BODY (64u * 1024 * 1024)
#define FALLBACK_MAX_CONNECTIONS 256

#define CSP_VIEW "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'"
#define CSP_VIEW_REMOTE                                                                            \
	"default-src 'none'; img-src data: cid: http: https:; style-src 'unsafe-inline'"
#define CSP_PART "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"

struct sse_client;
struct pending_send;
struct pending_auth;
struct pending_check;

/*
 * One accepted connection. Its close callback (the only one libevent
 * keeps per connection) is conn_closed, which tells whichever of sse and
 * send is waiting on it; they never set a close callback of their own.
 */
struct http_conn {
	struct http_conn *prev, *next;
	struct http_server *h;
	struct evhttp_connection *evcon;
	struct sse_client *sse;      /* an event stream on it, or NULL */
	struct pending_send *send;   /* a send waiting for the store, or NULL */
	struct pending_check *check; /* a check running on the check pool, or NULL */
	struct pending_auth *auth;   /* a login being checked on the pool, or NULL */
};

/* An /api/events client: a text/event-stream reply, or (ws) a WebSocket
 * that took the connection over after its 101 (see the WebSocket part). */
struct sse_client {
	struct sse_client *next;
	struct http_server *h;
	struct evhttp_request *req;
	struct evhttp_connection *evcon;
	struct http_conn *conn;
	bool ws;
	bool ws_in_msg;  /* a fragmented client message is arriving */
	bool ws_closing; /* our close frame is queued: free once it is out */
	uint64_t ws_msg_len;
	/* evhttp's own write and event callbacks, called by ours */
	bufferevent_data_cb ws_wcb;
	bufferevent_event_cb ws_ecb;
};

struct http_server {
	struct worker *w;
	struct evhttp *http;
	struct capture_store *st;
	struct http_hooks hooks;
	struct sse_client *clients;
	size_t n_clients;
	struct event *heartbeat;
	time_t started;
	bool stats_pending;
	/* connections: admitted ones, and bufferevents made for new ones that
	 * wait (one reference each) for conn_admit_pending */
	struct http_conn *conns;
	size_t n_conns;
	uint32_t max_conns; /* capture.http_max_connections when the last one came */
	struct bufferevent **pending;
	size_t n_pending, cap_pending;
	struct event *admit;
	time_t refused_logged;
	uint64_t refused;
	struct pool *check_pool; /* html-check, link-check, sa-check */
	unsigned checks_running; /* atomic: check_work ends on a pool thread */
	int checks_cancel;       /* atomic: set by http_server_free, read by link_check */
};

/* ------------------------------------------------------------- replies */

static void common_headers(struct evhttp_request *req, const char *ctype)
{
	struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
	evhttp_add_header(oh, "Content-Type", ctype);
	evhttp_add_header(oh, "X-Content-Type-Options", "nosniff");
}

static void reply_bytes(struct evhttp_request *req, int code, const char *ctype, const void *p,
                        size_t n)
{
	struct evbuffer *b = evbuffer_new();
	common_headers(req, ctype);
	if (b && n)
		evbuffer_add(b, p, n);
	evhttp_send_reply(req, code, NULL, b);
	if (b)
		evbuffer_free(b);
}

static void reply_text(struct evhttp_request *req, int code, const char *text)
{
	reply_bytes(req, code, "text/plain; charset=utf-8", text, strlen(text));
}

static void reply_ok(struct evhttp_request *req)
{
	reply_text(req, 200, "ok");
}

static void reply_error(struct evhttp_request *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void reply_error(struct evhttp_request *req, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	reply_text(req, 400, msg);
}

static void reply_404(struct evhttp_request *req)
{
	reply_text(req, 404, "not found");
}

/* Sends j (reference stolen). */
static void reply_json(struct evhttp_request *req, int code, json_t *j)
{
	char *s = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
	json_decref(j);
	if (!s) {
		reply_text(req, 500, "out of memory");
		return;
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-cache");
	reply_bytes(req, code, "application/json; charset=utf-8", s, strlen(s));
	free(s);
}

static void reply_store_err(struct evhttp_request *req, int rc)
{
	if (rc == TERN_ENOTFOUND)
		reply_404(req);
	else
		reply_error(req, "%s", tern_strerror(rc));
}

/* -------------------------------------------------------- request input */

/* The request body as a NUL-terminated string (pulled up in place), or
 * NULL when it passes max. */
static const char *req_body(struct evhttp_request *req, size_t max, size_t *len)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t n = evbuffer_get_length(in);
	*len = n;
	if (n > max)
		return NULL;
	if (evbuffer_add(in, "", 1) != 0)
		return NULL;
	const char *p = (const char *)evbuffer_pullup(in, -1);
	return p;
}

/* The body as a JSON object; an empty body is an empty object when
 * allow_empty. Replies 400 itself and returns NULL on bad input. */
static json_t *req_json(struct evhttp_request *req, bool allow_empty)
{
	size_t n;
	const char *p = req_body(req, JSON_BODY_MAX, &n);
	if (!p) {
		reply_json(req, 413, json_pack("{s:s}", "Error", "request body too large"));
		return NULL;
	}
	size_t k = 0;
	while (k < n && (p[k] == ' ' || p[k] == '\t' || p[k] == '\r' || p[k] == '\n'))
		k++;
	if (k == n) {
		if (allow_empty)
			return json_object();
		reply_error(req, "request body is empty");
		return NULL;
	}
	json_error_t e;
	json_t *j = json_loadb(p, n, 0, &e);
	if (!j) {
		reply_error(req, "invalid JSON: %s", e.text);
		return NULL;
	}
	if (!json_is_object(j)) {
		json_decref(j);
		reply_error(req, "request body must be a JSON object");
		return NULL;
	}
	return j;
}

/* An optional array of strings from obj[key] as a malloc'd vector of
 * borrowed pointers (into obj). Replies 400 and returns -1 on bad input. */
static int json_str_array(struct evhttp_request *req, json_t *obj, const char *key,
                          const char ***out, size_t *n)
{
	json_t *a = json_object_get(obj, key);
	*out = NULL;
	*n = 0;
	if (!a || json_is_null(a))
		return 0;
	if (!json_is_array(a)) {
		reply_error(req, "%s must be an array of strings", key);
		return -1;
	}
	size_t cnt = json_array_size(a);
	if (cnt == 0)
		return 0;
	*out = calloc(cnt, sizeof(char *));
	if (!*out) {
		reply_text(req, 500, "out of memory");
		return -1;
	}
	for (size_t i = 0; i < cnt; i++) {
		json_t *v = json_array_get(a, i);
		if (!json_is_string(v)) {
			free(*out);
			*out = NULL;
			reply_error(req, "%s must be an array of strings", key);
			return -1;
		}
		(*out)[i] = json_string_value(v);
	}
	*n = cnt;
	return 0;
}

struct query {
	struct evkeyvalq kv;
	bool parsed;
};

static const char *query_get(struct query *q, const char *key)
{
	return q->parsed ? evhttp_find_header(&q->kv, key) : NULL;
}

static bool query_flag(struct query *q, const char *key)
{
	const char *v = query_get(q, key);
	return v && (strcmp(v, "1") == 0 || strcasecmp(v, "true") == 0);
}

/* Non-negative integer parameter; def when absent. false on junk. */
static bool query_size(struct query *q, const char *key, size_t def, size_t *out)
{
	const char *v = query_get(q, key);
	*out = def;
	if (!v || !*v)
		return true;
	char *end;
	errno = 0;
	long long x = strtoll(v, &end, 10);
	if (*end || errno || x < 0)
		return false;
	*out = (size_t)x;
	return true;
}

/* Message IDs are base62 (22 chars); "latest" names the newest message.
 * Writes the resolved id into out; false if there is no such message. */
static bool resolve_id(struct http_server *h, const char *id, char out[CAPTURE_ID_MAX])
{
	if (strcmp(id, "latest") == 0) {
		json_t *l = capture_list(h->st, NULL, 0, 1);
		json_t *m = json_array_get(json_object_get(l, "messages"), 0);
		const char *s = json_string_value(json_object_get(m, "ID"));
		bool ok = s && strlen(s) < CAPTURE_ID_MAX;
		if (ok)
			tern_strlcpy(out, s, CAPTURE_ID_MAX);
		json_decref(l);
		return ok;
	}
	size_t n = strlen(id);
	if (n == 0 || n >= CAPTURE_ID_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = id[i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      c == '-' || c == '_'))
			return false;
	}
	tern_strlcpy(out, id, CAPTURE_ID_MAX);
	return true;
}

/* ------------------------------------------------------- connections */

/*
 * libevent's evhttp (2.1) has no connection limit and no hook at accept, so
 * the count is kept here: evhttp asks conn_bev_new for each new
 * connection's bufferevent, and once evhttp has wrapped it (its callback
 * argument is then the connection) conn_admit_pending, run right after the
 * accept from an activated event, either admits the connection (counted;
 * conn_closed uncounts it) or turns it away. The extra reference taken on
 * the bufferevent keeps it valid until then even if evhttp gave up on the
 * connection first.
 */

static void sse_closed(struct sse_client *c);
static void send_conn_closed(struct pending_send *p);
static void auth_conn_closed(struct pending_auth *p);
static void check_conn_closed(struct pending_check *p);

static void conn_closed(struct evhttp_connection *evcon, void *arg)
{
	struct http_conn *c = arg;
	struct http_server *h = c->h;
	if (c->sse)
		sse_closed(c->sse);
	if (c->send)
		send_conn_closed(c->send);
	if (c->auth)
		auth_conn_closed(c->auth);
	if (c->check)
		check_conn_closed(c->check);
	if (c->prev)
		c->prev->next = c->next;
	else
		h->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	TERN_BUG_ON(h->n_conns == 0);
	h->n_conns--;
	free(c);
}

/* A connection over the cap: a 503 written straight to the socket (its
 * bufferevent has written nothing yet, and the kernel takes a few hundred
 * bytes at once), then closed. */
static void conn_refuse(struct http_server *h, struct evhttp_connection *evcon,
                        struct bufferevent *bev)
{
	char body[160], msg[512];
	int bl = snprintf(body, sizeof(body),
	                  "{\"Error\":\"too many HTTP connections (capture.http_max_connections "
	                  "= %u)\"}",
	                  (unsigned)h->max_conns);
	int ml = snprintf(msg, sizeof(msg),
	                  "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; "
	                  "charset=utf-8\r\nContent-Length: %d\r\nRetry-After: 1\r\nConnection: "
	                  "close\r\n\r\n%s",
	                  bl, body);
	evutil_socket_t fd = bufferevent_getfd(bev);
	/* over HTTPS the bytes would not be TLS records: just close */
	if (fd >= 0 && ml > 0 && (size_t)ml < sizeof(msg) && !h->hooks.ui_tls) {
		ssize_t w = send(fd, msg, (size_t)ml, MSG_DONTWAIT | MSG_NOSIGNAL);
		(void)w; /* if it fails, the close says it as well */
	}
	evhttp_connection_free(evcon);
	/* one line a second at most: a flood must not flood the log too */
	h->refused++;
	time_t now = time(NULL);
	if (now != h->refused_logged) {
		h->refused_logged = now;
		log_warn("event=http_refused reason=too_many_connections limit=%u refused=%llu",
		         (unsigned)h->max_conns, (unsigned long long)h->refused);
		h->refused = 0;
	}
}

/* Admits (or, over the cap, refuses) every connection accepted since the
 * last call. keep is never refused: a request of it is being served. */
static void conn_admit_pending(struct http_server *h, struct evhttp_connection *keep)
{
	size_t n = h->n_pending;
	h->n_pending = 0;
	for (size_t i = 0; i < n; i++) {
		struct bufferevent *bev = h->pending[i];
		void *arg = NULL;
		bufferevent_getcb(bev, NULL, NULL, NULL, &arg);
		struct evhttp_connection *evcon = arg;
		/* No callback argument: evhttp freed the connection already. */
		if (evcon && evhttp_connection_get_bufferevent(evcon) == bev) {
			struct http_conn *c = NULL;
			if (evcon == keep || h->n_conns < h->max_conns)
				c = calloc(1, sizeof(*c));
			if (c) {
				c->h = h;
				c->evcon = evcon;
				c->next = h->conns;
				if (h->conns)
					h->conns->prev = c;
				h->conns = c;
				h->n_conns++;
				evhttp_connection_set_closecb(evcon, conn_closed, c);
			} else if (evcon != keep) {
				conn_refuse(h, evcon, bev);
			}
		}
		bufferevent_decref(bev);
	}
}

static void admit_cb(evutil_socket_t fd, short what, void *arg)
{
	conn_admit_pending(arg, NULL);
}

/* evhttp's bufferevent factory: called once per accepted connection. */
static struct bufferevent *conn_bev_new(struct event_base *base, void *arg)
{
	struct http_server *h = arg;
	struct bufferevent *bev = NULL;
	if (h->hooks.ui_tls) {
		/* HTTPS (--ui-tls-cert): the handshake runs as the request is read */
		SSL *ssl = SSL_new(h->hooks.ui_tls);
		if (!ssl)
			return NULL;
		bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
		                                     BEV_OPT_CLOSE_ON_FREE);
		if (!bev) {
			SSL_free(ssl);
			return NULL;
		}
		bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	} else
		bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (!bev)
		return NULL; /* evhttp tries itself; the connection goes uncounted */
	/* The bounds as configured now (SIGHUP may change them): evhttp copies
	 * the body bound into the connection when it wraps bev. */
	uint64_t max_body = FALLBACK_MAX_BODY;
	h->max_conns = FALLBACK_MAX_CONNECTIONS;
	struct tern_runtime *rt = runtime_acquire();
	if (rt) {
		max_body = rt->conf->capture.http_max_body;
		h->max_conns = rt->conf->capture.http_max_connections;
		runtime_release(rt);
	}
	evhttp_set_max_body_size(h->http, (ev_ssize_t)max_body);
	if (h->n_pending == h->cap_pending) {
		size_t cap = h->cap_pending ? 2 * h->cap_pending : 16;
		struct bufferevent **v = realloc(h->pending, cap * sizeof(*v));
		if (!v)
			return bev; /* uncounted, as above */
		h->pending = v;
		h->cap_pending = cap;
	}
	bufferevent_incref(bev);
	h->pending[h->n_pending++] = bev;
	event_active(h->admit, EV_TIMEOUT, 1);
	return bev;
}

/* The connection record of evcon, or NULL if it is not counted (only
 * after an allocation failed). */
static struct http_conn *conn_of(struct http_server *h, struct evhttp_connection *evcon)
{
	if (h->n_pending)
		conn_admit_pending(h, evcon);
	for (struct http_conn *c = h->conns; c; c = c->next)
		if (c->evcon == evcon)
			return c;
	return NULL;
}

/* ------------------------------------------------------------- guard */

static const char *method_name(int m)
{
	switch (m) {
	case EVHTTP_REQ_GET:
		return "GET";
	case EVHTTP_REQ_HEAD:
		return "HEAD";
	case EVHTTP_REQ_POST:
		return "POST";
	case EVHTTP_REQ_PUT:
		return "PUT";
	case EVHTTP_REQ_DELETE:
		return "DELETE";
	case EVHTTP_REQ_OPTIONS:
		return "OPTIONS";
	default:
		return "OTHER";
	}
}

static void refuse(struct evhttp_request *req, int code, const char *why, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Answers {"Error": ...} and logs one line naming the request. */
static void refuse(struct evhttp_request *req, int code, const char *why, const char *fmt, ...)
{
	char msg[768], qpath[160], qhost[160];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	const char *uri = evhttp_request_get_uri(req);
	const char *host = evhttp_find_header(evhttp_request_get_input_headers(req), "Host");
	log_quote(uri ? uri : "", uri ? strlen(uri) : 0, qpath, sizeof(qpath));
	log_quote(host ? host : "", host ? strlen(host) : 0, qhost, sizeof(qhost));
	log_warn("event=http_refused reason=%s status=%d method=%s path=%s host=%s", why, code,
	         method_name((int)evhttp_request_get_command(req)), qpath, qhost);
	reply_json(req, code, json_pack("{s:s}", "Error", msg));
}

/* A header value made printable and short for an error message. */
static const char *shown(const char *v, char *buf, size_t n)
{
	size_t k = 0;
	for (; *v && k + 4 < n; v++)
		buf[k++] =
		    ((unsigned char)*v < 0x20 || (unsigned char)*v >= 0x7f || *v == '"') ? '?' : *v;
	if (*v && n >= 4) {
		memcpy(buf + k, "...", 3);
		k += 3;
	}
	buf[k] = '\0';
	return buf;
}

/*
 * Whether the request may go on; if not it has been answered. Every
 * request must name this listener in Host; one that can change something
 * (any method but GET and HEAD) must come from this listener's own pages
 * (Origin, or Sec-Fetch-Site when a browser sent no Origin) or from a
 * client that is not a browser (neither header), and a body must be JSON.
 */
static bool guard(struct http_server *h, struct evhttp_request *req, int method)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *host = NULL, *origin = NULL;
	int n_host = 0, n_origin = 0;
	char b[96];
	struct evkeyval *kv;
	TAILQ_FOREACH(kv, in, next)
	{
		if (strcasecmp(kv->key, "Host") == 0)
			host = kv->value, n_host++;
		else if (strcasecmp(kv->key, "Origin") == 0)
			origin = kv->value, n_origin++;
	}
	if (n_host != 1) {
		refuse(req, 400, "host", "%s",
		       n_host ? "more than one Host header" : "the Host header is missing");
		return false;
	}
	struct http_hostport hp;
	if (http_parse_host(host, strlen(host), &hp) != TERN_OK) {
		refuse(req, 400, "host", "malformed Host header '%s'", shown(host, b, sizeof(b)));
		return false;
	}
	struct tern_runtime *rt = runtime_acquire();
	const struct tern_config *conf = rt ? rt->conf : NULL;
	bool ok = http_host_allowed(
	    &hp, conf ? (const char *const *)conf->capture.http_allowed_hosts : NULL,
	    conf ? conf->capture.n_http_allowed_hosts : 0, conf ? conf->hostname : NULL);
	runtime_release(rt);
	if (!ok) {
		refuse(req, 403, "host",
		       "Host '%s' is not allowed: this server answers to its IP addresses, "
		       "localhost and the names in capture.http_allowed_hosts (add the name "
		       "there, or \"*\" behind a proxy that checks Host)",
		       shown(host, b, sizeof(b)));
		return false;
	}
	if (method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD)
		return true;
	if (n_origin > 1 || (origin && !http_origin_same(origin, strlen(origin), &hp))) {
		refuse(req, 403, "origin",
		       "cross-origin request refused: Origin '%s' is not this server (%s)",
		       n_origin > 1 ? "(several)" : shown(origin, b, sizeof(b)), hp.name);
		return false;
	}
	const char *site = evhttp_find_header(in, "Sec-Fetch-Site");
	if (!origin && site && strcasecmp(site, "same-origin") != 0 &&
	    strcasecmp(site, "none") != 0) {
		refuse(req, 403, "origin", "cross-origin request refused (Sec-Fetch-Site: %s)",
		       shown(site, b, sizeof(b)));
		return false;
	}
	if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) > 0) {
		const char *ct = evhttp_find_header(in, "Content-Type");
		if (!ct || !http_ctype_is_json(ct, strlen(ct))) {
			refuse(req, 415, "content_type",
			       "request bodies must be sent with Content-Type: application/json "
			       "(got %s)",
			       ct ? shown(ct, b, sizeof(b)) : "none");
			return false;
		}
	}
	return true;
}

/* ------------------------------------------------------ events (SSE) */

static void sse_drop(struct sse_client *c)
{
	struct http_server *h = c->h;
	for (struct sse_client **pp = &h->clients; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			h->n_clients--;
			break;
		}
	}
	free(c);
}

/* The client went away (or the server is closing). libevent frees the
 * request itself when it is still attached to the connection; a request it
 * detached (EOF while we were still sending) is ours to finish, which frees
 * it. */
static void sse_closed(struct sse_client *c)
{
	evhttp_request_set_on_complete_cb(c->req, NULL, NULL);
	if (evhttp_request_get_connection(c->req) == NULL)
		evhttp_send_reply_end(c->req);
	sse_drop(c);
}

/* libevent finished the request on its own (an error reply after a read
 * error): it frees the request next, so forget it now. */
static void sse_req_done(struct evhttp_request *req, void *arg)
{
	struct sse_client *c = arg;
	if (c->conn)
		c->conn->sse = NULL;
	sse_drop(c);
}

/* Writes one server frame straight to the connection's bufferevent (after
 * a 101, evhttp's reply functions write nothing). False when the client
 * was dropped for its backlog (c is freed then). */
static bool ws_send(struct sse_client *c, unsigned opcode, const void *data, size_t n)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(c->evcon);
	if (!bev || c->ws_closing)
		return true;
	if (evbuffer_get_length(bufferevent_get_output(bev)) > SSE_BACKLOG_MAX) {
		log_warn("event=http_ws_drop reason=backlog");
		evhttp_connection_free(c->evcon);
		return false;
	}
	uint8_t hdr[WS_HEADER_MAX];
	size_t hl = ws_frame_header(opcode, n, hdr);
	bufferevent_write(bev, hdr, hl);
	if (n)
		bufferevent_write(bev, data, n);
	return true;
}

static void sse_write(struct sse_client *c, const char *data, size_t n)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(c->evcon);
	if (bev && evbuffer_get_length(bufferevent_get_output(bev)) > SSE_BACKLOG_MAX) {
		/* Too slow a reader: freeing the connection runs sse_closed. */
		log_warn("event=http_sse_drop reason=backlog");
		evhttp_connection_free(c->evcon);
		return;
	}
	struct evbuffer *b = evbuffer_new();
	if (!b)
		return;
	evbuffer_add(b, data, n);
	evhttp_send_reply_chunk(c->req, b);
	evbuffer_free(b);
}

/* One text frame to every WebSocket client. */
static void ws_broadcast_frame(struct http_server *h, const char *text, size_t n)
{
	struct sse_client *c = h->clients, *next;
	for (; c; c = next) {
		next = c->next;
		if (c->ws)
			ws_send(c, WS_OP_TEXT, text, n);
	}
}

#define WS_IDS_MAX 1000 /* more IDs in one event: one "prune" instead */

/*
 * A store event as Mailpit sends it over its WebSocket: {"Type":TYPE,
 * "Data":...}; a delete of everything is "truncate" (Data null), other
 * deletes and updates one event per message with {"ID": ...}, and more
 * than WS_IDS_MAX of them one "prune" (Mailpit's UI reloads the list).
 */
static void ws_broadcast(struct http_server *h, const char *type, const char *json)
{
	struct tbuf w = TBUF_INIT(64u * 1024 * 1024);
	json_t *d = NULL, *ids = NULL;
	if (strcmp(type, "delete") == 0 || strcmp(type, "update") == 0) {
		d = json_loads(json, 0, NULL);
		ids = json_object_get(d, "IDs");
	}
	if (d && json_is_true(json_object_get(d, "All"))) {
		if (tbuf_printf(&w, "{\"Type\":\"%s\",\"Data\":null}",
		                strcmp(type, "delete") == 0 ? "truncate" : "prune") == TERN_OK)
			ws_broadcast_frame(h, w.data, w.len);
	} else if (json_is_array(ids) && json_array_size(ids) > WS_IDS_MAX) {
		if (tbuf_printf(&w, "{\"Type\":\"prune\",\"Data\":null}") == TERN_OK)
			ws_broadcast_frame(h, w.data, w.len);
	} else if (json_is_array(ids)) {
		size_t i;
		json_t *v;
		json_array_foreach(ids, i, v)
		{
			/* IDs are the store's own base62: nothing to escape */
			const char *id = json_string_value(v);
			tbuf_reset(&w);
			if (id && strlen(id) < CAPTURE_ID_MAX && !strpbrk(id, "\"\\") &&
			    tbuf_printf(&w, "{\"Type\":\"%s\",\"Data\":{\"ID\":\"%s\"}}", type,
			                id) == TERN_OK)
				ws_broadcast_frame(h, w.data, w.len);
		}
	} else if (tbuf_printf(&w, "{\"Type\":\"%s\",\"Data\":%s}", type, json) == TERN_OK) {
		ws_broadcast_frame(h, w.data, w.len);
	}
	json_decref(d);
	tbuf_free(&w);
}

/* SSE clients get "event: TYPE / data: JSON"; WebSocket clients the
 * event as Mailpit sends it (ws_broadcast). */
static void sse_broadcast(struct http_server *h, const char *type, const char *json)
{
	struct tbuf b = TBUF_INIT(64u * 1024 * 1024);
	bool any_ws = false;
	if (tbuf_printf(&b, "event: %s\ndata: %s\n\n", type, json) == TERN_OK) {
		struct sse_client *c = h->clients, *next;
		for (; c; c = next) {
			next = c->next;
			if (c->ws)
				any_ws = true;
			else
				sse_write(c, b.data, b.len);
		}
	}
	tbuf_free(&b);
	if (any_ws)
		ws_broadcast(h, type, json);
}

static char *stats_json(struct http_server *h)
{
	uint64_t msgs = 0, unread = 0, bytes = 0;
	capture_stats(h->st, &msgs, &unread, &bytes);
	char buf[96];
	snprintf(buf, sizeof(buf), "{\"Total\":%llu,\"Unread\":%llu}", (unsigned long long)msgs,
	         (unsigned long long)unread);
	return tern_strdup(buf);
}

static void stats_task(void *arg)
{
	struct http_server *h = arg;
	h->stats_pending = false;
	if (!h->clients)
		return;
	char *s = stats_json(h);
	if (s)
		sse_broadcast(h, "stats", s);
	free(s);
}

struct publish {
	struct http_server *h;
	char *type;
	char *json;
};

static void publish_task(void *arg)
{
	struct publish *p = arg;
	struct http_server *h = p->h;
	sse_broadcast(h, p->type, p->json);
	/* Totals change with every event; one stats event per burst. */
	if (h->clients && !h->stats_pending && worker_post(h->w, stats_task, h) == 0)
		h->stats_pending = true;
	free(p->type);
	free(p->json);
	free(p);
}

void http_server_publish(struct http_server *h, const char *type, const char *json)
{
	if (!h || !type || !json)
		return;
	struct publish *p = calloc(1, sizeof(*p));
	if (!p)
		return;
	p->h = h;
	p->type = tern_strdup(type);
	p->json = tern_strdup(json);
	if (!p->type || !p->json || worker_post(h->w, publish_task, p) != 0) {
		free(p->type);
		free(p->json);
		free(p);
	}
}

static void heartbeat_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_server *h = arg;
	struct sse_client *c = h->clients, *next;
	for (; c; c = next) {
		next = c->next;
		if (c->ws)
			ws_send(c, WS_OP_PING, NULL, 0);
		else
			sse_write(c, ": ping\n\n", 8);
	}
}

/*
 * An event client (SSE or WebSocket) for req, not yet listed: NULL after
 * replying 503 (too many clients, connection not tracked) or 500. *stats is
 * the first stats message's JSON, the caller's to free.
 */
static struct sse_client *client_new(struct http_server *h, struct evhttp_request *req, bool ws,
                                     char **stats)
{
	if (h->n_clients >= SSE_CLIENTS_MAX) {
		reply_text(req, 503, "too many event clients");
		return NULL;
	}
	struct http_conn *conn = conn_of(h, evhttp_request_get_connection(req));
	if (!conn) {
		reply_text(req, 503, "connection not tracked, try again");
		return NULL;
	}
	struct sse_client *c = calloc(1, sizeof(*c));
	*stats = stats_json(h);
	if (!c || !*stats) {
		free(c);
		free(*stats);
		*stats = NULL;
		reply_text(req, 500, "out of memory");
		return NULL;
	}
	c->h = h;
	c->req = req;
	c->ws = ws;
	c->conn = conn;
	c->evcon = evhttp_request_get_connection(req);
	return c;
}

/* Lists c once its reply has started: the heartbeat and broadcasts reach it,
 * and the connection's close or the request's end forgets it. */
static void client_register(struct http_server *h, struct sse_client *c)
{
	c->next = h->clients;
	h->clients = c;
	h->n_clients++;
	c->conn->sse = c;
	evhttp_request_set_on_complete_cb(c->req, sse_req_done, c);
}

static void route_websocket(struct http_server *h, struct evhttp_request *req);

static void route_events(struct http_server *h, struct evhttp_request *req)
{
	const char *up = evhttp_find_header(evhttp_request_get_input_headers(req), "Upgrade");
	if (up && ws_header_has_token(up, "websocket")) {
		route_websocket(h, req);
		return;
	}
	char *stats;
	struct sse_client *c = client_new(h, req, false, &stats);
	if (!c)
		return;
	struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
	evhttp_add_header(oh, "Content-Type", "text/event-stream");
	evhttp_add_header(oh, "Cache-Control", "no-cache");
	evhttp_add_header(oh, "X-Accel-Buffering", "no");
	evhttp_add_header(oh, "X-Content-Type-Options", "nosniff");
	/* The stream is idle for long stretches; the heartbeat writes every
	 * 15 s, and only a dead peer should end it. */
	evhttp_connection_set_timeout(c->evcon, 24 * 3600);
	evhttp_send_reply_start(req, 200, "OK");
	client_register(h, c);
	struct tbuf b = TBUF_INIT(4096);
	if (tbuf_printf(&b, "retry: 2000\n\nevent: stats\ndata: %s\n\n", stats) == TERN_OK)
		sse_write(c, b.data, b.len);
	tbuf_free(&b);
	free(stats);
}

/* -------------------------------------------------- events (WebSocket) */

/*
 * A WebSocket on /api/events (RFC 6455), for Mailpit's UI and the tools
 * that connect there. After the 101, the connection's bufferevent is ours
 * to read: evhttp leaves its read callback empty while a reply is being
 * sent, and writes nothing more. Our callbacks wrap evhttp's write and
 * event callbacks (their argument is the evhttp connection), so an EOF or
 * error still goes through evhttp, frees the connection and runs
 * conn_closed, which forgets the client as for SSE.
 */

static void ws_fail(struct sse_client *c, uint16_t code, const char *why)
{
	log_warn("event=http_ws_close reason=%s code=%u", why, (unsigned)code);
	uint8_t b[2] = {(uint8_t)(code >> 8), (uint8_t)code};
	if (ws_send(c, WS_OP_CLOSE, b, sizeof(b)))
		c->ws_closing = true;
}

/* One frame or more arrived; c may be freed inside (connection dropped). */
static void ws_read_cb(struct bufferevent *bev, void *arg)
{
	struct sse_client *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	while (!c->ws_closing) {
		size_t n = evbuffer_get_length(in);
		if (n == 0)
			return;
		size_t peek = n < WS_HEADER_MAX ? n : WS_HEADER_MAX;
		uint8_t *p = evbuffer_pullup(in, (ev_ssize_t)peek);
		struct ws_frame f;
		int rc = ws_frame_parse(p, peek, WS_MESSAGE_MAX, &f);
		if (rc == TERN_ENOTFOUND)
			return;
		if (rc == TERN_ELIMIT) {
			ws_fail(c, WS_CLOSE_TOO_BIG, "too_big");
			break;
		}
		if (rc != TERN_OK) {
			ws_fail(c, WS_CLOSE_PROTOCOL, "protocol");
			break;
		}
		size_t total = f.header_len + (size_t)f.payload_len;
		if (n < total)
			return; /* the rest of the frame is coming */
		bool data = f.opcode == WS_OP_TEXT || f.opcode == WS_OP_BINARY;
		if ((f.opcode == WS_OP_CONT && !c->ws_in_msg) || (data && c->ws_in_msg)) {
			ws_fail(c, WS_CLOSE_PROTOCOL, "fragments");
			break;
		}
		if (data || f.opcode == WS_OP_CONT) {
			c->ws_msg_len = (data ? 0 : c->ws_msg_len) + f.payload_len;
			c->ws_in_msg = !f.fin;
			if (c->ws_msg_len > WS_MESSAGE_MAX) {
				ws_fail(c, WS_CLOSE_TOO_BIG, "too_big");
				break;
			}
			evbuffer_drain(in, total); /* clients have nothing to say to us */
			continue;
		}
		uint8_t payload[125];
		evbuffer_drain(in, f.header_len);
		evbuffer_remove(in, payload, (size_t)f.payload_len);
		ws_unmask(payload, (size_t)f.payload_len, f.mask, 0);
		if (f.opcode == WS_OP_PING) {
			if (!ws_send(c, WS_OP_PONG, payload, (size_t)f.payload_len))
				return;
		} else if (f.opcode == WS_OP_CLOSE) {
			/* §5.5.1: echo the status code, then close once it is out */
			if (ws_send(c, WS_OP_CLOSE, payload, f.payload_len >= 2 ? 2 : 0))
				c->ws_closing = true;
			return;
		}
		/* a pong answers our ping: nothing to do */
	}
	evbuffer_drain(in, evbuffer_get_length(in));
}

static void ws_write_cb(struct bufferevent *bev, void *arg)
{
	struct sse_client *c = arg;
	if (c->ws_wcb)
		c->ws_wcb(bev, c->evcon);
	if (c->ws_closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		evhttp_connection_free(c->evcon); /* runs conn_closed: c is freed */
}

static void ws_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct sse_client *c = arg;
	if (c->ws_ecb)
		c->ws_ecb(bev, what, c->evcon); /* may free c */
}

/* Refuses an upgrade with a plain status (and logs why). */
static void ws_refuse(struct evhttp_request *req, int code, const char *why, const char *text)
{
	log_warn("event=http_refused reason=%s status=%d path=/api/events", why, code);
	if (code == 426)
		evhttp_add_header(evhttp_request_get_output_headers(req), "Sec-WebSocket-Version",
		                  "13");
	reply_text(req, code, text);
}

static void route_websocket(struct http_server *h, struct evhttp_request *req)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *conn_hdr = evhttp_find_header(in, "Connection");
	const char *key = evhttp_find_header(in, "Sec-WebSocket-Key");
	const char *version = evhttp_find_header(in, "Sec-WebSocket-Version");
	const char *origin = evhttp_find_header(in, "Origin");
	const char *host = evhttp_find_header(in, "Host");
	char accept[WS_ACCEPT_LEN + 1];
	if (!conn_hdr || !ws_header_has_token(conn_hdr, "upgrade") || !key ||
	    ws_accept_key(key, strlen(key), accept) != TERN_OK) {
		ws_refuse(req, 400, "websocket_handshake",
		          "a WebSocket upgrade needs Connection: Upgrade and a valid "
		          "Sec-WebSocket-Key");
		return;
	}
	if (!version || strcmp(version, "13") != 0) {
		ws_refuse(req, 426, "websocket_version", "only WebSocket version 13 is spoken");
		return;
	}
	/* Cross-site WebSocket hijacking: a browser sends the page's Origin
	 * with every upgrade, and a page of another site must not read the
	 * event feed. (The guard passed Host already; GET skips its Origin
	 * check.) */
	struct http_hostport hp;
	if (origin && (!host || http_parse_host(host, strlen(host), &hp) != TERN_OK ||
	               !http_origin_same(origin, strlen(origin), &hp))) {
		ws_refuse(req, 403, "origin", "cross-origin WebSocket refused");
		return;
	}
	char *stats;
	struct sse_client *c = client_new(h, req, true, &stats);
	if (!c)
		return;
	struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
	evhttp_add_header(oh, "Upgrade", "websocket");
	evhttp_add_header(oh, "Connection", "Upgrade");
	evhttp_add_header(oh, "Sec-WebSocket-Accept", accept);
	evhttp_connection_set_timeout(c->evcon, 24 * 3600);
	evhttp_send_reply_start(req, 101, "Switching Protocols");
	struct bufferevent *bev = evhttp_connection_get_bufferevent(c->evcon);
	bufferevent_getcb(bev, NULL, &c->ws_wcb, &c->ws_ecb, NULL);
	bufferevent_setcb(bev, ws_read_cb, ws_write_cb, ws_event_cb, c);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	client_register(h, c);
	struct tbuf b = TBUF_INIT(4096);
	bool alive = true;
	if (tbuf_printf(&b, "{\"Type\":\"stats\",\"Data\":%s}", stats) == TERN_OK)
		alive = ws_send(c, WS_OP_TEXT, b.data, b.len);
	tbuf_free(&b);
	free(stats);
	log_info("event=http_ws_open clients=%zu", h->n_clients);
	/* frames sent right behind the handshake are in the buffer already */
	if (alive && evbuffer_get_length(bufferevent_get_input(bev)))
		ws_read_cb(bev, c);
}

/* ------------------------------------------------------------ API: misc */

static uint64_t rss_bytes(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	unsigned long long size = 0, rss = 0;
	if (!f)
		return 0;
	if (fscanf(f, "%llu %llu", &size, &rss) != 2)
		rss = 0;
	fclose(f);
	long ps = sysconf(_SC_PAGESIZE);
	return rss * (uint64_t)(ps > 0 ? ps : 4096);
}

static void route_info(struct http_server *h, struct evhttp_request *req)
{
	uint64_t msgs = 0, unread = 0, bytes = 0;
	capture_stats(h->st, &msgs, &unread, &bytes);
	uint64_t accepted = 0, accepted_size = 0, rejected = 0, deleted = 0;
	if (h->hooks.runtime_stats)
		h->hooks.runtime_stats(h->hooks.ctx, &accepted, &accepted_size, &rejected,
		                       &deleted);
	json_t *tags = json_object();
	json_t *names = capture_tags(h->st);
	size_t i;
	json_t *v;
	json_array_foreach(names, i, v)
	{
		const char *t = json_string_value(v);
		if (!t || i >= 200)
			break;
		char q[512];
		/* Quoted so that tags with spaces count right. */
		if ((size_t)snprintf(q, sizeof(q), "tag:\"%s\"", t) >= sizeof(q) || strchr(t, '"'))
			continue;
		json_t *l = capture_list(h->st, q, 0, 1);
		json_object_set_new(
		    tags, t,
		    json_integer(json_integer_value(json_object_get(l, "messages_count"))));
		json_decref(l);
	}
	json_decref(names);
	json_t *j = json_pack(
	    "{s:s, s:I, s:s, s:I, s:I, s:s, s:o, s:{s:I, s:I, s:I, s:I, s:I, s:I, "
	    "s:I}}",
	    "Version", h->hooks.version ? h->hooks.version : "", "DatabaseSize", (json_int_t)bytes,
	    "Database", "capture.db", "Messages", (json_int_t)msgs, "Unread", (json_int_t)unread,
	    "LatestVersion", "", "Tags", tags, "RuntimeStats", "Memory", (json_int_t)rss_bytes(),
	    "MessagesDeleted", (json_int_t)deleted, "SMTPAccepted", (json_int_t)accepted,
	    "SMTPAcceptedSize", (json_int_t)accepted_size, "SMTPIgnored", (json_int_t)0,
	    "SMTPRejected", (json_int_t)rejected, "Uptime", (json_int_t)(time(NULL) - h->started));
	reply_json(req, 200, j);
}

/* ---------------------------------------------------------------- checks
 *
 * html-check, link-check and sa-check (http/checks.c): the job is built
 * here from the store, runs on h->check_pool (link and spam checks wait on
 * the network), and its reply is sent on this worker. The pending check is
 * tied to its connection as a send is (conn_closed forgets the request);
 * check_done touches only the pending check, never h.
 */
#define CHECKS_MAX 16 /* running or queued at once */

struct pending_check {
	struct http_server *h;      /* check_work's count only (alive until pool_free) */
	struct evhttp_request *req; /* NULL once libevent freed it */
	struct http_conn *conn;     /* NULL once the connection is gone */
	struct http_check *job;
};

static void check_conn_closed(struct pending_check *p)
{
	if (p->req && evhttp_request_get_connection(p->req) != NULL) {
		evhttp_request_set_on_complete_cb(p->req, NULL, NULL);
		p->req = NULL;
	}
	p->conn = NULL;
}

static void check_req_done(struct evhttp_request *req, void *arg)
{
	struct pending_check *p = arg;
	p->req = NULL;
	if (p->conn)
		p->conn->check = NULL;
	p->conn = NULL;
}

/* Pool thread. */
static void check_work(void *arg)
{
	struct pending_check *p = arg;
	http_check_run(p->job, &p->h->checks_cancel);
	unsigned was = __atomic_fetch_sub(&p->h->checks_running, 1, __ATOMIC_RELAXED);
	TERN_BUG_ON(was == 0);
}

/* The HTTP worker, after check_work. */
static void check_done(void *arg)
{
	struct pending_check *p = arg;
	if (p->conn)
		p->conn->check = NULL;
	if (p->req) {
		evhttp_request_set_on_complete_cb(p->req, NULL, NULL);
		json_t *r = http_check_take(p->job);
		if (r)
			reply_json(p->req, 200, r);
		else
			reply_text(p->req, 500, "out of memory");
	}
	http_check_free(p->job);
	free(p);
}

static void route_check(struct http_server *h, struct evhttp_request *req, const char *id,
                        const char *kind, struct query *q)
{
	const char *f = query_get(q, "follow");
	int status;
	const char *why;
	struct http_check *job = http_check_new(
	    h->st, id, kind, f && (strcmp(f, "true") == 0 || strcmp(f, "1") == 0), &status, &why);
	if (!job) {
		if (status == 404)
			reply_404(req);
		else if (why)
			reply_error(req, "%s", why);
		else
			reply_text(req, 500, "cannot read the message");
		return;
	}
	struct pending_check *p = calloc(1, sizeof(*p));
	struct http_conn *conn = conn_of(h, evhttp_request_get_connection(req));
	if (!p || !h->check_pool ||
	    __atomic_load_n(&h->checks_running, __ATOMIC_RELAXED) >= CHECKS_MAX || !conn ||
	    conn->check) {
		reply_text(req, 503, "too many checks running, try again");
		goto fail;
	}
	p->h = h;
	p->job = job;
	p->req = req;
	p->conn = conn;
	__atomic_fetch_add(&h->checks_running, 1, __ATOMIC_RELAXED);
	if (pool_submit(h->check_pool, check_work, h->w, check_done, p) != TERN_OK) {
		__atomic_fetch_sub(&h->checks_running, 1, __ATOMIC_RELAXED);
		reply_text(req, 500, "out of memory");
		goto fail;
	}
	conn->check = p;
	evhttp_request_set_on_complete_cb(req, check_req_done, p);
	return;
fail:
	http_check_free(job);
	free(p);
}

static void route_webui(struct http_server *h, struct evhttp_request *req)
{
	json_t *j =
	    json_pack("{s:s, s:{s:b, s:s, s:s, s:s, s:s, s:b, s:s}, s:b, s:b, s:b, s:b}", "Label",
	              "", "MessageRelay", "Enabled",
	              h->hooks.release &&
	                  (!h->hooks.release_enabled || h->hooks.release_enabled(h->hooks.ctx)),
	              "SMTPServer", "", "AllowedRecipients", "", "BlockedRecipients", "",
	              "ReturnPath", "", "PreserveMessageIDs", 0, "OverrideFrom", "", "SpamAssassin",
	              http_spam_enabled(), "ChaosEnabled", h->hooks.chaos_get != NULL,
	              "DuplicatesIgnored", 0, "HideDeleteAllButton", 0);
	reply_json(req, 200, j);
}

static void route_chaos(struct http_server *h, struct evhttp_request *req, int method)
{
	if (!h->hooks.chaos_get || !h->hooks.chaos_set) {
		reply_error(req, "Chaos is not enabled");
		return;
	}
	if (method == EVHTTP_REQ_PUT) {
		json_t *body = req_json(req, true);
		if (!body)
			return;
		/* Swagger: omitted triggers reset to their defaults, 0 %. */
		static const char *const triggers[] = {"Authentication", "Recipient", "Sender"};
		for (size_t i = 0; i < 3; i++) {
			json_t *t = json_object_get(body, triggers[i]);
			if (!t || json_is_null(t))
				json_object_set_new(
				    body, triggers[i],
				    json_pack("{s:i, s:i}", "ErrorCode", 451, "Probability", 0));
		}
		char *s = json_dumps(body, JSON_COMPACT);
		json_decref(body);
		if (!s) {
			reply_text(req, 500, "out of memory");
			return;
		}
		int rc = h->hooks.chaos_set(h->hooks.ctx, s, strlen(s));
		free(s);
		if (rc != TERN_OK) {
			reply_error(req, "invalid Chaos triggers (ErrorCode 400-599, Probability "
			                 "0-100)");
			return;
		}
	}
	char buf[4096] = "";
	h->hooks.chaos_get(h->hooks.ctx, buf, sizeof(buf));
	json_error_t e;
	json_t *j = json_loads(buf, 0, &e);
	if (!j) {
		reply_error(req, "chaos state unavailable");
		return;
	}
	reply_json(req, 200, j);
}

/* -------------------------------------------------------- API: messages */

static void route_messages(struct http_server *h, struct evhttp_request *req, int method,
                           struct query *q)
{
	if (method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD) {
		size_t start, limit;
		if (!query_size(q, "start", 0, &start) || !query_size(q, "limit", 50, &limit)) {
			reply_error(req, "start and limit must be non-negative integers");
			return;
		}
		if (limit > LIST_LIMIT_MAX)
			limit = LIST_LIMIT_MAX;
		json_t *j = capture_list(h->st, NULL, start, limit);
		if (!j) {
			reply_error(req, "cannot list messages");
			return;
		}
		reply_json(req, 200, j);
		return;
	}
	json_t *body = req_json(req, true);
	if (!body)
		return;
	const char **ids = NULL;
	size_t n = 0;
	json_t *search_ids = NULL;
	if (json_str_array(req, body, "IDs", &ids, &n) != 0)
		goto out;
	int rc;
	if (method == EVHTTP_REQ_DELETE) {
		rc = capture_delete(h->st, ids, n);
	} else {
		json_t *read = json_object_get(body, "Read");
		json_t *search = json_object_get(body, "Search");
		if (read && !json_is_boolean(read)) {
			reply_error(req, "Read must be a boolean");
			goto out;
		}
		if (search && !json_is_null(search) && !json_is_string(search)) {
			reply_error(req, "Search must be a string");
			goto out;
		}
		const char *sq = json_string_value(search);
		if (n == 0 && sq && *sq) {
			/* The matching messages, by their IDs. */
			search_ids = capture_list(h->st, sq, 0, 10 * LIST_LIMIT_MAX);
			json_t *msgs = json_object_get(search_ids, "messages");
			size_t cnt = json_array_size(msgs);
			if (cnt == 0) {
				reply_ok(req);
				goto out;
			}
			ids = calloc(cnt, sizeof(char *));
			if (!ids) {
				reply_text(req, 500, "out of memory");
				goto out;
			}
			for (size_t i = 0; i < cnt; i++) {
				const char *id = json_string_value(
				    json_object_get(json_array_get(msgs, i), "ID"));
				if (id)
					ids[n++] = id;
			}
		}
		rc = capture_set_read(h->st, ids, n, json_is_true(read));
	}
	if (rc == TERN_OK || rc == TERN_ENOTFOUND)
		reply_ok(req);
	else
		reply_store_err(req, rc);
out:
	free(ids);
	json_decref(search_ids);
	json_decref(body);
}

static void route_search(struct http_server *h, struct evhttp_request *req, int method,
                         struct query *q)
{
	const char *query = query_get(q, "query");
	if (!query || !*query) {
		reply_error(req, "no search query");
		return;
	}
	if (method == EVHTTP_REQ_DELETE) {
		int rc = capture_delete_search(h->st, query);
		if (rc == TERN_OK || rc == TERN_ENOTFOUND)
			reply_ok(req);
		else
			reply_store_err(req, rc);
		return;
	}
	size_t start, limit;
	if (!query_size(q, "start", 0, &start) || !query_size(q, "limit", 50, &limit)) {
		reply_error(req, "start and limit must be non-negative integers");
		return;
	}
	if (limit > LIST_LIMIT_MAX)
		limit = LIST_LIMIT_MAX;
	json_t *j = capture_list(h->st, query, start, limit);
	if (!j) {
		reply_error(req, "invalid search query");
		return;
	}
	reply_json(req, 200, j);
}

static void route_tags(struct http_server *h, struct evhttp_request *req, int method,
                       const char *tag)
{
	if (!tag) {
		if (method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD) {
			json_t *j = capture_tags(h->st);
			reply_json(req, 200, j ? j : json_array());
			return;
		}
		if (method != EVHTTP_REQ_PUT) {
			reply_text(req, 405, "method not allowed");
			return;
		}
		json_t *body = req_json(req, false);
		if (!body)
			return;
		const char **ids = NULL, **tags = NULL;
		size_t n_ids = 0, n_tags = 0;
		if (!json_is_array(json_object_get(body, "IDs")) ||
		    !json_is_array(json_object_get(body, "Tags"))) {
			reply_error(req, "IDs and Tags are required");
		} else if (json_str_array(req, body, "IDs", &ids, &n_ids) == 0 &&
		           json_str_array(req, body, "Tags", &tags, &n_tags) == 0) {
			int rc = TERN_OK;
			if (n_ids)
				rc = capture_set_tags(h->st, ids, n_ids, tags, n_tags);
			if (rc == TERN_OK || rc == TERN_ENOTFOUND)
				reply_ok(req);
			else
				reply_store_err(req, rc);
		}
		free(ids);
		free(tags);
		json_decref(body);
		return;
	}
	if (!*tag) {
		reply_error(req, "tag name is required");
		return;
	}
	int rc;
	if (method == EVHTTP_REQ_PUT) {
		json_t *body = req_json(req, false);
		if (!body)
			return;
		const char *name = json_string_value(json_object_get(body, "Name"));
		if (!name || !*name) {
			reply_error(req, "Name is required");
			json_decref(body);
			return;
		}
		rc = capture_rename_tag(h->st, tag, name);
		json_decref(body);
	} else if (method == EVHTTP_REQ_DELETE) {
		rc = capture_delete_tag(h->st, tag);
	} else {
		reply_text(req, 405, "method not allowed");
		return;
	}
	if (rc == TERN_OK)
		reply_ok(req);
	else if (rc == TERN_ENOTFOUND)
		reply_error(req, "tag not found");
	else
		reply_store_err(req, rc);
}

/* --------------------------------------------------------- API: message */

/* A header-safe copy: controls, quotes and backslashes become '_' and
 * non-ASCII is dropped to '_' too (the exact name goes in filename*). */
static void ascii_filename(const char *in, char *out, size_t outlen)
{
	size_t k = 0;
	for (; *in && k + 1 < outlen; in++) {
		unsigned char c = (unsigned char)*in;
		if ((c & 0xC0) == 0x80)
			continue; /* one '_' per UTF-8 sequence */
		out[k++] =
		    (c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '/') ? '_' : (char)c;
	}
	out[k] = '\0';
}

static void add_disposition(struct evhttp_request *req, const char *kind, const char *filename)
{
	char ascii[256], value[1024];
	ascii_filename(filename, ascii, sizeof(ascii));
	int n = snprintf(value, sizeof(value), "%s; filename=\"%s\"", kind, ascii);
	bool non_ascii = false;
	for (const char *p = filename; *p; p++)
		non_ascii |= (unsigned char)*p >= 0x80;
	if (non_ascii && n > 0 && (size_t)n < sizeof(value)) {
		/* RFC 6266 / 5987: the exact UTF-8 name for browsers. */
		size_t k = (size_t)n;
		k += (size_t)snprintf(value + k, sizeof(value) - k, "; filename*=UTF-8''");
		for (const unsigned char *p = (const unsigned char *)filename;
		     *p && k + 4 < sizeof(value); p++) {
			if ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
			    (*p >= 'A' && *p <= 'Z') || strchr("!#$&+-.^_`|~", *p))
				value[k++] = (char)*p;
			else
				k += (size_t)snprintf(value + k, sizeof(value) - k, "%%%02X", *p);
		}
		value[k] = '\0';
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Disposition", value);
}

/* A content type from a stored part, safe for a header. */
static const char *safe_ctype(const char *ct)
{
	if (!*ct || strlen(ct) > 200)
		return "application/octet-stream";
	for (const char *p = ct; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
			return "application/octet-stream";
	return ct;
}

static void route_part(struct http_server *h, struct evhttp_request *req, const char *id,
                       const char *part, bool thumb, struct query *q)
{
	struct tbuf out = TBUF_INIT(PART_MAX);
	char ctype[256] = "", fname[512] = "";
	int rc = capture_part(h->st, id, part, &out, ctype, sizeof(ctype), fname, sizeof(fname));
	if (rc != TERN_OK) {
		if (rc == TERN_ENOTFOUND)
			reply_404(req);
		else
			reply_store_err(req, rc);
		goto out;
	}
	const char *ct = safe_ctype(ctype);
	if (thumb && strncasecmp(ct, "image/", 6) != 0) {
		reply_404(req);
		goto out;
	}
	struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
	/* A part is attacker-chosen content on our origin: anything a browser
	 * could run gets a sandbox. */
	if (strncasecmp(ct, "text/", 5) == 0 || strcasestr(ct, "xml") || strcasestr(ct, "svg") ||
	    strcasestr(ct, "html"))
		evhttp_add_header(oh, "Content-Security-Policy", CSP_PART);
	if (!thumb)
		add_disposition(req, query_flag(q, "dl") ? "attachment" : "inline",
		                fname[0] ? fname : part);
	reply_bytes(req, 200, ct, out.data, out.len);
out:
	tbuf_free(&out);
}

static void route_raw(struct http_server *h, struct evhttp_request *req, const char *id,
                      struct query *q)
{
	struct tbuf raw = TBUF_INIT(SIZE_MAX / 2);
	int rc = capture_raw(h->st, id, &raw);
	if (rc != TERN_OK) {
		reply_store_err(req, rc);
		tbuf_free(&raw);
		return;
	}
	if (query_flag(q, "dl")) {
		char fn[CAPTURE_ID_MAX + 8];
		snprintf(fn, sizeof(fn), "%s.eml", id);
		add_disposition(req, "attachment", fn);
		reply_bytes(req, 200, "message/rfc822", raw.data, raw.len);
	} else {
		reply_bytes(req, 200, "text/plain; charset=utf-8", raw.data, raw.len);
	}
	tbuf_free(&raw);
}

static void route_release(struct http_server *h, struct evhttp_request *req, const char *id)
{
	json_t *body = req_json(req, false);
	if (!body)
		return;
	const char **to = NULL;
	size_t n = 0;
	char *from = NULL;
	char **env = NULL;
	size_t n_env = 0;
	if (json_str_array(req, body, "To", &to, &n) != 0)
		goto out;
	if (n == 0) {
		reply_error(req, "To is required");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		const char *a = to[i];
		if (!*a || strlen(a) > 254 || !strchr(a, '@') || strpbrk(a, " \t\r\n<>,;")) {
			reply_error(req, "invalid address: %.100s", a);
			goto out;
		}
	}
	int rc = capture_envelope(h->st, id, &from, &env, &n_env);
	if (rc != TERN_OK) {
		reply_store_err(req, rc);
		goto out;
	}
	if (!h->hooks.release) {
		reply_error(req, "message relaying is not enabled");
		goto out;
	}
	rc = h->hooks.release(h->hooks.ctx, id, to, n);
	if (rc == TERN_OK)
		reply_ok(req);
	else if (rc == TERN_EINVAL)
		reply_error(req, "message relaying is not enabled");
	else
		reply_store_err(req, rc);
out:
	free(from);
	for (size_t i = 0; i < n_env; i++)
		free(env[i]);
	free(env);
	free(to);
	json_decref(body);
}

static void route_message(struct http_server *h, struct evhttp_request *req, int method, char **seg,
                          size_t nseg, struct query *q)
{
	char id[CAPTURE_ID_MAX];
	if (!resolve_id(h, seg[0], id)) {
		reply_404(req);
		return;
	}
	bool get = method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD;
	if (nseg == 1 && get) {
		json_t *m = capture_message(h->st, id, true);
		if (!m)
			reply_404(req);
		else
			reply_json(req, 200, m);
	} else if (nseg == 2 && get && strcmp(seg[1], "headers") == 0) {
		json_t *m = capture_headers(h->st, id);
		if (!m)
			reply_404(req);
		else
			reply_json(req, 200, m);
	} else if (nseg == 2 && get && strcmp(seg[1], "raw") == 0) {
		route_raw(h, req, id, q);
	} else if (nseg == 3 && get && strcmp(seg[1], "part") == 0) {
		route_part(h, req, id, seg[2], false, q);
	} else if (nseg == 4 && get && strcmp(seg[1], "part") == 0 &&
	           strcmp(seg[3], "thumb") == 0) {
		route_part(h, req, id, seg[2], true, q);
	} else if (nseg == 2 && method == EVHTTP_REQ_POST && strcmp(seg[1], "release") == 0) {
		route_release(h, req, id);
	} else if (nseg == 2 && get &&
	           (strcmp(seg[1], "html-check") == 0 || strcmp(seg[1], "link-check") == 0 ||
	            strcmp(seg[1], "sa-check") == 0)) {
		route_check(h, req, id, seg[1], q);
	} else {
		reply_404(req);
	}
}

/* ------------------------------------------------------------------ send */

struct pending_send {
	struct http_server *h;
	struct evhttp_request *req; /* NULL once libevent freed it */
	struct http_conn *conn;     /* NULL once the connection is gone */
	struct http_send_msg msg;
	int err;
	char id[CAPTURE_ID_MAX];
};

static void send_conn_closed(struct pending_send *p)
{
	/* Attached: libevent frees it with the connection. Detached: the
	 * reply in send_finish frees it. */
	if (p->req && evhttp_request_get_connection(p->req) != NULL) {
		evhttp_request_set_on_complete_cb(p->req, NULL, NULL);
		p->req = NULL;
	}
	p->conn = NULL;
}

/* libevent completed the request itself (an error reply after a read
 * error) and frees it next. */
static void send_req_done(struct evhttp_request *req, void *arg)
{
	struct pending_send *p = arg;
	p->req = NULL;
	if (p->conn)
		p->conn->send = NULL;
	p->conn = NULL;
}

static void reply_send_error(struct evhttp_request *req, const char *msg)
{
	json_t *j = json_pack("{s:s}", "Error", msg);
	reply_json(req, 400, j);
}

static void send_finish(void *arg)
{
	struct pending_send *p = arg;
	struct http_server *h = p->h;
	if (p->err == TERN_OK && p->msg.n_tags) {
		const char *ids[1] = {p->id};
		int rc = capture_set_tags(h->st, ids, 1, (const char *const *)p->msg.tags,
		                          p->msg.n_tags);
		if (rc != TERN_OK)
			log_warn("event=http_send_tags id=%s reason=%s", p->id, tern_strerror(rc));
	}
	if (p->conn)
		p->conn->send = NULL;
	if (p->req) {
		evhttp_request_set_on_complete_cb(p->req, NULL, NULL);
		if (p->err == TERN_OK)
			reply_json(p->req, 200, json_pack("{s:s}", "ID", p->id));
		else
			reply_send_error(p->req, tern_strerror(p->err));
	}
	http_send_msg_free(&p->msg);
	free(p);
}

/* Any thread: hand the result back to the HTTP worker. */
static void send_done(void *arg, int err, const char *id)
{
	struct pending_send *p = arg;
	p->err = err;
	if (err == TERN_OK && (!id || strlen(id) >= CAPTURE_ID_MAX))
		p->err = TERN_EINVAL;
	if (p->err == TERN_OK)
		tern_strlcpy(p->id, id, sizeof(p->id));
	if (worker_post(p->h->w, send_finish, p) != 0)
		log_error("event=http_send_lost reason=nomem");
}

static void route_send(struct http_server *h, struct evhttp_request *req)
{
	size_t n;
	/* libevent bounds the body by capture.http_max_body (413) already */
	const char *body = req_body(req, HTTP_SEND_MAX_BODY, &n);
	if (!body) {
		reply_json(req, 413, json_pack("{s:s}", "Error", "request body too large"));
		return;
	}
	if (!h->hooks.send) {
		reply_send_error(req, "sending is not enabled");
		return;
	}
	struct http_conn *conn = conn_of(h, evhttp_request_get_connection(req));
	if (!conn) {
		reply_text(req, 503, "connection not tracked, try again");
		return;
	}
	struct pending_send *p = calloc(1, sizeof(*p));
	if (!p) {
		reply_text(req, 500, "out of memory");
		return;
	}
	char qid[QUEUE_ID_LEN + 1], msgid[QUEUE_ID_LEN + 16], err[256];
	queue_id_new(qid);
	snprintf(msgid, sizeof(msgid), "%s@tern", qid);
	int rc = http_send_build(body, n, (long long)time(NULL), msgid, &p->msg, err, sizeof(err));
	if (rc != TERN_OK) {
		reply_send_error(req, err[0] ? err : tern_strerror(rc));
		free(p);
		return;
	}
	p->h = h;
	p->req = req;
	p->conn = conn;
	conn->send = p;
	evhttp_request_set_on_complete_cb(req, send_req_done, p);
	h->hooks.send(h->hooks.ctx, p->msg.raw, p->msg.len, p->msg.from,
	              (const char *const *)p->msg.to, p->msg.n_to, send_done, p);
}

/* ------------------------------------------------------------------ view */

struct inline_img {
	const char *cid;
	const char *part;
	char *uri; /* data: URI, built on first use */
	bool tried;
};

static const char *inline_uri(struct http_server *h, const char *id, struct inline_img *im,
                              size_t *budget)
{
	if (im->tried)
		return im->uri;
	im->tried = true;
	struct tbuf part = TBUF_INIT(*budget), uri = TBUF_INIT(*budget + 1024);
	char ctype[256] = "", fname[256];
	if (capture_part(h->st, id, im->part, &part, ctype, sizeof(ctype), fname, sizeof(fname)) !=
	    TERN_OK)
		goto out;
	const char *ct = safe_ctype(ctype);
	if (strchr(ct, ';') || strchr(ct, '"') || strchr(ct, ' '))
		ct = "application/octet-stream";
	if (tbuf_printf(&uri, "data:%s;base64,", ct) ||
	    tern_base64_encode(part.data ? part.data : "", part.len, &uri))
		goto out;
	*budget = uri.len < *budget ? *budget - uri.len : 0;
	im->uri = tbuf_steal(&uri, NULL);
out:
	tbuf_free(&part);
	tbuf_free(&uri);
	return im->uri;
}

/* Writes html with every cid:X that names an inline part replaced by the
 * part as a data: URI, and (embed) a <base target="_blank"> in its head. */
static int render_html(struct http_server *h, const char *id, const char *html, json_t *msg,
                       bool embed, struct tbuf *out)
{
	json_t *inl = json_object_get(msg, "Inline");
	json_t *att = json_object_get(msg, "Attachments");
	size_t n = json_array_size(inl) + json_array_size(att), k = 0;
	struct inline_img *imgs = calloc(n ? n : 1, sizeof(*imgs));
	size_t budget = INLINE_MAX;
	int rc = TERN_ENOMEM;
	if (!imgs)
		return rc;
	json_t *lists[2] = {inl, att};
	for (int l = 0; l < 2; l++) {
		size_t i;
		json_t *v;
		json_array_foreach(lists[l], i, v)
		{
			const char *cid = json_string_value(json_object_get(v, "ContentID"));
			const char *part = json_string_value(json_object_get(v, "PartID"));
			if (cid && *cid && part)
				imgs[k++] = (struct inline_img){cid, part, NULL, false};
		}
	}
	const char *p = html;
	size_t len = strlen(html);
	if (embed) {
		/* After <head ...> if there is one, else after <html ...>, else first. */
		const char *at = NULL;
		const char *hd = strcasestr(html, "<head");
		if (hd && (hd[5] == '>' || hd[5] == ' '))
			at = strchr(hd, '>');
		if (!at) {
			const char *ht = strcasestr(html, "<html");
			if (ht)
				at = strchr(ht, '>');
		}
		size_t pre = at ? (size_t)(at + 1 - html) : 0;
		if ((rc = tbuf_append(out, html, pre)) ||
		    (rc = tbuf_append_str(out, "<base target=\"_blank\">")))
			goto out;
		p += pre;
	}
	const char *end = html + len;
	while (p < end) {
		const char *c = strcasestr(p, "cid:");
		if (!c) {
			rc = tbuf_append(out, p, (size_t)(end - p));
			goto done;
		}
		if ((rc = tbuf_append(out, p, (size_t)(c - p))))
			goto out;
		const char *v = c + 4, *e = v;
		while (e < end && !strchr("\"' \t\r\n>)", *e))
			e++;
		const char *uri = NULL;
		for (size_t i = 0; i < k && !uri; i++)
			if (strlen(imgs[i].cid) == (size_t)(e - v) &&
			    memcmp(imgs[i].cid, v, (size_t)(e - v)) == 0)
				uri = inline_uri(h, id, &imgs[i], &budget);
		if (uri)
			rc = tbuf_append_str(out, uri);
		else
			rc = tbuf_append(out, c, (size_t)(e - c));
		if (rc)
			goto out;
		p = e;
	}
done:
	rc = TERN_OK;
out:
	for (size_t i = 0; i < k; i++)
		free(imgs[i].uri);
	free(imgs);
	return rc;
}

static void route_view(struct http_server *h, struct evhttp_request *req, const char *file,
                       struct query *q)
{
	size_t n = strlen(file);
	bool html;
	if (n > 5 && strcmp(file + n - 5, ".html") == 0)
		html = true, n -= 5;
	else if (n > 4 && strcmp(file + n - 4, ".txt") == 0)
		html = false, n -= 4;
	else {
		reply_404(req);
		return;
	}
	char raw_id[CAPTURE_ID_MAX], id[CAPTURE_ID_MAX];
	if (n >= sizeof(raw_id)) {
		reply_404(req);
		return;
	}
	memcpy(raw_id, file, n);
	raw_id[n] = '\0';
	if (!resolve_id(h, raw_id, id)) {
		reply_404(req);
		return;
	}
	json_t *m = capture_message(h->st, id, false);
	if (!m) {
		reply_404(req);
		return;
	}
	const char *body = json_string_value(json_object_get(m, html ? "HTML" : "Text"));
	struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
	evhttp_add_header(oh, "Cache-Control", "no-cache");
	if (!html) {
		reply_bytes(req, 200, "text/plain; charset=utf-8", body ? body : "",
		            body ? strlen(body) : 0);
	} else if (!body || !*body) {
		reply_text(req, 404, "message has no HTML part");
	} else {
		struct tbuf out = TBUF_INIT(SIZE_MAX / 2);
		if (render_html(h, id, body, m, query_flag(q, "embed"), &out) != TERN_OK) {
			reply_text(req, 500, "out of memory");
		} else {
			evhttp_add_header(oh, "Content-Security-Policy",
			                  query_flag(q, "remote") ? CSP_VIEW_REMOTE : CSP_VIEW);
			evhttp_add_header(oh, "Referrer-Policy", "no-referrer");
			reply_bytes(req, 200, "text/html; charset=utf-8", out.data, out.len);
		}
		tbuf_free(&out);
	}
	json_decref(m);
}

/* ---------------------------------------------------------------- static */

static const struct {
	const char *ext;
	const char *type;
} static_types[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".mjs", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".json", "application/json"},
    {".map", "application/json"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".jpg", "image/jpeg"},
    {".jpeg", "image/jpeg"},
    {".gif", "image/gif"},
    {".webp", "image/webp"},
    {".ico", "image/x-icon"},
    {".woff", "font/woff"},
    {".woff2", "font/woff2"},
    {".ttf", "font/ttf"},
    {".txt", "text/plain; charset=utf-8"},
    {".wasm", "application/wasm"},
};

const char *http_asset_type(const char *path)
{
	const char *dot = strrchr(path, '.');
	if (dot && !strchr(dot, '/'))
		for (size_t i = 0; i < sizeof(static_types) / sizeof(static_types[0]); i++)
			if (strcasecmp(dot, static_types[i].ext) == 0)
				return static_types[i].type;
	return "application/octet-stream";
}

static const char placeholder[] =
    "<!doctype html><html><head><meta charset=\"utf-8\"><title>tern capture</title></head>"
    "<body><h1>tern capture</h1><p>The web UI is not built into this binary. The Mailpit-"
    "compatible API is at <a href=\"/api/v1/messages\">/api/v1/</a>.</p></body></html>\n";

static void route_static(struct evhttp_request *req, const char *path)
{
	const char *file = strcmp(path, "/") == 0 ? "/index.html" : path;
	if (strstr(file, "..")) /* the table has no such names; say so plainly */
	{
		reply_404(req);
		return;
	}
	size_t n;
	/* web/ui/ is tern serve's admin UI (http/ui_routes.c): nothing of it
	 * belongs to capture mode, where it would not work. */
	const unsigned char *data =
	    strncmp(file, "/ui/", 4) == 0 ? NULL : http_asset_find(file, &n);
	const char *last = strrchr(path, '/');
	if (!data && last && !strchr(last, '.') && strncmp(path, "/assets/", 8) != 0) {
		/* A UI route (history API): the app itself. */
		file = "/index.html";
		data = http_asset_find(file, &n);
	}
	if (!data) {
		if (strcmp(file, "/index.html") == 0) {
			reply_bytes(req, 200, "text/html; charset=utf-8", placeholder,
			            sizeof(placeholder) - 1);
			return;
		}
		{
			reply_404(req);
			return;
		}
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-cache");
	reply_bytes(req, 200, http_asset_type(file), data, n);
}

/* ---------------------------------------------------------------- router */

#define MAX_SEGS 8

/* Splits path (after prefix) into at most MAX_SEGS decoded segments. */
static int split_path(const char *path, char **seg, size_t *nseg)
{
	*nseg = 0;
	const char *p = path;
	while (*p) {
		const char *e = strchr(p, '/');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		if (*nseg == MAX_SEGS)
			return -1;
		char *raw = tern_strndup(p, len);
		if (!raw)
			return -1;
		size_t dl;
		seg[*nseg] = evhttp_uridecode(raw, 0, &dl);
		free(raw);
		if (!seg[*nseg] || strlen(seg[*nseg]) != dl)
			return -1; /* %00 inside a segment */
		(*nseg)++;
		if (!e)
			break;
		p = e + 1;
	}
	return 0;
}

static void route_api(struct http_server *h, struct evhttp_request *req, int method,
                      const char *rest, struct query *q)
{
	char *seg[MAX_SEGS];
	size_t nseg = 0;
	if (split_path(rest, seg, &nseg) != 0) {
		reply_404(req);
		goto out;
	}
	bool get = method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD;
	const char *s0 = nseg ? seg[0] : "";
	if (nseg == 1 && strcmp(s0, "info") == 0 && get)
		route_info(h, req);
	else if (nseg == 1 && strcmp(s0, "webui") == 0 && get)
		route_webui(h, req);
	else if (nseg == 1 && strcmp(s0, "messages") == 0 &&
	         (get || method == EVHTTP_REQ_PUT || method == EVHTTP_REQ_DELETE))
		route_messages(h, req, method, q);
	else if (nseg >= 2 && nseg <= 5 && strcmp(s0, "message") == 0)
		route_message(h, req, method, seg + 1, nseg - 1, q);
	else if (nseg == 1 && strcmp(s0, "search") == 0 && (get || method == EVHTTP_REQ_DELETE))
		route_search(h, req, method, q);
	else if (nseg == 1 && strcmp(s0, "send") == 0 && method == EVHTTP_REQ_POST)
		route_send(h, req);
	else if (nseg == 1 && strcmp(s0, "tags") == 0)
		route_tags(h, req, method, NULL);
	else if (nseg == 2 && strcmp(s0, "tags") == 0)
		route_tags(h, req, method, seg[1]);
	else if (nseg == 1 && strcmp(s0, "chaos") == 0 && (get || method == EVHTTP_REQ_PUT))
		route_chaos(h, req, method);
	else if (nseg == 1 && (strcmp(s0, "info") == 0 || strcmp(s0, "webui") == 0 ||
	                       strcmp(s0, "messages") == 0 || strcmp(s0, "search") == 0 ||
	                       strcmp(s0, "send") == 0 || strcmp(s0, "chaos") == 0))
		reply_text(req, 405, "method not allowed");
	else
		reply_404(req);
out:
	for (size_t i = 0; i < nseg; i++)
		free(seg[i]);
}

/* ----------------------------------------------------- basic authentication */

/*
 * A request whose Authorization value did not verify before waits while
 * the pool checks it (bcrypt is slow by design, and the worker serves
 * everyone), then handle() runs again and finds it in the cache. The
 * connection may go meanwhile: conn_closed tells us, as for a send.
 */
struct pending_auth {
	struct http_server *h;
	struct evhttp_request *req; /* NULL once libevent freed it */
	struct http_conn *conn;     /* NULL once the connection is gone */
	char *value;
	bool ok;
};

static void reply_401(struct evhttp_request *req)
{
	evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
	                  "Basic realm=\"tern capture\", charset=\"UTF-8\"");
	log_info("event=http_refused reason=auth status=401 method=%s",
	         method_name((int)evhttp_request_get_command(req)));
	reply_text(req, 401, "authentication required");
}

static void auth_conn_closed(struct pending_auth *p)
{
	if (p->req && evhttp_request_get_connection(p->req) != NULL) {
		evhttp_request_set_on_complete_cb(p->req, NULL, NULL);
		p->req = NULL;
	}
	p->conn = NULL;
}

static void auth_req_done(struct evhttp_request *req, void *arg)
{
	struct pending_auth *p = arg;
	p->req = NULL;
	if (p->conn)
		p->conn->auth = NULL;
	p->conn = NULL;
}

static void auth_work(void *arg)
{
	struct pending_auth *p = arg;
	p->ok = http_auth_verify_header(p->h->hooks.ui_auth, p->value);
}

static void handle(struct evhttp_request *req, void *arg);

static void auth_finish(void *arg)
{
	struct pending_auth *p = arg;
	if (p->conn)
		p->conn->auth = NULL;
	if (p->req) {
		evhttp_request_set_on_complete_cb(p->req, NULL, NULL);
		if (!p->ok)
			reply_401(p->req);
		else if (!evhttp_request_get_connection(p->req))
			reply_text(p->req, 503,
			           "connection closed"); /* frees the detached request */
		else {
			http_auth_remember(p->h->hooks.ui_auth, p->value);
			handle(p->req, p->h);
		}
	}
	explicit_bzero(p->value, strlen(p->value));
	free(p->value);
	free(p);
}

/* Whether req may go on now; if not it was answered, or waits for the pool. */
static bool auth_passed(struct http_server *h, struct evhttp_request *req)
{
	const char *v = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	if (http_auth_cached(h->hooks.ui_auth, v))
		return true;
	if (!v) {
		reply_401(req);
		return false;
	}
	if (!h->hooks.pool) {
		if (http_auth_check_header(h->hooks.ui_auth, v))
			return true;
		reply_401(req);
		return false;
	}
	struct http_conn *conn = conn_of(h, evhttp_request_get_connection(req));
	struct pending_auth *p = conn && !conn->auth ? calloc(1, sizeof(*p)) : NULL;
	if (!p || !(p->value = tern_strdup(v))) {
		free(p);
		reply_text(req, 503, "busy, try again");
		return false;
	}
	p->h = h;
	p->req = req;
	p->conn = conn;
	conn->auth = p;
	evhttp_request_set_on_complete_cb(req, auth_req_done, p);
	if (pool_submit(h->hooks.pool, auth_work, h->w, auth_finish, p) != 0) {
		conn->auth = NULL;
		evhttp_request_set_on_complete_cb(req, NULL, NULL);
		free(p->value);
		free(p);
		reply_text(req, 503, "busy, try again");
	}
	return false;
}

/* On an HTTPS server, whether req came over a plain connection: conn_bev_new
 * failed (out of memory) and evhttp made one itself. Such a request is never
 * served in clear. */
static bool tls_missing(struct http_server *h, struct evhttp_request *req)
{
	if (!h->hooks.ui_tls)
		return false;
	struct evhttp_connection *ec = evhttp_request_get_connection(req);
	struct bufferevent *bev = ec ? evhttp_connection_get_bufferevent(ec) : NULL;
	return !bev || !bufferevent_openssl_get_ssl(bev);
}

static void handle(struct evhttp_request *req, void *arg)
{
	struct http_server *h = arg;
	const char *uri = evhttp_request_get_uri(req);
	int method = (int)evhttp_request_get_command(req);
	if (h->hooks.handle) { /* serve mode: http/api.c */
		if (tls_missing(h, req))
			reply_text(req, 503, "TLS unavailable, try again");
		else
			h->hooks.handle(h->hooks.ctx, req);
		return;
	}
	if (!uri || strlen(uri) > URL_MAX) {
		reply_text(req, 414, "URI too long");
		return;
	}
	const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
	const char *path = u ? evhttp_uri_get_path(u) : NULL;
	if (!path || path[0] != '/') {
		reply_error(req, "bad request target");
		return;
	}
	struct query q = {.parsed = false};
	const char *qs = evhttp_uri_get_query(u);
	TAILQ_INIT(&q.kv);
	if (qs && evhttp_parse_query_str(qs, &q.kv) == 0)
		q.parsed = true;
	else if (qs) {
		evhttp_clear_headers(&q.kv);
		reply_error(req, "malformed query string");
		return;
	}
	bool get = method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD;
	if (tls_missing(h, req)) {
		if (q.parsed)
			evhttp_clear_headers(&q.kv);
		reply_text(req, 503, "TLS unavailable, try again");
		return;
	}
	/* Health checks as Mailpit answers them, before the Host guard and any
	 * login: a container probe names the service however it likes. */
	if (get && (strcmp(path, "/livez") == 0 || strcmp(path, "/readyz") == 0)) {
		if (q.parsed)
			evhttp_clear_headers(&q.kv);
		reply_bytes(req, 200, "text/plain; charset=utf-8", "ok\n", 3);
		return;
	}
	if (h->hooks.ui_auth && !auth_passed(h, req)) {
		if (q.parsed)
			evhttp_clear_headers(&q.kv);
		return; /* answered 401, or handle() runs again once the pool checked it */
	}
	if (!guard(h, req, method)) {
		if (q.parsed)
			evhttp_clear_headers(&q.kv);
		return;
	}
	if (strncmp(path, "/api/v1/", 8) == 0)
		route_api(h, req, method, path + 8, &q);
	else if (strcmp(path, "/api/events") == 0 && method == EVHTTP_REQ_GET)
		route_events(h, req);
	else if (strncmp(path, "/view/", 6) == 0 && get && !strchr(path + 6, '/'))
		route_view(h, req, path + 6, &q);
	else if (get && strncmp(path, "/api/", 5) != 0)
		route_static(req, path);
	else if (strncmp(path, "/api/", 5) == 0)
		reply_404(req);
	else
		reply_text(req, 405, "method not allowed");
	if (q.parsed)
		evhttp_clear_headers(&q.kv);
}

/* ------------------------------------------------------------- lifecycle */

struct http_server *http_server_new(struct worker *w, int listen_fd, struct capture_store *st,
                                    const struct http_hooks *hooks)
{
	struct http_server *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->w = w;
	h->st = st;
	h->hooks = *hooks;
	h->started = time(NULL);
	struct event_base *base = worker_base(w);
	h->http = evhttp_new(base);
	if (!h->http)
		goto fail;
	evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
	                                        EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
	                                        EVHTTP_REQ_OPTIONS);
	evhttp_set_max_headers_size(h->http, HEADERS_MAX);
	evhttp_set_max_body_size(h->http, FALLBACK_MAX_BODY);
	evhttp_set_timeout(h->http, IO_TIMEOUT_SEC);
	evhttp_set_default_content_type(h->http, "text/plain; charset=utf-8");
	evhttp_set_gencb(h->http, handle, h);
	evhttp_set_bevcb(h->http, conn_bev_new, h);
	h->max_conns = FALLBACK_MAX_CONNECTIONS;
	h->admit = event_new(base, -1, 0, admit_cb, h);
	if (!h->admit)
		goto fail;
	if (!evhttp_accept_socket_with_handle(h->http, listen_fd))
		goto fail;
	h->heartbeat = event_new(base, -1, EV_PERSIST, heartbeat_cb, h);
	struct timeval tv = {SSE_HEARTBEAT_SEC, 0};
	if (!h->heartbeat || event_add(h->heartbeat, &tv) != 0)
		goto fail;
	/* link and spam checks mostly wait on the network; an HTML check
	 * should not queue long behind them */
	h->check_pool = pool_new(4); /* NULL: checks answer 503 */
	return h;
fail:
	log_error("event=http_start_failed");
	http_server_free(h);
	return NULL;
}

void http_server_free(struct http_server *h)
{
	if (!h)
		return;
	if (h->heartbeat)
		event_free(h->heartbeat);
	/* End every stream cleanly; evhttp_free then frees the connections
	 * and their requests. */
	while (h->clients) {
		struct sse_client *c = h->clients;
		if (c->conn)
			c->conn->sse = NULL;
		if (c->ws) {
			/* evhttp's own callbacks back: c is about to go */
			struct bufferevent *bev = evhttp_connection_get_bufferevent(c->evcon);
			if (bev)
				bufferevent_setcb(bev, NULL, c->ws_wcb, c->ws_ecb, c->evcon);
		}
		evhttp_request_set_on_complete_cb(c->req, NULL, NULL);
		evhttp_send_reply_end(c->req);
		sse_drop(c);
	}
	/* Frees every connection; conn_closed forgets each (and each pending
	 * check's request). */
	if (h->http)
		evhttp_free(h->http);
	/* Waits for running checks (check_work counts on h; a link check ends
	 * at once when cancelled, a spam check within its timeout); the
	 * check_done they post touches only its pending check. */
	__atomic_store_n(&h->checks_cancel, 1, __ATOMIC_RELAXED);
	pool_free(h->check_pool);
	h->check_pool = NULL;
	TERN_BUG_ON(h->conns != NULL);
	for (size_t i = 0; i < h->n_pending; i++)
		bufferevent_decref(h->pending[i]);
	free(h->pending);
	if (h->admit)
		event_free(h->admit);
	free(h);
}
