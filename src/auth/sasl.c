/*
 * sasl.c — the SASL server engine (see auth.h for the caller's view): one
 * explicit state machine per exchange, the base64 edge, and the mechanisms
 * PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256, XOAUTH2 and OAUTHBEARER on top of
 * the pure parsers in sasl_cram.c, sasl_scram.c, sasl_oauth.c, oauth_jwt.c.
 *
 * States: NEW --start--> STEP (a challenge is out, a line is awaited)
 *   --step--> ... --> VERIFY (credentials complete) --sasl_verify-->
 *   VERIFIED --finish--> DONE, or back to STEP for SCRAM's server
 *   signature and the OAuth error status. Every status but CONTINUE and
 *   NEED_VERIFY ends in DONE. enter() is the only writer of the state.
 *
 * Owns: the exchange, its secrets (password, token, SCRAM keys: wiped as
 * soon as used and on free), the reasons given for the log.
 * Must never: call crypt or PBKDF2 outside sasl_verify (the event loop must
 * not block), tell the client why credentials failed (the reason is for
 * the log), say whether a user exists (unknown users cost a crypt and get
 * a stable fake SCRAM salt like everyone else), log, or keep going after
 * a malformed line.
 */
#include "auth/auth.h"
#include "auth/sasl_internal.h"

#include <crypt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "core/codec.h"
#include "core/err.h"

enum xstate { XS_NEW, XS_STEP, XS_VERIFY, XS_VERIFIED, XS_DONE };

/* What the next client line is, within a mechanism. */
enum step {
	STEP_NONE,
	STEP_PLAIN_MSG,
	STEP_LOGIN_USER,
	STEP_LOGIN_PASS,
	STEP_CRAM_RESPONSE,
	STEP_SCRAM_FIRST,
	STEP_SCRAM_FINAL,
	STEP_SCRAM_ACK, /* after "v=...": an empty line */
	STEP_OAUTH_MSG,
	STEP_OAUTH_ERRACK, /* after the JSON error status: "\x01" or empty */
};

#define CRAM_CHALLENGE_MAX 300
#define SCRAM_SNONCE_BYTES 18 /* 24 base64 characters */
#define AUTH_MSG_MAX (2 * SASL_MSG_MAX + 1024)

struct sasl_exchange {
	const struct sasl_config *cfg;
	enum sasl_mech mech;
	enum xstate state;
	enum step step;
	enum sasl_status verdict; /* set by sasl_verify: OK, FAIL or TEMPFAIL */
	const char *reason;
	struct tbuf challenge; /* base64, what the caller sends */
	struct tbuf msg;       /* the decoded client line; wiped after each use */

	bool have_login;
	char login[SASL_ID_MAX + 1];   /* the authentication identity claimed */
	char authzid[SASL_ID_MAX + 1]; /* "" when none */
	char identity[SASL_ID_MAX + 1];
	bool have_identity;

	char secret[SASL_PASS_MAX + 1]; /* password (PLAIN, LOGIN; SCRAM on cleartext) */
	size_t secretlen;
	char *token; /* OAuth bearer token */
	size_t tokenlen;
	char nonce_override[SCRAM_NONCE_MAX + 1];

	/* CRAM-MD5 */
	char cram_challenge[CRAM_CHALLENGE_MAX + 1];
	unsigned char cram_digest[16];

	/* SCRAM-SHA-256 */
	struct tbuf auth_msg; /* client-first-bare "," server-first "," final-without-proof */
	char gs2[3 * SASL_ID_MAX + 8];
	size_t gs2len;
	char nonce[2 * SCRAM_NONCE_MAX + 1];
	size_t noncelen;
	bool scram_user_ok;     /* a secret SCRAM can use exists (else: fake salt, fail) */
	bool scram_from_secret; /* keys to derive from x->secret in sasl_verify */
	const char *scram_no_reason;
	unsigned scram_iter;
	unsigned char salt[SCRAM_SALT_MAX];
	size_t saltlen;
	unsigned char stored_key[SCRAM_KEYLEN], server_key[SCRAM_KEYLEN];
	unsigned char proof[SCRAM_KEYLEN], server_sig[SCRAM_KEYLEN];
};

static const char *const mech_names[SASL_MECH_COUNT] = {
    [SASL_MECH_PLAIN] = "PLAIN",       [SASL_MECH_LOGIN] = "LOGIN",
    [SASL_MECH_CRAM_MD5] = "CRAM-MD5", [SASL_MECH_SCRAM_SHA256] = "SCRAM-SHA-256",
    [SASL_MECH_XOAUTH2] = "XOAUTH2",   [SASL_MECH_OAUTHBEARER] = "OAUTHBEARER",
};

/* ------------------------------------------------------------ mechanisms */

int sasl_mech_parse(const char *name, size_t len, enum sasl_mech *out)
{
	for (int m = 0; m < SASL_MECH_COUNT; m++) {
		if (strlen(mech_names[m]) == len && strncasecmp(mech_names[m], name, len) == 0) {
			*out = (enum sasl_mech)m;
			return TERN_OK;
		}
	}
	return TERN_ENOTFOUND;
}

const char *sasl_mech_name(enum sasl_mech m)
{
	return (unsigned)m < SASL_MECH_COUNT ? mech_names[m] : "?";
}

/*
 * With mechs == 0, CRAM-MD5 and SCRAM-SHA-256 stay off: they work only for
 * users whose stored secret allows them, and clients that see them offered
 * try them first (Python's smtplib tries CRAM-MD5 before PLAIN), so every
 * login of a crypt-hashed user would cost a failure and a throttle delay.
 */
