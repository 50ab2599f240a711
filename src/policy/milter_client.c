/*
 * milter_client.c — the async milter client (see milter.h): one connection
 * to one milter per SMTP session, on the session's worker event base.
 *
 * Owns: the socket (a bufferevent), the negotiation, the per-step state and
 * deadline, the header modifications collected at end of message, and the
 * rule that a milter that is down, slow or incoherent yields the default
 * action instead of a hang.
 * Must never: block the loop (connect is non-blocking, every wait has a
 * timer), call the step callback from inside a step call (verdicts are
 * delivered from an event), or let a milter's bytes reach a header or a reply
 * unchecked (the codec validates names, folds and reply codes).
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "core/err.h"
#include "core/log.h"
#include "policy/milter.h"

#define MODS_MAX 1024
#define MX_MAX 12  /* macros the session may add for one step */
#define MX_STEPS 5 /* the steps it may add them for: C, H, M, R, E */
#define OUT_MAX (MILTER_PACKET_MAX + 64)

enum mc_state {
	MC_IDLE = 0,   /* not connected yet */
	MC_CONNECTING, /* socket connect in progress */
	MC_NEGOTIATE,  /* OPTNEG sent */
	MC_READY,      /* negotiated, no step outstanding */
	MC_WAIT,       /* a step sent, waiting for its reply */
	MC_DEAD,       /* failed or closed: default action from now on */
};

enum mc_step {
	ST_CONNECT,
	ST_HELO,
	ST_MAIL,
	ST_RCPT,
	ST_DATA,
	ST_HEADER,
	ST_EOH,
	ST_BODY,
	ST_EOM,
	ST_ABORT
};

static const char *const step_names[] = {"connect", "helo", "mail", "rcpt", "data",
                                         "header",  "eoh",  "body", "eom",  "abort"};

struct milter_client {
	struct event_base *base;
	char *spec;
	char *myhostname;
	char *qid;
	enum milter_action default_action;
	uint32_t connect_ms, command_ms, eom_ms;
	milter_step_cb cb;
	void *cb_arg;

	struct bufferevent *bev;
	struct event *timer;
	struct event *defer;
	enum mc_state state;
	enum mc_step step;
	uint32_t actions, protocol;

	/* CONNECT waits for the negotiation. */
	char *client_name;
	struct sockaddr_storage client_sa;
	bool have_client_sa;

	/* Sticky verdicts: for the session (connect/helo) and the transaction. */
	bool session_final, msg_final;
	struct milter_verdict session_v, msg_v;
	bool in_msg; /* MAIL sent and no EOM/ABORT since */
	bool body_skip;

	struct tbuf body; /* body bytes not sent yet */
	size_t body_off;

	struct milter_mod *mods;
	size_t n_mods;
	bool quarantine;
	char quarantine_reason[256];

	/* Macros the session adds for a step (milter_set_macros): CONNECT,
	 * HELO, MAIL, RCPT, EOM. */
	char *xm_names[MX_STEPS][MX_MAX];
	char *xm_values[MX_STEPS][MX_MAX];
	size_t n_xm[MX_STEPS];

	struct tbuf out; /* packets being assembled */
	struct tbuf pkt; /* the reply being handled, copied out of the input */
	bool have_verdict;
	struct milter_verdict v; /* the verdict waiting for the defer event */
};

const char *milter_action_name(enum milter_action a)
{
	switch (a) {
	case MILTER_CONTINUE:
		return "continue";
	case MILTER_ACCEPT:
		return "accept";
	case MILTER_REJECT:
		return "reject";
	case MILTER_TEMPFAIL:
		return "tempfail";
	case MILTER_DISCARD:
		return "discard";
	}
	return "?";
}

int milter_action_parse(const char *s, enum milter_action *out)
{
	if (strcmp(s, "tempfail") == 0)
		*out = MILTER_TEMPFAIL;
	else if (strcmp(s, "accept") == 0)
		*out = MILTER_ACCEPT;
	else if (strcmp(s, "reject") == 0)
		*out = MILTER_REJECT;
	else
		return TERN_EINVAL;
	return TERN_OK;
}

/* ---- addresses ------------------------------------------------------------ */

