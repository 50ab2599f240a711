/*
 * ucl.c — the UCL-subset parser (see ucl.h for the contract, docs/config.md
 * for the syntax users see).
 *
 * Owns: lexing, the tree, number suffixes, escapes, merging of duplicate
 * keys, reading included files.
 * Never: reads outside (text, len); recurses more than UCL_MAX_DEPTH deep
 * (objects and arrays) or UCL_MAX_INCLUDE_DEPTH deep (includes); allocates
 * without counting against the limits in ucl.h; opens files when the caller
 * did not allow includes. The first error stops the parse; there is no
 * recovery, so a partly understood config can never be used.
 */
#include "core/ucl.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/files.h"

/* Objects with at least this many members get a hash index. */
#define UCL_HASH_MIN 16

struct parser {
	struct ucl_doc *doc;
	const char *text;
	size_t len;
	size_t pos;
	unsigned line;
	unsigned file; /* index of this text's name in doc->files */
	bool allow_include;
	unsigned inc_depth;
	char *err;
	size_t errlen;
};

__attribute__((format(printf, 3, 4))) static int perr(struct parser *ps, unsigned line,
                                                      const char *fmt, ...)
{
	if (!ps->err || ps->errlen == 0)
		return TERN_ESYNTAX;
	int n = snprintf(ps->err, ps->errlen, "%s:%u: ", ps->doc->files[ps->file], line);
	if (n >= 0 && (size_t)n < ps->errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(ps->err + n, ps->errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return TERN_ESYNTAX;
}

static int nomem(struct parser *ps)
{
	perr(ps, ps->line, "out of memory");
	return TERN_ENOMEM;
}

/* Describes byte c for a message: 'x' when printable, else its code. */
static const char *char_desc(int c, char *buf, size_t n)
{
	if (c > 0x20 && c < 0x7f)
		snprintf(buf, n, "'%c'", c);
	else
		snprintf(buf, n, "byte 0x%02x", (unsigned)(unsigned char)c);
	return buf;
}

/* ---- the tree ------------------------------------------------------------ */

static void node_free(struct ucl_node *n)
{
	if (!n)
		return;
	for (size_t i = 0; i < n->n_items; i++)
		node_free(n->items[i]);
	free(n->items);
	free(n->hash);
	free(n->key);
	free(n->str);
	free(n);
}

static struct ucl_node *node_new(struct parser *ps, enum ucl_type t, unsigned line)
{
	if (ps->doc->n_nodes >= UCL_MAX_NODES) {
		perr(ps, line, "too many values (limit %u)", UCL_MAX_NODES);
		return NULL;
	}
	struct ucl_node *n = calloc(1, sizeof(*n));
	if (!n) {
		nomem(ps);
		return NULL;
	}
	ps->doc->n_nodes++;
	n->type = t;
	n->line = line;
	n->file = ps->file;
	return n;
}

static int items_push(struct ucl_node *n, struct ucl_node *child)
{
	if (n->n_items == n->cap_items) {
		size_t ncap = n->cap_items ? n->cap_items * 2 : 4;
		struct ucl_node **v = realloc(n->items, ncap * sizeof(*v));
		if (!v)
			return TERN_ENOMEM;
		n->items = v;
		n->cap_items = ncap;
	}
	n->items[n->n_items++] = child;
	return TERN_OK;
}

static uint32_t key_hash(const char *k)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (; *k; k++)
		h = (h ^ (unsigned char)*k) * 16777619u;
	return h;
}

static void hash_put(struct ucl_node *obj, size_t idx)
{
	size_t mask = obj->hash_cap - 1;
	size_t h = key_hash(obj->items[idx]->key) & mask;
	while (obj->hash[h])
		h = (h + 1) & mask;
	obj->hash[h] = (uint32_t)(idx + 1);
}

/* Keeps the index at most half full; rebuilt when it would pass that. */
static int hash_update(struct ucl_node *obj)
{
	if (obj->n_items < UCL_HASH_MIN)
		return TERN_OK;
	if (obj->hash && obj->n_items * 2 <= obj->hash_cap) {
		hash_put(obj, obj->n_items - 1);
		return TERN_OK;
	}
	size_t cap = 64;
	while (cap < obj->n_items * 4)
		cap *= 2;
	uint32_t *h = calloc(cap, sizeof(*h));
	if (!h)
		return TERN_ENOMEM;
	free(obj->hash);
	obj->hash = h;
	obj->hash_cap = cap;
	for (size_t i = 0; i < obj->n_items; i++)
		hash_put(obj, i);
	return TERN_OK;
}

static size_t obj_find(const struct ucl_node *obj, const char *key)
{
	if (obj->hash) {
		size_t mask = obj->hash_cap - 1;
		for (size_t h = key_hash(key) & mask; obj->hash[h]; h = (h + 1) & mask) {
			size_t i = obj->hash[h] - 1;
			if (strcmp(obj->items[i]->key, key) == 0)
				return i;
		}
		return SIZE_MAX;
	}
	for (size_t i = 0; i < obj->n_items; i++)
		if (strcmp(obj->items[i]->key, key) == 0)
			return i;
	return SIZE_MAX;
}

/*
 * Adds child (which has its key set) to obj, taking ownership of it even on
 * failure. Two objects under one key merge; otherwise the later value wins
 * and takes the earlier one's place in the order.
 */
static int obj_insert(struct ucl_node *obj, struct ucl_node *child)
{
	size_t i = obj_find(obj, child->key);
	if (i == SIZE_MAX) {
		if (items_push(obj, child) != TERN_OK) {
			node_free(child);
			return TERN_ENOMEM;
		}
		int rc = hash_update(obj);
		if (rc != TERN_OK) { /* take it out again: the index must cover every member */
			obj->n_items--;
			node_free(child);
		}
		return rc;
	}
	struct ucl_node *old = obj->items[i];
	if (old->type == UCL_OBJECT && child->type == UCL_OBJECT) {
		int rc = TERN_OK;
		for (size_t j = 0; j < child->n_items; j++) {
			struct ucl_node *gc = child->items[j];
			child->items[j] = NULL;
			if (rc == TERN_OK)
				rc = obj_insert(old, gc);
			else
				node_free(gc);
		}
		child->n_items = 0;
		old->line = child->line;
		old->file = child->file;
		node_free(child);
		return rc;
	}
	obj->items[i] = child;
	node_free(old);
	return TERN_OK;
}

/* ---- lexing -------------------------------------------------------------- */

static int cur(const struct parser *ps)
{
	return ps->pos < ps->len ? (unsigned char)ps->text[ps->pos] : -1;
}

static int peek(const struct parser *ps, size_t ahead)
{
	return ps->pos + ahead < ps->len ? (unsigned char)ps->text[ps->pos + ahead] : -1;
}

/*
 * Skips white space and comments. A comment starts only where a token could
 * start, so "a//b" is one bare word. *saw_nl (if given) tells whether a line
 * ended on the way, which is what makes a ';' optional.
 */
static int skip_ws(struct parser *ps, bool *saw_nl)
{
	if (saw_nl)
		*saw_nl = false;
	while (ps->pos < ps->len) {
		int c = cur(ps);
		if (c == '\n') {
			ps->line++;
			ps->pos++;
			if (saw_nl)
				*saw_nl = true;
		} else if (c == ' ' || c == '\t' || c == '\r') {
			ps->pos++;
		} else if (c == '#' || (c == '/' && peek(ps, 1) == '/')) {
			while (ps->pos < ps->len && ps->text[ps->pos] != '\n')
				ps->pos++;
		} else if (c == '/' && peek(ps, 1) == '*') {
			unsigned start = ps->line;
			ps->pos += 2;
			for (;;) {
				if (ps->pos + 1 >= ps->len)
					return perr(ps, start, "unterminated /* comment");
				if (ps->text[ps->pos] == '*' && ps->text[ps->pos + 1] == '/') {
					ps->pos += 2;
					break;
				}
				if (ps->text[ps->pos] == '\n') {
					ps->line++;
					if (saw_nl)
						*saw_nl = true;
				}
				ps->pos++;
			}
		} else {
			break;
		}
	}
	return TERN_OK;
}

/* Bytes allowed in bare words; keys may not contain ':' (it ends a key). */
static bool is_bare(int c, bool key)
{
	if (c < 0)
		return false;
	if (c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	switch (c) {
	case '.':
	case '_':
	case '-':
	case '/':
	case '@':
	case '*':
	case '+':
		return true;
	case ':':
		return !key;
	default:
		return false;
	}
}

static void bare_word(struct parser *ps, bool key, const char **start, size_t *n)
{
	size_t b = ps->pos;
	while (is_bare(cur(ps), key))
		ps->pos++;
	*start = ps->text + b;
	*n = ps->pos - b;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int read_u16(const char *p, size_t avail, unsigned *out)
{
	if (avail < 4)
		return -1;
	unsigned v = 0;
	for (int i = 0; i < 4; i++) {
		int h = hexval((unsigned char)p[i]);
		if (h < 0)
			return -1;
		v = v * 16 + (unsigned)h;
	}
	*out = v;
	return 0;
}

static size_t utf8_put(char *o, unsigned cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xc0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xe0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	o[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/*
 * A quoted string at ps->pos. Double quotes take JSON escapes; single quotes
 * are raw except that \' stands for a quote. Strings end on their line. The
 * decoded form is never longer than the source, which sizes the allocation.
 */
static int quoted_string(struct parser *ps, char **out, size_t *outlen)
{
	char q = ps->text[ps->pos];
	unsigned line = ps->line;
	size_t b = ++ps->pos, e = b;
	for (;;) {
		if (e >= ps->len || ps->text[e] == '\n')
			return perr(ps, line,
			            "unterminated string (a string must end on its line)");
		unsigned char c = (unsigned char)ps->text[e];
		if (c == (unsigned char)q)
			break;
		if (c < 0x20 && c != '\t')
			return perr(ps, line,
			            "control character (byte 0x%02x) in string; use an escape", c);
		if (c == '\\' && e + 1 < ps->len &&
		    (q == '"' ? ps->text[e + 1] != '\n' : ps->text[e + 1] == '\''))
			e++;
		e++;
	}
	char *s = malloc(e - b + 1);
	if (!s)
		return nomem(ps);
	size_t o = 0;
	for (size_t i = b; i < e; i++) {
		char c = ps->text[i];
		if (c != '\\') {
			s[o++] = c;
			continue;
		}
		if (q == '\'') {
			if (ps->text[i + 1] == '\'')
				i++;
			s[o++] = ps->text[i];
			continue;
		}
		char x = ps->text[++i];
		switch (x) {
		case '"':
		case '\\':
		case '/':
			s[o++] = x;
			break;
		case 'b':
			s[o++] = '\b';
			break;
		case 'f':
			s[o++] = '\f';
			break;
		case 'n':
			s[o++] = '\n';
			break;
		case 'r':
			s[o++] = '\r';
			break;
		case 't':
			s[o++] = '\t';
			break;
		case 'u': {
			unsigned cp, lo;
			if (read_u16(ps->text + i + 1, e - i - 1, &cp) != 0) {
				free(s);
				return perr(ps, line, "\\u must be followed by 4 hex digits");
			}
			i += 4;
			if (cp >= 0xdc00 && cp <= 0xdfff) {
				free(s);
				return perr(ps, line, "unpaired surrogate \\u%04x in string", cp);
			}
			if (cp >= 0xd800 && cp <= 0xdbff) {
				if (e - i - 1 < 6 || ps->text[i + 1] != '\\' ||
				    ps->text[i + 2] != 'u' ||
				    read_u16(ps->text + i + 3, e - i - 3, &lo) != 0 ||
				    lo < 0xdc00 || lo > 0xdfff) {
					free(s);
					return perr(ps, line,
					            "unpaired surrogate \\u%04x in string", cp);
				}
				i += 6;
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			}
			if (cp == 0) {
				free(s);
				return perr(ps, line, "NUL character (\\u0000) in string");
			}
			o += utf8_put(s + o, cp);
			break;
		}
		default: {
			char d[16];
			free(s);
			return perr(ps, line, "unknown escape \\%s in string",
			            char_desc((unsigned char)x, d, sizeof(d)));
		}
		}
	}
	s[o] = '\0';
	ps->pos = e + 1;
	*out = s;
	*outlen = o;
	return TERN_OK;
}

/* ---- scalars ------------------------------------------------------------- */

struct suffix {
	const char *name;
	double mult; /* 0 marks milliseconds */
	enum ucl_unit unit;
};

static const struct suffix suffixes[] = {
    {"", 1, UCL_UNIT_NONE},
    {"k", 1024.0, UCL_UNIT_SIZE},
    {"kb", 1024.0, UCL_UNIT_SIZE},
    {"m", 1048576.0, UCL_UNIT_SIZE},
    {"mb", 1048576.0, UCL_UNIT_SIZE},
    {"g", 1073741824.0, UCL_UNIT_SIZE},
    {"gb", 1073741824.0, UCL_UNIT_SIZE},
    {"ms", 0, UCL_UNIT_TIME},
    {"s", 1, UCL_UNIT_TIME},
    {"min", 60, UCL_UNIT_TIME},
    {"h", 3600, UCL_UNIT_TIME},
    {"d", 86400, UCL_UNIT_TIME},
    {"w", 604800, UCL_UNIT_TIME},
};

/*
 * Turns a bare word into a number when all of it is one: [+-]digits
 * [.digits][e[+-]digits] followed by nothing or a known suffix. Returns 1
 * for a number, 0 for "not a number" (the word stays a string) or an error.
 */
static int bare_number(struct parser *ps, struct ucl_node *n, const char *w, size_t len)
{
	size_t i = 0;
	bool neg = false, isfloat = false;
	if (i < len && (w[i] == '-' || w[i] == '+'))
		neg = w[i++] == '-';
	size_t d0 = i;
	while (i < len && w[i] >= '0' && w[i] <= '9')
		i++;
	if (i == d0)
		return 0;
	size_t int_end = i;
	if (i + 1 < len && w[i] == '.' && w[i + 1] >= '0' && w[i + 1] <= '9') {
		isfloat = true;
		for (i++; i < len && w[i] >= '0' && w[i] <= '9'; i++)
			;
	}
	if (i + 1 < len && (w[i] == 'e' || w[i] == 'E')) {
		size_t j = i + 1;
		if (j < len && (w[j] == '+' || w[j] == '-'))
			j++;
		if (j < len && w[j] >= '0' && w[j] <= '9') {
			isfloat = true;
			for (i = j; i < len && w[i] >= '0' && w[i] <= '9'; i++)
				;
		}
	}
	const struct suffix *sf = NULL;
	for (size_t k = 0; k < sizeof(suffixes) / sizeof(suffixes[0]); k++) {
		size_t sl = strlen(suffixes[k].name);
		if (sl == len - i && strncasecmp(w + i, suffixes[k].name, sl) == 0) {
			sf = &suffixes[k];
			break;
		}
	}
	if (!sf)
		return 0;
	n->unit = sf->unit;
	if (!isfloat) {
		uint64_t v = 0;
		for (size_t k = d0; k < int_end; k++) {
			unsigned dg = (unsigned)(w[k] - '0');
			if (v > (UINT64_MAX - dg) / 10)
				return perr(ps, n->line, "number %.*s is out of range", (int)len,
				            w);
			v = v * 10 + dg;
		}
		if (sf->mult == 0) { /* ms: whole seconds stay integers */
			if (v % 1000 != 0) {
				n->type = UCL_FLOAT;
				n->fval = (neg ? -(double)v : (double)v) / 1000.0;
				return 1;
			}
			v /= 1000;
		} else {
			uint64_t m = (uint64_t)sf->mult;
			if (v > UINT64_MAX / m)
				return perr(ps, n->line, "number %.*s is out of range", (int)len,
				            w);
			v *= m;
		}
		if (v > (uint64_t)INT64_MAX + (neg ? 1u : 0u))
			return perr(ps, n->line, "number %.*s is out of range", (int)len, w);
		n->type = UCL_INT;
		n->ival = neg ? (int64_t)(0 - v) : (int64_t)v;
		return 1;
	}
	char num[64];
	if (i >= sizeof(num))
		return perr(ps, n->line, "number %.*s is too long", (int)len, w);
	memcpy(num, w, i);
	num[i] = '\0';
	errno = 0;
	double f = strtod(num, NULL);
	f = sf->mult == 0 ? f / 1000.0 : f * sf->mult;
	if (!(f >= -DBL_MAX && f <= DBL_MAX) || errno == ERANGE)
		return perr(ps, n->line, "number %.*s is out of range", (int)len, w);
	/* 1.5k is 1536 bytes: a suffixed value that comes out whole is an integer */
	if (sf->name[0] && f > -9.2e18 && f < 9.2e18 && f == (double)(int64_t)f) {
		n->type = UCL_INT;
		n->ival = (int64_t)f;
		return 1;
	}
	n->type = UCL_FLOAT;
	n->fval = f;
	return 1;
}

static const char *const true_words[] = {"true", "yes", "on"};
static const char *const false_words[] = {"false", "no", "off"};

static bool word_is(const char *w, size_t n, const char *lit)
{
	return strlen(lit) == n && strncasecmp(w, lit, n) == 0;
}

static int bare_value(struct parser *ps, struct ucl_node *n, const char *w, size_t len)
{
	for (size_t i = 0; i < 3; i++) {
		if (word_is(w, len, true_words[i]) || word_is(w, len, false_words[i])) {
			n->type = UCL_BOOL;
			n->bval = word_is(w, len, true_words[i]);
			return TERN_OK;
		}
	}
	int r = bare_number(ps, n, w, len);
	if (r < 0)
		return r;
	if (r == 1)
		return TERN_OK;
	n->str = tern_strndup(w, len);
	if (!n->str)
		return nomem(ps);
	n->len = len;
	n->type = UCL_STRING;
	return TERN_OK;
}

/* ---- structure ----------------------------------------------------------- */

static int parse_members(struct parser *ps, struct ucl_node *obj, unsigned depth, int close,
                         unsigned open_line);

static int parse_array(struct parser *ps, struct ucl_node *arr, unsigned depth, unsigned open_line);

/* Parses one value at ps->pos; depth is that of the containing object/array. */
static int parse_value(struct parser *ps, unsigned depth, struct ucl_node **out)
{
	unsigned line = ps->line;
	int c = cur(ps);
	struct ucl_node *n = NULL;
	int rc;
	*out = NULL;
	if (c == '{' || c == '[') {
		if (depth + 1 > UCL_MAX_DEPTH)
			return perr(ps, line, "nesting too deep (limit %d)", UCL_MAX_DEPTH);
		n = node_new(ps, c == '{' ? UCL_OBJECT : UCL_ARRAY, line);
		if (!n)
			return TERN_ENOMEM;
		ps->pos++;
		rc = c == '{' ? parse_members(ps, n, depth + 1, '}', line)
		              : parse_array(ps, n, depth + 1, line);
	} else if (c == '"' || c == '\'') {
		n = node_new(ps, UCL_STRING, line);
		if (!n)
			return TERN_ENOMEM;
		n->quoted = true;
		rc = quoted_string(ps, &n->str, &n->len);
	} else if (is_bare(c, false)) {
		n = node_new(ps, UCL_STRING, line);
		if (!n)
			return TERN_ENOMEM;
		const char *w;
		size_t wl;
		bare_word(ps, false, &w, &wl);
		rc = bare_value(ps, n, w, wl);
	} else if (c < 0 || c == ';' || c == ',' || c == '}' || c == ']') {
		return perr(ps, line, "missing value");
	} else {
		char d[16];
		return perr(ps, line, "unexpected %s", char_desc(c, d, sizeof(d)));
	}
	if (rc != TERN_OK) {
		node_free(n);
		return rc;
	}
	*out = n;
	return TERN_OK;
}

static int parse_array(struct parser *ps, struct ucl_node *arr, unsigned depth, unsigned open_line)
{
	for (;;) {
		int rc = skip_ws(ps, NULL);
		if (rc != TERN_OK)
			return rc;
		int c = cur(ps);
		if (c < 0)
			return perr(ps, open_line, "missing ']' for the array opened here");
		if (c == ']') {
			ps->pos++;
			return TERN_OK;
		}
		struct ucl_node *v;
		rc = parse_value(ps, depth, &v);
		if (rc != TERN_OK)
			return rc;
		if (items_push(arr, v) != TERN_OK) {
			node_free(v);
			return nomem(ps);
		}
		bool nl;
		unsigned vline = ps->line;
		rc = skip_ws(ps, &nl);
		if (rc != TERN_OK)
			return rc;
		c = cur(ps);
		if (c == ',')
			ps->pos++;
		else if (c != ']' && !nl && c >= 0)
			return perr(ps, vline, "expected ',' or ']' after an array element");
	}
}

static char *path_join_dir(const char *base, const char *rel)
{
	if (rel[0] == '/')
		return tern_strdup(rel);
	const char *slash = strrchr(base, '/');
	if (!slash)
		return tern_strdup(rel);
	size_t dl = (size_t)(slash - base) + 1, rl = strlen(rel);
	char *p = malloc(dl + rl + 1);
	if (!p)
		return NULL;
	memcpy(p, base, dl);
	memcpy(p + dl, rel, rl + 1);
	return p;
}

/* Why path cannot be read. EINVAL from the file source means "not a regular
 * file"; stat (which never blocks on a FIFO) names what it is instead. */
static const char *read_error(const char *path, int err_no)
{
	struct stat st;

	if (err_no != EINVAL)
		return strerror(err_no);
	if (stat(path, &st) != 0)
		return "not a regular file";
	if (S_ISFIFO(st.st_mode))
		return "not a regular file (a FIFO)";
	if (S_ISDIR(st.st_mode))
		return "not a regular file (a directory)";
	if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))
		return "not a regular file (a device)";
	if (S_ISSOCK(st.st_mode))
		return "not a regular file (a socket)";
	return "not a regular file";
}

/* Reads a whole regular file of at most max bytes, through the file source
 * (core/files.h: from a bundle in the privilege-separated child; never
 * blocking on a FIFO). */
static int read_file(const char *path, size_t max, char **out, size_t *outlen, int *err_no)
{
	return tern_file_read(path, max, out, outlen, err_no);
}

static int add_file_name(struct ucl_doc *doc, const char *name)
{
	char **v = realloc(doc->files, (doc->n_files + 1) * sizeof(*v));
	if (!v)
		return TERN_ENOMEM;
	doc->files = v;
	v[doc->n_files] = tern_strdup(name);
	if (!v[doc->n_files])
		return TERN_ENOMEM;
	doc->n_files++;
	return TERN_OK;
}

static int parse_body(struct parser *ps, struct ucl_node *obj, unsigned depth);

/* `.include "path"` at ps->pos (the word itself already read). */
static int do_include(struct parser *ps, struct ucl_node *obj, unsigned depth, unsigned line)
{
	int rc = skip_ws(ps, NULL);
	if (rc != TERN_OK)
		return rc;
	struct ucl_node *v;
	rc = parse_value(ps, depth, &v);
	if (rc != TERN_OK)
		return rc;
	char *target = NULL, *text = NULL;
	size_t tlen = 0;
	if (v->type != UCL_STRING) {
		rc = perr(ps, line, ".include needs a file name");
		goto out;
	}
	if (!ps->allow_include) {
		rc = perr(ps, line, ".include is only allowed in configuration files");
		goto out;
	}
	if (ps->inc_depth >= UCL_MAX_INCLUDE_DEPTH) {
		rc = perr(ps, line, "includes nested too deeply (limit %d)", UCL_MAX_INCLUDE_DEPTH);
		goto out;
	}
	if (ps->doc->n_includes >= UCL_MAX_INCLUDES) {
		rc = perr(ps, line, "too many includes (limit %d)", UCL_MAX_INCLUDES);
		goto out;
	}
	ps->doc->n_includes++;
	target = path_join_dir(ps->doc->files[ps->file], v->str);
	if (!target) {
		rc = nomem(ps);
		goto out;
	}
	int en;
	rc = read_file(target, UCL_MAX_FILE_SIZE, &text, &tlen, &en);
	if (rc != TERN_OK) {
		perr(ps, line, "cannot read included file '%s': %s", target,
		     read_error(target, en));
		goto out;
	}
	if (tlen > UCL_MAX_TOTAL_SIZE - ps->doc->total_size) {
		rc = perr(ps, line, "configuration too large (limit %u bytes in all files)",
		          UCL_MAX_TOTAL_SIZE);
		goto out;
	}
	ps->doc->total_size += tlen;
	if (add_file_name(ps->doc, target) != TERN_OK) {
		rc = nomem(ps);
		goto out;
	}
	struct parser sub = *ps;
	sub.text = text;
	sub.len = tlen;
	sub.pos = 0;
	sub.line = 1;
	sub.file = (unsigned)(ps->doc->n_files - 1);
	sub.inc_depth = ps->inc_depth + 1;
	rc = parse_body(&sub, obj, depth);
out:
	free(text);
	free(target);
	node_free(v);
	return rc;
}

/*
 * Members of obj until close ('}') or, when close is 0, the end of the text.
 * Each is `key [=|:] value` with an optional ';' or ','; the separator may be
 * left out before a new line, a closing brace or after a braced value.
 * `key name { ... }` is short for `key { name { ... } }`.
 */
static int parse_members(struct parser *ps, struct ucl_node *obj, unsigned depth, int close,
                         unsigned open_line)
{
	for (;;) {
		int rc = skip_ws(ps, NULL);
		if (rc != TERN_OK)
			return rc;
		int c = cur(ps);
		if (c < 0) {
			if (close)
				return perr(ps, open_line,
				            "missing '}' for the section opened here");
			return TERN_OK;
		}
		if (c == close) {
			ps->pos++;
			return TERN_OK;
		}
		if (c == ';' || c == ',') {
			ps->pos++;
			continue;
		}
		unsigned kline = ps->line;
		char *key = NULL;
		size_t klen = 0;
		if (c == '"' || c == '\'') {
			rc = quoted_string(ps, &key, &klen);
			if (rc != TERN_OK)
				return rc;
		} else if (is_bare(c, true)) {
			const char *w;
			bare_word(ps, true, &w, &klen);
			if (w[0] == '.') {
				if (!word_is(w, klen, ".include"))
					return perr(ps, kline, "unknown directive '%.*s'",
					            (int)klen, w);
				rc = do_include(ps, obj, depth, kline);
				if (rc != TERN_OK)
					return rc;
				continue;
			}
			key = tern_strndup(w, klen);
			if (!key)
				return nomem(ps);
		} else {
			char d[16];
			if (c == '}' || c == ']')
				return perr(ps, kline, "unexpected %s", char_desc(c, d, sizeof(d)));
			return perr(ps, kline, "expected a key, found %s",
			            char_desc(c, d, sizeof(d)));
		}
		if (klen == 0) {
			free(key);
			return perr(ps, kline, "empty key");
		}
		struct ucl_node *v = NULL;
		bool assigned = false, nl;
		rc = skip_ws(ps, NULL);
		if (rc != TERN_OK)
			goto out;
		if (cur(ps) == '=' || cur(ps) == ':') {
			ps->pos++;
			assigned = true;
			rc = skip_ws(ps, NULL);
			if (rc != TERN_OK)
				goto out;
		}
		if (cur(ps) < 0 || cur(ps) == ';' || cur(ps) == ',' || cur(ps) == close) {
			rc = perr(ps, kline, "missing value for key '%s'", key);
			goto out;
		}
		rc = parse_value(ps, depth, &v);
		if (rc != TERN_OK)
			goto out;
		if (!assigned && v->type == UCL_STRING) {
			size_t save_pos = ps->pos;
			unsigned save_line = ps->line;
			rc = skip_ws(ps, NULL);
			if (rc != TERN_OK)
				goto out;
			if (cur(ps) == '{') { /* key name { ... } */
				struct ucl_node *inner = NULL, *wrap;
				if (depth + 2 > UCL_MAX_DEPTH) {
					rc = perr(ps, ps->line, "nesting too deep (limit %d)",
					          UCL_MAX_DEPTH);
					goto out;
				}
				wrap = node_new(ps, UCL_OBJECT, v->line);
				if (!wrap) {
					rc = TERN_ENOMEM;
					goto out;
				}
				rc = parse_value(ps, depth + 1, &inner);
				if (rc != TERN_OK) {
					node_free(wrap);
					goto out;
				}
				inner->key = v->str;
				inner->line = v->line;
				v->str = NULL;
				node_free(v);
				v = wrap;
				if (obj_insert(wrap, inner) != TERN_OK) {
					rc = nomem(ps);
					goto out;
				}
			} else {
				ps->pos = save_pos;
				ps->line = save_line;
			}
		}
		bool braced = v->type == UCL_OBJECT || v->type == UCL_ARRAY;
		v->key = key;
		v->line = kline;
		key = NULL;
		unsigned vline = ps->line;
		rc = obj_insert(obj, v);
		v = NULL;
		if (rc != TERN_OK)
			return nomem(ps);
		rc = skip_ws(ps, &nl);
		if (rc != TERN_OK)
			return rc;
		c = cur(ps);
		if (c == ';' || c == ',')
			ps->pos++;
		else if (!braced && !nl && c >= 0 && c != close)
			return perr(ps, vline, "expected ';' or a new line after a value, found %s",
			            char_desc(c, (char[16]){0}, 16));
		continue;
	out:
		free(key);
		node_free(v);
		return rc;
	}
}

/* A whole text: an optional byte order mark, then members, optionally inside
 * one pair of braces (so JSON objects parse too). */
static int parse_body(struct parser *ps, struct ucl_node *obj, unsigned depth)
{
	const char *nul = memchr(ps->text, '\0', ps->len);
	if (nul) {
		unsigned line = 1;
		for (const char *q = ps->text; q < nul; q++)
			line += *q == '\n';
		return perr(ps, line, "NUL byte in configuration text");
	}
	if (ps->len >= 3 && memcmp(ps->text, "\xef\xbb\xbf", 3) == 0)
		ps->pos = 3;
	int rc = skip_ws(ps, NULL);
	if (rc != TERN_OK)
		return rc;
	if (cur(ps) != '{')
		return parse_members(ps, obj, depth, 0, ps->line);
	unsigned open_line = ps->line;
	ps->pos++;
	rc = parse_members(ps, obj, depth, '}', open_line);
	if (rc != TERN_OK)
		return rc;
	rc = skip_ws(ps, NULL);
	if (rc != TERN_OK)
		return rc;
	if (cur(ps) >= 0)
		return perr(ps, ps->line, "text after the closing '}'");
	return TERN_OK;
}

/* ---- public -------------------------------------------------------------- */

void ucl_free(struct ucl_doc *doc)
{
	if (!doc)
		return;
	node_free(doc->root);
	for (size_t i = 0; i < doc->n_files; i++)
		free(doc->files[i]);
	free(doc->files);
	free(doc);
}

int ucl_parse(const char *text, size_t len, const char *name, bool allow_include,
              struct ucl_doc **out, char *err, size_t errlen)
{
	struct ucl_doc *doc = calloc(1, sizeof(*doc));
	int rc;
	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	if (!doc || add_file_name(doc, name ? name : "(config)") != TERN_OK) {
		if (err && errlen)
			snprintf(err, errlen, "%s: out of memory", name ? name : "(config)");
		ucl_free(doc);
		return TERN_ENOMEM;
	}
	struct parser ps = {
	    .doc = doc,
	    .text = text ? text : "",
	    .len = text ? len : 0,
	    .line = 1,
	    .allow_include = allow_include,
	    .err = err,
	    .errlen = errlen,
	};
	if (ps.len > UCL_MAX_TOTAL_SIZE) {
		rc = perr(&ps, 1, "configuration too large (limit %u bytes)", UCL_MAX_TOTAL_SIZE);
		goto out;
	}
	doc->total_size = ps.len;
	doc->root = node_new(&ps, UCL_OBJECT, 1);
	if (!doc->root) {
		rc = TERN_ENOMEM;
		goto out;
	}
	rc = parse_body(&ps, doc->root, 0);
out:
	if (rc != TERN_OK) {
		ucl_free(doc);
		return rc;
	}
	*out = doc;
	return TERN_OK;
}

int ucl_parse_file(const char *path, struct ucl_doc **out, char *err, size_t errlen)
{
	char *text = NULL;
	size_t len = 0;
	int en;
	*out = NULL;
	int rc = read_file(path, UCL_MAX_FILE_SIZE, &text, &len, &en);
	if (rc != TERN_OK) {
		if (err && errlen)
			snprintf(err, errlen, "%s: cannot read: %s", path, read_error(path, en));
		return rc;
	}
	rc = ucl_parse(text, len, path, true, out, err, errlen);
	free(text);
	return rc;
}

const struct ucl_node *ucl_lookup(const struct ucl_node *obj, const char *key)
{
	if (!obj || obj->type != UCL_OBJECT || !key)
		return NULL;
	size_t i = obj_find(obj, key);
	return i == SIZE_MAX ? NULL : obj->items[i];
}

const struct ucl_node *ucl_lookup_path(const struct ucl_node *obj, const char *path)
{
	char part[256];
	while (obj && path) {
		const char *dot = strchr(path, '.');
		size_t n = dot ? (size_t)(dot - path) : strlen(path);
		if (n >= sizeof(part))
			return NULL;
		memcpy(part, path, n);
		part[n] = '\0';
		obj = ucl_lookup(obj, part);
		path = dot ? dot + 1 : NULL;
	}
	return obj;
}

const char *ucl_node_file(const struct ucl_doc *doc, const struct ucl_node *n)
{
	if (!doc || doc->n_files == 0)
		return "(config)";
	if (!n) /* a rule about the whole configuration: the file it was read from */
		return doc->files[0];
	return n->file < doc->n_files ? doc->files[n->file] : "(config)";
}

const char *ucl_type_name(enum ucl_type t)
{
	switch (t) {
	case UCL_OBJECT:
		return "a section";
	case UCL_ARRAY:
		return "a list";
	case UCL_STRING:
		return "a string";
	case UCL_INT:
		return "an integer";
	case UCL_FLOAT:
		return "a number with a fraction";
	case UCL_BOOL:
		return "a boolean";
	}
	return "a value";
}
