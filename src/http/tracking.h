/*
 * tracking.h — open and click tracking of HTML mail sent through the API
 * (opt-in per message: "track": {"opens": true, "clicks": true}).
 *
 * A token names the message (its queue id, known before the build), the
 * recipient when the message has exactly one (else empty) and, for a click,
 * the original URL itself: nothing is stored, the HMAC is the whole proof.
 *   TOKEN = base64url(QUEUEID "\n" RCPT "\n" URL) "." base64url(MAC)
 *   MAC   = HMAC-SHA256(key, "tern-track-v1" NUL KIND NUL payload), first 16 bytes
 * KIND is 'o' (open pixel) or 'c' (click), so one kind's token is never
 * the other's. The key is DATA/suppress.key (suppress_key_load): the domain
 * separation string keeps these MACs apart from VERP and unsubscribe tokens.
 *
 * Must never: redirect to a URL whose MAC does not verify (no open
 * redirect), accept a URL that is not http(s) or that holds a control byte
 * (it goes into a Location field), or touch anything but <a href> values
 * and the end of the body in the HTML it is given.
 */
#ifndef TERN_HTTP_TRACKING_H
#define TERN_HTTP_TRACKING_H

#include <stdbool.h>
#include <stddef.h>

#include "core/buf.h"

#define TRACK_KEY_LEN 32
#define TRACK_OPEN_PATH "/t/o/"
#define TRACK_CLICK_PATH "/t/c/"
#define TRACK_URL_MAX 4096

/* What a verified token names; every string NUL-terminated. */
struct track_ref {
	char queue_id[64];
	char rcpt[320];
	char url[TRACK_URL_MAX + 1]; /* click tokens only; "" for an open */
};

/*
 * Appends the token of (kind, queue_id, rcpt, url[0..url_len)) to out.
 * kind is 'o' or 'c'; rcpt may be NULL (none); url is NULL/0 for 'o'.
 * TERN_OK, TERN_EINVAL (bad kind, a '\n' in queue_id or rcpt, a URL that
 * is not http(s) or too long), or a buffer error (out unchanged on error).
 */
int track_token(const unsigned char key[TRACK_KEY_LEN], char kind, const char *queue_id,
                const char *rcpt, const char *url, size_t url_len, struct tbuf *out);

/*
 * Whether tok[0..len) is a token of this kind whose MAC verifies under key
 * and whose contents fit out (a click's URL is http(s) with no control
 * byte or space). Constant-time MAC comparison. out is filled only on true.
 */
bool track_verify(const unsigned char key[TRACK_KEY_LEN], char kind, const char *tok, size_t len,
                  struct track_ref *out);

/*
 * Rewrites HTML for tracking, appending the result to out: with clicks,
 * every <a ... href="http(s)://..."> (any case, quoted or not) gets
 * BASE/t/c/TOKEN instead (the value's "&amp;" read as "&"); mailto:, tel:,
 * #anchors, relative and other links are left as they are. With opens,
 * <img src="BASE/t/o/TOKEN" width="1" height="1" alt=""> goes before the
 * last </body> (any case), or at the end without one. base has no
 * trailing '/'. Pure: (pointer, length) in, bytes out.
 * TERN_OK, TERN_EINVAL (as track_token), or a buffer error.
 */
int track_rewrite_html(const unsigned char key[TRACK_KEY_LEN], const char *base,
                       const char *queue_id, const char *rcpt, bool opens, bool clicks,
                       const char *html, size_t len, struct tbuf *out);

/* The 43-byte transparent 1x1 GIF served for an open. */
extern const unsigned char track_gif[43];

#endif
