/*
 * arc_verify.c — ARC chain validation (RFC 8617 §5.2) as a key-query state
 * machine, and the pieces the sealer shares: finding the ARC Sets of a
 * header block, the instance of a field, the ARC-Seal hash.
 *
 * Owns: the structure rules (one AAR, AMS and AS per instance, 1..N with
 * no gap, cv= none at 1 and pass after), the AMS and AS tag checks, which
 * key records are needed, oldest-pass, and cv. Canonicalization, header
 * hashing, key records and crypto are the DKIM code's (dkim_internal.h).
 * Never: does I/O, or trusts a byte of the message: every length is
 * bounded by the DKIM limits and ARC_MAX_SETS.
 */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/codec.h"
#include "core/err.h"
#include "policy/arc_internal.h"

const char *arc_cv_name(enum arc_cv cv)
{
	switch (cv) {
	case ARC_CV_PASS:
		return "pass";
	case ARC_CV_FAIL:
		return "fail";
	default:
		return "none";
	}
}

/* ----------------------------------------------------------- pure parts */

static bool is_fws(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Skips FWS and RFC 5322 comments (nested, bounded by len). */
static void skip_cfws(const char *s, size_t len, size_t *i)
{
	while (*i < len) {
		if (is_fws(s[*i])) {
			(*i)++;
		} else if (s[*i] == '(') {
			unsigned depth = 0;
			do {
				if (s[*i] == '\\' && *i + 1 < len)
					(*i)++;
				else if (s[*i] == '(')
					depth++;
				else if (s[*i] == ')')
					depth--;
				(*i)++;
			} while (*i < len && depth > 0);
		} else {
			break;
		}
	}
}

/* position = 1*2DIGIT, 1..50. 0 when not. */
static unsigned position(struct strv v)
{
	if (v.n < 1 || v.n > 2)
		return 0;
	unsigned n = 0;
	for (size_t i = 0; i < v.n; i++) {
		if (v.p[i] < '0' || v.p[i] > '9')
			return 0;
		n = n * 10 + (unsigned)(v.p[i] - '0');
	}
	return n >= 1 && n <= ARC_MAX_SETS ? n : 0;
}

unsigned arc_instance(const char *value, size_t len, bool aar)
{
	if (!aar) {
		struct dkim_taglist *tl = malloc(sizeof(*tl));
		const char *why;
		unsigned n = 0;
		if (tl && dkim_tags_parse(value, len, tl, &why) == TERN_OK) {
			const struct dkim_tag *t = dkim_tags_find(tl, "i");
			n = t ? position(t->value) : 0;
		}
		free(tl);
		return n;
	}
	/* AAR: instance [CFWS] ";" authres-payload (§4.1.1) */
	size_t i = 0, d;
	skip_cfws(value, len, &i);
	if (i == len || value[i] != 'i')
		return 0;
	i++;
	skip_cfws(value, len, &i);
	if (i == len || value[i] != '=')
		return 0;
	i++;
	skip_cfws(value, len, &i);
	for (d = i; d < len && value[d] >= '0' && value[d] <= '9';)
		d++;
	unsigned n = position(strv_make(value + i, d - i));
	i = d;
	skip_cfws(value, len, &i);
	return i < len && value[i] == ';' ? n : 0;
}

size_t arc_value_off(const char *hdr, const struct dkim_field *f)
{
	const char *colon = memchr(hdr + f->off, ':', f->len);
	return colon ? (size_t)(colon - (hdr + f->off)) + 1 : f->len;
}

size_t arc_value_len(const char *hdr, const struct dkim_field *f, size_t off)
{
	size_t len = f->len;
	const char *p = hdr + f->off;
	if (len >= 2 && p[len - 2] == '\r' && p[len - 1] == '\n')
		len -= 2;
	return len > off ? len - off : 0;
}

static int kind_of(const char *hdr, const struct dkim_field *f)
{
	if (dkim_field_is(hdr, f, "ARC-Authentication-Results", 26))
		return ARC_AAR;
	if (dkim_field_is(hdr, f, "ARC-Message-Signature", 21))
		return ARC_AMS;
	if (dkim_field_is(hdr, f, "ARC-Seal", 8))
		return ARC_AS;
	return -1;
}

void arc_sets_collect(const char *hdr, const struct dkim_field *f, size_t nf, struct arc_sets *s)
{
	memset(s, 0, sizeof(*s));
	memset(s->idx, 0xff, sizeof(s->idx));
	for (size_t i = 0; i < nf; i++) {
		int k = kind_of(hdr, &f[i]);
		if (k < 0)
			continue;
		s->n_fields++;
		size_t vo = arc_value_off(hdr, &f[i]);
		unsigned inst =
		    arc_instance(hdr + f[i].off + vo, arc_value_len(hdr, &f[i], vo), k == ARC_AAR);
		if (inst == 0) {
			s->why = "an ARC header field without a valid instance";
			continue;
		}
		if (s->count[inst][k]++ == 0)
			s->idx[inst][k] = i;
		else
			s->why = "two ARC header fields of one kind share an instance";
		if (inst > s->max)
			s->max = inst;
	}
	for (unsigned i = 1; i <= s->max && !s->why; i++)
		for (int k = 0; k < 3; k++)
			if (s->count[i][k] != 1)
				s->why = "an ARC Set is incomplete or missing";
}

int arc_seal_hash(const struct strv *fields, size_t n, const char *sigfield, size_t siglen,
                  uint8_t out[32])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	struct tbuf t = TBUF_INIT(DKIM_VERIFY_MAX_HEADER + 4);
	unsigned dl = 0;
	int rc = TERN_ENOMEM;
	if (!md)
		goto out;
	rc = TERN_EIO;
	if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
		goto out;
	for (size_t i = 0; i <= n; i++) {
		tbuf_reset(&t);
		bool last = i == n;
		rc = dkim_canon_header(DKIM_CANON_RELAXED, last ? sigfield : fields[i].p,
		                       last ? siglen : fields[i].n, &t);
		if (rc != TERN_OK)
			goto out;
		rc = TERN_EIO;
		/* the seal itself goes in without its CRLF, as DKIM's own field */
		if (EVP_DigestUpdate(md, t.data, last ? t.len - 2 : t.len) != 1)
			goto out;
	}
	if (EVP_DigestFinal_ex(md, out, &dl) != 1 || dl != 32)
		goto out;
	rc = TERN_OK;
out:
	tbuf_free(&t);
	EVP_MD_CTX_free(md);
	return rc;
}

