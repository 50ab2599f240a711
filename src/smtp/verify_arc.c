/*
 * verify_arc.c — ARC (RFC 8617) in the mx session, for verify.c: the chain
 * of a received message validated with the same resolver and deadline as
 * DKIM, and the ARC Set sealed onto a message tern forwards.
 *
 * Owns: one struct smtp_arc per message with its copy of the header block
 * (never of the body: the owner feeds the body's hashes, smtp_arc_body, in
 * the same pass as DKIM's), the validator (policy/arc.h) and its DNS
 * driver, and the pool jobs (the signatures of a large message, the seal).
 * The ARC logic itself is policy/arc_verify.c and arc_seal.c.
 *
 * Must never: block the event loop (keys come from the async resolver;
 * hashing a large message and RSA signing run on the pool), call its owner
 * back from inside one of the owner's calls, or free itself while a pool
 * job reads it (smtp_arc_free then leaves it to the job's end).
 */
#include "smtp/verify_arc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/loop.h"
#include "policy/dkim.h"

/* A message at most this large (header and body) has its chain's header
 * hashes and signatures checked on the loop, as verify.c hashes such a
 * body there; a larger one (whose header may be as large) on the pool. */
#define ARC_ON_LOOP_MAX (256u * 1024u)

struct smtp_arc {
	char *msg;       /* the header block as we keep it (no blank line, no body) */
	size_t len;      /* its length */
	size_t body_len; /* the body's, for where the signatures are checked */
	struct worker *w;
	struct pool *pool;
	void (*done)(void *arg);
	void *arg;

	struct arc_verify *v;
	struct dkim_dns *dns; /* while keys are looked up */
	bool keys_pending;
	bool body_pending; /* smtp_arc_body_end not called yet */
	bool job;          /* a pool job runs (finish or seal) */
	bool orphan;       /* freed by its owner while the job ran */

	/* sealing: the inputs copied for the job, then its output */
	char *key_file, *domain, *selector, *authres;
	enum arc_cv cv;
	char bh[45]; /* the body's relaxed hash, from the validator's pass */
	char *set;
	size_t set_len;
	int seal_rc;
	char seal_why[400];
};

static void destroy(struct smtp_arc *a)
{
	dkim_dns_free(a->dns);
	arc_verify_free(a->v);
	free(a->msg);
	free(a->key_file);
	free(a->domain);
	free(a->selector);
	free(a->authres);
	free(a->set);
	free(a);
}

/* A pool job's end, on the owner's worker. */
static void job_done(void *arg)
{
	struct smtp_arc *a = arg;
	a->job = false;
	if (a->orphan) {
		destroy(a);
		return;
	}
	a->done(a->arg);
}

static void finish_work(void *arg)
{
	struct smtp_arc *a = arg;
	arc_verify_finish(a->v);
}

/* Every key is in (or expired) and the body hashed: the signatures, on the
 * pool when large. Returns true when a job was started (done follows). */
static bool finish(struct smtp_arc *a)
{
	if (!a->v || a->body_pending || arc_verify_state(a->v) != ARC_VS_READY)
		return false;
	if (a->len + a->body_len > ARC_ON_LOOP_MAX && a->pool &&
	    pool_submit(a->pool, finish_work, a->w, job_done, a) == TERN_OK) {
		a->job = true;
		return true;
	}
	arc_verify_finish(a->v);
	return false;
}

static void keys_done(void *arg)
{
	struct smtp_arc *a = arg;
	a->keys_pending = false;
	if (!finish(a))
		a->done(a->arg); /* from the resolver's callback: never inside our owner */
}

