/*
 * smtp.h — the SMTP module's public interface.
 *
 * Four layers, kept apart so the pure ones are testable and fuzzable
 * without sockets:
 *   parse.c   one command line -> struct smtp_cmd (pure)
 *   data.c    DATA byte stream -> message bytes, end-of-data detection (pure)
 *   reply.c   reply id -> code, enhanced code, text (pure data)
 *   server.c  the per-connection state machine (I/O, policy, spool)
 */
#ifndef TERN_SMTP_SMTP_H
#define TERN_SMTP_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/conf.h"

/* ---------------------------------------------------------------- parse */

enum smtp_verb {
	SMTP_UNKNOWN = 0,
	SMTP_HELO,
	SMTP_EHLO,
	SMTP_MAIL,
	SMTP_RCPT,
	SMTP_DATA,
	SMTP_BDAT,
	SMTP_RSET,
	SMTP_NOOP,
	SMTP_QUIT,
	SMTP_HELP,
	SMTP_VRFY,
	SMTP_EXPN,
	SMTP_STARTTLS,
	SMTP_AUTH,
};

#define SMTP_LOCAL_MAX 256   /* dequoted local part; RFC 5321 says 64, real mail is longer */
#define SMTP_DOMAIN_MAX 255
#define SMTP_ADDR_MAX (SMTP_LOCAL_MAX + 1 + SMTP_DOMAIN_MAX)
#define SMTP_ARG_MAX 1024
#define SMTP_XTEXT_MAX 500 /* ENVID and ORCPT, RFC 3461; MAIL's AUTH=, RFC 4954 */
/* Longest AUTH initial response and SASL response line (RFC 4954 §4:
 * 12288 octets); the same bound as the SASL engine's (auth.h SASL_LINE_MAX). */
#define SMTP_AUTH_LINE_MAX 12288

/*
 * A reverse-path or forward-path. addr is the mailbox as it should be
 * written on the next hop: source route removed, local part in its
 * canonical form (quoted only if it has to be). local is the dequoted local
 * part for lookups. Domain literals ([1.2.3.4]) are kept with brackets.
 */
struct smtp_path {
	bool null_path;       /* "<>" */
	bool has_domain;      /* false only for <Postmaster> */
	bool quoted;          /* the local part was a quoted-string */
	bool utf8;            /* some byte >= 0x80 in local part or domain */
	char addr[SMTP_ADDR_MAX + 3];  /* +2 for quotes a canonical form may need */
	char local[SMTP_LOCAL_MAX + 1];
	char domain[SMTP_DOMAIN_MAX + 1];
};

enum smtp_body { SMTP_BODY_NONE = 0, SMTP_BODY_7BIT, SMTP_BODY_8BITMIME, SMTP_BODY_BINARYMIME };
enum smtp_ret { SMTP_RET_NONE = 0, SMTP_RET_FULL, SMTP_RET_HDRS };

/* RFC 3461 NOTIFY bits; 0 means the parameter was absent. */
#define SMTP_NOTIFY_NEVER 0x01
#define SMTP_NOTIFY_SUCCESS 0x02
#define SMTP_NOTIFY_FAILURE 0x04
#define SMTP_NOTIFY_DELAY 0x08

struct smtp_cmd {
	enum smtp_verb verb;
	/* MAIL and RCPT */
	struct smtp_path path;
	/* MAIL parameters */
	bool has_size;
	uint64_t size;
	enum smtp_body body;
	bool smtputf8;
	enum smtp_ret ret;
	char envid[SMTP_XTEXT_MAX + 1];     /* xtext-decoded; "" if absent */
	char auth_param[SMTP_XTEXT_MAX + 1]; /* MAIL AUTH= (RFC 4954 §5), xtext-decoded: "<>" or a
	                                       mailbox; "" if absent */
	/* RCPT parameters */
	unsigned notify;
	char orcpt[SMTP_XTEXT_MAX + 1];     /* "rfc822;addr", xtext-decoded; "" if absent */
	/* BDAT. has_chunk_size is set as soon as the size was read, even when
	 * the rest of the line is then refused: the chunk follows the command
	 * whatever the reply, so the server must skip exactly that many bytes
	 * (or close the connection when the size itself is unreadable). */
	bool has_chunk_size;
	uint64_t chunk_size;
	bool last;
	/* HELO/EHLO domain, VRFY/EXPN/HELP/NOOP argument (the rest of the line
	 * after the verb and one space), AUTH mechanism. */
	char arg[SMTP_ARG_MAX + 1];
	/* AUTH's initial response, as sent (base64, or "=" for an empty one):
	 * it points into the line given to smtp_parse_command and lives as long
	 * as that line; NULL when there is none. At most SMTP_AUTH_LINE_MAX. */
	const char *auth_initial;
	size_t auth_initial_len;
};

