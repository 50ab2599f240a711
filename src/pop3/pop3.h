/*
 * pop3.h — the POP3 module's public interface (RFC 1939, CAPA and response
 * codes RFC 2449, STLS RFC 2595, AUTH RFC 5034).
 *
 * Four layers, the first two pure so they are unit-tested and fuzzed
 * without sockets or disks:
 *   parse.c    one command line -> struct pop3_cmd
 *   encode.c   message bytes -> the multi-line response (CRLF line ends,
 *              dot-stuffing, TOP's line limit, the final ".")
 *   mailbox.c  a user's Maildir: listing, UIDLs, the session lock, the
 *              UPDATE state's deletions (blocking: thread pool only)
 *   server.c   the per-connection state machine on the event-loop workers
 *
 * Mailboxes are the Maildirs local delivery writes (deliver/deliver.h:
 * DATA/mail/DOMAIN/LOCAL/). Agreement with Dovecot on the same Maildirs
 * (docs/config.md, `tern dovecot-config`):
 *   - UIDL is the Maildir file's base name (the name up to ':'), which is
 *     what Dovecot reports with pop3_uidl_format = %f: stable across
 *     sessions, restarts, new/ -> cur/ moves and flag changes, and shared
 *     by both servers without a shared index file to keep consistent.
 *   - The session lock is Dovecot's own pop3_lock_session dotlock,
 *     DIR/dovecot-pop3-session.lock holding "PID:HOSTNAME": a tern and a
 *     Dovecot POP3 session for the same user exclude each other, and a
 *     lock left by a dead process (same host, PID gone) or untouched for 5
 *     minutes is stale for both.
 *   - Opening a mailbox moves new/ files to cur/ (":2," appended), as
 *     Dovecot does; messages retrieved with RETR get the S (seen) flag at
 *     QUIT; DELE'd messages are unlinked at QUIT only.
 */
#ifndef TERN_POP3_POP3_H
#define TERN_POP3_POP3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

/* ---------------------------------------------------------------- parse */

enum pop3_verb {
	POP3_UNKNOWN = 0,
	POP3_USER,
	POP3_PASS,
	POP3_APOP,
	POP3_AUTH,
	POP3_STLS,
	POP3_CAPA,
	POP3_STAT,
	POP3_LIST,
	POP3_RETR,
	POP3_DELE,
	POP3_NOOP,
	POP3_RSET,
	POP3_TOP,
	POP3_UIDL,
	POP3_QUIT,
};

/* Longest argument of USER, PASS and the AUTH mechanism name (RFC 1939
 * says 40 octets; real user names and passwords are longer). */
#define POP3_ARG_MAX 255
/* Longest command line the server reads, CRLF included: an AUTH initial
 * response or continuation may carry a SASL response of up to 12288 bytes
 * (the SASL engine's SASL_LINE_MAX, RFC 4954's figure). */
#define POP3_LINE_MAX (12288 + 64)

struct pop3_cmd {
	enum pop3_verb verb;
	bool has_msg;   /* LIST, UIDL: a message number was given */
	uint32_t msg;   /* RETR, DELE, TOP, and LIST/UIDL with has_msg: 1-based */
	uint32_t lines; /* TOP: body lines wanted (larger values are clamped) */
	/* USER: the name; PASS: the rest of the line (spaces are part of a
	 * password, RFC 1939 §7); AUTH: the mechanism, or empty for a bare
	 * "AUTH" (asks for the list). Points into the line passed in. */
	const char *arg;
	size_t arg_len;
	/* AUTH: the initial response ("=" for an empty one), or NULL. */
	const char *initial;
	size_t initial_len;
};

/*
 * Parses one command line (without its CRLF). line need not be
 * NUL-terminated and may hold any bytes. Keywords are case-insensitive,
 * arguments are separated by one space (RFC 1939 §3), message numbers are
 * 1 to 4294967295 in plain decimal. TRUE with *out filled, or FALSE with
 * *why a short static phrase for the "-ERR" reply ("unknown command",
 * "message number expected", ...); out->verb is set even then when the
 * keyword was known, so the caller can count errors per command. Never
 * reads past line + len; never allocates.
 */
bool pop3_parse_command(const char *line, size_t len, struct pop3_cmd *out, const char **why);

/* The keyword of a verb, uppercase ("RETR"); "?" for POP3_UNKNOWN. */
const char *pop3_verb_name(enum pop3_verb v);

/* --------------------------------------------------------------- encode */

