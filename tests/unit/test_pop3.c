/*
 * test_pop3.c — the POP3 module's pure parts and its Maildir logic
 * (src/pop3/): the command parser, the RETR/TOP encoder and the size it
 * reports, Maildir names (UIDL, W= sizes, flags), and a mailbox's lock,
 * listing and UPDATE state on a real directory.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/err.h"
#include "pop3/pop3.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------- parser */

struct parse_case {
	const char *line;
	bool ok;
	enum pop3_verb verb;
	uint32_t msg; /* when has_msg */
	bool has_msg;
	uint32_t lines;   /* TOP */
	const char *arg;  /* USER/PASS/AUTH argument, or NULL */
	const char *init; /* AUTH initial response, or NULL */
	const char *why;  /* on error */
};

static const struct parse_case parse_cases[] = {
    {"USER alice@example.test", true, POP3_USER, 0, false, 0, "alice@example.test", NULL, NULL},
    {"user Alice", true, POP3_USER, 0, false, 0, "Alice", NULL, NULL},
    {"USER  alice  ", true, POP3_USER, 0, false, 0, "alice", NULL, NULL},
    {"USER", false, POP3_USER, 0, false, 0, NULL, NULL, "user name expected"},
    {"USER a b", false, POP3_USER, 0, false, 0, NULL, NULL, "a user name has no spaces"},
    {"PASS secret with  spaces", true, POP3_PASS, 0, false, 0, "secret with  spaces", NULL, NULL},
    {"pass x", true, POP3_PASS, 0, false, 0, "x", NULL, NULL},
    {"PASS", false, POP3_PASS, 0, false, 0, NULL, NULL, "password expected"},
    {"PASS ", false, POP3_PASS, 0, false, 0, NULL, NULL, "password expected"},
    {"STAT", true, POP3_STAT, 0, false, 0, NULL, NULL, NULL},
    {"stat  \t", true, POP3_STAT, 0, false, 0, NULL, NULL, NULL},
    {"STAT 1", false, POP3_STAT, 0, false, 0, NULL, NULL, "too many arguments"},
    {"LIST", true, POP3_LIST, 0, false, 0, NULL, NULL, NULL},
    {"LIST 3", true, POP3_LIST, 3, true, 0, NULL, NULL, NULL},
    {"LIST 4294967295", true, POP3_LIST, 4294967295u, true, 0, NULL, NULL, NULL},
    {"LIST 4294967296", false, POP3_LIST, 0, false, 0, NULL, NULL, "invalid message number"},
    {"LIST 0", false, POP3_LIST, 0, false, 0, NULL, NULL, "invalid message number"},
    {"LIST -1", false, POP3_LIST, 0, false, 0, NULL, NULL, "invalid message number"},
    {"LIST +1", false, POP3_LIST, 0, false, 0, NULL, NULL, "invalid message number"},
    {"LIST 1x", false, POP3_LIST, 0, false, 0, NULL, NULL, "invalid message number"},
    {"LIST 1 2", false, POP3_LIST, 1, true, 0, NULL, NULL, "too many arguments"},
    {"UIDL 2", true, POP3_UIDL, 2, true, 0, NULL, NULL, NULL},
    {"RETR 1", true, POP3_RETR, 1, true, 0, NULL, NULL, NULL},
    {"RETR", false, POP3_RETR, 0, false, 0, NULL, NULL, "message number expected"},
    {"retr 007", true, POP3_RETR, 7, true, 0, NULL, NULL, NULL},
    {"DELE 12", true, POP3_DELE, 12, true, 0, NULL, NULL, NULL},
    {"TOP 1 10", true, POP3_TOP, 1, true, 10, NULL, NULL, NULL},
    {"TOP 1 0", true, POP3_TOP, 1, true, 0, NULL, NULL, NULL},
    {"TOP 1 99999999999999999999999999", true, POP3_TOP, 1, true, 4294967295u, NULL, NULL, NULL},
    {"TOP 1", false, POP3_TOP, 1, true, 0, NULL, NULL, "number of lines expected"},
    {"TOP 1 x", false, POP3_TOP, 1, true, 0, NULL, NULL, "invalid number of lines"},
    {"TOP 1 -2", false, POP3_TOP, 1, true, 0, NULL, NULL, "invalid number of lines"},
    {"AUTH", true, POP3_AUTH, 0, false, 0, "", NULL, NULL},
    {"AUTH PLAIN", true, POP3_AUTH, 0, false, 0, "PLAIN", NULL, NULL},
    {"AUTH PLAIN AGFsaWNlAHNlY3JldA==", true, POP3_AUTH, 0, false, 0, "PLAIN",
     "AGFsaWNlAHNlY3JldA==", NULL},
    {"AUTH PLAIN =", true, POP3_AUTH, 0, false, 0, "PLAIN", "=", NULL},
    {"AUTH PLAIN a b", false, POP3_AUTH, 0, false, 0, NULL, NULL, "too many arguments"},
    {"STLS", true, POP3_STLS, 0, false, 0, NULL, NULL, NULL},
    {"CAPA", true, POP3_CAPA, 0, false, 0, NULL, NULL, NULL},
    {"NOOP", true, POP3_NOOP, 0, false, 0, NULL, NULL, NULL},
    {"RSET", true, POP3_RSET, 0, false, 0, NULL, NULL, NULL},
    {"QUIT", true, POP3_QUIT, 0, false, 0, NULL, NULL, NULL},
    {"APOP mrose c4c9334bac560ecc979e58001b3e22fb", true, POP3_APOP, 0, false, 0, NULL, NULL, NULL},
    {"", false, POP3_UNKNOWN, 0, false, 0, NULL, NULL, "unknown command"},
    {"XY", false, POP3_UNKNOWN, 0, false, 0, NULL, NULL, "unknown command"},
    {"HELO there", false, POP3_UNKNOWN, 0, false, 0, NULL, NULL, "unknown command"},
    {"RETRIEVE 1", false, POP3_UNKNOWN, 0, false, 0, NULL, NULL, "unknown command"},
    {" RETR 1", false, POP3_UNKNOWN, 0, false, 0, NULL, NULL, "unknown command"},
};

