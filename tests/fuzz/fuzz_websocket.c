/*
 * fuzz_websocket.c — libFuzzer target for the RFC 6455 frame parser and
 * the handshake key (src/http/websocket.c). The input is a stream of
 * client frames, parsed as server.c does: header, then payload skipped.
 *
 * Besides "no crash, no sanitizer report", it checks: a parsed header is
 * 6..14 bytes, masked, within the payload cap; control frames are final
 * and at most 125 bytes; the header writer's output re-parses (masked
 * copy) to the same opcode and length.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "http/websocket.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CAP 65536u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char acc[WS_ACCEPT_LEN + 1];
	if (ws_accept_key((const char *)data, size < 40 ? size : 40, acc) == TERN_OK &&
	    strlen(acc) != WS_ACCEPT_LEN)
		abort();
	size_t off = 0;
	while (off < size) {
		struct ws_frame f;
		int rc = ws_frame_parse(data + off, size - off, CAP, &f);
		if (rc != TERN_OK) {
			if (rc != TERN_ENOTFOUND && rc != TERN_ESYNTAX && rc != TERN_ELIMIT)
				abort();
			break;
		}
		if (f.header_len < 6 || f.header_len > WS_HEADER_MAX || !f.masked ||
		    f.payload_len > CAP)
			abort();
		if (f.opcode >= 8 && (!f.fin || f.payload_len > 125))
			abort();
		/* what we would send back re-parses to the same frame */
		uint8_t h[WS_HEADER_MAX + 4];
		size_t hl = ws_frame_header(f.opcode, f.payload_len, h);
		h[1] |= 0x80;
		memset(h + hl, 0, 4);
		struct ws_frame g;
		if (ws_frame_parse(h, hl + 4, CAP, &g) != TERN_OK || g.opcode != f.opcode ||
		    g.payload_len != f.payload_len || g.header_len != hl + 4)
			abort();
		if (f.payload_len > size - off - f.header_len)
			break;
		uint8_t buf[256];
		size_t n = f.payload_len < sizeof(buf) ? (size_t)f.payload_len : sizeof(buf);
		memcpy(buf, data + off + f.header_len, n);
		ws_unmask(buf, n, f.mask, 0);
		off += f.header_len + (size_t)f.payload_len;
	}
	return 0;
}
