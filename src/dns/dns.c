/*
 * dns.c — the asynchronous resolver: libunbound driven from a libevent loop.
 *
 * Owns: one ub_ctx per resolver, the table of outstanding queries, and the
 * translation of libunbound's answers into struct dns_result.
 *
 * How it stays on the loop: libunbound runs in threaded async mode (one
 * background thread per context does the network work); finished answers
 * come back through a pipe whose read end (ub_fd) is watched here with a
 * persistent EV_READ event. ub_process() in that event's callback invokes
 * our per-query callback, so user callbacks always run on the thread that
 * runs the resolver's event base, never on libunbound's thread.
 *
 * Every query ends exactly once: with libunbound's answer, with TEMPFAIL at
 * DNS_DEADLINE_SEC, or silently by dns_cancel / dns_resolver_free.
 *
 * Must never: call a user callback from inside dns_query or dns_cancel, call
 * the callback of a cancelled query, block the loop (no ub_wait, no
 * ub_resolve), or free the ub_ctx while ub_process is on the stack (a
 * callback may free the resolver; that is deferred until ub_process
 * returns).
 */
#include "dns/dns.h"

#include <errno.h>
#include <event2/event.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unbound.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/files.h"
#include "core/log.h"
#include "core/metrics.h"

#define DNS_BUCKETS 256

/*
 * No query waits longer than this, whatever libunbound does: with one
 * silent forwarder it gives up after about 5 s (see the options below), but
 * with several silent forwarders it was measured taking 40 s and more. A
 * session waiting on DNS must not wait on that.
 */
#define DNS_DEADLINE_SEC 10

/* RFC 1035 rcodes libunbound reports */
#define RCODE_NOERROR 0
#define RCODE_NXDOMAIN 3

struct dns_q {
	struct dns_resolver *res;
	struct dns_q *next; /* hash chain */
	int id;             /* ours, what the caller sees */
	int ub_id;          /* libunbound's async id */
	int rrtype;
	bool cancelled; /* cancelled but libunbound may still call back */
	struct event *deadline;
	dns_cb cb;
	void *arg;
	char qname[DNS_NAME_MAX + 1];
	struct timespec started; /* tern_dns_query_duration_seconds */
};

struct dns_resolver {
	struct event_base *base;
	struct ub_ctx *ctx;
	struct event *ev;
	int next_id;
	size_t n_pending;
	int depth;   /* > 0 while ub_process is on the stack */
	bool dying;  /* dns_resolver_free was called from inside a callback */
	bool broken; /* libunbound's pipe failed: no answer will ever come */
	struct dns_q *bucket[DNS_BUCKETS];
};

/* ------------------------------------------------------- query table */

static size_t bucket_of(int id)
{
	return (size_t)((unsigned)id % DNS_BUCKETS);
}

static struct dns_q *q_find(struct dns_resolver *res, int id)
{
	for (struct dns_q *q = res->bucket[bucket_of(id)]; q; q = q->next) {
		if (q->id == id)
			return q;
	}
	return NULL;
}

static void q_insert(struct dns_resolver *res, struct dns_q *q)
{
	size_t b = bucket_of(q->id);
	q->next = res->bucket[b];
	res->bucket[b] = q;
	res->n_pending++;
}

static void q_remove(struct dns_resolver *res, struct dns_q *q)
{
	struct dns_q **pp = &res->bucket[bucket_of(q->id)];
	while (*pp && *pp != q)
		pp = &(*pp)->next;
	if (*pp) {
		*pp = q->next;
		res->n_pending--;
	}
	q->next = NULL;
}

static void q_free(struct dns_q *q)
{
	if (q->deadline)
		event_free(q->deadline);
	free(q);
}

/* Positive, unique among outstanding queries; wraps after INT_MAX. */
static int next_id(struct dns_resolver *res)
{
	for (;;) {
		int id = res->next_id;
		res->next_id = (res->next_id == INT_MAX) ? 1 : res->next_id + 1;
		if (!q_find(res, id))
			return id;
	}
}

/* ------------------------------------------------------- answers */

static int set_error(char *err, size_t errlen, const char *what, int ubr)
{
	if (err && errlen)
		snprintf(err, errlen, "%s: %s", what, ub_strerror(ubr));
	return 0;
}

