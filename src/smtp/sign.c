/*
 * sign.c — DKIM signing of outgoing mail at receipt (see sign.h): the keys
 * of a runtime, including the ones that failed to load, the choice of keys
 * by the From domain, the signing job on the thread pool and its log line.
 *
 * Owns: the rule that a message meant to be signed is never accepted
 * unsigned in silence (a key that did not load makes SMTP_SIGN_ERROR), and
 * the dkim_sign= log line. The cryptography, the header list and the
 * over-signing are policy/dkim.h's.
 * Never: runs on the event loop (smtp_sign_submit hands it to the pool),
 * keeps the message, or lets a header's bytes reach the log unquoted.
 */
#include "smtp/sign.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/log.h"
#include "core/loop.h"
#include "policy/dkim.h"
#include "policy/dmarc.h"

/* A configured key that did not load: mail for its domain is refused. */
struct broken_key {
	char domain[DKIM_DOMAIN_MAX + 1]; /* lowercase */
	char selector[DKIM_SELECTOR_MAX + 1];
	char reason[512];
};

struct smtp_signer {
	struct dkim_keyring *ring; /* the keys that loaded */
	struct broken_key *broken;
	size_t n_broken;
	size_t n_keys; /* configured */
};

static void warn_key(void *arg, const char *text)
{
	char q[600];
	log_warn("event=dkim_key_warning reason=%s", log_quote(text, strlen(text), q, sizeof(q)));
}

int smtp_signer_load(const struct conf_dkim *c, struct smtp_signer **out)
{
	struct smtp_signer *sg = NULL;
	struct conf_dkim good = *c;
	int rc = TERN_ENOMEM;
	*out = NULL;
	if (!c->n_keys)
		return TERN_OK;
	good.keys = calloc(c->n_keys, sizeof(*good.keys));
	good.n_keys = 0;
	if (!good.keys || !(sg = calloc(1, sizeof(*sg))) ||
	    !(sg->broken = calloc(c->n_keys, sizeof(*sg->broken))))
		goto out;
	sg->n_keys = c->n_keys;
	/* Each key alone first, so one bad file costs only its own domain. */
	for (size_t i = 0; i < c->n_keys; i++) {
		const struct conf_dkim_key *ck = &c->keys[i];
		struct dkim_key *k = NULL;
		char w[512], e[512];
		if (dkim_key_load(ck->key_file, &k, w, sizeof(w), e, sizeof(e)) == TERN_OK) {
			dkim_key_free(k);
			good.keys[good.n_keys++] = *ck;
			continue;
		}
		struct broken_key *b = &sg->broken[sg->n_broken++];
		tern_strlcpy(b->domain, ck->domain, sizeof(b->domain));
		tern_ascii_lower(b->domain);
		tern_strlcpy(b->selector, ck->selector, sizeof(b->selector));
		tern_strlcpy(b->reason, e, sizeof(b->reason)); /* names the file */
		char q[600];
		log_error("event=dkim_key_error d=%s s=%s reason=%s note=\"mail from this domain "
		          "is refused with 451 until the key loads\"",
		          b->domain, b->selector,
		          log_quote(b->reason, strlen(b->reason), q, sizeof(q)));
	}
	char err[600];
	if (good.n_keys) {
		rc = dkim_keyring_load(&good, &sg->ring, warn_key, NULL, err, sizeof(err));
		if (rc != TERN_OK) {
			/* loaded a moment ago: only memory (or a file changed meanwhile) */
			log_error("event=dkim_key_error reason=%s", err);
			goto out;
		}
	}
	*out = sg;
	sg = NULL;
	rc = TERN_OK;
out:
	free(good.keys);
	smtp_signer_free(sg);
	return rc;
}

void smtp_signer_free(struct smtp_signer *sg)
{
	if (!sg)
		return;
	dkim_keyring_free(sg->ring);
	free(sg->broken);
	free(sg);
}

size_t smtp_signer_count(const struct smtp_signer *sg)
{
	return sg ? sg->n_keys : 0;
}

/* The domain whose keys sign mail from `from`: as dkim_keyring_domain_for,
 * over every configured key, loaded or not. NULL if none. */
