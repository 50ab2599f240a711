/*
 * sasl_scram.c — SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel
 * binding: the client-first and client-final parsers, Dovecot's stored
 * {SCRAM-SHA-256} form ("iter,salt,storedkey,serverkey", base64), key
 * derivation and the proof check.
 *
 * Owns: message syntax, the stored format, the SCRAM arithmetic.
 * Must never: accept "p=" channel binding (the -PLUS mechanism is not
 * offered, so a client asking for it is confused or attacked), compare a
 * key or proof in variable time, leave salted passwords or client keys in
 * memory (cleansed), or log. The PBKDF2 in scram_keys_from_password is
 * slow by design (thread pool only); the HMACs of a proof check are cheap.
 *
 * No SASLprep: user names are matched as sent and passwords are hashed as
 * bytes. ASCII passwords are unaffected; a non-ASCII password stored as
 * {SCRAM-SHA-256} by Dovecot behaves the same way there.
 */
#include "auth/sasl_internal.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "core/codec.h"
#include "core/err.h"

/* value-safe-char: any byte but NUL, ',' and '=' (UTF-8 is not checked
 * here: a name that is not valid UTF-8 just matches no user). */
static bool saslname_ok(struct strv s)
{
	if (s.n == 0)
		return false;
	for (size_t i = 0; i < s.n; i++) {
		unsigned char c = (unsigned char)s.p[i];

		if (c == '\0' || c == ',')
			return false;
		if (c == '=') {
			if (s.n - i < 3)
				return false;
			if (!(s.p[i + 1] == '2' && (s.p[i + 2] == 'C' || s.p[i + 2] == 'c')) &&
			    !(s.p[i + 1] == '3' && (s.p[i + 2] == 'D' || s.p[i + 2] == 'd')))
				return false;
			i += 2;
		}
	}
	return true;
}

int scram_saslname_decode(struct strv in, char *out, size_t outlen)
{
	size_t k = 0;

	if (outlen == 0)
		return TERN_ELIMIT;
	out[0] = '\0';
	if (!saslname_ok(in))
		return TERN_ESYNTAX;
	for (size_t i = 0; i < in.n; i++) {
		char c = in.p[i];

		if (c == '=') {
			c = in.p[i + 1] == '2' ? ',' : '=';
			i += 2;
		}
		if (k + 1 >= outlen)
			return TERN_ELIMIT;
		out[k++] = c;
	}
	out[k] = '\0';
	return TERN_OK;
}

/* Splits the next ','-separated field from *s. */
static bool next_field(struct strv *s, struct strv *field)
{
	const char *c;

	if (s->p == NULL)
		return false;
	c = memchr(s->p, ',', s->n);
	if (c == NULL) {
		*field = *s;
		s->p = NULL;
		s->n = 0;
		return true;
	}
	*field = strv_make(s->p, (size_t)(c - s->p));
	s->n -= field->n + 1;
	s->p = c + 1;
	return true;
}

static bool attr_is(struct strv f, char name)
{
	return f.n >= 2 && f.p[0] == name && f.p[1] == '=';
}

static struct strv attr_value(struct strv f)
{
	return strv_make(f.p + 2, f.n - 2);
}

/* printable = %x21-2B / %x2D-7E */
static bool nonce_ok(struct strv s)
{
	if (s.n == 0)
		return false;
	for (size_t i = 0; i < s.n; i++) {
		unsigned char c = (unsigned char)s.p[i];

		if (c < 0x21 || c > 0x7e || c == ',')
			return false;
	}
	return true;
}

/* attr-val = ALPHA "=" value, value = 1*value-char (no NUL, no ','). */
static bool extension_ok(struct strv f)
{
	if (f.n < 3 || !((f.p[0] >= 'a' && f.p[0] <= 'z') || (f.p[0] >= 'A' && f.p[0] <= 'Z')) ||
	    f.p[1] != '=')
		return false;
	return memchr(f.p, '\0', f.n) == NULL;
}

