/*
 * fuzz_events_query.c — libFuzzer target for the query string of
 * GET /api/v1/events (events_query_parse, src/http/events_routes.c).
 *
 * Besides "no crash, no leak, no sanitizer report", it checks: on success
 * every string parameter is NUL-terminated inside its buffer and the type,
 * when given, is an event type; the limit is 1..1000.
 */
#include <stdint.h>
#include <string.h>

#include "core/err.h"
#include "http/events_routes.h"
#include "store/events.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct events_query q;
	struct events_query_buf buf;
	const char *why = NULL;
	if (events_query_parse((const char *)data, size, 1765000000, &q, &buf, &why) != TERN_OK) {
		if (!why)
			__builtin_trap();
		return 0;
	}
	if (q.limit < 1 || q.limit > 1000)
		__builtin_trap();
	if (q.type && events_type_parse(q.type) < 0)
		__builtin_trap();
	const char *s[] = {q.type, q.recipient, q.tag, q.queue_id};
	for (size_t i = 0; i < 4; i++)
		if (s[i] && strnlen(s[i], sizeof(buf.type)) >= sizeof(buf.type))
			__builtin_trap();
	return 0;
}
