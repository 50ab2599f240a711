/*
 * dmarc_eval.c — DMARC evaluation as a resumable state machine (RFC 9989
 * §4.10 DNS Tree Walk, §4.10.1 policy discovery, §4.10.2 organizational
 * domain and alignment, §5.3 receiver steps), and the per-profile decision.
 *
 * Owns: which DNS questions DMARC asks and in what order, the answers'
 * cache for one message, the organizational domain, alignment, the policy
 * (p/sp/np, t=y) and the action.
 * Must never: do I/O (questions go out through dmarc_eval_next, answers
 * come back through dmarc_eval_answer), ask more than DMARC_WALK_MAX
 * questions in one Tree Walk, ask a name twice, or let a DNS failure turn
 * into a pass or a fail (it is temperror unless an aligned pass stands on
 * answers that did arrive).
 *
 * Rounds: the first question of a Tree Walk (the starting name) is asked
 * alone, since a psd tag there ends the walk; the rest of the walk's names
 * are asked together. The walks of all identifiers that need one are asked
 * together too. Answers may arrive in any order; a walk is read in name
 * order, so a psd tag stops it at the same place a one-by-one walk would
 * (names past it may have been asked: their answers are not used).
 */
#include "policy/dmarc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"

/* Distinct DKIM d= domains considered per message (each may need a walk). */
#define DKIM_IDS_MAX 8
/* Names one evaluation may cache: authors x (1 + 1 + DKIM_IDS_MAX) walks, plus
 * an existence query per author. Usually a handful. */
#define CACHE_MAX (DMARC_AUTHORS_MAX * ((2 + DKIM_IDS_MAX) * DMARC_WALK_MAX + 1))

enum entry_state { E_NEED = 0, E_ASKED, E_DONE };

struct entry {
	char domain[DMARC_DOMAIN_MAX + 1]; /* TXT: asked as _dmarc.<domain>; A: <domain> */
	int rrtype;
	enum entry_state state;
	enum dns_status status;
	bool has_record; /* exactly one DMARC record at this name */
	char psd;        /* its psd tag */
	char *txt;       /* that record, owned */
};

enum phase { PH_WALK = 0, PH_ALIGN, PH_POLICY, PH_DONE };

struct id {
	char domain[DMARC_DOMAIN_MAX + 1];
	bool spf; /* the SPF identifier, else a DKIM one */
};

struct dmarc_eval {
	struct dmarc_outcome out;
	size_t cur; /* author being evaluated */
	enum phase phase;
	bool cache_full; /* a needed name did not fit: temperror */
	struct id ids[1 + DKIM_IDS_MAX];
	size_t n_ids;
	struct entry *cache;
	size_t n_cache;
	size_t next_ask; /* cache entries before this index are not E_NEED */
};

/* ------------------------------------------------------------ the cache */

static struct entry *find(struct dmarc_eval *e, const char *domain, int rrtype)
{
	for (size_t i = 0; i < e->n_cache; i++)
		if (e->cache[i].rrtype == rrtype && strcmp(e->cache[i].domain, domain) == 0)
			return &e->cache[i];
	return NULL;
}

/* The entry for (domain, rrtype), added as E_NEED if new; NULL if full. */
static struct entry *need(struct dmarc_eval *e, const char *domain, int rrtype)
{
	struct entry *en = find(e, domain, rrtype);

	if (en)
		return en;
	if (e->n_cache >= CACHE_MAX) {
		e->cache_full = true;
		return NULL;
	}
	en = &e->cache[e->n_cache++];
	memset(en, 0, sizeof(*en));
	tern_strlcpy(en->domain, domain, sizeof(en->domain));
	en->rrtype = rrtype;
	/* "_dmarc." + a 253-byte name does not fit a DNS name: no such record
	 * can exist, so the answer is known without asking. */
	if (rrtype == DNS_TXT && strlen(domain) + 7 > DNS_NAME_MAX - 2) {
		en->state = E_DONE;
		en->status = DNS_NXDOMAIN;
	}
	return en;
}

/* ------------------------------------------------------------ Tree Walk */

