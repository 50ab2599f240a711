/*
 * test_maildir.c — local Maildir delivery (src/deliver/local.c): recipient
 * names can never escape the mail root, file names never repeat, and a
 * batch puts exactly the given bytes into new/ and nothing into tmp/.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <regex.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "auth/auth.h"
#include "auth/users_internal.h"
#include "core/err.h"
#include "deliver/deliver.h"

struct fixture {
	char root[256]; /* the data directory (DATA) */
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	snprintf(f->root, sizeof(f->root), "/tmp/tern-test-maildir-XXXXXX");
	if (mkdtemp(f->root) == NULL) {
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	nftw(f->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

/* Number of entries (other than . and ..) in dir; -1 if it cannot be read. */
static int count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			n++;
	}
	closedir(d);
	return n;
}

static char *read_all(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "rb");
	char *data = NULL;
	size_t cap = 0, n = 0;

	if (fp == NULL)
		return NULL;
	for (;;) {
		if (n == cap) {
			cap = cap ? cap * 2 : 4096;
			data = realloc(data, cap);
			assert_non_null(data);
		}
		size_t r = fread(data + n, 1, cap - n, fp);
		if (r == 0)
			break;
		n += r;
	}
	fclose(fp);
	*len = n;
	return data;
}

static void test_path_is_built_lowercased_and_unsafe_names_are_refused(void **state)
{
	(void)state;
	static const char nul_inside[] = "bob\0/../../etc";
	static const struct {
		const char *domain, *local;
		int rc;
		const char *want;
	} cases[] = {
	    {"example.com", "alice", TERN_OK, "/data/mail/example.com/alice"},
	    {"Example.COM", "Alice.Smith", TERN_OK, "/data/mail/example.com/alice.smith"},
	    {"example.com", "a..b", TERN_OK, "/data/mail/example.com/a..b"},
	    {"example.com", "d\xc3\xa9j\xc3\xa0", TERN_OK,
	     "/data/mail/example.com/d\xc3\xa9j\xc3\xa0"},
	    {"example.com", "a+tag", TERN_OK, "/data/mail/example.com/a+tag"},
	    {"example.com", nul_inside, TERN_OK, "/data/mail/example.com/bob"},
	    {"example.com", "../etc", TERN_EINVAL, NULL},
	    {"example.com", "..", TERN_EINVAL, NULL},
	    {"example.com", ".", TERN_EINVAL, NULL},
	    {"example.com", ".hidden", TERN_EINVAL, NULL},
	    {"example.com", "a/b", TERN_EINVAL, NULL},
	    {"example.com", "a/", TERN_EINVAL, NULL},
	    {"example.com", "", TERN_EINVAL, NULL},
	    {"example.com", "\0evil", TERN_EINVAL, NULL},
	    {"example.com", "a\nb", TERN_EINVAL, NULL},
	    {"example.com", "a\rb", TERN_EINVAL, NULL},
	    {"example.com", "a\x01", TERN_EINVAL, NULL},
	    {"example.com", "tab\there", TERN_EINVAL, NULL},
	    {"example.com", "del\x7f", TERN_EINVAL, NULL},
	    {"example.com", NULL, TERN_EINVAL, NULL},
	    {"..", "alice", TERN_EINVAL, NULL},
	    {".example.com", "alice", TERN_EINVAL, NULL},
	    {"ex/ample.com", "alice", TERN_EINVAL, NULL},
	    {"", "alice", TERN_EINVAL, NULL},
	    {"exa\x1bmple.com", "alice", TERN_EINVAL, NULL},
	    {NULL, "alice", TERN_EINVAL, NULL},
	};
	char out[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		memset(out, 'X', sizeof(out));
		int rc = maildir_path("/data", cases[i].domain, cases[i].local, out, sizeof(out));
		if (rc != cases[i].rc)
			fail_msg("case %zu (%s): got %d, want %d", i,
			         cases[i].local ? cases[i].local : "(null)", rc, cases[i].rc);
		if (cases[i].want != NULL)
			assert_string_equal(out, cases[i].want);
		else
			assert_string_equal(out, "");
	}
}