static int cmp_mx(const void *a, const void *b)
{
	const struct dns_mx *x = a, *y = b;
	return (x->preference > y->preference) - (x->preference < y->preference);
}

/* Stable sort (insertion): ties keep answer order, which the contract
 * promises; the router shuffles equal preferences itself. n is small. */
static void sort_mx(struct dns_mx *mx, size_t n)
{
	for (size_t i = 1; i < n; i++) {
		struct dns_mx tmp = mx[i];
		size_t j = i;
		while (j > 0 && cmp_mx(&mx[j - 1], &tmp) > 0) {
			mx[j] = mx[j - 1];
			j--;
		}
		mx[j] = tmp;
	}
}

/* Decodes every record of ur into r (already zeroed, rrtype set). Returns
 * DNS_OK, or DNS_ERROR for a malformed record or no memory. */
static enum dns_status fill_data(struct dns_result *r, const struct ub_result *ur)
{
	size_t n = 0;
	while (ur->data && ur->data[n])
		n++;
	if (n == 0)
		return DNS_ERROR;

	switch (r->rrtype) {
	case DNS_A:
		r->a = calloc(n, sizeof(*r->a));
		if (!r->a)
			return DNS_ERROR;
		for (size_t i = 0; i < n; i++) {
			if (ur->len[i] != 4)
				return DNS_ERROR;
			memcpy(&r->a[i], ur->data[i], 4);
			r->n++;
		}
		break;
	case DNS_AAAA:
		r->aaaa = calloc(n, sizeof(*r->aaaa));
		if (!r->aaaa)
			return DNS_ERROR;
		for (size_t i = 0; i < n; i++) {
			if (ur->len[i] != 16)
				return DNS_ERROR;
			memcpy(&r->aaaa[i], ur->data[i], 16);
			r->n++;
		}
		break;
	case DNS_MX:
		r->mx = calloc(n, sizeof(*r->mx));
		if (!r->mx)
			return DNS_ERROR;
		for (size_t i = 0; i < n; i++) {
			if (ur->len[i] < 0 || !dns_parse_mx((const uint8_t *)ur->data[i],
			                                    (size_t)ur->len[i], &r->mx[i]))
				return DNS_ERROR;
			r->n++;
		}
		sort_mx(r->mx, r->n);
		break;
	case DNS_TXT:
		r->txt = calloc(n, sizeof(*r->txt));
		if (!r->txt)
			return DNS_ERROR;
		for (size_t i = 0; i < n; i++) {
			if (ur->len[i] < 0 || !dns_parse_txt((const uint8_t *)ur->data[i],
			                                     (size_t)ur->len[i], &r->txt[i]))
				return DNS_ERROR;
			r->n++;
		}
		break;
	case DNS_PTR:
		r->ptr = calloc(n, sizeof(*r->ptr));
		if (!r->ptr)
			return DNS_ERROR;
		for (size_t i = 0; i < n; i++) {
			char name[DNS_NAME_MAX + 1];
			size_t used = 0;
			if (ur->len[i] < 0 ||
			    !dns_parse_name((const uint8_t *)ur->data[i], (size_t)ur->len[i], name,
			                    sizeof(name), &used) ||
			    used != (size_t)ur->len[i])
				return DNS_ERROR;
			r->ptr[i] = tern_strdup(name);
			if (!r->ptr[i])
				return DNS_ERROR;
			r->n++;
		}
		break;
	case DNS_TLSA:
		r->tlsa = calloc(n, sizeof(*r->tlsa));
		if (!r->tlsa)
			return DNS_ERROR;
		for (size_t i = 0; i < n; i++) {
			if (ur->len[i] < 0 || !dns_parse_tlsa((const uint8_t *)ur->data[i],
			                                      (size_t)ur->len[i], &r->tlsa[i]))
				return DNS_ERROR;
			r->n++;
		}
		break;
	default:
		return DNS_ERROR;
	}
	return DNS_OK;
}

