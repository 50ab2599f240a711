/*
 * parse.c — one SMTP command line -> struct smtp_cmd (RFC 5321 §4.1, with
 * the ESMTP parameters of RFC 1870 SIZE, 6152 BODY, 3030 BDAT, 3461 DSN and
 * 6531 SMTPUTF8, 4954 AUTH), plus bare mailboxes and RFC 3461 xtext.
 *
 * Owns: command syntax only. Everything is a pure function over
 * (pointer, length): no allocation, no I/O, no global state, and no read
 * past line + len (input is never assumed NUL-terminated).
 * Must never: decide policy (which domains are local, whether SMTPUTF8 was
 * announced, sequence errors); that is server.c's job. It reports facts
 * (path.utf8, has_size ...) and refuses only what is malformed.
 */
#include "smtp/smtp.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------ char classes */

static bool is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool is_alnum(unsigned char c)
{
	return is_alpha(c) || is_digit(c);
}

static unsigned char lower(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* RFC 5322 atext (ASCII part). */
static bool is_atext(unsigned char c)
{
	if (is_alnum(c))
		return true;
	return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* RFC 5321 qtextSMTP (ASCII part): printable except '"' and '\'. */
static bool is_qtext(unsigned char c)
{
	return c >= 32 && c <= 126 && c != '"' && c != '\\';
}

/*
 * Length of the valid UTF-8 sequence for a non-ASCII character at p
 * (n bytes available), or 0 if it is not valid UTF-8 (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF).
 */
static size_t utf8_seq_len(const unsigned char *p, size_t n)
{
	unsigned char c = p[0];
	size_t need;
	uint32_t cp;

	if (c >= 0xC2 && c <= 0xDF) {
		need = 2;
		cp = c & 0x1F;
	} else if (c >= 0xE0 && c <= 0xEF) {
		need = 3;
		cp = c & 0x0F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		need = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (n < need)
		return 0;
	for (size_t i = 1; i < need; i++) {
		if ((p[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3F);
	}
	if ((need == 3 && cp < 0x800) || (need == 4 && cp < 0x10000))
		return 0; /* overlong */
	if (cp >= 0xD800 && cp <= 0xDFFF)
		return 0; /* surrogate */
	if (cp > 0x10FFFF)
		return 0;
	return need;
}

static bool ieq(const char *p, size_t n, const char *word)
{
	size_t wl = strlen(word);
	if (n != wl)
		return false;
	for (size_t i = 0; i < n; i++)
		if (lower((unsigned char)p[i]) != (unsigned char)word[i])
			return false;
	return true;
}

/* Parses 1+ digits into a uint64_t; false on empty, non-digit or overflow. */
static bool parse_u64(const char *p, size_t n, uint64_t *out)
{
	uint64_t v = 0;
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (!is_digit(c))
			return false;
		unsigned d = (unsigned)(c - '0');
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

/* ------------------------------------------------------------------ errors */

static enum smtp_parse_status fail(struct smtp_parse_error *err, int code, const char *enhanced,
                                   const char *text)
{
	if (err) {
		err->code = code;
		err->enhanced = enhanced;
		err->text = text;
	}
	return SMTP_PARSE_ERROR;
}

/* ----------------------------------------------------------------- domains */

enum addr_result {
	ADDR_OK = 0,
	ADDR_SYNTAX,
	ADDR_TOOLONG,
	ADDR_BADUTF8,
};

/* Address literal "[...]" starting at s[*pos] == '['; advances past ']'. */
static enum addr_result parse_addr_literal(const char *s, size_t len, size_t *pos)
{
	size_t i = *pos + 1;
	size_t start = i;
	while (i < len && s[i] != ']') {
		unsigned char c = (unsigned char)s[i];
		if (c <= 32 || c >= 127 || c == '[' || c == '\\')
			return ADDR_SYNTAX;
		i++;
	}
	if (i >= len)
		return ADDR_SYNTAX;
	size_t n = i - start;
	const char *lit = s + start;
	char tmp[64];
	unsigned char bin[16];

	if (n > 5 && ieq(lit, 5, "ipv6:")) {
		if (n - 5 >= sizeof(tmp))
			return ADDR_SYNTAX;
		memcpy(tmp, lit + 5, n - 5);
		tmp[n - 5] = '\0';
		if (inet_pton(AF_INET6, tmp, bin) != 1)
			return ADDR_SYNTAX;
	} else {
		/* IPv4: exactly four decimal octets of 1-3 digits, each <= 255. */
		size_t j = 0;
		for (int oct = 0; oct < 4; oct++) {
			if (oct > 0) {
				if (j >= n || lit[j] != '.')
					return ADDR_SYNTAX;
				j++;
			}
			unsigned v = 0;
			size_t digits = 0;
			while (j < n && is_digit((unsigned char)lit[j]) && digits < 3) {
				v = v * 10 + (unsigned)(lit[j] - '0');
				j++;
				digits++;
			}
			if (digits == 0 || v > 255)
				return ADDR_SYNTAX;
		}
		if (j != n)
			return ADDR_SYNTAX; /* includes general-address-literal tags */
	}
	*pos = i + 1;
	return ADDR_OK;
}

/*
 * Domain (dot-separated labels, or address literal) at s[*pos]. Stops at
 * the first byte that cannot continue it. *utf8 is set if a label holds
 * non-ASCII characters (RFC 6531 U-labels; IDNA rules are not checked).
 */
static enum addr_result parse_domain(const char *s, size_t len, size_t *pos, bool *utf8)
{
	size_t i = *pos;
	enum addr_result r;

	if (i < len && s[i] == '[') {
		r = parse_addr_literal(s, len, &i);
		if (r != ADDR_OK)
			return r;
		if (i - *pos > SMTP_DOMAIN_MAX)
			return ADDR_TOOLONG;
		*pos = i;
		return ADDR_OK;
	}

	for (;;) {
		size_t lstart = i;
		bool label_utf8 = false;
		unsigned char last = 0;
		while (i < len) {
			unsigned char c = (unsigned char)s[i];
			if (is_alnum(c) || c == '-') {
				last = c;
				i++;
			} else if (c >= 0x80) {
				size_t k = utf8_seq_len((const unsigned char *)s + i, len - i);
				if (k == 0)
					return ADDR_BADUTF8;
				label_utf8 = true;
				last = c;
				i += k;
			} else {
				break;
			}
		}
		size_t llen = i - lstart;
		if (llen == 0)
			return ADDR_SYNTAX;
		if (s[lstart] == '-' || last == '-')
			return ADDR_SYNTAX;
		/* 63 octets is the DNS limit; a U-label's limit applies to its
		 * A-label form, which we do not compute, so only ASCII labels
		 * are held to it here. */
		if (!label_utf8 && llen > 63)
			return ADDR_SYNTAX;
		if (label_utf8)
			*utf8 = true;
		if (i - *pos > SMTP_DOMAIN_MAX)
			return ADDR_TOOLONG;
		if (i < len && s[i] == '.' && i + 1 < len &&
		    (is_alnum((unsigned char)s[i + 1]) || (unsigned char)s[i + 1] >= 0x80 ||
		     s[i + 1] == '-')) {
			i++;
			continue;
		}
		break;
	}
	*pos = i;
	return ADDR_OK;
}

/* ---------------------------------------------------------------- mailbox */

/* True if local[0..n) may be written as a dot-atom (possibly with UTF-8). */
static bool local_is_dot_atom(const char *local, size_t n)
{
	if (n == 0 || local[0] == '.' || local[n - 1] == '.')
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)local[i];
		if (c == '.') {
			if (i + 1 < n && local[i + 1] == '.')
				return false;
		} else if (c >= 0x80) {
			size_t k = utf8_seq_len((const unsigned char *)local + i, n - i);
			if (k == 0)
				return false;
			i += k - 1;
		} else if (!is_atext(c)) {
			return false;
		}
	}
	return true;
}

/*
 * Writes the canonical form of the dequoted local part into dst: as is if it
 * is a dot-atom, else as a quoted-string with '"' and '\' escaped. Returns
 * the length written, or SIZE_MAX if it does not fit in dstlen (with NUL).
 */
static size_t canonical_local(const char *local, size_t n, bool *quoted_out, char *dst,
                              size_t dstlen)
{
	size_t o = 0;
	if (local_is_dot_atom(local, n)) {
		if (n + 1 > dstlen)
			return SIZE_MAX;
		memcpy(dst, local, n);
		o = n;
		*quoted_out = false;
	} else {
		if (dstlen < 3)
			return SIZE_MAX;
		dst[o++] = '"';
		for (size_t i = 0; i < n; i++) {
			char c = local[i];
			if (c == '"' || c == '\\') {
				if (o + 1 >= dstlen)
					return SIZE_MAX;
				dst[o++] = '\\';
			}
			if (o + 1 >= dstlen)
				return SIZE_MAX;
			dst[o++] = c;
		}
		if (o + 2 > dstlen)
			return SIZE_MAX;
		dst[o++] = '"';
		*quoted_out = true;
	}
	dst[o] = '\0';
	return o;
}

/*
 * Mailbox "local@domain" at s[*pos], or "Postmaster" alone when
 * allow_postmaster (the caller then checks that '>' follows). Fills the
 * path fields; advances *pos past what it consumed.
 */
static enum addr_result parse_mailbox_at(const char *s, size_t len, size_t *pos,
                                         struct smtp_path *out, bool allow_postmaster)
{
	size_t i = *pos;
	size_t lo = 0; /* bytes written to out->local */
	bool utf8 = false;
	bool quoted = false;
	bool toolong = false;

	if (i < len && s[i] == '"') {
		quoted = true;
		i++;
		for (;;) {
			if (i >= len)
				return ADDR_SYNTAX; /* unbalanced quote */
			unsigned char c = (unsigned char)s[i];
			if (c == '"') {
				i++;
				break;
			}
			size_t k = 1;
			if (c == '\\') {
				if (i + 1 >= len)
					return ADDR_SYNTAX;
				c = (unsigned char)s[i + 1];
				if (c < 32 || c > 126)
					return ADDR_SYNTAX;
				i++;
			} else if (c >= 0x80) {
				k = utf8_seq_len((const unsigned char *)s + i, len - i);
				if (k == 0)
					return ADDR_BADUTF8;
				utf8 = true;
			} else if (!is_qtext(c)) {
				return ADDR_SYNTAX;
			}
			if (lo + k > SMTP_LOCAL_MAX)
				toolong = true;
			else
				memcpy(out->local + lo, s + i, k);
			lo += toolong ? 0 : k;
			i += k;
		}
		if (lo == 0 && !toolong)
			return ADDR_SYNTAX; /* "" names no one */
	} else {
		bool prev_dot = true; /* no leading dot */
		while (i < len) {
			unsigned char c = (unsigned char)s[i];
			size_t k = 1;
			if (c == '.') {
				if (prev_dot)
					return ADDR_SYNTAX;
				prev_dot = true;
			} else if (c >= 0x80) {
				k = utf8_seq_len((const unsigned char *)s + i, len - i);
				if (k == 0)
					return ADDR_BADUTF8;
				utf8 = true;
				prev_dot = false;
			} else if (is_atext(c)) {
				prev_dot = false;
			} else {
				break;
			}
			if (lo + k > SMTP_LOCAL_MAX)
				toolong = true;
			else
				memcpy(out->local + lo, s + i, k);
			lo += toolong ? 0 : k;
			i += k;
		}
		if (i == *pos)
			return ADDR_SYNTAX;
		if (prev_dot)
			return ADDR_SYNTAX; /* trailing dot */
	}
	if (toolong)
		return ADDR_TOOLONG;
	out->local[lo] = '\0';
	out->quoted = quoted;

	if (i >= len || s[i] != '@') {
		if (allow_postmaster && !quoted && ieq(out->local, lo, "postmaster")) {
			out->has_domain = false;
			out->utf8 = false;
			memcpy(out->addr, out->local, lo + 1);
			out->domain[0] = '\0';
			*pos = i;
			return ADDR_OK;
		}
		return ADDR_SYNTAX;
	}
	i++;
	size_t dstart = i;
	enum addr_result r = parse_domain(s, len, &i, &utf8);
	if (r != ADDR_OK)
		return r;
	size_t dlen = i - dstart;
	memcpy(out->domain, s + dstart, dlen);
	out->domain[dlen] = '\0';

	bool canon_quoted = false;
	/* The canonical local part may need quotes and escapes; it has to fit in
	 * addr with '@' and the domain. */
	size_t room = sizeof(out->addr) - dlen - 1;
	size_t cl = canonical_local(out->local, lo, &canon_quoted, out->addr, room);
	if (cl == SIZE_MAX)
		return ADDR_TOOLONG;
	out->addr[cl] = '@';
	memcpy(out->addr + cl + 1, out->domain, dlen + 1);
	out->has_domain = true;
	out->utf8 = utf8;
	*pos = i;
	return ADDR_OK;
}

bool smtp_parse_mailbox(const char *s, size_t len, struct smtp_path *out)
{
	size_t pos = 0;
	if (!s || !out)
		return false;
	memset(out, 0, sizeof(*out));
	if (parse_mailbox_at(s, len, &pos, out, false) != ADDR_OK || pos != len) {
		memset(out, 0, sizeof(*out));
		return false;
	}
	return true;
}

/* ------------------------------------------------------------------- xtext */

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = lower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/*
 * RFC 3461 §4: xchar is '!'..'~' except '+' and '='; "+XX" encodes any
 * byte. Lowercase hex is accepted (senders get it wrong). "+00" is refused
 * because out is a C string that could not carry it.
 */
bool smtp_xtext_decode(const char *s, size_t len, char *out, size_t outlen)
{
	size_t o = 0;
	if (!out || outlen == 0)
		return false;
	out[0] = '\0';
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '+') {
			if (len - i < 3)
				return false;
			int hi = hexval((unsigned char)s[i + 1]);
			int lo = hexval((unsigned char)s[i + 2]);
			if (hi < 0 || lo < 0)
				return false;
			c = (unsigned char)(hi * 16 + lo);
			if (c == 0)
				return false;
			i += 2;
		} else if (c < 33 || c > 126 || c == '=') {
			return false;
		}
		if (o + 1 >= outlen) {
			out[0] = '\0';
			return false;
		}
		out[o++] = (char)c;
	}
	out[o] = '\0';
	return true;
}

bool smtp_xtext_encode(const char *s, size_t len, char *out, size_t outlen)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;
	if (!out || outlen == 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 33 && c <= 126 && c != '+' && c != '=') {
			if (o + 1 >= outlen)
				goto toolong;
			out[o++] = (char)c;
		} else {
			if (o + 3 >= outlen)
				goto toolong;
			out[o++] = '+';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	out[o] = '\0';
	return true;
toolong:
	out[0] = '\0';
	return false;
}

/* -------------------------------------------------------------- parameters */

static bool is_space(char c)
{
	return c == ' ';
}

/* A decoded ENVID/ORCPT ends up in DSN header fields: no controls there. */
static bool printable(const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c < 32 || c == 127)
			return false;
	}
	return true;
}

