/*
 * test_smtp_data.c — the DATA stream parser: end of data is CR LF "." CR LF
 * and nothing else, dot-unstuffing, bare CR/LF flagging, the size cap, and
 * the header facts. Every case is fed whole, one byte at a time and in
 * random splits; all three must agree byte for byte.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"
#include "smtp/smtp.h"
#include "testdata.h"

#define MAXOUT (1u << 20)

struct result {
	enum smtp_data_status status;
	size_t consumed;
	struct tbuf out;
	struct smtp_data_parser p;
};

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* mode 0: whole; 1: one byte at a time; 2: random splits. Stops feeding at
 * END the way the session does. */
static void run(const char *in, size_t len, int mode, size_t cap, struct result *r)
{
	memset(r, 0, sizeof(*r));
	tbuf_init(&r->out, cap);
	smtp_data_init(&r->p);
	size_t pos = 0;
	r->status = SMTP_DATA_MORE;
	while (pos < len || (len == 0 && pos == 0)) {
		size_t n = len - pos;
		if (mode == 1 && n > 1)
			n = 1;
		else if (mode == 2 && n > 1)
			n = 1 + (size_t)(rng() % n);
		size_t used = 0;
		r->status = smtp_data_feed(&r->p, in + pos, n, &used, &r->out);
		if (r->status == SMTP_DATA_END) {
			assert_true(used <= n);
			pos += used;
			break;
		}
		assert_int_equal(used, n);
		pos += n;
		if (len == 0)
			break;
	}
	r->consumed = pos;
}

static void assert_same(const struct result *a, const struct result *b)
{
	assert_int_equal(a->status, b->status);
	assert_int_equal(a->consumed, b->consumed);
	assert_int_equal(a->out.len, b->out.len);
	if (a->out.len)
		assert_memory_equal(a->out.data, b->out.data, a->out.len);
	assert_int_equal(a->p.bare_eol, b->p.bare_eol);
	assert_int_equal(a->p.too_big, b->p.too_big);
	assert_int_equal(a->p.has_8bit, b->p.has_8bit);
	assert_int_equal(a->p.has_nul, b->p.has_nul);
	assert_int_equal(a->p.received_count, b->p.received_count);
	assert_true(a->p.total_bytes == b->p.total_bytes);
}

/* Runs all three feeding modes (random ones several times), checks they
 * agree, and leaves the whole-input result in *r (caller frees out). */
static void run_all(const char *in, size_t len, size_t cap, struct result *r)
{
	struct result other;
	run(in, len, 0, cap, r);
	run(in, len, 1, cap, &other);
	assert_same(r, &other);
	tbuf_free(&other.out);
	for (int k = 0; k < 8; k++) {
		run(in, len, 2, cap, &other);
		assert_same(r, &other);
		tbuf_free(&other.out);
	}
	/* The stored bytes must give the same header facts when rescanned, as
	 * the BDAT path does. */
	if (!r->p.too_big) {
		uint32_t rc = 99;
		bool eight = false;
		smtp_scan_headers(r->out.data ? r->out.data : "", r->out.len, &rc, &eight);
		assert_int_equal(rc, r->p.received_count);
		assert_int_equal(eight, r->p.has_8bit);
	}
	/* A complete message's stored bytes give the same bare CR/LF and NUL
	 * verdict when rescanned, as the BDAT path does. */
	if (!r->p.too_big && r->status == SMTP_DATA_END) {
		bool bare = !r->p.bare_eol, nul = !r->p.has_nul;
		smtp_scan_line_ends(r->out.data ? r->out.data : "", r->out.len, &bare, &nul);
		assert_int_equal(bare, r->p.bare_eol);
		assert_int_equal(nul, r->p.has_nul);
	}
}

#define S(lit) lit, sizeof(lit) - 1

struct data_case {
	const char *name;
	const char *in;
	size_t in_len;
	enum smtp_data_status status;
	size_t consumed; /* (size_t)-1: all of it */
	const char *out;
	size_t out_len;
	bool bare_eol;
	bool has_8bit;
	bool has_nul;
	uint32_t received;
};

#define ALL ((size_t)-1)