/* ------------------------------------------------------------ validator */

#define ARC_KEYS_MAX (2 * ARC_MAX_SETS)
#define KEYNAME_MAX (DKIM_SELECTOR_MAX + DKIM_DOMAIN_MAX + 13)

struct arc_key {
	char name[KEYNAME_MAX + 1];
	bool handed, answered;
	enum dkim_lookup st; /* with OK: pk set, or why says what was wrong */
	const char *why;
	EVP_PKEY *pk;
	enum dkim_keytype type;
	bool sha256_ok;
};

/* One AMS or AS, parsed. Names and values point into v->msg. */
struct arc_sig {
	bool ok; /* parsed and usable */
	size_t field;
	struct dkim_taglist tags;
	enum dkim_alg alg;
	enum dkim_canon hc, bc;
	char domain[DKIM_DOMAIN_MAX + 1];
	char selector[DKIM_SELECTOR_MAX + 1];
	struct strv h[DKIM_H_MAX];
	size_t n_h;
	uint8_t bh[32];
	uint8_t b[DKIM_SIG_BYTES_MAX];
	size_t b_len;
	bool has_l;
	uint64_t l;
	enum arc_cv cv;
	int key;
	int stream;        /* AMS: its body hash in v->body */
	uint8_t ahash[32]; /* AS: what it signs (seal_hashes) */
};

