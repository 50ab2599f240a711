/*
 * scheduler.c — decides when each recipient is tried, runs local
 * deliveries, hands remote recipients to the remote engine, and turns
 * every result into spool state, log lines, retries and DSNs.
 *
 * Committed messages arrive through scheduler_submit() (from any thread:
 * it only links a job and signals). Delivery threads take up to BATCH_MAX
 * jobs at a time: every due local recipient of all of them is delivered
 * with one maildir_deliver_batch(), so many messages share their directory
 * syncs; due remote recipients become one remote job per destination
 * domain. Temporary failures go to a deferred list with exponential
 * backoff and jitter (delivery.retry_base .. retry_max); past
 * delivery.max_lifetime a recipient bounces with its last reason. A
 * message with a not-before time (spool_msg.not_before) waits on the
 * deferred list until then.
 *
 * Must never: run on an event loop (except remote_done, which only
 * appends to the spool and queues); hold the lock while doing I/O; send a
 * DSN to the null sender.
 */
#include "queue/queue.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/budget.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/runtime.h"
#include "deliver/deliver.h"
#include "policy/dmarc_report.h"
#include "smtp/smtp.h"
#include "store/events.h"
#include "store/store.h"
#include "store/suppress.h"

#define BATCH_MAX 64
#define INFLIGHT_BUCKETS 1024
#define MAINTAIN_EVERY 5 /* seconds between spool_maintain calls */
/* A delivery thread that just worked naps this long before it sleeps until
 * signalled: what arrives meanwhile is taken in one round, without a
 * wake-up. Delivery only, never a client's reply, waits for it. */
#define NAP_NS 2000000L

struct job {
	struct job *next;
	char id[QUEUE_ID_LEN + 1];
	char *data;
	size_t len;
	int64_t due;
	bool from_spool; /* data was read back: a retry or a recovery */
	/* SPILL (queue/spill.h): data is the message's head only (our trace
	 * fields and the client's header block); the rest is file_len bytes
	 * of spill_path from file_off, streamed by local and remote delivery */
	char *spill_path; /* NULL: data is the whole message */
	uint64_t file_off, file_len;
	uint32_t file_crc; /* the record's CRC32C of the file, checked as it is sent */
	bool flush;        /* `tern queue flush`: deferred recipients are due now */
	size_t held;       /* bytes of data counted in scheduler.held */
};

/* Messages with recipients handed to the remote engine, so a flush or a
 * local retry never sends them twice at once. */
struct inflight {
	struct inflight *next;
	char id[QUEUE_ID_LEN + 1];
	unsigned count;
	bool delay_warned;
};

struct scheduler {
	struct spool *sp;
	struct remote *remote;
	struct capture_store *capture; /* capture mode: local recipients are caught here */
	scheduler_result_fn observer; /* scheduler_set_observer, or NULL */
	void *observer_arg;
	scheduler_result_fn archive_observer; /* scheduler_set_archive_observer, or NULL */
	void *archive_observer_arg;
	struct capture_ingest *ingest; /* capture mode: SMTP and API mail, not spooled */
	struct remote_job *results;    /* finished remote jobs waiting to be recorded */
	int64_t last_prune;
	int64_t last_maintain; /* spool compaction: at most every MAINTAIN_EVERY s */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *head, *tail; /* due now */
	struct job *deferred;    /* unordered; scanned once a second */
	size_t n_pending;
	/* Committed messages' bytes handed in by scheduler_submit and waiting
	 * for delivery. Past its max a submit drops its copy and delivery
	 * reads the message back from the spool (the page cache, usually):
	 * accepting faster than the next hops take mail must not grow memory
	 * with the backlog. */
	struct mem_budget held; /* shared with the remote engine's queues */
	bool stopping;
	/* Hand-offs: a producer wakes a delivery thread only when one waits and
	 * none has been woken yet; the woken one takes every job queued by then
	 * (a burst of commits costs one wake-up, not one each). */
	unsigned n_waiting;
	bool wake_pending;
	/* Threads in a short nap (NAP_NS) after a round of work: each looks
	 * again when it ends, so producers do not signal while one naps. Under
	 * load that turns a wake-up per commit and per remote result (three or
	 * four futex calls each) into one timed wait per nap. */
	unsigned n_napping;
	unsigned n_threads;
	pthread_t *threads;
	struct inflight *inflight[INFLIGHT_BUCKETS];
	/* Ids that already got a DELAY notice (kept in memory only: after a
	 * restart a second notice is possible, a missed bounce is not). */
	struct inflight *warned[INFLIGHT_BUCKETS];
	/* Entries in warned (changed under lock): while none, a finished
	 * message has no warning to forget and takes no lock for it. */
	atomic_size_t n_warned;
};

static int64_t now_sec(void)
{
	return (int64_t)time(NULL);
}

static unsigned id_hash(const char *id)
{
	uint32_t h = 2166136261u;
	for (const char *p = id; *p; p++)
		h = (h ^ (uint8_t)*p) * 16777619u;
	return h % INFLIGHT_BUCKETS;
}

/* Adds delta to the in-flight count of id; returns the count before. */
static unsigned inflight_add(struct scheduler *s, struct inflight **table, const char *id,
			     int delta)
{
	unsigned b = id_hash(id);
	struct inflight **pp = &table[b];
	while (*pp && strcmp((*pp)->id, id) != 0)
		pp = &(*pp)->next;
	unsigned before = *pp ? (*pp)->count : 0;
	if (delta > 0) {
		if (!*pp) {
			struct inflight *e = calloc(1, sizeof(*e));
			if (!e)
				return before;
			tern_strlcpy(e->id, id, sizeof(e->id));
			*pp = e;
			if (table == s->warned)
				atomic_fetch_add(&s->n_warned, 1);
		}
		(*pp)->count += (unsigned)delta;
	} else if (*pp) {
		unsigned d = (unsigned)(-delta);
		(*pp)->count = (*pp)->count > d ? (*pp)->count - d : 0;
		if ((*pp)->count == 0) {
			struct inflight *dead = *pp;
			*pp = dead->next;
			free(dead);
			if (table == s->warned)
				atomic_fetch_sub(&s->n_warned, 1);
		}
	}
	return before;
}

static void job_free(struct scheduler *s, struct job *j)
{
	if (j->held)
		budget_give(&s->held, j->held);
	free(j->data);
	free(j->spill_path);
	free(j);
}

/* Under s->lock: new work is queued; see n_waiting. True when the caller
 * must signal s->cond, after unlocking (signalled under the lock, the woken
 * thread would at once wait for the lock the signaller still holds). */
static bool wake_locked(struct scheduler *s)
{
	if (s->n_waiting == 0 || s->wake_pending || s->n_napping)
		return false; /* a thread is running (it looks again before it waits) or woken */
	s->wake_pending = true;
	return true;
}

static bool enqueue_locked(struct scheduler *s, struct job *j)
{
	j->next = NULL;
	if (s->tail)
		s->tail->next = j;
	else
		s->head = j;
	s->tail = j;
	s->n_pending++;
	return wake_locked(s);
}

static void submit_job(struct scheduler *s, const char *id, char *data, size_t len, bool flush)
{
	struct job *j = calloc(1, sizeof(*j));
	if (!j) {
		/* The message is safe in the spool; a flush or restart finds it. */
		log_error("event=schedule_failed id=%s reason=out-of-memory", id);
		free(data);
		return;
	}
	tern_strlcpy(j->id, id, sizeof(j->id));
	if (data && !budget_take(&s->held, len)) {
		free(data); /* read back from the spool when it is delivered */
		data = NULL;
		len = 0;
		metric_inc_l(M_BODIES_REREAD, "scheduler");
	}
	if (data)
		j->held = len;
	j->data = data;
	j->len = len;
	j->flush = flush;
	pthread_mutex_lock(&s->lock);
	bool wake = enqueue_locked(s, j);
	pthread_mutex_unlock(&s->lock);
	if (wake)
		pthread_cond_signal(&s->cond);
}

void scheduler_submit(struct scheduler *s, const char *id, char *data, size_t len)
{
	submit_job(s, id, data, len, false);
}

void scheduler_retry(struct scheduler *s, const char *id)
{
	submit_job(s, id, NULL, 0, true);
}

size_t scheduler_pending(struct scheduler *s)
{
	pthread_mutex_lock(&s->lock);
	size_t n = s->n_pending;
	for (size_t b = 0; b < INFLIGHT_BUCKETS; b++)
		for (struct inflight *e = s->inflight[b]; e; e = e->next)
			n++;
	pthread_mutex_unlock(&s->lock);
	return n;
}

