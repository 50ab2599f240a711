/*
 * privsep.h — a daemon started as root runs as two processes (DESIGN §2, as
 * OpenSMTPD's parent and Postfix's master do).
 *
 * The parent keeps root for two things only: it binds the listeners before
 * the fork (cli/serve.c), and it reads the files the configuration names —
 * at start and on SIGHUP — handing their contents to the child as a bundle
 * (core/files.h) over a socketpair. It never reads from the network nor from
 * the child; it forwards SIGTERM and SIGINT to the child, reaps it, and exits
 * with its status. The child drops to the configured account before it reads
 * anything, serves every file read from the bundles it receives, and does all
 * the rest: every byte of network input is parsed without root.
 *
 * Wire format, parent to child over a SOCK_STREAM socketpair, integers
 * big-endian:
 *   header   "TRNP" | version 1 (u8) | type (u8) | 0 (u16) | body length (u32)
 *   BUNDLE   count (u32), then count times:
 *            path length (u16) | errno (u16) | data length (u32) | path | data
 * The parent is trusted, but the child still parses strictly and within the
 * limits of files.h: a known type and version, zero padding, each field in
 * range, an errno entry without data, no duplicate path, nothing left over.
 * There is one encoding of a bundle, so decode(encode(b)) == b byte for byte.
 */
#ifndef TERN_CORE_PRIVSEP_H
#define TERN_CORE_PRIVSEP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "core/files.h"

struct tbuf;

#define PRIVSEP_HDR_LEN 12
#define PRIVSEP_ENTRY_HDR_LEN 8
/* The largest body a well-formed bundle can have. */
#define PRIVSEP_MSG_MAX                                                                            \
	((size_t)4 + (size_t)FILES_MAX_COUNT * (PRIVSEP_ENTRY_HDR_LEN + FILES_MAX_PATH) +          \
	 FILES_MAX_TOTAL)

enum privsep_msg_type { PRIVSEP_MSG_BUNDLE = 1 };

/* ------------------------------------------------------------ wire codec */

/* Appends header and body for b to out. TERN_OK, TERN_ELIMIT (out's cap),
 * TERN_ENOMEM. */
int privsep_msg_encode_bundle(const struct file_bundle *b, struct tbuf *out);
/* Checks a header (PRIVSEP_HDR_LEN bytes): TERN_OK with *type and *body_len
 * (<= PRIVSEP_MSG_MAX); TERN_ESYNTAX for a bad magic, version, type or
 * padding; TERN_ELIMIT for a body too long. */
int privsep_msg_header(const void *hdr, unsigned *type, size_t *body_len);
/* Parses a BUNDLE body of exactly len bytes into a new bundle (*out; the
 * caller frees it). TERN_OK, TERN_ESYNTAX, TERN_ELIMIT, TERN_ENOMEM; *out is
 * NULL on failure. */
int privsep_msg_decode_bundle(const void *body, size_t len, struct file_bundle **out);

/* ------------------------------------------------------- the parent's reads */

/*
 * True when only root can change what path names: every directory the lookup
 * passes through, including those symbolic links lead to, is root's and
 * writable by no one else, or is sticky (as /tmp) and the entry looked up is
 * root's. Relative paths start from the working directory, which is checked
 * the same way. The file itself may belong to anyone.
 */
bool privsep_path_root_safe(const char *path);

/*
 * The parent's reader (files_reader_fn; arg is a struct privsep_reader).
 * Config files (before `referenced` is set) are read as root, as every
 * daemon reads its config; one whose path is not root-safe is logged and
 * marks the config `tainted`. A file the config names is read as root only
 * when the config is not tainted and its path is root-safe; otherwise with
 * the unprivileged account's uid and gid, so that the child can never obtain
 * through the parent a file it could not open itself (a symbolic link planted
 * in its own data directory, say).
 */
struct privsep_reader {
	uid_t uid; /* the unprivileged account */
	gid_t gid;
	bool referenced; /* set once the config itself has been read */
	bool tainted;    /* a config file is not root-safe */
};
int privsep_read_file(void *arg, const char *path, size_t max, char **out, size_t *outlen,
                      int *err_no);

/* ------------------------------------------------------------ the split */

/*
 * Creates the socketpair and forks. Returns the child's pid in the parent and
 * 0 in the child, each with its end in *sock; -1 (errno set) on failure.
 * SIGCHLD is blocked in the parent from before the fork, so the child's end
 * is never missed. Call it with no other thread running.
 */
pid_t privsep_fork(int *sock);

/*
 * The child's first step, before it reads anything: drops to uid/gid (no
 * supplementary groups), checks that root cannot be regained, and arranges
 * to be killed if the parent dies. TERN_OK, or TERN_EIO with err filled.
 */
int privsep_child_drop(pid_t parent, uid_t uid, gid_t gid, const char *user, char *err,
                       size_t errlen);

/*
 * Reads one message from the parent (blocking) and returns its bundle in
 * *out. TERN_OK; TERN_ENOTFOUND when the parent closed the channel between
 * messages; TERN_EIO, TERN_ESYNTAX, TERN_ELIMIT, TERN_ENOMEM with err filled.
 */
int privsep_child_receive(int sock, struct file_bundle **out, char *err, size_t errlen);

/*
 * The parent's whole life after the fork. Sends first (and frees it), then
 * waits for signals: SIGHUP calls reload() for a new bundle (NULL: the
 * reload failed and was logged; nothing is sent) and queues it for the
 * child; SIGTERM and SIGINT are passed on to the child; when the child ends
 * it is reaped. Never reads from sock. Returns the exit status for the
 * program: the child's own, or 1 if it was killed by a signal.
 */
typedef struct file_bundle *(*privsep_reload_fn)(void *arg);
int privsep_parent_run(pid_t child, int sock, struct file_bundle *first, privsep_reload_fn reload,
                       void *arg);

#endif
