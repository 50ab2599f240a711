/*
 * server.c — the server side of TLS: certificate sets, the choice by SNI,
 * reload without dropping connections, and the words for log lines.
 *
 * Shape: listeners only ever see one SSL_CTX, the "front" (tls_server_ctx),
 * which has no certificate of its own. Its servername callback runs at every
 * ClientHello (with or without SNI), takes the certificate set installed at
 * that moment, picks the certificate for the name and moves the connection to
 * that certificate's SSL_CTX (SSL_set_SSL_CTX, which takes a reference). So
 * a reload is a pointer swap under a mutex: handshakes that start afterwards
 * see the new set, connections already moved keep their context alive.
 * The front's own parameters (protocol floor, options, cipher list, groups)
 * are what every connection negotiates with; SSL_new copies them from it.
 *
 * Owns: struct tls_server (freed with the front's last reference, through
 * its ex_data, so a connection can never outlive what its callback reads),
 * loading PEM chains and keys from core/files.h, the certificate's names.
 * Never: reads a file by itself, logs a network value unquoted, or holds the
 * mutex while doing anything slower than a reference count.
 */
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/files.h"
#include "core/log.h"
#include "tls/tls.h"
#include "tls/tls_internal.h"

#define MAX_NAMES 1000 /* names kept per certificate */
#define NAME_MAX_LEN 253

/* Session IDs and tickets are shared by every context of one server. */
static const unsigned char sid_ctx[] = "tern-smtp";

struct cert_entry {
	SSL_CTX *ctx;
	char *file;   /* cert_file, for logs and tls_server_pick */
	char **names; /* lowercased SAN dNSNames (or the CN when there is none) */
	size_t n_names;
	char not_after[32]; /* "2027-01-31T12:00:00Z", for logs */
	bool expired;       /* when loaded */
};

/* An immutable set of certificates, reference counted: the server holds
 * one, and so does a handshake choosing from it for a moment. */
struct cert_set {
	_Atomic int refs;
	struct cert_entry *v;
	size_t n;
};

struct tls_server {
	SSL_CTX *front;
	pthread_mutex_t lock;
	struct cert_set *cur; /* under lock; never NULL */
};

/* ------------------------------------------------------------- shared */

int tls_ctx_common(SSL_CTX *ctx)
{
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
		return -1;
	/* Renegotiation is a DoS lever and a source of old bugs; nothing in
	 * SMTP needs it. Compression is off in OpenSSL 3 already (CRIME). */
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
	return 0;
}

/* Encrypted keys are refused rather than prompted for on a terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

X509 *tls_pem_x509(const char *pem, size_t len)
{
	if (len > TLS_FILE_MAX)
		return NULL;
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	X509 *x = bio ? PEM_read_bio_X509_AUX(bio, NULL, no_passphrase, NULL) : NULL;
	BIO_free(bio);
	return x;
}

EVP_PKEY *tls_pem_key(const char *pem, size_t len)
{
	if (len > TLS_FILE_MAX)
		return NULL;
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL) : NULL;
	BIO_free(bio);
	return pk;
}

const char *tls_last_error(unsigned long code, char *buf, size_t len)
{
	if (!code)
		code = ERR_get_error();
	const char *r = code ? ERR_reason_error_string(code) : NULL;
	if (r)
		snprintf(buf, len, "%s", r);
	else if (code)
		ERR_error_string_n(code, buf, len);
	else
		snprintf(buf, len, "handshake failed");
	ERR_clear_error();
	return buf;
}

const char *tls_describe(const SSL *ssl, char *buf, size_t len)
{
	const SSL_CIPHER *c = ssl ? SSL_get_current_cipher(ssl) : NULL;
	const char *sni = ssl ? SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) : NULL;
	char q[NAME_MAX_LEN * 4 + 8] = "";
	if (sni)
		log_quote(sni, strlen(sni), q, sizeof(q));
	snprintf(buf, len, "tls=%s cipher=%s%s%s", ssl ? SSL_get_version(ssl) : "?",
	         c ? SSL_CIPHER_get_name(c) : "?", sni ? " sni=" : "", q);
	return buf;
}

/* ----------------------------------------------------------- one cert */

/* A name as the certificate carries it, kept if it looks like a host name
 * (letters, digits, '-', '_', '.', '*'); lowercased. */
