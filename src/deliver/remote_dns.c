/*
 * remote_dns.c — where a remote connection goes: its next hop's targets,
 * resolved on the worker's async resolver (RFC 5321 §5.1). A route or
 * relayhost names its host; otherwise the domain's MX records, sorted by
 * preference and shuffled within one (the domain itself when there are
 * none; a null MX, RFC 7505, refuses mail). Then each host's addresses,
 * IPv6 before IPv4, its TLSA records where DANE may apply (RFC 7672: a
 * DNSSEC-secure MX answer and secure addresses), and for MX delivery the
 * domain's MTA-STS policy (RFC 8461; the TXT record and the policy host's
 * address here, the HTTPS fetch on the remote's pool), which may drop MX
 * hosts it does not name and raise the TLS level. The targets go to
 * remote.c's rconn_next_target in order.
 *
 * Must never: block (every lookup is async, the policy fetch on a pool);
 * follow more than MAX_MX hosts or keep more than MAX_TARGETS addresses;
 * treat a temporary DNS failure as permanent (4.4.3, retried) or a
 * missing domain as temporary (5.1.2); deliver to ourselves (rconn_is_self:
 * 5.4.6).
 */
#include "deliver/remote_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "core/runtime.h"
#include "deliver/shaping.h"

/* ---------------------------------------------------------------- DNS */

static void add_target(struct rconn *c, const char *host, int family, const void *addr)
{
	if (c->n_targets == MAX_TARGETS)
		return;
	struct target *t = &c->targets[c->n_targets];
	memset(t, 0, sizeof(*t));
	tern_strlcpy(t->host, host, sizeof(t->host));
	if (family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&t->ss;
		in->sin_family = AF_INET;
		in->sin_port = htons(c->port);
		memcpy(&in->sin_addr, addr, 4);
		t->len = sizeof(*in);
	} else {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&t->ss;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(c->port);
		memcpy(&in6->sin6_addr, addr, 16);
		t->len = sizeof(*in6);
	}
	c->n_targets++;
}

static void fail_dns(struct rconn *c, bool perm, const char *status, const char *text)
{
	rconn_set_error(c, perm, status, "%s", text);
	log_info("event=dns_failed id=%s domain=%s status=%s reason=\"%s\"",
	         c->job ? c->job->id : "-", c->domain, status, text);
	rconn_job_finish(c);
	struct remote_job *nj;
	while ((nj = remote_dest_pop(c->r, c->dest, false)) != NULL) {
		c->job = nj;
		rconn_job_finish(c);
	}
	rconn_end(c);
}

/* All address lookups are in: order targets by MX preference (hosts are
 * already sorted and shuffled), IPv6 before IPv4 for each host. */
static void addresses_done(struct rconn *c)
{
	bool any_temp = false;
	for (size_t h = 0; h < c->n_hosts; h++) {
		struct host_addrs *ha = &c->hosts[h];
		/* RFC 7672 §2.2.2: TLSA records count only where the host's
		 * addresses are secure too (an insecure CNAME or A breaks the
		 * chain of trust to the TLSA base domain). */
		if (ha->addr_insecure && ha->dane != TLSP_DANE_NONE) {
			char qh[DNS_NAME_MAX * 4 + 8];
			log_info("event=dane_skipped id=%s host=%s reason=\"address records not "
			         "DNSSEC-secure\"",
			         c->job ? c->job->id : "-",
			         log_quote(ha->host, strlen(ha->host), qh, sizeof(qh)));
			ha->dane = TLSP_DANE_NONE;
		}
		for (size_t i = 0; i < ha->n6; i++)
			add_target(c, ha->host, AF_INET6, &ha->v6[i]);
		for (size_t i = 0; i < ha->n4; i++)
			add_target(c, ha->host, AF_INET, &ha->v4[i]);
		if (ha->st4 == DNS_TEMPFAIL || ha->st6 == DNS_TEMPFAIL)
			any_temp = true;
	}
	/* Never deliver to ourselves (RFC 5321 §5.1). */
	size_t kept = 0;
	bool dropped_self = false;
	for (size_t i = 0; i < c->n_targets; i++) {
		if (rconn_is_self(c, &c->targets[i])) {
			dropped_self = true;
			continue;
		}
		c->targets[kept++] = c->targets[i];
	}
	c->n_targets = kept;
	if (c->n_targets == 0) {
		if (dropped_self)
			fail_dns(c, true, "5.4.6",
			         "550 5.4.6 mail for this domain loops back to myself");
		else if (any_temp)
			fail_dns(c, false, "4.4.3",
			         "temporary DNS failure looking up the addresses of the mail hosts "
			         "(no answer from the resolver, or SERVFAIL)");
		else
			fail_dns(c, true, "5.1.2",
			         "550 5.1.2 the mail hosts of this domain have no address");
		return;
	}
	c->cur = 0;
	rconn_next_target(c);
}

