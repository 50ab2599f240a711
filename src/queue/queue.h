/*
 * queue.h — the queue module: the durable spool (spool.c) and, above it,
 * the scheduler that decides when each recipient is tried (scheduler.c).
 *
 * The spool is log-structured with group commit (DESIGN §6): every accepted
 * message is appended, envelope and data together under one checksum, to
 * the current segment file DIR/seg-NNNNNNNNNN.log. A committer thread
 * collects all puts that arrived while the previous fdatasync ran, writes
 * them with one writev, issues one fdatasync, and only then runs their
 * completion callbacks. Recipient state changes and removals are appended
 * as small records that are not synced on their own (a crash can only
 * cause a redelivery, never a loss). An in-memory index maps queue id ->
 * (segment, offset, recipient states). Segments whose messages are all
 * finished are deleted. Recovery replays the segments in order, trims a
 * torn tail off the last one, and rebuilds the index. A damaged record
 * costs that record only: recovery resynchronises on the next valid one,
 * logs each damaged range, and a segment with damage is never deleted: it
 * stays until nothing in it is needed, then moves to DIR/damaged/.
 *
 * Thread safety: every function may be called from any thread.
 */
#ifndef TERN_QUEUE_QUEUE_H
#define TERN_QUEUE_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/id.h"

enum rcpt_state {
	RCPT_QUEUED = 0,   /* not tried yet, or due now */
	RCPT_DEFERRED = 1, /* tried, temporary failure; next_try says when */
	RCPT_DELIVERED = 2,
	RCPT_BOUNCED = 3, /* permanent failure */
	RCPT_HELD = 4,    /* held by the operator */
	/* final: on the suppression list (store/suppress.h), not attempted and
	 * no DSN (the sender's platform reports it, as SES and Postmark do) */
	RCPT_SUPPRESSED = 5,
};

const char *rcpt_state_name(enum rcpt_state s);

struct spool_rcpt {
	char
	    *addr; /* forward-path as given to RCPT TO (after alias expansion: the final address) */
	char *orcpt;     /* RFC 3461 ORCPT ("rfc822;..."), or NULL */
	unsigned notify; /* SMTP_NOTIFY_* bits, 0 if absent */
	bool local;      /* deliver to a local Maildir (true) or remotely */
	enum rcpt_state state;
	uint32_t attempts;
	int64_t next_try; /* unix seconds; 0 = now */
	char *last_reply; /* last result text ("250 2.0.0 ...", "550 5.1.1 ..."), or NULL */
};

enum spool_folder {
	SPOOL_FOLDER_INBOX = 0,
	SPOOL_FOLDER_JUNK = 1,
};

/* The Maildir++ folder name for f: NULL for the inbox, "Junk" for Junk. */
const char *spool_folder_name(enum spool_folder f);

/* The envelope of one message. All strings owned by the struct. */
struct spool_msg {
	char id[QUEUE_ID_LEN + 1];
	char *sender;    /* reverse-path without brackets; "" for <> */
	int64_t created; /* unix seconds */
	unsigned body;   /* enum smtp_body */
	unsigned ret;    /* enum smtp_ret */
	bool smtputf8;
	/* Accepted from an authenticated client or one in relay.networks. Only
	 * such a sender is sent the SUCCESS and DELAY notices it asks for: from
	 * anyone else NOTIFY=SUCCESS would make us mail its text to any address
	 * it names (backscatter). FAILURE notices do not depend on it. */
	bool trusted_client;
	/* Where local recipients get the message: the inbox, or their Junk
	 * folder (Maildir++ ".Junk") when DMARC asked for quarantine
	 * (smtp/verify.c). Remote recipients get it as they would anyway. */
	enum spool_folder folder;
	char *envid;   /* or NULL */
	char *client;  /* "addr=1.2.3.4 helo=..." trace info, or NULL */
	char *auth;    /* MAIL AUTH= to pass on (RFC 4954 §5), decoded; NULL: none (AUTH=<>) */
	char *api_key; /* the name of the HTTP API key that queued it; NULL: not the API */
	/* Not before this time (unix seconds) is any recipient tried: the API's
	 * send_at. 0: at once (every message written before the field). */
	int64_t not_before;
	uint64_t size; /* message bytes (the record's data plus the spill file's, if any) */
	/* SPILL (queue/spill.h, issue 11): a large message's tail in its own
	 * file DIR/spill/NAME, synced before its record. NULL: every byte is in
	 * the record. The file holds the client's message as received
	 * (spill_size bytes, CRC32C spill_crc); its first spill_off bytes (the
	 * client's header block) are also in the record's data, where checks
	 * may have changed them. The message is the record's data followed by
	 * the file from spill_off on. */
	char *spill;
	uint64_t spill_size, spill_off;
	uint32_t spill_crc;
	struct spool_rcpt *rcpts;
	size_t n_rcpts;
};

