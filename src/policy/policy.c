/*
 * policy.c — the policy engine: what an mx session is checked for at
 * connect, MAIL and RCPT, and the replies and log lines that follow.
 *
 * At connect (policy_connect): relay.networks clients are exempt from
 * everything; the connection rate is counted; then the DNSBL/DNSWL queries
 * (one per distinct zone) and the reverse-DNS lookup start on the worker's
 * resolver, and the pre-greeting delay (if any) starts. The greeting waits
 * until every answer came or policy.dns_timeout passed, and the delay ran
 * out; then the verdict goes back to the server through a deferred event.
 * At MAIL: the reverse-DNS requirement and the message rate. At RCPT: the
 * recipient rate and greylisting. Authenticated clients skip MAIL and RCPT
 * checks; a client a DNSWL vouches for (negative score) skips greylisting.
 *
 * Must never: block (DNS is asynchronous with a deadline, the greylist and
 * rate tables answer from memory), call the server back from inside a
 * policy_* call, call back after policy_session_free, or let a DNS failure
 * alone refuse mail (a DNSBL that does not answer counts as not listing;
 * only a configured fcrdns.require defers when the reverse DNS cannot be
 * checked, since a spammer's own DNS could otherwise opt out by timing out).
 * Every decision is one log line: event=policy check=NAME with the client.
 */
#include <arpa/inet.h>
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/log.h"
#include "core/loop.h"
#include "policy/policy.h"
#include "policy/policy_internal.h"

#define PTR_NAMES_MAX 8    /* PTR names whose forward records are checked */
#define ZONE_ANSWERS_MAX 8 /* A records kept per DNSBL answer */
#define ADDR_TEXT_MAX 600  /* a lowercased address for the greylist key */
#define N_QUERIES (POLICY_ZONES_MAX + 1 + PTR_NAMES_MAX)

struct policy {
	size_t n_workers;
	struct worker **workers;
	struct dns_resolver **res; /* per worker, made on first use on its own thread */
	bool *res_failed;          /* per worker: creation failed (logged once) */
	char **forward;
	size_t n_forward;
	char *trust_anchor;
	struct ratelimit *rl;
	struct greylist *gl;
};

enum q_kind { Q_DNSBL, Q_PTR, Q_FWD };

/* One outstanding DNS query; the callback's argument. */
struct pq {
	struct policy_session *ps;
	enum q_kind kind;
	size_t idx; /* Q_DNSBL: distinct zone; Q_FWD: PTR name */
	int id;     /* the resolver's query id while outstanding, else 0 */
};

/* One distinct DNSBL zone and what its query said. */
struct zq {
	const char *zone; /* the first entry's name (in the session's conf) */
	bool done;
	const char *failed; /* why it did not answer ("timeout", "tempfail"), or NULL */
	struct in_addr a[ZONE_ANSWERS_MAX];
	size_t n;
};

enum fc_state { FC_OFF = 0, FC_PENDING, FC_PASS, FC_FAIL, FC_NONE, FC_TEMPERROR };
static const char *const fc_names[] = {"off", "pending", "pass", "fail", "none", "temperror"};

struct policy_session {
	struct policy *p;
	const struct tern_config *conf;
	const struct conf_policy *cp;
	struct dns_resolver *res;
	struct event_base *base;
	policy_cb cb;
	void *cb_arg;
	char sess[32];
	char addr[INET6_ADDRSTRLEN];      /* the client, printable */
	char qaddr[INET6_ADDRSTRLEN + 8]; /* the same through log_quote */
	int family;
	uint8_t ip[16];
	uint8_t rate_key[POLICY_NET_KEY_LEN];

	/* the connect phase */
	bool waiting;       /* the greeting waits for us */
	bool delay_running; /* the pre-greeting delay has not run out */
	bool talked;        /* the client spoke before the greeting */
	bool firing;        /* the verdict is on its way (fire_ev active) */
	struct event *delay_ev, *deadline_ev, *fire_ev;
	struct policy_verdict verdict;
	unsigned outstanding;
	struct pq q[N_QUERIES];

