/*
 * test_metrics.c — the Prometheus registry and its text exposition
 * (core/metrics.h): bucket choice at the bounds, label escaping, cumulative
 * buckets ending in +Inf with _sum and _count, counter families named
 * with _total in # TYPE, interning of label sets and its limit, and
 * updates from several threads adding up exactly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/metrics.h"

static int reset(void **state)
{
	metrics_reset();
	return 0;
}

static char *render(void)
{
	struct tbuf t = TBUF_INIT(1u << 20);
	struct metrics_extra e = {.queue_active = 3,
	                          .queue_deferred = 2,
	                          .queue_hold = 1,
	                          .spool_bytes = 4096,
	                          .resident_bytes = -1,
	                          .open_fds = -1,
	                          .cpu_seconds = -1,
	                          .start_time_seconds = -1,
	                          .version = "1.2\"3"};
	assert_int_equal(metrics_render(&t, &e), TERN_OK);
	return tbuf_steal(&t, NULL);
}

static void assert_has(const char *text, const char *line)
{
	if (!strstr(text, line))
		fail_msg("missing: %s\n--- in:\n%s", line, text);
}

static void test_bucket_index_bounds_are_inclusive(void **state)
{
	static const double b[] = {0.1, 0.5, 1};
	assert_int_equal(metrics_bucket_index(b, 3, 0), 0);
	assert_int_equal(metrics_bucket_index(b, 3, 0.1), 0); /* le: less or equal */
	assert_int_equal(metrics_bucket_index(b, 3, 0.10001), 1);
	assert_int_equal(metrics_bucket_index(b, 3, 0.5), 1);
	assert_int_equal(metrics_bucket_index(b, 3, 1), 2);
	assert_int_equal(metrics_bucket_index(b, 3, 1.5), 3); /* +Inf */
	assert_int_equal(metrics_bucket_index(b, 0, 7), 0);
}

static void test_label_values_are_escaped(void **state)
{
	struct tbuf t = TBUF_INIT(256);
	assert_int_equal(metrics_escape_label(&t, "a\\b\"c\nd"), TERN_OK);
	assert_string_equal(t.data, "a\\\\b\\\"c\\nd");
	tbuf_free(&t);
	metric_inc_l2(M_CONNECTIONS, "we\"ird\n", "mx");
	char *text = render();
	assert_has(text, "tern_connections_total{listener=\"we\\\"ird\\n\",profile=\"mx\"} 1\n");
	assert_has(text, "tern_build_info{version=\"1.2\\\"3\"} 1\n");
	free(text);
}

static void test_histogram_is_cumulative_with_inf_sum_and_count(void **state)
{
	metric_observe(M_SPOOL_COMMIT_DURATION, 0.0003); /* le 0.0005 */
	metric_observe(M_SPOOL_COMMIT_DURATION, 0.002);  /* le 0.0025 */
	metric_observe(M_SPOOL_COMMIT_DURATION, 0.002);  /* le 0.0025 */
	metric_observe(M_SPOOL_COMMIT_DURATION, 100);    /* +Inf only */
	metric_observe(M_SPOOL_COMMIT_DURATION, -1);     /* clock step: counted as 0 */
	char *text = render();
	assert_has(text, "# TYPE tern_spool_commit_duration_seconds histogram\n");
	assert_has(text, "tern_spool_commit_duration_seconds_bucket{le=\"0.0005\"} 2\n");
	assert_has(text, "tern_spool_commit_duration_seconds_bucket{le=\"0.001\"} 2\n");
	assert_has(text, "tern_spool_commit_duration_seconds_bucket{le=\"0.0025\"} 4\n");
	assert_has(text, "tern_spool_commit_duration_seconds_bucket{le=\"2.5\"} 4\n");
	assert_has(text, "tern_spool_commit_duration_seconds_bucket{le=\"+Inf\"} 5\n");
	assert_has(text, "tern_spool_commit_duration_seconds_count 5\n");
	assert_has(text, "tern_spool_commit_duration_seconds_sum 100.004300000\n");
	/* +Inf is the last bucket line, then _sum, then _count */
	const char *inf = strstr(text, "tern_spool_commit_duration_seconds_bucket{le=\"+Inf\"}");
	const char *sum = strstr(text, "tern_spool_commit_duration_seconds_sum");
	const char *cnt = strstr(text, "tern_spool_commit_duration_seconds_count");
	assert_true(inf < sum && sum < cnt);
	assert_null(strstr(inf + 1, "tern_spool_commit_duration_seconds_bucket"));
	free(text);
}

