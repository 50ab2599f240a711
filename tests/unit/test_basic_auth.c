/*
 * test_basic_auth.c — htpasswd users and the Basic scheme of the capture
 * UI (src/http/basic_auth.c): bcrypt ($2y$ as Apache's htpasswd -B writes
 * it, and $2b$), {SHA}, clear passwords, MP_UI_AUTH pairs, the refusals
 * at load, and Authorization header values right and wrong.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <crypt.h>

#include "core/err.h"
#include "http/basic_auth.h"

/* alice: "secret" as bcrypt $2y$ (what htpasswd -B writes), made here with
 * libxcrypt; bob: "secret" as htpasswd -s writes it. */
static char bcrypt_line[256];

static void make_bcrypt(void)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data cd;
	memset(&cd, 0, sizeof(cd));
	assert_non_null(crypt_gensalt_rn("$2y$", 5, NULL, 0, salt, sizeof(salt)));
	const char *h = crypt_r("secret", salt, &cd);
	assert_non_null(h);
	assert_memory_equal(h, "$2y$", 4);
	snprintf(bcrypt_line, sizeof(bcrypt_line), "alice:%s\n", h);
}

static void verifies_each_kind(void **state)
{
	make_bcrypt();
	char text[1024], err[128];
	snprintf(text, sizeof(text),
	         "# users\n%s"
	         "bob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\r\n" /* "secret" */
	         "\n   carol:plainpass  \n",
	         bcrypt_line);
	struct http_auth *a = NULL;
	assert_int_equal(http_auth_parse(text, strlen(text), "dave:pw1 erin:pw:with:colons", &a,
	                                 err, sizeof(err)),
	                 TERN_OK);
	assert_int_equal(http_auth_count(a), 5);
	assert_true(http_auth_verify(a, "alice", "secret"));
	assert_false(http_auth_verify(a, "alice", "Secret"));
	assert_true(http_auth_verify(a, "bob", "secret"));
	assert_false(http_auth_verify(a, "bob", "secret2"));
	assert_true(http_auth_verify(a, "carol", "plainpass"));
	assert_false(http_auth_verify(a, "carol", "plainpas"));
	assert_true(http_auth_verify(a, "dave", "pw1"));
	assert_true(http_auth_verify(a, "erin", "pw:with:colons"));
	assert_false(http_auth_verify(a, "mallory", "secret"));
	assert_false(http_auth_verify(a, "", ""));
	http_auth_free(a);
}

static void refuses_what_it_cannot_check(void **state)
{
	char err[128];
	struct http_auth *a = NULL;
	const char *apr1 = "x:$apr1$abc$defghijklmnopqrstuvwx.\n";
	assert_int_equal(http_auth_parse(apr1, strlen(apr1), NULL, &a, err, sizeof(err)),
	                 TERN_ESYNTAX);
	assert_non_null(strstr(err, "line 1"));
	assert_non_null(strstr(err, "htpasswd -B"));
	const char *nocolon = "\nalice\n";
	assert_int_equal(http_auth_parse(nocolon, strlen(nocolon), NULL, &a, err, sizeof(err)),
	                 TERN_ESYNTAX);
	assert_non_null(strstr(err, "line 2"));
	assert_int_equal(http_auth_parse(NULL, 0, "justaname", &a, err, sizeof(err)), TERN_ESYNTAX);
	assert_null(strstr(err, "justaname")); /* never echoes what may be a password */
	const char *badhash = "x:$9$nonsense\n";
	assert_int_equal(http_auth_parse(badhash, strlen(badhash), NULL, &a, err, sizeof(err)),
	                 TERN_ESYNTAX);
	assert_null(a);
}

static void checks_header_values(void **state)
{
	char err[128];
	struct http_auth *a = NULL;
	assert_int_equal(http_auth_parse(NULL, 0, "user:pass", &a, err, sizeof(err)), TERN_OK);
	/* base64("user:pass") = dXNlcjpwYXNz */
	assert_true(http_auth_check_header(a, "Basic dXNlcjpwYXNz"));
	assert_true(http_auth_check_header(a, "basic  dXNlcjpwYXNz "));    /* cached or not */
	assert_false(http_auth_check_header(a, "Basic dXNlcjpwYXNzeA==")); /* user:passx */
	assert_false(http_auth_check_header(a, "Bearer dXNlcjpwYXNz"));
	assert_false(http_auth_check_header(a, "Basic !!!!"));
	assert_false(http_auth_check_header(a, "Basic "));
	assert_false(http_auth_check_header(a, NULL));
	assert_false(http_auth_check_header(a, "Basic dXNlcg==")); /* "user", no colon */
	/* "user:pass\0x": a NUL inside never matches */
	assert_false(http_auth_check_header(a, "Basic dXNlcjpwYXNzAHg="));
	http_auth_free(a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(verifies_each_kind),
	    cmocka_unit_test(refuses_what_it_cannot_check),
	    cmocka_unit_test(checks_header_values),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
