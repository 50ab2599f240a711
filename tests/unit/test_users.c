/*
 * test_users.c — the users file (src/auth/users.c): every supported
 * password scheme checks right and wrong passwords, addresses match
 * case-insensitively, bad lines are reported with their line number, and
 * the file editors change only the one line, atomically, keeping the file's
 * owner and group permissions (never any for others; a new file is 0600).
 */
#include <crypt.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

#include "auth/auth.h"
#include "auth/users_internal.h"
#include "core/buf.h"
#include "core/err.h"
#include "deliver/deliver.h"
#include "smtp/smtp.h"

struct fixture {
	char dir[256];
	char path[300]; /* DIR/users */
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
	snprintf(f->dir, sizeof(f->dir), "/tmp/tern-test-users-XXXXXX");
	if (mkdtemp(f->dir) == NULL) {
		free(f);
		return -1;
	}
	snprintf(f->path, sizeof(f->path), "%s/users", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, mode);
	size_t len = strlen(text);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	assert_int_equal(fchmod(fd, mode), 0);
	assert_int_equal(close(fd), 0);
}

static char *read_text(const char *path)
{
	struct stat st;
	char *s;
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	s = malloc((size_t)st.st_size + 1);
	assert_non_null(s);
	assert_int_equal(read(fd, s, (size_t)st.st_size), st.st_size);
	s[st.st_size] = '\0';
	close(fd);
	return s;
}

static void assert_mode(const char *path, mode_t mode)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, mode);
}

static void assert_mode_0600(const char *path)
{
	assert_mode(path, 0600);
}

/* A crypt(3) hash of pw with the given method prefix ("$6$", "$2b$", "$y$"). */
static void make_hash(const char *prefix, const char *pw, char *out, size_t outlen)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd = calloc(1, sizeof(*cd));
	const char *h;

	assert_non_null(cd);
	/* Lowest cost: the test checks the scheme, not its strength. */
	unsigned long cost = strcmp(prefix, "$2b$") == 0 ? 4 : 0;
	assert_non_null(crypt_gensalt_rn(prefix, cost, NULL, 0, salt, sizeof(salt)));
	h = crypt_rn(pw, salt, cd, sizeof(*cd));
	assert_non_null(h);
	assert_true(h[0] != '*');
	assert_true(strlen(h) < outlen);
	tern_strlcpy(out, h, outlen);
	free(cd);
}

