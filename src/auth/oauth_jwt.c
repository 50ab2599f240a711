/*
 * oauth_jwt.c — OAuth 2.0 bearer tokens as JWTs (RFC 7519) signed RS256 or
 * ES256 (RFC 7518 §3.3, §3.4), checked against the public keys of a JWKS
 * document (RFC 7517): the token validation behind XOAUTH2 and OAUTHBEARER.
 *
 * Owns: base64url, the JWKS loader (JWK n/e and x/y into EVP_PKEYs with
 * OSSL_PARAM_BLD + EVP_PKEY_fromdata), the signature check and the claim
 * checks (iss, aud, exp, nbf, iat, the user claim).
 *
 * Must never: let the token choose how it is checked beyond RS256/ES256
 * ("none", HS256 and every other alg are refused before any key is looked
 * at, and a key is used only with the one alg its type allows, so the RSA
 * public key can never serve as an HMAC secret); use a key the token brings
 * along (jwk, jku, x5u, x5c are ignored); act on a claim before the
 * signature has been checked; accept a JSON document with duplicate
 * members; or log (tokens are credentials).
 *
 * Why not libjwt: OpenSSL, which tern links anyway, already does all the
 * cryptography, and jansson the JSON; what is left is a few hundred lines
 * of checks that are clearer written out than configured, with every rule
 * about which alg meets which key in one place, and one dependency less.
 */
#include "auth/auth.h"
#include "auth/sasl_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include "core/codec.h"
#include "core/err.h"

#define JWKS_MAX (1024 * 1024)
#define JWKS_KEYS_MAX 64
#define JWK_KID_MAX 256
#define RSA_BITS_MIN 2048
#define RSA_BITS_MAX 16384
#define JWT_HEADER_MAX 4096

enum key_type { KEY_RSA, KEY_EC };

struct oauth_key {
	char *kid; /* or NULL */
	enum key_type type;
	EVP_PKEY *pkey;
};

struct oauth_keys {
	struct oauth_key *v;
	size_t n;
};

/* ----------------------------------------------------------------- JWKS */

static void seterr(char *err, size_t errlen, const char *fmt, const char *arg, size_t idx)
{
	if (err == NULL || errlen == 0)
		return;
	if (arg != NULL)
		snprintf(err, errlen, "jwks key %zu: %s: %s", idx, fmt, arg);
	else
		snprintf(err, errlen, "%s", fmt);
}

void oauth_keys_free(struct oauth_keys *keys)
{
	if (keys == NULL)
		return;
	for (size_t i = 0; i < keys->n; i++) {
		free(keys->v[i].kid);
		EVP_PKEY_free(keys->v[i].pkey);
	}
	free(keys->v);
	free(keys);
}

size_t oauth_keys_count(const struct oauth_keys *keys)
{
	return keys != NULL ? keys->n : 0;
}

/* Decodes the base64url string member name of o into b (at most max bytes). */
static int member_b64url(json_t *o, const char *name, size_t max, struct tbuf *b)
{
	json_t *v = json_object_get(o, name);
	const char *s;
	size_t n;

	if (!json_is_string(v))
		return TERN_ESYNTAX;
	s = json_string_value(v);
	n = json_string_length(v);
	if (n == 0 || n > (max + 2) / 3 * 4)
		return TERN_ELIMIT;
	return tern_base64url_decode(s, n, b);
}

static EVP_PKEY *pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld)
{
	OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
	EVP_PKEY_CTX *ctx = NULL, *chk = NULL;
	EVP_PKEY *pkey = NULL;

	if (params == NULL)
		goto out;
	ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
	if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
	    EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
		goto out;
	/* For EC: the point is on the curve and not the identity. */
	chk = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
	if (chk == NULL || EVP_PKEY_public_check(chk) != 1) {
		EVP_PKEY_free(pkey);
		pkey = NULL;
	}
out:
	EVP_PKEY_CTX_free(chk);
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	return pkey;
}

