/*
 * verify_arc.h — ARC (RFC 8617) for verify.c, and nobody else: the chain
 * validation of a received message on the async resolver and the thread
 * pool, and the ARC Set tern puts on a message it forwards.
 *
 * One struct smtp_arc per message. It owns a copy of the header block as
 * we keep it (the client's fields without the results that claim our
 * name): validation and sealing read that copy, so the session's buffer may
 * move while a pool job runs. The body is never copied: the owner feeds
 * its hashes (smtp_arc_body) in its own pass over the body, a spilled
 * message's mapping included, on the pool when large.
 * Threads: the owner's worker; pool jobs touch only the object's own data.
 */
#ifndef TERN_SMTP_VERIFY_ARC_H
#define TERN_SMTP_VERIFY_ARC_H

#include <stdbool.h>
#include <stddef.h>

#include "policy/arc.h"

struct smtp_arc;
struct dns_resolver;
struct event_base;
struct worker;
struct pool;
struct conf_dkim_key;

/*
 * Takes hdr (len bytes, malloc'd: the header block, no blank line; the body
 * is body_len bytes) and starts validating it: key lookups on res (NULL:
 * every key is a temporary failure) within timeout_ms, the signatures
 * checked on pool when the message is large (NULL pool: on the loop). seal:
 * the body pass also hashes what a seal needs (smtp_arc_seal). The result
 * waits for the body: feed smtp_arc_body, then call smtp_arc_body_end
 * (always, even when smtp_arc_body gave NULL). done(arg) runs on w once
 * the result is in, and only when smtp_arc_busy said true after this call
 * or after smtp_arc_body_end (it never runs from inside either). NULL on
 * ENOMEM (hdr freed).
 */
struct smtp_arc *smtp_arc_start(char *hdr, size_t len, size_t body_len, struct dns_resolver *res,
                                struct event_base *base, struct worker *w, struct pool *pool,
                                unsigned timeout_ms, bool seal, void (*done)(void *arg), void *arg);

/* The body hashes to feed (dkim_body_feed; on one thread at a time, a pool
 * thread included), or NULL when none is needed. */
struct dkim_body *smtp_arc_body(struct smtp_arc *a);
/* On the owner's worker, after the body was fed (or not needed): the
 * signatures are checked now or by a pool job (smtp_arc_busy). */
void smtp_arc_body_end(struct smtp_arc *a);

/* For a message without any ARC field that we do not seal: the result
 * none, without copying anything. NULL on ENOMEM. */
struct smtp_arc *smtp_arc_none(void);

/* Whether the header block hdr..len has a field whose name starts with
 * "ARC-" (any case). Pure. */
bool smtp_arc_has_fields(const char *hdr, size_t len);

/* Whether a lookup or a pool job still runs (validation or sealing). */
bool smtp_arc_busy(const struct smtp_arc *a);

/* The validation result, once smtp_arc_busy is false. */
const struct arc_result *smtp_arc_result(const struct smtp_arc *a);

/* The header block given to start; NULL (and *len 0) from smtp_arc_none. */
const char *smtp_arc_message(const struct smtp_arc *a, size_t *len);

/*
 * Seals the message (header copy, and the body hash of the pass asked for
 * with seal at start) on pool with key (its file is read, RSA only:
 * RFC 8617 signs with rsa-sha256) and authres, our Authentication-Results
 * field as authres_build wrote it (the AAR payload is its value,
 * unfolded). done(arg) as for start. TERN_OK (busy until done), TERN_EINVAL
 * while busy, after a seal, or without a pool; TERN_ENOMEM.
 */
int smtp_arc_seal(struct smtp_arc *a, const struct conf_dkim_key *key, const char *authres,
                  size_t authres_len);

/*
 * After the seal's done: TERN_OK with the ARC Set fields (*set, *set_len;
 * owned by a; NULL/0 when nothing was to be added, RFC 8617 §5.1 step 2),
 * or the error, with a few words in *why for the log.
 */
int smtp_arc_sealed(const struct smtp_arc *a, const char **set, size_t *set_len, const char **why);

/*
 * For check-config: whether the arc.seal_domain key loads and is RSA (what
 * a seal needs; the daemon reads it at each seal). True when there is no
 * sealing or the key is fine; false with the reason in err.
 */
struct tern_config;
bool smtp_arc_key_usable(const struct tern_config *c, char *err, size_t errlen);

/* Cancels lookups; a running pool job keeps the object until it ends. NULL
 * is fine. done never runs after this. */
void smtp_arc_free(struct smtp_arc *a);
/* Cancels lookups and whatever the body's end would start, keeping the
 * object (the owner's own job still feeds smtp_arc_body): done never runs
 * after this; free it later with smtp_arc_free. NULL is fine. */
void smtp_arc_stop(struct smtp_arc *a);

#endif
