/*
 * sign.h — DKIM signing of outgoing mail at receipt (RFC 6376, RFC 8463,
 * RFC 8301), before the spool commit, so the stored message carries its
 * signatures and the 250 (or sendmail's OK) still means "durably stored".
 *
 * Who is signed (the caller decides, with smtp_sign_wanted): a session
 * authenticated with SASL on any listener, `tern sendmail` (submit socket
 * and maildrop), and, with `dkim { sign_relayed = true; }`, a client in
 * relay.networks. Never mail merely received from the internet.
 *
 * Which keys: the domain of the message's single From field picks every
 * key of `dkim { keys }` for that domain or, failing that, for its nearest
 * parent that has keys (policy/dkim.h dkim_keyring_domain_for): mail from
 * news.example.org is signed d=example.org, which aligns under DMARC's
 * relaxed mode. A message with no From field or several is not signed
 * (logged); neither is one whose domain has no key, nor (smtp_sign_submit's
 * owner) a login's message whose From domain is not the login's own.
 *
 * Keys are loaded with the runtime (core/runtime.h) and so reload on
 * SIGHUP. A key that does not load does not stop the daemon: it is
 * logged, and mail that would be signed with it is refused with 451 4.3.0
 * (never accepted unsigned in silence) until the key is fixed.
 */
#ifndef TERN_SMTP_SIGN_H
#define TERN_SMTP_SIGN_H

#include <stdbool.h>
#include <stddef.h>

struct conf_dkim;
struct pool;
struct tbuf;
struct worker;

/* The loaded keys of one runtime: immutable, used on many threads at once. */
struct smtp_signer;

/*
 * Loads every key of c (dkim_key_load each, mode checked). A key that does
 * not load is remembered with its reason and logged (event=dkim_key_error);
 * the others load. *out is NULL when c names no key. TERN_OK or TERN_ENOMEM.
 */
int smtp_signer_load(const struct conf_dkim *c, struct smtp_signer **out);
void smtp_signer_free(struct smtp_signer *sg);
/* Keys configured (loaded or not). 0 for NULL. */
size_t smtp_signer_count(const struct smtp_signer *sg);

enum smtp_sign_status {
	SMTP_SIGN_NONE = 0, /* nothing to sign with, or a message we do not sign (logged) */
	SMTP_SIGN_OK,       /* fields holds one DKIM-Signature per key */
	SMTP_SIGN_ERROR,    /* signing failed: refuse the message with 451 4.3.0 */
};

struct smtp_sign_result {
	enum smtp_sign_status status;
	char *fields; /* OK: "DKIM-Signature: ...\r\n" fields to put on top (malloc'd) */
	size_t len;
	char reason[300]; /* ERROR: words for the reply and the log; NONE: why not */
};

/*
 * Signs msg (header block, blank line, body: the message without our own
 * trace fields) with the keys for its From domain, and logs one line with
 * the queue id: dkim_sign=ok d= s= a= (or =error reason=, or =none reason=
 * when the message cannot be signed). CPU only, no lock, no I/O but the
 * log: run it on a pool thread. r must be cleared with smtp_sign_result_clear.
 */
void smtp_sign_run(const struct smtp_signer *sg, const char *id, const char *msg, size_t len,
                   struct smtp_sign_result *r);
void smtp_sign_result_clear(struct smtp_sign_result *r);

/*
 * smtp_sign_run on pool, then done(arg) on worker w. msg and r must stay
 * put until done runs. mapped: msg is a read-only file mapping (a spilled
 * message, smtp/data_stream.h) whose body pages are released as the hash
 * passes them (dkim_body_feed), so RSS does not grow with the message;
 * never for a buffer. owner, when not NULL, is the domain the sender is
 * known to own (a login's): a From domain that is neither it nor below it
 * is not signed (SMTP_SIGN_NONE, logged reason=from-not-owned; "" owns
 * nothing). TERN_OK, or TERN_ENOMEM / TERN_EINVAL (no pool): done will not
 * run.
 */
int smtp_sign_submit(struct pool *pool, struct worker *w, const struct smtp_signer *sg,
                     const char *id, const char *msg, size_t len, bool mapped, const char *owner,
                     struct smtp_sign_result *r, void (*done)(void *arg), void *arg);

/*
 * Puts r's fields into the message buffer at offset at (after our own
 * Received field, before the client's header): msg grows by r->len.
 * TERN_OK or TERN_ENOMEM / TERN_ELIMIT (msg unchanged).
 */
int smtp_sign_insert(const struct smtp_sign_result *r, struct tbuf *msg, size_t at);

#endif
