/*
 * test_fsutil.c — the one-of-each helpers in core/ and mime/: atomic file
 * replacement (content, mode, no temp file left, failure leaves the old
 * file), mkdir -p (nested, existing, a file in the way), full writes over
 * many iovecs, the RFC 5322 date (fixed English names, range), the RFC 3339
 * forms (UTC, milliseconds cut, offsets, years 0000-9999), and the
 * MIME writer (sticky first error, encoded words, 76-column base64).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "core/timefmt.h"
#include "mime/mime.h"

static int make_tmpdir(void **state)
{
	char *d = strdup("/tmp/tern-fsutil-XXXXXX");
	assert_non_null(mkdtemp(d));
	*state = d;
	return 0;
}

static int remove_tree(void **state)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", (char *)*state);
	assert_int_equal(system(cmd), 0);
	free(*state);
	return 0;
}

static size_t count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	size_t n = 0;
	assert_non_null(d);
	while ((e = readdir(d)) != NULL)
		n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
	closedir(d);
	return n;
}

static void read_all(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	ssize_t r = read(fd, buf, len - 1);
	assert_true(r >= 0);
	buf[r] = '\0';
	close(fd);
}

static void test_atomic_write_replaces_content_with_mode_and_leaves_no_temp(void **state)
{
	const char *dir = *state;
	char path[256], got[64];
	struct stat st;
	struct tern_write_opts o = {.mode = 0640, .uid = (uid_t)-1, .gid = (gid_t)-1};

	snprintf(path, sizeof(path), "%s/users", dir);
	assert_int_equal(tern_write_file_atomic(path, "old\n", 4, NULL), TERN_OK);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	assert_int_equal(tern_write_file_atomic(path, "new content\n", 12, &o), TERN_OK);
	read_all(path, got, sizeof(got));
	assert_string_equal(got, "new content\n");
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0640);
	assert_int_equal(count_entries(dir), 1);
}

static void test_atomic_write_into_missing_directory_fails_cleanly(void **state)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/no/such/file", (char *)*state);
	assert_int_equal(tern_write_file_atomic(path, "x", 1, NULL), TERN_EIO);
	assert_int_equal(count_entries(*state), 0);
}

static void test_mkdir_p_makes_nested_dirs_and_accepts_existing(void **state)
{
	char path[256], file[256];
	bool created = false;

	snprintf(path, sizeof(path), "%s/a//b/c/", (char *)*state);
	assert_int_equal(tern_mkdir_p(path, 0700, true, &created), TERN_OK);
	assert_true(created);
	assert_int_equal(tern_mkdir_p(path, 0700, true, &created), TERN_OK);
	assert_false(created);
	snprintf(file, sizeof(file), "%s/a/f", (char *)*state);
	assert_int_equal(tern_write_file_atomic(file, "x", 1, NULL), TERN_OK);
	snprintf(path, sizeof(path), "%s/a/f/g", (char *)*state);
	assert_int_equal(tern_mkdir_p(path, 0700, false, NULL), TERN_EIO);
	assert_int_equal(errno, ENOTDIR);
}

static void test_writev_full_writes_every_byte_of_many_iovecs(void **state)
{
	char path[256], got[512];
	struct iovec iov[200];
	char expect[512];
	size_t n = 0;

	for (int i = 0; i < 200; i++) {
		iov[i].iov_base = (void *)"ab";
		iov[i].iov_len = (size_t)(i % 3 == 0 ? 0 : (i % 3)); /* some empty */
		memcpy(expect + n, "ab", iov[i].iov_len);
		n += iov[i].iov_len;
	}
	expect[n] = '\0';
	snprintf(path, sizeof(path), "%s/v", (char *)*state);
	int fd = open(path, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	assert_int_equal(tern_writev_full(fd, iov, 200), TERN_OK);
	close(fd);
	read_all(path, got, sizeof(got));
	assert_string_equal(got, expect);
}

static void test_rfc5322_date_is_english_utc_whatever_the_locale(void **state)
{
	char d[TERN_RFC5322_DATE_MAX];

	setlocale(LC_ALL, "C.UTF-8");
	assert_true(tern_rfc5322_date(1796551200, d, sizeof(d)));
	assert_string_equal(d, "Sun, 06 Dec 2026 10:00:00 +0000");
	assert_true(tern_rfc5322_date(253402300799LL, d, sizeof(d)));
	assert_string_equal(d, "Fri, 31 Dec 9999 23:59:59 +0000");
	assert_false(tern_rfc5322_date(253402300800LL, d, sizeof(d)));
	assert_false(tern_rfc5322_date(-1, d, sizeof(d)));
	assert_false(tern_rfc5322_date(0, d, 10));
	assert_string_equal(d, "");
}