static int add_name(struct cert_entry *e, const unsigned char *p, size_t n)
{
	if (n == 0 || n > NAME_MAX_LEN || e->n_names >= MAX_NAMES)
		return TERN_OK;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = p[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.' || c == '*'))
			return TERN_OK;
	}
	char **v = realloc(e->names, (e->n_names + 1) * sizeof(*v));
	if (!v)
		return TERN_ENOMEM;
	e->names = v;
	char *s = tern_strndup((const char *)p, n);
	if (!s)
		return TERN_ENOMEM;
	tern_ascii_lower(s);
	e->names[e->n_names++] = s;
	return TERN_OK;
}

/* RFC 6125 §6.4.4: the subject's CN counts only when there is no dNSName
 * SAN; then the most specific (last) CN. */
static int collect_names(struct cert_entry *e, X509 *x)
{
	int rc = TERN_OK;
	GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	for (int i = 0; gens && rc == TERN_OK && i < sk_GENERAL_NAME_num(gens); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		if (g->type != GEN_DNS)
			continue;
		rc = add_name(e, ASN1_STRING_get0_data(g->d.dNSName),
		              (size_t)ASN1_STRING_length(g->d.dNSName));
	}
	GENERAL_NAMES_free(gens);
	if (rc != TERN_OK || e->n_names > 0)
		return rc;
	const X509_NAME *subj = X509_get_subject_name(x);
	int last = -1;
	for (int i = -1; (i = X509_NAME_get_index_by_NID(subj, NID_commonName, i)) >= 0;)
		last = i;
	if (last < 0)
		return TERN_OK;
	unsigned char *utf8 = NULL;
	int n =
	    ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, last)));
	if (n > 0)
		rc = add_name(e, utf8, (size_t)n);
	OPENSSL_free(utf8);
	return rc;
}

static void entry_free(struct cert_entry *e)
{
	SSL_CTX_free(e->ctx);
	free(e->file);
	for (size_t i = 0; i < e->n_names; i++)
		free(e->names[i]);
	free(e->names);
}

static void log_entry(const struct cert_entry *e, bool is_default)
{
	char names[1024] = "", q[1200], fq[1200];
	size_t o = 0;
	for (size_t i = 0; i < e->n_names && o + 2 < sizeof(names); i++) {
		int k = snprintf(names + o, sizeof(names) - o, "%s%s", i ? "," : "", e->names[i]);
		if (k < 0)
			break;
		o += (size_t)k;
	}
	if (o >= sizeof(names))
		o = sizeof(names) - 1;
	log_msg(e->expired ? LOG_LVL_WARN : LOG_LVL_INFO,
	        "event=tls_certificate file=%s names=%s not_after=%s%s%s",
	        log_quote(e->file, strlen(e->file), fq, sizeof(fq)),
	        log_quote(names, o, q, sizeof(q)), e->not_after, is_default ? " default=yes" : "",
	        e->expired ? " expired=yes" : "");
}

/*
 * One certificate: the chain in cert_file (the first certificate is the
 * server's, the rest its chain, as SSL_CTX_use_certificate_chain_file reads
 * it, here from memory) and the key in key_file, through the file source.
 */
static int entry_load(const struct conf_tls_cert *c, struct cert_entry *e, char *err, size_t errlen)
{
	char *cert = NULL, *key = NULL;
	size_t clen = 0, klen = 0;
	int en = 0, rc = TERN_EINVAL;
	BIO *bio = NULL;
	X509 *x = NULL;
	EVP_PKEY *pk = NULL;
	char why[256];

	memset(e, 0, sizeof(*e));
	if (tern_file_read(c->cert_file, TLS_FILE_MAX, &cert, &clen, &en) != TERN_OK) {
		snprintf(err, errlen, "tls: cannot read cert_file %s: %s", c->cert_file,
		         en == EINVAL ? "not a regular file" : strerror(en));
		goto out;
	}
	if (tern_file_read(c->key_file, TLS_FILE_MAX, &key, &klen, &en) != TERN_OK) {
		snprintf(err, errlen, "tls: cannot read key_file %s: %s", c->key_file,
		         en == EINVAL ? "not a regular file" : strerror(en));
		goto out;
	}
	ERR_clear_error(); /* so that what ssl_fail reports is ours */
	if (!(e->file = tern_strdup(c->cert_file))) {
		rc = TERN_ENOMEM;
		snprintf(err, errlen, "tls: out of memory");
		goto out;
	}
	if (!(e->ctx = SSL_CTX_new(TLS_server_method())) || tls_ctx_common(e->ctx) != 0 ||
	    SSL_CTX_set_session_id_context(e->ctx, sid_ctx, sizeof(sid_ctx) - 1) != 1)
		goto ssl_fail;
	SSL_CTX_set_dh_auto(e->ctx, 1); /* DHE for TLS 1.2 clients without ECDHE */
	if (!(bio = BIO_new_mem_buf(cert, (int)clen)) ||
	    !(x = PEM_read_bio_X509_AUX(bio, NULL, no_passphrase, NULL)) ||
	    SSL_CTX_use_certificate(e->ctx, x) != 1)
		goto ssl_fail;
	for (;;) {
		X509 *ca = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL);
		if (!ca)
			break;
		if (SSL_CTX_add0_chain_cert(e->ctx, ca) != 1) {
			X509_free(ca);
			goto ssl_fail;
		}
	}
	unsigned long last = ERR_peek_last_error();
	if (ERR_GET_LIB(last) != ERR_LIB_PEM || ERR_GET_REASON(last) != PEM_R_NO_START_LINE)
		goto ssl_fail;
	ERR_clear_error(); /* the end of the chain */
	if (!(pk = tls_pem_key(key, klen)) || SSL_CTX_use_PrivateKey(e->ctx, pk) != 1 ||
	    SSL_CTX_check_private_key(e->ctx) != 1)
		goto ssl_fail;
	if ((rc = collect_names(e, x)) != TERN_OK) {
		snprintf(err, errlen, "tls: out of memory");
		goto out;
	}
	struct tm tm;
	tern_strlcpy(e->not_after, "?", sizeof(e->not_after));
	if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1)
		strftime(e->not_after, sizeof(e->not_after), "%Y-%m-%dT%H:%M:%SZ", &tm);
	e->expired = X509_cmp_current_time(X509_get0_notAfter(x)) <= 0;
	rc = TERN_OK;
	goto out;
