/*
 * err.h — the return convention shared by every tern module.
 *
 * Functions that can fail return an int: TERN_OK (0) on success or one of
 * the negative TERN_E* codes below. Incremental parsers use their own
 * four-way results (see smtp/smtp.h) instead. Assertions guard tern's own
 * invariants only; nothing a client sends may ever trigger one.
 */
#ifndef TERN_CORE_ERR_H
#define TERN_CORE_ERR_H

enum tern_err {
	TERN_OK = 0,
	TERN_ENOMEM = -1,   /* allocation failed */
	TERN_ELIMIT = -2,   /* a configured or hard bound would be exceeded */
	TERN_EIO = -3,      /* a system call failed; errno tells which */
	TERN_ESYNTAX = -4,  /* malformed input */
	TERN_ENOTFOUND = -5,
	TERN_EEXIST = -6,
	TERN_ECORRUPT = -7, /* on-disk data failed its checksum or format check */
	TERN_EINVAL = -8,   /* caller passed something that makes no sense */
};

/* A short lowercase word for logs ("nomem", "limit", ...). */
const char *tern_strerror(int err);

/*
 * TERN_BUG_ON(cond): cond must never be true; if it is, tern itself is wrong
 * (never the client or the disk: bad input gets an error code, not this).
 * Debug and test builds abort with the file and line, so the test that
 * reached it fails loudly. Release builds log one `event=bug` line and let
 * the caller recover: the macro's value is cond, for
 *     if (TERN_BUG_ON(len > cap)) return TERN_EINVAL;
 */
void tern_bug(const char *file, int line, const char *expr);
#define TERN_BUG_ON(cond) \
	(__builtin_expect(!!(cond), 0) ? (tern_bug(__FILE__, __LINE__, #cond), 1) : 0)

#endif
