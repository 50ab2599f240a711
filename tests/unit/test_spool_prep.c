/*
 * test_spool_prep.c — prepared spool segments (PREALLOC, src/queue/spool.c
 * and spool_record.c): a segment written full of zeros before its first
 * record ends with zeros, and recovery must read that zero tail as a clean
 * end (no damage, every message back), cut a torn record followed by zeros,
 * keep the records after damage in the middle, and take an all-zero
 * segment as an empty one. The writer's side: a fresh spool appends into
 * prepared space, a spare is prepared ahead and removed at close, and one
 * a crash left is removed at open.
 *
 * The recovery tests build the files themselves with the public record
 * encoders, so they need nothing of the writer; they use only the spool's
 * public interface to look at the result.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"
#include "queue/queue.h"
#include "queue/spool_internal.h"
#include "spool_fixture.h"

#define NONCE 0x0fedcba987654321ull
#define PREP (256u * 1024u) /* size of the prepared files made here */

/* ---- helpers ------------------------------------------------------------ */

static void fill_data(char *p, size_t n, unsigned seed)
{
	uint32_t x = seed * 2654435761u + 1;
	for (size_t i = 0; i < n; i++) {
		x = x * 1103515245u + 12345u;
		p[i] = (char)('a' + (x >> 16) % 26); /* never a zero byte */
	}
}

#define DLEN 300

static void put_sync(struct spool *s, struct spool_msg *m, unsigned seed)
{
	char data[DLEN];
	fill_data(data, sizeof(data), seed);
	struct waiter w;
	waiter_init(&w);
	m->size = sizeof(data);
	assert_int_equal(spool_put(s, m, data, sizeof(data), put_cb, &w), TERN_OK);
	waiter_wait(&w, 1);
	assert_int_equal(w.ok, 1);
	waiter_destroy(&w);
}

/* The message is in the spool with its bytes. */
static void assert_msg(struct spool *s, const struct spool_msg *m, unsigned seed)
{
	struct spool_msg *g = spool_get(s, m->id);
	assert_non_null(g);
	assert_string_equal(g->sender, m->sender);
	spool_msg_free(g);
	char want[DLEN];
	fill_data(want, sizeof(want), seed);
	struct tbuf b = TBUF_INIT(1 << 20);
	assert_int_equal(spool_read_data(s, m->id, &b), TERN_OK);
	assert_int_equal(b.len, DLEN);
	assert_memory_equal(b.data, want, DLEN);
	tbuf_free(&b);
}

/* n MSG records (message i has data seed seed0 + i), stamped with nonce;
 * at[i] is where record i starts, at[n] where the last ends. */
static void encode_msgs_as(struct tbuf *b, struct spool_msg **m, int n, size_t *at, uint64_t nonce,
                           unsigned seed0)
{
	for (int i = 0; i < n; i++) {
		char data[DLEN];
		fill_data(data, sizeof(data), seed0 + (unsigned)i);
		at[i] = b->len;
		m[i]->size = DLEN;
		assert_int_equal(spool_rec_encode_msg(b, m[i], data, DLEN, NULL), TERN_OK);
		spool_rec_stamp((uint8_t *)b->data + at[i], nonce);
	}
	at[n] = b->len;
}

static void encode_msgs(struct tbuf *b, struct spool_msg **m, int n, size_t *at)
{
	encode_msgs_as(b, m, n, at, NONCE, 0);
}

/* Writes len bytes of p as segment no of dir, prepared ("-p": then zeros up
 * to size) or not. */
static void write_seg_as(const char *dir, unsigned no, const char *suffix, const void *p,
                         size_t len, size_t size, char *path, size_t pathlen)
{
	snprintf(path, pathlen, "%s/seg-%010u-%016llx%s.log", dir, no, NONCE, suffix);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	if (len)
		assert_int_equal(write(fd, p, len), (ssize_t)len);
	uint8_t z[4096] = {0};
	for (size_t off = len; off < size;) {
		size_t k = size - off < sizeof(z) ? size - off : sizeof(z);
		assert_int_equal(write(fd, z, k), (ssize_t)k);
		off += k;
	}
	close(fd);
}