struct arc_verify {
	enum arc_verify_state state;
	char *msg; /* a copy of the header block only: the body is fed (arc_verify_body) */
	size_t hdr_len;
	struct dkim_field *f;
	size_t nf;
	struct arc_sets sets;
	struct arc_sig *ams, *as; /* [1..N] */
	struct dkim_body body;    /* one pass over the body for every AMS (and the seal) */
	bool streams_ok;          /* every usable AMS has its stream in body */
	bool body_ended;          /* arc_verify_body_end ran */
	bool body_ok;             /* ... and every stream's hash is right */
	int seal_stream;          /* arc_verify_seal_body's stream, or -1 */
	bool seals_ok;            /* every as[i].ahash computed (seal_hashes) */
	struct arc_key keys[ARC_KEYS_MAX];
	size_t n_keys, pending;
	struct arc_result res;
};

struct arc_verify *arc_verify_new(void)
{
	struct arc_verify *v = calloc(1, sizeof(struct arc_verify));
	if (v)
		v->seal_stream = -1;
	return v;
}

void arc_verify_free(struct arc_verify *v)
{
	if (!v)
		return;
	for (size_t i = 0; i < v->n_keys; i++)
		EVP_PKEY_free(v->keys[i].pk);
	dkim_body_clear(&v->body);
	free(v->ams);
	free(v->as);
	free(v->f);
	free(v->msg);
	free(v);
}

static void done(struct arc_verify *v, enum arc_cv cv, const char *why)
{
	v->res.cv = cv;
	if (why != v->res.reason)
		tern_strlcpy(v->res.reason, why ? why : "", sizeof(v->res.reason));
	v->state = ARC_VS_DONE;
}

static bool digits(struct strv v, uint64_t *out)
{
	uint64_t n = 0;
	if (v.n == 0 || v.n > 19)
		return false;
	for (size_t i = 0; i < v.n; i++) {
		if (v.p[i] < '0' || v.p[i] > '9')
			return false;
		n = n * 10 + (uint64_t)(v.p[i] - '0');
	}
	*out = n;
	return true;
}

static bool copy_name(struct strv v, char *dst, size_t max, bool selector)
{
	if (v.n == 0 || v.n > max || !dkim_valid_name(v.p, v.n, selector))
		return false;
	for (size_t i = 0; i < v.n; i++)
		dst[i] = (char)(v.p[i] >= 'A' && v.p[i] <= 'Z' ? v.p[i] + 32 : v.p[i]);
	dst[v.n] = '\0';
	return true;
}

