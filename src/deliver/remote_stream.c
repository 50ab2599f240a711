/*
 * remote_stream.c — a spilled message to the next hop from its spool file
 * (design: remote_stream.h).
 *
 * Owns: the reader (file, two chunk buffers, running CRC) and the DATA
 * encoder state. Must never: read on the event loop when it has a pool,
 * read more than STREAM_READ bytes at once, hand out the last chunk of a
 * file whose CRC differs, or emit anything that smtp_data_encode over the
 * whole message would not.
 */
#include "deliver/remote_stream.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "queue/spill.h"

void data_encoder_init(struct data_encoder *e)
{
	e->bol = true;
	e->cr = false;
}

void data_encoder_feed(struct data_encoder *e, const char *msg, size_t len, smtp_emit_fn emit,
                       void *arg)
{
	size_t run = 0, i = 0;
	if (e->cr && len > 0) {
		/* the CR that ended the last piece: CR LF, or a bare CR made CRLF */
		e->cr = false;
		emit(arg, "\r\n", 2);
		e->bol = true;
		if (msg[0] == '\n')
			i = run = 1;
	}
	for (; i < len; i++) {
		char ch = msg[i];
		if (ch == '\0') {
			if (i > run)
				emit(arg, msg + run, i - run);
			run = i + 1;
			continue;
		}
		if (e->bol && ch == '.') {
			if (i > run)
				emit(arg, msg + run, i - run);
			emit(arg, ".", 1);
			run = i;
		}
		e->bol = false;
		if (ch == '\r' && i + 1 < len && msg[i + 1] == '\n') {
			i++;
			e->bol = true;
		} else if (ch == '\r' && i + 1 == len) {
			/* decided by the next piece */
			if (i > run)
				emit(arg, msg + run, i - run);
			run = i + 1;
			e->cr = true;
		} else if (ch == '\r' || ch == '\n') {
			if (i > run)
				emit(arg, msg + run, i - run);
			emit(arg, "\r\n", 2);
			run = i + 1;
			e->bol = true;
		}
	}
	if (len > run)
		emit(arg, msg + run, len - run);
}

void data_encoder_end(struct data_encoder *e, smtp_emit_fn emit, void *arg)
{
	if (e->cr) {
		e->cr = false;
		emit(arg, "\r\n", 2);
		e->bol = true;
	}
	if (!e->bol)
		emit(arg, "\r\n", 2);
	emit(arg, ".\r\n", 3);
}

/* ------------------------------------------------------ the reader */

enum slot_state { SLOT_FREE, SLOT_READING, SLOT_READY };

struct spill_reader {
	pthread_mutex_t mu;
	struct event *ev; /* on the connection's base: a chunk is ready */
	struct pool *pool;
	task_fn more;
	void *more_arg;
	char *path;
	int fd; /* the pool thread's (opened by the first read) */
	bool opened;
	/* under mu */
	uint64_t rpos, end; /* next byte to read; the range's end */
	uint64_t off;       /* the range's start (the CRC covers [0, off) too) */
	bool check;
	uint32_t want, crc;
	char *buf[2];
	size_t len[2];
	enum slot_state st[2];
	unsigned head, tail; /* next slot to hand out; next slot to read into */
	bool job;            /* a read is queued or running */
	bool orphan;         /* the pump closed it while a read ran: the read frees it */
	bool waiting;        /* fill found nothing ready: more() when a read ends */
	bool done;           /* the last byte was read (and, with check, the CRC compared) */
	int err;
};

static void reader_release(struct spill_reader *rd)
{
	/* Removes the event if a read activated it and the loop has not run
	 * it yet (libevent waits for a callback running on another thread). */
	if (rd->ev)
		event_free(rd->ev);
	if (rd->opened && rd->fd >= 0)
		close(rd->fd);
	free(rd->buf[0]);
	free(rd->buf[1]);
	free(rd->path);
	pthread_mutex_destroy(&rd->mu);
	free(rd);
}

/* Reads n bytes at off into dst; TERN_ECORRUPT when the file ends first. */
static int pread_full(int fd, char *dst, size_t n, uint64_t off)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = pread(fd, dst + got, n - got, (off_t)(off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return TERN_EIO;
		if (r == 0)
			return TERN_ECORRUPT;
		got += (size_t)r;
	}
	return TERN_OK;
}

/*
 * One read (a pool thread, or the loop without a pool): the slot at tail
 * gets the next chunk. The first read opens the file and runs the CRC over
 * the bytes before the range. Only the reading thread touches the slot's
 * buffer and the fd while the slot is SLOT_READING.
 */
static void reader_job(void *arg);

