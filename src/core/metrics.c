/*
 * metrics.c — the Prometheus registry (core/metrics.h): a static table of
 * families, each with up to METRIC_MAX_SERIES label sets, and its text
 * exposition.
 *
 * Owns: the table and the label interning. Never: a lock or an allocation
 * on an update of a known series (relaxed atomics only); a new label set
 * takes a mutex once, then is published with a release store of the
 * family's series count, so readers scan without locking.
 */
#include "core/metrics.h"

#include <dirent.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"

enum metric_type { MT_COUNTER, MT_GAUGE, MT_HISTOGRAM };

struct family {
	const char *name;
	const char *help;
	enum metric_type type;
	unsigned n_labels;
	const char *label[2];
	const double *bounds; /* histograms: ascending upper bounds, no +Inf */
	size_t n_bounds;
	const char *seed[4][2]; /* label sets shown (as 0) before first use */
};

/* Spool commits are one fdatasync of a group: sub-millisecond on SSDs,
 * tens of milliseconds on disks. */
static const double commit_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                       0.05,   0.1,   0.25,   0.5,   1,    2.5};
/* DNS: a cache hit is microseconds, a timeout is the policy's 5 s. */
static const double dns_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                    0.25,  0.5,    1,     2.5,  5,     10};

#define NB(a) (sizeof(a) / sizeof((a)[0]))

#define F(n, h, t) .name = (n), .help = (h), .type = (t)
static const struct family families[M__COUNT] = {
    [M_CONNECTIONS] = {F("tern_connections_total",
                         "SMTP connections accepted, by listener and profile.", MT_COUNTER),
                       .n_labels = 2, .label = {"listener", "profile"}},
    [M_SESSIONS_ACTIVE] = {F("tern_sessions_active", "Sessions open now, by profile.", MT_GAUGE),
                           .n_labels = 1, .label = {"profile"}},
    [M_MESSAGES_RECEIVED] = {F("tern_messages_received_total",
                               "Messages accepted (250 after DATA or BDAT LAST), by profile.",
                               MT_COUNTER),
                             .n_labels = 1, .label = {"profile"}},
    [M_MESSAGES_DELIVERED] = {F("tern_messages_delivered_total",
                                "Recipients delivered, by transport (local Maildir or remote "
                                "SMTP).",
                                MT_COUNTER),
                              .n_labels = 1, .label = {"transport"},
                              .seed = {{"local", NULL}, {"remote", NULL}}},
    [M_MESSAGES_DEFERRED] = {F("tern_messages_deferred_total",
                               "Recipients deferred after a temporary failure.", MT_COUNTER)},
    [M_MESSAGES_BOUNCED] = {F("tern_messages_bounced_total",
                              "Recipients failed permanently (bounced).", MT_COUNTER)},
    [M_SPOOL_COMMIT_DURATION] = {F("tern_spool_commit_duration_seconds",
                                   "Time of one spool group commit (write and fdatasync).",
                                   MT_HISTOGRAM),
                                 .bounds = commit_bounds, .n_bounds = NB(commit_bounds)},
    [M_DNS_QUERY_DURATION] = {F("tern_dns_query_duration_seconds",
                                "Time from a DNS query to its answer or failure.", MT_HISTOGRAM),
                              .bounds = dns_bounds, .n_bounds = NB(dns_bounds)},
    [M_TLS_HANDSHAKES] = {F("tern_tls_handshakes_total", "TLS handshakes, by direction and result.",
                            MT_COUNTER),
                          .n_labels = 2, .label = {"direction", "result"},
                          .seed = {{"inbound", "ok"},
                                   {"inbound", "failed"},
                                   {"outbound", "ok"},
                                   {"outbound", "failed"}}},
    [M_SMTP_REPLIES] = {F("tern_smtp_replies_total", "SMTP replies sent to clients, by code class.",
                          MT_COUNTER),
                        .n_labels = 1, .label = {"code_class"},
                        .seed = {{"2xx", NULL}, {"4xx", NULL}, {"5xx", NULL}}},
    [M_AUTH_FAILURES] = {F("tern_auth_failures_total", "Failed SMTP AUTH attempts, by mechanism.",
                           MT_COUNTER),
                         .n_labels = 1, .label = {"mechanism"}},
    [M_WEBHOOK_BACKLOG] = {F("tern_webhook_backlog", "Webhook deliveries waiting in the outbox.",
                             MT_GAUGE)},
    [M_DESTINATION_THROTTLED] = {F("tern_destination_throttled_total",
                                   "Deliveries held back by per-destination shaping.", MT_COUNTER),
                                 .n_labels = 1, .label = {"destination"}},
    [M_ARCHIVE_BACKLOG_MSGS] = {F("tern_archive_backlog_messages",
                                  "Committed messages the archive has not yet stored "
                                  "(their spool segments are kept until it has).",
                                  MT_GAUGE)},
    [M_ARCHIVE_BACKLOG_BYTES] = {F("tern_archive_backlog_bytes",
                                   "Spool record bytes of the archive's backlog.", MT_GAUGE)},
    [M_QUEUED_MEMORY] = {F("tern_queued_memory_bytes",
                           "Bytes of committed messages kept in memory for their delivery "
                           "(limits.queued_memory bounds it).",
                           MT_GAUGE)},
    [M_BODIES_REREAD] = {F("tern_bodies_reread_total",
                           "Messages read back from the spool for delivery because "
                           "limits.queued_memory was reached, by stage.",
                           MT_COUNTER),
                         .n_labels = 1, .label = {"stage"},
                         .seed = {{"scheduler", NULL}, {"remote", NULL}}},
    [M_SERIES_DROPPED] = {F("tern_metrics_series_dropped_total",
                            "Metric updates dropped because a family had too many label sets.",
                            MT_COUNTER)},
};
#undef F

