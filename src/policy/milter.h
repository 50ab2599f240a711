/*
 * milter.h — a client of the Sendmail/Postfix milter protocol (version 6),
 * so that operators can plug rspamd, ClamAV, OpenDKIM and the like into a
 * listener.
 *
 * Two layers, each usable alone:
 *   - the pure codec (milter_codec.c): frames and command packets encoded into
 *     a struct tbuf, and the milter's replies decoded from (pointer, length)
 *     into views of the input; no I/O, no allocation on decode; unit-tested
 *     and fuzzed (tests/fuzz/fuzz_milter_reply.c);
 *   - the async client (milter_client.c): one connection to one milter on a
 *     worker's event base (bufferevent), driven step by step by the SMTP
 *     session; every step has a deadline; it never blocks the loop.
 *
 * Wire format (mfdef.h): every packet is a 4-byte big-endian length (command
 * byte + data), the command byte, then the data. Strings are NUL-terminated;
 * integers are 32-bit big-endian (the port in CONNECT is 16-bit).
 *
 * What tern offers in negotiation: header additions, insertions, changes and
 * deletions, and quarantine. It never offers body replacement, envelope
 * changes (ADDRCPT/DELRCPT/CHGFROM) or macro-list changes, so a milter that
 * sends those is speaking nonsense and gets the default action.
 */
#ifndef TERN_POLICY_MILTER_H
#define TERN_POLICY_MILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/buf.h"

/* ---- protocol constants (mfdef.h) ---------------------------------------- */

#define MILTER_VERSION 6
#define MILTER_CHUNK_MAX 65535       /* body bytes per BODY packet */
#define MILTER_PACKET_MAX (1u << 20) /* longest reply tern reads (data + command) */

/* Commands, MTA -> milter. */
#define MILTER_CMD_ABORT 'A'
#define MILTER_CMD_BODY 'B'
#define MILTER_CMD_CONNECT 'C'
#define MILTER_CMD_MACRO 'D'
#define MILTER_CMD_BODYEOB 'E'
#define MILTER_CMD_HELO 'H'
#define MILTER_CMD_QUIT_NC 'K'
#define MILTER_CMD_HEADER 'L'
#define MILTER_CMD_MAIL 'M'
#define MILTER_CMD_EOH 'N'
#define MILTER_CMD_OPTNEG 'O'
#define MILTER_CMD_QUIT 'Q'
#define MILTER_CMD_RCPT 'R'
#define MILTER_CMD_DATA 'T'
#define MILTER_CMD_UNKNOWN 'U'

/* Replies, milter -> MTA. */
#define MILTER_REP_ADDRCPT '+'
#define MILTER_REP_DELRCPT '-'
#define MILTER_REP_ADDRCPT_PAR '2'
#define MILTER_REP_SHUTDOWN '4'
#define MILTER_REP_ACCEPT 'a'
#define MILTER_REP_REPLBODY 'b'
#define MILTER_REP_CONTINUE 'c'
#define MILTER_REP_DISCARD 'd'
#define MILTER_REP_CHGFROM 'e'
#define MILTER_REP_CONN_FAIL 'f'
#define MILTER_REP_ADDHEADER 'h'
#define MILTER_REP_INSHEADER 'i'
#define MILTER_REP_SETSYMLIST 'l'
#define MILTER_REP_CHGHEADER 'm'
#define MILTER_REP_PROGRESS 'p'
#define MILTER_REP_QUARANTINE 'q'
#define MILTER_REP_REJECT 'r'
#define MILTER_REP_SKIP 's'
#define MILTER_REP_TEMPFAIL 't'
#define MILTER_REP_REPLYCODE 'y'
#define MILTER_REP_OPTNEG 'O' /* the negotiation reply reuses the command byte */

/* Actions (SMFIF_*). */
#define MILTER_ACT_ADDHDRS 0x01u
#define MILTER_ACT_CHGBODY 0x02u
#define MILTER_ACT_ADDRCPT 0x04u
#define MILTER_ACT_DELRCPT 0x08u
#define MILTER_ACT_CHGHDRS 0x10u
#define MILTER_ACT_QUARANTINE 0x20u
#define MILTER_ACT_CHGFROM 0x40u
#define MILTER_ACT_ADDRCPT_PAR 0x80u
#define MILTER_ACT_SETSYMLIST 0x100u

