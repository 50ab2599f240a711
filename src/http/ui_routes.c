/*
 * ui_routes.c — the web UI of `tern serve` (ui_routes.h): its files under
 * /ui/, the admin login and logout, the session check of every page, and the
 * session's use on /api/v1/ (ui_api_auth).
 *
 * Owns: the login (throttled with auth/throttle.c, passwords checked as
 * auth/users.c checks them, on a pool thread of its own: crypt is slow), the
 * session cookie, and the security headers of the UI's answers (a strict
 * Content-Security-Policy: the UI runs only its own files).
 * Must never: serve a UI file but the login page's without a live session,
 * log a password, a session id or a CSRF token, or run crypt on the worker.
 */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "auth/auth.h"
#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "core/loop.h"
#include "http/http.h"
#include "http/ui_routes.h"
#include "http/ui_session.h"

#define LOGIN_BODY_MAX 4096
#define PASSWORD_MAX 1024

struct ui {
	char admins[4096]; /* DATA/ui-admins */
	struct worker *w;
	struct pool *pool;
	struct throttle *thr;
	struct ui_sessions *sessions;
	struct login *delayed; /* refused logins waiting out the throttle's delay (worker) */
	bool stopping;         /* the worker has stopped: no more timers */
};

struct login;
static void login_refused(evutil_socket_t fd, short what, void *arg);

static int64_t now_s(void)
{
	return (int64_t)time(NULL);
}

static unsigned long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000ull +
	       (unsigned long long)ts.tv_nsec / 1000000ull;
}

struct ui *ui_new(const char *data_dir, struct worker *w)
{
	struct ui *u = calloc(1, sizeof(*u));
	if (!u)
		return NULL;
	struct throttle_config tc = THROTTLE_CONFIG_DEFAULT;
	snprintf(u->admins, sizeof(u->admins), "%s/ui-admins", data_dir);
	u->w = w;
	u->pool = pool_new(1);
	u->thr = throttle_new(&tc);
	u->sessions = ui_sessions_new(UI_SESSIONS_MAX, UI_SESSION_TTL);
	if (!u->pool || !u->thr || !u->sessions) {
		ui_free(u);
		return NULL;
	}
	return u;
}

void ui_stop(struct ui *u)
{
	if (!u)
		return;
	pool_free(u->pool);
	u->pool = NULL;
	/* The worker has stopped (api_stop): the logins still waiting out
	 * their delay end now, while their requests still exist (their 401 is
	 * queued, but the connection closes with the servers). */
	u->stopping = true;
	while (u->delayed)
		login_refused(-1, 0, u->delayed);
}

void ui_free(struct ui *u)
{
	if (!u)
		return;
	ui_stop(u);
	throttle_free(u->thr);
	ui_sessions_free(u->sessions);
	free(u);
}

bool ui_is_path(const char *path)
{
	return strcmp(path, "/ui") == 0 || strncmp(path, "/ui/", 4) == 0;
}

/* --------------------------------------------------------------- answers */

static void common_headers(struct evhttp_request *req)
{
	struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
	evhttp_add_header(oh, "Cache-Control", "no-store");
	evhttp_add_header(oh, "X-Content-Type-Options", "nosniff");
	evhttp_add_header(oh, "X-Frame-Options", "DENY");
	evhttp_add_header(oh, "Referrer-Policy", "same-origin");
	/* Only the UI's own files run: no inline script, nothing from elsewhere.
	 * Inline styles stay allowed for the chart library's element styles. */
	evhttp_add_header(oh, "Content-Security-Policy",
	                  "default-src 'self'; script-src 'self'; style-src 'self' "
	                  "'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
	                  "frame-ancestors 'none'; base-uri 'none'; form-action 'self'");
}

static void log_ui(struct evhttp_request *req, const char *path, int status, const char *user)
{
	char *peer = NULL;
	ev_uint16_t port = 0;
	char pq[300], uq[UI_USER_MAX + 8];
	evhttp_connection_get_peer(evhttp_request_get_connection(req), &peer, &port);
	log_info("event=ui method=%s path=%s status=%d user=%s peer=%s",
	         evhttp_request_get_command(req) == EVHTTP_REQ_POST ? "POST" : "GET",
	         log_quote(path, strlen(path), pq, sizeof(pq)), status,
	         user && user[0] ? log_quote(user, strlen(user), uq, sizeof(uq)) : "-",
	         peer ? peer : "?");
}

static void reply_bytes(struct evhttp_request *req, int status, const char *ctype, const void *data,
                        size_t n)
{
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		evhttp_send_error(req, 500, "out of memory");
		return;
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
	evbuffer_add(b, data, n);
	evhttp_send_reply(req, status, NULL, b);
	evbuffer_free(b);
}

