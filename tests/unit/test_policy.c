/*
 * test_policy.c — the policy module's pure parts (src/policy/zone.c: the zone
 * notation, DNSBL query names and scores, client network keys, the rate-limit
 * and greylist arithmetic), its rate table and greylist store
 * (policy_internal.h), and the `policy { }` section of the config.
 */
#include <arpa/inet.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "core/conf.h"
#include "core/err.h"
#include "policy/policy.h"
#include "policy/policy_internal.h"

#define S(lit) lit, sizeof(lit) - 1

static struct in_addr ip4(const char *s)
{
	struct in_addr a;
	assert_int_equal(inet_pton(AF_INET, s, &a), 1);
	return a;
}

/* --------------------------------------------------------- zone notation */

struct zone_case {
	const char *name;
	const char *spec;
	const char *zone;
	int weight;
	const char *listed[3];   /* A records that count as a listing */
	const char *unlisted[3]; /* A records that do not */
	const char *canonical;   /* what policy_zone_format writes */
};

static const struct zone_case zone_cases[] = {
    {"bare zone weighs 1 and any A record lists",
     "bl.example",
     "bl.example",
     1,
     {"127.0.0.2", "10.1.2.3"},
     {NULL},
     "bl.example*1"},
    {"weight", "bl.example*2", "bl.example", 2, {"127.0.0.2"}, {NULL}, "bl.example*2"},
    {"negative weight is a whitelist",
     "wl.example*-2",
     "wl.example",
     -2,
     {"127.0.0.2"},
     {NULL},
     "wl.example*-2"},
    {"explicit plus sign", "bl.example*+3", "bl.example", 3, {"127.0.0.2"}, {NULL}, "bl.example*3"},
    {"filter with one address",
     "bl.example=127.0.0.2*3",
     "bl.example",
     3,
     {"127.0.0.2"},
     {"127.0.0.3", "127.0.1.2"},
     "bl.example=127.0.0.2*3"},
    {"filter without weight",
     "bl.example=127.0.0.4",
     "bl.example",
     1,
     {"127.0.0.4"},
     {"127.0.0.2"},
     "bl.example=127.0.0.4*1"},
    {"range in the last octet",
     "zen.example=127.0.0.[2..5]*3",
     "zen.example",
     3,
     {"127.0.0.2", "127.0.0.5"},
     {"127.0.0.1", "127.0.0.6", "127.0.0.10"},
     "zen.example=127.0.0.[2..5]*3"},
    {"list and range",
     "zen.example=127.0.0.[2;4;9..11]",
     "zen.example",
     1,
     {"127.0.0.4", "127.0.0.10"},
     {"127.0.0.3", "127.0.0.12"},
     "zen.example=127.0.0.[2;4;9..11]*1"},
    {"adjacent items merge into a range",
     "z.example=127.0.[0;1;2].2",
     "z.example",
     1,
     {"127.0.1.2"},
     {"127.0.3.2"},
     "z.example=127.0.[0..2].2*1"},
    {"uppercase and a trailing dot are normalised",
     "BL.Example.=127.0.0.2*-1",
     "bl.example",
     -1,
     {"127.0.0.2"},
     {NULL},
     "bl.example=127.0.0.2*-1"},
    {"leading zeros in a number",
     "bl.example=127.000.0.002",
     "bl.example",
     1,
     {"127.0.0.2"},
     {NULL},
     "bl.example=127.0.0.2*1"},
    {"whole range",
     "bl.example=[0..255].0.0.1*1000",
     "bl.example",
     1000,
     {"10.0.0.1", "255.0.0.1"},
     {"10.0.0.2"},
     "bl.example=[0..255].0.0.1*1000"},
};