static void defer_job(struct scheduler *s, const char *id, int64_t due)
{
	struct job *j = calloc(1, sizeof(*j));
	if (!j)
		return; /* found again at the next flush or restart */
	tern_strlcpy(j->id, id, sizeof(j->id));
	j->due = due;
	pthread_mutex_lock(&s->lock);
	/* One timer per message is enough: keep the earliest. */
	for (struct job *e = s->deferred; e; e = e->next) {
		if (strcmp(e->id, id) == 0) {
			if (due < e->due)
				e->due = due;
			pthread_mutex_unlock(&s->lock);
			free(j);
			return;
		}
	}
	j->next = s->deferred;
	s->deferred = j;
	s->n_pending++;
	pthread_mutex_unlock(&s->lock);
}

/* Moves due deferred jobs to the run queue. Called with the lock held. */
static void promote_due_locked(struct scheduler *s, int64_t now)
{
	struct job **pp = &s->deferred;
	while (*pp) {
		struct job *j = *pp;
		if (j->due <= now) {
			*pp = j->next;
			s->n_pending--;
			if (enqueue_locked(s, j))
				pthread_cond_signal(&s->cond); /* rare: retries coming due */
		} else {
			pp = &j->next;
		}
	}
}

struct requeue_ctx {
	struct scheduler *s;
	bool ignore_next_try;
	int64_t now;
	size_t n;
};

static bool requeue_one(const struct spool_msg *m, void *arg)
{
	struct requeue_ctx *c = arg;
	bool due = false;
	int64_t next = 0;
	for (size_t i = 0; i < m->n_rcpts; i++) {
		const struct spool_rcpt *r = &m->rcpts[i];
		if (r->state == RCPT_QUEUED ||
		    (r->state == RCPT_DEFERRED && (c->ignore_next_try || r->next_try <= c->now)))
			due = true;
		else if (r->state == RCPT_DEFERRED && (next == 0 || r->next_try < next))
			next = r->next_try;
	}
	if (due) {
		submit_job(c->s, m->id, NULL, 0, c->ignore_next_try);
		c->n++;
	} else if (next) {
		defer_job(c->s, m->id, next);
	}
	return true;
}

void scheduler_requeue_all(struct scheduler *s, bool ignore_next_try)
{
	if (ignore_next_try) {
		/* Drop the deferred list: every entry is rescheduled from the spool. */
		pthread_mutex_lock(&s->lock);
		struct job *j = s->deferred;
		s->deferred = NULL;
		while (j) {
			struct job *next = j->next;
			s->n_pending--;
			job_free(s, j);
			j = next;
		}
		pthread_mutex_unlock(&s->lock);
	}
	struct requeue_ctx c = {s, ignore_next_try, now_sec(), 0};
	spool_foreach(s->sp, requeue_one, &c);
	log_info("event=requeue messages=%zu", c.n);
}

/*
 * Message id's bytes read back from the spool, as scheduler_submit would
 * have handed them in (malloc'd; an empty message is one byte, *len 0):
 * for the remote engine, a job whose bytes it dropped while the job waited
 * (remote_set_body_source, on its I/O pool), and for record_remote, such a
 * job finished unsent. Blocks.
 */
static int read_back(void *arg, const char *id, char **data, size_t *len)
{
	struct scheduler *s = arg;
	struct tbuf b;
	/* no limit of our own: the spool record's size bounds what is read (a
	 * spilled message is never dropped, so this is at most about 1 MiB) */
	tbuf_init(&b, SIZE_MAX);
	int rc = spool_read_data(s->sp, id, &b);
	if (rc != TERN_OK) {
		tbuf_free(&b);
		return rc;
	}
	*data = tbuf_steal(&b, len);
	if (!*data) {
		*data = calloc(1, 1);
		*len = 0;
	}
	return *data ? TERN_OK : TERN_ENOMEM;
}

void scheduler_set_remote(struct scheduler *s, struct remote *r)
{
	s->remote = r;
	if (r)
		remote_set_body_source(r, &s->held, read_back, s);
}

void scheduler_set_observer(struct scheduler *s, scheduler_result_fn fn, void *arg)
{
	s->observer_arg = arg;
	s->observer = fn;
}

void scheduler_set_archive_observer(struct scheduler *s, scheduler_result_fn fn, void *arg)
{
	s->archive_observer_arg = arg;
	s->archive_observer = fn;
}

void scheduler_set_capture(struct scheduler *s, struct capture_store *st)
{
	struct capture_ingest *ci = st ? capture_ingest_new(st) : NULL;
	if (st && !ci)
		log_error("event=capture_ingest_failed reason=out-of-memory"); /* puts get 451 */
	pthread_mutex_lock(&s->lock);
	struct capture_ingest *old = s->ingest;
	s->ingest = ci;
	pthread_mutex_unlock(&s->lock);
	capture_ingest_free(old);
	s->capture = st;
}

int scheduler_capture_put(struct scheduler *s, const struct spool_msg *env, const void *data,
                          size_t len, capture_put_cb cb, void *arg)
{
	pthread_mutex_lock(&s->lock);
	struct capture_ingest *ci = s->ingest;
	pthread_mutex_unlock(&s->lock);
	return ci ? capture_ingest_put(ci, env, data, len, cb, arg) : TERN_EINVAL;
}

/* ------------------------------------------------------------------ DSN */

static int64_t backoff(const struct tern_config *conf, uint32_t attempts)
{
	int64_t base = conf->delivery.retry_base ? conf->delivery.retry_base : 300;
	int64_t max = conf->delivery.retry_max ? conf->delivery.retry_max : 3600;
	int64_t d = base;
	for (uint32_t i = 1; i < attempts && d < max; i++)
		d *= 2;
	if (d > max)
		d = max;
	/* Jitter of up to 10% spreads the retries of a burst of failures. */
	return d + (int64_t)(rand() % (int)(d / 10 + 1));
}

struct dsn_commit {
	struct scheduler *s;
	char id[QUEUE_ID_LEN + 1];
};

static void dsn_committed(void *arg, int err)
{
	struct dsn_commit *dc = arg;
	if (err == TERN_OK)
		scheduler_submit(dc->s, dc->id, NULL, 0);
	else
		log_error("event=dsn_spool_failed id=%s reason=%s", dc->id, tern_strerror(err));
	free(dc);
}

/*
 * Queues a DSN about msg for the given recipients. kind is "failure",
 * "delay" or "success". The notice goes to the original sender; a message
 * from the null sender (itself a notice) is reported to the postmaster
 * instead, unless it was addressed to a postmaster: that would loop.
 */
