/*
 * test_bounce.c — delivery status notifications (queue.h dsn_build): what
 * the sender of an undeliverable message gets back. Table-driven: each row
 * is a notice a user or a program reading DSNs depends on. Every DSN built
 * here is also checked for the invariants that keep it safe to spool and
 * relay (CRLF only, no overlong line, known header and report fields only,
 * the boundary nowhere inside a part) and, when /usr/bin/python3 exists,
 * parsed by Python's email package through tests/unit/dsn_check.py, an
 * independent reading of RFC 6522 / RFC 3464.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/err.h"
#include "queue/queue.h"
#include "smtp/smtp.h"

#define MAX_RCPTS 4
#define NOW 1700000000LL /* Tue, 14 Nov 2023 22:13:20 +0000 */

static const char small_original[] =
    "Received: from client.example (client.example [192.0.2.9])\r\n"
    "\tby mail.tern.test with ESMTP id Q1\r\n"
    "From: Alice <alice@example.org>\r\n"
    "To: Bob <bob@example.net>\r\n"
    "Subject: lunch\r\n"
    "Message-ID: <m1@example.org>\r\n"
    "\r\n"
    "See you at noon.\r\n"
    "SECRET-BODY-LINE\r\n";

/* ------------------------------------------------------------- helpers */

static char tmpdir[256];
static const char *checker; /* path of dsn_check.py, or NULL to skip */
static char checker_path[1024];

static int setup_all(void **state)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/tern-bounce-XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	/* the checker sits beside this file (CMake passes an absolute __FILE__;
	 * a direct build from the repo root passes tests/unit/...) */
	const char *file = __FILE__;
	const char *slash = strrchr(file, '/');
	int n = slash ? snprintf(checker_path, sizeof(checker_path), "%.*s/dsn_check.py",
	                         (int)(slash - file), file)
	              : snprintf(checker_path, sizeof(checker_path), "dsn_check.py");
	if (n > 0 && (size_t)n < sizeof(checker_path) && access("/usr/bin/python3", X_OK) == 0 &&
	    access(checker_path, R_OK) == 0)
		checker = checker_path;
	else
		fprintf(stderr, "note: python cross-check skipped (no /usr/bin/python3 or %s)\n",
		        checker_path);
	return 0;
}

static int teardown_all(void **state)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static const char *find(const struct tbuf *b, const char *needle)
{
	return b->data ? memmem(b->data, b->len, needle, strlen(needle)) : NULL;
}

/* The line (without CRLF) that starts at p, into out. */
static size_t line_at(const char *p, const char *end, const char **next)
{
	const char *e = memmem(p, (size_t)(end - p), "\r\n", 2);
	if (!e)
		e = end;
	*next = e + 2 <= end ? e + 2 : end;
	return (size_t)(e - p);
}

static bool name_in(const char *line, size_t n, const char *const *names)
{
	for (size_t i = 0; names[i]; i++) {
		size_t k = strlen(names[i]);
		if (n > k && strncasecmp(line, names[i], k) == 0 && line[k] == ':' &&
		    (n == k + 1 || line[k + 1] == ' '))
			return true;
	}
	return false;
}

static const char *const top_fields[] = {"From",         "To",           "Subject",
                                         "Date",         "Message-ID",   "Auto-Submitted",
                                         "MIME-Version", "Content-Type", NULL};
static const char *const report_fields[] = {"Original-Envelope-Id",
                                            "Reporting-MTA",
                                            "Arrival-Date",
                                            "X-Tern-Queue-ID",
                                            "Original-Recipient",
                                            "Final-Recipient",
                                            "Action",
                                            "Status",
                                            "Remote-MTA",
                                            "Diagnostic-Code",
                                            "Last-Attempt-Date",
                                            "Will-Retry-Until",
                                            NULL};

/* The boundary from the top Content-Type, into out. */
static void get_boundary(const struct tbuf *b, char *out, size_t outlen)
{
	const char *p = find(b, "boundary=\"");
	assert_non_null(p);
	p += strlen("boundary=\"");
	const char *q = strchr(p, '"');
	assert_non_null(q);
	assert_true((size_t)(q - p) < outlen);
	memcpy(out, p, (size_t)(q - p));
	out[q - p] = '\0';
}

/*
 * Invariants of every DSN: CRLF line ends only; no line over 998 octets;
 * the top header holds exactly our fields, each once, in 7-bit ASCII; the
 * boundary delimits exactly three parts and occurs nowhere else; every
 * line of the delivery-status part is a known field, a folded
 * continuation or a group separator, with one Final-Recipient per
 * recipient. Returns the number of per-recipient groups.
 */
