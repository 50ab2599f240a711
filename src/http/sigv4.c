/*
 * sigv4.c — AWS Signature Version 4 (see sigv4.h): the Authorization
 * parser, the canonical request and the signature. Owns nothing beyond
 * one call; must never do I/O, read the clock or look a key up.
 */
#include "http/sigv4.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/buf.h"
#include "core/err.h"

static const char hexd[] = "0123456789abcdef";

static void to_hex(const unsigned char *in, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hexd[in[i] >> 4];
		out[2 * i + 1] = hexd[in[i] & 15];
	}
	out[2 * n] = '\0';
}

void sigv4_sha256_hex(const void *p, size_t n, char out[65])
{
	unsigned char d[SHA256_DIGEST_LENGTH];
	SHA256(p, n, d);
	to_hex(d, sizeof(d), out);
}

bool sigv4_equal(const char *a, const char *b)
{
	if (strlen(a) != 64 || strlen(b) != 64)
		return false;
	return CRYPTO_memcmp(a, b, 64) == 0;
}

/* Copies [p, p+n) to out (cap bytes) if it fits, is not empty and is
 * printable ASCII without blanks (a NUL would cut the field short). */
static bool take(const char *p, size_t n, char *out, size_t cap)
{
	if (n == 0 || n >= cap)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] >= 0x7f)
			return false;
	memcpy(out, p, n);
	out[n] = '\0';
	return true;
}

int sigv4_parse_auth(const char *h, size_t n, struct sigv4_auth *out)
{
	static const char alg[] = "AWS4-HMAC-SHA256";
	memset(out, 0, sizeof(*out));
	if (n <= sizeof(alg) || memcmp(h, alg, sizeof(alg) - 1) != 0 || h[sizeof(alg) - 1] != ' ')
		return TERN_ESYNTAX;
	size_t i = sizeof(alg);
	bool cred = false, sh = false, sig = false;
	while (i < n) {
		while (i < n && (h[i] == ' ' || h[i] == ','))
			i++;
		if (i >= n)
			break;
		size_t s = i;
		while (i < n && h[i] != ',')
			i++;
		size_t e = i;
		while (e > s && h[e - 1] == ' ')
			e--;
		const char *eq = memchr(h + s, '=', e - s);
		if (!eq)
			return TERN_ESYNTAX;
		size_t kl = (size_t)(eq - (h + s));
		const char *v = eq + 1;
		size_t vl = (size_t)(h + e - v);
		if (kl == 10 && memcmp(h + s, "Credential", 10) == 0 && !cred) {
			/* AKID/DATE/REGION/SERVICE/aws4_request */
			const char *parts[5];
			size_t lens[5], np = 0;
			const char *q = v, *end = v + vl;
			while (np < 5) {
				const char *sl = memchr(q, '/', (size_t)(end - q));
				const char *pe = sl ? sl : end;
				parts[np] = q;
				lens[np] = (size_t)(pe - q);
				np++;
				if (!sl)
					break;
				q = sl + 1;
			}
			if (np != 5 || q + lens[4] != end || lens[1] != 8 ||
			    !take(parts[0], lens[0], out->akid, sizeof(out->akid)) ||
			    !take(parts[1], lens[1], out->date, sizeof(out->date)) ||
			    !take(parts[2], lens[2], out->region, sizeof(out->region)) ||
			    !take(parts[3], lens[3], out->service, sizeof(out->service)) ||
			    lens[4] != 12 || memcmp(parts[4], "aws4_request", 12) != 0)
				return TERN_ESYNTAX;
			for (size_t k = 0; k < 8; k++)
				if (out->date[k] < '0' || out->date[k] > '9')
					return TERN_ESYNTAX;
			cred = true;
		} else if (kl == 13 && memcmp(h + s, "SignedHeaders", 13) == 0 && !sh) {
			if (!take(v, vl, out->signed_headers, sizeof(out->signed_headers)))
				return TERN_ESYNTAX;
			for (char *c = out->signed_headers; *c; c++)
				if (*c == ' ' || *c == '\t')
					return TERN_ESYNTAX;
			sh = true;
		} else if (kl == 9 && memcmp(h + s, "Signature", 9) == 0 && !sig) {
			if (vl != 64 || !take(v, vl, out->signature, sizeof(out->signature)))
				return TERN_ESYNTAX;
			for (size_t k = 0; k < 64; k++)
				if (!strchr(hexd, out->signature[k]) || out->signature[k] == '\0')
					return TERN_ESYNTAX;
			sig = true;
		} else {
			return TERN_ESYNTAX;
		}
	}
	return cred && sh && sig ? TERN_OK : TERN_ESYNTAX;
}

