/*
 * submit_proto.c — the pure pieces of local submission (submit.h): the
 * request framing both ends speak, line-end repair, RFC 5322 address
 * lists, and the header rewrite a local message gets (Bcc removed, From:,
 * Date:, Message-ID: added when missing, recipients collected for -t).
 *
 * Owns: syntax only. Every function works on (pointer, length), never
 * reads past it, does no I/O and keeps no state; they are unit-tested
 * (tests/unit/test_sendmail.c) and fuzzed (tests/fuzz/fuzz_submit.c).
 * Must never: decide policy (who may use -f, which domains are local,
 * what a limit is): submit.c does, with the daemon's config.
 * SECURITY: the daemon runs submit_parse and submit_rewrite on bytes any
 * local user chose (over the socket or as a maildrop file).
 */
#include <stdlib.h>
#include <string.h>

#include "cli/submit.h"
#include "core/err.h"
#include "smtp/smtp.h"

/* ------------------------------------------------------------- framing */

void submit_req_free(struct submit_req *r)
{
	if (!r)
		return;
	free(r->from);
	free(r->name);
	free(r->envid);
	for (size_t i = 0; i < r->n_rcpts; i++)
		free(r->rcpts[i]);
	free(r->rcpts);
	memset(r, 0, sizeof(*r));
}

/* A byte a request line may hold: printable ASCII, SP, or UTF-8 bytes. */
static bool line_byte_ok(unsigned char c)
{
	return (c >= 0x20 && c != 0x7f);
}

static bool has_prefix(const char *p, size_t n, const char *lit)
{
	size_t l = strlen(lit);
	return n >= l && memcmp(p, lit, l) == 0;
}

static bool is_exactly(const char *p, size_t n, const char *lit)
{
	return n == strlen(lit) && memcmp(p, lit, n) == 0;
}

/* "NEVER" or a comma list of SUCCESS, FAILURE, DELAY; 0 if malformed. */
static unsigned parse_notify(const char *p, size_t n)
{
	if (is_exactly(p, n, "NEVER"))
		return SMTP_NOTIFY_NEVER;
	unsigned bits = 0;
	size_t i = 0;
	while (i <= n) {
		size_t j = i;
		while (j < n && p[j] != ',')
			j++;
		unsigned bit = is_exactly(p + i, j - i, "SUCCESS")   ? SMTP_NOTIFY_SUCCESS
		               : is_exactly(p + i, j - i, "FAILURE") ? SMTP_NOTIFY_FAILURE
		               : is_exactly(p + i, j - i, "DELAY")   ? SMTP_NOTIFY_DELAY
		                                                     : 0;
		if (!bit || (bits & bit))
			return 0;
		bits |= bit;
		i = j + 1;
	}
	return bits;
}

static int add_rcpt(struct submit_req *r, const char *p, size_t n)
{
	char *v = tern_strndup(p, n);
	if (!v)
		return TERN_ENOMEM;
	char **nv = realloc(r->rcpts, (r->n_rcpts + 1) * sizeof(*nv));
	if (!nv) {
		free(v);
		return TERN_ENOMEM;
	}
	r->rcpts = nv;
	r->rcpts[r->n_rcpts++] = v;
	return TERN_OK;
}