	struct zq zq[POLICY_ZONES_MAX];
	size_t n_zq;
	size_t entry_zq[POLICY_ZONES_MAX]; /* dnsbl entry -> its distinct zone */
	bool scored;
	int score;

	enum fc_state fc;
	char ptr[PTR_NAMES_MAX][DNS_NAME_MAX + 1];
	size_t n_ptr;
	size_t fwd_left;    /* forward queries not yet answered */
	bool fwd_tempfail;  /* one of them failed: "fail" may be wrong */
	const char *fc_why; /* detail for the log */
	char fc_name[DNS_NAME_MAX + 1];
};

/* ------------------------------------------------------------------ logs */

__attribute__((format(printf, 4, 5))) static void
plog(const struct policy_session *ps, enum log_level lvl, const char *check, const char *fmt, ...);

static void plog(const struct policy_session *ps, enum log_level lvl, const char *check,
                 const char *fmt, ...)
{
	char rest[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(rest, sizeof(rest), fmt, ap);
	va_end(ap);
	log_msg(lvl, "event=policy sess=%s client=%s check=%s %s", ps->sess, ps->qaddr, check,
	        rest);
}

static uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Host-name characters only: what may go into a reply, a Received header
 * or a query without a second thought. */
static bool plain_hostname(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-' ||
		      *s == '_' || *s == '.'))
			return false;
	return true;
}

/* --------------------------------------------------------------- engine */

struct policy *policy_new(struct worker *const *workers, size_t n_workers,
                          const struct tern_config *conf, char *err, size_t errlen)
{
	struct policy *p = calloc(1, sizeof(*p));
	if (!p)
		goto nomem;
	p->n_workers = n_workers;
	p->workers = calloc(n_workers ? n_workers : 1, sizeof(*p->workers));
	p->res = calloc(n_workers ? n_workers : 1, sizeof(*p->res));
	p->res_failed = calloc(n_workers ? n_workers : 1, sizeof(*p->res_failed));
	p->forward = calloc(conf->dns.n_forward ? conf->dns.n_forward : 1, sizeof(*p->forward));
	if (!p->workers || !p->res || !p->res_failed || !p->forward)
		goto nomem;
	for (size_t i = 0; i < n_workers; i++)
		p->workers[i] = workers[i];
	for (size_t i = 0; i < conf->dns.n_forward; i++) {
		if (!(p->forward[i] = tern_strdup(conf->dns.forward[i])))
			goto nomem;
		p->n_forward++;
	}
	if (conf->dns.trust_anchor_file &&
	    !(p->trust_anchor = tern_strdup(conf->dns.trust_anchor_file)))
		goto nomem;
	if (!(p->rl = ratelimit_new()))
		goto nomem;
	if (!(p->gl = greylist_open(conf->data_dir, err, errlen)))
		goto fail;
	return p;
nomem:
	snprintf(err, errlen, "policy: out of memory");
fail:
	policy_free(p);
	return NULL;
}

void policy_free(struct policy *p)
{
	if (!p)
		return;
	for (size_t i = 0; p->res && i < p->n_workers; i++)
		dns_resolver_free(p->res[i]);
	for (size_t i = 0; i < p->n_forward; i++)
		free(p->forward[i]);
	free(p->forward);
	free(p->trust_anchor);
	free(p->res);
	free(p->res_failed);
	free(p->workers);
	ratelimit_free(p->rl);
	greylist_close(p->gl);
	free(p);
}

/* The resolver of worker w; made on w's thread the first time. */
static struct dns_resolver *resolver_for(struct policy *p, struct worker *w)
{
	for (size_t i = 0; i < p->n_workers; i++) {
		if (p->workers[i] != w)
			continue;
		if (!p->res[i] && !p->res_failed[i]) {
			char err[256];
			p->res[i] =
			    dns_resolver_new(worker_base(w), (const char *const *)p->forward,
			                     p->n_forward, p->trust_anchor, err, sizeof(err));
			if (!p->res[i]) {
				p->res_failed[i] = true;
				char q[300];
				log_error("event=policy_resolver_failed worker=%zu reason=%s", i,
				          log_quote(err, strlen(err), q, sizeof(q)));
			}
		}
		return p->res[i];
	}
	return NULL;
}

