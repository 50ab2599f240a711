/*
 * peer.c — client addresses for logs and per-address connection counts
 * (peer.h): a fixed array of buckets, each a short list of addresses with
 * a live connection, under one lock (taken once per connect and close).
 */
#include "core/peer.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"

#define PEER_BUCKETS 4096

struct peer_count {
	struct peer_count *next;
	uint8_t addr[16];
	uint32_t count;
};

struct peer_counts {
	pthread_mutex_t lock;
	struct peer_count *bucket[PEER_BUCKETS];
};

void peer_format(const struct sockaddr_storage *ss, char *out, size_t outlen)
{
	if (ss->ss_family == AF_INET) {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, out,
		          (socklen_t)outlen);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
			inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], out, (socklen_t)outlen);
		else
			inet_ntop(AF_INET6, &in6->sin6_addr, out, (socklen_t)outlen);
	} else {
		tern_strlcpy(out, "unknown", outlen);
	}
}

/* The 16-byte key of an address; IPv4 (and v4-mapped v6) as ::ffff:a.b.c.d. */
static void peer_key(const struct sockaddr_storage *ss, uint8_t key[16])
{
	memset(key, 0, 16);
	if (ss->ss_family == AF_INET) {
		key[10] = key[11] = 0xff;
		memcpy(key + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
	} else if (ss->ss_family == AF_INET6) {
		memcpy(key, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
	}
}

static unsigned peer_hash(const uint8_t key[16])
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (int i = 0; i < 16; i++)
		h = (h ^ key[i]) * 16777619u;
	return h % PEER_BUCKETS;
}

struct peer_counts *peer_counts_new(void)
{
	struct peer_counts *pc = calloc(1, sizeof(*pc));
	if (pc)
		pthread_mutex_init(&pc->lock, NULL);
	return pc;
}

void peer_counts_free(struct peer_counts *pc)
{
	if (!pc)
		return;
	for (size_t b = 0; b < PEER_BUCKETS; b++) {
		struct peer_count *e = pc->bucket[b];
		while (e) {
			struct peer_count *next = e->next;
			free(e);
			e = next;
		}
	}
	pthread_mutex_destroy(&pc->lock);
	free(pc);
}

bool peer_counts_acquire(struct peer_counts *pc, const struct sockaddr_storage *ss, uint32_t limit)
{
	uint8_t key[16];
	peer_key(ss, key);
	unsigned b = peer_hash(key);
	bool ok = false;
	pthread_mutex_lock(&pc->lock);
	struct peer_count *e = pc->bucket[b];
	while (e && memcmp(e->addr, key, 16) != 0)
		e = e->next;
	/* an address gets an entry only with a connection to count in it */
	if (!e && limit > 0 && (e = calloc(1, sizeof(*e))) != NULL) {
		memcpy(e->addr, key, 16);
		e->next = pc->bucket[b];
		pc->bucket[b] = e;
	}
	if (e && e->count < limit) {
		e->count++;
		ok = true;
	}
	pthread_mutex_unlock(&pc->lock);
	return ok;
}

void peer_counts_release(struct peer_counts *pc, const struct sockaddr_storage *ss)
{
	uint8_t key[16];
	peer_key(ss, key);
	unsigned b = peer_hash(key);
	pthread_mutex_lock(&pc->lock);
	struct peer_count **pp = &pc->bucket[b];
	while (*pp && memcmp((*pp)->addr, key, 16) != 0)
		pp = &(*pp)->next;
	if (*pp && (*pp)->count > 0 && --(*pp)->count == 0) {
		struct peer_count *dead = *pp;
		*pp = dead->next;
		free(dead);
	}
	pthread_mutex_unlock(&pc->lock);
}
