/*
 * test_events.c — the event store (src/store/events.c) and webhook signing
 * and management (src/store/webhook.c): the Standard Webhooks example
 * signature, the retry schedule, event filters, emitted events stored and
 * queried with filters and a cursor, outbox rows only for endpoints whose
 * filter matches, a full queue that drops (counted) instead of blocking, and
 * later events inheriting their received event's key, tags and metadata the
 * same whether the writer's cache or the store answers.
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

#include "core/conf.h"
#include "core/err.h"
#include "store/events.h"
#include "store/webhook.h"

/* The example of the Standard Webhooks specification (see
 * tests/data/events/SOURCE.md). */
static void signature_matches_the_spec_example(void **state)
{
	(void)state;
	char sig[128];
	const char *body = "{\"test\": 2432232314}";
	assert_int_equal(webhook_sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
	                              "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body,
	                              strlen(body), sig, sizeof(sig)),
	                 TERN_OK);
	assert_string_equal(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
	/* One byte of the body changed: another signature. */
	assert_int_equal(webhook_sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
	                              "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
	                              "{\"test\": 2432232315}", strlen(body), sig, sizeof(sig)),
	                 TERN_OK);
	assert_string_not_equal(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
	/* Not whsec_: refused, never signed with a wrong key. */
	assert_int_equal(
	    webhook_sign("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "x", 1, "", 0, sig, sizeof(sig)),
	    TERN_EINVAL);
	assert_int_equal(webhook_sign("whsec_", "x", 1, "", 0, sig, sizeof(sig)), TERN_EINVAL);
}

static void new_secrets_sign_and_differ(void **state)
{
	(void)state;
	char a[64], b[64], sig[128];
	assert_int_equal(webhook_secret_new(a, sizeof(a)), TERN_OK);
	assert_int_equal(webhook_secret_new(b, sizeof(b)), TERN_OK);
	assert_memory_equal(a, "whsec_", 6);
	assert_int_equal(strlen(a), 6 + 32);
	assert_string_not_equal(a, b);
	assert_int_equal(webhook_sign(a, "evt_1", 5, "{}", 2, sig, sizeof(sig)), TERN_OK);
}

static void backoff_grows_and_is_capped(void **state)
{
	(void)state;
	assert_int_equal(webhook_backoff(5, 3600, 1), 5);
	assert_int_equal(webhook_backoff(5, 3600, 2), 30);
	assert_int_equal(webhook_backoff(5, 3600, 3), 120);
	assert_int_equal(webhook_backoff(5, 3600, 4), 600);
	assert_int_equal(webhook_backoff(5, 3600, 5), 1800);
	assert_int_equal(webhook_backoff(5, 3600, 6), 3600);
	assert_int_equal(webhook_backoff(5, 3600, 60), 3600);
	assert_int_equal(webhook_backoff(1, 2, 5), 2);
}

static void filters_name_types(void **state)
{
	(void)state;
	char bad[64];
	unsigned f = webhook_filter_parse("delivered, bounced");
	assert_int_equal(f, (1u << EV_DELIVERED) | (1u << EV_BOUNCED));
	assert_int_equal(webhook_filter_parse(""), (1u << EV__COUNT) - 1);
	assert_int_equal(webhook_filter_parse("message.opened"), 1u << EV_OPENED);
	assert_int_equal(webhook_filter_check("delivered,bounced", bad, sizeof(bad)), TERN_OK);
	assert_int_equal(webhook_filter_check("delivered,bouncd", bad, sizeof(bad)), TERN_EINVAL);
	assert_string_equal(bad, "bouncd");
	assert_int_equal(events_type_parse("unsubscribed"), EV_UNSUBSCRIBED);
	assert_int_equal(events_type_parse("nope"), -1);
}

static void times_parse(void **state)
{
	(void)state;
	assert_int_equal(events_parse_time("2026-12-06T07:00:00Z", 0), 1796540400);
	assert_int_equal(events_parse_time("1765000000", 0), 1765000000);
	assert_int_equal(events_parse_time("10min", 10000), 10000 - 600);
	assert_int_equal(events_parse_time("2h", 10000), 10000 - 7200);
	assert_int_equal(events_parse_time("yesterday", 10000), -1);
	/* an age past the epoch (the fuzzer's 21113111111111111h overflowed) is "all" */
	assert_int_equal(events_parse_time("21113111111111111h", 10000), 0);
	assert_int_equal(events_parse_time("3h", 10000), 0);
	assert_int_equal(events_parse_time("", 10000), -1);
}

struct collected {
	char json[16][2048];
	int64_t ids[16];
	size_t n;
};

static void collect(void *arg, int64_t id, const char *json)
{
	struct collected *c = arg;
	if (c->n < 16) {
		snprintf(c->json[c->n], sizeof(c->json[0]), "%s", json);
		c->ids[c->n++] = id;
	}
}

static int count(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st = NULL;
	int n = -1;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		n = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return n;
}

static void emitted_events_are_stored_and_queried(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_events.XXXXXX", err[256], secret[64];
	assert_non_null(mkdtemp(dir));
	sqlite3 *db = events_db_open(dir, err, sizeof(err));
	assert_non_null(db);
	int64_t id_b = 0, id_all = 0;
	/* Port 1 refuses: the sender's attempts fail, rows stay pending. */
	assert_int_equal(
	    webhook_add(db, "http://127.0.0.1:1/", "bounced", NULL, &id_b, secret, sizeof(secret)),
	    TERN_OK);
	assert_int_equal(
	    webhook_add(db, "http://127.0.0.1:1/", "", NULL, &id_all, secret, sizeof(secret)),
	    TERN_OK);

	struct events_opts o = {
	    .retry_base = 3600, .retry_max = 3600, .retry_window = 86400, .timeout = 2};
	assert_false(events_enabled());
	assert_false(events_emit(&(struct tern_event){.type = EV_QUEUED})); /* not started */
	assert_int_equal(events_start(dir, &o), TERN_OK);
	assert_true(events_enabled());
	assert_true(events_emit(&(struct tern_event){
	    .type = EV_QUEUED, .queue_id = "Q1", .recipient = "a@x.test", .tags = "news,weekly"}));
	assert_true(events_emit(&(struct tern_event){.type = EV_DELIVERED,
	                                             .queue_id = "Q1",
	                                             .recipient = "A@X.test",
	                                             .reply = "250 2.0.0 ok thanks",
	                                             .metadata = "{\"user\":7}"}));
	assert_true(events_emit(&(struct tern_event){.type = EV_DEFERRED,
	                                             .queue_id = "Q2",
	                                             .recipient = "b@y.test",
	                                             .reply = "451 4.3.0 later",
	                                             .status = "4.3.0",
	                                             .next_attempt = 1796540400}));
	assert_true(events_emit(&(struct tern_event){.type = EV_BOUNCED,
	                                             .queue_id = "Q2",
	                                             .recipient = "c@y.test",
	                                             .status = "5.1.1",
	                                             .reply = "550 5.1.1 no",
	                                             .hard = true}));
	assert_true(events_flush(10000));
	events_stop();
	assert_false(events_enabled());

	struct collected c = {0};
	int64_t last = 0;
	/* By recipient, case-insensitively. */
	assert_int_equal(events_query_run(db, &(struct events_query){.recipient = "a@x.test"},
	                                  collect, &c, &last),
	                 2);
	assert_non_null(strstr(c.json[0], "\"type\":\"queued\""));
	assert_non_null(strstr(c.json[0], "\"tags\":[\"news\",\"weekly\"]"));
	assert_non_null(strstr(c.json[1], "\"reply\":\"250 2.0.0 ok thanks\""));
	assert_non_null(strstr(c.json[1], "\"metadata\":{\"user\":7}"));
	/* By type, with the deferral's next attempt and the bounce's kind. */
	memset(&c, 0, sizeof(c));
	assert_int_equal(
	    events_query_run(db, &(struct events_query){.type = "deferred"}, collect, &c, &last),
	    1);
	assert_non_null(strstr(c.json[0], "\"next_attempt\":\"2026-12-06T07:00:00Z\""));
	memset(&c, 0, sizeof(c));
	assert_int_equal(events_query_run(db, &(struct events_query){.type = "message.bounced"},
	                                  collect, &c, &last),
	                 1);
	assert_non_null(strstr(c.json[0], "\"status\":\"5.1.1\""));
	assert_non_null(strstr(c.json[0], "\"bounce\":\"hard\""));
	/* By tag: a whole tag only. */
	memset(&c, 0, sizeof(c));
	assert_int_equal(
	    events_query_run(db, &(struct events_query){.tag = "weekly"}, collect, &c, &last), 1);
	assert_int_equal(
	    events_query_run(db, &(struct events_query){.tag = "week"}, collect, &c, &last), 0);
	/* A cursor: two pages of two, then none. */
	memset(&c, 0, sizeof(c));
	assert_int_equal(
	    events_query_run(db, &(struct events_query){.limit = 2}, collect, &c, &last), 2);
	assert_int_equal(last, c.ids[1]);
	assert_int_equal(events_query_run(db, &(struct events_query){.limit = 2, .after = last},
	                                  collect, &c, &last),
	                 2);
	assert_int_equal(events_query_run(db, &(struct events_query){.limit = 2, .after = last},
	                                  collect, &c, &last),
	                 0);
	assert_int_equal(
	    events_query_run(db, &(struct events_query){.type = "nope"}, collect, &c, &last),
	    TERN_EINVAL);
	/* The outbox: one row for the bounced-only endpoint, four for the other. */
	char sql[128];
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM outbox WHERE endpoint = %lld",
	         (long long)id_b);
	assert_int_equal(count(db, sql), 1);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM outbox WHERE endpoint = %lld",
	         (long long)id_all);
	assert_int_equal(count(db, sql), 4);
	assert_int_equal(count(db, "SELECT count(*) FROM outbox WHERE done = 1"), 0);
	/* Deleting an endpoint takes its pending rows. */
	assert_int_equal(webhook_del(db, id_all), TERN_OK);
	assert_int_equal(webhook_del(db, id_all), TERN_ENOTFOUND);
	assert_int_equal(count(db, "SELECT count(*) FROM outbox"), 1);
	assert_int_equal(webhook_enable(db, id_b), TERN_OK);
	sqlite3_close(db);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* The writer is stuck behind another connection's write lock: emitters
 * drop (counted) and return at once rather than wait. */
