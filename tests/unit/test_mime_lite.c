/*
 * test_mime_lite.c — mime_lite_parse (src/mime/lite.h), the archive's cheap
 * MIME reading for its search index.
 *
 * What a user depends on: an archived message is found by its From, To,
 * Subject and body words however it was encoded — RFC 2047 words in
 * headers (B and Q, several charsets, adjacent words joined), MIME
 * multiparts (alternative, mixed, nested, digest), quoted-printable and
 * base64 bodies, non-UTF-8 charsets (ISO-8859-1, Windows-1252, KOI8-R,
 * Shift_JIS, ISO-2022-JP), RFC 2231 attachment names; the index stays valid
 * UTF-8 whatever the bytes; the text is bounded. And on every message of
 * tests/data/mime4j, mime and mime-hard it reads the same header fields,
 * HTML and attachment counts as the GMime reading (mime_parse), and at
 * least the same text.
 */
#include <dirent.h>
#include <stdbool.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/err.h"
#include "mime/lite.h"
#include "mime/mime.h"
#include "testdata.h"

static void parse(const char *raw, struct mime_msg *m)
{
	assert_int_equal(mime_lite_parse(raw, strlen(raw), m), TERN_OK);
	assert_non_null(m->subject);
	assert_non_null(m->text);
	assert_non_null(m->html);
	assert_non_null(m->snippet);
}

static void test_headers_encoded_words_and_addresses(void **state)
{
	(void)state;
	static const char raw[] =
	    "Received: from x\r\n"
	    "From: =?ISO-8859-1?Q?Andr=E9_S=E9nder?= <andre@sender.test>\r\n"
	    "To: Bob <bob@example.com>, carol@example.com, \"Dave, D.\" <dave@example.com>,\r\n"
	    " eve@example.com (Eve Old-Style), undisclosed: ;\r\n"
	    "Cc: team: frank@example.com, =?UTF-8?B?R3LDqXRh?= <greta@example.com>;\r\n"
	    "Subject: =?UTF-8?Q?Caf=C3=A9?= =?UTF-8?B?IG1lbnU=?=\r\n"
	    " for =?koi8-r?B?8NLJ18XU?= today\r\n"
	    "Message-ID:\r\n <abc.123@sender.test>\r\n"
	    "\r\n"
	    "body\r\n";
	struct mime_msg m;
	parse(raw, &m);
	assert_string_equal(m.subject, "Café menu for Привет today");
	assert_string_equal(m.message_id, "abc.123@sender.test");
	assert_string_equal(m.from.name, "André Sénder");
	assert_string_equal(m.from.addr, "andre@sender.test");
	assert_int_equal(m.to.n, 4);
	assert_string_equal(m.to.v[0].name, "Bob");
	assert_string_equal(m.to.v[0].addr, "bob@example.com");
	assert_string_equal(m.to.v[1].name, "");
	assert_string_equal(m.to.v[1].addr, "carol@example.com");
	assert_string_equal(m.to.v[2].name, "Dave, D.");
	assert_string_equal(m.to.v[2].addr, "dave@example.com");
	assert_string_equal(m.to.v[3].name, "Eve Old-Style");
	assert_string_equal(m.to.v[3].addr, "eve@example.com");
	assert_int_equal(m.cc.n, 2);
	assert_string_equal(m.cc.v[0].addr, "frank@example.com");
	assert_string_equal(m.cc.v[1].name, "Gréta");
	assert_string_equal(m.text, "body\r\n");
	mime_msg_free(&m);
}