struct dns_resolver *policy_resolver(struct policy *p, struct worker *w)
{
	return p ? resolver_for(p, w) : NULL;
}

/* ------------------------------------------------------- connect verdict */

static void cancel_queries(struct policy_session *ps)
{
	for (size_t i = 0; i < N_QUERIES; i++) {
		if (ps->q[i].id > 0) {
			dns_cancel(ps->res, ps->q[i].id);
			ps->q[i].id = 0;
		}
	}
	ps->outstanding = 0;
}

static void on_fire(evutil_socket_t fd, short what, void *arg)
{
	struct policy_session *ps = arg;
	ps->waiting = false;
	ps->firing = false;
	/* The callback may free ps (the server closes the session). */
	ps->cb(ps->cb_arg, &ps->verdict);
}

/* The DNSBL line, and the refusal if the score reaches the threshold. */
static bool decide_dnsbl(struct policy_session *ps)
{
	const struct conf_policy *cp = ps->cp;
	struct policy_dnsbl_answer ans[POLICY_ZONES_MAX];
	for (size_t i = 0; i < cp->n_zones; i++) {
		const struct zq *z = &ps->zq[ps->entry_zq[i]];
		ans[i].a = z->a;
		ans[i].n = z->n;
	}
	size_t top = cp->n_zones;
	ps->score = policy_dnsbl_score(cp->zones, ans, cp->n_zones, &top);
	ps->scored = true;
	/* listed=zone*weight for each listing entry; failed=zone(why) */
	char listed[512] = "", failed[512] = "";
	size_t lo = 0, fo = 0;
	for (size_t i = 0; i < cp->n_zones; i++) {
		if (!policy_zone_matches(&cp->zones[i], ans[i].a, ans[i].n))
			continue;
		int k = snprintf(listed + lo, sizeof(listed) - lo, "%s%s*%d", lo ? "," : "",
		                 cp->zones[i].zone, (int)cp->zones[i].weight);
		if (k > 0 && (size_t)k < sizeof(listed) - lo)
			lo += (size_t)k;
	}
	for (size_t z = 0; z < ps->n_zq; z++) {
		if (!ps->zq[z].failed)
			continue;
		int k = snprintf(failed + fo, sizeof(failed) - fo, "%s%s(%s)", fo ? "," : "",
		                 ps->zq[z].zone, ps->zq[z].failed);
		if (k > 0 && (size_t)k < sizeof(failed) - fo)
			fo += (size_t)k;
	}
	bool refuse = ps->score >= cp->dnsbl_threshold;
	char ql[600], qf[600];
	plog(ps, refuse ? LOG_LVL_WARN : LOG_LVL_INFO, "dnsbl",
	     "score=%d threshold=%d listed=%s failed=%s action=%s%s", ps->score,
	     (int)cp->dnsbl_threshold, log_quote(listed, lo, ql, sizeof(ql)),
	     log_quote(failed, fo, qf, sizeof(qf)), refuse ? "refuse" : "pass",
	     refuse ? " code=554" : "");
	if (!refuse)
		return false;
	/* The threshold is at least 1, so some entry with a positive weight listed. */
	const char *zone =
	    TERN_BUG_ON(top >= cp->n_zones) ? "a DNS blocklist" : cp->zones[top].zone;
	ps->verdict.action = POLICY_REFUSE;
	snprintf(ps->verdict.reply, sizeof(ps->verdict.reply),
	         "554 5.7.1 Service unavailable; client [%s] blocked using %s", ps->addr, zone);
	return true;
}