static const struct data_case data_cases[] = {
    {"plain message ends at CRLF.CRLF", S("Subject: a\r\n\r\nhello\r\n.\r\n"), SMTP_DATA_END, ALL,
     S("Subject: a\r\n\r\nhello\r\n"), false, false, false, 0},
    {"dot line at the very start is the end", S(".\r\n"), SMTP_DATA_END, 3, S(""), false, false,
     false, 0},
    {"bytes after the end belong to the next command", S("a\r\n.\r\nQUIT\r\n"), SMTP_DATA_END, 6,
     S("a\r\n"), false, false, false, 0},
    {"unfinished message wants more", S("a\r\nb"), SMTP_DATA_MORE, ALL, S("a\r\nb"), false, false,
     false, 0},
    {"pending CR at end of input is not emitted yet", S("a\r"), SMTP_DATA_MORE, ALL, S("a"), false,
     false, false, 0},
    {"dot-stuffed line loses its first dot", S("..\r\n...x\r\n.\r\n"), SMTP_DATA_END, ALL,
     S(".\r\n..x\r\n"), false, false, false, 0},
    {"dot followed by text at line start is unstuffed", S(".x\r\n.\r\n"), SMTP_DATA_END, ALL,
     S("x\r\n"), false, false, false, 0},
    {"dot in the middle of a line is kept", S("a.b\r\na.\r\n.\r\n"), SMTP_DATA_END, ALL,
     S("a.b\r\na.\r\n"), false, false, false, 0},
    {"dot after bare LF is not at line start", S("a\n.b\r\n.\r\n"), SMTP_DATA_END, ALL,
     S("a\n.b\r\n"), true, false, false, 0},
    {"dot space line is not the end", S("a\r\n. \r\n.\r\n"), SMTP_DATA_END, ALL, S("a\r\n \r\n"),
     false, false, false, 0},
    {"bare LF is flagged and kept", S("a\nb\r\n.\r\n"), SMTP_DATA_END, ALL, S("a\nb\r\n"), true,
     false, false, 0},
    {"bare CR is flagged and kept", S("a\rb\r\n.\r\n"), SMTP_DATA_END, ALL, S("a\rb\r\n"), true,
     false, false, 0},
    {"CR CR LF is a bare CR then a line end", S("a\r\r\n.\r\n"), SMTP_DATA_END, ALL, S("a\r\r\n"),
     true, false, false, 0},
    {"LF CR is a bare LF and a bare CR", S("a\n\rb\r\n.\r\n"), SMTP_DATA_END, ALL, S("a\n\rb\r\n"),
     true, false, false, 0},
    {"dot CR CR LF is unstuffed bare CR, not the end", S("a\r\n.\r\r\nb\r\n.\r\n"), SMTP_DATA_END,
     ALL, S("a\r\n\r\r\nb\r\n"), true, false, false, 0},
    {"dot CR x is unstuffed bare CR", S("a\r\n.\rx\r\n.\r\n"), SMTP_DATA_END, ALL,
     S("a\r\n\rx\r\n"), true, false, false, 0},
    {"dot LF is unstuffed bare LF", S("a\r\n.\nx\r\n.\r\n"), SMTP_DATA_END, ALL, S("a\r\n\nx\r\n"),
     true, false, false, 0},
    {"8-bit byte anywhere is noted", S("Subject: x\r\n\r\nb\xc3\xa9\r\n.\r\n"), SMTP_DATA_END, ALL,
     S("Subject: x\r\n\r\nb\xc3\xa9\r\n"), false, true, false, 0},
    {"NUL is noted and kept", S("a\0b\r\n.\r\n"), SMTP_DATA_END, ALL, S("a\0b\r\n"), false, false,
     true, 0},
    {"Received fields counted case-insensitively with optional WSP",
     S("Received: a\r\nreceived:b\r\nRECEIVED \t : c\r\n\tReceived: folded\r\n"
       "X-Received: no\r\nReceivedx: no\r\nReceived\r\n\r\nReceived: in body\r\n.\r\n"),
     SMTP_DATA_END, ALL,
     S("Received: a\r\nreceived:b\r\nRECEIVED \t : c\r\n\tReceived: folded\r\n"
       "X-Received: no\r\nReceivedx: no\r\nReceived\r\n\r\nReceived: in body\r\n"),
     false, false, false, 3},
    {"Received after a bare LF is not at line start", S("X: a\nReceived: b\r\n\r\n.\r\n"),
     SMTP_DATA_END, ALL, S("X: a\nReceived: b\r\n\r\n"), true, false, false, 0},
    {"empty first line means no headers", S("\r\nReceived: x\r\n.\r\n"), SMTP_DATA_END, ALL,
     S("\r\nReceived: x\r\n"), false, false, false, 0},
    {"stuffed header line is counted after unstuffing", S(".Received: x\r\n\r\n.\r\n"),
     SMTP_DATA_END, ALL, S("Received: x\r\n\r\n"), false, false, false, 1},
    {"empty input wants more", S(""), SMTP_DATA_MORE, 0, S(""), false, false, false, 0},
};

