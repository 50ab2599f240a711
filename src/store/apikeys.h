/*
 * apikeys.h — the API key store (issue 12 item 5): DATA/apikeys.db, SQLite,
 * written by `tern apikey` and read by the daemon's HTTP API on every
 * request (a connection kept open sees the CLI's commits at once: no reload).
 *
 * A key is an id (public, 16 lowercase hex digits), a name, a scope, the
 * sending domains it may use (none: any) and a secret of 256 random bits.
 * The bearer token shown once at creation is "tern_" ID "_" SECRET (64 hex).
 * The store keeps SHA-256(SECRET) only: a fast hash is enough because the
 * secret is 256 random bits (no dictionary to try, unlike a password), and
 * a slow one would cost a KDF per request. SigV4 (SES, later) needs a
 * secret both sides can compute with; the plan is to derive it as
 * HMAC-SHA256(DATA/apikeys.master, id) so the database still holds no
 * usable secret; the table also has room (per_hour, per_day) for quotas.
 *
 * Thread safety: one struct apikeys per thread.
 */
#ifndef TERN_STORE_APIKEYS_H
#define TERN_STORE_APIKEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define APIKEY_ID_LEN 16
#define APIKEY_SECRET_LEN 64
#define APIKEY_TOKEN_LEN (5 + APIKEY_ID_LEN + 1 + APIKEY_SECRET_LEN) /* "tern_" id "_" secret */
#define APIKEY_NAME_MAX 64
#define APIKEY_DOMAINS_MAX 512 /* "a.org,b.org" */

enum apikey_scope { APIKEY_READ = 1, APIKEY_SEND = 2, APIKEY_ADMIN = 3 };

/* "read", "send", "admin"; apikey_scope_parse returns 0 for anything else. */
const char *apikey_scope_name(enum apikey_scope s);
enum apikey_scope apikey_scope_parse(const char *s);

struct apikey {
	char id[APIKEY_ID_LEN + 1];
	char name[APIKEY_NAME_MAX + 1];
	enum apikey_scope scope; /* a key may do what its scope and every lower one allow */
	char domains[APIKEY_DOMAINS_MAX + 1];   /* lowercased, comma-separated; "" = any */
	int64_t created, revoked;               /* unix seconds; revoked 0 = live */
	uint64_t per_second, per_hour, per_day; /* sending quotas (store/quota.h); 0 = none */
};

struct apikeys;

/* Opens path, creating the file and its table when create is true (else
 * TERN_ENOTFOUND when there is no file). TERN_OK or TERN_EIO. */
int apikeys_open(const char *path, bool create, struct apikeys **out);
void apikeys_close(struct apikeys *k);

/*
 * Makes a key. name: 1-64 of [A-Za-z0-9._-], unique (TERN_EEXIST); domains
 * (may be NULL) each a domain name, lowercased. token receives the bearer
 * token (APIKEY_TOKEN_LEN + 1 bytes), shown once; out the record.
 */
int apikeys_create(struct apikeys *k, const char *name, enum apikey_scope scope,
                   const char *const *domains, size_t n_domains, char *token, size_t tokenlen,
                   struct apikey *out);
/* Calls fn for each key (live and revoked) in creation order. */
int apikeys_list(struct apikeys *k, void (*fn)(const struct apikey *key, void *arg), void *arg);
/* Sets the sending quotas of the live key with this name or id (0: no
 * limit in that window): TERN_OK, TERN_ENOTFOUND, TERN_EIO. */
int apikeys_set_limits(struct apikeys *k, const char *name_or_id, uint64_t per_second,
                       uint64_t per_hour, uint64_t per_day);
/* Revokes the live key with this name or id: TERN_OK, TERN_ENOTFOUND. */
int apikeys_revoke(struct apikeys *k, const char *name_or_id);
/* The live key a token belongs to: TERN_OK; TERN_ENOTFOUND for an unknown,
 * malformed, revoked or wrong token (the caller says 401 for all);
 * TERN_EIO when the store cannot be read. */
int apikeys_verify(struct apikeys *k, const char *token, size_t len, struct apikey *out);

/* The live key with this id (SigV4 names a key by its id): TERN_OK,
 * TERN_ENOTFOUND (unknown or revoked), TERN_EIO. */
int apikeys_get(struct apikeys *k, const char *id, struct apikey *out);

/*
 * The delivery results of API messages (table api_results), so that a
 * message's status outlives its time in the queue: one row per recipient
 * (queue id, index), replaced by each newer result; rows older than 30
 * days go. owner is the key name that sent it. results_put is written
 * without fsync (a crash loses a status, never mail). TERN_OK/TERN_EIO.
 */
int apikeys_result_put(struct apikeys *k, const char *id, size_t idx, const char *owner,
                       const char *sender, const char *addr, const char *state, const char *reply,
                       int64_t now);
/* Calls fn for each recipient row of id in index order: TERN_OK, or
 * TERN_ENOTFOUND when there is none, TERN_EIO. */
int apikeys_results(struct apikeys *k, const char *id,
                    void (*fn)(void *arg, const char *owner, const char *sender, const char *addr,
                               const char *state, const char *reply, int64_t updated),
                    void *arg);

/* How many recipients of owner's messages reached a final state (delivered
 * or bounced) at or after since: SES's SentLast24Hours. TERN_OK, TERN_EIO. */
int apikeys_count_sent(struct apikeys *k, const char *owner, int64_t since, int64_t *out);

/* Whether key may send mail whose From domain is domain (lowercase): any
 * domain when the key names none, else one of its domains or a subdomain
 * of one. Pure. */
bool apikey_allows_domain(const struct apikey *key, const char *domain);
/* Splits a token into id and secret; false when it is not one. Pure. */
bool apikey_token_split(const char *token, size_t len, char id[APIKEY_ID_LEN + 1],
                        char secret[APIKEY_SECRET_LEN + 1]);

#endif