static size_t check_invariants(const struct tbuf *b, size_t n_rcpts)
{
	const char *s = b->data, *end = b->data + b->len;
	assert_true(b->len > 4);
	for (size_t i = 0; i < b->len; i++) {
		if (s[i] == '\n')
			assert_true(i > 0 && s[i - 1] == '\r');
		if (s[i] == '\r')
			assert_true(i + 1 < b->len && s[i + 1] == '\n');
	}
	assert_memory_equal(end - 2, "\r\n", 2);

	/* lines */
	for (const char *p = s, *next; p < end; p = next)
		assert_true(line_at(p, end, &next) <= 998);

	/* top header */
	int seen[16] = {0};
	const char *p = s, *next;
	for (;;) {
		size_t n = line_at(p, end, &next);
		if (n == 0)
			break;
		for (size_t i = 0; i < n; i++)
			assert_true(((unsigned char)p[i] >= 0x20 && (unsigned char)p[i] < 0x7f) ||
			            p[i] == '\t');
		if (p[0] != ' ' && p[0] != '\t') {
			size_t k;
			for (k = 0; top_fields[k]; k++) {
				const char *one[] = {top_fields[k], NULL};
				if (name_in(p, n, one))
					break;
			}
			if (!top_fields[k])
				fail_msg("unexpected header line: %.*s", (int)n, p);
			seen[k]++;
		}
		p = next;
	}
	for (size_t k = 0; top_fields[k]; k++)
		assert_int_equal(seen[k], 1);
	const char *body = next;

	/* parts */
	char bd[128], delim[140], close[140];
	get_boundary(b, bd, sizeof(bd));
	snprintf(delim, sizeof(delim), "--%s", bd);
	snprintf(close, sizeof(close), "--%s--", bd);
	const char *part_start[4] = {NULL};
	size_t parts = 0, closes = 0, mentions = 0;
	for (const char *q = body; q < end; q = next) {
		size_t n = line_at(q, end, &next);
		if (memmem(q, n, bd, strlen(bd)))
			mentions++;
		if (n == strlen(close) && memcmp(q, close, n) == 0) {
			closes++;
		} else if (n == strlen(delim) && memcmp(q, delim, n) == 0) {
			assert_true(parts < 3);
			part_start[parts++] = next;
		}
	}
	assert_int_equal(parts, 3);
	assert_int_equal(closes, 1);
	assert_int_equal(mentions, 4); /* the boundary occurs in no part */

	/* part 2: skip its MIME header, then every line is a field */
	const char *q = part_start[1];
	while (line_at(q, end, &next) != 0)
		q = next;
	q = next;
	size_t groups = 0, finals = 0;
	bool prev_blank = true, in_field = false;
	for (; q < part_start[2] && strncmp(q, delim, strlen(delim)) != 0; q = next) {
		size_t n = line_at(q, end, &next);
		if (n == 0) {
			prev_blank = true;
			in_field = false;
			continue;
		}
		if (q[0] == ' ' || q[0] == '\t') {
			assert_true(in_field); /* continuation of a field */
			continue;
		}
		if (!name_in(q, n, report_fields))
			fail_msg("not a report field: %.*s", (int)n, q);
		if (prev_blank)
			groups++;
		if (strncasecmp(q, "Final-Recipient:", 16) == 0)
			finals++;
		prev_blank = false;
		in_field = true;
	}
	assert_int_equal(groups, n_rcpts + 1);
	assert_int_equal(finals, n_rcpts);
	return finals;
}

/* Writes the DSN to a file and runs dsn_check.py on it with args. */
static void python_check(const struct tbuf *b, const char *name, const char *args)
{
	if (!checker)
		return;
	static unsigned seq;
	char path[512], cmd[2048];
	snprintf(path, sizeof(path), "%s/dsn-%u.eml", tmpdir, seq++);
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(b->data, 1, b->len, f), b->len);
	assert_int_equal(fclose(f), 0);
	snprintf(cmd, sizeof(cmd), "/usr/bin/python3 '%s' '%s' %s", checker, path, args);
	int rc = system(cmd);
	if (rc != 0)
		fail_msg("%s: dsn_check.py failed (%s)", name, cmd);
}

/* Part 3's Content-Type. */
static const char *part3_type(const struct tbuf *b)
{
	if (find(b, "Content-Type: message/rfc822\r\n"))
		return "message/rfc822";
	if (find(b, "Content-Type: text/rfc822-headers\r\n"))
		return "text/rfc822-headers";
	return "?";
}

static char *make_original(size_t body_bytes, const char *extra_body)
{
	size_t hl = sizeof(small_original) - 1;
	size_t el = extra_body ? strlen(extra_body) : 0;
	char *m = malloc(hl + el + body_bytes + 1);
	assert_non_null(m);
	memcpy(m, small_original, hl);
	memcpy(m + hl, extra_body ? extra_body : "", el);
	size_t o = hl + el;
	for (size_t i = 0; i < body_bytes; i++)
		m[o++] = (i % 72 == 70) ? '\r' : (i % 72 == 71) ? '\n' : (char)('a' + i % 26);
	m[o] = '\0';
	return m;
}

/* ------------------------------------------------------------- the table */

