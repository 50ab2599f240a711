/*
 * test_milter.c — the milter codec (src/policy/milter_codec.c): framing,
 * every encoder byte for byte, the reply decoder with a table of every reply
 * type, malformed and oversized packets; and the async client
 * (milter_client.c) negotiating with a milter played by a thread on a Unix
 * socket: offered version/actions/protocol, EOM modifications, verdicts.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <event2/event.h>

#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "policy/milter.h"

#define S(lit) (const uint8_t *)(lit), sizeof(lit) - 1

/* ------------------------------------------------------------ framing */

static void test_frame(void **state)
{
	uint8_t cmd;
	const uint8_t *d;
	size_t dl, used;
	const uint8_t ok[] = {0, 0, 0, 3, 'h', 'a', 'b', 'X'};
	assert_int_equal(milter_frame_parse(ok, sizeof(ok), 100, &cmd, &d, &dl, &used),
	                 MILTER_FRAME_OK);
	assert_int_equal(cmd, 'h');
	assert_int_equal(dl, 2);
	assert_memory_equal(d, "ab", 2);
	assert_int_equal(used, 7);
	for (size_t n = 0; n < 7; n++) /* every prefix needs more */
		assert_int_equal(milter_frame_parse(ok, n, 100, &cmd, &d, &dl, &used),
		                 MILTER_FRAME_MORE);
	const uint8_t zero[] = {0, 0, 0, 0, 'c'};
	assert_int_equal(milter_frame_parse(zero, sizeof(zero), 100, &cmd, &d, &dl, &used),
	                 MILTER_FRAME_BAD);
	const uint8_t huge[] = {0xff, 0xff, 0xff, 0xff, 'c'};
	assert_int_equal(
	    milter_frame_parse(huge, sizeof(huge), MILTER_PACKET_MAX, &cmd, &d, &dl, &used),
	    MILTER_FRAME_BAD);
	const uint8_t over[] = {0, 0, 0, 101};
	assert_int_equal(milter_frame_parse(over, sizeof(over), 100, &cmd, &d, &dl, &used),
	                 MILTER_FRAME_BAD);
	const uint8_t one[] = {0, 0, 0, 1, 'c'};
	assert_int_equal(milter_frame_parse(one, sizeof(one), 100, &cmd, &d, &dl, &used),
	                 MILTER_FRAME_OK);
	assert_int_equal(dl, 0);
}

/* ------------------------------------------------------------ encoders */

static void expect_pkt(struct tbuf *b, const void *want, size_t n)
{
	assert_int_equal(b->len, n);
	assert_memory_equal(b->data, want, n);
	tbuf_reset(b);
}