#define SASL_MECHS_DEFAULT                                                                         \
	(SASL_MECH_BIT(SASL_MECH_PLAIN) | SASL_MECH_BIT(SASL_MECH_LOGIN) |                         \
	 SASL_MECH_BIT(SASL_MECH_XOAUTH2) | SASL_MECH_BIT(SASL_MECH_OAUTHBEARER))

bool sasl_mech_enabled(const struct sasl_config *cfg, enum sasl_mech m)
{
	unsigned mechs;

	if (cfg == NULL || (unsigned)m >= SASL_MECH_COUNT)
		return false;
	mechs = cfg->mechs != 0 ? cfg->mechs : SASL_MECHS_DEFAULT;
	if ((mechs & SASL_MECH_BIT(m)) == 0)
		return false;
	if (m == SASL_MECH_XOAUTH2 || m == SASL_MECH_OAUTHBEARER)
		return cfg->oauth != NULL && oauth_keys_count(cfg->oauth_keys) > 0;
	if (m == SASL_MECH_PLAIN || m == SASL_MECH_LOGIN)
		return cfg->users != NULL || cfg->verify_password != NULL;
	return cfg->users != NULL || cfg->get_secret != NULL;
}

/* The credential store: the config's hooks, or the users file. */
static int get_secret(const struct sasl_config *cfg, const char *login,
                      enum user_secret_scheme *scheme, const char **secret, size_t *len)
{
	if (cfg->get_secret != NULL)
		return cfg->get_secret(cfg->store_arg, login, scheme, secret, len);
	return users_get_secret(cfg->users, login, scheme, secret, len);
}

static int verify_password(const struct sasl_config *cfg, const char *login, const char *pw)
{
	if (cfg->verify_password != NULL)
		return cfg->verify_password(cfg->store_arg, login, pw);
	return users_verify(cfg->users, login, pw);
}

char *sasl_mech_list(const struct sasl_config *cfg, char *out, size_t outlen)
{
	size_t k = 0;

	if (outlen == 0)
		return out;
	out[0] = '\0';
	for (int m = 0; m < SASL_MECH_COUNT; m++) {
		size_t n = strlen(mech_names[m]);

		if (!sasl_mech_enabled(cfg, (enum sasl_mech)m))
			continue;
		if (k + (k > 0) + n + 1 > outlen)
			break;
		if (k > 0)
			out[k++] = ' ';
		memcpy(out + k, mech_names[m], n + 1);
		k += n;
	}
	return out;
}

/* ------------------------------------------------------- exchange basics */

struct sasl_exchange *sasl_new(const struct sasl_config *cfg)
{
	struct sasl_exchange *x = calloc(1, sizeof(*x));

	if (x == NULL)
		return NULL;
	x->cfg = cfg;
	x->reason = "";
	tbuf_init(&x->challenge, 4 * (AUTH_MSG_MAX / 3) + 8);
	tbuf_init(&x->msg, SASL_MSG_MAX);
	tbuf_init(&x->auth_msg, AUTH_MSG_MAX);
	return x;
}

static void wipe_tbuf(struct tbuf *b)
{
	if (b->data != NULL)
		OPENSSL_cleanse(b->data, b->cap);
	tbuf_reset(b);
}

/* Forgets every secret the exchange holds (the claimed names stay). */
static void wipe_secrets(struct sasl_exchange *x)
{
	OPENSSL_cleanse(x->secret, sizeof(x->secret));
	x->secretlen = 0;
	if (x->token != NULL) {
		OPENSSL_cleanse(x->token, x->tokenlen);
		free(x->token);
		x->token = NULL;
		x->tokenlen = 0;
	}
	wipe_tbuf(&x->msg);
	OPENSSL_cleanse(x->stored_key, sizeof(x->stored_key));
	OPENSSL_cleanse(x->server_key, sizeof(x->server_key));
	OPENSSL_cleanse(x->proof, sizeof(x->proof));
	OPENSSL_cleanse(x->server_sig, sizeof(x->server_sig));
	OPENSSL_cleanse(x->cram_digest, sizeof(x->cram_digest));
}

void sasl_free(struct sasl_exchange *x)
{
	if (x == NULL)
		return;
	wipe_secrets(x);
	wipe_tbuf(&x->auth_msg);
	tbuf_free(&x->challenge);
	tbuf_free(&x->msg);
	tbuf_free(&x->auth_msg);
	OPENSSL_cleanse(x, sizeof(*x));
	free(x);
}

/* The one writer of x->state. */
static void enter(struct sasl_exchange *x, enum xstate st, enum step step)
{
	x->state = st;
	x->step = step;
}

/* Ends the exchange with status (anything but CONTINUE / NEED_VERIFY). */
static enum sasl_status done(struct sasl_exchange *x, enum sasl_status st, const char *reason)
{
	wipe_secrets(x);
	tbuf_reset(&x->challenge);
	enter(x, XS_DONE, STEP_NONE);
	x->reason = reason;
	return st;
}

/* Sends raw (len bytes) as the next challenge and waits at step. */
static enum sasl_status challenge(struct sasl_exchange *x, const void *raw, size_t len,
                                  enum step step)
{
	tbuf_reset(&x->challenge);
	if (tern_base64_encode(raw, len, &x->challenge) != TERN_OK)
		return done(x, SASL_TEMPFAIL, "out of memory");
	/* An empty challenge still needs a valid string for the caller. */
	if (x->challenge.data == NULL && tbuf_reserve(&x->challenge, 1) != TERN_OK)
		return done(x, SASL_TEMPFAIL, "out of memory");
	x->challenge.data[x->challenge.len] = '\0';
	enter(x, XS_STEP, step);
	return SASL_CONTINUE;
}

