/*
 * capture_webhook.h — Mailpit's webhook (--webhook-url / MP_WEBHOOK_URL):
 * a POST of each new message's summary (MessageSummary JSON) to one URL.
 *
 * Posting runs on a thread of its own with libcurl, from a bounded
 * queue: capture never waits for the receiver. A full queue drops the
 * newest call (logged); a failed call is logged and not retried.
 * MP_WEBHOOK_LIMIT spaces the calls to at most that many a second.
 */
#ifndef TERN_STORE_CAPTURE_WEBHOOK_H
#define TERN_STORE_CAPTURE_WEBHOOK_H

#include <stddef.h>

#define CAPTURE_WEBHOOK_QUEUE 1000

struct capture_webhook;

/* Starts the poster. url must be http:// or https://; limit is calls a
 * second (0 = no limit). NULL with a reason in err. */
struct capture_webhook *capture_webhook_start(const char *url, unsigned limit, char *err,
                                              size_t errlen);

/* Queues one call with this JSON body (copied). Any thread; never blocks
 * on the network. */
void capture_webhook_post(struct capture_webhook *w, const char *json);

/* Stops the thread (a call in flight ends within its 10 s timeout; calls
 * still queued are dropped) and frees. NULL is fine. */
void capture_webhook_stop(struct capture_webhook *w);

#endif