/* SPILL: bytes of m that are in its spill file only (0 without one). */
static inline uint64_t spool_msg_tail(const struct spool_msg *m)
{
	return m->spill && m->spill_size > m->spill_off ? m->spill_size - m->spill_off : 0;
}

void spool_msg_free(struct spool_msg *m); /* frees m and everything it owns */
struct spool_msg *spool_msg_dup(const struct spool_msg *m);

struct spool;

/* Opens (creating if needed) the spool in dir and recovers its contents.
 * Logs what recovery found (messages, torn tails). */
int spool_open(const char *dir, struct spool **out);
/* Waits for the committer to drain, then frees everything. */
void spool_close(struct spool *s);

/*
 * Called once the message is on stable storage (err == TERN_OK) or could
 * not be stored (err < 0, nothing was stored): TERN_ELIMIT when the disk
 * or a file size limit is full (ENOSPC, EDQUOT, EFBIG: worth a 452 4.3.1),
 * TERN_EIO for other write or sync failures. Runs on the committer
 * thread: keep it short (post to your own thread).
 */
typedef void (*spool_put_cb)(void *arg, int err);

/*
 * Queues env + data for the next group commit. env->id must be set (see
 * queue_id_new). The spool copies what it needs before returning; the
 * caller may free env and data at once. Returns TERN_OK if the put was
 * queued (cb will be called exactly once), an error otherwise (cb is not
 * called; TERN_ELIMIT when too many bytes already wait for the disk).
 */
int spool_put(struct spool *s, const struct spool_msg *env, const void *data, size_t len,
              spool_put_cb cb, void *arg);
/* spool_put, then blocks until the message is on stable storage (or the
 * put failed): the commit's result, or spool_put's error. Only for threads
 * that may block (the sendmail intake, the DMARC reporter), never a loop. */
int spool_put_wait(struct spool *s, const struct spool_msg *env, const void *data, size_t len);

/*
 * ARCHIVE: the archive follows the spool. Where a committed message's MSG
 * record is: segment, offset and length of the whole record (a locator,
 * no bytes). The archive reads the message from there when it gets to it.
 */
struct spool_ref {
	char id[QUEUE_ID_LEN + 1];
	uint32_t seg;
	uint64_t rec_off, rec_len;
};
/* Asked on the committer thread, under the spool's lock, for each message
 * put (not compaction copies) once it is on stable storage: true when the
 * archive wants it (its include rules). Must be quick, must not block or
 * call the spool. A wanted message pins its segment (and its spill file)
 * until spool_archive_release: the spool keeps the bytes for the archive,
 * even after delivery. */
typedef bool (*spool_archive_want)(void *arg, const struct spool_msg *m);
/* Then, after the batch's spool_put_cb calls, with no lock held: the
 * wanted message's locator (ref is valid for the call only). Must not
 * block or call back into the spool. */
typedef void (*spool_commit_hook)(void *arg, const struct spool_ref *ref);
/* Set before the first put (or NULL, NULL, NULL: no archive, no pins). */
void spool_set_commit_hook(struct spool *s, spool_archive_want want, spool_commit_hook fn,
                           void *arg);
/* spool_open with flags. SPOOL_OPEN_ARCHIVE: recovery pins every MSG record
 * it reads (queued or finished) in the surviving segments and lists it for
 * spool_archive_recovered, so that what a crash kept from the archive is
 * still on disk for it; the caller must then release each one. */
#define SPOOL_OPEN_ARCHIVE 1u
int spool_open_flags(const char *dir, unsigned flags, struct spool **out);
/* ARCHIVE: hands each record recovery pinned to fn (once; later calls get
 * nothing). Returns how many. */
size_t spool_archive_recovered(struct spool *s, void (*fn)(void *arg, const struct spool_ref *r),
                               void *arg);
