/*
 * dmarc_from.c — the Author Domain: RFC5322.From field(s) of a header block
 * → domain names in A-label form (RFC 9989 §5.3.1), and the one domain-name
 * normaliser DMARC uses for every identifier it compares.
 *
 * Owns: finding From fields in a header block, the RFC 5322 §3.4 address
 * grammar (with its obsolete forms, comments and RFC 6854 groups) as far as
 * needed to find each address's domain, and Punycode (RFC 3492) for
 * U-labels.
 * Must never: read past (hdr, len), guess a domain out of a field it cannot
 * parse (a field we cannot read is DMARC_FROM_BAD: what a mail reader shows
 * from it is unknown, so no domain from it may pass DMARC), or allocate.
 */
#include "policy/dmarc.h"

#include <string.h>

#define LABEL_MAX 63
#define TOKENS_MAX 512

/* ------------------------------------------------------------- Punycode */

enum { PC_BASE = 36, PC_TMIN = 1, PC_TMAX = 26, PC_SKEW = 38, PC_DAMP = 700 };

static uint32_t adapt(uint32_t delta, uint32_t numpoints, bool first)
{
	uint32_t k = 0;

	delta = first ? delta / PC_DAMP : delta / 2;
	delta += delta / numpoints;
	while (delta > ((PC_BASE - PC_TMIN) * PC_TMAX) / 2) {
		delta /= PC_BASE - PC_TMIN;
		k += PC_BASE;
	}
	return k + (PC_BASE - PC_TMIN + 1) * delta / (delta + PC_SKEW);
}

static char pc_digit(uint32_t d)
{
	return (char)(d < 26 ? 'a' + d : '0' + (d - 26));
}

/* RFC 3492 §6.3 encoding of n code points into out (no "xn--"). */
static bool punycode(const uint32_t *cp, size_t n, char *out, size_t max, size_t *outlen)
{
	uint32_t code = 0x80, delta = 0, bias = 72;
	size_t o = 0, h, b;

	for (size_t i = 0; i < n; i++) {
		if (cp[i] < 0x80) {
			if (o >= max)
				return false;
			out[o++] = (char)cp[i];
		}
	}
	h = b = o;
	if (b > 0) {
		if (o >= max)
			return false;
		out[o++] = '-';
	}
	while (h < n) {
		uint32_t m = UINT32_MAX;
		for (size_t i = 0; i < n; i++)
			if (cp[i] >= code && cp[i] < m)
				m = cp[i];
		if ((uint64_t)delta + (uint64_t)(m - code) * (h + 1) > UINT32_MAX)
			return false;
		delta += (m - code) * (uint32_t)(h + 1);
		code = m;
		for (size_t i = 0; i < n; i++) {
			if (cp[i] < code && ++delta == 0)
				return false;
			if (cp[i] != code)
				continue;
			uint32_t q = delta;
			for (uint32_t k = PC_BASE;; k += PC_BASE) {
				uint32_t t = k <= bias             ? PC_TMIN
				             : k >= bias + PC_TMAX ? PC_TMAX
				                                   : k - bias;
				if (q < t)
					break;
				if (o >= max)
					return false;
				out[o++] = pc_digit(t + (q - t) % (PC_BASE - t));
				q = (q - t) / (PC_BASE - t);
			}
			if (o >= max)
				return false;
			out[o++] = pc_digit(q);
			bias = adapt(delta, (uint32_t)(h + 1), h == b);
			delta = 0;
			h++;
		}
		delta++;
		code++;
	}
	*outlen = o;
	return true;
}

/* Decodes one UTF-8 sequence at s (n bytes left); 0 if malformed. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
	size_t len;
	uint32_t c, min;

	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	}
	if ((s[0] & 0xe0) == 0xc0) {
		len = 2, c = s[0] & 0x1f, min = 0x80;
	} else if ((s[0] & 0xf0) == 0xe0) {
		len = 3, c = s[0] & 0x0f, min = 0x800;
	} else if ((s[0] & 0xf8) == 0xf0) {
		len = 4, c = s[0] & 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3f);
	}
	if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*cp = c;
	return len;
}

/* One label (len bytes) → out as an LDH(+_) label or an A-label. */
static bool label_out(const char *s, size_t len, char *out, size_t max, size_t *outlen)
{
	uint32_t cp[LABEL_MAX + 1];
	size_t n = 0;
	bool ascii = true;

	if (len == 0)
		return false;
	for (size_t i = 0; i < len;) {
		uint32_t c;
		size_t k = utf8_decode((const unsigned char *)s + i, len - i, &c);
		if (k == 0 || n > LABEL_MAX)
			return false;
		if (c < 0x80) {
			if (c >= 'A' && c <= 'Z')
				c += 'a' - 'A';
			if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
			      c == '_'))
				return false;
		} else {
			ascii = false;
		}
		cp[n++] = c;
		i += k;
	}
	if (ascii) {
		if (n > LABEL_MAX || n > max)
			return false;
		for (size_t i = 0; i < n; i++)
			out[i] = (char)cp[i];
		*outlen = n;
		return true;
	}
	char enc[LABEL_MAX + 1];
	size_t el;
	if (!punycode(cp, n, enc, LABEL_MAX - 4, &el) || el + 4 > max)
		return false;
	memcpy(out, "xn--", 4);
	memcpy(out + 4, enc, el);
	*outlen = el + 4;
	return true;
}

