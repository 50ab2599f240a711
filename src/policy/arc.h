/*
 * arc.h — Authenticated Received Chain (RFC 8617): chain validation and
 * sealing, on top of the DKIM code (dkim.h): its tag-list parser,
 * canonicalization, key records, key loading, crypto and key-query style.
 * No I/O of its own.
 *
 *   - the validator: an explicit state machine, like dkim_verify. It is
 *     given the whole message, checks the structure of the ARC Sets
 *     (RFC 8617 §5.2 steps 1-3) at once, names the key records it needs,
 *     is resumed with the answers, and gives cv= none / pass / fail with
 *     the oldest-pass instance (§5.2 step 5). The daemon drives its lookups
 *     on the async resolver (arc_verify_dns_start); tests and `tern arc
 *     verify --dns-file` answer from a struct dkim_keytab.
 *   - the sealer: message + key + the cv the validator found + the
 *     authres-payload -> a new ARC Set (AAR, AMS, AS) to put on top. Pure
 *     CPU: run it on the thread pool.
 *
 * Messages are in wire form: CRLF line ends, no dot-stuffing.
 * Threads: a verifier belongs to one thread at a time.
 */
#ifndef TERN_POLICY_ARC_H
#define TERN_POLICY_ARC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy/dkim.h"

#define ARC_MAX_SETS 50 /* RFC 8617 §4.2.1: instances 1..50 */

enum arc_cv {
	ARC_CV_NONE = 0, /* no ARC Set on the message */
	ARC_CV_PASS,
	ARC_CV_FAIL,
};

/* "none", "pass", "fail": the A-R arc= result and the AS cv= value. */
const char *arc_cv_name(enum arc_cv cv);

struct arc_result {
	enum arc_cv cv;
	char reason[160];     /* why it failed ("ARC-Seal i=2: signature did not verify"); "" else.
	                         An array, so a copy of the result outlives the verifier */
	bool temporary;       /* failed only because a key could not be fetched now */
	unsigned n_sets;      /* N, the highest instance (0 with cv none, or when unknown) */
	unsigned oldest_pass; /* §5.2 step 5: lowest instance whose AMS and all newer ones
	                         verify, 0 when all do; meaningful with cv pass only */
	bool latest_cv_fail;  /* the newest AS says cv=fail: a sealer adds nothing (§5.1 step 2) */
	char sealer[DKIM_DOMAIN_MAX + 1];     /* d= of the newest AS ("" if none): DMARC's
	                                         trusted-sealer check reads it with cv pass */
	char ams_domain[DKIM_DOMAIN_MAX + 1]; /* d= of the newest AMS ("" if none) */
};

/* ------------------------------------------------------------ validator */

enum arc_verify_state {
	ARC_VS_INPUT,   /* waiting for arc_verify_input */
	ARC_VS_WAITING, /* key queries outstanding */
	ARC_VS_READY,   /* every answer in: call arc_verify_finish */
	ARC_VS_DONE,    /* result available */
};

struct arc_verify;

/* NULL on ENOMEM. (t= is not judged: RFC 8617 gives it no meaning for validity.) */
struct arc_verify *arc_verify_new(void);
void arc_verify_free(struct arc_verify *v);

/*
 * INPUT -> WAITING (or READY / DONE when no key is needed: no chain, or a
 * structure that already fails). msg: header block, blank line, body; the
 * header block is copied, the body hashed here (arc_verify_headers, then
 * the body fed and ended). TERN_OK; TERN_ELIMIT (a header over
 * DKIM_VERIFY_MAX_HEADER bytes or DKIM_VERIFY_MAX_FIELDS fields: the caller
 * reports fail or none as it sees fit); TERN_ENOMEM; TERN_EINVAL if not in
 * INPUT.
 */
int arc_verify_input(struct arc_verify *v, const char *msg, size_t len);