static void test_encoders(void **state)
{
	struct tbuf b = TBUF_INIT(1 << 22);
	assert_int_equal(milter_enc_optneg(&b, 6, 0x31, 0x1fff), TERN_OK);
	expect_pkt(&b,
	           "\0\0\0\x0d"
	           "O\0\0\0\x06\0\0\0\x31\0\0\x1f\xff",
	           17);

	struct sockaddr_in s4 = {.sin_family = AF_INET, .sin_port = htons(25)};
	inet_pton(AF_INET, "192.0.2.1", &s4.sin_addr);
	assert_int_equal(milter_enc_connect(&b, "mx.example", (struct sockaddr *)&s4), TERN_OK);
	expect_pkt(&b,
	           "\0\0\0\x19"
	           "Cmx.example\0"
	           "4\0\x19"
	           "192.0.2.1\0",
	           29);

	struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_port = htons(587)};
	inet_pton(AF_INET6, "2001:db8::1", &s6.sin6_addr);
	assert_int_equal(milter_enc_connect(&b, "h", (struct sockaddr *)&s6), TERN_OK);
	expect_pkt(&b,
	           "\0\0\0\x12"
	           "Ch\0"
	           "6\x02\x4b"
	           "2001:db8::1\0",
	           22);

	assert_int_equal(milter_enc_connect(&b, "h", NULL), TERN_OK);
	expect_pkt(&b,
	           "\0\0\0\x04"
	           "Ch\0U",
	           8);

	assert_int_equal(milter_enc_helo(&b, "client.test"), TERN_OK);
	expect_pkt(&b,
	           "\0\0\0\x0d"
	           "Hclient.test\0",
	           17);

	const char *args[] = {"SIZE=100", "BODY=8BITMIME"};
	assert_int_equal(milter_enc_envelope(&b, MILTER_CMD_MAIL, "a@b", args, 2), TERN_OK);
	expect_pkt(&b,
	           "\0\0\0\x1e"
	           "M<a@b>\0SIZE=100\0BODY=8BITMIME\0",
	           34);
	assert_int_equal(milter_enc_envelope(&b, MILTER_CMD_MAIL, "", NULL, 0), TERN_OK);
	expect_pkt(&b,
	           "\0\0\0\x04"
	           "M<>\0",
	           8);
	assert_int_equal(milter_enc_envelope(&b, MILTER_CMD_RCPT, "x@y", NULL, 0), TERN_OK);
	expect_pkt(&b,
	           "\0\0\0\x07"
	           "R<x@y>\0",
	           11);

	assert_int_equal(milter_enc_header(&b, "Subject", "hi\n there"), TERN_OK);
	expect_pkt(&b,
	           "\0\0\0\x13"
	           "LSubject\0hi\n there\0",
	           23);

	const char *n[] = {"i", "{mail_addr}"}, *v[] = {"ABC", "a@b"};
	assert_int_equal(milter_enc_macros(&b, 'M', n, v, 2), TERN_OK);
	expect_pkt(&b,
	           "\0\0\0\x18"
	           "DMi\0ABC\0{mail_addr}\0a@b\0",
	           28);

	assert_int_equal(milter_enc_packet(&b, MILTER_CMD_BODYEOB, NULL, 0), TERN_OK);
	expect_pkt(&b,
	           "\0\0\0\x01"
	           "E",
	           5);

	/* A body chunk beyond a packet's limit is refused, and out is unchanged. */
	char *big = calloc(1, MILTER_PACKET_MAX + 1);
	assert_non_null(big);
	assert_int_equal(milter_enc_packet(&b, 'B', big, MILTER_PACKET_MAX + 1), TERN_EINVAL);
	assert_int_equal(b.len, 0);
	free(big);
	/* A full buffer: TERN_ELIMIT, nothing half-written. */
	struct tbuf small = TBUF_INIT(8);
	assert_int_equal(milter_enc_helo(&small, "a-long-name"), TERN_ELIMIT);
	assert_int_equal(small.len, 0);
	tbuf_free(&small);
	tbuf_free(&b);
}

/* ------------------------------------------------------------ decoder */

struct dcase {
	uint8_t cmd;
	const char *data;
	size_t len;
	int rc;
	enum milter_reply_kind kind;
	uint32_t index;
	unsigned code;
	const char *name, *value;
};

#define OK(c, d, k)                                                                                \
	{                                                                                          \
		c, d, sizeof(d) - 1, TERN_OK, k, 0, 0, NULL, NULL                                  \
	}
#define BAD(c, d)                                                                                  \
	{                                                                                          \
		c, d, sizeof(d) - 1, TERN_ESYNTAX, 0, 0, 0, NULL, NULL                             \
	}

