/*
 * fuzz_sigv4.c — libFuzzer target for sigv4_parse_auth (src/http/sigv4.c),
 * the Authorization header of the SES v2 API, read before any key is
 * known, and for sigv4_signature over what it parsed.
 *
 * Input: the Authorization value as bytes (NULs included). Beyond "no
 * crash, no leak", it checks what ses.c relies on: on TERN_OK every field
 * is NUL-terminated inside its array, the date is 8 digits, the signature
 * 64 lowercase hex digits, the signed headers have no blank; on failure
 * the struct is left zeroed or partly filled but terminated; and the
 * signature of any parsed value can be computed (or is TERN_ESYNTAX for a
 * signed header the request lacks) into 64 hex digits.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "http/sigv4.h"

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
	if (size > 16 * 1024)
		return 0;
	struct sigv4_auth a;
	int rc = sigv4_parse_auth((const char *)data, size, &a);
	CHECK(memchr(a.akid, 0, sizeof(a.akid)) && memchr(a.date, 0, sizeof(a.date)));
	CHECK(memchr(a.region, 0, sizeof(a.region)) && memchr(a.service, 0, sizeof(a.service)));
	CHECK(memchr(a.signed_headers, 0, sizeof(a.signed_headers)));
	CHECK(memchr(a.signature, 0, sizeof(a.signature)));
	if (rc != TERN_OK) {
		CHECK(rc == TERN_ESYNTAX);
		return 0;
	}
	CHECK(strlen(a.date) == 8 && strspn(a.date, "0123456789") == 8);
	CHECK(strlen(a.signature) == 64 && strspn(a.signature, "0123456789abcdef") == 64);
	CHECK(a.akid[0] && a.region[0] && a.service[0] && a.signed_headers[0]);
	CHECK(!strpbrk(a.signed_headers, " \t"));
	struct sigv4_header h[] = {{"host", "example.amazonaws.com"}, {"x-amz-date", "x"}};
	char sig[65], ph[65];
	sigv4_sha256_hex(data, size, ph);
	rc = sigv4_signature("secret", "POST", "/v2/email/a%40b", "b=1&a", h, 2, &a,
	                     "20150830T123600Z", ph, sig);
	CHECK(rc == TERN_OK || rc == TERN_ESYNTAX);
	if (rc == TERN_OK)
		CHECK(strlen(sig) == 64 && strspn(sig, "0123456789abcdef") == 64);
	return 0;
}
