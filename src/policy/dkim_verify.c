/*
 * dkim_verify.c — the DKIM verifier (RFC 6376 §6, RFC 8301, RFC 8463) as an
 * explicit state machine: HEADERS -> WAITING -> READY -> DONE.
 *
 * dkim_verify_headers parses every DKIM-Signature field and decides at once
 * what needs no key (bad syntax, expired, over budget); the others ask for
 * their key record (one query per distinct name) and for a body stream (one
 * per distinct canonicalization and l=). Answers and the body arrive in any
 * order; dkim_verify_finish checks, per signature, key record, body hash,
 * then signature, and records one result with a reason.
 *
 * Owns: the per-signature result and its reason. Never: does I/O or waits
 * (the caller brings answers), trusts a key record it could not parse, lets
 * content after l= pass unless the caller said so, or uses more than
 * max_signatures signatures' worth of work on one message.
 * Exposure: every byte comes from the network (message, DNS).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/err.h"
#include "policy/dkim_internal.h"

#define QNAME_MAX 253

const char *dkim_status_name(enum dkim_status s)
{
	switch (s) {
	case DKIM_PASS:
		return "pass";
	case DKIM_FAIL:
		return "fail";
	case DKIM_NEUTRAL:
		return "neutral";
	case DKIM_TEMPERROR:
		return "temperror";
	case DKIM_PERMERROR:
		return "permerror";
	case DKIM_POLICY:
		return "policy";
	}
	return "neutral";
}

void dkim_verify_opts_init(struct dkim_verify_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->max_signatures = DKIM_VERIFY_MAX_SIGS;
	o->clock_skew = 300;
}

/* One key record of an answer, parsed on arrival: its flags, and the key
 * itself decoded (the record's bytes are not kept). */
struct vkey {
	bool ok;         /* the record parsed */
	const char *why; /* when not */
	enum dkim_keytype type;
	bool sha256_ok, email_ok, testing, strict, revoked;
	EVP_PKEY *pk; /* NULL if revoked or unusable */
};

struct vquery {
	char name[QNAME_MAX + 1];
	bool handed, answered, timed_out;
	enum dkim_lookup st;
	struct vkey k[DKIM_KEY_RECORDS_MAX];
	size_t nk;
};

struct vsig {
	struct dkim_sig sig;
	size_t field;        /* index of its DKIM-Signature field */
	size_t vstart, vlen; /* its value in the header text, without the CRLF */
	int query, stream;   /* -1: none */
	bool decided;        /* result fixed before finish */
	struct dkim_result r;
	char reason[160];
};

struct dkim_verify {
	struct dkim_verify_opts o;
	enum dkim_verify_state state;
	char *hdr;
	size_t hlen;
	struct dkim_field *f;
	size_t nf;
	struct vsig *s;
	size_t ns;
	struct vquery *q;
	size_t nq, next_q;
	struct dkim_body body;
	bool body_ended;
};

struct dkim_verify *dkim_verify_new(const struct dkim_verify_opts *opts)
{
	struct dkim_verify *v = calloc(1, sizeof(*v));
	if (!v)
		return NULL;
	if (opts)
		v->o = *opts;
	else
		dkim_verify_opts_init(&v->o);
	if (v->o.now == 0)
		v->o.now = (int64_t)time(NULL);
	if (v->o.max_signatures == 0)
		v->o.max_signatures = DKIM_VERIFY_MAX_SIGS;
	v->state = DKIM_VS_HEADERS;
	return v;
}

void dkim_verify_free(struct dkim_verify *v)
{
	if (!v)
		return;
	for (size_t i = 0; i < v->nq; i++)
		for (size_t j = 0; j < v->q[i].nk; j++)
			EVP_PKEY_free(v->q[i].k[j].pk);
	free(v->q);
	free(v->s);
	free(v->f);
	free(v->hdr);
	dkim_body_clear(&v->body);
	free(v);
}

static void update_state(struct dkim_verify *v)
{
	if (v->state != DKIM_VS_WAITING)
		return;
	for (size_t i = 0; i < v->nq; i++)
		if (!v->q[i].answered)
			return;
	if (v->body.n > 0 && !v->body_ended)
		return;
	v->state = DKIM_VS_READY;
}

