/*
 * test_sasl.c — the SASL server engine (src/auth/sasl*.c) and the JWT
 * validation behind XOAUTH2/OAUTHBEARER (src/auth/oauth_jwt.c), driven the
 * way SMTP and POP3 will drive them: base64 lines in, challenges out,
 * sasl_verify + sasl_finish in between.
 *
 * Vectors: the RFC 4616, RFC 2195 and RFC 7677 examples, and stored secrets
 * made by Dovecot's doveadm with client messages computed by Python's
 * hashlib (tests/data/sasl/vectors.txt, see SOURCE.md). JWTs are signed here
 * with keys generated for the run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "auth/auth.h"
#include "auth/sasl_internal.h"
#include "auth/users_internal.h"
#include "core/buf.h"
#include "core/codec.h"
#include "core/err.h"

/* ------------------------------------------------------------- helpers */

/* A string literal and its length (NUL bytes inside count). */
#define LIT(s) (s), (sizeof(s) - 1)

static struct user_db *db_from(const char *text)
{
	struct user_db *db = NULL;
	char err[256];
	int rc = users_parse_buffer(text, strlen(text), "test", &db, err, sizeof(err));

	if (rc != TERN_OK)
		fail_msg("users file refused: %s", err);
	return db;
}

/* base64 of (p, n) as a NUL-terminated string the caller frees. */
static char *b64(const void *p, size_t n)
{
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t len;
	char *s;

	assert_int_equal(tern_base64_encode(p, n, &b), TERN_OK);
	if (b.data == NULL)
		return strdup("");
	s = tbuf_steal(&b, &len);
	return s;
}

/* Sends raw bytes as the client's next line. */
static enum sasl_status send_raw(struct sasl_exchange *x, const void *p, size_t n)
{
	char *s = b64(p, n);
	enum sasl_status st = sasl_step(x, s, strlen(s));

	free(s);
	return st;
}

static enum sasl_status send_str(struct sasl_exchange *x, const char *s)
{
	return send_raw(x, s, strlen(s));
}

static enum sasl_status start_raw(struct sasl_exchange *x, const char *mech, const void *p,
                                  size_t n)
{
	char *s = b64(p, n);
	enum sasl_status st = sasl_start(x, mech, strlen(mech), s, strlen(s));

	free(s);
	return st;
}

/* The current challenge, decoded, into out (NUL-terminated). */
static size_t challenge_raw(struct sasl_exchange *x, char *out, size_t outlen)
{
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t n;
	const char *c = sasl_challenge(x, &n);

	assert_int_equal(strlen(c), n);
	assert_int_equal(tern_base64_decode(c, n, &b), TERN_OK);
	assert_true(b.len < outlen);
	if (b.len > 0)
		memcpy(out, b.data, b.len);
	out[b.len] = '\0';
	n = b.len;
	tbuf_free(&b);
	return n;
}

static void assert_challenge(struct sasl_exchange *x, const char *want)
{
	char got[4096];

	challenge_raw(x, got, sizeof(got));
	assert_string_equal(got, want);
}

/* What the caller does on NEED_VERIFY, inline. */
static enum sasl_status verify_finish(struct sasl_exchange *x)
{
	sasl_verify(x);
	return sasl_finish(x);
}

static char *hash_of(const char *pw)
{
	static char h[256];

	assert_int_equal(users_hash_password(pw, h, sizeof(h)), TERN_OK);
	return h;
}

/* -------------------------------------------------------------- vectors */

struct vec {
	char kind[16], name[64];
	char key[12][32];
	char val[12][512];
	int n;
};

static const char *vec_get(const struct vec *v, const char *key)
{
	for (int i = 0; i < v->n; i++) {
		if (strcmp(v->key[i], key) == 0)
			return v->val[i];
	}
	fail_msg("vector %s has no %s", v->name, key);
	return NULL;
}

static const char *data_path(void)
{
	static char buf[1024];
	const char *file = __FILE__;
	const char *cut = strstr(file, "tests/unit/");

	if (cut != NULL && file[0] == '/') {
		int n = snprintf(buf, sizeof(buf), "%.*stests/data/sasl/vectors.txt",
		                 (int)(cut - file), file);
		if (n > 0 && (size_t)n < sizeof(buf))
			return buf;
	}
	return "tests/data/sasl/vectors.txt";
}

/* Reads every [kind name] block of vectors.txt. */
static int load_vectors(struct vec *out, int max)
{
	FILE *f = fopen(data_path(), "r");
	char line[1024];
	int n = -1;

	assert_non_null(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		size_t len = strlen(line);
		char *eq;

		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		if (len == 0 || line[0] == '#')
			continue;
		if (line[0] == '[') {
			assert_true(++n < max);
			memset(&out[n], 0, sizeof(out[n]));
			assert_int_equal(sscanf(line, "[%15s %63[^]]]", out[n].kind, out[n].name),
			                 2);
			continue;
		}
		eq = strchr(line, '=');
		assert_non_null(eq);
		assert_true(n >= 0 && out[n].n < 12);
		*eq = '\0';
		tern_strlcpy(out[n].key[out[n].n], line, sizeof(out[n].key[0]));
		tern_strlcpy(out[n].val[out[n].n], eq + 1, sizeof(out[n].val[0]));
		out[n].n++;
	}
	fclose(f);
	return n + 1;
}

/* A one-user store serving a stored secret through the config's hook (the
 * RFC examples use bare names that a users file, made of addresses, cannot
 * hold). */
struct one_user {
	const char *login;
	const char *stored; /* "{SCHEME}value" */
};

static int one_get_secret(void *arg, const char *login, enum user_secret_scheme *scheme,
                          const char **secret, size_t *len)
{
	const struct one_user *u = arg;
	const char *close = strchr(u->stored, '}');

	if (strcmp(login, u->login) != 0)
		return TERN_ENOTFOUND;
	if (strncmp(u->stored, "{SCRAM-SHA-256}", 15) == 0)
		*scheme = USER_SECRET_SCRAM_SHA256;
	else if (strncmp(u->stored, "{CRAM-MD5}", 10) == 0)
		*scheme = USER_SECRET_CRAM_MD5;
	else
		*scheme = USER_SECRET_PLAIN;
	*secret = close + 1;
	*len = strlen(close + 1);
	return TERN_OK;
}

/* ----------------------------------------------------------------- PLAIN */

static const char users_text[] = "# test users\n"
                                 "tim@example.org:{PLAIN}tanstaaftanstaaf\n"
                                 "kurt@example.org:{PLAIN}xipj3plmq\n"
                                 "locked@example.org:!\n";

static void plain_rfc4616_messages_parse(void **state)
{
	struct sasl_plain p;

	(void)state;
	/* RFC 4616 §4, first example: no authorization identity. */
	assert_int_equal(sasl_plain_parse("\0tim\0tanstaaftanstaaf", 21, &p), TERN_OK);
	assert_int_equal(p.authzid.n, 0);
	assert_true(strv_eq(p.authcid, STRV("tim")));
	assert_true(strv_eq(p.passwd, STRV("tanstaaftanstaaf")));
	/* Second example: Kurt asks to act as Ursel. */
	assert_int_equal(sasl_plain_parse("Ursel\0Kurt\0xipj3plmq", 20, &p), TERN_OK);
	assert_true(strv_eq(p.authzid, STRV("Ursel")));
	assert_true(strv_eq(p.authcid, STRV("Kurt")));
	assert_true(strv_eq(p.passwd, STRV("xipj3plmq")));
	/* Not three fields, or empty authcid / password. */
	assert_int_equal(sasl_plain_parse("\0tim", 4, &p), TERN_ESYNTAX);
	assert_int_equal(sasl_plain_parse("\0tim\0pw\0x", 9, &p), TERN_ESYNTAX);
	assert_int_equal(sasl_plain_parse("\0\0pw", 4, &p), TERN_ESYNTAX);
	assert_int_equal(sasl_plain_parse("\0tim\0", 5, &p), TERN_ESYNTAX);
}

static void plain_without_initial_response(void **state)
{
	struct user_db *db = db_from(users_text);
	struct sasl_config cfg = {.users = db};
	struct sasl_exchange *x = sasl_new(&cfg);

	(void)state;
	/* RFC 4616 §4's first exchange: an empty challenge, then the message. */
	assert_int_equal(sasl_start(x, "plain", 5, NULL, 0), SASL_CONTINUE);
	assert_string_equal(sasl_challenge(x, NULL), "");
	assert_null(sasl_identity(x));
	assert_int_equal(send_raw(x, "\0tim@example.org\0tanstaaftanstaaf", 33), SASL_NEED_VERIFY);
	assert_true(sasl_verify_is_slow(x));
	assert_string_equal(sasl_login(x), "tim@example.org");
	assert_int_equal(verify_finish(x), SASL_OK);
	assert_string_equal(sasl_identity(x), "tim@example.org");
	sasl_free(x);
	users_free(db);
}

