/*
 * test_shaping.c — src/deliver/shaping.c and pools.c, and their config
 * sections: the limits a destination gets (built-in provider values, site
 * grouping, overrides, default { }), the per-minute token bucket, the
 * back-off (which replies trigger it, halving, growth on repeat, gradual
 * recovery), pool selection (tag, sender domain and its parents, default,
 * API keys), the X-Tern-Tag header taken out of a message, round-robin
 * source choice by address family, warm-up caps and their counter file,
 * and the config errors of shaping { }, pools { } and pool_select { }.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/conf.h"
#include "core/err.h"
#include "core/metrics.h"
#include "deliver/pools.h"
#include "deliver/shaping.h"

static struct tern_config *load(const char *text)
{
	char err[512] = "";
	struct tern_config *c = conf_load_string(text, strlen(text), "t.conf", err, sizeof(err));
	if (!c)
		fail_msg("config refused: %s", err);
	return c;
}

static void refused(const char *text, const char *needle)
{
	char err[512] = "";
	struct tern_config *c = conf_load_string(text, strlen(text), "t.conf", err, sizeof(err));
	if (c) {
		conf_unref(c);
		fail_msg("config accepted, expected an error with '%s':\n%s", needle, text);
	}
	if (!strstr(err, needle))
		fail_msg("error '%s' does not say '%s'", err, needle);
}

/* ---- limits ---------------------------------------------------------------- */

static void test_builtin_and_sites(void **state)
{
	struct shape_limits l;
	shaping_resolve(NULL, 10, "gmail.com", &l);
	assert_int_equal(l.connections, 5);
	assert_int_equal(l.per_connection, 50);
	assert_int_equal(l.per_minute, 0);
	shaping_resolve(NULL, 10, "googlemail.com", &l);
	assert_int_equal(l.connections, 5);
	assert_string_equal(shaping_site("googlemail.com"), "gmail.com");
	assert_string_equal(shaping_site("hotmail.com"), "outlook.com");
	assert_string_equal(shaping_site("aol.com"), "yahoo.com");
	assert_null(shaping_site("example.org"));
	/* an unknown domain: max_per_destination, 100, unlimited */
	shaping_resolve(NULL, 10, "example.org", &l);
	assert_int_equal(l.connections, 10);
	assert_int_equal(l.per_connection, SHAPE_DEFAULT_PER_CONNECTION);
	assert_int_equal(l.per_minute, 0);
	shaping_resolve(NULL, 0, "example.org", &l);
	assert_int_equal(l.connections, 1);
}

static void test_overrides(void **state)
{
	struct tern_config *c = load("shaping {\n"
	                             "  \"gmail.com\" { connections = 2; per_minute = 60; }\n"
	                             "  \"googlemail.com\" { per_connection = 7; }\n"
	                             "  \"Example.NET\" { per_minute = 30; }\n"
	                             "  default { per_connection = 9; connections = 3; }\n"
	                             "  backoff = 2min\n"
	                             "}\n");
	struct shape_limits l;
	/* the site's entry applies to its other domains; the domain's own wins */
	shaping_resolve(&c->shaping, 10, "googlemail.com", &l);
	assert_int_equal(l.connections, 2);
	assert_int_equal(l.per_connection, 7);
	assert_int_equal(l.per_minute, 60);
	shaping_resolve(&c->shaping, 10, "gmail.com", &l);
	assert_int_equal(l.per_connection, 50); /* built-in before default { } */
	/* config domains are lowercased; default { } fills the rest */
	shaping_resolve(&c->shaping, 10, "example.net", &l);
	assert_int_equal(l.per_minute, 30);
	assert_int_equal(l.connections, 3);
	assert_int_equal(l.per_connection, 9);
	shaping_resolve(&c->shaping, 10, "other.test", &l);
	assert_int_equal(l.connections, 3);
	assert_int_equal(l.per_minute, 0);
	assert_int_equal(c->shaping.backoff, 120);
	conf_unref(c);
}