static void reply_json(struct evhttp_request *req, int status, json_t *j)
{
	char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!s) {
		evhttp_send_error(req, 500, "out of memory");
		return;
	}
	reply_bytes(req, status, "application/json; charset=utf-8", s, strlen(s));
	free(s);
}

static void reply_error(struct evhttp_request *req, int status, const char *code, const char *msg)
{
	reply_json(req, status, json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", msg));
}

static void redirect_login(struct evhttp_request *req)
{
	evhttp_add_header(evhttp_request_get_output_headers(req), "Location", "/ui/login");
	reply_bytes(req, 302, "text/plain; charset=utf-8", "login first\n", 12);
}

static bool serve_asset(struct evhttp_request *req, const char *file)
{
	size_t n;
	const unsigned char *d = http_asset_find(file, &n);
	if (!d)
		return false;
	reply_bytes(req, 200, http_asset_type(file), d, n);
	return true;
}

/* ---------------------------------------------------------------- session */

/* The session of a request: its cookie's live session, user and csrf out. */
static bool request_session(struct ui *u, struct evhttp_request *req, char id[UI_TOKEN_HEX + 1],
                            char *user, size_t userlen, char csrf[UI_TOKEN_HEX + 1])
{
	const char *ck = evhttp_find_header(evhttp_request_get_input_headers(req), "Cookie");
	const char *v;
	size_t vl;
	if (!ck || !ui_cookie_get(ck, strlen(ck), UI_SESSION_COOKIE, &v, &vl) || vl != UI_TOKEN_HEX)
		return false;
	if (!ui_session_find(u->sessions, v, vl, now_s(), user, userlen, csrf))
		return false;
	if (id) {
		memcpy(id, v, UI_TOKEN_HEX);
		id[UI_TOKEN_HEX] = '\0';
	}
	return true;
}

enum ui_auth ui_api_auth(struct ui *u, const char *cookie, const char *csrf, bool safe, char *user,
                         size_t userlen)
{
	const char *v;
	size_t vl;
	char want[UI_TOKEN_HEX + 1];
	if (!u || !cookie || !ui_cookie_get(cookie, strlen(cookie), UI_SESSION_COOKIE, &v, &vl) ||
	    !ui_session_find(u->sessions, v, vl, now_s(), user, userlen, want))
		return UI_AUTH_NONE;
	if (!safe && (!csrf || !ui_token_equal(want, csrf, strlen(csrf))))
		return UI_AUTH_CSRF;
	return UI_AUTH_OK;
}

static bool on_tls(struct evhttp_request *req)
{
	struct bufferevent *bev =
	    evhttp_connection_get_bufferevent(evhttp_request_get_connection(req));
	return bev && bufferevent_openssl_get_ssl(bev) != NULL;
}

static void set_cookie(struct evhttp_request *req, const char *id, long max_age)
{
	char c[256];
	snprintf(c, sizeof(c), "%s=%s; Path=/; Max-Age=%ld; HttpOnly; SameSite=Strict%s",
	         UI_SESSION_COOKIE, id, max_age, on_tls(req) ? "; Secure" : "");
	evhttp_add_header(evhttp_request_get_output_headers(req), "Set-Cookie", c);
}

/* ------------------------------------------------------------------ login */

struct login {
	struct ui *u;
	struct evhttp_request *req; /* NULL once the client went away */
	char peer[64];
	char user[UI_USER_MAX + 1];
	char password[PASSWORD_MAX + 1];
	int rc; /* users_verify's answer, or TERN_EIO when the file cannot be read */
	char err[256];
	struct event *delay;
	struct login *next, **prevp; /* on u->delayed while delay is pending */
};

static void login_free(struct login *l)
{
	if (l->prevp) { /* off the delayed list */
		*l->prevp = l->next;
		if (l->next)
			l->next->prevp = l->prevp;
	}
	if (l->req)
		evhttp_request_set_on_complete_cb(l->req, NULL, NULL);
	if (l->delay)
		event_free(l->delay);
	explicit_bzero(l->password, sizeof(l->password));
	free(l);
}

static void login_gone(struct evhttp_request *req, void *arg)
{
	((struct login *)arg)->req = NULL;
}

static void login_work(void *arg)
{
	struct login *l = arg;
	struct user_db *db = NULL;
	if (users_load(l->u->admins, &db, l->err, sizeof(l->err)) != TERN_OK) {
		l->rc = TERN_EIO;
		return;
	}
	l->rc = users_verify(db, l->user, l->password);
	if (l->rc == TERN_ENOTFOUND) {
		/* As slow as a wrong password, so the answer's time does not tell
		 * which admin names exist. */
		char h[512];
		(void)users_hash_password(l->password, h, sizeof(h));
		explicit_bzero(h, sizeof(h));
	}
	explicit_bzero(l->password, sizeof(l->password));
	users_free(db);
}

static void login_refused(evutil_socket_t fd, short what, void *arg)
{
	struct login *l = arg;
	if (l->req) { /* the headers of every UI answer were set by ui_handle */
		reply_error(l->req, 401, "login_failed", "wrong user name or password");
		log_ui(l->req, "/ui/login", 401, l->user);
	}
	login_free(l);
}

static void login_done(void *arg)
{
	struct login *l = arg;
	struct ui *u = l->u;
	if (l->rc == TERN_EIO)
		log_warn("event=ui_admins_unreadable reason=\"%s\"", l->err);
	if (l->rc == TERN_OK) {
		throttle_success(u->thr, l->peer, l->user);
		char id[UI_TOKEN_HEX + 1], csrf[UI_TOKEN_HEX + 1];
		if (!l->req) {
			login_free(l);
			return;
		}
		if (ui_session_create(u->sessions, l->user, now_s(), id, csrf) != TERN_OK) {
			reply_error(l->req, 503, "no_session",
			            "no session could be made; try again");
		} else {
			set_cookie(l->req, id, UI_SESSION_TTL);
			reply_json(l->req, 200,
			           json_pack("{s:s, s:s}", "user", l->user, "csrf", csrf));
			log_ui(l->req, "/ui/login", 200, l->user);
		}
		explicit_bzero(id, sizeof(id));
		explicit_bzero(csrf, sizeof(csrf));
		login_free(l);
		return;
	}
	struct throttle_result tr;
	throttle_fail(u->thr, l->peer, l->user, now_ms(), &tr);
	log_info("event=ui_login_failed user=- peer=%s %s", l->peer, tr.reason);
	struct timeval tv = {.tv_sec = tr.delay_ms / 1000, .tv_usec = (tr.delay_ms % 1000) * 1000};
	if (u->stopping || !(l->delay = evtimer_new(worker_base(u->w), login_refused, l)) ||
	    evtimer_add(l->delay, &tv) != 0) {
		login_refused(-1, 0, l);
		return;
	}
	l->next = u->delayed;
	l->prevp = &u->delayed;
	if (u->delayed)
		u->delayed->prevp = &l->next;
	u->delayed = l;
}

/* user and password from the body: JSON {"user","password"} or a form. */
static bool login_fields(struct evhttp_request *req, struct login *l)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t n = evbuffer_get_length(in);
	if (n == 0 || n > LOGIN_BODY_MAX)
		return false;
	char buf[LOGIN_BODY_MAX + 1];
	evbuffer_copyout(in, buf, n);
	buf[n] = '\0';
	const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
	const char *user = NULL, *pass = NULL;
	bool ok = false;
	json_t *j = NULL;
	struct evkeyvalq q;
	memset(&q, 0, sizeof(q)); /* an empty list; evhttp_parse_query_str fills it */
	if (ct && http_ctype_is_json(ct, strlen(ct))) {
		j = json_loadb(buf, n, 0, NULL);
		user = json_string_value(json_object_get(j, "user"));
		pass = json_string_value(json_object_get(j, "password"));
	} else if (ct && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0 &&
	           evhttp_parse_query_str(buf, &q) == 0) {
		user = evhttp_find_header(&q, "user");
		pass = evhttp_find_header(&q, "password");
	}
	if (user && pass && user[0] && pass[0] && strlen(user) <= UI_USER_MAX &&
	    strlen(pass) <= PASSWORD_MAX) {
		tern_strlcpy(l->user, user, sizeof(l->user));
		tern_strlcpy(l->password, pass, sizeof(l->password));
		ok = true;
	}
	json_decref(j); /* the password's copy in jansson goes with it */
	evhttp_clear_headers(&q);
	explicit_bzero(buf, sizeof(buf));
	return ok;
}

