/*
 * lite.c — mime_lite_parse (lite.h): a search index's view of a message in
 * one pass over its bytes, without GMime (whose parse, object tree and
 * unref were about half of the archive writer's instructions per message).
 *
 * Owns: nothing beyond one call (every result string is malloc'd for the
 * caller's struct mime_msg).
 * Must never: read outside raw[0..len), recurse deeper than LITE_MAX_DEPTH,
 * decode more than MIME_LITE_TEXT_MAX bytes of text or of HTML, return
 * invalid UTF-8 or a string with a control byte in a header field, or fail
 * on malformed input (only TERN_ENOMEM).
 */
#include "mime/lite.h"

#include <errno.h>
#include <iconv.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"

#define LITE_MAX_DEPTH 32  /* multipart nesting walked (as mime.c) */
#define LITE_MAX_PARTS 512 /* parts listed */
#define LITE_HDR_MAX 16384 /* bytes of one header field's value read */
#define LITE_CHARSET_MAX 40

struct span {
	const char *p;
	size_t n;
};

/* ------------------------------------------------------------ bytes */

static bool is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
}

static bool ieq(const char *a, size_t an, const char *b)
{
	size_t bn = strlen(b);
	if (an != bn)
		return false;
	for (size_t i = 0; i < an; i++)
		if (lower(a[i]) != b[i])
			return false;
	return true;
}

static struct span trim(struct span s)
{
	while (s.n && is_ws(s.p[0])) {
		s.p++;
		s.n--;
	}
	while (s.n && is_ws(s.p[s.n - 1]))
		s.n--;
	return s;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = lower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* ------------------------------------------------- charsets to UTF-8 */

/* Length of the valid UTF-8 sequence at p (1..4), 0 if none. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
	unsigned c = p[0];
	if (c < 0x80)
		return 1;
	size_t k;
	unsigned min;
	if (c >= 0xc2 && c <= 0xdf) {
		k = 2;
		min = 0x80;
	} else if (c >= 0xe0 && c <= 0xef) {
		k = 3;
		min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		k = 4;
		min = 0x10000;
	} else {
		return 0;
	}
	if (n < k)
		return 0;
	unsigned v = c & (0xff >> (k + 1));
	for (size_t i = 1; i < k; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		v = v << 6 | (p[i] & 0x3f);
	}
	if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return 0;
	return k;
}

static bool valid_utf8(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;
	while (i < n) {
		if (p[i] < 0x80) {
			i++;
			continue;
		}
		size_t k = utf8_seq(p + i, n - i);
		if (!k)
			return false;
		i += k;
	}
	return true;
}

static int put_cp(struct tbuf *out, unsigned v)
{
	char b[4];
	size_t k;
	if (v < 0x80) {
		b[0] = (char)v;
		k = 1;
	} else if (v < 0x800) {
		b[0] = (char)(0xc0 | v >> 6);
		b[1] = (char)(0x80 | (v & 0x3f));
		k = 2;
	} else {
		b[0] = (char)(0xe0 | v >> 12);
		b[1] = (char)(0x80 | ((v >> 6) & 0x3f));
		b[2] = (char)(0x80 | (v & 0x3f));
		k = 3;
	}
	return tbuf_append(out, b, k);
}

/* Windows-1252's 0x80..0x9f (0: undefined, kept as U+FFFD). */
static const unsigned short CP1252[32] = {
    0x20ac, 0,      0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160,
    0x2039, 0x0152, 0,      0x017d, 0,      0,      0x2018, 0x2019, 0x201c, 0x201d, 0x2022,
    0x2013, 0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0,      0x017e, 0x0178};

/* Any bytes as Windows-1252 (a superset of Latin-1 every byte maps through). */
static int from_1252(struct tbuf *out, const char *s, size_t n)
{
	int rc = TERN_OK;
	for (size_t i = 0; i < n && rc == TERN_OK; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == 0)
			continue; /* a C string: no NUL inside */
		if (c < 0x80)
			rc = tbuf_append(out, &s[i], 1);
		else if (c < 0xa0)
			rc = put_cp(out, CP1252[c - 0x80] ? CP1252[c - 0x80] : 0xfffd);
		else
			rc = put_cp(out, c);
	}
	return rc;
}

/* True when p[0..n) is 7-bit without NUL, eight bytes at a time (most
 * text is, and this was the reading's biggest cost byte by byte). */
static bool plain_ascii(const char *p, size_t n)
{
	const uint64_t lo = 0x0101010101010101u, hi = 0x8080808080808080u;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t w;
		memcpy(&w, p + i, sizeof(w));
		if ((w & hi) || ((w - lo) & ~w & hi)) /* a byte >= 0x80, or a zero byte */
			return false;
	}
	for (; i < n; i++)
		if (p[i] == '\0' || (unsigned char)p[i] >= 0x80)
			return false;
	return true;
}

/* UTF-8 (or US-ASCII) bytes: as they are when valid (NULs dropped), else
 * read as Windows-1252, as mime.c does. */
static int from_utf8(struct tbuf *out, const char *s, size_t n)
{
	if (plain_ascii(s, n))
		return tbuf_append(out, s, n);
	if (!valid_utf8(s, n))
		return from_1252(out, s, n);
	if (!memchr(s, 0, n))
		return tbuf_append(out, s, n);
	int rc = TERN_OK;
	for (size_t i = 0; i < n && rc == TERN_OK;) {
		const char *z = memchr(s + i, 0, n - i);
		size_t e = z ? (size_t)(z - s) : n;
		rc = tbuf_append(out, s + i, e - i);
		i = e + 1;
	}
	return rc;
}

