/*
 * spf_record.c — the SPF record parser (RFC 7208 §4.5, §4.6.1, §5, §6,
 * §12) and the client address helpers (parsing, CIDR prefix match).
 *
 * Owns: turning one published record into a typed list of directives plus
 * its redirect=/exp= modifiers, and deciding every syntax question before
 * evaluation starts (§4.6: "if there are any syntax errors anywhere in the
 * record, check_host() returns immediately with the result permerror").
 *
 * A pure function over (pointer, length): the text comes from anyone's
 * DNS. It must never read outside the range, never accept a byte the ABNF
 * does not allow, and never let an unknown modifier change a result.
 */
#include "policy/spf.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "core/err.h"

const char *spf_result_name(enum spf_result r)
{
	switch (r) {
	case SPF_NONE:
		return "none";
	case SPF_NEUTRAL:
		return "neutral";
	case SPF_PASS:
		return "pass";
	case SPF_FAIL:
		return "fail";
	case SPF_SOFTFAIL:
		return "softfail";
	case SPF_TEMPERROR:
		return "temperror";
	case SPF_PERMERROR:
		return "permerror";
	}
	return "permerror";
}

const char *spf_identity_name(enum spf_identity id)
{
	return id == SPF_ID_HELO ? "helo" : "mailfrom";
}

/* ------------------------------------------------------- addresses */

int spf_ip_parse(const char *s, struct spf_ip *out)
{
	if (!s || !out)
		return TERN_EINVAL;
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, s, out->addr) == 1) {
		out->family = AF_INET;
		return TERN_OK;
	}
	struct in6_addr a6;
	if (inet_pton(AF_INET6, s, &a6) != 1)
		return TERN_ESYNTAX;
	if (IN6_IS_ADDR_V4MAPPED(&a6)) {
		out->family = AF_INET;
		memcpy(out->addr, a6.s6_addr + 12, 4);
	} else {
		out->family = AF_INET6;
		memcpy(out->addr, a6.s6_addr, 16);
	}
	return TERN_OK;
}

int spf_ip_from_sockaddr(const void *sockaddr, struct spf_ip *out)
{
	const struct sockaddr *sa = sockaddr;

	if (!sa || !out)
		return TERN_EINVAL;
	memset(out, 0, sizeof(*out));
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = sockaddr;
		out->family = AF_INET;
		memcpy(out->addr, &s4->sin_addr, 4);
		return TERN_OK;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = sockaddr;
		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
			out->family = AF_INET;
			memcpy(out->addr, s6->sin6_addr.s6_addr + 12, 4);
		} else {
			out->family = AF_INET6;
			memcpy(out->addr, s6->sin6_addr.s6_addr, 16);
		}
		return TERN_OK;
	}
	return TERN_EINVAL;
}

bool spf_prefix_match(const uint8_t *a, const uint8_t *b, size_t bytes, unsigned prefix)
{
	if (prefix > bytes * 8)
		prefix = (unsigned)(bytes * 8);
	size_t full = prefix / 8;
	if (full && memcmp(a, b, full) != 0)
		return false;
	unsigned rest = prefix % 8;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xff << (8 - rest));
	return (a[full] & mask) == (b[full] & mask);
}

/* ------------------------------------------------------- parser */

bool spf_record_is_spf1(const char *p, size_t n)
{
	return p && n >= 6 && strncasecmp(p, "v=spf1", 6) == 0 && (n == 6 || p[6] == ' ');
}

void spf_record_free(struct spf_record *r)
{
	if (!r)
		return;
	free(r->text);
	free(r->terms);
	memset(r, 0, sizeof(*r));
}

/* err = fmt with the term shown: at most 60 bytes, anything not visible
 * ASCII as '?' (the text is a stranger's and may end up in a header). */
static int fail(char *err, size_t errlen, const char *what, const char *term, size_t len)
{
	char shown[64];
	size_t o = 0;

	for (size_t i = 0; i < len && o + 4 < sizeof(shown); i++) {
		unsigned char c = (unsigned char)term[i];
		shown[o++] = (c > 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char)c : '?';
	}
	if (len > o) {
		memcpy(shown + o, "...", 3);
		o += 3;
	}
	shown[o] = '\0';
	if (err && errlen)
		snprintf(err, errlen, "%s \"%s\"", what, shown);
	return TERN_ESYNTAX;
}

