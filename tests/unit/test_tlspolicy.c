/*
 * test_tlspolicy.c — src/deliver/tlspolicy.c: the level a next-hop host must
 * meet (route level, DNSSEC status of its TLSA answer, credentials), which
 * TLSA records are usable, and real in-memory handshakes through OpenSSL's
 * DANE and name checks as tlsp_prepare sets them up: DANE-EE match and
 * mismatch, verify with the right and the wrong name, opportunistic with an
 * untrusted certificate, and the words of each failure.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "core/conf.h"
#include "deliver/tlspolicy.h"
#include "dns/dns.h"
#include "tls/tls.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* ---- levels --------------------------------------------------------------- */

static void test_levels(void **state)
{
	static const struct {
		enum conf_tls base;
		bool auth;
		enum tlsp_dane dane;
		enum conf_tls want;
	} cases[] = {
	    /* MX delivery: opportunistic, raised by DANE */
	    {CONF_TLS_OPPORTUNISTIC, false, TLSP_DANE_NONE, CONF_TLS_OPPORTUNISTIC},
	    {CONF_TLS_OPPORTUNISTIC, false, TLSP_DANE_USABLE, CONF_TLS_DANE},
	    {CONF_TLS_OPPORTUNISTIC, false, TLSP_DANE_UNUSABLE, CONF_TLS_REQUIRE},
	    /* a route's own level is never lowered */
	    {CONF_TLS_VERIFY, false, TLSP_DANE_NONE, CONF_TLS_VERIFY},
	    {CONF_TLS_VERIFY, false, TLSP_DANE_UNUSABLE, CONF_TLS_VERIFY},
	    {CONF_TLS_REQUIRE, false, TLSP_DANE_NONE, CONF_TLS_REQUIRE},
	    {CONF_TLS_NONE, false, TLSP_DANE_USABLE, CONF_TLS_NONE},
	    /* "dane" without usable records: opportunistic, verify with credentials */
	    {CONF_TLS_DANE, false, TLSP_DANE_NONE, CONF_TLS_OPPORTUNISTIC},
	    {CONF_TLS_DANE, true, TLSP_DANE_NONE, CONF_TLS_VERIFY},
	    {CONF_TLS_DANE, false, TLSP_DANE_UNUSABLE, CONF_TLS_REQUIRE},
	    {CONF_TLS_DANE, true, TLSP_DANE_UNUSABLE, CONF_TLS_VERIFY},
	    {CONF_TLS_DANE, true, TLSP_DANE_USABLE, CONF_TLS_DANE},
	};
	for (size_t i = 0; i < N(cases); i++) {
		enum conf_tls got = tlsp_level(cases[i].base, cases[i].auth, cases[i].dane);
		if (got != cases[i].want)
			fail_msg("case %zu: %s, want %s", i, conf_tls_name(got),
			         conf_tls_name(cases[i].want));
	}
	assert_false(tlsp_required(CONF_TLS_OPPORTUNISTIC));
	assert_true(tlsp_required(CONF_TLS_REQUIRE));
	assert_true(tlsp_required(CONF_TLS_DANE));
}

/* ---- TLSA usability and DNSSEC status -------------------------------------- */

static uint8_t h32[32], h64[64];

static void test_tlsa_usable(void **state)
{
	static const struct {
		uint8_t u, s, m;
		size_t len;
		bool usable;
	} cases[] = {
	    {3, 1, 1, 32, true},  {2, 0, 1, 32, true},  {3, 0, 2, 64, true},
	    {3, 1, 0, 91, true},  {0, 0, 1, 32, false}, /* PKIX-TA: RFC 7672 §3.1.3 */
	    {1, 1, 1, 32, false},                       /* PKIX-EE */
	    {4, 1, 1, 32, false}, {3, 2, 1, 32, false}, {3, 1, 3, 32, false},
	    {3, 1, 1, 31, false}, /* SHA-256 of the wrong length */
	    {3, 1, 2, 32, false}, {3, 1, 0, 0, false},
	};
	for (size_t i = 0; i < N(cases); i++) {
		struct dns_tlsa t = {cases[i].u, cases[i].s, cases[i].m,
		                     cases[i].len > 32 ? h64 : h32, cases[i].len};
		if (cases[i].len == 91) {
			static uint8_t cert[91];
			t.data = cert;
		}
		if (tlsp_tlsa_usable(&t) != cases[i].usable)
			fail_msg("case %zu: %d %d %d len %zu", i, t.usage, t.selector, t.mtype,
			         t.len);
	}
}

