/*
 * timefmt.h — the one RFC 5322 date-time formatter (Date:, Received:, DSN
 * Arrival-Date). Always UTC and always English: a locale set by a library
 * or the environment must never change what tern writes into a header.
 */
#ifndef TERN_CORE_TIMEFMT_H
#define TERN_CORE_TIMEFMT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest output, with its NUL: "Sun, 31 Dec 9999 23:59:59 +0000". */
#define TERN_RFC5322_DATE_MAX 32

/* Writes t (Unix seconds) as "Mon, 07 Dec 2026 10:00:00 +0000". False (and
 * out left empty) for t outside 1970..9999 or a buffer that is too small. */
bool tern_rfc5322_date(int64_t t, char *out, size_t outlen);

#endif
