/*
 * verify.c — what an mx session learns about the mail it receives: SPF from
 * MAIL FROM, DKIM over the message at its end, DMARC from both, and the
 * trace fields that record them (Authentication-Results, Received-SPF),
 * plus the verdict the session acts on (550, 451, the Junk folder). ARC
 * (RFC 8617) runs beside DKIM and seals what we forward (verify_arc.c).
 *
 * Owns: one struct smtp_verify per mail transaction (server.c keeps it in
 * its struct tx and frees it with the transaction, which is what cancels
 * the checks on RSET, a new MAIL, QUIT and disconnect); the order of the
 * checks; the message header rewrite (forged results removed, ours added).
 * The checks themselves are policy/spf.h, policy/dkim.h and policy/dmarc.h.
 *
 * Must never: block the event loop (DNS is asynchronous, a large body is
 * hashed on the thread pool), call the session back from inside one of its
 * own calls, or let a sender's bytes reach a header or a log unquoted (the
 * policy modules' writers quote; logs go through log_quote).
 */
#include "smtp/smtp.h"

#include <event2/event.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <time.h>

#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/log.h"
#include "core/loop.h"
#include "policy/arc.h"
#include "policy/dkim.h"
#include "policy/dmarc.h"
#include "policy/dmarc_report.h"
#include "policy/policy.h"
#include "policy/spf.h"
#include "smtp/verify_arc.h"

/* Bodies up to this size are hashed on the loop: less than a millisecond of
 * SHA-256, cheaper than a round trip through the pool. */
#define BODY_ON_LOOP_MAX (256u * 1024u)

struct smtp_verify {
	const struct tern_config *conf; /* the session's; outlives the transaction */
	struct worker *w;
	struct event_base *base;
	struct dns_resolver *res; /* NULL: every lookup is a temporary error */
	struct pool *pool;        /* NULL: large bodies are hashed on the loop too */
	char sess[48];
	char ip[64];         /* the client's address, for DMARC reports */
	char id[32];         /* queue id, once the message has one */
	struct event *kick;  /* runs step() or the callback outside our callers */
	struct event *timer; /* DMARC's deadline */

	/* SPF: started at MAIL */
	bool spf_on;
	struct spf_request req; /* its strings are the copies below */
	char *helo, *mailfrom;
	struct spf_async *spf; /* while running */
	bool spf_done;
	struct spf_outcome spf_helo, spf_mailfrom;

	/* end of data */
	bool started, complete, failed;
	void (*done)(void *arg);
	void *arg;
	const char *hdr; /* the client's header block, in the session's buffer */
	size_t hdr_len;
	const char *body;
	size_t body_len;
	bool mapped; /* SPILL: msg is a file mapping (smtp_verify_mapped) */

	/* DKIM */
	struct dkim_verify *dkim;
	struct dkim_dns *dkim_dns;
	bool dkim_keys_pending, body_job;
	bool orphan;                 /* freed by its owner while the body job ran */
	struct dkim_body *bodies[2]; /* what the body pass feeds: DKIM's, ARC's */
	struct tbuf kept;            /* then: the message bytes the job still reads */
	struct dmarc_dkim *dk;
	size_t n_dk;

	/* DMARC */
	struct dmarc_check *dmarc;
	bool dmarc_ran;
	struct dmarc_from from;
	struct dmarc_outcome dmarc_out;
	struct dmarc_decision decision;

	/* ARC (verify_arc.c): validated beside DKIM, sealed when forwarding */
	struct smtp_arc *arc;
	bool arc_report;   /* arc= goes into our A-R (auth_checks.arc) */
	bool forward;      /* a recipient is not local: the message leaves us */
	bool built;        /* decision made and prefix built (once) */
	bool seal_started; /* the seal job ran or runs */
	char remote_ip[64];
	char override[DKIM_DOMAIN_MAX + 96]; /* why DMARC's failure was not acted on, or "" */
	size_t ar_len; /* our Authentication-Results: the first bytes of prefix */

	struct tbuf prefix; /* the fields to prepend */
};