#define SEEN_SIZE 0x01u
#define SEEN_BODY 0x02u
#define SEEN_SMTPUTF8 0x04u
#define SEEN_RET 0x08u
#define SEEN_ENVID 0x10u
#define SEEN_NOTIFY 0x20u
#define SEEN_ORCPT 0x40u
#define SEEN_AUTH 0x80u

static enum smtp_parse_status parse_notify(const char *v, size_t n, struct smtp_cmd *out,
                                           struct smtp_parse_error *err)
{
	unsigned bits = 0;
	size_t i = 0;
	for (;;) {
		size_t st = i;
		while (i < n && v[i] != ',')
			i++;
		const char *w = v + st;
		size_t wl = i - st;
		if (ieq(w, wl, "never"))
			bits |= SMTP_NOTIFY_NEVER;
		else if (ieq(w, wl, "success"))
			bits |= SMTP_NOTIFY_SUCCESS;
		else if (ieq(w, wl, "failure"))
			bits |= SMTP_NOTIFY_FAILURE;
		else if (ieq(w, wl, "delay"))
			bits |= SMTP_NOTIFY_DELAY;
		else
			return fail(err, 501, "5.5.4",
			            "NOTIFY takes NEVER or a list of SUCCESS,FAILURE,DELAY");
		if (i >= n)
			break;
		i++; /* ',' */
	}
	if ((bits & SMTP_NOTIFY_NEVER) && bits != SMTP_NOTIFY_NEVER)
		return fail(err, 501, "5.5.4", "NOTIFY=NEVER cannot be combined with other values");
	out->notify = bits;
	return SMTP_PARSE_OK;
}