static void plain_with_initial_response_and_case(void **state)
{
	struct user_db *db = db_from(users_text);
	struct sasl_config cfg = {.users = db};
	struct sasl_exchange *x = sasl_new(&cfg);

	(void)state;
	assert_int_equal(start_raw(x, "PLAIN", "\0Tim@Example.ORG\0tanstaaftanstaaf", 33),
	                 SASL_NEED_VERIFY);
	assert_int_equal(verify_finish(x), SASL_OK);
	/* The identity is the users-file address, lowercased. */
	assert_string_equal(sasl_identity(x), "tim@example.org");
	sasl_free(x);
	users_free(db);
}

static enum sasl_status plain_once(const struct sasl_config *cfg, const char *msg, size_t n,
                                   char *reason, size_t rlen, char *id, size_t idlen)
{
	struct sasl_exchange *x = sasl_new(cfg);
	enum sasl_status st = start_raw(x, "PLAIN", msg, n);

	if (st == SASL_NEED_VERIFY)
		st = verify_finish(x);
	if (reason != NULL)
		tern_strlcpy(reason, sasl_reason(x), rlen);
	if (id != NULL)
		tern_strlcpy(id, sasl_identity(x) != NULL ? sasl_identity(x) : "", idlen);
	sasl_free(x);
	return st;
}

static void plain_refusals(void **state)
{
	struct user_db *db = db_from(users_text);
	struct sasl_config cfg = {.users = db};
	char why[128];

	(void)state;
	assert_int_equal(
	    plain_once(&cfg, "\0tim@example.org\0wrong", 22, why, sizeof(why), NULL, 0), SASL_FAIL);
	assert_string_equal(why, "wrong password");
	assert_int_equal(plain_once(&cfg, "\0nobody@example.org\0x", 21, why, sizeof(why), NULL, 0),
	                 SASL_FAIL);
	assert_string_equal(why, "unknown user");
	assert_int_equal(plain_once(&cfg, "\0locked@example.org\0!", 21, why, sizeof(why), NULL, 0),
	                 SASL_FAIL);
	assert_string_equal(why, "account locked");
	/* "=" is an empty initial response: not a PLAIN message. */
	{
		struct sasl_exchange *x = sasl_new(&cfg);

		assert_int_equal(sasl_start(x, "PLAIN", 5, "=", 1), SASL_MALFORMED);
		sasl_free(x);
	}
	users_free(db);
}

static bool allow_ursel(void *arg, const char *authcid, const char *authzid)
{
	int *calls = arg;

	(*calls)++;
	return strcmp(authcid, "kurt@example.org") == 0 &&
	       strcmp(authzid, "ursel@example.org") == 0;
}

static void plain_authzid_needs_policy(void **state)
{
	struct user_db *db = db_from(users_text);
	struct sasl_config cfg = {.users = db};
	char why[128], id[SASL_ID_MAX + 1];
	static const char msg[] = "ursel@example.org\0kurt@example.org\0xipj3plmq";
	int calls = 0;

	(void)state;
	/* RFC 4616 §4's second example: refused without a policy. */
	assert_int_equal(plain_once(&cfg, msg, sizeof(msg) - 1, why, sizeof(why), NULL, 0),
	                 SASL_FAIL);
	assert_string_equal(why, "authorization identity not allowed");
	/* An authzid equal to the authcid (case aside) needs no policy. */
	assert_int_equal(plain_once(&cfg, "KURT@example.org\0kurt@example.org\0xipj3plmq", 43, why,
	                            sizeof(why), id, sizeof(id)),
	                 SASL_OK);
	assert_string_equal(id, "kurt@example.org");
	/* The policy lets Kurt act as Ursel: the session is Ursel's. */
	cfg.authz_ok = allow_ursel;
	cfg.authz_arg = &calls;
	assert_int_equal(plain_once(&cfg, msg, sizeof(msg) - 1, why, sizeof(why), id, sizeof(id)),
	                 SASL_OK);
	assert_string_equal(id, "ursel@example.org");
	assert_int_equal(calls, 1);
	/* ...but still only with Kurt's password. */
	assert_int_equal(plain_once(&cfg, "ursel@example.org\0kurt@example.org\0nope", 39, why,
	                            sizeof(why), NULL, 0),
	                 SASL_FAIL);
	users_free(db);
}

static void plain_every_stored_scheme(void **state)
{
	char text[2048];
	struct user_db *db;
	struct sasl_config cfg;

	(void)state;
	/* crypt (SHA512-CRYPT), and Dovecot's CRAM-MD5 and SCRAM-SHA-256 forms:
	 * PLAIN works with every one (users_verify knows them all). */
	snprintf(text, sizeof(text),
	         "crypt@example.org:%s\n"
	         "cram@example.org:{CRAM-MD5}"
	         "d06d4e1b26fccaa4b0b61801132340a354b21152711fb604ca3e035e7015116b\n"
	         "scram@example.org:{SCRAM-SHA-256}4096,6cfvSGXuRqJhXyLvD0NoMw==,"
	         "X9VI2oVChWf5cHWOY+8k/eLZLwfY2myDf/Tly60iBTg=,"
	         "5vlboOkW9+hKNk+MQyEaQNUrW4/TPqsHg4vODJMGf40=\n",
	         hash_of("s3cret"));
	db = db_from(text);
	cfg = (struct sasl_config){.users = db};
	assert_int_equal(plain_once(&cfg, "\0crypt@example.org\0s3cret", 25, NULL, 0, NULL, 0),
	                 SASL_OK);
	assert_int_equal(plain_once(&cfg, "\0crypt@example.org\0s3creT", 25, NULL, 0, NULL, 0),
	                 SASL_FAIL);
	assert_int_equal(
	    plain_once(&cfg, "\0cram@example.org\0tanstaaftanstaaf", 34, NULL, 0, NULL, 0),
	    SASL_OK);
	assert_int_equal(
	    plain_once(&cfg, "\0cram@example.org\0tanstaaftanstaa", 33, NULL, 0, NULL, 0),
	    SASL_FAIL);
	assert_int_equal(plain_once(&cfg, "\0scram@example.org\0pencil", 25, NULL, 0, NULL, 0),
	                 SASL_OK);
	assert_int_equal(plain_once(&cfg, "\0scram@example.org\0pencil2", 26, NULL, 0, NULL, 0),
	                 SASL_FAIL);
	assert_int_equal(users_verify(db, "scram@example.org", "pencil"), TERN_OK);
	assert_int_equal(users_verify(db, "cram@example.org", "tanstaaftanstaaf"), TERN_OK);
	users_free(db);
}

static void users_file_checks_new_schemes(void **state)
{
	struct user_db *db = NULL;
	char err[256];
	enum user_secret_scheme sch;
	const char *sec;
	size_t len;
	static const char bad_cram[] = "a@b.c:{CRAM-MD5}d06d4e1b\n";
	static const char bad_scram[] = "a@b.c:{SCRAM-SHA-256}1000,c2FsdA==,"
	                                "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,"
	                                "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=\n";

	(void)state;
	/* Malformed values are refused at load, with the line number. */
	assert_int_equal(users_parse_buffer(bad_cram, strlen(bad_cram), "f", &db, err, sizeof(err)),
	                 TERN_ESYNTAX);
	assert_non_null(strstr(err, "f:1:"));
	assert_int_equal(
	    users_parse_buffer(bad_scram, strlen(bad_scram), "f", &db, err, sizeof(err)),
	    TERN_ESYNTAX);
	assert_non_null(strstr(err, "SCRAM-SHA-256"));
	/* users_get_secret gives the scheme and the value without its prefix. */
	db = db_from(
	    "x@y.z:{cram-md5}d06d4e1b26fccaa4b0b61801132340a354b21152711fb604ca3e035e7015116b\n"
	    "p@y.z:{CLEARTEXT}pw\n");
	assert_int_equal(users_get_secret(db, "X@Y.Z", &sch, &sec, &len), TERN_OK);
	assert_int_equal(sch, USER_SECRET_CRAM_MD5);
	assert_int_equal(len, 64);
	assert_int_equal(users_get_secret(db, "p@y.z", &sch, &sec, &len), TERN_OK);
	assert_int_equal(sch, USER_SECRET_PLAIN);
	assert_int_equal(len, 2);
	assert_memory_equal(sec, "pw", 2);
	assert_int_equal(users_get_secret(db, "q@y.z", &sch, &sec, &len), TERN_ENOTFOUND);
	users_free(db);
}

/* ----------------------------------------------------------------- LOGIN */

static void login_both_ways(void **state)
{
	struct user_db *db = db_from(users_text);
	struct sasl_config cfg = {.users = db};
	struct sasl_exchange *x = sasl_new(&cfg);

	(void)state;
	assert_int_equal(sasl_start(x, "LOGIN", 5, NULL, 0), SASL_CONTINUE);
	/* What every client expects: "Username:" then "Password:". */
	assert_string_equal(sasl_challenge(x, NULL), "VXNlcm5hbWU6");
	assert_int_equal(send_str(x, "tim@example.org"), SASL_CONTINUE);
	assert_string_equal(sasl_challenge(x, NULL), "UGFzc3dvcmQ6");
	assert_int_equal(send_str(x, "tanstaaftanstaaf"), SASL_NEED_VERIFY);
	assert_int_equal(verify_finish(x), SASL_OK);
	assert_string_equal(sasl_identity(x), "tim@example.org");
	sasl_free(x);

	/* With the user name as initial response (what many clients send). */
	x = sasl_new(&cfg);
	assert_int_equal(start_raw(x, "login", "kurt@example.org", 16), SASL_CONTINUE);
	assert_challenge(x, "Password:");
	assert_int_equal(send_str(x, "bad"), SASL_NEED_VERIFY);
	assert_int_equal(verify_finish(x), SASL_FAIL);
	assert_string_equal(sasl_login(x), "kurt@example.org");
	assert_null(sasl_identity(x));
	sasl_free(x);
	users_free(db);
}