struct dsn_case {
	const char *name;
	unsigned ret;
	const char *envid;
	struct dsn_rcpt rcpts[MAX_RCPTS];
	size_t n;
	const char *original; /* NULL: small_original (+ pad) */
	size_t original_len;  /* 0: strlen */
	size_t pad;           /* extra body bytes appended to small_original */
	const char *to;       /* NULL: alice@example.org */
	const char *subject;
	const char *part3;
	const char *want[10];  /* substrings that must appear */
	const char *refuse[6]; /* substrings that must not */
};

#define FAIL_BOB                                                                                   \
	{                                                                                          \
		"bob@example.net", NULL, "failed", "5.1.1", "mx.example.net",                      \
		    "550 5.1.1 <bob@example.net>: no such user", NOW - 60, 0                       \
	}

static const char S_FAIL[] = "Undelivered Mail Returned to Sender";
static const char S_DELAY[] = "Delayed Mail (still being retried)";
static const char S_OK[] = "Successful Mail Delivery Report";

static const struct dsn_case cases[] = {
    {"failure names the remote server and quotes its reply",
     SMTP_RET_NONE,
     NULL,
     {FAIL_BOB},
     1,
     NULL,
     0,
     0,
     NULL,
     S_FAIL,
     "message/rfc822",
     {"From: \"Mail Delivery System\" <MAILER-DAEMON@mail.tern.test>\r\n",
      "To: <alice@example.org>\r\n", "Auto-Submitted: auto-replied\r\n",
      "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n", "Reporting-MTA: dns; mail.tern.test\r\n",
      "\r\nFinal-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
      "Remote-MTA: dns; mx.example.net\r\n"
      "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: no such user\r\n"
      "Last-Attempt-Date: Tue, 14 Nov 2023 22:12:20 +0000\r\n",
      "X-Tern-Queue-ID: 0123456789ABCDEF\r\n", "Arrival-Date: Tue, 14 Nov 2023 21:13:20 +0000",
      "SECRET-BODY-LINE", "The mail server mx.example.net said:"},
     {"Original-Envelope-Id", "Original-Recipient", "Will-Retry-Until"}},

    {"mixed outcomes: one report lists each recipient with its own action",
     SMTP_RET_NONE,
     NULL,
     {FAIL_BOB,
      {"carol@example.com", NULL, "delayed", "4.4.1", "mx.example.com", "421 4.4.1 try later",
       NOW - 30, NOW + 86400},
      {"dave@example.com", NULL, "delivered", "2.0.0", NULL, NULL, NOW - 10, 0},
      {"erin@legacy.example", NULL, "relayed", "2.0.0", "gw.legacy.example", "250 2.0.0 ok",
       NOW - 5, 0}},
     4,
     NULL,
     0,
     0,
     NULL,
     S_FAIL,
     "message/rfc822",
     {"Final-Recipient: rfc822; carol@example.com\r\nAction: delayed\r\nStatus: 4.4.1\r\n",
      "Will-Retry-Until: Wed, 15 Nov 2023 22:13:20 +0000\r\n",
      "Final-Recipient: rfc822; dave@example.com\r\nAction: delivered\r\nStatus: 2.0.0\r\n",
      "Final-Recipient: rfc822; erin@legacy.example\r\nAction: relayed\r\n",
      "Could not be delivered:", "Delayed, still being tried:", "Delivered:"},
     {NULL}},

    {"delay notice says the message is still being retried and carries headers only",
     SMTP_RET_FULL,
     NULL,
     {{"carol@example.com", NULL, "delayed", "4.4.1", "mx.example.com",
       "421 4.4.1 connection timed out", NOW - 30, NOW + 86400}},
     1,
     NULL,
     0,
     0,
     NULL,
     S_DELAY,
     "text/rfc822-headers",
     {"Action: delayed\r\n", "Will-Retry-Until: ", "do not need to send it", "Subject: lunch"},
     {"SECRET-BODY-LINE", "Could not be delivered"}},

    {"success notice for NOTIFY=SUCCESS carries headers only",
     SMTP_RET_NONE,
     NULL,
     {{"dave@example.com", NULL, "delivered", "2.0.0", NULL, NULL, NOW - 10, 0}},
     1,
     NULL,
     0,
     0,
     NULL,
     S_OK,
     "text/rfc822-headers",
     {"Action: delivered\r\nStatus: 2.0.0\r\n", "Message-ID: <m1@example.org>"},
     {"SECRET-BODY-LINE", "Diagnostic-Code", "Remote-MTA"}},

    {"RET=HDRS returns the header section only",
     SMTP_RET_HDRS,
     NULL,
     {FAIL_BOB},
     1,
     NULL,
     0,
     0,
     NULL,
     S_FAIL,
     "text/rfc822-headers",
     {"\r\n\r\nReceived: from client.example", "Message-ID: <m1@example.org>\r\n\r\n--"},
     {"SECRET-BODY-LINE", "See you at noon"}},

    {"RET=FULL returns the whole message even when it is big",
     SMTP_RET_FULL,
     NULL,
     {FAIL_BOB},
     1,
     NULL,
     0,
     300 * 1024,
     NULL,
     S_FAIL,
     "message/rfc822",
     {"SECRET-BODY-LINE", "abcdefgh"},
     {"Content-Transfer-Encoding"}},

    {"without RET a big message comes back as headers only",
     SMTP_RET_NONE,
     NULL,
     {FAIL_BOB},
     1,
     NULL,
     0,
     300 * 1024,
     NULL,
     S_FAIL,
     "text/rfc822-headers",
     {"Subject: lunch\r\n"},
     {"SECRET-BODY-LINE"}},

    {"ENVID and ORCPT come back as the sender gave them",
     SMTP_RET_NONE,
     "QQ314159-Env_id.1",
     {{"bob@example.net", "rfc822;Bob.Alias@Example.NET", "failed", "5.1.1", "mx.example.net",
       "550 5.1.1 no such user", NOW - 60, 0},
      {"carol@example.com", NULL, "failed", "5.2.2", "mx.example.com", "552 5.2.2 full", NOW - 60,
       0}},
     2,
     NULL,
     0,
     0,
     NULL,
     S_FAIL,
     NULL,
     {"Original-Envelope-Id: QQ314159-Env_id.1\r\nReporting-MTA: dns; mail.tern.test\r\n",
      "\r\n\r\nOriginal-Recipient: rfc822; Bob.Alias@Example.NET\r\n"
      "Final-Recipient: rfc822; bob@example.net\r\n"},
     {"Original-Recipient: rfc822; carol"}},

    {"ENVID that is not printable ASCII is shown as xtext",
     SMTP_RET_NONE,
     "a b\x01=",
     {FAIL_BOB},
     1,
     NULL,
     0,
     0,
     NULL,
     S_FAIL,
     NULL,
     {"Original-Envelope-Id: a+20b+01+3D\r\n"},
     {NULL}},

    {"a multi-line server reply is joined with spaces",
     SMTP_RET_NONE,
     NULL,
     {{"bob@example.net", NULL, "failed", "5.7.1", "mx.example.net",
       "550-5.7.1 Message rejected as spam.\r\n550-5.7.1 See the policy page\r\n"
       "550 5.7.1 for details.",
       NOW - 60, 0}},
     1,
     NULL,
     0,
     0,
     NULL,
     S_FAIL,
     NULL,
     {"Diagnostic-Code: smtp; 550-5.7.1 Message rejected as spam. 550-5.7.1 See the\r\n"
      " policy page 550 5.7.1 for details.\r\n"},
     {NULL}},

    {"a reply that is not SMTP is typed x-tern",
     SMTP_RET_NONE,
     NULL,
     {{"bob@nowhere.invalid", NULL, "failed", "5.1.2", NULL,
       "Host or domain name not found (NXDOMAIN)", 0, 0}},
     1,
     NULL,
     0,
     0,
     NULL,
     S_FAIL,
     NULL,
     {"Diagnostic-Code: x-tern; Host or domain name not found (NXDOMAIN)\r\n", "The reason given:"},
     {"Remote-MTA", "Last-Attempt-Date"}},

    {"an invalid status becomes the generic code of the action's class",
     SMTP_RET_NONE,
     NULL,
     {{"bob@example.net", NULL, "failed", "5.1", NULL, NULL, 0, 0},
      {"carol@example.com", NULL, "delayed", "x", NULL, NULL, 0, 0}},
     2,
     NULL,
     0,
     0,
     NULL,
     S_FAIL,
     NULL,
     {"Status: 5.0.0\r\n", "Status: 4.0.0\r\n"},
     {NULL}},

    {"an SMTPUTF8 recipient is reported in 7-bit utf-8-addr-xtext",
     SMTP_RET_NONE,
     NULL,
     {{"j\xc3\xb6rg+x@b\xc3\xbc"
       "cher.example",
       "utf-8;j\xc3\xb6rg@example.de", "failed", "5.1.1", NULL, NULL, 0, 0}},
     1,
     NULL,
     0,
     0,
     "s\xc3\xa9nder@example.fr",
     S_FAIL,
     NULL,
     {"Final-Recipient: utf-8; j\\x{F6}rg\\x{2B}x@b\\x{FC}cher.example\r\n",
      "Original-Recipient: utf-8; j\\x{F6}rg@example.de\r\n", "To: undisclosed-recipients:;\r\n"},
     {NULL}},

    {"bare LF and bare CR in the original become CRLF",
     SMTP_RET_FULL,
     NULL,
     {FAIL_BOB},
     1,
     "Subject: bare\nX-A: 1\rX-B: 2\r\n\nline one\nline two\r\rend",
     0,
     0,
     NULL,
     S_FAIL,
     "message/rfc822",
     {"\r\n\r\nSubject: bare\r\nX-A: 1\r\nX-B: 2\r\n\r\nline one\r\nline two\r\n\r\nend\r\n"
      "\r\n--"},
     {NULL}},

    {"an 8-bit original carried whole is labelled 8bit",
     SMTP_RET_FULL,
     NULL,
     {FAIL_BOB},
     1,
     "Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve body\r\n",
     0,
     0,
     NULL,
     S_FAIL,
     "message/rfc822",
     {"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
      "Subject: caf\xc3\xa9\r\n"},
     {NULL}},

    {"8-bit headers returned alone are quoted-printable so the notice stays 7-bit",
     SMTP_RET_HDRS,
     NULL,
     {FAIL_BOB},
     1,
     "Subject: caf\xc3\xa9 =\r\n\r\nna\xc3\xafve body\r\n",
     0,
     0,
     NULL,
     S_FAIL,
     "text/rfc822-headers",
     {"Content-Transfer-Encoding: quoted-printable\r\n\r\nSubject: caf=C3=A9 =3D\r\n"},
     {"\xc3"}},

    {"an original with NUL octets cannot travel whole and comes back as headers",
     SMTP_RET_FULL,
     NULL,
     {FAIL_BOB},
     1,
     "Subject: nul\r\n\r\nab\0cd\r\n",
     23,
     0,
     NULL,
     S_FAIL,
     "text/rfc822-headers",
     {"could not be attached whole", "Subject: nul\r\n"},
     {NULL}},

    {"an original without an empty line is all header",
     SMTP_RET_HDRS,
     NULL,
     {FAIL_BOB},
     1,
     "Subject: only\r\nX-Y: z",
     0,
     0,
     NULL,
     S_FAIL,
     "text/rfc822-headers",
     {"\r\n\r\nSubject: only\r\nX-Y: z\r\n\r\n--"},
     {NULL}},

    {"an empty original still gives a well-formed notice",
     SMTP_RET_FULL,
     NULL,
     {FAIL_BOB},
     1,
     "",
     0,
     0,
     NULL,
     S_FAIL,
     NULL,
     {NULL},
     {NULL}},
};