static enum dmarc_spf_result spf_to_dmarc(enum spf_result r)
{
	switch (r) {
	case SPF_NEUTRAL:
		return DMARC_SPF_NEUTRAL;
	case SPF_PASS:
		return DMARC_SPF_PASS;
	case SPF_FAIL:
		return DMARC_SPF_FAIL;
	case SPF_SOFTFAIL:
		return DMARC_SPF_SOFTFAIL;
	case SPF_TEMPERROR:
		return DMARC_SPF_TEMPERROR;
	case SPF_PERMERROR:
		return DMARC_SPF_PERMERROR;
	default:
		return DMARC_SPF_NONE;
	}
}

static enum dmarc_dkim_result dkim_to_dmarc(const struct dkim_result *r)
{
	switch (r->status) {
	case DKIM_PASS:
		return DMARC_DKIM_PASS; /* a t=y key: see dkim_collect */
	case DKIM_FAIL:
		return DMARC_DKIM_FAIL;
	case DKIM_NEUTRAL:
		return DMARC_DKIM_NEUTRAL;
	case DKIM_TEMPERROR:
		return DMARC_DKIM_TEMPERROR;
	case DKIM_PERMERROR:
		return DMARC_DKIM_PERMERROR;
	default:
		return DMARC_DKIM_POLICY;
	}
}

static void step(struct smtp_verify *v);

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_verify *v = arg;
	if (v->complete) {
		v->complete = false;
		v->done(v->arg); /* may free v */
		return;
	}
	step(v);
}

/* ------------------------------------------------------------- SPF */

static void spf_done(void *arg, const struct spf_verdict *r)
{
	struct smtp_verify *v = arg;
	v->spf = NULL; /* freed by spf_async when we return */
	v->spf_helo = r->helo;
	v->spf_mailfrom = r->mailfrom;
	v->spf_done = true;
	step(v);
}

static void spf_fail_now(struct smtp_verify *v, const char *why)
{
	v->spf_mailfrom.result = v->spf_helo.result = SPF_TEMPERROR;
	v->spf_mailfrom.identity = SPF_ID_MAILFROM;
	v->spf_helo.identity = SPF_ID_HELO;
	/* the domains the checks would have been for (RFC 7208 §2.3, §2.4) */
	const char *at = strrchr(v->mailfrom, '@');
	tern_strlcpy(v->spf_mailfrom.domain, at ? at + 1 : v->helo, sizeof(v->spf_mailfrom.domain));
	tern_strlcpy(v->spf_helo.domain, v->helo, sizeof(v->spf_helo.domain));
	tern_strlcpy(v->spf_mailfrom.problem, why, sizeof(v->spf_mailfrom.problem));
	tern_strlcpy(v->spf_helo.problem, why, sizeof(v->spf_helo.problem));
	v->spf_done = true;
}

struct smtp_verify *smtp_verify_start(const struct smtp_verify_params *p)
{
	const struct conf_auth_checks *ac = &p->conf->auth_checks;
	if (!p->mx || p->conf->capture_mode || p->authenticated)
		return NULL;
	if (!ac->spf && !ac->dkim && ac->dmarc == CONF_DMARC_OFF && !ac->arc &&
	    !p->conf->arc.seal_domain)
		return NULL;
	/* relay.networks: our own machines sending out; checked (and signed)
	 * as outbound mail, never as received mail */
	if (conf_in_relay_networks(p->conf, p->peer))
		return NULL;
	struct smtp_verify *v = calloc(1, sizeof(*v));
	if (!v)
		goto nomem;
	v->conf = p->conf;
	v->w = p->w;
	v->base = worker_base(p->w);
	v->res = policy_resolver(p->policy, p->w);
	v->pool = p->pool;
	tern_strlcpy(v->sess, p->sess, sizeof(v->sess));
	struct spf_ip pip;
	if (spf_ip_from_sockaddr(p->peer, &pip) == TERN_OK)
		inet_ntop(pip.family, pip.addr, v->ip, sizeof(v->ip));
	tbuf_init(&v->prefix, SMTP_VERIFY_HEADERS_MAX);
	tbuf_init(&v->kept, 0);
	v->kick = event_new(v->base, -1, 0, on_kick, v);
	v->helo = tern_strdup(p->helo ? p->helo : "");
	v->mailfrom = tern_strdup(p->sender ? p->sender : "");
	if (!v->kick || !v->helo || !v->mailfrom)
		goto nomem;
	v->req.helo = v->helo;
	v->req.mailfrom = v->mailfrom;
	v->req.receiver = p->conf->hostname;
	if (getnameinfo(p->peer,
	                ((const struct sockaddr *)p->peer)->sa_family == AF_INET6
	                    ? sizeof(struct sockaddr_in6)
	                    : sizeof(struct sockaddr_in),
	                v->remote_ip, sizeof(v->remote_ip), NULL, 0, NI_NUMERICHOST) != 0)
		v->remote_ip[0] = '\0';
	v->spf_on = ac->spf;
	if (!v->spf_on) {
		v->spf_done = true;
		return v;
	}
	if (spf_ip_from_sockaddr(p->peer, &v->req.ip) != TERN_OK) {
		spf_fail_now(v, "client address is not IPv4 or IPv6");
		return v;
	}
	if (!v->res) {
		spf_fail_now(v, "no DNS resolver");
		return v;
	}
	struct spf_limits lim;
	spf_limits_default(&lim);
	lim.timeout_ms = ac->timeout * 1000u;
	v->spf = spf_check_async(v->res, v->base, &v->req, &lim, spf_done, v);
	if (!v->spf)
		goto nomem;
	return v;
nomem:
	log_error("event=auth_checks sess=%s reason=out-of-memory action=skipped", p->sess);
	smtp_verify_free(v, NULL);
	return NULL;
}

