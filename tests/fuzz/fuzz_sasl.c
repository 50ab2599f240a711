/*
 * fuzz_sasl.c — libFuzzer target for the SASL engine and its decoders
 * (src/auth/sasl*.c): the PLAIN, CRAM-MD5, SCRAM-SHA-256, XOAUTH2 and
 * OAUTHBEARER message parsers, the stored-secret parsers, and whole
 * exchanges driven through sasl_start/sasl_step/sasl_verify/sasl_finish.
 *
 * Input: byte 0 picks the mechanism (low bits) and whether the first
 * segment is an initial response (0x80); byte 1 says which segments go on
 * the wire as they are (bit set) rather than base64-encoded by the harness
 * (so the mechanism parsers see the fuzzer's bytes); the rest is segments
 * split at '\n'. The server's random parts are pinned (sasl_test_set_nonce)
 * so a SCRAM client-final can carry the right nonce.
 *
 * Beyond "no crash, no leak": every challenge is valid base64; SASL_OK comes
 * with a lowercase identity and nothing else does; an ended exchange gives
 * a reason unless it succeeded.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "auth/sasl_internal.h"
#include "core/buf.h"
#include "core/codec.h"
#include "core/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "invariant failed: %s (line %d)\n", #cond, __LINE__);      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#define NOW 1800000000LL
#define MAX_STEPS 12

static const char jwks[] = "{\"keys\":[{\"kty\":\"EC\",\"kid\":\"e1\",\"crv\":\"P-256\",\"x\":"
                           "\"u3Bnn2IXZzqJOJwRFrIjNszUARhgylmSu0bW5D1tVZA\",\"y\":"
                           "\"IGEKnlfhxoBB7SzxhgsCd0fjtFHWwkajAyJUU5L8l5E\"}]}";

/* A store with one user per scheme; cheap checks only, but for SCRAM on a
 * cleartext password (PBKDF2), which is part of what is fuzzed. */
static int get_secret(void *arg, const char *login, enum user_secret_scheme *scheme,
                      const char **secret, size_t *len)
{
	static const struct {
		const char *login;
		enum user_secret_scheme scheme;
		const char *secret;
	} users[] = {
	    {"p@x.y", USER_SECRET_PLAIN, "pw"},
	    {"c@x.y", USER_SECRET_CRAM_MD5,
	     "d06d4e1b26fccaa4b0b61801132340a354b21152711fb604ca3e035e7015116b"},
	    {"user", USER_SECRET_SCRAM_SHA256,
	     "4096,W22ZaJ0SNY7soEsUEjb6gQ==,WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,"
	     "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="},
	    {"l@x.y", USER_SECRET_LOCKED, ""},
	    {"k@x.y", USER_SECRET_CRYPT, "$6$salt$hash"},
	};

	(void)arg;
	for (size_t i = 0; i < sizeof(users) / sizeof(users[0]); i++) {
		if (strcmp(login, users[i].login) == 0) {
			*scheme = users[i].scheme;
			*secret = users[i].secret;
			*len = strlen(users[i].secret);
			return TERN_OK;
		}
	}
	return TERN_ENOTFOUND;
}

static int verify_password(void *arg, const char *login, const char *password)
{
	(void)arg;
	if (strcmp(login, "p@x.y") != 0)
		return TERN_ENOTFOUND;
	return strcmp(password, "pw") == 0 ? TERN_OK : TERN_EINVAL;
}

static long long now(void *arg)
{
	(void)arg;
	return NOW;
}

static bool authz(void *arg, const char *authcid, const char *authzid)
{
	(void)arg;
	(void)authcid;
	return strcmp(authzid, "admin") == 0;
}

/* The pure decoders, straight on the input. */
static void decoders(const char *p, size_t n)
{
	struct sasl_plain pl;
	struct strv user;
	unsigned char d[16], ctx[CRAM_MD5_CONTEXTLEN];
	struct scram_client_first cf;
	struct scram_client_final fin;
	struct scram_stored st;
	struct sasl_oauth_msg m;
	char name[SASL_ID_MAX + 1];

	if (sasl_plain_parse(p, n, &pl) == TERN_OK)
		CHECK(pl.authcid.n > 0 && pl.passwd.n > 0 && pl.authcid.n <= SASL_ID_MAX);
	if (sasl_cram_parse(p, n, &user, d) == TERN_OK)
		CHECK(user.n > 0 && user.p == p);
	(void)sasl_cram_parse_stored(p, n, ctx);
	if (scram_parse_client_first(p, n, &cf) == TERN_OK) {
		CHECK(cf.cbflag == 'n' || cf.cbflag == 'y');
		CHECK(cf.gs2_header.n + cf.bare.n == n);
		CHECK(scram_saslname_decode(cf.user_raw, name, sizeof(name)) != TERN_ESYNTAX);
	}
	if (scram_parse_client_final(p, n, &fin) == TERN_OK)
		CHECK(fin.without_proof.n < n);
	if (scram_parse_stored(p, n, &st) == TERN_OK)
		CHECK(st.iter >= SCRAM_ITER_MIN && st.saltlen > 0);
	if (sasl_xoauth2_parse(p, n, &m) == TERN_OK)
		CHECK(m.user.n > 0 && m.token.n > 0);
	if (sasl_oauthbearer_parse(p, n, &m) == TERN_OK)
		CHECK(m.token.n > 0);
	(void)scram_saslname_decode(strv_make(p, n), name, sizeof(name));
}