static void cancel_and_bad_lines(void **state)
{
	struct user_db *db = db_from(users_text);
	struct sasl_config cfg = {.users = db};
	struct sasl_exchange *x = sasl_new(&cfg);
	char *big;

	(void)state;
	/* "*" cancels (the caller answers 501 5.7.0). */
	assert_int_equal(sasl_start(x, "LOGIN", 5, NULL, 0), SASL_CONTINUE);
	assert_int_equal(sasl_step(x, "*", 1), SASL_CANCELLED);
	assert_string_equal(sasl_reason(x), "cancelled by the client");
	sasl_free(x);

	x = sasl_new(&cfg);
	assert_int_equal(sasl_start(x, "PLAIN", 5, NULL, 0), SASL_CONTINUE);
	assert_int_equal(sasl_step(x, "*", 1), SASL_CANCELLED);
	sasl_free(x);

	/* Not base64 (RFC 4954 §4: reject, do not skip, bad characters). */
	x = sasl_new(&cfg);
	assert_int_equal(sasl_start(x, "PLAIN", 5, NULL, 0), SASL_CONTINUE);
	assert_int_equal(sasl_step(x, "AGE=AGI=", 8), SASL_MALFORMED);
	sasl_free(x);
	x = sasl_new(&cfg);
	assert_int_equal(sasl_start(x, "PLAIN", 5, "not base64!", 11), SASL_MALFORMED);
	sasl_free(x);

	/* Over the 12288-octet line limit: 500 5.5.6. */
	big = malloc(SASL_LINE_MAX + 5);
	memset(big, 'A', SASL_LINE_MAX + 4);
	x = sasl_new(&cfg);
	assert_int_equal(sasl_start(x, "LOGIN", 5, NULL, 0), SASL_CONTINUE);
	assert_int_equal(sasl_step(x, big, SASL_LINE_MAX + 4), SASL_TOO_LONG);
	sasl_free(x);
	/* Exactly at the limit is fine for the line, but a 9216-byte user
	 * name is not. */
	x = sasl_new(&cfg);
	assert_int_equal(sasl_start(x, "LOGIN", 5, NULL, 0), SASL_CONTINUE);
	assert_int_equal(sasl_step(x, big, SASL_LINE_MAX), SASL_MALFORMED);
	sasl_free(x);
	free(big);

	/* A PLAIN field over 255 octets. */
	{
		char msg[600];

		memset(msg, 'a', sizeof(msg));
		msg[0] = '\0';
		msg[300] = '\0';
		x = sasl_new(&cfg);
		assert_int_equal(start_raw(x, "PLAIN", msg, sizeof(msg)), SASL_MALFORMED);
		assert_string_equal(sasl_reason(x), "PLAIN field too long");
		sasl_free(x);
	}
	users_free(db);
}

static void mechanisms_offered(void **state)
{
	struct user_db *db = db_from(users_text);
	struct sasl_config cfg = {.users = db};
	struct sasl_exchange *x;
	char list[128];
	enum sasl_mech m;

	(void)state;
	/* By default CRAM-MD5 and SCRAM stay off (see sasl.c), OAuth needs keys. */
	assert_string_equal(sasl_mech_list(&cfg, list, sizeof(list)), "PLAIN LOGIN");
	x = sasl_new(&cfg);
	assert_int_equal(sasl_start(x, "CRAM-MD5", 8, NULL, 0), SASL_NOMECH);
	sasl_free(x);
	x = sasl_new(&cfg);
	assert_int_equal(sasl_start(x, "GSSAPI", 6, NULL, 0), SASL_NOMECH);
	sasl_free(x);
	cfg.mechs = SASL_MECH_BIT(SASL_MECH_SCRAM_SHA256) | SASL_MECH_BIT(SASL_MECH_CRAM_MD5) |
	            SASL_MECH_BIT(SASL_MECH_PLAIN) | SASL_MECH_BIT(SASL_MECH_XOAUTH2);
	assert_string_equal(sasl_mech_list(&cfg, list, sizeof(list)),
	                    "PLAIN CRAM-MD5 SCRAM-SHA-256");
	assert_int_equal(sasl_mech_parse("scram-sha-256", 13, &m), TERN_OK);
	assert_int_equal(m, SASL_MECH_SCRAM_SHA256);
	assert_int_equal(sasl_mech_parse("SCRAM-SHA-256-PLUS", 18, &m), TERN_ENOTFOUND);
	/* Nothing to check passwords against: nothing offered. */
	cfg.users = NULL;
	assert_string_equal(sasl_mech_list(&cfg, list, sizeof(list)), "");
	users_free(db);
}

/* -------------------------------------------------------------- CRAM-MD5 */

static void cram_rfc2195_pure(void **state)
{
	unsigned char ctx[CRAM_MD5_CONTEXTLEN], stored[CRAM_MD5_CONTEXTLEN], d[16], want[16];
	static const char chal[] = "<1896.697170952@postoffice.reston.mci.net>";
	struct strv user;

	(void)state;
	/* Our context for the RFC's password is Dovecot's stored value... */
	assert_int_equal(sasl_cram_context("tanstaaftanstaaf", 16, ctx), TERN_OK);
	assert_int_equal(sasl_cram_parse_stored("d06d4e1b26fccaa4b0b61801132340a354b21152711fb604c"
	                                        "a3e035e7015116b",
	                                        64, stored),
	                 TERN_OK);
	assert_memory_equal(ctx, stored, sizeof(ctx));
	/* ...and resuming from it gives the RFC's digest. */
	assert_int_equal(sasl_cram_digest(stored, chal, strlen(chal), d), TERN_OK);
	assert_int_equal(sasl_cram_parse("tim b913a602c7eda7a495b4e6e7334d3890", 36, &user, want),
	                 TERN_OK);
	assert_true(strv_eq(user, STRV("tim")));
	assert_memory_equal(d, want, 16);
	/* The last space separates: a user name may hold spaces. */
	assert_int_equal(sasl_cram_parse("t i m B913A602C7EDA7A495B4E6E7334D3890", 38, &user, want),
	                 TERN_OK);
	assert_true(strv_eq(user, STRV("t i m")));
	assert_int_equal(sasl_cram_parse("tim b913a602c7eda7a495b4e6e7334d389", 35, &user, want),
	                 TERN_ESYNTAX);
	assert_int_equal(sasl_cram_parse("b913a602c7eda7a495b4e6e7334d3890", 32, &user, want),
	                 TERN_ESYNTAX);
	assert_int_equal(sasl_cram_parse(" b913a602c7eda7a495b4e6e7334d3890", 33, &user, want),
	                 TERN_ESYNTAX);
}

static enum sasl_status cram_exchange(const struct sasl_config *cfg, const char *chal,
                                      const char *response, char *why, size_t wlen)
{
	struct sasl_exchange *x = sasl_new(cfg);
	enum sasl_status st;

	assert_int_equal(sasl_test_set_nonce(x, chal), TERN_OK);
	assert_int_equal(sasl_start(x, "CRAM-MD5", 8, NULL, 0), SASL_CONTINUE);
	assert_challenge(x, chal);
	st = send_str(x, response);
	if (st == SASL_NEED_VERIFY) {
		assert_false(sasl_verify_is_slow(x));
		st = verify_finish(x);
	}
	if (why != NULL)
		tern_strlcpy(why, sasl_reason(x), wlen);
	sasl_free(x);
	return st;
}

