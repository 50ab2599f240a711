/*
 * dkim_key.c — DKIM keys: private keys from PEM and from key files (mode
 * checked), generation, the DNS record and its zone-file text, public keys
 * from key records, the RSA/Ed25519 primitives, and the keyring the config
 * describes.
 *
 * Owns: which keys tern signs with (RSA 1024..8192 bits, Ed25519) and how a
 * key file must be protected. Never: signs with an RSA key under 1024 bits
 * (RFC 8301), loads an encrypted key (nobody is there to type the
 * passphrase), or leaves key bytes in freed memory (file contents and PEM
 * text are wiped).
 * SECURITY: the key files hold secrets: a file others can read or write is
 * refused; see dkim_key_load.
 */
#include <errno.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "core/codec.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/files.h"
#include "policy/dkim_internal.h"

#define KEY_FILE_MAX (64u << 10)

/* ------------------------------------------------------------ primitives */

int dkim_crypto_sign(EVP_PKEY *k, enum dkim_alg alg, const uint8_t hash[32], uint8_t *sig,
                     size_t *siglen)
{
	int rc = TERN_EIO;
	size_t n = DKIM_SIG_BYTES_MAX;
	if (alg == DKIM_ALG_ED25519_SHA256) {
		/* RFC 8463 §3: PureEdDSA over the SHA-256 header hash */
		EVP_MD_CTX *m = EVP_MD_CTX_new();
		if (m && EVP_DigestSignInit(m, NULL, NULL, NULL, k) == 1 &&
		    EVP_DigestSign(m, sig, &n, hash, 32) == 1)
			rc = TERN_OK;
		EVP_MD_CTX_free(m);
	} else {
		EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(k, NULL);
		if (c && EVP_PKEY_sign_init(c) == 1 &&
		    EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) == 1 &&
		    EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) == 1 &&
		    EVP_PKEY_sign(c, NULL, &n, hash, 32) == 1 && n <= DKIM_SIG_BYTES_MAX &&
		    EVP_PKEY_sign(c, sig, &n, hash, 32) == 1)
			rc = TERN_OK;
		EVP_PKEY_CTX_free(c);
	}
	ERR_clear_error();
	*siglen = rc == TERN_OK ? n : 0;
	return rc;
}

bool dkim_crypto_verify(EVP_PKEY *k, enum dkim_alg alg, const uint8_t hash[32], const uint8_t *sig,
                        size_t siglen)
{
	bool ok = false;
	if (alg == DKIM_ALG_ED25519_SHA256) {
		EVP_MD_CTX *m = EVP_MD_CTX_new();
		ok = m && EVP_DigestVerifyInit(m, NULL, NULL, NULL, k) == 1 &&
		     EVP_DigestVerify(m, sig, siglen, hash, 32) == 1;
		EVP_MD_CTX_free(m);
	} else {
		EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(k, NULL);
		ok = c && EVP_PKEY_verify_init(c) == 1 &&
		     EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) == 1 &&
		     EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) == 1 &&
		     EVP_PKEY_verify(c, sig, siglen, hash, 32) == 1;
		EVP_PKEY_CTX_free(c);
	}
	ERR_clear_error();
	return ok;
}

EVP_PKEY *dkim_pubkey_decode(const struct dkim_keyrec *r)
{
	EVP_PKEY *k = NULL;
	if (r->revoked)
		return NULL;
	if (r->type == DKIM_KEY_ED25519) {
		if (r->p_len == 32)
			k = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, r->p, r->p_len);
	} else {
		/* What everyone publishes is a SubjectPublicKeyInfo; RFC 6376 §3.6.1
		 * literally says RSAPublicKey, and a few do publish that. */
		const unsigned char *p = r->p;
		k = d2i_PUBKEY(NULL, &p, (long)r->p_len);
		if (k && (EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA || p != r->p + r->p_len)) {
			EVP_PKEY_free(k);
			k = NULL;
		}
		if (!k) {
			p = r->p;
			k = d2i_PublicKey(EVP_PKEY_RSA, NULL, &p, (long)r->p_len);
			if (k && p != r->p + r->p_len) {
				EVP_PKEY_free(k);
				k = NULL;
			}
		}
	}
	ERR_clear_error();
	return k;
}

/* ------------------------------------------------------------ private keys */

static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