static void test_mx_sites(void **state)
{
	assert_string_equal(shaping_mx_site("aspmx.l.google.com"), "gmail.com");
	assert_string_equal(shaping_mx_site("ALT1.ASPMX.L.GOOGLE.COM."), "gmail.com");
	assert_string_equal(shaping_mx_site("example-org.mail.protection.outlook.com"),
	                    "outlook.com");
	assert_string_equal(shaping_mx_site("mta5.am0.yahoodns.net"), "yahoo.com");
	assert_null(shaping_mx_site("notgoogle.com")); /* a label boundary is needed */
	assert_null(shaping_mx_site("google.com.evil.test"));
	assert_null(shaping_mx_site("mx.example.org"));
	assert_null(shaping_mx_site(""));
}

static void test_learned_site(void **state)
{
	shaping_reset();
	struct tern_config *c = load("shaping { \"gmail.com\" { per_minute = 2; } }\n");
	struct shape_limits l;
	shaping_limits(c, "workspace.example", &l);
	assert_int_equal(l.connections, 10);                     /* not known yet */
	shaping_learn_mx("workspace.example", "mx.example.net"); /* no provider: nothing */
	shaping_limits(c, "workspace.example", &l);
	assert_int_equal(l.connections, 10);
	shaping_learn_mx("workspace.example", "aspmx.l.google.com");
	shaping_limits(c, "workspace.example", &l);
	assert_int_equal(l.connections, 5); /* gmail.com's built-in */
	assert_int_equal(l.per_connection, 50);
	assert_int_equal(l.per_minute, 2); /* and the site's config entry */
	/* one bucket for the site: gmail.com's tokens are the learned domain's */
	double wait;
	assert_true(shaping_take(c, "gmail.com", &wait));
	assert_true(shaping_take(c, "workspace.example", &wait));
	assert_false(shaping_take(c, "googlemail.com", &wait));
	/* one back-off too */
	shaping_note_reply(c, "workspace.example", "Q2", 421, "", "busy");
	shaping_limits(c, "gmail.com", &l);
	assert_int_equal(l.connections, 2);
	shaping_reset();
	conf_unref(c);
}

/* ---- token bucket ---------------------------------------------------------- */

static void test_bucket(void **state)
{
	struct shape_bucket b = {0};
	double wait = -1;
	assert_true(shape_bucket_take(&b, 0, 100.0, &wait)); /* unlimited */
	assert_true(shape_bucket_take(&b, 2, 100.0, &wait));
	assert_true(shape_bucket_take(&b, 2, 100.0, &wait));
	assert_false(shape_bucket_take(&b, 2, 100.0, &wait));
	assert_true(wait > 29.9 && wait < 30.1);
	assert_false(shape_bucket_take(&b, 2, 115.0, &wait)); /* half a token */
	assert_true(wait > 14.9 && wait < 15.1);
	assert_true(shape_bucket_take(&b, 2, 130.0, &wait));
	/* a long pause gives at most a minute's worth */
	assert_true(shape_bucket_take(&b, 2, 10000.0, &wait));
	assert_true(shape_bucket_take(&b, 2, 10000.0, &wait));
	assert_false(shape_bucket_take(&b, 2, 10000.0, &wait));
}

/* ---- back-off -------------------------------------------------------------- */

static void test_backoff_replies(void **state)
{
	assert_true(shaping_is_backoff_reply(421, ""));
	assert_true(shaping_is_backoff_reply(421, "4.3.2"));
	assert_true(shaping_is_backoff_reply(451, "4.7.1"));
	assert_true(shaping_is_backoff_reply(450, "4.7.0"));
	assert_false(shaping_is_backoff_reply(451, "4.3.0"));
	assert_false(shaping_is_backoff_reply(451, ""));
	assert_false(shaping_is_backoff_reply(550, "5.7.1"));
	assert_false(shaping_is_backoff_reply(250, "2.0.0"));
	assert_false(shaping_is_backoff_reply(452, NULL));
}