static void write_seg(const char *dir, unsigned no, bool prepared, const void *p, size_t len,
                      size_t size, char *path, size_t pathlen)
{
	write_seg_as(dir, no, prepared ? "-p" : "", p, len, size, path, pathlen);
}

static off_t file_size(const char *path)
{
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	return st.st_size;
}

/* True when bytes [from, to) of path are all zero. */
static bool file_zero(const char *path, size_t from, size_t to)
{
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	bool z = true;
	for (size_t off = from; off < to && z; off++) {
		uint8_t c;
		assert_int_equal(pread(fd, &c, 1, (off_t)off), 1);
		z = c == 0;
	}
	close(fd);
	return z;
}

static size_t count_files(const char *dir, const char *prefix)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	size_t n = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		n += strncmp(de->d_name, prefix, strlen(prefix)) == 0;
	closedir(d);
	return n;
}

static void free_all(struct spool_msg **m, int n)
{
	for (int i = 0; i < n; i++)
		spool_msg_free(m[i]);
}

/* ---- recovery of prepared segments ---------------------------------------- */

/* A clean shutdown or a crash leaves the current segment with zeros after
 * its last record: every message comes back, nothing is reported, and new
 * records go where the old ones end, into the prepared space. */
static void test_zero_tail_is_a_clean_end(void **st)
{
	(void)st;
	enum { N = 6 };
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[N + 1];
	for (int i = 0; i <= N; i++)
		m[i] = fixture_msg((unsigned)i);
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t at[N + 1];
	encode_msgs(&b, m, N, at);
	char path[512];
	write_seg(td.path, 1, true, b.data, b.len, PREP, path, sizeof(path));

	log_capture_start();
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), N);
	for (int i = 0; i < N; i++)
		assert_msg(s, m[i], (unsigned)i);
	assert_int_equal(spool_foreach_damage(s, NULL, NULL), 0);
	assert_int_equal(log_capture_count("event=spool_damaged", NULL), 0);
	assert_int_equal(log_capture_count("torn_tail", NULL), 0);
	log_capture_stop();
	/* appended into the prepared space: no new segment, no longer file */
	put_sync(s, m[N], N);
	spool_close(s);
	assert_int_equal(count_files(td.path, "seg-"), 1);
	assert_int_equal(file_size(path), PREP);
	assert_false(file_zero(path, at[N], at[N] + 4));

	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), N + 1);
	for (int i = 0; i <= N; i++)
		assert_msg(s, m[i], (unsigned)i);
	assert_int_equal(spool_foreach_damage(s, NULL, NULL), 0);
	spool_close(s);
	tbuf_free(&b);
	free_all(m, N + 1);
	tmpdir_rm(&td);
}

/* A crash during an append into prepared space leaves part of a record
 * (its header whole or not, or bytes that reached the disk out of order)
 * and then the zeros: cut as a torn tail, never reported, nothing before
 * it lost, and the next put lands where it was. Every cut point of the last
 * record, and garbage instead of it. */