/* cs names a charset read as UTF-8 (or a subset of it). */
static bool cs_utf8(const char *cs)
{
	return !*cs || ieq(cs, strlen(cs), "utf-8") || ieq(cs, strlen(cs), "utf8") ||
	       ieq(cs, strlen(cs), "us-ascii") || ieq(cs, strlen(cs), "ascii");
}

static bool cs_1252(const char *cs)
{
	size_t n = strlen(cs);
	return ieq(cs, n, "iso-8859-1") || ieq(cs, n, "latin1") || ieq(cs, n, "windows-1252") ||
	       ieq(cs, n, "cp1252") || ieq(cs, n, "iso8859-1") || ieq(cs, n, "l1");
}

/* s[0..n) in charset cs appended to out as UTF-8. Unknown charsets and
 * undecodable bytes fall back as from_utf8 does; a sequence iconv refuses
 * becomes U+FFFD. */
static int to_utf8(struct tbuf *out, const char *s, size_t n, const char *cs)
{
	if (cs_utf8(cs))
		return from_utf8(out, s, n);
	if (cs_1252(cs))
		return from_1252(out, s, n);
	iconv_t cd = iconv_open("UTF-8", cs);
	if (cd == (iconv_t)-1)
		return from_utf8(out, s, n);
	int rc = TERN_OK;
	char *in = (char *)s;
	size_t inleft = n;
	char buf[4096];
	while (inleft && rc == TERN_OK) {
		char *o = buf;
		size_t oleft = sizeof(buf);
		size_t r = iconv(cd, &in, &inleft, &o, &oleft);
		int e = r == (size_t)-1 ? errno : 0;
		for (char *q = buf; q < o && rc == TERN_OK; q++) /* no NUL inside */
			if (*q)
				rc = tbuf_append(out, q, 1);
		if (e == EILSEQ || e == EINVAL) {
			rc = rc == TERN_OK ? put_cp(out, 0xfffd) : rc;
			in++;
			inleft--;
		} else if (e && e != E2BIG) {
			break;
		}
	}
	iconv_close(cd);
	return rc;
}

/* A charset name from a header (token characters only, at most
 * LITE_CHARSET_MAX), NUL-terminated in cs; "" when there is none. RFC 2231
 * "*lang" suffixes are cut. */
static void charset_name(struct span s, char cs[LITE_CHARSET_MAX + 1])
{
	size_t k = 0;
	for (size_t i = 0; i < s.n && k < LITE_CHARSET_MAX; i++) {
		char c = s.p[i];
		if (c == '*')
			break;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.' || c == ':')) {
			k = 0;
			break;
		}
		cs[k++] = c;
	}
	cs[k] = '\0';
}

/* ------------------------------------------ transfer encodings (lenient) */

static int b64val(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Base64 ignoring anything outside the alphabet, up to '=' or max bytes out. */
static int b64_decode(const char *s, size_t n, size_t max, struct tbuf *out)
{
	if (max < SIZE_MAX / 4 && n > 2 * max + 64) /* 4 in per 3 out, plus line breaks */
		n = 2 * max + 64;
	uint32_t acc = 0;
	int bits = 0, rc = TERN_OK;
	size_t got = 0;
	for (size_t i = 0; i < n && rc == TERN_OK && got < max; i++) {
		if (s[i] == '=')
			break;
		int v = b64val(s[i]);
		if (v < 0)
			continue;
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			char c = (char)((acc >> bits) & 0xff);
			rc = tbuf_append(out, &c, 1);
			got++;
		}
	}
	return rc;
}

/* Quoted-printable (RFC 2045 §6.7) read leniently: "=XX" in either case is
 * the byte, "=" (then blanks) before a line end a soft break, any other "="
 * itself. q: RFC 2047's Q ('_' is a space). At most about max bytes out
 * (the input read is bounded too: a byte out takes at most 3 in). */
static int qp_decode(const char *s, size_t n, bool q, size_t max, struct tbuf *out)
{
	if (max < SIZE_MAX / 4 && n > 3 * max + 3)
		n = 3 * max + 3;
	int rc = TERN_OK;
	size_t i = 0, start = 0;
	while (i < n && rc == TERN_OK) {
		char c = s[i];
		if (c != '=' && !(q && c == '_')) {
			i++;
			continue;
		}
		rc = tbuf_append(out, s + start, i - start);
		if (rc != TERN_OK)
			break;
		if (c == '_') {
			rc = tbuf_append(out, " ", 1);
			i++;
		} else if (i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
			char b = (char)(hexval(s[i + 1]) << 4 | hexval(s[i + 2]));
			rc = tbuf_append(out, &b, 1);
			i += 3;
		} else {
			size_t j = i + 1; /* "=" then blanks to the line end: a soft break */
			while (j < n && (s[j] == ' ' || s[j] == '\t'))
				j++;
			if (j < n && (s[j] == '\r' || s[j] == '\n')) {
				i = j + (s[j] == '\r' && j + 1 < n && s[j + 1] == '\n') + 1;
			} else {
				rc = tbuf_append(out, "=", 1);
				i++;
			}
		}
		start = i;
	}
	if (rc == TERN_OK && start < i)
		rc = tbuf_append(out, s + start, i - start);
	return rc;
}

/* --------------------------------------------- RFC 2047 encoded words */

/* The length of the encoded word ("=?cs?B|Q?text?=") at s[0..n), 0 when
 * there is none; *text_off and *text_n locate its text. */
