/*
 * scheduler.c — decides when each recipient is tried and runs local
 * deliveries.
 *
 * Committed messages arrive through scheduler_submit() (from event-loop
 * threads: it only links a job and signals). Delivery threads take up to
 * BATCH_MAX jobs at a time and deliver every due local recipient of all of
 * them with one maildir_deliver_batch(), so many messages share their
 * directory syncs. Each result is appended to the spool; the spool removes
 * a message once no recipient is left to try. Temporary failures go to a
 * deferred list with exponential backoff; the delivery threads move due
 * entries back to the run queue once a second.
 *
 * Must never: run on an event loop; hold the lock while doing I/O.
 */
#include "queue/queue.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/conf.h"
#include "core/err.h"
#include "core/log.h"
#include "core/runtime.h"
#include "deliver/deliver.h"
#include "smtp/smtp.h"

#define BATCH_MAX 64
#define RETRY_BASE 60
#define RETRY_MAX 3600

struct job {
	struct job *next;
	char id[QUEUE_ID_LEN + 1];
	char *data;
	size_t len;
	int64_t due;
	bool from_spool; /* data was read back: a retry or a recovery */
};

struct scheduler {
	struct spool *sp;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *head, *tail; /* due now */
	struct job *deferred;    /* unordered; scanned once a second */
	size_t n_pending;
	bool stopping;
	unsigned n_threads;
	pthread_t *threads;
};

static int64_t now_sec(void)
{
	return (int64_t)time(NULL);
}

static void job_free(struct job *j)
{
	free(j->data);
	free(j);
}

static void enqueue_locked(struct scheduler *s, struct job *j)
{
	j->next = NULL;
	if (s->tail)
		s->tail->next = j;
	else
		s->head = j;
	s->tail = j;
	s->n_pending++;
	pthread_cond_signal(&s->cond);
}

void scheduler_submit(struct scheduler *s, const char *id, char *data, size_t len)
{
	struct job *j = calloc(1, sizeof(*j));
	if (!j) {
		/* The message is safe in the spool; a flush or restart finds it. */
		log_error("event=schedule_failed id=%s reason=out-of-memory", id);
		free(data);
		return;
	}
	tern_strlcpy(j->id, id, sizeof(j->id));
	j->data = data;
	j->len = len;
	pthread_mutex_lock(&s->lock);
	enqueue_locked(s, j);
	pthread_mutex_unlock(&s->lock);
}

size_t scheduler_pending(struct scheduler *s)
{
	pthread_mutex_lock(&s->lock);
	size_t n = s->n_pending;
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
	j->next = s->deferred;
	s->deferred = j;
	s->n_pending++;
	pthread_mutex_unlock(&s->lock);
}