static int spec_resolve(const char *spec, struct sockaddr_storage *ss, int *sslen)
{
	memset(ss, 0, sizeof(*ss));
	if (strncmp(spec, "unix:", 5) == 0) {
		struct sockaddr_un *su = (struct sockaddr_un *)ss;
		const char *path = spec + 5;
		size_t n = strlen(path);
		if (n == 0 || path[0] != '/' || n >= sizeof(su->sun_path))
			return TERN_EINVAL;
		su->sun_family = AF_UNIX;
		memcpy(su->sun_path, path, n + 1);
		*sslen = (int)sizeof(*su);
		return TERN_OK;
	}
	if (strncmp(spec, "inet:", 5) != 0)
		return TERN_EINVAL;
	const char *hp = spec + 5;
	char buf[128];
	if (strncmp(hp, "localhost:", 10) == 0) {
		snprintf(buf, sizeof(buf), "127.0.0.1:%s", hp + 10);
		hp = buf;
	}
	/* A port is required: evutil would take a bare address with port 0. */
	const char *colon = strrchr(hp, ':');
	if (!colon || colon[1] == '\0' || (hp[0] == '[' && colon < strchr(hp, ']')))
		return TERN_EINVAL;
	char *end;
	long port = strtol(colon + 1, &end, 10);
	if (*end != '\0' || port < 1 || port > 65535)
		return TERN_EINVAL;
	int len = (int)sizeof(*ss);
	if (evutil_parse_sockaddr_port(hp, (struct sockaddr *)ss, &len) != 0)
		return TERN_EINVAL;
	*sslen = len;
	return TERN_OK;
}

int milter_spec_check(const char *spec)
{
	struct sockaddr_storage ss;
	int len;
	return spec_resolve(spec, &ss, &len);
}

/* ---- verdict delivery ------------------------------------------------------ */

static void mods_clear(struct milter_client *mc)
{
	for (size_t i = 0; i < mc->n_mods; i++) {
		free(mc->mods[i].name);
		free(mc->mods[i].value);
	}
	free(mc->mods);
	mc->mods = NULL;
	mc->n_mods = 0;
	mc->quarantine = false;
	mc->quarantine_reason[0] = '\0';
}

static void verdict_set(struct milter_verdict *v, enum milter_action a, const char *reply)
{
	memset(v, 0, sizeof(*v));
	v->action = a;
	if (reply)
		snprintf(v->reply, sizeof(v->reply), "%s", reply);
	else if (a == MILTER_REJECT)
		snprintf(v->reply, sizeof(v->reply),
		         "550 5.7.1 Message rejected by content filter");
	else if (a == MILTER_TEMPFAIL)
		snprintf(v->reply, sizeof(v->reply),
		         "451 4.7.1 Deferred by content filter, try again later");
}

/* Queues v for the defer event; the callback never runs inside a step call. */
static void deliver(struct milter_client *mc, const struct milter_verdict *v)
{
	mc->v = *v;
	mc->have_verdict = true;
	event_active(mc->defer, EV_WRITE, 0);
}

static void deliver_action(struct milter_client *mc, enum milter_action a)
{
	struct milter_verdict v;
	verdict_set(&v, a, NULL);
	deliver(mc, &v);
}

static void default_verdict(struct milter_client *mc, struct milter_verdict *v)
{
	verdict_set(v, mc->default_action, NULL);
	if (mc->default_action == MILTER_TEMPFAIL) /* not the milter's word: it is not there */
		snprintf(v->reply, sizeof(v->reply),
		         "451 4.7.1 Content filter unavailable, try again later");
	v->failed = true;
}

static void fail(struct milter_client *mc, const char *why)
{
	char q[256];
	log_warn("event=milter_fail milter=%s step=%s reason=%s action=%s qid=%s",
	         log_quote(mc->spec, strlen(mc->spec), q, sizeof(q)), step_names[mc->step], why,
	         milter_action_name(mc->default_action), mc->qid ? mc->qid : "-");
	bool waiting =
	    mc->state == MC_WAIT || mc->state == MC_CONNECTING || mc->state == MC_NEGOTIATE;
	mc->state = MC_DEAD;
	if (mc->bev) {
		bufferevent_free(mc->bev);
		mc->bev = NULL;
	}
	evtimer_del(mc->timer);
	if (waiting) {
		struct milter_verdict v;
		default_verdict(mc, &v);
		deliver(mc, &v);
	}
}

/* The step's reply came (or none was due): verdict, stickiness, next state. */
static void step_done(struct milter_client *mc, struct milter_verdict *v)
{
	evtimer_del(mc->timer);
	mc->state = MC_READY;
	bool final = v->action != MILTER_CONTINUE;
	if (mc->step == ST_RCPT && (v->action == MILTER_REJECT || v->action == MILTER_TEMPFAIL))
		final = false; /* refuses this recipient only */
	if (final && (mc->step == ST_CONNECT || mc->step == ST_HELO)) {
		mc->session_final = true;
		mc->session_v = *v;
	} else if (final && mc->step != ST_EOM) {
		mc->msg_final = true;
		mc->msg_v = *v;
	}
	if (mc->step == ST_EOM) {
		v->mods = mc->mods;
		v->n_mods = mc->n_mods;
		v->quarantine = mc->quarantine;
		snprintf(v->quarantine_reason, sizeof(v->quarantine_reason), "%s",
		         mc->quarantine_reason);
		mc->in_msg = false;
		mc->msg_final = false;
		mc->body_skip = false;
	}
	deliver(mc, v);
}