static size_t word_len(const char *s, size_t n, size_t *text_off, size_t *text_n)
{
	if (n < 8 || s[0] != '=' || s[1] != '?')
		return 0;
	const char *q1 = memchr(s + 2, '?', n - 2);
	if (!q1 || q1 == s + 2 || (size_t)(q1 - s) + 3 >= n || q1[2] != '?')
		return 0;
	char enc = lower(q1[1]);
	if (enc != 'b' && enc != 'q')
		return 0;
	const char *text = q1 + 3;
	for (const char *p = text; p + 1 < s + n; p++) {
		if (*p == '?' && p[1] == '=') {
			*text_off = (size_t)(text - s);
			*text_n = (size_t)(p - text);
			return (size_t)(p + 2 - s);
		}
		if (is_ws(*p))
			return 0; /* no blanks inside a word */
	}
	return 0;
}

/* The encoded word at s (word_len said so) decoded and appended as UTF-8. */
static int decode_word(const char *s, size_t text_off, size_t text_n, struct tbuf *out)
{
	char cs[LITE_CHARSET_MAX + 1];
	size_t csn = text_off - 5; /* "=?" cs "?X?" */
	charset_name((struct span){s + 2, csn}, cs);
	struct tbuf raw = TBUF_INIT(SIZE_MAX / 2);
	int rc = lower(s[text_off - 2]) == 'b'
	             ? b64_decode(s + text_off, text_n, SIZE_MAX, &raw)
	             : qp_decode(s + text_off, text_n, true, SIZE_MAX, &raw);
	if (rc == TERN_OK)
		rc = to_utf8(out, raw.data ? raw.data : "", raw.len, cs);
	tbuf_free(&raw);
	return rc;
}

/* s[0..n) (a header value, at most LITE_HDR_MAX bytes of it) with its
 * encoded words decoded and the rest read as UTF-8 (else Windows-1252);
 * blanks between two encoded words dropped (RFC 2047 §6.2), line breaks
 * (folding) removed, control bytes made '_', trimmed. */
static int decode_header(const char *s, size_t n, struct tbuf *out)
{
	int rc = TERN_OK;
	size_t i = 0, base = out->len, to, tn, wl;
	bool prev_word = false;
	if (n > LITE_HDR_MAX)
		n = LITE_HDR_MAX;
	while (i < n && rc == TERN_OK) {
		if (is_ws(s[i])) {
			size_t j = i;
			while (j < n && is_ws(s[j]))
				j++;
			if (!(prev_word && j < n && word_len(s + j, n - j, &to, &tn))) {
				for (size_t k = i; k < j && rc == TERN_OK; k++)
					if (s[k] != '\r' && s[k] != '\n')
						rc = tbuf_append(out, " ", 1);
				prev_word = false;
			}
			i = j;
			continue;
		}
		if ((wl = word_len(s + i, n - i, &to, &tn))) {
			rc = decode_word(s + i, to, tn, out);
			i += wl;
			prev_word = true;
			continue;
		}
		size_t j = i + 1; /* other text: to the next blank or "=?" */
		while (j < n && !is_ws(s[j]) && !(s[j] == '=' && j + 1 < n && s[j + 1] == '?'))
			j++;
		rc = from_utf8(out, s + i, j - i);
		i = j;
		prev_word = false;
	}
	if (rc != TERN_OK)
		return rc;
	/* controls become '_' (a header field never carries them), then trim */
	for (size_t k = base; k < out->len; k++)
		if ((unsigned char)out->data[k] < 0x20 || out->data[k] == 0x7f)
			out->data[k] = '_';
	size_t e = out->len;
	while (e > base && out->data[e - 1] == ' ')
		e--;
	size_t b = base;
	while (b < e && out->data[b] == ' ')
		b++;
	if (b > base)
		memmove(out->data + base, out->data + b, e - b);
	out->len = base + (e - b);
	if (out->data)
		out->data[out->len] = '\0';
	return TERN_OK;
}

/* b's bytes as a malloc'd C string ("" when empty); NULL without memory. */
static char *steal_str(struct tbuf *b)
{
	if (tbuf_reserve(b, 1) != TERN_OK)
		return NULL;
	b->data[b->len] = '\0';
	size_t n;
	return tbuf_steal(b, &n);
}

static char *decode_header_dup(struct span v)
{
	struct tbuf b = TBUF_INIT(SIZE_MAX / 2);
	char *r = decode_header(v.p, v.n, &b) == TERN_OK ? steal_str(&b) : NULL;
	tbuf_free(&b);
	return r;
}

/* --------------------------------------------------------- header block */

enum {
	H_SUBJECT,
	H_FROM,
	H_TO,
	H_CC,
	H_BCC,
	H_REPLY_TO,
	H_MESSAGE_ID,
	H_CTYPE,
	H_CTE,
	H_CDISP,
	H_CID,
	H_N
};
static const char *const HNAMES[H_N] = {"subject",
                                        "from",
                                        "to",
                                        "cc",
                                        "bcc",
                                        "reply-to",
                                        "message-id",
                                        "content-type",
                                        "content-transfer-encoding",
                                        "content-disposition",
                                        "content-id"};

struct hdrs {
	struct span v[H_N]; /* the first of each, raw (folded); p NULL if absent */
	struct span body;
};

/* Reads the header block of s[0..n) (lines to the first empty one, or to
 * a line that is not a field, which starts the body; LF or CRLF) into h;
 * h->body is the rest. */
