/*
 * ui_session.c — the web UI's login sessions (ui_session.h): a small table
 * under a mutex, random ids and CSRF tokens, the Cookie header parser.
 *
 * Owns: the session table and its expiry. Must never: log an id or a CSRF
 * token, compare them in data-dependent time, or keep a session past its
 * expiry or its logout.
 */
#include <openssl/rand.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "http/ui_session.h"

struct ui_sess {
	char id[UI_TOKEN_HEX + 1]; /* "" = free slot */
	char csrf[UI_TOKEN_HEX + 1];
	char user[UI_USER_MAX + 1];
	int64_t expires;
};

struct ui_sessions {
	pthread_mutex_t mu;
	struct ui_sess *v;
	size_t max;
	int64_t ttl;
};

struct ui_sessions *ui_sessions_new(size_t max, int64_t ttl)
{
	struct ui_sessions *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->max = max ? max : 1;
	s->ttl = ttl;
	if (!(s->v = calloc(s->max, sizeof(*s->v)))) {
		free(s);
		return NULL;
	}
	pthread_mutex_init(&s->mu, NULL);
	return s;
}

void ui_sessions_free(struct ui_sessions *s)
{
	if (!s)
		return;
	explicit_bzero(s->v, s->max * sizeof(*s->v));
	free(s->v);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

static bool random_hex(char out[UI_TOKEN_HEX + 1])
{
	unsigned char b[UI_TOKEN_HEX / 2];
	static const char hex[] = "0123456789abcdef";
	if (RAND_bytes(b, (int)sizeof(b)) != 1)
		return false;
	for (size_t i = 0; i < sizeof(b); i++) {
		out[2 * i] = hex[b[i] >> 4];
		out[2 * i + 1] = hex[b[i] & 15];
	}
	out[UI_TOKEN_HEX] = '\0';
	explicit_bzero(b, sizeof(b));
	return true;
}

int ui_session_create(struct ui_sessions *s, const char *user, int64_t now,
                      char id[UI_TOKEN_HEX + 1], char csrf[UI_TOKEN_HEX + 1])
{
	size_t ulen = user ? strlen(user) : 0;
	if (ulen == 0 || ulen > UI_USER_MAX)
		return TERN_EINVAL;
	if (!random_hex(id) || !random_hex(csrf))
		return TERN_EIO;
	pthread_mutex_lock(&s->mu);
	/* a free or expired slot, else the one that expires first */
	size_t pick = 0;
	for (size_t i = 0; i < s->max; i++) {
		if (!s->v[i].id[0] || s->v[i].expires <= now) {
			pick = i;
			break;
		}
		if (s->v[i].expires < s->v[pick].expires)
			pick = i;
	}
	struct ui_sess *e = &s->v[pick];
	memcpy(e->id, id, UI_TOKEN_HEX + 1);
	memcpy(e->csrf, csrf, UI_TOKEN_HEX + 1);
	memcpy(e->user, user, ulen + 1);
	e->expires = now + s->ttl;
	pthread_mutex_unlock(&s->mu);
	return TERN_OK;
}

bool ui_token_equal(const char *want, const char *given, size_t n)
{
	size_t wl = strlen(want);
	if (n != wl)
		return false; /* the length is no secret: every token has the same */
	unsigned char d = 0;
	for (size_t i = 0; i < n; i++)
		d |= (unsigned char)(want[i] ^ given[i]);
	return d == 0;
}

static bool id_shape(const char *id, size_t n)
{
	if (n != UI_TOKEN_HEX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
			return false;
	return true;
}

bool ui_session_find(struct ui_sessions *s, const char *id, size_t n, int64_t now, char *user,
                     size_t userlen, char csrf[UI_TOKEN_HEX + 1])
{
	if (!s || !id || !id_shape(id, n))
		return false;
	bool found = false;
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < s->max; i++) {
		struct ui_sess *e = &s->v[i];
		if (!e->id[0] || !ui_token_equal(e->id, id, n))
			continue;
		if (e->expires <= now) {
			explicit_bzero(e, sizeof(*e));
			break;
		}
		if (user)
			tern_strlcpy(user, e->user, userlen);
		if (csrf)
			memcpy(csrf, e->csrf, UI_TOKEN_HEX + 1);
		found = true;
		break;
	}
	pthread_mutex_unlock(&s->mu);
	return found;
}

void ui_session_drop(struct ui_sessions *s, const char *id, size_t n)
{
	if (!s || !id || !id_shape(id, n))
		return;
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < s->max; i++)
		if (s->v[i].id[0] && ui_token_equal(s->v[i].id, id, n))
			explicit_bzero(&s->v[i], sizeof(s->v[i]));
	pthread_mutex_unlock(&s->mu);
}

size_t ui_session_count(struct ui_sessions *s, int64_t now)
{
	size_t k = 0;
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < s->max; i++)
		if (s->v[i].id[0] && s->v[i].expires > now)
			k++;
	pthread_mutex_unlock(&s->mu);
	return k;
}

bool ui_cookie_get(const char *hdr, size_t n, const char *name, const char **val, size_t *vlen)
{
	size_t nl = strlen(name);
	size_t i = 0;
	while (hdr && i < n) {
		while (i < n && (hdr[i] == ' ' || hdr[i] == '\t' || hdr[i] == ';'))
			i++;
		size_t start = i;
		while (i < n && hdr[i] != ';')
			i++;
		/* one cookie-pair: hdr[start..i) */
		const char *eq = memchr(hdr + start, '=', i - start);
		if (!eq)
			continue;
		size_t klen = (size_t)(eq - (hdr + start));
		while (klen && (hdr[start + klen - 1] == ' ' || hdr[start + klen - 1] == '\t'))
			klen--;
		if (klen != nl || memcmp(hdr + start, name, nl) != 0)
			continue;
		const char *v = eq + 1;
		size_t vl = (size_t)(hdr + i - v);
		while (vl && (*v == ' ' || *v == '\t')) {
			v++;
			vl--;
		}
		while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
			vl--;
		if (vl >= 2 && v[0] == '"' && v[vl - 1] == '"') { /* RFC 6265 allows DQUOTEs */
			v++;
			vl -= 2;
		}
		*val = v;
		*vlen = vl;
		return true;
	}
	return false;
}
