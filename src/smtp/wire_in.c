/*
 * wire_in.c — one recv(2) per readable socket (smtp/wire_in.h).
 *
 * libevent's socket bufferevent reads with evbuffer_read, which asks the
 * kernel how much is waiting (ioctl FIONREAD) before every readv: two
 * system calls per read, four reads per relayed message. Here the
 * bufferevent's own read event gets a callback that receives into a stack
 * buffer with one recv and appends it to the input; everything else
 * (enable/disable, the high watermark's suspension, read timeouts, the
 * TLS filter reading from the socket's input) is still libevent's, because
 * the event is still the bufferevent's ev_read.
 *
 * Owns: the read callback below, which mirrors libevent 2.1's
 * bufferevent_readcb (bufferevent_sock.c) step for step.
 * Never: touches the event while it is pending, reads more than the high
 * watermark allows, blocks (MSG_DONTWAIT), or uses bev after its event
 * callback ran (that callback may free it; our reference keeps it alive).
 */
#include "smtp/wire_in.h"

#include <errno.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_struct.h>
#include <event2/event.h>

#include "core/err.h"

/* Not inlined: its 64 KiB buffer is off the stack again before the read
 * callback (the whole session) runs. Into the stack, then appended: a
 * chain reserved in the input for max bytes would be a 128 KiB malloc for
 * every read of a few hundred bytes, while evbuffer_add sizes chains to
 * what came. */
__attribute__((noinline)) ssize_t wire_recv(int fd, struct evbuffer *in, size_t max)
{
	char buf[WIRE_RECV_MAX];
	if (max > sizeof(buf))
		max = sizeof(buf);
	ssize_t r;
	do
		r = recv(fd, buf, max, MSG_DONTWAIT);
	while (r < 0 && errno == EINTR);
	if (r <= 0)
		return r;
	evbuffer_unfreeze(in, 0);
	int added = evbuffer_add(in, buf, (size_t)r);
	evbuffer_freeze(in, 0);
	if (added != 0) {
		errno = ENOMEM;
		return -1;
	}
	return r;
}

static void wire_in_readcb(evutil_socket_t fd, short what, void *arg)
{
	struct bufferevent *bev = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	short report = BEV_EVENT_READING;
	size_t want = WIRE_RECV_MAX, low = 0, high = 0;
	ssize_t r;
	bufferevent_incref(bev);
	if (what == EV_TIMEOUT) {
		/* Only a timeout with nothing to read (EV_TIMEOUT|EV_READ means
		 * data came), as libevent decides it. */
		report |= BEV_EVENT_TIMEOUT;
		goto error;
	}
	bufferevent_getwatermark(bev, EV_READ, &low, &high);
	if (high > 0) {
		size_t have = evbuffer_get_length(in);
		if (have >= high)
			goto out; /* libevent suspends reading at the watermark */
		if (high - have < want)
			want = high - have;
	}
	r = wire_recv(fd, in, want);
	if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		goto out; /* woken for nothing: the event stays */
	if (r <= 0) {
		report |= r == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR;
		goto error;
	}
	/* The read callback, if the low watermark is met (ours is 0). */
	bufferevent_trigger(bev, EV_READ, 0);
	goto out;
error:
	bufferevent_disable(bev, EV_READ);
	bufferevent_trigger_event(bev, report, 0);
out:
	bufferevent_decref(bev);
}

int wire_in_attach(struct bufferevent *bev)
{
	evutil_socket_t fd = bufferevent_getfd(bev);
	if (fd < 0 || event_pending(&bev->ev_read, EV_READ | EV_TIMEOUT, NULL))
		return TERN_EINVAL;
	/* The same flags libevent gives it (bufferevent_socket_new): EV_FINALIZE
	 * lets bufferevent_free finish the event after a running callback. */
	if (event_assign(&bev->ev_read, bufferevent_get_base(bev), fd,
	                 EV_READ | EV_PERSIST | EV_FINALIZE, wire_in_readcb, bev) != 0)
		return TERN_EINVAL;
	return TERN_OK;
}