static enum sasl_status need_verify(struct sasl_exchange *x)
{
	wipe_tbuf(&x->msg);
	enter(x, XS_VERIFY, STEP_NONE);
	return SASL_NEED_VERIFY;
}

/*
 * Decodes a client line into x->msg. initial: the AUTH command's initial
 * response, where "=" is an empty one. Returns SASL_CONTINUE when decoded,
 * else the status that ends the exchange.
 */
static enum sasl_status decode_line(struct sasl_exchange *x, const char *p, size_t n, bool initial)
{
	int rc;

	wipe_tbuf(&x->msg);
	if (n > SASL_LINE_MAX)
		return done(x, SASL_TOO_LONG, "response too long");
	if (!initial && n == 1 && p[0] == '*')
		return done(x, SASL_CANCELLED, "cancelled by the client");
	if (initial && n == 1 && p[0] == '=')
		return SASL_CONTINUE;
	/* Reserve all at once, so no realloc leaves a copy of a secret behind. */
	if ((rc = tbuf_reserve(&x->msg, n / 4 * 3)) != TERN_OK)
		return done(x, rc == TERN_ENOMEM ? SASL_TEMPFAIL : SASL_TOO_LONG,
		            rc == TERN_ENOMEM ? "out of memory" : "response too long");
	if (tern_base64_decode(p, n, &x->msg) != TERN_OK)
		return done(x, SASL_MALFORMED, "response is not base64");
	return SASL_CONTINUE;
}

static bool set_str(char *dst, size_t dstlen, const char *p, size_t n)
{
	if (n >= dstlen || memchr(p, '\0', n) != NULL)
		return false;
	memcpy(dst, p, n);
	dst[n] = '\0';
	return true;
}

static bool set_login(struct sasl_exchange *x, const char *p, size_t n)
{
	if (n == 0 || !set_str(x->login, sizeof(x->login), p, n))
		return false;
	x->have_login = true;
	return true;
}

/* Is the session allowed to act as authzid after proving login? */
static bool authz_allowed(const struct sasl_exchange *x, const char *login, const char *authzid)
{
	if (authzid[0] == '\0' || tern_ascii_ieq(authzid, login))
		return true;
	return x->cfg->authz_ok != NULL && x->cfg->authz_ok(x->cfg->authz_arg, login, authzid);
}

static void set_identity(struct sasl_exchange *x, const char *id)
{
	tern_strlcpy(x->identity, id, sizeof(x->identity));
	tern_ascii_lower(x->identity);
	x->have_identity = true;
}

/* ------------------------------------------------------ PLAIN and LOGIN */

static enum sasl_status plain_input(struct sasl_exchange *x, const char *p, size_t n)
{
	struct sasl_plain pl;
	int rc = sasl_plain_parse(p, n, &pl);

	if (rc != TERN_OK)
		return done(x, SASL_MALFORMED,
		            rc == TERN_ELIMIT ? "PLAIN field too long" : "malformed PLAIN message");
	if (!set_login(x, pl.authcid.p, pl.authcid.n) ||
	    !set_str(x->authzid, sizeof(x->authzid), pl.authzid.p, pl.authzid.n) ||
	    !set_str(x->secret, sizeof(x->secret), pl.passwd.p, pl.passwd.n))
		return done(x, SASL_MALFORMED, "malformed PLAIN message");
	x->secretlen = pl.passwd.n;
	/* Refused before any crypt: no password is needed to know this. */
	if (!authz_allowed(x, x->login, x->authzid))
		return done(x, SASL_FAIL, "authorization identity not allowed");
	return need_verify(x);
}

static enum sasl_status login_input(struct sasl_exchange *x, const char *p, size_t n)
{
	if (x->step == STEP_LOGIN_USER) {
		if (n > SASL_ID_MAX || !set_login(x, p, n))
			return done(x, SASL_MALFORMED, "bad LOGIN user name");
		return challenge(x, "Password:", 9, STEP_LOGIN_PASS);
	}
	if (n > SASL_PASS_MAX || !set_str(x->secret, sizeof(x->secret), p, n))
		return done(x, SASL_MALFORMED, "bad LOGIN password");
	x->secretlen = n;
	return need_verify(x);
}

/* A crypt(3) of the same cost as a real check, for unknown users, so that
 * the time to answer does not tell who exists. */
static char dummy_hash[CRYPT_OUTPUT_SIZE + 32];
static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;

static void dummy_init(void)
{
	char h[sizeof(dummy_hash)];

	if (users_hash_password("tern-no-such-user", h, sizeof(h)) == TERN_OK &&
	    strncmp(h, "{SHA512-CRYPT}", 14) == 0)
		tern_strlcpy(dummy_hash, h + 14, sizeof(dummy_hash));
}

static void burn_crypt(const char *password)
{
	struct crypt_data *cd;

	pthread_once(&dummy_once, dummy_init);
	if (dummy_hash[0] == '\0')
		return;
	cd = calloc(1, sizeof(*cd));
	if (cd == NULL)
		return;
	(void)crypt_rn(password, dummy_hash, cd, (int)sizeof(*cd));
	OPENSSL_cleanse(cd, sizeof(*cd));
	free(cd);
}

