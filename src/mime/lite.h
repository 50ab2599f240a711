/*
 * lite.h — the cheap MIME reading for a search index (the archive's writer,
 * store/archive.c): the same struct mime_msg as mime_parse (mime.h), read
 * straight from the bytes without GMime's object tree — the header block's
 * Subject, From, To, Cc, Bcc, Reply-To, Message-ID (RFC 2047 encoded words,
 * any charset iconv knows), and the text and HTML bodies of the MIME tree
 * (multipart, quoted-printable, base64, charsets to UTF-8) up to
 * MIME_LITE_TEXT_MAX bytes each, with attachments counted and named.
 *
 * Differences from mime_parse, none of which the index reads: has_date is
 * false, return_path and the List-Unsubscribe fields are "", parts have no
 * size or checksums, and text past MIME_LITE_TEXT_MAX is not decoded.
 *
 * Pure: a function of (raw, len); never touches the disk, never fails on
 * malformed input (only on memory), never reads outside raw[0..len).
 */
#ifndef TERN_MIME_LITE_H
#define TERN_MIME_LITE_H

#include <stddef.h>

#include "mime/mime.h"

/* Decoded text (and HTML) kept per message: what msg_index.c indexes. */
#define MIME_LITE_TEXT_MAX 65536

/* Fills out (zeroed first) from raw. TERN_OK or TERN_ENOMEM; free out
 * with mime_msg_free (mime.h) either way. */
int mime_lite_parse(const char *raw, size_t len, struct mime_msg *out);

#endif