static void decide(struct vsig *s, enum dkim_status st, const char *why)
{
	s->decided = true;
	s->r.status = st;
	s->r.reason = why;
}

static void fill_ids(struct vsig *s)
{
	s->r.domain = s->sig.domain;
	s->r.selector = s->sig.selector;
	s->r.auid = s->sig.auid;
	s->r.b = s->sig.b64;
	s->r.algorithm = s->sig.algorithm;
	s->r.reason = "";
	s->query = s->stream = -1;
}

static int add_query(struct dkim_verify *v, const struct dkim_sig *sig)
{
	char name[QNAME_MAX + 16];
	int n = snprintf(name, sizeof(name), "%s._domainkey.%s", sig->selector, sig->domain);
	if (n < 0 || (size_t)n > QNAME_MAX)
		return -2;
	tern_ascii_lower(name);
	for (size_t i = 0; i < v->nq; i++)
		if (strcmp(v->q[i].name, name) == 0)
			return (int)i;
	struct vquery *nq = realloc(v->q, (v->nq + 1) * sizeof(*nq));
	if (!nq)
		return -1;
	v->q = nq;
	memset(&v->q[v->nq], 0, sizeof(v->q[v->nq]));
	memcpy(v->q[v->nq].name, name, (size_t)n + 1);
	return (int)v->nq++;
}

/* What can be decided from the signature and the clock alone. t= and x=
 * have at most 12 digits (dkim_sig_parse), so int64_t holds them. */
static void check_times(struct dkim_verify *v, struct vsig *s)
{
	int64_t now = v->o.now, skew = v->o.clock_skew;
	if (s->sig.has_x && (int64_t)s->sig.x + skew < now) {
		snprintf(s->reason, sizeof(s->reason), "signature expired (x=%llu)",
		         (unsigned long long)s->sig.x);
		decide(s, DKIM_POLICY, s->reason);
	} else if (s->sig.has_t && (int64_t)s->sig.t > now + skew) {
		decide(s, DKIM_POLICY, "signature timestamp is in the future (t=)");
	}
}

int dkim_verify_headers(struct dkim_verify *v, const char *hdr, size_t len)
{
	if (v->state != DKIM_VS_HEADERS)
		return TERN_EINVAL;
	if (len > DKIM_VERIFY_MAX_HEADER)
		return TERN_ELIMIT;
	bool crlf = len >= 2 && hdr[len - 2] == '\r' && hdr[len - 1] == '\n';
	if (!(v->hdr = malloc(len + 3)))
		return TERN_ENOMEM;
	if (len)
		memcpy(v->hdr, hdr, len);
	v->hlen = len;
	if (!crlf && len > 0) {
		v->hdr[v->hlen++] = '\r';
		v->hdr[v->hlen++] = '\n';
	}
	v->hdr[v->hlen] = '\0';
	bool more;
	size_t nf = dkim_fields_index(v->hdr, v->hlen, NULL, DKIM_VERIFY_MAX_FIELDS, &more);
	if (more)
		return TERN_ELIMIT;
	if (!(v->f = calloc(nf ? nf : 1, sizeof(*v->f))))
		return TERN_ENOMEM;
	v->nf = dkim_fields_index(v->hdr, v->hlen, v->f, nf, &more);
	size_t count = 0, evaluated = 0;
	for (size_t i = 0; i < v->nf; i++)
		count += dkim_field_is(v->hdr, &v->f[i], "dkim-signature", 14);
	if (count && !(v->s = calloc(count, sizeof(*v->s))))
		return TERN_ENOMEM;
	for (size_t i = 0; i < v->nf; i++) {
		const struct dkim_field *f = &v->f[i];
		if (!dkim_field_is(v->hdr, f, "dkim-signature", 14))
			continue;
		struct vsig *s = &v->s[v->ns++];
		const char *colon = memchr(v->hdr + f->off, ':', f->len);
		s->field = i;
		s->vstart = (size_t)(colon - v->hdr) + 1;
		s->vlen = f->off + f->len - s->vstart;
		if (s->vlen >= 2 && v->hdr[s->vstart + s->vlen - 2] == '\r' &&
		    v->hdr[s->vstart + s->vlen - 1] == '\n')
			s->vlen -= 2;
		enum dkim_status st;
		const char *why;
		int rc = dkim_sig_parse(v->hdr + s->vstart, s->vlen, &s->sig, &st, &why);
		fill_ids(s);
		if (rc != TERN_OK) {
			decide(s, st, why);
			continue;
		}
		check_times(v, s);
		if (s->decided)
			continue;
		/* The budget counts the signatures that cost work (a lookup, a
		 * body hash, a verification): broken ones added in front cannot
		 * push a good one out. */
		if (++evaluated > v->o.max_signatures) {
			snprintf(s->reason, sizeof(s->reason),
			         "not evaluated: more than %u signatures", v->o.max_signatures);
			decide(s, DKIM_POLICY, s->reason);
			continue;
		}
		s->r.body_limited = s->sig.has_l;
		s->r.body_signed = s->sig.l;
		if ((s->query = add_query(v, &s->sig)) == -2) {
			s->query = -1;
			decide(s, DKIM_PERMERROR, "key name longer than DNS allows");
			continue;
		}
		if (s->query < 0 || (s->stream = dkim_body_add(&v->body, s->sig.bcanon,
		                                               s->sig.has_l, s->sig.l)) < 0)
			return TERN_ENOMEM;
	}
	v->state = DKIM_VS_WAITING;
	update_state(v);
	return TERN_OK;
}

