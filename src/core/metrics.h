/*
 * metrics.h — the Prometheus metrics registry: counters, gauges and
 * histograms with fixed families, updated lock-free from any thread, and
 * the text exposition format (version 0.0.4) they are scraped in.
 *
 * Owns: the process-wide registry (one static table, no allocation on the
 * mail path), the rendering of it, and the /proc process figures.
 * Never: blocks, takes a lock or allocates in an update (metric_inc,
 * metric_add, metric_observe: one relaxed atomic add, or two for a
 * histogram, plus a short label lookup where the family has labels);
 * never logs.
 *
 * Hooks elsewhere are one line: metric_inc(M_MESSAGES_DEFERRED) or
 * metric_inc_l(M_MESSAGES_DELIVERED, "remote"). A family with labels keeps
 * at most METRIC_MAX_SERIES label combinations; further ones are counted
 * in tern_metrics_series_dropped_total and otherwise ignored (label values
 * come from the configuration or fixed sets, never from the network).
 *
 * For other modules: tern_webhook_backlog is a gauge (metric_set) the
 * webhook outbox sets to the number of deliveries waiting;
 * tern_destination_throttled_total{destination} is a counter the shaping
 * code bumps (metric_inc_l) each time it holds a delivery back.
 */
#ifndef TERN_CORE_METRICS_H
#define TERN_CORE_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "core/buf.h"

enum metric_id {
	M_CONNECTIONS = 0,       /* counter {listener, profile} */
	M_SESSIONS_ACTIVE,       /* gauge {profile} */
	M_MESSAGES_RECEIVED,     /* counter {profile} */
	M_MESSAGES_DELIVERED,    /* counter {transport="local|remote"} */
	M_MESSAGES_DEFERRED,     /* counter */
	M_MESSAGES_BOUNCED,      /* counter */
	M_SPOOL_COMMIT_DURATION, /* histogram, seconds */
	M_DNS_QUERY_DURATION,    /* histogram, seconds */
	M_TLS_HANDSHAKES,        /* counter {direction, result} */
	M_SMTP_REPLIES,          /* counter {code_class} */
	M_AUTH_FAILURES,         /* counter {mechanism} */
	M_WEBHOOK_BACKLOG,       /* gauge (set by the webhook outbox) */
	M_DESTINATION_THROTTLED, /* counter {destination} (bumped by shaping) */
	M_SERIES_DROPPED,        /* counter: label sets past METRIC_MAX_SERIES */
	M_ARCHIVE_BACKLOG_MSGS,  /* gauge (the archive: committed, not yet archived) */
	M_ARCHIVE_BACKLOG_BYTES, /* gauge (their spool record bytes, kept by pins) */
	M_QUEUED_MEMORY,         /* gauge: bytes of bodies kept for delivery (core/budget.h) */
	M_BODIES_REREAD,         /* counter {stage}: bodies dropped, read back from the spool */
	M__COUNT
};

#define METRIC_MAX_SERIES 64
#define METRIC_MAX_BUCKETS 16

/* Updates. Label values are copied on first use (at most
 * METRIC_MAX_LABEL_LEN bytes each; longer ones are cut). A call that gives
 * fewer labels than the family has uses "" for the rest. Any thread. */
#define METRIC_MAX_LABEL_LEN 63
void metric_add(enum metric_id id, int64_t delta);
void metric_add_l(enum metric_id id, const char *l1, int64_t delta);
void metric_add_l2(enum metric_id id, const char *l1, const char *l2, int64_t delta);
#define metric_inc(id) metric_add((id), 1)
#define metric_dec(id) metric_add((id), -1)
#define metric_inc_l(id, l1) metric_add_l((id), (l1), 1)
#define metric_dec_l(id, l1) metric_add_l((id), (l1), -1)
#define metric_inc_l2(id, l1, l2) metric_add_l2((id), (l1), (l2), 1)
/* A gauge without labels takes v. */
void metric_set(enum metric_id id, int64_t v);
/* A histogram without labels counts one observation of seconds. */
void metric_observe(enum metric_id id, double seconds);
/* Now on CLOCK_MONOTONIC: the start of a duration for metric_observe_since. */
static inline struct timespec metric_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts;
}
/* Seconds since ts (CLOCK_MONOTONIC), for metric_observe. */
double metric_since(const struct timespec *ts);
/* metric_observe(id, metric_since(ts)) */
void metric_observe_since(enum metric_id id, const struct timespec *ts);

/* Zeroes every series and forgets every label set (tests; startup). */
void metrics_reset(void);

/* The value of one series (tests): 0 when the label set was never used. */
int64_t metric_value(enum metric_id id, const char *l1, const char *l2);

/* Index of the first bucket whose upper bound is >= v in bounds[0..n)
 * (ascending), or n (the +Inf bucket). Pure. */
size_t metrics_bucket_index(const double *bounds, size_t n, double v);

/* Appends s as a label value: \ " and newline escaped as the exposition
 * format says. Pure. */
int metrics_escape_label(struct tbuf *out, const char *s);

/* Figures computed at scrape time, outside the registry. A field < 0 is
 * not shown. */
struct metrics_extra {
	int64_t queue_active, queue_deferred, queue_hold; /* messages */
	int64_t spool_bytes;
	double resident_bytes;
	double open_fds;
	double cpu_seconds;
	double start_time_seconds;
	const char *version;
};

/* Fills the process_* fields from /proc/self (each -1 when unreadable). */
void metrics_collect_process(struct metrics_extra *e);

/*
 * Appends the whole registry and e in the text exposition format: for each
 * family # HELP and # TYPE, then its series; histograms as cumulative
 * _bucket{le="..."} lines ending in le="+Inf", then _sum and _count.
 * Depends only on the registry's values and e. TERN_ELIMIT when out's cap
 * is reached (out is then incomplete), TERN_ENOMEM.
 */
int metrics_render(struct tbuf *out, const struct metrics_extra *e);

#endif
