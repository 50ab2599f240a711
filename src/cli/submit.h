/*
 * submit.h — local submission (internal to cli/): the request that
 * `tern sendmail` hands to the daemon, and the pure pieces both ends and
 * the tests share.
 *
 * One request is one message. The same bytes go over DATA/submit.sock (the
 * daemon answers one line) or, while the daemon is down, into a file in
 * DATA/maildrop/ that the daemon picks up at start and every few seconds:
 *
 *     TERN-SUBMIT 1 LF
 *     *( FROM addr | NAME text | RCPT addr | EXTRACT | BODY 7BIT|8BITMIME
 *      | RET FULL|HDRS | NOTIFY word | ENVID text ) LF      -- any order
 *     DATA length LF
 *     <length bytes: the message as the application wrote it>
 *     END LF
 *
 * Every line ends in a single LF, holds only printable ASCII, SP or bytes
 * >= 0x80 and is at most SUBMIT_LINE_MAX bytes. The daemon answers
 * "OK QUEUEID" LF or "ERR CODE words" LF, CODE being the sysexits code the
 * command exits with. Nothing in a request is trusted: the daemon decides
 * the envelope sender from the peer's uid (or the maildrop file's owner),
 * re-checks every limit, and re-parses every address.
 */
#ifndef TERN_CLI_SUBMIT_H
#define TERN_CLI_SUBMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/buf.h"

#define SUBMIT_MAGIC "TERN-SUBMIT 1"
#define SUBMIT_LINE_MAX 1024   /* one request line, LF included */
#define SUBMIT_RCPTS_MAX 10000 /* RCPT lines; the daemon's max_recipients applies too */
#define SUBMIT_NAME_MAX 256    /* -F */
#define SUBMIT_ENVID_MAX 100   /* -V, as Postfix */
/* Everything before the data: the magic, the options and 10,000 RCPT lines. */
#define SUBMIT_HEAD_MAX ((size_t)SUBMIT_RCPTS_MAX * 300 + 64 * 1024)

/* The parsed request. Strings are owned (submit_req_free); data points into
 * the parsed input and lives as long as it does. */
struct submit_req {
	bool has_from; /* FROM given (-f); from may then be "" (the null sender) */
	char *from;
	char *name;      /* NAME (-F), or NULL */
	bool extract;    /* EXTRACT (-t): recipients from To/Cc/Bcc too */
	unsigned body;   /* enum smtp_body: 0 absent, 1 7BIT, 2 8BITMIME (-B) */
	unsigned ret;    /* enum smtp_ret: 0 absent, 1 FULL, 2 HDRS (-R) */
	unsigned notify; /* SMTP_NOTIFY_* bits, 0 absent (-N) */
	char *envid;     /* ENVID (-V), or NULL */
	char **rcpts;    /* RCPT values as given: address lists, not yet parsed */
	size_t n_rcpts;
	const char *data; /* the message */
	size_t len;
};

void submit_req_free(struct submit_req *r);

enum submit_parse_status {
	SUBMIT_PARSE_MORE = 0, /* a valid prefix: read more */
	SUBMIT_PARSE_DONE,     /* *out holds the request; *consumed bytes made it */
	SUBMIT_PARSE_ERROR,    /* *why says what (static text) */
	SUBMIT_PARSE_TOO_BIG,  /* DATA length above max_data: refuse before reading it */
};

/*
 * Parses a request from in[0..len). Pure: no I/O, never reads past
 * in + len, allocates only into *out (freed by the parser unless DONE).
 * Call again with more bytes after MORE; the parse starts over each time,
 * but only the lines are scanned, never the data. max_data bounds the
 * DATA length. With DONE, *consumed is the request's length (bytes after
 * it are not the parser's business: the socket end wants none, the
 * maildrop end refuses them).
 */
enum submit_parse_status submit_parse(const char *in, size_t len, uint64_t max_data,
                                      struct submit_req *out, size_t *consumed, const char **why);

/*
 * Appends r as a request to out (the client's side of submit_parse).
 * TERN_EINVAL when a value cannot travel in a line (LF, CR, NUL or other
 * control bytes, too long, too many recipients), *why saying which;
 * TERN_ENOMEM/TERN_ELIMIT from the buffer.
 */
int submit_encode(const struct submit_req *r, struct tbuf *out, const char **why);

/* ---------------------------------------------------- message handling */

/*
 * Copies a message as a local application wrote it into out with every
 * line end made CRLF (a bare LF or a bare CR becomes CRLF, CRLF stays), as
 * the spool stores messages. TERN_ELIMIT when the result would pass max
 * (out then holds nothing useful); *has_nul / *has_8bit tell about the
 * bytes. Pure.
 */
int submit_crlf(const char *in, size_t len, size_t max, struct tbuf *out, bool *has_nul,
                bool *has_8bit);

/*
 * Walks an RFC 5322 address list (To:, Cc:, a command-line argument):
 * mailboxes "a@b", "Name <a@b>", "a@b (comment)", groups "g: a@b, c@d;",
 * quoted local parts. Calls fn with each addr-spec, comments and folding
 * white space removed (never NUL-terminated; fn copies). An empty list or
 * an empty group gives no call. TERN_OK, TERN_ESYNTAX for what is not an
 * address list (then fn may have been called for the addresses before the
 * error), or fn's own non-zero return. Pure.
 */
