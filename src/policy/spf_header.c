/*
 * spf_header.c — recording an SPF result in the message (RFC 7208 §9):
 * the Received-SPF trace field and the spf resinfo of Authentication-Results
 * (RFC 8601 §2.7.2).
 *
 * Owns: the words of the comment, the key-value pairs and their quoting,
 * and folding the field under 78 columns.
 *
 * Every value here came from an SMTP client (HELO, MAIL FROM) or a DNS
 * publisher (mechanism text, problem): §9.1 "MUST make sure that the
 * Received-SPF header field does not contain invalid characters, is not
 * excessively long, and does not contain malicious data". So: a value is a
 * dot-atom or a quoted-string with '"' and '\' escaped, a comment has no
 * parenthesis or backslash of its own, any byte that is not printable
 * US-ASCII becomes '?', and each sender-made value is cut at 256 bytes. No
 * CR or LF can come out but the folds written here.
 */
#include "policy/spf.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "core/err.h"

#define VALUE_MAX 256
#define FOLD_AT 78

/* RFC 5322 atext */
static bool atext(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

static bool dot_atom(const char *s, size_t n)
{
	if (n == 0 || s[0] == '.' || s[n - 1] == '.')
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '.') {
			if (s[i + 1] == '.')
				return false;
		} else if (!atext((unsigned char)s[i])) {
			return false;
		}
	}
	return true;
}

static char safe_byte(unsigned char c)
{
	return (c >= 0x20 && c < 0x7f) ? (char)c : '?';
}

/* value as a dot-atom or a quoted-string, made safe and bounded, in out
 * (which has room for 2 * VALUE_MAX + 8). */
static void quote_value(const char *s, char *out, size_t outlen)
{
	char clean[VALUE_MAX + 4];
	size_t n = strlen(s), o = 0;
	bool cut = n > VALUE_MAX;

	for (size_t i = 0; i < n && i < VALUE_MAX; i++)
		clean[o++] = safe_byte((unsigned char)s[i]);
	if (cut) {
		memcpy(clean + o, "...", 3);
		o += 3;
	}
	clean[o] = '\0';
	if (dot_atom(clean, o)) {
		tern_strlcpy(out, clean, outlen);
		return;
	}
	size_t w = 0;
	out[w++] = '"';
	for (size_t i = 0; i < o && w + 3 < outlen; i++) {
		if (clean[i] == '"' || clean[i] == '\\')
			out[w++] = '\\';
		out[w++] = clean[i];
	}
	out[w++] = '"';
	out[w] = '\0';
}

/* text for inside a comment: no '(' ')' '\' of its own, bounded */
static void comment_text(const char *s, char *out, size_t outlen)
{
	size_t n = strlen(s), o = 0;
	for (size_t i = 0; i < n && i < VALUE_MAX && o + 4 < outlen; i++) {
		char c = safe_byte((unsigned char)s[i]);
		out[o++] = (c == '(' || c == ')' || c == '\\') ? '?' : c;
	}
	if (n > VALUE_MAX && o + 4 < outlen) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
}

/* Writes words, folding before a word that would pass FOLD_AT. */
struct folder {
	struct tbuf *b;
	size_t col;
	int err;
};

static void fold_word(struct folder *f, const char *w, size_t n)
{
	if (f->err || n == 0)
		return;
	if (f->col > 0) {
		if (f->col + 1 + n > FOLD_AT) {
			f->err = tbuf_append(f->b, "\r\n\t", 3);
			f->col = 8;
		} else {
			f->err = tbuf_append(f->b, " ", 1);
			f->col++;
		}
	}
	if (!f->err)
		f->err = tbuf_append(f->b, w, n);
	f->col += n;
}

/* Splits s on spaces and folds each word. */
static void fold_text(struct folder *f, const char *s)
{
	while (*s) {
		while (*s == ' ')
			s++;
		size_t n = strcspn(s, " ");
		if (n)
			fold_word(f, s, n);
		s += n;
	}
}

static void fold_pair(struct folder *f, const char *key, const char *value, bool last)
{
	char q[2 * VALUE_MAX + 16];
	char w[2 * VALUE_MAX + 48];

	quote_value(value, q, sizeof(q));
	snprintf(w, sizeof(w), "%s=%s%s", key, q, last ? "" : ";");
	fold_word(f, w, strlen(w));
}

/* The <sender> words: the mailbox for MAIL FROM (postmaster@HELO for the
 * null path), the name for HELO. */
static void sender_words(const struct spf_request *req, const struct spf_outcome *o, char *out,
                         size_t outlen)
{
	char tmp[VALUE_MAX + 16];
	const char *helo = req->helo ? req->helo : "";
	if (o->identity == SPF_ID_HELO)
		snprintf(tmp, sizeof(tmp), "%.*s", VALUE_MAX, helo);
	else if (req->mailfrom && req->mailfrom[0])
		snprintf(tmp, sizeof(tmp), "%.*s", VALUE_MAX, req->mailfrom);
	else
		snprintf(tmp, sizeof(tmp), "postmaster@%.*s", VALUE_MAX, helo);
	comment_text(tmp, out, outlen);
}

