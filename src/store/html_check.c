/*
 * html_check.c — capture mode's HTML check: which HTML and CSS features a
 * message's HTML uses, each scored by how many email clients support it,
 * from caniemail.com's data (third_party/caniemail/, embedded at build
 * time), answered in Mailpit's HTMLCheckResponse shape and scored the way
 * Mailpit scores (per feature: the share of client versions with y / a / n;
 * overall: the largest partial and unsupported shares weighted by how many
 * of the document's nodes use the feature).
 *
 * Owns: a tolerant HTML tokenizer (tags, attributes, raw-text elements,
 * comments), a small CSS reader (declarations, rules with simple
 * selectors, at-rules), the feature table that maps what it finds to
 * caniemail slugs, and the scoring.
 * Must never: read past (html, len), trust a NUL terminator in the input,
 * allocate without bound (elements, rules and attributes are capped), or
 * fetch anything (remote stylesheets are not downloaded).
 *
 * Where this reads more simply than Mailpit (which merges <style> into
 * style attributes with a CSS inliner): a rule applies to an element when
 * the last compound of one of its selectors (tag, .class, #id) matches the
 * element; rules with pseudo-classes and rules inside at-rules apply to no
 * element (they are counted by the <style> block patterns instead).
 */
#include <ctype.h>
#include <jansson.h>
#include <pthread.h>
#include <regex.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/err.h"
#include "store/checks.h"

extern const unsigned char tern_caniemail_json[];
extern const size_t tern_caniemail_json_len;

#define ELEMENTS_MAX 20000
#define RULES_MAX 2000
#define ATTRS_MAX 64
#define STYLE_MAX (4u * 1024 * 1024)

/* ------------------------------------------------------------ the data */

static pthread_once_t data_once = PTHREAD_ONCE_INIT;
static json_t *cie;       /* the caniemail document, or NULL if it failed to load */
static json_t *platforms; /* {"platform": ["Nice family", ...]} */

static void platforms_build(void)
{
	json_t *fam = json_object_get(json_object_get(cie, "nicenames"), "family");
	platforms = json_object();
	if (!platforms)
		return;
	size_t i;
	json_t *f;
	json_array_foreach(json_object_get(cie, "data"), i, f)
	{
		const char *family;
		json_t *plats;
		json_object_foreach(json_object_get(f, "stats"), family, plats)
		{
			const char *nice = json_string_value(json_object_get(fam, family));
			if (!nice)
				nice = family;
			const char *plat;
			json_t *v;
			json_object_foreach(plats, plat, v)
			{
				json_t *list = json_object_get(platforms, plat);
				if (!list) {
					list = json_array();
					json_object_set_new(platforms, plat, list);
				}
				bool have = false;
				size_t k;
				json_t *s;
				json_array_foreach(list, k, s) if (strcmp(json_string_value(s),
				                                          nice) == 0) have = true;
				if (!have) {
					/* sorted insert */
					size_t at = 0;
					while (at < json_array_size(list) &&
					       strcmp(json_string_value(json_array_get(list, at)),
					              nice) < 0)
						at++;
					json_array_insert_new(list, at, json_string(nice));
				}
			}
		}
	}
}

/* Patterns Mailpit applies to style attributes (units) and to <style>
 * blocks (at-rules, pseudo-classes): slug, POSIX ERE, case-insensitive. */
struct pattern {
	const char *slug;
	const char *re;
	bool icase;
};

static const struct pattern unit_patterns[] = {
    {"css-unit-ch", "\\b[0-9]+ch\\b", false},     {"css-unit-initial", ":\\s?initial\\b", false},
    {"css-unit-rem", "\\b[0-9]+rem\\b", false},   {"css-unit-vh", "\\b[0-9]+vh\\b", false},
    {"css-unit-vmax", "\\b[0-9]+vmax\\b", false}, {"css-unit-vmin", "\\b[0-9]+vmin\\b", false},
    {"css-unit-vw", "\\b[0-9]+vw\\b", false},
};

static const struct pattern block_patterns[] = {
    {"css-at-font-face", "@font-face\\s*\\{", true},
    {"css-at-import", "@import\\s", true},
    {"css-at-keyframes", "@keyframes\\s", true},
    {"css-at-media", "@media\\s?\\(", true},
    {"css-at-supports", "@supports\\s?\\(", true},
    {"css-pseudo-class-active", ":active", false},
    {"css-pseudo-class-checked", ":checked", false},
    {"css-pseudo-class-first-child", ":first-child", false},
    {"css-pseudo-class-first-of-type", ":first-of-type", false},
    {"css-pseudo-class-focus", ":focus", false},
    {"css-pseudo-class-has", ":has", false},
    {"css-pseudo-class-hover", ":hover", false},
    {"css-pseudo-class-lang", ":lang\\s?\\(", false},
    {"css-pseudo-class-last-child", ":last-child", false},
    {"css-pseudo-class-last-of-type", ":last-of-type", false},
    {"css-pseudo-class-link", ":link", false},
    {"css-pseudo-class-not", ":not\\s*\\(", false},
    {"css-pseudo-class-nth-child", ":nth-child\\s*\\(", false},
    {"css-pseudo-class-nth-last-child", ":nth-last-child\\s*\\(", false},
    {"css-pseudo-class-nth-last-of-type", ":nth-last-of-type\\s*\\(", false},
    {"css-pseudo-class-nth-of-type", ":nth-of-type\\s*\\(", false},
    {"css-pseudo-class-only-child", ":only-child", false},
    {"css-pseudo-class-only-of-type", ":only-of-type", false},
    {"css-pseudo-class-target", ":target", false},
    {"css-pseudo-class-visited", ":visited", false},
    {"css-pseudo-element-after", ":after", false},
    {"css-pseudo-element-before", ":before", false},
    {"css-pseudo-element-first-letter", "::first-letter", false},
    {"css-pseudo-element-first-line", "::first-line", false},
    {"css-pseudo-element-marker", "::marker", false},
    {"css-pseudo-element-placeholder", "::placeholder", false},
};

#define N_UNIT (sizeof(unit_patterns) / sizeof(unit_patterns[0]))
#define N_BLOCK (sizeof(block_patterns) / sizeof(block_patterns[0]))
static regex_t unit_re[N_UNIT], block_re[N_BLOCK];
static bool re_ok;

static void data_load(void)
{
	json_error_t e;
	cie = json_loadb((const char *)tern_caniemail_json, tern_caniemail_json_len, 0, &e);
	if (cie)
		platforms_build();
	re_ok = true;
	for (size_t i = 0; i < N_UNIT; i++)
		if (regcomp(&unit_re[i], unit_patterns[i].re,
		            REG_EXTENDED | (unit_patterns[i].icase ? REG_ICASE : 0)) != 0)
			re_ok = false;
	for (size_t i = 0; i < N_BLOCK; i++)
		if (regcomp(&block_re[i], block_patterns[i].re,
		            REG_EXTENDED | (block_patterns[i].icase ? REG_ICASE : 0)) != 0)
			re_ok = false;
	TERN_BUG_ON(!re_ok);
}