static enum smtp_parse_status parse_orcpt(const char *v, size_t n, struct smtp_cmd *out,
                                          struct smtp_parse_error *err)
{
	size_t semi = 0;
	while (semi < n && v[semi] != ';')
		semi++;
	if (semi == 0 || semi >= n)
		return fail(err, 501, "5.5.4", "ORCPT takes addr-type;address, e.g. rfc822;a@b");
	for (size_t i = 0; i < semi; i++)
		if (!is_atext((unsigned char)v[i]))
			return fail(err, 501, "5.5.4", "ORCPT address type is malformed");
	if (semi + 1 >= n)
		return fail(err, 501, "5.5.4", "ORCPT address is empty");
	if (semi + 1 >= sizeof(out->orcpt))
		return fail(err, 501, "5.5.4", "ORCPT is too long");
	memcpy(out->orcpt, v, semi + 1);
	if (!smtp_xtext_decode(v + semi + 1, n - semi - 1, out->orcpt + semi + 1,
	                       sizeof(out->orcpt) - semi - 1)) {
		out->orcpt[0] = '\0';
		return fail(err, 501, "5.5.4", "ORCPT address is not valid xtext or is too long");
	}
	if (!printable(out->orcpt)) {
		out->orcpt[0] = '\0';
		return fail(err, 501, "5.5.4", "ORCPT address contains control characters");
	}
	return SMTP_PARSE_OK;
}