int scram_parse_client_first(const char *p, size_t n, struct scram_client_first *out)
{
	struct strv s = strv_make(p, n), f;

	memset(out, 0, sizeof(*out));
	if (n == 0 || memchr(p, '\0', n) != NULL)
		return TERN_ESYNTAX;
	/* gs2-cbind-flag */
	if (!next_field(&s, &f) || f.n == 0)
		return TERN_ESYNTAX;
	if (f.n == 1 && (f.p[0] == 'n' || f.p[0] == 'y'))
		out->cbflag = f.p[0];
	else if (attr_is(f, 'p'))
		return TERN_EINVAL; /* channel binding: we offer no -PLUS */
	else
		return TERN_ESYNTAX;
	/* [authzid] */
	if (!next_field(&s, &f) || s.p == NULL)
		return TERN_ESYNTAX;
	if (f.n > 0) {
		if (!attr_is(f, 'a') || !saslname_ok(attr_value(f)))
			return TERN_ESYNTAX;
		if (f.n - 2 > 3 * SASL_ID_MAX)
			return TERN_ELIMIT;
		out->authzid_raw = attr_value(f);
	}
	out->gs2_header = strv_make(p, (size_t)(s.p - p));
	out->bare = s;
	/* client-first-message-bare */
	if (!next_field(&s, &f))
		return TERN_ESYNTAX;
	if (attr_is(f, 'm'))
		return TERN_EINVAL; /* a mandatory extension we do not know */
	if (!attr_is(f, 'n') || !saslname_ok(attr_value(f)))
		return TERN_ESYNTAX;
	if (f.n - 2 > 3 * SASL_ID_MAX)
		return TERN_ELIMIT;
	out->user_raw = attr_value(f);
	if (!next_field(&s, &f) || !attr_is(f, 'r') || !nonce_ok(attr_value(f)))
		return TERN_ESYNTAX;
	if (f.n - 2 > SCRAM_NONCE_MAX)
		return TERN_ELIMIT;
	out->cnonce = attr_value(f);
	while (next_field(&s, &f)) {
		if (!extension_ok(f))
			return TERN_ESYNTAX;
	}
	return TERN_OK;
}

int scram_parse_client_final(const char *p, size_t n, struct scram_client_final *out)
{
	struct strv s, f;
	const char *lastcomma = NULL;
	struct tbuf proof = TBUF_INIT(SCRAM_KEYLEN + 3);
	int rc = TERN_ESYNTAX;

	memset(out, 0, sizeof(*out));
	if (n == 0 || memchr(p, '\0', n) != NULL)
		return TERN_ESYNTAX;
	for (size_t i = n; i > 0; i--) {
		if (p[i - 1] == ',') {
			lastcomma = p + i - 1;
			break;
		}
	}
	if (lastcomma == NULL)
		return TERN_ESYNTAX;
	/* proof = "p=" base64, always last */
	f = strv_make(lastcomma + 1, (size_t)(p + n - lastcomma - 1));
	if (!attr_is(f, 'p') || f.n - 2 > 4 * ((SCRAM_KEYLEN + 2) / 3))
		return TERN_ESYNTAX;
	if (tern_base64_decode(f.p + 2, f.n - 2, &proof) != TERN_OK || proof.len != SCRAM_KEYLEN)
		goto out;
	memcpy(out->proof, proof.data, SCRAM_KEYLEN);
	out->without_proof = strv_make(p, (size_t)(lastcomma - p));
	s = out->without_proof;
	if (!next_field(&s, &f) || !attr_is(f, 'c'))
		goto out;
	out->cbind = attr_value(f);
	if (!next_field(&s, &f) || !attr_is(f, 'r') || !nonce_ok(attr_value(f)))
		goto out;
	if (f.n - 2 > 2 * SCRAM_NONCE_MAX) {
		rc = TERN_ELIMIT;
		goto out;
	}
	out->nonce = attr_value(f);
	while (next_field(&s, &f)) {
		if (!extension_ok(f))
			goto out;
	}
	rc = TERN_OK;
out:
	if (proof.data != NULL)
		OPENSSL_cleanse(proof.data, proof.cap);
	tbuf_free(&proof);
	return rc;
}