static const struct dcase dcases[] = {
    OK('a', "", MILTER_R_ACCEPT),
    OK('c', "", MILTER_R_CONTINUE),
    OK('r', "", MILTER_R_REJECT),
    OK('t', "", MILTER_R_TEMPFAIL),
    OK('d', "", MILTER_R_DISCARD),
    OK('p', "", MILTER_R_PROGRESS),
    OK('s', "", MILTER_R_SKIP),
    OK('4', "", MILTER_R_SHUTDOWN),
    OK('f', "", MILTER_R_SHUTDOWN),
    OK('c', "\0", MILTER_R_CONTINUE), /* NUL padding tolerated */
    BAD('c', "x"),
    BAD('Z', ""),
    BAD('\0', ""),
    {'y', "554 5.7.1 Spam\0", sizeof("554 5.7.1 Spam\0") - 1, TERN_OK, MILTER_R_REPLYCODE, 0, 554,
     NULL, "554 5.7.1 Spam"},
    {'y', "421-a\r\n421 b\0", sizeof("421-a\r\n421 b\0") - 1, TERN_OK, MILTER_R_REPLYCODE, 0, 421,
     NULL, "421-a\r\n421 b"},
    BAD('y', "250 ok\0"),
    BAD('y', "55 x\0"),
    BAD('y', "5x0 x\0"),
    BAD('y', "550x\0"),
    BAD('y', "550 \x01\0"),
    BAD('y', "550 text"),   /* no NUL */
    BAD('y', "550 a\0b\0"), /* trailing data */
    BAD('y', ""),
    {'h', "X-Spam\0Yes\0", sizeof("X-Spam\0Yes\0") - 1, TERN_OK, MILTER_R_ADDHEADER, 0, 0, "X-Spam",
     "Yes"},
    {'h', "X\0\0", sizeof("X\0\0") - 1, TERN_OK, MILTER_R_ADDHEADER, 0, 0, "X", ""},
    {'h', "X\0a\n\tb\0", sizeof("X\0a\n\tb\0") - 1, TERN_OK, MILTER_R_ADDHEADER, 0, 0, "X",
     "a\n\tb"},
    {'h', "X\0a\r\n b\0", sizeof("X\0a\r\n b\0") - 1, TERN_OK, MILTER_R_ADDHEADER, 0, 0, "X",
     "a\r\n b"},
    BAD('h', "X\0a\r\nBcc: x\0"), /* a new header smuggled in */
    BAD('h', "X\0a\n\0"),         /* a line end at the very end */
    BAD('h', "X\0a\rb\0"),        /* a bare CR */
    BAD('h', "X\0a\n\nb\0"),      /* an empty line: end of the header block */
    BAD('h', "X Y\0v\0"),
    BAD('h', "X:\0v\0"),
    BAD('h', "\0v\0"),
    BAD('h', "X\0v"),
    BAD('h', "X\0v\0extra"),
    BAD('h', "X"),
    {'i', "\0\0\0\x02Received\0by x\0", sizeof("\0\0\0\x02Received\0by x\0") - 1, TERN_OK,
     MILTER_R_INSHEADER, 2, 0, "Received", "by x"},
    {'m', "\0\0\0\x01Subject\0\0", sizeof("\0\0\0\x01Subject\0\0") - 1, TERN_OK, MILTER_R_CHGHEADER,
     1, 0, "Subject", ""},
    {'m', "\x7f\xff\xff\xffS\0v\0", sizeof("\x7f\xff\xff\xffS\0v\0") - 1, TERN_OK,
     MILTER_R_CHGHEADER, 0x7fffffff, 0, "S", "v"},
    BAD('m', "\0\0\0"),
    BAD('i', "\0\0\0\x01"),
    {'q', "virus\0", sizeof("virus\0") - 1, TERN_OK, MILTER_R_QUARANTINE, 0, 0, NULL, "virus"},
    BAD('q', "virus"),
    {'+', "<a@b>\0", sizeof("<a@b>\0") - 1, TERN_OK, MILTER_R_ADDRCPT, 0, 0, NULL, "<a@b>"},
    {'2', "<a@b>\0NOTIFY=NEVER\0", sizeof("<a@b>\0NOTIFY=NEVER\0") - 1, TERN_OK, MILTER_R_ADDRCPT,
     0, 0, NULL, "<a@b>"},
    BAD('+', "<a@b>\0x\0"),
    {'-', "<a@b>\0", sizeof("<a@b>\0") - 1, TERN_OK, MILTER_R_DELRCPT, 0, 0, NULL, "<a@b>"},
    {'e', "<a@b>\0", sizeof("<a@b>\0") - 1, TERN_OK, MILTER_R_CHGFROM, 0, 0, NULL, "<a@b>"},
    {'b', "new\r\nbody", sizeof("new\r\nbody") - 1, TERN_OK, MILTER_R_REPLBODY, 0, 0, NULL, NULL},
    BAD('O', "\0\0\0\x06\0\0\0\0"),
};