/*
 * The same in two steps, for a body that is large or not in memory (a
 * spilled message's mapping): the header block hdr[0..len) (every field
 * with its CRLF, the blank line excluded) is copied and judged as by
 * arc_verify_input; then the body goes through arc_verify_body (on any one
 * thread at a time, in pieces: dkim_body_feed) and arc_verify_body_end.
 * The state is READY only once the keys are in AND the body ended. Errors
 * as arc_verify_input; TERN_EINVAL when headers were given already.
 */
int arc_verify_headers(struct arc_verify *v, const char *hdr, size_t len);
/* The body hashes to feed (every AMS's, and the seal's: arc_verify_seal_body),
 * or NULL when none is needed (no chain, a broken structure, or fed already). */
struct dkim_body *arc_verify_body(struct arc_verify *v);
/* On the owner's thread, after the last dkim_body_update (or none); once. */
void arc_verify_body_end(struct arc_verify *v);

/*
 * Before the body is fed: the same pass also hashes the body as a sealer's
 * ARC-Message-Signature needs it (relaxed, whole body), whatever the chain;
 * after arc_verify_body_end, arc_verify_seal_bh writes that bh= (base64, 44
 * chars and a NUL) for arc_seal_header. TERN_OK; TERN_ENOMEM; TERN_EINVAL
 * (after the body ended / seal_bh: not asked or not ended); TERN_EIO.
 */
int arc_verify_seal_body(struct arc_verify *v);
int arc_verify_seal_bh(const struct arc_verify *v, char out[45]);

/* As dkim_verify_next_query / _key_answer / _expire / _pending. */
const char *arc_verify_next_query(struct arc_verify *v, unsigned *qid);
void arc_verify_key_answer(struct arc_verify *v, unsigned qid, enum dkim_lookup st,
                           const char *const *txt, size_t n);
void arc_verify_expire(struct arc_verify *v);
size_t arc_verify_pending(const struct arc_verify *v);
enum arc_verify_state arc_verify_state(const struct arc_verify *v);

/* READY -> DONE: the signatures (§5.2 steps 4-7): the body hashed once for
 * every AMS, each AS's input hashed in one running pass. TERN_OK (out of
 * memory inside shows as cv fail with temporary set); TERN_EINVAL if not
 * READY. */
int arc_verify_finish(struct arc_verify *v);
/* Valid in DONE until free. */
const struct arc_result *arc_verify_result(const struct arc_verify *v);

/* A synchronous lookup: must call arc_verify_key_answer before it returns. */
typedef void (*arc_lookup_fn)(void *arg, struct arc_verify *v, unsigned qid, const char *name);
/* An arc_lookup_fn answering from arg, a struct dkim_keytab. */
void arc_keytab_lookup(void *arg, struct arc_verify *v, unsigned qid, const char *name);

/* Runs v (fresh) over msg in one go: input, every lookup through fn,
 * expire, finish. For tests and the CLI. TERN_OK or as arc_verify_input. */
int arc_verify_message(struct arc_verify *v, const char *msg, size_t len, arc_lookup_fn fn,
                       void *arg);

/* Drives v's queries on the async resolver, as dkim_verify_dns_start (the
 * same driver): done(arg) runs on res's thread once no query is pending,
 * never from inside this call; then call arc_verify_finish. Free the
 * handle with dkim_dns_free. NULL on ENOMEM. */
struct dns_resolver;
struct event_base;
struct dkim_dns *arc_verify_dns_start(struct arc_verify *v, struct dns_resolver *res,
                                      struct event_base *base, unsigned timeout_ms,
                                      void (*done)(void *arg), void *arg);

/* --------------------------------------------------------------- sealer */

