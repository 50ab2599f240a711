/*
 * zone.c — the pure parts of the policy module: postscreen's zone notation
 * ("zone=filter*weight"), DNSBL query names, the DNSBL score, client
 * network keys, and the arithmetic of rate limits (GCRA) and greylisting.
 *
 * Owns: the one definition of the zone notation, shared by the config
 * loader (core/conf.c calls policy_zone_parse) and the engine.
 * Must never: do I/O, allocate, read the clock, or read past (s, len): the
 * parser sees operator input and is fuzzed (tests/fuzz/fuzz_policy_zone.c).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/err.h"
#include "policy/policy.h"

/* ------------------------------------------------------------ zone specs */

static int fail(char *err, size_t errlen, const char *why)
{
	if (err && errlen)
		snprintf(err, errlen, "%s", why);
	return TERN_ESYNTAX;
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* A decimal 0-255 of 1-3 digits at s[*i]; advances *i. */
static bool parse_octet_num(const char *s, size_t len, size_t *i, unsigned *out)
{
	size_t start = *i;
	unsigned v = 0;
	while (*i < len && is_digit(s[*i]) && *i - start < 3)
		v = v * 10 + (unsigned)(s[(*i)++] - '0');
	if (*i == start || (*i < len && is_digit(s[*i])) || v > 255)
		return false;
	*out = v;
	return true;
}

static void bits_set(uint8_t bits[32], unsigned lo, unsigned hi)
{
	for (unsigned v = lo; v <= hi; v++)
		bits[v / 8] |= (uint8_t)(1u << (v % 8));
}

static bool bit_isset(const uint8_t bits[32], unsigned v)
{
	return (bits[v / 8] >> (v % 8)) & 1u;
}

/* One filter position: "N" or "[N;N..M;...]". */
static int parse_filter_octet(const char *s, size_t len, size_t *i, uint8_t bits[32], char *err,
                              size_t errlen)
{
	unsigned lo, hi;
	if (*i < len && s[*i] == '[') {
		(*i)++;
		for (;;) {
			if (!parse_octet_num(s, len, i, &lo))
				return fail(err, errlen,
				            "filter: expected a number from 0 to 255 inside [...]");
			hi = lo;
			if (*i + 1 < len && s[*i] == '.' && s[*i + 1] == '.') {
				*i += 2;
				if (!parse_octet_num(s, len, i, &hi))
					return fail(err, errlen,
					            "filter: a range needs a number from 0 to 255 "
					            "after '..'");
				if (hi < lo)
					return fail(
					    err, errlen,
					    "filter: a range must go upwards ([2..5], not [5..2])");
			}
			bits_set(bits, lo, hi);
			if (*i < len && s[*i] == ';') {
				(*i)++;
				continue;
			}
			if (*i < len && s[*i] == ']') {
				(*i)++;
				return TERN_OK;
			}
			return fail(err, errlen, "filter: expected ';' or ']' in [...]");
		}
	}
	if (!parse_octet_num(s, len, i, &lo))
		return fail(err, errlen,
		            "filter: expected an address d.d.d.d, each d a number from 0 to 255 or "
		            "[list]");
	bits_set(bits, lo, lo);
	return TERN_OK;
}

static int parse_filter(const char *s, size_t len, struct policy_zone *z, char *err, size_t errlen)
{
	size_t i = 0;
	for (int o = 0; o < 4; o++) {
		if (o > 0) {
			if (i >= len || s[i] != '.')
				return fail(err, errlen, "filter: expected four parts d.d.d.d");
			i++;
		}
		int rc = parse_filter_octet(s, len, &i, z->octet[o], err, errlen);
		if (rc != TERN_OK)
			return rc;
	}
	if (i != len)
		return fail(err, errlen, "filter: unexpected text after the fourth part");
	z->filtered = true;
	return TERN_OK;
}

static int parse_weight(const char *s, size_t len, int32_t *out, char *err, size_t errlen)
{
	size_t i = 0;
	bool neg = false;
	if (i < len && (s[i] == '-' || s[i] == '+')) {
		neg = s[i] == '-';
		i++;
	}
	if (i == len)
		return fail(err, errlen, "weight: expected a whole number after '*'");
	int32_t v = 0;
	for (; i < len; i++) {
		if (!is_digit(s[i]))
			return fail(err, errlen, "weight: expected a whole number after '*'");
		v = v * 10 + (s[i] - '0');
		if (v > POLICY_WEIGHT_MAX)
			return fail(err, errlen, "weight: must be between -1000 and 1000");
	}
	*out = neg ? -v : v;
	return TERN_OK;
}

static int parse_zone_name(const char *s, size_t len, struct policy_zone *z, char *err,
                           size_t errlen)
{
	if (len > 0 && s[len - 1] == '.')
		len--; /* a trailing dot (absolute name) means the same zone */
	if (len == 0)
		return fail(err, errlen, "expected a zone name such as \"bl.example.org\"");
	if (len > POLICY_ZONE_NAME_MAX)
		return fail(err, errlen,
		            "zone name too long (the query name must fit in 253 bytes)");
	size_t label = 0;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (c == '.') {
			if (label == 0)
				return fail(err, errlen, "zone name has an empty label");
			label = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) ||
		           c == '-' || c == '_') {
			if (++label > 63)
				return fail(err, errlen,
				            "zone name has a label longer than 63 bytes");
		} else {
			return fail(
			    err, errlen,
			    "zone name may contain only letters, digits, '-', '_' and dots");
		}
		z->zone[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
	}
	if (label == 0) /* "bl.example.." */
		return fail(err, errlen, "zone name has an empty label");
	z->zone[len] = '\0';
	return TERN_OK;
}