/* Protocol steps (SMFIP_*): "no such command" and "no reply to it". */
#define MILTER_P_NOCONNECT 0x1u
#define MILTER_P_NOHELO 0x2u
#define MILTER_P_NOMAIL 0x4u
#define MILTER_P_NORCPT 0x8u
#define MILTER_P_NOBODY 0x10u
#define MILTER_P_NOHDRS 0x20u
#define MILTER_P_NOEOH 0x40u
#define MILTER_P_NR_HDR 0x80u
#define MILTER_P_NOUNKNOWN 0x100u
#define MILTER_P_NODATA 0x200u
#define MILTER_P_SKIP 0x400u
#define MILTER_P_RCPT_REJ 0x800u
#define MILTER_P_NR_CONN 0x1000u
#define MILTER_P_NR_HELO 0x2000u
#define MILTER_P_NR_MAIL 0x4000u
#define MILTER_P_NR_RCPT 0x8000u
#define MILTER_P_NR_DATA 0x10000u
#define MILTER_P_NR_UNKN 0x20000u
#define MILTER_P_NR_EOH 0x40000u
#define MILTER_P_NR_BODY 0x80000u
#define MILTER_P_HDR_LEADSPC 0x100000u
#define MILTER_P_MDS_256K 0x10000000u
#define MILTER_P_MDS_1M 0x20000000u

/* What tern offers: every step may be skipped or left unanswered, SKIP is
 * understood; header changes and quarantine are the only actions. */
#define MILTER_OFFER_ACTIONS (MILTER_ACT_ADDHDRS | MILTER_ACT_CHGHDRS | MILTER_ACT_QUARANTINE)
#define MILTER_OFFER_PROTOCOL                                                                      \
	(MILTER_P_NOCONNECT | MILTER_P_NOHELO | MILTER_P_NOMAIL | MILTER_P_NORCPT |                \
	 MILTER_P_NOBODY | MILTER_P_NOHDRS | MILTER_P_NOEOH | MILTER_P_NR_HDR |                    \
	 MILTER_P_NOUNKNOWN | MILTER_P_NODATA | MILTER_P_SKIP | MILTER_P_RCPT_REJ |                \
	 MILTER_P_NR_CONN | MILTER_P_NR_HELO | MILTER_P_NR_MAIL | MILTER_P_NR_RCPT |               \
	 MILTER_P_NR_DATA | MILTER_P_NR_UNKN | MILTER_P_NR_EOH | MILTER_P_NR_BODY |                \
	 MILTER_P_MDS_256K | MILTER_P_MDS_1M)

#define MILTER_HDR_NAME_MAX 256    /* a header name from a milter */
#define MILTER_HDR_VALUE_MAX 65536 /* a header value from a milter */
#define MILTER_REPLY_TEXT_MAX 512  /* a REPLYCODE line is cut here */

/* ---- framing ------------------------------------------------------------- */

enum milter_frame_rc {
	MILTER_FRAME_OK = 0,   /* a whole packet: *cmd, *data, *dlen, *used are set */
	MILTER_FRAME_MORE = 1, /* not enough bytes yet */
	MILTER_FRAME_BAD = -1, /* length 0 or above max: the stream is unusable */
};

/*
 * Finds the first packet in p[0..n): a length field L (1 <= L <= max), then L
 * bytes. On OK, *cmd is the command byte, data/dlen the L-1 data bytes (a
 * view into p) and *used = 4 + L.
 */
enum milter_frame_rc milter_frame_parse(const uint8_t *p, size_t n, size_t max, uint8_t *cmd,
                                        const uint8_t **data, size_t *dlen, size_t *used);

/* ---- encoders: each appends one whole packet to out ---------------------- */
/* All return TERN_OK, TERN_ENOMEM/TERN_ELIMIT (out's cap), or TERN_EINVAL when
 * a string holds a NUL byte or the data would not fit one packet. */

int milter_enc_packet(struct tbuf *out, uint8_t cmd, const void *data, size_t len);
int milter_enc_optneg(struct tbuf *out, uint32_t version, uint32_t actions, uint32_t protocol);
/*
 * CONNECT: hostname, then the family and address of the client. sa may be
 * NULL (family 'U', unknown), AF_INET ('4'), AF_INET6 ('6') or AF_UNIX ('L').
 */
int milter_enc_connect(struct tbuf *out, const char *hostname, const struct sockaddr *sa);
int milter_enc_helo(struct tbuf *out, const char *helo);
/* MAIL or RCPT: "<addr>" then each ESMTP argument, NUL-terminated each.
 * addr is given without brackets ("" for the null path). */
int milter_enc_envelope(struct tbuf *out, uint8_t cmd, const char *addr, const char *const *args,
                        size_t nargs);
