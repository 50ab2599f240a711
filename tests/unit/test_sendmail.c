/*
 * test_sendmail.c — the pure pieces of local submission (src/cli/submit.h):
 * the request framing (parse, encode, incremental reads, every refusal),
 * line-end repair, RFC 5322 address lists, the header rewrite (Bcc gone,
 * From/Date/Message-ID added only when missing, -t recipients, Resent-),
 * sendmail's command line as Postfix reads it, and where a lone "." ends
 * the input.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

#include <cmocka.h>

#include "cli/submit.h"
#include "core/err.h"
#include "smtp/smtp.h"

#define MAX_DATA (1u << 20)

/* ------------------------------------------------------------- framing */

static const char FULL_REQ[] = "TERN-SUBMIT 1\n"
                               "FROM alice@example.org\n"
                               "NAME Alice Example\n"
                               "RCPT bob@example.org\n"
                               "RCPT Carol <carol@example.org>, dave\n"
                               "EXTRACT\n"
                               "BODY 8BITMIME\n"
                               "RET HDRS\n"
                               "NOTIFY SUCCESS,DELAY\n"
                               "ENVID abc123\n"
                               "DATA 12\n"
                               "Subject: x\n\n"
                               "END\n";

static void test_parse_full_request(void **state)
{
	(void)state;
	struct submit_req r;
	size_t used;
	const char *why;
	size_t len = sizeof(FULL_REQ) - 1;
	assert_int_equal(submit_parse(FULL_REQ, len, MAX_DATA, &r, &used, &why), SUBMIT_PARSE_DONE);
	assert_int_equal(used, len);
	assert_true(r.has_from);
	assert_string_equal(r.from, "alice@example.org");
	assert_string_equal(r.name, "Alice Example");
	assert_int_equal(r.n_rcpts, 2);
	assert_string_equal(r.rcpts[1], "Carol <carol@example.org>, dave");
	assert_true(r.extract);
	assert_int_equal(r.body, SMTP_BODY_8BITMIME);
	assert_int_equal(r.ret, SMTP_RET_HDRS);
	assert_int_equal(r.notify, SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_DELAY);
	assert_string_equal(r.envid, "abc123");
	assert_int_equal(r.len, 12);
	assert_memory_equal(r.data, "Subject: x\n\n", 12);
	submit_req_free(&r);
}

/* Every proper prefix of a valid request asks for more, never errs. */
static void test_parse_every_prefix_wants_more(void **state)
{
	(void)state;
	size_t len = sizeof(FULL_REQ) - 1;
	for (size_t n = 0; n < len; n++) {
		struct submit_req r;
		size_t used;
		const char *why;
		assert_int_equal(submit_parse(FULL_REQ, n, MAX_DATA, &r, &used, &why),
		                 SUBMIT_PARSE_MORE);
		/* Once the DATA line is in, the parser says how much it needs. */
		if (n >= (size_t)(strstr(FULL_REQ, "DATA 12\n") - FULL_REQ) + 8)
			assert_int_equal(used, len);
	}
}

static void test_parse_null_sender_and_no_options(void **state)
{
	(void)state;
	static const char req[] = "TERN-SUBMIT 1\nFROM \nRCPT a@b\nDATA 0\nEND\n";
	struct submit_req r;
	size_t used;
	const char *why;
	assert_int_equal(submit_parse(req, sizeof(req) - 1, MAX_DATA, &r, &used, &why),
	                 SUBMIT_PARSE_DONE);
	assert_true(r.has_from);
	assert_string_equal(r.from, "");
	assert_null(r.name);
	assert_false(r.extract);
	assert_int_equal(r.len, 0);
	submit_req_free(&r);
}

struct bad_case {
	const char *name;
	const char *req;
	enum submit_parse_status want;
};