/* ------------------------------------------------------------- DKIM */

static void dkim_keys_done(void *arg)
{
	struct smtp_verify *v = arg;
	v->dkim_keys_pending = false;
	step(v);
}

/* ------------------------------------------------------------- the body */

/* One pass over the body for every hash that reads it (DKIM's, ARC's
 * validation and seal), in pieces: a mapped body's pages are let go as the
 * pass leaves them, so memory stays at about a piece (dkim_body_feed). */
static void body_work(void *arg)
{
	struct smtp_verify *v = arg;
	dkim_body_feed(v->bodies, 2, v->body, v->body_len, v->mapped);
}

static void body_end(struct smtp_verify *v)
{
	if (v->dkim)
		dkim_verify_body_end(v->dkim);
	if (v->arc)
		smtp_arc_body_end(v->arc); /* may start ARC's job: step() sees it busy */
}

static void body_done(void *arg)
{
	struct smtp_verify *v = arg;
	v->body_job = false;
	if (v->orphan) {
		smtp_verify_free(v, NULL);
		return;
	}
	body_end(v);
	step(v);
}

/* After dkim_begin and arc_begin: the body to whoever needs it, on the pool
 * when large. */
static void body_begin(struct smtp_verify *v)
{
	v->bodies[0] = v->dkim ? dkim_verify_body(v->dkim) : NULL;
	v->bodies[1] = v->arc ? smtp_arc_body(v->arc) : NULL;
	if (!v->bodies[0] && !v->bodies[1]) {
		body_end(v); /* nothing reads the body */
		return;
	}
	if (v->body_len > BODY_ON_LOOP_MAX && v->pool &&
	    pool_submit(v->pool, body_work, v->w, body_done, v) == TERN_OK) {
		v->body_job = true;
		return;
	}
	body_work(v);
	body_end(v);
}

/* Collects the verifier's results into DMARC's and A-R's words. */
static void dkim_collect(struct smtp_verify *v)
{
	size_t n = dkim_verify_count(v->dkim);
	if (n == 0 || dkim_verify_finish(v->dkim) != TERN_OK)
		return;
	v->dk = calloc(n, sizeof(*v->dk));
	if (!v->dk)
		return; /* reported as no signature: logged by the verdict line */
	for (size_t i = 0; i < n; i++) {
		const struct dkim_result *r = dkim_verify_result(v->dkim, i);
		v->dk[i].result = dkim_to_dmarc(r);
		v->dk[i].domain = r->domain;
		v->dk[i].selector = r->selector;
		v->dk[i].signature = r->b;
		v->dk[i].reason = r->reason && r->reason[0] ? r->reason : NULL;
		/* t=y: the signer is testing, the message counts as unsigned for
		 * DMARC (RFC 6376 §3.6.1); A-R still says what we saw */
		v->dk[i].testing = r->status == DKIM_PASS && r->testing;
	}
	v->n_dk = n;
}