static void run_case(const struct dsn_case *c)
{
	char *big = NULL;
	const char *orig = c->original;
	size_t olen = c->original_len;
	if (!orig) {
		big = make_original(c->pad, NULL);
		orig = big;
		olen = strlen(big);
	} else if (olen == 0) {
		olen = strlen(orig);
	}
	struct dsn_params p = {
	    .reporting_mta = "mail.tern.test",
	    .queue_id = "0123456789ABCDEF",
	    .envid = c->envid,
	    .arrival = NOW - 3600,
	    .to = c->to ? c->to : "alice@example.org",
	    .ret = c->ret,
	    .rcpts = c->rcpts,
	    .n_rcpts = c->n,
	    .original = orig,
	    .original_len = olen,
	    .now = NOW,
	};
	struct tbuf out = TBUF_INIT(16u << 20);
	int rc = dsn_build(&p, &out);
	if (rc != TERN_OK)
		fail_msg("%s: dsn_build returned %d", c->name, rc);
	check_invariants(&out, c->n);

	char subj[128];
	snprintf(subj, sizeof(subj), "Subject: %s\r\n", c->subject);
	if (!find(&out, subj))
		fail_msg("%s: no %s", c->name, subj);
	if (c->part3 && strcmp(part3_type(&out), c->part3) != 0)
		fail_msg("%s: part 3 is %s, want %s", c->name, part3_type(&out), c->part3);
	for (size_t i = 0; i < 10 && c->want[i]; i++)
		if (!find(&out, c->want[i]))
			fail_msg("%s: missing \"%s\" in:\n%s", c->name, c->want[i], out.data);
	for (size_t i = 0; i < 6 && c->refuse[i]; i++)
		if (find(&out, c->refuse[i]))
			fail_msg("%s: unexpected \"%s\" in:\n%s", c->name, c->refuse[i], out.data);

	char args[1024];
	int n = snprintf(args, sizeof(args), "--rcpts %zu --subject '%s' --part3 %s", c->n,
	                 c->subject, part3_type(&out));
	for (size_t i = 0; i < c->n; i++)
		n += snprintf(args + n, sizeof(args) - (size_t)n, " --action %s",
		              c->rcpts[i].action);
	if (c->envid && strspn(c->envid, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	                                 "0123456789-_.") == strlen(c->envid))
		snprintf(args + n, sizeof(args) - (size_t)n, " --envid '%s'", c->envid);
	else if (c->envid)
		snprintf(args + n, sizeof(args) - (size_t)n, " --envid '%s'", "a+20b+01+3D");
	python_check(&out, c->name, args);

	tbuf_free(&out);
	free(big);
}

