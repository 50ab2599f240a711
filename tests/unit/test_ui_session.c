/*
 * test_ui_session.c — the web UI's login sessions (src/http/ui_session.c):
 * the Cookie header parser, the constant-time token compare, and the session
 * table (ids and CSRF tokens of 256 random bits, lookup, expiry, logout,
 * the oldest session going when the table is full).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/err.h"
#include "http/ui_session.h"

#define NOW 1700000000LL

static bool cookie(const char *hdr, const char *name, const char *want)
{
	const char *v = NULL;
	size_t n = 0;
	if (!ui_cookie_get(hdr, strlen(hdr), name, &v, &n))
		return want == NULL;
	return want && n == strlen(want) && memcmp(v, want, n) == 0;
}

static void test_cookie_parser(void **state)
{
	(void)state;
	assert_true(cookie("tern_ui=abc", "tern_ui", "abc"));
	assert_true(cookie("a=1; tern_ui=abc; b=2", "tern_ui", "abc"));
	assert_true(cookie("a=1;tern_ui = abc ;b=2", "tern_ui", "abc"));
	assert_true(cookie("tern_ui=\"abc\"", "tern_ui", "abc"));
	assert_true(cookie("tern_ui=first; tern_ui=second", "tern_ui", "first"));
	assert_true(cookie("tern_ui=", "tern_ui", ""));
	/* a name that only contains or starts like ours is not ours */
	assert_true(cookie("xtern_ui=abc; tern_uix=def", "tern_ui", NULL));
	assert_true(cookie("tern_ui", "tern_ui", NULL));
	assert_true(cookie("", "tern_ui", NULL));
	assert_true(cookie(";;; ;", "tern_ui", NULL));
	assert_true(cookie("a=b=c; tern_ui=x=y", "tern_ui", "x=y"));
}

static void test_token_equal(void **state)
{
	(void)state;
	assert_true(ui_token_equal("abcd", "abcd", 4));
	assert_false(ui_token_equal("abcd", "abce", 4));
	assert_false(ui_token_equal("abcd", "abc", 3));
	assert_false(ui_token_equal("abcd", "abcde", 5));
	assert_false(ui_token_equal("abcd", "", 0));
}

static void test_sessions(void **state)
{
	(void)state;
	struct ui_sessions *s = ui_sessions_new(2, 3600);
	assert_non_null(s);
	char id[UI_TOKEN_HEX + 1], csrf[UI_TOKEN_HEX + 1], id2[UI_TOKEN_HEX + 1],
	    csrf2[UI_TOKEN_HEX + 1], user[UI_USER_MAX + 1], got[UI_TOKEN_HEX + 1];
	assert_int_equal(ui_session_create(s, "", NOW, id, csrf), TERN_EINVAL);
	assert_int_equal(ui_session_create(s, "admin@example.test", NOW, id, csrf), TERN_OK);
	assert_int_equal(strlen(id), UI_TOKEN_HEX);
	assert_int_equal(strspn(id, "0123456789abcdef"), UI_TOKEN_HEX);
	assert_string_not_equal(id, csrf);
	assert_true(ui_session_find(s, id, UI_TOKEN_HEX, NOW + 1, user, sizeof(user), got));
	assert_string_equal(user, "admin@example.test");
	assert_string_equal(got, csrf);
	/* the CSRF token is no session id; a changed or short id finds nothing */
	assert_false(ui_session_find(s, csrf, UI_TOKEN_HEX, NOW + 1, NULL, 0, NULL));
	char bad[UI_TOKEN_HEX + 1];
	memcpy(bad, id, sizeof(bad));
	bad[10] = bad[10] == 'a' ? 'b' : 'a';
	assert_false(ui_session_find(s, bad, UI_TOKEN_HEX, NOW + 1, NULL, 0, NULL));
	assert_false(ui_session_find(s, id, UI_TOKEN_HEX - 1, NOW + 1, NULL, 0, NULL));
	/* expiry: gone at ttl, and dropped */
	assert_true(ui_session_find(s, id, UI_TOKEN_HEX, NOW + 3599, NULL, 0, NULL));
	assert_false(ui_session_find(s, id, UI_TOKEN_HEX, NOW + 3600, NULL, 0, NULL));
	assert_int_equal(ui_session_count(s, NOW), 0);
	/* logout */
	assert_int_equal(ui_session_create(s, "a@example.test", NOW, id, csrf), TERN_OK);
	ui_session_drop(s, id, UI_TOKEN_HEX);
	assert_false(ui_session_find(s, id, UI_TOKEN_HEX, NOW, NULL, 0, NULL));
	/* full: the one that expires first makes room */
	assert_int_equal(ui_session_create(s, "a@example.test", NOW, id, csrf), TERN_OK);
	assert_int_equal(ui_session_create(s, "b@example.test", NOW + 10, id2, csrf2), TERN_OK);
	char id3[UI_TOKEN_HEX + 1], csrf3[UI_TOKEN_HEX + 1];
	assert_int_equal(ui_session_create(s, "c@example.test", NOW + 20, id3, csrf3), TERN_OK);
	assert_false(ui_session_find(s, id, UI_TOKEN_HEX, NOW + 20, NULL, 0, NULL));
	assert_true(ui_session_find(s, id2, UI_TOKEN_HEX, NOW + 20, NULL, 0, NULL));
	assert_true(ui_session_find(s, id3, UI_TOKEN_HEX, NOW + 20, NULL, 0, NULL));
	assert_int_equal(ui_session_count(s, NOW + 20), 2);
	ui_sessions_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_cookie_parser),
	    cmocka_unit_test(test_token_equal),
	    cmocka_unit_test(test_sessions),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
