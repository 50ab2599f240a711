/*
 * dkim_canon.c — DKIM canonicalization (RFC 6376 §3.4) and the two hashes
 * of §3.7: the body hash, computed incrementally over chunks that may split
 * anywhere, and the header hash over the fields h= selects.
 *
 * Owns: the body streams (one per canonicalization and l= a message's
 * signatures need), the header-field selection rule (bottom-up, each field
 * once, §5.4.2). Never: holds the body (only a few bytes of state per
 * stream: a pending CR, WSP, and a count of empty lines that may yet turn
 * out to end the body), or hashes more than l= bytes.
 * Exposure: bytes from the network; fuzzed by tests/fuzz/fuzz_dkim_canon.c,
 * which checks that every chunking gives the one-shot result.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/codec.h"
#include "core/err.h"
#include "policy/dkim_internal.h"

static bool is_wsp(unsigned char c)
{
	return c == ' ' || c == '\t';
}

/* ------------------------------------------------------------ header */

int dkim_canon_header(enum dkim_canon c, const char *f, size_t len, struct tbuf *out)
{
	size_t body = len, keep = out->len;
	if (len >= 2 && f[len - 2] == '\r' && f[len - 1] == '\n')
		body = len - 2;
	int rc;
	if (c == DKIM_CANON_SIMPLE) {
		if ((rc = tbuf_append(out, f, body)) == TERN_OK)
			rc = tbuf_append(out, "\r\n", 2);
		goto out;
	}
	const char *colon = memchr(f, ':', body);
	size_t ne = colon ? (size_t)(colon - f) : body;
	if ((rc = tbuf_reserve(out, body + 3)) != TERN_OK)
		goto out;
	/* The name, then the value: CRLFs of folding go, WSP runs become one SP,
	 * none at either end; the name is lowercased. A valid name has no WSP
	 * or fold; an invalid one is made a line all the same. */
	for (int part = 0; part < 2; part++) {
		size_t from = part ? ne + 1 : 0, to = part ? body : ne;
		bool wsp = false, any = false;
		for (size_t i = from; i < to; i++) {
			char ch = f[i];
			if (ch == '\r' && i + 1 < to && f[i + 1] == '\n') {
				i++; /* unfold: the CRLF goes, the WSP after it is WSP */
				continue;
			}
			if (is_wsp((unsigned char)ch)) {
				wsp = true;
				continue;
			}
			if (wsp && any)
				out->data[out->len++] = ' ';
			wsp = false;
			any = true;
			if (part == 0 && ch >= 'A' && ch <= 'Z')
				ch = (char)(ch - 'A' + 'a');
			out->data[out->len++] = ch;
		}
		if (part == 0)
			out->data[out->len++] = ':';
		if (!colon)
			break;
	}
	out->data[out->len++] = '\r';
	out->data[out->len++] = '\n';
	out->data[out->len] = '\0';
out:
	if (rc != TERN_OK && out->len != keep) {
		out->len = keep;
		out->data[keep] = '\0';
	}
	return rc;
}

/* ------------------------------------------------------------ body */

#define CRLF8 "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
#define CRLF64 CRLF8 CRLF8 CRLF8 CRLF8 CRLF8 CRLF8 CRLF8 CRLF8
static const char crlfs[] = CRLF64 CRLF64 CRLF64 CRLF64;
#define CRLFS_N ((sizeof(crlfs) - 1) / 2)

/* A stream's output: hashed (md), or appended to sink for dkim_canon_body. */
struct sink {
	struct tbuf *buf;
	int err;
};

static void emit(struct dkim_bh *h, struct sink *s, const char *p, size_t n, bool *failed)
{
	size_t take = n;
	if (h->limited) {
		uint64_t room = h->total >= h->limit ? 0 : h->limit - h->total;
		if (take > room)
			take = (size_t)room;
	}
	h->total += n;
	if (take == 0)
		return;
	if (s) {
		if (s->err == TERN_OK)
			s->err = tbuf_append(s->buf, p, take);
	} else if (EVP_DigestUpdate(h->md, p, take) != 1) {
		*failed = true;
	}
}

