/*
 * test_spill.c — large messages in their own spool file (src/queue/spill.c,
 * the spill reference of a MSG record, issue 11 item 2). What a caller
 * depends on: a spilled message reads back whole (record data, then the
 * file), survives a restart, its file goes when the message does, a file
 * no record names is removed at open, and a record whose file is missing
 * or damaged is never delivered as if it were whole.
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
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"
#include "queue/queue.h"
#include "queue/spill.h"
#include "queue/spool_internal.h"

struct waiter {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done, err;
};

static void put_cb(void *arg, int err)
{
	struct waiter *w = arg;
	pthread_mutex_lock(&w->mu);
	w->done = 1;
	w->err = err;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

static char tmp[256];

static void rm_rf(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char p[1024];
		snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
		struct stat st;
		if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
			rm_rf(p);
		else
			unlink(p);
	}
	closedir(d);
	rmdir(dir);
}

static int setup(void **st)
{
	(void)st;
	const char *base = getenv("TMPDIR");
	snprintf(tmp, sizeof(tmp), "%s/tern-spill-XXXXXX", base ? base : "/tmp");
	assert_non_null(mkdtemp(tmp));
	return 0;
}

static int teardown(void **st)
{
	(void)st;
	rm_rf(tmp);
	return 0;
}

static struct spool_msg *make_env(void)
{
	struct spool_msg *m = calloc(1, sizeof(*m));
	assert_non_null(m);
	queue_id_new(m->id);
	m->sender = strdup("a@example.org");
	m->client = strdup("addr=127.0.0.1 helo=x");
	m->created = 1700000000;
	m->n_rcpts = 1;
	m->rcpts = calloc(1, sizeof(*m->rcpts));
	m->rcpts[0].addr = strdup("b@example.com");
	return m;
}

static bool file_exists(const char *name)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/%s/%s", tmp, SPILL_DIR, name);
	return access(p, F_OK) == 0;
}

/* Writes a spill file of n pattern bytes for m, synced, and fills in m's reference. */
static void write_spill(struct spool_msg *m, size_t n)
{
	struct spill_file f;
	assert_int_equal(spill_create(tmp, m->id, &f), TERN_OK);
	char buf[4096];
	size_t done = 0;
	while (done < n) {
		size_t k = n - done < sizeof(buf) ? n - done : sizeof(buf);
		for (size_t i = 0; i < k; i++)
			buf[i] = (char)('a' + (done + i) % 26);
		assert_int_equal(spill_write(&f, buf, k), TERN_OK);
		done += k;
	}
	assert_int_equal(spill_sync(&f), TERN_OK);
	m->spill = strdup(f.name);
	m->spill_size = f.size;
	m->spill_crc = f.crc;
	spill_close(&f);
}

static void put_wait(struct spool *s, struct spool_msg *m, const char *d, size_t n)
{
	struct waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
	assert_int_equal(spool_put(s, m, d, n, put_cb, &w), TERN_OK);
	pthread_mutex_lock(&w.mu);
	while (!w.done)
		pthread_cond_wait(&w.cv, &w.mu);
	pthread_mutex_unlock(&w.mu);
	assert_int_equal(w.err, TERN_OK);
}

static void assert_whole(struct spool *s, const char *id, const char *pre, size_t n)
{
	struct tbuf b = TBUF_INIT((size_t)1 << 30);
	assert_int_equal(spool_read_data(s, id, &b), TERN_OK);
	size_t pl = strlen(pre);
	assert_int_equal(b.len, pl + n);
	assert_memory_equal(b.data, pre, pl);
	for (size_t i = 0; i < n; i++)
		if (b.data[pl + i] != (char)('a' + i % 26))
			fail_msg("byte %zu differs", i);
	tbuf_free(&b);
}

/* The record carries the reference as a typed field (flag bit 6): it
 * decodes to the same name, size and CRC, and the message size counts the
 * file; a name that could leave the directory is refused both ways. */
