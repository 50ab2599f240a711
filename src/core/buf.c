/*
 * buf.c — capped growable buffers and string views (see buf.h for the
 * invariants). Growth doubles, so appends are amortised O(1); the cap is
 * checked before any allocation.
 */
#include "core/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/err.h"

void tbuf_init(struct tbuf *b, size_t max)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	b->max = max;
}

void tbuf_free(struct tbuf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

void tbuf_reset(struct tbuf *b)
{
	b->len = 0;
	if (b->data)
		b->data[0] = '\0';
}

int tbuf_reserve(struct tbuf *b, size_t extra)
{
	/* The invariants of buf.h, checked where every append passes. */
	if (TERN_BUG_ON(b->len > b->max || (b->data == NULL) != (b->cap == 0) ||
	                (b->cap != 0 && b->len >= b->cap)))
		return TERN_EINVAL;
	if (extra > b->max || b->len > b->max - extra)
		return TERN_ELIMIT;
	size_t need = b->len + extra + 1; /* +1 keeps data[len] == '\0' */
	if (need <= b->cap)
		return TERN_OK;
	size_t ncap = b->cap ? b->cap : 64;
	while (ncap < need)
		ncap = ncap > SIZE_MAX / 2 ? need : ncap * 2;
	if (b->max < SIZE_MAX && ncap > b->max + 1) /* max + 1 would wrap to 0 */
		ncap = b->max + 1;
	char *p = realloc(b->data, ncap);
	if (!p)
		return TERN_ENOMEM;
	b->data = p;
	b->cap = ncap;
	return TERN_OK;
}

int tbuf_append(struct tbuf *b, const void *p, size_t n)
{
	int rc = tbuf_reserve(b, n);
	if (rc != TERN_OK)
		return rc;
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return TERN_OK;
}

int tbuf_append_str(struct tbuf *b, const char *s)
{
	return tbuf_append(b, s, strlen(s));
}

int tbuf_printf(struct tbuf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return TERN_EINVAL;
	int rc = tbuf_reserve(b, (size_t)n);
	if (rc != TERN_OK)
		return rc;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
	return TERN_OK;
}

char *tbuf_steal(struct tbuf *b, size_t *len)
{
	char *p = b->data;
	if (len)
		*len = b->len;
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	return p;
}

bool strv_eq(struct strv a, struct strv b)
{
	return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

bool strv_ieq(struct strv a, struct strv b)
{
	return a.n == b.n && (a.n == 0 || strncasecmp(a.p, b.p, a.n) == 0);
}

bool strv_istarts(struct strv s, struct strv prefix)
{
	return s.n >= prefix.n && (prefix.n == 0 || strncasecmp(s.p, prefix.p, prefix.n) == 0);
}

int strv_copy(struct strv s, char *dst, size_t dstlen)
{
	if (dstlen == 0 || s.n >= dstlen)
		return TERN_ELIMIT;
	if (s.n)
		memcpy(dst, s.p, s.n);
	dst[s.n] = '\0';
	return TERN_OK;
}

size_t tern_strlcpy(char *dst, const char *src, size_t size)
{
	size_t n = strlen(src);
	if (size) {
		size_t c = n < size - 1 ? n : size - 1;
		memcpy(dst, src, c);
		dst[c] = '\0';
	}
	return n;
}

void *xmalloc_or_null(size_t n)
{
	return malloc(n ? n : 1);
}

char *tern_strdup(const char *s)
{
	return s ? strdup(s) : NULL;
}

char *tern_strndup(const char *s, size_t n)
{
	char *p = malloc(n + 1);
	if (!p)
		return NULL;
	if (n)
		memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

void tern_ascii_lower(char *s)
{
	for (; *s; s++)
		if (*s >= 'A' && *s <= 'Z')
			*s = (char)(*s - 'A' + 'a');
}

bool tern_ascii_ieq(const char *a, const char *b)
{
	return strcasecmp(a, b) == 0;
}