/*
 * Parameters after the path: SP-separated keyword[=value] (RFC 5321
 * §4.1.2 esmtp-param). Keywords are matched case-insensitively.
 */
static enum smtp_parse_status parse_params(const char *s, size_t len, size_t i, bool is_mail,
                                           struct smtp_cmd *out, struct smtp_parse_error *err)
{
	unsigned seen = 0;

	for (;;) {
		while (i < len && is_space(s[i]))
			i++;
		if (i >= len)
			return SMTP_PARSE_OK;

		size_t kst = i;
		while (i < len && s[i] != ' ' && s[i] != '=')
			i++;
		const char *k = s + kst;
		size_t kl = i - kst;
		const char *v = NULL;
		size_t vl = 0;
		bool has_value = false;
		if (i < len && s[i] == '=') {
			i++;
			has_value = true;
			v = s + i;
			while (i < len && s[i] != ' ')
				i++;
			vl = (size_t)(s + i - v);
		}

		/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
		if (kl == 0 || !is_alnum((unsigned char)k[0]))
			return fail(err, 501, "5.5.4", "malformed parameter");
		for (size_t j = 1; j < kl; j++)
			if (!is_alnum((unsigned char)k[j]) && k[j] != '-')
				return fail(err, 501, "5.5.4", "malformed parameter");
		/* esmtp-value = 1*(%d33-60 / %d62-126) */
		if (has_value) {
			if (vl == 0)
				return fail(err, 501, "5.5.4", "parameter value is empty");
			for (size_t j = 0; j < vl; j++) {
				unsigned char c = (unsigned char)v[j];
				if (c < 33 || c > 126 || c == '=')
					return fail(err, 501, "5.5.4",
					            "parameter value has invalid characters");
			}
		}

		unsigned bit;
		bool for_mail;
		if (ieq(k, kl, "size")) {
			bit = SEEN_SIZE;
			for_mail = true;
		} else if (ieq(k, kl, "body")) {
			bit = SEEN_BODY;
			for_mail = true;
		} else if (ieq(k, kl, "smtputf8")) {
			bit = SEEN_SMTPUTF8;
			for_mail = true;
		} else if (ieq(k, kl, "ret")) {
			bit = SEEN_RET;
			for_mail = true;
		} else if (ieq(k, kl, "envid")) {
			bit = SEEN_ENVID;
			for_mail = true;
		} else if (ieq(k, kl, "notify")) {
			bit = SEEN_NOTIFY;
			for_mail = false;
		} else if (ieq(k, kl, "orcpt")) {
			bit = SEEN_ORCPT;
			for_mail = false;
		} else if (ieq(k, kl, "auth")) {
			bit = SEEN_AUTH;
			for_mail = true;
		} else {
			return fail(err, 555, "5.5.4", "unsupported parameter");
		}
		if (for_mail != is_mail)
			return fail(err, 555, "5.5.4",
			            is_mail ? "parameter not allowed with MAIL"
			                    : "parameter not allowed with RCPT");
		/* A repeated SMTPUTF8 changes nothing, and some clients (Python's
		 * smtplib.send_message) add it a second time: tolerate it. */
		if ((seen & bit) && bit != SEEN_SMTPUTF8)
			return fail(err, 501, "5.5.4", "duplicate parameter");
		seen |= bit;

		if (bit == SEEN_SMTPUTF8) {
			if (has_value)
				return fail(err, 501, "5.5.4", "SMTPUTF8 takes no value");
			out->smtputf8 = true;
			continue;
		}
		if (!has_value)
			return fail(err, 501, "5.5.4", "parameter needs a value");

		switch (bit) {
		case SEEN_SIZE:
			if (!parse_u64(v, vl, &out->size))
				return fail(err, 501, "5.5.4", "SIZE must be a number of bytes");
			out->has_size = true;
			break;
		case SEEN_BODY:
			if (ieq(v, vl, "7bit"))
				out->body = SMTP_BODY_7BIT;
			else if (ieq(v, vl, "8bitmime"))
				out->body = SMTP_BODY_8BITMIME;
			else if (ieq(v, vl, "binarymime"))
				out->body = SMTP_BODY_BINARYMIME;
			else
				return fail(err, 501, "5.5.4",
				            "BODY must be 7BIT, 8BITMIME or BINARYMIME");
			break;
		case SEEN_RET:
			if (ieq(v, vl, "full"))
				out->ret = SMTP_RET_FULL;
			else if (ieq(v, vl, "hdrs"))
				out->ret = SMTP_RET_HDRS;
			else
				return fail(err, 501, "5.5.4", "RET must be FULL or HDRS");
			break;
		case SEEN_ENVID:
			if (!smtp_xtext_decode(v, vl, out->envid, sizeof(out->envid)))
				return fail(err, 501, "5.5.4",
				            "ENVID is not valid xtext or is too long");
			if (!printable(out->envid)) {
				out->envid[0] = '\0';
				return fail(err, 501, "5.5.4", "ENVID contains control characters");
			}
			break;
		case SEEN_NOTIFY:
			if (parse_notify(v, vl, out, err) != SMTP_PARSE_OK)
				return SMTP_PARSE_ERROR;
			break;
		case SEEN_ORCPT:
			if (parse_orcpt(v, vl, out, err) != SMTP_PARSE_OK)
				return SMTP_PARSE_ERROR;
			break;
		case SEEN_AUTH:
			/* RFC 4954 §5: "<>" or an xtext-encoded mailbox; the server
			 * decides whether to believe it. */
			if (!smtp_xtext_decode(v, vl, out->auth_param, sizeof(out->auth_param)))
				return fail(err, 501, "5.5.4",
				            "AUTH= is not valid xtext or is too long");
			if (!printable(out->auth_param) ||
			    (strcmp(out->auth_param, "<>") != 0 && !strchr(out->auth_param, '@'))) {
				out->auth_param[0] = '\0';
				return fail(err, 501, "5.5.4", "AUTH= takes <> or an address");
			}
			break;
		default:
			break;
		}
	}
}

