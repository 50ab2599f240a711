/*
 * dkim_internal.h — what the dkim_*.c files share and nobody else sees: the
 * header-field index, the body hashers, the header hash, and the crypto
 * primitives over OpenSSL.
 */
#ifndef TERN_POLICY_DKIM_INTERNAL_H
#define TERN_POLICY_DKIM_INTERNAL_H

#include <openssl/evp.h>

#include "policy/dkim.h"

/* ------------------------------------------------------- header fields */

/* One field of a header block: bytes [off, off+len) including its CRLF
 * (when the block had one); name is [off, off+name_len), WSP before the
 * colon excluded. A line with no colon has name_len 0 and matches nothing. */
struct dkim_field {
	size_t off, len, name_len;
};

/* Indexes the fields of hdr[0..len) (stops at a blank line). Returns the
 * count written to out (at most max); *more tells whether fields were left
 * out. With out NULL, only counts (up to max). Pure. */
size_t dkim_fields_index(const char *hdr, size_t len, struct dkim_field *out, size_t max,
                         bool *more);

/* Whether field f of hdr is called name (n bytes), case-insensitively. */
bool dkim_field_is(const char *hdr, const struct dkim_field *f, const char *name, size_t n);

/* Valid DNS name for d= (sub-domain 1*("." sub-domain), letters, digits,
 * hyphens) or, with selector, s= (one label or more; '_' allowed). */
bool dkim_valid_name(const char *s, size_t n, bool selector);
/* A header field name (RFC 5322 ftext: printable ASCII but ':'). */
bool dkim_valid_field_name(const char *s, size_t n);

/* h=: the names of a colon-separated list (FWS around colons dropped) into
 * out (at most max); false with a reason if one is not a field name or there
 * are too many. c=: "h[/b]" (b defaults to simple). */
bool dkim_parse_h(struct strv v, struct strv *out, size_t max, size_t *n, const char **why);
bool dkim_parse_c(struct strv v, enum dkim_canon *hc, enum dkim_canon *bc);

/* Decodes base64 with FWS in it (whitespace dropped first) into out
 * (at most max bytes). true when valid. */
bool dkim_b64_decode(struct strv in, uint8_t *out, size_t max, size_t *outlen);

/* ------------------------------------------------------------ body hash */

/* One (canonicalization, l=) stream. */
struct dkim_bh {
	enum dkim_canon canon;
	bool limited;
	uint64_t limit;
	uint64_t total;   /* canonical bytes produced so far */
	uint64_t pending; /* CRLFs held back: empty lines that may end the body */
	bool wsp;         /* relaxed: WSP held back */
	bool cr;          /* a CR ended the last chunk */
	bool content;     /* relaxed: anything but empty lines produced */
	EVP_MD_CTX *md;
	uint8_t digest[32];
};

struct dkim_body {
	struct dkim_bh *h;
	size_t n;
	bool failed; /* OpenSSL refused an update */
	bool ended;
};

/* Adds a stream (or finds the same one); returns its index or -1 (ENOMEM). */
int dkim_body_add(struct dkim_body *b, enum dkim_canon canon, bool limited, uint64_t limit);
/* Finishes every stream's hash. false if OpenSSL failed anywhere. */
bool dkim_body_finish(struct dkim_body *b);
void dkim_body_clear(struct dkim_body *b);

/* --------------------------------------------------------- header hash */

/*
 * SHA-256 of the header part of a signature (RFC 6376 §3.7 step 2): the
 * fields named by names[0..n) picked from the bottom of hdr up (each field
 * once; skip is a field index never picked, the signature's own, or
 * (size_t)-1), canonicalized with c, then the signature field sigfield
 * (its own text, b= value blanked by the caller, no final CRLF),
 * canonicalized with c and without its CRLF. TERN_OK, TERN_ENOMEM, TERN_EIO.
 */
int dkim_header_hash(enum dkim_canon c, const char *hdr, const struct dkim_field *f, size_t nf,
                     const struct strv *names, size_t n, size_t skip, const char *sigfield,
                     size_t siglen, uint8_t out[32]);

/* ------------------------------------------------------------- crypto */

struct dkim_key {
	EVP_PKEY *pkey;
	enum dkim_alg alg;
	unsigned bits;
};

/* Signs the 32-byte header hash (RSA PKCS#1 v1.5 with SHA-256, or Ed25519
 * over the hash, RFC 8463 §3) into sig (room for DKIM_SIG_BYTES_MAX). */
int dkim_crypto_sign(EVP_PKEY *k, enum dkim_alg alg, const uint8_t hash[32], uint8_t *sig,
                     size_t *siglen);
/* true when sig verifies. */
bool dkim_crypto_verify(EVP_PKEY *k, enum dkim_alg alg, const uint8_t hash[32], const uint8_t *sig,
                        size_t siglen);
/* A public key from a record's p=: SubjectPublicKeyInfo or bare PKCS#1
 * RSAPublicKey for rsa, 32 raw bytes for ed25519. NULL if unusable. */
EVP_PKEY *dkim_pubkey_decode(const struct dkim_keyrec *r);

/* The canonicalization the config chose for the keyring's signatures. */
void dkim_keyring_canon(const struct dkim_keyring *kr, enum dkim_canon *hc, enum dkim_canon *bc);

/* The b= value of value[0..vlen): the tag, or NULL. */
const struct dkim_tag *dkim_value_btag(const struct dkim_taglist *tags);

#endif
