/*
 * webhook.h — webhook endpoints, Standard Webhooks signing and the sender
 * that drains the durable outbox in DATA/events.db (issue 13 item 2).
 *
 * Owns: the signature (webhook_sign), endpoint management (add, list, delete,
 * enable, attempts) for the CLI and the API, and the sender thread.
 *
 * Must never: mark an outbox row done before the receiver answered 2xx; send
 * a later event of a message to an endpoint before an earlier one was
 * delivered there; follow redirects.
 */
#ifndef TERN_STORE_WEBHOOK_H
#define TERN_STORE_WEBHOOK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <sqlite3.h>

struct events_opts;

/*
 * The Standard Webhooks signature: "v1," BASE64(HMAC-SHA256(key, id "." ts
 * "." body)) where key is the base64-decoded part of secret after "whsec_".
 * Writes it NUL-terminated into out (at least 64 bytes). TERN_OK, or
 * TERN_EINVAL when the secret is not "whsec_BASE64".
 */
int webhook_sign(const char *secret, const char *id, int64_t ts, const char *body, size_t body_len,
                 char *out, size_t outlen);

/* A new secret "whsec_" + base64 of 24 random bytes into out (>= 64 bytes). */
int webhook_secret_new(char *out, size_t outlen);

/* The bit set of event types a filter names ("delivered,bounced"; "" or NULL:
 * all). Unknown names are ignored here; webhook_filter_check finds them. */
unsigned webhook_filter_parse(const char *list);
/* TERN_OK when every name in list is an event type; else TERN_EINVAL and
 * the bad name in bad. */
int webhook_filter_check(const char *list, char *bad, size_t badlen);

/* Adds an endpoint; *id and secret (>= 64 bytes) get its id and secret. */
int webhook_add(sqlite3 *db, const char *url, const char *events, const char *key, int64_t *id,
                char *secret, size_t secretlen);
/* Prints the endpoints, one a line: ID URL events=... key=... status. */
int webhook_list(sqlite3 *db, FILE *out);
/* Deletes an endpoint and its pending outbox rows. TERN_ENOTFOUND if none. */
int webhook_del(sqlite3 *db, int64_t id);
/* Re-enables an endpoint: pending events are due at once. */
int webhook_enable(sqlite3 *db, int64_t id);
/* Prints the endpoint's last attempts (newest last). */
int webhook_attempts(sqlite3 *db, int64_t id, unsigned limit, FILE *out);

/* The sender thread (started by events_start). */
struct webhook_sender;
struct webhook_sender *webhook_sender_start(const char *data_dir, const struct events_opts *o);
/* New outbox rows were committed: look now instead of at the next tick. */
void webhook_sender_kick(struct webhook_sender *s);
void webhook_sender_stop(struct webhook_sender *s); /* NULL is fine */

/* The wait after the n-th failed attempt (n >= 1): base, 6x, 24x, 120x,
 * 360x, 720x base, capped at max. */
int64_t webhook_backoff(uint32_t base, uint32_t max, uint32_t n);

#endif