struct series {
	char l[2][METRIC_MAX_LABEL_LEN + 1];
	int64_t v; /* counters and gauges; atomics only */
};

struct hist {
	uint64_t bucket[METRIC_MAX_BUCKETS + 1]; /* non-cumulative; [n_bounds] is +Inf */
	uint64_t sum_ns;
};

static struct series table[M__COUNT][METRIC_MAX_SERIES];
static size_t n_series[M__COUNT]; /* published with release stores */
static struct hist hists[M__COUNT];
static pthread_mutex_t intern_lock = PTHREAD_MUTEX_INITIALIZER;

static bool label_eq(const char *have, const char *want)
{
	return strncmp(have, want ? want : "", METRIC_MAX_LABEL_LEN) == 0;
}

/* The series of (l1, l2) in family id, interning it if new; NULL when the
 * family is full. */
static struct series *find(enum metric_id id, const char *l1, const char *l2)
{
	const struct family *f = &families[id];
	if (f->n_labels == 0)
		return &table[id][0];
	if (f->n_labels < 2)
		l2 = NULL;
	size_t n = __atomic_load_n(&n_series[id], __ATOMIC_ACQUIRE);
	for (size_t i = 0; i < n; i++)
		if (label_eq(table[id][i].l[0], l1) && label_eq(table[id][i].l[1], l2))
			return &table[id][i];
	struct series *s = NULL;
	pthread_mutex_lock(&intern_lock);
	n = __atomic_load_n(&n_series[id], __ATOMIC_ACQUIRE);
	for (size_t i = 0; i < n && !s; i++)
		if (label_eq(table[id][i].l[0], l1) && label_eq(table[id][i].l[1], l2))
			s = &table[id][i];
	if (!s && n < METRIC_MAX_SERIES) {
		s = &table[id][n];
		snprintf(s->l[0], sizeof(s->l[0]), "%s", l1 ? l1 : "");
		snprintf(s->l[1], sizeof(s->l[1]), "%s", l2 ? l2 : "");
		__atomic_store_n(&s->v, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&n_series[id], n + 1, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&intern_lock);
	if (!s)
		__atomic_fetch_add(&table[M_SERIES_DROPPED][0].v, 1, __ATOMIC_RELAXED);
	return s;
}

void metric_add_l2(enum metric_id id, const char *l1, const char *l2, int64_t delta)
{
	TERN_BUG_ON((unsigned)id >= M__COUNT || families[id].type == MT_HISTOGRAM);
	struct series *s = find(id, l1, l2);
	if (s)
		__atomic_fetch_add(&s->v, delta, __ATOMIC_RELAXED);
}

void metric_add_l(enum metric_id id, const char *l1, int64_t delta)
{
	metric_add_l2(id, l1, NULL, delta);
}

void metric_add(enum metric_id id, int64_t delta)
{
	metric_add_l2(id, NULL, NULL, delta);
}

void metric_set(enum metric_id id, int64_t v)
{
	TERN_BUG_ON((unsigned)id >= M__COUNT || families[id].type != MT_GAUGE ||
	            families[id].n_labels != 0);
	__atomic_store_n(&table[id][0].v, v, __ATOMIC_RELAXED);
}

size_t metrics_bucket_index(const double *bounds, size_t n, double v)
{
	size_t i = 0;
	while (i < n && v > bounds[i])
		i++;
	return i;
}

void metric_observe(enum metric_id id, double seconds)
{
	TERN_BUG_ON((unsigned)id >= M__COUNT || families[id].type != MT_HISTOGRAM);
	const struct family *f = &families[id];
	if (!(seconds >= 0)) /* negative or NaN: a clock step, not a duration */
		seconds = 0;
	size_t b = metrics_bucket_index(f->bounds, f->n_bounds, seconds);
	__atomic_fetch_add(&hists[id].bucket[b], 1, __ATOMIC_RELAXED);
	uint64_t ns = seconds < 1e9 ? (uint64_t)(seconds * 1e9) : (uint64_t)1e18;
	__atomic_fetch_add(&hists[id].sum_ns, ns, __ATOMIC_RELAXED);
}

double metric_since(const struct timespec *ts)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - ts->tv_sec) + (double)(now.tv_nsec - ts->tv_nsec) / 1e9;
}