static void dkim_begin(struct smtp_verify *v)
{
	v->dkim = dkim_verify_new(NULL);
	if (!v->dkim)
		return;
	if (dkim_verify_headers(v->dkim, v->hdr, v->hdr_len) != TERN_OK ||
	    dkim_verify_count(v->dkim) == 0) {
		/* too big to look at, or nothing signed: no dkim result */
		dkim_verify_free(v->dkim);
		v->dkim = NULL;
		return;
	}
	unsigned ms = v->conf->auth_checks.timeout * 1000u;
	if (v->res)
		v->dkim_dns =
		    dkim_verify_dns_start(v->dkim, v->res, v->base, ms, dkim_keys_done, v);
	/* (the body goes in body_begin's pass, with ARC's) */
	if (v->dkim_dns)
		v->dkim_keys_pending = true;
	else
		dkim_verify_expire(v->dkim); /* no resolver: every key is temperror */
}

/* ------------------------------------------------------------- DMARC */

static void dmarc_done(void *arg, const struct dmarc_outcome *o)
{
	struct smtp_verify *v = arg;
	v->dmarc = NULL; /* freed by dmarc_async when we return */
	v->dmarc_out = *o;
	if (v->timer)
		event_del(v->timer);
	step(v);
}

/* DMARC could not ask DNS in time: a temporary error for each Author
 * Domain (dmarc_decide then defers or delivers as configured). */
static void dmarc_temperror(struct smtp_verify *v)
{
	struct dmarc_outcome *o = &v->dmarc_out;
	memset(o, 0, sizeof(*o));
	o->result = DMARC_RESULT_TEMPERROR;
	o->from = v->from.status;
	size_t n = v->from.n_domains < DMARC_AUTHORS_MAX ? v->from.n_domains : DMARC_AUTHORS_MAX;
	for (size_t i = 0; i < n; i++) {
		tern_strlcpy(o->author[i].domain, v->from.domain[i], sizeof(o->author[i].domain));
		o->author[i].result = DMARC_RESULT_TEMPERROR;
		o->author[i].why = "DNS lookups timed out";
	}
	o->n_authors = n;
}

/* DMARC's lookups passed auth_checks.timeout. */
static void dmarc_expired(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_verify *v = arg;
	dmarc_check_cancel(v->dmarc);
	v->dmarc = NULL;
	dmarc_temperror(v);
	step(v);
}

static void dmarc_begin(struct smtp_verify *v)
{
	v->dmarc_ran = true;
	dmarc_from_domains(v->hdr, v->hdr_len, &v->from);
	struct dmarc_input in = {
	    .from = &v->from,
	    .spf = {spf_to_dmarc(v->spf_mailfrom.result), DMARC_SPF_MAILFROM,
	            v->spf_on ? v->spf_mailfrom.domain : NULL},
	    .dkim = v->dk,
	    .n_dkim = v->n_dk,
	};
	if (!v->res) {
		dmarc_temperror(v);
		return;
	}
	v->dmarc = dmarc_check_async(v->res, v->base, &in, dmarc_done, v);
	if (!v->dmarc) {
		v->failed = true;
		return;
	}
	struct timeval tv = {(time_t)v->conf->auth_checks.timeout, 0};
	v->timer = evtimer_new(v->base, dmarc_expired, v);
	if (v->timer)
		evtimer_add(v->timer, &tv);
}

/* ------------------------------------------------------------- verdict */

