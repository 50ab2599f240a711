/*
 * codec.h — transfer encodings: base64 (RFC 4648 §4) and quoted-printable
 * (RFC 2045 §6.7).
 *
 * Pure functions over (pointer, length) that APPEND to a caller-owned
 * struct tbuf. On any failure the buffer is left exactly as it was (same
 * len, same bytes): a caller never sees half an encoding.
 */
#ifndef TERN_CORE_CODEC_H
#define TERN_CORE_CODEC_H

#include <stdbool.h>
#include <stddef.h>

#include "core/buf.h"

/* Bytes base64 produces for n input bytes (padding included, no line breaks).
 * SIZE_MAX when that does not fit a size_t. */
size_t tern_base64_encoded_len(size_t n);

/* Standard alphabet, '=' padding, one unbroken line (what SASL wants).
 * TERN_OK, or TERN_ELIMIT / TERN_ENOMEM from the buffer. */
int tern_base64_encode(const void *in, size_t len, struct tbuf *out);

/*
 * Strict decoding: only the standard alphabet, length a multiple of 4,
 * at most two '=' and only at the very end, and the unused bits of the
 * last quantum zero (the canonical encoding, RFC 4648 §3.5). No
 * whitespace. So whenever decoding succeeds, encoding the result gives
 * back the input exactly. Empty input decodes to nothing.
 * TERN_OK, TERN_ESYNTAX for anything else, or a buffer error.
 */
int tern_base64_decode(const char *in, size_t len, struct tbuf *out);
/* base64url (RFC 4648 §5: '-' and '_'), unpadded as JWT and JWK use it;
 * '=' is refused, the unused bits of a partial group must be zero. Same
 * contract otherwise. */
int tern_base64url_decode(const char *in, size_t len, struct tbuf *out);

/*
 * Quoted-printable for a body (RFC 2045 §6.7): CR LF pairs stay hard line
 * breaks; '=', control bytes (bare CR and bare LF included, as =0D/=0A so
 * the bytes survive exactly), DEL and 8-bit bytes become =XX (uppercase);
 * a space or tab just before a line break or the end of input is encoded;
 * soft line breaks ("=" CR LF) keep every output line at most 76
 * characters, and never split an =XX triplet; a '-' that would start a
 * line after a soft break is encoded (=2D), so the output never holds a
 * line starting "--" that the input did not have (no new MIME boundary
 * delimiters). The output is 7-bit only.
 */
int tern_qp_encode(const void *in, size_t len, struct tbuf *out);

/*
 * Inverse of tern_qp_encode for checking and tests: "=XX" (either case)
 * becomes the byte, "=" before a line end is a soft break, trailing spaces
 * and tabs before a line end are dropped (§6.7 rule 3), line ends are kept
 * as they were. A "=" followed by anything else is TERN_ESYNTAX.
 */
int tern_qp_decode(const char *in, size_t len, struct tbuf *out);

/*
 * URL percent-decoding (RFC 3986 §2.1) of (s, n) into out, NUL-terminated:
 * '+' stays '+' (addresses use it; callers that want form decoding map it
 * first). false on a bad or truncated escape, a decoded NUL byte, or when
 * the result and its NUL do not fit in cap bytes (out is then unspecified).
 */
bool tern_pct_decode(const char *s, size_t n, char *out, size_t cap);

#endif
