/*
 * fuzz_authres_strip.c — libFuzzer target for the Authentication-Results
 * filter and builder (src/policy/authres.c) over arbitrary header blocks.
 *
 * The first byte picks the mode (remove or rename) and whether our own ARC
 * sealing domain is listed; the rest is the header block. Besides "no crash,
 * no leak, no sanitizer report", it checks:
 *   - nothing removed means a byte-identical copy; renaming adds exactly
 *     "X-Untrusted-" per field and removing only shortens;
 *   - removal is idempotent: the output, filtered again, loses nothing;
 *   - the builder, fed the input's bytes as network values, writes only
 *     CRLF line ends each followed by a tab (a fold), one final CRLF, and no
 *     other control byte.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "policy/dmarc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_built(const struct tbuf *b)
{
	for (size_t i = 0; i < b->len; i++) {
		unsigned char c = (unsigned char)b->data[i];
		if (c == '\r') {
			if (i + 1 >= b->len || b->data[i + 1] != '\n')
				abort();
			if (i + 2 != b->len && b->data[i + 2] != '\t')
				abort();
			i++;
		} else if ((c < 0x20 && c != '\t') || c == 0x7f || c == '\n') {
			abort();
		}
	}
	if (b->len < 2 || b->data[b->len - 2] != '\r')
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	static const char *const own[] = {"mx.example.org", NULL};
	static const char *const extra[] = {DMARC_HEADER_NAME, NULL};
	struct authres_strip_opts o = {"mx.example.org",
	                               (data[0] & 1) ? AUTHRES_RENAME : AUTHRES_REMOVE,
	                               (data[0] & 2) ? own : NULL, extra};
	const char *hdr = (const char *)data + 1;
	size_t len = size - 1, removed = 0, removed2 = 0;
	struct tbuf out = TBUF_INIT(4 * size + 64), out2 = TBUF_INIT(4 * size + 64);

	if (authres_strip(hdr, len, &o, &out, &removed) != TERN_OK)
		abort();
	if (removed == 0 && (out.len != len || (len && memcmp(out.data, hdr, len) != 0)))
		abort();
	if (o.mode == AUTHRES_RENAME && out.len != len + removed * strlen("X-Untrusted-"))
		abort();
	if (o.mode == AUTHRES_REMOVE) {
		if (out.len > len)
			abort();
		if (authres_strip(out.data ? out.data : "", out.len, &o, &out2, &removed2) !=
		        TERN_OK ||
		    removed2 != 0)
			abort();
	}

	/* the builder with the input's bytes as values */
	char val[64];
	size_t n = len < sizeof(val) - 1 ? len : sizeof(val) - 1;
	memcpy(val, hdr, n);
	val[n] = '\0';
	struct dmarc_spf spf = {DMARC_SPF_PASS, DMARC_SPF_MAILFROM, val};
	struct dmarc_dkim dkim = {DMARC_DKIM_FAIL, val, val, val, val, false};
	struct authres_input in = {.authserv_id = "mx.example.org",
	                           .spf = &spf,
	                           .n_spf = 1,
	                           .dkim = &dkim,
	                           .n_dkim = 1,
	                           .arc = AUTHRES_ARC_NONE};
	struct tbuf b = TBUF_INIT(8192);
	if (authres_build(&in, &b) != TERN_OK)
		abort();
	check_built(&b);
	tbuf_free(&b);
	tbuf_free(&out);
	tbuf_free(&out2);
	return 0;
}