/* ---- sending --------------------------------------------------------------- */

static void arm(struct milter_client *mc, uint32_t ms)
{
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
	evtimer_add(mc->timer, &tv);
}

static int flush_out(struct milter_client *mc)
{
	int rc = TERN_OK;
	if (mc->out.len && bufferevent_write(mc->bev, mc->out.data, mc->out.len) != 0)
		rc = TERN_ENOMEM;
	tbuf_reset(&mc->out);
	return rc;
}

static void process_input(struct milter_client *mc);

/* Sends what is in mc->out; waits for a reply unless nr says none is due. */
static void send_and_wait(struct milter_client *mc, bool nr)
{
	if (flush_out(mc) != TERN_OK) {
		fail(mc, "nomem");
		return;
	}
	if (nr) {
		struct milter_verdict v;
		verdict_set(&v, MILTER_CONTINUE, NULL);
		mc->state = MC_WAIT;
		step_done(mc, &v);
		return;
	}
	mc->state = MC_WAIT;
	arm(mc, mc->step == ST_EOM || mc->step == ST_BODY ? mc->eom_ms : mc->command_ms);
	process_input(mc);
}

static int mx_index(uint8_t cmd)
{
	switch (cmd) {
	case MILTER_CMD_CONNECT:
		return 0;
	case MILTER_CMD_HELO:
		return 1;
	case MILTER_CMD_MAIL:
		return 2;
	case MILTER_CMD_RCPT:
		return 3;
	case MILTER_CMD_BODYEOB:
		return 4;
	}
	return -1;
}

/* The MACRO packet for cmd: the client's own (n/v, k of them, NULL values
 * left out), then the session's (milter_set_macros). */
static int add_macros(struct milter_client *mc, uint8_t cmd, const char *const *n,
                      const char *const *v, size_t k)
{
	const char *nn[4 + MX_MAX], *vv[4 + MX_MAX];
	size_t m = 0;
	for (size_t i = 0; i < k && m < 4; i++)
		if (v[i]) {
			nn[m] = n[i];
			vv[m] = v[i];
			m++;
		}
	int x = mx_index(cmd);
	for (size_t i = 0; x >= 0 && i < mc->n_xm[x]; i++) {
		nn[m] = mc->xm_names[x][i];
		vv[m] = mc->xm_values[x][i];
		m++;
	}
	if (m == 0)
		return TERN_OK;
	return milter_enc_macros(&mc->out, cmd, nn, vv, m);
}

static void xm_clear(struct milter_client *mc, int x)
{
	for (size_t i = 0; i < mc->n_xm[x]; i++) {
		free(mc->xm_names[x][i]);
		free(mc->xm_values[x][i]);
	}
	mc->n_xm[x] = 0;
}

int milter_set_macros(struct milter_client *mc, uint8_t for_cmd, const char *const *names,
                      const char *const *values, size_t n)
{
	int x = mx_index(for_cmd);
	if (x < 0)
		return TERN_EINVAL;
	xm_clear(mc, x);
	for (size_t i = 0; i < n; i++) {
		if (!values[i])
			continue;
		if (mc->n_xm[x] == MX_MAX)
			return TERN_ELIMIT;
		char *a = tern_strdup(names[i]), *b = tern_strdup(values[i]);
		if (!a || !b) {
			free(a);
			free(b);
			return TERN_ENOMEM;
		}
		mc->xm_names[x][mc->n_xm[x]] = a;
		mc->xm_values[x][mc->n_xm[x]] = b;
		mc->n_xm[x]++;
	}
	return TERN_OK;
}

static void send_connect(struct milter_client *mc)
{
	mc->step = ST_CONNECT;
	if (mc->protocol & MILTER_P_NOCONNECT) {
		struct milter_verdict v;
		verdict_set(&v, MILTER_CONTINUE, NULL);
		mc->state = MC_WAIT;
		step_done(mc, &v);
		return;
	}
	const char *n[] = {"j", "{daemon_name}", "_"};
	const char *vals[] = {mc->myhostname, "tern", mc->client_name};
	int rc = add_macros(mc, MILTER_CMD_CONNECT, n, vals, 3);
	if (rc == TERN_OK)
		rc = milter_enc_connect(&mc->out, mc->client_name,
		                        mc->have_client_sa ? (struct sockaddr *)&mc->client_sa
		                                           : NULL);
	if (rc != TERN_OK) {
		fail(mc, "encode");
		return;
	}
	send_and_wait(mc, mc->protocol & MILTER_P_NR_CONN);
}

