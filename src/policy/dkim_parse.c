/*
 * dkim_parse.c — DKIM's pure parsers: tag=value lists (RFC 6376 §3.2), the
 * DKIM-Signature value (§3.5, checked as §6.1.1 says), key records (§3.6.1,
 * RFC 8463 §4.2), and the index of a header block's fields.
 *
 * Owns: every syntax rule and every bound on what a signature or key record
 * may hold. Never: allocates, reads past (pointer, length), or trusts a
 * count from the input; a record that breaks a rule is an error with a
 * reason, never a guess.
 * Exposure: everything here parses bytes from the network (message headers,
 * DNS answers); fuzzed by tests/fuzz/fuzz_dkim_sig.c and fuzz_dkim_key.c.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/codec.h"
#include "core/err.h"
#include "policy/dkim_internal.h"

static bool is_wsp(unsigned char c)
{
	return c == ' ' || c == '\t';
}

static bool is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

/* VALCHAR (%x21-3A / %x3C-7E), plus 8-bit bytes: RFC 6376 §3.2 advises not
 * to preclude UTF-8, and RFC 8616 puts it in i=. */
static bool is_valchar(unsigned char c)
{
	return (c >= 0x21 && c <= 0x7e && c != ';') || c >= 0x80;
}

/* Skips FWS at s[*i]: WSP, or CRLF followed by WSP. Stops (without error) at
 * anything else, including a CRLF that is not folding: the caller sees the
 * CR and refuses it. */
static void skip_fws(const char *s, size_t len, size_t *i)
{
	while (*i < len) {
		unsigned char c = (unsigned char)s[*i];
		if (is_wsp(c)) {
			(*i)++;
		} else if (c == '\r' && *i + 2 < len && s[*i + 1] == '\n' &&
		           is_wsp((unsigned char)s[*i + 2])) {
			*i += 3;
		} else {
			break;
		}
	}
}

int dkim_tags_parse(const char *s, size_t len, struct dkim_taglist *out, const char **why)
{
	size_t i = 0;
	out->n = 0;
	for (;;) {
		skip_fws(s, len, &i);
		if (i == len) {
			if (out->n == 0) {
				*why = "empty tag list";
				return TERN_ESYNTAX;
			}
			return TERN_OK; /* a trailing ';' is allowed */
		}
		size_t ns = i;
		if (!is_alpha((unsigned char)s[i])) {
			*why = s[i] == ';' ? "empty tag" : "bad tag name";
			return TERN_ESYNTAX;
		}
		while (i < len && (is_alpha((unsigned char)s[i]) || is_digit((unsigned char)s[i]) ||
		                   s[i] == '_'))
			i++;
		struct strv name = strv_make(s + ns, i - ns);
		skip_fws(s, len, &i);
		if (i == len || s[i] != '=') {
			*why = "tag without '='";
			return TERN_ESYNTAX;
		}
		i++;
		size_t raw_start = i;
		skip_fws(s, len, &i);
		size_t vs = i, ve = i;
		while (i < len && s[i] != ';') {
			unsigned char c = (unsigned char)s[i];
			if (is_valchar(c)) {
				i++;
				ve = i;
				continue;
			}
			size_t before = i;
			skip_fws(s, len, &i);
			if (i == before) {
				*why = c == '\r' || c == '\n' ? "line break not followed by a space"
				                              : "control character in a tag value";
				return TERN_ESYNTAX;
			}
		}
		for (size_t k = 0; k < out->n; k++)
			if (strv_eq(out->tag[k].name, name)) {
				*why = "duplicate tag";
				return TERN_ESYNTAX;
			}
		if (out->n == DKIM_TAGS_MAX) {
			*why = "too many tags";
			return TERN_ESYNTAX;
		}
		struct dkim_tag *t = &out->tag[out->n++];
		t->name = name;
		t->value = strv_make(s + vs, ve - vs);
		t->raw_start = raw_start;
		t->raw_end = i;
		if (i == len)
			return TERN_OK;
		i++; /* the ';' */
	}
}

const struct dkim_tag *dkim_tags_find(const struct dkim_taglist *l, const char *name)
{
	struct strv n = strv_make(name, strlen(name));
	for (size_t i = 0; i < l->n; i++)
		if (strv_eq(l->tag[i].name, n))
			return &l->tag[i];
	return NULL;
}

const struct dkim_tag *dkim_value_btag(const struct dkim_taglist *tags)
{
	return dkim_tags_find(tags, "b");
}

