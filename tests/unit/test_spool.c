/*
 * test_spool.c — the durable spool (src/queue/spool.c, spool_record.c):
 * what a caller depends on is that an acknowledged put survives a restart
 * with the same envelope and bytes, that recipient results survive too,
 * that finished messages and their files go away, and that a torn or
 * damaged file never crashes recovery or brings back garbage.
 *
 * (The throughput figure, puts/s and commits/puts, is bench/spool_bench.c.)
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"
#include "queue/queue.h"
#include "queue/spool_internal.h"
#include "spool_fixture.h"

/* ---- helpers ------------------------------------------------------------ */

static size_t count_segment_files(const char *dir)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	size_t n = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		n += strncmp(de->d_name, "seg-", 4) == 0;
	closedir(d);
	return n;
}

/* The path of segment no in dir, whatever its format ("" if there is none). */
static bool seg_find_file(const char *dir, unsigned no, char *out, size_t outlen)
{
	char prefix[32];
	snprintf(prefix, sizeof(prefix), "seg-%010u", no);
	out[0] = '\0';
	DIR *d = opendir(dir);
	if (!d)
		return false;
	struct dirent *de;
	while ((de = readdir(d)))
		if (strncmp(de->d_name, prefix, strlen(prefix)) == 0 &&
		    (de->d_name[14] == '.' || de->d_name[14] == '-'))
			snprintf(out, outlen, "%s/%s", dir, de->d_name);
	closedir(d);
	return out[0] != '\0';
}

static void seg_file(const char *dir, unsigned no, char *out, size_t outlen)
{
	assert_true(seg_find_file(dir, no, out, outlen));
}

/* The record format of a segment file, from its name. */
static struct spool_seg_fmt path_fmt(const char *path)
{
	const char *nm = strrchr(path, '/');
	nm = nm ? nm + 1 : path;
	struct spool_seg_fmt f = {SPOOL_REC_V1, 0, false, false};
	if (strlen(nm) == 35 || strlen(nm) == 37) {
		f.version = SPOOL_REC_V2;
		f.nonce = strtoull(nm + 15, NULL, 16);
		f.prepared = strlen(nm) == 37 && strstr(nm, "-p.log") != NULL;
		f.recycled = strlen(nm) == 37 && strstr(nm, "-r.log") != NULL;
	}
	return f;
}

#define TEST_NONCE 0x0123456789abcdefull

/* What the encoders write before the committer stamps a nonce. */
static const struct spool_seg_fmt fmt0 = {SPOOL_REC_V2, 0, false, false};

static off_t file_size(const char *path)
{
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	return st.st_size;
}

static int fd_read(void *arg, uint64_t off, void *buf, size_t n)
{
	return pread(*(int *)arg, buf, n, (off_t)off) == (ssize_t)n ? TERN_OK : TERN_EIO;
}

static int ign_record(void *arg, const struct spool_rec_hdr *h, const uint8_t *p, uint64_t off)
{
	(void)arg;
	(void)h;
	(void)p;
	(void)off;
	return TERN_OK;
}

static int ign_damage(void *arg, const struct spool_scan_damage *d)
{
	(void)arg;
	(void)d;
	return TERN_OK;
}

/* PREALLOC: the bytes of segment file path that hold records (a prepared
 * segment is longer: zeros follow). */
static off_t seg_used(const char *path)
{
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	struct spool_seg_fmt f = path_fmt(path);
	struct spool_scan_ops ops = {&fd, fd_read, ign_record, ign_damage};
	struct spool_scan_result res;
	struct tbuf pay = TBUF_INIT(SPOOL_REC_MAX_PAYLOAD);
	assert_int_equal(spool_scan(&ops, (uint64_t)file_size(path), &f, &pay, &res), TERN_OK);
	tbuf_free(&pay);
	close(fd);
	return (off_t)res.zero_off;
}

/* Log lines go to a file so tests can check what recovery reported. */
/* A deterministic envelope whose fields all depend on seed. */
static struct spool_msg *make_env(unsigned seed, size_t n_rcpts)
{
	struct spool_msg *m = calloc(1, sizeof(*m));
	assert_non_null(m);
	queue_id_new(m->id);
	char buf[128];
	snprintf(buf, sizeof(buf), "sender%u@example.org", seed);
	m->sender = strdup(seed % 5 == 0 ? "" : buf);
	m->created = 1700000000 + seed;
	m->body = seed % 3;
	m->ret = seed % 2;
	m->smtputf8 = seed % 2;
	m->trusted_client = seed % 3 == 0;
	m->folder = seed % 4 == 3 ? SPOOL_FOLDER_JUNK : SPOOL_FOLDER_INBOX;
	if (seed % 2) {
		snprintf(buf, sizeof(buf), "envid-%u", seed);
		m->envid = strdup(buf);
	}
	snprintf(buf, sizeof(buf), "addr=127.0.0.%u helo=h%u", seed % 250, seed);
	m->client = strdup(buf);
	if (seed % 3 == 1) { /* MAIL AUTH= (optional field, flag bit 3) */
		snprintf(buf, sizeof(buf), "user%u+app@example.org", seed);
		m->auth = strdup(buf);
	}
	if (seed % 4 == 2) { /* the API key that queued it (optional field, flag bit 4) */
		snprintf(buf, sizeof(buf), "key-%u", seed);
		m->api_key = strdup(buf);
	}
	if (seed % 5 == 4) /* the API's send_at (optional field, flag bit 5) */
		m->not_before = 1700003600 + seed;
	m->n_rcpts = n_rcpts;
	m->rcpts = calloc(n_rcpts, sizeof(*m->rcpts));
	assert_non_null(m->rcpts);
	for (size_t i = 0; i < n_rcpts; i++) {
		struct spool_rcpt *r = &m->rcpts[i];
		snprintf(buf, sizeof(buf), "rcpt%zu-%u@example.com", i, seed);
		r->addr = strdup(buf);
		if (i % 2) {
			snprintf(buf, sizeof(buf), "rfc822;o%zu@example.com", i);
			r->orcpt = strdup(buf);
		}
		r->notify = (unsigned)(i + seed) % 8;
		r->local = i % 2 == 0;
		r->state = RCPT_QUEUED;
	}
	return m;
}

static void fill_data(char *p, size_t n, unsigned seed)
{
	uint32_t x = seed * 2654435761u + 1;
	for (size_t i = 0; i < n; i++) {
		x = x * 1103515245u + 12345u;
		p[i] = (char)(x >> 16);
	}
}

static void assert_str_eq_opt(const char *a, const char *b)
{
	if (!a || !b)
		assert_ptr_equal(a, b);
	else
		assert_string_equal(a, b);
}

static void assert_env_equal(const struct spool_msg *a, const struct spool_msg *b)
{
	assert_string_equal(a->id, b->id);
	assert_string_equal(a->sender, b->sender);
	assert_int_equal(a->created, b->created);
	assert_int_equal(a->body, b->body);
	assert_int_equal(a->ret, b->ret);
	assert_int_equal(a->smtputf8, b->smtputf8);
	assert_int_equal(a->trusted_client, b->trusted_client);
	assert_int_equal(a->folder, b->folder);
	assert_str_eq_opt(a->envid, b->envid);
	assert_str_eq_opt(a->client, b->client);
	assert_str_eq_opt(a->auth, b->auth);
	assert_str_eq_opt(a->api_key, b->api_key);
	assert_int_equal(a->not_before, b->not_before);
	assert_int_equal(a->size, b->size);
	assert_int_equal(a->n_rcpts, b->n_rcpts);
	for (size_t i = 0; i < a->n_rcpts; i++) {
		const struct spool_rcpt *x = &a->rcpts[i], *y = &b->rcpts[i];
		assert_string_equal(x->addr, y->addr);
		assert_str_eq_opt(x->orcpt, y->orcpt);
		assert_int_equal(x->notify, y->notify);
		assert_int_equal(x->local, y->local);
		assert_int_equal(x->state, y->state);
		assert_int_equal(x->attempts, y->attempts);
		assert_int_equal(x->next_try, y->next_try);
		assert_str_eq_opt(x->last_reply, y->last_reply);
	}
}

static void assert_data(struct spool *s, const char *id, const char *want, size_t n)
{
	struct tbuf b = TBUF_INIT(64u * 1024 * 1024);
	assert_int_equal(spool_read_data(s, id, &b), TERN_OK);
	assert_int_equal(b.len, n);
	if (n)
		assert_memory_equal(b.data, want, n);
	tbuf_free(&b);
}

/* What spool_foreach_damage reported (file names copied: the pointers
 * die with the call). */
struct damage_seen {
	struct spool_damage d[32];
	char file[32][96];
	size_t n;
};

static bool damage_collect(const struct spool_damage *d, void *arg)
{
	struct damage_seen *ds = arg;
	if (ds->n < 32) {
		ds->d[ds->n] = *d;
		snprintf(ds->file[ds->n], sizeof(ds->file[0]), "%s", d->file);
		ds->d[ds->n].file = ds->file[ds->n];
		ds->n++;
	}
	return true;
}

/* Puts one message and waits until it is on disk. */
static void put_sync(struct spool *s, struct spool_msg *m, const char *data, size_t n)
{
	struct waiter w;
	waiter_init(&w);
	m->size = n;
	assert_int_equal(spool_put(s, m, data, n, put_cb, &w), TERN_OK);
	waiter_wait(&w, 1);
	assert_int_equal(w.ok, 1);
	waiter_destroy(&w);
}

/* ---- record format (pure) ---------------------------------------------------- */

static void test_crc32c_matches_standard_check_value(void **st)
{
	(void)st;
	assert_int_equal(spool_crc32c(0, "123456789", 9), 0xe3069283u);
	/* chaining equals one pass, across the 8-byte fast path boundary */
	const char *t = "The quick brown fox jumps over the lazy dog, twice over";
	size_t n = strlen(t);
	for (size_t cut = 0; cut <= n; cut++)
		assert_int_equal(spool_crc32c(spool_crc32c(0, t, cut), t + cut, n - cut),
		                 spool_crc32c(0, t, n));
	/* whichever path the CPU takes (SSE 4.2 or tables) equals the bitwise
	 * definition, at every length and alignment around its 8-byte steps */
	unsigned char buf[80];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (unsigned char)(i * 131u + 7u);
	for (size_t off = 0; off < 8; off++) {
		for (size_t len = 0; off + len <= sizeof(buf); len++) {
			uint32_t c = 0xffffffffu;
			for (size_t i = 0; i < len; i++) {
				c ^= buf[off + i];
				for (int k = 0; k < 8; k++)
					c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
			}
			assert_int_equal(spool_crc32c(0, buf + off, len), ~c);
		}
	}
}

/* The MSG flags byte (spool_internal.h): id, created, body, ret, then flags. */
#define MSG_FLAGS_AT (QUEUE_ID_LEN + 8 + 4 + 4)

/* The Junk folder (DMARC quarantine, smtp/verify.c) is flag bit 2: a record
 * written before the bit existed reads as the inbox, an unknown bit is
 * damage. */
static void test_record_folder_flag(void **st)
{
	(void)st;
	struct spool_msg *m = make_env(3, 1); /* seed 3: Junk */
	assert_int_equal(m->folder, SPOOL_FOLDER_JUNK);
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t doff, pdoff;
	assert_int_equal(spool_rec_encode_msg(&b, m, "x", 1, &doff), TERN_OK);
	uint8_t *pl = (uint8_t *)b.data + SPOOL_REC_HDR;
	size_t plen = b.len - SPOOL_REC_HDR;
	assert_true(pl[MSG_FLAGS_AT] & 4);
	struct spool_msg *d = NULL;
	assert_int_equal(spool_rec_decode_msg(pl, plen, &d, &pdoff), TERN_OK);
	assert_int_equal(d->folder, SPOOL_FOLDER_JUNK);
	assert_string_equal(spool_folder_name(d->folder), "Junk");
	spool_msg_free(d);
	pl[MSG_FLAGS_AT] &= (uint8_t)~4u; /* as an older tern wrote it */
	assert_int_equal(spool_rec_decode_msg(pl, plen, &d, &pdoff), TERN_OK);
	assert_int_equal(d->folder, SPOOL_FOLDER_INBOX);
	assert_null(spool_folder_name(d->folder));
	spool_msg_free(d);
	d = NULL;
	pl[MSG_FLAGS_AT] |= 16; /* a bit no tern writes */
	assert_int_equal(spool_rec_decode_msg(pl, plen, &d, &pdoff), TERN_ECORRUPT);
	assert_null(d);
	tbuf_free(&b);
	spool_msg_free(m);
}

/* The API key name is an optional string after AUTH=, present only with
 * flag bit 4: a record without it is byte for byte what a tern before the
 * field wrote; with both fields, each reads back as itself. */
