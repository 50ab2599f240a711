/*
 * fuzz_ui_cookie.c — libFuzzer target for the Cookie header parser of the
 * serve web UI (ui_cookie_get, src/http/ui_session.c), and the session
 * lookup fed with what it finds.
 *
 * Besides "no crash, no sanitizer report", it checks: a value found lies
 * inside the header; a lookup of an arbitrary value never finds a session
 * that was not made from it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/ui_session.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct ui_sessions *s;
	static char id[UI_TOKEN_HEX + 1], csrf[UI_TOKEN_HEX + 1];
	if (size > 16 * 1024)
		return 0;
	if (!s) {
		s = ui_sessions_new(4, 3600);
		if (!s || ui_session_create(s, "admin@example.test", 1000, id, csrf) != 0)
			abort();
	}
	const char *h = (const char *)data, *v = NULL;
	size_t n = 0;
	if (ui_cookie_get(h, size, UI_SESSION_COOKIE, &v, &n)) {
		if (v < h || v + n > h + size)
			abort();
		char user[UI_USER_MAX + 1];
		bool found = ui_session_find(s, v, n, 1001, user, sizeof(user), NULL);
		if (found && !(n == UI_TOKEN_HEX && memcmp(v, id, n) == 0))
			abort();
		(void)ui_token_equal(csrf, v, n);
	}
	return 0;
}
