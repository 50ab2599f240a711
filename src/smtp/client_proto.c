/*
 * client_proto.c — the pure protocol pieces of the outbound SMTP client:
 * the reply parser (RFC 5321 §4.2, enhanced codes per RFC 2034/3463), the
 * EHLO capability reader (RFC 5321 §4.1.1.1, 1870 SIZE, 4954 AUTH, ...),
 * which reply codes each command can have (RFC 5321 §4.3.2), the 8-bit ->
 * 7-bit MIME downconversion of RFC 6152 §3 / RFC 1652, and the DATA text
 * encoder (CRLF line ends, dot-stuffing).
 *
 * Owns: byte-level parsing and rewriting only. Pure functions over
 * (pointer, length): no I/O, no global state, no read past in + len, and
 * the only allocation is the caller's capped output tbuf.
 * Must never: give a different reply depending on how the server's bytes
 * were split into reads; put a control byte of the server's into reply
 * text (it ends up in logs and DSNs); emit a downconverted message that
 * still holds an 8-bit byte, or one that differs at all from the input
 * when the input had no 8-bit byte; decide policy (bounce or defer is
 * the caller's call).
 */
#include "smtp/smtp.h"

#include <string.h>

#include "core/codec.h"
#include "core/err.h"

/* ================================================================ replies */

#define REPLY_LINE_MAX 1000 /* text bytes kept per line; the rest is dropped */
#define REPLY_LINES_MAX 100

