/*
 * test_client_proto.c — the outbound client's pure protocol pieces:
 *   - replies (RFC 5321 §4.2): single and multi-line, "NNN" alone,
 *     enhanced codes (RFC 2034/3463) taken from the first line and
 *     stripped from every line, pipelined replies in one buffer, long
 *     lines, malformed input; every case fed whole, byte by byte and in
 *     random splits, which must all agree;
 *   - EHLO capabilities (keywords, SIZE, AUTH in both forms);
 *   - 8-bit downconversion (RFC 6152 §3): exact expected bytes for the
 *     shapes real mail has, refusals, and an independent check with
 *     Python's email package that the text survives and the output is
 *     7-bit; plus a differential run over the mime4j test messages
 *     (tests/data/mime4j) made 8-bit, where Python must decode
 *     the same leaves from input and output.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <dirent.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/codec.h"
#include "core/err.h"
#include "smtp/smtp.h"
#include "testdata.h"

#define S(lit) (lit), (sizeof(lit) - 1)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* ================================================================ replies */

struct feed_result {
	enum smtp_reply_status st;
	size_t consumed; /* bytes of the input used up to DONE/BAD (or all) */
	struct smtp_reply r;
};

/* mode 0: whole; 1: byte by byte; 2: random splits. Stops at DONE/BAD. */
static void feed_one(const char *in, size_t len, int mode, struct feed_result *res)
{
	struct smtp_reply_parser p;
	smtp_reply_init(&p);
	memset(res, 0, sizeof(*res));
	res->st = SMTP_REPLY_MORE;
	size_t pos = 0;
	while (pos < len) {
		size_t n = len - pos;
		if (mode == 1)
			n = 1;
		else if (mode == 2)
			n = 1 + (size_t)(rng() % n);
		size_t used = 0;
		res->st = smtp_reply_feed(&p, in + pos, n, &used, &res->r);
		assert_true(used <= n);
		pos += used;
		if (res->st != SMTP_REPLY_MORE)
			break;
		assert_int_equal(used, n);
	}
	res->consumed = pos;
}

struct reply_case {
	const char *name;
	const char *in;
	size_t len;
	enum smtp_reply_status st;
	int code;
	const char *enhanced;
	const char *text;
	size_t n_lines;
	size_t consumed; /* 0 = the whole input */
};

static void check_reply_case(const struct reply_case *c)
{
	struct feed_result whole, bytewise, split;
	feed_one(c->in, c->len, 0, &whole);
	feed_one(c->in, c->len, 1, &bytewise);
	if (whole.st != c->st)
		fail_msg("%s: status %d, want %d", c->name, whole.st, c->st);
	size_t want_consumed = c->consumed ? c->consumed : c->len;
	if (c->st != SMTP_REPLY_MORE && whole.consumed != want_consumed)
		fail_msg("%s: consumed %zu, want %zu", c->name, whole.consumed, want_consumed);
	if (c->st == SMTP_REPLY_DONE) {
		assert_int_equal(whole.r.code, c->code);
		if (strcmp(whole.r.enhanced, c->enhanced) != 0)
			fail_msg("%s: enhanced \"%s\", want \"%s\"", c->name, whole.r.enhanced,
			         c->enhanced);
		if (strcmp(whole.r.text, c->text) != 0)
			fail_msg("%s: text \"%s\", want \"%s\"", c->name, whole.r.text, c->text);
		assert_int_equal(whole.r.n_lines, c->n_lines);
	}
	for (int k = 0; k < 20; k++) {
		const struct feed_result *o = &bytewise;
		if (k > 0) {
			feed_one(c->in, c->len, 2, &split);
			o = &split;
		}
		if (o->st != whole.st || o->consumed != whole.consumed)
			fail_msg("%s: split feeding disagrees (mode %d)", c->name, k ? 2 : 1);
		if (whole.st == SMTP_REPLY_DONE) {
			assert_int_equal(o->r.code, whole.r.code);
			assert_string_equal(o->r.enhanced, whole.r.enhanced);
			assert_string_equal(o->r.text, whole.r.text);
			assert_int_equal(o->r.n_lines, whole.r.n_lines);
		}
	}
}

