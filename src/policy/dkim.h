/*
 * dkim.h — DKIM signing and verification (RFC 6376, with RFC 8463's
 * ed25519-sha256 and RFC 8301's crypto rules), on OpenSSL, with no I/O of
 * its own except reading a key file the config names.
 *
 * Layers, bottom up:
 *   - pure parsers: the tag=value list, the DKIM-Signature value, the key
 *     record; header-field and body canonicalization. Unit-tested and fuzzed
 *     (tests/fuzz/fuzz_dkim_{sig,key,canon}.c).
 *   - keys: private keys from PEM (PKCS#1 or PKCS#8; RSA or Ed25519), their
 *     DNS records, generation; a keyring built from `dkim { keys = [...] }`.
 *   - the signer: message bytes + key + parameters -> one DKIM-Signature
 *     field. CPU only (no lock, no I/O): run it on the thread pool.
 *   - the verifier: an explicit state machine. It reads the header block,
 *     names the key records it needs, is resumed with the answers, hashes
 *     the body in chunks, and gives one result per signature. The daemon
 *     drives its lookups on the async resolver with a per-message deadline
 *     (dkim_verify_dns_start); tests and `tern dkim verify --dns-file`
 *     answer from a fixed table (struct dkim_keytab).
 *
 * Messages are in wire form: CRLF line ends, no dot-stuffing. A bare CR or
 * LF is an ordinary byte, never a line end.
 *
 * Threads: a struct dkim_key (and a keyring) is immutable once loaded and
 * may sign on many threads at once. A signer or verifier belongs to one
 * thread at a time, except that its struct dkim_body may be fed on one
 * other thread (a pool job) while the owner answers key queries; the owner
 * calls *_body_end only after that job has completed.
 */
#ifndef TERN_POLICY_DKIM_H
#define TERN_POLICY_DKIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

struct conf_dkim;
struct dns_resolver;
struct event_base;

/* ---------------------------------------------------------------- words */

enum dkim_alg {
	DKIM_ALG_RSA_SHA256 = 1,
	DKIM_ALG_ED25519_SHA256 = 2,
};

enum dkim_canon {
	DKIM_CANON_SIMPLE = 0,
	DKIM_CANON_RELAXED = 1,
};

/* One signature's outcome, named as RFC 8601 §2.7.1 names them. */
enum dkim_status {
	DKIM_PASS = 0,  /* verified */
	DKIM_FAIL,      /* the body hash or the signature did not verify */
	DKIM_NEUTRAL,   /* the signature cannot be used as written: syntax, version,
	                   unknown algorithm or canonicalization, i= outside d=,
	                   From not in h= */
	DKIM_TEMPERROR, /* the key could not be fetched now (DNS trouble, deadline) */
	DKIM_PERMERROR, /* no usable key: none published, bad record, revoked,
	                   wrong type, restricted by its h= or s= */
	DKIM_POLICY,    /* maybe valid, but not acceptable: rsa-sha1 or an RSA key
	                   under 1024 bits (RFC 8301), expired (x=), signed in the
	                   future (t=), key t=s with i= in a subdomain, body content
	                   after l= left unsigned, beyond the signature limit */
};

/* "pass", "fail", "neutral", "temperror", "permerror", "policy". */
const char *dkim_status_name(enum dkim_status s);

#define DKIM_DOMAIN_MAX 253
#define DKIM_SELECTOR_MAX 253
#define DKIM_AUID_MAX 512
#define DKIM_H_MAX 256          /* names in one h= */
#define DKIM_SIG_BYTES_MAX 1024 /* b=: an 8192-bit RSA signature */
#define DKIM_TAGS_MAX 64        /* tags in one list */
#define DKIM_FIELD_MAX 65536    /* one DKIM-Signature field, bytes */
#define DKIM_KEYREC_MAX 8192    /* one key record, bytes */
#define DKIM_PUBKEY_MAX 2048    /* decoded p= */
#define DKIM_RSA_MIN_BITS 1024  /* RFC 8301: smaller keys never sign or verify */
#define DKIM_RSA_GOOD_BITS 2048 /* signing keys under this get a warning */
#define DKIM_RSA_MAX_BITS 8192  /* bigger keys are refused (cost) */