static void test_counters_gauges_and_fixed_families(void **state)
{
	metric_inc_l(M_MESSAGES_DELIVERED, "remote");
	metric_inc_l(M_MESSAGES_DELIVERED, "remote");
	metric_inc(M_MESSAGES_DEFERRED);
	metric_inc_l(M_SESSIONS_ACTIVE, "submission");
	metric_inc_l(M_SESSIONS_ACTIVE, "submission");
	metric_dec_l(M_SESSIONS_ACTIVE, "submission");
	metric_set(M_WEBHOOK_BACKLOG, 17);
	metric_inc_l(M_DESTINATION_THROTTLED, "gmail.com");
	assert_int_equal(metric_value(M_MESSAGES_DELIVERED, "remote", NULL), 2);
	assert_int_equal(metric_value(M_MESSAGES_DELIVERED, "local", NULL), 0);
	char *text = render();
	/* # TYPE names a counter as its samples are named, _total included (the
	 * text format's parsers match them exactly) */
	assert_has(text, "# TYPE tern_messages_delivered_total counter\n");
	assert_null(strstr(text, "# TYPE tern_messages_delivered counter"));
	assert_has(text, "tern_messages_delivered_total{transport=\"local\"} 0\n");
	assert_has(text, "tern_messages_delivered_total{transport=\"remote\"} 2\n");
	assert_has(text, "tern_messages_deferred_total 1\n");
	assert_has(text, "# TYPE tern_sessions_active gauge\n");
	assert_has(text, "tern_sessions_active{profile=\"submission\"} 1\n");
	assert_has(text, "tern_webhook_backlog 17\n");
	assert_has(text, "tern_destination_throttled_total{destination=\"gmail.com\"} 1\n");
	/* seeded label sets show before their first use */
	assert_has(text, "tern_tls_handshakes_total{direction=\"outbound\",result=\"failed\"} 0\n");
	assert_has(text, "tern_smtp_replies_total{code_class=\"4xx\"} 0\n");
	assert_has(text, "tern_queue_messages{state=\"active\"} 3\n");
	assert_has(text, "tern_queue_messages{state=\"deferred\"} 2\n");
	assert_has(text, "tern_queue_messages{state=\"hold\"} 1\n");
	assert_has(text, "tern_spool_bytes 4096\n");
	/* a negative extra is not shown */
	assert_null(strstr(text, "process_open_fds"));
	/* every line is a comment or a sample; the text ends with a newline */
	assert_int_equal(text[strlen(text) - 1], '\n');
	free(text);
}

static void test_label_sets_past_the_limit_are_dropped_and_counted(void **state)
{
	char name[32];
	for (int i = 0; i < METRIC_MAX_SERIES + 5; i++) {
		snprintf(name, sizeof(name), "d%d.example", i);
		metric_inc_l(M_DESTINATION_THROTTLED, name);
	}
	assert_int_equal(metric_value(M_DESTINATION_THROTTLED, "d0.example", NULL), 1);
	snprintf(name, sizeof(name), "d%d.example", METRIC_MAX_SERIES - 1);
	assert_int_equal(metric_value(M_DESTINATION_THROTTLED, name, NULL), 1);
	snprintf(name, sizeof(name), "d%d.example", METRIC_MAX_SERIES);
	assert_int_equal(metric_value(M_DESTINATION_THROTTLED, name, NULL), 0);
	assert_int_equal(metric_value(M_SERIES_DROPPED, NULL, NULL), 5);
}

static void test_long_label_values_are_cut_not_overrun(void **state)
{
	char big[300];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	metric_inc_l(M_AUTH_FAILURES, big);
	metric_inc_l(M_AUTH_FAILURES, big); /* the same (cut) series */
	char *text = render();
	char want[METRIC_MAX_LABEL_LEN + 64];
	snprintf(want, sizeof(want), "tern_auth_failures_total{mechanism=\"%.*s\"} 2\n",
	         METRIC_MAX_LABEL_LEN, big);
	assert_has(text, want);
	free(text);
}

#define THREADS 4
#define PER_THREAD 20000

static void *hammer(void *arg)
{
	const char *profile = arg;
	for (int i = 0; i < PER_THREAD; i++) {
		metric_inc_l(M_MESSAGES_RECEIVED, profile);
		metric_observe(M_DNS_QUERY_DURATION, 0.003);
	}
	return NULL;
}

static void test_updates_from_threads_add_up(void **state)
{
	static const char *const profiles[THREADS] = {"mx", "submission", "mx", "submission"};
	pthread_t t[THREADS];
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, hammer, (void *)profiles[i]), 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(metric_value(M_MESSAGES_RECEIVED, "mx", NULL), 2 * PER_THREAD);
	assert_int_equal(metric_value(M_MESSAGES_RECEIVED, "submission", NULL), 2 * PER_THREAD);
	char *text = render();
	char want[128];
	snprintf(want, sizeof(want), "tern_dns_query_duration_seconds_count %d\n",
	         THREADS * PER_THREAD);
	assert_has(text, want);
	snprintf(want, sizeof(want), "tern_dns_query_duration_seconds_bucket{le=\"0.0025\"} 0\n");
	assert_has(text, want);
	free(text);
}

static void test_process_figures_from_proc(void **state)
{
	struct metrics_extra e = {0};
	metrics_collect_process(&e);
	assert_true(e.resident_bytes > 0);
	assert_true(e.open_fds >= 3);
	assert_true(e.cpu_seconds >= 0);
	assert_true(e.start_time_seconds > 1.5e9);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup(test_bucket_index_bounds_are_inclusive, reset),
	    cmocka_unit_test_setup(test_label_values_are_escaped, reset),
	    cmocka_unit_test_setup(test_histogram_is_cumulative_with_inf_sum_and_count, reset),
	    cmocka_unit_test_setup(test_counters_gauges_and_fixed_families, reset),
	    cmocka_unit_test_setup(test_label_sets_past_the_limit_are_dropped_and_counted, reset),
	    cmocka_unit_test_setup(test_long_label_values_are_cut_not_overrun, reset),
	    cmocka_unit_test_setup(test_updates_from_threads_add_up, reset),
	    cmocka_unit_test_setup(test_process_figures_from_proc, reset),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