/* One option line (without its LF); NULL if fine, else why not. */
static const char *parse_line(const char *p, size_t n, struct submit_req *r)
{
	if (has_prefix(p, n, "FROM ")) {
		if (r->has_from)
			return "FROM given twice";
		r->has_from = true;
		r->from = tern_strndup(p + 5, n - 5);
		return r->from ? NULL : "out of memory";
	}
	if (has_prefix(p, n, "NAME ")) {
		if (r->name)
			return "NAME given twice";
		if (n - 5 == 0 || n - 5 > SUBMIT_NAME_MAX)
			return "NAME is empty or too long";
		r->name = tern_strndup(p + 5, n - 5);
		return r->name ? NULL : "out of memory";
	}
	if (has_prefix(p, n, "RCPT ")) {
		if (n - 5 == 0)
			return "RCPT is empty";
		if (r->n_rcpts >= SUBMIT_RCPTS_MAX)
			return "too many RCPT lines";
		return add_rcpt(r, p + 5, n - 5) == TERN_OK ? NULL : "out of memory";
	}
	if (is_exactly(p, n, "EXTRACT")) {
		if (r->extract)
			return "EXTRACT given twice";
		r->extract = true;
		return NULL;
	}
	if (has_prefix(p, n, "BODY ")) {
		if (r->body)
			return "BODY given twice";
		r->body = is_exactly(p + 5, n - 5, "7BIT")       ? SMTP_BODY_7BIT
		          : is_exactly(p + 5, n - 5, "8BITMIME") ? SMTP_BODY_8BITMIME
		                                                 : 0;
		return r->body ? NULL : "BODY must be 7BIT or 8BITMIME";
	}
	if (has_prefix(p, n, "RET ")) {
		if (r->ret)
			return "RET given twice";
		r->ret = is_exactly(p + 4, n - 4, "FULL")   ? SMTP_RET_FULL
		         : is_exactly(p + 4, n - 4, "HDRS") ? SMTP_RET_HDRS
		                                            : 0;
		return r->ret ? NULL : "RET must be FULL or HDRS";
	}
	if (has_prefix(p, n, "NOTIFY ")) {
		if (r->notify)
			return "NOTIFY given twice";
		r->notify = parse_notify(p + 7, n - 7);
		return r->notify ? NULL : "NOTIFY must be NEVER or a list of SUCCESS,FAILURE,DELAY";
	}
	if (has_prefix(p, n, "ENVID ")) {
		if (r->envid)
			return "ENVID given twice";
		if (n - 6 == 0 || n - 6 > SUBMIT_ENVID_MAX)
			return "ENVID is empty or too long";
		for (size_t i = 6; i < n; i++)
			if ((unsigned char)p[i] < 0x21 || (unsigned char)p[i] > 0x7e)
				return "ENVID must be printable ASCII";
		r->envid = tern_strndup(p + 6, n - 6);
		return r->envid ? NULL : "out of memory";
	}
	return "unknown request line";
}

/* Parses "DATA n" into *len; false if malformed. */
static bool parse_data_len(const char *p, size_t n, uint64_t *len)
{
	if (!has_prefix(p, n, "DATA ") || n == 5 || n - 5 > 19)
		return false;
	uint64_t v = 0;
	for (size_t i = 5; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(p[i] - '0');
	}
	if (n - 5 > 1 && p[5] == '0')
		return false; /* one spelling per number */
	*len = v;
	return true;
}

enum submit_parse_status submit_parse(const char *in, size_t len, uint64_t max_data,
                                      struct submit_req *out, size_t *consumed, const char **why)
{
	size_t pos = 0;
	enum submit_parse_status st = SUBMIT_PARSE_MORE;
	memset(out, 0, sizeof(*out));
	*consumed = 0;
	*why = NULL;
	for (bool first = true;; first = false) {
		if (pos > SUBMIT_HEAD_MAX) {
			*why = "too many request lines before DATA";
			st = SUBMIT_PARSE_ERROR;
			goto out;
		}
		size_t avail = len - pos;
		size_t scan = avail < SUBMIT_LINE_MAX ? avail : SUBMIT_LINE_MAX;
		const char *lf = memchr(in + pos, '\n', scan);
		size_t n = lf ? (size_t)(lf - (in + pos)) : scan;
		for (size_t i = 0; i < n; i++) {
			if (!line_byte_ok((unsigned char)in[pos + i])) {
				*why = "control byte in a request line";
				st = SUBMIT_PARSE_ERROR;
				goto out;
			}
		}
		if (first &&
		    memcmp(in + pos, SUBMIT_MAGIC,
		           n < sizeof(SUBMIT_MAGIC) - 1 ? n : sizeof(SUBMIT_MAGIC) - 1) != 0) {
			*why = "not a tern submission request";
			st = SUBMIT_PARSE_ERROR;
			goto out;
		}
		if (!lf) {
			if (avail >= SUBMIT_LINE_MAX) {
				*why = "request line too long";
				st = SUBMIT_PARSE_ERROR;
			}
			goto out; /* MORE */
		}
		const char *line = in + pos;
		pos += n + 1;
		if (first) {
			if (!is_exactly(line, n, SUBMIT_MAGIC)) {
				*why = "not a tern submission request";
				st = SUBMIT_PARSE_ERROR;
				goto out;
			}
			continue;
		}
		uint64_t dlen;
		if (has_prefix(line, n, "DATA ")) {
			if (!parse_data_len(line, n, &dlen)) {
				*why = "bad DATA length";
				st = SUBMIT_PARSE_ERROR;
				goto out;
			}
			if (dlen > max_data) {
				*why = "message too big";
				st = SUBMIT_PARSE_TOO_BIG;
				goto out;
			}
			/* The data, then "END\n". Only lengths are compared here. */
			if (len - pos < dlen || len - pos - dlen < 4) {
				*consumed = pos + (size_t)dlen + 4; /* what a reader needs */
				goto out;                           /* MORE */
			}
			if (memcmp(in + pos + dlen, "END\n", 4) != 0) {
				*why = "the data is not followed by END";
				st = SUBMIT_PARSE_ERROR;
				goto out;
			}
			out->data = in + pos;
			out->len = (size_t)dlen;
			*consumed = pos + (size_t)dlen + 4;
			return SUBMIT_PARSE_DONE;
		}
		const char *e = parse_line(line, n, out);
		if (e) {
			*why = e;
			st = SUBMIT_PARSE_ERROR;
			goto out;
		}
	}
out:
	submit_req_free(out);
	if (st != SUBMIT_PARSE_MORE)
		*consumed = 0;
	return st;
}