static void send_dsn(struct scheduler *s, const struct tern_config *conf,
		     const struct spool_msg *m, const char *data, size_t len,
		     const struct dsn_rcpt *rcpts, size_t n, const char *kind)
{
	if (n == 0)
		return;
	char to[SMTP_ADDR_MAX + 16];
	const char *first_local = conf->n_local_domains ? conf->local_domains[0] : "localhost";
	if (m->client && strstr(m->client, "proto=DSN")) {
		/* A notice about a notice tern generated itself would loop
		 * (RFC 5321 §6.1; e.g. a postmaster alias pointing at a host that
		 * bounces): log it, send nothing. */
		log_warn("event=dsn_dropped id=%s kind=%s reason=\"the failed message is itself a "
			 "delivery notice from this server\"",
			 m->id, kind);
		return;
	}
	if (m->sender[0]) {
		tern_strlcpy(to, m->sender, sizeof(to));
	} else {
		/* Never a notice to the null sender: the postmaster hears of it. */
		snprintf(to, sizeof(to), "postmaster@%s", first_local);
	}
	struct tbuf out;
	tbuf_init(&out, len + 256 * 1024);
	struct dsn_params p = {
		.reporting_mta = conf->hostname,
		.queue_id = m->id,
		.envid = m->envid,
		.arrival = m->created,
		.to = to,
		/* SPILL: only the head of a spilled message is at hand (and a
		 * notice should not carry megabytes back): headers only */
		.ret = m->spill ? SMTP_RET_HDRS : m->ret,
		.rcpts = rcpts,
		.n_rcpts = n,
		.original = data,
		.original_len = len,
		.now = now_sec(),
	};
	if (dsn_build(&p, &out) != TERN_OK) {
		log_error("event=dsn_failed id=%s reason=build", m->id);
		tbuf_free(&out);
		return;
	}
	/* Route the notice like any message: aliases and local domains apply. */
	struct smtp_path path;
	struct spool_rcpt rc[16];
	size_t n_rc = 0;
	char lc[SMTP_ADDR_MAX + 16];
	tern_strlcpy(lc, to, sizeof(lc));
	const struct conf_alias *al = NULL;
	if (smtp_parse_mailbox(to, strlen(to), &path) &&
	    conf_is_local_domain(conf, path.domain, strlen(path.domain))) {
		tern_ascii_lower(lc);
		al = conf_find_alias(conf, lc);
	}
	memset(rc, 0, sizeof(rc));
	if (al) {
		for (size_t i = 0; i < al->n_to && n_rc < 16; i++) {
			const char *at = strrchr(al->to[i], '@');
			rc[n_rc].addr = al->to[i];
			rc[n_rc].local = at && conf_is_local_domain(conf, at + 1, strlen(at + 1));
			n_rc++;
		}
	} else {
		const char *at = strrchr(to, '@');
		rc[0].addr = to;
		rc[0].local = at && conf_is_local_domain(conf, at + 1, strlen(at + 1));
		n_rc = 1;
	}
	struct spool_msg env = {0};
	queue_id_new(env.id);
	env.sender = "";
	env.created = now_sec();
	env.client = "addr=local proto=DSN";
	env.size = out.len;
	env.rcpts = rc;
	env.n_rcpts = n_rc;
	struct dsn_commit *dc = malloc(sizeof(*dc));
	if (!dc) {
		tbuf_free(&out);
		return;
	}
	dc->s = s;
	memcpy(dc->id, env.id, sizeof(dc->id));
	int rc2 = spool_put(s->sp, &env, out.data, out.len, dsn_committed, dc);
	if (rc2 != TERN_OK) {
		free(dc);
		log_error("event=dsn_spool_failed id=%s reason=%s", m->id, tern_strerror(rc2));
	} else {
		char qt[LOG_ADDR_MAX];
		log_info("event=dsn id=%s dsn_id=%s kind=%s to=%s rcpts=%zu", m->id, env.id, kind,
		         log_quote_addr(to, qt, sizeof(qt)), n);
	}
	tbuf_free(&out);
}

/*
 * Whether recipient notify bits call for a notice of this kind. SUCCESS and
 * DELAY notices go only to senders whose client we trust (spool_msg
 * trusted_client): anyone else could name any address as its sender and
 * have us mail it a notice carrying its headers (backscatter). Its NOTIFY
 * still travels to the next hop when the message is relayed.
 */
static bool wants_notice(const struct spool_msg *m, unsigned notify, unsigned bit)
{
	if (bit != SMTP_NOTIFY_FAILURE && !m->trusted_client)
		return false;
	if (notify & SMTP_NOTIFY_NEVER)
		return false;
	if (notify == 0) /* no NOTIFY: failures and delays are reported (RFC 3461 §4.1) */
		return bit == SMTP_NOTIFY_FAILURE || bit == SMTP_NOTIFY_DELAY;
	return (notify & bit) != 0;
}

/* ------------------------------------------------------------ results */

/* What became of one recipient, to be recorded. */
struct outcome {
	size_t idx;
	enum rcpt_state state;  /* DELIVERED, BOUNCED or DEFERRED */
	const char *status;
	const char *reply;
	const char *relay;      /* "local" or the remote host */
	bool dsn_relayed;
	uint32_t retry_after;   /* deferred: not sooner than this (a destination's back-off) */
};

/*
 * After any result for a message: its retry timer is the earliest next_try
 * of every recipient still deferred (not only those of this attempt: with
 * jitter, or results from another delivery, a recipient would otherwise be
 * left without a timer). A finished message forgets its DELAY warning.
 */
static void reschedule(struct scheduler *s, const char *id, int64_t now)
{
	struct spool_msg *m = spool_get(s->sp, id);
	if (!m) {
		pthread_mutex_lock(&s->lock);
		inflight_add(s, s->warned, id, -(int)0x7fffffff);
		pthread_mutex_unlock(&s->lock);
		return;
	}
	int64_t next = 0;
	for (size_t i = 0; i < m->n_rcpts; i++) {
		const struct spool_rcpt *r = &m->rcpts[i];
		if (r->state == RCPT_DEFERRED && (next == 0 || r->next_try < next))
			next = r->next_try;
	}
	if (next)
		defer_job(s, id, next > now ? next : now + 1);
	spool_msg_free(m);
}

/*
 * Whether the outcomes o (as recorded: an expired deferral already turned
 * into a bounce) leave m with every recipient in a final state, judged
 * from m as read before they were recorded. Then no retry timer is needed
 * and the message left the spool, so reschedule's read-back (a copy of the
 * whole envelope) can be skipped: the common case of a relayed message.
 * A recipient m shows as not final (queued elsewhere, deferred, held) sends
 * the caller to reschedule, which reads the spool as it is now.
 */
static bool finished_by(const struct spool_msg *m, const struct outcome *o, size_t n)
{
	size_t n_final = 0;
	for (size_t k = 0; k < n; k++) {
		if (o[k].state != RCPT_DELIVERED && o[k].state != RCPT_BOUNCED &&
		    o[k].state != RCPT_SUPPRESSED)
			return false;
		n_final++;
	}
	for (size_t i = 0; i < m->n_rcpts; i++) {
		enum rcpt_state st = m->rcpts[i].state;
		if (st == RCPT_DELIVERED || st == RCPT_BOUNCED || st == RCPT_SUPPRESSED)
			continue;
		bool here = false;
		for (size_t k = 0; k < n && !here; k++)
			here = o[k].idx == i;
		if (!here)
			return false;
	}
	return n_final > 0;
}

#define OUTCOMES_ON_STACK 4

/*
 * Records outcomes for one message: spool state, a log line each, retry
 * timers, and the DSNs they call for. data is the message (for DSNs).
 */