static json_t *feature(const char *slug)
{
	size_t i;
	json_t *f;
	json_array_foreach(json_object_get(cie, "data"), i, f)
	{
		const char *s = json_string_value(json_object_get(f, "slug"));
		if (s && strcmp(s, slug) == 0)
			return f;
	}
	return NULL;
}

/* --------------------------------------------------- markdown (a little) */

/* caniemail's descriptions and notes are Markdown; Mailpit answers HTML.
 * Enough of it: &<> escaped, `code`, [text](url) links, **strong**. */
static char *md_to_html(const char *s)
{
	struct tbuf b = TBUF_INIT(1u << 20);
	bool code = false, strong = false;
	for (const char *p = s; *p; p++) {
		if (*p == '`') {
			tbuf_append_str(&b, code ? "</code>" : "<code>");
			code = !code;
		} else if (!code && p[0] == '*' && p[1] == '*') {
			tbuf_append_str(&b, strong ? "</strong>" : "<strong>");
			strong = !strong;
			p++;
		} else if (!code && *p == '[') {
			const char *close = strchr(p, ']');
			const char *end = close && close[1] == '(' ? strchr(close, ')') : NULL;
			if (!end) {
				tbuf_append(&b, p, 1);
				continue;
			}
			tbuf_append_str(&b, "<a href=\"");
			for (const char *u = close + 2; u < end; u++) {
				if (*u == '"')
					tbuf_append_str(&b, "%22");
				else if (*u == '<' || *u == '>' || *u == '&')
					tbuf_printf(&b, "%%%02X", (unsigned char)*u);
				else
					tbuf_append(&b, u, 1);
			}
			tbuf_append_str(&b, "\" target=\"_blank\">");
			for (const char *t = p + 1; t < close; t++) {
				if (*t == '<')
					tbuf_append_str(&b, "&lt;");
				else if (*t == '>')
					tbuf_append_str(&b, "&gt;");
				else if (*t == '&')
					tbuf_append_str(&b, "&amp;");
				else
					tbuf_append(&b, t, 1);
			}
			tbuf_append_str(&b, "</a>");
			p = end;
		} else if (*p == '<') {
			tbuf_append_str(&b, "&lt;");
		} else if (*p == '>') {
			tbuf_append_str(&b, "&gt;");
		} else if (*p == '&') {
			tbuf_append_str(&b, "&amp;");
		} else {
			tbuf_append(&b, p, 1);
		}
	}
	if (code)
		tbuf_append_str(&b, "</code>");
	if (strong)
		tbuf_append_str(&b, "</strong>");
	char *out = b.data ? tbuf_steal(&b, NULL) : tern_strdup("");
	tbuf_free(&b);
	return out;
}

static json_t *jstr_md(const char *s)
{
	char *h = md_to_html(s ? s : "");
	json_t *j = json_string(h ? h : "");
	free(h);
	return j;
}

/* A Warning for a caniemail feature found n times, or NULL if the data has
 * no such slug. */
static json_t *warning_new(const char *slug, int found)
{
	json_t *f = feature(slug);
	if (!f)
		return NULL;
	json_t *fam = json_object_get(json_object_get(cie, "nicenames"), "family");
	json_t *pl = json_object_get(json_object_get(cie, "nicenames"), "platform");
	json_t *w = json_object();
	json_object_set_new(w, "Slug", json_string(slug));
	json_object_set(w, "Title", json_object_get(f, "title"));
	json_object_set_new(w, "Description",
	                    jstr_md(json_string_value(json_object_get(f, "description"))));
	json_object_set(w, "URL", json_object_get(f, "url"));
	json_object_set(w, "Category", json_object_get(f, "category"));
	json_t *tags = json_object_get(f, "tags");
	json_object_set_new(w, "Tags", json_is_array(tags) ? json_deep_copy(tags) : json_array());
	const char *kw = json_string_value(json_object_get(f, "keywords"));
	json_object_set_new(w, "Keywords", json_string(kw ? kw : ""));
	json_t *notes = json_object();
	const char *nk;
	json_t *nv;
	json_object_foreach(json_object_get(f, "notes_by_num"), nk, nv)
	    json_object_set_new(notes, nk, jstr_md(json_string_value(nv)));
	json_object_set_new(w, "NotesByNumber", notes);

	json_t *results = json_array();
	double y = 0, n = 0, p = 0;
	const char *family;
	json_t *plats;
	json_object_foreach(json_object_get(f, "stats"), family, plats)
	{
		const char *plat;
		json_t *vers;
		json_object_foreach(plats, plat, vers)
		{
			const char *ver;
			json_t *sv;
			json_object_foreach(vers, ver, sv)
			{
				const char *s = json_string_value(sv);
				if (!s)
					continue;
				const char *support, *note = "";
				char num[16] = "";
				if (s[0] == 'y') {
					y++;
					support = "yes";
				} else if (s[0] == 'n') {
					n++;
					support = "no";
				} else {
					p++;
					support = "partial";
					const char *h = strrchr(s, '#');
					if (h) {
						size_t k = 0;
						for (h++; isdigit((unsigned char)*h) &&
						          k + 1 < sizeof(num);
						     h++)
							num[k++] = *h;
						num[k] = '\0';
						note = num;
					}
				}
				const char *nf = json_string_value(json_object_get(fam, family));
				const char *np = json_string_value(json_object_get(pl, plat));
				char name[256];
				snprintf(name, sizeof(name), "%s %s (%s)", nf ? nf : family,
				         np ? np : plat, ver);
				json_array_append_new(
				    results,
				    json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "Name", name,
				              "Platform", plat, "Family", family, "Version", ver,
				              "Support", support, "NoteNumber", note));
			}
		}
	}
	json_object_set_new(w, "Results", results);
	double total = y + n + p;
	if (total == 0)
		total = 1;
	json_object_set_new(w, "Score",
	                    json_pack("{s:i, s:f, s:f, s:f}", "Found", found, "Supported",
	                              y / total * 100, "Partial", p / total * 100, "Unsupported",
	                              n / total * 100));
	return w;
}

/* ------------------------------------------------------------ tokenizer */

struct attr {
	const char *name, *val;
	size_t nlen, vlen;
};

struct tag {
	char name[24]; /* lowercase, truncated */
	bool end;
	struct attr a[ATTRS_MAX];
	size_t n;
};

static const struct attr *attr_get(const struct tag *t, const char *name)
{
	size_t l = strlen(name);
	for (size_t i = 0; i < t->n; i++)
		if (t->a[i].nlen == l && strncasecmp(t->a[i].name, name, l) == 0)
			return &t->a[i];
	return NULL;
}

