/*
 * bounce.c — delivery status notifications (queue.h "bounce"): turns a
 * struct dsn_params into the bytes of one RFC 6522 multipart/report;
 * report-type=delivery-status message (RFC 3464 fields, RFC 3461 ENVID /
 * ORCPT / RET rules, RFC 3834 Auto-Submitted), ready to be spooled.
 *
 * Layout of what dsn_build appends:
 *   header   From MAILER-DAEMON, To, Subject, Date, Message-ID,
 *            Auto-Submitted: auto-replied, MIME-Version, Content-Type
 *   part 1   text/plain; charset=us-ascii: what happened, for a person
 *   part 2   message/delivery-status: the same, for programs
 *   part 3   message/rfc822 (the whole original) or text/rfc822-headers
 *
 * Must never: do I/O or read the clock (p->now is "now"); write past
 * out->max or leave a half-written DSN in out (on error out is restored);
 * let bytes that came from outside — a remote server's reply, an address,
 * an ENVID, the original message — change the structure of the DSN: no
 * header or field injection through CR/LF, no bare CR or LF anywhere, no
 * multipart boundary that occurs in any part. Everything we generate is
 * 7-bit US-ASCII; the only 8-bit octets a DSN can hold are those of an
 * 8-bit original carried whole inside message/rfc822 (labelled
 * Content-Transfer-Encoding: 8bit), which means the DSN needs 8BITMIME to
 * be relayed. That is fine for local delivery; the SMTP client downgrades
 * or bounces like any other 8-bit message when the next hop lacks it.
 */
#include "queue/queue.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/err.h"
#include "core/timefmt.h"
#include "mime/mime.h"
#include "smtp/smtp.h"

/* Without RET, a failure notice carries the whole original below this size. */
#define DSN_FULL_DEFAULT_MAX (256u * 1024u)
/* text/rfc822-headers carries at most this much of the header section. */
#define DSN_HEADERS_MAX (64u * 1024u)
/* A remote server's reply is cut here (multi-line replies can be long). */
#define DSN_DIAG_MAX 4000u
/* Addresses and ENVIDs longer than this (encoded) are cut: no valid one is. */
#define DSN_ADDR_MAX 900u
/* Where we fold or wrap the lines we write, and the hard limit for any line. */
#define DSN_WIDTH 78u
#define DSN_LINE_HARD 990u
/* Lines longer than this (without CRLF) cannot travel as 7bit or 8bit. */
#define RFC5322_LINE_MAX 998u
/* Generous bound on what a DSN adds around parts 1 and 2 and the original. */
#define DSN_OVERHEAD 4096u

/* -------------------------------------------------------------- writer */

/* The writer is mime/'s struct mime_writer: the first error sticks, so the
 * building code below writes straight through and checks once. */

/* ---------------------------------------------------------- small text */

static bool is_print(unsigned char c)
{
	return c >= 0x20 && c <= 0x7e;
}

/* RFC 5322 date-time (core/timefmt); 0 means "not recorded" in a DSN. */
static bool fmt_date(int64_t t, char *out, size_t outlen)
{
	return t > 0 && tern_rfc5322_date(t, out, outlen);
}

/* A host name we may label "dns": LDH labels, dots, nothing else. */
static bool is_dns_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 253)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.' || c == '_'))
			return false;
	}
	return true;
}

/* A word that goes into a field as-is: host names, queue ids, literals
 * like [192.0.2.1]. Anything else printable becomes '?', so the value can
 * never carry white space, a comment, a ';' or a line break. */
static void put_token(struct mime_writer *w, const char *s, size_t max)
{
	char tmp[256];
	size_t o = 0;
	if (!s || !*s) {
		mime_puts(w, "unknown");
		return;
	}
	for (size_t i = 0; s[i] && i < max; i++) {
		unsigned char c = (unsigned char)s[i];
		bool ok = c > 0x20 && c < 0x7f && c != '(' && c != ')' && c != ';' && c != '"' &&
		          c != '\\' && c != '<' && c != '>' && c != ',';
		tmp[o++] = ok ? (char)c : '?';
		if (o == sizeof(tmp)) {
			mime_put(w, tmp, o);
			o = 0;
		}
	}
	mime_put(w, tmp, o);
}