static void test_record_spill_field_round_trips(void **st)
{
	(void)st;
	struct spool_msg *m = make_env();
	m->spill = strdup("X.msg");
	m->spill_size = 5000000000ull;
	m->spill_off = 1000;
	m->spill_crc = 0xdeadbeef;
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t doff;
	assert_int_equal(spool_rec_encode_msg(&b, m, "Received: x\r\n", 13, &doff), TERN_OK);
	const uint8_t *pl = (const uint8_t *)b.data + SPOOL_REC_HDR;
	struct spool_msg *d = NULL;
	assert_int_equal(spool_rec_decode_msg(pl, b.len - SPOOL_REC_HDR, &d, &doff), TERN_OK);
	assert_string_equal(d->spill, "X.msg");
	assert_true(d->spill_size == 5000000000ull);
	assert_int_equal(d->spill_crc, 0xdeadbeef);
	assert_int_equal(d->spill_off, 1000);
	assert_true(d->size == 5000000000ull - 1000 + 13);
	assert_memory_equal(pl + doff, "Received: x\r\n", 13);
	struct spool_msg *c = spool_msg_dup(d);
	assert_string_equal(c->spill, "X.msg");
	spool_msg_free(c);
	spool_msg_free(d);

	tbuf_reset(&b);
	free(m->spill);
	m->spill = strdup("../seg-0000000001.log");
	assert_int_equal(spool_rec_encode_msg(&b, m, "x", 1, &doff), TERN_EINVAL);
	assert_false(spool_spill_name_ok("../x", 4));
	assert_false(spool_spill_name_ok(".hidden", 7));
	assert_false(spool_spill_name_ok("a/b", 3));
	assert_true(spool_spill_name_ok("AbC-1_2.msg", 11));
	free(m->spill);
	m->spill = strdup("X.msg");
	m->spill_off = m->spill_size + 1; /* past the end of the file */
	assert_int_equal(spool_rec_encode_msg(&b, m, "x", 1, &doff), TERN_EINVAL);
	tbuf_free(&b);
	spool_msg_free(m);
}

/* A spilled message reads back whole, before and after a restart, and
 * spool_read_head gives the record's data and only the start of the file. */
static void test_spilled_message_reads_back_whole_after_restart(void **st)
{
	(void)st;
	struct spool *s;
	assert_int_equal(spool_open(tmp, &s), TERN_OK);
	struct spool_msg *m = make_env();
	const size_t n = 3 * 1024 * 1024 + 7;
	write_spill(m, n);
	const char *pre = "Received: from x by y\r\n";
	put_wait(s, m, pre, strlen(pre));
	assert_whole(s, m->id, pre, n);
	spool_close(s);

	assert_int_equal(spool_open(tmp, &s), TERN_OK);
	struct spool_msg *g = spool_get(s, m->id);
	assert_non_null(g);
	assert_string_equal(g->spill, m->spill);
	assert_true(g->size == strlen(pre) + n);
	spool_msg_free(g);
	assert_whole(s, m->id, pre, n);
	struct tbuf h = TBUF_INIT(1 << 20);
	uint64_t off = 0;
	assert_int_equal(spool_read_head(s, m->id, 100, &h, &off), TERN_OK);
	assert_int_equal(off, 100);
	assert_int_equal(h.len, strlen(pre) + 100);
	assert_memory_equal(h.data + strlen(pre), "abcdefghij", 10);
	tbuf_free(&h);
	spool_close(s);
	spool_msg_free(m);
}

/* The client's header block is in the record (where checks may change
 * it) and skipped in the file: the message is the record's data, then the
 * file from spill_off on; the CRC still covers the whole file. */
static void test_header_block_comes_from_the_record(void **st)
{
	(void)st;
	struct spool *s;
	assert_int_equal(spool_open(tmp, &s), TERN_OK);
	struct spool_msg *m = make_env();
	write_spill(m, 100000);
	m->spill_off = 26;
	const char *rec = "R\r\nABCDEFGHIJKLMNOPQRSTUVWXYZ";
	put_wait(s, m, rec, strlen(rec));
	spool_close(s);
	assert_int_equal(spool_open(tmp, &s), TERN_OK);
	struct tbuf b = TBUF_INIT(1 << 20);
	assert_int_equal(spool_read_data(s, m->id, &b), TERN_OK);
	assert_int_equal(b.len, strlen(rec) + 100000 - 26);
	assert_memory_equal(b.data, rec, strlen(rec));
	assert_memory_equal(b.data + strlen(rec), "abcdef", 6);
	struct spool_msg *g = spool_get(s, m->id);
	assert_true(g->size == b.len);
	spool_msg_free(g);
	tbuf_reset(&b);
	uint64_t off = 0;
	assert_int_equal(spool_read_head(s, m->id, 10, &b, &off), TERN_OK);
	assert_int_equal(off, 36);
	assert_int_equal(b.len, strlen(rec) + 10);
	tbuf_free(&b);
	spool_close(s);
	spool_msg_free(m);
}

/* The file goes with the message: once it is removed (and its DEL is
 * written, which spool_close waits for) the file is gone. */
static void test_spill_file_goes_with_its_message(void **st)
{
	(void)st;
	struct spool *s;
	assert_int_equal(spool_open(tmp, &s), TERN_OK);
	struct spool_msg *m = make_env();
	write_spill(m, 10000);
	put_wait(s, m, "R\r\n", 3);
	assert_true(file_exists(m->spill));
	assert_int_equal(spool_update_rcpt(s, m->id, 0, RCPT_DELIVERED, 0, "250 ok"), TERN_OK);
	spool_close(s);
	assert_false(file_exists(m->spill));
	assert_int_equal(spool_open(tmp, &s), TERN_OK);
	assert_int_equal(spool_count(s), 0);
	spool_close(s);
	spool_msg_free(m);
}

