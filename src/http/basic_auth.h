/*
 * basic_auth.h — HTTP basic authentication for capture mode's UI and API
 * (Mailpit's --ui-auth-file / MP_UI_AUTH_FILE and MP_UI_AUTH), and the
 * htpasswd users the POP3 listener of captured mail uses too.
 *
 * Users come from an htpasswd file ("name:hash" lines; bcrypt $2y$/$2a$/
 * $2b$ and any crypt(3) hash libxcrypt knows, {SHA}, or a clear password)
 * and from "name:password name2:password2" (MP_UI_AUTH). Apache's $apr1$
 * is refused at load with a reason (htpasswd -B makes bcrypt).
 */
#ifndef TERN_HTTP_BASIC_AUTH_H
#define TERN_HTTP_BASIC_AUTH_H

#include <stdbool.h>
#include <stddef.h>

struct http_auth;

/*
 * http_auth_parse: adds the users of an htpasswd text (file, n bytes; may
 * be NULL) and of a space-separated "name:password" list (pairs; may be
 * NULL) into a new set. Blank lines and "#" comments are skipped.
 * TERN_OK, TERN_ENOMEM, or TERN_ESYNTAX with "line N: why" in err (never
 * a password). A later line for the same name replaces the earlier one.
 */
int http_auth_parse(const char *file, size_t n, const char *pairs, struct http_auth **out,
                    char *err, size_t errlen);
void http_auth_free(struct http_auth *a);
size_t http_auth_count(const struct http_auth *a);

/*
 * http_auth_verify: whether name and password match a user. Slow for
 * crypt hashes (bcrypt by design); every comparison is constant-time.
 */
bool http_auth_verify(const struct http_auth *a, const char *name, const char *password);

/*
 * http_auth_check_header: an Authorization header value ("Basic
 * base64(name:password)"). A value that verified before is recognised
 * from a SHA-256 of it (a small cache), so a browser's every request does
 * not pay for bcrypt again. Not thread-safe: one caller thread per set.
 */
bool http_auth_check_header(struct http_auth *a, const char *value);

/* The two halves of http_auth_check_header, for a caller that runs the
 * slow check on a thread pool: http_auth_cached (the caller's thread: a
 * value that verified before) and http_auth_remember (the same thread,
 * after a success); http_auth_verify_header verifies without touching the
 * cache, from any thread. */
bool http_auth_cached(const struct http_auth *a, const char *value);
bool http_auth_verify_header(const struct http_auth *a, const char *value);
void http_auth_remember(struct http_auth *a, const char *value);

#endif