static void test_record_api_key_field_is_optional(void **st)
{
	(void)st;
	struct spool_msg *m = make_env(6, 2); /* seed 6: api_key, no auth */
	assert_non_null(m->api_key);
	assert_null(m->auth);
	m->size = 3;
	struct tbuf with = TBUF_INIT(1 << 20), without = TBUF_INIT(1 << 20),
	            both = TBUF_INIT(1 << 20);
	size_t doff, pdoff;
	assert_int_equal(spool_rec_encode_msg(&with, m, "abc", 3, &doff), TERN_OK);
	uint8_t *pl = (uint8_t *)with.data + SPOOL_REC_HDR;
	assert_true(pl[MSG_FLAGS_AT] & 16);
	assert_false(pl[MSG_FLAGS_AT] & 8);
	struct spool_msg *d = NULL;
	assert_int_equal(spool_rec_decode_msg(pl, with.len - SPOOL_REC_HDR, &d, &pdoff), TERN_OK);
	assert_string_equal(d->api_key, "key-6");
	assert_null(d->auth);
	assert_env_equal(m, d);
	spool_msg_free(d);
	struct spool_msg *c = spool_msg_dup(m);
	assert_non_null(c);
	assert_string_equal(c->api_key, "key-6");
	spool_msg_free(c);

	/* with AUTH= as well: the order is auth, then api_key */
	m->auth = strdup("user@example.org");
	assert_int_equal(spool_rec_encode_msg(&both, m, "abc", 3, &doff), TERN_OK);
	pl = (uint8_t *)both.data + SPOOL_REC_HDR;
	assert_int_equal(pl[MSG_FLAGS_AT] & 24, 24);
	assert_int_equal(spool_rec_decode_msg(pl, both.len - SPOOL_REC_HDR, &d, &pdoff), TERN_OK);
	assert_string_equal(d->auth, "user@example.org");
	assert_string_equal(d->api_key, "key-6");
	spool_msg_free(d);
	free(m->auth);
	m->auth = NULL;

	/* without: the record an older tern wrote, read as before */
	size_t klen = strlen(m->api_key);
	free(m->api_key);
	m->api_key = NULL;
	assert_int_equal(spool_rec_encode_msg(&without, m, "abc", 3, &doff), TERN_OK);
	assert_int_equal(without.len + 4 + klen, with.len);
	pl = (uint8_t *)without.data + SPOOL_REC_HDR;
	assert_false(pl[MSG_FLAGS_AT] & 16);
	assert_int_equal(spool_rec_decode_msg(pl, without.len - SPOOL_REC_HDR, &d, &pdoff),
	                 TERN_OK);
	assert_null(d->api_key);
	assert_env_equal(m, d);
	spool_msg_free(d);
	/* a flag bit above 5 is still refused */
	pl[MSG_FLAGS_AT] |= 64;
	assert_int_not_equal(spool_rec_decode_msg(pl, without.len - SPOOL_REC_HDR, &d, &pdoff),
	                     TERN_OK);
	tbuf_free(&with);
	tbuf_free(&without);
	tbuf_free(&both);
	spool_msg_free(m);
}

/* The not-before time (the API's send_at) is an optional i64 after the API
 * key, present only with flag bit 5: a record without it is byte for byte
 * what a tern before the field wrote (and reads as 0, at once); one with it
 * reads back the time; the bit with a 0 time is refused (it would not
 * re-encode the same). */
static void test_record_not_before_field_is_optional(void **st)
{
	(void)st;
	struct spool_msg *m = make_env(6, 2); /* seed 6: api_key, no auth, no not_before */
	assert_int_equal(m->not_before, 0);
	m->size = 3;
	struct tbuf with = TBUF_INIT(1 << 20), without = TBUF_INIT(1 << 20);
	size_t doff, pdoff;
	assert_int_equal(spool_rec_encode_msg(&without, m, "abc", 3, &doff), TERN_OK);
	m->not_before = 1800000000;
	assert_int_equal(spool_rec_encode_msg(&with, m, "abc", 3, &doff), TERN_OK);
	assert_int_equal(without.len + 8, with.len);
	uint8_t *pl = (uint8_t *)with.data + SPOOL_REC_HDR;
	assert_int_equal(pl[MSG_FLAGS_AT] & 48, 48); /* api_key and not_before */
	struct spool_msg *d = NULL;
	assert_int_equal(spool_rec_decode_msg(pl, with.len - SPOOL_REC_HDR, &d, &pdoff), TERN_OK);
	assert_int_equal(d->not_before, 1800000000);
	assert_string_equal(d->api_key, "key-6");
	assert_env_equal(m, d);
	spool_msg_free(d);
	struct spool_msg *c = spool_msg_dup(m);
	assert_non_null(c);
	assert_int_equal(c->not_before, 1800000000);
	spool_msg_free(c);

	/* without: an older record reads as "at once" */
	pl = (uint8_t *)without.data + SPOOL_REC_HDR;
	assert_false(pl[MSG_FLAGS_AT] & 32);
	assert_int_equal(spool_rec_decode_msg(pl, without.len - SPOOL_REC_HDR, &d, &pdoff),
	                 TERN_OK);
	assert_int_equal(d->not_before, 0);
	spool_msg_free(d);

	/* the bit with a zero time is not what the encoder writes: refused */
	pl = (uint8_t *)with.data + SPOOL_REC_HDR;
	size_t at = MSG_FLAGS_AT + 1;
	for (int k = 0; k < 4; k++) { /* sender, envid, client, api_key (no auth) */
		uint32_t len = (uint32_t)pl[at] | (uint32_t)pl[at + 1] << 8 |
		               (uint32_t)pl[at + 2] << 16 | (uint32_t)pl[at + 3] << 24;
		at += 4 + (len == 0xffffffffu ? 0 : len); /* 0xffffffff: NULL, no bytes */
	}
	memset(pl + at, 0, 8);
	assert_int_not_equal(spool_rec_decode_msg(pl, with.len - SPOOL_REC_HDR, &d, &pdoff),
	                     TERN_OK);
	tbuf_free(&with);
	tbuf_free(&without);
	spool_msg_free(m);
}

/* MAIL's AUTH= is an optional string after client, present only with flag
 * bit 3: a record without it is byte for byte what a tern before the field
 * wrote, so old spools read as they were. */
static void test_record_auth_field_is_optional(void **st)
{
	(void)st;
	struct spool_msg *m = make_env(4, 2); /* seed 4: has auth */
	assert_non_null(m->auth);
	m->size = 3;
	struct tbuf with = TBUF_INIT(1 << 20), without = TBUF_INIT(1 << 20);
	size_t doff, pdoff;
	assert_int_equal(spool_rec_encode_msg(&with, m, "abc", 3, &doff), TERN_OK);
	uint8_t *pl = (uint8_t *)with.data + SPOOL_REC_HDR;
	assert_true(pl[MSG_FLAGS_AT] & 8);
	struct spool_msg *d = NULL;
	assert_int_equal(spool_rec_decode_msg(pl, with.len - SPOOL_REC_HDR, &d, &pdoff), TERN_OK);
	assert_string_equal(d->auth, m->auth);
	spool_msg_free(d);
	/* a copy keeps it */
	struct spool_msg *c = spool_msg_dup(m);
	assert_non_null(c);
	assert_string_equal(c->auth, m->auth);
	spool_msg_free(c);

	size_t alen = strlen(m->auth);
	free(m->auth);
	m->auth = NULL;
	assert_int_equal(spool_rec_encode_msg(&without, m, "abc", 3, &doff), TERN_OK);
	assert_int_equal(without.len + 4 + alen, with.len);
	pl = (uint8_t *)without.data + SPOOL_REC_HDR;
	assert_false(pl[MSG_FLAGS_AT] & 8);
	assert_int_equal(spool_rec_decode_msg(pl, without.len - SPOOL_REC_HDR, &d, &pdoff),
	                 TERN_OK);
	assert_null(d->auth);
	assert_env_equal(m, d);
	spool_msg_free(d);
	tbuf_free(&with);
	tbuf_free(&without);
	spool_msg_free(m);
}

static void test_record_roundtrip_keeps_every_field(void **st)
{
	(void)st;
	struct spool_msg *m = make_env(7, 3);
	m->rcpts[1].state = RCPT_DEFERRED;
	m->rcpts[1].attempts = 4;
	m->rcpts[1].next_try = -5;
	m->rcpts[1].last_reply = strdup("451 4.3.0 try later");
	char data[300];
	fill_data(data, sizeof(data), 7);
	m->size = sizeof(data);
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t doff;
	assert_int_equal(spool_rec_encode_msg(&b, m, data, sizeof(data), &doff), TERN_OK);

	struct spool_rec_hdr h;
	size_t reclen;
	assert_int_equal(spool_rec_next((uint8_t *)b.data, b.len, &fmt0, &h, &reclen), TERN_OK);
	assert_int_equal(reclen, b.len);
	assert_int_equal(h.type, SPOOL_REC_MSG);
	struct spool_msg *d;
	size_t pdoff;
	assert_int_equal(spool_rec_decode_msg((uint8_t *)b.data + SPOOL_REC_HDR, h.len, &d, &pdoff),
	                 TERN_OK);
	assert_env_equal(m, d);
	assert_int_equal(pdoff + SPOOL_REC_HDR, doff);
	assert_memory_equal(b.data + doff, data, sizeof(data));

	/* every proper prefix is SHORT (never OK, never a crash) */
	for (size_t n = 0; n < b.len; n++)
		assert_int_equal(spool_rec_next((uint8_t *)b.data, n, &fmt0, &h, &reclen),
		                 SPOOL_REC_SHORT);
	/* every truncated payload fails to decode */
	for (size_t n = 0; n < h.len; n++) {
		struct spool_msg *x = NULL;
		assert_int_equal(
		    spool_rec_decode_msg((uint8_t *)b.data + SPOOL_REC_HDR, n, &x, &pdoff),
		    TERN_ECORRUPT);
		assert_null(x);
	}
	spool_msg_free(d);

	/* RCPT and DEL */
	tbuf_reset(&b);
	assert_int_equal(spool_rec_encode_rcpt(&b, m->id, 1, &m->rcpts[1], true), TERN_OK);
	assert_int_equal(spool_rec_next((uint8_t *)b.data, b.len, &fmt0, &h, &reclen), TERN_OK);
	struct spool_rec_rcpt r;
	assert_int_equal(spool_rec_decode_rcpt((uint8_t *)b.data + SPOOL_REC_HDR, h.len, &r),
	                 TERN_OK);
	assert_string_equal(r.id, m->id);
	assert_int_equal(r.idx, 1);
	assert_int_equal(r.state, RCPT_DEFERRED);
	assert_int_equal(r.attempts, 4);
	assert_int_equal(r.next_try, -5);
	assert_string_equal(r.reply, "451 4.3.0 try later");
	free(r.reply);
	tbuf_reset(&b);
	assert_int_equal(spool_rec_encode_del(&b, m->id), TERN_OK);
	assert_int_equal(spool_rec_next((uint8_t *)b.data, b.len, &fmt0, &h, &reclen), TERN_OK);
	char id[QUEUE_ID_LEN + 1];
	assert_int_equal(spool_rec_decode_del((uint8_t *)b.data + SPOOL_REC_HDR, h.len, id),
	                 TERN_OK);
	assert_string_equal(id, m->id);

	/* the nonce: a record is valid only in a segment whose nonce it carries */
	spool_rec_stamp((uint8_t *)b.data, TEST_NONCE);
	const struct spool_seg_fmt fx = {SPOOL_REC_V2, TEST_NONCE, false, false};
	assert_int_equal(spool_rec_next((uint8_t *)b.data, b.len, &fx, &h, &reclen), TERN_OK);
	assert_int_equal(h.nonce, TEST_NONCE);
	assert_int_equal(spool_rec_next((uint8_t *)b.data, b.len, &fmt0, &h, &reclen),
	                 TERN_ECORRUPT);
	const struct spool_seg_fmt fv1 = {SPOOL_REC_V1, 0, false, false};
	assert_int_equal(spool_rec_next((uint8_t *)b.data, b.len, &fv1, &h, &reclen),
	                 TERN_ECORRUPT);
	spool_rec_stamp((uint8_t *)b.data, 0);

	/* any single flipped bit anywhere in a record is caught */
	for (size_t i = 0; i < b.len; i++)
		for (int bit = 0; bit < 8; bit++) {
			b.data[i] ^= (char)(1 << bit);
			int rc = spool_rec_next((uint8_t *)b.data, b.len, &fmt0, &h, &reclen);
			assert_true(rc == TERN_ECORRUPT || rc == SPOOL_REC_SHORT);
			b.data[i] ^= (char)(1 << bit);
		}
	tbuf_free(&b);
	spool_msg_free(m);
}

/* ---- spool ------------------------------------------------------------------ */

struct put_thread_arg {
	struct spool *s;
	struct waiter *w;
	struct spool_msg **envs;
	char **datas;
	size_t *lens;
	int first, count;
};

static void *put_thread(void *p)
{
	struct put_thread_arg *a = p;
	for (int i = a->first; i < a->first + a->count; i++)
		assert_int_equal(spool_put(a->s, a->envs[i], a->datas[i], a->lens[i], put_cb, a->w),
		                 TERN_OK);
	return NULL;
}

/* Puts n messages from `threads` threads at once and waits for all. */
static void put_concurrently(struct spool *s, int n, int threads, struct spool_msg **envs,
                             char **datas, size_t *lens)
{
	struct waiter w;
	waiter_init(&w);
	pthread_t th[16];
	struct put_thread_arg args[16];
	for (int t = 0; t < threads; t++) {
		args[t] = (struct put_thread_arg){
		    s, &w, envs, datas, lens, t * (n / threads), n / threads};
		assert_int_equal(pthread_create(&th[t], NULL, put_thread, &args[t]), 0);
	}
	for (int t = 0; t < threads; t++)
		pthread_join(th[t], NULL);
	waiter_wait(&w, n);
	assert_int_equal(w.ok, n);
	waiter_destroy(&w);
}

static void test_concurrent_puts_survive_reopen_identically(void **st)
{
	(void)st;
	enum { N = 200, T = 4 };
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	struct spool_msg *envs[N];
	char *datas[N];
	size_t lens[N];
	for (int i = 0; i < N; i++) {
		envs[i] = make_env((unsigned)i, 1 + (size_t)i % 4);
		lens[i] = (size_t)(i * 37) % 5000;
		datas[i] = malloc(lens[i] + 1);
		fill_data(datas[i], lens[i], (unsigned)i);
		envs[i]->size = lens[i];
	}
	put_concurrently(s, N, T, envs, datas, lens);
	assert_int_equal(spool_count(s), N);
	struct spool_stats ss;
	spool_get_stats(s, &ss);
	assert_int_equal(ss.puts, N);
	/* group commit: 200 puts from 4 threads need fewer syncs than puts */
	assert_true(ss.commits < ss.puts);
	printf("# group commit: %" PRIu64 " commits for %" PRIu64 " puts (ratio %.3f)\n",
	       ss.commits, ss.puts, (double)ss.commits / (double)ss.puts);
	spool_close(s);

	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), N);
	for (int i = 0; i < N; i++) {
		struct spool_msg *g = spool_get(s, envs[i]->id);
		assert_non_null(g);
		assert_env_equal(envs[i], g);
		spool_msg_free(g);
		assert_data(s, envs[i]->id, datas[i], lens[i]);
		spool_msg_free(envs[i]);
		free(datas[i]);
	}
	spool_close(s);
	tmpdir_rm(&td);
}