static void test_rfc3339_forms(void **state)
{
	char d[TERN_RFC3339_MAX];

	assert_true(tern_rfc3339(1796551200, d, sizeof(d)));
	assert_string_equal(d, "2026-12-06T10:00:00Z");
	/* milliseconds are cut, not rounded, as Mailpit writes them */
	assert_true(tern_rfc3339_ms(1796551200999999LL, d, sizeof(d)));
	assert_string_equal(d, "2026-12-06T10:00:00.999Z");
	/* before 1970 the milliseconds still count forward from the second */
	assert_true(tern_rfc3339_ms(-1000, d, sizeof(d)));
	assert_string_equal(d, "1969-12-31T23:59:59.999Z");
	assert_true(tern_rfc3339_offset(1796551200, 90, d, sizeof(d)));
	assert_string_equal(d, "2026-12-06T11:30:00+01:30");
	assert_true(tern_rfc3339_offset(1796551200, -(4 * 60), d, sizeof(d)));
	assert_string_equal(d, "2026-12-06T06:00:00-04:00");
	assert_true(tern_rfc3339_offset(1796551200, 0, d, sizeof(d)));
	assert_string_equal(d, "2026-12-06T10:00:00Z");
	/* the widest forms fit the documented maximum */
	char w[TERN_RFC3339_MAX];
	assert_true(tern_rfc3339_ms(253402300799999999LL, w, sizeof(w)));
	assert_string_equal(w, "9999-12-31T23:59:59.999Z");
	assert_true(
	    tern_rfc3339_offset(253402300799LL - (23 * 60 + 59) * 60, 23 * 60 + 59, w, sizeof(w)));
	assert_string_equal(w, "9999-12-31T23:59:59+23:59");
	assert_true(strlen(w) < TERN_RFC3339_MAX);
	/* what RFC 3339 cannot say, and a buffer too small: false and empty */
	assert_false(tern_rfc3339(253402300800LL, d, sizeof(d)));
	assert_string_equal(d, "");
	assert_false(tern_rfc3339(-62167219201LL, d, sizeof(d)));
	assert_true(tern_rfc3339(-62167219200LL, d, sizeof(d)));
	assert_string_equal(d, "0000-01-01T00:00:00Z");
	assert_false(tern_rfc3339_offset(1796551200, 24 * 60, d, sizeof(d)));
	assert_false(tern_rfc3339_offset(253402300799LL, 1, d, sizeof(d)));
	assert_false(tern_rfc3339(1796551200, d, 20));
	assert_string_equal(d, "");
}

static void test_mime_writer_keeps_first_error_and_stops(void **state)
{
	struct tbuf b = TBUF_INIT(8);
	struct mime_writer w;

	mime_writer_init(&w, &b);
	mime_puts(&w, "12345");
	mime_puts(&w, "6789"); /* passes the cap: fails */
	mime_puts(&w, "x");    /* would fit, but the first error sticks */
	assert_int_equal(mime_writer_status(&w), TERN_ELIMIT);
	assert_int_equal(b.len, 5);
	tbuf_free(&b);
}

static void test_mime_writer_encodings(void **state)
{
	struct tbuf b = TBUF_INIT(1 << 20);
	struct mime_writer w;
	char big[300];

	mime_writer_init(&w, &b);
	mime_put_encoded_words(&w, "caf\xc3\xa9", 5);
	assert_string_equal(b.data, "=?UTF-8?B?Y2Fmw6k=?=");
	tbuf_reset(&b);
	memset(big, 'A', sizeof(big));
	mime_put_base64_body(&w, big, sizeof(big));
	assert_int_equal(mime_writer_status(&w), TERN_OK);
	/* 400 base64 characters: five lines of 76 and one of 20. */
	const char *p = b.data;
	for (int line = 0; line < 5; line++) {
		const char *e = strstr(p, "\r\n");
		assert_non_null(e);
		assert_int_equal(e - p, 76);
		p = e + 2;
	}
	assert_int_equal(strlen(p), 20);
	assert_int_equal(w.col, 20);
	tbuf_reset(&b);
	mime_put_boundary(&w, "B", true, false);
	mime_puts(&w, "x");
	mime_put_boundary(&w, "B", false, true);
	assert_string_equal(b.data, "--B\r\nx\r\n--B--");
	tbuf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(
	        test_atomic_write_replaces_content_with_mode_and_leaves_no_temp, make_tmpdir,
	        remove_tree),
	    cmocka_unit_test_setup_teardown(test_atomic_write_into_missing_directory_fails_cleanly,
	                                    make_tmpdir, remove_tree),
	    cmocka_unit_test_setup_teardown(test_mkdir_p_makes_nested_dirs_and_accepts_existing,
	                                    make_tmpdir, remove_tree),
	    cmocka_unit_test_setup_teardown(test_writev_full_writes_every_byte_of_many_iovecs,
	                                    make_tmpdir, remove_tree),
	    cmocka_unit_test(test_rfc5322_date_is_english_utc_whatever_the_locale),
	    cmocka_unit_test(test_rfc3339_forms),
	    cmocka_unit_test(test_mime_writer_keeps_first_error_and_stops),
	    cmocka_unit_test(test_mime_writer_encodings),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
