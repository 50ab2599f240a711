/*
 * test_http_send.c — the POST /api/v1/send message builder
 * (http_send_build): Mailpit's send JSON to an RFC 5322 / MIME message.
 *
 * Every message built is checked twice: here for the wire rules (CRLF only,
 * 7-bit, lines of at most 998 bytes, no Bcc header, the envelope) and by
 * Python's email package (an independent parser, through /usr/bin/python3)
 * for what a reader sees: the multipart tree in order, decoded header text
 * (RFC 2047), bodies, attachment names (RFC 2231), bytes and Content-IDs,
 * and no parser defects. Bad input gets TERN_ESYNTAX and a reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/err.h"
#include "http/http.h"

#define NOW 1700000000LL /* Tue, 14 Nov 2023 22:13:20 +0000 */

/* The independent check: argv[1] the message, argv[2] the expectations. */
static const char checker_py[] =
    "import email, email.policy, json, sys, base64\n"
    "raw = open(sys.argv[1], 'rb').read()\n"
    "exp = json.load(open(sys.argv[2]))\n"
    "errs = []\n"
    "msg = email.message_from_bytes(raw, policy=email.policy.default)\n"
    "parts = list(msg.walk())\n"
    "for p in parts:\n"
    "    if p.defects: errs.append('defects in %s: %r' % (p.get_content_type(), p.defects))\n"
    "got = [p.get_content_type() for p in parts]\n"
    "if 'structure' in exp and got != exp['structure']:\n"
    "    errs.append('structure %r want %r' % (got, exp['structure']))\n"
    "for k, v in exp.get('headers', {}).items():\n"
    "    if str(msg[k]) != v: errs.append('%s: %r want %r' % (k, str(msg[k]), v))\n"
    "for k in exp.get('absent', []):\n"
    "    if msg[k] is not None: errs.append('%s present: %r' % (k, msg[k]))\n"
    "if msg['MIME-Version'] != '1.0': errs.append('MIME-Version')\n"
    "if msg['Date'] is None or msg['Date'].datetime is None: errs.append('Date')\n"
    "for kind in ('plain', 'html'):\n"
    "    if kind in exp:\n"
    "        b = msg.get_body(preferencelist=(kind,))\n"
    "        t = b.get_content().replace('\\r\\n', '\\n') if b is not None else None\n"
    "        if t != exp[kind]: errs.append('%s body %r want %r' % (kind, t, exp[kind]))\n"
    "atts = [p for p in parts if not p.is_multipart() and p.get_filename() is not None]\n"
    "want = exp.get('attachments', [])\n"
    "if len(atts) != len(want): errs.append('%d attachments want %d' % (len(atts), len(want)))\n"
    "for p, w in zip(atts, want):\n"
    "    if p.get_filename() != w['filename']: errs.append('filename %r' % p.get_filename())\n"
    "    if p.get_content_type() != w['type']: errs.append('type %r' % p.get_content_type())\n"
    "    if p.get_content_disposition() != w['disposition']:\n"
    "        errs.append('disposition %r' % p.get_content_disposition())\n"
    "    if base64.b64encode(p.get_payload(decode=True)).decode() != w['content']:\n"
    "        errs.append('content of %s' % w['filename'])\n"
    "    if w.get('cid') is not None and p['Content-ID'] != '<%s>' % w['cid']:\n"
    "        errs.append('Content-ID %r' % p['Content-ID'])\n"
    "for e in errs: print('send_check: ' + e, file=sys.stderr)\n"
    "sys.exit(1 if errs else 0)\n";

static char checker_path[256];

static int setup_checker(void **state)
{
	snprintf(checker_path, sizeof(checker_path), "/tmp/tern_send_check_%ld.py", (long)getpid());
	FILE *f = fopen(checker_path, "w");
	if (!f)
		return -1;
	fputs(checker_py, f);
	fclose(f);
	return 0;
}

static int teardown_checker(void **state)
{
	unlink(checker_path);
	return 0;
}

static void write_file(const char *path, const char *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(p, 1, n, f), n);
	fclose(f);
}