static void test_torn_record_then_zeros_is_cut(void **st)
{
	(void)st;
	enum { N = 4 };
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[N + 1];
	for (int i = 0; i <= N; i++)
		m[i] = fixture_msg((unsigned)i);
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t at[N + 1];
	encode_msgs(&b, m, N, at);
	size_t last = at[N - 1], step = (at[N] - last) / 23 + 1;
	log_capture_start();
	int runs = 0;
	for (size_t cut = last + 1; cut < at[N] + 40; cut += cut < last + 40 ? 1 : step) {
		char path[512];
		uint8_t *p = malloc(at[N] + 40);
		memcpy(p, b.data, at[N]);
		size_t len = cut;
		if (cut >= at[N]) { /* garbage after the records instead of a record */
			len = cut - at[N] + last + 1;
			for (size_t i = last; i < len; i++)
				p[i] = (uint8_t)(i * 7 + 1);
		}
		char cmd[600];
		snprintf(cmd, sizeof(cmd), "rm -f %s/seg-*", td.path);
		assert_int_equal(system(cmd), 0);
		write_seg(td.path, 1, true, p, len, PREP, path, sizeof(path));
		free(p);
		struct spool *s;
		assert_int_equal(spool_open(td.path, &s), TERN_OK);
		assert_int_equal(spool_count(s), N - 1);
		for (int i = 0; i < N - 1; i++)
			assert_msg(s, m[i], (unsigned)i);
		assert_null(spool_get(s, m[N - 1]->id));
		assert_int_equal(spool_foreach_damage(s, NULL, NULL), 0);
		/* zeroed, not truncated: the prepared space stays */
		assert_int_equal(file_size(path), PREP);
		assert_true(file_zero(path, last, len));
		put_sync(s, m[N], N);
		spool_close(s);
		assert_int_equal(spool_open(td.path, &s), TERN_OK);
		assert_int_equal(spool_count(s), N);
		assert_msg(s, m[N], N);
		assert_int_equal(spool_foreach_damage(s, NULL, NULL), 0);
		spool_remove(s, m[N]->id);
		spool_close(s);
		runs++;
	}
	assert_int_equal(log_capture_count("event=spool_recover ", "torn_tail"), runs);
	assert_int_equal(log_capture_count("event=spool_damaged", NULL), 0);
	log_capture_stop();
	tbuf_free(&b);
	free_all(m, N + 1);
	tmpdir_rm(&td);
}

/* Damage in the middle of a prepared segment (a flipped bit, a zeroed
 * range: a lost write) costs the records it touches: the records after it
 * are kept, it is reported, and the zero tail is not. */
static void test_damage_in_the_middle_keeps_what_follows(void **st)
{
	(void)st;
	enum { N = 8 };
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[N];
	for (int i = 0; i < N; i++)
		m[i] = fixture_msg((unsigned)i);
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t at[N + 1];
	encode_msgs(&b, m, N, at);
	for (int how = 0; how < 3; how++) {
		uint8_t *p = malloc(b.len);
		memcpy(p, b.data, b.len);
		int lo = 3, hi = 3; /* the records the damage touches */
		if (how == 0) {
			p[at[3] + 100] ^= 0x10; /* a bit of a payload */
		} else if (how == 1) {
			memset(p + at[3] + 10, 0, at[5] - at[3] - 5); /* zeros across records */
			hi = 5;
		} else {
			memset(p + at[3], 0, at[4] - at[3]); /* one record zeroed whole */
		}
		char cmd[600];
		snprintf(cmd, sizeof(cmd), "rm -rf %s/seg-* %s/damaged", td.path, td.path);
		assert_int_equal(system(cmd), 0);
		char path[512];
		write_seg(td.path, 1, true, p, b.len, PREP, path, sizeof(path));
		free(p);
		struct spool *s;
		assert_int_equal(spool_open(td.path, &s), TERN_OK);
		for (int i = 0; i < N; i++) {
			if (i >= lo && i <= hi)
				assert_null(spool_get(s, m[i]->id));
			else
				assert_msg(s, m[i], (unsigned)i);
		}
		/* one range, the damage; the zeros after the last record are none */
		assert_int_equal(spool_foreach_damage(s, NULL, NULL), 1);
		spool_close(s);
		/* the file is kept as it was, zeros and all */
		assert_int_equal(file_size(path), PREP);
	}
	tbuf_free(&b);
	free_all(m, N);
	tmpdir_rm(&td);
}

/* A segment prepared and renamed into place, then a crash before its first
 * record: all zeros. Alone, or after a segment with records. Neither is
 * damage; the empty one becomes the current segment. */