static void reader_read(struct spill_reader *rd)
{
	pthread_mutex_lock(&rd->mu);
	if (rd->orphan) { /* closed before this read began */
		pthread_mutex_unlock(&rd->mu);
		reader_release(rd);
		return;
	}
	unsigned s = rd->tail;
	uint64_t at = rd->rpos, end = rd->end, off = rd->off;
	bool check = rd->check;
	uint32_t crc = rd->crc;
	rd->st[s] = SLOT_READING;
	pthread_mutex_unlock(&rd->mu);

	int rc = TERN_OK;
	char *dst = rd->buf[s];
	size_t n = end - at < STREAM_READ ? (size_t)(end - at) : STREAM_READ;
	if (!rd->opened) {
		rd->fd = open(rd->path, O_RDONLY | O_CLOEXEC);
		rd->opened = true;
		if (rd->fd < 0)
			rc = TERN_EIO;
		/* the header block the job's data replaces: checked, not sent */
		for (uint64_t p = 0; rc == TERN_OK && check && p < off;) {
			size_t k = off - p < STREAM_READ ? (size_t)(off - p) : STREAM_READ;
			rc = pread_full(rd->fd, dst, k, p);
			if (rc == TERN_OK)
				crc = spill_crc32c(crc, dst, k);
			p += k;
		}
	}
	if (rc == TERN_OK && n > 0)
		rc = pread_full(rd->fd, dst, n, at);
	if (rc == TERN_OK && check)
		crc = spill_crc32c(crc, dst, n);

	pthread_mutex_lock(&rd->mu);
	if (rd->orphan) {
		pthread_mutex_unlock(&rd->mu);
		reader_release(rd);
		return;
	}
	rd->crc = crc;
	if (rc == TERN_OK) {
		rd->len[s] = n;
		rd->st[s] = SLOT_READY;
		rd->tail ^= 1u;
		rd->rpos = at + n;
		if (rd->rpos >= end) {
			rd->done = true;
			if (check && crc != rd->want)
				rc = TERN_ECORRUPT;
		}
	} else {
		rd->st[s] = SLOT_FREE;
	}
	if (rc != TERN_OK && !rd->err)
		rd->err = rc;
	/* Read ahead: the other slot, if the loop has handed it out already. */
	bool again = rd->pool && !rd->err && !rd->done && rd->st[rd->tail] == SLOT_FREE;
	if (again)
		again = pool_submit(rd->pool, reader_job, NULL, NULL, rd) == TERN_OK;
	rd->job = again;
	bool tell = rd->waiting;
	rd->waiting = false;
	if (tell && rd->ev)
		event_active(rd->ev, EV_TIMEOUT, 1);
	pthread_mutex_unlock(&rd->mu);
}

static void reader_job(void *arg)
{
	reader_read(arg);
}

/* On the connection's loop: a chunk the pump waited for is ready. */
static void reader_ready(evutil_socket_t fd, short what, void *arg)
{
	struct spill_reader *rd = arg;
	pthread_mutex_lock(&rd->mu);
	bool gone = rd->orphan;
	pthread_mutex_unlock(&rd->mu);
	if (!gone)
		rd->more(rd->more_arg);
}

/* Under mu: has the next chunk read if a slot is free and none is. */
static void reader_kick(struct spill_reader *rd)
{
	if (rd->job || rd->err || rd->done || rd->st[rd->tail] != SLOT_FREE || !rd->pool)
		return;
	if (pool_submit(rd->pool, reader_job, NULL, NULL, rd) == TERN_OK)
		rd->job = true;
	else
		rd->err = TERN_ENOMEM;
}

void body_pump_init(struct body_pump *p)
{
	p->rd = NULL;
	p->pos = p->end = 0;
	p->raw = false;
	p->active = false;
	data_encoder_init(&p->enc);
}

int body_pump_open(struct body_pump *p, struct pool *pool, struct worker *w, const char *path,
                   uint64_t off, uint64_t len, bool check, uint32_t crc, task_fn more, void *arg)
{
	body_pump_close(p);
	p->active = false;
	struct spill_reader *rd = calloc(1, sizeof(*rd));
	if (!rd)
		return TERN_ENOMEM;
	pthread_mutex_init(&rd->mu, NULL);
	rd->fd = -1;
	rd->pool = pool;
	rd->more = more;
	rd->more_arg = arg;
	rd->path = strdup(path);
	rd->buf[0] = malloc(STREAM_READ);
	rd->buf[1] = malloc(STREAM_READ);
	if (pool && w)
		rd->ev = event_new(worker_base(w), -1, 0, reader_ready, rd);
	if (!rd->path || !rd->buf[0] || !rd->buf[1] || (pool && !rd->ev)) {
		reader_release(rd);
		return TERN_ENOMEM;
	}
	if (!rd->ev)
		rd->pool = NULL; /* no way to be told: read on the caller's thread */
	rd->off = off;
	rd->rpos = off;
	rd->end = off + len;
	rd->check = check;
	rd->want = crc;
	p->rd = rd;
	p->pos = off;
	p->end = off + len;
	data_encoder_init(&p->enc);
	pthread_mutex_lock(&rd->mu);
	reader_kick(rd); /* reading starts now, ahead of the data phase */
	pthread_mutex_unlock(&rd->mu);
	return TERN_OK;
}