static void full_queue_drops_instead_of_blocking(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_events.XXXXXX", err[256];
	assert_non_null(mkdtemp(dir));
	sqlite3 *db = events_db_open(dir, err, sizeof(err));
	assert_non_null(db);
	struct events_opts o = {.retry_base = 1, .queue_max = 4};
	assert_int_equal(events_start(dir, &o), TERN_OK);
	assert_int_equal(sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
	uint64_t before = events_dropped();
	size_t ok = 0;
	for (int i = 0; i < 40; i++)
		ok += events_emit(&(struct tern_event){.type = EV_QUEUED, .queue_id = "Q"});
	/* At most one batch in the writer's hands and four queued. */
	assert_true(ok <= 8);
	assert_true(events_dropped() - before >= 32);
	assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	assert_true(events_flush(20000));
	events_stop();
	assert_int_equal(count(db, "SELECT count(*) FROM events"), (int)ok);
	sqlite3_close(db);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* Later events of a message inherit its received event's key, tags and
 * metadata; an endpoint with a key gets only that key's events. */
static void outcomes_inherit_key_and_tags(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_events.XXXXXX", err[256], secret[64];
	assert_non_null(mkdtemp(dir));
	sqlite3 *db = events_db_open(dir, err, sizeof(err));
	assert_non_null(db);
	int64_t ep = 0;
	assert_int_equal(
	    webhook_add(db, "http://127.0.0.1:1/", "", "alice", &ep, secret, sizeof(secret)),
	    TERN_OK);
	struct events_opts o = {.retry_base = 3600, .timeout = 1};
	assert_int_equal(events_start(dir, &o), TERN_OK);
	events_emit(&(struct tern_event){.type = EV_RECEIVED,
	                                 .queue_id = "QA",
	                                 .key = "alice",
	                                 .tags = "welcome",
	                                 .metadata = "{\"n\":1}"});
	events_emit(&(struct tern_event){.type = EV_RECEIVED, .queue_id = "QB", .key = "bob"});
	assert_true(events_flush(10000));
	events_emit(
	    &(struct tern_event){.type = EV_DELIVERED, .queue_id = "QA", .recipient = "x@y.test"});
	events_emit(
	    &(struct tern_event){.type = EV_DELIVERED, .queue_id = "QB", .recipient = "x@y.test"});
	assert_true(events_flush(10000));
	events_stop();
	struct collected c = {0};
	int64_t last = 0;
	assert_int_equal(
	    events_query_run(db, &(struct events_query){.type = "delivered"}, collect, &c, &last),
	    2);
	assert_non_null(strstr(c.json[0], "\"key\":\"alice\""));
	assert_non_null(strstr(c.json[0], "\"tags\":[\"welcome\"]"));
	assert_non_null(strstr(c.json[0], "\"metadata\":{\"n\":1}"));
	assert_non_null(strstr(c.json[1], "\"key\":\"bob\""));
	/* alice's endpoint: her received and delivered, none of bob's */
	assert_int_equal(count(db, "SELECT count(*) FROM outbox"), 2);
	assert_int_equal(count(db, "SELECT count(*) FROM outbox WHERE queue_id = 'QA'"), 2);
	sqlite3_close(db);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* The writer remembers recent received events to save a lookup per later
 * event; the result must be the lookup's in every case: the first received
 * event of a queue id wins, one evicted from the cache (thousands of messages
 * since) or written before a restart is still found in the store. */
static void inheritance_is_the_same_from_cache_or_store(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_events.XXXXXX", err[256], qid[32];
	assert_non_null(mkdtemp(dir));
	struct events_opts o = {.retry_base = 3600, .timeout = 1, .queue_max = 20000};
	assert_int_equal(events_start(dir, &o), TERN_OK);
	events_emit(&(struct tern_event){.type = EV_RECEIVED, .queue_id = "QC", .key = "carol"});
	events_emit(&(struct tern_event){.type = EV_RECEIVED, .queue_id = "QC", .key = "dave"});
	events_emit(&(struct tern_event){.type = EV_RECEIVED, .queue_id = "QE", .tags = "old"});
	for (int i = 0; i < 10000; i++) {
		snprintf(qid, sizeof(qid), "F%d", i);
		events_emit(&(struct tern_event){.type = EV_RECEIVED, .queue_id = qid, .key = qid});
	}
	/* too large for the cache: the store answers, also after a second
	 * received event of the queue id that would fit */
	char big[3000];
	memset(big, 'm', sizeof(big));
	memcpy(big, "{\"m\":\"", 6);
	memcpy(big + sizeof(big) - 3, "\"}", 3);
	events_emit(&(struct tern_event){.type = EV_RECEIVED, .queue_id = "QG", .metadata = big});
	events_emit(&(struct tern_event){.type = EV_RECEIVED, .queue_id = "QG", .key = "later"});
	/* recent: the cache answers, the first received event winning */
	events_emit(&(struct tern_event){.type = EV_RECEIVED, .queue_id = "QH", .key = "carol"});
	events_emit(&(struct tern_event){.type = EV_RECEIVED, .queue_id = "QH", .key = "dave"});
	assert_true(events_flush(20000));
	events_emit(&(struct tern_event){.type = EV_DELIVERED, .queue_id = "QC"});
	events_emit(&(struct tern_event){.type = EV_DELIVERED, .queue_id = "QE"});
	events_emit(&(struct tern_event){.type = EV_DELIVERED, .queue_id = "F9999"});
	events_emit(&(struct tern_event){.type = EV_DELIVERED, .queue_id = "F0"});
	events_emit(&(struct tern_event){.type = EV_DELIVERED, .queue_id = "QG"});
	events_emit(&(struct tern_event){.type = EV_DELIVERED, .queue_id = "QH"});
	assert_true(events_flush(20000));
	events_stop();
	/* After a restart the cache is empty: the store answers. */
	assert_int_equal(events_start(dir, &o), TERN_OK);
	events_emit(&(struct tern_event){.type = EV_BOUNCED, .queue_id = "F9999"});
	assert_true(events_flush(20000));
	events_stop();
	sqlite3 *db = events_db_open(dir, err, sizeof(err));
	assert_non_null(db);
	assert_int_equal(count(db, "SELECT count(*) FROM events WHERE type = 'delivered' AND "
	                           "queue_id = 'QC' AND key = 'carol'"),
	                 1);
	assert_int_equal(count(db, "SELECT count(*) FROM events WHERE type = 'delivered' AND "
	                           "queue_id = 'QH' AND key = 'carol'"),
	                 1);
	assert_int_equal(count(db, "SELECT count(*) FROM events WHERE type = 'delivered' AND "
	                           "queue_id = 'QE' AND tags = 'old' AND key = ''"),
	                 1);
	assert_int_equal(count(db, "SELECT count(*) FROM events WHERE type = 'delivered' AND "
	                           "queue_id = 'F9999' AND key = 'F9999'"),
	                 1);
	assert_int_equal(count(db, "SELECT count(*) FROM events WHERE type = 'delivered' AND "
	                           "queue_id = 'F0' AND key = 'F0'"),
	                 1);
	assert_int_equal(count(db, "SELECT count(*) FROM events WHERE type = 'delivered' AND "
	                           "queue_id = 'QG' AND length(metadata) = 2999 AND key = ''"),
	                 1);
	assert_int_equal(count(db, "SELECT count(*) FROM events WHERE type = 'bounced' AND "
	                           "queue_id = 'F9999' AND key = 'F9999'"),
	                 1);
	sqlite3_close(db);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* The writer inserts rows in groups and gives their ids itself: ids follow
 * the emit order, every outbox row names its event, and a later event in the
 * same batch inherits from a received event of that batch, also when only
 * the store can answer (an origin too large for the writer's cache). */
static void grouped_rows_keep_order_ids_and_inheritance(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_events.XXXXXX", err[256], secret[64], qid[16], key[16];
	assert_non_null(mkdtemp(dir));
	sqlite3 *db = events_db_open(dir, err, sizeof(err));
	assert_non_null(db);
	int64_t ep = 0;
	assert_int_equal(
	    webhook_add(db, "http://127.0.0.1:1/", "", NULL, &ep, secret, sizeof(secret)), TERN_OK);
	struct events_opts o = {.retry_base = 3600, .timeout = 1};
	assert_int_equal(events_start(dir, &o), TERN_OK);
	char big[3000];
	memset(big, 'm', sizeof(big));
	memcpy(big, "{\"m\":\"", 6);
	memcpy(big + sizeof(big) - 3, "\"}", 3);
	/* each received event right before its delivery: the two land in one
	 * group of rows (the writer's groups are 16) */
	for (int i = 0; i < 20; i++) {
		snprintf(qid, sizeof(qid), "G%d", i);
		snprintf(key, sizeof(key), "k%d", i);
		events_emit(&(struct tern_event){.type = EV_RECEIVED,
		                                 .queue_id = qid,
		                                 .key = key,
		                                 .metadata = i == 7 ? big : NULL});
		events_emit(&(struct tern_event){
		    .type = EV_DELIVERED, .queue_id = qid, .recipient = "x@y.test"});
	}
	assert_true(events_flush(20000));
	events_stop();
	assert_int_equal(count(db, "SELECT count(*) FROM events"), 40);
	assert_int_equal(
	    count(db, "SELECT count(*) FROM events WHERE type = 'received' AND "
	              "id = 1 + 2 * substr(queue_id, 2) AND key = 'k' || substr(queue_id, 2)"),
	    20);
	assert_int_equal(
	    count(db, "SELECT count(*) FROM events WHERE type = 'delivered' AND "
	              "id = 2 + 2 * substr(queue_id, 2) AND key = 'k' || substr(queue_id, 2)"),
	    20);
	assert_int_equal(count(db, "SELECT count(*) FROM events WHERE type = 'delivered' AND "
	                           "queue_id = 'G7' AND length(metadata) = 2999"),
	                 1);
	assert_int_equal(count(db, "SELECT count(*) FROM outbox o JOIN events e ON e.id = o.event "
	                           "AND e.queue_id = o.queue_id"),
	                 40);
	sqlite3_close(db);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* Retention deletes old events, but never one a pending outbox row needs. */
static void prune_keeps_what_the_outbox_needs(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_events.XXXXXX", err[256], secret[64];
	assert_non_null(mkdtemp(dir));
	sqlite3 *db = events_db_open(dir, err, sizeof(err));
	assert_non_null(db);
	int64_t ep = 0;
	assert_int_equal(
	    webhook_add(db, "http://127.0.0.1:1/", "bounced", NULL, &ep, secret, sizeof(secret)),
	    TERN_OK);
	struct events_opts o = {.retry_base = 3600, .timeout = 1};
	assert_int_equal(events_start(dir, &o), TERN_OK);
	for (int i = 0; i < 7; i++)
		events_emit(&(struct tern_event){
		    .type = EV_DELIVERED, .time = 1000 + i, .queue_id = "OLD"});
	events_emit(&(struct tern_event){.type = EV_BOUNCED, .time = 1000, .queue_id = "OLDB"});
	events_emit(&(struct tern_event){.type = EV_DELIVERED, .queue_id = "NEW"});
	assert_true(events_flush(10000));
	events_stop();
	assert_int_equal(events_prune(db, 2000, 5), 5); /* in chunks */
	assert_int_equal(events_prune(db, 2000, 5), 2);
	assert_int_equal(events_prune(db, 2000, 5), 0);
	/* the pending bounce and the new event stay */
	assert_int_equal(count(db, "SELECT count(*) FROM events"), 2);
	assert_int_equal(count(db, "SELECT count(*) FROM events WHERE queue_id = 'OLDB'"), 1);
	/* once posted, it goes too */
	assert_int_equal(sqlite3_exec(db, "UPDATE outbox SET done = 1", NULL, NULL, NULL),
	                 SQLITE_OK);
	assert_int_equal(events_prune(db, 2000, 5), 1);
	assert_int_equal(count(db, "SELECT count(*) FROM outbox"), 0);
	assert_int_equal(count(db, "SELECT count(*) FROM events WHERE queue_id = 'NEW'"), 1);
	sqlite3_close(db);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

static void webhooks_config_is_read(void **state)
{
	(void)state;
	char err[512];
	struct tern_config *c = conf_load_string("", 0, "t", err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->webhooks.retry_base, 5);
	assert_int_equal(c->webhooks.retry_max, 3600);
	assert_int_equal(c->webhooks.retry_window, 86400);
	assert_int_equal(c->webhooks.timeout, 10);
	assert_int_equal(c->events.retention, 30 * 86400);
	conf_unref(c);
	const char *t = "webhooks { retry_base = 2s; retry_max = 1min; retry_window = 1h; "
	                "timeout = 3s; }";
	c = conf_load_string(t, strlen(t), "t", err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->webhooks.retry_base, 2);
	assert_int_equal(c->webhooks.retry_max, 60);
	assert_int_equal(c->webhooks.retry_window, 3600);
	assert_int_equal(c->webhooks.timeout, 3);
	conf_unref(c);
	t = "events { retention = 0; }";
	c = conf_load_string(t, strlen(t), "t", err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->events.retention, 0);
	conf_unref(c);
	t = "webhooks { retry_bse = 2s; }";
	assert_null(conf_load_string(t, strlen(t), "t", err, sizeof(err)));
	assert_non_null(strstr(err, "retry_bse"));
	t = "webhooks { retry_base = 0s; }";
	assert_null(conf_load_string(t, strlen(t), "t", err, sizeof(err)));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(signature_matches_the_spec_example),
	    cmocka_unit_test(new_secrets_sign_and_differ),
	    cmocka_unit_test(backoff_grows_and_is_capped),
	    cmocka_unit_test(filters_name_types),
	    cmocka_unit_test(times_parse),
	    cmocka_unit_test(emitted_events_are_stored_and_queried),
	    cmocka_unit_test(full_queue_drops_instead_of_blocking),
	    cmocka_unit_test(outcomes_inherit_key_and_tags),
	    cmocka_unit_test(inheritance_is_the_same_from_cache_or_store),
	    cmocka_unit_test(grouped_rows_keep_order_ids_and_inheritance),
	    cmocka_unit_test(prune_keeps_what_the_outbox_needs),
	    cmocka_unit_test(webhooks_config_is_read),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
