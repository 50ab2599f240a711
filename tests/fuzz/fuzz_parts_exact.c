/*
 * fuzz_parts_exact.c — libFuzzer target for src/mime/parts_exact.c (where
 * each MIME part lies in a raw message) and mime.c's use of it (any bytes
 * as a message: mime_parse, then every leaf through mime_part_get).
 * Beyond "no crash, no leak" it checks:
 *   - every span lies inside the input, and its body after its header;
 *   - PartIDs are unique;
 *   - the first-Content-Type copy has the input's length and differs from
 *     it only at the recorded duplicate field names;
 *   - every part mime_parse lists is found by mime_part_get, and its bytes
 *     are as long as the listed Size.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "mime/mime.h"
#include "mime/parts_exact.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "invariant failed: %s (line %d)\n", #cond, __LINE__);      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 64 * 1024)
		return 0;
	const char *raw = (const char *)data;
	struct mime_spans s;
	if (mime_spans(raw, size, &s) != TERN_OK)
		return 0;
	for (size_t i = 0; i < s.n; i++) {
		CHECK(s.v[i].hdr_off <= s.v[i].body_off);
		CHECK(s.v[i].body_off + s.v[i].body_len <= size);
		for (size_t j = 0; j < i; j++)
			CHECK(strcmp(s.v[i].part_id, s.v[j].part_id) != 0);
	}
	char *c = mime_first_ct_copy(raw, size, &s);
	if (c) {
		size_t k = 0;
		for (size_t i = 0; i < size; i++) {
			if (c[i] == raw[i])
				continue;
			while (k < s.n_dups && s.dups[k] + 12 <= i)
				k++;
			CHECK(k < s.n_dups && s.dups[k] <= i);
		}
		free(c);
	}
	mime_spans_free(&s);

	struct mime_msg m;
	if (mime_parse(raw, size, 0, &m) == TERN_OK) {
		for (size_t i = 0; i < m.n_parts; i++) {
			if (m.parts[i].role == MIME_ROLE_CONTAINER)
				continue;
			struct tbuf out = TBUF_INIT(SIZE_MAX / 2);
			char ct[256], fn[256];
			int rc = mime_part_get(raw, size, m.parts[i].part_id, &out, ct, sizeof(ct),
			                       fn, sizeof(fn));
			CHECK(rc == TERN_OK || rc == TERN_ENOMEM);
			CHECK(rc != TERN_OK || out.len == m.parts[i].size);
			tbuf_free(&out);
		}
	}
	mime_msg_free(&m);
	return 0;
}
