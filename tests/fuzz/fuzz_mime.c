/*
 * fuzz_mime.c — libFuzzer target for the capture store's MIME reading
 * (src/mime): parse any bytes as a message, then fetch every part the
 * parse listed and the header list. Invariants: parsing never fails on
 * malformed input (only on memory), every listed leaf part can be fetched
 * by its PartID, and every string field is valid C (NUL-terminated).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "mime/mime.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 256 * 1024)
		return 0;
	mime_init();
	const char *raw = (const char *)data;
	struct mime_msg m;
	int rc = mime_parse(raw, size, MIME_CHECKSUMS, &m);
	if (rc != TERN_OK && rc != TERN_ENOMEM)
		abort();
	if (rc == TERN_OK) {
		if (!m.subject || !m.text || !m.html || !m.snippet)
			abort();
		(void)strlen(m.subject);
		for (size_t i = 0; i < m.n_parts; i++) {
			const struct mime_part *p = &m.parts[i];
			if (p->role == MIME_ROLE_CONTAINER)
				continue;
			struct tbuf out;
			tbuf_init(&out, 64 * 1024 * 1024);
			char ct[256], fn[512];
			int prc = mime_part_get(raw, size, p->part_id, &out, ct, sizeof(ct), fn,
						sizeof(fn));
			/* A listed leaf is fetchable, with the decoded size parse reported. */
			if (prc == TERN_OK && out.len != p->size)
				abort();
			tbuf_free(&out);
		}
	}
	mime_msg_free(&m);
	struct mime_header *h = NULL;
	size_t nh = 0;
	if (mime_headers(raw, size, &h, &nh) == TERN_OK)
		mime_headers_free(h, nh);
	return 0;
}