/* -------------------------------------------------- pure: tag=value lists */

/*
 * One tag of a list (RFC 6376 §3.2). name and value point into the parsed
 * text; value has no surrounding whitespace but keeps its inner FWS.
 * raw_start..raw_end are offsets of everything between the '=' and the ';'
 * (or the end): what a verifier blanks to empty b= (§3.7).
 */
struct dkim_tag {
	struct strv name;
	struct strv value;
	size_t raw_start, raw_end;
};

struct dkim_taglist {
	struct dkim_tag tag[DKIM_TAGS_MAX];
	size_t n;
};

/*
 * Parses a tag-list (s, len need not be NUL-terminated). Whitespace is SP,
 * HTAB, or CRLF followed by SP/HTAB (folding); a CRLF not followed by one
 * is an error. Values may hold 8-bit bytes (RFC 8616). An empty tag-spec
 * (";;"), a duplicate name or more than DKIM_TAGS_MAX tags is an error.
 * TERN_OK, or TERN_ESYNTAX with a reason (static text) in *why. Pure.
 */
int dkim_tags_parse(const char *s, size_t len, struct dkim_taglist *out, const char **why);
/* The tag called name (case-sensitive, as tags are), or NULL. */
const struct dkim_tag *dkim_tags_find(const struct dkim_taglist *l, const char *name);

/* ------------------------------------------- pure: the DKIM-Signature value */

struct dkim_sig {
	struct dkim_taglist tags; /* as parsed; names and values point into the input */
	enum dkim_alg alg;
	enum dkim_canon hcanon, bcanon;
	char algorithm[32];               /* a= as written (truncated), for results */
	char domain[DKIM_DOMAIN_MAX + 1]; /* d=, as written */
	char selector[DKIM_SELECTOR_MAX + 1];
	char auid[DKIM_AUID_MAX + 1]; /* i= decoded, or "@" d= when absent */
	struct strv h[DKIM_H_MAX];    /* h= names, in order, into the input */
	size_t n_h;
	uint8_t bh[32];
	uint8_t b[DKIM_SIG_BYTES_MAX];
	size_t b_len;
	char b64[DKIM_SIG_BYTES_MAX * 4 / 3 + 4]; /* b= without whitespace */
	bool has_l, has_t, has_x;
	uint64_t l, t, x;
};

/*
 * Parses and validates the value of a DKIM-Signature field (everything
 * after the colon, without the final CRLF) as RFC 6376 §3.5 and §6.1.1 say:
 * every required tag (v a b bh d h s), v=1, a supported a= (rsa-sha256,
 * ed25519-sha256), c=, d= and s= as DNS names, h= naming From, i= within
 * d=, l= t= x= digits (x > t), q= offering dns/txt, base64 b= and bh=.
 * TERN_OK; or TERN_ESYNTAX with *st (DKIM_NEUTRAL, or DKIM_POLICY for
 * rsa-sha1) and a reason in *why. Fields that parsed before the error
 * (d=, s=, b=, a=) are filled in either way, for the result. Pure; out
 * points into value, which must outlive it.
 */
int dkim_sig_parse(const char *value, size_t len, struct dkim_sig *out, enum dkim_status *st,
                   const char **why);

/* ----------------------------------------------- pure: the key record */

enum dkim_keytype { DKIM_KEY_RSA = 1, DKIM_KEY_ED25519 = 2 };

struct dkim_keyrec {
	enum dkim_keytype type;     /* k=, default rsa */
	bool sha256_ok;             /* h= absent or listing sha256 */
	bool email_ok;              /* s= absent or listing email or * */
	bool testing;               /* t=y */
	bool strict;                /* t=s: i= must be in d= itself, not a subdomain */
	bool revoked;               /* p= empty */
	uint8_t p[DKIM_PUBKEY_MAX]; /* decoded p= */
	size_t p_len;
};

/*
 * Parses one key record (a TXT record's strings, concatenated; RFC 6376
 * §3.6.1, RFC 8463 §4.2): v= (if present, first and "DKIM1"), h=, k= (rsa
 * or ed25519; any other is an error), p= (required, base64 with FWS), s=,
 * t=, and n= (ignored). TERN_OK or TERN_ESYNTAX with a reason. Pure.
 */