static int key_wrap(EVP_PKEY *pk, struct dkim_key **out, char *warn, size_t warnlen, char *err,
                    size_t errlen)
{
	struct dkim_key *k = NULL;
	if (warn && warnlen)
		warn[0] = '\0';
	int id = EVP_PKEY_get_base_id(pk);
	unsigned bits = (unsigned)EVP_PKEY_get_bits(pk);
	if (id == EVP_PKEY_RSA) {
		if (bits < DKIM_RSA_MIN_BITS) {
			snprintf(
			    err, errlen,
			    "RSA key of %u bits: DKIM needs at least %u (RFC 8301); make a new "
			    "one with `tern dkim keygen`",
			    bits, DKIM_RSA_MIN_BITS);
			goto fail;
		}
		if (bits > DKIM_RSA_MAX_BITS) {
			snprintf(err, errlen, "RSA key of %u bits: more than %u", bits,
			         DKIM_RSA_MAX_BITS);
			goto fail;
		}
		if (bits < DKIM_RSA_GOOD_BITS && warn && warnlen)
			snprintf(warn, warnlen,
			         "RSA key of %u bits: RFC 8301 asks for %u bits or more; some "
			         "receivers discount shorter keys",
			         bits, DKIM_RSA_GOOD_BITS);
	} else if (id != EVP_PKEY_ED25519) {
		snprintf(err, errlen, "not an RSA or Ed25519 key (DKIM signs with no other)");
		goto fail;
	}
	if (!(k = calloc(1, sizeof(*k)))) {
		snprintf(err, errlen, "out of memory");
		EVP_PKEY_free(pk);
		return TERN_ENOMEM;
	}
	k->pkey = pk;
	k->alg = id == EVP_PKEY_RSA ? DKIM_ALG_RSA_SHA256 : DKIM_ALG_ED25519_SHA256;
	k->bits = id == EVP_PKEY_RSA ? bits : 256;
	*out = k;
	return TERN_OK;
fail:
	EVP_PKEY_free(pk);
	return TERN_EINVAL;
}

int dkim_key_from_pem(const char *pem, size_t len, struct dkim_key **out, char *warn,
                      size_t warnlen, char *err, size_t errlen)
{
	*out = NULL;
	if (len > KEY_FILE_MAX || len > INT32_MAX) {
		snprintf(err, errlen, "key file too large");
		return TERN_EINVAL;
	}
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	if (!bio) {
		snprintf(err, errlen, "out of memory");
		return TERN_ENOMEM;
	}
	EVP_PKEY *pk = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
	BIO_free(bio);
	if (!pk) {
		unsigned long e = ERR_peek_last_error();
		bool enc = memmem(pem, len, "ENCRYPTED", 9) != NULL;
		snprintf(err, errlen, "%s",
		         enc ? "the key is encrypted: tern needs it without a passphrase"
		         : e ? "no PEM private key (PKCS#1 \"RSA PRIVATE KEY\" or PKCS#8 \"PRIVATE "
		               "KEY\") in it"
		             : "no PEM private key in it");
		ERR_clear_error();
		return TERN_EINVAL;
	}
	return key_wrap(pk, out, warn, warnlen, err, errlen);
}

int dkim_key_load(const char *path, struct dkim_key **out, char *warn, size_t warnlen, char *err,
                  size_t errlen)
{
	char *buf = NULL;
	size_t len = 0;
	int en = 0;
	char mode_warn[200] = "";
	*out = NULL;
	if (warn && warnlen)
		warn[0] = '\0';
	int rc = tern_file_read(path, KEY_FILE_MAX, &buf, &len, &en);
	if (rc != TERN_OK) {
		snprintf(err, errlen, "cannot read %s: %s", path,
		         rc == TERN_ELIMIT ? "larger than 64 KiB" : strerror(en));
		return rc == TERN_ENOMEM ? TERN_ENOMEM : TERN_EINVAL;
	}
	/*
	 * The mode: a key others can read is no secret, one others (or its group)
	 * can write can be swapped for theirs. Both are refused. A group-readable
	 * key (0640 for a signing daemon in the group) loads with a warning.
	 * stat() fails only when the key's directory is closed to us (the
	 * unprivileged child, reading through its parent): then nobody else
	 * reaches the file through that path either.
	 */
	struct stat st;
	if (stat(path, &st) == 0) {
		if (st.st_mode & (S_IROTH | S_IWOTH | S_IWGRP)) {
			snprintf(err, errlen,
			         "%s is mode %04o: a DKIM key must not be readable by others or "
			         "writable by anyone but its owner (chmod 600 %s)",
			         path, (unsigned)(st.st_mode & 07777), path);
			rc = TERN_EINVAL;
			goto out;
		}
		if (st.st_mode & S_IRGRP)
			snprintf(mode_warn, sizeof(mode_warn),
			         "%s is mode %04o: readable by its group; 0600 is safer", path,
			         (unsigned)(st.st_mode & 07777));
	}
	char kerr[256], kwarn[200];
	rc = dkim_key_from_pem(buf, len, out, kwarn, sizeof(kwarn), kerr, sizeof(kerr));
	if (rc != TERN_OK) {
		snprintf(err, errlen, "%s: %s", path, kerr);
		goto out;
	}
	if (warn && warnlen && (mode_warn[0] || kwarn[0]))
		snprintf(warn, warnlen, "%s%s%s%s%s", mode_warn,
		         mode_warn[0] && kwarn[0] ? "; " : "", kwarn[0] ? path : "",
		         kwarn[0] ? ": " : "", kwarn);
out:
	explicit_bzero(buf, len);
	free(buf);
	return rc;
}