static const char *choose_domain(const struct smtp_signer *sg, const char *from,
                                 const struct broken_key **broken)
{
	*broken = NULL;
	for (const char *d = from; d && *d;) {
		/* a broken key first: the domain's other keys must not sign alone */
		for (size_t i = 0; i < sg->n_broken; i++)
			if (strcasecmp(sg->broken[i].domain, d) == 0) {
				*broken = &sg->broken[i];
				return sg->broken[i].domain;
			}
		const char *ok = dkim_keyring_domain_for(sg->ring, d);
		if (ok && strcasecmp(ok, d) == 0)
			return ok;
		d = strchr(d, '.');
		if (d)
			d++;
	}
	return NULL;
}

static void set_reason(struct smtp_sign_result *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_reason(struct smtp_sign_result *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->reason, sizeof(r->reason), fmt, ap);
	va_end(ap);
}

/* Pure: is d (a lowercase A-label domain) owner or a name below it? ASCII
 * case-insensitive; an owner in U-labels matches nothing (not signed). */
static bool domain_within(const char *d, const char *owner)
{
	size_t dl = strlen(d), ol = strlen(owner);
	if (ol == 0 || dl < ol || strcasecmp(d + dl - ol, owner) != 0)
		return false;
	return dl == ol || d[dl - ol - 1] == '.';
}

static void sign_run(const struct smtp_signer *sg, const char *id, const char *msg, size_t len,
                     const char *owner, bool mapped, struct smtp_sign_result *r);

void smtp_sign_run(const struct smtp_signer *sg, const char *id, const char *msg, size_t len,
                   struct smtp_sign_result *r)
{
	sign_run(sg, id, msg, len, NULL, false, r);
}

static void sign_run(const struct smtp_signer *sg, const char *id, const char *msg, size_t len,
                     const char *owner, bool mapped, struct smtp_sign_result *r)
{
	size_t hl, bo;
	struct dmarc_from f;
	const struct broken_key *bk;
	char q[700];
	memset(r, 0, sizeof(*r));
	if (!sg || !sg->n_keys)
		return;
	dkim_split_message(msg, len, &hl, &bo);
	dmarc_from_domains(msg, hl, &f);
	if (f.n_fields != 1 || f.status != DMARC_FROM_ONE) {
		set_reason(r, "%s",
		           f.n_fields == 0   ? "no From field"
		           : f.n_fields > 1  ? "several From fields"
		           : f.n_domains > 1 ? "addresses of several domains in From"
		                             : "a From field without a usable domain");
		log_info("event=dkim_sign id=%s dkim_sign=none reason=\"%s\"", id, r->reason);
		return;
	}
	const char *d = choose_domain(sg, f.domain[0], &bk);
	if (!d) {
		set_reason(r, "no key for %s", f.domain[0]);
		log_info("event=dkim_sign id=%s dkim_sign=none from_domain=%s reason=no-key", id,
		         f.domain[0]);
		return;
	}
	if (owner && !domain_within(f.domain[0], owner)) {
		/* A login signs only for its own domain: our key on someone else's
		 * From would make a forgery pass DMARC. */
		set_reason(r, "From domain %s is not the sender's (%s)", f.domain[0],
		           owner[0] ? owner : "no domain");
		log_info("event=dkim_sign id=%s dkim_sign=none from_domain=%s owner=%s "
		         "reason=from-not-owned",
		         id, f.domain[0], log_quote(owner, strlen(owner), q, sizeof(q)));
		return;
	}
	if (bk) {
		r->status = SMTP_SIGN_ERROR;
		set_reason(r, "the DKIM key of %s (selector %s) could not be loaded", bk->domain,
		           bk->selector);
		log_error("event=dkim_sign id=%s dkim_sign=error d=%s s=%s reason=%s", id,
		          bk->domain, bk->selector,
		          log_quote(bk->reason, strlen(bk->reason), q, sizeof(q)));
		return;
	}
	/* SPILL: a mapped body's pages go as the hash passes them */
	int rc = dkim_keyring_sign_mapped(sg->ring, d, msg, len, DKIM_SIGN_TIME_NOW, mapped,
	                                  &r->fields, &r->len);
	if (rc != TERN_OK || !r->fields) {
		free(r->fields);
		r->fields = NULL;
		r->len = 0;
		r->status = SMTP_SIGN_ERROR;
		set_reason(r, "signing for %s failed: %s", d,
		           rc == TERN_ELIMIT   ? "the header is too large to sign"
		           : rc == TERN_EINVAL ? "the header cannot be signed"
		                               : tern_strerror(rc));
		log_error("event=dkim_sign id=%s dkim_sign=error d=%s reason=%s", id, d,
		          log_quote(r->reason, strlen(r->reason), q, sizeof(q)));
		return;
	}
	r->status = SMTP_SIGN_OK;
	/* s= and a= of every signature, in the order the fields were made */
	char sel[512] = "", alg[256] = "";
	size_t sl = 0, al = 0;
	for (size_t i = 0; i < dkim_keyring_count(sg->ring); i++) {
		const struct dkim_keyring_key *k = dkim_keyring_get(sg->ring, i);
		if (strcmp(k->domain, d) != 0)
			continue;
		const char *a =
		    dkim_key_alg(k->key) == DKIM_ALG_RSA_SHA256 ? "rsa-sha256" : "ed25519-sha256";
		if (sl < sizeof(sel))
			sl += (size_t)snprintf(sel + sl, sizeof(sel) - sl, "%s%s", sl ? "," : "",
			                       k->selector);
		if (al < sizeof(alg))
			al +=
			    (size_t)snprintf(alg + al, sizeof(alg) - al, "%s%s", al ? "," : "", a);
	}
	log_info("event=dkim_sign id=%s dkim_sign=ok d=%s s=%s a=%s", id, d, sel, alg);
}