_Static_assert(sizeof(((struct smtp_reply_parser *)0)->line) > REPLY_LINE_MAX + 1,
               "line buffer must hold a full line plus its CR");

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static unsigned char lower(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

void smtp_reply_init(struct smtp_reply_parser *p)
{
	memset(p, 0, sizeof(*p));
}

/*
 * Length of an RFC 3463 status code "C.SSS.DDD" at the start of s whose
 * class is cls, followed by a space or the end of s; 0 if there is none.
 */
static size_t enhanced_len(const char *s, size_t n, char cls)
{
	if (n < 5 || s[0] != cls || s[1] != '.')
		return 0;
	size_t i = 2, d = 0;
	while (i < n && is_digit((unsigned char)s[i]) && d < 3) {
		i++;
		d++;
	}
	if (d == 0 || i >= n || s[i] != '.')
		return 0;
	i++;
	d = 0;
	while (i < n && is_digit((unsigned char)s[i]) && d < 3) {
		i++;
		d++;
	}
	if (d == 0 || (i < n && s[i] != ' '))
		return 0;
	return i;
}

/* Appends one line of text, joined by "\n". Control bytes become '?' so
 * the text is a clean C string; whatever does not fit is cut off (only the
 * last line kept can be partial, see smtp_parse_ehlo). */
static void reply_append_text(struct smtp_reply *r, const char *s, size_t n)
{
	size_t have = strlen(r->text);
	if (r->n_lines > 0 && have < SMTP_REPLY_TEXT_MAX)
		r->text[have++] = '\n';
	for (size_t i = 0; i < n && have < SMTP_REPLY_TEXT_MAX; i++) {
		unsigned char c = (unsigned char)s[i];
		r->text[have++] = (c < 0x20 && c != '\t') || c == 0x7f ? '?' : (char)c;
	}
	r->text[have] = '\0';
}

/* One complete line is in p->line. */
static enum smtp_reply_status reply_end_line(struct smtp_reply_parser *p)
{
	size_t n = p->line_len;
	bool overflow = p->overflow;
	p->line_len = 0;
	p->overflow = false;
	if (!overflow && n > 0 && p->line[n - 1] == '\r')
		n--;
	if (n > REPLY_LINE_MAX)
		n = REPLY_LINE_MAX;
	const char *l = p->line;

	if (n < 3 || l[0] < '2' || l[0] > '5' || !is_digit((unsigned char)l[1]) ||
	    !is_digit((unsigned char)l[2]))
		return SMTP_REPLY_BAD;
	int code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
	bool last;
	if (n == 3 || l[3] == ' ')
		last = true;
	else if (l[3] == '-')
		last = false;
	else
		return SMTP_REPLY_BAD;
	if (p->code == 0)
		p->code = code;
	else if (code != p->code)
		return SMTP_REPLY_BAD;
	if (p->cur.n_lines >= REPLY_LINES_MAX)
		return SMTP_REPLY_BAD;

	const char *t = n > 4 ? l + 4 : l + n;
	size_t tn = n > 4 ? n - 4 : 0;
	/* Enhanced codes: RFC 2034 puts one at the start of every line; the
	 * first line's is the reply's. Only classes 2, 4 and 5 exist, and the
	 * class must agree with the reply's. */
	if (l[0] != '3' && (p->cur.n_lines == 0 || p->cur.enhanced[0])) {
		size_t el = enhanced_len(t, tn, l[0]);
		if (el) {
			if (p->cur.n_lines == 0) {
				memcpy(p->cur.enhanced, t, el);
				p->cur.enhanced[el] = '\0';
			}
			t += el;
			tn -= el;
			while (tn && *t == ' ') {
				t++;
				tn--;
			}
		}
	}
	reply_append_text(&p->cur, t, tn);
	p->cur.n_lines++;
	if (!last)
		return SMTP_REPLY_MORE;
	p->cur.code = code;
	return SMTP_REPLY_DONE;
}

enum smtp_reply_status smtp_reply_feed(struct smtp_reply_parser *p, const char *in, size_t len,
                                       size_t *consumed, struct smtp_reply *out)
{
	for (size_t i = 0; i < len; i++) {
		char c = in[i];
		if (c != '\n') {
			/* Keep one byte past the limit: it may be the CR of a line
			 * that is exactly REPLY_LINE_MAX long. */
			if (p->line_len < REPLY_LINE_MAX + 1)
				p->line[p->line_len++] = c;
			else
				p->overflow = true;
			continue;
		}
		enum smtp_reply_status st = reply_end_line(p);
		if (st == SMTP_REPLY_MORE)
			continue;
		*consumed = i + 1;
		if (st == SMTP_REPLY_DONE)
			*out = p->cur;
		/* Ready for the next (pipelined) reply either way. */
		smtp_reply_init(p);
		return st;
	}
	*consumed = len;
	return SMTP_REPLY_MORE;
}

enum smtp_reply_kind smtp_reply_judge(enum smtp_client_cmd cmd, int code)
{
	if (code >= 400 && code < 500)
		return SMTP_RK_TEMP;
	if (code >= 500 && code < 600)
		return SMTP_RK_PERM;
	bool pos = code >= 200 && code < 300;
	switch (cmd) {
	case SMTP_C_DATA:
		/* Only 354 lets the data follow (§4.3.2: "I: 354 -> data"). */
		return code == 354 ? SMTP_RK_CONTINUE : SMTP_RK_INVALID;
	case SMTP_C_STARTTLS:
		return code == 220 ? SMTP_RK_OK : SMTP_RK_INVALID;
	case SMTP_C_AUTH:
		if (code == 235)
			return SMTP_RK_OK;
		return code == 334 ? SMTP_RK_CONTINUE : SMTP_RK_INVALID;
	case SMTP_C_GREETING:
	case SMTP_C_EHLO:
	case SMTP_C_MAIL:
	case SMTP_C_RCPT:
	case SMTP_C_END_OF_DATA:
	case SMTP_C_RSET:
	case SMTP_C_QUIT:
		break;
	}
	/* Every other command succeeds with some 2xx (220, 250, 251, 252, 221)
	 * and has no intermediate reply. */
	return pos ? SMTP_RK_OK : SMTP_RK_INVALID;
}

/* =================================================================== EHLO */

static bool word_ieq(const char *s, size_t n, const char *lit)
{
	size_t ln = strlen(lit);
	if (n != ln)
		return false;
	for (size_t i = 0; i < n; i++)
		if (lower((unsigned char)s[i]) != lower((unsigned char)lit[i]))
			return false;
	return true;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t';
}

static unsigned auth_mechanism(const char *s, size_t n)
{
	static const struct {
		const char *name;
		unsigned bit;
	} mechs[] = {
	    {"PLAIN", SMTP_AUTH_PLAIN},
	    {"LOGIN", SMTP_AUTH_LOGIN},
	    {"CRAM-MD5", SMTP_AUTH_CRAM_MD5},
	    {"XOAUTH2", SMTP_AUTH_XOAUTH2},
	    {"OAUTHBEARER", SMTP_AUTH_OAUTHBEARER},
	};
	for (size_t i = 0; i < sizeof(mechs) / sizeof(mechs[0]); i++)
		if (word_ieq(s, n, mechs[i].name))
			return mechs[i].bit;
	return 0;
}

/* SIZE's optional value (RFC 1870): digits only, fits 64 bits; else 0,
 * meaning "no limit we can rely on". */
static uint64_t parse_size(const char *s, size_t n)
{
	uint64_t v = 0;
	if (n == 0)
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (!is_digit((unsigned char)s[i]))
			return 0;
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return 0;
		v = v * 10 + d;
	}
	return v;
}

