/*
 * remote_stream.c — a spilled message to the next hop from its spool file
 * (design: remote_stream.h).
 *
 * Owns: the stream's file descriptor and the DATA encoder state. Must
 * never: read more than STREAM_READ bytes at once, or emit anything that
 * smtp_data_encode over the whole message would not.
 */
#include "deliver/remote_stream.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"

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

void body_pump_init(struct body_pump *p)
{
	p->fd = -1;
	p->has_fd = false;
	p->pos = p->end = 0;
	p->raw = false;
	p->active = false;
	data_encoder_init(&p->enc);
}

int body_pump_open(struct body_pump *p, const char *path, uint64_t off, uint64_t len)
{
	body_pump_close(p);
	p->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (p->fd < 0)
		return TERN_EIO;
	p->has_fd = true;
	p->pos = off;
	p->end = off + len;
	return TERN_OK;
}

void body_pump_start(struct body_pump *p, bool raw)
{
	p->raw = raw;
	p->active = true;
}

int body_pump_fill(struct body_pump *p, size_t queued, smtp_emit_fn emit, void *arg)
{
	char buf[STREAM_READ];
	while (p->active && queued < STREAM_LOW) {
		if (p->pos >= p->end) {
			if (!p->raw)
				data_encoder_end(&p->enc, emit, arg);
			p->active = false;
			body_pump_close(p);
			return TERN_OK;
		}
		uint64_t left = p->end - p->pos;
		size_t want = left < sizeof(buf) ? (size_t)left : sizeof(buf);
		ssize_t r = pread(p->fd, buf, want, (off_t)p->pos);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			p->active = false;
			body_pump_close(p);
			return r < 0 ? TERN_EIO : TERN_ECORRUPT;
		}
		p->pos += (uint64_t)r;
		if (p->raw)
			emit(arg, buf, (size_t)r);
		else
			data_encoder_feed(&p->enc, buf, (size_t)r, emit, arg);
		queued += (size_t)r;
	}
	return TERN_OK;
}

void body_pump_close(struct body_pump *p)
{
	if (p->has_fd)
		close(p->fd);
	p->has_fd = false;
	p->fd = -1;
}

int stream_copy_file(int dst, const char *path, uint64_t off, uint64_t len)
{
	int src = open(path, O_RDONLY | O_CLOEXEC);
	if (src < 0)
		return TERN_EIO;
	int rc = TERN_OK;
	loff_t in = (loff_t)off;
	uint64_t left = len;
	bool plain = false; /* copy_file_range refused (another file system, old kernel) */
	char buf[STREAM_READ];
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
	close(src);
	return rc;
}