/* One "KEY value" line; false if value cannot travel in a line. */
static bool put_line(struct tbuf *b, const char *key, const char *val, int *rc)
{
	size_t n = strlen(val);
	if (strlen(key) + 1 + n + 1 > SUBMIT_LINE_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!line_byte_ok((unsigned char)val[i]))
			return false;
	if (*rc == TERN_OK)
		*rc = tbuf_printf(b, "%s %s\n", key, val);
	return true;
}

int submit_encode(const struct submit_req *r, struct tbuf *out, const char **why)
{
	static const char *const bodies[] = {"", "7BIT", "8BITMIME"};
	static const char *const rets[] = {"", "FULL", "HDRS"};
	int rc = tbuf_append_str(out, SUBMIT_MAGIC "\n");
	*why = NULL;
	if (r->has_from && !put_line(out, "FROM", r->from ? r->from : "", &rc)) {
		*why = "the sender address (-f) is too long or holds a control character";
		return TERN_EINVAL;
	}
	if (r->name && (!*r->name || strlen(r->name) > SUBMIT_NAME_MAX ||
	                !put_line(out, "NAME", r->name, &rc))) {
		*why = "the full name (-F) is empty, too long or holds a control character";
		return TERN_EINVAL;
	}
	if (r->n_rcpts > SUBMIT_RCPTS_MAX) {
		*why = "too many recipients on the command line";
		return TERN_EINVAL;
	}
	for (size_t i = 0; i < r->n_rcpts; i++) {
		if (!*r->rcpts[i] || !put_line(out, "RCPT", r->rcpts[i], &rc)) {
			*why = "a recipient is empty, too long or holds a control character";
			return TERN_EINVAL;
		}
	}
	if (r->extract && rc == TERN_OK)
		rc = tbuf_append_str(out, "EXTRACT\n");
	if (r->body > 2 || r->ret > 2) {
		*why = "bad BODY or RET value";
		return TERN_EINVAL;
	}
	if (r->body && rc == TERN_OK)
		rc = tbuf_printf(out, "BODY %s\n", bodies[r->body]);
	if (r->ret && rc == TERN_OK)
		rc = tbuf_printf(out, "RET %s\n", rets[r->ret]);
	if (r->notify && rc == TERN_OK) {
		if (r->notify & SMTP_NOTIFY_NEVER) {
			rc = tbuf_append_str(out, "NOTIFY NEVER\n");
		} else {
			const char *sep = "NOTIFY ";
			static const struct {
				unsigned bit;
				const char *word;
			} words[] = {{SMTP_NOTIFY_SUCCESS, "SUCCESS"},
			             {SMTP_NOTIFY_FAILURE, "FAILURE"},
			             {SMTP_NOTIFY_DELAY, "DELAY"}};
			for (size_t i = 0; i < 3 && rc == TERN_OK; i++) {
				if (r->notify & words[i].bit) {
					rc = tbuf_printf(out, "%s%s", sep, words[i].word);
					sep = ",";
				}
			}
			if (rc == TERN_OK)
				rc = tbuf_append_str(out, "\n");
		}
	}
	if (r->envid) {
		size_t n = strlen(r->envid);
		bool ok = n > 0 && n <= SUBMIT_ENVID_MAX;
		for (size_t i = 0; ok && i < n; i++)
			ok = (unsigned char)r->envid[i] >= 0x21 &&
			     (unsigned char)r->envid[i] <= 0x7e;
		if (!ok) {
			*why = "the envelope id (-V) must be 1 to 100 printable ASCII characters";
			return TERN_EINVAL;
		}
		if (rc == TERN_OK)
			rc = tbuf_printf(out, "ENVID %s\n", r->envid);
	}
	if (rc == TERN_OK)
		rc = tbuf_printf(out, "DATA %zu\n", r->len);
	if (rc == TERN_OK && r->len)
		rc = tbuf_append(out, r->data, r->len);
	if (rc == TERN_OK)
		rc = tbuf_append_str(out, "END\n");
	return rc;
}