static void read_headers(const char *s, size_t n, struct hdrs *h)
{
	memset(h, 0, sizeof(*h));
	size_t i = 0;
	int cur = -1; /* the field whose continuation lines extend v[cur] */
	while (i < n) {
		const char *nl = memchr(s + i, '\n', n - i);
		size_t e = nl ? (size_t)(nl - s) : n; /* the line is s[i..e) */
		size_t next = nl ? e + 1 : n;
		size_t le = e > i && s[e - 1] == '\r' ? e - 1 : e;
		if (le == i) { /* the empty line */
			i = next;
			break;
		}
		if (s[i] == ' ' || s[i] == '\t') {
			if (cur >= 0)
				h->v[cur].n = le - (size_t)(h->v[cur].p - s);
			i = next;
			continue;
		}
		cur = -1;
		const char *colon = memchr(s + i, ':', le - i);
		if (!colon) /* not a field: the body starts here (as GMime reads it) */
			break;
		{
			size_t nn = (size_t)(colon - (s + i));
			while (nn && (s[i + nn - 1] == ' ' || s[i + nn - 1] == '\t'))
				nn--;
			for (int k = 0; k < H_N; k++)
				if (!h->v[k].p && ieq(s + i, nn, HNAMES[k])) {
					h->v[k].p = colon + 1;
					h->v[k].n = le - (size_t)(colon + 1 - s);
					cur = k;
					break;
				}
		}
		i = next;
	}
	h->body = (struct span){s + i, i <= n ? n - i : 0};
}

/* -------------------------------------------- Content-Type parameters */

/* The media type of v, lowercase "type/subtype" in out ("" if none). */
static void media_type(struct span v, char *out, size_t outlen)
{
	size_t k = 0;
	struct span t = trim(v);
	for (size_t i = 0; i < t.n && k + 1 < outlen; i++) {
		char c = t.p[i];
		if (c == ';' || is_ws(c) || c == '(')
			break;
		out[k++] = lower(c);
	}
	out[k] = '\0';
	if (!strchr(out, '/'))
		out[0] = '\0';
}

/* RFC 2231 value "charset'lang'%XX..." (ext) or a plain one, appended. */
static int param_piece(struct tbuf *out, const char *p, size_t n, bool ext, bool first, char *cs)
{
	if (ext && first) {
		const char *a = memchr(p, '\'', n);
		const char *b = a ? memchr(a + 1, '\'', (size_t)(p + n - a - 1)) : NULL;
		if (a && b) {
			charset_name((struct span){p, (size_t)(a - p)}, cs);
			n -= (size_t)(b + 1 - p);
			p = b + 1;
		}
	}
	if (!ext)
		return tbuf_append(out, p, n);
	int rc = TERN_OK;
	for (size_t i = 0; i < n && rc == TERN_OK; i++) {
		if (p[i] == '%' && i + 2 < n + 0 && hexval(p[i + 1]) >= 0 &&
		    hexval(p[i + 2]) >= 0) {
			char c = (char)(hexval(p[i + 1]) << 4 | hexval(p[i + 2]));
			rc = tbuf_append(out, &c, 1);
			i += 2;
		} else {
			rc = tbuf_append(out, p + i, 1);
		}
	}
	return rc;
}

/*
 * The parameter name of header value v (after the first ';'), decoded to
 * UTF-8 (raw_value: as it is) and malloc'd in *out: plain (token or quoted string, with RFC 2047
 * words inside decoded), RFC 2231 extended (name*=cs'lang'%XX) or split
 * (name*0, name*1*, ... in order). *out NULL when absent. TERN_ENOMEM.
 */
static int param(struct span v, const char *name, bool raw_value, char **out)
{
	*out = NULL;
	if (!v.p) /* no such field */
		return TERN_OK;
	struct tbuf raw = TBUF_INIT(SIZE_MAX / 2);
	char cs[LITE_CHARSET_MAX + 1] = "";
	bool found = false, ext_any = false;
	int rc = TERN_OK, want_piece = 0;
	size_t nl = strlen(name);
	const char *p = v.p, *e = v.p + v.n;
	bool inq = false;
	while (p < e && (*p != ';' || inq)) /* past the media type */
		inq = *p++ == '"' ? !inq : inq;
	while (p < e && rc == TERN_OK) {
		p++; /* the ';' */
		while (p < e && is_ws(*p))
			p++;
		const char *ns = p;
		while (p < e && *p != '=' && *p != ';' && !is_ws(*p))
			p++;
		size_t nn = (size_t)(p - ns);
		while (p < e && is_ws(*p))
			p++;
		if (p >= e || *p != '=')
			continue;
		p++;
		while (p < e && is_ws(*p))
			p++;
		struct tbuf val = TBUF_INIT(SIZE_MAX / 2);
		if (p < e && *p == '"') {
			for (p++; p < e && *p != '"' && rc == TERN_OK; p++) {
				if (*p == '\\' && p + 1 < e)
					p++;
				if (*p != '\r' && *p != '\n')
					rc = tbuf_append(&val, p, 1);
			}
			if (p < e)
				p++;
		} else {
			const char *vs = p;
			while (p < e && *p != ';' && !is_ws(*p))
				p++;
			rc = tbuf_append(&val, vs, (size_t)(p - vs));
		}
		while (p < e && *p != ';')
			p++;
		/* name, name*, name*N, name*N* */
		if (rc == TERN_OK && nn >= nl && ieq(ns, nl, name)) {
			const char *suf = ns + nl;
			size_t sn = nn - nl;
			bool ext = sn && suf[sn - 1] == '*';
			size_t core = ext ? sn - 1 : sn;
			const char *vp = val.data ? val.data : "";
			if (sn == 0 && !ext_any && !found) {
				rc = tbuf_append(&raw, vp, val.len);
				found = true;
			} else if (core == 0 && ext) {
				tbuf_reset(&raw);
				rc = param_piece(&raw, vp, val.len, true, true, cs);
				found = ext_any = true;
			} else if (core >= 2 && suf[0] == '*') {
				int num = 0;
				bool ok = core - 1 <= 3;
				for (size_t k = 1; ok && k < core; k++) {
					ok = suf[k] >= '0' && suf[k] <= '9';
					num = num * 10 + (suf[k] - '0');
				}
				if (ok && num == want_piece) {
					if (num == 0) {
						tbuf_reset(&raw);
						found = ext_any = true;
					}
					rc = param_piece(&raw, vp, val.len, ext, num == 0, cs);
					want_piece++;
				}
			}
		}
		tbuf_free(&val);
	}
	if (rc == TERN_OK && found) {
		struct tbuf u = TBUF_INIT(SIZE_MAX / 2);
		if (raw_value) /* a boundary: its bytes exactly, blanks and all */
			rc = tbuf_append(&u, raw.data ? raw.data : "", raw.len);
		else if (ext_any && *cs)
			rc = to_utf8(&u, raw.data ? raw.data : "", raw.len, cs);
		else
			rc = decode_header(raw.data ? raw.data : "", raw.len, &u);
		if (rc == TERN_OK && !(*out = steal_str(&u)))
			rc = TERN_ENOMEM;
		tbuf_free(&u);
	}
	tbuf_free(&raw);
	return rc == TERN_OK ? TERN_OK : TERN_ENOMEM;
}

