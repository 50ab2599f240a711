/*
 * test_websocket.c — the pure RFC 6455 pieces of /api/events
 * (src/http/websocket.c): the handshake's accept value (the RFC's own
 * example), client frame headers (the RFC §5.7 examples, masked as a
 * client must), the refusals a server owes, and server frame headers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/err.h"
#include "http/websocket.h"

static void accept_key_matches_rfc_example(void **state)
{
	char out[WS_ACCEPT_LEN + 1];
	const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
	assert_int_equal(ws_accept_key(key, strlen(key), out), TERN_OK);
	assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
	/* spaces around a header value are not part of it */
	assert_int_equal(ws_accept_key(" dGhlIHNhbXBsZSBub25jZQ== ", 26, out), TERN_OK);
	assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void accept_key_refuses_bad_keys(void **state)
{
	char out[WS_ACCEPT_LEN + 1];
	const char *bad[] = {"", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZQ=!",
	                     "dGhlIHNhbXBsZSBub2*jZQ==", "dGhlIHNhbXBsZSBub25jZQ==AAAA"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(ws_accept_key(bad[i], strlen(bad[i]), out), TERN_ESYNTAX);
}

static void header_tokens(void **state)
{
	assert_true(ws_header_has_token("Upgrade", "upgrade"));
	assert_true(ws_header_has_token("keep-alive, Upgrade", "upgrade"));
	assert_true(ws_header_has_token(" upgrade ,close", "upgrade"));
	assert_false(ws_header_has_token("keep-alive", "upgrade"));
	assert_false(ws_header_has_token("upgraded", "upgrade"));
	assert_false(ws_header_has_token("", "upgrade"));
}

static void parses_masked_hello(void **state)
{
	/* RFC 6455 §5.7: a single-frame masked text message "Hello" */
	uint8_t fr[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
	struct ws_frame f;
	for (size_t n = 0; n < 6; n++)
		assert_int_equal(ws_frame_parse(fr, n, 1024, &f), TERN_ENOTFOUND);
	assert_int_equal(ws_frame_parse(fr, sizeof(fr), 1024, &f), TERN_OK);
	assert_true(f.fin);
	assert_int_equal(f.opcode, WS_OP_TEXT);
	assert_int_equal(f.header_len, 6);
	assert_int_equal(f.payload_len, 5);
	ws_unmask(fr + 6, 5, f.mask, 0);
	assert_memory_equal(fr + 6, "Hello", 5);
}

static void parses_extended_lengths(void **state)
{
	uint8_t fr16[] = {0x82, 0xfe, 0x01, 0x00, 1, 2, 3, 4};
	uint8_t fr64[] = {0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4};
	struct ws_frame f;
	assert_int_equal(ws_frame_parse(fr16, sizeof(fr16), 65536, &f), TERN_OK);
	assert_int_equal(f.payload_len, 256);
	assert_int_equal(f.header_len, 8);
	assert_int_equal(ws_frame_parse(fr64, sizeof(fr64), 65536, &f), TERN_OK);
	assert_int_equal(f.payload_len, 65536);
	assert_int_equal(f.header_len, 14);
	/* over the cap: the server closes with 1009 */
	assert_int_equal(ws_frame_parse(fr64, sizeof(fr64), 65535, &f), TERN_ELIMIT);
}

static void refuses_what_a_server_must(void **state)
{
	struct ws_frame f;
	uint8_t unmasked[] = {0x81, 0x05, 'H', 'e', 'l', 'l', 'o'};
	uint8_t rsv[] = {0xc1, 0x80, 0, 0, 0, 0};
	uint8_t opcode3[] = {0x83, 0x80, 0, 0, 0, 0};
	uint8_t ping_frag[] = {0x09, 0x80, 0, 0, 0, 0};
	uint8_t ping_long[] = {0x89, 0xfe, 0x00, 0x80, 0, 0, 0, 0};
	uint8_t not_minimal[] = {0x82, 0xfe, 0x00, 0x10, 0, 0, 0, 0};
	uint8_t top_bit[] = {0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
	assert_int_equal(ws_frame_parse(unmasked, sizeof(unmasked), 1024, &f), TERN_ESYNTAX);
	assert_int_equal(ws_frame_parse(rsv, sizeof(rsv), 1024, &f), TERN_ESYNTAX);
	assert_int_equal(ws_frame_parse(opcode3, sizeof(opcode3), 1024, &f), TERN_ESYNTAX);
	assert_int_equal(ws_frame_parse(ping_frag, sizeof(ping_frag), 1024, &f), TERN_ESYNTAX);
	assert_int_equal(ws_frame_parse(ping_long, sizeof(ping_long), 1024, &f), TERN_ESYNTAX);
	assert_int_equal(ws_frame_parse(not_minimal, sizeof(not_minimal), 1024, &f), TERN_ESYNTAX);
	assert_int_equal(ws_frame_parse(top_bit, sizeof(top_bit), UINT64_MAX, &f), TERN_ESYNTAX);
}

static void unmask_continues_at_offset(void **state)
{
	uint8_t mask[4] = {1, 2, 3, 4};
	uint8_t a[6] = {0}, b[6] = {0};
	ws_unmask(a, 6, mask, 0);
	ws_unmask(b, 3, mask, 0);
	ws_unmask(b + 3, 3, mask, 3);
	assert_memory_equal(a, b, 6);
	assert_int_equal(a[4], 1);
}

static void writes_server_headers(void **state)
{
	uint8_t h[WS_HEADER_MAX];
	assert_int_equal(ws_frame_header(WS_OP_TEXT, 5, h), 2);
	assert_int_equal(h[0], 0x81);
	assert_int_equal(h[1], 0x05); /* never masked */
	assert_int_equal(ws_frame_header(WS_OP_BINARY, 256, h), 4);
	uint8_t e16[] = {0x82, 0x7e, 0x01, 0x00};
	assert_memory_equal(h, e16, 4);
	assert_int_equal(ws_frame_header(WS_OP_BINARY, 65536, h), 10);
	uint8_t e64[] = {0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0};
	assert_memory_equal(h, e64, 10);
	assert_int_equal(ws_frame_header(WS_OP_PING, 0, h), 2);
	assert_int_equal(h[0], 0x89);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(accept_key_matches_rfc_example),
	    cmocka_unit_test(accept_key_refuses_bad_keys),
	    cmocka_unit_test(header_tokens),
	    cmocka_unit_test(parses_masked_hello),
	    cmocka_unit_test(parses_extended_lengths),
	    cmocka_unit_test(refuses_what_a_server_must),
	    cmocka_unit_test(unmask_continues_at_offset),
	    cmocka_unit_test(writes_server_headers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