static void test_all_zero_prepared_segment(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[3];
	for (int i = 0; i < 3; i++)
		m[i] = fixture_msg((unsigned)i);
	char path[512], p2[512];

	/* alone */
	write_seg(td.path, 1, true, NULL, 0, PREP, path, sizeof(path));
	struct spool *s;
	log_capture_start();
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 0);
	assert_int_equal(spool_foreach_damage(s, NULL, NULL), 0);
	put_sync(s, m[0], 0);
	spool_close(s);
	assert_int_equal(log_capture_count("event=spool_damaged", NULL), 0);
	assert_int_equal(log_capture_count("torn_tail", NULL), 0);
	log_capture_stop();
	assert_int_equal(count_files(td.path, "seg-"), 1);
	assert_int_equal(file_size(path), PREP);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 1);
	assert_msg(s, m[0], 0);
	spool_close(s);

	/* after a segment with records (an appended one, as older spools have) */
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -f %s/seg-*", td.path);
	assert_int_equal(system(cmd), 0);
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t at[2];
	encode_msgs(&b, m + 1, 1, at);
	write_seg(td.path, 1, false, b.data, b.len, b.len, path, sizeof(path));
	write_seg(td.path, 2, true, NULL, 0, PREP, p2, sizeof(p2));
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 1);
	assert_msg(s, m[1], 0);
	assert_int_equal(spool_foreach_damage(s, NULL, NULL), 0);
	put_sync(s, m[2], 2);
	spool_close(s);
	/* the put went into the empty prepared segment */
	assert_int_equal(count_files(td.path, "seg-"), 2);
	assert_int_equal(file_size(path), (off_t)b.len);
	assert_false(file_zero(p2, 0, 4));
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 2);
	assert_msg(s, m[1], 0);
	assert_msg(s, m[2], 2);
	spool_close(s);
	tbuf_free(&b);
	free_all(m, 3);
	tmpdir_rm(&td);
}

/* In a segment that was not prepared nothing changes: zeros at its end
 * may be a lost write of acknowledged records, so they are reported. */
static void test_zeros_in_an_appended_segment_are_still_damage(void **st)
{
	(void)st;
	enum { N = 3 };
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[N];
	for (int i = 0; i < N; i++)
		m[i] = fixture_msg((unsigned)i);
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t at[N + 1];
	encode_msgs(&b, m, N, at);
	char path[512];
	write_seg(td.path, 1, false, b.data, b.len, b.len + 4096, path, sizeof(path));
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), N);
	assert_int_equal(spool_foreach_damage(s, NULL, NULL), 1);
	spool_close(s);
	assert_int_equal(file_size(path), (off_t)b.len + 4096);
	tbuf_free(&b);
	free_all(m, N);
	tmpdir_rm(&td);
}

struct membuf {
	const uint8_t *p;
	size_t n;
	uint64_t end; /* where the last record reported ends */
};

static int mb_read(void *arg, uint64_t off, void *buf, size_t n)
{
	struct membuf *m = arg;
	if (off > m->n || n > m->n - off)
		return TERN_EIO;
	memcpy(buf, m->p + off, n);
	return TERN_OK;
}

static int mb_record(void *arg, const struct spool_rec_hdr *h, const uint8_t *p, uint64_t off)
{
	struct membuf *m = arg;
	(void)p;
	m->end = off + h->hdr_len + h->len;
	return TERN_OK;
}

static int mb_damage(void *arg, const struct spool_scan_damage *d)
{
	(void)arg;
	(void)d;
	return TERN_OK;
}

/* Found by fuzz_spool_record: damage, then a record whose last bytes are
 * zeros, with or without the prepared zeros after it (a prepared segment
 * filled up, or grown past its prepared size). The zero tail starts after
 * that record, never inside it (recovery takes zero_off as the end of what
 * the segment uses). */