/* --------------------------------------------------------- addresses */

static int add_addr(struct mime_addrs *a, const char *name, size_t nn, const char *addr, size_t an)
{
	if (a->n >= 1000)
		return TERN_OK;
	struct mime_addr *v = realloc(a->v, (a->n + 1) * sizeof(*v));
	if (!v)
		return TERN_ENOMEM;
	a->v = v;
	struct tbuf nb = TBUF_INIT(SIZE_MAX / 2), ab = TBUF_INIT(SIZE_MAX / 2);
	int rc = decode_header(name, nn, &nb);
	if (rc == TERN_OK)
		rc = decode_header(addr, an, &ab);
	if (rc == TERN_OK)
		rc = tbuf_reserve(&nb, 1);
	if (rc == TERN_OK)
		rc = tbuf_reserve(&ab, 1);
	if (rc != TERN_OK) {
		tbuf_free(&nb);
		tbuf_free(&ab);
		return TERN_ENOMEM;
	}
	size_t k, w = 0;
	nb.data[nb.len] = '\0';
	/* an addr-spec has no blanks: "a @ b" is "a@b" */
	for (size_t r = 0; r < ab.len; r++)
		if (ab.data[r] != ' ')
			ab.data[w++] = ab.data[r];
	ab.len = w;
	ab.data[w] = '\0';
	a->v[a->n].name = tbuf_steal(&nb, &k);
	a->v[a->n].addr = tbuf_steal(&ab, &k);
	a->n++;
	return TERN_OK;
}

/*
 * An address list (RFC 5322 §3.4, leniently): mailboxes "Name <addr>",
 * "addr", "addr (Name)", quoted names, comments, groups "g: a, b;". Each
 * mailbox with an address or a name is added to out.
 */
static int parse_addrs(struct span v, struct mime_addrs *out)
{
	if (!v.p)
		return TERN_OK;
	if (v.n > LITE_HDR_MAX)
		v.n = LITE_HDR_MAX;
	struct tbuf phrase = TBUF_INIT(SIZE_MAX / 2), comment = TBUF_INIT(SIZE_MAX / 2);
	const char *angle = NULL;
	size_t angle_n = 0;
	bool have_angle = false;
	int rc = TERN_OK;
	const char *p = v.p, *e = v.p + v.n;
	while (rc == TERN_OK) {
		char c = p < e ? *p : ',';
		if (c == ',' || c == ';' || (c == ':' && !have_angle)) {
			if (c == ':') { /* a group's name: not a mailbox */
				tbuf_reset(&phrase);
				tbuf_reset(&comment);
			} else {
				struct span ph =
				    trim((struct span){phrase.data ? phrase.data : "", phrase.len});
				struct span cm = trim(
				    (struct span){comment.data ? comment.data : "", comment.len});
				if (have_angle)
					rc = add_addr(out, ph.p, ph.n, angle, angle_n);
				else if (ph.n)
					rc = add_addr(out, cm.p, cm.n, ph.p, ph.n);
				tbuf_reset(&phrase);
				tbuf_reset(&comment);
				have_angle = false;
			}
			if (p >= e)
				break;
			p++;
			continue;
		}
		if (c == '"') {
			const char *q = p + 1;
			while (q < e && *q != '"' && rc == TERN_OK) {
				if (*q == '\\' && q + 1 < e)
					q++;
				rc = tbuf_append(&phrase, q, 1);
				q++;
			}
			p = q < e ? q + 1 : e;
			continue;
		}
		if (c == '(') {
			int depth = 0;
			const char *q = p;
			for (; q < e; q++) {
				if (*q == '\\' && q + 1 < e) {
					q++;
					continue;
				}
				if (*q == '(')
					depth++;
				else if (*q == ')' && --depth == 0)
					break;
			}
			if (comment.len == 0 && q > p + 1)
				rc = tbuf_append(&comment, p + 1, (size_t)(q - p - 1));
			p = q < e ? q + 1 : e;
			if (rc == TERN_OK && phrase.len)
				rc = tbuf_append(&phrase, " ", 1);
			continue;
		}
		if (c == '<') {
			const char *q = memchr(p, '>', (size_t)(e - p));
			const char *end = q ? q : e;
			angle = p + 1;
			angle_n = (size_t)(end - p - 1);
			have_angle = true;
			p = q ? q + 1 : e;
			continue;
		}
		if (!have_angle)
			rc = tbuf_append(&phrase, is_ws(c) ? " " : p, 1);
		p++;
	}
	tbuf_free(&phrase);
	tbuf_free(&comment);
	return rc;
}