/* "0" / %x31-39 *DIGIT, at most max; the whole range must be digits. */
static bool parse_prefix(const char *p, size_t n, unsigned max, uint8_t *out)
{
	if (n == 0 || n > 3)
		return false;
	if (p[0] == '0' && n > 1)
		return false; /* no leading zeros (ip4-cidr-length, ip6-cidr-length) */
	unsigned v = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		v = v * 10 + (unsigned)(p[i] - '0');
	}
	if (v > max)
		return false;
	*out = (uint8_t)v;
	return true;
}

/* dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ], the whole
 * of p..n (which is empty or starts with '/'). */
static bool parse_dual_cidr(const char *p, size_t n, uint8_t *c4, uint8_t *c6)
{
	*c4 = 32;
	*c6 = 128;
	if (n == 0)
		return true;
	if (p[0] != '/')
		return false;
	if (n >= 2 && p[1] == '/')
		return parse_prefix(p + 2, n - 2, 128, c6);
	const char *slash = memchr(p + 1, '/', n - 1);
	size_t l4 = slash ? (size_t)(slash - (p + 1)) : n - 1;
	if (!parse_prefix(p + 1, l4, 32, c4))
		return false;
	if (!slash)
		return true;
	size_t rest = n - 1 - l4; /* from the slash */
	if (rest < 2 || slash[1] != '/')
		return false;
	return parse_prefix(slash + 2, rest - 2, 128, c6);
}

/*
 * Where a trailing dual-cidr-length starts in "domain-spec[cidr]". A
 * domain-spec ends in a toplabel or a macro, neither of which can end in
 * "/digits", so a trailing "/digits" (or "//digits", optionally after
 * "/digits") is always the CIDR part, valid or not.
 */
static size_t cidr_start(const char *p, size_t n)
{
	size_t d = n;
	while (d > 0 && p[d - 1] >= '0' && p[d - 1] <= '9')
		d--;
	if (d == n || d == 0 || p[d - 1] != '/')
		return n;
	size_t k = d - 1;
	if (k > 0 && p[k - 1] == '/') {
		k--; /* "//N": look for an ip4 "/N" before it */
		size_t e = k;
		while (e > 0 && p[e - 1] >= '0' && p[e - 1] <= '9')
			e--;
		if (e < k && e > 0 && p[e - 1] == '/')
			k = e - 1;
	}
	return k;
}

/* ip4-network: four qnums, dotted, no leading zeros, nothing else. */
static bool parse_ip4(const char *p, size_t n, uint8_t out[4])
{
	size_t i = 0;
	for (int part = 0; part < 4; part++) {
		if (part > 0) {
			if (i >= n || p[i] != '.')
				return false;
			i++;
		}
		size_t s = i;
		unsigned v = 0;
		while (i < n && p[i] >= '0' && p[i] <= '9' && i - s < 4) {
			v = v * 10 + (unsigned)(p[i] - '0');
			i++;
		}
		size_t len = i - s;
		if (len == 0 || len > 3 || v > 255 || (len > 1 && p[s] == '0'))
			return false;
		out[part] = (uint8_t)v;
	}
	return i == n;
}

static bool parse_ip6(const char *p, size_t n, uint8_t out[16])
{
	char buf[INET6_ADDRSTRLEN + 1];
	if (n == 0 || n >= sizeof(buf))
		return false;
	memcpy(buf, p, n);
	buf[n] = '\0';
	return inet_pton(AF_INET6, buf, out) == 1;
}

static bool name_is(const char *p, size_t n, const char *lit)
{
	return strlen(lit) == n && strncasecmp(p, lit, n) == 0;
}

/* A modifier: name "=" value, name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ).
 * Returns the length of the name, or 0 if the term is not a modifier. */
