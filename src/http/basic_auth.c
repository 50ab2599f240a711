/*
 * basic_auth.c — htpasswd users and the Basic scheme (RFC 7617) for the
 * capture UI/API and its POP3 listener (see basic_auth.h).
 *
 * Owns: parsing htpasswd text and MP_UI_AUTH pairs, checking a password
 * against each kind of stored secret, the cache of verified header values.
 * Must never: compare secrets with a early-exit compare, keep a clear
 * password of a request after the check, or write a password to an error
 * message or log.
 */
#include "http/basic_auth.h"

#include <crypt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/codec.h"
#include "core/err.h"

#define CACHE_SLOTS 16
#define LINE_MAX_LEN 4096

enum secret_kind { SECRET_PLAIN, SECRET_SHA1, SECRET_CRYPT };

struct auth_user {
	char *name;
	char *secret;
	enum secret_kind kind;
};

struct http_auth {
	struct auth_user *u;
	size_t n;
	unsigned char cache[CACHE_SLOTS][32];
	bool cache_used[CACHE_SLOTS];
	unsigned cache_next;
};

void http_auth_free(struct http_auth *a)
{
	if (!a)
		return;
	for (size_t i = 0; i < a->n; i++) {
		free(a->u[i].name);
		if (a->u[i].secret) {
			explicit_bzero(a->u[i].secret, strlen(a->u[i].secret));
			free(a->u[i].secret);
		}
	}
	free(a->u);
	explicit_bzero(a, sizeof(*a));
	free(a);
}

size_t http_auth_count(const struct http_auth *a)
{
	return a ? a->n : 0;
}

static int add_user(struct http_auth *a, const char *name, size_t nl, const char *sec, size_t sl,
                    bool clear, const char **why)
{
	enum secret_kind kind = SECRET_PLAIN;
	if (nl == 0) {
		*why = "empty user name";
		return TERN_ESYNTAX;
	}
	if (!clear) {
		if (sl >= 6 && strncmp(sec, "$apr1$", 6) == 0) {
			*why = "Apache $apr1$ (MD5) hashes are not supported; make bcrypt ones "
			       "with htpasswd -B";
			return TERN_ESYNTAX;
		}
		if (sl >= 5 && strncmp(sec, "{SHA}", 5) == 0)
			kind = SECRET_SHA1;
		else if (sl > 0 && sec[0] == '$')
			kind = SECRET_CRYPT;
	}
	char *n = tern_strndup(name, nl);
	char *s = tern_strndup(sec, sl);
	if (!n || !s) {
		free(n);
		free(s);
		return TERN_ENOMEM;
	}
	if (kind == SECRET_CRYPT) {
		int cs = crypt_checksalt(s);
		if (cs == CRYPT_SALT_INVALID || cs == CRYPT_SALT_METHOD_DISABLED) {
			free(n);
			free(s);
			*why = "password hash not understood by crypt(3)";
			return TERN_ESYNTAX;
		}
	}
	for (size_t i = 0; i < a->n; i++) {
		if (strcmp(a->u[i].name, n) == 0) {
			free(n);
			explicit_bzero(a->u[i].secret, strlen(a->u[i].secret));
			free(a->u[i].secret);
			a->u[i].secret = s;
			a->u[i].kind = kind;
			return TERN_OK;
		}
	}
	struct auth_user *v = realloc(a->u, (a->n + 1) * sizeof(*v));
	if (!v) {
		free(n);
		free(s);
		return TERN_ENOMEM;
	}
	a->u = v;
	a->u[a->n++] = (struct auth_user){n, s, kind};
	return TERN_OK;
}

int http_auth_parse(const char *file, size_t n, const char *pairs, struct http_auth **out,
                    char *err, size_t errlen)
{
	const char *why = NULL;
	unsigned lineno = 0;
	int rc = TERN_OK;
	struct http_auth *a = calloc(1, sizeof(*a));
	*out = NULL;
	if (!a)
		return TERN_ENOMEM;
	size_t pos = 0;
	while (file && pos < n) {
		const char *l = file + pos;
		const char *nl = memchr(l, '\n', n - pos);
		size_t len = nl ? (size_t)(nl - l) : n - pos;
		pos += len + (nl ? 1 : 0);
		lineno++;
		while (len && (l[len - 1] == '\r' || l[len - 1] == ' ' || l[len - 1] == '\t'))
			len--;
		while (len && (*l == ' ' || *l == '\t'))
			l++, len--;
		if (len == 0 || *l == '#')
			continue;
		const char *colon = memchr(l, ':', len);
		if (len > LINE_MAX_LEN || !colon) {
			why = len > LINE_MAX_LEN ? "line too long" : "not name:hash";
			rc = TERN_ESYNTAX;
			goto out;
		}
		size_t nml = (size_t)(colon - l);
		rc = add_user(a, l, nml, colon + 1, len - nml - 1, false, &why);
		if (rc != TERN_OK)
			goto out;
	}
	lineno = 0;
	const char *p = pairs;
	while (p && *p) {
		while (*p == ' ' || *p == '\t' || *p == '\n')
			p++;
		if (!*p)
			break;
		const char *e = p;
		while (*e && *e != ' ' && *e != '\t' && *e != '\n')
			e++;
		const char *colon = memchr(p, ':', (size_t)(e - p));
		if (!colon) {
			why = "MP_UI_AUTH: each entry is name:password";
			rc = TERN_ESYNTAX;
			goto out;
		}
		rc = add_user(a, p, (size_t)(colon - p), colon + 1, (size_t)(e - colon - 1), true,
		              &why);
		if (rc != TERN_OK)
			goto out;
		p = e;
	}
out:
	if (rc != TERN_OK) {
		if (why && lineno)
			snprintf(err, errlen, "line %u: %s", lineno, why);
		else
			snprintf(err, errlen, "%s", why ? why : tern_strerror(rc));
		http_auth_free(a);
		return rc;
	}
	*out = a;
	return TERN_OK;
}

