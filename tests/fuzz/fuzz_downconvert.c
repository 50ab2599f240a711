/*
 * fuzz_downconvert.c — libFuzzer target for the 8-bit -> 7-bit MIME
 * downconversion (smtp_downconvert_8bit) and the codecs under it.
 *
 * Properties checked beyond "no crash, no leak":
 *   - on TERN_OK the output holds no byte >= 0x80 and no NUL;
 *   - an input with no 8-bit byte and no NUL comes out byte for byte the
 *     same; one with a NUL is refused;
 *   - on failure the caller's buffer is exactly as before (the bytes
 *     already in it are kept, nothing is appended), and the only failures
 *     are TERN_EINVAL or the output cap (TERN_ELIMIT);
 *   - converting the output again changes nothing (it is 7-bit);
 *   - a small output cap gives TERN_ELIMIT or the same output;
 *   - quoted-printable of the raw input decodes back to it, with 7-bit
 *     lines of at most 76 characters; base64 decoding, when it accepts
 *     the input, re-encodes to exactly the input.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/codec.h"
#include "core/err.h"
#include "smtp/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
	if (!cond)
		abort();
}

static void check_codecs(const char *in, size_t size)
{
	struct tbuf enc = TBUF_INIT(1u << 24), dec = TBUF_INIT(1u << 24);
	check(tern_qp_encode(in, size, &enc) == TERN_OK);
	size_t col = 0;
	for (size_t i = 0; i < enc.len; i++) {
		unsigned char c = (unsigned char)enc.data[i];
		check(c < 0x80 && c != 0 && c != '\n');
		if (c == '\r') {
			check(i + 1 < enc.len && enc.data[i + 1] == '\n');
			check(i == 0 || (enc.data[i - 1] != ' ' && enc.data[i - 1] != '\t'));
			i++;
			col = 0;
			continue;
		}
		check(++col <= 76);
	}
	check(tern_qp_decode(enc.data ? enc.data : "", enc.len, &dec) == TERN_OK);
	check(dec.len == size && (size == 0 || memcmp(dec.data, in, size) == 0));
	tbuf_free(&enc);
	tbuf_free(&dec);

	if (tern_base64_decode(in, size, &dec) == TERN_OK) {
		check(tern_base64_encode(dec.data ? dec.data : "", dec.len, &enc) == TERN_OK);
		check(enc.len == size && (size == 0 || memcmp(enc.data, in, size) == 0));
	} else {
		check(dec.len == 0);
	}
	tbuf_free(&enc);
	tbuf_free(&dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	bool eight = false, nul = false;
	for (size_t i = 0; i < size; i++) {
		eight |= data[i] >= 0x80;
		nul |= data[i] == 0;
	}

	struct tbuf out = TBUF_INIT(1u << 24);
	check(tbuf_append(&out, "PRE", 3) == TERN_OK);
	int rc = smtp_downconvert_8bit(in, size, &out);
	check(out.len >= 3 && memcmp(out.data, "PRE", 3) == 0);
	if (nul)
		check(rc == TERN_EINVAL);
	if (!eight && !nul) {
		check(rc == TERN_OK);
		check(out.len - 3 == size && (size == 0 || memcmp(out.data + 3, in, size) == 0));
	}
	if (rc != TERN_OK) {
		check(rc == TERN_EINVAL);
		check(out.len == 3);
	} else {
		for (size_t i = 3; i < out.len; i++)
			check((unsigned char)out.data[i] < 0x80 && out.data[i] != 0);
		/* Already 7-bit: a second pass is the identity. */
		struct tbuf again = TBUF_INIT(1u << 24);
		check(smtp_downconvert_8bit(out.data + 3, out.len - 3, &again) == TERN_OK);
		check(again.len == out.len - 3 &&
		      (again.len == 0 || memcmp(again.data, out.data + 3, again.len) == 0));
		tbuf_free(&again);
		/* A cap below the output fails cleanly; one at it succeeds. */
		size_t olen = out.len - 3;
		struct tbuf capped = TBUF_INIT(olen / 2);
		int crc = smtp_downconvert_8bit(in, size, &capped);
		check(olen / 2 == olen ? crc == TERN_OK : crc == TERN_ELIMIT);
		check(crc == TERN_OK || capped.len == 0);
		tbuf_free(&capped);
		struct tbuf exact = TBUF_INIT(olen);
		check(smtp_downconvert_8bit(in, size, &exact) == TERN_OK);
		check(exact.len == olen &&
		      (olen == 0 || memcmp(exact.data, out.data + 3, olen) == 0));
		tbuf_free(&exact);
	}
	tbuf_free(&out);

	check_codecs(in, size);
	return 0;
}