/* Why a line was refused; code/enhanced/text make the reply. */
struct smtp_parse_error {
	int code;              /* 500, 501, 553, 555 ... */
	const char *enhanced;  /* "5.5.2" ... */
	const char *text;      /* static words a person can act on */
};

enum smtp_parse_status {
	SMTP_PARSE_OK = 0,
	SMTP_PARSE_ERROR, /* *err says why */
};

/*
 * Parses one command line (without its CRLF). line need not be
 * NUL-terminated and may contain any bytes. Verbs are case-insensitive;
 * MAIL/RCPT accept "FROM:<...>" with or without spaces around ':' as real
 * clients send. Unknown ESMTP parameters are refused with 555 5.5.4.
 * Never reads past line + len; never allocates.
 */
enum smtp_parse_status smtp_parse_command(const char *line, size_t len, struct smtp_cmd *out,
					  struct smtp_parse_error *err);

/* Parses a bare mailbox "local@domain" (no angle brackets) as used by
 * users files and aliases; true if valid. */
bool smtp_parse_mailbox(const char *s, size_t len, struct smtp_path *out);

/* Decodes RFC 3461 xtext into out (NUL-terminated); false if malformed or too long. */
bool smtp_xtext_decode(const char *s, size_t len, char *out, size_t outlen);
/* Encodes into xtext; false if it does not fit. */
bool smtp_xtext_encode(const char *s, size_t len, char *out, size_t outlen);

/* ----------------------------------------------------------------- data */

/*
 * The DATA stream parser: feeds raw bytes received after "354", undoes
 * dot-stuffing, and finds the end of data. End of data is CRLF "." CRLF
 * and nothing else (DESIGN §5.4): a bare CR or bare LF never ends a line,
 * and a message containing one is flagged (bare_eol) so the server rejects
 * it after its real end. The "." line that begins the data counts as the
 * end too (the CRLF before it is the one that ended the DATA command).
 *
 * Output goes to a capped tbuf. When the cap would be passed the parser
 * stops storing, sets too_big, and keeps scanning for the end, so the
 * session stays in sync and can answer 552.
 *
 * While in the header section it counts "Received:" header fields
 * (received_count) for mail-loop detection and notes whether the message
 * has 8-bit bytes (has_8bit).
 */
struct smtp_data_parser {
	int state;            /* internal */
	bool at_line_start;   /* internal */
	bool in_headers;      /* internal */
	size_t hdr_name_len;  /* internal: bytes of the current line seen so far */
	char hdr_name[10];    /* internal */
	bool bare_eol;        /* a bare CR or LF was seen */
	bool too_big;         /* output was cut: the cap was reached */
	bool has_8bit;
	bool has_nul;
	uint32_t received_count;
	uint64_t total_bytes; /* unstuffed message bytes, including the cut ones */
};

enum smtp_data_status {
	SMTP_DATA_MORE = 0, /* all input consumed; the message goes on */
	SMTP_DATA_END,      /* end of data found; *consumed says where it ended */
};

void smtp_data_init(struct smtp_data_parser *p);
/*
 * Consumes in[0..len). Returns SMTP_DATA_END when the terminating
 * CRLF.CRLF has been consumed; *consumed is then the number of input bytes
 * up to and including its final LF (what follows belongs to the next
 * command). With SMTP_DATA_MORE, *consumed == len. The message bytes
 * appended to out always end with CRLF when the message is not empty.
 */
