/*
 * arc_seal.c — adding an ARC Set (RFC 8617 §5.1): the AAR from the
 * caller's authres-payload, the AMS (a DKIM-style signature over the
 * message, signed through dkim_sign_value) and the AS over the chain.
 *
 * Owns: the instance number, when not to seal, the AS scope (every set, or
 * only the new one under cv=fail, §5.1.2), the field layout.
 * Never: decides cv itself (the validator does, arc_verify.c), or does I/O.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/buf.h"
#include "core/codec.h"
#include "core/err.h"
#include "policy/arc_internal.h"

/* What AMS signs when the caller names nothing: each instance present of
 * these (RFC 8617 §4.1.2: DKIM-Signature SHOULD be covered). */
static const char *const ams_default[] = {
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "sender",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "dkim-signature",
};

static bool forbidden(const char *name)
{
	static const char *const no[] = {"arc-seal", "arc-message-signature",
	                                 "arc-authentication-results", "authentication-results"};
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
		if (tern_ascii_ieq(name, no[i]))
			return true;
	return false;
}

/* Appends "name: " + tags; with fold, folding at "; " past column 76 and
 * inside b=. Folding changes what a later AS hashes (relaxed keeps one SP
 * where a fold was, even inside b=), so the suite's layout has none. */
static int put_field(struct tbuf *out, const char *name, const char *value, const char *b64,
                     bool fold)
{
	size_t col = strlen(name) + 2;
	int rc = tbuf_printf(out, "%s: ", name);
	for (const char *p = value; rc == TERN_OK && *p;) {
		const char *semi = strstr(p, "; ");
		size_t n = semi ? (size_t)(semi - p) + 1 : strlen(p);
		bool isb = strncmp(p, "b=", 2) == 0;
		if (fold && col + (isb ? 2 : n) > 76 && col > 1) {
			rc = tbuf_append(out, "\r\n\t", 3);
			col = 1;
		}
		if (rc == TERN_OK && isb) {
			/* "b=" then the signature in lines of 64 */
			rc = tbuf_append(out, "b=", 2);
			col += 2;
			for (const char *q = b64; rc == TERN_OK && *q;) {
				size_t k = strlen(q);
				size_t room = !fold ? k : col < 76 ? 76 - col : 0;
				if (room == 0) {
					rc = tbuf_append(out, "\r\n\t", 3);
					col = 1;
					continue;
				}
				if (k > room)
					k = room;
				rc = tbuf_append(out, q, k);
				col += k;
				q += k;
			}
			if (rc == TERN_OK && semi)
				rc = tbuf_append(out, ";", 1);
			col++;
		} else if (rc == TERN_OK) {
			rc = tbuf_append(out, p, n);
			col += n;
		}
		if (!semi)
			break;
		p = semi + 2;
		if (rc == TERN_OK && *p) {
			rc = tbuf_append(out, " ", 1);
			col++;
		}
	}
	return rc == TERN_OK ? tbuf_append(out, "\r\n", 2) : rc;
}

/* The AAR: "i=N; " + authres, folded at "; " (relaxed canonicalization,
 * which the AS uses, sees the same either way). */
static int put_aar(struct tbuf *out, unsigned inst, const char *authres, bool fold)
{
	size_t col = 40;
	int rc = tbuf_printf(out, "ARC-Authentication-Results: i=%u; ", inst);
	for (const char *p = authres; rc == TERN_OK && *p;) {
		const char *semi = strstr(p, "; ");
		size_t n = semi ? (size_t)(semi - p) + 1 : strlen(p);
		if (fold && col + n > 76 && col > 1) {
			rc = tbuf_append(out, "\r\n\t", 3);
			col = 1;
		}
		if (rc == TERN_OK)
			rc = tbuf_append(out, p, n);
		col += n;
		if (!semi)
			break;
		p = semi + 2;
		if (rc == TERN_OK && *p) {
			rc = tbuf_append(out, " ", 1);
			col++;
		}
	}
	return rc == TERN_OK ? tbuf_append(out, "\r\n", 2) : rc;
}

static const char *alg_name(const struct dkim_key *k)
{
	return k->alg == DKIM_ALG_ED25519_SHA256 ? "ed25519-sha256" : "rsa-sha256";
}

int arc_seal(const struct dkim_key *key, const struct arc_seal_params *p, enum arc_cv cv,
             const char *msg, size_t len, char **out, size_t *outlen)
{
	size_t hdr_len = 0, body_off = 0;
	char bh[45];
	*out = NULL;
	*outlen = 0;
	dkim_split_message(msg, len, &hdr_len, &body_off);
	int rc = dkim_body_hash_b64(DKIM_CANON_RELAXED, msg + body_off, len - body_off, bh);
	if (rc != TERN_OK)
		return rc;
	return arc_seal_header(key, p, cv, msg, hdr_len, bh, out, outlen);
}