static bool collect_ids(const struct spool_msg *m, void *arg)
{
	char(*ids)[QUEUE_ID_LEN + 1] = arg;
	for (int i = 0;; i++)
		if (!ids[i][0]) {
			memcpy(ids[i], m->id, QUEUE_ID_LEN + 1);
			return true;
		}
}

static void test_foreach_lists_in_id_order(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	struct spool_msg *m[5];
	for (int i = 0; i < 5; i++)
		m[i] = make_env((unsigned)i, 1);
	for (int i = 4; i >= 0; i--) /* put in reverse id order */
		put_sync(s, m[i], "x", 1);
	char ids[6][QUEUE_ID_LEN + 1];
	memset(ids, 0, sizeof(ids));
	spool_foreach(s, collect_ids, ids);
	for (int i = 0; i < 5; i++) {
		assert_string_equal(ids[i], m[i]->id);
		spool_msg_free(m[i]);
	}
	spool_close(s);
	tmpdir_rm(&td);
}

static void test_rcpt_updates_survive_reopen(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	struct spool_msg *m = make_env(3, 4);
	put_sync(s, m, "hello\r\n", 7);

	assert_int_equal(spool_update_rcpt(s, m->id, 0, RCPT_DEFERRED, 1234, "451 4.4.1 no answer"),
	                 TERN_OK);
	assert_int_equal(spool_update_rcpt(s, m->id, 0, RCPT_DEFERRED, 5678, NULL), TERN_OK);
	assert_int_equal(spool_update_rcpt(s, m->id, 1, RCPT_DELIVERED, 0, "250 2.0.0 ok"),
	                 TERN_OK);
	assert_int_equal(spool_update_rcpt(s, m->id, 2, RCPT_HELD, 0, NULL), TERN_OK);
	/* finished recipients stay finished; bad index and unknown id refused */
	assert_int_equal(spool_update_rcpt(s, m->id, 1, RCPT_QUEUED, 0, NULL), TERN_EINVAL);
	assert_int_equal(spool_update_rcpt(s, m->id, 4, RCPT_QUEUED, 0, NULL), TERN_EINVAL);
	assert_int_equal(spool_update_rcpt(s, "0000000000000000", 0, RCPT_QUEUED, 0, NULL),
	                 TERN_ENOTFOUND);
	assert_int_equal(spool_update_rcpt(s, m->id, 0, (enum rcpt_state)9, 0, NULL), TERN_EINVAL);

	m->rcpts[0].state = RCPT_DEFERRED;
	m->rcpts[0].attempts = 2;
	m->rcpts[0].next_try = 5678;
	m->rcpts[0].last_reply = strdup("451 4.4.1 no answer"); /* NULL kept the old text */
	m->rcpts[1].state = RCPT_DELIVERED;
	m->rcpts[1].attempts = 1;
	m->rcpts[1].last_reply = strdup("250 2.0.0 ok");
	m->rcpts[2].state = RCPT_HELD;
	struct spool_msg *g = spool_get(s, m->id);
	assert_env_equal(m, g);
	spool_msg_free(g);
	spool_close(s);

	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	g = spool_get(s, m->id);
	assert_non_null(g);
	assert_env_equal(m, g);
	spool_msg_free(g);
	assert_data(s, m->id, "hello\r\n", 7);
	spool_close(s);
	spool_msg_free(m);
	tmpdir_rm(&td);
}

static void test_finished_messages_leave_and_their_segments_go(void **st)
{
	(void)st;
	enum { N = 40 };
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	spool_debug_set_segment_max(s, 32 * 1024);
	char data[10000];
	struct spool_msg *m[N];
	for (int i = 0; i < N; i++) {
		m[i] = make_env((unsigned)i, 2);
		fill_data(data, sizeof(data), (unsigned)i);
		put_sync(s, m[i], data, sizeof(data));
	}
	struct spool_stats ss;
	spool_get_stats(s, &ss);
	assert_true(ss.segments >= 10);
	assert_int_equal(count_segment_files(td.path), ss.segments);

	/* m[0] stays deferred: its segment must stay, and so must the DEL
	 * records of the other messages that shared it. */
	assert_int_equal(spool_update_rcpt(s, m[0]->id, 0, RCPT_DEFERRED, 99, "451 later"),
	                 TERN_OK);
	for (int i = 1; i < N; i++) {
		assert_int_equal(spool_update_rcpt(s, m[i]->id, 0, RCPT_DELIVERED, 0, "250 ok"),
		                 TERN_OK);
		assert_int_equal(spool_count(s), (size_t)(N - i + 1));
		assert_int_equal(spool_update_rcpt(s, m[i]->id, 1, RCPT_BOUNCED, 0, "550 no"),
		                 TERN_OK);
		assert_int_equal(spool_count(s), (size_t)(N - i));
		assert_null(spool_get(s, m[i]->id));
	}
	assert_int_equal(spool_remove(s, m[1]->id), TERN_ENOTFOUND);
	/* a put makes the committer run (and reap) after the DEL records */
	struct spool_msg *x = make_env(1000, 1);
	put_sync(s, x, "x", 1);
	spool_close(s);

	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 2);
	struct spool_msg *g = spool_get(s, m[0]->id);
	assert_non_null(g);
	assert_int_equal(g->rcpts[0].state, RCPT_DEFERRED);
	spool_msg_free(g);
	for (int i = 1; i < N; i++)
		assert_null(spool_get(s, m[i]->id));
	spool_get_stats(s, &ss);
	assert_true(ss.segments <= 4);
	assert_int_equal(count_segment_files(td.path), ss.segments);

	/* now finish the rest: everything but the current segment goes */
	assert_int_equal(spool_remove(s, m[0]->id), TERN_OK);
	assert_int_equal(spool_update_rcpt(s, x->id, 0, RCPT_DELIVERED, 0, NULL), TERN_OK);
	assert_int_equal(spool_count(s), 0);
	spool_close(s);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 0);
	assert_int_equal(count_segment_files(td.path), 1);
	spool_close(s);
	for (int i = 0; i < N; i++)
		spool_msg_free(m[i]);
	spool_msg_free(x);
	tmpdir_rm(&td);
}

static char *slurp(const char *path, size_t *n);

/* ---- ARCHIVE: pins --------------------------------------------------------- */

struct arefs {
	pthread_mutex_t mu;
	struct spool_ref v[64];
	size_t n;
	const char *skip; /* the id want() refuses */
};

static bool arch_want(void *arg, const struct spool_msg *m)
{
	struct arefs *a = arg;
	return !a->skip || strcmp(m->id, a->skip) != 0;
}

static void arch_hook(void *arg, const struct spool_ref *r)
{
	struct arefs *a = arg;
	pthread_mutex_lock(&a->mu);
	if (a->n < 64)
		a->v[a->n++] = *r;
	pthread_mutex_unlock(&a->mu);
}

static void arch_collect(void *arg, const struct spool_ref *r)
{
	arch_hook(arg, r);
}

/* Waits (bounded: 5 s) until the spool dir holds want segment files. */
static bool segments_become(const char *dir, size_t want)
{
	for (int i = 0; i < 5000; i++) {
		if (count_segment_files(dir) == want)
			return true;
		usleep(1000);
	}
	return false;
}

/* The archive follows the spool: a message the archive wants keeps its
 * segment after delivery until the archive releases it, across a restart
 * too (recovery re-pins every record and lists it), and its bytes are read
 * back from the segment exactly; a message it does not want pins nothing;
 * with no hook nothing is pinned (test_finished_messages_leave_...). */
static void test_archive_pins_keep_finished_segments_until_released(void **st)
{
	(void)st;
	enum { N = 12 };
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool *s;
	struct arefs a = {.n = 0};
	pthread_mutex_init(&a.mu, NULL);
	assert_int_equal(spool_open_flags(td.path, SPOOL_OPEN_ARCHIVE, &s), TERN_OK);
	assert_int_equal(spool_archive_recovered(s, arch_collect, &a), 0);
	spool_debug_set_segment_max(s, 32 * 1024);
	char data[10000];
	struct spool_msg *m[N];
	for (int i = 0; i < N; i++)
		m[i] = make_env((unsigned)i + 500, 1);
	a.skip = m[N - 1]->id; /* the last one is not wanted: no pin, no ref */
	spool_set_commit_hook(s, arch_want, arch_hook, &a);
	for (int i = 0; i < N; i++) {
		fill_data(data, sizeof(data), (unsigned)i);
		put_sync(s, m[i], data, sizeof(data));
	}
	pthread_mutex_lock(&a.mu);
	assert_int_equal(a.n, N - 1);
	pthread_mutex_unlock(&a.mu);
	size_t segs = count_segment_files(td.path);
	assert_true(segs >= 3);
	for (int i = 0; i < N; i++)
		assert_int_equal(spool_remove(s, m[i]->id), TERN_OK);
	struct spool_msg *x = make_env(1000, 1); /* the committer runs (and reaps) */
	put_sync(s, x, "x", 1);
	assert_int_equal(spool_count(s), 1);
	/* every segment stays: each holds a message the archive has not taken */
	assert_true(count_segment_files(td.path) >= segs);
	/* (x's own ref may arrive meanwhile: its hook runs after put_sync returns) */
	for (size_t i = 0; i < N - 1; i++) {
		struct spool_msg *g;
		struct tbuf b = TBUF_INIT(1 << 20);
		assert_int_equal(spool_archive_read(s, &a.v[i], &g, &b), TERN_OK);
		assert_string_equal(g->id, m[i]->id);
		assert_string_equal(g->rcpts[0].addr, m[i]->rcpts[0].addr);
		fill_data(data, sizeof(data), (unsigned)i);
		assert_int_equal(b.len, sizeof(data));
		assert_memory_equal(b.data, data, sizeof(data));
		spool_msg_free(g);
		tbuf_free(&b);
	}
	/* released in part: the segments of the others stay */
	spool_archive_release(s, a.v, 2);
	/* a kill here: the pins are memory only, recovery takes them again */
	spool_close(s);
	pthread_mutex_lock(&a.mu);
	a.n = 0;
	pthread_mutex_unlock(&a.mu);
	assert_int_equal(spool_open_flags(td.path, SPOOL_OPEN_ARCHIVE, &s), TERN_OK);
	size_t kept = count_segment_files(td.path);
	assert_true(kept >= segs - 1);
	/* every MSG record of the surviving segments: finished ones and x */
	size_t n = spool_archive_recovered(s, arch_collect, &a);
	assert_int_equal(n, a.n);
	bool seen_last = false;
	for (size_t i = 0; i < a.n; i++)
		seen_last |= strcmp(a.v[i].id, m[N - 3]->id) == 0;
	assert_true(seen_last);
	assert_int_equal(spool_archive_recovered(s, arch_collect, &a), 0); /* once */
	spool_archive_release(s, a.v, a.n);
	assert_int_equal(spool_update_rcpt(s, x->id, 0, RCPT_DELIVERED, 0, NULL), TERN_OK);
	struct spool_msg *y = make_env(1001, 1);
	put_sync(s, y, "y", 1);
	assert_true(segments_become(td.path, 1));
	spool_close(s);
	pthread_mutex_destroy(&a.mu);
	for (int i = 0; i < N; i++)
		spool_msg_free(m[i]);
	spool_msg_free(x);
	spool_msg_free(y);
	tmpdir_rm(&td);
}

/* RCPT and DEL records nobody waits for ride with the next put's batch, but
 * with no put after them they still reach the segment on their own, soon,
 * with the spool left open (a later crash then replays the removal). */
static void test_lone_state_records_are_written_without_a_later_put(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool *s;
	char path[512];
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	seg_file(td.path, 1, path, sizeof(path));
	struct spool_msg *m = make_env(7, 2);
	put_sync(s, m, "hello", 5);
	off_t after_put = seg_used(path);
	assert_int_equal(spool_update_rcpt(s, m->id, 0, RCPT_DEFERRED, 99, "451 later"), TERN_OK);
	/* bounded: the committer's window is 20 ms; 5 s is far beyond it */
	off_t sz = after_put;
	for (int i = 0; i < 500 && sz == after_put; i++) {
		usleep(10 * 1000);
		sz = seg_used(path);
	}
	assert_true(sz > after_put);
	assert_int_equal(spool_remove(s, m->id), TERN_OK);
	off_t after_rcpt = sz;
	for (int i = 0; i < 500 && sz == after_rcpt; i++) {
		usleep(10 * 1000);
		sz = seg_used(path);
	}
	assert_true(sz > after_rcpt);
	/* what is on disk replays: a copy of the segment opened as a spool
	 * (the original stays locked by s) holds no message */
	struct tmpdir td2;
	tmpdir_make(&td2);
	char cp[1024];
	snprintf(cp, sizeof(cp), "%s/%s", td2.path, strrchr(path, '/') + 1);
	size_t n;
	char *bytes = slurp(path, &n);
	int fd = open(cp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, bytes, n), (ssize_t)n);
	close(fd);
	free(bytes);
	struct spool *s2;
	assert_int_equal(spool_open(td2.path, &s2), TERN_OK);
	assert_int_equal(spool_count(s2), 0);
	spool_close(s2);
	spool_close(s);
	spool_msg_free(m);
	tmpdir_rm(&td2);
	tmpdir_rm(&td);
}

/* Writes three messages to a fresh spool; returns the envelopes, and the
 * segment's offsets where record 2 and record 3 start. */