static void test_path_too_long_is_a_limit_error(void **state)
{
	(void)state;
	char local[300], out[4096];

	memset(local, 'a', sizeof(local) - 1);
	local[sizeof(local) - 1] = '\0';
	/* A component longer than NAME_MAX can never be a directory. */
	assert_int_equal(maildir_path("/data", "example.com", local, out, sizeof(out)),
	                 TERN_ELIMIT);
	/* A legal name that does not fit the caller's buffer. */
	assert_int_equal(maildir_path("/data", "example.com", "alice", out, 20), TERN_ELIMIT);
	assert_string_equal(out, "");
	/* Exactly fitting is fine: "/data/mail/x/y" is 14 bytes + NUL. */
	assert_int_equal(maildir_path("/data", "x", "y", out, 15), TERN_OK);
	assert_string_equal(out, "/data/mail/x/y");
	assert_int_equal(maildir_path("/data", "x", "y", out, 14), TERN_ELIMIT);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_unique_name_has_maildir_format(void **state)
{
	(void)state;
	regex_t re;
	char name[MAILDIR_NAME_MAX];

	assert_int_equal(regcomp(&re,
	                         "^[0-9]+\\.M[0-9]{1,6}P[0-9]+Q[0-9]+\\.mx\\.example\\.org,S=1234$",
	                         REG_EXTENDED | REG_NOSUB),
	                 0);
	assert_int_equal(maildir_unique_name("mx.example.org", 1234, name, sizeof(name)), TERN_OK);
	if (regexec(&re, name, 0, NULL, 0) != 0)
		fail_msg("bad name %s", name);
	regfree(&re);
}

static void test_unique_name_escapes_slash_and_colon_in_hostname(void **state)
{
	(void)state;
	char name[MAILDIR_NAME_MAX];
	const char *host;

	assert_int_equal(maildir_unique_name("a/b:c", 7, name, sizeof(name)), TERN_OK);
	host = strchr(strchr(name, '.') + 1, '.') + 1;
	assert_string_equal(host, "a\\057b\\072c,S=7");
	assert_null(strchr(name, '/'));
	assert_null(strchr(name, ':'));
	/* A ',' would start a bogus Maildir++ field: escaped too. */
	assert_int_equal(maildir_unique_name("a,b", 0, name, sizeof(name)), TERN_OK);
	assert_non_null(strstr(name, ".a\\054b,S=0"));
	/* No hostname given: gethostname() is used, still one safe component. */
	assert_int_equal(maildir_unique_name(NULL, 1, name, sizeof(name)), TERN_OK);
	assert_null(strchr(name, '/'));
	assert_null(strchr(name, ':'));
}

static void test_unique_name_too_small_buffer_is_a_limit_error(void **state)
{
	(void)state;
	char name[16];
	char host[200];

	assert_int_equal(maildir_unique_name("host", 1, name, sizeof(name)), TERN_ELIMIT);
	assert_string_equal(name, "");
	memset(host, 'h', sizeof(host) - 1);
	host[sizeof(host) - 1] = '\0';
	char big[MAILDIR_NAME_MAX];
	assert_int_equal(maildir_unique_name(host, 1, big, sizeof(big)), TERN_ELIMIT);
}

static void test_unique_names_never_repeat_in_10000_calls(void **state)
{
	(void)state;
	enum { N = 10000 };
	char **names = calloc(N, sizeof(*names));

	assert_non_null(names);
	for (size_t i = 0; i < N; i++) {
		names[i] = malloc(MAILDIR_NAME_MAX);
		assert_non_null(names[i]);
		assert_int_equal(maildir_unique_name("host", i, names[i], MAILDIR_NAME_MAX),
		                 TERN_OK);
		/* Same size every time, so only the unique part can differ. */
		char *s = strstr(names[i], ",S=");
		assert_non_null(s);
		*s = '\0';
	}
	qsort(names, N, sizeof(*names), cmp_str);
	for (size_t i = 1; i < N; i++) {
		if (strcmp(names[i - 1], names[i]) == 0)
			fail_msg("repeated name %s", names[i]);
	}
	for (size_t i = 0; i < N; i++)
		free(names[i]);
	free(names);
}

enum { THREADS = 8, PER_THREAD = 2500 };

struct thread_arg {
	char (*names)[MAILDIR_NAME_MAX];
	int failures;
};

static void *name_thread(void *p)
{
	struct thread_arg *a = p;

	for (int i = 0; i < PER_THREAD; i++) {
		if (maildir_unique_name("host", 42, a->names[i], MAILDIR_NAME_MAX) != TERN_OK)
			a->failures++;
	}
	return NULL;
}

static void test_unique_names_never_repeat_across_threads(void **state)
{
	(void)state;
	char(*names)[MAILDIR_NAME_MAX] = calloc(THREADS * PER_THREAD, MAILDIR_NAME_MAX);
	char **sorted = calloc(THREADS * PER_THREAD, sizeof(*sorted));
	pthread_t th[THREADS];
	struct thread_arg args[THREADS];

	assert_non_null(names);
	assert_non_null(sorted);
	for (int t = 0; t < THREADS; t++) {
		args[t].names = names + t * PER_THREAD;
		args[t].failures = 0;
		assert_int_equal(pthread_create(&th[t], NULL, name_thread, &args[t]), 0);
	}
	for (int t = 0; t < THREADS; t++) {
		assert_int_equal(pthread_join(th[t], NULL), 0);
		assert_int_equal(args[t].failures, 0);
	}
	for (int i = 0; i < THREADS * PER_THREAD; i++)
		sorted[i] = names[i];
	qsort(sorted, THREADS * PER_THREAD, sizeof(*sorted), cmp_str);
	for (int i = 1; i < THREADS * PER_THREAD; i++) {
		if (strcmp(sorted[i - 1], sorted[i]) == 0)
			fail_msg("repeated name %s", sorted[i]);
	}
	free(sorted);
	free(names);
}

static void test_create_makes_tmp_new_cur_private_and_is_idempotent(void **state)
{
	struct fixture *f = *state;
	static const char *const sub[] = {"", "/tmp", "/new", "/cur"};
	char path[512], p[600];
	struct stat st;

	snprintf(path, sizeof(path), "%s/mail/example.com/alice", f->root);
	assert_int_equal(maildir_create(path), TERN_OK);
	assert_int_equal(maildir_create(path), TERN_OK);
	for (size_t i = 0; i < 4; i++) {
		snprintf(p, sizeof(p), "%s%s", path, sub[i]);
		assert_int_equal(stat(p, &st), 0);
		assert_true(S_ISDIR(st.st_mode));
		assert_int_equal(st.st_mode & 07777, 0700);
	}
	/* Trailing slashes are harmless. */
	snprintf(p, sizeof(p), "%s//", path);
	assert_int_equal(maildir_create(p), TERN_OK);
}

static void test_create_fails_when_a_component_is_a_file(void **state)
{
	struct fixture *f = *state;
	char path[512];
	int fd;

	snprintf(path, sizeof(path), "%s/blocker", f->root);
	fd = open(path, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	snprintf(path, sizeof(path), "%s/blocker/alice", f->root);
	assert_int_equal(maildir_create(path), TERN_EIO);
	assert_int_equal(maildir_create(""), TERN_EINVAL);
	assert_int_equal(maildir_create(NULL), TERN_EINVAL);
}

/* Asserts that the item's file in new/ holds exactly want. */
static void assert_delivered(const struct maildir_item *it, const char *want, size_t wantlen)
{
	struct stat st;
	size_t len = 0;
	char *got;

	assert_int_equal(it->result, TERN_OK);
	assert_non_null(strstr(it->path, "/new/"));
	assert_string_equal(strrchr(it->path, '/') + 1, it->name);
	assert_int_equal(stat(it->path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	got = read_all(it->path, &len);
	assert_non_null(got);
	assert_int_equal(len, wantlen);
	assert_memory_equal(got, want, wantlen);
	free(got);
	/* The size in the name is the file's size (Dovecot trusts it). */
	char sz[32];
	snprintf(sz, sizeof(sz), ",S=%zu", wantlen);
	assert_non_null(strstr(it->name, sz));
}

/* DMARC quarantine: a folder per item, laid out as Dovecot's Maildir++ (".Junk"). */
static void test_batch_delivers_into_a_folder(void **state)
{
	struct fixture *f = *state;
	static const char msg[] = "Subject: spoof\r\n\r\nbody\r\n";
	struct iovec iov = {(void *)msg, sizeof(msg) - 1};
	char p[700];
	struct stat st;
	struct maildir_item items[4] = {
	    {.domain = "example.com", .local = "carol", .iov = &iov, .iovcnt = 1, .folder = "Junk"},
	    {.domain = "example.com", .local = "carol", .iov = &iov, .iovcnt = 1, .folder = ""},
	    {.domain = "example.com", .local = "carol", .iov = &iov, .iovcnt = 1, .folder = "../x"},
	    {.domain = "example.com",
	     .local = "carol",
	     .iov = &iov,
	     .iovcnt = 1,
	     .folder = ".Junk"},
	};

	assert_int_equal(maildir_deliver_batch(f->root, "mx.test", items, 4), 2);
	assert_delivered(&items[0], msg, strlen(msg));
	snprintf(p, sizeof(p), "%s/mail/example.com/carol/.Junk/new/%s", f->root, items[0].name);
	assert_string_equal(items[0].path, p);
	/* the folder marker, and the inbox (delivered to as "") beside it */
	snprintf(p, sizeof(p), "%s/mail/example.com/carol/.Junk/maildirfolder", f->root);
	assert_int_equal(stat(p, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_delivered(&items[1], msg, strlen(msg));
	snprintf(p, sizeof(p), "%s/mail/example.com/carol/new/%s", f->root, items[1].name);
	assert_string_equal(items[1].path, p);
	/* names that could leave the mailbox or nest folders are refused */
	assert_int_equal(items[2].result, TERN_EINVAL);
	assert_int_equal(items[3].result, TERN_EINVAL);

	/* a folder first: the mailbox's own tmp/new/cur exist for readers too */
	struct maildir_item first = {
	    .domain = "example.com", .local = "dave", .iov = &iov, .iovcnt = 1, .folder = "Junk"};
	assert_int_equal(maildir_deliver_batch(f->root, "mx.test", &first, 1), 1);
	snprintf(p, sizeof(p), "%s/mail/example.com/dave/cur", f->root);
	assert_int_equal(stat(p, &st), 0);
	assert_true(S_ISDIR(st.st_mode));

	assert_int_equal(maildir_folder_path("/data", "Example.com", "Dave", "Junk", p, sizeof(p)),
	                 TERN_OK);
	assert_string_equal(p, "/data/mail/example.com/dave/.Junk");
	assert_int_equal(maildir_folder_path("/data", "example.com", "dave", NULL, p, sizeof(p)),
	                 TERN_OK);
	assert_string_equal(p, "/data/mail/example.com/dave");
	assert_int_equal(maildir_folder_path("/data", "example.com", "dave", "a/b", p, sizeof(p)),
	                 TERN_EINVAL);
}

static void test_batch_writes_exact_bytes_into_new_and_leaves_tmp_empty(void **state)
{
	struct fixture *f = *state;
	static const char hdr[] = "Return-Path: <a@b>\r\nDelivered-To: alice@example.com\r\n";
	static const char msg[] = "Subject: hi\r\n\r\nbody\r\n";
	struct iovec iov[3] = {
	    {(void *)hdr, sizeof(hdr) - 1},
	    {(void *)"", 0},
	    {(void *)msg, sizeof(msg) - 1},
	};
	char want[256], dir[600];
	struct maildir_item items[3] = {
	    {.domain = "example.com", .local = "alice", .iov = iov, .iovcnt = 3},
	    {.domain = "EXAMPLE.com", .local = "Bob", .iov = iov + 2, .iovcnt = 1},
	    {.domain = "example.com", .local = "alice", .iov = iov, .iovcnt = 3},
	};

	snprintf(want, sizeof(want), "%s%s", hdr, msg);
	assert_int_equal(maildir_deliver_batch(f->root, "mx.test", items, 3), 3);
	assert_delivered(&items[0], want, strlen(want));
	assert_delivered(&items[1], msg, strlen(msg));
	assert_delivered(&items[2], want, strlen(want));
	assert_string_not_equal(items[0].name, items[2].name);
	snprintf(dir, sizeof(dir), "%s/mail/example.com/bob/new/%s", f->root, items[1].name);
	assert_string_equal(items[1].path, dir);

	snprintf(dir, sizeof(dir), "%s/mail/example.com/alice/tmp", f->root);
	assert_int_equal(count_entries(dir), 0);
	snprintf(dir, sizeof(dir), "%s/mail/example.com/alice/new", f->root);
	assert_int_equal(count_entries(dir), 2);
	snprintf(dir, sizeof(dir), "%s/mail/example.com/bob/tmp", f->root);
	assert_int_equal(count_entries(dir), 0);
}

static void test_batch_with_bad_items_delivers_the_others(void **state)
{
	struct fixture *f = *state;
	static const char msg[] = "Subject: x\r\n\r\ny\r\n";
	struct iovec iov = {(void *)msg, sizeof(msg) - 1};
	struct iovec bad_iov = {NULL, 5};
	char path[512], dir[600];
	int fd;

	/* A regular file where the domain directory should be. */
	snprintf(path, sizeof(path), "%s/mail", f->root);
	assert_int_equal(mkdir(path, 0700), 0);
	snprintf(path, sizeof(path), "%s/mail/blocked.example", f->root);
	fd = open(path, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);

	struct maildir_item items[] = {
	    {.domain = "example.com", .local = "alice", .iov = &iov, .iovcnt = 1},
	    {.domain = "example.com", .local = "../../etc", .iov = &iov, .iovcnt = 1},
	    {.domain = "blocked.example", .local = "carol", .iov = &iov, .iovcnt = 1},
	    {.domain = "example.com", .local = "bob", .iov = &iov, .iovcnt = 1},
	    {.domain = "example.com", .local = "dave", .iov = &bad_iov, .iovcnt = 1},
	    {.domain = "example.com", .local = "erin", .iov = NULL, .iovcnt = 0},
	};
	size_t n = sizeof(items) / sizeof(items[0]);

	assert_int_equal(maildir_deliver_batch(f->root, "mx.test", items, n), 3);
	assert_delivered(&items[0], msg, strlen(msg));
	assert_int_equal(items[1].result, TERN_EINVAL);
	assert_string_equal(items[1].path, "");
	assert_int_equal(items[2].result, TERN_EIO);
	assert_delivered(&items[3], msg, strlen(msg));
	assert_int_equal(items[4].result, TERN_EINVAL);
	assert_delivered(&items[5], "", 0);

	static const char *const users[] = {"alice", "bob", "erin", "dave"};
	for (size_t i = 0; i < 4; i++) {
		snprintf(dir, sizeof(dir), "%s/mail/example.com/%s/tmp", f->root, users[i]);
		int c = count_entries(dir);
		assert_true(c <= 0); /* empty, or never created */
	}
	/* Nothing escaped the mail root. */
	snprintf(dir, sizeof(dir), "%s/etc", f->root);
	assert_int_equal(access(dir, F_OK), -1);
}

static void test_batch_many_iovecs_and_large_message_are_exact(void **state)
{
	struct fixture *f = *state;
	enum { NIOV = 3000 };
	struct iovec *iov = calloc(NIOV, sizeof(*iov));
	size_t total = 0, off = 0;
	char *want, *big;
	const size_t bigsz = 8u << 20;

	assert_non_null(iov);
	/* Sizes 0..7 cycling: many tiny pieces, some empty, past IOV_MAX. */
	for (int i = 0; i < NIOV; i++)
		total += (size_t)(i % 8);
	want = malloc(total + 1);
	assert_non_null(want);
	for (int i = 0; i < NIOV; i++) {
		for (int k = 0; k < i % 8; k++)
			want[off + (size_t)k] = (char)('a' + (i + k) % 26);
		iov[i].iov_base = want + off;
		iov[i].iov_len = (size_t)(i % 8);
		off += (size_t)(i % 8);
	}
	big = malloc(bigsz);
	assert_non_null(big);
	for (size_t i = 0; i < bigsz; i++)
		big[i] = (char)(i * 7 + 3);
	struct iovec bigiov[2] = {{big, bigsz / 3}, {big + bigsz / 3, bigsz - bigsz / 3}};

	struct maildir_item items[2] = {
	    {.domain = "example.com", .local = "alice", .iov = iov, .iovcnt = NIOV},
	    {.domain = "example.com", .local = "alice", .iov = bigiov, .iovcnt = 2},
	};
	assert_int_equal(maildir_deliver_batch(f->root, "mx.test", items, 2), 2);
	assert_delivered(&items[0], want, total);
	assert_delivered(&items[1], big, bigsz);
	free(big);
	free(want);
	free(iov);
}

static void test_batch_of_many_messages_to_one_mailbox_all_arrive(void **state)
{
	struct fixture *f = *state;
	enum { N = 200 };
	struct maildir_item *items = calloc(N, sizeof(*items));
	char(*bodies)[32] = calloc(N, 32);
	struct iovec *iov = calloc(N, sizeof(*iov));
	char dir[600];

	assert_non_null(items);
	assert_non_null(bodies);
	assert_non_null(iov);
	for (int i = 0; i < N; i++) {
		snprintf(bodies[i], 32, "message %d\r\n", i);
		iov[i].iov_base = bodies[i];
		iov[i].iov_len = strlen(bodies[i]);
		items[i].domain = "example.com";
		items[i].local = i % 2 ? "alice" : "bob";
		items[i].iov = &iov[i];
		items[i].iovcnt = 1;
	}
	assert_int_equal(maildir_deliver_batch(f->root, "mx.test", items, N), N);
	for (int i = 0; i < N; i++)
		assert_delivered(&items[i], bodies[i], strlen(bodies[i]));
	snprintf(dir, sizeof(dir), "%s/mail/example.com/alice/new", f->root);
	assert_int_equal(count_entries(dir), N / 2);
	snprintf(dir, sizeof(dir), "%s/mail/example.com/bob/new", f->root);
	assert_int_equal(count_entries(dir), N / 2);
	free(iov);
	free(bodies);
	free(items);
}

static void test_batch_recreates_missing_subdirectories(void **state)
{
	struct fixture *f = *state;
	struct iovec iov = {(void *)"x", 1};
	struct maildir_item it = {
	    .domain = "example.com", .local = "alice", .iov = &iov, .iovcnt = 1};
	char dir[600];

	assert_int_equal(maildir_deliver_batch(f->root, "h", &it, 1), 1);
	/* Someone removed new/ (but tmp/ is still there). */
	snprintf(dir, sizeof(dir), "%s/mail/example.com/alice/new/%s", f->root, it.name);
	assert_int_equal(unlink(dir), 0);
	snprintf(dir, sizeof(dir), "%s/mail/example.com/alice/new", f->root);
	assert_int_equal(rmdir(dir), 0);
	assert_int_equal(maildir_deliver_batch(f->root, "h", &it, 1), 1);
	assert_delivered(&it, "x", 1);
	assert_int_equal(maildir_deliver_batch(f->root, "h", NULL, 0), 0);
}

static void test_failed_writes_and_renames_leave_nothing_in_tmp(void **state)
{
	struct fixture *f = *state;
	static char big[4000];
	struct iovec iov = {big, sizeof(big)};
	struct iovec small = {(void *)"ok\r\n", 4};
	char path[600];
	struct rlimit old, lim;
	int fd;

	memset(big, 'x', sizeof(big));
	/* frank's new/ is a file: the rename into it fails. */
	snprintf(path, sizeof(path), "%s/mail/example.com/frank", f->root);
	assert_int_equal(maildir_create(path), TERN_OK);
	snprintf(path, sizeof(path), "%s/mail/example.com/frank/new", f->root);
	assert_int_equal(rmdir(path), 0);
	fd = open(path, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);

	struct maildir_item items[] = {
	    {.domain = "example.com", .local = "frank", .iov = &small, .iovcnt = 1},
	    {.domain = "example.com", .local = "grace", .iov = &small, .iovcnt = 1},
	};
	assert_int_equal(maildir_deliver_batch(f->root, "h", items, 2), 1);
	assert_int_equal(items[0].result, TERN_EIO);
	assert_string_equal(items[0].path, "");
	assert_delivered(&items[1], "ok\r\n", 4);
	snprintf(path, sizeof(path), "%s/mail/example.com/frank/tmp", f->root);
	assert_int_equal(count_entries(path), 0);

	/* A file size limit makes writev stop part way, then fail (EFBIG):
	 * the partial file is removed and the item reported failed. */
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 1000;
	signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	struct maildir_item it = {
	    .domain = "example.com", .local = "grace", .iov = &iov, .iovcnt = 1};
	size_t got = maildir_deliver_batch(f->root, "h", &it, 1);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, SIG_DFL);
	assert_int_equal(got, 0);
	assert_int_equal(it.result, TERN_EIO);
	snprintf(path, sizeof(path), "%s/mail/example.com/grace/tmp", f->root);
	assert_int_equal(count_entries(path), 0);
	snprintf(path, sizeof(path), "%s/mail/example.com/grace/new", f->root);
	assert_int_equal(count_entries(path), 1);
}

/* ------------------------------------------------------------------ quota */

static void write_file(const char *path, const char *text)
{
	FILE *fp = fopen(path, "wb");
	assert_non_null(fp);
	assert_int_equal(fputs(text, fp) >= 0, 1);
	assert_int_equal(fclose(fp), 0);
}

static void test_maildirsize_parse_sums_the_deltas(void **state)
{
	static const char good[] = "10240S,100C\n300 1\n  \n-120 -1\n5000 2\n";
	struct maildirsize ms;

	(void)state;
	assert_int_equal(maildirsize_parse(good, sizeof(good) - 1, &ms), TERN_OK);
	assert_true(ms.has_bytes_limit);
	assert_int_equal(ms.bytes_limit, 10240);
	assert_int_equal(ms.bytes, 5180);
	assert_int_equal(ms.count, 2);
	assert_int_equal(maildirsize_parse("2048S\n", 6, &ms), TERN_OK);
	assert_int_equal(ms.bytes, 0);
	assert_int_equal(maildirsize_parse("100C\n1 1\n", 9, &ms), TERN_OK);
	assert_false(ms.has_bytes_limit);

	static const char *const bad[] = {
	    "",                                /* empty */
	    "1024S\n300 1",                    /* last line being written */
	    "1024X\n",                         /* unknown limit letter */
	    "1024S;5C\n",                      /* bad separator */
	    "1024S\n300\n",                    /* one number */
	    "1024S\n300 1 7\n",                /* three */
	    "1024S\nabc 1\n",                  /* not a number */
	    "1024S\n99999999999999999999 1\n", /* overflow */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(maildirsize_parse(bad[i], strlen(bad[i]), &ms), TERN_ESYNTAX);
}

static void test_quota_rule_parsing_follows_dovecot(void **state)
{
	static const struct {
		const char *rule;
		bool ok, applies;
		uint64_t bytes;
	} cases[] = {
	    {"*:storage=512M", true, true, 512ull << 20},
	    {"*:storage=100", true, true, 100ull << 10}, /* kilobytes, as Dovecot */
	    {"*:storage=10K", true, true, 10240},
	    {"*:storage=2GB", true, true, 2ull << 30},
	    {"*:bytes=12345", true, true, 12345},
	    {"*:storage=1G:messages=1000", true, true, 1ull << 30},
	    {"*:storage=0", true, true, 0},
	    {"*:ignore", true, true, 0},
	    {"Trash:storage=+100M", true, false, 0}, /* a folder's: Dovecot's alone */
	    {"*:storage=+10%", false, false, 0},
	    {"*:storage=10Q", false, false, 0},
	    {"*:storage=", false, false, 0},
	    {"*:colour=red", false, false, 0},
	    {"*", false, false, 0},
	    {"*:storage=99999999999999999999", false, false, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		bool applies = true;
		uint64_t bytes = 7;
		const char *why =
		    users_parse_quota_rule(cases[i].rule, strlen(cases[i].rule), &applies, &bytes);
		if (cases[i].ok) {
			assert_null(why);
			assert_int_equal(applies, cases[i].applies);
			assert_int_equal(bytes, cases[i].bytes);
		} else {
			assert_non_null(why);
		}
	}

	bool has;
	uint64_t b;
	static const char extra[] = "userdb_mail=x  userdb_quota_rule=*:storage=10K nopassword";
	assert_null(users_parse_extra(extra, sizeof(extra) - 1, &has, &b));
	assert_true(has);
	assert_int_equal(b, 10240);
	assert_null(users_parse_extra("userdb_mail=x", 13, &has, &b));
	assert_false(has);
	assert_non_null(users_parse_extra("userdb_quota_rule=*:storage=-1", 30, &has, &b));
}

static void test_users_file_quota_is_a_typed_lookup(void **state)
{
	static const char file[] =
	    "small@example.com:{PLAIN}pw:1000:1000::/home/small::userdb_quota_rule=*:storage=10K\n"
	    "plain@example.com:{PLAIN}pw\n"
	    "bad@example.com:{PLAIN}pw:1:1::/h::userdb_quota_rule=*:storage=1%\n";
	struct user_db *db = NULL;
	char err[256];
	uint64_t q = 0;

	(void)state;
	/* A bad rule makes the load fail with the line, like any bad line. */
	assert_int_equal(users_parse_buffer(file, sizeof(file) - 1, "users", &db, err, sizeof(err)),
	                 TERN_ESYNTAX);
	assert_non_null(strstr(err, "users:3:"));
	assert_int_equal(
	    users_parse_buffer(file, strlen(file) - 68, "users", &db, err, sizeof(err)), TERN_OK);
	assert_int_equal(users_count(db), 2);
	assert_int_equal(users_quota(db, "small@example.com", &q), TERN_OK);
	assert_int_equal(q, 10240);
	assert_int_equal(users_quota(db, "plain@example.com", &q), TERN_ENOTFOUND);
	assert_int_equal(users_quota(db, "nobody@example.com", &q), TERN_ENOTFOUND);
	/* The extra field does not become part of the password. */
	assert_int_equal(users_verify(db, "small@example.com", "pw"), TERN_OK);
	users_free(db);
}

static void test_quota_delivery_keeps_maildirsize_and_refuses_what_does_not_fit(void **state)
{
	struct fixture *f = *state;
	static const char msg[] = "Subject: q\r\n\r\n0123456789012345678901234567890123456789\r\n";
	struct iovec iov = {(void *)msg, sizeof(msg) - 1};
	const size_t sz = sizeof(msg) - 1;
	char path[600], dir[600];
	size_t len;
	struct maildirsize ms;
	unsigned long long used, nmsg;

	/* Room for exactly two messages. */
	struct maildir_item items[3] = {
	    {.domain = "example.com", .local = "q", .iov = &iov, .iovcnt = 1, .quota = 2 * sz},
	    {.domain = "example.com", .local = "q", .iov = &iov, .iovcnt = 1, .quota = 2 * sz},
	    {.domain = "example.com", .local = "q", .iov = &iov, .iovcnt = 1, .quota = 2 * sz},
	};
	assert_false(maildir_quota_known_full("q@example.com"));
	assert_int_equal(maildir_deliver_batch(f->root, "mx.test", items, 3), 2);
	assert_int_equal(items[0].result, TERN_OK);
	assert_int_equal(items[1].result, TERN_OK);
	assert_int_equal(items[2].result, TERN_ELIMIT);
	assert_true(items[2].over_quota);
	assert_false(items[0].over_quota);
	snprintf(dir, sizeof(dir), "%s/mail/example.com/q/new", f->root);
	assert_int_equal(count_entries(dir), 2);
	snprintf(dir, sizeof(dir), "%s/mail/example.com/q/tmp", f->root);
	assert_int_equal(count_entries(dir), 0);
	/* Exactly full: RCPT may say so without touching the disk. */
	assert_true(maildir_quota_known_full("q@example.com"));

	/* The file Dovecot reads: the limit, then the sum of the deltas. */
	snprintf(path, sizeof(path), "%s/mail/example.com/q/maildirsize", f->root);
	char *data = read_all(path, &len);
	assert_non_null(data);
	assert_int_equal(maildirsize_parse(data, len, &ms), TERN_OK);
	free(data);
	assert_int_equal(ms.bytes_limit, 2 * sz);
	assert_int_equal(ms.bytes, 2 * sz);
	assert_int_equal(ms.count, 2);

	/* Dovecot expunges both (a negative delta): there is room again. */
	FILE *fp = fopen(path, "ab");
	assert_non_null(fp);
	fprintf(fp, "-%zu -2\n", 2 * sz);
	fclose(fp);
	items[2].result = TERN_EIO;
	assert_int_equal(maildir_deliver_batch(f->root, "mx.test", &items[2], 1), 1);
	assert_false(items[2].over_quota);
	assert_false(maildir_quota_known_full("q@example.com"));
	snprintf(dir, sizeof(dir), "%s/mail/example.com/q", f->root);
	assert_int_equal(maildir_quota_usage(dir, 2 * sz, &used, &nmsg), TERN_OK);
	assert_int_equal(used, sz);
	assert_int_equal(nmsg, 1);
}

/* One batch, two Maildirs interleaved, room for one message each: the usage
 * read once per Maildir and batch is counted per Maildir, and each
 * maildirsize ends with its own delta only. */
static void test_quota_in_one_batch_counts_each_maildir_apart(void **state)
{
	struct fixture *f = *state;
	static const char msg[] = "Subject: b\r\n\r\nabcdefghijklmnopqrstuvwxyz\r\n";
	struct iovec iov = {(void *)msg, sizeof(msg) - 1};
	const size_t sz = sizeof(msg) - 1;
	struct maildir_item items[4];
	const char *who[4] = {"b1", "b2", "b1", "b2"};
	for (size_t i = 0; i < 4; i++)
		items[i] = (struct maildir_item){.domain = "example.com",
		                                 .local = who[i],
		                                 .iov = &iov,
		                                 .iovcnt = 1,
		                                 .quota = (long long)sz + 1};
	assert_int_equal(maildir_deliver_batch(f->root, "mx.test", items, 4), 2);
	assert_int_equal(items[0].result, TERN_OK);
	assert_int_equal(items[1].result, TERN_OK);
	assert_int_equal(items[2].result, TERN_ELIMIT);
	assert_int_equal(items[3].result, TERN_ELIMIT);
	assert_true(items[2].over_quota && items[3].over_quota);
	for (size_t i = 0; i < 2; i++) {
		char path[600], dir[600];
		snprintf(dir, sizeof(dir), "%s/mail/example.com/%s/new", f->root, who[i]);
		assert_int_equal(count_entries(dir), 1);
		snprintf(path, sizeof(path), "%s/mail/example.com/%s/maildirsize", f->root, who[i]);
		size_t len;
		struct maildirsize ms;
		char *data = read_all(path, &len);
		assert_non_null(data);
		assert_int_equal(maildirsize_parse(data, len, &ms), TERN_OK);
		free(data);
		assert_int_equal(ms.bytes, sz);
		assert_int_equal(ms.count, 1);
	}
}

static void test_quota_recalculates_missing_big_or_stale_maildirsize(void **state)
{
	struct fixture *f = *state;
	static const char msg[] = "Subject: r\r\n\r\nbody\r\n";
	struct iovec iov = {(void *)msg, sizeof(msg) - 1};
	const size_t sz = sizeof(msg) - 1;
	char path[700], mdir[600], folder[700];
	unsigned long long used, nmsg;
	struct maildir_item items[2] = {
	    {.domain = "example.com", .local = "r", .iov = &iov, .iovcnt = 1, .quota = -1},
	    {.domain = "example.com",
	     .local = "r",
	     .folder = "Junk",
	     .iov = &iov,
	     .iovcnt = 1,
	     .quota = -1},
	};

	/* Unlimited: no maildirsize is kept. */
	assert_int_equal(maildir_deliver_batch(f->root, "mx.test", items, 2), 2);
	snprintf(mdir, sizeof(mdir), "%s/mail/example.com/r", f->root);
	snprintf(path, sizeof(path), "%s/maildirsize", mdir);
	assert_int_equal(access(path, F_OK), -1);
	/* A file in cur/ with flags and one without ",S=" (sized by stat). */
	snprintf(folder, sizeof(folder), "%s/cur/1.x.host,S=1000:2,S", mdir);
	write_file(folder, "x");
	snprintf(folder, sizeof(folder), "%s/cur/2.y.host:2,", mdir);
	write_file(folder, "12345");
	const unsigned long long want = 2 * sz + 1000 + 5;

	/* Missing: scanned (inbox and folders), and written. */
	assert_int_equal(maildir_quota_usage(mdir, 4096, &used, &nmsg), TERN_OK);
	assert_int_equal(used, want);
	assert_int_equal(nmsg, 4);
	size_t len;
	char *data = read_all(path, &len);
	assert_non_null(data);
	assert_memory_equal(data, "4096S\n", 6);
	free(data);

	/* Another limit: stale, recalculated. */
	write_file(path, "999S\n77777 9\n");
	assert_int_equal(maildir_quota_usage(mdir, 4096, &used, &nmsg), TERN_OK);
	assert_int_equal(used, want);

	/* Larger than 5120 bytes: recalculated, as Dovecot does. */
	FILE *fp = fopen(path, "wb");
	assert_non_null(fp);
	fputs("4096S\n", fp);
	for (int i = 0; i < 1000; i++)
		fputs("1 1\n", fp); /* 4006 bytes, sum 1000: taken as is */
	fclose(fp);
	assert_int_equal(maildir_quota_usage(mdir, 4096, &used, &nmsg), TERN_OK);
	assert_int_equal(used, 1000);
	fp = fopen(path, "ab");
	for (int i = 0; i < 400; i++)
		fputs("1 1\n", fp);
	fclose(fp);
	assert_int_equal(maildir_quota_usage(mdir, 4096, &used, &nmsg), TERN_OK);
	assert_int_equal(used, want);
	assert_int_equal(nmsg, 4);

	/* Malformed, or a negative sum: recalculated. */
	write_file(path, "4096S\n-99999 -1\n");
	assert_int_equal(maildir_quota_usage(mdir, 4096, &used, &nmsg), TERN_OK);
	assert_int_equal(used, want);
	write_file(path, "4096S\n12 1");
	assert_int_equal(maildir_quota_usage(mdir, 4096, &used, &nmsg), TERN_OK);
	assert_int_equal(used, want);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_path_is_built_lowercased_and_unsafe_names_are_refused),
	    cmocka_unit_test(test_path_too_long_is_a_limit_error),
	    cmocka_unit_test(test_unique_name_has_maildir_format),
	    cmocka_unit_test(test_unique_name_escapes_slash_and_colon_in_hostname),
	    cmocka_unit_test(test_unique_name_too_small_buffer_is_a_limit_error),
	    cmocka_unit_test(test_unique_names_never_repeat_in_10000_calls),
	    cmocka_unit_test(test_unique_names_never_repeat_across_threads),
	    cmocka_unit_test_setup_teardown(test_create_makes_tmp_new_cur_private_and_is_idempotent,
	                                    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_create_fails_when_a_component_is_a_file, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(
	        test_batch_writes_exact_bytes_into_new_and_leaves_tmp_empty, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_batch_with_bad_items_delivers_the_others, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_batch_many_iovecs_and_large_message_are_exact,
	                                    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_batch_of_many_messages_to_one_mailbox_all_arrive,
	                                    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_batch_delivers_into_a_folder, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_batch_recreates_missing_subdirectories, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_failed_writes_and_renames_leave_nothing_in_tmp,
	                                    setup, teardown),
	    cmocka_unit_test(test_maildirsize_parse_sums_the_deltas),
	    cmocka_unit_test(test_quota_rule_parsing_follows_dovecot),
	    cmocka_unit_test(test_users_file_quota_is_a_typed_lookup),
	    cmocka_unit_test_setup_teardown(
	        test_quota_delivery_keeps_maildirsize_and_refuses_what_does_not_fit, setup,
	        teardown),
	    cmocka_unit_test_setup_teardown(
	        test_quota_recalculates_missing_big_or_stale_maildirsize, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_quota_in_one_batch_counts_each_maildir_apart,
	                                    setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
