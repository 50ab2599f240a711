/*
 * data_stream.h — a session's large message on its way to its spill file
 * (issue 11 item 2; the file and record design is queue/spill.h).
 *
 * Design. Writing from the event loop must not block, so the session
 * hands chunks to a writer on a thread pool: bounded buffering with
 * backpressure. The session keeps at most one chunk it is filling
 * (SPILL_CHUNK bytes) and the writer holds at most one it is writing;
 * while the writer is behind, the session stops reading its socket
 * (bufferevent read off) and resumes when the chunk is written. So a
 * spilling session holds about 2 x SPILL_CHUNK of message bytes whatever
 * the message size, and a slow disk slows the client, never the loop.
 * The last chunk is written with fdatasync of the file and an fsync of the
 * spill directory, on the pool, before the record goes to the spool. The
 * file itself (and the spill directory, the first time) is made on the pool
 * too, and a stream that is not kept is closed and removed there.
 *
 * A job tells the loop it ended through an event of the session's base
 * (event_active from the pool thread), not a posted closure: a stream freed
 * while a job runs is freed by that job when it ends, and one freed after
 * (at shutdown the loops have stopped, and nothing would run a closure)
 * takes the pending event with it. So a stop in the middle of a large DATA
 * leaves neither memory nor a file behind.
 *
 * Owns: the writer's state and the chunk it is writing; the read-only
 * mapping the end-of-data checks read a spilled message through.
 * Must never: touch the session (it only calls resume on the session's
 * worker), or free itself while a pool job still uses it (a stream freed
 * while busy is finished by the job's end, which removes the file).
 */
#ifndef TERN_SMTP_DATA_STREAM_H
#define TERN_SMTP_DATA_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"

struct data_stream;

/* Starts making the spill file for queue id on the pool: the stream is
 * busy until it is made (a failure shows in data_stream_error, with
 * nothing written). resume(arg) runs on w each time a job ends, unless the
 * stream was freed meanwhile. TERN_OK, TERN_EINVAL (no pool), TERN_ENOMEM. */
int data_stream_open(const char *spool_dir, const char *id, struct pool *p, struct worker *w,
                     task_fn resume, void *arg, struct data_stream **out);
/* The make, a write or the final sync is running on the pool (or its end
 * has not reached the loop yet). */
bool data_stream_busy(const struct data_stream *ds);
/* The first error of the make, a write or the sync (TERN_OK if none). */
int data_stream_error(const struct data_stream *ds);
/* Hands bytes buf[off, off+n) to the writer, which frees buf (malloc'd)
 * afterwards; with final, the file is synced after them. Only when not
 * busy. TERN_OK, or TERN_ENOMEM (buf freed, nothing written). */
int data_stream_push(struct data_stream *ds, char *buf, size_t off, size_t n, bool final);
/* After the final push ended without error: the file is on stable storage. */
bool data_stream_synced(const struct data_stream *ds);
const char *data_stream_name(const struct data_stream *ds);
uint64_t data_stream_size(const struct data_stream *ds);
uint32_t data_stream_crc(const struct data_stream *ds);
/* The record naming the file is committed: the file stays after free. */
void data_stream_keep(struct data_stream *ds);
/* Maps the whole (synced) file read-only for the end-of-data checks. */
int data_stream_map(struct data_stream *ds, const char **p, size_t *n);
/* Frees the stream: the file is removed unless kept. The mapping, the
 * close and the removal run after any job already queued on after_pool (a
 * single-thread FIFO pool whose jobs may read the mapping; NULL: at once,
 * here). A job still running frees the stream when it ends instead. */
void data_stream_free(struct data_stream *ds, struct pool *after_pool);

/* Bare CR, bare LF and NUL in a byte stream fed in pieces (BDAT chunks of
 * a non-BINARYMIME message), with the same verdict as smtp_scan_line_ends
 * over the whole (smtp.h). */
struct data_line_scan {
	bool cr; /* the last byte fed was a CR */
	bool bare_eol, has_nul;
};
void data_line_scan_feed(struct data_line_scan *sc, const char *p, size_t n);
void data_line_scan_end(struct data_line_scan *sc);

#endif
