/*
 * stats.h — delivery statistics over the event store (issue 13 item 4):
 * counts per hour or day, per recipient domain, API key, tag or destination
 * provider, delivery latency percentiles and the top bounce reasons, for
 * GET /api/v1/stats (http/stats_routes.h) and `tern stats`.
 *
 * Owns: the aggregation queries over DATA/events.db and the mapping of a
 * destination to a provider name.
 * Must never: count anything but stored events (the totals are exactly what
 * GET /api/v1/events returns for the same window: the bar of issue 13); write
 * to the store; run on an event loop (every query blocks on SQLite).
 *
 * Counts are taken at query time with SQL over the window's id range
 * (events_id_range: each minute's smallest and largest id, the store has no
 * index on time) filtered by time: exact by construction, and fine for the
 * sizes one node keeps (retention bounds them). A rollup table would be the
 * next step.
 */
#ifndef TERN_STORE_STATS_H
#define TERN_STORE_STATS_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

/* The counters, in the order of the API's JSON fields. */
enum stats_counter {
	ST_SENT = 0, /* "queued" events: recipients accepted for delivery */
	ST_DELIVERED,
	ST_DEFERRED, /* each deferral counts (a recipient may defer several times) */
	ST_BOUNCED,
	ST_COMPLAINED,
	ST_OPENED,
	ST_CLICKED,
	ST_SUPPRESSED,
	ST__COUNT
};

/* "sent", "delivered", ...; NULL out of range. */
const char *stats_counter_name(enum stats_counter c);

enum stats_group {
	STATS_GROUP_NONE = 0,
	STATS_GROUP_DOMAIN,   /* the recipient's domain, lowercased */
	STATS_GROUP_KEY,      /* the API key or SASL user that sent it */
	STATS_GROUP_TAG,      /* each tag of the event (an event with two counts twice) */
	STATS_GROUP_PROVIDER, /* google, microsoft, yahoo, apple, ... else the domain */
};

/* "none", "domain", ...; NULL out of range. */
const char *stats_group_name(enum stats_group g);

struct stats_query {
	int64_t since, until; /* unix seconds, both included */
	uint32_t bucket;      /* seconds: 3600 (hour) or 86400 (day) */
	enum stats_group group;
};

struct stats_counts {
	uint64_t n[ST__COUNT];
};

struct stats_point {
	int64_t t; /* bucket start (a multiple of bucket, UTC) */
	struct stats_counts c;
};

struct stats_group_row {
	char *name; /* "(none)" for events without a recipient, key or tag */
	struct stats_counts c;
};

struct stats_reason {
	char *status; /* enhanced status ("5.1.1"), "" when none was recorded */
	char *reason; /* the latest reply with that status */
	uint64_t count;
};

/* Latency from a message's receipt to each delivery in the window, in
 * milliseconds, exact (nearest rank over every delivered event): the event
 * store keeps whole seconds, so the values are multiples of 1000. All 0
 * when count is 0. */
struct stats_latency {
	uint64_t count;
	int64_t p50, p90, p99, max;
};

struct stats_result {
	struct stats_counts totals;
	struct stats_point *series; /* every bucket from since to until, zeros included */
	size_t n_series;
	struct stats_group_row *groups; /* by sent, then delivered, descending; then name */
	size_t n_groups;
	struct stats_latency latency;
	struct stats_reason *reasons; /* by count, descending; at most STATS_REASONS_MAX */
	size_t n_reasons;
};

#define STATS_REASONS_MAX 10
/* Bounds a query's answer: 100 days of hours and the hour now running. */
#define STATS_SERIES_MAX 2401

/*
 * Runs q over the store db (events_db_open). TERN_OK with *out filled (free
 * with stats_result_free), TERN_EINVAL for a query out of bounds (since >
 * until, a bucket other than an hour or a day, more than STATS_SERIES_MAX
 * buckets), TERN_EIO when SQLite failed, TERN_ENOMEM.
 */
int stats_run(sqlite3 *db, const struct stats_query *q, struct stats_result *out);
void stats_result_free(struct stats_result *r);

/*
 * Pure: the provider name of a destination — the recipient's domain
 * (lowercase), or, when that is no known provider's, the MX host the
 * delivery went to (relay; may be NULL, "local" or an address). The
 * provider table is deliver/shaping.c's (shaping_site, shaping_mx_site);
 * its sites are named here: gmail.com -> "google", outlook.com ->
 * "microsoft", yahoo.com -> "yahoo", icloud.com -> "apple", another site by
 * its own name (gmx.net); no provider: the domain itself ("(none)" if empty).
 */
const char *stats_provider(const char *domain, const char *relay);

#endif
