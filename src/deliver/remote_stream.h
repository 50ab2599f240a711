/*
 * remote_stream.h — sending a spilled message (queue/spill.h) to the next
 * hop from its spool file, in bounded memory (issue 11 item 2).
 *
 * Design. The message is the job's data (our trace fields and the
 * client's header block) followed by a range of its spill file. The
 * connection queues the data, then tops up its output from the file in
 * STREAM_READ chunks whenever what is queued (TLS layer and socket) falls
 * under STREAM_LOW, so a connection holds about STREAM_LOW + 3 x STREAM_READ
 * bytes of the message whatever its size (the queue, and the reader's two
 * chunks). For DATA the bytes go through
 * a stateful encoder (dot-stuffing, line ends made CRLF, NUL left out)
 * whose output equals smtp_data_encode over the whole message however it
 * is split; for BDAT (BINARYMIME) they go as they are.
 *
 * The reads never run on the event loop (issue 11 item 2's leftover): a
 * reader on a thread pool opens the file and reads it ahead into two
 * STREAM_READ buffers, so while the loop hands one chunk to the socket the
 * next is being read; it stops when both are full (the socket is slow) and
 * the loop stops taking chunks when STREAM_LOW bytes are queued (the reader
 * is slow: the connection waits for it, never the loop). The reader tells
 * the loop a chunk is ready through an event of the connection's base
 * (event_active from the pool thread), so a reader whose connection went —
 * at shutdown too — leaves no closure behind: the job that finds it orphaned
 * frees it, or the owner does, removing the pending event with it.
 *
 * With check, the reader runs a CRC32C over the whole file (its first off
 * bytes, the client's header block that the job's data replaces, included)
 * and compares it with the record's when it has read the last byte, before
 * that last chunk is handed out: a damaged file never gets its end of data
 * (the caller closes the connection without the final dot, so the receiver
 * discards what it got; RFC 5321 §4.1.1.4).
 *
 * Owns: the reader (its file, two buffers, the running CRC) and the encoder
 * state. Must never: read the file on the event loop (unless there is no
 * pool), hold more than two chunks of the file, end the data on anything
 * but the CRLF "." CRLF it adds itself, or hand out the last chunk of a file
 * whose CRC does not match.
 */
#ifndef TERN_DELIVER_REMOTE_STREAM_H
#define TERN_DELIVER_REMOTE_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "smtp/smtp.h"

/* 128 KiB (256 KiB before the read-ahead): with the reader's two chunks a
 * connection holds about what it did with one chunk read on the loop. */
#define STREAM_LOW (128u * 1024u)
#define STREAM_READ (64u * 1024u)

/* The DATA encoder of smtp_data_encode, fed in pieces. */
struct data_encoder {
	bool bol; /* at the start of a line */
	bool cr;  /* the last byte fed was a CR, its fate not decided yet */
};
void data_encoder_init(struct data_encoder *e);
void data_encoder_feed(struct data_encoder *e, const char *p, size_t n, smtp_emit_fn emit,
                       void *arg);
/* The end: a line end if the last line has none, then ".\r\n". */
void data_encoder_end(struct data_encoder *e, smtp_emit_fn emit, void *arg);

struct spill_reader; /* remote_stream.c: shared with the pool thread reading ahead */

struct body_pump {
	struct spill_reader *rd; /* NULL: none open (a zeroed pump has none) */
	uint64_t pos, end;       /* next byte to hand out; the range's end */
	bool raw;                /* BINARYMIME: bytes as they are, no encoder, no end line */
	bool active;
	struct data_encoder enc;
};

void body_pump_init(struct body_pump *p);
/*
 * Starts reading [off, off+len) of path ahead on pool (NULL: reads run in
 * body_pump_fill, on the caller's thread). With check the file's first
 * off+len bytes are checked against crc as they are read. more(arg) runs on
 * w's loop when a read ended while body_pump_fill had nothing to hand out.
 * Any open reader is closed first. TERN_OK or TERN_ENOMEM; a file that
 * cannot be opened shows as TERN_EIO from body_pump_fill.
 */
int body_pump_open(struct body_pump *p, struct pool *pool, struct worker *w, const char *path,
                   uint64_t off, uint64_t len, bool check, uint32_t crc, task_fn more, void *arg);
/* Open, and nothing handed out yet (a send can use it without reopening). */
bool body_pump_fresh(const struct body_pump *p);
/* Starts sending: raw or encoded (the encoder has seen the head already). */
void body_pump_start(struct body_pump *p, bool raw);
/*
 * Adds ready chunks to out while queued (bytes already waiting) stays under
 * STREAM_LOW, and has the next ones read; at the end of the range, finishes
 * (the encoder's end) and closes. TERN_OK: all it could for now (more()
 * comes when a chunk it waits for is read). TERN_EIO (unreadable),
 * TERN_ECORRUPT (short, or the CRC differs; the last chunk was held back):
 * the caller ends the connection without the end of data.
 */
int body_pump_fill(struct body_pump *p, size_t queued, smtp_emit_fn emit, void *arg);
/* Stops reading; a read under way frees the reader when it ends. */
void body_pump_close(struct body_pump *p);

/* Local delivery of a spilled message: appends len bytes of path from off
 * to dst (copy_file_range, else read/write in STREAM_READ pieces; with
 * check, read/write only, the CRC32C of the file's first off + len bytes
 * compared with crc at the end, before the caller moves the copy into
 * place). Blocks: for delivery threads. TERN_OK, TERN_EIO, or
 * TERN_ECORRUPT (path short, or its CRC differs). */
int stream_copy_file(int dst, const char *path, uint64_t off, uint64_t len, bool check,
                     uint32_t crc);

#endif