static void test_all_schemes_check_right_and_wrong_passwords(void **state)
{
	struct fixture *f = *state;
	char h6[CRYPT_OUTPUT_SIZE], h2b[CRYPT_OUTPUT_SIZE], hy[CRYPT_OUTPUT_SIZE],
	    h6b[CRYPT_OUTPUT_SIZE], text[4096], err[256];
	struct user_db *db = NULL;

	make_hash("$6$", "pw-sha512", h6, sizeof(h6));
	make_hash("$2b$", "pw-bcrypt", h2b, sizeof(h2b));
	make_hash("$y$", "pw-yescrypt", hy, sizeof(hy));
	make_hash("$6$", "pw-bare", h6b, sizeof(h6b));
	snprintf(text, sizeof(text),
	         "# tern users\n"
	         "\n"
	         "sha@example.com:{SHA512-CRYPT}%s\n"
	         "   \t\n"
	         "  # indented comment\n"
	         "blf@example.com:{BLF-CRYPT}%s:1000:1000::/home/blf::\n"
	         "yes@example.com:{CRYPT}%s\r\n"
	         "bare@example.com:%s\n"
	         "plain@example.com:{PLAIN}pw plain with spaces\n"
	         "clear@example.com:{cleartext}pw-clear:::\n"
	         "Mixed@Example.COM:{PLAIN}pw-mixed",
	         h6, h2b, hy, h6b);
	write_file(f->path, text, 0600);

	assert_int_equal(users_load(f->path, &db, err, sizeof(err)), TERN_OK);
	assert_int_equal(users_count(db), 7);

	static const struct {
		const char *addr, *pw;
		int rc;
	} cases[] = {
	    {"sha@example.com", "pw-sha512", TERN_OK},
	    {"sha@example.com", "pw-sha51", TERN_EINVAL},
	    {"sha@example.com", "", TERN_EINVAL},
	    {"blf@example.com", "pw-bcrypt", TERN_OK},
	    {"blf@example.com", "pw-bcryp", TERN_EINVAL},
	    {"yes@example.com", "pw-yescrypt", TERN_OK},
	    {"yes@example.com", "pw-yescrypt\r", TERN_EINVAL},
	    {"bare@example.com", "pw-bare", TERN_OK},
	    {"bare@example.com", "PW-BARE", TERN_EINVAL},
	    {"plain@example.com", "pw plain with spaces", TERN_OK},
	    {"plain@example.com", "pw plain with space", TERN_EINVAL},
	    {"plain@example.com", "pw plain with spacesX", TERN_EINVAL},
	    {"plain@example.com", "", TERN_EINVAL},
	    {"clear@example.com", "pw-clear", TERN_OK},
	    {"clear@example.com", "pw-clear:", TERN_EINVAL},
	    {"mixed@example.com", "pw-mixed", TERN_OK},
	    {"MIXED@EXAMPLE.COM", "pw-mixed", TERN_OK},
	    {"SHA@example.COM", "pw-sha512", TERN_OK},
	    {"nobody@example.com", "pw-sha512", TERN_ENOTFOUND},
	    {"sha@example.org", "pw-sha512", TERN_ENOTFOUND},
	    {"", "x", TERN_ENOTFOUND},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int rc = users_verify(db, cases[i].addr, cases[i].pw);
		if (rc != cases[i].rc)
			fail_msg("case %zu (%s / %s): got %d, want %d", i, cases[i].addr,
			         cases[i].pw, rc, cases[i].rc);
	}
	assert_true(users_exists(db, "Plain@EXAMPLE.com"));
	assert_false(users_exists(db, "plain@example"));
	assert_false(users_exists(db, NULL));
	assert_int_equal(users_verify(db, "plain@example.com", NULL), TERN_EINVAL);
	users_free(db);
}

static void collect(const char *addr, void *arg)
{
	struct tbuf *b = arg;

	assert_int_equal(tbuf_printf(b, "%s,", addr), TERN_OK);
}

static void test_foreach_lists_lowercased_addresses_in_file_order(void **state)
{
	(void)state;
	static const char text[] =
	    "z@b.c:{PLAIN}1\n# x@y.z:{PLAIN}2\nA@B.C:{PLAIN}3\nm@b.c:{PLAIN}4\n";
	struct user_db *db = NULL;
	struct tbuf b = TBUF_INIT(1024);

	assert_int_equal(users_parse_buffer(text, strlen(text), "t", &db, NULL, 0), TERN_OK);
	users_foreach(db, collect, &b);
	assert_string_equal(b.data, "z@b.c,a@b.c,m@b.c,");
	tbuf_free(&b);
	users_free(db);
}

static void test_locked_users_exist_but_never_authenticate(void **state)
{
	(void)state;
	static const char text[] = "empty@x.y:\n"
	                           "bang@x.y:{CRYPT}!$6$abc$def\n"
	                           "star@x.y:*\n"
	                           "plainempty@x.y:{PLAIN}\n"
	                           "sha@x.y:{SHA512-CRYPT}\n";
	struct user_db *db = NULL;
	static const char *const who[] = {"empty@x.y", "bang@x.y", "star@x.y", "plainempty@x.y",
	                                  "sha@x.y"};

	assert_int_equal(users_parse_buffer(text, strlen(text), "t", &db, NULL, 0), TERN_OK);
	for (size_t i = 0; i < sizeof(who) / sizeof(who[0]); i++) {
		assert_true(users_exists(db, who[i]));
		assert_int_equal(users_verify(db, who[i], ""), TERN_EINVAL);
		assert_int_equal(users_verify(db, who[i], "!"), TERN_EINVAL);
		assert_int_equal(users_verify(db, who[i], "*"), TERN_EINVAL);
	}
	users_free(db);
}

