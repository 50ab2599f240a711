/*
 * ses_templates.c — SES templates in DATA/ses.db and their rendering (see
 * ses_templates.h). Owns the database handle; must never send mail nor
 * read keys.
 */
#include "store/ses_templates.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"

struct ses_templates {
	sqlite3 *db;
};

static const char schema[] = "CREATE TABLE IF NOT EXISTS templates ("
                             " name TEXT PRIMARY KEY,"
                             " subject TEXT,"
                             " text TEXT,"
                             " html TEXT,"
                             " created INTEGER NOT NULL);";

void ses_template_clear(struct ses_template *t)
{
	free(t->subject);
	free(t->text);
	free(t->html);
	t->subject = t->text = t->html = NULL;
}

int ses_templates_open(const char *path, struct ses_templates **out)
{
	*out = NULL;
	struct ses_templates *s = calloc(1, sizeof(*s));
	if (!s)
		return TERN_ENOMEM;
	if (sqlite3_open_v2(path, &s->db,
	                    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
	                    NULL) != SQLITE_OK ||
	    sqlite3_exec(s->db, schema, NULL, NULL, NULL) != SQLITE_OK) {
		ses_templates_close(s);
		return TERN_EIO;
	}
	sqlite3_busy_timeout(s->db, 5000);
	*out = s;
	return TERN_OK;
}

void ses_templates_close(struct ses_templates *s)
{
	if (!s)
		return;
	sqlite3_close(s->db);
	free(s);
}

bool ses_template_name_ok(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n > SES_TEMPLATE_NAME_MAX)
		return false;
	for (; *name; name++)
		if (!((*name >= 'a' && *name <= 'z') || (*name >= 'A' && *name <= 'Z') ||
		      (*name >= '0' && *name <= '9') || *name == '_' || *name == '-'))
			return false;
	return true;
}

static void bind_opt(sqlite3_stmt *st, int i, const char *v)
{
	if (v)
		sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, i);
}

int ses_templates_put(struct ses_templates *s, struct ses_template *t, bool replace, int64_t now)
{
	sqlite3_stmt *st = NULL;
	int rc = TERN_EIO;
	const char *sql = replace ? "UPDATE templates SET subject = ?, text = ?, html = ? "
	                            "WHERE name = ?"
	                          : "INSERT INTO templates (subject, text, html, name, created) "
	                            "VALUES (?, ?, ?, ?, ?)";
	if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
		goto out;
	bind_opt(st, 1, t->subject);
	bind_opt(st, 2, t->text);
	bind_opt(st, 3, t->html);
	sqlite3_bind_text(st, 4, t->name, -1, SQLITE_STATIC);
	if (!replace)
		sqlite3_bind_int64(st, 5, now);
	int r = sqlite3_step(st);
	if (r == SQLITE_CONSTRAINT)
		rc = TERN_EEXIST;
	else if (r == SQLITE_DONE)
		rc = replace && sqlite3_changes(s->db) == 0 ? TERN_ENOTFOUND : TERN_OK;
out:
	sqlite3_finalize(st);
	return rc;
}

static char *col_dup(sqlite3_stmt *st, int i, bool *nomem)
{
	const char *v = (const char *)sqlite3_column_text(st, i);
	char *d = v ? tern_strdup(v) : NULL;
	if (v && !d)
		*nomem = true;
	return d;
}

