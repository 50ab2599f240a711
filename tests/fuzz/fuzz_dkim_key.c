/*
 * fuzz_dkim_key.c — libFuzzer target for the DKIM key-record parser
 * (src/policy/dkim_parse.c) and the public-key decoding behind it: the
 * input is a TXT record, what anyone who controls a DNS zone can publish.
 *
 * Besides "no crash, no leak, no sanitizer report", it checks:
 *   - a record that parses either is revoked (no key bytes) or has some;
 *   - the RFC 8463 message verifies against the input as its Ed25519 and
 *     RSA key record only if the record really carries the RFC's key
 *     (dkim_key_matches_record agrees): no record makes a signature pass
 *     that its key did not make.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "policy/dkim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char msg[] = "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
                          " d=football.example.com; i=@football.example.com;\r\n"
                          " q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
                          " subject : date : message-id : from : subject : date;\r\n"
                          " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
                          " b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n"
                          " Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\n"
                          "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\r\n"
                          " d=football.example.com; i=@football.example.com;\r\n"
                          " q=dns/txt; s=test; t=1528637909; h=from : to : subject :\r\n"
                          " date : message-id : from : subject : date;\r\n"
                          " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
                          " b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3\r\n"
                          " DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz\r\n"
                          " dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=\r\n"
                          "From: Joe SixPack <joe@football.example.com>\r\n"
                          "To: Suzie Q <suzie@shopping.example.net>\r\n"
                          "Subject: Is dinner ready?\r\n"
                          "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
                          "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
                          "\r\n"
                          "Hi.\r\n"
                          "\r\n"
                          "We lost the game.  Are you hungry yet?\r\n"
                          "\r\n"
                          "Joe.\r\n";

/* RFC 8463 A.1's keys: the RFC 8032 §7.1 test 1 seed, and the RSA key. */
static const char ed_pem[] = "-----BEGIN PRIVATE KEY-----\n"
                             "MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n"
                             "-----END PRIVATE KEY-----\n";
static const char rsa_pem[] = "-----BEGIN RSA PRIVATE KEY-----\n"
                              "MIICXQIBAAKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQi\n"
                              "Y/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqM\n"
                              "KrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB\n"
                              "AoGAH0cxOhFZDgzXWhDhnAJDw5s4roOXN4OhjiXa8W7Y3rhX3FJqmJSPuC8N9vQm\n"
                              "6SVbaLAE4SG5mLMueHlh4KXffEpuLEiNp9Ss3O4YfLiQpbRqE7Tm5SxKjvvQoZZe\n"
                              "zHorimOaChRL2it47iuWxzxSiRMv4c+j70GiWdxXnxe4UoECQQDzJB/0U58W7RZy\n"
                              "6enGVj2kWF732CoWFZWzi1FicudrBFoy63QwcowpoCazKtvZGMNlPWnC7x/6o8Gc\n"
                              "uSe0ga2xAkEA8C7PipPm1/1fTRQvj1o/dDmZp243044ZNyxjg+/OPN0oWCbXIGxy\n"
                              "WvmZbXriOWoSALJTjExEgraHEgnXssuk7QJBALl5ICsYMu6hMxO73gnfNayNgPxd\n"
                              "WFV6Z7ULnKyV7HSVYF0hgYOHjeYe9gaMtiJYoo0zGN+L3AAtNP9huqkWlzECQE1a\n"
                              "licIeVlo1e+qJ6Mgqr0Q7Aa7falZ448ccbSFYEPD6oFxiOl9Y9se9iYHZKKfIcst\n"
                              "o7DUw1/hz2Ck4N5JrgUCQQCyKveNvjzkkd8HjYs0SwM0fPjK16//5qDZ2UiDGnOe\n"
                              "uEzxBDAr518Z8VFbR41in3W4Y3yCDgQlLlcETrS+zYcL\n"
                              "-----END RSA PRIVATE KEY-----\n";

static char *rec;

static void answer(void *arg, struct dkim_verify *v, unsigned qid, const char *name)
{
	const char *txt[1] = {rec};
	dkim_verify_key_answer(v, qid, DKIM_LOOKUP_OK, txt, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct dkim_key *ed, *rsa;
	static struct dkim_keyrec r;
	char err[200];
	if (!ed &&
	    (dkim_key_from_pem(ed_pem, sizeof(ed_pem) - 1, &ed, NULL, 0, err, sizeof(err)) ||
	     dkim_key_from_pem(rsa_pem, sizeof(rsa_pem) - 1, &rsa, NULL, 0, err, sizeof(err))))
		abort();
	if (size > DKIM_KEYREC_MAX + 16 || memchr(data, '\0', size))
		return 0; /* TXT strings are NUL-terminated here */
	rec = malloc(size + 1);
	if (!rec)
		return 0;
	memcpy(rec, data, size);
	rec[size] = '\0';
	const char *why;
	if (dkim_keyrec_parse(rec, size, &r, &why) == TERN_OK) {
		if (r.revoked != (r.p_len == 0))
			abort();
	}
	struct dkim_verify_opts o;
	dkim_verify_opts_init(&o);
	o.now = 1700000000;
	struct dkim_verify *v = dkim_verify_new(&o);
	if (v && dkim_verify_message(v, msg, sizeof(msg) - 1, answer, NULL) == TERN_OK) {
		bool ed_ok = dkim_key_matches_record(ed, rec, &why);
		bool rsa_ok = dkim_key_matches_record(rsa, rec, &why);
		if (dkim_verify_result(v, 0)->status == DKIM_PASS && !ed_ok)
			abort();
		if (dkim_verify_result(v, 1)->status == DKIM_PASS && !rsa_ok)
			abort();
	}
	dkim_verify_free(v);
	free(rec);
	return 0;
}
