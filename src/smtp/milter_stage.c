/*
 * milter_stage.c — the session's milters (see milter_stage.h): one
 * milter_client (policy/milter.h) per configured milter, asked in order at
 * each step, and the header changes they ask for applied to the message.
 *
 * Owns: the order of the milters, the combination of their verdicts (the
 * first refusal wins), the message walk at end of data (DATA, each header,
 * EOH, body, EOM) and the rewritten message between milters.
 * Must never: block (every question is asynchronous, on the session's event
 * base, with the client's deadlines), call the session back from inside a
 * step call, or start a step on a client whose previous one (an abort) has
 * not answered yet.
 */
#include "smtp/milter_stage.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/conf.h"
#include "core/err.h"
#include "core/log.h"

#define SMTP_NAME_MAX 1100 /* a HELO argument (SMTP_ARG_MAX) or an address, and a NUL */

/* ---- which listener --------------------------------------------------------- */

static bool same_addr(const struct sockaddr *a, const struct sockaddr_storage *b)
{
	if (a->sa_family != b->ss_family)
		return false;
	if (a->sa_family == AF_INET) {
		const struct sockaddr_in *x = (const struct sockaddr_in *)a;
		const struct sockaddr_in *y = (const struct sockaddr_in *)b;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	if (a->sa_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
		const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
		return x->sin6_port == y->sin6_port &&
		       memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
	}
	return false;
}

const struct conf_listener *milter_stage_listener(const struct tern_config *conf,
                                                  const struct sockaddr *bound)
{
	for (size_t i = 0; i < conf->n_listeners; i++) {
		const struct conf_listener *l = &conf->listeners[i];
		struct sockaddr_storage ss;
		unsigned len = 0;
		if (l->n_milters == 0 || !conf_parse_address(l->address, &ss, &len))
			continue;
		if (same_addr(bound, &ss))
			return l;
	}
	return NULL;
}

/* ---- header changes (pure) ---------------------------------------------------- */

struct field {
	const char *p; /* the whole field, CRLF included */
	size_t n;
	size_t name_len;
	char *own;   /* p when it was made here */
	bool client; /* one of the client's fields (not our trace, not a milter's) */
};

struct fields {
	struct field *v;
	size_t n, cap;
};

static void fields_free(struct fields *f)
{
	for (size_t i = 0; i < f->n; i++)
		free(f->v[i].own);
	free(f->v);
}

static int fields_insert(struct fields *f, size_t at, struct field x)
{
	if (f->n == f->cap) {
		size_t nc = f->cap ? f->cap * 2 : 16;
		struct field *v = realloc(f->v, nc * sizeof(*v));
		if (!v)
			return TERN_ENOMEM;
		f->v = v;
		f->cap = nc;
	}
	memmove(&f->v[at + 1], &f->v[at], (f->n - at) * sizeof(*f->v));
	f->v[at] = x;
	f->n++;
	return TERN_OK;
}

/* The header fields of msg and where the rest (the empty line, the body)
 * starts; those that begin at or after prefix are the client's. A line
 * without a colon is kept as it is, as a field nobody can name. */
static int fields_parse(const char *msg, size_t len, size_t prefix, struct fields *f, size_t *rest)
{
	size_t i = 0;
	while (i < len) {
		if (msg[i] == '\r' && i + 1 < len && msg[i + 1] == '\n')
			break; /* the empty line */
		if (msg[i] == '\n')
			break;
		size_t start = i;
		/* one field: this line and the folded ones after it */
		for (;;) {
			const char *lf = memchr(msg + i, '\n', len - i);
			i = lf ? (size_t)(lf - msg) + 1 : len;
			if (i >= len || (msg[i] != ' ' && msg[i] != '\t'))
				break;
		}
		const char *colon = memchr(msg + start, ':', i - start);
		struct field x = {msg + start, i - start,
		                  colon ? (size_t)(colon - (msg + start)) : 0, NULL,
		                  start >= prefix};
		int rc = fields_insert(f, f->n, x);
		if (rc != TERN_OK)
			return rc;
	}
	*rest = i;
	return TERN_OK;
}

static bool field_named(const struct field *x, const char *name)
{
	size_t n = strlen(name);
	/* "Name :" (white space before the colon, obsolete syntax) counts too */
	size_t nl = x->name_len;
	while (nl > 0 && (x->p[nl - 1] == ' ' || x->p[nl - 1] == '\t'))
		nl--;
	return nl == n && n > 0 && strncasecmp(x->p, name, n) == 0;
}

static int field_make(const struct milter_mod *m, struct field *x)
{
	struct tbuf b = TBUF_INIT(strlen(m->name) + strlen(m->value) + 8);
	bool lead = m->value[0] == ' ' || m->value[0] == '\t';
	int rc = tbuf_printf(&b, "%s:%s%s\r\n", m->name, lead ? "" : " ", m->value);
	if (rc != TERN_OK) {
		tbuf_free(&b);
		return rc;
	}
	x->own = b.data;
	x->p = b.data;
	x->n = b.len;
	x->name_len = strlen(m->name);
	return TERN_OK;
}

/* The index-th (1-based) field called name, or f->n. */
static size_t field_find(const struct fields *f, const char *name, uint32_t index)
{
	uint32_t seen = 0;
	for (size_t i = 0; i < f->n; i++)
		if (field_named(&f->v[i], name) && ++seen == index)
			return i;
	return f->n;
}

int milter_apply_mods(const char *msg, size_t len, size_t *prefix, const struct milter_mod *mods,
                      size_t n, struct tbuf *out)
{
	struct fields f = {0};
	size_t rest = 0;
	int rc = fields_parse(msg, len, prefix ? *prefix : 0, &f, &rest);
	for (size_t k = 0; rc == TERN_OK && k < n; k++) {
		const struct milter_mod *m = &mods[k];
		struct field x = {0};
		size_t at;
		switch (m->kind) {
		case MILTER_MOD_ADD:
			if ((rc = field_make(m, &x)) == TERN_OK && (rc = fields_insert(&f, f.n, x)))
				free(x.own);
			break;
		case MILTER_MOD_INSERT:
			at = m->index < f.n ? m->index : f.n;
			if ((rc = field_make(m, &x)) == TERN_OK && (rc = fields_insert(&f, at, x)))
				free(x.own);
			break;
		case MILTER_MOD_CHANGE:
			at = field_find(&f, m->name, m->index);
			if ((rc = field_make(m, &x)) != TERN_OK)
				break;
			if (at == f.n) { /* none to change: added, as sendmail does */
				if ((rc = fields_insert(&f, f.n, x)))
					free(x.own);
				break;
			}
			x.client = f.v[at].client; /* in its place */
			free(f.v[at].own);
			f.v[at] = x;
			break;
		case MILTER_MOD_DELETE:
			at = field_find(&f, m->name, m->index);
			if (at < f.n) {
				free(f.v[at].own);
				memmove(&f.v[at], &f.v[at + 1], (f.n - at - 1) * sizeof(*f.v));
				f.n--;
			}
			break;
		}
	}
	tbuf_reset(out);
	bool ours = true; /* still before the first of the client's fields */
	for (size_t i = 0; rc == TERN_OK && i < f.n; i++) {
		if (ours && f.v[i].client) {
			ours = false;
			if (prefix)
				*prefix = out->len;
		}
		rc = tbuf_append(out, f.v[i].p, f.v[i].n);
	}
	if (rc == TERN_OK && ours && prefix)
		*prefix = out->len; /* no field of the client's is left */
	if (rc == TERN_OK)
		rc = tbuf_append(out, msg + rest, len - rest);
	fields_free(&f);
	return rc;
}

/* ---- the stage ------------------------------------------------------------------ */

enum op { OP_NONE, OP_CONNECT, OP_HELO, OP_MAIL, OP_RCPT, OP_MSG };

/* Where a milter is in the message walk. */
enum sub { SUB_DATA, SUB_HEADER, SUB_EOH, SUB_BODY, SUB_EOM };

struct one {
	struct milter_stage *ms;
	size_t idx;
	struct milter_client *mc;
	const char *spec; /* the listener's (the session holds the config) */
	bool aborting;    /* an abort's answer is still to come */
};

struct milter_stage {
	struct one *m;
	size_t n;
	char sess[48];
	struct sockaddr_storage peer;
	char client_name[SMTP_NAME_MAX];
	milter_stage_cb cb;
	void *cb_arg;

	enum op op;
	size_t cur;  /* the milter being asked */
	bool parked; /* cur is still aborting: the step starts when it answers */
	/* the step's argument (a HELO name or an address) */
	char arg[SMTP_NAME_MAX * 2];
	/* the message walk */
	enum sub sub;
	const char *msg; /* the message cur sees: the caller's, or work */
	size_t len;
	size_t trace_len; /* the bytes of our fields at its top */
	struct fields hdrs;
	size_t hdr_i, body_at;
	struct tbuf work, tmp;
	bool modified;
	bool quarantine;
	char quarantine_reason[256];
	/* the answer being built */
	char reply[MILTER_REPLY_TEXT_MAX + 16];
	char scratch_name[MILTER_HDR_NAME_MAX + 1];
	struct tbuf scratch;
};

static void op_next(struct milter_stage *ms);
static void msg_next(struct milter_stage *ms);

static void finish(struct milter_stage *ms, enum milter_action a, const char *reply,
                   const char *milter, bool failed)
{
	struct milter_stage_result r = {
	    .action = a, .milter = milter ? milter : "", .failed = failed};
	if (a == MILTER_REJECT || a == MILTER_TEMPFAIL) {
		snprintf(ms->reply, sizeof(ms->reply), "%s", reply);
		r.reply = ms->reply;
	}
	enum op op = ms->op;
	ms->op = OP_NONE;
	if (op == OP_MSG) {
		r.quarantine = ms->quarantine;
		r.quarantine_reason = ms->quarantine_reason;
		r.modified = ms->modified;
		r.msg = ms->modified ? ms->work.data : NULL;
		r.len = ms->modified ? ms->work.len : 0;
		r.trace_len = ms->trace_len;
		fields_free(&ms->hdrs);
		memset(&ms->hdrs, 0, sizeof(ms->hdrs));
	}
	ms->cb(ms->cb_arg, &r);
}

/* Asks milter cur the current step (or its next part). */
static void ask(struct milter_stage *ms)
{
	struct one *o = &ms->m[ms->cur];
	if (o->aborting) {
		ms->parked = true;
		return;
	}
	switch (ms->op) {
	case OP_CONNECT:
		milter_step_connect(o->mc, ms->client_name, (const struct sockaddr *)&ms->peer);
		break;
	case OP_HELO:
		milter_step_helo(o->mc, ms->arg);
		break;
	case OP_MAIL:
		milter_step_mail(o->mc, ms->arg, NULL, 0);
		break;
	case OP_RCPT:
		milter_step_rcpt(o->mc, ms->arg, NULL, 0);
		break;
	case OP_MSG:
		msg_next(ms);
		break;
	case OP_NONE:
		(void)TERN_BUG_ON(ms->op == OP_NONE);
		break;
	}
}

/* The next milter for the current step, or the answer when none is left. */
static void op_next(struct milter_stage *ms)
{
	ms->cur++;
	if (ms->cur >= ms->n) {
		finish(ms, MILTER_CONTINUE, NULL, NULL, false);
		return;
	}
	if (ms->op == OP_MSG) {
		ms->sub = SUB_DATA;
		ms->hdr_i = 0;
	}
	ask(ms);
}

static void abort_all(struct milter_stage *ms)
{
	for (size_t i = 0; i < ms->n; i++) {
		struct one *o = &ms->m[i];
		if (o->aborting)
			continue;
		o->aborting = true;
		milter_step_abort(o->mc);
	}
}

/* Header fields and body of the message milter cur is to see. */
static int msg_prepare(struct milter_stage *ms)
{
	fields_free(&ms->hdrs);
	memset(&ms->hdrs, 0, sizeof(ms->hdrs));
	size_t rest = 0;
	int rc = fields_parse(ms->msg, ms->len, 0, &ms->hdrs, &rest);
	if (rc != TERN_OK)
		return rc;
	/* the body begins after the empty line */
	if (rest + 1 < ms->len && ms->msg[rest] == '\r' && ms->msg[rest + 1] == '\n')
		rest += 2;
	else if (rest < ms->len && ms->msg[rest] == '\n')
		rest += 1;
	ms->body_at = rest;
	return TERN_OK;
}

static void msg_next(struct milter_stage *ms)
{
	struct one *o = &ms->m[ms->cur];
	switch (ms->sub) {
	case SUB_DATA:
		if (msg_prepare(ms) != TERN_OK) {
			finish(ms, MILTER_TEMPFAIL, "451 4.3.0 Out of memory, try again later",
			       NULL, true);
			return;
		}
		milter_step_data(o->mc);
		return;
	case SUB_HEADER:
		/* the next field a milter can be shown (a loop, not recursion:
		 * a header section may hold any number of lines it cannot) */
		while (ms->hdr_i < ms->hdrs.n) {
			const struct field *x = &ms->hdrs.v[ms->hdr_i++];
			size_t nl = x->name_len;
			while (nl > 0 && (x->p[nl - 1] == ' ' || x->p[nl - 1] == '\t'))
				nl--;
			if (nl == 0 || nl > MILTER_HDR_NAME_MAX)
				continue; /* a line without a field name */
			memcpy(ms->scratch_name, x->p, nl);
			ms->scratch_name[nl] = '\0';
			/* the value: after the colon, without the final line end */
			size_t vs = x->name_len + 1, ve = x->n;
			if (ve > vs && x->p[ve - 1] == '\n')
				ve--;
			if (ve > vs && x->p[ve - 1] == '\r')
				ve--;
			tbuf_reset(&ms->scratch);
			if (tbuf_append(&ms->scratch, x->p + vs, ve - vs) != TERN_OK ||
			    tbuf_append(&ms->scratch, "", 0) != TERN_OK || !ms->scratch.data)
				continue; /* longer than one packet may carry */
			milter_step_header(o->mc, ms->scratch_name, ms->scratch.data);
			return;
		}
		ms->sub = SUB_EOH;
		milter_step_eoh(o->mc);
		return;
	case SUB_EOH:
		milter_step_eoh(o->mc);
		return;
	case SUB_BODY:
		milter_step_body(o->mc, ms->msg + ms->body_at, ms->len - ms->body_at);
		return;
	case SUB_EOM:
		milter_step_eom(o->mc);
		return;
	}
}

static void log_verdict(struct milter_stage *ms, const char *step, const struct one *o,
                        const struct milter_verdict *v)
{
	char q[256], r[MILTER_REPLY_TEXT_MAX * 4 + 8];
	log_info("event=milter sess=%s milter=%s step=%s action=%s%s reply=%s", ms->sess,
	         log_quote(o->spec, strlen(o->spec), q, sizeof(q)), step,
	         milter_action_name(v->action), v->failed ? " failed=1" : "",
	         log_quote(v->reply, strlen(v->reply), r, sizeof(r)));
}

/* EOM's answer: header changes applied for the next milter and the session. */
static bool msg_apply(struct milter_stage *ms, const struct milter_verdict *v)
{
	if (v->quarantine) {
		ms->quarantine = true;
		snprintf(ms->quarantine_reason, sizeof(ms->quarantine_reason), "%s",
		         v->quarantine_reason);
	}
	if (v->n_mods == 0)
		return true;
	ms->tmp.max = ms->work.max;
	size_t prefix = ms->trace_len;
	if (milter_apply_mods(ms->msg, ms->len, &prefix, v->mods, v->n_mods, &ms->tmp) != TERN_OK)
		return false;
	ms->trace_len = prefix;
	struct tbuf t = ms->work;
	ms->work = ms->tmp;
	ms->tmp = t;
	tbuf_free(&ms->tmp); /* one rewritten copy between milters (the budget's count) */
	ms->msg = ms->work.data;
	ms->len = ms->work.len;
	ms->modified = true;
	return true;
}

static const char *const sub_names[] = {"data", "header", "eoh", "body", "eom"};

static void on_verdict(void *arg, const struct milter_verdict *v)
{
	struct one *o = arg;
	struct milter_stage *ms = o->ms;
	if (o->aborting) {
		/* the abort's answer: the step waiting for this milter may go */
		o->aborting = false;
		if (ms->parked && ms->cur == o->idx && ms->op != OP_NONE) {
			ms->parked = false;
			ask(ms);
		}
		return;
	}
	(void)TERN_BUG_ON(ms->op == OP_NONE || ms->cur != o->idx);
	static const char *const op_names[] = {"-", "connect", "helo", "mail", "rcpt", "msg"};
	const char *step = ms->op == OP_MSG ? sub_names[ms->sub] : op_names[ms->op];
	const char *spec = o->spec;
	/* refusals, discards and failures; not the accept most milters end a
	 * good message with (one line per message would say nothing) */
	if ((v->action != MILTER_CONTINUE && v->action != MILTER_ACCEPT) || v->failed)
		log_verdict(ms, step, o, v);
	switch (v->action) {
	case MILTER_CONTINUE:
		break;
	case MILTER_ACCEPT:
		if (ms->op == OP_MSG && ms->sub != SUB_EOM) {
			/* done with this message: its EOM answers at once (the
			 * client's verdict is sticky) and ends its transaction */
			ms->sub = SUB_EOM;
			msg_next(ms);
			return;
		}
		if (ms->op == OP_MSG && !msg_apply(ms, v)) {
			finish(ms, MILTER_TEMPFAIL, "451 4.3.0 Header changes too large, try later",
			       spec, true);
			return;
		}
		op_next(ms);
		return;
	case MILTER_REJECT:
	case MILTER_TEMPFAIL:
	case MILTER_DISCARD: {
		/* the first refusal decides; a refused recipient is not the end */
		enum op op = ms->op;
		if (op == OP_MAIL || op == OP_MSG)
			abort_all(ms);
		finish(ms, v->action, v->reply, spec, v->failed);
		return;
	}
	}
	/* CONTINUE */
	if (ms->op != OP_MSG) {
		op_next(ms);
		return;
	}
	switch (ms->sub) {
	case SUB_DATA:
		ms->sub = SUB_HEADER;
		break;
	case SUB_HEADER:
		break; /* the next header, or EOH */
	case SUB_EOH:
		ms->sub = SUB_BODY;
		break;
	case SUB_BODY:
		ms->sub = SUB_EOM;
		break;
	case SUB_EOM:
		if (!msg_apply(ms, v)) {
			finish(ms, MILTER_TEMPFAIL, "451 4.3.0 Header changes too large, try later",
			       spec, true);
			return;
		}
		op_next(ms);
		return;
	}
	msg_next(ms);
}

/* Starts op at the first milter, with arg (copied; cut if longer than a
 * command line may be). */
static void op_start(struct milter_stage *ms, enum op op, const char *arg)
{
	(void)TERN_BUG_ON(ms->op != OP_NONE);
	snprintf(ms->arg, sizeof(ms->arg), "%s", arg ? arg : "");
	ms->op = op;
	ms->cur = 0;
	ms->parked = false;
	ms->sub = SUB_DATA;
	ms->hdr_i = 0;
	ask(ms);
}

struct milter_stage *milter_stage_new(const struct milter_stage_params *p, milter_stage_cb cb,
                                      void *arg)
{
	const struct conf_listener *l = p->listener;
	if (!l || l->n_milters == 0)
		return NULL;
	struct milter_stage *ms = calloc(1, sizeof(*ms));
	if (!ms)
		goto nomem;
	ms->cb = cb;
	ms->cb_arg = arg;
	snprintf(ms->sess, sizeof(ms->sess), "%s", p->sess ? p->sess : "-");
	ms->peer = *p->peer;
	snprintf(ms->client_name, sizeof(ms->client_name), "%s",
	         p->client_name ? p->client_name : "unknown");
	tbuf_init(&ms->work, 0);
	tbuf_init(&ms->tmp, 0);
	tbuf_init(&ms->scratch, MILTER_HDR_VALUE_MAX * 2);
	ms->m = calloc(l->n_milters, sizeof(*ms->m));
	if (!ms->m)
		goto nomem;
	ms->n = l->n_milters;
	enum milter_action da = l->milter_default_action == CONF_MILTER_ACCEPT   ? MILTER_ACCEPT
	                        : l->milter_default_action == CONF_MILTER_REJECT ? MILTER_REJECT
	                                                                         : MILTER_TEMPFAIL;
	for (size_t i = 0; i < ms->n; i++) {
		struct milter_opts o = {
		    .spec = l->milters[i],
		    .default_action = da,
		    .connect_timeout_ms = l->milter_timeout * 1000u,
		    .command_timeout_ms = l->milter_timeout * 1000u,
		    .eom_timeout_ms = l->milter_eom_timeout * 1000u,
		    .myhostname = p->myhostname,
		};
		ms->m[i].ms = ms;
		ms->m[i].idx = i;
		ms->m[i].spec = l->milters[i];
		ms->m[i].mc = milter_client_new(p->base, &o, on_verdict, &ms->m[i]);
		if (!ms->m[i].mc)
			goto nomem;
		const char *names[] = {"{client_addr}", "{client_name}", "{if_addr}"};
		const char *vals[] = {p->client_addr, p->client_name, p->if_addr};
		if (milter_set_macros(ms->m[i].mc, MILTER_CMD_CONNECT, names, vals, 3) != TERN_OK)
			goto nomem;
	}
	return ms;
nomem:
	log_error("event=milter_nomem sess=%s", p->sess ? p->sess : "-");
	milter_stage_free(ms);
	return NULL;
}

void milter_stage_free(struct milter_stage *ms)
{
	if (!ms)
		return;
	for (size_t i = 0; ms->m && i < ms->n; i++)
		milter_client_free(ms->m[i].mc);
	free(ms->m);
	fields_free(&ms->hdrs);
	tbuf_free(&ms->work);
	tbuf_free(&ms->tmp);
	tbuf_free(&ms->scratch);
	free(ms);
}

void milter_stage_connect(struct milter_stage *ms)
{
	op_start(ms, OP_CONNECT, NULL);
}

/* The same macros for every milter, for the step of cmd. */
static void set_macros(struct milter_stage *ms, uint8_t cmd, const char *const *names,
                       const char *const *vals, size_t n)
{
	for (size_t i = 0; i < ms->n; i++)
		if (milter_set_macros(ms->m[i].mc, cmd, names, vals, n) != TERN_OK)
			log_warn("event=milter_macros_failed sess=%s", ms->sess);
}

void milter_stage_helo(struct milter_stage *ms, const char *helo, const char *tls_version)
{
	const char *names[] = {"{tls_version}"};
	const char *vals[] = {tls_version};
	set_macros(ms, MILTER_CMD_HELO, names, vals, 1);
	op_start(ms, OP_HELO, helo);
}

void milter_stage_mail(struct milter_stage *ms, const char *from, const char *auth_authen,
                       const char *tls_version)
{
	const char *names[] = {"{auth_authen}", "{tls_version}"};
	const char *vals[] = {auth_authen, tls_version};
	set_macros(ms, MILTER_CMD_MAIL, names, vals, 2);
	op_start(ms, OP_MAIL, from);
}

void milter_stage_rcpt(struct milter_stage *ms, const char *rcpt)
{
	op_start(ms, OP_RCPT, rcpt);
}

void milter_stage_message(struct milter_stage *ms, const char *qid, const char *msg, size_t len,
                          size_t trace_len, size_t growth_max)
{
	tbuf_free(&ms->work);
	tbuf_free(&ms->tmp);
	ms->work.max = ms->tmp.max = len + growth_max;
	ms->msg = msg;
	ms->len = len;
	ms->trace_len = trace_len;
	ms->modified = false;
	ms->quarantine = false;
	ms->quarantine_reason[0] = '\0';
	for (size_t i = 0; i < ms->n; i++)
		milter_set_queue_id(ms->m[i].mc, qid);
	/* the client sends it as "i" (sendmail's name); "{i}" as well, for
	 * milters that ask for the braced form */
	const char *names[] = {"{i}"};
	const char *vals[] = {qid};
	set_macros(ms, MILTER_CMD_BODYEOB, names, vals, 1);
	op_start(ms, OP_MSG, NULL);
}

void milter_stage_release_copies(struct milter_stage *ms)
{
	(void)TERN_BUG_ON(ms->op != OP_NONE);
	tbuf_free(&ms->work);
	tbuf_free(&ms->tmp);
	ms->msg = NULL;
	ms->len = 0;
}

void milter_stage_abort(struct milter_stage *ms)
{
	(void)TERN_BUG_ON(ms->op != OP_NONE);
	abort_all(ms);
	/* the rewritten message was the caller's to copy: its memory goes */
	tbuf_free(&ms->work);
	tbuf_free(&ms->tmp);
}