static void test_parse_table(void **state)
{
	for (size_t i = 0; i < N(parse_cases); i++) {
		const struct parse_case *pc = &parse_cases[i];
		struct pop3_cmd c;
		const char *why = NULL;
		bool ok = pop3_parse_command(pc->line, strlen(pc->line), &c, &why);
		if (ok != pc->ok)
			fail_msg("'%s': ok=%d, want %d (%s)", pc->line, ok, pc->ok, why);
		if (c.verb != pc->verb)
			fail_msg("'%s': verb %d, want %d", pc->line, c.verb, pc->verb);
		if (!ok) {
			if (strcmp(why, pc->why) != 0)
				fail_msg("'%s': why '%s', want '%s'", pc->line, why, pc->why);
			continue;
		}
		assert_int_equal(c.has_msg, pc->has_msg);
		if (pc->has_msg)
			assert_int_equal(c.msg, pc->msg);
		assert_int_equal(c.lines, pc->lines);
		if (pc->arg) {
			assert_int_equal(c.arg_len, strlen(pc->arg));
			assert_memory_equal(c.arg, pc->arg, c.arg_len);
		}
		if (pc->init) {
			assert_non_null(c.initial);
			assert_int_equal(c.initial_len, strlen(pc->init));
			assert_memory_equal(c.initial, pc->init, c.initial_len);
		} else {
			assert_null(c.initial);
		}
	}
}

static void test_parse_binary_and_bounds(void **state)
{
	struct pop3_cmd c;
	const char *why;
	/* A NUL or another control byte in a name or password is refused. */
	assert_false(pop3_parse_command("USER a\0b", 8, &c, &why));
	assert_string_equal(why, "invalid user name");
	assert_false(pop3_parse_command("PASS a\x01z", 8, &c, &why));
	assert_string_equal(why, "invalid password");
	/* Arguments up to POP3_ARG_MAX bytes. */
	char line[POP3_ARG_MAX + 16];
	memcpy(line, "USER ", 5);
	memset(line + 5, 'a', POP3_ARG_MAX);
	assert_true(pop3_parse_command(line, 5 + POP3_ARG_MAX, &c, &why));
	assert_int_equal(c.arg_len, POP3_ARG_MAX);
	line[5 + POP3_ARG_MAX] = 'a';
	assert_false(pop3_parse_command(line, 6 + POP3_ARG_MAX, &c, &why));
	/* The parser never reads past len: the byte after it is not a digit. */
	assert_true(pop3_parse_command("RETR 12345", 6, &c, &why));
	assert_int_equal(c.msg, 1);
	assert_string_equal(pop3_verb_name(POP3_TOP), "TOP");
	assert_string_equal(pop3_verb_name(POP3_UNKNOWN), "?");
}