/* Parses the AMS (seal false) or AS of field fi. NULL, or why it is unusable. */
static const char *parse_sig(struct arc_verify *v, size_t fi, bool seal, struct arc_sig *s)
{
	const struct dkim_field *f = &v->f[fi];
	size_t vo = arc_value_off(v->msg, f);
	const char *why;
	memset(s, 0, sizeof(*s));
	s->field = fi;
	s->key = -1;
	if (dkim_tags_parse(v->msg + f->off + vo, arc_value_len(v->msg, f, vo), &s->tags, &why) !=
	    TERN_OK)
		return why;
	const struct dkim_tag *a = dkim_tags_find(&s->tags, "a"),
	                      *b = dkim_tags_find(&s->tags, "b"),
	                      *d = dkim_tags_find(&s->tags, "d"),
	                      *sl = dkim_tags_find(&s->tags, "s"),
	                      *t = dkim_tags_find(&s->tags, "t"),
	                      *h = dkim_tags_find(&s->tags, "h");
	if (!a || !b || !d || !sl)
		return "a required tag is missing";
	if (strv_eq(a->value, STRV("rsa-sha256")))
		s->alg = DKIM_ALG_RSA_SHA256;
	else if (strv_eq(a->value, STRV("ed25519-sha256")))
		s->alg = DKIM_ALG_ED25519_SHA256;
	else
		return "unsupported a=";
	if (!copy_name(d->value, s->domain, DKIM_DOMAIN_MAX, false))
		return "d= is not a domain name";
	if (!copy_name(sl->value, s->selector, DKIM_SELECTOR_MAX, true))
		return "s= is not a selector";
	uint64_t tv;
	if (t && !digits(t->value, &tv))
		return "t= is not a number";
	if (!dkim_b64_decode(b->value, s->b, sizeof(s->b), &s->b_len) || s->b_len == 0)
		return "b= is not base64";
	if (seal) {
		const struct dkim_tag *cv = dkim_tags_find(&s->tags, "cv");
		if (h)
			return "an ARC-Seal must not have h=";
		if (!cv)
			return "cv= is missing";
		if (strv_eq(cv->value, STRV("none")))
			s->cv = ARC_CV_NONE;
		else if (strv_eq(cv->value, STRV("pass")))
			s->cv = ARC_CV_PASS;
		else if (strv_eq(cv->value, STRV("fail")))
			s->cv = ARC_CV_FAIL;
		else
			return "cv= is not none, pass or fail";
		s->hc = DKIM_CANON_RELAXED;
		s->ok = true;
		return NULL;
	}
	const struct dkim_tag *bh = dkim_tags_find(&s->tags, "bh"),
	                      *c = dkim_tags_find(&s->tags, "c"),
	                      *l = dkim_tags_find(&s->tags, "l");
	size_t bhl;
	if (!bh || !h)
		return "a required tag is missing";
	if (!dkim_b64_decode(bh->value, s->bh, sizeof(s->bh), &bhl) || bhl != 32)
		return "bh= is not a SHA-256 hash in base64";
	s->hc = s->bc = DKIM_CANON_SIMPLE;
	if (c && !dkim_parse_c(c->value, &s->hc, &s->bc))
		return "unknown c=";
	/* h= may be empty, and an empty name between colons selects nothing:
	 * the ValiMail suite passes both (ams_fields_h_empty, _h_mis_hdr) */
	for (size_t i = 0; i <= h->value.n;) {
		const char *colon = memchr(h->value.p + i, ':', h->value.n - i);
		size_t e = colon ? (size_t)(colon - h->value.p) : h->value.n, st = i;
		i = e + 1;
		while (st < e && is_fws(h->value.p[st]))
			st++;
		while (e > st && is_fws(h->value.p[e - 1]))
			e--;
		if (st == e)
			continue;
		if (!dkim_valid_field_name(h->value.p + st, e - st))
			return "h= holds something that is not a header field name";
		if (s->n_h == DKIM_H_MAX)
			return "h= names too many fields";
		s->h[s->n_h++] = strv_make(h->value.p + st, e - st);
	}
	for (size_t i = 0; i < s->n_h; i++)
		if (strv_ieq(s->h[i], STRV("arc-seal")))
			return "h= names ARC-Seal";
	if (l && !digits(l->value, &s->l))
		return "l= is not a number";
	s->has_l = l != NULL;
	s->ok = true;
	return NULL;
}

static int want_key(struct arc_verify *v, const struct arc_sig *s)
{
	char name[KEYNAME_MAX + 1];
	int n = snprintf(name, sizeof(name), "%s._domainkey.%s", s->selector, s->domain);
	if (n < 0 || (size_t)n >= sizeof(name))
		return -1;
	for (size_t i = 0; i < v->n_keys; i++)
		if (strcmp(v->keys[i].name, name) == 0)
			return (int)i;
	TERN_BUG_ON(v->n_keys >= ARC_KEYS_MAX);
	memcpy(v->keys[v->n_keys].name, name, (size_t)n + 1);
	v->pending++;
	return (int)v->n_keys++;
}

/* The body streams of every usable AMS (its canonicalization and l=): the
 * body is fed once for all of them. */
static void add_streams(struct arc_verify *v)
{
	for (unsigned i = 1; i <= v->sets.max; i++) {
		struct arc_sig *s = &v->ams[i];
		s->stream = s->ok ? dkim_body_add(&v->body, s->bc, s->has_l, s->l) : -1;
		if (s->ok && s->stream < 0)
			return; /* ENOMEM: streams_ok stays false, checked as a temporary failure */
	}
	v->streams_ok = true;
}

int arc_verify_input(struct arc_verify *v, const char *msg, size_t len)
{
	size_t hl = 0, bo = 0;
	dkim_split_message(msg, len, &hl, &bo);
	int rc = arc_verify_headers(v, msg, hl);
	if (rc != TERN_OK)
		return rc;
	struct dkim_body *b = arc_verify_body(v);
	if (b)
		dkim_body_update(b, msg + bo, len - bo);
	arc_verify_body_end(v);
	return TERN_OK;
}

