/*
 * wire_in.h — an inbound session's socket read with one recv(2) instead of
 * libevent's ioctl(FIONREAD) + readv, kept out of server.c so that its hook
 * there is one call (the read side of smtp/wire_out.h).
 *
 * Owns: the read callback of a socket bufferevent's own read event.
 * Never: reads while libevent would not (reading stays enabled, disabled,
 * suspended at the high watermark and timed out by the bufferevent itself,
 * since the event is the bufferevent's), reads past the read high
 * watermark (so nothing is read ahead of a STARTTLS handshake that the
 * session would not have read before), blocks, or reports anything the
 * bufferevent would not: data, then EOF/ERROR/TIMEOUT with BEV_EVENT_READING
 * exactly as libevent's own socket reader does.
 */
#ifndef TERN_SMTP_WIRE_IN_H
#define TERN_SMTP_WIRE_IN_H

#include <stddef.h>
#include <sys/types.h>

struct bufferevent;
struct evbuffer;

/* The most one wire_recv takes: a 4 KiB message with its commands in one
 * read, a large one in 64 KiB steps (libevent's reader stops at 16 KiB). */
#define WIRE_RECV_MAX (64 * 1024)

/*
 * One recv(2) of at most max bytes (WIRE_RECV_MAX at most) from fd, a
 * nonblocking socket, appended to in, a socket bufferevent's input: no
 * ioctl(FIONREAD) first, where libevent's evbuffer_read asks it before
 * every read. A socket bufferevent keeps its input frozen at the end
 * between its own reads (evbuffer_add would fail); this unfreezes it for
 * the append and freezes it again, as libevent's reader does. Returns the
 * bytes read (> 0), 0 at the peer's end of stream, or -1 with errno set
 * (EAGAIN: nothing now; ENOMEM: what was read could not be kept, the
 * caller ends the connection; else the socket's error). in is unchanged
 * unless bytes were read. Used by inbound sessions (below) and by plain
 * outbound connections (deliver/remote.c).
 */
ssize_t wire_recv(int fd, struct evbuffer *in, size_t max);

/*
 * Makes bev (a bufferevent_socket_new with a connected fd, reading not yet
 * enabled) read its socket with one recv(2) per readable event, into its
 * input buffer, then run its read callback as libevent would. A TLS filter
 * put over bev later reads through it unchanged. Returns TERN_OK, or
 * TERN_EINVAL (bev keeps libevent's reader) if bev has no socket or is
 * already reading.
 */
int wire_in_attach(struct bufferevent *bev);

#endif