static void cram_vectors(void **state)
{
	struct vec v[16];
	int n = load_vectors(v, 16), seen = 0;

	(void)state;
	for (int i = 0; i < n; i++) {
		char text[1024], resp[512], why[128];
		const char *user, *digest;
		struct user_db *db;
		struct sasl_config cfg;

		if (strcmp(v[i].kind, "cram") != 0)
			continue;
		seen++;
		/* A users file holds addresses: the RFC's "tim" becomes
		 * tim@example.org (the digest does not involve the name). */
		user = vec_get(&v[i], "user");
		digest = strrchr(vec_get(&v[i], "response"), ' ') + 1;
		snprintf(text, sizeof(text), "%s%s:%s\nplain-%s:{PLAIN}%s\ncrypt-%s:%s\n", user,
		         strchr(user, '@') ? "" : "@example.org", vec_get(&v[i], "stored"),
		         strchr(user, '@') ? user : "tim@example.org", vec_get(&v[i], "password"),
		         strchr(user, '@') ? user : "tim@example.org",
		         hash_of(vec_get(&v[i], "password")));
		db = db_from(text);
		cfg = (struct sasl_config){.users = db, .mechs = SASL_MECH_BIT(SASL_MECH_CRAM_MD5)};
		/* Dovecot's stored context. */
		snprintf(resp, sizeof(resp), "%s%s %s", user,
		         strchr(user, '@') ? "" : "@example.org", digest);
		assert_int_equal(cram_exchange(&cfg, vec_get(&v[i], "challenge"), resp, NULL, 0),
		                 SASL_OK);
		/* A cleartext password works the same. */
		snprintf(resp, sizeof(resp), "plain-%s%s %s", user,
		         strchr(user, '@') ? "" : "@example.org", digest);
		assert_int_equal(cram_exchange(&cfg, vec_get(&v[i], "challenge"), resp, NULL, 0),
		                 SASL_OK);
		/* A crypt hash cannot serve CRAM-MD5. */
		snprintf(resp, sizeof(resp), "crypt-%s%s %s", user,
		         strchr(user, '@') ? "" : "@example.org", digest);
		assert_int_equal(
		    cram_exchange(&cfg, vec_get(&v[i], "challenge"), resp, why, sizeof(why)),
		    SASL_FAIL);
		assert_non_null(strstr(why, "does not allow CRAM-MD5"));
		/* Another challenge: the same digest is refused. */
		snprintf(resp, sizeof(resp), "%s%s %s", user,
		         strchr(user, '@') ? "" : "@example.org", digest);
		assert_int_equal(cram_exchange(&cfg, "<1.1@other>", resp, why, sizeof(why)),
		                 SASL_FAIL);
		assert_string_equal(why, "wrong password");
		users_free(db);
	}
	assert_int_equal(seen, 3);
}

static void cram_challenge_and_protocol(void **state)
{
	struct user_db *db = db_from(users_text);
	struct sasl_config cfg = {
	    .users = db, .mechs = SASL_MECH_BIT(SASL_MECH_CRAM_MD5), .hostname = "mx.example.org"};
	struct sasl_exchange *x = sasl_new(&cfg);
	char chal[512];
	size_t n;

	(void)state;
	assert_int_equal(sasl_start(x, "CRAM-MD5", 8, NULL, 0), SASL_CONTINUE);
	n = challenge_raw(x, chal, sizeof(chal));
	/* RFC 2195: a msg-id-like "<unique@host>". */
	assert_true(n > 20);
	assert_int_equal(chal[0], '<');
	assert_int_equal(chal[n - 1], '>');
	assert_non_null(strstr(chal, "@mx.example.org>"));
	sasl_free(x);
	/* The server speaks first: an initial response is a protocol error
	 * (RFC 4954 §4: 501 5.7.0). */
	x = sasl_new(&cfg);
	assert_int_equal(start_raw(x, "CRAM-MD5", "tim x", 5), SASL_PROTOCOL);
	sasl_free(x);
	users_free(db);
}

/* --------------------------------------------------------- SCRAM-SHA-256 */

/* Drives one SCRAM exchange with messages fixed in advance (the vectors). */
static void scram_vector_exchange(const struct sasl_config *cfg, const struct vec *v)
{
	struct sasl_exchange *x = sasl_new(cfg);

	assert_int_equal(sasl_test_set_nonce(x, vec_get(v, "snonce")), TERN_OK);
	assert_int_equal(start_raw(x, "SCRAM-SHA-256", vec_get(v, "client_first"),
	                           strlen(vec_get(v, "client_first"))),
	                 SASL_CONTINUE);
	assert_challenge(x, vec_get(v, "server_first"));
	assert_int_equal(send_str(x, vec_get(v, "client_final")), SASL_NEED_VERIFY);
	assert_false(sasl_verify_is_slow(x));
	assert_int_equal(verify_finish(x), SASL_CONTINUE);
	assert_challenge(x, vec_get(v, "server_final"));
	assert_null(sasl_identity(x));
	assert_int_equal(sasl_step(x, "", 0), SASL_OK);
	assert_string_equal(sasl_identity(x), vec_get(v, "user"));
	sasl_free(x);
}

static void scram_rfc7677_and_dovecot_vectors(void **state)
{
	struct vec v[16];
	int n = load_vectors(v, 16), seen = 0;

	(void)state;
	for (int i = 0; i < n; i++) {
		struct sasl_config cfg = {.mechs = SASL_MECH_BIT(SASL_MECH_SCRAM_SHA256)};
		struct one_user one;
		struct user_db *db = NULL;

		if (strcmp(v[i].kind, "scram") != 0)
			continue;
		seen++;
		if (strcmp(v[i].name, "rfc7677") == 0) {
			/* The RFC's bare user name "user", through the store hook. */
			one = (struct one_user){"user", vec_get(&v[i], "stored")};
			cfg.get_secret = one_get_secret;
			cfg.store_arg = &one;
		} else {
			char text[1024];

			snprintf(text, sizeof(text), "%s:%s\n", vec_get(&v[i], "user"),
			         vec_get(&v[i], "stored"));
			db = db_from(text);
			cfg.users = db;
		}
		scram_vector_exchange(&cfg, &v[i]);
		users_free(db);
	}
	assert_int_equal(seen, 3);
}

/* A SCRAM client written here with OpenSSL primitives (independent of
 * sasl_scram.c), for the cases the vectors do not fix in advance. */
static void scram_client_final(const char *password, const char *first_bare,
                               const char *server_first, const char *gs2, bool corrupt, char *out,
                               size_t outlen)
{
	const char *r = strstr(server_first, "r="), *s = strstr(server_first, ",s=");
	const char *i = strstr(server_first, ",i=");
	char nonce[512], salt_b64[256], final_wo[1024], auth[4096];
	unsigned char salted[32], ck[32], sk[32], sig[32], proof[32];
	struct tbuf salt = TBUF_INIT(256);
	unsigned int len;
	char *cb, *p64;

	assert_non_null(r);
	assert_non_null(s);
	assert_non_null(i);
	snprintf(nonce, sizeof(nonce), "%.*s", (int)(s - r - 2), r + 2);
	snprintf(salt_b64, sizeof(salt_b64), "%.*s", (int)(i - s - 3), s + 3);
	assert_int_equal(tern_base64_decode(salt_b64, strlen(salt_b64), &salt), TERN_OK);
	assert_int_equal(PKCS5_PBKDF2_HMAC(password, (int)strlen(password),
	                                   (unsigned char *)salt.data, (int)salt.len,
	                                   (int)strtol(i + 3, NULL, 10), EVP_sha256(), 32, salted),
	                 1);
	HMAC(EVP_sha256(), salted, 32, (const unsigned char *)"Client Key", 10, ck, &len);
	SHA256(ck, 32, sk);
	cb = b64(gs2, strlen(gs2));
	snprintf(final_wo, sizeof(final_wo), "c=%s,r=%s", cb, nonce);
	snprintf(auth, sizeof(auth), "%s,%s,%s", first_bare, server_first, final_wo);
	HMAC(EVP_sha256(), sk, 32, (const unsigned char *)auth, strlen(auth), sig, &len);
	for (int k = 0; k < 32; k++)
		proof[k] = ck[k] ^ sig[k];
	if (corrupt)
		proof[0] ^= 1;
	p64 = b64(proof, 32);
	snprintf(out, outlen, "%s,p=%s", final_wo, p64);
	free(cb);
	free(p64);
	tbuf_free(&salt);
}

static enum sasl_status scram_live(const struct sasl_config *cfg, const char *gs2, const char *user,
                                   const char *password, bool corrupt, char *server_first,
                                   size_t sflen, char *why, size_t wlen)
{
	struct sasl_exchange *x = sasl_new(cfg);
	char first[512], bare[512], sf[1024], final[2048];
	enum sasl_status st;

	snprintf(bare, sizeof(bare), "n=%s,r=fyko+d2lbbFgONRv9qkxdawL", user);
	snprintf(first, sizeof(first), "%s%s", gs2, bare);
	st = start_raw(x, "SCRAM-SHA-256", first, strlen(first));
	assert_int_equal(st, SASL_CONTINUE);
	challenge_raw(x, sf, sizeof(sf));
	if (server_first != NULL)
		tern_strlcpy(server_first, sf, sflen);
	/* Our nonce follows the client's, and differs each time. */
	assert_memory_equal(sf, "r=fyko+d2lbbFgONRv9qkxdawL", 26);
	assert_true(strchr(sf, ',') - sf > 26 + 16);
	scram_client_final(password, bare, sf, gs2, corrupt, final, sizeof(final));
	st = send_str(x, final);
	if (st == SASL_NEED_VERIFY) {
		st = verify_finish(x);
		if (st == SASL_CONTINUE) {
			char v[128];

			challenge_raw(x, v, sizeof(v));
			assert_memory_equal(v, "v=", 2);
			st = sasl_step(x, "", 0);
		}
	}
	if (why != NULL)
		tern_strlcpy(why, sasl_reason(x), wlen);
	sasl_free(x);
	return st;
}

