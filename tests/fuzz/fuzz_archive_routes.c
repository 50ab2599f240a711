/*
 * fuzz_archive_routes.c — libFuzzer target for the archive's pure parsers:
 * archive_route_parse (the path after /api/v1/archive), archive_query_param
 * (query string values) and archive_mboxrd_quote (mbox export quoting).
 *
 * The input is copied into an exact-size heap block so ASan catches any
 * read past len. Checked beyond "no crash":
 *   - a parsed route's ID is a valid queue id (IDs reach the store);
 *   - a decoded parameter is NUL-terminated, holds no NUL and is never
 *     longer than the input;
 *   - mboxrd quoting is reversible: removing one '>' from every line that
 *     matches ^>+From  gives back the input (plus a final LF when it had
 *     none), and no output line starts with "From ".
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/id.h"
#include "http/archive_routes.h"
#include "store/archive.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
	if (!cond)
		abort();
}

static void check_unquote(const char *in, size_t n, const struct tbuf *q)
{
	struct tbuf u = TBUF_INIT(SIZE_MAX / 2);
	size_t i = 0;
	while (i < q->len) {
		const char *nl = memchr(q->data + i, '\n', q->len - i);
		size_t end = nl ? (size_t)(nl - q->data) + 1 : q->len;
		check(!(end - i >= 5 && memcmp(q->data + i, "From ", 5) == 0));
		size_t j = i;
		while (j < end && q->data[j] == '>')
			j++;
		size_t skip = j > i && end - j >= 5 && memcmp(q->data + j, "From ", 5) == 0 ? 1 : 0;
		check(tbuf_append(&u, q->data + i + skip, end - i - skip) == TERN_OK);
		i = end;
	}
	bool added = n == 0 || in[n - 1] != '\n';
	check(u.len == n + (added ? 1 : 0));
	check(n == 0 || memcmp(u.data, in, n) == 0);
	tbuf_free(&u);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *in = malloc(size ? size : 1);
	if (!in)
		return 0;
	memcpy(in, data, size);

	struct archive_route_req r;
	if (archive_route_parse(in, size, &r) == TERN_OK && (r.kind == AR_RAW || r.kind == AR_HOLD))
		check(queue_id_valid(r.id, strlen(r.id)) && strlen(r.id) == QUEUE_ID_LEN);

	char v[64];
	const char *names[] = {"query", "format", "start", "limit", ""};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		int rc = archive_query_param(in, size, names[i], v, sizeof(v));
		check(rc == TERN_OK || rc == TERN_ENOTFOUND || rc == TERN_ESYNTAX ||
		      rc == TERN_ELIMIT);
		if (rc == TERN_OK)
			check(strlen(v) < sizeof(v) && strlen(v) <= size);
	}
	enum archive_format f;
	(void)archive_format_parse(in, size, &f);

	struct tbuf q = TBUF_INIT(SIZE_MAX / 2);
	if (archive_mboxrd_quote(in, size, &q) == TERN_OK)
		check_unquote(in, size, &q);
	tbuf_free(&q);
	free(in);
	return 0;
}