static void ordinary(struct dkim_bh *h, struct sink *s, const char *p, size_t n, bool *failed)
{
	while (h->pending > 0) {
		size_t k = h->pending > CRLFS_N ? CRLFS_N : (size_t)h->pending;
		emit(h, s, crlfs, 2 * k, failed);
		h->pending -= k;
	}
	if (h->wsp) {
		emit(h, s, " ", 1, failed);
		h->wsp = false;
	}
	emit(h, s, p, n, failed);
	h->content = true;
}

static void line_end(struct dkim_bh *h)
{
	h->wsp = false; /* relaxed: WSP at the end of a line goes */
	h->pending++;
}

static void stream_update(struct dkim_bh *h, struct sink *s, const char *p, size_t n, bool *failed)
{
	size_t i = 0;
	if (h->cr && n > 0) {
		h->cr = false;
		if (p[0] == '\n') {
			line_end(h);
			i = 1;
		} else {
			ordinary(h, s, "\r", 1, failed);
		}
	}
	while (i < n) {
		if (h->canon == DKIM_CANON_SIMPLE) {
			const char *cr = memchr(p + i, '\r', n - i);
			size_t j = cr ? (size_t)(cr - p) : n;
			if (j > i)
				ordinary(h, s, p + i, j - i, failed);
			if (!cr)
				break;
			if (j + 1 == n) {
				h->cr = true;
				break;
			}
			if (p[j + 1] == '\n') {
				line_end(h);
				i = j + 2;
			} else {
				ordinary(h, s, "\r", 1, failed);
				i = j + 1;
			}
			continue;
		}
		unsigned char c = (unsigned char)p[i];
		if (is_wsp(c)) {
			h->wsp = true;
			i++;
			continue;
		}
		if (c == '\r') {
			if (i + 1 == n) {
				h->cr = true;
				break;
			}
			if (p[i + 1] == '\n') {
				line_end(h);
				i += 2;
			} else {
				ordinary(h, s, "\r", 1, failed);
				i++;
			}
			continue;
		}
		size_t j = i + 1;
		while (j < n && !is_wsp((unsigned char)p[j]) && p[j] != '\r')
			j++;
		ordinary(h, s, p + i, j - i, failed);
		i = j;
	}
}

/* The end of the body: §3.4.3 (one CRLF for any run of trailing empty lines,
 * or for an empty body) and §3.4.4 (none for an empty body). */
static void stream_end(struct dkim_bh *h, struct sink *s, bool *failed)
{
	if (h->cr) {
		h->cr = false;
		ordinary(h, s, "\r", 1, failed);
	}
	h->wsp = false;
	h->pending = 0;
	if (h->canon == DKIM_CANON_SIMPLE || h->content)
		emit(h, s, "\r\n", 2, failed);
}

int dkim_canon_body(enum dkim_canon c, const char *body, size_t len, struct tbuf *out)
{
	struct dkim_bh h = {.canon = c};
	struct sink s = {out, TERN_OK};
	size_t keep = out->len;
	bool failed = false;
	stream_update(&h, &s, body, len, &failed);
	stream_end(&h, &s, &failed);
	if (s.err != TERN_OK && out->len != keep) {
		out->len = keep;
		out->data[keep] = '\0';
	}
	return s.err;
}