static void scram_cleartext_and_refusals(void **state)
{
	char text[1024], sf1[1024], sf2[1024], why[160];
	struct user_db *db;
	struct sasl_config cfg;

	(void)state;
	snprintf(text, sizeof(text),
	         "clear@example.org:{PLAIN}pencil\ncrypt@example.org:%s\n"
	         "stored@example.org:{SCRAM-SHA-256}4096,6cfvSGXuRqJhXyLvD0NoMw==,"
	         "X9VI2oVChWf5cHWOY+8k/eLZLwfY2myDf/Tly60iBTg=,"
	         "5vlboOkW9+hKNk+MQyEaQNUrW4/TPqsHg4vODJMGf40=\n",
	         hash_of("pencil"));
	db = db_from(text);
	cfg = (struct sasl_config){.users = db, .mechs = SASL_MECH_BIT(SASL_MECH_SCRAM_SHA256)};

	/* A cleartext password: keys derived in sasl_verify. "y,," is fine
	 * (we offer no -PLUS). */
	assert_int_equal(
	    scram_live(&cfg, "y,,", "clear@example.org", "pencil", false, NULL, 0, NULL, 0),
	    SASL_OK);
	assert_int_equal(scram_live(&cfg, "n,a=clear@example.org,", "clear@example.org", "pencil",
	                            false, NULL, 0, NULL, 0),
	                 SASL_OK);
	assert_int_equal(
	    scram_live(&cfg, "n,,", "stored@example.org", "pencil", false, NULL, 0, NULL, 0),
	    SASL_OK);
	/* A wrong proof. */
	assert_int_equal(scram_live(&cfg, "n,,", "stored@example.org", "pencil", true, NULL, 0, why,
	                            sizeof(why)),
	                 SASL_FAIL);
	assert_string_equal(why, "wrong password (SCRAM proof)");
	assert_int_equal(scram_live(&cfg, "n,,", "clear@example.org", "pencil2", false, NULL, 0,
	                            why, sizeof(why)),
	                 SASL_FAIL);
	/* Unknown and crypt-hashed users fail, and cannot be told apart by
	 * their salt: each gets the same one every time. */
	assert_int_equal(scram_live(&cfg, "n,,", "nobody@example.org", "x", false, sf1, sizeof(sf1),
	                            why, sizeof(why)),
	                 SASL_FAIL);
	assert_string_equal(why, "unknown user");
	assert_int_equal(
	    scram_live(&cfg, "n,,", "nobody@example.org", "x", false, sf2, sizeof(sf2), NULL, 0),
	    SASL_FAIL);
	assert_string_equal(strstr(sf1, ",s="), strstr(sf2, ",s="));
	assert_int_equal(scram_live(&cfg, "n,,", "crypt@example.org", "pencil", false, NULL, 0, why,
	                            sizeof(why)),
	                 SASL_FAIL);
	assert_non_null(strstr(why, "does not allow SCRAM-SHA-256"));
	users_free(db);
}

static enum sasl_status scram_first_only(const struct sasl_config *cfg, const char *first)
{
	struct sasl_exchange *x = sasl_new(cfg);
	enum sasl_status st = start_raw(x, "SCRAM-SHA-256", first, strlen(first));

	sasl_free(x);
	return st;
}

static void scram_protocol_errors(void **state)
{
	struct vec v[16];
	int n = load_vectors(v, 16);
	const struct vec *rfc = NULL;
	struct one_user one;
	struct sasl_config cfg = {.mechs = SASL_MECH_BIT(SASL_MECH_SCRAM_SHA256),
	                          .get_secret = one_get_secret,
	                          .store_arg = &one};
	struct sasl_exchange *x;
	char final[512];

	(void)state;
	for (int i = 0; i < n; i++) {
		if (strcmp(v[i].name, "rfc7677") == 0)
			rfc = &v[i];
	}
	assert_non_null(rfc);
	one = (struct one_user){"user", vec_get(rfc, "stored")};
	/* Channel binding is refused (no -PLUS offered); so is an unknown
	 * mandatory extension; bad syntax is malformed. */
	assert_int_equal(scram_first_only(&cfg, "p=tls-unique,,n=user,r=abc"), SASL_FAIL);
	assert_int_equal(scram_first_only(&cfg, "n,,m=ext,n=user,r=abc"), SASL_FAIL);
	assert_int_equal(scram_first_only(&cfg, "n,,n=user"), SASL_MALFORMED);
	assert_int_equal(scram_first_only(&cfg, "x,,n=user,r=abc"), SASL_MALFORMED);
	assert_int_equal(scram_first_only(&cfg, "n,,n=us=er,r=abc"), SASL_MALFORMED);
	assert_int_equal(scram_first_only(&cfg, "n,,n=user,r=a,bc"), SASL_MALFORMED);
	assert_int_equal(scram_first_only(&cfg, "n,,n=,r=abc"), SASL_MALFORMED);
	assert_int_equal(scram_first_only(&cfg, "n,,n=user,r=abc,x=ext"), SASL_CONTINUE);
	/* An authzid other than the user needs the policy. */
	assert_int_equal(scram_first_only(&cfg, "n,a=admin,n=user,r=abc"), SASL_FAIL);

	/* The client-final must echo our nonce and the gs2 header. */
	x = sasl_new(&cfg);
	assert_int_equal(sasl_test_set_nonce(x, vec_get(rfc, "snonce")), TERN_OK);
	assert_int_equal(start_raw(x, "SCRAM-SHA-256", vec_get(rfc, "client_first"),
	                           strlen(vec_get(rfc, "client_first"))),
	                 SASL_CONTINUE);
	tern_strlcpy(final, vec_get(rfc, "client_final"), sizeof(final));
	final[strlen("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYD") - 1] = 'X';
	assert_int_equal(send_str(x, final), SASL_FAIL);
	assert_string_equal(sasl_reason(x), "SCRAM nonce does not match");
	sasl_free(x);

	x = sasl_new(&cfg);
	assert_int_equal(sasl_test_set_nonce(x, vec_get(rfc, "snonce")), TERN_OK);
	assert_int_equal(start_raw(x, "SCRAM-SHA-256", vec_get(rfc, "client_first"),
	                           strlen(vec_get(rfc, "client_first"))),
	                 SASL_CONTINUE);
	/* "eSws" is "y,,": not what the client-first said. */
	tern_strlcpy(final, vec_get(rfc, "client_final"), sizeof(final));
	memcpy(final + 2, "eSws", 4);
	assert_int_equal(send_str(x, final), SASL_FAIL);
	assert_string_equal(sasl_reason(x), "SCRAM channel binding data does not match");
	sasl_free(x);

	/* The last empty response must be empty; "*" still cancels there. */
	for (int k = 0; k < 2; k++) {
		x = sasl_new(&cfg);
		assert_int_equal(sasl_test_set_nonce(x, vec_get(rfc, "snonce")), TERN_OK);
		assert_int_equal(start_raw(x, "SCRAM-SHA-256", vec_get(rfc, "client_first"),
		                           strlen(vec_get(rfc, "client_first"))),
		                 SASL_CONTINUE);
		assert_int_equal(send_str(x, vec_get(rfc, "client_final")), SASL_NEED_VERIFY);
		assert_int_equal(verify_finish(x), SASL_CONTINUE);
		if (k == 0)
			assert_int_equal(send_str(x, "v=x"), SASL_MALFORMED);
		else
			assert_int_equal(sasl_step(x, "*", 1), SASL_CANCELLED);
		assert_null(sasl_identity(x));
		sasl_free(x);
	}
}

static void scram_pure_parsers(void **state)
{
	struct scram_client_first cf;
	struct scram_client_final fin;
	struct scram_stored st;
	char name[64];

	(void)state;
	assert_int_equal(scram_saslname_decode(STRV("a=2Cb=3Dc"), name, sizeof(name)), TERN_OK);
	assert_string_equal(name, "a,b=c");
	assert_int_equal(scram_saslname_decode(STRV("a=2"), name, sizeof(name)), TERN_ESYNTAX);
	assert_int_equal(scram_saslname_decode(STRV("a=41"), name, sizeof(name)), TERN_ESYNTAX);
	assert_int_equal(scram_saslname_decode(STRV("abcdef"), name, 4), TERN_ELIMIT);
	assert_int_equal(scram_parse_client_first("y,a=x=2Cy,n=u,r=n1", 18, &cf), TERN_OK);
	assert_int_equal(cf.cbflag, 'y');
	assert_true(strv_eq(cf.gs2_header, STRV("y,a=x=2Cy,")));
	assert_true(strv_eq(cf.bare, STRV("n=u,r=n1")));
	assert_int_equal(scram_parse_client_final("c=biws,r=abc", 12, &fin), TERN_ESYNTAX);
	assert_int_equal(scram_parse_client_final("c=biws,r=abc,p=AAAA", 19, &fin), TERN_ESYNTAX);
	/* Dovecot's stored form: the iteration count is bounded. */
	assert_int_equal(
	    scram_parse_stored("4096,c2FsdA==,WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4"
	                       "qY=,wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
	                       103, &st),
	    TERN_OK);
	assert_int_equal(st.iter, 4096);
	assert_int_equal(st.saltlen, 4);
	assert_int_equal(
	    scram_parse_stored("4095,c2FsdA==,WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4"
	                       "qY=,wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
	                       103, &st),
	    TERN_ELIMIT);
	assert_int_equal(
	    scram_parse_stored("4096,c2FsdA==,WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4"
	                       "qY=",
	                       58, &st),
	    TERN_ESYNTAX);
}

