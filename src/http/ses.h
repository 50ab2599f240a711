/*
 * ses.h — the Amazon SES v2 compatible API (issue 12 item 3) under /v2/
 * on the "http" listeners, for applications that already use an AWS SDK:
 * SendEmail (Simple, Raw, Template content), the template calls,
 * GetAccount and the suppression-list calls, in SES's REST-JSON shapes,
 * authenticated by AWS Signature Version 4 (sigv4.h) with the pair of an
 * API key (store/ses_keys.h).
 *
 * ses_handle runs on the API's pool (it reads SQLite): it checks the
 * signature, the key and its scope and answers every call but SendEmail
 * itself; for SendEmail it hands back the message as a native API object
 * (api.h: api_json_send or api_json_raw), which api.c builds, checks (the
 * from-domain rule, the size), signs and commits like any API message
 * before it answers {"MessageId"}.
 */
#ifndef TERN_HTTP_SES_H
#define TERN_HTTP_SES_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/sigv4.h"
#include "store/apikeys.h"

struct ses_request {
	const char *data_dir;
	struct apikeys *keys;              /* the pool thread's */
	const char *method, *path, *query; /* path raw (percent-encoded); query may be NULL */
	const struct sigv4_header *hdr;
	size_t n_hdr;
	const char *body;
	size_t len;
	int64_t now;
};

struct ses_answer {
	int status;
	const char *err_type; /* x-amzn-ErrorType, static text; NULL on success */
	json_t *body;         /* owned */
	struct apikey key;
	bool have_key;
	json_t *send; /* SendEmail: the native object to build (owned), body NULL */
	bool raw;     /* send is for api_json_raw, else api_json_send */
};

/* Answers r into a (cleared first). The caller frees a->body and a->send. */
void ses_handle(const struct ses_request *r, struct ses_answer *a);

/* An SES error answer: {"message": ...} with type as x-amzn-ErrorType. */
void ses_error(struct ses_answer *a, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The SES error type of a native API error status (from-domain refusals and
 * bad messages are MessageRejected/BadRequestException, as SES says them). */
const char *ses_error_type(int status, const char *code);

#endif