static void test_parse_refusals(void **state)
{
	(void)state;
	char longline[SUBMIT_LINE_MAX + 64];
	memcpy(longline, "TERN-SUBMIT 1\nRCPT ", 19);
	memset(longline + 19, 'a', SUBMIT_LINE_MAX + 10);
	longline[19 + SUBMIT_LINE_MAX + 10] = '\0';
	const struct bad_case cases[] = {
	    {"wrong magic", "HELO\n", SUBMIT_PARSE_ERROR},
	    {"wrong magic prefix early", "TERX", SUBMIT_PARSE_ERROR},
	    {"magic with more", "TERN-SUBMIT 12\n", SUBMIT_PARSE_ERROR},
	    {"CR in a line", "TERN-SUBMIT 1\r\n", SUBMIT_PARSE_ERROR},
	    {"control byte", "TERN-SUBMIT 1\nRCPT a\x01@b\nDATA 0\nEND\n", SUBMIT_PARSE_ERROR},
	    {"unknown line", "TERN-SUBMIT 1\nHELO x\nDATA 0\nEND\n", SUBMIT_PARSE_ERROR},
	    {"FROM twice", "TERN-SUBMIT 1\nFROM a\nFROM b\nDATA 0\nEND\n", SUBMIT_PARSE_ERROR},
	    {"FROM without space", "TERN-SUBMIT 1\nFROM\nDATA 0\nEND\n", SUBMIT_PARSE_ERROR},
	    {"empty RCPT", "TERN-SUBMIT 1\nRCPT \nDATA 0\nEND\n", SUBMIT_PARSE_ERROR},
	    {"empty NAME", "TERN-SUBMIT 1\nNAME \nDATA 0\nEND\n", SUBMIT_PARSE_ERROR},
	    {"bad BODY", "TERN-SUBMIT 1\nBODY BINARYMIME\nDATA 0\nEND\n", SUBMIT_PARSE_ERROR},
	    {"bad RET", "TERN-SUBMIT 1\nRET full\nDATA 0\nEND\n", SUBMIT_PARSE_ERROR},
	    {"bad NOTIFY", "TERN-SUBMIT 1\nNOTIFY NEVER,SUCCESS\nDATA 0\nEND\n",
	     SUBMIT_PARSE_ERROR},
	    {"NOTIFY twice in list", "TERN-SUBMIT 1\nNOTIFY DELAY,DELAY\nDATA 0\nEND\n",
	     SUBMIT_PARSE_ERROR},
	    {"ENVID with space", "TERN-SUBMIT 1\nENVID a b\nDATA 0\nEND\n", SUBMIT_PARSE_ERROR},
	    {"DATA no digits", "TERN-SUBMIT 1\nDATA x\nEND\n", SUBMIT_PARSE_ERROR},
	    {"DATA leading zero", "TERN-SUBMIT 1\nDATA 01\nxEND\n", SUBMIT_PARSE_ERROR},
	    {"DATA sign", "TERN-SUBMIT 1\nDATA +1\nxEND\n", SUBMIT_PARSE_ERROR},
	    {"DATA too many digits", "TERN-SUBMIT 1\nDATA 99999999999999999999\n",
	     SUBMIT_PARSE_ERROR},
	    {"DATA above the limit", "TERN-SUBMIT 1\nDATA 1048577\n", SUBMIT_PARSE_TOO_BIG},
	    {"no END", "TERN-SUBMIT 1\nDATA 1\nxEDN\n", SUBMIT_PARSE_ERROR},
	    {"data longer than said", "TERN-SUBMIT 1\nDATA 1\nxyEND\n", SUBMIT_PARSE_ERROR},
	    {"line too long", longline, SUBMIT_PARSE_ERROR},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct submit_req r;
		size_t used = 99;
		const char *why = NULL;
		enum submit_parse_status st =
		    submit_parse(cases[i].req, strlen(cases[i].req), MAX_DATA, &r, &used, &why);
		if (st != cases[i].want)
			fail_msg("%s: status %d, want %d", cases[i].name, st, cases[i].want);
		assert_non_null(why);
		assert_int_equal(used, 0);
	}
}

