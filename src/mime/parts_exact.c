/*
 * parts_exact.c — where each MIME part of a raw message lies, in bytes:
 * a walk over the raw message by its boundaries (no MIME library), in
 * the PartID numbering of mime.h, so that a part can be served exactly as
 * it was sent (CRLF kept) and the header fields every other reader ignores
 * can be found.
 *
 * Owns: header blocks (the first Content-Type and Content-Transfer-Encoding
 * of each count, as in Python's email package and Mailpit), boundary
 * delimiter lines (RFC 2046 §5.1.1: at a line start, transport padding
 * allowed, the CRLF before a delimiter belongs to it), and the span list.
 * Must never: read outside (raw, len), recurse without bound, or allocate
 * without bound (MIME_SPANS_MAX spans, MIME_DUPS_MAX duplicates).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/err.h"
#include "mime/parts_exact.h"

#define DEPTH_MAX 32

struct spans {
	struct mime_span *v;
	size_t n, cap;
	size_t *dups;
	size_t n_dups, cap_dups;
	int err;
};

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

/* The end of the line at p (its line ending included). */
static const char *line_end(const char *p, const char *end)
{
	const char *nl = memchr(p, '\n', (size_t)(end - p));
	return nl ? nl + 1 : end;
}

static bool line_is_empty(const char *p, const char *end)
{
	return (p < end && *p == '\n') || (end - p >= 2 && p[0] == '\r' && p[1] == '\n');
}

/* Copies the unfolded value of the field whose text is (p, n) after the
 * colon into out (trimmed, truncated). */
static void field_value(const char *p, size_t n, char *out, size_t outlen)
{
	size_t k = 0;
	bool space = false;
	for (size_t i = 0; i < n; i++) {
		char c = p[i];
		if (c == '\r' || c == '\n' || is_blank(c)) {
			space = k > 0;
			continue;
		}
		if (space && k + 1 < outlen)
			out[k++] = ' ';
		space = false;
		if (k + 1 < outlen)
			out[k++] = c;
	}
	out[k] = '\0';
}

static void dup_add(struct spans *s, size_t off)
{
	if (s->n_dups == MIME_DUPS_MAX)
		return;
	if (s->n_dups == s->cap_dups) {
		size_t nc = s->cap_dups ? s->cap_dups * 2 : 4;
		size_t *nd = realloc(s->dups, nc * sizeof(*nd));
		if (!nd) {
			s->err = TERN_ENOMEM;
			return;
		}
		s->dups = nd;
		s->cap_dups = nc;
	}
	s->dups[s->n_dups++] = off;
}

/* Reads the header block at p; fills ct and cte (the first of each) and
 * returns where the body starts (after the empty line, or end). */
static const char *headers_read(struct spans *s, const char *raw, const char *p, const char *end,
                                char *ct, size_t ctlen, char *cte, size_t ctelen)
{
	bool have_ct = false, have_cte = false;
	ct[0] = cte[0] = '\0';
	while (p < end) {
		if (line_is_empty(p, end))
			return line_end(p, end);
		/* one field: this line and its continuation lines */
		const char *f = p;
		p = line_end(p, end);
		while (p < end && is_blank(*p))
			p = line_end(p, end);
		const char *colon = memchr(f, ':', (size_t)(p - f));
		if (!colon)
			continue;
		size_t nl = (size_t)(colon - f);
		while (nl && is_blank(f[nl - 1]))
			nl--;
		if (nl == 12 && strncasecmp(f, "Content-Type", 12) == 0) {
			if (have_ct)
				dup_add(s, (size_t)(f - raw));
			else
				field_value(colon + 1, (size_t)(p - colon - 1), ct, ctlen);
			have_ct = true;
		} else if (nl == 25 && strncasecmp(f, "Content-Transfer-Encoding", 25) == 0 &&
		           !have_cte) {
			field_value(colon + 1, (size_t)(p - colon - 1), cte, ctelen);
			for (char *c = cte; *c; c++)
				if (*c >= 'A' && *c <= 'Z')
					*c = (char)(*c - 'A' + 'a');
			have_cte = true;
		}
	}
	return end;
}

/* The boundary parameter of a Content-Type value, or false. */
static bool boundary_of(const char *ct, char *out, size_t outlen)
{
	const char *p = ct;
	while ((p = strchr(p, ';'))) {
		p++;
		while (is_blank(*p))
			p++;
		if (strncasecmp(p, "boundary", 8) != 0)
			continue;
		const char *q = p + 8;
		while (is_blank(*q))
			q++;
		if (*q != '=')
			continue;
		q++;
		while (is_blank(*q))
			q++;
		size_t k = 0;
		if (*q == '"') {
			q++;
			while (*q && *q != '"' && k + 1 < outlen) {
				if (*q == '\\' && q[1])
					q++;
				out[k++] = *q++;
			}
		} else {
			while (*q && *q != ';' && !is_blank(*q) && k + 1 < outlen)
				out[k++] = *q++;
		}
		out[k] = '\0';
		return k > 0;
	}
	return false;
}

/* The media type of a Content-Type value, lowercased ("text/plain" when
 * there is none, as RFC 2045 §5.2 says). */
static void media_type(const char *ct, char *out, size_t outlen)
{
	size_t k = 0;
	for (const char *p = ct; *p && *p != ';' && !is_blank(*p) && k + 1 < outlen; p++)
		out[k++] = (*p >= 'A' && *p <= 'Z') ? (char)(*p - 'A' + 'a') : *p;
	out[k] = '\0';
	if (!k || !strchr(out, '/'))
		tern_strlcpy(out, "text/plain", outlen);
}