/* ---------------------------------------------------------- MAIL and RCPT */

static enum smtp_parse_status parse_mail_rcpt(const char *s, size_t len, size_t i, bool is_mail,
                                              struct smtp_cmd *out, struct smtp_parse_error *err)
{
	const char *bad = is_mail ? "5.1.7" : "5.1.3";
	const char *word = is_mail ? "from" : "to";
	size_t wl = is_mail ? 4 : 2;

	while (i < len && is_space(s[i]))
		i++;
	if (len - i < wl || !ieq(s + i, wl, word))
		return fail(err, 501, "5.5.4",
		            is_mail ? "syntax: MAIL FROM:<address>" : "syntax: RCPT TO:<address>");
	i += wl;
	while (i < len && is_space(s[i]))
		i++;
	if (i >= len || s[i] != ':')
		return fail(err, 501, "5.5.4",
		            is_mail ? "syntax: MAIL FROM:<address>" : "syntax: RCPT TO:<address>");
	i++;
	while (i < len && is_space(s[i]))
		i++;
	if (i >= len || s[i] != '<')
		return fail(err, 501, bad, "address must be in angle brackets: <user@domain>");
	i++;

	struct smtp_path *path = &out->path;
	if (i < len && s[i] == '>') {
		if (!is_mail)
			return fail(err, 501, "5.1.3", "null recipient <> is not allowed");
		path->null_path = true;
		path->has_domain = false;
		i++;
	} else {
		/* Source route "@a,@b:" (RFC 5321 §4.1.2 A-d-l): must be
		 * accepted and ignored (Appendix C). */
		if (i < len && s[i] == '@') {
			for (;;) {
				bool dummy = false;
				i++; /* '@' */
				if (parse_domain(s, len, &i, &dummy) != ADDR_OK)
					return fail(err, 501, bad, "malformed source route");
				if (i < len && s[i] == ',' && i + 1 < len && s[i + 1] == '@') {
					i++;
					continue;
				}
				break;
			}
			if (i >= len || s[i] != ':')
				return fail(err, 501, bad, "malformed source route");
			i++;
		}
		enum addr_result r = parse_mailbox_at(s, len, &i, path, !is_mail);
		switch (r) {
		case ADDR_OK:
			break;
		case ADDR_TOOLONG:
			return fail(err, 501, bad, "address too long");
		case ADDR_BADUTF8:
			return fail(err, 501, bad, "address is not valid UTF-8");
		default:
			return fail(err, 501, bad, "malformed address");
		}
		if (i >= len || s[i] != '>')
			return fail(err, 501, bad, "malformed address");
		i++;
	}
	if (i < len && !is_space(s[i]))
		return fail(err, 501, bad, "malformed address");
	return parse_params(s, len, i, is_mail, out, err);
}