static void test_parse_rcpt_cap(void **state)
{
	(void)state;
	struct tbuf b;
	tbuf_init(&b, SUBMIT_HEAD_MAX + 100);
	assert_int_equal(tbuf_append_str(&b, SUBMIT_MAGIC "\n"), TERN_OK);
	for (int i = 0; i <= SUBMIT_RCPTS_MAX; i++)
		assert_int_equal(tbuf_append_str(&b, "RCPT a@b\n"), TERN_OK);
	assert_int_equal(tbuf_append_str(&b, "DATA 0\nEND\n"), TERN_OK);
	struct submit_req r;
	size_t used;
	const char *why;
	assert_int_equal(submit_parse(b.data, b.len, MAX_DATA, &r, &used, &why),
	                 SUBMIT_PARSE_ERROR);
	assert_string_equal(why, "too many RCPT lines");
	tbuf_free(&b);
}

static void test_encode_roundtrip(void **state)
{
	(void)state;
	char *rcpts[] = {"bob@example.org", "\"odd name\"@example.org"};
	struct submit_req in = {.has_from = true,
	                        .from = "x@y",
	                        .name = "Jos\xc3\xa9",
	                        .extract = true,
	                        .body = SMTP_BODY_7BIT,
	                        .ret = SMTP_RET_FULL,
	                        .notify = SMTP_NOTIFY_FAILURE,
	                        .envid = "E1",
	                        .rcpts = rcpts,
	                        .n_rcpts = 2,
	                        .data = "a\nEND\n.\n",
	                        .len = 8};
	struct tbuf b;
	tbuf_init(&b, 1 << 20);
	const char *why;
	assert_int_equal(submit_encode(&in, &b, &why), TERN_OK);
	struct submit_req r;
	size_t used;
	assert_int_equal(submit_parse(b.data, b.len, MAX_DATA, &r, &used, &why), SUBMIT_PARSE_DONE);
	assert_int_equal(used, b.len);
	assert_string_equal(r.from, "x@y");
	assert_string_equal(r.name, "Jos\xc3\xa9");
	assert_int_equal(r.n_rcpts, 2);
	assert_string_equal(r.rcpts[1], "\"odd name\"@example.org");
	assert_int_equal(r.body, SMTP_BODY_7BIT);
	assert_int_equal(r.ret, SMTP_RET_FULL);
	assert_int_equal(r.notify, SMTP_NOTIFY_FAILURE);
	assert_string_equal(r.envid, "E1");
	assert_int_equal(r.len, 8);
	assert_memory_equal(r.data, "a\nEND\n.\n", 8);
	submit_req_free(&r);
	tbuf_free(&b);
}

