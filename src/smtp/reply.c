/*
 * reply.c — every SMTP reply tern writes, as data: reply id -> code,
 * enhanced status code (RFC 3463) and words a person can act on.
 *
 * Owns: the reply table and the one function that renders an entry as a
 * reply line. The server (server.c) answers only with these entries; the
 * scheduler and the delivery side take their status codes and texts from
 * here too, so one meaning has one code everywhere.
 *
 * Must never: write CR or LF inside a line (an argument with one gets '?'
 * instead, so no value can start a second reply); hold state; allocate.
 * Texts are not printf formats: "%s" is the only marker, and the table says
 * how many each entry takes, so nothing a client sends is ever a format.
 */
#include "smtp/smtp.h"

#include <string.h>

#include "core/err.h"

#define R(id, c, e, t, n) [id] = {.code = (c), .enhanced = (e), .text = (t), .nargs = (n)}

static const struct smtp_reply_def replies[SMTP_R__COUNT] = {
    /* Connection and greeting. RFC 5321 §4.2: 220, 221 and 421 name our host
     * first; RFC 2034 §3: the greeting and the HELO/EHLO replies carry no
     * enhanced code. */
    R(SMTP_R_GREETING, 220, NULL, "%s ESMTP tern ready", 1),
    R(SMTP_R_HELO, 250, NULL, "%s", 1),
    R(SMTP_R_EHLO, 250, NULL, "%s Hello %s [%s]", 3),
    R(SMTP_R_QUIT, 221, "2.0.0", "%s closing connection", 1),
    R(SMTP_R_OK, 250, "2.0.0", "Ok", 0),
    R(SMTP_R_HELP, 214, "2.0.0",
      "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY EXPN", 0),
    R(SMTP_R_HELP_END, 214, "2.0.0", "See RFC 5321; tern", 0),
    R(SMTP_R_VRFY, 252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery",
      0),
    R(SMTP_R_EXPN, 252, "2.5.0", "Cannot EXPN list, but will accept message and attempt delivery",
      0),
    R(SMTP_R_VRFY_DISABLED, 502, "5.5.1", "VRFY command is disabled", 0),
    R(SMTP_R_EXPN_DISABLED, 502, "5.5.1", "EXPN command is disabled", 0),
    R(SMTP_R_ADDRESS_SYNTAX, 501, "5.5.4", "Syntax: %s <address>", 1),
    R(SMTP_R_UNKNOWN_COMMAND, 500, "5.5.2", "Command not recognized", 0),
    R(SMTP_R_LINE_TOO_LONG, 500, "5.5.2", "Line too long (limit %s bytes)", 1),
    R(SMTP_R_NOT_IMPLEMENTED, 502, "5.5.1", "Command not implemented on this listener", 0),
    R(SMTP_R_TOO_MANY_ERRORS, 421, "4.7.0", "%s Too many errors, closing connection", 1),
    R(SMTP_R_TIMEOUT, 421, "4.4.2", "%s Error: timeout exceeded", 1),
    R(SMTP_R_SHUTDOWN, 421, "4.3.2", "%s Service shutting down", 1),
    R(SMTP_R_CLIENT_GONE, 421, "4.4.2",
      "%s Connection closed during the checks: the message was not queued", 1),
    R(SMTP_R_TOO_MANY_CONNECTIONS, 421, "4.7.0", "%s Too many connections, try again later", 1),
    R(SMTP_R_TOO_MANY_CONNECTIONS_IP, 421, "4.7.0",
      "%s Too many connections from your address, try again later", 1),
    R(SMTP_R_NOMEM, 451, "4.3.0", "Out of memory, try again later", 0),
    R(SMTP_R_NOMEM_CLOSE, 421, "4.3.0", "%s Out of memory, try again later", 1),

    /* Sequence: what a command needs first (server.c checks them once, from
     * its command table). */
    R(SMTP_R_NEED_HELO, 503, "5.5.1", "Send HELO/EHLO first", 0),
    R(SMTP_R_NEED_EHLO, 503, "5.5.1", "Send EHLO first", 0),
    R(SMTP_R_NEED_MAIL, 503, "5.5.1", "Need MAIL command first", 0),
    R(SMTP_R_NEED_RCPT, 503, "5.5.1", "Need RCPT command first", 0),
    R(SMTP_R_IN_TRANSACTION, 503, "5.5.1",
      "%s is not allowed during a mail transaction: finish it or send RSET", 1),
    R(SMTP_R_AFTER_BDAT, 503, "5.5.1", "%s cannot follow BDAT: send RSET and start again", 1),
    R(SMTP_R_TLS_ACTIVE, 503, "5.5.1", "TLS is already active", 0),
    R(SMTP_R_ALREADY_AUTHENTICATED, 503, "5.5.1", "Already authenticated", 0),
    R(SMTP_R_AUTH_REQUIRED, 530, "5.7.0", "Authentication required", 0), /* RFC 4954 §6 */
    R(SMTP_R_ONLY_QUIT, 503, "5.7.1",
      "This server refused the connection (see its greeting); only QUIT is accepted", 0),
    R(SMTP_R_BINARYMIME_NEEDS_BDAT, 503, "5.5.1", "BODY=BINARYMIME needs BDAT, not DATA", 0),
    R(SMTP_R_SMTPUTF8_NEEDS_EHLO, 503, "5.5.1", "SMTPUTF8 needs EHLO", 0),

    /* The envelope. */
    R(SMTP_R_SENDER_OK, 250, "2.1.0", "Sender <%s> ok", 1),
    R(SMTP_R_RCPT_OK, 250, "2.1.5", "Recipient <%s> ok", 1),
    R(SMTP_R_SENDER_NEEDS_SMTPUTF8, 553, "5.6.7",
      "The sender address needs SMTPUTF8: use MAIL FROM:<...> SMTPUTF8", 0),
    R(SMTP_R_RCPT_NEEDS_SMTPUTF8, 553, "5.6.7",
      "The recipient address needs SMTPUTF8: use MAIL FROM:<...> SMTPUTF8", 0),
    R(SMTP_R_SIZE_EXCEEDED, 552, "5.3.4", "Message size exceeds fixed limit of %s bytes", 1),
    R(SMTP_R_TOO_MANY_RCPTS, 452, "4.5.3", "Too many recipients", 0),
    R(SMTP_R_NO_SUCH_USER, 550, "5.1.1", "<%s>: Recipient address rejected: no such user here", 1),
    R(SMTP_R_MAILBOX_FULL, 452, "4.2.2", "<%s>: Mailbox full, try again later", 1),
    R(SMTP_R_RELAY_DENIED, 550, "5.7.1", "<%s>: Relay access denied", 1),
    /* RFC 6409 §6.1: an authenticated user sends as its own addresses. */
    R(SMTP_R_SENDER_NOT_OWNED, 553, "5.7.1", "Sender address not owned by user %s", 1),
    R(SMTP_R_MAIL_AUTH_NOT_OFFERED, 555, "5.5.4",
      "The AUTH= parameter is for listeners that offer AUTH; this one does not", 0),
    /* Capture mode's chaos triggers: the operator picks the code, in the
     * class of one of these two. */
    R(SMTP_R_CHAOS_SENDER_TEMP, 451, "4.7.1", "Chaos: sender rejected on purpose (chaos trigger)",
      0),
    R(SMTP_R_CHAOS_SENDER_PERM, 550, "5.7.1", "Chaos: sender rejected on purpose (chaos trigger)",
      0),
    R(SMTP_R_CHAOS_RCPT_TEMP, 451, "4.2.0", "Chaos: recipient rejected on purpose (chaos trigger)",
      0),
    R(SMTP_R_CHAOS_RCPT_PERM, 550, "5.1.1", "Chaos: recipient rejected on purpose (chaos trigger)",
      0),
    R(SMTP_R_CHAOS_AUTH_TEMP, 454, "4.7.0",
      "Chaos: authentication failed on purpose (chaos trigger)", 0),
    R(SMTP_R_CHAOS_AUTH_PERM, 535, "5.7.8",
      "Chaos: authentication failed on purpose (chaos trigger)", 0),

    /* The message. */
    R(SMTP_R_DATA_GO, 354, NULL, "End data with <CR><LF>.<CR><LF>", 0),
    R(SMTP_R_QUEUED, 250, "2.0.0", "Ok: queued as %s", 1),
    R(SMTP_R_CHUNK_OK, 250, "2.0.0", "%s octets received", 1),
    R(SMTP_R_OVER_BUDGET, 452, "4.3.1",
      "Insufficient system storage: too many messages are being received at once, try "
      "again later",
      0),
    R(SMTP_R_SIGN_FAILED, 451, "4.3.0",
      "Local error: the message could not be DKIM-signed (%s); nothing was queued, try again "
      "later",
      1),
    R(SMTP_R_SPOOL_FAILED, 451, "4.3.0", "Local error: could not write the queue, try again later",
      0),
    /* The disk (or a file size limit) is full: ENOSPC, EDQUOT, EFBIG. */
    R(SMTP_R_SPOOL_FULL, 452, "4.3.1", "Insufficient system storage, try again later", 0),
    R(SMTP_R_BARE_LINE_END, 554, "5.6.0",
      "Message refused: it contains a bare CR, bare LF or NUL; lines must end with CRLF", 0),
    R(SMTP_R_MAIL_LOOP, 554, "5.4.6", "Too many Received headers (%s): mail loop detected", 1),
    R(SMTP_R_BDAT_NO_SIZE, 421, "4.5.0",
      "%s BDAT without a readable size: closing, as its chunk cannot be told from commands", 1),

    /* STARTTLS (RFC 3207). */
    R(SMTP_R_STARTTLS_GO, 220, "2.0.0", "Ready to start TLS", 0),
    R(SMTP_R_STARTTLS_NOT_OFFERED, 502, "5.5.1", "STARTTLS is not offered on this port", 0),
    R(SMTP_R_TLS_UNAVAILABLE, 454, "4.7.0", "TLS not available due to a temporary reason", 0),
    R(SMTP_R_TLS_FAILED, 421, "4.3.0", "%s Cannot start TLS, closing", 1),

    /* AUTH (RFC 4954). */
    R(SMTP_R_AUTH_OK, 235, "2.7.0", "Authentication successful", 0),
    R(SMTP_R_SASL_CHALLENGE, 334, NULL, "%s", 1), /* base64, may be empty */
    R(SMTP_R_AUTH_CANCELLED, 501, "5.7.0", "Authentication cancelled", 0),
    R(SMTP_R_AUTH_BAD_INITIAL, 501, "5.5.2", "Cannot decode the initial response", 0),
    R(SMTP_R_AUTH_BAD_RESPONSE, 501, "5.5.2", "Cannot decode the response", 0),
    R(SMTP_R_AUTH_MECHANISM, 504, "5.5.4",
      "Unrecognized authentication type (PLAIN and LOGIN are offered)", 0),
    R(SMTP_R_AUTH_NO_MECHANISM, 504, "5.5.4", "Unrecognized authentication type (offered: %s)", 1),
    R(SMTP_R_AUTH_NEEDS_TLS, 538, "5.7.11",
      "Encryption required for requested authentication mechanism", 0),
    R(SMTP_R_STARTTLS_FIRST, 530, "5.7.0", "Must issue a STARTTLS command first", 0),
    R(SMTP_R_AUTH_FAILED, 535, "5.7.8", "Authentication credentials invalid", 0),
    R(SMTP_R_AUTH_INITIAL_REFUSED, 501, "5.7.0",
      "This mechanism starts with a challenge: send AUTH without an initial response", 0),
    R(SMTP_R_AUTH_LINE_TOO_LONG, 500, "5.5.6", "Authentication exchange line is too long", 0),
    R(SMTP_R_AUTH_TEMPFAIL, 454, "4.7.0", "Temporary authentication failure, try again later", 0),
    /* The brute-force throttle (auth.h): logins refused for a while. */
    R(SMTP_R_AUTH_BLOCKED, 454, "4.7.0", "Too many failed logins, try again later", 0),
    R(SMTP_R_AUTH_BLOCKED_CLOSE, 421, "4.7.0",
      "%s Too many failed logins from your address, try again later", 1),

    /* Delivery results the queue records (scheduler.c, deliver/). */
    R(SMTP_R_LOCAL_DELIVERED, 250, "2.0.0", "delivered to mailbox %s", 1),
    R(SMTP_R_LOCAL_BAD_MAILBOX, 550, "5.1.3", "the mailbox name is not usable", 0),
    R(SMTP_R_LOCAL_FAILED, 451, "4.3.0", "local delivery failed: %s", 1),
    R(SMTP_R_LOCAL_MAILBOX_FULL, 552, "5.2.2",
      "mailbox full: the message does not fit in the recipient's quota", 0),
    R(SMTP_R_CAPTURED, 250, "2.0.0", "caught as %s", 1),
    R(SMTP_R_CAPTURE_FAILED, 451, "4.3.0", "capture store failed: %s", 1),
    R(SMTP_R_DNS_LOOP, 550, "5.4.6", "mail for this domain loops back to myself", 0),
    R(SMTP_R_DNS_NO_ADDRESS, 550, "5.1.2", "the mail hosts of this domain have no address", 0),
    R(SMTP_R_DNS_NXDOMAIN, 550, "5.1.2", "the recipient domain does not exist (NXDOMAIN)", 0),
    R(SMTP_R_DNS_NULL_MX, 556, "5.1.10", "the recipient domain accepts no mail (null MX, RFC 7505)",
      0),
    R(SMTP_R_DNS_BAD_NAME, 550, "5.1.2", "the recipient domain is not a valid DNS name", 0),
    R(SMTP_R_DNS_TEMPFAIL, 451, "4.4.3", "temporary DNS failure looking up the mail hosts", 0),
};