/* Sends the next body chunk, or reports the body step done. Without a reply
 * per chunk (NR_BODY) every chunk is handed to the bufferevent at once, one
 * packet at a time, so mc->out never holds more than a chunk. */
static void body_next(struct milter_client *mc)
{
	while (mc->body_off < mc->body.len) {
		size_t n = mc->body.len - mc->body_off;
		if (n > MILTER_CHUNK_MAX)
			n = MILTER_CHUNK_MAX;
		int rc =
		    milter_enc_packet(&mc->out, MILTER_CMD_BODY, mc->body.data + mc->body_off, n);
		mc->body_off += n;
		if (rc != TERN_OK) {
			fail(mc, "encode");
			return;
		}
		if (!(mc->protocol & MILTER_P_NR_BODY)) {
			send_and_wait(mc, false);
			return;
		}
		if (flush_out(mc) != TERN_OK) {
			fail(mc, "nomem");
			return;
		}
	}
	tbuf_free(&mc->body); /* the copy lives while it is sent, not for the session */
	mc->body_off = 0;
	send_and_wait(mc, true);
}

/* ---- receiving ------------------------------------------------------------- */

/* "550 text" -> "550 5.7.1 text"; the first line only; controls -> space. */
static void reply_line(const struct milter_reply *r, char *out, size_t outlen)
{
	size_t n = r->value_len;
	const char *s = r->value;
	const char *eol = memchr(s, '\r', n);
	const char *lf = memchr(s, '\n', n);
	if (lf && (!eol || lf < eol))
		eol = lf;
	if (eol)
		n = (size_t)(eol - s);
	const char *text = s + 4;
	size_t tn = n > 4 ? n - 4 : 0;
	/* An enhanced code "C.N.N" whose class matches the reply's? */
	bool has_enh = tn >= 5 && text[0] == s[0] && text[1] == '.';
	char tmp[MILTER_REPLY_TEXT_MAX + 1];
	if (tn > MILTER_REPLY_TEXT_MAX)
		tn = MILTER_REPLY_TEXT_MAX;
	for (size_t i = 0; i < tn; i++) {
		unsigned char c = (unsigned char)text[i];
		tmp[i] = (c < 32 || c == 127) ? ' ' : (char)c;
	}
	tmp[tn] = '\0';
	if (has_enh)
		snprintf(out, outlen, "%.3s %s", s, tmp);
	else
		snprintf(out, outlen, "%.3s %c.7.1 %s", s, s[0],
		         tn ? tmp : "Refused by content filter");
}

static int add_mod(struct milter_client *mc, const struct milter_reply *r)
{
	if (mc->n_mods >= MODS_MAX)
		return TERN_ELIMIT;
	struct milter_mod *v = realloc(mc->mods, (mc->n_mods + 1) * sizeof(*v));
	if (!v)
		return TERN_ENOMEM;
	mc->mods = v;
	struct milter_mod *m = &v[mc->n_mods];
	memset(m, 0, sizeof(*m));
	if (r->kind == MILTER_R_ADDHEADER)
		m->kind = MILTER_MOD_ADD;
	else if (r->kind == MILTER_R_INSHEADER)
		m->kind = MILTER_MOD_INSERT;
	else
		m->kind = r->value_len ? MILTER_MOD_CHANGE : MILTER_MOD_DELETE;
	m->index = r->index;
	if (r->kind == MILTER_R_CHGHEADER && m->index == 0)
		m->index = 1; /* sendmail reads index 0 as the first */
	m->name = tern_strndup(r->name, r->name_len);
	/* Line ends as CRLF: the codec allowed only "\r\n" or "\n" before WSP. */
	struct tbuf b = TBUF_INIT(2 * MILTER_HDR_VALUE_MAX + 1);
	int rc = TERN_OK;
	for (size_t i = 0; rc == TERN_OK && i < r->value_len; i++) {
		if (r->value[i] == '\r')
			continue;
		if (r->value[i] == '\n')
			rc = tbuf_append(&b, "\r\n", 2);
		else
			rc = tbuf_append(&b, &r->value[i], 1);
	}
	m->value = tern_strdup(rc == TERN_OK && b.data ? b.data : "");
	tbuf_free(&b);
	mc->n_mods++;
	if (!m->name || !m->value)
		return TERN_ENOMEM;
	return TERN_OK;
}

static void on_optneg(struct milter_client *mc, const struct milter_reply *r)
{
	if (r->kind != MILTER_R_OPTNEG || r->version < 2 || r->version > MILTER_VERSION) {
		fail(mc, "negotiation");
		return;
	}
	/* Actions tern did not offer are masked off; using one later is an
	 * error. Protocol bits tern did not offer would change the dialogue
	 * in ways tern does not speak. */
	mc->actions = r->actions & MILTER_OFFER_ACTIONS;
	if (r->protocol & ~(MILTER_OFFER_PROTOCOL | MILTER_P_HDR_LEADSPC)) {
		fail(mc, "negotiation_protocol");
		return;
	}
	mc->protocol = r->protocol;
	evtimer_del(mc->timer);
	send_connect(mc);
}