/* ARCHIVE: the envelope and the whole message (a spilled message's file
 * too) of a pinned record, read from the segment and checked against its
 * CRCs. *m is the caller's (spool_msg_free). TERN_ENOTFOUND (no such
 * segment), TERN_ECORRUPT, TERN_EIO, TERN_ENOMEM. */
int spool_archive_read(struct spool *s, const struct spool_ref *ref, struct spool_msg **m,
                       struct tbuf *out);
/* ARCHIVE: the archive has taken (committed) or given up on these records:
 * their pins go; a segment left with nothing is unlinked by the committer
 * (the one writer of segment state), a finished message's spill file here.
 * Any thread. A release without its pin is a bug (TERN_BUG_ON). */
void spool_archive_release(struct spool *s, const struct spool_ref *refs, size_t n);

/* Copies the envelope of id; caller frees with spool_msg_free. NULL if unknown. */
struct spool_msg *spool_get(struct spool *s, const char *id);
/* Reads the message bytes of id into out (appending); a spilled message's
 * file too (checked against its size and CRC). Holds the whole message in
 * memory: delivery of a spilled message uses spool_read_head and streams
 * the rest from spool_spill_path instead. */
int spool_read_data(struct spool *s, const char *id, struct tbuf *out);
/* SPILL: the record's data of id (for a spilled message: our trace fields
 * and the client's header block) followed by at most max bytes of the
 * spill file from spill_off on, appended to out; *file_off is where the
 * rest of the message starts in the file. For a message without a spill
 * file it is spool_read_data (and *file_off 0). */
int spool_read_head(struct spool *s, const char *id, size_t max, struct tbuf *out,
                    uint64_t *file_off);
/* SPILL: the path of spill file name in the spool's spill directory. */
int spool_spill_path(const struct spool *s, const char *name, char *out, size_t outlen);
/* SPILL: the spool's directory (spill files are made in DIR/spill/). */
const char *spool_dir(const struct spool *s);

/* Records a recipient's new state (appended, not synced). Removes the
 * message when no recipient is left queued, deferred or held. */
int spool_update_rcpt(struct spool *s, const char *id, size_t idx, enum rcpt_state st,
                      int64_t next_try, const char *reply);
/* Removes the message whatever the state of its recipients. */
int spool_remove(struct spool *s, const char *id);

/* Calls fn with a snapshot copy of each message in the queue (in id order);
 * fn must not call back into the spool. Stops early if fn returns false. */
void spool_foreach(struct spool *s, bool (*fn)(const struct spool_msg *m, void *arg), void *arg);
size_t spool_count(struct spool *s);
/* Messages by state, for /metrics (core/metrics.h): active while a recipient
 * is due (queued), deferred while every open recipient waits for a retry,
 * hold when only held ones remain. Counts under the spool lock without
 * copying or allocating: one pass over the index. */
struct spool_state_counts {
	size_t active, deferred, hold;
};
void spool_count_states(struct spool *s, struct spool_state_counts *out);

/* Statistics for logs and benchmarks. */
struct spool_stats {
	uint64_t commits;  /* fdatasync calls for puts */
	uint64_t puts;     /* messages committed */
	uint64_t segments; /* live segment files */
	uint64_t damaged;  /* damaged ranges known (see spool_foreach_damage) */
	uint64_t bytes;    /* bytes of the segments' records: what the queue uses */
	/* zeros written ahead so that commits overwrite instead of growing a
	 * file: the spare segment and the current one's unused rest */
	uint64_t prepared;
};
void spool_get_stats(struct spool *s, struct spool_stats *out);

/*
 * Damage. A byte range of a segment that recovery could not read as a
 * valid record (or that failed its checksum when read later): whatever it
 * held is not in the queue. The segment file is never deleted; it stays in
 * DIR/ while anything else in it is needed, then moves to DIR/damaged/,
 * where an operator can inspect it and remove it.
 */
enum spool_damage_kind {
	SPOOL_DAMAGE_HEADER = 1, /* no valid record starts here: bytes up to the next valid one */
	SPOOL_DAMAGE_CHECKSUM,   /* header intact, the record's contents fail their checksum */
	SPOOL_DAMAGE_MALFORMED,  /* checksums hold but the contents make no sense */
	SPOOL_DAMAGE_TORN,       /* a record cut off by the end of a file that is not the last */
	SPOOL_DAMAGE_READ_ERROR, /* the disk returned an error for these bytes */
	SPOOL_DAMAGE_NONE,       /* a file set aside earlier in which no damage is found now */
};
/* "header", "checksum", "malformed", "torn", "read-error", "none". */
const char *spool_damage_kind_name(enum spool_damage_kind k);

