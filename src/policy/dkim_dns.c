/*
 * dkim_dns.c — where a verifier's key records come from: the async
 * resolver (dns/dns.h) with a per-message deadline, for the daemon and
 * `tern dkim verify`; or a fixed table, for tests and `--dns-file`.
 *
 * Owns: turning resolver outcomes into DKIM's (NXDOMAIN and NODATA are "no
 * key", SERVFAIL, timeouts and bogus DNSSEC are temporary) and the deadline.
 * Never: blocks (everything runs on the resolver's event base), calls the
 * caller's done() from inside dkim_verify_dns_start, or after
 * dkim_dns_free.
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/err.h"
#include "dns/dns.h"
#include "policy/dkim_internal.h"

/* ------------------------------------------------------------ key table */

struct keytab_entry {
	char *name;
	char *txt; /* NULL: TEMPFAIL */
};

struct dkim_keytab {
	struct keytab_entry *e;
	size_t n;
};

void dkim_keytab_free(struct dkim_keytab *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n; i++) {
		free(t->e[i].name);
		free(t->e[i].txt);
	}
	free(t->e);
	free(t);
}

static bool is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

int dkim_keytab_parse(const char *text, size_t len, struct dkim_keytab **out, char *err,
                      size_t errlen)
{
	struct dkim_keytab *t = calloc(1, sizeof(*t));
	int rc = TERN_ENOMEM;
	unsigned lineno = 0;
	*out = NULL;
	if (!t)
		goto fail;
	for (size_t i = 0; i < len;) {
		const char *nl = memchr(text + i, '\n', len - i);
		size_t e = nl ? (size_t)(nl - text) : len, a = i;
		lineno++;
		i = nl ? e + 1 : len;
		while (a < e && is_ws(text[a]))
			a++;
		while (e > a && is_ws(text[e - 1]))
			e--;
		if (a == e || text[a] == '#')
			continue;
		size_t ne = a;
		while (ne < e && !is_ws(text[ne]))
			ne++;
		size_t vs = ne;
		while (vs < e && is_ws(text[vs]))
			vs++;
		size_t nlen = ne - a;
		if (nlen > 0 && text[a + nlen - 1] == '.')
			nlen--; /* a trailing dot is the same name */
		rc = TERN_ESYNTAX;
		if (vs == e || nlen == 0 || nlen > 253 || memchr(text + a, '\0', e - a)) {
			snprintf(err, errlen, "line %u: expected NAME VALUE", lineno);
			goto fail;
		}
		rc = TERN_ENOMEM;
		struct keytab_entry *ne2 = realloc(t->e, (t->n + 1) * sizeof(*ne2));
		if (!ne2)
			goto fail;
		t->e = ne2;
		struct keytab_entry *en = &t->e[t->n];
		en->name = tern_strndup(text + a, nlen);
		bool temp = e - vs == 8 && memcmp(text + vs, "TEMPFAIL", 8) == 0;
		en->txt = temp ? NULL : tern_strndup(text + vs, e - vs);
		t->n++;
		if (!en->name || (!temp && !en->txt))
			goto fail;
	}
	*out = t;
	return TERN_OK;
fail:
	if (rc == TERN_ENOMEM)
		snprintf(err, errlen, "out of memory");
	dkim_keytab_free(t);
	return rc;
}

enum dkim_lookup dkim_keytab_get(const struct dkim_keytab *t, const char *name, const char **txt,
                                 size_t max, size_t *n)
{
	*n = 0;
	for (size_t i = 0; t && i < t->n; i++) {
		if (strcasecmp(t->e[i].name, name) != 0)
			continue;
		if (!t->e[i].txt) {
			*n = 0;
			return DKIM_LOOKUP_TEMPFAIL;
		}
		if (*n < max)
			txt[(*n)++] = t->e[i].txt;
	}
	return *n ? DKIM_LOOKUP_OK : DKIM_LOOKUP_NOTFOUND;
}

void dkim_keytab_lookup(void *arg, struct dkim_verify *v, unsigned qid, const char *name)
{
	const char *txt[DKIM_KEY_RECORDS_MAX];
	size_t n;
	enum dkim_lookup st = dkim_keytab_get(arg, name, txt, DKIM_KEY_RECORDS_MAX, &n);
	dkim_verify_key_answer(v, qid, st, txt, n);
}

/* ------------------------------------------------------------ resolver */

struct dkim_dns;

struct dns_slot {
	struct dkim_dns *d;
	unsigned qid;
	const char *name; /* the verifier's, stable until it is freed */
	int id;           /* the resolver's query id; 0 once answered */
};

