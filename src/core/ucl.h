/*
 * ucl.h — a parser for the subset of UCL that tern.conf uses (see conf.h
 * and docs/config.md for the syntax), producing a small tree.
 *
 * Owns: tokenising and building the tree, number suffixes, string escapes,
 * duplicate-key rules, `.include`. It knows nothing about tern's keys; the
 * meaning of the tree is conf.c's business.
 * Never: reads past (text, len), recurses deeper than UCL_MAX_DEPTH, lets a
 * document grow past the limits below, or touches the file system unless
 * asked to (includes are off for text given in memory).
 *
 * Duplicate keys in one object: when both values are objects they are merged
 * (recursively, with the same rule); otherwise the later value replaces the
 * earlier one, keeping the earlier one's position in the key order.
 */
#ifndef TERN_CORE_UCL_H
#define TERN_CORE_UCL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UCL_MAX_DEPTH 32               /* nested objects/arrays */
#define UCL_MAX_INCLUDE_DEPTH 8        /* .include inside .include ... */
#define UCL_MAX_INCLUDES 64            /* .include directives per document */
#define UCL_MAX_FILE_SIZE (4u << 20)   /* one file */
#define UCL_MAX_TOTAL_SIZE (16u << 20) /* all files of one document */
#define UCL_MAX_NODES 1000000u         /* values in one document */

enum ucl_type { UCL_OBJECT, UCL_ARRAY, UCL_STRING, UCL_INT, UCL_FLOAT, UCL_BOOL };

/* What suffix a number carried, so a size is never taken for a time. */
enum ucl_unit {
	UCL_UNIT_NONE, /* a plain number */
	UCL_UNIT_SIZE, /* k, kb, m, mb, g, gb: the value is in bytes */
	UCL_UNIT_TIME, /* ms, s, min, h, d, w: the value is in seconds */
};

struct ucl_node {
	enum ucl_type type;
	enum ucl_unit unit; /* numbers only */
	bool quoted;        /* strings: written in quotes (not a bare word) */
	unsigned line;      /* where the key (members) or the value starts */
	unsigned file;      /* index into ucl_doc.files */
	char *key;          /* member name when inside an object, else NULL */

	char *str; /* UCL_STRING: NUL-terminated, never contains NUL */
	size_t len;
	int64_t ival;
	double fval;
	bool bval;

	/* UCL_OBJECT (members in first-seen order) and UCL_ARRAY */
	struct ucl_node **items;
	size_t n_items;
	size_t cap_items;
	uint32_t *hash; /* objects with many members: open-addressed index+1 */
	size_t hash_cap;
};

struct ucl_doc {
	struct ucl_node *root; /* always an object */
	char **files;          /* names of the files read; [0] is the name given */
	size_t n_files;
	/* running totals that enforce the limits above */
	size_t n_nodes;
	size_t total_size;
	unsigned n_includes;
};

/*
 * Parses text[0..len) (need not be NUL-terminated). name is used in error
 * messages and, when allow_include is true, as the base for relative
 * `.include` paths (the directory part of name). On success stores a new
 * document in *out and returns TERN_OK; on failure returns a TERN_E* code,
 * *out is NULL and err holds "NAME:LINE: what is wrong".
 */
int ucl_parse(const char *text, size_t len, const char *name, bool allow_include,
              struct ucl_doc **out, char *err, size_t errlen);

/* Reads path (a regular file of at most UCL_MAX_FILE_SIZE) and parses it
 * with includes enabled. */
int ucl_parse_file(const char *path, struct ucl_doc **out, char *err, size_t errlen);

void ucl_free(struct ucl_doc *doc);

/* Member of an object by exact key; NULL if absent or obj is not an object. */
const struct ucl_node *ucl_lookup(const struct ucl_node *obj, const char *key);
/* Dotted path ("limits.max_errors") from obj; keys containing '.' cannot be
 * reached this way. */
const struct ucl_node *ucl_lookup_path(const struct ucl_node *obj, const char *path);
/* The file a node came from. */
const char *ucl_node_file(const struct ucl_doc *doc, const struct ucl_node *n);
/* "an object", "a string", ... for messages. */
const char *ucl_type_name(enum ucl_type t);

#endif