static const char *rsa_key(json_t *o, EVP_PKEY **out)
{
	struct tbuf n = TBUF_INIT(RSA_BITS_MAX / 8), e = TBUF_INIT(8);
	BIGNUM *bn_n = NULL, *bn_e = NULL;
	OSSL_PARAM_BLD *bld = NULL;
	const char *why = NULL;
	int bits;

	if (member_b64url(o, "n", RSA_BITS_MAX / 8, &n) != TERN_OK ||
	    member_b64url(o, "e", 8, &e) != TERN_OK) {
		why = "bad or missing n/e";
		goto out;
	}
	bn_n = BN_bin2bn((const unsigned char *)n.data, (int)n.len, NULL);
	bn_e = BN_bin2bn((const unsigned char *)e.data, (int)e.len, NULL);
	if (bn_n == NULL || bn_e == NULL) {
		why = "out of memory";
		goto out;
	}
	bits = BN_num_bits(bn_n);
	if (bits < RSA_BITS_MIN) {
		why = "RSA modulus shorter than 2048 bits";
		goto out;
	}
	if (!BN_is_odd(bn_e) || BN_num_bits(bn_e) < 2 || BN_num_bits(bn_e) > 33) {
		why = "bad RSA exponent";
		goto out;
	}
	bld = OSSL_PARAM_BLD_new();
	if (bld == NULL || OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) != 1 ||
	    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e) != 1) {
		why = "out of memory";
		goto out;
	}
	*out = pkey_fromdata("RSA", bld);
	if (*out == NULL)
		why = "RSA key refused by OpenSSL";
out:
	OSSL_PARAM_BLD_free(bld);
	BN_free(bn_n);
	BN_free(bn_e);
	tbuf_free(&n);
	tbuf_free(&e);
	return why;
}

static const char *ec_key(json_t *o, EVP_PKEY **out)
{
	struct tbuf x = TBUF_INIT(32), y = TBUF_INIT(32);
	unsigned char pub[65];
	OSSL_PARAM_BLD *bld = NULL;
	json_t *crv = json_object_get(o, "crv");
	const char *why = NULL;

	if (!json_is_string(crv) || strcmp(json_string_value(crv), "P-256") != 0)
		return "curve is not P-256";
	if (member_b64url(o, "x", 32, &x) != TERN_OK || member_b64url(o, "y", 32, &y) != TERN_OK ||
	    x.len != 32 || y.len != 32) {
		why = "bad or missing x/y (32 bytes each)";
		goto out;
	}
	/* The uncompressed SEC1 point 04 || x || y. */
	pub[0] = 0x04;
	memcpy(pub + 1, x.data, 32);
	memcpy(pub + 33, y.data, 32);
	bld = OSSL_PARAM_BLD_new();
	if (bld == NULL ||
	    OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) !=
	        1 ||
	    OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof(pub)) != 1) {
		why = "out of memory";
		goto out;
	}
	*out = pkey_fromdata("EC", bld);
	if (*out == NULL)
		why = "EC point not on P-256";
out:
	OSSL_PARAM_BLD_free(bld);
	tbuf_free(&x);
	tbuf_free(&y);
	return why;
}

/* Loads one JWK. Returns NULL with *k filled, or why it was skipped
 * ("out of memory" is the caller's cue to give up rather than skip). */
static const char *load_key(json_t *o, struct oauth_key *k)
{
	json_t *kty = json_object_get(o, "kty"), *use = json_object_get(o, "use");
	json_t *alg = json_object_get(o, "alg"), *kid = json_object_get(o, "kid");
	const char *why, *want_alg;

	memset(k, 0, sizeof(*k));
	if (!json_is_object(o))
		return "not an object";
	if (!json_is_string(kty))
		return "no kty";
	if (strcmp(json_string_value(kty), "RSA") == 0) {
		k->type = KEY_RSA;
		want_alg = "RS256";
	} else if (strcmp(json_string_value(kty), "EC") == 0) {
		k->type = KEY_EC;
		want_alg = "ES256";
	} else {
		return "kty is neither RSA nor EC";
	}
	if (use != NULL && (!json_is_string(use) || strcmp(json_string_value(use), "sig") != 0))
		return "use is not sig";
	if (alg != NULL && (!json_is_string(alg) || strcmp(json_string_value(alg), want_alg) != 0))
		return "alg is not RS256/ES256 for this key type";
	if (kid != NULL) {
		if (!json_is_string(kid) || json_string_length(kid) > JWK_KID_MAX)
			return "kid is not a short string";
	}
	why = k->type == KEY_RSA ? rsa_key(o, &k->pkey) : ec_key(o, &k->pkey);
	if (why != NULL)
		return why;
	if (kid != NULL) {
		k->kid = tern_strndup(json_string_value(kid), json_string_length(kid));
		if (k->kid == NULL) {
			EVP_PKEY_free(k->pkey);
			k->pkey = NULL;
			return "out of memory";
		}
	}
	return NULL;
}

