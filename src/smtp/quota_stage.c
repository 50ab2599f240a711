/*
 * quota_stage.c — sending quotas on SMTP submission (smtp/quota_stage.h).
 *
 * Owns: turning submission_quotas { } and quotas { } into quota asks for
 * one message, and the words of the 452 4.7.1 reply.
 * Must never: block (store/quota.c writes behind), or count mail that is
 * not authenticated submission (the caller decides: MX mail has no quota).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "smtp/quota_stage.h"
#include "store/quota.h"

/* The asks for user and sender's domain: 1 or 2. dom receives the domain. */
static size_t asks_of(const struct tern_config *conf, const char *user, const char *sender,
                      struct quota_ask asks[2], char *dom, size_t domlen)
{
	const struct conf_quota *uq = conf_submission_quota(conf, user);
	asks[0] =
	    (struct quota_ask){QUOTA_USER, user,
	                       uq ? (struct quota_limits){uq->per_second, uq->per_hour, uq->per_day}
	                          : (struct quota_limits){0, 0, 0}};
	const char *at = sender ? strrchr(sender, '@') : NULL;
	if (!at || !at[1] || strlen(at + 1) >= domlen)
		return 1;
	tern_strlcpy(dom, at + 1, domlen);
	tern_ascii_lower(dom);
	const struct conf_quota *dq = conf_domain_quota(conf, dom);
	asks[1] =
	    (struct quota_ask){QUOTA_DOMAIN, dom,
	                       dq ? (struct quota_limits){dq->per_second, dq->per_hour, dq->per_day}
	                          : (struct quota_limits){0, 0, 0}};
	return 2;
}

bool smtp_quota_refuse(const struct tern_config *conf, const char *user, const char *sender,
                       char *line, size_t len)
{
	struct quota_ask asks[2];
	char dom[256];
	size_t n = asks_of(conf, user, sender, asks, dom, sizeof(dom));
	bool any = false;
	for (size_t i = 0; i < n; i++)
		any |= quota_limits_any(&asks[i].lim);
	struct quota_refusal why;
	if (!any || quota_check(asks, n, (int64_t)time(NULL), &why) == TERN_OK)
		return false;
	/* 452: a temporary refusal the client retries (RFC 5321 §4.5.3.1.10
	 * uses it for too many recipients; rate limits use it the same way) */
	snprintf(line, len,
	         "452 4.7.1 Too many messages: %s %.100s may send %llu per %s (sending quota); "
	         "try again in %lld seconds",
	         why.kind == QUOTA_USER ? "user" : "domain", why.name,
	         (unsigned long long)why.limit, quota_window_name(why.window),
	         (long long)why.retry_after);
	return true;
}

void smtp_quota_charge(const struct tern_config *conf, const char *user, const char *sender)
{
	struct quota_ask asks[2];
	char dom[256];
	size_t n = asks_of(conf, user, sender, asks, dom, sizeof(dom));
	for (size_t i = 0; i < n; i++)
		asks[i].lim = (struct quota_limits){0, 0, 0}; /* checked at MAIL: count only */
	struct quota_refusal why;
	quota_take(asks, n, (int64_t)time(NULL), &why);
}
