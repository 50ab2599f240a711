/*
 * auth.h — users (passwd-file) and password checks.
 *
 * The users file is Dovecot's passwd-file format, one user per line:
 *     address:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]
 * Supported schemes: CRYPT, SHA512-CRYPT, BLF-CRYPT (all checked with
 * crypt(3) from libxcrypt, which also takes yescrypt "$y$"), PLAIN
 * (also CLEARTEXT), and Dovecot's CRAM-MD5 (64 hex digits: the HMAC-MD5
 * context) and SCRAM-SHA-256 ("iter,salt,storedkey,serverkey", base64),
 * which let CRAM-MD5 and SCRAM-SHA-256 logins work without a cleartext
 * password. A line with no {SCHEME} prefix is CRYPT.
 * Blank lines and lines starting with '#' are ignored. Addresses are
 * compared case-insensitively (stored lowercased).
 *
 * A struct user_db is immutable after loading and safe to share between
 * threads. users_verify() is slow by design (crypt): thread pool only.
 */
#ifndef TERN_AUTH_AUTH_H
#define TERN_AUTH_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct user_db;

/* A missing file is an empty database, not an error. Bad lines are
 * reported as "FILE:LINE: ..." in err and make the load fail. */
int users_load(const char *path, struct user_db **out, char *err, size_t errlen);
void users_free(struct user_db *db);
size_t users_count(const struct user_db *db);
bool users_exists(const struct user_db *db, const char *addr);
/*
 * The user's own mailbox quota, from Dovecot's extra field
 * userdb_quota_rule=*:storage=SIZE in the users file (parsed at load time,
 * so this is a lookup: fine on the event loop). TERN_OK with *bytes (0 =
 * unlimited), or TERN_ENOTFOUND when the user has no such rule (or does not
 * exist): the configured default (mailbox.quota) applies.
 */
int users_quota(const struct user_db *db, const char *addr, uint64_t *bytes);
/* TERN_OK if the password matches, TERN_ENOTFOUND for no such user,
 * TERN_EINVAL for a wrong password or an unusable hash. */
int users_verify(const struct user_db *db, const char *addr, const char *password);
/* Calls fn for each address in file order. */
void users_foreach(const struct user_db *db, void (*fn)(const char *addr, void *arg), void *arg);

/*
 * Whether addr is a mailbox a user can be created for: an RFC 5321 mailbox
 * that RCPT TO can name and local delivery can store. The local part is a
 * dot-atom (RCPT looks users up by the unquoted local part, so a quoted
 * one never matches), at most 64 bytes, UTF-8 allowed (RFC 6531), without
 * '/' (it becomes a Maildir directory name) or a leading '#' (a comment in
 * the users file); the domain is a host name (letters, digits, '-',
 * labels of 1-63, an internationalised domain in its xn-- form), not an
 * address literal. TERN_OK, or TERN_EINVAL with a reason a person can act
 * on in *why (static text).
 */
int users_check_mailbox(const char *addr, const char **why);

/*
 * Edits the file: add (TERN_EEXIST if present) with a fresh SHA512-CRYPT
 * hash (TERN_EINVAL unless users_check_mailbox accepts addr), set a new
 * password (TERN_ENOTFOUND if absent), delete. Rewrites
 * the file atomically (temp file, fsync, rename, directory fsync), keeping
 * every other line as it was. A new file is mode 0600; a rewritten one keeps
 * its owner, group and owner/group permission bits (e.g. 0640, group
 * dovecot, for Dovecot's passdb), never read or write bits for others.
 */
int users_file_add(const char *path, const char *addr, const char *password);
int users_file_passwd(const char *path, const char *addr, const char *password);
int users_file_del(const char *path, const char *addr);

/* Hashes password with SHA512-CRYPT into out as "{SHA512-CRYPT}$6$..." */
int users_hash_password(const char *password, char *out, size_t outlen);

/* ------------------------------------------------------- stored secrets */

/* What a user's stored secret is, for the challenge-response mechanisms. */
enum user_secret_scheme {
	USER_SECRET_LOCKED,       /* empty or "!"/"*" hash: never authenticates */
	USER_SECRET_CRYPT,        /* a crypt(3) hash: PLAIN and LOGIN only */
	USER_SECRET_PLAIN,        /* cleartext: every password mechanism */
	USER_SECRET_CRAM_MD5,     /* Dovecot {CRAM-MD5}: PLAIN, LOGIN, CRAM-MD5 */
	USER_SECRET_SCRAM_SHA256, /* Dovecot {SCRAM-SHA-256}: PLAIN, LOGIN, SCRAM */
};

