/*
 * test_mtasts.c — src/deliver/mtasts.c and mtasts_fetch.c: the RFC 8461 TXT
 * record and policy grammars (the RFC's own example, CRLF and LF, field
 * order, duplicates, extensions, every required field, max_age capped), MX
 * pattern matching (a wildcard covers exactly one label), and the cache of
 * mtasts_get (a live cached policy is used without any fetch; an expired one
 * is not; a changed TXT id with no address to fetch from keeps the live
 * cache, never an expired one).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "deliver/mtasts.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static int parse(const char *text, struct mtasts_policy *p, char *err, size_t errlen)
{
	return mtasts_policy_parse(text, strlen(text), p, err, errlen);
}

static void test_policy_rfc_example(void **state)
{
	/* RFC 8461 §3.2 */
	static const char text[] = "version: STSv1\r\n"
	                           "mode: enforce\r\n"
	                           "mx: mail.example.com\r\n"
	                           "mx: *.example.net\r\n"
	                           "mx: backupmx.example.com\r\n"
	                           "max_age: 604800\r\n";
	struct mtasts_policy p;
	char err[128];
	if (parse(text, &p, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	assert_int_equal(p.mode, MTASTS_ENFORCE);
	assert_int_equal(p.max_age, 604800);
	assert_int_equal(p.n_mx, 3);
	assert_string_equal(p.mx[1], "*.example.net");
	assert_true(mtasts_mx_match(&p, "mail.example.com"));
	assert_true(mtasts_mx_match(&p, "MAIL.Example.com.")); /* case, trailing dot */
	assert_true(mtasts_mx_match(&p, "mx1.example.net"));
	assert_false(mtasts_mx_match(&p, "example.net"));     /* not zero labels */
	assert_false(mtasts_mx_match(&p, "a.b.example.net")); /* not two */
	assert_false(mtasts_mx_match(&p, "mail.example.co"));
	assert_false(mtasts_mx_match(&p, "xmail.example.com"));
	assert_false(mtasts_mx_match(&p, ".example.net"));
	assert_false(mtasts_mx_match(&p, ""));
}

static void test_policy_variants(void **state)
{
	struct mtasts_policy p;
	char err[128];
	/* LF only, any order, unknown keys ignored, the first of a repeated key */
	assert_int_equal(parse("mode: testing\nmx:   MX.Example.ORG.  \nfoo: bar\n"
	                       "max_age: 86400\nversion: STSv1\nmode: enforce\nmax_age: 5\n",
	                       &p, err, sizeof(err)),
	                 0);
	assert_int_equal(p.mode, MTASTS_TESTING);
	assert_int_equal(p.max_age, 86400);
	assert_string_equal(p.mx[0], "mx.example.org");
	/* none needs no mx; a max_age past a year is capped */
	assert_int_equal(
	    parse("version: STSv1\nmode: none\nmax_age: 9999999999", &p, err, sizeof(err)), 0);
	assert_int_equal(p.mode, MTASTS_NONE);
	assert_int_equal(p.max_age, MTASTS_MAX_AGE);
	assert_int_equal(p.n_mx, 0);
}

static void test_policy_refused(void **state)
{
	static const struct {
		const char *text, *why;
	} cases[] = {
	    {"mode: enforce\nmx: a.b\nmax_age: 1\n", "missing version"},
	    {"version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n", "version is not STSv1"},
	    {"version: STSv1\nmx: a.b\nmax_age: 1\n", "missing mode"},
	    {"version: STSv1\nmode: enforce\nmx: a.b\n", "missing max_age"},
	    {"version: STSv1\nmode: Enforce\nmx: a.b\nmax_age: 1\n", "unknown mode"},
	    {"version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx in a policy of mode enforce"},
	    {"version: STSv1\nmode: testing\nmax_age: 1\n", "no mx in a policy of mode testing"},
	    {"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 1d\n", "max_age is not a number"},
	    {"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 12345678901\n",
	     "max_age is not 1 to 10 digits"},
	    {"version: STSv1\nmode: enforce\nmx: a b\nmax_age: 1\n",
	     "an mx pattern is not a host name"},
	    {"version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 1\n",
	     "an mx pattern is not a host name"},
	    {"version: STSv1\nmode: enforce\nmx: a.*.b\nmax_age: 1\n",
	     "an mx pattern is not a host name"},
	    {"version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n",
	     "an mx pattern is not a host name"},
	    {"<html>\n<body>policy</body>\n", "a line without ':'"},
	};
	for (size_t i = 0; i < N(cases); i++) {
		struct mtasts_policy p;
		char err[128] = "";
		if (parse(cases[i].text, &p, err, sizeof(err)) == 0)
			fail_msg("case %zu parsed", i);
		if (strcmp(err, cases[i].why) != 0)
			fail_msg("case %zu: '%s', want '%s'", i, err, cases[i].why);
	}
}

static void test_txt(void **state)
{
	static const struct {
		const char *text, *id; /* id NULL: refused */
	} cases[] = {
	    {"v=STSv1; id=20160831085700Z;", "20160831085700Z"},
	    {"v=STSv1;id=abc", "abc"},
	    {"v=STSv1; ext=1 ; id=X9 ;", "X9"},
	    {"v=STSv1; id=01234567890123456789012345678901", "01234567890123456789012345678901"},
	    {"v=STSv1; id=012345678901234567890123456789012", NULL}, /* 33 characters */
	    {"v=STSv1;", NULL},                                      /* no id */
	    {"v=STSv1; id=a-b", NULL},
	    {"v=STSv1; id=", NULL},
	    {"v=STSv1; id=a; id=b", NULL},
	    {"v=STSv2; id=a", NULL},
	    {"v=spf1 -all", NULL},
	    {"v=STSv1 id=a", NULL},
	};
	for (size_t i = 0; i < N(cases); i++) {
		char id[MTASTS_ID_MAX + 1] = "";
		bool ok = mtasts_txt_parse(cases[i].text, strlen(cases[i].text), id);
		if (ok != (cases[i].id != NULL))
			fail_msg("case %zu: %s", i, ok ? "parsed" : "refused");
		if (ok && strcmp(id, cases[i].id) != 0)
			fail_msg("case %zu: id '%s'", i, id);
	}
}

/* ---- the cache -------------------------------------------------------------- */

static void write_cache(const char *dir, const char *domain, const char *id, long long expires,
                        const char *policy)
{
	char path[512], text[1024];
	snprintf(path, sizeof(path), "%s/%s", dir, domain);
	int n = snprintf(text, sizeof(text), "tern-mta-sts 1\nid %s\nexpires %lld\n\n%s", id,
	                 expires, policy);
	assert_int_equal(tern_write_file_atomic(path, text, (size_t)n, NULL), 0);
}

static void test_cache(void **state)
{
	char dir[] = "/tmp/tern-mtasts-XXXXXX";
	assert_non_null(mkdtemp(dir));
	static const char pol[] = "version: STSv1\nmode: enforce\nmx: mx.example.test\n"
	                          "max_age: 86400\n";
	struct mtasts_req q;
	memset(&q, 0, sizeof(q));
	snprintf(q.domain, sizeof(q.domain), "example.test");
	snprintf(q.cache_dir, sizeof(q.cache_dir), "%s", dir);
	q.now = 1000000;
	q.port = 1; /* never used: no address, so no fetch */

	/* nothing cached, no TXT record: no policy */
	mtasts_get(&q);
	assert_false(q.have);
	assert_string_equal(q.source, "none");

	/* live cache, same id: used */
	write_cache(dir, "example.test", "abc", 1000000 + 10, pol);
	snprintf(q.id, sizeof(q.id), "abc");
	mtasts_get(&q);
	assert_true(q.have);
	assert_string_equal(q.source, "cache");
	assert_int_equal(q.policy.mode, MTASTS_ENFORCE);
	assert_string_equal(q.policy.mx[0], "mx.example.test");

	/* live cache, TXT record gone: still used (RFC 8461 §5.1) */
	q.id[0] = '\0';
	mtasts_get(&q);
	assert_true(q.have);
	assert_string_equal(q.source, "cache");

	/* a new id and the fetch fails (no address): the live cache stays */
	snprintf(q.id, sizeof(q.id), "new");
	mtasts_get(&q);
	assert_true(q.have);
	assert_string_equal(q.source, "stale-cache");
	assert_string_equal(q.why, "mta-sts.example.test has no address");

	/* expired: never used */
	write_cache(dir, "example.test", "abc", 1000000 - 1, pol);
	snprintf(q.id, sizeof(q.id), "abc");
	mtasts_get(&q);
	assert_false(q.have);
	q.id[0] = '\0';
	mtasts_get(&q);
	assert_false(q.have);

	/* a damaged cache file is no policy */
	write_cache(dir, "example.test", "abc", 1000000 + 10, "version: STSv1\nmode: enforce\n");
	snprintf(q.id, sizeof(q.id), "abc");
	mtasts_get(&q);
	assert_false(q.have);

	/* a domain that cannot be a file name is refused before any file */
	snprintf(q.domain, sizeof(q.domain), "../etc");
	mtasts_get(&q);
	assert_false(q.have);

	char path[512];
	snprintf(path, sizeof(path), "%s/example.test", dir);
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_policy_rfc_example),
	    cmocka_unit_test(test_policy_variants),
	    cmocka_unit_test(test_policy_refused),
	    cmocka_unit_test(test_txt),
	    cmocka_unit_test(test_cache),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
