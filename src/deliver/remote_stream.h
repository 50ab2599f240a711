/*
 * remote_stream.h — sending a spilled message (queue/spill.h) to the next
 * hop from its spool file, in bounded memory (issue 11 item 2).
 *
 * Design. The message is the job's data (our trace fields and the
 * client's header block) followed by a range of its spill file. The
 * connection queues the data, then tops up its output from the file in
 * STREAM_READ chunks whenever what is queued (TLS layer and socket) falls
 * under STREAM_LOW, so a connection holds about STREAM_LOW + STREAM_READ
 * bytes of the message whatever its size. For DATA the bytes go through
 * a stateful encoder (dot-stuffing, line ends made CRLF, NUL left out)
 * whose output equals smtp_data_encode over the whole message however it
 * is split; for BDAT (BINARYMIME) they go as they are.
 *
 * The reads are pread()s of at most STREAM_READ bytes on the event loop:
 * the file was just written (page cache) and each read is bounded, as
 * reads of a small message's segment are today.
 *
 * Owns: the open file, its position and the encoder state. Must never:
 * hold more than one chunk of the file in memory, or end the data on
 * anything but the CRLF "." CRLF it adds itself.
 */
#ifndef TERN_DELIVER_REMOTE_STREAM_H
#define TERN_DELIVER_REMOTE_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtp/smtp.h"

#define STREAM_LOW (256u * 1024u)
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

struct body_pump {
	int fd;
	bool has_fd; /* fd is open (a zeroed pump has none) */
	uint64_t pos, end;
	bool raw; /* BINARYMIME: bytes as they are, no encoder, no end line */
	bool active;
	struct data_encoder enc;
};

void body_pump_init(struct body_pump *p);
/* Opens path for the range [off, off+len). TERN_OK or TERN_EIO (logged by the caller). */
int body_pump_open(struct body_pump *p, const char *path, uint64_t off, uint64_t len);
/* Starts sending: raw or encoded (the encoder has seen the head already). */
void body_pump_start(struct body_pump *p, bool raw);
/* Adds to out while queued (bytes already waiting) stays under STREAM_LOW;
 * at the end of the range, finishes (the encoder's end) and closes.
 * TERN_OK, or TERN_EIO / TERN_ECORRUPT (the file is short): the caller
 * ends the connection, the message waits for its next try. */
int body_pump_fill(struct body_pump *p, size_t queued, smtp_emit_fn emit, void *arg);
void body_pump_close(struct body_pump *p);

/* Local delivery of a spilled message: appends len bytes of path from off
 * to dst (copy_file_range, else read/write in STREAM_READ pieces). Blocks:
 * for delivery threads. TERN_OK, TERN_EIO, or TERN_ECORRUPT (path short). */
int stream_copy_file(int dst, const char *path, uint64_t off, uint64_t len);

#endif