/* ----------------------------------------------------------------- command */

static const struct {
	const char *name;
	enum smtp_verb verb;
} verbs[] = {
    {"helo", SMTP_HELO},         {"ehlo", SMTP_EHLO}, {"mail", SMTP_MAIL}, {"rcpt", SMTP_RCPT},
    {"data", SMTP_DATA},         {"bdat", SMTP_BDAT}, {"rset", SMTP_RSET}, {"noop", SMTP_NOOP},
    {"quit", SMTP_QUIT},         {"help", SMTP_HELP}, {"vrfy", SMTP_VRFY}, {"expn", SMTP_EXPN},
    {"starttls", SMTP_STARTTLS}, {"auth", SMTP_AUTH},
};

/* HELO/EHLO: one domain or address literal. Underscores are tolerated in
 * labels because misconfigured hosts send them and refusing them only hurts
 * the sender; everything else must look like a host name. */
static enum smtp_parse_status parse_helo(const char *s, size_t len, size_t i, struct smtp_cmd *out,
                                         struct smtp_parse_error *err)
{
	while (i < len && is_space(s[i]))
		i++;
	size_t end = len;
	while (end > i && is_space(s[end - 1]))
		end--;
	if (i >= end)
		return fail(err, 501, "5.5.4", "HELO/EHLO needs your host name");
	size_t n = end - i;
	if (n > SMTP_DOMAIN_MAX)
		return fail(err, 501, "5.5.4", "host name too long");
	const char *h = s + i;
	if (h[0] == '[') {
		size_t p = 0;
		if (parse_addr_literal(h, n, &p) != ADDR_OK || p != n)
			return fail(err, 501, "5.5.4", "malformed address literal");
	} else {
		for (size_t j = 0; j < n; j++) {
			unsigned char c = (unsigned char)h[j];
			if (is_alnum(c) || c == '-' || c == '.' || c == '_')
				continue;
			if (c >= 0x80) {
				size_t k = utf8_seq_len((const unsigned char *)h + j, n - j);
				if (k == 0)
					return fail(err, 501, "5.5.4",
					            "host name is not valid UTF-8");
				j += k - 1;
				continue;
			}
			return fail(err, 501, "5.5.4",
			            "HELO/EHLO needs a host name or address literal");
		}
	}
	memcpy(out->arg, h, n);
	out->arg[n] = '\0';
	return SMTP_PARSE_OK;
}