static void on_addr_answer(void *arg, const struct dns_result *r)
{
	struct addr_query *q = arg;
	struct rconn *c = q->c;
	struct host_addrs *ha = &c->hosts[q->host];
	if (r->status == DNS_OK && !r->secure)
		ha->addr_insecure = true;
	if (q->family == AF_INET) {
		ha->st4 = r->status;
		for (size_t i = 0; r->status == DNS_OK && i < r->n && ha->n4 < 8; i++)
			ha->v4[ha->n4++] = r->a[i];
	} else {
		ha->st6 = r->status;
		for (size_t i = 0; r->status == DNS_OK && i < r->n && ha->n6 < 8; i++)
			ha->v6[ha->n6++] = r->aaaa[i];
	}
	if (--c->pending_dns == 0)
		addresses_done(c);
}

static void on_tlsa_answer(void *arg, const struct dns_result *r)
{
	struct addr_query *q = arg;
	struct rconn *c = q->c;
	struct host_addrs *ha = &c->hosts[q->host];
	ha->dane = tlsp_dane_of(r);
	if (ha->dane == TLSP_DANE_USABLE && (ha->tlsa = calloc(r->n, sizeof(*ha->tlsa)))) {
		for (size_t i = 0; i < r->n; i++) {
			const struct dns_tlsa *t = &r->tlsa[i];
			struct dns_tlsa *d = &ha->tlsa[ha->n_tlsa];
			if (!tlsp_tlsa_usable(t) || !(d->data = malloc(t->len)))
				continue;
			memcpy(d->data, t->data, t->len);
			d->len = t->len;
			d->usage = t->usage;
			d->selector = t->selector;
			d->mtype = t->mtype;
			ha->n_tlsa++;
		}
	}
	if (ha->dane == TLSP_DANE_USABLE && ha->n_tlsa == 0)
		ha->dane = TLSP_DANE_FAILED; /* out of memory: try again later */
	char q2[DNS_NAME_MAX * 4 + 8];
	static const char *const words[] = {"none", "usable", "unusable", "failed"};
	log_info("event=dane_lookup id=%s host=%s secure=%s bogus=%s dane=%s records=%zu",
	         c->job ? c->job->id : "-", log_quote(ha->host, strlen(ha->host), q2, sizeof(q2)),
	         r->secure ? "yes" : "no", r->bogus ? "yes" : "no", words[ha->dane], ha->n_tlsa);
	if (--c->pending_dns == 0)
		addresses_done(c);
}

/* Is DANE looked for at these hosts? Only with a validating resolver, and
 * for MX delivery only when the MX answer was secure (the TLSA base domain
 * must itself be authentic), or for a route that asks for "dane" (its host
 * comes from the config). */
static bool dane_wanted(const struct rconn *c)
{
	if (!c->conf->dns.trust_anchor_file)
		return false;
	if (c->route)
		return c->route->tls == CONF_TLS_DANE;
	return c->conf->delivery.dane && c->mx_secure;
}

static void query_addresses(struct rconn *c)
{
	bool dane = dane_wanted(c);
	c->pending_dns = (int)c->n_hosts * (dane ? 3 : 2);
	for (size_t h = 0; dane && h < c->n_hosts; h++) {
		char name[DNS_NAME_MAX + 16];
		struct addr_query *q = &c->tq[h];
		q->c = c;
		q->host = h;
		q->family = 0;
		snprintf(name, sizeof(name), "_%u._tcp.%s", (unsigned)c->port, c->hosts[h].host);
		if (dns_query(c->res, name, DNS_TLSA, on_tlsa_answer, q) < 0) {
			c->hosts[h].dane = TLSP_DANE_FAILED;
			c->pending_dns--; /* never 0 here: the address lookups follow */
		}
	}
	for (size_t h = 0; h < c->n_hosts; h++) {
		for (int k = 0; k < 2; k++) {
			struct addr_query *q = &c->aq[h][k];
			q->c = c;
			q->host = h;
			q->family = k == 0 ? AF_INET6 : AF_INET;
			int rc = dns_query(c->res, c->hosts[h].host, k == 0 ? DNS_AAAA : DNS_A,
			                   on_addr_answer, q);
			if (rc < 0) {
				if (k == 0)
					c->hosts[h].st6 = DNS_TEMPFAIL;
				else
					c->hosts[h].st4 = DNS_TEMPFAIL;
				if (--c->pending_dns == 0)
					addresses_done(c);
			}
		}
	}
}