/*
 * Free text from outside (a server's reply, an address shown to a person)
 * made safe for a 7-bit line: CR, LF, TAB and other white space become one
 * space (so a multi-line reply reads "550-a 550 b"), runs of spaces
 * collapse, other control and 8-bit octets become '?', leading and
 * trailing space go. Longer than max: cut, and "..." says so.
 */
static int clean_text(const char *s, size_t max, struct tbuf *out)
{
	tbuf_reset(out);
	bool space = false;
	size_t i = 0;
	int rc = TERN_OK;
	for (; s[i] && i < max && rc == TERN_OK; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f') {
			space = out->len > 0;
			continue;
		}
		if (space)
			rc = tbuf_append(out, " ", 1);
		space = false;
		char ch = is_print(c) ? (char)c : '?';
		if (rc == TERN_OK)
			rc = tbuf_append(out, &ch, 1);
	}
	if (rc == TERN_OK && s[i] && i == max)
		rc = out->len ? tbuf_append(out, " ...", 4) : tbuf_append(out, "...", 3);
	if (rc == TERN_OK && !out->data)
		rc = tbuf_reserve(out, 0); /* so callers can use out->data as "" */
	if (rc == TERN_OK && !out->data)
		rc = TERN_ENOMEM;
	return rc;
}

/*
 * Writes single-spaced text (from clean_text or our own words) starting at
 * the current column, breaking at spaces so lines stay within DSN_WIDTH;
 * each new line starts with indent (which must begin with white space in a
 * header field, so the break is folding white space). A word too long for
 * any line is split at DSN_LINE_HARD so no line can pass RFC 5322's 998.
 * Ends with CRLF.
 */
static void put_wrapped(struct mime_writer *w, const char *text, size_t len, const char *indent)
{
	size_t ilen = strlen(indent);
	bool first = true; /* no word on this line yet (after indent or prefix) */
	size_t i = 0;
	while (i < len) {
		size_t j = i;
		while (j < len && text[j] != ' ')
			j++;
		size_t wl = j - i;
		if (!first && w->col + 1 + wl > DSN_WIDTH) {
			mime_crlf(w);
			mime_puts(w, indent);
			first = true;
		}
		if (!first)
			mime_put(w, " ", 1);
		while (wl > 0 && w->rc == TERN_OK) {
			size_t room = w->col < DSN_LINE_HARD ? DSN_LINE_HARD - w->col : 0;
			if (room == 0) {
				mime_crlf(w);
				mime_puts(w, indent);
				room = DSN_LINE_HARD - ilen;
			}
			size_t take = wl < room ? wl : room;
			mime_put(w, text + i, take);
			i += take;
			wl -= take;
		}
		first = false;
		i = j + 1; /* past the single space */
	}
	mime_crlf(w);
}

static void put_words(struct mime_writer *w, const char *s, const char *indent)
{
	put_wrapped(w, s, strlen(s), indent);
}

/* ------------------------------------------------------ address fields */

/* RFC 6533 unitext: QCHARs as-is, everything else as \x{HEX}; invalid
 * UTF-8 octets are shown as the code point of their value. Stops after
 * about DSN_ADDR_MAX output bytes so the field line stays legal. */
static void put_unitext(struct mime_writer *w, const unsigned char *s, size_t n)
{
	size_t i = 0;
	size_t start = w->b->len;
	while (i < n && w->b->len - start < DSN_ADDR_MAX) {
		unsigned char c = s[i];
		uint32_t cp = c;
		size_t len = 1;
		if (c >= 0xc2 && c <= 0xf4) {
			size_t need = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
			uint32_t v = c & (need == 2 ? 0x1f : need == 3 ? 0x0f : 0x07);
			bool ok = i + need <= n;
			for (size_t k = 1; ok && k < need; k++) {
				if ((s[i + k] & 0xc0) != 0x80)
					ok = false;
				else
					v = (v << 6) | (s[i + k] & 0x3f);
			}
			if (ok && ((need == 3 && v < 0x800) || (need == 4 && v < 0x10000) ||
			           v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)))
				ok = false;
			if (ok) {
				cp = v;
				len = need;
			}
		}
		bool qchar = cp >= 0x21 && cp <= 0x7e && cp != '+' && cp != '=' && cp != '\\';
		if (qchar) {
			char ch = (char)cp;
			mime_put(w, &ch, 1);
		} else if (cp < 0x100) {
			mime_printf(w, "\\x{%02X}", (unsigned)cp);
		} else {
			mime_printf(w, "\\x{%X}", (unsigned)cp);
		}
		i += len;
	}
}

