/*
 * test_tracking.c — open/click tokens and the HTML rewriter (http/tracking.h):
 * links rewritten and only http(s) ones, the pixel placed, tokens that
 * verify to what they name, and tampered or swapped tokens refused.
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
#include "core/err.h"
#include "http/tracking.h"

static const unsigned char key[TRACK_KEY_LEN] = "0123456789abcdef0123456789abcdef";
#define BASE "https://t.example.org"

static char *rewrite(const char *html, bool opens, bool clicks, const char *rcpt)
{
	struct tbuf out = TBUF_INIT(1 << 20);
	assert_int_equal(
	    track_rewrite_html(key, BASE, "Q1234", rcpt, opens, clicks, html, strlen(html), &out),
	    TERN_OK);
	assert_int_equal(tbuf_append(&out, "", 1), TERN_OK);
	return out.data;
}

/* The token after the n-th occurrence of prefix in s (up to the quote). */
static void token_at(const char *s, const char *prefix, int n, char *tok, size_t toklen)
{
	const char *p = s;
	for (int i = 0; i <= n; i++) {
		p = strstr(p, prefix);
		assert_non_null(p);
		p += strlen(prefix);
	}
	size_t l = strcspn(p, "\"' >");
	assert_true(l < toklen);
	memcpy(tok, p, l);
	tok[l] = '\0';
}

static void test_links_rewritten(void **state)
{
	(void)state;
	const char *in = "<html><body><p>Hi <A class=x HREF=\"https://shop.example/a?x=1&amp;y=2\">"
	                 "buy</A> <a href='http://e.example/b'>b</a> <a href=mailto:x@y.z>m</a> "
	                 "<a href=\"#top\">t</a> <a href=\"tel:+1\">t</a> <a href=\"/rel\">r</a>"
	                 "<!-- <a href=\"https://comment.example/\"> --></p></BODY></html>";
	char *out = rewrite(in, false, true, "bob@example.net");
	assert_null(strstr(out, "shop.example"));
	assert_null(strstr(out, "e.example/b"));
	assert_non_null(strstr(out, "<a href=mailto:x@y.z>"));
	assert_non_null(strstr(out, "<a href=\"#top\">"));
	assert_non_null(strstr(out, "<a href=\"tel:+1\">"));
	assert_non_null(strstr(out, "<a href=\"/rel\">"));
	assert_non_null(strstr(out, "comment.example")); /* comments untouched */
	assert_null(strstr(out, "/t/o/"));               /* no pixel without opens */
	char tok[2048];
	struct track_ref r;
	token_at(out, "HREF=\"" BASE "/t/c/", 0, tok, sizeof(tok));
	assert_true(track_verify(key, 'c', tok, strlen(tok), &r));
	assert_string_equal(r.url, "https://shop.example/a?x=1&y=2");
	assert_string_equal(r.queue_id, "Q1234");
	assert_string_equal(r.rcpt, "bob@example.net");
	assert_false(track_verify(key, 'o', tok, strlen(tok), &r)); /* kinds kept apart */
	token_at(out, "href='" BASE "/t/c/", 0, tok, sizeof(tok));
	assert_true(track_verify(key, 'c', tok, strlen(tok), &r));
	assert_string_equal(r.url, "http://e.example/b");
	free(out);
}

static void test_pixel_placed(void **state)
{
	(void)state;
	char *out = rewrite("<p>x</p></Body ></html>", true, false, NULL);
	const char *img = strstr(out, "<img src=\"" BASE "/t/o/");
	assert_non_null(img);
	assert_true(img < strstr(out, "</Body >"));
	assert_non_null(strstr(out, "\" width=\"1\" height=\"1\" alt=\"\"></Body ></html>"));
	char tok[512];
	struct track_ref r;
	token_at(out, "/t/o/", 0, tok, sizeof(tok));
	assert_true(track_verify(key, 'o', tok, strlen(tok), &r));
	assert_string_equal(r.queue_id, "Q1234");
	assert_string_equal(r.rcpt, "");
	assert_string_equal(r.url, "");
	free(out);
	out = rewrite("<p>no body</p>", true, true, NULL); /* appended */
	assert_int_equal(strncmp(out, "<p>no body</p><img src=\"", 24), 0);
	free(out);
	out = rewrite("<a href=\"https://x.example/\">x</a>", false, false, NULL);
	assert_string_equal(out, "<a href=\"https://x.example/\">x</a>");
	free(out);
}

static void test_tampered_refused(void **state)
{
	(void)state;
	struct tbuf t = TBUF_INIT(8192);
	const char *url = "https://good.example/";
	assert_int_equal(track_token(key, 'c', "Q1", "a@b.c", url, strlen(url), &t), TERN_OK);
	assert_int_equal(tbuf_append(&t, "", 1), TERN_OK);
	struct track_ref r;
	assert_true(track_verify(key, 'c', t.data, strlen(t.data), &r));
	for (size_t i = 0; i < strlen(t.data); i++) { /* any one byte changed */
		char *c = strdup(t.data);
		c[i] = c[i] == 'A' ? 'B' : 'A';
		assert_false(track_verify(key, 'c', c, strlen(c), &r));
		free(c);
	}
	/* the URL swapped under the old MAC */
	struct tbuf e = TBUF_INIT(8192);
	const char *evil = "https://evil.example/";
	assert_int_equal(track_token(key, 'c', "Q1", "a@b.c", evil, strlen(evil), &e), TERN_OK);
	assert_int_equal(tbuf_append(&e, "", 1), TERN_OK);
	const char *dt = strchr(t.data, '.'), *de = strchr(e.data, '.');
	char swapped[8192];
	snprintf(swapped, sizeof(swapped), "%.*s%s", (int)(de - e.data), e.data, dt);
	assert_false(track_verify(key, 'c', swapped, strlen(swapped), &r));
	/* another key */
	unsigned char k2[TRACK_KEY_LEN];
	memcpy(k2, key, sizeof(k2));
	k2[0] ^= 1;
	assert_false(track_verify(k2, 'c', t.data, strlen(t.data), &r));
	/* only http(s) URLs become tokens */
	assert_int_equal(track_token(key, 'c', "Q1", NULL, "javascript:x", 12, &e), TERN_EINVAL);
	assert_int_equal(track_token(key, 'c', "Q1", NULL, "https://a\r\nb", 12, &e), TERN_EINVAL);
	assert_false(track_verify(key, 'c', "", 0, &r));
	assert_false(track_verify(key, 'c', ".", 1, &r));
	tbuf_free(&t);
	tbuf_free(&e);
}

static void test_gif(void **state)
{
	(void)state;
	assert_int_equal(sizeof(track_gif), 43);
	assert_memory_equal(track_gif, "GIF89a", 6);
	assert_int_equal(track_gif[42], 0x3b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_links_rewritten),
	    cmocka_unit_test(test_pixel_placed),
	    cmocka_unit_test(test_tampered_refused),
	    cmocka_unit_test(test_gif),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
