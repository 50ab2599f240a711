/*
 * test_privsep.c — the privileged parent's helpers (src/core/privsep.c) and
 * the file source (src/core/files.c): the bundle message round-trips byte
 * for byte and every malformed form is refused; files are read whole,
 * bounded, regular files only (a FIFO never hangs); a bundle serves exactly
 * what the parent read; a recording reads each file once; and the parent
 * never reads, as root, a file the unprivileged account could redirect.
 * The cases that chown or switch ids run as root (CI does).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pwd.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/files.h"
#include "core/privsep.h"

/* ------------------------------------------------------------- helpers */

static char tmpdir[64];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/tern-test-privsep-XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	/* Root-owned 0700 under sticky /tmp: root-safe when run as root. */
	return chmod(tmpdir, 0700);
}

static int teardown(void **state)
{
	(void)state;
	nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	/* Every test leaves the source as it found it: the file system. */
	file_bundle_free(files_record_stop());
	file_bundle_free(files_serve_bundle(NULL));
	return 0;
}

static void path_in(char *out, size_t outlen, const char *name)
{
	int n = snprintf(out, outlen, "%s/%s", tmpdir, name);
	assert_true(n > 0 && (size_t)n < outlen);
}

static void write_bytes(const char *path, const void *p, size_t n, mode_t mode)
{
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, mode);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, p, n), (ssize_t)n);
	assert_int_equal(fchmod(fd, mode), 0);
	assert_int_equal(close(fd), 0);
}