static bool all_print(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!is_print((unsigned char)s[i]))
			return false;
	return true;
}

/*
 * "TYPE; ADDRESS" for Final-Recipient and Original-Recipient. Printable
 * ASCII goes as-is (RFC 3461 §9.1: rfc822 addresses need no translation);
 * anything else (an SMTPUTF8 address, or junk) becomes the 7-bit
 * utf-8-addr-xtext form of RFC 6533 §3, which message/delivery-status
 * requires.
 */
static void put_address(struct mime_writer *w, const char *type, size_t tlen, const char *addr)
{
	size_t n = strlen(addr);
	if (n > DSN_ADDR_MAX)
		n = DSN_ADDR_MAX;
	if (all_print(addr, n) && (n == 0 || (addr[0] != ' ' && addr[n - 1] != ' '))) {
		mime_put(w, type, tlen);
		mime_put(w, "; ", 2);
		mime_put(w, addr, n);
	} else {
		mime_puts(w, "utf-8; ");
		put_unitext(w, (const unsigned char *)addr, n);
	}
	mime_crlf(w);
}

/* ORCPT as stored: "rfc822;addr", xtext already decoded. */
static void put_orcpt(struct mime_writer *w, const char *orcpt)
{
	const char *semi = strchr(orcpt, ';');
	size_t tlen = semi ? (size_t)(semi - orcpt) : 0;
	bool type_ok = tlen > 0 && tlen <= 32;
	for (size_t i = 0; type_ok && i < tlen; i++) {
		unsigned char c = (unsigned char)orcpt[i];
		type_ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		          (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
	}
	mime_puts(w, "Original-Recipient: ");
	if (!type_ok) {
		/* RFC 3464 §2.3.1: "unknown" when we cannot tell the type */
		put_address(w, "unknown", 7, orcpt);
		return;
	}
	const char *addr = semi + 1;
	while (*addr == ' ')
		addr++;
	put_address(w, orcpt, tlen, addr);
}

/* ------------------------------------------------------- status fields */

enum kind { K_FAILED, K_DELAYED, K_DELIVERED, K_RELAYED, K_EXPANDED, K_BAD };

static enum kind action_kind(const char *a)
{
	if (!a)
		return K_BAD;
	if (tern_ascii_ieq(a, "failed"))
		return K_FAILED;
	if (tern_ascii_ieq(a, "delayed"))
		return K_DELAYED;
	if (tern_ascii_ieq(a, "delivered"))
		return K_DELIVERED;
	if (tern_ascii_ieq(a, "relayed"))
		return K_RELAYED;
	if (tern_ascii_ieq(a, "expanded"))
		return K_EXPANDED;
	return K_BAD;
}

static const char *const kind_word[] = {"failed", "delayed", "delivered", "relayed", "expanded"};

/* RFC 3463: class "." subject "." detail, class 2/4/5, 1-3 digits each. */
static bool status_valid(const char *s)
{
	if (!s || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
		return false;
	const char *p = s + 2;
	for (int part = 0; part < 2; part++) {
		size_t d = 0;
		while (p[d] >= '0' && p[d] <= '9')
			d++;
		if (d < 1 || d > 3)
			return false;
		p += d;
		if (part == 0) {
			if (*p != '.')
				return false;
			p++;
		}
	}
	return *p == '\0';
}

static const char *rcpt_status(const struct dsn_rcpt *r, enum kind k)
{
	if (status_valid(r->status))
		return r->status;
	/* RFC 3461 §6.3 (g): the generic code of the right class */
	return k == K_FAILED ? "5.0.0" : k == K_DELAYED ? "4.0.0" : "2.0.0";
}

/* An SMTP reply starts with three digits and a space or '-' (RFC 3461
 * §9.2); anything else (a DNS or local error) is ours, typed x-tern. */
static bool looks_smtp(const char *s)
{
	return s[0] >= '2' && s[0] <= '5' && s[1] >= '0' && s[1] <= '9' && s[2] >= '0' &&
	       s[2] <= '9' && (s[3] == ' ' || s[3] == '-' || s[3] == '\0');
}

/* --------------------------------------------------------------- parts */

struct counts {
	size_t failed, delayed, done;
};

static void put_per_message(struct mime_writer *w, const struct dsn_params *p)
{
	char date[64];
	if (p->envid) {
		/* RFC 3461 §6.3 (a): the decoded ENVID as-is; only a value that
		 * is not printable ASCII (which no 7-bit field can carry) is
		 * shown in its xtext form. */
		size_t n = strlen(p->envid);
		if (n > DSN_ADDR_MAX)
			n = DSN_ADDR_MAX;
		mime_puts(w, "Original-Envelope-Id: ");
		if (all_print(p->envid, n)) {
			mime_put(w, p->envid, n);
		} else {
			static const char hex[] = "0123456789ABCDEF";
			size_t start = w->b->len;
			for (size_t i = 0; i < n && w->b->len - start < DSN_ADDR_MAX; i++) {
				unsigned char c = (unsigned char)p->envid[i];
				if (c >= 33 && c <= 126 && c != '+' && c != '=') {
					mime_put(w, (const char *)&p->envid[i], 1);
				} else {
					char x[3] = {'+', hex[c >> 4], hex[c & 15]};
					mime_put(w, x, 3);
				}
			}
		}
		mime_crlf(w);
	}
	if (is_dns_name(p->reporting_mta)) {
		mime_puts(w, "Reporting-MTA: dns; ");
		mime_puts(w, p->reporting_mta);
	} else {
		/* RFC 3461 §6.3 (b): not a domain name, so not type "dns" */
		mime_puts(w, "Reporting-MTA: x-local-hostname; ");
		put_token(w, p->reporting_mta, 253);
	}
	mime_crlf(w);
	if (fmt_date(p->arrival, date, sizeof(date)))
		mime_printf(w, "Arrival-Date: %s\r\n", date);
	mime_puts(w, "X-Tern-Queue-ID: ");
	put_token(w, p->queue_id, 64);
	mime_crlf(w);
}

static int put_per_rcpt(struct mime_writer *w, const struct dsn_rcpt *r, enum kind k,
                        struct tbuf *tmp)
{
	char date[64];
	mime_crlf(w); /* a blank line before each group (RFC 3464 §2.1) */
	if (r->orcpt && *r->orcpt)
		put_orcpt(w, r->orcpt);
	mime_puts(w, "Final-Recipient: ");
	put_address(w, "rfc822", 6, r->final_rcpt);
	mime_printf(w, "Action: %s\r\n", kind_word[k]);
	mime_printf(w, "Status: %s\r\n", rcpt_status(r, k));
	if (r->remote_mta && *r->remote_mta) {
		mime_puts(w, "Remote-MTA: dns; ");
		put_token(w, r->remote_mta, 255);
		mime_crlf(w);
	}
	if (r->diagnostic && *r->diagnostic) {
		int rc = clean_text(r->diagnostic, DSN_DIAG_MAX, tmp);
		if (rc != TERN_OK)
			return rc;
		if (tmp->len > 0) {
			mime_puts(w, looks_smtp(tmp->data) ? "Diagnostic-Code: smtp; "
			                                   : "Diagnostic-Code: x-tern; ");
			put_wrapped(w, tmp->data, tmp->len, " ");
		}
	}
	if (fmt_date(r->last_attempt, date, sizeof(date)))
		mime_printf(w, "Last-Attempt-Date: %s\r\n", date);
	if (k == K_DELAYED && fmt_date(r->will_retry_until, date, sizeof(date)))
		mime_printf(w, "Will-Retry-Until: %s\r\n", date);
	return w->rc;
}

/* One recipient in the human part: "<addr>: what happened", then the
 * server's words indented (so no line of ours can start with "--"). */
static int put_human_rcpt(struct mime_writer *w, const struct dsn_rcpt *r, enum kind k,
                          struct tbuf *tmp)
{
	char date[64];
	int rc = clean_text(r->final_rcpt, DSN_ADDR_MAX, tmp);
	if (rc != TERN_OK)
		return rc;
	mime_puts(w, "  <");
	mime_put(w, tmp->data, tmp->len);
	mime_puts(w, ">:");
	char line[256];
	switch (k) {
	case K_FAILED:
		snprintf(line, sizeof(line), "delivery failed (status %s).", rcpt_status(r, k));
		break;
	case K_DELAYED:
		if (fmt_date(r->will_retry_until, date, sizeof(date)))
			snprintf(line, sizeof(line),
			         "not delivered yet (status %s); will keep trying until %s.",
			         rcpt_status(r, k), date);
		else
			snprintf(line, sizeof(line),
			         "not delivered yet (status %s); will keep trying.",
			         rcpt_status(r, k));
		break;
	case K_DELIVERED:
		snprintf(line, sizeof(line), "delivered.");
		break;
	case K_RELAYED:
		snprintf(line, sizeof(line),
		         "passed on to a system that does not send delivery reports.");
		break;
	default:
		snprintf(line, sizeof(line), "expanded to other recipients.");
		break;
	}
	mime_put(w, " ", 1);
	put_words(w, line, "      ");
	if (r->diagnostic && *r->diagnostic) {
		rc = clean_text(r->diagnostic, DSN_DIAG_MAX, tmp);
		if (rc != TERN_OK)
			return rc;
		if (tmp->len > 0) {
			mime_puts(w, "      ");
			if (r->remote_mta && *r->remote_mta) {
				mime_puts(w, "The mail server ");
				put_token(w, r->remote_mta, 255);
				mime_puts(w, " said:");
			} else {
				mime_puts(w, "The reason given:");
			}
			mime_crlf(w);
			mime_puts(w, "      ");
			put_wrapped(w, tmp->data, tmp->len, "      ");
		}
	}
	return w->rc;
}

static int put_human(struct mime_writer *w, const struct dsn_params *p, const struct counts *c,
                     struct tbuf *tmp)
{
	mime_puts(w, "This is the mail delivery system at ");
	put_token(w, p->reporting_mta, 253);
	mime_puts(w, ".\r\n\r\n");
	if (c->failed) {
		put_words(w,
		          "Your message could not be delivered to one or more of its recipients. "
		          "This is a permanent error: the system has given up on them.",
		          "");
		if (c->delayed)
			put_words(w,
			          "Delivery to those listed as delayed below is still being tried; "
			          "you will be told if it finally fails.",
			          "");
	} else if (c->delayed) {
		put_words(w,
		          "Your message has not yet been delivered to one or more of its "
		          "recipients. The system is still trying, so you do not need to send it "
		          "again; you will be told if delivery finally fails.",
		          "");
	} else {
		put_words(w, "This is the delivery report you asked for.", "");
	}
	static const struct {
		enum kind lo, hi;
		const char *title;
	} groups[] = {
	    {K_FAILED, K_FAILED, "Could not be delivered:"},
	    {K_DELAYED, K_DELAYED, "Delayed, still being tried:"},
	    {K_DELIVERED, K_EXPANDED, "Delivered:"},
	};
	for (size_t g = 0; g < sizeof(groups) / sizeof(groups[0]); g++) {
		bool titled = false;
		for (size_t i = 0; i < p->n_rcpts; i++) {
			enum kind k = action_kind(p->rcpts[i].action);
			if (k < groups[g].lo || k > groups[g].hi)
				continue;
			if (!titled) {
				mime_crlf(w);
				mime_puts(w, groups[g].title);
				mime_crlf(w);
				titled = true;
			}
			int rc = put_human_rcpt(w, &p->rcpts[i], k, tmp);
			if (rc != TERN_OK)
				return rc;
		}
	}
	mime_crlf(w);
	if (c->failed)
		put_words(w,
		          "What you can do: check the addresses above for typing mistakes and "
		          "send the message again. If the server's words above do not explain the "
		          "problem, forward this report to your mail administrator or to the "
		          "recipient's.",
		          "");
	return w->rc;
}

/* The last paragraph says what part 3 holds, known only once sizes are. */
static void put_human_tail(struct mime_writer *w, bool carried_whole, bool cut_short)
{
	mime_crlf(w);
	if (carried_whole)
		put_words(w, "A report for programs and your message are attached.", "");
	else if (cut_short)
		put_words(w,
		          "A report for programs and the header of your message are attached "
		          "(the message itself could not be attached whole).",
		          "");
	else
		put_words(w, "A report for programs and the header of your message are attached.",
		          "");
}

/* ----------------------------------------------------- the original */

/* Bytes of the header section: up to and including the line before the
 * first empty line (CRLF, LF or lone-CR line ends), or all of it. */
static size_t header_section_len(const char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		size_t e = i;
		while (e < n && s[e] != '\n' && s[e] != '\r')
			e++;
		if (e == i)
			return i; /* empty line */
		if (e == n)
			return n;
		if (s[e] == '\r' && e + 1 < n && s[e + 1] == '\n')
			e++;
		i = e + 1;
	}
	return n;
}

/* Walks lines with any line end; the longest one and whether any octet
 * is 8-bit or NUL decide how the original can travel. */
struct shape {
	bool eight_bit, nul;
	size_t longest;
	size_t normalized; /* length after put_normalized */
};

static struct shape shape_of(const char *s, size_t n)
{
	struct shape sh = {false, false, 0, n};
	size_t run = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '\r' || c == '\n') {
			if (c == '\r' && i + 1 < n && s[i + 1] == '\n')
				i++;
			else
				sh.normalized++; /* a bare CR or LF becomes CRLF */
			run = 0;
			continue;
		}
		if (c == 0)
			sh.nul = true;
		else if (c >= 0x80)
			sh.eight_bit = true;
		if (++run > sh.longest)
			sh.longest = run;
	}
	if (n > 0 && s[n - 1] != '\r' && s[n - 1] != '\n')
		sh.normalized += 2; /* the CRLF put_normalized adds at the end */
	return sh;
}