int oauth_jwks_parse(const char *json, size_t len, struct oauth_keys **out, char *err,
                     size_t errlen)
{
	struct oauth_keys *keys = NULL;
	json_error_t jerr;
	json_t *root = NULL, *arr;
	const char *first_skip = NULL;
	size_t first_skip_idx = 0;
	int rc = TERN_ESYNTAX;

	*out = NULL;
	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (len > JWKS_MAX) {
		seterr(err, errlen, "jwks: document larger than 1 MiB", NULL, 0);
		return TERN_ELIMIT;
	}
	root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL) {
		if (err != NULL && errlen > 0)
			snprintf(err, errlen, "jwks: bad JSON at line %d: %s", jerr.line,
			         jerr.text);
		return TERN_ESYNTAX;
	}
	arr = json_object_get(root, "keys");
	if (!json_is_array(arr)) {
		seterr(err, errlen, "jwks: no \"keys\" array", NULL, 0);
		goto out;
	}
	if (json_array_size(arr) > JWKS_KEYS_MAX) {
		seterr(err, errlen, "jwks: more than 64 keys", NULL, 0);
		rc = TERN_ELIMIT;
		goto out;
	}
	keys = calloc(1, sizeof(*keys));
	if (keys == NULL || (json_array_size(arr) > 0 &&
	                     (keys->v = calloc(json_array_size(arr), sizeof(*keys->v))) == NULL)) {
		rc = TERN_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < json_array_size(arr); i++) {
		const char *why = load_key(json_array_get(arr, i), &keys->v[keys->n]);

		if (why == NULL) {
			keys->n++;
			continue;
		}
		if (strcmp(why, "out of memory") == 0) {
			rc = TERN_ENOMEM;
			goto out;
		}
		if (first_skip == NULL) {
			first_skip = why;
			first_skip_idx = i;
		}
	}
	if (keys->n == 0) {
		if (first_skip != NULL)
			seterr(err, errlen, "no usable signing key", first_skip, first_skip_idx);
		else
			seterr(err, errlen, "jwks: no keys", NULL, 0);
		goto out;
	}
	/* Keys skipped beside usable ones are not an error (a JWKS commonly
	 * holds encryption keys too); err still names the first. */
	if (first_skip != NULL)
		seterr(err, errlen, "skipped", first_skip, first_skip_idx);
	*out = keys;
	keys = NULL;
	rc = TERN_OK;
out:
	oauth_keys_free(keys);
	json_decref(root);
	return rc;
}

/* ------------------------------------------------------------------ JWT */

static bool verify_sig(const struct oauth_key *k, const char *data, size_t dlen,
                       const unsigned char *sig, size_t slen)
{
	EVP_MD_CTX *md = NULL;
	ECDSA_SIG *es = NULL;
	BIGNUM *r = NULL, *s = NULL;
	unsigned char *der = NULL;
	int derlen = 0;
	bool ok = false;

	if (k->type == KEY_RSA) {
		if (slen != (size_t)EVP_PKEY_get_size(k->pkey))
			return false;
	} else {
		/* JOSE carries R || S, 32 bytes each (RFC 7518 §3.4); OpenSSL
		 * wants DER. */
		if (slen != 64)
			return false;
		es = ECDSA_SIG_new();
		r = BN_bin2bn(sig, 32, NULL);
		s = BN_bin2bn(sig + 32, 32, NULL);
		if (es == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(es, r, s) != 1)
			goto out;
		r = s = NULL; /* owned by es now */
		derlen = i2d_ECDSA_SIG(es, &der);
		if (derlen <= 0)
			goto out;
		sig = der;
		slen = (size_t)derlen;
	}
	md = EVP_MD_CTX_new();
	if (md == NULL || EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k->pkey) != 1)
		goto out;
	ok = EVP_DigestVerify(md, sig, slen, (const unsigned char *)data, dlen) == 1;