/* ------------------------------------------------------------ encoder */

static char *encode_all(const char *in, size_t len, bool top, uint32_t lines, size_t *outlen)
{
	struct tbuf out = TBUF_INIT(1 << 20);
	struct pop3_encoder e;
	pop3_encoder_init(&e, top, lines);
	assert_int_equal(pop3_encode(&e, in, len, &out), TERN_OK);
	assert_int_equal(pop3_encode_finish(&e, &out), TERN_OK);
	*outlen = out.len;
	return tbuf_steal(&out, outlen);
}

static void expect_encoding(const char *in, bool top, uint32_t lines, const char *want)
{
	size_t n;
	char *got = encode_all(in, strlen(in), top, lines, &n);
	if (n != strlen(want) || memcmp(got, want, n) != 0)
		fail_msg("encoding of '%s' (top=%d lines=%u):\n got  '%.*s'\n want '%s'", in, top,
		         lines, (int)n, got, want);
	free(got);
}

static void test_encode_lines_and_stuffing(void **state)
{
	expect_encoding("A: b\r\n\r\nbody\r\n", false, 0, "A: b\r\n\r\nbody\r\n.\r\n");
	/* bare LF becomes CRLF; a lone CR is content, as Dovecot sends it */
	expect_encoding("A: b\n\nx\ny\n", false, 0, "A: b\r\n\r\nx\r\ny\r\n.\r\n");
	expect_encoding("a\rb\r\n", false, 0, "a\rb\r\n.\r\n");
	/* every line starting with "." gets one more, the first one too */
	expect_encoding(".\r\n..\r\n.x\n", false, 0, "..\r\n...\r\n..x\r\n.\r\n");
	/* a "." after a lone CR does not start a line */
	expect_encoding("a\r.\r\n", false, 0, "a\r.\r\n.\r\n");
	/* a last line without its end gets one */
	expect_encoding("A: b\r\n\r\nno end", false, 0, "A: b\r\n\r\nno end\r\n.\r\n");
	expect_encoding("ends in CR\r", false, 0, "ends in CR\r\r\n.\r\n");
	/* an empty message is just the end marker */
	expect_encoding("", false, 0, ".\r\n");
	/* NUL bytes pass through */
	size_t n;
	char *got = encode_all("a\0b\n", 4, false, 0, &n);
	assert_int_equal(n, 8);
	assert_memory_equal(got, "a\0b\r\n.\r\n", 8);
	free(got);
}

static void test_encode_top(void **state)
{
	const char *msg = "H: 1\r\nH: 2\r\n\r\nb1\r\nb2\r\n.b3\r\n";
	expect_encoding(msg, true, 0, "H: 1\r\nH: 2\r\n\r\n.\r\n");
	expect_encoding(msg, true, 1, "H: 1\r\nH: 2\r\n\r\nb1\r\n.\r\n");
	expect_encoding(msg, true, 3, "H: 1\r\nH: 2\r\n\r\nb1\r\nb2\r\n..b3\r\n.\r\n");
	expect_encoding(msg, true, 100, "H: 1\r\nH: 2\r\n\r\nb1\r\nb2\r\n..b3\r\n.\r\n");
	/* LF-only messages find their header end too */
	expect_encoding("H: 1\n\nb1\nb2\n", true, 1, "H: 1\r\n\r\nb1\r\n.\r\n");
	/* no empty line: the whole message is header */
	expect_encoding("H: 1\r\nH: 2\r\n", true, 0, "H: 1\r\nH: 2\r\n.\r\n");
	/* a message starting with an empty line has an empty header */
	expect_encoding("\r\nb1\r\nb2\r\n", true, 1, "\r\nb1\r\n.\r\n");
}

