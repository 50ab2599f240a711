/*
 * authres.c — the Authentication-Results header field (RFC 8601): building
 * ours, and removing the ones a sender may not bring in (§5), with the ARC
 * sets (RFC 8617) whose ARC-Authentication-Results claim our authserv-id.
 *
 * Owns: the A-R syntax we write (resinfo per line, folded at 78 columns,
 * values quoted when they are not tokens), the authserv-id parser, and the
 * header-block filter.
 * Must never: write a byte from the network that could break the field
 * (CR, LF, other controls: such a value is left out), read past (hdr, len),
 * or change a byte of the fields it keeps.
 */
#include "policy/dmarc.h"

#include <stdio.h>
#include <string.h>

#include "core/err.h"

#define FOLD_AT 78
#define ARC_INSTANCE_MAX 50 /* RFC 8617 §4.2.1 */

/* --------------------------------------------------------------- building */

/* RFC 2045 token: printable ASCII except SPACE and tspecials. */
static bool is_token_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && strchr("()<>@,;:\\\"/[]?=", c) == NULL;
}

static bool has_ctl(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
			return true;
	return false;
}

struct writer {
	struct tbuf *b;
	int rc;
	size_t col;
};

static void put(struct writer *w, const char *s, size_t n)
{
	if (w->rc == TERN_OK)
		w->rc = tbuf_append(w->b, s, n);
	w->col += n;
}

/* value: the token itself, or a quoted-string. */
static void format_value(const char *v, char *out, size_t outlen)
{
	bool token = *v != '\0';
	size_t o = 0;

	for (const unsigned char *p = (const unsigned char *)v; *p; p++)
		token = token && is_token_char(*p);
	if (token) {
		tern_strlcpy(out, v, outlen);
		return;
	}
	if (outlen < 3) {
		out[0] = '\0';
		return;
	}
	out[o++] = '"';
	for (const char *p = v; *p && o + 3 < outlen; p++) {
		if (*p == '"' || *p == '\\')
			out[o++] = '\\';
		out[o++] = *p == '\t' ? ' ' : *p;
	}
	out[o++] = '"';
	out[o] = '\0';
}

/*
 * Appends " item", or a fold then "item" if the line would pass FOLD_AT
 * (one column is kept for the ";" that may end the resinfo). An item longer
 * than a line stays whole on its own line: there is no place to fold it.
 */
static void item(struct writer *w, const char *s)
{
	size_t n = strlen(s);

	if (w->col + 1 + n + 1 > FOLD_AT) {
		put(w, "\r\n\t", 3);
		w->col = 8;
	} else {
		put(w, " ", 1);
	}
	put(w, s, n);
}

/* " ptype.property=value", skipped when value is empty or unsafe. */
static void prop(struct writer *w, const char *name, const char *value)
{
	char v[2 * DMARC_DOMAIN_MAX + 8], s[sizeof(v) + 32];

	if (!value || !*value || has_ctl(value) || strlen(value) > DMARC_DOMAIN_MAX)
		return;
	format_value(value, v, sizeof(v));
	snprintf(s, sizeof(s), "%s=%s", name, v);
	item(w, s);
}

/* Starts a resinfo: ";" CRLF TAB "method=result". */
static void resinfo(struct writer *w, const char *method, const char *result)
{
	char s[64];

	put(w, ";\r\n\t", 4);
	w->col = 8;
	snprintf(s, sizeof(s), "%s=%s", method, result);
	put(w, s, strlen(s));
}

static void reason(struct writer *w, const char *why)
{
	char v[160], s[sizeof(v) + 8];

	if (!why || !*why || has_ctl(why) || strlen(why) > 120)
		return;
	/* always a quoted-string: reason text has spaces */
	size_t o = 0;
	v[o++] = '"';
	for (const char *p = why; *p && o + 3 < sizeof(v); p++) {
		if (*p == '"' || *p == '\\')
			v[o++] = '\\';
		v[o++] = *p;
	}
	v[o++] = '"';
	v[o] = '\0';
	snprintf(s, sizeof(s), "reason=%s", v);
	item(w, s);
}

static const char *spf_name(enum dmarc_spf_result r)
{
	static const char *const n[] = {"none",     "neutral",   "pass",     "fail",
	                                "softfail", "temperror", "permerror"};
	return (unsigned)r < sizeof(n) / sizeof(n[0]) ? n[r] : "none";
}

static const char *dkim_name(enum dmarc_dkim_result r)
{
	static const char *const n[] = {"none",   "pass",      "fail",     "neutral",
	                                "policy", "temperror", "permerror"};
	return (unsigned)r < sizeof(n) / sizeof(n[0]) ? n[r] : "none";
}

