/*
 * test_wire_in.c — a socket bufferevent read with one recv per event
 * (src/smtp/wire_in.c): every byte reaches the input once and in order,
 * whether it comes one byte at a time or in a burst larger than one read;
 * nothing is read while reading is disabled or past the read high
 * watermark (what lets STARTTLS hand over a socket with nothing read
 * ahead); end of stream, a reset and a read timeout reach the event
 * callback as libevent's own reader reports them; and the read callback
 * may free the bufferevent.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "core/err.h"
#include "smtp/wire_in.h"

struct pair {
	struct event_base *base;
	struct bufferevent *bev;
	int peer;
	int reads;       /* read callbacks */
	short what;      /* the last event callback's flags */
	size_t at_event; /* input length when it came */
	bool free_in_read;
	bool take_line;   /* the read callback takes one line, then stops reading */
	bool take_all;    /* the read callback takes everything into got */
	size_t most_seen; /* the most input the read callback ever saw */
	char got[512];
	size_t n_got;
};

static void on_read(struct bufferevent *bev, void *arg)
{
	struct pair *p = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	p->reads++;
	if (evbuffer_get_length(in) > p->most_seen)
		p->most_seen = evbuffer_get_length(in);
	if (p->take_line) {
		/* as a session handling STARTTLS: the line, then no more reading */
		size_t n = 0;
		char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF_STRICT);
		if (line) {
			assert_true(n < sizeof(p->got));
			memcpy(p->got, line, n);
			p->n_got = n;
			free(line);
			bufferevent_disable(bev, EV_READ);
		}
	}
	if (p->take_all) {
		int r = evbuffer_remove(in, p->got + p->n_got, sizeof(p->got) - p->n_got);
		assert_true(r >= 0);
		p->n_got += (size_t)r;
	}
	if (p->free_in_read) {
		bufferevent_free(bev);
		p->bev = NULL;
	}
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct pair *p = arg;
	p->what = what;
	p->at_event = evbuffer_get_length(bufferevent_get_input(bev));
}

static void pair_attach(struct pair *p, int fd, int peer)
{
	assert_int_equal(evutil_make_socket_nonblocking(fd), 0);
	p->base = event_base_new();
	assert_non_null(p->base);
	p->bev = bufferevent_socket_new(p->base, fd, BEV_OPT_CLOSE_ON_FREE);
	assert_non_null(p->bev);
	bufferevent_setcb(p->bev, on_read, NULL, on_event, p);
	assert_int_equal(wire_in_attach(p->bev), TERN_OK);
	bufferevent_enable(p->bev, EV_READ | EV_WRITE);
	p->peer = peer;
}

static void pair_open(struct pair *p)
{
	int sv[2];
	memset(p, 0, sizeof(*p));
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	pair_attach(p, sv[0], sv[1]);
}

/* A TCP connection over loopback (a reset needs TCP). */
static void pair_open_tcp(struct pair *p)
{
	memset(p, 0, sizeof(*p));
	int l = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(l >= 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(l, 1), 0);
	assert_int_equal(getsockname(l, (struct sockaddr *)&a, &alen), 0);
	int c = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(c >= 0);
	assert_int_equal(connect(c, (struct sockaddr *)&a, sizeof(a)), 0);
	int s = accept(l, NULL, NULL);
	assert_true(s >= 0);
	close(l);
	pair_attach(p, s, c);
}

static void pair_close(struct pair *p)
{
	if (p->bev)
		bufferevent_free(p->bev);
	event_base_free(p->base);
	if (p->peer >= 0)
		close(p->peer);
}

/* Runs the loop until cond or a bound of turns (each waits ≤ 100 ms for an event). */
#define RUN_UNTIL(p, cond)                                                                         \
	do {                                                                                       \
		for (int i_ = 0; i_ < 200 && !(cond); i_++)                                        \
			event_base_loop((p)->base, EVLOOP_ONCE);                                   \
	} while (0)

static size_t in_len(struct pair *p)
{
	return evbuffer_get_length(bufferevent_get_input(p->bev));
}