int arc_seal_header(const struct dkim_key *key, const struct arc_seal_params *p, enum arc_cv cv,
                    const char *msg, size_t hdr_len, const char *bh, char **out, size_t *outlen)
{
	size_t nf, nn = 0;
	bool more;
	struct dkim_field *f = NULL;
	struct arc_sets *sets = NULL;
	struct tbuf aar = TBUF_INIT(DKIM_FIELD_MAX), ams = TBUF_INIT(DKIM_FIELD_MAX),
	            as = TBUF_INIT(DKIM_FIELD_MAX), h = TBUF_INIT(DKIM_FIELD_MAX),
	            val = TBUF_INIT(DKIM_FIELD_MAX), res = TBUF_INIT(4 * DKIM_FIELD_MAX);
	struct strv *fields = NULL;
	char *amsb = NULL, ts[32] = "";
	const char *names[DKIM_H_MAX];
	uint8_t hash[32], sig[DKIM_SIG_BYTES_MAX];
	size_t siglen;
	int rc = TERN_EINVAL;
	*out = NULL;
	*outlen = 0;
	if (!key || !p->domain || !p->selector || !p->authres || !*p->authres ||
	    !dkim_valid_name(p->domain, strlen(p->domain), false) ||
	    !dkim_valid_name(p->selector, strlen(p->selector), true) ||
	    strpbrk(p->authres, "\r\n") || strlen(p->authres) > DKIM_FIELD_MAX / 2)
		goto out;
	if (p->timestamp != DKIM_SIGN_NO_TIME) {
		int64_t t = p->timestamp == DKIM_SIGN_TIME_NOW ? (int64_t)time(NULL) : p->timestamp;
		if (t < 0)
			goto out;
		snprintf(ts, sizeof(ts), "%lld", (long long)t);
	}

	rc = TERN_ELIMIT;
	if (hdr_len > DKIM_VERIFY_MAX_HEADER)
		goto out;
	nf = dkim_fields_index(msg, hdr_len, NULL, DKIM_VERIFY_MAX_FIELDS, &more);
	if (more)
		goto out;
	rc = TERN_ENOMEM;
	f = calloc(nf ? nf : 1, sizeof(*f));
	sets = malloc(sizeof(*sets));
	fields = calloc(3 * ARC_MAX_SETS + 2, sizeof(*fields));
	if (!f || !sets || !fields)
		goto out;
	nf = dkim_fields_index(msg, hdr_len, f, nf, &more);
	arc_sets_collect(msg, f, nf, sets);

	/* §5.1 step 2-3: when not to seal */
	unsigned top = sets->max;
	if (top > 0 && sets->count[top][ARC_AS] == 1) {
		const struct dkim_field *sf = &f[sets->idx[top][ARC_AS]];
		size_t vo = arc_value_off(msg, sf);
		struct dkim_taglist *tl = malloc(sizeof(*tl));
		const char *why;
		bool failed = false;
		if (tl && dkim_tags_parse(msg + sf->off + vo, arc_value_len(msg, sf, vo), tl,
		                          &why) == TERN_OK) {
			const struct dkim_tag *c = dkim_tags_find(tl, "cv");
			failed = c && strv_eq(c->value, STRV("fail"));
		}
		free(tl);
		if (failed) {
			rc = TERN_OK; /* the chain is dead: nothing to add */
			goto out;
		}
	}
	if (top >= ARC_MAX_SETS || (cv == ARC_CV_NONE && sets->n_fields > 0)) {
		rc = TERN_OK;
		goto out;
	}
	rc = TERN_EINVAL;
	if (cv != ARC_CV_NONE && top == 0)
		goto out; /* pass or fail of a chain that is not there */
	unsigned inst = top + 1;

	/* AMS h= */
	if (p->headers) {
		if (p->n_headers > DKIM_H_MAX)
			goto out;
		for (size_t i = 0; i < p->n_headers; i++) {
			if (!dkim_valid_field_name(p->headers[i], strlen(p->headers[i])) ||
			    forbidden(p->headers[i]))
				goto out;
			names[nn++] = p->headers[i];
		}
	} else {
		for (size_t i = 0; i < sizeof(ams_default) / sizeof(ams_default[0]); i++)
			for (size_t j = 0; j < nf; j++)
				if (dkim_field_is(msg, &f[j], ams_default[i],
				                  strlen(ams_default[i]))) {
					rc = TERN_ELIMIT;
					if (nn == DKIM_H_MAX)
						goto out;
					names[nn++] = ams_default[i];
				}
	}
	rc = TERN_EINVAL;
	if (nn == 0)
		goto out;
	for (size_t i = 0; i < nn; i++)
		if ((rc = tbuf_printf(&h, "%s%s", i ? ":" : "", names[i])) != TERN_OK)
			goto out;
	if ((rc = tbuf_append(&h, "", 1)) != TERN_OK)
		goto out;

	if (!bh || strlen(bh) != 44) {
		rc = TERN_EINVAL;
		goto out;
	}
	if ((rc = put_aar(&aar, inst, p->authres, !p->sorted_tags)) != TERN_OK)
		goto out;

	/* AMS: the tags with b= empty, signed over the message's header */
	char tpart[48] = "";
	if (*ts)
		snprintf(tpart, sizeof(tpart), "; t=%s", ts);
	if (p->sorted_tags)
		rc = tbuf_printf(&val,
		                 "a=%s; b=; bh=%s; c=relaxed/relaxed; d=%s; h=%s; i=%u; s=%s%s",
		                 alg_name(key), bh, p->domain, h.data, inst, p->selector, tpart);
	else
		rc = tbuf_printf(
		    &val, "i=%u; a=%s; c=relaxed/relaxed; d=%s; s=%s%s; h=%s; bh=%s; b=", inst,
		    alg_name(key), p->domain, p->selector, tpart, h.data, bh);
	if (rc != TERN_OK)
		goto out;
	if ((rc = dkim_sign_value(key, "ARC-Message-Signature", val.data, val.len, msg, hdr_len,
	                          &amsb)) != TERN_OK)
		goto out;
	if ((rc = tbuf_append(&val, "", 1)) != TERN_OK ||
	    (rc = put_field(&ams, "ARC-Message-Signature", val.data, amsb, !p->sorted_tags)) !=
	        TERN_OK)
		goto out;

	/* AS: the chain (or, under cv=fail, only the new set), then itself */
	size_t n = 0;
	if (cv != ARC_CV_FAIL)
		for (unsigned k = 1; k < inst; k++)
			for (int kind = 0; kind < 3; kind++) {
				const struct dkim_field *af = &f[sets->idx[k][kind]];
				TERN_BUG_ON(sets->idx[k][kind] == (size_t)-1);
				fields[n++] = strv_make(msg + af->off, af->len);
			}
	fields[n++] = strv_make(aar.data, aar.len);
	fields[n++] = strv_make(ams.data, ams.len);
	tbuf_reset(&val);
	if (p->sorted_tags)
		rc = tbuf_printf(&val, "a=%s; b=; cv=%s; d=%s; i=%u; s=%s%s", alg_name(key),
		                 arc_cv_name(cv), p->domain, inst, p->selector, tpart);
	else
		rc = tbuf_printf(&val, "i=%u; a=%s; cv=%s; d=%s; s=%s%s; b=", inst, alg_name(key),
		                 arc_cv_name(cv), p->domain, p->selector, tpart);
	if (rc != TERN_OK || (rc = tbuf_append(&val, "", 1)) != TERN_OK)
		goto out;
	/* the field as hashed: put_field's layout with b= empty (FWS is relaxed away) */
	if ((rc = put_field(&as, "ARC-Seal", val.data, "", !p->sorted_tags)) != TERN_OK)
		goto out;
	if ((rc = arc_seal_hash(fields, n, as.data, as.len - 2, hash)) != TERN_OK)
		goto out;
	if ((rc = dkim_crypto_sign(key->pkey, key->alg, hash, sig, &siglen)) != TERN_OK)
		goto out;
	struct tbuf b64 = TBUF_INIT(4096);
	if ((rc = tern_base64_encode(sig, siglen, &b64)) == TERN_OK)
		rc = tbuf_append(&b64, "", 1);
	tbuf_reset(&as);
	if (rc == TERN_OK)
		rc = put_field(&as, "ARC-Seal", val.data, b64.data, !p->sorted_tags);
	tbuf_free(&b64);
	if (rc != TERN_OK)
		goto out;

	if ((rc = tbuf_append(&res, as.data, as.len)) != TERN_OK ||
	    (rc = tbuf_append(&res, ams.data, ams.len)) != TERN_OK ||
	    (rc = tbuf_append(&res, aar.data, aar.len)) != TERN_OK)
		goto out;
	*out = tbuf_steal(&res, outlen);
	rc = *out ? TERN_OK : TERN_ENOMEM;
out:
	free(amsb);
	free(fields);
	free(sets);
	free(f);
	tbuf_free(&aar);
	tbuf_free(&ams);
	tbuf_free(&as);
	tbuf_free(&h);
	tbuf_free(&val);
	tbuf_free(&res);
	return rc;
}
