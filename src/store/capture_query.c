/*
 * capture_query.c — Mailpit search syntax -> SQL WHERE clause + bound
 * parameters (see capture_query.h for the accepted syntax).
 *
 * Owns: the clause text and parameter copies in struct capture_query.
 * Must never: put a byte of user input into the SQL text (only fixed
 * fragments and "?" go there), read outside q[0..n), or depend on
 * anything but its arguments (pure: no clock, no locale, no database).
 */
#include "store/capture_query.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"

/* Recipient kinds stored in recipients.kind (shared with capture.c). */
#define K_TO "0"
#define K_CC "1"
#define K_BCC "2"
#define K_REPLYTO "3"
#define K_ENV "4"

static int add_param(struct capture_query *q, enum cq_kind kind, char *text, int64_t i)
{
	if (q->n_params == q->cap) {
		size_t nc = q->cap ? q->cap * 2 : 8;
		struct cq_param *np = realloc(q->params, nc * sizeof(*np));
		if (!np) {
			free(text);
			return TERN_ENOMEM;
		}
		q->params = np;
		q->cap = nc;
	}
	q->params[q->n_params++] = (struct cq_param){kind, text, i};
	return TERN_OK;
}

/* "%value%" with LIKE's wildcards escaped by '\' (the clauses say ESCAPE). */
static int add_like(struct capture_query *q, const char *v, size_t n)
{
	struct tbuf b = TBUF_INIT(CQ_MAX_QUERY * 2 + 8);
	int rc = tbuf_append_str(&b, "%");
	for (size_t i = 0; i < n && rc == TERN_OK; i++) {
		if (v[i] == '%' || v[i] == '_' || v[i] == '\\')
			rc = tbuf_append_str(&b, "\\");
		if (rc == TERN_OK)
			rc = tbuf_append(&b, &v[i], 1);
	}
	if (rc == TERN_OK)
		rc = tbuf_append_str(&b, "%");
	if (rc != TERN_OK) {
		tbuf_free(&b);
		return rc;
	}
	return add_param(q, CQ_TEXT, tbuf_steal(&b, NULL), 0);
}

static int add_text(struct capture_query *q, const char *v, size_t n)
{
	char *s = tern_strndup(v, n);
	if (!s)
		return TERN_ENOMEM;
	return add_param(q, CQ_TEXT, s, 0);
}

/* An FTS5 phrase query: [column : ]"word"* with embedded quotes doubled
 * (inside an FTS5 string every other byte is literal). */
static int add_fts(struct capture_query *q, const char *column, const char *v, size_t n)
{
	struct tbuf b = TBUF_INIT(CQ_MAX_QUERY * 2 + 32);
	int rc = TERN_OK;
	if (column)
		rc = tbuf_printf(&b, "%s : ", column);
	if (rc == TERN_OK)
		rc = tbuf_append_str(&b, "\"");
	for (size_t i = 0; i < n && rc == TERN_OK; i++) {
		if (v[i] == '"')
			rc = tbuf_append_str(&b, "\"");
		if (rc == TERN_OK)
			rc = tbuf_append(&b, &v[i], 1);
	}
	if (rc == TERN_OK)
		rc = tbuf_append_str(&b, "\"*");
	if (rc != TERN_OK) {
		tbuf_free(&b);
		return rc;
	}
	return add_param(q, CQ_TEXT, tbuf_steal(&b, NULL), 0);
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

static bool ieq(const char *a, size_t an, const char *lit)
{
	size_t ln = strlen(lit);
	if (an != ln)
		return false;
	for (size_t i = 0; i < an; i++) {
		char c = a[i];
		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		if (c != lit[i])
			return false;
	}
	return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
 * days_from_civil), so no timegm/TZ is involved. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

/* YYYY-MM-DD -> microseconds at 00:00 UTC. */
static int parse_date(const char *v, size_t n, int64_t *us)
{
	if (n != 10 || v[4] != '-' || v[7] != '-')
		return TERN_ESYNTAX;
	unsigned num[3] = {0, 0, 0};
	const size_t start[3] = {0, 5, 8}, len[3] = {4, 2, 2};
	for (int k = 0; k < 3; k++)
		for (size_t i = 0; i < len[k]; i++) {
			char c = v[start[k] + i];
			if (c < '0' || c > '9')
				return TERN_ESYNTAX;
			num[k] = num[k] * 10 + (unsigned)(c - '0');
		}
	static const unsigned mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	if (num[1] < 1 || num[1] > 12 || num[2] < 1 || num[2] > mdays[num[1] - 1])
		return TERN_ESYNTAX;
	*us = days_from_civil(num[0], num[1], num[2]) * 86400 * INT64_C(1000000);
	return TERN_OK;
}

/* Address fields: each matches name or address, substring, any case. */
static int recipients_clause(struct capture_query *q, const char *kinds, const char *v, size_t n)
{
	int rc = tbuf_printf(&q->where,
	                     "m.rowid IN (SELECT r.msg FROM recipients r WHERE r.kind IN (%s) AND "
	                     "(r.addr LIKE ? ESCAPE '\\' OR r.name LIKE ? ESCAPE '\\'))",
	                     kinds);
	if (rc == TERN_OK)
		rc = add_like(q, v, n);
	if (rc == TERN_OK)
		rc = add_like(q, v, n);
	return rc;
}

static bool has_word_char(const char *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)v[i];
		if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    c >= 0x80)
			return true;
	}
	return false;
}