static void log_fcrdns(struct policy_session *ps)
{
	char qn[DNS_NAME_MAX * 4 + 8];
	const char *name = ps->fc == FC_PASS ? ps->fc_name : ps->n_ptr ? ps->ptr[0] : "";
	plog(ps, LOG_LVL_INFO, "fcrdns", "result=%s name=%s%s%s", fc_names[ps->fc],
	     log_quote(name, strlen(name), qn, sizeof(qn)), ps->fc_why ? " reason=" : "",
	     ps->fc_why ? ps->fc_why : "");
}

/* Settles the greeting once everything it waits for is in; the verdict is
 * delivered from fire_ev, never from the caller's stack. */
static void maybe_finish(struct policy_session *ps)
{
	if (!ps->waiting || ps->firing)
		return;
	if (ps->talked && ps->cp->pregreet_reject) {
		cancel_queries(ps);
		ps->verdict.action = POLICY_CLOSE;
		snprintf(ps->verdict.reply, sizeof(ps->verdict.reply),
		         "554 5.5.1 Protocol error: client [%s] talked before the greeting; "
		         "closing",
		         ps->addr);
	} else {
		if (ps->outstanding > 0 || ps->delay_running)
			return;
		ps->verdict.action = POLICY_PASS;
		ps->verdict.reply[0] = '\0';
		if (ps->fc != FC_OFF)
			log_fcrdns(ps);
		if (ps->cp->n_zones > 0)
			decide_dnsbl(ps);
	}
	if (ps->deadline_ev)
		event_del(ps->deadline_ev);
	if (ps->delay_ev)
		event_del(ps->delay_ev);
	ps->firing = true;
	event_active(ps->fire_ev, EV_TIMEOUT, 0);
}

/* ----------------------------------------------------------- DNS answers */

static void fc_settle_if_done(struct policy_session *ps)
{
	if (ps->fc != FC_PENDING || ps->fwd_left > 0)
		return;
	if (ps->fwd_tempfail) {
		ps->fc = FC_TEMPERROR;
		ps->fc_why = "forward-lookup-failed";
	} else {
		ps->fc = FC_FAIL;
		ps->fc_why = "no-forward-match";
	}
}

static void on_answer(void *arg, const struct dns_result *r);

static bool start_query(struct policy_session *ps, size_t slot, enum q_kind kind, size_t idx,
                        const char *name, int rrtype)
{
	struct pq *q = &ps->q[slot];
	q->ps = ps;
	q->kind = kind;
	q->idx = idx;
	q->id = ps->res ? dns_query(ps->res, name, rrtype, on_answer, q) : TERN_EINVAL;
	if (q->id <= 0) {
		q->id = 0;
		return false;
	}
	ps->outstanding++;
	return true;
}

static void on_ptr(struct policy_session *ps, const struct dns_result *r)
{
	if (r->status == DNS_NXDOMAIN || r->status == DNS_NODATA) {
		ps->fc = FC_NONE;
		ps->fc_why = "no-ptr";
		return;
	}
	if (r->status != DNS_OK) {
		ps->fc = FC_TEMPERROR;
		ps->fc_why = dns_status_name(r->status);
		return;
	}
	for (size_t i = 0; i < r->n && ps->n_ptr < PTR_NAMES_MAX; i++) {
		if (!plain_hostname(r->ptr[i]))
			continue; /* not a host name: it cannot confirm anything */
		tern_strlcpy(ps->ptr[ps->n_ptr], r->ptr[i], sizeof(ps->ptr[0]));
		ps->n_ptr++;
	}
	int rrtype = ps->family == AF_INET ? DNS_A : DNS_AAAA;
	for (size_t i = 0; i < ps->n_ptr; i++) {
		if (start_query(ps, POLICY_ZONES_MAX + 1 + i, Q_FWD, i, ps->ptr[i], rrtype))
			ps->fwd_left++;
		else
			ps->fwd_tempfail = true;
	}
	fc_settle_if_done(ps);
}