#undef R

const struct smtp_reply_def *smtp_reply_def(enum smtp_reply_id id)
{
	if (TERN_BUG_ON((unsigned)id >= SMTP_R__COUNT || replies[id].text == NULL))
		id = SMTP_R_NOMEM; /* release builds: still a valid reply */
	return &replies[id];
}

/* Appends n bytes of p at *len; out keeps its NUL and is never overrun. */
static void put(char *out, size_t outlen, size_t *len, const char *p, size_t n, bool clean)
{
	for (size_t i = 0; i < n; i++, (*len)++) {
		if (*len + 1 >= outlen)
			continue; /* counted, not written: the caller sees the full length */
		char ch = p[i];
		out[*len] = clean && (ch == '\r' || ch == '\n') ? '?' : ch;
	}
	if (outlen)
		out[*len < outlen ? *len : outlen - 1] = '\0';
}

size_t smtp_reply_format(char *out, size_t outlen, enum smtp_reply_id id, int code, bool more,
                         const char *const *args, size_t nargs)
{
	const struct smtp_reply_def *d = smtp_reply_def(id);
	/* An override stays in the entry's class (the chaos triggers): a 4xx
	 * entry never goes out as a 5xx with a 4.x.x code. */
	if (code == 0 || TERN_BUG_ON(code / 100 != d->code / 100 || code < 200 || code > 599))
		code = d->code;
	if (TERN_BUG_ON(nargs != d->nargs))
		nargs = 0; /* the markers stay empty rather than read past args */
	size_t len = 0;
	char head[4] = {(char)('0' + code / 100), (char)('0' + code / 10 % 10),
	                (char)('0' + code % 10), more ? '-' : ' '};
	put(out, outlen, &len, head, sizeof(head), false);
	if (d->enhanced) {
		put(out, outlen, &len, d->enhanced, strlen(d->enhanced), false);
		put(out, outlen, &len, " ", 1, false);
	}
	const char *t = d->text;
	size_t used = 0;
	for (;;) {
		const char *mark = strstr(t, "%s");
		if (!mark) {
			put(out, outlen, &len, t, strlen(t), false);
			break;
		}
		put(out, outlen, &len, t, (size_t)(mark - t), false);
		if (used < nargs && args[used])
			put(out, outlen, &len, args[used], strlen(args[used]), true);
		used++;
		t = mark + 2;
	}
	return len;
}