bool sigv4_parse_date(const char *s, int64_t *out)
{
	if (strlen(s) != 16 || s[8] != 'T' || s[15] != 'Z')
		return false;
	int v[6] = {0};
	static const int pos[6] = {0, 4, 6, 9, 11, 13}, len[6] = {4, 2, 2, 2, 2, 2};
	for (int k = 0; k < 6; k++)
		for (int j = 0; j < len[k]; j++) {
			char c = s[pos[k] + j];
			if (c < '0' || c > '9')
				return false;
			v[k] = v[k] * 10 + (c - '0');
		}
	if (v[1] < 1 || v[1] > 12 || v[2] < 1 || v[2] > 31 || v[3] > 23 || v[4] > 59 || v[5] > 60)
		return false;
	struct tm tm = {.tm_year = v[0] - 1900,
	                .tm_mon = v[1] - 1,
	                .tm_mday = v[2],
	                .tm_hour = v[3],
	                .tm_min = v[4],
	                .tm_sec = v[5]};
	*out = (int64_t)timegm(&tm);
	return true;
}

/* RFC 3986 unreserved and '/' stay; everything else is %XX (upper hex). */
static int uri_encode(struct tbuf *b, const char *s, size_t n, bool keep_slash)
{
	static const char up[] = "0123456789ABCDEF";
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		int rc;
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
			rc = tbuf_append(b, &s[i], 1);
		} else {
			char e[3] = {'%', up[c >> 4], up[c & 15]};
			rc = tbuf_append(b, e, 3);
		}
		if (rc != TERN_OK)
			return rc;
	}
	return TERN_OK;
}

static int cmp_str(const void *x, const void *y)
{
	return strcmp(*(char *const *)x, *(char *const *)y);
}

/* The canonical query: "k=v" pairs as sent (botocore sends them encoded),
 * a missing '=' added, sorted by byte. */
static int canon_query(struct tbuf *b, const char *q)
{
	if (!q || !*q)
		return TERN_OK;
	char *dup = strdup(q);
	size_t cap = 1;
	for (const char *p = q; *p; p++)
		cap += *p == '&';
	char **v = calloc(cap, sizeof(*v));
	int rc = TERN_OK;
	if (!dup || !v) {
		rc = TERN_ENOMEM;
		goto out;
	}
	size_t nv = 0;
	char *save = NULL;
	for (char *t = strtok_r(dup, "&", &save); t && nv < cap; t = strtok_r(NULL, "&", &save))
		v[nv++] = t;
	qsort(v, nv, sizeof(*v), cmp_str);
	for (size_t i = 0; i < nv && rc == TERN_OK; i++) {
		if (i)
			rc = tbuf_append(b, "&", 1);
		if (rc == TERN_OK)
			rc = tbuf_append_str(b, v[i]);
		if (rc == TERN_OK && !strchr(v[i], '='))
			rc = tbuf_append(b, "=", 1);
	}
out:
	free(dup);
	free(v);
	return rc;
}

