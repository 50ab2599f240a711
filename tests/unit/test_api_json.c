/*
 * test_api_json.c — the native sending API's pure parts: the request
 * decoders (api_json_send, api_json_raw, api_from_domain in
 * src/http/api_json.c) and the key store (src/store/apikeys.c) on a
 * temporary file.
 *
 * Decoders: a full message becomes the expected envelope and header fields
 * (the MIME work itself is test_http_send.c's); each refusal has its status,
 * stable code and field; nothing is returned with a refusal. Keys: the
 * token verifies, a wrong or revoked one does not, names are unique among
 * live keys, the from-domain rule takes subdomains but not look-alikes,
 * and the file holds no secret.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/codec.h"
#include "core/err.h"
#include "http/api.h"
#include "store/apikeys.h"

#define NOW 1700000000LL

static int send_json(const char *text, struct api_send *out, struct api_error *e)
{
	json_t *j = api_json_parse(text, strlen(text), e);
	if (!j)
		return TERN_ESYNTAX;
	int rc = api_json_send(j, NOW, "id1@mx.test", out, e);
	json_decref(j);
	return rc;
}

static bool has_header(const char *raw, const char *line)
{
	const char *end = strstr(raw, "\r\n\r\n");
	const char *p = strstr(raw, line);
	return p && end && p < end;
}

static void full_message(void **state)
{
	struct api_send s;
	struct api_error e;
	int rc =
	    send_json("{\"from\": \"Shop <shop@Example.ORG>\", \"to\": [\"a@x.test\", "
	              "{\"email\": \"b@x.test\", \"name\": \"B\"}], \"cc\": \"c@x.test\", "
	              "\"bcc\": [\"d@x.test\", \"A@x.test\"], \"reply_to\": \"r@example.org\", "
	              "\"subject\": \"Hi\", \"text\": \"body\", \"headers\": {\"X-Id\": "
	              "\"7\"}, \"priority\": \"low\", \"metadata\": {\"k\": \"v\"}, "
	              "\"send_at\": 1600000000, \"tags\": [\"t1\"]}",
	              &s, &e);
	assert_int_equal(rc, TERN_OK);
	assert_string_equal(s.msg.from, "shop@Example.ORG");
	assert_string_equal(s.from_domain, "example.org");
	/* a, b, c, d; A@x.test is a's duplicate */
	assert_int_equal(s.msg.n_to, 4);
	assert_string_equal(s.msg.to[3], "d@x.test");
	assert_true(has_header(s.msg.raw, "\r\nX-Id: 7\r\n"));
	assert_true(has_header(s.msg.raw, "\r\nX-Priority: 5 (Lowest)\r\n"));
	assert_true(has_header(s.msg.raw, "\r\nImportance: low\r\n"));
	assert_true(has_header(s.msg.raw, "Message-ID: <id1@mx.test>\r\n"));
	assert_false(has_header(s.msg.raw, "Bcc:"));
	assert_false(has_header(s.msg.raw, "d@x.test"));
	assert_string_equal(s.metadata, "{\"k\":\"v\"}");
	assert_int_equal(s.send_at, 0); /* a past send_at: at once */
	api_send_free(&s);
}

/* send_at: a future time up to API_SCHEDULE_MAX ahead is kept (RFC 3339 or
 * unix seconds, offsets applied), one second beyond is refused, now and the
 * past mean at once (0). */
