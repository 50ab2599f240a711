/*
 * suppress_filter.h — internal to store/suppress*.c: the in-memory negative
 * filter in front of the suppression list's SQLite lookups, and the shared
 * change counter (DATA/suppress.gen) that tells every process when to trust
 * it no longer.
 *
 * Owns: the filter's bit array, the mapping of DATA/suppress.gen.
 * Never: answers "suppressed" by itself (a hit in the filter only means
 * "ask SQLite"), or answers "not suppressed" from a filter built before the
 * last change some tern process counted in DATA/suppress.gen.
 */
#ifndef TERN_STORE_SUPPRESS_FILTER_H
#define TERN_STORE_SUPPRESS_FILTER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * DATA/suppress.gen: one 64-bit counter in a shared mapping, bumped by every
 * tern process after each committed change of the entries (add, delete).
 * Reading it is a load from memory, no system call: that is what lets a
 * delivery answer "not suppressed" without a SQLite read transaction.
 */
struct suppress_gen {
	_Atomic uint64_t *counter; /* NULL: no counter (the filter is never used) */
	size_t maplen;
};

/* Maps DATA/suppress.gen (created 0600 at first use). false (g->counter NULL)
 * when it cannot be: then every lookup goes to SQLite, as before the filter. */
bool suppress_gen_open(struct suppress_gen *g, const char *path);
void suppress_gen_close(struct suppress_gen *g);
/* The counter now (0 when there is none). */
uint64_t suppress_gen_load(const struct suppress_gen *g);
/* Adds one after a committed change; returns the value before (0 when none). */
uint64_t suppress_gen_bump(struct suppress_gen *g);

/*
 * A Bloom filter over the keys "SCOPE\nADDRESS" (both normalised) of every
 * entry: a key it does not hold is certainly not on the list; a key it holds
 * may be (a false positive, or an entry deleted since it was built) and is
 * looked up. Built from a full scan; an entry added in this process is set
 * in it directly, so the process's own writes (hard bounces, the API) do
 * not force a rebuild.
 */
struct suppress_filter {
	uint64_t *bits;
	size_t mask;   /* bit count - 1 (a power of two) */
	size_t n_keys; /* keys set (built plus added) */
	size_t cap;    /* past this many keys the false-positive rate grows: rebuild */
	bool valid;    /* built, and no change since that it did not take in */
	uint64_t gen;  /* the suppress.gen value it is exact for */
	int64_t dv;    /* SQLite's PRAGMA data_version when it was built or last checked */
	int64_t dv_at; /* monotonic ms of that check */
};

/* Empty and invalid (no memory yet). */
void suppress_filter_init(struct suppress_filter *f);
void suppress_filter_free(struct suppress_filter *f);
/* Starts a build for about n_keys keys: valid only once the caller has added
 * every key and set gen. false when out of memory (the filter stays invalid). */
bool suppress_filter_reset(struct suppress_filter *f, size_t n_keys);
/* Sets key (scope, addr), both normalised. false if the filter is full (cap). */
bool suppress_filter_add(struct suppress_filter *f, const char *scope, const char *addr);
/* false: (scope, addr) is certainly not an entry. true: it may be. */
bool suppress_filter_maybe(const struct suppress_filter *f, const char *scope, const char *addr);

#endif
