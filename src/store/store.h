/*
 * store.h — the capture store (capture mode): every captured message as a
 * raw file on disk plus a row in SQLite, and the queries the Mailpit-
 * compatible API needs. Answers are jansson JSON values shaped exactly as
 * tests/data/mailpit-api/swagger.json defines them (field names,
 * types), so the HTTP layer only maps routes to calls.
 *
 * Layout under the store directory DIR (normally DATA/capture):
 *   DIR/capture.db            SQLite, WAL mode: messages, recipients, tags, FTS5 index
 *   DIR/msg/XX/ID.eml         raw bytes of messages over 256 KiB (XX = first 2 chars of
 *                             ID); smaller ones keep theirs in capture.db (table raw)
 *
 * Durability: capture_add returns only after the row (and the bytes of a
 * small message) is committed with synchronous=FULL and a large message's
 * file and its directory entry are fsync'd (with batch sync: see below).
 *
 * Thread safety: every function may be called from any thread (one
 * internal connection, serialised by a mutex; reads are short and indexed).
 * Nothing here may be called from an SMTP event-loop worker (it blocks on
 * disk): the capture sink runs on the scheduler's delivery threads and the
 * HTTP server on its own thread.
 */
#ifndef TERN_STORE_STORE_H
#define TERN_STORE_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

#define CAPTURE_ID_MAX 40 /* message ids are 22 base62 characters, like Mailpit's */

struct capture_store;

int capture_open(const char *dir, struct capture_store **out, char *err, size_t errlen);
void capture_close(struct capture_store *st);

/*
 * Stores one message. env_from/env_to are the SMTP envelope (kept for
 * release and for the "To" of messages without headers). Parses the
 * message with GMime for the indexed fields (From, To, Cc, Bcc, Reply-To,
 * Subject, Message-ID, Date, snippet, attachment count, size) and the FTS
 * index (headers and text). Writes id_out. Returns TERN_OK or an error.
 */
int capture_add(struct capture_store *st, const char *raw, size_t len, const char *env_from,
		const char *const *env_to, size_t n_to, char id_out[CAPTURE_ID_MAX]);

/* Like capture_add, but idempotent per spool queue id: a message the spool
 * delivers again after a crash finds its earlier copy (id_out is that ID).
 * username: the SMTP AUTH identity of the sender, or NULL/"". */
int capture_add_once(struct capture_store *st, const char *queue_id, const char *username,
		     const char *raw, size_t len, const char *env_from, const char *const *env_to,
		     size_t n_to, char id_out[CAPTURE_ID_MAX]);

/*
 * Many messages at once (capture mode's group commit): each raw file is
 * written, then every row goes in ONE SQLite transaction (a message that
 * fails rolls back alone). Per item, fill the inputs (queue_id and
 * username may be NULL; with a queue_id the add is idempotent as in
 * capture_add_once); the outputs are rc (TERN_OK: committed, listed from
 * now on) and id. With batch sync on, a message is durable only after
 * capture_sync. Returns TERN_OK, or TERN_ENOMEM (then every rc says so).
 */
struct capture_item {
	const char *queue_id;
	const char *username;
	const char *raw;
	size_t len;
	const char *env_from;
	const char *const *env_to;
	size_t n_to;
	bool announce_later;     /* in: no "new" event now; capture_announce sends it */
	int rc;                  /* out */
	char id[CAPTURE_ID_MAX]; /* out: the capture ID when rc is TERN_OK */
	int64_t seq;             /* out: the row inserted now (0: none, e.g. found) */
};
int capture_add_batch(struct capture_store *st, struct capture_item *items, size_t n);
/*
 * The "new" events of items that capture_add_batch inserted with
 * announce_later (rc TERN_OK and seq set; others are skipped): builds each
 * message's summary and tells the subscribers. Capture mode's ingest calls
 * it off its commit path, after the answers (a subscriber turns the
 * summary into JSON for the web UI: ~15 % of an insert's instructions). A
 * message deleted meanwhile gets no event. Reads only rc and seq.
 */
void capture_announce(struct capture_store *st, const struct capture_item *items, size_t n);

