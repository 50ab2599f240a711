/*
 * test_codec.c — base64 and quoted-printable: the RFC 4648 §10 vectors,
 * strict decoding (bad characters, bad padding, non-canonical bits),
 * round trips, the RFC 2045 §6.7 rules of the QP encoder (76-column lines,
 * trailing whitespace, '=', 8-bit, CR LF kept), and that a failing call
 * leaves the caller's buffer exactly as it was.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/codec.h"
#include "core/err.h"

#define S(lit) (lit), (sizeof(lit) - 1)

static uint64_t rng_state = 0x243F6A8885A308D3ull;

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* ------------------------------------------------------------- base64 */

static const struct {
	const char *plain;
	const char *b64;
} rfc4648_vectors[] = {
    {"", ""},
    {"f", "Zg=="},
    {"fo", "Zm8="},
    {"foo", "Zm9v"},
    {"foob", "Zm9vYg=="},
    {"fooba", "Zm9vYmE="},
    {"foobar", "Zm9vYmFy"},
};

static void test_base64_rfc4648_vectors_encode_and_decode(void **state)
{
	for (size_t i = 0; i < sizeof(rfc4648_vectors) / sizeof(rfc4648_vectors[0]); i++) {
		const char *pl = rfc4648_vectors[i].plain, *b = rfc4648_vectors[i].b64;
		struct tbuf out = TBUF_INIT(1024);
		assert_int_equal(tern_base64_encode(pl, strlen(pl), &out), TERN_OK);
		assert_int_equal(out.len, strlen(b));
		assert_int_equal(tern_base64_encoded_len(strlen(pl)), strlen(b));
		if (out.len)
			assert_memory_equal(out.data, b, out.len);
		tbuf_reset(&out);
		assert_int_equal(tern_base64_decode(b, strlen(b), &out), TERN_OK);
		assert_int_equal(out.len, strlen(pl));
		if (out.len)
			assert_memory_equal(out.data, pl, out.len);
		tbuf_free(&out);
	}
}