static void on_fwd(struct policy_session *ps, size_t idx, const struct dns_result *r)
{
	if (ps->fc != FC_PENDING)
		return;
	ps->fwd_left--;
	bool match = false;
	for (size_t i = 0; r->status == DNS_OK && i < r->n && !match; i++)
		match = ps->family == AF_INET ? memcmp(&r->a[i], ps->ip, 4) == 0
		                              : memcmp(&r->aaaa[i], ps->ip, 16) == 0;
	if (match) {
		ps->fc = FC_PASS;
		ps->fc_why = NULL;
		tern_strlcpy(ps->fc_name, ps->ptr[idx], sizeof(ps->fc_name));
		/* the other names no longer matter */
		for (size_t i = 0; i < PTR_NAMES_MAX; i++) {
			struct pq *q = &ps->q[POLICY_ZONES_MAX + 1 + i];
			if (q->id > 0) {
				dns_cancel(ps->res, q->id);
				q->id = 0;
				ps->outstanding--;
			}
		}
		return;
	}
	if (r->status == DNS_TEMPFAIL || r->status == DNS_ERROR)
		ps->fwd_tempfail = true;
	fc_settle_if_done(ps);
}

static void on_answer(void *arg, const struct dns_result *r)
{
	struct pq *q = arg;
	struct policy_session *ps = q->ps;
	q->id = 0;
	TERN_BUG_ON(ps->outstanding == 0);
	ps->outstanding--;
	switch (q->kind) {
	case Q_DNSBL: {
		struct zq *z = &ps->zq[q->idx];
		z->done = true;
		if (r->status == DNS_OK) {
			for (size_t i = 0; i < r->n && z->n < ZONE_ANSWERS_MAX; i++)
				z->a[z->n++] = r->a[i];
		} else if (r->status != DNS_NXDOMAIN && r->status != DNS_NODATA) {
			z->failed = dns_status_name(r->status);
		}
		break;
	}
	case Q_PTR:
		on_ptr(ps, r);
		break;
	case Q_FWD:
		on_fwd(ps, q->idx, r);
		break;
	}
	maybe_finish(ps);
}

/* policy.dns_timeout ran out: what has not answered counts as a failure. */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct policy_session *ps = arg;
	for (size_t z = 0; z < ps->n_zq; z++)
		if (!ps->zq[z].done) {
			ps->zq[z].done = true;
			ps->zq[z].failed = "timeout";
		}
	if (ps->fc == FC_PENDING) {
		ps->fc = FC_TEMPERROR;
		ps->fc_why = "timeout";
	}
	cancel_queries(ps);
	maybe_finish(ps);
}

static void on_delay(evutil_socket_t fd, short what, void *arg)
{
	struct policy_session *ps = arg;
	ps->delay_running = false;
	maybe_finish(ps);
}

/* Starts one query per distinct zone, and the reverse-DNS lookup. */
static void start_lookups(struct policy_session *ps)
{
	const struct conf_policy *cp = ps->cp;
	char name[DNS_NAME_MAX + 1];
	for (size_t i = 0; i < cp->n_zones; i++) {
		size_t z = 0;
		while (z < ps->n_zq && strcmp(ps->zq[z].zone, cp->zones[i].zone) != 0)
			z++;
		ps->entry_zq[i] = z;
		if (z < ps->n_zq)
			continue; /* the same zone with another filter: one query serves both */
		ps->zq[z].zone = cp->zones[i].zone;
		ps->n_zq++;
		if (!policy_dnsbl_name(ps->family, ps->ip, cp->zones[i].zone, name, sizeof(name)) ||
		    !start_query(ps, z, Q_DNSBL, z, name, DNS_A)) {
			ps->zq[z].done = true;
			ps->zq[z].failed = ps->res ? "query-failed" : "no-resolver";
		}
	}
	if (cp->fcrdns_enabled || cp->fcrdns_require) {
		ps->fc = FC_PENDING;
		if (!dns_ptr_name(ps->family, ps->ip, name, sizeof(name)) ||
		    !start_query(ps, POLICY_ZONES_MAX, Q_PTR, 0, name, DNS_PTR)) {
			ps->fc = FC_TEMPERROR;
			ps->fc_why = ps->res ? "query-failed" : "no-resolver";
		}
	}
}