static void test_reply_table(void **state)
{
	const struct reply_case cases[] = {
	    {"single line", S("250 OK\r\n"), SMTP_REPLY_DONE, 250, "", "OK", 1, 0},
	    {"code alone", S("250\r\n"), SMTP_REPLY_DONE, 250, "", "", 1, 0},
	    {"code and space", S("250 \r\n"), SMTP_REPLY_DONE, 250, "", "", 1, 0},
	    {"greeting", S("220 mx.example.org ESMTP ready\r\n"), SMTP_REPLY_DONE, 220, "",
	     "mx.example.org ESMTP ready", 1, 0},
	    {"multiline", S("250-mx.example.org\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
	     SMTP_REPLY_DONE, 250, "", "mx.example.org\nPIPELINING\n8BITMIME", 3, 0},
	    {"continuation with code alone", S("250-first\r\n250-\r\n250 last\r\n"),
	     SMTP_REPLY_DONE, 250, "", "first\n\nlast", 3, 0},
	    {"enhanced code taken and stripped",
	     S("550 5.1.1 <x@example.org>: Recipient address rejected\r\n"), SMTP_REPLY_DONE, 550,
	     "5.1.1", "<x@example.org>: Recipient address rejected", 1, 0},
	    {"enhanced code on every line (gmail style)",
	     S("550-5.1.1 The email account that you tried to reach does not exist.\r\n"
	       "550-5.1.1 Please try double-checking the address.\r\n"
	       "550 5.1.1 https://support.example/?p=NoSuchUser x-gsmtp\r\n"),
	     SMTP_REPLY_DONE, 550, "5.1.1",
	     "The email account that you tried to reach does not exist.\n"
	     "Please try double-checking the address.\n"
	     "https://support.example/?p=NoSuchUser x-gsmtp",
	     3, 0},
	    {"enhanced code alone", S("250 2.0.0\r\n"), SMTP_REPLY_DONE, 250, "2.0.0", "", 1, 0},
	    {"enhanced code with three-digit parts", S("451 4.123.999 busy\r\n"), SMTP_REPLY_DONE,
	     451, "4.123.999", "busy", 1, 0},
	    {"enhanced class must match reply class", S("550 2.1.1 odd\r\n"), SMTP_REPLY_DONE, 550,
	     "", "2.1.1 odd", 1, 0},
	    {"no enhanced code on 354", S("354 3.0.0 go ahead\r\n"), SMTP_REPLY_DONE, 354, "",
	     "3.0.0 go ahead", 1, 0},
	    {"version number is not an enhanced code", S("220 5.1 ready\r\n"), SMTP_REPLY_DONE, 220,
	     "", "5.1 ready", 1, 0},
	    {"enhanced code glued to text is not one", S("550 5.1.1x no\r\n"), SMTP_REPLY_DONE, 550,
	     "", "5.1.1x no", 1, 0},
	    {"only the first line decides", S("250-hello\r\n250 2.0.0 ok\r\n"), SMTP_REPLY_DONE,
	     250, "", "hello\n2.0.0 ok", 2, 0},
	    {"bare lf tolerated", S("250-a\n250 b\n"), SMTP_REPLY_DONE, 250, "", "a\nb", 2, 0},
	    {"control bytes in text are masked", S("250 a\rb\0c\x1b\r\n"), SMTP_REPLY_DONE, 250, "",
	     "a?b?c?", 1, 0},
	    {"utf-8 text kept", S("250 caf\xc3\xa9\r\n"), SMTP_REPLY_DONE, 250, "", "caf\xc3\xa9",
	     1, 0},
	    {"first of two pipelined replies", S("250 2.1.0 Sender ok\r\n250 2.1.5 ok\r\n"),
	     SMTP_REPLY_DONE, 250, "2.1.0", "Sender ok", 1, 21},
	    {"incomplete line", S("250 OK"), SMTP_REPLY_MORE, 0, "", "", 0, 0},
	    {"incomplete multiline", S("250-a\r\n250-b\r\n"), SMTP_REPLY_MORE, 0, "", "", 0, 0},
	    {"empty input", S(""), SMTP_REPLY_MORE, 0, "", "", 0, 0},
	    {"not a code", S("hello\r\n"), SMTP_REPLY_BAD, 0, "", "", 0, 0},
	    {"letter in code", S("2x0 OK\r\n"), SMTP_REPLY_BAD, 0, "", "", 0, 0},
	    {"short code", S("25 OK\r\n"), SMTP_REPLY_BAD, 0, "", "", 0, 0},
	    {"empty line", S("\r\n"), SMTP_REPLY_BAD, 0, "", "", 0, 0},
	    {"bad separator", S("250_OK\r\n"), SMTP_REPLY_BAD, 0, "", "", 0, 0},
	    {"four digits", S("2500 OK\r\n"), SMTP_REPLY_BAD, 0, "", "", 0, 0},
	    {"1xx does not exist", S("150 OK\r\n"), SMTP_REPLY_BAD, 0, "", "", 0, 0},
	    {"6xx does not exist", S("600 OK\r\n"), SMTP_REPLY_BAD, 0, "", "", 0, 0},
	    {"mixed codes", S("250-a\r\n251 b\r\n"), SMTP_REPLY_BAD, 0, "", "", 0, 0},
	    {"mixed codes reported at the bad line", S("250-a\r\n550-b\r\n550 c\r\n"),
	     SMTP_REPLY_BAD, 0, "", "", 0, 14},
	    {"leading space", S(" 250 OK\r\n"), SMTP_REPLY_BAD, 0, "", "", 0, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_reply_case(&cases[i]);
}

static void test_reply_pipelined_replies_in_one_buffer(void **state)
{
	static const char in[] = "250 2.1.0 Sender ok\r\n"
	                         "250-2.1.5 first\r\n250 2.1.5 Recipient ok\r\n"
	                         "550 5.1.1 no such user\r\n"
	                         "354 End data with <CR><LF>.<CR><LF>\r\n"
	                         "250 2.0.0 Ok: queued as 4F";
	static const struct {
		int code;
		const char *enhanced, *text;
	} want[] = {
	    {250, "2.1.0", "Sender ok"},
	    {250, "2.1.5", "first\nRecipient ok"},
	    {550, "5.1.1", "no such user"},
	    {354, "", "End data with <CR><LF>.<CR><LF>"},
	};
	for (int mode = 0; mode < 3; mode++) {
		struct smtp_reply_parser p;
		smtp_reply_init(&p);
		size_t pos = 0, got = 0, len = sizeof(in) - 1;
		while (pos < len) {
			size_t n = len - pos;
			if (mode == 1)
				n = 1;
			else if (mode == 2)
				n = 1 + (size_t)(rng() % n);
			size_t used = 0;
			struct smtp_reply r;
			enum smtp_reply_status st = smtp_reply_feed(&p, in + pos, n, &used, &r);
			assert_int_not_equal(st, SMTP_REPLY_BAD);
			pos += used;
			if (st == SMTP_REPLY_DONE) {
				assert_true(got < sizeof(want) / sizeof(want[0]));
				assert_int_equal(r.code, want[got].code);
				assert_string_equal(r.enhanced, want[got].enhanced);
				assert_string_equal(r.text, want[got].text);
				if (mode == 0) /* DONE before the end of the buffer */
					assert_true(used < n);
				got++;
			} else {
				assert_int_equal(used, n);
			}
		}
		/* four replies, the fifth still waiting for its line end */
		assert_int_equal(got, 4);
		size_t used = 0;
		struct smtp_reply r;
		assert_int_equal(smtp_reply_feed(&p, "\r\n", 2, &used, &r), SMTP_REPLY_DONE);
		assert_int_equal(used, 2);
		assert_int_equal(r.code, 250);
		assert_string_equal(r.text, "Ok: queued as 4F");
	}
}

static char *make_lines(size_t n_lines, size_t text_len, char last_sep)
{
	size_t line = 4 + text_len + 2;
	char *s = malloc(n_lines * line + 1);
	assert_non_null(s);
	char *d = s;
	for (size_t i = 0; i < n_lines; i++) {
		memcpy(d, "250", 3);
		d[3] = (i + 1 == n_lines) ? last_sep : '-';
		memset(d + 4, 'x', text_len);
		memcpy(d + 4 + text_len, "\r\n", 2);
		d += line;
	}
	*d = '\0';
	return s;
}

static void test_reply_line_and_count_limits(void **state)
{
	/* 100 lines are fine, 101 are not */
	char *ok = make_lines(100, 3, ' ');
	struct reply_case c = {"100 lines", ok, strlen(ok), SMTP_REPLY_DONE, 250, "", NULL, 100, 0};
	struct feed_result res;
	feed_one(ok, strlen(ok), 0, &res);
	assert_int_equal(res.st, SMTP_REPLY_DONE);
	assert_int_equal(res.r.n_lines, 100);
	c.text = res.r.text; /* compared between feeding modes */
	check_reply_case(&c);
	free(ok);

	char *bad = make_lines(101, 3, ' ');
	feed_one(bad, strlen(bad), 0, &res);
	assert_int_equal(res.st, SMTP_REPLY_BAD);
	struct reply_case cb = {"101 lines", bad, strlen(bad), SMTP_REPLY_BAD, 0,
	                        "",          "",  0,           strlen(bad)};
	check_reply_case(&cb);
	free(bad);

	/* Over-long lines are truncated at 1000 bytes (code included), and
	 * parsing goes on. A line of exactly 1000 keeps all its text. */
	const size_t lens[] = {996, 997, 1500, 5000};
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		char *lng = make_lines(2, lens[i], ' ');
		feed_one(lng, strlen(lng), 0, &res);
		assert_int_equal(res.st, SMTP_REPLY_DONE);
		assert_int_equal(res.r.n_lines, 2);
		assert_int_equal(res.consumed, strlen(lng));
		size_t kept = lens[i] < 996 ? lens[i] : 996;
		/* text: first line, '\n', second line (cut to the buffer) */
		size_t want = kept + 1 + kept;
		if (want > SMTP_REPLY_TEXT_MAX)
			want = SMTP_REPLY_TEXT_MAX;
		assert_int_equal(strlen(res.r.text), want);
		assert_int_equal(res.r.text[kept], '\n');
		struct reply_case cl = {"long", lng, strlen(lng), SMTP_REPLY_DONE, 250, "", NULL,
		                        2,      0};
		cl.text = res.r.text;
		check_reply_case(&cl);
		free(lng);
	}
}

static void test_reply_text_is_cut_at_buffer_size(void **state)
{
	char *big = make_lines(50, 200, ' ');
	struct feed_result res;
	feed_one(big, strlen(big), 0, &res);
	assert_int_equal(res.st, SMTP_REPLY_DONE);
	assert_int_equal(res.r.n_lines, 50);
	assert_int_equal(strlen(res.r.text), SMTP_REPLY_TEXT_MAX);
	free(big);
}

/* ========================================================== reply judging */

/* Which code each command can have (RFC 5321 §4.3.2): a reply outside its
 * command's set is a protocol error, above all a 250 to DATA, which would
 * otherwise be taken as a delivery of a message that was never sent. */
static void test_reply_judge_table(void **state)
{
	static const struct {
		const char *name;
		enum smtp_client_cmd cmd;
		int code;
		enum smtp_reply_kind want;
	} cases[] = {
	    {"354 to DATA continues", SMTP_C_DATA, 354, SMTP_RK_CONTINUE},
	    {"250 to DATA is no delivery", SMTP_C_DATA, 250, SMTP_RK_INVALID},
	    {"220 to DATA", SMTP_C_DATA, 220, SMTP_RK_INVALID},
	    {"334 to DATA", SMTP_C_DATA, 334, SMTP_RK_INVALID},
	    {"451 to DATA waits", SMTP_C_DATA, 451, SMTP_RK_TEMP},
	    {"554 to DATA is permanent", SMTP_C_DATA, 554, SMTP_RK_PERM},
	    {"250 to MAIL", SMTP_C_MAIL, 250, SMTP_RK_OK},
	    {"354 to MAIL", SMTP_C_MAIL, 354, SMTP_RK_INVALID},
	    {"452 to MAIL", SMTP_C_MAIL, 452, SMTP_RK_TEMP},
	    {"550 to MAIL", SMTP_C_MAIL, 550, SMTP_RK_PERM},
	    {"251 to RCPT (forwarded)", SMTP_C_RCPT, 251, SMTP_RK_OK},
	    {"252 to RCPT", SMTP_C_RCPT, 252, SMTP_RK_OK},
	    {"354 to RCPT", SMTP_C_RCPT, 354, SMTP_RK_INVALID},
	    {"334 to RCPT", SMTP_C_RCPT, 334, SMTP_RK_INVALID},
	    {"250 to the end of data", SMTP_C_END_OF_DATA, 250, SMTP_RK_OK},
	    {"354 to the end of data", SMTP_C_END_OF_DATA, 354, SMTP_RK_INVALID},
	    {"552 to the end of data", SMTP_C_END_OF_DATA, 552, SMTP_RK_PERM},
	    {"220 greeting", SMTP_C_GREETING, 220, SMTP_RK_OK},
	    {"421 greeting", SMTP_C_GREETING, 421, SMTP_RK_TEMP},
	    {"554 greeting", SMTP_C_GREETING, 554, SMTP_RK_PERM},
	    {"354 greeting", SMTP_C_GREETING, 354, SMTP_RK_INVALID},
	    {"250 to EHLO", SMTP_C_EHLO, 250, SMTP_RK_OK},
	    {"502 to EHLO", SMTP_C_EHLO, 502, SMTP_RK_PERM},
	    {"334 to EHLO", SMTP_C_EHLO, 334, SMTP_RK_INVALID},
	    {"220 to STARTTLS", SMTP_C_STARTTLS, 220, SMTP_RK_OK},
	    {"250 to STARTTLS", SMTP_C_STARTTLS, 250, SMTP_RK_INVALID},
	    {"454 to STARTTLS", SMTP_C_STARTTLS, 454, SMTP_RK_TEMP},
	    {"235 to AUTH", SMTP_C_AUTH, 235, SMTP_RK_OK},
	    {"334 to AUTH continues", SMTP_C_AUTH, 334, SMTP_RK_CONTINUE},
	    {"250 to AUTH", SMTP_C_AUTH, 250, SMTP_RK_INVALID},
	    {"535 to AUTH", SMTP_C_AUTH, 535, SMTP_RK_PERM},
	    {"250 to RSET", SMTP_C_RSET, 250, SMTP_RK_OK},
	    {"354 to RSET", SMTP_C_RSET, 354, SMTP_RK_INVALID},
	    {"221 to QUIT", SMTP_C_QUIT, 221, SMTP_RK_OK},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		enum smtp_reply_kind got = smtp_reply_judge(cases[i].cmd, cases[i].code);
		if (got != cases[i].want)
			fail_msg("%s: got %d, want %d", cases[i].name, (int)got,
			         (int)cases[i].want);
	}
	/* No 3xx is ever a success, no 2xx ever lets DATA's data follow. */
	for (int code = 200; code < 600; code++) {
		if (code >= 300 && code < 400)
			assert_int_not_equal(smtp_reply_judge(SMTP_C_RCPT, code), SMTP_RK_OK);
		if (code < 300)
			assert_int_equal(smtp_reply_judge(SMTP_C_DATA, code), SMTP_RK_INVALID);
	}
}

/* ==================================================================== EHLO */

static void ehlo_from(const char *wire, struct smtp_ehlo_caps *caps)
{
	struct feed_result res;
	feed_one(wire, strlen(wire), 0, &res);
	assert_int_equal(res.st, SMTP_REPLY_DONE);
	smtp_parse_ehlo(&res.r, caps);
}

static void test_ehlo_typical_postfix_capabilities(void **state)
{
	struct smtp_ehlo_caps c;
	ehlo_from("250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n"
	          "250-ETRN\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n"
	          "250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n"
	          "250 CHUNKING\r\n",
	          &c);
	assert_true(c.pipelining);
	assert_true(c.has_size);
	assert_int_equal(c.size, 10240000);
	assert_true(c.starttls);
	assert_true(c.enhancedstatuscodes);
	assert_true(c.eightbitmime);
	assert_true(c.dsn);
	assert_true(c.smtputf8);
	assert_true(c.chunking);
	assert_false(c.binarymime);
	assert_int_equal(c.auth, SMTP_AUTH_PLAIN | SMTP_AUTH_LOGIN);
}

struct ehlo_case {
	const char *name;
	const char *wire;
	bool pipelining, eightbitmime, has_size;
	uint64_t size;
	unsigned auth;
};

static void test_ehlo_table(void **state)
{
	const struct ehlo_case cases[] = {
	    {"greeting only", "250 mx.example.org\r\n", false, false, false, 0, 0},
	    {"greeting line is not a keyword", "250-PIPELINING\r\n250 8BITMIME\r\n", false, true,
	     false, 0, 0},
	    {"keywords are case-insensitive", "250-mx\r\n250-pipelining\r\n250 8bitMime\r\n", true,
	     true, false, 0, 0},
	    {"size without value", "250-mx\r\n250 SIZE\r\n", false, false, true, 0, 0},
	    {"size zero", "250-mx\r\n250 SIZE 0\r\n", false, false, true, 0, 0},
	    {"size 64-bit", "250-mx\r\n250 SIZE 18446744073709551615\r\n", false, false, true,
	     UINT64_MAX, 0},
	    {"size overflow means unknown", "250-mx\r\n250 SIZE 18446744073709551616\r\n", false,
	     false, true, 0, 0},
	    {"size garbage means unknown", "250-mx\r\n250 SIZE 12k\r\n", false, false, true, 0, 0},
	    {"sizex is another keyword", "250-mx\r\n250 SIZEX 12\r\n", false, false, false, 0, 0},
	    {"auth list", "250-mx\r\n250 AUTH CRAM-MD5 xoauth2 OAUTHBEARER\r\n", false, false,
	     false, 0, SMTP_AUTH_CRAM_MD5 | SMTP_AUTH_XOAUTH2 | SMTP_AUTH_OAUTHBEARER},
	    {"old auth= form", "250-mx\r\n250 AUTH=PLAIN LOGIN\r\n", false, false, false, 0,
	     SMTP_AUTH_PLAIN | SMTP_AUTH_LOGIN},
	    {"both auth forms merge", "250-mx\r\n250-AUTH=LOGIN\r\n250 AUTH PLAIN\r\n", false,
	     false, false, 0, SMTP_AUTH_PLAIN | SMTP_AUTH_LOGIN},
	    {"unknown mechanisms ignored", "250-mx\r\n250 AUTH GSSAPI NTLM PLAIN\r\n", false, false,
	     false, 0, SMTP_AUTH_PLAIN},
	    {"auth without mechanisms", "250-mx\r\n250 AUTH\r\n", false, false, false, 0, 0},
	    {"unknown keywords ignored",
	     "250-mx\r\n250-XCLIENT NAME\r\n250-X-EXPS GSSAPI\r\n"
	     "250 PIPELINING\r\n",
	     true, false, false, 0, 0},
	    {"keyword with trailing space", "250-mx\r\n250 PIPELINING \r\n", true, false, false, 0,
	     0},
	    {"not a 250 reply", "502 5.5.1 EHLO not supported\r\n", false, false, false, 0, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct smtp_ehlo_caps c;
		ehlo_from(cases[i].wire, &c);
		if (c.pipelining != cases[i].pipelining ||
		    c.eightbitmime != cases[i].eightbitmime || c.has_size != cases[i].has_size ||
		    c.size != cases[i].size || c.auth != cases[i].auth)
			fail_msg("%s: pipelining %d 8bitmime %d has_size %d size %llu auth %#x",
			         cases[i].name, c.pipelining, c.eightbitmime, c.has_size,
			         (unsigned long long)c.size, c.auth);
	}
}

static void test_ehlo_cut_last_line_is_not_believed(void **state)
{
	/* A huge greeting fills the text buffer so "SIZE 10485760" is cut;
	 * a cut value must not be taken for the limit. */
	struct smtp_reply r;
	memset(&r, 0, sizeof(r));
	r.code = 250;
	r.n_lines = 3;
	size_t n = 0;
	memset(r.text, 'g', SMTP_REPLY_TEXT_MAX - 20);
	n = SMTP_REPLY_TEXT_MAX - 20;
	const char *rest = "\nPIPELINING\nSIZE 10485760";
	size_t room = SMTP_REPLY_TEXT_MAX - n;
	memcpy(r.text + n, rest, room);
	r.text[SMTP_REPLY_TEXT_MAX] = '\0';
	struct smtp_ehlo_caps c;
	smtp_parse_ehlo(&r, &c);
	assert_true(c.pipelining);
	assert_false(c.has_size);
}

/* ========================================================== downconversion */

struct dc_case {
	const char *name;
	const char *in;
	size_t in_len;
	int rc;
	const char *want; /* NULL: same as input */
	size_t want_len;
};

#define DC_SAME NULL, 0
#define DC_FAIL NULL, 0

static const char hdr[] =
    "Received: from a.example by b.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    "From: A <a@example.org>\r\nTo: b@example.net\r\nSubject: test\r\n";

static const char mp_in[] = "From: a@example.org\r\nMIME-Version: 1.0\r\n"
                            "Content-Type: multipart/mixed; boundary=\"=_outer 1\"\r\n\r\n"
                            "This is a multi-part message in MIME format.\r\n"
                            "--=_outer 1\r\n"
                            "Content-Type: text/plain; charset=utf-8\r\n"
                            "Content-Transfer-Encoding: 8bit\r\n\r\n"
                            "Gr\xc3\xbc\xc3\x9f"
                            "e aus K\xc3\xb6ln\r\n"
                            "--=_outer 1\r\n"
                            "Content-Type: application/octet-stream; name=\"a.bin\"\r\n"
                            "Content-Transfer-Encoding: base64\r\n\r\n"
                            "AAECAwQFBgcICQ==\r\n"
                            "--=_outer 1--\r\n"
                            "epilogue\r\n";

static const char mp_out[] = "From: a@example.org\r\nMIME-Version: 1.0\r\n"
                             "Content-Type: multipart/mixed; boundary=\"=_outer 1\"\r\n\r\n"
                             "This is a multi-part message in MIME format.\r\n"
                             "--=_outer 1\r\n"
                             "Content-Type: text/plain; charset=utf-8\r\n"
                             "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                             "Gr=C3=BC=C3=9Fe aus K=C3=B6ln\r\n"
                             "--=_outer 1\r\n"
                             "Content-Type: application/octet-stream; name=\"a.bin\"\r\n"
                             "Content-Transfer-Encoding: base64\r\n\r\n"
                             "AAECAwQFBgcICQ==\r\n"
                             "--=_outer 1--\r\n"
                             "epilogue\r\n";

static const char nested_in[] = "MIME-Version: 1.0\r\n"
                                "Content-Type: multipart/mixed;\r\n\tboundary=outer\r\n\r\n"
                                "--outer\r\n"
                                "Content-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n"
                                "--inner\r\n"
                                "Content-Type: text/plain; charset=utf-8\r\n\r\n"
                                "na\xc3\xafve\r\n"
                                "--inner\r\n"
                                "Content-Type: text/html; charset=utf-8\r\n"
                                "Content-Transfer-Encoding: 8BIT\r\n\r\n"
                                "<p>na\xc3\xafve</p>\r\n"
                                "--inner--\r\n"
                                "--outer\r\n"
                                "Content-Type: text/plain\r\n\r\n"
                                "plain ascii\r\n"
                                "--outer--\r\n";

static const char nested_out[] = "MIME-Version: 1.0\r\n"
                                 "Content-Type: multipart/mixed;\r\n\tboundary=outer\r\n\r\n"
                                 "--outer\r\n"
                                 "Content-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n"
                                 "--inner\r\n"
                                 "Content-Type: text/plain; charset=utf-8\r\n"
                                 "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                                 "na=C3=AFve\r\n"
                                 "--inner\r\n"
                                 "Content-Type: text/html; charset=utf-8\r\n"
                                 "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                                 "<p>na=C3=AFve</p>\r\n"
                                 "--inner--\r\n"
                                 "--outer\r\n"
                                 "Content-Type: text/plain\r\n\r\n"
                                 "plain ascii\r\n"
                                 "--outer--\r\n";

static const char rfc822_in[] = "MIME-Version: 1.0\r\n"
                                "Content-Type: multipart/mixed; boundary=b1\r\n\r\n"
                                "--b1\r\n"
                                "Content-Type: text/plain\r\n\r\n"
                                "Forwarded message below.\r\n"
                                "--b1\r\n"
                                "Content-Type: message/rfc822\r\n"
                                "Content-Transfer-Encoding: 8bit\r\n\r\n"
                                "From: c@example.com\r\n"
                                "Subject: inner\r\n\r\n"
                                "\xe2\x82\xac 100\r\n"
                                "--b1--\r\n";

static const char rfc822_out[] = "MIME-Version: 1.0\r\n"
                                 "Content-Type: multipart/mixed; boundary=b1\r\n\r\n"
                                 "--b1\r\n"
                                 "Content-Type: text/plain\r\n\r\n"
                                 "Forwarded message below.\r\n"
                                 "--b1\r\n"
                                 "Content-Type: message/rfc822\r\n"
                                 "Content-Transfer-Encoding: 7bit\r\n\r\n"
                                 "From: c@example.com\r\n"
                                 "Subject: inner\r\n"
                                 "MIME-Version: 1.0\r\n"
                                 "Content-Type: text/plain; charset=utf-8\r\n"
                                 "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                                 "=E2=82=AC 100\r\n"
                                 "--b1--\r\n";

static void run_dc_case(const struct dc_case *c)
{
	struct tbuf out = TBUF_INIT(1 << 20);
	/* the output is appended: what is already there stays */
	assert_int_equal(tbuf_append_str(&out, "PRE"), TERN_OK);
	int rc = smtp_downconvert_8bit(c->in, c->in_len, &out);
	if (rc != c->rc)
		fail_msg("%s: rc %d, want %d", c->name, rc, c->rc);
	assert_memory_equal(out.data, "PRE", 3);
	if (rc != TERN_OK) {
		assert_int_equal(out.len, 3);
		tbuf_free(&out);
		return;
	}
	const char *want = c->want ? c->want : c->in;
	size_t want_len = c->want ? c->want_len : c->in_len;
	for (size_t i = 3; i < out.len; i++)
		if ((unsigned char)out.data[i] >= 0x80)
			fail_msg("%s: 8-bit byte at %zu", c->name, i - 3);
	if (out.len - 3 != want_len || memcmp(out.data + 3, want, want_len) != 0)
		fail_msg("%s: got\n%.*s\nwant\n%.*s", c->name, (int)(out.len - 3), out.data + 3,
		         (int)want_len, want);
	tbuf_free(&out);
}

static void test_downconvert_table(void **state)
{
	const struct dc_case cases[] = {
	    {"pure 7-bit message is unchanged",
	     S("From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n"), TERN_OK, DC_SAME},
	    {"7-bit MIME with binary label is unchanged",
	     S("MIME-Version: 1.0\r\nContent-Transfer-Encoding: binary\r\n\r\nhi\r\n"), TERN_OK,
	     DC_SAME},
	    {"empty message", S(""), TERN_OK, DC_SAME},
	    {"non-MIME utf-8 body becomes text/plain utf-8 QP",
	     S("From: a@example.org\r\nSubject: hi\r\n\r\ncaf\xc3\xa9\r\n"), TERN_OK,
	     S("From: a@example.org\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
	       "Content-Type: text/plain; charset=utf-8\r\n"
	       "Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n")},
	    {"non-MIME with MIME-Version gets no second one",
	     S("MIME-Version: 1.0\r\nContent-Transfer-Encoding: 8bit\r\nX: y\r\n\r\n\xc3\xa9"),
	     TERN_OK,
	     S("MIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\nX: y\r\n"
	       "Content-Type: text/plain; charset=utf-8\r\n\r\n=C3=A9")},
	    {"non-MIME invalid utf-8 is refused", S("From: a@example.org\r\n\r\ncaf\xe9\r\n"),
	     TERN_EINVAL, DC_FAIL},
	    {"non-MIME overlong utf-8 is refused", S("From: a\r\n\r\n\xc0\xaf\r\n"), TERN_EINVAL,
	     DC_FAIL},
	    {"non-MIME surrogate is refused", S("From: a\r\n\r\n\xed\xa0\x80\r\n"), TERN_EINVAL,
	     DC_FAIL},
	    {"MIME leaf: 8bit label replaced in place",
	     S("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
	       "Content-Transfer-Encoding: 8bit\r\nSubject: x\r\n\r\ncaf\xe9\r\n"),
	     TERN_OK,
	     S("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
	       "Content-Transfer-Encoding: quoted-printable\r\nSubject: x\r\n\r\ncaf=E9\r\n")},
	    {"MIME leaf: folded CTE and a duplicate are replaced by one",
	     S("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding:\r\n"
	       " 8bit\r\nContent-Transfer-Encoding: 7bit\r\n\r\n\xc3\xa9"),
	     TERN_OK,
	     S("Content-Type: text/plain; charset=utf-8\r\n"
	       "Content-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A9")},
	    {"MIME leaf: missing CTE is added",
	     S("Content-Type: text/plain; charset=utf-8\r\n\r\n\xc3\xa9 x \r\n"), TERN_OK,
	     S("Content-Type: text/plain; charset=utf-8\r\n"
	       "Content-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A9 x=20\r\n")},
	    {"multipart: 8-bit text part and base64 attachment", S(mp_in), TERN_OK, S(mp_out)},
	    {"nested multipart", S(nested_in), TERN_OK, S(nested_out)},
	    {"message/rfc822 inside multipart", S(rfc822_in), TERN_OK, S(rfc822_out)},
	    {"part without headers gets a CTE header",
	     S("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n\xc3\xa9\r\n--b--\r\n"),
	     TERN_OK,
	     S("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
	       "Content-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A9\r\n--b--\r\n")},
	    {"multipart/digest parts default to message/rfc822",
	     S("Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n"
	       "Subject: m1\r\n\r\n\xc3\xa9\r\n--d--\r\n"),
	     TERN_OK,
	     S("Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n"
	       "Subject: m1\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
	       "Content-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A9\r\n--d--\r\n")},
	    {"boundary prefix lines are content, padding after delimiter allowed",
	     S("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b \t\r\n\r\n--bx \xc3\xa9\r\n"
	       "--b--\r\n"),
	     TERN_OK,
	     S("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b \t\r\n"
	       "Content-Transfer-Encoding: quoted-printable\r\n\r\n--bx =C3=A9\r\n--b--\r\n")},
	    {"unterminated multipart ends with its last part",
	     S("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n\xc3\xa9"), TERN_OK,
	     S("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
	       "Content-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A9")},
	    {"message/global is a leaf and may be QP",
	     S("Content-Type: message/global\r\n\r\nSubject: \xc3\xa9\r\n\r\nx\r\n"), TERN_OK,
	     S("Content-Type: message/global\r\nContent-Transfer-Encoding: quoted-printable\r\n"
	       "\r\nSubject: =C3=A9\r\n\r\nx\r\n")},
	    {"8-bit header is refused", S("Subject: caf\xc3\xa9\r\n\r\nhello\r\n"), TERN_EINVAL,
	     DC_FAIL},
	    {"8-bit header name is refused",
	     S("X: 1\r\nSubj\xc3\xa9"
	       "ct: x\r\n\r\n\xc3\xa9\r\n"),
	     TERN_EINVAL, DC_FAIL},
	    {"8-bit folded header is refused", S("Subject: a\r\n caf\xc3\xa9\r\n\r\nhello\r\n"),
	     TERN_EINVAL, DC_FAIL},
	    {"8-bit header in a part is refused",
	     S("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
	       "Content-Disposition: attachment; filename=\"\xc3\xa9.txt\"\r\n\r\nx\r\n--b--\r\n"),
	     TERN_EINVAL, DC_FAIL},
	    {"NUL is refused", S("Subject: x\r\n\r\nab\0c\xc3\xa9\r\n"), TERN_EINVAL, DC_FAIL},
	    {"NUL is refused even without 8-bit", S("Subject: x\r\n\r\nab\0c\r\n"), TERN_EINVAL,
	     DC_FAIL},
	    {"binary part is refused",
	     S("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
	       "Content-Transfer-Encoding: binary\r\n\r\n\xff\xfe\r\n--b--\r\n"),
	     TERN_EINVAL, DC_FAIL},
	    {"8-bit preamble is refused",
	     S("Content-Type: multipart/mixed; boundary=b\r\n\r\nPr\xc3\xa9\r\n--b\r\n\r\nx\r\n"
	       "--b--\r\n"),
	     TERN_EINVAL, DC_FAIL},
	    {"8-bit epilogue is refused",
	     S("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n"
	       "\xc3\xa9\r\n"),
	     TERN_EINVAL, DC_FAIL},
	    {"multipart without boundary is refused",
	     S("Content-Type: multipart/mixed\r\n\r\n\xc3\xa9\r\n"), TERN_EINVAL, DC_FAIL},
	    {"multipart whose boundary never appears is refused",
	     S("Content-Type: multipart/mixed; boundary=zz\r\n\r\n\xc3\xa9\r\n"), TERN_EINVAL,
	     DC_FAIL},
	    {"base64 part holding raw 8-bit is refused",
	     S("Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n\xc3\xa9\r\n"),
	     TERN_EINVAL, DC_FAIL},
	    {"unknown CTE holding 8-bit is refused",
	     S("Content-Type: text/plain\r\nContent-Transfer-Encoding: x-uue\r\n\r\n\xc3\xa9\r\n"),
	     TERN_EINVAL, DC_FAIL},
	    {"message/partial with 8-bit is refused",
	     S("Content-Type: message/partial; id=x; number=1\r\n\r\n\xc3\xa9\r\n"), TERN_EINVAL,
	     DC_FAIL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		run_dc_case(&cases[i]);
}

static void test_downconvert_received_headers_kept_verbatim(void **state)
{
	struct tbuf in = TBUF_INIT(1 << 16), out = TBUF_INIT(1 << 16);
	assert_int_equal(tbuf_append_str(&in, hdr), TERN_OK);
	assert_int_equal(tbuf_append_str(&in, "\r\n\xc3\xa9t\xc3\xa9\r\n"), TERN_OK);
	assert_int_equal(smtp_downconvert_8bit(in.data, in.len, &out), TERN_OK);
	assert_memory_equal(out.data, hdr, strlen(hdr));
	assert_non_null(strstr(out.data, "\r\n\r\n=C3=A9t=C3=A9\r\n"));
	tbuf_free(&in);
	tbuf_free(&out);
}

/* Builds depth levels of message/rfc822 around an 8-bit body. */
static void nested_rfc822(size_t depth, struct tbuf *b)
{
	for (size_t i = 0; i < depth; i++)
		assert_int_equal(tbuf_append_str(b, "Content-Type: message/rfc822\r\n\r\n"),
		                 TERN_OK);
	assert_int_equal(tbuf_append_str(b, "Subject: x\r\n\r\n\xc3\xa9\r\n"), TERN_OK);
}

static void test_downconvert_nesting_depth_is_bounded(void **state)
{
	struct tbuf in = TBUF_INIT(1 << 16), out = TBUF_INIT(1 << 16);
	nested_rfc822(10, &in);
	assert_int_equal(smtp_downconvert_8bit(in.data, in.len, &out), TERN_OK);
	assert_non_null(strstr(out.data, "=C3=A9"));
	tbuf_reset(&in);
	tbuf_reset(&out);
	nested_rfc822(500, &in);
	assert_int_equal(smtp_downconvert_8bit(in.data, in.len, &out), TERN_EINVAL);
	assert_int_equal(out.len, 0);
	tbuf_reset(&in);
	/* nested multiparts too */
	for (int i = 0; i < 100; i++)
		assert_int_equal(tbuf_printf(&in,
		                             "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n"
		                             "--b%d\r\n",
		                             i, i),
		                 TERN_OK);
	assert_int_equal(tbuf_append_str(&in, "\r\n\xc3\xa9\r\n"), TERN_OK);
	assert_int_equal(smtp_downconvert_8bit(in.data, in.len, &out), TERN_EINVAL);
	tbuf_free(&in);
	tbuf_free(&out);
}

static void test_downconvert_output_cap_leaves_buffer_unchanged(void **state)
{
	struct tbuf out = TBUF_INIT(sizeof(mp_out) / 2);
	assert_int_equal(tbuf_append_str(&out, "x"), TERN_OK);
	assert_int_equal(smtp_downconvert_8bit(mp_in, sizeof(mp_in) - 1, &out), TERN_ELIMIT);
	assert_int_equal(out.len, 1);
	assert_string_equal(out.data, "x");
	tbuf_free(&out);
}

static void test_downconvert_long_8bit_lines_fold_under_76(void **state)
{
	struct tbuf in = TBUF_INIT(1 << 16), out = TBUF_INIT(1 << 16), dec = TBUF_INIT(1 << 16);
	assert_int_equal(tbuf_append_str(&in, "Subject: long\r\n\r\n"), TERN_OK);
	size_t body = in.len;
	for (int i = 0; i < 300; i++)
		assert_int_equal(tbuf_append_str(&in, "\xc3\xa9 "), TERN_OK);
	assert_int_equal(tbuf_append_str(&in, "\r\nend\r\n"), TERN_OK);
	assert_int_equal(smtp_downconvert_8bit(in.data, in.len, &out), TERN_OK);
	const char *b = strstr(out.data, "\r\n\r\n");
	assert_non_null(b);
	b += 4;
	size_t col = 0;
	for (const char *p = b; *p; p++) {
		if (*p == '\r') {
			col = 0;
			p++;
			continue;
		}
		assert_true(++col <= 76);
	}
	assert_int_equal(tern_qp_decode(b, strlen(b), &dec), TERN_OK);
	assert_int_equal(dec.len, in.len - body);
	assert_memory_equal(dec.data, in.data + body, dec.len);
	tbuf_free(&in);
	tbuf_free(&out);
	tbuf_free(&dec);
}

/* ----------------------------------------- independent check with Python */

/* 0: python agrees; 1: it does not; -1: python unavailable. */
static int python_check(const char *out, size_t out_len, const char *const *texts, size_t n)
{
	if (access("/usr/bin/python3", X_OK) != 0)
		return -1;
	char path[] = "/tmp/tern_dc_XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	FILE *f = fdopen(fd, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(out, 1, out_len, f), out_len);
	assert_int_equal(fclose(f), 0);
	/* Every text/plain and text/html part, in order, must decode to the
	 * original text, every byte of the file must be 7-bit, and the parser
	 * must find no defect (bad boundaries, bad QP padding ...). */
	static const char script[] =
	    "import sys,email,email.policy\n"
	    "b=open(sys.argv[1],\"rb\").read()\n"
	    "assert all(x<0x80 for x in b), \"8-bit byte\"\n"
	    "m=email.message_from_bytes(b,policy=email.policy.default)\n"
	    "got=[p.get_content().replace(\"\\r\\n\",\"\\n\") for p in m.walk()"
	    " if p.get_content_maintype()==\"text\"]\n"
	    "want=[bytes.fromhex(h).decode(\"utf-8\").replace(\"\\r\\n\",\"\\n\")"
	    " for h in sys.argv[2:]]\n"
	    "assert got==want, (got,want)\n"
	    "assert not [p.defects for p in m.walk() if p.defects], \"defects\"\n";
	struct tbuf cmd = TBUF_INIT(1 << 16);
	assert_int_equal(tbuf_printf(&cmd, "/usr/bin/python3 -c '%s' %s", script, path), TERN_OK);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(tbuf_append_str(&cmd, " "), TERN_OK);
		for (const unsigned char *p = (const unsigned char *)texts[i]; *p; p++)
			assert_int_equal(tbuf_printf(&cmd, "%02x", *p), TERN_OK);
		if (!*texts[i]) /* fromhex("") is fine, but keep the argument */
			assert_int_equal(tbuf_append_str(&cmd, "''"), TERN_OK);
	}
	int st = system(cmd.data);
	tbuf_free(&cmd);
	unlink(path);
	return st == 0 ? 0 : 1;
}

static void test_downconvert_python_email_reads_the_original_text(void **state)
{
	static const char non_mime[] = "From: a@example.org\r\nSubject: hi\r\n\r\n"
	                               "Gr\xc3\xbc\xc3\x9f"
	                               "e, \xe2\x82\xac 5 = five \r\n"
	                               "line two\twith tab\r\n";
	const struct {
		const char *in;
		size_t len;
		const char *texts[4];
		size_t n;
	} cases[] = {
	    {S(non_mime),
	     {"Gr\xc3\xbc\xc3\x9f"
	      "e, \xe2\x82\xac 5 = five \r\nline two\twith tab\r\n"},
	     1},
	    {S(mp_in),
	     {"Gr\xc3\xbc\xc3\x9f"
	      "e aus K\xc3\xb6ln"},
	     1},
	    {S(nested_in), {"na\xc3\xafve", "<p>na\xc3\xafve</p>", "plain ascii"}, 3},
	    {S(rfc822_in), {"Forwarded message below.", "\xe2\x82\xac 100"}, 2},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tbuf out = TBUF_INIT(1 << 20);
		assert_int_equal(smtp_downconvert_8bit(cases[i].in, cases[i].len, &out), TERN_OK);
		int r = python_check(out.data, out.len, cases[i].texts, cases[i].n);
		tbuf_free(&out);
		if (r < 0)
			skip();
		if (r != 0)
			fail_msg("python disagrees on case %zu", i);
	}
}

static void test_downconvert_soft_break_never_makes_a_boundary_line(void **state)
{
	/* "é" + 69 'x' fills 75 columns, so the soft break falls just before
	 * "--b": left as it is, the continuation line would be "--b", the
	 * multipart's delimiter, and cut the part short. */
	struct tbuf in = TBUF_INIT(4096), out = TBUF_INIT(4096), want = TBUF_INIT(4096);
	const char *head = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
	                   "Content-Type: text/plain; charset=utf-8\r\n\r\n";
	assert_int_equal(tbuf_append_str(&in, head), TERN_OK);
	assert_int_equal(tbuf_append_str(&in, "\xc3\xa9"), TERN_OK);
	for (int i = 0; i < 69; i++)
		assert_int_equal(tbuf_append_str(&in, "x"), TERN_OK);
	assert_int_equal(tbuf_append_str(&in, "--b\r\n--b--\r\n"), TERN_OK);

	assert_int_equal(tbuf_append_str(&want,
	                                 "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
	                                 "--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
	                                 "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
	                                 "=C3=A9"),
	                 TERN_OK);
	for (int i = 0; i < 69; i++)
		assert_int_equal(tbuf_append_str(&want, "x"), TERN_OK);
	assert_int_equal(tbuf_append_str(&want, "=\r\n=2D-b\r\n--b--\r\n"), TERN_OK);

	assert_int_equal(smtp_downconvert_8bit(in.data, in.len, &out), TERN_OK);
	assert_string_equal(out.data, want.data);
	tbuf_free(&in);
	tbuf_free(&out);
	tbuf_free(&want);
}

static void test_downconvert_refuses_boundary_ending_in_space(void **state)
{
	/* RFC 2046 forbids it and readers disagree (Python strips the space,
	 * mime4j does not), so any rewrite would change someone's parts. */
	static const char in[] = "Content-Type: multipart/mixed; boundary=\"b \"\r\n\r\n"
	                         "--b \r\n\r\n\xc3\xa9\r\n--b\r\n\r\nx\r\n--b --\r\n";
	struct tbuf out = TBUF_INIT(4096);
	assert_int_equal(smtp_downconvert_8bit(in, sizeof(in) - 1, &out), TERN_EINVAL);
	tbuf_free(&out);
}

static bool read_file(const char *path, struct tbuf *b)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return false;
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		assert_int_equal(tbuf_append(b, chunk, n), TERN_OK);
	fclose(f);
	return true;
}

static void write_file(const char *path, const char *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(p, 1, n, f), n);
	assert_int_equal(fclose(f), 0);
}

static bool all_base64ish(const char *p, const char *end)
{
	for (; p < end; p++)
		if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n",
		            *p) ||
		    *p == '\0')
			return false;
	return true;
}