/* Appends a header value trimmed, inner runs of blanks as one space. */
static int canon_value(struct tbuf *b, const char *v)
{
	while (*v == ' ' || *v == '\t')
		v++;
	size_t n = strlen(v);
	while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
		n--;
	bool sp = false;
	for (size_t i = 0; i < n; i++) {
		bool blank = v[i] == ' ' || v[i] == '\t';
		if (blank) {
			sp = true;
			continue;
		}
		if (sp && tbuf_append(b, " ", 1) != TERN_OK)
			return TERN_ENOMEM;
		sp = false;
		if (tbuf_append(b, &v[i], 1) != TERN_OK)
			return TERN_ENOMEM;
	}
	return TERN_OK;
}

static void hmac(const void *k, size_t kl, const void *m, size_t ml, unsigned char out[32])
{
	unsigned int ol = 32;
	HMAC(EVP_sha256(), k, (int)kl, m, ml, out, &ol);
}

int sigv4_signature(const char *secret, const char *method, const char *path, const char *query,
                    const struct sigv4_header *hdr, size_t n, const struct sigv4_auth *a,
                    const char *amz_date, const char *payload_hash, char out[65])
{
	struct tbuf cr = TBUF_INIT(1024 * 1024), sts = TBUF_INIT(4096);
	int rc = tbuf_printf(&cr, "%s\n", method);
	if (rc == TERN_OK)
		rc = uri_encode(&cr, path, strlen(path), true);
	if (rc == TERN_OK)
		rc = tbuf_append(&cr, "\n", 1);
	if (rc == TERN_OK)
		rc = canon_query(&cr, query);
	if (rc == TERN_OK)
		rc = tbuf_append(&cr, "\n", 1);
	/* each signed header: "name:value\n", values of repeats joined by ',' */
	const char *sh = a->signed_headers;
	while (rc == TERN_OK && *sh) {
		const char *semi = strchr(sh, ';');
		size_t nl = semi ? (size_t)(semi - sh) : strlen(sh);
		bool found = false;
		rc = tbuf_append(&cr, sh, nl);
		if (rc == TERN_OK)
			rc = tbuf_append(&cr, ":", 1);
		for (size_t i = 0; i < n && rc == TERN_OK; i++) {
			if (strlen(hdr[i].name) != nl || strncasecmp(hdr[i].name, sh, nl) != 0)
				continue;
			if (found)
				rc = tbuf_append(&cr, ",", 1);
			if (rc == TERN_OK)
				rc = canon_value(&cr, hdr[i].value);
			found = true;
		}
		if (rc == TERN_OK && !found)
			rc = TERN_ESYNTAX;
		if (rc == TERN_OK)
			rc = tbuf_append(&cr, "\n", 1);
		sh += nl + (semi ? 1 : 0);
	}
	if (rc == TERN_OK)
		rc = tbuf_printf(&cr, "\n%s\n%s", a->signed_headers, payload_hash);
	if (rc != TERN_OK)
		goto out;
	char crh[65];
	sigv4_sha256_hex(cr.data, cr.len, crh);
	rc = tbuf_printf(&sts, "AWS4-HMAC-SHA256\n%s\n%s/%s/%s/aws4_request\n%s", amz_date, a->date,
	                 a->region, a->service, crh);
	if (rc != TERN_OK)
		goto out;
	/* kSecret = "AWS4" secret; kDate, kRegion, kService, kSigning */
	struct tbuf k0 = TBUF_INIT(4096);
	rc = tbuf_printf(&k0, "AWS4%s", secret);
	if (rc != TERN_OK) {
		tbuf_free(&k0);
		goto out;
	}
	unsigned char k[32], sig[32];
	hmac(k0.data, k0.len, a->date, strlen(a->date), k);
	OPENSSL_cleanse(k0.data, k0.len);
	tbuf_free(&k0);
	hmac(k, 32, a->region, strlen(a->region), k);
	hmac(k, 32, a->service, strlen(a->service), k);
	hmac(k, 32, "aws4_request", 12, k);
	hmac(k, 32, sts.data, sts.len, sig);
	OPENSSL_cleanse(k, sizeof(k));
	to_hex(sig, 32, out);
out:
	tbuf_free(&cr);
	tbuf_free(&sts);
	return rc;
}
