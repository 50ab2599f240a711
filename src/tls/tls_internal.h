/*
 * tls_internal.h — what the files of src/tls/ share; no other module
 * includes it.
 */
#ifndef TERN_TLS_INTERNAL_H
#define TERN_TLS_INTERNAL_H

#include <openssl/ssl.h>
#include <stddef.h>

/* The settings every context of tern shares, server or client: TLS 1.2 at
 * least, no renegotiation, no compression. 0, or -1 if OpenSSL refused. */
int tls_ctx_common(SSL_CTX *ctx);

/* The first certificate of a PEM text, or NULL (errors left on the queue). */
X509 *tls_pem_x509(const char *pem, size_t len);
/* An unencrypted PEM private key, or NULL (an encrypted one is refused
 * rather than prompted for). */
EVP_PKEY *tls_pem_key(const char *pem, size_t len);

#endif
