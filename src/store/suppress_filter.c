/*
 * suppress_filter.c — the suppression list's negative filter and the shared
 * change counter DATA/suppress.gen (see suppress_filter.h). Every remote
 * recipient is checked against the list, and the list is usually small or
 * empty: without the filter each check was a SQLite read transaction (WAL
 * read locks: fcntl calls) on a delivery thread.
 *
 * Owns: the filter's bits; the mapping of DATA/suppress.gen.
 * Never: opens SQLite (suppress.c builds the filter and asks the database
 * when the filter says "maybe"), or shrinks DATA/suppress.gen (another
 * process maps it).
 */
#include "store/suppress_filter.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"

/* One page: the counter is its first 8 bytes, the rest is zero. */
#define GEN_MAPLEN 4096

bool suppress_gen_open(struct suppress_gen *g, const char *path)
{
	g->counter = NULL;
	g->maplen = 0;
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		log_warn("event=suppress_gen_unavailable path=%s error=\"%s\"", path,
		         strerror(errno));
		return false;
	}
	struct stat st;
	bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
	/* Grown to a page by whoever comes first; a second ftruncate to the
	 * same size changes nothing, and the counter's zero is the file's. */
	if (ok && st.st_size < GEN_MAPLEN)
		ok = ftruncate(fd, GEN_MAPLEN) == 0;
	void *p =
	    ok ? mmap(NULL, GEN_MAPLEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
	int saved = errno;
	close(fd); /* the mapping keeps the file */
	if (p == MAP_FAILED) {
		log_warn("event=suppress_gen_unavailable path=%s error=\"%s\"", path,
		         strerror(ok ? saved : EINVAL));
		return false;
	}
	g->counter = p;
	g->maplen = GEN_MAPLEN;
	return true;
}

void suppress_gen_close(struct suppress_gen *g)
{
	if (g->counter)
		munmap((void *)g->counter, g->maplen);
	g->counter = NULL;
	g->maplen = 0;
}

uint64_t suppress_gen_load(const struct suppress_gen *g)
{
	return g->counter ? atomic_load_explicit(g->counter, memory_order_acquire) : 0;
}

uint64_t suppress_gen_bump(struct suppress_gen *g)
{
	/* After the SQLite commit: a process that sees the new value and then
	 * reads the table sees the change (release here, acquire in load). */
	return g->counter ? atomic_fetch_add_explicit(g->counter, 1, memory_order_acq_rel) : 0;
}

/* ---- the filter ------------------------------------------------------------ */

#define MIN_BITS ((size_t)1 << 16) /* 8 KiB: room for 4,096 keys */
#define BITS_PER_KEY 16            /* with 7 probes: about 0.05 % false positives */
#define PROBES 7

void suppress_filter_init(struct suppress_filter *f)
{
	memset(f, 0, sizeof(*f));
}

void suppress_filter_free(struct suppress_filter *f)
{
	free(f->bits);
	suppress_filter_init(f);
}

bool suppress_filter_reset(struct suppress_filter *f, size_t n_keys)
{
	/* Twice the keys there are now plus some: the process's own adds (hard
	 * bounces) go in without a rebuild until cap. */
	size_t want = (n_keys * 2 + 1024) * BITS_PER_KEY, bits = MIN_BITS;
	while (bits < want && bits < ((size_t)1 << 40))
		bits <<= 1;
	f->valid = false;
	if (!f->bits || f->mask + 1 != bits) {
		free(f->bits);
		f->bits = calloc(bits / 64, sizeof(uint64_t));
		if (!f->bits) {
			f->mask = 0;
			return false;
		}
	} else {
		memset(f->bits, 0, bits / 8);
	}
	f->mask = bits - 1;
	f->n_keys = 0;
	f->cap = bits / BITS_PER_KEY;
	return true;
}

static uint64_t mix64(uint64_t x)
{
	/* splitmix64's finaliser: every input bit moves every output bit */
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

static void key_hashes(const char *scope, const char *addr, uint64_t *h1, uint64_t *h2)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a over SCOPE "\n" ADDRESS */
	for (const char *p = scope; *p; p++)
		h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
	h = (h ^ '\n') * 0x100000001b3ull;
	for (const char *p = addr; *p; p++)
		h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
	*h1 = mix64(h);
	*h2 = mix64(h ^ 0x9e3779b97f4a7c15ull) | 1;
}

bool suppress_filter_add(struct suppress_filter *f, const char *scope, const char *addr)
{
	if (!f->bits || f->n_keys >= f->cap)
		return false;
	uint64_t h1, h2;
	key_hashes(scope, addr, &h1, &h2);
	for (unsigned i = 0; i < PROBES; i++) {
		size_t b = (size_t)(h1 + i * h2) & f->mask;
		f->bits[b / 64] |= (uint64_t)1 << (b % 64);
	}
	f->n_keys++;
	return true;
}

bool suppress_filter_maybe(const struct suppress_filter *f, const char *scope, const char *addr)
{
	if (!f->bits)
		return true;
	uint64_t h1, h2;
	key_hashes(scope, addr, &h1, &h2);
	for (unsigned i = 0; i < PROBES; i++) {
		size_t b = (size_t)(h1 + i * h2) & f->mask;
		if (!(f->bits[b / 64] & ((uint64_t)1 << (b % 64))))
			return false;
	}
	return true;
}
