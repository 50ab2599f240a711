/*
 * fuzz_smtp_reply.c — libFuzzer target for the SMTP reply parser and the
 * EHLO capability reader.
 *
 * The input is a stream of server bytes, possibly several pipelined
 * replies. Beyond "no crash", it checks:
 *   - feeding the stream whole, byte by byte and in pseudo-random splits
 *     gives the same sequence of results (status, bytes consumed, code,
 *     enhanced code, text, line count);
 *   - every DONE reply is well formed: code 200..599, 1..100 lines, text
 *     a C string of at most SMTP_REPLY_TEXT_MAX bytes with no control
 *     byte but TAB, enhanced code empty or of the reply's class;
 *   - consumed never exceeds what was fed, and MORE consumes everything;
 *   - smtp_parse_ehlo() on every reply terminates and reports a SIZE
 *     only with has_size.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_EVENTS 256

struct event {
	enum smtp_reply_status st;
	size_t end; /* offset in the input just past the reply (or the bad line) */
	struct smtp_reply r;
};

static void check(int cond)
{
	if (!cond)
		abort();
}

static void check_reply(const struct smtp_reply *r)
{
	check(r->code >= 200 && r->code <= 599);
	check(r->n_lines >= 1 && r->n_lines <= 100);
	size_t n = strnlen(r->text, sizeof(r->text));
	check(n <= SMTP_REPLY_TEXT_MAX);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)r->text[i];
		check(c >= 0x20 || c == '\t' || c == '\n');
		check(c != 0x7f);
	}
	size_t en = strnlen(r->enhanced, sizeof(r->enhanced));
	check(en < sizeof(r->enhanced));
	if (en) {
		check(r->enhanced[0] == '0' + r->code / 100);
		check(r->enhanced[0] != '3');
	}
	struct smtp_ehlo_caps caps;
	smtp_parse_ehlo(r, &caps);
	check(caps.has_size || caps.size == 0);
	check((caps.auth & ~0x1fu) == 0);
	if (r->code != 250)
		check(!caps.pipelining && !caps.has_size && caps.auth == 0);
}

/* mode 0 whole, 1 bytewise, 2 pseudo-random splits. Returns event count. */
static size_t run(const char *in, size_t len, int mode, uint32_t seed, struct event *ev)
{
	struct smtp_reply_parser p;
	smtp_reply_init(&p);
	size_t pos = 0, n_ev = 0;
	while (pos < len && n_ev < MAX_EVENTS) {
		size_t n = len - pos;
		if (mode == 1) {
			n = 1;
		} else if (mode == 2 && n > 1) {
			seed = seed * 1103515245u + 12345u;
			n = 1 + (seed >> 8) % (n < 64 ? n : 64);
		}
		size_t used = (size_t)-1;
		struct smtp_reply r;
		enum smtp_reply_status st = smtp_reply_feed(&p, in + pos, n, &used, &r);
		check(used <= n);
		pos += used;
		if (st == SMTP_REPLY_MORE) {
			check(used == n);
			continue;
		}
		check(st == SMTP_REPLY_DONE || st == SMTP_REPLY_BAD);
		check(used >= 1 && in[pos - 1] == '\n');
		ev[n_ev].st = st;
		ev[n_ev].end = pos;
		if (st == SMTP_REPLY_DONE) {
			check_reply(&r);
			ev[n_ev].r = r;
		}
		n_ev++;
	}
	return n_ev;
}

static struct event ev_a[MAX_EVENTS], ev_b[MAX_EVENTS];

static void same(size_t na, size_t nb)
{
	check(na == nb);
	for (size_t i = 0; i < na; i++) {
		check(ev_a[i].st == ev_b[i].st);
		check(ev_a[i].end == ev_b[i].end);
		if (ev_a[i].st != SMTP_REPLY_DONE)
			continue;
		check(ev_a[i].r.code == ev_b[i].r.code);
		check(ev_a[i].r.n_lines == ev_b[i].r.n_lines);
		check(strcmp(ev_a[i].r.enhanced, ev_b[i].r.enhanced) == 0);
		check(strcmp(ev_a[i].r.text, ev_b[i].r.text) == 0);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	uint32_t seed = 0x9747b28cu;
	for (size_t i = 0; i < size && i < 16; i++)
		seed = seed * 31u + data[i];
	size_t na = run(in, size, 0, 0, ev_a);
	size_t nb = run(in, size, 1, 0, ev_b);
	same(na, nb);
	nb = run(in, size, 2, seed, ev_b);
	same(na, nb);
	return 0;
}