/* The first 8 characters of b= with folding white space taken out. */
static void short_b(const char *sig, char out[9])
{
	size_t o = 0;
	for (; sig && *sig && o < 8; sig++)
		if (*sig != ' ' && *sig != '\t' && *sig != '\r' && *sig != '\n')
			out[o++] = *sig;
	out[o] = '\0';
}

static void dmarc_resinfo(struct writer *w, const struct dmarc_author *a, bool with_domain)
{
	resinfo(w, "dmarc", dmarc_result_name(a->result));
	if (a->policy_domain[0] && a->result != DMARC_RESULT_PERMERROR) {
		/* the published policy, for people: a comment */
		char c[128];
		const struct dmarc_record *r = &a->record;
		int n = snprintf(
		    c, sizeof(c), "(p=%s",
		    dmarc_policy_name(r->p == DMARC_POLICY_UNSET ? DMARC_POLICY_NONE : r->p));
		if (n > 0 && r->sp != DMARC_POLICY_UNSET)
			n += snprintf(c + n, sizeof(c) - (size_t)n, " sp=%s",
			              dmarc_policy_name(r->sp));
		if (n > 0 && (size_t)n < sizeof(c) && r->np != DMARC_POLICY_UNSET)
			n += snprintf(c + n, sizeof(c) - (size_t)n, " np=%s",
			              dmarc_policy_name(r->np));
		if (n > 0 && (size_t)n < sizeof(c) && r->testing)
			n += snprintf(c + n, sizeof(c) - (size_t)n, " t=y");
		if (n > 0 && (size_t)n < sizeof(c))
			snprintf(c + n, sizeof(c) - (size_t)n, ")");
		item(w, c);
	}
	if (with_domain)
		prop(w, "header.from", a->domain);
	if (a->result == DMARC_RESULT_FAIL)
		prop(w, "policy.dmarc", dmarc_policy_name(a->applied));
}

/* A failing dmarc result we did not act on: what overrode it (RFC 8617
 * §7.2, a trusted sealer's assessment), as a property and a comment. */
static void dmarc_override(struct writer *w, const struct dmarc_author *a, const char *why)
{
	char c[160];
	if (!why || a->result != DMARC_RESULT_FAIL || has_ctl(why) || strchr(why, '(') ||
	    strchr(why, ')') || strchr(why, '\\'))
		return;
	item(w, "policy.override=arc");
	snprintf(c, sizeof(c), "(%s)", why);
	item(w, c);
}

int authres_build(const struct authres_input *in, struct tbuf *out)
{
	struct writer w = {out, TERN_OK, 0};
	char id[DMARC_DOMAIN_MAX + 8];
	bool any = false;

	if (!in->authserv_id || !*in->authserv_id || has_ctl(in->authserv_id) ||
	    strlen(in->authserv_id) > DMARC_DOMAIN_MAX)
		return TERN_EINVAL;
	format_value(in->authserv_id, id, sizeof(id));
	put(&w, "Authentication-Results: ", 24);
	put(&w, id, strlen(id));
	for (size_t i = 0; i < in->n_spf; i++) {
		const struct dmarc_spf *s = &in->spf[i];
		if (s->result == DMARC_SPF_NONE && (!s->domain || !*s->domain))
			continue;
		resinfo(&w, "spf", spf_name(s->result));
		prop(&w, s->identity == DMARC_SPF_HELO ? "smtp.helo" : "smtp.mailfrom", s->domain);
		any = true;
	}
	for (size_t i = 0; i < in->n_dkim; i++) {
		const struct dmarc_dkim *k = &in->dkim[i];
		char b[9];
		resinfo(&w, "dkim", dkim_name(k->result));
		reason(&w, k->reason);
		prop(&w, "header.d", k->domain);
		prop(&w, "header.s", k->selector);
		short_b(k->signature, b);
		prop(&w, "header.b", b);
		any = true;
	}
	if (in->dmarc) {
		const struct dmarc_outcome *o = in->dmarc;
		if (o->n_authors == 0) {
			resinfo(&w, "dmarc", dmarc_result_name(o->result));
			reason(&w, o->from == DMARC_FROM_BAD ? "From header field does not parse"
			                                     : "no From domain");
		}
		for (size_t i = 0; i < o->n_authors; i++) {
			dmarc_resinfo(&w, &o->author[i], true);
			dmarc_override(&w, &o->author[i], in->dmarc_override);
		}
		any = true;
	}
	if (in->arc != AUTHRES_ARC_UNSET) {
		resinfo(&w, "arc",
		        in->arc == AUTHRES_ARC_PASS   ? "pass"
		        : in->arc == AUTHRES_ARC_FAIL ? "fail"
		                                      : "none");
		prop(&w, "smtp.remote-ip", in->arc_remote_ip);
		if (in->arc == AUTHRES_ARC_PASS) {
			char n[16];
			snprintf(n, sizeof(n), "%u", in->arc_oldest_pass);
			prop(&w, "header.oldest-pass", n);
		}
		any = true;
	}
	if (!any)
		put(&w, "; none", 6);
	put(&w, "\r\n", 2);
	return w.rc;
}