void smtp_sign_result_clear(struct smtp_sign_result *r)
{
	free(r->fields);
	memset(r, 0, sizeof(*r));
}

/* ------------------------------------------------------------ the job */

struct sign_job {
	const struct smtp_signer *sg;
	char id[64];
	bool check_owner;
	char owner[256];
	const char *msg;
	size_t len;
	bool mapped;
	struct smtp_sign_result *r;
	void (*done)(void *arg);
	void *arg;
};

static void job_work(void *arg)
{
	struct sign_job *j = arg;
	sign_run(j->sg, j->id, j->msg, j->len, j->check_owner ? j->owner : NULL, j->mapped, j->r);
}

static void job_done(void *arg)
{
	struct sign_job *j = arg;
	void (*done)(void *) = j->done;
	void *a = j->arg;
	free(j);
	done(a);
}

int smtp_sign_submit(struct pool *pool, struct worker *w, const struct smtp_signer *sg,
                     const char *id, const char *msg, size_t len, bool mapped, const char *owner,
                     struct smtp_sign_result *r, void (*done)(void *arg), void *arg)
{
	if (!pool)
		return TERN_EINVAL;
	struct sign_job *j = calloc(1, sizeof(*j));
	if (!j)
		return TERN_ENOMEM;
	j->sg = sg;
	tern_strlcpy(j->id, id, sizeof(j->id));
	j->check_owner = owner != NULL;
	if (owner)
		tern_strlcpy(j->owner, owner, sizeof(j->owner));
	j->msg = msg;
	j->len = len;
	j->mapped = mapped;
	j->r = r;
	j->done = done;
	j->arg = arg;
	int rc = pool_submit(pool, job_work, w, job_done, j);
	if (rc != TERN_OK)
		free(j);
	return rc;
}

int smtp_sign_insert(const struct smtp_sign_result *r, struct tbuf *msg, size_t at)
{
	if (r->status != SMTP_SIGN_OK || !r->len)
		return TERN_OK;
	if (TERN_BUG_ON(at > msg->len))
		return TERN_EINVAL;
	int rc = tbuf_reserve(msg, r->len);
	if (rc != TERN_OK)
		return rc;
	memmove(msg->data + at + r->len, msg->data + at, msg->len - at);
	memcpy(msg->data + at, r->fields, r->len);
	msg->len += r->len;
	return TERN_OK;
}
