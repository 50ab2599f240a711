/*
 * spf_async.c — runs the SPF evaluator (spf_eval.c) on a worker's async
 * resolver (dns/dns.h): HELO first, then MAIL FROM (RFC 7208 §2.3), each
 * with a deadline, and one callback with both outcomes.
 *
 * Owns: the translation between the evaluator's questions and answers and
 * dns.h (raw names <-> presentation format with \DDD escapes, dns_result
 * -> spf_answer), the per-identity deadline timer, and the handle's life.
 *
 * Must never: block, call the user callback from inside spf_check_async or
 * after spf_check_async_cancel, leave a query or a timer behind when the
 * handle is freed, or hand the resolver a name it would misread (a byte
 * outside letters, digits, '-' and '_' goes as \DDD).
 */
#include "policy/spf.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "dns/dns.h"

struct spf_async {
	struct dns_resolver *res;
	struct event_base *base;
	struct spf_limits lim;
	struct spf_request req; /* its strings point at the copies below */
	char *helo, *mailfrom, *receiver, *default_exp;
	enum spf_identity cur;
	struct spf_check *chk;
	int qid;             /* the outstanding dns_query, 0 when none */
	struct event *timer; /* the current identity's deadline */
	struct event *kick;  /* starts the work after spf_check_async returns */
	spf_done_cb cb;
	void *arg;
	bool in_cb;
	struct spf_verdict v;
};

static void begin(struct spf_async *a, enum spf_identity id);

static void async_free(struct spf_async *a)
{
	if (a->qid > 0)
		dns_cancel(a->res, a->qid);
	if (a->timer)
		event_free(a->timer);
	if (a->kick)
		event_free(a->kick);
	spf_check_free(a->chk);
	free(a->helo);
	free(a->mailfrom);
	free(a->receiver);
	free(a->default_exp);
	free(a);
}

static void complete(struct spf_async *a)
{
	a->in_cb = true;
	a->cb(a->arg, &a->v);
	async_free(a);
}

/* Raw name bytes -> presentation format for libunbound. False when the
 * escaped form does not fit what dns_query takes. */