int dkim_key_generate(enum dkim_alg alg, unsigned bits, struct dkim_key **out)
{
	EVP_PKEY *pk;
	char err[200];
	*out = NULL;
	if (alg == DKIM_ALG_RSA_SHA256) {
		if (bits == 0)
			bits = DKIM_RSA_GOOD_BITS;
		if (bits < DKIM_RSA_MIN_BITS || bits > 4096)
			return TERN_EINVAL;
		pk = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
	} else if (alg == DKIM_ALG_ED25519_SHA256) {
		pk = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	} else {
		return TERN_EINVAL;
	}
	ERR_clear_error();
	if (!pk)
		return TERN_EIO;
	return key_wrap(pk, out, NULL, 0, err, sizeof(err)) == TERN_OK ? TERN_OK : TERN_EIO;
}

int dkim_key_pem(const struct dkim_key *k, char **out, size_t *outlen)
{
	int rc = TERN_EIO;
	BIO *bio = BIO_new(BIO_s_mem());
	*out = NULL;
	*outlen = 0;
	if (!bio)
		return TERN_ENOMEM;
	if (PEM_write_bio_PrivateKey(bio, k->pkey, NULL, NULL, 0, NULL, NULL) == 1) {
		char *p;
		long n = BIO_get_mem_data(bio, &p);
		if (n > 0 && (*out = malloc((size_t)n + 1))) {
			memcpy(*out, p, (size_t)n);
			(*out)[n] = '\0';
			*outlen = (size_t)n;
			rc = TERN_OK;
		} else if (n > 0) {
			rc = TERN_ENOMEM;
		}
		explicit_bzero(p, n > 0 ? (size_t)n : 0);
	}
	BIO_free(bio);
	ERR_clear_error();
	return rc;
}

enum dkim_alg dkim_key_alg(const struct dkim_key *k)
{
	return k->alg;
}

unsigned dkim_key_bits(const struct dkim_key *k)
{
	return k->bits;
}

int dkim_key_record(const struct dkim_key *k, char **out)
{
	unsigned char raw[DKIM_PUBKEY_MAX];
	size_t n = sizeof(raw);
	int rc = TERN_EIO;
	struct tbuf t = TBUF_INIT(8192);
	*out = NULL;
	if (k->alg == DKIM_ALG_ED25519_SHA256) {
		if (EVP_PKEY_get_raw_public_key(k->pkey, raw, &n) != 1)
			goto out;
	} else {
		unsigned char *der = NULL;
		int dl = i2d_PUBKEY(k->pkey, &der);
		if (dl <= 0 || (size_t)dl > sizeof(raw)) {
			OPENSSL_free(der);
			goto out;
		}
		memcpy(raw, der, (size_t)dl);
		n = (size_t)dl;
		OPENSSL_free(der);
	}
	if ((rc = tbuf_printf(&t, "v=DKIM1; k=%s; p=",
	                      k->alg == DKIM_ALG_RSA_SHA256 ? "rsa" : "ed25519")) != TERN_OK ||
	    (rc = tern_base64_encode(raw, n, &t)) != TERN_OK)
		goto out;
	*out = tbuf_steal(&t, &n);
	rc = *out ? TERN_OK : TERN_ENOMEM;
out:
	tbuf_free(&t);
	ERR_clear_error();
	return rc;
}

bool dkim_key_matches_record(const struct dkim_key *k, const char *record, const char **why)
{
	struct dkim_keyrec *r = malloc(sizeof(*r));
	bool ok = false;
	if (!r) {
		*why = "out of memory";
		return false;
	}
	if (dkim_keyrec_parse(record, strlen(record), r, why) != TERN_OK)
		goto out;
	enum dkim_keytype want = k->alg == DKIM_ALG_RSA_SHA256 ? DKIM_KEY_RSA : DKIM_KEY_ED25519;
	if (r->type != want) {
		*why = want == DKIM_KEY_RSA ? "the record is k=ed25519, the key is RSA"
		                            : "the record is k=rsa, the key is Ed25519";
		goto out;
	}
	if (r->revoked) {
		*why = "the record is revoked (empty p=)";
		goto out;
	}
	EVP_PKEY *pub = dkim_pubkey_decode(r);
	if (!pub) {
		*why = "the record's p= is not a usable public key";
		goto out;
	}
	ok = EVP_PKEY_eq(k->pkey, pub) == 1;
	EVP_PKEY_free(pub);
	ERR_clear_error();
	if (!ok)
		*why = "the record holds a different key";
	else if (!r->sha256_ok)
		ok = false, *why = "the record's h= does not allow sha256";
	else if (!r->email_ok)
		ok = false, *why = "the record's s= does not allow email";
	else
		*why = r->testing ? "matches (t=y: receivers treat mail as unsigned)" : "matches";
out:
	free(r);
	return ok;
}

