/*
 * test_capture.c — the capture store (src/store/capture.c, capture_query.c)
 * and its MIME view (src/mime/mime.c): what Mailpit API clients see.
 *
 * Each test gets a fresh store directory under /tmp. Behaviour checked:
 * listing newest-first with paging, totals and unread counts; the Message
 * JSON of a rich message (alternative + inline cid image + RFC 2231 and
 * encoded-word file names); headers; raw and part downloads; the search
 * syntax against a small corpus; deletes, read flags, tags, pruning,
 * notifications, recovery after an unclean stop; part trees of mime4j's
 * test messages. A timing test prints (never asserts) insert, list and
 * search latency for 10,000 messages.
 */
#include <dirent.h>
#include <errno.h>
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
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "core/buf.h"
#include "core/err.h"
#include "mime/mime.h"
#include "store/capture_query.h"
#include "store/store.h"
#include "testdata.h"

/* ------------------------------------------------------------ fixtures */

struct fx {
	char dir[128];
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
	/* TERN_CAPTURE_TMP: where store directories go (e.g. /dev/shm to time
	 * the store without the disk's fsync cost) */
	const char *base = getenv("TERN_CAPTURE_TMP");
	snprintf(f->dir, sizeof(f->dir), "%s/tern_capture_XXXXXX", base && *base ? base : "/tmp");
	if (!mkdtemp(f->dir))
		return -1;
	/* the store creates DIR itself: open a subdirectory that does not exist */
	char sub[160];
	snprintf(sub, sizeof(sub), "%s/capture", f->dir);
	char err[256] = "";
	if (capture_open(sub, &f->st, err, sizeof(err)) != TERN_OK) {
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

static void reopen(struct fx *f)
{
	capture_close(f->st);
	char sub[160], err[256] = "";
	snprintf(sub, sizeof(sub), "%s/capture", f->dir);
	assert_int_equal(capture_open(sub, &f->st, err, sizeof(err)), TERN_OK);
}

static bool slurp(const char *path, struct tbuf *b)
{
	FILE *fp = fopen(path, "rb");
	if (!fp)
		return false;
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof(chunk), fp)) > 0)
		assert_int_equal(tbuf_append(b, chunk, n), TERN_OK);
	fclose(fp);
	return true;
}

static void load_data(const char *name, struct tbuf *b)
{
	char path[1200];
	snprintf(path, sizeof(path), "%s/mime/%s", testdata_dir(), name);
	if (!slurp(path, b))
		fail_msg("cannot read %s", path);
}

/* A small plain message. */
static void add_simple(struct capture_store *st, const char *from, const char *to,
                       const char *subject, const char *body, char id[CAPTURE_ID_MAX])
{
	char raw[4096];
	int n = snprintf(raw, sizeof(raw),
	                 "From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@t>\r\n"
	                 "Content-Type: text/plain; charset=utf-8\r\n\r\n%s\r\n",
	                 from, to, subject, subject, body);
	assert_true(n > 0 && (size_t)n < sizeof(raw));
	const char *env_to[] = {"envelope-rcpt@example.net"};
	assert_int_equal(capture_add(st, raw, (size_t)n, "env-sender@example.net", env_to, 1, id),
	                 TERN_OK);
}

static const char *summary_str(json_t *list, size_t i, const char *key)
{
	return json_string_value(
	    json_object_get(json_array_get(json_object_get(list, "messages"), i), key));
}

static json_int_t jint(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	assert_true(json_is_integer(v));
	return json_integer_value(v);
}

/* ------------------------------------------------------ add, list, paging */

static void test_list_is_newest_first_with_paging_and_counts(void **state)
{
	struct fx *f = *state;
	char ids[7][CAPTURE_ID_MAX];
	for (int i = 0; i < 7; i++) {
		char subj[32];
		snprintf(subj, sizeof(subj), "message %d", i);
		add_simple(f->st, "a@example.com", "b@example.com", subj, "hello", ids[i]);
		assert_int_equal(strlen(ids[i]), 22);
		for (const char *p = ids[i]; *p; p++)
			assert_non_null(strchr(
			    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", *p));
	}
	assert_string_not_equal(ids[0], ids[1]);

	json_t *l = capture_list(f->st, NULL, 0, 3);
	assert_non_null(l);
	static const char *const keys[] = {"total",          "unread",          "count",
	                                   "messages_count", "messages_unread", "start"};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		assert_true(json_is_integer(json_object_get(l, keys[i])));
	assert_true(json_is_array(json_object_get(l, "tags")));
	assert_int_equal(jint(l, "total"), 7);
	assert_int_equal(jint(l, "unread"), 7);
	assert_int_equal(jint(l, "count"), 3);
	assert_int_equal(jint(l, "messages_count"), 7);
	assert_int_equal(jint(l, "start"), 0);
	assert_string_equal(summary_str(l, 0, "ID"), ids[6]);
	assert_string_equal(summary_str(l, 2, "ID"), ids[4]);
	json_t *m0 = json_array_get(json_object_get(l, "messages"), 0);
	assert_string_equal(json_string_value(json_object_get(m0, "Subject")), "message 6");
	assert_string_equal(json_string_value(json_object_get(m0, "MessageID")), "message 6@t");
	assert_true(json_is_false(json_object_get(m0, "Read")));
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(m0, "From"), "Address")),
	    "a@example.com");
	assert_true(json_is_array(json_object_get(m0, "To")));
	assert_true(json_is_array(json_object_get(m0, "Cc")));
	assert_true(json_is_array(json_object_get(m0, "Bcc")));
	assert_true(json_is_array(json_object_get(m0, "ReplyTo")));
	assert_true(json_is_array(json_object_get(m0, "Tags")));
	assert_true(json_is_integer(json_object_get(m0, "Size")));
	assert_true(json_is_integer(json_object_get(m0, "Attachments")));
	assert_string_equal(json_string_value(json_object_get(m0, "Snippet")), "hello");
	const char *created = json_string_value(json_object_get(m0, "Created"));
	assert_non_null(created);
	/* RFC 3339: 2024-01-02T03:04:05.678Z */
	assert_int_equal(strlen(created), 24);
	assert_true(created[4] == '-' && created[10] == 'T' && created[23] == 'Z');
	json_decref(l);

	l = capture_list(f->st, NULL, 6, 3);
	assert_int_equal(jint(l, "count"), 1);
	assert_int_equal(jint(l, "start"), 6);
	assert_string_equal(summary_str(l, 0, "ID"), ids[0]);
	json_decref(l);
	l = capture_list(f->st, NULL, 100, 3);
	assert_int_equal(jint(l, "count"), 0);
	assert_int_equal(jint(l, "total"), 7);
	json_decref(l);

	uint64_t msgs, unread, bytes;
	capture_stats(f->st, &msgs, &unread, &bytes);
	assert_int_equal(msgs, 7);
	assert_int_equal(unread, 7);
	assert_true(bytes > 0);

	/* counters survive a reopen */
	reopen(f);
	capture_stats(f->st, &msgs, &unread, NULL);
	assert_int_equal(msgs, 7);
	assert_int_equal(unread, 7);
}

/* ---------------------------------------------------------- message JSON */

static json_t *find_part(json_t *arr, const char *part_id)
{
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *p = json_array_get(arr, i);
		if (strcmp(json_string_value(json_object_get(p, "PartID")), part_id) == 0)
			return p;
	}
	return NULL;
}

