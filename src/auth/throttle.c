/*
 * throttle.c — the brute-force throttle for logins (see auth.h): failures
 * counted per client address (IPv6 per /64) and per user, a delay that
 * doubles with each failure, then a block for a while.
 *
 * Owns: a fixed-size table of counters, kept in least-recently-used order
 * and keyed by a keyed hash (SipHash-2-4 with a random key), so memory
 * stays bounded (48 bytes an entry, whatever the names) and a client cannot
 * aim collisions at a bucket. A 64-bit hash stands for the key: two keys
 * sharing one would share a counter, which at 2^-64 a pair is no concern.
 *
 * Must never: read a clock (the caller passes the time), block, log, or
 * grow past max_entries. A success forgets the user's failures but not the
 * address's: an attacker holding one valid account could otherwise reset
 * its address's count between guesses at other users. Address counts age
 * out after window_seconds without a failure.
 */
#include "auth/auth.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"

#define NIL UINT32_MAX
#define ENTRIES_HARD_MAX (1u << 24)
#define KEY_MAX 320

struct entry {
	uint64_t h; /* 0: free */
	unsigned long long last_fail_ms;
	unsigned long long blocked_until_ms;
	uint32_t failures;
	uint32_t hnext;      /* hash chain */
	uint32_t prev, next; /* LRU list; head is the most recent */
};

struct throttle {
	pthread_mutex_t mu;
	struct throttle_config cfg;
	uint64_t k0, k1; /* SipHash key */
	uint32_t *buckets;
	uint32_t nbuckets; /* a power of two */
	struct entry *e;
	uint32_t cap, used; /* entries allocated so far (never freed until the end) */
	uint32_t free_head; /* entries forgotten, chained by hnext */
	uint32_t head, tail;
	size_t n;
};

/* ---------------------------------------------------------- SipHash-2-4 */

static uint64_t rotl(uint64_t x, int b)
{
	return x << b | x >> (64 - b);
}

#define SIPROUND                                                                                   \
	do {                                                                                       \
		v0 += v1;                                                                          \
		v1 = rotl(v1, 13);                                                                 \
		v1 ^= v0;                                                                          \
		v0 = rotl(v0, 32);                                                                 \
		v2 += v3;                                                                          \
		v3 = rotl(v3, 16);                                                                 \
		v3 ^= v2;                                                                          \
		v0 += v3;                                                                          \
		v3 = rotl(v3, 21);                                                                 \
		v3 ^= v0;                                                                          \
		v2 += v1;                                                                          \
		v1 = rotl(v1, 17);                                                                 \
		v1 ^= v2;                                                                          \
		v2 = rotl(v2, 32);                                                                 \
	} while (0)

static uint64_t siphash(uint64_t k0, uint64_t k1, const unsigned char *p, size_t n)
{
	uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
	uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
	uint64_t b = (uint64_t)n << 56, m;
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		m = 0;
		for (int k = 7; k >= 0; k--)
			m = m << 8 | p[i + (size_t)k];
		v3 ^= m;
		SIPROUND;
		SIPROUND;
		v0 ^= m;
	}
	for (size_t k = 0; i + k < n; k++)
		b |= (uint64_t)p[i + k] << (8 * k);
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

/* ----------------------------------------------------------------- keys */

/*
 * The counting key for an address: 'a' + the canonical text of an IPv4
 * address, or of an IPv6 address with its last 64 bits cleared ("/64");
 * an IPv4-mapped IPv6 address counts as the IPv4 one. Anything else is
 * taken as it is (cut to KEY_MAX).
 */