int dkim_keyrec_parse(const char *txt, size_t len, struct dkim_keyrec *out, const char **why);

/* ------------------------------------------------ pure: canonicalization */

/*
 * Appends the canonical form of one header field (RFC 6376 §3.4.1/3.4.2) to
 * out. field is the whole field, "Name: value" with its folding and its
 * final CRLF (added when missing). Simple copies it; relaxed lowercases the
 * name, unfolds, turns WSP runs into one SP, and drops WSP at the end and
 * around the colon. TERN_OK or a buffer error (out unchanged).
 */
int dkim_canon_header(enum dkim_canon c, const char *field, size_t len, struct tbuf *out);

/* Appends the canonical form of a whole body (§3.4.3/3.4.4) to out. Same
 * result as feeding a struct dkim_body in any chunks. */
int dkim_canon_body(enum dkim_canon c, const char *body, size_t len, struct tbuf *out);

/*
 * The body side of a signer or verifier: canonicalizes and hashes the body
 * as it arrives, for every (canonicalization, l=) its signatures need.
 * Chunks may split anywhere, CRLF included. Feed it on any one thread at a
 * time; the owner ends it (dkim_signer_finish / dkim_verify_body_end).
 */
struct dkim_body;
void dkim_body_update(struct dkim_body *b, const void *p, size_t n);

/* Pieces dkim_body_feed hashes between two releases of a mapping's pages. */
#define DKIM_BODY_PIECE (1024u * 1024u)

/*
 * Feeds body p[0..n) to every non-NULL b[0..nb) in DKIM_BODY_PIECE pieces:
 * one pass over the bytes however many hashes read them. With mapped (p is
 * a read-only mapping of a file: a spilled message, smtp/data_stream.h),
 * the whole pages of each piece leave the process once every hash has read
 * them (madvise MADV_DONTNEED: the file and the page cache keep them), so
 * RSS stays at about a piece whatever the size of the body. Never mapped
 * for heap memory: its released pages would read back as zeros.
 */
void dkim_body_feed(struct dkim_body *const *b, size_t nb, const char *p, size_t n, bool mapped);

/* The bh= value of a whole body (base64 of SHA-256, 44 chars + NUL into out).
 * TERN_OK or TERN_EIO if OpenSSL failed. */
int dkim_body_hash_b64(enum dkim_canon c, const char *body, size_t len, char out[45]);

/*
 * Splits a message into its header block (every field with its CRLF, the
 * blank line excluded) and its body (after the blank line). A message
 * without a blank line is all header, with an empty body. Pure.
 */
void dkim_split_message(const char *msg, size_t len, size_t *hdr_len, size_t *body_off);

/* ------------------------------------------------------------------ keys */

struct dkim_key;

/*
 * Reads a private key from PEM text: "RSA PRIVATE KEY" (PKCS#1) or
 * "PRIVATE KEY" (PKCS#8), RSA or Ed25519; encrypted keys are refused (the
 * daemon has no one to ask for a passphrase). RSA keys under 1024 bits or
 * over 8192 are refused (TERN_EINVAL). If warn is not NULL and the key
 * is weak (RSA under 2048 bits), a sentence goes there (else warn[0] = 0).
 * TERN_OK; TERN_EINVAL with err; TERN_ENOMEM.
 */
int dkim_key_from_pem(const char *pem, size_t len, struct dkim_key **out, char *warn,
                      size_t warnlen, char *err, size_t errlen);

/*
 * Loads path through tern_file_read (the privileged parent's bundle when
 * split, core/files.h) and checks its mode: a key readable or writable by
 * others, or writable by its group, is refused; a key readable by its
 * group loads with a warning (0600 or 0400 is expected). When the file
 * cannot be stat()ed (the unprivileged child cannot search the key's
 * directory), only the parent could read it and the check passes. Then as
 * dkim_key_from_pem; warnings (mode, size) go to warn.
 */
int dkim_key_load(const char *path, struct dkim_key **out, char *warn, size_t warnlen, char *err,
                  size_t errlen);

/* A new key: RSA of bits (1024..4096; 0 = 2048) or Ed25519 (bits ignored).
 * TERN_OK, TERN_EINVAL (bits out of range), TERN_EIO (OpenSSL). */