/*
 * The multi-line response for RETR and TOP (RFC 1939 §3): message bytes as
 * stored go in, in chunks of any size; out come lines ending in CRLF (a
 * bare LF becomes CRLF, a CR not followed by LF stays as it is, as Dovecot
 * sends it), a line beginning with "." gets one more ".", and
 * pop3_encode_finish adds a CRLF if the message did not end with one, then
 * the terminating ".\r\n". With top, only the header section, the empty
 * line after it and `lines` body lines are sent (a message without an
 * empty line is all header).
 */
struct pop3_encoder {
	bool top;        /* stop after the header and `lines` body lines */
	uint32_t lines;  /* TOP: body lines still to send */
	bool in_body;    /* internal: past the empty line */
	bool at_bol;     /* internal: the next byte starts a line */
	bool line_empty; /* internal: nothing but a CR so far on this line */
	bool pending_cr; /* internal: a CR ended the last chunk */
	bool done;       /* TOP's limit is reached: stop reading */
	bool wrote_any;  /* internal */
	bool ended_eol;  /* internal: the output ends with CRLF */
};

void pop3_encoder_init(struct pop3_encoder *e, bool top, uint32_t lines);
/* Encodes in[0..len) onto out. Returns TERN_OK, or TERN_ELIMIT when out's
 * cap is reached (out is then unchanged from the last whole byte: callers
 * size out at 2 * len + 8, which always fits). Once e->done, input is
 * ignored. */
int pop3_encode(struct pop3_encoder *e, const char *in, size_t len, struct tbuf *out);
/* The end of the response: CRLF if needed, ".\r\n". */
int pop3_encode_finish(struct pop3_encoder *e, struct tbuf *out);

/*
 * The size of a message as RETR sends it, before dot-stuffing: every LF
 * not preceded by CR counts one byte more (RFC 1939's "exact size" with
 * CRLF line ends; what Dovecot calls the virtual size). Feed the file in
 * chunks; *prev_cr carries a CR that ended the previous chunk (start with
 * false). Returns the extra bytes for this chunk.
 */
uint64_t pop3_count_bare_lf(const char *p, size_t n, bool *prev_cr);

/* -------------------------------------------------------------- mailbox */

/*
 * The UIDL of a Maildir file: its base name, the bytes before the first
 * ':' (Dovecot's %f). Returns that length (0 for an empty name).
 */
size_t pop3_maildir_base_len(const char *name, size_t len);

/*
 * The virtual size a Maildir++ name states (",W=N" in the base name), or
 * false when it states none. Dovecot writes W= on the files it saves.
 */
bool pop3_maildir_name_vsize(const char *name, size_t len, uint64_t *out);

/*
 * Adds flag (an uppercase ASCII letter) to a Maildir name in cur/: "B:2,"
 * + flags kept sorted, as the Maildir spec wants; a name without ":2," gets
 * it. Writes the new name into out (NUL-terminated). TERN_OK, TERN_EEXIST
 * if the flag is already set (out is still written), TERN_ELIMIT if out is
 * too small, TERN_EINVAL for an info part that is not ":2,..." (a ":1,"
 * name or garbage: left alone).
 */
int pop3_maildir_add_flag(const char *name, char flag, char *out, size_t outlen);

struct pop3_msg {
	char *file;      /* the current file name, in cur/ (or in new/ if the move failed) */
	size_t base_len; /* the UIDL: file[0..base_len) */
	bool in_new;     /* file is still in new/ */
	uint64_t size;   /* octets as RETR sends them, before dot-stuffing */
	bool deleted;    /* DELE'd in this session (undone by RSET) */
	bool seen;       /* RETR'd in this session: gets the S flag at QUIT */
};

struct pop3_mailbox {
	char *dir;             /* the Maildir */
	struct pop3_msg *msgs; /* oldest first */
	size_t n;
	uint64_t total; /* sum of msgs[].size */
	size_t skipped; /* files beyond max_messages, not shown this session */
	bool locked;    /* holds the session lock */
};

/* Why a mailbox could not be opened (the server's reply follows from it). */
enum pop3_open_status {
	POP3_OPEN_OK = 0,
	POP3_OPEN_IN_USE, /* another POP3 session (tern's or Dovecot's) holds the lock */
	POP3_OPEN_FAILED, /* a system error (logged by the caller with errno's text) */
};

/*
 * Takes the session lock on dir, creates the Maildir if there is none yet,
 * moves new/ files into cur/ and lists cur/ (at most max_messages files,
 * the oldest; sizes from ",W=" in the name or by reading the file). Blocks
 * on the disk: thread pool only. On POP3_OPEN_OK *out is owned by the
 * caller, who ends with pop3_mailbox_update (QUIT) or pop3_mailbox_close.
 * errno_out gets the errno of a failure.
 */
