/*
 * parts_exact.h — where each MIME part of a raw message lies in its bytes
 * (parts_exact.c), for serving parts exactly as sent and for reading a
 * header block by its first Content-Type. Pure functions over (raw, len).
 */
#ifndef TERN_MIME_PARTS_EXACT_H
#define TERN_MIME_PARTS_EXACT_H

#include <stdbool.h>
#include <stddef.h>

#include "mime/mime.h"

#define MIME_SPANS_MAX 4096
#define MIME_DUPS_MAX 256
/* What a second (third...) Content-Type field is renamed to in the copy
 * GMime parses: 12 bytes, as "Content-Type", so no offset moves. */
#define MIME_DUP_CT_NAME "X-Tern-DupCT"

struct mime_span {
	char part_id[MIME_PARTID_MAX]; /* mime.h's numbering: "0", "1", "2.1", ... */
	char content_type[128];        /* of the first Content-Type, lowercased */
	char cte[32];                  /* first Content-Transfer-Encoding, lowercased; "" none */
	bool multipart;                /* a multipart with a boundary (its children follow) */
	size_t hdr_off;                /* the part's header block */
	size_t body_off, body_len;     /* its body as sent, without the CRLF before the
	                                * next delimiter */
};

struct mime_spans {
	struct mime_span *v; /* depth-first, document order */
	size_t n;
	size_t *dups; /* offsets of Content-Type field names after a header block's first */
	size_t n_dups;
};

/* Walks raw: TERN_OK (out filled; free with mime_spans_free) or
 * TERN_ENOMEM. Never fails on malformed input. */
int mime_spans(const char *raw, size_t len, struct mime_spans *out);
void mime_spans_free(struct mime_spans *s);
/* The leaf with this PartID, or NULL. */
const struct mime_span *mime_span_find(const struct mime_spans *s, const char *part_id);
/* A copy of raw (len bytes, not NUL-terminated) with every duplicate
 * Content-Type field renamed to MIME_DUP_CT_NAME; NULL when s has no
 * duplicates or memory ran out. */
char *mime_first_ct_copy(const char *raw, size_t len, const struct mime_spans *s);

#endif
