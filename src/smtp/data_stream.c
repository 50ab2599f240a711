/*
 * data_stream.c — a session's large message on its way to its spill file
 * (design: data_stream.h and queue/spill.h).
 *
 * Owns: the writer state, the chunk being written, the mapping of a
 * finished file. Must never: make, write, sync, unmap or remove the file on
 * the event loop (when it has a pool), touch the session, or free a stream
 * a pool job still uses.
 */
#include "smtp/data_stream.h"

#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"
#include "queue/spill.h"

struct data_stream {
	pthread_mutex_t mu;
	struct spill_file f;
	char *dir; /* the spool directory, for the create job */
	char id[72];
	struct pool *pool;
	struct event *ev; /* on the session's base: a job ended */
	task_fn resume;
	void *arg;
	/* the job's: set by push (or open), used by the job */
	char *buf;
	size_t off, n;
	bool create; /* the job makes the file (mkdir, open, directory sync) */
	bool final;
	bool busy; /* the loop's view: a job runs or its end was not seen yet */
	/* under mu */
	bool job;    /* a job is queued or running */
	bool orphan; /* freed while a job ran: the job frees it */
	bool synced;
	bool keep;
	int err;
	void *map;
	size_t map_len;
};

/* Everything but the event (freed by the owner or the orphaned job first). */
static void stream_release(struct data_stream *ds)
{
	if (ds->map)
		munmap(ds->map, ds->map_len);
	if (ds->keep)
		spill_close(&ds->f);
	else
		spill_abort(&ds->f); /* close and unlink (a file not made yet: nothing) */
	free(ds->buf);
	free(ds->dir);
	pthread_mutex_destroy(&ds->mu);
	free(ds);
}

/* On the pool: makes the file, or writes a chunk (and with final syncs). */
static void job_run(void *arg)
{
	struct data_stream *ds = arg;
	pthread_mutex_lock(&ds->mu);
	bool gone = ds->orphan;
	int err = ds->err;
	pthread_mutex_unlock(&ds->mu);
	if (!gone && err == TERN_OK) {
		if (ds->create) {
			err = spill_create(ds->dir, ds->id, &ds->f);
			if (err != TERN_OK)
				ds->f.fd = -1; /* spill_abort then has nothing to remove */
		} else {
			if (ds->n)
				err = spill_write(&ds->f, ds->buf + ds->off, ds->n);
			if (err == TERN_OK && ds->final)
				err = spill_sync(&ds->f);
		}
	}
	free(ds->buf);
	ds->buf = NULL;
	pthread_mutex_lock(&ds->mu);
	if (err != TERN_OK && ds->err == TERN_OK)
		ds->err = err;
	ds->create = false;
	ds->job = false;
	gone = ds->orphan;
	if (!gone)
		event_active(ds->ev, EV_TIMEOUT, 1); /* job_end on the session's loop */
	pthread_mutex_unlock(&ds->mu);
	if (gone) {
		event_free(ds->ev); /* never activated: no callback can be running */
		stream_release(ds);
	}
}

/* On the session's loop: the job ended (never runs once the stream is freed:
 * data_stream_free removes the activated event with the event). */
static void job_end(evutil_socket_t fd, short what, void *arg)
{
	struct data_stream *ds = arg;
	pthread_mutex_lock(&ds->mu);
	ds->busy = false;
	if (ds->final && ds->err == TERN_OK)
		ds->synced = true;
	pthread_mutex_unlock(&ds->mu);
	ds->resume(ds->arg);
}

static int submit(struct data_stream *ds)
{
	pthread_mutex_lock(&ds->mu);
	ds->busy = ds->job = true;
	pthread_mutex_unlock(&ds->mu);
	if (pool_submit(ds->pool, job_run, NULL, NULL, ds) == TERN_OK)
		return TERN_OK;
	pthread_mutex_lock(&ds->mu);
	ds->busy = ds->job = false;
	pthread_mutex_unlock(&ds->mu);
	return TERN_ENOMEM;
}

int data_stream_open(const char *spool_dir, const char *id, struct pool *p, struct worker *w,
                     task_fn resume, void *arg, struct data_stream **out)
{
	*out = NULL;
	if (!p)
		return TERN_EINVAL; /* no pool: no writer, the message stays in memory */
	struct data_stream *ds = calloc(1, sizeof(*ds));
	if (!ds)
		return TERN_ENOMEM;
	pthread_mutex_init(&ds->mu, NULL);
	ds->f.fd = -1;
	ds->pool = p;
	ds->resume = resume;
	ds->arg = arg;
	ds->dir = strdup(spool_dir);
	ds->ev = event_new(worker_base(w), -1, 0, job_end, ds);
	int n = snprintf(ds->id, sizeof(ds->id), "%s", id);
	if (!ds->dir || !ds->ev || n <= 0 || (size_t)n >= sizeof(ds->id)) {
		if (ds->ev)
			event_free(ds->ev);
		stream_release(ds);
		return n <= 0 || (size_t)n >= sizeof(ds->id) ? TERN_EINVAL : TERN_ENOMEM;
	}
	/* The directory and the file are made on the pool (a mkdir, an open,
	 * the first time a directory sync): the stream is busy until then. */
	ds->create = true;
	if (submit(ds) != TERN_OK) {
		event_free(ds->ev);
		stream_release(ds);
		return TERN_ENOMEM;
	}
	*out = ds;
	return TERN_OK;
}

bool data_stream_busy(const struct data_stream *ds)
{
	return ds->busy;
}

int data_stream_error(const struct data_stream *ds)
{
	return ds->err; /* read on the loop once the job's end was seen */
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
	if (submit(ds) != TERN_OK) {
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

static void job_release(void *arg)
{
	stream_release(arg);
}

void data_stream_free(struct data_stream *ds, struct pool *after_pool)
{
	if (!ds)
		return;
	pthread_mutex_lock(&ds->mu);
	bool running = ds->job;
	if (running)
		ds->orphan = true; /* job_run frees it when it ends */
	pthread_mutex_unlock(&ds->mu);
	if (running)
		return;
	/* No job: an end it activated but the loop did not run yet (at
	 * shutdown, the loop stopped) goes with the event. */
	event_free(ds->ev);
	ds->ev = NULL;
	/* The mapping (a check's job queued before this one may still read it:
	 * the pool runs its jobs in order on one thread), the close and the
	 * unlink of a file of many megabytes: not on the loop. */
	if (after_pool && pool_submit(after_pool, job_release, NULL, NULL, ds) == TERN_OK)
		return;
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