static void command_in_one_byte_writes(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	const char *cmd = "EHLO client.example\r\n";
	size_t n = strlen(cmd);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(send(p.peer, cmd + i, 1, 0), 1);
		RUN_UNTIL(&p, in_len(&p) == i + 1);
		assert_int_equal(in_len(&p), i + 1);
	}
	assert_int_equal(p.reads, (int)n); /* a callback for every byte, as it came */
	char got[64];
	assert_int_equal(evbuffer_remove(bufferevent_get_input(p.bev), got, sizeof(got)), (int)n);
	assert_memory_equal(got, cmd, n);
	assert_int_equal(p.what, 0); /* no event */
	pair_close(&p);
}

static void burst_larger_than_one_read_arrives_whole_in_order(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	int sz = 1 << 20;
	assert_int_equal(setsockopt(p.peer, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)), 0);
	size_t n = 300 * 1024; /* more than one 64 KiB read */
	char *big = malloc(n), *got = malloc(n);
	assert_non_null(big);
	assert_non_null(got);
	for (size_t i = 0; i < n; i++)
		big[i] = (char)('a' + (i * 7) % 26);
	size_t sent = 0;
	for (int k = 0; k < 10000 && sent < n; k++) {
		ssize_t r = send(p.peer, big + sent, n - sent, MSG_DONTWAIT);
		if (r > 0)
			sent += (size_t)r;
		event_base_loop(p.base, EVLOOP_NONBLOCK);
	}
	assert_int_equal(sent, n);
	RUN_UNTIL(&p, in_len(&p) == n);
	assert_int_equal(in_len(&p), n);
	assert_true(p.reads >= 5); /* 300 KiB: at least five 64 KiB reads */
	assert_int_equal(evbuffer_remove(bufferevent_get_input(p.bev), got, n), (int)n);
	assert_memory_equal(got, big, n);
	free(big);
	free(got);
	pair_close(&p);
}

static void nothing_read_past_high_watermark_or_while_disabled(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	p.take_line = true;
	bufferevent_setwatermark(p.bev, EV_READ, 0, 10);
	assert_int_equal(send(p.peer, "STARTTLS\r\nEHLO smuggled\r\n", 25, 0), 25);
	RUN_UNTIL(&p, p.n_got > 0);
	assert_int_equal(p.n_got, 8);
	assert_memory_equal(p.got, "STARTTLS", 8);
	for (int i = 0; i < 5; i++)
		event_base_loop(p.base, EVLOOP_NONBLOCK);
	/* Read up to the watermark, never past it; then nothing while reading
	 * is off: what the client sent after the line is still in the socket. */
	assert_int_equal(p.most_seen, 10);
	assert_int_equal(in_len(&p), 0);
	char rest[32];
	assert_int_equal(recv(bufferevent_getfd(p.bev), rest, sizeof(rest), MSG_DONTWAIT), 15);
	assert_memory_equal(rest, "EHLO smuggled\r\n", 15);
	/* Enabled again: reading resumes. */
	p.take_line = false;
	bufferevent_setwatermark(p.bev, EV_READ, 0, 0);
	bufferevent_enable(p.bev, EV_READ);
	assert_int_equal(send(p.peer, "QUIT\r\n", 6, 0), 6);
	RUN_UNTIL(&p, in_len(&p) == 6);
	assert_int_equal(in_len(&p), 6);
	pair_close(&p);
}

static void watermark_suspends_then_resumes_when_drained(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	p.take_all = true;
	bufferevent_setwatermark(p.bev, EV_READ, 0, 100);
	char msg[250];
	for (size_t i = 0; i < sizeof(msg); i++)
		msg[i] = (char)('0' + i % 10);
	assert_int_equal(send(p.peer, msg, sizeof(msg), 0), (ssize_t)sizeof(msg));
	RUN_UNTIL(&p, p.n_got == sizeof(msg));
	assert_int_equal(p.n_got, sizeof(msg));
	assert_memory_equal(p.got, msg, sizeof(msg));
	assert_int_equal(p.most_seen, 100); /* in steps of the watermark, not more */
	assert_true(p.reads >= 3);
	pair_close(&p);
}

