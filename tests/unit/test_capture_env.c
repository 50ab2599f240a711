/*
 * test_capture_env.c — `tern capture`'s Mailpit options (src/cli/
 * capture_env.c): flags and MP_* variables into one set, flags winning,
 * Mailpit's old variable names losing to the new ones, values checked
 * (yes/no, counts, ages, pairs that go together), options tern cannot
 * honour refused, MP_DATABASE's file turned into a directory, and the
 * config overrides.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cli/capture_env.h"
#include "core/conf.h"
#include "core/err.h"

static int parse(struct capture_ext *x, char **argv, int argc, char **envp, char *why, size_t wl)
{
	memset(x, 0, sizeof(*x));
	int rc = capture_args_parse(argc, argv, x, why, wl);
	if (rc == TERN_OK)
		rc = capture_env_apply(x, envp, why, wl);
	return rc;
}

static void flags_win_over_env(void **state)
{
	struct capture_ext x;
	char why[256];
	char *argv[] = {"capture", "--listen", "127.0.0.1:9", "-v", "--max", "7"};
	char *envp[] = {"MP_UI_BIND_ADDR=0.0.0.0:8025",
	                "MP_SMTP_BIND_ADDR=0.0.0.0:1025",
	                "MP_MAX_MESSAGES=500",
	                "PATH=/bin",
	                "MP_NOT_A_THING=1",
	                NULL};
	assert_int_equal(parse(&x, argv, 6, envp, why, sizeof(why)), TERN_OK);
	assert_string_equal(x.v[CX_HTTP], "127.0.0.1:9");
	assert_false(x.from_env[CX_HTTP]);
	assert_string_equal(x.v[CX_SMTP], "0.0.0.0:1025");
	assert_true(x.from_env[CX_SMTP]);
	assert_true(x.max_set);
	assert_int_equal(x.max_messages, 7);
	assert_true(capture_ext_on(&x, CX_VERBOSE));
}

static void database_names_a_directory(void **state)
{
	struct capture_ext x;
	char why[256];
	char *argv[] = {"capture"};
	char *old_first[] = {"MP_DATA_FILE=/old/db.sqlite", "MP_DATABASE=/data/mailpit.db", NULL};
	assert_int_equal(parse(&x, argv, 1, old_first, why, sizeof(why)), TERN_OK);
	assert_string_equal(x.v[CX_DATA_DIR], "/data");
	char *old_last[] = {"MP_DATABASE=/data/mailpit.db", "MP_DATA_FILE=/old/db.sqlite", NULL};
	assert_int_equal(parse(&x, argv, 1, old_last, why, sizeof(why)), TERN_OK);
	assert_string_equal(x.v[CX_DATA_DIR], "/data"); /* the current name wins */
	char *bare[] = {"MP_DATABASE=mailpit.db", NULL};
	assert_int_equal(parse(&x, argv, 1, bare, why, sizeof(why)), TERN_OK);
	assert_string_equal(x.v[CX_DATA_DIR], ".");
	char *argv2[] = {"capture", "--data-dir", "/mine"};
	char *db[] = {"MP_DATABASE=/data/mailpit.db", NULL};
	assert_int_equal(parse(&x, argv2, 3, db, why, sizeof(why)), TERN_OK);
	assert_string_equal(x.v[CX_DATA_DIR], "/mine");
}

static void values_are_checked(void **state)
{
	struct capture_ext x;
	char why[256];
	char *argv[] = {"capture"};
	struct {
		const char *env;
		const char *words;
	} bad[] = {
	    {"MP_SMTP_AUTH_ACCEPT_ANY=perhaps", "yes/no"},
	    {"MP_MAX_MESSAGES=-1", "not a count"},
	    {"MP_MAX_AGE=0d", "12h or 7d"},
	    {"MP_MAX_AGE=3w", "12h or 7d"},
	    {"MP_WEBHOOK_LIMIT=x", "not a count"},
	    {"MP_SMTP_MAX_RECIPIENTS=0", "from 1 to 100000"},
	    {"MP_WEBHOOK_URL=ftp://x", "http://"},
	    {"MP_SMTP_TLS_CERT=/c.pem", "go together"},
	    {"MP_UI_TLS_KEY=/k.pem", "go together"},
	    {"MP_TAGS_DISABLE=everything", "plus-addresses"},
	    {"MP_SMTP_REQUIRE_TLS=yes", "needs --smtp-tls-cert"},
	    {"MP_SMTP_REQUIRE_STARTTLS=1", "needs --smtp-tls-cert"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *envp[] = {(char *)bad[i].env, NULL};
		why[0] = '\0';
		assert_int_equal(parse(&x, argv, 1, envp, why, sizeof(why)), TERN_ESYNTAX);
		if (!strstr(why, bad[i].words))
			fail_msg("%s: '%s' does not say '%s'", bad[i].env, why, bad[i].words);
	}
	/* a switch that is off asks for nothing, even an unsupported one */
	char *off[] = {"MP_SMTP_REQUIRE_STARTTLS=false", "MP_MAX_AGE=36h", NULL};
	assert_int_equal(parse(&x, argv, 1, off, why, sizeof(why)), TERN_OK);
	assert_int_equal(x.max_age_sec, 36 * 3600);
	char *argv_bad[] = {"capture", "--bogus"};
	assert_int_equal(parse(&x, argv_bad, 2, off, why, sizeof(why)), TERN_ESYNTAX);
	char *argv_short[] = {"capture", "--max"};
	assert_int_equal(parse(&x, argv_short, 2, off, why, sizeof(why)), TERN_ESYNTAX);
}

static void config_overrides(void **state)
{
	struct capture_ext x;
	char why[256];
	char *argv[] = {"capture", "--allowed-hosts", "Mail, .svc.test", "--max-age", "2d", "-q"};
	char *envp[] = {"MP_MAX_MESSAGES=3", "MP_SMTP_MAX_RECIPIENTS=42", "MP_ENABLE_CHAOS=true",
	                NULL};
	assert_int_equal(parse(&x, argv, 6, envp, why, sizeof(why)), TERN_OK);
	char err[256];
	struct tern_config *c = conf_load(NULL, err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(capture_ext_apply_conf(&x, c), TERN_OK);
	assert_int_equal(c->capture.max_messages, 3);
	assert_int_equal(c->capture.max_age, 2 * 86400);
	assert_int_equal(c->capture.n_http_allowed_hosts, 2);
	assert_string_equal(c->capture.http_allowed_hosts[0], "mail");
	assert_string_equal(c->capture.http_allowed_hosts[1], ".svc.test");
	assert_string_equal(c->log_level, "warn");
	assert_int_equal(c->limits.max_recipients, 42);
	conf_unref(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(flags_win_over_env),
	    cmocka_unit_test(database_names_a_directory),
	    cmocka_unit_test(values_are_checked),
	    cmocka_unit_test(config_overrides),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
