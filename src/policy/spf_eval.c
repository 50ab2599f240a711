/*
 * spf_eval.c — check_host() (RFC 7208 §4-§6) as an explicit, resumable
 * state machine driven by DNS answers.
 *
 * Owns: the evaluation of one identity: record lookup and selection, the
 * frames of include: (a stack) and redirect= (the frame is replaced), each
 * mechanism's queries, the limits of §4.6.4 (10 DNS-querying terms, 2 void
 * lookups, 10 MX names, 10 PTR names) plus a total query cap, the
 * validated PTR names (for "ptr" and %{p}, computed once per check), and
 * the explanation of a fail (§6.2).
 *
 * Must never: do I/O or block (a query is handed out with SPF_STEP_QUERY
 * and the answer comes back through spf_check_run), recurse on anything a
 * record controls (frames are an array bounded by the lookup limit), keep
 * a pointer into an answer past the call that carried it, or let a DNS
 * publisher's bytes reach the outcome unbounded or unescaped.
 */
#include "policy/spf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "core/err.h"
#include "dns/dns.h"

/* the top record plus one frame per include:, and every include: counts
 * against SPF_MAX_LOOKUPS, so this many can never be exceeded */
#define MAX_FRAMES (SPF_MAX_LOOKUPS + 2)
/* a domain-spec may expand to this much before it is cut to 253 (§7.3);
 * longer is a permerror rather than an unbounded allocation */
#define EXPAND_MAX 16384

/* Built-in explanation when the record has no exp= (§6.2 "either a
 * default explanation string or an empty explanation string"). */
static const char DEFAULT_EXP[] = "%{o} does not designate %{c} as permitted sender";

enum state {
	ST_START,    /* validate the <domain>, push the top frame */
	ST_FETCH,    /* ask for the top frame's TXT records */
	ST_EVAL,     /* evaluate term pc of the top frame, or its end */
	ST_MX_ADDR,  /* address of the next MX name */
	ST_PTR_ADDR, /* address of the next PTR name (validation) */
	ST_EXP,      /* fail: look up the exp= text */
	ST_EXP_TEXT, /* fail: expand the explanation */
	ST_DONE,
};

enum wait {
	W_NONE,
	W_RECORD,
	W_A,
	W_EXISTS,
	W_MX,
	W_MX_ADDR,
	W_PTR,
	W_PTR_ADDR,
	W_EXP,
};

struct frame {
	struct spf_record rec;
	bool have_rec;
	bool redirected; /* reached by redirect=: no record is permerror (§6.1) */
	char domain[SPF_NAME_MAX + 1];
	size_t domain_len;
	size_t pc;    /* next term; n_terms means "the end: redirect= or default" */
	bool counted; /* the lookup of term pc (or of redirect=) is counted */
};

struct spf_check {
	struct spf_limits lim;
	enum spf_identity id;
	struct spf_ip ip;
	char *sender; /* "local@domain", postmaster filled in */
	size_t sender_len, local_len;
	const char *odom; /* domain part of sender, trailing dot removed */
	size_t odom_len;
	char *helo;
	size_t helo_len;
	char *receiver;
	size_t receiver_len;
	char *default_exp;
	int64_t now;

	struct frame frames[MAX_FRAMES];
	size_t depth;

	enum state state;
	enum wait wait;
	struct spf_query q;

	/* the names of an mx mechanism being evaluated */
	char mx[SPF_MAX_MX_NAMES][SPF_NAME_MAX + 1];
	bool mx_ok[SPF_MAX_MX_NAMES];
	size_t mx_n, mx_i;

	/* validated domain names of <ip> (§5.5), computed at most once */
	enum { P_NOT, P_RUNNING, P_DONE } p_state;
	enum state p_resume;
	char ptr[SPF_MAX_PTR_NAMES][SPF_NAME_MAX + 1];
	bool ptr_valid[SPF_MAX_PTR_NAMES];
	size_t ptr_n, ptr_i;
	bool ptr_void; /* the PTR lookup itself found nothing */

	/* explanation */
	bool in_exp;
	char *exp_text; /* the exp= TXT record; NULL: the default */
	size_t exp_len;

	struct tbuf scratch;
	struct spf_outcome out;
};

void spf_limits_default(struct spf_limits *l)
{
	l->max_void = 2;
	l->max_queries = 128;
	l->timeout_ms = 20000;
}

/* ------------------------------------------------------- helpers */

static struct frame *top(struct spf_check *c)
{
	return &c->frames[c->depth - 1];
}