static void three_messages(const char *dir, struct spool_msg *m[3], off_t *r2, off_t *r3)
{
	struct spool *s;
	char path[512];
	assert_int_equal(spool_open(dir, &s), TERN_OK);
	seg_file(dir, 1, path, sizeof(path));
	for (int i = 0; i < 3; i++) {
		m[i] = make_env((unsigned)(i + 1), 2);
		char data[64];
		fill_data(data, sizeof(data), (unsigned)i);
		put_sync(s, m[i], data, sizeof(data));
		if (i == 0)
			*r2 = seg_used(path);
		if (i == 1)
			*r3 = seg_used(path);
	}
	spool_close(s);
}

static void assert_msg_ok(struct spool *s, struct spool_msg *m, unsigned seed)
{
	struct spool_msg *g = spool_get(s, m->id);
	assert_non_null(g);
	assert_env_equal(m, g);
	spool_msg_free(g);
	char data[64];
	fill_data(data, sizeof(data), seed);
	assert_data(s, m->id, data, sizeof(data));
}

static char *slurp(const char *path, size_t *n)
{
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	off_t sz = lseek(fd, 0, SEEK_END);
	char *p = malloc((size_t)sz + 1);
	assert_int_equal(pread(fd, p, (size_t)sz, 0), sz);
	close(fd);
	*n = (size_t)sz;
	return p;
}

static void spit(const char *path, const char *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, p, n), (ssize_t)n);
	close(fd);
}

static void test_torn_tail_at_every_offset_recovers_complete_records(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[3];
	off_t r2, r3;
	three_messages(td.path, m, &r2, &r3);
	char path[512];
	seg_file(td.path, 1, path, sizeof(path));
	size_t n;
	char *orig = slurp(path, &n);
	n = (size_t)seg_used(path); /* PREALLOC: the zeros after are not records */
	log_capture_start();
	for (size_t cut = (size_t)r3; cut < n; cut++) {
		spit(path, orig, cut);
		struct spool *s;
		assert_int_equal(spool_open(td.path, &s), TERN_OK);
		assert_int_equal(spool_count(s), 2);
		assert_msg_ok(s, m[0], 0);
		assert_msg_ok(s, m[1], 1);
		assert_null(spool_get(s, m[2]->id));
		spool_close(s);
		/* the torn bytes were cut away, and the spool still appends */
		assert_int_equal(seg_used(path), r3);
	}
	/* one torn_tail line per torn case, none when the cut is on a boundary */
	assert_int_equal(log_capture_count("event=spool_recover ", "torn_tail"),
	                 (int)(n - (size_t)r3 - 1));
	assert_int_equal(log_capture_count("event=spool_recovered messages=2", NULL),
	                 (int)(n - (size_t)r3));
	log_capture_stop();

	/* after a torn tail, new puts land after the good records */
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	struct spool_msg *x = make_env(99, 1);
	put_sync(s, x, "new", 3);
	spool_close(s);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 3);
	assert_data(s, x->id, "new", 3);
	spool_close(s);
	spool_msg_free(x);

	free(orig);
	for (int i = 0; i < 3; i++)
		spool_msg_free(m[i]);
	tmpdir_rm(&td);
}

static void test_flipped_byte_is_detected_and_never_returned(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[3];
	off_t r2, r3;
	three_messages(td.path, m, &r2, &r3);
	char path[512];
	seg_file(td.path, 1, path, sizeof(path));
	size_t n;
	char *orig = slurp(path, &n);
	n = (size_t)seg_used(path); /* PREALLOC: the zeros after are not records */
	char *bad = malloc(n);
	log_capture_start();
	/* every byte of the middle record, header included */
	for (off_t i = r2; i < r3; i++) {
		memcpy(bad, orig, n);
		bad[i] ^= 0x5a;
		spit(path, bad, n);
		struct spool *s;
		assert_int_equal(spool_open(td.path, &s), TERN_OK);
		assert_msg_ok(s, m[0], 0); /* what came before is intact */
		assert_null(spool_get(s, m[1]->id));
		assert_msg_ok(s, m[2], 2); /* and so is what comes after */
		struct damage_seen ds = {0};
		assert_int_equal(spool_foreach_damage(s, damage_collect, &ds), 1);
		assert_int_equal(ds.d[0].offset, (uint64_t)r2);
		assert_int_equal(ds.d[0].length, (uint64_t)(r3 - r2));
		spool_close(s);
		/* the damaged file is kept, untouched, and never appended to */
		assert_int_equal(file_size(path), (off_t)n);
		assert_int_equal(count_segment_files(td.path), 2);
		char p2[512];
		seg_file(td.path, 2, p2, sizeof(p2));
		unlink(p2);
	}
	assert_int_equal(log_capture_count("event=spool_damaged seg=1 ", "action=kept"),
	                 (int)(r3 - r2));
	assert_int_equal(log_capture_count("event=spool_damaged ", "length=0"), 0);
	log_capture_stop();

	/* damage done while the spool is open is caught on read */
	spit(path, orig, n);
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_msg_ok(s, m[2], 2);
	memcpy(bad, orig, n);
	bad[n - 10] ^= 1;
	int fd = open(path, O_WRONLY);
	assert_int_equal(pwrite(fd, bad + n - 10, 1, (off_t)n - 10), 1);
	close(fd);
	struct tbuf b = TBUF_INIT(1 << 20);
	assert_int_equal(spool_read_data(s, m[2]->id, &b), TERN_ECORRUPT);
	assert_int_equal(b.len, 0);
	tbuf_free(&b);
	/* ... and the file is marked: reported, and never unlinked */
	struct damage_seen ds = {0};
	assert_int_equal(spool_foreach_damage(s, damage_collect, &ds), 1);
	assert_int_equal(ds.d[0].kind, SPOOL_DAMAGE_CHECKSUM);
	assert_string_equal(ds.d[0].record, "msg");
	assert_string_equal(ds.d[0].id, m[2]->id);
	assert_int_equal(ds.d[0].offset, (uint64_t)r3);
	assert_int_equal(ds.d[0].length, (uint64_t)n - (uint64_t)r3);
	for (int i = 0; i < 3; i++)
		spool_remove(s, m[i]->id);
	spool_close(s);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 0);
	spool_close(s);
	char aside_dir[512], kept[512];
	snprintf(aside_dir, sizeof(aside_dir), "%s/damaged", td.path);
	assert_true(seg_find_file(aside_dir, 1, kept, sizeof(kept)));
	size_t kn;
	char *kb = slurp(kept, &kn);
	assert_true(kn > n); /* the DEL records went to it, after the damage */
	assert_memory_equal(kb, bad, n);
	free(kb);

	free(bad);
	free(orig);
	for (int i = 0; i < 3; i++)
		spool_msg_free(m[i]);
	tmpdir_rm(&td);
}

/* Writes the (unstamped) records of b straight into segment no as this
 * version writes them, stamped with TEST_NONCE: what a crash can leave. */
static void write_segment(const char *dir, unsigned no, const struct tbuf *b)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/seg-%010u-%016llx.log", dir, no, TEST_NONCE);
	uint8_t *p = malloc(b->len + 1);
	if (b->len)
		memcpy(p, b->data, b->len);
	for (size_t off = 0; off < b->len;) {
		struct spool_rec_hdr h;
		size_t reclen;
		assert_int_equal(spool_rec_next(p + off, b->len - off, &fmt0, &h, &reclen),
		                 TERN_OK);
		spool_rec_stamp(p + off, TEST_NONCE);
		off += reclen;
	}
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, p, b->len), (ssize_t)b->len);
	close(fd);
	free(p);
}

/* The same records in the version 1 format of tern before this one (a
 * 16-byte header whose CRC covers header bytes 0..11 and the payload),
 * in a version 1 file name. */
static void write_segment_v1(const char *dir, unsigned no, const struct tbuf *b)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/seg-%010u.log", dir, no);
	struct tbuf o = TBUF_INIT(1u << 30);
	for (size_t off = 0; off < b->len;) {
		const uint8_t *r = (const uint8_t *)b->data + off;
		struct spool_rec_hdr h;
		size_t reclen;
		assert_int_equal(spool_rec_next(r, b->len - off, &fmt0, &h, &reclen), TERN_OK);
		uint8_t hd[SPOOL_REC_HDR_V1];
		memcpy(hd, r, 12);
		hd[4] = SPOOL_REC_V1;
		uint32_t crc = spool_crc32c(spool_crc32c(0, hd, 12), r + SPOOL_REC_HDR, h.len);
		for (int i = 0; i < 4; i++)
			hd[12 + i] = (uint8_t)(crc >> (8 * i));
		assert_int_equal(tbuf_append(&o, hd, sizeof(hd)), TERN_OK);
		assert_int_equal(tbuf_append(&o, r + SPOOL_REC_HDR, h.len), TERN_OK);
		off += reclen;
	}
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, o.data, o.len), (ssize_t)o.len);
	close(fd);
	tbuf_free(&o);
}

static void flip_byte(const char *path, off_t at, uint8_t mask)
{
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	uint8_t c;
	assert_int_equal(pread(fd, &c, 1, at), 1);
	c ^= mask;
	assert_int_equal(pwrite(fd, &c, 1, at), 1);
	close(fd);
}

static void test_message_finished_before_its_del_record_is_removed_at_open(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m = make_env(1, 2), *k = make_env(2, 1);
	struct tbuf b = TBUF_INIT(1 << 20);
	assert_int_equal(spool_rec_encode_msg(&b, m, "abc", 3, NULL), TERN_OK);
	assert_int_equal(spool_rec_encode_msg(&b, k, "keep", 4, NULL), TERN_OK);
	m->rcpts[0].state = RCPT_DELIVERED;
	m->rcpts[1].state = RCPT_BOUNCED;
	assert_int_equal(spool_rec_encode_rcpt(&b, m->id, 0, &m->rcpts[0], false), TERN_OK);
	assert_int_equal(spool_rec_encode_rcpt(&b, m->id, 1, &m->rcpts[1], false), TERN_OK);
	/* crash here: no DEL record for m */
	write_segment(td.path, 1, &b);
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 1);
	assert_null(spool_get(s, m->id));
	spool_close(s);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 1);
	assert_data(s, k->id, "keep", 4);
	spool_close(s);
	tbuf_free(&b);
	spool_msg_free(m);
	spool_msg_free(k);
	tmpdir_rm(&td);
}

static void test_damage_in_an_older_segment_spares_the_later_ones(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[4];
	struct tbuf b1 = TBUF_INIT(1 << 20), b2 = TBUF_INIT(1 << 20);
	for (int i = 0; i < 4; i++)
		m[i] = make_env((unsigned)i, 1);
	assert_int_equal(spool_rec_encode_msg(&b1, m[0], "zero", 4, NULL), TERN_OK);
	size_t cut = b1.len;
	assert_int_equal(spool_rec_encode_msg(&b1, m[1], "one", 3, NULL), TERN_OK);
	assert_int_equal(spool_rec_encode_msg(&b1, m[2], "two", 3, NULL), TERN_OK);
	assert_int_equal(spool_rec_encode_msg(&b2, m[3], "three", 5, NULL), TERN_OK);
	write_segment(td.path, 1, &b1);
	write_segment(td.path, 2, &b2);
	char path[512];
	seg_file(td.path, 1, path, sizeof(path));
	flip_byte(path, (off_t)cut + 20, 0x01); /* damage m[1]'s header (its nonce) */
	log_capture_start();
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(log_capture_count("event=spool_damaged seg=1 ", "kind=header"), 1);
	log_capture_stop();
	assert_data(s, m[0]->id, "zero", 4);
	assert_null(spool_get(s, m[1]->id));
	assert_data(s, m[2]->id, "two", 3); /* the scan found the next record */
	assert_data(s, m[3]->id, "three", 5);
	spool_close(s);
	tbuf_free(&b1);
	tbuf_free(&b2);
	for (int i = 0; i < 4; i++)
		spool_msg_free(m[i]);
	tmpdir_rm(&td);
}

/* ---- damage: resynchronisation, reporting, keeping the files ---------------- */

/* Puts n messages of 64 bytes (data seeds first..first+n-1) and records where
 * each record starts in segment 1, and where the last ends (starts[n]). */
static void put_many(struct spool *s, const char *dir, struct spool_msg **m, int n, off_t *starts)
{
	char path[512];
	for (int i = 0; i < n; i++) {
		char data[64];
		fill_data(data, sizeof(data), (unsigned)i);
		put_sync(s, m[i], data, sizeof(data));
		seg_file(dir, 1, path, sizeof(path));
		starts[i + 1] = seg_used(path);
	}
	starts[0] = 0;
}

/* The review finding: one flipped bit lost the nine intact, acknowledged
 * messages after it, and the segment holding them was then unlinked. */