/* One term (prefix already split off, value unquoted) -> "(...)". */
static int term_clause(struct capture_query *q, const char *key, size_t kn, const char *v, size_t n)
{
	struct tbuf *w = &q->where;
	if (!key) {
		if (has_word_char(v, n)) {
			int rc = tbuf_append_str(
			    w, "m.rowid IN (SELECT rowid FROM fts WHERE fts MATCH ?)");
			return rc == TERN_OK ? add_fts(q, NULL, v, n) : rc;
		}
		/* punctuation only: the tokenizer would drop it all; use LIKE */
		int rc = tbuf_append_str(w, "m.subject LIKE ? ESCAPE '\\'");
		return rc == TERN_OK ? add_like(q, v, n) : rc;
	}
	/* from: and to: go through the full-text index (columns sender and
	 * recipients) so they stay fast at 100,000 messages: they match whole
	 * words and word prefixes ("alice", "example.com", "bob@ex"), not
	 * arbitrary substrings. Values without letters or digits use LIKE. */
	if ((ieq(key, kn, "from") || ieq(key, kn, "to")) && has_word_char(v, n)) {
		int rc = tbuf_append_str(w, "m.rowid IN (SELECT rowid FROM fts WHERE fts MATCH ?)");
		return rc == TERN_OK
		           ? add_fts(q, ieq(key, kn, "from") ? "sender" : "recipients", v, n)
		           : rc;
	}
	if (ieq(key, kn, "from")) {
		int rc = tbuf_append_str(w, "(m.from_addr LIKE ? ESCAPE '\\' OR m.from_name LIKE ? "
		                            "ESCAPE '\\' OR m.env_from LIKE ? ESCAPE '\\')");
		for (int i = 0; i < 3 && rc == TERN_OK; i++)
			rc = add_like(q, v, n);
		return rc;
	}
	if (ieq(key, kn, "to"))
		return recipients_clause(q, K_TO "," K_CC "," K_BCC "," K_ENV, v, n);
	if (ieq(key, kn, "cc"))
		return recipients_clause(q, K_CC, v, n);
	if (ieq(key, kn, "bcc"))
		return recipients_clause(q, K_BCC, v, n);
	if (ieq(key, kn, "reply-to"))
		return recipients_clause(q, K_REPLYTO, v, n);
	if (ieq(key, kn, "addressed"))
		return recipients_clause(q, K_TO "," K_CC "," K_BCC "," K_ENV "," K_REPLYTO, v, n);
	if (ieq(key, kn, "subject")) {
		int rc = tbuf_append_str(w, "m.subject LIKE ? ESCAPE '\\'");
		return rc == TERN_OK ? add_like(q, v, n) : rc;
	}
	if (ieq(key, kn, "message-id")) {
		/* "<id>" and "id" both name the same message */
		if (n >= 2 && v[0] == '<' && v[n - 1] == '>') {
			v++;
			n -= 2;
		}
		int rc = tbuf_append_str(w, "m.message_id = ?");
		return rc == TERN_OK ? add_text(q, v, n) : rc;
	}
	if (ieq(key, kn, "tag")) {
		int rc =
		    tbuf_append_str(w, "m.rowid IN (SELECT mt.msg FROM message_tags mt JOIN tags t "
		                       "ON t.id = mt.tag WHERE t.name = ? COLLATE NOCASE)");
		return rc == TERN_OK ? add_text(q, v, n) : rc;
	}
	if (ieq(key, kn, "is")) {
		if (ieq(v, n, "read"))
			return tbuf_append_str(w, "m.read = 1");
		if (ieq(v, n, "unread"))
			return tbuf_append_str(w, "m.read = 0");
		if (ieq(v, n, "tagged"))
			return tbuf_append_str(
			    w, "EXISTS (SELECT 1 FROM message_tags mt WHERE mt.msg = m.rowid)");
		return TERN_ESYNTAX;
	}
	if (ieq(key, kn, "has")) {
		if (ieq(v, n, "attachment") || ieq(v, n, "attachments"))
			return tbuf_append_str(w, "m.attachments > 0");
		if (ieq(v, n, "inline"))
			return tbuf_append_str(w, "m.inline > 0");
		return TERN_ESYNTAX;
	}
	if (ieq(key, kn, "before") || ieq(key, kn, "after")) {
		int64_t us;
		int rc = parse_date(v, n, &us);
		if (rc != TERN_OK)
			return rc;
		rc = tbuf_append_str(w, ieq(key, kn, "before") ? "m.created < ?" : "m.created > ?");
		return rc == TERN_OK ? add_param(q, CQ_INT, NULL, us) : rc;
	}
	/* unknown prefix: the whole "key:value" is a free word */
	return term_clause(q, NULL, 0, key, (size_t)(v - key) + n);
}

