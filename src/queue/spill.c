/*
 * spill.c — a large message's file in DIR/spill/ (design: spill.h).
 *
 * Owns: creating, appending to, syncing, checking, reading and removing
 * spill files. Must never: be called from an event loop (every function
 * blocks on the disk), or remove a file the caller says a record names.
 */
#include "queue/spill.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "queue/spool_internal.h"

static int io_err(int e)
{
	return e == ENOSPC || e == EDQUOT || e == EFBIG ? TERN_ELIMIT : TERN_EIO;
}

int spill_create(const char *spool_dir, const char *id, struct spill_file *f)
{
	memset(f, 0, sizeof(*f));
	f->fd = -1;
	int n = snprintf(f->name, sizeof(f->name), "%s.msg", id);
	if (n <= 0 || (size_t)n >= sizeof(f->name) || !spool_spill_name_ok(f->name, (size_t)n))
		return TERN_EINVAL;
	n = snprintf(f->dir, sizeof(f->dir), "%s/%s", spool_dir, SPILL_DIR);
	if (n <= 0 || (size_t)n >= sizeof(f->dir))
		return TERN_ELIMIT;
	n = snprintf(f->path, sizeof(f->path), "%s/%s", f->dir, f->name);
	if (n <= 0 || (size_t)n >= sizeof(f->path))
		return TERN_ELIMIT;
	/* The directory is made on first use (a spool that never saw a large
	 * message has none), and its entry synced like any new file's. */
	if (mkdir(f->dir, 0700) == 0) {
		if (tern_fsync_dir(spool_dir) != TERN_OK)
			return TERN_EIO;
	} else if (errno != EEXIST) {
		int e = errno;
		log_error("event=spill_create_failed id=%s path=%s errno=%d", id, f->dir, e);
		return io_err(e);
	}
	f->fd = open(f->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (f->fd < 0) {
		int e = errno;
		log_error("event=spill_create_failed id=%s path=%s errno=%d", id, f->path, e);
		return io_err(e);
	}
	return TERN_OK;
}

int spill_write(struct spill_file *f, const void *p, size_t n)
{
	if (f->fd < 0)
		return TERN_EIO;
	if (tern_write_full(f->fd, p, n) != TERN_OK) {
		int e = errno;
		log_error("event=spill_write_failed path=%s errno=%d", f->path, e);
		return io_err(e);
	}
	f->crc = spool_crc32c(f->crc, p, n);
	f->size += n;
	return TERN_OK;
}

int spill_sync(struct spill_file *f)
{
	if (f->fd < 0)
		return TERN_EIO;
	if (fdatasync(f->fd) != 0) {
		int e = errno;
		log_error("event=spill_sync_failed path=%s errno=%d", f->path, e);
		return io_err(e);
	}
	return tern_fsync_dir(f->dir);
}

uint32_t spill_crc32c(uint32_t crc, const void *p, size_t n)
{
	return spool_crc32c(crc, p, n);
}

void spill_close(struct spill_file *f)
{
	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
}

void spill_abort(struct spill_file *f)
{
	if (f->fd >= 0) {
		close(f->fd);
		f->fd = -1;
		if (unlink(f->path) != 0 && errno != ENOENT)
			log_warn("event=spill_unlink_failed path=%s errno=%d", f->path, errno);
	}
}

static int open_in_dir(int dirfd, const char *name)
{
	char rel[128];
	int n = snprintf(rel, sizeof(rel), "%s/%s", SPILL_DIR, name);
	if (n <= 0 || (size_t)n >= sizeof(rel) || !spool_spill_name_ok(name, strlen(name))) {
		errno = EINVAL;
		return -1;
	}
	return openat(dirfd, rel, O_RDONLY | O_CLOEXEC);
}

int spill_read(int dirfd, const char *id, const char *name, uint64_t size, uint32_t crc,
               uint64_t off, uint64_t want, bool check, struct tbuf *out)
{
	if (off > size || want > size - off || want > SIZE_MAX - 1)
		return TERN_EINVAL;
	int fd = open_in_dir(dirfd, name);
	if (fd < 0) {
		log_error("event=spool_spill_missing id=%s file=%s errno=%d", id, name, errno);
		return TERN_ECORRUPT;
	}
	int rc = tbuf_reserve(out, (size_t)want);
	/* With check every byte is read (the CRC covers the whole file); the
	 * ones before off through a small buffer, the rest straight into out. */
	uint64_t pos = check ? 0 : off, end = check ? size : off + want, c = 0;
	char tmp[16384];
	while (rc == TERN_OK && pos < end) {
		bool into_out = pos >= off && pos < off + want;
		char *dst;
		size_t room;
		if (into_out) {
			dst = out->data + out->len + (pos - off);
			room = (size_t)(off + want - pos);
		} else {
			dst = tmp;
			uint64_t lim = pos < off ? off - pos : end - pos;
			room = lim < sizeof(tmp) ? (size_t)lim : sizeof(tmp);
		}
		ssize_t r = pread(fd, dst, room, (off_t)pos);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			log_error("event=spool_read_failed id=%s file=%s errno=%d", id, name,
			          errno);
			rc = TERN_EIO;
		} else if (r == 0) {
			log_error("event=spool_spill_short id=%s file=%s size=%" PRIu64
			          " found=%" PRIu64,
			          id, name, size, pos);
			rc = TERN_ECORRUPT;
		} else {
			if (check)
				c = spool_crc32c((uint32_t)c, dst, (size_t)r);
			pos += (uint64_t)r;
		}
	}
	if (rc == TERN_OK && check && (uint32_t)c != crc) {
		log_error("event=spool_spill_corrupt id=%s file=%s reason=checksum", id, name);
		rc = TERN_ECORRUPT;
	}
	close(fd);
	if (rc == TERN_OK) {
		out->len += (size_t)want;
		out->data[out->len] = '\0';
	}
	return rc;
}

int spill_check(int dirfd, const char *id, const char *name, uint64_t size)
{
	char rel[128];
	snprintf(rel, sizeof(rel), "%s/%s", SPILL_DIR, name);
	struct stat st;
	if (fstatat(dirfd, rel, &st, 0) != 0) {
		log_error("event=spool_spill_missing id=%s file=%s errno=%d action=\"kept, not "
		          "deliverable\"",
		          id, name, errno);
		return TERN_ECORRUPT;
	}
	if ((uint64_t)st.st_size < size) {
		log_error("event=spool_spill_short id=%s file=%s size=%" PRIu64 " found=%" PRIu64
		          " action=\"kept, not deliverable\"",
		          id, name, size, (uint64_t)st.st_size);
		return TERN_ECORRUPT;
	}
	return TERN_OK;
}

void spill_unlink(int dirfd, const char *name)
{
	char rel[128];
	snprintf(rel, sizeof(rel), "%s/%s", SPILL_DIR, name);
	if (unlinkat(dirfd, rel, 0) != 0 && errno != ENOENT)
		log_warn("event=spill_unlink_failed file=%s errno=%d", name, errno);
}

void spill_sweep(int dirfd, bool (*named)(void *arg, const char *name), void *arg)
{
	int fd = openat(dirfd, SPILL_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return;
	}
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (spool_spill_name_ok(de->d_name, strlen(de->d_name)) && named(arg, de->d_name))
			continue;
		if (unlinkat(fd, de->d_name, 0) == 0)
			log_info(
			    "event=spill_orphan_removed file=%s reason=\"no spool record names "
			    "it\"",
			    de->d_name);
		else
			log_warn("event=spill_unlink_failed file=%s errno=%d", de->d_name, errno);
	}
	closedir(d);
}