static void check_challenge(struct sasl_exchange *x)
{
	struct tbuf b = TBUF_INIT(1 << 20);
	size_t n;
	const char *c = sasl_challenge(x, &n);

	CHECK(strlen(c) == n);
	CHECK(tern_base64_decode(c, n, &b) == TERN_OK);
	tbuf_free(&b);
}

/* Segment i as it goes on the wire. */
static void wire(const char *p, size_t n, bool raw, struct tbuf *out)
{
	tbuf_reset(out);
	if (raw)
		CHECK(tbuf_append(out, p, n) == TERN_OK);
	else
		CHECK(tern_base64_encode(p, n, out) == TERN_OK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct oauth_keys *keys;
	static struct oauth_config oc = {.issuer = "https://idp.example.org",
	                                 .audience = "tern-smtp",
	                                 .leeway_seconds = OAUTH_LEEWAY_DEFAULT};
	struct sasl_config cfg = {
	    .get_secret = get_secret,
	    .verify_password = verify_password,
	    .mechs = 0x3f,
	    .hostname = "fuzz.example",
	    .authz_ok = authz,
	    .now = now,
	};
	struct tbuf line = TBUF_INIT(4 * (1 << 16));
	const char *p = (const char *)data + 2, *end = (const char *)data + size;
	enum sasl_status st;
	struct sasl_exchange *x;
	unsigned seg = 0;
	bool more = true; /* a segment is left (an empty one counts) */
	char err[256];
	uint8_t mechb, rawbits, mi;
	static const char *const mechs[] = {"PLAIN",         "LOGIN",   "CRAM-MD5",
	                                    "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER"};

	if (keys == NULL &&
	    oauth_jwks_parse(jwks, sizeof(jwks) - 1, &keys, err, sizeof(err)) != TERN_OK)
		abort();
	cfg.oauth = &oc;
	cfg.oauth_keys = keys;
	decoders((const char *)data, size);
	if (size < 2)
		return 0;
	mechb = data[0];
	mi = (uint8_t)((mechb & 0x7f) % 6);
	rawbits = data[1];

	x = sasl_new(&cfg);
	CHECK(x != NULL);
	CHECK(sasl_test_set_nonce(x, mi == 2 ? "<1.2@fuzz.example>" : "SN") == TERN_OK);
	if (mechb & 0x80) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);

		wire(p, n, rawbits & 1, &line);
		st =
		    sasl_start(x, mechs[mi], strlen(mechs[mi]), line.data != NULL ? line.data : "=",
		               line.data != NULL ? line.len : 1);
		p = nl != NULL ? nl + 1 : end;
		more = nl != NULL;
		seg = 1;
	} else {
		st = sasl_start(x, mechs[mi], strlen(mechs[mi]), NULL, 0);
	}
	for (unsigned steps = 0; steps < MAX_STEPS; steps++) {
		if (st == SASL_NEED_VERIFY) {
			sasl_verify(x);
			st = sasl_finish(x);
			continue;
		}
		if (st != SASL_CONTINUE || !more)
			break;
		check_challenge(x);
		{
			const char *nl = memchr(p, '\n', (size_t)(end - p));
			size_t n = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);

			wire(p, n, (rawbits >> (seg % 8)) & 1, &line);
			st = sasl_step(x, line.data != NULL ? line.data : "", line.len);
			p = nl != NULL ? nl + 1 : end;
			more = nl != NULL;
			seg++;
		}
	}
	if (st == SASL_OK) {
		const char *id = sasl_identity(x);

		CHECK(id != NULL && id[0] != '\0');
		for (const char *c = id; *c != '\0'; c++)
			CHECK(!(*c >= 'A' && *c <= 'Z'));
	} else {
		CHECK(sasl_identity(x) == NULL);
		if (st != SASL_CONTINUE && st != SASL_NEED_VERIFY)
			CHECK(sasl_reason(x)[0] != '\0');
	}
	sasl_free(x);
	tbuf_free(&line);
	return 0;
}