void capture_query_free(struct capture_query *q)
{
	if (!q)
		return;
	tbuf_free(&q->where);
	for (size_t i = 0; i < q->n_params; i++)
		free(q->params[i].text);
	free(q->params);
	q->params = NULL;
	q->n_params = q->cap = 0;
}

int capture_query_parse(const char *q, size_t n, struct capture_query *out)
{
	memset(out, 0, sizeof(*out));
	tbuf_init(&out->where, CQ_MAX_TERMS * 512);
	int rc = TERN_OK;
	char *val = NULL;
	size_t terms = 0;
	if (n > CQ_MAX_QUERY) {
		rc = TERN_ELIMIT;
		goto out;
	}
	val = malloc(n + 1);
	if (!val) {
		rc = TERN_ENOMEM;
		goto out;
	}
	size_t i = 0;
	while (i < n) {
		while (i < n && is_blank(q[i]))
			i++;
		if (i >= n)
			break;
		bool neg = false;
		if ((q[i] == '-' || q[i] == '!') && i + 1 < n && !is_blank(q[i + 1])) {
			neg = true;
			i++;
		}
		/* collect the term with quotes removed; remember where the first
		 * unquoted ':' was, which separates a prefix from its value */
		size_t vn = 0, colon = SIZE_MAX;
		bool quoted = false, any_quote = false;
		while (i < n && (quoted || !is_blank(q[i]))) {
			char c = q[i++];
			if (c == '"') {
				quoted = !quoted;
				any_quote = true;
				continue;
			}
			if (c == ':' && !quoted && colon == SIZE_MAX && !any_quote)
				colon = vn;
			val[vn++] = c;
		}
		if (vn == 0)
			continue;
		const char *key = NULL, *v = val;
		size_t kn = 0, len = vn;
		if (colon != SIZE_MAX && colon > 0) {
			key = val;
			kn = colon;
			v = val + colon + 1;
			len = vn - colon - 1;
			if (len == 0)
				continue; /* "from:" alone: nothing to match */
		}
		if (++terms > CQ_MAX_TERMS) {
			rc = TERN_ELIMIT;
			goto out;
		}
		rc = tbuf_append_str(&out->where, out->where.len ? " AND " : "");
		if (rc == TERN_OK)
			rc = tbuf_append_str(&out->where, neg ? "NOT (" : "(");
		if (rc == TERN_OK)
			rc = term_clause(out, key, kn, v, len);
		if (rc == TERN_OK)
			rc = tbuf_append_str(&out->where, ")");
		if (rc != TERN_OK)
			goto out;
	}
	if (out->where.len == 0)
		rc = tbuf_append_str(&out->where, "1");
out:
	free(val);
	if (rc != TERN_OK) {
		capture_query_free(out);
		tbuf_init(&out->where, 0);
	}
	return rc;
}
