/*
 * fsutil.h — the one place tern makes files and directories durable.
 *
 * A new or renamed file is only on stable storage once its data is fsync'd
 * and the directory that names it is fsync'd too (DESIGN §5.1). Every module
 * that creates files uses these helpers instead of its own copy: the
 * Maildir writer, the capture store, the users file, the daemon's data dir.
 * Nothing here logs; callers log with their own context (queue id, user).
 */
#ifndef TERN_CORE_FSUTIL_H
#define TERN_CORE_FSUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Opens dir and fsyncs it. TERN_OK or TERN_EIO. */
int tern_fsync_dir(const char *dir);
/* fsyncs the directory that contains path ("." for a bare name). TERN_OK,
 * TERN_EIO, or TERN_ELIMIT if the directory name is too long. */
int tern_fsync_parent(const char *path);

/* Writes all n bytes, resuming after short writes and EINTR. TERN_OK or
 * TERN_EIO (errno set). */
int tern_write_full(int fd, const void *p, size_t n);
/* The same for an iovec array (iovcnt may exceed IOV_MAX). */
int tern_writev_full(int fd, const struct iovec *iov, int iovcnt);

/*
 * mkdir -p: makes path and every missing parent with mode. An existing
 * directory is fine; an existing non-directory is TERN_EIO with ENOTDIR.
 * With sync, the parent of every directory it had to create is fsync'd, so
 * the new entries are durable before anything is written into them.
 * *created (may be NULL) tells whether path itself was new.
 */
int tern_mkdir_p(const char *path, mode_t mode, bool sync, bool *created);

/* How tern_write_file_atomic publishes a file. */
struct tern_write_opts {
	mode_t mode;  /* of the new file (umask does not apply) */
	uid_t uid;    /* owner to give it when running as root; (uid_t)-1 keeps ours */
	gid_t gid;    /* likewise; (gid_t)-1 keeps ours */
	bool no_sync; /* skip the file and directory fsyncs: the caller syncs the
	               * whole filesystem later (group commit, e.g. syncfs) */
};

/*
 * Replaces (or creates) path with data, atomically: a temp file beside it
 * (O_EXCL, never following a link), written in full, fsync'd, closed with
 * its error checked, renamed over path, then the directory fsync'd. A
 * reader sees the old content or the new, never a mix; after TERN_OK the
 * new content survives a crash (unless opts->no_sync). On failure the temp
 * file is removed and path is untouched. opts may be NULL (0600, no chown).
 */
int tern_write_file_atomic(const char *path, const void *data, size_t len,
                           const struct tern_write_opts *opts);

#endif
