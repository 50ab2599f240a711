/*
 * test_stats.c — delivery statistics (src/store/stats.c) over a real event
 * store with rows of known times, the provider names, and the query-string
 * parsers of GET /api/v1/stats and GET /api/v1/queue
 * (src/http/stats_routes.c, src/http/queue_routes.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/err.h"
#include "http/queue_routes.h"
#include "http/stats_routes.h"
#include "store/events.h"
#include "store/stats.h"

/* 2026-12-06T00:00:00Z: an hour's and a day's boundary */
#define T0 1796515200LL

static char dir[] = "/tmp/test_stats.XXXXXX";
static sqlite3 *db;

static void row(int64_t t, const char *type, const char *qid, const char *rcpt, const char *key,
                const char *tags, const char *status, const char *reply, const char *relay)
{
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_prepare_v2(db,
	                                    "INSERT INTO events(time, type, queue_id, recipient, "
	                                    "key, tags, status, reply, relay) VALUES(?,?,?,?,?,?,?,"
	                                    "?,?)",
	                                    -1, &st, NULL),
	                 SQLITE_OK);
	sqlite3_bind_int64(st, 1, t);
	const char *v[] = {type, qid, rcpt, key, tags, status, reply, relay};
	for (int i = 0; i < 8; i++)
		sqlite3_bind_text(st, i + 2, v[i] ? v[i] : "", -1, SQLITE_STATIC);
	assert_int_equal(sqlite3_step(st), SQLITE_DONE);
	sqlite3_finalize(st);
}

static int setup(void **state)
{
	char err[256];
	if (!mkdtemp(dir) || !(db = events_db_open(dir, err, sizeof(err))))
		return -1;
	return 0;
}