static int build_prefix(struct smtp_verify *v)
{
	struct dmarc_spf spf[2];
	size_t n_spf = 0;
	if (v->spf_on) {
		bool null_path = v->mailfrom[0] == '\0';
		/* with a null reverse-path the MAIL FROM check is the HELO one */
		if (v->spf_helo.result != SPF_NONE || null_path)
			spf[n_spf++] = (struct dmarc_spf){spf_to_dmarc(v->spf_helo.result),
			                                  DMARC_SPF_HELO, v->spf_helo.domain};
		if (!null_path)
			spf[n_spf++] =
			    (struct dmarc_spf){spf_to_dmarc(v->spf_mailfrom.result),
			                       DMARC_SPF_MAILFROM, v->spf_mailfrom.domain};
	}
	bool dmarc_on = v->conf->auth_checks.dmarc != CONF_DMARC_OFF && v->dmarc_ran;
	struct authres_input ai = {
	    .authserv_id = v->conf->hostname,
	    .spf = spf,
	    .n_spf = n_spf,
	    .dkim = v->dk,
	    .n_dkim = v->n_dk,
	    .dmarc = dmarc_on ? &v->dmarc_out : NULL,
	};
	if (v->arc && v->arc_report) {
		const struct arc_result *r = smtp_arc_result(v->arc);
		ai.arc = r->cv == ARC_CV_PASS   ? AUTHRES_ARC_PASS
		         : r->cv == ARC_CV_FAIL ? AUTHRES_ARC_FAIL
		                                : AUTHRES_ARC_NONE;
		ai.arc_remote_ip = v->remote_ip[0] ? v->remote_ip : NULL;
		ai.arc_oldest_pass = r->oldest_pass;
	}
	ai.dmarc_override = v->override[0] ? v->override : NULL;
	int rc = authres_build(&ai, &v->prefix);
	v->ar_len = v->prefix.len;
	if (rc == TERN_OK && v->spf_on)
		rc = spf_received_spf(&v->req, &v->spf_mailfrom, &v->prefix);
	if (rc == TERN_OK && v->decision.header[0])
		rc = tbuf_append_str(&v->prefix, v->decision.header);
	return rc;
}

static const char *disposition_name(enum dmarc_disposition d)
{
	static const char *const n[] = {"deliver", "junk", "reject", "defer"};
	return (unsigned)d < 4 ? n[d] : "?";
}

static void log_verdict(struct smtp_verify *v)
{
	char dk[256] = "";
	size_t at = 0;
	for (size_t i = 0; i < v->n_dk && at < sizeof(dk) - 16; i++) {
		int k = snprintf(dk + at, sizeof(dk) - at, "%s%s", i ? "," : "",
		                 dkim_status_name(dkim_verify_result(v->dkim, i)->status));
		at += k > 0 ? (size_t)k : 0;
	}
	char from[DMARC_DOMAIN_MAX * 4 + 8];
	const char *fd = v->from.n_domains ? v->from.domain[0] : "";
	log_info("event=auth_checks id=%s sess=%s spf=%s dkim=%s dmarc=%s arc=%s from_domain=%s "
	         "action=%s",
	         v->id, v->sess, v->spf_on ? spf_result_name(v->spf_mailfrom.result) : "off",
	         v->n_dk ? dk : "none",
	         v->dmarc_ran ? dmarc_result_name(v->dmarc_out.result) : "off",
	         v->arc ? arc_cv_name(smtp_arc_result(v->arc)->cv) : "off",
	         log_quote(fd, strlen(fd), from, sizeof(from)),
	         v->failed ? "unchecked" : disposition_name(v->decision.disposition));
}

/* ------------------------------------------------------------- ARC */

static void arc_done(void *arg)
{
	step(arg);
}

/* At end of data: validate the chain of the message as we will keep it
 * (without the results and ARC sets claiming our name), beside DKIM. Only
 * the header block is copied: the body is hashed by body_begin's pass. */
static void arc_begin(struct smtp_verify *v)
{
	const struct conf_arc *ac = &v->conf->arc;
	if (!v->conf->auth_checks.arc && !ac->seal_domain)
		return;
	v->arc_report = v->conf->auth_checks.arc;
	bool sealing = v->forward && conf_arc_seal_key(v->conf);
	if (!smtp_arc_has_fields(v->hdr, v->hdr_len) && !sealing) {
		/* the common case: no chain and nothing to seal, nothing to copy */
		if (!(v->arc = smtp_arc_none()))
			log_error("event=auth_checks id=%s reason=out-of-memory arc=skipped",
			          v->id);
		return;
	}
	const char *own[] = {ac->seal_domain, NULL};
	static const char *const extra[] = {DMARC_HEADER_NAME, NULL};
	struct authres_strip_opts so = {
	    .authserv_id = v->conf->hostname,
	    .mode = AUTHRES_REMOVE,
	    .own_arc_domains = ac->seal_domain ? own : NULL,
	    .extra_names = extra,
	};
	struct tbuf copy;
	tbuf_init(&copy, v->hdr_len + 2);
	size_t n = 0;
	int rc = authres_strip(v->hdr, v->hdr_len, &so, &copy, NULL);
	char *bytes = rc == TERN_OK ? tbuf_steal(&copy, &n) : NULL;
	tbuf_free(&copy);
	if (bytes)
		v->arc = smtp_arc_start(bytes, n, v->body_len, v->res, v->base, v->w, v->pool,
		                        v->conf->auth_checks.timeout * 1000u, sealing, arc_done, v);
	if (!v->arc)
		log_error("event=auth_checks id=%s reason=out-of-memory arc=skipped", v->id);
}