/* Maps libunbound's verdict onto the contract's five statuses. */
static void fill_result(struct dns_result *r, int err, const struct ub_result *ur)
{
	if (err != 0 || !ur) {
		/* UB_SYNTAX: the name did not parse; UB_NOMEM: ours. Anything
		 * else (pipe, socket, servfail) is worth trying again. */
		r->status = (err == UB_SYNTAX || err == UB_NOMEM) ? DNS_ERROR : DNS_TEMPFAIL;
		return;
	}
	r->secure = ur->secure != 0;
	if (ur->bogus) {
		/* an answer that failed validation is never used */
		r->bogus = true;
		r->secure = false;
		r->status = DNS_TEMPFAIL;
		if (ur->why_bogus)
			r->why_bogus = tern_strdup(ur->why_bogus);
		return;
	}
	if (ur->rcode == RCODE_NXDOMAIN || ur->nxdomain) {
		r->status = DNS_NXDOMAIN;
		return;
	}
	if (ur->rcode != RCODE_NOERROR) {
		/* SERVFAIL, and REFUSED/FORMERR/NOTIMP from a forwarder, say
		 * nothing about the name: try again later */
		r->status = DNS_TEMPFAIL;
		return;
	}
	if (!ur->havedata) {
		r->status = DNS_NODATA;
		return;
	}
	r->status = fill_data(r, ur);
	if (r->status != DNS_OK) {
		bool sec = r->secure;
		dns_result_free(r);
		r->secure = sec;
	}
}

/* Hands r to q's callback, then frees r's contents. q is already out of the
 * table and is freed first: the callback may start, cancel or free anything. */
static void deliver(struct dns_q *q, struct dns_result *r)
{
	dns_cb cb = q->cb;
	void *cbarg = q->arg;
	metric_observe_since(M_DNS_QUERY_DURATION, &q->started);
	q_free(q);
	cb(cbarg, r);
	dns_result_free(r);
}

static void on_answer(void *arg, int err, struct ub_result *ur)
{
	struct dns_q *q = arg;
	struct dns_resolver *res = q->res;
	struct dns_result r;

	q_remove(res, q);
	if (q->cancelled) {
		/* only reachable if ub_cancel failed; the caller was told the
		 * query is gone, so stay silent */
		ub_resolve_free(ur);
		q_free(q);
		return;
	}
	memset(&r, 0, sizeof(r));
	r.rrtype = q->rrtype;
	tern_strlcpy(r.qname, q->qname, sizeof(r.qname));
	fill_result(&r, err, ur);
	ub_resolve_free(ur);
	if (r.status == DNS_TEMPFAIL || r.status == DNS_ERROR) {
		char qn[DNS_NAME_MAX * 2];
		log_debug("event=dns_fail qname=%s type=%d status=%s ub_err=%d bogus=%d",
		          log_quote(q->qname, strlen(q->qname), qn, sizeof(qn)), q->rrtype,
		          dns_status_name(r.status), err, r.bogus ? 1 : 0);
	}
	deliver(q, &r);
}

/* The query outlived DNS_DEADLINE_SEC: it ends in TEMPFAIL now and
 * libunbound's eventual answer is dropped. */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct dns_q *q = arg;
	struct dns_resolver *res = q->res;
	struct dns_result r;

	if (q->cancelled)
		return;
	memset(&r, 0, sizeof(r));
	r.status = DNS_TEMPFAIL;
	r.rrtype = q->rrtype;
	tern_strlcpy(r.qname, q->qname, sizeof(r.qname));
	char qn[DNS_NAME_MAX * 2];
	log_info("event=dns_timeout qname=%s type=%d after=%ds",
	         log_quote(q->qname, strlen(q->qname), qn, sizeof(qn)), q->rrtype,
	         DNS_DEADLINE_SEC);
	q_remove(res, q);
	if (ub_cancel(res->ctx, q->ub_id) != 0) {
		/* not expected (see dns_cancel); keep q so a late answer
		 * finds it cancelled and stays silent */
		dns_cb cb = q->cb;
		void *cbarg = q->arg;
		q->cancelled = true;
		q_insert(res, q);
		cb(cbarg, &r);
		return;
	}
	deliver(q, &r);
}

