/*
 * sasl_internal.h — the pure parts of the SASL mechanisms (sasl*.c,
 * oauth_jwt.c), exposed for users.c, the unit tests and the fuzz targets.
 * Not a public header: only src/auth/ and tests include it.
 *
 * Every decoder here is a pure function over (pointer, length): no I/O, no
 * allocation unless it says so, input need not be NUL-terminated and may
 * hold anything. Views (struct strv) point into the input.
 */
#ifndef TERN_AUTH_SASL_INTERNAL_H
#define TERN_AUTH_SASL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/auth.h"
#include "core/buf.h"

/* Longest decoded client message: the base64 line limit, decoded. */
#define SASL_MSG_MAX (SASL_LINE_MAX / 4 * 3)
/* Longest password we take (libxcrypt's CRYPT_MAX_PASSPHRASE_SIZE - 1). */
#define SASL_PASS_MAX 511

/* ---- PLAIN (RFC 4616): [authzid] NUL authcid NUL passwd */
struct sasl_plain {
	struct strv authzid, authcid, passwd;
};
/* TERN_OK; TERN_ESYNTAX (not three fields, empty authcid or passwd);
 * TERN_ELIMIT (a field over SASL_ID_MAX / SASL_PASS_MAX). */
int sasl_plain_parse(const char *p, size_t n, struct sasl_plain *out);

/* ---- CRAM-MD5 (RFC 2195) */
#define CRAM_MD5_CONTEXTLEN 32
/* The response "user SP 32-hex-digits" (the last space separates, so a
 * user name may hold spaces). TERN_OK or TERN_ESYNTAX / TERN_ELIMIT. */
int sasl_cram_parse(const char *p, size_t n, struct strv *user, unsigned char digest[16]);
/* Dovecot's {CRAM-MD5} value: 64 hex digits into the 32-byte context
 * (outer then inner MD5 state, each A B C D little-endian). */
int sasl_cram_parse_stored(const char *p, size_t n, unsigned char ctx[CRAM_MD5_CONTEXTLEN]);
/* The context Dovecot stores for password pw. */
int sasl_cram_context(const char *pw, size_t n, unsigned char ctx[CRAM_MD5_CONTEXTLEN]);
/* HMAC-MD5(password, challenge) computed from a stored context. */
int sasl_cram_digest(const unsigned char ctx[CRAM_MD5_CONTEXTLEN], const char *challenge,
                     size_t clen, unsigned char out[16]);
/* For users_verify: does password match a {CRAM-MD5} value? TERN_OK or
 * TERN_EINVAL (also for a malformed value). */
int sasl_cram_check_password(const char *stored, size_t n, const char *password);

/* ---- SCRAM-SHA-256 (RFC 5802, RFC 7677) */
#define SCRAM_KEYLEN 32
#define SCRAM_NONCE_MAX 256
#define SCRAM_SALT_MAX 128
#define SCRAM_ITER_MIN 4096     /* RFC 7677 §4 and Dovecot's minimum */
#define SCRAM_ITER_MAX 10000000 /* a bound on the PBKDF2 work a stored value asks for */
#define SCRAM_ITER_DEFAULT 4096

struct scram_client_first {
	char cbflag;             /* 'n' or 'y' ('p' is refused) */
	struct strv gs2_header;  /* "n,,", "y,a=...,": echoed by the client as c= */
	struct strv authzid_raw; /* saslname after "a=", still =2C/=3D-encoded */
	struct strv user_raw;    /* saslname after "n=" */
	struct strv bare;        /* client-first-message-bare */
	struct strv cnonce;
};
/* TERN_OK; TERN_ESYNTAX for a malformed message; TERN_EINVAL for a valid
 * one we refuse ("p=" channel binding, an "m=" mandatory extension);
 * TERN_ELIMIT for an over-long name or nonce. */
int scram_parse_client_first(const char *p, size_t n, struct scram_client_first *out);

