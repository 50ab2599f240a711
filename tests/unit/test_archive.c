/*
 * test_archive.c — the message archive (src/store/archive.c) and its HTTP
 * route parsing (src/http/archive_routes.c):
 *   - stored bytes come back byte for byte (CRLF, bare LF, NUL, 8-bit), from
 *     archive_raw and inside a zip export (stored entries, checked CRCs);
 *   - search uses the capture syntax on the shared index (a body word);
 *   - mbox export quotes From_ lines (mboxrd) and has one From_ per message;
 *   - retention with a given clock removes old messages but never held ones;
 *   - the archive follows the spool: an included message is read back from
 *     its segment byte for byte after it left the queue (the pin kept it),
 *     an excluded one is not archived;
 *   - the pure parsers: route paths (IDs are queue ids only) and query
 *     parameters (%XX, '+', NUL and bad escapes refused).
 */
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <zlib.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/id.h"
#include "http/archive_routes.h"
#include "queue/queue.h"
#include "store/archive.h"

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

struct fx {
	char dir[64];
	struct archive *ar;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/tern_archive_XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	char err[256];
	if (archive_open(f->dir, &f->ar, err, sizeof(err)) != TERN_OK) {
		fprintf(stderr, "archive_open: %s\n", err);
		return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	archive_close(f->ar);
	nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static const char MSG1[] = "Received: from x\r\nFrom: Alice <alice@example.org>\r\n"
                           "To: bob@example.net\r\nSubject: Quarterly budget\r\n\r\n"
                           "The secret word is marmalade.\r\nFrom the top.\r\n"
                           ">From quoted already\r\nbare\nlf\n";
/* 8-bit, a NUL and no final newline: still exactly these bytes */
static const char MSG2[] = "From: carol@example.org\r\nSubject: binary\r\n\r\nzzz\x00\xff\xfe end";

static void add(struct archive *ar, char id[QUEUE_ID_LEN + 1], int64_t created, const char *msg,
                size_t len)
{
	queue_id_new(id);
	const char *rcpts[] = {"bob@example.net"};
	assert_int_equal(
	    archive_add(ar, id, created, "alice@example.org", rcpts, 1, "inbound", msg, len),
	    TERN_OK);
}

static size_t count_sub(const char *h, size_t n, const char *needle)
{
	size_t c = 0, k = strlen(needle);
	for (size_t i = 0; i + k <= n; i++)
		if (memcmp(h + i, needle, k) == 0)
			c++;
	return c;
}

static uint32_t rd32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void test_raw_search_export(void **state)
{
	struct fx *f = *state;
	char id1[QUEUE_ID_LEN + 1], id2[QUEUE_ID_LEN + 1];
	int64_t now = (int64_t)time(NULL);
	add(f->ar, id1, now - 10, MSG1, sizeof(MSG1) - 1);
	add(f->ar, id2, now - 5, MSG2, sizeof(MSG2) - 1);
	const char *rcpts[] = {"x@y"};
	assert_int_equal(archive_add(f->ar, id1, now, "", rcpts, 1, "inbound", "a", 1),
	                 TERN_EEXIST);
	assert_int_equal(archive_add(f->ar, "../../etc/pass", now, "", rcpts, 1, "inbound", "a", 1),
	                 TERN_EINVAL);

	struct tbuf b = TBUF_INIT(1 << 20);
	assert_int_equal(archive_raw(f->ar, id1, &b), TERN_OK);
	assert_int_equal(b.len, sizeof(MSG1) - 1);
	assert_memory_equal(b.data, MSG1, b.len);
	tbuf_reset(&b);
	assert_int_equal(archive_raw(f->ar, id2, &b), TERN_OK);
	assert_int_equal(b.len, sizeof(MSG2) - 1);
	assert_memory_equal(b.data, MSG2, b.len);
	tbuf_reset(&b);
	assert_int_equal(archive_raw(f->ar, "AAAAAAAAAAAAAAAA", &b), TERN_ENOTFOUND);
	assert_int_equal(archive_raw(f->ar, "x/y", &b), TERN_EINVAL);

	int err;
	json_t *r = archive_search(f->ar, "marmalade", 0, 10, &err);
	assert_non_null(r);
	assert_int_equal(json_integer_value(json_object_get(r, "messages_count")), 1);
	assert_int_equal(json_integer_value(json_object_get(r, "total")), 2);
	json_t *m = json_array_get(json_object_get(r, "messages"), 0);
	assert_string_equal(json_string_value(json_object_get(m, "ID")), id1);
	assert_string_equal(json_string_value(json_object_get(m, "Subject")), "Quarterly budget");
	json_decref(r);
	r = archive_search(f->ar, "from:carol", 0, 10, &err);
	assert_int_equal(json_integer_value(json_object_get(r, "messages_count")), 1);
	json_decref(r);
	assert_null(archive_search(f->ar, "before:2026-02-30", 0, 10, &err));
	assert_int_equal(err, TERN_ESYNTAX);

	/* zip: two stored entries, oldest first, bytes and CRCs intact */
	size_t n = 0;
	tbuf_reset(&b);
	assert_int_equal(archive_export(f->ar, "", ARCHIVE_ZIP, &b, &n), TERN_OK);
	assert_int_equal(n, 2);
	const unsigned char *z = (const unsigned char *)b.data;
	size_t off = 0;
	const char *want[] = {MSG1, MSG2};
	size_t wlen[] = {sizeof(MSG1) - 1, sizeof(MSG2) - 1};
	const char *ids[] = {id1, id2};
	for (int i = 0; i < 2; i++) {
		assert_int_equal(rd32(z + off), 0x04034b50);
		assert_int_equal(z[off + 8] | z[off + 9] << 8, 0); /* stored */
		uint32_t crc = rd32(z + off + 14), size = rd32(z + off + 18);
		size_t nl = (size_t)(z[off + 26] | z[off + 27] << 8);
		assert_int_equal(size, wlen[i]);
		assert_int_equal(nl, QUEUE_ID_LEN + 4);
		assert_memory_equal(z + off + 30, ids[i], QUEUE_ID_LEN);
		const unsigned char *data = z + off + 30 + nl;
		assert_memory_equal(data, want[i], wlen[i]);
		assert_int_equal(crc, (uint32_t)crc32(0L, data, (uInt)size));
		off += 30 + nl + size;
	}
	assert_int_equal(rd32(z + off), 0x02014b50);                       /* central directory */
	assert_int_equal(rd32(z + b.len - 22), 0x06054b50);                /* end record */
	assert_int_equal(z[b.len - 22 + 10] | z[b.len - 22 + 11] << 8, 2); /* entries */

	/* mbox: one From_ line each; "From the top." and ">From" quoted once more */
	tbuf_reset(&b);
	assert_int_equal(archive_export(f->ar, "", ARCHIVE_MBOX, &b, &n), TERN_OK);
	assert_int_equal(n, 2);
	assert_int_equal(strncmp(b.data, "From alice@example.org ", 23), 0);
	assert_int_equal(count_sub(b.data, b.len, "\nFrom alice@example.org "), 1);
	assert_int_equal(count_sub(b.data, b.len, "\n>From the top."), 1);
	assert_int_equal(count_sub(b.data, b.len, "\n>>From quoted already"), 1);
	assert_int_equal(count_sub(b.data, b.len, "\nFrom the top."), 0);

	/* to a file (the API's streamed export): the same bytes, both formats,
	 * and an empty export is an empty file */
	const enum archive_format fmts[] = {ARCHIVE_MBOX, ARCHIVE_ZIP};
	for (int i = 0; i < 2; i++) {
		tbuf_reset(&b);
		assert_int_equal(archive_export(f->ar, "", fmts[i], &b, &n), TERN_OK);
		int fd = archive_tmpfile(f->ar);
		assert_true(fd >= 0);
		uint64_t bytes = 0;
		size_t n2 = 0;
		assert_int_equal(archive_export_fd(f->ar, "", fmts[i], fd, &bytes, &n2), TERN_OK);
		assert_int_equal(n2, 2);
		assert_int_equal(bytes, b.len);
		char got[8192];
		assert_true(b.len <= sizeof(got));
		assert_int_equal(pread(fd, got, sizeof(got), 0), (ssize_t)b.len);
		assert_memory_equal(got, b.data, b.len);
		assert_int_equal(
		    archive_export_fd(f->ar, "nosuchwordanywhere", ARCHIVE_MBOX, fd, &bytes, &n2),
		    TERN_OK);
		assert_int_equal(bytes, 0);
		assert_int_equal(n2, 0);
		close(fd);
	}
	tbuf_free(&b);
}

static void test_retention_respects_hold(void **state)
{
	struct fx *f = *state;
	char old1[QUEUE_ID_LEN + 1], old2[QUEUE_ID_LEN + 1], fresh[QUEUE_ID_LEN + 1];
	int64_t now = 2000000000;
	add(f->ar, old1, now - 100, MSG1, sizeof(MSG1) - 1);
	add(f->ar, old2, now - 100, MSG2, sizeof(MSG2) - 1);
	add(f->ar, fresh, now - 5, MSG1, sizeof(MSG1) - 1);
	assert_int_equal(archive_set_hold(f->ar, old1, true), TERN_OK);
	assert_int_equal(archive_set_hold(f->ar, "AAAAAAAAAAAAAAAA", true), TERN_ENOTFOUND);
	size_t removed = 9;
	assert_int_equal(archive_expire(f->ar, now, 0, &removed), TERN_OK); /* 0: forever */
	assert_int_equal(removed, 0);
	assert_int_equal(archive_expire(f->ar, now, 50, &removed), TERN_OK);
	assert_int_equal(removed, 1);
	struct tbuf b = TBUF_INIT(1 << 20);
	assert_int_equal(archive_raw(f->ar, old2, &b), TERN_ENOTFOUND);
	assert_int_equal(archive_raw(f->ar, old1, &b), TERN_OK); /* held */
	tbuf_reset(&b);
	assert_int_equal(archive_raw(f->ar, fresh, &b), TERN_OK); /* young */
	int err;
	json_t *r = archive_search(f->ar, "marmalade", 0, 10, &err);
	assert_int_equal(json_integer_value(json_object_get(r, "messages_count")), 2);
	json_decref(r);
	/* released, the old one goes; the young one stays */
	assert_int_equal(archive_set_hold(f->ar, old1, false), TERN_OK);
	assert_int_equal(archive_expire(f->ar, now, 50, &removed), TERN_OK);
	assert_int_equal(removed, 1);
	r = archive_search(f->ar, "", 0, 10, &err);
	assert_int_equal(json_integer_value(json_object_get(r, "total")), 1);
	json_decref(r);
	tbuf_free(&b);
}

/* A spool under the fixture's dir, opened as serve opens it for the archive. */
static struct spool *open_spool(struct fx *f)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/spool", f->dir);
	struct spool *sp;
	assert_int_equal(spool_open_flags(path, SPOOL_OPEN_ARCHIVE, &sp), TERN_OK);
	archive_catch_up(f->ar, sp);
	spool_set_commit_hook(sp, archive_want, archive_on_commit, f->ar);
	return sp;
}

static void put(struct spool *sp, struct spool_msg *m, const char *data, size_t len)
{
	queue_id_new(m->id);
	m->size = len;
	assert_int_equal(spool_put_wait(sp, m, data, len), TERN_OK);
}

/* The archive follows the spool: what it includes is read back from the
 * spool's segment byte for byte, even after the message left the queue
 * (delivered: its pin kept the segment); what it does not include is
 * not archived. */
static void test_follows_the_spool(void **state)
{
	struct fx *f = *state;
	struct conf_archive c = {
	    .enabled = true, .retention = 0, .inbound = true, .outbound = false};
	assert_int_equal(archive_start(f->ar, &c), TERN_OK);
	struct spool *sp = open_spool(f);
	struct spool_rcpt rl = {.addr = "bob@example.test", .local = true};
	struct spool_rcpt rr = {.addr = "far@remote.example", .local = false};
	struct spool_msg m = {
	    .sender = "alice@example.org", .created = 1700000000, .rcpts = &rl, .n_rcpts = 1};
	put(sp, &m, MSG1, sizeof(MSG1) - 1);
	assert_int_equal(spool_remove(sp, m.id), TERN_OK); /* delivered at once */
	struct spool_msg skip = m;                         /* remote only: not included */
	skip.rcpts = &rr;
	put(sp, &skip, MSG1, sizeof(MSG1) - 1);
	archive_stop(f->ar); /* the writer finishes its queue before it stops */
	spool_close(sp);
	struct tbuf b = TBUF_INIT(1 << 20);
	assert_int_equal(archive_raw(f->ar, m.id, &b), TERN_OK);
	assert_int_equal(b.len, sizeof(MSG1) - 1);
	assert_memory_equal(b.data, MSG1, sizeof(MSG1) - 1);
	assert_int_equal(archive_raw(f->ar, skip.id, &b), TERN_ENOTFOUND);
	tbuf_free(&b);
}

/* The writer waits while mail is being committed (index later), but not
 * for ever: a steady stream of commits (one every 10 ms, as from a busy
 * server) still sees its first message archived while it lasts. */
static void test_a_steady_stream_is_archived_while_it_lasts(void **state)
{
	struct fx *f = *state;
	struct conf_archive c = {.enabled = true, .retention = 0, .inbound = true};
	assert_int_equal(archive_start(f->ar, &c), TERN_OK);
	struct spool *sp = open_spool(f);
	struct spool_rcpt rl = {.addr = "bob@example.test", .local = true};
	struct spool_msg m = {
	    .sender = "alice@example.org", .created = 1700000000, .rcpts = &rl, .n_rcpts = 1};
	char first[QUEUE_ID_LEN + 1];
	struct tbuf b = TBUF_INIT(1 << 20);
	bool archived = false;
	for (int i = 0; i < 3000 && !archived; i++) { /* at most 30 s of stream */
		put(sp, &m, MSG1, sizeof(MSG1) - 1);
		if (i == 0)
			memcpy(first, m.id, sizeof(first));
		usleep(10000);
		tbuf_reset(&b);
		archived = archive_raw(f->ar, first, &b) == TERN_OK;
	}
	assert_true(archived);
	assert_memory_equal(b.data, MSG1, sizeof(MSG1) - 1);
	tbuf_free(&b);
	archive_stop(f->ar);
	spool_close(sp);
}

/* What a crash left half-made in incoming/ is removed at start (an ID.tmp,
 * an ID.tail without its ID.msg); a waiting ID.msg and its ID.tail stay
 * and are archived. */
static void test_start_sweeps_what_a_crash_left_in_incoming(void **state)
{
	struct fx *f = *state;
	char a[QUEUE_ID_LEN + 1], b[QUEUE_ID_LEN + 1], path[256];
	queue_id_new(a);
	queue_id_new(b);
	const char *names[] = {".tmp", ".tail"};
	for (int i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "%s/archive/incoming/%s%s", f->dir, a, names[i]);
		FILE *fp = fopen(path, "w");
		assert_non_null(fp);
		fputs("half", fp);
		fclose(fp);
	}
	/* b: a spilled message's head in b.msg and its tail in b.tail */
	static const char tail[] = "01234tail of the message\r\n";
	snprintf(path, sizeof(path), "%s/archive/incoming/%s.tail", f->dir, b);
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fputs(tail, fp);
	fclose(fp);
	snprintf(path, sizeof(path), "%s/archive/incoming/%s.msg", f->dir, b);
	fp = fopen(path, "w");
	assert_non_null(fp);
	fprintf(fp, "tern-archive 2 1700000000 1 5 %zu alice@example.org\n1 bob@example.test\n",
	        sizeof(tail) - 1);
	fputs("Subject: head\r\n\r\n", fp);
	fclose(fp);
	struct conf_archive c = {.enabled = true, .retention = 0, .inbound = true};
	assert_int_equal(archive_start(f->ar, &c), TERN_OK);
	for (int i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "%s/archive/incoming/%s%s", f->dir, a, names[i]);
		assert_int_not_equal(access(path, F_OK), 0);
	}
	archive_close(f->ar); /* the writer drains incoming/ before it stops */
	char err[256];
	assert_int_equal(archive_open(f->dir, &f->ar, err, sizeof(err)), TERN_OK);
	struct tbuf got = TBUF_INIT(1 << 20);
	assert_int_equal(archive_raw(f->ar, b, &got), TERN_OK);
	static const char want[] = "Subject: head\r\n\r\ntail of the message\r\n";
	assert_int_equal(got.len, sizeof(want) - 1);
	assert_memory_equal(got.data, want, sizeof(want) - 1);
	tbuf_free(&got);
	snprintf(path, sizeof(path), "%s/archive/incoming/%s.tail", f->dir, b);
	assert_int_not_equal(access(path, F_OK), 0);
}