static void send_at_times(void **state)
{
	static const struct {
		const char *at;
		int64_t want; /* -1: refused send_at_too_far */
	} cases[] = {
	    {"1700000060", 1700000060},
	    {"\"2023-11-14T22:14:20Z\"", 1700000060},
	    {"\"2023-11-15T00:14:20+02:00\"", 1700000060},
	    {"1700259200", 1700000000 + API_SCHEDULE_MAX},
	    {"1700259201", -1},
	    {"1700000000", 0},
	    {"1", 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char text[256];
		snprintf(text, sizeof(text),
		         "{\"from\": \"a@x.test\", \"to\": \"b@x.test\", \"text\": \"t\", "
		         "\"send_at\": %s}",
		         cases[i].at);
		struct api_send s;
		struct api_error e;
		memset(&s, 0, sizeof(s));
		int rc = send_json(text, &s, &e);
		if (cases[i].want < 0) {
			assert_int_not_equal(rc, TERN_OK);
			assert_int_equal(e.status, 422);
			assert_string_equal(e.code, "send_at_too_far");
			assert_string_equal(e.field, "send_at");
			continue;
		}
		assert_int_equal(rc, TERN_OK);
		assert_int_equal(s.send_at, cases[i].want);
		api_send_free(&s);
	}
}

/* list_unsubscribe: true or {"mailto"}; one recipient; never beside the
 * fields given by hand; the decoder only records it (api.c adds them). */
static void list_unsubscribe(void **state)
{
	struct api_send s;
	struct api_error e;
	assert_int_equal(send_json("{\"from\": \"a@example.org\", \"to\": \"r@x.test\", "
	                           "\"text\": \"t\", \"list_unsubscribe\": true}",
	                           &s, &e),
	                 TERN_OK);
	assert_true(s.list_unsub);
	assert_null(s.unsub_mailto);
	assert_false(has_header(s.msg.raw, "List-Unsubscribe"));
	api_send_free(&s);
	assert_int_equal(send_json("{\"from\": \"a@example.org\", \"bcc\": \"r@x.test\", "
	                           "\"text\": \"t\", \"list_unsubscribe\": {\"mailto\": "
	                           "\"u+1@example.org\"}}",
	                           &s, &e),
	                 TERN_OK);
	assert_true(s.list_unsub);
	assert_string_equal(s.unsub_mailto, "u+1@example.org");
	api_send_free(&s);
	assert_int_equal(send_json("{\"from\": \"a@example.org\", \"to\": \"r@x.test\", "
	                           "\"text\": \"t\", \"list_unsubscribe\": false}",
	                           &s, &e),
	                 TERN_OK);
	assert_false(s.list_unsub);
	api_send_free(&s);
	static const char *const bad[] = {
	    "\"to\": [\"r@x.test\", \"s@x.test\"], \"list_unsubscribe\": true",
	    "\"to\": \"r@x.test\", \"cc\": \"s@x.test\", \"list_unsubscribe\": true",
	    "\"to\": \"r@x.test\", \"list_unsubscribe\": \"yes\"",
	    "\"to\": \"r@x.test\", \"list_unsubscribe\": {\"mailto\": \"a@b>, <x\"}",
	    "\"to\": \"r@x.test\", \"list_unsubscribe\": {\"mailto\": \"nobody\"}",
	    "\"to\": \"r@x.test\", \"list_unsubscribe\": {\"mailto\": \"a@b\", \"x\": 1}",
	    ("\"to\": \"r@x.test\", \"list_unsubscribe\": true, \"headers\": "
	     "{\"list-unsubscribe-post\": \"x\"}"),
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char j[512];
		snprintf(j, sizeof(j), "{\"from\": \"a@example.org\", \"text\": \"t\", %s}",
		         bad[i]);
		assert_int_equal(send_json(j, &s, &e), TERN_ESYNTAX);
		assert_int_equal(e.status, 422);
		assert_true(strcmp(e.field, "list_unsubscribe") == 0 ||
		            strcmp(e.field, "headers") == 0);
		assert_null(s.msg.raw);
		assert_null(s.unsub_mailto);
		api_send_free(&s);
	}
	assert_int_equal(send_json("{\"from\": \"a@example.org\", \"to\": [\"r@x.test\", "
	                           "\"s@x.test\"], \"text\": \"t\", \"list_unsubscribe\": true}",
	                           &s, &e),
	                 TERN_ESYNTAX);
	assert_string_equal(e.code, "list_unsubscribe_one_recipient");
	api_send_free(&s);
}

struct refusal {
	const char *json;
	int status;
	const char *code;
	const char *field;
};

static void refusals(void **state)
{
	static const struct refusal cases[] = {
	    {"{\"from\": \"a@x.test\",", 400, "malformed_json", ""},
	    {"[]", 400, "invalid_request", ""},
	    {"{\"to\": \"b@x.test\", \"text\": \"t\"}", 422, "missing_field", "from"},
	    {"{\"from\": [\"a@x.test\"], \"to\": \"b@x.test\", \"text\": \"t\"}", 422,
	     "invalid_address", "from"},
	    {"{\"from\": \"a@x.test\", \"text\": \"t\"}", 422, "missing_recipients", "to"},
	    {"{\"from\": \"a@x.test\", \"to\": \"b@x.test\"}", 422, "missing_body", "text"},
	    {"{\"from\": \"a@x.test\", \"to\": [\"b@x.test\", \"b@\"], \"text\": \"t\"}", 422,
	     "invalid_address", "to[1]"},
	    {"{\"from\": \"a@x.test\", \"to\": \"b@x.test\", \"bcc\": [{\"name\": \"n\"}], "
	     "\"text\": \"t\"}",
	     422, "invalid_address", "bcc[0]"},
	    {"{\"from\": \"a@x.test\", \"to\": \"B <b@x.test\\r\\n>\", \"text\": \"t\"}", 422,
	     "invalid_address", "to"},
	    {"{\"from\": \"a@x.test\", \"to\": \"b@x.test\", \"text\": 5}", 422, "invalid_field",
	     "text"},
	    {"{\"from\": \"a@x.test\", \"to\": \"b@x.test\", \"text\": \"t\", \"attachments\": "
	     "[{\"filename\": \"f\", \"content\": \"aGk=\", \"encoding\": \"7bit\"}]}",
	     422, "unknown_encoding", "attachments[0].encoding"},
	    {"{\"from\": \"a@x.test\", \"to\": \"b@x.test\", \"text\": \"t\", \"attachments\": "
	     "[{\"filename\": \"f\", \"content\": \"aGk\"}]}",
	     422, "invalid_base64", "attachments[0].content"},
	    {"{\"from\": \"a@x.test\", \"to\": \"b@x.test\", \"text\": \"t\", \"inline\": "
	     "[{\"filename\": \"f\", \"content\": \"aGk=\"}]}",
	     422, "missing_field", "inline[0].content_id"},
	    {"{\"from\": \"a@x.test\", \"to\": \"b@x.test\", \"text\": \"t\", \"headers\": "
	     "{\"Bcc\": \"e@x.test\"}}",
	     422, "invalid_header", "headers.Bcc"},
	    {"{\"from\": \"a@x.test\", \"to\": \"b@x.test\", \"text\": \"t\", \"headers\": "
	     "{\"X-A\": \"1\\nX-B: 2\"}}",
	     422, "invalid_header", "headers.X-A"},
	    {"{\"from\": \"a@x.test\", \"to\": \"b@x.test\", \"text\": \"t\", \"priority\": "
	     "\"urgent\"}",
	     422, "invalid_field", "priority"},
	    {"{\"from\": \"a@x.test\", \"to\": \"b@x.test\", \"text\": \"t\", \"send_at\": "
	     "\"2099-01-01T00:00:00Z\"}",
	     422, "send_at_too_far", "send_at"},
	    {"{\"from\": \"a@x.test\", \"to\": \"b@x.test\", \"text\": \"t\", \"send_at\": "
	     "\"tomorrow\"}",
	     422, "invalid_field", "send_at"},
	    {"{\"from\": \"a@x.test\", \"to\": \"b@x.test\", \"text\": \"t\", \"metadata\": "
	     "{\"k\": 1}}",
	     422, "invalid_field", "metadata"},
	    {"{\"from\": \"a@x.test\", \"to\": \"b@x.test\", \"text\": \"t\", \"tags\": "
	     "[\"a,b\"]}",
	     422, "invalid_field", "tags"},
	    {"{\"from\": \"a@x.test\", \"to\": \"b@x.test\", \"text\": \"t\", \"x\": 1}", 422,
	     "unknown_field", "x"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct api_send s;
		struct api_error e;
		memset(&s, 0x5a, sizeof(s));
		memset(&e, 0, sizeof(e));
		int rc = send_json(cases[i].json, &s, &e);
		if (rc == TERN_OK || e.status != cases[i].status ||
		    strcmp(e.code, cases[i].code) != 0 || strcmp(e.field, cases[i].field) != 0)
			fail_msg("case %zu (%s): rc %d status %d code %s field '%s': %s", i,
			         cases[i].json, rc, e.status, e.code ? e.code : "-", e.field,
			         e.message);
		assert_true(e.message[0] != '\0');
		if (cases[i].status == 422) /* decoded JSON: nothing handed back */
			assert_null(s.msg.raw);
	}
}

static int raw_json(const char *from, const char *msg, struct api_send *s, struct api_error *e,
                    size_t max)
{
	struct tbuf b64 = TBUF_INIT(1 << 20);
	assert_int_equal(tern_base64_encode(msg, strlen(msg), &b64), TERN_OK);
	json_t *j = json_pack("{s:s, s:[s], s:s%}", "from", from, "to", "b@x.test", "raw", b64.data,
	                      b64.len);
	int rc = api_json_raw(j, max, s, e);
	json_decref(j);
	tbuf_free(&b64);
	return rc;
}

static void raw_messages(void **state)
{
	struct api_send s;
	struct api_error e;
	assert_int_equal(raw_json("bounce@x.test",
	                          "From: \"Doe, J\" <j@Mail.Example.org>\nSubject: s\n\nline\r\nx",
	                          &s, &e, 1000),
	                 TERN_OK);
	assert_string_equal(s.from_domain, "mail.example.org");
	assert_string_equal(s.msg.from, "bounce@x.test");
	assert_string_equal(
	    s.msg.raw, "From: \"Doe, J\" <j@Mail.Example.org>\r\nSubject: s\r\n\r\nline\r\nx\r\n");
	api_send_free(&s);
	/* no From, two From fields, two mailboxes: no domain to check */
	static const char *const bad[] = {"Subject: s\n\nx\n",
	                                  "From: a@x.test\nFrom: b@x.test\n\nx\n",
	                                  "From: a@x.test, b@y.test\n\nx\n"};
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(raw_json("a@x.test", bad[i], &s, &e, 1000), TERN_ESYNTAX);
		assert_string_equal(e.code, "invalid_message");
	}
	assert_int_equal(raw_json("a@x.test", "From: a@x.test\n\n0123456789\n", &s, &e, 10),
	                 TERN_ELIMIT);
	assert_int_equal(e.status, 413);
	assert_int_equal(raw_json("not-an-address", "From: a@x.test\n\nx\n", &s, &e, 1000),
	                 TERN_ESYNTAX);
	assert_string_equal(e.code, "invalid_address");
}

static void from_domains(void **state)
{
	char d[256];
	assert_true(api_from_domain("a@B.org", 7, d, sizeof(d)));
	assert_string_equal(d, "b.org");
	const char *v = " \"x@evil.test\" (c@evil.test) <a@good.test> (comment)";
	assert_true(api_from_domain(v, strlen(v), d, sizeof(d)));
	assert_string_equal(d, "good.test");
	assert_false(api_from_domain("<a@b.test", 9, d, sizeof(d)));
	assert_false(api_from_domain("a@b.test, c@d.test", 18, d, sizeof(d)));
	assert_false(api_from_domain("undisclosed", 11, d, sizeof(d)));
}

/* ------------------------------------------------------------------ keys */

static void key_store(void **state)
{
	char path[] = "/tmp/tern-apikeys-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	close(fd);
	unlink(path);
	struct apikeys *k = NULL;
	assert_int_equal(apikeys_open(path, false, &k), TERN_ENOTFOUND);
	assert_int_equal(apikeys_open(path, true, &k), TERN_OK);
	char tok[APIKEY_TOKEN_LEN + 1], tok2[APIKEY_TOKEN_LEN + 1];
	struct apikey rec, got;
	const char *doms[] = {"Example.ORG", "b.test"};
	assert_int_equal(apikeys_create(k, "app", APIKEY_SEND, doms, 2, tok, sizeof(tok), &rec),
	                 TERN_OK);
	assert_int_equal(strlen(tok), APIKEY_TOKEN_LEN);
	assert_string_equal(rec.domains, "example.org,b.test");
	assert_int_equal(apikeys_create(k, "app", APIKEY_READ, NULL, 0, tok2, sizeof(tok2), &got),
	                 TERN_EEXIST);
	assert_int_equal(
	    apikeys_create(k, "bad name", APIKEY_READ, NULL, 0, tok2, sizeof(tok2), &got),
	    TERN_EINVAL);
	const char *baddom[] = {"exa mple.org"};
	assert_int_equal(apikeys_create(k, "x", APIKEY_READ, baddom, 1, tok2, sizeof(tok2), &got),
	                 TERN_ESYNTAX);
	assert_int_equal(apikeys_verify(k, tok, strlen(tok), &got), TERN_OK);
	assert_string_equal(got.name, "app");
	assert_int_equal(got.scope, APIKEY_SEND);
	/* one wrong hex digit of the secret, or of the id; a prefix; garbage */
	char wrong[APIKEY_TOKEN_LEN + 1];
	memcpy(wrong, tok, sizeof(wrong));
	wrong[APIKEY_TOKEN_LEN - 1] = wrong[APIKEY_TOKEN_LEN - 1] == '0' ? '1' : '0';
	assert_int_equal(apikeys_verify(k, wrong, strlen(wrong), &got), TERN_ENOTFOUND);
	memcpy(wrong, tok, sizeof(wrong));
	wrong[6] = wrong[6] == '0' ? '1' : '0';
	assert_int_equal(apikeys_verify(k, wrong, strlen(wrong), &got), TERN_ENOTFOUND);
	assert_int_equal(apikeys_verify(k, tok, strlen(tok) - 1, &got), TERN_ENOTFOUND);
	assert_int_equal(apikeys_verify(k, "Bearer", 6, &got), TERN_ENOTFOUND);
	/* the from-domain rule */
	assert_true(apikey_allows_domain(&rec, "example.org"));
	assert_true(apikey_allows_domain(&rec, "news.example.org"));
	assert_true(apikey_allows_domain(&rec, "b.test"));
	assert_false(apikey_allows_domain(&rec, "badexample.org"));
	assert_false(apikey_allows_domain(&rec, "example.org.evil.test"));
	assert_false(apikey_allows_domain(&rec, "test"));
	struct apikey any = rec;
	any.domains[0] = '\0';
	assert_true(apikey_allows_domain(&any, "anything.test"));
	/* revoked: refused, and the name is free again */
	assert_int_equal(apikeys_revoke(k, "app"), TERN_OK);
	assert_int_equal(apikeys_revoke(k, "app"), TERN_ENOTFOUND);
	assert_int_equal(apikeys_verify(k, tok, strlen(tok), &got), TERN_ENOTFOUND);
	assert_int_equal(apikeys_create(k, "app", APIKEY_ADMIN, NULL, 0, tok2, sizeof(tok2), &got),
	                 TERN_OK);
	assert_int_equal(apikeys_revoke(k, got.id), TERN_OK);
	apikeys_close(k);
	/* the file never holds a secret */
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	static char buf[1 << 16];
	size_t n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	assert_null(memmem(buf, n, tok + 6 + APIKEY_ID_LEN, 16));
	assert_null(memmem(buf, n, tok2 + 6 + APIKEY_ID_LEN, 16));
	unlink(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(full_message),     cmocka_unit_test(send_at_times),
	    cmocka_unit_test(refusals),         cmocka_unit_test(raw_messages),
	    cmocka_unit_test(from_domains),     cmocka_unit_test(key_store),
	    cmocka_unit_test(list_unsubscribe),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