struct policy_session *policy_connect(struct policy *p, struct worker *w,
                                      const struct tern_config *conf,
                                      const struct sockaddr_storage *sa, const char *sess,
                                      policy_cb cb, void *arg, struct policy_verdict *v)
{
	v->action = POLICY_PASS;
	v->reply[0] = '\0';
	int family;
	uint8_t ip[16];
	if (!p || !policy_client_addr(sa, &family, ip) || conf_in_relay_networks(conf, sa))
		return NULL; /* a trusted network: exempt from every check */
	const struct conf_policy *cp = &conf->policy;
	uint8_t key[POLICY_NET_KEY_LEN];
	char addr[INET6_ADDRSTRLEN], qaddr[INET6_ADDRSTRLEN + 8];
	policy_net_key(family, ip, 32, 64, key, NULL, 0);
	inet_ntop(family, ip, addr, sizeof(addr));
	log_quote(addr, strlen(addr), qaddr, sizeof(qaddr));

	if (!ratelimit_take(p->rl, key, RL_CONNECTIONS, cp->connections_per_minute, now_us())) {
		log_warn("event=policy sess=%s client=%s check=ratelimit limit=connections "
		         "per_minute=%u action=close code=421",
		         sess, qaddr, (unsigned)cp->connections_per_minute);
		v->action = POLICY_CLOSE;
		snprintf(v->reply, sizeof(v->reply),
		         "421 4.7.0 %s Too many connections from [%s]: the limit is %u per minute; "
		         "try again later",
		         conf->hostname, addr, (unsigned)cp->connections_per_minute);
		return NULL;
	}
	bool dns = cp->n_zones > 0 || cp->fcrdns_enabled || cp->fcrdns_require;
	bool later = cp->greylist || cp->messages_per_minute || cp->recipients_per_minute;
	if (!dns && !later && cp->pregreet_delay == 0)
		return NULL;

	struct policy_session *ps = calloc(1, sizeof(*ps));
	if (!ps) {
		log_error("event=policy sess=%s client=%s check=connect action=pass "
		          "reason=out-of-memory",
		          sess, qaddr);
		return NULL;
	}
	ps->p = p;
	ps->conf = conf;
	ps->cp = cp;
	ps->cb = cb;
	ps->cb_arg = arg;
	ps->family = family;
	memcpy(ps->ip, ip, sizeof(ip));
	memcpy(ps->rate_key, key, sizeof(key));
	tern_strlcpy(ps->sess, sess, sizeof(ps->sess));
	tern_strlcpy(ps->addr, addr, sizeof(ps->addr));
	tern_strlcpy(ps->qaddr, qaddr, sizeof(ps->qaddr));
	if (!dns && cp->pregreet_delay == 0)
		return ps; /* only MAIL/RCPT checks: greet now */

	ps->base = worker_base(w);
	ps->fire_ev = event_new(ps->base, -1, 0, on_fire, ps);
	ps->deadline_ev = evtimer_new(ps->base, on_deadline, ps);
	ps->delay_ev = evtimer_new(ps->base, on_delay, ps);
	if (!ps->fire_ev || !ps->deadline_ev || !ps->delay_ev) {
		log_error("event=policy sess=%s client=%s check=connect action=pass "
		          "reason=out-of-memory",
		          sess, qaddr);
		policy_session_free(ps);
		return NULL;
	}
	if (dns) {
		ps->res = resolver_for(p, w);
		start_lookups(ps);
		if (ps->outstanding > 0) {
			struct timeval tv = {(time_t)cp->dns_timeout, 0};
			event_add(ps->deadline_ev, &tv);
		}
	}
	if (cp->pregreet_delay > 0) {
		struct timeval tv = {(time_t)cp->pregreet_delay, 0};
		event_add(ps->delay_ev, &tv);
		ps->delay_running = true;
		/* The first line of a multi-line greeting: a client that speaks
		 * before the last line did not wait for it (postscreen's test). */
		snprintf(v->reply, sizeof(v->reply), "220-%s ESMTP tern", conf->hostname);
	}
	ps->waiting = true;
	v->action = POLICY_WAIT;
	maybe_finish(ps); /* everything may have failed to start: the verdict is due */
	return ps;
}