static void test_table(void **state)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		fprintf(stderr, "  case: %s\n", cases[i].name);
		run_case(&cases[i]);
	}
}

/* ------------------------------------------------------- hostile input */

static struct dsn_params base_params(const struct dsn_rcpt *r, size_t n)
{
	struct dsn_params p = {
	    .reporting_mta = "mail.tern.test",
	    .queue_id = "0123456789ABCDEF",
	    .envid = NULL,
	    .arrival = NOW - 3600,
	    .to = "alice@example.org",
	    .ret = SMTP_RET_NONE,
	    .rcpts = r,
	    .n_rcpts = n,
	    .original = small_original,
	    .original_len = sizeof(small_original) - 1,
	    .now = NOW,
	};
	return p;
}

/* A remote server (or a client, or DNS) that puts CR, LF and control
 * octets into what we quote cannot add a field, a recipient group or a
 * header line to the notice. */
static void test_diagnostic_cannot_inject_fields(void **state)
{
	static const struct dsn_rcpt r[] = {
	    {"bob@example.net\r\nX-Evil: 1", "rfc822;b\r\nX-Orcpt-Evil: 1", "failed", "5.1.1",
	     "mx.example.net\r\nX-Mta-Evil: 1",
	     "550 oops\r\nAction: delivered\r\n\r\nFinal-Recipient: rfc822; evil@x\x01\x7f\xff"
	     "\r\n--=_tern_0123456789ABCDEF_6553f100_0\r\n\tX-Tab-Evil: 1",
	     NOW, 0},
	};
	struct dsn_params p = base_params(r, 1);
	p.envid = "id\r\nX-Envid-Evil: 1";
	p.reporting_mta = "mail.tern.test\r\nX-Host-Evil: 1";
	p.queue_id = "0123\r\nX-Qid-Evil: 1";
	struct tbuf out = TBUF_INIT(1u << 20);
	assert_int_equal(dsn_build(&p, &out), TERN_OK);
	check_invariants(&out, 1);
	static const char *const evil[] = {"\nX-Evil",
	                                   "\nX-Orcpt-Evil",
	                                   "\nX-Mta-Evil",
	                                   "\nAction: delivered",
	                                   "\nFinal-Recipient: rfc822; evil",
	                                   "\nX-Envid-Evil",
	                                   "\nX-Host-Evil",
	                                   "\nX-Qid-Evil",
	                                   "\n\tX-Tab-Evil",
	                                   "\x01",
	                                   "\x7f",
	                                   "\xff"};
	for (size_t i = 0; i < sizeof(evil) / sizeof(evil[0]); i++)
		if (find(&out, evil[i]))
			fail_msg("injected \"%s\" in:\n%s", evil[i], out.data);
	/* the words are still there, on the Diagnostic-Code line */
	assert_non_null(find(&out, "Diagnostic-Code: smtp; 550 oops Action: delivered "));
	assert_non_null(find(&out, "evil@x???"));
	assert_non_null(find(&out, "Final-Recipient: utf-8; bob@example.net\\x{0D}\\x{0A}X-Evil:"));
	assert_non_null(
	    find(&out, "Reporting-MTA: x-local-hostname; mail.tern.test??X-Host-Evil:?1"));
	python_check(&out, "injection",
	             "--rcpts 1 --action failed --envid 'id+0D+0AX-Envid-Evil:+201'");
	tbuf_free(&out);
}