static size_t addr_key(const char *addr, char *key, size_t keylen)
{
	char tmp[INET6_ADDRSTRLEN + 4];
	struct in6_addr a6;
	struct in_addr a4;
	size_t n = strnlen(addr, KEY_MAX);
	const char *p = addr;

	if (n >= 2 && p[0] == '[' && p[n - 1] == ']') {
		p++;
		n -= 2;
	}
	key[0] = 'a';
	if (n < sizeof(tmp)) {
		memcpy(tmp, p, n);
		tmp[n] = '\0';
		if (inet_pton(AF_INET, tmp, &a4) == 1 &&
		    inet_ntop(AF_INET, &a4, key + 1, (socklen_t)(keylen - 1)) != NULL)
			return strlen(key);
		if (inet_pton(AF_INET6, tmp, &a6) == 1) {
			if (IN6_IS_ADDR_V4MAPPED(&a6)) {
				memcpy(&a4, &a6.s6_addr[12], 4);
				if (inet_ntop(AF_INET, &a4, key + 1, (socklen_t)(keylen - 1)) !=
				    NULL)
					return strlen(key);
			}
			memset(&a6.s6_addr[8], 0, 8);
			if (inet_ntop(AF_INET6, &a6, key + 1, (socklen_t)(keylen - 4)) != NULL) {
				size_t k = strlen(key);

				memcpy(key + k, "/64", 4);
				return k + 3;
			}
		}
	}
	if (n > keylen - 2)
		n = keylen - 2;
	memcpy(key + 1, p, n);
	key[n + 1] = '\0';
	return n + 1;
}

/* 'u' + the user name, ASCII-lowercased (cut to KEY_MAX). */
static size_t user_key(const char *user, char *key, size_t keylen)
{
	size_t n = strnlen(user, KEY_MAX);

	if (n > keylen - 2)
		n = keylen - 2;
	key[0] = 'u';
	memcpy(key + 1, user, n);
	key[n + 1] = '\0';
	tern_ascii_lower(key + 1);
	return n + 1;
}

/* -------------------------------------------------------------- the table */

struct throttle *throttle_new(const struct throttle_config *cfg)
{
	struct throttle *t = calloc(1, sizeof(*t));
	unsigned char k[16];
	uint32_t nb = 1;

	if (t == NULL)
		return NULL;
	t->cfg = *cfg;
	if (t->cfg.max_entries == 0)
		t->cfg.max_entries = 1;
	if (t->cfg.max_entries > ENTRIES_HARD_MAX)
		t->cfg.max_entries = ENTRIES_HARD_MAX;
	while (nb < t->cfg.max_entries)
		nb <<= 1;
	t->nbuckets = nb;
	t->buckets = malloc((size_t)nb * sizeof(*t->buckets));
	if (t->buckets == NULL || RAND_bytes(k, sizeof(k)) != 1 ||
	    pthread_mutex_init(&t->mu, NULL) != 0) {
		free(t->buckets);
		free(t);
		return NULL;
	}
	memset(t->buckets, 0xff, (size_t)nb * sizeof(*t->buckets)); /* all NIL */
	memcpy(&t->k0, k, 8);
	memcpy(&t->k1, k + 8, 8);
	t->head = t->tail = t->free_head = NIL;
	return t;
}

void throttle_free(struct throttle *t)
{
	if (t == NULL)
		return;
	pthread_mutex_destroy(&t->mu);
	free(t->buckets);
	free(t->e);
	free(t);
}

size_t throttle_entries(struct throttle *t)
{
	size_t n;

	pthread_mutex_lock(&t->mu);
	n = t->n;
	pthread_mutex_unlock(&t->mu);
	return n;
}

static void lru_unlink(struct throttle *t, uint32_t i)
{
	struct entry *e = &t->e[i];

	if (e->prev != NIL)
		t->e[e->prev].next = e->next;
	else
		t->head = e->next;
	if (e->next != NIL)
		t->e[e->next].prev = e->prev;
	else
		t->tail = e->prev;
	e->prev = e->next = NIL;
}

static void lru_push_front(struct throttle *t, uint32_t i)
{
	struct entry *e = &t->e[i];

	e->prev = NIL;
	e->next = t->head;
	if (t->head != NIL)
		t->e[t->head].prev = i;
	t->head = i;
	if (t->tail == NIL)
		t->tail = i;
}

static uint32_t *chain_of(struct throttle *t, uint64_t h)
{
	return &t->buckets[h & (t->nbuckets - 1)];
}

static uint32_t find(struct throttle *t, uint64_t h)
{
	for (uint32_t i = *chain_of(t, h); i != NIL; i = t->e[i].hnext) {
		if (t->e[i].h == h)
			return i;
	}
	return NIL;
}

static void forget(struct throttle *t, uint32_t i)
{
	uint32_t *pp = chain_of(t, t->e[i].h);

	while (*pp != i) {
		if (TERN_BUG_ON(*pp == NIL))
			return;
		pp = &t->e[*pp].hnext;
	}
	*pp = t->e[i].hnext;
	lru_unlink(t, i);
	memset(&t->e[i], 0, sizeof(t->e[i]));
	t->e[i].hnext = t->free_head;
	t->free_head = i;
	t->n--;
}

