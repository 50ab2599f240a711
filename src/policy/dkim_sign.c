/*
 * dkim_sign.c — the DKIM signer (RFC 6376 §5): the header list with
 * over-signing, the DKIM-Signature field folded under 80 columns, the
 * signature over the header hash; and signing with the config's keyring.
 *
 * Owns: which header fields tern signs, and the exact text of the field it
 * writes (what it hashes is what it emits). Never: signs a message without
 * a From field (RFC 6376 §5.4), does I/O, or keeps the message after
 * returning (the caller owns it).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/codec.h"
#include "core/err.h"
#include "policy/dkim_internal.h"

#define FOLD_AT 78 /* columns a signature line may reach before folding */
#define SIGFIELD_MAX (DKIM_FIELD_MAX - 2048)

/*
 * What tern signs (§5.4.1). Over-signed fields are named once more than they
 * occur, so a copy added in transit (or one that was absent) breaks the
 * signature instead of riding on it; the others are signed as they are.
 */
static const struct {
	const char *name;
	bool over;
} sign_list[] = {
    {"from", true},
    {"reply-to", true},
    {"subject", true},
    {"date", true},
    {"to", true},
    {"cc", true},
    {"message-id", true},
    {"mime-version", true},
    {"content-type", true},
    {"content-transfer-encoding", true},
    {"list-unsubscribe", true},
    {"list-unsubscribe-post", true},
    {"sender", false},
    {"in-reply-to", false},
    {"references", false},
    {"list-id", false},
    {"list-help", false},
    {"list-subscribe", false},
    {"list-post", false},
    {"list-owner", false},
    {"list-archive", false},
    {"resent-date", false},
    {"resent-from", false},
    {"resent-sender", false},
    {"resent-to", false},
    {"resent-cc", false},
    {"resent-message-id", false},
    {"content-id", false},
    {"content-description", false},
};
#define SIGN_LIST_N (sizeof(sign_list) / sizeof(sign_list[0]))

void dkim_sign_params_init(struct dkim_sign_params *p, const char *domain, const char *selector)
{
	memset(p, 0, sizeof(*p));
	p->domain = domain;
	p->selector = selector;
	p->hcanon = DKIM_CANON_RELAXED;
	p->bcanon = DKIM_CANON_RELAXED;
	p->timestamp = DKIM_SIGN_TIME_NOW;
}

/* The header part of a message, indexed. */
struct hdrblock {
	char *text; /* ends with CRLF */
	size_t len;
	struct dkim_field *f;
	size_t nf;
};

static void hdrblock_free(struct hdrblock *h)
{
	free(h->text);
	free(h->f);
	memset(h, 0, sizeof(*h));
}

static int hdrblock_set(struct hdrblock *h, const char *hdr, size_t len)
{
	bool crlf = len >= 2 && hdr[len - 2] == '\r' && hdr[len - 1] == '\n';
	hdrblock_free(h);
	if (len > DKIM_VERIFY_MAX_HEADER)
		return TERN_ELIMIT;
	if (!(h->text = malloc(len + 3)))
		return TERN_ENOMEM;
	if (len)
		memcpy(h->text, hdr, len);
	h->len = len;
	if (!crlf && len > 0) {
		h->text[h->len++] = '\r';
		h->text[h->len++] = '\n';
	}
	h->text[h->len] = '\0';
	bool more;
	size_t n = dkim_fields_index(h->text, h->len, NULL, DKIM_VERIFY_MAX_FIELDS, &more);
	if (more)
		return TERN_ELIMIT;
	if (!(h->f = calloc(n ? n : 1, sizeof(*h->f))))
		return TERN_ENOMEM;
	h->nf = dkim_fields_index(h->text, h->len, h->f, n, &more);
	return TERN_OK;
}

static size_t count_fields(const struct hdrblock *h, const char *name)
{
	size_t n = 0, l = strlen(name);
	for (size_t i = 0; i < h->nf; i++)
		n += dkim_field_is(h->text, &h->f[i], name, l);
	return n;
}

/* ------------------------------------------------------------ the value */

struct folder {
	struct tbuf *t;
	size_t col;
	int rc;
};

/* Appends token, after a space or a fold (sep) when it would pass FOLD_AT. */
static void put(struct folder *f, const char *tok, size_t n, bool space)
{
	if (f->rc != TERN_OK)
		return;
	if (f->col + (space ? 1 : 0) + n > FOLD_AT && f->col > 8) {
		f->rc = tbuf_append(f->t, "\r\n\t", 3);
		f->col = 8;
	} else if (space) {
		f->rc = tbuf_append(f->t, " ", 1);
		f->col++;
	}
	if (f->rc == TERN_OK)
		f->rc = tbuf_append(f->t, tok, n);
	f->col += n;
}

