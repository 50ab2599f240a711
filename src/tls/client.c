/*
 * client.c — the context for outbound SMTP (deliver/remote.c).
 *
 * Owns: the client-side protocol floor and where trust anchors come from.
 * Never: reads a file except through tern_file_read, or turns verification
 * on or off behind the caller's back (the verify modes of routes are the
 * caller's: none, opportunistic, require, verify, dane).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/files.h"
#include "tls/tls.h"
#include "tls/tls_internal.h"

#define CA_FILE_MAX (16u << 20) /* a bundle of every public CA is about 200 KiB */

/* Adds every certificate of a PEM text to the context's trust store; the
 * number added, or -1. */
static int add_anchors(SSL_CTX *ctx, const char *pem, size_t len)
{
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	int n = 0;
	if (!bio || !store) {
		BIO_free(bio);
		return -1;
	}
	for (;;) {
		X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
		if (!x)
			break;
		int ok = X509_STORE_add_cert(store, x);
		X509_free(x);
		if (ok != 1) {
			n = -1;
			break;
		}
		n++;
	}
	BIO_free(bio);
	unsigned long last = ERR_peek_last_error();
	if (n >= 0 && ERR_GET_LIB(last) == ERR_LIB_PEM &&
	    ERR_GET_REASON(last) == PEM_R_NO_START_LINE)
		ERR_clear_error(); /* the end of the file (or no certificate at all: n == 0) */
	else if (n >= 0 && last)
		n = -1;
	return n;
}

SSL_CTX *tls_client_ctx_new(const char *ca_file, bool verify, char *err, size_t errlen)
{
	char why[256];
	char *pem = NULL;
	size_t len = 0;
	int en = 0;
	ERR_clear_error();
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx || tls_ctx_common(ctx) != 0) {
		snprintf(err, errlen, "tls: cannot create a client context: %s",
		         tls_last_error(0, why, sizeof(why)));
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (!verify) {
		/* Opportunistic (RFC 7435): any certificate beats plaintext. */
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
		return ctx;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (!ca_file) {
		if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
			snprintf(err, errlen, "tls: cannot use the system trust store: %s",
			         tls_last_error(0, why, sizeof(why)));
			SSL_CTX_free(ctx);
			return NULL;
		}
		return ctx;
	}
	if (tern_file_read(ca_file, CA_FILE_MAX, &pem, &len, &en) != TERN_OK) {
		snprintf(err, errlen, "tls: cannot read ca_file %s: %s", ca_file,
		         en == EINVAL ? "not a regular file" : strerror(en));
		SSL_CTX_free(ctx);
		return NULL;
	}
	int n = add_anchors(ctx, pem, len);
	free(pem);
	if (n <= 0) {
		snprintf(err, errlen, "tls: ca_file %s: %s", ca_file,
		         n == 0 ? "no PEM certificate in it" : tls_last_error(0, why, sizeof(why)));
		ERR_clear_error();
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

int tls_client_set_sni(SSL *ssl, const char *host)
{
	unsigned char addr[16];
	char v6[64];
	size_t n = host ? strlen(host) : 0;
	if (n == 0 || n > 253)
		return 0;
	if (inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1)
		return 0;
	if (host[0] == '[' && n - 2 < sizeof(v6) && host[n - 1] == ']') {
		memcpy(v6, host + 1, n - 2);
		v6[n - 2] = '\0';
		if (inet_pton(AF_INET6, v6, addr) == 1)
			return 0;
	}
	return SSL_set_tlsext_host_name(ssl, host) == 1 ? 0 : -1;
}
