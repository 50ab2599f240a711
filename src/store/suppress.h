/*
 * suppress.h — the suppression list (issue 12 item 8): addresses tern must
 * not send to any more, per sending domain or globally, and what feeds it:
 * hard bounces, asynchronous DSNs to VERP return paths, ARF complaints
 * (RFC 5965) and one-click unsubscribes (RFC 8058).
 *
 * Owns: DATA/suppress.db (SQLite, WAL) with the entries and the VERP map,
 * DATA/suppress.gen (its change counter, a shared mapping), DATA/suppress.key (the HMAC secret of VERP and unsubscribe tokens, 0600),
 * the pure report parser (suppress_parse.c) and the token schemes.
 * Never: runs on an event loop (every call but the pure parser and the
 * token formatting may block on SQLite: call from the delivery threads, the
 * CLI or a thread-pool job), or trusts a token whose HMAC does not verify.
 *
 * Scope: "" is the global list; otherwise a lowercase sending domain (the
 * envelope sender's domain). An address is suppressed for a message when it
 * is on the global list or on the list of the message's sending domain.
 * Addresses are stored with their domain part lowercased (local parts are
 * case-sensitive in theory, RFC 5321 §2.4, and kept as they are).
 *
 * The daemon needs no reload: `tern suppress add|del` is seen by the next
 * delivery attempt. A lookup is an indexed SELECT on the database file,
 * except when an in-memory filter built from the whole list says the
 * address is on none (suppress_filter.h): every change made through this
 * module counts in DATA/suppress.gen, a shared counter that makes each
 * process rebuild its filter before its next answer; a change written to
 * the file by anything else (the sqlite3 shell) is seen within a second.
 */
#ifndef TERN_STORE_SUPPRESS_H
#define TERN_STORE_SUPPRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum suppress_reason {
	SUPPRESS_BOUNCE = 0,
	SUPPRESS_COMPLAINT,
	SUPPRESS_UNSUBSCRIBE,
	SUPPRESS_MANUAL,
};
/* "bounce", "complaint", "unsubscribe", "manual". */
const char *suppress_reason_name(enum suppress_reason r);
/* Parses a name above; false if unknown. */
bool suppress_reason_parse(const char *s, enum suppress_reason *out);

#define SUPPRESS_ADDR_MAX 320
#define SUPPRESS_DOMAIN_MAX 256

struct suppress_entry {
	char scope[SUPPRESS_DOMAIN_MAX]; /* "" = global */
	char addr[SUPPRESS_ADDR_MAX];
	enum suppress_reason reason;
	char detail[512];  /* "5.1.1 550 5.1.1 no such user", "abuse", ... */
	int64_t created;   /* unix seconds */
	char queue_id[40]; /* the message that caused it, "" if none */
};

struct suppress_db;

/* Opens (creating) DATA/suppress.db. TERN_OK or TERN_EIO with a reason in err. */
int suppress_open(const char *data_dir, struct suppress_db **out, char *err, size_t errlen);
void suppress_close(struct suppress_db *db);

/*
 * The process-wide handle for data_dir, opened on first use (the delivery
 * threads share it; calls are serialised by a mutex inside). NULL if it
 * cannot be opened (logged once per failure). Freed by suppress_shared_close.
 */
struct suppress_db *suppress_shared(const char *data_dir);
void suppress_shared_close(void);

/* Normalises addr into out: the domain part lowercased. false if it is no
 * addr-spec (no '@', empty parts, too long, control bytes). */
bool suppress_norm_addr(const char *addr, char *out, size_t outlen);

/* Adds or replaces the entry (scope, addr). TERN_OK, TERN_EINVAL for a bad
 * address or scope, TERN_EIO. */
int suppress_add(struct suppress_db *db, const char *scope, const char *addr,
                 enum suppress_reason reason, const char *detail, const char *queue_id);
/* Removes it; TERN_ENOTFOUND if it was not there. */
int suppress_del(struct suppress_db *db, const char *scope, const char *addr);
/*
 * Whether addr is suppressed for mail from sender_domain (NULL or "": only
 * the global list counts). On true, *e (when not NULL) is the entry that
 * matched (the domain's before the global one). A database error counts as
 * not suppressed (logged): sending is the safer failure than losing mail.
 */