/* ------------------------------------------------------------ the body */

struct walk {
	struct mime_msg *m;
	struct tbuf text, html;
	bool alt_text, alt_html, in_alt;
	int err;
};

static void set_id(char *dst, const char *parent, size_t idx, bool top)
{
	if (top)
		snprintf(dst, MIME_PARTID_MAX, "%zu", idx);
	else
		snprintf(dst, MIME_PARTID_MAX, "%s.%zu", parent, idx);
}

/* The boundary line "--b" (then "--" or blanks only) at s[0..n)? *close
 * says whether it is the last one. */
static bool delimiter(const char *s, size_t n, const char *b, size_t bn, bool *close)
{
	if (n < bn + 2 || s[0] != '-' || s[1] != '-' || memcmp(s + 2, b, bn) != 0)
		return false;
	size_t i = bn + 2;
	*close = n >= i + 2 && s[i] == '-' && s[i + 1] == '-';
	if (*close)
		i += 2;
	for (; i < n; i++)
		if (!is_ws(s[i]))
			return false;
	return true;
}

static void walk_entity(struct walk *w, const char *s, size_t n, const char *id, int depth,
                        bool digest);

/* The body parts of a multipart body s[0..n) with boundary b. */
static void walk_multipart(struct walk *w, const char *s, size_t n, const char *b, const char *id,
                           int depth, bool alt, bool digest)
{
	size_t bn = strlen(b);
	size_t i = 0, part_start = SIZE_MAX, idx = 0;
	bool top = depth == 0;
	while (i <= n && !w->err) {
		const char *nl = i < n ? memchr(s + i, '\n', n - i) : NULL;
		size_t e = nl ? (size_t)(nl - s) : n;
		size_t le = e > i && s[e - 1] == '\r' ? e - 1 : e;
		bool close = false;
		bool delim = i < n && delimiter(s + i, le - i, b, bn, &close);
		if (delim || i >= n) {
			if (part_start != SIZE_MAX) {
				/* the line break before the delimiter is the delimiter's */
				size_t pe = i;
				if (delim && pe > part_start && s[pe - 1] == '\n')
					pe--;
				if (delim && pe > part_start && s[pe - 1] == '\r')
					pe--;
				char cid[MIME_PARTID_MAX];
				set_id(cid, id, ++idx, top);
				w->in_alt = alt;
				walk_entity(w, s + part_start, pe - part_start, cid, depth + 1,
				            digest);
			}
			if (i >= n || close || w->m->n_parts >= LITE_MAX_PARTS)
				break;
			part_start = nl ? e + 1 : n;
		}
		if (!nl) { /* the last line: an open part ends here */
			if (part_start == SIZE_MAX || part_start >= n)
				break;
			i = n;
			continue;
		}
		i = e + 1;
	}
}

static struct mime_part *new_part(struct walk *w)
{
	if (w->m->n_parts >= LITE_MAX_PARTS)
		return NULL;
	struct mime_part *v = realloc(w->m->parts, (w->m->n_parts + 1) * sizeof(*v));
	if (!v) {
		w->err = TERN_ENOMEM;
		return NULL;
	}
	w->m->parts = v;
	struct mime_part *p = &v[w->m->n_parts++];
	memset(p, 0, sizeof(*p));
	return p;
}

/* A text leaf's body, transfer-decoded and in UTF-8, appended to dst
 * (after a "\n" when dst has text), up to MIME_LITE_TEXT_MAX. */
static void append_text(struct walk *w, struct tbuf *dst, const struct hdrs *h, struct span body)
{
	if (dst->len >= MIME_LITE_TEXT_MAX)
		return;
	size_t room = MIME_LITE_TEXT_MAX - dst->len;
	struct span t = trim((struct span){h->v[H_CTE].p ? h->v[H_CTE].p : "", h->v[H_CTE].n});
	struct tbuf dec = TBUF_INIT(SIZE_MAX / 2);
	int rc;
	if (ieq(t.p, t.n, "base64"))
		rc = b64_decode(body.p, body.n, room + 8, &dec);
	else if (ieq(t.p, t.n, "quoted-printable"))
		rc = qp_decode(body.p, body.n, false, room + 8, &dec);
	else
		rc = tbuf_append(&dec, body.p, body.n < room + 8 ? body.n : room + 8);
	char *cs = NULL;
	if (rc == TERN_OK && h->v[H_CTYPE].p)
		rc = param(h->v[H_CTYPE], "charset", true, &cs);
	char csn[LITE_CHARSET_MAX + 1] = "";
	if (cs)
		charset_name((struct span){cs, strlen(cs)}, csn);
	free(cs);
	size_t base = dst->len;
	if (rc == TERN_OK && dst->len)
		rc = tbuf_append(dst, "\n", 1);
	if (rc == TERN_OK)
		rc = to_utf8(dst, dec.data ? dec.data : "", dec.len, csn);
	tbuf_free(&dec);
	if (rc != TERN_OK) {
		w->err = TERN_ENOMEM;
		return;
	}
	/* bounded: cut at a character boundary at most MIME_LITE_TEXT_MAX */
	if (dst->len > MIME_LITE_TEXT_MAX) {
		size_t cut = MIME_LITE_TEXT_MAX;
		while (cut > base && ((unsigned char)dst->data[cut] & 0xc0) == 0x80)
			cut--;
		dst->len = cut;
		dst->data[cut] = '\0';
	}
}

