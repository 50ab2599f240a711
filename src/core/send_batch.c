/*
 * send_batch.c — a worker's sends of one loop turn in one io_uring_enter
 * (core/send_batch.h).
 *
 * Owns: the entries (a socket, its bufferevent, an evbuffer holding the
 * bytes, the msghdr and iovecs the ring reads them through), the ring, and
 * the event that flushes at the end of the turn. Never: blocks, reorders,
 * or loses a byte (send_batch.h).
 */
#include "core/send_batch.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <liburing.h>

#include "core/err.h"
#include "core/log.h"

/* Entries at most; the ring has as many. The batch never holds more: it
 * goes out as the SEND_BATCH_FLUSH_AT-th is taken. */
#define BATCH_MAX SEND_BATCH_FLUSH_AT
/* Pieces per entry: a reply is one, a 4 KiB message with its commands a
 * few evbuffer chains; more (a large message) is sent at once instead. */
#define ENTRY_IOV 16
/* Bytes copied in for one entry: a reply is a line; anything larger is
 * sent at once rather than copied. */
#define ENTRY_COPY_MAX 4096

struct entry {
	struct bufferevent *bev;
	evutil_socket_t fd;
	struct evbuffer *buf; /* kept from turn to turn, empty between */
	struct msghdr mh;
	struct iovec iov[ENTRY_IOV];
};

struct send_batch {
	struct io_uring ring;
	struct event *flush; /* made active by the turn's first entry */
	size_t n;
	bool broken; /* the ring failed once: sends go at once from then on */
	struct entry e[BATCH_MAX];
};

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	send_batch_flush(arg);
}

struct send_batch *send_batch_new(struct event_base *base)
{
	struct send_batch *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	if (io_uring_queue_init(BATCH_MAX, &b->ring, 0) < 0) {
		free(b);
		return NULL;
	}
	b->flush = event_new(base, -1, 0, flush_cb, b);
	if (!b->flush) {
		io_uring_queue_exit(&b->ring);
		free(b);
		return NULL;
	}
	return b;
}

void send_batch_free(struct send_batch *b)
{
	if (!b)
		return;
	/* Its bufferevents may be gone by now: an entry left is a bug of the
	 * owner that freed one without flushing (send_batch.h). */
	(void)TERN_BUG_ON(b->n != 0);
	for (size_t i = 0; i < BATCH_MAX; i++)
		if (b->e[i].buf)
			evbuffer_free(b->e[i].buf);
	event_free(b->flush);
	io_uring_queue_exit(&b->ring);
	free(b);
}

bool send_batch_has(const struct send_batch *b, evutil_socket_t fd)
{
	for (size_t i = 0; i < b->n; i++)
		if (b->e[i].fd == fd)
			return true;
	return false;
}

bool send_batch_take(struct send_batch *b, struct bufferevent *bev, evutil_socket_t fd,
                     const void *p, size_t n, struct evbuffer *src)
{
	if (b->broken || send_batch_has(b, fd) ||
	    TERN_BUG_ON(b->n >= BATCH_MAX)) /* the last one taken sent them all */
		return false;
	if (p ? n > ENTRY_COPY_MAX : evbuffer_peek(src, -1, NULL, NULL, 0) > ENTRY_IOV)
		return false;
	struct entry *e = &b->e[b->n];
	if (!e->buf && !(e->buf = evbuffer_new()))
		return false;
	if (p ? evbuffer_add(e->buf, p, n) != 0 : evbuffer_add_buffer(e->buf, src) != 0) {
		evbuffer_drain(e->buf, evbuffer_get_length(e->buf));
		return false;
	}
	e->bev = bev;
	e->fd = fd;
	if (b->n++ == 0)
		event_active(b->flush, 0, 0);
	else if (b->n == SEND_BATCH_FLUSH_AT)
		send_batch_flush(b);
	return true;
}

/* What a send did not take goes in front of the bufferevent's output,
 * ahead of anything queued since (an entry is taken only while the output
 * is empty). A bufferevent keeps its output's start frozen (only its own
 * writes drain it); nothing is written from it now, on its loop's thread,
 * so it is thawed for the move. */
static void give_back(struct entry *e)
{
	if (evbuffer_get_length(e->buf) == 0)
		return;
	struct evbuffer *out = bufferevent_get_output(e->bev);
	evbuffer_unfreeze(out, 1);
	int r = evbuffer_prepend_buffer(out, e->buf);
	evbuffer_freeze(out, 1);
	if (r != 0) { /* out of memory: the peer waits for bytes that never come */
		log_error("event=send_lost fd=%d bytes=%zu reason=out-of-memory", (int)e->fd,
		          evbuffer_get_length(e->buf));
		evbuffer_drain(e->buf, evbuffer_get_length(e->buf));
	}
}

void send_batch_flush(struct send_batch *b)
{
	if (!b || b->n == 0)
		return;
	size_t n = b->n, queued = 0;
	for (size_t i = 0; i < n; i++) {
		struct entry *e = &b->e[i];
		struct evbuffer_iovec v[ENTRY_IOV];
		int k = evbuffer_peek(e->buf, -1, NULL, v, ENTRY_IOV);
		if (k > ENTRY_IOV) /* send_batch_take checked: only the first ENTRY_IOV go */
			k = ENTRY_IOV;
		for (int j = 0; j < k; j++)
			e->iov[j] =
			    (struct iovec){.iov_base = v[j].iov_base, .iov_len = v[j].iov_len};
		e->mh = (struct msghdr){.msg_iov = e->iov, .msg_iovlen = (size_t)k};
		struct io_uring_sqe *sqe = io_uring_get_sqe(&b->ring);
		if (TERN_BUG_ON(!sqe)) /* the ring has BATCH_MAX entries, all free */
			break;
		/* MSG_DONTWAIT: done inline, or -EAGAIN; never armed for later,
		 * so every completion is in when the submit returns. */
		io_uring_prep_sendmsg(sqe, e->fd, &e->mh, MSG_DONTWAIT | MSG_NOSIGNAL);
		io_uring_sqe_set_data64(sqe, i);
		queued++;
	}
	int r;
	do
		r = io_uring_submit_and_wait(&b->ring, (unsigned)queued);
	while (r == -EINTR);
	if (r != (int)queued && !b->broken) {
		/* Entries the kernel did not take stay in the ring, pointing at
		 * bytes about to be handed to libevent: never submit again. */
		b->broken = true;
		log_error("event=send_batch state=off reason=\"io_uring submit: %s\"",
		          strerror(r < 0 ? -r : EIO));
	}
	struct io_uring_cqe *cqe;
	while (io_uring_peek_cqe(&b->ring, &cqe) == 0) {
		uint64_t i = io_uring_cqe_get_data64(cqe);
		if (i < n && cqe->res > 0)
			evbuffer_drain(b->e[i].buf, (size_t)cqe->res);
		io_uring_cqe_seen(&b->ring, cqe);
	}
	/* Whatever is left (a full socket, an error, a ring failure) goes to
	 * libevent, which writes it or meets the error and reports it. */
	for (size_t i = 0; i < n; i++)
		give_back(&b->e[i]);
	b->n = 0;
}
