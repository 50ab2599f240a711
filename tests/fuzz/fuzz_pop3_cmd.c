/*
 * fuzz_pop3_cmd.c — libFuzzer target for pop3_parse_command() and the
 * RETR/TOP encoder (src/pop3/parse.c, encode.c).
 *
 * The input is parsed whole as one line and, split at LF (CR stripped
 * before LF), line by line, each line copied into an exact-size heap block
 * so ASan catches any read past len. Then the whole input is encoded as a
 * message, in one piece and in two pieces cut where its first byte says.
 * Checked beyond "no crash":
 *   - a parsed argument lies inside the line; a message number is >= 1;
 *   - an error names a reason, and the verb is known whenever the keyword is;
 *   - both encodings are byte for byte the same;
 *   - the only CRLF "." CRLF in the response is its end: no stored byte
 *     sequence can end it early (the response follows the "+OK" line, so a
 *     "." line at its very start would count too);
 *   - every line of the response ends in CRLF (a lone CR is content);
 *   - without TOP, the response is the size pop3_count_bare_lf reports plus
 *     the stuffed dots, a CRLF if the message lacked a last one, and ".\r\n".
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "pop3/pop3.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
	if (!cond)
		abort();
}

static void one_line(const char *src, size_t len)
{
	char *line = malloc(len ? len : 1);
	check(line != NULL);
	memcpy(line, src, len);
	struct pop3_cmd c;
	const char *why = NULL;
	if (pop3_parse_command(line, len, &c, &why)) {
		check(c.verb != POP3_UNKNOWN);
		if (c.arg) {
			check(c.arg >= line && c.arg + c.arg_len <= line + len);
			check(c.arg_len <= POP3_ARG_MAX);
		}
		if (c.initial)
			check(c.initial >= line && c.initial + c.initial_len <= line + len);
		if (c.has_msg)
			check(c.msg >= 1);
		check(strcmp(pop3_verb_name(c.verb), "?") != 0);
	} else {
		check(why != NULL && why[0] != '\0');
	}
	free(line);
}

static void encode(const char *in, size_t len, size_t cut, bool top, uint32_t lines,
                   struct tbuf *out)
{
	struct pop3_encoder e;
	pop3_encoder_init(&e, top, lines);
	check(pop3_encode(&e, in, cut, out) == TERN_OK);
	check(pop3_encode(&e, in + cut, len - cut, out) == TERN_OK);
	check(pop3_encode_finish(&e, out) == TERN_OK);
}

static void check_response(const char *r, size_t n)
{
	check(n >= 3 && memcmp(r + n - 3, ".\r\n", 3) == 0);
	/* "." CRLF at the start, or CRLF "." CRLF anywhere, only as the end */
	if (n > 3)
		check(!(r[0] == '.' && r[1] == '\r' && r[2] == '\n'));
	for (size_t i = 0; i + 5 <= n; i++)
		if (memcmp(r + i, "\r\n.\r\n", 5) == 0)
			check(i + 5 == n);
	/* every LF is preceded by CR */
	for (size_t i = 0; i < n; i++)
		if (r[i] == '\n')
			check(i > 0 && r[i - 1] == '\r');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data;
	one_line(p, size);
	size_t start = 0;
	for (size_t i = 0; i < size; i++) {
		if (p[i] != '\n')
			continue;
		size_t end = i;
		if (end > start && p[end - 1] == '\r')
			end--;
		one_line(p + start, end - start);
		start = i + 1;
	}
	if (start < size)
		one_line(p + start, size - start);

	size_t cut = size ? (size_t)data[0] % (size + 1) : 0;
	uint32_t lines = size > 1 ? data[1] % 8 : 0;
	for (int top = 0; top < 2; top++) {
		struct tbuf a = TBUF_INIT(4 * size + 64), b = TBUF_INIT(4 * size + 64);
		encode(p, size, size, top, lines, &a);
		encode(p, size, cut, top, lines, &b);
		check(a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0));
		check_response(a.data, a.len);
		if (!top) {
			bool prev_cr = false;
			uint64_t want = size + pop3_count_bare_lf(p, size, &prev_cr);
			size_t dots = 0;
			bool bol = true;
			for (size_t i = 0; i + 3 < a.len; i++) {
				if (bol && a.data[i] == '.')
					dots++;
				bol = a.data[i] == '\n';
			}
			size_t body = a.len - 3 - dots;
			if (size > 0 && p[size - 1] != '\n')
				body -= 2;
			check(body == want);
		}
		tbuf_free(&a);
		tbuf_free(&b);
	}
	return 0;
}