/* The wire rules every built message must keep. */
static void check_wire(const struct http_send_msg *m)
{
	size_t line = 0;
	for (size_t i = 0; i < m->len; i++) {
		unsigned char c = (unsigned char)m->raw[i];
		if (c == '\r') {
			assert_true(i + 1 < m->len && m->raw[i + 1] == '\n');
			line = 0;
			i++;
			continue;
		}
		assert_int_not_equal(c, '\n'); /* no bare LF */
		assert_true(c < 0x80);         /* 7-bit throughout */
		line++;
		assert_true(line <= 998);
	}
	assert_int_equal(line, 0); /* ends with CRLF */
	/* Headers end at the first empty line; none of them is Bcc. */
	const char *end = strstr(m->raw, "\r\n\r\n");
	assert_non_null(end);
	for (const char *p = m->raw; p && p < end; p = strstr(p, "\r\n"), p = p ? p + 2 : NULL)
		assert_true(strncasecmp(p, "Bcc:", 4) != 0);
}

static void python_check(const char *name, const struct http_send_msg *m, const char *expect)
{
	if (access("/usr/bin/python3", X_OK) != 0) {
		fprintf(stderr, "%s: /usr/bin/python3 missing, independent check skipped\n", name);
		return;
	}
	char mp[128], ep[128], cmd[1024];
	snprintf(mp, sizeof(mp), "/tmp/tern_send_%ld.eml", (long)getpid());
	snprintf(ep, sizeof(ep), "/tmp/tern_send_%ld.json", (long)getpid());
	write_file(mp, m->raw, m->len);
	write_file(ep, expect, strlen(expect));
	snprintf(cmd, sizeof(cmd), "/usr/bin/python3 %s %s %s", checker_path, mp, ep);
	int st = system(cmd);
	if (st != 0) {
		fprintf(stderr, "---- %s: message ----\n%.*s\n----\n", name, (int)m->len, m->raw);
		unlink(mp);
		unlink(ep);
		fail_msg("%s: Python's email package disagrees (%s)", name, expect);
	}
	unlink(mp);
	unlink(ep);
}

/* 1x1 PNG and a few bytes of "PDF". */
#define PNG_B64                                                                                    \
	"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E" \
	"rkJggg=="
#define PDF_B64 "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg=="

struct good_case {
	const char *name;
	const char *json;
	const char *expect; /* for the Python check */
	size_t n_to;
	const char *to[4]; /* envelope recipients in order */
	size_t n_tags;
};