static void password_verify(struct sasl_exchange *x)
{
	enum user_secret_scheme sch = USER_SECRET_CRYPT;
	const char *sec;
	size_t seclen;
	int rc = verify_password(x->cfg, x->login, x->secret);

	if (rc == TERN_OK) {
		x->verdict = SASL_OK;
		set_identity(x, x->authzid[0] != '\0' ? x->authzid : x->login);
		return;
	}
	x->verdict = SASL_FAIL;
	if (rc == TERN_ENOMEM) {
		x->verdict = SASL_TEMPFAIL;
		x->reason = "out of memory";
	} else if (rc == TERN_ENOTFOUND) {
		burn_crypt(x->secret);
		x->reason = "unknown user";
	} else {
		if (get_secret(x->cfg, x->login, &sch, &sec, &seclen) != TERN_OK)
			sch = USER_SECRET_CRYPT;
		x->reason = sch == USER_SECRET_LOCKED ? "account locked" : "wrong password";
	}
}

/* -------------------------------------------------------------- CRAM-MD5 */

static bool random_hex(char *out, size_t bytes)
{
	unsigned char r[32];
	static const char hex[] = "0123456789abcdef";

	if (bytes > sizeof(r) || RAND_bytes(r, (int)bytes) != 1)
		return false;
	for (size_t i = 0; i < bytes; i++) {
		out[2 * i] = hex[r[i] >> 4];
		out[2 * i + 1] = hex[r[i] & 15];
	}
	out[2 * bytes] = '\0';
	return true;
}

static enum sasl_status cram_begin(struct sasl_exchange *x)
{
	const char *host = x->cfg->hostname != NULL ? x->cfg->hostname : "localhost";
	char rnd[33];
	int n;

	if (x->nonce_override[0] != '\0') {
		tern_strlcpy(x->cram_challenge, x->nonce_override, sizeof(x->cram_challenge));
	} else {
		/* RFC 2195 §2: "<" unique-string "@" hostname ">" (msg-id form). */
		if (!random_hex(rnd, 16))
			return done(x, SASL_TEMPFAIL, "no randomness");
		n = snprintf(x->cram_challenge, sizeof(x->cram_challenge), "<%s.%lld@%.200s>", rnd,
		             (long long)time(NULL), host);
		if (n < 0 || (size_t)n >= sizeof(x->cram_challenge))
			return done(x, SASL_TEMPFAIL, "challenge too long");
	}
	return challenge(x, x->cram_challenge, strlen(x->cram_challenge), STEP_CRAM_RESPONSE);
}

static enum sasl_status cram_input(struct sasl_exchange *x, const char *p, size_t n)
{
	struct strv user;

	if (sasl_cram_parse(p, n, &user, x->cram_digest) != TERN_OK ||
	    !set_login(x, user.p, user.n))
		return done(x, SASL_MALFORMED, "malformed CRAM-MD5 response");
	return need_verify(x);
}

static void cram_verify(struct sasl_exchange *x)
{
	unsigned char ctx[CRAM_MD5_CONTEXTLEN], want[16];
	enum user_secret_scheme sch;
	const char *sec;
	size_t seclen;

	x->verdict = SASL_FAIL;
	if (get_secret(x->cfg, x->login, &sch, &sec, &seclen) != TERN_OK) {
		x->reason = "unknown user";
		return;
	}
	if (sch == USER_SECRET_PLAIN) {
		if (sasl_cram_context(sec, seclen, ctx) != TERN_OK)
			goto tempfail;
	} else if (sch == USER_SECRET_CRAM_MD5) {
		if (sasl_cram_parse_stored(sec, seclen, ctx) != TERN_OK) {
			x->reason = "stored CRAM-MD5 secret malformed";
			goto out;
		}
	} else {
		x->reason = sch == USER_SECRET_LOCKED
		                ? "account locked"
		                : "stored secret does not allow CRAM-MD5 (needs PLAIN or CRAM-MD5)";
		goto out;
	}
	if (sasl_cram_digest(ctx, x->cram_challenge, strlen(x->cram_challenge), want) != TERN_OK)
		goto tempfail;
	if (CRYPTO_memcmp(want, x->cram_digest, sizeof(want)) == 0) {
		x->verdict = SASL_OK;
		set_identity(x, x->login);
	} else {
		x->reason = "wrong password";
	}
	goto out;
tempfail:
	x->verdict = SASL_TEMPFAIL;
	x->reason = "digest failed";
out:
	OPENSSL_cleanse(ctx, sizeof(ctx));
	OPENSSL_cleanse(want, sizeof(want));
}

/* --------------------------------------------------------- SCRAM-SHA-256 */

/* The key behind fake salts: one per process, so that a user's salt is
 * stable across attempts whether or not the user exists. */
static unsigned char fake_key[32];
static bool fake_key_ok;
static pthread_once_t fake_once = PTHREAD_ONCE_INIT;

static void fake_key_init(void)
{
	fake_key_ok = RAND_bytes(fake_key, sizeof(fake_key)) == 1;
}

static bool fake_salt(const char *login, unsigned char *salt, size_t *saltlen)
{
	unsigned char mac[32];
	unsigned int mlen = 0;
	char lower[SASL_ID_MAX + 1];

	pthread_once(&fake_once, fake_key_init);
	if (!fake_key_ok)
		return false;
	tern_strlcpy(lower, login, sizeof(lower));
	tern_ascii_lower(lower);
	if (HMAC(EVP_sha256(), fake_key, sizeof(fake_key), (const unsigned char *)lower,
	         strlen(lower), mac, &mlen) == NULL)
		return false;
	memcpy(salt, mac, 16);
	*saltlen = 16;
	return true;
}

static enum sasl_status scram_first(struct sasl_exchange *x, const char *p, size_t n)
{
	struct scram_client_first cf;
	struct scram_stored st;
	enum user_secret_scheme sch;
	const char *sec;
	size_t seclen;
	struct tbuf sf = TBUF_INIT(1024);
	enum sasl_status ret;
	int rc = scram_parse_client_first(p, n, &cf);

