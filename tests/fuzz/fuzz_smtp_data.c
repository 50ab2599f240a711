/*
 * fuzz_smtp_data.c — libFuzzer target for the DATA stream parser.
 *
 * Beyond "no crash", it checks the parser against a few-line reference
 * model of RFC 5321 §4.1.1.4/§4.5.2 written directly over the input:
 *   - the data ends at the first "." CR LF that starts the input or follows
 *     CR LF, and nowhere else (the SMTP-smuggling property);
 *   - the stored message is the input before that line with the first dot
 *     of every line (after CR LF) removed;
 *   - bare_eol, has_nul and has_8bit match the bytes;
 *   - feeding the input whole, byte by byte or in pseudo-random splits gives
 *     the same result; a small cap keeps exactly a prefix and still finds
 *     the end;
 *   - smtp_scan_headers() over the stored bytes agrees with the parser;
 *   - smtp_message_id() over them points inside them, at "<...>" when the
 *     value has both brackets.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "smtp/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct run {
	enum smtp_data_status st;
	size_t consumed;
	struct tbuf out;
	struct smtp_data_parser p;
};

static void check(int cond)
{
	if (!cond)
		abort();
}

/* mode 0 whole, 1 bytewise, 2 pseudo-random splits seeded by seed. */
static void feed(const char *in, size_t len, int mode, uint32_t seed, size_t cap, struct run *r)
{
	tbuf_init(&r->out, cap);
	smtp_data_init(&r->p);
	r->st = SMTP_DATA_MORE;
	size_t pos = 0;
	do {
		size_t n = len - pos;
		if (mode == 1 && n > 1) {
			n = 1;
		} else if (mode == 2 && n > 1) {
			seed = seed * 1103515245u + 12345u;
			n = 1 + (seed >> 8) % n;
		}
		size_t used = (size_t)-1;
		r->st = smtp_data_feed(&r->p, in + pos, n, &used, &r->out);
		check(used <= n);
		if (r->st == SMTP_DATA_END) {
			pos += used;
			break;
		}
		check(used == n);
		pos += n;
	} while (pos < len);
	r->consumed = pos;
}

static void same(const struct run *a, const struct run *b)
{
	check(a->st == b->st);
	check(a->consumed == b->consumed);
	check(a->out.len == b->out.len);
	check(a->out.len == 0 || memcmp(a->out.data, b->out.data, a->out.len) == 0);
	check(a->p.bare_eol == b->p.bare_eol);
	check(a->p.too_big == b->p.too_big);
	check(a->p.has_8bit == b->p.has_8bit);
	check(a->p.has_nul == b->p.has_nul);
	check(a->p.received_count == b->p.received_count);
	check(a->p.total_bytes == b->p.total_bytes);
}

static int crlf_before(const char *in, size_t i)
{
	return i >= 2 && in[i - 2] == '\r' && in[i - 1] == '\n';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;

	/* Reference: where the data ends. */
	size_t end_line = size; /* start of the "." CR LF line, or size */
	int ends = 0;
	for (size_t k = 0; k + 3 <= size; k++) {
		if (in[k] == '.' && in[k + 1] == '\r' && in[k + 2] == '\n' &&
		    (k == 0 || crlf_before(in, k))) {
			end_line = k;
			ends = 1;
			break;
		}
	}
	/* Reference: unstuffed message and flags over [0, end_line). */
	char *ref = malloc(end_line + 1);
	check(ref != NULL);
	size_t rl = 0;
	int bare = 0, nul = 0, eight = 0;
	for (size_t i = 0; i < end_line; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c == '\r' && (i + 1 >= size || in[i + 1] != '\n') && i + 1 < end_line)
			bare = 1;
		if (c == '\n' && (i == 0 || in[i - 1] != '\r'))
			bare = 1;
		if (c == 0)
			nul = 1;
		if (c >= 0x80)
			eight = 1;
		if (c == '.' && (i == 0 || crlf_before(in, i)))
			continue;
		ref[rl++] = (char)c;
	}

	uint32_t seed = 2166136261u;
	for (size_t i = 0; i < size; i++)
		seed = (seed ^ data[i]) * 16777619u;

	struct run whole, other;
	feed(in, size, 0, 0, 1u << 24, &whole);
	check(!whole.p.too_big);

	if (ends) {
		check(whole.st == SMTP_DATA_END);
		check(whole.consumed == end_line + 3);
		check(whole.out.len == rl);
		check(rl == 0 || memcmp(whole.out.data, ref, rl) == 0);
		check(whole.p.bare_eol == bare);
		check(whole.p.has_nul == nul);
		check(whole.p.has_8bit == eight);
		check(whole.p.total_bytes == rl);
		check(rl == 0 || (rl >= 2 && ref[rl - 2] == '\r' && ref[rl - 1] == '\n'));
	} else {
		check(whole.st == SMTP_DATA_MORE);
		check(whole.consumed == size);
		/* A pending CR may not be stored yet. */
		check(whole.out.len <= rl && rl - whole.out.len <= 1);
		check(whole.out.len == 0 || memcmp(whole.out.data, ref, whole.out.len) == 0);
		check(whole.p.total_bytes == whole.out.len);
		/* A CR pending at the very end is not yet known to be bare. */
		check(whole.p.bare_eol == bare);
		check(whole.p.has_nul == nul);
		check(whole.p.has_8bit == eight);
	}

	uint32_t rc = 0;
	bool e8 = false;
	smtp_scan_headers(whole.out.data ? whole.out.data : "", whole.out.len, &rc, &e8);
	check(rc == whole.p.received_count);
	check(e8 == whole.p.has_8bit);

	const char *mid = NULL, *base = whole.out.data ? whole.out.data : "";
	size_t mid_len = 0;
	if (smtp_message_id(base, whole.out.len, &mid, &mid_len)) {
		check(mid >= base && mid_len > 0 && mid + mid_len <= base + whole.out.len);
		/* "<...>" when the value has both brackets, else the value */
		check(mid[0] != '<' || mid[mid_len - 1] == '>' || !memchr(mid, '>', mid_len));
	}

	feed(in, size, 1, 0, 1u << 24, &other);
	same(&whole, &other);
	tbuf_free(&other.out);
	feed(in, size, 2, seed, 1u << 24, &other);
	same(&whole, &other);
	tbuf_free(&other.out);

	/* A cap below the message: exactly a prefix is kept, the end is
	 * still found at the same place, and splits still agree. */
	size_t cap = whole.out.len / 2;
	struct run capped;
	feed(in, size, 2, seed ^ 0x5bd1e995u, cap, &capped);
	check(capped.st == whole.st);
	check(capped.consumed == whole.consumed);
	check(capped.p.total_bytes == whole.p.total_bytes);
	check(capped.p.too_big == (whole.out.len > cap));
	check(capped.out.len == (whole.out.len > cap ? cap : whole.out.len));
	check(capped.out.len == 0 || memcmp(capped.out.data, whole.out.data, capped.out.len) == 0);
	check(capped.p.received_count == whole.p.received_count);
	feed(in, size, 1, 0, cap, &other);
	same(&capped, &other);
	tbuf_free(&other.out);
	tbuf_free(&capped.out);

	tbuf_free(&whole.out);
	free(ref);
	return 0;
}
