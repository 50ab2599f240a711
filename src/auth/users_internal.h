/*
 * users_internal.h — the pure parts of users.c, exposed for unit tests and
 * the fuzz target. Not a public header: only src/auth/ and tests include it.
 */
#ifndef TERN_AUTH_USERS_INTERNAL_H
#define TERN_AUTH_USERS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/auth.h"
#include "core/buf.h"

/* Largest users file we read or rewrite (TERN_ELIMIT beyond). */
#define USERS_FILE_MAX (64u * 1024 * 1024)
/* Longest address we accept (RFC 5321 path limit is 256 with brackets). */
#define USERS_ADDR_MAX 320

/*
 * Parses a users file held in memory (buf, len; need not be NUL-terminated,
 * may contain anything). name is used in messages ("NAME:LINE: ...").
 * On success *out is a new database; on failure *out is NULL, err holds
 * the first problem and the result is TERN_ESYNTAX (bad line) or
 * TERN_ENOMEM. Never calls crypt(3) to hash, only to check hash syntax.
 */
int users_parse_buffer(const char *buf, size_t len, const char *name, struct user_db **out,
                       char *err, size_t errlen);

/* TERN_OK if addr is acceptable in a users file: exactly one '@' with
 * non-empty sides, no ':', whitespace or control bytes, no leading '#';
 * TERN_EINVAL otherwise, TERN_ELIMIT if longer than USERS_ADDR_MAX. */
int users_check_address(const char *addr);

enum users_edit_op {
	USERS_EDIT_ADD,    /* append "addr:pwfield" (TERN_EEXIST if present) */
	USERS_EDIT_PASSWD, /* replace the password field (TERN_ENOTFOUND if absent) */
	USERS_EDIT_DEL,    /* drop the user's line(s) (TERN_ENOTFOUND if absent) */
};

/*
 * The edit behind users_file_*, as a pure function: reads the file image
 * (buf, len), writes the new image into out (which the caller initialised
 * and frees). Every line that is not the user's is copied byte for byte.
 * pwfield ("{SCHEME}hash") is ignored for USERS_EDIT_DEL; it must contain
 * no ':' or line break (TERN_EINVAL).
 */
int users_edit_buffer(const char *buf, size_t len, enum users_edit_op op, const char *addr,
                      const char *pwfield, struct tbuf *out);

/*
 * Dovecot's quota rule (the value of userdb_quota_rule=, e.g. "*:storage=512M"):
 * MAILBOX:LIMIT[:LIMIT...], LIMIT one of storage=N (kilobytes without a unit,
 * as in Dovecot), bytes=N (bytes), messages=N (accepted, not enforced by
 * tern), ignore (no limit); units b, k, M, G, T. Only the "*" rule applies
 * (*applies); a folder's rule is left to Dovecot. *bytes 0 means unlimited.
 * NULL, or why the rule is bad (relative rules such as +10% are refused).
 */
const char *users_parse_quota_rule(const char *p, size_t n, bool *applies, uint64_t *bytes);
/* The extra fields of a users line (space-separated key=value): finds
 * userdb_quota_rule (the last one wins). NULL or why it is bad. */
const char *users_parse_extra(const char *p, size_t n, bool *has_quota, uint64_t *bytes);

#endif