/*
 * The stored secret of addr (case-insensitive), without its {SCHEME}
 * prefix: *secret points into db and lives as long as db; it is secret
 * material, never to be logged. TERN_OK, or TERN_ENOTFOUND. A lookup only
 * (no crypt): fine on the event loop.
 */
int users_get_secret(const struct user_db *db, const char *addr, enum user_secret_scheme *scheme,
                     const char **secret, size_t *len);

/* ------------------------------------------------- OAuth 2.0 bearer tokens */

/*
 * `auth { oauth { issuer; audience; jwks_file; user_claim; leeway; } }`,
 * filled by the configuration (which owns the strings). A token is taken
 * only if it is a JWT signed RS256 or ES256 by a key of the JWKS, its "iss"
 * equals issuer exactly, its "aud" is or contains audience, "exp" is in the
 * future and "nbf"/"iat" (when present) not, each within leeway_seconds, and
 * user_claim ("email" when NULL) names the user. When the claim is "email",
 * a token saying "email_verified": false is refused.
 */
struct oauth_config {
	char *issuer;
	char *audience;
	char *jwks_file;         /* read by the caller, handed to oauth_jwks_parse */
	char *user_claim;        /* NULL: "email" */
	unsigned leeway_seconds; /* clock skew allowed; the configuration's default
	                            is OAUTH_LEEWAY_DEFAULT */
};
#define OAUTH_LEEWAY_DEFAULT 60

/* The public keys of a JWKS document (RFC 7517). Immutable once built, so
 * one set may be shared by every thread. */
struct oauth_keys;

/*
 * Parses a JWKS document {"keys": [...]} held in memory (at most 1 MiB, 64
 * keys). Keeps RSA keys (n, e; modulus of 2048 bits or more) and EC P-256
 * keys (x, y, checked to be on the curve); skips keys of other types,
 * curves or uses ("use" other than "sig", "alg" other than RS256/ES256),
 * so a symmetric "oct" key can never verify anything. TERN_OK with *out
 * set; TERN_ESYNTAX (err says why) when the JSON is bad or no usable key
 * remains; TERN_ELIMIT; TERN_ENOMEM.
 */
int oauth_jwks_parse(const char *json, size_t len, struct oauth_keys **out, char *err,
                     size_t errlen);
void oauth_keys_free(struct oauth_keys *keys);
size_t oauth_keys_count(const struct oauth_keys *keys);

/*
 * Validates a JWT access token (compact form, at most OAUTH_TOKEN_MAX bytes)
 * as oauth_config says, at time now (seconds since the epoch). On TERN_OK
 * the user claim is copied to user (lowercased ASCII). TERN_EINVAL when the
 * token is refused, with *reason a short constant phrase for the log
 * ("expired", "wrong audience", ...); TERN_ENOMEM. Pure but for the clock
 * the caller passes in; one signature check (cheap, no I/O).
 */
#define OAUTH_TOKEN_MAX 12000
int oauth_token_validate(const struct oauth_config *cfg, const struct oauth_keys *keys,
                         const char *token, size_t len, long long now, char *user, size_t userlen,
                         const char **reason);

/* ---------------------------------------------------------- SASL server */