static void test_one_flipped_bit_costs_one_message_and_the_file_is_kept(void **st)
{
	(void)st;
	enum { N = 10 };
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool *s;
	struct spool_msg *m[N];
	off_t at[N + 1];
	for (int i = 0; i < N; i++)
		m[i] = make_env((unsigned)i, 1);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	put_many(s, td.path, m, N, at);
	spool_close(s);
	char path[512];
	seg_file(td.path, 1, path, sizeof(path));
	flip_byte(path, at[1] - 5, 0x10); /* one bit of the first message's body */
	size_t n;
	char *damaged = slurp(path, &n);

	log_capture_start();
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), N - 1);
	assert_null(spool_get(s, m[0]->id));
	for (int i = 1; i < N; i++)
		assert_msg_ok(s, m[i], (unsigned)i);
	/* reported: one log line and one listed range, with the lost message's id */
	char want[128];
	snprintf(want, sizeof(want), "offset=0 length=%lld kind=checksum record=msg id=%s",
	         (long long)at[1], m[0]->id);
	assert_int_equal(log_capture_count("event=spool_damaged seg=1 file=seg-0000000001-", want),
	                 1);
	assert_int_equal(log_capture_count("event=spool_damage_found ranges=1", NULL), 1);
	log_capture_stop();
	struct damage_seen ds = {0};
	assert_int_equal(spool_foreach_damage(s, damage_collect, &ds), 1);
	assert_int_equal(ds.d[0].seg, 1);
	assert_int_equal(ds.d[0].kind, SPOOL_DAMAGE_CHECKSUM);
	assert_string_equal(ds.d[0].id, m[0]->id);
	assert_true(strncmp(ds.d[0].file, "seg-0000000001-", 15) == 0);
	struct spool_stats ss;
	spool_get_stats(s, &ss);
	assert_int_equal(ss.damaged, 1);

	/* Every message finishes: the segment is set aside, never unlinked. */
	for (int i = 1; i < N; i++)
		assert_int_equal(spool_update_rcpt(s, m[i]->id, 0, RCPT_DELIVERED, 0, "250 ok"),
		                 TERN_OK);
	struct spool_msg *x = make_env(100, 1);
	put_sync(s, x, "x", 1); /* the committer runs (and reaps) after the DELs */
	spool_close(s);
	assert_false(seg_find_file(td.path, 1, path, sizeof(path)));
	char aside_dir[512], aside[512];
	snprintf(aside_dir, sizeof(aside_dir), "%s/damaged", td.path);
	assert_true(seg_find_file(aside_dir, 1, aside, sizeof(aside)));
	size_t n2;
	char *kept = slurp(aside, &n2);
	assert_int_equal(n2, n);
	assert_memory_equal(kept, damaged, n);

	/* A later start still reports it, from DIR/damaged/. */
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 1);
	memset(&ds, 0, sizeof(ds));
	assert_int_equal(spool_foreach_damage(s, damage_collect, &ds), 1);
	assert_int_equal(ds.d[0].kind, SPOOL_DAMAGE_CHECKSUM);
	assert_int_equal(ds.d[0].length, (uint64_t)at[1]);
	assert_string_equal(ds.d[0].id, m[0]->id);
	assert_true(strncmp(ds.d[0].file, "damaged/seg-0000000001-", 23) == 0);
	spool_close(s);
	free(kept);
	free(damaged);
	spool_msg_free(x);
	for (int i = 0; i < N; i++)
		spool_msg_free(m[i]);
	tmpdir_rm(&td);
}

/* An older segment whose only message is damaged: before the fix recovery
 * skipped the rest of it, found nothing live and unlinked it at once. */
static void test_damaged_older_segment_is_set_aside_not_unlinked(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool *s;
	char path[512];
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	spool_debug_set_segment_max(s, 1024);
	struct spool_msg *m = make_env(1, 1), *m2 = make_env(2, 1);
	char big[2000];
	fill_data(big, sizeof(big), 1);
	put_sync(s, m, big, sizeof(big));
	put_sync(s, m2, "second segment", 14); /* rotates: segment 1 is now an old one */
	seg_file(td.path, 1, path, sizeof(path));
	spool_close(s);
	size_t n;
	char *orig = slurp(path, &n);
	off_t used = seg_used(path);
	flip_byte(path, 2, 0x01); /* its magic */
	orig[2] ^= 0x01;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 1);
	assert_data(s, m2->id, "second segment", 14);
	struct damage_seen ds = {0};
	assert_int_equal(spool_foreach_damage(s, damage_collect, &ds), 1);
	/* PREALLOC: segment 1 was prepared (zeros after its record), so bytes
	 * that are no record with only zeros after them read as a torn tail,
	 * which in an older segment is damage all the same */
	assert_int_equal(strlen(strrchr(path, '/') + 1), 37);
	assert_int_equal(ds.d[0].kind, SPOOL_DAMAGE_TORN);
	assert_int_equal(ds.d[0].offset, 0);
	assert_int_equal(ds.d[0].length, used);
	assert_string_equal(ds.d[0].id, m->id); /* a hint: its bytes still say so */
	spool_close(s);
	char aside_dir[512], aside[512];
	snprintf(aside_dir, sizeof(aside_dir), "%s/damaged", td.path);
	assert_false(seg_find_file(td.path, 1, aside, sizeof(aside)));
	assert_true(seg_find_file(aside_dir, 1, aside, sizeof(aside)));
	size_t n2;
	char *kept = slurp(aside, &n2);
	assert_int_equal(n2, n);
	assert_memory_equal(kept, orig, n);
	free(kept);
	free(orig);
	spool_msg_free(m);
	spool_msg_free(m2);
	tmpdir_rm(&td);
}

/* N messages with the given data, encoded (unstamped) into b; starts[i] is
 * where record i starts, starts[n] where the last ends. */
static void encode_many(struct tbuf *b, struct spool_msg **m, int n, size_t *starts)
{
	for (int i = 0; i < n; i++) {
		char data[200];
		fill_data(data, sizeof(data), (unsigned)i);
		starts[i] = b->len;
		assert_int_equal(spool_rec_encode_msg(b, m[i], data, 20 + (size_t)i * 17, NULL),
		                 TERN_OK);
	}
	starts[n] = b->len;
}

static void assert_msg_data(struct spool *s, struct spool_msg *m, unsigned seed, size_t len)
{
	char data[200];
	fill_data(data, sizeof(data), seed);
	assert_data(s, m->id, data, len);
}

/* A flipped bit in a length field must not make the scan skip (or take as
 * records) the bytes after it, in either format, in any segment. */
static void test_flipped_length_field_spares_the_records_after_it(void **st)
{
	(void)st;
	enum { N = 5 };
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[N];
	for (int i = 0; i < N; i++)
		m[i] = make_env((unsigned)i, 1);
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t at[N + 1];
	encode_many(&b, m, N, at);
	for (int v1 = 0; v1 <= 1; v1++) {
		/* In version 1 every header is 12 bytes shorter. */
		size_t len_off =
		    v1 ? at[2] - 2 * (SPOOL_REC_HDR - SPOOL_REC_HDR_V1) + 8 : at[2] + 8;
		for (int bit = 0; bit < 32; bit++) {
			for (int last = 0; last <= 1; last++) {
				dir_empty(td.path);
				if (v1)
					write_segment_v1(td.path, 1, &b);
				else
					write_segment(td.path, 1, &b);
				if (!last) { /* not the last segment: a later one follows */
					struct tbuf e = TBUF_INIT(1 << 16);
					write_segment(td.path, 2, &e);
				}
				char path[512];
				seg_file(td.path, 1, path, sizeof(path));
				flip_byte(path, (off_t)(len_off + (size_t)bit / 8),
				          (uint8_t)(1u << (bit % 8)));
				struct spool *s;
				assert_int_equal(spool_open(td.path, &s), TERN_OK);
				assert_int_equal(spool_count(s), N - 1);
				assert_null(spool_get(s, m[2]->id));
				for (int i = 0; i < N; i++)
					if (i != 2)
						assert_msg_data(s, m[i], (unsigned)i,
						                20 + (size_t)i * 17);
				assert_int_equal(spool_foreach_damage(s, NULL, NULL), 1);
				spool_close(s);
			}
		}
	}
	tbuf_free(&b);
	for (int i = 0; i < N; i++)
		spool_msg_free(m[i]);
	tmpdir_rm(&td);
}

static void zero_range(const char *path, off_t from, off_t to)
{
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	char z[4096] = {0};
	for (off_t o = from; o < to;) {
		size_t k = (size_t)(to - o) < sizeof(z) ? (size_t)(to - o) : sizeof(z);
		assert_int_equal(pwrite(fd, z, k, o), (ssize_t)k);
		o += (off_t)k;
	}
	close(fd);
}

/* Zeroed ranges (a lost write, a bad sector) cost the records they touch
 * and nothing else. */
static void test_zeroed_ranges_cost_only_the_records_they_touch(void **st)
{
	(void)st;
	enum { N = 8 };
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[N];
	for (int i = 0; i < N; i++)
		m[i] = make_env((unsigned)i, 1);
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t at[N + 1];
	encode_many(&b, m, N, at);
	/* {from, to, first damaged, last damaged} */
	const size_t cases[][4] = {
	    {at[2] + 5, at[4], 2, 3},       /* from inside one record to a boundary */
	    {at[2], at[3], 2, 2},           /* exactly one record */
	    {at[1] + 40, at[1] + 48, 1, 1}, /* a few bytes of one envelope */
	    {at[5] - 3, at[5] + 3, 4, 5},   /* across a boundary */
	    {0, at[1] + 2, 0, 1},           /* the very start */
	    {at[6] + 1, at[8], 6, 7},       /* up to the end of the last segment */
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		dir_empty(td.path);
		write_segment(td.path, 1, &b);
		char path[512];
		seg_file(td.path, 1, path, sizeof(path));
		zero_range(path, (off_t)cases[c][0], (off_t)cases[c][1]);
		struct spool *s;
		assert_int_equal(spool_open(td.path, &s), TERN_OK);
		for (int i = 0; i < N; i++) {
			bool hit = (size_t)i >= cases[c][2] && (size_t)i <= cases[c][3];
			if (hit)
				assert_null(spool_get(s, m[i]->id));
			else
				assert_msg_data(s, m[i], (unsigned)i, 20 + (size_t)i * 17);
		}
		assert_true(spool_foreach_damage(s, NULL, NULL) >= 1);
		spool_close(s);
		/* never trimmed, not even a zeroed end: it could hold an
		 * acknowledged message */
		assert_int_equal(file_size(path), (off_t)b.len);
	}
	tbuf_free(&b);
	for (int i = 0; i < N; i++)
		spool_msg_free(m[i]);
	tmpdir_rm(&td);
}

/* A damaged recipient-state or removal record can only bring work back (a
 * redelivery), never lose a message. */
static void test_damaged_state_records_bring_work_back_never_lose_it(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *a = make_env(1, 2), *b = make_env(2, 1);
	struct tbuf t = TBUF_INIT(1 << 20);
	assert_int_equal(spool_rec_encode_msg(&t, a, "aaa", 3, NULL), TERN_OK);
	assert_int_equal(spool_rec_encode_msg(&t, b, "bbb", 3, NULL), TERN_OK);
	struct spool_rcpt done = {.state = RCPT_DELIVERED, .attempts = 1};
	size_t rcpt_at = t.len;
	assert_int_equal(spool_rec_encode_rcpt(&t, a->id, 0, &done, false), TERN_OK);
	size_t del_at = t.len;
	assert_int_equal(spool_rec_encode_del(&t, b->id), TERN_OK); /* b was deleted */
	for (int which = 0; which < 2; which++) {
		dir_empty(td.path);
		write_segment(td.path, 1, &t);
		char path[512];
		seg_file(td.path, 1, path, sizeof(path));
		flip_byte(path, (off_t)(which ? del_at : rcpt_at) + SPOOL_REC_HDR + 3, 0x02);
		struct spool *s;
		assert_int_equal(spool_open(td.path, &s), TERN_OK);
		struct spool_msg *g = spool_get(s, a->id);
		assert_non_null(g);
		/* a's first recipient: delivered, unless that record was the damaged one */
		assert_int_equal(g->rcpts[0].state, which ? RCPT_DELIVERED : RCPT_QUEUED);
		spool_msg_free(g);
		assert_data(s, a->id, "aaa", 3);
		if (which) /* b's removal was lost: b comes back */
			assert_data(s, b->id, "bbb", 3);
		else
			assert_null(spool_get(s, b->id));
		struct damage_seen ds = {0};
		assert_int_equal(spool_foreach_damage(s, damage_collect, &ds), 1);
		assert_string_equal(ds.d[0].record, which ? "del" : "rcpt");
		assert_int_equal(ds.d[0].kind, SPOOL_DAMAGE_CHECKSUM);
		spool_close(s);
	}
	tbuf_free(&t);
	spool_msg_free(a);
	spool_msg_free(b);
	tmpdir_rm(&td);
}

/* A segment written by the version 1 format (tests/data/spool_v1, made by
 * tern before this change; see its SOURCE.md) recovers. */
static const char *v1_fixture(void)
{
	static char buf[1024];
	const char *file = __FILE__;
	const char *cut = strstr(file, "tests/unit/");
	if (cut && file[0] == '/') {
		int n = snprintf(buf, sizeof(buf), "%.*stests/data/spool_v1/seg-0000000001.log",
		                 (int)(cut - file), file);
		if (n > 0 && (size_t)n < sizeof(buf))
			return buf;
	}
	return "tests/data/spool_v1/seg-0000000001.log";
}

static const char *const v1_ids[4] = {"0V1AAAAAAAAAAAA0", "0V1AAAAAAAAAAAA1", "0V1AAAAAAAAAAAA2",
                                      "0V1AAAAAAAAAAAA3"};

static void assert_v1_message(struct spool *s, int i)
{
	struct spool_msg *g = spool_get(s, v1_ids[i]);
	assert_non_null(g);
	char want[128];
	snprintf(want, sizeof(want), "v1-sender-%d@example.org", i);
	assert_string_equal(g->sender, want);
	assert_int_equal(g->created, 1700000000 + i);
	snprintf(want, sizeof(want), "rcpt-%d@example.test", i);
	assert_string_equal(g->rcpts[0].addr, want);
	assert_int_equal(g->rcpts[0].state, RCPT_QUEUED);
	assert_int_equal(g->n_rcpts, i == 2 ? 2 : 1);
	if (i == 2) {
		assert_string_equal(g->rcpts[1].addr, "far-2@example.net");
		assert_int_equal(g->rcpts[1].state, RCPT_DEFERRED);
		assert_int_equal(g->rcpts[1].attempts, 1);
		assert_int_equal(g->rcpts[1].next_try, 1700003600);
		assert_string_equal(g->rcpts[1].last_reply, "451 4.4.1 later");
	}
	spool_msg_free(g);
	char data[1024];
	size_t n = 0;
	for (int k = 0; k <= i; k++)
		n += (size_t)snprintf(data + n, sizeof(data) - n, "version 1 message %d\r\n", i);
	assert_data(s, v1_ids[i], data, n);
}

static void copy_v1_fixture(const char *dir)
{
	size_t n;
	char *p = slurp(v1_fixture(), &n);
	char path[512];
	snprintf(path, sizeof(path), "%s/seg-0000000001.log", dir);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, p, n), (ssize_t)n);
	close(fd);
	free(p);
}

