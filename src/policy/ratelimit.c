/*
 * ratelimit.c — per-client rate counters shared by every worker: one cell
 * per (client network, kind), each a GCRA state (policy_gcra), in a bounded
 * hash table under one mutex.
 *
 * Owns: the table and its memory bound (RL_BUCKETS x RL_CHAIN_MAX entries).
 * Must never: do I/O or block under the lock, or grow without bound when a
 * client rotates through many addresses (an IPv6 /48 holds 65,536 /64s):
 * a full bucket reuses its entry nearest to idle.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/err.h"
#include "policy/policy_internal.h"

#define RL_BUCKETS 16384
#define RL_CHAIN_MAX 8

struct rl_entry {
	struct rl_entry *next;
	uint8_t key[POLICY_NET_KEY_LEN];
	uint64_t tat[RL_KINDS];
};

struct ratelimit {
	pthread_mutex_t lock;
	uint32_t seed; /* so that nobody outside can aim at one bucket */
	struct rl_entry *bucket[RL_BUCKETS];
};

struct ratelimit *ratelimit_new(void)
{
	struct ratelimit *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	pthread_mutex_init(&r->lock, NULL);
	if (getrandom(&r->seed, sizeof(r->seed), 0) != sizeof(r->seed))
		r->seed = (uint32_t)(uintptr_t)r;
	return r;
}

void ratelimit_free(struct ratelimit *r)
{
	if (!r)
		return;
	for (size_t b = 0; b < RL_BUCKETS; b++) {
		struct rl_entry *e = r->bucket[b];
		while (e) {
			struct rl_entry *next = e->next;
			free(e);
			e = next;
		}
	}
	pthread_mutex_destroy(&r->lock);
	free(r);
}

static size_t bucket_of(const struct ratelimit *r, const uint8_t *key)
{
	uint32_t h = 2166136261u ^ r->seed;
	for (size_t i = 0; i < POLICY_NET_KEY_LEN; i++)
		h = (h ^ key[i]) * 16777619u;
	return h % RL_BUCKETS;
}

/* The latest moment any of e's cells stays busy; at or before now, e is
 * the same as no entry at all. */
static uint64_t busy_until(const struct rl_entry *e)
{
	uint64_t m = 0;
	for (int k = 0; k < RL_KINDS; k++)
		if (e->tat[k] > m)
			m = e->tat[k];
	return m;
}

bool ratelimit_take(struct ratelimit *r, const uint8_t key[POLICY_NET_KEY_LEN], enum rl_kind kind,
                    uint32_t per_minute, uint64_t now_us)
{
	if (per_minute == 0 || !r)
		return true;
	if (TERN_BUG_ON(kind >= RL_KINDS))
		return true;
	size_t b = bucket_of(r, key);
	bool ok = true;
	pthread_mutex_lock(&r->lock);
	struct rl_entry **pp = &r->bucket[b], *found = NULL, *oldest = NULL;
	size_t n = 0;
	while (*pp) {
		struct rl_entry *e = *pp;
		if (memcmp(e->key, key, POLICY_NET_KEY_LEN) == 0) {
			found = e;
		} else if (busy_until(e) <= now_us) {
			*pp = e->next; /* idle: forget it */
			free(e);
			continue;
		}
		if (!oldest || busy_until(e) < busy_until(oldest))
			oldest = e;
		n++;
		pp = &e->next;
	}
	if (!found) {
		if (n >= RL_CHAIN_MAX) {
			found = oldest; /* full: reuse the cell closest to idle */
		} else if ((found = malloc(sizeof(*found))) != NULL) {
			found->next = r->bucket[b];
			r->bucket[b] = found;
		}
		if (found) {
			memcpy(found->key, key, POLICY_NET_KEY_LEN);
			memset(found->tat, 0, sizeof(found->tat));
		}
	}
	if (found)
		ok = policy_gcra(&found->tat[kind], now_us, per_minute);
	pthread_mutex_unlock(&r->lock);
	return ok;
}