static void add_rich(struct fx *f, char id[CAPTURE_ID_MAX], struct tbuf *raw)
{
	load_data("rich.eml", raw);
	const char *to[] = {"bob@example.com"};
	assert_int_equal(capture_add(f->st, raw->data, raw->len, "env@sender.test", to, 1, id),
	                 TERN_OK);
}

static void test_message_json_has_bodies_inline_and_attachments(void **state)
{
	struct fx *f = *state;
	char id[CAPTURE_ID_MAX];
	struct tbuf raw = TBUF_INIT(1 << 20);
	add_rich(f, id, &raw);

	json_t *m = capture_message(f->st, id, false);
	assert_non_null(m);
	assert_string_equal(json_string_value(json_object_get(m, "ID")), id);
	assert_string_equal(json_string_value(json_object_get(m, "MessageID")),
	                    "rich-1@sender.test");
	/* RFC 2047 in Subject (two encoded words, folded) and in a display name */
	assert_string_equal(json_string_value(json_object_get(m, "Subject")),
	                    "Caf\xc3\xa9 menu for \xe2\x9c\x93 today");
	json_t *from = json_object_get(m, "From");
	assert_string_equal(json_string_value(json_object_get(from, "Name")),
	                    "Andr\xc3\xa9 Sender");
	assert_string_equal(json_string_value(json_object_get(from, "Address")),
	                    "andre@sender.test");
	json_t *to = json_object_get(m, "To");
	assert_int_equal(json_array_size(to), 2);
	assert_string_equal(json_string_value(json_object_get(json_array_get(to, 1), "Address")),
	                    "carol@example.com");
	assert_string_equal(
	    json_string_value(json_object_get(json_array_get(json_object_get(m, "Cc"), 0), "Name")),
	    "Dave, D.");
	assert_string_equal(json_string_value(json_object_get(
	                        json_array_get(json_object_get(m, "ReplyTo"), 0), "Address")),
	                    "replies@sender.test");
	assert_int_equal(json_array_size(json_object_get(m, "Bcc")), 0);
	assert_string_equal(json_string_value(json_object_get(m, "ReturnPath")),
	                    "bounce@sender.test");
	assert_string_equal(json_string_value(json_object_get(m, "Date")),
	                    "2024-01-02T12:34:56+02:00");
	assert_int_equal(jint(m, "Size"), (json_int_t)raw.len);
	/* text: quoted-printable ISO-8859-1 -> UTF-8; HTML: base64 UTF-8 */
	assert_non_null(strstr(json_string_value(json_object_get(m, "Text")),
	                       "Caf\xc3\xa9 menu: cr\xc3\xa8me br\xc3\xbbl\xc3\xa9"
	                       "e."));
	assert_non_null(strstr(json_string_value(json_object_get(m, "HTML")),
	                       "<img src=\"cid:logo@tern.test\">"));
	json_t *lu = json_object_get(m, "ListUnsubscribe");
	assert_int_equal(json_array_size(json_object_get(lu, "Links")), 2);
	assert_string_equal(json_string_value(json_object_get(lu, "Errors")), "");
	assert_string_equal(json_string_value(json_object_get(lu, "HeaderPost")),
	                    "List-Unsubscribe=One-Click");

	json_t *inl = json_object_get(m, "Inline");
	assert_int_equal(json_array_size(inl), 1);
	json_t *logo = find_part(inl, "1.2");
	assert_non_null(logo);
	assert_string_equal(json_string_value(json_object_get(logo, "FileName")), "logo.png");
	assert_string_equal(json_string_value(json_object_get(logo, "ContentType")), "image/png");
	assert_string_equal(json_string_value(json_object_get(logo, "ContentID")),
	                    "logo@tern.test");
	assert_int_equal(jint(logo, "Size"), 48);
	const char *md5 =
	    json_string_value(json_object_get(json_object_get(logo, "Checksums"), "MD5"));
	assert_non_null(md5);
	assert_int_equal(strlen(md5), 32);

	json_t *att = json_object_get(m, "Attachments");
	assert_int_equal(json_array_size(att), 2);
	json_t *pdf = find_part(att, "2");
	assert_non_null(pdf);
	/* RFC 2231: filename*=UTF-8''r%C3%A9sum%C3%A9%20final.pdf */
	assert_string_equal(json_string_value(json_object_get(pdf, "FileName")),
	                    "r\xc3\xa9sum\xc3\xa9 final.pdf");
	assert_string_equal(json_string_value(json_object_get(pdf, "ContentType")),
	                    "application/pdf");
	assert_string_equal(json_string_value(json_object_get(pdf, "ContentID")), "");
	assert_int_equal(jint(pdf, "Size"), 293);
	json_t *notes = find_part(att, "3");
	assert_non_null(notes);
	/* an encoded word in a name= parameter */
	assert_string_equal(json_string_value(json_object_get(notes, "FileName")), "\xc3\xbc"
	                                                                           "ber notes.txt");
	json_decref(m);

	/* the summary counts attachments, not inline parts */
	json_t *l = capture_list(f->st, NULL, 0, 10);
	json_t *s0 = json_array_get(json_object_get(l, "messages"), 0);
	assert_int_equal(jint(s0, "Attachments"), 2);
	assert_non_null(
	    strstr(json_string_value(json_object_get(s0, "Snippet")), "Caf\xc3\xa9 menu"));
	json_decref(l);

	assert_null(capture_message(f->st, "NoSuchMessage000000000", false));
	assert_null(capture_message(f->st, "../../etc/passwd", false));
	/* "latest" is Mailpit's alias for the newest message */
	m = capture_message(f->st, "latest", false);
	assert_non_null(m);
	assert_string_equal(json_string_value(json_object_get(m, "ID")), id);
	json_decref(m);
	tbuf_free(&raw);
}

static void test_headers_json_maps_names_to_value_lists(void **state)
{
	struct fx *f = *state;
	char id[CAPTURE_ID_MAX];
	struct tbuf raw = TBUF_INIT(1 << 20);
	add_rich(f, id, &raw);
	json_t *h = capture_headers(f->st, id);
	assert_non_null(h);
	json_t *mid = json_object_get(h, "Message-Id"); /* Go's canonical form, as Mailpit */
	assert_true(json_is_array(mid));
	assert_string_equal(json_string_value(json_array_get(mid, 0)), "<rich-1@sender.test>");
	json_t *rcv = json_object_get(h, "Received");
	assert_int_equal(json_array_size(rcv), 1);
	/* unfolded */
	assert_null(strchr(json_string_value(json_array_get(rcv, 0)), '\n'));
	assert_non_null(json_object_get(h, "Content-Type"));
	assert_non_null(json_object_get(h, "X-Mailer"));
	json_decref(h);
	assert_null(capture_headers(f->st, "nope"));
	tbuf_free(&raw);
}