	if (rc == TERN_EINVAL)
		return done(x, SASL_FAIL,
		            cf.cbflag == 0 ? "SCRAM channel binding asked for (not offered)"
		                           : "SCRAM mandatory extension not supported");
	if (rc != TERN_OK)
		return done(x, SASL_MALFORMED, "malformed SCRAM client-first message");
	if (scram_saslname_decode(cf.user_raw, x->login, sizeof(x->login)) != TERN_OK)
		return done(x, SASL_MALFORMED, "bad SCRAM user name");
	x->have_login = true;
	if (cf.authzid_raw.n > 0 &&
	    scram_saslname_decode(cf.authzid_raw, x->authzid, sizeof(x->authzid)) != TERN_OK)
		return done(x, SASL_MALFORMED, "bad SCRAM authorization identity");
	if (!authz_allowed(x, x->login, x->authzid))
		return done(x, SASL_FAIL, "authorization identity not allowed");
	if (cf.gs2_header.n >= sizeof(x->gs2))
		return done(x, SASL_MALFORMED, "SCRAM header too long");
	memcpy(x->gs2, cf.gs2_header.p, cf.gs2_header.n);
	x->gs2len = cf.gs2_header.n;

	/* The salt and iteration count to announce. */
	x->scram_user_ok = false;
	x->scram_iter = SCRAM_ITER_DEFAULT;
	if (get_secret(x->cfg, x->login, &sch, &sec, &seclen) != TERN_OK) {
		x->scram_no_reason = "unknown user";
	} else if (sch == USER_SECRET_SCRAM_SHA256) {
		if (scram_parse_stored(sec, seclen, &st) == TERN_OK) {
			x->scram_user_ok = true;
			x->scram_iter = st.iter;
			memcpy(x->salt, st.salt, st.saltlen);
			x->saltlen = st.saltlen;
			memcpy(x->stored_key, st.stored_key, SCRAM_KEYLEN);
			memcpy(x->server_key, st.server_key, SCRAM_KEYLEN);
			OPENSSL_cleanse(&st, sizeof(st));
		} else {
			x->scram_no_reason = "stored SCRAM-SHA-256 secret malformed";
		}
	} else if (sch == USER_SECRET_PLAIN && seclen <= SASL_PASS_MAX) {
		/* Keys are derived in sasl_verify (PBKDF2 is slow). */
		x->scram_user_ok = true;
		x->scram_from_secret = true;
		memcpy(x->secret, sec, seclen);
		x->secret[seclen] = '\0';
		x->secretlen = seclen;
	} else {
		x->scram_no_reason = sch == USER_SECRET_LOCKED ? "account locked"
		                                               : "stored secret does not allow "
		                                                 "SCRAM-SHA-256 (needs PLAIN or "
		                                                 "SCRAM-SHA-256)";
	}
	if ((!x->scram_user_ok || x->scram_from_secret) &&
	    !fake_salt(x->login, x->salt, &x->saltlen))
		return done(x, SASL_TEMPFAIL, "no randomness");

	/* The nonce: the client's, then ours. */
	if (cf.cnonce.n + 2 * SCRAM_SNONCE_BYTES + 1 > sizeof(x->nonce))
		return done(x, SASL_MALFORMED, "SCRAM nonce too long");
	memcpy(x->nonce, cf.cnonce.p, cf.cnonce.n);
	x->noncelen = cf.cnonce.n;
	if (x->nonce_override[0] != '\0') {
		size_t on = strlen(x->nonce_override);

		if (x->noncelen + on >= sizeof(x->nonce))
			return done(x, SASL_MALFORMED, "SCRAM nonce too long");
		memcpy(x->nonce + x->noncelen, x->nonce_override, on);
		x->noncelen += on;
	} else {
		unsigned char r[SCRAM_SNONCE_BYTES];
		struct tbuf b = TBUF_INIT(64);

		if (RAND_bytes(r, sizeof(r)) != 1 ||
		    tern_base64_encode(r, sizeof(r), &b) != TERN_OK) {
			tbuf_free(&b);
			return done(x, SASL_TEMPFAIL, "no randomness");
		}
		memcpy(x->nonce + x->noncelen, b.data, b.len);
		x->noncelen += b.len;
		tbuf_free(&b);
	}
	x->nonce[x->noncelen] = '\0';

	/* server-first-message = "r=" nonce ",s=" salt ",i=" iteration-count */
	if (tbuf_printf(&sf, "r=%s,s=", x->nonce) != TERN_OK ||
	    tern_base64_encode(x->salt, x->saltlen, &sf) != TERN_OK ||
	    tbuf_printf(&sf, ",i=%u", x->scram_iter) != TERN_OK) {
		tbuf_free(&sf);
		return done(x, SASL_TEMPFAIL, "out of memory");
	}
	/* AuthMessage so far: client-first-bare "," server-first "," */
	tbuf_reset(&x->auth_msg);
	if (tbuf_append(&x->auth_msg, cf.bare.p, cf.bare.n) != TERN_OK ||
	    tbuf_append(&x->auth_msg, ",", 1) != TERN_OK ||
	    tbuf_append(&x->auth_msg, sf.data, sf.len) != TERN_OK ||
	    tbuf_append(&x->auth_msg, ",", 1) != TERN_OK) {
		tbuf_free(&sf);
		return done(x, SASL_TEMPFAIL, "out of memory");
	}
	ret = challenge(x, sf.data, sf.len, STEP_SCRAM_FINAL);
	tbuf_free(&sf);
	return ret;
}

