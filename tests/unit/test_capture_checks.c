/*
 * test_capture_checks.c — the pure parts of capture mode's checks
 * (src/store/html_check.c, store/checks.h): which caniemail features
 * html_check finds and how often (inline styles as Mailpit detects them,
 * <style> rules applied by simple selectors, at-rules, elements, image
 * formats, scripts), its node count and totals, its tolerance of broken
 * HTML, the links checks_links extracts, and the spam scanner specs
 * spam_check_spec_ok accepts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "store/checks.h"

/* Found count of slug in the check of html, 0 when not warned about. */
static int found(const char *html, const char *slug)
{
	json_t *r = html_check(html, strlen(html));
	assert_non_null(r);
	int n = 0;
	size_t i;
	json_t *w;
	json_array_foreach(json_object_get(r, "Warnings"), i, w)
	{
		if (strcmp(json_string_value(json_object_get(w, "Slug")), slug) == 0)
			n = (int)json_integer_value(
			    json_object_get(json_object_get(w, "Score"), "Found"));
	}
	json_decref(r);
	return n;
}

/* The sorted, comma-joined css-* slugs found in html. */
static void css_slugs(const char *html, char *out, size_t len)
{
	json_t *r = html_check(html, strlen(html));
	assert_non_null(r);
	const char *v[64];
	size_t n = 0, i;
	json_t *w;
	json_array_foreach(json_object_get(r, "Warnings"), i, w)
	{
		const char *s = json_string_value(json_object_get(w, "Slug"));
		if (strncmp(s, "css-", 4) == 0 && n < 64)
			v[n++] = s;
	}
	for (size_t a = 0; a < n; a++)
		for (size_t b = a + 1; b < n; b++)
			if (strcmp(v[b], v[a]) < 0) {
				const char *t = v[a];
				v[a] = v[b];
				v[b] = t;
			}
	out[0] = '\0';
	for (size_t k = 0; k < n; k++) {
		if (k)
			strncat(out, ",", len - strlen(out) - 1);
		strncat(out, v[k], len - strlen(out) - 1);
	}
	json_decref(r);
}

static void inline_styles_as_mailpit_detects_them(void **state)
{
	static const struct {
		const char *html, *want;
	} t[] = {
	    {"<h1 style=\"transform: rotate(20deg)\">H</h1>", "css-transform"},
	    {"<h1 style=\"color:green; transform :rotate(20deg)\">H</h1>", "css-transform"},
	    {"<h1 style=\"TRANSFORM:rotate(20deg)\">H</h1>", "css-transform"},
	    {"<h1 style=\"ignore-transform: something\">H</h1>", ""},
	    {"<h1 style=\"text-transform: uppercase\">H</h1>", "css-text-transform"},
	    {"<h1 style=\"padding-inline-start: 5px\">H</h1>", "css-padding-inline-start-end"},
	    {"<h1 style=\"margin-inline-middle: 5px\">H</h1>", ""},
	    {"<h1 style=\"color:green!important\">H</h1>", "css-important"},
	    {"<h1 style=\"color: green !important;\">H</h1>", "css-important"},
	    {"<h1 style=\"color:green!important-stuff;\">H</h1>", ""},
	    {"<h1 style=\"display  : flex ;\">H</h1>", "css-display,css-display-flex"},
	    {"<h1 style=\"DISPLAY:FLEX;\">H</h1>", "css-display,css-display-flex"},
	    {"<h1 style=\"display: flexing;\">H</h1>", "css-display"},
	    {"<h1 style=\"line-height: 1px;opacity: 0.5; width: calc(10px + 100px)\">H</h1>",
	     "css-line-height,css-opacity,css-unit-calc,css-width"},
	    {"<h1 style=\"color: rgb(255,255,255);\">H</h1>", "css-rgb"},
	    {"<h1 style=\"color:rgba(255,255,255, 0);\">H</h1>", "css-rgba"},
	    {"<h1 style=\"border: solid rgb(1,1,1) 1px; color:rgba(1,1,1, 0);\">H</h1>",
	     "css-border,css-rgb,css-rgba"},
	    {"<h1 border=\"2\">H</h1>", "css-border"},
	    {"<h1 BORDER=\"2\" BACKGROUND=\"GREEN\">H</h1>", "css-background,css-border"},
	    {"<h1 border-something=\"2\" background-something=\"green\">H</h1>", ""},
	    {"<h1 style=\"width: 2rem\">H</h1>", "css-unit-rem,css-width"},
	    {"<h1 style=\"--main: red\">H</h1>", "css-variables"},
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char got[512];
		css_slugs(t[i].html, got, sizeof(got));
		if (strcmp(got, t[i].want) != 0)
			fail_msg("%s: got \"%s\", want \"%s\"", t[i].html, got, t[i].want);
	}
}

