/*
 * tracking.c — open-pixel and click-redirect tokens, and the HTML rewriter
 * that puts them into API mail (tracking.h).
 *
 * Owns: the token format and its MAC, what counts as a trackable link.
 * Must never: do I/O or keep state (the key is the caller's), trust a
 * token whose MAC does not verify, or let a URL with a control byte or a
 * non-http(s) scheme out of track_verify (no open redirect, no header
 * injection through Location).
 */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/codec.h"
#include "core/err.h"
#include "http/tracking.h"

#define TRACK_SEP "tern-track-v1"
#define MAC_LEN 16

const unsigned char track_gif[43] = {
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00,
    0x00, 0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00,
    0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b};

/* Whether u[0..n) may be a redirect target: http(s)://, then no control
 * byte, space, DEL or non-ASCII byte (it is written into a Location field). */
static bool url_ok(const char *u, size_t n)
{
	if (n > TRACK_URL_MAX)
		return false;
	if (!(n > 7 && strncasecmp(u, "http://", 7) == 0) &&
	    !(n > 8 && strncasecmp(u, "https://", 8) == 0))
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)u[i] <= 0x20 || (unsigned char)u[i] >= 0x7f)
			return false;
	return true;
}

static void mac(const unsigned char key[TRACK_KEY_LEN], char kind, const void *msg, size_t len,
                unsigned char out[MAC_LEN])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	size_t sl = sizeof(TRACK_SEP); /* with its NUL */
	unsigned char *buf = malloc(sl + 2 + len);
	if (!buf) { /* a MAC nobody can match: verification fails, making fails below */
		memset(out, 0, MAC_LEN);
		return;
	}
	memcpy(buf, TRACK_SEP, sl);
	buf[sl] = (unsigned char)kind;
	buf[sl + 1] = 0;
	memcpy(buf + sl + 2, msg, len);
	HMAC(EVP_sha256(), key, TRACK_KEY_LEN, buf, sl + 2 + len, md, &mdlen);
	free(buf);
	memcpy(out, md, MAC_LEN);
}

static int b64url(const void *in, size_t len, struct tbuf *out)
{
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	const unsigned char *p = in;
	int rc = tbuf_reserve(out, len / 3 * 4 + 4);
	if (rc != TERN_OK)
		return rc;
	for (size_t i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;
		size_t k = len - i >= 3 ? 3 : len - i;
		if (k > 1)
			v |= (uint32_t)p[i + 1] << 8;
		if (k > 2)
			v |= p[i + 2];
		char q[4] = {a[(v >> 18) & 63], a[(v >> 12) & 63], a[(v >> 6) & 63], a[v & 63]};
		if ((rc = tbuf_append(out, q, k + 1)) != TERN_OK)
			return rc;
	}
	return TERN_OK;
}

int track_token(const unsigned char key[TRACK_KEY_LEN], char kind, const char *queue_id,
                const char *rcpt, const char *url, size_t url_len, struct tbuf *out)
{
	if ((kind != 'o' && kind != 'c') || !queue_id || strchr(queue_id, '\n') ||
	    strlen(queue_id) >= sizeof(((struct track_ref *)0)->queue_id) ||
	    (rcpt && (strchr(rcpt, '\n') || strlen(rcpt) >= sizeof(((struct track_ref *)0)->rcpt))))
		return TERN_EINVAL;
	if (kind == 'c' ? !url || !url_ok(url, url_len) : url_len != 0)
		return TERN_EINVAL;
	struct tbuf p = TBUF_INIT(TRACK_URL_MAX + 1024);
	size_t mark = out->len;
	unsigned char m[MAC_LEN];
	int rc = tbuf_printf(&p, "%s\n%s\n", queue_id, rcpt ? rcpt : "");
	if (rc == TERN_OK && url_len)
		rc = tbuf_append(&p, url, url_len);
	if (rc == TERN_OK) {
		mac(key, kind, p.data, p.len, m);
		rc = b64url(p.data, p.len, out);
	}
	if (rc == TERN_OK)
		rc = tbuf_append(out, ".", 1);
	if (rc == TERN_OK)
		rc = b64url(m, sizeof(m), out);
	if (rc != TERN_OK)
		out->len = mark;
	tbuf_free(&p);
	return rc;
}