static const struct good_case good[] = {
    {"text_only_is_a_single_7bit_part",
     "{\"From\":{\"Email\":\"john@example.com\"},\"To\":[{\"Email\":\"jane@example.com\"}],"
     "\"Subject\":\"Hello\",\"Text\":\"Line one\\nLine two\\n\"}",
     "{\"structure\":[\"text/plain\"],\"headers\":{\"Subject\":\"Hello\",\"From\":"
     "\"john@example.com\",\"To\":\"jane@example.com\"},\"plain\":\"Line one\\nLine two\\n\"}",
     1,
     {"jane@example.com"},
     0},
    {"text_and_html_make_an_alternative",
     "{\"From\":{\"Email\":\"john@example.com\",\"Name\":\"John Doe\"},\"To\":[{\"Email\":"
     "\"jane@example.com\",\"Name\":\"Jane\"}],\"Subject\":\"Both\",\"Text\":\"plain\","
     "\"HTML\":\"<p>html</p>\"}",
     "{\"structure\":[\"multipart/alternative\",\"text/plain\",\"text/html\"],\"headers\":{"
     "\"From\":\"John Doe <john@example.com>\",\"To\":\"Jane <jane@example.com>\"},"
     "\"plain\":\"plain\",\"html\":\"<p>html</p>\"}",
     1,
     {"jane@example.com"},
     0},
    {"inline_and_attachment_nest_mixed_related_alternative",
     "{\"From\":{\"Email\":\"john@example.com\"},\"To\":[{\"Email\":\"jane@example.com\"}],"
     "\"Subject\":\"Full\",\"Text\":\"t\",\"HTML\":\"<img src=\\\"cid:logo\\\">\","
     "\"Attachments\":[{\"Content\":\"" PDF_B64 "\",\"Filename\":\"doc.pdf\"},"
     "{\"Content\":\"" PNG_B64 "\",\"Filename\":\"logo.png\",\"ContentType\":\"image/png\","
     "\"ContentID\":\"logo\"}]}",
     "{\"structure\":[\"multipart/mixed\",\"multipart/related\",\"multipart/alternative\","
     "\"text/plain\",\"text/html\",\"image/png\",\"application/pdf\"],"
     "\"html\":\"<img src=\\\"cid:logo\\\">\",\"attachments\":["
     "{\"filename\":\"logo.png\",\"type\":\"image/png\",\"disposition\":\"inline\","
     "\"content\":\"" PNG_B64 "\",\"cid\":\"logo\"},"
     "{\"filename\":\"doc.pdf\",\"type\":\"application/pdf\",\"disposition\":\"attachment\","
     "\"content\":\"" PDF_B64 "\"}]}",
     1,
     {"jane@example.com"},
     0},
    {"inline_only_makes_related_without_mixed",
     "{\"From\":{\"Email\":\"a@example.com\"},\"To\":[{\"Email\":\"b@example.com\"}],"
     "\"HTML\":\"<img src=cid:x>\",\"Attachments\":[{\"Content\":\"" PNG_B64 "\","
     "\"Filename\":\"x.png\",\"ContentID\":\"x\"}]}",
     "{\"structure\":[\"multipart/related\",\"text/html\",\"image/png\"],\"attachments\":["
     "{\"filename\":\"x.png\",\"type\":\"image/png\",\"disposition\":\"inline\","
     "\"content\":\"" PNG_B64 "\",\"cid\":\"x\"}]}",
     1,
     {"b@example.com"},
     0},
    {"non_ascii_header_text_and_filenames_are_encoded",
     "{\"From\":{\"Email\":\"j@example.com\",\"Name\":\"Jürgen Müller\"},\"To\":[{\"Email\":"
     "\"k@example.com\",\"Name\":\"Doe, Jane \\\"JD\\\"\"}],\"Subject\":\"Grüße aus Köln — "
     "ünïcödé 日本語のテキストがとても長い件名になっています。これは折り返しが必要です\","
     "\"Text\":\"Grüße\\r\\n\",\"Attachments\":[{\"Content\":\"aGk=\",\"Filename\":"
     "\"résumé “final”.txt\"}]}",
     "{\"structure\":[\"multipart/mixed\",\"text/plain\",\"text/plain\"],\"headers\":{"
     "\"From\":\"Jürgen Müller <j@example.com>\",\"To\":\"\\\"Doe, Jane \\\\\\\"JD\\\\\\\"\\\" "
     "<k@example.com>\",\"Subject\":\"Grüße aus Köln — ünïcödé "
     "日本語のテキストがとても長い件名になっています。これは折り返しが必要です\"},"
     "\"plain\":\"Grüße\\n\",\"attachments\":[{\"filename\":\"résumé “final”.txt\","
     "\"type\":\"text/plain\",\"disposition\":\"attachment\",\"content\":\"aGk=\"}]}",
     1,
     {"k@example.com"},
     0},
    {"bcc_goes_to_the_envelope_only_and_duplicates_collapse",
     "{\"From\":{\"Email\":\"a@example.com\"},\"To\":[{\"Email\":\"b@example.com\"}],"
     "\"Cc\":[{\"Email\":\"c@example.com\"},{\"Email\":\"B@example.com\"}],"
     "\"Bcc\":[\"d@example.com\"],\"ReplyTo\":[{\"Email\":\"r@example.com\"}],\"Text\":\"x\"}",
     "{\"headers\":{\"Cc\":\"c@example.com, B@example.com\",\"Reply-To\":\"r@example.com\"},"
     "\"absent\":[\"Bcc\"]}",
     3,
     {"b@example.com", "c@example.com", "d@example.com"},
     0},
    {"custom_headers_cannot_inject_lines_and_may_replace_ours",
     "{\"From\":{\"Email\":\"a@example.com\"},\"Bcc\":[\"d@example.com\"],\"Text\":\"x\","
     "\"Headers\":{\"X-IP\":\"1.2.3.4\",\"X-Evil\":\"v\\r\\nBcc: evil@example.com\","
     "\"Message-ID\":\"<custom@example.com>\",\"X-Long\":\"" /* folded */
     "aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll mmmm nnnn oooo pppp qqqq "
     "rrrr ssss tttt uuuu\"},\"Tags\":[\"Tag 1\",\"two\"]}",
     "{\"headers\":{\"X-IP\":\"1.2.3.4\",\"X-Evil\":\"v  Bcc: evil@example.com\","
     "\"Message-ID\":\"<custom@example.com>\",\"X-Tags\":\"Tag 1, two\",\"X-Long\":"
     "\"aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll mmmm nnnn oooo pppp qqqq "
     "rrrr ssss tttt uuuu\"},\"absent\":[\"Bcc\"]}",
     1,
     {"d@example.com"},
     2},
    {"no_body_gives_an_empty_text_part",
     "{\"From\":{\"Email\":\"a@example.com\"},\"To\":[{\"Email\":\"b@example.com\"}]}",
     "{\"structure\":[\"text/plain\"],\"headers\":{\"Subject\":\"\"}}",
     1,
     {"b@example.com"},
     0},
    {"every_line_end_becomes_crlf",
     "{\"From\":{\"Email\":\"a@example.com\"},\"To\":[{\"Email\":\"b@example.com\"}],"
     "\"Text\":\"\\r\\none\\r\\ntwo\\rthree\\n\\nfour\\r\\r\\nfive\"}",
     "{\"plain\":\"\\none\\ntwo\\nthree\\n\\nfour\\n\\nfive\\n\"}",
     1,
     {"b@example.com"},
     0},
    {"eight_bit_and_long_lines_go_quoted_printable",
     "{\"From\":{\"Email\":\"a@example.com\"},\"To\":[{\"Email\":\"b@example.com\"}],"
     "\"Text\":\"caf\\u00e9 =_tern_ \\u0001 bare\\rcr\",\"HTML\":\"<b>\\u00e9</b>\"}",
     "{\"plain\":\"caf\\u00e9 =_tern_ \\u0001 bare\\ncr\",\"html\":\"<b>\\u00e9</b>\"}",
     1,
     {"b@example.com"},
     0},
};

