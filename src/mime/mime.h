/*
 * mime.h — the MIME view of a stored message that the capture store and its
 * API need, built on GMime 3: decoded Subject and addresses (RFC 2047
 * encoded words, any charset), text and HTML bodies decoded to UTF-8,
 * attachments and inline parts with RFC 2231 file names and Content-IDs,
 * and every part numbered the way Mailpit (enmime) numbers PartIDs:
 * the children of a multipart root are "1", "2", ...; the children of a
 * nested multipart "2.1", "2.2", ...; a message that is not multipart is
 * part "0". message/rfc822 parts are leaves (attachments), as in Mailpit.
 *
 * Everything here parses its input afresh on each call (GMime objects are
 * never shared between threads) and returns plain C data owned by the
 * caller. Nothing here touches the disk or the database.
 */
#ifndef TERN_MIME_MIME_H
#define TERN_MIME_MIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

#define MIME_PARTID_MAX 64
#define MIME_SNIPPET_CHARS 250

struct mime_addr {
	char *name; /* decoded display name, UTF-8, "" if none */
	char *addr; /* addr-spec, "" if none */
};

struct mime_addrs {
	struct mime_addr *v;
	size_t n;
};

enum mime_role {
	MIME_ROLE_CONTAINER,  /* a multipart (not listed in the API) */
	MIME_ROLE_TEXT,       /* the text/plain body */
	MIME_ROLE_HTML,       /* the text/html body */
	MIME_ROLE_ATTACHMENT, /* Message.Attachments */
	MIME_ROLE_INLINE,     /* Message.Inline (cid: images and other inline parts) */
	MIME_ROLE_OTHER,      /* a leaf that is neither (e.g. a second, unnamed text part) */
};

/* What decides a leaf part's role, as both readers see it (mime.c through
 * GMime, lite.c on its own). */
struct mime_leaf {
	const char *content_type; /* "type/subtype", lowercase */
	bool attachment;          /* Content-Disposition: attachment */
	bool inline_disp;         /* Content-Disposition: inline */
	bool has_filename, has_content_id;
	bool is_message; /* message/rfc822 */
	bool under_alt;  /* a child of a multipart/alternative */
};
/* Pure: the role of l. *alt_text / *alt_html say whether the enclosing
 * alternative already had its text/plain / text/html version (a second one
 * is another version of the body, not more of it: MIME_ROLE_OTHER); they
 * are updated. */
enum mime_role mime_leaf_role(const struct mime_leaf *l, bool *alt_text, bool *alt_html);

struct mime_part {
	char part_id[MIME_PARTID_MAX];
	enum mime_role role;
	char *content_type; /* "type/subtype", lowercase */
	char *filename;     /* decoded (RFC 2231 / RFC 2047), "" if none */
	char *content_id;   /* without angle brackets, "" if none */
	size_t size;        /* decoded size in bytes (0 for containers) */
	/* lowercase hex digests of the decoded bytes (MIME_CHECKSUMS only, else "") */
	char md5[33], sha1[41], sha256[65];
};

struct mime_header {
	char *name;  /* as in the message */
	char *value; /* unfolded raw value, leading/trailing blanks trimmed */
};

struct mime_msg {
	char *subject;    /* decoded, UTF-8 */
	char *message_id; /* without angle brackets */
	char *return_path;
	struct mime_addr from; /* "" fields if no From */
	struct mime_addrs to, cc, bcc, reply_to;
	bool has_date;
	int64_t date;     /* seconds since the epoch */
	int date_tz_min;  /* the Date header's zone offset, minutes east of UTC */
	char *text;       /* UTF-8 text body, "" if none */
	char *html;       /* UTF-8 HTML body, "" if none */
	char *snippet;    /* up to MIME_SNIPPET_CHARS characters of text, blanks collapsed */
	char *list_unsub; /* List-Unsubscribe, "" if none */
	char *list_unsub_post;
	struct mime_part *parts; /* depth-first, document order */
	size_t n_parts;
	size_t n_attachments, n_inline;
};

/* Call once before anything else in this file (idempotent, thread-safe). */
void mime_init(void);

#define MIME_CHECKSUMS 1u /* fill mime_part.md5/sha1/sha256 of leaf parts */

/* Parses raw (any bytes; never fails on malformed MIME, which is read
 * leniently). flags: MIME_CHECKSUMS or 0. TERN_OK or TERN_ENOMEM. out is
 * zeroed first; free with mime_msg_free even on error. */
int mime_parse(const char *raw, size_t len, unsigned flags, struct mime_msg *out);
void mime_msg_free(struct mime_msg *m);

/*
 * The part with this PartID: transfer-decoded bytes appended to out (a
 * message/rfc822 part is the embedded message as bytes), its content type
 * ("type/subtype", with "; charset=..." for text/ when known) and file
 * name (may be ""). TERN_ENOTFOUND if there is no such leaf part.
 */
int mime_part_get(const char *raw, size_t len, const char *part_id, struct tbuf *out,
                  char *content_type, size_t ctlen, char *filename, size_t fnlen);

/* The top-level header fields in order. *out is an array of *n entries;
 * free with mime_headers_free. TERN_OK or TERN_ENOMEM. */
int mime_headers(const char *raw, size_t len, struct mime_header **out, size_t *n);
void mime_headers_free(struct mime_header *h, size_t n);

/* ------------------------------------------------------------ writing
 *
 * struct mime_writer: the one writer of MIME text tern generates (DSNs in
 * queue/bounce.c, API mail in http/send.c). The first error sticks and
 * makes every later call a no-op; check mime_writer_status() once at the
 * end. col counts bytes since the last line end, for folding.
 */
struct mime_writer {
	struct tbuf *b;
	int rc;
	size_t col;
};

void mime_writer_init(struct mime_writer *w, struct tbuf *b);
/* TERN_OK, or the first error any call met. */
int mime_writer_status(const struct mime_writer *w);
/* Records rc as the error unless one is recorded already. */
void mime_writer_fail(struct mime_writer *w, int rc);
void mime_put(struct mime_writer *w, const void *p, size_t n);
void mime_puts(struct mime_writer *w, const char *s);
void mime_crlf(struct mime_writer *w);
void mime_printf(struct mime_writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* RFC 2047 "B" encoded words of UTF-8 text, at most 75 characters each,
 * separated by a folding CRLF SP; nothing for n == 0. */
void mime_put_encoded_words(struct mime_writer *w, const char *s, size_t n);
/* A base64 body in lines of 76 characters (no CRLF after the last). */
void mime_put_base64_body(struct mime_writer *w, const void *data, size_t n);
/* A quoted-printable body (core/codec's encoder). */
void mime_put_qp_body(struct mime_writer *w, const void *data, size_t n);
/* "--B" CRLF before a part, or "--B--" after the last (last); every line
 * but the first is preceded by the CRLF that ends the previous part. */
void mime_put_boundary(struct mime_writer *w, const char *boundary, bool first, bool last);

#endif