static void test_spool_written_by_version_1_recovers(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	copy_v1_fixture(td.path);
	struct spool *s;
	log_capture_start();
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(log_capture_count("event=spool_damaged", NULL), 0);
	log_capture_stop();
	assert_int_equal(spool_count(s), 3);
	assert_null(spool_get(s, v1_ids[1])); /* finished before the restart */
	assert_v1_message(s, 0);
	assert_v1_message(s, 2);
	assert_v1_message(s, 3);
	/* Nothing is appended to the old format: new records go to a new file. */
	struct spool_msg *x = make_env(7, 1);
	put_sync(s, x, "new", 3);
	char path[512];
	seg_file(td.path, 2, path, sizeof(path));
	assert_int_equal(strlen(strrchr(path, '/') + 1), 37); /* version 2, prepared */
	seg_file(td.path, 1, path, sizeof(path));
	assert_int_equal(file_size(path), 1002);
	/* The old segment goes once its messages are done: it held no damage. */
	for (int i = 0; i < 4; i++)
		if (i != 1)
			spool_remove(s, v1_ids[i]);
	struct spool_msg *y = make_env(8, 1);
	put_sync(s, y, "y", 1);
	spool_msg_free(y);
	spool_close(s);
	assert_false(seg_find_file(td.path, 1, path, sizeof(path)));
	snprintf(path, sizeof(path), "%s/damaged", td.path);
	assert_int_equal(access(path, F_OK), -1);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 2);
	assert_data(s, x->id, "new", 3);
	spool_close(s);

	/* Damage in a version 1 segment is resynchronised too. */
	dir_empty(td.path);
	copy_v1_fixture(td.path);
	seg_file(td.path, 1, path, sizeof(path));
	flip_byte(path, 9, 0x40); /* the first record's length */
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 2);
	assert_null(spool_get(s, v1_ids[0]));
	assert_v1_message(s, 2);
	assert_v1_message(s, 3);
	assert_int_equal(spool_foreach_damage(s, NULL, NULL), 1);
	spool_close(s);
	spool_msg_free(x);
	tmpdir_rm(&td);
}

/* A message may hold anything, including well-formed records with correct
 * checksums. When a damaged header makes the scan look inside it, none of
 * them may pass for a record: without the segment's nonce they cannot. */
static void test_records_inside_a_message_never_pass_for_real_ones(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[4];
	for (int i = 0; i < 4; i++)
		m[i] = make_env((unsigned)i, 1);
	/* The forgeries: a message to an outside address, the deletion of m[2],
	 * m[3]'s recipient marked delivered; with the placeholder nonce, a
	 * guessed one, and in version 1 form. */
	struct spool_msg *evil = make_env(66, 1);
	free(evil->rcpts[0].addr);
	evil->rcpts[0].addr = strdup("victim@elsewhere.example");
	evil->rcpts[0].local = false;
	struct tbuf fake = TBUF_INIT(1 << 20);
	struct spool_rcpt done = {.state = RCPT_DELIVERED};
	for (int variant = 0; variant < 3; variant++) {
		size_t from = fake.len;
		assert_int_equal(spool_rec_encode_msg(&fake, evil, "spam", 4, NULL), TERN_OK);
		assert_int_equal(spool_rec_encode_del(&fake, m[2]->id), TERN_OK);
		assert_int_equal(spool_rec_encode_rcpt(&fake, m[3]->id, 0, &done, false), TERN_OK);
		for (size_t off = from; variant && off < fake.len;) {
			struct spool_rec_hdr h;
			size_t reclen;
			assert_int_equal(spool_rec_next((uint8_t *)fake.data + off, fake.len - off,
			                                &fmt0, &h, &reclen),
			                 TERN_OK);
			spool_rec_stamp((uint8_t *)fake.data + off,
			                variant == 1 ? 0x1122334455667788ull : TEST_NONCE + 1);
			off += reclen;
		}
	}
	struct tbuf b = TBUF_INIT(1 << 20);
	assert_int_equal(spool_rec_encode_msg(&b, m[0], "zero", 4, NULL), TERN_OK);
	size_t at1 = b.len;
	assert_int_equal(spool_rec_encode_msg(&b, m[1], fake.data, fake.len, NULL), TERN_OK);
	size_t at2 = b.len;
	assert_int_equal(spool_rec_encode_msg(&b, m[2], "two", 3, NULL), TERN_OK);
	assert_int_equal(spool_rec_encode_msg(&b, m[3], "three", 5, NULL), TERN_OK);
	for (size_t hb = 0; hb < SPOOL_REC_HDR; hb += 3) {
		dir_empty(td.path);
		write_segment(td.path, 1, &b);
		char path[512];
		seg_file(td.path, 1, path, sizeof(path));
		flip_byte(path, (off_t)(at1 + hb), 0x04); /* m[1]'s header */
		struct spool *s;
		assert_int_equal(spool_open(td.path, &s), TERN_OK);
		assert_null(spool_get(s, evil->id));
		assert_null(spool_get(s, m[1]->id));
		assert_data(s, m[0]->id, "zero", 4);
		assert_data(s, m[2]->id, "two", 3);
		struct spool_msg *g = spool_get(s, m[3]->id);
		assert_non_null(g);
		assert_int_equal(g->rcpts[0].state, RCPT_QUEUED);
		spool_msg_free(g);
		assert_int_equal(spool_count(s), 3);
		struct damage_seen ds = {0};
		assert_int_equal(spool_foreach_damage(s, damage_collect, &ds), 1);
		assert_int_equal(ds.d[0].offset, at1);
		assert_int_equal(ds.d[0].length, at2 - at1);
		spool_close(s);
	}
	tbuf_free(&b);
	tbuf_free(&fake);
	spool_msg_free(evil);
	for (int i = 0; i < 4; i++)
		spool_msg_free(m[i]);
	tmpdir_rm(&td);
}

/* Only an append cut short is trimmed, and only at the end of the last
 * segment; anything else at an end is damage, and kept. */
static void test_only_a_real_torn_tail_is_cut(void **st)
{
	(void)st;
	enum { N = 3 };
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[N];
	for (int i = 0; i < N; i++)
		m[i] = make_env((unsigned)i, 1);
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t at[N + 1];
	encode_many(&b, m, N, at);
	char path[512];
	struct spool *s;
	struct damage_seen ds;

	/* 1. The last record is whole but one bit of it is wrong: an
	 * acknowledged message could be in it. Kept, reported, not reused. */
	write_segment(td.path, 1, &b);
	seg_file(td.path, 1, path, sizeof(path));
	flip_byte(path, (off_t)b.len - 1, 0x01);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 2);
	memset(&ds, 0, sizeof(ds));
	assert_int_equal(spool_foreach_damage(s, damage_collect, &ds), 1);
	assert_int_equal(ds.d[0].kind, SPOOL_DAMAGE_CHECKSUM);
	assert_string_equal(ds.d[0].id, m[2]->id);
	spool_close(s);
	assert_int_equal(file_size(path), (off_t)b.len);
	assert_true(seg_find_file(td.path, 2, path, sizeof(path)));

	/* 2. Bytes that are no record header at the end of the last segment. */
	dir_empty(td.path);
	struct tbuf g = TBUF_INIT(1 << 20);
	assert_int_equal(tbuf_append(&g, b.data, b.len), TERN_OK);
	write_segment(td.path, 1, &g);
	seg_file(td.path, 1, path, sizeof(path));
	int fd = open(path, O_WRONLY | O_APPEND);
	assert_int_equal(write(fd, "garbage that is not a record header", 35), 35);
	close(fd);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 3);
	memset(&ds, 0, sizeof(ds));
	assert_int_equal(spool_foreach_damage(s, damage_collect, &ds), 1);
	assert_int_equal(ds.d[0].kind, SPOOL_DAMAGE_HEADER);
	assert_int_equal(ds.d[0].offset, b.len);
	assert_int_equal(ds.d[0].length, 35);
	spool_close(s);
	assert_int_equal(file_size(path), (off_t)b.len + 35);

	/* 3. An older segment that ends inside a record (a trim that failed,
	 * a file cut short by a copy): kept and reported as torn. */
	dir_empty(td.path);
	write_segment(td.path, 1, &b);
	seg_file(td.path, 1, path, sizeof(path));
	assert_int_equal(truncate(path, (off_t)at[2] + 40), 0);
	struct tbuf e = TBUF_INIT(1 << 16);
	write_segment(td.path, 2, &e);
	log_capture_start();
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(log_capture_count("torn_tail", NULL), 0);
	log_capture_stop();
	assert_int_equal(spool_count(s), 2);
	memset(&ds, 0, sizeof(ds));
	assert_int_equal(spool_foreach_damage(s, damage_collect, &ds), 1);
	assert_int_equal(ds.d[0].kind, SPOOL_DAMAGE_TORN);
	assert_int_equal(ds.d[0].offset, at[2]);
	assert_int_equal(ds.d[0].length, 40);
	spool_close(s);
	assert_int_equal(file_size(path), (off_t)at[2] + 40);

	/* 4. The same cut in the last segment is an interrupted append: cut off
	 * quietly (no damage), and the segment is appended to again. */
	dir_empty(td.path);
	write_segment(td.path, 1, &b);
	seg_file(td.path, 1, path, sizeof(path));
	assert_int_equal(truncate(path, (off_t)at[2] + 40), 0);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_foreach_damage(s, NULL, NULL), 0);
	put_sync(s, m[2], "again", 5);
	spool_close(s);
	assert_false(seg_find_file(td.path, 2, path, sizeof(path)));
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_data(s, m[2]->id, "again", 5);
	spool_close(s);

	tbuf_free(&g);
	tbuf_free(&b);
	for (int i = 0; i < N; i++)
		spool_msg_free(m[i]);
	tmpdir_rm(&td);
}

/* Compaction moves a damaged segment's live messages forward whatever its
 * age and fill, and the segment is then set aside, never unlinked; a
 * message whose record fails its check is never copied. */
static void test_compaction_sets_damaged_segments_aside(void **st)
{
	(void)st;
	enum { N = 4 };
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[N];
	for (int i = 0; i < N; i++)
		m[i] = make_env((unsigned)i, 1);
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t at[N + 1];
	encode_many(&b, m, N, at);
	write_segment(td.path, 1, &b);
	struct tbuf e = TBUF_INIT(1 << 16);
	write_segment(td.path, 2, &e);
	char path[512];
	seg_file(td.path, 1, path, sizeof(path));
	flip_byte(path, (off_t)at[1] + 2, 0x01); /* m[1]'s magic */
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 3);
	/* m[3]'s record is damaged after recovery: caught on read, never copied */
	flip_byte(path, (off_t)at[4] - 1, 0x01);
	struct tbuf r = TBUF_INIT(1 << 20);
	assert_int_equal(spool_read_data(s, m[3]->id, &r), TERN_ECORRUPT);
	tbuf_free(&r);
	assert_int_equal(spool_maintain(s), 2); /* m[0] and m[2], although seg 1 is young */
	assert_true(seg_find_file(td.path, 1, path, sizeof(path))); /* m[3] still pins it */
	assert_msg_data(s, m[0], 0, 20);
	assert_msg_data(s, m[2], 2, 20 + 2 * 17);
	assert_int_equal(spool_maintain(s), 0);
	assert_int_equal(spool_remove(s, m[3]->id), TERN_OK);
	struct spool_msg *x = make_env(9, 1);
	put_sync(s, x, "x", 1);
	spool_msg_free(x);
	struct damage_seen ds = {0};
	assert_int_equal(spool_foreach_damage(s, damage_collect, &ds), 2);
	assert_int_equal(ds.d[0].kind, SPOOL_DAMAGE_HEADER);
	assert_int_equal(ds.d[1].kind, SPOOL_DAMAGE_CHECKSUM);
	assert_string_equal(ds.d[1].id, m[3]->id);
	spool_close(s);
	assert_false(seg_find_file(td.path, 1, path, sizeof(path)));
	char aside_dir[512], aside[512];
	snprintf(aside_dir, sizeof(aside_dir), "%s/damaged", td.path);
	assert_true(seg_find_file(aside_dir, 1, aside, sizeof(aside)));
	assert_int_equal(file_size(aside), (off_t)b.len);
	/* the copies carry on after a restart; the damage is still listed */
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 3);
	assert_msg_data(s, m[0], 0, 20);
	assert_msg_data(s, m[2], 2, 20 + 2 * 17);
	assert_int_equal(spool_foreach_damage(s, NULL, NULL), 2);
	spool_close(s);
	tbuf_free(&b);
	for (int i = 0; i < N; i++)
		spool_msg_free(m[i]);
	tmpdir_rm(&td);
}

/* ---- the scanner, over memory ------------------------------------------------- */

struct memseg {
	const uint8_t *p;
	size_t n;
	struct {
		uint64_t off, len;
		bool rec;
	} ev[512];
	size_t nev;
};

static int mem_read(void *arg, uint64_t off, void *buf, size_t n)
{
	struct memseg *ms = arg;
	if (off > ms->n || n > ms->n - off)
		return TERN_EIO;
	memcpy(buf, ms->p + off, n);
	return TERN_OK;
}

static int mem_record(void *arg, const struct spool_rec_hdr *h, const uint8_t *payload,
                      uint64_t off)
{
	struct memseg *ms = arg;
	(void)payload;
	assert_true(ms->nev < 512);
	ms->ev[ms->nev].off = off;
	ms->ev[ms->nev].len = h->hdr_len + h->len;
	ms->ev[ms->nev++].rec = true;
	return TERN_OK;
}

static int mem_damage(void *arg, const struct spool_scan_damage *d)
{
	struct memseg *ms = arg;
	assert_true(ms->nev < 512);
	ms->ev[ms->nev].off = d->off;
	ms->ev[ms->nev].len = d->len;
	ms->ev[ms->nev++].rec = false;
	return TERN_OK;
}