static void destroy(struct dns_resolver *res)
{
	if (res->ev) {
		event_del(res->ev);
		event_free(res->ev);
	}
	/* stops and joins libunbound's thread; pending queries die with it */
	if (res->ctx)
		ub_ctx_delete(res->ctx);
	for (size_t b = 0; b < DNS_BUCKETS; b++) {
		struct dns_q *q = res->bucket[b];
		while (q) {
			struct dns_q *next = q->next;
			q_free(q);
			q = next;
		}
		res->bucket[b] = NULL;
	}
	free(res);
}

/* Fails every outstanding query with TEMPFAIL: used when libunbound's pipe
 * broke, so their answers would never come. */
static void fail_all(struct dns_resolver *res)
{
	for (size_t b = 0; b < DNS_BUCKETS && !res->dying; b++) {
		struct dns_q *q;
		while (!res->dying && (q = res->bucket[b]) != NULL) {
			q_remove(res, q);
			if (!q->cancelled)
				ub_cancel(res->ctx, q->ub_id);
			if (q->cancelled) {
				q_free(q);
				continue;
			}
			struct dns_result r;
			memset(&r, 0, sizeof(r));
			r.status = DNS_TEMPFAIL;
			r.rrtype = q->rrtype;
			tern_strlcpy(r.qname, q->qname, sizeof(r.qname));
			deliver(q, &r);
		}
	}
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
	struct dns_resolver *res = arg;

	res->depth++;
	int r = ub_process(res->ctx);
	if (r != 0 && !res->dying) {
		log_error("event=dns_process_failed error=\"%s\"", ub_strerror(r));
		/* the background thread is gone: stop watching a dead pipe
		 * and tell everyone waiting, rather than leave them hanging */
		event_del(res->ev);
		res->broken = true;
		fail_all(res);
	}
	res->depth--;
	if (res->dying && res->depth == 0)
		destroy(res);
}

/* ------------------------------------------------------- public */