/* Copies printable ASCII; anything else (controls, non-ASCII, NUL) is '?'. */
static void copy_printable(char *dst, size_t dstlen, const char *src, size_t n)
{
	size_t o = 0;
	if (!dstlen)
		return;
	for (size_t i = 0; i < n && o + 1 < dstlen; i++) {
		unsigned char ch = (unsigned char)src[i];
		dst[o++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
	}
	dst[o] = '\0';
}

static void finish(struct spf_check *c, enum spf_result r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Ends the check with r (errors, none). Later answers are not expected. */
static void finish(struct spf_check *c, enum spf_result r, const char *fmt, ...)
{
	char buf[SPF_PROBLEM_MAX + 1];
	va_list ap;

	c->out.result = r;
	c->out.mechanism[0] = '\0';
	buf[0] = '\0';
	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(buf, sizeof(buf), fmt, ap);
		va_end(ap);
	}
	copy_printable(c->out.problem, sizeof(c->out.problem), buf, strlen(buf));
	c->state = ST_DONE;
	c->wait = W_NONE;
}

/* A name safe to put in a problem string: printable, bounded. */
static const char *shown(const char *p, size_t n, char *buf, size_t len)
{
	copy_printable(buf, len, p, n);
	return buf;
}

static bool ieq(const char *a, size_t an, const char *b, size_t bn)
{
	return an == bn && strncasecmp(a, b, an) == 0;
}

/* name is target or a subdomain of it (case-insensitive) */
static bool in_domain(const char *name, size_t nn, const char *target, size_t tn)
{
	if (ieq(name, nn, target, tn))
		return true;
	return nn > tn && name[nn - tn - 1] == '.' && strncasecmp(name + nn - tn, target, tn) == 0;
}

/* Hands out one query. False (and the check is over, or its explanation
 * given up) when the total query cap is reached. */
static bool ask(struct spf_check *c, int type, const char *name, enum wait w)
{
	if (c->out.queries >= c->lim.max_queries) {
		if (c->in_exp) {
			/* the result stands; explain it with the default and
			 * what is known of %{p}, asking nothing more */
			if (c->p_state == P_RUNNING)
				c->p_state = P_DONE;
			free(c->exp_text);
			c->exp_text = NULL;
			c->exp_len = 0;
			c->state = ST_EXP_TEXT;
			return false;
		}
		finish(c, SPF_PERMERROR, "more than %u DNS queries", c->lim.max_queries);
		return false;
	}
	c->out.queries++;
	tern_strlcpy(c->q.name, name, sizeof(c->q.name));
	c->q.type = type;
	c->wait = w;
	return true;
}

static int addr_type(const struct spf_check *c)
{
	return c->ip.family == AF_INET6 ? DNS_AAAA : DNS_A;
}

/* §4.6.4: one more DNS-querying term. */
static bool count_lookup(struct spf_check *c)
{
	if (++c->out.lookups > SPF_MAX_LOOKUPS) {
		finish(c, SPF_PERMERROR, "more than %d DNS-querying terms (RFC 7208 section 4.6.4)",
		       SPF_MAX_LOOKUPS);
		return false;
	}
	return true;
}

/* §4.6.4: one more term whose lookup found nothing. */
static bool count_void(struct spf_check *c)
{
	if (++c->out.void_lookups > c->lim.max_void) {
		finish(c, SPF_PERMERROR, "more than %u void DNS lookups (RFC 7208 section 4.6.4)",
		       c->lim.max_void);
		return false;
	}
	return true;
}

/* §7.3 p: the validated name to use for <domain> d: d itself, else a
 * subdomain of d, else the first; NULL (expands to "unknown") if none. */
static const char *choose_ptr(const struct spf_check *c, const char *d, size_t dn, size_t *len)
{
	const char *any = NULL;
	if (c->p_state != P_DONE)
		return NULL;
	for (size_t i = 0; i < c->ptr_n; i++) {
		if (c->ptr_valid[i] && ieq(c->ptr[i], strlen(c->ptr[i]), d, dn)) {
			*len = strlen(c->ptr[i]);
			return c->ptr[i];
		}
	}
	for (size_t i = 0; i < c->ptr_n; i++) {
		if (!c->ptr_valid[i])
			continue;
		if (in_domain(c->ptr[i], strlen(c->ptr[i]), d, dn)) {
			*len = strlen(c->ptr[i]);
			return c->ptr[i];
		}
		if (!any)
			any = c->ptr[i];
	}
	if (any)
		*len = strlen(any);
	return any;
}

static void macro_ctx(const struct spf_check *c, const char *d, size_t dn, struct spf_macro_ctx *m)
{
	memset(m, 0, sizeof(*m));
	m->sender = c->sender;
	m->sender_len = c->sender_len;
	m->local = c->sender;
	m->local_len = c->local_len;
	m->sender_dom = c->odom;
	m->sender_dom_len = c->odom_len;
	m->domain = d;
	m->domain_len = dn;
	m->helo = c->helo;
	m->helo_len = c->helo_len;
	m->ptr = choose_ptr(c, d, dn, &m->ptr_len);
	m->receiver = c->receiver;
	m->receiver_len = c->receiver_len;
	m->ip = &c->ip;
	m->now = c->now;
}

enum target { TARGET_OK, TARGET_INVALID, TARGET_TOO_LONG, TARGET_NOMEM };

/* <target-name> of a domain-spec (NULL: the current <domain>) in out. */
static enum target target_of(struct spf_check *c, const char *spec, size_t n, char *out,
                             size_t *olen)
{
	struct frame *f = top(c);
	if (!spec) {
		memcpy(out, f->domain, f->domain_len + 1);
		*olen = f->domain_len;
		return TARGET_OK;
	}
	struct spf_macro_ctx m;
	macro_ctx(c, f->domain, f->domain_len, &m);
	tbuf_reset(&c->scratch);
	int r = spf_macro_expand(spec, n, &m, SPF_MACRO_DOMAIN, &c->scratch);
	if (r == TERN_ENOMEM)
		return TARGET_NOMEM;
	if (r != TERN_OK)
		return TARGET_TOO_LONG;
	if (!spf_target_name(c->scratch.data ? c->scratch.data : "", c->scratch.len, out, olen))
		return TARGET_INVALID;
	return TARGET_OK;
}

/* §4.3 (and §2.3 for HELO): a multi-label domain name of LDH labels (and
 * '_', seen in the wild), each 1-63 long, at most 253 in all, whose last
 * label is not all digits. Address literals and odd bytes are not. */
static bool domain_ok(const char *d, size_t n)
{
	size_t labels = 0, label = 0, last = 0;
	bool alpha = false;

	if (n == 0 || n > SPF_NAME_MAX)
		return false;
	for (size_t i = 0; i <= n; i++) {
		if (i == n || d[i] == '.') {
			if (label == 0 || label > 63)
				return false;
			labels++;
			last = i - label;
			label = 0;
			continue;
		}
		unsigned char ch = (unsigned char)d[i];
		bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		          (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
		if (!ok)
			return false;
		label++;
	}
	for (size_t i = last; i < n; i++) {
		if ((d[i] < '0' || d[i] > '9') && d[i] != '-')
			alpha = true;
	}
	return labels >= 2 && alpha;
}

bool spf_helo_checkable(const char *helo)
{
	if (!helo)
		return false;
	size_t n = strlen(helo);
	if (n > 0 && helo[n - 1] == '.')
		n--;
	return domain_ok(helo, n);
}

/* ------------------------------------------------------- frames */

static void push(struct spf_check *c, const char *domain, size_t n)
{
	if (TERN_BUG_ON(c->depth >= MAX_FRAMES)) {
		finish(c, SPF_PERMERROR, "include nesting too deep");
		return;
	}
	struct frame *f = &c->frames[c->depth++];
	memset(f, 0, sizeof(*f));
	memcpy(f->domain, domain, n);
	f->domain[n] = '\0';
	f->domain_len = n;
	c->state = ST_FETCH;
}

static void term_done(struct spf_check *c, bool matched);

/* The record of the top frame came to a non-error result r, by term t
 * (NULL: no mechanism matched and there was no redirect=). */
static void frame_result(struct spf_check *c, enum spf_result r, const struct spf_term *t)
{
	if (c->depth > 1) {
		/* an include: frame: §5.2 pass -> match, fail/softfail/neutral
		 * -> no match (errors never get here: they end the check) */
		struct frame *f = top(c);
		spf_record_free(&f->rec);
		c->depth--;
		c->state = ST_EVAL;
		term_done(c, r == SPF_PASS);
		return;
	}
	c->out.result = r;
	if (t)
		copy_printable(c->out.mechanism, sizeof(c->out.mechanism), t->text, t->text_len);
	else
		tern_strlcpy(c->out.mechanism, "default", sizeof(c->out.mechanism));
	if (r == SPF_FAIL && t) {
		/* §6.2: only a fail "due to a mechanism match" is explained */
		c->in_exp = true;
		c->state = ST_EXP;
		return;
	}
	c->state = ST_DONE;
}

static enum spf_result qualifier_result(char q)
{
	switch (q) {
	case '-':
		return SPF_FAIL;
	case '~':
		return SPF_SOFTFAIL;
	case '?':
		return SPF_NEUTRAL;
	default:
		return SPF_PASS;
	}
}

static void term_done(struct spf_check *c, bool matched)
{
	struct frame *f = top(c);
	const struct spf_term *t = &f->rec.terms[f->pc];
	if (matched) {
		frame_result(c, qualifier_result(t->qualifier), t);
		return;
	}
	f->pc++;
	f->counted = false;
	c->state = ST_EVAL;
}

/* The top frame's domain has no usable record. */
static void no_record(struct spf_check *c, const char *why)
{
	struct frame *f = top(c);
	char d[80];
	shown(f->domain, f->domain_len, d, sizeof(d));
	if (c->depth == 1 && !f->redirected) {
		finish(c, SPF_NONE, "no SPF record at %s (%s)", d, why);
		return;
	}
	/* §5.2: include of "none" is permerror; §6.1: so is redirect= */
	finish(c, SPF_PERMERROR, "%s target %s has no SPF record (%s)",
	       f->redirected ? "redirect=" : "include:", d, why);
}

/* ------------------------------------------------------- validated PTR names */

static void ptr_begin(struct spf_check *c, enum state resume)
{
	char name[DNS_NAME_MAX + 1];
	c->p_state = P_RUNNING;
	c->p_resume = resume;
	c->ptr_n = c->ptr_i = 0;
	if (!dns_ptr_name(c->ip.family, c->ip.addr, name, sizeof(name))) {
		c->p_state = P_DONE;
		c->state = resume;
		return;
	}
	c->state = resume; /* if the cap stops ask() the check is over anyway */
	ask(c, DNS_PTR, name, W_PTR);
}

static void ptr_done(struct spf_check *c)
{
	c->p_state = P_DONE;
	c->state = c->p_resume;
}

static void got_ptr(struct spf_check *c, const struct spf_answer *a)
{
	if (a->status != SPF_DNS_OK) {
		/* §5.5: "If a DNS error occurs while doing the PTR RR lookup,
		 * then this mechanism fails to match" */
		c->ptr_void = a->status == SPF_DNS_NODATA || a->status == SPF_DNS_NXDOMAIN;
		ptr_done(c);
		return;
	}
	/* §4.6.4: "all records other than the first 10 MUST be ignored" */
	for (size_t i = 0; i < a->n && i < SPF_MAX_PTR_NAMES; i++) {
		size_t len;
		if (!a->names ||
		    !spf_target_name(a->names[i].p, a->names[i].n, c->ptr[c->ptr_n], &len))
			continue;
		c->ptr_valid[c->ptr_n++] = false;
	}
	c->ptr_i = 0;
	c->state = ST_PTR_ADDR;
}

static void ptr_next(struct spf_check *c)
{
	if (c->ptr_i >= c->ptr_n) {
		ptr_done(c);
		return;
	}
	ask(c, addr_type(c), c->ptr[c->ptr_i], W_PTR_ADDR);
}

static bool addr_matches(const struct spf_check *c, const struct spf_answer *a, unsigned c4,
                         unsigned c6)
{
	for (size_t i = 0; i < a->n; i++) {
		if (c->ip.family == AF_INET && a->a &&
		    spf_prefix_match(c->ip.addr, (const uint8_t *)&a->a[i], 4, c4))
			return true;
		if (c->ip.family == AF_INET6 && a->aaaa &&
		    spf_prefix_match(c->ip.addr, a->aaaa[i].s6_addr, 16, c6))
			return true;
	}
	return false;
}

static void got_ptr_addr(struct spf_check *c, const struct spf_answer *a)
{
	/* "If a DNS error occurs while doing an A RR lookup, then that
	 * domain name is skipped and the search continues." */
	if (a->status == SPF_DNS_OK && addr_matches(c, a, 32, 128))
		c->ptr_valid[c->ptr_i] = true;
	c->ptr_i++;
	c->state = ST_PTR_ADDR;
}

/* ------------------------------------------------------- the record */

static void got_record(struct spf_check *c, const struct spf_answer *a)
{
	struct frame *f = top(c);
	char d[80];

	if (a->status == SPF_DNS_TEMPFAIL) {
		finish(c, SPF_TEMPERROR, "DNS error looking up the TXT records of %s",
		       shown(f->domain, f->domain_len, d, sizeof(d)));
		return;
	}
	if (a->status == SPF_DNS_NXDOMAIN) {
		no_record(c, "no such domain");
		return;
	}
	size_t found = 0, which = 0;
	for (size_t i = 0; a->status == SPF_DNS_OK && a->txt && i < a->n; i++) {
		if (spf_record_is_spf1(a->txt[i].p, a->txt[i].n)) {
			found++;
			which = i;
		}
	}
	if (found == 0) {
		no_record(c, "no TXT record starts with v=spf1");
		return;
	}
	if (found > 1) {
		/* §4.5 */
		finish(c, SPF_PERMERROR, "%s publishes %zu SPF records",
		       shown(f->domain, f->domain_len, d, sizeof(d)), found);
		return;
	}
	char err[SPF_PROBLEM_MAX];
	int r = spf_record_parse(a->txt[which].p, a->txt[which].n, &f->rec, err, sizeof(err));
	if (r == TERN_ENOMEM) {
		finish(c, SPF_TEMPERROR, "out of memory");
		return;
	}
	if (r != TERN_OK) {
		finish(c, SPF_PERMERROR, "in the SPF record of %s: %s",
		       shown(f->domain, f->domain_len, d, sizeof(d)), err);
		return;
	}
	f->have_rec = true;
	f->pc = 0;
	f->counted = false;
	c->state = ST_EVAL;
}

/* Common failure words for a target that could not be made. */
static bool target_error(struct spf_check *c, enum target t)
{
	if (t == TARGET_NOMEM) {
		finish(c, SPF_TEMPERROR, "out of memory");
		return true;
	}
	if (t == TARGET_TOO_LONG) {
		finish(c, SPF_PERMERROR, "a macro expands to more than %d bytes", EXPAND_MAX);
		return true;
	}
	return false;
}

/* No mechanism matched: redirect= (§6.1) unless there is an "all" (§5.1),
 * else the default neutral (§4.7). */
static void end_of_record(struct spf_check *c)
{
	struct frame *f = top(c);
	if (!f->rec.redirect || f->rec.has_all) {
		frame_result(c, SPF_NEUTRAL, NULL);
		return;
	}
	if (!f->counted) {
		if (!count_lookup(c))
			return;
		f->counted = true;
	}
	if (spf_macro_uses_ptr(f->rec.redirect, f->rec.redirect_len) && c->p_state != P_DONE) {
		ptr_begin(c, ST_EVAL);
		return;
	}
	char target[SPF_NAME_MAX + 1];
	size_t tn = 0;
	enum target t = target_of(c, f->rec.redirect, f->rec.redirect_len, target, &tn);
	if (target_error(c, t))
		return;
	if (t == TARGET_INVALID) {
		/* §6.1: "if the <target-name> is malformed, the result is a
		 * permerror rather than none" */
		finish(c, SPF_PERMERROR, "redirect= does not expand to a domain name");
		return;
	}
	/* redirect= replaces the record: its exp= and its domain go too */
	spf_record_free(&f->rec);
	f->have_rec = false;
	f->redirected = true;
	memcpy(f->domain, target, tn + 1);
	f->domain_len = tn;
	f->pc = 0;
	f->counted = false;
	c->state = ST_FETCH;
}

static void eval(struct spf_check *c)
{
	struct frame *f = top(c);
	if (f->pc >= f->rec.n_terms) {
		end_of_record(c);
		return;
	}
	const struct spf_term *t = &f->rec.terms[f->pc];
	switch (t->mech) {
	case SPF_MECH_ALL:
		term_done(c, true);
		return;
	case SPF_MECH_IP4:
		term_done(c, c->ip.family == AF_INET &&
		                 spf_prefix_match(c->ip.addr, t->net, 4, t->cidr4));
		return;
	case SPF_MECH_IP6:
		term_done(c, c->ip.family == AF_INET6 &&
		                 spf_prefix_match(c->ip.addr, t->net, 16, t->cidr6));
		return;
	default:
		break;
	}
	if (!f->counted) {
		if (!count_lookup(c))
			return;
		f->counted = true;
	}
	bool need_p =
	    t->mech == SPF_MECH_PTR || (t->spec && spf_macro_uses_ptr(t->spec, t->spec_len));
	if (need_p && c->p_state != P_DONE) {
		ptr_begin(c, ST_EVAL);
		return;
	}
	char target[SPF_NAME_MAX + 1];
	size_t tn = 0;
	enum target tr = target_of(c, t->spec, t->spec_len, target, &tn);
	if (target_error(c, tr))
		return;
	if (tr == TARGET_INVALID) {
		if (t->mech == SPF_MECH_INCLUDE) {
			/* check_host() of a malformed domain is "none" (§4.3),
			 * and include of none is permerror (§5.2) */
			finish(c, SPF_PERMERROR, "include: does not expand to a domain name");
			return;
		}
		/* §4.8 leaves this undefined; like a name that does not
		 * exist, it matches nothing (the OpenSPF suite's first
		 * choice), without a query */
		term_done(c, false);
		return;
	}
	switch (t->mech) {
	case SPF_MECH_INCLUDE:
		push(c, target, tn);
		return;
	case SPF_MECH_A:
		ask(c, addr_type(c), target, W_A);
		return;
	case SPF_MECH_EXISTS:
		/* §5.7: an A query "even when the connection type is IPv6" */
		ask(c, DNS_A, target, W_EXISTS);
		return;
	case SPF_MECH_MX:
		ask(c, DNS_MX, target, W_MX);
		return;
	case SPF_MECH_PTR: {
		if (c->ptr_void && !count_void(c))
			return;
		bool m = false;
		for (size_t i = 0; i < c->ptr_n && !m; i++)
			m = c->ptr_valid[i] && in_domain(c->ptr[i], strlen(c->ptr[i]), target, tn);
		term_done(c, m);
		return;
	}
	default:
		(void)TERN_BUG_ON(true);
		finish(c, SPF_PERMERROR, "unknown mechanism");
	}
}

static void got_a(struct spf_check *c, const struct spf_answer *a, bool exists)
{
	const struct spf_term *t = &top(c)->rec.terms[top(c)->pc];
	if (a->status == SPF_DNS_TEMPFAIL) {
		char n[80];
		finish(c, SPF_TEMPERROR, "DNS error looking up %s for \"%s\"",
		       shown(c->q.name, strlen(c->q.name), n, sizeof(n)), exists ? "exists" : "a");
		return;
	}
	if (a->status != SPF_DNS_OK) {
		if (count_void(c))
			term_done(c, false);
		return;
	}
	if (exists) {
		term_done(c, a->n > 0);
		return;
	}
	term_done(c, addr_matches(c, a, t->cidr4, t->cidr6));
}

static void got_mx(struct spf_check *c, const struct spf_answer *a)
{
	char n[80];
	if (a->status == SPF_DNS_TEMPFAIL) {
		finish(c, SPF_TEMPERROR, "DNS error looking up the MX records of %s",
		       shown(c->q.name, strlen(c->q.name), n, sizeof(n)));
		return;
	}
	if (a->status != SPF_DNS_OK) {
		/* §5.4: no MX is no match, never an implicit MX */
		if (count_void(c))
			term_done(c, false);
		return;
	}
	if (a->n > SPF_MAX_MX_NAMES) {
		/* §4.6.4, §5.4: permerror, whichever of them would match */
		finish(c, SPF_PERMERROR, "%s has more than %d MX records",
		       shown(c->q.name, strlen(c->q.name), n, sizeof(n)), SPF_MAX_MX_NAMES);
		return;
	}
	c->mx_n = 0;
	for (size_t i = 0; i < a->n; i++) {
		size_t len;
		/* a null MX ("." or "") or a name that cannot be asked for
		 * has no address: it is skipped */
		c->mx_ok[c->mx_n] =
		    a->names && spf_target_name(a->names[i].p, a->names[i].n, c->mx[c->mx_n], &len);
		c->mx_n++;
	}
	c->mx_i = 0;
	c->state = ST_MX_ADDR;
}

static void mx_next(struct spf_check *c)
{
	while (c->mx_i < c->mx_n && !c->mx_ok[c->mx_i])
		c->mx_i++;
	if (c->mx_i >= c->mx_n) {
		term_done(c, false);
		return;
	}
	ask(c, addr_type(c), c->mx[c->mx_i], W_MX_ADDR);
}

static void got_mx_addr(struct spf_check *c, const struct spf_answer *a)
{
	const struct spf_term *t = &top(c)->rec.terms[top(c)->pc];
	if (a->status == SPF_DNS_TEMPFAIL) {
		char n[80];
		finish(c, SPF_TEMPERROR, "DNS error looking up MX host %s",
		       shown(c->q.name, strlen(c->q.name), n, sizeof(n)));
		return;
	}
	if (a->status == SPF_DNS_OK && addr_matches(c, a, t->cidr4, t->cidr6)) {
		term_done(c, true);
		return;
	}
	c->mx_i++;
	c->state = ST_MX_ADDR;
}

/* ------------------------------------------------------- explanation (§6.2) */

static void exp_default(struct spf_check *c)
{
	free(c->exp_text);
	c->exp_text = NULL;
	c->exp_len = 0;
	c->state = ST_EXP_TEXT;
}

static void exp_start(struct spf_check *c)
{
	struct frame *f = &c->frames[0];
	if (!f->rec.exp) {
		exp_default(c);
		return;
	}
	if (spf_macro_uses_ptr(f->rec.exp, f->rec.exp_len) && c->p_state != P_DONE) {
		ptr_begin(c, ST_EXP);
		return;
	}
	char target[SPF_NAME_MAX + 1];
	size_t tn = 0;
	/* anything wrong from here on means "as if no exp= was given" */
	if (target_of(c, f->rec.exp, f->rec.exp_len, target, &tn) != TARGET_OK) {
		exp_default(c);
		return;
	}
	ask(c, DNS_TXT, target, W_EXP);
}

static void got_exp(struct spf_check *c, const struct spf_answer *a)
{
	/* "any RCODE other than 0, or if no records are returned, or if
	 * more than one record is returned": the default */
	if (a->status != SPF_DNS_OK || a->n != 1 || !a->txt || a->txt[0].n > SPF_RECORD_MAX) {
		exp_default(c);
		return;
	}
	c->exp_text = malloc(a->txt[0].n + 1);
	if (!c->exp_text) {
		exp_default(c);
		return;
	}
	memcpy(c->exp_text, a->txt[0].p, a->txt[0].n);
	c->exp_text[a->txt[0].n] = '\0';
	c->exp_len = a->txt[0].n;
	c->state = ST_EXP_TEXT;
}

/* Expands the explanation (exp= text, else the default) into the outcome.
 * Never queries unless %{p} is used and not yet known. */
static void exp_text(struct spf_check *c, bool may_query)
{
	const char *text = c->exp_text;
	size_t len = c->exp_len;
	if (!text) {
		text = c->default_exp;
		len = strlen(text);
	}
	if (spf_macro_check(text, len, SPF_MACRO_EXPLAIN) != TERN_OK) {
		/* "if there are syntax errors in the explanation string,
		 * then proceed as if no exp modifier was given" (non-ASCII
		 * text fails this check too: §6.2 "MUST be limited to US-ASCII") */
		if (c->exp_text) {
			exp_default(c);
			return;
		}
		c->out.explanation[0] = '\0';
		c->state = ST_DONE;
		return;
	}
	if (may_query && spf_macro_uses_ptr(text, len) && c->p_state != P_DONE) {
		ptr_begin(c, ST_EXP_TEXT);
		return;
	}
	struct frame *f = &c->frames[0];
	struct spf_macro_ctx m;
	struct tbuf b = TBUF_INIT(SPF_EXP_MAX);
	macro_ctx(c, f->domain, f->domain_len, &m);
	if (spf_macro_expand(text, len, &m, SPF_MACRO_EXPLAIN, &b) == TERN_OK)
		copy_printable(c->out.explanation, sizeof(c->out.explanation), b.data ? b.data : "",
		               b.len);
	else
		c->out.explanation[0] = '\0';
	tbuf_free(&b);
	c->state = ST_DONE;
}

/* ------------------------------------------------------- driving */

static void start(struct spf_check *c)
{
	/* <domain> is the part after '@' of <sender>, trailing dot removed */
	if (!domain_ok(c->odom, c->odom_len)) {
		char d[80];
		finish(c, SPF_NONE,
		       "\"%s\" is not a multi-label domain name (RFC 7208 section 4.3)",
		       shown(c->odom, c->odom_len, d, sizeof(d)));
		return;
	}
	push(c, c->odom, c->odom_len);
}

static void advance(struct spf_check *c)
{
	while (c->state != ST_DONE && c->wait == W_NONE) {
		switch (c->state) {
		case ST_START:
			start(c);
			break;
		case ST_FETCH:
			ask(c, DNS_TXT, top(c)->domain, W_RECORD);
			break;
		case ST_EVAL:
			eval(c);
			break;
		case ST_MX_ADDR:
			mx_next(c);
			break;
		case ST_PTR_ADDR:
			ptr_next(c);
			break;
		case ST_EXP:
			exp_start(c);
			break;
		case ST_EXP_TEXT:
			exp_text(c, true);
			break;
		case ST_DONE:
			break;
		}
	}
}

static void on_answer(struct spf_check *c, const struct spf_answer *a)
{
	enum wait w = c->wait;
	c->wait = W_NONE;
	switch (w) {
	case W_RECORD:
		got_record(c, a);
		break;
	case W_A:
		got_a(c, a, false);
		break;
	case W_EXISTS:
		got_a(c, a, true);
		break;
	case W_MX:
		got_mx(c, a);
		break;
	case W_MX_ADDR:
		got_mx_addr(c, a);
		break;
	case W_PTR:
		got_ptr(c, a);
		break;
	case W_PTR_ADDR:
		got_ptr_addr(c, a);
		break;
	case W_EXP:
		got_exp(c, a);
		break;
	case W_NONE:
		break;
	}
}

enum spf_step spf_check_run(struct spf_check *c, const struct spf_answer *ans,
                            const struct spf_query **q)
{
	if (!c)
		return SPF_STEP_DONE;
	if (c->state == ST_DONE)
		return SPF_STEP_DONE;
	if (c->wait != W_NONE) {
		if (TERN_BUG_ON(!ans)) {
			finish(c, SPF_TEMPERROR, "no DNS answer given");
			return SPF_STEP_DONE;
		}
		struct spf_answer a = *ans;
		if (a.status == SPF_DNS_OK && a.n == 0)
			a.status = SPF_DNS_NODATA; /* an empty answer is no data */
		on_answer(c, &a);
	}
	advance(c);
	if (c->state == ST_DONE)
		return SPF_STEP_DONE;
	if (q)
		*q = &c->q;
	return SPF_STEP_QUERY;
}

void spf_check_expire(struct spf_check *c)
{
	if (!c || c->state == ST_DONE)
		return;
	c->wait = W_NONE;
	if (c->in_exp) {
		/* the result stands; its explanation is the default, with
		 * whatever %{p} is known by now */
		free(c->exp_text);
		c->exp_text = NULL;
		exp_text(c, false);
		c->state = ST_DONE;
		return;
	}
	finish(c, SPF_TEMPERROR, "SPF check timed out (RFC 7208 section 4.6.4)");
}

const struct spf_outcome *spf_check_outcome(const struct spf_check *c)
{
	return c ? &c->out : NULL;
}

static char *dup_or_empty(const char *s)
{
	return tern_strdup(s ? s : "");
}

struct spf_check *spf_check_new(const struct spf_request *req, enum spf_identity id,
                                const struct spf_limits *lim)
{
	struct spf_check *c;

	if (!req)
		return NULL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	spf_limits_default(&c->lim);
	if (lim) {
		c->lim.max_void = lim->max_void;
		if (lim->max_queries)
			c->lim.max_queries = lim->max_queries;
	}
	c->id = id;
	c->ip = req->ip;
	c->now = req->now ? req->now : (int64_t)time(NULL);
	tbuf_init(&c->scratch, EXPAND_MAX);
	c->helo = dup_or_empty(req->helo);
	c->receiver = dup_or_empty(req->receiver);
	c->default_exp = dup_or_empty(req->default_exp ? req->default_exp : DEFAULT_EXP);
	if (!c->helo || !c->receiver || !c->default_exp)
		goto fail;
	c->helo_len = strlen(c->helo);
	c->receiver_len = strlen(c->receiver);

	/* <sender> (§4.1): MAIL FROM, or postmaster@HELO for the HELO
	 * identity and for a null reverse-path (§2.3, §2.4); no local-part
	 * means "postmaster" (§4.3). The domain starts after the last '@'
	 * (a quoted local-part may hold one). */
	const char *s = (id == SPF_ID_MAILFROM && req->mailfrom) ? req->mailfrom : "";
	const char *at = strrchr(s, '@');
	const char *local = at ? s : "";
	size_t local_len = at ? (size_t)(at - s) : 0;
	const char *dom = at ? at + 1 : (*s ? s : c->helo);
	if (local_len == 0) {
		local = "postmaster";
		local_len = strlen(local);
	}
	size_t dom_len = strlen(dom);
	c->sender_len = local_len + 1 + dom_len;
	c->sender = malloc(c->sender_len + 1);
	if (!c->sender)
		goto fail;
	memcpy(c->sender, local, local_len);
	c->sender[local_len] = '@';
	memcpy(c->sender + local_len + 1, dom, dom_len);
	c->sender[c->sender_len] = '\0';
	c->local_len = local_len;
	c->odom = c->sender + local_len + 1;
	c->odom_len = dom_len;
	copy_printable(c->out.domain, sizeof(c->out.domain), c->odom, c->odom_len);
	if (c->odom_len > 0 && c->odom[c->odom_len - 1] == '.')
		c->odom_len--;

	c->out.identity = id;
	c->out.result = SPF_NONE;
	c->state = ST_START;
	return c;
fail:
	spf_check_free(c);
	return NULL;
}

void spf_check_free(struct spf_check *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < MAX_FRAMES; i++)
		spf_record_free(&c->frames[i].rec);
	free(c->sender);
	free(c->helo);
	free(c->receiver);
	free(c->default_exp);
	free(c->exp_text);
	tbuf_free(&c->scratch);
	free(c);
}

int spf_check_sync(const struct spf_request *req, enum spf_identity id,
                   const struct spf_limits *lim, const struct spf_dns *dns, struct spf_outcome *out)
{
	struct spf_check *c = spf_check_new(req, id, lim);
	const struct spf_query *q = NULL;
	struct spf_answer ans;

	if (!c)
		return TERN_ENOMEM;
	enum spf_step st = spf_check_run(c, NULL, &q);
	while (st == SPF_STEP_QUERY) {
		memset(&ans, 0, sizeof(ans));
		ans.status = SPF_DNS_TEMPFAIL;
		if (dns && dns->resolve)
			dns->resolve(dns->arg, q, &ans);
		st = spf_check_run(c, &ans, &q);
	}
	*out = *spf_check_outcome(c);
	spf_check_free(c);
	return TERN_OK;
}