/* Decodes base64 field f into exactly want bytes (or 1..max when want is 0). */
static int b64_field(struct strv f, unsigned char *dst, size_t want, size_t max, size_t *got)
{
	struct tbuf b = TBUF_INIT(max + 3);
	int rc = TERN_ESYNTAX;

	if (f.n == 0 || f.n > 4 * ((max + 2) / 3))
		return TERN_ESYNTAX;
	if (tern_base64_decode(f.p, f.n, &b) != TERN_OK)
		goto out;
	if (want != 0 ? b.len != want : (b.len == 0 || b.len > max))
		goto out;
	memcpy(dst, b.data, b.len);
	if (got != NULL)
		*got = b.len;
	rc = TERN_OK;
out:
	if (b.data != NULL)
		OPENSSL_cleanse(b.data, b.cap);
	tbuf_free(&b);
	return rc;
}

int scram_parse_stored(const char *p, size_t n, struct scram_stored *out)
{
	struct strv s = strv_make(p, n), f[4];
	unsigned long long iter = 0;
	size_t k = 0;

	memset(out, 0, sizeof(*out));
	while (k < 4 && next_field(&s, &f[k]))
		k++;
	if (k != 4 || s.p != NULL)
		return TERN_ESYNTAX;
	if (f[0].n == 0 || f[0].n > 9)
		return TERN_ESYNTAX;
	for (size_t i = 0; i < f[0].n; i++) {
		if (f[0].p[i] < '0' || f[0].p[i] > '9')
			return TERN_ESYNTAX;
		iter = iter * 10 + (unsigned)(f[0].p[i] - '0');
	}
	if (iter < SCRAM_ITER_MIN || iter > SCRAM_ITER_MAX)
		return TERN_ELIMIT;
	out->iter = (unsigned)iter;
	if (b64_field(f[1], out->salt, 0, SCRAM_SALT_MAX, &out->saltlen) != TERN_OK ||
	    b64_field(f[2], out->stored_key, SCRAM_KEYLEN, SCRAM_KEYLEN, NULL) != TERN_OK ||
	    b64_field(f[3], out->server_key, SCRAM_KEYLEN, SCRAM_KEYLEN, NULL) != TERN_OK) {
		OPENSSL_cleanse(out, sizeof(*out));
		return TERN_ESYNTAX;
	}
	out->salt_b64 = f[1];
	return TERN_OK;
}

static bool hmac256(const unsigned char *key, size_t klen, const void *msg, size_t mlen,
                    unsigned char out[SCRAM_KEYLEN])
{
	unsigned int olen = 0;

	return HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, &olen) != NULL &&
	       olen == SCRAM_KEYLEN;
}

int scram_keys_from_password(const char *pw, size_t n, const unsigned char *salt, size_t saltlen,
                             unsigned iter, unsigned char stored_key[SCRAM_KEYLEN],
                             unsigned char server_key[SCRAM_KEYLEN])
{
	unsigned char salted[SCRAM_KEYLEN], client_key[SCRAM_KEYLEN];
	int rc = TERN_EINVAL;

	if (n > SASL_PASS_MAX || saltlen > SCRAM_SALT_MAX || iter < 1 || iter > SCRAM_ITER_MAX)
		return TERN_EINVAL;
	/* SaltedPassword := Hi(password, salt, i), Hi being PBKDF2-HMAC-SHA-256. */
	if (PKCS5_PBKDF2_HMAC(pw, (int)n, salt, (int)saltlen, (int)iter, EVP_sha256(), SCRAM_KEYLEN,
	                      salted) != 1)
		goto out;
	if (!hmac256(salted, sizeof(salted), "Client Key", 10, client_key) ||
	    !hmac256(salted, sizeof(salted), "Server Key", 10, server_key))
		goto out;
	if (SHA256(client_key, sizeof(client_key), stored_key) == NULL)
		goto out;
	rc = TERN_OK;
out:
	OPENSSL_cleanse(salted, sizeof(salted));
	OPENSSL_cleanse(client_key, sizeof(client_key));
	return rc;
}