struct dns_resolver *dns_resolver_new(struct event_base *base, const char *const *forward,
                                      size_t n_forward, const char *trust_anchor_file, char *err,
                                      size_t errlen)
{
	struct dns_resolver *res = NULL;
	char ta_name[PATH_MAX + 32];
	int r, ta_fd = -1;

	if (err && errlen)
		err[0] = '\0';
	if (!base || (n_forward > 0 && !forward)) {
		if (err && errlen)
			snprintf(err, errlen, "dns: invalid arguments");
		return NULL;
	}
	res = calloc(1, sizeof(*res));
	if (!res) {
		if (err && errlen)
			snprintf(err, errlen, "dns: out of memory");
		return NULL;
	}
	res->base = base;
	res->next_id = 1;
	res->ctx = ub_ctx_create();
	if (!res->ctx) {
		if (err && errlen)
			snprintf(err, errlen, "dns: cannot create libunbound context");
		goto fail;
	}
	/* a thread, not a forked process: a fork would copy the daemon
	 * (and its privileges and fds) for every worker's resolver */
	if ((r = ub_ctx_async(res->ctx, 1)) != 0) {
		set_error(err, errlen, "dns: async", r);
		goto fail;
	}
	/* forwarders and the system resolver often live on 127.0.0.1 */
	if ((r = ub_ctx_set_option(res->ctx, "do-not-query-localhost:", "no")) != 0) {
		set_error(err, errlen, "dns: do-not-query-localhost", r);
		goto fail;
	}
	/*
	 * Bounded failure. libunbound's defaults suit a recursive server, not
	 * a stub with one forwarder: a silent forwarder takes 17 s or more to
	 * give up on, and is then written off for infra-host-ttl (15 min), so
	 * a forwarder that restarts keeps failing every query long after it
	 * is back. A 3 s cap on the retry timeout gives up after about 5 s
	 * (an answer that takes up to then still counts), and a 10 s
	 * host TTL lets a recovered forwarder back in within 10 s.
	 */
	static const char *const limits[][2] = {
	    {"infra-cache-max-rtt:", "3000"},
	    {"infra-host-ttl:", "10"},
	};
	for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
		if ((r = ub_ctx_set_option(res->ctx, limits[i][0], limits[i][1])) != 0) {
			set_error(err, errlen, limits[i][0], r);
			goto fail;
		}
	}
	/*
	 * libunbound answers some names itself (RFC 6761/6303 default local
	 * zones). As a stub behind a configured resolver it must not: "test."
	 * and "home.arpa." and the LAN/test-net reverse zones belong to
	 * whoever runs that resolver (our test zones live under .test), and
	 * so does the reverse zone of 127/8 (the policy module's reverse-DNS
	 * check of a 127.0.0.x client asks the resolver, which serves the
	 * same answers itself per RFC 6303). The localhost, .onion and
	 * .invalid answers stay local. "transparent"
	 * rather than "nodefault": libunbound 1.17's ub_ctx_set_option stores
	 * a nodefault zone's name with the type still attached, so it never
	 * matches; any other type also removes the default zone.
	 */
	static const char *const opts[][2] = {
	    {"unblock-lan-zones:", "yes"},
	    {"insecure-lan-zones:", "yes"},
	    {"local-zone:", "test. transparent"},
	    {"local-zone:", "home.arpa. transparent"},
	    {"local-zone:", "127.in-addr.arpa. transparent"},
	};
	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		if ((r = ub_ctx_set_option(res->ctx, opts[i][0], opts[i][1])) != 0) {
			set_error(err, errlen, opts[i][0], r);
			goto fail;
		}
	}
	for (size_t i = 0; i < n_forward; i++) {
		if (!forward[i] || (r = ub_ctx_set_fwd(res->ctx, forward[i])) != 0) {
			if (err && errlen)
				snprintf(err, errlen, "dns: bad forward address \"%s\"",
				         forward[i] ? forward[i] : "(null)");
			goto fail;
		}
	}
	if (n_forward == 0) {
		r = ub_ctx_resolvconf(res->ctx, "/etc/resolv.conf");
		if (r == UB_READFILE) {
			/* resolv.conf(5): no file means the local machine */
			log_warn("event=dns_no_resolv_conf using=127.0.0.1");
			r = ub_ctx_set_fwd(res->ctx, "127.0.0.1");
		}
		if (r != 0) {
			set_error(err, errlen, "dns: /etc/resolv.conf", r);
			goto fail;
		}
	}
	if (trust_anchor_file && trust_anchor_file[0]) {
		/* Through the file source (core/files.h), so that a typo fails
		 * here and the privilege-separated child reads the parent's
		 * copy; libunbound reads it (by name) at the finalize below. */
		int en;
		if (tern_file_lib_path(trust_anchor_file, ta_name, sizeof(ta_name), &ta_fd, &en) !=
		    TERN_OK) {
			if (err && errlen)
				snprintf(err, errlen, "dns: trust anchor file %s: %s",
				         trust_anchor_file,
				         en == EINVAL ? "not a regular file" : strerror(en));
			goto fail;
		}
		if ((r = ub_ctx_add_ta_file(res->ctx, ta_name)) != 0) {
			set_error(err, errlen, "dns: trust anchor", r);
			goto fail;
		}
	}
	/*
	 * libunbound applies its configuration (reads the trust anchor,
	 * builds its zones) lazily at the first query: on a worker, possibly
	 * after privileges were dropped, with the error surfacing as failed
	 * deliveries. Removing a zone that cannot exist makes it do that
	 * now, so a bad anchor or option fails here, at startup.
	 */
	if ((r = ub_ctx_zone_remove(res->ctx, "tern-finalize.invalid.")) != 0) {
		set_error(err, errlen, "dns: configuration", r);
		goto fail;
	}
	if (ta_fd >= 0) { /* read: the memfd behind ta_name can go */
		close(ta_fd);
		ta_fd = -1;
	}
	int fd = ub_fd(res->ctx);
	if (fd < 0) {
		if (err && errlen)
			snprintf(err, errlen, "dns: libunbound has no result fd");
		goto fail;
	}
	res->ev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, res);
	if (!res->ev || event_add(res->ev, NULL) != 0) {
		if (err && errlen)
			snprintf(err, errlen, "dns: cannot watch libunbound's fd");
		goto fail;
	}
	return res;
fail:
	if (ta_fd >= 0)
		close(ta_fd);
	destroy(res);
	return NULL;
}