static void builds_messages_readers_agree_with(void **state)
{
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		const struct good_case *c = &good[i];
		struct http_send_msg m;
		char err[256];
		int rc = http_send_build(c->json, strlen(c->json), NOW, "id1@tern", &m, err,
		                         sizeof(err));
		if (rc != TERN_OK)
			fail_msg("%s: rc %d (%s)", c->name, rc, err);
		check_wire(&m);
		assert_int_equal(m.n_to, c->n_to);
		for (size_t k = 0; k < c->n_to; k++)
			assert_string_equal(m.to[k], c->to[k]);
		assert_int_equal(m.n_tags, c->n_tags);
		python_check(c->name, &m, c->expect);
		http_send_msg_free(&m);
	}
}

/* Replaces every copy of the 23-byte boundary stem from in m (if any) by to's. */
static void same_stem(char *m, const char *to)
{
	const char *ts = strstr(to, "=_tern_");
	char *ms = strstr(m, "=_tern_");
	if (!ts || !ms)
		return;
	char stem[24];
	memcpy(stem, ms, 23);
	stem[23] = '\0';
	for (char *p = m; (p = strstr(p, stem)); p += 23)
		memcpy(p, ts, 23);
}

/* http_send_build_obj (the native API's path, no text round trip) writes the
 * message http_send_build writes from the same JSON text, byte for byte but
 * for the boundary, which it draws from the parts instead of the text. */
static void object_build_matches_text_build(void **state)
{
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		const struct good_case *c = &good[i];
		struct http_send_msg a, b;
		char err[256];
		json_error_t jerr;
		json_t *root = json_loads(c->json, 0, &jerr);
		assert_non_null(root);
		assert_int_equal(http_send_build(c->json, strlen(c->json), NOW, "id1@tern", &a, err,
		                                 sizeof(err)),
		                 TERN_OK);
		assert_int_equal(http_send_build_obj(root, NOW, "id1@tern", &b, err, sizeof(err)),
		                 TERN_OK);
		check_wire(&b);
		assert_int_equal(a.len, b.len);
		same_stem(b.raw, a.raw);
		assert_string_equal(a.raw, b.raw);
		assert_int_equal(a.n_to, b.n_to);
		for (size_t k = 0; k < a.n_to; k++)
			assert_string_equal(a.to[k], b.to[k]);
		assert_int_equal(a.n_tags, b.n_tags);
		http_send_msg_free(&a);
		http_send_msg_free(&b);
		json_decref(root);
	}
	/* bad input: the same refusal */
	json_t *bad = json_loads("{\"From\":{\"Email\":\"not an address\"}}", 0, NULL);
	struct http_send_msg m;
	char err[256];
	assert_int_not_equal(http_send_build_obj(bad, NOW, "x@tern", &m, err, sizeof(err)),
	                     TERN_OK);
	assert_true(err[0] != '\0');
	json_decref(bad);
}