static void ehlo_line(const char *s, size_t n, struct smtp_ehlo_caps *caps)
{
	while (n && is_space(*s)) {
		s++;
		n--;
	}
	while (n && is_space(s[n - 1]))
		n--;
	size_t kw = 0;
	/* '=' ends the keyword too: the pre-RFC 4954 "AUTH=PLAIN LOGIN". */
	while (kw < n && !is_space(s[kw]) && s[kw] != '=')
		kw++;
	const char *args = s + kw;
	size_t an = n - kw;
	if (an && (*args == '=' || is_space(*args))) {
		args++;
		an--;
	}
	static const struct {
		const char *name;
		size_t off;
	} flags[] = {
	    {"PIPELINING", offsetof(struct smtp_ehlo_caps, pipelining)},
	    {"8BITMIME", offsetof(struct smtp_ehlo_caps, eightbitmime)},
	    {"SMTPUTF8", offsetof(struct smtp_ehlo_caps, smtputf8)},
	    {"DSN", offsetof(struct smtp_ehlo_caps, dsn)},
	    {"CHUNKING", offsetof(struct smtp_ehlo_caps, chunking)},
	    {"BINARYMIME", offsetof(struct smtp_ehlo_caps, binarymime)},
	    {"STARTTLS", offsetof(struct smtp_ehlo_caps, starttls)},
	    {"ENHANCEDSTATUSCODES", offsetof(struct smtp_ehlo_caps, enhancedstatuscodes)},
	};
	for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
		if (word_ieq(s, kw, flags[i].name)) {
			*(bool *)((char *)caps + flags[i].off) = true;
			return;
		}
	}
	if (word_ieq(s, kw, "SIZE")) {
		while (an && is_space(*args)) {
			args++;
			an--;
		}
		caps->has_size = true;
		caps->size = parse_size(args, an);
		return;
	}
	if (word_ieq(s, kw, "AUTH")) {
		size_t i = 0;
		while (i < an) {
			while (i < an && is_space(args[i]))
				i++;
			size_t st = i;
			while (i < an && !is_space(args[i]))
				i++;
			if (i > st)
				caps->auth |= auth_mechanism(args + st, i - st);
		}
	}
	/* Anything else is a keyword we do not use. */
}

void smtp_parse_ehlo(const struct smtp_reply *r, struct smtp_ehlo_caps *caps)
{
	memset(caps, 0, sizeof(*caps));
	if (r->code != 250)
		return;
	size_t n = strnlen(r->text, sizeof(r->text));
	/* A text that filled the buffer may end in a cut line ("SIZE 10" of
	 * "SIZE 10485760"); believing it could turn into a false bounce. */
	if (n >= SMTP_REPLY_TEXT_MAX) {
		while (n && r->text[n - 1] != '\n')
			n--;
	}
	const char *s = r->text;
	size_t i = 0;
	/* The first line is the server's name and greeting. */
	while (i < n && s[i] != '\n')
		i++;
	while (i < n) {
		i++; /* the '\n' */
		size_t st = i;
		while (i < n && s[i] != '\n')
			i++;
		ehlo_line(s + st, i - st, caps);
	}
}

/* ========================================================= downconversion */

#define MIME_DEPTH_MAX 20
#define BOUNDARY_MAX 200 /* RFC 2046 says 70; be lenient, but bounded */

static bool has_8bit(const char *p, const char *end)
{
	for (; p < end; p++)
		if ((unsigned char)*p >= 0x80)
			return true;
	return false;
}

