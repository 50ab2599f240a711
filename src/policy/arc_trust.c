/*
 * arc_trust.c — what a trusted ARC sealer said about a message (RFC 8617
 * §7.2): the receiver may use the ARC-Authentication-Results of a sealer it
 * trusts to deliver a message whose DMARC check failed here because an
 * intermediary (a mailing list, a forwarder) changed it.
 *
 * Owns: reading the ARC Sets of a header block that the validator already
 * found sound, the ARC-Seal d= of each, and the resinfos of its AAR
 * (method=result and the header.from / header.d / smtp.mailfrom properties).
 *
 * Must never: judge signatures (arc_verify.c does, and the caller only asks
 * when the chain passed), do I/O, or read past (hdr, len). Pure; fuzzed
 * (fuzz_arc_chain.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "policy/arc_internal.h"

/* Skips CFWS (comments nested, quoted pairs in them); returns the new index. */
static size_t skip_cfws(const char *s, size_t n, size_t i)
{
	while (i < n) {
		char c = s[i];
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			i++;
			continue;
		}
		if (c != '(')
			break;
		unsigned depth = 0;
		while (i < n) {
			if (s[i] == '\\' && i + 1 < n)
				i++;
			else if (s[i] == '(')
				depth++;
			else if (s[i] == ')' && --depth == 0) {
				i++;
				break;
			}
			i++;
		}
	}
	return i;
}

/* One word (a token, or a quoted-string unquoted) from i into out. */
static size_t word(const char *s, size_t n, size_t i, char *out, size_t outlen)
{
	size_t o = 0;
	if (i < n && s[i] == '"') {
		for (i++; i < n && s[i] != '"'; i++) {
			if (s[i] == '\\' && i + 1 < n)
				i++;
			if (o + 1 < outlen)
				out[o++] = s[i];
		}
		if (i < n)
			i++;
	} else {
		while (i < n && !strchr(" \t\r\n;()=\"", s[i])) {
			if (o + 1 < outlen)
				out[o++] = s[i];
			i++;
		}
	}
	out[o] = '\0';
	return i;
}

/* The domain of "local@domain" or of a bare domain, lowercased, into out. */
static void domain_of(const char *v, char *out, size_t outlen)
{
	const char *at = strrchr(v, '@');
	tern_strlcpy(out, at ? at + 1 : v, outlen);
	tern_ascii_lower(out);
}

/*
 * Whether one AAR value (after the colon) records a pass that stands for
 * from_domain: dmarc=pass with header.from, dkim=pass with header.d, or
 * spf=pass with smtp.mailfrom equal to it. *what gets which.
 */
static bool aar_vouches(const char *s, size_t n, const char *from_domain, const char **what)
{
	char w[DKIM_DOMAIN_MAX + 80];
	size_t i = 0;
	/* "i=N;" then the authserv-id (and version) up to the first ';' */
	for (int semis = 0; semis < 2; semis++) {
		while (i < n && s[i] != ';') {
			size_t j = skip_cfws(s, n, i);
			if (j < n && s[j] == '"')
				j = word(s, n, j, w, sizeof(w));
			else if (j < n && s[j] != ';')
				j++;
			i = j;
		}
		if (i >= n)
			return false;
		i++;
	}
	while (i < n) {
		/* one resinfo: method[/version]=result [reason] props... up to ';' */
		char method[32], result[32];
		i = skip_cfws(s, n, i);
		i = word(s, n, i, method, sizeof(method));
		i = skip_cfws(s, n, i);
		if (i >= n || s[i] != '=')
			return false;
		i = skip_cfws(s, n, i + 1);
		i = word(s, n, i, result, sizeof(result));
		char *slash = strchr(method, '/');
		if (slash)
			*slash = '\0';
		bool pass = tern_ascii_ieq(result, "pass");
		const char *want = NULL, *kind = NULL;
		if (tern_ascii_ieq(method, "dmarc")) {
			want = "header.from";
			kind = "dmarc=pass";
		} else if (tern_ascii_ieq(method, "dkim")) {
			want = "header.d";
			kind = "dkim=pass";
		} else if (tern_ascii_ieq(method, "spf")) {
			want = "smtp.mailfrom";
			kind = "spf=pass";
		}
		for (;;) {
			i = skip_cfws(s, n, i);
			if (i >= n || s[i] == ';')
				break;
			char name[64], val[DKIM_DOMAIN_MAX + 80];
			size_t j = word(s, n, i, name, sizeof(name));
			if (j == i) { /* a stray character: step over it */
				i++;
				continue;
			}
			i = skip_cfws(s, n, j);
			if (i >= n || s[i] != '=')
				continue;
			i = skip_cfws(s, n, i + 1);
			i = word(s, n, i, val, sizeof(val));
			char d[DKIM_DOMAIN_MAX + 1];
			domain_of(val, d, sizeof(d));
			if (pass && want && tern_ascii_ieq(name, want) && d[0] &&
			    tern_ascii_ieq(d, from_domain)) {
				*what = kind;
				return true;
			}
		}
		if (i < n)
			i++; /* the ';' */
	}
	return false;
}

bool arc_trusted_pass(const char *hdr, size_t len, const struct arc_trust_query *q,
                      struct arc_trust *out)
{
	memset(out, 0, sizeof(*out));
	if (!q->from_domain || !*q->from_domain || q->n_trusted == 0)
		return false;
	bool more = false;
	size_t nf = dkim_fields_index(hdr, len, NULL, DKIM_VERIFY_MAX_FIELDS, &more);
	if (nf == 0 || more)
		return false;
	struct dkim_field *f = calloc(nf, sizeof(*f));
	struct arc_sets *sets = calloc(1, sizeof(*sets));
	bool found = false;
	if (!f || !sets)
		goto out;
	nf = dkim_fields_index(hdr, len, f, nf, &more);
	arc_sets_collect(hdr, f, nf, sets);
	if (sets->why || sets->max == 0)
		goto out;
	unsigned lowest = q->lowest ? q->lowest : 1;
	for (unsigned i = sets->max; i >= lowest && i >= 1 && !found; i--) {
		size_t as = sets->idx[i][ARC_AS], aar = sets->idx[i][ARC_AAR];
		if (as == (size_t)-1 || aar == (size_t)-1)
			continue;
		size_t off = arc_value_off(hdr, &f[as]);
		size_t vlen = arc_value_len(hdr, &f[as], off);
		struct dkim_taglist tags;
		const char *why = NULL;
		if (dkim_tags_parse(hdr + f[as].off + off, vlen, &tags, &why) != TERN_OK)
			continue;
		const struct dkim_tag *d = dkim_tags_find(&tags, "d");
		if (!d || d->value.n == 0 || d->value.n > DKIM_DOMAIN_MAX)
			continue;
		char sealer[DKIM_DOMAIN_MAX + 1];
		memcpy(sealer, d->value.p, d->value.n);
		sealer[d->value.n] = '\0';
		bool trusted = false;
		for (size_t k = 0; k < q->n_trusted && !trusted; k++)
			trusted = tern_ascii_ieq(q->trusted[k], sealer);
		if (!trusted)
			continue;
		off = arc_value_off(hdr, &f[aar]);
		vlen = arc_value_len(hdr, &f[aar], off);
		const char *what = NULL;
		if (aar_vouches(hdr + f[aar].off + off, vlen, q->from_domain, &what)) {
			out->instance = i;
			tern_strlcpy(out->sealer, sealer, sizeof(out->sealer));
			tern_ascii_lower(out->sealer);
			out->what = what;
			found = true;
		}
	}
out:
	free(f);
	free(sets);
	return found;
}