int spf_received_spf(const struct spf_request *req, const struct spf_outcome *o, struct tbuf *out)
{
	char ip[INET6_ADDRSTRLEN] = "";
	char who[VALUE_MAX + 8], sender[VALUE_MAX + 8], text[3 * VALUE_MAX + 128];
	struct folder f = {out, 0, TERN_OK};

	if (!req || !o || !out)
		return TERN_EINVAL;
	const char *receiver = req->receiver && req->receiver[0] ? req->receiver : "unknown";
	inet_ntop(req->ip.family, req->ip.addr, ip, sizeof(ip));
	comment_text(receiver, who, sizeof(who));
	sender_words(req, o, sender, sizeof(sender));

	switch (o->result) {
	case SPF_PASS:
		snprintf(text, sizeof(text), "(%s: domain of %s designates %s as permitted sender)",
		         who, sender, ip);
		break;
	case SPF_FAIL:
		snprintf(text, sizeof(text),
		         "(%s: domain of %s does not designate %s as permitted sender)", who,
		         sender, ip);
		break;
	case SPF_SOFTFAIL:
		snprintf(text, sizeof(text),
		         "(%s: domain of transitioning %s does not designate %s as permitted "
		         "sender)",
		         who, sender, ip);
		break;
	case SPF_NEUTRAL:
		snprintf(text, sizeof(text),
		         "(%s: %s is neither permitted nor denied by domain of %s)", who, ip,
		         sender);
		break;
	case SPF_NONE:
		snprintf(text, sizeof(text),
		         "(%s: domain of %s does not designate permitted sender hosts)", who,
		         sender);
		break;
	case SPF_TEMPERROR:
		snprintf(text, sizeof(text),
		         "(%s: temporary error looking up the SPF policy of %s)", who, sender);
		break;
	case SPF_PERMERROR:
		snprintf(text, sizeof(text), "(%s: the SPF policy of %s cannot be used)", who,
		         sender);
		break;
	}

	size_t start = out->len;
	fold_word(&f, "Received-SPF:", 13);
	fold_word(&f, spf_result_name(o->result), strlen(spf_result_name(o->result)));
	fold_text(&f, text);

	bool want_mech = o->mechanism[0] != '\0';
	bool want_problem =
	    o->problem[0] != '\0' &&
	    (o->result == SPF_PERMERROR || o->result == SPF_TEMPERROR || o->result == SPF_NONE);
	fold_pair(&f, "client-ip", ip, false);
	if (o->identity == SPF_ID_MAILFROM)
		fold_pair(&f, "envelope-from", req->mailfrom ? req->mailfrom : "", false);
	if (req->helo && req->helo[0])
		fold_pair(&f, "helo", req->helo, false);
	fold_pair(&f, "receiver", receiver, false);
	fold_pair(&f, "identity", spf_identity_name(o->identity), !want_mech && !want_problem);
	if (want_mech)
		fold_pair(&f, "mechanism", o->mechanism, !want_problem);
	if (want_problem)
		fold_pair(&f, "problem", o->problem, true);
	if (!f.err)
		f.err = tbuf_append(out, "\r\n", 2);
	if (f.err) {
		/* leave no half field behind */
		out->len = start;
		if (out->data)
			out->data[start] = '\0';
	}
	return f.err;
}

/* RFC 8601 pvalue: a domain name bare, anything else as a quoted-string
 * (its value is an RFC 2045 token or quoted-string, and '/', '=', '?' are
 * tspecials there even though they are atext in RFC 5322). */
static void authres_value(const char *s, char *out, size_t outlen)
{
	size_t n = strlen(s);
	bool bare = n > 0 && n <= VALUE_MAX && s[0] != '.' && s[n - 1] != '.';
	for (size_t i = 0; bare && i < n; i++) {
		char c = s[i];
		bare = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		       c == '-' || c == '_' || (c == '.' && s[i + 1] != '.');
	}
	if (bare) {
		tern_strlcpy(out, s, outlen);
		return;
	}
	/* quote_value cleans and bounds; a dot-atom it leaves bare is
	 * quoted here too (it holds a tspecial or a replaced byte) */
	quote_value(s, out, outlen);
	size_t l = strlen(out);
	if (out[0] != '"' && l + 3 <= outlen) {
		/* a (cleaned) dot-atom has no '"' or '\\' to escape */
		memmove(out + 1, out, l);
		out[0] = '"';
		out[l + 1] = '"';
		out[l + 2] = '\0';
	}
}

int spf_authres(const struct spf_request *req, const struct spf_outcome *o, struct tbuf *out)
{
	char q[2 * VALUE_MAX + 16];

	if (!req || !o || !out)
		return TERN_EINVAL;
	if (o->identity == SPF_ID_HELO)
		authres_value(req->helo ? req->helo : "", q, sizeof(q));
	else
		authres_value(o->domain, q, sizeof(q));
	return tbuf_printf(out, "spf=%s smtp.%s=%s", spf_result_name(o->result),
	                   o->identity == SPF_ID_HELO ? "helo" : "mailfrom", q);
}
