/*
 * fuzz_tracking.c — libFuzzer target for track_rewrite_html and
 * track_verify (src/http/tracking.c).
 *
 * Input: the first byte picks opens/clicks and whether the rest is HTML to
 * rewrite or a token to verify. Beyond "no crash, no leak", it checks what
 * api.c relies on: every click token the rewriter writes verifies and names
 * an http(s) URL with no control byte; without clicks and opens the HTML
 * comes back unchanged; a token that verifies never names a URL that is not
 * http(s).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/err.h"
#include "http/tracking.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "invariant failed: %s (line %d)\n", #cond, __LINE__);      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static const unsigned char key[TRACK_KEY_LEN] = "fuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzz";

static bool url_sane(const char *u)
{
	if (strncasecmp(u, "http://", 7) != 0 && strncasecmp(u, "https://", 8) != 0)
		return false;
	for (const char *p = u; *p; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
			return false;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 64 * 1024)
		return 0;
	const char *in = (const char *)data + 1;
	size_t n = size - 1;
	struct track_ref r;
	if (data[0] & 4) {
		if (track_verify(key, (data[0] & 8) ? 'c' : 'o', in, n, &r) && (data[0] & 8))
			CHECK(url_sane(r.url));
		return 0;
	}
	bool opens = data[0] & 1, clicks = data[0] & 2;
	struct tbuf out = TBUF_INIT(1 << 22);
	int rc =
	    track_rewrite_html(key, "https://t.example", "Q1", "a@b.c", opens, clicks, in, n, &out);
	CHECK(rc == TERN_OK);
	if (!opens && !clicks)
		CHECK(out.len == n && (n == 0 || memcmp(out.data, in, n) == 0));
	const char *pfx = "https://t.example/t/c/";
	size_t pl = strlen(pfx);
	for (size_t i = 0; out.len >= pl && i + pl <= out.len; i++) {
		if (memcmp(out.data + i, pfx, pl) != 0)
			continue;
		size_t s = i + pl, e = s;
		while (e < out.len && out.data[e] != '"' && out.data[e] != '\'' &&
		       out.data[e] != '>' && out.data[e] != '<' && out.data[e] != ' ' &&
		       out.data[e] != '\t' && out.data[e] != '\r' && out.data[e] != '\n' &&
		       out.data[e] != '\f')
			e++;
		/* a link the input itself held may not verify; ours always do, so
		 * only check when the input did not already contain the prefix */
		if (!memmem(in, n, pfx, pl)) {
			CHECK(track_verify(key, 'c', out.data + s, e - s, &r));
			CHECK(url_sane(r.url));
		}
	}
	tbuf_free(&out);
	return 0;
}