/*
 * MTA-STS on the MX hosts (RFC 8461 §4.1): in enforce mode, hosts that match
 * no mx pattern are dropped and the rest must verify (target_level); none
 * left defers the mail. In testing mode a mismatch is only logged. false
 * when the connection ended here.
 */
static bool sts_apply(struct rconn *c)
{
	if (!c->sts_have || c->sts.mode == MTASTS_NONE)
		return true;
	size_t kept = 0;
	char q[DNS_NAME_MAX * 4 + 8];
	for (size_t h = 0; h < c->n_hosts; h++) {
		const char *host = c->hosts[h].host;
		bool match = mtasts_mx_match(&c->sts, host);
		if (!match) {
			log_warn("event=%s id=%s domain=%s mx=%s would_fail=\"MX host not in the "
			         "policy\"",
			         c->sts.mode == MTASTS_ENFORCE ? "mta_sts_mx_skipped"
			                                       : "mta_sts_testing",
			         c->job ? c->job->id : "-", c->domain,
			         log_quote(host, strlen(host), q, sizeof(q)));
			if (c->sts.mode == MTASTS_ENFORCE)
				continue;
		}
		c->hosts[kept] = c->hosts[h];
		c->hosts[kept].sts_enforce = c->sts.mode == MTASTS_ENFORCE;
		kept++;
	}
	c->n_hosts = kept;
	if (kept == 0) {
		char why[400];
		snprintf(why, sizeof(why),
		         "TLS required but no MX host of %s matches its MTA-STS policy (mode "
		         "enforce)",
		         c->domain);
		fail_dns(c, false, "4.7.5", why);
		return false;
	}
	return true;
}

static void on_mx(void *arg, const struct dns_result *r)
{
	struct rconn *c = arg;
	c->mx_secure = r->secure;
	if (r->status == DNS_NXDOMAIN) {
		fail_dns(c, true, "5.1.2",
		         "550 5.1.2 the recipient domain does not exist (NXDOMAIN)");
		return;
	}
	if (r->status == DNS_TEMPFAIL || r->status == DNS_ERROR) {
		fail_dns(c, false, "4.4.3",
		         r->bogus ? "DNSSEC validation failed for the MX lookup"
		                  : "temporary DNS failure looking up MX (no answer from the "
		                    "resolver, or SERVFAIL)");
		return;
	}
	if (r->status == DNS_NODATA || r->n == 0) {
		/* No MX: the domain itself is the implicit MX (RFC 5321 §5.1). */
		c->n_hosts = 1;
		tern_strlcpy(c->hosts[0].host, c->domain, sizeof(c->hosts[0].host));
		if (sts_apply(c))
			query_addresses(c);
		return;
	}
	if (r->n == 1 && r->mx[0].host[0] == '\0') {
		fail_dns(c, true, "5.1.10",
		         "556 5.1.10 the recipient domain accepts no mail (null MX, RFC 7505)");
		return;
	}
	/* Sorted by preference; shuffle runs of equal preference. */
	size_t n = 0;
	struct dns_mx mx[MAX_MX];
	for (size_t i = 0; i < r->n && n < MAX_MX; i++)
		if (r->mx[i].host[0])
			mx[n++] = r->mx[i];
	for (size_t i = 0; i < n;) {
		size_t j = i;
		while (j < n && mx[j].preference == mx[i].preference)
			j++;
		/* Fisher-Yates over the run mx[i .. j-1] (at least one entry). */
		for (size_t len = j - i; len > 1; len--) {
			size_t last = i + len - 1, s = i + (size_t)rand() % len;
			struct dns_mx tmp = mx[last];
			mx[last] = mx[s];
			mx[s] = tmp;
		}
		i = j;
	}
	c->n_hosts = n;
	for (size_t i = 0; i < n; i++) {
		memset(&c->hosts[i], 0, sizeof(c->hosts[i]));
		tern_strlcpy(c->hosts[i].host, mx[i].host, sizeof(c->hosts[i].host));
	}
	if (n)
		shaping_learn_mx(c->domain, c->hosts[0].host); /* a provider's MX: its site */
	if (sts_apply(c))
		query_addresses(c);
}

