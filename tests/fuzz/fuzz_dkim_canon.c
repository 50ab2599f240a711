/*
 * fuzz_dkim_canon.c — libFuzzer target for DKIM canonicalization
 * (src/policy/dkim_canon.c): header fields and bodies, as senders write them.
 *
 * The first input byte picks the algorithm and the chunking; the second an
 * l= limit; the rest is the body (and, up to its first CRLF not followed by
 * WSP, a header field). Besides "no crash, no leak, no sanitizer report":
 *   - the body stream fed in chunks of any size hashes exactly what the
 *     one-shot dkim_canon_body produces, cut at l= when there is one, and
 *     counts all of it;
 *   - simple output always ends in CRLF, relaxed output is empty or ends in
 *     CRLF; neither ends in an empty line (CRLF CRLF), unless simple's
 *     lone CRLF for an empty body;
 *   - relaxed body output has no tab, no two spaces in a row, no space
 *     before a CRLF;
 *   - a relaxed header field comes out as one line: lowercase name, no WSP
 *     around the first colon, no tab, no run of spaces, no trailing space,
 *     CRLF only at the end.
 */
#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "policy/dkim_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_header(const char *f, size_t n)
{
	struct tbuf out = TBUF_INIT(4 * n + 64);
	if (dkim_canon_header(DKIM_CANON_RELAXED, f, n, &out) != TERN_OK)
		abort();
	const char *s = out.data;
	size_t l = out.len;
	if (l < 3 || s[l - 2] != '\r' || s[l - 1] != '\n')
		abort();
	const char *colon = memchr(s, ':', l - 2);
	if (!colon)
		abort();
	for (const char *p = s; p < colon; p++)
		if (*p >= 'A' && *p <= 'Z')
			abort();
	if ((colon > s && (colon[-1] == ' ' || colon[-1] == '\t')) || colon[1] == ' ')
		abort();
	for (size_t i = 0; i + 2 < l; i++) {
		if (s[i] == '\t' || (s[i] == ' ' && s[i + 1] == ' '))
			abort();
		if (s[i] == '\r' && s[i + 1] == '\n')
			abort();
	}
	if (l >= 3 && s[l - 3] == ' ')
		abort();
	struct tbuf simple = TBUF_INIT(n + 8);
	if (dkim_canon_header(DKIM_CANON_SIMPLE, f, n, &simple) != TERN_OK)
		abort();
	tbuf_free(&simple);
	tbuf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	unsigned mode = data[0], lim = data[1];
	const char *body = (const char *)data + 2;
	size_t n = size - 2;
	enum dkim_canon c = (mode & 1) ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
	bool limited = mode & 2;

	struct tbuf whole = TBUF_INIT(2 * n + 16);
	if (dkim_canon_body(c, body, n, &whole) != TERN_OK)
		abort();
	const char *w = whole.data ? whole.data : "";
	size_t wl = whole.len;
	if (c == DKIM_CANON_SIMPLE && (wl < 2 || w[wl - 2] != '\r' || w[wl - 1] != '\n'))
		abort();
	if (c == DKIM_CANON_RELAXED && wl > 0 && (wl < 2 || w[wl - 2] != '\r' || w[wl - 1] != '\n'))
		abort();
	if (wl >= 4 && memcmp(w + wl - 4, "\r\n\r\n", 4) == 0)
		abort();
	if (c == DKIM_CANON_RELAXED)
		for (size_t i = 0; i < wl; i++)
			if (w[i] == '\t' || (w[i] == ' ' && i + 1 < wl &&
			                     (w[i + 1] == ' ' || (w[i + 1] == '\r' && i + 2 < wl &&
			                                          w[i + 2] == '\n'))))
				abort();

	/* the stream, in chunks of 1..16 bytes chosen by mode's high bits */
	struct dkim_body b = {0};
	if (dkim_body_add(&b, c, limited, lim) < 0) {
		dkim_body_clear(&b);
		tbuf_free(&whole);
		return 0;
	}
	unsigned step = 1 + ((mode >> 2) & 15);
	for (size_t i = 0; i < n; i += step)
		dkim_body_update(&b, body + i, n - i < step ? n - i : step);
	if (!dkim_body_finish(&b))
		abort();
	size_t take = limited && lim < wl ? lim : wl;
	uint8_t d[32];
	unsigned dl;
	if (EVP_Digest(w, take, d, &dl, EVP_sha256(), NULL) != 1 || memcmp(d, b.h[0].digest, 32))
		abort();
	if (b.h[0].total != wl)
		abort();
	dkim_body_clear(&b);
	tbuf_free(&whole);

	/* a header field: up to the first CRLF that is not folding */
	size_t fl = 0;
	while (fl < n && !(fl + 2 < n && body[fl] == '\r' && body[fl + 1] == '\n' &&
	                   body[fl + 2] != ' ' && body[fl + 2] != '\t'))
		fl++;
	check_header(body, fl + 2 <= n ? fl + 2 : n);
	return 0;
}