void dns_resolver_free(struct dns_resolver *res)
{
	if (!res || res->dying)
		return;
	/* cancel first, so that no callback of ours runs even if answers
	 * are already waiting in the pipe (a callback of another query may
	 * be calling us from inside ub_process) */
	for (size_t b = 0; b < DNS_BUCKETS; b++) {
		for (struct dns_q *q = res->bucket[b]; q; q = q->next) {
			if (!q->cancelled) {
				ub_cancel(res->ctx, q->ub_id);
				q->cancelled = true;
			}
			if (q->deadline)
				event_del(q->deadline);
		}
	}
	if (res->depth > 0) {
		res->dying = true;
		event_del(res->ev);
		return;
	}
	destroy(res);
}

/* Presentation-format names as libunbound parses them: printable ASCII
 * (escapes such as "\." allowed), at most DNS_NAME_MAX characters so that
 * the name fits struct dns_result's qname. */
static bool name_ok(const char *name)
{
	size_t n = 0;
	for (const char *p = name; *p; p++, n++) {
		unsigned char c = (unsigned char)*p;
		if (c <= 0x20 || c >= 0x7f || n >= DNS_NAME_MAX)
			return false;
	}
	return n > 0;
}

static bool type_ok(int rrtype)
{
	switch (rrtype) {
	case DNS_A:
	case DNS_AAAA:
	case DNS_MX:
	case DNS_TXT:
	case DNS_PTR:
	case DNS_TLSA:
		return true;
	}
	return false;
}

int dns_query(struct dns_resolver *res, const char *name, int rrtype, dns_cb cb, void *arg)
{
	struct dns_q *q;
	int r;

	if (!res || res->dying || !cb || !name || !type_ok(rrtype))
		return TERN_EINVAL;
	if (res->broken)
		return TERN_EIO; /* and not a query that would wait forever */
	if (!name_ok(name))
		return TERN_ESYNTAX;
	q = calloc(1, sizeof(*q));
	if (!q)
		return TERN_ENOMEM;
	q->res = res;
	q->deadline = evtimer_new(res->base, on_deadline, q);
	if (!q->deadline) {
		free(q);
		return TERN_ENOMEM;
	}
	q->rrtype = rrtype;
	q->cb = cb;
	q->arg = arg;
	q->started = metric_now();
	tern_strlcpy(q->qname, name, sizeof(q->qname));
	tern_ascii_lower(q->qname);
	size_t l = strlen(q->qname);
	/* "example.com." and "example.com" are the same name; keep "." */
	if (l > 1 && q->qname[l - 1] == '.' && q->qname[l - 2] != '\\')
		q->qname[l - 1] = '\0';

	/* libunbound only queues the query here (its thread answers later),
	 * so the callback cannot run inside this call */
	r = ub_resolve_async(res->ctx, name, rrtype, 1 /* IN */, q, on_answer, &q->ub_id);
	if (r != 0) {
		char qn[DNS_NAME_MAX * 2];
		log_warn("event=dns_query_failed qname=%s error=\"%s\"",
		         log_quote(name, strlen(name), qn, sizeof(qn)), ub_strerror(r));
		q_free(q);
		if (r == UB_NOMEM)
			return TERN_ENOMEM;
		if (r == UB_SYNTAX)
			return TERN_ESYNTAX;
		return TERN_EIO;
	}
	struct timeval tv = {DNS_DEADLINE_SEC, 0};
	if (evtimer_add(q->deadline, &tv) != 0) {
		ub_cancel(res->ctx, q->ub_id);
		q_free(q);
		return TERN_EIO;
	}
	q->id = next_id(res);
	q_insert(res, q);
	return q->id;
}

void dns_cancel(struct dns_resolver *res, int query_id)
{
	struct dns_q *q;

	if (!res || query_id <= 0)
		return;
	q = q_find(res, query_id);
	if (!q || q->cancelled)
		return;
	if (ub_cancel(res->ctx, q->ub_id) == 0) {
		/* libunbound drops the answer without calling on_answer */
		q_remove(res, q);
		q_free(q);
		return;
	}
	/* libunbound no longer knows the id (it forgets a query only just
	 * before calling on_answer, so this is not expected); keep q so that
	 * a late on_answer finds it and stays silent */
	q->cancelled = true;
	event_del(q->deadline);
}