static void test_raw_round_trips_byte_for_byte(void **state)
{
	struct fx *f = *state;
	/* odd bytes on purpose: NUL, 8-bit, bare LF, no final newline */
	static const char raw[] = "Subject: raw\r\nX-8bit: \xff\xfe\r\n\r\nbody\0with nul\nbare lf";
	const char *to[] = {"x@y"};
	char id[CAPTURE_ID_MAX];
	assert_int_equal(capture_add(f->st, raw, sizeof(raw) - 1, "s@t", to, 1, id), TERN_OK);
	struct tbuf out = TBUF_INIT(1 << 20);
	assert_int_equal(capture_raw(f->st, id, &out), TERN_OK);
	assert_int_equal(out.len, sizeof(raw) - 1);
	assert_memory_equal(out.data, raw, out.len);
	tbuf_free(&out);
	assert_int_equal(capture_raw(f->st, "AAAAAAAAAAAAAAAAAAAAAA", &out), TERN_ENOTFOUND);
	assert_int_equal(capture_raw(f->st, "../capture.db", &out), TERN_ENOTFOUND);
	assert_int_equal(capture_raw(f->st, "", &out), TERN_ENOTFOUND);

	/* the envelope is kept for release */
	char *from = NULL, **rcpts = NULL;
	size_t n = 0;
	assert_int_equal(capture_envelope(f->st, id, &from, &rcpts, &n), TERN_OK);
	assert_string_equal(from, "s@t");
	assert_int_equal(n, 1);
	assert_string_equal(rcpts[0], "x@y");
	free(from);
	free(rcpts[0]);
	free(rcpts);
	assert_int_equal(capture_envelope(f->st, "zzzzzzzzzzzzzzzzzzzzzz", &from, &rcpts, &n),
	                 TERN_ENOTFOUND);
}

static void test_part_download_is_transfer_decoded(void **state)
{
	struct fx *f = *state;
	char id[CAPTURE_ID_MAX];
	struct tbuf raw = TBUF_INIT(1 << 20), want = TBUF_INIT(1 << 20), out = TBUF_INIT(1 << 20);
	add_rich(f, id, &raw);
	char ct[128], fn[256];

	load_data("rich_logo.bin", &want);
	assert_int_equal(capture_part(f->st, id, "1.2", &out, ct, sizeof(ct), fn, sizeof(fn)),
	                 TERN_OK);
	assert_int_equal(out.len, want.len);
	assert_memory_equal(out.data, want.data, want.len);
	assert_string_equal(ct, "image/png");
	assert_string_equal(fn, "logo.png");

	tbuf_reset(&want);
	tbuf_reset(&out);
	load_data("rich_resume.bin", &want);
	assert_int_equal(capture_part(f->st, id, "2", &out, ct, sizeof(ct), fn, sizeof(fn)),
	                 TERN_OK);
	assert_int_equal(out.len, want.len);
	assert_memory_equal(out.data, want.data, want.len);
	assert_string_equal(fn, "r\xc3\xa9sum\xc3\xa9 final.pdf");

	/* a text part keeps its charset in the content type */
	tbuf_reset(&out);
	assert_int_equal(capture_part(f->st, id, "1.1.1", &out, ct, sizeof(ct), fn, sizeof(fn)),
	                 TERN_OK);
	assert_string_equal(ct, "text/plain; charset=iso-8859-1");
	assert_non_null(memmem(out.data, out.len, "Caf\xe9", 4)); /* bytes as sent, QP undone */

	tbuf_reset(&out);
	assert_int_equal(capture_part(f->st, id, "9", &out, ct, sizeof(ct), fn, sizeof(fn)),
	                 TERN_ENOTFOUND);
	/* containers are not downloadable parts */
	assert_int_equal(capture_part(f->st, id, "1", &out, ct, sizeof(ct), fn, sizeof(fn)),
	                 TERN_ENOTFOUND);
	tbuf_free(&raw);
	tbuf_free(&want);
	tbuf_free(&out);
}

/* --------------------------------------------------------------- search */

struct corpus_msg {
	const char *raw;
	const char *name; /* short label the table refers to */
};

static const struct corpus_msg CORPUS[] = {
    {"From: Alice Smith <alice@example.com>\r\nTo: bob@example.org\r\nSubject: Quarterly "
     "report\r\nMessage-ID: <m1@example.com>\r\n\r\nThe numbers are attached. Invoice "
     "42.\r\n",
     "A"},
    {"From: bob@example.org\r\nTo: Alice Smith <alice@example.com>\r\nCc: "
     "carol@example.net\r\nSubject: Re: Quarterly report\r\nMessage-ID: "
     "<m2@example.org>\r\n\r\nThanks, looks good.\r\n",
     "B"},
    {"From: Newsletter <news@shop.test>\r\nTo: alice@example.com\r\nBcc: "
     "audit@example.com\r\nSubject: 50% off caf\xc3\xa9 beans\r\nMessage-ID: <m3@shop.test>\r\n"
     "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
     "Content-Type: text/plain\r\n\r\nBig sale on coffee today\r\n--b\r\nContent-Type: "
     "application/pdf; name=flyer.pdf\r\nContent-Disposition: attachment; "
     "filename=flyer.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n--b--\r\n",
     "C"},
    {"From: carol@example.net\r\nTo: dave@example.com\r\nSubject: Lunch "
     "plans\r\nMessage-ID: <m4@example.net>\r\n\r\nPizza or sushi? The \"quarterly\" "
     "numbers can wait.\r\n",
     "D"},
};
#define NCORPUS (sizeof(CORPUS) / sizeof(CORPUS[0]))

static void load_corpus(struct fx *f, char ids[][CAPTURE_ID_MAX])
{
	for (size_t i = 0; i < NCORPUS; i++) {
		const char *to[] = {"envelope@example.com"};
		assert_int_equal(capture_add(f->st, CORPUS[i].raw, strlen(CORPUS[i].raw),
		                             "sender@bounce.test", to, 1, ids[i]),
		                 TERN_OK);
	}
}

/* The labels of a search result in corpus order, e.g. "AB". */
static void result_labels(struct fx *f, char ids[][CAPTURE_ID_MAX], const char *q, char *out)
{
	json_t *l = capture_list(f->st, q, 0, 100);
	if (!l)
		fail_msg("query %s returned NULL", q);
	json_t *msgs = json_object_get(l, "messages");
	assert_int_equal(jint(l, "messages_count"), (json_int_t)json_array_size(msgs));
	size_t k = 0;
	for (size_t i = 0; i < NCORPUS; i++)
		for (size_t j = 0; j < json_array_size(msgs); j++)
			if (strcmp(
			        json_string_value(json_object_get(json_array_get(msgs, j), "ID")),
			        ids[i]) == 0)
				out[k++] = CORPUS[i].name[0];
	out[k] = '\0';
	json_decref(l);
}