static void test_bad_lines_are_reported_with_file_and_line_number(void **state)
{
	(void)state;
	static const struct {
		const char *text;
		const char *want; /* substring of the message, starting "t:LINE: " */
	} cases[] = {
	    {"a@b.c:{PLAIN}x\nno colon here\n", "t:2: "},
	    {"# c\n\na@b.c:{MD4}x\n", "t:3: unknown password scheme"},
	    {"a@b.c:{PLAIN x\n", "t:1: unterminated {SCHEME}"},
	    {"a@@b.c:{PLAIN}x\n", "t:1: bad address"},
	    {"@b.c:{PLAIN}x\n", "t:1: bad address"},
	    {"a@:{PLAIN}x\n", "t:1: bad address"},
	    {"ab.c:{PLAIN}x\n", "t:1: bad address"},
	    {"a@b@c:{PLAIN}x\n", "t:1: bad address"},
	    {" a@b.c:{PLAIN}x\n", "t:1: bad address"},
	    {"a b@c:{PLAIN}x\n", "t:1: bad address"},
	    {":{PLAIN}x\n", "t:1: bad address"},
	    {"a@b.c:{PLAIN}x\nA@B.C:{PLAIN}y\n", "t:2: duplicate user (first on line 1)"},
	    {"a@b.c:{PLAIN}x\nb@b.c:{PLAIN}x\r\nc@b.c:{PLAIN}x\0y\n", "t:3: NUL byte"},
	    {"a@b.c:{CRYPT}x\n", "t:1: password hash not understood"},
	    {"a@b.c:{PLAIN}se\x01cret\n", "t:1: control byte"},
	    {"\xef\xbb\xbf"
	     "a@b.c:{PLAIN}x\n",
	     "t:1: line starts with a UTF-8 byte order mark"},
	    {"a@b.c:{PLAIN}x\n\xef\xbb\xbf"
	     "d@b.c:{PLAIN}x\n",
	     "t:2: line starts with a UTF-8 byte"},
	};
	char err[256];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct user_db *db = (struct user_db *)1;
		size_t len = strlen(cases[i].text);

		if (strstr(cases[i].want, "NUL") != NULL)
			len += strlen(cases[i].text + len + 1) + 1;
		err[0] = '\0';
		int rc = users_parse_buffer(cases[i].text, len, "t", &db, err, sizeof(err));
		if (rc != TERN_ESYNTAX || strncmp(err, cases[i].want, strlen(cases[i].want)) != 0)
			fail_msg("case %zu: rc %d, err \"%s\", want \"%s\"", i, rc, err,
			         cases[i].want);
		assert_null(db);
	}
	/* The message never quotes the line (it may hold a password). */
	assert_int_equal(users_parse_buffer("a@b.c:{NOPE}hunter2\n", 20, "t",
	                                    &(struct user_db *){0}, err, sizeof(err)),
	                 TERN_ESYNTAX);
	assert_null(strstr(err, "hunter2"));
}

static void test_load_reports_path_and_line_of_a_bad_line(void **state)
{
	struct fixture *f = *state;
	struct user_db *db = NULL;
	char err[512], want[400];

	write_file(f->path, "ok@x.y:{PLAIN}1\n#\nbad\n", 0600);
	assert_int_equal(users_load(f->path, &db, err, sizeof(err)), TERN_ESYNTAX);
	assert_null(db);
	snprintf(want, sizeof(want), "%s:3: ", f->path);
	assert_memory_equal(err, want, strlen(want));
}

static void test_missing_file_is_an_empty_database(void **state)
{
	struct fixture *f = *state;
	struct user_db *db = NULL;
	char err[256];

	assert_int_equal(users_load(f->path, &db, err, sizeof(err)), TERN_OK);
	assert_non_null(db);
	assert_int_equal(users_count(db), 0);
	assert_false(users_exists(db, "a@b.c"));
	assert_int_equal(users_verify(db, "a@b.c", "x"), TERN_ENOTFOUND);
	users_free(db);
	/* A directory is not a users file; the message names it. */
	assert_int_equal(users_load(f->dir, &db, err, sizeof(err)), TERN_EIO);
	assert_null(db);
	assert_memory_equal(err, f->dir, strlen(f->dir));
	assert_memory_equal(err + strlen(f->dir), ": ", 2);
	/* Too large is refused before a byte is read. */
	assert_int_equal(
	    users_parse_buffer("", (size_t)USERS_FILE_MAX + 1, "t", &db, err, sizeof(err)),
	    TERN_ELIMIT);
	assert_null(db);
}