/*
 * Random damage (flipped bits, zeroed and overwritten ranges, truncation)
 * to segments of both formats. Whatever the damage:
 *   - every byte is accounted for once, in order: records, damaged ranges,
 *     then at most a torn tail;
 *   - every record whose bytes were not touched is found, at its offset;
 *   - nothing is taken for a record that was not written as one.
 */
static void test_scan_finds_every_untouched_record_whatever_the_damage(void **st)
{
	(void)st;
	enum { N = 30 };
	struct tbuf b = TBUF_INIT(1 << 22);
	size_t at[N + 1];
	struct spool_msg *m[N];
	for (int i = 0; i < N; i++) {
		at[i] = b.len;
		m[i] = make_env((unsigned)i, 1 + (size_t)i % 3);
		char data[3000];
		fill_data(data, sizeof(data), (unsigned)i);
		if (i % 3 == 1)
			assert_int_equal(
			    spool_rec_encode_rcpt(&b, m[i]->id, 0, &m[i]->rcpts[0], i % 2),
			    TERN_OK);
		else if (i % 5 == 4)
			assert_int_equal(spool_rec_encode_del(&b, m[i]->id), TERN_OK);
		else
			assert_int_equal(
			    spool_rec_encode_msg(&b, m[i], data, (size_t)(i * 97) % 3000, NULL),
			    TERN_OK);
	}
	at[N] = b.len;
	/* both formats: v2 stamped with a nonce, and v1 */
	struct tbuf v[2] = {TBUF_INIT(1 << 22), TBUF_INIT(1 << 22)};
	size_t vat[2][N + 1];
	for (int i = 0; i < N; i++) {
		const uint8_t *r = (const uint8_t *)b.data + at[i];
		size_t plen = at[i + 1] - at[i] - SPOOL_REC_HDR;
		vat[0][i] = v[0].len;
		assert_int_equal(tbuf_append(&v[0], r, at[i + 1] - at[i]), TERN_OK);
		spool_rec_stamp((uint8_t *)v[0].data + vat[0][i], TEST_NONCE);
		vat[1][i] = v[1].len;
		uint8_t hd[SPOOL_REC_HDR_V1];
		memcpy(hd, r, 12);
		hd[4] = SPOOL_REC_V1;
		uint32_t crc = spool_crc32c(spool_crc32c(0, hd, 12), r + SPOOL_REC_HDR, plen);
		for (int k = 0; k < 4; k++)
			hd[12 + k] = (uint8_t)(crc >> (8 * k));
		assert_int_equal(tbuf_append(&v[1], hd, sizeof(hd)), TERN_OK);
		assert_int_equal(tbuf_append(&v[1], r + SPOOL_REC_HDR, plen), TERN_OK);
	}
	vat[0][N] = v[0].len;
	vat[1][N] = v[1].len;
	/* and PREALLOC: v2 in a prepared segment, the same bytes then zeros */
	const struct spool_seg_fmt fmts[3] = {{SPOOL_REC_V2, TEST_NONCE, false, false},
	                                      {SPOOL_REC_V1, 0, false, false},
	                                      {SPOOL_REC_V2, TEST_NONCE, true, false}};
	enum { ZTAIL = 9000 };
	struct tbuf pay = TBUF_INIT(SPOOL_REC_MAX_PAYLOAD);
	srand(1234);
	for (int iter = 0; iter < 900; iter++) {
		int ff = iter % 3, fv = ff == 2 ? 0 : ff;
		size_t n = v[fv].len + (ff == 2 ? ZTAIL : 0);
		uint8_t *p = calloc(n, 1);
		bool *touched = calloc(n + 1, 1);
		memcpy(p, v[fv].data, v[fv].len);
		int kinds = 1 + rand() % 3;
		for (int k = 0; k < kinds; k++) {
			size_t at0 = (size_t)rand() % n;
			size_t len = 1 + (size_t)rand() % (rand() % 4 == 0 ? 400 : 12);
			if (len > n - at0)
				len = n - at0;
			int how = rand() % 4;
			for (size_t j = at0; j < at0 + len; j++) {
				uint8_t old = p[j];
				if (how == 0)
					p[j] ^= (uint8_t)(1u << (rand() % 8));
				else if (how == 1)
					p[j] = 0;
				else
					p[j] = (uint8_t)rand();
				if (how == 0 && j > at0)
					p[j] = old; /* a flip is one bit */
				touched[j] |= p[j] != old;
			}
		}
		if (rand() % 5 == 0) { /* truncation */
			size_t cut = (size_t)rand() % n;
			for (size_t j = cut; j < n; j++)
				touched[j] = true;
			n = cut;
		}
		struct memseg ms = {.p = p, .n = n};
		struct spool_scan_ops ops = {&ms, mem_read, mem_record, mem_damage};
		struct spool_scan_result res;
		assert_int_equal(spool_scan(&ops, n, &fmts[ff], &pay, &res), TERN_OK);
		/* accounting: contiguous from 0 to torn_off, then the tail */
		uint64_t pos = 0;
		for (size_t k = 0; k < ms.nev; k++) {
			assert_int_equal(ms.ev[k].off, pos);
			assert_true(ms.ev[k].len > 0);
			pos += ms.ev[k].len;
		}
		assert_int_equal(pos, res.torn_off);
		assert_true(res.torn_off <= res.zero_off && res.zero_off <= n);
		/* a zero tail is only ever zeros, and only in a prepared segment */
		for (size_t j = res.zero_off; j < n; j++)
			assert_int_equal(p[j], 0);
		if (ff != 2)
			assert_int_equal(res.zero_off, n);
		/* records: exactly the originals, and every untouched one */
		size_t k = 0;
		for (int i = 0; i < N; i++) {
			size_t s0 = vat[fv][i], s1 = vat[fv][i + 1];
			bool intact = s1 <= n;
			for (size_t j = s0; intact && j < s1; j++)
				intact = !touched[j];
			while (k < ms.nev && (!ms.ev[k].rec || ms.ev[k].off < s0))
				k++;
			bool found = k < ms.nev && ms.ev[k].off == s0 && ms.ev[k].len == s1 - s0;
			if (intact && !found)
				fail_msg("iter %d format v%d: intact record %d at %zu lost", iter,
				         2 - fv, i, s0);
		}
		for (size_t j = 0; j < ms.nev; j++) {
			if (!ms.ev[j].rec)
				continue;
			bool orig = false;
			for (int i = 0; i < N && !orig; i++)
				orig = ms.ev[j].off == vat[fv][i] &&
				       ms.ev[j].len == vat[fv][i + 1] - vat[fv][i] &&
				       memcmp(p + vat[fv][i], v[fv].data + vat[fv][i],
				              ms.ev[j].len) == 0;
			if (!orig)
				fail_msg("iter %d: a record at %" PRIu64 " that was never written",
				         iter, ms.ev[j].off);
		}
		free(touched);
		free(p);
	}
	tbuf_free(&pay);
	tbuf_free(&v[0]);
	tbuf_free(&v[1]);
	tbuf_free(&b);
	for (int i = 0; i < N; i++)
		spool_msg_free(m[i]);
}

static void test_bad_calls_are_refused(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m = make_env(1, 1);
	struct waiter w;
	waiter_init(&w);
	assert_int_equal(spool_put(NULL, m, "x", 1, put_cb, &w), TERN_EINVAL);
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	/* one writer per spool directory */
	struct spool *s2 = (struct spool *)1;
	assert_int_equal(spool_open(td.path, &s2), TERN_EEXIST);
	assert_null(s2);
	assert_int_equal(spool_put(s, NULL, "x", 1, put_cb, &w), TERN_EINVAL);
	assert_int_equal(spool_put(s, m, NULL, 1, put_cb, &w), TERN_EINVAL);
	char saved = m->id[3];
	m->id[3] = 'U'; /* not Crockford base32 */
	assert_int_equal(spool_put(s, m, "x", 1, put_cb, &w), TERN_EINVAL);
	m->id[3] = saved;
	m->rcpts[0].state = RCPT_DELIVERED; /* nothing left to deliver */
	assert_int_equal(spool_put(s, m, "x", 1, put_cb, &w), TERN_EINVAL);
	m->rcpts[0].state = RCPT_QUEUED;
	put_sync(s, m, "x", 1);
	assert_int_equal(spool_put(s, m, "x", 1, put_cb, &w), TERN_EEXIST);
	struct tbuf b = TBUF_INIT(16);
	assert_int_equal(spool_read_data(s, "ZZZZZZZZZZZZZZZZ", &b), TERN_ENOTFOUND);
	assert_null(spool_get(s, "short"));
	spool_close(s);
	assert_int_equal(w.done, 0);
	/* a path that is not a directory */
	char file[512];
	seg_file(td.path, 1, file, sizeof(file));
	s2 = NULL;
	assert_int_not_equal(spool_open(file, &s2), TERN_OK);
	assert_null(s2);
	waiter_destroy(&w);
	spool_msg_free(m);
	tmpdir_rm(&td);
}

static void test_failed_write_fails_the_put_and_leaves_no_trace(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	struct spool_msg *a = make_env(1, 1), *big = make_env(2, 1), *c = make_env(3, 1);
	put_sync(s, a, "first", 5);
	char path[512];
	seg_file(td.path, 1, path, sizeof(path));
	off_t before = seg_used(path);

	/* A file size limit makes the write stop part-way (EFBIG): a real
	 * partial write followed by an error, like a full disk. */
	size_t n = 5u * 1024 * 1024;
	char *data = malloc(n);
	fill_data(data, n, 2);
	struct rlimit old, lim;
	getrlimit(RLIMIT_FSIZE, &old);
	lim = old;
	lim.rlim_cur = (rlim_t)before + 1024 * 1024;
	signal(SIGXFSZ, SIG_IGN);
	log_capture_start();
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	struct waiter w;
	waiter_init(&w);
	assert_int_equal(spool_put(s, big, data, n, put_cb, &w), TERN_OK);
	waiter_wait(&w, 1);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	assert_int_equal(w.ok, 0);
	assert_int_equal(w.last_err, TERN_ELIMIT); /* a full disk, as SMTP will say */
	waiter_destroy(&w);
	assert_int_equal(log_capture_count("event=spool_batch_failed", NULL), 1);
	log_capture_stop();
	assert_null(spool_get(s, big->id));
	assert_int_equal(seg_used(path), before); /* cut back */

	put_sync(s, c, "third", 5); /* the spool keeps going */
	spool_close(s);
	log_capture_start();
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(log_capture_count("event=spool_recover ", NULL), 0);
	log_capture_stop();
	assert_int_equal(spool_count(s), 2);
	assert_data(s, a->id, "first", 5);
	assert_data(s, c->id, "third", 5);
	assert_null(spool_get(s, big->id));
	spool_close(s);
	free(data);
	spool_msg_free(a);
	spool_msg_free(big);
	spool_msg_free(c);
	tmpdir_rm(&td);
}

static void test_large_message_round_trips(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool *s;
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	size_t n = 5u * 1024 * 1024 + 17;
	char *data = malloc(n);
	fill_data(data, n, 5);
	struct spool_msg *m = make_env(5, 2);
	put_sync(s, m, data, n);
	assert_data(s, m->id, data, n);
	spool_close(s);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	struct spool_msg *g = spool_get(s, m->id);
	assert_env_equal(m, g);
	spool_msg_free(g);
	assert_data(s, m->id, data, n);
	spool_close(s);
	free(data);
	spool_msg_free(m);
	tmpdir_rm(&td);
}

/* ---- compaction --------------------------------------------------------------- */

/* Mirrors spool_update_rcpt on the test's own copy of an envelope. */
static void update_both(struct spool *s, struct spool_msg *m, size_t i, enum rcpt_state st,
                        int64_t next_try, const char *reply)
{
	assert_int_equal(spool_update_rcpt(s, m->id, i, st, next_try, reply), TERN_OK);
	struct spool_rcpt *r = &m->rcpts[i];
	if (st == RCPT_DEFERRED || st == RCPT_DELIVERED || st == RCPT_BOUNCED)
		r->attempts++;
	r->state = st;
	r->next_try = next_try;
	if (reply) {
		free(r->last_reply);
		r->last_reply = strdup(reply);
	}
}

enum { CN = 40, CLEN = 7000, LIVE_A = 0, LIVE_B = 21 };

static bool is_live(int i)
{
	return i == LIVE_A || i == LIVE_B;
}

/* 40 messages of 7 kB in 32 kB segments (five to a segment, so one live
 * message is 1/5 of its segment); all but two
 * finish. LIVE_A (in segment 1) is deferred, LIVE_B (mid-way) is held on one
 * recipient and deferred twice on the other. Leaves the spool open. */
static struct spool *compaction_setup(const char *dir, struct spool_msg *m[CN])
{
	struct spool *s;
	assert_int_equal(spool_open(dir, &s), TERN_OK);
	spool_debug_set_segment_max(s, 32 * 1024);
	char data[CLEN];
	for (int i = 0; i < CN; i++) {
		m[i] = make_env((unsigned)i, 2);
		fill_data(data, sizeof(data), (unsigned)i);
		put_sync(s, m[i], data, sizeof(data));
		if (i != 25)
			continue;
		/* in a middle segment, which the later puts turn old: after the
		 * copies nothing needs these records and that segment goes too */
		update_both(s, m[LIVE_A], 0, RCPT_DEFERRED, 99, "451 4.4.1 later");
		update_both(s, m[LIVE_A], 1, RCPT_DELIVERED, 0, "250 2.0.0 ok");
		update_both(s, m[LIVE_B], 0, RCPT_HELD, 0, NULL);
		update_both(s, m[LIVE_B], 1, RCPT_DEFERRED, 100, "452 4.2.2 full");
		update_both(s, m[LIVE_B], 1, RCPT_DEFERRED, 200, NULL);
	}
	for (int i = 0; i < CN; i++) {
		if (is_live(i))
			continue;
		update_both(s, m[i], 0, RCPT_DELIVERED, 0, "250 ok");
		update_both(s, m[i], 1, RCPT_BOUNCED, 0, "550 no");
	}
	return s;
}