out:
	EVP_MD_CTX_free(md);
	ECDSA_SIG_free(es);
	BN_free(r);
	BN_free(s);
	OPENSSL_free(der);
	return ok;
}

/* A NumericDate (RFC 7519 §2) as whole seconds (rounded down); false if
 * not a number in a sane range. */
static bool numeric_date(json_t *v, long long *out)
{
	if (json_is_integer(v)) {
		*out = (long long)json_integer_value(v);
		return true;
	}
	if (json_is_real(v)) {
		double d = json_real_value(v);

		long long secs;

		if (!isfinite(d) || d < -1e15 || d > 1e15)
			return false;
		secs = (long long)d; /* toward zero; floor without libm: */
		if ((double)secs > d)
			secs--;
		*out = secs;
		return true;
	}
	return false;
}

static bool aud_ok(json_t *aud, const char *want)
{
	if (json_is_string(aud))
		return strcmp(json_string_value(aud), want) == 0;
	if (json_is_array(aud)) {
		for (size_t i = 0; i < json_array_size(aud); i++) {
			json_t *a = json_array_get(aud, i);

			if (json_is_string(a) && strcmp(json_string_value(a), want) == 0)
				return true;
		}
	}
	return false;
}

/* The user claim: a non-empty string without control bytes, lowercased. */
static const char *user_claim(json_t *claims, const char *name, char *user, size_t userlen)
{
	json_t *v = json_object_get(claims, name);
	const char *s;
	size_t n;

	if (!json_is_string(v))
		return "no user claim";
	s = json_string_value(v);
	n = json_string_length(v);
	if (n == 0 || n > SASL_ID_MAX || n >= userlen)
		return "user claim empty or too long";
	for (size_t i = 0; i < n; i++) {
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return "control byte in user claim";
	}
	if (strcmp(name, "email") == 0) {
		json_t *ev = json_object_get(claims, "email_verified");

		/* Some IdPs send the boolean as a string. */
		if (json_is_false(ev) ||
		    (json_is_string(ev) && strcmp(json_string_value(ev), "false") == 0))
			return "email not verified";
	}
	memcpy(user, s, n);
	user[n] = '\0';
	tern_ascii_lower(user);
	return NULL;
}

static const char *check_claims(const struct oauth_config *cfg, json_t *c, long long now,
                                char *user, size_t userlen)
{
	long long leeway = cfg->leeway_seconds, t;
	json_t *iss = json_object_get(c, "iss"), *v;

	if (!json_is_string(iss) || strcmp(json_string_value(iss), cfg->issuer) != 0)
		return "wrong issuer";
	if (!aud_ok(json_object_get(c, "aud"), cfg->audience))
		return "wrong audience";
	v = json_object_get(c, "exp");
	if (v == NULL || !numeric_date(v, &t))
		return "no valid exp claim";
	if (now - leeway >= t) /* never t + leeway: t comes from the token */
		return "expired";
	v = json_object_get(c, "nbf");
	if (v != NULL && (!numeric_date(v, &t) || now + leeway < t))
		return "not yet valid (nbf)";
	v = json_object_get(c, "iat");
	if (v != NULL && (!numeric_date(v, &t) || now + leeway < t))
		return "issued in the future (iat)";
	return user_claim(c, cfg->user_claim != NULL ? cfg->user_claim : "email", user, userlen);
}

int oauth_claims_check(const struct oauth_config *cfg, const char *json, size_t len,
                       long long now, char *user, size_t userlen, const char **reason)
{
	json_t *claims;
	const char *why = "claims are not a JSON object";

	if (user != NULL && userlen > 0)
		user[0] = '\0';
	if (cfg == NULL || cfg->issuer == NULL || cfg->audience == NULL) {
		*reason = "oauth not configured";
		return TERN_EINVAL;
	}
	claims = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL);
	if (json_is_object(claims))
		why = check_claims(cfg, claims, now, user, userlen);
	json_decref(claims);
	*reason = why != NULL ? why : "";
	return why == NULL ? TERN_OK : TERN_EINVAL;
}