/* A login from another site's page (login CSRF) is refused: when the
 * browser says where the request comes from, it must be this very host. */
static bool same_origin(struct evhttp_request *req)
{
	struct evkeyvalq *ih = evhttp_request_get_input_headers(req);
	const char *origin = evhttp_find_header(ih, "Origin");
	const char *host = evhttp_find_header(ih, "Host");
	struct http_hostport hp;
	if (!origin)
		return true; /* not a browser's cross-site request (they all send one on POST) */
	return host && http_parse_host(host, strlen(host), &hp) == TERN_OK &&
	       http_origin_same(origin, strlen(origin), &hp);
}

static void login(struct ui *u, struct evhttp_request *req)
{
	struct login *l = calloc(1, sizeof(*l));
	if (!l) {
		reply_error(req, 500, "internal", "out of memory");
		return;
	}
	l->u = u;
	char *peer = NULL;
	ev_uint16_t port = 0;
	evhttp_connection_get_peer(evhttp_request_get_connection(req), &peer, &port);
	tern_strlcpy(l->peer, peer ? peer : "?", sizeof(l->peer));
	if (!same_origin(req)) {
		reply_error(req, 403, "cross_origin",
		            "a login from another site's page is refused");
		log_ui(req, "/ui/login", 403, NULL);
		login_free(l);
		return;
	}
	if (!login_fields(req, l)) {
		reply_error(req, 400, "invalid_request",
		            "give {\"user\": NAME, \"password\": PASSWORD} as JSON or a form");
		log_ui(req, "/ui/login", 400, NULL);
		login_free(l);
		return;
	}
	struct throttle_result tr;
	throttle_check(u->thr, l->peer, l->user, now_ms(), &tr);
	if (tr.verdict != THROTTLE_ALLOW) {
		char ra[24];
		snprintf(ra, sizeof(ra), "%u", tr.retry_after_s);
		evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", ra);
		reply_error(req, 429, "too_many_failures",
		            "too many failed logins; try again later");
		log_info("event=ui_login_blocked peer=%s %s", l->peer, tr.reason);
		login_free(l);
		return;
	}
	l->req = req;
	evhttp_request_set_on_complete_cb(req, login_gone, l);
	if (!u->pool || pool_submit(u->pool, login_work, u->w, login_done, l) != TERN_OK) {
		l->req = NULL;
		evhttp_request_set_on_complete_cb(req, NULL, NULL);
		reply_error(req, 503, "not_ready", "the server is stopping");
		login_free(l);
	}
}

