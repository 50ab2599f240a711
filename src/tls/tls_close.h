/*
 * tls_close.h — closing a server-side TLS session on its socket (RFC 8446
 * §6.1), shared by the SMTP and POP3 servers (it was one copy in each).
 *
 * Design. The filter bufferevent reports its output written once OpenSSL
 * has taken it, not once the socket has, and it never calls again when the
 * socket drains: waiting for that left every STARTTLS session open in
 * CLOSE-WAIT, counted against max_connections_per_ip and holding up SIGTERM.
 * So once the filter has taken the final reply, the session finishes on the
 * socket itself:
 *   - our close_notify goes after the reply (SSL_shutdown writes it into the
 *     socket's output through the filter's BIO);
 *   - the socket bufferevent gets these callbacks (the filter is done): when
 *     its output is written, the write side is shut so the client sees the
 *     end at once;
 *   - what the client still sends is read through the session's SSL and
 *     dropped until its close_notify (or its end of the connection) comes;
 *     once both sides are done the owner's done() runs at once, whether or
 *     not the client has closed the TCP connection yet;
 *   - TLS_CLOSE_TIMEOUT bounds it all. The owner's done() frees the session
 *     and closes the socket in every case.
 *
 * Owns: the close's timer and its state. Must never: touch the closer after
 * calling done() (done frees the session the closer lives in), or free the
 * bufferevents (the owner does, after tls_close_clear).
 */
#ifndef TERN_TLS_TLS_CLOSE_H
#define TERN_TLS_TLS_CLOSE_H

#include <stdbool.h>

struct bufferevent;
struct event;
struct event_base;

/* How long to wait for the client's close_notify or its end of the
 * connection once ours is on its way. */
#define TLS_CLOSE_TIMEOUT 5

struct tls_close {
	struct event *timer;    /* non-NULL once begun: the deadline */
	struct bufferevent *tb; /* the session's TLS filter bufferevent */
	bool sent;              /* our close_notify is written and the write side shut */
	bool peer;              /* the client closed its side */
	void (*done)(void *arg);
	void *arg;
};

/* Begins the close of the filter tb, whose final reply the filter has taken
 * (a second call is a no-op). done(arg) runs on base's loop once both sides
 * are closed, on an error, or after TLS_CLOSE_TIMEOUT; it runs from inside
 * this call when the close cannot begin. A zeroed struct is "not begun". */
void tls_close_begin(struct tls_close *tc, struct event_base *base, struct bufferevent *tb,
                     void (*done)(void *arg), void *arg);
/* Begun, and our close_notify has left (a shutdown need not wait for theirs). */
bool tls_close_our_side_done(const struct tls_close *tc);
/* For the owner's free: takes the callbacks back from the socket
 * bufferevent and frees the timer (nothing runs after). */
void tls_close_clear(struct tls_close *tc);

#endif