static void check_case(const struct data_case *c)
{
	struct result r;
	print_message("case: %s\n", c->name);
	run_all(c->in, c->in_len, MAXOUT, &r);
	assert_int_equal(r.status, c->status);
	assert_int_equal(r.consumed, c->consumed == ALL ? c->in_len : c->consumed);
	assert_int_equal(r.out.len, c->out_len);
	if (c->out_len)
		assert_memory_equal(r.out.data, c->out, c->out_len);
	assert_true(r.p.total_bytes == c->out_len);
	assert_int_equal(r.p.bare_eol, c->bare_eol);
	assert_int_equal(r.p.has_8bit, c->has_8bit);
	assert_int_equal(r.p.has_nul, c->has_nul);
	assert_int_equal(r.p.received_count, c->received);
	assert_false(r.p.too_big);
	tbuf_free(&r.out);
}

static void test_data_table(void **state)
{
	for (size_t i = 0; i < sizeof(data_cases) / sizeof(data_cases[0]); i++)
		check_case(&data_cases[i]);
}

static void test_feed_after_end_consumes_nothing(void **state)
{
	struct smtp_data_parser p;
	struct tbuf out = TBUF_INIT(100);
	size_t used = 99;
	smtp_data_init(&p);
	assert_int_equal(smtp_data_feed(&p, S("x\r\n.\r\n"), &used, &out), SMTP_DATA_END);
	assert_int_equal(used, 6);
	assert_int_equal(smtp_data_feed(&p, S("more\r\n"), &used, &out), SMTP_DATA_END);
	assert_int_equal(used, 0);
	assert_int_equal(out.len, 3);
	tbuf_free(&out);
}

static void test_cap_stops_storing_but_finds_end(void **state)
{
	static const char msg[] = "0123456789abcdefghij\r\nsecond line\r\n..dot\r\n.\r\nNEXT";
	static const char want[] = "0123456789abcdefghij\r\nsecond line\r\n.dot\r\n";
	for (size_t cap = 0; cap < 50; cap++) {
		struct result r;
		run_all(msg, sizeof(msg) - 1, cap, &r);
		size_t full = sizeof(want) - 1;
		assert_int_equal(r.status, SMTP_DATA_END);
		assert_int_equal(r.consumed, sizeof(msg) - 1 - 4);
		assert_true(r.p.total_bytes == full);
		assert_int_equal(r.p.too_big, cap < full);
		assert_int_equal(r.out.len, cap < full ? cap : full);
		if (r.out.len)
			assert_memory_equal(r.out.data, want, r.out.len);
		tbuf_free(&r.out);
	}
}

static void test_large_message_crosses_internal_buffers(void **state)
{
	size_t n = 100000;
	char *msg = malloc(n + 5);
	assert_non_null(msg);
	for (size_t i = 0; i < n; i++)
		msg[i] = (i % 80 == 78) ? '\r' : (i % 80 == 79) ? '\n' : (char)('a' + i % 26);
	/* n is a multiple of 80, so the body ends with CR LF. */
	memcpy(msg + n, ".\r\n", 3);
	struct result r;
	run_all(msg, n + 3, MAXOUT, &r);
	assert_int_equal(r.status, SMTP_DATA_END);
	assert_int_equal(r.out.len, n);
	assert_memory_equal(r.out.data, msg, n);
	assert_false(r.p.bare_eol);
	tbuf_free(&r.out);
	free(msg);
}

/* ---------------------------------------------------------- smuggling */