enum smtp_data_status smtp_data_feed(struct smtp_data_parser *p, const char *in, size_t len,
				     size_t *consumed, struct tbuf *out);

/*
 * Scans message bytes (as stored, after unstuffing, e.g. from BDAT) for the
 * header facts the data parser collects: Received count, 8-bit bytes. Used
 * for BDAT where no parser runs.
 */
void smtp_scan_headers(const char *msg, size_t len, uint32_t *received_count, bool *has_8bit);

/*
 * The first header field called name (case-insensitive, no ':') in the
 * header section of msg (CRLF lines, up to the first empty line): *val
 * points into msg at its value, leading and trailing white space trimmed,
 * folded lines included with their CRLF. false when there is none. Pure.
 */
bool smtp_header_find(const char *msg, size_t len, const char *name, const char **val,
                      size_t *vlen);
/*
 * The Message-ID of msg for the log: the first "<...>" of the Message-ID
 * field's value, brackets included, or the trimmed value when it has none.
 * Points into msg. false when the field is absent or empty. Pure.
 */
bool smtp_message_id(const char *msg, size_t len, const char **id, size_t *idlen);

/*
 * Scans whole message bytes (as stored, e.g. every BDAT chunk of a message)
 * for what a DATA body may not contain (DESIGN §5.4): *bare_eol is set if a
 * CR is not followed by LF (a CR as the last byte counts) or an LF is not
 * preceded by CR; *has_nul if a NUL byte occurs. The flags agree with
 * smtp_data_parser's for the bytes that parser stores. Pure; either pointer
 * may be NULL.
 */
void smtp_scan_line_ends(const char *msg, size_t len, bool *bare_eol, bool *has_nul);

/* ---------------------------------------------------------------- reply */

/*
 * Every reply tern writes as data (reply.c): one entry per meaning, with its
 * code, its RFC 3463 enhanced code and words that help. The server answers
 * only with these; the scheduler and the delivery side take their status
 * codes and texts from here as well.
 */
