/*
 * mtasts.c — RFC 8461 parsers and MX matching (see mtasts.h).
 *
 * Owns: the TXT record grammar (§3.1), the policy grammar (§3.2), pattern
 * matching (§4.1).
 * Never: allocates, reads past len, or accepts a policy missing a required
 * field (a half-understood policy must not be enforced).
 */
#include "deliver/mtasts.h"

#include <stdio.h>
#include <string.h>

const char *mtasts_mode_name(enum mtasts_mode m)
{
	switch (m) {
	case MTASTS_ENFORCE:
		return "enforce";
	case MTASTS_TESTING:
		return "testing";
	case MTASTS_NONE:
		break;
	}
	return "none";
}

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

static bool is_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static char lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

bool mtasts_txt_parse(const char *p, size_t len, char id[MTASTS_ID_MAX + 1])
{
	static const char v[] = "v=STSv1";
	size_t i = sizeof(v) - 1;
	bool have_id = false;
	if (len < i || memcmp(p, v, i) != 0)
		return false;
	/* 1*(*WSP ";" *WSP field) [";"] */
	while (i < len) {
		while (i < len && is_wsp(p[i]))
			i++;
		if (i == len)
			break;
		if (p[i] != ';')
			return false;
		i++;
		while (i < len && is_wsp(p[i]))
			i++;
		if (i == len)
			break; /* a final ';' */
		size_t k = i;
		while (i < len && p[i] != '=' && p[i] != ';' && !is_wsp(p[i]))
			i++;
		if (i == len || p[i] != '=' || i == k)
			return false;
		size_t klen = i - k;
		i++;
		size_t vs = i;
		while (i < len && p[i] != ';' && !is_wsp(p[i]))
			i++;
		size_t vlen = i - vs;
		if (klen == 2 && memcmp(p + k, "id", 2) == 0) {
			if (have_id || vlen == 0 || vlen > MTASTS_ID_MAX)
				return false;
			for (size_t j = 0; j < vlen; j++)
				if (!is_alnum(p[vs + j]))
					return false;
			memcpy(id, p + vs, vlen);
			id[vlen] = '\0';
			have_id = true;
		}
		/* other fields (extensions) are ignored */
	}
	return have_id;
}

/* An mx value: "*." optional, then a host name of LDH labels. */
static bool valid_pattern(const char *s, size_t n)
{
	size_t i = 0;
	if (n >= 2 && s[0] == '*' && s[1] == '.')
		i = 2;
	if (i == n || n > DNS_NAME_MAX)
		return false;
	size_t label = 0;
	for (; i < n; i++) {
		char c = s[i];
		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
			continue;
		}
		if (!is_alnum(c) && c != '-' && c != '_')
			return false;
		if (++label > 63)
			return false;
	}
	return label > 0 || (n > 0 && s[n - 1] == '.');
}

