/*
 * events.h — the event store (issue 13 item 1) and its webhook outbox (item 2).
 *
 * Owns: one record per happening to a message (received, queued, delivered,
 * deferred, bounced, complained, suppressed, opened, clicked, unsubscribed)
 * in DATA/events.db (SQLite, WAL), the webhook endpoints, the durable outbox
 * and the delivery attempts, all in that one file.
 *
 * Must never: block or slow the caller of events_emit (the mail path). The
 * emitter copies the event into a bounded queue; a writer thread batches the
 * queue into SQLite (one transaction per batch, an outbox row per matching
 * endpoint in the same transaction). A full queue drops the event, counts it
 * and logs (rate-limited); it never waits.
 */
#ifndef TERN_STORE_EVENTS_H
#define TERN_STORE_EVENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

enum tern_event_type {
	EV_RECEIVED = 0, /* a message was accepted (one per message, no recipient) */
	EV_QUEUED,       /* one per recipient, at the spool commit */
	EV_DELIVERED,    /* reply: the remote (or local) reply */
	EV_DEFERRED,     /* reply: the reason; next_attempt: unix seconds */
	EV_BOUNCED,      /* status: DSN status; reply: diagnostic; hard: 5.x.x */
	EV_COMPLAINED,
	EV_SUPPRESSED,
	EV_OPENED,
	EV_CLICKED,
	EV_UNSUBSCRIBED,
	EV__COUNT
};

/* "delivered" for EV_DELIVERED; NULL out of range. */
const char *events_type_name(enum tern_event_type t);
/* The type named name ("bounced" or "message.bounced"); -1 if none. */
int events_type_parse(const char *name);

/*
 * One happening. Every string may be NULL (stored as ""). The emitter copies
 * them all; the caller keeps ownership.
 */
struct tern_event {
	enum tern_event_type type;
	int64_t time;           /* unix seconds; 0 = now */
	const char *queue_id;   /* tern's queue id */
	const char *message_id; /* the Message-ID header, without brackets or with */
	const char *sender;     /* reverse-path */
	const char *recipient;  /* forward-path */
	const char *key;        /* API key name or SASL user that sent it */
	const char *tags;       /* comma-separated */
	const char *metadata;   /* a JSON object's text, or NULL */
	const char *reply;      /* remote reply, reason or diagnostic */
	const char *status;     /* enhanced status ("5.1.1") */
	const char *relay;      /* next hop, or "local" */
	int64_t next_attempt;   /* deferred: unix seconds of the next try */
	bool hard;              /* bounced: permanent (5.x.x) rather than soft */
};

/* Settings of the daemon's event store (from `webhooks { }`). */
struct events_opts {
	uint32_t retry_base;   /* first webhook retry, seconds */
	uint32_t retry_max;    /* longest wait between retries, seconds */
	uint32_t retry_window; /* failing this long disables the endpoint, seconds */
	uint32_t timeout;      /* per POST, seconds */
	size_t queue_max;      /* events waiting for the writer; 0 = 65536 */
	uint32_t retention;    /* events older than this are deleted, seconds; 0 = kept */
};

/*
 * Opens DATA/events.db and starts the writer and the webhook sender. Until
 * it is called (and after events_stop) events_emit does nothing: capture
 * mode and the CLI tools emit nothing. TERN_OK or an error (logged).
 */
int events_start(const char *data_dir, const struct events_opts *o);
/* events_start with DATA and the `webhooks { }` settings of conf. */
struct tern_config;
int events_start_conf(const struct tern_config *conf);
/* Writes what is queued, stops both threads, closes the store. */
void events_stop(void);
/* True while the store runs (so a caller can skip building an event). */
bool events_enabled(void);

/*
 * Queues a copy of ev for the writer. Any thread; never blocks on I/O (one
 * short mutex). Returns false when the event was dropped (store not running
 * or queue full: counted, logged at most once a minute).
 */
bool events_emit(const struct tern_event *ev);
/*
 * Shorthand for the mail path: an event about a message with its Message-ID
 * given as (pointer, length) (not NUL-terminated, may be empty), recipient
 * and user may be NULL. Nothing at all when the store is not running.
 */