int milter_enc_header(struct tbuf *out, const char *name, const char *value);
/* MACRO for the step `for_cmd`: pairs names[i] = values[i]. */
int milter_enc_macros(struct tbuf *out, uint8_t for_cmd, const char *const *names,
                      const char *const *values, size_t n);

/* ---- reply decoder --------------------------------------------------------- */

enum milter_reply_kind {
	MILTER_R_ACCEPT,
	MILTER_R_CONTINUE,
	MILTER_R_REJECT,
	MILTER_R_TEMPFAIL,
	MILTER_R_DISCARD,
	MILTER_R_REPLYCODE, /* code (400-599) and line */
	MILTER_R_PROGRESS,
	MILTER_R_SKIP,
	MILTER_R_ADDHEADER,  /* name, value */
	MILTER_R_INSHEADER,  /* index, name, value */
	MILTER_R_CHGHEADER,  /* index, name, value ("" = delete) */
	MILTER_R_QUARANTINE, /* value = reason */
	MILTER_R_ADDRCPT,    /* value = address (and args for ADDRCPT_PAR) */
	MILTER_R_DELRCPT,    /* value = address */
	MILTER_R_CHGFROM,    /* value = address */
	MILTER_R_REPLBODY,   /* value/value_len = body bytes */
	MILTER_R_OPTNEG,     /* version, actions, protocol */
	MILTER_R_SHUTDOWN,   /* SHUTDOWN or CONN_FAIL: the milter gives up */
	MILTER_R_SETSYMLIST,
};

/*
 * A decoded reply: views into the packet data (name and value are
 * NUL-terminated in place, since the wire strings are). Nothing is owned.
 */
struct milter_reply {
	enum milter_reply_kind kind;
	uint32_t version, actions, protocol; /* OPTNEG */
	uint32_t index;                      /* INSHEADER, CHGHEADER */
	unsigned code;                       /* REPLYCODE: 421..599 */
	const char *name;                    /* header name */
	size_t name_len;
	const char *value; /* header value, reply line, reason, address */
	size_t value_len;
};

/*
 * Decodes one reply packet (command byte and its data, from
 * milter_frame_parse). Returns TERN_OK, or TERN_ESYNTAX for an unknown
 * command, a missing or extra NUL, a bad header name, a header value with a
 * line end that is not folding, a REPLYCODE that is not "4XX" or "5XX"
 * followed by space or '-' and text, or a short integer. Pure; never
 * allocates.
 */
int milter_reply_decode(uint8_t cmd, const uint8_t *data, size_t len, struct milter_reply *out);

/* "accept", "continue", ... for logs and the CLI. */
const char *milter_reply_kind_name(enum milter_reply_kind k);

/* ---- the async client ----------------------------------------------------- */

struct event_base;
struct milter_client;

/* What the milter decided at a step (or the default action when it failed). */
enum milter_action {
	MILTER_CONTINUE = 0, /* go on to the next step */
	MILTER_ACCEPT,       /* accept the message (at connect/helo: the session)
	                        without asking this milter anything more */
	MILTER_REJECT,       /* refuse with reply (5xx) */
	MILTER_TEMPFAIL,     /* refuse with reply (4xx) */
	MILTER_DISCARD,      /* accept and silently drop the message */
};

/* "continue", "accept", "reject", "tempfail", "discard". */
const char *milter_action_name(enum milter_action a);
/* Parses "tempfail" / "accept" / "reject" (a listener's default action). */
int milter_action_parse(const char *s, enum milter_action *out);

enum milter_mod_kind { MILTER_MOD_ADD, MILTER_MOD_INSERT, MILTER_MOD_CHANGE, MILTER_MOD_DELETE };

/*
 * A header modification for the session to apply at end of message, in the
 * order given:
 *   ADD     append "name: value" after the last header;
 *   INSERT  insert it before header number `index` (0 = at the top);
 *   CHANGE  replace the value of the index-th (1-based) header called name
 *           (case-insensitive); if there is none, append it (as sendmail);
 *   DELETE  remove the index-th header called name, if present.
 * name is a valid field name; value has its line ends as CRLF + WSP (folds),
 * never a bare CR or LF, and is what follows "name:" (a leading space is the
 * milter's own; the session writes "name: value" when value has none).
 */
struct milter_mod {
	enum milter_mod_kind kind;
	uint32_t index;
	char *name;
	char *value;
};