int policy_zone_parse(const char *s, size_t len, struct policy_zone *out, char *err, size_t errlen)
{
	struct policy_zone z;
	memset(&z, 0, sizeof(z));
	z.weight = 1;
	if (err && errlen)
		err[0] = '\0';
	const char *star = memchr(s, '*', len);
	size_t spec_len = star ? (size_t)(star - s) : len;
	const char *eq = memchr(s, '=', spec_len);
	if (star && memchr(star + 1, '*', len - spec_len - 1))
		return fail(err, errlen, "more than one '*'");
	if (!eq && star && memchr(star, '=', len - spec_len))
		return fail(err, errlen, "the filter ('=...') comes before the weight ('*N')");
	size_t zone_len = eq ? (size_t)(eq - s) : spec_len;
	int rc = parse_zone_name(s, zone_len, &z, err, errlen);
	if (rc == TERN_OK && eq)
		rc = parse_filter(eq + 1, spec_len - zone_len - 1, &z, err, errlen);
	if (rc == TERN_OK && star)
		rc = parse_weight(star + 1, len - spec_len - 1, &z.weight, err, errlen);
	if (rc == TERN_OK)
		memcpy(out, &z, sizeof(z)); /* padding included: entries compare with memcmp */
	return rc;
}

/* Appends to out at *o; false when it does not fit. */
__attribute__((format(printf, 4, 5))) static bool put(char *out, size_t outlen, size_t *o,
                                                      const char *fmt, ...);

static bool put(char *out, size_t outlen, size_t *o, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = *o < outlen ? vsnprintf(out + *o, outlen - *o, fmt, ap) : -1;
	va_end(ap);
	if (n < 0 || (size_t)n >= outlen - *o)
		return false;
	*o += (size_t)n;
	return true;
}

static bool format_octet(const uint8_t bits[32], char *out, size_t outlen, size_t *o)
{
	unsigned count = 0, only = 0;
	for (unsigned v = 0; v < 256; v++)
		if (bit_isset(bits, v)) {
			count++;
			only = v;
		}
	if (count == 0)
		return false;
	if (count == 1)
		return put(out, outlen, o, "%u", only);
	if (!put(out, outlen, o, "["))
		return false;
	bool first = true;
	for (unsigned v = 0; v < 256; v++) {
		if (!bit_isset(bits, v))
			continue;
		unsigned end = v;
		while (end < 255 && bit_isset(bits, end + 1))
			end++;
		bool ok = end == v ? put(out, outlen, o, "%s%u", first ? "" : ";", v)
		                   : put(out, outlen, o, "%s%u..%u", first ? "" : ";", v, end);
		if (!ok)
			return false;
		first = false;
		v = end;
	}
	return put(out, outlen, o, "]");
}

bool policy_zone_format(const struct policy_zone *z, char *out, size_t outlen)
{
	size_t o = 0;
	if (!out || outlen == 0)
		return false;
	out[0] = '\0';
	if (!put(out, outlen, &o, "%s", z->zone))
		return false;
	if (z->filtered) {
		for (int i = 0; i < 4; i++)
			if (!put(out, outlen, &o, i ? "." : "=") ||
			    !format_octet(z->octet[i], out, outlen, &o))
				return false;
	}
	return put(out, outlen, &o, "*%d", (int)z->weight);
}

bool policy_zone_matches(const struct policy_zone *z, const struct in_addr *a, size_t n)
{
	if (n == 0 || !a)
		return false;
	if (!z->filtered)
		return true;
	for (size_t i = 0; i < n; i++) {
		const uint8_t *b = (const uint8_t *)&a[i].s_addr;
		if (bit_isset(z->octet[0], b[0]) && bit_isset(z->octet[1], b[1]) &&
		    bit_isset(z->octet[2], b[2]) && bit_isset(z->octet[3], b[3]))
			return true;
	}
	return false;
}