static void put_tag(struct folder *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put_tag(struct folder *f, const char *fmt, ...)
{
	char tmp[600];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(tmp)) {
		f->rc = TERN_ELIMIT;
		return;
	}
	put(f, tmp, (size_t)n, true);
}

static const char *canon_name(enum dkim_canon c)
{
	return c == DKIM_CANON_RELAXED ? "relaxed" : "simple";
}

/* The h= names: the caller's, or sign_list over this header. */
static int header_list(const struct dkim_sign_params *p, const struct hdrblock *h,
                       const char **names, size_t *n)
{
	*n = 0;
	if (p->headers) {
		bool from = false;
		if (p->n_headers == 0 || p->n_headers > DKIM_H_MAX)
			return TERN_EINVAL;
		for (size_t i = 0; i < p->n_headers; i++) {
			if (!dkim_valid_field_name(p->headers[i], strlen(p->headers[i])))
				return TERN_EINVAL;
			from = from || tern_ascii_ieq(p->headers[i], "from");
			names[(*n)++] = p->headers[i];
		}
		return from ? TERN_OK : TERN_EINVAL;
	}
	for (size_t i = 0; i < SIGN_LIST_N; i++) {
		size_t k = count_fields(h, sign_list[i].name) + (sign_list[i].over ? 1 : 0);
		for (size_t j = 0; j < k; j++) {
			if (*n == DKIM_H_MAX)
				return TERN_ELIMIT;
			names[(*n)++] = sign_list[i].name;
		}
	}
	return TERN_OK;
}

/* Signs a finished tag list against an indexed header: *b64 gets b=. */
static int sign_value(const struct dkim_key *key, const char *name, const char *value, size_t vlen,
                      const struct hdrblock *h, char **b64)
{
	struct dkim_taglist tl;
	struct strv names[DKIM_H_MAX];
	size_t nn, flen, outl;
	const char *why;
	enum dkim_canon hc = DKIM_CANON_SIMPLE, bc;
	uint8_t hash[32], sig[DKIM_SIG_BYTES_MAX];
	struct tbuf field = TBUF_INIT(DKIM_FIELD_MAX + 256), out = TBUF_INIT(4096);
	int rc = TERN_EINVAL;
	*b64 = NULL;
	if (dkim_tags_parse(value, vlen, &tl, &why) != TERN_OK)
		goto out;
	const struct dkim_tag *ht = dkim_tags_find(&tl, "h"), *ct = dkim_tags_find(&tl, "c"),
	                      *bt = dkim_value_btag(&tl);
	if (!ht || !bt || !dkim_parse_h(ht->value, names, DKIM_H_MAX, &nn, &why) ||
	    (ct && !dkim_parse_c(ct->value, &hc, &bc)))
		goto out;
	/* the field as it will be hashed: b= blanked (§3.7) */
	if ((rc = tbuf_printf(&field, "%s:", name)) != TERN_OK ||
	    (rc = tbuf_append(&field, value, bt->raw_start)) != TERN_OK ||
	    (rc = tbuf_append(&field, value + bt->raw_end, vlen - bt->raw_end)) != TERN_OK)
		goto out;
	flen = field.len;
	if ((rc = dkim_header_hash(hc, h->text, h->f, h->nf, names, nn, (size_t)-1, field.data,
	                           flen, hash)) != TERN_OK)
		goto out;
	if ((rc = dkim_crypto_sign(key->pkey, key->alg, hash, sig, &outl)) != TERN_OK)
		goto out;
	if ((rc = tern_base64_encode(sig, outl, &out)) != TERN_OK)
		goto out;
	*b64 = tbuf_steal(&out, &outl);
	rc = *b64 ? TERN_OK : TERN_ENOMEM;
out:
	tbuf_free(&field);
	tbuf_free(&out);
	return rc;
}

int dkim_sign_value(const struct dkim_key *key, const char *name, const char *value, size_t vlen,
                    const char *hdr, size_t hlen, char **b64)
{
	struct hdrblock h = {0};
	*b64 = NULL;
	int rc = hdrblock_set(&h, hdr, hlen);
	if (rc == TERN_OK)
		rc = sign_value(key, name, value, vlen, &h, b64);
	hdrblock_free(&h);
	return rc;
}