static size_t count_labels(const char *d)
{
	size_t n = 1;
	for (; *d; d++)
		n += *d == '.';
	return n;
}

/* The name with its first k labels removed. */
static const char *drop_labels(const char *d, size_t k)
{
	while (k-- > 0) {
		const char *dot = strchr(d, '.');
		if (!dot)
			return NULL;
		d = dot + 1;
	}
	return d;
}

/*
 * The names a Tree Walk from d queries (§4.10 steps 3-7): d, then (if d
 * has 8 or more labels) its last 7 labels, else its parent, then each
 * parent up to the one-label name. At most DMARC_WALK_MAX.
 */
static size_t walk_names(const char *d, const char *names[DMARC_WALK_MAX])
{
	size_t x = count_labels(d), n = 0;

	names[n++] = d;
	size_t next = x >= DMARC_WALK_MAX ? DMARC_WALK_MAX - 1 : x - 1;
	while (next >= 1 && n < DMARC_WALK_MAX) {
		names[n++] = drop_labels(d, x - next);
		next--;
	}
	return n;
}

enum walk_state { W_PENDING, W_ERROR, W_DONE };

struct walk {
	const char *names[DMARC_WALK_MAX];
	size_t n;
	struct entry *found[DMARC_WALK_MAX]; /* names with a record, longest first */
	size_t n_found;
	char org[DMARC_DOMAIN_MAX + 1];
	const struct entry *psd_y; /* the psd=y record that ended the walk, if any */
};

/*
 * Reads (and, for names not yet known, asks for) the walk from start, and
 * on W_DONE fills w->org by the §4.10.2 selection:
 *   1. a record with psd=n: that name;
 *   2. a record with psd=y other than at start: the name one label below;
 *   3. else the record with the fewest labels;
 *   with no record at all, start itself.
 */
static enum walk_state walk(struct dmarc_eval *e, const char *start, struct walk *w)
{
	memset(w, 0, sizeof(*w));
	w->n = walk_names(start, w->names);
	for (size_t i = 0; i < w->n; i++) {
		struct entry *en = need(e, w->names[i], DNS_TXT);
		if (!en)
			return W_ERROR;
		if (en->state != E_DONE) {
			/* ask every later name of this walk in the same round, but not
			 * before the first answer: a psd tag at start ends the walk */
			for (size_t k = i + 1; i > 0 && k < w->n; k++)
				if (!need(e, w->names[k], DNS_TXT))
					return W_ERROR;
			return W_PENDING;
		}
		if (en->status == DNS_TEMPFAIL || en->status == DNS_ERROR)
			return W_ERROR;
		if (!en->has_record)
			continue;
		w->found[w->n_found++] = en;
		if (en->psd == 'n') {
			tern_strlcpy(w->org, en->domain, sizeof(w->org));
			return W_DONE;
		}
		if (en->psd == 'y') {
			if (i == 0) {
				tern_strlcpy(w->org, start, sizeof(w->org));
				return W_DONE;
			}
			/* the name one label below, on the way to start */
			size_t want = count_labels(en->domain) + 1;
			const char *below = drop_labels(start, count_labels(start) - want);
			tern_strlcpy(w->org, below ? below : start, sizeof(w->org));
			w->psd_y = en;
			return W_DONE;
		}
	}
	const char *org = w->n_found ? w->found[w->n_found - 1]->domain : start;
	tern_strlcpy(w->org, org, sizeof(w->org));
	return W_DONE;
}

/* ------------------------------------------------------------ one author */

/* Is sub equal to dom or a name below it (label-wise)? */
static bool within(const char *sub, const char *dom)
{
	size_t a = strlen(sub), b = strlen(dom);
	if (a == b)
		return strcmp(sub, dom) == 0;
	return a > b && sub[a - b - 1] == '.' && strcmp(sub + a - b, dom) == 0;
}

static void finish_author(struct dmarc_eval *e, enum dmarc_result r, const char *why)
{
	struct dmarc_author *a = &e->out.author[e->cur];
	a->result = r;
	a->why = why;
	e->cur++;
	e->phase = PH_WALK;
}