static void test_zero_tail_never_starts_inside_a_record(void **st)
{
	(void)st;
	struct spool_msg *m[2] = {fixture_msg(0), fixture_msg(1)};
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t at[3];
	encode_msgs(&b, m, 2, at);
	/* a DEL record's payload is the id; a message with data ending in
	 * zeros: re-encode message 1 so */
	b.len = at[1];
	char data[DLEN];
	fill_data(data, sizeof(data), 1);
	memset(data + DLEN - 8, 0, 8);
	assert_int_equal(spool_rec_encode_msg(&b, m[1], data, DLEN, NULL), TERN_OK);
	spool_rec_stamp((uint8_t *)b.data + at[1], NONCE);
	size_t end = b.len;
	struct tbuf pay = TBUF_INIT(SPOOL_REC_MAX_PAYLOAD);
	for (size_t size = end; size <= end + 5000; size += 5000) {
		uint8_t *p = calloc(size, 1);
		memcpy(p, b.data, end);
		p[at[0] + 50] ^= 0x20; /* damage in record 0 */
		struct membuf mb = {.p = p, .n = size};
		struct spool_scan_ops ops = {&mb, mb_read, mb_record, mb_damage};
		const struct spool_seg_fmt f = {
		    .version = SPOOL_REC_V2, .nonce = NONCE, .prepared = true};
		struct spool_scan_result res;
		assert_int_equal(spool_scan(&ops, size, &f, &pay, &res), TERN_OK);
		assert_int_equal(res.n_damaged, 1);
		assert_int_equal(mb.end, end); /* record 1 found whole */
		assert_int_equal(res.torn_off, end);
		assert_int_equal(res.zero_off, end);
		free(p);
	}
	tbuf_free(&pay);
	tbuf_free(&b);
	free_all(m, 2);
}

/* ---- the writer ------------------------------------------------------------ */

static bool stats_prepared_over(struct spool *s, uint64_t min)
{
	struct spool_stats ss;
	for (int i = 0; i < 1000; i++) { /* bounded: 10 s */
		spool_get_stats(s, &ss);
		if (ss.prepared > min)
			return true;
		usleep(10 * 1000);
	}
	return false;
}

/* A fresh spool appends into a prepared segment; a spare is prepared ahead
 * (hidden, not a segment) and removed at close; one left by a crash is
 * removed at open; the stats count the records' bytes, and the zeros
 * apart. Past the prepared space the spool moves on to the spare. */
static void test_writer_prepares_ahead(void **st)
{
	(void)st;
	enum { N = 16 };
	struct tmpdir td;
	tmpdir_make(&td);
	char stale[512];
	snprintf(stale, sizeof(stale), "%s/.prep-00000000deadbeef", td.path);
	int fd = open(stale, O_WRONLY | O_CREAT, 0600);
	assert_true(fd >= 0);
	close(fd);
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(access(stale, F_OK), -1); /* a crash's leftover: gone */
	struct spool_msg *m[N];
	for (int i = 0; i < N; i++)
		m[i] = fixture_msg((unsigned)i);
	put_sync(s, m[0], 0);
	struct spool_stats ss;
	spool_get_stats(s, &ss);
	assert_true(ss.bytes > DLEN && ss.bytes < 4096);
	/* the current segment's rest and, soon, the spare */
	assert_true(stats_prepared_over(s, 1024 * 1024));
	assert_int_equal(count_files(td.path, ".prep-"), 1);
	DIR *d = opendir(td.path);
	struct dirent *de;
	size_t prepared_segs = 0;
	while ((de = readdir(d)))
		prepared_segs +=
		    strncmp(de->d_name, "seg-", 4) == 0 && strstr(de->d_name, "-p.log") != NULL;
	closedir(d);
	assert_int_equal(prepared_segs, 1);
	spool_close(s);
	assert_int_equal(count_files(td.path, ".prep-"), 0);

	/* past the prepared space: onto the spare, not a growing file */
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	char *big = malloc(200 * 1024);
	fill_data(big, 200 * 1024, 1);
	for (int i = 1; i < N; i++) {
		assert_true(stats_prepared_over(s, 1024 * 1024)); /* the spare is ready */
		struct waiter w;
		waiter_init(&w);
		m[i]->size = 200 * 1024;
		assert_int_equal(spool_put(s, m[i], big, 200 * 1024, put_cb, &w), TERN_OK);
		waiter_wait(&w, 1);
		assert_int_equal(w.ok, 1);
		waiter_destroy(&w);
	}
	spool_get_stats(s, &ss);
	assert_true(ss.segments >= 2);
	spool_close(s);
	free(big);
	/* every segment was prepared */
	d = opendir(td.path);
	while ((de = readdir(d)))
		if (strncmp(de->d_name, "seg-", 4) == 0)
			assert_non_null(strstr(de->d_name, "-p.log"));
	closedir(d);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), N);
	assert_msg(s, m[0], 0);
	assert_int_equal(spool_foreach_damage(s, NULL, NULL), 0);
	spool_close(s);
	free_all(m, N);
	tmpdir_rm(&td);
}

