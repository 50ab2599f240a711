/*
 * files.c — reading the files the configuration names, from the file system,
 * through a recording reader, or from a bundle (see files.h).
 *
 * One mutex guards the source. Bundle reads copy out under it, so a reload
 * that swaps bundles never frees memory a reader still uses. Every buffer that
 * held file contents is wiped before it is freed: these are keys and
 * password hashes.
 */
#include "core/files.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"

struct file_entry {
	char *path; /* NUL-terminated copy, path_len bytes */
	size_t path_len;
	int err;    /* 0, or why the read failed */
	char *data; /* NUL-terminated copy of the contents; NULL when err != 0 */
	size_t len;
};

struct file_bundle {
	struct file_entry *e;
	size_t n;
	size_t total; /* sum of len, against FILES_MAX_TOTAL */
};

static pthread_mutex_t src_lock = PTHREAD_MUTEX_INITIALIZER;
static struct file_bundle *serving;   /* the child's source, or NULL */
static struct file_bundle *recording; /* the parent's record, or NULL */
static files_reader_fn rec_reader;
static void *rec_arg;

static void wipe_free(char *p, size_t n)
{
	if (p) {
		explicit_bzero(p, n);
		free(p);
	}
}

/* ------------------------------------------------------------ file system */

int tern_file_read_fs(const char *path, size_t max, char **out, size_t *outlen, int *err_no)
{
	char *buf = NULL;
	size_t cap = 0, got = 0;
	int rc = TERN_EIO;
	struct stat st;

	*out = NULL;
	*outlen = 0;
	*err_no = 0;
	/* O_NONBLOCK: opening a FIFO for reading must not wait for a writer. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		*err_no = errno;
		return TERN_EIO;
	}
	if (fstat(fd, &st) != 0) {
		*err_no = errno;
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		*err_no = EINVAL;
		goto out;
	}
	if (st.st_size < 0 || (uint64_t)st.st_size > max) {
		*err_no = EFBIG;
		rc = TERN_ELIMIT;
		goto out;
	}
	cap = (size_t)st.st_size + 1;
	if (!(buf = malloc(cap))) {
		*err_no = ENOMEM;
		rc = TERN_ENOMEM;
		goto out;
	}
	for (;;) {
		if (got == cap - 1) {
			/* Full: the file may have grown since fstat. */
			char c;
			ssize_t r;
			do
				r = read(fd, &c, 1);
			while (r < 0 && errno == EINTR);
			if (r == 0)
				break;
			if (r < 0) {
				*err_no = errno;
				goto out;
			}
			if (got >= max) {
				*err_no = EFBIG;
				rc = TERN_ELIMIT;
				goto out;
			}
			size_t want = (cap - 1) * 2 + 4096;
			if (want > max)
				want = max;
			size_t ncap = want + 1;
			char *nb = malloc(ncap);
			if (!nb) {
				*err_no = ENOMEM;
				rc = TERN_ENOMEM;
				goto out;
			}
			memcpy(nb, buf, got);
			wipe_free(buf, cap);
			buf = nb;
			cap = ncap;
			buf[got++] = c;
			continue;
		}
		ssize_t r = read(fd, buf + got, cap - 1 - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			*err_no = errno;
			goto out;
		}
		if (r == 0) /* shrank while we read: what is there */
			break;
		got += (size_t)r;
	}
	buf[got] = '\0';
	*out = buf;
	*outlen = got;
	buf = NULL;
	rc = TERN_OK;
out:
	wipe_free(buf, cap);
	close(fd);
	return rc;
}

/* ---------------------------------------------------------------- bundles */

struct file_bundle *file_bundle_new(void)
{
	return calloc(1, sizeof(struct file_bundle));
}

void file_bundle_free(struct file_bundle *b)
{
	if (!b)
		return;
	for (size_t i = 0; i < b->n; i++) {
		free(b->e[i].path);
		wipe_free(b->e[i].data, b->e[i].len);
	}
	free(b->e);
	free(b);
}