/* Long replies are folded at spaces into lines of at most 78 columns, and
 * a single enormous word still never makes a line over 998 octets. */
static void test_long_diagnostic_is_folded(void **state)
{
	char diag[6000];
	size_t o = (size_t)snprintf(diag, sizeof(diag), "550 5.7.1");
	while (o < 2000)
		o += (size_t)snprintf(diag + o, sizeof(diag) - o, " word%zu", o);
	diag[o++] = ' ';
	memset(diag + o, 'x', 2500); /* one 2500-octet "word" */
	o += 2500;
	diag[o] = '\0';
	struct dsn_rcpt r[] = {
	    {"bob@example.net", NULL, "failed", "5.7.1", "mx.example.net", diag, NOW, 0}};
	struct dsn_params p = base_params(r, 1);
	struct tbuf out = TBUF_INIT(1u << 20);
	assert_int_equal(dsn_build(&p, &out), TERN_OK);
	check_invariants(&out, 1);
	/* the folded part of the field: every line up to the long word <= 78 */
	const char *d = find(&out, "Diagnostic-Code: smtp; 550 5.7.1 word");
	assert_non_null(d);
	const char *end = out.data + out.len, *next;
	for (const char *q = d; q < end; q = next) {
		size_t n = line_at(q, end, &next);
		if (memchr(q, 'x', n) && memmem(q, n, "xxxxxxxx", 8))
			break;
		assert_true(n <= 78);
		assert_true(q == d || q[0] == ' ');
	}
	python_check(&out, "long diagnostic", "--rcpts 1");
	tbuf_free(&out);
}

/* The boundary is never a string that occurs in the original: an
 * original built to contain the first candidate gets another one. */