/*
 * A SASL server exchange (RFC 4422), transport-independent: SMTP AUTH
 * (RFC 4954) and POP3 AUTH (RFC 5034) drive it the same way, because both
 * carry the same things on the wire: base64 lines, "=" for an empty initial
 * response, "*" to cancel. So the engine does the base64 both ways (one
 * place for the strict decoding and the size bounds): the caller passes
 * the client's text as received (without CRLF) and sends back the challenge
 * text as given, after "334 " (SMTP) or "+ " (POP3).
 *
 *   x = sasl_new(&cfg)                                 (on the event loop)
 *   st = sasl_start(x, "PLAIN", 5, initial, ilen)      initial NULL if none
 *   loop:
 *     SASL_CONTINUE:    send 334/+ sasl_challenge(x); st = sasl_step(x, line)
 *     SASL_NEED_VERIFY: sasl_verify(x) on the thread pool (it may run crypt
 *                       or PBKDF2); back on the loop st = sasl_finish(x)
 *     anything else:    the end; reply (below), then sasl_free(x)
 *
 * Replies (SMTP / POP3): SASL_OK 235 2.7.0 / +OK; SASL_FAIL 535 5.7.8 after
 * the throttle's delay / -ERR [AUTH]; SASL_CANCELLED 501 5.7.0; SASL_MALFORMED
 * 501 5.5.2; SASL_PROTOCOL 501 5.7.0 (an initial response to a server-first
 * mechanism); SASL_TOO_LONG 500 5.5.6; SASL_NOMECH 504 5.5.4; SASL_TEMPFAIL
 * 454 4.7.0 / -ERR [SYS/TEMP]. After any of them sasl_reason() says why in
 * a few words fit for the log (never the client's secrets).
 *
 * Mechanisms and the stored secrets each can use (users file, see above):
 *   PLAIN (RFC 4616), LOGIN: every scheme (crypt runs in sasl_verify).
 *   CRAM-MD5 (RFC 2195): PLAIN/CLEARTEXT and {CRAM-MD5} only.
 *   SCRAM-SHA-256 (RFC 5802, RFC 7677): {SCRAM-SHA-256}, and PLAIN/
 *     CLEARTEXT (keys derived in sasl_verify); no channel binding: "n,," and
 *     "y,," are accepted, "p=" is refused (the -PLUS variant is not offered).
 *     The server-final "v=..." is a last SASL_CONTINUE whose empty answer
 *     gives SASL_OK (neither SMTP nor POP3 carries data with success).
 *   XOAUTH2, OAUTHBEARER (RFC 7628): a JWT checked by oauth_token_validate;
 *     on refusal a SASL_CONTINUE carries the JSON error status (RFC 7628
 *     §3.2.2; Google's form for XOAUTH2) and the client's answer (the
 *     dummy "\x01" for OAUTHBEARER, an empty line for XOAUTH2) ends it with
 *     SASL_FAIL.
 * The HMAC work of CRAM-MD5 and SCRAM and the token's signature check are
 * cheap (microseconds) but still happen in sasl_verify, so every mechanism
 * has the same shape; sasl_verify_is_slow() tells a caller that wants to
 * skip the pool for those.
 *
 * Threads: an exchange belongs to one thread at a time; between handing it
 * to the pool and getting it back the caller must not touch it (nor free
 * it: wait for the pool's completion). The config and everything it points
 * to must outlive the exchange and not change under it (take a reference on
 * the user database across a reload). Secrets held by the exchange
 * (password, token, keys) are wiped as soon as they are used and on free.
 */
enum sasl_mech {
	SASL_MECH_PLAIN,
	SASL_MECH_LOGIN,
	SASL_MECH_CRAM_MD5,
	SASL_MECH_SCRAM_SHA256,
	SASL_MECH_XOAUTH2,
	SASL_MECH_OAUTHBEARER,
	SASL_MECH_COUNT
};
#define SASL_MECH_BIT(m) (1u << (m))

enum sasl_status {
	SASL_CONTINUE,    /* send sasl_challenge() and read the next line */
	SASL_NEED_VERIFY, /* call sasl_verify() (thread pool), then sasl_finish() */
	SASL_OK,          /* authenticated as sasl_identity() */
	SASL_FAIL,        /* credentials refused */
	SASL_CANCELLED,   /* the client sent "*" */
	SASL_MALFORMED,   /* not base64, or not what the mechanism expects */
	SASL_PROTOCOL,    /* initial response to a mechanism that starts with a challenge */
	SASL_TOO_LONG,    /* a line longer than SASL_LINE_MAX */
	SASL_NOMECH,      /* unknown or disabled mechanism */
	SASL_TEMPFAIL,    /* out of memory, no randomness: try again later */
};

/* Longest client line (base64) the engine takes: RFC 4954 §4's 12288. The
 * caller's line reader must allow this much during an AUTH exchange. */
#define SASL_LINE_MAX 12288
/* Longest authentication or authorization identity (RFC 4616: 255). */
#define SASL_ID_MAX 255

