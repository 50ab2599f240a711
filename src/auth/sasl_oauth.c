/*
 * sasl_oauth.c — the client messages of XOAUTH2 (Google's, also spoken by
 * Microsoft) and OAUTHBEARER (RFC 7628 §3.1): pure parsers that find the
 * user and the bearer token. The token itself is checked by oauth_jwt.c.
 *
 * Owns: the two message syntaxes. Must never: accept channel binding
 * ("p=": not offered), accept a token with bytes outside RFC 6750's
 * b64token, or log (the token is a credential).
 */
#include "auth/sasl_internal.h"

#include <string.h>
#include <strings.h>

#include "core/err.h"

/* RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=" */
static bool b64token_ok(struct strv t)
{
	size_t i = 0;

	while (i < t.n) {
		unsigned char c = (unsigned char)t.p[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/'))
			break;
		i++;
	}
	if (i == 0)
		return false;
	while (i < t.n && t.p[i] == '=')
		i++;
	return i == t.n;
}

/* "Bearer" SP token (the scheme is case-insensitive, RFC 7235 §2.1). */
static int bearer_value(struct strv v, struct strv *token)
{
	if (v.n < 7 || strncasecmp(v.p, "Bearer ", 7) != 0)
		return TERN_ESYNTAX;
	*token = strv_make(v.p + 7, v.n - 7);
	if (token->n > OAUTH_TOKEN_MAX)
		return TERN_ELIMIT;
	return b64token_ok(*token) ? TERN_OK : TERN_ESYNTAX;
}

/* key = 1*ALPHA; value = *(VCHAR / SP / HTAB / CR / LF) (RFC 7628 §3.1). */
static bool kvpair_split(struct strv kv, struct strv *key, struct strv *value)
{
	const char *eq = memchr(kv.p, '=', kv.n);
	size_t i;

	if (eq == NULL || eq == kv.p)
		return false;
	for (i = 0; kv.p + i < eq; i++) {
		unsigned char c = (unsigned char)kv.p[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
			return false;
	}
	*key = strv_make(kv.p, i);
	*value = strv_make(eq + 1, (size_t)(kv.p + kv.n - eq - 1));
	for (i = 0; i < value->n; i++) {
		unsigned char c = (unsigned char)value->p[i];

		if (!((c >= 0x21 && c <= 0x7e) || c == ' ' || c == '\t' || c == '\r' || c == '\n'))
			return false;
	}
	return true;
}

/*
 * Walks "kvpair \x01 kvpair \x01 ... \x01" (s starts after the leading
 * separator, if the syntax has one) up to the empty pair that ends the
 * message, which must be the end of the input. Finds "auth" and, if
 * want_user, "user". Keys are case-sensitive, as RFC 7628 writes them.
 */
static int kvpairs(struct strv s, struct sasl_oauth_msg *out, bool want_user)
{
	bool have_auth = false, have_user = !want_user;

	for (;;) {
		const char *sep = memchr(s.p, '\x01', s.n);
		struct strv kv, key, value;
		int rc;

		if (sep == NULL)
			return TERN_ESYNTAX;
		kv = strv_make(s.p, (size_t)(sep - s.p));
		s = strv_make(sep + 1, (size_t)(s.p + s.n - sep - 1));
		if (kv.n == 0)
			break;
		if (!kvpair_split(kv, &key, &value))
			return TERN_ESYNTAX;
		if (strv_eq(key, STRV("auth"))) {
			if (have_auth)
				return TERN_ESYNTAX;
			if ((rc = bearer_value(value, &out->token)) != TERN_OK)
				return rc;
			have_auth = true;
		} else if (want_user && strv_eq(key, STRV("user"))) {
			if (out->user.p != NULL || value.n == 0)
				return TERN_ESYNTAX;
			if (value.n > SASL_ID_MAX)
				return TERN_ELIMIT;
			out->user = value;
			have_user = true;
		}
	}
	if (s.n != 0 || !have_auth || !have_user)
		return TERN_ESYNTAX;
	return TERN_OK;
}

int sasl_xoauth2_parse(const char *p, size_t n, struct sasl_oauth_msg *out)
{
	memset(out, 0, sizeof(*out));
	if (n == 0 || n > SASL_MSG_MAX || memchr(p, '\0', n) != NULL)
		return n > SASL_MSG_MAX ? TERN_ELIMIT : TERN_ESYNTAX;
	/* user=U ^A auth=Bearer T ^A ^A: the same kvpair grammar, user first. */
	if (n < 5 || memcmp(p, "user=", 5) != 0)
		return TERN_ESYNTAX;
	return kvpairs(strv_make(p, n), out, true);
}

int sasl_oauthbearer_parse(const char *p, size_t n, struct sasl_oauth_msg *out)
{
	const char *c1, *c2;
	struct strv flag, authz;

	memset(out, 0, sizeof(*out));
	if (n == 0 || n > SASL_MSG_MAX || memchr(p, '\0', n) != NULL)
		return n > SASL_MSG_MAX ? TERN_ELIMIT : TERN_ESYNTAX;
	/* gs2-header = gs2-cbind-flag "," [ authzid ] "," */
	c1 = memchr(p, ',', n);
	if (c1 == NULL)
		return TERN_ESYNTAX;
	c2 = memchr(c1 + 1, ',', (size_t)(p + n - c1 - 1));
	if (c2 == NULL)
		return TERN_ESYNTAX;
	flag = strv_make(p, (size_t)(c1 - p));
	if (flag.n >= 2 && flag.p[0] == 'p' && flag.p[1] == '=')
		return TERN_EINVAL;
	if (!(flag.n == 1 && (flag.p[0] == 'n' || flag.p[0] == 'y')))
		return TERN_ESYNTAX;
	authz = strv_make(c1 + 1, (size_t)(c2 - c1 - 1));
	if (authz.n > 0) {
		char tmp[SASL_ID_MAX + 1];
		int rc;

		if (authz.n < 3 || authz.p[0] != 'a' || authz.p[1] != '=')
			return TERN_ESYNTAX;
		authz = strv_make(authz.p + 2, authz.n - 2);
		rc = scram_saslname_decode(authz, tmp, sizeof(tmp));
		if (rc != TERN_OK)
			return rc;
		out->user = authz;
	}
	/* kvsep *kvpair kvsep */
	if ((size_t)(p + n - c2) < 2 || c2[1] != '\x01')
		return TERN_ESYNTAX;
	return kvpairs(strv_make(c2 + 2, (size_t)(p + n - c2 - 2)), out, false);
}