struct spool_damage {
	uint32_t seg;     /* segment number */
	const char *file; /* relative to the spool dir: "seg-...log" or "damaged/seg-...log" */
	uint64_t offset, length; /* bytes of the file */
	enum spool_damage_kind kind;
	const char *record; /* "msg", "rcpt", "del" when the kind of record is known, else NULL */
	/* The queue id the damaged bytes seem to name ("" if none): read from
	 * damaged bytes, so a hint for the operator, not a certainty. */
	char id[QUEUE_ID_LEN + 1];
};

/* Calls fn with each damaged range known to the spool — found by recovery,
 * by a read whose checksum failed, or in a file in DIR/damaged/ — in
 * segment and offset order; fn must not call back into the spool. Stops
 * early if fn returns false. Returns how many ranges there are. */
size_t spool_foreach_damage(struct spool *s, bool (*fn)(const struct spool_damage *d, void *arg),
                            void *arg);

/*
 * Compaction (DESIGN §6): copies the live messages of old, mostly-dead
 * segments (under 1/4 live, at least one segment older than the current
 * one) forward into the current segment, each as one fresh record with its
 * recipients' current state and the same queue id, so the old segments and
 * the records they pin can go. The live messages of a segment with damage
 * are copied forward whatever its age and fill, so that it can be set
 * aside early. Bounded work per call (about 16 MiB). Blocks
 * until the copies are synced and the segments they emptied are unlinked:
 * call it from a thread that may block on I/O (the scheduler's), every few
 * seconds. Returns the number of messages copied, or a TERN_* error.
 */
int spool_maintain(struct spool *s);

/* ------------------------------------------------------------ scheduler */

/*
 * The scheduler owns "when and where": it takes committed messages, runs
 * local deliveries in batches on its own threads (blocking file I/O never
 * touches an event loop), records each recipient's result in the spool and
 * logs one line per recipient. Recipients that cannot be delivered locally
 * because of a temporary error are retried with backoff. Remote recipients
 * wait in the queue until remote delivery exists (issue 3).
 */
struct scheduler;

struct scheduler *scheduler_new(struct spool *sp, unsigned threads);
/* How many bytes of committed messages scheduler_submit may keep in memory
 * for their delivery (limits.queued_memory); past it a message is read back
 * from the spool when its turn comes. Set before the first submit. */
#define SCHEDULER_HELD_DEFAULT ((size_t)128 << 20)
void scheduler_set_held_max(struct scheduler *s, size_t bytes);
/* Hands over a just-committed message. data/len is the spooled message
 * (ownership passes to the scheduler; may be NULL: then it is read from the
 * spool). Never blocks on I/O. */
void scheduler_submit(struct scheduler *s, const char *id, char *data, size_t len);
/* An operator's retry of one message (the API's POST /api/v1/queue/ID/retry):
 * like a flush of that message alone, its deferred recipients are due now. */
void scheduler_retry(struct scheduler *s, const char *id);
/* Queues every message in the spool that has recipients due (startup, flush). */
void scheduler_requeue_all(struct scheduler *s, bool ignore_next_try);
/* Number of messages waiting for or in local delivery. */
size_t scheduler_pending(struct scheduler *s);
/* Remote recipients go to r (set once, before the first submit). */
struct remote;
void scheduler_set_remote(struct scheduler *s, struct remote *r);
/*
 * Tells fn about every recipient result the scheduler records: delivered,
 * bounced (final) or deferred, with the reply, right after the spool has
 * it. Runs on a delivery thread: fn must be quick-ish, must not call the
 * scheduler, and sees m only for the call. Set once, before the first
 * submit (the HTTP API keeps its messages' final states: http/api.h).
 */
typedef void (*scheduler_result_fn)(void *arg, const struct spool_msg *m, size_t idx,
                                    enum rcpt_state st, const char *reply);
