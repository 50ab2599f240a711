/*
 * test_wire_out.c — replies straight to the socket (src/smtp/wire_out.c):
 * sent at once when nothing is queued, queued behind bytes already waiting
 * (order kept), the rest queued when the socket takes only part, and all of
 * it queued when a direct send is not allowed (TLS) or fails; with the
 * worker's batch (core/send_batch.c), replies leave together when the loop
 * turn ends, a second reply for the same session waits behind the first, and
 * what a batched send leaves goes back in front. Every byte reaches the peer
 * exactly once, in order.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "core/send_batch.h"
#include "smtp/wire_out.h"

struct pair {
	struct event_base *base;
	struct bufferevent *bev;
	int peer;
};

/* A socket pair whose first end is a bufferevent on base. */
static void pair_open_on(struct pair *p, struct event_base *base, int sndbuf)
{
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	if (sndbuf)
		assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)),
		                 0);
	assert_int_equal(evutil_make_socket_nonblocking(sv[0]), 0);
	p->base = base;
	p->bev = bufferevent_socket_new(base, sv[0], BEV_OPT_CLOSE_ON_FREE);
	assert_non_null(p->bev);
	bufferevent_enable(p->bev, EV_READ | EV_WRITE);
	p->peer = sv[1];
}

/* A pair on a loop of its own. */
static void pair_open(struct pair *p, int sndbuf)
{
	struct event_base *base = event_base_new();
	assert_non_null(base);
	pair_open_on(p, base, sndbuf);
}

/* Both ends closed; the loop stays (pairs may share one). */
static void pair_shut(struct pair *p)
{
	bufferevent_free(p->bev);
	close(p->peer);
}

static void pair_close(struct pair *p)
{
	pair_shut(p);
	event_base_free(p->base);
}

/* A worker's batch on base, as worker_new makes it. */
static struct send_batch *batch_on(struct event_base *base)
{
	struct send_batch *b = send_batch_new(base);
	assert_non_null(b); /* io_uring is available on the machines tern is tested on */
	return b;
}

/* Reads what the peer has now (non-blocking) into buf; returns its length. */
static size_t peer_read(struct pair *p, char *buf, size_t cap)
{
	size_t n = 0;
	for (;;) {
		ssize_t r = recv(p->peer, buf + n, cap - n, MSG_DONTWAIT);
		if (r <= 0)
			return n;
		n += (size_t)r;
	}
}

/* Runs the loop until bev's output is written (bounded). */
static void flush_loop(struct pair *p)
{
	for (int i = 0; i < 1000 && evbuffer_get_length(bufferevent_get_output(p->bev)) > 0; i++)
		event_base_loop(p->base, EVLOOP_NONBLOCK);
}

static void direct_when_nothing_is_queued(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p, 0);
	assert_int_equal(wire_out(p.bev, NULL, true, "250 ok\r\n", 8), 8);
	assert_int_equal(evbuffer_get_length(bufferevent_get_output(p.bev)), 0);
	char buf[64];
	assert_int_equal(peer_read(&p, buf, sizeof(buf)), 8);
	assert_memory_equal(buf, "250 ok\r\n", 8);
	pair_close(&p);
}

static void queued_behind_waiting_bytes_and_when_not_direct(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p, 0);
	/* not allowed (a TLS session): queued, nothing on the wire yet */
	assert_int_equal(wire_out(p.bev, NULL, false, "250-a\r\n", 7), 0);
	char buf[64];
	assert_int_equal(peer_read(&p, buf, sizeof(buf)), 0);
	/* allowed, but bytes wait ahead of it: queued behind them */
	assert_int_equal(wire_out(p.bev, NULL, true, "250 b\r\n", 7), 0);
	assert_int_equal(evbuffer_get_length(bufferevent_get_output(p.bev)), 14);
	flush_loop(&p);
	assert_int_equal(peer_read(&p, buf, sizeof(buf)), 14);
	assert_memory_equal(buf, "250-a\r\n250 b\r\n", 14);
	pair_close(&p);
}