static bool to_presentation(const char *raw, char *out, size_t outlen)
{
	size_t o = 0;
	for (const unsigned char *p = (const unsigned char *)raw; *p; p++) {
		bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		             (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.';
		if (plain) {
			if (o + 1 >= outlen)
				return false;
			out[o++] = (char)*p;
		} else {
			if (o + 4 >= outlen)
				return false;
			out[o++] = '\\';
			out[o++] = (char)('0' + *p / 100);
			out[o++] = (char)('0' + (*p / 10) % 10);
			out[o++] = (char)('0' + *p % 10);
		}
	}
	out[o] = '\0';
	return o > 0;
}

/* A name from dns.h (presentation format, see dns_parse_name) -> raw
 * bytes. An escaped '.' or a NUL cannot be told apart from structure in
 * raw form: such a name comes out "" and the evaluator skips it. */
static void from_presentation(const char *pres, char *out, size_t outlen)
{
	size_t o = 0;
	for (size_t i = 0; pres[i] && o + 1 < outlen; i++) {
		unsigned c = (unsigned char)pres[i];
		if (c == '\\' && pres[i + 1]) {
			if (pres[i + 1] >= '0' && pres[i + 1] <= '9' && pres[i + 2] &&
			    pres[i + 3]) {
				c = (unsigned)(pres[i + 1] - '0') * 100 +
				    (unsigned)(pres[i + 2] - '0') * 10 +
				    (unsigned)(pres[i + 3] - '0');
				i += 3;
			} else {
				c = (unsigned char)pres[++i];
			}
			if (c == '.' || c == 0 || c > 255) {
				out[0] = '\0';
				return;
			}
		}
		out[o++] = (char)c;
	}
	out[o] = '\0';
}

static void store(struct spf_async *a, const struct spf_outcome *o)
{
	struct spf_outcome *dst = a->cur == SPF_ID_HELO ? &a->v.helo : &a->v.mailfrom;
	char d[2 * SPF_NAME_MAX], p[2 * SPF_PROBLEM_MAX];

	*dst = *o;
	log_debug("event=spf_check identity=%s domain=%s result=%s lookups=%u void=%u "
	          "queries=%u problem=%s",
	          spf_identity_name(o->identity),
	          log_quote(o->domain, strlen(o->domain), d, sizeof(d)), spf_result_name(o->result),
	          o->lookups, o->void_lookups, o->queries,
	          log_quote(o->problem, strlen(o->problem), p, sizeof(p)));
}

/* This identity is finished: go on to MAIL FROM, or report. */
static void identity_done(struct spf_async *a)
{
	if (a->timer)
		event_del(a->timer);
	spf_check_free(a->chk);
	a->chk = NULL;
	if (a->cur == SPF_ID_HELO)
		begin(a, SPF_ID_MAILFROM);
	else
		complete(a);
}

static void on_dns(void *arg, const struct dns_result *r);

/* Runs the evaluator until it waits on DNS or is done. ans: the answer to
 * its last question, or NULL at the start. */
static void step(struct spf_async *a, const struct spf_answer *ans)
{
	const struct spf_query *q = NULL;
	struct spf_answer synth;

	for (;;) {
		if (spf_check_run(a->chk, ans, &q) == SPF_STEP_DONE) {
			store(a, spf_check_outcome(a->chk));
			identity_done(a);
			return;
		}
		char name[DNS_NAME_MAX];
		memset(&synth, 0, sizeof(synth));
		ans = &synth;
		if (!to_presentation(q->name, name, sizeof(name))) {
			/* made of bytes no host name has, too many to ask
			 * about: it names nothing that can be found */
			synth.status = SPF_DNS_NXDOMAIN;
			continue;
		}
		int id = dns_query(a->res, name, q->type, on_dns, a);
		if (id > 0) {
			a->qid = id;
			return;
		}
		synth.status = id == TERN_ESYNTAX ? SPF_DNS_NXDOMAIN : SPF_DNS_TEMPFAIL;
	}
}

static void on_dns(void *arg, const struct dns_result *r)
{
	struct spf_async *a = arg;
	struct spf_answer ans;
	struct strv *sv = NULL;
	char(*names)[DNS_NAME_MAX + 1] = NULL;

	a->qid = 0;
	memset(&ans, 0, sizeof(ans));
	switch (r->status) {
	case DNS_OK:
		ans.status = SPF_DNS_OK;
		break;
	case DNS_NODATA:
		ans.status = SPF_DNS_NODATA;
		break;
	case DNS_NXDOMAIN:
		ans.status = SPF_DNS_NXDOMAIN;
		break;
	default:
		ans.status = SPF_DNS_TEMPFAIL;
		break;
	}
	if (ans.status == SPF_DNS_OK) {
		ans.n = r->n;
		switch (r->rrtype) {
		case DNS_A:
			ans.a = r->a;
			break;
		case DNS_AAAA:
			ans.aaaa = r->aaaa;
			break;
		case DNS_TXT:
			sv = calloc(r->n, sizeof(*sv));
			if (!sv)
				goto nomem;
			for (size_t i = 0; i < r->n; i++)
				sv[i] = strv_make(r->txt[i], strlen(r->txt[i]));
			ans.txt = sv;
			break;
		case DNS_MX:
		case DNS_PTR:
			sv = calloc(r->n, sizeof(*sv));
			names = calloc(r->n, sizeof(*names));
			if (!sv || !names)
				goto nomem;
			for (size_t i = 0; i < r->n; i++) {
				const char *pres = r->rrtype == DNS_MX ? r->mx[i].host : r->ptr[i];
				from_presentation(pres, names[i], sizeof(names[i]));
				sv[i] = strv_make(names[i], strlen(names[i]));
			}
			ans.names = sv;
			break;
		default:
			ans.status = SPF_DNS_TEMPFAIL;
			ans.n = 0;
		}
	}
	step(a, &ans);
	free(sv);
	free(names);
	return;
nomem:
	memset(&ans, 0, sizeof(ans));
	ans.status = SPF_DNS_TEMPFAIL;
	step(a, &ans);
	free(sv);
	free(names);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct spf_async *a = arg;
	if (a->qid > 0) {
		dns_cancel(a->res, a->qid);
		a->qid = 0;
	}
	spf_check_expire(a->chk);
	step(a, NULL);
}

static void begin(struct spf_async *a, enum spf_identity id)
{
	a->cur = id;
	if (id == SPF_ID_HELO && !spf_helo_checkable(a->helo)) {
		struct spf_outcome *o = &a->v.helo;
		memset(o, 0, sizeof(*o));
		o->identity = SPF_ID_HELO;
		o->result = SPF_NONE;
		for (size_t i = 0; a->helo[i] && i + 1 < sizeof(o->domain); i++) {
			unsigned char ch = (unsigned char)a->helo[i];
			o->domain[i] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
		}
		tern_strlcpy(o->problem,
		             "the HELO name is not a multi-label domain name "
		             "(RFC 7208 section 2.3)",
		             sizeof(o->problem));
		begin(a, SPF_ID_MAILFROM);
		return;
	}
	if (id == SPF_ID_MAILFROM && !a->mailfrom[0] && spf_helo_checkable(a->helo)) {
		/* null reverse-path: <sender> is postmaster@HELO, exactly
		 * what the HELO check evaluated (§2.4) */
		a->v.mailfrom = a->v.helo;
		a->v.mailfrom.identity = SPF_ID_MAILFROM;
		complete(a);
		return;
	}
	a->chk = spf_check_new(&a->req, id, &a->lim);
	if (!a->chk) {
		struct spf_outcome o;
		memset(&o, 0, sizeof(o));
		o.identity = id;
		o.result = SPF_TEMPERROR;
		tern_strlcpy(o.problem, "out of memory", sizeof(o.problem));
		store(a, &o);
		identity_done(a);
		return;
	}
	struct timeval tv = {(time_t)(a->lim.timeout_ms / 1000),
	                     (suseconds_t)(a->lim.timeout_ms % 1000) * 1000};
	if (evtimer_add(a->timer, &tv) != 0)
		log_warn("event=spf_timer_failed identity=%s", spf_identity_name(id));
	step(a, NULL);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	begin(arg, SPF_ID_HELO);
}

struct spf_async *spf_check_async(struct dns_resolver *res, struct event_base *base,
                                  const struct spf_request *req, const struct spf_limits *lim,
                                  spf_done_cb cb, void *arg)
{
	struct spf_async *a;

	if (!res || !base || !req || !cb)
		return NULL;
	a = calloc(1, sizeof(*a));
	if (!a)
		return NULL;
	a->res = res;
	a->base = base;
	a->cb = cb;
	a->arg = arg;
	spf_limits_default(&a->lim);
	if (lim) {
		a->lim = *lim;
		if (!a->lim.max_queries || !a->lim.timeout_ms) {
			struct spf_limits d;
			spf_limits_default(&d);
			a->lim.max_queries =
			    a->lim.max_queries ? a->lim.max_queries : d.max_queries;
			a->lim.timeout_ms = a->lim.timeout_ms ? a->lim.timeout_ms : d.timeout_ms;
		}
	}
	a->helo = tern_strdup(req->helo ? req->helo : "");
	a->mailfrom = tern_strdup(req->mailfrom ? req->mailfrom : "");
	a->receiver = tern_strdup(req->receiver ? req->receiver : "");
	a->default_exp = req->default_exp ? tern_strdup(req->default_exp) : NULL;
	a->timer = evtimer_new(base, on_timer, a);
	a->kick = evtimer_new(base, on_kick, a);
	if (!a->helo || !a->mailfrom || !a->receiver || (req->default_exp && !a->default_exp) ||
	    !a->timer || !a->kick)
		goto fail;
	a->req = *req;
	a->req.helo = a->helo;
	a->req.mailfrom = a->mailfrom;
	a->req.receiver = a->receiver;
	a->req.default_exp = a->default_exp;
	if (!a->req.now)
		a->req.now = (int64_t)time(NULL);
	struct timeval zero = {0, 0};
	if (evtimer_add(a->kick, &zero) != 0)
		goto fail;
	return a;
fail:
	async_free(a);
	return NULL;
}

void spf_check_async_cancel(struct spf_async *a)
{
	/* from inside the callback the handle is freed when it returns */
	if (!a || a->in_cb)
		return;
	async_free(a);
}