int mtasts_policy_parse(const char *p, size_t len, struct mtasts_policy *out, char *err,
                        size_t errlen)
{
	bool have_version = false, have_mode = false, have_age = false;
	memset(out, 0, sizeof(*out));
	if (len > MTASTS_POLICY_MAX) {
		snprintf(err, errlen, "policy larger than %u bytes", MTASTS_POLICY_MAX);
		return -1;
	}
	size_t i = 0;
	while (i < len) {
		size_t ls = i;
		while (i < len && p[i] != '\n')
			i++;
		size_t le = i;
		if (i < len)
			i++; /* the LF */
		if (le > ls && p[le - 1] == '\r')
			le--;
		if (le == ls)
			continue; /* an empty line (a trailing newline) */
		size_t c = ls;
		while (c < le && p[c] != ':')
			c++;
		if (c == le) {
			snprintf(err, errlen, "a line without ':'");
			return -1;
		}
		const char *key = p + ls;
		size_t klen = c - ls;
		size_t vs = c + 1, ve = le;
		while (vs < ve && is_wsp(p[vs]))
			vs++;
		while (ve > vs && is_wsp(p[ve - 1]))
			ve--;
		const char *val = p + vs;
		size_t vlen = ve - vs;
		if (klen == 7 && memcmp(key, "version", 7) == 0) {
			if (have_version)
				continue;
			if (vlen != 5 || memcmp(val, "STSv1", 5) != 0) {
				snprintf(err, errlen, "version is not STSv1");
				return -1;
			}
			have_version = true;
		} else if (klen == 4 && memcmp(key, "mode", 4) == 0) {
			if (have_mode)
				continue;
			if (vlen == 7 && memcmp(val, "enforce", 7) == 0)
				out->mode = MTASTS_ENFORCE;
			else if (vlen == 7 && memcmp(val, "testing", 7) == 0)
				out->mode = MTASTS_TESTING;
			else if (vlen == 4 && memcmp(val, "none", 4) == 0)
				out->mode = MTASTS_NONE;
			else {
				snprintf(err, errlen, "unknown mode");
				return -1;
			}
			have_mode = true;
		} else if (klen == 7 && memcmp(key, "max_age", 7) == 0) {
			if (have_age)
				continue;
			uint64_t v = 0;
			if (vlen == 0 || vlen > 10) {
				snprintf(err, errlen, "max_age is not 1 to 10 digits");
				return -1;
			}
			for (size_t j = 0; j < vlen; j++) {
				if (val[j] < '0' || val[j] > '9') {
					snprintf(err, errlen, "max_age is not a number");
					return -1;
				}
				v = v * 10 + (uint64_t)(val[j] - '0');
			}
			/* §3.2: at most 31557600; a larger one is capped, not refused */
			out->max_age = v > MTASTS_MAX_AGE ? MTASTS_MAX_AGE : (uint32_t)v;
			have_age = true;
		} else if (klen == 2 && memcmp(key, "mx", 2) == 0) {
			if (!valid_pattern(val, vlen)) {
				snprintf(err, errlen, "an mx pattern is not a host name");
				return -1;
			}
			if (out->n_mx == MTASTS_MAX_MX)
				continue;
			char *d = out->mx[out->n_mx++];
			for (size_t j = 0; j < vlen; j++)
				d[j] = lower(val[j]);
			if (vlen > 0 && d[vlen - 1] == '.')
				vlen--;
			d[vlen] = '\0';
		}
		/* other keys: extensions, ignored */
	}
	if (!have_version || !have_mode || !have_age) {
		snprintf(err, errlen, "missing %s",
		         !have_version ? "version"
		         : !have_mode  ? "mode"
		                       : "max_age");
		return -1;
	}
	if (out->mode != MTASTS_NONE && out->n_mx == 0) {
		snprintf(err, errlen, "no mx in a policy of mode %s", mtasts_mode_name(out->mode));
		return -1;
	}
	return 0;
}

/* Case-insensitive equality of n bytes. */
static bool ieq(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (lower(a[i]) != lower(b[i]))
			return false;
	return true;
}

bool mtasts_mx_match(const struct mtasts_policy *p, const char *host)
{
	size_t hl = strlen(host);
	if (hl > 0 && host[hl - 1] == '.')
		hl--;
	if (hl == 0)
		return false;
	for (size_t i = 0; i < p->n_mx; i++) {
		const char *pat = p->mx[i];
		size_t pl = strlen(pat);
		if (pl >= 2 && pat[0] == '*' && pat[1] == '.') {
			/* "*.example.net": exactly one label before ".example.net" */
			size_t sl = pl - 1; /* ".example.net" */
			if (hl <= sl || !ieq(host + hl - sl, pat + 1, sl))
				continue;
			if (memchr(host, '.', hl - sl) == NULL)
				return true;
			continue;
		}
		if (pl == hl && ieq(pat, host, hl))
			return true;
	}
	return false;
}