static struct file_entry *find(const struct file_bundle *b, const char *path, size_t path_len)
{
	for (size_t i = 0; i < b->n; i++)
		if (b->e[i].path_len == path_len && memcmp(b->e[i].path, path, path_len) == 0)
			return &b->e[i];
	return NULL;
}

int file_bundle_add(struct file_bundle *b, const char *path, size_t path_len, int err_no,
                    const char *data, size_t len)
{
	if (path_len == 0 || path_len > FILES_MAX_PATH || memchr(path, '\0', path_len) ||
	    err_no < 0 || err_no > 4095 || (err_no != 0 && len != 0))
		return TERN_EINVAL;
	if (find(b, path, path_len))
		return TERN_EEXIST;
	if (b->n >= FILES_MAX_COUNT || len > FILES_MAX_SIZE || len > FILES_MAX_TOTAL - b->total)
		return TERN_ELIMIT;
	if (b->n % 16 == 0) {
		struct file_entry *ne = realloc(b->e, (b->n + 16) * sizeof(*ne));
		if (!ne)
			return TERN_ENOMEM;
		b->e = ne;
	}
	struct file_entry e = {.path = malloc(path_len + 1), .path_len = path_len, .err = err_no};
	if (err_no == 0)
		e.data = malloc(len + 1);
	if (!e.path || (err_no == 0 && !e.data)) {
		free(e.path);
		free(e.data);
		return TERN_ENOMEM;
	}
	memcpy(e.path, path, path_len);
	e.path[path_len] = '\0';
	if (e.data) {
		if (len)
			memcpy(e.data, data, len);
		e.data[len] = '\0';
		e.len = len;
	}
	b->e[b->n++] = e;
	b->total += len;
	return TERN_OK;
}

size_t file_bundle_count(const struct file_bundle *b)
{
	return b ? b->n : 0;
}

void file_bundle_get(const struct file_bundle *b, size_t i, const char **path, size_t *path_len,
                     int *err_no, const char **data, size_t *len)
{
	TERN_BUG_ON(i >= b->n);
	*path = b->e[i].path;
	*path_len = b->e[i].path_len;
	*err_no = b->e[i].err;
	*data = b->e[i].data;
	*len = b->e[i].len;
}

/* A copy of the entry for path, under the caller's max. */
static int serve(const struct file_bundle *b, const char *path, size_t max, char **out,
                 size_t *outlen, int *err_no)
{
	const struct file_entry *e = find(b, path, strlen(path));
	if (!e) {
		/* The parent never read it: a route the last reload removed, or a
		 * reader serve.c's touch_referenced does not know about. */
		char q[256];
		log_warn("event=file_not_in_bundle path=%s",
		         log_quote(path, strlen(path), q, sizeof(q)));
		*err_no = EACCES;
		return TERN_EIO;
	}
	if (e->err) {
		*err_no = e->err;
		return e->err == EFBIG ? TERN_ELIMIT : TERN_EIO;
	}
	if (e->len > max) {
		*err_no = EFBIG;
		return TERN_ELIMIT;
	}
	char *p = malloc(e->len + 1);
	if (!p) {
		*err_no = ENOMEM;
		return TERN_ENOMEM;
	}
	memcpy(p, e->data, e->len + 1);
	*out = p;
	*outlen = e->len;
	return TERN_OK;
}