int submit_addr_list(const char *s, size_t n, int (*fn)(void *arg, const char *addr, size_t len),
                     void *arg);

/* What submit_rewrite adds and collects. */
struct submit_rewrite {
	/* in: header fields to add at the end of the header section when the
	 * message has none of that name ("Name: value" CRLF, or NULL) */
	const char *add_from, *add_date, *add_message_id;
	bool collect; /* -t: gather the To/Cc/Bcc recipients */
	/* out */
	struct tbuf rcpts; /* with collect: the raw field values, each ending in a NUL */
	size_t n_lists;    /* values in rcpts */
	bool had_bcc;      /* a Bcc (or Resent-Bcc) field was removed */
};

/*
 * Copies a CRLF message (submit_crlf's output) into out: a leading mbox
 * "From " line is dropped, every Bcc: and Resent-Bcc: field is removed
 * (with its continuation lines), the missing From:/Date:/Message-ID: of rw
 * are added at the end of the header section, and an empty line is put
 * between the header section and a body that began without one. With
 * rw->collect, the values of To:, Cc: and Bcc: are collected, or only
 * those of Resent-To:, Resent-Cc: and Resent-Bcc: when the message has
 * any (a resent message goes to its new recipients, as Postfix does).
 * rw->rcpts must be initialised by the caller (tbuf_init) and freed by it.
 * TERN_OK, or TERN_ELIMIT/TERN_ENOMEM from the buffers. Pure.
 */
int submit_rewrite(const char *msg, size_t len, struct submit_rewrite *rw, struct tbuf *out);

/* ----------------------------------------------------- the daemon side */

struct spool;
struct scheduler;
struct submit;

/*
 * Starts local submission: binds DATA/submit.sock (mode 0666: any local
 * user may submit; it takes nothing but requests), makes DATA/maildrop
 * (mode 1733: anyone may drop a file, nobody may list or take another's),
 * lets others search DATA (o+x, never read) so they can reach both, and
 * starts the listener thread and the pickup thread. Call after the
 * privilege drop, so both belong to the daemon's user. NULL with err set
 * on failure.
 */
struct submit *submit_start(const char *data_dir, struct spool *sp, struct scheduler *sched,
                            char *err, size_t errlen);
/* Stops accepting, wakes and waits for the connections in progress and
 * the pickup thread, closes the socket. Call before the spool closes.
 * NULL is fine. */
void submit_stop(struct submit *s);

/* ----------------------------------------------------- the client side */

/*
 * Writes request req (submit_encode's) into DATA/maildrop as m.RANDOM,
 * durably, for the daemon to pick up (sendmail.c; also `tern dmarc
 * send-reports` while the daemon is down). 0 or errno; name gets the path.
 */
int maildrop_write(const char *data_dir, const struct tbuf *req, char *name, size_t namelen);

enum sendmail_mode {
	SENDMAIL_DELIVER = 0, /* -bm (default): read a message, submit it */
	SENDMAIL_SMTP,        /* -bs: SMTP on stdin/stdout */
	SENDMAIL_MAILQ,       /* -bp, or invoked as mailq */
	SENDMAIL_NEWALIASES,  /* -bi, -I, or invoked as newaliases */
	SENDMAIL_FLUSH,       /* -q: flush the queue */
	SENDMAIL_NOTHING,     /* -bh, -bH, -qTIME: accepted, nothing to do */
};

struct sendmail_opts {
	enum sendmail_mode mode;
	const char *config; /* -C FILE, or NULL */
	const char *from;   /* -f / -r, or NULL */
	const char *name;   /* -F, or NULL */
	bool extract;       /* -t */
	bool ignore_dots;   /* -i, -oi: a lone "." is data */
	unsigned body;      /* -B */
	unsigned ret;       /* -R */
	unsigned notify;    /* -N */
	const char *envid;  /* -V */
	char **rcpts;       /* borrowed from argv */
	size_t n_rcpts;
	const char *warning; /* an option that was ignored with a reason (static), or NULL */
};

/*
 * Parses sendmail's command line the way Postfix's sendmail(1) does
 * (getopt-style: "-ti", "-fADDR" or "-f ADDR", options end at the first
 * non-option or "--"); argv[0] is the program name, its basename chooses
 * the default mode (mailq, newaliases). Options Postfix accepts and
 * ignores are accepted and ignored. Pure: argv is not modified. Returns 0,
 * or EX_USAGE (64) with *why set (static text or a pointer into argv).
 */
int sendmail_parse_args(int argc, char **argv, struct sendmail_opts *o, const char **why,
                        const char **why_arg);

/*
 * Where the message a sendmail client reads ends without -i: at a line
 * holding only "." (LF or CRLF after it, or the end of the input when eof).
 * in[0] must begin a line. Returns the number of bytes before that line
 * and sets *complete, or returns len with *complete false when no such
 * line is in in[0..len). Pure.
 */
size_t sendmail_dot_end(const char *in, size_t len, bool eof, bool *complete);

/* `tern sendmail ...` and the binary invoked as sendmail, mailq or
 * newaliases. Returns a sysexits code. */
int cmd_sendmail(int argc, char **argv);

#endif