/* Decodes the TSV's C escapes (\r \n \x00 \\); returns the length. */
static size_t unescape(const char *s, char *out, size_t outlen)
{
	size_t o = 0;
	for (size_t i = 0; s[i] && o < outlen; i++) {
		if (s[i] != '\\') {
			out[o++] = s[i];
			continue;
		}
		i++;
		if (s[i] == 'r') {
			out[o++] = '\r';
		} else if (s[i] == 'n') {
			out[o++] = '\n';
		} else if (s[i] == 'x' && s[i + 1] && s[i + 2]) {
			char hex[3] = {s[i + 1], s[i + 2], 0};
			out[o++] = (char)strtoul(hex, NULL, 16);
			i += 2;
		} else if (s[i] == '\\') {
			out[o++] = '\\';
		} else {
			fail_msg("unknown escape in TSV: %s", s);
		}
	}
	return o;
}

static void test_smuggling_sequences_never_end_data(void **state)
{
	char path[1024];
	assert_true(testdata_path(path, sizeof(path), "smtp-smuggling/eod-sequences.tsv"));
	FILE *f = fopen(path, "r");
	if (!f)
		fail_msg("cannot open %s (tests/data/smtp-smuggling; TERN_TESTDATA overrides)",
		         path);
	char line[1024];
	int rows = 0;
	static const char head[] = "From: a@example.org\r\nSubject: test\r\n\r\nfirst line";
	static const char smuggled[] = "MAIL FROM:<smuggled@example.org>\r\n"
	                               "RCPT TO:<victim@example.net>\r\nDATA\r\n"
	                               "Subject: smuggled\r\n\r\nsmuggled body\r\n";
	while (fgets(line, sizeof(line), f)) {
		if (line[0] == '#' || line[0] == '\n')
			continue;
		char *id = line;
		char *tab = strchr(line, '\t');
		assert_non_null(tab);
		*tab = '\0';
		char *esc = tab + 1;
		tab = strchr(esc, '\t');
		assert_non_null(tab);
		*tab = '\0';
		char seq[64];
		size_t sl = unescape(esc, seq, sizeof(seq));
		print_message("smuggling row: %s\n", id);

		char msg[512];
		size_t ml = 0;
		memcpy(msg + ml, head, sizeof(head) - 1);
		ml += sizeof(head) - 1;
		memcpy(msg + ml, seq, sl);
		ml += sl;
		memcpy(msg + ml, smuggled, sizeof(smuggled) - 1);
		ml += sizeof(smuggled) - 1;

		/* Without the real terminator the message must go on. */
		struct result r;
		run_all(msg, ml, MAXOUT, &r);
		assert_int_equal(r.status, SMTP_DATA_MORE);
		assert_int_equal(r.consumed, ml);
		tbuf_free(&r.out);

		/* The sequence alone right after a proper line end must not end
		 * it either (covers rows whose first bytes are CR LF). */
		char msg2[128];
		size_t m2 = 0;
		memcpy(msg2, "x\r\n", 3);
		m2 = 3;
		memcpy(msg2 + m2, seq, sl);
		m2 += sl;
		run_all(msg2, m2, MAXOUT, &r);
		assert_int_equal(r.status, SMTP_DATA_MORE);
		tbuf_free(&r.out);

		/* With the real terminator it ends exactly there, and the
		 * smuggled commands are message text, not commands. */
		memcpy(msg + ml, ".\r\n", 3);
		ml += 3;
		run_all(msg, ml, MAXOUT, &r);
		assert_int_equal(r.status, SMTP_DATA_END);
		assert_int_equal(r.consumed, ml);
		assert_non_null(memmem(r.out.data, r.out.len, "MAIL FROM:<smuggled@", 20));
		bool nul_row = memchr(seq, '\0', sl) != NULL;
		assert_int_equal(r.p.has_nul, nul_row);
		/* Every row except the NUL ones has a bare CR or LF. */
		if (!nul_row)
			assert_true(r.p.bare_eol);
		tbuf_free(&r.out);
		rows++;
	}
	fclose(f);
	assert_true(rows >= 12);
}

/* The BDAT path: whole stored messages (all chunks), no dot-stuffing and no
 * end-of-data line, checked for what DATA refuses. */
struct eol_case {
	const char *name;
	const char *in;
	size_t len;
	bool bare_eol;
	bool has_nul;
};

