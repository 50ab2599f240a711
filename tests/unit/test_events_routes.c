/*
 * test_events_routes.c — the HTTP API's event routes (src/http/events_routes.c)
 * over a real store: filters from the query string (percent-decoded), cursor
 * paging that ends, 400 on bad parameters, webhooks listed without their
 * secrets, attempts of an endpoint and 404 for an unknown one.
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
#include <jansson.h>

#include "core/err.h"
#include "http/events_routes.h"
#include "store/events.h"
#include "store/webhook.h"

static char dir[] = "/tmp/test_events_routes.XXXXXX";
static sqlite3 *db;
static char secret[64];
static int64_t ep;

static int setup(void **state)
{
	char err[256];
	if (!mkdtemp(dir) || !(db = events_db_open(dir, err, sizeof(err))))
		return -1;
	if (webhook_add(db, "http://127.0.0.1:1/h", "bounced", NULL, &ep, secret, sizeof(secret)) !=
	    TERN_OK)
		return -1;
	struct events_opts o = {.retry_base = 3600, .timeout = 1};
	if (events_start(dir, &o) != TERN_OK)
		return -1;
	for (int i = 0; i < 5; i++) {
		char q[16];
		snprintf(q, sizeof(q), "Q%d", i);
		events_emit(&(struct tern_event){
		    .type = EV_DELIVERED, .queue_id = q, .recipient = "a+b@x.test", .tags = "t1"});
	}
	events_emit(&(struct tern_event){
	    .type = EV_BOUNCED, .queue_id = "Q9", .recipient = "c@x.test", .status = "5.1.1"});
	events_flush(10000);
	/* One attempt recorded: the sender's first try at port 1 fails. */
	for (int i = 0; i < 100; i++) {
		sqlite3_stmt *st = NULL;
		int n = 0;
		if (sqlite3_prepare_v2(db, "SELECT count(*) FROM attempts", -1, &st, NULL) ==
		        SQLITE_OK &&
		    sqlite3_step(st) == SQLITE_ROW)
			n = sqlite3_column_int(st, 0);
		sqlite3_finalize(st);
		if (n > 0)
			break;
		usleep(100000);
	}
	events_stop();
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];
	sqlite3_close(db);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static json_t *get(const char *qs, int want)
{
	char *body = NULL;
	int st = events_route_list(db, qs, strlen(qs), NULL, &body);
	assert_non_null(body);
	assert_int_equal(st, want);
	json_t *j = json_loads(body, 0, NULL);
	free(body);
	assert_non_null(j);
	return j;
}

static void filters_from_the_query_string(void **state)
{
	(void)state;
	json_t *j = get("recipient=a%2Bb%40x.test&type=delivered", 200);
	assert_int_equal(json_array_size(json_object_get(j, "events")), 5);
	json_decref(j);
	j = get("type=message.bounced", 200);
	json_t *a = json_object_get(j, "events");
	assert_int_equal(json_array_size(a), 1);
	assert_string_equal(json_string_value(json_object_get(json_array_get(a, 0), "status")),
	                    "5.1.1");
	json_decref(j);
	j = get("tag=t1&since=2000-01-01T00:00:00Z", 200);
	assert_int_equal(json_array_size(json_object_get(j, "events")), 5);
	json_decref(j);
	j = get("since=4102444800", 200); /* 2100 */
	assert_int_equal(json_array_size(json_object_get(j, "events")), 0);
	json_decref(j);
}

static void a_key_sees_its_own_events(void **state)
{
	(void)state;
	char *body = NULL;
	assert_int_equal(events_route_list(db, "", 0, "another-key", &body), 200);
	assert_non_null(strstr(body, "\"events\":[]"));
	free(body);
	assert_int_equal(events_route_list(db, "", 0, NULL, &body), 200);
	assert_null(strstr(body, "\"events\":[]"));
	free(body);
}

static void cursor_pages_end(void **state)
{
	(void)state;
	char qs[64] = "limit=4";
	size_t total = 0;
	for (int page = 0; page < 10; page++) {
		json_t *j = get(qs, 200);
		total += json_array_size(json_object_get(j, "events"));
		bool more = json_is_true(json_object_get(j, "more"));
		snprintf(qs, sizeof(qs), "limit=4&cursor=%s",
		         json_string_value(json_object_get(j, "next_cursor")));
		json_decref(j);
		if (!more)
			break;
	}
	assert_int_equal(total, 6);
	/* The last cursor gives nothing new. */
	json_t *j = get(qs, 200);
	assert_int_equal(json_array_size(json_object_get(j, "events")), 0);
	json_decref(j);
}

static void bad_parameters_are_400(void **state)
{
	(void)state;
	const char *bad[] = {"type=nope", "since=yesterday", "cursor=-1",     "cursor=x",
	                     "limit=0",   "limit=1001",      "recipient=%zz", "type=%"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		json_t *j = get(bad[i], 400);
		assert_non_null(json_string_value(json_object_get(j, "error")));
		json_decref(j);
	}
}

static void webhooks_and_attempts(void **state)
{
	(void)state;
	char *body = NULL;
	assert_int_equal(events_route_webhooks(db, &body), 200);
	assert_null(strstr(body, "whsec_")); /* never a secret */
	assert_non_null(strstr(body, "\"pending\":1"));
	assert_non_null(strstr(body, "\"events\":\"bounced\""));
	free(body);
	assert_int_equal(events_route_attempts(db, ep, "", 0, &body), 200);
	assert_non_null(strstr(body, "\"http_status\":0"));
	free(body);
	assert_int_equal(events_route_attempts(db, 999, "", 0, &body), 404);
	free(body);
	assert_int_equal(events_route_attempts(db, ep, "limit=0", 7, &body), 400);
	free(body);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(filters_from_the_query_string),
	    cmocka_unit_test(a_key_sees_its_own_events),
	    cmocka_unit_test(cursor_pages_end),
	    cmocka_unit_test(bad_parameters_are_400),
	    cmocka_unit_test(webhooks_and_attempts),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