void events_emit_msg(enum tern_event_type type, const char *queue_id, const char *mid,
                     size_t mid_len, const char *sender, const char *recipient, const char *user);
/* The same for a delivery outcome (delivered, deferred, bounced). */
void events_emit_outcome(enum tern_event_type type, const char *queue_id, const char *mid,
                         size_t mid_len, const char *sender, const char *recipient,
                         const char *relay, const char *status, const char *reply,
                         int64_t next_attempt, bool hard);
/* Events dropped because the queue was full, since start. */
uint64_t events_dropped(void);
/* For tests: waits (bounded by timeout_ms) until the writer has stored all
 * emitted events. True if it did. */
bool events_flush(int timeout_ms);

/* ---- the store, for the CLI and the API (any process) ---- */

/* Opens (creating the schema if needed) DATA/events.db. NULL on error with a
 * message in err. */
sqlite3 *events_db_open(const char *data_dir, char *err, size_t errlen);

/* A query over the events, oldest first, after the cursor. */
struct events_query {
	const char *type;      /* "bounced" (or "message.bounced"); NULL: any */
	const char *recipient; /* exact, case-insensitive; NULL: any */
	const char *queue_id;  /* NULL: any */
	const char *tag;       /* one of the event's tags; NULL: any */
	const char *key;       /* only this API key's or user's events; NULL: any */
	int64_t since;         /* unix seconds; 0: any */
	int64_t after;         /* cursor: events with a larger id; 0: from the start */
	unsigned limit;        /* 0 = 100; at most 1000 */
};

/*
 * Runs q; calls cb with each event as a JSON object's text (the shape the API
 * and webhooks use, see events_row_json) and its id. Returns the number of
 * events or a negative TERN_* code; *last_id gets the last id (the next
 * cursor) or q->after when none.
 */
int events_query_run(sqlite3 *db, const struct events_query *q,
                     void (*cb)(void *arg, int64_t id, const char *json), void *arg,
                     int64_t *last_id);

/*
 * The cursor the last n events q matches begin after (q->after ignored): 0
 * when fewer match. events_query_run from it lists them; found walking back
 * from the newest id, no JSON made. TERN_OK or an error.
 */
int events_query_tail(sqlite3 *db, const struct events_query *q, unsigned n, int64_t *after);

/* The column list events_row_json reads, in its order ("id, time, ..."). */
const char *events_select_columns(void);
/*
 * One row (selected with events_select_columns) as JSON text (malloc'd; NULL
 * when out of memory): {"id":"evt_NODE_N","type":"delivered","time":...,
 * "queue_id",...}. With envelope, the Standard Webhooks body
 * {"type":"message.delivered","timestamp":...,"data":{...}}.
 */
char *events_row_json(sqlite3_stmt *st, const char *node, bool envelope);
/* This store's node name (random, made with the file; part of event ids). */
char *events_node(sqlite3 *db);

/*
 * The ids that can hold events whose time is in [since, until] (unix seconds,
 * both included): every such event has *lo <= id <= *hi, a superset (callers
 * still filter on time); *lo > *hi when there is none. The store has no
 * index on time: the writer keeps each minute's smallest and largest id in
 * events_span (one upsert a batch instead of a B-tree insert an event), and
 * ids the spans do not cover yet (rows written by an older tern or by hand)
 * are included up to the end. TERN_OK or TERN_EIO.
 */
int events_id_range(sqlite3 *db, int64_t since, int64_t until, int64_t *lo, int64_t *hi);

/*
 * Deletes events older than before (unix seconds) that no pending outbox row
 * still needs, the delivered outbox rows of deleted events and attempts
 * older than before; at most max events per call (so the writer never holds
 * the file long). Returns the number of events deleted or a TERN_* error.
 */
int events_prune(sqlite3 *db, int64_t before, unsigned max);

/* Parses "2026-12-06T07:00:00Z", "1765000000", or a relative "10min"/"2h"/
 * "1d" (before now). -1 when it is none of these. */
int64_t events_parse_time(const char *s, int64_t now);

#endif