static void test_backoff_levels(void **state)
{
	struct shape_backoff b = {0};
	assert_int_equal(shape_backoff_level(&b, 0.0, 300), 0);
	shape_backoff_hit(&b, 1000.0, 300);
	assert_int_equal(b.level, 1);
	assert_true(b.until == 1300.0);
	shape_backoff_hit(&b, 1100.0, 300); /* a repeat: longer and deeper */
	assert_int_equal(b.level, 2);
	assert_true(b.until == 1700.0);
	for (int i = 0; i < 5; i++)
		shape_backoff_hit(&b, 1100.0, 300);
	assert_int_equal(b.level, SHAPE_BACKOFF_MAX_LEVEL);
	assert_int_equal(shape_backoff_level(&b, 2000.0, 300), SHAPE_BACKOFF_MAX_LEVEL);
	/* recovery: one level per period after the end */
	assert_int_equal(shape_backoff_level(&b, 1100.0 + 1200.0, 300),
	                 SHAPE_BACKOFF_MAX_LEVEL - 1);
	assert_int_equal(shape_backoff_level(&b, 1100.0 + 1200.0 + 300.0, 300),
	                 SHAPE_BACKOFF_MAX_LEVEL - 2);
	assert_int_equal(shape_backoff_level(&b, 1e9, 300), 0);

	struct shape_limits l = {10, 50, 100};
	shape_apply_backoff(&l, 1);
	assert_int_equal(l.connections, 5);
	assert_int_equal(l.per_minute, 50);
	assert_int_equal(l.per_connection, 50); /* unchanged */
	struct shape_limits u = {3, 50, 0};
	shape_apply_backoff(&u, 4);
	assert_int_equal(u.connections, 1); /* never 0 */
	assert_int_equal(u.per_minute, 0);  /* unlimited stays unlimited */
}

static void test_backoff_shared_by_site(void **state)
{
	shaping_reset();
	struct tern_config *c = load("shaping { backoff = 10min; }\n");
	struct shape_limits l;
	shaping_limits(c, "googlemail.com", &l);
	assert_int_equal(l.connections, 5);
	shaping_note_reply(c, "gmail.com", "Q1", 451, "4.3.0", "busy"); /* not a back-off */
	shaping_limits(c, "googlemail.com", &l);
	assert_int_equal(l.connections, 5);
	shaping_note_reply(c, "gmail.com", "Q1", 421, "4.7.0", "slow down");
	shaping_limits(c, "googlemail.com", &l);
	assert_int_equal(l.connections, 2);
	shaping_limits(c, "example.org", &l); /* others are untouched */
	assert_int_equal(l.connections, 10);
	shaping_reset();
	conf_unref(c);
}

static void test_take_per_minute(void **state)
{
	shaping_reset();
	struct tern_config *c = load("shaping { \"rate.test\" { per_minute = 3; } }\n");
	double wait = 0;
	for (int i = 0; i < 3; i++)
		assert_true(shaping_take(c, "rate.test", &wait));
	assert_false(shaping_take(c, "rate.test", &wait));
	assert_true(wait > 0 && wait <= 20.0);
	assert_true(shaping_take(c, "other.test", &wait)); /* unlimited */
	shaping_reset();
	conf_unref(c);
}

/* tern_destination_throttled_total{destination} counts each hold-back (a full
 * per-minute bucket, a back-off reply), labelled by site or configured domain,
 * never by a bare recipient domain (it comes from the network). */
static void test_throttled_metric(void **state)
{
	shaping_reset();
	metrics_reset();
	struct tern_config *c = load("shaping { default { per_minute = 1; }\n"
	                             "  \"rate.test\" { per_minute = 1; } }\n");
	double wait = 0;
	assert_true(shaping_take(c, "rate.test", &wait));
	assert_int_equal(metric_value(M_DESTINATION_THROTTLED, "rate.test", NULL), 0);
	assert_false(shaping_take(c, "rate.test", &wait));
	assert_false(shaping_take(c, "rate.test", &wait));
	assert_int_equal(metric_value(M_DESTINATION_THROTTLED, "rate.test", NULL), 2);
	assert_true(shaping_take(c, "random.test", &wait));
	assert_false(shaping_take(c, "random.test", &wait));
	assert_int_equal(metric_value(M_DESTINATION_THROTTLED, "random.test", NULL), 0);
	assert_int_equal(metric_value(M_DESTINATION_THROTTLED, "other", NULL), 1);
	shaping_note_reply(c, "googlemail.com", "Q1", 451, "4.3.0", "busy"); /* not a back-off */
	assert_int_equal(metric_value(M_DESTINATION_THROTTLED, "gmail.com", NULL), 0);
	shaping_note_reply(c, "googlemail.com", "Q1", 421, "4.7.0", "slow down");
	assert_int_equal(metric_value(M_DESTINATION_THROTTLED, "gmail.com", NULL), 1);
	shaping_reset();
	metrics_reset();
	conf_unref(c);
}

