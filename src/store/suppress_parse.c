/*
 * suppress_parse.c — reads delivery status notifications (RFC 3464) and
 * abuse feedback reports (ARF, RFC 5965) far enough for the suppression
 * list (suppress.h): which recipient failed permanently, or which
 * recipient complained.
 *
 * Owns: suppress_parse_report, a pure function over (pointer, length).
 * Never: allocates, reads past len, or fails on malformed input (it finds
 * less). Lenient like the reports it reads: LF or CRLF line ends, any case
 * in field names and media types, folded fields, a missing final boundary.
 */
#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "store/suppress.h"

/* A view of bytes. */
struct span {
	const char *p;
	size_t n;
};

/* The end of the line starting at i (the index of its LF, or n). */
static size_t line_end(const char *p, size_t n, size_t i)
{
	const char *lf = memchr(p + i, '\n', n - i);
	return lf ? (size_t)(lf - p) : n;
}

/* The length of the line without its CR. */
static size_t trim_cr(const char *p, size_t start, size_t end)
{
	return end > start && p[end - 1] == '\r' ? end - 1 - start : end - start;
}

/* Splits an entity at its first empty line: header and body. */
static void split_entity(struct span e, struct span *hdr, struct span *body)
{
	size_t i = 0;
	while (i < e.n) {
		size_t end = line_end(e.p, e.n, i);
		if (trim_cr(e.p, i, end) == 0) {
			*hdr = (struct span){e.p, i};
			size_t b = end < e.n ? end + 1 : e.n;
			*body = (struct span){e.p + b, e.n - b};
			return;
		}
		i = end < e.n ? end + 1 : e.n;
	}
	*hdr = e;
	*body = (struct span){e.p + e.n, 0};
}

/*
 * The unfolded value of the first field called name in a header block,
 * into out (blanks at either end trimmed, runs of folding whitespace made
 * one space, control bytes dropped). false if absent.
 */
static bool field(struct span h, const char *name, char *out, size_t outlen)
{
	size_t nl = strlen(name);
	size_t i = 0;
	while (i < h.n) {
		size_t end = line_end(h.p, h.n, i);
		size_t len = trim_cr(h.p, i, end);
		if (len > nl && h.p[i + nl] == ':' && strncasecmp(h.p + i, name, nl) == 0) {
			size_t k = 0;
			bool space = false;
			size_t j = i + nl + 1, stop = i + len;
			for (;;) {
				for (; j < stop; j++) {
					unsigned char c = (unsigned char)h.p[j];
					if (c == ' ' || c == '\t') {
						space = k > 0;
						continue;
					}
					if (c < 0x20 || c == 0x7f)
						continue;
					if (space && k + 1 < outlen)
						out[k++] = ' ';
					space = false;
					if (k + 1 < outlen)
						out[k++] = (char)c;
				}
				/* A continuation line starts with a blank. */
				size_t next = end < h.n ? end + 1 : h.n;
				if (next >= h.n || (h.p[next] != ' ' && h.p[next] != '\t'))
					break;
				space = k > 0;
				end = line_end(h.p, h.n, next);
				j = next;
				stop = next + trim_cr(h.p, next, end);
			}
			if (outlen)
				out[k < outlen ? k : outlen - 1] = '\0';
			return true;
		}
		i = end < h.n ? end + 1 : h.n;
	}
	if (outlen)
		out[0] = '\0';
	return false;
}

/* "type/subtype" of a Content-Type value, lowercased, into out. */
static void media_type(const char *ct, char *out, size_t outlen)
{
	size_t k = 0;
	for (; *ct && *ct != ';' && *ct != ' ' && k + 1 < outlen; ct++)
		out[k++] = *ct;
	out[k] = '\0';
	tern_ascii_lower(out);
}

/* A parameter of a Content-Type value (name=value or name="value"), into
 * out; false if absent. */