static bool attr_is(const struct tag *t, const char *name, const char *val)
{
	const struct attr *a = attr_get(t, name);
	return a && a->vlen == strlen(val) && strncasecmp(a->val, val, a->vlen) == 0;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

/* Case-insensitive search for needle in (p, n). */
static const char *find_ci(const char *p, size_t n, const char *needle)
{
	size_t l = strlen(needle);
	for (size_t i = 0; i + l <= n; i++)
		if (strncasecmp(p + i, needle, l) == 0)
			return p + i;
	return NULL;
}

/* Reads one tag at p (just after '<'); returns the position after '>' (or
 * end). */
static const char *tag_read(const char *p, const char *end, struct tag *t)
{
	t->n = 0;
	t->end = false;
	if (p < end && *p == '/') {
		t->end = true;
		p++;
	}
	size_t k = 0;
	while (p < end && !is_space(*p) && *p != '>' && *p != '/') {
		if (k + 1 < sizeof(t->name))
			t->name[k++] = (char)tolower((unsigned char)*p);
		p++;
	}
	t->name[k] = '\0';
	for (;;) {
		while (p < end && (is_space(*p) || *p == '/'))
			p++;
		if (p >= end)
			return end;
		if (*p == '>')
			return p + 1;
		struct attr a = {.name = p, .val = "", .vlen = 0};
		while (p < end && !is_space(*p) && *p != '>' && *p != '=' && *p != '/')
			p++;
		if (p == a.name) /* a stray '=' */
			p++;
		a.nlen = (size_t)(p - a.name);
		while (p < end && is_space(*p))
			p++;
		if (p < end && *p == '=') {
			p++;
			while (p < end && is_space(*p))
				p++;
			if (p < end && (*p == '"' || *p == '\'')) {
				char q = *p++;
				a.val = p;
				while (p < end && *p != q)
					p++;
				a.vlen = (size_t)(p - a.val);
				if (p < end)
					p++;
			} else {
				a.val = p;
				while (p < end && !is_space(*p) && *p != '>')
					p++;
				a.vlen = (size_t)(p - a.val);
			}
		}
		if (t->n < ATTRS_MAX && a.nlen)
			t->a[t->n++] = a;
	}
}

/* ----------------------------------------------------------------- CSS */

/* Inline-style features: a declaration whose property is one of props
 * (space-separated), with value val when set; or an HTML attribute in
 * attrs. Special kinds below. */
enum css_kind { CK_PROP, CK_IMPORTANT, CK_VALUE_SUBSTR, CK_CUSTOM_PROP };

struct css_feat {
	const char *slug;
	enum css_kind kind;
	const char *props; /* CK_PROP: names; CK_VALUE_SUBSTR: the substring */
	const char *val;
	const char *attrs;
};

static const struct css_feat css_feats[] = {
    {"css-accent-color", CK_PROP, "accent-color", NULL, NULL},
    {"css-align-items", CK_PROP, "align-items", NULL, NULL},
    {"css-aspect-ratio", CK_PROP, "aspect-ratio", NULL, NULL},
    {"css-background-blend-mode", CK_PROP, "background-blend-mode", NULL, NULL},
    {"css-background-clip", CK_PROP, "background-clip", NULL, NULL},
    {"css-background-color", CK_PROP, "background-color", NULL, "bgcolor"},
    {"css-background-image", CK_PROP, "background-image", NULL, NULL},
    {"css-background-origin", CK_PROP, "background-origin", NULL, NULL},
    {"css-background-position", CK_PROP, "background-position", NULL, NULL},
    {"css-background-repeat", CK_PROP, "background-repeat", NULL, NULL},
    {"css-background-size", CK_PROP, "background-size", NULL, NULL},
    {"css-background", CK_PROP, "background", NULL, "background"},
    {"css-block-inline-size", CK_PROP, "block-size", NULL, NULL},
    {"css-border-image", CK_PROP, "border-image", NULL, NULL},
    {"css-border-inline-block-individual", CK_PROP,
     "border-inline border-block border-inline-start border-inline-end border-block-start "
     "border-block-end",
     NULL, NULL},
    {"css-border-radius", CK_PROP, "border-radius", NULL, NULL},
    {"css-border", CK_PROP, "border", NULL, "border"},
    {"css-box-shadow", CK_PROP, "box-shadow", NULL, NULL},
    {"css-box-sizing", CK_PROP, "box-sizing", NULL, NULL},
    {"css-caption-side", CK_PROP, "caption-side", NULL, NULL},
    {"css-clip-path", CK_PROP, "clip-path", NULL, NULL},
    {"css-column-count", CK_PROP, "column-count", NULL, NULL},
    {"css-column-layout-properties", CK_PROP,
     "column-fill column-gap column-rule column-rule-color column-rule-style column-rule-width "
     "column-span column-width columns",
     NULL, NULL},
    {"css-conic-gradient", CK_VALUE_SUBSTR, "conic-gradient(", NULL, NULL},
    {"css-direction", CK_PROP, "direction", NULL, NULL},
    {"css-display-flex", CK_PROP, "display", "flex", NULL},
    {"css-display-grid", CK_PROP, "display", "grid", NULL},
    {"css-display-none", CK_PROP, "display", "none", NULL},
    {"css-display", CK_PROP, "display", NULL, NULL},
    {"css-filter", CK_PROP, "filter", NULL, NULL},
    {"css-flex-direction", CK_PROP, "flex-direction", NULL, NULL},
    {"css-flex-wrap", CK_PROP, "flex-wrap", NULL, NULL},
    {"css-float", CK_PROP, "float", NULL, NULL},
    {"css-font-kerning", CK_PROP, "font-kerning", NULL, NULL},
    {"css-font-weight", CK_PROP, "font-weight", NULL, NULL},
    {"css-font", CK_PROP, "font", NULL, NULL},
    {"css-gap", CK_PROP, "gap", NULL, NULL},
    {"css-grid-template", CK_PROP,
     "grid-template grid-template-areas grid-template-columns grid-template-rows", NULL, NULL},
    {"css-height", CK_PROP, "height", NULL, "height"},
    {"css-hyphens", CK_PROP, "hyphens", NULL, NULL},
    {"css-important", CK_IMPORTANT, NULL, NULL, NULL},
    {"css-inline-size", CK_PROP, "inline-size", NULL, NULL},
    {"css-intrinsic-size", CK_PROP, "contain-intrinsic-size", NULL, NULL},
    {"css-justify-content", CK_PROP, "justify-content", NULL, NULL},
    {"css-letter-spacing", CK_PROP, "letter-spacing", NULL, NULL},
    {"css-line-height", CK_PROP, "line-height", NULL, NULL},
    {"css-list-style-image", CK_PROP, "list-style-image", NULL, NULL},
    {"css-list-style-position", CK_PROP, "list-style-position", NULL, NULL},
    {"css-list-style", CK_PROP, "list-style", NULL, NULL},
    {"css-margin-block-start-end", CK_PROP, "margin-block-start margin-block-end", NULL, NULL},
    {"css-margin-inline-block", CK_PROP, "margin-inline margin-block", NULL, NULL},
    {"css-margin-inline-start-end", CK_PROP, "margin-inline-start margin-inline-end", NULL, NULL},
    {"css-margin-inline", CK_PROP, "margin-inline", NULL, NULL},
    {"css-margin", CK_PROP, "margin", NULL, NULL},
    {"css-max-block-size", CK_PROP, "max-block-size", NULL, NULL},
    {"css-max-height", CK_PROP, "max-height", NULL, NULL},
    {"css-max-width", CK_PROP, "max-width", NULL, NULL},
    {"css-min-height", CK_PROP, "min-height", NULL, NULL},
    {"css-min-inline-size", CK_PROP, "min-inline-size", NULL, NULL},
    {"css-min-width", CK_PROP, "min-width", NULL, NULL},
    {"css-mix-blend-mode", CK_PROP, "mix-blend-mode", NULL, NULL},
    {"css-object-fit", CK_PROP, "object-fit", NULL, NULL},
    {"css-object-position", CK_PROP, "object-position", NULL, NULL},
    {"css-opacity", CK_PROP, "opacity", NULL, NULL},
    {"css-outline-offset", CK_PROP, "outline-offset", NULL, NULL},
    {"css-outline", CK_PROP, "outline", NULL, NULL},
    {"css-overflow-wrap", CK_PROP, "overflow-wrap", NULL, NULL},
    {"css-overflow", CK_PROP, "overflow", NULL, NULL},
    {"css-padding-block-start-end", CK_PROP, "padding-block-start padding-block-end", NULL, NULL},
    {"css-padding-inline-block", CK_PROP, "padding-inline padding-block", NULL, NULL},
    {"css-padding-inline-start-end", CK_PROP, "padding-inline-start padding-inline-end", NULL,
     NULL},
    {"css-padding", CK_PROP, "padding", NULL, "padding"},
    {"css-position", CK_PROP, "position", NULL, NULL},
    {"css-radial-gradient", CK_VALUE_SUBSTR, "radial-gradient(", NULL, NULL},
    {"css-rgb", CK_VALUE_SUBSTR, "rgb(", NULL, NULL},
    {"css-rgba", CK_VALUE_SUBSTR, "rgba(", NULL, NULL},
    {"css-scroll-snap", CK_PROP, "scroll-snap-type scroll-snap-align scroll-snap-stop", NULL, NULL},
    {"css-tab-size", CK_PROP, "tab-size", NULL, NULL},
    {"css-table-layout", CK_PROP, "table-layout", NULL, NULL},
    {"css-text-align-last", CK_PROP, "text-align-last", NULL, NULL},
    {"css-text-align", CK_PROP, "text-align", NULL, NULL},
    {"css-text-decoration-color", CK_PROP, "text-decoration-color", NULL, NULL},
    {"css-text-decoration-thickness", CK_PROP, "text-decoration-thickness", NULL, NULL},
    {"css-text-decoration", CK_PROP, "text-decoration", NULL, NULL},
    {"css-text-emphasis-position", CK_PROP, "text-emphasis-position", NULL, NULL},
    {"css-text-emphasis", CK_PROP, "text-emphasis", NULL, NULL},
    {"css-text-indent", CK_PROP, "text-indent", NULL, NULL},
    {"css-text-overflow", CK_PROP, "text-overflow", NULL, NULL},
    {"css-text-shadow", CK_PROP, "text-shadow", NULL, NULL},
    {"css-text-transform", CK_PROP, "text-transform", NULL, NULL},
    {"css-text-underline-offset", CK_PROP, "text-underline-offset", NULL, NULL},
    {"css-transform", CK_PROP, "transform", NULL, NULL},
    {"css-unit-calc", CK_VALUE_SUBSTR, "calc(", NULL, NULL},
    {"css-variables", CK_CUSTOM_PROP, NULL, NULL, NULL},
    {"css-visibility", CK_PROP, "visibility", NULL, NULL},
    {"css-white-space", CK_PROP, "white-space", NULL, NULL},
    {"css-width", CK_PROP, "width", NULL, "width"},
    {"css-word-break", CK_PROP, "word-break", NULL, NULL},
    {"css-writing-mode", CK_PROP, "writing-mode", NULL, NULL},
    {"css-z-index", CK_PROP, "z-index", NULL, NULL},
};
#define N_CSS (sizeof(css_feats) / sizeof(css_feats[0]))

/* Whether word (wlen bytes) is one of the space-separated names in list. */
static bool in_list(const char *list, const char *w, size_t wlen)
{
	const char *p = list;
	while (*p) {
		const char *e = strchr(p, ' ');
		size_t l = e ? (size_t)(e - p) : strlen(p);
		if (l == wlen && strncasecmp(p, w, l) == 0)
			return true;
		if (!e)
			break;
		p = e + 1;
	}
	return false;
}

static void trim(const char **p, size_t *n)
{
	while (*n && is_space(**p)) {
		(*p)++;
		(*n)--;
	}
	while (*n && is_space((*p)[*n - 1]))
		(*n)--;
}

/* Marks in hit[] the features the declarations (p, n) use. */
static void decls_scan(const char *p, size_t n, bool *hit)
{
	const char *end = p + n;
	while (p < end) {
		/* one declaration: up to ';' outside parentheses and quotes */
		const char *d = p;
		int depth = 0;
		char q = 0;
		while (p < end) {
			if (q) {
				if (*p == q)
					q = 0;
			} else if (*p == '"' || *p == '\'') {
				q = *p;
			} else if (*p == '(') {
				depth++;
			} else if (*p == ')' && depth) {
				depth--;
			} else if (*p == ';' && !depth) {
				break;
			}
			p++;
		}
		const char *de = p;
		if (p < end)
			p++;
		const char *colon = memchr(d, ':', (size_t)(de - d));
		if (!colon)
			continue;
		const char *prop = d, *val = colon + 1;
		size_t plen = (size_t)(colon - d), vlen = (size_t)(de - val);
		trim(&prop, &plen);
		trim(&val, &vlen);
		if (!plen)
			continue;
		/* !important, not !important-stuff */
		bool important = false;
		const char *bang = memchr(val, '!', vlen);
		if (bang) {
			const char *b = bang + 1;
			while (b < val + vlen && is_space(*b))
				b++;
			if ((size_t)(val + vlen - b) >= 9 && strncasecmp(b, "important", 9) == 0 &&
			    (b + 9 == val + vlen ||
			     !(isalnum((unsigned char)b[9]) || b[9] == '-'))) {
				important = true;
				vlen = (size_t)(bang - val);
				trim(&val, &vlen);
			}
		}
		for (size_t i = 0; i < N_CSS; i++) {
			const struct css_feat *f = &css_feats[i];
			switch (f->kind) {
			case CK_PROP:
				if (in_list(f->props, prop, plen) &&
				    (!f->val || (vlen == strlen(f->val) &&
				                 strncasecmp(val, f->val, vlen) == 0)))
					hit[i] = true;
				break;
			case CK_IMPORTANT:
				if (important)
					hit[i] = true;
				break;
			case CK_VALUE_SUBSTR:
				if (find_ci(val, vlen, f->props)) {
					/* "rgb(" must not be the tail of "...rgb(" in another
					 * word (e.g. "srgb(") */
					const char *at = find_ci(val, vlen, f->props);
					if (at == val ||
					    !(isalnum((unsigned char)at[-1]) || at[-1] == '-'))
						hit[i] = true;
				}
				break;
			case CK_CUSTOM_PROP:
				if (plen > 2 && prop[0] == '-' && prop[1] == '-')
					hit[i] = true;
				break;
			}
		}
	}
}

/* A rule of a <style> block that applies to elements: its last compound
 * selector and its declarations. */
struct rule {
	char tag[24];
	const char *cls; /* class names required (one), id */
	size_t clen;
	const char *id;
	size_t idlen;
	const char *decl;
	size_t dlen;
};

struct el {
	char tag[24];
	const char *cls, *id, *style;
	size_t clen, idlen, slen;
	bool attr_hit[N_CSS];
};

struct scan {
	struct el *els;
	size_t n_els, cap_els;
	struct tbuf style; /* every <style> block's text */
	int nodes;
	bool full_doc; /* the HTML has </body>: Mailpit counts head elements too */
	bool seen_body_content;
	int html_counts[64];
	int scripts;
	int images[16];
	bool oom;
};

/* Whether the class attribute value (c, n) lists class name (w, wl). */
static bool has_class(const char *c, size_t n, const char *w, size_t wl)
{
	if (!c) /* no class attribute */
		return false;
	const char *end = c + n;
	while (c < end) {
		while (c < end && is_space(*c))
			c++;
		const char *s = c;
		while (c < end && !is_space(*c))
			c++;
		if ((size_t)(c - s) == wl && memcmp(s, w, wl) == 0)
			return true;
	}
	return false;
}

static bool rule_matches(const struct rule *r, const struct el *e)
{
	if (r->tag[0] && strcmp(r->tag, "*") != 0 && strcmp(r->tag, e->tag) != 0)
		return false;
	if (r->clen && !has_class(e->cls, e->clen, r->cls, r->clen))
		return false;
	if (r->idlen && !(r->idlen == e->idlen && memcmp(r->id, e->id, r->idlen) == 0))
		return false;
	return r->tag[0] || r->clen || r->idlen;
}

/* One selector (s, n) of a rule into r; false when it cannot apply to an
 * element in a mail client's inliner (pseudo-classes, attributes). */
static bool selector_read(const char *s, size_t n, struct rule *r)
{
	trim(&s, &n);
	if (!n || memchr(s, ':', n) || memchr(s, '[', n))
		return false;
	/* the last compound: after the last combinator */
	const char *c = s + n;
	while (c > s && !is_space(c[-1]) && c[-1] != '>' && c[-1] != '+' && c[-1] != '~')
		c--;
	const char *end = s + n;
	size_t k = 0;
	while (c < end && *c != '.' && *c != '#') {
		if (k + 1 < sizeof(r->tag))
			r->tag[k++] = (char)tolower((unsigned char)*c);
		c++;
	}
	r->tag[k] = '\0';
	r->clen = r->idlen = 0;
	while (c < end) {
		char kind = *c++;
		const char *w = c;
		while (c < end && *c != '.' && *c != '#')
			c++;
		if (kind == '.' && !r->clen) {
			r->cls = w;
			r->clen = (size_t)(c - w);
		} else if (kind == '#') {
			r->id = w;
			r->idlen = (size_t)(c - w);
		}
	}
	return true;
}

/* Applies the rules of the style text to the elements: each matching
 * element gets the rule's features, and unit patterns count on it. */
static void rules_apply(struct scan *sc, bool (*hits)[N_CSS], int *unit_found)
{
	const char *p = sc->style.data ? sc->style.data : "";
	const char *end = p + sc->style.len;
	size_t n_rules = 0;
	while (p < end && n_rules < RULES_MAX) {
		while (p < end && is_space(*p))
			p++;
		if (p + 1 < end && p[0] == '/' && p[1] == '*') {
			const char *e = find_ci(p + 2, (size_t)(end - p - 2), "*/");
			p = e ? e + 2 : end;
			continue;
		}
		if (p < end && (*p == '<' || *p == '-' || *p == '}')) { /* <!-- --> and strays */
			while (p < end && !is_space(*p))
				p++;
			continue;
		}
		if (p < end && *p == '@') {
			/* skip the at-rule: to ';' or its balanced block */
			int depth = 0;
			while (p < end) {
				if (*p == '{')
					depth++;
				else if (*p == '}' && --depth <= 0) {
					p++;
					break;
				} else if (*p == ';' && depth == 0) {
					p++;
					break;
				}
				p++;
			}
			continue;
		}
		const char *sel = p;
		while (p < end && *p != '{')
			p++;
		if (p >= end)
			break;
		const char *sel_end = p++;
		const char *decl = p;
		while (p < end && *p != '}')
			p++;
		size_t dlen = (size_t)(p - decl);
		if (p < end)
			p++;
		n_rules++;
		bool dhit[N_CSS] = {false};
		decls_scan(decl, dlen, dhit);
		/* each selector of the comma list */
		const char *s = sel;
		while (s < sel_end) {
			const char *comma = memchr(s, ',', (size_t)(sel_end - s));
			const char *se = comma ? comma : sel_end;
			struct rule r = {.decl = decl, .dlen = dlen};
			if (selector_read(s, (size_t)(se - s), &r)) {
				for (size_t i = 0; i < sc->n_els; i++) {
					if (!rule_matches(&r, &sc->els[i]))
						continue;
					for (size_t f = 0; f < N_CSS; f++)
						hits[i][f] |= dhit[f];
					char *d = tern_strndup(decl, dlen);
					if (d) {
						for (size_t u = 0; u < N_UNIT; u++) {
							regmatch_t m;
							int fl = 0;
							const char *q = d;
							while (*q &&
							       regexec(&unit_re[u], q, 1, &m, fl) ==
							           0 &&
							       m.rm_eo > 0) {
								unit_found[u]++;
								q += m.rm_eo;
								fl = REG_NOTBOL;
							}
						}
						free(d);
					}
				}
			}
			s = comma ? comma + 1 : sel_end;
		}
	}
}

/* ------------------------------------------------------------ HTML tests */

/* Element tests: slug and the elements (space-separated tag names) or a
 * special test. */
enum html_kind { HK_TAGS, HK_ATTR, HK_TAG_ATTR_VAL, HK_ANCHOR, HK_USEMAP };

struct html_feat {
	const char *slug;
	enum html_kind kind;
	const char *tags;
	const char *attr, *val;
};

static const struct html_feat html_feats[] = {
    {"html-object", HK_TAGS, "object embed image pdf", NULL, NULL},
    {"html-link", HK_TAGS, "link", NULL, NULL},
    {"html-hr", HK_TAGS, "hr", NULL, NULL},
    {"html-dialog", HK_TAGS, "dialog", NULL, NULL},
    {"html-srcset", HK_ATTR, NULL, "srcset", NULL},
    {"html-picture", HK_TAGS, "picture", NULL, NULL},
    {"html-svg", HK_TAGS, "svg", NULL, NULL},
    {"html-progress", HK_TAGS, "progress", NULL, NULL},
    {"html-required", HK_ATTR, NULL, "required", NULL},
    {"html-meter", HK_TAGS, "meter", NULL, NULL},
    {"html-audio", HK_TAGS, "audio", NULL, NULL},
    {"html-form", HK_TAGS, "form", NULL, NULL},
    {"html-input-submit", HK_TAG_ATTR_VAL, "input", "type", "submit"},
    {"html-button-reset", HK_TAG_ATTR_VAL, "button", "type", "reset"},
    {"html-button-submit", HK_TAG_ATTR_VAL, "button", "type", "submit"},
    {"html-base", HK_TAGS, "base", NULL, NULL},
    {"html-input-checkbox", HK_TAG_ATTR_VAL, "input", "type", "checkbox"},
    {"html-input-hidden", HK_TAG_ATTR_VAL, NULL, "type", "hidden"},
    {"html-input-radio", HK_TAG_ATTR_VAL, "input", "type", "radio"},
    {"html-input-text", HK_TAG_ATTR_VAL, "input", "type", "text"},
    {"html-video", HK_TAGS, "video", NULL, NULL},
    {"html-semantics", HK_TAGS,
     "article aside details figcaption figure footer header main mark nav section summary time",
     NULL, NULL},
    {"html-select", HK_TAGS, "select", NULL, NULL},
    {"html-textarea", HK_TAGS, "textarea", NULL, NULL},
    {"html-anchor-links", HK_ANCHOR, "a", "href", NULL},
    {"html-style", HK_TAGS, "style", NULL, NULL},
    {"html-image-maps", HK_TAGS, "map", NULL, NULL},
    {"html-image-maps", HK_USEMAP, "img", "usemap", NULL},
};
#define N_HTML (sizeof(html_feats) / sizeof(html_feats[0]))

/* Image formats by the end of img src (case-insensitive), or a data: URI. */
static const struct {
	const char *slug;
	const char *suffix; /* NULL: data:image/ prefix */
	const char *suffix2;
} image_feats[] = {
    {"image-apng", ".apng", NULL}, {"image-avif", ".avif", NULL}, {"image-base64", NULL, NULL},
    {"image-bmp", ".bmp", NULL},   {"image-gif", ".gif", NULL},   {"image-hdr", ".hdr", NULL},
    {"image-heif", ".heif", NULL}, {"image-ico", ".ico", NULL},   {"image-mp4", ".mp4", NULL},
    {"image-ppm", ".ppm", NULL},   {"image-svg", ".svg", NULL},   {"image-tiff", ".tif", ".tiff"},
    {"image-webp", ".webp", NULL},
};
#define N_IMAGE (sizeof(image_feats) / sizeof(image_feats[0]))

static bool ends_ci(const char *s, size_t n, const char *suf)
{
	size_t l = strlen(suf);
	return n >= l && strncasecmp(s + n - l, suf, l) == 0;
}

static void on_tag(struct scan *sc, const struct tag *t)
{
	if (!t->name[0] || t->end)
		return;
	const char *nm = t->name;
	/* Nodes, as Mailpit counts them (see html_check) */
	bool head_only = strcmp(nm, "title") == 0 || strcmp(nm, "style") == 0 ||
	                 strcmp(nm, "link") == 0 || strcmp(nm, "base") == 0;
	if (strcmp(nm, "html") != 0 && strcmp(nm, "head") != 0 && strcmp(nm, "meta") != 0) {
		/* a fragment: what a parser puts in <head> (before any body
		 * content) and body itself are not nodes of "body *" */
		if (sc->full_doc ||
		    (strcmp(nm, "body") != 0 && (!head_only || sc->seen_body_content)))
			sc->nodes++;
		if (!head_only && strcmp(nm, "body") != 0)
			sc->seen_body_content = true;
	}
	for (size_t i = 0; i < N_HTML; i++) {
		const struct html_feat *f = &html_feats[i];
		bool tag_ok = !f->tags || in_list(f->tags, nm, strlen(nm));
		bool hit = false;
		switch (f->kind) {
		case HK_TAGS:
			hit = tag_ok;
			break;
		case HK_ATTR:
			hit = attr_get(t, f->attr) != NULL;
			break;
		case HK_TAG_ATTR_VAL:
			hit = tag_ok && attr_is(t, f->attr, f->val);
			break;
		case HK_ANCHOR: {
			const struct attr *a = tag_ok ? attr_get(t, "href") : NULL;
			hit = a && a->vlen && a->val[0] == '#';
			break;
		}
		case HK_USEMAP:
			hit = tag_ok && attr_get(t, f->attr);
			break;
		}
		if (hit && i < 64)
			sc->html_counts[i]++;
	}
	if (strcmp(nm, "script") == 0 && !attr_is(t, "type", "application/ld+json") &&
	    !attr_is(t, "type", "application/json"))
		sc->scripts++;
	const struct attr *src = strcmp(nm, "img") == 0 ? attr_get(t, "src") : NULL;
	if (src) {
		for (size_t i = 0; i < N_IMAGE; i++) {
			bool m =
			    image_feats[i].suffix
			        ? ends_ci(src->val, src->vlen, image_feats[i].suffix) ||
			              (image_feats[i].suffix2 &&
			               ends_ci(src->val, src->vlen, image_feats[i].suffix2))
			        : src->vlen >= 11 && strncasecmp(src->val, "data:image/", 11) == 0;
			if (m)
				sc->images[i]++;
		}
	}
	/* the element, for CSS */
	if (sc->n_els == ELEMENTS_MAX)
		return;
	if (sc->n_els == sc->cap_els) {
		size_t nc = sc->cap_els ? sc->cap_els * 2 : 64;
		struct el *ne = realloc(sc->els, nc * sizeof(*ne));
		if (!ne) {
			sc->oom = true;
			return;
		}
		sc->els = ne;
		sc->cap_els = nc;
	}
	struct el *e = &sc->els[sc->n_els++];
	memset(e, 0, sizeof(*e));
	tern_strlcpy(e->tag, nm, sizeof(e->tag));
	const struct attr *a;
	if ((a = attr_get(t, "class"))) {
		e->cls = a->val;
		e->clen = a->vlen;
	}
	if ((a = attr_get(t, "id"))) {
		e->id = a->val;
		e->idlen = a->vlen;
	}
	if ((a = attr_get(t, "style"))) {
		e->style = a->val;
		e->slen = a->vlen;
	}
	for (size_t i = 0; i < N_CSS; i++)
		for (size_t k = 0; css_feats[i].attrs && k < t->n; k++)
			if (in_list(css_feats[i].attrs, t->a[k].name, t->a[k].nlen))
				e->attr_hit[i] = true;
}

static void html_scan(struct scan *sc, const char *p, size_t len)
{
	const char *end = p + len;
	struct tag *t = malloc(sizeof(*t));
	if (!t) {
		sc->oom = true;
		return;
	}
	while (p < end) {
		const char *lt = memchr(p, '<', (size_t)(end - p));
		if (!lt)
			break;
		p = lt + 1;
		if (p >= end)
			break;
		if (end - p >= 3 && p[0] == '!' && p[1] == '-' && p[2] == '-') {
			const char *e = find_ci(p + 3, (size_t)(end - p - 3), "-->");
			p = e ? e + 3 : end;
			continue;
		}
		if (*p == '!' || *p == '?') {
			const char *e = memchr(p, '>', (size_t)(end - p));
			p = e ? e + 1 : end;
			continue;
		}
		if (!(isalpha((unsigned char)*p) || *p == '/'))
			continue; /* "a < b" in text */
		p = tag_read(p, end, t);
		on_tag(sc, t);
		if (t->end)
			continue;
		/* raw text: everything to the end tag is not markup */
		const char *nm = t->name;
		if (strcmp(nm, "style") == 0 || strcmp(nm, "script") == 0 ||
		    strcmp(nm, "textarea") == 0 || strcmp(nm, "title") == 0 ||
		    strcmp(nm, "xmp") == 0) {
			char close[32];
			snprintf(close, sizeof(close), "</%s", nm);
			const char *e = find_ci(p, (size_t)(end - p), close);
			const char *ce = e ? e : end;
			if (strcmp(nm, "style") == 0 &&
			    sc->style.len + (size_t)(ce - p) < STYLE_MAX) {
				if (tbuf_append(&sc->style, p, (size_t)(ce - p)) != TERN_OK ||
				    tbuf_append(&sc->style, "\n", 1) != TERN_OK)
					sc->oom = true;
			}
			p = ce;
		}
	}
	free(t);
}

/* Counts regex matches in the NUL-terminated s. */
static int re_count(const regex_t *re, const char *s)
{
	int n = 0, fl = 0;
	regmatch_t m;
	while (*s && regexec(re, s, 1, &m, fl) == 0) {
		n++;
		s += m.rm_eo > 0 ? m.rm_eo : 1;
		fl = REG_NOTBOL;
	}
	return n;
}

struct found {
	json_t *w;
	double weight;
	size_t order;
};

static int found_cmp(const void *a, const void *b)
{
	const struct found *x = a, *y = b;
	if (x->weight != y->weight)
		return x->weight < y->weight ? 1 : -1;
	return x->order < y->order ? -1 : x->order > y->order;
}

json_t *html_check(const char *html, size_t len)
{
	pthread_once(&data_once, data_load);
	struct scan sc = {.style = TBUF_INIT(STYLE_MAX + 2)};
	struct found *fnd = NULL;
	size_t n_fnd = 0, cap_fnd = 0;
	bool(*hits)[N_CSS] = NULL;
	json_t *res = NULL;
	if (!cie)
		goto out;

	sc.full_doc = find_ci(html, len, "</body>") != NULL;
	html_scan(&sc, html, len);
	if (sc.oom)
		goto out;
	int tests = 0;

	/* per-element CSS features: own attributes, style attribute, rules */
	hits = calloc(sc.n_els ? sc.n_els : 1, sizeof(*hits));
	int unit_found[N_UNIT] = {0};
	if (!hits)
		goto out;
	for (size_t i = 0; i < sc.n_els; i++) {
		memcpy(hits[i], sc.els[i].attr_hit, sizeof(hits[i]));
		if (sc.els[i].slen) {
			decls_scan(sc.els[i].style, sc.els[i].slen, hits[i]);
			char *s = tern_strndup(sc.els[i].style, sc.els[i].slen);
			if (!s)
				goto out;
			for (size_t u = 0; u < N_UNIT; u++)
				unit_found[u] += re_count(&unit_re[u], s);
			free(s);
		}
	}
	rules_apply(&sc, hits, unit_found);

	/* collect (slug, count) */
	struct {
		const char *slug;
		int n;
	} got[N_HTML + N_IMAGE + N_CSS + N_UNIT + N_BLOCK + 2];
	size_t n_got = 0;

	/* HTML: Mailpit counts each element test once, and once more when
	 * found; the script and body tests are its own. */
	if (sc.scripts)
		tests++;
	if (sc.full_doc) {
		got[n_got].slug = "html-body";
		got[n_got++].n = 1;
	}
	tests++; /* html-body */
	for (size_t i = 0; i < N_HTML; i++) {
		bool dup =
		    i + 1 < N_HTML && strcmp(html_feats[i + 1].slug, html_feats[i].slug) == 0;
		if (dup) /* merged into the next entry of the same slug */
			continue;
		int n = sc.html_counts[i];
		if (i > 0 && strcmp(html_feats[i - 1].slug, html_feats[i].slug) == 0)
			n += sc.html_counts[i - 1];
		tests++;
		if (n) {
			tests++;
			got[n_got].slug = html_feats[i].slug;
			got[n_got++].n = n;
		}
	}
	tests += (int)N_IMAGE;
	for (size_t i = 0; i < N_IMAGE; i++)
		if (sc.images[i]) {
			got[n_got].slug = image_feats[i].slug;
			got[n_got++].n = sc.images[i];
		}
	for (size_t f = 0; f < N_CSS; f++) {
		int n = 0;
		for (size_t i = 0; i < sc.n_els; i++)
			n += hits[i][f];
		tests++;
		if (n) {
			got[n_got].slug = css_feats[f].slug;
			got[n_got++].n = n;
		}
	}
	for (size_t u = 0; u < N_UNIT; u++) {
		tests++;
		if (unit_found[u]) {
			got[n_got].slug = unit_patterns[u].slug;
			got[n_got++].n = unit_found[u];
		}
	}
	for (size_t b = 0; b < N_BLOCK; b++) {
		tests++;
		int n = sc.style.len ? re_count(&block_re[b], sc.style.data) : 0;
		if (n) {
			got[n_got].slug = block_patterns[b].slug;
			got[n_got++].n = n;
		}
	}

	int nodes = sc.nodes;
	double dn = nodes > 0 ? nodes : 1;
	res = json_object();
	json_t *warnings = json_array();
	if (!res || !warnings) {
		json_decref(warnings);
		goto out;
	}
	json_object_set_new(res, "Warnings", warnings);
	if (sc.scripts) {
		json_t *w = json_pack(
		    "{s:s, s:s, s:s, s:s, s:s, s:[], s:s, s:[], s:{}, s:{s:i, s:f, s:f, s:f}}",
		    "Slug", "html-script", "Title", "<script> element", "Description",
		    "JavaScript is not supported in any email client.", "URL", "", "Category",
		    "html", "Tags", "Keywords", "", "Results", "NotesByNumber", "Score", "Found",
		    sc.scripts, "Supported", 0.0, "Partial", 0.0, "Unsupported", 100.0);
		if (w) {
			fnd = calloc(1, sizeof(*fnd));
			if (!fnd) {
				json_decref(w);
				goto fail;
			}
			cap_fnd = 1;
			fnd[n_fnd++] = (struct found){w, 100.0 * sc.scripts / dn, 0};
		}
	}
	for (size_t i = 0; i < n_got; i++) {
		json_t *w = warning_new(got[i].slug, got[i].n);
		if (!w)
			continue;
		if (n_fnd == cap_fnd) {
			size_t nc = cap_fnd ? cap_fnd * 2 : 16;
			struct found *nf = realloc(fnd, nc * sizeof(*nf));
			if (!nf) {
				json_decref(w);
				goto fail;
			}
			fnd = nf;
			cap_fnd = nc;
		}
		json_t *sco = json_object_get(w, "Score");
		double un = json_real_value(json_object_get(sco, "Unsupported"));
		double pa = json_real_value(json_object_get(sco, "Partial"));
		fnd[n_fnd] = (struct found){w, (un + pa) * got[i].n / dn, n_fnd + 1};
		n_fnd++;
	}
	/* overall: the largest weighted partial and unsupported shares */
	double partial = 0, unsupported = 0;
	for (size_t i = 0; i < n_fnd; i++) {
		json_t *sco = json_object_get(fnd[i].w, "Score");
		int found = (int)json_integer_value(json_object_get(sco, "Found"));
		double pa = json_real_value(json_object_get(sco, "Partial")) * found / dn;
		double un = json_real_value(json_object_get(sco, "Unsupported")) * found / dn;
		if (pa > partial)
			partial = pa;
		if (un > unsupported)
			unsupported = un;
	}
	if (n_fnd > 1)
		qsort(fnd, n_fnd, sizeof(*fnd), found_cmp);
	for (size_t i = 0; i < n_fnd; i++) {
		json_array_append_new(warnings, fnd[i].w);
		fnd[i].w = NULL;
	}
	json_object_set_new(res, "Platforms", json_deep_copy(platforms));
	json_object_set_new(res, "Total",
	                    json_pack("{s:i, s:i, s:f, s:f, s:f}", "Tests", tests, "Nodes", nodes,
	                              "Supported", 100 - partial - unsupported, "Partial", partial,
	                              "Unsupported", unsupported));
	goto out;
fail:
	json_decref(res);
	res = NULL;
out:
	for (size_t i = 0; i < n_fnd; i++)
		json_decref(fnd[i].w);
	free(fnd);
	free(hits);
	free(sc.els);
	tbuf_free(&sc.style);
	return res;
}

/* ---------------------------------------------------------------- links */

static bool json_array_has(json_t *arr, const char *s)
{
	size_t i;
	json_t *v;
	json_array_foreach(arr, i, v) if (strcmp(json_string_value(v), s) == 0) return true;
	return false;
}

/* Adds (p, n) to arr if it is an http(s) URL not there yet, with the few
 * entities an attribute value carries in practice decoded. */
static void link_add(json_t *arr, const char *p, size_t n, size_t max)
{
	trim(&p, &n);
	if (json_array_size(arr) >= max || n < 8 || n > 4096)
		return;
	if (strncasecmp(p, "http://", 7) != 0 && strncasecmp(p, "https://", 8) != 0)
		return;
	char *s = malloc(n + 1);
	if (!s)
		return;
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '&' && n - i >= 5 && strncasecmp(p + i, "&amp;", 5) == 0) {
			s[k++] = '&';
			i += 4;
		} else if ((unsigned char)p[i] < 0x20 || p[i] == ' ') {
			continue; /* a browser drops these too */
		} else {
			s[k++] = p[i];
		}
	}
	s[k] = '\0';
	if (!json_array_has(arr, s))
		json_array_append_new(arr, json_string(s));
	free(s);
}