/* Any split of the input into two chunks gives the same bytes as one. */
static void test_encode_chunk_boundaries(void **state)
{
	static const char *const msgs[] = {
	    "H: 1\r\n\r\n.a\r\n..\r\nz\r",
	    "x\r\r\n\n.\n\r.\r\n",
	    "H\n\n.\n.\n",
	};
	for (size_t k = 0; k < N(msgs); k++) {
		const char *m = msgs[k];
		size_t len = strlen(m);
		for (int top = 0; top < 2; top++) {
			size_t wn;
			char *want = encode_all(m, len, top, 1, &wn);
			for (size_t cut = 0; cut <= len; cut++) {
				struct tbuf out = TBUF_INIT(1 << 16);
				struct pop3_encoder e;
				pop3_encoder_init(&e, top, 1);
				assert_int_equal(pop3_encode(&e, m, cut, &out), TERN_OK);
				assert_int_equal(pop3_encode(&e, m + cut, len - cut, &out),
				                 TERN_OK);
				assert_int_equal(pop3_encode_finish(&e, &out), TERN_OK);
				if (out.len != wn || memcmp(out.data, want, wn) != 0)
					fail_msg("msg %zu top %d cut %zu differs", k, top, cut);
				tbuf_free(&out);
			}
			free(want);
		}
	}
}

/* What LIST reports is what RETR sends, before stuffing and the marker. */
static void test_size_matches_encoding(void **state)
{
	static const char *const msgs[] = {
	    "A: b\r\n\r\nbody\r\n",
	    "A: b\n\nx\ny\n",
	    "a\rb\r\n",
	    "x\r\r\n\n\n",
	    "\n",
	    "\r\n",
	    "abc",
	};
	for (size_t k = 0; k < N(msgs); k++) {
		const char *m = msgs[k];
		size_t len = strlen(m), n;
		bool prev = false;
		uint64_t size = len + pop3_count_bare_lf(m, len, &prev);
		char *enc = encode_all(m, len, false, 0, &n);
		/* no line starts with "." in these; drop ".\r\n" and a final CRLF we added */
		size_t body = n - 3;
		bool added = len > 0 && m[len - 1] != '\n';
		if (added)
			body -= 2;
		if (size != body)
			fail_msg("msg %zu: size %llu, encoded body %zu", k,
			         (unsigned long long)size, body);
		/* and chunked counting agrees with counting at once */
		for (size_t cut = 0; cut <= len; cut++) {
			bool pc = false;
			uint64_t extra = pop3_count_bare_lf(m, cut, &pc);
			extra += pop3_count_bare_lf(m + cut, len - cut, &pc);
			assert_int_equal(len + extra, size);
		}
		free(enc);
	}
}

/* ------------------------------------------------------------- names */

static void test_maildir_names(void **state)
{
	uint64_t v = 0;
	const char *n1 = "1700000000.M1P2.host,S=100,W=104:2,S";
	assert_int_equal(pop3_maildir_base_len(n1, strlen(n1)), strlen(n1) - 4);
	assert_int_equal(pop3_maildir_base_len("abc", 3), 3);
	assert_int_equal(pop3_maildir_base_len(":2,", 3), 0);
	assert_true(pop3_maildir_name_vsize(n1, strlen(n1), &v));
	assert_int_equal(v, 104);
	const char *n2 = "1700000000.Q123R0.host,S=255";
	assert_false(pop3_maildir_name_vsize(n2, strlen(n2), &v));
	assert_false(pop3_maildir_name_vsize("1.a,W=12x", 9, &v));
	assert_false(pop3_maildir_name_vsize("1.a,W=", 6, &v));
	assert_false(pop3_maildir_name_vsize("1.a:2,W=5", 9, &v)); /* info part: not a size */
	assert_true(pop3_maildir_name_vsize("1.a,W=7,X=1", 11, &v));
	assert_int_equal(v, 7);

	char out[64];
	assert_int_equal(pop3_maildir_add_flag("x:2,", 'S', out, sizeof(out)), TERN_OK);
	assert_string_equal(out, "x:2,S");
	assert_int_equal(pop3_maildir_add_flag("x:2,FT", 'S', out, sizeof(out)), TERN_OK);
	assert_string_equal(out, "x:2,FST");
	assert_int_equal(pop3_maildir_add_flag("x:2,T", 'A', out, sizeof(out)), TERN_OK);
	assert_string_equal(out, "x:2,AT");
	assert_int_equal(pop3_maildir_add_flag("x", 'S', out, sizeof(out)), TERN_OK);
	assert_string_equal(out, "x:2,S");
	assert_int_equal(pop3_maildir_add_flag("x:2,RS", 'S', out, sizeof(out)), TERN_EEXIST);
	assert_string_equal(out, "x:2,RS");
	assert_int_equal(pop3_maildir_add_flag("x:1,abc", 'S', out, sizeof(out)), TERN_EINVAL);
	assert_int_equal(pop3_maildir_add_flag("x:2", 'S', out, sizeof(out)), TERN_EINVAL);
	assert_int_equal(pop3_maildir_add_flag("x:2,", 's', out, sizeof(out)), TERN_EINVAL);
	assert_int_equal(pop3_maildir_add_flag("long-name:2,", 'S', out, 8), TERN_ELIMIT);
}