bool body_pump_fresh(const struct body_pump *p)
{
	return p->rd && !p->active && p->pos == p->rd->off;
}

void body_pump_start(struct body_pump *p, bool raw)
{
	p->raw = raw;
	p->active = true;
}

int body_pump_fill(struct body_pump *p, size_t queued, smtp_emit_fn emit, void *arg)
{
	struct spill_reader *rd = p->rd;
	if (!p->active || !rd)
		return TERN_OK;
	int rc = TERN_OK;
	pthread_mutex_lock(&rd->mu);
	while (queued < STREAM_LOW) {
		if (rd->err) {
			/* held back: with a CRC mismatch this is the last chunk */
			rc = rd->err;
			break;
		}
		unsigned h = rd->head;
		if (rd->st[h] != SLOT_READY) {
			if (p->pos >= p->end && rd->done) {
				pthread_mutex_unlock(&rd->mu);
				if (!p->raw)
					data_encoder_end(&p->enc, emit, arg);
				p->active = false;
				body_pump_close(p);
				return TERN_OK;
			}
			if (!rd->pool) { /* no pool: read here */
				pthread_mutex_unlock(&rd->mu);
				reader_read(rd);
				pthread_mutex_lock(&rd->mu);
				continue;
			}
			reader_kick(rd);
			rd->waiting = true; /* reader_ready calls more */
			break;
		}
		char *b = rd->buf[h];
		size_t n = rd->len[h];
		pthread_mutex_unlock(&rd->mu);
		if (p->raw)
			emit(arg, b, n);
		else
			data_encoder_feed(&p->enc, b, n, emit, arg);
		p->pos += n;
		queued += n;
		pthread_mutex_lock(&rd->mu);
		rd->st[h] = SLOT_FREE;
		rd->head ^= 1u;
		reader_kick(rd);
	}
	pthread_mutex_unlock(&rd->mu);
	if (rc != TERN_OK) {
		p->active = false;
		body_pump_close(p);
	}
	return rc;
}

void body_pump_close(struct body_pump *p)
{
	struct spill_reader *rd = p->rd;
	p->rd = NULL;
	if (!rd)
		return;
	pthread_mutex_lock(&rd->mu);
	bool busy = rd->job;
	if (busy)
		rd->orphan = true; /* the read under way frees it */
	pthread_mutex_unlock(&rd->mu);
	if (!busy)
		reader_release(rd);
}

int stream_copy_file(int dst, const char *path, uint64_t off, uint64_t len, bool check,
                     uint32_t crc)
{
	int src = open(path, O_RDONLY | O_CLOEXEC);
	if (src < 0)
		return TERN_EIO;
	int rc = TERN_OK;
	loff_t in = (loff_t)off;
	uint64_t left = len;
	/* plain: copy_file_range refused (another file system, old kernel), or
	 * the bytes must pass through here to be checked */
	bool plain = check;
	char buf[STREAM_READ];
	uint32_t c = 0;
	for (uint64_t p = 0; check && p < off && rc == TERN_OK;) {
		/* the header block the record's data replaces: checked, not copied */
		size_t k = off - p < sizeof(buf) ? (size_t)(off - p) : sizeof(buf);
		rc = pread_full(src, buf, k, p);
		if (rc == TERN_OK)
			c = spill_crc32c(c, buf, k);
		p += k;
	}
	while (left > 0 && rc == TERN_OK) {
		size_t want = left < (1u << 30) ? (size_t)left : (1u << 30);
		ssize_t r;
		if (!plain) {
			r = copy_file_range(src, &in, dst, NULL, want, 0);
			if (r < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL ||
			              errno == EOPNOTSUPP)) {
				plain = true;
				continue;
			}
		} else {
			r = pread(src, buf, want < sizeof(buf) ? want : sizeof(buf), (off_t)in);
			if (r > 0 && tern_write_full(dst, buf, (size_t)r) != TERN_OK)
				r = -1;
			else if (r > 0)
				in += r;
			if (r > 0 && check)
				c = spill_crc32c(c, buf, (size_t)r);
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			rc = TERN_EIO;
		else if (r == 0)
			rc = TERN_ECORRUPT;
		else
			left -= (uint64_t)r;
	}
	if (rc == TERN_OK && check && c != crc)
		rc = TERN_ECORRUPT;
	close(src);
	return rc;
}