struct smtp_arc *smtp_arc_start(char *hdr, size_t len, size_t body_len, struct dns_resolver *res,
                                struct event_base *base, struct worker *w, struct pool *pool,
                                unsigned timeout_ms, bool seal, void (*done)(void *arg), void *arg)
{
	struct smtp_arc *a = calloc(1, sizeof(*a));
	if (!a) {
		free(hdr);
		return NULL;
	}
	a->msg = hdr;
	a->len = len;
	a->body_len = body_len;
	a->w = w;
	a->pool = pool;
	a->done = done;
	a->arg = arg;
	a->v = arc_verify_new();
	if (!a->v)
		goto fail;
	int rc = arc_verify_headers(a->v, hdr, len);
	if (rc == TERN_ENOMEM || (rc == TERN_OK && seal && arc_verify_seal_body(a->v) != TERN_OK))
		goto fail;
	if (rc != TERN_OK) {
		/* too big to look at: judged as if no key answered (fail, temporary) */
		arc_verify_free(a->v);
		a->v = NULL;
		return a;
	}
	a->body_pending = true; /* the signatures wait for smtp_arc_body_end */
	if (arc_verify_pending(a->v) > 0) {
		if (res)
			a->dns = arc_verify_dns_start(a->v, res, base, timeout_ms, keys_done, a);
		if (a->dns) {
			a->keys_pending = true;
			return a;
		}
		arc_verify_expire(a->v); /* no resolver: every key is a temporary error */
	}
	return a;
fail:
	destroy(a);
	return NULL;
}

struct smtp_arc *smtp_arc_none(void)
{
	return calloc(1, sizeof(struct smtp_arc));
}

bool smtp_arc_has_fields(const char *hdr, size_t len)
{
	for (size_t i = 0; i + 4 <= len;) {
		if (hdr[i] != ' ' && hdr[i] != '\t' && strncasecmp(hdr + i, "ARC-", 4) == 0)
			return true;
		const char *nl = memchr(hdr + i, '\n', len - i);
		if (!nl)
			break;
		i = (size_t)(nl - hdr) + 1;
	}
	return false;
}

struct dkim_body *smtp_arc_body(struct smtp_arc *a)
{
	return a->v && a->body_pending ? arc_verify_body(a->v) : NULL;
}

void smtp_arc_body_end(struct smtp_arc *a)
{
	if (!a->body_pending)
		return;
	arc_verify_body_end(a->v);
	a->body_pending = false;
	if (!a->keys_pending)
		finish(a); /* a job (busy), or the result is in: never done() here */
}

bool smtp_arc_busy(const struct smtp_arc *a)
{
	return a->keys_pending || a->body_pending || a->job;
}

const struct arc_result *smtp_arc_result(const struct smtp_arc *a)
{
	static const struct arc_result unjudged = {
	    .cv = ARC_CV_FAIL,
	    .reason = "message too large to validate",
	    .temporary = true,
	};
	static const struct arc_result none = {.cv = ARC_CV_NONE};
	if (!a->msg)
		return &none; /* smtp_arc_none */
	if (!a->v || arc_verify_state(a->v) != ARC_VS_DONE)
		return &unjudged;
	return arc_verify_result(a->v);
}

const char *smtp_arc_message(const struct smtp_arc *a, size_t *len)
{
	*len = a->len;
	return a->msg;
}

/* The AAR payload: our A-R's value, unfolded, without its CRLF. */
static char *aar_payload(const char *ar, size_t n)
{
	static const char name[] = "Authentication-Results:";
	if (n >= sizeof(name) - 1 && strncasecmp(ar, name, sizeof(name) - 1) == 0) {
		ar += sizeof(name) - 1;
		n -= sizeof(name) - 1;
	}
	char *out = malloc(n + 1);
	if (!out)
		return NULL;
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (ar[i] == '\r' || ar[i] == '\n')
			continue; /* a fold: the WSP after it stays */
		if ((ar[i] == ' ' || ar[i] == '\t') && (o == 0 || out[o - 1] == ' '))
			continue;
		out[o++] = ar[i] == '\t' ? ' ' : ar[i];
	}
	while (o > 0 && out[o - 1] == ' ')
		o--;
	out[o] = '\0';
	return out;
}