/*
 * RFC 8617 §7.2: DMARC failed, the chain passed, and a sealer we trust
 * recorded a pass for every failing Author Domain: we deliver as if DMARC
 * had passed, and our A-R says so. Logged.
 */
static bool arc_override(struct smtp_verify *v)
{
	const struct conf_arc *ac = &v->conf->arc;
	const struct dmarc_outcome *o = &v->dmarc_out;
	if (!v->arc || ac->n_trusted_sealers == 0 || o->result != DMARC_RESULT_FAIL ||
	    o->action == DMARC_ACTION_NONE)
		return false;
	const struct arc_result *r = smtp_arc_result(v->arc);
	if (r->cv != ARC_CV_PASS)
		return false;
	size_t len = 0;
	const char *msg = smtp_arc_message(v->arc, &len);
	struct arc_trust first = {0};
	for (size_t i = 0; i < o->n_authors; i++) {
		if (o->author[i].result != DMARC_RESULT_FAIL)
			continue;
		struct arc_trust_query q = {
		    .trusted = (const char *const *)ac->trusted_sealers,
		    .n_trusted = ac->n_trusted_sealers,
		    .from_domain = o->author[i].domain,
		    .lowest = r->oldest_pass,
		};
		struct arc_trust t;
		if (!arc_trusted_pass(msg, len, &q, &t))
			return false;
		if (!first.instance)
			first = t;
	}
	if (!first.instance)
		return false;
	snprintf(v->override, sizeof(v->override), "trusted ARC sealer %s i=%u: %s", first.sealer,
	         first.instance, first.what);
	log_info("event=auth_checks id=%s dmarc_override=arc sealer=%s instance=%u vouched=%s",
	         v->id, first.sealer, first.instance, first.what);
	return true;
}

/* Seals a message that leaves us (an alias to a remote address, a route)
 * and that we keep: on the pool. True when the job runs. */
static bool seal_begin(struct smtp_verify *v)
{
	const struct conf_dkim_key *key = conf_arc_seal_key(v->conf);
	if (!v->forward || !v->arc || !key || v->failed || v->seal_started ||
	    v->decision.disposition == DMARC_REJECT || v->decision.disposition == DMARC_DEFER)
		return false;
	if (!v->pool) {
		log_error("event=arc_seal id=%s result=error reason=\"no thread pool\"", v->id);
		return false;
	}
	const struct arc_result *r = smtp_arc_result(v->arc);
	if (r->cv == ARC_CV_FAIL && r->temporary) {
		/* a key we could not fetch now: a cv=fail seal would end a chain the
		 * next hop may well validate (we changed nothing it covers) */
		log_info("event=arc_seal id=%s result=skipped reason=\"chain not checked: key "
		         "lookup failed\"",
		         v->id);
		return false;
	}
	int rc = smtp_arc_seal(v->arc, key, v->prefix.data, v->ar_len);
	if (rc != TERN_OK) {
		log_error("event=arc_seal id=%s result=error reason=\"%s\"", v->id,
		          tern_strerror(rc));
		return false;
	}
	v->seal_started = true;
	return true;
}

/* The seal is back: its fields go first in the prefix (newest on top). */
static void seal_collect(struct smtp_verify *v)
{
	const char *set = NULL, *why = NULL;
	size_t n = 0;
	if (!v->seal_started)
		return;
	int rc = smtp_arc_sealed(v->arc, &set, &n, &why);
	if (rc != TERN_OK) {
		log_error("event=arc_seal id=%s result=error reason=\"%s\"", v->id, why);
		return;
	}
	if (!set) {
		log_info("event=arc_seal id=%s result=skipped reason=\"chain already failed\"",
		         v->id);
		return;
	}
	struct tbuf both;
	tbuf_init(&both, SMTP_VERIFY_HEADERS_MAX);
	if (tbuf_append(&both, set, n) != TERN_OK ||
	    tbuf_append(&both, v->prefix.data, v->prefix.len) != TERN_OK) {
		tbuf_free(&both);
		log_error("event=arc_seal id=%s result=error reason=\"fields too large\"", v->id);
		return;
	}
	tbuf_free(&v->prefix);
	v->prefix = both;
	log_info("event=arc_seal id=%s result=sealed cv=%s domain=%s", v->id,
	         arc_cv_name(smtp_arc_result(v->arc)->cv), conf_arc_seal_key(v->conf)->domain);
}