/* Makes a 7-bit test message 8-bit where it is most likely body text:
 * after the top header block, in lines without ':' that do not start
 * with '-' and do not look like base64, every 'e' becomes U+00E9. Some
 * of those lines are preambles or epilogues, which are rightly refused. */
static void make_8bit(const char *in, size_t n, struct tbuf *out)
{
	bool in_hdr = true;
	const char *p = in, *end = in + n;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *next = nl ? nl + 1 : end;
		size_t ll = (size_t)(next - p);
		bool blank = (ll == 1 && p[0] == '\n') || (ll == 2 && p[0] == '\r' && p[1] == '\n');
		if (in_hdr || memchr(p, ':', ll) || p[0] == '-' || all_base64ish(p, next)) {
			assert_int_equal(tbuf_append(out, p, ll), TERN_OK);
			if (blank)
				in_hdr = false;
		} else {
			for (const char *q = p; q < next; q++)
				assert_int_equal(*q == 'e' ? tbuf_append_str(out, "\xc3\xa9")
				                           : tbuf_append(out, q, 1),
				                 TERN_OK);
		}
		p = next;
	}
}

static void test_downconvert_agrees_with_python_on_mime4j_messages(void **state)
{
	if (access("/usr/bin/python3", X_OK) != 0)
		skip();
	char dirpath[1024];
	assert_true(testdata_path(dirpath, sizeof(dirpath), "mime4j"));
	DIR *d = opendir(dirpath);
	if (!d)
		fail_msg("cannot open %s (tests/data/mime4j; TERN_TESTDATA overrides)", dirpath);
	char tmp[] = "/tmp/tern_dc4j_XXXXXX";
	assert_non_null(mkdtemp(tmp));
	int total = 0, converted = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		size_t nl = strlen(de->d_name);
		if (nl < 5 || strcmp(de->d_name + nl - 4, ".msg") != 0)
			continue;
		char path[2048];
		snprintf(path, sizeof(path), "%s/%s", dirpath, de->d_name);
		struct tbuf raw = TBUF_INIT(1 << 22), in = TBUF_INIT(1 << 22),
		            out = TBUF_INIT(1 << 23);
		assert_true(read_file(path, &raw));
		/* as it is: a 7-bit message comes out unchanged (obsolete.msg
		 * has an 8-bit header byte and is refused) */
		bool seven = true;
		for (size_t i = 0; i < raw.len; i++)
			seven &= (unsigned char)raw.data[i] < 0x80;
		int rc0 = smtp_downconvert_8bit(raw.data, raw.len, &out);
		if (seven) {
			assert_int_equal(rc0, TERN_OK);
			assert_int_equal(out.len, raw.len);
			assert_memory_equal(out.data, raw.data, raw.len);
		} else {
			assert_int_equal(rc0, TERN_EINVAL);
		}
		tbuf_reset(&out);
		make_8bit(raw.data, raw.len, &in);
		int rc = smtp_downconvert_8bit(in.data, in.len, &out);
		assert_true(rc == TERN_OK || rc == TERN_EINVAL);
		total++;
		if (rc == TERN_OK) {
			converted++;
			snprintf(path, sizeof(path), "%s/%.*s.in", tmp, (int)(nl - 4), de->d_name);
			write_file(path, in.data, in.len);
			snprintf(path, sizeof(path), "%s/%.*s.out", tmp, (int)(nl - 4), de->d_name);
			write_file(path, out.data, out.len);
		}
		tbuf_free(&raw);
		tbuf_free(&in);
		tbuf_free(&out);
	}
	closedir(d);
	/* Same leaves (type and decoded bytes) from the 8-bit input and the
	 * converted output, and an output of 7-bit bytes only. */
	static const char script[] = "import sys,os,glob,email\n"
	                             "def leaves(b):\n"
	                             "    m=email.message_from_bytes(b)\n"
	                             "    return [(p.get_content_type(),p.get_payload(decode=True))"
	                             " for p in m.walk() if not p.is_multipart()]\n"
	                             "bad=[]\n"
	                             "for f in sorted(glob.glob(sys.argv[1]+\"/*.in\")):\n"
	                             "    a=open(f,\"rb\").read()\n"
	                             "    b=open(f[:-3]+\".out\",\"rb\").read()\n"
	                             "    if any(x>=0x80 for x in b) or leaves(a)!=leaves(b):\n"
	                             "        bad.append(os.path.basename(f))\n"
	                             "if bad: print(\"python disagrees:\",bad)\n"
	                             "sys.exit(1 if bad else 0)\n";
	struct tbuf cmd = TBUF_INIT(1 << 16);
	assert_int_equal(tbuf_printf(&cmd, "/usr/bin/python3 -c '%s' %s", script, tmp), TERN_OK);
	int st = system(cmd.data);
	tbuf_free(&cmd);
	assert_int_equal(tbuf_printf(&cmd, "rm -rf -- %s", tmp), TERN_OK);
	assert_int_equal(system(cmd.data), 0);
	tbuf_free(&cmd);
	assert_int_equal(st, 0);
	assert_true(total >= 30);
	/* enough of them really went through the converter */
	assert_true(converted >= 10);
}