struct sasl_config {
	const struct user_db *users; /* the users file; or the two hooks below */
	/* Another credential store (tests, later backends); each NULL hook falls
	 * back to users. get_secret has users_get_secret's contract and serves
	 * CRAM-MD5 and SCRAM-SHA-256; SCRAM calls it from sasl_step, on the
	 * event loop (the salt goes into the first challenge), so it must not
	 * block. verify_password has users_verify's (slow: only ever called
	 * from sasl_verify) and serves PLAIN and LOGIN. A mechanism with
	 * neither its hook nor users is not enabled. */
	int (*get_secret)(void *arg, const char *login, enum user_secret_scheme *scheme,
	                  const char **secret, size_t *len);
	int (*verify_password)(void *arg, const char *login, const char *password);
	void *store_arg;
	const struct oauth_config *oauth; /* NULL (or no keys): no XOAUTH2/OAUTHBEARER */
	const struct oauth_keys *oauth_keys;
	/* SASL_MECH_BIT()s enabled. 0: PLAIN, LOGIN, and XOAUTH2/OAUTHBEARER
	 * when OAuth is set up. CRAM-MD5 and SCRAM-SHA-256 must be asked for:
	 * they work only for users whose stored secret allows them, and clients
	 * that see them offered try them first (Python's smtplib tries CRAM-MD5
	 * before PLAIN), so each login of a crypt user would cost a failure. */
	unsigned mechs;
	const char *hostname; /* in the CRAM-MD5 challenge; NULL: "localhost" */
	/* May authcid act as a different authzid (PLAIN, SCRAM, OAUTHBEARER)? NULL:
	 * never; an empty authzid or one equal to authcid (ASCII case aside) is
	 * always fine. Called on the event loop. */
	bool (*authz_ok)(void *arg, const char *authcid, const char *authzid);
	void *authz_arg;
	/* Seconds since the epoch for token checks (tests inject a clock);
	 * NULL: time(). Called from sasl_verify, so on the pool. */
	long long (*now)(void *arg);
	void *now_arg;
};

/* Parses a mechanism name (ASCII case-insensitive). TERN_OK or TERN_ENOTFOUND. */
int sasl_mech_parse(const char *name, size_t len, enum sasl_mech *out);
const char *sasl_mech_name(enum sasl_mech m);
/* Whether cfg enables m and has what m needs (users, or oauth and keys). */
bool sasl_mech_enabled(const struct sasl_config *cfg, enum sasl_mech m);
/* The enabled mechanisms, space-separated, for EHLO "AUTH ..." or POP3
 * CAPA "SASL ...". Returns out (empty when none). */
char *sasl_mech_list(const struct sasl_config *cfg, char *out, size_t outlen);

struct sasl_exchange;
/* A new exchange reading cfg (borrowed). NULL when out of memory. */
struct sasl_exchange *sasl_new(const struct sasl_config *cfg);
void sasl_free(struct sasl_exchange *x);

/* Starts the exchange for mechanism mech (mechlen bytes, as the client
 * wrote it) with the initial response initial (ilen bytes; "=" is an empty
 * one) or none (initial NULL). Once per exchange. */
enum sasl_status sasl_start(struct sasl_exchange *x, const char *mech, size_t mechlen,
                            const char *initial, size_t ilen);
/* Feeds the client's next line (without CRLF) after SASL_CONTINUE. */
enum sasl_status sasl_step(struct sasl_exchange *x, const char *line, size_t len);
/* The challenge to send after SASL_CONTINUE: base64, possibly empty,
 * NUL-terminated, valid until the next call on x. */
const char *sasl_challenge(const struct sasl_exchange *x, size_t *len);
/* After SASL_NEED_VERIFY: the slow part (crypt, PBKDF2, signature checks).
 * Safe on any thread; touches only x and the (immutable) config. */
void sasl_verify(struct sasl_exchange *x);
/* Whether sasl_verify may take milliseconds (crypt or PBKDF2). */
bool sasl_verify_is_slow(const struct sasl_exchange *x);
/* After sasl_verify, back on the caller's thread: the outcome, or one more
 * SASL_CONTINUE (SCRAM's server signature, the OAuth error status). */
enum sasl_status sasl_finish(struct sasl_exchange *x);

enum sasl_mech sasl_exchange_mech(const struct sasl_exchange *x);
/* The authentication identity the client claimed (for logs, through
 * log_quote: client bytes), or NULL if it has not sent one yet. */