/* -------------------------------------------------------------- parsing */

/* Skips CFWS (RFC 5322 §3.2.2, comments nested); returns the new index. */
static size_t skip_cfws(const char *s, size_t n, size_t i)
{
	while (i < n) {
		char c = s[i];
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			i++;
		} else if (c == '(') {
			int depth = 0;
			while (i < n) {
				if (s[i] == '\\')
					i++;
				else if (s[i] == '(')
					depth++;
				else if (s[i] == ')' && --depth == 0) {
					i++;
					break;
				}
				i++;
			}
			if (depth > 0)
				return n;
		} else {
			break;
		}
	}
	return i;
}

static bool digits(const char *s, size_t n, size_t *i, unsigned *out)
{
	unsigned v = 0;
	size_t k = *i;

	while (k < n && s[k] >= '0' && s[k] <= '9' && v < 100000)
		v = v * 10 + (unsigned)(s[k++] - '0');
	if (k == *i)
		return false;
	*out = v;
	*i = k;
	return true;
}

/*
 * The parser behind authres_parse_id. Returns true when an authserv-id was
 * read into id (and the instance, with arc); *whole says whether the rest
 * up to the first resinfo parsed too. The filter uses the id even when the
 * rest is malformed: a lenient reader could still believe such a field.
 */
static bool parse_id(const char *val, size_t len, bool arc, char *id, size_t idlen,
                     unsigned *version, unsigned *instance, bool *whole)
{
	size_t i = skip_cfws(val, len, 0), o = 0;

	*whole = false;

	*version = 1;
	*instance = 0;
	if (idlen == 0)
		return false;
	if (arc) {
		/* instance = [CFWS] %s"i" [CFWS] "=" [CFWS] 1*2DIGIT, then ";" */
		if (i >= len || val[i] != 'i')
			return false;
		i = skip_cfws(val, len, i + 1);
		if (i >= len || val[i] != '=')
			return false;
		i = skip_cfws(val, len, i + 1);
		if (!digits(val, len, &i, instance))
			return false;
		i = skip_cfws(val, len, i);
		if (i >= len || val[i] != ';')
			return false;
		i = skip_cfws(val, len, i + 1);
	}
	if (i >= len)
		return false;
	if (val[i] == '"') {
		for (i++; i < len && val[i] != '"'; i++) {
			if (val[i] == '\\' && i + 1 < len)
				i++;
			if (o + 1 >= idlen)
				return false;
			id[o++] = val[i];
		}
		if (i >= len)
			return false;
		i++;
	} else {
		while (i < len && is_token_char((unsigned char)val[i])) {
			if (o + 1 >= idlen)
				return false;
			id[o++] = val[i++];
		}
	}
	id[o] = '\0';
	if (o == 0)
		return false;
	i = skip_cfws(val, len, i);
	if (i < len && val[i] >= '0' && val[i] <= '9') {
		if (!digits(val, len, &i, version))
			return true;
		i = skip_cfws(val, len, i);
	}
	*whole = i >= len || val[i] == ';';
	return true;
}

bool authres_parse_id(const char *val, size_t len, bool arc, char *id, size_t idlen,
                      unsigned *version, unsigned *instance)
{
	bool whole;
	return parse_id(val, len, arc, id, idlen, version, instance, &whole) && whole;
}

/* Our authserv-id? ASCII case-insensitive, a trailing dot ignored on both. */
static bool same_id(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	if (la > 1 && a[la - 1] == '.')
		la--;
	if (lb > 1 && b[lb - 1] == '.')
		lb--;
	return la == lb && strv_ieq(strv_make(a, la), strv_make(b, lb));
}

/* In a tag-list value (DKIM syntax), the value of tag name, trimmed. */
static bool tag_value(const char *v, size_t n, const char *name, struct strv *out)
{
	size_t i = 0, nl = strlen(name);

	while (i < n) {
		const char *semi = memchr(v + i, ';', n - i);
		size_t end = semi ? (size_t)(semi - v) : n;
		size_t k = skip_cfws(v, end, i);
		if (end - k > nl && memcmp(v + k, name, nl) == 0) {
			size_t j = skip_cfws(v, end, k + nl);
			if (j < end && v[j] == '=') {
				j = skip_cfws(v, end, j + 1);
				size_t e = end;
				while (e > j && (v[e - 1] == ' ' || v[e - 1] == '\t' ||
				                 v[e - 1] == '\r' || v[e - 1] == '\n'))
					e--;
				*out = strv_make(v + j, e - j);
				return true;
			}
		}
		i = end + 1;
	}
	return false;
}

