/*
 * buf.h — growable byte buffers with a hard cap, and (pointer, length) views.
 *
 * Invariants of struct tbuf:
 *   - data is NULL iff cap == 0; otherwise data[len] == '\0' always holds
 *     (one spare byte is kept), so a buffer can be handed to string APIs,
 *     but the content may itself contain NUL bytes: len is the truth.
 *   - len <= max. An append that would pass max fails with TERN_ELIMIT and
 *     leaves the buffer unchanged; it never truncates silently.
 *   - tbuf_free() releases memory and leaves an empty buffer that keeps its
 *     max, so it can be reused.
 */
#ifndef TERN_CORE_BUF_H
#define TERN_CORE_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tbuf {
	char *data;
	size_t len;
	size_t cap;
	size_t max;
};

#define TBUF_INIT(maxbytes) {NULL, 0, 0, (maxbytes)}

void tbuf_init(struct tbuf *b, size_t max);
void tbuf_free(struct tbuf *b);
/* Empties the buffer but keeps its memory. */
void tbuf_reset(struct tbuf *b);
int tbuf_reserve(struct tbuf *b, size_t extra);
int tbuf_append(struct tbuf *b, const void *p, size_t n);
int tbuf_append_str(struct tbuf *b, const char *s);
int tbuf_printf(struct tbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hands the bytes to the caller (who frees them) and empties the buffer. */
char *tbuf_steal(struct tbuf *b, size_t *len);

/* A borrowed byte range. Never owns memory. */
struct strv {
	const char *p;
	size_t n;
};

#define STRV(lit) ((struct strv){(lit), sizeof(lit) - 1})

static inline struct strv strv_make(const char *p, size_t n)
{
	return (struct strv){p, n};
}

bool strv_eq(struct strv a, struct strv b);
bool strv_ieq(struct strv a, struct strv b);
bool strv_istarts(struct strv s, struct strv prefix);
/* Copies into dst (NUL-terminated); TERN_ELIMIT if it does not fit. */
int strv_copy(struct strv s, char *dst, size_t dstlen);

/* Bounded replacements for the banned string functions. */
size_t tern_strlcpy(char *dst, const char *src, size_t size);
void *xmalloc_or_null(size_t n);
char *tern_strdup(const char *s);
char *tern_strndup(const char *s, size_t n);
void tern_ascii_lower(char *s);
bool tern_ascii_ieq(const char *a, const char *b);

#endif
