/*
 * fuzz_api_json.c — libFuzzer target for the native sending API's request
 * decoders (api_json_parse, api_json_send, api_json_raw, api_from_domain in
 * src/http/api_json.c).
 *
 * The first byte picks the decoder (even: send, odd: raw); the rest is the
 * request body. Beyond "no crash, no leak", it checks what api.c relies on:
 *   - a refusal always has a status in 400..503, a non-empty code made of
 *     [a-z0-9_] and a message; nothing is returned with it;
 *   - an accepted message has CRLF line ends only, at least one envelope
 *     recipient, an envelope sender with '@', a lowercase From domain, and
 *     (send) no Bcc header field; list_unsubscribe only with one recipient
 *     and a mailto that cannot break out of its <...>.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/err.h"
#include "http/api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "invariant failed: %s (line %d)\n", #cond, __LINE__);      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static void check_error(const struct api_error *e)
{
	CHECK(e->status >= 400 && e->status <= 503);
	CHECK(e->code && e->code[0]);
	for (const char *c = e->code; *c; c++)
		CHECK((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_');
	CHECK(e->message[0]);
}

static void check_message(const struct api_send *s, bool native)
{
	const struct http_send_msg *m = &s->msg;
	CHECK(m->raw && m->len > 0 && m->n_to > 0 && strchr(m->from, '@'));
	for (size_t i = 0; i < m->len; i++) {
		if (m->raw[i] == '\n')
			CHECK(i > 0 && m->raw[i - 1] == '\r');
		if (m->raw[i] == '\r')
			CHECK(i + 1 < m->len && m->raw[i + 1] == '\n');
	}
	CHECK(s->from_domain && s->from_domain[0]);
	/* list_unsubscribe: the link names one recipient; a mailto that api.c
	 * puts between <> unchanged cannot close the bracket or add a link */
	if (s->list_unsub)
		CHECK(m->n_to == 1);
	if (s->unsub_mailto)
		CHECK(s->list_unsub && strchr(s->unsub_mailto, '@') &&
		      !strpbrk(s->unsub_mailto, "<>,\r\n "));
	for (const char *c = s->from_domain; *c; c++)
		CHECK(!(*c >= 'A' && *c <= 'Z'));
	if (native) {
		const char *end = strstr(m->raw, "\r\n\r\n");
		CHECK(end != NULL);
		for (const char *p = m->raw; p && p < end;
		     p = strstr(p, "\r\n"), p = p ? p + 2 : NULL)
			CHECK(strncasecmp(p, "Bcc:", 4) != 0);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 256 * 1024)
		return 0;
	bool raw = data[0] & 1;
	const char *body = (const char *)data + 1;
	size_t len = size - 1;
	struct api_error e;
	memset(&e, 0, sizeof(e));
	char dom[256];
	if (api_from_domain(body, len, dom, sizeof(dom)))
		CHECK(dom[0] != '\0');
	json_t *j = api_json_parse(body, len, &e);
	if (!j) {
		check_error(&e);
		return 0;
	}
	struct api_send s;
	int rc = raw ? api_json_raw(j, 1024 * 1024, &s, &e)
	             : api_json_send(j, 1700000000LL, "fuzz@tern.test", &s, &e);
	if (rc == TERN_OK) {
		check_message(&s, !raw);
		api_send_free(&s);
	} else {
		check_error(&e);
		CHECK(s.msg.raw == NULL && s.from_domain == NULL);
	}
	json_decref(j);
	return 0;
}