static void record_outcomes(struct scheduler *s, const struct tern_config *conf,
			    const struct spool_msg *m, const char *data, size_t len,
			    struct outcome *o, size_t n)
{
	int64_t now = now_sec();
	/* A relayed message has a recipient or a few: their lists on the
	 * stack (every entry is written before it is read), more on the heap. */
	struct dsn_rcpt fail_s[OUTCOMES_ON_STACK], delayed_s[OUTCOMES_ON_STACK],
	    ok_s[OUTCOMES_ON_STACK];
	char expired_s[OUTCOMES_ON_STACK][600];
	bool heap = n > OUTCOMES_ON_STACK;
	struct dsn_rcpt *fail = heap ? calloc(n, sizeof(*fail)) : fail_s;
	struct dsn_rcpt *delayed = heap ? calloc(n, sizeof(*delayed)) : delayed_s;
	struct dsn_rcpt *ok = heap ? calloc(n, sizeof(*ok)) : ok_s;
	char(*expired)[600] = heap ? calloc(n, sizeof(*expired)) : expired_s;
	size_t n_fail = 0, n_delayed = 0, n_ok = 0;
	/* Out of memory: record the states anyway, send no notice this time. */
	size_t dsn_cap = fail && delayed && ok && expired ? n : 0;
	const char *emid = ""; /* EVENTS: the Message-ID, only when events are stored */
	size_t emid_len = 0;
	if (events_enabled() && data)
		smtp_message_id(data, len, &emid, &emid_len);
	/* A scheduled message (send_at) starts its lifetime and its DELAY clock
	 * when it may first be tried, not when it was queued. */
	int64_t since = m->not_before > m->created ? m->not_before : m->created;
	for (size_t k = 0; k < n; k++) {
		const struct spool_rcpt *r = &m->rcpts[o[k].idx];
		double delay = (double)(now - m->created);
		if (o[k].state == RCPT_DEFERRED && conf->delivery.max_lifetime &&
		    now - since >= (int64_t)conf->delivery.max_lifetime && expired) {
			/* Too old: the last temporary reason becomes final. */
			snprintf(expired[k], sizeof(expired[k]),
				 "delivery time expired after %lld s; last error: %s",
				 (long long)(now - since), o[k].reply);
			o[k].state = RCPT_BOUNCED;
			o[k].status = "4.4.7";
			o[k].reply = expired[k];
		}
		/* Addresses and the relay's name come from the network: quoted. */
		char q[700], qa[LOG_ADDR_MAX], qr[SMTP_DOMAIN_MAX * 4 + 8];
		log_quote_addr(r->addr, qa, sizeof(qa));
		log_quote(o[k].relay, strlen(o[k].relay), qr, sizeof(qr));
		switch (o[k].state) {
		case RCPT_DELIVERED:
			spool_update_rcpt(s->sp, m->id, o[k].idx, RCPT_DELIVERED, 0, o[k].reply);
			metric_inc_l(M_MESSAGES_DELIVERED, r->local ? "local" : "remote");
			events_emit_outcome(EV_DELIVERED, m->id, emid, emid_len, m->sender, r->addr,
			                    o[k].relay, "2.0.0", o[k].reply, 0, false);
			log_info("event=delivered id=%s to=%s relay=%s delay=%.0fs reply=%s", m->id,
			         qa, qr, delay,
			         log_quote(o[k].reply, strlen(o[k].reply), q, sizeof(q)));
			if (wants_notice(m, r->notify, SMTP_NOTIFY_SUCCESS) && !o[k].dsn_relayed &&
			    n_ok < dsn_cap)
				ok[n_ok++] = (struct dsn_rcpt){
					.final_rcpt = r->addr, .orcpt = r->orcpt,
					.action = strcmp(o[k].relay, "local") == 0 ? "delivered"
										    : "relayed",
					.status = "2.0.0", .remote_mta = NULL,
					.diagnostic = NULL, .last_attempt = now};
			break;
		case RCPT_BOUNCED:
			spool_update_rcpt(s->sp, m->id, o[k].idx, RCPT_BOUNCED, 0, o[k].reply);
			metric_inc(M_MESSAGES_BOUNCED);
			events_emit_outcome(EV_BOUNCED, m->id, emid, emid_len, m->sender, r->addr,
			                    o[k].relay, o[k].status, o[k].reply, 0,
			                    o[k].status[0] == '5');
			log_warn("event=bounced id=%s to=%s relay=%s status=%s reply=%s", m->id, qa,
			         qr, o[k].status,
			         log_quote(o[k].reply, strlen(o[k].reply), q, sizeof(q)));
			if (wants_notice(m, r->notify, SMTP_NOTIFY_FAILURE) && n_fail < dsn_cap)
				fail[n_fail++] = (struct dsn_rcpt){
					.final_rcpt = r->addr, .orcpt = r->orcpt, .action = "failed",
					.status = o[k].status[0] == '5' ? o[k].status : "5.0.0",
					.remote_mta = strcmp(o[k].relay, "local") == 0 ? NULL
										       : o[k].relay,
					.diagnostic = o[k].reply, .last_attempt = now};
			break;
		case RCPT_SUPPRESSED:
			/* No DSN: the suppression list is the sender's own record. */
			spool_update_rcpt(s->sp, m->id, o[k].idx, RCPT_SUPPRESSED, 0, o[k].reply);
			events_emit_outcome(EV_SUPPRESSED, m->id, emid, emid_len, m->sender,
			                    r->addr, o[k].relay, o[k].status, o[k].reply, 0, false);
			log_warn("event=suppressed id=%s to=%s status=suppressed reply=%s", m->id,
			         qa, log_quote(o[k].reply, strlen(o[k].reply), q, sizeof(q)));
			break;
		default: {
			int64_t wait = backoff(conf, r->attempts + 1);
			int64_t next = now + (o[k].retry_after > wait ? o[k].retry_after : wait);
			spool_update_rcpt(s->sp, m->id, o[k].idx, RCPT_DEFERRED, next, o[k].reply);
			metric_inc(M_MESSAGES_DEFERRED);
			events_emit_outcome(EV_DEFERRED, m->id, emid, emid_len, m->sender, r->addr,
			                    o[k].relay, o[k].status, o[k].reply, next, false);
			log_info("event=deferred id=%s to=%s relay=%s status=%s retry_in=%llds "
			         "reply=%s",
			         m->id, qa, qr, o[k].status, (long long)(next - now),
			         log_quote(o[k].reply, strlen(o[k].reply), q, sizeof(q)));
			if (conf->delivery.delay_warning &&
			    now - since >= (int64_t)conf->delivery.delay_warning &&
			    wants_notice(m, r->notify, SMTP_NOTIFY_DELAY) && n_delayed < dsn_cap)
				delayed[n_delayed++] = (struct dsn_rcpt){
					.final_rcpt = r->addr, .orcpt = r->orcpt, .action = "delayed",
					.status = o[k].status[0] == '4' ? o[k].status : "4.0.0",
					.remote_mta = strcmp(o[k].relay, "local") == 0 ? NULL
										       : o[k].relay,
					.diagnostic = o[k].reply, .last_attempt = now,
					.will_retry_until = since +
							    (int64_t)conf->delivery.max_lifetime};
			break;
		}
		}
		enum rcpt_state ost = o[k].state == RCPT_DELIVERED || o[k].state == RCPT_BOUNCED ||
		                              o[k].state == RCPT_SUPPRESSED
		                          ? o[k].state
		                          : RCPT_DEFERRED;
		if (s->observer)
			s->observer(s->observer_arg, m, o[k].idx, ost, o[k].reply);
		if (s->archive_observer)
			s->archive_observer(s->archive_observer_arg, m, o[k].idx, ost, o[k].reply);
	}
	send_dsn(s, conf, m, data, len, fail, n_fail, "failure");
	send_dsn(s, conf, m, data, len, ok, n_ok, "success");
	if (n_delayed) {
		pthread_mutex_lock(&s->lock);
		bool first = inflight_add(s, s->warned, m->id, 1) == 0;
		pthread_mutex_unlock(&s->lock);
		if (first)
			send_dsn(s, conf, m, data, len, delayed, n_delayed, "delay");
	}
	if (finished_by(m, o, n)) {
		/* What reschedule would find after reading the message back: it
		 * is gone; only its DELAY warning is left to forget, if any. */
		if (atomic_load(&s->n_warned)) {
			pthread_mutex_lock(&s->lock);
			inflight_add(s, s->warned, m->id, -(int)0x7fffffff);
			pthread_mutex_unlock(&s->lock);
		}
	} else {
		reschedule(s, m->id, now);
	}
	if (heap) {
		free(fail);
		free(delayed);
		free(ok);
		free(expired);
	}
}

/*
 * Runs on a worker thread when the remote engine finished a job: it only
 * queues the job for a delivery thread (recording results means spool
 * writes and maybe building a DSN, which copies the whole message).
 */
static void remote_done(struct remote_job *job, void *arg)
{
	struct scheduler *s = arg;
	pthread_mutex_lock(&s->lock);
	job->next = s->results;
	s->results = job;
	bool wake = wake_locked(s);
	pthread_mutex_unlock(&s->lock);
	if (wake)
		pthread_cond_signal(&s->cond);
}

/*
 * Suppression (store/suppress.h): a 5xx from the next hop itself (at RCPT
 * or after DATA, so remote_mta is set) puts the recipient on the list of
 * the sending domain. Our own permanent reasons (no MX, a lifetime that
 * ran out) do not: they say nothing about the address. Null-sender mail
 * (DSNs) has no sending domain and adds nothing.
 */
static void suppress_hard_bounce(const struct tern_config *conf, const struct spool_msg *m,
                                 const struct remote_rcpt *rr)
{
	char sd[SUPPRESS_DOMAIN_MAX];
	suppress_sender_domain(m->sender, sd, sizeof(sd));
	if (!conf->suppression.enabled || !rr->remote_mta[0] || rr->reply[0] != '5' || !sd[0])
		return;
	struct suppress_db *db = suppress_shared(conf->data_dir);
	char detail[600], qa[LOG_ADDR_MAX], qs[SUPPRESS_DOMAIN_MAX * 4 + 8], qst[80];
	snprintf(detail, sizeof(detail), "%s %s", rr->status, rr->reply);
	if (db && suppress_add(db, sd, rr->addr, SUPPRESS_BOUNCE, detail, m->id) == TERN_OK)
		log_info("event=suppress_added id=%s to=%s scope=%s reason=bounce status=%s", m->id,
		         log_quote_addr(rr->addr, qa, sizeof(qa)),
		         log_quote(sd, strlen(sd), qs, sizeof(qs)),
		         log_quote(rr->status, strlen(rr->status), qst, sizeof(qst)));
}