int arc_verify_headers(struct arc_verify *v, const char *hdr, size_t len)
{
	bool more;
	if (v->state != ARC_VS_INPUT || v->msg)
		return TERN_EINVAL;
	if (len > DKIM_VERIFY_MAX_HEADER)
		return TERN_ELIMIT;
	v->msg = malloc(len + 1);
	if (!v->msg)
		return TERN_ENOMEM;
	memcpy(v->msg, hdr, len);
	v->msg[len] = '\0';
	v->hdr_len = len;
	size_t nf = dkim_fields_index(v->msg, v->hdr_len, NULL, DKIM_VERIFY_MAX_FIELDS, &more);
	if (more)
		return TERN_ELIMIT;
	v->f = calloc(nf ? nf : 1, sizeof(*v->f));
	if (!v->f)
		return TERN_ENOMEM;
	v->nf = dkim_fields_index(v->msg, v->hdr_len, v->f, nf, &more);

	struct arc_sets *s = &v->sets;
	arc_sets_collect(v->msg, v->f, v->nf, s);
	v->res.n_sets = s->max;
	v->state = ARC_VS_WAITING;
	if (s->n_fields == 0) {
		done(v, ARC_CV_NONE, NULL);
		return TERN_OK;
	}
	v->ams = calloc(s->max + 1, sizeof(*v->ams));
	v->as = calloc(s->max + 1, sizeof(*v->as));
	if (!v->ams || !v->as)
		return TERN_ENOMEM;
	/* §5.2 step 2, and what a sealer needs to know even of a broken chain */
	if (s->max > 0 && s->count[s->max][ARC_AS] == 1) {
		struct arc_sig *top = &v->as[s->max];
		if (!parse_sig(v, s->idx[s->max][ARC_AS], true, top)) {
			v->res.latest_cv_fail = top->cv == ARC_CV_FAIL;
			tern_strlcpy(v->res.sealer, top->domain, sizeof(v->res.sealer));
		}
	}
	if (s->max > 0 && s->count[s->max][ARC_AMS] == 1) {
		struct arc_sig *top = &v->ams[s->max];
		if (!parse_sig(v, s->idx[s->max][ARC_AMS], false, top))
			tern_strlcpy(v->res.ams_domain, top->domain, sizeof(v->res.ams_domain));
	}
	if (v->res.latest_cv_fail) {
		done(v, ARC_CV_FAIL, "the newest ARC-Seal says cv=fail");
		return TERN_OK;
	}
	if (s->why) {
		done(v, ARC_CV_FAIL, s->why);
		return TERN_OK;
	}
	/* step 3 C, and every seal must parse: a seal that cannot be checked fails */
	for (unsigned i = 1; i <= s->max; i++) {
		struct arc_sig *as = &v->as[i];
		if (parse_sig(v, s->idx[i][ARC_AS], true, as)) {
			done(v, ARC_CV_FAIL, "an ARC-Seal is malformed");
			return TERN_OK;
		}
		if (as->cv != (i == 1 ? ARC_CV_NONE : ARC_CV_PASS)) {
			done(v, ARC_CV_FAIL, "an ARC-Seal has the wrong cv=");
			return TERN_OK;
		}
	}
	/* an older AMS that does not parse only ends oldest-pass; the newest must */
	for (unsigned i = s->max; i >= 1; i--) {
		if (parse_sig(v, s->idx[i][ARC_AMS], false, &v->ams[i]) && i == s->max) {
			done(v, ARC_CV_FAIL, "the newest ARC-Message-Signature is malformed");
			return TERN_OK;
		}
	}
	for (unsigned i = 1; i <= s->max; i++) {
		if ((v->as[i].key = want_key(v, &v->as[i])) < 0) {
			done(v, ARC_CV_FAIL, "key name too long");
			return TERN_OK;
		}
		if (v->ams[i].ok && (v->ams[i].key = want_key(v, &v->ams[i])) < 0)
			v->ams[i].ok = false;
	}
	add_streams(v);
	return TERN_OK;
}

struct dkim_body *arc_verify_body(struct arc_verify *v)
{
	return v->body.n > 0 && !v->body.ended ? &v->body : NULL;
}

