/*
 * fuzz_milter_reply.c — libFuzzer target for the milter reply decoder and
 * framing (src/policy/milter_codec.c) over arbitrary bytes, as a broken or
 * hostile milter could send them.
 *
 * The input is a stream of packets. Beyond "no crash, no sanitizer report",
 * it checks what the client relies on:
 *   - framing never claims more bytes than were given, and every packet it
 *     finds has a length within the limit;
 *   - every decoded reply's views lie inside the packet, strings are
 *     NUL-terminated in place;
 *   - a header name is 1..MILTER_HDR_NAME_MAX printable bytes without ':'
 *     or space; a header value has no CR or LF that is not part of a fold
 *     (line end followed by SP or HT), so no header or body can be smuggled;
 *   - a REPLYCODE's code is 400..599 and matches its first three bytes;
 *   - decoding is deterministic.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "policy/milter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_inside(const uint8_t *d, size_t len, const char *p, size_t n)
{
	if (!p)
		return;
	if ((const uint8_t *)p < d || (const uint8_t *)p + n > d + len)
		abort();
}

static void check(uint8_t cmd, const uint8_t *d, size_t len)
{
	struct milter_reply r, r2;
	int rc = milter_reply_decode(cmd, d, len, &r);
	int rc2 = milter_reply_decode(cmd, d, len, &r2);
	if (rc != rc2 || (rc == TERN_OK && memcmp(&r, &r2, sizeof(r)) != 0))
		abort();
	if (rc != TERN_OK) {
		if (rc != TERN_ESYNTAX)
			abort();
		return;
	}
	check_inside(d, len, r.name, r.name_len);
	if (r.kind != MILTER_R_REPLBODY)
		check_inside(d, len, r.value, r.value_len + (r.value ? 1 : 0));
	if (r.name) {
		if (r.name_len == 0 || r.name_len > MILTER_HDR_NAME_MAX || r.name[r.name_len] != 0)
			abort();
		for (size_t i = 0; i < r.name_len; i++) {
			unsigned char c = (unsigned char)r.name[i];
			if (c < 33 || c > 126 || c == ':')
				abort();
		}
	}
	if (r.kind == MILTER_R_ADDHEADER || r.kind == MILTER_R_INSHEADER ||
	    r.kind == MILTER_R_CHGHEADER) {
		if (!r.name || !r.value || r.value[r.value_len] != 0)
			abort();
		for (size_t i = 0; i < r.value_len; i++) {
			if (r.value[i] == '\r' && (i + 1 >= r.value_len || r.value[i + 1] != '\n'))
				abort();
			if (r.value[i] == '\n' &&
			    (i + 1 >= r.value_len ||
			     (r.value[i + 1] != ' ' && r.value[i + 1] != '\t')))
				abort();
		}
	}
	if (r.kind == MILTER_R_REPLYCODE) {
		if (r.code < 400 || r.code > 599 || r.value_len < 5)
			abort();
		unsigned c = (unsigned)(r.value[0] - '0') * 100 +
		             (unsigned)(r.value[1] - '0') * 10 + (unsigned)(r.value[2] - '0');
		if (c != r.code)
			abort();
	}
	(void)milter_reply_kind_name(r.kind);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Each packet decoded from its own heap copy, so ASan sees any read
	 * past its end. */
	size_t off = 0;
	while (off < size) {
		uint8_t cmd;
		const uint8_t *d;
		size_t dl, used;
		enum milter_frame_rc fr =
		    milter_frame_parse(data + off, size - off, 70000, &cmd, &d, &dl, &used);
		if (fr != MILTER_FRAME_OK)
			break;
		if (used > size - off || used != dl + 5 || used - 4 > 70000)
			abort();
		uint8_t *copy = malloc(dl ? dl : 1);
		if (!copy)
			return 0;
		memcpy(copy, d, dl);
		check(cmd, copy, dl);
		free(copy);
		off += used;
	}
	/* And the whole input as one reply of each kind tern knows. */
	static const uint8_t kinds[] = "acrtdpsy4fhimq+2-eblOZ";
	if (size >= 1) {
		uint8_t *copy = malloc(size - 1 ? size - 1 : 1);
		if (!copy)
			return 0;
		memcpy(copy, data + 1, size - 1);
		check(kinds[data[0] % (sizeof(kinds) - 1)], copy, size - 1);
		free(copy);
	}
	return 0;
}