static enum sasl_status scram_final(struct sasl_exchange *x, const char *p, size_t n)
{
	struct scram_client_final cf;
	struct tbuf cb = TBUF_INIT(sizeof(x->gs2));
	bool cb_ok;

	if (scram_parse_client_final(p, n, &cf) != TERN_OK)
		return done(x, SASL_MALFORMED, "malformed SCRAM client-final message");
	/* c= must carry exactly the gs2 header of the first message (no
	 * channel binding data: none was negotiated). */
	cb_ok = tern_base64_decode(cf.cbind.p, cf.cbind.n, &cb) == TERN_OK && cb.len == x->gs2len &&
	        memcmp(cb.data, x->gs2, x->gs2len) == 0;
	tbuf_free(&cb);
	if (!cb_ok)
		return done(x, SASL_FAIL, "SCRAM channel binding data does not match");
	if (cf.nonce.n != x->noncelen || memcmp(cf.nonce.p, x->nonce, x->noncelen) != 0)
		return done(x, SASL_FAIL, "SCRAM nonce does not match");
	if (tbuf_append(&x->auth_msg, cf.without_proof.p, cf.without_proof.n) != TERN_OK)
		return done(x, SASL_TEMPFAIL, "out of memory");
	memcpy(x->proof, cf.proof, SCRAM_KEYLEN);
	OPENSSL_cleanse(cf.proof, sizeof(cf.proof));
	return need_verify(x);
}

static void scram_verify(struct sasl_exchange *x)
{
	x->verdict = SASL_FAIL;
	if (!x->scram_user_ok) {
		x->reason = x->scram_no_reason != NULL ? x->scram_no_reason : "unknown user";
		return;
	}
	if (x->scram_from_secret &&
	    scram_keys_from_password(x->secret, x->secretlen, x->salt, x->saltlen, x->scram_iter,
	                             x->stored_key, x->server_key) != TERN_OK) {
		x->verdict = SASL_TEMPFAIL;
		x->reason = "key derivation failed";
		return;
	}
	if (scram_check_proof(x->stored_key, x->server_key, x->proof, x->auth_msg.data,
	                      x->auth_msg.len, x->server_sig) == TERN_OK) {
		x->verdict = SASL_OK;
	} else {
		x->reason = "wrong password (SCRAM proof)";
	}
}

static enum sasl_status scram_finish(struct sasl_exchange *x)
{
	struct tbuf v = TBUF_INIT(64);
	enum sasl_status st;

	/* server-final-message = "v=" base64(ServerSignature); the client's
	 * empty answer ends the exchange. */
	if (tbuf_append(&v, "v=", 2) != TERN_OK ||
	    tern_base64_encode(x->server_sig, SCRAM_KEYLEN, &v) != TERN_OK) {
		tbuf_free(&v);
		return done(x, SASL_TEMPFAIL, "out of memory");
	}
	wipe_secrets(x);
	st = challenge(x, v.data, v.len, STEP_SCRAM_ACK);
	tbuf_free(&v);
	return st;
}

/* ---------------------------------------------------- XOAUTH2, OAUTHBEARER */

static enum sasl_status oauth_input(struct sasl_exchange *x, const char *p, size_t n)
{
	struct sasl_oauth_msg m;
	int rc = x->mech == SASL_MECH_XOAUTH2 ? sasl_xoauth2_parse(p, n, &m)
	                                      : sasl_oauthbearer_parse(p, n, &m);

	if (rc == TERN_EINVAL)
		return done(x, SASL_FAIL, "OAUTHBEARER channel binding asked for (not offered)");
	if (rc != TERN_OK)
		return done(x, SASL_MALFORMED, "malformed OAuth message");
	if (m.user.n > 0) {
		bool ok = x->mech == SASL_MECH_XOAUTH2
		              ? set_login(x, m.user.p, m.user.n)
		              : scram_saslname_decode(m.user, x->authzid, sizeof(x->authzid)) ==
		                        TERN_OK &&
		                    set_login(x, x->authzid, strlen(x->authzid));

		if (!ok)
			return done(x, SASL_MALFORMED, "bad OAuth user name");
	}
	x->token = malloc(m.token.n + 1);
	if (x->token == NULL)
		return done(x, SASL_TEMPFAIL, "out of memory");
	memcpy(x->token, m.token.p, m.token.n);
	x->token[m.token.n] = '\0';
	x->tokenlen = m.token.n;
	return need_verify(x);
}

static void oauth_verify(struct sasl_exchange *x)
{
	const struct sasl_config *cfg = x->cfg;
	char user[SASL_ID_MAX + 1];
	const char *why = NULL;
	long long now = cfg->now != NULL ? cfg->now(cfg->now_arg) : (long long)time(NULL);
	int rc = oauth_token_validate(cfg->oauth, cfg->oauth_keys, x->token, x->tokenlen, now, user,
	                              sizeof(user), &why);

	if (rc == TERN_ENOMEM) {
		x->verdict = SASL_TEMPFAIL;
		x->reason = "out of memory";
		return;
	}
	if (rc != TERN_OK) {
		x->verdict = SASL_FAIL;
		x->reason = why;
		return;
	}
	/* XOAUTH2's user= must be the token's user; an OAUTHBEARER authzid
	 * other than the token's user goes through the policy (in finish,
	 * on the caller's thread). */
	if (x->mech == SASL_MECH_XOAUTH2 && !tern_ascii_ieq(x->login, user)) {
		x->verdict = SASL_FAIL;
		x->reason = "XOAUTH2 user does not match the token";
		return;
	}
	if (!x->have_login)
		set_login(x, user, strlen(user));
	set_identity(x, user);
	x->verdict = SASL_OK;
}