static struct file_bundle *sample_bundle(void)
{
	struct file_bundle *b = file_bundle_new();
	assert_non_null(b);
	assert_int_equal(file_bundle_add(b, "/etc/tern/tern.conf", 19, 0, "user = nobody;\n", 15),
	                 TERN_OK);
	assert_int_equal(file_bundle_add(b, "key.pem", 7, 0, "a\0b\xff", 4), TERN_OK);
	assert_int_equal(file_bundle_add(b, "/empty", 6, 0, "", 0), TERN_OK);
	assert_int_equal(file_bundle_add(b, "/missing", 8, ENOENT, NULL, 0), TERN_OK);
	return b;
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* ----------------------------------------------------------- the codec */

static void test_bundle_message_round_trips_byte_for_byte(void **state)
{
	(void)state;
	struct file_bundle *b = sample_bundle(), *d = NULL;
	struct tbuf m = TBUF_INIT(1 << 20), m2 = TBUF_INIT(1 << 20);
	unsigned type = 0;
	size_t body = 0;

	assert_int_equal(privsep_msg_encode_bundle(b, &m), TERN_OK);
	assert_memory_equal(m.data, "TRNP\x01\x01\x00\x00", 8);
	assert_int_equal(privsep_msg_header(m.data, &type, &body), TERN_OK);
	assert_int_equal(type, PRIVSEP_MSG_BUNDLE);
	assert_int_equal(body, m.len - PRIVSEP_HDR_LEN);
	assert_int_equal(privsep_msg_decode_bundle(m.data + PRIVSEP_HDR_LEN, body, &d), TERN_OK);
	assert_int_equal(file_bundle_count(d), 4);
	for (size_t i = 0; i < 4; i++) {
		const char *p1, *p2, *d1, *d2;
		size_t pl1, pl2, l1, l2;
		int e1, e2;
		file_bundle_get(b, i, &p1, &pl1, &e1, &d1, &l1);
		file_bundle_get(d, i, &p2, &pl2, &e2, &d2, &l2);
		assert_int_equal(pl1, pl2);
		assert_memory_equal(p1, p2, pl1);
		assert_int_equal(e1, e2);
		assert_int_equal(l1, l2);
		if (l1)
			assert_memory_equal(d1, d2, l1);
	}
	assert_int_equal(privsep_msg_encode_bundle(d, &m2), TERN_OK);
	assert_int_equal(m2.len, m.len);
	assert_memory_equal(m2.data, m.data, m.len);

	/* An empty bundle is a valid message too. */
	struct file_bundle *e = file_bundle_new(), *e2 = NULL;
	tbuf_reset(&m);
	assert_int_equal(privsep_msg_encode_bundle(e, &m), TERN_OK);
	assert_int_equal(m.len, PRIVSEP_HDR_LEN + 4);
	assert_int_equal(privsep_msg_decode_bundle(m.data + PRIVSEP_HDR_LEN, 4, &e2), TERN_OK);
	assert_int_equal(file_bundle_count(e2), 0);
	file_bundle_free(e);
	file_bundle_free(e2);
	file_bundle_free(b);
	file_bundle_free(d);
	tbuf_free(&m);
	tbuf_free(&m2);
}

static void test_bad_headers_are_refused(void **state)
{
	(void)state;
	static const struct {
		const char *what;
		const char hdr[PRIVSEP_HDR_LEN];
		int rc;
	} cases[] = {
	    {"bad magic", "TRNQ\x01\x01\x00\x00\x00\x00\x00\x04", TERN_ESYNTAX},
	    {"version 2", "TRNP\x02\x01\x00\x00\x00\x00\x00\x04", TERN_ESYNTAX},
	    {"type 0", "TRNP\x01\x00\x00\x00\x00\x00\x00\x04", TERN_ESYNTAX},
	    {"type 2", "TRNP\x01\x02\x00\x00\x00\x00\x00\x04", TERN_ESYNTAX},
	    {"padding", "TRNP\x01\x01\x00\x01\x00\x00\x00\x04", TERN_ESYNTAX},
	    {"body of 4 GiB", "TRNP\x01\x01\x00\x00\xff\xff\xff\xff", TERN_ELIMIT},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		unsigned type;
		size_t len;
		int rc = privsep_msg_header(cases[i].hdr, &type, &len);
		if (rc != cases[i].rc)
			fail_msg("%s: got %d, want %d", cases[i].what, rc, cases[i].rc);
	}
	/* One past the largest well-formed body; the largest itself passes. */
	uint8_t h[PRIVSEP_HDR_LEN];
	unsigned type;
	size_t len;
	memcpy(h, "TRNP\x01\x01\x00\x00", 8);
	put32(h + 8, (uint32_t)PRIVSEP_MSG_MAX);
	assert_int_equal(privsep_msg_header(h, &type, &len), TERN_OK);
	assert_int_equal(len, PRIVSEP_MSG_MAX);
	put32(h + 8, (uint32_t)PRIVSEP_MSG_MAX + 1);
	assert_int_equal(privsep_msg_header(h, &type, &len), TERN_ELIMIT);
}

/* An entry: path length, errno, data length, then the bytes. */
static size_t entry(uint8_t *p, uint16_t plen, uint16_t en, uint32_t dlen, const char *bytes,
                    size_t n)
{
	p[0] = (uint8_t)(plen >> 8);
	p[1] = (uint8_t)plen;
	p[2] = (uint8_t)(en >> 8);
	p[3] = (uint8_t)en;
	put32(p + 4, dlen);
	memcpy(p + 8, bytes, n);
	return 8 + n;
}

static void test_bad_bodies_are_refused(void **state)
{
	(void)state;
	uint8_t b[256];
	size_t n;
	struct file_bundle *out = (struct file_bundle *)1;
	struct {
		const char *what;
		int rc;
	} want;

#define DECODE_IS(rc_want, what_)                                                                  \
	do {                                                                                       \
		want.what = what_;                                                                 \
		want.rc = rc_want;                                                                 \
		int rc_ = privsep_msg_decode_bundle(b, n, &out);                                   \
		if (rc_ != want.rc)                                                                \
			fail_msg("%s: got %d, want %d", want.what, rc_, want.rc);                  \
		assert_null(out);                                                                  \
	} while (0)

	n = 3;
	memset(b, 0, n);
	DECODE_IS(TERN_ESYNTAX, "shorter than the count");

	put32(b, FILES_MAX_COUNT + 1);
	n = 4;
	DECODE_IS(TERN_ELIMIT, "too many files");

	put32(b, 2);
	n = 4 + entry(b + 4, 1, 0, 1, "/x", 2);
	DECODE_IS(TERN_ESYNTAX, "count says 2, one entry follows");

	put32(b, 1);
	n = 4 + entry(b + 4, 1, 0, 1, "/x", 2) + 1;
	DECODE_IS(TERN_ESYNTAX, "a byte left over");

	n = 4 + 5;
	DECODE_IS(TERN_ESYNTAX, "entry header cut short");

	n = 4 + entry(b + 4, 0, 0, 1, "x", 1);
	DECODE_IS(TERN_ESYNTAX, "empty path");

	n = 4 + entry(b + 4, 3, 0, 0, "/\0x", 3);
	DECODE_IS(TERN_ESYNTAX, "NUL inside the path");

	n = 4 + entry(b + 4, 2, ENOENT, 1, "/xd", 3);
	DECODE_IS(TERN_ESYNTAX, "an errno entry with data");

	n = 4 + entry(b + 4, 2, 4096, 0, "/x", 2);
	DECODE_IS(TERN_ESYNTAX, "errno out of range");

	n = 4 + entry(b + 4, 2, 0, 100, "/xdata", 6);
	DECODE_IS(TERN_ESYNTAX, "data longer than the body");

	n = 4 + entry(b + 4, 200, 0, 0, "/x", 2);
	DECODE_IS(TERN_ESYNTAX, "path longer than the body");

	put32(b, 2);
	n = 4 + entry(b + 4, 2, 0, 1, "/xa", 3);
	n += entry(b + n, 2, 0, 1, "/xb", 3);
	DECODE_IS(TERN_ESYNTAX, "the same path twice");

	put32(b, 1);
	n = 4 + entry(b + 4, 2, 0, FILES_MAX_SIZE + 1, "/x", 2);
	DECODE_IS(TERN_ESYNTAX, "a file larger than the body");
#undef DECODE_IS
}

/* What the child reads from the channel: whole messages, EOF between
 * messages, and a stream cut inside one. */
static void test_child_receives_whole_messages_only(void **state)
{
	(void)state;
	int sv[2];
	struct tbuf m = TBUF_INIT(1 << 20);
	struct file_bundle *b = sample_bundle(), *got = NULL;
	char err[256];

	assert_int_equal(privsep_msg_encode_bundle(b, &m), TERN_OK);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(write(sv[0], m.data, m.len), (ssize_t)m.len);
	assert_int_equal(write(sv[0], m.data, m.len - 1), (ssize_t)m.len - 1);
	close(sv[0]);
	assert_int_equal(privsep_child_receive(sv[1], &got, err, sizeof(err)), TERN_OK);
	assert_int_equal(file_bundle_count(got), 4);
	file_bundle_free(got);
	assert_int_equal(privsep_child_receive(sv[1], &got, err, sizeof(err)), TERN_EIO);
	assert_null(got);
	assert_int_equal(privsep_child_receive(sv[1], &got, err, sizeof(err)), TERN_ENOTFOUND);
	close(sv[1]);
	file_bundle_free(b);
	tbuf_free(&m);
}

/* ------------------------------------------------------- the file source */

static void test_fs_reads_regular_files_whole_and_bounded(void **state)
{
	(void)state;
	char path[128], dir[128], fifo[128];
	char *data = NULL;
	size_t len = 0;
	int en = 0;

	path_in(path, sizeof(path), "f");
	write_bytes(path, "0123456789", 10, 0600);
	assert_int_equal(tern_file_read(path, 10, &data, &len, &en), TERN_OK);
	assert_int_equal(len, 10);
	assert_string_equal(data, "0123456789"); /* NUL-terminated */
	free(data);
	assert_int_equal(tern_file_read(path, 9, &data, &len, &en), TERN_ELIMIT);
	assert_int_equal(en, EFBIG);
	assert_null(data);

	path_in(path, sizeof(path), "none");
	assert_int_equal(tern_file_read(path, 10, &data, &len, &en), TERN_EIO);
	assert_int_equal(en, ENOENT);

	path_in(dir, sizeof(dir), "d");
	assert_int_equal(mkdir(dir, 0700), 0);
	assert_int_equal(tern_file_read(dir, 10, &data, &len, &en), TERN_EIO);
	assert_int_equal(en, EINVAL);

	/* A FIFO with no writer: refused at once, never waited on. */
	path_in(fifo, sizeof(fifo), "fifo");
	assert_int_equal(mkfifo(fifo, 0600), 0);
	assert_int_equal(tern_file_read(fifo, 10, &data, &len, &en), TERN_EIO);
	assert_int_equal(en, EINVAL);
	assert_int_equal(tern_file_read_fs(fifo, 10, &data, &len, &en), TERN_EIO);
	assert_int_equal(en, EINVAL);
}

static void test_bundle_serves_exactly_what_the_parent_read(void **state)
{
	(void)state;
	char path[128];
	char *data = NULL;
	size_t len = 0;
	int en = 0;
	struct file_bundle *b = file_bundle_new();

	path_in(path, sizeof(path), "on-disk");
	write_bytes(path, "disk", 4, 0600);
	assert_int_equal(file_bundle_add(b, "/b/key", 6, 0, "secret", 6), TERN_OK);
	assert_int_equal(file_bundle_add(b, "/b/none", 7, ENOENT, NULL, 0), TERN_OK);
	assert_int_equal(file_bundle_add(b, "/b/huge", 7, EFBIG, NULL, 0), TERN_OK);
	assert_null(files_serve_bundle(b));

	assert_int_equal(tern_file_read("/b/key", 100, &data, &len, &en), TERN_OK);
	assert_int_equal(len, 6);
	assert_string_equal(data, "secret");
	free(data);
	assert_int_equal(tern_file_read("/b/key", 5, &data, &len, &en), TERN_ELIMIT);
	assert_int_equal(en, EFBIG);
	assert_int_equal(tern_file_read("/b/none", 100, &data, &len, &en), TERN_EIO);
	assert_int_equal(en, ENOENT);
	assert_int_equal(tern_file_read("/b/huge", 100, &data, &len, &en), TERN_ELIMIT);
	/* Not in the bundle: never looked up on disk, even if it exists there. */
	assert_int_equal(tern_file_read(path, 100, &data, &len, &en), TERN_EIO);
	assert_int_equal(en, EACCES);
	assert_null(data);

	/* A library that opens by name gets a memfd with the contents. */
	char name[64];
	int fd = -1;
	assert_int_equal(tern_file_lib_path("/b/key", name, sizeof(name), &fd, &en), TERN_OK);
	assert_true(fd >= 0);
	assert_true(strncmp(name, "/proc/self/fd/", 14) == 0);
	FILE *f = fopen(name, "r");
	assert_non_null(f);
	char got[16] = {0};
	assert_int_equal(fread(got, 1, sizeof(got), f), 6);
	assert_string_equal(got, "secret");
	fclose(f);
	close(fd);
	assert_int_equal(tern_file_lib_path("/b/none", name, sizeof(name), &fd, &en), TERN_EIO);
	assert_int_equal(fd, -1);

	/* Back to the file system. */
	file_bundle_free(files_serve_bundle(NULL));
	assert_int_equal(tern_file_read(path, 100, &data, &len, &en), TERN_OK);
	assert_string_equal(data, "disk");
	free(data);
	assert_int_equal(tern_file_lib_path(path, name, sizeof(name), &fd, &en), TERN_OK);
	assert_string_equal(name, path);
	assert_int_equal(fd, -1);
}

struct counting_reader {
	unsigned calls;
};

static int counting_read(void *arg, const char *path, size_t max, char **out, size_t *outlen,
                         int *err_no)
{
	struct counting_reader *r = arg;
	r->calls++;
	assert_int_equal(max, FILES_MAX_SIZE);
	return tern_file_read_fs(path, max, out, outlen, err_no);
}

static void test_recording_reads_each_file_once(void **state)
{
	(void)state;
	char path[128], none[128];
	char *data = NULL;
	size_t len = 0;
	int en = 0;
	struct counting_reader r = {0};

	path_in(path, sizeof(path), "conf");
	path_in(none, sizeof(none), "absent");
	write_bytes(path, "v1", 2, 0600);
	assert_int_equal(files_record_start(counting_read, &r), TERN_OK);
	assert_int_equal(tern_file_read(path, 100, &data, &len, &en), TERN_OK);
	free(data);
	write_bytes(path, "v2 longer", 9, 0600);
	/* Read again while recording: the recorded copy, not the new file. */
	assert_int_equal(tern_file_read(path, 100, &data, &len, &en), TERN_OK);
	assert_string_equal(data, "v1");
	free(data);
	assert_int_equal(tern_file_read(none, 100, &data, &len, &en), TERN_EIO);
	assert_int_equal(en, ENOENT);
	assert_int_equal(r.calls, 2);
	struct file_bundle *b = files_record_stop();
	assert_int_equal(file_bundle_count(b), 2);
	const char *p, *d;
	size_t pl, l;
	int e;
	file_bundle_get(b, 0, &p, &pl, &e, &d, &l);
	assert_string_equal(p, path);
	assert_int_equal(e, 0);
	assert_string_equal(d, "v1");
	file_bundle_get(b, 1, &p, &pl, &e, &d, &l);
	assert_string_equal(p, none);
	assert_int_equal(e, ENOENT);
	file_bundle_free(b);
	/* Stopped: the file system again. */
	assert_int_equal(tern_file_read(path, 100, &data, &len, &en), TERN_OK);
	assert_string_equal(data, "v2 longer");
	free(data);
}

static void test_bundle_limits(void **state)
{
	(void)state;
	struct file_bundle *b = file_bundle_new();
	char path[16];
	assert_int_equal(file_bundle_add(b, "/a", 2, 0, "x", 1), TERN_OK);
	assert_int_equal(file_bundle_add(b, "/a", 2, 0, "y", 1), TERN_EEXIST);
	assert_int_equal(file_bundle_add(b, "/b", 2, 5000, NULL, 0), TERN_EINVAL);
	assert_int_equal(file_bundle_add(b, "/b", 2, -1, NULL, 0), TERN_EINVAL);
	assert_int_equal(file_bundle_add(b, "/b", 2, ENOENT, "x", 1), TERN_EINVAL);
	assert_int_equal(file_bundle_add(b, "/b", 2, 0, NULL, FILES_MAX_SIZE + 1), TERN_ELIMIT);
	for (unsigned i = 1; i < FILES_MAX_COUNT; i++) {
		snprintf(path, sizeof(path), "/f%u", i);
		assert_int_equal(file_bundle_add(b, path, strlen(path), 0, "", 0), TERN_OK);
	}
	assert_int_equal(file_bundle_add(b, "/one-more", 9, 0, "", 0), TERN_ELIMIT);
	file_bundle_free(b);
}

/* --------------------------------------------------- the parent's reads */

static bool as_root(void)
{
	return geteuid() == 0;
}

static void test_paths_an_unprivileged_account_controls_are_not_root_safe(void **state)
{
	(void)state;
	char own[128], file[128], link[128], sub[128], gw[128], gwfile[128];
	struct passwd *nobody = getpwnam("nobody");

	/* The account that owns a directory can swap what it names. */
	path_in(own, sizeof(own), "theirs");
	assert_int_equal(mkdir(own, 0755), 0);
	if (as_root()) {
		assert_non_null(nobody);
		assert_int_equal(chown(own, nobody->pw_uid, nobody->pw_gid), 0);
	}
	path_in(file, sizeof(file), "theirs/users");
	write_bytes(file, "x", 1, 0600);
	assert_false(privsep_path_root_safe(file));
	/* ... a link planted there to a root-only file: still theirs. */
	path_in(link, sizeof(link), "theirs/link");
	assert_int_equal(symlink("/etc/shadow", link), 0);
	assert_false(privsep_path_root_safe(link));
	/* A group-writable directory: anyone in the group could. */
	path_in(gw, sizeof(gw), "gw");
	assert_int_equal(mkdir(gw, 0770), 0);
	assert_int_equal(chmod(gw, 0770), 0);
	path_in(gwfile, sizeof(gwfile), "gw/f");
	assert_false(privsep_path_root_safe(gwfile));
	if (!as_root())
		return; /* the rest needs files that root owns */

	assert_true(privsep_path_root_safe("/etc/passwd"));
	assert_true(privsep_path_root_safe("/etc/../etc/./passwd"));
	path_in(file, sizeof(file), "key.pem"); /* root 0700 dir under sticky /tmp */
	write_bytes(file, "k", 1, 0600);
	assert_true(privsep_path_root_safe(file));
	path_in(file, sizeof(file), "not-yet");
	assert_true(privsep_path_root_safe(file));
	/* A root link in a root directory that leads through their directory. */
	path_in(link, sizeof(link), "via-theirs");
	path_in(sub, sizeof(sub), "theirs/users");
	assert_int_equal(symlink(sub, link), 0);
	assert_false(privsep_path_root_safe(link));
	/* A root link in a root directory to a root path is fine. */
	path_in(link, sizeof(link), "to-passwd");
	assert_int_equal(symlink("../../etc/passwd", link), 0);
	assert_true(privsep_path_root_safe(link));
	/* Relative paths start from the working directory. */
	char cwd[4096];
	assert_non_null(getcwd(cwd, sizeof(cwd)));
	assert_int_equal(chdir(own), 0);
	assert_false(privsep_path_root_safe("users"));
	assert_int_equal(chdir(tmpdir), 0);
	assert_true(privsep_path_root_safe("key.pem"));
	assert_int_equal(chdir(cwd), 0);
}

static void test_parent_reads_as_root_only_what_only_root_controls(void **state)
{
	(void)state;
	if (!as_root()) {
		skip(); /* switching effective ids needs root */
		return;
	}
	struct passwd *nobody = getpwnam("nobody");
	assert_non_null(nobody);
	struct privsep_reader rd = {.uid = nobody->pw_uid, .gid = nobody->pw_gid};
	char secret[128], theirs[128], link[128];
	char *data = NULL;
	size_t len = 0;
	int en = 0;

	path_in(secret, sizeof(secret), "secret");
	write_bytes(secret, "root only", 9, 0600);
	path_in(theirs, sizeof(theirs), "theirs");
	assert_int_equal(mkdir(theirs, 0755), 0);
	assert_int_equal(chmod(tmpdir, 0755), 0); /* so nobody can reach theirs/ */
	assert_int_equal(chown(theirs, nobody->pw_uid, nobody->pw_gid), 0);
	path_in(link, sizeof(link), "theirs/users");
	assert_int_equal(symlink(secret, link), 0);

	/* Config files are read as root, wherever they are. */
	assert_int_equal(privsep_read_file(&rd, secret, 100, &data, &len, &en), TERN_OK);
	free(data);
	assert_false(rd.tainted);
	/* Files the config names: root-safe ones as root ... */
	rd.referenced = true;
	assert_int_equal(privsep_read_file(&rd, secret, 100, &data, &len, &en), TERN_OK);
	assert_string_equal(data, "root only");
	free(data);
	/* ... the rest as the account: its planted link gets it nothing. */
	assert_int_equal(privsep_read_file(&rd, link, 100, &data, &len, &en), TERN_EIO);
	assert_int_equal(en, EACCES);
	assert_null(data);
	assert_int_equal(geteuid(), 0); /* and the parent is root again */
	assert_int_equal(getegid(), 0);

	/* A config file someone else can change taints the whole config: what
	 * it names is read as the account, root-safe or not. */
	rd.referenced = false;
	assert_int_equal(privsep_read_file(&rd, link, 100, &data, &len, &en), TERN_OK);
	free(data);
	assert_true(rd.tainted);
	rd.referenced = true;
	assert_int_equal(privsep_read_file(&rd, secret, 100, &data, &len, &en), TERN_EIO);
	assert_int_equal(en, EACCES);
	assert_int_equal(geteuid(), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_bundle_message_round_trips_byte_for_byte),
	    cmocka_unit_test(test_bad_headers_are_refused),
	    cmocka_unit_test(test_bad_bodies_are_refused),
	    cmocka_unit_test(test_child_receives_whole_messages_only),
	    cmocka_unit_test(test_bundle_limits),
	    cmocka_unit_test_setup_teardown(test_fs_reads_regular_files_whole_and_bounded, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_bundle_serves_exactly_what_the_parent_read, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_recording_reads_each_file_once, setup, teardown),
	    cmocka_unit_test_setup_teardown(
	        test_paths_an_unprivileged_account_controls_are_not_root_safe, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_parent_reads_as_root_only_what_only_root_controls,
	                                    setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