static void test_encode_refuses_line_breaking_values(void **state)
{
	(void)state;
	char *bad_rcpt[] = {"a@b\nRCPT evil@x"};
	struct submit_req cases[] = {
	    {.has_from = true, .from = "a@b\nRCPT c@d"},
	    {.name = "Name\r\nBcc: x"},
	    {.rcpts = bad_rcpt, .n_rcpts = 1},
	    {.envid = "has space"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tbuf b;
		tbuf_init(&b, 4096);
		const char *why = NULL;
		assert_int_equal(submit_encode(&cases[i], &b, &why), TERN_EINVAL);
		assert_non_null(why);
		tbuf_free(&b);
	}
}

/* ----------------------------------------------------------- line ends */

static void crlf_case(const char *in, const char *want, bool nul, bool eight)
{
	struct tbuf b;
	tbuf_init(&b, 4096);
	bool n = !nul, e = !eight;
	size_t len = strlen(in) + (nul ? 2 : 0); /* a NUL case carries "\0x" at the end */
	assert_int_equal(submit_crlf(in, len, 4096, &b, &n, &e), TERN_OK);
	assert_int_equal(n, nul);
	assert_int_equal(e, eight);
	size_t wl = strlen(want) + (nul ? 4 : 0);
	assert_int_equal(b.len, wl);
	assert_memory_equal(b.data, want, wl);
	tbuf_free(&b);
}

static void test_crlf(void **state)
{
	(void)state;
	crlf_case("a\nb\n", "a\r\nb\r\n", false, false);
	crlf_case("a\r\nb\r\n", "a\r\nb\r\n", false, false);
	crlf_case("a\rb", "a\r\nb\r\n", false, false);
	crlf_case("a\r\r\nb", "a\r\n\r\nb\r\n", false, false);
	crlf_case("no end", "no end\r\n", false, false);
	crlf_case("caf\xc3\xa9\n", "caf\xc3\xa9\r\n", false, true);
	crlf_case("", "", false, false);
	crlf_case("\n\n", "\r\n\r\n", false, false);
	crlf_case("x\0y", "x\0y\r\n", true, false);

	struct tbuf b;
	tbuf_init(&b, 1 << 20);
	bool n, e;
	/* 10 bytes grow to 20 with CRs: the limit counts the result. */
	assert_int_equal(submit_crlf("\n\n\n\n\n\n\n\n\n\n", 10, 19, &b, &n, &e), TERN_ELIMIT);
	tbuf_reset(&b);
	assert_int_equal(submit_crlf("\n\n\n\n\n\n\n\n\n\n", 10, 20, &b, &n, &e), TERN_OK);
	tbuf_free(&b);
}

/* ------------------------------------------------------- address lists */

struct addrs {
	char out[1024];
};

static int collect(void *arg, const char *a, size_t n)
{
	struct addrs *x = arg;
	size_t l = strlen(x->out);
	snprintf(x->out + l, sizeof(x->out) - l, "%s%.*s", l ? "|" : "", (int)n, a);
	return 0;
}

static void test_addr_list(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		const char *want; /* "|"-joined, or NULL for a syntax error */
	} cases[] = {
	    {"a@b", "a@b"},
	    {"  a@b  ", "a@b"},
	    {"a@b, c@d", "a@b|c@d"},
	    {"Alice <alice@example.org>", "alice@example.org"},
	    {"\"Doe, John\" <jd@example.org>, x@y", "jd@example.org|x@y"},
	    {"J. Doe <jd@example.org>", "jd@example.org"},
	    {"jd@example.org (John Doe)", "jd@example.org"},
	    {"(c) jd (more (nested)) @ example . org", "jd@example.org"},
	    {"root", "root"},
	    {"root, Bob <bob>", "root|bob"},
	    {"\"john q\"@example.org", "\"john q\"@example.org"},
	    {"a@[192.0.2.1]", "a@[192.0.2.1]"},
	    {"<@relay.example:a@b>", "a@b"},
	    {"undisclosed-recipients:;", ""},
	    {"team: a@b, c@d;, e@f", "a@b|c@d|e@f"},
	    {"a@b,,c@d,", "a@b|c@d"},
	    {"=?UTF-8?B?w6k=?= <e@x>", "e@x"},
	    {"j\xc3\xb6rg@b\xc3\xbc.example", "j\xc3\xb6rg@b\xc3\xbc.example"},
	    {"", ""},
	    {"a@b c@d", NULL},
	    {"<a@b", NULL},
	    {"<>", NULL},
	    {"a@", NULL},
	    {"@b", NULL},
	    {"\"unclosed@b", NULL},
	    {"(unclosed a@b", NULL},
	    {"group: a@b", NULL},
	    {"a@b; c@d", NULL},
	    {"Name <a@b> trailing", NULL},
	    {"a@[1.2.3.4", NULL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct addrs x = {""};
		int rc = submit_addr_list(cases[i].in, strlen(cases[i].in), collect, &x);
		if (!cases[i].want) {
			if (rc != TERN_ESYNTAX)
				fail_msg("'%s': want a syntax error, got %d (%s)", cases[i].in, rc,
				         x.out);
			continue;
		}
		if (rc != TERN_OK || strcmp(x.out, cases[i].want) != 0)
			fail_msg("'%s': rc %d, got '%s', want '%s'", cases[i].in, rc, x.out,
			         cases[i].want);
	}
}

static int stop_at_second(void *arg, const char *a, size_t n)
{
	int *count = arg;
	return ++*count == 2 ? 42 : 0;
}

static void test_addr_list_callback_stops(void **state)
{
	(void)state;
	int count = 0;
	assert_int_equal(submit_addr_list("a@b, c@d, e@f", 13, stop_at_second, &count), 42);
	assert_int_equal(count, 2);
}

/* ------------------------------------------------------ header rewrite */

static char *rewrite(const char *msg, bool collect_rcpts, struct submit_rewrite *rw)
{
	memset(rw, 0, sizeof(*rw));
	rw->add_from = "From: <u@h>\r\n";
	rw->add_date = "Date: D\r\n";
	rw->add_message_id = "Message-ID: <m@h>\r\n";
	rw->collect = collect_rcpts;
	tbuf_init(&rw->rcpts, 1 << 16);
	struct tbuf out;
	tbuf_init(&out, 1 << 16);
	assert_int_equal(submit_rewrite(msg, strlen(msg), rw, &out), TERN_OK);
	char *s = tern_strndup(out.data ? out.data : "", out.len);
	tbuf_free(&out);
	return s;
}

static void rewrite_case(const char *msg, const char *want)
{
	struct submit_rewrite rw;
	char *got = rewrite(msg, false, &rw);
	if (strcmp(got, want) != 0)
		fail_msg("rewrite of\n%s\ngave\n%s\nwant\n%s", msg, got, want);
	free(got);
	tbuf_free(&rw.rcpts);
}

static void test_rewrite_adds_only_missing_fields(void **state)
{
	(void)state;
	rewrite_case("Subject: s\r\n\r\nbody\r\n",
	             "Subject: s\r\nFrom: <u@h>\r\nDate: D\r\nMessage-ID: <m@h>\r\n\r\nbody\r\n");
	rewrite_case("from: x@y\r\nDATE: d\r\nMessage-Id: <a@b>\r\n\r\nbody\r\n",
	             "from: x@y\r\nDATE: d\r\nMessage-Id: <a@b>\r\n\r\nbody\r\n");
	/* No header at all: ours, then the empty line, then the body. */
	rewrite_case("just a body line\r\n", "From: <u@h>\r\nDate: D\r\nMessage-ID: <m@h>\r\n\r\n"
	                                     "just a body line\r\n");
	/* A line that is no field ends the header section: an empty line is put in. */
	rewrite_case("Subject: s\r\nnot a header\r\n",
	             "Subject: s\r\nFrom: <u@h>\r\nDate: D\r\nMessage-ID: <m@h>\r\n\r\nnot a "
	             "header\r\n");
	/* Only a header section, no body. */
	rewrite_case("Subject: s\r\n",
	             "Subject: s\r\nFrom: <u@h>\r\nDate: D\r\nMessage-ID: <m@h>\r\n");
	/* The empty message. */
	rewrite_case("", "From: <u@h>\r\nDate: D\r\nMessage-ID: <m@h>\r\n");
	/* An mbox "From " line goes; "From :" (obsolete syntax) is a field. */
	rewrite_case("From alice Mon Jan  1 00:00:00 2024\r\nSubject: s\r\n\r\nb\r\n",
	             "Subject: s\r\nFrom: <u@h>\r\nDate: D\r\nMessage-ID: <m@h>\r\n\r\nb\r\n");
	rewrite_case("From : x@y\r\nDate: d\r\nMessage-ID: <a@b>\r\n\r\nb\r\n",
	             "From : x@y\r\nDate: d\r\nMessage-ID: <a@b>\r\n\r\nb\r\n");
	/* Header-like lines in the body are left alone. */
	rewrite_case("From: a@b\r\nDate: d\r\nMessage-ID: <x@y>\r\n\r\nBcc: c@d\r\n",
	             "From: a@b\r\nDate: d\r\nMessage-ID: <x@y>\r\n\r\nBcc: c@d\r\n");
}

static void test_rewrite_removes_bcc(void **state)
{
	(void)state;
	struct submit_rewrite rw;
	char *got = rewrite("From: a@b\r\nBcc: secret@x,\r\n\tother@y\r\nDate: d\r\n"
	                    "Message-ID: <x@y>\r\nbcc : again@z\r\n\r\nbody\r\n",
	                    false, &rw);
	assert_string_equal(got, "From: a@b\r\nDate: d\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n");
	assert_true(rw.had_bcc);
	assert_int_equal(rw.n_lists, 0);
	free(got);
	tbuf_free(&rw.rcpts);
}

static void test_rewrite_collects_recipients(void **state)
{
	(void)state;
	struct submit_rewrite rw;
	char *got = rewrite("To: a@b,\r\n c@d\r\nCc: Eve <e@f>\r\nBcc: g@h\r\nSubject: x\r\n"
	                    "X-To: not@this\r\n\r\nTo: body@x\r\n",
	                    true, &rw);
	assert_int_equal(rw.n_lists, 3);
	const char *p = rw.rcpts.data;
	assert_string_equal(p, " a@b, c@d");
	p += strlen(p) + 1;
	assert_string_equal(p, " Eve <e@f>");
	p += strlen(p) + 1;
	assert_string_equal(p, " g@h");
	assert_null(strstr(got, "g@h"));
	free(got);
	tbuf_free(&rw.rcpts);

	/* A resent message goes to its Resent- recipients only. */
	got = rewrite("To: old@x\r\nResent-To: new@y\r\nResent-Bcc: hidden@z\r\n\r\nb\r\n", true,
	              &rw);
	assert_int_equal(rw.n_lists, 2);
	assert_string_equal(rw.rcpts.data, " new@y");
	assert_string_equal(rw.rcpts.data + strlen(rw.rcpts.data) + 1, " hidden@z");
	assert_null(strstr(got, "hidden@z"));
	assert_non_null(strstr(got, "To: old@x\r\n"));
	free(got);
	tbuf_free(&rw.rcpts);
}

/* ------------------------------------------------------ the command line */

static int parse(struct sendmail_opts *o, const char **why, ...)
{
	char *argv[32];
	int argc = 0;
	va_list ap;
	va_start(ap, why);
	for (char *a; (a = va_arg(ap, char *)) != NULL && argc < 31;)
		argv[argc++] = a;
	va_end(ap);
	argv[argc] = NULL;
	const char *why_arg;
	return sendmail_parse_args(argc, argv, o, why, &why_arg);
}

static void test_args_common_callers(void **state)
{
	(void)state;
	struct sendmail_opts o;
	const char *why;
	/* PHP's mail(): sendmail_path = "sendmail -t -i" */
	assert_int_equal(parse(&o, &why, "/usr/sbin/sendmail", "-t", "-i", NULL), 0);
	assert_int_equal(o.mode, SENDMAIL_DELIVER);
	assert_true(o.extract && o.ignore_dots);
	assert_int_equal(o.n_rcpts, 0);
	/* cron: sendmail -FCronDaemon -i -B8BITMIME -oem root */
	assert_int_equal(
	    parse(&o, &why, "sendmail", "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root", NULL),
	    0);
	assert_string_equal(o.name, "CronDaemon");
	assert_int_equal(o.body, SMTP_BODY_8BITMIME);
	assert_int_equal(o.n_rcpts, 1);
	assert_string_equal(o.rcpts[0], "root");
	/* git send-email: sendmail -i -f addr -- rcpt rcpt */
	assert_int_equal(parse(&o, &why, "sendmail", "-i", "-f", "me@example.org", "--", "a@b",
	                       "-weird@c", NULL),
	                 0);
	assert_string_equal(o.from, "me@example.org");
	assert_int_equal(o.n_rcpts, 2);
	assert_string_equal(o.rcpts[1], "-weird@c");
	/* clustered flags, attached arguments, -oi, -r */
	assert_int_equal(parse(&o, &why, "sendmail", "-tif", "x@y", "-oi", "-rz@w", NULL), 0);
	assert_true(o.extract && o.ignore_dots);
	assert_string_equal(o.from, "z@w");
	/* -bs with Symfony-style options */
	assert_int_equal(parse(&o, &why, "sendmail", "-bs", NULL), 0);
	assert_int_equal(o.mode, SENDMAIL_SMTP);
	/* options end at the first recipient */
	assert_int_equal(parse(&o, &why, "sendmail", "a@b", "-t", NULL), 0);
	assert_false(o.extract);
	assert_int_equal(o.n_rcpts, 2);
}

static void test_args_dsn_and_ignored(void **state)
{
	(void)state;
	struct sendmail_opts o;
	const char *why;
	assert_int_equal(parse(&o, &why, "sendmail", "-N", "success,DELAY", "-R", "hdrs", "-V",
	                       "env-1", "-B", "7BIT", "-C", "/etc/x.conf", "-oQ/tmp", "-odb", "-om",
	                       "-v", "-x", "-G", "-U", "-Lname", "-h", "5", "-e", "x", "-p", "smtp",
	                       "-Ax", "-Ox=y", "-c", "-m", "a@b", NULL),
	                 0);
	assert_int_equal(o.notify, SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_DELAY);
	assert_int_equal(o.ret, SMTP_RET_HDRS);
	assert_string_equal(o.envid, "env-1");
	assert_int_equal(o.body, SMTP_BODY_7BIT);
	assert_string_equal(o.config, "/etc/x.conf");
	assert_null(o.warning);
	assert_int_equal(parse(&o, &why, "sendmail", "-Nbogus", "a@b", NULL), 0);
	assert_int_equal(o.notify, 0);
	assert_non_null(o.warning);
	assert_int_equal(parse(&o, &why, "sendmail", "-Rsome", "a@b", NULL), 0);
	assert_int_equal(o.ret, 0);
	assert_non_null(o.warning);
	assert_int_equal(parse(&o, &why, "sendmail", "-q1h", NULL), 0);
	assert_int_equal(o.mode, SENDMAIL_NOTHING);
	assert_int_equal(parse(&o, &why, "sendmail", "-q", NULL), 0);
	assert_int_equal(o.mode, SENDMAIL_FLUSH);
	assert_int_equal(parse(&o, &why, "sendmail", "-bh", NULL), 0);
	assert_int_equal(o.mode, SENDMAIL_NOTHING);
}

static void test_args_modes_by_name(void **state)
{
	(void)state;
	struct sendmail_opts o;
	const char *why;
	assert_int_equal(parse(&o, &why, "/usr/bin/mailq", NULL), 0);
	assert_int_equal(o.mode, SENDMAIL_MAILQ);
	assert_int_equal(parse(&o, &why, "newaliases", NULL), 0);
	assert_int_equal(o.mode, SENDMAIL_NEWALIASES);
	assert_int_equal(parse(&o, &why, "sendmail", "-bp", NULL), 0);
	assert_int_equal(o.mode, SENDMAIL_MAILQ);
	assert_int_equal(parse(&o, &why, "sendmail", "-I", NULL), 0);
	assert_int_equal(o.mode, SENDMAIL_NEWALIASES);
	assert_int_equal(parse(&o, &why, "mailq", "-bm", "a@b", NULL), 0);
	assert_int_equal(o.mode, SENDMAIL_DELIVER);
}

static void test_args_usage_errors(void **state)
{
	(void)state;
	struct sendmail_opts o;
	const char *why;
	assert_int_equal(parse(&o, &why, "sendmail", NULL), EX_USAGE); /* no recipients */
	assert_int_equal(parse(&o, &why, "sendmail", "-i", NULL), EX_USAGE);
	assert_int_equal(parse(&o, &why, "sendmail", "-f", NULL), EX_USAGE);
	assert_int_equal(parse(&o, &why, "sendmail", "-Q", "a@b", NULL), EX_USAGE);
	assert_int_equal(parse(&o, &why, "sendmail", "-n", "a@b", NULL), EX_USAGE);
	assert_int_equal(parse(&o, &why, "sendmail", "-bd", NULL), EX_USAGE);
	assert_int_equal(parse(&o, &why, "sendmail", "-bv", "a@b", NULL), EX_USAGE);
	assert_int_equal(parse(&o, &why, "sendmail", "-B", "BINARYMIME", "a@b", NULL), EX_USAGE);
	assert_int_equal(parse(&o, &why, "sendmail", "-bs", "-t", NULL), EX_USAGE);
	assert_int_equal(parse(&o, &why, "sendmail", "-bp", "a@b", NULL), EX_USAGE);
	assert_int_equal(parse(&o, &why, "sendmail", "-oA", "a@b", NULL), EX_USAGE);
	assert_int_equal(parse(&o, &why, "sendmail", "-qRsite", NULL), EX_USAGE);
	assert_int_equal(parse(&o, &why, "sendmail", "-XV", "a@b", NULL), EX_USAGE);
	assert_non_null(why);
}

/* ------------------------------------------------------------ the lone dot */

static void dot_case(const char *in, bool eof, size_t want, bool complete)
{
	bool c = !complete;
	size_t got = sendmail_dot_end(in, strlen(in), eof, &c);
	if (got != want || c != complete)
		fail_msg("'%s' eof=%d: got %zu/%d, want %zu/%d", in, eof, got, c, want, complete);
}

static void test_dot_end(void **state)
{
	(void)state;
	dot_case("a\n.\nb\n", false, 2, true);
	dot_case("a\r\n.\r\nb\r\n", false, 3, true);
	dot_case(".\n", false, 0, true);
	dot_case("a\n..\n.x\n. \n", false, 11, false); /* none of these is a lone dot */
	dot_case("a\n.", false, 3, false);             /* could still be ".x" */
	dot_case("a\n.", true, 2, true);               /* the end of input decides */
	dot_case("a\n.\r", true, 2, true);
	dot_case("a\nb", true, 3, false);
	dot_case("", true, 0, false);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_full_request),
	    cmocka_unit_test(test_parse_every_prefix_wants_more),
	    cmocka_unit_test(test_parse_null_sender_and_no_options),
	    cmocka_unit_test(test_parse_refusals),
	    cmocka_unit_test(test_parse_rcpt_cap),
	    cmocka_unit_test(test_encode_roundtrip),
	    cmocka_unit_test(test_encode_refuses_line_breaking_values),
	    cmocka_unit_test(test_crlf),
	    cmocka_unit_test(test_addr_list),
	    cmocka_unit_test(test_addr_list_callback_stops),
	    cmocka_unit_test(test_rewrite_adds_only_missing_fields),
	    cmocka_unit_test(test_rewrite_removes_bcc),
	    cmocka_unit_test(test_rewrite_collects_recipients),
	    cmocka_unit_test(test_args_common_callers),
	    cmocka_unit_test(test_args_dsn_and_ignored),
	    cmocka_unit_test(test_args_modes_by_name),
	    cmocka_unit_test(test_args_usage_errors),
	    cmocka_unit_test(test_dot_end),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