/* ----------------------------------------------------------- line ends */

int submit_crlf(const char *in, size_t len, size_t max, struct tbuf *out, bool *has_nul,
                bool *has_8bit)
{
	*has_nul = false;
	*has_8bit = false;
	size_t run = 0; /* start of the bytes not yet copied */
	int rc = TERN_OK;
	for (size_t i = 0; i < len && rc == TERN_OK; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c == 0)
			*has_nul = true;
		else if (c >= 0x80)
			*has_8bit = true;
		if (c == '\r' && i + 1 < len && in[i + 1] == '\n') {
			i++; /* CRLF stays as it is */
			continue;
		}
		if (c != '\r' && c != '\n')
			continue;
		/* A bare CR or a bare LF: copy up to it, then a CRLF instead. */
		rc = tbuf_append(out, in + run, i - run);
		if (rc == TERN_OK)
			rc = tbuf_append(out, "\r\n", 2);
		run = i + 1;
	}
	if (rc == TERN_OK)
		rc = tbuf_append(out, in + run, len - run);
	/* The spool stores messages that end with a line end. */
	if (rc == TERN_OK && out->len && (out->len < 2 || out->data[out->len - 1] != '\n'))
		rc = tbuf_append(out, "\r\n", 2);
	if (rc == TERN_OK && out->len > max)
		rc = TERN_ELIMIT;
	return rc;
}

/* ---------------------------------------------------- RFC 5322 addresses */

#define ADDR_SPEC_MAX (SMTP_ADDR_MAX + 3)

enum tok {
	T_END,
	T_WORD,    /* an atom (dot-free run of atext or UTF-8) */
	T_QUOTED,  /* a quoted-string, with its quotes */
	T_LITERAL, /* a domain literal, with its brackets */
	T_SPECIAL, /* one of < > @ , : ; . */
	T_BAD,
};

struct lexer {
	const char *s;
	size_t n, pos;
	/* the current token */
	enum tok t;
	const char *p;
	size_t len;
};