static void test_search_syntax_table(void **state)
{
	struct fx *f = *state;
	char ids[NCORPUS][CAPTURE_ID_MAX];
	load_corpus(f, ids);
	/* mark D read, tag A and C */
	const char *d[] = {ids[3]};
	assert_int_equal(capture_set_read(f->st, d, 1, true), TERN_OK);
	const char *ac[] = {ids[0], ids[2]};
	const char *tags[] = {"Important"};
	assert_int_equal(capture_set_tags(f->st, ac, 2, tags, 1), TERN_OK);

	static const struct {
		const char *q, *want;
	} cases[] = {
	    {"", "ABCD"},
	    {"quarterly", "ABD"},           /* free word: subject and body */
	    {"QUARTERLY report", "AB"},     /* words AND, any case */
	    {"\"quarterly report\"", "AB"}, /* phrase */
	    {"quart", "ABD"},               /* word prefix */
	    {"-quarterly", "C"},            /* negation with - */
	    {"!quarterly", "C"},            /* negation with ! */
	    {"cafe", "C"},                  /* accents folded */
	    {"flyer.pdf", "C"},             /* attachment file names are indexed */
	    {"from:alice", "A"},
	    {"from:\"Alice Smith\"", "A"},
	    {"from:example", "ABD"},
	    {"from:bounce.test", "ABCD"}, /* envelope sender */
	    {"to:alice@example.com", "BC"},
	    {"to:carol", "B"},                   /* Cc counts as To */
	    {"to:audit", "C"},                   /* and Bcc */
	    {"to:envelope@example.com", "ABCD"}, /* and the envelope */
	    {"cc:carol", "B"},
	    {"bcc:audit", "C"},
	    {"subject:report", "AB"},
	    {"subject:\"Re: Quarterly\"", "B"},
	    {"subject:50%", "C"}, /* LIKE wildcards are literal */
	    {"subject:_", ""},
	    {"-subject:report", "CD"},
	    {"message-id:m2@example.org", "B"},
	    {"message-id:<m3@shop.test>", "C"},
	    {"is:read", "D"},
	    {"is:unread", "ABC"},
	    {"!is:unread", "D"},
	    {"has:attachment", "C"},
	    {"-has:attachment", "ABD"},
	    {"tag:important", "AC"},
	    {"is:tagged", "AC"},
	    {"-tag:Important from:example", "BD"},
	    {"from:alice is:unread quarterly", "A"},
	    {"after:2000-01-01", "ABCD"},
	    {"before:2000-01-01", ""},
	    {"after:2999-12-31", ""},
	    {"sushi -pizza", ""},
	    {"sushi OR zebra", ""}, /* no OR operator: every word required */
	    {"'; DROP TABLE messages; --", ""},
	    {"unknown:thing", ""},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char got[8];
		result_labels(f, ids, cases[i].q, got);
		if (strcmp(got, cases[i].want) != 0)
			fail_msg("query [%s]: got [%s], want [%s]", cases[i].q, got, cases[i].want);
	}
	/* still there after the injection attempt */
	json_t *l = capture_list(f->st, NULL, 0, 10);
	assert_int_equal(jint(l, "total"), 4);
	json_decref(l);
	/* messages_unread follows the query, unread the whole mailbox */
	l = capture_list(f->st, "quarterly", 0, 10);
	assert_int_equal(jint(l, "messages_unread"), 2);
	assert_int_equal(jint(l, "unread"), 3);
	json_decref(l);
	/* malformed operator values are errors, not silent matches */
	assert_null(capture_list(f->st, "before:2024-13-01", 0, 10));
	assert_null(capture_list(f->st, "is:maybe", 0, 10));
}

static void test_query_parser_keeps_input_out_of_sql(void **state)
{
	(void)state;
	static const char *const inputs[] = {"from:\"x' OR 1=1 --\"",
	                                     "subject:); DELETE FROM messages; --",
	                                     "\"unterminated",
	                                     "-",
	                                     "!",
	                                     "- -",
	                                     "from:",
	                                     "a\"b\"c",
	                                     "tag:\"a b\" -tag:c"};
	for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
		struct capture_query q;
		int rc = capture_query_parse(inputs[i], strlen(inputs[i]), &q);
		assert_int_equal(rc, TERN_OK);
		for (const char *p = q.where.data; *p; p++)
			assert_true(strchr("'\"", *p) == NULL || strncmp(p, "'\\'", 3) == 0 ||
			            (p > q.where.data && strncmp(p - 2, "'\\'", 3) == 0));
		assert_null(strstr(q.where.data, "DELETE"));
		assert_null(strstr(q.where.data, "1=1"));
		capture_query_free(&q);
	}
	struct capture_query q;
	char big[CQ_MAX_QUERY + 2];
	memset(big, 'a', sizeof(big));
	assert_int_equal(capture_query_parse(big, sizeof(big), &q), TERN_ELIMIT);
	capture_query_free(&q);
	char many[CQ_MAX_TERMS * 3 + 10];
	size_t n = 0;
	for (int i = 0; i <= CQ_MAX_TERMS; i++) {
		many[n++] = 'w';
		many[n++] = ' ';
	}
	assert_int_equal(capture_query_parse(many, n, &q), TERN_ELIMIT);
	capture_query_free(&q);
	assert_int_equal(capture_query_parse("after:2024-02-30", 16, &q), TERN_ESYNTAX);
	capture_query_free(&q);
}

/* --------------------------------------------------- delete, read, tags */

/* A message's bytes are still stored: its file (large messages) or its
 * row in the raw table (small ones, inserted with the message's row). */
static bool file_exists_for(struct fx *f, const char *id)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/capture/msg/%.2s/%s.eml", f->dir, id, id);
	if (access(path, F_OK) == 0)
		return true;
	snprintf(path, sizeof(path), "%s/capture/capture.db", f->dir);
	sqlite3 *db;
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	sqlite3_stmt *s;
	assert_int_equal(sqlite3_prepare_v2(db,
	                                    "SELECT 1 FROM raw r JOIN messages m ON m.seq = r.seq "
	                                    "WHERE m.id = ?",
	                                    -1, &s, NULL),
	                 SQLITE_OK);
	sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
	bool found = sqlite3_step(s) == SQLITE_ROW;
	sqlite3_finalize(s);
	sqlite3_close(db);
	return found;
}

static void test_delete_by_ids_search_and_all_removes_files(void **state)
{
	struct fx *f = *state;
	char ids[NCORPUS][CAPTURE_ID_MAX];
	load_corpus(f, ids);
	assert_true(file_exists_for(f, ids[0]));
	const char *one[] = {ids[0], "notAnIdThatExists00000", "../../x"};
	assert_int_equal(capture_delete(f->st, one, 3), TERN_OK);
	assert_false(file_exists_for(f, ids[0]));
	assert_null(capture_message(f->st, ids[0], false));
	json_t *l = capture_list(f->st, NULL, 0, 10);
	assert_int_equal(jint(l, "total"), 3);
	json_decref(l);

	assert_int_equal(capture_delete_search(f->st, "from:carol"), TERN_OK);
	assert_false(file_exists_for(f, ids[3]));
	assert_true(file_exists_for(f, ids[1]));
	l = capture_list(f->st, NULL, 0, 10);
	assert_int_equal(jint(l, "total"), 2);
	json_decref(l);
	assert_int_equal(capture_delete_search(f->st, "is:maybe"), TERN_ESYNTAX);

	assert_int_equal(capture_delete(f->st, NULL, 0), TERN_OK);
	l = capture_list(f->st, NULL, 0, 10);
	assert_int_equal(jint(l, "total"), 0);
	assert_int_equal(jint(l, "unread"), 0);
	json_decref(l);
	assert_false(file_exists_for(f, ids[1]));
	assert_false(file_exists_for(f, ids[2]));
	/* and the store still works */
	char id[CAPTURE_ID_MAX];
	add_simple(f->st, "a@b", "c@d", "again", "x", id);
	l = capture_list(f->st, "again", 0, 10);
	assert_int_equal(jint(l, "messages_count"), 1);
	json_decref(l);
}