/* ---- pools ------------------------------------------------------------------ */

static const char *pools_conf = "pools {\n"
                                "  tx { addresses = [\"127.0.0.2\", \"127.0.0.3\", \"::1\"];\n"
                                "       ehlo { \"127.0.0.3\" = \"mta3.example.org\"; } }\n"
                                "  bulk { addresses = [\"127.0.0.4\"]; }\n"
                                "}\n"
                                "pool_select {\n"
                                "  tags { newsletter = \"bulk\"; }\n"
                                "  domains { \"Example.org\" = \"tx\"; }\n"
                                "  keys { \"shop\" = \"bulk\"; }\n"
                                "  default = \"tx\"\n"
                                "}\n";

static void test_pool_select(void **state)
{
	struct tern_config *c = load(pools_conf);
	const struct conf_shaping *sh = &c->shaping;
	assert_string_equal(pool_select(sh, "a@example.org", NULL), "tx");
	assert_string_equal(pool_select(sh, "a@mail.EXAMPLE.org", ""), "tx"); /* parent */
	assert_string_equal(pool_select(sh, "a@example.org", "newsletter"), "bulk");
	assert_string_equal(pool_select(sh, "a@other.test", "unknown-tag"), "tx"); /* default */
	assert_string_equal(pool_select(sh, "", NULL), "tx");                      /* null sender */
	assert_string_equal(pool_for_key(sh, "shop"), "bulk");
	assert_null(pool_for_key(sh, "nope"));
	assert_non_null(pool_find(sh, "bulk"));
	assert_null(pool_find(sh, "nope"));
	conf_unref(c);
	/* without pool_select: no pool */
	c = load("hostname = \"mx.example.test\"\n");
	assert_null(pool_select(&c->shaping, "a@example.org", "newsletter"));
	conf_unref(c);
}

static void test_take_tag(void **state)
{
	char tag[POOL_TAG_MAX];
	char m1[] = "From: a@example.org\r\nX-Tern-Tag:  newsletter \r\nSubject: hi\r\n\r\n"
	            "X-Tern-Tag: body line stays\r\n";
	size_t n = pool_take_tag(m1, strlen(m1), tag, sizeof(tag));
	assert_string_equal(tag, "newsletter");
	const char want1[] =
	    "From: a@example.org\r\nSubject: hi\r\n\r\nX-Tern-Tag: body line stays\r\n";
	assert_int_equal(n, strlen(want1));
	assert_memory_equal(m1, want1, n);
	/* folded, any case, several: all go, the first value counts */
	char m2[] = "x-tern-tag: a\r\n b\r\nTo: c@d\r\nX-TERN-TAG: second\r\n\r\nbody\r\n";
	n = pool_take_tag(m2, strlen(m2), tag, sizeof(tag));
	assert_string_equal(tag, "a b");
	assert_int_equal(n, strlen("To: c@d\r\n\r\nbody\r\n"));
	assert_memory_equal(m2, "To: c@d\r\n\r\nbody\r\n", n);
	/* none: untouched; a header that only begins alike is not it */
	char m3[] = "X-Tern-Tags: x\r\nSubject: s\r\n\r\nb\r\n";
	n = pool_take_tag(m3, strlen(m3), tag, sizeof(tag));
	assert_string_equal(tag, "");
	assert_int_equal(n, strlen(m3));
	/* no header/body separator, no final line break */
	char m4[] = "X-Tern-Tag: t";
	n = pool_take_tag(m4, strlen(m4), tag, sizeof(tag));
	assert_string_equal(tag, "t");
	assert_int_equal(n, 0);
	/* a long value is cut, never overflows */
	char m5[300];
	int k = snprintf(m5, sizeof(m5), "X-Tern-Tag: %0200d\r\n\r\n", 7);
	n = pool_take_tag(m5, (size_t)k, tag, sizeof(tag));
	assert_int_equal(strlen(tag), POOL_TAG_MAX - 1);
	assert_int_equal(n, 2);
}

