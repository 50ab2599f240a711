/*
 * fuzz_chunk_encode.c — libFuzzer target for smtp_chunk_encode, the BDAT
 * chunk of a non-BINARYMIME message (remote delivery's one write).
 *
 * Beyond "no crash", it checks what a peer depends on:
 *   - the count returned is the number of bytes emitted, runs are never empty;
 *   - the chunk has CRLF line ends only (no bare CR or LF) and no NUL, and
 *     ends with CRLF unless it is empty;
 *   - stuffing the chunk's lines and adding ".\r\n" gives smtp_data_encode's
 *     output byte for byte: the message is the same whichever way it is sent.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "smtp/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
	if (!cond)
		abort();
}

static void collect(void *arg, const char *p, size_t n)
{
	check(n > 0);
	check(tbuf_append(arg, p, n) == TERN_OK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	struct tbuf chunk, text, stuffed;
	tbuf_init(&chunk, 1 << 22);
	tbuf_init(&text, 1 << 22);
	tbuf_init(&stuffed, 1 << 22);
	uint64_t n = smtp_chunk_encode(in, size, collect, &chunk);
	check(n == chunk.len);
	const char *c = chunk.data;
	for (size_t i = 0; i < chunk.len; i++) {
		check(c[i] != '\0');
		if (c[i] == '\r')
			check(i + 1 < chunk.len && c[i + 1] == '\n');
		if (c[i] == '\n')
			check(i > 0 && c[i - 1] == '\r');
	}
	check(chunk.len == 0 || (chunk.len >= 2 && c[chunk.len - 1] == '\n'));
	smtp_data_encode(in, size, collect, &text);
	int bol = 1;
	for (size_t i = 0; i < chunk.len; i++) {
		if (bol && c[i] == '.')
			collect(&stuffed, ".", 1);
		collect(&stuffed, c + i, 1);
		bol = c[i] == '\n';
	}
	collect(&stuffed, ".\r\n", 3);
	check(stuffed.len == text.len && memcmp(stuffed.data, text.data, text.len) == 0);
	tbuf_free(&chunk);
	tbuf_free(&text);
	tbuf_free(&stuffed);
	return 0;
}