static void test_read_flags_and_open_marks_read(void **state)
{
	struct fx *f = *state;
	char ids[NCORPUS][CAPTURE_ID_MAX];
	load_corpus(f, ids);
	uint64_t unread;
	const char *two[] = {ids[0], ids[1]};
	assert_int_equal(capture_set_read(f->st, two, 2, true), TERN_OK);
	capture_stats(f->st, NULL, &unread, NULL);
	assert_int_equal(unread, 2);
	json_t *m = capture_message(f->st, ids[2], true); /* opening marks read */
	json_decref(m);
	capture_stats(f->st, NULL, &unread, NULL);
	assert_int_equal(unread, 1);
	json_t *l = capture_list(f->st, "is:read", 0, 10);
	assert_int_equal(jint(l, "messages_count"), 3);
	assert_true(json_is_true(
	    json_object_get(json_array_get(json_object_get(l, "messages"), 0), "Read")));
	json_decref(l);
	m = capture_message(f->st, ids[3], false); /* peeking does not */
	json_decref(m);
	capture_stats(f->st, NULL, &unread, NULL);
	assert_int_equal(unread, 1);
	assert_int_equal(capture_set_read(f->st, NULL, 0, false), TERN_OK);
	capture_stats(f->st, NULL, &unread, NULL);
	assert_int_equal(unread, 4);
	assert_int_equal(capture_set_read(f->st, NULL, 0, true), TERN_OK);
	l = capture_list(f->st, NULL, 0, 10);
	assert_int_equal(jint(l, "unread"), 0);
	json_decref(l);
}

static void test_tags_set_rename_merge_delete(void **state)
{
	struct fx *f = *state;
	char ids[NCORPUS][CAPTURE_ID_MAX];
	load_corpus(f, ids);
	const char *ab[] = {ids[0], ids[1]};
	const char *t1[] = {"work", " urgent ", "Work"}; /* trimmed; case-insensitive duplicates */
	assert_int_equal(capture_set_tags(f->st, ab, 2, t1, 3), TERN_OK);
	json_t *t = capture_tags(f->st);
	assert_int_equal(json_array_size(t), 2);
	assert_string_equal(json_string_value(json_array_get(t, 0)), "urgent");
	assert_string_equal(json_string_value(json_array_get(t, 1)), "work");
	json_decref(t);
	json_t *m = capture_message(f->st, ids[0], false);
	assert_int_equal(json_array_size(json_object_get(m, "Tags")), 2);
	json_decref(m);
	json_t *l = capture_list(f->st, NULL, 0, 10);
	assert_int_equal(json_array_size(json_object_get(l, "tags")), 2);
	json_decref(l);

	/* setting replaces */
	const char *a[] = {ids[0]};
	const char *t2[] = {"later"};
	assert_int_equal(capture_set_tags(f->st, a, 1, t2, 1), TERN_OK);
	l = capture_list(f->st, "tag:later", 0, 10);
	assert_int_equal(jint(l, "messages_count"), 1);
	json_decref(l);
	l = capture_list(f->st, "tag:work", 0, 10);
	assert_int_equal(jint(l, "messages_count"), 1);
	json_decref(l);

	assert_int_equal(capture_rename_tag(f->st, "work", "job"), TERN_OK);
	l = capture_list(f->st, "tag:job", 0, 10);
	assert_int_equal(jint(l, "messages_count"), 1);
	json_decref(l);
	/* renaming onto an existing tag merges */
	assert_int_equal(capture_rename_tag(f->st, "job", "later"), TERN_OK);
	l = capture_list(f->st, "tag:later", 0, 10);
	assert_int_equal(jint(l, "messages_count"), 2);
	json_decref(l);
	assert_int_equal(capture_rename_tag(f->st, "nonexistent", "x"), TERN_ENOTFOUND);
	assert_int_equal(capture_delete_tag(f->st, "later"), TERN_OK);
	assert_int_equal(capture_delete_tag(f->st, "later"), TERN_ENOTFOUND);
	t = capture_tags(f->st);
	assert_int_equal(json_array_size(t), 1); /* "urgent" on B */
	json_decref(t);
	const char *bad[] = {"  "};
	assert_int_equal(capture_set_tags(f->st, a, 1, bad, 1), TERN_EINVAL);
	const char *ctl[] = {"a\nb"};
	assert_int_equal(capture_set_tags(f->st, a, 1, ctl, 1), TERN_EINVAL);
	/* no tags: clears them */
	const char *b[] = {ids[1]};
	assert_int_equal(capture_set_tags(f->st, b, 1, NULL, 0), TERN_OK);
	t = capture_tags(f->st);
	assert_int_equal(json_array_size(t), 0);
	json_decref(t);
}

/* Sets created (µs) of one message directly in the database. */
static void age_message(struct fx *f, const char *id, int64_t created_us)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/capture/capture.db", f->dir);
	sqlite3 *db;
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	sqlite3_stmt *s;
	assert_int_equal(
	    sqlite3_prepare_v2(db, "UPDATE messages SET created = ? WHERE id = ?", -1, &s, NULL),
	    SQLITE_OK);
	sqlite3_bind_int64(s, 1, created_us);
	sqlite3_bind_text(s, 2, id, -1, SQLITE_STATIC);
	assert_int_equal(sqlite3_step(s), SQLITE_DONE);
	sqlite3_finalize(s);
	sqlite3_close(db);
}

static void test_prune_by_count_and_age_removes_oldest(void **state)
{
	struct fx *f = *state;
	char ids[6][CAPTURE_ID_MAX];
	for (int i = 0; i < 6; i++)
		add_simple(f->st, "a@b", "c@d", "p", "x", ids[i]);
	assert_int_equal(capture_prune(f->st, 0, 0), 0);
	assert_int_equal(capture_prune(f->st, 4, 0), 2);
	assert_false(file_exists_for(f, ids[0]));
	assert_false(file_exists_for(f, ids[1]));
	assert_true(file_exists_for(f, ids[2]));
	json_t *l = capture_list(f->st, NULL, 0, 10);
	assert_int_equal(jint(l, "total"), 4);
	assert_string_equal(summary_str(l, 3, "ID"), ids[2]);
	json_decref(l);

	/* two days old: pruned by a one-day max_age */
	int64_t old = ((int64_t)time(NULL) - 2 * 86400) * 1000000;
	age_message(f, ids[3], old);
	assert_int_equal(capture_prune(f->st, 0, 86400), 1);
	assert_false(file_exists_for(f, ids[3]));
	assert_int_equal(capture_prune(f->st, 10, 86400), 0);
	l = capture_list(f->st, NULL, 0, 10);
	assert_int_equal(jint(l, "total"), 3);
	json_decref(l);
}

/* --------------------------------------------------------- notifications */

struct seen {
	char types[64][8];
	json_t *data[64];
	size_t n;
};

static void on_event(void *arg, const char *type, json_t *data)
{
	struct seen *s = arg;
	if (s->n < 64) {
		snprintf(s->types[s->n], sizeof(s->types[0]), "%s", type);
		s->data[s->n] = json_deep_copy(data);
		s->n++;
	}
}

static void test_subscribers_hear_new_update_delete(void **state)
{
	struct fx *f = *state;
	struct seen s = {0};
	capture_subscribe(f->st, on_event, &s);
	char id[CAPTURE_ID_MAX];
	add_simple(f->st, "a@b", "c@d", "notify", "x", id);
	assert_int_equal(s.n, 1);
	assert_string_equal(s.types[0], "new");
	assert_string_equal(json_string_value(json_object_get(s.data[0], "ID")), id);
	assert_string_equal(json_string_value(json_object_get(s.data[0], "Subject")), "notify");

	const char *one[] = {id};
	assert_int_equal(capture_set_read(f->st, one, 1, true), TERN_OK);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.types[1], "update");
	assert_string_equal(json_string_value(json_array_get(json_object_get(s.data[1], "IDs"), 0)),
	                    id);
	const char *tags[] = {"t"};
	assert_int_equal(capture_set_tags(f->st, one, 1, tags, 1), TERN_OK);
	assert_int_equal(s.n, 3);
	assert_string_equal(s.types[2], "update");

	assert_int_equal(capture_delete(f->st, one, 1), TERN_OK);
	assert_int_equal(s.n, 4);
	assert_string_equal(s.types[3], "delete");
	assert_string_equal(json_string_value(json_array_get(json_object_get(s.data[3], "IDs"), 0)),
	                    id);
	add_simple(f->st, "a@b", "c@d", "n2", "x", id);
	assert_int_equal(capture_delete(f->st, NULL, 0), TERN_OK);
	assert_int_equal(s.n, 6);
	assert_string_equal(s.types[5], "delete");
	assert_true(json_is_true(json_object_get(s.data[5], "All")));
	/* nothing changed: no event */
	assert_int_equal(capture_delete(f->st, one, 1), TERN_OK);
	assert_int_equal(s.n, 6);
	for (size_t i = 0; i < s.n; i++)
		json_decref(s.data[i]);
}