static void test_warmup_cap(void **state)
{
	assert_int_equal(pool_warmup_cap(50, 1.5, 0), 50);
	assert_int_equal(pool_warmup_cap(50, 1.5, 1), 75);
	assert_int_equal(pool_warmup_cap(50, 2.0, 3), 400);
	assert_int_equal(pool_warmup_cap(50, 2.0, 100), 1000000000ull);
	assert_int_equal(pool_warmup_cap(50, 1.0, 30), 50);
}

static void test_pick_round_robin_and_family(void **state)
{
	pools_reset();
	struct tern_config *c = load(pools_conf);
	const struct conf_pool *tx = pool_find(&c->shaping, "tx");
	struct sockaddr_storage ss;
	socklen_t len;
	const char *ehlo = NULL;
	char a[64], b[64], v6[64];
	assert_int_equal(pool_pick(c, tx, AF_INET, NULL, &ss, &len, &ehlo, a, sizeof(a)), TERN_OK);
	assert_int_equal(pool_pick(c, tx, AF_INET, NULL, &ss, &len, &ehlo, b, sizeof(b)), TERN_OK);
	assert_string_not_equal(a, b); /* round robin over the IPv4 ones */
	assert_true(strcmp(a, "127.0.0.3") == 0 || strcmp(b, "127.0.0.3") == 0);
	/* the EHLO name belongs to the address */
	assert_int_equal(pool_pick(c, tx, AF_INET, "127.0.0.3", &ss, &len, &ehlo, a, sizeof(a)),
	                 TERN_OK);
	assert_string_equal(a, "127.0.0.3");
	assert_string_equal(ehlo, "mta3.example.org");
	assert_int_equal(ss.ss_family, AF_INET);
	assert_int_equal(pool_pick(c, tx, AF_INET, "127.0.0.2", &ss, &len, &ehlo, a, sizeof(a)),
	                 TERN_OK);
	assert_null(ehlo);
	assert_int_equal(pool_pick(c, tx, AF_INET6, NULL, &ss, &len, &ehlo, v6, sizeof(v6)),
	                 TERN_OK);
	assert_string_equal(v6, "::1");
	assert_int_equal(ss.ss_family, AF_INET6);
	const struct conf_pool *bulk = pool_find(&c->shaping, "bulk");
	assert_int_equal(pool_pick(c, bulk, AF_INET6, NULL, &ss, &len, &ehlo, v6, sizeof(v6)),
	                 TERN_ENOTFOUND);
	conf_unref(c);
	pools_reset();
}