/* On a delivery thread (or at shutdown): records one finished remote job. */
static void record_remote(struct scheduler *s, struct remote_job *job)
{
	struct tern_runtime *rt = runtime_acquire();
	struct spool_msg *m = spool_get(s->sp, job->id);
	struct outcome o_s[OUTCOMES_ON_STACK]; /* every field of an entry is set before use */
	bool heap = job->n_rcpts > OUTCOMES_ON_STACK;
	struct outcome *o = heap ? calloc(job->n_rcpts, sizeof(*o)) : o_s;
	if (m && rt && o) {
		size_t n = 0;
		for (size_t i = 0; i < job->n_rcpts; i++) {
			struct remote_rcpt *rr = &job->rcpts[i];
			if (rr->idx >= m->n_rcpts)
				continue;
			o[n].idx = rr->idx;
			o[n].state = rr->outcome == REMOTE_DELIVERED ? RCPT_DELIVERED
				     : rr->outcome == REMOTE_BOUNCED ? RCPT_BOUNCED
								     : RCPT_DEFERRED;
			o[n].status = rr->status;
			o[n].reply = rr->reply;
			o[n].relay = rr->remote_mta[0] ? rr->remote_mta : job->domain;
			o[n].dsn_relayed = rr->dsn_relayed;
			o[n].retry_after = rr->retry_after;
			n++;
			if (rr->outcome == REMOTE_BOUNCED)
				suppress_hard_bounce(rt->conf, m, rr);
		}
		/* A job finished without its bytes (dropped while it waited,
		 * never sent): read back for the notices and the Message-ID. */
		if (!job->data && !m->spill &&
		    read_back(s, job->id, &job->data, &job->len) != TERN_OK) {
			job->data = NULL;
			job->len = 0; /* notices go without the message */
		}
		record_outcomes(s, rt->conf, m, job->data, job->len, o, n);
	} else if (!o) {
		/* Nothing recorded: the spool still has the recipients due; retry soon. */
		defer_job(s, job->id, now_sec() + 60);
	}
	if (heap)
		free(o);
	/* Recorded: the job is off the wire, a retry may dispatch it again. */
	pthread_mutex_lock(&s->lock);
	inflight_add(s, s->inflight, job->id, -1);
	pthread_mutex_unlock(&s->lock);
	spool_msg_free(m);
	runtime_release(rt);
	remote_job_free(job);
}

/* Records every queued remote result (delivery threads, and at shutdown);
 * returns how many. */
static size_t drain_results(struct scheduler *s)
{
	pthread_mutex_lock(&s->lock);
	struct remote_job *j = s->results;
	s->results = NULL;
	pthread_mutex_unlock(&s->lock);
	size_t n = 0;
	while (j) {
		struct remote_job *next = j->next;
		record_remote(s, j);
		j = next;
		n++;
	}
	return n;
}

void scheduler_drain_results(struct scheduler *s)
{
	if (s)
		drain_results(s);
}

/* ------------------------------------------------------------- delivery */

struct item_ctx {
	struct job *job;
	struct spool_msg *msg;
	size_t rcpt_idx;
	char *prefix;
	struct iovec iov[2];
	char stable[MAILDIR_NAME_MAX];
};

/* A deferred recipient is due at its next_try, or at once when the operator
 * flushed the queue (the job says so). */
static bool is_due(const struct spool_rcpt *r, const struct job *job, int64_t now)
{
	return r->state == RCPT_QUEUED ||
	       (r->state == RCPT_DEFERRED && (job->flush || r->next_try <= now));
}

/*
 * Before anything is tried: each due recipient that is a suppression
 * address (VERP return path, feedback address) has the message read by
 * suppress_intake and is then finished as delivered (consumed, never put
 * in a mailbox); each due remote recipient on the suppression list of the
 * sending domain or the global one is finished as suppressed. Both are
 * marked in m too, so the rest of this pass skips them.
 */
static void suppress_pass(struct scheduler *s, const struct tern_config *conf, struct spool_msg *m,
                          struct job *job, int64_t now, bool on_wire)
{
	if (!conf->suppression.enabled || s->capture)
		return;
	size_t cap = m->n_rcpts ? m->n_rcpts : 1;
	struct outcome *o = NULL;
	char(*replies)[600] = NULL;
	size_t n = 0;
	char sd[SUPPRESS_DOMAIN_MAX];
	suppress_sender_domain(m->sender, sd, sizeof(sd));
	/* Recipients of a message on the wire (on_wire, see reserve) are the
	 * remote engine's until their result is recorded. */
	for (size_t i = 0; i < m->n_rcpts; i++) {
		struct spool_rcpt *r = &m->rcpts[i];
		if (!is_due(r, job, now) || (on_wire && !r->local))
			continue;
		bool intake = r->local && suppress_intake_match(conf, r->addr);
		struct suppress_entry e;
		struct suppress_intake_result res;
		if (!intake &&
		    (r->local || !suppress_check(suppress_shared(conf->data_dir), sd, r->addr, &e)))
			continue;
		if (!o &&
		    (!(o = calloc(cap, sizeof(*o))) || !(replies = calloc(cap, sizeof(*replies)))))
			break; /* still due: tried as usual */
		char qa[LOG_ADDR_MAX], qw[300], qr[LOG_ADDR_MAX], qs[SUPPRESS_DOMAIN_MAX * 4 + 8];
		o[n].idx = i;
		o[n].relay = "suppression";
		if (intake) {
			suppress_intake(conf, r->addr, job->data, job->len, m->id, &res);
			log_info(
			    "event=suppress_intake id=%s to=%s result=%s suppressed=%s scope=%s",
			    m->id, log_quote_addr(r->addr, qa, sizeof(qa)),
			    log_quote(res.what, strlen(res.what), qw, sizeof(qw)),
			    res.suppressed ? log_quote_addr(res.addr, qr, sizeof(qr)) : "-",
			    !res.suppressed ? "-"
			    : res.scope[0] ? log_quote(res.scope, strlen(res.scope), qs, sizeof(qs))
			                   : "global");
			o[n].state = RCPT_DELIVERED;
			o[n].status = "2.0.0";
			snprintf(replies[n], sizeof(replies[n]),
			         "250 2.0.0 consumed by the suppression list (%s)", res.what);
		} else {
			o[n].state = RCPT_SUPPRESSED;
			o[n].status = "5.7.1";
			snprintf(replies[n], sizeof(replies[n]),
			         "suppressed: on the %.255s suppression list (%s: %.200s)",
			         e.scope[0] ? e.scope : "global", suppress_reason_name(e.reason),
			         e.detail);
		}
		o[n].reply = replies[n];
		r->state = o[n].state;
		n++;
	}
	if (n)
		record_outcomes(s, conf, m, job->data, job->len, o, n);
	free(o);
	free(replies);
}

/*
 * VERP (suppression.verp_domain): when set and the message has a sender,
 * rj's return path becomes bounce+TOKEN@verp_domain for recipient idx
 * (store/suppress.h), remembered so that a later DSN to it names the
 * recipient. false (rj unchanged) when off or when the token cannot be made.
 */
static bool verp_sender(const struct tern_config *conf, const struct spool_msg *m, size_t idx,
                        struct remote_job *rj)
{
	const char *vd = conf->suppression.verp_domain;
	if (!conf->suppression.enabled || !vd || !m->sender[0])
		return false;
	unsigned char key[SUPPRESS_KEY_LEN];
	char addr[SMTP_ADDR_MAX + 1], sd[SUPPRESS_DOMAIN_MAX];
	struct suppress_db *db = suppress_shared(conf->data_dir);
	suppress_sender_domain(m->sender, sd, sizeof(sd));
	bool ok = db && suppress_key_load(conf->data_dir, key) == TERN_OK &&
	          suppress_verp_address(key, m->id, idx, vd, addr, sizeof(addr)) == TERN_OK &&
	          suppress_verp_remember(db, m->id, idx, m->rcpts[idx].addr, sd) == TERN_OK;
	char *dup = ok ? tern_strdup(addr) : NULL;
	if (!dup)
		return false;
	free(rj->sender);
	rj->sender = dup;
	return true;
}

/* Whether any byte of p is >= 0x80, eight at a time: every relayed message
 * is scanned (byte by byte this was a third of a delivery thread's work). */