/* PH_WALK → policy record and organizational domain. False while pending. */
static bool step_discover(struct dmarc_eval *e)
{
	struct dmarc_author *a = &e->out.author[e->cur];
	struct walk w;
	const struct entry *pol = NULL;

	switch (walk(e, a->domain, &w)) {
	case W_PENDING:
		return false;
	case W_ERROR:
		finish_author(e, DMARC_RESULT_TEMPERROR, "DNS error looking up the DMARC policy");
		return true;
	case W_DONE:
		break;
	}
	if (w.n_found == 0) {
		finish_author(e, DMARC_RESULT_NONE, "no DMARC policy record");
		return true;
	}
	tern_strlcpy(a->org_domain, w.org, sizeof(a->org_domain));
	/* §4.10.1: the Author Domain's record, else the Organizational
	 * Domain's, else the PSD's. */
	if (strcmp(w.found[0]->domain, a->domain) == 0) {
		pol = w.found[0];
	} else {
		for (size_t i = 0; i < w.n_found && !pol; i++)
			if (strcmp(w.found[i]->domain, w.org) == 0)
				pol = w.found[i];
		if (!pol && w.psd_y) {
			pol = w.psd_y;
			a->psd_record = true;
		}
	}
	/* cannot happen: rule 3 picks a name with a record, rules 1-2 leave one
	 * (the psd record) to fall back on */
	if (TERN_BUG_ON(pol == NULL)) {
		finish_author(e, DMARC_RESULT_PERMERROR, "no applicable DMARC record");
		return true;
	}
	a->psd_record = a->psd_record || pol->psd == 'y';
	tern_strlcpy(a->policy_domain, pol->domain, sizeof(a->policy_domain));
	/* it parsed when it was cached */
	if (TERN_BUG_ON(dmarc_record_parse(pol->txt, strlen(pol->txt), &a->record) !=
	                DMARC_PARSE_OK)) {
		finish_author(e, DMARC_RESULT_PERMERROR, "bad DMARC record");
		return true;
	}
	if (!dmarc_record_usable(&a->record)) {
		finish_author(e, DMARC_RESULT_PERMERROR,
		              "DMARC record with an invalid policy and no valid rua");
		return true;
	}
	e->phase = PH_ALIGN;
	return true;
}

/*
 * Is identifier id aligned with the author (org: the author's
 * organizational domain)? 1 yes, 0 no, -1 pending, -2 DNS error.
 */
static int aligned(struct dmarc_eval *e, const char *id, bool strict)
{
	const struct dmarc_author *a = &e->out.author[e->cur];
	struct walk w;

	if (strcmp(id, a->domain) == 0)
		return 1;
	if (strict || !within(id, a->org_domain))
		return 0; /* org(id) is id or one of its parents: it cannot be org */
	switch (walk(e, id, &w)) {
	case W_PENDING:
		return -1;
	case W_ERROR:
		return -2;
	case W_DONE:
		break;
	}
	return strcmp(w.org, a->org_domain) == 0;
}

/* PH_ALIGN → pass, or on to the policy. False while pending. */
static bool step_align(struct dmarc_eval *e)
{
	struct dmarc_author *a = &e->out.author[e->cur];
	bool pending = false, error = false;

	a->spf_aligned = a->dkim_aligned = false;
	a->dkim_domain[0] = '\0';
	/* every identifier's walk is asked in this round: no early exit */
	for (size_t i = 0; i < e->n_ids; i++) {
		const struct id *id = &e->ids[i];
		int r = aligned(e, id->domain,
		                id->spf ? a->record.aspf_strict : a->record.adkim_strict);
		if (r == -1)
			pending = true;
		else if (r == -2)
			error = true;
		else if (r == 1 && id->spf)
			a->spf_aligned = true;
		else if (r == 1 && !a->dkim_aligned) {
			a->dkim_aligned = true;
			tern_strlcpy(a->dkim_domain, id->domain, sizeof(a->dkim_domain));
		}
	}
	if (pending)
		return false;
	if (a->spf_aligned || a->dkim_aligned) {
		finish_author(e, DMARC_RESULT_PASS,
		              a->spf_aligned && a->dkim_aligned ? "SPF and DKIM aligned"
		              : a->spf_aligned                  ? "SPF aligned"
		                                                : "DKIM aligned");
		return true;
	}
	if (error) {
		finish_author(e, DMARC_RESULT_TEMPERROR,
		              "DNS error looking up an organizational domain");
		return true;
	}
	e->phase = PH_POLICY;
	return true;
}

