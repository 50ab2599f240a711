/*
 * tls_close.c — closing a server-side TLS session on its socket (design:
 * tls_close.h).
 *
 * Owns: the close's timer and the socket bufferevent's callbacks while it
 * closes. Must never: touch the closer after done() (which frees it with
 * its session), or free a bufferevent.
 */
#include "tls/tls_close.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

static void on_close_timer(evutil_socket_t fd, short what, void *arg)
{
	struct tls_close *tc = arg;
	tc->done(tc->arg);
}

/* Our output, close_notify included, has left: shut our write side. */
static void close_sent(struct tls_close *tc, struct bufferevent *under)
{
	if (tc->sent)
		return;
	tc->sent = true;
	evutil_socket_t fd = bufferevent_getfd(under);
	if (fd >= 0)
		(void)shutdown(fd, SHUT_WR);
	if (tc->peer)
		tc->done(tc->arg);
}

static void on_write_closing(struct bufferevent *under, void *arg)
{
	if (evbuffer_get_length(bufferevent_get_output(under)) == 0)
		close_sent(arg, under);
}

/* The client is done: its close_notify came, or the connection ended. */
static void close_peer(struct tls_close *tc, struct bufferevent *under, bool error)
{
	tc->peer = true;
	bufferevent_disable(under, EV_READ);
	/* Our output may still be on its way (close_sent ends it then);
	 * after an error it never will be. */
	if (tc->sent || error)
		tc->done(tc->arg);
}

/* false: done() ran (tc is gone). */
static bool read_closing(struct tls_close *tc, struct bufferevent *under)
{
	SSL *ssl = bufferevent_openssl_get_ssl(tc->tb);
	char buf[4096];
	/* The SSL reads the socket's input through the filter's BIO; the loop
	 * ends when that input is used up (WANT_READ). */
	for (;;) {
		int n = SSL_read(ssl, buf, (int)sizeof(buf));
		if (n > 0)
			continue; /* data after the final reply: dropped */
		int e = SSL_get_error(ssl, n);
		if (e == SSL_ERROR_WANT_READ)
			return true;
		ERR_clear_error();
		/* SSL_ERROR_ZERO_RETURN is the client's close_notify; anything
		 * else is a connection that cannot be read any more. */
		bool ends = tc->sent;
		close_peer(tc, under, false);
		return !ends;
	}
}

static void on_read_closing(struct bufferevent *under, void *arg)
{
	(void)read_closing(arg, under);
}

static void on_event_closing(struct bufferevent *under, short what, void *arg)
{
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		close_peer(arg, under, (what & BEV_EVENT_ERROR) != 0);
}

void tls_close_begin(struct tls_close *tc, struct event_base *base, struct bufferevent *tb,
                     void (*done)(void *arg), void *arg)
{
	if (tc->timer)
		return; /* the filter may report its output written more than once */
	tc->tb = tb;
	tc->done = done;
	tc->arg = arg;
	tc->sent = tc->peer = false;
	struct bufferevent *under = bufferevent_get_underlying(tb);
	SSL *ssl = bufferevent_openssl_get_ssl(tb);
	tc->timer = evtimer_new(base, on_close_timer, tc);
	if (!tc->timer || !under || !ssl) {
		done(arg);
		return;
	}
	bufferevent_disable(tb, EV_READ | EV_WRITE);
	bufferevent_setcb(tb, NULL, NULL, NULL, NULL);
	bufferevent_set_timeouts(tb, NULL, NULL);
	/* The BIO refuses to write past the socket's write high watermark
	 * (the owner's reply backpressure): lift it so the alert always fits. */
	bufferevent_setwatermark(under, EV_WRITE, 0, 0);
	if (SSL_shutdown(ssl) < 0)
		ERR_clear_error(); /* nothing to send, e.g. an unusable connection */
	bufferevent_setcb(under, on_read_closing, on_write_closing, on_event_closing, tc);
	bufferevent_set_timeouts(under, NULL, NULL);
	bufferevent_enable(under, EV_READ | EV_WRITE);
	struct timeval tv = {TLS_CLOSE_TIMEOUT, 0};
	evtimer_add(tc->timer, &tv);
	/* The client's close_notify may already be waiting (sent right after
	 * QUIT): no new read would announce it. This never ends the close: our
	 * close_notify has not left yet. */
	if (!read_closing(tc, under))
		return;
	if (evbuffer_get_length(bufferevent_get_output(under)) == 0)
		close_sent(tc, under);
}

bool tls_close_our_side_done(const struct tls_close *tc)
{
	return tc->timer && tc->sent;
}

void tls_close_clear(struct tls_close *tc)
{
	if (!tc->timer)
		return;
	/* The socket bufferevent carries these callbacks now: take them back
	 * before it goes (with the filter, by the owner). */
	struct bufferevent *under = tc->tb ? bufferevent_get_underlying(tc->tb) : NULL;
	if (under)
		bufferevent_setcb(under, NULL, NULL, NULL, NULL);
	event_free(tc->timer);
	tc->timer = NULL;
}
