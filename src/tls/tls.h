/*
 * tls.h — every OpenSSL context tern uses: the server side (certificates chosen
 * by SNI, reloaded on SIGHUP), the client side (outbound delivery), and the
 * self-signed certificate of the embedded default.
 *
 * Owns: protocol floor (TLS 1.2; 1.0 and 1.1 are refused) and option defaults,
 * loading PEM certificates and keys from the file source (core/files.h, so the
 * privileged parent's copies are used), the certificate's own names (SAN
 * dNSName, CN only without one) and RFC 6125 name matching, the SNI switch,
 * the `tls=... cipher=...` words of every log line about a TLS connection.
 * Never: opens a file itself (everything goes through tern_file_read), prompts
 * for a passphrase, blocks on the network, or frees a context a connection
 * still uses (SSL_CTX reference counting keeps it alive).
 * SECURITY: parses certificates from the config only; peer input reaches it
 * only through OpenSSL (the SNI name, already checked by OpenSSL for length
 * and NUL bytes, then matched here as bytes).
 */
#ifndef TERN_TLS_TLS_H
#define TERN_TLS_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct conf_tls_server;

/* The largest PEM certificate chain or key tern reads. */
#define TLS_FILE_MAX (1u << 20)

/* ------------------------------------------------------------ server side */

/*
 * The server side: one stable SSL_CTX (tls_server_ctx) that every listener
 * hands to SSL_new, and behind it the current certificate set, one SSL_CTX per
 * configured certificate. At each handshake the SNI name the client sent
 * picks a certificate of the set installed at that moment (the first that
 * names it exactly, else the first whose wildcard covers it, else the first
 * certificate) and the connection switches to its context. A reload installs
 * a new set; handshakes already under way and established sessions keep the
 * context they switched to (it is reference counted), so no connection drops.
 *
 * Protocol parameters (TLS 1.2 minimum, no renegotiation, no compression,
 * server cipher preference, ephemeral DH with built-in groups) are OpenSSL 3's
 * defaults otherwise: its cipher list and groups (X25519, P-256, ...).
 *
 * Thread-safe: handshakes run on any worker while the main thread reloads.
 */
struct tls_server;

/*
 * Loads every certificate of t (t->n_certs > 0) and returns the server, or
 * NULL with a message in err ("tls: cannot load CERT / KEY: why"). Logs
 * nothing (tern check-config loads certificates the same way to test them).
 */
struct tls_server *tls_server_new(const struct conf_tls_server *t, char *err, size_t errlen);

/* Logs one event=tls_certificate line per certificate of the current set:
 * file, names, expiry (a warning if it has expired). */
void tls_server_log(struct tls_server *ts);

/* The context listeners use (STARTTLS and implicit TLS); it lives as long as
 * ts and every connection made with it. Take a reference to keep it longer. */
SSL_CTX *tls_server_ctx(struct tls_server *ts);

/*
 * Builds a new certificate set from t and installs it for the handshakes that
 * start from now on. On failure (a file missing, a key not matching, no
 * certificate at all) the set in use stays and err says why. TERN_OK,
 * TERN_EINVAL (err set) or TERN_ENOMEM.
 */
int tls_server_reload(struct tls_server *ts, const struct conf_tls_server *t, char *err,
                      size_t errlen);

/* Certificates in the current set. */
size_t tls_server_count(struct tls_server *ts);

/*
 * Which certificate of the current set a client asking for name (NUL-ended,
 * or NULL for no SNI) gets: its index (0, the default, when none names it).
 * If file is not NULL, the certificate's cert_file is copied there.
 */
size_t tls_server_pick(struct tls_server *ts, const char *name, char *file, size_t filelen);

/* Drops the caller's reference; the contexts go once the last connection
 * made with them is freed. NULL is fine. */
void tls_server_free(struct tls_server *ts);

/* ------------------------------------------------------------ client side */

/*
 * A context for outbound SMTP: TLS 1.2 minimum. With verify, the server's
 * certificate must chain to a trust anchor: those in ca_file (PEM, read with
 * tern_file_read) or, when ca_file is NULL, the system store. Without verify,
 * any certificate is accepted (opportunistic TLS, RFC 7435). The host name
 * check is per connection (SSL_set1_host). NULL with err set on failure.
 */
SSL_CTX *tls_client_ctx_new(const char *ca_file, bool verify, char *err, size_t errlen);

/*
 * Names the server for SNI (RFC 6066 §3) when host is a DNS name; an IP
 * address (with or without brackets) or an empty host sends none, as the RFC
 * forbids literal addresses there. 0, or -1 if OpenSSL refused the name.
 */
int tls_client_set_sni(SSL *ssl, const char *host);

/* ------------------------------------------------------------ log words */

/*
 * "tls=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384", plus " sni=NAME" (log_quote'd)
 * when a server name was sent, for the log line of an established TLS
 * connection, inbound or outbound. Returns buf.
 */
const char *tls_describe(const SSL *ssl, char *buf, size_t len);

/* The reason of the last OpenSSL error on this thread ("handshake failed" if
 * none), for a tls_failed line; clears the error queue. Returns buf. */
const char *tls_last_error(unsigned long code, char *buf, size_t len);

/* ------------------------------------------------------------ names */

/*
 * RFC 6125 §6.4: does the certificate name pattern (plen bytes) cover host
 * (hlen bytes)? Case-insensitive, one trailing dot ignored on either side.
 * A wildcard is only a whole left-most label ("*.example.com") and stands
 * for exactly one non-empty label (a.example.com, not example.com nor
 * a.b.example.com), with at least two labels after it ("*.com" matches
 * nothing). Any other '*' never matches; host itself may hold no '*'.
 */
bool tls_name_match(const char *pattern, size_t plen, const char *host, size_t hlen);

/* ------------------------------------------------------------ self-signed */

/*
 * A self-signed certificate for hostname: an EC P-256 key, valid from an
 * hour ago for days days, subject CN=hostname, SAN DNS:hostname,
 * DNS:localhost, IP:127.0.0.1, IP:::1, extended key usage serverAuth. PEM
 * texts in *cert and *key (NUL-terminated; the caller frees *key after
 * explicit_bzero). not_after_shift moves the end of validity by that many
 * seconds (tests make expired certificates with it). TERN_OK, TERN_EINVAL
 * (err set) or TERN_ENOMEM.
 */
int tls_self_signed_make(const char *hostname, unsigned days, long not_after_shift, char **cert,
                         size_t *cert_len, char **key, size_t *key_len, char *err, size_t errlen);

/*
 * The embedded default's certificate (tls.self_signed): keeps the pair at
 * cert_path / key_path when it is readable, names hostname, matches its key
 * and is valid for more than a day; otherwise makes a new one
 * (tls_self_signed_make, 365 days), the key 0600, each file written
 * atomically (core/fsutil.h), the directory created 0700 if missing. Files
 * (kept or new) and a new directory are given to uid/gid unless they are -1
 * (the privileged parent writes them for the unprivileged account; lchown,
 * so a link planted there is not followed). Reads the file system
 * itself (tern_file_read_fs), never the bundle. *made tells whether it wrote,
 * and why (missing, expired, ...) is copied into why. TERN_OK, or TERN_EIO /
 * TERN_EINVAL / TERN_ENOMEM with err set.
 */
int tls_self_signed_ensure(const char *cert_path, const char *key_path, const char *hostname,
                           uid_t uid, gid_t gid, bool *made, char *why, size_t whylen, char *err,
                           size_t errlen);

#endif
