/*
 * sigv4.h — AWS Signature Version 4 for the SES v2 compatible API
 * (issue 12 item 3): parsing the Authorization header, the canonical
 * request, the string to sign, the signing key chain and the signature.
 * Pure functions over (pointer, length) with OpenSSL's hashes: no I/O, no
 * key store (the caller finds the secret of the access key id), no clock
 * (the caller passes now).
 */
#ifndef TERN_HTTP_SIGV4_H
#define TERN_HTTP_SIGV4_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SIGV4_SKEW_MAX (15 * 60) /* seconds X-Amz-Date may be off now, as AWS allows */

/* The parts of "AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
 * SignedHeaders=a;b, Signature=HEX". */
struct sigv4_auth {
	char akid[128];
	char date[9]; /* YYYYMMDD */
	char region[64];
	char service[64];
	char signed_headers[1024]; /* lowercase, ';'-separated, sorted as sent */
	char signature[65];        /* 64 lowercase hex */
};

/* Parses an Authorization value. TERN_OK, or TERN_ESYNTAX when it is not a
 * well-formed AWS4-HMAC-SHA256 value (any part missing, too long, a
 * signature not 64 hex digits, a scope not ending in aws4_request). Pure. */
int sigv4_parse_auth(const char *h, size_t n, struct sigv4_auth *out);

/* One request header as received (name in any case). */
struct sigv4_header {
	const char *name;
	const char *value;
};

/*
 * The request's signature, 64 lowercase hex digits into out: method,
 * path (as received, percent-encoded; encoded once more as AWS does for
 * every service but S3), query (raw, may be NULL), the headers named by
 * a->signed_headers (value of each found among hdr[0..n), trimmed, inner
 * runs of spaces collapsed, several joined by ','), amz_date (the
 * X-Amz-Date value), payload_hash (hex SHA-256 of the body, or the
 * x-amz-content-sha256 value), with the scope of a and the secret key.
 * TERN_OK, TERN_ESYNTAX when a signed header is missing, TERN_ENOMEM.
 */
int sigv4_signature(const char *secret, const char *method, const char *path, const char *query,
                    const struct sigv4_header *hdr, size_t n, const struct sigv4_auth *a,
                    const char *amz_date, const char *payload_hash, char out[65]);

/* Hex SHA-256 of (p, n) into out (65 bytes). */
void sigv4_sha256_hex(const void *p, size_t n, char out[65]);

/* Parses an X-Amz-Date value (YYYYMMDD'T'HHMMSS'Z') to unix seconds;
 * false when malformed. Pure. */
bool sigv4_parse_date(const char *s, int64_t *out);

/* Constant-time equality of two 64-hex signatures. */
bool sigv4_equal(const char *a, const char *b);

#endif
