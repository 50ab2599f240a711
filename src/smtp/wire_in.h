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

struct bufferevent;

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
