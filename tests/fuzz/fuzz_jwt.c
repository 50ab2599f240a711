/*
 * fuzz_jwt.c — libFuzzer target for the OAuth token checks
 * (src/auth/oauth_jwt.c): the JWT parser and validator, the JWKS loader,
 * the claim checks and base64url.
 *
 * The first byte picks what the input is: 'J' a JWKS document, 'C' a claims
 * payload (checked as if its signature held: the signature cannot be
 * forged by a fuzzer, so this is how the claim code gets reached with
 * mutated input), anything else a token, validated against the fixed JWKS
 * below. The seeds are tokens signed by the throwaway keys whose public
 * halves are that JWKS (private halves discarded), valid at NOW.
 *
 * Beyond "no crash, no leak": an accepted token yields a non-empty,
 * lowercase user; a refused one leaves the user empty and gives a reason.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "auth/sasl_internal.h"
#include "core/buf.h"
#include "core/codec.h"
#include "core/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "invariant failed: %s (line %d)\n", #cond, __LINE__);      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#define NOW 1800000000LL

static const char jwks[] =
    "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"r1\",\"use\":\"sig\",\"alg\":\"RS256\",\"n\":\"sr2_"
    "Es0Pajt-hL0Y-nHvQZPTYNqSwZY_"
    "e0HxDtUxzC7wrvQBbNjBxV8nDlEyXRHBIq7TaYw3IBdwH9tYNFgUe7s9NhQvh7eg0uNffZUSJVYBgZ_sRcOYuVe32OiEF_"
    "r30fVlB0q_Ez-6iCJUMDD6IBCwbrgFQ3xBTXsUhQ022H8Q7ouPCXfG_"
    "9i9HkYEw8ToT8LW0qrxk6dd3mJARQsUWrbJ7W3wmYrfEZjEzKFE4oRitAy5l5JpWCPkWDycYNFP0bGF4HTe-"
    "30JNzu8tCjV40bDYEAw7uOmlN8UTFeJTqmM-3TsjrzJwr2s1WUyLJt7rdeWDqyoQaNT0hpk3pAR6w\",\"e\":"
    "\"AQAB\"},{\"kty\":\"EC\",\"kid\":\"e1\",\"crv\":\"P-256\",\"x\":"
    "\"u3Bnn2IXZzqJOJwRFrIjNszUARhgylmSu0bW5D1tVZA\",\"y\":"
    "\"IGEKnlfhxoBB7SzxhgsCd0fjtFHWwkajAyJUU5L8l5E\"}]}";

static struct oauth_config cfg = {
    .issuer = "https://idp.example.org",
    .audience = "tern-smtp",
    .user_claim = NULL,
    .leeway_seconds = OAUTH_LEEWAY_DEFAULT,
};

static void check_user(int rc, const char *user, const char *why)
{
	CHECK(why != NULL);
	if (rc != TERN_OK) {
		CHECK(rc == TERN_EINVAL || rc == TERN_ENOMEM);
		CHECK(user[0] == '\0');
		CHECK(why[0] != '\0');
		return;
	}
	CHECK(user[0] != '\0');
	for (const char *p = user; *p != '\0'; p++)
		CHECK(!(*p >= 'A' && *p <= 'Z') && (unsigned char)*p >= 0x20);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct oauth_keys *keys;
	const char *in = (const char *)data, *why = NULL;
	char user[SASL_ID_MAX + 1], err[256];
	struct tbuf b = TBUF_INIT(OAUTH_TOKEN_MAX);
	int rc;

	if (keys == NULL &&
	    oauth_jwks_parse(jwks, sizeof(jwks) - 1, &keys, err, sizeof(err)) != TERN_OK)
		abort();
	if (size > 0 && in[0] == 'J') {
		struct oauth_keys *k = NULL;

		rc = oauth_jwks_parse(in + 1, size - 1, &k, err, sizeof(err));
		CHECK(memchr(err, '\0', sizeof(err)) != NULL);
		CHECK((rc == TERN_OK) == (k != NULL));
		if (k != NULL) {
			CHECK(oauth_keys_count(k) > 0 && oauth_keys_count(k) <= 64);
			rc = oauth_token_validate(&cfg, k, "e30.e30.AA", 10, NOW, user,
			                          sizeof(user), &why);
			CHECK(rc == TERN_EINVAL);
		}
		oauth_keys_free(k);
		return 0;
	}
	if (size > 0 && in[0] == 'C') {
		rc = oauth_claims_check(&cfg, in + 1, size - 1, NOW, user, sizeof(user), &why);
		check_user(rc, user, why);
		return 0;
	}
	rc = oauth_token_validate(&cfg, keys, in, size, NOW, user, sizeof(user), &why);
	check_user(rc, user, why);
	/* base64url: whatever decodes re-encodes to no more than it was. */
	if (tern_base64url_decode(in, size, &b) == TERN_OK)
		CHECK(b.len <= size && b.len >= size * 3 / 4);
	tbuf_free(&b);
	return 0;
}