enum smtp_parse_status smtp_parse_command(const char *line, size_t len, struct smtp_cmd *out,
                                          struct smtp_parse_error *err)
{
	struct smtp_cmd dummy;
	if (!out)
		out = &dummy;
	memset(out, 0, sizeof(*out));
	out->verb = SMTP_UNKNOWN;
	if (err) {
		err->code = 0;
		err->enhanced = "";
		err->text = "";
	}
	if (!line)
		len = 0;

	/* NUL, CR and LF have no place in a command line; a CR here means the
	 * client and we disagree about line ends, which is how smuggling
	 * starts. */
	for (size_t i = 0; i < len; i++)
		if (line[i] == '\0' || line[i] == '\r' || line[i] == '\n')
			return fail(err, 500, "5.5.2", "command not recognized");

	size_t vl = 0;
	while (vl < len && line[vl] != ' ')
		vl++;
	enum smtp_verb verb = SMTP_UNKNOWN;
	for (size_t k = 0; k < sizeof(verbs) / sizeof(verbs[0]); k++) {
		if (ieq(line, vl, verbs[k].name)) {
			verb = verbs[k].verb;
			break;
		}
	}
	if (verb == SMTP_UNKNOWN)
		return fail(err, 500, "5.5.2", "command not recognized");
	out->verb = verb;