static const struct eol_case eol_cases[] = {
    {"empty message is clean", S(""), false, false},
    {"CRLF lines are clean", S("Subject: a\r\n\r\nhello\r\n"), false, false},
    {"no final line end is clean", S("Subject: a\r\n\r\nhello"), false, false},
    {"bare LF", S("a\nb\r\n"), true, false},
    {"bare LF as the first byte", S("\nb\r\n"), true, false},
    {"bare LF at the end", S("a\r\nb\n"), true, false},
    {"bare CR", S("a\rb\r\n"), true, false},
    {"CR as the last byte", S("a\r\nb\r"), true, false},
    {"CR CR LF has one bare CR", S("a\r\r\n"), true, false},
    {"LF CR is bare both ways", S("a\n\rb"), true, false},
    {"smuggling LF.LF", S("hello\n.\nMAIL FROM:<x@y>\r\n"), true, false},
    {"smuggling LF.CRLF", S("hello\n.\r\nMAIL FROM:<x@y>\r\n"), true, false},
    {"NUL byte", S("a\0b\r\n"), false, true},
    {"NUL and bare CR", S("a\0b\rc\r\n"), true, true},
    {"8-bit bytes are fine", S("\xc3\xa9t\xc3\xa9\r\n"), false, false},
};

static void test_scan_line_ends_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(eol_cases) / sizeof(eol_cases[0]); i++) {
		const struct eol_case *c = &eol_cases[i];
		bool bare = !c->bare_eol, nul = !c->has_nul;
		print_message("case: %s\n", c->name);
		smtp_scan_line_ends(c->in, c->len, &bare, &nul);
		assert_int_equal(bare, c->bare_eol);
		assert_int_equal(nul, c->has_nul);
		/* NULL outputs are allowed. */
		smtp_scan_line_ends(c->in, c->len, NULL, NULL);
	}
}

/* ---- smtp_header_find / smtp_message_id: the msgid= of the queued line ---- */

struct mid_case {
	const char *name;
	const char *msg;
	const char *want; /* NULL: no Message-ID */
};

static const struct mid_case mid_cases[] = {
    {"plain", "Subject: x\r\nMessage-ID: <a.1@example.org>\r\n\r\nbody\r\n", "<a.1@example.org>"},
    {"name is case-insensitive", "message-id:<b@x>\r\n\r\n", "<b@x>"},
    {"folded value", "Message-ID:\r\n <c@x>\r\nTo: y\r\n\r\n", "<c@x>"},
    {"comment around it", "Message-ID: (gen) <d@x> (end)\r\n\r\n", "<d@x>"},
    {"no brackets: the trimmed value", "Message-ID:  e@x  \r\n\r\n", "e@x"},
    {"first of two", "Message-ID: <f1@x>\r\nMessage-ID: <f2@x>\r\n\r\n", "<f1@x>"},
    {"only in the body: none", "Subject: x\r\n\r\nMessage-ID: <g@x>\r\n", NULL},
    {"a longer name is not it", "Message-IDs: <h@x>\r\n\r\n", NULL},
    {"inside a folded field is not it", "X-A: 1\r\n Message-ID: <i@x>\r\n\r\n", NULL},
    {"empty value", "Message-ID:\r\n\r\n", NULL},
    {"no header section at all", "\r\nMessage-ID: <j@x>\r\n", NULL},
    {"unterminated last line", "To: a\r\nMessage-ID: <k@x>", "<k@x>"},
    {"after our Received header",
     "Received: from a by b\r\n\tid X; Sun, 6 Dec 2026 03:00:00 +0000\r\n"
     "Message-Id: <l@x>\r\n\r\n",
     "<l@x>"},
};

static void test_message_id_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(mid_cases) / sizeof(mid_cases[0]); i++) {
		const struct mid_case *c = &mid_cases[i];
		const char *id = NULL;
		size_t n = 0;
		print_message("case: %s\n", c->name);
		bool found = smtp_message_id(c->msg, strlen(c->msg), &id, &n);
		assert_int_equal(found, c->want != NULL);
		if (c->want) {
			assert_int_equal(n, strlen(c->want));
			assert_memory_equal(id, c->want, n);
		}
	}
}

static void test_header_find_keeps_folding(void **state)
{
	(void)state;
	const char *m = "Subject: one\r\n two\r\nTo: x\r\n\r\n";
	const char *v;
	size_t n;
	assert_true(smtp_header_find(m, strlen(m), "subject", &v, &n));
	assert_int_equal(n, strlen("one\r\n two"));
	assert_memory_equal(v, "one\r\n two", n);
	assert_false(smtp_header_find(m, strlen(m), "From", &v, &n));
	/* a truncated buffer never reads past len */
	assert_false(smtp_header_find(m, 3, "Subject", &v, &n));
}