/* The entry for h, now the most recently used; created (evicting the
 * least recently used one when the table is full) if absent. NIL only when
 * out of memory. */
static uint32_t get(struct throttle *t, uint64_t h)
{
	uint32_t i = find(t, h), *chain;

	if (i != NIL) {
		lru_unlink(t, i);
		lru_push_front(t, i);
		return i;
	}
	if (t->n >= t->cfg.max_entries && t->tail != NIL)
		forget(t, t->tail);
	if (t->free_head != NIL) {
		i = t->free_head;
		t->free_head = t->e[i].hnext;
	} else {
		if (t->used == t->cap) {
			uint32_t ncap = t->cap ? t->cap * 2 : 64;
			struct entry *ne;

			if (ncap > t->cfg.max_entries)
				ncap = (uint32_t)t->cfg.max_entries;
			ne = reallocarray(t->e, ncap, sizeof(*ne));
			if (ne == NULL)
				return NIL;
			t->e = ne;
			t->cap = ncap;
		}
		i = t->used++;
	}
	memset(&t->e[i], 0, sizeof(t->e[i]));
	t->e[i].h = h != 0 ? h : 1;
	chain = chain_of(t, t->e[i].h);
	t->e[i].hnext = *chain;
	*chain = i;
	t->e[i].prev = t->e[i].next = NIL;
	lru_push_front(t, i);
	t->n++;
	return i;
}

static uint64_t key_hash(const struct throttle *t, const char *key, size_t n)
{
	uint64_t h = siphash(t->k0, t->k1, (const unsigned char *)key, n);

	return h != 0 ? h : 1; /* 0 marks a free entry */
}

/* Failures older than the window (counted from the last one) are gone,
 * unless a block is still running. */
static void age(const struct throttle *t, struct entry *e, unsigned long long now)
{
	unsigned long long window = (unsigned long long)t->cfg.window_seconds * 1000;

	if (e->blocked_until_ms > now)
		return;
	if (e->failures > 0 && now - e->last_fail_ms >= window) {
		e->failures = 0;
		e->blocked_until_ms = 0;
	}
}

static unsigned secs_left(unsigned long long until, unsigned long long now)
{
	return until > now ? (unsigned)((until - now + 999) / 1000) : 0;
}

/* "addr=1.2.3.4 failures=3" or "user=x@y failures=30 blocked_for=900s". */
static void set_reason(struct throttle_result *res, const char *what, const char *name,
                       const struct entry *e, unsigned long long now)
{
	char q[96];
	int n;

	log_quote(name, strnlen(name, KEY_MAX), q, sizeof(q));
	n = snprintf(res->reason, sizeof(res->reason), "%s=%s failures=%u", what, q,
	             e != NULL ? e->failures : 0);
	if (e != NULL && e->blocked_until_ms > now && n > 0 && (size_t)n < sizeof(res->reason))
		snprintf(res->reason + n, sizeof(res->reason) - (size_t)n, " blocked_for=%us",
		         secs_left(e->blocked_until_ms, now));
}

static void result_init(struct throttle_result *res)
{
	memset(res, 0, sizeof(*res));
	res->verdict = THROTTLE_ALLOW;
}

void throttle_check(struct throttle *t, const char *addr, const char *user,
                    unsigned long long now_ms, struct throttle_result *res)
{
	char key[KEY_MAX + 8];
	uint32_t ia = NIL, iu = NIL;

	result_init(res);
	pthread_mutex_lock(&t->mu);
	if (addr != NULL) {
		ia = find(t, key_hash(t, key, addr_key(addr, key, sizeof(key))));
		if (ia != NIL) {
			age(t, &t->e[ia], now_ms);
			lru_unlink(t, ia);
			lru_push_front(t, ia);
		}
	}
	if (user != NULL) {
		iu = find(t, key_hash(t, key, user_key(user, key, sizeof(key))));
		if (iu != NIL) {
			age(t, &t->e[iu], now_ms);
			lru_unlink(t, iu);
			lru_push_front(t, iu);
		}
	}
	if (ia != NIL && t->e[ia].blocked_until_ms > now_ms) {
		res->verdict = THROTTLE_BLOCK_ADDR;
		res->retry_after_s = secs_left(t->e[ia].blocked_until_ms, now_ms);
		res->failures = t->e[ia].failures;
		set_reason(res, "addr", addr, &t->e[ia], now_ms);
	} else if (iu != NIL && t->e[iu].blocked_until_ms > now_ms) {
		res->verdict = THROTTLE_BLOCK_USER;
		res->retry_after_s = secs_left(t->e[iu].blocked_until_ms, now_ms);
		res->failures = t->e[iu].failures;
		set_reason(res, "user", user, &t->e[iu], now_ms);
	}
	pthread_mutex_unlock(&t->mu);
}