bool track_verify(const unsigned char key[TRACK_KEY_LEN], char kind, const char *tok, size_t len,
                  struct track_ref *out)
{
	const char *dot = memchr(tok, '.', len);
	if (!dot || (kind != 'o' && kind != 'c') || len > 2 * TRACK_URL_MAX)
		return false;
	struct tbuf p = TBUF_INIT(2 * TRACK_URL_MAX), mb = TBUF_INIT(64);
	bool ok = false;
	unsigned char m[MAC_LEN];
	if (tern_base64url_decode(tok, (size_t)(dot - tok), &p) != TERN_OK ||
	    tern_base64url_decode(dot + 1, len - (size_t)(dot - tok) - 1, &mb) != TERN_OK ||
	    mb.len != MAC_LEN || p.len == 0)
		goto out;
	mac(key, kind, p.data, p.len, m);
	if (CRYPTO_memcmp(m, mb.data, MAC_LEN) != 0)
		goto out;
	/* verified: the contents are ours, still checked as if they were not */
	const char *nl1 = memchr(p.data, '\n', p.len);
	const char *nl2 = nl1 ? memchr(nl1 + 1, '\n', p.len - (size_t)(nl1 + 1 - p.data)) : NULL;
	if (!nl2)
		goto out;
	size_t ql = (size_t)(nl1 - p.data), rl = (size_t)(nl2 - nl1 - 1),
	       ul = p.len - (size_t)(nl2 + 1 - p.data);
	if (ql == 0 || ql >= sizeof(out->queue_id) || rl >= sizeof(out->rcpt) ||
	    memchr(p.data, '\0', p.len))
		goto out;
	if (kind == 'c' ? !url_ok(nl2 + 1, ul) : ul != 0)
		goto out;
	memcpy(out->queue_id, p.data, ql);
	out->queue_id[ql] = '\0';
	memcpy(out->rcpt, nl1 + 1, rl);
	out->rcpt[rl] = '\0';
	memcpy(out->url, nl2 + 1, ul);
	out->url[ul] = '\0';
	ok = true;
out:
	tbuf_free(&p);
	tbuf_free(&mb);
	return ok;
}

static bool is_space(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\f';
}

/* The href value v[0..n) as a URL: trimmed, "&amp;" read as "&". False when
 * it is not a trackable link. */
static bool link_url(const char *v, size_t n, struct tbuf *u)
{
	while (n && is_space(*v)) {
		v++;
		n--;
	}
	while (n && is_space(v[n - 1]))
		n--;
	u->len = 0;
	for (size_t i = 0; i < n; i++) {
		if (v[i] == '&' && n - i >= 5 && memcmp(v + i, "&amp;", 5) == 0) {
			if (tbuf_append(u, "&", 1) != TERN_OK)
				return false;
			i += 4;
		} else if (tbuf_append(u, v + i, 1) != TERN_OK) {
			return false;
		}
	}
	return url_ok(u->data ? u->data : "", u->len);
}

/*
 * Finds the href value of the <a tag whose name ends at s[i] (i just past
 * "<a"): *vs, *ve its span (inside the quotes). Returns the index just past
 * the tag, or n when it does not end; *vs = *ve = 0 when there is no href.
 */