/* A disk too full to prepare (here a file size limit below the prepared
 * size): logged, and the spool appends to a growing file as it did before;
 * nothing is lost, nothing is refused that fits. */
static void test_prepare_failure_falls_back_to_appending(void **st)
{
	(void)st;
	enum { N = 5 };
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[N];
	for (int i = 0; i < N; i++)
		m[i] = fixture_msg((unsigned)i);
	struct rlimit old, lim;
	getrlimit(RLIMIT_FSIZE, &old);
	lim = old;
	lim.rlim_cur = 256 * 1024; /* under the 1 MiB a first segment is prepared to */
	signal(SIGXFSZ, SIG_IGN);
	log_capture_start();
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	for (int i = 0; i < N; i++)
		put_sync(s, m[i], (unsigned)i);
	spool_close(s);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	assert_true(log_capture_count("event=spool_prepare_failed", "action=append") >= 1);
	log_capture_stop();
	/* an appended segment (no "-p"), no spare left behind */
	assert_int_equal(count_files(td.path, "seg-"), 1);
	assert_int_equal(count_files(td.path, ".prep-"), 0);
	DIR *d = opendir(td.path);
	struct dirent *de;
	while ((de = readdir(d)))
		if (strncmp(de->d_name, "seg-", 4) == 0)
			assert_null(strstr(de->d_name, "-p.log"));
	closedir(d);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), N);
	for (int i = 0; i < N; i++)
		assert_msg(s, m[i], (unsigned)i);
	assert_int_equal(spool_foreach_damage(s, NULL, NULL), 0);
	spool_close(s);
	free_all(m, N);
	tmpdir_rm(&td);
}

/* ---- recycled segments (RECYCLE) ------------------------------------------ */

#define OLD_NONCE 0x1122334455667788ull /* the file's past */

/* A recycled segment: the records written into it (NONCE), then its past:
 * records of the segment it was (OLD_NONCE), then zeros. m[0..N) are ours,
 * m[N..N+K) the old ones; returns where ours end. `mid`: what to do to our
 * records (0 nothing, 1 cut the last one short, 2 garbage in the middle). */