/* Copies with every line end made CRLF (a bare CR or LF from the original
 * must not reach the wire: DESIGN §5.4) and a final CRLF added if missing. */
static void put_normalized(struct mime_writer *w, const char *s, size_t n)
{
	size_t i = 0, start = 0;
	while (i < n) {
		if (s[i] == '\r' || s[i] == '\n') {
			mime_put(w, s + start, i - start);
			mime_crlf(w);
			if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
				i++;
			start = i + 1;
		}
		i++;
	}
	if (start < n) {
		mime_put(w, s + start, n - start);
		mime_crlf(w);
	}
}

/* Quoted-printable (RFC 2045 §6.7) with CRLF line ends, for a header
 * section that is not clean 7-bit text (8-bit, NUL, overlong lines):
 * text/rfc822-headers stays 7-bit and nothing is lost. */
static void put_qp(struct mime_writer *w, const char *s, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t i = 0;
	size_t col = 0;
	while (i < n) {
		unsigned char c = (unsigned char)s[i];
		if (c == '\r' || c == '\n') {
			mime_crlf(w);
			col = 0;
			if (c == '\r' && i + 1 < n && s[i + 1] == '\n')
				i++;
			i++;
			continue;
		}
		bool at_eol = i + 1 == n || s[i + 1] == '\r' || s[i + 1] == '\n';
		bool lit =
		    (c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !at_eol);
		size_t need = lit ? 1 : 3;
		if (col + need > 75) {
			mime_puts(w, "=\r\n");
			col = 0;
		}
		if (lit) {
			mime_put(w, (const char *)&s[i], 1);
		} else {
			char x[3] = {'=', hex[c >> 4], hex[c & 15]};
			mime_put(w, x, 3);
		}
		col += need;
		i++;
	}
	if (col > 0)
		mime_crlf(w);
}

