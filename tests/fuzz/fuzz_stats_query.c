/*
 * fuzz_stats_query.c — libFuzzer target for the query strings of
 * GET /api/v1/stats (stats_query_parse, src/http/stats_routes.c) and
 * GET /api/v1/queue (queue_query_parse, src/http/queue_routes.c).
 *
 * Besides "no crash, no leak, no sanitizer report", it checks: a refusal
 * always says why; on success the stats window is 1 h to 100 d before now,
 * the bucket an hour or a day, the group a known one, and the window's
 * series fits STATS_SERIES_MAX; the queue's limit is 1..1000, its state a
 * known one and its cursor empty or a valid queue id.
 */
#include <stdint.h>
#include <string.h>

#include "core/err.h"
#include "core/id.h"
#include "http/queue_routes.h"
#include "http/stats_routes.h"
#include "store/stats.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *qs = (const char *)data, *why = NULL;
	const int64_t now = 1796515200 + 1234;
	struct stats_query q;
	if (stats_query_parse(qs, size, now, &q, &why) == TERN_OK) {
		if (q.until != now || now - q.since < 3600 || now - q.since > 100 * 86400)
			__builtin_trap();
		if (q.bucket != 3600 && q.bucket != 86400)
			__builtin_trap();
		if (!stats_group_name(q.group))
			__builtin_trap();
		if (q.until / q.bucket - q.since / q.bucket + 1 > STATS_SERIES_MAX)
			__builtin_trap();
	} else if (!why) {
		__builtin_trap();
	}
	struct queue_query qq;
	why = NULL;
	if (queue_query_parse(qs, size, &qq, &why) == TERN_OK) {
		if (qq.limit < 1 || qq.limit > 1000 || qq.state > QF_HELD)
			__builtin_trap();
		size_t n = strnlen(qq.cursor, sizeof(qq.cursor));
		if (n == sizeof(qq.cursor) || (n && !queue_id_valid(qq.cursor, n)))
			__builtin_trap();
	} else if (!why) {
		__builtin_trap();
	}
	return 0;
}