/* Capture mode's ingest adds with announce_later: no "new" event at the
 * add; capture_announce sends one per inserted message, in order, and none
 * for a message deleted in between or for an item that failed. */
static void test_announce_later_sends_new_events_after_the_add(void **state)
{
	struct fx *f = *state;
	struct seen s = {0};
	capture_subscribe(f->st, on_event, &s);
	const char *raws[3] = {"Subject: one\r\n\r\nx\r\n", "Subject: two\r\n\r\nx\r\n",
	                       "Subject: three\r\n\r\nx\r\n"};
	const char *to[] = {"c@d"};
	struct capture_item items[3];
	for (size_t i = 0; i < 3; i++)
		items[i] = (struct capture_item){.announce_later = true,
		                                 .raw = raws[i],
		                                 .len = strlen(raws[i]),
		                                 .env_from = "a@b",
		                                 .env_to = to,
		                                 .n_to = 1};
	assert_int_equal(capture_add_batch(f->st, items, 3), TERN_OK);
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(items[i].rc, TERN_OK);
		assert_true(items[i].seq > 0);
	}
	assert_int_equal(s.n, 0); /* listed already, not yet announced */
	json_t *l = capture_list(f->st, NULL, 0, 10);
	assert_int_equal(jint(l, "total"), 3);
	json_decref(l);

	const char *gone[] = {items[1].id};
	assert_int_equal(capture_delete(f->st, gone, 1), TERN_OK);
	assert_int_equal(s.n, 1); /* the delete */
	struct capture_item failed = {.rc = TERN_EIO, .seq = 0};
	capture_announce(f->st, items, 3);
	capture_announce(f->st, &failed, 1);
	assert_int_equal(s.n, 3);
	assert_string_equal(s.types[1], "new");
	assert_string_equal(json_string_value(json_object_get(s.data[1], "ID")), items[0].id);
	assert_string_equal(json_string_value(json_object_get(s.data[1], "Subject")), "one");
	assert_string_equal(s.types[2], "new");
	assert_string_equal(json_string_value(json_object_get(s.data[2], "ID")), items[2].id);
	for (size_t i = 0; i < s.n; i++)
		json_decref(s.data[i]);
}

/* A subscriber that calls back into the store must not deadlock, and what it
 * reads there already holds the change it is told about. */
struct reentry {
	struct capture_store *st;
	size_t calls;               /* events heard */
	size_t total;               /* "total" of the list read from inside the "new" event */
	char first[CAPTURE_ID_MAX]; /* ID of the newest message in that list */
};

static void reentrant(void *arg, const char *type, json_t *data)
{
	(void)data;
	struct reentry *r = arg;
	r->calls++;
	if (strcmp(type, "new") == 0) {
		json_t *l = capture_list(r->st, NULL, 0, 1);
		assert_non_null(l);
		r->total = (size_t)jint(l, "total");
		json_t *m = json_array_get(json_object_get(l, "messages"), 0);
		const char *id = json_string_value(json_object_get(m, "ID"));
		snprintf(r->first, sizeof(r->first), "%s", id ? id : "");
		json_decref(l);
	}
}

static void test_subscriber_may_call_the_store(void **state)
{
	struct fx *f = *state;
	struct reentry r = {.st = f->st};
	capture_subscribe(f->st, reentrant, &r);
	char id[CAPTURE_ID_MAX];
	add_simple(f->st, "a@b", "c@d", "re", "x", id);
	/* the subscriber ran (once), and from inside it the store answered */
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.total, 1);
	assert_string_equal(r.first, id);
}

/* ----------------------------------------------------------- threads */

static void *adder(void *arg)
{
	struct capture_store *st = arg;
	for (int i = 0; i < 40; i++) {
		char id[CAPTURE_ID_MAX];
		add_simple(st, "t@example.com", "u@example.com", "threaded", "x", id);
		json_t *l = capture_list(st, "threaded", 0, 5);
		assert_non_null(l);
		json_decref(l);
	}
	return NULL;
}

static void test_concurrent_adds_and_lists_are_all_stored(void **state)
{
	struct fx *f = *state;
	pthread_t th[4];
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&th[i], NULL, adder, f->st), 0);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	json_t *l = capture_list(f->st, NULL, 0, 1);
	assert_int_equal(jint(l, "total"), 160);
	assert_int_equal(jint(l, "unread"), 160);
	json_decref(l);
}

/* ------------------------------------------------------------- recovery */

static void test_unclean_stop_reindexes_files_without_rows(void **state)
{
	struct fx *f = *state;
	char id[CAPTURE_ID_MAX], id2[CAPTURE_ID_MAX];
	/* A large message: its bytes are a file of their own (a small one's
	 * bytes commit with its row, so there is nothing to re-index). */
	size_t big = 300 * 1024;
	char *raw = malloc(big + 256);
	assert_non_null(raw);
	int hn = snprintf(raw, 256,
	                  "From: lost@example.com\r\nTo: c@d\r\nSubject: survivor\r\n"
	                  "Message-ID: <survivor@t>\r\n\r\n");
	for (size_t i = (size_t)hn; i < big; i += 78) { /* 76 x, CRLF */
		memset(raw + i, 'x', 76);
		memcpy(raw + i + 76, "\r\n", 2);
	}
	const char *env_to[] = {"envelope-rcpt@example.net"};
	size_t len = (size_t)hn + ((big - (size_t)hn) / 78) * 78;
	assert_int_equal(capture_add(f->st, raw, len, "env@example.net", env_to, 1, id), TERN_OK);
	free(raw);
	add_simple(f->st, "kept@example.com", "c@d", "kept", "x", id2);
	capture_close(f->st);
	f->st = NULL;
	/* simulate a power loss that rolled back the row of the first message
	 * (its file had been synced) and left the database marked unclean */
	char path[256];
	snprintf(path, sizeof(path), "%s/capture/capture.db", f->dir);
	sqlite3 *db;
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	char sql[256];
	snprintf(sql, sizeof(sql),
	         "DELETE FROM fts WHERE rowid = (SELECT seq FROM messages WHERE id = '%s');"
	         "DELETE FROM messages WHERE id = '%s'; UPDATE meta SET value = '0' WHERE key = "
	         "'clean';",
	         id, id);
	assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	/* and a torn temporary file */
	char tmp[512];
	snprintf(tmp, sizeof(tmp), "%s/capture/msg/%.2s/%s.tmp", f->dir, id,
	         "ZZZZZZZZZZZZZZZZZZZZZZ");
	FILE *fp = fopen(tmp, "w");
	if (fp) {
		fputs("Subject: torn", fp);
		fclose(fp);
	}
	char sub[160], err[256];
	snprintf(sub, sizeof(sub), "%s/capture", f->dir);
	assert_int_equal(capture_open(sub, &f->st, err, sizeof(err)), TERN_OK);
	json_t *l = capture_list(f->st, NULL, 0, 10);
	assert_int_equal(jint(l, "total"), 2);
	json_decref(l);
	l = capture_list(f->st, "subject:survivor", 0, 10);
	assert_int_equal(jint(l, "messages_count"), 1);
	assert_string_equal(summary_str(l, 0, "ID"), id);
	json_decref(l);
	assert_int_equal(access(tmp, F_OK), -1);
}