static enum dmarc_policy effective(enum dmarc_policy p)
{
	return p == DMARC_POLICY_UNSET || p == DMARC_POLICY_INVALID ? DMARC_POLICY_NONE : p;
}

/* PH_POLICY → fail with p, sp or np (§4.10.1), lowered by t=y (§4.7). */
static bool step_policy(struct dmarc_eval *e)
{
	struct dmarc_author *a = &e->out.author[e->cur];
	const struct dmarc_record *r = &a->record;

	a->tag = DMARC_TAG_P;
	if (strcmp(a->policy_domain, a->domain) != 0) {
		a->tag = r->sp != DMARC_POLICY_UNSET ? DMARC_TAG_SP : DMARC_TAG_P;
		if (r->np != DMARC_POLICY_UNSET) {
			/* np needs to know whether the Author Domain exists: any
			 * answer but NXDOMAIN says it does (§A.4, RFC 8020). A failed
			 * query leaves sp/p: the domain is not known not to exist. */
			struct entry *en = need(e, a->domain, DNS_A);
			if (en && en->state != E_DONE)
				return false;
			if (en && en->status == DNS_NXDOMAIN) {
				a->nonexistent = true;
				a->tag = DMARC_TAG_NP;
			}
		}
	}
	a->requested = effective(a->tag == DMARC_TAG_P    ? r->p
	                         : a->tag == DMARC_TAG_SP ? r->sp
	                                                  : r->np);
	a->applied = a->requested;
	if (r->testing && a->applied == DMARC_POLICY_REJECT)
		a->applied = DMARC_POLICY_QUARANTINE;
	else if (r->testing && a->applied == DMARC_POLICY_QUARANTINE)
		a->applied = DMARC_POLICY_NONE;
	finish_author(e, DMARC_RESULT_FAIL, "no aligned SPF or DKIM pass");
	return true;
}

/* ------------------------------------------------------------- outcome */

static int severity(enum dmarc_result r)
{
	switch (r) {
	case DMARC_RESULT_FAIL:
		return 4;
	case DMARC_RESULT_TEMPERROR:
		return 3;
	case DMARC_RESULT_PERMERROR:
		return 2;
	case DMARC_RESULT_PASS:
		return 1;
	case DMARC_RESULT_NONE:
		break;
	}
	return 0;
}

static void combine(struct dmarc_eval *e)
{
	struct dmarc_outcome *o = &e->out;

	if (o->from == DMARC_FROM_BAD) {
		o->result = DMARC_RESULT_PERMERROR;
		return;
	}
	for (size_t i = 0; i < o->n_authors; i++) {
		const struct dmarc_author *a = &o->author[i];
		if (severity(a->result) > severity(o->result))
			o->result = a->result;
		if (a->result != DMARC_RESULT_FAIL)
			continue;
		enum dmarc_action act = a->applied == DMARC_POLICY_REJECT ? DMARC_ACTION_REJECT
		                        : a->applied == DMARC_POLICY_QUARANTINE
		                            ? DMARC_ACTION_QUARANTINE
		                            : DMARC_ACTION_NONE;
		if (act > o->action)
			o->action = act;
	}
}

/* ------------------------------------------------------------ public API */

struct dmarc_eval *dmarc_eval_new(const struct dmarc_input *in)
{
	struct dmarc_eval *e = calloc(1, sizeof(*e));
	char d[DMARC_DOMAIN_MAX + 1];