static void scram_hash_password_round_trip(void **state)
{
	char stored[256], text[512];
	struct user_db *db;

	(void)state;
	assert_int_equal(sasl_scram_hash_password("hunter2", 4096, stored, sizeof(stored)),
	                 TERN_OK);
	assert_memory_equal(stored, "{SCRAM-SHA-256}4096,", 20);
	snprintf(text, sizeof(text), "h@example.org:%s\n", stored);
	db = db_from(text);
	assert_int_equal(users_verify(db, "h@example.org", "hunter2"), TERN_OK);
	assert_int_equal(users_verify(db, "h@example.org", "hunter3"), TERN_EINVAL);
	users_free(db);
}

/* ------------------------------------------------------------------ JWT */

#define NOW 1800000000LL

static struct {
	EVP_PKEY *rsa, *ec, *rsa_other;
	char *jwks;
	struct oauth_keys *keys;
	struct oauth_config oc;
} K;

static long long fake_now(void *arg)
{
	return *(long long *)arg;
}

static void b64url(const void *p, size_t n, struct tbuf *out)
{
	struct tbuf b = TBUF_INIT(1 << 20);

	assert_int_equal(tern_base64_encode(p, n, &b), TERN_OK);
	for (size_t i = 0; i < b.len; i++) {
		char c = b.data[i];

		if (c == '=')
			break;
		c = c == '+' ? '-' : c == '/' ? '_' : c;
		assert_int_equal(tbuf_append(out, &c, 1), TERN_OK);
	}
	tbuf_free(&b);
}

static void bn_b64url(EVP_PKEY *k, const char *param, size_t pad, struct tbuf *out)
{
	BIGNUM *bn = NULL;
	unsigned char buf[1024];
	int n;

	assert_int_equal(EVP_PKEY_get_bn_param(k, param, &bn), 1);
	n = pad ? BN_bn2binpad(bn, buf, (int)pad) : BN_bn2bin(bn, buf);
	assert_true(n > 0);
	b64url(buf, (size_t)n, out);
	BN_free(bn);
}

static char *jwk_rsa(EVP_PKEY *k, const char *kid, const char *extra)
{
	struct tbuf n = TBUF_INIT(4096), e = TBUF_INIT(64), out = TBUF_INIT(8192);
	size_t len;

	bn_b64url(k, OSSL_PKEY_PARAM_RSA_N, 0, &n);
	bn_b64url(k, OSSL_PKEY_PARAM_RSA_E, 0, &e);
	assert_int_equal(tbuf_printf(&out,
	                             "{\"kty\":\"RSA\",\"kid\":\"%s\",\"n\":\"%s\",\"e\":\"%s\"%s}",
	                             kid, n.data, e.data, extra),
	                 TERN_OK);
	tbuf_free(&n);
	tbuf_free(&e);
	return tbuf_steal(&out, &len);
}

static char *jwk_ec(EVP_PKEY *k, const char *kid)
{
	struct tbuf x = TBUF_INIT(64), y = TBUF_INIT(64), out = TBUF_INIT(1024);
	size_t len;

	bn_b64url(k, OSSL_PKEY_PARAM_EC_PUB_X, 32, &x);
	bn_b64url(k, OSSL_PKEY_PARAM_EC_PUB_Y, 32, &y);
	assert_int_equal(
	    tbuf_printf(&out,
	                "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"%s\",\"use\":\"sig\","
	                "\"x\":\"%s\",\"y\":\"%s\"}",
	                kid, x.data, y.data),
	    TERN_OK);
	tbuf_free(&x);
	tbuf_free(&y);
	return tbuf_steal(&out, &len);
}

/* A compact JWT: header and claims as given, signed per alg ("RS256" and
 * "ES256" with key, "HS256" with hkey, "none" unsigned). */
static char *make_jwt(const char *header, const char *claims, const char *alg, EVP_PKEY *key,
                      const void *hkey, size_t hklen)
{
	struct tbuf t = TBUF_INIT(1 << 16);
	unsigned char sig[1024];
	size_t siglen = sizeof(sig), len;

	b64url(header, strlen(header), &t);
	assert_int_equal(tbuf_append(&t, ".", 1), TERN_OK);
	b64url(claims, strlen(claims), &t);
	if (strcmp(alg, "HS256") == 0) {
		unsigned int l = 0;

		HMAC(EVP_sha256(), hkey, (int)hklen, (unsigned char *)t.data, t.len, sig, &l);
		siglen = l;
	} else if (strcmp(alg, "none") == 0) {
		siglen = 0;
	} else {
		EVP_MD_CTX *md = EVP_MD_CTX_new();

		assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key), 1);
		assert_int_equal(EVP_DigestSign(md, sig, &siglen, (unsigned char *)t.data, t.len),
		                 1);
		EVP_MD_CTX_free(md);
		if (strcmp(alg, "ES256") == 0) {
			/* DER to JOSE's R || S. */
			const unsigned char *p = sig;
			ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)siglen);
			unsigned char raw[64];

			assert_non_null(es);
			BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, 32);
			BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + 32, 32);
			ECDSA_SIG_free(es);
			memcpy(sig, raw, 64);
			siglen = 64;
		}
	}
	assert_int_equal(tbuf_append(&t, ".", 1), TERN_OK);
	b64url(sig, siglen, &t);
	return tbuf_steal(&t, &len);
}

static char *claims(const char *iss, const char *aud, long long exp, const char *extra)
{
	static char buf[2048];

	snprintf(buf, sizeof(buf),
	         "{\"iss\":\"%s\",\"aud\":%s,\"exp\":%lld,\"iat\":%lld,"
	         "\"email\":\"Alice@Example.org\"%s}",
	         iss, aud, exp, NOW - 10, extra);
	return buf;
}

#define ISS "https://idp.example.org"
#define AUD "\"tern-smtp\""

static int jwt_setup(void **state)
{
	char *a, *b, *c, *d;
	size_t n;
	char err[256];

	(void)state;
	K.rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	K.rsa_other = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	K.ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if (K.rsa == NULL || K.ec == NULL || K.rsa_other == NULL)
		return -1;
	a = jwk_rsa(K.rsa, "rsa1", ",\"alg\":\"RS256\",\"use\":\"sig\"");
	b = jwk_ec(K.ec, "ec1");
	/* Skipped: a symmetric key, an encryption key. */
	c = strdup("{\"kty\":\"oct\",\"kid\":\"hs\",\"k\":\"c2VjcmV0\"}");
	d = jwk_rsa(K.rsa_other, "enc1", ",\"use\":\"enc\"");
	n = strlen(a) + strlen(b) + strlen(c) + strlen(d) + 64;
	K.jwks = malloc(n);
	snprintf(K.jwks, n, "{\"keys\":[%s,%s,%s,%s]}", a, b, c, d);
	free(a);
	free(b);
	free(c);
	free(d);
	if (oauth_jwks_parse(K.jwks, strlen(K.jwks), &K.keys, err, sizeof(err)) != TERN_OK)
		return -1;
	K.oc = (struct oauth_config){.issuer = ISS,
	                             .audience = "tern-smtp",
	                             .user_claim = NULL,
	                             .leeway_seconds = OAUTH_LEEWAY_DEFAULT};
	return 0;
}

static int jwt_teardown(void **state)
{
	(void)state;
	oauth_keys_free(K.keys);
	EVP_PKEY_free(K.rsa);
	EVP_PKEY_free(K.rsa_other);
	EVP_PKEY_free(K.ec);
	free(K.jwks);
	return 0;
}

static const char *check_token(const char *tok, long long now, char *user, size_t ulen)
{
	const char *why = NULL;
	int rc = oauth_token_validate(&K.oc, K.keys, tok, strlen(tok), now, user, ulen, &why);

	assert_non_null(why);
	return rc == TERN_OK ? NULL : why;
}

static void jwks_loader(void **state)
{
	struct oauth_keys *k = NULL;
	char err[256], *small, *doc;
	EVP_PKEY *weak;

	(void)state;
	assert_int_equal(oauth_keys_count(K.keys), 2); /* oct and enc skipped */
	/* A key under 2048 bits is not taken. */
	weak = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	small = jwk_rsa(weak, "weak", "");
	doc = malloc(strlen(small) + 32);
	snprintf(doc, strlen(small) + 32, "{\"keys\":[%s]}", small);
	assert_int_equal(oauth_jwks_parse(doc, strlen(doc), &k, err, sizeof(err)), TERN_ESYNTAX);
	assert_null(k);
	assert_non_null(strstr(err, "2048"));
	free(doc);
	free(small);
	EVP_PKEY_free(weak);
	/* An EC point off the curve. */
	{
		static const char off[] =
		    "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":"
		    "\"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		    "AAAAAAAAAAAAA\",\"y\":\"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}";

		assert_int_equal(oauth_jwks_parse(off, strlen(off), &k, err, sizeof(err)),
		                 TERN_ESYNTAX);
		assert_null(k);
	}
	/* Duplicate members, not JSON, no keys array. */
	assert_int_equal(oauth_jwks_parse("{\"keys\":[],\"keys\":[]}", 21, &k, err, sizeof(err)),
	                 TERN_ESYNTAX);
	assert_int_equal(oauth_jwks_parse("{\"keys\":", 8, &k, err, sizeof(err)), TERN_ESYNTAX);
	assert_int_equal(oauth_jwks_parse("{}", 2, &k, err, sizeof(err)), TERN_ESYNTAX);
	assert_int_equal(oauth_jwks_parse("{\"keys\":[]}", 11, &k, err, sizeof(err)), TERN_ESYNTAX);
}

