/*
 * test_http_guard.c — the request guard of the capture HTTP API
 * (src/http/guard.c): Host parsing and the allow-list (DNS rebinding),
 * same-origin Origins (cross-site requests), and JSON content types.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/err.h"
#include "http/http.h"

static struct http_hostport host(const char *s)
{
	struct http_hostport h;
	int rc = http_parse_host(s, strlen(s), &h);
	if (rc != TERN_OK)
		fail_msg("Host '%s' did not parse", s);
	return h;
}

static void parses_host_values(void **state)
{
	struct http_hostport h = host("Example.COM:8025");
	assert_string_equal(h.name, "example.com");
	assert_int_equal(h.port, 8025);
	assert_false(h.ip);

	h = host("localhost.");
	assert_string_equal(h.name, "localhost");
	assert_int_equal(h.port, -1);

	h = host("127.0.0.1");
	assert_true(h.ip);
	h = host(" 10.0.0.1:80 ");
	assert_true(h.ip);
	assert_int_equal(h.port, 80);

	h = host("[0:0::1]:8025");
	assert_string_equal(h.name, "[::1]");
	assert_true(h.ip);
	assert_int_equal(h.port, 8025);

	h = host("[2001:DB8::1]");
	assert_string_equal(h.name, "[2001:db8::1]");
	assert_int_equal(h.port, -1);

	h = host("example.com:"); /* RFC 3986: an empty port is no port */
	assert_int_equal(h.port, -1);

	/* digits that are no IPv4 address are a name, and not an IP literal */
	h = host("1.2.3");
	assert_false(h.ip);

	static const char *const bad[] = {
	    "",
	    " ",
	    "evil.example@127.0.0.1",
	    "a b",
	    "127.0.0.1:80:80",
	    "[::1",
	    "[::1]x",
	    "[]",
	    "[not-v6]:80",
	    "::1",
	    "example.com:0",
	    "example.com:65536",
	    "example.com:123456",
	    "example.com:8o",
	    ".example.com",
	    "a..b",
	    "127.001..:8025",
	    ".",
	    "exa\tmple.com",
	    "example.com/path",
	    "ex%41mple.com",
	    "\xc3\xa9xample.com",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct http_hostport x;
		if (http_parse_host(bad[i], strlen(bad[i]), &x) != TERN_ESYNTAX)
			fail_msg("Host '%s' parsed", bad[i]);
	}
	/* a NUL inside the value is not the end of it */
	struct http_hostport x;
	assert_int_equal(http_parse_host("localhost\0.evil", 15, &x), TERN_ESYNTAX);
}

static bool allowed(const char *h, const char *const *list, size_t n, const char *own)
{
	struct http_hostport hp = host(h);
	return http_host_allowed(&hp, list, n, own);
}

static void allows_only_own_names(void **state)
{
	/* with no list: IP literals, localhost, *.localhost and the own name */
	static const char *const yes[] = {"127.0.0.1:8025", "[::1]:8025",          "localhost:8025",
	                                  "LOCALHOST",      "a.b.localhost",       "192.0.2.7",
	                                  "[2001:db8::1]",  "mx.example.test:8025"};
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
		if (!allowed(yes[i], NULL, 0, "mx.example.test"))
			fail_msg("'%s' refused", yes[i]);
	static const char *const no[] = {"evil.example",         "localhost.evil.example",
	                                 "xlocalhost",           "sub.mx.example.test",
	                                 "mx.example.test.evil", "1.2.3"};
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
		if (allowed(no[i], NULL, 0, "mx.example.test"))
			fail_msg("'%s' allowed", no[i]);
	assert_false(allowed("evil.example", NULL, 0, NULL));
	assert_false(allowed("evil.example", NULL, 0, ""));

	/* the list: exact names, ".domain" for it and below, "*" */
	static const char *const list[] = {"mail.dev.example", ".preview.example"};
	assert_true(allowed("mail.dev.example", list, 2, NULL));
	assert_true(allowed("MAIL.DEV.EXAMPLE:1", list, 2, NULL));
	assert_false(allowed("x.mail.dev.example", list, 2, NULL));
	assert_false(allowed("dev.example", list, 2, NULL));
	assert_true(allowed("preview.example", list, 2, NULL));
	assert_true(allowed("a.b.preview.example", list, 2, NULL));
	assert_false(allowed("xpreview.example", list, 2, NULL));
	assert_false(allowed("preview.example.evil", list, 2, NULL));
	static const char *const any[] = {"*"};
	assert_true(allowed("anything.example", any, 1, NULL));
}

static bool same(const char *origin, const char *h)
{
	struct http_hostport hp = host(h);
	return http_origin_same(origin, strlen(origin), &hp);
}

static void origin_must_be_the_host_itself(void **state)
{
	assert_true(same("http://127.0.0.1:8025", "127.0.0.1:8025"));
	assert_true(same("HTTP://LOCALHOST:8025", "localhost:8025"));
	assert_true(same("http://[::1]:8025", "[0::1]:8025"));
	assert_true(same("https://mail.dev.example", "mail.dev.example"));
	assert_true(same("https://mail.dev.example:443", "mail.dev.example"));
	assert_true(same("http://mail.dev.example", "mail.dev.example:80"));
	assert_true(same("https://mail.dev.example", "mail.dev.example:443"));

	assert_false(same("http://evil.example", "127.0.0.1:8025"));
	assert_false(same("http://127.0.0.1:8026", "127.0.0.1:8025"));
	assert_false(same("http://127.0.0.1", "127.0.0.1:8025"));
	assert_false(same("http://localhost:8025", "127.0.0.1:8025"));
	assert_false(same("https://mail.dev.example", "mail.dev.example:80"));
	assert_false(same("http://mail.dev.example", "mail.dev.example:443"));
	assert_false(same("null", "127.0.0.1:8025"));
	assert_false(same("", "127.0.0.1:8025"));
	assert_false(same("file://", "localhost"));
	assert_false(same("ftp://127.0.0.1:8025", "127.0.0.1:8025"));
	assert_false(same("http://127.0.0.1:8025/", "127.0.0.1:8025"));
	assert_false(same("http://x@127.0.0.1:8025", "127.0.0.1:8025"));
	assert_false(same("http://127.0.0.1:8025 http://evil", "127.0.0.1:8025"));
	assert_false(same("http://", "127.0.0.1:8025"));
	struct http_hostport hp = host("localhost:8025");
	assert_false(http_origin_same("http://localhost:8025\0x", 23, &hp));
}

static bool json(const char *ct)
{
	return http_ctype_is_json(ct, strlen(ct));
}

static void only_json_bodies(void **state)
{
	assert_true(json("application/json"));
	assert_true(json("Application/JSON"));
	assert_true(json("application/json; charset=utf-8"));
	assert_true(json("application/json;charset=UTF-8"));
	assert_true(json(" application/json "));
	assert_false(json(""));
	assert_false(json("text/plain"));
	assert_false(json("text/plain; application/json"));
	assert_false(json("application/x-www-form-urlencoded"));
	assert_false(json("multipart/form-data; boundary=x"));
	assert_false(json("application/jsonp"));
	assert_false(json("application/json-seq"));
	assert_false(json("application/json x"));
	assert_false(json("application/"));
	assert_false(http_ctype_is_json("application/json", 10));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(parses_host_values),
	    cmocka_unit_test(allows_only_own_names),
	    cmocka_unit_test(origin_must_be_the_host_itself),
	    cmocka_unit_test(only_json_bodies),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