/* Up to max bytes of s, cut after a line end when there is one. */
static size_t cut_at_line(const char *s, size_t n, size_t max)
{
	if (n <= max)
		return n;
	for (size_t i = max; i > 0; i--)
		if (s[i - 1] == '\n' || s[i - 1] == '\r')
			return i;
	return max;
}

/* ---------------------------------------------------------- boundary */

static bool contains(const char *hay, size_t n, const char *needle)
{
	return hay && n > 0 && memmem(hay, n, needle, strlen(needle)) != NULL;
}

/*
 * Deterministic candidates "=_tern_QUEUEID_NOW_N"; the first that occurs
 * nowhere in the parts is taken. "=_" can never occur in quoted-printable
 * or base64 text, and the check covers everything else.
 */
static int pick_boundary(const struct dsn_params *p, const struct tbuf *human,
                         const struct tbuf *status, char *out, size_t outlen)
{
	char qid[40];
	size_t q = 0;
	for (size_t i = 0; p->queue_id[i] && q < 32; i++) {
		unsigned char c = (unsigned char)p->queue_id[i];
		if ((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))
			qid[q++] = (char)c;
	}
	qid[q] = '\0';
	for (unsigned n = 0; n < 1000; n++) {
		int len =
		    snprintf(out, outlen, "=_tern_%s_%llx_%u", qid, (unsigned long long)p->now, n);
		if (len < 0 || (size_t)len >= outlen)
			return TERN_EINVAL;
		if (!contains(p->original, p->original_len, out) &&
		    !contains(human->data, human->len, out) &&
		    !contains(status->data, status->len, out))
			return TERN_OK;
	}
	return TERN_ELIMIT; /* only a message built to defeat us gets here */
}

