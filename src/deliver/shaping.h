/*
 * shaping.h — outbound traffic shaping per destination (remote.c asks it):
 * how many connections a destination gets, how many messages go over one
 * connection, how many messages start per minute, and the automatic
 * back-off of a destination that answers 421 or 4.7.x.
 *
 * Owns: the built-in limits of the big mailbox providers, merging them with
 * shaping { } of the config, the per-minute token buckets and the back-off
 * state of each destination (in memory, process-wide, thread-safe).
 * Never: does I/O other than one log line per back-off, blocks (one short
 * mutex), or decides a message's fate: a message over a limit waits in the
 * remote engine's queue, it is never deferred or bounced by shaping.
 *
 * A destination is the recipient domain, or its provider's site name when
 * the domain is one of a provider's (googlemail.com counts as gmail.com,
 * hotmail.com as outlook.com, ...): one bucket and one back-off per site.
 */
#ifndef TERN_DELIVER_SHAPING_H
#define TERN_DELIVER_SHAPING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/conf.h"

/* Without any setting: per_connection and the default connections when
 * delivery.max_per_destination is 0. */
#define SHAPE_DEFAULT_PER_CONNECTION 100
#define SHAPE_BACKOFF_MAX_LEVEL 4 /* back-off repeats count up to this */

struct shape_limits {
	uint32_t connections;    /* >= 1 */
	uint32_t per_connection; /* >= 1 */
	uint32_t per_minute;     /* 0: unlimited */
};

/* The provider site of a domain (lowercase) from the built-in table, e.g.
 * "gmail.com" for "googlemail.com"; NULL when it is no known provider's. */
const char *shaping_site(const char *domain);

/* Pure: the provider site of an MX host name from the built-in suffix table
 * (e.g. "gmail.com" for "aspmx.l.google.com", "outlook.com" for
 * "example-org.mail.protection.outlook.com"); NULL when none. */
const char *shaping_mx_site(const char *mxhost);
/* Learns that domain's mail goes to mxhost: when that is a provider's MX,
 * domain counts as the provider's site from now on (its built-in limits,
 * its shared bucket and back-off), as a Google Workspace domain should.
 * Process-wide, bounded, in memory. */
void shaping_learn_mx(const char *domain, const char *mxhost);

/*
 * Pure: the limits for domain (lowercase). Each field is taken from the
 * first that sets it: shaping."DOMAIN", shaping."SITE" (the provider site),
 * the built-in values of the site, shaping.default, then the fallback
 * (connections: max_per_destination, else 1; per_connection 100; per_minute
 * unlimited).
 */
void shaping_resolve(const struct conf_shaping *sh, uint32_t max_per_destination,
                     const char *domain, struct shape_limits *out);
/* As shaping_resolve for a domain known to belong to site (from its MX). */
void shaping_resolve_site(const struct conf_shaping *sh, uint32_t max_per_destination,
                          const char *domain, const char *site, struct shape_limits *out);

/* A token bucket of per_minute tokens a minute holding at most per_minute
 * (a minute's burst). */
struct shape_bucket {
	double tokens;
	double last; /* monotonic seconds of the last refill */
	bool init;
};
/* Pure: takes one token at time now (monotonic seconds); false when there is
 * none, with *wait the seconds until there is. per_minute 0 always gives. */
bool shape_bucket_take(struct shape_bucket *b, uint32_t per_minute, double now, double *wait);

/* Back-off of one destination: level 0 is none; each hit raises it (up to
 * SHAPE_BACKOFF_MAX_LEVEL) and lasts base * level seconds; afterwards the
 * level falls by one every base seconds (a gradual recovery). */
struct shape_backoff {
	unsigned level;
	double until;
};
/* Pure: a 421, or a 4xx reply with an enhanced code 4.7.x, asks us to slow
 * down (RFC 5321 §3.8, RFC 3463 §3.8 security or policy status). */
bool shaping_is_backoff_reply(int code, const char *enhanced);
/* Pure: records one hit at now. */
void shape_backoff_hit(struct shape_backoff *b, double now, uint32_t base);
/* Pure: the level at now (recovering as time passed). */
unsigned shape_backoff_level(struct shape_backoff *b, double now, uint32_t base);
/* Pure: halves connections and per_minute once per level (never below 1;
 * an unlimited per_minute stays unlimited). */
void shape_apply_backoff(struct shape_limits *l, unsigned level);

/*
 * Process-wide, thread-safe. shaping_limits: the limits of domain now, the
 * back-off applied. shaping_take: takes a per-minute token of domain's site
 * (false and *wait seconds when none). shaping_note_reply: a reply from a
 * server of domain; a back-off reply backs the destination off and logs
 * event=backoff dest=... level=... for=...s reason=... (id: the queue id).
 */
void shaping_limits(const struct tern_config *conf, const char *domain, struct shape_limits *out);
bool shaping_take(const struct tern_config *conf, const char *domain, double *wait);
void shaping_note_reply(const struct tern_config *conf, const char *domain, const char *id,
                        int code, const char *enhanced, const char *text);
/* Seconds until domain's back-off period ends (0: none). */
uint32_t shaping_backoff_left(const struct tern_config *conf, const char *domain);
/* Forgets every bucket and back-off (unit tests). */
void shaping_reset(void);

#endif
