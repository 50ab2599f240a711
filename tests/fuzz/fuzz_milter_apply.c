/*
 * fuzz_milter_apply.c — libFuzzer target for milter_apply_mods
 * (src/smtp/milter_stage.c): header changes a milter asked for, applied to
 * a message as a client sent it (arbitrary bytes).
 *
 * Input: byte 0 is the number of changes (0..7), then two bytes per change
 * (kind and index: the low bits pick the kind, the high bits a name and a
 * value from small tables, the second byte the index); the rest is the
 * message. Beyond "no crash, no sanitizer report" it checks:
 *   - no change leaves the message as it was, byte for byte;
 *   - the body (everything from the first empty line) is never touched:
 *     the output ends with it;
 *   - the output cap is honoured (TERN_ELIMIT, never a longer result);
 *   - applying is deterministic.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "smtp/milter_stage.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const names[] = {"Subject", "X-A", "Received", "x-twice"};
static const char *const values[] = {"", "v", " leading", "a\r\n\tfolded"};

/* Where the body begins in msg: after the first empty line, or len. */
static size_t body_at(const char *m, size_t len)
{
	size_t i = 0;
	while (i < len) {
		if (m[i] == '\n' || (m[i] == '\r' && i + 1 < len && m[i + 1] == '\n'))
			return i;
		const char *lf = memchr(m + i, '\n', len - i);
		if (!lf)
			return len;
		i = (size_t)(lf - m) + 1;
	}
	return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t n = data[0] & 7;
	if (size < 1 + 2 * n)
		return 0;
	struct milter_mod mods[8];
	for (size_t i = 0; i < n; i++) {
		uint8_t k = data[1 + 2 * i];
		mods[i].kind = (enum milter_mod_kind)(k & 3);
		mods[i].index = data[2 + 2 * i] & 7;
		mods[i].name = (char *)names[(k >> 2) & 3];
		mods[i].value =
		    (char *)(mods[i].kind == MILTER_MOD_DELETE ? "" : values[(k >> 4) & 3]);
	}
	const char *msg = (const char *)data + 1 + 2 * n;
	size_t len = size - 1 - 2 * n;
	size_t cap = len + 64;
	struct tbuf a = TBUF_INIT(cap), b = TBUF_INIT(cap);
	size_t pa = len / 3, pb = len / 3;
	int rc = milter_apply_mods(msg, len, &pa, mods, n, &a);
	int rc2 = milter_apply_mods(msg, len, &pb, mods, n, &b);
	if (rc != rc2)
		abort();
	if (rc == TERN_OK) {
		if (a.len != b.len || (a.len && memcmp(a.data, b.data, a.len) != 0))
			abort();
		if (a.len > cap || pa != pb || pa > a.len)
			abort();
		if (n == 0 && (a.len != len || (len && memcmp(a.data, msg, len) != 0)))
			abort();
		size_t body = body_at(msg, len);
		if (a.len < len - body ||
		    memcmp(a.data + a.len - (len - body), msg + body, len - body) != 0)
			abort();
	} else if (rc != TERN_ELIMIT && rc != TERN_ENOMEM) {
		abort();
	}
	tbuf_free(&a);
	tbuf_free(&b);
	return 0;
}
