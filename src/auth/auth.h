/*
 * auth.h — users (passwd-file) and password checks.
 *
 * The users file is Dovecot's passwd-file format, one user per line:
 *     address:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]
 * Supported schemes: CRYPT, SHA512-CRYPT, BLF-CRYPT (all checked with
 * crypt(3) from libxcrypt, which also takes yescrypt "$y$"), and PLAIN
 * (also PLAIN and CLEARTEXT). A line with no {SCHEME} prefix is CRYPT.
 * Blank lines and lines starting with '#' are ignored. Addresses are
 * compared case-insensitively (stored lowercased).
 *
 * A struct user_db is immutable after loading and safe to share between
 * threads. users_verify() is slow by design (crypt): thread pool only.
 */
#ifndef TERN_AUTH_AUTH_H
#define TERN_AUTH_AUTH_H

#include <stdbool.h>
#include <stddef.h>

struct user_db;

/* A missing file is an empty database, not an error. Bad lines are
 * reported as "FILE:LINE: ..." in err and make the load fail. */
int users_load(const char *path, struct user_db **out, char *err, size_t errlen);
void users_free(struct user_db *db);
size_t users_count(const struct user_db *db);
bool users_exists(const struct user_db *db, const char *addr);
/* TERN_OK if the password matches, TERN_ENOTFOUND for no such user,
 * TERN_EINVAL for a wrong password or an unusable hash. */
int users_verify(const struct user_db *db, const char *addr, const char *password);
/* Calls fn for each address in file order. */
void users_foreach(const struct user_db *db, void (*fn)(const char *addr, void *arg), void *arg);

/*
 * Whether addr is a mailbox a user can be created for: an RFC 5321 mailbox
 * that RCPT TO can name and local delivery can store. The local part is a
 * dot-atom (RCPT looks users up by the unquoted local part, so a quoted
 * one never matches), at most 64 bytes, UTF-8 allowed (RFC 6531), without
 * '/' (it becomes a Maildir directory name) or a leading '#' (a comment in
 * the users file); the domain is a host name (letters, digits, '-',
 * labels of 1-63, an internationalised domain in its xn-- form), not an
 * address literal. TERN_OK, or TERN_EINVAL with a reason a person can act
 * on in *why (static text).
 */
int users_check_mailbox(const char *addr, const char **why);

/*
 * Edits the file: add (TERN_EEXIST if present) with a fresh SHA512-CRYPT
 * hash (TERN_EINVAL unless users_check_mailbox accepts addr), set a new
 * password (TERN_ENOTFOUND if absent), delete. Rewrites
 * the file atomically (temp file, fsync, rename, directory fsync), mode
 * 0600, keeping every other line as it was.
 */
int users_file_add(const char *path, const char *addr, const char *password);
int users_file_passwd(const char *path, const char *addr, const char *password);
int users_file_del(const char *path, const char *addr);

/* Hashes password with SHA512-CRYPT into out as "{SHA512-CRYPT}$6$..." */
int users_hash_password(const char *password, char *out, size_t outlen);

#endif