static enum sasl_status oauth_error(struct sasl_exchange *x)
{
	const struct oauth_config *oc = x->cfg->oauth;
	json_t *j;
	char *s;
	enum sasl_status st;

	/* RFC 7628 §3.2.2 for OAUTHBEARER; XOAUTH2 clients expect Google's
	 * HTTP-like status. Both say where to get a token when we know. */
	if (x->mech == SASL_MECH_OAUTHBEARER)
		j = json_pack("{s:s, s:s}", "status", "invalid_token", "schemes", "bearer");
	else
		j = json_pack("{s:s, s:s}", "status", "401", "schemes", "bearer");
	if (j != NULL && oc != NULL && oc->issuer != NULL &&
	    strncmp(oc->issuer, "https://", 8) == 0) {
		size_t il = strlen(oc->issuer);
		char url[1024];
		int n;

		if (oc->issuer[il - 1] == '/')
			il--;
		n = snprintf(url, sizeof(url), "%.*s/.well-known/openid-configuration", (int)il,
		             oc->issuer);
		if (n > 0 && (size_t)n < sizeof(url))
			json_object_set_new(j, "openid-configuration", json_string(url));
	}
	s = j != NULL ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
	json_decref(j);
	if (s == NULL)
		return done(x, SASL_FAIL, x->reason);
	wipe_secrets(x);
	st = challenge(x, s, strlen(s), STEP_OAUTH_ERRACK);
	free(s);
	return st;
}

/* --------------------------------------------------------------- driving */

/* The first move of a mechanism when there was no initial response. */
static enum sasl_status begin(struct sasl_exchange *x)
{
	switch (x->mech) {
	case SASL_MECH_PLAIN:
		return challenge(x, "", 0, STEP_PLAIN_MSG);
	case SASL_MECH_LOGIN:
		return challenge(x, "Username:", 9, STEP_LOGIN_USER);
	case SASL_MECH_CRAM_MD5:
		return cram_begin(x);
	case SASL_MECH_SCRAM_SHA256:
		return challenge(x, "", 0, STEP_SCRAM_FIRST);
	case SASL_MECH_XOAUTH2:
	case SASL_MECH_OAUTHBEARER:
		return challenge(x, "", 0, STEP_OAUTH_MSG);
	case SASL_MECH_COUNT:
		break;
	}
	(void)TERN_BUG_ON(1);
	return done(x, SASL_TEMPFAIL, "internal error");
}

/* A decoded client message (x->msg) at the current step. */
static enum sasl_status input(struct sasl_exchange *x)
{
	const char *p = x->msg.data != NULL ? x->msg.data : "";
	size_t n = x->msg.len;

	switch (x->step) {
	case STEP_PLAIN_MSG:
		return plain_input(x, p, n);
	case STEP_LOGIN_USER:
	case STEP_LOGIN_PASS:
		return login_input(x, p, n);
	case STEP_CRAM_RESPONSE:
		return cram_input(x, p, n);
	case STEP_SCRAM_FIRST:
		return scram_first(x, p, n);
	case STEP_SCRAM_FINAL:
		return scram_final(x, p, n);
	case STEP_SCRAM_ACK:
		if (n != 0)
			return done(x, SASL_MALFORMED, "SCRAM: expected an empty response");
		x->have_identity = true;
		return done(x, SASL_OK, "");
	case STEP_OAUTH_MSG:
		return oauth_input(x, p, n);
	case STEP_OAUTH_ERRACK:
		/* Whatever the client says ("\x01" per RFC 7628), the token
		 * was refused; keep the reason verify gave. */
		return done(x, SASL_FAIL, x->reason);
	case STEP_NONE:
		break;
	}
	(void)TERN_BUG_ON(1);
	return done(x, SASL_TEMPFAIL, "internal error");
}

static enum step first_step(enum sasl_mech m)
{
	switch (m) {
	case SASL_MECH_PLAIN:
		return STEP_PLAIN_MSG;
	case SASL_MECH_LOGIN:
		return STEP_LOGIN_USER; /* the initial response is the user name */
	case SASL_MECH_SCRAM_SHA256:
		return STEP_SCRAM_FIRST;
	case SASL_MECH_XOAUTH2:
	case SASL_MECH_OAUTHBEARER:
		return STEP_OAUTH_MSG;
	case SASL_MECH_CRAM_MD5:
	case SASL_MECH_COUNT:
		break;
	}
	return STEP_NONE;
}

enum sasl_status sasl_start(struct sasl_exchange *x, const char *mech, size_t mechlen,
                            const char *initial, size_t ilen)
{
	enum sasl_mech m;
	enum sasl_status st;

	if (TERN_BUG_ON(x == NULL || x->state != XS_NEW))
		return x != NULL ? done(x, SASL_TEMPFAIL, "internal error") : SASL_TEMPFAIL;
	if (mech == NULL || sasl_mech_parse(mech, mechlen, &m) != TERN_OK ||
	    !sasl_mech_enabled(x->cfg, m))
		return done(x, SASL_NOMECH, "mechanism not offered");
	x->mech = m;
	if (initial == NULL)
		return begin(x);
	/* RFC 4954 §4: an initial response to a mechanism where the server
	 * speaks first is refused (501 5.7.0). */
	if (first_step(m) == STEP_NONE)
		return done(x, SASL_PROTOCOL, "initial response not allowed for this mechanism");
	if ((st = decode_line(x, initial, ilen, true)) != SASL_CONTINUE)
		return st;
	x->step = first_step(m);
	return input(x);
}