enum { EDITORS = 6, ADDS_EACH = 4 };

struct editor_arg {
	const char *path;
	int id;
	int failures;
};

static void *editor_thread(void *p)
{
	struct editor_arg *a = p;
	char addr[64];

	for (int i = 0; i < ADDS_EACH; i++) {
		snprintf(addr, sizeof(addr), "u%d-%d@example.com", a->id, i);
		if (users_file_add(a->path, addr, "pw") != TERN_OK)
			a->failures++;
	}
	return NULL;
}

static void test_concurrent_adds_lose_no_user(void **state)
{
	struct fixture *f = *state;
	pthread_t th[EDITORS];
	struct editor_arg args[EDITORS];
	struct user_db *db = NULL;

	write_file(f->path, "# shared\n", 0600);
	for (int t = 0; t < EDITORS; t++) {
		args[t] = (struct editor_arg){.path = f->path, .id = t};
		assert_int_equal(pthread_create(&th[t], NULL, editor_thread, &args[t]), 0);
	}
	for (int t = 0; t < EDITORS; t++) {
		assert_int_equal(pthread_join(th[t], NULL), 0);
		assert_int_equal(args[t].failures, 0);
	}
	assert_int_equal(users_load(f->path, &db, NULL, 0), TERN_OK);
	assert_int_equal(users_count(db), EDITORS * ADDS_EACH);
	assert_int_equal(users_verify(db, "u3-2@example.com", "pw"), TERN_OK);
	users_free(db);
	char *now = read_text(f->path);
	assert_memory_equal(now, "# shared\n", 9);
	free(now);
}

static void test_hash_password_makes_verifiable_sha512_crypt(void **state)
{
	(void)state;
	char out[256], line[400];
	struct user_db *db = NULL;

	assert_int_equal(users_hash_password("s3cret:with colon", out, sizeof(out)), TERN_OK);
	assert_memory_equal(out, "{SHA512-CRYPT}$6$", 17);
	snprintf(line, sizeof(line), "a@b.c:%s\n", out);
	assert_int_equal(users_parse_buffer(line, strlen(line), "t", &db, NULL, 0), TERN_OK);
	assert_int_equal(users_verify(db, "a@b.c", "s3cret:with colon"), TERN_OK);
	assert_int_equal(users_verify(db, "a@b.c", "s3cret"), TERN_EINVAL);
	users_free(db);

	assert_int_equal(users_hash_password("x", out, 20), TERN_ELIMIT);
	assert_int_equal(users_hash_password("a\nb", out, sizeof(out)), TERN_EINVAL);
	assert_int_equal(users_hash_password("a\rb", out, sizeof(out)), TERN_EINVAL);
	assert_int_equal(users_hash_password(NULL, out, sizeof(out)), TERN_EINVAL);
	/* Two hashes of one password differ (fresh salt). */
	char out2[256];
	assert_int_equal(users_hash_password("s3cret:with colon", out2, sizeof(out2)), TERN_OK);
	assert_string_not_equal(out, out2);
}

/*
 * An operator opened the file to Dovecot's auth process (chgrp dovecot;
 * chmod 0640): every later edit keeps that, or IMAP logins stop working at
 * the next `tern user add`. Read bits for others are never kept.
 */
static void test_file_edits_keep_the_mode_an_operator_set(void **state)
{
	struct fixture *f = *state;

	write_file(f->path, "a@example.com:{PLAIN}a\n", 0640);
	assert_int_equal(users_file_add(f->path, "b@example.com", "b-pw"), TERN_OK);
	assert_mode(f->path, 0640);
	assert_int_equal(users_file_passwd(f->path, "a@example.com", "new"), TERN_OK);
	assert_mode(f->path, 0640);
	assert_int_equal(users_file_del(f->path, "b@example.com"), TERN_OK);
	assert_mode(f->path, 0640);
	assert_int_equal(chmod(f->path, 0664), 0);
	assert_int_equal(users_file_add(f->path, "c@example.com", "c-pw"), TERN_OK);
	assert_mode(f->path, 0660);
}