/* ----------------------------------------------------------- mailbox */

struct fixture {
	char dir[256]; /* the Maildir */
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	char base[] = "/tmp/tern-test-pop3-XXXXXX";
	if (!f || !mkdtemp(base)) {
		free(f);
		return -1;
	}
	snprintf(f->dir, sizeof(f->dir), "%s/md", base);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char base[256];
	snprintf(base, sizeof(base), "%s", f->dir);
	*strrchr(base, '/') = '\0';
	nftw(base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static void put(const struct fixture *f, const char *sub, const char *name, const char *data)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/%s", f->dir, sub);
	mkdir(f->dir, 0700);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/%s/%s", f->dir, sub, name);
	FILE *fp = fopen(p, "wb");
	assert_non_null(fp);
	fwrite(data, 1, strlen(data), fp);
	fclose(fp);
}

static bool exists(const struct fixture *f, const char *sub, const char *name)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/%s/%s", f->dir, sub, name);
	return access(p, F_OK) == 0;
}

static void write_lock(const struct fixture *f, const char *content, time_t age)
{
	char p[512];
	mkdir(f->dir, 0700);
	snprintf(p, sizeof(p), "%s/dovecot-pop3-session.lock", f->dir);
	FILE *fp = fopen(p, "w");
	assert_non_null(fp);
	fputs(content, fp);
	fclose(fp);
	if (age) {
		struct timespec ts[2] = {{time(NULL) - age, 0}, {time(NULL) - age, 0}};
		assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
	}
}

static void my_host(char *out, size_t n)
{
	assert_int_equal(gethostname(out, n), 0);
	out[n - 1] = '\0';
}

static void test_open_creates_and_locks(void **state)
{
	struct fixture *f = *state;
	struct pop3_mailbox *mb = NULL, *mb2 = NULL;
	int en;
	assert_int_equal(pop3_mailbox_open(f->dir, 0, &mb, &en), POP3_OPEN_OK);
	assert_int_equal(mb->n, 0);
	assert_int_equal(mb->total, 0);
	assert_true(exists(f, "cur", ""));
	assert_true(exists(f, "new", ""));
	assert_true(exists(f, "tmp", ""));
	/* the lock file is Dovecot's, holding "PID:HOSTNAME" */
	char p[512], buf[512], want[512], host[256];
	snprintf(p, sizeof(p), "%s/dovecot-pop3-session.lock", f->dir);
	FILE *fp = fopen(p, "r");
	assert_non_null(fp);
	size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
	fclose(fp);
	buf[n] = '\0';
	my_host(host, sizeof(host));
	snprintf(want, sizeof(want), "%ld:%s", (long)getpid(), host);
	assert_string_equal(buf, want);
	/* a second session of this process is refused */
	assert_int_equal(pop3_mailbox_open(f->dir, 0, &mb2, &en), POP3_OPEN_IN_USE);
	assert_null(mb2);
	pop3_mailbox_close(mb);
	assert_int_equal(access(p, F_OK), -1);
	/* once closed it can be opened again */
	assert_int_equal(pop3_mailbox_open(f->dir, 0, &mb2, &en), POP3_OPEN_OK);
	pop3_mailbox_close(mb2);
}