static void test_zone_parse_valid(void **state)
{
	for (size_t i = 0; i < sizeof(zone_cases) / sizeof(zone_cases[0]); i++) {
		const struct zone_case *c = &zone_cases[i];
		struct policy_zone z;
		char err[160] = "";
		print_message("case: %s\n", c->name);
		assert_int_equal(policy_zone_parse(c->spec, strlen(c->spec), &z, err, sizeof(err)),
		                 TERN_OK);
		assert_string_equal(z.zone, c->zone);
		assert_int_equal(z.weight, c->weight);
		for (size_t k = 0; k < 3 && c->listed[k]; k++) {
			struct in_addr a = ip4(c->listed[k]);
			assert_true(policy_zone_matches(&z, &a, 1));
		}
		for (size_t k = 0; k < 3 && c->unlisted[k]; k++) {
			struct in_addr a = ip4(c->unlisted[k]);
			assert_false(policy_zone_matches(&z, &a, 1));
		}
		/* no answer never lists, filter or not */
		assert_false(policy_zone_matches(&z, NULL, 0));
		char out[400];
		assert_true(policy_zone_format(&z, out, sizeof(out)));
		assert_string_equal(out, c->canonical);
		/* the canonical form reads back to the same entry */
		struct policy_zone again;
		assert_int_equal(policy_zone_parse(out, strlen(out), &again, err, sizeof(err)),
		                 TERN_OK);
		assert_memory_equal(&z, &again, sizeof(z));
		/* and a buffer one byte short is refused, not cut */
		assert_false(policy_zone_format(&z, out, strlen(c->canonical)));
	}
}

struct zone_err {
	const char *name;
	const char *spec;
	size_t len;
	const char *why; /* substring of the message */
};

static const struct zone_err zone_errs[] = {
    {"empty", S(""), "zone name"},
    {"only a weight", S("*2"), "zone name"},
    {"empty label", S("bl..example"), "empty label"},
    {"leading dot", S(".bl.example"), "empty label"},
    {"two trailing dots", S("bl.example.."), "empty label"},
    {"only a dot", S("."), "zone name"},
    {"space in the name", S("bl example"), "only letters"},
    {"NUL in the name", S("bl\0.example"), "only letters"},
    {"label of 64 bytes",
     S("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example"), "63"},
    {"weight not a number", S("bl.example*x"), "whole number"},
    {"empty weight", S("bl.example*"), "whole number"},
    {"sign only", S("bl.example*-"), "whole number"},
    {"weight too big", S("bl.example*1001"), "between"},
    {"weight with a fraction", S("bl.example*1.5"), "whole number"},
    {"two weights", S("bl.example*1*2"), "more than one"},
    {"filter after the weight", S("bl.example*2=127.0.0.2"), "comes before"},
    {"empty filter", S("bl.example="), "filter"},
    {"three octets", S("bl.example=127.0.2"), "four parts"},
    {"five octets", S("bl.example=127.0.0.2.1"), "after the fourth"},
    {"octet over 255", S("bl.example=127.0.0.256"), "filter"},
    {"four digits", S("bl.example=127.0.0.0002"), "filter"},
    {"downward range", S("bl.example=127.0.0.[5..2]"), "upwards"},
    {"unclosed list", S("bl.example=127.0.0.[2;3"), "';' or ']'"},
    {"empty list", S("bl.example=127.0.0.[]"), "inside [...]"},
    {"open range", S("bl.example=127.0.0.[2..]"), "after '..'"},
    {"wildcard octet", S("bl.example=127.0.0.*"), "filter"},
};

static void test_zone_parse_errors(void **state)
{
	for (size_t i = 0; i < sizeof(zone_errs) / sizeof(zone_errs[0]); i++) {
		const struct zone_err *c = &zone_errs[i];
		struct policy_zone z;
		memset(&z, 0x5a, sizeof(z));
		struct policy_zone before = z;
		char err[160] = "";
		print_message("case: %s\n", c->name);
		assert_int_equal(policy_zone_parse(c->spec, c->len, &z, err, sizeof(err)),
		                 TERN_ESYNTAX);
		if (!strstr(err, c->why))
			fail_msg("%s: message '%s' lacks '%s'", c->name, err, c->why);
		/* out is untouched on error */
		assert_memory_equal(&z, &before, sizeof(z));
	}
}

static void test_zone_name_length_leaves_room_for_ipv6(void **state)
{
	char spec[300];
	struct policy_zone z;
	char err[160];
	/* labels of 9 plus dots, up to exactly the limit */
	size_t n = 0;
	while (n + 10 <= POLICY_ZONE_NAME_MAX) {
		memcpy(spec + n, "aaaaaaaaa.", 10);
		n += 10;
	}
	while (n < POLICY_ZONE_NAME_MAX)
		spec[n++] = 'b';
	assert_int_equal(policy_zone_parse(spec, n, &z, err, sizeof(err)), TERN_OK);
	uint8_t v6[16];
	memset(v6, 0xab, sizeof(v6));
	char name[DNS_NAME_MAX + 1];
	assert_true(policy_dnsbl_name(AF_INET6, v6, z.zone, name, sizeof(name)));
	assert_true(strlen(name) <= 253);
	spec[n++] = 'c';
	assert_int_equal(policy_zone_parse(spec, n, &z, err, sizeof(err)), TERN_ESYNTAX);
	assert_non_null(strstr(err, "too long"));
}