size_t dkim_verify_count(const struct dkim_verify *v)
{
	return v->ns;
}

const char *dkim_verify_next_query(struct dkim_verify *v, unsigned *qid)
{
	while (v->next_q < v->nq) {
		struct vquery *q = &v->q[v->next_q++];
		if (q->answered)
			continue;
		q->handed = true;
		*qid = (unsigned)(q - v->q);
		return q->name;
	}
	return NULL;
}

size_t dkim_verify_pending(const struct dkim_verify *v)
{
	size_t n = 0;
	for (size_t i = 0; i < v->nq; i++)
		n += v->q[i].handed && !v->q[i].answered;
	return n;
}

void dkim_verify_key_answer(struct dkim_verify *v, unsigned qid, enum dkim_lookup st,
                            const char *const *txt, size_t n)
{
	if (qid >= v->nq || v->q[qid].answered)
		return;
	struct vquery *q = &v->q[qid];
	q->answered = true;
	q->st = st;
	struct dkim_keyrec *rec = st == DKIM_LOOKUP_OK && n ? malloc(sizeof(*rec)) : NULL;
	for (size_t i = 0; rec && i < n && q->nk < DKIM_KEY_RECORDS_MAX; i++) {
		struct vkey *k = &q->k[q->nk++];
		k->ok = dkim_keyrec_parse(txt[i], strlen(txt[i]), rec, &k->why) == TERN_OK;
		if (!k->ok)
			continue;
		k->type = rec->type;
		k->sha256_ok = rec->sha256_ok;
		k->email_ok = rec->email_ok;
		k->testing = rec->testing;
		k->strict = rec->strict;
		k->revoked = rec->revoked;
		if (!rec->revoked)
			k->pk = dkim_pubkey_decode(rec);
	}
	if (st == DKIM_LOOKUP_OK && n && !rec)
		q->st = DKIM_LOOKUP_TEMPFAIL; /* out of memory: try again later */
	free(rec);
	if (st == DKIM_LOOKUP_OK && q->nk == 0)
		q->st = DKIM_LOOKUP_NOTFOUND;
	update_state(v);
}

void dkim_verify_expire(struct dkim_verify *v)
{
	for (size_t i = 0; i < v->nq; i++)
		if (!v->q[i].answered) {
			v->q[i].answered = true;
			v->q[i].timed_out = true;
			v->q[i].st = DKIM_LOOKUP_TEMPFAIL;
		}
	update_state(v);
}

struct dkim_body *dkim_verify_body(struct dkim_verify *v)
{
	return &v->body;
}

void dkim_verify_body_end(struct dkim_verify *v)
{
	if (v->body_ended)
		return;
	dkim_body_finish(&v->body);
	v->body_ended = true;
	update_state(v);
}

enum dkim_verify_state dkim_verify_state(const struct dkim_verify *v)
{
	return v->state;
}

