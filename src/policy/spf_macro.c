/*
 * spf_macro.c — RFC 7208 §7 macros: syntax checks, expansion, and turning
 * an expanded domain-spec into a name that can be queried (§4.8, §7.3).
 *
 * Owns: the macro tokenizer shared by the checks and the expander, the
 * transformers (digits, 'r', delimiters), URL escaping of uppercase macros,
 * the domain-end rule of domain-spec, and the 253-character truncation.
 *
 * Pure functions over (pointer, length): no DNS, no globals, no clock (the
 * caller puts "now" in the context). Input is hostile (DNS TXT records and
 * what an SMTP client said): every byte is checked against the ABNF, every
 * output is capped by the caller's tbuf max. Must never read outside the
 * given ranges or trust a length it did not compute.
 */
#include "policy/spf.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/err.h"

/* "If a DIGIT is specified... MUST support at least a value of 127": more
 * parts than any name has mean "all of them", so the count saturates. */
#define DIGITS_SATURATE 100000u

enum tok_kind {
	TOK_LITERAL, /* one literal byte */
	TOK_ESCAPE,  /* %% %_ %- */
	TOK_MACRO,   /* %{...} */
};

struct tok {
	enum tok_kind kind;
	size_t start, len; /* where the token is in the input */
	char ch;           /* TOK_LITERAL: the byte; TOK_ESCAPE: '%', '_' or '-' */
	char letter;       /* TOK_MACRO: lowercase letter */
	bool upper;        /* TOK_MACRO: written uppercase: URL-escape the result */
	unsigned digits;   /* 0: none given */
	bool reverse;
	char delims[8]; /* the delimiter set, NUL-terminated; empty: "." */
};

static bool is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool is_delim(unsigned char c)
{
	return c != '\0' && strchr(".-+,/_=", c) != NULL;
}

/* macro-letter, and which of them §7.2 allows outside explanations. */
static bool letter_ok(char l, enum spf_macro_mode mode)
{
	if (strchr("slodiphv", l))
		return true;
	return mode == SPF_MACRO_EXPLAIN && strchr("crt", l);
}

/*
 * Reads the token at *pos. Returns 1 with *t filled, 0 at the end, -1 on a
 * syntax error (§7.1: '%' not followed by '{', '%', '_' or '-'; a bad
 * letter, a zero digit count, a byte outside macro-literal).
 */
static int next_tok(const char *p, size_t n, size_t *pos, enum spf_macro_mode mode, struct tok *t)
{
	size_t i = *pos;

	if (i >= n)
		return 0;
	memset(t, 0, sizeof(*t));
	t->start = i;
	unsigned char c = (unsigned char)p[i];
	if (c != '%') {
		/* macro-literal = %x21-24 / %x26-7E; explain-string adds SP */
		bool ok = (c >= 0x21 && c <= 0x7e) || (c == ' ' && mode == SPF_MACRO_EXPLAIN);
		if (!ok)
			return -1;
		t->kind = TOK_LITERAL;
		t->ch = (char)c;
		t->len = 1;
		*pos = i + 1;
		return 1;
	}
	if (i + 1 >= n)
		return -1;
	c = (unsigned char)p[i + 1];
	if (c == '%' || c == '_' || c == '-') {
		t->kind = TOK_ESCAPE;
		t->ch = (char)c;
		t->len = 2;
		*pos = i + 2;
		return 1;
	}
	if (c != '{')
		return -1;
	i += 2;
	if (i >= n)
		return -1;
	c = (unsigned char)p[i];
	if (!is_alpha(c))
		return -1;
	t->upper = c >= 'A' && c <= 'Z';
	t->letter = (char)(t->upper ? c - 'A' + 'a' : c);
	if (!letter_ok(t->letter, mode))
		return -1;
	i++;
	/* transformers = *DIGIT [ "r" ] */
	bool have_digits = false;
	unsigned v = 0;
	while (i < n && is_digit((unsigned char)p[i])) {
		have_digits = true;
		v = v * 10 + (unsigned)(p[i] - '0');
		if (v > DIGITS_SATURATE)
			v = DIGITS_SATURATE;
		i++;
	}
	if (have_digits && v == 0)
		return -1; /* "If a DIGIT is specified, the value MUST be nonzero" */
	t->digits = v;
	/* ABNF literals are case-insensitive: "r" or "R" */
	if (i < n && (p[i] == 'r' || p[i] == 'R')) {
		t->reverse = true;
		i++;
	}
	size_t nd = 0;
	while (i < n && is_delim((unsigned char)p[i])) {
		if (!memchr(t->delims, p[i], nd) && nd + 1 < sizeof(t->delims))
			t->delims[nd++] = p[i];
		i++;
	}
	t->delims[nd] = '\0';
	if (i >= n || p[i] != '}')
		return -1;
	i++;
	t->kind = TOK_MACRO;
	t->len = i - t->start;
	*pos = i;
	return 1;
}

