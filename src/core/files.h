/*
 * files.h — where the daemon gets the files its configuration names: the
 * config and its includes, certificates and keys, the users file, the DNSSEC
 * trust anchor, relay password files.
 *
 * Owns: one way to read such a file whole (regular files only, bounded), and
 * the "file source" behind it. By default files are read from the file
 * system. A daemon started as root splits in two (core/privsep.h): the
 * privileged parent *records* every file it reads into a bundle
 * {path -> contents or errno}; the unprivileged child *serves* every read
 * from the bundle it received, never from open(), so files with secrets may
 * be 0600 root. The same call sites work in all three modes.
 * Never: blocks on a FIFO or device (O_NONBLOCK, then fstat: S_ISREG only),
 * reads more than the caller's maximum, or keeps a secret in freed memory
 * (bundles are wiped when freed).
 */
#ifndef TERN_CORE_FILES_H
#define TERN_CORE_FILES_H

#include <stdbool.h>
#include <stddef.h>

#define FILES_MAX_SIZE (16u << 20)  /* one file in a bundle */
#define FILES_MAX_COUNT 256         /* files in a bundle */
#define FILES_MAX_PATH 4095         /* bytes of a path, without the NUL */
#define FILES_MAX_TOTAL (64u << 20) /* contents of all files in a bundle */

/*
 * Reads path whole into a new NUL-terminated buffer (*out, *outlen without the
 * NUL; the caller frees it, after explicit_bzero if it may hold a secret), from
 * the current file source. Returns TERN_OK; TERN_ELIMIT if the file is larger
 * than max (*err_no = EFBIG); TERN_ENOMEM; or TERN_EIO with *err_no telling
 * why (ENOENT, EACCES, EINVAL for something that is not a regular file, ...).
 * When served from a bundle that does not hold path, *err_no is EACCES.
 * Thread-safe.
 */
int tern_file_read(const char *path, size_t max, char **out, size_t *outlen, int *err_no);

/* The file-system reader behind tern_file_read, whatever the source (the
 * privileged parent reads with it). Same contract. */
int tern_file_read_fs(const char *path, size_t max, char **out, size_t *outlen, int *err_no);

/*
 * For a library that insists on opening a file by name (libunbound's trust
 * anchor): writes into out a name under which the library can read path's
 * contents. From the file system that is path itself (checked to be a readable
 * regular file first); from a bundle, "/proc/self/fd/N" of a memfd holding
 * the contents, and *fd is that memfd, which the caller closes once the
 * library has read it (*fd is -1 otherwise). Returns as tern_file_read.
 */
int tern_file_lib_path(const char *path, char *out, size_t outlen, int *fd, int *err_no);

/* ---------------------------------------------------------------- bundles */

struct file_bundle;

struct file_bundle *file_bundle_new(void);
/* Wipes every content with explicit_bzero, then frees. NULL is fine. */
void file_bundle_free(struct file_bundle *b);
/*
 * Adds a copy of path (path_len bytes, no NUL among them, 1..FILES_MAX_PATH)
 * with either err_no != 0 (the read failed; len must be 0) or the contents
 * data[0..len). TERN_OK; TERN_EEXIST if path is already there; TERN_ELIMIT
 * past FILES_MAX_*; TERN_EINVAL for a path or errno that breaks the rules;
 * TERN_ENOMEM.
 */
int file_bundle_add(struct file_bundle *b, const char *path, size_t path_len, int err_no,
                    const char *data, size_t len);
size_t file_bundle_count(const struct file_bundle *b);
/* Entry i (< count), in the order added; pointers live as long as b. */
void file_bundle_get(const struct file_bundle *b, size_t i, const char **path, size_t *path_len,
                     int *err_no, const char **data, size_t *len);

/* ----------------------------------------------------------- the source */

/* Reads one file for a recording source; contract of tern_file_read_fs. */
typedef int (*files_reader_fn)(void *arg, const char *path, size_t max, char **out, size_t *outlen,
                               int *err_no);

/*
 * Serves every later tern_file_read from b (which the source now owns) and
 * returns the bundle served before (or NULL), for the caller to free. With b
 * NULL, reads go to the file system again.
 */
struct file_bundle *files_serve_bundle(struct file_bundle *b);

/*
 * Starts recording: each tern_file_read of a path not yet in the record is
 * done by reader (at most FILES_MAX_SIZE bytes) and its outcome (contents or
 * errno) added to a new bundle, then served from it, so that a file read
 * twice reads the same. files_record_stop() ends it and hands the bundle over
 * (NULL if recording was not on); reads go to the file system again.
 */
int files_record_start(files_reader_fn reader, void *arg);
struct file_bundle *files_record_stop(void);

#endif