/* ============================================================ DATA text */

static void collect(void *arg, const char *p, size_t n)
{
	assert_true(n > 0); /* runs are never empty */
	assert_int_equal(tbuf_append(arg, p, n), TERN_OK);
}

static void encode(const char *in, size_t len, struct tbuf *out)
{
	tbuf_init(out, 1 << 20);
	smtp_data_encode(in, len, collect, out);
}

static void test_data_encode_table(void **state)
{
	(void)state;
	static const struct {
		const char *in, *out;
	} cases[] = {
	    {"", ".\r\n"},
	    {"a\r\n", "a\r\n.\r\n"},
	    {"a", "a\r\n.\r\n"}, /* a last line gets its CRLF */
	    {".", "..\r\n.\r\n"},
	    {".a\r\n", "..a\r\n.\r\n"}, /* the first line is a line too */
	    {"..\r\n", "...\r\n.\r\n"},
	    {"a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n"},
	    {"a.b\r\n x.\r\n", "a.b\r\n x.\r\n.\r\n"}, /* dots inside lines untouched */
	    /* SMTP smuggling: bare LF or CR around a dot never ends the data */
	    {"hello\n.\r\nMAIL FROM:<x@y>\r\n", "hello\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n"},
	    {"hello\r\n.\nMAIL FROM:<x@y>\r\n", "hello\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n"},
	    {"hello\r.\rRCPT\r\n", "hello\r\n..\r\nRCPT\r\n.\r\n"},
	    {"hello\n.\n", "hello\r\n..\r\n.\r\n"},
	    {"a\n\nb", "a\r\n\r\nb\r\n.\r\n"},
	    {"a\r\r\n", "a\r\n\r\n.\r\n"}, /* bare CR, then CRLF */
	    {"a\n\r", "a\r\n\r\n.\r\n"},   /* LF CR is two line ends */
	    {"\n", "\r\n.\r\n"},
	    {"\r", "\r\n.\r\n"},
	    {"\r\n.", "\r\n..\r\n.\r\n"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tbuf out;
		encode(cases[i].in, strlen(cases[i].in), &out);
		size_t want = strlen(cases[i].out);
		if (out.len != want || memcmp(out.data, cases[i].out, want) != 0)
			fail_msg("case %zu: got \"%.*s\"", i, (int)out.len, out.data);
		tbuf_free(&out);
	}
}

/* NUL cannot travel in DATA, and a peer that drops it must not find a "."
 * line that was not stuffed: NULs are left out, a line's start stays its
 * start (smtpsmug's "nullbefore", \r\n\0.\r\n, smuggled past the old
 * encoder to such a peer). */
static void test_data_encode_leaves_out_nul(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		size_t len;
		const char *out;
	} cases[] = {
	    {S("hello\r\n\0.\r\nMAIL FROM:<e@x>\r\n"), "hello\r\n..\r\nMAIL FROM:<e@x>\r\n.\r\n"},
	    {S("\0.\r\n"), "..\r\n.\r\n"},
	    {S("\0\0.\0\r\n"), "..\r\n.\r\n"},
	    {S("a\0b\r\n"), "ab\r\n.\r\n"},
	    {S("a\n\0.\n"), "a\r\n..\r\n.\r\n"},
	    {S("x\0"), "x\r\n.\r\n"},
	    {S("\0"), ".\r\n"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tbuf out;
		encode(cases[i].in, cases[i].len, &out);
		size_t want = strlen(cases[i].out);
		if (out.len != want || memcmp(out.data, cases[i].out, want) != 0)
			fail_msg("case %zu: got \"%.*s\"", i, (int)out.len, out.data);
		tbuf_free(&out);
	}
}

/* Random messages over the bytes that matter: the output always has CRLF
 * line ends only, exactly one "." line (the last), and un-stuffing gives
 * back the input with its line ends made CRLF. */
static void test_data_encode_random_messages_round_trip(void **state)
{
	(void)state;
	static const char alphabet[] = {'a', '.', '\r', '\n', 'M'};
	for (int round = 0; round < 20000; round++) {
		char in[40];
		size_t len = (size_t)(rng() % sizeof(in));
		for (size_t i = 0; i < len; i++)
			in[i] = alphabet[rng() % sizeof(alphabet)];
		/* reference: line ends normalised, then a final CRLF if missing */
		char norm[2 * sizeof(in) + 2];
		size_t nn = 0;
		for (size_t i = 0; i < len; i++) {
			if (in[i] == '\r' && i + 1 < len && in[i + 1] == '\n') {
				norm[nn++] = '\r';
				norm[nn++] = '\n';
				i++;
			} else if (in[i] == '\r' || in[i] == '\n') {
				norm[nn++] = '\r';
				norm[nn++] = '\n';
			} else {
				norm[nn++] = in[i];
			}
		}
		if (nn > 0 && !(nn >= 2 && norm[nn - 2] == '\r' && norm[nn - 1] == '\n')) {
			norm[nn++] = '\r';
			norm[nn++] = '\n';
		}
		struct tbuf out;
		encode(in, len, &out);
		const char *o = out.data;
		assert_true(out.len >= 3);
		assert_memory_equal(o + out.len - 3, ".\r\n", 3);
		assert_true(out.len == 3 || (o[out.len - 5] == '\r' && o[out.len - 4] == '\n'));
		for (size_t i = 0; i < out.len; i++) {
			if (o[i] == '\r')
				assert_true(i + 1 < out.len && o[i + 1] == '\n');
			if (o[i] == '\n')
				assert_true(i > 0 && o[i - 1] == '\r');
		}
		/* un-stuff every line but the final "." */
		char back[sizeof(norm) * 2];
		size_t nb = 0;
		size_t body_len = out.len - 3;
		for (size_t i = 0; i < body_len;) {
			size_t e = i;
			while (o[e] != '\n')
				e++;
			size_t s = i;
			if (o[s] == '.') {
				/* a stuffed line: a lone "." line would have ended the data */
				assert_true(e - s >= 3);
				s++;
			}
			memcpy(back + nb, o + s, e + 1 - s);
			nb += e + 1 - s;
			i = e + 1;
		}
		if (nb != nn || memcmp(back, norm, nn) != 0)
			fail_msg("round %d: input \"%.*s\" did not round-trip", round, (int)len,
			         in);
		tbuf_free(&out);
	}
}

/* The byte-wise encoder as it was before the bulk line path: the reference
 * that the bulk path must match byte for byte. */
static void encode_bytewise(const char *msg, size_t len, struct tbuf *out)
{
	tbuf_init(out, 1 << 20);
	size_t run = 0;
	bool bol = true;
	for (size_t i = 0; i < len; i++) {
		char ch = msg[i];
		if (ch == '\0') {
			if (i > run)
				collect(out, msg + run, i - run);
			run = i + 1;
			continue;
		}
		if (bol && ch == '.') {
			if (i > run)
				collect(out, msg + run, i - run);
			collect(out, ".", 1);
			run = i;
		}
		bol = false;
		if (ch == '\r' && i + 1 < len && msg[i + 1] == '\n') {
			i++;
			bol = true;
		} else if (ch == '\r' || ch == '\n') {
			if (i > run)
				collect(out, msg + run, i - run);
			collect(out, "\r\n", 2);
			run = i + 1;
			bol = true;
		}
	}
	if (len > run)
		collect(out, msg + run, len - run);
	if (!bol)
		collect(out, "\r\n", 2);
	collect(out, ".\r\n", 3);
}

/* Longer lines with NUL, 8-bit and stray CR/LF among plain CRLF lines (the
 * bulk path's cases): the output equals the byte-wise encoder's. */
static void test_data_encode_bulk_lines_match_bytewise(void **state)
{
	(void)state;
	static const char *const pieces[] = {"\r\n", "\r", "\n", ".", "\0", "\x80", "abc", "\r\n."};
	static const size_t piece_len[] = {2, 1, 1, 1, 1, 1, 3, 3};
	char in[2048];
	for (int round = 0; round < 3000; round++) {
		size_t len = 0, target = (size_t)(rng() % (sizeof(in) - 300));
		while (len < target) {
			uint64_t r = rng();
			if (r % 5 == 0) {
				size_t n = (size_t)((r >> 8) % 200);
				memset(in + len, 'x', n);
				len += n;
			} else {
				size_t k =
				    (size_t)((r >> 8) % (sizeof(piece_len) / sizeof(piece_len[0])));
				memcpy(in + len, pieces[k], piece_len[k]);
				len += piece_len[k];
			}
		}
		struct tbuf a, b;
		encode(in, len, &a);
		encode_bytewise(in, len, &b);
		assert_int_equal(a.len, b.len);
		assert_memory_equal(a.data, b.data, a.len);
		tbuf_free(&a);
		tbuf_free(&b);
	}
}

/* ========================================================== BDAT chunk */

/* The chunk of a non-BINARYMIME message (RFC 3030 with line ends
 * normalised): DATA's text without the stuffing and the final ".\r\n";
 * the count returned is the chunk's size, the BDAT's argument. */
static void test_chunk_encode_table(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		size_t len;
		const char *out;
	} cases[] = {
	    {S(""), ""},
	    {S("a\r\n"), "a\r\n"},
	    {S("a"), "a\r\n"}, /* a last line gets its CRLF */
	    {S("."), ".\r\n"}, /* no stuffing: BDAT has no end-of-data line */
	    {S(".a\r\n..\r\n.\r\n"), ".a\r\n..\r\n.\r\n"},
	    /* bare LF and CR become CRLF: a lenient peer sees no other line ends */
	    {S("hello\n.\r\nMAIL FROM:<x@y>\r\n"), "hello\r\n.\r\nMAIL FROM:<x@y>\r\n"},
	    {S("hello\r.\rRCPT\r\n"), "hello\r\n.\r\nRCPT\r\n"},
	    {S("a\r\r\n"), "a\r\n\r\n"},
	    {S("a\n\r"), "a\r\n\r\n"},
	    {S("\n"), "\r\n"},
	    /* NUL left out, as DATA does */
	    {S("a\0b\r\n\0.\r\n"), "ab\r\n.\r\n"},
	    {S("\0"), ""},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tbuf out;
		tbuf_init(&out, 1 << 20);
		uint64_t n = smtp_chunk_encode(cases[i].in, cases[i].len, collect, &out);
		size_t want = strlen(cases[i].out);
		if (out.len != want || (want && memcmp(out.data, cases[i].out, want) != 0))
			fail_msg("case %zu: got \"%.*s\"", i, (int)out.len, out.data);
		assert_int_equal(n, out.len);
		tbuf_free(&out);
	}
}