int ses_templates_get(struct ses_templates *s, const char *name, struct ses_template *out)
{
	sqlite3_stmt *st = NULL;
	int rc = TERN_EIO;
	memset(out, 0, sizeof(*out));
	if (sqlite3_prepare_v2(s->db,
	                       "SELECT subject, text, html, created FROM templates WHERE name = ?",
	                       -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	int r = sqlite3_step(st);
	if (r == SQLITE_DONE) {
		rc = TERN_ENOTFOUND;
	} else if (r == SQLITE_ROW) {
		bool nomem = false;
		tern_strlcpy(out->name, name, sizeof(out->name));
		out->subject = col_dup(st, 0, &nomem);
		out->text = col_dup(st, 1, &nomem);
		out->html = col_dup(st, 2, &nomem);
		out->created = sqlite3_column_int64(st, 3);
		rc = nomem ? TERN_ENOMEM : TERN_OK;
		if (nomem)
			ses_template_clear(out);
	}
out:
	sqlite3_finalize(st);
	return rc;
}

int ses_templates_del(struct ses_templates *s, const char *name)
{
	sqlite3_stmt *st = NULL;
	int rc = TERN_EIO;
	if (sqlite3_prepare_v2(s->db, "DELETE FROM templates WHERE name = ?", -1, &st, NULL) !=
	    SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_DONE)
		rc = sqlite3_changes(s->db) ? TERN_OK : TERN_ENOTFOUND;
out:
	sqlite3_finalize(st);
	return rc;
}

int ses_templates_list(struct ses_templates *s, size_t offset, size_t limit,
                       void (*fn)(const char *name, int64_t created, void *arg), void *arg,
                       bool *more)
{
	sqlite3_stmt *st = NULL;
	int rc = TERN_EIO;
	*more = false;
	if (sqlite3_prepare_v2(s->db,
	                       "SELECT name, created FROM templates ORDER BY name LIMIT ? OFFSET ?",
	                       -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)limit + 1);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)offset);
	size_t n = 0;
	int r;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		if (n == limit) {
			*more = true;
			break;
		}
		fn((const char *)sqlite3_column_text(st, 0), sqlite3_column_int64(st, 1), arg);
		n++;
	}
	if (r == SQLITE_ROW || r == SQLITE_DONE)
		rc = TERN_OK;
out:
	sqlite3_finalize(st);
	return rc;
}

/* The value of a dotted name in data, or NULL. */
static json_t *lookup(json_t *data, const char *name, size_t n)
{
	json_t *v = data;
	while (n && json_is_object(v)) {
		const char *dot = memchr(name, '.', n);
		size_t l = dot ? (size_t)(dot - name) : n;
		v = json_object_getn(v, name, l);
		if (!dot)
			return v;
		name = dot + 1;
		n -= l + 1;
	}
	return NULL;
}

static int put_value(struct tbuf *out, json_t *v, bool esc)
{
	char num[64];
	const char *s = NULL;
	size_t n = 0;
	if (json_is_string(v)) {
		s = json_string_value(v);
		n = json_string_length(v);
	} else if (json_is_integer(v)) {
		n = (size_t)snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
		s = num;
	} else if (json_is_real(v)) {
		n = (size_t)snprintf(num, sizeof(num), "%.17g", json_real_value(v));
		s = num;
	} else if (json_is_boolean(v)) {
		s = json_is_true(v) ? "true" : "false";
		n = strlen(s);
	} else {
		return TERN_OK; /* missing, null, objects and arrays: empty */
	}
	int rc = TERN_OK;
	for (size_t i = 0; i < n && rc == TERN_OK; i++) {
		const char *e = NULL;
		if (esc) /* what Handlebars escapes */
			switch (s[i]) {
			case '&':
				e = "&amp;";
				break;
			case '<':
				e = "&lt;";
				break;
			case '>':
				e = "&gt;";
				break;
			case '"':
				e = "&quot;";
				break;
			case '\'':
				e = "&#x27;";
				break;
			case '`':
				e = "&#x60;";
				break;
			case '=':
				e = "&#x3D;";
				break;
			default:
				break;
			}
		rc = e ? tbuf_append_str(out, e) : tbuf_append(out, &s[i], 1);
	}
	return rc;
}

int ses_template_render(const char *tpl, json_t *data, bool html, struct tbuf *out)
{
	const char *p = tpl;
	int rc = TERN_OK;
	while (*p && rc == TERN_OK) {
		const char *o = strstr(p, "{{");
		if (!o)
			return tbuf_append_str(out, p);
		rc = tbuf_append(out, p, (size_t)(o - p));
		if (rc != TERN_OK)
			break;
		bool triple = o[2] == '{';
		const char *b = o + (triple ? 3 : 2);
		const char *c = strstr(b, triple ? "}}}" : "}}");
		if (!c) {
			rc = tbuf_append_str(out, o);
			break;
		}
		const char *ns = b, *ne = c;
		while (ns < ne && *ns == ' ')
			ns++;
		while (ne > ns && ne[-1] == ' ')
			ne--;
		rc = put_value(out, lookup(data, ns, (size_t)(ne - ns)), html && !triple);
		p = c + (triple ? 3 : 2);
	}
	return rc;
}