static void style_blocks_rules_and_at_rules(void **state)
{
	const char *h =
	    "<html><head><style>\n/* c */ .row { display: flex } #x, td.cell "
	    "{ border-radius: 2px }\n@media (max-width: 600px) { .row { display: grid } "
	    "}\na:hover { color: red } p:first-child{} @font-face { font-family: x }\n"
	    "</style></head><body><div class=\"a row\">1</div><div class=\"rows\">2</div>"
	    "<p id=\"x\">3</p><table><tr><td class=\"cell\">4</td></tr></table>"
	    "</body></html>";
	assert_int_equal(found(h, "css-display-flex"), 1); /* .row, not .rows */
	assert_int_equal(found(h, "css-display-grid"), 0); /* inside @media: not applied */
	assert_int_equal(found(h, "css-border-radius"), 2);
	assert_int_equal(found(h, "css-at-media"), 1);
	assert_int_equal(found(h, "css-at-font-face"), 1);
	assert_int_equal(found(h, "css-pseudo-class-hover"), 1);
	assert_int_equal(found(h, "css-pseudo-class-first-child"), 1);
	assert_int_equal(found(h, "html-style"), 1);
	assert_int_equal(found(h, "html-body"), 1);
}

static void elements_images_and_scripts(void **state)
{
	const char *h = "<body><form><input type=\"text\"><input type=\"hidden\" name=a>"
	                "<button type=submit>go</button></form><a href=\"#top\">t</a>"
	                "<a href=\"https://x\">x</a><img src=\"a.WEBP\"><img src=\"data:image/png;"
	                "base64,AAAA\"><img srcset=\"a 1x\" src=\"b.gif\"><section><nav></nav>"
	                "</section><script>if (a < b) document.write('<style>')</script>"
	                "<script type=\"application/ld+json\">{}</script><svg></svg></body>";
	assert_int_equal(found(h, "html-form"), 1);
	assert_int_equal(found(h, "html-input-text"), 1);
	assert_int_equal(found(h, "html-input-hidden"), 1);
	assert_int_equal(found(h, "html-button-submit"), 1);
	assert_int_equal(found(h, "html-anchor-links"), 1);
	assert_int_equal(found(h, "image-webp"), 1);
	assert_int_equal(found(h, "image-base64"), 1);
	assert_int_equal(found(h, "image-gif"), 1);
	assert_int_equal(found(h, "html-srcset"), 1);
	assert_int_equal(found(h, "html-semantics"), 2);
	assert_int_equal(found(h, "html-svg"), 1);
	assert_int_equal(found(h, "html-script"), 1); /* ld+json is not a script */
	assert_int_equal(found(h, "html-style"), 0);  /* '<style>' inside a script is text */
	assert_int_equal(found(h, "html-body"), 1);   /* </body> is there */
}

static void nodes_and_totals(void **state)
{
	/* a fragment: body and head-only elements before the content are no nodes */
	json_t *r = html_check("<style>p{}</style><p>a</p><p>b</p>", 34);
	assert_non_null(r);
	json_t *t = json_object_get(r, "Total");
	assert_int_equal(json_integer_value(json_object_get(t, "Nodes")), 2);
	double s = json_real_value(json_object_get(t, "Supported"));
	double p = json_real_value(json_object_get(t, "Partial"));
	double u = json_real_value(json_object_get(t, "Unsupported"));
	assert_true(s >= 0 && s <= 100 && p >= 0 && u >= 0);
	assert_true(s + p + u > 99.999 && s + p + u < 100.001);
	assert_true(json_object_size(json_object_get(r, "Platforms")) > 3);
	json_decref(r);
	/* a document: everything but html, head and meta */
	const char *d = "<html><head><meta charset=utf-8><title>t</title></head><body><p>a</p>"
	                "</body></html>";
	r = html_check(d, strlen(d));
	assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "Total"), "Nodes")),
	                 3);
	json_decref(r);
}