static void test_open_sets_wal_and_schema_version(void **state)
{
	struct fx *f = *state;
	char path[256];
	snprintf(path, sizeof(path), "%s/capture/capture.db", f->dir);
	sqlite3 *db;
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	sqlite3_stmt *s;
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(s), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(s, 0), "wal");
	sqlite3_finalize(s);
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(s), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(s, 0), 3);
	sqlite3_finalize(s);
	/* a future schema is refused rather than misread */
	assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	capture_close(f->st);
	char sub[160], err[256] = "";
	snprintf(sub, sizeof(sub), "%s/capture", f->dir);
	assert_int_not_equal(capture_open(sub, &f->st, err, sizeof(err)), TERN_OK);
	assert_non_null(strstr(err, "newer"));
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	/* an older schema (version 1, before messages.username) is upgraded */
	assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 1", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	assert_int_equal(capture_open(sub, &f->st, err, sizeof(err)), TERN_OK);
}

/* ------------------------------------------------- mime4j conformance */

/* mime4j writes X_decoded_1_2.bin for the part at 1-based path 1.2 where
 * the leading 1 is the message itself; Mailpit's PartID is the rest
 * ("2"), or "0" for a message that is a single part. */
static void partid_from_mime4j(const char *suffix, char *out, size_t outlen)
{
	/* suffix is "1" or "1_2_1" */
	if (strcmp(suffix, "1") == 0) {
		snprintf(out, outlen, "0");
		return;
	}
	snprintf(out, outlen, "%s", suffix + 2);
	for (char *p = out; *p; p++)
		if (*p == '_')
			*p = '.';
}

static void test_mime4j_part_trees_match(void **state)
{
	(void)state;
	mime_init();
	/* messages whose part tree maps onto Mailpit's numbering: no
	 * message/rfc822 descent (Mailpit treats those as attachments) and no
	 * lenient-recovery guesses */
	static const struct {
		const char *name;
		const char *attachments; /* expected attachment PartIDs, comma separated */
		const char *filenames;
	} msgs[] = {
	    {"example", "2,3,4", "blob.png,blob.png,rhubarb.txt"},
	    {"simple-attachment", "2", "data.bin"},
	    {"boundary-name-clash", "2", "Daily_Stats-2022-05-12-0700.pdf"},
	    {"intermediate-boundaries", "", ""},
	    {"qp-body", "", ""},
	    {"base64-encoded-text", "", ""},
	    {"basic-plain", "", ""},
	    {"very-long-boundary", "", ""},
	    {"weird-boundary", "", ""},
	};
	char dir[1100];
	assert_true(testdata_path(dir, sizeof(dir), "mime4j"));
	size_t checked_parts = 0;
	for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++) {
		char path[1400];
		struct tbuf raw = TBUF_INIT(1 << 22);
		snprintf(path, sizeof(path), "%s/%s.msg", dir, msgs[i].name);
		if (!slurp(path, &raw))
			fail_msg("cannot read %s (tests/data/mime4j; TERN_TESTDATA overrides)",
			         path);
		struct mime_msg mm;
		assert_int_equal(mime_parse(raw.data, raw.len, 0, &mm), TERN_OK);

		/* attachments as expected */
		char got_ids[256] = "", got_names[512] = "";
		for (size_t k = 0; k < mm.n_parts; k++) {
			if (mm.parts[k].role != MIME_ROLE_ATTACHMENT)
				continue;
			size_t l = strlen(got_ids);
			snprintf(got_ids + l, sizeof(got_ids) - l, "%s%s", l ? "," : "",
			         mm.parts[k].part_id);
			l = strlen(got_names);
			snprintf(got_names + l, sizeof(got_names) - l, "%s%s", l ? "," : "",
			         mm.parts[k].filename);
		}
		if (strcmp(got_ids, msgs[i].attachments) != 0 ||
		    strcmp(got_names, msgs[i].filenames) != 0)
			fail_msg("%s: attachments [%s] [%s], want [%s] [%s]", msgs[i].name, got_ids,
			         got_names, msgs[i].attachments, msgs[i].filenames);
		size_t want_n = msgs[i].attachments[0] ? 1 : 0;
		for (const char *c = msgs[i].attachments; *c; c++)
			want_n += *c == ',';
		assert_int_equal(mm.n_attachments, want_n);

		/* every decoded body in mime4j's tree matches the part we number the
		 * same way (files not named in X_decoded.xml are stale: skipped) */
		struct tbuf xml = TBUF_INIT(1 << 22);
		snprintf(path, sizeof(path), "%s/%s_decoded.xml", dir, msgs[i].name);
		assert_true(slurp(path, &xml));
		DIR *d = opendir(dir);
		assert_non_null(d);
		struct dirent *de;
		char prefix[256];
		snprintf(prefix, sizeof(prefix), "%s_decoded_", msgs[i].name);
		while ((de = readdir(d)) != NULL) {
			if (strncmp(de->d_name, prefix, strlen(prefix)) != 0)
				continue;
			const char *dot = strrchr(de->d_name, '.');
			if (!dot || strcmp(dot, ".xml") == 0)
				continue;
			char ref[300];
			snprintf(ref, sizeof(ref), "name=\"%s\"", de->d_name);
			if (!memmem(xml.data, xml.len, ref, strlen(ref)))
				continue;
			char suffix[64];
			size_t sl = (size_t)(dot - de->d_name) - strlen(prefix);
			assert_true(sl < sizeof(suffix));
			memcpy(suffix, de->d_name + strlen(prefix), sl);
			suffix[sl] = '\0';
			char pid[64];
			partid_from_mime4j(suffix, pid, sizeof(pid));
			struct tbuf want = TBUF_INIT(1 << 22), got = TBUF_INIT(1 << 22);
			snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
			assert_true(slurp(path, &want));
			char ct[128], fn[256];
			int rc = mime_part_get(raw.data, raw.len, pid, &got, ct, sizeof(ct), fn,
			                       sizeof(fn));
			if (rc != TERN_OK)
				fail_msg("%s: part %s (%s) not found", msgs[i].name, pid,
				         de->d_name);
			if (got.len != want.len ||
			    (want.len && memcmp(got.data, want.data, want.len) != 0))
				fail_msg("%s: part %s: %zu bytes, mime4j has %zu", msgs[i].name,
				         pid, got.len, want.len);
			/* the part list knows it too, with the decoded size */
			bool listed = false;
			for (size_t k = 0; k < mm.n_parts; k++)
				if (strcmp(mm.parts[k].part_id, pid) == 0) {
					listed = true;
					assert_int_equal(mm.parts[k].size, want.len);
				}
			assert_true(listed);
			checked_parts++;
			tbuf_free(&want);
			tbuf_free(&got);
		}
		closedir(d);
		tbuf_free(&xml);
		mime_msg_free(&mm);
		tbuf_free(&raw);
	}
	assert_true(checked_parts >= 15);
	printf("mime4j: %zu decoded parts matched\n", checked_parts);
}

