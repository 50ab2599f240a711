/*
 * selfsigned.c — the certificate of the embedded default (tls.self_signed):
 * made on first start in the data directory, reused while it is good,
 * made again when it expires, names another host or lost its key.
 *
 * Owns: the certificate's shape (EC P-256, SAN hostname + localhost +
 * 127.0.0.1 + ::1, serverAuth, 365 days) and the decision to renew.
 * Never: runs in the unprivileged child of a split daemon (cli/serve.c calls
 * it before the split and in the privileged parent's reload, so the child
 * gets the files through its bundle), writes a key with another mode than
 * 0600, or leaves a half-written file (core/fsutil.h writes atomically).
 */
#include <errno.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"
#include "core/files.h"
#include "core/fsutil.h"
#include "tls/tls.h"
#include "tls/tls_internal.h"

#define SELF_SIGNED_DAYS 365
#define RENEW_BEFORE (24 * 3600) /* seconds of validity left that call for a new one */

/* Host names go into an OpenSSL extension text ("DNS:a,DNS:b"): only the
 * characters of a host name, so nothing can inject another entry. */
static bool plain_host(const char *h)
{
	size_t n = strlen(h);
	if (n == 0 || n > 253)
		return false;
	for (; *h; h++)
		if (!((*h >= 'a' && *h <= 'z') || (*h >= 'A' && *h <= 'Z') ||
		      (*h >= '0' && *h <= '9') || *h == '-' || *h == '.' || *h == '_'))
			return false;
	return true;
}

static int add_ext(X509 *x, int nid, const char *value)
{
	X509V3_CTX v3;
	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	X509_EXTENSION *ex = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	if (!ex)
		return -1;
	int ok = X509_add_ext(x, ex, -1);
	X509_EXTENSION_free(ex);
	return ok == 1 ? 0 : -1;
}

/* The contents of a memory BIO as a new NUL-terminated string. */
static char *bio_text(BIO *b, size_t *len)
{
	char *p = NULL;
	long n = BIO_get_mem_data(b, &p);
	if (n <= 0)
		return NULL;
	char *s = malloc((size_t)n + 1);
	if (!s)
		return NULL;
	memcpy(s, p, (size_t)n);
	s[n] = '\0';
	*len = (size_t)n;
	return s;
}

int tls_self_signed_make(const char *hostname, unsigned days, long not_after_shift, char **cert,
                         size_t *cert_len, char **key, size_t *key_len, char *err, size_t errlen)
{
	int rc = TERN_EINVAL;
	EVP_PKEY *pk = NULL;
	X509 *x = NULL;
	BIGNUM *bn = NULL;
	BIO *cb = NULL, *kb = NULL;
	char san[600], why[256];
	unsigned char serial[16];

	*cert = *key = NULL;
	*cert_len = *key_len = 0;
	if (!hostname || !plain_host(hostname)) {
		snprintf(err, errlen, "tls: '%s' cannot name a certificate",
		         hostname ? hostname : "(null)");
		return TERN_EINVAL;
	}
	ERR_clear_error();
	if (!(pk = EVP_EC_gen("P-256")) || !(x = X509_new()) || X509_set_version(x, 2) != 1)
		goto ssl_fail;
	/* A random positive serial (RFC 5280 §4.1.2.2: up to 20 octets). */
	if (RAND_bytes(serial, sizeof(serial)) != 1)
		goto ssl_fail;
	serial[0] &= 0x7f;
	serial[0] |= 0x40;
	if (!(bn = BN_bin2bn(serial, sizeof(serial), NULL)) ||
	    !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)))
		goto ssl_fail;
	/* An hour back, for clocks that are a little behind ours. */
	if (!X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
	    !X509_time_adj_ex(X509_getm_notAfter(x), (int)days, not_after_shift, NULL))
		goto ssl_fail;
	X509_NAME *name = X509_get_subject_name(x);
	/* A CN holds at most 64 characters (RFC 5280 ub-common-name). */
	const char *cn = strlen(hostname) <= 64 ? hostname : "tern";
	if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"tern", -1,
	                               -1, 0) != 1 ||
	    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
	                               0) != 1 ||
	    X509_set_issuer_name(x, name) != 1 || X509_set_pubkey(x, pk) != 1)
		goto ssl_fail;
	bool is_localhost = strcasecmp(hostname, "localhost") == 0;
	snprintf(san, sizeof(san), "DNS:%s%s,IP:127.0.0.1,IP:::1", hostname,
	         is_localhost ? "" : ",DNS:localhost");
	if (add_ext(x, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
	    add_ext(x, NID_key_usage, "critical,digitalSignature") != 0 ||
	    add_ext(x, NID_ext_key_usage, "serverAuth") != 0 ||
	    add_ext(x, NID_subject_key_identifier, "hash") != 0 ||
	    add_ext(x, NID_subject_alt_name, san) != 0)
		goto ssl_fail;
	if (X509_sign(x, pk, EVP_sha256()) <= 0)
		goto ssl_fail;
	if (!(cb = BIO_new(BIO_s_mem())) || !(kb = BIO_new(BIO_s_secmem())) ||
	    PEM_write_bio_X509(cb, x) != 1 ||
	    PEM_write_bio_PrivateKey(kb, pk, NULL, NULL, 0, NULL, NULL) != 1)
		goto ssl_fail;
	if (!(*cert = bio_text(cb, cert_len)) || !(*key = bio_text(kb, key_len))) {
		free(*cert);
		*cert = NULL;
		snprintf(err, errlen, "tls: out of memory");
		rc = TERN_ENOMEM;
		goto out;
	}
	rc = TERN_OK;
	goto out;
ssl_fail:
	snprintf(err, errlen, "tls: cannot make a self-signed certificate: %s",
	         tls_last_error(0, why, sizeof(why)));
	rc = TERN_EINVAL;
out:
	BIO_free(cb);
	BIO_free(kb); /* secure memory: cleared when freed */
	BN_free(bn);
	X509_free(x);
	EVP_PKEY_free(pk);
	return rc;
}