void arc_verify_body_end(struct arc_verify *v)
{
	if (v->body_ended)
		return;
	v->body_ended = true;
	bool fin = dkim_body_finish(&v->body); /* every stream, the seal's too */
	v->body_ok = v->streams_ok && fin;
}

int arc_verify_seal_body(struct arc_verify *v)
{
	if (v->body_ended || v->body.ended)
		return TERN_EINVAL;
	int i = dkim_body_add(&v->body, DKIM_CANON_RELAXED, false, 0);
	if (i < 0)
		return TERN_ENOMEM;
	v->seal_stream = i;
	return TERN_OK;
}

int arc_verify_seal_bh(const struct arc_verify *v, char out[45])
{
	if (!v->body_ended || v->seal_stream < 0)
		return TERN_EINVAL;
	if (v->body.failed)
		return TERN_EIO;
	struct tbuf t = TBUF_INIT(64);
	int rc = tern_base64_encode(v->body.h[v->seal_stream].digest, 32, &t);
	if (rc == TERN_OK)
		memcpy(out, t.data, 45); /* 44 chars and the NUL */
	tbuf_free(&t);
	return rc;
}

const char *arc_verify_next_query(struct arc_verify *v, unsigned *qid)
{
	if (v->state != ARC_VS_WAITING)
		return NULL;
	for (size_t i = 0; i < v->n_keys; i++)
		if (!v->keys[i].handed) {
			v->keys[i].handed = true;
			*qid = (unsigned)i;
			return v->keys[i].name;
		}
	return NULL;
}

size_t arc_verify_pending(const struct arc_verify *v)
{
	return v->state == ARC_VS_WAITING ? v->pending : 0;
}

enum arc_verify_state arc_verify_state(const struct arc_verify *v)
{
	if (v->state == ARC_VS_WAITING && v->pending == 0 && v->body_ended)
		return ARC_VS_READY;
	return v->state;
}

void arc_verify_key_answer(struct arc_verify *v, unsigned qid, enum dkim_lookup st,
                           const char *const *txt, size_t n)
{
	if (v->state != ARC_VS_WAITING || qid >= v->n_keys || v->keys[qid].answered)
		return;
	struct arc_key *k = &v->keys[qid];
	k->answered = true;
	v->pending--;
	k->st = st;
	k->why = st == DKIM_LOOKUP_TEMPFAIL ? "key lookup failed (temporary)" : "no key published";
	if (st != DKIM_LOOKUP_OK)
		return;
	struct dkim_keyrec *r = malloc(sizeof(*r));
	k->why = "no usable key record";
	if (!r)
		return;
	for (size_t i = 0; i < n && i < DKIM_KEY_RECORDS_MAX; i++) {
		const char *w;
		if (dkim_keyrec_parse(txt[i], strlen(txt[i]), r, &w) != TERN_OK)
			continue;
		if (r->revoked) {
			k->why = "key revoked";
			break;
		}
		k->pk = dkim_pubkey_decode(r);
		k->type = r->type;
		k->sha256_ok = r->sha256_ok;
		if (!k->pk)
			k->why = "key record holds no usable key";
		break;
	}
	free(r);
}

void arc_verify_expire(struct arc_verify *v)
{
	for (size_t i = 0; i < v->n_keys; i++)
		if (!v->keys[i].answered)
			arc_verify_key_answer(v, (unsigned)i, DKIM_LOOKUP_TEMPFAIL, NULL, 0);
}

/* Whether s's key can check s. NULL, or why not (sets *temp). */
static const char *key_ok(struct arc_verify *v, const struct arc_sig *s, bool *temp)
{
	const struct arc_key *k = &v->keys[s->key];
	if (!k->pk) {
		*temp = *temp || k->st == DKIM_LOOKUP_TEMPFAIL;
		return k->why;
	}
	if ((k->type == DKIM_KEY_RSA) != (s->alg == DKIM_ALG_RSA_SHA256) || !k->sha256_ok)
		return "the key does not fit a=";
	if (k->type == DKIM_KEY_RSA) {
		int bits = EVP_PKEY_get_bits(k->pk);
		if (bits < DKIM_RSA_MIN_BITS || bits > DKIM_RSA_MAX_BITS)
			return "RSA key size out of bounds";
	}
	return NULL;
}