/* One more failure on entry i; blocks it at block_after (0: never). */
static void count(struct throttle *t, uint32_t i, unsigned block_after, unsigned long long now)
{
	struct entry *e = &t->e[i];

	age(t, e, now);
	if (e->failures < UINT32_MAX)
		e->failures++;
	e->last_fail_ms = now;
	if (block_after != 0 && e->failures >= block_after && e->blocked_until_ms <= now)
		e->blocked_until_ms = now + (unsigned long long)t->cfg.block_seconds * 1000;
}

static unsigned delay_for(const struct throttle_config *c, uint32_t failures)
{
	unsigned long long d;
	uint32_t k;

	if (failures <= c->delay_after)
		return 0;
	k = failures - c->delay_after - 1;
	d = (unsigned long long)c->base_delay_ms << (k > 20 ? 20 : k);
	return d > c->max_delay_ms ? c->max_delay_ms : (unsigned)d;
}

void throttle_fail(struct throttle *t, const char *addr, const char *user,
                   unsigned long long now_ms, struct throttle_result *res)
{
	char key[KEY_MAX + 8];
	uint32_t ia = NIL, iu = NIL, most = 0;

	result_init(res);
	pthread_mutex_lock(&t->mu);
	/* The address first: it matters more. Counting the user may evict the
	 * least recently used entry, which is never the address just touched,
	 * unless the table has room for one entry only: then the user waits. */
	if (addr != NULL) {
		ia = get(t, key_hash(t, key, addr_key(addr, key, sizeof(key))));
		if (ia != NIL)
			count(t, ia, t->cfg.addr_block_after, now_ms);
	}
	if (user != NULL) {
		uint64_t h = key_hash(t, key, user_key(user, key, sizeof(key)));

		if (ia == NIL || find(t, h) != NIL || t->n < t->cfg.max_entries || t->tail != ia)
			iu = get(t, h);
		if (iu != NIL)
			count(t, iu, t->cfg.user_block_after, now_ms);
	}
	if (ia != NIL)
		most = t->e[ia].failures;
	if (iu != NIL && t->e[iu].failures > most)
		most = t->e[iu].failures;
	res->delay_ms = delay_for(&t->cfg, most);
	res->failures = most;
	if (ia != NIL && t->e[ia].blocked_until_ms > now_ms) {
		res->verdict = THROTTLE_BLOCK_ADDR;
		res->retry_after_s = secs_left(t->e[ia].blocked_until_ms, now_ms);
		set_reason(res, "addr", addr, &t->e[ia], now_ms);
	} else if (iu != NIL && t->e[iu].blocked_until_ms > now_ms) {
		res->verdict = THROTTLE_BLOCK_USER;
		res->retry_after_s = secs_left(t->e[iu].blocked_until_ms, now_ms);
		set_reason(res, "user", user, &t->e[iu], now_ms);
	} else if (ia != NIL) {
		set_reason(res, "addr", addr, &t->e[ia], now_ms);
	} else if (iu != NIL) {
		set_reason(res, "user", user, &t->e[iu], now_ms);
	}
	pthread_mutex_unlock(&t->mu);
}

void throttle_success(struct throttle *t, const char *addr, const char *user)
{
	char key[KEY_MAX + 8];
	uint32_t iu;

	(void)addr; /* see the file comment: the address keeps its count */
	if (user == NULL)
		return;
	pthread_mutex_lock(&t->mu);
	iu = find(t, key_hash(t, key, user_key(user, key, sizeof(key))));
	if (iu != NIL)
		forget(t, iu);
	pthread_mutex_unlock(&t->mu);
}