/* Strict UTF-8 (RFC 3629): no overlongs, no surrogates, <= U+10FFFF. */
static bool valid_utf8(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t len;
		unsigned char lo = 0x80, hi = 0xBF;
		if (c >= 0xC2 && c <= 0xDF) {
			len = 2;
		} else if (c >= 0xE0 && c <= 0xEF) {
			len = 3;
			if (c == 0xE0)
				lo = 0xA0;
			else if (c == 0xED)
				hi = 0x9F;
		} else if (c >= 0xF0 && c <= 0xF4) {
			len = 4;
			if (c == 0xF0)
				lo = 0x90;
			else if (c == 0xF4)
				hi = 0x8F;
		} else {
			return false;
		}
		if (n - i < len)
			return false;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (size_t k = 2; k < len; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xBF)
				return false;
		i += len;
	}
	return true;
}

/* End of the line starting at p: just past its LF, or end. */
static const char *line_next(const char *p, const char *end)
{
	const char *nl = memchr(p, '\n', (size_t)(end - p));
	return nl ? nl + 1 : end;
}

static bool line_is_blank(const char *p, const char *next)
{
	size_t n = (size_t)(next - p);
	return (n == 1 && p[0] == '\n') || (n == 2 && p[0] == '\r' && p[1] == '\n');
}

/* A field's first line: a name of printable non-space bytes, optional
 * (obsolete) whitespace, then ':'. 8-bit bytes count as name bytes here so
 * that "Subj\xc3\xa9ct: x" is seen as a (refused) 8-bit header rather than
 * the start of a body that would swallow the header fields after it. */
static bool line_is_field_start(const char *p, const char *next)
{
	const char *q = p;
	while (q < next && (unsigned char)*q > 32 && *q != 127 && *q != ':')
		q++;
	if (q == p)
		return false;
	while (q < next && is_space(*q))
		q++;
	return q < next && *q == ':';
}

/* An entity split into its header block and body. */
struct entity {
	const char *start;
	const char *hdr_end; /* end of the last header field line */
	const char *body;    /* after the blank line, if there is one */
	const char *end;
	bool has_sep; /* a blank line separated header and body */
};

static void entity_split(const char *p, const char *end, struct entity *e)
{
	e->start = p;
	e->end = end;
	e->has_sep = false;
	const char *q = p;
	while (q < end) {
		const char *next = line_next(q, end);
		if (line_is_blank(q, next)) {
			e->hdr_end = q;
			e->body = next;
			e->has_sep = true;
			return;
		}
		bool cont = is_space(*q) && q > p;
		if (!cont && !line_is_field_start(q, next))
			break; /* no header line: the body starts here */
		q = next;
	}
	e->hdr_end = q;
	e->body = q;
}

/* One header field: [start, end) including continuation lines and the
 * final line end; name is [start, name_end); value follows the colon. */
struct field {
	const char *start, *name_end, *value, *end;
};

/* Next field at q within a header block produced by entity_split(). */
static const char *field_next(const char *q, const char *hdr_end, struct field *f)
{
	f->start = q;
	const char *colon = memchr(q, ':', (size_t)(hdr_end - q));
	const char *ne = colon ? colon : q;
	while (ne > q && is_space(ne[-1]))
		ne--;
	f->name_end = ne;
	const char *next = line_next(q, hdr_end);
	f->value = colon && colon < next ? colon + 1 : next;
	while (next < hdr_end && is_space(*next))
		next = line_next(next, hdr_end);
	f->end = next;
	return next;
}

static bool field_is(const struct field *f, const char *name)
{
	return word_ieq(f->start, (size_t)(f->name_end - f->start), name);
}

/* ---- structured field values (RFC 2045 §5.1, §6.1), folding = spaces */

