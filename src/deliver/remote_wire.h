/*
 * remote_wire.h — outbound SMTP bytes straight to a plain socket (issue 11
 * item 3), kept out of remote.c so that its hooks there are one call each.
 *
 * A step of an outbound connection (the replies just read, a job handed to
 * a parked connection, a chunk of a spilled file read ahead) collects what
 * it sends in a private buffer, the cork; at the step's end the cork goes to
 * the socket with one sendmsg(2) when nothing is queued ahead of it. A
 * pipelined MAIL, RCPTs and DATA (or BDAT LAST with the message) then leave
 * in the same loop turn, without libevent adding and removing its write
 * event (two epoll_ctl) and without waiting a loop turn for that event.
 *
 * (Plain outbound sockets are read with smtp/wire_in.h's wire_recv.)
 *
 * Owns: the decision to send at once or to queue in the bufferevent.
 * Never: reorders bytes (a direct send happens only when the bufferevent's
 * output is empty, and what the socket does not take is queued behind
 * nothing), writes to a TLS connection's socket (the caller passes plain
 * socket bufferevents only), blocks (MSG_DONTWAIT), raises SIGPIPE
 * (MSG_NOSIGNAL), or drops a byte: what the socket does not take now, or
 * everything after an error, goes to the bufferevent's output, where
 * libevent writes it or meets the same error and reports it as before.
 */
#ifndef TERN_DELIVER_REMOTE_WIRE_H
#define TERN_DELIVER_REMOTE_WIRE_H

#include <stddef.h>

struct bufferevent;
struct evbuffer;
struct send_batch;

/*
 * Empties cork onto bev, a plain socket bufferevent: with bev's output
 * empty, the cork moves into batch (the worker's sends of this loop turn,
 * core/send_batch.h; NULL: none) or, when the batch cannot take it, as
 * much as the socket takes now goes with sendmsg(2) (several calls only
 * when the cork has more pieces than one call carries); the rest, and all
 * of it when bev's output holds bytes or bev has bytes in the batch, is
 * moved behind bev's output. Returns the bytes batched or sent directly:
 * bev's output callbacks never see them, so the caller accounts for them as
 * it does for bytes libevent writes (what a batched send leaves is given
 * back to the output, and libevent's write of it is seen again). The cork
 * is empty on return.
 */
size_t rwire_flush(struct bufferevent *bev, struct evbuffer *cork, struct send_batch *batch);

#endif