/* kill -9 between the file and its record: the file is removed at open. */
static void test_orphan_spill_file_is_removed_at_open(void **st)
{
	(void)st;
	struct spool *s;
	assert_int_equal(spool_open(tmp, &s), TERN_OK);
	struct spool_msg *keep = make_env(), *orphan = make_env();
	write_spill(keep, 5000);
	put_wait(s, keep, "R\r\n", 3);
	spool_close(s);
	write_spill(orphan, 5000); /* no record names it */
	assert_true(file_exists(orphan->spill));
	assert_int_equal(spool_open(tmp, &s), TERN_OK);
	assert_false(file_exists(orphan->spill));
	assert_true(file_exists(keep->spill));
	assert_whole(s, keep->id, "R\r\n", 5000);
	spool_close(s);
	spool_msg_free(keep);
	spool_msg_free(orphan);
}

/* A record whose file is missing, short or changed is never read as whole:
 * it stays in the queue (for the operator) and every read fails. */
static void test_missing_short_or_damaged_file_is_never_read_as_whole(void **st)
{
	(void)st;
	struct spool *s;
	assert_int_equal(spool_open(tmp, &s), TERN_OK);
	struct spool_msg *gone = make_env(), *shrt = make_env(), *flip = make_env();
	write_spill(gone, 5000);
	write_spill(shrt, 5000);
	write_spill(flip, 5000);
	put_wait(s, gone, "R\r\n", 3);
	put_wait(s, shrt, "R\r\n", 3);
	put_wait(s, flip, "R\r\n", 3);
	spool_close(s);
	char p[512];
	snprintf(p, sizeof(p), "%s/%s/%s", tmp, SPILL_DIR, gone->spill);
	assert_int_equal(unlink(p), 0);
	snprintf(p, sizeof(p), "%s/%s/%s", tmp, SPILL_DIR, shrt->spill);
	assert_int_equal(truncate(p, 4000), 0);
	snprintf(p, sizeof(p), "%s/%s/%s", tmp, SPILL_DIR, flip->spill);
	int fd = open(p, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, "Z", 1, 2500), 1);
	close(fd);

	assert_int_equal(spool_open(tmp, &s), TERN_OK);
	assert_int_equal(spool_count(s), 3);
	struct tbuf b = TBUF_INIT(1 << 20);
	assert_int_equal(spool_read_data(s, gone->id, &b), TERN_ECORRUPT);
	tbuf_reset(&b);
	assert_int_equal(spool_read_data(s, shrt->id, &b), TERN_ECORRUPT);
	tbuf_reset(&b);
	assert_int_equal(spool_read_data(s, flip->id, &b), TERN_ECORRUPT);
	tbuf_free(&b);
	spool_close(s);
	spool_msg_free(gone);
	spool_msg_free(shrt);
	spool_msg_free(flip);
}

/* Compaction copies the record forward with the same reference; the file
 * stays until the message is finished. */
static void test_compaction_keeps_the_file(void **st)
{
	(void)st;
	struct spool *s;
	assert_int_equal(spool_open(tmp, &s), TERN_OK);
	spool_debug_set_segment_max(s, 4096);
	struct spool_msg *m = make_env();
	write_spill(m, 20000);
	put_wait(s, m, "R\r\n", 3);
	/* fill and finish enough small messages that m's segment is mostly dead */
	for (int i = 0; i < 40; i++) {
		struct spool_msg *k = make_env();
		char d[600];
		memset(d, 'x', sizeof(d));
		put_wait(s, k, d, sizeof(d));
		assert_int_equal(spool_update_rcpt(s, k->id, 0, RCPT_DELIVERED, 0, "250"), TERN_OK);
		spool_msg_free(k);
	}
	assert_true(spool_maintain(s) >= 0);
	assert_true(file_exists(m->spill));
	assert_whole(s, m->id, "R\r\n", 20000);
	spool_close(s);
	assert_int_equal(spool_open(tmp, &s), TERN_OK);
	assert_whole(s, m->id, "R\r\n", 20000);
	spool_close(s);
	spool_msg_free(m);
}

int main(void)
{
	log_set_level(LOG_LVL_INFO);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_record_spill_field_round_trips),
	    cmocka_unit_test_setup_teardown(test_spilled_message_reads_back_whole_after_restart,
	                                    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_header_block_comes_from_the_record, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_spill_file_goes_with_its_message, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_orphan_spill_file_is_removed_at_open, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(
	        test_missing_short_or_damaged_file_is_never_read_as_whole, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_compaction_keeps_the_file, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
