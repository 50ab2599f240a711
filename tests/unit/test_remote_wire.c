/*
 * test_remote_wire.c — a step's outbound bytes straight to the socket
 * (src/deliver/remote_wire.c). What delivery depends on: with nothing
 * queued the bytes go at once, whole, and the call says how many; with
 * bytes queued nothing is sent ahead of them (the cork goes behind); what
 * a full socket does not take is queued in order, so the peer gets every
 * byte exactly once; a cork of more pieces than one call carries goes
 * whole; a closed peer raises no SIGPIPE and loses nothing from the queue.
 * With the worker's batch (core/send_batch.c): a step's cork waits for the
 * end of the loop turn and goes whole; a second step's bytes for the same
 * socket go behind it; a cork of many pieces is sent at once; a peer that
 * is gone gets nothing sent and nothing lost.
 * The loop never runs here: only rwire_flush and send_batch_flush move
 * bytes to the socket.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "core/send_batch.h"
#include "deliver/remote_wire.h"

struct pair {
	struct event_base *base;
	struct bufferevent *bev; /* over fd[0] */
	int fd[2];
	struct evbuffer *cork;
};

static void pair_open(struct pair *p, int sndbuf)
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, p->fd), 0);
	if (sndbuf > 0)
		assert_int_equal(
		    setsockopt(p->fd[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
	p->base = event_base_new();
	assert_non_null(p->base);
	p->bev = bufferevent_socket_new(p->base, p->fd[0], BEV_OPT_CLOSE_ON_FREE);
	assert_non_null(p->bev);
	p->cork = evbuffer_new();
	assert_non_null(p->cork);
}

static void pair_close(struct pair *p)
{
	evbuffer_free(p->cork);
	bufferevent_free(p->bev);
	if (p->fd[1] >= 0)
		close(p->fd[1]);
	event_base_free(p->base);
}

/* Everything the peer has received so far (nonblocking), appended to got. */
static size_t peer_read(struct pair *p, char *got, size_t cap)
{
	size_t n = 0;
	for (;;) {
		ssize_t r = recv(p->fd[1], got + n, cap - n, 0);
		if (r <= 0) {
			assert_true(r == 0 || errno == EAGAIN || errno == EWOULDBLOCK);
			return n;
		}
		n += (size_t)r;
		assert_true(n < cap);
	}
}

/* A cork of many small pieces (one evbuffer chain each), numbered bytes. */
static char *fill_pieces(struct evbuffer *b, size_t pieces, size_t piece, size_t *len)
{
	char *all = malloc(pieces * piece);
	assert_non_null(all);
	for (size_t i = 0; i < pieces * piece; i++)
		all[i] = (char)('a' + (i * 7 + i / 251) % 26);
	for (size_t i = 0; i < pieces; i++)
		assert_int_equal(evbuffer_add_reference(b, all + i * piece, piece, NULL, NULL), 0);
	*len = pieces * piece;
	return all;
}

static void test_empty_output_sends_at_once(void **state)
{
	struct pair p;
	pair_open(&p, 0);
	evbuffer_add(p.cork, "MAIL FROM:<a@b>\r\n", 17);
	evbuffer_add(p.cork, "RCPT TO:<c@d>\r\nDATA\r\n", 21);
	assert_int_equal(rwire_flush(p.bev, p.cork, NULL), 38);
	assert_int_equal(evbuffer_get_length(p.cork), 0);
	assert_int_equal(evbuffer_get_length(bufferevent_get_output(p.bev)), 0);
	char got[64];
	assert_int_equal(peer_read(&p, got, sizeof(got)), 38);
	assert_memory_equal(got, "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", 38);
	/* an empty cork sends nothing */
	assert_int_equal(rwire_flush(p.bev, p.cork, NULL), 0);
	pair_close(&p);
}

static void test_never_sends_ahead_of_queued_bytes(void **state)
{
	struct pair p;
	pair_open(&p, 0);
	/* queued, not written yet: the loop does not run */
	evbuffer_add(bufferevent_get_output(p.bev), "first ", 6);
	evbuffer_add(p.cork, "second", 6);
	assert_int_equal(rwire_flush(p.bev, p.cork, NULL), 0);
	assert_int_equal(evbuffer_get_length(p.cork), 0);
	char got[64];
	assert_int_equal(peer_read(&p, got, sizeof(got)), 0);
	struct evbuffer *out = bufferevent_get_output(p.bev);
	assert_int_equal(evbuffer_get_length(out), 12);
	assert_memory_equal(evbuffer_pullup(out, -1), "first second", 12);
	pair_close(&p);
}

static void test_full_socket_queues_the_rest_in_order(void **state)
{
	struct pair p;
	pair_open(&p, 4096);
	size_t len;
	/* 200 pieces: more than one sendmsg carries, more than the socket takes */
	char *all = fill_pieces(p.cork, 200, 1000, &len);
	size_t sent = rwire_flush(p.bev, p.cork, NULL);
	assert_true(sent > 0 && sent < len);
	assert_int_equal(evbuffer_get_length(p.cork), 0);
	struct evbuffer *out = bufferevent_get_output(p.bev);
	assert_int_equal(sent + evbuffer_get_length(out), len);
	/* the peer has exactly the first `sent` bytes, the queue the rest */
	char *got = malloc(len + 1);
	assert_non_null(got);
	assert_int_equal(peer_read(&p, got, len + 1), sent);
	assert_memory_equal(got, all, sent);
	assert_memory_equal(evbuffer_pullup(out, -1), all + sent, len - sent);
	/* a later step's bytes go behind the queue, none ahead */
	evbuffer_add(p.cork, "QUIT\r\n", 6);
	assert_int_equal(rwire_flush(p.bev, p.cork, NULL), 0);
	assert_int_equal(peer_read(&p, got, len + 1), 0);
	assert_int_equal(evbuffer_get_length(out), len - sent + 6);
	assert_memory_equal((char *)evbuffer_pullup(out, -1) + (len - sent), "QUIT\r\n", 6);
	free(got);
	free(all);
	pair_close(&p);
}

/* 300 pieces, 30,000 bytes: more than one sendmsg carries (and than a batch
 * entry takes), sent at once and whole when the socket has room. */
static void many_pieces_go_whole(bool with_batch)
{
	struct pair p;
	pair_open(&p, 1 << 20);
	struct send_batch *b = with_batch ? send_batch_new(p.base) : NULL;
	assert_true(!with_batch || b); /* io_uring is available on the machines tern is tested on */
	size_t len;
	char *all = fill_pieces(p.cork, 300, 100, &len);
	assert_int_equal(rwire_flush(p.bev, p.cork, b), len);
	assert_int_equal(evbuffer_get_length(bufferevent_get_output(p.bev)), 0);
	char *got = malloc(len + 1);
	assert_non_null(got);
	assert_int_equal(peer_read(&p, got, len + 1), len); /* already there */
	assert_memory_equal(got, all, len);
	free(got);
	free(all);
	send_batch_free(b);
	pair_close(&p);
}

static void test_many_pieces_go_whole_when_the_socket_has_room(void **state)
{
	many_pieces_go_whole(false);
}

static void test_closed_peer_queues_everything_without_sigpipe(void **state)
{
	struct pair p;
	pair_open(&p, 0);
	close(p.fd[1]);
	p.fd[1] = -1;
	evbuffer_add(p.cork, "MAIL FROM:<a@b>\r\n", 17);
	/* SIGPIPE is not ignored in this process: a send without MSG_NOSIGNAL kills it */
	assert_int_equal(rwire_flush(p.bev, p.cork, NULL), 0);
	assert_int_equal(evbuffer_get_length(p.cork), 0);
	/* queued: libevent's write meets the error and reports it */
	assert_int_equal(evbuffer_get_length(bufferevent_get_output(p.bev)), 17);
	pair_close(&p);
}

static void test_batched_cork_leaves_at_the_end_of_the_turn(void **state)
{
	struct pair p;
	pair_open(&p, 0);
	struct send_batch *b = send_batch_new(p.base);
	assert_non_null(b); /* io_uring is available on the machines tern is tested on */
	evbuffer_add(p.cork, ".\r\nMAIL FROM:<a@b>\r\n", 20);
	assert_int_equal(rwire_flush(p.bev, p.cork, b), 20);
	assert_int_equal(evbuffer_get_length(p.cork), 0);
	char got[64];
	assert_int_equal(peer_read(&p, got, sizeof(got)), 0); /* not before the turn ends */
	/* a second step of the same turn: behind the first, never ahead */
	evbuffer_add(p.cork, "RCPT TO:<c@d>\r\n", 15);
	assert_int_equal(rwire_flush(p.bev, p.cork, b), 0);
	struct evbuffer *out = bufferevent_get_output(p.bev);
	assert_int_equal(evbuffer_get_length(out), 15);
	send_batch_flush(b);
	assert_int_equal(peer_read(&p, got, sizeof(got)), 20);
	assert_memory_equal(got, ".\r\nMAIL FROM:<a@b>\r\n", 20);
	assert_int_equal(evbuffer_get_length(out), 15);
	assert_memory_equal(evbuffer_pullup(out, -1), "RCPT TO:<c@d>\r\n", 15);
	send_batch_free(b);
	pair_close(&p);
}

static void test_batch_sends_a_cork_of_many_pieces_at_once(void **state)
{
	many_pieces_go_whole(true);
}

static void test_batch_gives_back_what_a_closed_peer_did_not_take(void **state)
{
	struct pair p;
	pair_open(&p, 0);
	struct send_batch *b = send_batch_new(p.base);
	assert_non_null(b);
	evbuffer_add(p.cork, "MAIL FROM:<a@b>\r\n", 17);
	assert_int_equal(rwire_flush(p.bev, p.cork, b), 17);
	close(p.fd[1]);
	p.fd[1] = -1;
	send_batch_flush(b); /* EPIPE, no SIGPIPE */
	/* queued again: libevent's write meets the error and reports it */
	assert_int_equal(evbuffer_get_length(bufferevent_get_output(p.bev)), 17);
	send_batch_free(b);
	pair_close(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_empty_output_sends_at_once),
	    cmocka_unit_test(test_never_sends_ahead_of_queued_bytes),
	    cmocka_unit_test(test_full_socket_queues_the_rest_in_order),
	    cmocka_unit_test(test_many_pieces_go_whole_when_the_socket_has_room),
	    cmocka_unit_test(test_closed_peer_queues_everything_without_sigpipe),
	    cmocka_unit_test(test_batched_cork_leaves_at_the_end_of_the_turn),
	    cmocka_unit_test(test_batch_sends_a_cork_of_many_pieces_at_once),
	    cmocka_unit_test(test_batch_gives_back_what_a_closed_peer_did_not_take),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