static void test_file_edits_keep_other_lines_byte_for_byte(void **state)
{
	struct fixture *f = *state;
	static const char orig[] = "# users for example.com\n"
	                           "\n"
	                           "alice@example.com:{PLAIN}alice-pw:1000:1000::/home/alice::\n"
	                           "  # keep me   \n"
	                           "Bob@Example.com:{PLAIN}bob-pw\r\n"
	                           "carol@example.com:{PLAIN}carol-pw\n";
	struct user_db *db = NULL;
	char *now;

	write_file(f->path, orig, 0604);

	/* add: the old content is an untouched prefix; the file keeps its
	 * owner bits and loses the bits for others. */
	assert_int_equal(users_file_add(f->path, "Dave@Example.com", "dave-pw"), TERN_OK);
	now = read_text(f->path);
	assert_memory_equal(now, orig, strlen(orig));
	assert_memory_equal(now + strlen(orig), "dave@example.com:{SHA512-CRYPT}$6$", 34);
	assert_int_equal(now[strlen(now) - 1], '\n');
	assert_null(strchr(now + strlen(orig), '\r'));
	free(now);
	assert_mode_0600(f->path);
	assert_int_equal(users_load(f->path, &db, NULL, 0), TERN_OK);
	assert_int_equal(users_count(db), 4);
	assert_int_equal(users_verify(db, "dave@example.com", "dave-pw"), TERN_OK);
	users_free(db);

	/* add of an existing user (any case) is refused and changes nothing. */
	now = read_text(f->path);
	assert_int_equal(users_file_add(f->path, "BOB@example.com", "x"), TERN_EEXIST);
	char *again = read_text(f->path);
	assert_string_equal(now, again);
	free(again);
	free(now);

	/* passwd: only the password field changes; extra fields and CRLF stay. */
	assert_int_equal(users_file_passwd(f->path, "ALICE@example.com", "new-alice"), TERN_OK);
	assert_int_equal(users_file_passwd(f->path, "bob@example.com", "new-bob"), TERN_OK);
	now = read_text(f->path);
	assert_memory_equal(now, orig, 25 + 1); /* comment and blank line */
	char *a = strstr(now, "alice@example.com:{SHA512-CRYPT}$6$");
	assert_non_null(a);
	char *eol = strchr(a, '\n');
	assert_memory_equal(eol - strlen(":1000:1000::/home/alice::"),
	                    ":1000:1000::/home/alice::", strlen(":1000:1000::/home/alice::"));
	assert_non_null(strstr(now, "\n  # keep me   \nBob@Example.com:{SHA512-CRYPT}$6$"));
	char *b = strstr(now, "Bob@Example.com:");
	assert_int_equal(strchr(b, '\n')[-1], '\r');
	assert_non_null(strstr(now, "\r\ncarol@example.com:{PLAIN}carol-pw\ndave@example.com:"));
	free(now);
	assert_mode_0600(f->path);
	assert_int_equal(users_load(f->path, &db, NULL, 0), TERN_OK);
	assert_int_equal(users_verify(db, "alice@example.com", "new-alice"), TERN_OK);
	assert_int_equal(users_verify(db, "alice@example.com", "alice-pw"), TERN_EINVAL);
	assert_int_equal(users_verify(db, "bob@example.com", "new-bob"), TERN_OK);
	assert_int_equal(users_verify(db, "carol@example.com", "carol-pw"), TERN_OK);
	users_free(db);

	/* del: the line disappears, everything else stays as it was. */
	now = read_text(f->path);
	assert_int_equal(users_file_del(f->path, "Carol@Example.COM"), TERN_OK);
	char *after = read_text(f->path);
	char *c = strstr(now, "carol@example.com:{PLAIN}carol-pw\n");
	assert_non_null(c);
	size_t pre = (size_t)(c - now), linelen = strlen("carol@example.com:{PLAIN}carol-pw\n");
	assert_int_equal(strlen(after), strlen(now) - linelen);
	assert_memory_equal(after, now, pre);
	assert_string_equal(after + pre, c + linelen);
	free(after);
	free(now);
	assert_mode_0600(f->path);

	assert_int_equal(users_file_del(f->path, "carol@example.com"), TERN_ENOTFOUND);
	assert_int_equal(users_file_passwd(f->path, "carol@example.com", "x"), TERN_ENOTFOUND);

	/* No temp file is left behind; only the users file and its lock. */
	DIR *d = opendir(f->dir);
	struct dirent *e;
	assert_non_null(d);
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		if (strcmp(e->d_name, "users") != 0 && strcmp(e->d_name, "users.lock") != 0)
			fail_msg("left behind: %s", e->d_name);
	}
	closedir(d);
}

