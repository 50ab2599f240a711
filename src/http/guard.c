/*
 * guard.c — the pure checks that keep the capture HTTP API to the people it
 * is for: which Host names the listener answers to (DNS rebinding), whether
 * an Origin is the listener's own (cross-site requests), and whether a body
 * is declared as JSON (a cross-site form or "simple" fetch cannot send that
 * without a CORS preflight, which tern never grants).
 *
 * Owns: parsing Host and Origin values (RFC 9110 §7.2, RFC 6454 §7) and the
 * media type of Content-Type, and the allow-list rules documented under
 * capture.http_allowed_hosts in docs/config.md.
 * Must never: read past (pointer, length), allocate, accept a value it could
 * not parse completely (a half-parsed Host is a refused Host), or treat a
 * name as allowed because a prefix or suffix of it is.
 */
#include <arpa/inet.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/err.h"
#include "http/http.h"

static bool name_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_';
}

/* port = 1*5DIGIT up to 65535; an empty port (RFC 3986 allows "host:")
 * counts as none. */
static int parse_port(const char *p, size_t n, int *out)
{
	unsigned v = 0;
	if (n == 0) {
		*out = -1;
		return TERN_OK;
	}
	if (n > 5)
		return TERN_ESYNTAX;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return TERN_ESYNTAX;
		v = v * 10 + (unsigned)(p[i] - '0');
	}
	if (v == 0 || v > 65535)
		return TERN_ESYNTAX;
	*out = (int)v;
	return TERN_OK;
}

int http_parse_host(const char *s, size_t n, struct http_hostport *out)
{
	memset(out, 0, sizeof(*out));
	out->port = -1;
	/* optional whitespace around a field value is not part of it */
	while (n && (s[0] == ' ' || s[0] == '\t'))
		s++, n--;
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		n--;
	if (n == 0)
		return TERN_ESYNTAX;
	const char *port = NULL;
	size_t plen = 0;
	if (s[0] == '[') {
		const char *close = memchr(s, ']', n);
		char ip[INET6_ADDRSTRLEN + 1];
		unsigned char a[16];
		size_t il = close ? (size_t)(close - s - 1) : 0;
		if (!close || il == 0 || il >= sizeof(ip))
			return TERN_ESYNTAX;
		memcpy(ip, s + 1, il);
		ip[il] = '\0';
		if (inet_pton(AF_INET6, ip, a) != 1)
			return TERN_ESYNTAX;
		size_t rest = n - (size_t)(close + 1 - s);
		if (rest && close[1] != ':')
			return TERN_ESYNTAX;
		if (rest) {
			port = close + 2;
			plen = rest - 1;
		}
		out->name[0] = '[';
		inet_ntop(AF_INET6, a, out->name + 1, sizeof(out->name) - 3);
		size_t k = strlen(out->name);
		out->name[k] = ']';
		out->name[k + 1] = '\0';
		out->ip = true;
	} else {
		const char *colon = memchr(s, ':', n);
		size_t hl = colon ? (size_t)(colon - s) : n;
		if (colon) {
			port = colon + 1;
			plen = n - hl - 1;
		}
		if (hl == 0 || s[0] == '.' || memmem(s, hl, "..", 2))
			return TERN_ESYNTAX;
		/* one trailing dot is the same name written fully qualified */
		if (s[hl - 1] == '.')
			hl--;
		if (hl == 0 || hl > HTTP_HOST_NAME_MAX)
			return TERN_ESYNTAX;
		for (size_t i = 0; i < hl; i++)
			if (!name_char((unsigned char)s[i]))
				return TERN_ESYNTAX;
		memcpy(out->name, s, hl);
		out->name[hl] = '\0';
		tern_ascii_lower(out->name);
		unsigned char a[4];
		out->ip = inet_pton(AF_INET, out->name, a) == 1;
	}
	return parse_port(port, plen, &out->port);
}

/* name is name2, or (suffix) ends with "." name2. */
static bool name_is_or_under(const char *name, const char *name2, bool suffix)
{
	size_t n = strlen(name), m = strlen(name2);
	if (n == m && strcasecmp(name, name2) == 0)
		return true;
	return suffix && n > m + 1 && name[n - m - 1] == '.' &&
	       strcasecmp(name + n - m, name2) == 0;
}

bool http_host_allowed(const struct http_hostport *h, const char *const *allowed, size_t n_allowed,
                       const char *own_hostname)
{
	/* An IP literal cannot be a rebinding attack: the page that sends it
	 * was itself loaded from that address, i.e. from this listener. The
	 * same holds for localhost names, which browsers resolve themselves
	 * (RFC 6761 §6.3). */
	if (h->ip || name_is_or_under(h->name, "localhost", true))
		return true;
	if (own_hostname && *own_hostname && name_is_or_under(h->name, own_hostname, false))
		return true;
	for (size_t i = 0; i < n_allowed; i++) {
		const char *a = allowed[i];
		if (strcmp(a, "*") == 0)
			return true;
		if (a[0] == '.' ? name_is_or_under(h->name, a + 1, true)
		                : name_is_or_under(h->name, a, false))
			return true;
	}
	return false;
}

bool http_origin_same(const char *origin, size_t n, const struct http_hostport *host)
{
	int def;
	size_t skip;
	if (n >= 7 && strncasecmp(origin, "http://", 7) == 0) {
		def = 80;
		skip = 7;
	} else if (n >= 8 && strncasecmp(origin, "https://", 8) == 0) {
		def = 443;
		skip = 8;
	} else {
		return false; /* "null", other schemes, junk */
	}
	struct http_hostport o;
	/* An origin is scheme://host[:port] and nothing else (RFC 6454 §6.2). */
	if (memchr(origin + skip, '/', n - skip) || memchr(origin + skip, '@', n - skip) ||
	    http_parse_host(origin + skip, n - skip, &o) != TERN_OK)
		return false;
	int oport = o.port >= 0 ? o.port : def;
	int hport = host->port >= 0 ? host->port : def;
	return strcmp(o.name, host->name) == 0 && oport == hport;
}

bool http_ctype_is_json(const char *ct, size_t n)
{
	static const char want[] = "application/json";
	const size_t wl = sizeof(want) - 1;
	size_t i = 0;
	while (i < n && (ct[i] == ' ' || ct[i] == '\t'))
		i++;
	if (n - i < wl || strncasecmp(ct + i, want, wl) != 0)
		return false;
	i += wl;
	while (i < n && (ct[i] == ' ' || ct[i] == '\t'))
		i++;
	return i == n || ct[i] == ';';
}