static void partial_send_queues_the_rest_in_order(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p, 4096); /* a small socket buffer: a big write is taken in part */
	size_t n = 1 << 20;
	char *big = malloc(n), *got = malloc(n + 16);
	assert_non_null(big);
	assert_non_null(got);
	for (size_t i = 0; i < n; i++)
		big[i] = (char)('a' + i % 26);
	size_t sent = wire_out(p.bev, NULL, true, big, n);
	assert_true(sent < n);
	assert_int_equal(evbuffer_get_length(bufferevent_get_output(p.bev)), n - sent);
	/* more after it is queued behind, never sent ahead */
	assert_int_equal(wire_out(p.bev, NULL, true, "END", 3), 0);
	size_t have = 0;
	for (int i = 0; i < 100000 && have < n + 3; i++) {
		event_base_loop(p.base, EVLOOP_NONBLOCK);
		have += peer_read(&p, got + have, n + 16 - have);
	}
	assert_int_equal(have, n + 3);
	assert_memory_equal(got, big, n);
	assert_memory_equal(got + n, "END", 3);
	free(big);
	free(got);
	pair_close(&p);
}

static void failed_send_queues_everything(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p, 0);
	close(p.peer); /* the peer is gone: send fails (EPIPE), no SIGPIPE */
	p.peer = -1;
	assert_int_equal(wire_out(p.bev, NULL, true, "221 bye\r\n", 9), 0);
	assert_int_equal(evbuffer_get_length(bufferevent_get_output(p.bev)), 9);
	bufferevent_free(p.bev);
	event_base_free(p.base);
}

static void batched_replies_leave_together_at_the_end_of_the_turn(void **state)
{
	(void)state;
	struct event_base *base = event_base_new();
	struct send_batch *b = batch_on(base);
	struct pair p1, p2;
	pair_open_on(&p1, base, 0);
	pair_open_on(&p2, base, 0);
	assert_int_equal(wire_out(p1.bev, b, true, "250 one\r\n", 9), 9);
	assert_int_equal(wire_out(p2.bev, b, true, "354 two\r\n", 9), 9);
	char buf[64];
	assert_int_equal(peer_read(&p1, buf, sizeof(buf)), 0); /* not before the turn ends */
	assert_int_equal(evbuffer_get_length(bufferevent_get_output(p1.bev)), 0);
	event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(peer_read(&p1, buf, sizeof(buf)), 9);
	assert_memory_equal(buf, "250 one\r\n", 9);
	assert_int_equal(peer_read(&p2, buf, sizeof(buf)), 9);
	assert_memory_equal(buf, "354 two\r\n", 9);
	pair_shut(&p1);
	pair_shut(&p2);
	send_batch_free(b);
	event_base_free(base);
}

static void a_second_reply_waits_behind_the_batched_one(void **state)
{
	(void)state;
	struct event_base *base = event_base_new();
	struct send_batch *b = batch_on(base);
	struct pair p;
	pair_open_on(&p, base, 0);
	assert_int_equal(wire_out(p.bev, b, true, "250 a\r\n", 7), 7);
	assert_int_equal(wire_out(p.bev, b, true, "250 b\r\n", 7), 0); /* behind it */
	flush_loop(&p);
	char buf[64];
	assert_int_equal(peer_read(&p, buf, sizeof(buf)), 14);
	assert_memory_equal(buf, "250 a\r\n250 b\r\n", 14);
	/* the batch is empty again: the next reply is batched anew */
	assert_int_equal(wire_out(p.bev, b, true, "250 c\r\n", 7), 7);
	send_batch_flush(b); /* as a session does before it frees its bufferevent */
	assert_int_equal(peer_read(&p, buf, sizeof(buf)), 7);
	assert_memory_equal(buf, "250 c\r\n", 7);
	pair_shut(&p);
	send_batch_free(b);
	event_base_free(base);
}

