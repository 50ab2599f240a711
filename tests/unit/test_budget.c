/*
 * test_budget.c — the byte budget behind limits.queued_memory
 * (src/core/budget.c): a take that would pass the maximum counts nothing,
 * sizes near SIZE_MAX do not wrap around, a charge counts past the maximum,
 * what is given back frees room, the gauge follows, and takes racing from
 * several threads never pass the maximum together.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>

#include "core/budget.h"
#include "core/metrics.h"

static void test_take_and_give(void **st)
{
	(void)st;
	metrics_reset();
	struct mem_budget b;
	budget_init(&b, 100);
	assert_true(budget_take(&b, 60));
	assert_false(budget_take(&b, 41)); /* 101 > 100: nothing counted */
	assert_int_equal(budget_used(&b), 60);
	assert_true(budget_take(&b, 40)); /* exactly full */
	assert_false(budget_take(&b, 1));
	assert_int_equal(metric_value(M_QUEUED_MEMORY, NULL, NULL), 100);
	budget_give(&b, 60);
	assert_int_equal(budget_used(&b), 40);
	assert_true(budget_take(&b, 1));
	assert_true(budget_take(&b, 0));
	budget_give(&b, 41);
	assert_int_equal(budget_used(&b), 0);
	assert_int_equal(metric_value(M_QUEUED_MEMORY, NULL, NULL), 0);
}

static void test_no_wraparound(void **st)
{
	(void)st;
	struct mem_budget b;
	budget_init(&b, 1000);
	assert_true(budget_take(&b, 10));
	assert_false(budget_take(&b, SIZE_MAX));     /* would wrap to 9 */
	assert_false(budget_take(&b, SIZE_MAX - 5)); /* likewise */
	assert_int_equal(budget_used(&b), 10);
	budget_give(&b, 10);
}

static void test_zero_budget_keeps_nothing(void **st)
{
	(void)st;
	struct mem_budget b;
	budget_init(&b, 0); /* queued_memory = 0: every message is read back */
	assert_false(budget_take(&b, 1));
	assert_true(budget_take(&b, 0));
	assert_int_equal(budget_used(&b), 0);
}

static void test_charge_counts_past_the_max(void **st)
{
	(void)st;
	metrics_reset();
	struct mem_budget b;
	budget_init(&b, 10);
	budget_charge(&b, 25); /* a job put back at the head of its queue keeps its bytes */
	assert_int_equal(budget_used(&b), 25);
	assert_false(budget_take(&b, 1));
	budget_give(&b, 25);
	assert_true(budget_take(&b, 10));
	assert_int_equal(metric_value(M_QUEUED_MEMORY, NULL, NULL), 10);
	budget_give(&b, 10);
}

#define RACERS 4
#define ROUNDS 20000

struct race {
	struct mem_budget *b;
	size_t peak_seen;
};

static void *racer(void *arg)
{
	struct race *r = arg;
	for (int i = 0; i < ROUNDS; i++) {
		size_t n = (size_t)(i % 7) + 1;
		if (budget_take(r->b, n)) {
			size_t u = budget_used(r->b);
			if (u > r->peak_seen)
				r->peak_seen = u;
			budget_give(r->b, n);
		}
	}
	return NULL;
}

static void test_racing_takes_stay_within_the_max(void **st)
{
	(void)st;
	struct mem_budget b;
	budget_init(&b, 12);
	pthread_t t[RACERS];
	struct race r[RACERS];
	for (int i = 0; i < RACERS; i++) {
		r[i] = (struct race){.b = &b, .peak_seen = 0};
		assert_int_equal(pthread_create(&t[i], NULL, racer, &r[i]), 0);
	}
	for (int i = 0; i < RACERS; i++) {
		pthread_join(t[i], NULL);
		assert_true(r[i].peak_seen <= 12);
	}
	assert_int_equal(budget_used(&b), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_take_and_give),
	    cmocka_unit_test(test_no_wraparound),
	    cmocka_unit_test(test_zero_budget_keeps_nothing),
	    cmocka_unit_test(test_charge_counts_past_the_max),
	    cmocka_unit_test(test_racing_takes_stay_within_the_max),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