static size_t write_recycled(const char *dir, struct spool_msg **m, int n, int k, int mid,
                             char *path, size_t pathlen)
{
	struct tbuf ours = TBUF_INIT(1 << 20), old = TBUF_INIT(1 << 20);
	size_t at[16], ot[16];
	encode_msgs(&ours, m, n, at);
	encode_msgs_as(&old, m + n, k, ot, OLD_NONCE, 1000); /* other bytes than ours */
	size_t end = at[n];
	uint8_t *p = calloc(1, PREP);
	assert_non_null(p);
	memcpy(p, old.data, old.len + 3 * 4096 <= PREP ? old.len : 0); /* the past, from 0 */
	if (mid == 1)
		end = at[n - 1] + (at[n] - at[n - 1]) / 2; /* the last record cut short */
	memcpy(p, ours.data, end);                         /* written over it */
	if (mid == 2)
		memset(p + at[1] + 5, 0x5a, 40); /* damage inside record 1 */
	write_seg_as(dir, 1, "-r", p, old.len > end ? old.len : end, PREP, path, pathlen);
	free(p);
	tbuf_free(&ours);
	tbuf_free(&old);
	return mid == 1 ? at[n - 1] : end;
}

/* One recycled segment on disk and the spool opened on it: m[0..n) ours,
 * m[n..n+k) its past, m[n+k] a spare message; `mid` as for write_recycled.
 * The log is captured from before the open. */
struct recycled {
	struct tmpdir td;
	struct spool_msg *m[16];
	int n, k;
	char path[512];
	size_t end;
	struct spool *s;
};

static void recycled_open(struct recycled *r, int n, int k, int mid)
{
	r->n = n;
	r->k = k;
	tmpdir_make(&r->td);
	for (int i = 0; i <= n + k; i++)
		r->m[i] = fixture_msg((unsigned)i);
	r->end = write_recycled(r->td.path, r->m, n, k, mid, r->path, sizeof(r->path));
	log_capture_start();
	assert_int_equal(spool_open(r->td.path, &r->s), TERN_OK);
}

/* The messages whose bit is set in `present` are in the spool with their
 * bytes, no other (the past never is); `damaged` ranges are reported. */
static void recycled_expect(struct recycled *r, unsigned present, size_t damaged)
{
	size_t count = 0;
	for (int i = 0; i < r->n + r->k; i++) {
		if (present & (1u << i)) {
			assert_msg(r->s, r->m[i], (unsigned)i);
			count++;
		} else {
			assert_null(spool_get(r->s, r->m[i]->id));
		}
	}
	assert_int_equal(spool_count(r->s), count);
	assert_int_equal(spool_foreach_damage(r->s, NULL, NULL), damaged);
}

static void recycled_done(struct recycled *r)
{
	spool_close(r->s);
	free_all(r->m, r->n + r->k + 1);
	tmpdir_rm(&r->td);
}

/* After the last record of a recycled segment come the records of its past
 * (another nonce) and zeros: a clean end, none of them comes back, nothing
 * is reported, and the next put goes right after the last record. */
static void test_recycled_segment_ends_at_its_last_record(void **st)
{
	(void)st;
	struct recycled r;
	recycled_open(&r, 3, 6, 0);
	recycled_expect(&r, 0x7, 0);
	assert_int_equal(log_capture_count("event=spool_damaged", NULL), 0);
	assert_int_equal(log_capture_count("torn_tail", NULL), 0);
	log_capture_stop();
	put_sync(r.s, r.m[9], 9);
	spool_close(r.s);
	assert_int_equal(file_size(r.path), PREP); /* written over, not grown */
	assert_false(file_zero(r.path, r.end, r.end + 4));
	assert_int_equal(spool_open(r.td.path, &r.s), TERN_OK);
	assert_int_equal(spool_count(r.s), 4);
	assert_msg(r.s, r.m[9], 9);
	assert_int_equal(spool_foreach_damage(r.s, NULL, NULL), 0);
	recycled_done(&r);
}

/* A crash during an append into a recycled segment: the record cut short
 * is a torn tail (cut off, not reported), the ones before it stay, the
 * past after it never comes back. */
static void test_recycled_torn_record_is_cut(void **st)
{
	(void)st;
	struct recycled r;
	recycled_open(&r, 3, 6, 1);
	recycled_expect(&r, 0x3, 0);
	assert_int_equal(log_capture_count("torn_tail", NULL), 1);
	log_capture_stop();
	assert_int_equal(file_size(r.path), (off_t)r.end); /* nothing of the past left */
	recycled_done(&r);
}