static void test_decode_table(void **state)
{
	for (size_t i = 0; i < sizeof(dcases) / sizeof(dcases[0]); i++) {
		const struct dcase *c = &dcases[i];
		struct milter_reply r;
		int rc = milter_reply_decode(c->cmd, (const uint8_t *)c->data, c->len, &r);
		if (rc != c->rc)
			fail_msg("case %zu ('%c'): rc %d, want %d", i, c->cmd, rc, c->rc);
		if (rc != TERN_OK)
			continue;
		if (r.kind != c->kind)
			fail_msg("case %zu: kind %s", i, milter_reply_kind_name(r.kind));
		assert_int_equal(r.index, c->index);
		assert_int_equal(r.code, c->code);
		if (c->name) {
			assert_int_equal(r.name_len, strlen(c->name));
			assert_memory_equal(r.name, c->name, r.name_len);
		}
		if (c->value) {
			assert_int_equal(r.value_len, strlen(c->value));
			assert_memory_equal(r.value, c->value, r.value_len);
		}
	}
}

static void test_decode_optneg(void **state)
{
	struct milter_reply r;
	const char d[] = "\0\0\0\x06\0\0\0\x11\0\0\x04\x00"
	                 "\0\0\0\x01{x}\0";
	assert_int_equal(milter_reply_decode('O', (const uint8_t *)d, sizeof(d) - 1, &r), TERN_OK);
	assert_int_equal(r.kind, MILTER_R_OPTNEG);
	assert_int_equal(r.version, 6);
	assert_int_equal(r.actions, 0x11);
	assert_int_equal(r.protocol, 0x400);
}

static void test_decode_oversized_header(void **state)
{
	size_t n = MILTER_HDR_VALUE_MAX + 1;
	uint8_t *d = malloc(2 + n + 1);
	assert_non_null(d);
	memcpy(d, "X\0", 2);
	memset(d + 2, 'a', n);
	d[2 + n] = 0;
	struct milter_reply r;
	assert_int_equal(milter_reply_decode('h', d, 2 + n + 1, &r), TERN_ESYNTAX);
	/* one byte shorter fits */
	d[2 + n - 1] = 0;
	assert_int_equal(milter_reply_decode('h', d, 2 + n, &r), TERN_OK);
	free(d);

	char name[MILTER_HDR_NAME_MAX + 4];
	memset(name, 'N', sizeof(name));
	name[MILTER_HDR_NAME_MAX + 1] = 0;
	name[MILTER_HDR_NAME_MAX + 2] = 0;
	assert_int_equal(milter_reply_decode('h', (uint8_t *)name, MILTER_HDR_NAME_MAX + 3, &r),
	                 TERN_ESYNTAX);
}