int policy_dnsbl_score(const struct policy_zone *zones, const struct policy_dnsbl_answer *ans,
                       size_t n, size_t *top)
{
	int score = 0;
	size_t best = n;
	for (size_t i = 0; i < n; i++) {
		if (!policy_zone_matches(&zones[i], ans[i].a, ans[i].n))
			continue;
		score += zones[i].weight;
		if (zones[i].weight > 0 && (best == n || zones[i].weight > zones[best].weight))
			best = i;
	}
	if (top)
		*top = best;
	return score;
}

/* ------------------------------------------------------ client addresses */

bool policy_client_addr(const struct sockaddr_storage *sa, int *family, uint8_t addr[16])
{
	memset(addr, 0, 16);
	if (sa->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		memcpy(addr, &in->sin_addr, 4);
		*family = AF_INET;
		return true;
	}
	if (sa->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			memcpy(addr, &in6->sin6_addr.s6_addr[12], 4);
			*family = AF_INET;
		} else {
			memcpy(addr, &in6->sin6_addr, 16);
			*family = AF_INET6;
		}
		return true;
	}
	return false;
}

bool policy_dnsbl_name(int family, const uint8_t *addr, const char *zone, char *out, size_t outlen)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;
	if (!out || outlen == 0)
		return false;
	out[0] = '\0';
	if (family == AF_INET) {
		if (!put(out, outlen, &o, "%u.%u.%u.%u.", addr[3], addr[2], addr[1], addr[0]))
			return false;
	} else if (family == AF_INET6) {
		for (int i = 15; i >= 0; i--)
			if (!put(out, outlen, &o, "%c.%c.", hex[addr[i] & 0x0f], hex[addr[i] >> 4]))
				return false;
	} else {
		return false;
	}
	if (!put(out, outlen, &o, "%s", zone) || o > DNS_NAME_MAX - 2) {
		out[0] = '\0';
		return false;
	}
	return true;
}

void policy_net_key(int family, const uint8_t *addr, unsigned v4_prefix, unsigned v6_prefix,
                    uint8_t key[POLICY_NET_KEY_LEN], char *text, size_t textlen)
{
	bool v4 = family == AF_INET;
	size_t bytes = v4 ? 4 : 16;
	unsigned prefix = v4 ? v4_prefix : v6_prefix;
	if (prefix > bytes * 8)
		prefix = (unsigned)bytes * 8;
	memset(key, 0, POLICY_NET_KEY_LEN);
	key[0] = v4 ? 4 : 6;
	for (size_t i = 0; i < bytes; i++) {
		unsigned bit = (unsigned)i * 8;
		uint8_t mask = bit + 8 <= prefix ? 0xff
		               : bit >= prefix   ? 0
		                                 : (uint8_t)(0xff << (8 - (prefix - bit)));
		key[1 + i] = addr[i] & mask;
	}
	if (text && textlen) {
		char ip[INET6_ADDRSTRLEN];
		if (!inet_ntop(v4 ? AF_INET : AF_INET6, key + 1, ip, sizeof(ip)))
			snprintf(ip, sizeof(ip), "?");
		snprintf(text, textlen, "%s/%u", ip, prefix);
	}
}

/* ------------------------------------------------------------ rate limits */

bool policy_gcra(uint64_t *tat, uint64_t now_us, uint32_t per_minute)
{
	if (per_minute == 0)
		return true;
	/* One event per interval on average, per_minute of them at once. */
	uint64_t interval = 60000000ull / per_minute;
	if (interval == 0)
		interval = 1;
	uint64_t burst = interval * (per_minute - 1);
	uint64_t t = *tat > now_us ? *tat : now_us;
	if (t - now_us > burst)
		return false;
	*tat = t + interval;
	return true;
}

/* ------------------------------------------------------------- greylisting */

enum policy_grey_result policy_grey_step(struct policy_grey_entry *e, bool exists, int64_t now,
                                         const struct policy_grey_params *p, uint32_t *wait)
{
	*wait = 0;
	bool expired = exists && (e->passed ? now - e->last > (int64_t)p->expire
	                                    : now - e->first > (int64_t)p->retry_window);
	if (!exists || expired) {
		e->first = e->last = now;
		e->passed = false;
		*wait = p->delay;
		return POLICY_GREY_NEW;
	}
	e->last = now;
	if (e->passed)
		return POLICY_GREY_PASS;
	int64_t waited = now - e->first;
	if (waited < 0)
		waited = 0; /* the clock went back: count from now */
	if (waited < (int64_t)p->delay) {
		*wait = (uint32_t)((int64_t)p->delay - waited);
		return POLICY_GREY_EARLY;
	}
	e->passed = true;
	return POLICY_GREY_PASS_FIRST;
}
