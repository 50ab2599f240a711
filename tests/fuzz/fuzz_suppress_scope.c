/*
 * fuzz_suppress_scope.c — libFuzzer target for suppress_http_api_scope
 * (src/http/suppress_routes.c): which suppression list an API request acts
 * on, read before the API key is checked against it.
 *
 * Input: the first byte picks the method (GET, PUT, DELETE, POST) and the
 * path (the collection or an entry); the rest is "QUERY\0BODY" (no NUL:
 * all query). Beyond "no crash, no leak", it checks what api.c relies on:
 * the result is one of the three kinds; with SUPPRESS_SCOPE_ONE the domain
 * is NUL-terminated inside the buffer and has no uppercase ASCII letter
 * (apikey_allows_domain compares lowercase); SUPPRESS_SCOPE_ALL only for a
 * GET of the collection.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/suppress_routes.h"
#include "store/suppress.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "invariant failed: %s (line %d)\n", #cond, __LINE__);      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const methods[] = {"GET", "PUT", "DELETE", "POST"};
	if (size < 1 || size > 64 * 1024)
		return 0;
	const char *method = methods[data[0] & 3];
	const char *path = (data[0] & 4) ? SUPPRESS_API_PATH "/a@example.org" : SUPPRESS_API_PATH;
	char *in = malloc(size); /* query, NUL, body: a C string and bytes */
	if (!in)
		return 0;
	memcpy(in, data + 1, size - 1);
	in[size - 1] = '\0';
	const char *nul = memchr(in, '\0', size); /* found: in[size - 1] at the latest */
	const char *body = nul + 1;
	size_t body_len = nul == in + size - 1 ? 0 : (size_t)(in + size - 1 - body);
	char out[SUPPRESS_DOMAIN_MAX];
	memset(out, 'X', sizeof(out));
	enum suppress_scope_kind k = suppress_http_api_scope(
	    method, path, in, body_len ? body : NULL, body_len, out, sizeof(out));
	CHECK(k == SUPPRESS_SCOPE_BAD || k == SUPPRESS_SCOPE_ONE || k == SUPPRESS_SCOPE_ALL);
	if (k == SUPPRESS_SCOPE_ALL)
		CHECK(strcmp(method, "GET") == 0 && !(data[0] & 4));
	if (k == SUPPRESS_SCOPE_ONE) {
		const char *end = memchr(out, '\0', sizeof(out));
		CHECK(end != NULL);
		for (const char *c = out; c < end; c++)
			CHECK(!(*c >= 'A' && *c <= 'Z'));
	}
	free(in);
	return 0;
}