static bool atext(unsigned char c)
{
	if (c >= 0x80)
		return true;
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	return c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* Skips white space, line ends and (nested) comments; false on an
 * unclosed comment. */
static bool skip_cfws(struct lexer *lx)
{
	unsigned depth = 0;
	while (lx->pos < lx->n) {
		char c = lx->s[lx->pos];
		if (depth == 0 && (c == ' ' || c == '\t' || c == '\r' || c == '\n')) {
			lx->pos++;
		} else if (c == '(') {
			if (++depth > 64)
				return false;
			lx->pos++;
		} else if (depth && c == ')') {
			depth--;
			lx->pos++;
		} else if (depth && c == '\\') {
			lx->pos += lx->pos + 1 < lx->n ? 2 : 1;
		} else if (depth) {
			lx->pos++;
		} else {
			break;
		}
	}
	return depth == 0;
}

static void next_tok(struct lexer *lx)
{
	if (!skip_cfws(lx)) {
		lx->t = T_BAD;
		return;
	}
	lx->p = lx->s + lx->pos;
	if (lx->pos >= lx->n) {
		lx->t = T_END;
		lx->len = 0;
		return;
	}
	unsigned char c = (unsigned char)lx->s[lx->pos];
	size_t start = lx->pos;
	if (c == '"' || c == '[') {
		char close = c == '"' ? '"' : ']';
		lx->pos++;
		while (lx->pos < lx->n && lx->s[lx->pos] != close) {
			if (lx->s[lx->pos] == '\\')
				lx->pos++;
			else if (c == '[' && lx->s[lx->pos] == '[')
				break;
			lx->pos++;
		}
		if (lx->pos >= lx->n || lx->s[lx->pos] != close) {
			lx->t = T_BAD;
			return;
		}
		lx->pos++;
		lx->t = c == '"' ? T_QUOTED : T_LITERAL;
	} else if (strchr("<>@,:;.", c) && c) {
		lx->pos++;
		lx->t = T_SPECIAL;
	} else if (atext(c)) {
		while (lx->pos < lx->n && atext((unsigned char)lx->s[lx->pos]))
			lx->pos++;
		lx->t = T_WORD;
	} else {
		lx->t = T_BAD;
		return;
	}
	lx->len = lx->pos - start;
}

static bool is_special(const struct lexer *lx, char c)
{
	return lx->t == T_SPECIAL && lx->p[0] == c;
}

struct spec {
	char buf[ADDR_SPEC_MAX + 1];
	size_t len;
};

static bool spec_add(struct spec *sp, const char *p, size_t n)
{
	if (n > ADDR_SPEC_MAX - sp->len)
		return false;
	memcpy(sp->buf + sp->len, p, n);
	sp->len += n;
	return true;
}

/*
 * addr-spec = local-part ["@" domain] from the current token on; the
 * domain part is optional here (a bare local part is qualified by the
 * caller). local-part = word *("." word); domain = atom *("." atom) or a
 * literal. Leaves the lexer on the token after it.
 */
static bool parse_addr_spec(struct lexer *lx, struct spec *sp)
{
	sp->len = 0;
	for (;;) {
		if (lx->t != T_WORD && lx->t != T_QUOTED)
			return false;
		if (!spec_add(sp, lx->p, lx->len))
			return false;
		next_tok(lx);
		if (!is_special(lx, '.'))
			break;
		if (!spec_add(sp, ".", 1))
			return false;
		next_tok(lx);
	}
	if (!is_special(lx, '@'))
		return true;
	if (!spec_add(sp, "@", 1))
		return false;
	next_tok(lx);
	if (lx->t == T_LITERAL) {
		if (!spec_add(sp, lx->p, lx->len))
			return false;
		next_tok(lx);
		return true;
	}
	for (;;) {
		if (lx->t != T_WORD || !spec_add(sp, lx->p, lx->len))
			return false;
		next_tok(lx);
		if (!is_special(lx, '.'))
			return true;
		if (!spec_add(sp, ".", 1))
			return false;
		next_tok(lx);
	}
}

/* "<" [obs-route] addr-spec ">", the lexer on the "<". */
static bool parse_angle(struct lexer *lx, struct spec *sp)
{
	next_tok(lx);
	/* obs-route: "@a,@b:" before the address; skipped. */
	if (is_special(lx, '@') || is_special(lx, ',')) {
		while (lx->t != T_END && lx->t != T_BAD && !is_special(lx, ':') &&
		       !is_special(lx, '>'))
			next_tok(lx);
		if (!is_special(lx, ':'))
			return false;
		next_tok(lx);
	}
	if (!parse_addr_spec(lx, sp) || !is_special(lx, '>'))
		return false;
	next_tok(lx);
	return true;
}

/*
 * One mailbox: [display-name] angle-addr, or addr-spec. A display name is
 * one or more words or quoted strings (dots allowed, as real mailers write
 * "J. Doe"). Leaves the lexer after the mailbox.
 */
static bool parse_mailbox(struct lexer *lx, struct spec *sp)
{
	if (is_special(lx, '<'))
		return parse_angle(lx, sp);
	/* Either an addr-spec or a display name before "<": try the former,
	 * and if a "<" or another word follows, it was a display name. */
	struct lexer save = *lx;
	if (parse_addr_spec(lx, sp) &&
	    (lx->t == T_END || is_special(lx, ',') || is_special(lx, ';') || lx->t == T_BAD))
		return lx->t != T_BAD;
	*lx = save;
	while (lx->t == T_WORD || lx->t == T_QUOTED || is_special(lx, '.'))
		next_tok(lx);
	if (!is_special(lx, '<'))
		return false;
	return parse_angle(lx, sp);
}

int submit_addr_list(const char *s, size_t n, int (*fn)(void *arg, const char *addr, size_t len),
                     void *arg)
{
	struct lexer lx = {.s = s, .n = n};
	struct spec sp;
	bool in_group = false;
	next_tok(&lx);
	for (;;) {
		if (lx.t == T_BAD)
			return TERN_ESYNTAX;
		if (lx.t == T_END)
			return in_group ? TERN_ESYNTAX : TERN_OK;
		if (is_special(&lx, ',')) { /* an empty list member (obs-mbox-list) */
			next_tok(&lx);
			continue;
		}
		if (in_group && is_special(&lx, ';')) {
			in_group = false;
			next_tok(&lx);
			continue;
		}
		/* A group: display-name ":" [mailbox-list] ";". Look for the
		 * ":" after a run of words. */
		if (!in_group && (lx.t == T_WORD || lx.t == T_QUOTED)) {
			struct lexer save = lx;
			while (lx.t == T_WORD || lx.t == T_QUOTED || is_special(&lx, '.'))
				next_tok(&lx);
			if (is_special(&lx, ':')) {
				in_group = true;
				next_tok(&lx);
				continue;
			}
			lx = save;
		}
		if (!parse_mailbox(&lx, &sp))
			return TERN_ESYNTAX;
		int rc = fn(arg, sp.buf, sp.len);
		if (rc != 0)
			return rc;
		if (is_special(&lx, ',')) {
			next_tok(&lx);
		} else if (in_group && is_special(&lx, ';')) {
			in_group = false;
			next_tok(&lx);
		} else if (lx.t != T_END) {
			return TERN_ESYNTAX;
		}
	}
}

/* ------------------------------------------------------ header rewrite */

/* The kinds of header fields the rewrite looks at. */
enum field {
	F_OTHER,
	F_FROM,
	F_DATE,
	F_MSGID,
	F_TO,
	F_CC,
	F_BCC,
	F_RESENT_TO,
	F_RESENT_CC,
	F_RESENT_BCC,
};

static enum field field_kind(const char *name, size_t n)
{
	static const struct {
		const char *name;
		enum field f;
	} names[] = {
	    {"from", F_FROM},
	    {"date", F_DATE},
	    {"message-id", F_MSGID},
	    {"to", F_TO},
	    {"cc", F_CC},
	    {"bcc", F_BCC},
	    {"resent-to", F_RESENT_TO},
	    {"resent-cc", F_RESENT_CC},
	    {"resent-bcc", F_RESENT_BCC},
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strv_ieq(strv_make(name, n), strv_make(names[i].name, strlen(names[i].name))))
			return names[i].f;
	return F_OTHER;
}

/* Where the CRLF-terminated line at pos ends (after its CRLF), or len. */
static size_t line_end(const char *m, size_t len, size_t pos)
{
	for (size_t i = pos; i + 1 < len; i++)
		if (m[i] == '\r' && m[i + 1] == '\n')
			return i + 2;
	return len;
}

/* The length of the field name when the line at m[0..n) starts a header
 * field ("Name:" with optional blanks before the colon), else 0. */
static size_t field_name_len(const char *m, size_t n)
{
	size_t i = 0;
	while (i < n && (unsigned char)m[i] > 32 && (unsigned char)m[i] < 127 && m[i] != ':')
		i++;
	size_t name = i;
	while (i < n && (m[i] == ' ' || m[i] == '\t'))
		i++;
	return name > 0 && i < n && m[i] == ':' ? name : 0;
}

struct field_span {
	size_t start, end; /* the whole field, continuation lines and CRLF included */
	size_t value;      /* offset of the value (after the colon) */
	enum field kind;
};

/*
 * The next header field at *pos (after the optional mbox line). Returns
 * false at the end of the header section; *body is then where the body
 * starts and *blank whether an empty line separates them.
 */
static bool next_field(const char *m, size_t len, size_t *pos, struct field_span *f, size_t *body,
                       bool *blank)
{
	size_t p = *pos;
	*blank = false;
	if (p >= len) {
		*body = len;
		return false;
	}
	size_t e = line_end(m, len, p);
	if (e - p == 2 && m[p] == '\r') {
		*body = e;
		*blank = true;
		return false;
	}
	size_t nl = field_name_len(m + p, e - p);
	if (nl == 0) {
		*body = p;
		return false;
	}
	f->start = p;
	f->kind = field_kind(m + p, nl);
	f->value = p + nl;
	while (m[f->value] != ':')
		f->value++;
	f->value++;
	while (e < len && (m[e] == ' ' || m[e] == '\t'))
		e = line_end(m, len, e);
	f->end = e;
	*pos = e;
	return true;
}

/* Appends the value of f, unfolded (CR and LF dropped), then a NUL. */
static int collect_value(struct submit_rewrite *rw, const char *m, const struct field_span *f)
{
	int rc = TERN_OK;
	size_t run = f->value;
	for (size_t i = f->value; i < f->end && rc == TERN_OK; i++) {
		if (m[i] == '\r' || m[i] == '\n') {
			rc = tbuf_append(&rw->rcpts, m + run, i - run);
			run = i + 1;
		}
	}
	if (rc == TERN_OK)
		rc = tbuf_append(&rw->rcpts, m + run, f->end - run);
	if (rc == TERN_OK)
		rc = tbuf_append(&rw->rcpts, "", 1);
	if (rc == TERN_OK)
		rw->n_lists++;
	return rc;
}

int submit_rewrite(const char *msg, size_t len, struct submit_rewrite *rw, struct tbuf *out)
{
	size_t start = 0;
	rw->n_lists = 0;
	rw->had_bcc = false;
	/* An mbox "From " envelope line is not part of the message. */
	if (len >= 5 && memcmp(msg, "From ", 5) == 0 &&
	    field_name_len(msg, line_end(msg, len, 0)) == 0)
		start = line_end(msg, len, 0);

	/* First pass: what the header section has. */
	bool seen[F_RESENT_BCC + 1] = {0};
	struct field_span f;
	size_t pos = start, body = len;
	bool blank = false;
	while (next_field(msg, len, &pos, &f, &body, &blank))
		seen[f.kind] = true;
	bool resent = seen[F_RESENT_TO] || seen[F_RESENT_CC] || seen[F_RESENT_BCC];

	/* Second pass: copy, drop Bcc, collect. */
	int rc = TERN_OK;
	pos = start;
	while (rc == TERN_OK && next_field(msg, len, &pos, &f, &body, &blank)) {
		bool wanted = resent ? (f.kind == F_RESENT_TO || f.kind == F_RESENT_CC ||
		                        f.kind == F_RESENT_BCC)
		                     : (f.kind == F_TO || f.kind == F_CC || f.kind == F_BCC);
		if (rw->collect && wanted)
			rc = collect_value(rw, msg, &f);
		if (f.kind == F_BCC || f.kind == F_RESENT_BCC) {
			rw->had_bcc = true;
			continue;
		}
		if (rc == TERN_OK)
			rc = tbuf_append(out, msg + f.start, f.end - f.start);
	}
	/* A last header line without CRLF (the message ended in it) gets one
	 * before anything is added after it. */
	if (rc == TERN_OK && out->len && out->data[out->len - 1] != '\n')
		rc = tbuf_append(out, "\r\n", 2);
	if (rc == TERN_OK && !seen[F_FROM] && rw->add_from)
		rc = tbuf_append_str(out, rw->add_from);
	if (rc == TERN_OK && !seen[F_DATE] && rw->add_date)
		rc = tbuf_append_str(out, rw->add_date);
	if (rc == TERN_OK && !seen[F_MSGID] && rw->add_message_id)
		rc = tbuf_append_str(out, rw->add_message_id);
	if (rc == TERN_OK && (blank || body < len))
		rc = tbuf_append(out, "\r\n", 2);
	if (rc == TERN_OK)
		rc = tbuf_append(out, msg + body, len - body);
	return rc;
}
