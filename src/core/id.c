/*
 * id.c — queue ids: 16 Crockford base32 digits = 80 bits, made of the
 * microsecond clock (52 bits) and a process-wide counter (28 bits), so ids
 * are unique within one process, sort by creation and survive restarts
 * (the clock has moved on).
 */
#include "core/id.h"

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
static _Atomic uint32_t id_counter;

void queue_id_new(char out[QUEUE_ID_LEN + 1])
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t us = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
	uint32_t c = atomic_fetch_add(&id_counter, 1) & 0x0fffffffu;
	/* 80 bits: high 52 = time, low 28 = counter. */
	uint64_t hi = us >> 12;                                /* top 40 bits of time */
	uint64_t lo = ((us & 0xfffu) << 28) | c;               /* 12 time bits + 28 counter */
	for (int i = 7; i >= 0; i--) {
		out[i] = b32[hi & 31];
		hi >>= 5;
	}
	for (int i = 15; i >= 8; i--) {
		out[i] = b32[lo & 31];
		lo >>= 5;
	}
	out[QUEUE_ID_LEN] = '\0';
}

bool queue_id_valid(const char *s, size_t n)
{
	if (n != QUEUE_ID_LEN)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!s[i] || !memchr(b32, s[i], sizeof(b32) - 1))
			return false;
	return true;
}