/* Over random messages (the bulk path's pieces): stuffing the chunk's lines
 * and adding ".\r\n" gives DATA's text byte for byte, and the count is the
 * chunk's length. So a message goes the same whichever way it is sent. */
static void test_chunk_encode_is_data_unstuffed(void **state)
{
	(void)state;
	static const char *const pieces[] = {"\r\n", "\r", "\n", ".", "\0", "\x80", "abc", "\r\n."};
	static const size_t piece_len[] = {2, 1, 1, 1, 1, 1, 3, 3};
	char in[2048];
	for (int round = 0; round < 3000; round++) {
		size_t len = 0, target = (size_t)(rng() % (sizeof(in) - 300));
		while (len < target) {
			uint64_t r = rng();
			if (r % 5 == 0) {
				size_t n = (size_t)((r >> 8) % 200);
				memset(in + len, 'x', n);
				len += n;
			} else {
				size_t k =
				    (size_t)((r >> 8) % (sizeof(piece_len) / sizeof(piece_len[0])));
				memcpy(in + len, pieces[k], piece_len[k]);
				len += piece_len[k];
			}
		}
		struct tbuf chunk, data, stuffed;
		tbuf_init(&chunk, 1 << 20);
		uint64_t n = smtp_chunk_encode(in, len, collect, &chunk);
		assert_int_equal(n, chunk.len);
		encode(in, len, &data);
		tbuf_init(&stuffed, 1 << 20);
		bool bol = true;
		for (size_t i = 0; i < chunk.len; i++) {
			if (bol && chunk.data[i] == '.')
				collect(&stuffed, ".", 1);
			collect(&stuffed, chunk.data + i, 1);
			bol = chunk.data[i] == '\n';
		}
		collect(&stuffed, ".\r\n", 3);
		assert_int_equal(stuffed.len, data.len);
		assert_memory_equal(stuffed.data, data.data, data.len);
		tbuf_free(&chunk);
		tbuf_free(&data);
		tbuf_free(&stuffed);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_reply_table),
	    cmocka_unit_test(test_reply_pipelined_replies_in_one_buffer),
	    cmocka_unit_test(test_reply_line_and_count_limits),
	    cmocka_unit_test(test_reply_text_is_cut_at_buffer_size),
	    cmocka_unit_test(test_reply_judge_table),
	    cmocka_unit_test(test_ehlo_typical_postfix_capabilities),
	    cmocka_unit_test(test_ehlo_table),
	    cmocka_unit_test(test_ehlo_cut_last_line_is_not_believed),
	    cmocka_unit_test(test_downconvert_table),
	    cmocka_unit_test(test_downconvert_received_headers_kept_verbatim),
	    cmocka_unit_test(test_downconvert_nesting_depth_is_bounded),
	    cmocka_unit_test(test_downconvert_output_cap_leaves_buffer_unchanged),
	    cmocka_unit_test(test_downconvert_long_8bit_lines_fold_under_76),
	    cmocka_unit_test(test_downconvert_python_email_reads_the_original_text),
	    cmocka_unit_test(test_downconvert_soft_break_never_makes_a_boundary_line),
	    cmocka_unit_test(test_downconvert_refuses_boundary_ending_in_space),
	    cmocka_unit_test(test_downconvert_agrees_with_python_on_mime4j_messages),
	    cmocka_unit_test(test_data_encode_table),
	    cmocka_unit_test(test_data_encode_leaves_out_nul),
	    cmocka_unit_test(test_data_encode_random_messages_round_trip),
	    cmocka_unit_test(test_data_encode_bulk_lines_match_bytewise),
	    cmocka_unit_test(test_chunk_encode_table),
	    cmocka_unit_test(test_chunk_encode_is_data_unstuffed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