void policy_client_spoke(struct policy_session *ps)
{
	if (!ps || !ps->waiting || ps->firing || ps->talked || ps->cp->pregreet_delay == 0)
		return;
	ps->talked = true;
	plog(ps, LOG_LVL_WARN, "pregreet", "result=early-talker action=%s%s",
	     ps->cp->pregreet_reject ? "close" : "ignore",
	     ps->cp->pregreet_reject ? " code=554" : "");
	maybe_finish(ps);
}

/* --------------------------------------------------------- MAIL and RCPT */

static void reject(struct policy_verdict *v, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void reject(struct policy_verdict *v, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(v->reply, sizeof(v->reply), fmt, ap);
	va_end(ap);
	v->action = POLICY_REJECT;
}

void policy_mail(struct policy_session *ps, const char *sender, bool authenticated,
                 struct policy_verdict *v)
{
	v->action = POLICY_PASS;
	v->reply[0] = '\0';
	if (!ps || authenticated)
		return;
	const struct conf_policy *cp = ps->cp;
	char qs[ADDR_TEXT_MAX * 4];
	log_quote(sender, strlen(sender), qs, sizeof(qs));
	if (cp->fcrdns_require && ps->fc != FC_PASS) {
		if (ps->fc == FC_TEMPERROR || ps->fc == FC_PENDING || ps->fc == FC_OFF) {
			/* not known either way: a temporary answer whatever the config */
			reject(v,
			       "450 4.7.25 Client host rejected: cannot verify the reverse DNS of "
			       "[%s] now; try again later",
			       ps->addr);
		} else {
			unsigned code = cp->fcrdns_reject_code;
			const char *name = ps->fc == FC_FAIL && ps->n_ptr ? ps->ptr[0] : NULL;
			if (name)
				reject(
				    v,
				    "%u %c.7.25 Client host rejected: the reverse DNS name %s of "
				    "[%s] does not resolve back to it",
				    code, code >= 500 ? '5' : '4', name, ps->addr);
			else
				reject(
				    v,
				    "%u %c.7.25 Client host rejected: cannot find your hostname, "
				    "[%s] has no reverse DNS (PTR) record",
				    code, code >= 500 ? '5' : '4', ps->addr);
		}
		plog(ps, LOG_LVL_INFO, "fcrdns", "from=%s result=%s action=reject code=%.3s", qs,
		     fc_names[ps->fc], v->reply);
		return;
	}
	if (!ratelimit_take(ps->p->rl, ps->rate_key, RL_MESSAGES, cp->messages_per_minute,
	                    now_us())) {
		reject(v,
		       "452 4.7.1 Too many messages from [%s]: the limit is %u per minute; try "
		       "again later",
		       ps->addr, (unsigned)cp->messages_per_minute);
		plog(ps, LOG_LVL_WARN, "ratelimit",
		     "limit=messages per_minute=%u from=%s action=reject code=452",
		     (unsigned)cp->messages_per_minute, qs);
	}
}

/* A lowercased copy, cut to fit (only ever a lookup key). */
static void lower_copy(const char *s, char *out, size_t outlen)
{
	tern_strlcpy(out, s, outlen);
	tern_ascii_lower(out);
}

void policy_rcpt_rate(struct policy_session *ps, const char *sender, const char *rcpt,
                      bool authenticated, struct policy_verdict *v)
{
	v->action = POLICY_PASS;
	v->reply[0] = '\0';
	if (!ps || authenticated)
		return;
	const struct conf_policy *cp = ps->cp;
	char qs[ADDR_TEXT_MAX * 4], qr[ADDR_TEXT_MAX * 4];
	log_quote(sender, strlen(sender), qs, sizeof(qs));
	log_quote(rcpt, strlen(rcpt), qr, sizeof(qr));
	if (!ratelimit_take(ps->p->rl, ps->rate_key, RL_RECIPIENTS, cp->recipients_per_minute,
	                    now_us())) {
		reject(v,
		       "451 4.7.1 Too many recipients from [%s]: the limit is %u per minute; try "
		       "again later",
		       ps->addr, (unsigned)cp->recipients_per_minute);
		plog(ps, LOG_LVL_WARN, "ratelimit",
		     "limit=recipients per_minute=%u from=%s to=%s action=reject code=451",
		     (unsigned)cp->recipients_per_minute, qs, qr);
	}
}

void policy_rcpt_greylist(struct policy_session *ps, const char *sender, const char *rcpt,
                          bool authenticated, struct policy_verdict *v)
{
	v->action = POLICY_PASS;
	v->reply[0] = '\0';
	if (!ps || authenticated || !ps->cp->greylist)
		return;
	const struct conf_policy *cp = ps->cp;
	char qs[ADDR_TEXT_MAX * 4], qr[ADDR_TEXT_MAX * 4];
	log_quote(sender, strlen(sender), qs, sizeof(qs));
	log_quote(rcpt, strlen(rcpt), qr, sizeof(qr));
	if (ps->scored && ps->score < 0) {
		plog(ps, LOG_LVL_DEBUG, "greylist",
		     "from=%s to=%s result=dnswl score=%d action=pass", qs, qr, ps->score);
		return;
	}
	uint8_t net[POLICY_NET_KEY_LEN];
	char net_text[POLICY_NET_TEXT_MAX], s_lc[ADDR_TEXT_MAX], r_lc[ADDR_TEXT_MAX];
	policy_net_key(ps->family, ps->ip, 24, 64, net, net_text, sizeof(net_text));
	lower_copy(sender, s_lc, sizeof(s_lc));
	lower_copy(rcpt, r_lc, sizeof(r_lc));
	struct policy_grey_params gp = {cp->greylist_delay, cp->greylist_retry_window,
	                                cp->greylist_expire};
	uint32_t wait = 0;
	enum policy_grey_result g =
	    greylist_check(ps->p->gl, net, net_text, s_lc, r_lc, (int64_t)time(NULL), &gp, &wait);
	switch (g) {
	case POLICY_GREY_NEW:
	case POLICY_GREY_EARLY:
		reject(v,
		       "451 4.7.1 <%s>: Greylisted: the first attempt from %s for this sender and "
		       "recipient must be retried; try again in %u seconds",
		       rcpt, net_text, (unsigned)wait);
		plog(ps, LOG_LVL_INFO, "greylist",
		     "net=%s from=%s to=%s result=%s retry_in=%u action=defer code=451", net_text,
		     qs, qr, g == POLICY_GREY_NEW ? "new" : "early", (unsigned)wait);
		break;
	case POLICY_GREY_PASS_FIRST:
		plog(ps, LOG_LVL_INFO, "greylist", "net=%s from=%s to=%s result=passed action=pass",
		     net_text, qs, qr);
		break;
	case POLICY_GREY_PASS:
		plog(ps, LOG_LVL_DEBUG, "greylist", "net=%s from=%s to=%s result=known action=pass",
		     net_text, qs, qr);
		break;
	}
}

const char *policy_client_name(const struct policy_session *ps)
{
	return ps && ps->fc == FC_PASS ? ps->fc_name : NULL;
}

void policy_session_free(struct policy_session *ps)
{
	if (!ps)
		return;
	cancel_queries(ps);
	if (ps->fire_ev)
		event_free(ps->fire_ev);
	if (ps->deadline_ev)
		event_free(ps->deadline_ev);
	if (ps->delay_ev)
		event_free(ps->delay_ev);
	free(ps);
}