static void broken_html_is_read_tolerantly(void **state)
{
	static const char *t[] = {
	    "",
	    "<",
	    "<<<>>>",
	    "<a",
	    "<a href=",
	    "<a href=\"x",
	    "<!--",
	    "<!-- <style>",
	    "<style>.x{",
	    "<style>@media {{{",
	    "<p style=\"display:\">",
	    "<p style=\";;;:::\">",
	    "<p style=\"color:red!\">",
	    "</",
	    "<div class>",
	    "<x =y>",
	    "<style>a{}}}}b{c:d}",
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		json_t *r = html_check(t[i], strlen(t[i]));
		assert_non_null(r);
		json_decref(r);
	}
	/* bytes after a NUL still count */
	const char nul[] = "<p>\0<p style=\"display:flex\">";
	json_t *r = html_check(nul, sizeof(nul) - 1);
	size_t i;
	json_t *w;
	bool flex = false;
	json_array_foreach(json_object_get(r, "Warnings"), i, w) flex |=
	    strcmp(json_string_value(json_object_get(w, "Slug")), "css-display-flex") == 0;
	assert_true(flex);
	json_decref(r);
}

static void links_are_extracted_once_each(void **state)
{
	const char *h =
	    "<a href=\"https://a.example/x?a=1&amp;b=2\">a</a><img src='http://b.example/"
	    "i.png'><a href=\"mailto:x@y\">m</a><a href=\"#top\">t</a><!-- <a href="
	    "\"http://hidden.example/\"> --><area href=\"http://c.example/\">"
	    "<link rel=\"stylesheet\" href=\"https://f.example/s.css\">"
	    "<link rel=\"icon\" href=\"https://g.example/i.ico\">"
	    "<a href=\"https://a.example/x?a=1&amp;b=2\">again</a>";
	const char *t = "see https://d.example/page. And (http://e.example/p), "
	                "xhttp://no.example/ https://a.example/x?a=1&b=2";
	json_t *arr = json_array();
	checks_links(h, strlen(h), t, strlen(t), 100, arr);
	static const char *want[] = {"https://a.example/x?a=1&b=2", "http://b.example/i.png",
	                             "http://c.example/",           "https://f.example/s.css",
	                             "https://d.example/page",      "http://e.example/p"};
	assert_int_equal(json_array_size(arr), 6);
	for (size_t i = 0; i < 6; i++)
		assert_string_equal(json_string_value(json_array_get(arr, i)), want[i]);
	json_decref(arr);
	arr = json_array();
	checks_links(h, strlen(h), t, strlen(t), 2, arr);
	assert_int_equal(json_array_size(arr), 2);
	json_decref(arr);
}

static void spam_specs(void **state)
{
	assert_true(spam_check_spec_ok("rspamd:127.0.0.1:11333"));
	assert_true(spam_check_spec_ok("spamassassin:localhost:783"));
	assert_true(spam_check_spec_ok("127.0.0.1:783"));
	assert_true(spam_check_spec_ok("rspamd:[::1]:11333"));
	assert_false(spam_check_spec_ok(""));
	assert_false(spam_check_spec_ok("rspamd:127.0.0.1"));
	assert_false(spam_check_spec_ok("rspamd:127.0.0.1:0"));
	assert_false(spam_check_spec_ok("rspamd:127.0.0.1:70000"));
	assert_false(spam_check_spec_ok("rspamd::11333"));
	assert_false(spam_check_spec_ok("rspamd:a b:1"));
	assert_false(spam_check_spec_ok("rspamd:::1:11333"));
	json_t *r = spam_check(NULL, "x", 1, 1000);
	assert_string_equal(json_string_value(json_object_get(r, "Error")),
	                    "SpamAssassin is not enabled");
	json_decref(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(inline_styles_as_mailpit_detects_them),
	    cmocka_unit_test(style_blocks_rules_and_at_rules),
	    cmocka_unit_test(elements_images_and_scripts),
	    cmocka_unit_test(nodes_and_totals),
	    cmocka_unit_test(broken_html_is_read_tolerantly),
	    cmocka_unit_test(links_are_extracted_once_each),
	    cmocka_unit_test(spam_specs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
