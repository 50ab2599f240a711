/*
 * fuzz_http_guard.c — libFuzzer target for the capture HTTP API's request
 * guard (http_parse_host, http_host_allowed, http_origin_same,
 * http_ctype_is_json in src/http/guard.c).
 *
 * The input is up to three lines: a Host value, an Origin value and a
 * Content-Type value (any bytes, NULs included). Beyond "no crash", it
 * checks what the guard's callers rely on:
 *   - a parsed Host has a non-empty, lowercase name made only of name
 *     characters (or a bracketed IPv6 address), and a port of -1 or
 *     1..65535;
 *   - parsing is canonical: the name and port written back parse to the
 *     same result, and "http://NAME[:PORT]" is the same origin as it;
 *   - an Origin is never the same as a Host it differs from in name;
 *   - with an empty allow-list only IP literals and localhost names pass.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "http/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "invariant failed: %s (line %d)\n", #cond, __LINE__);      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* The next line of (p, n) from *pos, without its '\n'. */
static const char *next_line(const char *p, size_t n, size_t *pos, size_t *len)
{
	const char *s = p + *pos;
	const char *nl = *pos < n ? memchr(s, '\n', n - *pos) : NULL;
	*len = nl ? (size_t)(nl - s) : n - *pos;
	*pos += *len + (nl ? 1 : 0);
	return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data;
	size_t pos = 0, hl, ol, cl;
	const char *hv = next_line(p, size, &pos, &hl);
	const char *ov = next_line(p, size, &pos, &ol);
	const char *cv = next_line(p, size, &pos, &cl);
	(void)http_ctype_is_json(cv, cl);

	struct http_hostport h;
	if (http_parse_host(hv, hl, &h) != TERN_OK) {
		struct http_hostport any = {.port = -1};
		(void)http_origin_same(ov, ol, &any);
		return 0;
	}
	size_t n = strlen(h.name);
	CHECK(n > 0 && n <= HTTP_HOST_NAME_MAX + 2);
	CHECK(h.port == -1 || (h.port >= 1 && h.port <= 65535));
	for (size_t i = 0; i < n; i++) {
		char c = h.name[i];
		CHECK(!(c >= 'A' && c <= 'Z'));
		CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
		      c == '_' || (h.name[0] == '[' && (c == ':' || c == '[' || c == ']')));
	}

	char again[HTTP_HOST_NAME_MAX + 16], origin[HTTP_HOST_NAME_MAX + 32];
	if (h.port >= 0)
		snprintf(again, sizeof(again), "%s:%d", h.name, h.port);
	else
		snprintf(again, sizeof(again), "%s", h.name);
	struct http_hostport h2;
	CHECK(http_parse_host(again, strlen(again), &h2) == TERN_OK);
	CHECK(strcmp(h.name, h2.name) == 0 && h.port == h2.port && h.ip == h2.ip);
	snprintf(origin, sizeof(origin), "http://%s", again);
	CHECK(http_origin_same(origin, strlen(origin), &h));

	if (http_origin_same(ov, ol, &h)) {
		/* the origin's host part, parsed, is the very name */
		size_t skip = (ol >= 8 && (ov[4] == 's' || ov[4] == 'S')) ? 8 : 7;
		const char *colon_end = ov + ol;
		struct http_hostport o;
		CHECK(http_parse_host(ov + skip, (size_t)(colon_end - ov - (ptrdiff_t)skip), &o) ==
		      TERN_OK);
		CHECK(strcmp(o.name, h.name) == 0);
	}

	bool local = strcmp(h.name, "localhost") == 0 ||
	             (n > 10 && strcmp(h.name + n - 10, ".localhost") == 0);
	CHECK(http_host_allowed(&h, NULL, 0, NULL) == (h.ip || local));
	const char *const star[] = {"*"};
	CHECK(http_host_allowed(&h, star, 1, NULL));
	return 0;
}