/* ------------------------------------------------------------ finish */

/* The signature's own field with b= blanked, no CRLF, into t. */
static int blanked_field(const struct dkim_verify *v, const struct vsig *s, struct tbuf *t)
{
	const struct dkim_tag *b = dkim_value_btag(&s->sig.tags);
	const struct dkim_field *f = &v->f[s->field];
	int rc = tbuf_append(t, v->hdr + f->off, s->vstart - f->off + b->raw_start);
	if (rc == TERN_OK)
		rc = tbuf_append(t, v->hdr + s->vstart + b->raw_end, s->vlen - b->raw_end);
	return rc;
}

static bool auid_domain_is(const char *auid, const char *d)
{
	const char *at = strrchr(auid, '@');
	return at && strcasecmp(at + 1, d) == 0;
}

/* One key record against one signature (§6.1.2 steps 5-8, then §6.1.3). */
static void try_key(struct dkim_verify *v, struct vsig *s, const struct vkey *k,
                    const uint8_t *hhash, bool hh_ok, enum dkim_status *st, const char **why,
                    char *buf, size_t buflen)
{
	const struct dkim_bh *bh = &v->body.h[s->stream];
	s->r.testing = k->testing;
	s->r.key_bits = 0;
	if (k->revoked) {
		*st = DKIM_PERMERROR, *why = "key revoked (empty p=)";
		return;
	}
	if (!k->sha256_ok) {
		*st = DKIM_PERMERROR, *why = "key does not allow sha256 (h=)";
		return;
	}
	if (!k->email_ok) {
		*st = DKIM_PERMERROR, *why = "key is not for email (s=)";
		return;
	}
	if (!k->pk) {
		*st = DKIM_PERMERROR, *why = "key data unusable (p=)";
		return;
	}
	unsigned bits = (unsigned)EVP_PKEY_get_bits(k->pk);
	s->r.key_bits = bits;
	if (s->sig.alg == DKIM_ALG_RSA_SHA256 && bits < DKIM_RSA_MIN_BITS) {
		snprintf(buf, buflen, "RSA key of %u bits, under %u (RFC 8301)", bits,
		         DKIM_RSA_MIN_BITS);
		*st = DKIM_POLICY, *why = buf;
		return;
	}
	if (s->sig.alg == DKIM_ALG_RSA_SHA256 && bits > DKIM_RSA_MAX_BITS) {
		*st = DKIM_PERMERROR, *why = "RSA key larger than 8192 bits";
		return;
	}
	if (k->strict && !auid_domain_is(s->sig.auid, s->sig.domain)) {
		*st = DKIM_POLICY, *why = "key allows no subdomain in i= (t=s)";
		return;
	}
	if (v->body.failed || !hh_ok) {
		*st = DKIM_TEMPERROR, *why = "internal hashing failure";
		return;
	}
	if (s->sig.has_l && bh->total < s->sig.l) {
		*st = DKIM_FAIL, *why = "l= is larger than the body";
		return;
	}
	if (memcmp(bh->digest, s->sig.bh, 32) != 0) {
		*st = DKIM_FAIL, *why = "body hash did not verify";
		return;
	}
	if (!dkim_crypto_verify(k->pk, s->sig.alg, hhash, s->sig.b, s->sig.b_len)) {
		*st = DKIM_FAIL, *why = "signature did not verify";
		return;
	}
	*st = DKIM_PASS, *why = "";
	if (s->sig.has_l && bh->total > s->sig.l) {
		snprintf(buf, buflen, "%llu body bytes after l=%llu are not signed",
		         (unsigned long long)(bh->total - s->sig.l), (unsigned long long)s->sig.l);
		*why = buf;
		if (!v->o.allow_unsigned_body)
			*st = DKIM_POLICY;
	}
}