/*
 * Group commit: with batch sync on, an add's transaction commits without
 * a sync and the files of large messages are written without fsync;
 * capture_sync() makes every add committed before the call durable (one
 * fdatasync of the WAL, plus one syncfs(2) if such a file was written).
 * So one batch may be inserted while the previous one syncs. The caller
 * must not treat an add as done before capture_sync returned TERN_OK.
 */
void capture_set_batch_sync(struct capture_store *st, bool on);
int capture_sync(struct capture_store *st);

/*
 * GET /api/v1/messages and GET /api/v1/search: a MessagesSummary object
 * ({total, unread, count, messages_count, start, tags, messages: [...]},
 * newest first). query is Mailpit's search syntax or NULL for all:
 * free words (AND, quoted phrases), from:, to: (To/Cc/Bcc and envelope),
 * subject:, message-id:, tag:, is:read, is:unread, has:attachment,
 * before:/after: (YYYY-MM-DD), and "-" or "!" in front of a term to negate.
 */
json_t *capture_list(struct capture_store *st, const char *query, size_t start, size_t limit);

/* GET /api/v1/message/{ID}: a Message object (Text, HTML, Attachments,
 * Inline, From/To/Cc/Bcc/ReplyTo, Subject, Date, Tags, Size, ...), or NULL if
 * no such message. mark_read sets Read (Mailpit marks on open). */
json_t *capture_message(struct capture_store *st, const char *id, bool mark_read);
/* GET /api/v1/message/{ID}/headers: {"Name": ["value", ...]} or NULL. */
json_t *capture_headers(struct capture_store *st, const char *id);
/* Raw bytes (appended to out); TERN_ENOTFOUND if unknown. */
int capture_raw(struct capture_store *st, const char *id, struct tbuf *out);
/* A MIME part by its PartID ("1", "2.1", ... as in Message.Attachments):
 * decoded bytes into out, its content type and file name. */
int capture_part(struct capture_store *st, const char *id, const char *part_id, struct tbuf *out,
		 char *content_type, size_t ctlen, char *filename, size_t fnlen);
/* Envelope of a stored message (for release): sender and recipients. */
int capture_envelope(struct capture_store *st, const char *id, char **from, char ***to,
		     size_t *n_to);

/* DELETE /api/v1/messages: ids (n == 0: all). DELETE /api/v1/search. */
int capture_delete(struct capture_store *st, const char *const *ids, size_t n);
int capture_delete_search(struct capture_store *st, const char *query);
/* PUT /api/v1/messages: Read status for ids (n == 0: all). */
int capture_set_read(struct capture_store *st, const char *const *ids, size_t n, bool read);

/* Tags: GET /api/v1/tags (sorted array), PUT /api/v1/tags (set exactly
 * these tags on ids), PUT /api/v1/tags/{Tag} rename, DELETE delete. */
json_t *capture_tags(struct capture_store *st);
int capture_set_tags(struct capture_store *st, const char *const *ids, size_t n,
		     const char *const *tags, size_t n_tags);
int capture_rename_tag(struct capture_store *st, const char *from, const char *to);
int capture_delete_tag(struct capture_store *st, const char *tag);

/* Totals for /api/v1/info and the UI: messages, unread, database size. */
void capture_stats(struct capture_store *st, uint64_t *messages, uint64_t *unread,
		   uint64_t *bytes);

/* Messages deleted (by API or retention) since the store was opened. */
uint64_t capture_deleted(struct capture_store *st);

/* Retention: deletes the oldest messages beyond max_messages (0 = no limit)
 * and those older than max_age seconds (0 = no limit). Returns how many. */
size_t capture_prune(struct capture_store *st, uint64_t max_messages, uint64_t max_age);

/*
 * Change notifications for live UIs: fn runs after each add ("new", with
 * the MessageSummary of the message), delete ("delete", {"IDs": [...]} or
 * {"All": true}), read-status or tag change ("update", {"IDs": [...]}).
 * It runs on the thread that made the change; the json is borrowed.
 */
typedef void (*capture_event_fn)(void *arg, const char *type, json_t *data);
void capture_subscribe(struct capture_store *st, capture_event_fn fn, void *arg);

#endif
