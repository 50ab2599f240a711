/*
 * milter_stage.h — the SMTP session's side of the milter protocol (issue 9
 * item 8): a listener's `milters = [...]` asked, in order, at connect, HELO,
 * MAIL, RCPT and end of message, on the session's event base.
 *
 * One struct milter_stage per session that has milters, owned by the
 * session and freed with it (QUIT goes to each milter then). Each step call
 * starts one question to every milter in turn and calls cb exactly once,
 * later, from the event loop (never from inside the call), with the combined
 * verdict: the first milter that refuses decides; `accept` from a milter
 * means that milter is done (for the session at connect/HELO, for the
 * message after), the next is still asked. Only one step is outstanding at
 * a time: the session waits for cb before it calls the next one. abort
 * needs no answer and may be called between any two steps.
 *
 * The pure part, milter_apply_mods, applies header changes to message bytes
 * (unit-tested in tests/unit/test_milter_stage.c).
 */
#ifndef TERN_SMTP_MILTER_STAGE_H
#define TERN_SMTP_MILTER_STAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "core/buf.h"
#include "policy/milter.h"

struct event_base;
struct conf_listener;
struct tern_config;

/*
 * The listener of conf bound to `bound` (getsockname of the listening
 * socket: the address as configured, e.g. 0.0.0.0:25) when it has milters;
 * NULL otherwise. Pure (no I/O).
 */
const struct conf_listener *milter_stage_listener(const struct tern_config *conf,
                                                  const struct sockaddr *bound);

struct milter_stage_params {
	struct event_base *base;              /* the session's worker */
	const struct conf_listener *listener; /* milters, default action, timeouts */
	const char *myhostname;               /* macro {j} */
	const char *sess;                     /* names the session in logs ("0.12") */
	const struct sockaddr_storage *peer;  /* the client */
	const char *client_addr;              /* macro {client_addr}: "192.0.2.7" */
	const char *client_name;              /* macro {client_name}: PTR name or "[addr]" */
	const char *if_addr;                  /* macro {if_addr}: our address; or NULL */
};

struct milter_stage_result {
	/* CONTINUE: go on (every milter continued or accepted); REJECT and
	 * TEMPFAIL: answer `reply`; DISCARD: take the message, deliver nothing. */
	enum milter_action action;
	const char *reply;  /* REJECT/TEMPFAIL: "550 5.7.1 words", no CRLF */
	const char *milter; /* the milter that decided, for logs ("" when none did) */
	bool failed;        /* the decision is a default action (milter down, slow, confused) */
	/* end of message only: */
	bool quarantine;               /* a milter asked for it */
	const char *quarantine_reason; /* printable; "" if none given */
	bool modified;                 /* msg/len is the message with header changes */
	const char *msg;               /* owned by the stage until its next step or free */
	size_t len;
	size_t trace_len; /* the new length of our fields at its top */
};

typedef void (*milter_stage_cb)(void *arg, const struct milter_stage_result *r);

struct milter_stage;

/* NULL when the listener has no milters or on allocation failure (logged). */
struct milter_stage *milter_stage_new(const struct milter_stage_params *p, milter_stage_cb cb,
                                      void *arg);
/* QUIT to each milter, close, free; no callback after. NULL is fine. */
void milter_stage_free(struct milter_stage *ms);

void milter_stage_connect(struct milter_stage *ms);
/* tls_version: "TLSv1.3" when TLS is on, else NULL. */
void milter_stage_helo(struct milter_stage *ms, const char *helo, const char *tls_version);
/* from without brackets ("" for <>); auth_authen: the SASL login or NULL. */
void milter_stage_mail(struct milter_stage *ms, const char *from, const char *auth_authen,
                       const char *tls_version);
/* REJECT/TEMPFAIL here refuse this recipient only. */
void milter_stage_rcpt(struct milter_stage *ms, const char *rcpt);
/*
 * The message, as it will be spooled (our trace fields on top): DATA, every
 * header field, end of headers, the body, end of message, to each milter in
 * turn; each milter sees the header changes of those before it. msg must
 * stay unchanged until cb. Its first trace_len bytes are our own fields: the
 * answer says how many there are once the milters' changes are made
 * (fields inserted above the client's first one count as ours, fields
 * added after the client's last one as the client's). growth_max bounds
 * how much the changes may add
 * (past it: 451 4.3.0, logged).
 */
void milter_stage_message(struct milter_stage *ms, const char *qid, const char *msg, size_t len,
                          size_t trace_len, size_t growth_max);

/* After the end-of-message answer was taken (its msg copied): frees the
 * rewritten message, so the stage holds no copy of it between messages. */
void milter_stage_release_copies(struct milter_stage *ms);
/* The transaction ends early (RSET, a refused MAIL or message, a new MAIL). */
void milter_stage_abort(struct milter_stage *ms);

/*
 * Applies mods (milter.h: struct milter_mod, in order) to the header
 * section of msg (CRLF lines up to the first empty line) and writes the
 * whole message to out (whose max bounds the result: TERN_ELIMIT past it).
 * The body is copied unchanged. prefix (may be NULL): in, the bytes of
 * msg's leading fields that are not the client's (our trace); out, the
 * same in the result: what comes before the client's first field that is
 * left, or the whole header section when none is. Pure.
 */
int milter_apply_mods(const char *msg, size_t len, size_t *prefix, const struct milter_mod *mods,
                      size_t n, struct tbuf *out);

#endif