int spf_macro_check(const char *p, size_t n, enum spf_macro_mode mode)
{
	size_t pos = 0;
	struct tok t;
	int r;

	if (!p && n)
		return TERN_EINVAL;
	while ((r = next_tok(p, n, &pos, mode, &t)) == 1)
		;
	return r == 0 ? TERN_OK : TERN_ESYNTAX;
}

/* toplabel = ( *alphanum ALPHA *alphanum ) /
 *            ( 1*alphanum "-" *( alphanum / "-" ) alphanum ) */
static bool toplabel_ok(const char *p, size_t n)
{
	bool alpha = false, dash = false;

	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (is_alpha(c))
			alpha = true;
		else if (c == '-')
			dash = true;
		else if (!is_digit(c))
			return false;
	}
	if (p[0] == '-' || p[n - 1] == '-')
		return false;
	return alpha || dash;
}

int spf_domain_spec_check(const char *p, size_t n)
{
	size_t pos = 0, lit_start = 0;
	struct tok t;
	int r;
	bool last_macro = false;

	if (!p || n == 0)
		return TERN_ESYNTAX; /* "domain-spec cannot be empty" */
	while ((r = next_tok(p, n, &pos, SPF_MACRO_DOMAIN, &t)) == 1) {
		if (t.kind == TOK_LITERAL) {
			if (last_macro || t.start == 0)
				lit_start = t.start;
			last_macro = false;
		} else {
			last_macro = true;
		}
	}
	if (r != 0)
		return TERN_ESYNTAX;
	/* domain-end = ( "." toplabel [ "." ] ) / macro-expand */
	if (last_macro)
		return TERN_OK;
	size_t end = n;
	if (end > lit_start && p[end - 1] == '.')
		end--;
	size_t dot = end;
	while (dot > lit_start && p[dot - 1] != '.')
		dot--;
	if (dot == lit_start)
		return TERN_ESYNTAX; /* no "." before the toplabel in the literal tail */
	return toplabel_ok(p + dot, end - dot) ? TERN_OK : TERN_ESYNTAX;
}

bool spf_macro_uses_ptr(const char *p, size_t n)
{
	for (size_t i = 0; i + 1 < n; i++) {
		if (p[i] != '%')
			continue;
		if (p[i + 1] == '{') {
			if (i + 2 < n && (p[i + 2] == 'p' || p[i + 2] == 'P'))
				return true;
		} else {
			i++; /* "%%": the second '%' starts nothing */
		}
	}
	return false;
}

/* ------------------------------------------------------- expansion */

struct out {
	struct tbuf *b;
	enum spf_macro_mode mode;
	bool full; /* explain mode: the cap was reached, the rest is dropped */
};

static int put(struct out *o, const char *p, size_t n)
{
	if (o->full || n == 0)
		return TERN_OK;
	int r = tbuf_append(o->b, p, n);
	if (r != TERN_ELIMIT || o->mode != SPF_MACRO_EXPLAIN)
		return r;
	/* an explanation may be cut (§6.2); a name may not */
	size_t room = o->b->max - o->b->len;
	o->full = true;
	return room ? tbuf_append(o->b, p, room) : TERN_OK;
}