	size_t i = vl; /* at ' ' or len */
	size_t rest_start = i < len ? i + 1 : len;
	size_t j;

	switch (verb) {
	case SMTP_HELO:
	case SMTP_EHLO:
		return parse_helo(line, len, i, out, err);
	case SMTP_MAIL:
		return parse_mail_rcpt(line, len, i, true, out, err);
	case SMTP_RCPT:
		return parse_mail_rcpt(line, len, i, false, out, err);
	case SMTP_DATA:
	case SMTP_RSET:
	case SMTP_QUIT:
	case SMTP_STARTTLS:
		/* Trailing spaces are tolerated; anything else is not. */
		for (j = i; j < len; j++)
			if (!is_space(line[j]))
				return fail(err, 501, "5.5.4", "this command takes no arguments");
		return SMTP_PARSE_OK;
	case SMTP_BDAT: {
		j = i;
		while (j < len && is_space(line[j]))
			j++;
		size_t st = j;
		while (j < len && !is_space(line[j]))
			j++;
		if (!parse_u64(line + st, j - st, &out->chunk_size))
			return fail(err, 501, "5.5.4", "syntax: BDAT <size> [LAST]");
		out->has_chunk_size = true;
		while (j < len && is_space(line[j]))
			j++;
		if (j < len) {
			st = j;
			while (j < len && !is_space(line[j]))
				j++;
			if (!ieq(line + st, j - st, "last"))
				return fail(err, 501, "5.5.4", "syntax: BDAT <size> [LAST]");
			out->last = true;
			while (j < len && is_space(line[j]))
				j++;
			if (j < len)
				return fail(err, 501, "5.5.4", "syntax: BDAT <size> [LAST]");
		}
		return SMTP_PARSE_OK;
	}
	case SMTP_AUTH: {
		/* "AUTH" SP mechanism [SP initial-response] (RFC 4954 §4); the
		 * response is left where it is, it may be longer than arg. */
		size_t st = rest_start;
		while (st < len && is_space(line[st]))
			st++;
		j = st;
		while (j < len && line[j] != ' ')
			j++;
		if (j - st > SMTP_ARG_MAX)
			return fail(err, 501, "5.5.4", "argument too long");
		memcpy(out->arg, line + st, j - st);
		out->arg[j - st] = '\0';
		while (j < len && is_space(line[j]))
			j++;
		size_t end = len;
		while (end > j && is_space(line[end - 1]))
			end--;
		if (end > j) {
			if (end - j > SMTP_AUTH_LINE_MAX)
				return fail(err, 500, "5.5.6",
				            "authentication exchange line is too long");
			out->auth_initial = line + j;
			out->auth_initial_len = end - j;
		}
		return SMTP_PARSE_OK;
	}
	case SMTP_NOOP:
	case SMTP_HELP:
	case SMTP_VRFY:
	case SMTP_EXPN: {
		size_t n = len - rest_start;
		if (n > SMTP_ARG_MAX)
			return fail(err, 501, "5.5.4", "argument too long");
		if (n)
			memcpy(out->arg, line + rest_start, n);
		out->arg[n] = '\0';
		return SMTP_PARSE_OK;
	}
	default:
		break;
	}
	return fail(err, 500, "5.5.2", "command not recognized");
}
