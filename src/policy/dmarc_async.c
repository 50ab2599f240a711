/*
 * dmarc_async.c — the DMARC state machine (dmarc_eval.c) driven by the
 * worker's asynchronous resolver (dns/dns.h).
 *
 * Owns: turning each question of struct dmarc_eval into a dns_query, each
 * answer back into dmarc_eval_answer, and the one completion callback.
 * Must never: block, call back from inside dmarc_check_async or
 * dmarc_check_cancel, or leave a query running after the handle is freed.
 */
#include "policy/dmarc.h"

#include <event2/event.h>
#include <stdlib.h>

#include "core/err.h"

struct slot {
	struct slot *next;
	struct dmarc_check *c;
	unsigned id; /* the evaluation's question id */
	int qid;     /* the resolver's query id */
};

struct dmarc_check {
	struct dns_resolver *res;
	struct event *done_ev; /* completion without DNS, from the loop */
	struct dmarc_eval *e;
	dmarc_done_cb cb;
	void *arg;
	struct slot *out; /* outstanding queries */
};

static void finish(struct dmarc_check *c)
{
	c->cb(c->arg, dmarc_eval_outcome(c->e));
	dmarc_check_cancel(c);
}

static void on_answer(void *arg, const struct dns_result *r);

/*
 * Asks every question the machine has now. Returns true when the
 * evaluation is done (the caller then finishes it).
 */
static bool pump(struct dmarc_check *c)
{
	struct dmarc_query q;

	for (;;) {
		switch (dmarc_eval_next(c->e, &q)) {
		case DMARC_STEP_DONE:
			return true;
		case DMARC_STEP_WAIT:
			/* waiting with nothing outstanding would hang forever */
			if (TERN_BUG_ON(c->out == NULL))
				return true;
			return false;
		case DMARC_STEP_QUERY:
			break;
		}
		struct slot *s = calloc(1, sizeof(*s));
		if (s) {
			s->c = c;
			s->id = q.id;
			s->qid = dns_query(c->res, q.name, q.rrtype, on_answer, s);
		}
		if (!s || s->qid < 0) {
			/* could not even ask: a temporary DNS failure */
			free(s);
			dmarc_eval_answer(c->e, q.id, DNS_TEMPFAIL, NULL, 0);
			continue;
		}
		s->next = c->out;
		c->out = s;
	}
}

static void on_answer(void *arg, const struct dns_result *r)
{
	struct slot *s = arg;
	struct dmarc_check *c = s->c;

	for (struct slot **pp = &c->out; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	}
	dmarc_eval_answer(c->e, s->id, r->status, (const char *const *)r->txt,
	                  r->rrtype == DNS_TXT ? r->n : 0);
	free(s);
	if (pump(c))
		finish(c);
}

static void on_done_ev(evutil_socket_t fd, short what, void *arg)
{
	finish(arg);
}

struct dmarc_check *dmarc_check_async(struct dns_resolver *res, struct event_base *base,
                                      const struct dmarc_input *in, dmarc_done_cb cb, void *arg)
{
	struct dmarc_check *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->res = res;
	c->cb = cb;
	c->arg = arg;
	c->e = dmarc_eval_new(in);
	c->done_ev = event_new(base, -1, 0, on_done_ev, c);
	if (!c->e || !c->done_ev) {
		dmarc_check_cancel(c);
		return NULL;
	}
	if (pump(c))
		event_active(c->done_ev, 0, 0);
	return c;
}

void dmarc_check_cancel(struct dmarc_check *c)
{
	if (!c)
		return;
	while (c->out) {
		struct slot *s = c->out;
		c->out = s->next;
		dns_cancel(c->res, s->qid);
		free(s);
	}
	if (c->done_ev)
		event_free(c->done_ev);
	dmarc_eval_free(c->e);
	free(c);
}