/* One DKIM-Signature field for key over h, with the body hash bh (base64). */
static int sign_prepared(const struct dkim_key *key, const struct dkim_sign_params *p, int64_t now,
                         const struct hdrblock *h, const char *bh, struct tbuf *dst)
{
	const char *names[DKIM_H_MAX];
	size_t nn = 0;
	char *b64 = NULL;
	struct tbuf t = TBUF_INIT(SIGFIELD_MAX);
	struct folder f = {&t, 15, TERN_OK};
	int rc = TERN_EINVAL;
	if (!p->domain || !p->selector || !dkim_valid_name(p->domain, strlen(p->domain), false) ||
	    !dkim_valid_name(p->selector, strlen(p->selector), true))
		goto out;
	if (count_fields(h, "from") == 0)
		goto out; /* RFC 6376 §5.4: From MUST be signed; a message without is broken */
	if ((rc = header_list(p, h, names, &nn)) != TERN_OK)
		goto out;
	put_tag(&f, "v=1;");
	put_tag(&f, "a=%s;", key->alg == DKIM_ALG_RSA_SHA256 ? "rsa-sha256" : "ed25519-sha256");
	put_tag(&f, "c=%s/%s;", canon_name(p->hcanon), canon_name(p->bcanon));
	put_tag(&f, "d=%s;", p->domain);
	put_tag(&f, "s=%s;", p->selector);
	if (p->auid) {
		/* i= is dkim-quoted-printable: keep it to what needs no encoding */
		for (const char *c = p->auid; *c; c++)
			if ((unsigned char)*c <= 0x20 || *c == ';' || *c == '=' || *c == 0x7f) {
				rc = TERN_EINVAL;
				goto out;
			}
		if (strlen(p->auid) > 500) {
			rc = TERN_EINVAL;
			goto out;
		}
		put_tag(&f, "i=%s;", p->auid);
	}
	if (p->timestamp != DKIM_SIGN_NO_TIME) {
		int64_t ts = p->timestamp == DKIM_SIGN_TIME_NOW ? now : p->timestamp;
		if (ts < 0) {
			rc = TERN_EINVAL;
			goto out;
		}
		put_tag(&f, "t=%lld;", (long long)ts);
		if (p->expire)
			put_tag(&f, "x=%lld;", (long long)ts + p->expire);
	}
	for (size_t i = 0; i < nn; i++) {
		char tok[300];
		int k = snprintf(tok, sizeof(tok), "%s%s%s", i == 0 ? "h=" : "", names[i],
		                 i + 1 == nn ? ";" : ":");
		if (k < 0 || (size_t)k >= sizeof(tok)) {
			rc = TERN_EINVAL;
			goto out;
		}
		put(&f, tok, (size_t)k, i == 0);
	}
	put_tag(&f, "bh=%s;", bh);
	put(&f, "b=", 2, true);
	if ((rc = f.rc) != TERN_OK)
		goto out;
	if ((rc = sign_value(key, "DKIM-Signature", t.data, t.len, h, &b64)) != TERN_OK)
		goto out;
	/* b= folds anywhere: its whitespace is not part of it (§3.5) */
	rc = tbuf_append_str(dst, "DKIM-Signature:");
	if (rc == TERN_OK)
		rc = tbuf_append(dst, t.data, t.len);
	for (size_t i = 0, n = strlen(b64); rc == TERN_OK && i < n;) {
		size_t room = f.col < FOLD_AT ? FOLD_AT - f.col : 0;
		if (room < 8) {
			rc = tbuf_append(dst, "\r\n\t", 3);
			f.col = 8;
			continue;
		}
		size_t k = n - i < room ? n - i : room;
		rc = tbuf_append(dst, b64 + i, k);
		f.col += k;
		i += k;
	}
	if (rc == TERN_OK)
		rc = tbuf_append(dst, "\r\n", 2);
out:
	free(b64);
	tbuf_free(&t);
	return rc;
}

static int64_t now_s(void)
{
	return (int64_t)time(NULL);
}

static int bh_b64(const struct dkim_bh *h, char out[45])
{
	struct tbuf t = TBUF_INIT(64);
	int rc = tern_base64_encode(h->digest, 32, &t);
	if (rc == TERN_OK)
		memcpy(out, t.data, 45);
	tbuf_free(&t);
	return rc;
}

/* ------------------------------------------------------------ the signer */

struct dkim_signer {
	const struct dkim_key *key;
	const struct dkim_sign_params *p;
	struct hdrblock h;
	struct dkim_body body;
	int err; /* from dkim_signer_headers, reported by finish */
	bool have_headers;
};

struct dkim_signer *dkim_signer_new(const struct dkim_key *key, const struct dkim_sign_params *p)
{
	struct dkim_signer *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->key = key;
	s->p = p;
	if (dkim_body_add(&s->body, p->bcanon, false, 0) < 0) {
		dkim_signer_free(s);
		return NULL;
	}
	return s;
}