enum smtp_reply_id {
	/* connection and greeting */
	SMTP_R_GREETING,
	SMTP_R_HELO,
	SMTP_R_EHLO,
	SMTP_R_QUIT,
	SMTP_R_OK,
	SMTP_R_HELP,
	SMTP_R_HELP_END,
	SMTP_R_VRFY,
	SMTP_R_EXPN,
	SMTP_R_VRFY_DISABLED,
	SMTP_R_EXPN_DISABLED,
	SMTP_R_ADDRESS_SYNTAX,
	SMTP_R_UNKNOWN_COMMAND,
	SMTP_R_LINE_TOO_LONG,
	SMTP_R_NOT_IMPLEMENTED,
	SMTP_R_TOO_MANY_ERRORS,
	SMTP_R_TIMEOUT,
	SMTP_R_SHUTDOWN,
	SMTP_R_CLIENT_GONE,
	SMTP_R_TOO_MANY_CONNECTIONS,
	SMTP_R_TOO_MANY_CONNECTIONS_IP,
	SMTP_R_NOMEM,
	SMTP_R_NOMEM_CLOSE,
	/* sequence */
	SMTP_R_NEED_HELO,
	SMTP_R_NEED_EHLO,
	SMTP_R_NEED_MAIL,
	SMTP_R_NEED_RCPT,
	SMTP_R_IN_TRANSACTION,
	SMTP_R_AFTER_BDAT,
	SMTP_R_TLS_ACTIVE,
	SMTP_R_ALREADY_AUTHENTICATED,
	SMTP_R_AUTH_REQUIRED,
	SMTP_R_ONLY_QUIT,
	SMTP_R_BINARYMIME_NEEDS_BDAT,
	SMTP_R_SMTPUTF8_NEEDS_EHLO,
	/* envelope */
	SMTP_R_SENDER_OK,
	SMTP_R_RCPT_OK,
	SMTP_R_SENDER_NEEDS_SMTPUTF8,
	SMTP_R_RCPT_NEEDS_SMTPUTF8,
	SMTP_R_SIZE_EXCEEDED,
	SMTP_R_TOO_MANY_RCPTS,
	SMTP_R_NO_SUCH_USER,
	SMTP_R_MAILBOX_FULL,
	SMTP_R_RELAY_DENIED,
	SMTP_R_CHAOS_SENDER_TEMP,
	SMTP_R_CHAOS_SENDER_PERM,
	SMTP_R_CHAOS_RCPT_TEMP,
	SMTP_R_CHAOS_RCPT_PERM,
	SMTP_R_CHAOS_AUTH_TEMP,
	SMTP_R_CHAOS_AUTH_PERM,
	/* message */
	SMTP_R_DATA_GO,
	SMTP_R_QUEUED,
	SMTP_R_CHUNK_OK,
	SMTP_R_OVER_BUDGET,
	SMTP_R_SPOOL_FAILED,
	SMTP_R_SPOOL_FULL,
	SMTP_R_SIGN_FAILED, /* SIGN: the message could not be DKIM-signed (sign.h) */
	SMTP_R_BARE_LINE_END,
	SMTP_R_MAIL_LOOP,
	SMTP_R_BDAT_NO_SIZE,
	/* STARTTLS */
	SMTP_R_STARTTLS_GO,
	SMTP_R_STARTTLS_NOT_OFFERED,
	SMTP_R_TLS_UNAVAILABLE,
	SMTP_R_TLS_FAILED,
	/* AUTH */
	SMTP_R_AUTH_OK,
	SMTP_R_SASL_CHALLENGE,
	SMTP_R_AUTH_CANCELLED,
	SMTP_R_AUTH_BAD_INITIAL,
	SMTP_R_AUTH_BAD_RESPONSE,
	SMTP_R_AUTH_MECHANISM,
	SMTP_R_AUTH_NO_MECHANISM,
	SMTP_R_AUTH_NEEDS_TLS,
	SMTP_R_STARTTLS_FIRST,
	SMTP_R_AUTH_FAILED,
	SMTP_R_AUTH_INITIAL_REFUSED,
	SMTP_R_AUTH_LINE_TOO_LONG,
	SMTP_R_AUTH_TEMPFAIL,
	SMTP_R_AUTH_BLOCKED,
	SMTP_R_AUTH_BLOCKED_CLOSE,
	SMTP_R_MAIL_AUTH_NOT_OFFERED,
	SMTP_R_SENDER_NOT_OWNED,
	/* delivery results (scheduler, deliver/) */
	SMTP_R_LOCAL_DELIVERED,
	SMTP_R_LOCAL_BAD_MAILBOX,
	SMTP_R_LOCAL_FAILED,
	SMTP_R_LOCAL_MAILBOX_FULL,
	SMTP_R_CAPTURED,
	SMTP_R_CAPTURE_FAILED,
	SMTP_R_DNS_LOOP,
	SMTP_R_DNS_NO_ADDRESS,
	SMTP_R_DNS_NXDOMAIN,
	SMTP_R_DNS_NULL_MX,
	SMTP_R_DNS_BAD_NAME,
	SMTP_R_DNS_TEMPFAIL,
	SMTP_R__COUNT
};

struct smtp_reply_def {
	int code;             /* 200..599 */
	const char *enhanced; /* "5.5.1"; NULL only for the greeting, the HELO/EHLO
	                         replies and 3xx (RFC 2034 §3) */
	const char *text;     /* no CR/LF; each "%s" takes one argument, in order */
	unsigned nargs;       /* how many "%s" text has */
};

/* The entry for id (static, never NULL; an id out of range is a bug). */
const struct smtp_reply_def *smtp_reply_def(enum smtp_reply_id id);

/*
 * Renders entry id as one reply line without CRLF: "CODE ENHANCED TEXT",
 * or "CODE-ENHANCED TEXT" when more lines follow (more). code 0 uses the
 * entry's code; any other must be in the same class (the chaos triggers
 * pick their own). args holds nargs strings, which must equal the entry's
 * nargs; CR and LF inside them are written as '?', so an argument cannot
 * start a second reply. out is always NUL-terminated (outlen > 0). Returns
 * the length of the whole line, like snprintf: >= outlen means it was cut.
 * Pure.
 */