/* --------------------------------------------------------- query names */

static void test_dnsbl_names(void **state)
{
	char out[DNS_NAME_MAX + 1];
	uint8_t a4[4] = {192, 0, 2, 99};
	assert_true(policy_dnsbl_name(AF_INET, a4, "bl.example", out, sizeof(out)));
	assert_string_equal(out, "99.2.0.192.bl.example");

	uint8_t a6[16];
	assert_int_equal(inet_pton(AF_INET6, "2001:db8::1:2", a6), 1);
	assert_true(policy_dnsbl_name(AF_INET6, a6, "bl.example", out, sizeof(out)));
	assert_string_equal(out, "2.0.0.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2."
	                         "bl.example");

	/* too small a buffer, or an unknown family: refused, and out is empty */
	assert_false(policy_dnsbl_name(AF_INET, a4, "bl.example", out, 12));
	assert_string_equal(out, "");
	assert_false(policy_dnsbl_name(AF_UNIX, a4, "bl.example", out, sizeof(out)));
}

static void test_client_addr_unmaps_ipv4(void **state)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
	in6->sin6_family = AF_INET6;
	assert_int_equal(inet_pton(AF_INET6, "::ffff:198.51.100.7", &in6->sin6_addr), 1);
	int family;
	uint8_t addr[16];
	assert_true(policy_client_addr(&ss, &family, addr));
	assert_int_equal(family, AF_INET);
	uint8_t want[4] = {198, 51, 100, 7};
	assert_memory_equal(addr, want, 4);

	assert_int_equal(inet_pton(AF_INET6, "2001:db8::7", &in6->sin6_addr), 1);
	assert_true(policy_client_addr(&ss, &family, addr));
	assert_int_equal(family, AF_INET6);
	assert_memory_equal(addr, &in6->sin6_addr, 16);

	ss.ss_family = AF_UNIX;
	assert_false(policy_client_addr(&ss, &family, addr));
}

static void test_net_keys(void **state)
{
	uint8_t a4[4] = {192, 0, 2, 77}, b4[4] = {192, 0, 2, 200}, c4[4] = {192, 0, 3, 77};
	uint8_t k1[POLICY_NET_KEY_LEN], k2[POLICY_NET_KEY_LEN], k3[POLICY_NET_KEY_LEN];
	char text[POLICY_NET_TEXT_MAX];
	policy_net_key(AF_INET, a4, 24, 64, k1, text, sizeof(text));
	assert_string_equal(text, "192.0.2.0/24");
	policy_net_key(AF_INET, b4, 24, 64, k2, NULL, 0);
	policy_net_key(AF_INET, c4, 24, 64, k3, NULL, 0);
	assert_memory_equal(k1, k2, sizeof(k1)); /* same /24 */
	assert_memory_not_equal(k1, k3, sizeof(k1));
	policy_net_key(AF_INET, a4, 32, 64, k1, text, sizeof(text));
	assert_string_equal(text, "192.0.2.77/32");
	policy_net_key(AF_INET, a4, 20, 64, k1, text, sizeof(text));
	assert_string_equal(text, "192.0.0.0/20");

	uint8_t a6[16], b6[16];
	assert_int_equal(inet_pton(AF_INET6, "2001:db8:1:2:aaaa::1", a6), 1);
	assert_int_equal(inet_pton(AF_INET6, "2001:db8:1:2:bbbb::9", b6), 1);
	policy_net_key(AF_INET6, a6, 24, 64, k1, text, sizeof(text));
	assert_string_equal(text, "2001:db8:1:2::/64");
	policy_net_key(AF_INET6, b6, 24, 64, k2, NULL, 0);
	assert_memory_equal(k1, k2, sizeof(k1)); /* an IPv6 client is its /64 */
	/* an IPv4 key never equals an IPv6 one with the same leading bytes */
	uint8_t v6like[16] = {192, 0, 2, 0};
	policy_net_key(AF_INET, a4, 24, 64, k1, NULL, 0);
	policy_net_key(AF_INET6, v6like, 24, 24, k2, NULL, 0);
	assert_memory_not_equal(k1, k2, sizeof(k1));
}

