/*
 * writer.c — the one writer of MIME text tern generates (DSNs, API mail):
 * a sticky-error appender over a tbuf, plus the encodings every generated
 * message needs (RFC 2047 encoded words, 76-column base64 bodies, quoted-
 * printable, boundary lines).
 *
 * Owns: the column count for folding, the first error.
 * Never: returns an error mid-build (the first one sticks and every later
 * call is a no-op, so builders write straight through and check once with
 * mime_writer_status), or writes a bare LF or CR of its own.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/codec.h"
#include "core/err.h"
#include "mime/mime.h"

/* RFC 2045 §6.8: base64 lines are at most 76 characters. */
#define B64_LINE 76

void mime_writer_init(struct mime_writer *w, struct tbuf *b)
{
	w->b = b;
	w->rc = TERN_OK;
	w->col = 0;
}

int mime_writer_status(const struct mime_writer *w)
{
	return w->rc;
}

void mime_writer_fail(struct mime_writer *w, int rc)
{
	if (w->rc == TERN_OK)
		w->rc = rc;
}

void mime_put(struct mime_writer *w, const void *p, size_t n)
{
	const char *c = p;

	if (w->rc != TERN_OK || n == 0)
		return;
	w->rc = tbuf_append(w->b, c, n);
	if (w->rc != TERN_OK)
		return;
	for (size_t i = n; i > 0; i--) {
		if (c[i - 1] == '\n') {
			w->col = n - i;
			return;
		}
	}
	w->col += n;
}

void mime_puts(struct mime_writer *w, const char *s)
{
	mime_put(w, s, strlen(s));
}

void mime_crlf(struct mime_writer *w)
{
	mime_put(w, "\r\n", 2);
}

void mime_printf(struct mime_writer *w, const char *fmt, ...)
{
	char small[512];
	va_list ap;

	if (w->rc != TERN_OK)
		return;
	va_start(ap, fmt);
	int n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0) {
		mime_writer_fail(w, TERN_EINVAL);
		return;
	}
	if ((size_t)n < sizeof(small)) {
		mime_put(w, small, (size_t)n);
		return;
	}
	char *big = malloc((size_t)n + 1);
	if (big == NULL) {
		mime_writer_fail(w, TERN_ENOMEM);
		return;
	}
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	mime_put(w, big, (size_t)n);
	free(big);
}

/* Length of the longest prefix of s[0..n) of at most max bytes that does
 * not split a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t n, size_t max)
{
	if (n <= max)
		return n;
	size_t k = max;
	while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
		k--;
	return k ? k : max;
}

/* Bytes of UTF-8 text per encoded word: 39 bytes are 52 base64 characters,
 * a word of 64 with "=?UTF-8?B?" and "?=" (RFC 2047 allows 75). */
#define EW_CHUNK 39

void mime_put_encoded_words(struct mime_writer *w, const char *s, size_t n)
{
	struct tbuf enc = TBUF_INIT(EW_CHUNK * 2);

	for (size_t off = 0; off < n && w->rc == TERN_OK;) {
		size_t k = utf8_cut(s + off, n - off, EW_CHUNK);

		if (off)
			mime_puts(w, "\r\n ");
		tbuf_reset(&enc);
		int rc = tern_base64_encode(s + off, k, &enc);
		if (rc != TERN_OK) {
			mime_writer_fail(w, rc);
			break;
		}
		mime_puts(w, "=?UTF-8?B?");
		mime_put(w, enc.data, enc.len);
		mime_puts(w, "?=");
		off += k;
	}
	tbuf_free(&enc);
}

void mime_put_base64_body(struct mime_writer *w, const void *data, size_t n)
{
	struct tbuf enc = TBUF_INIT(SIZE_MAX / 2);

	if (w->rc != TERN_OK)
		return;
	int rc = tern_base64_encode(data, n, &enc);
	if (rc == TERN_OK)
		rc = tbuf_reserve(w->b, enc.len + enc.len / B64_LINE * 2 + 2);
	if (rc != TERN_OK) {
		mime_writer_fail(w, rc);
		tbuf_free(&enc);
		return;
	}
	for (size_t off = 0; off < enc.len; off += B64_LINE) {
		size_t k = enc.len - off < B64_LINE ? enc.len - off : B64_LINE;
		if (off)
			mime_crlf(w);
		mime_put(w, enc.data + off, k);
	}
	tbuf_free(&enc);
}

void mime_put_qp_body(struct mime_writer *w, const void *data, size_t n)
{
	if (w->rc != TERN_OK)
		return;
	size_t before = w->b->len;
	int rc = tern_qp_encode(data, n, w->b);
	if (rc != TERN_OK) {
		mime_writer_fail(w, rc);
		return;
	}
	/* Keep the column right for whatever follows. */
	size_t i = w->b->len;
	while (i > before && w->b->data[i - 1] != '\n')
		i--;
	w->col = i > before ? w->b->len - i : w->col + (w->b->len - before);
}

void mime_put_boundary(struct mime_writer *w, const char *boundary, bool first, bool last)
{
	if (!first)
		mime_crlf(w);
	mime_printf(w, "--%s%s", boundary, last ? "--" : "\r\n");
}