void metric_observe_since(enum metric_id id, const struct timespec *ts)
{
	metric_observe(id, metric_since(ts));
}

void metrics_reset(void)
{
	pthread_mutex_lock(&intern_lock);
	for (size_t id = 0; id < M__COUNT; id++) {
		__atomic_store_n(&n_series[id], 0, __ATOMIC_RELEASE);
		for (size_t i = 0; i < METRIC_MAX_SERIES; i++)
			__atomic_store_n(&table[id][i].v, 0, __ATOMIC_RELAXED);
		for (size_t b = 0; b <= METRIC_MAX_BUCKETS; b++)
			__atomic_store_n(&hists[id].bucket[b], 0, __ATOMIC_RELAXED);
		__atomic_store_n(&hists[id].sum_ns, 0, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&intern_lock);
	for (size_t id = 0; id < M__COUNT; id++)
		for (size_t k = 0; k < 4 && families[id].seed[k][0]; k++)
			find((enum metric_id)id, families[id].seed[k][0], families[id].seed[k][1]);
}

int64_t metric_value(enum metric_id id, const char *l1, const char *l2)
{
	const struct family *f = &families[id];
	if (f->n_labels == 0)
		return __atomic_load_n(&table[id][0].v, __ATOMIC_RELAXED);
	size_t n = __atomic_load_n(&n_series[id], __ATOMIC_ACQUIRE);
	for (size_t i = 0; i < n; i++)
		if (label_eq(table[id][i].l[0], l1) &&
		    label_eq(table[id][i].l[1], f->n_labels < 2 ? NULL : l2))
			return __atomic_load_n(&table[id][i].v, __ATOMIC_RELAXED);
	return 0;
}

/* ---- exposition ---------------------------------------------------------- */

int metrics_escape_label(struct tbuf *out, const char *s)
{
	int rc = TERN_OK;
	for (const char *p = s; *p && rc == TERN_OK; p++) {
		if (*p == '\\')
			rc = tbuf_append(out, "\\\\", 2);
		else if (*p == '"')
			rc = tbuf_append(out, "\\\"", 2);
		else if (*p == '\n')
			rc = tbuf_append(out, "\\n", 2);
		else
			rc = tbuf_append(out, p, 1);
	}
	return rc;
}

static int head(struct tbuf *out, const char *name, const char *help, const char *type)
{
	return tbuf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{l1="v1",l2="v2"} value */
static int series_line(struct tbuf *out, const char *name, const struct family *f,
                       const struct series *s, const char *value)
{
	int rc = tbuf_append_str(out, name);
	for (unsigned k = 0; rc == TERN_OK && k < f->n_labels; k++) {
		rc = tbuf_printf(out, "%s%s=\"", k ? "," : "{", f->label[k]);
		if (rc == TERN_OK)
			rc = metrics_escape_label(out, s->l[k]);
		if (rc == TERN_OK)
			rc = tbuf_append(out, "\"", 1);
	}
	if (rc == TERN_OK && f->n_labels)
		rc = tbuf_append(out, "}", 1);
	if (rc == TERN_OK)
		rc = tbuf_printf(out, " %s\n", value);
	return rc;
}

static int render_histogram(struct tbuf *out, enum metric_id id)
{
	const struct family *f = &families[id];
	uint64_t cum = 0;
	int rc = TERN_OK;
	for (size_t b = 0; rc == TERN_OK && b <= f->n_bounds; b++) {
		cum += __atomic_load_n(&hists[id].bucket[b], __ATOMIC_RELAXED);
		if (b < f->n_bounds)
			rc = tbuf_printf(out, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", f->name,
			                 f->bounds[b], cum);
		else
			rc = tbuf_printf(out, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", f->name, cum);
	}
	uint64_t ns = __atomic_load_n(&hists[id].sum_ns, __ATOMIC_RELAXED);
	if (rc == TERN_OK)
		rc = tbuf_printf(out, "%s_sum %.9f\n%s_count %" PRIu64 "\n", f->name,
		                 (double)ns / 1e9, f->name, cum);
	return rc;
}

static int render_family(struct tbuf *out, enum metric_id id)
{
	const struct family *f = &families[id];
	static const char *const types[] = {"counter", "gauge", "histogram"};
	/* The text format (0.0.4) names a counter in # TYPE as its samples are
	 * named, _total included (only OpenMetrics drops the suffix there):
	 * parsers match the two names exactly. */
	int rc = head(out, f->name, f->help, types[f->type]);
	if (rc != TERN_OK)
		return rc;
	if (f->type == MT_HISTOGRAM)
		return render_histogram(out, id);
	size_t n = f->n_labels ? __atomic_load_n(&n_series[id], __ATOMIC_ACQUIRE) : 1;
	for (size_t i = 0; rc == TERN_OK && i < n; i++) {
		char v[32];
		snprintf(v, sizeof(v), "%" PRId64,
		         __atomic_load_n(&table[id][i].v, __ATOMIC_RELAXED));
		rc = series_line(out, f->name, f, &table[id][i], v);
	}
	return rc;
}

static int render_gauge(struct tbuf *out, const char *name, const char *help, double v,
                        int decimals)
{
	if (v < 0)
		return TERN_OK;
	int rc = head(out, name, help, "gauge");
	if (rc == TERN_OK)
		rc = tbuf_printf(out, "%s %.*f\n", name, decimals, v);
	return rc;
}

int metrics_render(struct tbuf *out, const struct metrics_extra *e)
{
	int rc = TERN_OK;
	for (size_t id = 0; rc == TERN_OK && id < M__COUNT; id++)
		rc = render_family(out, (enum metric_id)id);
	if (rc == TERN_OK && e->queue_active >= 0) {
		rc = head(out, "tern_queue_messages", "Messages in the queue, by state.", "gauge");
		if (rc == TERN_OK)
			rc = tbuf_printf(out,
			                 "tern_queue_messages{state=\"active\"} %" PRId64 "\n"
			                 "tern_queue_messages{state=\"deferred\"} %" PRId64 "\n"
			                 "tern_queue_messages{state=\"hold\"} %" PRId64 "\n",
			                 e->queue_active, e->queue_deferred, e->queue_hold);
	}
	if (rc == TERN_OK)
		rc = render_gauge(out, "tern_spool_bytes", "Bytes of the spool's files on disk.",
		                  (double)e->spool_bytes, 0);
	if (rc == TERN_OK && e->version) {
		rc = head(out, "tern_build_info", "Always 1; the version is a label.", "gauge");
		if (rc == TERN_OK)
			rc = tbuf_append_str(out, "tern_build_info{version=\"");
		if (rc == TERN_OK)
			rc = metrics_escape_label(out, e->version);
		if (rc == TERN_OK)
			rc = tbuf_append_str(out, "\"} 1\n");
	}
	if (rc == TERN_OK)
		rc = render_gauge(out, "process_resident_memory_bytes",
		                  "Resident memory size in bytes.", e->resident_bytes, 0);
	if (rc == TERN_OK)
		rc = render_gauge(out, "process_open_fds", "Number of open file descriptors.",
		                  e->open_fds, 0);
	if (rc == TERN_OK && e->cpu_seconds >= 0) {
		rc = head(out, "process_cpu_seconds_total",
		          "Total user and system CPU time in seconds.", "counter");
		if (rc == TERN_OK)
			rc = tbuf_printf(out, "process_cpu_seconds_total %.2f\n", e->cpu_seconds);
	}
	if (rc == TERN_OK)
		rc = render_gauge(out, "process_start_time_seconds",
		                  "Start time of the process since the Unix epoch in seconds.",
		                  e->start_time_seconds, 2);
	return rc;
}

/* ---- /proc --------------------------------------------------------------- */

static double boot_time(void)
{
	FILE *f = fopen("/proc/stat", "re");
	char line[256];
	double bt = -1;
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long long v;
		if (sscanf(line, "btime %llu", &v) == 1) {
			bt = (double)v;
			break;
		}
	}
	if (f)
		fclose(f);
	return bt;
}

void metrics_collect_process(struct metrics_extra *e)
{
	e->resident_bytes = e->open_fds = e->cpu_seconds = e->start_time_seconds = -1;
	long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
	char buf[1024];
	FILE *f = fopen("/proc/self/stat", "re");
	size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
	if (f)
		fclose(f);
	buf[n] = '\0';
	/* The command name may hold spaces and parentheses: fields count from
	 * the last ')'. After it: state (3) ... utime (14), stime (15),
	 * starttime (22), rss (24). */
	const char *p = strrchr(buf, ')');
	unsigned long long utime, stime, start;
	long long rss;
	if (p && tick > 0 &&
	    sscanf(p + 1,
	           " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d "
	           "%*d %llu %*u %lld",
	           &utime, &stime, &start, &rss) == 4) {
		e->cpu_seconds = (double)(utime + stime) / (double)tick;
		e->resident_bytes = (double)rss * (double)page;
		double bt = boot_time();
		if (bt >= 0)
			e->start_time_seconds = bt + (double)start / (double)tick;
	}
	DIR *d = opendir("/proc/self/fd");
	if (d) {
		double count = 0;
		struct dirent *de;
		while ((de = readdir(d)))
			if (de->d_name[0] != '.')
				count++;
		closedir(d);
		e->open_fds = count - 1; /* not the directory's own descriptor */
	}
}