static bool is_wsp_fold(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static const char *skip_cfws(const char *p, const char *end)
{
	while (p < end) {
		if (is_wsp_fold(*p)) {
			p++;
		} else if (*p == '(') {
			int depth = 0;
			while (p < end) {
				if (*p == '\\' && p + 1 < end) {
					p += 2;
					continue;
				}
				if (*p == '(')
					depth++;
				else if (*p == ')' && --depth == 0) {
					p++;
					break;
				}
				p++;
			}
		} else {
			break;
		}
	}
	return p;
}

static bool is_token_char(unsigned char c)
{
	return c > 32 && c < 127 && !strchr("()<>@,;:\\\"/[]?=", c);
}

static const char *take_token(const char *p, const char *end, struct strv *tok)
{
	const char *s = p;
	while (p < end && is_token_char((unsigned char)*p))
		p++;
	*tok = strv_make(s, (size_t)(p - s));
	return p;
}

struct ctype {
	struct strv type, subtype;
	char boundary[BOUNDARY_MAX + 1];
	size_t boundary_len;
};

/* false when the value is not "type/subtype *(; param)"; parameters after
 * a malformed one are ignored, as mail readers do. */
static bool parse_ctype(const char *p, const char *end, struct ctype *ct)
{
	memset(ct, 0, sizeof(*ct));
	bool seen_boundary = false;
	p = skip_cfws(p, end);
	p = take_token(p, end, &ct->type);
	p = skip_cfws(p, end);
	if (ct->type.n == 0 || p >= end || *p != '/')
		return false;
	p = skip_cfws(p + 1, end);
	p = take_token(p, end, &ct->subtype);
	if (ct->subtype.n == 0)
		return false;
	for (;;) {
		p = skip_cfws(p, end);
		if (p >= end || *p != ';')
			break;
		p = skip_cfws(p + 1, end);
		struct strv attr;
		p = take_token(p, end, &attr);
		p = skip_cfws(p, end);
		if (attr.n == 0 || p >= end || *p != '=')
			break;
		p = skip_cfws(p + 1, end);
		char val[BOUNDARY_MAX + 1];
		size_t vn = 0;
		bool fits = true;
		if (p < end && *p == '"') {
			p++;
			while (p < end && *p != '"') {
				if (*p == '\\' && p + 1 < end)
					p++;
				if (*p != '\r' && *p != '\n') { /* unfold */
					if (vn < BOUNDARY_MAX)
						val[vn++] = *p;
					else
						fits = false;
				}
				p++;
			}
			if (p >= end)
				break; /* unterminated quoted string */
			p++;
		} else {
			struct strv v;
			p = take_token(p, end, &v);
			if (v.n == 0)
				break;
			if (v.n <= BOUNDARY_MAX) {
				memcpy(val, v.p, v.n);
				vn = v.n;
			} else {
				fits = false;
			}
		}
		/* The first boundary parameter counts. One ending in white
		 * space is not RFC 2046 syntax (bcharsnospace) and readers
		 * disagree on it (some strip it, some match it exactly), so it
		 * is not used: converting would change the structure for some. */
		if (strv_ieq(attr, STRV("boundary")) && !seen_boundary) {
			seen_boundary = true;
			if (fits && vn > 0 && !is_space(val[vn - 1])) {
				memcpy(ct->boundary, val, vn);
				ct->boundary_len = vn;
			}
		}
	}
	return true;
}

enum cte { CTE_NONE, CTE_7BIT, CTE_8BIT, CTE_BINARY, CTE_QP, CTE_BASE64, CTE_OTHER };

static enum cte parse_cte(const char *p, const char *end)
{
	struct strv t;
	p = skip_cfws(p, end);
	take_token(p, end, &t);
	if (strv_ieq(t, STRV("7bit")))
		return CTE_7BIT;
	if (strv_ieq(t, STRV("8bit")))
		return CTE_8BIT;
	if (strv_ieq(t, STRV("binary")))
		return CTE_BINARY;
	if (strv_ieq(t, STRV("quoted-printable")))
		return CTE_QP;
	if (strv_ieq(t, STRV("base64")))
		return CTE_BASE64;
	return CTE_OTHER;
}

/* What the header block says. */
struct mime_hdr {
	bool has_ct, ct_ok, has_cte, has_mime_version;
	struct ctype ct;
	enum cte cte;
};

static void read_headers(const struct entity *e, struct mime_hdr *h)
{
	memset(h, 0, sizeof(*h));
	h->cte = CTE_NONE;
	struct field f;
	for (const char *q = e->start; q < e->hdr_end; q = f.end) {
		field_next(q, e->hdr_end, &f);
		if (field_is(&f, "Content-Type") && !h->has_ct) {
			h->has_ct = true;
			h->ct_ok = parse_ctype(f.value, f.end, &h->ct);
		} else if (field_is(&f, "Content-Transfer-Encoding") && !h->has_cte) {
			h->has_cte = true;
			h->cte = parse_cte(f.value, f.end);
		} else if (field_is(&f, "MIME-Version")) {
			h->has_mime_version = true;
		}
	}
}

/* How to rewrite a header block on the way out. */
struct hdr_edit {
	const char *cte; /* new Content-Transfer-Encoding value, or NULL to keep */
	bool add_cte;    /* add the field when there is none */
	bool add_mime;   /* also add MIME-Version (unless present) and Content-Type */
	bool add_mime_version;
};

/* Emits the header block with the first CTE field replaced (later ones
 * dropped: duplicates would contradict the new value), fields added at the
 * end, then the header/body separator. */
static int emit_headers(const struct entity *e, const struct hdr_edit *ed, bool need_sep,
                        struct tbuf *out)
{
	int rc = TERN_OK;
	bool cte_done = false;
	struct field f;
	for (const char *q = e->start; q < e->hdr_end; q = f.end) {
		field_next(q, e->hdr_end, &f);
		if (ed->cte && field_is(&f, "Content-Transfer-Encoding")) {
			if (!cte_done)
				rc = tbuf_printf(out, "Content-Transfer-Encoding: %s\r\n", ed->cte);
			cte_done = true;
		} else {
			rc = tbuf_append(out, f.start, (size_t)(f.end - f.start));
		}
		if (rc != TERN_OK)
			return rc;
	}
	/* A last field without a line end (header block at end of input)
	 * needs one before anything is added after it. */
	bool adding = (ed->add_mime) || (ed->cte && ed->add_cte && !cte_done);
	if (adding && out->len && out->data[out->len - 1] != '\n' && e->hdr_end > e->start) {
		rc = tbuf_append(out, "\r\n", 2);
		if (rc != TERN_OK)
			return rc;
	}
	if (ed->add_mime) {
		if (ed->add_mime_version) {
			rc = tbuf_append_str(out, "MIME-Version: 1.0\r\n");
			if (rc != TERN_OK)
				return rc;
		}
		rc = tbuf_append_str(out, "Content-Type: text/plain; charset=utf-8\r\n");
		if (rc != TERN_OK)
			return rc;
	}
	if (ed->cte && ed->add_cte && !cte_done) {
		rc = tbuf_printf(out, "Content-Transfer-Encoding: %s\r\n", ed->cte);
		if (rc != TERN_OK)
			return rc;
	}
	if (e->has_sep)
		return tbuf_append(out, e->hdr_end, (size_t)(e->body - e->hdr_end));
	if (need_sep)
		return tbuf_append(out, "\r\n", 2);
	return TERN_OK;
}

static int convert_entity(const char *p, const char *end, int depth, bool is_message,
                          bool default_rfc822, struct tbuf *out);

/* A delimiter line for boundary b at p: "--" b ["--"] *WSP line-end.
 * Sets *close for the final one. */
static bool is_delimiter(const char *p, const char *next, const struct ctype *ct, bool *close)
{
	size_t bn = ct->boundary_len;
	if ((size_t)(next - p) < 2 + bn || p[0] != '-' || p[1] != '-' ||
	    memcmp(p + 2, ct->boundary, bn) != 0)
		return false;
	const char *q = p + 2 + bn;
	bool is_close = false;
	if (next - q >= 2 && q[0] == '-' && q[1] == '-') {
		is_close = true;
		q += 2;
	}
	while (q < next && is_space(*q))
		q++;
	if (q < next && *q == '\r')
		q++;
	if (q < next && *q == '\n')
		q++;
	if (q != next)
		return false;
	*close = is_close;
	return true;
}

/* First delimiter line starting at or after line start p; end if none. */
static const char *find_delimiter(const char *p, const char *end, const struct ctype *ct,
                                  bool *close)
{
	while (p < end) {
		const char *next = line_next(p, end);
		if (is_delimiter(p, next, ct, close))
			return p;
		p = next;
	}
	return end;
}

/* The body of a multipart (RFC 2046 §5.1.1): preamble, parts, epilogue.
 * The line end before a delimiter belongs to the delimiter, not the part. */
static int convert_multipart_body(const struct entity *e, const struct ctype *ct, int depth,
                                  struct tbuf *out)
{
	bool digest = strv_ieq(ct->subtype, STRV("digest"));
	bool close = false;
	const char *d = find_delimiter(e->body, e->end, ct, &close);
	if (d == e->end || has_8bit(e->body, d))
		return TERN_EINVAL; /* 8-bit preamble, or no parts at all */
	int rc = tbuf_append(out, e->body, (size_t)(d - e->body));
	while (rc == TERN_OK) {
		const char *dl_end = line_next(d, e->end);
		rc = tbuf_append(out, d, (size_t)(dl_end - d));
		if (rc != TERN_OK)
			break;
		if (close) {
			if (has_8bit(dl_end, e->end))
				return TERN_EINVAL;
			return tbuf_append(out, dl_end, (size_t)(e->end - dl_end));
		}
		const char *nd = find_delimiter(dl_end, e->end, ct, &close);
		const char *part_end = nd;
		if (nd < e->end && nd > dl_end && nd[-1] == '\n') {
			part_end--;
			if (part_end > dl_end && part_end[-1] == '\r')
				part_end--;
		}
		rc = convert_entity(dl_end, part_end, depth + 1, false, digest, out);
		if (rc != TERN_OK || nd == e->end)
			break; /* an unterminated multipart ends with its last part */
		rc = tbuf_append(out, part_end, (size_t)(nd - part_end));
		d = nd;
	}
	return rc;
}

/*
 * One MIME entity [p, end): headers, then a body that is walked (multipart,
 * message/rfc822), re-encoded (8-bit leaf) or copied. is_message: a whole
 * message (top level or inside message/rfc822), where a missing
 * Content-Type means "not MIME at all".
 */
static int convert_entity(const char *p, const char *end, int depth, bool is_message,
                          bool default_rfc822, struct tbuf *out)
{
	if (depth > MIME_DEPTH_MAX)
		return TERN_EINVAL;
	struct entity e;
	entity_split(p, end, &e);
	if (has_8bit(e.start, e.hdr_end))
		return TERN_EINVAL; /* needs SMTPUTF8 / RFC 2047, not ours to invent */
	struct mime_hdr h;
	read_headers(&e, &h);
	if (h.cte == CTE_BINARY)
		return TERN_EINVAL;
	if (!has_8bit(e.body, e.end))
		return tbuf_append(out, p, (size_t)(end - p));

	bool multipart = h.has_ct && h.ct_ok && strv_ieq(h.ct.type, STRV("multipart"));
	bool rfc822 = (h.has_ct && h.ct_ok && strv_ieq(h.ct.type, STRV("message")) &&
	               strv_ieq(h.ct.subtype, STRV("rfc822"))) ||
	              (!h.has_ct && default_rfc822);
	bool other_message = h.has_ct && h.ct_ok && strv_ieq(h.ct.type, STRV("message")) &&
	                     !rfc822 && !strv_ieq(h.ct.subtype, STRV("global"));
	int rc;

	if (multipart || rfc822) {
		/* Composite: only 7bit/8bit/binary are legal labels; the content
		 * becomes 7-bit, so "8bit" turns into "7bit". */
		if (h.cte != CTE_NONE && h.cte != CTE_7BIT && h.cte != CTE_8BIT)
			return TERN_EINVAL;
		if (multipart && h.ct.boundary_len == 0)
			return TERN_EINVAL;
		struct hdr_edit ed = {.cte = h.cte == CTE_8BIT ? "7bit" : NULL};
		rc = emit_headers(&e, &ed, false, out);
		if (rc != TERN_OK)
			return rc;
		if (multipart)
			return convert_multipart_body(&e, &h.ct, depth, out);
		return convert_entity(e.body, e.end, depth + 1, true, false, out);
	}
	if (other_message)
		return TERN_EINVAL; /* message/partial, external-body: 7bit only */
	if (h.cte != CTE_NONE && h.cte != CTE_7BIT && h.cte != CTE_8BIT)
		return TERN_EINVAL; /* base64/QP/unknown that holds raw 8-bit bytes */

	struct hdr_edit ed = {.cte = "quoted-printable", .add_cte = true};
	if (is_message && !h.has_ct) {
		/* Not MIME: the only honest label is UTF-8 text, and only if
		 * that is what it is. */
		if (!valid_utf8((const unsigned char *)e.body, (size_t)(e.end - e.body)))
			return TERN_EINVAL;
		ed.add_mime = true;
		ed.add_mime_version = !h.has_mime_version;
	}
	rc = emit_headers(&e, &ed, true, out);
	if (rc != TERN_OK)
		return rc;
	return tern_qp_encode(e.body, (size_t)(e.end - e.body), out);
}

int smtp_downconvert_8bit(const char *msg, size_t len, struct tbuf *out)
{
	if (len && memchr(msg, '\0', len))
		return TERN_EINVAL;
	size_t start = out->len;
	int rc;
	if (!has_8bit(msg, msg + len))
		rc = tbuf_append(out, msg, len);
	else
		rc = convert_entity(msg, msg + len, 0, true, false, out);
	if (rc != TERN_OK) {
		out->len = start;
		if (out->data)
			out->data[start] = '\0';
	}
	return rc;
}

/* ============================================================ DATA text */

/*
 * The line-end normalisation both encoders share: CRLF for every line end,
 * NUL left out, CRLF after an unterminated last line; with stuff, one more
 * "." before a line that begins with one. Returns the bytes emitted.
 */
static uint64_t encode_lines(const char *msg, size_t len, bool stuff, smtp_emit_fn emit, void *arg)
{
	uint64_t out = 0;
	size_t run = 0;         /* start of the input not emitted yet */
	bool bol = true;        /* at the beginning of a line */
	size_t bytewise_to = 0; /* the byte-wise path goes on up to here */
	for (size_t i = 0; i < len; i++) {
		char ch = msg[i];
		if (i >= bytewise_to && !(stuff && bol && ch == '.')) {
			/* The common case in bulk: up to the first LF there is no
			 * NUL and one CR, right before it. The line goes out as it
			 * is, within the run. */
			const char *lf = memchr(msg + i, '\n', len - i);
			size_t n = lf ? (size_t)(lf - (msg + i)) : 0;
			if (n && lf[-1] == '\r' &&
			    !(smtp_scan_bytes(msg + i, n - 1) & (SMTP_SCAN_CR | SMTP_SCAN_NUL))) {
				i += n; /* the loop's i++ steps past the LF */
				bol = true;
				continue;
			}
			bytewise_to = lf ? i + n + 1 : len;
		}
		if (ch == '\0') {
			/* NUL has no place in DATA text (RFC 5321 §4.5.2, RFC 6152:
			 * no NUL in 7bit or 8bit data), and a peer that drops it
			 * would read "\r\n\0.\r\n" as the end of data: it is left
			 * out, and the line keeps its start for dot-stuffing. */
			if (i > run) {
				emit(arg, msg + run, i - run);
				out += i - run;
			}
			run = i + 1;
			continue;
		}
		if (stuff && bol && ch == '.') {
			/* Stuff: emit up to the dot, one more dot; the dot itself
			 * stays in the run. */
			if (i > run) {
				emit(arg, msg + run, i - run);
				out += i - run;
			}
			emit(arg, ".", 1);
			out++;
			run = i;
		}
		bol = false;
		if (ch == '\r' && i + 1 < len && msg[i + 1] == '\n') {
			i++; /* CRLF goes out as it is, within the run */
			bol = true;
		} else if (ch == '\r' || ch == '\n') {
			/* A bare CR or LF: the run up to it, then CRLF in its place. */
			if (i > run) {
				emit(arg, msg + run, i - run);
				out += i - run;
			}
			emit(arg, "\r\n", 2);
			out += 2;
			run = i + 1;
			bol = true;
		}
	}
	if (len > run) {
		emit(arg, msg + run, len - run);
		out += len - run;
	}
	if (!bol) {
		emit(arg, "\r\n", 2);
		out += 2;
	}
	return out;
}

void smtp_data_encode(const char *msg, size_t len, smtp_emit_fn emit, void *arg)
{
	encode_lines(msg, len, true, emit, arg);
	emit(arg, ".\r\n", 3);
}

uint64_t smtp_chunk_encode(const char *msg, size_t len, smtp_emit_fn emit, void *arg)
{
	return encode_lines(msg, len, false, emit, arg);
}
