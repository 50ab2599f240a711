/*
 * dmarc_report_send.c — sending DMARC aggregate reports: one round over
 * DATA/dmarc.db (dmarc_reports_run) and the daemon's thread that runs a
 * round every reports.interval (policy/dmarc_report.h).
 *
 * Owns: grouping the recorded evaluations into reports, the external
 * destination verification's DNS question, deleting what was reported,
 * the reporter thread.
 *
 * Must never: run on an event loop (SQLite, zlib and a private DNS loop
 * all block), send a report to an external rua that did not authorize it,
 * or lose rows whose report could not be handed to the queue (they stay
 * for the next round, up to a week).
 */
#include "policy/dmarc_report.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/conf.h"
#include "core/err.h"
#include "core/log.h"
#include "dns/dns.h"

/* Rows whose reports could not be sent are dropped after this long. */
#define KEEP_UNSENT (7 * 86400)
/* How often the reporter looks for domains that are due (seconds). */
#define LOOK_EVERY 300
/* A report's XML past this is not built (RFC 9990 leaves the size to us). */
#define XML_MAX (64u << 20)

/* ------------------------------------------------------- DNS, blocking */

struct txt_wait {
	struct event_base *base;
	enum dns_status status;
	char **txt;
	size_t n;
	bool done;
};

static void txt_done(void *arg, const struct dns_result *r)
{
	struct txt_wait *w = arg;
	w->status = r->status;
	w->done = true;
	if (r->status == DNS_OK && r->rrtype == DNS_TXT) {
		w->txt = calloc(r->n ? r->n : 1, sizeof(*w->txt));
		for (size_t i = 0; w->txt && i < r->n; i++)
			if ((w->txt[i] = tern_strdup(r->txt[i])))
				w->n++;
	}
	event_base_loopbreak(w->base);
}

/* Is HOST authorized to receive reports about policy_domain? 1 yes (with
 * over[0..*n_over) replacing the destination when its record says so), 0
 * no, -1 a temporary DNS error (try again next round), -2 its record points
 * at another host (RFC 9990 §3: send to neither). */
static int verify_external(const struct tern_config *conf, const char *policy_domain,
                           const char *host, struct dmarc_rua *over, size_t *n_over)
{
	*n_over = 0;
	char name[DNS_NAME_MAX + 64], err[256];
	int n = snprintf(name, sizeof(name), "%s._report._dmarc.%s", policy_domain, host);
	if (n < 0 || (size_t)n > DNS_NAME_MAX)
		return 0; /* RFC 9990 §3 step 4 */
	struct event_base *base = event_base_new();
	struct dns_resolver *res =
	    base ? dns_resolver_new(base, (const char *const *)conf->dns.forward,
	                            conf->dns.n_forward, conf->dns.trust_anchor_file, err,
	                            sizeof(err))
	         : NULL;
	struct txt_wait w = {.base = base, .status = DNS_TEMPFAIL};
	if (res && dns_query(res, name, DNS_TXT, txt_done, &w) > 0) {
		struct timeval tv = {(time_t)conf->auth_checks.timeout + 1, 0};
		event_base_loopexit(base, &tv);
		event_base_dispatch(base);
	}
	int ok = -1;
	if (w.done && w.status == DNS_OK) {
		ok = dmarc_rua_authorized((const char *const *)w.txt, w.n) ? 1 : 0;
		if (ok && dmarc_rua_override((const char *const *)w.txt, w.n, host, over,
		                             DMARC_URIS_MAX, n_over) < 0)
			ok = -2;
	} else if (w.done && (w.status == DNS_NXDOMAIN || w.status == DNS_NODATA))
		ok = 0;
	for (size_t i = 0; i < w.n; i++)
		free(w.txt[i]);
	free(w.txt);
	dns_resolver_free(res);
	if (base)
		event_base_free(base);
	return ok;
}

/* ------------------------------------------------------------ one round */

static void copy_col(sqlite3_stmt *st, int col, char *out, size_t outlen)
{
	const unsigned char *s = sqlite3_column_text(st, col);
	tern_strlcpy(out, s ? (const char *)s : "", outlen);
}