/* Damage among a recycled segment's records is damage, as anywhere: the
 * records after it are kept, the past after them is not read. */
static void test_recycled_damage_in_the_middle_keeps_what_follows(void **st)
{
	(void)st;
	struct recycled r;
	recycled_open(&r, 4, 6, 2);
	log_capture_stop();
	recycled_expect(&r, 0xd, 1); /* 0, 2 and 3: not 1 */
	recycled_done(&r);
}

/* The writer: a finished segment's file becomes a later segment ("-r"),
 * the removed messages in it never come back, the live ones all do. */
static void test_writer_recycles_finished_segments(void **st)
{
	(void)st;
	enum { N = 24, BIG = 200 * 1024 };
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[N];
	for (int i = 0; i < N; i++)
		m[i] = fixture_msg((unsigned)i);
	char *big = malloc(BIG);
	log_capture_start();
	log_set_level(LOG_LVL_INFO); /* the segment lines */
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	spool_debug_set_segment_max(s, 1024 * 1024); /* spares of 1 MiB, the least kept */
	for (int i = 0; i < N; i++) {
		if (i == N / 2) /* the first half finished: their segments go */
			for (int k = 0; k < N / 2; k++)
				assert_int_equal(spool_remove(s, m[k]->id), TERN_OK);
		fill_data(big, BIG, (unsigned)i);
		struct waiter w;
		waiter_init(&w);
		m[i]->size = BIG;
		assert_int_equal(spool_put(s, m[i], big, BIG, put_cb, &w), TERN_OK);
		waiter_wait(&w, 1);
		assert_int_equal(w.ok, 1);
		waiter_destroy(&w);
	}
	spool_close(s);
	assert_true(log_capture_count("event=spool_segment_recycled", NULL) >= 1);
	assert_true(log_capture_count("event=spool_segment_new", "recycled=1") >= 1);
	log_set_level(LOG_LVL_WARN);
	log_capture_stop();
	assert_true(count_files(td.path, "seg-") >= 2);
	assert_int_equal(count_files(td.path, ".prep-"), 0); /* the bin emptied at close */
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), N - N / 2);
	for (int i = 0; i < N / 2; i++)
		assert_null(spool_get(s, m[i]->id));
	struct tbuf b = TBUF_INIT(1 << 20);
	for (int i = N / 2; i < N; i++) {
		fill_data(big, BIG, (unsigned)i);
		tbuf_reset(&b);
		assert_int_equal(spool_read_data(s, m[i]->id, &b), TERN_OK);
		assert_int_equal(b.len, BIG);
		assert_memory_equal(b.data, big, BIG);
	}
	assert_int_equal(spool_foreach_damage(s, NULL, NULL), 0);
	spool_close(s);
	tbuf_free(&b);
	free(big);
	free_all(m, N);
	tmpdir_rm(&td);
}

int main(void)
{
	log_set_level(LOG_LVL_WARN);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_zero_tail_is_a_clean_end),
	    cmocka_unit_test(test_torn_record_then_zeros_is_cut),
	    cmocka_unit_test(test_damage_in_the_middle_keeps_what_follows),
	    cmocka_unit_test(test_all_zero_prepared_segment),
	    cmocka_unit_test(test_zeros_in_an_appended_segment_are_still_damage),
	    cmocka_unit_test(test_zero_tail_never_starts_inside_a_record),
	    cmocka_unit_test(test_writer_prepares_ahead),
	    cmocka_unit_test(test_prepare_failure_falls_back_to_appending),
	    cmocka_unit_test(test_recycled_segment_ends_at_its_last_record),
	    cmocka_unit_test(test_recycled_torn_record_is_cut),
	    cmocka_unit_test(test_recycled_damage_in_the_middle_keeps_what_follows),
	    cmocka_unit_test(test_writer_recycles_finished_segments),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
