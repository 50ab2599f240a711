/*
 * fuzz_mime_lite.c — libFuzzer target for the archive's cheap MIME reading
 * (src/mime/lite.c): parse any bytes as a message. Invariants: parsing
 * never fails on malformed input (only on memory); every string field is
 * set, valid UTF-8 without a NUL inside; header fields (subject, message
 * id, every name and address) hold no control byte; the text and the HTML
 * are at most MIME_LITE_TEXT_MAX bytes; the snippet is at most
 * MIME_SNIPPET_CHARS characters.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "mime/lite.h"
#include "mime/mime.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Valid UTF-8 (no overlongs, no surrogates, at most U+10FFFF); chars counts. */
static int utf8_ok(const char *s, size_t *chars)
{
	const unsigned char *p = (const unsigned char *)s;
	*chars = 0;
	while (*p) {
		unsigned c = *p, k = c < 0x80                 ? 1
		                     : c >= 0xc2 && c <= 0xdf ? 2
		                     : c >= 0xe0 && c <= 0xef ? 3
		                     : c >= 0xf0 && c <= 0xf4 ? 4
		                                              : 0;
		if (!k)
			return 0;
		unsigned v = k == 1 ? c : c & (0xff >> (k + 1));
		for (unsigned i = 1; i < k; i++) {
			if ((p[i] & 0xc0) != 0x80)
				return 0;
			v = v << 6 | (p[i] & 0x3f);
		}
		if ((k == 3 && (v < 0x800 || (v >= 0xd800 && v <= 0xdfff))) ||
		    (k == 4 && (v < 0x10000 || v > 0x10ffff)))
			return 0;
		p += k;
		(*chars)++;
	}
	return 1;
}

static void field(const char *s, int header)
{
	size_t n;
	if (!s || !utf8_ok(s, &n))
		abort();
	for (const unsigned char *p = (const unsigned char *)s; header && *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			abort();
}

static void addrs(const struct mime_addrs *a)
{
	for (size_t i = 0; i < a->n; i++) {
		field(a->v[i].name, 1);
		field(a->v[i].addr, 1);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 512 * 1024)
		return 0;
	struct mime_msg m;
	int rc = mime_lite_parse((const char *)data, size, &m);
	if (rc != TERN_OK && rc != TERN_ENOMEM)
		abort();
	if (rc == TERN_OK) {
		field(m.subject, 1);
		field(m.message_id, 1);
		field(m.from.name, 1);
		field(m.from.addr, 1);
		addrs(&m.to);
		addrs(&m.cc);
		addrs(&m.bcc);
		addrs(&m.reply_to);
		field(m.text, 0);
		field(m.html, 0);
		size_t chars;
		if (!m.snippet || !utf8_ok(m.snippet, &chars) || chars > MIME_SNIPPET_CHARS)
			abort();
		if (strlen(m.text) > MIME_LITE_TEXT_MAX || strlen(m.html) > MIME_LITE_TEXT_MAX)
			abort();
		for (size_t i = 0; i < m.n_parts; i++)
			if (!m.parts[i].content_type || !m.parts[i].filename ||
			    !m.parts[i].content_id)
				abort();
	}
	mime_msg_free(&m);
	return 0;
}