	if (!e)
		return NULL;
	e->cache = calloc(CACHE_MAX, sizeof(*e->cache));
	if (!e->cache) {
		free(e);
		return NULL;
	}
	const struct dmarc_from *f = in->from;
	e->out.from = f ? f->status : DMARC_FROM_NONE;
	if (f && f->status != DMARC_FROM_BAD) {
		e->out.n_authors =
		    f->n_domains < DMARC_AUTHORS_MAX ? f->n_domains : DMARC_AUTHORS_MAX;
		e->out.incomplete = f->n_domains > DMARC_AUTHORS_MAX;
		for (size_t i = 0; i < e->out.n_authors; i++)
			tern_strlcpy(e->out.author[i].domain, f->domain[i],
			             sizeof(e->out.author[i].domain));
	}
	/* §4.3: SPF's MAIL FROM identity if it passed; every DKIM d= that
	 * passed (duplicates once). Names that are no domain names are skipped. */
	const struct dmarc_spf *spf = &in->spf;
	if (spf->result == DMARC_SPF_PASS && spf->identity == DMARC_SPF_MAILFROM && spf->domain &&
	    dmarc_domain_normalize(spf->domain, strlen(spf->domain), d)) {
		tern_strlcpy(e->ids[0].domain, d, sizeof(e->ids[0].domain));
		e->ids[0].spf = true;
		e->n_ids = 1;
	}
	size_t n_dkim = 0;
	for (size_t i = 0; i < in->n_dkim && n_dkim < DKIM_IDS_MAX; i++) {
		const struct dmarc_dkim *k = &in->dkim[i];
		bool dup = false;
		/* a t=y key's pass is no pass for policy (RFC 6376 §3.6.1) */
		if (k->result != DMARC_DKIM_PASS || k->testing || !k->domain ||
		    !dmarc_domain_normalize(k->domain, strlen(k->domain), d))
			continue;
		for (size_t j = 0; j < e->n_ids; j++)
			dup |= !e->ids[j].spf && strcmp(e->ids[j].domain, d) == 0;
		if (dup)
			continue;
		tern_strlcpy(e->ids[e->n_ids].domain, d, sizeof(e->ids[0].domain));
		e->n_ids++;
		n_dkim++;
	}
	return e;
}

void dmarc_eval_free(struct dmarc_eval *e)
{
	if (!e)
		return;
	for (size_t i = 0; i < e->n_cache; i++)
		free(e->cache[i].txt);
	free(e->cache);
	free(e);
}

/* Runs the phases until one waits for answers or all authors are done. */
static void advance(struct dmarc_eval *e)
{
	bool moved = true;

	while (moved && e->cur < e->out.n_authors) {
		if (e->cache_full) {
			finish_author(e, DMARC_RESULT_TEMPERROR, "too many DNS names");
			e->cache_full = false;
			continue;
		}
		switch (e->phase) {
		case PH_WALK:
			moved = step_discover(e);
			break;
		case PH_ALIGN:
			moved = step_align(e);
			break;
		case PH_POLICY:
			moved = step_policy(e);
			break;
		case PH_DONE:
			moved = false;
			break;
		}
	}
	if (e->cur >= e->out.n_authors && e->phase != PH_DONE) {
		e->phase = PH_DONE;
		combine(e);
	}
}

enum dmarc_step dmarc_eval_next(struct dmarc_eval *e, struct dmarc_query *q)
{
	advance(e);
	if (e->phase == PH_DONE)
		return DMARC_STEP_DONE;
	for (; e->next_ask < e->n_cache; e->next_ask++) {
		struct entry *en = &e->cache[e->next_ask];
		if (en->state != E_NEED)
			continue;
		int n = en->rrtype == DNS_TXT
		            ? snprintf(q->name, sizeof(q->name), "_dmarc.%s", en->domain)
		            : snprintf(q->name, sizeof(q->name), "%s", en->domain);
		if (TERN_BUG_ON(n < 0 || (size_t)n >= sizeof(q->name))) {
			en->state = E_DONE; /* need() keeps such names out */
			en->status = DNS_ERROR;
			continue;
		}
		en->state = E_ASKED;
		q->id = (unsigned)e->next_ask;
		q->rrtype = en->rrtype;
		e->out.n_queries++;
		e->next_ask++;
		return DMARC_STEP_QUERY;
	}
	return DMARC_STEP_WAIT;
}

