/*
 * wire_out.h — replies straight to a plain socket when nothing is queued
 * ahead of them, kept out of server.c so that its hook there is one call.
 *
 * Owns: the decision to batch, to send(2) at once or to queue in the
 * bufferevent. Never: reorders bytes (a reply is batched or sent directly
 * only when the output buffer is empty and no reply of the session waits in
 * the batch), writes to a TLS connection's socket (the caller says whether
 * the bufferevent is a plain socket), blocks, or drops a byte: what the
 * socket does not take now, or anything after an error, goes to the output
 * buffer as before, where libevent writes it or reports the error.
 */
#ifndef TERN_SMTP_WIRE_OUT_H
#define TERN_SMTP_WIRE_OUT_H

#include <stdbool.h>
#include <stddef.h>

struct bufferevent;
struct send_batch;

/*
 * Sends p[0..n) on bev. With direct true (bev is a plain socket
 * bufferevent, not TLS or a filter) and bev's output empty, the bytes go
 * into batch (the worker's sends of this loop turn, core/send_batch.h;
 * NULL: none) or, when it cannot take them, are sent at once with one
 * send(2): no write event is armed and disarmed for a reply the socket
 * takes whole (two epoll_ctl and a loop turn each). Otherwise, and for
 * whatever the socket did not take, they are appended to bev's output.
 * Returns the bytes taken directly (batched or sent; 0: all queued).
 */
size_t wire_out(struct bufferevent *bev, struct send_batch *batch, bool direct, const void *p,
                size_t n);

#endif