static void test_route_parse(void **state)
{
	(void)state;
	struct archive_route_req r;
	assert_int_equal(archive_route_parse("", 0, &r), TERN_OK);
	assert_int_equal(r.kind, AR_LIST);
	assert_int_equal(archive_route_parse("/export", 7, &r), TERN_OK);
	assert_int_equal(r.kind, AR_EXPORT);
	char id[QUEUE_ID_LEN + 1], p[64];
	queue_id_new(id);
	snprintf(p, sizeof(p), "/%s/raw", id);
	assert_int_equal(archive_route_parse(p, strlen(p), &r), TERN_OK);
	assert_int_equal(r.kind, AR_RAW);
	assert_string_equal(r.id, id);
	snprintf(p, sizeof(p), "/%s/hold", id);
	assert_int_equal(archive_route_parse(p, strlen(p), &r), TERN_OK);
	assert_int_equal(r.kind, AR_HOLD);
	const char *bad[] = {"/exports",
	                     "/x",
	                     "/../../../etc/raw",
	                     "/AAAAAAAAAAAAAAA/raw",
	                     "/aaaaaaaaaaaaaaaa/raw",
	                     "/AAAAAAAAAAAAAAAA/raw/",
	                     "/AAAAAAAAAAAAAAAA/"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(archive_route_parse(bad[i], strlen(bad[i]), &r), TERN_ENOTFOUND);
}

static void test_query_param(void **state)
{
	(void)state;
	char v[16];
	const char *qs = "queryx=1&query=from%3Aa+b%20c&format=zip&empty";
	assert_int_equal(archive_query_param(qs, strlen(qs), "query", v, sizeof(v)), TERN_OK);
	assert_string_equal(v, "from:a b c");
	assert_int_equal(archive_query_param(qs, strlen(qs), "format", v, sizeof(v)), TERN_OK);
	assert_string_equal(v, "zip");
	assert_int_equal(archive_query_param(qs, strlen(qs), "empty", v, sizeof(v)), TERN_OK);
	assert_string_equal(v, "");
	assert_int_equal(archive_query_param(qs, strlen(qs), "limit", v, sizeof(v)),
	                 TERN_ENOTFOUND);
	assert_int_equal(archive_query_param("query=%zz", 9, "query", v, sizeof(v)), TERN_ESYNTAX);
	assert_int_equal(archive_query_param("query=%4", 8, "query", v, sizeof(v)), TERN_ESYNTAX);
	assert_int_equal(archive_query_param("query=a%00b", 11, "query", v, sizeof(v)),
	                 TERN_ESYNTAX);
	assert_int_equal(archive_query_param("query=0123456789abcdef", 22, "query", v, sizeof(v)),
	                 TERN_ELIMIT);
	/* only the given length is read */
	assert_int_equal(archive_query_param("query=abc", 7, "query", v, sizeof(v)), TERN_OK);
	assert_string_equal(v, "a");
	enum archive_format fm;
	assert_true(archive_format_parse("zip", 3, &fm) && fm == ARCHIVE_ZIP);
	assert_true(archive_format_parse("mbox", 4, &fm) && fm == ARCHIVE_MBOX);
	assert_false(archive_format_parse("tar", 3, &fm));
}

static void test_mboxrd_quote(void **state)
{
	(void)state;
	struct tbuf b = TBUF_INIT(1 << 16);
	const char in[] = "From a\n>From b\nxFrom c\n>>From d\r\nFrom";
	assert_int_equal(archive_mboxrd_quote(in, sizeof(in) - 1, &b), TERN_OK);
	const char want[] = ">From a\n>>From b\nxFrom c\n>>>From d\r\nFrom\n";
	assert_int_equal(b.len, sizeof(want) - 1);
	assert_memory_equal(b.data, want, b.len);
	tbuf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_raw_search_export, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_retention_respects_hold, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_follows_the_spool, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_a_steady_stream_is_archived_while_it_lasts, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_start_sweeps_what_a_crash_left_in_incoming, setup,
	                                    teardown),
	    cmocka_unit_test(test_route_parse),
	    cmocka_unit_test(test_query_param),
	    cmocka_unit_test(test_mboxrd_quote),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