size_t smtp_reply_format(char *out, size_t outlen, enum smtp_reply_id id, int code, bool more,
                         const char *const *args, size_t nargs);

/* --------------------------------------------------------------- server */

/*
 * The SMTP server: sessions on the event-loop workers, one state machine
 * per connection (server.c). Sessions read the current runtime (config +
 * users) at connect and keep it for their life; accepted messages go to the
 * spool and, once committed, to the scheduler.
 */
struct smtp_server;
struct spool;
struct scheduler;
struct worker;

struct smtp_server *smtp_server_new(struct spool *sp, struct scheduler *sched);
/* Starts accepting on listen_fd (bound, listening, non-blocking) on worker w.
 * profile is "mx" or "submission"; tls says whether
 * STARTTLS is offered or TLS starts at once, with the context given to
 * smtp_server_set_tls (none given: neither). Call before the worker starts. */
int smtp_server_listen(struct smtp_server *srv, struct worker *w, int listen_fd,
                       const char *profile, enum conf_listen_tls tls);
/* The server-side OpenSSL SSL_CTX for STARTTLS (RFC 3207) and implicit TLS
 * (tls/tls.h: tls_server_ctx; the server takes a reference). Call before the
 * workers start. */
struct ssl_ctx_st;
void smtp_server_set_tls(struct smtp_server *srv, struct ssl_ctx_st *ctx);
/* Applies the abuse defences of policy/policy.h to mx listeners (the server
 * does not own p; free it after smtp_server_free). Call before the workers
 * start. */
struct policy;
void smtp_server_set_policy(struct smtp_server *srv, struct policy *p);
/*
 * AUTH on submission listeners (auth/auth.h): credentials are checked on
 * pool (crypt and PBKDF2 never run on a worker), failures counted and
 * delayed by throttle. The server owns neither: free the pool before the
 * workers' pending posts run for the last time (its answers are posted to
 * them), and the throttle after smtp_server_free. Call before the workers
 * start; without it AUTH answers 454 4.7.0.
 */
struct pool;
struct throttle;
void smtp_server_set_auth(struct smtp_server *srv, struct pool *pool, struct throttle *throttle);
/* Stops accepting, closes idle sessions with 421, lets sessions in the middle
 * of a transaction finish. Safe from any thread. */
void smtp_server_shutdown(struct smtp_server *srv);
/* Sessions alive now, over all workers. */
size_t smtp_server_sessions(struct smtp_server *srv);
/* After the workers stopped: frees what is left. */
void smtp_server_free(struct smtp_server *srv);

/*
 * Chaos triggers (capture mode, Mailpit's ChaosTriggers): with the given
 * probability (percent), MAIL (sender), RCPT (recipient) or AUTH
 * (authentication) fails with the given reply code, so applications can
 * test how they handle a failing mail server. Process-wide; any thread.
 */
struct smtp_chaos_trigger {
	int error_code;        /* 400..599; 0 = off */
	unsigned probability;  /* 0..100 */
};
struct smtp_chaos {
	struct smtp_chaos_trigger sender, recipient, authentication;
};
void smtp_chaos_set(const struct smtp_chaos *c);

/* Capture mode's SMTP logins (Mailpit's --smtp-auth-file): with verify
 * set, AUTH checks PLAIN and LOGIN credentials with it (users_verify's
 * contract; it runs on the auth pool) and MAIL needs a login first; NULL
 * (the default): any credentials pass. Process-wide; set before the
 * listeners start. */
void smtp_capture_set_login(int (*verify)(void *arg, const char *login, const char *password),
                            void *arg);
/* Capture mode (Mailpit's --smtp-require-starttls): MAIL before STARTTLS
 * gets 530 5.7.0. Process-wide; set before the listeners start. */
void smtp_capture_require_starttls(bool on);

/* Process-wide counters since start (for capture mode's /api/v1/info). */
struct smtp_counters {
	uint64_t accepted;      /* messages answered 250 at end of data */
	uint64_t accepted_size; /* their bytes */
	uint64_t rejected;      /* messages refused at end of data, and chaos refusals */
};
void smtp_counters_get(struct smtp_counters *out);
void smtp_chaos_get(struct smtp_chaos *out);