static void test_spec_and_action(void **state)
{
	assert_int_equal(milter_spec_check("inet:127.0.0.1:11332"), TERN_OK);
	assert_int_equal(milter_spec_check("inet:[::1]:11332"), TERN_OK);
	assert_int_equal(milter_spec_check("inet:localhost:11332"), TERN_OK);
	assert_int_equal(milter_spec_check("unix:/run/rspamd/milter.sock"), TERN_OK);
	const char *bad[] = {"",
	                     "inet:",
	                     "inet:127.0.0.1",
	                     "inet:127.0.0.1:0",
	                     "inet:127.0.0.1:65536",
	                     "inet:127.0.0.1:x",
	                     "inet:mail.example:25",
	                     "inet:[::1]",
	                     "unix:",
	                     "unix:relative",
	                     "tcp:1.2.3.4:5",
	                     "127.0.0.1:25"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (milter_spec_check(bad[i]) == TERN_OK)
			fail_msg("'%s' accepted", bad[i]);
	enum milter_action a;
	assert_int_equal(milter_action_parse("tempfail", &a), TERN_OK);
	assert_int_equal(a, MILTER_TEMPFAIL);
	assert_int_equal(milter_action_parse("accept", &a), TERN_OK);
	assert_int_equal(a, MILTER_ACCEPT);
	assert_int_equal(milter_action_parse("reject", &a), TERN_OK);
	assert_int_equal(a, MILTER_REJECT);
	assert_int_equal(milter_action_parse("discard", &a), TERN_EINVAL);
	assert_int_equal(milter_action_parse("continue", &a), TERN_EINVAL);
}

/* ------------------------------------------------------------ the client */

struct fake {
	int lfd;
	uint32_t offered[3];
	uint8_t replies_eom[512];
	size_t replies_eom_len;
	char cmds[64];
	size_t n_cmds;
};

static int read_exact(int fd, void *p, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, (char *)p + got, n - got);
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 0;
}

static void put(struct tbuf *b, char cmd, const void *d, size_t n)
{
	assert_int_equal(milter_enc_packet(b, (uint8_t)cmd, d, n), TERN_OK);
}

/* The milter: negotiates (no HELO, no reply to headers), answers CONTINUE,
 * and at end of message the scripted replies. */
static void *fake_run(void *arg)
{
	struct fake *f = arg;
	int c = accept(f->lfd, NULL, NULL);
	if (c < 0)
		return NULL;
	for (;;) {
		uint8_t h[4];
		if (read_exact(c, h, 4) < 0)
			break;
		uint32_t n =
		    ((uint32_t)h[0] << 24) | ((uint32_t)h[1] << 16) | ((uint32_t)h[2] << 8) | h[3];
		uint8_t *d = malloc(n);
		if (!d || read_exact(c, d, n) < 0) {
			free(d);
			break;
		}
		char cmd = (char)d[0];
		if (f->n_cmds < sizeof(f->cmds) - 1)
			f->cmds[f->n_cmds++] = cmd;
		struct tbuf out = TBUF_INIT(4096);
		if (cmd == 'O') {
			for (int i = 0; i < 3; i++) {
				uint32_t v;
				memcpy(&v, d + 1 + 4 * i, 4);
				f->offered[i] = ntohl(v);
			}
			assert_int_equal(milter_enc_optneg(&out, 6,
			                                   MILTER_ACT_ADDHDRS | MILTER_ACT_CHGHDRS,
			                                   MILTER_P_NOHELO | MILTER_P_NR_HDR),
			                 TERN_OK);
		} else if (cmd == 'E') {
			tbuf_append(&out, f->replies_eom, f->replies_eom_len);
		} else if (cmd != 'D' && cmd != 'L' && cmd != 'A' && cmd != 'Q') {
			put(&out, 'c', NULL, 0);
		}
		free(d);
		if (out.len && write(c, out.data, out.len) != (ssize_t)out.len) {
			tbuf_free(&out);
			break;
		}
		tbuf_free(&out);
		if (cmd == 'Q')
			break;
	}
	close(c);
	return NULL;
}

struct drive {
	struct event_base *base;
	struct milter_client *mc;
	int step;
	struct milter_verdict last;
	char mods[1024];
};