/* Advances as far as the answers so far allow; schedules the callback when
 * everything is in. Runs only from event callbacks, never from a caller of
 * this file's public functions. */
static void step(struct smtp_verify *v)
{
	if (!v->started || v->complete || !v->spf_done)
		return;
	if (v->dkim_keys_pending || v->body_job || v->dmarc || (v->arc && smtp_arc_busy(v->arc)))
		return;
	if (v->built) {
		seal_collect(v); /* the seal job is back */
		goto complete;
	}
	if (v->dkim && dkim_verify_state(v->dkim) == DKIM_VS_READY)
		dkim_collect(v);
	if (!v->failed && v->conf->auth_checks.dmarc != CONF_DMARC_OFF && !v->dmarc_ran) {
		dmarc_begin(v);
		if (v->dmarc)
			return;
	}
	if (!v->failed && v->dmarc_ran) {
		struct dmarc_profile prof = {
		    .mode = v->conf->auth_checks.dmarc == CONF_DMARC_ENFORCE ? DMARC_MODE_ENFORCE
		                                                             : DMARC_MODE_MARK,
		    .defer_on_temperror = v->conf->auth_checks.defer_on_temperror,
		};
		struct dmarc_outcome eff = v->dmarc_out;
		/* RFC 8617 §7.2: a trusted sealer vouched, DMARC asks nothing of us */
		if (arc_override(v))
			eff.action = DMARC_ACTION_NONE;
		dmarc_decide(&eff, &prof, &v->decision);
		if (v->conf->dmarc.reports.from) {
			/* recorded for aggregate reports (write-behind, never waits) */
			struct dmarc_spf spf = {spf_to_dmarc(v->spf_mailfrom.result),
			                        DMARC_SPF_MAILFROM,
			                        v->spf_on ? v->spf_mailfrom.domain : NULL};
			struct dmarc_note note = {(int64_t)time(NULL), v->ip,   v->mailfrom,
			                          &v->dmarc_out,       &spf,    v->dk,
			                          v->n_dk,             v->decision.disposition};
			dmarc_note(&note);
		}
	}
	if (!v->failed && build_prefix(v) != TERN_OK) {
		/* the fields would not fit (a sender's huge values are cut by the
		 * writers, so this is memory): deliver without them, unjudged */
		tbuf_free(&v->prefix);
		memset(&v->decision, 0, sizeof(v->decision));
		v->failed = true;
	}
	v->built = true;
	if (seal_begin(v))
		return; /* the pool seals; step() again when it is back */
complete:
	log_verdict(v);
	v->complete = true;
	event_active(v->kick, 0, 0);
}

int smtp_verify_message(struct smtp_verify *v, const char *id, const char *msg, size_t len,
                        void (*done)(void *arg), void *arg)
{
	if (TERN_BUG_ON(v->started))
		return TERN_EINVAL;
	v->started = true;
	v->done = done;
	v->arg = arg;
	tern_strlcpy(v->id, id, sizeof(v->id));
	size_t hdr_len = 0, body_off = 0;
	dkim_split_message(msg, len, &hdr_len, &body_off);
	v->hdr = msg;
	v->hdr_len = hdr_len;
	v->body = msg + body_off;
	v->body_len = len - body_off;
	if (v->conf->auth_checks.dkim)
		dkim_begin(v);
	arc_begin(v);
	body_begin(v);
	event_active(v->kick, 0, 0); /* step() from the loop, never from here */
	return TERN_OK;
}

void smtp_verify_mapped(struct smtp_verify *v)
{
	v->mapped = true;
}

void smtp_verify_forwarding(struct smtp_verify *v, bool forward)
{
	v->forward = forward;
}