/* One entity (header block + body) at s[0..n): a multipart walked, a leaf
 * listed and, as text or HTML body, decoded. */
static void walk_entity(struct walk *w, const char *s, size_t n, const char *id, int depth,
                        bool digest)
{
	bool under_alt = w->in_alt;
	w->in_alt = false;
	if (w->err || depth > LITE_MAX_DEPTH)
		return;
	struct hdrs h;
	read_headers(s, n, &h);
	char ct[128];
	media_type(h.v[H_CTYPE], ct, sizeof(ct));
	if (!ct[0]) /* RFC 2046 §5.1.5: a digest's parts are messages */
		tern_strlcpy(ct, digest ? "message/rfc822" : "text/plain", sizeof(ct));
	char *boundary = NULL;
	bool multi = strncmp(ct, "multipart/", 10) == 0;
	if (multi && param(h.v[H_CTYPE], "boundary", true, &boundary) != TERN_OK) {
		w->err = TERN_ENOMEM;
		return;
	}
	if (multi && (!boundary || !*boundary)) { /* unreadable: a leaf, as text */
		multi = false;
		tern_strlcpy(ct, "text/plain", sizeof(ct));
	}
	struct mime_part *p = new_part(w);
	if (!p && w->err) {
		free(boundary);
		return;
	}
	if (p) {
		tern_strlcpy(p->part_id, id, sizeof(p->part_id));
		p->content_type = tern_strdup(ct);
		char *fn = NULL, *nm = NULL;
		if (param(h.v[H_CDISP], "filename", false, &fn) != TERN_OK ||
		    (!fn && param(h.v[H_CTYPE], "name", false, &nm) != TERN_OK)) {
			free(fn);
			w->err = TERN_ENOMEM;
		}
		p->filename = fn ? fn : nm ? nm : tern_strdup("");
		struct span cid = trim(h.v[H_CID].p ? h.v[H_CID] : (struct span){"", 0});
		if (cid.n && cid.p[0] == '<') {
			cid.p++;
			cid.n--;
		}
		if (cid.n && cid.p[cid.n - 1] == '>')
			cid.n--;
		p->content_id = decode_header_dup(cid);
		if (!p->content_type || !p->filename || !p->content_id) {
			w->err = TERN_ENOMEM;
			free(boundary);
			return;
		}
	}
	if (multi) {
		if (p)
			p->role = MIME_ROLE_CONTAINER;
		bool alt = strcmp(ct, "multipart/alternative") == 0;
		bool saved_text = w->alt_text, saved_html = w->alt_html;
		if (alt)
			w->alt_text = w->alt_html = false;
		walk_multipart(w, h.body.p, h.body.n, boundary, id, depth, alt,
		               strcmp(ct, "multipart/digest") == 0);
		w->in_alt = false;
		if (alt) {
			w->alt_text = saved_text;
			w->alt_html = saved_html;
		}
		free(boundary);
		return;
	}
	free(boundary);
	if (!p)
		return;
	struct span d = trim(h.v[H_CDISP].p ? h.v[H_CDISP] : (struct span){"", 0});
	size_t dn = 0;
	while (dn < d.n && d.p[dn] != ';' && !is_ws(d.p[dn]))
		dn++;
	bool attach = ieq(d.p, dn, "attachment"), inl = ieq(d.p, dn, "inline");
	p->role =
	    mime_leaf_role(&(struct mime_leaf){.content_type = ct,
	                                       .attachment = attach,
	                                       .inline_disp = inl,
	                                       .has_filename = p->filename[0] != '\0',
	                                       .has_content_id = p->content_id[0] != '\0',
	                                       .is_message = strcmp(ct, "message/rfc822") == 0,
	                                       .under_alt = under_alt},
	                   &w->alt_text, &w->alt_html);
	if (p->role == MIME_ROLE_TEXT)
		append_text(w, &w->text, &h, h.body);
	else if (p->role == MIME_ROLE_HTML)
		append_text(w, &w->html, &h, h.body);
	else if (p->role == MIME_ROLE_ATTACHMENT)
		w->m->n_attachments++;
	else if (p->role == MIME_ROLE_INLINE)
		w->m->n_inline++;
}

/* ------------------------------------------------------------ snippet */

static bool starts_ci(const char *p, const char *lit)
{
	for (; *lit; p++, lit++)
		if (lower(*p) != *lit)
			return false;
	return true;
}

/* HTML to text for the snippet: tags out, <style>/<script>/<head>/<title>
 * content out, the common entities decoded (as mime.c). */
