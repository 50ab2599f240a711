/*
 * fuzz_privsep_msg.c — libFuzzer target for the messages the privileged
 * parent sends its child (privsep_msg_header, privsep_msg_decode_bundle in
 * src/core/privsep.c).
 *
 * Input: a whole message (header + body). Beyond "no crash, no leak", it
 * checks what the child relies on: a header is accepted only with a body
 * length within PRIVSEP_MSG_MAX; a body decodes only if it is the one
 * encoding of its bundle (encode(decode(body)) == body), every entry keeps
 * the files.h limits, and a failed decode leaves nothing behind.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/files.h"
#include "core/privsep.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "invariant failed: %s (line %d)\n", #cond, __LINE__);      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static void check_body(const uint8_t *body, size_t len)
{
	struct file_bundle *b = (struct file_bundle *)&b;
	int rc = privsep_msg_decode_bundle(body, len, &b);
	if (rc != TERN_OK) {
		CHECK(b == NULL);
		CHECK(rc == TERN_ESYNTAX || rc == TERN_ELIMIT || rc == TERN_ENOMEM);
		return;
	}
	size_t n = file_bundle_count(b), total = 0;
	CHECK(n <= FILES_MAX_COUNT);
	for (size_t i = 0; i < n; i++) {
		const char *path, *d;
		size_t plen, dlen;
		int en;
		file_bundle_get(b, i, &path, &plen, &en, &d, &dlen);
		CHECK(plen >= 1 && plen <= FILES_MAX_PATH);
		CHECK(memchr(path, '\0', plen) == NULL && path[plen] == '\0');
		CHECK(en >= 0 && en <= 4095);
		CHECK(en == 0 ? d != NULL && d[dlen] == '\0' : dlen == 0);
		total += dlen;
	}
	CHECK(total <= FILES_MAX_TOTAL);
	struct tbuf out = TBUF_INIT(PRIVSEP_HDR_LEN + PRIVSEP_MSG_MAX);
	CHECK(privsep_msg_encode_bundle(b, &out) == TERN_OK);
	CHECK(out.len == PRIVSEP_HDR_LEN + len);
	CHECK(memcmp(out.data + PRIVSEP_HDR_LEN, body, len) == 0);
	unsigned type;
	size_t blen;
	CHECK(privsep_msg_header(out.data, &type, &blen) == TERN_OK);
	CHECK(type == PRIVSEP_MSG_BUNDLE && blen == len);
	tbuf_free(&out);
	file_bundle_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size >= PRIVSEP_HDR_LEN) {
		unsigned type = 0;
		size_t blen = 0;
		int rc = privsep_msg_header(data, &type, &blen);
		CHECK(rc == TERN_OK || rc == TERN_ESYNTAX || rc == TERN_ELIMIT);
		if (rc == TERN_OK) {
			CHECK(type == PRIVSEP_MSG_BUNDLE && blen <= PRIVSEP_MSG_MAX);
			if (blen == size - PRIVSEP_HDR_LEN)
				check_body(data + PRIVSEP_HDR_LEN, blen);
		}
	}
	/* The body parser on its own, whatever the header says. */
	check_body(data, size);
	return 0;
}
