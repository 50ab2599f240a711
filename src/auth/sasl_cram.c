/*
 * sasl_cram.c — CRAM-MD5 (RFC 2195): parsing the client's response and
 * computing HMAC-MD5 from either a cleartext password or Dovecot's stored
 * {CRAM-MD5} form, which is the HMAC-MD5 key schedule (the MD5 states after
 * the ipad and opad blocks) rather than the password itself.
 *
 * Owns: the response syntax, the stored-context format, the digests.
 * Must never: compare digests in variable time, leave a password-derived
 * state on the stack (every MD5 context is cleansed), or log anything.
 *
 * Why the deprecated low-level MD5 API: resuming MD5 from a stored
 * intermediate state is exactly what Dovecot's format needs, and only
 * MD5_CTX exposes the state (EVP offers no way to set it). Dovecot, Cyrus
 * and Exim do the same. The cost is confined to this file.
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "auth/sasl_internal.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/md5.h>

#include "core/err.h"

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int hex_decode(const char *p, size_t n, unsigned char *out, size_t outlen)
{
	if (n != 2 * outlen)
		return TERN_ESYNTAX;
	for (size_t i = 0; i < outlen; i++) {
		int hi = hexval((unsigned char)p[2 * i]), lo = hexval((unsigned char)p[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return TERN_ESYNTAX;
		out[i] = (unsigned char)(hi << 4 | lo);
	}
	return TERN_OK;
}

int sasl_cram_parse(const char *p, size_t n, struct strv *user, unsigned char digest[16])
{
	const char *sp = NULL;

	/* The digest is the last field; a user name may contain spaces. */
	for (size_t i = n; i > 0; i--) {
		if (p[i - 1] == ' ') {
			sp = p + i - 1;
			break;
		}
	}
	if (sp == NULL || sp == p)
		return TERN_ESYNTAX;
	if ((size_t)(sp - p) > SASL_ID_MAX)
		return TERN_ELIMIT;
	if (memchr(p, '\0', (size_t)(sp - p)) != NULL)
		return TERN_ESYNTAX;
	if (hex_decode(sp + 1, (size_t)(p + n - sp - 1), digest, 16) != TERN_OK)
		return TERN_ESYNTAX;
	*user = strv_make(p, (size_t)(sp - p));
	return TERN_OK;
}

int sasl_cram_parse_stored(const char *p, size_t n, unsigned char ctx[CRAM_MD5_CONTEXTLEN])
{
	return hex_decode(p, n, ctx, CRAM_MD5_CONTEXTLEN);
}

static void put_le32(unsigned char *p, MD5_LONG v)
{
	p[0] = (unsigned char)(v & 0xff);
	p[1] = (unsigned char)(v >> 8 & 0xff);
	p[2] = (unsigned char)(v >> 16 & 0xff);
	p[3] = (unsigned char)(v >> 24 & 0xff);
}

static MD5_LONG get_le32(const unsigned char *p)
{
	return (MD5_LONG)p[0] | (MD5_LONG)p[1] << 8 | (MD5_LONG)p[2] << 16 | (MD5_LONG)p[3] << 24;
}

int sasl_cram_context(const char *pw, size_t n, unsigned char ctx[CRAM_MD5_CONTEXTLEN])
{
	unsigned char key[64], block[64];
	MD5_CTX md;
	int rc = TERN_EINVAL;

	memset(key, 0, sizeof(key));
	/* HMAC (RFC 2104): a key longer than the block is hashed first. */
	if (n > sizeof(key)) {
		if (EVP_Digest(pw, n, key, NULL, EVP_md5(), NULL) != 1)
			goto out;
	} else {
		memcpy(key, pw, n);
	}
	for (int pass = 0; pass < 2; pass++) {
		/* Outer (opad) state first, then inner (ipad): Dovecot's order. */
		unsigned char pad = pass == 0 ? 0x5c : 0x36;
		unsigned char *dst = ctx + 16 * pass;

		for (size_t i = 0; i < sizeof(block); i++)
			block[i] = key[i] ^ pad;
		if (MD5_Init(&md) != 1 || MD5_Update(&md, block, sizeof(block)) != 1)
			goto out;
		put_le32(dst, md.A);
		put_le32(dst + 4, md.B);
		put_le32(dst + 8, md.C);
		put_le32(dst + 12, md.D);
	}
	rc = TERN_OK;
out:
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(block, sizeof(block));
	OPENSSL_cleanse(&md, sizeof(md));
	return rc;
}

/* An MD5 context that has absorbed exactly one 64-byte block and is in the
 * state stored at p. */
static void md5_resume(MD5_CTX *md, const unsigned char *p)
{
	memset(md, 0, sizeof(*md));
	md->A = get_le32(p);
	md->B = get_le32(p + 4);
	md->C = get_le32(p + 8);
	md->D = get_le32(p + 12);
	md->Nl = 512; /* bits processed: one block */
}

int sasl_cram_digest(const unsigned char ctx[CRAM_MD5_CONTEXTLEN], const char *challenge,
                     size_t clen, unsigned char out[16])
{
	unsigned char inner[16];
	MD5_CTX md;
	int rc = TERN_EINVAL;

	md5_resume(&md, ctx + 16);
	if (MD5_Update(&md, challenge, clen) != 1 || MD5_Final(inner, &md) != 1)
		goto out;
	md5_resume(&md, ctx);
	if (MD5_Update(&md, inner, sizeof(inner)) != 1 || MD5_Final(out, &md) != 1)
		goto out;
	rc = TERN_OK;
out:
	OPENSSL_cleanse(inner, sizeof(inner));
	OPENSSL_cleanse(&md, sizeof(md));
	return rc;
}

int sasl_cram_check_password(const char *stored, size_t n, const char *password)
{
	unsigned char want[CRAM_MD5_CONTEXTLEN], got[CRAM_MD5_CONTEXTLEN];
	int rc = TERN_EINVAL;

	if (password == NULL || sasl_cram_parse_stored(stored, n, want) != TERN_OK)
		goto out;
	if (sasl_cram_context(password, strlen(password), got) != TERN_OK)
		goto out;
	if (CRYPTO_memcmp(want, got, sizeof(want)) == 0)
		rc = TERN_OK;
out:
	OPENSSL_cleanse(want, sizeof(want));
	OPENSSL_cleanse(got, sizeof(got));
	return rc;
}
