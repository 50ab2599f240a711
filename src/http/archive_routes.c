/*
 * archive_routes.c — the archive's HTTP routes (archive_routes.h) over
 * store/archive.h: path and query parsing (pure, fuzzed by
 * tests/fuzz/fuzz_archive_routes.c) and the answers.
 *
 * Owns: the answer it builds until the caller takes it.
 * Must never: read outside the given (pointer, length), pass an ID that is
 * not a queue id to the store, or answer anything but an admin key's
 * request (api.c checks the scope before calling).
 */
#include "http/archive_routes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "store/archive.h"

int archive_route_parse(const char *rest, size_t n, struct archive_route_req *out)
{
	memset(out, 0, sizeof(*out));
	if (n == 0 || (n == 1 && rest[0] == '/')) {
		out->kind = AR_LIST;
		return TERN_OK;
	}
	if (n == 7 && memcmp(rest, "/export", 7) == 0) {
		out->kind = AR_EXPORT;
		return TERN_OK;
	}
	/* "/" ID "/raw" | "/" ID "/hold" */
	if (n < 1 + QUEUE_ID_LEN + 1 || rest[0] != '/' || rest[1 + QUEUE_ID_LEN] != '/')
		return TERN_ENOTFOUND;
	const char *id = rest + 1, *tail = rest + 2 + QUEUE_ID_LEN;
	size_t tn = n - 2 - QUEUE_ID_LEN;
	if (!queue_id_valid(id, QUEUE_ID_LEN))
		return TERN_ENOTFOUND;
	if (tn == 3 && memcmp(tail, "raw", 3) == 0)
		out->kind = AR_RAW;
	else if (tn == 4 && memcmp(tail, "hold", 4) == 0)
		out->kind = AR_HOLD;
	else
		return TERN_ENOTFOUND;
	memcpy(out->id, id, QUEUE_ID_LEN);
	out->id[QUEUE_ID_LEN] = '\0';
	return TERN_OK;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int archive_query_param(const char *qs, size_t n, const char *name, char *out, size_t outlen)
{
	size_t nl = strlen(name), i = 0;
	if (outlen == 0)
		return TERN_ELIMIT;
	while (i < n) {
		size_t e = i;
		while (e < n && qs[e] != '&')
			e++;
		if (e - i > nl && memcmp(qs + i, name, nl) == 0 && qs[i + nl] == '=') {
			size_t k = 0;
			for (size_t j = i + nl + 1; j < e; j++) {
				char c = qs[j];
				if (c == '+') {
					c = ' ';
				} else if (c == '%') {
					int h = j + 2 < e ? hexval(qs[j + 1]) : -1;
					int l = j + 2 < e ? hexval(qs[j + 2]) : -1;
					if (h < 0 || l < 0)
						return TERN_ESYNTAX;
					c = (char)(h * 16 + l);
					j += 2;
				}
				if (c == '\0')
					return TERN_ESYNTAX;
				if (k + 1 >= outlen)
					return TERN_ELIMIT;
				out[k++] = c;
			}
			out[k] = '\0';
			return TERN_OK;
		}
		if (e - i == nl && memcmp(qs + i, name, nl) == 0) { /* "name" alone: empty */
			out[0] = '\0';
			return TERN_OK;
		}
		i = e + 1;
	}
	return TERN_ENOTFOUND;
}

static void fail(struct archive_answer *a, int status, const char *code, const char *msg)
{
	a->status = status;
	a->code = code;
	a->message = msg;
	a->json = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
}

/* A number parameter in [0, max]; def when absent. false on a bad one. */
static bool num_param(const char *qs, size_t n, const char *name, size_t def, size_t max,
                      size_t *out)
{
	char v[32], *end = NULL;
	int rc = archive_query_param(qs, n, name, v, sizeof(v));
	if (rc == TERN_ENOTFOUND || (rc == TERN_OK && !v[0])) {
		*out = def;
		return true;
	}
	if (rc != TERN_OK || v[0] < '0' || v[0] > '9')
		return false;
	unsigned long long x = strtoull(v, &end, 10);
	if (*end || x > max)
		return false;
	*out = (size_t)x;
	return true;
}

void archive_route(struct archive *ar, const char *method, const char *rest, const char *qs,
                   struct archive_answer *ans)
{
	memset(ans, 0, sizeof(*ans));
	struct archive_route_req r;
	size_t qn = qs ? strlen(qs) : 0;
	char query[4200];
	if (!qs)
		qs = "";
	if (archive_route_parse(rest, strlen(rest), &r) != TERN_OK) {
		fail(ans, 404, "not_found", "no such route (see /api/openapi.json)");
		return;
	}
	bool get = strcmp(method, "GET") == 0;
	if (r.kind == AR_HOLD ? strcmp(method, "PUT") != 0 && strcmp(method, "DELETE") != 0
	                      : !get) {
		fail(ans, 405, "method_not_allowed", "this route does not take that method");
		return;
	}
	int rc = TERN_OK;
	if (r.kind == AR_LIST || r.kind == AR_EXPORT) {
		rc = archive_query_param(qs, qn, "query", query, sizeof(query));
		if (rc == TERN_ENOTFOUND) {
			query[0] = '\0';
			rc = TERN_OK;
		}
		if (rc != TERN_OK) {
			fail(ans, 400, "invalid_request",
			     "query: cannot decode it or it is too long");
			return;
		}
	}
	if (r.kind == AR_LIST) {
		size_t start, limit;
		if (!num_param(qs, qn, "start", 0, 100000000, &start) ||
		    !num_param(qs, qn, "limit", 50, 1000, &limit)) {
			fail(ans, 400, "invalid_request", "start: 0 or more; limit: 1 to 1000");
			return;
		}
		json_t *j = archive_search(ar, query, start, limit ? limit : 50, &rc);
		if (!j) {
			if (rc == TERN_ESYNTAX || rc == TERN_ELIMIT)
				fail(ans, 400, "invalid_request", "query: not a valid search");
			else
				fail(ans, 500, "store_unavailable",
				     "the archive could not be read");
			return;
		}
		ans->status = 200;
		ans->json = j;
		return;
	}
	if (r.kind == AR_EXPORT) {
		char f[16];
		enum archive_format fmt = ARCHIVE_MBOX;
		rc = archive_query_param(qs, qn, "format", f, sizeof(f));
		if ((rc == TERN_OK && !archive_format_parse(f, strlen(f), &fmt)) ||
		    (rc != TERN_OK && rc != TERN_ENOTFOUND)) {
			fail(ans, 400, "invalid_request", "format: mbox or zip");
			return;
		}
		/* built in an unnamed file and sent from it: memory stays at about
		 * one chunk and one message, whatever the export's size */
		int fd = archive_tmpfile(ar);
		size_t count = 0;
		uint64_t bytes = 0;
		rc = fd < 0 ? TERN_EIO : archive_export_fd(ar, query, fmt, fd, &bytes, &count);
		if (rc != TERN_OK) {
			if (fd >= 0)
				close(fd);
			if (rc == TERN_ESYNTAX)
				fail(ans, 400, "invalid_request", "query: not a valid search");
			else if (rc == TERN_ELIMIT)
				fail(ans, 413, "export_too_large",
				     "too many messages or bytes for one export; narrow the query");
			else
				fail(ans, 500, "store_unavailable",
				     "the archive could not be read");
			return;
		}
		ans->status = 200;
		ans->file = true;
		ans->fd = fd;
		ans->file_len = bytes;
		ans->ctype = fmt == ARCHIVE_ZIP ? "application/zip" : "application/mbox";
		snprintf(ans->filename, sizeof(ans->filename), "archive.%s",
		         fmt == ARCHIVE_ZIP ? "zip" : "mbox");
		return;
	}
	if (r.kind == AR_RAW) {
		struct tbuf b = TBUF_INIT(SIZE_MAX / 2);
		rc = archive_raw(ar, r.id, &b);
		if (rc != TERN_OK) {
			tbuf_free(&b);
			if (rc == TERN_ENOTFOUND)
				fail(ans, 404, "not_found", "no archived message has this ID");
			else
				fail(ans, 500, "store_unavailable",
				     "the archived copy could not be read");
			return;
		}
		ans->status = 200;
		ans->raw = tbuf_steal(&b, &ans->raw_len);
		if (!ans->raw) /* an empty message */
			ans->raw = calloc(1, 1);
		ans->ctype = "message/rfc822";
		snprintf(ans->filename, sizeof(ans->filename), "%s.eml", r.id);
		return;
	}
	rc = archive_set_hold(ar, r.id, strcmp(method, "PUT") == 0);
	if (rc == TERN_ENOTFOUND)
		fail(ans, 404, "not_found", "no archived message has this ID");
	else if (rc != TERN_OK)
		fail(ans, 500, "store_unavailable", "the archive could not be written");
	else
		ans->status = 204;
}