static void on_step(void *arg, const struct milter_verdict *v)
{
	struct drive *d = arg;
	d->last = *v;
	if (v->action != MILTER_CONTINUE || d->step == 7) {
		for (size_t i = 0; i < v->n_mods; i++) {
			size_t l = strlen(d->mods);
			snprintf(d->mods + l, sizeof(d->mods) - l, "%d:%u:%s:%s|", v->mods[i].kind,
			         v->mods[i].index, v->mods[i].name, v->mods[i].value);
		}
		event_base_loopbreak(d->base);
		return;
	}
	switch (++d->step) {
	case 1:
		milter_step_helo(d->mc, "client.test");
		break;
	case 2:
		milter_step_mail(d->mc, "a@b", NULL, 0);
		break;
	case 3:
		milter_step_rcpt(d->mc, "c@d", NULL, 0);
		break;
	case 4:
		milter_step_header(d->mc, "Subject", " hi");
		break;
	case 5:
		milter_step_eoh(d->mc);
		break;
	case 6:
		milter_step_body(d->mc, "x\r\n", 3);
		break;
	case 7:
		milter_step_eom(d->mc);
		break;
	}
}

static void run_client(struct fake *f, struct drive *d, const char *path)
{
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, fake_run, f), 0);
	char spec[200];
	snprintf(spec, sizeof(spec), "unix:%s", path);
	struct milter_opts o = {.spec = spec,
	                        .default_action = MILTER_TEMPFAIL,
	                        .command_timeout_ms = 10000,
	                        .eom_timeout_ms = 10000};
	d->base = event_base_new();
	d->mc = milter_client_new(d->base, &o, on_step, d);
	assert_non_null(d->mc);
	milter_step_connect(d->mc, "client.test", NULL);
	event_base_dispatch(d->base);
	milter_client_free(d->mc);
	event_base_free(d->base);
	pthread_join(th, NULL);
}

static int listen_unix(char *path, size_t n)
{
	snprintf(path, n, "/tmp/tern-test-milter-%d.sock", (int)getpid());
	unlink(path);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un su = {.sun_family = AF_UNIX};
	snprintf(su.sun_path, sizeof(su.sun_path), "%s", path);
	assert_int_equal(bind(fd, (struct sockaddr *)&su, sizeof(su)), 0);
	assert_int_equal(listen(fd, 1), 0);
	return fd;
}

static void test_client_negotiation_and_eom(void **state)
{
	char path[108];
	struct fake f = {0};
	f.lfd = listen_unix(path, sizeof(path));
	struct tbuf e = TBUF_INIT(sizeof(f.replies_eom));
	assert_int_equal(milter_enc_packet(&e, 'h', "X-Scan\0clean\0", 13), TERN_OK);
	assert_int_equal(milter_enc_packet(&e, 'm', "\0\0\0\0Subject\0[x] hi\0", 19), TERN_OK);
	assert_int_equal(milter_enc_packet(&e, 'y', "550 nope\0", 9), TERN_OK);
	memcpy(f.replies_eom, e.data, e.len);
	f.replies_eom_len = e.len;
	tbuf_free(&e);

	struct drive d = {0};
	run_client(&f, &d, path);
	close(f.lfd);
	unlink(path);
	assert_int_equal(f.offered[0], MILTER_VERSION);
	assert_int_equal(f.offered[1], MILTER_OFFER_ACTIONS);
	assert_int_equal(f.offered[2], MILTER_OFFER_PROTOCOL);
	/* macros (D) before CONNECT, MAIL, RCPT; no HELO (NOHELO); a header
	 * without a reply (NR_HDR); no macro at EOM without a queue id; QUIT */
	assert_string_equal(f.cmds, "ODCDMDRLNBEQ");
	assert_int_equal(d.step, 7);
	assert_int_equal(d.last.action, MILTER_REJECT);
	assert_false(d.last.failed);
	assert_string_equal(d.last.reply, "550 5.7.1 nope");
	/* CHGHEADER index 0 is read as 1, as sendmail does */
	assert_string_equal(d.mods, "0:0:X-Scan:clean|2:1:Subject:[x] hi|");
}