int oauth_token_validate(const struct oauth_config *cfg, const struct oauth_keys *keys,
                         const char *token, size_t len, long long now, char *user, size_t userlen,
                         const char **reason)
{
	struct tbuf hdr = TBUF_INIT(JWT_HEADER_MAX), body = TBUF_INIT(OAUTH_TOKEN_MAX),
	            sig = TBUF_INIT(RSA_BITS_MAX / 8);
	const char *dot1, *dot2, *algname, *kid = NULL, *why = "malformed token";
	json_t *h = NULL, *alg, *jkid;
	enum key_type want;
	bool candidate = false, verified = false;
	int rc = TERN_EINVAL;

	if (user != NULL && userlen > 0)
		user[0] = '\0';
	if (cfg == NULL || cfg->issuer == NULL || cfg->audience == NULL || keys == NULL ||
	    keys->n == 0) {
		why = "oauth not configured";
		goto out;
	}
	if (len > OAUTH_TOKEN_MAX) {
		why = "token too long";
		goto out;
	}
	/* header "." payload "." signature, each base64url (JWS compact form);
	 * five parts would be a JWE, which we do not take. */
	dot1 = memchr(token, '.', len);
	dot2 = dot1 != NULL ? memchr(dot1 + 1, '.', (size_t)(token + len - dot1 - 1)) : NULL;
	if (dot2 == NULL || memchr(dot2 + 1, '.', (size_t)(token + len - dot2 - 1)) != NULL)
		goto out;
	if ((rc = tern_base64url_decode(token, (size_t)(dot1 - token), &hdr)) != TERN_OK ||
	    (rc = tern_base64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), &body)) != TERN_OK ||
	    (rc = tern_base64url_decode(dot2 + 1, (size_t)(token + len - dot2 - 1), &sig)) !=
	        TERN_OK) {
		rc = rc == TERN_ENOMEM ? TERN_ENOMEM : TERN_EINVAL;
		goto out;
	}
	rc = TERN_EINVAL;
	h = json_loadb(hdr.data ? hdr.data : "", hdr.len, JSON_REJECT_DUPLICATES, NULL);
	if (!json_is_object(h))
		goto out;
	alg = json_object_get(h, "alg");
	if (!json_is_string(alg)) {
		why = "no alg";
		goto out;
	}
	algname = json_string_value(alg);
	if (strcmp(algname, "RS256") == 0) {
		want = KEY_RSA;
	} else if (strcmp(algname, "ES256") == 0) {
		want = KEY_EC;
	} else {
		why = "alg not allowed (RS256 and ES256 only)";
		goto out;
	}
	if (json_object_get(h, "crit") != NULL) {
		why = "unsupported crit header";
		goto out;
	}
	jkid = json_object_get(h, "kid");
	if (jkid != NULL) {
		if (!json_is_string(jkid)) {
			why = "kid is not a string";
			goto out;
		}
		kid = json_string_value(jkid);
	}
	/* The signing input is the token's first two parts as sent. */
	for (size_t i = 0; i < keys->n && !verified; i++) {
		const struct oauth_key *k = &keys->v[i];

		if (k->type != want)
			continue;
		if (kid != NULL && (k->kid == NULL || strcmp(k->kid, kid) != 0))
			continue;
		candidate = true;
		verified = verify_sig(k, token, (size_t)(dot2 - token),
		                      (const unsigned char *)sig.data, sig.len);
	}
	if (!candidate) {
		why = kid != NULL ? "unknown key id" : "no key for this alg";
		goto out;
	}
	if (!verified) {
		why = "bad signature";
		goto out;
	}
	/* Only now is the payload the issuer's word. */
	rc = oauth_claims_check(cfg, body.data ? body.data : "", body.len, now, user, userlen, &why);
out:
	if (reason != NULL)
		*reason = rc == TERN_OK ? "" : rc == TERN_ENOMEM ? "out of memory" : why;
	if (rc != TERN_OK && user != NULL && userlen > 0)
		user[0] = '\0';
	json_decref(h);
	tbuf_free(&hdr);
	tbuf_free(&body);
	tbuf_free(&sig);
	return rc;
}