/* One reply for the outstanding step. Returns true when the step is over. */
static void on_reply(struct milter_client *mc, const struct milter_reply *r)
{
	struct milter_verdict v;
	switch (r->kind) {
	case MILTER_R_PROGRESS:
		arm(mc, mc->step == ST_EOM ? mc->eom_ms : mc->command_ms);
		return;
	case MILTER_R_CONTINUE:
		if (mc->step == ST_BODY && mc->body_off < mc->body.len) {
			body_next(mc);
			return;
		}
		verdict_set(&v, MILTER_CONTINUE, NULL);
		break;
	case MILTER_R_SKIP:
		if (mc->step != ST_BODY || !(mc->protocol & MILTER_P_SKIP)) {
			fail(mc, "unexpected_skip");
			return;
		}
		mc->body_skip = true;
		tbuf_free(&mc->body);
		mc->body_off = 0;
		verdict_set(&v, MILTER_CONTINUE, NULL);
		break;
	case MILTER_R_ACCEPT:
		verdict_set(&v, MILTER_ACCEPT, NULL);
		break;
	case MILTER_R_REJECT:
		verdict_set(&v, MILTER_REJECT, NULL);
		break;
	case MILTER_R_TEMPFAIL:
		verdict_set(&v, MILTER_TEMPFAIL, NULL);
		break;
	case MILTER_R_DISCARD:
		verdict_set(&v, MILTER_DISCARD, NULL);
		break;
	case MILTER_R_REPLYCODE: {
		char line[MILTER_REPLY_TEXT_MAX + 16];
		reply_line(r, line, sizeof(line));
		verdict_set(&v, r->code >= 500 ? MILTER_REJECT : MILTER_TEMPFAIL, line);
		break;
	}
	case MILTER_R_ADDHEADER:
	case MILTER_R_INSHEADER:
	case MILTER_R_CHGHEADER: {
		uint32_t need =
		    r->kind == MILTER_R_ADDHEADER ? MILTER_ACT_ADDHDRS : MILTER_ACT_CHGHDRS;
		if (r->kind == MILTER_R_INSHEADER)
			need = MILTER_ACT_ADDHDRS;
		if (mc->step != ST_EOM || !(mc->actions & need)) {
			fail(mc, "unexpected_modification");
			return;
		}
		int rc = add_mod(mc, r);
		if (rc != TERN_OK)
			fail(mc, rc == TERN_ELIMIT ? "too_many_modifications" : "nomem");
		return;
	}
	case MILTER_R_QUARANTINE:
		if (mc->step != ST_EOM || !(mc->actions & MILTER_ACT_QUARANTINE)) {
			fail(mc, "unexpected_quarantine");
			return;
		}
		mc->quarantine = true;
		{
			/* Kept printable: it may reach a log or a header. */
			size_t n = r->value_len < sizeof(mc->quarantine_reason) - 1
			               ? r->value_len
			               : sizeof(mc->quarantine_reason) - 1;
			for (size_t i = 0; i < n; i++) {
				unsigned char c = (unsigned char)r->value[i];
				mc->quarantine_reason[i] = (c < 32 || c == 127) ? ' ' : (char)c;
			}
			mc->quarantine_reason[n] = '\0';
		}
		return;
	case MILTER_R_SHUTDOWN:
		fail(mc, "milter_shutdown");
		return;
	default:
		fail(mc, "unexpected_reply");
		return;
	}
	step_done(mc, &v);
}

