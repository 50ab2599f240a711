/*
 * tlspolicy.c — the outbound TLS level of a next-hop host and the OpenSSL
 * set-up and verdict of one connection (see tlspolicy.h).
 *
 * Owns: level arithmetic, TLSA usability, the reference identity and DANE
 * records of an SSL, the words of a verification outcome.
 * Never: matches a certificate by hand (OpenSSL's X509 name checks and DANE
 * code do), touches the network, or lowers what the route asked for.
 */
#include "deliver/tlspolicy.h"

#include <arpa/inet.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/err.h"

enum tlsp_dane tlsp_dane_of(const struct dns_result *r)
{
	if (!r)
		return TLSP_DANE_NONE;
	if (r->bogus)
		return TLSP_DANE_FAILED;
	/* Only looked up under a secure MX: an unanswered TLSA query may be an
	 * attacker hiding the records (RFC 7672 §2.1.1), so the host waits. */
	if (r->status == DNS_TEMPFAIL || r->status == DNS_ERROR)
		return TLSP_DANE_FAILED;
	if (!r->secure || r->status != DNS_OK || r->n == 0)
		return TLSP_DANE_NONE;
	for (size_t i = 0; i < r->n; i++)
		if (tlsp_tlsa_usable(&r->tlsa[i]))
			return TLSP_DANE_USABLE;
	return TLSP_DANE_UNUSABLE;
}

bool tlsp_tlsa_usable(const struct dns_tlsa *t)
{
	/* PKIX-TA(0) and PKIX-EE(1) need a CA the sender and the receiver
	 * agree on, which SMTP has not got (RFC 7672 §3.1.3). */
	if (t->usage != 2 && t->usage != 3)
		return false;
	if (t->selector > 1 || !t->data || t->len == 0)
		return false;
	switch (t->mtype) {
	case 0:
		return true;
	case 1:
		return t->len == 32;
	case 2:
		return t->len == 64;
	default:
		return false;
	}
}

enum conf_tls tlsp_level(enum conf_tls base, bool has_auth, enum tlsp_dane dane)
{
	switch (dane) {
	case TLSP_DANE_USABLE:
		return base == CONF_TLS_NONE ? CONF_TLS_NONE : CONF_TLS_DANE;
	case TLSP_DANE_UNUSABLE:
		if (base == CONF_TLS_NONE)
			return CONF_TLS_NONE;
		if (base == CONF_TLS_DANE)
			return has_auth ? CONF_TLS_VERIFY : CONF_TLS_REQUIRE;
		return base < CONF_TLS_REQUIRE ? CONF_TLS_REQUIRE : base;
	case TLSP_DANE_NONE:
	case TLSP_DANE_FAILED:
		break;
	}
	if (base == CONF_TLS_DANE)
		return has_auth ? CONF_TLS_VERIFY : CONF_TLS_OPPORTUNISTIC;
	return base;
}

/* Below verify the handshake goes on whatever the chain; OpenSSL still
 * records the outcome (SSL_get_verify_result) for the log. */
static int record_only(int ok, X509_STORE_CTX *x)
{
	(void)ok;
	(void)x;
	return 1;
}

/* "[1.2.3.4]", "[IPv6:::1]", "::1" or "1.2.3.4" into a bare address in out;
 * false for a name. */
static bool literal_address(const char *host, char *out, size_t outlen)
{
	unsigned char a[16];
	size_t n = strlen(host);
	const char *p = host;
	if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
		p = host + 1;
		n -= 2;
		if (n > 5 && strncasecmp(p, "IPv6:", 5) == 0) {
			p += 5;
			n -= 5;
		}
	}
	if (n == 0 || n >= outlen)
		return false;
	memcpy(out, p, n);
	out[n] = '\0';
	return inet_pton(AF_INET, out, a) == 1 || inet_pton(AF_INET6, out, a) == 1;
}

int tlsp_prepare(SSL *ssl, enum conf_tls level, const char *host, const struct dns_tlsa *tlsa,
                 size_t n_tlsa, char *err, size_t errlen)
{
	char ip[64];
	if (TERN_BUG_ON(!ssl || !host))
		return -1;
	if (level == CONF_TLS_DANE) {
		/* The reference name of DANE-TA is the TLSA base domain (the
		 * MX host, RFC 7672 §3.2.2); DANE-EE checks no name at all. */
		if (SSL_dane_enable(ssl, host) <= 0) {
			snprintf(err, errlen, "cannot enable DANE for %s", host);
			return -1;
		}
		SSL_dane_set_flags(ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
		int added = 0;
		for (size_t i = 0; i < n_tlsa; i++) {
			const struct dns_tlsa *t = &tlsa[i];
			if (!tlsp_tlsa_usable(t))
				continue;
			if (SSL_dane_tlsa_add(ssl, t->usage, t->selector, t->mtype, t->data,
			                      t->len) > 0)
				added++;
		}
		if (added == 0) {
			snprintf(err, errlen, "no TLSA record of %s could be used", host);
			return -1;
		}
		SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		return 0;
	}
	if (literal_address(host, ip, sizeof(ip))) {
		if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip) != 1) {
			snprintf(err, errlen, "cannot check the certificate against %s", host);
			return -1;
		}
	} else {
		SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		if (SSL_set1_host(ssl, host) != 1) {
			snprintf(err, errlen, "cannot check the certificate against %s", host);
			return -1;
		}
	}
	if (level < CONF_TLS_VERIFY)
		SSL_set_verify(ssl, SSL_VERIFY_PEER, record_only);
	return 0;
}

const char *tlsp_verify_word(SSL *ssl)
{
	if (SSL_get0_dane_authority(ssl, NULL, NULL) >= 0)
		return "dane";
	if (SSL_get0_peer_certificate(ssl) && SSL_get_verify_result(ssl) == X509_V_OK)
		return "verified";
	return "untrusted";
}

bool tlsp_channel_ok(SSL *ssl, enum conf_tls level)
{
	if (level == CONF_TLS_DANE)
		return SSL_get0_dane_authority(ssl, NULL, NULL) >= 0 &&
		       SSL_get_verify_result(ssl) == X509_V_OK;
	if (level == CONF_TLS_VERIFY)
		return SSL_get0_peer_certificate(ssl) && SSL_get_verify_result(ssl) == X509_V_OK;
	return true;
}

const char *tlsp_failure_words(SSL *ssl, const char *host, uint16_t port, const char *tls_err,
                               char *out, size_t outlen)
{
	long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
	switch (v) {
	case X509_V_OK:
		snprintf(out, outlen, "%s", tls_err && tls_err[0] ? tls_err : "handshake failed");
		break;
	case X509_V_ERR_HOSTNAME_MISMATCH:
	case X509_V_ERR_IP_ADDRESS_MISMATCH:
		snprintf(out, outlen, "certificate name mismatch: expected \"%s\"", host);
		break;
	case X509_V_ERR_DANE_NO_MATCH:
		snprintf(out, outlen, "no certificate matches the TLSA records of _%u._tcp.%s",
		         (unsigned)port, host);
		break;
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
		snprintf(out, outlen, "self-signed certificate, not trusted");
		break;
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
		snprintf(out, outlen, "certificate issuer not trusted (%s)",
		         X509_verify_cert_error_string(v));
		break;
	case X509_V_ERR_CERT_HAS_EXPIRED:
		snprintf(out, outlen, "certificate has expired");
		break;
	default:
		snprintf(out, outlen, "certificate not accepted: %s",
		         X509_verify_cert_error_string(v));
		break;
	}
	return out;
}