void checks_links(const char *html, size_t hlen, const char *text, size_t tlen, size_t max,
                  json_t *arr)
{
	const char *p = html, *end = html + hlen;
	struct tag *t = malloc(sizeof(*t));
	if (!t)
		return;
	while (p && p < end) {
		const char *lt = memchr(p, '<', (size_t)(end - p));
		if (!lt || lt + 1 >= end)
			break;
		p = lt + 1;
		if (end - p >= 3 && p[0] == '!' && p[1] == '-' && p[2] == '-') {
			const char *e = find_ci(p + 3, (size_t)(end - p - 3), "-->");
			p = e ? e + 3 : end;
			continue;
		}
		if (!isalpha((unsigned char)*p))
			continue;
		p = tag_read(p, end, t);
		const struct attr *a = NULL;
		if (strcmp(t->name, "a") == 0 || strcmp(t->name, "area") == 0)
			a = attr_get(t, "href");
		else if (strcmp(t->name, "img") == 0)
			a = attr_get(t, "src");
		else if (strcmp(t->name, "link") == 0 && attr_is(t, "rel", "stylesheet"))
			a = attr_get(t, "href");
		if (a)
			link_add(arr, a->val, a->vlen, max);
		if (strcmp(t->name, "style") == 0 || strcmp(t->name, "script") == 0) {
			char close[sizeof(t->name) + 2];
			snprintf(close, sizeof(close), "</%s", t->name);
			const char *e = find_ci(p, (size_t)(end - p), close);
			p = e ? e : end;
		}
	}
	free(t);
	/* text: http(s)://... up to a blank or a bracket, trailing punctuation off */
	p = text;
	end = text + tlen;
	while (p && p < end) {
		const char *h = find_ci(p, (size_t)(end - p), "http");
		if (!h)
			break;
		size_t skip = (size_t)(end - h) >= 8 && strncasecmp(h, "https://", 8) == 0  ? 8
		              : (size_t)(end - h) >= 7 && strncasecmp(h, "http://", 7) == 0 ? 7
		                                                                            : 0;
		if (!skip || (h > text && (isalnum((unsigned char)h[-1])))) {
			p = h + 4;
			continue;
		}
		const char *e = h + skip;
		while (e < end && !is_space(*e) && *e != '<' && *e != '>' && *e != '"' &&
		       *e != '\'')
			e++;
		while (e > h + skip && strchr(".,;:!?)]}", e[-1]))
			e--;
		link_add(arr, h, (size_t)(e - h), max);
		p = e > h ? e : h + 1;
	}
}