bool dmarc_domain_normalize(const char *s, size_t len, char out[DMARC_DOMAIN_MAX + 1])
{
	size_t o = 0, start = 0;

	if (s == NULL || len == 0)
		return false;
	if (s[len - 1] == '.')
		len--; /* the root's dot */
	if (len == 0 || len > 4 * DMARC_DOMAIN_MAX)
		return false;
	while (start <= len) {
		const char *dot = memchr(s + start, '.', len - start);
		size_t end = dot ? (size_t)(dot - s) : len, l;
		if (o > 0) {
			if (o >= DMARC_DOMAIN_MAX)
				return false;
			out[o++] = '.';
		}
		if (!label_out(s + start, end - start, out + o, DMARC_DOMAIN_MAX - o, &l))
			return false;
		o += l;
		if (!dot)
			break;
		start = end + 1;
	}
	out[o] = '\0';
	return true;
}

/* ------------------------------------------------------ RFC 5322 tokens */

enum tok_kind { T_ATOM, T_QSTR, T_DOMLIT, T_SPECIAL };

struct tok {
	enum tok_kind kind;
	char c; /* T_SPECIAL: one of < > @ , : ; */
	struct strv s;
};

/* atext (RFC 5322 §3.2.3) plus '.', and UTF-8 (RFC 6532). */
static bool is_atext(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c >= 0x80 || strchr("!#$%&'*+-/=?^_`{|}~.", c) != NULL;
}

/*
 * Splits a field value into tokens, dropping folding white space and
 * comments (nested, with quoted-pairs). False on an unterminated comment,
 * quoted string or domain literal, a byte no token may hold, or too many
 * tokens.
 */
static bool tokenize(const char *v, size_t n, struct tok *t, size_t *nt)
{
	size_t i = 0, k = 0;

	while (i < n) {
		unsigned char c = (unsigned char)v[i];
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			i++;
		} else if (c == '(') {
			int depth = 0;
			do {
				if (v[i] == '\\')
					i++;
				else if (v[i] == '(')
					depth++;
				else if (v[i] == ')')
					depth--;
				i++;
			} while (depth > 0 && i < n);
			if (depth > 0)
				return false;
		} else if (k >= TOKENS_MAX) {
			return false;
		} else if (c == '"') {
			size_t s = ++i;
			while (i < n && v[i] != '"')
				i += v[i] == '\\' ? 2 : 1;
			if (i >= n)
				return false;
			t[k++] = (struct tok){T_QSTR, 0, strv_make(v + s, i - s)};
			i++;
		} else if (c == '[') {
			size_t s = i;
			while (i < n && v[i] != ']')
				i += v[i] == '\\' ? 2 : 1;
			if (i >= n)
				return false;
			i++;
			t[k++] = (struct tok){T_DOMLIT, 0, strv_make(v + s, i - s)};
		} else if (strchr("<>@,:;", c) != NULL && c != '\0') {
			t[k++] = (struct tok){T_SPECIAL, (char)c, strv_make(v + i, 1)};
			i++;
		} else if (is_atext(c)) {
			size_t s = i;
			while (i < n && is_atext((unsigned char)v[i]))
				i++;
			t[k++] = (struct tok){T_ATOM, 0, strv_make(v + s, i - s)};
		} else {
			return false;
		}
	}
	*nt = k;
	return true;
}

static bool is_sp(const struct tok *t, char c)
{
	return t->kind == T_SPECIAL && t->c == c;
}

static bool is_word(const struct tok *t)
{
	return t->kind == T_ATOM || t->kind == T_QSTR;
}

struct from_acc {
	struct dmarc_from *out;
	bool bad;
};

static void add_domain(struct from_acc *acc, const char *d)
{
	struct dmarc_from *f = acc->out;
	size_t kept = f->n_domains < DMARC_AUTHORS_MAX ? f->n_domains : DMARC_AUTHORS_MAX;

	for (size_t i = 0; i < kept; i++)
		if (strcmp(f->domain[i], d) == 0)
			return;
	/* Past the kept ones a repeat may be counted twice: the count then only
	 * says "more than DMARC_AUTHORS_MAX", which is all it is used for. */
	if (f->n_domains < DMARC_AUTHORS_MAX)
		tern_strlcpy(f->domain[f->n_domains], d, sizeof(f->domain[0]));
	f->n_domains++;
}

/*
 * addr-spec at t[*i]: local-part "@" domain. The local part is words and
 * dots (obs-local-part); the domain a dot-atom, possibly split by CFWS
 * (obs-domain), or a domain literal (which has no DMARC policy: bad).
 */
