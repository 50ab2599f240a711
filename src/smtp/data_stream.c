/*
 * data_stream.c — a session's large message on its way to its spill file
 * (design: data_stream.h and queue/spill.h).
 *
 * Owns: the writer state, the chunk being written, the mapping of a
 * finished file. Must never: run a write on the event loop, touch the
 * session, or free a stream a pool job still uses.
 */
#include "smtp/data_stream.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"
#include "queue/spill.h"

struct data_stream {
	struct spill_file f;
	struct pool *pool;
	struct worker *w;
	task_fn resume;
	void *arg;
	/* the job's: set by push, read by the job, cleared by job_done */
	char *buf;
	size_t off, n;
	bool final;
	bool busy;
	bool orphan; /* freed while busy: job_done finishes the free */
	bool synced;
	bool keep;
	int err;
	void *map;
	size_t map_len;
};

int data_stream_open(const char *spool_dir, const char *id, struct pool *p, struct worker *w,
                     task_fn resume, void *arg, struct data_stream **out)
{
	*out = NULL;
	if (!p)
		return TERN_EINVAL; /* no pool: no writer, the message stays in memory */
	struct data_stream *ds = calloc(1, sizeof(*ds));
	if (!ds)
		return TERN_ENOMEM;
	int rc = spill_create(spool_dir, id, &ds->f);
	if (rc != TERN_OK) {
		free(ds);
		return rc;
	}
	ds->pool = p;
	ds->w = w;
	ds->resume = resume;
	ds->arg = arg;
	*out = ds;
	return TERN_OK;
}

bool data_stream_busy(const struct data_stream *ds)
{
	return ds->busy;
}

int data_stream_error(const struct data_stream *ds)
{
	return ds->err;
}

static void job_write(void *arg)
{
	struct data_stream *ds = arg;
	if (ds->err == TERN_OK && ds->n)
		ds->err = spill_write(&ds->f, ds->buf + ds->off, ds->n);
	if (ds->err == TERN_OK && ds->final && !ds->orphan)
		ds->err = spill_sync(&ds->f);
}

static void stream_release(struct data_stream *ds)
{
	if (ds->map)
		munmap(ds->map, ds->map_len);
	if (ds->keep)
		spill_close(&ds->f);
	else
		spill_abort(&ds->f);
	free(ds);
}

static void job_done(void *arg)
{
	struct data_stream *ds = arg;
	free(ds->buf);
	ds->buf = NULL;
	ds->busy = false;
	if (ds->orphan) {
		stream_release(ds);
		return;
	}
	if (ds->final && ds->err == TERN_OK)
		ds->synced = true;
	ds->resume(ds->arg);
}

int data_stream_push(struct data_stream *ds, char *buf, size_t off, size_t n, bool final)
{
	if (TERN_BUG_ON(ds->busy)) {
		free(buf);
		return TERN_EINVAL;
	}
	ds->buf = buf;
	ds->off = off;
	ds->n = n;
	ds->final = final;
	ds->busy = true;
	if (pool_submit(ds->pool, job_write, ds->w, job_done, ds) != TERN_OK) {
		ds->busy = false;
		free(buf);
		ds->buf = NULL;
		return TERN_ENOMEM;
	}
	return TERN_OK;
}

bool data_stream_synced(const struct data_stream *ds)
{
	return ds->synced;
}

const char *data_stream_name(const struct data_stream *ds)
{
	return ds->f.name;
}

uint64_t data_stream_size(const struct data_stream *ds)
{
	return ds->f.size;
}

uint32_t data_stream_crc(const struct data_stream *ds)
{
	return ds->f.crc;
}

void data_stream_keep(struct data_stream *ds)
{
	ds->keep = true;
}

int data_stream_map(struct data_stream *ds, const char **p, size_t *n)
{
	if (!ds->map) {
		if (ds->f.size == 0 || ds->f.size > SIZE_MAX)
			return TERN_EINVAL;
		int fd = open(ds->f.path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return TERN_EIO;
		void *m = mmap(NULL, (size_t)ds->f.size, PROT_READ, MAP_SHARED, fd, 0);
		close(fd);
		if (m == MAP_FAILED)
			return TERN_EIO;
		ds->map = m;
		ds->map_len = (size_t)ds->f.size;
	}
	*p = ds->map;
	*n = ds->map_len;
	return TERN_OK;
}

struct unmap_job {
	void *p;
	size_t n;
};

static void job_unmap(void *arg)
{
	struct unmap_job *u = arg;
	munmap(u->p, u->n);
	free(u);
}

void data_stream_free(struct data_stream *ds, struct pool *unmap_pool)
{
	if (!ds)
		return;
	if (ds->map && unmap_pool) {
		/* A check's job queued before this one may still read the
		 * mapping: the pool runs its jobs in order on one thread. */
		struct unmap_job *u = malloc(sizeof(*u));
		if (u) {
			u->p = ds->map;
			u->n = ds->map_len;
			if (pool_submit(unmap_pool, job_unmap, NULL, NULL, u) == TERN_OK)
				ds->map = NULL;
			else
				free(u);
		}
		/* else: left mapped until the stream goes (below), the safe side */
	}
	if (ds->busy) {
		ds->orphan = true;
		return;
	}
	stream_release(ds);
}

void data_line_scan_feed(struct data_line_scan *sc, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (sc->cr) {
			sc->cr = false;
			if (c == '\n')
				continue; /* CR LF */
			sc->bare_eol = true;
		}
		if (c == '\0')
			sc->has_nul = true;
		else if (c == '\r')
			sc->cr = true;
		else if (c == '\n')
			sc->bare_eol = true;
	}
}

void data_line_scan_end(struct data_line_scan *sc)
{
	if (sc->cr)
		sc->bare_eol = true;
	sc->cr = false;
}