static size_t scan_tag(const char *s, size_t i, size_t n, size_t *vs, size_t *ve)
{
	*vs = *ve = 0;
	bool found = false;
	while (i < n) {
		while (i < n && (is_space(s[i]) || s[i] == '/'))
			i++;
		if (i >= n)
			return n;
		if (s[i] == '>')
			return i + 1;
		size_t ns = i;
		while (i < n && !is_space(s[i]) && s[i] != '=' && s[i] != '>' && s[i] != '/')
			i++;
		size_t nl = i - ns;
		if (nl == 0) { /* a stray '=' */
			i++;
			continue;
		}
		while (i < n && is_space(s[i]))
			i++;
		if (i >= n || s[i] != '=')
			continue;
		i++;
		while (i < n && is_space(s[i]))
			i++;
		if (i >= n)
			return n;
		size_t a, b;
		if (s[i] == '"' || s[i] == '\'') {
			const char *q = memchr(s + i + 1, s[i], n - i - 1);
			if (!q)
				return n;
			a = i + 1;
			b = (size_t)(q - s);
			i = b + 1;
		} else {
			a = i;
			while (i < n && !is_space(s[i]) && s[i] != '>')
				i++;
			b = i;
		}
		if (!found && nl == 4 && strncasecmp(s + ns, "href", 4) == 0) {
			found = true;
			*vs = a;
			*ve = b;
		}
	}
	return n;
}

static int rewrite_links(const unsigned char key[TRACK_KEY_LEN], const char *base,
                         const char *queue_id, const char *rcpt, const char *s, size_t n,
                         struct tbuf *out)
{
	struct tbuf u = TBUF_INIT(TRACK_URL_MAX + 16);
	size_t done = 0, i = 0;
	int rc = TERN_OK;
	while (rc == TERN_OK && i < n) {
		const char *lt = memchr(s + i, '<', n - i);
		if (!lt)
			break;
		i = (size_t)(lt - s);
		if (n - i >= 4 && memcmp(s + i, "<!--", 4) == 0) { /* a comment: as it is */
			const char *e = NULL;
			for (size_t k = i + 4; k + 3 <= n && !e; k++)
				if (memcmp(s + k, "-->", 3) == 0)
					e = s + k;
			i = e ? (size_t)(e - s) + 3 : n;
			continue;
		}
		if (!(n - i >= 3 && (s[i + 1] == 'a' || s[i + 1] == 'A') && is_space(s[i + 2]))) {
			i++;
			continue;
		}
		size_t vs, ve;
		size_t end = scan_tag(s, i + 2, n, &vs, &ve);
		if (ve > vs && link_url(s + vs, ve - vs, &u)) {
			rc = tbuf_append(out, s + done, vs - done);
			if (rc == TERN_OK)
				rc = tbuf_printf(out, "%s%s", base, TRACK_CLICK_PATH);
			if (rc == TERN_OK)
				rc = track_token(key, 'c', queue_id, rcpt, u.data, u.len, out);
			done = ve;
		}
		i = end > i ? end : i + 1;
	}
	if (rc == TERN_OK)
		rc = tbuf_append(out, s + done, n - done);
	tbuf_free(&u);
	return rc;
}

int track_rewrite_html(const unsigned char key[TRACK_KEY_LEN], const char *base,
                       const char *queue_id, const char *rcpt, bool opens, bool clicks,
                       const char *html, size_t len, struct tbuf *out)
{
	size_t mark = out->len, body = len;
	bool have_body = false;
	for (size_t k = len; opens && k >= 7 && !have_body; k--)
		if (html[k - 7] == '<' && strncasecmp(html + k - 7, "</body", 6) == 0 &&
		    (is_space(html[k - 1]) || html[k - 1] == '>')) {
			body = k - 7;
			have_body = true;
		}
	int rc = clicks ? rewrite_links(key, base, queue_id, rcpt, html, body, out)
	                : tbuf_append(out, html, body);
	if (rc == TERN_OK && opens) {
		rc = tbuf_printf(out, "<img src=\"%s%s", base, TRACK_OPEN_PATH);
		if (rc == TERN_OK)
			rc = track_token(key, 'o', queue_id, rcpt, NULL, 0, out);
		if (rc == TERN_OK)
			rc = tbuf_append_str(out, "\" width=\"1\" height=\"1\" alt=\"\">");
	}
	if (rc == TERN_OK && body < len)
		rc = clicks ? rewrite_links(key, base, queue_id, rcpt, html + body, len - body, out)
		            : tbuf_append(out, html + body, len - body);
	if (rc != TERN_OK)
		out->len = mark;
	return rc;
}
