/* budget.c — see budget.h. */
#include "core/budget.h"

#include "core/err.h"
#include "core/metrics.h"

void budget_init(struct mem_budget *b, size_t max)
{
	atomic_init(&b->used, 0);
	b->max = max;
}

bool budget_take(struct mem_budget *b, size_t n)
{
	size_t cur = atomic_load_explicit(&b->used, memory_order_relaxed);
	do {
		if (n > b->max || cur > b->max - n)
			return false;
	} while (!atomic_compare_exchange_weak_explicit(
	    &b->used, &cur, cur + n, memory_order_relaxed, memory_order_relaxed));
	metric_add(M_QUEUED_MEMORY, (int64_t)n);
	return true;
}

void budget_charge(struct mem_budget *b, size_t n)
{
	atomic_fetch_add_explicit(&b->used, n, memory_order_relaxed);
	metric_add(M_QUEUED_MEMORY, (int64_t)n);
}

void budget_give(struct mem_budget *b, size_t n)
{
	size_t before = atomic_fetch_sub_explicit(&b->used, n, memory_order_relaxed);
	TERN_BUG_ON(before < n); /* gave back more than was taken */
	metric_add(M_QUEUED_MEMORY, -(int64_t)n);
}

size_t budget_used(const struct mem_budget *b)
{
	return atomic_load_explicit(&b->used, memory_order_relaxed);
}