int dkim_key_generate(enum dkim_alg alg, unsigned bits, struct dkim_key **out);
/* The key as PKCS#8 PEM (malloc'd; the caller wipes and frees it). */
int dkim_key_pem(const struct dkim_key *k, char **out, size_t *outlen);
enum dkim_alg dkim_key_alg(const struct dkim_key *k);
/* RSA modulus bits; 256 for Ed25519. */
unsigned dkim_key_bits(const struct dkim_key *k);
/* The key record to publish: "v=DKIM1; k=rsa; p=..." (malloc'd). RSA keys
 * publish a SubjectPublicKeyInfo, Ed25519 keys the raw 32 bytes (RFC 8463). */
int dkim_key_record(const struct dkim_key *k, char **out);
void dkim_key_free(struct dkim_key *k);

/*
 * Whether a published key record carries k's public key (as `tern dkim
 * check` asks): true, or false with *why ("not a DKIM key record: ...",
 * "revoked (empty p=)", "a different key", "k=rsa, but the key is
 * ed25519", ...). The record may hold the RSA key as SubjectPublicKeyInfo or
 * as a bare RSAPublicKey.
 */
bool dkim_key_matches_record(const struct dkim_key *k, const char *record, const char **why);

/*
 * The record as zone-file text, "SELECTOR._domainkey.DOMAIN. IN TXT ( "..."
 * "..." )" with every string at most 255 bytes (RFC 1035 §3.3.14), ending in
 * a newline. Pure; malloc'd.
 */
int dkim_zone_text(const char *selector, const char *domain, const char *record, char **out);

/* ---------------------------------------------------------------- signer */

#define DKIM_SIGN_TIME_NOW (-1) /* t= is the time of signing */
#define DKIM_SIGN_NO_TIME (-2)  /* no t= (and no x=) */

struct dkim_sign_params {
	const char *domain;   /* d= (required) */
	const char *selector; /* s= (required) */
	enum dkim_canon hcanon, bcanon;
	int64_t timestamp; /* t=: seconds, DKIM_SIGN_TIME_NOW or DKIM_SIGN_NO_TIME */
	uint32_t expire;   /* x= = t= + expire when non-zero */
	const char *auid;  /* i=, or NULL (verifiers then read "@" d=) */
	/* h= exactly these names in this order; NULL: tern's list (below). */
	const char *const *headers;
	size_t n_headers;
};

/*
 * Defaults: relaxed/relaxed, t= now, no x=, no i=, tern's header list:
 * From, Subject, To, Cc, Date, Message-ID, Reply-To, MIME-Version,
 * Content-Type, Content-Transfer-Encoding, List-Unsubscribe and
 * List-Unsubscribe-Post are signed once per instance present plus once
 * more (so a copy added later breaks the signature, and so does adding
 * one that was absent); Sender, In-Reply-To, References, the other List-*
 * fields, Resent-* fields, Content-ID and Content-Description once per
 * instance present.
 */
void dkim_sign_params_init(struct dkim_sign_params *p, const char *domain, const char *selector);

/*
 * Signs msg (header block + blank line + body, CRLF) with key. *out gets one
 * "DKIM-Signature: ...\r\n" field (folded under 80 columns, malloc'd) to put
 * on top of the message. Pure CPU: call it on the thread pool.
 * TERN_OK; TERN_EINVAL (the message has no From field, or bad params: a
 * domain or selector that is not a DNS name, a header name that is not
 * one); TERN_ELIMIT (a header over DKIM_VERIFY_MAX_HEADER bytes or
 * DKIM_VERIFY_MAX_FIELDS fields, or more than DKIM_H_MAX field instances
 * to sign); TERN_ENOMEM; TERN_EIO (OpenSSL failed).
 */
int dkim_sign(const struct dkim_key *key, const struct dkim_sign_params *p, const char *msg,
              size_t len, char **out, size_t *outlen);