/* --------------------------------------------------------------- scores */

static void test_dnsbl_score(void **state)
{
	struct policy_zone z[3];
	char err[160];
	assert_int_equal(policy_zone_parse(S("bl.example*2"), &z[0], err, sizeof(err)), TERN_OK);
	assert_int_equal(policy_zone_parse(S("wl.example*-2"), &z[1], err, sizeof(err)), TERN_OK);
	assert_int_equal(
	    policy_zone_parse(S("zen.example=127.0.0.[2..3]*3"), &z[2], err, sizeof(err)), TERN_OK);
	struct in_addr two = ip4("127.0.0.2"), ten = ip4("127.0.0.10");
	struct policy_dnsbl_answer none[3] = {{NULL, 0}, {NULL, 0}, {NULL, 0}};
	size_t top = 99;
	assert_int_equal(policy_dnsbl_score(z, none, 3, &top), 0);
	assert_int_equal(top, 3); /* nobody listed */

	struct policy_dnsbl_answer bl[3] = {{&two, 1}, {NULL, 0}, {NULL, 0}};
	assert_int_equal(policy_dnsbl_score(z, bl, 3, &top), 2);
	assert_int_equal(top, 0);

	/* the whitelist offsets the blocklist */
	struct policy_dnsbl_answer both[3] = {{&two, 1}, {&two, 1}, {NULL, 0}};
	assert_int_equal(policy_dnsbl_score(z, both, 3, &top), 0);
	assert_int_equal(top, 0); /* bl.example still listed, for the reply's wording */

	/* the filter decides: 127.0.0.10 is outside [2..3] */
	struct policy_dnsbl_answer zen_no[3] = {{NULL, 0}, {NULL, 0}, {&ten, 1}};
	assert_int_equal(policy_dnsbl_score(z, zen_no, 3, &top), 0);
	struct in_addr mixed[2] = {ten, two};
	struct policy_dnsbl_answer zen_yes[3] = {{&two, 1}, {NULL, 0}, {mixed, 2}};
	assert_int_equal(policy_dnsbl_score(z, zen_yes, 3, &top), 5);
	assert_int_equal(top, 2); /* the heaviest listing names the zone */

	/* only a whitelist listing: negative, and no zone to blame */
	struct policy_dnsbl_answer wl[3] = {{NULL, 0}, {&two, 1}, {NULL, 0}};
	assert_int_equal(policy_dnsbl_score(z, wl, 3, &top), -2);
	assert_int_equal(top, 3);
}

/* ---------------------------------------------------------- rate limits */

static void test_gcra_allows_exactly_the_rate(void **state)
{
	uint64_t tat = 0, t0 = 5000000000ull;
	for (int i = 0; i < 3; i++)
		assert_true(policy_gcra(&tat, t0, 3));
	uint64_t saved = tat;
	assert_false(policy_gcra(&tat, t0, 3));
	assert_int_equal(tat, saved); /* a refusal does not count */
	assert_false(policy_gcra(&tat, t0 + 19999999, 3));
	/* one more every 20 s (60 s / 3) */
	assert_true(policy_gcra(&tat, t0 + 20000000, 3));
	assert_false(policy_gcra(&tat, t0 + 20000001, 3));
	/* a minute of silence gives the whole burst back, and no more */
	uint64_t later = t0 + 200000000;
	for (int i = 0; i < 3; i++)
		assert_true(policy_gcra(&tat, later, 3));
	assert_false(policy_gcra(&tat, later, 3));
	/* 0 is no limit; a rate of one allows one */
	for (int i = 0; i < 100; i++)
		assert_true(policy_gcra(&tat, t0, 0));
	uint64_t one = 0;
	assert_true(policy_gcra(&one, t0, 1));
	assert_false(policy_gcra(&one, t0 + 59999999, 1));
	assert_true(policy_gcra(&one, t0 + 60000000, 1));
	/* a huge rate still counts */
	uint64_t big = 0;
	for (int i = 0; i < 1000; i++)
		assert_true(policy_gcra(&big, t0, 1000000));
}