ssl_fail:
	snprintf(err, errlen, "tls: cannot load %s / %s: %s", c->cert_file, c->key_file,
	         tls_last_error(0, why, sizeof(why)));
	rc = TERN_EINVAL;
out:
	if (rc != TERN_OK)
		entry_free(e);
	BIO_free(bio);
	X509_free(x);
	EVP_PKEY_free(pk);
	if (cert) {
		explicit_bzero(cert, clen);
		free(cert);
	}
	if (key) {
		explicit_bzero(key, klen);
		free(key);
	}
	return rc;
}

/* ---------------------------------------------------------------- sets */

static void set_unref(struct cert_set *s)
{
	if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
		return;
	for (size_t i = 0; i < s->n; i++)
		entry_free(&s->v[i]);
	free(s->v);
	free(s);
}

static int set_build(const struct conf_tls_server *t, struct cert_set **out, char *err,
                     size_t errlen)
{
	*out = NULL;
	if (!t || t->n_certs == 0) {
		snprintf(err, errlen, "tls: no certificate is configured");
		return TERN_EINVAL;
	}
	struct cert_set *s = calloc(1, sizeof(*s));
	if (s)
		s->v = calloc(t->n_certs, sizeof(*s->v));
	if (!s || !s->v) {
		free(s);
		snprintf(err, errlen, "tls: out of memory");
		return TERN_ENOMEM;
	}
	atomic_init(&s->refs, 1);
	for (size_t i = 0; i < t->n_certs; i++) {
		int rc = entry_load(&t->certs[i], &s->v[i], err, errlen);
		if (rc != TERN_OK) {
			set_unref(s);
			return rc;
		}
		s->n++;
	}
	*out = s;
	return TERN_OK;
}

/* The first certificate naming host exactly, else the first whose wildcard
 * covers it, else the default (0). *matched tells which case it was. */
static size_t set_pick(const struct cert_set *s, const char *host, bool *matched)
{
	*matched = false;
	if (!host || !*host)
		return 0;
	size_t hlen = strlen(host);
	size_t wild = s->n;
	for (size_t i = 0; i < s->n; i++) {
		for (size_t j = 0; j < s->v[i].n_names; j++) {
			const char *p = s->v[i].names[j];
			if (!tls_name_match(p, strlen(p), host, hlen))
				continue;
			if (p[0] != '*') {
				*matched = true;
				return i;
			}
			if (wild == s->n)
				wild = i;
		}
	}
	if (wild < s->n) {
		*matched = true;
		return wild;
	}
	return 0;
}

static struct cert_set *current_set(struct tls_server *ts)
{
	pthread_mutex_lock(&ts->lock);
	struct cert_set *s = ts->cur;
	atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
	pthread_mutex_unlock(&ts->lock);
	return s;
}

/* ------------------------------------------------------------- server */

static int front_idx = -1;
static pthread_once_t front_once = PTHREAD_ONCE_INIT;