void scheduler_set_observer(struct scheduler *s, scheduler_result_fn fn, void *arg);
/* A second observer with the same contract, for the archive (store/archive.h). */
void scheduler_set_archive_observer(struct scheduler *s, scheduler_result_fn fn, void *arg);
/* Capture mode: local recipients go to this store instead of Maildirs
 * (also starts the capture ingest below; NULL stops and frees it). */
struct capture_store;
void scheduler_set_capture(struct scheduler *s, struct capture_store *st);

/*
 * Capture mode's direct path (capture_ingest.c, issue 11): the message is
 * not spooled; its only durable home is the capture store. A put is copied
 * and queued; the ingest's committer puts every message queued meanwhile
 * into the store in one transaction, its syncer makes every committed
 * batch durable with one sync, then calls cb once per message, on the
 * syncer's thread (post to your own thread): err TERN_OK
 * and the capture ID when the message is committed, synced and listed;
 * otherwise nothing is promised (the client retries). Every recipient must
 * be local (TERN_EINVAL otherwise: such mail goes through the spool).
 * scheduler_capture_put uses the ingest scheduler_set_capture started
 * (TERN_EINVAL without one). Stopping (also by scheduler_stop) commits and
 * answers everything queued; later puts get TERN_EIO.
 */
typedef void (*capture_put_cb)(void *arg, int err, const char *capture_id);
struct capture_ingest;
struct capture_ingest *capture_ingest_new(struct capture_store *st);
int capture_ingest_put(struct capture_ingest *ci, const struct spool_msg *env, const void *data,
                       size_t len, capture_put_cb cb, void *arg);
void capture_ingest_stop(struct capture_ingest *ci);
void capture_ingest_free(struct capture_ingest *ci);
int scheduler_capture_put(struct scheduler *s, const struct spool_msg *env, const void *data,
                          size_t len, capture_put_cb cb, void *arg);
/* Records remote results still queued (at shutdown, after the workers
 * stopped and the delivery threads were stopped, before the spool closes). */
void scheduler_drain_results(struct scheduler *s);
/* Stops the delivery threads after the batch in progress (remote results
 * still arriving are recorded) and capture mode's direct puts (committed
 * and answered); jobs no thread took stay in the spool. */
void scheduler_stop(struct scheduler *s);
/* Stops the threads after the batch in progress; undelivered work stays in the spool. */
void scheduler_free(struct scheduler *s);

/* --------------------------------------------------------------- bounce */

/*
 * Delivery status notifications (RFC 3464, RFC 3461), built by bounce.c as
 * complete messages ready for the spool: multipart/report;
 * report-type=delivery-status, from the null sender, with a human-readable
 * part, the message/delivery-status part and the original message
 * (message/rfc822) or its headers (text/rfc822-headers) as RET asks.
 */
struct dsn_rcpt {
	const char *final_rcpt;   /* address, without "rfc822;" */
	const char *orcpt;        /* "rfc822;addr" as given with ORCPT, or NULL */
	const char *action;       /* "failed", "delayed", "delivered", "relayed" */
	const char *status;       /* "5.1.1" */
	const char *remote_mta;   /* host name of the server that answered, or NULL */
	const char *diagnostic;   /* the server's reply, e.g. "550 5.1.1 no such user", or NULL */
	int64_t last_attempt;     /* unix seconds, 0 if never tried */
	int64_t will_retry_until; /* "delayed" only; 0 if unknown */
};

struct dsn_params {
	const char *reporting_mta; /* our hostname */
	const char *queue_id;      /* of the original message */
	const char *envid;         /* ENVID of the original, or NULL */
	int64_t arrival;           /* when the original arrived */
	const char *to;            /* recipient of this DSN (original sender or postmaster) */
	unsigned ret;              /* enum smtp_ret of the original */
	const struct dsn_rcpt *rcpts;
	size_t n_rcpts;
	const char *original; /* the original message (with our Received header) */
	size_t original_len;
	int64_t now; /* Date: of the DSN */
};

/*
 * Appends the whole DSN (header and body, CRLF line ends, 7-bit except
 * where the original is 8-bit inside message/rfc822) to out. Without RET,
 * failures carry the full message when it is under 256 KiB, else headers
 * only; delay and success notices carry headers only. Returns TERN_OK or
 * TERN_ENOMEM/TERN_ELIMIT.
 */
int dsn_build(const struct dsn_params *p, struct tbuf *out);

#endif