static bool any_8bit(const char *p, size_t len)
{
	uint64_t acc = 0;
	size_t i = 0;
	for (; i + 32 <= len; i += 32) {
		uint64_t w[4];
		memcpy(w, p + i, sizeof(w)); /* unaligned: memcpy, not a cast */
		acc |= w[0] | w[1] | w[2] | w[3];
		if (acc & 0x8080808080808080ull)
			return true;
	}
	for (; i < len; i++)
		acc |= (uint8_t)p[i] & 0x80;
	return (acc & 0x8080808080808080ull) != 0;
}

/*
 * Before a message's suppression and remote passes, in one lock round:
 * whether a remote job of it is on the wire (true: both passes leave its
 * remote recipients alone), else the reservation dispatch_remote hands to
 * its last job or releases. Check and reserve in one step, so two delivery
 * threads holding the same message never both put it on the wire.
 */
static bool reserve(struct scheduler *s, const char *id)
{
	if (!s->remote)
		return false;
	pthread_mutex_lock(&s->lock);
	bool busy = inflight_add(s, s->inflight, id, 0) > 0;
	if (!busy)
		inflight_add(s, s->inflight, id, 1); /* the reservation */
	pthread_mutex_unlock(&s->lock);
	return busy;
}

/* Hands every due remote recipient of m to the remote engine, one job per
 * destination domain. busy: reserve()'s answer. */
static void dispatch_remote(struct scheduler *s, const struct tern_config *conf,
                            struct spool_msg *m, struct job *job, int64_t now, bool busy)
{
	if (!s->remote || busy)
		return; /* a job for this message is on the wire; its result reschedules */
	bool reserved = true; /* by reserve() */
	bool *taken = calloc(m->n_rcpts ? m->n_rcpts : 1, sizeof(bool));
	if (!taken)
		goto out;
	bool has_8bit = any_8bit(job->data, job->len);
	bool local_due = s->capture != NULL;
	for (size_t i = 0; i < m->n_rcpts && !local_due; i++)
		local_due = m->rcpts[i].local && is_due(&m->rcpts[i], job, now);
	for (size_t i = 0; i < m->n_rcpts; i++) {
		struct spool_rcpt *r = &m->rcpts[i];
		if (r->local || taken[i] || !is_due(r, job, now))
			continue;
		const char *at = strrchr(r->addr, '@');
		char domain[256];
		tern_strlcpy(domain, at ? at + 1 : "", sizeof(domain));
		tern_ascii_lower(domain);
		struct remote_job *rj = calloc(1, sizeof(*rj));
		if (!rj)
			break;
		tern_strlcpy(rj->id, m->id, sizeof(rj->id));
		tern_strlcpy(rj->domain, domain, sizeof(rj->domain));
		rj->sender = tern_strdup(m->sender);
		rj->envid = tern_strdup(m->envid);
		rj->auth = tern_strdup(m->auth); /* NULL stays NULL */
		rj->api_key = tern_strdup(m->api_key); /* its pool (pool_for_key); NULL stays NULL */
		rj->body = m->body;
		rj->ret = m->ret;
		rj->smtputf8 = m->smtputf8;
		rj->has_8bit = has_8bit || (job->spill_path && m->body == SMTP_BODY_8BITMIME);
		if (job->spill_path) { /* SPILL: the rest is sent from the file */
			rj->spill_path = tern_strdup(job->spill_path);
			rj->spill_off = job->file_off;
			rj->spill_len = job->file_len;
			rj->spill_check = true;
			rj->spill_crc = job->file_crc;
			if (!rj->spill_path) {
				remote_job_free(rj);
				break;
			}
		}
		rj->rcpts = calloc(m->n_rcpts, sizeof(*rj->rcpts));
		if (!rj->sender || !rj->rcpts || (m->auth && !rj->auth) ||
		    (m->api_key && !rj->api_key)) {
			remote_job_free(rj);
			break;
		}
		/* VERP: this recipient alone, with a return path naming it. */
		bool verp = verp_sender(conf, m, i, rj);
		for (size_t k = i; k < m->n_rcpts && !(verp && k > i); k++) {
			struct spool_rcpt *rk = &m->rcpts[k];
			if (rk->local || taken[k] || !is_due(rk, job, now))
				continue;
			const char *ak = strrchr(rk->addr, '@');
			if (!ak || strcasecmp(ak + 1, domain) != 0)
				continue;
			struct remote_rcpt *rr = &rj->rcpts[rj->n_rcpts++];
			rr->addr = tern_strdup(rk->addr);
			rr->orcpt = tern_strdup(rk->orcpt);
			rr->notify = rk->notify;
			rr->idx = k;
			taken[k] = true;
		}
		/* The message's bytes: the job's own for the last remote job when
		 * nothing else of this pass reads them (no local recipient, not
		 * capture mode), else a copy. */
		bool more = local_due;
		for (size_t k = i + 1; k < m->n_rcpts && !more; k++)
			more = !m->rcpts[k].local && !taken[k] && is_due(&m->rcpts[k], job, now);
		if (more) {
			rj->data = malloc(job->len ? job->len : 1);
			if (rj->data)
				memcpy(rj->data, job->data, job->len);
		} else {
			rj->data = job->data; /* with what it counts in the budget */
			job->data = NULL;
			rj->held_in = &s->held;
			rj->held = job->held;
			job->held = 0;
		}
		rj->len = job->len;
		if (!rj->data) {
			remote_job_free(rj); /* still due in the spool: a flush or restart finds them */
			break;
		}
		rj->done = remote_done;
		rj->done_arg = s;
		if (more) {
			pthread_mutex_lock(&s->lock);
			inflight_add(s, s->inflight, m->id, 1);
			pthread_mutex_unlock(&s->lock);
		} else {
			reserved = false; /* the last job: the reservation is its count */
		}
		remote_submit(s->remote, rj);
	}
	free(taken);
out:
	if (reserved) {
		pthread_mutex_lock(&s->lock);
		inflight_add(s, s->inflight, m->id, -1); /* the reservation */
		pthread_mutex_unlock(&s->lock);
	}
}

/*
 * Capture mode: each message's due local recipients are caught together in
 * one store entry (the envelope keeps them all). The store writes without
 * syncing; one capture_sync() per batch makes all of them durable, and only
 * then are the recipients recorded as delivered (the spool holds the
 * message until that record, so a crash in between re-captures, never
 * loses).
 */
struct caught {
	const struct spool_msg *m;
	struct job *job;
	const char **to; /* the due local recipients (owned) */
	size_t n_to;
	int rc;
	char id[CAPTURE_ID_MAX];
};

/* Picks a message's due local recipients for the batch; false if none. */
static bool capture_one(struct scheduler *s, const struct spool_msg *m, struct job *job,
                        int64_t now, struct caught *out)
{
	const char **to = calloc(m->n_rcpts ? m->n_rcpts : 1, sizeof(*to));
	if (!to)
		return false; /* retried by the next flush or restart */
	size_t n = 0;
	for (size_t i = 0; i < m->n_rcpts; i++) {
		const struct spool_rcpt *r = &m->rcpts[i];
		if (r->local && is_due(r, job, now))
			to[n++] = r->addr;
	}
	if (n == 0) {
		free(to);
		return false;
	}
	out->m = m;
	out->job = job;
	out->to = to;
	out->n_to = n;
	out->rc = TERN_ENOMEM;
	return true;
}

/* Every message of the batch into the store in one transaction (one WAL
 * commit); capture_record then makes them durable with one sync. */
static void capture_batch(struct scheduler *s, struct caught *c, size_t n)
{
	struct capture_item *items = calloc(n, sizeof(*items));
	if (!items)
		return; /* every rc stays TERN_ENOMEM: deferred, retried */
	for (size_t k = 0; k < n; k++) {
		const struct spool_msg *m = c[k].m;
		/* The session records an authenticated user last in the trace string. */
		const char *auth = m->client ? strstr(m->client, " auth=") : NULL;
		items[k] = (struct capture_item){.queue_id = m->id,
		                                 .username = auth ? auth + 6 : NULL,
		                                 .raw = c[k].job->data,
		                                 .len = c[k].job->len,
		                                 .env_from = m->sender,
		                                 .env_to = c[k].to,
		                                 .n_to = c[k].n_to};
	}
	capture_add_batch(s->capture, items, n);
	for (size_t k = 0; k < n; k++) {
		c[k].rc = items[k].rc;
		memcpy(c[k].id, items[k].id, sizeof(c[k].id));
	}
	free(items);
}

/* Writes the reply line of a delivery result (reply.c) into buf; returns
 * its enhanced status code. arg: the entry's one argument, or NULL. */
