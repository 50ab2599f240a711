/*
 * ui_routes.h — the web UI of `tern serve` (issue 13 item 4) on the API's
 * HTTP listener: the pages and files under /ui/ (embedded from web/ui/ and
 * third_party/uplot/ at build time), the admin login, and the hook by which
 * a logged-in UI session stands for an admin key on /api/v1/.
 *
 *   GET  /ui/login              the login page (with /ui/login.js, /ui/ui.css:
 *                               the only files served without a session)
 *   POST /ui/login              {"user","password"} (JSON, or a form) -> 200
 *                               {"user","csrf"} and the session cookie; 401
 *                               for a wrong user or password (after the
 *                               brute-force throttle's delay), 429 blocked
 *   POST /ui/logout             ends the session (needs X-CSRF-Token)
 *   GET  /ui/session            {"user","csrf"} of the session, or 401
 *   GET  /ui/, /ui/FILE         the UI; without a session a page redirects
 *                               (302) to /ui/login and any other file is 401
 *
 * Admins are the users of DATA/ui-admins (a passwd-file as auth.h reads,
 * written by `tern user add NAME --ui-admin`), read at each login (through
 * core/files.h: under privilege separation the parent reads it at start and
 * on SIGHUP, cli/serve.c). The session cookie "tern_ui" is a random 256-bit
 * id, HttpOnly, SameSite=Strict, Secure on a TLS connection, Path=/, for 12
 * hours; sessions are in memory (a restart ends them all).
 */
#ifndef TERN_HTTP_UI_ROUTES_H
#define TERN_HTTP_UI_ROUTES_H

#include <stdbool.h>
#include <stddef.h>

struct ui;
struct worker;
struct evhttp_request;

/* The UI for the data dir; the login's password checks run on a pool of its
 * own whose completions go to w (the API's worker). NULL: out of memory. */
struct ui *ui_new(const char *data_dir, struct worker *w);
/* Finishes the login checks under way (their answers are posted to w). */
void ui_stop(struct ui *u);
void ui_free(struct ui *u);

/* Whether path is the UI's (/ui or under /ui/). */
bool ui_is_path(const char *path);
/* Answers a request for a UI path, at once or (a login) later, on w. */
void ui_handle(struct ui *u, struct evhttp_request *req, const char *path);

/* What a request's Cookie and X-CSRF-Token headers are worth on /api/v1/. */
enum ui_auth {
	UI_AUTH_NONE, /* no live session: 401 */
	UI_AUTH_OK,   /* a live session; user filled */
	UI_AUTH_CSRF, /* a live session, but a method that changes something came
	                 without the session's CSRF token: 403 */
};
/* cookie and csrf may be NULL; safe: GET or HEAD (no CSRF token needed).
 * Any thread. */
enum ui_auth ui_api_auth(struct ui *u, const char *cookie, const char *csrf, bool safe, char *user,
                         size_t userlen);

#endif