static void test_add_to_missing_file_creates_it_private(void **state)
{
	struct fixture *f = *state;
	struct user_db *db = NULL;

	assert_int_equal(users_file_del(f->path, "a@b.c"), TERN_ENOTFOUND);
	assert_int_equal(users_file_passwd(f->path, "a@b.c", "x"), TERN_ENOTFOUND);
	assert_int_equal(access(f->path, F_OK), -1);
	assert_int_equal(users_file_add(f->path, "a@b.c", "pw"), TERN_OK);
	assert_mode_0600(f->path);
	assert_int_equal(users_load(f->path, &db, NULL, 0), TERN_OK);
	assert_int_equal(users_count(db), 1);
	assert_int_equal(users_verify(db, "A@B.C", "pw"), TERN_OK);
	users_free(db);
}

static void test_add_after_last_line_without_newline_keeps_both_lines(void **state)
{
	(void)state;
	static const char orig[] = "a@b.c:{PLAIN}x";
	struct tbuf out = TBUF_INIT(4096);

	assert_int_equal(
	    users_edit_buffer(orig, strlen(orig), USERS_EDIT_ADD, "d@e.f", "{PLAIN}y", &out),
	    TERN_OK);
	assert_string_equal(out.data, "a@b.c:{PLAIN}x\nd@e.f:{PLAIN}y\n");
	tbuf_free(&out);
	/* A password field that would add a field or a line is refused. */
	assert_int_equal(
	    users_edit_buffer(orig, strlen(orig), USERS_EDIT_ADD, "d@e.f", "x:y", &out),
	    TERN_EINVAL);
	assert_int_equal(
	    users_edit_buffer(orig, strlen(orig), USERS_EDIT_ADD, "d@e.f", "x\ny", &out),
	    TERN_EINVAL);
	tbuf_free(&out);
	/* passwd on a line with no ':' at all still yields a well-formed line. */
	assert_int_equal(
	    users_edit_buffer("a@b.c\r\n", 7, USERS_EDIT_PASSWD, "a@b.c", "{PLAIN}z", &out),
	    TERN_OK);
	assert_string_equal(out.data, "a@b.c:{PLAIN}z\r\n");
	tbuf_free(&out);
}

static void test_file_edits_reject_bad_addresses_and_passwords(void **state)
{
	struct fixture *f = *state;
	static const char *const bad[] = {
	    "nouser",  "a@@b.c",  "@b.c",   "a@", "a b@c.d",   "a:b@c.d",
	    "a\t@b.c", "a@b.c\n", "#a@b.c", "",   "a@b\x01.c", "a@b@c",
	};
	char longaddr[400];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (users_file_add(f->path, bad[i], "pw") != TERN_EINVAL)
			fail_msg("address %zu accepted", i);
		assert_int_equal(users_file_del(f->path, bad[i]), TERN_EINVAL);
	}
	assert_int_equal(users_file_add(f->path, NULL, "pw"), TERN_EINVAL);
	memset(longaddr, 'a', sizeof(longaddr) - 1);
	longaddr[sizeof(longaddr) - 1] = '\0';
	longaddr[10] = '@';
	assert_int_equal(users_file_add(f->path, longaddr, "pw"), TERN_ELIMIT);
	assert_int_equal(users_file_add(f->path, "a@b.c", "line\nbreak"), TERN_EINVAL);
	assert_int_equal(users_file_add(f->path, "a@b.c", "cr\rhere"), TERN_EINVAL);
	assert_int_equal(users_file_add(f->path, "a@b.c", NULL), TERN_EINVAL);
	/* Nothing was written by any of these. */
	assert_int_equal(access(f->path, F_OK), -1);
}

