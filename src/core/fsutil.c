/*
 * fsutil.c — durable files and directories (see fsutil.h).
 *
 * Owns: the write/fsync/close/rename/fsync-directory sequence and mkdir -p.
 * Never: logs, or leaves a temp file behind after a failure it reports.
 */
#include "core/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"

int tern_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return TERN_EIO;
	int rc = fsync(fd) == 0 ? TERN_OK : TERN_EIO;
	/* close() can report a deferred error: it counts. */
	if (close(fd) != 0 && rc == TERN_OK)
		rc = TERN_EIO;
	return rc;
}

int tern_fsync_parent(const char *path)
{
	char parent[PATH_MAX];
	const char *slash = strrchr(path, '/');
	if (slash == NULL)
		return tern_fsync_dir(".");
	size_t n = (size_t)(slash - path);
	if (n == 0)
		return tern_fsync_dir("/");
	if (n >= sizeof(parent))
		return TERN_ELIMIT;
	memcpy(parent, path, n);
	parent[n] = '\0';
	return tern_fsync_dir(parent);
}

int tern_write_full(int fd, const void *p, size_t n)
{
	const char *c = p;

	while (n > 0) {
		ssize_t w = write(fd, c, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return TERN_EIO;
		if (w == 0) {
			errno = EIO;
			return TERN_EIO;
		}
		c += w;
		n -= (size_t)w;
	}
	return TERN_OK;
}

/* At most this many iovecs per writev call (IOV_MAX is 1024 on Linux). */
#define WRITEV_CHUNK 64

int tern_writev_full(int fd, const struct iovec *iov, int iovcnt)
{
	struct iovec chunk[WRITEV_CHUNK];
	int idx = 0;
	size_t off = 0; /* bytes of iov[idx] already written */

	for (;;) {
		while (idx < iovcnt && iov[idx].iov_len == off) {
			idx++;
			off = 0;
		}
		if (idx >= iovcnt)
			return TERN_OK;
		int cnt = 0;
		for (int i = idx; i < iovcnt && cnt < WRITEV_CHUNK; i++, cnt++) {
			size_t skip = i == idx ? off : 0;
			chunk[cnt].iov_base = (char *)iov[i].iov_base + skip;
			chunk[cnt].iov_len = iov[i].iov_len - skip;
		}
		ssize_t w = writev(fd, chunk, cnt);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return TERN_EIO;
		if (w == 0) {
			errno = EIO;
			return TERN_EIO;
		}
		size_t left = (size_t)w;
		while (left > 0) {
			size_t avail = iov[idx].iov_len - off;
			if (left < avail) {
				off += left;
				break;
			}
			left -= avail;
			idx++;
			off = 0;
		}
	}
}

/* One directory; *created says whether it is new. */
static int mkdir_one(const char *path, mode_t mode, bool *created)
{
	struct stat st;

	*created = false;
	if (mkdir(path, mode) == 0) {
		*created = true;
		return TERN_OK;
	}
	/* EEXIST, or EACCES on a component that exists but we cannot write. */
	if (stat(path, &st) == 0) {
		if (S_ISDIR(st.st_mode))
			return TERN_OK;
		errno = ENOTDIR;
	}
	return TERN_EIO;
}

int tern_mkdir_p(const char *path, mode_t mode, bool sync, bool *created)
{
	char buf[PATH_MAX];
	size_t len = strlen(path);
	bool made = false;
	int rc = TERN_OK;

	if (created)
		*created = false;
	while (len > 1 && path[len - 1] == '/')
		len--;
	if (len == 0)
		return TERN_EINVAL;
	if (len >= sizeof(buf))
		return TERN_ELIMIT;
	memcpy(buf, path, len);
	buf[len] = '\0';
	for (size_t i = 1; i <= len; i++) {
		if (i < len && buf[i] != '/')
			continue;
		if (i < len && buf[i - 1] == '/')
			continue; /* "a//b" */
		buf[i] = '\0';
		rc = mkdir_one(buf, mode, &made);
		if (rc == TERN_OK && made && sync)
			rc = tern_fsync_parent(buf);
		if (i < len)
			buf[i] = '/';
		if (rc != TERN_OK)
			return rc;
	}
	if (created)
		*created = made;
	return TERN_OK;
}

/* Distinguishes temp names of threads of one process. */
static atomic_ulong tmp_counter;

int tern_write_file_atomic(const char *path, const void *data, size_t len,
                           const struct tern_write_opts *opts)
{
	static const struct tern_write_opts defaults = {
	    .mode = 0600, .uid = (uid_t)-1, .gid = (gid_t)-1, .no_sync = false};
	const struct tern_write_opts *o = opts ? opts : &defaults;
	char tmp[PATH_MAX];
	int fd = -1, rc = TERN_OK;

	for (int attempt = 0;; attempt++) {
		unsigned long q = atomic_fetch_add(&tmp_counter, 1);
		int n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld.%lu", path, (long)getpid(), q);

		if (n < 0 || (size_t)n >= sizeof(tmp))
			return TERN_ELIMIT;
		fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, o->mode);
		if (fd >= 0)
			break;
		if ((errno != EEXIST && errno != EINTR) || attempt > 100)
			return TERN_EIO;
	}
	if (fchmod(fd, o->mode) != 0)
		rc = TERN_EIO;
	if (rc == TERN_OK && geteuid() == 0 && (o->uid != (uid_t)-1 || o->gid != (gid_t)-1) &&
	    fchown(fd, o->uid, o->gid) != 0)
		rc = TERN_EIO;
	if (rc == TERN_OK)
		rc = tern_write_full(fd, data, len);
	if (rc == TERN_OK && !o->no_sync && fsync(fd) != 0)
		rc = TERN_EIO;
	if (close(fd) != 0 && rc == TERN_OK)
		rc = TERN_EIO;
	if (rc == TERN_OK && rename(tmp, path) != 0)
		rc = TERN_EIO;
	if (rc != TERN_OK) {
		int saved = errno;

		unlink(tmp);
		errno = saved;
		return rc;
	}
	return o->no_sync ? TERN_OK : tern_fsync_parent(path);
}