static void what_a_batched_send_leaves_goes_back_in_front(void **state)
{
	(void)state;
	struct event_base *base = event_base_new();
	struct send_batch *b = batch_on(base);
	struct pair p;
	pair_open_on(&p, base, 4096);
	/* a peer that does not read: the socket is full before the batch goes */
	char junk[4096];
	memset(junk, 'j', sizeof(junk));
	size_t full = 0;
	for (size_t chunk = sizeof(junk); chunk > 0; chunk /= 2) /* to the last byte */
		for (int i = 0; i < 100000; i++) {
			ssize_t r = send(bufferevent_getfd(p.bev), junk, chunk, MSG_DONTWAIT);
			if (r <= 0)
				break;
			full += (size_t)r;
		}
	assert_true(full > 0);
	assert_int_equal(wire_out(p.bev, b, true, "250 x\r\n", 7), 7);
	assert_int_equal(wire_out(p.bev, b, true, "END", 3), 0);
	send_batch_flush(b);
	/* not taken: back in front of END, nothing lost, nothing reordered */
	assert_int_equal(evbuffer_get_length(bufferevent_get_output(p.bev)), 10);
	char *got = malloc(full + 16);
	assert_non_null(got);
	size_t have = 0;
	for (int i = 0; i < 100000 && have < full + 10; i++) {
		event_base_loop(base, EVLOOP_NONBLOCK);
		have += peer_read(&p, got + have, full + 16 - have);
	}
	assert_int_equal(have, full + 10);
	assert_memory_equal(got + full, "250 x\r\nEND", 10);
	free(got);
	pair_shut(&p);
	send_batch_free(b);
	event_base_free(base);
}

static void a_reply_too_big_for_the_batch_is_sent_at_once(void **state)
{
	(void)state;
	struct event_base *base = event_base_new();
	struct send_batch *b = batch_on(base);
	struct pair p;
	pair_open_on(&p, base, 0);
	size_t n = 200 * 1024;
	char *big = calloc(1, n);
	assert_non_null(big);
	size_t sent = wire_out(p.bev, b, true, big, n);
	assert_true(sent > 0);
	assert_int_equal(evbuffer_get_length(bufferevent_get_output(p.bev)), n - sent);
	/* at the peer already, with no loop turn and no flush: not batched */
	char *got = malloc(n);
	assert_non_null(got);
	assert_int_equal(peer_read(&p, got, n), sent);
	free(got);
	free(big);
	pair_shut(&p);
	send_batch_free(b);
	event_base_free(base);
}

static void a_full_batch_goes_at_once_mid_turn(void **state)
{
	(void)state;
	struct event_base *base = event_base_new();
	struct send_batch *b = batch_on(base);
	struct pair p[SEND_BATCH_FLUSH_AT];
	char buf[64];
	for (int i = 0; i < SEND_BATCH_FLUSH_AT; i++) {
		pair_open_on(&p[i], base, 0);
		assert_int_equal(wire_out(p[i].bev, b, true, "250 ok\r\n", 8), 8);
		if (i + 1 < SEND_BATCH_FLUSH_AT) /* still waiting for the turn's end */
			assert_int_equal(peer_read(&p[i], buf, sizeof(buf)), 0);
	}
	/* the last one filled the batch: every reply has gone, no loop turn needed */
	for (int i = 0; i < SEND_BATCH_FLUSH_AT; i++) {
		assert_int_equal(peer_read(&p[i], buf, sizeof(buf)), 8);
		pair_shut(&p[i]);
	}
	send_batch_free(b);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(direct_when_nothing_is_queued),
	    cmocka_unit_test(queued_behind_waiting_bytes_and_when_not_direct),
	    cmocka_unit_test(partial_send_queues_the_rest_in_order),
	    cmocka_unit_test(failed_send_queues_everything),
	    cmocka_unit_test(batched_replies_leave_together_at_the_end_of_the_turn),
	    cmocka_unit_test(a_second_reply_waits_behind_the_batched_one),
	    cmocka_unit_test(what_a_batched_send_leaves_goes_back_in_front),
	    cmocka_unit_test(a_reply_too_big_for_the_batch_is_sent_at_once),
	    cmocka_unit_test(a_full_batch_goes_at_once_mid_turn),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