static void date_and_message_id_come_from_the_caller(void **state)
{
	const char *j = "{\"From\":{\"Email\":\"a@example.com\"},\"To\":[{\"Email\":\"b@e.org\"}]}";
	struct http_send_msg m;
	char err[128];
	assert_int_equal(http_send_build(j, strlen(j), NOW, "abc@tern", &m, err, sizeof(err)),
	                 TERN_OK);
	assert_non_null(strstr(m.raw, "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"));
	assert_non_null(strstr(m.raw, "Message-ID: <abc@tern>\r\n"));
	assert_string_equal(m.from, "a@example.com");
	http_send_msg_free(&m);
}

static void tags_are_returned_for_the_store(void **state)
{
	const char *j = "{\"From\":{\"Email\":\"a@example.com\"},\"To\":[{\"Email\":\"b@e.org\"}],"
	                "\"Tags\":[\"one\",\"Two words\"]}";
	struct http_send_msg m;
	char err[128];
	assert_int_equal(http_send_build(j, strlen(j), NOW, "x@tern", &m, err, sizeof(err)),
	                 TERN_OK);
	assert_int_equal(m.n_tags, 2);
	assert_string_equal(m.tags[0], "one");
	assert_string_equal(m.tags[1], "Two words");
	http_send_msg_free(&m);
}

static const struct {
	const char *name;
	const char *json;
	const char *reason; /* substring of err */
} bad[] = {
    {"not_json", "{From", "invalid JSON"},
    {"not_an_object", "[1]", "JSON object"},
    {"missing_from", "{\"To\":[{\"Email\":\"b@e.org\"}]}", "From is required"},
    {"from_without_email", "{\"From\":{\"Name\":\"x\"},\"To\":[{\"Email\":\"b@e.org\"}]}",
     "From.Email"},
    {"bad_from_address", "{\"From\":{\"Email\":\"no at sign\"},\"To\":[{\"Email\":\"b@e.org\"}]}",
     "not a valid address"},
    {"address_with_angle", "{\"From\":{\"Email\":\"a@e.org\"},\"To\":[{\"Email\":\"b@e.org>x\"}]}",
     "not a valid address"},
    {"no_recipients", "{\"From\":{\"Email\":\"a@e.org\"}}", "no recipients"},
    {"bad_bcc", "{\"From\":{\"Email\":\"a@e.org\"},\"Bcc\":[\"x\"]}", "Bcc"},
    {"to_not_array", "{\"From\":{\"Email\":\"a@e.org\"},\"To\":\"b@e.org\"}", "To must be"},
    {"text_not_string", "{\"From\":{\"Email\":\"a@e.org\"},\"Bcc\":[\"b@e.org\"],\"Text\":1}",
     "Text must be a string"},
    {"bad_base64",
     "{\"From\":{\"Email\":\"a@e.org\"},\"Bcc\":[\"b@e.org\"],\"Attachments\":[{\"Content\":"
     "\"!!!\",\"Filename\":\"a\"}]}",
     "base64"},
    {"attachment_without_filename",
     "{\"From\":{\"Email\":\"a@e.org\"},\"Bcc\":[\"b@e.org\"],\"Attachments\":[{\"Content\":"
     "\"aGk=\"}]}",
     "Filename"},
    {"bad_content_type",
     "{\"From\":{\"Email\":\"a@e.org\"},\"Bcc\":[\"b@e.org\"],\"Attachments\":[{\"Content\":"
     "\"aGk=\",\"Filename\":\"a\",\"ContentType\":\"text\\r\\nX: y\"}]}",
     "ContentType"},
    {"content_headers_are_ours",
     "{\"From\":{\"Email\":\"a@e.org\"},\"Bcc\":[\"b@e.org\"],\"Headers\":{\"Content-Type\":"
     "\"text/html\"}}",
     "cannot be set"},
    {"bad_header_name",
     "{\"From\":{\"Email\":\"a@e.org\"},\"Bcc\":[\"b@e.org\"],\"Headers\":{\"X A\":\"v\"}}",
     "field name"},
    {"header_value_not_string",
     "{\"From\":{\"Email\":\"a@e.org\"},\"Bcc\":[\"b@e.org\"],\"Headers\":{\"X-A\":1}}", "strings"},
    {"tag_with_comma",
     "{\"From\":{\"Email\":\"a@e.org\"},\"Bcc\":[\"b@e.org\"],\"Tags\":[\"a,b\"]}", "Tags"},
};