/* Every mime4j message, mapped or not: parse without crashing or losing
 * valid UTF-8 guarantees. */
static void test_mime4j_all_messages_parse_to_utf8(void **state)
{
	(void)state;
	char dir[1100];
	assert_true(testdata_path(dir, sizeof(dir), "mime4j"));
	DIR *d = opendir(dir);
	if (!d)
		fail_msg("cannot open %s (tests/data/mime4j; TERN_TESTDATA overrides)", dir);
	struct dirent *de;
	size_t n = 0;
	while ((de = readdir(d)) != NULL) {
		const char *dot = strrchr(de->d_name, '.');
		if (!dot || strcmp(dot, ".msg") != 0)
			continue;
		char path[1400];
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		struct tbuf raw = TBUF_INIT(1 << 22);
		assert_true(slurp(path, &raw));
		struct mime_msg mm;
		assert_int_equal(mime_parse(raw.data, raw.len, MIME_CHECKSUMS, &mm), TERN_OK);
		json_t *t = json_string(mm.text), *h = json_string(mm.html),
		       *s = json_string(mm.subject);
		assert_non_null(t);
		assert_non_null(h);
		assert_non_null(s);
		json_decref(t);
		json_decref(h);
		json_decref(s);
		mime_msg_free(&mm);
		tbuf_free(&raw);
		n++;
	}
	closedir(d);
	assert_true(n >= 30);
}

/* The body text as the index and the API see it, for each way its bytes can
 * come: plain 7-bit (the fast path), bytes that are not UTF-8 under a
 * UTF-8 label (read as Windows-1252), a NUL (the text ends there), valid
 * UTF-8, and a declared charset (converted). */
static void body_text_is(const char *charset, const char *body, size_t blen, const char *want)
{
	struct tbuf raw = TBUF_INIT(1 << 16);
	tbuf_printf(&raw,
	            "From: <a@example.test>\r\nTo: <b@example.test>\r\nSubject: t\r\n"
	            "MIME-Version: 1.0\r\nContent-Type: text/plain%s%s\r\n\r\n",
	            charset ? "; charset=" : "", charset ? charset : "");
	tbuf_append(&raw, body, blen);
	struct mime_msg mm;
	assert_int_equal(mime_parse(raw.data, raw.len, 0, &mm), TERN_OK);
	assert_string_equal(mm.text, want);
	mime_msg_free(&mm);
	tbuf_free(&raw);
}

static void test_body_text_in_every_byte_form(void **state)
{
	(void)state;
	const char ascii[] = "Hello, this line is long enough to take the eight-byte steps.\r\n";
	body_text_is(NULL, ascii, sizeof(ascii) - 1, ascii);
	body_text_is("us-ascii", "short\r\n", 7, "short\r\n");
	body_text_is("utf-8", "", 0, "");
	/* 0xE9 alone is not UTF-8: Windows-1252's e-acute */
	body_text_is("utf-8", "caf\xe9 au lait, with enough bytes after it\r\n", 42,
	             "caf\xc3\xa9 au lait, with enough bytes after it\r\n");
	/* a high byte in the 7-byte tail, after the 8-byte steps */
	body_text_is("utf-8", "12345678abc\xe9", 12, "12345678abc\xc3\xa9");
	body_text_is("utf-8", "na\xc3\xafve and valid UTF-8\r\n", 24,
	             "na\xc3\xafve and valid UTF-8\r\n");
	/* a NUL inside the first eight bytes, and one in the tail: U+FFFD */
	body_text_is(NULL, "ab\0cdefghijklmnop\r\n", 19,
	             "ab\xef\xbf\xbd"
	             "cdefghijklmnop\r\n");
	body_text_is(NULL, "abcdefghij\0k\r\n", 14, "abcdefghij\xef\xbf\xbdk\r\n");
	body_text_is("iso-8859-1", "caf\xe9\r\n", 6, "caf\xc3\xa9\r\n");
}

/* ---------------------------------------------------------------- timing */

static double secs_since(const struct timespec *t0)
{
	struct timespec t1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

static void test_timing_10k_insert_list_search(void **state)
{
	struct fx *f = *state;
	const size_t N =
	    getenv("TERN_CAPTURE_N") ? strtoul(getenv("TERN_CAPTURE_N"), NULL, 10) : 10000;
	char body[4096];
	memset(body, 'x', sizeof(body));
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (size_t i = 0; i < N; i++) {
		char raw[8192], id[CAPTURE_ID_MAX];
		int n = snprintf(raw, sizeof(raw),
		                 "From: sender%zu@example.com\r\nTo: rcpt%zu@example.org\r\n"
		                 "Subject: load test %zu word%zu\r\nMessage-ID: <%zu@load>\r\n\r\n"
		                 "Hello number %zu. %.3500s\r\n",
		                 i % 97, i % 13, i, i % 50, i, i, body);
		const char *to[] = {"rcpt@example.org"};
		assert_int_equal(capture_add(f->st, raw, (size_t)n, "s@example.com", to, 1, id),
		                 TERN_OK);
	}
	double ins = secs_since(&t0);
	printf("capture timing: %zu inserts (4 KB, fsync each) in %.2f s = %.0f msg/s\n", N, ins,
	       (double)N / ins);

	struct {
		const char *label, *q;
		size_t start;
	} runs[] = {{"list first page", NULL, 0},
	            {"list page at offset N/2", NULL, N / 2},
	            {"search free word", "word7", 0},
	            {"search from:", "from:sender5@", 0},
	            {"search to:", "to:rcpt3@", 0},
	            {"search subject: + is:unread", "subject:\"load test 99\" is:unread", 0}};
	for (size_t r = 0; r < sizeof(runs) / sizeof(runs[0]); r++) {
		const int reps = 20;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (int k = 0; k < reps; k++) {
			json_t *l = capture_list(f->st, runs[r].q, runs[r].start, 50);
			assert_non_null(l);
			json_decref(l);
		}
		printf("capture timing: %-30s %.2f ms\n", runs[r].label,
		       secs_since(&t0) * 1000.0 / reps);
	}
	json_t *l = capture_list(f->st, NULL, 0, 50);
	assert_int_equal(jint(l, "total"), (json_int_t)N);
	json_decref(l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_list_is_newest_first_with_paging_and_counts, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_message_json_has_bodies_inline_and_attachments,
	                                    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_headers_json_maps_names_to_value_lists, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_raw_round_trips_byte_for_byte, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_part_download_is_transfer_decoded, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_search_syntax_table, setup, teardown),
	    cmocka_unit_test(test_query_parser_keeps_input_out_of_sql),
	    cmocka_unit_test_setup_teardown(test_delete_by_ids_search_and_all_removes_files, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_read_flags_and_open_marks_read, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_tags_set_rename_merge_delete, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_prune_by_count_and_age_removes_oldest, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_subscribers_hear_new_update_delete, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_subscriber_may_call_the_store, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_announce_later_sends_new_events_after_the_add,
	                                    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_concurrent_adds_and_lists_are_all_stored, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_unclean_stop_reindexes_files_without_rows, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_open_sets_wal_and_schema_version, setup, teardown),
	    cmocka_unit_test(test_mime4j_part_trees_match),
	    cmocka_unit_test(test_mime4j_all_messages_parse_to_utf8),
	    cmocka_unit_test(test_body_text_in_every_byte_form),
	    cmocka_unit_test_setup_teardown(test_timing_10k_insert_list_search, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
