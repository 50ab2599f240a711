/*
 * archive_routes.h — the HTTP API's archive routes (admin keys only; api.c
 * checks the key and wires them):
 *
 *   GET    /api/v1/archive?query=&start=&limit=   Mailpit-like result list
 *   GET    /api/v1/archive/{id}/raw                the original bytes
 *   GET    /api/v1/archive/export?query=&format=mbox|zip
 *   PUT    /api/v1/archive/{id}/hold               legal hold on
 *   DELETE /api/v1/archive/{id}/hold               legal hold off
 */
#ifndef TERN_HTTP_ARCHIVE_ROUTES_H
#define TERN_HTTP_ARCHIVE_ROUTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core/id.h"

struct archive;

enum archive_route_kind { AR_LIST, AR_EXPORT, AR_RAW, AR_HOLD };

struct archive_route_req {
	enum archive_route_kind kind;
	char id[QUEUE_ID_LEN + 1]; /* AR_RAW, AR_HOLD: a valid queue id */
};

/* Pure: rest[0..n) is the path after "/api/v1/archive" ("", "/export",
 * "/ID/raw", "/ID/hold"). TERN_OK or TERN_ENOTFOUND. */
int archive_route_parse(const char *rest, size_t n, struct archive_route_req *out);

/* Pure: name's value in the raw query string qs[0..n) (after '?'),
 * %XX- and '+'-decoded into out (NUL-terminated). TERN_OK, TERN_ENOTFOUND
 * (absent), TERN_ESYNTAX (a bad escape, a NUL) or TERN_ELIMIT (too long). */
int archive_query_param(const char *qs, size_t n, const char *name, char *out, size_t outlen);

/* The answer: JSON (json set: {"error": {"code","message"}} when status is
 * not 2xx, NULL for 204) or bytes (raw set, malloc'd; or, for an export,
 * file set: file_len bytes of the unnamed file fd from offset 0), with
 * ctype and a download file name. The caller frees json and raw, and
 * closes fd when file is set (or hands it to the reply). */
struct archive_answer {
	int status;
	const char *code; /* the error code for a failure ("not_found", ...) */
	const char *message;
	json_t *json;
	char *raw;
	size_t raw_len;
	bool file;
	int fd;
	uint64_t file_len;
	const char *ctype;
	char filename[64]; /* "" when inline */
};

/* Runs one request on ar (on the API's pool: it blocks on SQLite). */
void archive_route(struct archive *ar, const char *method, const char *rest, const char *qs,
                   struct archive_answer *ans);

#endif
