/*
 * fuzz_pool_tag.c — libFuzzer target for pool_take_tag (src/deliver/pools.c):
 * the input is a whole message whose header section may carry any number of
 * X-Tern-Tag fields, folded or not, in any case.
 *
 * Besides "no crash, no leak, no sanitizer report", it checks:
 *   - the result is never longer than the input, and the tag is a
 *     NUL-terminated string shorter than POOL_TAG_MAX without CR or LF;
 *   - what is removed is removed: running it again finds no tag and
 *     changes nothing;
 *   - the body (from the first empty line on) is kept byte for byte.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "deliver/pools.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Where the body begins (the empty line that ends the header section), or size. */
static size_t body_at(const char *d, size_t n)
{
	for (size_t p = 0; p < n;) {
		if (d[p] == '\n')
			return p;
		if (d[p] == '\r' && p + 1 < n && d[p + 1] == '\n')
			return p;
		const char *nl = memchr(d + p, '\n', n - p);
		if (!nl)
			return n;
		p = (size_t)(nl - d) + 1;
	}
	return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *m = malloc(size ? size : 1);
	if (!m)
		return 0;
	memcpy(m, data, size);
	char tag[POOL_TAG_MAX];
	size_t n = pool_take_tag(m, size, tag, sizeof(tag));
	if (n > size || strlen(tag) >= POOL_TAG_MAX || strchr(tag, '\r') || strchr(tag, '\n'))
		abort();
	size_t b0 = body_at((const char *)data, size), b1 = body_at(m, n);
	if (size - b0 != n - b1 || memcmp(data + b0, m + b1, size - b0) != 0)
		abort();
	char *again = malloc(n ? n : 1);
	if (!again)
		goto out;
	memcpy(again, m, n);
	size_t n2 = pool_take_tag(again, n, tag, sizeof(tag));
	if (n2 != n || tag[0] || memcmp(again, m, n) != 0)
		abort();
	free(again);
out:
	free(m);
	return 0;
}
