/*
 * dmarc_record.c — the DMARC Policy Record parser (RFC 9989 §4.7-§4.8; RFC
 * 7489 records are read too: their pct, ri and rf tags are historic).
 *
 * Owns: the tag-value syntax of a record, the value rules of each tag, and
 * the §4.10.1 rule for records with unusable policies.
 * Must never: read past (txt, len), trust the record to be NUL-terminated or
 * printable (it comes from anyone's DNS), or reject a whole record for an
 * error in one tag other than v (§4.8: such errors are discarded in favour
 * of defaults).
 */
#include "policy/dmarc.h"

#include <string.h>

#define TAG_NAME_MAX 16

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

static bool is_alpha(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static struct strv trim(struct strv s)
{
	while (s.n > 0 && is_wsp(s.p[0])) {
		s.p++;
		s.n--;
	}
	while (s.n > 0 && is_wsp(s.p[s.n - 1]))
		s.n--;
	return s;
}

/* Case-insensitive comparison with a lowercase literal. */
static bool is_word(struct strv s, const char *lit)
{
	size_t n = strlen(lit);

	if (s.n != n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (lower(s.p[i]) != lit[i])
			return false;
	return true;
}

/* dmarc-value: 1*(%x20-3A / %x3C-7E); ';' cannot occur (it split the tags). */
static bool value_ok(struct strv v)
{
	if (v.n == 0)
		return false;
	for (size_t i = 0; i < v.n; i++) {
		unsigned char c = (unsigned char)v.p[i];
		if (c < 0x20 || c > 0x7e || c == ';')
			return false;
	}
	return true;
}

/*
 * Splits "name *WSP = *WSP value" (already trimmed). name is 1*ALPHA. False
 * if the segment is not of that shape.
 */
static bool split_tag(struct strv seg, struct strv *name, struct strv *value)
{
	size_t i = 0;

	while (i < seg.n && is_alpha(seg.p[i]))
		i++;
	if (i == 0)
		return false;
	*name = strv_make(seg.p, i);
	while (i < seg.n && is_wsp(seg.p[i]))
		i++;
	if (i >= seg.n || seg.p[i] != '=')
		return false;
	*value = trim(strv_make(seg.p + i + 1, seg.n - i - 1));
	return true;
}

static enum dmarc_policy parse_policy(struct strv v)
{
	if (is_word(v, "none"))
		return DMARC_POLICY_NONE;
	if (is_word(v, "quarantine"))
		return DMARC_POLICY_QUARANTINE;
	if (is_word(v, "reject"))
		return DMARC_POLICY_REJECT;
	return DMARC_POLICY_INVALID;
}

/* dmarc-fo: 0, 1, d, s separated by ':', each at most once, 0 and 1 not both. */
static bool parse_fo(struct strv v, unsigned *out)
{
	unsigned bits = 0;
	size_t i = 0;

	while (i < v.n) {
		unsigned b;
		switch (lower(v.p[i])) {
		case '0':
			b = DMARC_FO_0;
			break;
		case '1':
			b = DMARC_FO_1;
			break;
		case 'd':
			b = DMARC_FO_D;
			break;
		case 's':
			b = DMARC_FO_S;
			break;
		default:
			return false;
		}
		if (bits & b)
			return false;
		bits |= b;
		i++;
		if (i < v.n) {
			if (v.p[i] != ':' || i + 1 == v.n)
				return false;
			i++;
		}
	}
	if (bits == 0 || ((bits & DMARC_FO_0) && (bits & DMARC_FO_1)))
		return false;
	*out = bits;
	return true;
}

/* 1*DIGIT with a ceiling; false if empty, not digits or above max. */
static bool parse_number(struct strv v, long max, long *out)
{
	long n = 0;

	if (v.n == 0)
		return false;
	for (size_t i = 0; i < v.n; i++) {
		if (!is_digit(v.p[i]))
			return false;
		n = n * 10 + (v.p[i] - '0');
		if (n > max)
			return false;
	}
	*out = n;
	return true;
}

static bool is_hex(char c)
{
	return is_digit(c) || (lower(c) >= 'a' && lower(c) <= 'f');
}

/*
 * An RFC 3986 URI as DMARC uses it (§4.8 dmarc-uri): scheme ":" then URI
 * characters, with ',' and '!' only percent-encoded. A mailto: URI must
 * also name an address ("local@domain" before any '?').
 */
static bool uri_ok(struct strv u)
{
	size_t i = 0;

	if (u.n == 0 || !is_alpha(u.p[0]))
		return false;
	while (i < u.n && (is_alpha(u.p[i]) || is_digit(u.p[i]) || u.p[i] == '+' || u.p[i] == '-' ||
	                   u.p[i] == '.'))
		i++;
	if (i >= u.n || u.p[i] != ':' || i + 1 == u.n)
		return false;
	size_t scheme_len = i++;
	for (size_t k = i; k < u.n; k++) {
		char c = u.p[k];
		if (c == '%') {
			if (k + 2 >= u.n || !is_hex(u.p[k + 1]) || !is_hex(u.p[k + 2]))
				return false;
			k += 2;
			continue;
		}
		if (is_alpha(c) || is_digit(c) || strchr("-._~:/?#[]@$&'()*+;=", c) != NULL)
			continue;
		return false;
	}
	if (is_word(strv_make(u.p, scheme_len), "mailto")) {
		struct strv a = strv_make(u.p + i, u.n - i);
		const char *q = memchr(a.p, '?', a.n);
		if (q)
			a.n = (size_t)(q - a.p);
		const char *at = memchr(a.p, '@', a.n);
		if (!at || at == a.p || (size_t)(at - a.p) + 1 >= a.n)
			return false;
	}
	return true;
}

/*
 * dmarc-urilist: URIs separated by *WSP "," *WSP, each optionally followed
 * by the obsolete "!" 1*DIGIT [k/m/g/t] size, which is dropped. Valid URIs
 * are kept (up to the limits), bad ones counted. False if none is valid.
 */
static bool parse_uris(struct strv v, struct dmarc_uri_list *l)
{
	size_t start = 0;

	memset(l, 0, sizeof(*l));
	while (start <= v.n) {
		const char *comma = memchr(v.p + start, ',', v.n - start);
		size_t end = comma ? (size_t)(comma - v.p) : v.n;
		struct strv u = trim(strv_make(v.p + start, end - start));
		const char *bang = memchr(u.p, '!', u.n);
		bool ok = true;
		struct strv sz = {NULL, 0};

		if (bang) {
			/* obs-dmarc-report-size */
			size_t k = (size_t)(bang - u.p) + 1, digits = 0;
			while (k < u.n && is_digit(u.p[k])) {
				k++;
				digits++;
			}
			if (k < u.n && strchr("kmgt", lower(u.p[k])) != NULL)
				k++;
			ok = digits > 0 && k == u.n;
			sz = strv_make(bang + 1, u.n - (size_t)(bang - u.p) - 1);
			u.n = (size_t)(bang - u.p);
		}
		if (ok && uri_ok(u)) {
			if (l->n < DMARC_URIS_MAX && u.n <= DMARC_URI_MAX) {
				memcpy(l->uri[l->n], u.p, u.n);
				l->uri[l->n][u.n] = '\0';
				if (sz.n > 0 && sz.n < sizeof(l->size[0])) {
					memcpy(l->size[l->n], sz.p, sz.n);
					l->size[l->n][sz.n] = '\0';
				}
				l->n++;
			} else {
				l->n_dropped++;
			}
		} else {
			l->n_invalid++;
		}
		if (!comma)
			break;
		start = end + 1;
	}
	return l->n + l->n_dropped > 0;
}

enum tag_id {
	TAG_P,
	TAG_SP,
	TAG_NP,
	TAG_T,
	TAG_PSD,
	TAG_ADKIM,
	TAG_ASPF,
	TAG_FO,
	TAG_RUA,
	TAG_RUF,
	TAG_PCT,
	TAG_RI,
	TAG_V,
	TAG_UNKNOWN,
};

static enum tag_id tag_of(struct strv name)
{
	static const char *const names[] = {"p",  "sp",  "np",  "t",   "psd", "adkim", "aspf",
	                                    "fo", "rua", "ruf", "pct", "ri",  "v"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (is_word(name, names[i]))
			return (enum tag_id)i;
	return TAG_UNKNOWN;
}

/* Applies one known tag; false if its value is malformed. */
static bool apply_tag(enum tag_id id, struct strv v, struct dmarc_record *r)
{
	long n;

	switch (id) {
	case TAG_P:
	case TAG_SP:
	case TAG_NP: {
		enum dmarc_policy p = parse_policy(v);
		enum dmarc_policy *dst = id == TAG_P ? &r->p : id == TAG_SP ? &r->sp : &r->np;
		*dst = p;
		return p != DMARC_POLICY_INVALID;
	}
	case TAG_T:
		if (is_word(v, "y") || is_word(v, "n")) {
			r->testing = is_word(v, "y");
			r->t_set = true;
			return true;
		}
		return false;
	case TAG_PSD:
		if (is_word(v, "y") || is_word(v, "n") || is_word(v, "u")) {
			r->psd = lower(v.p[0]);
			return true;
		}
		return false;
	case TAG_ADKIM:
	case TAG_ASPF:
		if (is_word(v, "r") || is_word(v, "s")) {
			bool strict = is_word(v, "s");
			if (id == TAG_ADKIM)
				r->adkim_strict = strict;
			else
				r->aspf_strict = strict;
			return true;
		}
		return false;
	case TAG_FO:
		return parse_fo(v, &r->fo);
	case TAG_RUA:
		return parse_uris(v, &r->rua);
	case TAG_RUF:
		return parse_uris(v, &r->ruf);
	case TAG_PCT:
		if (!parse_number(v, 100, &n))
			return false;
		r->pct = (int)n;
		return true;
	case TAG_RI:
		if (!parse_number(v, 0xffffffffL, &n))
			return false;
		r->ri = n;
		return true;
	case TAG_V:
	case TAG_UNKNOWN:
		break;
	}
	return false;
}

enum dmarc_parse dmarc_record_parse(const char *txt, size_t len, struct dmarc_record *out)
{
	struct dmarc_record r;
	unsigned valid = 0; /* bit per tag_id: a valid value was taken */
	size_t pos = 0;
	bool first = true;

	memset(&r, 0, sizeof(r));
	r.psd = 'u';
	r.fo = DMARC_FO_0;
	r.pct = -1;
	r.ri = -1;
	if (txt == NULL)
		return DMARC_PARSE_NOT_DMARC; /* and no pointer arithmetic on NULL */
	/* Leading blanks are not in the ABNF; tolerated, they change nothing. */
	while (pos < len && is_wsp(txt[pos]))
		pos++;
	while (pos <= len) {
		const char *semi = pos < len ? memchr(txt + pos, ';', len - pos) : NULL;
		size_t end = semi ? (size_t)(semi - txt) : len;
		struct strv seg = trim(strv_make(txt + pos, end - pos)), name, value;
		pos = end + 1;

		if (first) {
			/* dmarc-version = "v" equals %s"DMARC1", first and exact */
			if (!split_tag(seg, &name, &value) || !is_word(name, "v") ||
			    !strv_eq(value, STRV("DMARC1")))
				return DMARC_PARSE_NOT_DMARC;
			first = false;
			valid |= 1u << TAG_V;
		} else if (seg.n == 0) {
			/* a trailing ";" (allowed), or ";;" (tolerated) */
		} else if (!split_tag(seg, &name, &value)) {
			r.n_bad++;
		} else {
			enum tag_id id = tag_of(name);
			if (id == TAG_UNKNOWN) {
				r.n_unknown++;
			} else if (id == TAG_V || (valid & (1u << id))) {
				r.n_bad++; /* repeated: the first valid one stands */
			} else if (!value_ok(value)) {
				/* a bad p/sp/np stays visible as INVALID (§4.10.1) */
				if (id == TAG_P || id == TAG_SP || id == TAG_NP)
					apply_tag(id, STRV("?"), &r);
				r.n_bad++;
			} else if (!apply_tag(id, value, &r)) {
				r.n_bad++;
			} else {
				valid |= 1u << id;
			}
		}
		if (!semi)
			break;
	}
	if (first)
		return DMARC_PARSE_NOT_DMARC;
	/* RFC 9989 §A.6: t=y stands for the old pct=0, t=n for pct=100. Other
	 * percentages have no meaning any more: the policy applies in full. */
	if (!r.t_set && r.pct == 0)
		r.testing = true;
	*out = r;
	return DMARC_PARSE_OK;
}

bool dmarc_record_usable(struct dmarc_record *r)
{
	if (r->p != DMARC_POLICY_INVALID && r->sp != DMARC_POLICY_INVALID &&
	    r->np != DMARC_POLICY_INVALID)
		return true;
	if (r->rua.n + r->rua.n_dropped == 0)
		return false;
	r->p = r->sp = r->np = DMARC_POLICY_NONE;
	return true;
}

const char *dmarc_policy_name(enum dmarc_policy p)
{
	switch (p) {
	case DMARC_POLICY_NONE:
		return "none";
	case DMARC_POLICY_QUARANTINE:
		return "quarantine";
	case DMARC_POLICY_REJECT:
		return "reject";
	case DMARC_POLICY_UNSET:
	case DMARC_POLICY_INVALID:
		break;
	}
	return "";
}

const char *dmarc_result_name(enum dmarc_result r)
{
	switch (r) {
	case DMARC_RESULT_NONE:
		return "none";
	case DMARC_RESULT_PASS:
		return "pass";
	case DMARC_RESULT_FAIL:
		return "fail";
	case DMARC_RESULT_TEMPERROR:
		return "temperror";
	case DMARC_RESULT_PERMERROR:
		return "permerror";
	}
	return "none";
}