/* ------------------------------------------------------------- verify */

/*
 * SPF, DKIM, DMARC and ARC for mail received on mx listeners (verify.c,
 * verify_arc.c, issue 9; `auth_checks { }` and `arc { }` in docs/config.md).
 * One struct smtp_verify per mail
 * transaction, owned by the session's transaction and freed with it:
 *   MAIL accepted      smtp_verify_start (SPF begins, asynchronously)
 *   end of data        smtp_verify_forwarding, smtp_verify_message (DKIM
 *                      and ARC, then DMARC, then the ARC seal of a message
 *                      we forward); the session stays suspended until
 *                      done(arg) runs
 *   done(arg)          smtp_verify_verdict: deliver, Junk, 550 or 451;
 *                      before the spool put, smtp_verify_rewrite adds
 *                      the ARC Set (if sealed), Authentication-Results and
 *                      Received-SPF on top and
 *                      removes forged results claiming our host name
 *   RSET, MAIL, QUIT,  smtp_verify_free (cancels whatever still runs)
 *   close
 * Everything runs on the session's worker; nothing here blocks.
 */
struct smtp_verify;
struct pool;
struct policy;
struct tern_config;

/* Room the added fields may take at most (several DKIM results, a long
 * Received-SPF): on top of max_message_size. */
#define SMTP_VERIFY_HEADERS_MAX (16u * 1024u)

struct smtp_verify_params {
	const struct tern_config *conf; /* must outlive the transaction */
	struct policy *policy;          /* its per-worker resolver is shared */
	struct worker *w;               /* the session's worker; call on its thread */
	struct pool *pool;              /* large bodies are hashed here; may be NULL */
	const void *peer;               /* struct sockaddr_storage of the client */
	const char *helo;               /* as the client gave it */
	const char *sender;             /* reverse-path without <>; "" for the null path */
	const char *sess;               /* names the session in logs ("0.12") */
	bool mx;                        /* an mx listener (submission is never checked) */
	bool authenticated;             /* AUTH succeeded: outbound mail, not checked */
};

/*
 * At MAIL, once the command was accepted: starts SPF and returns the
 * transaction's checks; NULL when nothing is to be checked (not mx,
 * capture mode, an authenticated or relay.networks client, every check
 * off) or out of memory (logged; the message then goes unchecked).
 */
struct smtp_verify *smtp_verify_start(const struct smtp_verify_params *p);

/*
 * At end of data, before anything is spooled: msg..len is the client's
 * message (header block, blank line, body), which must stay where it is,
 * unchanged, until done runs or smtp_verify_free. id is the queue id, for
 * logs. Starts DKIM (if on) and, once SPF and DKIM are in, DMARC (if on).
 * done(arg) runs once, on the worker, never from inside this call.
 * TERN_OK, or TERN_EINVAL if called twice.
 */
int smtp_verify_message(struct smtp_verify *v, const char *id, const char *msg, size_t len,
                        void (*done)(void *arg), void *arg);
/* SPILL: before smtp_verify_message, the msg it gets is a read-only mapping
 * of a file (smtp/data_stream.h): the one pass over the body (DKIM's and
 * ARC's hashes) drops each piece's pages once read (MADV_DONTNEED; the file
 * and the page cache keep them), so a large body does not stay in the
 * process's memory, and nothing copies it. Never for a buffer. */
void smtp_verify_mapped(struct smtp_verify *v);

/* Before smtp_verify_message: whether a recipient is not local (an alias
 * to a remote address, a routed domain), so the message leaves us and is
 * ARC-sealed (arc.seal_domain). */
void smtp_verify_forwarding(struct smtp_verify *v, bool forward);

enum smtp_verify_action {
	SMTP_VERIFY_DELIVER = 0, /* to the inbox */
	SMTP_VERIFY_JUNK,        /* local recipients get it in their Junk folder */
	SMTP_VERIFY_REJECT,      /* reply (550 5.7.1) and spool nothing */
	SMTP_VERIFY_DEFER,       /* reply (451 4.7.1) and spool nothing */
};

