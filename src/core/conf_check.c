/*
 * conf_check.c — views over a loaded config that an operator asks for
 * before trusting it: whether a relay network is so wide it makes tern an
 * open relay, and the config printed as only what differs from the
 * defaults (tern check-config --changed, as Postfix's postconf -n).
 *
 * Owns: nothing beyond the call; reads configs, never changes them.
 * Must never: print a key that is at its default as changed (the answer to
 * "what did I set?" must be exact), or print a secret (conf_print prints
 * none: a relay password is named by its file only).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/conf.h"

bool conf_cidr_too_wide(const struct conf_cidr *net)
{
	/* Shorter than /8 covers more than a sixteenth of one whole /4 of
	 * the address space: no relay network anyone means is that wide, and
	 * 0.0.0.0/0 or ::/0 is the whole internet. */
	return net && net->prefix < CONF_RELAY_MIN_PREFIX;
}

/* ---- --changed ------------------------------------------------------------ */

#define DEPTH_MAX 8

/* One line of conf_print's output: a section opening ("name {"), its end,
 * a leaf ("key = value;") or something to skip (comments, blank lines). */
enum line_kind { L_SKIP, L_OPEN, L_CLOSE, L_LEAF };

struct line {
	enum line_kind kind;
	const char *start; /* the whole line, indentation included */
	size_t len;        /* without the newline */
	const char *name;  /* key or section name */
	size_t name_len;
	const char *value; /* a leaf's value, ';' included */
	size_t value_len;
};

static const char *next_line(const char *p, const char *end, struct line *l)
{
	const char *nl = memchr(p, '\n', (size_t)(end - p));
	const char *e = nl ? nl : end;
	memset(l, 0, sizeof(*l));
	l->start = p;
	l->len = (size_t)(e - p);
	const char *q = p;
	while (q < e && (*q == '\t' || *q == ' '))
		q++;
	size_t n = (size_t)(e - q);
	const char *eq = n >= 3 ? memmem(q, n, " = ", 3) : NULL;
	if (n == 0 || *q == '#') {
		l->kind = L_SKIP;
	} else if (n == 1 && *q == '}') {
		l->kind = L_CLOSE;
	} else if (eq) {
		/* before " {": a value may hold a brace inside quotes; a key "=" never */
		l->kind = L_LEAF;
		l->name = q;
		l->name_len = (size_t)(eq - q);
		l->value = eq + 3;
		l->value_len = (size_t)(e - l->value);
	} else if (n >= 2 && q[n - 1] == '{') {
		l->kind = L_OPEN;
		l->name = q;
		l->name_len = n >= 2 && q[n - 2] == ' ' ? n - 2 : n - 1;
	} else {
		l->kind = L_SKIP;
	}
	return nl ? nl + 1 : end;
}

struct path {
	const char *name[DEPTH_MAX];
	size_t len[DEPTH_MAX];
	int depth;
};

static bool same_path(const struct path *a, const struct path *b)
{
	if (a->depth != b->depth)
		return false;
	for (int i = 0; i < a->depth && i < DEPTH_MAX; i++)
		if (a->len[i] != b->len[i] || memcmp(a->name[i], b->name[i], a->len[i]) != 0)
			return false;
	return true;
}

/* The value (";" included) of the leaf at want + leaf's key in text, or NULL. */
static const char *find_leaf(const char *text, size_t tlen, const struct path *want,
                             const struct line *leaf, size_t *vlen)
{
	struct path at = {.depth = 0};
	const char *p = text, *end = text + tlen;
	while (p < end) {
		struct line l;
		p = next_line(p, end, &l);
		if (l.kind == L_OPEN) {
			if (at.depth < DEPTH_MAX) {
				at.name[at.depth] = l.name;
				at.len[at.depth] = l.name_len;
			}
			at.depth++;
		} else if (l.kind == L_CLOSE) {
			if (at.depth > 0)
				at.depth--;
		} else if (l.kind == L_LEAF && l.name_len == leaf->name_len &&
		           memcmp(l.name, leaf->name, l.name_len) == 0 && same_path(&at, want)) {
			*vlen = l.value_len;
			return l.value;
		}
	}
	return NULL;
}

size_t conf_print_changed(const struct tern_config *c, FILE *out)
{
	char err[256];
	char *mine = NULL, *defs = NULL;
	size_t mine_len = 0, defs_len = 0, n_changed = 0;
	FILE *f = NULL;
	struct tern_config *d = conf_load_string("", 0, "(defaults)", err, sizeof(err));
	if (!d || !c || !out)
		goto out;
	if (!(f = open_memstream(&mine, &mine_len)))
		goto out;
	conf_print(c, f);
	if (fclose(f) != 0 || !(f = open_memstream(&defs, &defs_len))) {
		f = NULL;
		goto out;
	}
	conf_print(d, f);
	if (fclose(f) != 0) {
		f = NULL;
		goto out;
	}
	f = NULL;

	/* Walk my config; print each differing leaf under the section lines
	 * that lead to it, each opened once and closed when it ends. */
	struct path at = {.depth = 0};
	struct line opened[DEPTH_MAX];
	bool printed[DEPTH_MAX] = {false};
	const char *p = mine, *end = mine + mine_len;
	while (p < end) {
		struct line l;
		p = next_line(p, end, &l);
		if (l.kind == L_OPEN) {
			if (at.depth >= DEPTH_MAX)
				goto out; /* conf_print nests three deep */
			opened[at.depth] = l;
			at.name[at.depth] = l.name;
			at.len[at.depth] = l.name_len;
			printed[at.depth] = false;
			at.depth++;
		} else if (l.kind == L_CLOSE && at.depth > 0) {
			at.depth--;
			if (printed[at.depth])
				fprintf(out, "%.*s\n", (int)l.len, l.start);
		} else if (l.kind == L_LEAF) {
			size_t vlen = 0;
			const char *v = find_leaf(defs, defs_len, &at, &l, &vlen);
			if (v && vlen == l.value_len && memcmp(v, l.value, vlen) == 0)
				continue;
			for (int i = 0; i < at.depth; i++) {
				if (printed[i])
					continue;
				fprintf(out, "%.*s\n", (int)opened[i].len, opened[i].start);
				printed[i] = true;
			}
			fprintf(out, "%.*s\n", (int)l.len, l.start);
			n_changed++;
		}
	}
out:
	if (f)
		fclose(f);
	free(mine);
	free(defs);
	conf_unref(d);
	return n_changed;
}