void dkim_key_free(struct dkim_key *k)
{
	if (!k)
		return;
	EVP_PKEY_free(k->pkey);
	free(k);
}

int dkim_zone_text(const char *selector, const char *domain, const char *record, char **out)
{
	struct tbuf t = TBUF_INIT(64u << 10);
	size_t n = strlen(record), len;
	int rc = tbuf_printf(&t, "%s._domainkey.%s. IN TXT (", selector, domain);
	/* RFC 1035 §3.3.14: a character-string holds at most 255 bytes; the
	 * record is split into several, which DKIM joins with nothing between
	 * (RFC 6376 §3.6.2.2). A record has no '"' or '\\' to escape. */
	for (size_t i = 0; rc == TERN_OK && i < n; i += 255) {
		size_t k = n - i > 255 ? 255 : n - i;
		rc = tbuf_printf(&t, "\n\t\"%.*s\"", (int)k, record + i);
	}
	if (rc == TERN_OK)
		rc = tbuf_append_str(&t, " )\n");
	*out = rc == TERN_OK ? tbuf_steal(&t, &len) : NULL;
	tbuf_free(&t);
	return rc != TERN_OK ? rc : *out ? TERN_OK : TERN_ENOMEM;
}

/* ------------------------------------------------------------ keyring */

struct dkim_keyring {
	struct dkim_keyring_key *k;
	size_t n;
	enum dkim_canon hcanon, bcanon;
};

void dkim_keyring_free(struct dkim_keyring *kr)
{
	if (!kr)
		return;
	for (size_t i = 0; i < kr->n; i++) {
		free((char *)kr->k[i].domain);
		free((char *)kr->k[i].selector);
		free((char *)kr->k[i].key_file);
		dkim_key_free(kr->k[i].key);
	}
	free(kr->k);
	free(kr);
}

int dkim_keyring_load(const struct conf_dkim *c, struct dkim_keyring **out,
                      void (*warn)(void *arg, const char *text), void *arg, char *err,
                      size_t errlen)
{
	struct dkim_keyring *kr = calloc(1, sizeof(*kr));
	int rc = TERN_ENOMEM;
	*out = NULL;
	if (!kr || (c->n_keys && !(kr->k = calloc(c->n_keys, sizeof(*kr->k))))) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	kr->hcanon = c->header_relaxed ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
	kr->bcanon = c->body_relaxed ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
	for (size_t i = 0; i < c->n_keys; i++) {
		const struct conf_dkim_key *ck = &c->keys[i];
		struct dkim_keyring_key *k = &kr->k[kr->n];
		char w[512], e[512];
		if (!(k->domain = tern_strdup(ck->domain)) ||
		    !(k->selector = tern_strdup(ck->selector)) ||
		    !(k->key_file = tern_strdup(ck->key_file))) {
			kr->n++;
			snprintf(err, errlen, "out of memory");
			rc = TERN_ENOMEM;
			goto fail;
		}
		kr->n++;
		tern_ascii_lower((char *)k->domain);
		rc = dkim_key_load(ck->key_file, &k->key, w, sizeof(w), e, sizeof(e));
		if (rc != TERN_OK) {
			snprintf(err, errlen, "dkim key %s for %s (selector %s): %s", ck->key_file,
			         ck->domain, ck->selector, e);
			goto fail;
		}
		if (w[0] && warn)
			warn(arg, w);
	}
	*out = kr;
	return TERN_OK;
fail:
	dkim_keyring_free(kr);
	return rc;
}

size_t dkim_keyring_count(const struct dkim_keyring *kr)
{
	return kr ? kr->n : 0;
}

const struct dkim_keyring_key *dkim_keyring_get(const struct dkim_keyring *kr, size_t i)
{
	return kr && i < kr->n ? &kr->k[i] : NULL;
}

const char *dkim_keyring_domain_for(const struct dkim_keyring *kr, const char *domain)
{
	if (!kr || !domain)
		return NULL;
	for (const char *d = domain; d && *d;) {
		for (size_t i = 0; i < kr->n; i++)
			if (strcasecmp(kr->k[i].domain, d) == 0)
				return kr->k[i].domain;
		d = strchr(d, '.');
		if (d)
			d++;
	}
	return NULL;
}

void dkim_keyring_canon(const struct dkim_keyring *kr, enum dkim_canon *hc, enum dkim_canon *bc)
{
	*hc = kr->hcanon;
	*bc = kr->bcanon;
}