static void finish_one(struct dkim_verify *v, struct vsig *s)
{
	const struct vquery *q = &v->q[s->query];
	s->r.body_length = v->body.h[s->stream].total;
	if (q->st == DKIM_LOOKUP_TEMPFAIL) {
		decide(s, DKIM_TEMPERROR,
		       q->timed_out ? "key lookup timed out" : "key lookup failed for now (DNS)");
		return;
	}
	if (q->st == DKIM_LOOKUP_NOTFOUND) {
		decide(s, DKIM_PERMERROR, "no key for signature");
		return;
	}
	enum dkim_keytype want =
	    s->sig.alg == DKIM_ALG_RSA_SHA256 ? DKIM_KEY_RSA : DKIM_KEY_ED25519;
	const struct vkey *first_bad = NULL;
	size_t matching = 0;
	for (size_t i = 0; i < q->nk; i++) {
		if (!q->k[i].ok) {
			first_bad = first_bad ? first_bad : &q->k[i];
			continue;
		}
		matching += q->k[i].type == want;
	}
	if (matching == 0) {
		if (first_bad) {
			snprintf(s->reason, sizeof(s->reason), "key record: %s", first_bad->why);
			decide(s, DKIM_PERMERROR, s->reason);
		} else {
			decide(s, DKIM_PERMERROR, "key type (k=) does not match a=");
		}
		return;
	}
	uint8_t hh[32];
	struct tbuf t = TBUF_INIT(DKIM_FIELD_MAX + 64);
	bool hh_ok = blanked_field(v, s, &t) == TERN_OK &&
	             dkim_header_hash(s->sig.hcanon, v->hdr, v->f, v->nf, s->sig.h, s->sig.n_h,
	                              s->field, t.data, t.len, hh) == TERN_OK;
	tbuf_free(&t);
	enum dkim_status best = DKIM_NEUTRAL;
	const char *best_why = NULL;
	char buf[sizeof(s->reason)];
	bool best_testing = false;
	unsigned best_bits = 0;
	/* Several records may answer (§6.1.2 step 4): the first that verifies
	 * wins; if none does, the first one's verdict stands. */
	for (size_t i = 0; i < q->nk; i++) {
		const struct vkey *k = &q->k[i];
		if (!k->ok || k->type != want)
			continue;
		enum dkim_status st;
		const char *why;
		try_key(v, s, k, hh, hh_ok, &st, &why, buf, sizeof(buf));
		if (st == DKIM_PASS || !best_why) {
			best = st;
			best_testing = s->r.testing;
			best_bits = s->r.key_bits;
			if (why == buf) {
				memcpy(s->reason, buf, sizeof(s->reason));
				why = s->reason;
			}
			best_why = why;
		}
		if (st == DKIM_PASS)
			break;
	}
	s->r.testing = best_testing;
	s->r.key_bits = best_bits;
	decide(s, best, best_why);
}

int dkim_verify_finish(struct dkim_verify *v)
{
	if (v->state != DKIM_VS_READY)
		return TERN_EINVAL;
	for (size_t i = 0; i < v->ns; i++)
		if (!v->s[i].decided)
			finish_one(v, &v->s[i]);
	v->state = DKIM_VS_DONE;
	return TERN_OK;
}

const struct dkim_result *dkim_verify_result(const struct dkim_verify *v, size_t i)
{
	return i < v->ns ? &v->s[i].r : NULL;
}

size_t dkim_verify_b_prefix_len(const struct dkim_verify *v, size_t i)
{
	if (i >= v->ns)
		return 0;
	const char *b = v->s[i].r.b;
	size_t n = strlen(b), l = 8;
	for (size_t j = 0; j < v->ns; j++) {
		const char *o = v->s[j].r.b;
		if (j == i || !*o)
			continue;
		size_t c = 0;
		while (b[c] && b[c] == o[c])
			c++;
		if (c >= l)
			l = c + 1;
	}
	return l < n ? l : n;
}

int dkim_verify_message(struct dkim_verify *v, const char *msg, size_t len, dkim_lookup_fn fn,
                        void *arg)
{
	size_t hl, bo;
	unsigned qid;
	const char *name;
	dkim_split_message(msg, len, &hl, &bo);
	int rc = dkim_verify_headers(v, msg, hl);
	if (rc != TERN_OK)
		return rc;
	while ((name = dkim_verify_next_query(v, &qid)) != NULL)
		fn(arg, v, qid, name);
	if (v->body.n > 0)
		dkim_body_update(&v->body, msg + bo, len - bo);
	dkim_verify_body_end(v);
	dkim_verify_expire(v);
	return dkim_verify_finish(v);
}