bool suppress_check(struct suppress_db *db, const char *sender_domain, const char *addr,
                    struct suppress_entry *e);
/* Calls fn for each entry of scope (NULL: every scope), ordered by scope
 * and address; stops when fn returns false. Returns the count or an error. */
int suppress_list(struct suppress_db *db, const char *scope,
                  bool (*fn)(const struct suppress_entry *e, void *arg), void *arg);

/* The sending domain of an envelope sender: its domain part lowercased, ""
 * for the null sender or a sender without '@'. */
void suppress_sender_domain(const char *sender, char *out, size_t outlen);

/* ------------------------------------------------------------ tokens */

/*
 * The secret of both token schemes: DATA/suppress.key, 32 random bytes,
 * created 0600 on first use. TERN_OK or TERN_EIO.
 */
#define SUPPRESS_KEY_LEN 32
int suppress_key_load(const char *data_dir, unsigned char key[SUPPRESS_KEY_LEN]);

/*
 * VERP (RFC 3464 bounces made attributable): the return path of one
 * recipient of one message is "bounce+TOKEN@VERP_DOMAIN" with TOKEN =
 * QUEUEID "-" INDEX "-" HMAC, the HMAC-SHA256 of the lowercased "QUEUEID-
 * INDEX" under the key, first 16 hex digits. All lowercase, because a
 * local part is often lowercased on its way back (tern's own RCPT does).
 * The recipient itself is not in the token (a local part holds 64 bytes):
 * suppress_verp_remember keeps (QUEUEID-INDEX -> recipient, sending domain)
 * in the database until suppress_verp_lookup needs it.
 */
#define SUPPRESS_VERP_LOCAL_MAX 64
/* Writes "bounce+TOKEN@domain" to out. TERN_OK or TERN_ELIMIT. Pure. */
int suppress_verp_address(const unsigned char key[SUPPRESS_KEY_LEN], const char *queue_id,
                          size_t rcpt_idx, const char *verp_domain, char *out, size_t outlen);
/* Whether local_part ("bounce+TOKEN", any case) carries a token whose HMAC
 * verifies; then ref (QUEUEID-INDEX, lowercase) is written to ref. Pure. */
bool suppress_verp_verify(const unsigned char key[SUPPRESS_KEY_LEN], const char *local_part,
                          char *ref, size_t reflen);
int suppress_verp_remember(struct suppress_db *db, const char *queue_id, size_t rcpt_idx,
                           const char *rcpt, const char *sender_domain);
/* The recipient and sending domain remembered for ref. TERN_ENOTFOUND if none. */
int suppress_verp_lookup(struct suppress_db *db, const char *ref, char *rcpt, size_t rcptlen,
                         char *sender_domain, size_t sdlen);

/*
 * One-click unsubscribe (RFC 8058). TOKEN = base64url("SCOPE\nADDRESS") "."
 * the first 32 hex digits of its HMAC-SHA256 under the key; the URL is
 * BASE "/unsubscribe/" TOKEN (BASE: suppression.unsubscribe_url, no
 * trailing slash needed).
 */
int suppress_unsub_token(const unsigned char key[SUPPRESS_KEY_LEN], const char *scope,
                         const char *addr, char *out, size_t outlen);
/* Verifies a token and recovers its scope and address. Pure. */
bool suppress_unsub_verify(const unsigned char key[SUPPRESS_KEY_LEN], const char *tok,
                           size_t toklen, char *scope, size_t scopelen, char *addr, size_t addrlen);
/*
 * The two header fields the API send path adds when a message asks for
 * one-click unsubscribe: "List-Unsubscribe: <BASE/unsubscribe/TOKEN>"
 * (plus ", <mailto:MAILTO>" when mailto is not NULL) and
 * "List-Unsubscribe-Post: List-Unsubscribe=One-Click", each ending in CRLF,
 * written to out. TERN_OK or TERN_ELIMIT. Pure.
 */
int suppress_unsub_headers(const unsigned char key[SUPPRESS_KEY_LEN], const char *base_url,
                           const char *scope, const char *addr, const char *mailto, char *out,
                           size_t outlen);