int dkim_signer_headers(struct dkim_signer *s, const char *hdr, size_t len)
{
	s->err = hdrblock_set(&s->h, hdr, len);
	s->have_headers = true;
	return s->err;
}

struct dkim_body *dkim_signer_body(struct dkim_signer *s)
{
	return &s->body;
}

int dkim_signer_finish(struct dkim_signer *s, char **out, size_t *outlen)
{
	char bh[45];
	struct tbuf t = TBUF_INIT(DKIM_FIELD_MAX);
	int rc = s->have_headers ? s->err : TERN_EINVAL;
	*out = NULL;
	*outlen = 0;
	if (rc != TERN_OK)
		goto out;
	rc = TERN_EIO;
	if (!dkim_body_finish(&s->body) || bh_b64(&s->body.h[0], bh) != TERN_OK)
		goto out;
	if ((rc = sign_prepared(s->key, s->p, now_s(), &s->h, bh, &t)) != TERN_OK)
		goto out;
	*out = tbuf_steal(&t, outlen);
	rc = *out ? TERN_OK : TERN_ENOMEM;
out:
	tbuf_free(&t);
	return rc;
}

void dkim_signer_free(struct dkim_signer *s)
{
	if (!s)
		return;
	hdrblock_free(&s->h);
	dkim_body_clear(&s->body);
	free(s);
}

int dkim_sign(const struct dkim_key *key, const struct dkim_sign_params *p, const char *msg,
              size_t len, char **out, size_t *outlen)
{
	size_t hl, bo;
	*out = NULL;
	*outlen = 0;
	struct dkim_signer *s = dkim_signer_new(key, p);
	if (!s)
		return TERN_ENOMEM;
	dkim_split_message(msg, len, &hl, &bo);
	int rc = dkim_signer_headers(s, msg, hl);
	if (rc == TERN_OK) {
		dkim_body_update(dkim_signer_body(s), msg + bo, len - bo);
		rc = dkim_signer_finish(s, out, outlen);
	}
	dkim_signer_free(s);
	return rc;
}

/* ------------------------------------------------------------ keyring */

int dkim_keyring_sign(const struct dkim_keyring *kr, const char *from_domain, const char *msg,
                      size_t len, int64_t timestamp, char **out, size_t *outlen)
{
	return dkim_keyring_sign_mapped(kr, from_domain, msg, len, timestamp, false, out, outlen);
}

int dkim_keyring_sign_mapped(const struct dkim_keyring *kr, const char *from_domain,
                             const char *msg, size_t len, int64_t timestamp, bool mapped,
                             char **out, size_t *outlen)
{
	struct hdrblock h = {0};
	struct dkim_body body = {0};
	struct tbuf t = TBUF_INIT((size_t)DKIM_FIELD_MAX * 8);
	enum dkim_canon hc, bc;
	char bh[45];
	size_t hl, bo;
	int rc = TERN_OK;
	*out = NULL;
	*outlen = 0;
	const char *d = dkim_keyring_domain_for(kr, from_domain);
	if (!d)
		return TERN_OK;
	dkim_keyring_canon(kr, &hc, &bc);
	dkim_split_message(msg, len, &hl, &bo);
	if ((rc = hdrblock_set(&h, msg, hl)) != TERN_OK)
		goto out;
	rc = TERN_ENOMEM;
	if (dkim_body_add(&body, bc, false, 0) < 0)
		goto out;
	struct dkim_body *bp = &body;
	dkim_body_feed(&bp, 1, msg + bo, len - bo, mapped); /* SPILL: a mapping's pages go */
	rc = TERN_EIO;
	if (!dkim_body_finish(&body) || bh_b64(&body.h[0], bh) != TERN_OK)
		goto out;
	int64_t now = now_s();
	rc = TERN_OK;
	for (size_t i = 0; rc == TERN_OK && i < dkim_keyring_count(kr); i++) {
		const struct dkim_keyring_key *k = dkim_keyring_get(kr, i);
		if (strcmp(k->domain, d) != 0)
			continue;
		struct dkim_sign_params p;
		dkim_sign_params_init(&p, k->domain, k->selector);
		p.hcanon = hc;
		p.bcanon = bc;
		p.timestamp = timestamp;
		rc = sign_prepared(k->key, &p, now, &h, bh, &t);
	}
	if (rc == TERN_OK && t.len) {
		*out = tbuf_steal(&t, outlen);
		rc = *out ? TERN_OK : TERN_ENOMEM;
	}
out:
	tbuf_free(&t);
	dkim_body_clear(&body);
	hdrblock_free(&h);
	return rc;
}
