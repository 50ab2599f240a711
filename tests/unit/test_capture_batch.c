/*
 * test_capture_batch.c — the capture store's group commit (capture_add_batch,
 * src/store/capture.c) as capture mode's ingest (src/queue/capture_ingest.c)
 * uses it: a batch goes in as one transaction without a savepoint per
 * message; when one message fails, the batch is redone with savepoints so
 * that it fails alone and every other message is stored, listed and indexed
 * for search exactly once. Also the ingest itself: every put is answered
 * once, with the capture ID of a listed message, and stopping answers what
 * is still queued.
 *
 * A message is made to fail with an SQLite trigger on its subject (added
 * from a second connection, as a damaged or full database would refuse it).
 */
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "core/buf.h"
#include "core/err.h"
#include "queue/queue.h"
#include "store/store.h"

struct fx {
	char dir[128];
	char sub[160];
	struct capture_store *st;
};

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	if (!f)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/tern_capbatch_XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->sub, sizeof(f->sub), "%s/capture", f->dir);
	char err[256] = "";
	if (capture_open(f->sub, &f->st, err, sizeof(err)) != TERN_OK) {
		fprintf(stderr, "capture_open: %s\n", err);
		return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	capture_close(f->st);
	nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

/* Makes the store refuse any message whose Subject is "boom". */
static void add_boom_trigger(struct fx *f)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/capture.db", f->sub);
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	char *err = NULL;
	int rc = sqlite3_exec(db,
	                      "CREATE TRIGGER boom BEFORE INSERT ON messages "
	                      "WHEN NEW.subject = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END",
	                      NULL, NULL, &err);
	if (rc != SQLITE_OK)
		fprintf(stderr, "trigger: %s\n", err ? err : "?");
	sqlite3_free(err);
	assert_int_equal(rc, SQLITE_OK);
	sqlite3_close(db);
}

static char *msg(const char *subject, const char *word)
{
	struct tbuf b = TBUF_INIT(SIZE_MAX / 2);
	assert_int_equal(tbuf_printf(&b,
	                             "From: <a@batch.test>\r\nTo: <b@batch.test>\r\nSubject: %s\r\n"
	                             "Message-ID: <%s@batch.test>\r\n\r\nthe word is %s\r\n",
	                             subject, word, word),
	                 TERN_OK);
	return tbuf_steal(&b, NULL);
}

static json_int_t count(struct fx *f, const char *query)
{
	json_t *l = capture_list(f->st, query, 0, 50);
	assert_non_null(l);
	json_int_t n = json_integer_value(json_object_get(l, "messages_count"));
	json_decref(l);
	return n;
}

static void test_one_failing_message_fails_alone(void **state)
{
	struct fx *f = *state;
	add_boom_trigger(f);
	const char *subjects[] = {"alpha", "boom", "gamma", "delta"};
	const char *words[] = {"zebrafirst", "zebraboom", "zebrathird", "zebrafourth"};
	char *raw[4];
	const char *to[] = {"b@batch.test"};
	struct capture_item items[4];
	for (size_t i = 0; i < 4; i++) {
		raw[i] = msg(subjects[i], words[i]);
		items[i] = (struct capture_item){.raw = raw[i],
		                                 .len = strlen(raw[i]),
		                                 .env_from = "a@batch.test",
		                                 .env_to = to,
		                                 .n_to = 1};
	}
	assert_int_equal(capture_add_batch(f->st, items, 4), TERN_OK);
	assert_int_equal(items[0].rc, TERN_OK);
	assert_int_not_equal(items[1].rc, TERN_OK);
	assert_string_equal(items[1].id, "");
	assert_int_equal(items[2].rc, TERN_OK);
	assert_int_equal(items[3].rc, TERN_OK);
	assert_int_equal(capture_sync(f->st), TERN_OK);

	/* each of the others once, with its row and its search index entry */
	assert_int_equal(count(f, NULL), 3);
	assert_int_equal(count(f, "zebrafirst"), 1);
	assert_int_equal(count(f, "zebraboom"), 0);
	assert_int_equal(count(f, "zebrathird"), 1);
	assert_int_equal(count(f, "zebrafourth"), 1);
	for (size_t i = 0; i < 4; i++) {
		if (items[i].rc != TERN_OK)
			continue;
		json_t *m = capture_message(f->st, items[i].id, false);
		assert_non_null(m);
		assert_string_equal(json_string_value(json_object_get(m, "Subject")), subjects[i]);
		json_decref(m);
	}
	for (size_t i = 0; i < 4; i++)
		free(raw[i]);
}