const char *sasl_login(const struct sasl_exchange *x);
/* After SASL_OK: the identity the session is authorized as (lowercased
 * ASCII: a users-file address or the token's user claim). NULL before. */
const char *sasl_identity(const struct sasl_exchange *x);
/* Why the exchange ended as it did (a constant phrase), or "" if going on. */
const char *sasl_reason(const struct sasl_exchange *x);

/* ---------------------------------------------------- brute-force throttle */

/*
 * Counts failed logins per client address and per user, in a table of
 * bounded size (least recently used entries are dropped first), and says
 * how long to wait before answering a failure and when to refuse outright.
 * Pure but for a mutex: time comes from the caller (milliseconds on any
 * monotonic clock), so tests use a fake one; no I/O, no logging (the
 * result carries a log-friendly reason). One throttle is shared by every
 * worker: an attacker's connections land on different workers.
 *
 * IPv6 addresses are counted per /64 (an attacker usually holds one), IPv4
 * per address; anything else per string. User names are compared ASCII
 * case-insensitively.
 *
 * The caller:
 *   on AUTH:          throttle_check(t, addr, NULL, now)  BLOCK_ADDR: 421 4.7.0
 *                     and close (or 454 4.7.0)
 *   on NEED_VERIFY:   throttle_check(t, addr, login, now) blocked: 454 4.7.0
 *                     without verifying (saves the crypt)
 *   on SASL_FAIL:     throttle_fail(...) then wait res.delay_ms, 535 5.7.8
 *   on SASL_OK:       throttle_success(...)
 */
struct throttle_config {
	unsigned delay_after;      /* failures before answers are delayed (0: from the first) */
	unsigned base_delay_ms;    /* delay at the first delayed failure, doubling after */
	unsigned max_delay_ms;     /* cap on that delay */
	unsigned addr_block_after; /* failures from one address that block it (0: never) */
	unsigned user_block_after; /* failures for one user that block logins as that user
	                              from every address (0: never); set it higher than
	                              addr_block_after, or anyone can lock a user out */
	unsigned block_seconds;    /* how long a block lasts */
	unsigned window_seconds;   /* failures older than this (since the last one) are forgotten */
	size_t max_entries;        /* table size (addresses and users together) */
};
/* delay 1 s doubling to 16 s; address blocked after 10 failures, user after
 * 30, for 15 minutes; forgotten after an hour quiet; 65536 entries (~10 MB
 * at most). */
#define THROTTLE_CONFIG_DEFAULT                                                                    \
	{                                                                                          \
		.delay_after = 0, .base_delay_ms = 1000, .max_delay_ms = 16000,                    \
		.addr_block_after = 10, .user_block_after = 30, .block_seconds = 900,              \
		.window_seconds = 3600, .max_entries = 65536                                       \
	}

enum throttle_verdict {
	THROTTLE_ALLOW,
	THROTTLE_BLOCK_ADDR, /* this client address is blocked */
	THROTTLE_BLOCK_USER, /* logins as this user are blocked */
};

struct throttle_result {
	enum throttle_verdict verdict;
	unsigned delay_ms;      /* throttle_fail: wait this long before the 535 */
	unsigned retry_after_s; /* when blocked: seconds until the block ends */
	unsigned failures;      /* failures counted for the key that decided */
	char reason[128];       /* "addr=192.0.2.7 failures=10 blocked_for=900s"; quoted
	                           with log_quote rules, fit for a log line as is */
};

struct throttle;
/* NULL when out of memory. cfg is copied; a zero max_entries means 1. */
struct throttle *throttle_new(const struct throttle_config *cfg);
void throttle_free(struct throttle *t);
/* Is addr (and, if not NULL, user) blocked at now_ms? Changes nothing but
 * the LRU order. */
void throttle_check(struct throttle *t, const char *addr, const char *user,
                    unsigned long long now_ms, struct throttle_result *res);
/* Counts one failure for addr and user (NULL if none was given). */
void throttle_fail(struct throttle *t, const char *addr, const char *user,
                   unsigned long long now_ms, struct throttle_result *res);
/* A success: forgets the failures of addr and of user. */
void throttle_success(struct throttle *t, const char *addr, const char *user);
/* Entries in the table (for tests and /metrics). */
size_t throttle_entries(struct throttle *t);

#endif
