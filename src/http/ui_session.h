/*
 * ui_session.h — the login sessions of the web UI of `tern serve` (issue 13
 * item 4): an in-memory table of sessions, each a random 256-bit id (the
 * cookie) with its admin user, its CSRF token (another 256 random bits, sent
 * back in the X-CSRF-Token header on every request that changes something)
 * and an expiry; and the pure parsers the HTTP side needs (the Cookie header,
 * a constant-time token compare).
 *
 * Sessions live in memory only, on purpose: a restart of tern ends every
 * session, and a logout ends one at once (no token outlives the table).
 * Thread safety: every function on a table takes its mutex; the table may be
 * used from the HTTP worker and the API's pool at the same time.
 */
#ifndef TERN_HTTP_UI_SESSION_H
#define TERN_HTTP_UI_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UI_TOKEN_HEX 64 /* 256 bits as lowercase hex */
#define UI_USER_MAX 320 /* an admin's name (local@domain), as the users file allows */
#define UI_SESSION_COOKIE "tern_ui"
#define UI_SESSION_TTL (12 * 3600) /* seconds a session lives after its login */
#define UI_SESSIONS_MAX 256        /* the oldest goes when a new one would exceed this */

struct ui_sessions;

/* NULL when out of memory. ttl: seconds from creation to expiry. */
struct ui_sessions *ui_sessions_new(size_t max, int64_t ttl);
void ui_sessions_free(struct ui_sessions *s);

/*
 * A new session for user at now: fills id and csrf (UI_TOKEN_HEX hex digits
 * and a NUL) from the OS's random source. When the table is full the
 * session that expires first is dropped. TERN_OK, TERN_EINVAL (user empty or
 * too long), TERN_EIO (no randomness).
 */
int ui_session_create(struct ui_sessions *s, const char *user, int64_t now,
                      char id[UI_TOKEN_HEX + 1], char csrf[UI_TOKEN_HEX + 1]);

/*
 * The live session whose id is id (n bytes): true with its user and csrf
 * copied out (either may be NULL); false for an unknown, malformed or
 * expired id (an expired one is dropped). The compare is constant-time.
 */
bool ui_session_find(struct ui_sessions *s, const char *id, size_t n, int64_t now, char *user,
                     size_t userlen, char csrf[UI_TOKEN_HEX + 1]);

/* Ends the session with this id (a logout); unknown ids are ignored. */
void ui_session_drop(struct ui_sessions *s, const char *id, size_t n);

/* Live sessions in the table (for tests). */
size_t ui_session_count(struct ui_sessions *s, int64_t now);

/*
 * The value of the cookie named name in a Cookie header value (RFC 6265
 * §4.2: "a=1; b=2"), n bytes: points *val into hdr with its length. The
 * first cookie of that name wins; names compare exactly. false when absent.
 * Pure.
 */
bool ui_cookie_get(const char *hdr, size_t n, const char *name, const char **val, size_t *vlen);

/* Whether given (n bytes) equals want (a NUL-terminated token) without a
 * timing side channel on the content. Pure. */
bool ui_token_equal(const char *want, const char *given, size_t n);

#endif