static void eof_after_the_data(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	assert_int_equal(send(p.peer, "QUIT\r\n", 6, 0), 6);
	close(p.peer);
	p.peer = -1;
	RUN_UNTIL(&p, p.what != 0);
	assert_int_equal(p.what, BEV_EVENT_READING | BEV_EVENT_EOF);
	assert_int_equal(p.at_event, 6); /* the data first, then the end */
	assert_true(p.reads >= 1);
	pair_close(&p);
}

static void reset_is_a_read_error(void **state)
{
	(void)state;
	struct pair p;
	pair_open_tcp(&p);
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	assert_int_equal(setsockopt(p.peer, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
	close(p.peer); /* RST */
	p.peer = -1;
	RUN_UNTIL(&p, p.what != 0);
	assert_int_equal(p.what, BEV_EVENT_READING | BEV_EVENT_ERROR);
	pair_close(&p);
}

static void read_timeout_reported(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	struct timeval tv = {0, 20 * 1000};
	bufferevent_set_timeouts(p.bev, &tv, NULL);
	RUN_UNTIL(&p, p.what != 0);
	assert_int_equal(p.what, BEV_EVENT_READING | BEV_EVENT_TIMEOUT);
	assert_false(bufferevent_get_enabled(p.bev) & EV_READ); /* as libevent: reading off */
	pair_close(&p);
}

static void read_callback_may_free_the_bufferevent(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	p.free_in_read = true;
	assert_int_equal(send(p.peer, "x", 1, 0), 1);
	RUN_UNTIL(&p, p.bev == NULL);
	assert_null(p.bev);
	assert_int_equal(p.reads, 1);
	pair_close(&p); /* ASan: no use after free, no leak */
}

static void attach_refused_once_reading(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p); /* attached, reading enabled */
	assert_int_equal(wire_in_attach(p.bev), TERN_EINVAL);
	pair_close(&p);
}

/* wire_recv, which outbound connections use with their own read event: into
 * a socket bufferevent's input, which libevent keeps frozen at its end
 * (a plain evbuffer_add to it fails), at most max bytes, behind what the
 * input holds; EAGAIN with nothing there, 0 at the end, the input unchanged
 * when nothing was read. */
static void recv_appends_to_a_frozen_input_at_most_max(void **state)
{
	(void)state;
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(evutil_make_socket_nonblocking(sv[0]), 0);
	struct event_base *base = event_base_new();
	assert_non_null(base);
	struct bufferevent *bev = bufferevent_socket_new(base, sv[0], BEV_OPT_CLOSE_ON_FREE);
	assert_non_null(bev);
	struct evbuffer *in = bufferevent_get_input(bev);
	assert_int_equal(evbuffer_add(in, "x", 1), -1); /* frozen, as libevent keeps it */
	errno = 0;
	assert_int_equal(wire_recv(sv[0], in, 4096), -1);
	assert_int_equal(errno, EAGAIN);
	assert_int_equal(evbuffer_get_length(in), 0);
	assert_int_equal(send(sv[1], "250 b\r\n354 go\r\n", 16, 0), 16);
	assert_int_equal(wire_recv(sv[0], in, 10), 10); /* at most max */
	assert_int_equal(wire_recv(sv[0], in, 4096), 6);
	assert_int_equal(evbuffer_get_length(in), 16);
	assert_memory_equal(evbuffer_pullup(in, -1), "250 b\r\n354 go\r\n", 16);
	assert_int_equal(evbuffer_add(in, "x", 1), -1); /* frozen again */
	close(sv[1]);
	assert_int_equal(wire_recv(sv[0], in, 4096), 0);
	assert_int_equal(evbuffer_get_length(in), 16);
	bufferevent_free(bev);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(command_in_one_byte_writes),
	    cmocka_unit_test(burst_larger_than_one_read_arrives_whole_in_order),
	    cmocka_unit_test(nothing_read_past_high_watermark_or_while_disabled),
	    cmocka_unit_test(watermark_suspends_then_resumes_when_drained),
	    cmocka_unit_test(eof_after_the_data),
	    cmocka_unit_test(reset_is_a_read_error),
	    cmocka_unit_test(read_timeout_reported),
	    cmocka_unit_test(read_callback_may_free_the_bufferevent),
	    cmocka_unit_test(attach_refused_once_reading),
	    cmocka_unit_test(recv_appends_to_a_frozen_input_at_most_max),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