static void test_lock_rules(void **state)
{
	struct fixture *f = *state;
	struct pop3_mailbox *mb = NULL;
	char host[256], content[512];
	int en;
	my_host(host, sizeof(host));

	/* a live process of this host (our parent) holds it */
	snprintf(content, sizeof(content), "%ld:%s", (long)getppid(), host);
	write_lock(f, content, 0);
	assert_int_equal(pop3_mailbox_open(f->dir, 0, &mb, &en), POP3_OPEN_IN_USE);

	/* ... but not once it is untouched for more than 5 minutes */
	write_lock(f, content, 301);
	assert_int_equal(pop3_mailbox_open(f->dir, 0, &mb, &en), POP3_OPEN_OK);
	pop3_mailbox_close(mb);

	/* a dead process of this host: stale at once */
	pid_t child = fork();
	assert_true(child >= 0);
	if (child == 0)
		_exit(0);
	assert_int_equal(waitpid(child, NULL, 0), child);
	snprintf(content, sizeof(content), "%ld:%s", (long)child, host);
	write_lock(f, content, 0);
	assert_int_equal(pop3_mailbox_open(f->dir, 0, &mb, &en), POP3_OPEN_OK);
	pop3_mailbox_close(mb);

	/* our own PID without a session of ours: left by an earlier process */
	snprintf(content, sizeof(content), "%ld:%s", (long)getpid(), host);
	write_lock(f, content, 0);
	assert_int_equal(pop3_mailbox_open(f->dir, 0, &mb, &en), POP3_OPEN_OK);
	pop3_mailbox_close(mb);

	/* another host's lock, or an unreadable one, waits for the timeout */
	write_lock(f, "1:some-other-host.example", 0);
	assert_int_equal(pop3_mailbox_open(f->dir, 0, &mb, &en), POP3_OPEN_IN_USE);
	write_lock(f, "", 0);
	assert_int_equal(pop3_mailbox_open(f->dir, 0, &mb, &en), POP3_OPEN_IN_USE);
	write_lock(f, "", 400);
	assert_int_equal(pop3_mailbox_open(f->dir, 0, &mb, &en), POP3_OPEN_OK);
	/* touching keeps it fresh; closing removes only our own file */
	pop3_mailbox_touch(mb);
	pop3_mailbox_close(mb);
	assert_false(exists(f, "", "dovecot-pop3-session.lock"));
}

static void test_listing(void **state)
{
	struct fixture *f = *state;
	struct pop3_mailbox *mb = NULL;
	int en;
	put(f, "new", "1700000003.Q3R0.host,S=8", "c: 3\n\nz\n"); /* LF only: 8 + 3 */
	put(f, "cur", "1700000001.Q1R0.host,S=10:2,S", "a: 1\r\n\r\nx\r\n");
	put(f, "cur", "1700000002.M1P1.host,S=5,W=77:2,", "short"); /* W= is believed */
	put(f, "cur", ".hidden", "no");
	put(f, "cur", "1700000004.with\nnewline:2,", "no"); /* would split a UIDL line */
	put(f, "cur", "1700000004.with space:2,", "no");
	put(f, "new", ".tmpfile", "no");
	char p[512], t[512];
	snprintf(p, sizeof(p), "%s/cur/subdir", f->dir);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/cur/1700000000.link", f->dir);
	snprintf(t, sizeof(t), "%s/cur/1700000001.Q1R0.host,S=10:2,S", f->dir);
	assert_int_equal(symlink(t, p), 0);

	assert_int_equal(pop3_mailbox_open(f->dir, 0, &mb, &en), POP3_OPEN_OK);
	assert_int_equal(mb->n, 3);
	assert_string_equal(mb->msgs[0].file, "1700000001.Q1R0.host,S=10:2,S");
	assert_int_equal(mb->msgs[0].size, 11);
	assert_int_equal(mb->msgs[0].base_len, strlen("1700000001.Q1R0.host,S=10"));
	assert_string_equal(mb->msgs[1].file, "1700000002.M1P1.host,S=5,W=77:2,");
	assert_int_equal(mb->msgs[1].size, 77);
	/* moved from new/ to cur/ with ":2," as Dovecot does */
	assert_string_equal(mb->msgs[2].file, "1700000003.Q3R0.host,S=8:2,");
	assert_false(mb->msgs[2].in_new);
	assert_int_equal(mb->msgs[2].size, 11);
	assert_true(exists(f, "cur", "1700000003.Q3R0.host,S=8:2,"));
	assert_false(exists(f, "new", "1700000003.Q3R0.host,S=8"));
	assert_int_equal(mb->total, 11 + 77 + 11);

	/* a flag change by another client renames the file: still readable */
	char a[512], b[512];
	snprintf(a, sizeof(a), "%s/cur/1700000003.Q3R0.host,S=8:2,", f->dir);
	snprintf(b, sizeof(b), "%s/cur/1700000003.Q3R0.host,S=8:2,F", f->dir);
	assert_int_equal(rename(a, b), 0);
	int fd = pop3_mailbox_open_msg(mb, 2);
	assert_true(fd >= 0);
	char buf[32];
	assert_int_equal(read(fd, buf, sizeof(buf)), 8);
	close(fd);
	assert_string_equal(mb->msgs[2].file, "1700000003.Q3R0.host,S=8:2,F");
	/* an expunged one is ENOENT */
	snprintf(a, sizeof(a), "%s/cur/1700000001.Q1R0.host,S=10:2,S", f->dir);
	assert_int_equal(unlink(a), 0);
	assert_int_equal(pop3_mailbox_open_msg(mb, 0), -1);
	assert_int_equal(errno, ENOENT);
	pop3_mailbox_close(mb);
}

