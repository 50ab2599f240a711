/*
 * spf_zone.h — an in-memory DNS zone that answers the SPF evaluator's
 * questions (struct spf_dns), the way the OpenSPF reference driver (pyspf
 * test/testspf.py) serves a scenario's zonedata:
 *
 *   - a name's entries are kept in order; a bare TIMEOUT entry makes the
 *     query time out unless a record of the queried type came before it
 *     (then the answer stops there); an entry whose value is TIMEOUT times
 *     out queries of its own type;
 *   - empty labels of the query name are dropped, a label over 63 octets
 *     times out (pydns 2.3); names match without regard to case;
 *   - an absent name is NXDOMAIN, except under "error.", which times out;
 *   - CNAMEs are followed; a loop answers no data (as pyspf's resolver).
 *
 * Test code only: header-only, static inline, aborts on out of memory.
 */
#ifndef TERN_TESTS_UNIT_SPF_ZONE_H
#define TERN_TESTS_UNIT_SPF_ZONE_H

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dns/dns.h"
#include "policy/spf.h"

#define ZONE_TIMEOUT (-1) /* a bare TIMEOUT entry */
#define ZONE_CNAME 5

struct zone_rr {
	int type;     /* DNS_A, ..., ZONE_CNAME, or ZONE_TIMEOUT */
	bool timeout; /* the value was TIMEOUT */
	char *data;   /* text (names, addresses) or TXT bytes; may hold NULs */
	size_t len;
	unsigned pref; /* MX */
};

struct zone_name {
	char *name; /* lowercase, no trailing dot */
	struct zone_rr *rr;
	size_t n;
};

struct zone {
	struct zone_name *names;
	size_t n;
	/* the last answer's storage, replaced by each query */
	struct in_addr *a;
	struct in6_addr *aaaa;
	struct strv *sv;
	/* what was asked, for tests that count */
	size_t queries;
	char last[SPF_NAME_MAX + 1];
	int last_type;
};

static inline void *zone_xalloc(void *p)
{
	if (!p) {
		fprintf(stderr, "spf_zone: out of memory\n");
		abort();
	}
	return p;
}

static inline char *zone_lower_name(const char *s, size_t n)
{
	char *d = zone_xalloc(malloc(n + 1));
	for (size_t i = 0; i < n; i++)
		d[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] - 'A' + 'a') : s[i];
	d[n] = '\0';
	if (n > 0 && d[n - 1] == '.')
		d[n - 1] = '\0';
	return d;
}

static inline struct zone_name *zone_find(struct zone *z, const char *name)
{
	for (size_t i = 0; i < z->n; i++) {
		if (strcmp(z->names[i].name, name) == 0)
			return &z->names[i];
	}
	return NULL;
}

static inline struct zone_name *zone_name_get(struct zone *z, const char *name)
{
	char *low = zone_lower_name(name, strlen(name));
	struct zone_name *zn = zone_find(z, low);
	if (zn) {
		free(low);
		return zn;
	}
	z->names = zone_xalloc(realloc(z->names, (z->n + 1) * sizeof(*z->names)));
	zn = &z->names[z->n++];
	memset(zn, 0, sizeof(*zn));
	zn->name = low;
	return zn;
}

/* Appends one entry (data may be NULL for ZONE_TIMEOUT). */
static inline void zone_add_rr(struct zone *z, const char *name, int type, const char *data,
                               size_t len, unsigned pref, bool timeout)
{
	struct zone_name *zn = zone_name_get(z, name);
	zn->rr = zone_xalloc(realloc(zn->rr, (zn->n + 1) * sizeof(*zn->rr)));
	struct zone_rr *r = &zn->rr[zn->n++];
	r->type = type;
	r->timeout = timeout;
	r->pref = pref;
	r->len = data ? len : 0;
	r->data = zone_xalloc(malloc(r->len + 1));
	if (data)
		memcpy(r->data, data, len);
	r->data[r->len] = '\0';
}

static inline void zone_add(struct zone *z, const char *name, int type, const char *text)
{
	zone_add_rr(z, name, type, text, strlen(text), 0, false);
}

static inline void zone_add_mx(struct zone *z, const char *name, unsigned pref, const char *host)
{
	zone_add_rr(z, name, DNS_MX, host, strlen(host), pref, false);
}

static inline void zone_add_timeout(struct zone *z, const char *name)
{
	zone_add_rr(z, name, ZONE_TIMEOUT, NULL, 0, 0, false);
}

static inline void zone_free(struct zone *z)
{
	for (size_t i = 0; i < z->n; i++) {
		for (size_t j = 0; j < z->names[i].n; j++)
			free(z->names[i].rr[j].data);
		free(z->names[i].rr);
		free(z->names[i].name);
	}
	free(z->names);
	free(z->a);
	free(z->aaaa);
	free(z->sv);
	memset(z, 0, sizeof(*z));
}