/* RFC 3986 unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~" */
static bool unreserved(unsigned char c)
{
	return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

static int put_escaped(struct out *o, const char *p, size_t n, bool escape)
{
	static const char hex[] = "0123456789ABCDEF";

	if (!escape)
		return put(o, p, n);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		int r;
		if (unreserved(c)) {
			r = put(o, (const char *)&p[i], 1);
		} else {
			char e[3] = {'%', hex[c >> 4], hex[c & 15]};
			r = put(o, e, 3);
		}
		if (r != TERN_OK)
			return r;
	}
	return TERN_OK;
}

/* %{i}: dotted quad, or (§7.3, §7.4) the 32 nibbles of an IPv6 address
 * separated by dots, for use as %{ir}. The nibbles are uppercase, as the
 * reference implementation (pyspf) writes them and the OpenSPF suite
 * expects; DNS compares names without regard to case, so a query made
 * from them is the same query either way. */
static size_t fmt_ip_dotted(const struct spf_ip *ip, char *buf, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";

	if (ip->family == AF_INET) {
		int k = snprintf(buf, len, "%u.%u.%u.%u", ip->addr[0], ip->addr[1], ip->addr[2],
		                 ip->addr[3]);
		return k > 0 && (size_t)k < len ? (size_t)k : 0;
	}
	size_t o = 0;
	for (size_t i = 0; i < 16 && o + 4 <= len; i++) {
		buf[o++] = hex[ip->addr[i] >> 4];
		buf[o++] = '.';
		buf[o++] = hex[ip->addr[i] & 15];
		if (i < 15)
			buf[o++] = '.';
	}
	buf[o] = '\0';
	return o;
}

static size_t fmt_ip_human(const struct spf_ip *ip, char *buf, size_t len)
{
	if (!inet_ntop(ip->family, ip->addr, buf, (socklen_t)len))
		return 0;
	return strlen(buf);
}

/*
 * The value of a macro letter. Returns a pointer into ctx or into buf
 * (which has 64 bytes or more), and its length. "unknown" where §7.3 says
 * so (no validated name for p, no receiver name for r).
 */
static const char *macro_value(char letter, const struct spf_macro_ctx *ctx, char *buf,
                               size_t buflen, size_t *len)
{
	switch (letter) {
	case 's':
		*len = ctx->sender_len;
		return ctx->sender;
	case 'l':
		*len = ctx->local_len;
		return ctx->local;
	case 'o':
		*len = ctx->sender_dom_len;
		return ctx->sender_dom;
	case 'd':
		*len = ctx->domain_len;
		return ctx->domain;
	case 'h':
		*len = ctx->helo_len;
		return ctx->helo;
	case 'p':
		if (ctx->ptr && ctx->ptr_len) {
			*len = ctx->ptr_len;
			return ctx->ptr;
		}
		*len = 7;
		return "unknown";
	case 'r':
		if (ctx->receiver && ctx->receiver_len) {
			*len = ctx->receiver_len;
			return ctx->receiver;
		}
		*len = 7;
		return "unknown";
	case 'v':
		if (ctx->ip && ctx->ip->family == AF_INET6) {
			*len = 3;
			return "ip6";
		}
		*len = 7;
		return "in-addr";
	case 'i':
		*len = ctx->ip ? fmt_ip_dotted(ctx->ip, buf, buflen) : 0;
		return buf;
	case 'c':
		*len = ctx->ip ? fmt_ip_human(ctx->ip, buf, buflen) : 0;
		return buf;
	case 't': {
		int k = snprintf(buf, buflen, "%" PRId64, ctx->now);
		*len = k > 0 && (size_t)k < buflen ? (size_t)k : 0;
		return buf;
	}
	}
	*len = 0;
	return "";
}

/*
 * §7.3: split the value on the delimiters (default "."), reverse if asked,
 * keep the rightmost `digits` parts, join with ".". Empty parts are kept
 * ("no special treatment is given to leading, trailing, or consecutive
 * delimiters").
 */