/* The same in steps, for a body streamed in chunks. p and key must outlive s. */
struct dkim_signer;
struct dkim_signer *dkim_signer_new(const struct dkim_key *key, const struct dkim_sign_params *p);
/* The header block (fields with their CRLFs; the blank line may follow). */
int dkim_signer_headers(struct dkim_signer *s, const char *hdr, size_t len);
struct dkim_body *dkim_signer_body(struct dkim_signer *s);
/* Ends the body and signs: as dkim_sign. */
int dkim_signer_finish(struct dkim_signer *s, char **out, size_t *outlen);
void dkim_signer_free(struct dkim_signer *s);

/*
 * The bottom layer, for a caller that wrote the tag list itself (the RFC
 * 8463 vector, ARC-Message-Signature later): value is the complete value
 * of a field called name, with bh= filled in and b= present (its value is
 * ignored); hdr is the message's header block. Computes the header hash
 * over the fields value's h= and c= select, then the signature: *b64 gets
 * b= (malloc'd, no whitespace). TERN_OK, TERN_EINVAL (value does not parse
 * or has no b=), TERN_ENOMEM, TERN_EIO.
 */
int dkim_sign_value(const struct dkim_key *key, const char *name, const char *value, size_t vlen,
                    const char *hdr, size_t hlen, char **b64);

/* --------------------------------------------------------------- keyring */

struct dkim_keyring_key {
	const char *domain; /* lowercase */
	const char *selector;
	const char *key_file;
	struct dkim_key *key;
};

struct dkim_keyring;

/*
 * Loads every key of the config's dkim section (dkim_key_load each). A key
 * that does not load fails the whole ring: a daemon must not start (or
 * reload) half-signing. warn(arg, text) is called for each warning (weak
 * key, group-readable file). TERN_OK; TERN_EINVAL with err naming the
 * file; TERN_ENOMEM.
 */
int dkim_keyring_load(const struct conf_dkim *c, struct dkim_keyring **out,
                      void (*warn)(void *arg, const char *text), void *arg, char *err,
                      size_t errlen);
void dkim_keyring_free(struct dkim_keyring *kr);
size_t dkim_keyring_count(const struct dkim_keyring *kr);
const struct dkim_keyring_key *dkim_keyring_get(const struct dkim_keyring *kr, size_t i);

/*
 * Which domain's keys sign mail from domain: domain itself if it has keys,
 * else its nearest parent that has (d=example.org for mail from
 * news.example.org aligns under DMARC's relaxed mode). NULL if none.
 */
const char *dkim_keyring_domain_for(const struct dkim_keyring *kr, const char *domain);

/*
 * Signs msg with every key of dkim_keyring_domain_for(from_domain), in
 * config order, the body hashed once. *out holds the fields, newest first,
 * to put on top of the message (so an RSA and an Ed25519 key give two
 * fields); *outlen is 0 and *out NULL when no key applies. timestamp as in
 * struct dkim_sign_params. Pure CPU: call it on the thread pool.
 */
int dkim_keyring_sign(const struct dkim_keyring *kr, const char *from_domain, const char *msg,
                      size_t len, int64_t timestamp, char **out, size_t *outlen);
/* As dkim_keyring_sign; with mapped, msg is a file mapping whose body pages
 * are released as the hash passes them (dkim_body_feed). */
int dkim_keyring_sign_mapped(const struct dkim_keyring *kr, const char *from_domain,
                             const char *msg, size_t len, int64_t timestamp, bool mapped,
                             char **out, size_t *outlen);

/* -------------------------------------------------------------- verifier */

#define DKIM_VERIFY_MAX_SIGS 10     /* default signature budget per message */
#define DKIM_VERIFY_MAX_FIELDS 5000 /* header fields looked at */
#define DKIM_VERIFY_MAX_HEADER (8u << 20)
#define DKIM_KEY_RECORDS_MAX 8 /* TXT records tried per key name */

struct dkim_verify_opts {
	int64_t now;              /* verification time, seconds; 0: time(NULL) at new */
	unsigned max_signatures;  /* evaluated; later ones get policy "not evaluated" */
	uint32_t clock_skew;      /* seconds of slack for t= in the future and x= past */
	bool allow_unsigned_body; /* content after l= : pass (true) or policy (false) */
};

/* now 0, max_signatures DKIM_VERIFY_MAX_SIGS, clock_skew 300, no unsigned body. */
void dkim_verify_opts_init(struct dkim_verify_opts *o);