struct field {
	struct strv all; /* the whole field, with its line end(s) */
	struct strv name;
	struct strv value; /* after the colon, up to the end of the field */
};

/* The field starting at hdr[*pos]; false at the end. */
static bool next_field(const char *hdr, size_t len, size_t *pos, struct field *f)
{
	size_t i = *pos, start = i, k;

	if (i >= len)
		return false;
	do {
		const char *lf = memchr(hdr + i, '\n', len - i);
		i = lf ? (size_t)(lf - hdr) + 1 : len;
	} while (i < len && (hdr[i] == ' ' || hdr[i] == '\t'));
	f->all = strv_make(hdr + start, i - start);
	for (k = start; k < i && hdr[k] != ':' && hdr[k] != ' ' && hdr[k] != '\t' &&
	                hdr[k] != '\r' && hdr[k] != '\n';
	     k++)
		;
	f->name = strv_make(hdr + start, k - start);
	while (k < i && (hdr[k] == ' ' || hdr[k] == '\t'))
		k++;
	if (k < i && hdr[k] == ':') {
		f->value = strv_make(hdr + k + 1, i - k - 1);
	} else {
		/* not a field (a stray line): copied, never matched */
		f->value = strv_make(hdr + i, 0);
		f->name.n = 0;
	}
	*pos = i;
	return true;
}

static bool is_name(const struct field *f, const char *name)
{
	return f->name.n > 0 && strv_ieq(f->name, strv_make(name, strlen(name)));
}

/* The ARC instance of an ARC-Seal / ARC-Message-Signature, 0 if none. */
static unsigned arc_instance(const struct field *f)
{
	struct strv v;
	unsigned n = 0;
	size_t i = 0;

	if (!tag_value(f->value.p, f->value.n, "i", &v) || !digits(v.p, v.n, &i, &n) || i != v.n ||
	    n > ARC_INSTANCE_MAX)
		return 0;
	return n;
}

int authres_strip(const char *hdr, size_t hdr_len, const struct authres_strip_opts *o,
                  struct tbuf *out, size_t *removed)
{
	uint64_t claimed = 0, own = 0; /* bit i: ARC instance i */
	size_t pos = 0, n_removed = 0;
	struct field f;
	char id[DMARC_DOMAIN_MAX + 8];
	unsigned ver, inst;
	bool whole;
	int rc = TERN_OK;

	/* pass 1: which ARC sets claim our authserv-id, which are sealed by us */
	while (next_field(hdr, hdr_len, &pos, &f)) {
		if (is_name(&f, "ARC-Authentication-Results")) {
			if (parse_id(f.value.p, f.value.n, true, id, sizeof(id), &ver, &inst,
			             &whole) &&
			    inst >= 1 && inst <= ARC_INSTANCE_MAX && o->authserv_id &&
			    same_id(id, o->authserv_id))
				claimed |= 1ull << inst;
		} else if (is_name(&f, "ARC-Seal") && o->own_arc_domains) {
			struct strv d;
			unsigned i = arc_instance(&f);
			if (i == 0 || !tag_value(f.value.p, f.value.n, "d", &d))
				continue;
			for (const char *const *p = o->own_arc_domains; *p; p++)
				if (strv_ieq(d, strv_make(*p, strlen(*p))))
					own |= 1ull << i;
		}
	}
	uint64_t drop = claimed & ~own;

	/* pass 2: copy what stays */
	pos = 0;
	while (rc == TERN_OK && next_field(hdr, hdr_len, &pos, &f)) {
		bool gone = false;
		if (is_name(&f, "Authentication-Results")) {
			if (parse_id(f.value.p, f.value.n, false, id, sizeof(id), &ver, &inst,
			             &whole))
				gone = (whole && ver != 1) ||
				       (o->authserv_id && same_id(id, o->authserv_id));
		} else if (is_name(&f, "ARC-Authentication-Results")) {
			gone = parse_id(f.value.p, f.value.n, true, id, sizeof(id), &ver, &inst,
			                &whole) &&
			       inst >= 1 && inst <= ARC_INSTANCE_MAX && (drop & (1ull << inst));
		} else if (is_name(&f, "ARC-Seal") || is_name(&f, "ARC-Message-Signature")) {
			unsigned i = arc_instance(&f);
			gone = i > 0 && (drop & (1ull << i));
		}
		for (const char *const *p = o->extra_names; p && *p && !gone; p++)
			gone = is_name(&f, *p);
		if (!gone) {
			rc = tbuf_append(out, f.all.p, f.all.n);
			continue;
		}
		n_removed++;
		if (o->mode == AUTHRES_RENAME) {
			rc = tbuf_append_str(out, "X-Untrusted-");
			if (rc == TERN_OK)
				rc = tbuf_append(out, f.all.p, f.all.n);
		}
	}
	if (removed)
		*removed = n_removed;
	return rc;
}