void smtp_verify_verdict(const struct smtp_verify *v, struct smtp_verify_verdict *out)
{
	memset(out, 0, sizeof(*out));
	if (v->failed)
		return;
	switch (v->decision.disposition) {
	case DMARC_REJECT:
		out->action = SMTP_VERIFY_REJECT;
		break;
	case DMARC_DEFER:
		out->action = SMTP_VERIFY_DEFER;
		break;
	case DMARC_DELIVER_JUNK:
		out->action = SMTP_VERIFY_JUNK;
		break;
	default:
		out->action = SMTP_VERIFY_DELIVER;
		break;
	}
	out->reply = v->decision.reply;
}

size_t smtp_verify_growth(const struct smtp_verify *v)
{
	return v->prefix.len;
}

int smtp_verify_rewrite(struct smtp_verify *v, struct tbuf *msg, size_t *trace_len)
{
	if (v->failed)
		return TERN_OK;
	size_t rcv = *trace_len;
	/* The client's header block follows our trace in msg: the very bytes
	 * checked, or (a message spilled to its own file, smtp/data_stream.h,
	 * checked through a mapping of it) a copy of them. */
	if (TERN_BUG_ON(rcv > msg->len || msg->len - rcv < v->hdr_len ||
	                (v->hdr != msg->data + rcv &&
	                 memcmp(v->hdr, msg->data + rcv, v->hdr_len) != 0)))
		return TERN_EINVAL;
	/* the new head: our fields, our Received, the client's fields without
	 * the results that claim to be ours */
	struct tbuf head;
	tbuf_init(&head, v->prefix.len + rcv + v->hdr_len);
	static const char *const ours[] = {DMARC_HEADER_NAME, NULL};
	const char *own[] = {v->conf->arc.seal_domain, NULL};
	struct authres_strip_opts so = {
	    .authserv_id = v->conf->hostname,
	    .mode = AUTHRES_REMOVE,
	    .own_arc_domains = v->conf->arc.seal_domain ? own : NULL,
	    .extra_names = ours,
	};
	size_t removed = 0;
	int rc = tbuf_append(&head, v->prefix.data, v->prefix.len);
	if (rc == TERN_OK)
		rc = tbuf_append(&head, msg->data, rcv);
	if (rc == TERN_OK)
		rc = authres_strip(v->hdr, v->hdr_len, &so, &head, &removed);
	size_t old = rcv + v->hdr_len;
	if (rc == TERN_OK && head.len > old)
		rc = tbuf_reserve(msg, head.len - old); /* within what the caller made room for */
	if (rc != TERN_OK) {
		tbuf_free(&head);
		return rc;
	}
	size_t tail = msg->len - old;
	memmove(msg->data + head.len, msg->data + old, tail);
	memcpy(msg->data, head.data, head.len);
	msg->len = head.len + tail;
	msg->data[msg->len] = '\0';
	*trace_len = v->prefix.len + rcv;
	if (removed)
		log_info("event=auth_checks id=%s forged_results_removed=%zu", v->id, removed);
	/* v->hdr pointed into the old layout: nothing may read it any more */
	v->hdr = NULL;
	v->body = NULL;
	tbuf_free(&head);
	return TERN_OK;
}

void smtp_verify_free(struct smtp_verify *v, struct tbuf *msg)
{
	if (!v)
		return;
	if (v->spf)
		spf_check_async_cancel(v->spf);
	v->spf = NULL;
	dkim_dns_free(v->dkim_dns);
	v->dkim_dns = NULL;
	v->dkim_keys_pending = false;
	dmarc_check_cancel(v->dmarc);
	v->dmarc = NULL;
	smtp_arc_stop(v->arc); /* nothing of ARC's calls us back after this */
	if (v->timer) {
		event_free(v->timer);
		v->timer = NULL;
	}
	if (v->kick) {
		event_free(v->kick);
		v->kick = NULL;
	}
	if (v->body_job) {
		/* the pool still reads the body: keep its bytes, free at body_done */
		if (msg) {
			v->kept = *msg;
			msg->data = NULL;
			msg->len = msg->cap = 0;
		}
		v->orphan = true;
		return; /* the job still feeds ARC's hashes: v->arc goes with v */
	}
	smtp_arc_free(v->arc); /* a running seal or ARC job frees it at its end */
	v->arc = NULL;
	dkim_verify_free(v->dkim);
	free(v->dk);
	free(v->helo);
	free(v->mailfrom);
	tbuf_free(&v->prefix);
	tbuf_free(&v->kept);
	free(v);
}