/* Why the pair at cert_path/key_path must be made again, or NULL if it is
 * good for hostname for more than RENEW_BEFORE seconds. */
static const char *renew_reason(const char *cert_path, const char *key_path, const char *hostname)
{
	char *cert = NULL, *key = NULL;
	size_t clen = 0, klen = 0;
	int en = 0;
	X509 *x = NULL;
	EVP_PKEY *pk = NULL;
	const char *why = NULL;
	time_t limit = time(NULL) + RENEW_BEFORE;

	if (tern_file_read_fs(cert_path, TLS_FILE_MAX, &cert, &clen, &en) != TERN_OK)
		why = en == ENOENT ? "missing" : "unreadable";
	else if (!(x = tls_pem_x509(cert, clen)))
		why = "unparsable";
	else if (X509_cmp_time(X509_get0_notAfter(x), &limit) <= 0)
		why = "expired";
	else if (X509_check_host(x, hostname, strlen(hostname), 0, NULL) != 1)
		why = "hostname-changed";
	else if (tern_file_read_fs(key_path, TLS_FILE_MAX, &key, &klen, &en) != TERN_OK)
		why = en == ENOENT ? "key-missing" : "key-unreadable";
	else if (!(pk = tls_pem_key(key, klen)))
		why = "key-unparsable";
	else if (X509_check_private_key(x, pk) != 1)
		why = "key-mismatch";
	ERR_clear_error();
	X509_free(x);
	EVP_PKEY_free(pk);
	free(cert);
	if (key) {
		explicit_bzero(key, klen);
		free(key);
	}
	return why;
}

/* mkdir -p of the directory holding path, 0700, given to uid/gid. */
static int make_parent(const char *path, uid_t uid, gid_t gid, char *err, size_t errlen)
{
	char dir[4096];
	const char *slash = strrchr(path, '/');
	if (!slash)
		return TERN_OK;
	size_t n = (size_t)(slash - path);
	if (n == 0)
		return TERN_OK;
	if (n >= sizeof(dir)) {
		snprintf(err, errlen, "tls: path too long: %s", path);
		return TERN_ELIMIT;
	}
	memcpy(dir, path, n);
	dir[n] = '\0';
	bool created = false;
	if (tern_mkdir_p(dir, 0700, true, &created) != TERN_OK) {
		snprintf(err, errlen, "tls: cannot create %s: %s", dir, strerror(errno));
		return TERN_EIO;
	}
	if (created && (uid != (uid_t)-1 || gid != (gid_t)-1) && lchown(dir, uid, gid) != 0) {
		snprintf(err, errlen, "tls: cannot give %s to uid %ld: %s", dir, (long)uid,
		         strerror(errno));
		return TERN_EIO;
	}
	return TERN_OK;
}

int tls_self_signed_ensure(const char *cert_path, const char *key_path, const char *hostname,
                           uid_t uid, gid_t gid, bool *made, char *why, size_t whylen, char *err,
                           size_t errlen)
{
	*made = false;
	if (why && whylen)
		why[0] = '\0';
	const char *reason = renew_reason(cert_path, key_path, hostname);
	if (!reason) {
		/* Good, but perhaps written by an earlier run for another account
		 * (as root without a split): the reader must be able to read it. */
		if ((uid != (uid_t)-1 || gid != (gid_t)-1) &&
		    (lchown(cert_path, uid, gid) != 0 || lchown(key_path, uid, gid) != 0)) {
			snprintf(err, errlen, "tls: cannot give %s to uid %ld: %s", key_path,
			         (long)uid, strerror(errno));
			return TERN_EIO;
		}
		return TERN_OK;
	}
	if (why && whylen)
		snprintf(why, whylen, "%s", reason);
	char *cert = NULL, *key = NULL;
	size_t clen = 0, klen = 0;
	int rc = tls_self_signed_make(hostname, SELF_SIGNED_DAYS, 0, &cert, &clen, &key, &klen, err,
	                              errlen);
	if (rc != TERN_OK)
		return rc;
	struct tern_write_opts ko = {.mode = 0600, .uid = uid, .gid = gid};
	struct tern_write_opts co = {.mode = 0644, .uid = uid, .gid = gid};
	/* The key first: a crash between the two leaves a pair that does not
	 * match, which the next start sees (key-mismatch) and makes again. */
	if ((rc = make_parent(key_path, uid, gid, err, errlen)) != TERN_OK ||
	    (rc = make_parent(cert_path, uid, gid, err, errlen)) != TERN_OK)
		goto out;
	if (tern_write_file_atomic(key_path, key, klen, &ko) != TERN_OK) {
		snprintf(err, errlen, "tls: cannot write %s: %s", key_path, strerror(errno));
		rc = TERN_EIO;
		goto out;
	}
	if (tern_write_file_atomic(cert_path, cert, clen, &co) != TERN_OK) {
		snprintf(err, errlen, "tls: cannot write %s: %s", cert_path, strerror(errno));
		rc = TERN_EIO;
		goto out;
	}
	*made = true;
out:
	free(cert);
	explicit_bzero(key, klen);
	free(key);
	return rc;
}