static void test_batch_without_failure_stores_all(void **state)
{
	struct fx *f = *state;
	enum { N = 40 };
	char *raw[N];
	const char *to[] = {"b@batch.test"};
	struct capture_item items[N];
	for (size_t i = 0; i < N; i++) {
		char w[32];
		snprintf(w, sizeof(w), "word%zu", i);
		raw[i] = msg("plain", w);
		items[i] = (struct capture_item){.raw = raw[i],
		                                 .len = strlen(raw[i]),
		                                 .env_from = "a@batch.test",
		                                 .env_to = to,
		                                 .n_to = 1};
	}
	assert_int_equal(capture_add_batch(f->st, items, N), TERN_OK);
	for (size_t i = 0; i < N; i++)
		assert_int_equal(items[i].rc, TERN_OK);
	assert_int_equal(count(f, NULL), N);
	assert_int_equal(count(f, "word17"), 1);
	for (size_t i = 0; i < N; i++)
		free(raw[i]);
}

/* ----------------------------------------------------------------- ingest */

struct answers {
	pthread_mutex_t mu;
	size_t n, ok;
	char ids[64][CAPTURE_ID_MAX];
};

static void answered(void *arg, int err, const char *id)
{
	struct answers *a = arg;
	pthread_mutex_lock(&a->mu);
	if (err == TERN_OK && id && a->ok < 64)
		snprintf(a->ids[a->ok++], CAPTURE_ID_MAX, "%s", id);
	a->n++;
	pthread_mutex_unlock(&a->mu);
}

static void test_ingest_answers_every_put_once_with_a_listed_id(void **state)
{
	struct fx *f = *state;
	add_boom_trigger(f);
	struct capture_ingest *ci = capture_ingest_new(f->st);
	assert_non_null(ci);
	struct answers a = {.mu = PTHREAD_MUTEX_INITIALIZER};
	struct spool_rcpt rcpt = {.addr = "b@batch.test", .local = true};
	enum { N = 30 };
	for (size_t i = 0; i < N; i++) {
		char w[32];
		snprintf(w, sizeof(w), "ingest%zu", i);
		char *raw = msg(i == 7 ? "boom" : "fine", w);
		struct spool_msg env = {.sender = "a@batch.test", .rcpts = &rcpt, .n_rcpts = 1};
		snprintf(env.id, sizeof(env.id), "INGEST%010zu", i);
		env.client = "addr=local proto=TEST auth=someone";
		assert_int_equal(capture_ingest_put(ci, &env, raw, strlen(raw), answered, &a),
		                 TERN_OK);
		free(raw); /* the ingest keeps its own copy */
	}
	/* a recipient to deliver elsewhere is the spool's, not the ingest's */
	struct spool_rcpt remote = {.addr = "x@remote.test", .local = false};
	struct spool_msg env = {.sender = "a@batch.test", .rcpts = &remote, .n_rcpts = 1};
	assert_int_equal(capture_ingest_put(ci, &env, "x", 1, answered, &a), TERN_EINVAL);

	capture_ingest_stop(ci); /* commits and answers what is queued */
	assert_int_equal(a.n, N);
	assert_int_equal(a.ok, N - 1);
	assert_int_equal(capture_ingest_put(ci, &env, "x", 1, answered, &a), TERN_EINVAL);
	rcpt.local = true;
	struct spool_msg late = {.sender = "a@batch.test", .rcpts = &rcpt, .n_rcpts = 1};
	assert_int_equal(capture_ingest_put(ci, &late, "x", 1, answered, &a), TERN_EIO);
	capture_ingest_free(ci);

	assert_int_equal(count(f, NULL), N - 1);
	for (size_t i = 0; i < a.ok; i++) {
		json_t *m = capture_message(f->st, a.ids[i], false);
		assert_non_null(m);
		json_decref(m);
	}
	assert_int_equal(count(f, "ingest7"), 0);
	assert_int_equal(count(f, "ingest29"), 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_one_failing_message_fails_alone, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_batch_without_failure_stores_all, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_ingest_answers_every_put_once_with_a_listed_id,
	                                    setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