static int teardown(void **state)
{
	sqlite3_close(db);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void test_provider_names(void **state)
{
	assert_string_equal(stats_provider("gmail.com", NULL), "google");
	assert_string_equal(stats_provider("googlemail.com", "127.0.0.1"), "google");
	assert_string_equal(stats_provider("outlook.com", NULL), "microsoft");
	assert_string_equal(stats_provider("hotmail.com", NULL), "microsoft");
	assert_string_equal(stats_provider("live.com", NULL), "microsoft");
	assert_string_equal(stats_provider("yahoo.com", NULL), "yahoo");
	assert_string_equal(stats_provider("icloud.com", NULL), "apple");
	assert_string_equal(stats_provider("me.com", NULL), "apple");
	/* a provider the table knows by its site's name */
	assert_string_equal(stats_provider("web.de", NULL), "gmx.net");
	/* no provider: the domain itself */
	assert_string_equal(stats_provider("example.org", NULL), "example.org");
	assert_string_equal(stats_provider("example.org", "local"), "example.org");
	assert_string_equal(stats_provider("example.org", "mx.example.org"), "example.org");
	/* a Google Workspace domain: its MX host names the provider */
	assert_string_equal(stats_provider("corp.example", "aspmx.l.google.com"), "google");
	assert_string_equal(
	    stats_provider("corp.example", "corp-example.mail.protection.outlook.com."),
	    "microsoft");
	/* a suffix that is not a whole label does not match */
	assert_string_equal(stats_provider("corp.example", "notgoogle.com"), "corp.example");
	assert_string_equal(stats_provider("", NULL), "(none)");
	assert_string_equal(stats_provider(NULL, NULL), "(none)");
}

static void test_stats_parse(void **state)
{
	struct stats_query q;
	const char *why = NULL;
	int64_t now = T0 + 1800;
	assert_int_equal(stats_query_parse(NULL, 0, now, &q, &why), TERN_OK);
	assert_int_equal(q.since, now - 86400);
	assert_int_equal(q.until, now);
	assert_int_equal(q.bucket, 3600);
	assert_int_equal(q.group, STATS_GROUP_NONE);
	const char *s = "since=7d&group=provider";
	assert_int_equal(stats_query_parse(s, strlen(s), now, &q, &why), TERN_OK);
	assert_int_equal(q.since, now - 7 * 86400);
	assert_int_equal(q.bucket, 86400);
	assert_int_equal(q.group, STATS_GROUP_PROVIDER);
	s = "group=tag&bucket=hour&since=30d&x=1&since=5y"; /* the first since counts */
	assert_int_equal(stats_query_parse(s, strlen(s), now, &q, &why), TERN_OK);
	assert_int_equal(q.bucket, 3600);
	assert_int_equal(q.since, now - 30 * 86400);
	assert_int_equal(q.group, STATS_GROUP_TAG);
	s = "xsince=5y&since=48h&bucket=day"; /* names match whole */
	assert_int_equal(stats_query_parse(s, strlen(s), now, &q, &why), TERN_OK);
	assert_int_equal(q.since, now - 48 * 3600);
	assert_int_equal(q.bucket, 86400);
	/* a length that ends before the rest of the text */
	s = "group=keyboard";
	assert_int_equal(stats_query_parse(s, 9, now, &q, &why), TERN_OK);
	assert_int_equal(q.group, STATS_GROUP_KEY);
	static const struct {
		const char *qs, *word;
	} bad[] = {
	    {"since=5y", "since:"},     {"since=0h", "since:"},
	    {"since=2401h", "since:"},  {"since=101d", "since:"},
	    {"since=", "since:"},       {"since=99999999999999999999999h", "since:"},
	    {"since=-1h", "since:"},    {"since=1h2", "since:"},
	    {"bucket=week", "bucket:"}, {"bucket=", "bucket:"},
	    {"group=", "group:"},       {"group=Domain", "group:"},
	    {"group", "group:"},        {"since=24h&group=domainx", "group:"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why = NULL;
		assert_int_equal(stats_query_parse(bad[i].qs, strlen(bad[i].qs), now, &q, &why),
		                 TERN_EINVAL);
		assert_non_null(why);
		assert_memory_equal(why, bad[i].word, strlen(bad[i].word));
	}
	/* a window before the epoch */
	s = "since=100d";
	assert_int_equal(stats_query_parse(s, strlen(s), 1000, &q, &why), TERN_EINVAL);
}

static void test_queue_parse(void **state)
{
	struct queue_query q;
	const char *why = NULL;
	assert_int_equal(queue_query_parse(NULL, 0, &q, &why), TERN_OK);
	assert_int_equal(q.state, QF_ALL);
	assert_int_equal(q.limit, 100);
	assert_string_equal(q.cursor, "");
	const char *s = "state=deferred&limit=1000&cursor=CRFJZG4551R00000";
	assert_int_equal(queue_query_parse(s, strlen(s), &q, &why), TERN_OK);
	assert_int_equal(q.state, QF_DEFERRED);
	assert_int_equal(q.limit, 1000);
	assert_string_equal(q.cursor, "CRFJZG4551R00000");
	s = "state=held&cursor=";
	assert_int_equal(queue_query_parse(s, strlen(s), &q, &why), TERN_OK);
	assert_int_equal(q.state, QF_HELD);
	assert_string_equal(q.cursor, "");
	const char *bad[] = {"state=bogus",  "state=",     "limit=0",
	                     "limit=1001",   "limit=",     "limit=1e3",
	                     "limit=100000", "cursor=abc", "cursor=CRFJZG4551R0000%30"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why = NULL;
		assert_int_equal(queue_query_parse(bad[i], strlen(bad[i]), &q, &why), TERN_EINVAL);
		assert_non_null(why);
	}
	assert_int_equal(queue_action_parse("retry"), QA_RETRY);
	assert_int_equal(queue_action_parse("release"), QA_RELEASE);
	assert_int_equal(queue_action_parse("Retry"), -1);
	assert_string_equal(queue_action_name(QA_DELETE), "delete");
}

/* Every counter of c, in the order of enum stats_counter. */
static void counts_are(const struct stats_counts *c, const uint64_t want[ST__COUNT])
{
	for (int i = 0; i < ST__COUNT; i++)
		assert_int_equal(c->n[i], want[i]);
}

static const struct stats_group_row *group(const struct stats_result *r, const char *name)
{
	for (size_t i = 0; i < r->n_groups; i++)
		if (strcmp(r->groups[i].name, name) == 0)
			return &r->groups[i];
	fail_msg("no group %s", name);
	return NULL;
}

static void test_stats_run(void **state)
{
	/* before the window: not counted */
	row(T0 - 10, "queued", "OLD", "x@gmail.com", "k1", "a", NULL, NULL, NULL);
	/* Q1: received at T0, two recipients, tags a and b, key k1 */
	row(T0, "received", "Q1", NULL, "k1", "a,b", NULL, NULL, NULL);
	row(T0, "queued", "Q1", "u@gmail.com", "k1", "a,b", NULL, NULL, NULL);
	row(T0, "queued", "Q1", "v@Example.ORG", "k1", "a,b", NULL, NULL, NULL);
	row(T0 + 3, "delivered", "Q1", "u@gmail.com", "k1", "a,b", "2.0.0", "250 ok",
	    "gmail-smtp-in.l.google.com");
	row(T0 + 5, "deferred", "Q1", "v@Example.ORG", "k1", "a,b", "4.2.0", "451 busy", "mx");
	row(T0 + 3600 + 5, "bounced", "Q1", "v@Example.ORG", "k1", "a,b", "5.1.1",
	    "550 5.1.1 v: no such user", "mx");
	/* Q2..Q11: SMTP mail without key or tag, delivered after 1..10 s */
	for (int i = 1; i <= 10; i++) {
		char q[8], r[32];
		snprintf(q, sizeof(q), "Q%d", i + 1);
		snprintf(r, sizeof(r), "w%d@corp.example", i);
		row(T0 + 7200, "received", q, NULL, NULL, NULL, NULL, NULL, NULL);
		row(T0 + 7200, "queued", q, r, NULL, NULL, NULL, NULL, NULL);
		row(T0 + 7200 + i, "delivered", q, r, NULL, NULL, "2.0.0", "250 ok",
		    "aspmx.l.google.com");
	}
	row(T0 + 7300, "bounced", "Q2", "z1@corp.example", NULL, NULL, "5.1.1",
	    "550 5.1.1 z1: unknown", "mx");
	row(T0 + 7301, "bounced", "Q3", "z2@corp.example", NULL, NULL, "5.7.1", "550 5.7.1 spam",
	    "mx");
	/* a DSN's delivery: no receipt event, so no latency */
	row(T0 + 7302, "delivered", "DSN", "app@example.test", NULL, NULL, "2.0.0", "250", "local");
	row(T0 + 7400, "opened", "Q1", "", "k1", "a,b", NULL, NULL, NULL);
	row(T0 + 7401, "clicked", "Q1", "u@gmail.com", "k1", "a,b", NULL, NULL, NULL);
	row(T0 + 7402, "complained", "Q1", "u@gmail.com", "k1", "a,b", NULL, NULL, NULL);
	row(T0 + 7403, "suppressed", "Q4", "s@corp.example", NULL, NULL, NULL, NULL, NULL);
	row(T0 + 7404, "unsubscribed", "Q1", "u@gmail.com", "k1", "a,b", NULL, NULL, NULL);
	/* after the window: not counted */
	row(T0 + 3 * 3600 + 1, "queued", "NEW", "y@gmail.com", NULL, NULL, NULL, NULL, NULL);

	struct stats_query q = {
	    .since = T0 - 5, .until = T0 + 3 * 3600, .bucket = 3600, .group = STATS_GROUP_NONE};
	struct stats_result r;
	assert_int_equal(stats_run(db, &q, &r), TERN_OK);
	/* sent delivered deferred bounced complained opened clicked suppressed */
	counts_are(&r.totals, (uint64_t[ST__COUNT]){12, 12, 1, 3, 1, 1, 1, 1});
	assert_int_equal(r.n_series, 5); /* T0-5 falls in the hour before T0 */
	assert_int_equal(r.series[0].t, T0 - 3600);
	assert_int_equal(r.series[4].t, T0 + 3 * 3600);
	counts_are(&r.series[0].c, (uint64_t[ST__COUNT]){0});
	counts_are(&r.series[1].c, (uint64_t[ST__COUNT]){2, 1, 1, 0, 0, 0, 0, 0});
	counts_are(&r.series[2].c, (uint64_t[ST__COUNT]){0, 0, 0, 1, 0, 0, 0, 0});
	counts_are(&r.series[3].c, (uint64_t[ST__COUNT]){10, 11, 0, 2, 1, 1, 1, 1});
	counts_are(&r.series[4].c, (uint64_t[ST__COUNT]){0});
	assert_int_equal(r.n_groups, 0);
	/* latency: Q1's 3 s and Q2..Q11's 1..10 s; the DSN has none */
	assert_int_equal(r.latency.count, 11);
	assert_int_equal(r.latency.p50, 5000);
	assert_int_equal(r.latency.p90, 9000);
	assert_int_equal(r.latency.p99, 10000);
	assert_int_equal(r.latency.max, 10000);
	/* bounces by status, most first, with the latest reply */
	assert_int_equal(r.n_reasons, 2);
	assert_string_equal(r.reasons[0].status, "5.1.1");
	assert_int_equal(r.reasons[0].count, 2);
	assert_string_equal(r.reasons[0].reason, "550 5.1.1 z1: unknown");
	assert_string_equal(r.reasons[1].status, "5.7.1");
	stats_result_free(&r);

	q.group = STATS_GROUP_DOMAIN;
	assert_int_equal(stats_run(db, &q, &r), TERN_OK);
	assert_int_equal(r.n_groups, 5);
	assert_string_equal(r.groups[0].name, "corp.example"); /* the most sent first */
	counts_are(&group(&r, "corp.example")->c, (uint64_t[ST__COUNT]){10, 10, 0, 2, 0, 0, 0, 1});
	counts_are(&group(&r, "example.org")->c, (uint64_t[ST__COUNT]){1, 0, 1, 1, 0, 0, 0, 0});
	counts_are(&group(&r, "gmail.com")->c, (uint64_t[ST__COUNT]){1, 1, 0, 0, 1, 0, 1, 0});
	counts_are(&group(&r, "(none)")->c, (uint64_t[ST__COUNT]){0, 0, 0, 0, 0, 1, 0, 0});
	counts_are(&group(&r, "example.test")->c, (uint64_t[ST__COUNT]){0, 1, 0, 0, 0, 0, 0, 0});
	stats_result_free(&r);

	q.group = STATS_GROUP_PROVIDER;
	assert_int_equal(stats_run(db, &q, &r), TERN_OK);
	/* corp.example's deliveries went to Google's MX; its bounces and the
	 * suppression (relay "mx" or none) stay the domain's */
	counts_are(&group(&r, "google")->c, (uint64_t[ST__COUNT]){1, 11, 0, 0, 1, 0, 1, 0});
	counts_are(&group(&r, "corp.example")->c, (uint64_t[ST__COUNT]){10, 0, 0, 2, 0, 0, 0, 1});
	stats_result_free(&r);

	q.group = STATS_GROUP_TAG;
	assert_int_equal(stats_run(db, &q, &r), TERN_OK);
	assert_int_equal(r.n_groups, 3);
	counts_are(&group(&r, "a")->c, (uint64_t[ST__COUNT]){2, 1, 1, 1, 1, 1, 1, 0});
	counts_are(&group(&r, "b")->c, (uint64_t[ST__COUNT]){2, 1, 1, 1, 1, 1, 1, 0});
	counts_are(&group(&r, "(none)")->c, (uint64_t[ST__COUNT]){10, 11, 0, 2, 0, 0, 0, 1});
	stats_result_free(&r);

	q.group = STATS_GROUP_KEY;
	q.bucket = 86400;
	assert_int_equal(stats_run(db, &q, &r), TERN_OK);
	assert_int_equal(r.n_series, 2);
	assert_int_equal(r.series[1].t, T0);
	counts_are(&r.series[1].c, (uint64_t[ST__COUNT]){12, 12, 1, 3, 1, 1, 1, 1});
	counts_are(&group(&r, "k1")->c, (uint64_t[ST__COUNT]){2, 1, 1, 1, 1, 1, 1, 0});
	stats_result_free(&r);

	/* the JSON answer: the contract's fields */
	q.group = STATS_GROUP_NONE;
	assert_int_equal(stats_run(db, &q, &r), TERN_OK);
	json_t *j = stats_result_json(&q, &r);
	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(j, "bucket")), "day");
	assert_string_equal(json_string_value(json_object_get(j, "group")), "none");
	assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "totals"), "sent")),
	                 12);
	assert_int_equal(json_array_size(json_object_get(j, "groups")), 0);
	assert_int_equal(json_array_size(json_object_get(j, "series")), 2);
	assert_int_equal(
	    json_integer_value(json_object_get(json_object_get(j, "latency_ms"), "p90")), 9000);
	assert_non_null(strstr(json_string_value(json_object_get(j, "opens_note")), "Apple"));
	json_decref(j);
	stats_result_free(&r);
}

static void test_stats_bounds(void **state)
{
	struct stats_result r;
	struct stats_query q = {.since = T0, .until = T0 + 10, .bucket = 60};
	assert_int_equal(stats_run(db, &q, &r), TERN_EINVAL);
	q = (struct stats_query){.since = T0 + 10, .until = T0, .bucket = 3600};
	assert_int_equal(stats_run(db, &q, &r), TERN_EINVAL);
	q = (struct stats_query){
	    .since = T0, .until = T0 + (int64_t)STATS_SERIES_MAX * 3600, .bucket = 3600};
	assert_int_equal(stats_run(db, &q, &r), TERN_EINVAL);
	/* the longest window the parser gives fits */
	const char *why;
	assert_int_equal(stats_query_parse("since=2400h&bucket=hour", 23, T0, &q, &why), TERN_OK);
	assert_int_equal(stats_run(db, &q, &r), TERN_OK);
	assert_int_equal(r.n_series, STATS_SERIES_MAX);
	stats_result_free(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_provider_names), cmocka_unit_test(test_stats_parse),
	    cmocka_unit_test(test_queue_parse),    cmocka_unit_test(test_stats_run),
	    cmocka_unit_test(test_stats_bounds),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
