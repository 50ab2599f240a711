/*
 * spill.h — large messages in their own file (issue 11 item 2, DESIGN §6:
 * "very large messages may be spooled to their own file, synced in the
 * same batch").
 *
 * Design. A message up to SPILL_THRESHOLD bytes travels as today: in the
 * session's buffer, then whole in its spool record (the 4 KiB relay path
 * is untouched). Past the threshold the session spills: the client's
 * bytes go, as they arrive, to DIR/spill/ID.msg, and only our own trace
 * fields (Received, Authentication-Results, DKIM-Signature) stay in
 * memory. The spool record then carries those trace fields as its data
 * and a typed reference to the file (name, size, CRC32C; queue.h
 * struct spool_msg.spill, flag bit 6 of the MSG record): the message is
 * the record's data followed by the file.
 *
 * Durability (DESIGN §5.1): the file is fdatasync'd and the spill
 * directory fsync'd (spill_sync, on the thread pool) before the record is
 * handed to the spool's group commit, so the 250 that follows that commit
 * means both are on stable storage. After a crash: a record whose file is
 * missing or short is a loud error (the message stays in the queue,
 * undeliverable, for the operator); a file no record names (a crash
 * before the commit, or after the DEL was written but before the unlink)
 * is removed at start with a log line. The file is unlinked once the
 * message's DEL record is written.
 *
 * Owns: the spill files' names, their writing, checking, reading and
 * removal. Must never: unlink a file a live record names, or let a record
 * reach the spool before its file is synced.
 *
 * Every function here blocks on the disk: call from a pool thread, the
 * spool's committer or recovery, never from an event loop.
 */
#ifndef TERN_QUEUE_SPILL_H
#define TERN_QUEUE_SPILL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

#define SPILL_DIR "spill"
/* Messages past this many bytes are spilled (bytes the client sent). Big
 * enough that the relay benchmark's messages never are; small enough that
 * a session's memory stays bounded. */
#define SPILL_THRESHOLD (1024u * 1024u)
/* How much a session buffers before it hands a chunk to the writer. */
#define SPILL_CHUNK (256u * 1024u)

/* A spill file being written. */
struct spill_file {
	int fd;
	char name[72]; /* "ID.msg" */
	char path[4096];
	char dir[4096]; /* DIR/spill, for the directory sync */
	uint64_t size;
	uint32_t crc; /* CRC32C of the bytes written so far */
};

/* Creates DIR/spill/ID.msg (exclusive, 0600). TERN_OK, TERN_EIO, TERN_ELIMIT. */
int spill_create(const char *spool_dir, const char *id, struct spill_file *f);
/* Appends n bytes. TERN_OK, TERN_ELIMIT (disk full), TERN_EIO. */
int spill_write(struct spill_file *f, const void *p, size_t n);
/* fdatasync of the file, then fsync of its directory (the new entry). */
int spill_sync(struct spill_file *f);
/* Closes the file, keeping it (after spill_sync, once the record names it). */
void spill_close(struct spill_file *f);
/* Closes and removes it (the message was refused or the client left). */
void spill_abort(struct spill_file *f);

/* The CRC32C the spill file's record carries, chained over pieces (a
 * streaming reader checks the file with it as it goes). */
uint32_t spill_crc32c(uint32_t crc, const void *p, size_t n);

/* ---- for the spool (dirfd: the spool directory) ---- */

/* Appends want bytes of the file from off on to out; with check the whole
 * file is read and checked against size and crc as well. TERN_ECORRUPT on
 * a mismatch or a missing or short file (logged, with the queue id). */
int spill_read(int dirfd, const char *id, const char *name, uint64_t size, uint32_t crc,
               uint64_t off, uint64_t want, bool check, struct tbuf *out);
/* At recovery: TERN_OK when the file exists with size bytes; otherwise logs
 * the loud error and returns TERN_ECORRUPT. */
int spill_check(int dirfd, const char *id, const char *name, uint64_t size);
/* Removes a file (ENOENT is fine). */
void spill_unlink(int dirfd, const char *name);
/* Removes every file of DIR/spill that named(arg, name) does not claim. */
void spill_sweep(int dirfd, bool (*named)(void *arg, const char *name), void *arg);

#endif