/* ---- mailboxes a user can be created for ------------------------------ */

static const char *const good_mailboxes[] = {
    "alice@example.com",
    "first.last+tag@example.com",
    "o'brien@example.com",
    "x_y-z=1{2}|3~4!#$%&*?^`@sub.example.com",
    "UPPER@Example.COM",
    "j\xc3\xb8ran@example.test", /* UTF-8 local part (RFC 6531) */
    "\xe7\x94\xb0\xe4\xb8\xad@example.test",
    "a@localhost",
    "a@xn--bcher-kva.example",
    "a@1.example.com",
    "0123456789012345678901234567890123456789012345678901234567890123@example.com",
};

static const char *const bad_mailboxes[] = {
    "\"../../x\"@example.com", /* the review's address */
    "\"quoted\"@example.com",
    "../x@example.com",
    "a/b@example.com",
    ".hidden@example.com",
    "trailing.@example.com",
    "two..dots@example.com",
    ".@example.com",
    "a b@example.com",
    "a\\b@example.com",
    "a,b@example.com",
    "a;b@example.com",
    "a<b@example.com",
    "a\"b@example.com",
    "a\x01@example.com",
    "a\x7f@example.com",
    "#x@example.com",
    "@example.com",
    "nouser",
    "x@",
    "x@../../etc",
    "x@example..com",
    "x@.example.com",
    "x@example.com.",
    "x@-bad.example",
    "x@bad-.example",
    "x@exa/mple.com",
    "x@host_1.example", /* RFC 5321 domains have no '_' */
    "x@exa mple.com",
    "x@[127.0.0.1]",
    "x@[IPv6:::1]",
    "x@1.2.3.4",
    "x@\xc3\xa9xample.com",     /* a U-label: the xn-- form is the one local_domains use */
    "\xc3@example.com",         /* a truncated sequence */
    "\xc0\xaf@example.com",     /* an overlong '/' */
    "\xed\xa0\x80@example.com", /* a surrogate */
    "01234567890123456789012345678901234567890123456789012345678901234@example.com",
};

static void test_check_mailbox_table(void **state)
{
	const char *why;

	for (size_t i = 0; i < sizeof(good_mailboxes) / sizeof(good_mailboxes[0]); i++)
		if (users_check_mailbox(good_mailboxes[i], &why) != TERN_OK)
			fail_msg("'%s' refused: %s", good_mailboxes[i], why);
	for (size_t i = 0; i < sizeof(bad_mailboxes) / sizeof(bad_mailboxes[0]); i++) {
		why = NULL;
		if (users_check_mailbox(bad_mailboxes[i], &why) != TERN_EINVAL)
			fail_msg("'%s' accepted", bad_mailboxes[i]);
		assert_non_null(why);
	}
	assert_int_equal(users_check_mailbox(NULL, NULL), TERN_EINVAL);
	char longdom[300];
	memset(longdom, 'a', sizeof(longdom) - 1);
	longdom[sizeof(longdom) - 1] = '\0';
	longdom[1] = '@';
	for (size_t i = 40; i < sizeof(longdom) - 1; i += 40)
		longdom[i] = '.';
	assert_int_equal(users_check_mailbox(longdom, &why), TERN_EINVAL);
}

/*
 * The point of the check: what `tern user add` accepts, RCPT TO can name
 * without quotes (the form its user lookup uses) and local delivery can
 * turn into a Maildir path. Checked over the tables and many generated
 * addresses.
 */