/* The live messages are there exactly as expected (envelope, recipient
 * states, bytes), and no finished one is. */
static void assert_compaction_state(struct spool *s, struct spool_msg *m[CN])
{
	char data[CLEN];
	assert_int_equal(spool_count(s), 2);
	for (int i = 0; i < CN; i++) {
		struct spool_msg *g = spool_get(s, m[i]->id);
		if (!is_live(i)) {
			assert_null(g);
			continue;
		}
		assert_non_null(g);
		assert_env_equal(m[i], g);
		spool_msg_free(g);
		fill_data(data, sizeof(data), (unsigned)i);
		assert_data(s, m[i]->id, data, sizeof(data));
	}
}

static void test_maintenance_copies_live_messages_forward_and_old_segments_go(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[CN];
	struct spool *s = compaction_setup(td.path, m);
	/* a put makes the committer run (and reap) after the DEL records */
	struct spool_msg *x = make_env(1000, 1);
	put_sync(s, x, "x", 1);
	spool_close(s);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_update_rcpt(s, x->id, 0, RCPT_DELIVERED, 0, NULL), TERN_OK);
	struct spool_stats ss;
	spool_get_stats(s, &ss);
	size_t before = ss.segments;
	printf("# segments before %zu\n", before);
	assert_true(before >= 3); /* the two live messages pin old segments */

	assert_int_equal(spool_maintain(s), 2);
	spool_get_stats(s, &ss);
	assert_true(ss.segments <= 2);
	assert_int_equal(count_segment_files(td.path), ss.segments);
	assert_compaction_state(s, m);
	assert_int_equal(spool_maintain(s), 0); /* nothing left to do */

	/* changes after the copy apply to it, across a restart */
	update_both(s, m[LIVE_A], 0, RCPT_DEFERRED, 300, "451 4.4.1 still later");
	spool_close(s);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_compaction_state(s, m);
	spool_get_stats(s, &ss);
	assert_true(ss.segments <= 2);
	assert_int_equal(count_segment_files(td.path), ss.segments);

	/* finishing a copied message removes it for good */
	update_both(s, m[LIVE_A], 0, RCPT_DELIVERED, 0, "250 ok");
	assert_int_equal(spool_remove(s, m[LIVE_B]->id), TERN_OK);
	assert_int_equal(spool_count(s), 0);
	spool_close(s);
	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_count(s), 0);
	assert_int_equal(count_segment_files(td.path), 1);
	spool_close(s);
	for (int i = 0; i < CN; i++)
		spool_msg_free(m[i]);
	spool_msg_free(x);
	tmpdir_rm(&td);
}

/* The segment files of a directory, kept in memory. */
struct snap {
	unsigned no[64];
	char name[64][64]; /* file names: the nonce is part of them */
	char *data[64];
	size_t len[64];  /* the bytes that hold records */
	size_t size[64]; /* the file's size (more when it is prepared: zeros) */
	size_t n;
};

static void snap_take(const char *dir, struct snap *sn)
{
	sn->n = 0;
	for (unsigned no = 1; no < 1000; no++) {
		char path[512];
		if (!seg_find_file(dir, no, path, sizeof(path)))
			continue;
		assert_true(sn->n < 64);
		sn->no[sn->n] = no;
		snprintf(sn->name[sn->n], sizeof(sn->name[0]), "%s", strrchr(path, '/') + 1);
		sn->data[sn->n] = slurp(path, &sn->size[sn->n]);
		sn->len[sn->n] = (size_t)seg_used(path);
		sn->n++;
	}
}

static void snap_free(struct snap *sn)
{
	for (size_t i = 0; i < sn->n; i++)
		free(sn->data[i]);
	sn->n = 0;
}

/* Writes n bytes of p to dir/name, then zeros up to size (a prepared
 * segment: nothing past what was written ever reached it). */
static void write_file(const char *dir, const char *name, const char *p, size_t n, size_t size)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, p, n), (ssize_t)n);
	if (size > n)
		assert_int_equal(ftruncate(fd, (off_t)size), 0);
	close(fd);
}

/* PREALLOC: crash states written twice, as appended files (cut where the
 * crash cut them) and as prepared ones (then zeros to the file's size). */
static bool crash_zeros;

/* Empties dir, then writes the old segments of `old` whose bit is set in
 * keep and the last segment of `cur`, cut at len: what a crash can leave. */
static void crash_state(const char *dir, const struct snap *old, uint64_t keep,
                        const struct snap *cur, size_t len)
{
	dir_empty(dir);
	unsigned last = cur->no[cur->n - 1];
	for (size_t i = 0; i < old->n; i++)
		if (old->no[i] != last && (keep >> i & 1))
			write_file(dir, old->name[i], old->data[i], old->len[i],
			           crash_zeros ? old->size[i] : 0);
	write_file(dir, cur->name[cur->n - 1], cur->data[cur->n - 1], len,
	           crash_zeros ? cur->size[cur->n - 1] : 0);
}

/* Record boundaries of buf from `from` on, plus points inside each record. */
static size_t cut_points(const struct snap *sn, size_t from, size_t to, size_t *cuts, size_t max)
{
	const char *buf = sn->data[sn->n - 1];
	struct spool_seg_fmt f = path_fmt(sn->name[sn->n - 1]);
	size_t n = 0, off = from;
	while (off < to && n + 6 < max) {
		struct spool_rec_hdr h;
		size_t reclen;
		assert_int_equal(
		    spool_rec_next((const uint8_t *)buf + off, to - off, &f, &h, &reclen), TERN_OK);
		size_t pts[] = {off,
		                off + 1,
		                off + SPOOL_REC_HDR - 1,
		                off + SPOOL_REC_HDR,
		                off + SPOOL_REC_HDR + 1,
		                off + reclen / 2,
		                off + reclen - 1};
		for (size_t i = 0; i < sizeof(pts) / sizeof(pts[0]) && n < max; i++)
			cuts[n++] = pts[i];
		off += reclen;
	}
	cuts[n++] = to;
	return n;
}

static void open_check_close(const char *dir, struct spool_msg *m[CN])
{
	/* twice: the first open may cut a torn tail and remove segments */
	for (int k = 0; k < 2; k++) {
		struct spool *s;
		assert_int_equal(spool_open(dir, &s), TERN_OK);
		assert_compaction_state(s, m);
		spool_close(s);
	}
}

static void test_crash_at_any_point_of_compaction_keeps_each_live_message_once(void **st)
{
	(void)st;
	struct tmpdir td;
	tmpdir_make(&td);
	struct spool_msg *m[CN];
	struct spool *s = compaction_setup(td.path, m);
	spool_close(s);
	struct snap before, after;
	snap_take(td.path, &before);
	assert_true(before.n >= 3);

	assert_int_equal(spool_open(td.path, &s), TERN_OK);
	assert_int_equal(spool_maintain(s), 2);
	spool_close(s);
	snap_take(td.path, &after);
	/* the copies went to the end of the same current segment */
	assert_int_equal(after.no[after.n - 1], before.no[before.n - 1]);
	size_t old_len = before.len[before.n - 1], new_len = after.len[after.n - 1];
	assert_true(new_len > old_len);
	assert_memory_equal(after.data[after.n - 1], before.data[before.n - 1], old_len);

	/* 1. Copies written but not (wholly) synced: every old segment is still
	 * there, the current one ends anywhere inside the copies. */
	size_t cuts[64];
	size_t nc;
	uint64_t all = 0;
	for (int zmode = 0; zmode < 2; zmode++) {
		crash_zeros = zmode; /* PREALLOC: and again with the prepared zeros */
		nc = cut_points(&after, old_len, new_len, cuts, 64);
		log_capture_start();
		for (size_t i = 0; i < nc; i++) {
			crash_state(td.path, &before, ~0ull, &after, cuts[i]);
			open_check_close(td.path, m);
		}
		log_capture_stop();

		/* 2. Copies synced, crash while the old segments are being unlinked:
		 * any of them may or may not be gone. */
		all = (1ull << (before.n - 1)) - 1;
		for (size_t k = 0; k < before.n; k++) {
			crash_state(td.path, &before, all >> k, &after, new_len); /* newest gone */
			open_check_close(td.path, m);
			crash_state(td.path, &before, all & (all << k), &after,
			            new_len); /* oldest gone */
			open_check_close(td.path, m);
		}
		srand(7);
		for (int k = 0; k < 40; k++) {
			crash_state(td.path, &before, (uint64_t)rand() & all, &after, new_len);
			open_check_close(td.path, m);
		}
	}
	crash_zeros = false;
	{
		/* 3. After compaction a copied message finishes (RCPT + DEL after the
		 * copy) and the other changes again; old segments come back as if
		 * their unlinks had not reached the disk. The finished one must not
		 * come back with them. */
		crash_state(td.path, &before, all, &after, new_len);
		assert_int_equal(spool_open(td.path, &s), TERN_OK);
		update_both(s, m[LIVE_B], 1, RCPT_DEFERRED, 400, "421 4.4.2 gone");
		update_both(s, m[LIVE_A], 0, RCPT_DELIVERED, 0, "250 ok");
		spool_close(s);
		struct snap fin;
		snap_take(td.path, &fin);
		assert_int_equal(fin.no[fin.n - 1], after.no[after.n - 1]);
		size_t fin_len = fin.len[fin.n - 1];
		for (int zmode = 0; zmode < 2; zmode++) {
			crash_zeros = zmode; /* PREALLOC: and again with the prepared zeros */
			for (uint64_t keep = 0; keep <= all; keep = keep * 2 + 1) {
				crash_state(td.path, &before, keep, &fin, fin_len);
				for (int k = 0; k < 2; k++) {
					assert_int_equal(spool_open(td.path, &s), TERN_OK);
					assert_int_equal(spool_count(s), 1);
					assert_null(spool_get(s, m[LIVE_A]->id));
					struct spool_msg *g = spool_get(s, m[LIVE_B]->id);
					assert_non_null(g);
					assert_env_equal(m[LIVE_B], g);
					spool_msg_free(g);
					spool_close(s);
				}
			}
			/* and cut anywhere in those last records: never a finished message */
			nc = cut_points(&fin, new_len, fin_len, cuts, 64);
			log_capture_start();
			for (size_t i = 0; i < nc; i++) {
				crash_state(td.path, &before, all, &fin, cuts[i]);
				assert_int_equal(spool_open(td.path, &s), TERN_OK);
				assert_true(spool_count(s) >= 1 && spool_count(s) <= 2);
				for (int j = 0; j < CN; j++)
					if (!is_live(j))
						assert_null(spool_get(s, m[j]->id));
				struct spool_msg *g = spool_get(s, m[LIVE_B]->id);
				assert_non_null(g);
				spool_msg_free(g);
				spool_close(s);
			}
			log_capture_stop();
		}
		crash_zeros = false;
		snap_free(&fin);
	}
	snap_free(&before);
	snap_free(&after);
	for (int i = 0; i < CN; i++)
		spool_msg_free(m[i]);
	tmpdir_rm(&td);
}

int main(void)
{
	/* Info lines are checked by some tests; keep them off the terminal
	 * unless asked for. */
	log_set_level(LOG_LVL_INFO);
	if (!getenv("TERN_TEST_VERBOSE")) {
		log_quiet_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
		log_set_fd(log_quiet_fd);
	}
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_crc32c_matches_standard_check_value),
	    cmocka_unit_test(test_record_roundtrip_keeps_every_field),
	    cmocka_unit_test(test_record_folder_flag),
	    cmocka_unit_test(test_record_auth_field_is_optional),
	    cmocka_unit_test(test_record_api_key_field_is_optional),
	    cmocka_unit_test(test_record_not_before_field_is_optional),
	    cmocka_unit_test(test_concurrent_puts_survive_reopen_identically),
	    cmocka_unit_test(test_foreach_lists_in_id_order),
	    cmocka_unit_test(test_rcpt_updates_survive_reopen),
	    cmocka_unit_test(test_finished_messages_leave_and_their_segments_go),
	    cmocka_unit_test(test_archive_pins_keep_finished_segments_until_released),
	    cmocka_unit_test(test_lone_state_records_are_written_without_a_later_put),
	    cmocka_unit_test(test_torn_tail_at_every_offset_recovers_complete_records),
	    cmocka_unit_test(test_flipped_byte_is_detected_and_never_returned),
	    cmocka_unit_test(test_message_finished_before_its_del_record_is_removed_at_open),
	    cmocka_unit_test(test_damage_in_an_older_segment_spares_the_later_ones),
	    cmocka_unit_test(test_one_flipped_bit_costs_one_message_and_the_file_is_kept),
	    cmocka_unit_test(test_damaged_older_segment_is_set_aside_not_unlinked),
	    cmocka_unit_test(test_flipped_length_field_spares_the_records_after_it),
	    cmocka_unit_test(test_zeroed_ranges_cost_only_the_records_they_touch),
	    cmocka_unit_test(test_damaged_state_records_bring_work_back_never_lose_it),
	    cmocka_unit_test(test_spool_written_by_version_1_recovers),
	    cmocka_unit_test(test_records_inside_a_message_never_pass_for_real_ones),
	    cmocka_unit_test(test_only_a_real_torn_tail_is_cut),
	    cmocka_unit_test(test_compaction_sets_damaged_segments_aside),
	    cmocka_unit_test(test_scan_finds_every_untouched_record_whatever_the_damage),
	    cmocka_unit_test(test_bad_calls_are_refused),
	    cmocka_unit_test(test_failed_write_fails_the_put_and_leaves_no_trace),
	    cmocka_unit_test(test_large_message_round_trips),
	    cmocka_unit_test(test_maintenance_copies_live_messages_forward_and_old_segments_go),
	    cmocka_unit_test(test_crash_at_any_point_of_compaction_keeps_each_live_message_once),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
