/*
 * test_events.c — the event store (src/store/events.c) and webhook signing
 * and management (src/store/webhook.c): the Standard Webhooks example
 * signature, the retry schedule, event filters, emitted events stored and
 * queried with filters and a cursor, outbox rows only for endpoints whose
 * filter matches, a full queue that drops (counted) instead of blocking, and
 * later events inheriting their received event's key, tags and metadata the
 * same whether the writer's cache or the store answers, rows inserted in
 * groups with the writer's own ids, and a store of the older schema (an
 * index on time) migrated to minute spans with the same counts.
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
#include "store/stats.h"
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

/* The writer inserts rows in groups and gives their ids itself (and takes
 * events from chunks of its queue, one event larger than a chunk): ids follow
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
	/* larger than a chunk of the writer's queue (64 KiB) */
	static char huge[70000];
	memset(huge, 'h', sizeof(huge));
	memcpy(huge, "{\"h\":\"", 6);
	memcpy(huge + sizeof(huge) - 3, "\"}", 3);
	/* each received event right before its delivery: the two land in one
	 * group of rows (the writer's groups are 16) */
	for (int i = 0; i < 20; i++) {
		snprintf(qid, sizeof(qid), "G%d", i);
		snprintf(key, sizeof(key), "k%d", i);
		events_emit(&(struct tern_event){.type = EV_RECEIVED,
		                                 .queue_id = qid,
		                                 .key = key,
		                                 .metadata = i == 7   ? big
		                                             : i == 3 ? huge
		                                                      : NULL});
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
	assert_int_equal(count(db, "SELECT count(*) FROM events WHERE queue_id = 'G3' AND "
	                           "length(metadata) = 69999"),
	                 2);
	assert_int_equal(count(db, "SELECT count(*) FROM outbox o JOIN events e ON e.id = o.event "
	                           "AND e.queue_id = o.queue_id"),
	                 40);
	sqlite3_close(db);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* The writer binds a constant again only when the parameter held something
 * else: every row must still hold exactly its own values, empty, zero or
 * not, whatever the rows before it in the same place of a group held. */
static void rows_hold_exactly_their_values(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_events.XXXXXX", err[256], qid[16], s[16], sql[512];
	assert_non_null(mkdtemp(dir));
	struct events_opts o = {.retry_base = 3600, .timeout = 1};
	assert_int_equal(events_start(dir, &o), TERN_OK);
	static const enum tern_event_type types[] = {EV_QUEUED, EV_DELIVERED, EV_DEFERRED,
	                                             EV_BOUNCED, EV_OPENED};
	for (int i = 0; i < 70; i++) {
		snprintf(qid, sizeof(qid), "V%d", i);
		snprintf(s, sizeof(s), "s%d", i);
		bool full = i % 3 == 0 || i % 7 == 1;
		events_emit(&(struct tern_event){.type = types[i % 5],
		                                 .queue_id = qid,
		                                 .message_id = full ? s : NULL,
		                                 .sender = full ? s : "",
		                                 .recipient = full ? s : NULL,
		                                 .key = full ? s : NULL,
		                                 .tags = full ? s : NULL,
		                                 .metadata = full ? "{\"a\":1}" : NULL,
		                                 .reply = full ? s : NULL,
		                                 .status = full ? s : NULL,
		                                 .relay = full ? s : NULL,
		                                 .next_attempt = i % 2 ? 1000 + i : 0,
		                                 .hard = i % 4 == 0});
	}
	assert_true(events_flush(10000));
	events_stop();
	sqlite3 *db = events_db_open(dir, err, sizeof(err));
	assert_non_null(db);
	assert_int_equal(count(db, "SELECT count(*) FROM events"), 70);
	for (int i = 0; i < 70; i++) {
		bool full = i % 3 == 0 || i % 7 == 1;
		const char *v = full ? "'s' || substr(queue_id, 2)" : "''";
		snprintf(
		    sql, sizeof(sql),
		    "SELECT count(*) FROM events WHERE id = %d AND queue_id = 'V%d' AND type = "
		    "'%s' AND message_id = %s AND sender = %s AND recipient = %s AND key = %s AND "
		    "tags = %s AND metadata = '%s' AND reply = %s AND status = %s AND relay = %s "
		    "AND next_attempt = %d AND hard = %d",
		    i + 1, i, events_type_name(types[i % 5]), v, v, v, v, v,
		    full ? "{\"a\":1}" : "", v, v, v, i % 2 ? 1000 + i : 0, i % 4 == 0);
		assert_int_equal(count(db, sql), 1);
	}
	sqlite3_close(db);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

#define T0 1796515200LL /* 2026-12-06T00:00:00Z */

/* tern events tail: the cursor the last n matching events begin after. */
static void tail_begins_after_the_last_n(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_events.XXXXXX", err[256], qid[16];
	assert_non_null(mkdtemp(dir));
	struct events_opts o = {.retry_base = 3600, .timeout = 1};
	assert_int_equal(events_start(dir, &o), TERN_OK);
	/* ids 1..30: every third delivered (3, 6, ..., 30), the rest queued; from
	 * id 21 on an hour later */
	for (int i = 1; i <= 30; i++) {
		snprintf(qid, sizeof(qid), "T%d", i);
		events_emit(&(struct tern_event){.type = i % 3 ? EV_QUEUED : EV_DELIVERED,
		                                 .time = i > 20 ? T0 + 3600 : T0,
		                                 .queue_id = qid});
	}
	assert_true(events_flush(10000));
	events_stop();
	sqlite3 *db = events_db_open(dir, err, sizeof(err));
	assert_non_null(db);
	int64_t after = -1, last = 0;
	static struct collected c;
	/* the last 4 delivered: 21, 24, 27, 30 */
	assert_int_equal(
	    events_query_tail(db, &(struct events_query){.type = "delivered"}, 4, &after), TERN_OK);
	assert_int_equal(after, 20);
	memset(&c, 0, sizeof(c));
	assert_int_equal(
	    events_query_run(db, &(struct events_query){.type = "delivered", .after = after},
	                     collect, &c, &last),
	    4);
	assert_int_equal(c.ids[0], 21);
	/* more asked than there are: from the start */
	assert_int_equal(events_query_tail(db, &(struct events_query){.queue_id = "T5"}, 3, &after),
	                 TERN_OK);
	assert_int_equal(after, 0);
	/* with since: within the window only (ids 21..30), the last 2 of any type */
	assert_int_equal(events_query_tail(db, &(struct events_query){.since = T0 + 60}, 2, &after),
	                 TERN_OK);
	assert_int_equal(after, 28);
	assert_int_equal(
	    events_query_tail(db, &(struct events_query){.since = T0 + 60}, 100, &after), TERN_OK);
	assert_int_equal(after, 0);
	assert_int_equal(events_query_run(db,
	                                  &(struct events_query){.since = T0 + 60, .after = after},
	                                  collect, &c, &last),
	                 10);
	/* a window after the last event: nothing, and no error */
	assert_int_equal(
	    events_query_tail(db, &(struct events_query){.since = T0 + 9999}, 2, &after), TERN_OK);
	assert_int_equal(after, 0);
	assert_int_equal(events_query_tail(db, &(struct events_query){.type = "nope"}, 2, &after),
	                 TERN_EINVAL);
	sqlite3_close(db);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* The schema of an older tern (before events_span): an index on time. */
static const char old_schema[] =
    "PRAGMA journal_mode=WAL;"
    "CREATE TABLE meta(k TEXT PRIMARY KEY, v TEXT);"
    "CREATE TABLE events(id INTEGER PRIMARY KEY, time INTEGER NOT NULL,"
    " type TEXT NOT NULL, queue_id TEXT, message_id TEXT, sender TEXT, recipient TEXT,"
    " key TEXT, tags TEXT, metadata TEXT, reply TEXT, status TEXT, relay TEXT,"
    " next_attempt INTEGER, hard INTEGER);"
    "CREATE INDEX events_time ON events(time);"
    "CREATE INDEX events_qid ON events(queue_id);"
    "CREATE TABLE webhooks(id INTEGER PRIMARY KEY, url TEXT NOT NULL,"
    " secret TEXT NOT NULL, events TEXT NOT NULL DEFAULT '', key TEXT NOT NULL DEFAULT '',"
    " enabled INTEGER NOT NULL DEFAULT 1, status TEXT NOT NULL DEFAULT 'active',"
    " failing_since INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL);"
    "CREATE TABLE outbox(id INTEGER PRIMARY KEY, endpoint INTEGER NOT NULL,"
    " event INTEGER NOT NULL, queue_id TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " next_try INTEGER NOT NULL DEFAULT 0, done INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX outbox_pending ON outbox(done, endpoint, queue_id, id);"
    "CREATE TABLE attempts(id INTEGER PRIMARY KEY, endpoint INTEGER NOT NULL,"
    " event INTEGER NOT NULL, time INTEGER NOT NULL, http_status INTEGER NOT NULL,"
    " error TEXT NOT NULL DEFAULT '');"
    "INSERT INTO meta(k, v) VALUES('node', 'abcdef012345');";

static void insert_old(sqlite3 *db, int64_t t, const char *type, const char *qid)
{
	char sql[256];
	snprintf(sql, sizeof(sql),
	         "INSERT INTO events(time, type, queue_id, recipient, status, reply) "
	         "VALUES(%lld, '%s', '%s', 'r@x.test', '5.1.1', 'no')",
	         (long long)t, type, qid);
	assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
}

/* stats_run's totals over [a, b] equal a count of the rows themselves, and
 * events_id_range holds every event of the window. */
static void window_counts_match(sqlite3 *db, int64_t a, int64_t b)
{
	static const char *const types[] = {"queued", "delivered", "deferred", "bounced"};
	static const int counters[] = {ST_SENT, ST_DELIVERED, ST_DEFERRED, ST_BOUNCED};
	char sql[256];
	struct stats_result r;
	int64_t lo, hi;
	assert_int_equal(events_id_range(db, a, b, &lo, &hi), TERN_OK);
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM events WHERE time BETWEEN %lld AND %lld AND "
	         "(id < %lld OR id > %lld)",
	         (long long)a, (long long)b, (long long)lo, (long long)hi);
	assert_int_equal(count(db, sql), 0);
	assert_int_equal(
	    stats_run(db, &(struct stats_query){.since = a, .until = b, .bucket = 3600}, &r),
	    TERN_OK);
	for (int i = 0; i < 4; i++) {
		snprintf(
		    sql, sizeof(sql),
		    "SELECT count(*) FROM events WHERE time BETWEEN %lld AND %lld AND type = '%s'",
		    (long long)a, (long long)b, types[i]);
		assert_int_equal((int)r.totals.n[counters[i]], count(db, sql));
	}
	snprintf(
	    sql, sizeof(sql),
	    "SELECT count(*) FROM events WHERE time BETWEEN %lld AND %lld AND type = 'bounced'",
	    (long long)a, (long long)b);
	uint64_t reasons = 0;
	for (size_t i = 0; i < r.n_reasons; i++)
		reasons += r.reasons[i].count;
	assert_int_equal((int)reasons, count(db, sql));
	stats_result_free(&r);
	/* the API's since: every event from a on, in id order, none other */
	static struct collected c;
	int64_t last = 0;
	memset(&c, 0, sizeof(c));
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM events WHERE time >= %lld", (long long)a);
	assert_int_equal(events_query_run(db, &(struct events_query){.since = a, .limit = 1000},
	                                  collect, &c, &last),
	                 count(db, sql));
	snprintf(sql, sizeof(sql), "SELECT min(id) FROM events WHERE time >= %lld", (long long)a);
	if (c.n)
		assert_int_equal(c.ids[0], count(db, sql));
}

/* A store written by an older tern (an index on time, no spans, a full
 * index by queue id) is migrated when opened: the index on time goes, the
 * one by queue id keeps receipts only (latency still found), every old row
 * gets its minute's span, and counts over any window stay those of the
 * rows, also for times out of order, for new events, and for rows the spans
 * do not cover (written by hand since); retention deletes exactly the old
 * rows. */
static void old_store_is_migrated_and_counted_the_same(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_events.XXXXXX", path[64], err[256], qid[16];
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/events.db", dir);
	sqlite3 *old = NULL;
	assert_int_equal(sqlite3_open(path, &old), SQLITE_OK);
	assert_int_equal(sqlite3_exec(old, old_schema, NULL, NULL, NULL), SQLITE_OK);
	static const char *const types[] = {"queued", "delivered", "bounced", "deferred"};
	for (int i = 0; i < 600; i++) {
		snprintf(qid, sizeof(qid), "O%d", i);
		/* mostly rising, every 50th an hour late and every 70th 10 min early */
		int64_t t = T0 + i * 7;
		if (i % 50 == 0)
			t += 3600;
		if (i % 70 == 0)
			t -= 600;
		insert_old(old, t, types[i % 4], qid);
	}
	/* a message with its receipt: 5 s from queued to delivered */
	insert_old(old, T0 + 10, "received", "P1");
	insert_old(old, T0 + 10, "queued", "P1");
	insert_old(old, T0 + 15, "delivered", "P1");
	sqlite3_close(old);
	/* the writer opens it: the migration; then new events, one out of order */
	struct events_opts o = {.retry_base = 3600, .timeout = 1};
	assert_int_equal(events_start(dir, &o), TERN_OK);
	events_emit(&(struct tern_event){.type = EV_DELIVERED, .time = T0 + 100, .queue_id = "N1"});
	events_emit(&(struct tern_event){.type = EV_BOUNCED, .time = T0 + 5000, .queue_id = "N2"});
	events_emit(&(struct tern_event){.type = EV_QUEUED, .time = T0 + 90, .queue_id = "N3"});
	assert_true(events_flush(10000));
	events_stop();
	sqlite3 *db = events_db_open(dir, err, sizeof(err));
	assert_non_null(db);
	assert_int_equal(count(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'events_time'"),
	                 0);
	/* the full index by queue id became one of receipts only */
	assert_int_equal(count(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'events_qid'"),
	                 0);
	assert_int_equal(
	    count(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'events_receipt'"), 1);
	assert_int_equal(count(db, "SELECT count(*) FROM events"), 606);
	assert_int_equal(count(db, "SELECT count(*) FROM events_span WHERE lo > hi"), 0);
	assert_int_equal(count(db, "SELECT CAST(v AS INTEGER) FROM meta WHERE k = 'span_id'"), 606);
	struct stats_result r;
	assert_int_equal(
	    stats_run(db, &(struct stats_query){.since = T0, .until = T0 + 59, .bucket = 3600}, &r),
	    TERN_OK);
	assert_int_equal(r.latency.count, 1);
	assert_int_equal(r.latency.p50, 5000);
	stats_result_free(&r);
	static const int64_t win[][2] = {{T0, T0 + 59},          {T0 + 60, T0 + 119},
	                                 {T0 + 61, T0 + 3000},   {T0 + 3000, T0 + 7300},
	                                 {T0 - 600, T0 + 9000},  {T0 + 90, T0 + 100},
	                                 {T0 + 4999, T0 + 5000}, {T0 + 9000, T0 + 9999}};
	for (size_t i = 0; i < sizeof(win) / sizeof(win[0]); i++)
		window_counts_match(db, win[i][0], win[i][1]);
	/* a row no span covers yet (an older tern wrote it after the writer) */
	insert_old(db, T0 + 30, "delivered", "H1");
	for (size_t i = 0; i < sizeof(win) / sizeof(win[0]); i++)
		window_counts_match(db, win[i][0], win[i][1]);
	/* retention: exactly the rows older than the cut, in chunks */
	int before = count(db, "SELECT count(*) FROM events WHERE time < 1796515800");
	assert_true(before > 0);
	int deleted = 0, n;
	while ((n = events_prune(db, T0 + 600, 50)) > 0)
		deleted += n;
	assert_int_equal(n, 0);
	assert_int_equal(deleted, before);
	assert_int_equal(count(db, "SELECT count(*) FROM events WHERE time < 1796515800"), 0);
	assert_int_equal(count(db, "SELECT count(*) FROM events_span WHERE hi < (SELECT min(id) "
	                           "FROM events)"),
	                 0);
	window_counts_match(db, T0 - 600, T0 + 9999);
	/* the writer opens it again: a row written by hand gets its span */
	insert_old(db, T0 + 20000, "delivered", "H2");
	int top = count(db, "SELECT max(id) FROM events");
	assert_int_equal(count(db, "SELECT count(*) FROM events_span WHERE minute = 29942253"), 0);
	assert_int_equal(events_start(dir, &o), TERN_OK);
	events_stop();
	assert_int_equal(count(db, "SELECT CAST(v AS INTEGER) FROM meta WHERE k = 'span_id'"), top);
	char sql[160];
	snprintf(
	    sql, sizeof(sql),
	    "SELECT count(*) FROM events_span WHERE minute = 29942253 AND lo <= %d AND hi >= %d",
	    top, top);
	assert_int_equal(count(db, sql), 1);
	window_counts_match(db, T0 + 600, T0 + 29999);
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
	    cmocka_unit_test(rows_hold_exactly_their_values),
	    cmocka_unit_test(tail_begins_after_the_last_n),
	    cmocka_unit_test(old_store_is_migrated_and_counted_the_same),
	    cmocka_unit_test(prune_keeps_what_the_outbox_needs),
	    cmocka_unit_test(webhooks_config_is_read),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