static bool ct_param(const char *ct, const char *name, char *out, size_t outlen)
{
	size_t nl = strlen(name);
	for (const char *p = strchr(ct, ';'); p; p = strchr(p + 1, ';')) {
		const char *q = p + 1;
		while (*q == ' ' || *q == '\t')
			q++;
		if (strncasecmp(q, name, nl) != 0)
			continue;
		q += nl;
		while (*q == ' ')
			q++;
		if (*q != '=')
			continue;
		q++;
		while (*q == ' ')
			q++;
		size_t k = 0;
		if (*q == '"') {
			for (q++; *q && *q != '"' && k + 1 < outlen; q++) {
				if (*q == '\\' && q[1])
					q++;
				out[k++] = *q;
			}
		} else {
			for (; *q && *q != ';' && *q != ' ' && k + 1 < outlen; q++)
				out[k++] = *q;
		}
		out[k] = '\0';
		return k > 0;
	}
	return false;
}

/*
 * The addr-spec in a field value: the text between the first '<' and '>',
 * else the whole value up to a blank or ','; a "rfc822;" address type
 * prefix is dropped. "" when there is none.
 */
static void addr_of(const char *v, char *out, size_t outlen)
{
	const char *semi = strchr(v, ';');
	if (semi && (size_t)(semi - v) <= 12 && !memchr(v, '@', (size_t)(semi - v)) &&
	    !memchr(v, '<', (size_t)(semi - v)))
		v = semi + 1;
	while (*v == ' ')
		v++;
	const char *lt = strchr(v, '<');
	const char *s = v, *e;
	if (lt && (e = strchr(lt, '>'))) {
		s = lt + 1;
	} else {
		e = s;
		while (*e && *e != ' ' && *e != ',')
			e++;
	}
	size_t n = (size_t)(e - s);
	if (n >= outlen || !memchr(s, '@', n))
		n = 0;
	for (size_t i = 0; i < n; i++)
		if (s[i] == ' ' || s[i] == '<' || s[i] == '>' || s[i] == ',')
			n = 0; /* not one addr-spec: better none than a wrong one */
	memcpy(out, s, n);
	out[n] = '\0';
}

/* Reads the returned message's header (message/rfc822 or
 * text/rfc822-headers). */
static void read_original(struct span part_body, struct suppress_report *out)
{
	struct span h, b;
	split_entity(part_body, &h, &b);
	char v[1024];
	if (field(h, "Return-Path", v, sizeof(v)))
		addr_of(v, out->orig_return_path, sizeof(out->orig_return_path));
	if (field(h, "To", v, sizeof(v)))
		addr_of(v, out->orig_to, sizeof(out->orig_to));
	if (field(h, "From", v, sizeof(v)))
		addr_of(v, out->orig_from, sizeof(out->orig_from));
}

/* message/delivery-status: a per-message block, then one block per
 * recipient, separated by empty lines (RFC 3464 §2.1). */
static void read_dsn(struct span body, struct suppress_report *out)
{
	struct span rest = body;
	bool first = true;
	while (rest.n > 0 && out->n_rcpts < SUPPRESS_REPORT_RCPTS) {
		/* Skip empty lines between blocks. */
		size_t end = line_end(rest.p, rest.n, 0);
		if (trim_cr(rest.p, 0, end) == 0) {
			size_t skip = end < rest.n ? end + 1 : rest.n;
			rest = (struct span){rest.p + skip, rest.n - skip};
			continue;
		}
		struct span blk, after;
		split_entity(rest, &blk, &after);
		rest = after;
		char v[512];
		if (first && !field(blk, "Final-Recipient", v, sizeof(v))) {
			first = false;
			continue; /* the per-message fields */
		}
		first = false;
		struct suppress_report_rcpt *r = &out->rcpts[out->n_rcpts];
		memset(r, 0, sizeof(*r));
		if (field(blk, "Final-Recipient", v, sizeof(v)))
			addr_of(v, r->final_rcpt, sizeof(r->final_rcpt));
		if (!r->final_rcpt[0] && field(blk, "Original-Recipient", v, sizeof(v)))
			addr_of(v, r->final_rcpt, sizeof(r->final_rcpt));
		field(blk, "Action", r->action, sizeof(r->action));
		tern_ascii_lower(r->action);
		char *sp = strchr(r->action, ' ');
		if (sp)
			*sp = '\0';
		field(blk, "Status", r->status, sizeof(r->status));
		sp = strchr(r->status, ' ');
		if (sp)
			*sp = '\0';
		field(blk, "Diagnostic-Code", r->diagnostic, sizeof(r->diagnostic));
		if (r->final_rcpt[0] || r->status[0])
			out->n_rcpts++;
	}
}