/* The front's last reference is gone (no listener, no connection uses it):
 * the server goes with it. */
static void front_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                          void *argp)
{
	struct tls_server *ts = ptr;
	if (!ts)
		return;
	set_unref(ts->cur);
	pthread_mutex_destroy(&ts->lock);
	free(ts);
}

static void front_index_init(void)
{
	front_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, front_ex_free);
}

/*
 * Every ClientHello (and its retry after a HelloRetryRequest) comes here,
 * with or without SNI: the connection moves to the certificate's context.
 * Only the front has this callback, so after the move OpenSSL still finds
 * it through the session context.
 */
static int on_servername(SSL *ssl, int *alert, void *arg)
{
	struct tls_server *ts = arg;
	struct cert_set *s = current_set(ts);
	bool matched;
	size_t i = set_pick(s, SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name), &matched);
	SSL_CTX *to = SSL_set_SSL_CTX(ssl, s->v[i].ctx);
	set_unref(s); /* the connection holds its own reference to the context now */
	if (!to) {
		*alert = SSL_AD_INTERNAL_ERROR;
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	}
	/* A name no certificate carries gets the default, without an
	 * acknowledgement; mail clients often ask for the MX name. */
	return matched ? SSL_TLSEXT_ERR_OK : SSL_TLSEXT_ERR_NOACK;
}

struct tls_server *tls_server_new(const struct conf_tls_server *t, char *err, size_t errlen)
{
	char why[256];
	pthread_once(&front_once, front_index_init);
	if (front_idx < 0) {
		snprintf(err, errlen, "tls: out of memory");
		return NULL;
	}
	struct cert_set *set;
	if (set_build(t, &set, err, errlen) != TERN_OK)
		return NULL;
	struct tls_server *ts = calloc(1, sizeof(*ts));
	SSL_CTX *front = SSL_CTX_new(TLS_server_method());
	if (!ts || !front || tls_ctx_common(front) != 0 ||
	    SSL_CTX_set_session_id_context(front, sid_ctx, sizeof(sid_ctx) - 1) != 1) {
		snprintf(err, errlen, "tls: cannot create a context: %s",
		         tls_last_error(0, why, sizeof(why)));
		free(ts);
		SSL_CTX_free(front);
		set_unref(set);
		return NULL;
	}
	pthread_mutex_init(&ts->lock, NULL);
	ts->cur = set;
	ts->front = front;
	/* The server's choice among the client's TLS 1.2 suites: OpenSSL's
	 * default list puts forward secrecy and AEAD first. */
	SSL_CTX_set_options(front, SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_dh_auto(front, 1);
	if (SSL_CTX_set_ex_data(front, front_idx, ts) != 1) {
		snprintf(err, errlen, "tls: out of memory");
		SSL_CTX_free(front);
		set_unref(set);
		pthread_mutex_destroy(&ts->lock);
		free(ts);
		return NULL;
	}
	/* From here the front owns ts (front_ex_free). */
	SSL_CTX_set_tlsext_servername_callback(front, on_servername);
	SSL_CTX_set_tlsext_servername_arg(front, ts);
	return ts;
}

SSL_CTX *tls_server_ctx(struct tls_server *ts)
{
	return ts ? ts->front : NULL;
}

int tls_server_reload(struct tls_server *ts, const struct conf_tls_server *t, char *err,
                      size_t errlen)
{
	struct cert_set *set;
	int rc = set_build(t, &set, err, errlen);
	if (rc != TERN_OK)
		return rc;
	pthread_mutex_lock(&ts->lock);
	struct cert_set *old = ts->cur;
	ts->cur = set;
	pthread_mutex_unlock(&ts->lock);
	set_unref(old);
	return TERN_OK;
}

void tls_server_log(struct tls_server *ts)
{
	struct cert_set *s = current_set(ts);
	for (size_t i = 0; i < s->n; i++)
		log_entry(&s->v[i], i == 0);
	set_unref(s);
}

size_t tls_server_count(struct tls_server *ts)
{
	struct cert_set *s = current_set(ts);
	size_t n = s->n;
	set_unref(s);
	return n;
}

size_t tls_server_pick(struct tls_server *ts, const char *name, char *file, size_t filelen)
{
	struct cert_set *s = current_set(ts);
	bool matched;
	size_t i = set_pick(s, name, &matched);
	if (file && filelen)
		tern_strlcpy(file, s->v[i].file, filelen);
	set_unref(s);
	return i;
}

void tls_server_free(struct tls_server *ts)
{
	if (ts)
		SSL_CTX_free(ts->front); /* ts goes with the front's last reference */
}