/* Moves due deferred jobs to the run queue. Called with the lock held. */
static void promote_due_locked(struct scheduler *s, int64_t now, bool all)
{
	struct job **pp = &s->deferred;
	while (*pp) {
		struct job *j = *pp;
		if (all || j->due <= now) {
			*pp = j->next;
			s->n_pending--;
			enqueue_locked(s, j);
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
		if (!r->local)
			continue; /* remote delivery: issue 3 */
		if (r->state == RCPT_QUEUED ||
		    (r->state == RCPT_DEFERRED && (c->ignore_next_try || r->next_try <= c->now)))
			due = true;
		else if (r->state == RCPT_DEFERRED && (next == 0 || r->next_try < next))
			next = r->next_try;
	}
	if (due) {
		scheduler_submit(c->s, m->id, NULL, 0);
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
			job_free(j);
			j = next;
		}
		pthread_mutex_unlock(&s->lock);
	}
	struct requeue_ctx c = {s, ignore_next_try, now_sec(), 0};
	spool_foreach(s->sp, requeue_one, &c);
	log_info("event=requeue messages=%zu", c.n);
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

static int64_t backoff(uint32_t attempts)
{
	int64_t d = RETRY_BASE;
	for (uint32_t i = 1; i < attempts && d < RETRY_MAX; i++)
		d *= 2;
	if (d > RETRY_MAX)
		d = RETRY_MAX;
	/* Jitter of up to 10% spreads retries of a burst of failures. */
	return d + (int64_t)(rand() % (int)(d / 10 + 1));
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
	if (!msgs)
		goto out;

	for (size_t j = 0; j < n_jobs; j++) {
		struct job *job = jobs[j];
		struct spool_msg *m = spool_get(s->sp, job->id);
		if (!m)
			continue; /* deleted meanwhile */
		msgs[j] = m;
		if (!job->data) {
			job->from_spool = true;
			struct tbuf b;
			tbuf_init(&b, (size_t)m->size + 1);
			if (spool_read_data(s->sp, job->id, &b) != TERN_OK) {
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
		int64_t now = now_sec();
		for (size_t i = 0; i < m->n_rcpts; i++) {
			struct spool_rcpt *r = &m->rcpts[i];
			if (!r->local)
				continue;
			if (r->state != RCPT_QUEUED &&
			    !(r->state == RCPT_DEFERRED && r->next_try <= now))
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
			struct maildir_item *it = &items[n_items];
			memset(c, 0, sizeof(*c));
			memset(it, 0, sizeof(*it));
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
						c->iov[0].iov_len + job->len, c->stable,
						sizeof(c->stable)) != TERN_OK)
				c->stable[0] = '\0';
			n_items++;
		}
	}

	/* Paths: the mailbox of each item, from the parsed recipient. */
	struct smtp_path *paths = calloc(n_items ? n_items : 1, sizeof(*paths));
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

	int64_t now = now_sec();
	for (size_t k = 0; k < n_items; k++) {
		struct spool_msg *m = ctx[k].msg;
		struct spool_rcpt *r = &m->rcpts[ctx[k].rcpt_idx];
		double delay = (double)(now - m->created);
		if (items[k].result == TERN_OK) {
			spool_update_rcpt(s->sp, m->id, ctx[k].rcpt_idx, RCPT_DELIVERED, 0,
					  "250 2.0.0 delivered to mailbox");
			log_info("event=delivered id=%s to=<%s> relay=local mailbox=%s delay=%.0fs",
				 m->id, r->addr, items[k].path, delay);
		} else if (items[k].result == TERN_EINVAL || items[k].result == TERN_ELIMIT) {
			spool_update_rcpt(s->sp, m->id, ctx[k].rcpt_idx, RCPT_BOUNCED, 0,
					  "550 5.1.3 mailbox name not usable");
			log_warn("event=bounced id=%s to=<%s> relay=local reason=\"mailbox name not "
				 "usable\"",
				 m->id, r->addr);
		} else {
			uint32_t attempts = r->attempts + 1;
			int64_t next = now + backoff(attempts);
			char reply[128];
			snprintf(reply, sizeof(reply), "451 4.3.0 local delivery failed: %s",
				 tern_strerror(items[k].result));
			spool_update_rcpt(s->sp, m->id, ctx[k].rcpt_idx, RCPT_DEFERRED, next,
					  reply);
			log_warn("event=deferred id=%s to=<%s> relay=local reason=%s retry_in=%llds",
				 m->id, r->addr, tern_strerror(items[k].result),
				 (long long)(next - now));
			defer_job(s, m->id, next);
		}
	}
	free(paths);
out:
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

static void *scheduler_main(void *arg)
{
	struct scheduler *s = arg;
	struct job *batch[BATCH_MAX];
	int64_t last_promote = 0;
	for (;;) {
		size_t n = 0;
		pthread_mutex_lock(&s->lock);
		for (;;) {
			int64_t now = now_sec();
			if (now != last_promote) {
				promote_due_locked(s, now, false);
				last_promote = now;
			}
			if (s->head || s->stopping)
				break;
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 1;
			pthread_cond_timedwait(&s->cond, &s->lock, &ts);
		}
		if (s->stopping) {
			pthread_mutex_unlock(&s->lock);
			return NULL;
		}
		while (s->head && n < BATCH_MAX) {
			struct job *j = s->head;
			s->head = j->next;
			if (!s->head)
				s->tail = NULL;
			batch[n++] = j;
		}
		pthread_mutex_unlock(&s->lock);

		deliver_batch(s, batch, n);

		pthread_mutex_lock(&s->lock);
		s->n_pending -= n;
		pthread_mutex_unlock(&s->lock);
		for (size_t i = 0; i < n; i++)
			job_free(batch[i]);
	}
}

struct scheduler *scheduler_new(struct spool *sp, unsigned threads)
{
	struct scheduler *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->sp = sp;
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
	return s;
}

void scheduler_free(struct scheduler *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->stopping = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	for (unsigned i = 0; i < s->n_threads; i++)
		pthread_join(s->threads[i], NULL);
	struct job *lists[2] = {s->head, s->deferred};
	for (int l = 0; l < 2; l++) {
		struct job *j = lists[l];
		while (j) {
			struct job *next = j->next;
			job_free(j);
			j = next;
		}
	}
	free(s->threads);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	free(s);
}