static void test_boundary_avoids_original(void **state)
{
	struct dsn_rcpt r[] = {FAIL_BOB};
	struct dsn_params p = base_params(r, 1);
	struct tbuf first = TBUF_INIT(1u << 20);
	assert_int_equal(dsn_build(&p, &first), TERN_OK);
	char b1[128];
	get_boundary(&first, b1, sizeof(b1));

	char orig[1024];
	int n = snprintf(orig, sizeof(orig),
	                 "Subject: trap\r\nX-B: %s\r\n\r\n--%s\r\nContent-Type: text/plain\r\n\r\n"
	                 "fake part\r\n--%s--\r\n",
	                 b1, b1, b1);
	p.original = orig;
	p.original_len = (size_t)n;
	p.ret = SMTP_RET_FULL;
	struct tbuf second = TBUF_INIT(1u << 20);
	assert_int_equal(dsn_build(&p, &second), TERN_OK);
	char b2[128];
	get_boundary(&second, b2, sizeof(b2));
	assert_string_not_equal(b1, b2);
	assert_null(strstr(orig, b2));
	check_invariants(&second, 1);
	assert_non_null(find(&second, "fake part"));
	python_check(&second, "boundary", "--rcpts 1 --part3 message/rfc822");
	tbuf_free(&first);
	tbuf_free(&second);
}

/* A caller's buffer keeps what it held; the DSN is appended. On any error
 * nothing is appended. */
static void test_appends_and_fails_cleanly(void **state)
{
	struct dsn_rcpt r[] = {FAIL_BOB};
	struct dsn_params p = base_params(r, 1);
	struct tbuf out = TBUF_INIT(1u << 20);
	assert_int_equal(tbuf_append_str(&out, "KEEP"), TERN_OK);
	assert_int_equal(dsn_build(&p, &out), TERN_OK);
	assert_memory_equal(out.data, "KEEPFrom: ", 10);

	/* too small for any DSN: TERN_ELIMIT, buffer unchanged */
	struct tbuf tiny = TBUF_INIT(600);
	assert_int_equal(tbuf_append_str(&tiny, "KEEP"), TERN_OK);
	assert_int_equal(dsn_build(&p, &tiny), TERN_ELIMIT);
	assert_int_equal(tiny.len, 4);
	assert_string_equal(tiny.data, "KEEP");

	/* nonsense parameters */
	struct dsn_rcpt bad_action[] = {
	    {"bob@example.net", NULL, "bounced", "5.1.1", NULL, NULL, 0, 0}};
	struct dsn_rcpt no_addr[] = {{NULL, NULL, "failed", "5.1.1", NULL, NULL, 0, 0}};
	struct dsn_rcpt empty_addr[] = {{"", NULL, "failed", "5.1.1", NULL, NULL, 0, 0}};
	struct dsn_params q = p;
	q.to = "";
	assert_int_equal(dsn_build(&q, &tiny), TERN_EINVAL); /* never a DSN to <> */
	q = p;
	q.n_rcpts = 0;
	assert_int_equal(dsn_build(&q, &tiny), TERN_EINVAL);
	q = base_params(bad_action, 1);
	assert_int_equal(dsn_build(&q, &tiny), TERN_EINVAL);
	q = base_params(no_addr, 1);
	assert_int_equal(dsn_build(&q, &tiny), TERN_EINVAL);
	q = base_params(empty_addr, 1);
	assert_int_equal(dsn_build(&q, &tiny), TERN_EINVAL);
	q = p;
	q.now = 0;
	assert_int_equal(dsn_build(&q, &tiny), TERN_EINVAL);
	assert_int_equal(dsn_build(NULL, &tiny), TERN_EINVAL);
	assert_int_equal(tiny.len, 4);
	tbuf_free(&out);
	tbuf_free(&tiny);
}

/* RET=FULL for a message larger than the DSN may be: the header section
 * goes instead, and the person is told. */
static void test_full_that_does_not_fit_falls_back_to_headers(void **state)
{
	struct dsn_rcpt r[] = {FAIL_BOB};
	struct dsn_params p = base_params(r, 1);
	char *big = make_original(200 * 1024, NULL);
	p.original = big;
	p.original_len = strlen(big);
	p.ret = SMTP_RET_FULL;
	struct tbuf out = TBUF_INIT(100 * 1024);
	assert_int_equal(dsn_build(&p, &out), TERN_OK);
	check_invariants(&out, 1);
	assert_string_equal(part3_type(&out), "text/rfc822-headers");
	assert_non_null(find(&out, "could not be attached whole"));
	assert_null(find(&out, "SECRET-BODY-LINE"));
	python_check(&out, "full fallback", "--rcpts 1 --part3 text/rfc822-headers");
	tbuf_free(&out);
	free(big);
}

/* The human part stays within 78 columns for ordinary input, and every
 * DSN gets its own Message-ID. */