static void test_rate_table_counts_per_key_and_kind(void **state)
{
	struct ratelimit *r = ratelimit_new();
	assert_non_null(r);
	uint8_t a[POLICY_NET_KEY_LEN] = {4, 10, 0, 0, 1}, b[POLICY_NET_KEY_LEN] = {4, 10, 0, 0, 2};
	uint64_t now = 1000000;
	assert_true(ratelimit_take(r, a, RL_MESSAGES, 2, now));
	assert_true(ratelimit_take(r, a, RL_MESSAGES, 2, now));
	assert_false(ratelimit_take(r, a, RL_MESSAGES, 2, now));
	/* another kind, another key: their own counts */
	assert_true(ratelimit_take(r, a, RL_RECIPIENTS, 2, now));
	assert_true(ratelimit_take(r, b, RL_MESSAGES, 2, now));
	/* 0 means no limit and stores nothing */
	for (int i = 0; i < 10; i++)
		assert_true(ratelimit_take(r, a, RL_CONNECTIONS, 0, now));
	/* after the interval, one more */
	assert_true(ratelimit_take(r, a, RL_MESSAGES, 2, now + 30000000));
	assert_false(ratelimit_take(r, a, RL_MESSAGES, 2, now + 30000000));
	/* many clients: the table stays bounded and keeps answering */
	for (uint32_t i = 0; i < 300000; i++) {
		uint8_t k[POLICY_NET_KEY_LEN] = {6};
		memcpy(k + 1, &i, sizeof(i));
		assert_true(ratelimit_take(r, k, RL_CONNECTIONS, 5, now + 40000000));
	}
	ratelimit_free(r);
}

/* ----------------------------------------------------------- greylisting */

static const struct policy_grey_params GP = {300, 2 * 86400, 35 * 86400};

static void test_grey_step(void **state)
{
	struct policy_grey_entry e;
	uint32_t wait;
	int64_t t = 1700000000;
	assert_int_equal(policy_grey_step(&e, false, t, &GP, &wait), POLICY_GREY_NEW);
	assert_int_equal(wait, 300);
	assert_int_equal(policy_grey_step(&e, true, t + 100, &GP, &wait), POLICY_GREY_EARLY);
	assert_int_equal(wait, 200);
	assert_int_equal(e.first, t); /* an early retry does not restart the wait */
	assert_int_equal(policy_grey_step(&e, true, t + 299, &GP, &wait), POLICY_GREY_EARLY);
	assert_int_equal(wait, 1);
	assert_int_equal(policy_grey_step(&e, true, t + 300, &GP, &wait), POLICY_GREY_PASS_FIRST);
	assert_true(e.passed);
	assert_int_equal(policy_grey_step(&e, true, t + 86400, &GP, &wait), POLICY_GREY_PASS);
	assert_int_equal(e.last, t + 86400);
	/* a passed triplet unused for longer than expire starts over */
	assert_int_equal(policy_grey_step(&e, true, t + 86400 + 35 * 86400 + 1, &GP, &wait),
	                 POLICY_GREY_NEW);
	assert_false(e.passed);

	/* a new triplet that never came back within retry_window starts over */
	assert_int_equal(policy_grey_step(&e, false, t, &GP, &wait), POLICY_GREY_NEW);
	assert_int_equal(policy_grey_step(&e, true, t + 2 * 86400 + 1, &GP, &wait),
	                 POLICY_GREY_NEW);
	assert_int_equal(e.first, t + 2 * 86400 + 1);

	/* the clock going back never lets a triplet through early */
	assert_int_equal(policy_grey_step(&e, false, t, &GP, &wait), POLICY_GREY_NEW);
	assert_int_equal(policy_grey_step(&e, true, t - 1000, &GP, &wait), POLICY_GREY_EARLY);
	assert_int_equal(wait, 300);

	/* delay 0: the first retry passes */
	struct policy_grey_params zero = {0, 60, 3600};
	assert_int_equal(policy_grey_step(&e, false, t, &zero, &wait), POLICY_GREY_NEW);
	assert_int_equal(policy_grey_step(&e, true, t, &zero, &wait), POLICY_GREY_PASS_FIRST);
}

static char tmpdir[64];

