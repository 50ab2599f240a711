/*
 * tlspolicy.h — what outbound TLS a connection to one next-hop host needs,
 * and how an OpenSSL connection is set up and judged for it (remote.c).
 *
 * Owns: the effective level of a host (the route's tls, raised to DANE by
 * DNSSEC-secure TLSA records, Postfix's smtp_tls_security_level as the
 * model), which TLSA records are usable (RFC 7672 §3.1.3: DANE-TA(2) and
 * DANE-EE(3) only), the per-connection OpenSSL set-up (reference name, DANE
 * records through OpenSSL's own DANE code), the tls_verify= word and the
 * words of a failed verification.
 * Never: does network I/O, matches certificates itself (OpenSSL does), or
 * lowers a level (a failure here makes the caller defer, never go plaintext).
 */
#ifndef TERN_DELIVER_TLSPOLICY_H
#define TERN_DELIVER_TLSPOLICY_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/conf.h"
#include "dns/dns.h"

/* What the TLSA lookup of a host gave. */
enum tlsp_dane {
	TLSP_DANE_NONE = 0, /* not looked up, insecure (unsigned) answer, or no records */
	TLSP_DANE_USABLE,   /* DNSSEC-secure, at least one usable record: authenticate */
	TLSP_DANE_UNUSABLE, /* secure, but no usable record: encrypt, no authentication
	                       (RFC 7672 §2.2) */
	TLSP_DANE_FAILED,   /* bogus, or the lookup failed under a secure MX: the host is
	                       unusable now (RFC 7672 §2.1.1); defer */
};

/*
 * The DANE state of a TLSA answer (r may be NULL: no lookup). Only a secure
 * answer counts; a bogus one, or a temporary failure, is TLSP_DANE_FAILED.
 */
enum tlsp_dane tlsp_dane_of(const struct dns_result *r);

/* Is this TLSA record one tern can use (usage 2 or 3, selector 0 or 1,
 * matching type 0, 1 or 2, data present and of the right length)? */
bool tlsp_tlsa_usable(const struct dns_tlsa *t);

/*
 * The level a connection to a host must meet: base is the route's tls (MX
 * delivery: opportunistic); DANE-usable records make it CONF_TLS_DANE,
 * unusable ones at least CONF_TLS_REQUIRE. A "dane" route without usable
 * records falls back to opportunistic, or to verify when credentials will be
 * sent (has_auth): a password never goes over an unauthenticated channel.
 */
enum conf_tls tlsp_level(enum conf_tls base, bool has_auth, enum tlsp_dane dane);

/* Must the connection be encrypted (no plaintext, no fallback)? */
static inline bool tlsp_required(enum conf_tls level)
{
	return level >= CONF_TLS_REQUIRE;
}

/*
 * Sets ssl up for a connection at level to host (a DNS name, an IP address,
 * or a domain literal "[1.2.3.4]" / "[IPv6:...]"): the reference identity
 * (host name with no partial wildcards, or the IP address), DANE (ssl's
 * context must have had SSL_CTX_dane_enable) with the usable records of
 * tlsa at CONF_TLS_DANE, and below CONF_TLS_VERIFY a verify callback that
 * records the outcome but lets the handshake go on. 0, or -1 (err set).
 */
int tlsp_prepare(SSL *ssl, enum conf_tls level, const char *host, const struct dns_tlsa *tlsa,
                 size_t n_tlsa, char *err, size_t errlen);

/* After a completed handshake: "dane" (a TLSA record matched), "verified"
 * (chain and name good) or "untrusted". */
const char *tlsp_verify_word(SSL *ssl);

/* After a completed handshake at level: does the channel meet it? (At
 * verify and dane, OpenSSL has already refused a bad peer; this is the
 * second lock.) */
bool tlsp_channel_ok(SSL *ssl, enum conf_tls level);

/*
 * Words for why a handshake at host failed: a failed verification
 * ("certificate name mismatch: expected \"mx.example.net\"", "self-signed
 * certificate", "no certificate matches the TLSA records of
 * _25._tcp.mx.example.net", ...), else tls_err (OpenSSL's words), else
 * "handshake failed". ssl may be NULL. Returns out.
 */
const char *tlsp_failure_words(SSL *ssl, const char *host, uint16_t port, const char *tls_err,
                               char *out, size_t outlen);

#endif