/* Reads path for the record (once) and serves it from there. Lock held. */
static int record(const char *path, size_t max, char **out, size_t *outlen, int *err_no)
{
	size_t plen = strlen(path);
	if (!find(recording, path, plen)) {
		char *data = NULL;
		size_t len = 0;
		int en = 0;
		int rc = rec_reader(rec_arg, path, FILES_MAX_SIZE, &data, &len, &en);
		if (rc == TERN_ENOMEM) {
			*err_no = ENOMEM;
			return rc; /* not the file's fault: not recorded */
		}
		if (rc != TERN_OK && (en <= 0 || en > 4095))
			en = EIO;
		rc = file_bundle_add(recording, path, plen, rc == TERN_OK ? 0 : en, data, len);
		wipe_free(data, len);
		if (rc != TERN_OK) {
			*err_no = rc == TERN_ENOMEM   ? ENOMEM
			          : rc == TERN_ELIMIT ? EFBIG
			                              : ENAMETOOLONG;
			return rc == TERN_ENOMEM ? rc : rc == TERN_ELIMIT ? rc : TERN_EIO;
		}
	}
	return serve(recording, path, max, out, outlen, err_no);
}

int tern_file_read(const char *path, size_t max, char **out, size_t *outlen, int *err_no)
{
	*out = NULL;
	*outlen = 0;
	*err_no = 0;
	pthread_mutex_lock(&src_lock);
	if (recording) {
		int rc = record(path, max, out, outlen, err_no);
		pthread_mutex_unlock(&src_lock);
		return rc;
	}
	if (serving) {
		int rc = serve(serving, path, max, out, outlen, err_no);
		pthread_mutex_unlock(&src_lock);
		return rc;
	}
	pthread_mutex_unlock(&src_lock);
	return tern_file_read_fs(path, max, out, outlen, err_no);
}

int tern_file_lib_path(const char *path, char *out, size_t outlen, int *fd, int *err_no)
{
	char *data = NULL;
	size_t len = 0;
	*fd = -1;
	pthread_mutex_lock(&src_lock);
	bool bundled = serving != NULL && recording == NULL;
	pthread_mutex_unlock(&src_lock);
	int rc = tern_file_read(path, FILES_MAX_SIZE, &data, &len, err_no);
	if (rc != TERN_OK)
		return rc;
	if (!bundled) {
		wipe_free(data, len);
		if (tern_strlcpy(out, path, outlen) < outlen)
			return TERN_OK;
		*err_no = ENAMETOOLONG;
		return TERN_ELIMIT;
	}
	rc = TERN_EIO;
	int m = memfd_create("tern-file", MFD_CLOEXEC);
	if (m < 0) {
		*err_no = errno;
		goto out;
	}
	for (size_t off = 0; off < len;) {
		ssize_t w = write(m, data + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			*err_no = w < 0 ? errno : EIO;
			goto out;
		}
		off += (size_t)w;
	}
	int k = snprintf(out, outlen, "/proc/self/fd/%d", m);
	if (k < 0 || (size_t)k >= outlen) {
		*err_no = ENAMETOOLONG;
		goto out;
	}
	*fd = m;
	m = -1;
	rc = TERN_OK;
out:
	if (m >= 0)
		close(m);
	wipe_free(data, len);
	return rc;
}

/* ----------------------------------------------------------- the source */

struct file_bundle *files_serve_bundle(struct file_bundle *b)
{
	pthread_mutex_lock(&src_lock);
	struct file_bundle *old = serving;
	serving = b;
	pthread_mutex_unlock(&src_lock);
	return old;
}

int files_record_start(files_reader_fn reader, void *arg)
{
	struct file_bundle *b = file_bundle_new();
	if (!b)
		return TERN_ENOMEM;
	pthread_mutex_lock(&src_lock);
	struct file_bundle *old = recording;
	recording = b;
	rec_reader = reader;
	rec_arg = arg;
	pthread_mutex_unlock(&src_lock);
	TERN_BUG_ON(old != NULL);
	file_bundle_free(old);
	return TERN_OK;
}

struct file_bundle *files_record_stop(void)
{
	pthread_mutex_lock(&src_lock);
	struct file_bundle *b = recording;
	recording = NULL;
	rec_reader = NULL;
	rec_arg = NULL;
	pthread_mutex_unlock(&src_lock);
	return b;
}