struct milter_verdict {
	enum milter_action action;
	/* REJECT/TEMPFAIL: the whole SMTP reply line, "550 5.7.1 words" (an
	 * enhanced code is always present); "" otherwise. */
	char reply[MILTER_REPLY_TEXT_MAX + 16];
	bool failed;     /* the milter was down, slow or incoherent: default action */
	bool quarantine; /* the milter asked to quarantine (EOM only) */
	char quarantine_reason[256];
	/* EOM only: header modifications, owned by the client until the next
	 * step or milter_client_free. */
	const struct milter_mod *mods;
	size_t n_mods;
};

typedef void (*milter_step_cb)(void *arg, const struct milter_verdict *v);

struct milter_opts {
	const char *spec;                  /* "inet:HOST:PORT", "inet:[V6]:PORT" or "unix:/path" */
	enum milter_action default_action; /* TEMPFAIL, ACCEPT or REJECT */
	uint32_t connect_timeout_ms;       /* 0: 30 s */
	uint32_t command_timeout_ms;       /* each step but EOM; 0: 30 s */
	uint32_t eom_timeout_ms;           /* end of message (content scanning); 0: 300 s */
	const char *myhostname;            /* macro j; or NULL */
	const char *queue_id;              /* macro i for logs; or NULL (see milter_set_queue_id) */
};

/* Checks a spec's syntax without connecting (the config uses it): hosts are
 * IP literals or "localhost" — a name would need a blocking lookup. */
int milter_spec_check(const char *spec);

/*
 * A client for one session (the connection to the milter lives as long as
 * the SMTP session; each transaction is one MAIL..EOM or ABORT). cb is called
 * once per step, always from the event loop (never from inside the step
 * call), with a verdict valid only during the call.
 *
 * Steps, in order, as the session reaches them (each only after the previous
 * one's callback): connect, helo, then per transaction mail, rcpt (one per
 * recipient), data, header (each), eoh, body (any number of calls), eom;
 * abort ends a transaction early (RSET, a rejected MAIL, a lost client) and
 * calls back with CONTINUE. After a final verdict (anything but CONTINUE, or
 * REJECT/TEMPFAIL at rcpt, which refuse only that recipient) the session should
 * not call the rest of that transaction's steps; if it does, they are
 * answered at once with the same verdict. After a failure every step gets
 * the default action.
 *
 * Returns NULL only on allocation failure.
 */
struct milter_client *milter_client_new(struct event_base *base, const struct milter_opts *o,
                                        milter_step_cb cb, void *arg);
/* Sends QUIT when the connection is up, closes, frees; no callback after. */
void milter_client_free(struct milter_client *mc);

/* Connects, negotiates, then sends CONNECT (client_name: the PTR name or the
 * address in brackets; sa: the client address, or NULL). */
void milter_step_connect(struct milter_client *mc, const char *client_name,
                         const struct sockaddr *sa);
void milter_step_helo(struct milter_client *mc, const char *helo);
void milter_step_mail(struct milter_client *mc, const char *from, const char *const *args,
                      size_t nargs);
void milter_step_rcpt(struct milter_client *mc, const char *rcpt, const char *const *args,
                      size_t nargs);
void milter_step_data(struct milter_client *mc);
/* value: without the trailing CRLF; folds may be CRLF or LF + WSP. */
void milter_step_header(struct milter_client *mc, const char *name, const char *value);
void milter_step_eoh(struct milter_client *mc);
/* Body bytes as received (CRLF line ends, dot-unstuffed); sent in chunks of
 * at most MILTER_CHUNK_MAX. len may be 0. */
void milter_step_body(struct milter_client *mc, const void *data, size_t len);
void milter_step_eom(struct milter_client *mc);
void milter_step_abort(struct milter_client *mc);
/*
 * Macros the session adds to those the client sends itself ({j},
 * {daemon_name}, _ at CONNECT; {mail_addr}, {rcpt_addr}, i at MAIL, RCPT and
 * end of message), for the step whose command is for_cmd: MILTER_CMD_CONNECT,
 * _HELO, _MAIL, _RCPT or _BODYEOB. Replaces what was set for that step
 * before; pairs with a NULL value are left out. Sent with the next such
 * step. TERN_OK, TERN_EINVAL (another command), TERN_ELIMIT (more than 12)
 * or TERN_ENOMEM.
 */
int milter_set_macros(struct milter_client *mc, uint8_t for_cmd, const char *const *names,
                      const char *const *values, size_t n);
/* The queue id (macro i) of the current transaction, once known. */
void milter_set_queue_id(struct milter_client *mc, const char *qid);

#endif