/* ------------------------------------------------------------ helpers */

bool dkim_valid_name(const char *s, size_t n, bool selector)
{
	size_t label = 0, labels = 0;
	if (n == 0 || n > DKIM_DOMAIN_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
			continue;
		}
		if (!(is_alpha(c) || is_digit(c) || c == '-' || (selector && c == '_')))
			return false;
		if (label++ == 0)
			labels++;
		if (label > 63)
			return false;
	}
	if (label == 0)
		return false; /* empty, or a trailing dot */
	return selector || labels >= 2;
}

bool dkim_valid_field_name(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x21 || c > 0x7e || c == ':')
			return false;
	}
	return true;
}

bool dkim_b64_decode(struct strv in, uint8_t *out, size_t max, size_t *outlen)
{
	char tmp[DKIM_KEYREC_MAX];
	size_t k = 0;
	for (size_t i = 0; i < in.n; i++) {
		unsigned char c = (unsigned char)in.p[i];
		if (is_wsp(c) || c == '\r' || c == '\n')
			continue;
		if (k == sizeof(tmp))
			return false;
		tmp[k++] = (char)c;
	}
	struct tbuf b = TBUF_INIT(max);
	bool ok = tern_base64_decode(tmp, k, &b) == TERN_OK;
	if (ok && b.len > 0)
		memcpy(out, b.data, b.len);
	*outlen = ok ? b.len : 0;
	tbuf_free(&b);
	return ok;
}

/* Copies v into dst (size n) without whitespace; false if it does not fit. */
static bool copy_nows(struct strv v, char *dst, size_t n)
{
	size_t k = 0;
	for (size_t i = 0; i < v.n; i++) {
		unsigned char c = (unsigned char)v.p[i];
		if (is_wsp(c) || c == '\r' || c == '\n')
			continue;
		if (k + 1 >= n)
			return false;
		dst[k++] = (char)c;
	}
	dst[k] = '\0';
	return true;
}

static bool copy_str(struct strv v, char *dst, size_t n)
{
	return strv_copy(v, dst, n) == TERN_OK;
}

/* 1*max DIGIT into *out (saturating at UINT64_MAX). */
static bool parse_digits(struct strv v, size_t max, uint64_t *out)
{
	uint64_t r = 0;
	if (v.n == 0 || v.n > max)
		return false;
	for (size_t i = 0; i < v.n; i++) {
		if (!is_digit((unsigned char)v.p[i]))
			return false;
		unsigned d = (unsigned)(v.p[i] - '0');
		r = r > (UINT64_MAX - d) / 10 ? UINT64_MAX : r * 10 + d;
	}
	*out = r;
	return true;
}

/* Calls fn for each element of a colon-separated list, FWS around the
 * colons dropped. Stops at the first fn returning false. */
static bool each_colon(struct strv v, bool (*fn)(struct strv e, void *arg), void *arg)
{
	size_t i = 0;
	while (i <= v.n) {
		size_t j = i;
		while (j < v.n && v.p[j] != ':')
			j++;
		size_t a = i, b = j;
		while (a < b && (is_wsp((unsigned char)v.p[a]) || v.p[a] == '\r' || v.p[a] == '\n'))
			a++;
		while (b > a && (is_wsp((unsigned char)v.p[b - 1]) || v.p[b - 1] == '\r' ||
		                 v.p[b - 1] == '\n'))
			b--;
		if (!fn(strv_make(v.p + a, b - a), arg))
			return false;
		i = j + 1;
	}
	return true;
}

struct has_arg {
	const char *want;
	const char *also;
	bool found;
};

static bool has_elem(struct strv e, void *arg)
{
	struct has_arg *h = arg;
	if (strv_ieq(e, strv_make(h->want, strlen(h->want))) ||
	    (h->also && strv_ieq(e, strv_make(h->also, strlen(h->also)))))
		h->found = true;
	return true;
}

static bool list_has(struct strv v, const char *want, const char *also)
{
	struct has_arg h = {want, also, false};
	each_colon(v, has_elem, &h);
	return h.found;
}