void dmarc_eval_answer(struct dmarc_eval *e, unsigned id, enum dns_status status,
                       const char *const *txt, size_t n)
{
	if (id >= e->n_cache || e->cache[id].state != E_ASKED)
		return;
	struct entry *en = &e->cache[id];
	en->state = E_DONE;
	en->status = status;
	if (status != DNS_OK || en->rrtype != DNS_TXT)
		return;
	/* §4.10 step 2: keep records that start with v=DMARC1; more than one
	 * means none. */
	size_t found = 0;
	const char *which = NULL;
	struct dmarc_record r;
	for (size_t i = 0; i < n && txt; i++) {
		if (!txt[i] || dmarc_record_parse(txt[i], strlen(txt[i]), &r) != DMARC_PARSE_OK)
			continue;
		if (found++ == 0) {
			which = txt[i];
			en->psd = r.psd;
		}
	}
	if (found == 1) {
		en->txt = tern_strdup(which);
		/* out of memory: as good as an answer we could not read */
		if (!en->txt)
			en->status = DNS_ERROR;
		en->has_record = en->txt != NULL;
	}
}

const struct dmarc_outcome *dmarc_eval_outcome(const struct dmarc_eval *e)
{
	return &e->out;
}

/* ---------------------------------------------------------------- decision */

void dmarc_decide(const struct dmarc_outcome *o, const struct dmarc_profile *prof,
                  struct dmarc_decision *d)
{
	memset(d, 0, sizeof(*d));
	if (prof->mode == DMARC_MODE_OFF)
		return;
	/* the author whose policy decided: the strictest failing one */
	const struct dmarc_author *who = NULL;
	for (size_t i = 0; i < o->n_authors; i++) {
		const struct dmarc_author *a = &o->author[i];
		if (o->result == DMARC_RESULT_FAIL && a->result == DMARC_RESULT_FAIL &&
		    (!who || a->applied > who->applied))
			who = a;
		if (o->result == DMARC_RESULT_TEMPERROR && a->result == DMARC_RESULT_TEMPERROR &&
		    !who)
			who = a;
	}
	if (o->result == DMARC_RESULT_TEMPERROR && who) {
		if (prof->mode == DMARC_MODE_ENFORCE && prof->defer_on_temperror) {
			d->disposition = DMARC_DEFER;
			snprintf(d->reply, sizeof(d->reply),
			         "451 4.7.1 DMARC policy for %s could not be checked (DNS error), "
			         "try again later",
			         who->domain);
		}
		return;
	}
	if (o->result != DMARC_RESULT_FAIL || !who || o->action == DMARC_ACTION_NONE)
		return;
	const char *what = o->action == DMARC_ACTION_REJECT ? "reject" : "quarantine";
	char testing[64] = "";
	if (who->record.testing)
		snprintf(testing, sizeof(testing), ", testing (t=y): %s lowered to %s",
		         dmarc_policy_name(who->requested), dmarc_policy_name(who->applied));
	if (prof->mode == DMARC_MODE_ENFORCE && o->action == DMARC_ACTION_REJECT) {
		d->disposition = DMARC_REJECT;
		snprintf(d->reply, sizeof(d->reply),
		         "550 5.7.1 Email rejected per DMARC policy for %s (no aligned SPF or "
		         "DKIM pass)",
		         who->domain);
		return;
	}
	if (prof->mode == DMARC_MODE_ENFORCE) {
		d->disposition = DMARC_DELIVER_JUNK;
		d->folder = DMARC_JUNK_FOLDER;
	}
	snprintf(d->header, sizeof(d->header),
	         "%s: %s; domain=%s; policy-domain=%s (message fails DMARC: no aligned SPF or "
	         "DKIM pass%s; %s)\r\n",
	         DMARC_HEADER_NAME, what, who->domain, who->policy_domain, testing,
	         prof->mode == DMARC_MODE_ENFORCE ? "delivered to the Junk folder"
	                                          : "delivered as is: this listener only marks");
}