/* pydns 2.3 label handling: drop empty labels; false if one is over 63. */
static inline bool zone_norm(const char *in, char *out, size_t outlen)
{
	size_t o = 0;
	const char *p = in;
	while (*p) {
		size_t l = strcspn(p, ".");
		if (l > 63)
			return false;
		if (l > 0) {
			if (o + l + 2 > outlen)
				return false;
			if (o)
				out[o++] = '.';
			for (size_t i = 0; i < l; i++)
				out[o++] =
				    (p[i] >= 'A' && p[i] <= 'Z') ? (char)(p[i] - 'A' + 'a') : p[i];
		}
		p += l;
		if (*p == '.')
			p++;
	}
	out[o] = '\0';
	return true;
}

static inline void zone_resolve(void *arg, const struct spf_query *q, struct spf_answer *ans)
{
	struct zone *z = arg;
	char name[SPF_NAME_MAX + 1];
	char seen[11][SPF_NAME_MAX + 1];
	size_t nseen = 0;

	z->queries++;
	snprintf(z->last, sizeof(z->last), "%s", q->name);
	z->last_type = q->type;
	memset(ans, 0, sizeof(*ans));
	free(z->a);
	free(z->aaaa);
	free(z->sv);
	z->a = NULL;
	z->aaaa = NULL;
	z->sv = NULL;
	if (!zone_norm(q->name, name, sizeof(name))) {
		ans->status = SPF_DNS_TEMPFAIL;
		return;
	}
	for (int hop = 0;; hop++) {
		struct zone_name *zn = zone_find(z, name);
		if (!zn) {
			ans->status =
			    strncmp(name, "error.", 6) == 0 ? SPF_DNS_TEMPFAIL : SPF_DNS_NXDOMAIN;
			return;
		}
		/* the entries pyspf's DNSLookup would yield, in order */
		size_t upto = zn->n;
		bool timeout = true;
		for (size_t i = 0; i < zn->n; i++) {
			const struct zone_rr *r = &zn->rr[i];
			if (r->type == ZONE_TIMEOUT) {
				if (timeout) {
					ans->status = SPF_DNS_TEMPFAIL;
					return;
				}
				upto = i;
				break;
			}
			if (r->type == q->type)
				timeout = false;
			if (r->timeout && r->type == q->type) {
				ans->status = SPF_DNS_TEMPFAIL;
				return;
			}
		}
		size_t n = 0;
		const char *cname = NULL;
		for (size_t i = 0; i < upto; i++) {
			if (zn->rr[i].timeout)
				continue;
			if (zn->rr[i].type == q->type)
				n++;
			else if (zn->rr[i].type == ZONE_CNAME)
				cname = zn->rr[i].data;
		}
		if (n == 0 && cname) {
			snprintf(seen[nseen++], sizeof(seen[0]), "%s", name);
			if (!zone_norm(cname, name, sizeof(name)) || hop >= 9) {
				ans->status = SPF_DNS_TEMPFAIL;
				return;
			}
			for (size_t s = 0; s < nseen; s++) {
				if (strcmp(seen[s], name) == 0) {
					ans->status = SPF_DNS_NODATA; /* a loop */
					return;
				}
			}
			continue;
		}
		if (n == 0) {
			ans->status = SPF_DNS_NODATA;
			return;
		}
		ans->status = SPF_DNS_OK;
		ans->n = n;
		z->sv = zone_xalloc(calloc(n, sizeof(*z->sv)));
		z->a = zone_xalloc(calloc(n, sizeof(*z->a)));
		z->aaaa = zone_xalloc(calloc(n, sizeof(*z->aaaa)));
		size_t k = 0;
		for (size_t i = 0; i < upto; i++) {
			const struct zone_rr *r = &zn->rr[i];
			if (r->timeout || r->type != q->type)
				continue;
			if (q->type == DNS_A && inet_pton(AF_INET, r->data, &z->a[k]) != 1)
				abort();
			if (q->type == DNS_AAAA && inet_pton(AF_INET6, r->data, &z->aaaa[k]) != 1)
				abort();
			z->sv[k++] = strv_make(r->data, r->len);
		}
		if (q->type == DNS_MX) {
			/* preference order, ties as listed (as dns.h does) */
			unsigned *pref = zone_xalloc(calloc(n, sizeof(*pref)));
			k = 0;
			for (size_t i = 0; i < upto; i++) {
				if (!zn->rr[i].timeout && zn->rr[i].type == DNS_MX)
					pref[k++] = zn->rr[i].pref;
			}
			for (size_t i = 1; i < n; i++) {
				for (size_t j = i; j > 0 && pref[j - 1] > pref[j]; j--) {
					unsigned tp = pref[j];
					pref[j] = pref[j - 1];
					pref[j - 1] = tp;
					struct strv ts = z->sv[j];
					z->sv[j] = z->sv[j - 1];
					z->sv[j - 1] = ts;
				}
			}
			free(pref);
		}
		ans->a = z->a;
		ans->aaaa = z->aaaa;
		ans->txt = z->sv;
		ans->names = z->sv;
		return;
	}
}

#endif
