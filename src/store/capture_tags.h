/*
 * capture_tags.h — the tags a message gets when it is caught, by
 * Mailpit's rules: the part after the last '+' of each recipient's local
 * part (user+tag@example.com: "tag"), from the To, Cc and Bcc headers and
 * the SMTP envelope; and each comma-separated name of X-Tags headers.
 * Names are cleaned as Mailpit cleans them: any character but letters,
 * digits, '-', '_', '.' and space becomes a space, runs of blanks one
 * space, ends trimmed; empty names are dropped; duplicates (in any case)
 * count once. The store keeps the spelling of a tag it already has.
 *
 * Pure functions, plus one process-wide switch (MP_TAGS_DISABLE).
 */
#ifndef TERN_STORE_CAPTURE_TAGS_H
#define TERN_STORE_CAPTURE_TAGS_H

#include <stdbool.h>
#include <stddef.h>

struct mime_msg;

#define CAPTURE_TAG_MAX 100     /* bytes of one tag, as the tags API allows */
#define CAPTURE_TAGS_PER_MSG 32 /* more are dropped */

#define CAPTURE_TAGS_PLUS 1u  /* tags from plus addresses */
#define CAPTURE_TAGS_XTAGS 2u /* tags from X-Tags */

struct capture_tag_set {
	char v[CAPTURE_TAGS_PER_MSG][CAPTURE_TAG_MAX + 1];
	size_t n;
};

/* Mailpit's CleanTag over (in, n) into out; returns the length (0: no tag).
 * A name longer than CAPTURE_TAG_MAX is cut at a character boundary. */
size_t capture_tag_clean(const char *in, size_t n, char out[CAPTURE_TAG_MAX + 1]);

/* Adds a cleaned name unless it is empty, already there (any case) or the
 * set is full. */
void capture_tag_add(struct capture_tag_set *s, const char *name, size_t n);

/* The tag of one address ("user+tag@domain": "tag"; the last '+' of the
 * local part counts), added to s. */
void capture_tags_plus(const char *addr, struct capture_tag_set *s);

/* The names of every X-Tags field of the header block of raw (len bytes;
 * folded lines unfolded), added to s. */
void capture_tags_xtags(const char *raw, size_t len, struct capture_tag_set *s);

/* Every tag of a caught message under the rules enabled (flags). mm may
 * be NULL (no header addresses then). */
void capture_tags_derive(const struct mime_msg *mm, const char *raw, size_t len,
                         const char *const *env_to, size_t n_to, unsigned flags,
                         struct capture_tag_set *s);

/* The rules in force for the process: both by default. */
void capture_tags_set_rules(unsigned flags);
unsigned capture_tags_rules(void);

/* MP_TAGS_DISABLE's value ("plus-addresses", "x-tags", comma-separated)
 * into the rules left on; false for a name it does not know. */
bool capture_tags_parse_disable(const char *value, unsigned *rules);

#endif