static int html_to_text(const char *h, struct tbuf *out)
{
	static const char *const skip[] = {"style", "script", "head", "title"};
	static const struct {
		const char *e, *r;
	} ents[] = {{"&amp;", "&"}, {"&lt;", "<"},   {"&gt;", ">"},  {"&quot;", "\""},
	            {"&#39;", "'"}, {"&nbsp;", " "}, {"&apos;", "'"}};
	int rc = TERN_OK;
	const char *p = h;
	while (*p && rc == TERN_OK && out->len < 16384) {
		if (*p == '<') {
			for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++) {
				size_t sl = strlen(skip[i]);
				if (starts_ci(p + 1, skip[i]) &&
				    (p[1 + sl] == '>' || (p[1 + sl] && is_ws(p[1 + sl])))) {
					char close[16];
					snprintf(close, sizeof(close), "</%s", skip[i]);
					while (*p && !starts_ci(p, close))
						p++;
					break;
				}
			}
			while (*p && *p != '>')
				p++;
			if (*p)
				p++;
			rc = tbuf_append(out, " ", 1);
			continue;
		}
		bool done = false;
		for (size_t i = 0; *p == '&' && i < sizeof(ents) / sizeof(ents[0]); i++)
			if (starts_ci(p, ents[i].e)) {
				rc = tbuf_append_str(out, ents[i].r);
				p += strlen(ents[i].e);
				done = true;
				break;
			}
		if (!done)
			rc = tbuf_append(out, p++, 1);
	}
	return rc;
}

static char *make_snippet(const char *text, const char *html)
{
	struct tbuf src = TBUF_INIT(SIZE_MAX / 2);
	const char *s = text;
	bool blank = true;
	for (const char *q = text; *q && blank; q++)
		blank = is_ws(*q);
	if (blank) {
		if (html_to_text(html, &src) != TERN_OK) {
			tbuf_free(&src);
			return NULL;
		}
		s = src.data ? src.data : "";
	}
	char out[MIME_SNIPPET_CHARS * 4 + 1]; /* a character is at most 4 bytes */
	size_t chars = 0, len = 0;
	bool space = false;
	for (const char *q = s; *q && chars < MIME_SNIPPET_CHARS;) {
		if (is_ws(*q)) {
			space = true;
			q++;
			continue;
		}
		if (space && len) {
			out[len++] = ' ';
			if (++chars >= MIME_SNIPPET_CHARS)
				break;
		}
		space = false;
		size_t k = utf8_seq((const unsigned char *)q, strnlen(q, 4));
		if (!k)
			k = 1; /* not reached: the text is valid UTF-8 */
		memcpy(out + len, q, k);
		len += k;
		chars++;
		q += k;
	}
	tbuf_free(&src);
	return tern_strndup(out, len);
}

/* ------------------------------------------------------------- parse */

static char *msgid_of(struct span v)
{
	if (!v.p)
		return tern_strdup("");
	struct span t = trim(v);
	const char *lt = memchr(t.p, '<', t.n);
	if (lt) {
		const char *gt = memchr(lt, '>', (size_t)(t.p + t.n - lt));
		t = (struct span){lt + 1,
		                  gt ? (size_t)(gt - lt - 1) : (size_t)(t.p + t.n - lt - 1)};
	}
	return decode_header_dup(t);
}

int mime_lite_parse(const char *raw, size_t len, struct mime_msg *out)
{
	memset(out, 0, sizeof(*out));
	if (!raw || !len) {
		raw = "";
		len = 0;
	}
	struct hdrs h;
	read_headers(raw, len, &h);
	struct walk w = {
	    .m = out, .text = TBUF_INIT(SIZE_MAX / 2), .html = TBUF_INIT(SIZE_MAX / 2)};
	int rc = TERN_ENOMEM;
	out->subject = decode_header_dup(h.v[H_SUBJECT].p ? h.v[H_SUBJECT] : (struct span){"", 0});
	out->message_id = msgid_of(h.v[H_MESSAGE_ID]);
	out->return_path = tern_strdup("");
	out->list_unsub = tern_strdup("");
	out->list_unsub_post = tern_strdup("");
	if (!out->subject || !out->message_id || !out->return_path || !out->list_unsub ||
	    !out->list_unsub_post)
		goto out;
	struct mime_addrs from = {0};
	if (parse_addrs(h.v[H_FROM], &from) != TERN_OK) {
		out->from = (struct mime_addr){0};
		for (size_t i = 0; i < from.n; i++) {
			free(from.v[i].name);
			free(from.v[i].addr);
		}
		free(from.v);
		goto out;
	}
	if (from.n) {
		out->from = from.v[0];
		for (size_t i = 1; i < from.n; i++) {
			free(from.v[i].name);
			free(from.v[i].addr);
		}
	} else {
		out->from.name = tern_strdup("");
		out->from.addr = tern_strdup("");
	}
	free(from.v);
	if (!out->from.name || !out->from.addr || parse_addrs(h.v[H_TO], &out->to) != TERN_OK ||
	    parse_addrs(h.v[H_CC], &out->cc) != TERN_OK ||
	    parse_addrs(h.v[H_BCC], &out->bcc) != TERN_OK ||
	    parse_addrs(h.v[H_REPLY_TO], &out->reply_to) != TERN_OK)
		goto out;
	/* the message itself is the root entity: a multipart's children are
	 * "1", "2", ...; a single part is "0" (as mime.c numbers them) */
	walk_entity(&w, raw, len, "0", 0, false);
	if (w.err)
		goto out;
	out->text = tern_strdup(w.text.data ? w.text.data : "");
	out->html = tern_strdup(w.html.data ? w.html.data : "");
	if (!out->text || !out->html)
		goto out;
	out->snippet = make_snippet(out->text, out->html);
	if (out->snippet)
		rc = TERN_OK;
out:
	tbuf_free(&w.text);
	tbuf_free(&w.html);
	return rc;
}