static int hexval(unsigned char c)
{
	if (is_digit(c))
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* dkim-quoted-printable (§2.11) into dst: =XX decoded, FWS dropped. */
static bool dqp_decode(struct strv v, char *dst, size_t n)
{
	size_t k = 0;
	for (size_t i = 0; i < v.n; i++) {
		unsigned char c = (unsigned char)v.p[i];
		if (is_wsp(c) || c == '\r' || c == '\n')
			continue;
		if (c == '=') {
			int hi, lo;
			if (i + 2 >= v.n)
				return false;
			hi = hexval((unsigned char)v.p[i + 1]);
			lo = hexval((unsigned char)v.p[i + 2]);
			if (hi < 0 || lo < 0)
				return false;
			c = (unsigned char)(hi << 4 | lo);
			i += 2;
		}
		if (c == 0 || k + 1 >= n)
			return false;
		dst[k++] = (char)c;
	}
	dst[k] = '\0';
	return true;
}

/* ------------------------------------------------------------ signature */

struct h_arg {
	struct strv *out;
	size_t max, n;
	const char *why;
};

static bool add_h(struct strv e, void *arg)
{
	struct h_arg *a = arg;
	if (!dkim_valid_field_name(e.p, e.n)) {
		a->why = "h= holds something that is not a header field name";
		return false;
	}
	if (a->n == a->max) {
		a->why = "h= names too many fields";
		return false;
	}
	a->out[a->n++] = e;
	return true;
}

bool dkim_parse_h(struct strv v, struct strv *out, size_t max, size_t *n, const char **why)
{
	struct h_arg ha = {out, max, 0, NULL};
	bool ok = each_colon(v, add_h, &ha);
	*n = ha.n;
	*why = ha.why;
	return ok;
}

static bool parse_canon(struct strv v, enum dkim_canon *out)
{
	if (strv_ieq(v, STRV("simple"))) {
		*out = DKIM_CANON_SIMPLE;
		return true;
	}
	if (strv_ieq(v, STRV("relaxed"))) {
		*out = DKIM_CANON_RELAXED;
		return true;
	}
	return false;
}

bool dkim_parse_c(struct strv v, enum dkim_canon *hc, enum dkim_canon *bc)
{
	const char *slash = memchr(v.p, '/', v.n);
	size_t hl = slash ? (size_t)(slash - v.p) : v.n;
	*bc = DKIM_CANON_SIMPLE;
	return parse_canon(strv_make(v.p, hl), hc) &&
	       (!slash || parse_canon(strv_make(slash + 1, v.n - hl - 1), bc));
}

/* i= must be d= or under it (§6.1.1). */
static bool auid_in_domain(const char *auid, const char *d)
{
	const char *at = strrchr(auid, '@');
	if (!at)
		return false;
	const char *dom = at + 1;
	size_t dl = strlen(dom), l = strlen(d);
	if (!dkim_valid_name(dom, dl, false))
		return false;
	if (dl == l)
		return strcasecmp(dom, d) == 0;
	return dl > l && dom[dl - l - 1] == '.' && strcasecmp(dom + dl - l, d) == 0;
}

static int bad(enum dkim_status *st, const char **why, enum dkim_status s, const char *w)
{
	*st = s;
	*why = w;
	return TERN_ESYNTAX;
}

int dkim_sig_parse(const char *value, size_t len, struct dkim_sig *o, enum dkim_status *st,
                   const char **why)
{
	memset(o, 0, sizeof(*o));
	*st = DKIM_NEUTRAL;
	*why = "";
	if (len > DKIM_FIELD_MAX)
		return bad(st, why, DKIM_NEUTRAL, "signature field too long");
	const char *w;
	if (dkim_tags_parse(value, len, &o->tags, &w) != TERN_OK)
		return bad(st, why, DKIM_NEUTRAL, w);
	const struct dkim_tag *v = dkim_tags_find(&o->tags, "v"),
	                      *a = dkim_tags_find(&o->tags, "a"),
	                      *b = dkim_tags_find(&o->tags, "b"),
	                      *bh = dkim_tags_find(&o->tags, "bh"),
	                      *c = dkim_tags_find(&o->tags, "c"),
	                      *d = dkim_tags_find(&o->tags, "d"),
	                      *h = dkim_tags_find(&o->tags, "h"),
	                      *i = dkim_tags_find(&o->tags, "i"),
	                      *l = dkim_tags_find(&o->tags, "l"),
	                      *q = dkim_tags_find(&o->tags, "q"),
	                      *s = dkim_tags_find(&o->tags, "s"),
	                      *t = dkim_tags_find(&o->tags, "t"),
	                      *x = dkim_tags_find(&o->tags, "x");

	/* What a result reports, filled in before any check can fail. */
	bool d_fits = d && copy_str(d->value, o->domain, sizeof(o->domain));
	bool s_fits = s && copy_str(s->value, o->selector, sizeof(o->selector));
	if (a) {
		size_t n =
		    a->value.n < sizeof(o->algorithm) - 1 ? a->value.n : sizeof(o->algorithm) - 1;
		memcpy(o->algorithm, a->value.p, n);
		o->algorithm[n] = '\0';
	}
	bool b64_fits = b && copy_nows(b->value, o->b64, sizeof(o->b64));
	if (!b64_fits)
		o->b64[0] = '\0';
	if (i && !dqp_decode(i->value, o->auid, sizeof(o->auid)))
		o->auid[0] = '\0';
	else if (!i && d_fits && strlen(o->domain) + 1 < sizeof(o->auid))
		snprintf(o->auid, sizeof(o->auid), "@%s", o->domain);

	if (!v)
		return bad(st, why, DKIM_NEUTRAL, "no v= tag");
	if (!strv_eq(v->value, STRV("1")))
		return bad(st, why, DKIM_NEUTRAL, "incompatible version (v=)");
	if (!a || !b || !bh || !d || !h || !s)
		return bad(st, why, DKIM_NEUTRAL, "a required tag is missing (a b bh d h s)");
	if (strv_ieq(a->value, STRV("rsa-sha256")))
		o->alg = DKIM_ALG_RSA_SHA256;
	else if (strv_ieq(a->value, STRV("ed25519-sha256")))
		o->alg = DKIM_ALG_ED25519_SHA256;
	else if (strv_ieq(a->value, STRV("rsa-sha1")))
		return bad(st, why, DKIM_POLICY, "rsa-sha1 is no longer accepted (RFC 8301)");
	else
		return bad(st, why, DKIM_NEUTRAL, "unsupported algorithm (a=)");
	if (!b64_fits || !dkim_b64_decode(b->value, o->b, sizeof(o->b), &o->b_len) || o->b_len == 0)
		return bad(st, why, DKIM_NEUTRAL, "b= is not a base64 signature");
	size_t bhl;
	if (!dkim_b64_decode(bh->value, o->bh, sizeof(o->bh), &bhl) || bhl != sizeof(o->bh))
		return bad(st, why, DKIM_NEUTRAL, "bh= is not a base64 SHA-256 hash");
	o->hcanon = o->bcanon = DKIM_CANON_SIMPLE;
	if (c && !dkim_parse_c(c->value, &o->hcanon, &o->bcanon))
		return bad(st, why, DKIM_NEUTRAL, "unsupported canonicalization (c=)");
	if (!d_fits || !dkim_valid_name(d->value.p, d->value.n, false))
		return bad(st, why, DKIM_NEUTRAL, "d= is not a domain name");
	if (!s_fits || !dkim_valid_name(s->value.p, s->value.n, true))
		return bad(st, why, DKIM_NEUTRAL, "s= is not a selector");
	if (!dkim_parse_h(h->value, o->h, DKIM_H_MAX, &o->n_h, &w))
		return bad(st, why, DKIM_NEUTRAL, w);
	bool from = false;
	for (size_t k = 0; k < o->n_h; k++)
		from = from || strv_ieq(o->h[k], STRV("from"));
	if (!from)
		return bad(st, why, DKIM_NEUTRAL, "From is not signed (h=)");
	if (i) {
		if (!dqp_decode(i->value, o->auid, sizeof(o->auid)))
			return bad(st, why, DKIM_NEUTRAL, "i= is not an identity");
		if (!auid_in_domain(o->auid, o->domain))
			return bad(st, why, DKIM_NEUTRAL, "i= is not within d=");
	}
	if (l) {
		if (!parse_digits(l->value, 76, &o->l))
			return bad(st, why, DKIM_NEUTRAL, "l= is not a number");
		o->has_l = true;
	}
	if (q && !list_has(q->value, "dns/txt", NULL))
		return bad(st, why, DKIM_NEUTRAL, "no supported query method (q=)");
	if (t) {
		if (!parse_digits(t->value, 12, &o->t))
			return bad(st, why, DKIM_NEUTRAL, "t= is not a time");
		o->has_t = true;
	}
	if (x) {
		if (!parse_digits(x->value, 12, &o->x))
			return bad(st, why, DKIM_NEUTRAL, "x= is not a time");
		o->has_x = true;
		if (o->has_t && o->x <= o->t)
			return bad(st, why, DKIM_NEUTRAL, "x= is not after t=");
	}
	return TERN_OK;
}

/* ------------------------------------------------------------ key record */

int dkim_keyrec_parse(const char *txt, size_t len, struct dkim_keyrec *out, const char **why)
{
	struct dkim_taglist tl;
	memset(out, 0, sizeof(*out));
	out->type = DKIM_KEY_RSA;
	out->sha256_ok = true;
	out->email_ok = true;
	if (len > DKIM_KEYREC_MAX) {
		*why = "key record too long";
		return TERN_ESYNTAX;
	}
	if (dkim_tags_parse(txt, len, &tl, why) != TERN_OK)
		return TERN_ESYNTAX;
	const struct dkim_tag *v = dkim_tags_find(&tl, "v"), *h = dkim_tags_find(&tl, "h"),
	                      *k = dkim_tags_find(&tl, "k"), *p = dkim_tags_find(&tl, "p"),
	                      *s = dkim_tags_find(&tl, "s"), *t = dkim_tags_find(&tl, "t");
	if (v && (v != &tl.tag[0] || !strv_eq(v->value, STRV("DKIM1")))) {
		*why = "not a DKIM1 key record (v=)";
		return TERN_ESYNTAX;
	}
	if (h)
		out->sha256_ok = list_has(h->value, "sha256", NULL);
	if (k) {
		if (strv_ieq(k->value, STRV("rsa")))
			out->type = DKIM_KEY_RSA;
		else if (strv_ieq(k->value, STRV("ed25519")))
			out->type = DKIM_KEY_ED25519;
		else {
			*why = "unknown key type (k=)";
			return TERN_ESYNTAX;
		}
	}
	if (!p) {
		*why = "no p= in the key record";
		return TERN_ESYNTAX;
	}
	if (p->value.n == 0) {
		out->revoked = true;
	} else if (!dkim_b64_decode(p->value, out->p, sizeof(out->p), &out->p_len) ||
	           out->p_len == 0) {
		*why = "p= is not base64";
		return TERN_ESYNTAX;
	}
	if (s)
		out->email_ok = list_has(s->value, "email", "*");
	if (t) {
		out->testing = list_has(t->value, "y", NULL);
		out->strict = list_has(t->value, "s", NULL);
	}
	return TERN_OK;
}

/* ------------------------------------------------------------ header block */

size_t dkim_fields_index(const char *hdr, size_t len, struct dkim_field *out, size_t max,
                         bool *more)
{
	size_t i = 0, n = 0;
	*more = false;
	while (i < len) {
		const char *p = hdr + i;
		size_t rest = len - i, line = rest, next = len;
		/* The line runs to the first CRLF; a bare CR or LF is content. */
		for (size_t k = 0; k < rest;) {
			const char *cr = memchr(p + k, '\r', rest - k);
			if (!cr)
				break;
			k = (size_t)(cr - p);
			if (k + 1 < rest && p[k + 1] == '\n') {
				line = k;
				next = i + k + 2;
				break;
			}
			k++;
		}
		if (line == 0)
			break; /* the blank line ends the header */
		if (is_wsp((unsigned char)p[0]) && n > 0) {
			if (out)
				out[n - 1].len = next - out[n - 1].off;
			i = next;
			continue;
		}
		if (n == max) {
			*more = true;
			break;
		}
		if (!out) {
			n++;
			i = next;
			continue;
		}
		struct dkim_field *f = &out[n++];
		f->off = i;
		f->len = next - i;
		const char *colon = memchr(p, ':', line);
		size_t nl = 0;
		if (colon && !is_wsp((unsigned char)p[0])) {
			nl = (size_t)(colon - p);
			while (nl > 0 && is_wsp((unsigned char)p[nl - 1]))
				nl--;
		}
		f->name_len = nl;
		i = next;
	}
	return n;
}

bool dkim_field_is(const char *hdr, const struct dkim_field *f, const char *name, size_t n)
{
	return f->name_len == n && n > 0 && strncasecmp(hdr + f->off, name, n) == 0;
}

void dkim_split_message(const char *msg, size_t len, size_t *hdr_len, size_t *body_off)
{
	if (len >= 2 && msg[0] == '\r' && msg[1] == '\n') {
		*hdr_len = 0;
		*body_off = 2;
		return;
	}
	const char *e = memmem(msg, len, "\r\n\r\n", 4);
	if (!e) {
		*hdr_len = len;
		*body_off = len;
		return;
	}
	*hdr_len = (size_t)(e - msg) + 2;
	*body_off = (size_t)(e - msg) + 4;
}