static void test_warmup_take_and_file(void **state)
{
	pools_reset();
	char dir[] = "/tmp/test-shaping-XXXXXX";
	assert_non_null(mkdtemp(dir));
	char text[1024];
	snprintf(text, sizeof(text),
	         "data_dir = \"%s\"\n"
	         "pools { w { addresses = [\"127.0.0.5\", \"127.0.0.6\"];\n"
	         "            warmup { start = 2; growth = 1.5; } } }\n",
	         dir);
	struct tern_config *c = load(text);
	const struct conf_pool *w = pool_find(&c->shaping, "w");
	assert_int_equal(w->warmup_start, 2);
	char a[64];
	double wait = 0;
	/* the first connection's address may take 2, then it is at its cap */
	assert_true(pool_take(c, w, "127.0.0.5", a, sizeof(a)));
	assert_true(pool_take(c, w, "127.0.0.5", a, sizeof(a)));
	assert_false(pool_take(c, w, "127.0.0.5", a, sizeof(a)));
	assert_true(pool_has_room(c, w, &wait)); /* .6 has room */
	assert_true(pool_take(c, w, "", a, sizeof(a)));
	assert_string_equal(a, "127.0.0.6");
	assert_true(pool_take(c, w, "", a, sizeof(a)));
	assert_false(pool_take(c, w, "", a, sizeof(a)));
	assert_false(pool_has_room(c, w, &wait));
	assert_true(wait > 0 && wait <= 86400);
	struct sockaddr_storage ss;
	socklen_t len;
	const char *ehlo;
	assert_int_equal(pool_pick(c, w, AF_INET, NULL, &ss, &len, &ehlo, a, sizeof(a)),
	                 TERN_ELIMIT);
	/* the write-behind thread writes the counts without being asked (the
	 * delivery loop that counts never writes the file itself) */
	char path[600], buf[512] = "";
	snprintf(path, sizeof(path), "%s/pools/warmup", dir);
	bool seen = false;
	for (int i = 0; i < 100 && !seen; i++) {
		FILE *g = fopen(path, "r");
		if (g) {
			size_t n = fread(buf, 1, sizeof(buf) - 1, g);
			buf[n] = '\0';
			fclose(g);
			seen = strstr(buf, "127.0.0.6") != NULL;
		}
		if (!seen)
			usleep(50 * 1000);
	}
	assert_true(seen);
	/* the counts survive a restart (written at close, read back) */
	pools_close();
	pools_reset();
	assert_false(pool_has_room(c, w, &wait));
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	size_t got = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[got] = '\0';
	long long day = (long long)time(NULL) / 86400;
	char line[128];
	snprintf(line, sizeof(line), "127.0.0.5 %lld %lld 2\n", day, day);
	assert_non_null(strstr(buf, line));
	/* a pool without warm-up always gives */
	conf_unref(c);
	c = load(pools_conf);
	assert_true(pool_take(c, pool_find(&c->shaping, "bulk"), "", a, sizeof(a)));
	assert_string_equal(a, "");
	conf_unref(c);
	unlink(path);
	snprintf(path, sizeof(path), "%s/pools", dir);
	rmdir(path);
	rmdir(dir);
	pools_reset();
}

/* ---- config errors -------------------------------------------------------- */

static void test_config_errors(void **state)
{
	refused("shaping { \"bad domain\" { connections = 2; } }\n", "not a valid domain");
	refused("shaping { \"x.test\" { connections = 0; } }\n", "below the minimum");
	refused("shaping { \"x.test\" { speed = 2; } }\n", "unknown key 'speed'");
	refused("shaping { backoff = 0; }\n", "below the minimum");
	refused("pools { p { addresses = [\"mta.example.org\"]; } }\n",
	        "is not an IPv4 or IPv6 address");
	refused("pools { p { addresses = [\"127.0.0.2\", \"127.0.0.2\"]; } }\n", "listed twice");
	refused("pools { p { ehlo { \"127.0.0.2\" = \"x.test\"; } } }\n", "needs addresses");
	refused(
	    "pools { p { addresses = [\"127.0.0.2\"]; ehlo { \"127.0.0.9\" = \"x.test\"; } } }\n",
	    "not one of the pool's addresses");
	refused(
	    "pools { p { addresses = [\"127.0.0.2\"]; warmup { start = 5; growth = 0.5; } } }\n",
	    "from 1 to 10");
	refused("pools { \"a b\" { addresses = [\"127.0.0.2\"]; } }\n", "not a pool name");
	refused("pool_select { default = \"nope\"; }\n", "pool 'nope' is not in pools");
	refused("pools { p { addresses = [\"127.0.0.2\"]; } }\n"
	        "pool_select { tags { t = \"q\"; } }\n",
	        "pool 'q' is not in pools");
	refused("pool_select { colour = \"p\"; }\n", "unknown key 'colour'");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_builtin_and_sites),
	    cmocka_unit_test(test_overrides),
	    cmocka_unit_test(test_mx_sites),
	    cmocka_unit_test(test_learned_site),
	    cmocka_unit_test(test_bucket),
	    cmocka_unit_test(test_backoff_replies),
	    cmocka_unit_test(test_backoff_levels),
	    cmocka_unit_test(test_backoff_shared_by_site),
	    cmocka_unit_test(test_take_per_minute),
	    cmocka_unit_test(test_throttled_metric),
	    cmocka_unit_test(test_pool_select),
	    cmocka_unit_test(test_take_tag),
	    cmocka_unit_test(test_warmup_cap),
	    cmocka_unit_test(test_pick_round_robin_and_family),
	    cmocka_unit_test(test_warmup_take_and_file),
	    cmocka_unit_test(test_config_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