static void conn_resolve_mx(struct rconn *c)
{
	int q = dns_query(c->res, c->domain, DNS_MX, on_mx, c);
	if (q == TERN_ESYNTAX)
		fail_dns(c, true, "5.1.2",
		         "550 5.1.2 the recipient domain is not a valid DNS name");
	else if (q < 0)
		fail_dns(c, false, "4.4.3", "cannot start the MX lookup");
}

/* ------------------------------------------------------------ MTA-STS */

static bool sts_wanted(const struct rconn *c)
{
	return !c->route && c->conf->delivery.mta_sts && c->r->sts_pool;
}

static void sts_work(void *arg)
{
	struct sts_job *j = arg;
	mtasts_get(&j->q);
}

static void sts_unlink(struct remote *r, struct sts_job *j)
{
	pthread_mutex_lock(&r->lock);
	if (j->prev)
		j->prev->next = j->next;
	else
		r->sts_jobs = j->next;
	if (j->next)
		j->next->prev = j->prev;
	pthread_mutex_unlock(&r->lock);
}

/* On the connection's worker: the policy is known; the MX lookup follows. */
static void sts_done(void *arg)
{
	struct sts_job *j = arg;
	struct remote *r = j->r;
	sts_unlink(r, j);
	struct rconn *c = j->c;
	pthread_mutex_lock(&r->lock);
	bool stopping = r->stopping;
	pthread_mutex_unlock(&r->lock);
	if (!c || stopping) {
		/* gone, or shutting down: remote_free frees the connection and
		 * its job stays queued in the spool */
		if (c)
			c->sts_job = NULL;
		free(j);
		return;
	}
	c->sts_job = NULL;
	c->sts_have = j->q.have;
	if (j->q.have)
		c->sts = j->q.policy;
	char q[600];
	log_info("event=mta_sts id=%s domain=%s txt_id=%s mode=%s source=%s%s%s",
	         c->job ? c->job->id : "-", c->domain, c->sts_id[0] ? c->sts_id : "-",
	         j->q.have ? mtasts_mode_name(c->sts.mode) : "-", j->q.source,
	         j->q.why[0] ? " reason=" : "",
	         j->q.why[0] ? log_quote(j->q.why, strlen(j->q.why), q, sizeof(q)) : "");
	free(j);
	conn_resolve_mx(c);
}

static void sts_lookups_done(struct rconn *c)
{
	struct remote *r = c->r;
	if (c->sts_txt_records != 1)
		c->sts_id[0] = '\0'; /* §3.1: not exactly one STSv1 record: none */
	struct sts_job *j = calloc(1, sizeof(*j));
	if (!j) {
		conn_resolve_mx(c);
		return;
	}
	j->r = r;
	j->c = c;
	struct mtasts_req *q = &j->q;
	tern_strlcpy(q->domain, c->domain, sizeof(q->domain));
	tern_ascii_lower(q->domain);
	tern_strlcpy(q->id, c->sts_id, sizeof(q->id));
	tern_strlcpy(q->addr, c->sts_addr, sizeof(q->addr));
	q->port = c->conf->delivery.mta_sts_port;
	q->ca_pem = r->ca_pem;
	q->ca_len = r->ca_len;
	snprintf(q->cache_dir, sizeof(q->cache_dir), "%s/mta-sts", c->conf->data_dir);
	q->timeout =
	    c->conf->delivery.command_timeout < 60 ? c->conf->delivery.command_timeout : 60;
	q->now = time(NULL);
	pthread_mutex_lock(&r->lock);
	j->next = r->sts_jobs;
	if (j->next)
		j->next->prev = j;
	r->sts_jobs = j;
	pthread_mutex_unlock(&r->lock);
	c->sts_job = j;
	if (pool_submit(r->sts_pool, sts_work, c->w, sts_done, j) != TERN_OK) {
		sts_unlink(r, j);
		c->sts_job = NULL;
		free(j);
		conn_resolve_mx(c);
	}
}