int dkim_body_add(struct dkim_body *b, enum dkim_canon canon, bool limited, uint64_t limit)
{
	for (size_t i = 0; i < b->n; i++)
		if (b->h[i].canon == canon && b->h[i].limited == limited &&
		    (!limited || b->h[i].limit == limit))
			return (int)i;
	struct dkim_bh *nh = realloc(b->h, (b->n + 1) * sizeof(*nh));
	if (!nh)
		return -1;
	b->h = nh;
	struct dkim_bh *h = &b->h[b->n];
	memset(h, 0, sizeof(*h));
	h->canon = canon;
	h->limited = limited;
	h->limit = limit;
	if (!(h->md = EVP_MD_CTX_new()))
		return -1;
	if (EVP_DigestInit_ex(h->md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(h->md);
		return -1;
	}
	return (int)b->n++;
}

void dkim_body_update(struct dkim_body *b, const void *p, size_t n)
{
	if (TERN_BUG_ON(b->ended))
		return;
	for (size_t i = 0; i < b->n; i++)
		stream_update(&b->h[i], NULL, p, n, &b->failed);
}

/* The whole pages of p..n leave the process (a file mapping only: they are
 * read again from the page cache if touched). */
static void drop_pages(const char *p, size_t n)
{
	uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t a = ((uintptr_t)p + pg - 1) & ~(pg - 1), e = ((uintptr_t)p + n) & ~(pg - 1);
	if (e > a)
		(void)madvise((void *)a, e - a, MADV_DONTNEED);
}

void dkim_body_feed(struct dkim_body *const *b, size_t nb, const char *p, size_t n, bool mapped)
{
	for (size_t at = 0; at < n;) {
		size_t k = n - at < DKIM_BODY_PIECE ? n - at : DKIM_BODY_PIECE;
		for (size_t i = 0; i < nb; i++)
			if (b[i])
				dkim_body_update(b[i], p + at, k);
		if (mapped)
			drop_pages(p + at, k);
		at += k;
	}
}

bool dkim_body_finish(struct dkim_body *b)
{
	if (b->ended)
		return !b->failed;
	b->ended = true;
	for (size_t i = 0; i < b->n; i++) {
		unsigned dl = 0;
		stream_end(&b->h[i], NULL, &b->failed);
		if (EVP_DigestFinal_ex(b->h[i].md, b->h[i].digest, &dl) != 1 || dl != 32)
			b->failed = true;
	}
	return !b->failed;
}

void dkim_body_clear(struct dkim_body *b)
{
	for (size_t i = 0; i < b->n; i++)
		EVP_MD_CTX_free(b->h[i].md);
	free(b->h);
	memset(b, 0, sizeof(*b));
}

int dkim_body_hash_b64(enum dkim_canon c, const char *body, size_t len, char out[45])
{
	struct dkim_body b = {0};
	int rc = TERN_ENOMEM;
	if (dkim_body_add(&b, c, false, 0) < 0)
		goto out;
	dkim_body_update(&b, body, len);
	rc = TERN_EIO;
	if (!dkim_body_finish(&b))
		goto out;
	struct tbuf t = TBUF_INIT(64);
	rc = tern_base64_encode(b.h[0].digest, 32, &t);
	if (rc == TERN_OK)
		memcpy(out, t.data, 45); /* 44 chars and the NUL */
	tbuf_free(&t);
out:
	dkim_body_clear(&b);
	return rc;
}

/* ------------------------------------------------------------ header hash */

int dkim_header_hash(enum dkim_canon c, const char *hdr, const struct dkim_field *f, size_t nf,
                     const struct strv *names, size_t n, size_t skip, const char *sigfield,
                     size_t siglen, uint8_t out[32])
{
	int rc = TERN_ENOMEM;
	bool *used = calloc(nf ? nf : 1, sizeof(*used));
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	struct tbuf t = TBUF_INIT(DKIM_VERIFY_MAX_HEADER + DKIM_FIELD_MAX + 4);
	if (!used || !md)
		goto out;
	rc = TERN_EIO;
	if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
		goto out;
	for (size_t k = 0; k < n; k++) {
		for (size_t i = nf; i-- > 0;) {
			if (used[i] || i == skip ||
			    !dkim_field_is(hdr, &f[i], names[k].p, names[k].n))
				continue;
			used[i] = true;
			tbuf_reset(&t);
			if ((rc = dkim_canon_header(c, hdr + f[i].off, f[i].len, &t)) != TERN_OK)
				goto out;
			rc = TERN_EIO;
			if (EVP_DigestUpdate(md, t.data, t.len) != 1)
				goto out;
			break;
		}
	}
	tbuf_reset(&t);
	if ((rc = dkim_canon_header(c, sigfield, siglen, &t)) != TERN_OK)
		goto out;
	rc = TERN_EIO;
	/* the signature field goes in without its CRLF (§3.7 step 2.2) */
	if (EVP_DigestUpdate(md, t.data, t.len - 2) != 1)
		goto out;
	unsigned dl = 0;
	if (EVP_DigestFinal_ex(md, out, &dl) != 1 || dl != 32)
		goto out;
	rc = TERN_OK;
out:
	tbuf_free(&t);
	EVP_MD_CTX_free(md);
	free(used);
	return rc;
}
