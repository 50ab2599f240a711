/*
 * send_batch.h — a worker's outgoing bytes of one loop turn, sent together
 * by one io_uring_enter when the turn ends or when SEND_BATCH_FLUSH_AT wait.
 *
 * Why: on loopback (and to any peer on the same machine: a content filter,
 * a local relay, a test suite) each send(2) wakes the peer, and with the
 * kernel preempting only on the way back to user space, a peer woken on the
 * worker's CPU took that CPU from the worker after every reply: one
 * preemption and two context switches per reply. Sent together, the peers
 * are woken together and the worker is interrupted once per batch
 * (bench/results/20261206-session8-reply-batch.md).
 *
 * Owns: the turn's entries (each a socket and the bytes for it, moved or
 * copied in), the ring, and the event that ends the turn.
 * Never: blocks (every send is MSG_DONTWAIT, done inline in the submitting
 * call), reorders (one entry per socket per batch: a caller with more for a
 * socket that has an entry queues it in the bufferevent, behind, and what a
 * send does not take goes back in front of that bufferevent's output), or
 * loses a byte: what is not sent is handed to libevent, which writes it or
 * reports the error as for any other output.
 *
 * One thread: the worker's. A bufferevent with an entry must not be freed
 * before send_batch_flush (its socket would close under the send).
 */
#ifndef TERN_CORE_SEND_BATCH_H
#define TERN_CORE_SEND_BATCH_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/util.h>

/*
 * The batch also goes out as soon as it holds this many entries, mid-turn:
 * a reply waits for at most seven others' processing rather than the whole
 * turn's. Sending only at the end of the turn made the slow turns (after a
 * stall, every waiting session at once) slower still: accept p99 worse than
 * one send per reply in all three shared-bench repetitions; at 8 it is
 * better in three of four against the turn-end batch and against one send
 * per reply, at the same rate (bench/results/20261206-session8-reply-batch.md).
 */
#define SEND_BATCH_FLUSH_AT 8

struct bufferevent;
struct event_base;
struct evbuffer;
struct send_batch;

/* A batch whose turn ends on base; NULL when io_uring is unavailable (an
 * old kernel, seccomp, kernel.io_uring_disabled) or out of memory: callers
 * then send at once, as without one. */
struct send_batch *send_batch_new(struct event_base *base);

/* Frees b, which must be empty (flushed); NULL is a no-op. */
void send_batch_free(struct send_batch *b);

/* Sends every entry now; what a socket does not take goes in front of its
 * bufferevent's output. */
void send_batch_flush(struct send_batch *b);

/*
 * Takes bytes for bev's socket fd (bev a plain socket bufferevent whose
 * output is empty): p[0..n) copied, or, with p NULL, all of src moved
 * (src is left empty); the SEND_BATCH_FLUSH_AT-th entry sends them all.
 * False, with nothing taken, when fd has an entry already, or when the
 * bytes are more than an entry holds (over 4 KiB to copy, or more pieces
 * than one entry sends: a large message; send them at once instead).
 */
bool send_batch_take(struct send_batch *b, struct bufferevent *bev, evutil_socket_t fd,
                     const void *p, size_t n, struct evbuffer *src);

/* Does fd have an entry this turn? (More for it must queue behind.) */
bool send_batch_has(const struct send_batch *b, evutil_socket_t fd);

#endif
