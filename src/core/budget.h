/*
 * budget.h — a byte budget shared by threads: how much memory the bodies
 * of committed messages waiting for their delivery may hold together
 * (limits.queued_memory).
 *
 * The scheduler keeps a message's bytes from its commit to its delivery
 * while the budget allows, and the remote engine keeps them while the job
 * waits in a destination's queue; past the budget either one drops its
 * copy and the message is read back from the spool when its turn comes.
 * Holders take before they keep, give back exactly what they took, and
 * may pass what they took to the next holder with the bytes.
 *
 * Owns: the count (one atomic) and the tern_queued_memory_bytes gauge.
 * Never: blocks, allocates, or lets a take that fails count anything.
 */
#ifndef TERN_CORE_BUDGET_H
#define TERN_CORE_BUDGET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

struct mem_budget {
	atomic_size_t used;
	size_t max; /* set before the first take; read without a lock after */
};

void budget_init(struct mem_budget *b, size_t max);
/* Counts n bytes if that keeps the total within max: true; else false and
 * nothing is counted. Any thread. */
bool budget_take(struct mem_budget *b, size_t n);
/* Counts n bytes whatever the total (a holder that cannot drop its copy:
 * a job put back at the head of its queue). Any thread. */
void budget_charge(struct mem_budget *b, size_t n);
/* Gives back n bytes that a take or charge counted. Any thread. */
void budget_give(struct mem_budget *b, size_t n);
size_t budget_used(const struct mem_budget *b);

#endif