int scram_check_proof(const unsigned char stored_key[SCRAM_KEYLEN],
                      const unsigned char server_key[SCRAM_KEYLEN],
                      const unsigned char proof[SCRAM_KEYLEN], const char *auth_msg,
                      size_t auth_len, unsigned char server_sig[SCRAM_KEYLEN])
{
	unsigned char client_sig[SCRAM_KEYLEN], client_key[SCRAM_KEYLEN], check[SCRAM_KEYLEN];
	int rc = TERN_EINVAL;

	/* ClientKey := ClientProof XOR HMAC(StoredKey, AuthMessage);
	 * the proof holds iff H(ClientKey) == StoredKey. */
	if (!hmac256(stored_key, SCRAM_KEYLEN, auth_msg, auth_len, client_sig))
		goto out;
	for (size_t i = 0; i < SCRAM_KEYLEN; i++)
		client_key[i] = proof[i] ^ client_sig[i];
	if (SHA256(client_key, sizeof(client_key), check) == NULL)
		goto out;
	if (CRYPTO_memcmp(check, stored_key, SCRAM_KEYLEN) != 0)
		goto out;
	if (!hmac256(server_key, SCRAM_KEYLEN, auth_msg, auth_len, server_sig))
		goto out;
	rc = TERN_OK;
out:
	OPENSSL_cleanse(client_sig, sizeof(client_sig));
	OPENSSL_cleanse(client_key, sizeof(client_key));
	OPENSSL_cleanse(check, sizeof(check));
	return rc;
}

int sasl_scram_check_password(const char *stored, size_t n, const char *password)
{
	struct scram_stored st;
	unsigned char sk[SCRAM_KEYLEN], svk[SCRAM_KEYLEN];
	int rc = TERN_EINVAL;

	if (password == NULL || scram_parse_stored(stored, n, &st) != TERN_OK)
		goto out;
	if (scram_keys_from_password(password, strlen(password), st.salt, st.saltlen, st.iter, sk,
	                             svk) != TERN_OK)
		goto out;
	/* Both keys: a value whose halves do not belong together never matches. */
	if ((CRYPTO_memcmp(sk, st.stored_key, SCRAM_KEYLEN) |
	     CRYPTO_memcmp(svk, st.server_key, SCRAM_KEYLEN)) == 0)
		rc = TERN_OK;
out:
	OPENSSL_cleanse(&st, sizeof(st));
	OPENSSL_cleanse(sk, sizeof(sk));
	OPENSSL_cleanse(svk, sizeof(svk));
	return rc;
}

int sasl_scram_hash_password(const char *password, unsigned iter, char *out, size_t outlen)
{
	unsigned char salt[16], sk[SCRAM_KEYLEN], svk[SCRAM_KEYLEN];
	struct tbuf b = TBUF_INIT(256);
	int rc;

	if (outlen > 0)
		out[0] = '\0';
	if (password == NULL || iter < SCRAM_ITER_MIN || iter > SCRAM_ITER_MAX)
		return TERN_EINVAL;
	if (RAND_bytes(salt, sizeof(salt)) != 1)
		return TERN_EIO;
	rc =
	    scram_keys_from_password(password, strlen(password), salt, sizeof(salt), iter, sk, svk);
	if (rc != TERN_OK)
		goto out;
	if ((rc = tbuf_printf(&b, "{SCRAM-SHA-256}%u,", iter)) != TERN_OK ||
	    (rc = tern_base64_encode(salt, sizeof(salt), &b)) != TERN_OK ||
	    (rc = tbuf_append(&b, ",", 1)) != TERN_OK ||
	    (rc = tern_base64_encode(sk, sizeof(sk), &b)) != TERN_OK ||
	    (rc = tbuf_append(&b, ",", 1)) != TERN_OK ||
	    (rc = tern_base64_encode(svk, sizeof(svk), &b)) != TERN_OK)
		goto out;
	if (b.len >= outlen) {
		rc = TERN_ELIMIT;
		goto out;
	}
	memcpy(out, b.data, b.len + 1);
out:
	OPENSSL_cleanse(sk, sizeof(sk));
	OPENSSL_cleanse(svk, sizeof(svk));
	tbuf_free(&b);
	return rc;
}