/* Equal lengths compared in constant time; lengths themselves are not
 * secret enough to hide for a hash or a digest. */
static bool digest_equal(const void *a, const void *b, size_t n)
{
	return CRYPTO_memcmp(a, b, n) == 0;
}

static bool sha256(const void *p, size_t n, unsigned char out[32])
{
	unsigned len = 0;
	return EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) && len == 32;
}

bool http_auth_verify(const struct http_auth *a, const char *name, const char *password)
{
	const struct auth_user *u = NULL;
	for (size_t i = 0; a && i < a->n; i++)
		if (strcmp(a->u[i].name, name) == 0)
			u = &a->u[i];
	if (!u)
		return false;
	bool ok = false;
	switch (u->kind) {
	case SECRET_PLAIN: {
		unsigned char x[32], y[32];
		ok = sha256(u->secret, strlen(u->secret), x) &&
		     sha256(password, strlen(password), y) && digest_equal(x, y, 32);
		break;
	}
	case SECRET_SHA1: {
		unsigned char md[EVP_MAX_MD_SIZE];
		unsigned len = 0;
		char b64[64];
		if (EVP_Digest(password, strlen(password), md, &len, EVP_sha1(), NULL) &&
		    len == 20 && EVP_EncodeBlock((unsigned char *)b64, md, 20) == 28) {
			const char *want = u->secret + 5;
			ok = strlen(want) == 28 && digest_equal(want, b64, 28);
		}
		break;
	}
	case SECRET_CRYPT: {
		/* struct crypt_data is ~32 KiB: not on the stack */
		struct crypt_data *cd = calloc(1, sizeof(*cd));
		if (!cd)
			return false;
		const char *h = crypt_rn(password, u->secret, cd, (int)sizeof(*cd));
		size_t sl = strlen(u->secret);
		ok = h && h[0] != '*' && strlen(h) == sl && digest_equal(h, u->secret, sl);
		explicit_bzero(cd, sizeof(*cd));
		free(cd);
		break;
	}
	}
	return ok;
}

/* The base64 credentials of a Basic value (bounds, no decoding), or NULL. */
static const char *basic_token(const char *value, size_t *len)
{
	if (!value)
		return NULL;
	while (*value == ' ')
		value++;
	if (strncasecmp(value, "Basic ", 6) != 0)
		return NULL;
	const char *b = value + 6;
	while (*b == ' ')
		b++;
	size_t bl = strlen(b);
	while (bl && b[bl - 1] == ' ')
		bl--;
	if (bl == 0 || bl > 2048)
		return NULL;
	*len = bl;
	return b;
}

bool http_auth_cached(const struct http_auth *a, const char *value)
{
	size_t bl;
	const char *b = basic_token(value, &bl);
	unsigned char key[32];
	if (!a || !b || !sha256(b, bl, key))
		return false;
	for (unsigned i = 0; i < CACHE_SLOTS; i++)
		if (a->cache_used[i] && digest_equal(a->cache[i], key, 32))
			return true;
	return false;
}

bool http_auth_verify_header(const struct http_auth *a, const char *value)
{
	size_t bl;
	const char *b = basic_token(value, &bl);
	if (!a || !b)
		return false;
	struct tbuf dec = TBUF_INIT(2048);
	bool ok = false;
	if (tern_base64_decode(b, bl, &dec) == TERN_OK && dec.len > 0 &&
	    tbuf_append(&dec, "", 1) == TERN_OK) {
		char *s = dec.data;
		char *colon = strchr(s, ':');
		/* a NUL inside would cut the name or password short */
		if (colon && strlen(s) == dec.len - 1) {
			*colon = '\0';
			ok = http_auth_verify(a, s, colon + 1);
		}
		explicit_bzero(dec.data, dec.len);
	}
	tbuf_free(&dec);
	return ok;
}

void http_auth_remember(struct http_auth *a, const char *value)
{
	size_t bl;
	const char *b = basic_token(value, &bl);
	unsigned char key[32];
	if (!a || !b || !sha256(b, bl, key) || http_auth_cached(a, value))
		return;
	memcpy(a->cache[a->cache_next], key, 32);
	a->cache_used[a->cache_next] = true;
	a->cache_next = (a->cache_next + 1) % CACHE_SLOTS;
}

bool http_auth_check_header(struct http_auth *a, const char *value)
{
	if (http_auth_cached(a, value))
		return true;
	if (!http_auth_verify_header(a, value))
		return false;
	http_auth_remember(a, value);
	return true;
}