static void test_client_down_gets_default(void **state)
{
	char path[108];
	snprintf(path, sizeof(path), "/tmp/tern-test-milter-none-%d.sock", (int)getpid());
	unlink(path);
	char spec[200];
	snprintf(spec, sizeof(spec), "unix:%s", path);
	struct drive d = {0};
	struct milter_opts o = {.spec = spec, .default_action = MILTER_REJECT};
	d.base = event_base_new();
	d.mc = milter_client_new(d.base, &o, on_step, &d);
	milter_step_connect(d.mc, NULL, NULL);
	event_base_dispatch(d.base);
	assert_int_equal(d.last.action, MILTER_REJECT);
	assert_true(d.last.failed);
	assert_string_equal(d.last.reply, "550 5.7.1 Message rejected by content filter");
	milter_client_free(d.mc);
	event_base_free(d.base);
}

/* ------------------------------------------------------------ config */

static struct tern_config *load(const char *listener_extra, char *err, size_t errlen)
{
	char text[1024];
	snprintf(text, sizeof(text),
	         "listen { mx { address = \"127.0.0.1:2525\"; profile = \"mx\"; %s } }\n",
	         listener_extra);
	return conf_load_string(text, strlen(text), "test.conf", err, errlen);
}

static void test_config_keys(void **state)
{
	char err[512];
	struct tern_config *c = load("", err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->listeners[0].n_milters, 0);
	assert_int_equal(c->listeners[0].milter_default_action, CONF_MILTER_TEMPFAIL);
	assert_int_equal(c->listeners[0].milter_timeout, 30);
	assert_int_equal(c->listeners[0].milter_eom_timeout, 300);
	conf_unref(c);

	c = load(
	    "milters = [\"inet:127.0.0.1:1\"]; milter_timeout = 5s; milter_eom_timeout = 2min;",
	    err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->listeners[0].milter_timeout, 5);
	assert_int_equal(c->listeners[0].milter_eom_timeout, 120);
	conf_unref(c);

	c = load("milters = [\"inet:127.0.0.1:11332\", \"unix:/run/Milter.sock\"]; "
	         "milter_default_action = \"reject\";",
	         err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->listeners[0].n_milters, 2);
	assert_string_equal(c->listeners[0].milters[0], "inet:127.0.0.1:11332");
	assert_string_equal(c->listeners[0].milters[1], "unix:/run/Milter.sock"); /* case kept */
	assert_int_equal(c->listeners[0].milter_default_action, CONF_MILTER_REJECT);
	conf_unref(c);

	c = load("milters = \"inet:[::1]:11332\"; milter_default_action = \"accept\";", err,
	         sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->listeners[0].n_milters, 1);
	assert_int_equal(c->listeners[0].milter_default_action, CONF_MILTER_ACCEPT);
	conf_unref(c);

	const char *bad[] = {"milters = [\"inet:mail.example:25\"];",
	                     "milters = [1];",
	                     "milters = [\"inet:127.0.0.1\"];",
	                     "milter_default_action = \"discard\";",
	                     "milter_default_action = 1;",
	                     "milter_timeout = 0;",
	                     "milter_timeout = \"soon\";",
	                     "milter_eom_timeout = 2h;",
	                     "milter = [\"inet:127.0.0.1:1\"];"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		c = load(bad[i], err, sizeof(err));
		if (c)
			fail_msg("accepted: %s", bad[i]);
		assert_non_null(strstr(err, "listen.mx"));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_frame),
	    cmocka_unit_test(test_encoders),
	    cmocka_unit_test(test_decode_table),
	    cmocka_unit_test(test_decode_optneg),
	    cmocka_unit_test(test_decode_oversized_header),
	    cmocka_unit_test(test_spec_and_action),
	    cmocka_unit_test(test_client_negotiation_and_eom),
	    cmocka_unit_test(test_client_down_gets_default),
	    cmocka_unit_test(test_config_keys),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