static void message_id_token(const struct dsn_params *p, char *out, size_t outlen)
{
	static _Atomic unsigned long counter;
	unsigned char rnd[8] = {0};
	unsigned long long r = 0;
	/* GRND_NONBLOCK: never stall a delivery thread on early-boot entropy */
	if (getrandom(rnd, sizeof(rnd), GRND_NONBLOCK) == (ssize_t)sizeof(rnd))
		for (size_t i = 0; i < sizeof(rnd); i++)
			r = (r << 8) | rnd[i];
	unsigned long c = ++counter;
	snprintf(out, outlen, "%llx.%lx.%llx", (unsigned long long)p->now, c, r);
}

/* --------------------------------------------------------------- build */

static bool params_ok(const struct dsn_params *p)
{
	if (!p->reporting_mta || !p->queue_id || !p->to || !*p->to || !p->rcpts ||
	    p->n_rcpts == 0 || (!p->original && p->original_len > 0) || p->now <= 0)
		return false;
	for (size_t i = 0; i < p->n_rcpts; i++)
		if (!p->rcpts[i].final_rcpt || !*p->rcpts[i].final_rcpt ||
		    action_kind(p->rcpts[i].action) == K_BAD)
			return false;
	return true;
}

int dsn_build(const struct dsn_params *p, struct tbuf *out)
{
	if (!p || !out || !params_ok(p))
		return TERN_EINVAL;

	const size_t start = out->len;
	struct tbuf human = TBUF_INIT(out->max);
	struct tbuf status = TBUF_INIT(out->max);
	struct tbuf tmp = TBUF_INIT(DSN_DIAG_MAX + 16);
	struct counts c = {0, 0, 0};
	int rc = TERN_OK;

	for (size_t i = 0; i < p->n_rcpts; i++) {
		enum kind k = action_kind(p->rcpts[i].action);
		if (k == K_FAILED)
			c.failed++;
		else if (k == K_DELAYED)
			c.delayed++;
		else
			c.done++;
	}

	struct mime_writer wh;
	mime_writer_init(&wh, &human);
	rc = put_human(&wh, p, &c, &tmp);
	if (rc != TERN_OK)
		goto out;

	struct mime_writer ws;
	mime_writer_init(&ws, &status);
	put_per_message(&ws, p);
	for (size_t i = 0; i < p->n_rcpts && rc == TERN_OK; i++)
		rc = put_per_rcpt(&ws, &p->rcpts[i], action_kind(p->rcpts[i].action), &tmp);
	if (rc != TERN_OK)
		goto out;

	/* What part 3 carries. RFC 3461 §4.3: RET applies to failure notices
	 * only; delay and success notices carry the header section. */
	const char *orig = p->original ? p->original : "";
	size_t olen = p->original_len;
	bool whole = false, cut_short = false;
	if (c.failed)
		whole = p->ret == SMTP_RET_FULL ||
		        (p->ret == SMTP_RET_NONE && olen < DSN_FULL_DEFAULT_MAX);
	struct shape sh = shape_of(orig, olen);
	if (whole && (sh.nul || sh.longest > RFC5322_LINE_MAX)) {
		/* neither 7bit nor 8bit can carry it, and binary needs BINARYMIME */
		whole = false;
		cut_short = true;
	}
	if (whole) {
		/* RET=FULL asks for the whole message, but not for a DSN that
		 * cannot be stored: then the header section goes instead. */
		size_t room = out->max - out->len;
		size_t need = DSN_OVERHEAD + human.len + status.len;
		if (need > room || sh.normalized > room - need) {
			whole = false;
			cut_short = true;
		}
	}
	put_human_tail(&wh, whole, cut_short);
	if (wh.rc != TERN_OK) {
		rc = wh.rc;
		goto out;
	}

	char boundary[96];
	rc = pick_boundary(p, &human, &status, boundary, sizeof(boundary));
	if (rc != TERN_OK)
		goto out;

	char date[64];
	if (!fmt_date(p->now, date, sizeof(date))) {
		rc = TERN_EINVAL;
		goto out;
	}
	char mid[96];
	message_id_token(p, mid, sizeof(mid));

	struct mime_writer w;
	mime_writer_init(&w, out);
	/* ---- header */
	mime_puts(&w, "From: \"Mail Delivery System\" <MAILER-DAEMON@");
	put_token(&w, p->reporting_mta, 253);
	mime_puts(&w, ">\r\n");
	{
		size_t tn = strlen(p->to);
		/* An address a 7-bit header cannot carry (SMTPUTF8): the envelope
		 * still reaches it; the header names no one rather than lie. */
		bool plain = tn <= DSN_ADDR_MAX && all_print(p->to, tn) && !strchr(p->to, '<') &&
		             !strchr(p->to, '>');
		if (plain) {
			mime_puts(&w, "To: <");
			mime_put(&w, p->to, tn);
			mime_puts(&w, ">\r\n");
		} else
			mime_puts(&w, "To: undisclosed-recipients:;\r\n");
	}
	mime_puts(&w, "Subject: ");
	mime_puts(&w, c.failed    ? "Undelivered Mail Returned to Sender"
	              : c.delayed ? "Delayed Mail (still being retried)"
	                          : "Successful Mail Delivery Report");
	mime_crlf(&w);
	mime_printf(&w, "Date: %s\r\n", date);
	mime_puts(&w, "Message-ID: <");
	put_token(&w, p->queue_id, 64);
	mime_printf(&w, ".DSN.%s@", mid);
	put_token(&w, p->reporting_mta, 253);
	mime_puts(&w, ">\r\n");
	mime_puts(&w, "Auto-Submitted: auto-replied\r\n"); /* RFC 3834 §5: DSNs are auto-replied */
	mime_puts(&w, "MIME-Version: 1.0\r\n");
	mime_puts(&w, "Content-Type: multipart/report; report-type=delivery-status;\r\n");
	mime_printf(&w, "\tboundary=\"%s\"\r\n", boundary);
	mime_crlf(&w);
	mime_puts(&w, "This is a MIME-encapsulated message.\r\n\r\n");

	/* ---- part 1 */
	mime_printf(&w, "--%s\r\n", boundary);
	mime_puts(&w, "Content-Description: Notification\r\n");
	mime_puts(&w, "Content-Type: text/plain; charset=us-ascii\r\n\r\n");
	mime_put(&w, human.data, human.len);
	mime_crlf(&w);

	/* ---- part 2 */
	mime_printf(&w, "--%s\r\n", boundary);
	mime_puts(&w, "Content-Description: Delivery report\r\n");
	mime_puts(&w, "Content-Type: message/delivery-status\r\n\r\n");
	mime_put(&w, status.data, status.len);
	mime_crlf(&w);

	/* ---- part 3 */
	mime_printf(&w, "--%s\r\n", boundary);
	if (whole) {
		mime_puts(&w, "Content-Description: Undelivered Message\r\n");
		mime_puts(&w, "Content-Type: message/rfc822\r\n");
		if (sh.eight_bit)
			mime_puts(&w, "Content-Transfer-Encoding: 8bit\r\n");
		mime_crlf(&w);
		put_normalized(&w, orig, olen);
	} else {
		size_t hn = cut_at_line(orig, header_section_len(orig, olen), DSN_HEADERS_MAX);
		struct shape hs = shape_of(orig, hn);
		bool qp = hs.nul || hs.eight_bit || hs.longest > RFC5322_LINE_MAX;
		mime_puts(&w, c.failed ? "Content-Description: Undelivered Message Headers\r\n"
		                       : "Content-Description: Message Headers\r\n");
		mime_puts(&w, "Content-Type: text/rfc822-headers\r\n");
		if (qp)
			mime_puts(&w, "Content-Transfer-Encoding: quoted-printable\r\n");
		mime_crlf(&w);
		if (qp)
			put_qp(&w, orig, hn);
		else
			put_normalized(&w, orig, hn);
	}
	mime_crlf(&w);
	mime_printf(&w, "--%s--\r\n", boundary);
	rc = w.rc;

out:
	if (rc != TERN_OK && out->len > start) {
		out->len = start;
		out->data[start] = '\0';
	}
	tbuf_free(&human);
	tbuf_free(&status);
	tbuf_free(&tmp);
	return rc;
}