/* The field fi without its CRLF and with b= (tag bt of its value) blanked. */
static int blanked(const struct arc_verify *v, const struct arc_sig *s, struct tbuf *out)
{
	const struct dkim_field *f = &v->f[s->field];
	const char *p = v->msg + f->off;
	size_t vo = arc_value_off(v->msg, f), len = f->len;
	const struct dkim_tag *bt = dkim_tags_find(&s->tags, "b");
	TERN_BUG_ON(!bt);
	if (len >= 2 && p[len - 2] == '\r' && p[len - 1] == '\n')
		len -= 2;
	int rc = tbuf_append(out, p, vo + bt->raw_start);
	if (rc == TERN_OK)
		rc = tbuf_append(out, p + vo + bt->raw_end, len - vo - bt->raw_end);
	return rc;
}

/* AMS i: NULL when it verifies, else why. */
static const char *check_ams(struct arc_verify *v, unsigned i, bool *temp)
{
	struct arc_sig *s = &v->ams[i];
	struct tbuf field = TBUF_INIT(DKIM_FIELD_MAX + 4);
	uint8_t hash[32];
	const char *why = "ARC-Message-Signature is malformed";
	if (!s->ok)
		goto out;
	if ((why = key_ok(v, s, temp)) != NULL)
		goto out;
	why = "out of memory";
	if (!v->body_ok || s->stream < 0)
		goto out;
	why = "body hash did not verify";
	if (memcmp(v->body.h[s->stream].digest, s->bh, 32) != 0)
		goto out;
	why = "out of memory";
	if (blanked(v, s, &field) != TERN_OK ||
	    dkim_header_hash(s->hc, v->msg, v->f, v->nf, s->h, s->n_h, s->field, field.data,
	                     field.len, hash) != TERN_OK)
		goto out;
	why = "signature did not verify";
	if (dkim_crypto_verify(v->keys[s->key].pk, s->alg, hash, s->b, s->b_len))
		why = NULL;
out:
	if (why && strcmp(why, "out of memory") == 0)
		*temp = true;
	tbuf_free(&field);
	return why;
}

/* Feeds field p[0..n) relaxed to md (without its CRLF when last). */
static bool feed(EVP_MD_CTX *md, struct tbuf *t, const char *p, size_t n, bool last)
{
	tbuf_reset(t);
	if (dkim_canon_header(DKIM_CANON_RELAXED, p, n, t) != TERN_OK)
		return false;
	return EVP_DigestUpdate(md, t->data, last ? t->len - 2 : t->len) == 1;
}

/*
 * What each AS signs (§5.1.1: sets 1..i, then AS i with b= blanked). AS i's
 * input is AS i-1's plus one set, so one running hash copied at each step
 * keeps the work linear in the header, not quadratic in the set count.
 */
static void seal_hashes(struct arc_verify *v)
{
	EVP_MD_CTX *run = EVP_MD_CTX_new(), *one = EVP_MD_CTX_new();
	struct tbuf t = TBUF_INIT(DKIM_VERIFY_MAX_HEADER + 4), bl = TBUF_INIT(DKIM_FIELD_MAX + 4);
	unsigned dl;
	bool ok = run && one && EVP_DigestInit_ex(run, EVP_sha256(), NULL) == 1;
	for (unsigned i = 1; ok && i <= v->sets.max; i++) {
		for (int kind = ARC_AAR; ok && kind <= ARC_AS; kind++) {
			const struct dkim_field *f = &v->f[v->sets.idx[i][kind]];
			if (kind == ARC_AS) {
				tbuf_reset(&bl);
				ok = blanked(v, &v->as[i], &bl) == TERN_OK &&
				     EVP_MD_CTX_copy_ex(one, run) == 1 &&
				     feed(one, &t, bl.data, bl.len, true) &&
				     EVP_DigestFinal_ex(one, v->as[i].ahash, &dl) == 1 && dl == 32;
			}
			ok = ok && feed(run, &t, v->msg + f->off, f->len, false);
		}
	}
	v->seals_ok = ok;
	EVP_MD_CTX_free(run);
	EVP_MD_CTX_free(one);
	tbuf_free(&t);
	tbuf_free(&bl);
}

