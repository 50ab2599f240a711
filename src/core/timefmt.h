/*
 * timefmt.h — the one formatter of each date-time form tern writes: RFC 5322
 * (Date:, Received:, DSN Arrival-Date) and RFC 3339 (the APIs' JSON, CLI
 * listings, webhook status). Always English and computed from UTC: a locale
 * set by a library or the environment must never change what tern writes.
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

/* Room for any RFC 3339 output below, with its NUL (the longest,
 * "9999-12-31T23:59:59+23:59", takes 26 bytes). */
#define TERN_RFC3339_MAX 32

/* t (Unix seconds) in UTC: "2026-12-07T10:00:00Z". */
bool tern_rfc3339(int64_t t, char *out, size_t outlen);

/* us (Unix microseconds) in UTC with milliseconds, cut not rounded (as
 * Mailpit writes them): "2026-12-07T10:00:00.123Z". */
bool tern_rfc3339_ms(int64_t us, char *out, size_t outlen);

/* t as the local time of a zone tz_min minutes east of UTC, with that
 * offset ("2026-12-07T11:00:00+01:00"; "Z" for 0), as a Date: field gave it.
 * tz_min within ±23:59. */
bool tern_rfc3339_offset(int64_t t, int tz_min, char *out, size_t outlen);

/* Each of the three: false (and out left empty) for a time outside the
 * years 0000..9999 or a buffer that is too small. */

#endif