static void test_multipart_qp_base64_and_charsets(void **state)
{
	(void)state;
	/* text: ISO-8859-1 quoted-printable with a soft break; HTML: base64
	 * UTF-8; a Windows-1252 part in a nested mixed; an attachment with an
	 * RFC 2231 name; a Shift_JIS and an ISO-2022-JP text part */
	static const char raw[] = "From: a@example.org\r\nTo: b@example.net\r\nSubject: parts\r\n"
	                          "MIME-Version: 1.0\r\n"
	                          "Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
	                          "preamble\r\n"
	                          "--outer\r\n"
	                          "Content-Type: multipart/alternative; boundary=alt\r\n\r\n"
	                          "--alt\r\n"
	                          "Content-Type: text/plain; charset=iso-8859-1\r\n"
	                          "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
	                          "Cr=E8me br=FBl=E9e and a very long line that is softly bro=\r\n"
	                          "ken here.\r\n"
	                          "--alt\r\n"
	                          "Content-Type: text/html; charset=utf-8\r\n"
	                          "Content-Transfer-Encoding: base64\r\n\r\n"
	                          "PHA+SGVsbG8gPGI+d29ybGQ8L2I+ICZhbXA7IGNyw6htZTwvcD4=\r\n"
	                          "--alt--\r\n"
	                          "--outer\r\n"
	                          "Content-Type: text/plain; charset=windows-1252\r\n"
	                          "Content-Disposition: inline\r\n\r\n"
	                          "smart \x93quotes\x94 \x80 5\r\n"
	                          "--outer\r\n"
	                          "Content-Type: text/plain; charset=Shift_JIS\r\n"
	                          "Content-Transfer-Encoding: base64\r\n\r\n"
	                          "k/qWe4zq\r\n" /* 日本語 */
	                          "--outer\r\n"
	                          "Content-Type: text/plain; charset=ISO-2022-JP\r\n\r\n"
	                          "\x1b$B$3$s$K$A$O\x1b(B\r\n" /* こんにちは */
	                          "--outer\r\n"
	                          "Content-Type: application/pdf\r\n"
	                          "Content-Disposition: attachment;\r\n"
	                          " filename*=UTF-8''r%C3%A9sum%C3%A9%20final.pdf\r\n"
	                          "Content-Transfer-Encoding: base64\r\n\r\n"
	                          "JVBERi0xLjQK\r\n"
	                          "--outer\r\n"
	                          "Content-Type: image/png; name*0=\"lo\"; name*1=\"go.png\"\r\n"
	                          "Content-ID: <logo@x>\r\n\r\n"
	                          "xx\r\n"
	                          "--outer--\r\n"
	                          "epilogue\r\n";
	struct mime_msg m;
	parse(raw, &m);
	assert_non_null(
	    strstr(m.text, "Crème brûlée and a very long line that is softly broken here."));
	assert_non_null(strstr(m.text, "smart \u201cquotes\u201d \u20ac 5"));
	assert_non_null(strstr(m.text, "日本語"));
	assert_non_null(strstr(m.text, "こんにちは"));
	assert_null(strstr(m.text, "preamble"));
	assert_null(strstr(m.text, "epilogue"));
	assert_string_equal(m.html, "<p>Hello <b>world</b> &amp; crème</p>");
	assert_int_equal(m.n_attachments, 1);
	assert_int_equal(m.n_inline, 1);
	bool pdf = false, png = false;
	for (size_t i = 0; i < m.n_parts; i++) {
		pdf |= strcmp(m.parts[i].filename, "résumé final.pdf") == 0;
		png |= strcmp(m.parts[i].filename, "logo.png") == 0;
	}
	assert_true(pdf);
	assert_true(png);
	assert_true(strncmp(m.snippet, "Crème brûlée", strlen("Crème brûlée")) == 0);
	mime_msg_free(&m);
}

static void test_html_only_bad_bytes_and_bounds(void **state)
{
	(void)state;
	/* HTML only: the snippet is its text */
	struct mime_msg m;
	parse("Subject: h\r\nContent-Type: text/html\r\n\r\n<html><head><title>t</title>"
	      "<style>p{}</style></head><body><p>Visible &amp; clear</p></body></html>\r\n",
	      &m);
	assert_string_equal(m.text, "");
	assert_string_equal(m.snippet, "Visible & clear");
	mime_msg_free(&m);

	/* 8-bit bytes that are not UTF-8, an unknown charset, a NUL, controls in
	 * a header: valid UTF-8 out, no NUL inside, no control in the subject */
	static const char bad[] = "Subject: caf\xe9\x01 =?x-unknown?Q?na=EFve?=\r\n"
	                          "Content-Type: text/plain; charset=x-no-such-charset\r\n\r\n"
	                          "na\xefve\x00tail\r\n";
	assert_int_equal(mime_lite_parse(bad, sizeof(bad) - 1, &m), TERN_OK);
	assert_string_equal(m.subject, "café_ naïve");
	assert_string_equal(m.text, "naïvetail\r\n");
	mime_msg_free(&m);

	/* a text of 200 KiB: at most MIME_LITE_TEXT_MAX kept, cut on a character */
	struct tbuf big = TBUF_INIT(1 << 20);
	assert_int_equal(tbuf_append_str(&big, "Subject: big\r\nContent-Type: text/plain; "
	                                       "charset=utf-8\r\n\r\n"),
	                 TERN_OK);
	while (big.len < 200 * 1024)
		assert_int_equal(tbuf_append_str(&big, "żółw "), TERN_OK);
	assert_int_equal(mime_lite_parse(big.data, big.len, &m), TERN_OK);
	size_t tl = strlen(m.text);
	assert_true(tl <= MIME_LITE_TEXT_MAX && tl > MIME_LITE_TEXT_MAX - 8);
	/* valid UTF-8: the last character is whole */
	assert_true(((unsigned char)m.text[tl - 1] & 0xc0) != 0xc0);
	mime_msg_free(&m);
	tbuf_free(&big);

	/* nothing at all, and bytes with no header block */
	assert_int_equal(mime_lite_parse("", 0, &m), TERN_OK);
	assert_string_equal(m.subject, "");
	assert_string_equal(m.from.addr, "");
	mime_msg_free(&m);
	parse("just some words\r\nand more\r\n", &m);
	assert_string_equal(m.text, "just some words\r\nand more\r\n");
	mime_msg_free(&m);
}