struct dkim_result {
	enum dkim_status status;
	const char *reason;    /* a short phrase ("body hash did not verify"); "" on pass */
	const char *domain;    /* d= as written; "" if the signature had none */
	const char *selector;  /* s= */
	const char *auid;      /* i= decoded, or "@" d=; "" if unknown */
	const char *b;         /* b= without whitespace; "" if none */
	const char *algorithm; /* a= as written */
	unsigned key_bits;     /* of the key used; 0 when none was */
	bool testing;          /* the key says t=y: treat the message as unsigned */
	bool body_limited;     /* l= was present */
	uint64_t body_signed;  /* l= */
	uint64_t body_length;  /* canonical body bytes seen; more than l= means unsigned content */
};

/* The verifier's states, in order. dkim_verify_state says where it is. */
enum dkim_verify_state {
	DKIM_VS_HEADERS, /* waiting for dkim_verify_headers */
	DKIM_VS_WAITING, /* waiting for key answers and/or the end of the body */
	DKIM_VS_READY,   /* every input in: call dkim_verify_finish */
	DKIM_VS_DONE,    /* results available */
};

/* How a key lookup ended (what a resolver says, in DKIM's words). */
enum dkim_lookup {
	DKIM_LOOKUP_OK,       /* txt[0..n) are the records */
	DKIM_LOOKUP_NOTFOUND, /* NXDOMAIN or no TXT record: permerror "no key" */
	DKIM_LOOKUP_TEMPFAIL, /* SERVFAIL, timeout, bogus DNSSEC: temperror */
};

struct dkim_verify;

/* opts NULL: the defaults. NULL on ENOMEM. */
struct dkim_verify *dkim_verify_new(const struct dkim_verify_opts *opts);
void dkim_verify_free(struct dkim_verify *v);

/*
 * HEADERS -> WAITING. Copies the header block (fields with their CRLFs;
 * the blank line may follow) and parses every DKIM-Signature field in it;
 * signatures that do not parse, or are expired, get their result at once
 * and do not count against max_signatures. TERN_OK; TERN_ELIMIT (a header
 * over DKIM_VERIFY_MAX_HEADER bytes or DKIM_VERIFY_MAX_FIELDS fields: the
 * caller reports temperror or none as it sees fit); TERN_ENOMEM; TERN_EINVAL
 * if not in HEADERS. After an error the verifier is only good for
 * dkim_verify_free.
 */
int dkim_verify_headers(struct dkim_verify *v, const char *hdr, size_t len);
/* DKIM-Signature fields found (evaluated or not). */
size_t dkim_verify_count(const struct dkim_verify *v);

/*
 * The next key record to look up: a TXT name (SELECTOR._domainkey.DOMAIN,
 * lowercase, no trailing dot) and, in *qid, the id its answer carries. Each
 * name is asked once, however many signatures use it. NULL when every
 * query has been handed out.
 */
const char *dkim_verify_next_query(struct dkim_verify *v, unsigned *qid);
/* Queries handed out and not answered yet. */
size_t dkim_verify_pending(const struct dkim_verify *v);
/* The answer to query qid (a second answer, or an unknown qid, is ignored).
 * txt[i] are the records, NUL-terminated. */
void dkim_verify_key_answer(struct dkim_verify *v, unsigned qid, enum dkim_lookup st,
                            const char *const *txt, size_t n);
/* The per-message deadline passed: every unanswered query (handed out or
 * not) becomes temperror "key lookup timed out". */
void dkim_verify_expire(struct dkim_verify *v);

/* The body side: feed it (dkim_body_update) with the body, on one thread at
 * a time; valid from dkim_verify_headers until dkim_verify_free. */
struct dkim_body *dkim_verify_body(struct dkim_verify *v);
/* On the owner's thread, after the last dkim_body_update. */
void dkim_verify_body_end(struct dkim_verify *v);

enum dkim_verify_state dkim_verify_state(const struct dkim_verify *v);

/*
 * READY -> DONE: hashes the selected header fields and checks every
 * signature (a few RSA/Ed25519 verifications: cheap, but may run on the
 * pool too). TERN_OK; TERN_EINVAL if not READY.
 */