/* message/feedback-report: one block of fields (RFC 5965 §3.5). */
static void read_arf(struct span body, struct suppress_report *out)
{
	struct span h, b;
	split_entity(body, &h, &b);
	char v[512];
	field(h, "Feedback-Type", out->feedback_type, sizeof(out->feedback_type));
	tern_ascii_lower(out->feedback_type);
	if (field(h, "Original-Rcpt-To", v, sizeof(v)))
		addr_of(v, out->original_rcpt_to, sizeof(out->original_rcpt_to));
	if (field(h, "Original-Mail-From", v, sizeof(v)))
		addr_of(v, out->original_mail_from, sizeof(out->original_mail_from));
}

/* Whether line (without CR) is "--B" or "--B--" for boundary B. */
static int boundary_line(const char *l, size_t len, const char *b, size_t bl)
{
	if (len < bl + 2 || l[0] != '-' || l[1] != '-' || memcmp(l + 2, b, bl) != 0)
		return 0;
	size_t k = bl + 2;
	if (len >= k + 2 && l[k] == '-' && l[k + 1] == '-')
		return 2; /* the closing delimiter */
	for (; k < len; k++)
		if (l[k] != ' ' && l[k] != '\t')
			return 0;
	return 1;
}

static void read_part(struct span part, struct suppress_report *out)
{
	struct span h, b;
	split_entity(part, &h, &b);
	char ct[512], mt[64];
	if (!field(h, "Content-Type", ct, sizeof(ct)))
		return;
	media_type(ct, mt, sizeof(mt));
	if (strcmp(mt, "message/delivery-status") == 0 ||
	    strcmp(mt, "message/global-delivery-status") == 0) {
		out->kind = SUPPRESS_REPORT_DSN;
		read_dsn(b, out);
	} else if (strcmp(mt, "message/feedback-report") == 0) {
		out->kind = SUPPRESS_REPORT_ARF;
		read_arf(b, out);
	} else if (strcmp(mt, "message/rfc822") == 0 || strcmp(mt, "text/rfc822-headers") == 0 ||
	           strcmp(mt, "message/global") == 0 || strcmp(mt, "message/global-headers") == 0) {
		read_original(b, out);
	}
}

void suppress_parse_report(const char *msg, size_t len, struct suppress_report *out)
{
	memset(out, 0, sizeof(*out));
	if (!msg)
		return;
	struct span h, body;
	split_entity((struct span){msg, len}, &h, &body);
	char ct[1024], mt[64], bnd[80];
	if (!field(h, "Content-Type", ct, sizeof(ct)))
		return;
	media_type(ct, mt, sizeof(mt));
	if (strcmp(mt, "multipart/report") != 0 || !ct_param(ct, "boundary", bnd, sizeof(bnd)))
		return;
	size_t bl = strlen(bnd);
	/* Walk the lines; a part runs from after one delimiter line to the
	 * line break before the next. */
	const char *part = NULL;
	size_t i = 0;
	while (i < body.n) {
		size_t end = line_end(body.p, body.n, i);
		size_t ll = trim_cr(body.p, i, end);
		int kind = boundary_line(body.p + i, ll, bnd, bl);
		if (kind) {
			if (part) {
				size_t plen = (size_t)(body.p + i - part);
				read_part((struct span){part, plen}, out);
			}
			if (kind == 2)
				return;
			part = end < body.n ? body.p + end + 1 : body.p + body.n;
		}
		i = end < body.n ? end + 1 : body.n;
	}
	if (part) /* no closing delimiter: the rest is the last part */
		read_part((struct span){part, (size_t)(body.p + body.n - part)}, out);
}

bool suppress_rcpt_is_hard(const struct suppress_report_rcpt *r)
{
	return strcmp(r->action, "failed") == 0 && r->status[0] == '5' && r->status[1] == '.';
}