static void process_input(struct milter_client *mc)
{
	while (mc->bev && (mc->state == MC_WAIT || mc->state == MC_NEGOTIATE) &&
	       !mc->have_verdict) {
		struct evbuffer *in = bufferevent_get_input(mc->bev);
		size_t avail = evbuffer_get_length(in);
		if (avail < 4)
			return;
		uint8_t hdr[4];
		evbuffer_copyout(in, hdr, 4);
		uint8_t cmd;
		const uint8_t *data;
		size_t dlen, used;
		if (milter_frame_parse(hdr, 4, MILTER_PACKET_MAX, &cmd, &data, &dlen, &used) ==
		    MILTER_FRAME_BAD) {
			fail(mc, "bad_packet_length");
			return;
		}
		uint32_t len = ((uint32_t)hdr[0] << 24) | ((uint32_t)hdr[1] << 16) |
		               ((uint32_t)hdr[2] << 8) | hdr[3];
		if (avail < 4 + (size_t)len)
			return;
		tbuf_reset(&mc->pkt);
		if (tbuf_reserve(&mc->pkt, 4 + (size_t)len) != TERN_OK) {
			fail(mc, "nomem");
			return;
		}
		/* Copied out and drained first: handling a reply may send the
		 * next command and look at the input again. */
		evbuffer_remove(in, mc->pkt.data, 4 + (size_t)len);
		mc->pkt.len = 4 + (size_t)len;
		const uint8_t *p = (const uint8_t *)mc->pkt.data;
		if (milter_frame_parse(p, 4 + len, MILTER_PACKET_MAX, &cmd, &data, &dlen, &used) !=
		    MILTER_FRAME_OK) {
			fail(mc, "bad_packet");
			return;
		}
		struct milter_reply r;
		if (milter_reply_decode(cmd, data, dlen, &r) != TERN_OK) {
			fail(mc, "malformed_reply");
			return;
		}
		if (mc->state == MC_NEGOTIATE)
			on_optneg(mc, &r);
		else
			on_reply(mc, &r);
	}
	if (mc->bev && mc->state == MC_READY &&
	    evbuffer_get_length(bufferevent_get_input(mc->bev)) > 0 && !mc->have_verdict)
		fail(mc, "unsolicited_reply");
}

/* ---- events ---------------------------------------------------------------- */