static void test_dane_of_dnssec_status(void **state)
{
	struct dns_tlsa ee = {3, 1, 1, h32, 32}, pkix = {1, 1, 1, h32, 32};
	struct dns_result r = {.status = DNS_OK, .secure = true, .n = 1, .tlsa = &ee};
	assert_int_equal(tlsp_dane_of(NULL), TLSP_DANE_NONE);
	assert_int_equal(tlsp_dane_of(&r), TLSP_DANE_USABLE);
	r.tlsa = &pkix;
	assert_int_equal(tlsp_dane_of(&r), TLSP_DANE_UNUSABLE);
	/* insecure: as if there were none */
	r.tlsa = &ee;
	r.secure = false;
	assert_int_equal(tlsp_dane_of(&r), TLSP_DANE_NONE);
	/* bogus, or no answer: the host must wait */
	r.status = DNS_TEMPFAIL;
	r.bogus = true;
	assert_int_equal(tlsp_dane_of(&r), TLSP_DANE_FAILED);
	r.bogus = false;
	assert_int_equal(tlsp_dane_of(&r), TLSP_DANE_FAILED);
	/* a secure denial: no DANE */
	struct dns_result nodata = {.status = DNS_NODATA, .secure = true};
	assert_int_equal(tlsp_dane_of(&nodata), TLSP_DANE_NONE);
	struct dns_result nx = {.status = DNS_NXDOMAIN, .secure = true};
	assert_int_equal(tlsp_dane_of(&nx), TLSP_DANE_NONE);
}

/* ---- handshakes ------------------------------------------------------------ */

struct pair {
	SSL_CTX *sctx, *cctx;
	X509 *cert;
	uint8_t spki_sha256[32];
};

/* A server with a self-signed certificate for mx.example.test; a client context
 * as remote.c makes it (verifying, DANE enabled) trusting that certificate
 * when trust is set, else nothing. */
static void pair_make(struct pair *p, bool trust)
{
	char *pem = NULL, *kpem = NULL, err[256];
	size_t plen, klen;
	assert_int_equal(tls_self_signed_make("mx.example.test", 2, 0, &pem, &plen, &kpem, &klen,
	                                      err, sizeof(err)),
	                 0);
	BIO *b = BIO_new_mem_buf(pem, (int)plen);
	p->cert = PEM_read_bio_X509(b, NULL, NULL, NULL);
	BIO_free(b);
	b = BIO_new_mem_buf(kpem, (int)klen);
	EVP_PKEY *key = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	BIO_free(b);
	assert_non_null(p->cert);
	assert_non_null(key);
	p->sctx = SSL_CTX_new(TLS_server_method());
	assert_int_equal(SSL_CTX_use_certificate(p->sctx, p->cert), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey(p->sctx, key), 1);
	EVP_PKEY_free(key);
	p->cctx = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_verify(p->cctx, SSL_VERIFY_PEER, NULL);
	assert_true(SSL_CTX_dane_enable(p->cctx) > 0);
	if (trust)
		assert_int_equal(X509_STORE_add_cert(SSL_CTX_get_cert_store(p->cctx), p->cert), 1);
	unsigned char *der = NULL;
	int n = i2d_PUBKEY(X509_get0_pubkey(p->cert), &der);
	assert_true(n > 0);
	unsigned int mdlen = 0;
	assert_int_equal(EVP_Digest(der, (size_t)n, p->spki_sha256, &mdlen, EVP_sha256(), NULL), 1);
	OPENSSL_free(der);
	explicit_bzero(kpem, klen);
	free(kpem);
	free(pem);
}

static void pair_free(struct pair *p)
{
	SSL_CTX_free(p->sctx);
	SSL_CTX_free(p->cctx);
	X509_free(p->cert);
}

/* Runs a handshake with the client set up by tlsp_prepare; the client SSL (the
 * caller frees it) and 0 or -1. */
static int run(struct pair *p, enum conf_tls level, const char *host, const struct dns_tlsa *t,
               size_t nt, SSL **client)
{
	char err[256];
	BIO *bc, *bs;
	assert_int_equal(BIO_new_bio_pair(&bc, 0, &bs, 0), 1);
	SSL *c = SSL_new(p->cctx), *s = SSL_new(p->sctx);
	SSL_set_bio(c, bc, bc);
	SSL_set_bio(s, bs, bs);
	SSL_set_connect_state(c);
	SSL_set_accept_state(s);
	if (tlsp_prepare(c, level, host, t, nt, err, sizeof(err)) != 0)
		fail_msg("tlsp_prepare: %s", err);
	int result = -1;
	for (int i = 0; i < 50; i++) {
		int rc = SSL_do_handshake(c), rs = SSL_do_handshake(s);
		if (rc == 1 && rs == 1) {
			result = 0;
			break;
		}
		int ec = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(c, rc);
		int es = rs == 1 ? SSL_ERROR_NONE : SSL_get_error(s, rs);
		if ((ec != SSL_ERROR_NONE && ec != SSL_ERROR_WANT_READ &&
		     ec != SSL_ERROR_WANT_WRITE) ||
		    (es != SSL_ERROR_NONE && es != SSL_ERROR_WANT_READ &&
		     es != SSL_ERROR_WANT_WRITE))
			break;
	}
	ERR_clear_error();
	SSL_free(s);
	*client = c;
	return result;
}