/*
 * What the API send path calls for a message that asks for one-click
 * unsubscribe: the two fields above for recipient rcpt of mail from sender
 * (scope: the sender's domain), with the URL base suppression.unsubscribe_url
 * and the key of conf's data dir. One message per recipient, since the
 * token names the recipient. TERN_ENOTFOUND when unsubscribe_url is not
 * set or suppression is off; TERN_EIO when the key cannot be read; else as
 * suppress_unsub_headers. Blocks (reads the key file).
 */
struct tern_config;
int suppress_list_unsubscribe_fields(const struct tern_config *conf, const char *sender,
                                     const char *rcpt, const char *mailto, char *out,
                                     size_t outlen);

/* ------------------------------------------------------------ reports */

/*
 * A delivery status notification (RFC 3464) or an abuse report (ARF,
 * RFC 5965), as far as suppression needs it. suppress_parse_report is a
 * pure function over (pointer, length): it never fails on malformed input,
 * it just finds less. Only the top-level multipart/report is read (its
 * message/delivery-status or message/feedback-report part, and the
 * returned message/rfc822 or text/rfc822-headers part's header).
 */
enum suppress_report_kind { SUPPRESS_REPORT_NONE = 0, SUPPRESS_REPORT_DSN, SUPPRESS_REPORT_ARF };

#define SUPPRESS_REPORT_RCPTS 16
struct suppress_report_rcpt {
	char final_rcpt[SUPPRESS_ADDR_MAX]; /* without "rfc822;" */
	char action[16];                    /* lowercase: "failed", "delayed", ... */
	char status[16];                    /* "5.1.1" */
	char diagnostic[256];
};

struct suppress_report {
	enum suppress_report_kind kind;
	/* DSN */
	struct suppress_report_rcpt rcpts[SUPPRESS_REPORT_RCPTS];
	size_t n_rcpts;
	/* ARF */
	char feedback_type[32];                   /* lowercase, "abuse", ... */
	char original_rcpt_to[SUPPRESS_ADDR_MAX]; /* the first Original-Rcpt-To */
	char original_mail_from[SUPPRESS_ADDR_MAX];
	/* the returned message's header (both kinds) */
	char orig_return_path[SUPPRESS_ADDR_MAX];
	char orig_to[SUPPRESS_ADDR_MAX]; /* the first address of To */
	char orig_from[SUPPRESS_ADDR_MAX];
};

void suppress_parse_report(const char *msg, size_t len, struct suppress_report *out);
/* A permanent failure: Action failed and a Status of class 5. */
bool suppress_rcpt_is_hard(const struct suppress_report_rcpt *r);

/* ------------------------------------------------------------ intake */

/*
 * Mail to the suppression addresses (the VERP return paths under
 * suppression.verp_domain, suppression.feedback_address) is consumed by
 * the delivery side, never put in a mailbox: suppress_intake_match says
 * whether a recipient is one, suppress_intake reads the message and
 * updates the list. Both read conf; intake blocks (SQLite).
 */
struct tern_config;
bool suppress_intake_match(const struct tern_config *conf, const char *rcpt);
/* What intake made of a message, for the log and the recipient's record. */
struct suppress_intake_result {
	bool suppressed;
	char addr[SUPPRESS_ADDR_MAX];
	char scope[SUPPRESS_DOMAIN_MAX];
	char what[128]; /* "dsn 5.1.1", "forged-token", "arf abuse", "no-recipient", ... */
};
/*
 * An event (store/events.h; type an enum tern_event_type: EV_COMPLAINED,
 * EV_UNSUBSCRIBED) about addr put on scope's list ("" = global), with
 * metadata {"domain": scope} and detail as its reply. queue_id may be NULL.
 * Nothing when the event store is not running; never blocks.
 */
void suppress_emit_event(int type, const char *queue_id, const char *addr, const char *scope,
                         const char *detail);

void suppress_intake(const struct tern_config *conf, const char *rcpt, const char *msg, size_t len,
                     const char *queue_id, struct suppress_intake_result *res);

#endif
