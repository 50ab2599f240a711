/*
 * websocket.h — the pure half of RFC 6455 for the capture server's
 * /api/events: the opening handshake's accept value, the frame header
 * parser (client frames) and the frame header writer (server frames).
 * No I/O, no allocation; server.c does the connection work.
 */
#ifndef TERN_HTTP_WEBSOCKET_H
#define TERN_HTTP_WEBSOCKET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_ACCEPT_LEN 28 /* base64 of a SHA-1 digest */
#define WS_HEADER_MAX 14 /* 2 + 8 (64-bit length) + 4 (mask) */

enum ws_opcode {
	WS_OP_CONT = 0x0,
	WS_OP_TEXT = 0x1,
	WS_OP_BINARY = 0x2,
	WS_OP_CLOSE = 0x8,
	WS_OP_PING = 0x9,
	WS_OP_PONG = 0xA,
};

/* Close status codes we send (RFC 6455 §7.4.1). */
#define WS_CLOSE_NORMAL 1000
#define WS_CLOSE_PROTOCOL 1002
#define WS_CLOSE_TOO_BIG 1009

/*
 * ws_accept_key: the Sec-WebSocket-Accept value for a Sec-WebSocket-Key
 * value (key, n bytes; surrounding spaces allowed): base64(SHA-1(key +
 * WS_GUID)). The key must be the base64 of 16 bytes (§4.2.1 item 5).
 * Writes WS_ACCEPT_LEN characters and a NUL into out; TERN_OK or
 * TERN_ESYNTAX.
 */
int ws_accept_key(const char *key, size_t n, char out[WS_ACCEPT_LEN + 1]);

/* Whether a comma-separated header value (Connection, Upgrade) holds the
 * token (case-insensitive), as "keep-alive, Upgrade" does. */
bool ws_header_has_token(const char *value, const char *token);

struct ws_frame {
	bool fin;
	unsigned opcode;
	bool masked;
	uint8_t mask[4];
	size_t header_len;    /* bytes before the payload */
	uint64_t payload_len; /* bytes of payload after the header */
};

/*
 * ws_frame_parse: the header of the client frame at (p, n). Returns
 * TERN_OK with f filled when the whole header is there (the payload may
 * still be arriving), or TERN_ENOTFOUND while more bytes are needed.
 * Protocol errors are TERN_ESYNTAX (reserved bits
 * set, unknown opcode, unmasked client frame, control frame fragmented or
 * longer than 125, non-minimal length, 64-bit length with the top bit
 * set); a payload longer than max_payload is TERN_ELIMIT.
 */
int ws_frame_parse(const uint8_t *p, size_t n, uint64_t max_payload, struct ws_frame *f);

/* XORs n payload bytes with the mask, starting at payload offset off. */
void ws_unmask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t off);

/* The header of an unmasked server frame (FIN set) of opcode with len
 * payload bytes, into hdr; returns its length (2, 4 or 10). */
size_t ws_frame_header(unsigned opcode, uint64_t len, uint8_t hdr[WS_HEADER_MAX]);

#endif
