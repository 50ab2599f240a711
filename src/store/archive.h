/*
 * archive.h — the message archive (issue 13 item 6): every message the
 * spool commits, kept raw (zstd-compressed, byte-exact), indexed for the
 * capture store's search syntax (msg_index.h, capture_query.h), exportable
 * as mbox or a zip of .eml files, expired after a retention time unless on
 * legal hold.
 *
 * Layout: DATA/archive/index.sqlite (WAL) holds the index tables, one
 * archive row per message (queue id, direction, hold) and its compressed
 * bytes (table blobs): one transaction per batch stores the bytes and the
 * index together, so there is never an index row without its bytes or an
 * orphan file, and retention is a DELETE. DATA/archive/incoming/ is only
 * read: an older version wrote messages there when its writer was behind.
 *
 * The archive follows the spool: the commit hook hands it a locator
 * (segment, offset, length) of each wanted message and the spool keeps that
 * segment (and a spill file) pinned until the writer has stored the
 * message and released it, so nothing is held in memory for it and a kill
 * -9 loses nothing (archive_catch_up). Must never: slow or block the
 * caller of archive_on_commit (the spool's committer thread), drop a
 * committed message (a backlog grows the spool instead, see
 * backlog_update), or delete a held message. The writer indexes later (it
 * waits while mail is being committed, at most 2 s per batch and while the
 * backlog is under 48 MiB) and runs at SCHED_IDLE: it takes only CPU time
 * the mail path leaves.
 */
#ifndef TERN_STORE_ARCHIVE_H
#define TERN_STORE_ARCHIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core/buf.h"
#include "core/conf.h"
#include "queue/queue.h"

struct archive;

/* Opens (creating if needed) DATA/archive under data_dir. The handle may be
 * used from several threads (one lock). Returns TERN_OK or an error with a
 * sentence in err. */
int archive_open(const char *data_dir, struct archive **out, char *err, size_t errlen);

/* Starts the writer thread with c's retention and include settings
 * (serve only, before the commit hook is set): it archives what
 * archive_on_commit queues, catches up with incoming/, and expires messages
 * older than the retention (checked every retention/2, at most every 60 s,
 * at least every 1 s). First removes what a crash left half-made in
 * incoming/ (an ID.tmp, an ID.tail without its ID.msg). */
int archive_start(struct archive *ar, const struct conf_archive *c);

/* At start, after archive_start and before spool_set_commit_hook: takes
 * every record the spool's recovery kept for it (spool opened with
 * SPOOL_OPEN_ARCHIVE: queued messages and finished ones whose segment a pin
 * kept): what the archive has is released at once (one lookup each), the
 * rest is queued for the writer. So a message committed before a kill -9
 * is archived exactly once whether or not it was delivered meanwhile.
 * Remembers sp, which must stay open until archive_stop. Returns how many
 * it queued. */
size_t archive_catch_up(struct archive *ar, struct spool *sp);

/* Stops the writer after it archived everything queued (it reads the
 * spool: call before spool_close). Idempotent. */
void archive_stop(struct archive *ar);

/* Stops the writer if archive_stop did not, then frees everything
 * (after spool_close: the committer may still call the hook). */
void archive_close(struct archive *ar);

/* The spool's hooks (spool_set_commit_hook, queue.h). archive_want: true
 * for a message archive.include covers (the spool pins its record). */
bool archive_want(void *arg, const struct spool_msg *m);
/* A wanted message's locator: queued for the writer (a small allocation
 * and a lock-free push, no bytes); never blocks. The writer reads the
 * message from the spool, stores a batch in one transaction, then releases
 * the batch's pins (spool_archive_release). */
void archive_on_commit(void *arg, const struct spool_ref *ref);

/* The scheduler's archive observer (scheduler_set_archive_observer): the
 * result of a remote recipient (delivered, bounced, deferred, with the
 * reply) is recorded with the archived copy when "outbound" is included.
 * Never blocks: a bounded queue (65,536 results); beyond it a result is
 * dropped and logged. */
void archive_on_result(void *arg, const struct spool_msg *m, size_t idx, enum rcpt_state st,
                       const char *reply);

/* Archives one message now, on the caller's thread (tests, the writer).
 * direction: "inbound", "outbound" or "mixed". TERN_EEXIST if id is
 * already archived. */
int archive_add(struct archive *ar, const char *id, int64_t created_s, const char *sender,
                const char *const *rcpts, size_t n_rcpts, const char *direction, const void *data,
                size_t len);

/* Mailpit-style result list for query (capture_query.h syntax; "" = all),
 * newest first: {"total", "messages_count", "start", "count", "messages":
 * [{"ID", "MessageID", "From", "To", "Subject", "Created", "Size",
 * "Direction", "Hold", "Snippet", "EnvelopeFrom", "EnvelopeTo",
 * "Outcomes": [{"Recipient", "State", "Reply", "Time"}]}]}.
 * NULL with *err set: TERN_ESYNTAX/TERN_ELIMIT (a bad query), TERN_EIO. */
json_t *archive_search(struct archive *ar, const char *query, size_t start, size_t limit, int *err);

/* The original bytes of id appended to out. TERN_ENOTFOUND, TERN_EINVAL
 * (not a queue id), TERN_EIO (damaged). */
int archive_raw(struct archive *ar, const char *id, struct tbuf *out);

/* Sets or clears the legal hold of id. TERN_ENOTFOUND, TERN_EINVAL. */
int archive_set_hold(struct archive *ar, const char *id, bool hold);

enum archive_format { ARCHIVE_MBOX, ARCHIVE_ZIP };
/* "mbox" / "zip" -> format; false for anything else. */
bool archive_format_parse(const char *s, size_t n, enum archive_format *out);

/* Every message matching query, oldest first, as an mboxrd file (From_
 * line, ">From " quoting) or a zip (stored, no compression) of ID.eml files
 * holding the original bytes. *count gets the number of messages.
 * TERN_ELIMIT past 65,535 messages or out's limit; query errors as in
 * archive_search. */
int archive_export(struct archive *ar, const char *query, enum archive_format f, struct tbuf *out,
                   size_t *count);

/* The same export written to fd (from its current offset) in chunks of
 * 256 KiB, so memory stays at about one chunk and one message whatever
 * the export's size; *bytes gets how many were written. Same limits and
 * errors, and TERN_EIO when fd cannot be written. */
int archive_export_fd(struct archive *ar, const char *query, enum archive_format f, int fd,
                      uint64_t *bytes, size_t *count);

/* A new file for archive_export_fd: read-write, in DATA/archive, with no
 * name (O_TMPFILE, or a name unlinked at once), gone when its last
 * descriptor is closed. -1 with errno on failure. */
int archive_tmpfile(struct archive *ar);

/* Deletes messages created before now_s - retention_s that are not on
 * hold; *removed gets how many. */
int archive_expire(struct archive *ar, int64_t now_s, uint32_t retention_s, size_t *removed);

/* Messages archived by this handle's writer since start, and in incoming/
 * awaiting the writer (for logs and tests). */
void archive_counts(struct archive *ar, uint64_t *archived, uint64_t *overflowed);

/* Appends data[0..n) to out as one mboxrd message body: every line that
 * matches ^>*From  gets one more '>'. Pure (exposed for the fuzz target). */
int archive_mboxrd_quote(const char *data, size_t n, struct tbuf *out);

#endif