static void jwt_accepts_rs256_and_es256(void **state)
{
	char user[SASL_ID_MAX + 1], *t;

	(void)state;
	t = make_jwt("{\"alg\":\"RS256\",\"kid\":\"rsa1\",\"typ\":\"JWT\"}",
	             claims(ISS, AUD, NOW + 600, ""), "RS256", K.rsa, NULL, 0);
	assert_null(check_token(t, NOW, user, sizeof(user)));
	assert_string_equal(user, "alice@example.org");
	free(t);
	/* No kid: every key of the right type is tried. An audience array. */
	t = make_jwt("{\"alg\":\"ES256\"}",
	             claims(ISS, "[\"other\",\"tern-smtp\"]", NOW + 600, ",\"nbf\":1799999990"),
	             "ES256", K.ec, NULL, 0);
	assert_null(check_token(t, NOW, user, sizeof(user)));
	assert_string_equal(user, "alice@example.org");
	free(t);
	/* Within the leeway on either side. */
	t = make_jwt("{\"alg\":\"ES256\",\"kid\":\"ec1\"}",
	             claims(ISS, AUD, NOW - 30, ",\"nbf\":1800000030"), "ES256", K.ec, NULL, 0);
	assert_null(check_token(t, NOW, user, sizeof(user)));
	free(t);
}

static void jwt_rejections(void **state)
{
	char user[SASL_ID_MAX + 1], pem[4096], *t;
	const char *hdr = "{\"alg\":\"RS256\",\"kid\":\"rsa1\"}";
	BIO *bio;
	int pemlen;

	(void)state;
#define REFUSED(tok, want)                                                                         \
	do {                                                                                       \
		char *tk_ = (tok);                                                                 \
		const char *w_ = check_token(tk_, NOW, user, sizeof(user));                        \
		assert_non_null(w_);                                                               \
		assert_string_equal(w_, (want));                                                   \
		assert_string_equal(user, "");                                                     \
		free(tk_);                                                                         \
	} while (0)

	REFUSED(make_jwt(hdr, claims(ISS, AUD, NOW - 61, ""), "RS256", K.rsa, NULL, 0), "expired");
	REFUSED(make_jwt(hdr, claims(ISS, AUD, NOW + 600, ",\"nbf\":1800000100"), "RS256", K.rsa,
	                 NULL, 0),
	        "not yet valid (nbf)");
	REFUSED(
	    make_jwt(hdr, claims(ISS, "\"someone-else\"", NOW + 600, ""), "RS256", K.rsa, NULL, 0),
	    "wrong audience");
	REFUSED(make_jwt(hdr, claims("https://evil.example", AUD, NOW + 600, ""), "RS256", K.rsa,
	                 NULL, 0),
	        "wrong issuer");
	/* Signed by a key that is not in the JWKS under that kid. */
	REFUSED(make_jwt(hdr, claims(ISS, AUD, NOW + 600, ""), "RS256", K.rsa_other, NULL, 0),
	        "bad signature");
	REFUSED(
	    make_jwt("{\"alg\":\"none\"}", claims(ISS, AUD, NOW + 600, ""), "none", NULL, NULL, 0),
	    "alg not allowed (RS256 and ES256 only)");
	/* Alg confusion: HS256 keyed with the RSA public key's PEM. */
	bio = BIO_new(BIO_s_mem());
	assert_int_equal(PEM_write_bio_PUBKEY(bio, K.rsa), 1);
	pemlen = BIO_read(bio, pem, sizeof(pem));
	assert_true(pemlen > 0);
	BIO_free(bio);
	REFUSED(make_jwt("{\"alg\":\"HS256\",\"kid\":\"rsa1\"}", claims(ISS, AUD, NOW + 600, ""),
	                 "HS256", NULL, pem, (size_t)pemlen),
	        "alg not allowed (RS256 and ES256 only)");
	/* ...or with the JWKS's own symmetric key, which was never loaded. */
	REFUSED(make_jwt("{\"alg\":\"HS256\",\"kid\":\"hs\"}", claims(ISS, AUD, NOW + 600, ""),
	                 "HS256", NULL, "secret", 6),
	        "alg not allowed (RS256 and ES256 only)");
	REFUSED(make_jwt("{\"alg\":\"RS256\",\"kid\":\"nope\"}", claims(ISS, AUD, NOW + 600, ""),
	                 "RS256", K.rsa, NULL, 0),
	        "unknown key id");
	/* An RSA-signed token naming the EC key's kid: never cross types. */
	REFUSED(make_jwt("{\"alg\":\"RS256\",\"kid\":\"ec1\"}", claims(ISS, AUD, NOW + 600, ""),
	                 "RS256", K.rsa, NULL, 0),
	        "unknown key id");
	/* The user claim missing, or an unverified email. */
	{
		char c[512];

		snprintf(c, sizeof(c), "{\"iss\":\"%s\",\"aud\":%s,\"exp\":%lld,\"sub\":\"1234\"}",
		         ISS, AUD, NOW + 600);
		REFUSED(make_jwt(hdr, c, "RS256", K.rsa, NULL, 0), "no user claim");
		snprintf(c, sizeof(c), "{\"iss\":\"%s\",\"aud\":%s,\"sub\":\"1234\"}", ISS, AUD);
		REFUSED(make_jwt(hdr, c, "RS256", K.rsa, NULL, 0), "no valid exp claim");
	}
	REFUSED(make_jwt(hdr, claims(ISS, AUD, NOW + 600, ",\"email_verified\":false"), "RS256",
	                 K.rsa, NULL, 0),
	        "email not verified");
	REFUSED(make_jwt("{\"alg\":\"RS256\",\"kid\":\"rsa1\",\"crit\":[\"exp\"]}",
	                 claims(ISS, AUD, NOW + 600, ""), "RS256", K.rsa, NULL, 0),
	        "unsupported crit header");
	/* Duplicate members are refused (parsers disagree on which wins). */
	REFUSED(make_jwt(hdr, claims(ISS, AUD, NOW + 600, ",\"iat\":1800000500"), "RS256", K.rsa,
	                 NULL, 0),
	        "claims are not a JSON object");
	{
		char c[512];

		snprintf(
		    c, sizeof(c),
		    "{\"iss\":\"%s\",\"aud\":%s,\"exp\":%lld,\"iat\":%lld,\"email\":\"a@b.c\"}",
		    ISS, AUD, NOW + 600, NOW + 500);
		REFUSED(make_jwt(hdr, c, "RS256", K.rsa, NULL, 0), "issued in the future (iat)");
	}
	/* A signature byte flipped. */
	t = make_jwt(hdr, claims(ISS, AUD, NOW + 600, ""), "RS256", K.rsa, NULL, 0);
	t[strlen(t) - 5] = t[strlen(t) - 5] == 'A' ? 'B' : 'A';
	REFUSED(t, "bad signature");
	/* Not three parts. */
	REFUSED(strdup("a.b"), "malformed token");
	REFUSED(strdup("a.b.c.d"), "malformed token");
	REFUSED(strdup("e30.e30.=="), "malformed token");
#undef REFUSED
}