struct smtp_verify_verdict {
	enum smtp_verify_action action;
	const char *reply; /* REJECT/DEFER: the reply line without CRLF (owned by v) */
};

/* After done: what to do with the message. */
void smtp_verify_verdict(const struct smtp_verify *v, struct smtp_verify_verdict *out);

/* After done: the most msg may grow by in smtp_verify_rewrite (charge it). */
size_t smtp_verify_growth(const struct smtp_verify *v);

/*
 * After done, for a message that goes on: msg holds *trace_len bytes of
 * our own trace (the Received field) followed by the message given to
 * smtp_verify_message. Puts our ARC Set (when we sealed), Authentication-
 * Results, Received-SPF (and the DMARC decision field, if any) before our
 * Received, and removes from the
 * client's header block every Authentication-Results or ARC set claiming
 * our host name and any X-Tern-DMARC field. The caller first makes room:
 * msg->max raised by smtp_verify_growth (our fields are not the client's
 * bytes, so they do not count against max_message_size) and the memory
 * charged. *trace_len becomes the length of everything we put before the
 * client's message. TERN_OK or a buffer error (msg unchanged).
 */
int smtp_verify_rewrite(struct smtp_verify *v, struct tbuf *msg, size_t *trace_len);

/*
 * Cancels what still runs and frees. msg (may be NULL) is the buffer that
 * holds the message given to smtp_verify_message: if a pool job still
 * reads it, v takes its bytes (msg is left empty) and frees them when the
 * job ends. NULL v is fine.
 */
void smtp_verify_free(struct smtp_verify *v, struct tbuf *msg);

/* ------------------------------------------------ client-side protocol */

/*
 * Pure pieces of the outbound SMTP client (client_proto.c), kept apart
 * from its I/O so they are unit-tested and fuzzed.
 */

#define SMTP_REPLY_TEXT_MAX 2048

/* One complete (possibly multi-line) reply. */
struct smtp_reply {
	int code;                          /* 200..599 */
	char enhanced[16];                 /* "5.1.1" from the first line, or "" */
	char text[SMTP_REPLY_TEXT_MAX + 1];/* lines after the code (and enhanced code of the
					      first line kept), joined by "\n"; truncated */
	size_t n_lines;
};

struct smtp_reply_parser {
	int code;          /* internal */
	size_t line_len;   /* internal: bytes of the current line so far */
	char line[1024];   /* internal */
	bool overflow;     /* internal */
	struct smtp_reply cur; /* internal: the reply being assembled */
};

enum smtp_reply_status {
	SMTP_REPLY_MORE = 0, /* all input consumed, reply incomplete */
	SMTP_REPLY_DONE,     /* *out holds a complete reply; *consumed bytes used */
	SMTP_REPLY_BAD,      /* not an SMTP reply (wrong format, mixed codes, too many lines) */
};

void smtp_reply_init(struct smtp_reply_parser *p);
/* Lines end in CRLF (a bare LF is tolerated from servers). Lines longer
 * than 1000 bytes are truncated, not an error. At most 100 lines. */
enum smtp_reply_status smtp_reply_feed(struct smtp_reply_parser *p, const char *in, size_t len,
				       size_t *consumed, struct smtp_reply *out);

/*
 * What a reply means for the command it answers (RFC 5321 §4.3.2, RFC 4954
 * §4, RFC 3207 §4). The client pairs replies with commands strictly and asks
 * this which codes a command can have; one it cannot have is a protocol
 * error (the peer is out of step, or hostile), never a result: a 250 to DATA
 * means no message was taken, and must not count as a delivery.
 */
enum smtp_client_cmd {
	SMTP_C_GREETING,
	SMTP_C_EHLO, /* and HELO */
	SMTP_C_STARTTLS,
	SMTP_C_AUTH, /* AUTH and each response to a challenge */
	SMTP_C_MAIL,
	SMTP_C_RCPT,
	SMTP_C_DATA,
	SMTP_C_END_OF_DATA, /* the final "." of DATA, or BDAT ... LAST */
	SMTP_C_RSET,
	SMTP_C_QUIT,
};