struct dkim_dns {
	const struct dkim_keyq_ops *ops;
	void *v;
	struct dns_resolver *res;
	struct event *deadline;
	struct event *kick; /* calls done on the next loop turn */
	struct dns_slot *slot;
	size_t n, live;
	void (*done)(void *arg);
	void *arg;
	bool finished;
};

static void finish(struct dkim_dns *d)
{
	if (d->finished)
		return;
	d->finished = true;
	if (d->deadline)
		event_del(d->deadline);
	d->done(d->arg);
}

static void on_answer(void *arg, const struct dns_result *r)
{
	struct dns_slot *s = arg;
	struct dkim_dns *d = s->d;
	enum dkim_lookup st;
	switch (r->status) {
	case DNS_OK:
		st = DKIM_LOOKUP_OK;
		break;
	case DNS_NODATA:
	case DNS_NXDOMAIN:
		st = DKIM_LOOKUP_NOTFOUND;
		break;
	default:
		st = DKIM_LOOKUP_TEMPFAIL; /* SERVFAIL, timeouts, bogus DNSSEC, errors */
		break;
	}
	s->id = 0;
	d->live--;
	d->ops->answer(d->v, s->qid, st, st == DKIM_LOOKUP_OK ? (const char *const *)r->txt : NULL,
	               st == DKIM_LOOKUP_OK ? r->n : 0);
	if (d->live == 0)
		finish(d); /* may free d: nothing after */
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct dkim_dns *d = arg;
	for (size_t i = 0; i < d->n; i++)
		if (d->slot[i].id > 0) {
			dns_cancel(d->res, d->slot[i].id);
			d->slot[i].id = 0;
		}
	d->live = 0;
	d->ops->expire(d->v);
	finish(d);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	finish(arg);
}

static const char *dv_next(void *obj, unsigned *qid)
{
	return dkim_verify_next_query(obj, qid);
}

static void dv_answer(void *obj, unsigned qid, enum dkim_lookup st, const char *const *txt,
                      size_t n)
{
	dkim_verify_key_answer(obj, qid, st, txt, n);
}

static void dv_expire(void *obj)
{
	dkim_verify_expire(obj);
}

static const struct dkim_keyq_ops dv_ops = {dv_next, dv_answer, dv_expire};

struct dkim_dns *dkim_verify_dns_start(struct dkim_verify *v, struct dns_resolver *res,
                                       struct event_base *base, unsigned timeout_ms,
                                       void (*done)(void *arg), void *arg)
{
	return dkim_keyq_dns_start(&dv_ops, v, res, base, timeout_ms, done, arg);
}

struct dkim_dns *dkim_keyq_dns_start(const struct dkim_keyq_ops *ops, void *v,
                                     struct dns_resolver *res, struct event_base *base,
                                     unsigned timeout_ms, void (*done)(void *arg), void *arg)
{
	struct dkim_dns *d = calloc(1, sizeof(*d));
	const char *name;
	unsigned qid;
	if (!d)
		return NULL;
	d->ops = ops;
	d->v = v;
	d->res = res;
	d->done = done;
	d->arg = arg;
	d->deadline = evtimer_new(base, on_deadline, d);
	d->kick = evtimer_new(base, on_kick, d);
	if (!d->deadline || !d->kick)
		goto fail;
	while ((name = ops->next(v, &qid)) != NULL) {
		struct dns_slot *ns = realloc(d->slot, (d->n + 1) * sizeof(*ns));
		if (!ns)
			goto fail;
		d->slot = ns;
		d->slot[d->n++] = (struct dns_slot){d, qid, name, 0};
	}
	/* every slot exists before the first query: no realloc moves one that
	 * a pending callback points at */
	for (size_t i = 0; i < d->n; i++) {
		int id = dns_query(res, d->slot[i].name, DNS_TXT, on_answer, &d->slot[i]);
		if (id > 0) {
			d->slot[i].id = id;
			d->live++;
		} else {
			ops->answer(v, d->slot[i].qid, DKIM_LOOKUP_TEMPFAIL, NULL, 0);
		}
	}
	struct timeval zero = {0, 0};
	struct timeval tv = {(time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000) * 1000};
	if (d->live == 0)
		evtimer_add(d->kick, &zero);
	else if (timeout_ms > 0)
		evtimer_add(d->deadline, &tv);
	return d;
fail:
	dkim_dns_free(d);
	return NULL;
}

void dkim_dns_free(struct dkim_dns *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->n; i++)
		if (d->slot[i].id > 0)
			dns_cancel(d->res, d->slot[i].id);
	if (d->deadline)
		event_free(d->deadline);
	if (d->kick)
		event_free(d->kick);
	free(d->slot);
	free(d);
}