static void test_dane_ee(void **state)
{
	struct pair p;
	char words[300];
	SSL *c;
	pair_make(&p, false); /* no CA trusts it: DANE alone authenticates */
	struct dns_tlsa good = {3, 1, 1, p.spki_sha256, 32};
	assert_int_equal(run(&p, CONF_TLS_DANE, "mx.example.test", &good, 1, &c), 0);
	assert_string_equal(tlsp_verify_word(c), "dane");
	assert_true(tlsp_channel_ok(c, CONF_TLS_DANE));
	SSL_free(c);
	/* DANE-EE checks no name (RFC 7672 §3.1.1): another MX name still matches */
	assert_int_equal(run(&p, CONF_TLS_DANE, "other.example.test", &good, 1, &c), 0);
	assert_string_equal(tlsp_verify_word(c), "dane");
	SSL_free(c);
	/* a record of another key: refused, with words that say so */
	uint8_t other[32];
	memcpy(other, p.spki_sha256, 32);
	other[0] ^= 1;
	struct dns_tlsa bad[2] = {{3, 1, 1, other, 32}, {1, 1, 1, p.spki_sha256, 32}};
	assert_int_equal(run(&p, CONF_TLS_DANE, "mx.example.test", bad, 2, &c), -1);
	tlsp_failure_words(c, "mx.example.test", 25, "", words, sizeof(words));
	assert_string_equal(words,
	                    "no certificate matches the TLSA records of _25._tcp.mx.example.test");
	SSL_free(c);
	/* only unusable records: tlsp_prepare refuses to start DANE */
	char err[256];
	SSL *s = SSL_new(p.cctx);
	assert_int_equal(
	    tlsp_prepare(s, CONF_TLS_DANE, "mx.example.test", &bad[1], 1, err, sizeof(err)), -1);
	SSL_free(s);
	pair_free(&p);
}

static void test_verify_names(void **state)
{
	struct pair p;
	char words[300];
	SSL *c;
	pair_make(&p, true);
	assert_int_equal(run(&p, CONF_TLS_VERIFY, "mx.example.test", NULL, 0, &c), 0);
	assert_string_equal(tlsp_verify_word(c), "verified");
	assert_true(tlsp_channel_ok(c, CONF_TLS_VERIFY));
	SSL_free(c);
	/* an IP literal is checked against the IP SANs */
	assert_int_equal(run(&p, CONF_TLS_VERIFY, "[127.0.0.1]", NULL, 0, &c), 0);
	SSL_free(c);
	assert_int_equal(run(&p, CONF_TLS_VERIFY, "mx.example.net", NULL, 0, &c), -1);
	tlsp_failure_words(c, "mx.example.net", 25, "", words, sizeof(words));
	assert_string_equal(words, "certificate name mismatch: expected \"mx.example.net\"");
	SSL_free(c);
	assert_int_equal(run(&p, CONF_TLS_VERIFY, "[127.0.0.2]", NULL, 0, &c), -1);
	SSL_free(c);
	pair_free(&p);

	/* not trusted: self-signed, named as such */
	pair_make(&p, false);
	assert_int_equal(run(&p, CONF_TLS_VERIFY, "mx.example.test", NULL, 0, &c), -1);
	tlsp_failure_words(c, "mx.example.test", 25, "", words, sizeof(words));
	assert_string_equal(words, "self-signed certificate, not trusted");
	SSL_free(c);
	/* opportunistic and require go on, and say what they saw */
	assert_int_equal(run(&p, CONF_TLS_OPPORTUNISTIC, "mx.example.test", NULL, 0, &c), 0);
	assert_string_equal(tlsp_verify_word(c), "untrusted");
	assert_true(tlsp_channel_ok(c, CONF_TLS_REQUIRE));
	assert_false(tlsp_channel_ok(c, CONF_TLS_VERIFY));
	assert_false(tlsp_channel_ok(c, CONF_TLS_DANE));
	SSL_free(c);
	/* no verification failure: OpenSSL's words, else a plain one */
	assert_string_equal(
	    tlsp_failure_words(NULL, "h", 25, "wrong version number", words, sizeof(words)),
	    "wrong version number");
	assert_string_equal(tlsp_failure_words(NULL, "h", 25, "", words, sizeof(words)),
	                    "handshake failed");
	pair_free(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_levels),
	    cmocka_unit_test(test_tlsa_usable),
	    cmocka_unit_test(test_dane_of_dnssec_status),
	    cmocka_unit_test(test_dane_ee),
	    cmocka_unit_test(test_verify_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