static void rejects_bad_input_with_a_reason(void **state)
{
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct http_send_msg m;
		char err[256];
		int rc = http_send_build(bad[i].json, strlen(bad[i].json), NOW, "x@tern", &m, err,
		                         sizeof(err));
		if (rc != TERN_ESYNTAX)
			fail_msg("%s: rc %d, want ESYNTAX", bad[i].name, rc);
		if (!strstr(err, bad[i].reason))
			fail_msg("%s: reason \"%s\" lacks \"%s\"", bad[i].name, err, bad[i].reason);
		assert_null(m.raw);
	}
}

static void big_attachment_lines_stay_short(void **state)
{
	/* 300 KB of binary in base64: 76-column lines, bytes intact. */
	size_t n = 300 * 1024;
	unsigned char *bin = malloc(n);
	assert_non_null(bin);
	for (size_t i = 0; i < n; i++)
		bin[i] = (unsigned char)(i * 131 + (i >> 8));
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t b64len = (n + 2) / 3 * 4;
	char *b64 = malloc(b64len + 1), *json = malloc(b64len + 256);
	assert_non_null(b64);
	assert_non_null(json);
	size_t k = 0;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)bin[i] << 16 | (i + 1 < n ? (uint32_t)bin[i + 1] << 8 : 0) |
		             (i + 2 < n ? bin[i + 2] : 0);
		b64[k++] = a[v >> 18 & 63];
		b64[k++] = a[v >> 12 & 63];
		b64[k++] = i + 1 < n ? a[v >> 6 & 63] : '=';
		b64[k++] = i + 2 < n ? a[v & 63] : '=';
	}
	b64[k] = '\0';
	snprintf(
	    json, b64len + 256,
	    "{\"From\":{\"Email\":\"a@e.org\"},\"To\":[{\"Email\":\"b@e.org\"}],\"Text\":\"t\","
	    "\"Attachments\":[{\"Content\":\"%s\",\"Filename\":\"blob.bin\"}]}",
	    b64);
	struct http_send_msg m;
	char err[128];
	assert_int_equal(http_send_build(json, strlen(json), NOW, "x@tern", &m, err, sizeof(err)),
	                 TERN_OK);
	check_wire(&m);
	char *expect = malloc(b64len + 512);
	assert_non_null(expect);
	snprintf(
	    expect, b64len + 512,
	    "{\"structure\":[\"multipart/mixed\",\"text/plain\",\"application/octet-stream\"],"
	    "\"attachments\":[{\"filename\":\"blob.bin\",\"type\":\"application/octet-stream\","
	    "\"disposition\":\"attachment\",\"content\":\"%s\"}]}",
	    b64);
	python_check("big_attachment", &m, expect);
	/* Longest line in the body is the 76-character base64 line. */
	const char *body = strstr(m.raw, "\r\n\r\n");
	size_t line = 0, longest = 0;
	for (const char *p = body; p < m.raw + m.len; p++) {
		line = (*p == '\r' || *p == '\n') ? 0 : line + 1;
		longest = line > longest ? line : longest;
	}
	assert_true(longest <= 78);
	http_send_msg_free(&m);
	free(expect);
	free(json);
	free(b64);
	free(bin);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(builds_messages_readers_agree_with),
	    cmocka_unit_test(object_build_matches_text_build),
	    cmocka_unit_test(date_and_message_id_come_from_the_caller),
	    cmocka_unit_test(tags_are_returned_for_the_store),
	    cmocka_unit_test(rejects_bad_input_with_a_reason),
	    cmocka_unit_test(big_attachment_lines_stay_short),
	};
	return cmocka_run_group_tests(tests, setup_checker, teardown_checker);
}
