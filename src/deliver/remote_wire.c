/*
 * remote_wire.c — a step's outbound bytes go to the socket at once when
 * they can (deliver/remote_wire.h).
 *
 * Owns: handing a cork to the worker's batch (core/send_batch.h), or its
 * sendmsg(2), on plain outbound sockets whose output is empty. Never: sends
 * ahead of bytes already queued, touches a TLS connection's socket, blocks,
 * raises SIGPIPE, or loses a byte: anything not sent is moved to the
 * bufferevent's output, where libevent writes it and reports any error.
 */
#include "deliver/remote_wire.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "core/send_batch.h"

/* Pieces per sendmsg: an in-memory message of a few hundred KiB is a few
 * dozen evbuffer chains; a call takes what the socket has room for. */
#define WIRE_IOV 64

size_t rwire_flush(struct bufferevent *bev, struct evbuffer *cork, struct send_batch *batch)
{
	struct evbuffer *out = bufferevent_get_output(bev);
	evutil_socket_t fd = bufferevent_getfd(bev);
	size_t sent = 0;
	/* An earlier step's bytes of this turn wait in the batch: these queue
	 * behind them (the batch gives back in front of the output). */
	if (fd >= 0 && batch && send_batch_has(batch, fd))
		fd = -1;
	if (fd >= 0 && evbuffer_get_length(out) == 0) {
		size_t corked = evbuffer_get_length(cork);
		if (batch && corked > 0 && send_batch_take(batch, bev, fd, NULL, 0, cork))
			return corked;
		while (evbuffer_get_length(cork) > 0) {
			struct iovec iov[WIRE_IOV];
			struct evbuffer_iovec ev[WIRE_IOV];
			int n = evbuffer_peek(cork, -1, NULL, ev, WIRE_IOV);
			if (n > WIRE_IOV)
				n = WIRE_IOV;
			size_t want = 0;
			for (int i = 0; i < n; i++) {
				iov[i].iov_base = ev[i].iov_base;
				iov[i].iov_len = ev[i].iov_len;
				want += ev[i].iov_len;
			}
			struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
			ssize_t r;
			do
				r = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
			while (r < 0 && errno == EINTR);
			/* r < 0 (EAGAIN, or an error): the rest is queued, and
			 * libevent's write meets the same error and reports it. */
			if (r <= 0)
				break;
			evbuffer_drain(cork, (size_t)r);
			sent += (size_t)r;
			if ((size_t)r < want)
				break; /* the socket is full: libevent waits for room */
		}
	}
	if (evbuffer_get_length(cork) > 0)
		evbuffer_add_buffer(out, cork); /* moves the chains, behind what is queued */
	return sent;
}