/* ----------------------------------------------------------------- router */

static bool is_public(const char *path)
{
	return strcmp(path, "/ui/login") == 0 || strcmp(path, "/ui/login.html") == 0 ||
	       strcmp(path, "/ui/login.js") == 0 || strcmp(path, "/ui/ui.css") == 0;
}

/* A page (what a browser navigates to) or a file a page loads. */
static bool is_page(const char *path)
{
	const char *last = strrchr(path, '/');
	const char *dot = last ? strchr(last, '.') : NULL;
	return !dot || strcasecmp(dot, ".html") == 0;
}

void ui_handle(struct ui *u, struct evhttp_request *req, const char *path)
{
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	bool get = m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD, post = m == EVHTTP_REQ_POST;
	char user[UI_USER_MAX + 1] = "", id[UI_TOKEN_HEX + 1], csrf[UI_TOKEN_HEX + 1];
	common_headers(req);
	if (!u) {
		reply_error(req, 503, "not_ready", "the web UI could not start");
		return;
	}
	if (strcmp(path, "/ui/login") == 0 && post) {
		login(u, req);
		return;
	}
	if (!get && !post) {
		reply_error(req, 405, "method_not_allowed", "this route does not take that method");
		return;
	}
	if (get && is_public(path)) {
		serve_asset(req, strcmp(path, "/ui/login") == 0 ? "/ui/login.html" : path);
		return;
	}
	bool live = request_session(u, req, id, user, sizeof(user), csrf);
	if (strcmp(path, "/ui/logout") == 0 && post) {
		const char *tok =
		    evhttp_find_header(evhttp_request_get_input_headers(req), "X-CSRF-Token");
		int st = 200;
		if (!live) {
			reply_error(req, st = 401, "unauthorized", "no session");
		} else if (!tok || !ui_token_equal(csrf, tok, strlen(tok))) {
			reply_error(req, st = 403, "csrf",
			            "the X-CSRF-Token header is missing or wrong");
		} else {
			ui_session_drop(u->sessions, id, UI_TOKEN_HEX);
			set_cookie(req, "", 0);
			reply_json(req, 200, json_pack("{s:b}", "ok", 1));
		}
		log_ui(req, path, st, user);
		return;
	}
	if (!get) {
		reply_error(req, 405, "method_not_allowed", "this route does not take that method");
		return;
	}
	if (strcmp(path, "/ui/session") == 0) {
		if (live)
			reply_json(req, 200, json_pack("{s:s, s:s}", "user", user, "csrf", csrf));
		else
			reply_error(req, 401, "unauthorized", "no session: log in at /ui/login");
	} else if (!live) {
		if (is_page(path))
			redirect_login(req);
		else
			reply_error(req, 401, "unauthorized", "no session: log in at /ui/login");
	} else if (strcmp(path, "/ui") == 0 || strcmp(path, "/ui/") == 0) {
		serve_asset(req, "/ui/index.html");
	} else if (strstr(path, "..") || !serve_asset(req, path)) {
		reply_error(req, 404, "not_found", "no such file");
	}
	explicit_bzero(csrf, sizeof(csrf));
	explicit_bzero(id, sizeof(id));
}