static void test_base64_sasl_plain_credentials(void **state)
{
	/* AUTH PLAIN's initial response for authzid "", user "tim", pass
	 * "tanstaaftanstaaf" (RFC 4616 §4 example). */
	static const char plain[] = "\0tim\0tanstaaftanstaaf";
	struct tbuf out = TBUF_INIT(1024);
	assert_int_equal(tern_base64_encode(plain, sizeof(plain) - 1, &out), TERN_OK);
	assert_string_equal(out.data, "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
	tbuf_free(&out);
}

static void test_base64_decode_rejects_malformed_input(void **state)
{
	static const char *bad[] = {
	    "Zg",       /* length not a multiple of 4 */
	    "Zg=",      /* ditto */
	    "Zm9v\r\n", /* whitespace */
	    "Zm 9",     /* space inside */
	    "Zm9-",     /* URL-safe alphabet is not this one */
	    "Zm9_",     /* ditto */
	    "Z===",     /* three pads */
	    "====",     /* only padding */
	    "Zg==Zm9v", /* padding in the middle */
	    "Z=g=",     /* '=' then data */
	    "Zh==",     /* non-zero bits under the padding */
	    "Zm9=",     /* ditto, one pad */
	    "Zm8\x80",  /* 8-bit */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct tbuf out = TBUF_INIT(1024);
		assert_int_equal(tbuf_append_str(&out, "keep"), TERN_OK);
		assert_int_equal(tern_base64_decode(bad[i], strlen(bad[i]), &out), TERN_ESYNTAX);
		assert_int_equal(out.len, 4);
		assert_string_equal(out.data, "keep");
		tbuf_free(&out);
	}
	/* A NUL byte is not part of the alphabet either. */
	struct tbuf out = TBUF_INIT(1024);
	assert_int_equal(tern_base64_decode("Zm\0v", 4, &out), TERN_ESYNTAX);
	tbuf_free(&out);
}

static void test_base64_round_trips_every_length_and_byte(void **state)
{
	unsigned char in[300];
	for (size_t n = 0; n < sizeof(in); n++) {
		for (size_t k = 0; k < n; k++)
			in[k] = (unsigned char)rng();
		struct tbuf enc = TBUF_INIT(4096), dec = TBUF_INIT(4096), re = TBUF_INIT(4096);
		assert_int_equal(tern_base64_encode(in, n, &enc), TERN_OK);
		for (size_t k = 0; k < enc.len; k++)
			assert_true((unsigned char)enc.data[k] < 0x80);
		assert_int_equal(tern_base64_decode(enc.data, enc.len, &dec), TERN_OK);
		assert_int_equal(dec.len, n);
		if (n)
			assert_memory_equal(dec.data, in, n);
		assert_int_equal(tern_base64_encode(dec.data, dec.len, &re), TERN_OK);
		assert_int_equal(re.len, enc.len);
		if (re.len)
			assert_memory_equal(re.data, enc.data, re.len);
		tbuf_free(&enc);
		tbuf_free(&dec);
		tbuf_free(&re);
	}
}

static void test_base64_appends_and_full_buffer_is_untouched(void **state)
{
	struct tbuf out = TBUF_INIT(8);
	assert_int_equal(tbuf_append_str(&out, "x:"), TERN_OK);
	assert_int_equal(tern_base64_encode("foo", 3, &out), TERN_OK);
	assert_string_equal(out.data, "x:Zm9v");
	assert_int_equal(tern_base64_encode("foo", 3, &out), TERN_ELIMIT);
	assert_string_equal(out.data, "x:Zm9v");
	assert_int_equal(tern_base64_decode("Zm9vYmFy", 8, &out), TERN_ELIMIT);
	assert_string_equal(out.data, "x:Zm9v");
	tbuf_free(&out);
}

/* ---------------------------------------------------- quoted-printable */

static char *repeat(char c, size_t n, const char *tail)
{
	size_t tl = strlen(tail);
	char *s = malloc(n + tl + 1);
	assert_non_null(s);
	memset(s, c, n);
	memcpy(s + n, tail, tl + 1);
	return s;
}

struct qp_case {
	const char *name;
	const char *in;
	size_t in_len;
	const char *want;
};

static void test_qp_encoder_vectors(void **state)
{
	const struct qp_case cases[] = {
	    {"empty", S(""), ""},
	    {"plain ascii is untouched", S("hello, world"), "hello, world"},
	    {"equals sign is encoded", S("a=b"), "a=3Db"},
	    {"8-bit bytes are uppercase hex", S("caf\xc3\xa9"), "caf=C3=A9"},
	    {"crlf stays a hard line break", S("a b\r\nc\r\n"), "a b\r\nc\r\n"},
	    {"trailing space before crlf", S("end \r\nx"), "end=20\r\nx"},
	    {"trailing tab at end of input", S("end\t"), "end=09"},
	    {"inner whitespace stays literal", S("a \t b"), "a \t b"},
	    {"bare lf and bare cr are kept as bytes", S("a\nb\rc"), "a=0Ab=0Dc"},
	    {"cr before crlf", S("a\r\r\nb"), "a=0D\r\nb"},
	    {"nul and del", S("\0\x7f"), "=00=7F"},
	    {"space before crlf at start", S(" \r\n"), "=20\r\n"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tbuf out = TBUF_INIT(4096);
		assert_int_equal(tern_qp_encode(cases[i].in, cases[i].in_len, &out), TERN_OK);
		if (out.len != strlen(cases[i].want) ||
		    (out.len && memcmp(out.data, cases[i].want, out.len) != 0))
			fail_msg("%s: got \"%s\" want \"%s\"", cases[i].name,
			         out.data ? out.data : "", cases[i].want);
		tbuf_free(&out);
	}
}

static void test_qp_soft_breaks_at_76_columns(void **state)
{
	struct {
		size_t n_a;
		const char *tail;
		const char *want_first; /* first output line, without its line end */
		const char *want_rest;
	} cases[] = {
	    /* 76 characters fit one line when no soft break must follow */
	    {76, "", NULL, ""},
	    /* 77: the 76th would need a '=' after it, so 75 + "=" */
	    {77, "", "75", "aa"},
	    {100, "", "75", NULL},
	    /* an =XX triplet is never split */
	    {74, "\xff", "74", "=FF"},
	    {73, "\xff", NULL, ""},
	    /* a space may end a line when a soft break follows it */
	    {74, " bbbbb", "74 ", "bbbbb"},
	    /* a line that a soft break starts never begins with "-" (it
	     * could be read as a MIME boundary "--b") */
	    {75, "--b", "75", "=2D-b"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *in = repeat('a', cases[i].n_a, cases[i].tail);
		struct tbuf out = TBUF_INIT(4096);
		assert_int_equal(tern_qp_encode(in, strlen(in), &out), TERN_OK);
		/* every line <= 76 characters, soft breaks or not */
		size_t col = 0;
		for (size_t k = 0; k < out.len; k++) {
			if (out.data[k] == '\r') {
				assert_true(k + 1 < out.len && out.data[k + 1] == '\n');
				k++;
				col = 0;
				continue;
			}
			col++;
			assert_true(col <= 76);
		}
		const char *eq = strstr(out.data, "=\r\n");
		if (cases[i].want_first == NULL) {
			if (cases[i].want_rest) /* no soft break at all */
				assert_null(eq);
		} else {
			assert_non_null(eq);
			size_t first = (size_t)(eq - out.data);
			char expect[128];
			size_t na = strtoul(cases[i].want_first, NULL, 10);
			memset(expect, 'a', na);
			tern_strlcpy(expect + na, cases[i].want_first + 2, sizeof(expect) - na);
			assert_int_equal(first, strlen(expect));
			assert_memory_equal(out.data, expect, first);
			if (cases[i].want_rest)
				assert_string_equal(eq + 3, cases[i].want_rest);
		}
		/* and the decoder gives the input back */
		struct tbuf dec = TBUF_INIT(4096);
		assert_int_equal(tern_qp_decode(out.data, out.len, &dec), TERN_OK);
		assert_string_equal(dec.data, in);
		tbuf_free(&dec);
		tbuf_free(&out);
		free(in);
	}
}

static void test_qp_round_trips_random_bytes(void **state)
{
	static const unsigned char alphabet[] = {'a',  ' ',  '\t', '\r', '\n', '=',
	                                         0x00, 0xc3, 0xa9, 0xff, '.',  'Z'};
	for (int iter = 0; iter < 2000; iter++) {
		unsigned char in[400];
		size_t n = (size_t)(rng() % sizeof(in));
		for (size_t k = 0; k < n; k++)
			in[k] = alphabet[rng() % sizeof(alphabet)];
		struct tbuf enc = TBUF_INIT(1 << 16), dec = TBUF_INIT(1 << 16);
		assert_int_equal(tern_qp_encode(in, n, &enc), TERN_OK);
		size_t col = 0;
		for (size_t k = 0; k < enc.len; k++) {
			unsigned char c = (unsigned char)enc.data[k];
			assert_true(c < 0x80);
			if (c == '\r') {
				assert_true(enc.data[k + 1] == '\n');
				/* no whitespace right before a line end */
				if (k > 0)
					assert_true(enc.data[k - 1] != ' ' &&
					            enc.data[k - 1] != '\t');
				k++;
				col = 0;
				continue;
			}
			assert_true(c != '\n' && c != 0);
			assert_true(++col <= 76);
		}
		if (enc.len)
			assert_true(enc.data[enc.len - 1] != ' ' && enc.data[enc.len - 1] != '\t');
		assert_int_equal(tern_qp_decode(enc.data, enc.len, &dec), TERN_OK);
		assert_int_equal(dec.len, n);
		if (n)
			assert_memory_equal(dec.data, in, n);
		tbuf_free(&enc);
		tbuf_free(&dec);
	}
}

static void test_qp_decoder_accepts_transport_forms_and_rejects_junk(void **state)
{
	const struct qp_case ok[] = {
	    {"lowercase hex", S("caf=c3=a9"), "caf\xc3\xa9"},
	    {"soft break with padding after =", S("ab= \r\ncd"), "abcd"},
	    {"transport whitespace dropped", S("ab  \r\ncd"), "ab\r\ncd"},
	    {"soft break with bare lf", S("ab=\ncd"), "abcd"},
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		struct tbuf dec = TBUF_INIT(1024);
		assert_int_equal(tern_qp_decode(ok[i].in, ok[i].in_len, &dec), TERN_OK);
		assert_string_equal(dec.data, ok[i].want);
		tbuf_free(&dec);
	}
	static const char *bad[] = {"=G0", "=4", "a=4\r\n", "x=\xc3\xa9"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct tbuf dec = TBUF_INIT(1024);
		assert_int_equal(tbuf_append_str(&dec, "keep"), TERN_OK);
		assert_int_equal(tern_qp_decode(bad[i], strlen(bad[i]), &dec), TERN_ESYNTAX);
		assert_string_equal(dec.data, "keep");
		tbuf_free(&dec);
	}
}

static void test_qp_full_buffer_is_untouched(void **state)
{
	struct tbuf out = TBUF_INIT(10);
	assert_int_equal(tbuf_append_str(&out, "hdr:"), TERN_OK);
	assert_int_equal(tern_qp_encode("caf\xc3\xa9", 5, &out), TERN_ELIMIT);
	assert_int_equal(out.len, 4);
	assert_string_equal(out.data, "hdr:");
	tbuf_free(&out);
}

/* base64url is base64 with '-' '_' for '+' '/' and no padding: for every
 * length and random bytes, decoding the url form gives the same bytes. */
static void test_base64url_matches_base64_without_padding(void **state)
{
	(void)state;
	for (size_t n = 0; n < 64; n++) {
		unsigned char in[64];
		struct tbuf enc = TBUF_INIT(1024), a = TBUF_INIT(1024), b = TBUF_INIT(1024);
		for (size_t i = 0; i < n; i++)
			in[i] = (unsigned char)rng();
		assert_int_equal(tern_base64_encode(in, n, &enc), TERN_OK);
		size_t len = enc.len;
		while (len > 0 && enc.data[len - 1] == '=')
			len--;
		for (size_t i = 0; i < len; i++)
			enc.data[i] = enc.data[i] == '+'   ? '-'
			              : enc.data[i] == '/' ? '_'
			                                   : enc.data[i];
		assert_int_equal(tern_base64url_decode(enc.data ? enc.data : "", len, &a), TERN_OK);
		assert_int_equal(a.len, n);
		if (n)
			assert_memory_equal(a.data, in, n);
		if (len)
			assert_int_equal(tern_base64url_decode(enc.data, enc.len, &b),
			                 len == enc.len ? TERN_OK : TERN_ESYNTAX); /* '=' refused */
		tbuf_free(&enc);
		tbuf_free(&a);
		tbuf_free(&b);
	}
	struct tbuf c = TBUF_INIT(16);
	assert_int_equal(tern_base64url_decode("a+/b", 4, &c), TERN_ESYNTAX);
	assert_int_equal(tern_base64url_decode("eyJhIjoxfR", 10, &c), TERN_ESYNTAX); /* bits */
	assert_int_equal(c.len, 0);
	tbuf_free(&c);
}

static void test_pct_decode(void **state)
{
	(void)state;
	char out[32];
	assert_true(tern_pct_decode("a%40b.org", 9, out, sizeof(out)));
	assert_string_equal(out, "a@b.org");
	assert_true(tern_pct_decode("x+tag%2Bz", 9, out, sizeof(out))); /* '+' stays */
	assert_string_equal(out, "x+tag+z");
	assert_true(tern_pct_decode("%e2%82%AC", 9, out, sizeof(out)));
	assert_string_equal(out, "\xe2\x82\xac");
	assert_true(tern_pct_decode("", 0, out, sizeof(out)));
	assert_string_equal(out, "");
	assert_false(tern_pct_decode("%4", 2, out, sizeof(out))); /* truncated */
	assert_false(tern_pct_decode("a%", 2, out, sizeof(out)));
	assert_false(tern_pct_decode("%zz", 3, out, sizeof(out)));   /* not hex */
	assert_false(tern_pct_decode("a%00b", 5, out, sizeof(out))); /* a NUL */
	assert_false(tern_pct_decode("abcd", 4, out, 4));            /* no room for the NUL */
	assert_true(tern_pct_decode("abc", 3, out, 4));
	assert_false(tern_pct_decode("", 0, out, 0));
	/* reads only n bytes: the escape after n does not count */
	assert_true(tern_pct_decode("ab%41", 2, out, sizeof(out)));
	assert_string_equal(out, "ab");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_base64_rfc4648_vectors_encode_and_decode),
	    cmocka_unit_test(test_base64_sasl_plain_credentials),
	    cmocka_unit_test(test_base64_decode_rejects_malformed_input),
	    cmocka_unit_test(test_base64_round_trips_every_length_and_byte),
	    cmocka_unit_test(test_base64_appends_and_full_buffer_is_untouched),
	    cmocka_unit_test(test_base64url_matches_base64_without_padding),
	    cmocka_unit_test(test_qp_encoder_vectors),
	    cmocka_unit_test(test_qp_soft_breaks_at_76_columns),
	    cmocka_unit_test(test_qp_round_trips_random_bytes),
	    cmocka_unit_test(test_qp_decoder_accepts_transport_forms_and_rejects_junk),
	    cmocka_unit_test(test_qp_full_buffer_is_untouched),
	    cmocka_unit_test(test_pct_decode),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