static void test_max_messages(void **state)
{
	struct fixture *f = *state;
	struct pop3_mailbox *mb = NULL;
	int en;
	put(f, "cur", "1700000009.c:2,", "3");
	put(f, "cur", "1700000001.a:2,", "1");
	put(f, "cur", "1700000005.b:2,", "2");
	assert_int_equal(pop3_mailbox_open(f->dir, 2, &mb, &en), POP3_OPEN_OK);
	assert_int_equal(mb->n, 2);
	assert_int_equal(mb->skipped, 1);
	assert_string_equal(mb->msgs[0].file, "1700000001.a:2,");
	assert_string_equal(mb->msgs[1].file, "1700000005.b:2,");
	pop3_mailbox_close(mb);
}

static void test_update_deletes_only_at_quit(void **state)
{
	struct fixture *f = *state;
	struct pop3_mailbox *mb = NULL;
	size_t removed;
	int en;
	put(f, "cur", "1700000001.a:2,", "one\r\n");
	put(f, "cur", "1700000002.b:2,", "two\r\n");
	put(f, "cur", "1700000003.c:2,", "three\r\n");
	put(f, "cur", "1700000004.d:2,", "four\r\n");

	/* a session that ends without QUIT deletes nothing */
	assert_int_equal(pop3_mailbox_open(f->dir, 0, &mb, &en), POP3_OPEN_OK);
	mb->msgs[0].deleted = true;
	pop3_mailbox_close(mb);
	assert_true(exists(f, "cur", "1700000001.a:2,"));

	assert_int_equal(pop3_mailbox_open(f->dir, 0, &mb, &en), POP3_OPEN_OK);
	assert_int_equal(mb->n, 4);
	mb->msgs[0].deleted = true;
	mb->msgs[1].seen = true;
	mb->msgs[3].deleted = true;
	/* another client expunged message 4 meanwhile: counted as removed */
	char p[512];
	snprintf(p, sizeof(p), "%s/cur/1700000004.d:2,", f->dir);
	assert_int_equal(unlink(p), 0);
	assert_int_equal(pop3_mailbox_update(mb, &removed, &en), TERN_OK);
	assert_int_equal(removed, 2);
	assert_false(exists(f, "cur", "1700000001.a:2,"));
	/* retrieved: the S flag, as Dovecot sets it */
	assert_false(exists(f, "cur", "1700000002.b:2,"));
	assert_true(exists(f, "cur", "1700000002.b:2,S"));
	assert_true(exists(f, "cur", "1700000003.c:2,"));
	assert_false(exists(f, "", "dovecot-pop3-session.lock"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_table),
	    cmocka_unit_test(test_parse_binary_and_bounds),
	    cmocka_unit_test(test_encode_lines_and_stuffing),
	    cmocka_unit_test(test_encode_top),
	    cmocka_unit_test(test_encode_chunk_boundaries),
	    cmocka_unit_test(test_size_matches_encoding),
	    cmocka_unit_test(test_maildir_names),
	    cmocka_unit_test_setup_teardown(test_open_creates_and_locks, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_lock_rules, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_listing, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_max_messages, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_update_deletes_only_at_quit, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