static void random_alnum(char *out, size_t n)
{
	static const char set[] = "abcdefghijklmnopqrstuvwxyz0123456789";
	unsigned char r[64];
	if (n > sizeof(r) + 1)
		n = sizeof(r) + 1;
	if (getrandom(r, n - 1, 0) != (ssize_t)(n - 1))
		for (size_t i = 0; i + 1 < n; i++)
			r[i] = (unsigned char)(rand() & 0xff);
	for (size_t i = 0; i + 1 < n; i++)
		out[i] = set[r[i] % 36];
	out[n - 1] = '\0';
}

/* The report for domain's rows up to max_id: metadata, policy, grouped rows. */
static int load_agg(sqlite3 *db, const char *domain, int64_t max_id, struct dmarc_agg *a, char *rua,
                    size_t rualen, char *org, size_t orglen)
{
	sqlite3_stmt *st = NULL;
	int rc = TERN_EIO;
	if (sqlite3_prepare_v2(db,
	                       "SELECT p, sp, np, adkim, aspf, testing, psd, rua, org_domain FROM "
	                       "evals WHERE policy_domain = ? AND id <= ? ORDER BY id DESC LIMIT 1",
	                       -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, domain, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, max_id);
	if (sqlite3_step(st) != SQLITE_ROW)
		goto out;
	copy_col(st, 0, a->p, sizeof(a->p));
	copy_col(st, 1, a->sp, sizeof(a->sp));
	copy_col(st, 2, a->np, sizeof(a->np));
	char c[4];
	copy_col(st, 3, c, sizeof(c));
	a->adkim = c[0];
	copy_col(st, 4, c, sizeof(c));
	a->aspf = c[0];
	a->testing = sqlite3_column_int(st, 5) != 0;
	copy_col(st, 6, c, sizeof(c));
	a->psd = c[0];
	copy_col(st, 7, rua, rualen);
	copy_col(st, 8, org, orglen);
	sqlite3_finalize(st);
	st = NULL;
	if (sqlite3_prepare_v2(
	        db,
	        "SELECT ip, disposition, dkim_eval, spf_eval, header_from, env_from, dkim, "
	        "spf_domain, spf_scope, spf_result, COUNT(*) FROM evals WHERE policy_domain = ? "
	        "AND id <= ? GROUP BY ip, disposition, dkim_eval, spf_eval, header_from, env_from, "
	        "dkim, spf_domain, spf_scope, spf_result ORDER BY ip",
	        -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, domain, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, max_id);
	size_t cap = 0;
	int s;
	while ((s = sqlite3_step(st)) == SQLITE_ROW) {
		if (a->n_rows == cap) {
			size_t nc = cap ? cap * 2 : 16;
			struct dmarc_agg_row *nr = realloc(a->rows, nc * sizeof(*nr));
			if (!nr) {
				rc = TERN_ENOMEM;
				goto out;
			}
			a->rows = nr;
			cap = nc;
		}
		struct dmarc_agg_row *r = &a->rows[a->n_rows];
		memset(r, 0, sizeof(*r));
		copy_col(st, 0, r->ip, sizeof(r->ip));
		copy_col(st, 1, r->disposition, sizeof(r->disposition));
		copy_col(st, 2, r->dkim_eval, sizeof(r->dkim_eval));
		copy_col(st, 3, r->spf_eval, sizeof(r->spf_eval));
		copy_col(st, 4, r->header_from, sizeof(r->header_from));
		copy_col(st, 5, r->env_from, sizeof(r->env_from));
		const unsigned char *dk = sqlite3_column_text(st, 6);
		r->dkim_json = tern_strdup(dk ? (const char *)dk : "[]");
		copy_col(st, 7, r->spf_domain, sizeof(r->spf_domain));
		copy_col(st, 8, r->spf_scope, sizeof(r->spf_scope));
		copy_col(st, 9, r->spf_result, sizeof(r->spf_result));
		r->count = (uint64_t)sqlite3_column_int64(st, 10);
		a->n_rows++;
		if (!r->dkim_json) {
			rc = TERN_ENOMEM;
			goto out;
		}
	}
	rc = s == SQLITE_DONE ? TERN_OK : TERN_EIO;
out:
	sqlite3_finalize(st);
	return rc;
}

/* Sends domain's report to each rua. Returns true when the rows may go:
 * every rua got its report or was refused for good. */
static bool report_domain(const struct tern_config *conf, sqlite3 *db, const char *domain,
                          int64_t begin, int64_t max_id, int64_t now, dmarc_submit_fn submit,
                          void *arg, struct dmarc_run_stats *stats)
{
	const struct conf_dmarc_reports *cr = &conf->dmarc.reports;
	struct dmarc_agg a = {0};
	char rua[DMARC_REC_RUA_MAX], org[DMARC_REC_DOMAIN_MAX + 1];
	char dq[DMARC_DOMAIN_MAX * 4 + 8];
	struct tbuf xml, gz, msg;
	bool done = true;
	tbuf_init(&xml, XML_MAX);
	tbuf_init(&gz, XML_MAX + XML_MAX / 64 + 4096); /* deflateBound's worst case */
	tbuf_init(&msg, XML_MAX * 2);
	log_quote(domain, strlen(domain), dq, sizeof(dq));
	if (load_agg(db, domain, max_id, &a, rua, sizeof(rua), org, sizeof(org)) != TERN_OK) {
		log_error("event=dmarc_report_failed domain=%s reason=database", dq);
		stats->failed++;
		done = false;
		goto out;
	}
	a.org_name = cr->org_name ? cr->org_name : conf->hostname;
	a.email = cr->from;
	a.receiver = conf->hostname;
	tern_strlcpy(a.domain, domain, sizeof(a.domain));
	a.begin = begin;
	a.end = now;
	random_alnum(a.unique, 17);
	snprintf(a.report_id, sizeof(a.report_id), "%lld.%s.%s@%s", (long long)begin, domain,
	         a.unique, conf->hostname);
	if (dmarc_agg_xml(&a, &xml) != TERN_OK || dmarc_gzip(xml.data, xml.len, &gz) != TERN_OK) {
		log_error("event=dmarc_report_failed domain=%s reason=build", dq);
		stats->failed++;
		done = false;
		goto out;
	}
	for (char *line = rua, *nl; *line; line = nl + 1) {
		nl = strchr(line, '\n');
		if (!nl)
			break;
		*nl = '\0';
		char uq[DMARC_URI_MAX * 4 + 8];
		log_quote(line, strlen(line), uq, sizeof(uq));
		struct dmarc_rua r;
		if (!dmarc_rua_parse(line, &r)) {
			log_info("event=dmarc_report_skipped domain=%s rua=%s reason=not-mailto",
			         dq, uq);
			stats->skipped++;
			continue;
		}
		struct dmarc_rua over[DMARC_URIS_MAX];
		size_t n_over = 0;
		if (dmarc_rua_external(org, r.host)) {
			int v = verify_external(conf, domain, r.host, over, &n_over);
			if (v != 1) {
				log_info(
				    "event=dmarc_report_skipped domain=%s rua=%s reason=%s", dq, uq,
				    v == 0    ? "external-destination-not-authorized"
				    : v == -2 ? "external-destination-overridden-to-another-host"
				              : "external-destination-dns-error");
				stats->skipped++;
				if (v == -1)
					done = false;
				continue;
			}
		}
		const struct dmarc_rua *dest = n_over ? over : &r;
		for (size_t k = 0; k < (n_over ? n_over : 1); k++) {
			const struct dmarc_rua *d = &dest[k];
			char aq[DMARC_URI_MAX * 4 + 8];
			log_quote(d->addr, strlen(d->addr), aq, sizeof(aq));
			tbuf_reset(&msg);
			if (dmarc_agg_message(&a, d->addr, gz.data, gz.len, now, &msg) != TERN_OK) {
				stats->failed++;
				done = false;
				continue;
			}
			if (d->max_size && msg.len > d->max_size) {
				log_info("event=dmarc_report_skipped domain=%s rua=%s to=%s "
				         "reason=too-large "
				         "size=%zu limit=%llu",
				         dq, uq, aq, msg.len, (unsigned long long)d->max_size);
				stats->skipped++;
				continue;
			}
			if (submit(arg, cr->from, d->addr, msg.data, msg.len) != TERN_OK) {
				log_error(
				    "event=dmarc_report_failed domain=%s rua=%s to=%s reason=queue",
				    dq, uq, aq);
				stats->failed++;
				done = false;
				continue;
			}
			log_info("event=dmarc_report_sent domain=%s rua=%s to=%s report_id=%s "
			         "records=%zu size=%zu",
			         dq, uq, aq, a.report_id, a.n_rows, msg.len);
			stats->sent++;
		}
	}
out:
	dmarc_agg_free(&a);
	tbuf_free(&xml);
	tbuf_free(&gz);
	tbuf_free(&msg);
	return done;
}

int dmarc_reports_run(const struct tern_config *conf, int64_t now, int64_t due,
                      dmarc_submit_fn submit, void *arg, struct dmarc_run_stats *st)
{
	char err[512];
	memset(st, 0, sizeof(*st));
	if (!conf->dmarc.reports.from)
		return TERN_OK;
	sqlite3 *db = dmarc_db_open(conf->data_dir, true, err, sizeof(err));
	if (!db) {
		char q[600];
		log_error("event=dmarc_report_failed reason=%s",
		          log_quote(err, strlen(err), q, sizeof(q)));
		return TERN_EIO;
	}
	sqlite3_stmt *st_d = NULL;
	int rc = TERN_EIO;
	struct dom {
		char name[DMARC_REC_DOMAIN_MAX + 1];
		int64_t begin, max_id;
	} *doms = NULL;
	size_t n = 0, cap = 0;
	if (sqlite3_prepare_v2(db,
	                       "SELECT policy_domain, MIN(t), MAX(id) FROM evals WHERE t <= ?1 "
	                       "GROUP BY policy_domain HAVING MIN(t) <= ?2 ORDER BY policy_domain",
	                       -1, &st_d, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st_d, 1, now);
	sqlite3_bind_int64(st_d, 2, due);
	while (sqlite3_step(st_d) == SQLITE_ROW) {
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 16;
			void *nd = realloc(doms, nc * sizeof(*doms));
			if (!nd)
				goto out;
			doms = nd;
			cap = nc;
		}
		copy_col(st_d, 0, doms[n].name, sizeof(doms[n].name));
		doms[n].begin = sqlite3_column_int64(st_d, 1);
		doms[n].max_id = sqlite3_column_int64(st_d, 2);
		n++;
	}
	sqlite3_finalize(st_d);
	st_d = NULL;
	for (size_t i = 0; i < n; i++) {
		st->domains++;
		bool gone = report_domain(conf, db, doms[i].name, doms[i].begin, doms[i].max_id,
		                          now, submit, arg, st);
		char sql[160];
		if (gone)
			snprintf(sql, sizeof(sql),
			         "DELETE FROM evals WHERE policy_domain = ? AND id <= %lld",
			         (long long)doms[i].max_id);
		else
			snprintf(sql, sizeof(sql),
			         "DELETE FROM evals WHERE policy_domain = ? AND t < %lld",
			         (long long)(now - KEEP_UNSENT));
		sqlite3_stmt *del = NULL;
		if (sqlite3_prepare_v2(db, sql, -1, &del, NULL) == SQLITE_OK) {
			sqlite3_bind_text(del, 1, doms[i].name, -1, SQLITE_STATIC);
			if (sqlite3_step(del) != SQLITE_DONE)
				log_error("event=dmarc_report_purge_failed reason=%s",
				          sqlite3_errmsg(db));
		}
		sqlite3_finalize(del);
	}
	rc = TERN_OK;
out:
	sqlite3_finalize(st_d);
	free(doms);
	sqlite3_close(db);
	if (st->domains || due >= now) /* the timer's empty looks are not news */
		log_info("event=dmarc_reports_round domains=%u sent=%u skipped=%u failed=%u",
		         st->domains, st->sent, st->skipped, st->failed);
	return rc;
}

/* ------------------------------------------------------- the reporter */

struct dmarc_reporter {
	const struct tern_config *conf;
	dmarc_submit_fn submit;
	void *arg;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop, kick, running;
	uint64_t rounds; /* finished rounds */
	struct dmarc_run_stats last;
};

static pthread_mutex_t reporter_lock = PTHREAD_MUTEX_INITIALIZER;
static struct dmarc_reporter *the_reporter;

static void *reporter_main(void *arg)
{
	struct dmarc_reporter *r = arg;
	uint32_t interval = r->conf->dmarc.reports.interval;
	uint32_t look = interval < LOOK_EVERY ? interval : LOOK_EVERY;
	pthread_mutex_lock(&r->lock);
	while (!r->stop) {
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += look;
		while (!r->stop && !r->kick)
			if (pthread_cond_timedwait(&r->cond, &r->lock, &until) != 0)
				break; /* time to look */
		if (r->stop)
			break;
		bool all = r->kick;
		r->kick = false;
		r->running = true;
		pthread_mutex_unlock(&r->lock);
		dmarc_store_sync(dmarc_store_default()); /* the latest evaluations too */
		struct dmarc_run_stats st;
		int64_t now = (int64_t)time(NULL);
		dmarc_reports_run(r->conf, now, all ? now : now - (int64_t)interval, r->submit,
		                  r->arg, &st);
		pthread_mutex_lock(&r->lock);
		r->last = st;
		r->rounds++;
		r->running = false;
		pthread_cond_broadcast(&r->cond);
	}
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

struct dmarc_reporter *dmarc_reporter_start(const struct tern_config *conf, dmarc_submit_fn submit,
                                            void *arg)
{
	if (!conf->dmarc.reports.from)
		return NULL;
	struct dmarc_reporter *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->conf = conf;
	r->submit = submit;
	r->arg = arg;
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
	if (pthread_create(&r->thread, NULL, reporter_main, r) != 0) {
		pthread_cond_destroy(&r->cond);
		pthread_mutex_destroy(&r->lock);
		free(r);
		return NULL;
	}
	pthread_mutex_lock(&reporter_lock);
	the_reporter = r;
	pthread_mutex_unlock(&reporter_lock);
	return r;
}

void dmarc_reporter_stop(struct dmarc_reporter *r)
{
	if (!r)
		return;
	/* stop first: a kick waiting for a round wakes and lets reporter_lock
	 * go; then nobody can find r any more */
	pthread_mutex_lock(&r->lock);
	r->stop = true;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	pthread_mutex_lock(&reporter_lock);
	if (the_reporter == r)
		the_reporter = NULL;
	pthread_mutex_unlock(&reporter_lock);
	pthread_join(r->thread, NULL);
	pthread_cond_destroy(&r->cond);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

int dmarc_reports_kick(struct dmarc_run_stats *st)
{
	/* reporter_lock is held while waiting so that stop cannot free r
	 * under us; stop waits for it, after the round ends */
	pthread_mutex_lock(&reporter_lock);
	struct dmarc_reporter *r = the_reporter;
	if (!r) {
		pthread_mutex_unlock(&reporter_lock);
		return TERN_EINVAL;
	}
	pthread_mutex_lock(&r->lock);
	/* a round already running may have read the store before our caller's
	 * mail was in it: wait for the one after it */
	uint64_t want = r->rounds + 1 + (r->running ? 1 : 0);
	r->kick = true;
	pthread_cond_broadcast(&r->cond);
	while (r->rounds < want && !r->stop)
		pthread_cond_wait(&r->cond, &r->lock);
	*st = r->last;
	pthread_mutex_unlock(&r->lock);
	pthread_mutex_unlock(&reporter_lock);
	return TERN_OK;
}
