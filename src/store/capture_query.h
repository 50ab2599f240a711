/*
 * capture_query.h — Mailpit's search syntax to an SQL WHERE clause
 * (internal to src/store; the capture store and its tests/fuzz target use it).
 *
 * The clause refers to the capture schema with the messages table aliased
 * "m" and only ever contains fixed SQL fragments and "?" placeholders: every
 * piece of user input travels as a bound parameter, in order.
 */
#ifndef TERN_STORE_CAPTURE_QUERY_H
#define TERN_STORE_CAPTURE_QUERY_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

#define CQ_MAX_QUERY 4096 /* bytes */
#define CQ_MAX_TERMS 64

enum cq_kind { CQ_TEXT, CQ_INT };

struct cq_param {
	enum cq_kind kind;
	char *text; /* CQ_TEXT: owned, NUL-terminated */
	int64_t i;  /* CQ_INT */
};

struct capture_query {
	struct tbuf where; /* "1" when the query has no terms */
	struct cq_param *params;
	size_t n_params;
	size_t cap;
};

/*
 * Parses q[0..n). Terms are separated by blanks; "..." quotes a phrase
 * (also after a prefix: subject:"a b"); a leading "-" or "!" negates.
 * Prefixes (case-insensitive): from: to: cc: bcc: reply-to: addressed:
 * subject: message-id: tag: is:read is:unread is:tagged has:attachment
 * has:inline before:YYYY-MM-DD after:YYYY-MM-DD. Anything else is a free
 * word matched (word-prefix, case- and accent-insensitive) against the
 * full-text index of subject, addresses and text; from: (From and the
 * envelope sender) and to: (To, Cc, Bcc and envelope recipients) use the
 * same index, per column, so they match words and word prefixes of names
 * and addresses ("to:example.com"), not arbitrary substrings; cc:, bcc:,
 * reply-to:, addressed:, subject: match substrings. Dates are UTC days:
 * before:D means received before D 00:00, after:D received after D 00:00.
 * Returns TERN_OK, TERN_ESYNTAX (a bad date or is:/has: value),
 * TERN_ELIMIT (too long, too many terms) or TERN_ENOMEM. On error out is
 * left empty (still call capture_query_free).
 */
int capture_query_parse(const char *q, size_t n, struct capture_query *out);
void capture_query_free(struct capture_query *q);

#endif