/* Whether the line at p is the delimiter "--b" (close: "--b--"), with
 * transport padding after it. */
static bool is_delim(const char *p, const char *end, const char *b, size_t bl, bool *close)
{
	if ((size_t)(end - p) < bl + 2 || p[0] != '-' || p[1] != '-' || memcmp(p + 2, b, bl) != 0)
		return false;
	const char *q = p + 2 + bl;
	*close = end - q >= 2 && q[0] == '-' && q[1] == '-';
	if (*close)
		q += 2;
	while (q < end && is_blank(*q))
		q++;
	return q == end || *q == '\n' || (*q == '\r' && (q + 1 == end || q[1] == '\n'));
}

static struct mime_span *span_new(struct spans *s)
{
	if (s->n == MIME_SPANS_MAX)
		return NULL;
	if (s->n == s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 8;
		struct mime_span *nv = realloc(s->v, nc * sizeof(*nv));
		if (!nv) {
			s->err = TERN_ENOMEM;
			return NULL;
		}
		s->v = nv;
		s->cap = nc;
	}
	struct mime_span *sp = &s->v[s->n++];
	memset(sp, 0, sizeof(*sp));
	return sp;
}

static void walk(struct spans *s, const char *raw, const char *p, const char *end, const char *id,
                 int depth, bool digest)
{
	if (s->err || depth > DEPTH_MAX)
		return;
	char ctv[1024], cte[32], mt[128], b[256];
	const char *body = headers_read(s, raw, p, end, ctv, sizeof(ctv), cte, sizeof(cte));
	if (ctv[0])
		media_type(ctv, mt, sizeof(mt));
	else /* RFC 2046 §5.1.5: in a digest the default is message/rfc822 */
		tern_strlcpy(mt, digest ? "message/rfc822" : "text/plain", sizeof(mt));
	struct mime_span *sp = span_new(s);
	if (!sp)
		return;
	tern_strlcpy(sp->part_id, id, sizeof(sp->part_id));
	tern_strlcpy(sp->content_type, mt, sizeof(sp->content_type));
	tern_strlcpy(sp->cte, cte, sizeof(sp->cte));
	sp->hdr_off = (size_t)(p - raw);
	sp->body_off = (size_t)(body - raw);
	sp->body_len = (size_t)(end - body);
	bool multi = strncmp(mt, "multipart/", 10) == 0 && boundary_of(ctv, b, sizeof(b));
	sp->multipart = multi;
	if (!multi)
		return;
	bool is_digest = strcmp(mt, "multipart/digest") == 0;
	size_t bl = strlen(b);
	/* the first delimiter may be the body's first line */
	const char *q = body, *part = NULL;
	size_t n = 0;
	while (q < end) {
		bool close;
		if (is_delim(q, end, b, bl, &close)) {
			if (part) {
				/* the CRLF (or LF) before the delimiter is the delimiter's */
				const char *pe = q;
				if (pe > part && pe[-1] == '\n')
					pe--;
				if (pe > part && pe[-1] == '\r')
					pe--;
				char cid[MIME_PARTID_MAX];
				n++;
				if (depth == 0)
					snprintf(cid, sizeof(cid), "%zu", n);
				else
					snprintf(cid, sizeof(cid), "%s.%zu", id, n);
				walk(s, raw, part, pe, cid, depth + 1, is_digest);
				if (s->err)
					return;
			}
			if (close) {
				part = NULL;
				break;
			}
			part = line_end(q, end);
			q = part;
			continue;
		}
		q = line_end(q, end);
	}
	if (part && part < end) { /* no close delimiter: the last part runs to the end */
		char cid[MIME_PARTID_MAX];
		n++;
		if (depth == 0)
			snprintf(cid, sizeof(cid), "%zu", n);
		else
			snprintf(cid, sizeof(cid), "%s.%zu", id, n);
		walk(s, raw, part, end, cid, depth + 1, is_digest);
	}
}

int mime_spans(const char *raw, size_t len, struct mime_spans *out)
{
	memset(out, 0, sizeof(*out));
	struct spans s = {0};
	walk(&s, raw, raw, raw + len, "0", 0, false);
	if (s.err) {
		free(s.v);
		free(s.dups);
		return s.err;
	}
	out->v = s.v;
	out->n = s.n;
	out->dups = s.dups;
	out->n_dups = s.n_dups;
	return TERN_OK;
}

void mime_spans_free(struct mime_spans *s)
{
	free(s->v);
	free(s->dups);
	memset(s, 0, sizeof(*s));
}

const struct mime_span *mime_span_find(const struct mime_spans *s, const char *part_id)
{
	for (size_t i = 0; i < s->n; i++)
		if (!s->v[i].multipart && strcmp(s->v[i].part_id, part_id) == 0)
			return &s->v[i];
	return NULL;
}

char *mime_first_ct_copy(const char *raw, size_t len, const struct mime_spans *s)
{
	if (!s->n_dups)
		return NULL;
	char *c = malloc(len ? len : 1);
	if (!c)
		return NULL;
	memcpy(c, raw, len);
	/* same length, so every offset still holds: the later fields become
	 * an unknown header that no reader takes for a Content-Type */
	for (size_t i = 0; i < s->n_dups; i++)
		if (s->dups[i] + 12 <= len)
			memcpy(c + s->dups[i], MIME_DUP_CT_NAME, 12);
	return c;
}