struct arc_seal_params {
	const char *domain;   /* d= of both AMS and AS (required) */
	const char *selector; /* s= (required) */
	int64_t timestamp;    /* t=: seconds, or DKIM_SIGN_TIME_NOW / DKIM_SIGN_NO_TIME */
	/* AMS h=, in order; NULL: dkim_sign_params_init's list (what DKIM signs).
	 * ARC-* and Authentication-Results are refused (§4.1.2). */
	const char *const *headers;
	size_t n_headers;
	/* The AAR's authres-payload: "authserv-id; method=result ...; ..." as
	 * our own Authentication-Results says it (arc= included), unfolded. */
	const char *authres;
	/* The ValiMail suite's layout: tags sorted by name, one line, one space
	 * after each ';'. false: i= first, as RFC 8617's ABNF writes it, folded
	 * under 78 columns. */
	bool sorted_tags;
};

/*
 * Seals msg: the new ARC Set's instance is one more than the highest on
 * the message, its AS says cv (what arc_verify found for this message;
 * ARC_CV_NONE when there is no chain), and with cv fail the AS covers only
 * the new set (§5.1.2). *out gets "ARC-Seal: ...\r\nARC-Message-Signature:
 * ...\r\nARC-Authentication-Results: ...\r\n" (malloc'd) to put on top of
 * the message; AMS and AS are relaxed/relaxed.
 * Nothing is added (TERN_OK, *out NULL, *outlen 0) when the newest AS
 * already says cv=fail (§5.1 step 2), when the chain already has
 * ARC_MAX_SETS sets, or when cv is none but the message has a chain.
 * TERN_EINVAL: bad params (names, a forbidden header, no authres, an
 * authres with CR or LF); TERN_ELIMIT; TERN_ENOMEM; TERN_EIO (OpenSSL).
 */
int arc_seal(const struct dkim_key *key, const struct arc_seal_params *p, enum arc_cv cv,
             const char *msg, size_t len, char **out, size_t *outlen);

/* As arc_seal, with the header block hdr[0..len) only (the blank line
 * excluded) and the body's relaxed bh= already computed (arc_verify_seal_bh
 * or dkim_body_hash_b64): a large body is never read here. */
int arc_seal_header(const struct dkim_key *key, const struct arc_seal_params *p, enum arc_cv cv,
                    const char *hdr, size_t len, const char *bh, char **out, size_t *outlen);

/* ------------------------------------------------- trusted sealers (§7.2) */

struct arc_trust_query {
	const char *const *trusted; /* sealer domains (ARC-Seal d=) we trust */
	size_t n_trusted;
	const char *from_domain; /* the Author Domain DMARC failed for, lowercase */
	unsigned lowest;         /* the oldest instance to read: the validator's
	                            oldest_pass (0 reads every set) */
};

struct arc_trust {
	unsigned instance;                /* the set whose AAR vouched */
	char sealer[DKIM_DOMAIN_MAX + 1]; /* its ARC-Seal d=, lowercased */
	const char *what;                 /* "dmarc=pass", "dkim=pass" or "spf=pass" (static) */
};

/*
 * Whether a trusted sealer recorded, in its ARC-Authentication-Results, a
 * pass for from_domain: dmarc=pass with header.from, dkim=pass with
 * header.d, or spf=pass with the smtp.mailfrom domain equal to it (exact,
 * case-insensitive: no organizational-domain alignment). Sets are read
 * newest first down to q->lowest; the first that vouches fills out. Call it
 * only for a chain arc_verify found to pass: it checks no signature. hdr is
 * a header block (as for arc_verify_input). Pure; false on ENOMEM.
 */
bool arc_trusted_pass(const char *hdr, size_t len, const struct arc_trust_query *q,
                      struct arc_trust *out);

/* ------------------------------------------------------- pure helpers */

/*
 * The instance of one ARC header field's value (after the colon): for an
 * AAR, "i=N;" must open it (CFWS allowed around); for AMS/AS (aar false),
 * the i= tag anywhere in the tag list. 1..50, or 0 when absent or invalid.
 * Pure; fuzzed.
 */
unsigned arc_instance(const char *value, size_t len, bool aar);

#endif