static bool addr_spec(const struct tok *t, size_t nt, size_t *i, struct from_acc *acc)
{
	size_t k = *i;
	char raw[4 * DMARC_DOMAIN_MAX + 1], dom[DMARC_DOMAIN_MAX + 1];
	size_t rl = 0;

	if (k >= nt || !is_word(&t[k]))
		return false;
	while (k < nt && is_word(&t[k]))
		k++;
	if (k >= nt || !is_sp(&t[k], '@'))
		return false;
	k++;
	if (k >= nt || t[k].kind == T_DOMLIT || t[k].kind != T_ATOM)
		return false;
	/* atoms split by CFWS join only across a dot ("example . com") */
	while (k < nt && t[k].kind == T_ATOM &&
	       (rl == 0 || raw[rl - 1] == '.' || t[k].s.p[0] == '.')) {
		if (rl + t[k].s.n >= sizeof(raw))
			return false;
		memcpy(raw + rl, t[k].s.p, t[k].s.n);
		rl += t[k].s.n;
		k++;
	}
	if (!dmarc_domain_normalize(raw, rl, dom))
		return false;
	add_domain(acc, dom);
	*i = k;
	return true;
}

/* [phrase] "<" [obs-route] addr-spec ">" | addr-spec */
static bool mailbox(const struct tok *t, size_t nt, size_t *i, struct from_acc *acc)
{
	size_t k = *i;

	while (k < nt && is_word(&t[k]))
		k++;
	if (k < nt && is_sp(&t[k], '<')) {
		k++;
		/* obs-route: 1*("@" domain / ",") ":" */
		if (k < nt && (is_sp(&t[k], '@') || is_sp(&t[k], ','))) {
			while (k < nt && !is_sp(&t[k], ':') && !is_sp(&t[k], '>'))
				k++;
			if (k >= nt || !is_sp(&t[k], ':'))
				return false;
			k++;
		}
		if (!addr_spec(t, nt, &k, acc))
			return false;
		if (k >= nt || !is_sp(&t[k], '>'))
			return false;
		*i = k + 1;
		return true;
	}
	k = *i;
	if (!addr_spec(t, nt, &k, acc))
		return false;
	*i = k;
	return true;
}

/* address-list with groups (RFC 6854) and empty elements (obs-addr-list). */
static bool address_list(const struct tok *t, size_t nt, struct from_acc *acc)
{
	size_t i = 0;

	while (i < nt) {
		if (is_sp(&t[i], ',')) {
			i++;
			continue;
		}
		/* a group: phrase ":" [mailbox-list] ";" */
		size_t k = i;
		while (k < nt && is_word(&t[k]))
			k++;
		if (k > i && k < nt && is_sp(&t[k], ':')) {
			k++;
			while (k < nt && !is_sp(&t[k], ';')) {
				if (is_sp(&t[k], ',')) {
					k++;
					continue;
				}
				if (!mailbox(t, nt, &k, acc))
					return false;
				if (k < nt && !is_sp(&t[k], ',') && !is_sp(&t[k], ';'))
					return false;
			}
			if (k >= nt)
				return false;
			i = k + 1;
		} else {
			if (!mailbox(t, nt, &i, acc))
				return false;
		}
		if (i < nt && !is_sp(&t[i], ','))
			return false;
	}
	return true;
}

/* ----------------------------------------------------------- the header */

static void from_field(const char *v, size_t n, struct from_acc *acc)
{
	struct tok t[TOKENS_MAX];
	size_t nt = 0;

	/* An empty group ("undisclosed-senders:;") parses and names no domain. */
	if (!tokenize(v, n, t, &nt) || !address_list(t, nt, acc))
		acc->bad = true;
}

void dmarc_from_domains(const char *hdr, size_t hdr_len, struct dmarc_from *out)
{
	struct from_acc acc = {out, false};
	size_t i = 0;

	memset(out, 0, sizeof(*out));
	while (i < hdr_len) {
		/* one field: this line and its continuation lines */
		size_t start = i, end;
		do {
			const char *lf = memchr(hdr + i, '\n', hdr_len - i);
			i = lf ? (size_t)(lf - hdr) + 1 : hdr_len;
		} while (i < hdr_len && (hdr[i] == ' ' || hdr[i] == '\t'));
		end = i;
		/* field-name *WSP ":" (the blanks are obs-optional) */
		size_t k = start;
		while (k < end && hdr[k] != ':' && hdr[k] != ' ' && hdr[k] != '\t' &&
		       hdr[k] != '\r' && hdr[k] != '\n')
			k++;
		size_t name_len = k - start;
		while (k < end && (hdr[k] == ' ' || hdr[k] == '\t'))
			k++;
		if (k >= end || hdr[k] != ':')
			continue;
		if (!strv_ieq(strv_make(hdr + start, name_len), STRV("From")))
			continue;
		out->n_fields++;
		from_field(hdr + k + 1, end - k - 1, &acc);
	}
	if (acc.bad)
		out->status = DMARC_FROM_BAD;
	else if (out->n_fields > 1 || out->n_domains > 1)
		out->status = DMARC_FROM_MULTI;
	else if (out->n_domains == 0)
		out->status = DMARC_FROM_NONE;
	else
		out->status = DMARC_FROM_ONE;
}