/* XOAUTH2 and OAUTHBEARER end to end, with the failure dance. */
static void oauth_mechanisms(void **state)
{
	long long now = NOW;
	struct sasl_config cfg = {
	    .oauth = &K.oc, .oauth_keys = K.keys, .now = fake_now, .now_arg = &now};
	struct sasl_exchange *x;
	char *good = make_jwt("{\"alg\":\"ES256\",\"kid\":\"ec1\"}",
	                      claims(ISS, AUD, NOW + 600, ""), "ES256", K.ec, NULL, 0);
	char msg[4096], list[128], status[512];
	int n;

	(void)state;
	assert_string_equal(sasl_mech_list(&cfg, list, sizeof(list)), "XOAUTH2 OAUTHBEARER");

	/* XOAUTH2 with initial response. */
	n = snprintf(msg, sizeof(msg), "user=alice@example.org\001auth=Bearer %s\001\001", good);
	x = sasl_new(&cfg);
	assert_int_equal(start_raw(x, "XOAUTH2", msg, (size_t)n), SASL_NEED_VERIFY);
	assert_false(sasl_verify_is_slow(x));
	assert_int_equal(verify_finish(x), SASL_OK);
	assert_string_equal(sasl_identity(x), "alice@example.org");
	sasl_free(x);

	/* XOAUTH2 naming another user than the token's: the 401 status, then
	 * the client's empty line ends it. */
	n = snprintf(msg, sizeof(msg), "user=bob@example.org\001auth=Bearer %s\001\001", good);
	x = sasl_new(&cfg);
	assert_int_equal(sasl_start(x, "XOAUTH2", 7, NULL, 0), SASL_CONTINUE);
	assert_string_equal(sasl_challenge(x, NULL), "");
	assert_int_equal(send_raw(x, msg, (size_t)n), SASL_NEED_VERIFY);
	assert_int_equal(verify_finish(x), SASL_CONTINUE);
	challenge_raw(x, status, sizeof(status));
	assert_string_equal(status, "{\"openid-configuration\":\"https://idp.example.org/"
	                            ".well-known/openid-configuration\",\"schemes\":\"bearer\","
	                            "\"status\":\"401\"}");
	assert_int_equal(sasl_step(x, "", 0), SASL_FAIL);
	assert_string_equal(sasl_reason(x), "XOAUTH2 user does not match the token");
	sasl_free(x);

	/* OAUTHBEARER (RFC 7628 §3.1), authzid matching the token. */
	n = snprintf(msg, sizeof(msg),
	             "n,a=alice@example.org,\001host=mx.example.org\001port=587\001"
	             "auth=Bearer %s\001\001",
	             good);
	x = sasl_new(&cfg);
	assert_int_equal(start_raw(x, "OAUTHBEARER", msg, (size_t)n), SASL_NEED_VERIFY);
	assert_int_equal(verify_finish(x), SASL_OK);
	assert_string_equal(sasl_identity(x), "alice@example.org");
	sasl_free(x);
	/* Without authzid, the token names the user (and the login). */
	n = snprintf(msg, sizeof(msg), "n,,\001auth=bearer %s\001\001", good);
	x = sasl_new(&cfg);
	assert_int_equal(start_raw(x, "OAUTHBEARER", msg, (size_t)n), SASL_NEED_VERIFY);
	assert_int_equal(verify_finish(x), SASL_OK);
	assert_string_equal(sasl_login(x), "alice@example.org");
	sasl_free(x);

	/* Expired by the clock: RFC 7628 §3.2.2 status, "\x01" ends it. */
	now = NOW + 3600;
	n = snprintf(msg, sizeof(msg), "n,,\001auth=Bearer %s\001\001", good);
	x = sasl_new(&cfg);
	assert_int_equal(start_raw(x, "OAUTHBEARER", msg, (size_t)n), SASL_NEED_VERIFY);
	assert_int_equal(verify_finish(x), SASL_CONTINUE);
	challenge_raw(x, status, sizeof(status));
	assert_non_null(strstr(status, "\"status\":\"invalid_token\""));
	assert_null(sasl_identity(x));
	assert_int_equal(send_raw(x, "\001", 1), SASL_FAIL);
	assert_string_equal(sasl_reason(x), "expired");
	sasl_free(x);
	now = NOW;

	/* A different authzid than the token's user needs the policy. */
	n = snprintf(msg, sizeof(msg), "n,a=root@example.org,\001auth=Bearer %s\001\001", good);
	x = sasl_new(&cfg);
	assert_int_equal(start_raw(x, "OAUTHBEARER", msg, (size_t)n), SASL_NEED_VERIFY);
	assert_int_equal(verify_finish(x), SASL_CONTINUE);
	assert_int_equal(send_raw(x, "\001", 1), SASL_FAIL);
	assert_string_equal(sasl_reason(x), "authorization identity not allowed");
	sasl_free(x);

	/* Malformed messages and channel binding. */
	x = sasl_new(&cfg);
	assert_int_equal(start_raw(x, "OAUTHBEARER", LIT("n,,\001auth=Bearer\001\001")),
	                 SASL_MALFORMED);
	sasl_free(x);
	x = sasl_new(&cfg);
	assert_int_equal(
	    start_raw(x, "OAUTHBEARER", LIT("p=tls-unique,,\001auth=Bearer x\001\001")), SASL_FAIL);
	sasl_free(x);
	x = sasl_new(&cfg);
	assert_int_equal(start_raw(x, "XOAUTH2", LIT("user=a@b\001auth=Bearer x y\001\001")),
	                 SASL_MALFORMED);
	sasl_free(x);
	/* Cancelled at the error status. */
	x = sasl_new(&cfg);
	n = snprintf(msg, sizeof(msg), "user=a@b.c\001auth=Bearer abc.def.ghi\001\001");
	assert_int_equal(start_raw(x, "XOAUTH2", msg, (size_t)n), SASL_NEED_VERIFY);
	assert_int_equal(verify_finish(x), SASL_CONTINUE);
	assert_int_equal(sasl_step(x, "*", 1), SASL_CANCELLED);
	sasl_free(x);
	free(good);
}

static void oauth_message_parsers(void **state)
{
	struct sasl_oauth_msg m;

	(void)state;
	/* RFC 7628 §4.1's example message. */
	static const char ex[] = "n,a=user@example.com,\001host=server.example.com\001port=143\001"
	                         "auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\001\001";
	assert_int_equal(sasl_oauthbearer_parse(ex, sizeof(ex) - 1, &m), TERN_OK);
	assert_true(strv_eq(m.user, STRV("user@example.com")));
	assert_true(strv_eq(m.token, STRV("vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==")));
	assert_int_equal(sasl_oauthbearer_parse(LIT("n,,\001auth=Bearer x\001"), &m), TERN_ESYNTAX);
	assert_int_equal(sasl_oauthbearer_parse(LIT("n,,\001auth=Bearer x\001\001x"), &m),
	                 TERN_ESYNTAX);
	assert_int_equal(sasl_oauthbearer_parse(LIT("n,,\001host=a\001\001"), &m), TERN_ESYNTAX);
	assert_int_equal(
	    sasl_oauthbearer_parse(LIT("n,,\001auth=Bearer x\001auth=Bearer y\001\001"), &m),
	    TERN_ESYNTAX);
	assert_int_equal(sasl_oauthbearer_parse(LIT("y,,\001auth=Bearer x\001\001"), &m), TERN_OK);
	assert_int_equal(sasl_oauthbearer_parse(LIT("p=x,,\001auth=Bearer x\001\001"), &m),
	                 TERN_EINVAL);
	assert_int_equal(sasl_xoauth2_parse(LIT("user=a@b\001auth=Bearer tok\001\001"), &m),
	                 TERN_OK);
	assert_true(strv_eq(m.user, STRV("a@b")));
	assert_true(strv_eq(m.token, STRV("tok")));
	assert_int_equal(sasl_xoauth2_parse(LIT("auth=Bearer tok\001user=a@b\001\001"), &m),
	                 TERN_ESYNTAX);
}

static void b64url_strict(void **state)
{
	struct tbuf b = TBUF_INIT(64);

	(void)state;
	assert_int_equal(tern_base64url_decode("eyJhIjoxfQ", 10, &b), TERN_OK);
	assert_int_equal(b.len, 7);
	assert_memory_equal(b.data, "{\"a\":1}", 7);
	tbuf_reset(&b);
	assert_int_equal(tern_base64url_decode("eyJhIjoxfQ==", 12, &b), TERN_ESYNTAX);
	assert_int_equal(tern_base64url_decode("eyJhIjoxfR", 10, &b), TERN_ESYNTAX); /* bits */
	assert_int_equal(tern_base64url_decode("a", 1, &b), TERN_ESYNTAX);
	assert_int_equal(tern_base64url_decode("a+/b", 4, &b), TERN_ESYNTAX);
	assert_int_equal(tern_base64url_decode("-_-_", 4, &b), TERN_OK);
	tbuf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(plain_rfc4616_messages_parse),
	    cmocka_unit_test(plain_without_initial_response),
	    cmocka_unit_test(plain_with_initial_response_and_case),
	    cmocka_unit_test(plain_refusals),
	    cmocka_unit_test(plain_authzid_needs_policy),
	    cmocka_unit_test(plain_every_stored_scheme),
	    cmocka_unit_test(users_file_checks_new_schemes),
	    cmocka_unit_test(login_both_ways),
	    cmocka_unit_test(cancel_and_bad_lines),
	    cmocka_unit_test(mechanisms_offered),
	    cmocka_unit_test(cram_rfc2195_pure),
	    cmocka_unit_test(cram_vectors),
	    cmocka_unit_test(cram_challenge_and_protocol),
	    cmocka_unit_test(scram_rfc7677_and_dovecot_vectors),
	    cmocka_unit_test(scram_cleartext_and_refusals),
	    cmocka_unit_test(scram_protocol_errors),
	    cmocka_unit_test(scram_pure_parsers),
	    cmocka_unit_test(scram_hash_password_round_trip),
	    cmocka_unit_test(oauth_message_parsers),
	    cmocka_unit_test(b64url_strict),
	};
	const struct CMUnitTest jwt_tests[] = {
	    cmocka_unit_test(jwks_loader),
	    cmocka_unit_test(jwt_accepts_rs256_and_es256),
	    cmocka_unit_test(jwt_rejections),
	    cmocka_unit_test(oauth_mechanisms),
	};
	int fails = cmocka_run_group_tests_name("sasl", tests, NULL, NULL);

	fails += cmocka_run_group_tests_name("jwt", jwt_tests, jwt_setup, jwt_teardown);
	return fails;
}