/* Decodes a saslname ("=2C" is ',', "=3D" is '=', any other '=' is an
 * error) into out (NUL-terminated). TERN_OK, TERN_ESYNTAX, TERN_ELIMIT. */
int scram_saslname_decode(struct strv in, char *out, size_t outlen);

struct scram_client_final {
	struct strv cbind;         /* base64 after "c=" */
	struct strv nonce;         /* after "r=" */
	struct strv without_proof; /* client-final-message-without-proof */
	unsigned char proof[SCRAM_KEYLEN];
};
int scram_parse_client_final(const char *p, size_t n, struct scram_client_final *out);

struct scram_stored {
	unsigned iter;
	struct strv salt_b64; /* points into the input */
	unsigned char salt[SCRAM_SALT_MAX];
	size_t saltlen;
	unsigned char stored_key[SCRAM_KEYLEN];
	unsigned char server_key[SCRAM_KEYLEN];
};
/* Dovecot's {SCRAM-SHA-256} value "iter,salt,storedkey,serverkey". */
int scram_parse_stored(const char *p, size_t n, struct scram_stored *out);
/* StoredKey and ServerKey for a password (PBKDF2: slow by design). */
int scram_keys_from_password(const char *pw, size_t n, const unsigned char *salt, size_t saltlen,
                             unsigned iter, unsigned char stored_key[SCRAM_KEYLEN],
                             unsigned char server_key[SCRAM_KEYLEN]);
/* Checks a client proof against StoredKey for AuthMessage; on success
 * writes ServerSignature. TERN_OK or TERN_EINVAL. */
int scram_check_proof(const unsigned char stored_key[SCRAM_KEYLEN],
                      const unsigned char server_key[SCRAM_KEYLEN],
                      const unsigned char proof[SCRAM_KEYLEN], const char *auth_msg,
                      size_t auth_len, unsigned char server_sig[SCRAM_KEYLEN]);
/* For users_verify: does password match a {SCRAM-SHA-256} value? */
int sasl_scram_check_password(const char *stored, size_t n, const char *password);
/* "{SCRAM-SHA-256}iter,salt,storedkey,serverkey" for password (random
 * 16-byte salt) into out. TERN_OK, TERN_ELIMIT, TERN_EIO (no randomness). */
int sasl_scram_hash_password(const char *password, unsigned iter, char *out, size_t outlen);

/* ---- XOAUTH2 and OAUTHBEARER (RFC 7628) */
struct sasl_oauth_msg {
	struct strv user;  /* XOAUTH2 "user=", or OAUTHBEARER authzid (raw saslname) */
	struct strv token; /* after "Bearer " */
};
/* "user=U\x01auth=Bearer T\x01\x01". TERN_OK, TERN_ESYNTAX, TERN_ELIMIT. */
int sasl_xoauth2_parse(const char *p, size_t n, struct sasl_oauth_msg *out);
/* gs2-header "n,[a=U]," then kvpairs "\x01key=value" ... "\x01\x01" with an
 * "auth=Bearer T" pair. TERN_OK, TERN_ESYNTAX, TERN_EINVAL ("p=" channel
 * binding), TERN_ELIMIT. */
int sasl_oauthbearer_parse(const char *p, size_t n, struct sasl_oauth_msg *out);

/* ---- JWT pieces (oauth_jwt.c) */
/* base64url pieces are decoded by core/codec.h's tern_base64url_decode. */
/* The claim checks of oauth_token_validate on a payload whose signature
 * has been checked (JSON, duplicate members refused). Same results. */
int oauth_claims_check(const struct oauth_config *cfg, const char *json, size_t len,
                       long long now, char *user, size_t userlen, const char **reason);

/* ---- engine test hooks (sasl.c) */
/* Replaces the random part of the next challenge: the whole CRAM-MD5
 * challenge, or SCRAM's server nonce (which must be printable without ',').
 * Call after sasl_new, before sasl_start. For tests reproducing RFC
 * examples only. */
int sasl_test_set_nonce(struct sasl_exchange *x, const char *nonce);

#endif