static int setup_tmpdir(void **state)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/tern-policy-XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmpdir(void **state)
{
	char p[128];
	static const char *const files[] = {"policy.db", "policy.db-wal", "policy.db-shm",
	                                    "policy.db.damaged"};
	for (size_t i = 0; i < 4; i++) {
		snprintf(p, sizeof(p), "%s/%s", tmpdir, files[i]);
		unlink(p);
	}
	return rmdir(tmpdir);
}

static int count_rows(const char *where)
{
	char path[128], sql[256];
	snprintf(path, sizeof(path), "%s/policy.db", tmpdir);
	snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM greylist WHERE %s", where);
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int n = -1;
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		n = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return n;
}

static void test_greylist_store_remembers_across_restarts(void **state)
{
	char err[256] = "";
	struct policy_grey_params p = {10, 3600, 86400};
	uint8_t net[POLICY_NET_KEY_LEN] = {4, 192, 0, 2, 0};
	int64_t t = (int64_t)time(NULL); /* the writer purges by the real clock */
	uint32_t wait;

	struct greylist *g = greylist_open(tmpdir, err, sizeof(err));
	assert_non_null(g);
	struct stat sb;
	char path[128];
	snprintf(path, sizeof(path), "%s/policy.db", tmpdir);
	assert_int_equal(
	    greylist_check(g, net, "192.0.2.0/24", "a@x.example", "b@y.example", t, &p, &wait),
	    POLICY_GREY_NEW);
	assert_int_equal(
	    greylist_check(g, net, "192.0.2.0/24", "a@x.example", "b@y.example", t + 5, &p, &wait),
	    POLICY_GREY_EARLY);
	assert_int_equal(wait, 5);
	/* another recipient, another sender network: other triplets */
	assert_int_equal(
	    greylist_check(g, net, "192.0.2.0/24", "a@x.example", "c@y.example", t + 5, &p, &wait),
	    POLICY_GREY_NEW);
	uint8_t net2[POLICY_NET_KEY_LEN] = {4, 192, 0, 3, 0};
	assert_int_equal(
	    greylist_check(g, net2, "192.0.3.0/24", "a@x.example", "b@y.example", t + 5, &p, &wait),
	    POLICY_GREY_NEW);
	assert_int_equal(
	    greylist_check(g, net, "192.0.2.0/24", "a@x.example", "b@y.example", t + 10, &p, &wait),
	    POLICY_GREY_PASS_FIRST);
	greylist_close(g);
	/* written behind, and all of it there after a clean close */
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(count_rows("passed = 1 AND sender = 'a@x.example' AND "
	                            "rcpt = 'b@y.example' AND client_net = '192.0.2.0/24'"),
	                 1);
	assert_int_equal(count_rows("passed = 0"), 2);

	/* a new start loads it: the passed triplet passes at once */
	g = greylist_open(tmpdir, err, sizeof(err));
	assert_non_null(g);
	assert_int_equal(greylist_check(g, net, "192.0.2.0/24", "a@x.example", "b@y.example",
	                                t + 100, &p, &wait),
	                 POLICY_GREY_PASS);
	/* and the pending one remembers its first attempt */
	assert_int_equal(
	    greylist_check(g, net, "192.0.2.0/24", "a@x.example", "c@y.example", t + 15, &p, &wait),
	    POLICY_GREY_PASS_FIRST);
	greylist_close(g);
}

static void test_greylist_open_without_file_creates_nothing(void **state)
{
	char err[256] = "";
	struct greylist *g = greylist_open(tmpdir, err, sizeof(err));
	assert_non_null(g);
	greylist_close(g);
	char path[128];
	struct stat sb;
	snprintf(path, sizeof(path), "%s/policy.db", tmpdir);
	assert_int_not_equal(stat(path, &sb), 0); /* no greylisting, no file */
}

