/*
 * ses_templates.h — the email templates of the SES v2 compatible API
 * (issue 12 item 3): DATA/ses.db (SQLite, table templates), and their
 * rendering ({{name}} substitution as SES's Handlebars does it).
 *
 * Thread safety: one struct ses_templates per thread.
 */
#ifndef TERN_STORE_SES_TEMPLATES_H
#define TERN_STORE_SES_TEMPLATES_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

#define SES_TEMPLATE_NAME_MAX 64

struct ses_template {
	char name[SES_TEMPLATE_NAME_MAX + 1];
	char *subject, *text, *html; /* owned; NULL when absent */
	int64_t created;
};
void ses_template_clear(struct ses_template *t);

struct ses_templates;
/* Opens (creating) path. TERN_OK or TERN_EIO. */
int ses_templates_open(const char *path, struct ses_templates **out);
void ses_templates_close(struct ses_templates *s);

/* A template name is 1-64 of [A-Za-z0-9_-], as SES allows. Pure. */
bool ses_template_name_ok(const char *name);

/* Stores t (name, subject, text, html; created set here). replace false:
 * TERN_EEXIST when the name exists; true: TERN_ENOTFOUND when it does not.
 * TERN_OK, TERN_EIO. */
int ses_templates_put(struct ses_templates *s, struct ses_template *t, bool replace, int64_t now);
/* Fills out (owned by the caller: ses_template_clear). TERN_ENOTFOUND. */
int ses_templates_get(struct ses_templates *s, const char *name, struct ses_template *out);
int ses_templates_del(struct ses_templates *s, const char *name);
/* Calls fn for up to limit templates by name from offset; *more says
 * whether others follow. */
int ses_templates_list(struct ses_templates *s, size_t offset, size_t limit,
                       void (*fn)(const char *name, int64_t created, void *arg), void *arg,
                       bool *more);

/*
 * Renders tpl (NUL-terminated) with data (a JSON object) into out:
 * {{name}} is the value of name (a.b walks into objects; a number or a
 * boolean as JSON writes it; a missing one or null renders empty, as
 * Handlebars does), HTML-escaped when html is true; {{{name}}} is never
 * escaped. An unclosed {{ is copied as it is. TERN_OK, TERN_ELIMIT
 * (out's bound), TERN_ENOMEM. Pure.
 */
int ses_template_render(const char *tpl, json_t *data, bool html, struct tbuf *out);

#endif