/* AS i, over sets 1..i. */
static const char *check_as(struct arc_verify *v, unsigned i, bool *temp)
{
	struct arc_sig *s = &v->as[i];
	const char *why = key_ok(v, s, temp);
	if (why)
		return why;
	if (!v->seals_ok) {
		*temp = true;
		return "out of memory";
	}
	if (!dkim_crypto_verify(v->keys[s->key].pk, s->alg, s->ahash, s->b, s->b_len))
		return "signature did not verify";
	return NULL;
}

int arc_verify_finish(struct arc_verify *v)
{
	if (arc_verify_state(v) != ARC_VS_READY)
		return TERN_EINVAL;
	unsigned n = v->sets.max;
	bool temp = false;
	const char *why;
	/* step 4 (the body hashes are in: arc_verify_body_end) */
	if ((why = check_ams(v, n, &temp)) != NULL) {
		v->res.temporary = temp;
		snprintf(v->res.reason, sizeof(v->res.reason), "ARC-Message-Signature i=%u: %s", n,
		         why);
		done(v, ARC_CV_FAIL, v->res.reason);
		return TERN_OK;
	}
	/* step 5 */
	v->res.oldest_pass = 0;
	for (unsigned m = n - 1; m >= 1; m--) {
		bool t2 = false;
		if (check_ams(v, m, &t2)) {
			v->res.oldest_pass = m + 1;
			break;
		}
	}
	/* step 6 */
	seal_hashes(v);
	for (unsigned i = n; i >= 1; i--) {
		if ((why = check_as(v, i, &temp)) != NULL) {
			v->res.temporary = temp;
			snprintf(v->res.reason, sizeof(v->res.reason), "ARC-Seal i=%u: %s", i, why);
			done(v, ARC_CV_FAIL, v->res.reason);
			return TERN_OK;
		}
	}
	done(v, ARC_CV_PASS, NULL);
	return TERN_OK;
}

const struct arc_result *arc_verify_result(const struct arc_verify *v)
{
	return v->state == ARC_VS_DONE ? &v->res : NULL;
}

void arc_keytab_lookup(void *arg, struct arc_verify *v, unsigned qid, const char *name)
{
	const char *txt[DKIM_KEY_RECORDS_MAX];
	size_t n;
	enum dkim_lookup st = dkim_keytab_get(arg, name, txt, DKIM_KEY_RECORDS_MAX, &n);
	arc_verify_key_answer(v, qid, st, txt, n);
}

int arc_verify_message(struct arc_verify *v, const char *msg, size_t len, arc_lookup_fn fn,
                       void *arg)
{
	unsigned qid;
	const char *name;
	int rc = arc_verify_input(v, msg, len);
	if (rc != TERN_OK)
		return rc;
	while ((name = arc_verify_next_query(v, &qid)) != NULL)
		fn(arg, v, qid, name);
	arc_verify_expire(v);
	if (arc_verify_state(v) == ARC_VS_READY)
		return arc_verify_finish(v);
	return TERN_OK;
}

/* ------------------------------------------------------------ resolver */

static const char *aq_next(void *obj, unsigned *qid)
{
	return arc_verify_next_query(obj, qid);
}

static void aq_answer(void *obj, unsigned qid, enum dkim_lookup st, const char *const *txt,
                      size_t n)
{
	arc_verify_key_answer(obj, qid, st, txt, n);
}

static void aq_expire(void *obj)
{
	arc_verify_expire(obj);
}

static const struct dkim_keyq_ops arc_ops = {aq_next, aq_answer, aq_expire};

struct dkim_dns *arc_verify_dns_start(struct arc_verify *v, struct dns_resolver *res,
                                      struct event_base *base, unsigned timeout_ms,
                                      void (*done_cb)(void *arg), void *arg)
{
	return dkim_keyq_dns_start(&arc_ops, v, res, base, timeout_ms, done_cb, arg);
}