enum sasl_status sasl_step(struct sasl_exchange *x, const char *line, size_t len)
{
	enum sasl_status st;

	if (TERN_BUG_ON(x == NULL || x->state != XS_STEP))
		return x != NULL ? done(x, SASL_TEMPFAIL, "internal error") : SASL_TEMPFAIL;
	if (line == NULL)
		line = "";
	if ((st = decode_line(x, line, len, false)) != SASL_CONTINUE)
		return st;
	return input(x);
}

const char *sasl_challenge(const struct sasl_exchange *x, size_t *len)
{
	if (len != NULL)
		*len = x->state == XS_STEP ? x->challenge.len : 0;
	if (x->state != XS_STEP || x->challenge.data == NULL)
		return "";
	return x->challenge.data;
}

void sasl_verify(struct sasl_exchange *x)
{
	if (TERN_BUG_ON(x == NULL || x->state != XS_VERIFY))
		return;
	x->verdict = SASL_FAIL;
	switch (x->mech) {
	case SASL_MECH_PLAIN:
	case SASL_MECH_LOGIN:
		password_verify(x);
		break;
	case SASL_MECH_CRAM_MD5:
		cram_verify(x);
		break;
	case SASL_MECH_SCRAM_SHA256:
		scram_verify(x);
		break;
	case SASL_MECH_XOAUTH2:
	case SASL_MECH_OAUTHBEARER:
		oauth_verify(x);
		break;
	case SASL_MECH_COUNT:
		(void)TERN_BUG_ON(1);
		break;
	}
	/* The password has done its job. (SCRAM keys stay for finish.) */
	OPENSSL_cleanse(x->secret, sizeof(x->secret));
	x->secretlen = 0;
	enter(x, XS_VERIFIED, STEP_NONE);
}

bool sasl_verify_is_slow(const struct sasl_exchange *x)
{
	return x->mech == SASL_MECH_PLAIN || x->mech == SASL_MECH_LOGIN ||
	       (x->mech == SASL_MECH_SCRAM_SHA256 && x->scram_from_secret);
}

enum sasl_status sasl_finish(struct sasl_exchange *x)
{
	if (TERN_BUG_ON(x == NULL || x->state != XS_VERIFIED))
		return x != NULL ? done(x, SASL_TEMPFAIL, "internal error") : SASL_TEMPFAIL;
	if (x->verdict == SASL_TEMPFAIL)
		return done(x, SASL_TEMPFAIL, x->reason);
	if (x->mech == SASL_MECH_OAUTHBEARER && x->verdict == SASL_OK &&
	    !authz_allowed(x, x->identity, x->authzid)) {
		x->verdict = SASL_FAIL;
		x->have_identity = false;
		x->reason = "authorization identity not allowed";
	}
	if (x->mech == SASL_MECH_SCRAM_SHA256) {
		if (x->verdict != SASL_OK)
			return done(x, SASL_FAIL, x->reason);
		set_identity(x, x->authzid[0] != '\0' ? x->authzid : x->login);
		x->have_identity = false; /* not until the client's last line */
		return scram_finish(x);
	}
	if (x->mech == SASL_MECH_XOAUTH2 || x->mech == SASL_MECH_OAUTHBEARER) {
		if (x->verdict != SASL_OK)
			return oauth_error(x);
		if (x->authzid[0] != '\0')
			set_identity(x, x->authzid);
		return done(x, SASL_OK, "");
	}
	if (x->verdict != SASL_OK)
		x->have_identity = false;
	return done(x, x->verdict, x->verdict == SASL_OK ? "" : x->reason);
}

/* -------------------------------------------------------------- accessors */

enum sasl_mech sasl_exchange_mech(const struct sasl_exchange *x)
{
	return x->mech;
}

const char *sasl_login(const struct sasl_exchange *x)
{
	return x->have_login ? x->login : NULL;
}

const char *sasl_identity(const struct sasl_exchange *x)
{
	return x->have_identity && x->state == XS_DONE ? x->identity : NULL;
}

const char *sasl_reason(const struct sasl_exchange *x)
{
	return x->reason != NULL ? x->reason : "";
}

int sasl_test_set_nonce(struct sasl_exchange *x, const char *nonce)
{
	size_t n = strlen(nonce);

	if (x->state != XS_NEW || n == 0 || n >= sizeof(x->nonce_override))
		return TERN_EINVAL;
	memcpy(x->nonce_override, nonce, n + 1);
	return TERN_OK;
}

/* ------------------------------------------------------------ PLAIN parse */

int sasl_plain_parse(const char *p, size_t n, struct sasl_plain *out)
{
	const char *nul1, *nul2;

	memset(out, 0, sizeof(*out));
	nul1 = memchr(p, '\0', n);
	if (nul1 == NULL)
		return TERN_ESYNTAX;
	nul2 = memchr(nul1 + 1, '\0', (size_t)(p + n - nul1 - 1));
	if (nul2 == NULL || memchr(nul2 + 1, '\0', (size_t)(p + n - nul2 - 1)) != NULL)
		return TERN_ESYNTAX;
	out->authzid = strv_make(p, (size_t)(nul1 - p));
	out->authcid = strv_make(nul1 + 1, (size_t)(nul2 - nul1 - 1));
	out->passwd = strv_make(nul2 + 1, (size_t)(p + n - nul2 - 1));
	if (out->authcid.n == 0 || out->passwd.n == 0)
		return TERN_ESYNTAX;
	if (out->authzid.n > SASL_ID_MAX || out->authcid.n > SASL_ID_MAX ||
	    out->passwd.n > SASL_PASS_MAX)
		return TERN_ELIMIT;
	return TERN_OK;
}