int dkim_verify_finish(struct dkim_verify *v);

/* Result i (< dkim_verify_count), in header order; valid until free. */
const struct dkim_result *dkim_verify_result(const struct dkim_verify *v, size_t i);
/* For Authentication-Results header.b (RFC 6008): how many leading chars of
 * result i's b= tell it apart from every other result's (at least 8, at
 * most all of it). */
size_t dkim_verify_b_prefix_len(const struct dkim_verify *v, size_t i);

/* A synchronous lookup: must call dkim_verify_key_answer(v, qid, ...) before
 * it returns, or the query times out. */
typedef void (*dkim_lookup_fn)(void *arg, struct dkim_verify *v, unsigned qid, const char *name);

/*
 * Runs v (fresh from dkim_verify_new) over a whole message in one go: the
 * header block, every lookup through fn, the body, expire, finish. For
 * tests and the CLI; the daemon drives the steps itself. TERN_OK or as
 * dkim_verify_headers.
 */
int dkim_verify_message(struct dkim_verify *v, const char *msg, size_t len, dkim_lookup_fn fn,
                        void *arg);

/* ------------------------------------------- key lookups: table and DNS */

/*
 * A fixed table of key records: "NAME VALUE" lines (NAME without trailing
 * dot; the value runs to the end of the line; several lines with one NAME
 * are several TXT records; "NAME TEMPFAIL" makes NAME fail temporarily;
 * '#' lines and blank lines are skipped). What the tests and `tern dkim
 * verify --dns-file` answer from. TERN_OK, TERN_ESYNTAX with err, TERN_ENOMEM.
 */
struct dkim_keytab;
int dkim_keytab_parse(const char *text, size_t len, struct dkim_keytab **out, char *err,
                      size_t errlen);
void dkim_keytab_free(struct dkim_keytab *t);
/*
 * The records t holds for name (case-insensitive): up to max of them into
 * txt (pointers into t), their count in *n. DKIM_LOOKUP_OK; NOTFOUND when
 * t has none; TEMPFAIL for a "NAME TEMPFAIL" line (then *n is 0). Pure.
 * What any key-query state machine (DKIM's, ARC's) answers from.
 */
enum dkim_lookup dkim_keytab_get(const struct dkim_keytab *t, const char *name, const char **txt,
                                 size_t max, size_t *n);
/* A dkim_lookup_fn; arg is the struct dkim_keytab. Missing names are NOTFOUND. */
void dkim_keytab_lookup(void *arg, struct dkim_verify *v, unsigned qid, const char *name);

/*
 * Drives v's key queries on the async resolver res (dns/dns.h), on res's
 * event base and thread: starts every query at once, answers v as replies
 * come, and after timeout_ms calls dkim_verify_expire (0: no deadline but
 * the resolver's own). Once no query is pending, done(arg) runs (on that thread, never from inside
 * this call). The caller still ends the body and calls dkim_verify_finish. NULL on ENOMEM (nothing
 * started).
 */
struct dkim_dns;
struct dkim_dns *dkim_verify_dns_start(struct dkim_verify *v, struct dns_resolver *res,
                                       struct event_base *base, unsigned timeout_ms,
                                       void (*done)(void *arg), void *arg);
/* Cancels what is still pending (done will not run) and frees. NULL is fine. */
void dkim_dns_free(struct dkim_dns *d);

/*
 * The same driver for any machine that asks for key records the way the
 * DKIM verifier does (ARC's, arc.h): next hands out the queries (name
 * stable until the machine is freed), answer takes each reply, expire ends
 * the wait. obj is passed back to each. As dkim_verify_dns_start otherwise;
 * ops must outlive the returned handle.
 */
struct dkim_keyq_ops {
	const char *(*next)(void *obj, unsigned *qid);
	void (*answer)(void *obj, unsigned qid, enum dkim_lookup st, const char *const *txt,
	               size_t n);
	void (*expire)(void *obj);
};
struct dkim_dns *dkim_keyq_dns_start(const struct dkim_keyq_ops *ops, void *obj,
                                     struct dns_resolver *res, struct event_base *base,
                                     unsigned timeout_ms, void (*done)(void *arg), void *arg);

#endif