static void on_read(struct bufferevent *bev, void *arg)
{
	process_input(arg);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct milter_client *mc = arg;
	if (what & BEV_EVENT_CONNECTED) {
		mc->state = MC_NEGOTIATE;
		if (milter_enc_optneg(&mc->out, MILTER_VERSION, MILTER_OFFER_ACTIONS,
		                      MILTER_OFFER_PROTOCOL) != TERN_OK ||
		    flush_out(mc) != TERN_OK) {
			fail(mc, "nomem");
			return;
		}
		arm(mc, mc->command_ms);
		return;
	}
	if (what & BEV_EVENT_EOF)
		fail(mc, "connection_closed");
	else if (what & BEV_EVENT_ERROR)
		fail(mc, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
	fail(arg, "timeout");
}

static void on_defer(evutil_socket_t fd, short what, void *arg)
{
	struct milter_client *mc = arg;
	if (!mc->have_verdict)
		return;
	mc->have_verdict = false;
	struct milter_verdict v = mc->v;
	mc->cb(mc->cb_arg, &v); /* may free mc or start the next step */
}

/* ---- public ---------------------------------------------------------------- */

struct milter_client *milter_client_new(struct event_base *base, const struct milter_opts *o,
                                        milter_step_cb cb, void *arg)
{
	struct milter_client *mc = calloc(1, sizeof(*mc));
	if (!mc)
		return NULL;
	mc->base = base;
	mc->spec = tern_strdup(o->spec);
	mc->myhostname = o->myhostname ? tern_strdup(o->myhostname) : NULL;
	mc->qid = o->queue_id ? tern_strdup(o->queue_id) : NULL;
	mc->default_action = o->default_action;
	mc->connect_ms = o->connect_timeout_ms ? o->connect_timeout_ms : 30000;
	mc->command_ms = o->command_timeout_ms ? o->command_timeout_ms : 30000;
	mc->eom_ms = o->eom_timeout_ms ? o->eom_timeout_ms : 300000;
	mc->cb = cb;
	mc->cb_arg = arg;
	tbuf_init(&mc->out, OUT_MAX);
	tbuf_init(&mc->pkt, MILTER_PACKET_MAX + 8);
	tbuf_init(&mc->body, SIZE_MAX / 2);
	mc->timer = evtimer_new(base, on_timeout, mc);
	mc->defer = event_new(base, -1, 0, on_defer, mc);
	if (!mc->spec || !mc->timer || !mc->defer || (o->myhostname && !mc->myhostname) ||
	    (o->queue_id && !mc->qid)) {
		milter_client_free(mc);
		return NULL;
	}
	return mc;
}

void milter_client_free(struct milter_client *mc)
{
	if (!mc)
		return;
	if (mc->bev && (mc->state == MC_READY || mc->state == MC_WAIT)) {
		/* QUIT needs no reply; whatever is buffered is best effort, as
		 * the socket closes with the bufferevent. */
		tbuf_reset(&mc->out);
		if (milter_enc_packet(&mc->out, MILTER_CMD_QUIT, NULL, 0) == TERN_OK) {
			evutil_socket_t fd = bufferevent_getfd(mc->bev);
			struct evbuffer *ob = bufferevent_get_output(mc->bev);
			if (evbuffer_get_length(ob) == 0 && fd >= 0) {
				ssize_t w = send(fd, mc->out.data, mc->out.len,
				                 MSG_NOSIGNAL | MSG_DONTWAIT);
				(void)w;
			}
		}
	}
	if (mc->bev)
		bufferevent_free(mc->bev);
	if (mc->timer)
		event_free(mc->timer);
	if (mc->defer)
		event_free(mc->defer);
	mods_clear(mc);
	for (int x = 0; x < MX_STEPS; x++)
		xm_clear(mc, x);
	tbuf_free(&mc->out);
	tbuf_free(&mc->pkt);
	tbuf_free(&mc->body);
	free(mc->spec);
	free(mc->myhostname);
	free(mc->qid);
	free(mc->client_name);
	free(mc);
}

void milter_set_queue_id(struct milter_client *mc, const char *qid)
{
	char *q = tern_strdup(qid);
	if (!q)
		return;
	free(mc->qid);
	mc->qid = q;
}

/*
 * Common start of a step. Returns true when the caller should send; false
 * when the verdict is already queued (dead, sticky, or a step the milter
 * asked not to see).
 */
static bool step_begin(struct milter_client *mc, enum mc_step st, uint32_t skip_flag)
{
	TERN_BUG_ON(mc->have_verdict || mc->state == MC_WAIT || mc->state == MC_CONNECTING ||
	            mc->state == MC_NEGOTIATE);
	mc->step = st;
	tbuf_reset(&mc->out);
	if (mc->state == MC_IDLE) {
		/* A step before connect: the session skipped it; nothing to ask. */
		deliver_action(mc, MILTER_CONTINUE);
		return false;
	}
	if (mc->state == MC_DEAD) {
		struct milter_verdict v;
		default_verdict(mc, &v);
		deliver(mc, &v);
		return false;
	}
	if (mc->session_final) {
		deliver(mc, &mc->session_v);
		return false;
	}
	if (st == ST_MAIL) {
		mods_clear(mc);
		mc->msg_final = false;
		mc->body_skip = false;
		mc->in_msg = true;
	} else if (mc->msg_final) {
		struct milter_verdict v = mc->msg_v;
		if (st == ST_EOM) {
			mc->in_msg = false;
			mc->msg_final = false;
		}
		deliver(mc, &v);
		return false;
	}
	if (st == ST_EOM)
		mods_clear(mc);
	if (skip_flag && (mc->protocol & skip_flag)) {
		deliver_action(mc, MILTER_CONTINUE);
		return false;
	}
	return true;
}

void milter_step_connect(struct milter_client *mc, const char *client_name,
                         const struct sockaddr *sa)
{
	TERN_BUG_ON(mc->state != MC_IDLE);
	mc->step = ST_CONNECT;
	mc->client_name = tern_strdup(client_name ? client_name : "unknown");
	if (sa) {
		size_t l = sa->sa_family == AF_INET    ? sizeof(struct sockaddr_in)
		           : sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
		           : sa->sa_family == AF_UNIX  ? sizeof(struct sockaddr_un)
		                                       : 0;
		if (l) {
			memcpy(&mc->client_sa, sa, l);
			mc->have_client_sa = true;
		}
	}
	struct sockaddr_storage ss;
	int sslen;
	mc->state = MC_CONNECTING;
	if (!mc->client_name) {
		fail(mc, "nomem");
		return;
	}
	if (spec_resolve(mc->spec, &ss, &sslen) != TERN_OK) {
		fail(mc, "bad_address");
		return;
	}
	mc->bev = bufferevent_socket_new(mc->base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (!mc->bev) {
		fail(mc, "nomem");
		return;
	}
	bufferevent_setcb(mc->bev, on_read, NULL, on_event, mc);
	bufferevent_enable(mc->bev, EV_READ | EV_WRITE);
	arm(mc, mc->connect_ms);
	if (bufferevent_socket_connect(mc->bev, (struct sockaddr *)&ss, sslen) != 0)
		fail(mc, "connect_failed");
}

void milter_step_helo(struct milter_client *mc, const char *helo)
{
	if (!step_begin(mc, ST_HELO, MILTER_P_NOHELO))
		return;
	if (add_macros(mc, MILTER_CMD_HELO, NULL, NULL, 0) != TERN_OK ||
	    milter_enc_helo(&mc->out, helo) != TERN_OK) {
		fail(mc, "encode");
		return;
	}
	send_and_wait(mc, mc->protocol & MILTER_P_NR_HELO);
}

static void envelope(struct milter_client *mc, enum mc_step st, const char *addr,
                     const char *const *args, size_t nargs)
{
	uint32_t skip = st == ST_MAIL ? MILTER_P_NOMAIL : MILTER_P_NORCPT;
	uint32_t nr = st == ST_MAIL ? MILTER_P_NR_MAIL : MILTER_P_NR_RCPT;
	uint8_t cmd = st == ST_MAIL ? MILTER_CMD_MAIL : MILTER_CMD_RCPT;
	if (!step_begin(mc, st, skip))
		return;
	const char *n[] = {st == ST_MAIL ? "{mail_addr}" : "{rcpt_addr}", "i"};
	const char *v[] = {addr, st == ST_MAIL ? mc->qid : NULL};
	int rc = add_macros(mc, cmd, n, v, 2);
	if (rc == TERN_OK)
		rc = milter_enc_envelope(&mc->out, cmd, addr, args, nargs);
	if (rc != TERN_OK) {
		fail(mc, "encode");
		return;
	}
	send_and_wait(mc, mc->protocol & nr);
}

void milter_step_mail(struct milter_client *mc, const char *from, const char *const *args,
                      size_t nargs)
{
	envelope(mc, ST_MAIL, from, args, nargs);
}

void milter_step_rcpt(struct milter_client *mc, const char *rcpt, const char *const *args,
                      size_t nargs)
{
	envelope(mc, ST_RCPT, rcpt, args, nargs);
}

void milter_step_data(struct milter_client *mc)
{
	if (!step_begin(mc, ST_DATA, MILTER_P_NODATA))
		return;
	if (milter_enc_packet(&mc->out, MILTER_CMD_DATA, NULL, 0) != TERN_OK) {
		fail(mc, "encode");
		return;
	}
	send_and_wait(mc, mc->protocol & MILTER_P_NR_DATA);
}

void milter_step_header(struct milter_client *mc, const char *name, const char *value)
{
	if (!step_begin(mc, ST_HEADER, MILTER_P_NOHDRS))
		return;
	/* Sendmail and Postfix hand milters the value without the space after
	 * the colon (unless HDR_LEADSPC) and with LF line ends. */
	if (!(mc->protocol & MILTER_P_HDR_LEADSPC))
		while (*value == ' ' || *value == '\t')
			value++;
	struct tbuf v = TBUF_INIT(MILTER_PACKET_MAX);
	int rc = TERN_OK;
	for (const char *p = value; rc == TERN_OK && *p; p++)
		if (!(p[0] == '\r' && p[1] == '\n'))
			rc = tbuf_append(&v, p, 1);
	if (rc == TERN_OK)
		rc = tbuf_append(&v, "", 0);
	if (rc == TERN_OK)
		rc = milter_enc_header(&mc->out, name, v.data ? v.data : "");
	tbuf_free(&v);
	if (rc != TERN_OK) {
		fail(mc, "encode");
		return;
	}
	send_and_wait(mc, mc->protocol & MILTER_P_NR_HDR);
}

void milter_step_eoh(struct milter_client *mc)
{
	if (!step_begin(mc, ST_EOH, MILTER_P_NOEOH))
		return;
	if (milter_enc_packet(&mc->out, MILTER_CMD_EOH, NULL, 0) != TERN_OK) {
		fail(mc, "encode");
		return;
	}
	send_and_wait(mc, mc->protocol & MILTER_P_NR_EOH);
}

void milter_step_body(struct milter_client *mc, const void *data, size_t len)
{
	if (!step_begin(mc, ST_BODY, MILTER_P_NOBODY))
		return;
	if (mc->body_skip || len == 0) {
		deliver_action(mc, MILTER_CONTINUE);
		return;
	}
	tbuf_reset(&mc->body);
	mc->body_off = 0;
	if (tbuf_append(&mc->body, data, len) != TERN_OK) {
		fail(mc, "nomem");
		return;
	}
	body_next(mc);
}

void milter_step_eom(struct milter_client *mc)
{
	if (!step_begin(mc, ST_EOM, 0))
		return;
	const char *n[] = {"i"};
	const char *v[] = {mc->qid};
	if (add_macros(mc, MILTER_CMD_BODYEOB, n, v, 1) != TERN_OK ||
	    milter_enc_packet(&mc->out, MILTER_CMD_BODYEOB, NULL, 0) != TERN_OK) {
		fail(mc, "encode");
		return;
	}
	send_and_wait(mc, false);
}

void milter_step_abort(struct milter_client *mc)
{
	TERN_BUG_ON(mc->have_verdict || mc->state == MC_WAIT || mc->state == MC_CONNECTING ||
	            mc->state == MC_NEGOTIATE);
	mc->step = ST_ABORT;
	mc->msg_final = false;
	mc->body_skip = false;
	mods_clear(mc);
	tbuf_reset(&mc->out);
	if (mc->in_msg && mc->bev && mc->state == MC_READY) {
		/* ABORT has no reply. A failure here is noticed by the next step. */
		if (milter_enc_packet(&mc->out, MILTER_CMD_ABORT, NULL, 0) != TERN_OK ||
		    flush_out(mc) != TERN_OK)
			fail(mc, "nomem");
	}
	mc->in_msg = false;
	deliver_action(mc, MILTER_CONTINUE);
}