static void agrees_with_smtp_and_delivery(const char *addr)
{
	struct smtp_path p;
	char dir[4096];

	if (users_check_mailbox(addr, NULL) != TERN_OK)
		return;
	if (users_check_address(addr) != TERN_OK)
		fail_msg("'%s': accepted as a mailbox but not as a users file address", addr);
	if (!smtp_parse_mailbox(addr, strlen(addr), &p))
		fail_msg("'%s': accepted but the SMTP parser refuses it", addr);
	if (p.quoted)
		fail_msg("'%s': accepted but SMTP needs quotes for it", addr);
	if (maildir_path("/data", p.domain, p.local, dir, sizeof(dir)) != TERN_OK)
		fail_msg("'%s': accepted but local delivery cannot store it", addr);
}

static void test_check_mailbox_agrees_with_smtp_and_delivery(void **state)
{
	static const char alphabet[] = "aZ09.-_/+'\"\\ @#:;,<>[]!~\x01\x7f\xc3\xa9\xe2\x82\xac";
	uint32_t seed = 12345;
	char addr[40];

	for (size_t i = 0; i < sizeof(good_mailboxes) / sizeof(good_mailboxes[0]); i++)
		agrees_with_smtp_and_delivery(good_mailboxes[i]);
	for (int round = 0; round < 200000; round++) {
		size_t n = 1 + (seed >> 8) % 12, k = 0;

		for (size_t j = 0; j < n; j++) {
			seed = seed * 1103515245u + 12345u;
			addr[k++] = alphabet[(seed >> 16) % (sizeof(alphabet) - 1)];
		}
		/* most of them get a plausible domain, so the local part is what varies */
		if (seed & 1) {
			memcpy(addr + k, "@ex.test", 8);
			k += 8;
		}
		addr[k] = '\0';
		agrees_with_smtp_and_delivery(addr);
	}
}

static void test_add_refuses_what_cannot_receive_mail_but_del_still_works(void **state)
{
	struct fixture *f = *state;

	for (size_t i = 0; i < sizeof(bad_mailboxes) / sizeof(bad_mailboxes[0]); i++)
		if (users_file_add(f->path, bad_mailboxes[i], "pw") != TERN_EINVAL)
			fail_msg("'%s' added", bad_mailboxes[i]);
	assert_int_equal(access(f->path, F_OK), -1);
	/* an entry written by hand before the check can still be removed */
	write_file(f->path, "\"../../x\"@example.com:{PLAIN}pw\nalice@example.com:{PLAIN}pw\n",
	           0600);
	assert_int_equal(users_file_passwd(f->path, "\"../../x\"@example.com", "new"), TERN_OK);
	assert_int_equal(users_file_del(f->path, "\"../../x\"@example.com"), TERN_OK);
	assert_int_equal(users_file_add(f->path, "Bob.Smith+x@Example.com", "pw"), TERN_OK);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_all_schemes_check_right_and_wrong_passwords, setup,
	                                    teardown),
	    cmocka_unit_test(test_foreach_lists_lowercased_addresses_in_file_order),
	    cmocka_unit_test(test_locked_users_exist_but_never_authenticate),
	    cmocka_unit_test(test_bad_lines_are_reported_with_file_and_line_number),
	    cmocka_unit_test_setup_teardown(test_load_reports_path_and_line_of_a_bad_line, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_missing_file_is_an_empty_database, setup,
	                                    teardown),
	    cmocka_unit_test(test_hash_password_makes_verifiable_sha512_crypt),
	    cmocka_unit_test_setup_teardown(test_concurrent_adds_lose_no_user, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_file_edits_keep_the_mode_an_operator_set, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_file_edits_keep_other_lines_byte_for_byte, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_add_to_missing_file_creates_it_private, setup,
	                                    teardown),
	    cmocka_unit_test(test_add_after_last_line_without_newline_keeps_both_lines),
	    cmocka_unit_test_setup_teardown(test_file_edits_reject_bad_addresses_and_passwords,
	                                    setup, teardown),
	    cmocka_unit_test(test_check_mailbox_table),
	    cmocka_unit_test(test_check_mailbox_agrees_with_smtp_and_delivery),
	    cmocka_unit_test_setup_teardown(
	        test_add_refuses_what_cannot_receive_mail_but_del_still_works, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