static void seal_work(void *arg)
{
	struct smtp_arc *a = arg;
	struct dkim_key *key = NULL;
	char warn[256], err[256];
	a->seal_rc = dkim_key_load(a->key_file, &key, warn, sizeof(warn), err, sizeof(err));
	if (a->seal_rc != TERN_OK) {
		snprintf(a->seal_why, sizeof(a->seal_why), "key %s: %s", a->key_file, err);
		return;
	}
	if (dkim_key_alg(key) != DKIM_ALG_RSA_SHA256) {
		a->seal_rc = TERN_EINVAL;
		snprintf(a->seal_why, sizeof(a->seal_why),
		         "key %s is not RSA (ARC signs with rsa-sha256 only)", a->key_file);
		dkim_key_free(key);
		return;
	}
	struct arc_seal_params p = {
	    .domain = a->domain,
	    .selector = a->selector,
	    .timestamp = DKIM_SIGN_TIME_NOW,
	    .authres = a->authres,
	};
	a->seal_rc = arc_seal_header(key, &p, a->cv, a->msg, a->len, a->bh, &a->set, &a->set_len);
	if (a->seal_rc != TERN_OK)
		snprintf(a->seal_why, sizeof(a->seal_why), "sealing failed: %s",
		         tern_strerror(a->seal_rc));
	dkim_key_free(key);
}

int smtp_arc_seal(struct smtp_arc *a, const struct conf_dkim_key *key, const char *authres,
                  size_t authres_len)
{
	if (smtp_arc_busy(a) || a->set || a->authres || !a->pool || !a->msg)
		return TERN_EINVAL;
	if (!a->v)
		return TERN_ELIMIT; /* a header too large to look at cannot be sealed */
	int rc = arc_verify_seal_bh(a->v, a->bh);
	if (rc != TERN_OK)
		return rc;
	a->cv = smtp_arc_result(a)->cv;
	a->key_file = tern_strdup(key->key_file);
	a->domain = tern_strdup(key->domain);
	a->selector = tern_strdup(key->selector);
	a->authres = aar_payload(authres, authres_len);
	if (!a->key_file || !a->domain || !a->selector || !a->authres)
		return TERN_ENOMEM;
	if (pool_submit(a->pool, seal_work, a->w, job_done, a) != TERN_OK)
		return TERN_ENOMEM;
	a->job = true;
	return TERN_OK;
}

int smtp_arc_sealed(const struct smtp_arc *a, const char **set, size_t *set_len, const char **why)
{
	*set = a->set;
	*set_len = a->set_len;
	*why = a->seal_why;
	return a->seal_rc;
}

bool smtp_arc_key_usable(const struct tern_config *c, char *err, size_t errlen)
{
	const struct conf_dkim_key *k = conf_arc_seal_key(c);
	if (!k)
		return true;
	struct dkim_key *key = NULL;
	char warn[256], e[256];
	if (dkim_key_load(k->key_file, &key, warn, sizeof(warn), e, sizeof(e)) != TERN_OK) {
		snprintf(err, errlen, "arc.seal_domain: key %s: %s", k->key_file, e);
		return false;
	}
	bool rsa = dkim_key_alg(key) == DKIM_ALG_RSA_SHA256;
	dkim_key_free(key);
	if (!rsa)
		snprintf(err, errlen,
		         "arc.seal_domain: key %s (%s, selector %s) is not RSA: ARC signs with "
		         "rsa-sha256 only, forwarded mail would not be sealed",
		         k->key_file, k->domain, k->selector);
	return rsa;
}

void smtp_arc_stop(struct smtp_arc *a)
{
	if (!a)
		return;
	dkim_dns_free(a->dns);
	a->dns = NULL;
	a->keys_pending = false;
	a->body_pending = false; /* nothing starts after this */
}

void smtp_arc_free(struct smtp_arc *a)
{
	if (!a)
		return;
	smtp_arc_stop(a);
	if (a->job) {
		a->orphan = true; /* job_done frees */
		return;
	}
	destroy(a);
}