static void test_greylist_damaged_file_is_set_aside(void **state)
{
	char path[128], aside[160], err[256] = "";
	snprintf(path, sizeof(path), "%s/policy.db", tmpdir);
	snprintf(aside, sizeof(aside), "%s/policy.db.damaged", tmpdir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs("this is not an SQLite database, but it is long enough to look at. ", f);
	for (int i = 0; i < 200; i++)
		fputs("garbage garbage garbage ", f);
	fclose(f);
	/* the greylist is a cache of decisions: start empty rather than refuse to start */
	struct greylist *g = greylist_open(tmpdir, err, sizeof(err));
	if (!g)
		fail_msg("refused to open: %s", err);
	struct stat sb;
	assert_int_equal(stat(aside, &sb), 0); /* kept for the operator */
	struct policy_grey_params p = {10, 3600, 86400};
	uint8_t net[POLICY_NET_KEY_LEN] = {4, 192, 0, 2, 0};
	uint32_t wait;
	int64_t t = (int64_t)time(NULL);
	assert_int_equal(
	    greylist_check(g, net, "192.0.2.0/24", "a@x.example", "b@y.example", t, &p, &wait),
	    POLICY_GREY_NEW);
	greylist_close(g);
	/* and a fresh database holds what came after */
	assert_int_equal(count_rows("passed = 0"), 1);
	unlink(aside);
}

/* ----------------------------------------------------------------- config */

static struct tern_config *load(const char *text, char *err, size_t errlen)
{
	return conf_load_string(text, strlen(text), "t.conf", err, errlen);
}

static void test_conf_policy_defaults(void **state)
{
	char err[256];
	struct tern_config *c = load("", err, sizeof(err));
	struct tern_config *e = conf_load(NULL, err, sizeof(err));
	assert_non_null(c);
	assert_non_null(e);
	const struct conf_policy *cp[2] = {&c->policy, &e->policy};
	for (int i = 0; i < 2; i++) {
		/* everything off, with sensible values ready for when it is on */
		assert_int_equal(cp[i]->n_zones, 0);
		assert_int_equal(cp[i]->dnsbl_threshold, 1);
		assert_int_equal(cp[i]->dns_timeout, 5);
		assert_int_equal(cp[i]->pregreet_delay, 0);
		assert_true(cp[i]->pregreet_reject);
		assert_false(cp[i]->fcrdns_enabled);
		assert_false(cp[i]->fcrdns_require);
		assert_int_equal(cp[i]->fcrdns_reject_code, 450);
		assert_false(cp[i]->greylist);
		assert_int_equal(cp[i]->greylist_delay, 300);
		assert_int_equal(cp[i]->greylist_retry_window, 2 * 86400);
		assert_int_equal(cp[i]->greylist_expire, 35 * 86400);
		assert_int_equal(cp[i]->connections_per_minute, 0);
		assert_int_equal(cp[i]->messages_per_minute, 0);
		assert_int_equal(cp[i]->recipients_per_minute, 0);
	}
	conf_unref(c);
	conf_unref(e);
}

static void test_conf_policy_values(void **state)
{
	char err[256];
	struct tern_config *c = load("policy {\n"
	                             "  dns_timeout = 2s\n"
	                             "  dnsbl { zones = [\"bl.example*2\", \"wl.example*-2\", "
	                             "\"bl.example=127.0.0.4*3\"]; threshold = 3 }\n"
	                             "  pregreet { delay = 6s; action = ignore }\n"
	                             "  fcrdns { require = true; reject_code = 550 }\n"
	                             "  greylist { enabled = yes; delay = 1min; retry_window = 1d; "
	                             "expire = 30d }\n"
	                             "  ratelimit { connections_per_minute = 30; "
	                             "messages_per_minute = 60; recipients_per_minute = 200 }\n"
	                             "}\n",
	                             err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	const struct conf_policy *p = &c->policy;
	assert_int_equal(p->dns_timeout, 2);
	assert_int_equal(p->n_zones, 3);
	assert_string_equal(p->zones[1].zone, "wl.example");
	assert_int_equal(p->zones[1].weight, -2);
	assert_true(p->zones[2].filtered);
	assert_int_equal(p->dnsbl_threshold, 3);
	assert_int_equal(p->pregreet_delay, 6);
	assert_false(p->pregreet_reject);
	assert_true(p->fcrdns_require);
	assert_int_equal(p->fcrdns_reject_code, 550);
	assert_true(p->greylist);
	assert_int_equal(p->greylist_delay, 60);
	assert_int_equal(p->greylist_retry_window, 86400);
	assert_int_equal(p->greylist_expire, 30 * 86400);
	assert_int_equal(p->connections_per_minute, 30);
	assert_int_equal(p->messages_per_minute, 60);
	assert_int_equal(p->recipients_per_minute, 200);
	/* a later zones list replaces the earlier one */
	conf_unref(c);
	c = load("policy { dnsbl { zones = [\"a.example\"]; zones = \"b.example*4\" } }", err,
	         sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->policy.n_zones, 1);
	assert_string_equal(c->policy.zones[0].zone, "b.example");
	assert_int_equal(c->policy.zones[0].weight, 4);
	conf_unref(c);
}

struct conf_err {
	const char *text;
	const char *want; /* substring of the message, which starts with t.conf:LINE */
};

static const struct conf_err conf_errs[] = {
    {"policy { dnsbl { zones = [\"bl..x\"] } }", "t.conf:1: policy.dnsbl.zones: 'bl..x': "},
    {"policy {\n dnsbl { zones = [\"bl.x=1.2.3\"] } }", "t.conf:2: policy.dnsbl.zones"},
    {"policy { dnsbl { threshold = 0 } }", "policy.dnsbl.threshold"},
    {"policy { dnsbl { zones = [1] } }", "list of strings"},
    {"policy { dnsbl { zone = [\"a.example\"] } }", "unknown key 'zone' in section policy.dnsbl"},
    {"policy { pregreet { action = \"drop\" } }", "\"reject\" or \"ignore\""},
    {"policy { pregreet { delay = 61s } }", "policy.pregreet.delay"},
    {"policy { fcrdns { reject_code = 500 } }", "must be 450 or 550"},
    {"policy { fcrdns { require = 1 } }", "true or false"},
    {"policy { greylist { delay = 3h; retry_window = 1h } }", "must be longer than delay"},
    {"policy { greylist { expire = 1m } }", "got a size"},
    {"policy { ratelimit { messages_per_second = 2 } }", "unknown key 'messages_per_second'"},
    {"policy { ratelimit { recipients_per_minute = -1 } }", "must not be negative"},
    {"policy { dns_timeout = 0s }", "below the minimum"},
    {"policy = 1", "a section"},
};

static void test_conf_policy_errors(void **state)
{
	for (size_t i = 0; i < sizeof(conf_errs) / sizeof(conf_errs[0]); i++) {
		char err[256] = "";
		struct tern_config *c = load(conf_errs[i].text, err, sizeof(err));
		if (c)
			fail_msg("accepted: %s", conf_errs[i].text);
		if (!strstr(err, conf_errs[i].want))
			fail_msg("%s\n  gave: %s\n  want: %s", conf_errs[i].text, err,
			         conf_errs[i].want);
	}
	/* more zones than the limit */
	char big[4096];
	size_t o = (size_t)snprintf(big, sizeof(big), "policy { dnsbl { zones = [");
	for (int i = 0; i <= POLICY_ZONES_MAX; i++)
		o += (size_t)snprintf(big + o, sizeof(big) - o, "\"z%d.example\",", i);
	snprintf(big + o, sizeof(big) - o, "] } }");
	char err[256] = "";
	assert_null(load(big, err, sizeof(err)));
	assert_non_null(strstr(err, "more than 32"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_zone_parse_valid),
	    cmocka_unit_test(test_zone_parse_errors),
	    cmocka_unit_test(test_zone_name_length_leaves_room_for_ipv6),
	    cmocka_unit_test(test_dnsbl_names),
	    cmocka_unit_test(test_client_addr_unmaps_ipv4),
	    cmocka_unit_test(test_net_keys),
	    cmocka_unit_test(test_dnsbl_score),
	    cmocka_unit_test(test_gcra_allows_exactly_the_rate),
	    cmocka_unit_test(test_rate_table_counts_per_key_and_kind),
	    cmocka_unit_test(test_grey_step),
	    cmocka_unit_test_setup_teardown(test_greylist_store_remembers_across_restarts,
	                                    setup_tmpdir, teardown_tmpdir),
	    cmocka_unit_test_setup_teardown(test_greylist_open_without_file_creates_nothing,
	                                    setup_tmpdir, teardown_tmpdir),
	    cmocka_unit_test_setup_teardown(test_greylist_damaged_file_is_set_aside, setup_tmpdir,
	                                    teardown_tmpdir),
	    cmocka_unit_test(test_conf_policy_defaults),
	    cmocka_unit_test(test_conf_policy_values),
	    cmocka_unit_test(test_conf_policy_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