static int put_transformed(struct out *o, const char *v, size_t vlen, const struct tok *t)
{
	const char *delims = t->delims[0] ? t->delims : ".";
	bool escape = t->upper;

	if (!t->digits && !t->reverse && !t->delims[0])
		return put_escaped(o, v, vlen, escape);

	size_t nparts = 1;
	for (size_t i = 0; i < vlen; i++) {
		if (strchr(delims, v[i]) && v[i] != '\0')
			nparts++;
	}
	size_t *start = calloc(nparts, sizeof(*start));
	size_t *end = calloc(nparts, sizeof(*end));
	int r = TERN_OK;
	if (!start || !end) {
		r = TERN_ENOMEM;
		goto out;
	}
	size_t k = 0;
	start[0] = 0;
	for (size_t i = 0; i < vlen; i++) {
		if (v[i] != '\0' && strchr(delims, v[i])) {
			end[k] = i;
			start[++k] = i + 1;
		}
	}
	end[k] = vlen;

	size_t keep = t->digits && t->digits < nparts ? t->digits : nparts;
	/* order after reversal: reversed, part j is original nparts-1-j; the
	 * rightmost `keep` of that order are positions nparts-keep..nparts-1 */
	for (size_t j = nparts - keep; j < nparts; j++) {
		size_t idx = t->reverse ? nparts - 1 - j : j;
		if (j > nparts - keep && (r = put(o, ".", 1)) != TERN_OK)
			goto out;
		if ((r = put_escaped(o, v + start[idx], end[idx] - start[idx], escape)) != TERN_OK)
			goto out;
	}
out:
	free(start);
	free(end);
	return r;
}

int spf_macro_expand(const char *p, size_t n, const struct spf_macro_ctx *ctx,
                     enum spf_macro_mode mode, struct tbuf *out)
{
	struct out o = {out, mode, false};
	size_t pos = 0;
	struct tok t;
	int r;

	if ((!p && n) || !ctx || !out)
		return TERN_EINVAL;
	/* check everything first: a syntax error anywhere means nothing is
	 * expanded (and no half-written output is left behind) */
	if (spf_macro_check(p, n, mode) != TERN_OK)
		return TERN_ESYNTAX;
	while ((r = next_tok(p, n, &pos, mode, &t)) == 1) {
		int w;
		switch (t.kind) {
		case TOK_LITERAL:
			w = put(&o, &t.ch, 1);
			break;
		case TOK_ESCAPE:
			if (t.ch == '%')
				w = put(&o, "%", 1);
			else if (t.ch == '_')
				w = put(&o, " ", 1);
			else
				w = put(&o, "%20", 3);
			break;
		case TOK_MACRO: {
			char buf[80];
			size_t vlen = 0;
			const char *v = macro_value(t.letter, ctx, buf, sizeof(buf), &vlen);
			w = put_transformed(&o, v ? v : "", v ? vlen : 0, &t);
			break;
		}
		default:
			w = TERN_EINVAL;
		}
		if (w != TERN_OK)
			return w;
	}
	return r == 0 ? TERN_OK : TERN_ESYNTAX;
}

bool spf_target_name(const char *p, size_t n, char *out, size_t *out_len)
{
	if (!p || !out)
		return false;
	out[0] = '\0';
	if (out_len)
		*out_len = 0;
	/* trailing dots "MUST be accepted" and mean nothing for a query */
	if (n > 0 && p[n - 1] == '.')
		n--;
	/* §7.3: over 253 characters, drop whole labels from the left */
	while (n > SPF_NAME_MAX) {
		const char *dot = memchr(p, '.', n);
		if (!dot)
			return false;
		n -= (size_t)(dot - p) + 1;
		p = dot + 1;
	}
	if (n == 0)
		return false;
	size_t label = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\0')
			return false;
		if (p[i] == '.') {
			if (label == 0)
				return false; /* empty label: "foo..example.com" */
			label = 0;
		} else if (++label > 63) {
			return false;
		}
	}
	if (label == 0)
		return false;
	memcpy(out, p, n);
	out[n] = '\0';
	if (out_len)
		*out_len = n;
	return true;
}