static void test_human_part_is_readable_and_ids_unique(void **state)
{
	struct dsn_rcpt r[] = {FAIL_BOB};
	struct dsn_params p = base_params(r, 1);
	struct tbuf a = TBUF_INIT(1u << 20), b = TBUF_INIT(1u << 20);
	assert_int_equal(dsn_build(&p, &a), TERN_OK);
	assert_int_equal(dsn_build(&p, &b), TERN_OK);
	const char *h = find(&a, "This is the mail delivery system");
	const char *e = find(&a, "Content-Type: message/delivery-status");
	assert_non_null(h);
	assert_non_null(e);
	for (const char *q = h, *next; q < e; q = next)
		assert_true(line_at(q, e, &next) <= 78);
	const char *ma = find(&a, "Message-ID: <"), *mb = find(&b, "Message-ID: <");
	assert_non_null(ma);
	assert_non_null(mb);
	size_t la = (size_t)(strchr(ma, '>') - ma), lb = (size_t)(strchr(mb, '>') - mb);
	assert_true(la != lb || memcmp(ma, mb, la) != 0);
	assert_non_null(strstr(ma, "Message-ID: <0123456789ABCDEF.DSN."));
	tbuf_free(&a);
	tbuf_free(&b);
}

/* ------------------------------------------------------------ random */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint32_t rnd(uint32_t n)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state % n);
}

/* Random bytes biased towards what breaks mail: line ends, white space,
 * controls, 8-bit, "--", ";", "(", and long runs without spaces. */
static size_t random_bytes(char *out, size_t max, bool allow_nul)
{
	static const char tricky[] = "\r\n \t-;:()<>\"\\=+";
	size_t n = rnd(4) == 0 ? rnd((uint32_t)max) : rnd(80);
	for (size_t i = 0; i < n; i++) {
		switch (rnd(6)) {
		case 0:
			out[i] = tricky[rnd(sizeof(tricky) - 1)];
			break;
		case 1:
			out[i] = (char)rnd(256);
			break;
		default:
			out[i] = (char)('a' + rnd(26));
			break;
		}
		if (!allow_nul && out[i] == '\0')
			out[i] = 'z';
	}
	out[n] = '\0';
	return n;
}

/* Whatever the outside world puts into addresses, replies, ENVIDs and the
 * original, the notice keeps its structure (check_invariants) and, now
 * and then, Python agrees. */
static void test_random_input_keeps_structure(void **state)
{
	static const char *const actions[] = {"failed", "delayed", "delivered", "relayed",
	                                      "expanded"};
	enum { LEN = 3000 };
	char *bufs = malloc(12 * (LEN + 1));
	assert_non_null(bufs);
	for (int iter = 0; iter < 400; iter++) {
		struct dsn_rcpt r[3];
		size_t nr = 1 + rnd(3);
		char *b = bufs;
		for (size_t i = 0; i < nr; i++) {
			char *addr = b, *orcpt = b + LEN + 1, *mta = b + 2 * (LEN + 1),
			     *diag = b + 3 * (LEN + 1);
			b += 4 * (LEN + 1);
			if (random_bytes(addr, LEN, false) == 0)
				addr = "x"; /* an empty address is a caller error */
			random_bytes(orcpt, LEN, false);
			random_bytes(mta, 300, false);
			random_bytes(diag, LEN, false);
			r[i] = (struct dsn_rcpt){addr,
			                         rnd(2) ? orcpt : NULL,
			                         actions[rnd(5)],
			                         rnd(2) ? "5.1.1" : diag,
			                         rnd(2) ? mta : NULL,
			                         rnd(5) ? diag : NULL,
			                         rnd(2) ? NOW - rnd(1000) : 0,
			                         rnd(2) ? NOW + rnd(100000) : 0};
		}
		char envid[LEN + 1], orig[LEN + 1];
		random_bytes(envid, LEN, false);
		size_t olen = random_bytes(orig, LEN, true);
		struct dsn_params p = base_params(r, nr);
		p.envid = rnd(2) ? envid : NULL;
		p.original = orig;
		p.original_len = olen;
		p.ret = rnd(3);
		struct tbuf out = TBUF_INIT(1u << 20);
		int rc = dsn_build(&p, &out);
		if (rc != TERN_OK)
			fail_msg("iteration %d: dsn_build returned %d", iter, rc);
		check_invariants(&out, nr);
		if (iter % 40 == 0) {
			char args[64];
			snprintf(args, sizeof(args), "--rcpts %zu%s", nr,
			         p.envid ? " --envid-any" : "");
			python_check(&out, "random", args);
		}
		tbuf_free(&out);
	}
	free(bufs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_table),
	    cmocka_unit_test(test_diagnostic_cannot_inject_fields),
	    cmocka_unit_test(test_long_diagnostic_is_folded),
	    cmocka_unit_test(test_boundary_avoids_original),
	    cmocka_unit_test(test_appends_and_fails_cleanly),
	    cmocka_unit_test(test_full_that_does_not_fit_falls_back_to_headers),
	    cmocka_unit_test(test_human_part_is_readable_and_ids_unique),
	    cmocka_unit_test(test_random_input_keeps_structure),
	};
	return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