enum smtp_reply_kind {
	SMTP_RK_OK,       /* success: 2xx (220 to STARTTLS, 235 to AUTH) */
	SMTP_RK_CONTINUE, /* go on: 354 to DATA, 334 to AUTH */
	SMTP_RK_TEMP,     /* 4xx */
	SMTP_RK_PERM,     /* 5xx */
	SMTP_RK_INVALID,  /* a code this command cannot have: a protocol error */
};

/* Judges code (as smtp_reply_feed gives it, 200..599) as the reply to cmd. Pure. */
enum smtp_reply_kind smtp_reply_judge(enum smtp_client_cmd cmd, int code);

/* SASL mechanisms a server offers (AUTH keyword). */
#define SMTP_AUTH_PLAIN 0x01
#define SMTP_AUTH_LOGIN 0x02
#define SMTP_AUTH_CRAM_MD5 0x04
#define SMTP_AUTH_XOAUTH2 0x08
#define SMTP_AUTH_OAUTHBEARER 0x10

struct smtp_ehlo_caps {
	bool pipelining, eightbitmime, smtputf8, dsn, chunking, binarymime, starttls,
		enhancedstatuscodes;
	bool has_size;
	uint64_t size;     /* SIZE limit; 0 = none announced */
	unsigned auth;     /* SMTP_AUTH_* bits */
};

/* Reads the keywords of a 250 reply to EHLO (first line is the greeting). */
void smtp_parse_ehlo(const struct smtp_reply *r, struct smtp_ehlo_caps *caps);

/*
 * Converts an 8-bit message for a peer without 8BITMIME (RFC 6152 §3):
 * every MIME leaf part with 8-bit content and Content-Transfer-Encoding
 * 8bit (or none) is re-encoded as quoted-printable; multiparts are walked
 * recursively (message/rfc822 parts too). A non-MIME message with an 8-bit
 * body that is valid UTF-8 becomes text/plain; charset=utf-8, QP. Returns
 * TERN_OK with the converted message in out, or TERN_EINVAL when it cannot
 * be done (8-bit bytes in header fields, binary parts, NUL bytes, invalid
 * UTF-8 in a non-MIME body): the caller bounces with 5.6.3.
 */
int smtp_downconvert_8bit(const char *msg, size_t len, struct tbuf *out);

/*
 * Encodes a message as the text of DATA (RFC 5321 §4.5.2, §2.3.8), in one
 * pass: every line end (CRLF, bare LF or bare CR) becomes CRLF, NUL bytes
 * are left out, a line that begins with "." gets one more ".", a last line
 * without an end gets CRLF, and ".\r\n" ends the data. So no stored byte
 * sequence can end the data early or smuggle a command at a lenient peer
 * (nor at one that drops NUL). emit receives the output in
 * order, in runs (n > 0); len 0 gives ".\r\n". Not for BINARYMIME (BDAT
 * sends bytes as they are).
 */
/*
 * What b[0..n) holds, eight bytes at a time: SMTP_SCAN_CR if any CR,
 * SMTP_SCAN_NUL if any NUL, SMTP_SCAN_8BIT if any byte >= 0x80. Pure; the
 * bulk line paths of smtp_data_feed and smtp_data_encode use it.
 */
enum { SMTP_SCAN_CR = 1, SMTP_SCAN_NUL = 2, SMTP_SCAN_8BIT = 4 };
unsigned smtp_scan_bytes(const char *b, size_t n);

typedef void (*smtp_emit_fn)(void *arg, const char *p, size_t n);
void smtp_data_encode(const char *msg, size_t len, smtp_emit_fn emit, void *arg);

/*
 * Encodes a message as the bytes of one BDAT chunk (RFC 3030) for a message
 * that is not BINARYMIME: what smtp_data_encode makes of it minus the
 * dot-stuffing and the ".\r\n" — every line end CRLF, NUL left out, CRLF
 * after an unterminated last line — so a peer gets the same message whichever
 * way it is sent, and no bare CR or LF reaches a lenient one. emit receives
 * the output in order, in runs (n > 0). Returns the bytes emitted (the
 * chunk's size). Pure.
 */
uint64_t smtp_chunk_encode(const char *msg, size_t len, smtp_emit_fn emit, void *arg);

#endif