enum pop3_open_status pop3_mailbox_open(const char *dir, size_t max_messages,
                                        struct pop3_mailbox **out, int *errno_out);

/*
 * The UPDATE state (RFC 1939 §6): unlinks every deleted message, gives the
 * S flag to the others that were retrieved, fsyncs cur/ (and new/), so a
 * "+OK" sent after TERN_OK means the deletions survive a crash. Files that
 * vanished meanwhile (another client expunged them) count as deleted.
 * *removed gets the number unlinked. Then, as pop3_mailbox_close, releases
 * the lock and frees mb, whatever the result. Thread pool only.
 */
int pop3_mailbox_update(struct pop3_mailbox *mb, size_t *removed, int *errno_out);
/* Releases the lock and frees mb, deleting nothing (a dropped connection,
 * or QUIT in the AUTHORIZATION state). Touches the disk: thread pool only
 * (or at shutdown). NULL is fine. */
void pop3_mailbox_close(struct pop3_mailbox *mb);
/* Refreshes the lock file's time, so that neither tern nor Dovecot takes it
 * for stale (it is stale after 5 minutes untouched). Thread pool only. */
void pop3_mailbox_touch(struct pop3_mailbox *mb);

/*
 * Opens message i for reading: its file in cur/ (or new/), or, if another
 * client renamed it since (a flag change), the file in cur/ with the same
 * base name. Returns an fd (O_RDONLY|O_CLOEXEC) or -1 with errno (ENOENT:
 * the message was expunged by another client). Thread pool only.
 */
int pop3_mailbox_open_msg(struct pop3_mailbox *mb, size_t i);

/* ---------------------------------------------------------------- server */

/*
 * The POP3 server: sessions on the event-loop workers (one state machine
 * per connection), password checks and every Maildir operation on its own
 * small thread pool. Sessions read the current runtime (config + users) at
 * connect and keep it for their life.
 */
struct pop3_server;
struct worker;
struct ssl_ctx_st;
struct throttle;

/* shared: the brute-force throttle (auth/auth.h) to count failed logins
 * in, shared with the other services that take passwords so that guesses
 * spread over them count together; NULL makes the server its own. NULL
 * when out of memory. */
struct pop3_server *pop3_server_new(struct throttle *shared);
/* Accepts on listen_fd (bound, listening, non-blocking) on worker w; with
 * implicit_tls, TLS from the first byte (port 995 style; needs a TLS
 * context). Call before the worker starts. */
int pop3_server_listen(struct pop3_server *srv, struct worker *w, int listen_fd, bool implicit_tls);
/* The TLS context for STLS and implicit TLS (the server takes a reference);
 * without one, STLS is not offered. Call before the workers start. */
void pop3_server_set_tls(struct pop3_server *srv, struct ssl_ctx_st *ctx);
/* Stops accepting and ends every session with "-ERR [SYS/TEMP]" (nothing
 * is deleted: only QUIT deletes). Safe from any thread. */
void pop3_server_shutdown(struct pop3_server *srv);
/*
 * Another mailbox store than users' Maildirs (capture mode serves its
 * caught mail this way: pop3/capture_mailbox.c). Every hook but close runs
 * on the server's pool; close may run on a worker (it must not block).
 * open fills a pop3_mailbox (msgs[].file is the UIDL, base_len its
 * length; no lock); open_msg returns a readable fd (pread from 0) of
 * message i; update deletes what is marked and frees mb; close frees mb.
 * verify has users_verify's contract, and also serves AUTH PLAIN/LOGIN.
 * Call before the workers start; the backend must outlive the server.
 */
struct pop3_backend {
	void *ctx;
	int (*verify)(void *ctx, const char *login, const char *password);
	enum pop3_open_status (*open)(void *ctx, const char *login, size_t max_messages,
	                              struct pop3_mailbox **out, int *errno_out);
	int (*open_msg)(void *ctx, struct pop3_mailbox *mb, size_t i);
	int (*update)(void *ctx, struct pop3_mailbox *mb, size_t *removed, int *errno_out);
	void (*close)(void *ctx, struct pop3_mailbox *mb);
};
void pop3_server_set_backend(struct pop3_server *srv, const struct pop3_backend *b);
/* Sessions alive now, over all workers. */
size_t pop3_server_sessions(struct pop3_server *srv);
/* After the workers stopped: waits for the pool's jobs, runs their
 * completions on the (stopped) workers, frees what is left (mailbox locks
 * are released). NULL is fine. */
void pop3_server_free(struct pop3_server *srv);

#endif