static void on_sts_txt(void *arg, const struct dns_result *r)
{
	struct rconn *c = arg;
	for (size_t i = 0; r->status == DNS_OK && i < r->n; i++) {
		const char *t = r->txt[i];
		if (strncmp(t, "v=STSv1", 7) != 0)
			continue; /* §3.1: records of other kinds are ignored */
		c->sts_txt_records++;
		if (!mtasts_txt_parse(t, strlen(t), c->sts_id))
			c->sts_id[0] = '\0';
	}
	if (--c->sts_pending == 0)
		sts_lookups_done(c);
}

static void on_sts_addr(void *arg, const struct dns_result *r)
{
	struct rconn *c = arg;
	/* The first address that comes: A or AAAA. */
	if (r->status == DNS_OK && r->n > 0 && !c->sts_addr[0]) {
		if (r->rrtype == DNS_A)
			inet_ntop(AF_INET, &r->a[0], c->sts_addr, sizeof(c->sts_addr));
		else if (r->rrtype == DNS_AAAA)
			inet_ntop(AF_INET6, &r->aaaa[0], c->sts_addr, sizeof(c->sts_addr));
	}
	if (--c->sts_pending == 0)
		sts_lookups_done(c);
}

/* MX delivery with MTA-STS: the TXT record _mta-sts.DOMAIN and the address
 * of mta-sts.DOMAIN, then the policy (pool), then the MX lookup. */
static void sts_begin(struct rconn *c)
{
	char name[DNS_NAME_MAX + 16];
	c->sts_pending = 3;
	c->sts_txt_records = 0;
	c->sts_id[0] = c->sts_addr[0] = '\0';
	snprintf(name, sizeof(name), "_mta-sts.%s", c->domain);
	if (dns_query(c->res, name, DNS_TXT, on_sts_txt, c) < 0)
		c->sts_pending--;
	snprintf(name, sizeof(name), "mta-sts.%s", c->domain);
	if (dns_query(c->res, name, DNS_A, on_sts_addr, c) < 0)
		c->sts_pending--;
	if (dns_query(c->res, name, DNS_AAAA, on_sts_addr, c) < 0)
		c->sts_pending--;
	if (c->sts_pending == 0)
		sts_lookups_done(c);
}

/* Starts resolving the next hop of the connection's destination. */
void rconn_resolve(struct rconn *c)
{
	rconn_enter_state(c, RC_DNS);
	c->n_targets = c->cur = 0;
	if (c->route) {
		c->port = c->route->port;
		const char *h = c->route->host;
		struct in_addr a4;
		struct in6_addr a6;
		char lit[DNS_NAME_MAX + 1];
		tern_strlcpy(lit, h, sizeof(lit));
		size_t ll = strlen(lit);
		if (lit[0] == '[' && ll > 2 && lit[ll - 1] == ']') {
			memmove(lit, lit + 1, ll - 2);
			lit[ll - 2] = '\0';
		}
		if (inet_pton(AF_INET, lit, &a4) == 1) {
			add_target(c, h, AF_INET, &a4);
			rconn_next_target(c);
			return;
		}
		if (inet_pton(AF_INET6, lit, &a6) == 1) {
			add_target(c, h, AF_INET6, &a6);
			rconn_next_target(c);
			return;
		}
		c->n_hosts = 1;
		memset(&c->hosts[0], 0, sizeof(c->hosts[0]));
		tern_strlcpy(c->hosts[0].host, h, sizeof(c->hosts[0].host));
		query_addresses(c);
		return;
	}
	c->port = c->conf->delivery.remote_port;
	/* A domain literal needs no DNS. */
	size_t dl = strlen(c->domain);
	if (c->domain[0] == '[' && dl > 2 && c->domain[dl - 1] == ']') {
		char lit[DNS_NAME_MAX + 1];
		tern_strlcpy(lit, c->domain + 1, sizeof(lit));
		lit[dl - 2] = '\0';
		struct in_addr a4;
		struct in6_addr a6;
		const char *v6 = strncasecmp(lit, "IPv6:", 5) == 0 ? lit + 5 : NULL;
		if (!v6 && inet_pton(AF_INET, lit, &a4) == 1)
			add_target(c, c->domain, AF_INET, &a4);
		else if (v6 && inet_pton(AF_INET6, v6, &a6) == 1)
			add_target(c, c->domain, AF_INET6, &a6);
		addresses_done(c);
		return;
	}
	if (sts_wanted(c)) {
		sts_begin(c);
		return;
	}
	conn_resolve_mx(c);
}