static const char *outcome_reply(char *buf, size_t len, enum smtp_reply_id id, const char *arg)
{
	const char *args[1] = {arg};
	smtp_reply_format(buf, len, id, 0, false, args, arg ? 1 : 0);
	return smtp_reply_def(id)->enhanced;
}

static void capture_record(struct scheduler *s, const struct tern_config *conf,
			   struct caught *c, size_t n_caught, int64_t now)
{
	int sync_rc = n_caught ? capture_sync(s->capture) : TERN_OK;
	for (size_t k = 0; k < n_caught; k++) {
		const struct spool_msg *m = c[k].m;
		int rc = c[k].rc == TERN_OK ? sync_rc : c[k].rc;
		char reply[128];
		const char *status =
		    rc == TERN_OK ? outcome_reply(reply, sizeof(reply), SMTP_R_CAPTURED, c[k].id)
		                  : outcome_reply(reply, sizeof(reply), SMTP_R_CAPTURE_FAILED,
		                                  tern_strerror(rc));
		struct outcome *o = calloc(m->n_rcpts ? m->n_rcpts : 1, sizeof(*o));
		if (!o)
			continue; /* still due in the spool: the next flush or restart finds it */
		size_t n = 0;
		for (size_t i = 0; i < m->n_rcpts; i++) {
			const struct spool_rcpt *r = &m->rcpts[i];
			if (!r->local || !is_due(r, c[k].job, now))
				continue;
			o[n].idx = i;
			o[n].relay = "capture";
			o[n].dsn_relayed = false;
			o[n].state = rc == TERN_OK ? RCPT_DELIVERED : RCPT_DEFERRED;
			o[n].status = status;
			o[n].reply = reply;
			n++;
		}
		record_outcomes(s, conf, m, c[k].job->data, c[k].job->len, o, n);
		free(o);
	}
}

/* Capture retention, at most every 2 s, also when no mail arrives (so a
 * burst is trimmed and old messages age out on time). Scheduler threads only. */
static void maybe_prune(struct scheduler *s)
{
	if (!s->capture)
		return;
	int64_t now = now_sec();
	pthread_mutex_lock(&s->lock);
	bool due = now - s->last_prune >= 2;
	if (due)
		s->last_prune = now;
	pthread_mutex_unlock(&s->lock);
	if (!due)
		return;
	struct tern_runtime *rt = runtime_acquire();
	if (!rt)
		return;
	const struct conf_capture *cc = &rt->conf->capture;
	if (cc->max_messages || cc->max_age) {
		size_t pruned = capture_prune(s->capture, cc->max_messages, cc->max_age);
		if (pruned)
			log_info("event=capture_pruned messages=%zu", pruned);
	}
	runtime_release(rt);
}

static void deliver_batch(struct scheduler *s, struct job **jobs, size_t n_jobs)
{
	struct tern_runtime *rt = runtime_acquire();
	if (!rt)
		return;
	const struct tern_config *conf = rt->conf;
	struct spool_msg **msgs = calloc(n_jobs, sizeof(*msgs));
	size_t n_items = 0, cap = 0;
	struct maildir_item *items = NULL;
	struct item_ctx *ctx = NULL;
	struct smtp_path *paths = NULL;
	struct caught *caught = calloc(n_jobs, sizeof(*caught));
	size_t n_caught = 0;
	if (!msgs || !caught)
		goto out;

	int64_t now = now_sec();
	for (size_t j = 0; j < n_jobs; j++) {
		struct job *job = jobs[j];
		struct spool_msg *m = spool_get(s->sp, job->id);
		if (!m)
			continue; /* deleted or finished meanwhile */
		if (m->not_before > now) {
			/* scheduled (the API's send_at): nothing is tried before it,
			 * not even on a flush; a restart finds the time in the spool */
			defer_job(s, job->id, m->not_before);
			spool_msg_free(m);
			continue;
		}
		msgs[j] = m;
		if (!job->data) {
			job->from_spool = true;
			struct tbuf b;
			int rrc;
			/* SPILL: the head in memory, the rest streamed (capture mode
			 * stores whole messages: a spilled one left from before is read) */
			if (m->spill && !s->capture) {
				tbuf_init(&b, (size_t)(m->size - spool_msg_tail(m)) + 1);
				job->file_len = spool_msg_tail(m);
				job->file_crc = m->spill_crc;
				char path[4096];
				rrc = spool_spill_path(s->sp, m->spill, path, sizeof(path));
				free(job->spill_path);
				job->spill_path = rrc == TERN_OK ? tern_strdup(path) : NULL;
				if (rrc == TERN_OK && !job->spill_path)
					rrc = TERN_ENOMEM;
				if (rrc == TERN_OK)
					rrc = spool_read_head(s->sp, job->id, 0, &b, &job->file_off);
			} else {
				tbuf_init(&b, (size_t)m->size + 1);
				rrc = spool_read_data(s->sp, job->id, &b);
			}
			if (rrc != TERN_OK) {
				log_error("event=spool_read_failed id=%s", job->id);
				tbuf_free(&b);
				continue;
			}
			job->data = tbuf_steal(&b, &job->len);
			if (!job->data) {
				job->data = calloc(1, 1);
				job->len = 0;
			}
		}
		bool busy = reserve(s, m->id);
		suppress_pass(s, conf, m, job, now, busy);
		dispatch_remote(s, conf, m, job, now, busy);
		if (s->capture) {
			if (capture_one(s, m, job, now, &caught[n_caught]))
				n_caught++;
			continue;
		}
		for (size_t i = 0; i < m->n_rcpts; i++) {
			struct spool_rcpt *r = &m->rcpts[i];
			if (!r->local || !is_due(r, job, now))
				continue;
			if (n_items == cap) {
				size_t ncap = cap ? cap * 2 : 16;
				void *ni = realloc(items, ncap * sizeof(*items));
				if (!ni)
					goto out;
				items = ni;
				void *nc = realloc(ctx, ncap * sizeof(*ctx));
				if (!nc)
					goto out;
				ctx = nc;
				cap = ncap;
			}
			struct item_ctx *c = &ctx[n_items];
			memset(c, 0, sizeof(*c));
			memset(&items[n_items], 0, sizeof(items[n_items]));
			c->job = job;
			c->msg = m;
			c->rcpt_idx = i;
			struct tbuf pre;
			tbuf_init(&pre, 4096);
			if (tbuf_printf(&pre, "Return-Path: <%s>\r\nDelivered-To: %s\r\n", m->sender,
					r->addr) != TERN_OK) {
				tbuf_free(&pre);
				continue;
			}
			c->prefix = tbuf_steal(&pre, NULL);
			c->iov[0].iov_base = c->prefix;
			c->iov[0].iov_len = strlen(c->prefix);
			c->iov[1].iov_base = job->data;
			c->iov[1].iov_len = job->len;
			if (maildir_stable_name(conf->hostname, (long long)m->created, m->id, i,
						c->iov[0].iov_len + job->len + job->file_len,
						c->stable, sizeof(c->stable)) != TERN_OK)
				c->stable[0] = '\0';
			n_items++;
		}
	}

	if (n_caught) {
		capture_batch(s, caught, n_caught);
		capture_record(s, conf, caught, n_caught, now);
	}
	paths = calloc(n_items ? n_items : 1, sizeof(*paths));
	if (!paths)
		goto out;
	for (size_t k = 0; k < n_items; k++) {
		const char *addr = ctx[k].msg->rcpts[ctx[k].rcpt_idx].addr;
		if (!smtp_parse_mailbox(addr, strlen(addr), &paths[k])) {
			items[k].domain = "";
			items[k].local = "";
		} else {
			items[k].domain = paths[k].domain;
			items[k].local = paths[k].local;
		}
		items[k].iov = ctx[k].iov;
		items[k].iovcnt = 2;
		if (ctx[k].job->spill_path) { /* SPILL: the rest copied file to file */
			items[k].src_path = ctx[k].job->spill_path;
			items[k].src_off = ctx[k].job->file_off;
			items[k].src_len = ctx[k].job->file_len;
			items[k].src_check = true;
			items[k].src_crc = ctx[k].job->file_crc;
		}
		/* DMARC quarantine (smtp/verify.c) rides in the envelope: the Junk folder. */
		items[k].folder = spool_folder_name(ctx[k].msg->folder);
		if (ctx[k].stable[0]) {
			/* Pointers into ctx only now: ctx may have moved while growing. */
			items[k].fixed_name = ctx[k].stable;
			/* A retry or a recovery may find the file already moved to cur/
			 * by a reader; a first attempt cannot. */
			items[k].check_cur = ctx[k].job->from_spool;
		}
	}
	if (n_items)
		maildir_deliver_batch(conf->data_dir, conf->hostname, items, n_items);
	for (size_t k = 0; conf->dmarc.reports.inbox && k < n_items; k++)
		if (items[k].result == TERN_OK) /* a DMARC report's rows too (never fails) */
			dmarc_inbox_deliver(conf, ctx[k].msg->rcpts[ctx[k].rcpt_idx].addr,
			                    ctx[k].msg->id, ctx[k].job->data, ctx[k].job->len);

	/* Record per message, so each message's DSN covers all its recipients. */
	struct outcome *o = calloc(n_items ? n_items : 1, sizeof(*o));
	char (*replies)[160] = calloc(n_items ? n_items : 1, sizeof(*replies));
	if (!o || !replies) {
		free(o);
		free(replies);
		goto out;
	}
	for (size_t k = 0; k < n_items;) {
		size_t first = k, n = 0;
		struct spool_msg *m = ctx[k].msg;
		for (; k < n_items && ctx[k].msg == m; k++) {
			struct outcome *oc = &o[n++];
			oc->idx = ctx[k].rcpt_idx;
			oc->relay = "local";
			oc->dsn_relayed = false;
			if (items[k].result == TERN_OK) {
				oc->state = RCPT_DELIVERED;
				oc->status = outcome_reply(replies[k], sizeof(replies[k]),
				                           SMTP_R_LOCAL_DELIVERED, items[k].name);
			} else if (items[k].over_quota) {
				/* Bounced at once, as Dovecot's LMTP does by default
				 * (quota_full_tempfail = no): see docs/config.md. */
				oc->state = RCPT_BOUNCED;
				oc->status = outcome_reply(replies[k], sizeof(replies[k]),
				                           SMTP_R_LOCAL_MAILBOX_FULL, NULL);
			} else if (items[k].result == TERN_EINVAL ||
			           items[k].result == TERN_ELIMIT) {
				oc->state = RCPT_BOUNCED;
				oc->status = outcome_reply(replies[k], sizeof(replies[k]),
				                           SMTP_R_LOCAL_BAD_MAILBOX, NULL);
			} else {
				oc->state = RCPT_DEFERRED;
				oc->status = outcome_reply(replies[k], sizeof(replies[k]),
				                           SMTP_R_LOCAL_FAILED,
				                           tern_strerror(items[k].result));
			}
			oc->reply = replies[k];
		}
		record_outcomes(s, conf, m, ctx[first].job->data, ctx[first].job->len, o, n);
	}
	free(o);
	free(replies);
out:
	for (size_t k = 0; k < n_caught; k++)
		free(caught[k].to);
	free(caught);
	free(paths);
	for (size_t k = 0; k < n_items; k++)
		free(ctx[k].prefix);
	free(items);
	free(ctx);
	if (msgs) {
		for (size_t j = 0; j < n_jobs; j++)
			spool_msg_free(msgs[j]);
		free(msgs);
	}
	runtime_release(rt);
}