static size_t modifier_name(const char *t, size_t len)
{
	if (len == 0 || !((t[0] >= 'a' && t[0] <= 'z') || (t[0] >= 'A' && t[0] <= 'Z')))
		return 0;
	size_t j = 1;
	while (j < len) {
		char c = t[j];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		          (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
		if (!ok)
			break;
		j++;
	}
	return j < len && t[j] == '=' ? j : 0;
}

static int parse_modifier(struct spf_record *r, const char *t, size_t len, size_t nlen, char *err,
                          size_t errlen)
{
	const char *v = t + nlen + 1;
	size_t vlen = len - nlen - 1;

	if (name_is(t, nlen, "redirect") || name_is(t, nlen, "exp")) {
		bool redirect = name_is(t, nlen, "redirect");
		const char **slot = redirect ? &r->redirect : &r->exp;
		size_t *slot_len = redirect ? &r->redirect_len : &r->exp_len;
		/* §6: "MUST NOT appear in a record more than once each" */
		if (*slot)
			return fail(err, errlen, "modifier appears twice:", t, len);
		/* a known modifier is never taken as an unknown one: its value
		 * must be a domain-spec (a broken one is an error, not ignored) */
		if (spf_domain_spec_check(v, vlen) != TERN_OK)
			return fail(err, errlen, "bad domain-spec in", t, len);
		*slot = v;
		*slot_len = vlen;
		return TERN_OK;
	}
	/* unknown-modifier = name "=" macro-string: checked, then ignored
	 * (§6: "Unrecognized modifiers MUST be ignored") */
	if (spf_macro_check(v, vlen, SPF_MACRO_EXPLAIN) != TERN_OK)
		return fail(err, errlen, "bad macro in modifier", t, len);
	return TERN_OK;
}

static int parse_directive(struct spf_term *d, const char *t, size_t len, char *err, size_t errlen)
{
	const char *all = t;
	size_t all_len = len;

	memset(d, 0, sizeof(*d));
	d->text = t;
	d->text_len = len;
	d->qualifier = '+';
	d->cidr4 = 32;
	d->cidr6 = 128;
	if (len > 0 && strchr("+-~?", t[0])) {
		d->qualifier = t[0];
		t++;
		len--;
	}
	size_t nl = 0;
	while (nl < len && t[nl] != ':' && t[nl] != '/')
		nl++;
	const char *rest = t + nl;
	size_t rlen = len - nl;

	if (name_is(t, nl, "all")) {
		d->mech = SPF_MECH_ALL;
		if (rlen)
			return fail(err, errlen, "\"all\" takes no argument:", all, all_len);
		return TERN_OK;
	}
	if (name_is(t, nl, "include") || name_is(t, nl, "exists")) {
		d->mech = name_is(t, nl, "include") ? SPF_MECH_INCLUDE : SPF_MECH_EXISTS;
		if (rlen < 1 || rest[0] != ':')
			return fail(err, errlen, "missing \":domain\" in", all, all_len);
		d->spec = rest + 1;
		d->spec_len = rlen - 1;
		if (spf_domain_spec_check(d->spec, d->spec_len) != TERN_OK)
			return fail(err, errlen, "bad domain-spec in", all, all_len);
		return TERN_OK;
	}
	if (name_is(t, nl, "a") || name_is(t, nl, "mx")) {
		d->mech = name_is(t, nl, "a") ? SPF_MECH_A : SPF_MECH_MX;
		if (rlen > 0 && rest[0] == ':') {
			const char *arg = rest + 1;
			size_t alen = rlen - 1;
			size_t k = cidr_start(arg, alen);
			d->spec = arg;
			d->spec_len = k;
			if (spf_domain_spec_check(d->spec, d->spec_len) != TERN_OK)
				return fail(err, errlen, "bad domain-spec in", all, all_len);
			rest = arg + k;
			rlen = alen - k;
		}
		if (!parse_dual_cidr(rest, rlen, &d->cidr4, &d->cidr6))
			return fail(err, errlen, "bad CIDR length in", all, all_len);
		return TERN_OK;
	}
	if (name_is(t, nl, "ptr")) {
		d->mech = SPF_MECH_PTR;
		if (rlen == 0)
			return TERN_OK;
		if (rest[0] != ':')
			return fail(err, errlen, "\"ptr\" takes no CIDR length:", all, all_len);
		d->spec = rest + 1;
		d->spec_len = rlen - 1;
		if (spf_domain_spec_check(d->spec, d->spec_len) != TERN_OK)
			return fail(err, errlen, "bad domain-spec in", all, all_len);
		return TERN_OK;
	}
	if (name_is(t, nl, "ip4") || name_is(t, nl, "ip6")) {
		bool v6 = name_is(t, nl, "ip6");
		d->mech = v6 ? SPF_MECH_IP6 : SPF_MECH_IP4;
		if (rlen < 2 || rest[0] != ':')
			return fail(err, errlen, "missing address in", all, all_len);
		const char *arg = rest + 1;
		size_t alen = rlen - 1;
		const char *slash = memrchr(arg, '/', alen);
		size_t addr_len = slash ? (size_t)(slash - arg) : alen;
		bool ok = v6 ? parse_ip6(arg, addr_len, d->net) : parse_ip4(arg, addr_len, d->net);
		if (!ok)
			return fail(err, errlen, v6 ? "bad IPv6 address in" : "bad IPv4 address in",
			            all, all_len);
		if (slash) {
			size_t plen = alen - addr_len - 1;
			uint8_t *dst = v6 ? &d->cidr6 : &d->cidr4;
			if (!parse_prefix(slash + 1, plen, v6 ? 128 : 32, dst))
				return fail(err, errlen, "bad CIDR length in", all, all_len);
		}
		return TERN_OK;
	}
	return fail(err, errlen, "unknown mechanism", all, all_len);
}

int spf_record_parse(const char *p, size_t n, struct spf_record *out, char *err, size_t errlen)
{
	int r = TERN_OK;

	if (!out)
		return TERN_EINVAL;
	memset(out, 0, sizeof(*out));
	if (err && errlen)
		err[0] = '\0';
	if (!p)
		return TERN_EINVAL;
	if (n > SPF_RECORD_MAX) {
		if (err && errlen)
			snprintf(err, errlen, "record is %zu bytes long (tern takes up to %d)", n,
			         SPF_RECORD_MAX);
		return TERN_ESYNTAX;
	}
	if (!spf_record_is_spf1(p, n))
		return fail(err, errlen, "not an SPF record:", p, n);
	/* §3.1: US-ASCII; §4.6.1: terms are separated by SP only, and every
	 * term is visible characters (a CR, LF, TAB or NUL is an error) */
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c != ' ' && (c < 0x21 || c > 0x7e)) {
			if (err && errlen)
				snprintf(err, errlen,
				         "byte 0x%02x at offset %zu: only spaces and "
				         "visible US-ASCII may appear",
				         c, i);
			return TERN_ESYNTAX;
		}
	}
	out->text = malloc(n + 1);
	if (!out->text)
		return TERN_ENOMEM;
	memcpy(out->text, p, n);
	out->text[n] = '\0';
	out->len = n;

	size_t max_terms = 0;
	for (size_t i = 6; i < n; i++) {
		if (out->text[i] != ' ' && out->text[i - 1] == ' ')
			max_terms++;
	}
	if (max_terms) {
		out->terms = calloc(max_terms, sizeof(*out->terms));
		if (!out->terms) {
			r = TERN_ENOMEM;
			goto out;
		}
	}
	size_t pos = 6;
	for (;;) {
		while (pos < n && out->text[pos] == ' ')
			pos++;
		if (pos >= n)
			break;
		const char *t = out->text + pos;
		size_t len = 0;
		while (pos + len < n && t[len] != ' ')
			len++;
		pos += len;
		size_t nlen = modifier_name(t, len);
		if (nlen) {
			r = parse_modifier(out, t, len, nlen, err, errlen);
		} else {
			if (TERN_BUG_ON(out->n_terms >= max_terms)) {
				r = TERN_EINVAL;
				goto out;
			}
			struct spf_term *d = &out->terms[out->n_terms];
			r = parse_directive(d, t, len, err, errlen);
			if (r == TERN_OK) {
				out->n_terms++;
				if (d->mech == SPF_MECH_ALL)
					out->has_all = true;
			}
		}
		if (r != TERN_OK)
			goto out;
	}
out:
	if (r != TERN_OK)
		spf_record_free(out);
	return r;
}