static bool slurp(const char *path, struct tbuf *b)
{
	FILE *fp = fopen(path, "rb");
	if (!fp)
		return false;
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof(chunk), fp)) > 0)
		assert_int_equal(tbuf_append(b, chunk, n), TERN_OK);
	fclose(fp);
	return true;
}

static void same_addrs(const char *f, const struct mime_addrs *g, const struct mime_addrs *l)
{
	if (g->n != l->n)
		fail_msg("%s: %zu addresses (GMime) vs %zu", f, g->n, l->n);
	for (size_t i = 0; i < g->n; i++) {
		if (strcmp(g->v[i].addr, l->v[i].addr) != 0 ||
		    strcmp(g->v[i].name, l->v[i].name) != 0)
			fail_msg("%s: address %zu: \"%s\" <%s> (GMime) vs \"%s\" <%s>", f, i,
			         g->v[i].name, g->v[i].addr, l->v[i].name, l->v[i].addr);
	}
}

/* Every message of one tests/data folder, read both ways. */
static size_t compare_dir(const char *rel)
{
	char dir[1100];
	assert_true(testdata_path(dir, sizeof(dir), rel));
	DIR *d = opendir(dir);
	if (!d)
		fail_msg("cannot open %s (tests/data/%s; TERN_TESTDATA overrides)", dir, rel);
	struct dirent *de;
	size_t n = 0;
	while ((de = readdir(d)) != NULL) {
		const char *dot = strrchr(de->d_name, '.');
		if (!dot || (strcmp(dot, ".msg") != 0 && strcmp(dot, ".eml") != 0))
			continue;
		char path[1400];
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		struct tbuf raw = TBUF_INIT(1 << 24);
		assert_true(slurp(path, &raw));
		const char *r = raw.data ? raw.data : "";
		struct mime_msg g, l;
		assert_int_equal(mime_parse(r, raw.len, 0, &g), TERN_OK);
		assert_int_equal(mime_lite_parse(r, raw.len, &l), TERN_OK);
		const char *f = de->d_name;
		if (strcmp(g.subject, l.subject) != 0)
			fail_msg("%s: subject \"%s\" (GMime) vs \"%s\"", f, g.subject, l.subject);
		assert_string_equal(g.message_id, l.message_id);
		assert_string_equal(g.from.name, l.from.name);
		assert_string_equal(g.from.addr, l.from.addr);
		same_addrs(f, &g.to, &l.to);
		same_addrs(f, &g.cc, &l.cc);
		same_addrs(f, &g.bcc, &l.bcc);
		same_addrs(f, &g.reply_to, &l.reply_to);
		if (strcmp(g.html, l.html) != 0)
			fail_msg("%s: the HTML differs", f);
		/* the text: GMime's, or more where GMime dropped a malformed part */
		if (!strstr(l.text, g.text))
			fail_msg("%s: text \"%.200s\" (GMime) not in \"%.200s\"", f, g.text,
			         l.text);
		if (g.n_attachments != l.n_attachments || g.n_inline != l.n_inline)
			fail_msg("%s: attachments %zu/%zu, inline %zu/%zu", f, g.n_attachments,
			         l.n_attachments, g.n_inline, l.n_inline);
		mime_msg_free(&g);
		mime_msg_free(&l);
		tbuf_free(&raw);
		n++;
	}
	closedir(d);
	return n;
}

static void test_same_fields_as_gmime_on_the_corpus(void **state)
{
	(void)state;
	mime_init();
	size_t n = compare_dir("mime4j") + compare_dir("mime") + compare_dir("mime-hard");
	assert_true(n >= 39);
	printf("%zu messages read both ways\n", n);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_headers_encoded_words_and_addresses),
	    cmocka_unit_test(test_multipart_qp_base64_and_charsets),
	    cmocka_unit_test(test_html_only_bad_bytes_and_bounds),
	    cmocka_unit_test(test_same_fields_as_gmime_on_the_corpus),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
