/*
 * wire_out.c — a reply goes to the socket at once when it can, or with the
 * worker's other sends of the turn (smtp/wire_out.h, core/send_batch.h).
 *
 * Owns: the decision to batch, send or queue a reply on a plain session.
 * Never: sends ahead of bytes already queued, touches a TLS session's
 * socket, blocks (MSG_DONTWAIT), raises SIGPIPE (MSG_NOSIGNAL), or loses a
 * byte: anything not sent is queued for libevent, which reports errors.
 */
#include "smtp/wire_out.h"

#include <errno.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "core/send_batch.h"

size_t wire_out(struct bufferevent *bev, struct send_batch *batch, bool direct, const void *p,
                size_t n)
{
	struct evbuffer *out = bufferevent_get_output(bev);
	size_t sent = 0;
	evutil_socket_t fd = direct ? bufferevent_getfd(bev) : -1;
	/* A reply of this turn already waits in the batch: this one queues
	 * behind it (the batch gives back in front of the output). */
	if (fd >= 0 && batch && send_batch_has(batch, fd))
		fd = -1;
	if (fd >= 0 && n > 0 && evbuffer_get_length(out) == 0) {
		if (batch && send_batch_take(batch, bev, fd, p, n, NULL))
			return n;
		ssize_t r;
		do
			r = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		while (r < 0 && errno == EINTR);
		if (r > 0)
			sent = (size_t)r;
		/* r < 0 (EAGAIN, or an error): everything is queued, and
		 * libevent's write meets the same error and reports it. */
	}
	if (sent < n)
		evbuffer_add(out, (const char *)p + sent, n - sent);
	return sent;
}