/* Bodies built from the bytes that matter to the bulk line path (CR, LF, a
 * dot at line start, NUL, 8-bit, plain text, long lines that cross the
 * parser's output buffer), under caps that cut mid-line: the whole-input
 * feed (bulk lines) must agree byte for byte with the one-byte feed
 * (never bulk) and with random splits. */
static void test_bulk_lines_match_bytewise(void **state)
{
	(void)state;
	static const char *const pieces[] = {"\r\n", "\r",   "\n",   ".",    "..\r\n", "x",
	                                     "\0",   "\x80", "\xff", "ab c", "\r\n.",  "\r\n\r\n"};
	static const size_t piece_len[] = {2, 1, 1, 1, 4, 1, 1, 1, 1, 4, 3, 4};
	char *in = malloc(16384);
	assert_non_null(in);
	for (int round = 0; round < 150; round++) {
		size_t len = 0;
		if (round % 2) { /* half of them past the header section at once */
			memcpy(in, "A: b\r\n\r\n", 8);
			len = 8;
		}
		size_t target = (size_t)(rng() % 12000);
		while (len + 3000 < 16384 && len < target) {
			uint64_t r = rng();
			if (r % 7 == 0) { /* a long plain line */
				size_t n = 1 + (size_t)((r >> 8) % 2900);
				memset(in + len, 'L', n);
				len += n;
				memcpy(in + len, "\r\n", 2);
				len += 2;
			} else {
				size_t k =
				    (size_t)((r >> 8) % (sizeof(piece_len) / sizeof(piece_len[0])));
				memcpy(in + len, pieces[k], piece_len[k]);
				len += piece_len[k];
			}
		}
		if (round % 3 == 0) {
			memcpy(in + len, "\r\n.\r\nMAIL", 9);
			len += 9;
		}
		size_t caps[] = {MAXOUT, 1 + (size_t)(rng() % (len + 1))};
		for (size_t c = 0; c < 2; c++) {
			struct result r;
			run_all(in, len, caps[c], &r);
			tbuf_free(&r.out);
		}
	}
	free(in);
}

/* smtp_scan_bytes against a byte loop: every length up to 40 at every
 * alignment, over bytes that sit next to the ones it looks for (0x0c, 0x0e,
 * 0x01, 0x7f, 0x80, 0xff), so that borrows between bytes cannot fake or hide
 * a CR, a NUL or an 8-bit byte. */
static void test_scan_bytes_matches_byte_loop(void **state)
{
	(void)state;
	static const unsigned char alphabet[] = {'a',  '\r', 0,    0x0c, 0x0e,
	                                         0x01, 0x7f, 0x80, 0xff, '\n'};
	char buf[64];
	for (int round = 0; round < 20000; round++) {
		size_t off = (size_t)(rng() % 8), n = (size_t)(rng() % 41);
		for (size_t i = 0; i < n; i++) {
			uint64_t r = rng();
			/* mostly plain text, so that single special bytes get tested */
			buf[off + i] = (char)(r % 4 ? 'a' + (char)(r % 26)
			                            : (char)alphabet[(r >> 8) % sizeof(alphabet)]);
		}
		unsigned want = 0;
		for (size_t i = 0; i < n; i++) {
			unsigned char c = (unsigned char)buf[off + i];
			if (c == '\r')
				want |= SMTP_SCAN_CR;
			if (c == 0)
				want |= SMTP_SCAN_NUL;
			if (c >= 0x80)
				want |= SMTP_SCAN_8BIT;
		}
		assert_int_equal(smtp_scan_bytes(buf + off, n), want);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_data_table),
	    cmocka_unit_test(test_feed_after_end_consumes_nothing),
	    cmocka_unit_test(test_cap_stops_storing_but_finds_end),
	    cmocka_unit_test(test_large_message_crosses_internal_buffers),
	    cmocka_unit_test(test_smuggling_sequences_never_end_data),
	    cmocka_unit_test(test_scan_line_ends_table),
	    cmocka_unit_test(test_message_id_table),
	    cmocka_unit_test(test_header_find_keeps_folding),
	    cmocka_unit_test(test_bulk_lines_match_bytewise),
	    cmocka_unit_test(test_scan_bytes_matches_byte_loop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