/* Spool compaction blocks on reads and one sync, so it runs here, on a
 * delivery thread (never an event loop), by one thread at a time. */
static void maintain_tick(struct scheduler *s)
{
	int64_t now = now_sec();
	pthread_mutex_lock(&s->lock);
	bool due = now - s->last_maintain >= MAINTAIN_EVERY && !s->stopping;
	if (due)
		s->last_maintain = now;
	pthread_mutex_unlock(&s->lock);
	if (due)
		spool_maintain(s->sp);
}

static void *scheduler_main(void *arg)
{
	pthread_setname_np(pthread_self(), "delivery"); /* for top -H, perf, ps -L */
	struct scheduler *s = arg;
	struct job *batch[BATCH_MAX];
	bool nap = false; /* the last round did work: nap before sleeping */
	for (;;) {
		size_t n = 0;
		maintain_tick(s);
		pthread_mutex_lock(&s->lock);
		for (;;) {
			promote_due_locked(s, now_sec());
			if (s->head || s->results || s->stopping ||
			    now_sec() - s->last_maintain >= MAINTAIN_EVERY)
				break;
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			if (nap) {
				ts.tv_nsec += NAP_NS;
				if (ts.tv_nsec >= 1000000000L) {
					ts.tv_sec++;
					ts.tv_nsec -= 1000000000L;
				}
				s->n_napping++;
			} else {
				ts.tv_sec += 1;
				s->n_waiting++;
			}
			int w = pthread_cond_timedwait(&s->cond, &s->lock, &ts);
			if (nap)
				s->n_napping--;
			else
				s->n_waiting--;
			s->wake_pending = false; /* this thread looks now */
			if (w == ETIMEDOUT && nap) {
				nap = false; /* nothing came: sleep until signalled */
				continue;
			}
			if (w == ETIMEDOUT)
				break; /* a quiet second: time for housekeeping */
		}
		if (s->stopping) {
			pthread_mutex_unlock(&s->lock);
			return NULL;
		}
		pthread_mutex_unlock(&s->lock);
		nap = drain_results(s) > 0;
		maybe_prune(s);
		pthread_mutex_lock(&s->lock);
		if (!s->head) {
			pthread_mutex_unlock(&s->lock);
			continue;
		}
		while (s->head && n < BATCH_MAX) {
			struct job *j = s->head;
			s->head = j->next;
			if (!s->head)
				s->tail = NULL;
			batch[n++] = j;
		}
		/* More than a batch queued: another waiting thread takes the rest
		 * now (one wake-up covered the whole burst). */
		bool more = s->head && wake_locked(s);
		pthread_mutex_unlock(&s->lock);
		if (more)
			pthread_cond_signal(&s->cond);
		if (n == 0)
			continue; /* woke for maintain_tick only */

		nap = true;
		deliver_batch(s, batch, n);

		pthread_mutex_lock(&s->lock);
		s->n_pending -= n;
		pthread_mutex_unlock(&s->lock);
		for (size_t i = 0; i < n; i++) {
			job_free(s, batch[i]);
		}
	}
}

void scheduler_set_held_max(struct scheduler *s, size_t bytes)
{
	s->held.max = bytes;
}

struct scheduler *scheduler_new(struct spool *sp, unsigned threads)
{
	struct scheduler *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->sp = sp;
	budget_init(&s->held, SCHEDULER_HELD_DEFAULT);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	s->threads = calloc(threads ? threads : 1, sizeof(pthread_t));
	if (!s->threads) {
		free(s);
		return NULL;
	}
	for (unsigned i = 0; i < threads; i++) {
		if (pthread_create(&s->threads[i], NULL, scheduler_main, s) != 0)
			break;
		s->n_threads++;
	}
	if (s->n_threads == 0) {
		/* Without a delivery thread nothing would ever be delivered. */
		scheduler_free(s);
		return NULL;
	}
	return s;
}

void scheduler_stop(struct scheduler *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->stopping = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	for (unsigned i = 0; i < s->n_threads; i++)
		pthread_join(s->threads[i], NULL);
	s->n_threads = 0;
	/* Capture mode's direct puts: committed and answered while the store
	 * is still open (capture_mode_stop closes it after this). */
	capture_ingest_stop(s->ingest);
}

void scheduler_free(struct scheduler *s)
{
	if (!s)
		return;
	scheduler_stop(s);
	capture_ingest_free(s->ingest);
	s->ingest = NULL;
	/* Results nobody recorded (the caller did not drain): the spool still
	 * has those recipients due, so they are tried again after restart. */
	while (s->results) {
		struct remote_job *j = s->results;
		s->results = j->next;
		remote_job_free(j);
	}
	struct job *lists[2] = {s->head, s->deferred};
	for (int l = 0; l < 2; l++) {
		struct job *j = lists[l];
		while (j) {
			struct job *next = j->next;
			job_free(s, j);
			j = next;
		}
	}
	for (size_t b = 0; b < INFLIGHT_BUCKETS; b++) {
		struct inflight *tables[2] = {s->inflight[b], s->warned[b]};
		for (int t = 0; t < 2; t++) {
			struct inflight *e = tables[t];
			while (e) {
				struct inflight *next = e->next;
				free(e);
				e = next;
			}
		}
	}
	free(s->threads);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	free(s);
}
