/*
 * remote.c — delivery to other mail servers: the outbound SMTP client state
 * machine and per-destination connection limits with reuse. Where a
 * connection goes (route, relayhost or MX per RFC 5321 §5.1; addresses,
 * DANE's TLSA, MTA-STS) is remote_dns.c's; the structures both share are in
 * remote_internal.h.
 *
 * A connection (struct rconn) lives on one worker: it resolves its next
 * hop with that worker's async resolver, tries each address in order
 * (next MX and next address on a connection failure or a 4xx greeting),
 * then delivers every job queued for its destination before QUIT: one
 * transaction per batch of at most 100 of a job's recipients. Each
 * recipient ends with a result; the job's done callback hands them back to
 * the scheduler — exactly once per job, whatever way its transactions end.
 *
 * On a plain connection each step (the replies just read, a job for a
 * parked connection, a chunk of a spilled file) sends what it queued with
 * one sendmsg at its end, and replies are read with one recv per readable
 * event (smtp/wire_in.h); TLS connections go through libevent.
 *
 * Must never: block; deliver to ourselves (an MX that is us bounces 5.4.6);
 * send a message to a peer whose capabilities it would violate (SIZE,
 * SMTPUTF8, 8BITMIME: converted or bounced instead); send DATA text with a
 * bare CR or LF or an unstuffed dot line (SMTP smuggling at the peer);
 * take a reply for the answer to a command it does not answer (replies pair
 * with commands strictly; anything else is a protocol error, deferred 4.5.0)
 * or count anything but a 2xx after the data as a delivery; let a peer hold
 * a connection past a deadline by trickling bytes (each wait has one);
 * send anything in the clear after a failed handshake where the level
 * requires TLS (deliver/tlspolicy.h: the route's tls, raised by DANE or an
 * enforced MTA-STS policy), or send credentials over a channel the route's
 * level does not vouch for.
 *
 * SECURITY: reads replies from untrusted servers; every reply goes through
 * the bounded, fuzzed reply parser; a server's words are copied bounded.
 */
#include "deliver/deliver.h"
#include "deliver/remote_internal.h"
#include "deliver/remote_stream.h"
#include "deliver/remote_wire.h"

#include <errno.h>
#include <inttypes.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/budget.h"
#include "core/buf.h"
#include "core/codec.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/files.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/loop.h"
#include "core/send_batch.h"
#include "core/runtime.h"
#include "deliver/mtasts.h"
#include "deliver/pools.h"
#include "deliver/shaping.h"
#include "deliver/tlspolicy.h"
#include "dns/dns.h"
#include "smtp/smtp.h"
#include "smtp/wire_in.h"
#include "tls/tls.h"

static const char *const rc_state_name[] = {
    [RC_NONE] = "none",
    [RC_DNS] = "dns",
    [RC_CONNECT] = "connect",
    [RC_GREETING] = "greeting",
    [RC_EHLO] = "ehlo",
    [RC_HELO] = "helo",
    [RC_STARTTLS] = "starttls",
    [RC_TLS_HANDSHAKE] = "tls-handshake",
    [RC_AUTH] = "auth",
    [RC_AUTH_LOGIN_USER] = "auth-login-user",
    [RC_AUTH_LOGIN_PASS] = "auth-login-pass",
    [RC_TX] = "transaction",
    [RC_DOT] = "data",
    [RC_RSET] = "rset",
    [RC_IDLE] = "idle",
    [RC_LOAD] = "load",
    [RC_QUIT] = "quit",
};

static void conn_start_job(struct rconn *c);
static void idle_over(struct rconn *c, bool timeout);
static void conn_free(struct rconn *c);

/* --------------------------------------------------------------- helpers */

void remote_job_free(struct remote_job *job)
{
	if (!job)
		return;
	for (size_t i = 0; i < job->n_rcpts; i++) {
		free(job->rcpts[i].addr);
		free(job->rcpts[i].orcpt);
	}
	free(job->rcpts);
	free(job->sender);
	free(job->envid);
	free(job->auth);
	free(job->api_key);
	if (job->held)
		budget_give(job->held_in, job->held);
	free(job->data);
	free(job->spill_path);
	free(job);
}

static void protocol_error(struct rconn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static bool pump_more(struct rconn *c);
static void pump_ready(void *arg);
static void tx_forget_results(struct rconn *c);
static void take_next(struct rconn *c);
static void reserve_next(struct rconn *c);

void rconn_set_error(struct rconn *c, bool perm, const char *status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->last_error, sizeof(c->last_error), fmt, ap);
	va_end(ap);
	tern_strlcpy(c->last_status, status, sizeof(c->last_status));
	c->last_perm = perm;
}

static void rcpt_result(struct rconn *c, struct remote_rcpt *rr, enum remote_outcome o,
                        const char *status, const char *text)
{
	rr->outcome = o;
	/* Told to go away (421): not again before the back-off ends. A 4.7.x
	 * alone (greylisting says 451 4.7.1 too) keeps the usual retries. */
	if (o == REMOTE_DEFERRED && c->closed_421)
		rr->retry_after = shaping_backoff_left(c->conf, c->domain);
	tern_strlcpy(rr->status, status, sizeof(rr->status));
	/* A server's words go into logs and DSNs: keep printable ASCII only. */
	size_t n = 0;
	for (const char *p = text; *p && n < sizeof(rr->reply) - 1; p++)
		rr->reply[n++] = (*p >= ' ' && *p < 0x7f) ? *p : ' ';
	rr->reply[n] = '\0';
	tern_strlcpy(rr->remote_mta, c->cur < c->n_targets ? c->targets[c->cur].host : "",
	             sizeof(rr->remote_mta));
}

/* Outcome from a reply code. */
static enum remote_outcome outcome_of(int code)
{
	if (code >= 200 && code < 300)
		return REMOTE_DELIVERED;
	if (code >= 500)
		return REMOTE_BOUNCED;
	return REMOTE_DEFERRED;
}

static void reply_text(const struct smtp_reply *r, const char *phase, char *out, size_t outlen)
{
	char flat[SMTP_REPLY_TEXT_MAX + 1];
	size_t n = 0;
	for (const char *p = r->text; *p && n < sizeof(flat) - 1; p++)
		flat[n++] = *p == '\n' ? ' ' : *p;
	flat[n] = '\0';
	/* A long reply is cut to fit: the start of a server's words matters most. */
	int n2;
	if (r->enhanced[0])
		n2 = snprintf(out, outlen, "%d %s %.400s (in reply to %s)", r->code, r->enhanced,
		              flat, phase);
	else
		n2 = snprintf(out, outlen, "%d %.400s (in reply to %s)", r->code, flat, phase);
	(void)n2;
}

static const char *status_of(const struct smtp_reply *r)
{
	if (r->enhanced[0])
		return r->enhanced;
	if (r->code >= 500)
		return "5.0.0";
	if (r->code >= 400)
		return "4.0.0";
	if (r->code >= 200 && r->code < 300)
		return "2.0.0";
	return "4.5.0"; /* a 3xx where none belongs: a protocol error, never a result */
}

static const char *target_host(const struct rconn *c)
{
	return c->cur < c->n_targets ? c->targets[c->cur].host : "?";
}

/* The only writer of c->st (STYLE Part 3 §1); traces old -> new. */
void rconn_enter_state(struct rconn *c, enum rc_state st)
{
	if (c->st != st)
		log_debug("event=remote_state id=%s relay=%s old=%s new=%s",
		          c->job ? c->job->id : "-", target_host(c), rc_state_name[c->st],
		          rc_state_name[st]);
	c->st = st;
}

/* Finishes the current job: every recipient still pending gets the last
 * error; the scheduler gets the job. */
void rconn_job_finish(struct rconn *c)
{
	struct remote_job *job = c->job;
	if (!job)
		return;
	c->job = NULL;
	for (size_t i = 0; i < job->n_rcpts; i++) {
		struct remote_rcpt *rr = &job->rcpts[i];
		if (rr->outcome != REMOTE_PENDING)
			continue;
		rcpt_result(c, rr, c->last_perm ? REMOTE_BOUNCED : REMOTE_DEFERRED,
		            c->last_status[0] ? c->last_status : "4.4.1",
		            c->last_error[0] ? c->last_error : "delivery not completed");
	}
	tbuf_free(&c->converted);
	body_pump_close(&c->pump); /* SPILL: a read-ahead the job no longer needs */
	c->pump.active = false;
	job->done(job, job->done_arg);
}

/*
 * queued_memory (remote_set_body_source): a job that waits in its queue
 * keeps its bytes while the budget has room for them and drops them past
 * it (they are read back when a connection takes it, load_start). Jobs
 * the scheduler handed over with their count keep it; a spilled message's
 * head is not counted (a connection streams the rest from its file anyway).
 */
static void job_hold_or_drop(struct remote *r, struct remote_job *j)
{
	if (!r->budget || !r->load || !r->io_pool || !j->data || j->spill_path || j->held)
		return;
	if (budget_take(r->budget, j->len)) {
		j->held_in = r->budget;
		j->held = j->len;
		return;
	}
	free(j->data);
	j->data = NULL;
	metric_inc_l(M_BODIES_REREAD, "remote");
	log_debug("event=remote_body_dropped id=%s bytes=%zu reason=\"limits.queued_memory "
	          "reached; read back when a connection takes it\"",
	          j->id, j->len);
}

/* A job leaves its queue for a connection: its bytes are the connection's
 * now (as many as there are connections), no longer the queue's. */
static void job_unqueued(struct remote_job *j)
{
	if (!j->held)
		return;
	budget_give(j->held_in, j->held);
	j->held = 0;
}

/* A job that will not be tried now (never sent): every recipient gets
 * the same temporary result and the scheduler the job. */
static void job_give_up(struct remote_job *j, const char *status, const char *text)
{
	for (size_t i = 0; i < j->n_rcpts; i++) {
		if (j->rcpts[i].outcome != REMOTE_PENDING)
			continue;
		j->rcpts[i].outcome = REMOTE_DEFERRED;
		tern_strlcpy(j->rcpts[i].status, status, sizeof(j->rcpts[i].status));
		tern_strlcpy(j->rcpts[i].reply, text, sizeof(j->rcpts[i].reply));
	}
	j->done(j, j->done_arg);
}

/* Takes the next job of this destination, or NULL (and gives up our slot).
 * After remote_stop nothing more is taken: queued jobs stay queued and are
 * freed without a result by remote_free (they are still in the spool). */
struct remote_job *remote_dest_pop(struct remote *r, struct dest *d, bool release_if_empty)
{
	pthread_mutex_lock(&r->lock);
	struct remote_job *j = r->stopping ? NULL : d->head;
	if (j) {
		d->head = j->next;
		if (!d->head)
			d->tail = NULL;
		j->next = NULL;
	} else if (release_if_empty) {
		d->active--;
	}
	pthread_mutex_unlock(&r->lock);
	if (j)
		job_unqueued(j);
	return j;
}

/*
 * The next job for c under its destination's shaping (deliver/shaping.h):
 * NULL when there is none (the slot is released); when c has carried
 * per_connection messages and more wait (*reconnect: c keeps the slot and
 * hands it to a fresh connection after QUIT, see rconn_end); or when the
 * per-minute rate or the pool's warm-up says not yet (the slot is released
 * and the destination's wake timer starts a connection when a message may
 * go: the jobs wait in the queue, not started, with no retry counted).
 */
static struct remote_job *dest_pop_shaped(struct rconn *c, bool *reconnect)
{
	struct remote *r = c->r;
	struct dest *d = c->dest;
	*reconnect = false;
	struct shape_limits l;
	shaping_limits(c->conf, d->domain, &l);
	pthread_mutex_lock(&r->lock);
	bool have = d->head != NULL && !r->stopping;
	if (!have || c->n_msgs >= l.per_connection) {
		if (have)
			*reconnect = true;
		else
			d->active--;
		pthread_mutex_unlock(&r->lock);
		return NULL;
	}
	pthread_mutex_unlock(&r->lock);
	double wait = 0;
	const char *why = NULL;
	const struct conf_pool *pool = d->pool[0] ? pool_find(&c->conf->shaping, d->pool) : NULL;
	char taken[64] = "";
	if (!shaping_take(c->conf, d->domain, &wait)) {
		why = "per-minute";
	} else if (pool && !pool_take(c->conf, pool, c->src_addr, taken, sizeof(taken))) {
		if (c->src_addr[0] && pool_has_room(c->conf, pool, &wait)) {
			/* Our address is at its cap, another is not: hand over. */
			*reconnect = true;
			return NULL;
		}
		(void)pool_has_room(c->conf, pool, &wait);
		why = "warmup-cap";
	}
	if (why) {
		pthread_mutex_lock(&r->lock);
		d->active--;
		bool arm = !d->wake_armed && d->wake;
		if (arm)
			d->wake_armed = true;
		pthread_mutex_unlock(&r->lock);
		if (arm) {
			if (wait > 3600)
				wait = 3600; /* look again: the config may have changed */
			if (wait < 0.05)
				wait = 0.05;
			struct timeval tv = {(time_t)wait,
			                     (suseconds_t)((wait - (double)(time_t)wait) * 1e6)};
			char qd[600];
			log_info("event=shaping_wait dest=%s pool=%s reason=%s wait=%.1fs",
			         log_quote(d->domain, strlen(d->domain), qd, sizeof(qd)),
			         d->pool[0] ? d->pool : "-", why, wait);
			evtimer_add(d->wake, &tv);
		}
		return NULL;
	}
	struct remote_job *j = remote_dest_pop(r, d, true);
	if (j) {
		c->n_msgs++;
		if (taken[0] && !c->src_addr[0])
			tern_strlcpy(c->reserved, taken, sizeof(c->reserved));
	}
	return j;
}

/*
 * PIPE-NEXT (RFC 2920 §3.1: "a RSET/MAIL FROM sequence used to initiate a
 * new message transaction can be placed in the same group as the final
 * transfer of the headers and body of the previous message"): the job that
 * can follow c's current one on the wire without a word of its own said
 * first, that is, with nothing in it this peer would make us change
 * (not spilled, one batch of fresh recipients, nothing to convert, within
 * the peer's SIZE). Its bytes may be dropped (queued_memory): they are
 * read back while the current message goes out (pipeline_next).
 */
static bool fits_as_is(const struct rconn *c, const struct remote_job *j)
{
	if (j->spill_path || j->body == SMTP_BODY_BINARYMIME ||
	    (j->smtputf8 && !c->caps.smtputf8) || (j->has_8bit && !c->caps.eightbitmime) ||
	    j->n_rcpts == 0 || j->n_rcpts > BATCH_MAX)
		return false;
	if (c->caps.has_size && c->caps.size && j->len > c->caps.size)
		return false;
	for (size_t i = 0; i < j->n_rcpts; i++)
		if (j->rcpts[i].outcome != REMOTE_PENDING)
			return false;
	return true;
}

/*
 * PIPE-NEXT: takes the next job of c's destination to go out behind the
 * current one's end of data, or NULL. Only where nothing could hold it
 * back (no per-minute rate, no pool: their tokens are taken when a job
 * starts, dest_pop_shaped; the connection's per_connection allowance not
 * used up), and an empty queue leaves the slot alone: the current job
 * still holds it. dropped_only: only a job whose bytes were dropped
 * (reserve_next).
 */
static struct remote_job *dest_pop_ahead(struct rconn *c, bool dropped_only)
{
	struct dest *d = c->dest;
	if (!d || d->pool[0])
		return NULL;
	struct shape_limits l;
	shaping_limits(c->conf, d->domain, &l);
	if (l.per_minute || c->n_msgs >= l.per_connection)
		return NULL;
	struct remote *r = c->r;
	pthread_mutex_lock(&r->lock);
	struct remote_job *j = r->stopping ? NULL : d->head;
	if (j && fits_as_is(c, j) && (!dropped_only || !j->data)) {
		d->head = j->next;
		if (!d->head)
			d->tail = NULL;
		j->next = NULL;
	} else {
		j = NULL;
	}
	pthread_mutex_unlock(&r->lock);
	if (j) {
		job_unqueued(j);
		c->n_msgs++;
	}
	return j;
}

/* PIPE-NEXT: c->next_job goes back to the head of its queue, untried (its
 * end of data was never sent, so the peer holds nothing of it): the
 * connection ends before its transaction was answered, or (why) its bytes
 * could not be read back now. */
#define REQUEUE_CONN_ENDED "connection ended before its transaction was answered"

static void next_job_requeue(struct rconn *c, const char *why)
{
	struct remote_job *j = c->next_job;
	if (!j)
		return;
	c->next_job = NULL;
	c->next_unsent = false; /* a read-back under way is dropped with the connection */
	if (TERN_BUG_ON(!c->dest)) {
		c->job = j; /* cannot happen: deferred rather than lost */
		rconn_job_finish(c);
		return;
	}
	if (c->r->budget && j->data && !j->held) { /* it keeps its bytes: it is next */
		budget_charge(c->r->budget, j->len);
		j->held_in = c->r->budget;
		j->held = j->len;
	}
	pthread_mutex_lock(&c->r->lock);
	j->next = c->dest->head;
	c->dest->head = j;
	if (!c->dest->tail)
		c->dest->tail = j;
	pthread_mutex_unlock(&c->r->lock);
	char q[300];
	log_info("event=remote_requeued id=%s relay=%s reason=%s", j->id, target_host(c),
	         log_quote(why, strlen(why), q, sizeof(q)));
}

/* ------------------------------------------------------------------- I/O */

/*
 * Deadlines. bufferevent timeouts restart on every byte read or written,
 * which let a peer dripping a byte a second hold a connection for as long as
 * it liked; here each wait gets one deadline on the connection's timer, and
 * only the data phase earns time, and only by bytes the peer takes.
 */

/* How long QUIT's reply may take: nothing depends on it any more. */
#define QUIT_TIMEOUT_SEC 10
/* RFC 5321 §4.5.3.2.6: at least 10 minutes for the reply to the end of data. */
#define FINAL_REPLY_MIN_SEC 600
/* The data phase (RFC 5321 §4.5.3.2.5 gives 3 minutes per send): every byte
 * the peer takes moves its deadline 1/DATA_MIN_RATE s later, never further
 * than command_timeout ahead, so a peer that reads at least this fast (bytes
 * per second; Postfix's smtpd_min_data_rate) never times out and one that
 * drips is cut off about command_timeout after it slowed down. */
#define DATA_MIN_RATE 500.0

static double mono_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void deadline_at(struct rconn *c, double at)
{
	double left = at - mono_now();
	if (left < 0)
		left = 0;
	struct timeval tv = {(time_t)left, (suseconds_t)((left - (double)(time_t)left) * 1e6)};
	c->deadline = at;
	evtimer_add(c->timer, &tv);
}

/* The next wait (a reply, the greeting, a handshake) ends secs from now,
 * whatever arrives meanwhile. */
static void wait_for(struct rconn *c, uint32_t secs)
{
	c->wait_secs = secs;
	deadline_at(c, mono_now() + secs);
}

static void wait_none(struct rconn *c)
{
	c->deadline = 0;
	if (c->timer)
		evtimer_del(c->timer);
}

/* The reply `ahead` places after the one at the head of the expect table
 * answers a BDAT LAST sent in one write with MAIL and RCPT: the end of the
 * data. */
static bool bdat_due(const struct rconn *c, size_t ahead)
{
	size_t k = c->i_expect + ahead;
	return c->st == RC_TX && k < c->n_expect && c->expect[k] == EX_BDAT;
}

/* PIPE-NEXT: whether a job may follow c's current one on the wire behind
 * its end of data (its last batch, sent with DATA). */
static bool next_may_ride(const struct rconn *c)
{
	const struct remote_job *cur = c->job;
	return c->conf->delivery.pipeline_next && c->caps.pipelining && !c->one_write && cur &&
	       !cur->spill_path && cur->body != SMTP_BODY_BINARYMIME &&
	       c->batch_end >= cur->n_rcpts;
}

/* PIPE-NEXT: whether the next job's commands go behind this end of data
 * now: it may ride, and this transaction has a recipient to carry. */
static bool next_goes_now(const struct rconn *c)
{
	return next_may_ride(c) && !c->mail_failed && c->n_accepted > 0;
}

/* PIPE-NEXT: the next job's commands went out behind the end of data. */
static bool next_on_wire(const struct rconn *c)
{
	return c->next_job && !c->next_unsent;
}

/* The wait for the next reply (`ahead` as for bdat_due): the end of the
 * data's is at least FINAL_REPLY_MIN_SEC (RFC 5321 §4.5.3.2.6), any other
 * command's command_timeout. */
static void wait_next_reply(struct rconn *c, size_t ahead)
{
	uint32_t t = c->conf->delivery.command_timeout;
	bool dot = c->st == RC_DOT && (ahead == 0 || !next_on_wire(c)); /* PIPE-NEXT: MAIL's */
	if ((dot || bdat_due(c, ahead)) && t < FINAL_REPLY_MIN_SEC)
		t = FINAL_REPLY_MIN_SEC;
	wait_for(c, t);
}

/* c->bev is a plain socket bufferevent (no TLS layer over it). */
static bool plain_socket(const struct rconn *c)
{
	return c->bev && c->wire_out == bufferevent_get_output(c->bev);
}

/* Where the connection's next bytes go: inside a step on a plain socket the
 * cork (sent at the step's end, cork_flush), else the bufferevent's output. */
static struct evbuffer *out_of(struct rconn *c)
{
	if (c->corking && plain_socket(c))
		return c->cork;
	return bufferevent_get_output(c->bev);
}

/* Bytes of ours not yet handed to the kernel: the cork, the bufferevent's
 * output and, under TLS, the socket's. */
static size_t out_queued(struct rconn *c)
{
	size_t n = evbuffer_get_length(bufferevent_get_output(c->bev));
	if (c->wire_out && c->wire_out != bufferevent_get_output(c->bev))
		n += evbuffer_get_length(c->wire_out);
	if (c->cork)
		n += evbuffer_get_length(c->cork);
	return n;
}

/* Sends one command; its reply is due within command_timeout. Commands
 * pipelined behind others wait their turn: the deadline that runs is the
 * one of the reply at the head (on_read starts the next one's). */
static void send_line(struct rconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void send_line(struct rconn *c, const char *fmt, ...)
{
	struct evbuffer *out = out_of(c);
	va_list ap;
	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
	if (c->awaiting++ == 0)
		wait_for(c, c->conf->delivery.command_timeout);
}

static void close_bev(struct rconn *c)
{
	if (c->rd_ev) { /* before the socket is closed with the bufferevent */
		event_free(c->rd_ev);
		c->rd_ev = NULL;
	}
	if (c->bev) {
		/* a step's bytes may wait in the turn's batch: out before the close */
		send_batch_flush(worker_batch(c->w));
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	c->wire_out = NULL;
	if (c->cork) /* a step's bytes for the socket just closed */
		evbuffer_drain(c->cork, evbuffer_get_length(c->cork));
	body_pump_close(&c->pump); /* SPILL */
	c->pump.active = false;
	c->tls_active = false;
	c->implicit_tls = false;
	c->awaiting = 0;
	c->body_pending = false;
	c->tail_after_dot = 0;
	wait_none(c);
}

/*
 * Ends a connection we give up on (a deadline passed, the peer broke the
 * protocol) with a reset: a plain close would leave the kernel sending
 * whatever is still queued — megabytes of message data — to a peer that
 * takes it a byte at a time, long after we are gone.
 */
static void abort_bev(struct rconn *c)
{
	evutil_socket_t fd = c->bev ? bufferevent_getfd(c->bev) : -1;
	if (fd >= 0) {
		struct linger lg = {.l_onoff = 1, .l_linger = 0};
		(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	close_bev(c);
}

/* Nothing of the message data is left in our buffers (cork and TLS layer
 * included). */
static bool data_handed_over(struct rconn *c)
{
	/* PIPE-NEXT: the next transaction's commands behind the end of data
	 * are not message data (under TLS the count is of plaintext against
	 * bytes partly encrypted: the data phase may end a little early, which
	 * only relaxes a check) */
	return out_queued(c) <= c->tail_after_dot;
}

/* The socket took n bytes (written by libevent, or sent directly at a
 * step's end): in the data phase, credit the peer for them, and once all
 * is taken start the wait for the final reply. */
static void wire_took(struct rconn *c, size_t n)
{
	if (!c->body_pending || n == 0 || !c->bev || c->pump_err)
		return; /* SPILL: a failed file's deadline is due (pump_failed) */
	if (c->pump.active && !pump_more(c)) {
		/* SPILL: the file failed. Not torn down inside the buffer's own
		 * callback: the data phase's deadline, due now, ends it (the
		 * message waits for its next try). */
		deadline_at(c, mono_now());
		return;
	}
	if (!c->pump.active && data_handed_over(c)) { /* SPILL: not while a read is due */
		c->body_pending = false;
		c->tail_after_dot = 0;
		/* one_write: MAIL's or a RCPT's reply may still come first */
		wait_next_reply(c, 0);
		return;
	}
	double cap = mono_now() + c->wait_secs;
	double at = c->deadline + (double)n / DATA_MIN_RATE;
	deadline_at(c, at < cap ? at : cap);
}

/* libevent wrote bytes of the socket's output. */
static void on_wire_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	wire_took(arg, info->n_deleted);
}

/*
 * Steps. Each callback that may send on a connection (replies read, a job
 * for a parked connection, a chunk of a spilled file) is one step: what it
 * sends on a plain socket is corked and leaves at its end in one sendmsg
 * when nothing is queued (remote_wire.h), and freeing the connection waits
 * for the end (conn_free marks it dead). false: already inside a step, whose
 * end does both (the caller must not call step_end).
 */
static bool step_begin(struct rconn *c)
{
	if (c->in_step)
		return false;
	c->in_step = true;
	if (!c->cork)
		c->cork = evbuffer_new(); /* out of memory: no cork, the output as before */
	c->corking = c->cork != NULL;
	return true;
}

/* Sends what the step corked (plain sockets only), and credits the bytes
 * the socket took at once as on_wire_drained credits libevent's. */
static void cork_flush(struct rconn *c)
{
	c->corking = false;
	if (!c->cork || evbuffer_get_length(c->cork) == 0)
		return;
	if (TERN_BUG_ON(!c->bev)) { /* close_bev empties the cork */
		evbuffer_drain(c->cork, evbuffer_get_length(c->cork));
		return;
	}
	if (!plain_socket(c)) { /* start_tls flushes first: cannot happen */
		evbuffer_add_buffer(bufferevent_get_output(c->bev), c->cork);
		return;
	}
	wire_took(c, rwire_flush(c->bev, c->cork, worker_batch(c->w)));
}

/* The end of a step: c is freed if it died in it, else its corked bytes
 * are sent. */
static void step_end(struct rconn *c)
{
	c->in_step = false;
	if (c->dead)
		conn_free(c);
	else
		cork_flush(c);
}

static void emit_evbuffer(void *arg, const char *p, size_t n)
{
	evbuffer_add(arg, p, n);
}

/* ----------------------------------------------------------- transaction */

static void send_rcpt_of(struct rconn *c, const struct remote_job *j, size_t i)
{
	const struct remote_rcpt *rr = &j->rcpts[i];
	char params[700] = "";
	size_t pl = 0;
	if (c->caps.dsn) {
		if (rr->notify) {
			pl += (size_t)snprintf(params + pl, sizeof(params) - pl, " NOTIFY=");
			if (rr->notify & SMTP_NOTIFY_NEVER) {
				pl += (size_t)snprintf(params + pl, sizeof(params) - pl, "NEVER");
			} else {
				const char *sep = "";
				static const struct {
					unsigned bit;
					const char *name;
				} names[] = {{SMTP_NOTIFY_SUCCESS, "SUCCESS"},
				             {SMTP_NOTIFY_FAILURE, "FAILURE"},
				             {SMTP_NOTIFY_DELAY, "DELAY"}};
				for (size_t k = 0; k < 3; k++) {
					if (rr->notify & names[k].bit) {
						pl += (size_t)snprintf(params + pl,
						                       sizeof(params) - pl, "%s%s",
						                       sep, names[k].name);
						sep = ",";
					}
				}
			}
		}
		const char *semi = rr->orcpt ? strchr(rr->orcpt, ';') : NULL;
		char x[600];
		if (semi && (size_t)(semi - rr->orcpt) < 32 &&
		    smtp_xtext_encode(semi + 1, strlen(semi + 1), x, sizeof(x)) &&
		    pl < sizeof(params))
			pl += (size_t)snprintf(params + pl, sizeof(params) - pl, " ORCPT=%.*s;%s",
			                       (int)(semi - rr->orcpt), rr->orcpt, x);
	}
	send_line(c, "RCPT TO:<%s>%s", rr->addr, params);
}

static void send_rcpt(struct rconn *c, size_t i)
{
	send_rcpt_of(c, c->job, i);
}

/* MAIL for j; conv: its downconverted body, if it has one (the size). */
static void send_mail_of(struct rconn *c, const struct remote_job *j, const struct tbuf *conv)
{
	uint64_t len = conv && conv->data ? conv->len : j->len + j->spill_len;
	char params[800] = "";
	size_t pl = 0;
	if (c->caps.has_size)
		pl += (size_t)snprintf(params + pl, sizeof(params) - pl, " SIZE=%" PRIu64, len);
	if (j->body == SMTP_BODY_BINARYMIME)
		pl += (size_t)snprintf(params + pl, sizeof(params) - pl, " BODY=BINARYMIME");
	else if (c->caps.eightbitmime && !(conv && conv->data) &&
	         (j->has_8bit || j->body == SMTP_BODY_8BITMIME))
		pl += (size_t)snprintf(params + pl, sizeof(params) - pl, " BODY=8BITMIME");
	if (j->smtputf8)
		pl += (size_t)snprintf(params + pl, sizeof(params) - pl, " SMTPUTF8");
	if (c->caps.dsn) {
		if (j->ret == SMTP_RET_FULL)
			pl += (size_t)snprintf(params + pl, sizeof(params) - pl, " RET=FULL");
		else if (j->ret == SMTP_RET_HDRS)
			pl += (size_t)snprintf(params + pl, sizeof(params) - pl, " RET=HDRS");
		char x[600];
		if (j->envid && smtp_xtext_encode(j->envid, strlen(j->envid), x, sizeof(x)) &&
		    pl < sizeof(params))
			pl += (size_t)snprintf(params + pl, sizeof(params) - pl, " ENVID=%s", x);
	}
	/* RFC 4954 §5: who submitted it, to a next hop that speaks AUTH */
	char ax[600];
	if (c->caps.auth && j->auth &&
	    smtp_xtext_encode(j->auth, strlen(j->auth), ax, sizeof(ax)) && pl < sizeof(params))
		pl += (size_t)snprintf(params + pl, sizeof(params) - pl, " AUTH=%s", ax);
	send_line(c, "MAIL FROM:<%s>%s", j->sender, params);
}

static void send_mail(struct rconn *c)
{
	send_mail_of(c, c->job, &c->converted);
}

/* Checks the message against the peer's capabilities; false if the job was
 * finished (bounced) here. */
static bool fit_message_to_peer(struct rconn *c)
{
	struct remote_job *j = c->job;
	if (j->smtputf8 && !c->caps.smtputf8) {
		rconn_set_error(c, true, "5.6.7",
		                "550 5.6.7 the message needs SMTPUTF8 but %s does not support it",
		                c->targets[c->cur].host);
		return false;
	}
	if (j->body == SMTP_BODY_BINARYMIME && !(c->caps.chunking && c->caps.binarymime)) {
		rconn_set_error(c, true, "5.6.3",
		                "554 5.6.3 the message is BINARYMIME but %s cannot take it",
		                c->targets[c->cur].host);
		return false;
	}
	if (j->spill_path && j->has_8bit && !c->caps.eightbitmime &&
	    j->body != SMTP_BODY_BINARYMIME) {
		/* SPILL: converting needs the whole message in memory */
		rconn_set_error(
		    c, true, "5.6.3",
		    "554 5.6.3 %s does not take 8-bit mail and the message is too large to "
		    "convert to 7 bits",
		    c->targets[c->cur].host);
		return false;
	}
	/* SPILL: reading ahead starts now, on the pool, while MAIL and RCPT go */
	if (j->spill_path &&
	    body_pump_open(&c->pump, c->r->io_pool, c->w, j->spill_path, j->spill_off, j->spill_len,
	                   j->spill_check, j->spill_crc, pump_ready, c) != TERN_OK) {
		log_error("event=spool_read_failed id=%s file=%s reason=out-of-memory", j->id,
		          j->spill_path);
		rconn_set_error(c, false, "4.3.0", "the message could not be read from the spool");
		return false;
	}
	if (j->has_8bit && !c->caps.eightbitmime && j->body != SMTP_BODY_BINARYMIME) {
		tbuf_init(&c->converted, j->len * 3 + 4096);
		if (smtp_downconvert_8bit(j->data, j->len, &c->converted) != TERN_OK) {
			tbuf_free(&c->converted);
			rconn_set_error(
			    c, true, "5.6.3",
			    "554 5.6.3 %s does not take 8-bit mail and the message cannot be "
			    "converted to 7 bits",
			    c->targets[c->cur].host);
			return false;
		}
		log_info("event=downconverted id=%s relay=%s from=%zu to=%zu", j->id,
		         c->targets[c->cur].host, j->len, c->converted.len);
	}
	uint64_t len = c->converted.data ? c->converted.len : j->len + j->spill_len;
	if (c->caps.has_size && c->caps.size && len > c->caps.size) {
		rconn_set_error(c, true, "5.3.4",
		                "552 5.3.4 message of %" PRIu64
		                " bytes exceeds the limit of %s (%llu bytes)",
		                len, c->targets[c->cur].host, (unsigned long long)c->caps.size);
		return false;
	}
	return true;
}

/*
 * Records what the next reply answers. The table holds one batch (MAIL,
 * BATCH_MAX RCPTs, DATA), which the batching guarantees; should it ever be
 * full anyway, the connection is ended (the job waits for its next retry)
 * rather than a reply being matched to the wrong command. false: c is gone.
 */
static bool push_expect(struct rconn *c, enum expect e)
{
	if (c->n_expect >= sizeof(c->expect) / sizeof(c->expect[0])) {
		log_error("event=remote_internal_error id=%s reason=\"expect table full\"",
		          c->job ? c->job->id : "-");
		rconn_set_error(c, false, "4.3.0", "internal error talking to %s",
		                c->targets[c->cur].host);
		close_bev(c);
		rconn_job_finish(c);
		rconn_end(c);
		return false;
	}
	c->expect[c->n_expect++] = e;
	return true;
}

/* Picks the job's next batch after the current one: false when no recipient
 * is left without a result. */
static bool next_batch(struct rconn *c)
{
	struct remote_job *j = c->job;
	size_t s = c->batch_end;
	while (s < j->n_rcpts && j->rcpts[s].outcome != REMOTE_PENDING)
		s++;
	if (s >= j->n_rcpts)
		return false;
	c->batch_start = s;
	c->batch_end = j->n_rcpts - s > BATCH_MAX ? s + BATCH_MAX : j->n_rcpts;
	return true;
}

/*
 * One write and one round trip per message (RFC 3030 with RFC 2920): to a
 * peer that offers CHUNKING and PIPELINING, MAIL, the RCPTs and the message
 * as one BDAT LAST chunk go out together, and the replies come back in that
 * order; the accepted recipients are judged by the BDAT's reply, the
 * refused ones by their RCPT's. Only for a message held in memory: a
 * spilled one (> 1 MiB, remote_stream.h) keeps DATA, because its chunk's
 * size (line ends normalised) is not known before the file is read through,
 * and one round trip is nothing beside a transfer of megabytes.
 */
static bool one_write_wanted(struct rconn *c)
{
	const struct remote_job *j = c->job;
	if (!c->conf->delivery.chunking || !c->caps.chunking || !c->caps.pipelining)
		return false;
	if (j->spill_path && !c->converted.data)
		return false;
	if (j->body == SMTP_BODY_BINARYMIME && !c->caps.binarymime)
		return false; /* fit_message_to_peer bounced it already */
	if (!c->chunk)
		c->chunk = evbuffer_new();
	return c->chunk != NULL; /* out of memory: DATA */
}

/* one_write: the message as BDAT LAST, behind MAIL and the RCPTs. Its bytes
 * are those DATA would carry, unstuffed (smtp_chunk_encode), or as they are
 * for BINARYMIME. Its reply is the end of data's; until the socket has taken
 * the chunk, the data phase's deadline runs (on_wire_drained). */
static void send_bdat_last(struct rconn *c)
{
	struct remote_job *j = c->job;
	const char *d = c->converted.data ? c->converted.data : j->data;
	size_t len = c->converted.data ? c->converted.len : j->len;
	if (!push_expect(c, EX_BDAT))
		return;
	struct evbuffer *out = out_of(c);
	uint64_t n = len;
	if (j->body == SMTP_BODY_BINARYMIME)
		evbuffer_add(c->chunk, d, len);
	else
		n = smtp_chunk_encode(d, len, emit_evbuffer, c->chunk);
	evbuffer_add_printf(out, "BDAT %" PRIu64 " LAST\r\n", n);
	evbuffer_add_buffer(out, c->chunk); /* moves the chain, leaves chunk empty */
	c->awaiting++;
	c->body_pending = true;
}

/* A transaction's bookkeeping at its start, before its commands are sent
 * (start_batch) or once they are known to be on the wire (take_next). */
static void tx_reset(struct rconn *c)
{
	c->n_expect = c->i_expect = 0;
	c->rcpt_cursor = c->rcpt_reply_cursor = c->batch_start;
	c->n_accepted = 0;
	c->mail_failed = false;
}

/* A job's last error, cleared when it starts (begin_job, take_next). */
static void job_errors_reset(struct rconn *c)
{
	c->last_error[0] = '\0';
	c->last_status[0] = '\0';
	c->last_perm = false;
}

/* Sends MAIL (and, pipelining, the batch's RCPTs and DATA, or BDAT LAST
 * with the message). */
static void start_batch(struct rconn *c)
{
	struct remote_job *j = c->job;
	tx_reset(c);
	c->one_write = one_write_wanted(c);
	/* What tx_forget_results undoes: every result from batch_start on is
	 * this transaction's (all start pending; earlier batches end before). */
	for (size_t i = c->batch_start; i < j->n_rcpts; i++)
		TERN_BUG_ON(j->rcpts[i].outcome != REMOTE_PENDING);
	rconn_enter_state(c, RC_TX);
	send_mail(c);
	if (!push_expect(c, EX_MAIL))
		return;
	if (c->caps.pipelining) {
		for (size_t i = c->batch_start; i < c->batch_end; i++) {
			send_rcpt(c, i);
			if (!push_expect(c, EX_RCPT))
				return;
		}
		c->rcpt_cursor = c->batch_end;
		if (c->one_write) {
			send_bdat_last(c);
			return;
		}
		if (j->body != SMTP_BODY_BINARYMIME) {
			send_line(c, "DATA");
			if (!push_expect(c, EX_DATA))
				return;
		}
	}
	reserve_next(c);
}

/* -------------------------------------------------- dropped bodies */

static void load_unlink(struct remote *r, struct body_load *l)
{
	pthread_mutex_lock(&r->lock);
	if (l->prev)
		l->prev->next = l->next;
	else
		r->loads = l->next;
	if (l->next)
		l->next->prev = l->prev;
	pthread_mutex_unlock(&r->lock);
}

static void load_free(struct body_load *l)
{
	free(l->data);
	free(l);
}

/* On the I/O pool: the spool read (the scheduler's, remote_set_body_source). */
static void load_work(void *arg)
{
	struct body_load *l = arg;
	l->rc = l->r->load(l->r->load_arg, l->id, &l->data, &l->len);
}

static bool begin_job(struct rconn *c);

/* The job whose bytes a read-back brought (or failed to): they are its own
 * from now on, with tern's X-Tern-Tag taken off again as remote_submit did.
 * false (logged) when the read failed. */
static bool load_attach(struct rconn *c, struct body_load *l, struct remote_job *j)
{
	if (l->rc != TERN_OK) {
		log_error("event=spool_read_failed id=%s relay=%s reason=%s", j->id, target_host(c),
		          tern_strerror(l->rc));
		return false;
	}
	char tag[POOL_TAG_MAX];
	j->data = l->data;
	j->len = pool_take_tag(l->data, l->len, tag, sizeof(tag));
	l->data = NULL;
	log_debug("event=remote_body_reread id=%s bytes=%zu relay=%s%s", j->id, j->len,
	          target_host(c), l->ahead ? " pipelined=1" : "");
	return true;
}

static void send_next_commands(struct rconn *c, const struct remote_job *j);

/*
 * PIPE-NEXT: the bytes of c->next_job are in. If the current message's end
 * of data went out already (and waits for its reply), its commands go now,
 * behind it, as pipeline_next would have sent them; if not, pipeline_next
 * sends them with it. A failed read gives the job up (deferred; the
 * message stays in the spool for its retry).
 */
static void load_done_ahead(struct rconn *c, struct body_load *l)
{
	struct remote_job *j = c->next_job;
	if (TERN_BUG_ON(!j || !c->next_unsent || j->data))
		return;
	if (!load_attach(c, l, j)) {
		c->next_job = NULL;
		c->next_unsent = false;
		job_give_up(j, "4.3.0", "the message could not be read back from the spool");
		return;
	}
	if (c->st == RC_DOT && next_goes_now(c)) { /* pipeline_next found no bytes */
		c->next_unsent = false;
		send_next_commands(c, j);
	}
}

/* On the connection's worker: the bytes are in (or the read failed). */
static void load_done(void *arg)
{
	struct body_load *l = arg;
	struct remote *r = l->r;
	load_unlink(r, l);
	pthread_mutex_lock(&r->lock);
	struct rconn *c = l->c;
	pthread_mutex_unlock(&r->lock);
	if (!c) { /* the connection went meanwhile; its job was finished unsent */
		load_free(l);
		return;
	}
	c->load = NULL;
	bool outer = step_begin(c);
	if (l->ahead) {
		load_done_ahead(c, l);
	} else if (!TERN_BUG_ON(c->st != RC_LOAD || !c->job || c->job->data)) {
		wait_none(c);
		bool started = load_attach(c, l, c->job) && begin_job(c);
		if (!started) {
			if (!c->job->data)
				rconn_set_error(
				    c, false, "4.3.0",
				    "the message could not be read back from the spool");
			rconn_job_finish(c);
			conn_start_job(c);
		}
	}
	load_free(l);
	if (outer)
		step_end(c);
}

/* Starts reading back the bytes of job id for c (c->load); ahead: for
 * c->next_job. false when it cannot start (no pool, out of memory). */
static bool load_begin(struct rconn *c, const char *id, bool ahead)
{
	struct remote *r = c->r;
	struct body_load *l = r->load && r->io_pool ? calloc(1, sizeof(*l)) : NULL;
	if (!l)
		return false;
	l->r = r;
	l->c = c;
	l->ahead = ahead;
	tern_strlcpy(l->id, id, sizeof(l->id));
	pthread_mutex_lock(&r->lock);
	l->next = r->loads;
	if (l->next)
		l->next->prev = l;
	r->loads = l;
	pthread_mutex_unlock(&r->lock);
	if (pool_submit(r->io_pool, load_work, c->w, load_done, l) != TERN_OK) {
		load_unlink(r, l);
		load_free(l);
		return false;
	}
	c->load = l;
	return true;
}

/*
 * queued_memory: c's job waited without its bytes (job_hold_or_drop). They
 * are read back on the I/O pool while the connection waits, by the usual
 * command deadline, in RC_LOAD. true: under way; false: it could not start
 * (the error is set; the caller finishes the job, which stays in the
 * spool for its retry).
 */
static bool load_start(struct rconn *c)
{
	if (!load_begin(c, c->job->id, false)) {
		rconn_set_error(c, false, "4.3.0",
		                "the message could not be read back from the spool");
		return false;
	}
	rconn_enter_state(c, RC_LOAD);
	wait_for(c, c->conf->delivery.command_timeout);
	return true;
}

/*
 * Starts delivering c->job. false: the message cannot go to this peer (the
 * error is set; the caller finishes the job). true: under way, or the
 * connection is gone (push_expect) — either way the caller must not touch c.
 */
static bool begin_job(struct rconn *c)
{
	job_errors_reset(c);
	if (!c->job->data)
		return load_start(c); /* begin_job again when they are in */
	c->batch_start = c->batch_end = 0;
	if (!fit_message_to_peer(c))
		return false;
	if (!next_batch(c))
		return false; /* no recipient needs us */

	start_batch(c);
	return true;
}

/* The first job of a connection, once it is greeted (and authenticated). */
static void start_transaction(struct rconn *c)
{
	if (!begin_job(c)) {
		rconn_job_finish(c);
		conn_start_job(c);
	}
}

/* A transaction is over (end of data answered, or RSET after a failure): the
 * job's next batch, or the next job. */
static void tx_next(struct rconn *c)
{
	if (c->job && next_batch(c)) {
		start_batch(c);
		return;
	}
	rconn_job_finish(c);
	if (c->next_job && c->next_unsent) {
		/* PIPE-NEXT: taken early, nothing of it sent: the current job
		 * now, begun at once or when its bytes are in (load_done) */
		c->job = c->next_job;
		c->next_job = NULL;
		c->next_unsent = false;
		if (!c->load) {
			if (!begin_job(c)) {
				rconn_job_finish(c);
				conn_start_job(c);
			}
			return;
		}
		c->load->ahead = false;
		log_debug(
		    "event=remote_load_wait id=%s relay=%s reason=\"the previous end of data was "
		    "answered before this message was read back\"",
		    c->job->id, target_host(c));
		rconn_enter_state(c, RC_LOAD);
		wait_for(c, c->conf->delivery.command_timeout);
		return;
	}
	if (c->next_job) {
		take_next(c); /* PIPE-NEXT: already on the wire */
		return;
	}
	conn_start_job(c);
}

/* The message data (or BDAT chunk, or the empty data of a pipelined DATA
 * nobody needs) is queued: its reply is due after it, and until the socket
 * has taken all of it the data phase's deadline runs (on_wire_drained). */
static void data_sent(struct rconn *c)
{
	rconn_enter_state(c, RC_DOT);
	c->awaiting++;
	c->body_pending = true;
	wait_for(c, c->conf->delivery.command_timeout);
}

/* SPILL: tops up the output from the file while little is queued; false
 * (logged, c->pump_err set) when the file failed: the caller ends the
 * transaction with pump_failed. */
static bool pump_more(struct rconn *c)
{
	int rc = body_pump_fill(&c->pump, out_queued(c), emit_evbuffer, out_of(c));
	if (rc == TERN_OK)
		return true;
	c->pump_err = rc;
	if (rc == TERN_ECORRUPT)
		log_error(
		    "event=spool_spill_corrupt id=%s file=%s relay=%s reason=\"checksum or size "
		    "differs from its record\" action=\"end of data not sent; kept, not "
		    "delivered\"",
		    c->job->id, c->job->spill_path, target_host(c));
	else
		log_error("event=spool_read_failed id=%s file=%s reason=%s", c->job->id,
		          c->job->spill_path, tern_strerror(rc));
	return false;
}

/*
 * SPILL: the file failed while its bytes went out. The end of data is never
 * sent: the connection is reset, so the receiver discards what it got (RFC
 * 5321 §4.1.1.4), and the recipients wait for the next try (a damaged file
 * stays in the spool, as a damaged record does, for the operator).
 */
static void pump_failed(struct rconn *c)
{
	bool damaged = c->pump_err == TERN_ECORRUPT;
	c->pump_err = 0;
	rconn_set_error(c, false, "4.3.0",
	                damaged ? "the message's spool file is damaged; it is kept, not delivered"
	                        : "the message could not be read from the spool");
	tx_forget_results(c);
	abort_bev(c);
	rconn_job_finish(c);
	rconn_end(c);
}

/* SPILL: a chunk the pump waited for was read (the reader's event). */
static void pump_ready(void *arg)
{
	struct rconn *c = arg;
	if (!c->bev || !c->pump.active || c->pump_err)
		return;
	bool outer = step_begin(c);
	if (!pump_more(c))
		pump_failed(c);
	if (outer)
		step_end(c);
}

/* SPILL: the head from memory, the rest from the file as the socket takes it. */
static void send_body_stream(struct rconn *c)
{
	struct remote_job *j = c->job;
	struct evbuffer *out = out_of(c);
	bool raw = j->body == SMTP_BODY_BINARYMIME;
	/* a later batch of the same job sends the file again from its start */
	if (!body_pump_fresh(&c->pump) &&
	    body_pump_open(&c->pump, c->r->io_pool, c->w, j->spill_path, j->spill_off, j->spill_len,
	                   j->spill_check, j->spill_crc, pump_ready, c) != TERN_OK) {
		protocol_error(c, "the message could not be read from the spool");
		return;
	}
	if (raw) {
		evbuffer_add_printf(out, "BDAT %" PRIu64 " LAST\r\n",
		                    (uint64_t)j->len + j->spill_len);
		evbuffer_add(out, j->data, j->len);
	} else {
		data_encoder_feed(&c->pump.enc, j->data, j->len, emit_evbuffer, out);
	}
	body_pump_start(&c->pump, raw);
	data_sent(c);
	if (!pump_more(c))
		pump_failed(c);
}

/*
 * PIPE-NEXT: behind the end of data of the current job (its last batch,
 * with a recipient accepted), the next job's MAIL, RCPTs and DATA, in the
 * same write: its replies follow the end of data's, one round trip per
 * message instead of two, and a peer that pipelines its replies (as
 * smtp-sink and Postfix do) answers both in one packet. Answered by
 * take_next once the end of data's reply is in; if the connection ends
 * first, the job goes back to its queue untried (next_job_requeue).
 */
static void pipeline_next(struct rconn *c)
{
	if (!next_goes_now(c))
		return;
	if (c->next_job) { /* taken early (reserve_next) */
		if (c->next_unsent && c->next_job->data) {
			c->next_unsent = false;
			send_next_commands(c, c->next_job);
		}
		return; /* else its read-back sends them when it is in (load_done_ahead) */
	}
	if (c->load)
		return;
	struct remote_job *j = dest_pop_ahead(c, false);
	if (!j)
		return;
	c->next_job = j;
	if (j->data) {
		send_next_commands(c, j);
		return;
	}
	/* queued_memory: read back now; sent when in (load_done_ahead) */
	c->next_unsent = load_begin(c, j->id, true);
	if (!c->next_unsent) /* the usual way, after this one */
		next_job_requeue(c, "its bytes could not be read back ahead");
}

/*
 * PIPE-NEXT with queued_memory: when c's current job starts and the job
 * behind it in the queue waits without its bytes, it is taken now and read
 * back while the current message goes out, so that its commands can still
 * go in the same write as the end of data (pipeline_next). A read that
 * ends after that write goes on its own (load_done_ahead): one more small
 * segment, which a peer with delayed acknowledgements may answer late.
 */
static void reserve_next(struct rconn *c)
{
	if (!next_may_ride(c) || c->next_job || c->load || !c->r->load)
		return;
	struct remote_job *j = dest_pop_ahead(c, true);
	if (!j)
		return;
	c->next_job = j;
	c->next_unsent = load_begin(c, j->id, true);
	if (!c->next_unsent)
		next_job_requeue(c, "its bytes could not be read back ahead");
}

/* PIPE-NEXT: j's MAIL, RCPTs and DATA behind the current end of data
 * (queued or, after a read-back, maybe gone out already). */
static void send_next_commands(struct rconn *c, const struct remote_job *j)
{
	size_t before = out_queued(c);
	send_mail_of(c, j, NULL);
	for (size_t i = 0; i < j->n_rcpts; i++)
		send_rcpt_of(c, j, i);
	send_line(c, "DATA");
	if (c->body_pending) /* else the data phase is over: nothing to tell apart */
		c->tail_after_dot = out_queued(c) - before;
	log_debug("event=remote_pipelined id=%s after=%s relay=%s", j->id,
	          c->job ? c->job->id : "-", target_host(c));
}

/* PIPE-NEXT: the end of data's reply is in and its job finished: the job
 * sent behind it is the current one, its MAIL's reply next (as if
 * start_batch had sent it now). */
static void take_next(struct rconn *c)
{
	struct remote_job *j = c->next_job;
	c->next_job = NULL;
	c->job = j;
	job_errors_reset(c);
	c->batch_start = 0;
	c->batch_end = j->n_rcpts; /* <= BATCH_MAX (fits_as_is) */
	tx_reset(c);
	c->rcpt_cursor = c->batch_end; /* every RCPT went out, pipelined */
	c->one_write = false;
	c->expect[c->n_expect++] = EX_MAIL;
	for (size_t i = 0; i < j->n_rcpts; i++)
		c->expect[c->n_expect++] = EX_RCPT;
	c->expect[c->n_expect++] = EX_DATA;
	rconn_enter_state(c, RC_TX);
	reserve_next(c);
}

static void send_body(struct rconn *c)
{
	struct remote_job *j = c->job;
	if (j->spill_path && !c->converted.data) {
		send_body_stream(c);
		return;
	}
	const char *d = c->converted.data ? c->converted.data : j->data;
	size_t len = c->converted.data ? c->converted.len : j->len;
	struct evbuffer *out = out_of(c);
	if (j->body == SMTP_BODY_BINARYMIME) {
		evbuffer_add_printf(out, "BDAT %zu LAST\r\n", len);
		evbuffer_add(out, d, len);
	} else {
		/* Line ends normalised as well as dots stuffed: a bare LF or CR
		 * in a stored message must not let a lenient peer see an end of
		 * data (or a command) we did not mean (SMTP smuggling). */
		smtp_data_encode(d, len, emit_evbuffer, out);
	}
	data_sent(c);
	if (j->body != SMTP_BODY_BINARYMIME)
		pipeline_next(c);
}

/* After MAIL and every RCPT reply of the batch are in (non-pipelined or
 * pipelined). */
static void after_rcpts(struct rconn *c)
{
	struct remote_job *j = c->job;
	if (c->one_write)
		return; /* the BDAT's reply comes next, whatever these were */
	if (c->mail_failed || c->n_accepted == 0) {
		if (!c->caps.pipelining || j->body == SMTP_BODY_BINARYMIME) {
			/* Nothing to send: reset for the next batch or job. */
			rconn_enter_state(c, RC_RSET);
			send_line(c, "RSET");
		}
		return;
	}
	if (j->body == SMTP_BODY_BINARYMIME) {
		send_body(c);
		return;
	}
	if (!c->caps.pipelining) {
		send_line(c, "DATA");
		push_expect(c, EX_DATA);
	}
}

/* The transaction's results come from replies that may have been paired
 * with the wrong commands: none of them stands. */
static void tx_forget_results(struct rconn *c)
{
	struct remote_job *j = c->job;
	for (size_t i = c->batch_start; j && i < j->n_rcpts; i++) {
		struct remote_rcpt *rr = &j->rcpts[i];
		rr->outcome = REMOTE_PENDING;
		rr->dsn_relayed = false;
		rr->status[0] = rr->reply[0] = rr->remote_mta[0] = '\0';
	}
}

static void protocol_error(struct rconn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * The peer broke the exchange: a reply when none was due, more replies than
 * commands, a reply code its command cannot have, bytes that are no reply.
 * Which reply answers which command is then unknown, so nothing the peer
 * said in the transaction under way counts: its recipients wait for the next
 * try (4.5.0), and the connection is closed. Before any transaction the
 * next address is tried instead, as after a refused greeting.
 */
static void protocol_error(struct rconn *c, const char *fmt, ...)
{
	char why[400], q[500];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	log_warn("event=protocol_error id=%s relay=%s state=%s reason=%s",
	         c->job ? c->job->id : "-", target_host(c), rc_state_name[c->st],
	         log_quote(why, strlen(why), q, sizeof(q)));
	rconn_set_error(c, false, "4.5.0", "protocol error: %s", why);
	if (c->st == RC_TX || c->st == RC_DOT || c->st == RC_RSET)
		tx_forget_results(c);
	abort_bev(c);
	if (c->greeted_ok) {
		rconn_job_finish(c);
		rconn_end(c);
		return;
	}
	c->cur++;
	c->tls_disabled = false;
	rconn_next_target(c);
}

static void end_reply(struct rconn *c, const struct smtp_reply *r, const char *phase);

static void tx_reply(struct rconn *c, const struct smtp_reply *r)
{
	struct remote_job *j = c->job;
	char text[600];
	/* on_read counts replies against commands: in a transaction every
	 * command sent has its entry here. */
	if (TERN_BUG_ON(c->i_expect >= c->n_expect)) {
		protocol_error(c, "%s sent a reply when none was due", target_host(c));
		return;
	}
	/* handle_reply has judged the code: it is one this command can have. */
	enum expect e = c->expect[c->i_expect++];
	switch (e) {
	case EX_MAIL:
		if (r->code < 200 || r->code >= 300) {
			c->mail_failed = true;
			/* The sender or the message was refused: every later batch
			 * would get the same answer, so it is every remaining
			 * recipient's result. */
			reply_text(r, "MAIL FROM", text, sizeof(text));
			for (size_t i = c->batch_start; i < j->n_rcpts; i++)
				if (j->rcpts[i].outcome == REMOTE_PENDING)
					rcpt_result(c, &j->rcpts[i], outcome_of(r->code),
					            status_of(r), text);
		}
		if (!c->caps.pipelining) {
			if (c->mail_failed) {
				after_rcpts(c);
				return;
			}
			send_rcpt(c, c->rcpt_cursor++);
			push_expect(c, EX_RCPT);
		}
		break;
	case EX_RCPT: {
		size_t i = c->rcpt_reply_cursor++;
		if (!c->mail_failed && i < c->batch_end) {
			if (r->code >= 200 && r->code < 300) {
				c->n_accepted++;
			} else {
				reply_text(r, "RCPT TO", text, sizeof(text));
				rcpt_result(c, &j->rcpts[i], outcome_of(r->code), status_of(r),
				            text);
			}
		}
		if (!c->caps.pipelining) {
			if (c->rcpt_cursor < c->batch_end) {
				send_rcpt(c, c->rcpt_cursor++);
				push_expect(c, EX_RCPT);
			} else {
				after_rcpts(c);
			}
		} else if (c->rcpt_reply_cursor == c->batch_end) {
			after_rcpts(c);
		}
		break;
	}
	case EX_DATA:
		if (r->code == 354) {
			if (c->mail_failed || c->n_accepted == 0) {
				/* A pipelined DATA the server took although no recipient
				 * was accepted: end it empty (RFC 2920 §3.1). */
				evbuffer_add(out_of(c), ".\r\n", 3);
				data_sent(c);
				return;
			}
			send_body(c);
			return;
		}
		/* 4xx waits, 5xx is a refusal of the message (RFC 5321 §3.3). A
		 * 250 never gets here (smtp_reply_judge): it means the peer took
		 * no message, and counting it as delivery would lose the message. */
		if (!c->mail_failed && c->n_accepted > 0) {
			reply_text(r, "DATA", text, sizeof(text));
			for (size_t i = c->batch_start; i < c->batch_end; i++)
				if (j->rcpts[i].outcome == REMOTE_PENDING)
					rcpt_result(c, &j->rcpts[i], outcome_of(r->code),
					            status_of(r), text);
		}
		rconn_enter_state(c, RC_RSET);
		send_line(c, "RSET");
		return;
	case EX_BDAT:
		if (c->mail_failed || c->n_accepted == 0) {
			/* Every recipient has its result from the MAIL or its
			 * RCPT reply; the chunk's reply (503 or 554 as a rule)
			 * changes none. Reset for what comes next either way. */
			rconn_enter_state(c, RC_RSET);
			send_line(c, "RSET");
			return;
		}
		end_reply(c, r, "BDAT LAST");
		return;
	}
}

/* The reply to the end of the data (phase: its words for the texts). */
static void end_reply(struct rconn *c, const struct smtp_reply *r, const char *phase)
{
	struct remote_job *j = c->job;
	char text[600];
	reply_text(r, phase, text, sizeof(text));
	bool ok = r->code >= 200 && r->code < 300;
	/* The empty DATA case (nothing accepted) has its results already. */
	for (size_t i = c->batch_start; !c->mail_failed && c->n_accepted > 0 && i < c->batch_end;
	     i++) {
		struct remote_rcpt *rr = &j->rcpts[i];
		if (rr->outcome != REMOTE_PENDING)
			continue;
		rcpt_result(c, rr, outcome_of(r->code), status_of(r), text);
		if (ok && c->caps.dsn && (rr->notify || rr->orcpt))
			rr->dsn_relayed = true;
	}
	/* PIPE-NEXT: with the next MAIL sent behind the end of data, no RSET
	 * (it would undo that transaction; this one is over either way, RFC
	 * 5321 §4.1.1.4). */
	if (ok || next_on_wire(c)) {
		tx_next(c);
	} else {
		rconn_enter_state(c, RC_RSET);
		send_line(c, "RSET");
	}
}

static void dot_reply(struct rconn *c, const struct smtp_reply *r)
{
	end_reply(c, r, "end of DATA");
}

/* ---------------------------------------------------------- SMTP session */

static void after_ehlo(struct rconn *c);

static void send_ehlo(struct rconn *c)
{
	rconn_enter_state(c, RC_EHLO);
	send_line(c, "EHLO %s", c->ehlo_name ? c->ehlo_name : c->conf->hostname);
}

static void on_read(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void own_reads(struct rconn *c);
static void give_reads_back(struct rconn *c);

/* The host entry (addresses, TLSA) of the current target; NULL for a
 * literal address. */
static const struct host_addrs *target_hostinfo(const struct rconn *c)
{
	if (c->cur >= c->n_targets)
		return NULL;
	for (size_t h = 0; h < c->n_hosts; h++)
		if (strcmp(c->hosts[h].host, c->targets[c->cur].host) == 0)
			return &c->hosts[h];
	return NULL;
}

/* The TLS level the current target must meet: the route's, raised by DANE. */
static enum conf_tls target_level(const struct rconn *c)
{
	const struct host_addrs *ha = target_hostinfo(c);
	enum conf_tls base = c->route ? c->route->tls : CONF_TLS_OPPORTUNISTIC;
	enum conf_tls lv =
	    tlsp_level(base, c->route && c->route->auth_user, ha ? ha->dane : TLSP_DANE_NONE);
	/* An enforced MTA-STS policy asks for a verified certificate; DANE,
	 * where it applies, takes precedence (RFC 8461 §2). */
	if (ha && ha->sts_enforce && lv != CONF_TLS_DANE && lv < CONF_TLS_VERIFY)
		lv = CONF_TLS_VERIFY;
	return lv;
}

/* MTA-STS testing mode: what would have failed, logged, nothing else. */
static void sts_testing_note(const struct rconn *c, const char *what)
{
	char q[600];
	if (!c->sts_have || c->sts.mode != MTASTS_TESTING)
		return;
	log_warn("event=mta_sts_testing id=%s domain=%s relay=%s would_fail=%s",
	         c->job ? c->job->id : "-", c->domain, target_host(c),
	         log_quote(what, strlen(what), q, sizeof(q)));
}

/* A TLS failure where TLS is required: this target is no good, the next
 * may be; never the same one in clear. */
static void tls_required_failed(struct rconn *c, const char *status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void tls_required_failed(struct rconn *c, const char *status, const char *fmt, ...)
{
	char why[400], q[900];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	const struct host_addrs *ha = target_hostinfo(c);
	if (ha && ha->sts_enforce && c->level == CONF_TLS_VERIFY) {
		size_t n = strlen(why);
		snprintf(why + n, sizeof(why) - n, " [MTA-STS policy of %s, mode enforce]",
		         c->domain);
	}
	rconn_set_error(c, false, status, "TLS required but %s", why);
	log_warn("event=tls_failed id=%s relay=%s reason=%s action=next-host",
	         c->job ? c->job->id : "-", target_host(c),
	         log_quote(why, strlen(why), q, sizeof(q)));
	abort_bev(c);
	c->cur++;
	c->tls_disabled = false;
	rconn_next_target(c);
}

static void start_tls(struct rconn *c)
{
	cork_flush(c); /* nothing corked goes under the TLS layer */
	give_reads_back(c);
	SSL *ssl = SSL_new(c->r->tls);
	char err[300];
	if (!ssl || tlsp_prepare(ssl, c->level, target_host(c),
	                         target_hostinfo(c) ? target_hostinfo(c)->tlsa : NULL,
	                         target_hostinfo(c) ? target_hostinfo(c)->n_tlsa : 0, err,
	                         sizeof(err)) != 0) {
		if (!ssl)
			snprintf(err, sizeof(err), "out of memory");
		SSL_free(ssl);
		if (tlsp_required(c->level)) {
			tls_required_failed(c, "4.7.5", "TLS with %s cannot start: %s",
			                    target_host(c), err);
			return;
		}
		c->tls_disabled = true;
		close_bev(c);
		rconn_next_target(c);
		return;
	}
	tls_client_set_sni(ssl, c->targets[c->cur].host); /* TLS: never an IP address */
	struct bufferevent *tb = bufferevent_openssl_filter_new(
	    worker_base(c->w), c->bev, ssl, BUFFEREVENT_SSL_CONNECTING,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (!tb) {
		SSL_free(ssl);
		c->tls_disabled = true;
		close_bev(c);
		rconn_next_target(c);
		return;
	}
	c->bev = tb;
	rconn_enter_state(c, RC_TLS_HANDSHAKE);
	smtp_reply_init(&c->rp);
	bufferevent_setcb(tb, on_read, NULL, on_event, c);
	bufferevent_enable(tb, EV_READ | EV_WRITE);
	/* The whole handshake, not each of its reads: a peer that answered
	 * 220 and then says nothing (or drips) is cut off here. */
	wait_for(c, c->conf->delivery.command_timeout);
}

/* The first line of path, through the file source (core/files.h): from the
 * privileged parent's bundle when the daemon runs split. A line too long for
 * out is refused rather than cut. */
static bool read_password_file(const char *path, char *out, size_t outlen)
{
	char *data = NULL;
	size_t len = 0;
	int en;
	if (!path || tern_file_read(path, 64 * 1024, &data, &len, &en) != TERN_OK)
		return false;
	size_t n = strcspn(data, "\r\n");
	bool ok = len > 0 && n < outlen;
	if (ok) {
		memcpy(out, data, n);
		out[n] = '\0';
	}
	explicit_bzero(data, len);
	free(data);
	return ok;
}

static void start_auth(struct rconn *c)
{
	const struct conf_route *rt = c->route;
	char pass[512];
	/* The password file is read when a connection needs it; it is small and
	 * local, which keeps secrets out of the config dump. */
	if (!read_password_file(rt->auth_password_file, pass, sizeof(pass))) {
		rconn_set_error(c, false, "4.7.0", "cannot read auth_password_file for %s",
		                rt->host);
		close_bev(c);
		rconn_job_finish(c);
		rconn_end(c);
		return;
	}
	struct tbuf raw, enc;
	tbuf_init(&raw, 2048);
	tbuf_init(&enc, 4096);
	if (c->caps.auth & SMTP_AUTH_PLAIN) {
		tbuf_append(&raw, "", 1);
		tbuf_append_str(&raw, rt->auth_user);
		tbuf_append(&raw, "", 1);
		tbuf_append_str(&raw, pass);
		tern_base64_encode(raw.data, raw.len, &enc);
		rconn_enter_state(c, RC_AUTH);
		send_line(c, "AUTH PLAIN %s", enc.data ? enc.data : "");
	} else if (c->caps.auth & SMTP_AUTH_LOGIN) {
		rconn_enter_state(c, RC_AUTH_LOGIN_USER);
		send_line(c, "AUTH LOGIN");
	} else {
		rconn_set_error(c, false, "4.7.0",
		                "%s offers no AUTH mechanism we can use (PLAIN, LOGIN)",
		                c->targets[c->cur].host);
		close_bev(c);
		rconn_job_finish(c);
		rconn_end(c);
	}
	memset(pass, 0, sizeof(pass));
	tbuf_free(&raw);
	tbuf_free(&enc);
}

static void auth_login_step(struct rconn *c, bool user)
{
	char pass[512];
	const char *v = c->route->auth_user;
	if (!user) {
		if (!read_password_file(c->route->auth_password_file, pass, sizeof(pass)))
			pass[0] = '\0';
		v = pass;
	}
	struct tbuf enc;
	tbuf_init(&enc, 4096);
	tern_base64_encode(v, strlen(v), &enc);
	send_line(c, "%s", enc.data ? enc.data : "");
	tbuf_free(&enc);
	memset(pass, 0, sizeof(pass));
	rconn_enter_state(c, user ? RC_AUTH_LOGIN_PASS : RC_AUTH);
}

/*
 * Credentials go only over a channel the route's level vouches for: verified
 * at verify/dane, encrypted at require; without TLS only where the config
 * allowed it (none/opportunistic with auth only to a loopback address).
 */
static bool auth_channel_ok(const struct rconn *c)
{
	enum conf_tls rt = c->route->tls;
	if (rt <= CONF_TLS_OPPORTUNISTIC && c->level <= CONF_TLS_OPPORTUNISTIC)
		return true;
	if (!c->tls_active)
		return false;
	if (rt == CONF_TLS_REQUIRE && c->level <= CONF_TLS_REQUIRE)
		return true;
	return c->tls_verified;
}

static void after_ehlo(struct rconn *c)
{
	if (!c->tls_active && c->caps.starttls && c->level != CONF_TLS_NONE && !c->tls_disabled &&
	    c->r->tls) {
		rconn_enter_state(c, RC_STARTTLS);
		send_line(c, "STARTTLS");
		return;
	}
	if (!c->tls_active && tlsp_required(c->level)) {
		const char *h = target_host(c);
		if (!c->r->tls)
			tls_required_failed(c, "4.7.5",
			                    "no TLS client context (see the log at start)");
		else if (c->caps.starttls)
			tls_required_failed(c, "4.7.10", "%s refused STARTTLS", h);
		else
			tls_required_failed(c, "4.7.10", "%s does not offer STARTTLS", h);
		return;
	}
	if (!c->tls_active)
		sts_testing_note(c, "no TLS (STARTTLS not offered or refused)");
	c->greeted_ok = true;
	if (c->route && c->route->auth_user) {
		if (!auth_channel_ok(c)) {
			/* tlspolicy and the config make this unreachable; the
			 * password is worth a second lock. */
			rconn_set_error(c, false, "4.7.5",
			                "TLS required but the channel to %s is not verified: "
			                "credentials not sent",
			                target_host(c));
			close_bev(c);
			rconn_job_finish(c);
			rconn_end(c);
			return;
		}
		start_auth(c);
		return;
	}
	start_transaction(c);
}

/* This address refused us before any transaction: remember why, try the next. */
static void target_refused(struct rconn *c, const struct smtp_reply *r, const char *phase)
{
	char text[600];
	reply_text(r, phase, text, sizeof(text));
	rconn_set_error(c, false, status_of(r), "%s", text);
	close_bev(c);
	c->cur++;
	rconn_next_target(c);
}

/* The command a reply in the current state answers. */
static enum smtp_client_cmd answered_cmd(const struct rconn *c)
{
	switch (c->st) {
	case RC_GREETING:
		return SMTP_C_GREETING;
	case RC_EHLO:
	case RC_HELO:
		return SMTP_C_EHLO;
	case RC_STARTTLS:
		return SMTP_C_STARTTLS;
	case RC_AUTH:
	case RC_AUTH_LOGIN_USER:
	case RC_AUTH_LOGIN_PASS:
		return SMTP_C_AUTH;
	case RC_TX:
		if (bdat_due(c, 0))
			return SMTP_C_END_OF_DATA;
		if (c->i_expect < c->n_expect && c->expect[c->i_expect] == EX_DATA)
			return SMTP_C_DATA;
		if (c->i_expect < c->n_expect && c->expect[c->i_expect] == EX_RCPT)
			return SMTP_C_RCPT;
		return SMTP_C_MAIL;
	case RC_DOT:
		return SMTP_C_END_OF_DATA;
	case RC_RSET:
		return SMTP_C_RSET;
	case RC_IDLE:
	case RC_LOAD:
	case RC_NONE:
	case RC_DNS:
	case RC_CONNECT:
	case RC_TLS_HANDSHAKE:
	case RC_QUIT:
		break;
	}
	return SMTP_C_QUIT;
}

static const char *cmd_words(const struct rconn *c, enum smtp_client_cmd cmd)
{
	static const char *const words[] = {
	    [SMTP_C_GREETING] = "the connection",
	    [SMTP_C_EHLO] = "EHLO",
	    [SMTP_C_STARTTLS] = "STARTTLS",
	    [SMTP_C_AUTH] = "AUTH",
	    [SMTP_C_MAIL] = "MAIL FROM",
	    [SMTP_C_RCPT] = "RCPT TO",
	    [SMTP_C_DATA] = "DATA",
	    [SMTP_C_END_OF_DATA] = "the end of the message data",
	    [SMTP_C_RSET] = "RSET",
	    [SMTP_C_QUIT] = "QUIT",
	};
	return c->st == RC_HELO ? "HELO" : words[cmd];
}

static void handle_reply(struct rconn *c, const struct smtp_reply *r)
{
	char text[600];
	enum smtp_client_cmd cmd = answered_cmd(c);
	enum smtp_reply_kind kind = smtp_reply_judge(cmd, r->code);
	if (kind == SMTP_RK_INVALID && c->st != RC_QUIT) {
		protocol_error(c, "%s answered %s with %d%s", target_host(c), cmd_words(c, cmd),
		               r->code, cmd == SMTP_C_DATA ? " instead of 354" : "");
		return;
	}
	if (c->st != RC_QUIT && !c->backed_off && shaping_is_backoff_reply(r->code, r->enhanced)) {
		c->backed_off = true; /* one back-off per connection, not one per recipient */
		c->closed_421 = r->code == 421;
		shaping_note_reply(c->conf, c->domain, c->job ? c->job->id : NULL, r->code,
		                   r->enhanced, r->text);
	}
	switch (c->st) {
	case RC_GREETING:
		if (kind == SMTP_RK_OK) {
			send_ehlo(c);
			return;
		}
		target_refused(c, r, "the greeting");
		return;
	case RC_EHLO:
		if (kind == SMTP_RK_OK) {
			smtp_parse_ehlo(r, &c->caps);
			after_ehlo(c);
		} else if (kind == SMTP_RK_PERM) {
			memset(&c->caps, 0, sizeof(c->caps));
			rconn_enter_state(c, RC_HELO);
			send_line(c, "HELO %s", c->ehlo_name ? c->ehlo_name : c->conf->hostname);
		} else {
			target_refused(c, r, "EHLO");
		}
		return;
	case RC_HELO:
		if (kind == SMTP_RK_OK) {
			after_ehlo(c);
			return;
		}
		target_refused(c, r, "HELO");
		return;
	case RC_STARTTLS:
		if (kind == SMTP_RK_OK) {
			start_tls(c);
			return;
		}
		/* Refused: go on in clear unless TLS is required. */
		c->tls_disabled = true;
		after_ehlo(c);
		return;
	case RC_AUTH_LOGIN_USER:
	case RC_AUTH_LOGIN_PASS:
		if (kind == SMTP_RK_CONTINUE) {
			auth_login_step(c, c->st == RC_AUTH_LOGIN_USER);
			return;
		}
		/* fall through: a failure */
		/* FALLTHROUGH */
	case RC_AUTH:
		if (kind == SMTP_RK_OK) {
			start_transaction(c);
			return;
		}
		reply_text(r, "AUTH", text, sizeof(text));
		rconn_set_error(c, false, "4.7.0", "authentication to %s failed: %s",
		                c->targets[c->cur].host, text);
		char q[700];
		log_warn("event=auth_failed id=%s relay=%s reply=%s", c->job ? c->job->id : "-",
		         c->targets[c->cur].host, log_quote(text, strlen(text), q, sizeof(q)));
		rconn_enter_state(c, RC_QUIT);
		send_line(c, "QUIT");
		wait_for(c, QUIT_TIMEOUT_SEC);
		rconn_job_finish(c);
		/* Every queued job would fail the same way: defer them now. */
		struct remote_job *nj;
		while ((nj = remote_dest_pop(c->r, c->dest, false)) != NULL) {
			c->job = nj;
			rconn_job_finish(c);
		}
		return;
	case RC_TX:
		tx_reply(c, r);
		return;
	case RC_DOT:
		dot_reply(c, r);
		return;
	case RC_RSET:
		if (kind != SMTP_RK_OK) {
			/* The results stand (their replies were paired), but a
			 * session that cannot reset is no place for the next one. */
			reply_text(r, "RSET", text, sizeof(text));
			rconn_set_error(c, false, "4.5.0", "%s", text);
			close_bev(c);
			rconn_job_finish(c);
			rconn_end(c);
			return;
		}
		/* The failed transaction is reset: its job goes on with the next
		 * batch, or is finished (its results recorded) before the next. */
		tx_next(c);
		return;
	case RC_QUIT:
		close_bev(c);
		rconn_end(c);
		return;
	case RC_IDLE:
	case RC_LOAD:
	case RC_NONE:
	case RC_DNS:
	case RC_CONNECT:
	case RC_TLS_HANDSHAKE:
		/* on_read lets no reply through without a command to answer. */
		(void)TERN_BUG_ON(true);
		return;
	}
}

/*
 * Replies are paired with commands strictly: each command sent is owed one
 * reply, in order (RFC 2920 §3.1 with PIPELINING, lockstep without). Bytes
 * when no reply is owed, bytes left over once the last owed reply is in
 * (before we sent anything new), and a reply while the message data is still
 * going out are all protocol errors — never "the reply to the next command".
 */
static void read_replies(struct rconn *c, struct bufferevent *bev)
{
	struct evbuffer *in = bufferevent_get_input(bev);
	while (c->bev == bev && evbuffer_get_length(in) > 0) {
		if (c->st == RC_IDLE) {
			/* Nothing is owed while parked: a 421 before the peer's
			 * idle timeout, or noise. Either way the connection is done. */
			idle_over(c, false);
			return;
		}
		/* one_write: MAIL's and the RCPTs' replies may come while the
		 * chunk still goes out; the chunk's own may not. */
		if (c->st != RC_QUIT &&
		    (c->awaiting == 0 ||
		     (c->body_pending && (c->st == RC_DOT || bdat_due(c, 0))))) {
			protocol_error(c,
			               c->body_pending
			                   ? "%s replied before it had the end of the message data"
			                   : "%s sent a reply when none was due",
			               target_host(c));
			return;
		}
		size_t len = evbuffer_get_length(in);
		if (len > 4096)
			len = 4096;
		const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
		size_t used = 0;
		struct smtp_reply r;
		enum smtp_reply_status st = smtp_reply_feed(&c->rp, p, len, &used, &r);
		evbuffer_drain(in, used);
		if (st == SMTP_REPLY_BAD) {
			protocol_error(c, "%s sent a malformed reply", target_host(c));
			return;
		}
		if (st == SMTP_REPLY_MORE)
			continue;
		if (c->st != RC_QUIT) {
			c->awaiting--;
			if (c->awaiting == 0 && evbuffer_get_length(in) > 0) {
				protocol_error(c,
				               "%s sent more replies than commands (%d and more)",
				               target_host(c), r.code);
				return;
			}
			/* The next pipelined reply gets its own full wait (this one
			 * is still at the head of the expect table); while the
			 * message data goes out, the data phase's runs. */
			if (c->awaiting > 0) {
				if (!c->body_pending)
					wait_next_reply(c, 1);
			} else {
				wait_none(c);
			}
		}
		handle_reply(c, &r);
		if (c->dead)
			return; /* the step's end frees it */
		/* A connection on the wire always waits for something, by a deadline. */
		TERN_BUG_ON(c->bev && c->deadline == 0);
		if (c->bev != bev)
			return; /* a new connection or a TLS layer took over */
	}
}

/* One step: every reply in, answered, and what the answers send leaves at
 * once (step_end). */
static void on_read(struct bufferevent *bev, void *arg)
{
	struct rconn *c = arg;
	bool outer = step_begin(c);
	read_replies(c, bev);
	if (outer)
		step_end(c);
}

/*
 * Reads on a plain socket, once connected: one recv per readable event
 * straight into the bufferevent's input (wire_recv, smtp/wire_in.h), where
 * libevent would ask FIONREAD before each read; then on_read as before. The
 * end of the stream and errors go to on_event as libevent reports them.
 */

static void on_sock_readable(evutil_socket_t fd, short what, void *arg)
{
	struct rconn *c = arg;
	if (TERN_BUG_ON(!c->bev)) /* close_bev frees this event */
		return;
	/* a pipelined burst of replies: 100 RCPTs' answers are about 2 KiB */
	ssize_t r = wire_recv(fd, bufferevent_get_input(c->bev), 4096);
	if (r > 0) {
		on_read(c->bev, c);
		return;
	}
	if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	on_event(c->bev, (short)(BEV_EVENT_READING | (r == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR)),
	         c);
}

/* A plain connection is up: our read event takes over from the
 * bufferevent's (added first, so the fd's epoll entry does not change).
 * Without memory for it, libevent goes on reading as before. */
static void own_reads(struct rconn *c)
{
	evutil_socket_t fd = bufferevent_getfd(c->bev);
	if (c->rd_ev || fd < 0)
		return;
	c->rd_ev = event_new(worker_base(c->w), fd, EV_READ | EV_PERSIST, on_sock_readable, c);
	if (!c->rd_ev)
		return;
	if (event_add(c->rd_ev, NULL) != 0) {
		event_free(c->rd_ev);
		c->rd_ev = NULL;
		return;
	}
	bufferevent_disable(c->bev, EV_READ);
}

/* STARTTLS: the TLS layer reads through the bufferevent again. */
static void give_reads_back(struct rconn *c)
{
	if (!c->rd_ev)
		return;
	bufferevent_enable(c->bev, EV_READ);
	event_free(c->rd_ev);
	c->rd_ev = NULL;
}

/* Words for what the connection was waiting for (error texts). */
static const char *waiting_for(const struct rconn *c)
{
	switch (c->st) {
	case RC_GREETING:
		return "the greeting";
	case RC_EHLO:
		return "the reply to EHLO";
	case RC_HELO:
		return "the reply to HELO";
	case RC_STARTTLS:
		return "the reply to STARTTLS";
	case RC_AUTH:
	case RC_AUTH_LOGIN_USER:
	case RC_AUTH_LOGIN_PASS:
		return "the reply to AUTH";
	case RC_TX:
		if (c->body_pending)
			return "the peer to take the message data";
		if (bdat_due(c, 0))
			return "the reply to the end of the message data (BDAT LAST)";
		if (c->i_expect < c->n_expect)
			return c->expect[c->i_expect] == EX_MAIL   ? "the reply to MAIL FROM"
			       : c->expect[c->i_expect] == EX_RCPT ? "the reply to RCPT TO"
			                                           : "the reply to DATA";
		return "a reply";
	case RC_DOT:
		return c->body_pending ? "the peer to take the message data"
		                       : "the reply to the end of the message data";
	case RC_RSET:
		return "the reply to RSET";
	case RC_QUIT:
		return "the reply to QUIT";
	case RC_LOAD:
		return "the message to be read back from the spool";
	case RC_IDLE:
	case RC_NONE:
	case RC_DNS:
	case RC_CONNECT:
	case RC_TLS_HANDSHAKE:
		break;
	}
	return "the peer";
}

/*
 * The connection failed: closed, broken, or a deadline passed (timeout).
 * tls_err: OpenSSL's words for a failed handshake, or "". Before any
 * transaction the next address is tried (or, after a failed opportunistic
 * handshake, the same one in clear); after, the job waits for its retry.
 */
static void conn_failed(struct rconn *c, short what, const char *tls_err)
{
	const char *host = target_host(c);
	bool timeout = what & BEV_EVENT_TIMEOUT;
	char q[700];
	if (c->st == RC_IDLE) {
		idle_over(c, timeout);
		return;
	}
	if (c->st == RC_QUIT) {
		close_bev(c);
		rconn_end(c);
		return;
	}
	if (c->st == RC_TLS_HANDSHAKE) {
		char ebuf[300];
		metric_inc_l2(M_TLS_HANDSHAKES, "outbound", "failed");
		if (timeout)
			snprintf(ebuf, sizeof(ebuf), "timed out after %us", c->wait_secs);
		else
			snprintf(ebuf, sizeof(ebuf), "%s",
			         tls_err[0] ? tls_err : "handshake failed");
		if (tlsp_required(c->level)) {
			tls_required_failed(c, "4.7.5", "the TLS handshake with %s failed (%s)",
			                    host, ebuf);
			return;
		}
		log_warn("event=tls_failed id=%s relay=%s reason=%s action=retry-clear",
		         c->job ? c->job->id : "-", host,
		         log_quote(ebuf, strlen(ebuf), q, sizeof(q)));
		abort_bev(c);
		rconn_set_error(c, false, "4.7.5", "TLS handshake with %s failed: %s", host, ebuf);
		c->tls_disabled = true; /* same target again, in clear */
		rconn_next_target(c);
		return;
	}
	bool in_tx = c->st == RC_TX || c->st == RC_DOT || c->st == RC_RSET || c->st == RC_AUTH ||
	             c->st == RC_AUTH_LOGIN_PASS || c->st == RC_AUTH_LOGIN_USER;
	if (c->st == RC_CONNECT)
		rconn_set_error(c, false, "4.4.1", "connect to %s: %s", host,
		                timeout ? "timed out" : strerror(EVUTIL_SOCKET_ERROR()));
	else if (timeout && c->body_pending)
		rconn_set_error(
		    c, false, "4.4.2",
		    "timeout: %s did not take the message data in time (under %.0f bytes/s)", host,
		    DATA_MIN_RATE);
	else if (timeout)
		rconn_set_error(c, false, "4.4.2", "timeout: %s did not send %s within %us%s", host,
		                waiting_for(c), c->wait_secs,
		                in_tx ? " (during the transaction)" : "");
	else
		rconn_set_error(c, false, "4.4.2", "%s with %s while waiting for %s%s",
		                (what & BEV_EVENT_EOF) ? "connection closed" : "connection error",
		                host, waiting_for(c), in_tx ? " (during the transaction)" : "");
	log_info("event=connection_failed id=%s relay=%s state=%s reason=%s",
	         c->job ? c->job->id : "-", host, rc_state_name[c->st],
	         log_quote(c->last_error, strlen(c->last_error), q, sizeof(q)));
	abort_bev(c);
	if (in_tx || c->greeted_ok) {
		rconn_job_finish(c);
		rconn_end(c);
		return;
	}
	c->cur++;
	c->tls_disabled = false;
	rconn_next_target(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct rconn *c = arg;
	if (what & BEV_EVENT_CONNECTED) {
		if (c->st == RC_TLS_HANDSHAKE) {
			char d[600], qh[DNS_NAME_MAX * 4 + 8];
			const char *h = c->targets[c->cur].host; /* TLS: the log words */
			SSL *ssl = bufferevent_openssl_get_ssl(bev);
			const char *vw = tlsp_verify_word(ssl);
			metric_inc_l2(M_TLS_HANDSHAKES, "outbound", "ok");
			log_info("event=tls id=%s relay=%s %s tls_verify=%s level=%s",
			         c->job ? c->job->id : "-", log_quote(h, strlen(h), qh, sizeof(qh)),
			         tls_describe(ssl, d, sizeof(d)), vw, conf_tls_name(c->level));
			if (!tlsp_channel_ok(ssl, c->level)) {
				tls_required_failed(c, "4.7.5",
				                    "the certificate of %s was not verified", h);
				return;
			}
			c->tls_verified = strcmp(vw, "untrusted") != 0;
			if (!c->tls_verified) {
				char w[300], ww[340];
				tlsp_failure_words(ssl, h, c->port, "", w, sizeof(w));
				snprintf(ww, sizeof(ww), "certificate not verified (%s)", w);
				sts_testing_note(c, ww);
			}
			c->tls_active = true;
			smtp_reply_init(&c->rp);
			if (c->implicit_tls) {
				/* smtps://: the server greets inside TLS (RFC 8314 §3) */
				c->implicit_tls = false;
				rconn_enter_state(c, RC_GREETING);
				c->awaiting = 1;
				wait_for(c, c->conf->delivery.command_timeout);
				return;
			}
			send_ehlo(c);
			return;
		}
		if (c->route && c->route->implicit_tls && !c->tls_active && !c->tls_disabled) {
			/* smtps:// (RFC 8314): TLS from the first byte, never plaintext */
			if (!c->r->tls) {
				tls_required_failed(
				    c, "4.7.5",
				    "no TLS client context for smtps:// (see the log at start)");
				return;
			}
			c->implicit_tls = true;
			start_tls(c);
			return;
		}
		own_reads(c);
		rconn_enter_state(c, RC_GREETING);
		c->awaiting = 1; /* the greeting */
		wait_for(c, c->conf->delivery.command_timeout);
		return;
	}
	char ebuf[300] = "";
	if (c->st == RC_TLS_HANDSHAKE) {
		char oe[256] = "";
		unsigned long e = bufferevent_get_openssl_error(bev);
		if (e)
			ERR_error_string_n(e, oe, sizeof(oe));
		/* A failed verification says which check failed, in words. */
		tlsp_failure_words(bufferevent_openssl_get_ssl(bev), target_host(c), c->port, oe,
		                   ebuf, sizeof(ebuf));
	}
	conn_failed(c, what, ebuf);
}

/* A wait's deadline passed (see wait_for). */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct rconn *c = arg;
	c->deadline = 0;
	if (TERN_BUG_ON(!c->bev))
		return;
	if (c->pump_err) { /* SPILL: set by on_wire_drained, which could not end it */
		pump_failed(c);
		return;
	}
	conn_failed(c, BEV_EVENT_TIMEOUT, "");
}

/* Is this target one of our own listeners? */
bool rconn_is_self(const struct rconn *c, const struct target *t)
{
	if (c->conf->hostname && tern_ascii_ieq(t->host, c->conf->hostname))
		return true;
	for (size_t i = 0; i < c->conf->n_listeners; i++) {
		struct sockaddr_storage ls;
		unsigned llen;
		if (!conf_parse_address(c->conf->listeners[i].address, &ls, &llen))
			continue;
		if (ls.ss_family != t->ss.ss_family)
			continue;
		if (ls.ss_family == AF_INET) {
			const struct sockaddr_in *a = (const struct sockaddr_in *)&ls;
			const struct sockaddr_in *b = (const struct sockaddr_in *)&t->ss;
			if (a->sin_port == b->sin_port &&
			    (a->sin_addr.s_addr == b->sin_addr.s_addr ||
			     a->sin_addr.s_addr == htonl(INADDR_ANY)))
				return true;
		} else {
			const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ls;
			const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)&t->ss;
			if (a->sin6_port == b->sin6_port &&
			    (memcmp(&a->sin6_addr, &b->sin6_addr, 16) == 0 ||
			     IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr)))
				return true;
		}
	}
	return false;
}

/*
 * With an IP pool: a socket bound to one of the pool's addresses of the
 * target's family (port 0), in *fd, and that address's EHLO name. Without a
 * pool *fd stays -1 (the kernel picks the source). false: no address of the
 * pool can be used for this target (the error is set; try the next one).
 */
static bool bind_source(struct rconn *c, const struct target *t, int *fd)
{
	c->ehlo_name = NULL;
	c->src_addr[0] = '\0';
	const struct conf_pool *pool =
	    c->dest && c->dest->pool[0] ? pool_find(&c->conf->shaping, c->dest->pool) : NULL;
	if (!pool)
		return true;
	struct sockaddr_storage ss;
	socklen_t len = 0;
	const char *ehlo = NULL;
	int family = t->ss.ss_family;
	int rc = pool_pick(c->conf, pool, family, c->reserved, &ss, &len, &ehlo, c->src_addr,
	                   sizeof(c->src_addr));
	if (rc != TERN_OK) {
		rconn_set_error(c, false, rc == TERN_ELIMIT ? "4.7.0" : "4.4.1",
		                rc == TERN_ELIMIT
		                    ? "every address of IP pool %s is at its warm-up cap"
		                    : "IP pool %s has no %s address for %s",
		                pool->name, family == AF_INET6 ? "IPv6" : "IPv4", t->host);
		c->src_addr[0] = '\0';
		return false;
	}
	int s = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s < 0 || bind(s, (struct sockaddr *)&ss, len) != 0) {
		rconn_set_error(c, false, "4.4.1",
		                "cannot bind source address %s of IP pool %s: %s", c->src_addr,
		                pool->name, strerror(errno));
		if (s >= 0)
			close(s);
		c->src_addr[0] = '\0';
		return false;
	}
	log_info("event=source_bound id=%s pool=%s source=%s ehlo=%s", c->job ? c->job->id : "-",
	         pool->name, c->src_addr, ehlo ? ehlo : c->conf->hostname);
	c->ehlo_name = ehlo;
	*fd = s;
	return true;
}

/*
 * Every write of ours is whole already (a step's sends leave in one
 * sendmsg, remote_wire.h), so Nagle's algorithm only ever holds back a
 * write that follows one still unacknowledged: the commands of a next
 * message sent on their own behind an end of data (load_done_ahead) waited
 * for a delayed acknowledgement, about 40 ms each.
 */
static void no_delay(struct rconn *c)
{
	int one = 1;
	evutil_socket_t fd = bufferevent_getfd(c->bev);
	if (fd >= 0)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void rconn_next_target(struct rconn *c)
{
	while (c->cur < c->n_targets) {
		struct target *t = &c->targets[c->cur];
		const struct host_addrs *ha = target_hostinfo(c);
		if (ha && ha->dane == TLSP_DANE_FAILED) {
			rconn_set_error(
			    c, false, "4.7.5",
			    "TLS required but the TLSA records of _%u._tcp.%s could not be "
			    "validated (DNSSEC bogus or lookup failed)",
			    (unsigned)c->port, t->host);
			c->cur++;
			continue;
		}
		c->level = target_level(c);
		c->tls_verified = false;
		int fd = -1;
		if (!bind_source(c, t, &fd)) {
			c->cur++;
			continue;
		}
		c->bev = bufferevent_socket_new(worker_base(c->w), fd, BEV_OPT_CLOSE_ON_FREE);
		if (!c->bev) {
			if (fd >= 0)
				close(fd);
			rconn_set_error(c, false, "4.3.0", "out of memory");
			break;
		}
		smtp_reply_init(&c->rp);
		memset(&c->caps, 0, sizeof(c->caps));
		c->wire_out = bufferevent_get_output(c->bev);
		if (!evbuffer_add_cb(c->wire_out, on_wire_drained, c)) {
			close_bev(c);
			rconn_set_error(c, false, "4.3.0", "out of memory");
			break;
		}
		bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
		bufferevent_enable(c->bev, EV_READ | EV_WRITE);
		rconn_enter_state(c, RC_CONNECT);
		wait_for(c, c->conf->delivery.connect_timeout);
		if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&t->ss, (int)t->len) ==
		    0) {
			no_delay(c);
			return;
		}
		rconn_set_error(c, false, "4.4.1", "connect to %s: %s", t->host, strerror(errno));
		close_bev(c);
		c->cur++;
	}
	/* Every address failed: this job and every job queued behind it would
	 * fail the same way now, so they all wait for their next retry. */
	if (!c->last_error[0])
		rconn_set_error(c, false, "4.4.1", "no address to connect to for %s", c->domain);
	char q[700]; /* the last error may hold a server's words */
	log_info("event=destination_unreachable id=%s domain=%s reason=%s",
	         c->job ? c->job->id : "-", c->domain,
	         log_quote(c->last_error, strlen(c->last_error), q, sizeof(q)));
	rconn_job_finish(c);
	struct remote_job *nj;
	while ((nj = remote_dest_pop(c->r, c->dest, false)) != NULL) {
		c->job = nj;
		rconn_job_finish(c);
	}
	rconn_end(c);
}

/* ------------------------------------------------------------ lifecycle */

/*
 * Connection reuse. A destination's jobs arrive one at a time while mail
 * comes in, so a connection that QUIT whenever its queue was empty carried
 * about one message: a TCP handshake, a greeting, EHLO and QUIT for every
 * relayed message. Instead, a connection with nothing to carry is parked
 * (RC_IDLE, on dest->idle, keeping its slot) for up to IDLE_KEEP_SEC, and
 * remote_submit hands the next job of its destination to it first.
 */
#define IDLE_KEEP_SEC 2

enum park { PARK_NO, PARK_DONE, PARK_RETRY };

/* After a transaction, with the destination's queue found empty (its slot
 * was given back): PARK_DONE parked, the slot taken again; PARK_RETRY a job
 * came meanwhile, the slot is taken again for it; PARK_NO not to be kept. */
static enum park conn_park(struct rconn *c)
{
	struct remote *r = c->r;
	struct dest *d = c->dest;
	if (!d || !c->bev || !c->greeted_ok || c->awaiting || c->body_pending)
		return PARK_NO;
	struct shape_limits l;
	shaping_limits(c->conf, d->domain, &l);
	if (c->n_msgs >= l.per_connection)
		return PARK_NO;
	enum park res = PARK_NO;
	pthread_mutex_lock(&r->lock);
	if (!r->stopping && d->active < l.connections) {
		d->active++;
		if (d->head) {
			res = PARK_RETRY;
		} else {
			c->parked = true;
			c->idle_next = d->idle;
			d->idle = c;
			res = PARK_DONE;
		}
	}
	pthread_mutex_unlock(&r->lock);
	if (res == PARK_DONE) {
		rconn_enter_state(c, RC_IDLE);
		wait_for(c, IDLE_KEEP_SEC);
	}
	return res;
}

/* Under r->lock: takes c off its destination's idle list. */
static void idle_unlink(struct rconn *c)
{
	for (struct rconn **pp = &c->dest->idle; *pp; pp = &(*pp)->idle_next) {
		if (*pp == c) {
			*pp = c->idle_next;
			break;
		}
	}
	c->idle_next = NULL;
	c->parked = false;
}

/* Under r->lock: the first parked connection of d, taken off the list, or
 * NULL. The caller posts conn_unpark for it. */
static struct rconn *idle_take(struct dest *d)
{
	struct rconn *c = d->idle;
	if (c)
		idle_unlink(c);
	return c;
}

/*
 * A parked connection's wait ended (timeout), or the peer spoke or closed
 * while it was parked. Still parked: it leaves the list and gives its slot
 * back, QUITting politely after a timeout. Already taken (conn_unpark is on
 * its way): a timeout just waits on; a closed peer leaves the connection
 * without its socket, and conn_unpark hands the job on to a new one.
 */
static void idle_over(struct rconn *c, bool timeout)
{
	struct remote *r = c->r;
	pthread_mutex_lock(&r->lock);
	bool parked = c->parked;
	if (parked) {
		idle_unlink(c);
		c->dest->active--;
	}
	pthread_mutex_unlock(&r->lock);
	if (!parked) {
		if (timeout && c->bev)
			wait_for(c, 1);
		else
			close_bev(c);
		return;
	}
	c->dest = NULL; /* its slot is given back */
	if (timeout && c->bev) {
		rconn_enter_state(c, RC_QUIT);
		send_line(c, "QUIT");
		wait_for(c, QUIT_TIMEOUT_SEC);
		return;
	}
	close_bev(c);
	rconn_end(c);
}

/* On c's worker, once remote_submit or remote_stop took c off the idle list. */
static void conn_unpark(void *arg)
{
	struct rconn *c = arg;
	if (TERN_BUG_ON(c->st != RC_IDLE || c->parked))
		return;
	bool outer = step_begin(c);
	wait_none(c);
	if (!c->bev)
		rconn_end(c); /* the peer left meanwhile: the slot goes to a new connection */
	else
		conn_start_job(c);
	if (outer)
		step_end(c);
}

/* The connection moves to its destination's next job, or QUITs. */
static void conn_start_job(struct rconn *c)
{
	rconn_job_finish(c); /* never drop a job unrecorded (a no-op without one) */
	bool park_tried = false;
	for (;;) {
		bool reconnect = false;
		struct remote_job *j = dest_pop_shaped(c, &reconnect);
		if (!j && !reconnect && !park_tried) {
			park_tried = true; /* once: a job held back by shaping stays queued */
			enum park pk = conn_park(c);
			if (pk == PARK_DONE)
				return;
			if (pk == PARK_RETRY)
				continue;
		}
		if (!j) {
			/* Our slot is released, or kept for the next connection
			 * (shaping's per_connection: rconn_end passes it on). */
			if (!reconnect)
				c->dest = NULL;
			if (c->bev) {
				rconn_enter_state(c, RC_QUIT);
				send_line(c, "QUIT");
				wait_for(c, QUIT_TIMEOUT_SEC);
			} else {
				rconn_end(c);
			}
			return;
		}
		c->job = j;
		if (begin_job(c))
			return;
		/* Does not fit this peer: bounced here; a loop, not recursion,
		 * so that a long queue of such jobs cannot exhaust the stack. */
		rconn_job_finish(c);
	}
}

static void conn_free(struct rconn *c)
{
	if (c->in_step) {
		/* A step (on_read's loop over the input, ...) is under way. */
		close_bev(c);
		c->dead = true;
		return;
	}
	if (TERN_BUG_ON(c->next_job)) /* rconn_end requeues it */
		next_job_requeue(c, REQUEUE_CONN_ENDED);
	pthread_mutex_lock(&c->r->lock);
	if (c->prev)
		c->prev->next = c->next;
	else
		c->r->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	pthread_mutex_unlock(&c->r->lock);
	close_bev(c);
	if (c->timer)
		event_free(c->timer);
	if (c->sts_job) {
		pthread_mutex_lock(&c->r->lock);
		c->sts_job->c = NULL; /* the job frees itself when done */
		pthread_mutex_unlock(&c->r->lock);
		c->sts_job = NULL;
	}
	if (c->load) {
		pthread_mutex_lock(&c->r->lock);
		c->load->c = NULL; /* likewise */
		pthread_mutex_unlock(&c->r->lock);
		c->load = NULL;
	}
	for (size_t h = 0; h < c->n_hosts; h++) {
		for (size_t i = 0; i < c->hosts[h].n_tlsa; i++)
			free(c->hosts[h].tlsa[i].data);
		free(c->hosts[h].tlsa);
	}
	tbuf_free(&c->converted);
	if (c->chunk)
		evbuffer_free(c->chunk);
	if (c->cork)
		evbuffer_free(c->cork);
	runtime_release(c->rt);
	atomic_fetch_sub(&c->r->active, 1);
	free(c);
}

static void conn_spawn(struct remote *r, struct dest *d);

/* The connection is done. If its destination still has work, another
 * connection takes over (the slot is passed on, not released). */
void rconn_end(struct rconn *c)
{
	struct remote *r = c->r;
	struct dest *d = c->dest;
	if (c->job)
		rconn_job_finish(c);
	next_job_requeue(c, REQUEUE_CONN_ENDED); /* PIPE-NEXT: then `more` below counts it */
	if (d) {
		pthread_mutex_lock(&r->lock);
		bool more = d->head != NULL;
		if (!more)
			d->active--;
		pthread_mutex_unlock(&r->lock);
		if (more) {
			conn_free(c);
			conn_spawn(r, d);
			return;
		}
	}
	conn_free(c);
}

static void conn_begin(void *arg)
{
	struct rconn *c = arg;
	/* After remote_stop remote_dest_pop takes nothing (and gives up the slot): the
	 * connection goes without resolving; the jobs stay queued, unrecorded. */
	bool reconnect = false; /* never: no message was carried yet */
	c->job = dest_pop_shaped(c, &reconnect);
	if (!c->job) {
		c->dest = NULL;
		conn_free(c);
		return;
	}
	tern_strlcpy(c->domain, c->job->domain, sizeof(c->domain));
	c->timer = evtimer_new(worker_base(c->w), on_deadline, c);
	if (!c->timer) {
		rconn_set_error(c, false, "4.3.0", "out of memory");
		rconn_end(c); /* finishes the job; the next connection takes the rest */
		return;
	}
	c->route = conf_find_route(c->conf, c->domain);
	rconn_resolve(c);
}

/* Starts a connection for d on the next worker; the caller holds a slot. */
static void conn_spawn(struct remote *r, struct dest *d)
{
	struct rconn *c = calloc(1, sizeof(*c));
	struct tern_runtime *rt = runtime_acquire();
	if (!c || !rt) {
		free(c);
		runtime_release(rt);
		pthread_mutex_lock(&r->lock);
		d->active--;
		pthread_mutex_unlock(&r->lock);
		log_error("event=remote_spawn_failed reason=out-of-memory");
		return;
	}
	pthread_mutex_lock(&r->lock);
	if (r->stopping) {
		/* No new connection after remote_stop: the slot goes back and the
		 * destination's jobs stay queued until remote_free frees them
		 * without a result (they are still in the spool). */
		d->active--;
		pthread_mutex_unlock(&r->lock);
		free(c);
		runtime_release(rt);
		return;
	}
	size_t wi = r->rr++ % r->n_workers;
	c->next = r->conns;
	if (c->next)
		c->next->prev = c;
	r->conns = c;
	pthread_mutex_unlock(&r->lock);
	c->r = r;
	c->w = r->workers[wi];
	c->res = r->resolvers[wi];
	c->dest = d;
	c->rt = rt;
	c->conf = rt->conf;
	atomic_fetch_add(&r->active, 1);
	if (worker_post(c->w, conn_begin, c) != 0) {
		conn_free(c);
		pthread_mutex_lock(&r->lock);
		d->active--;
		pthread_mutex_unlock(&r->lock);
	}
}

/* A destination queue per next hop and IP pool: a connection binds one
 * source address, so jobs of different pools never share one. */
static void dest_key(const struct tern_config *conf, const char *domain, const char *pool,
                     char *out, size_t outlen)
{
	const struct conf_route *rt = conf_find_route(conf, domain);
	if (rt)
		snprintf(out, outlen, "route:%s:%u|%s", rt->host, rt->port, pool ? pool : "");
	else
		snprintf(out, outlen, "mx:%s|%s", domain, pool ? pool : "");
}

/* The wake timer of a destination whose jobs wait for the per-minute rate or
 * a warm-up cap: starts a connection if a slot is free (it takes its own
 * token in conn_begin and re-arms this timer when there is still none). */
static void dest_wake(evutil_socket_t fd, short what, void *arg)
{
	struct dest *d = arg;
	struct remote *r = d->r;
	struct tern_runtime *rt = runtime_acquire();
	if (!rt)
		return;
	struct shape_limits l;
	shaping_limits(rt->conf, d->domain, &l);
	runtime_release(rt);
	pthread_mutex_lock(&r->lock);
	d->wake_armed = false;
	bool spawn = d->head && !r->stopping && d->active < l.connections;
	if (spawn)
		d->active++;
	pthread_mutex_unlock(&r->lock);
	if (spawn)
		conn_spawn(r, d);
}

void remote_submit(struct remote *r, struct remote_job *job)
{
	struct tern_runtime *rt = runtime_acquire();
	/* The pool: by the message's X-Tern-Tag (removed here, it is ours, not
	 * the recipient's), else by the sender's domain, else the default. */
	char tag[POOL_TAG_MAX], key[400];
	job->len = pool_take_tag(job->data, job->len, tag, sizeof(tag));
	job_hold_or_drop(r, job);
	char pool[65] = "";
	/* an API key's pool (pool_select.keys) overrides the rest (pools.h) */
	const char *pname = job->api_key ? pool_for_key(&rt->conf->shaping, job->api_key) : NULL;
	if (!pname)
		pname = pool_select(&rt->conf->shaping, job->sender, tag);
	tern_strlcpy(pool, pname ? pname : "", sizeof(pool));
	dest_key(rt->conf, job->domain, pool, key, sizeof(key));
	struct shape_limits lim;
	shaping_limits(rt->conf, job->domain, &lim);
	unsigned max = lim.connections;
	runtime_release(rt);

	pthread_mutex_lock(&r->lock);
	if (r->stopping) {
		/* Shutting down: the message stays in the spool, tried after the
		 * restart; no result is reported. */
		pthread_mutex_unlock(&r->lock);
		log_debug("event=remote_submit_refused id=%s reason=stopping", job->id);
		remote_job_free(job);
		return;
	}
	struct dest *d = r->dests;
	while (d && strcmp(d->key, key) != 0)
		d = d->next;
	if (!d) {
		d = calloc(1, sizeof(*d));
		if (!d) {
			pthread_mutex_unlock(&r->lock);
			log_error("event=remote_submit_failed id=%s reason=out-of-memory", job->id);
			job_give_up(job, "4.3.0", "out of memory");
			return;
		}
		tern_strlcpy(d->key, key, sizeof(d->key));
		tern_strlcpy(d->domain, job->domain, sizeof(d->domain));
		tern_strlcpy(d->pool, pool, sizeof(d->pool));
		d->r = r;
		d->wake = evtimer_new(worker_base(r->workers[0]), dest_wake, d);
		/* No timer (out of memory): waiting jobs start with the next
		 * submission to this destination instead. */
		d->next = r->dests;
		r->dests = d;
	}
	job->next = NULL;
	if (d->tail)
		d->tail->next = job;
	else
		d->head = job;
	d->tail = job;
	/* A parked connection to the same next hop takes it first. */
	struct rconn *idle = idle_take(d);
	bool spawn = !idle && d->active < max;
	if (spawn)
		d->active++;
	char waiting[sizeof(job->id)] = ""; /* copied: once unlocked, a connection may take it */
	if (!idle && !spawn)
		memcpy(waiting, job->id, sizeof(waiting));
	pthread_mutex_unlock(&r->lock);
	if (waiting[0])
		log_debug("event=remote_queued id=%s dest=%s reason=\"every connection busy\"",
		          waiting, key);
	if (idle && worker_post(idle->w, conn_unpark, idle) != 0) {
		/* Cannot reach its worker (out of memory): it stays parked and
		 * its wait ends it; a new connection takes the job if it can. */
		pthread_mutex_lock(&r->lock);
		idle->parked = true;
		idle->idle_next = d->idle;
		d->idle = idle;
		spawn = d->active < max;
		if (spawn)
			d->active++;
		pthread_mutex_unlock(&r->lock);
	}
	if (spawn)
		conn_spawn(r, d);
}

void remote_set_body_source(struct remote *r, struct mem_budget *budget, remote_load_fn load,
                            void *arg)
{
	r->budget = budget;
	r->load = load;
	r->load_arg = arg;
}

void remote_stop(struct remote *r)
{
	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	r->stopping = true;
	/* Parked connections QUIT now rather than at the end of their wait. */
	struct rconn *wake = NULL;
	for (struct dest *d = r->dests; d; d = d->next) {
		struct rconn *c;
		while ((c = idle_take(d)) != NULL) {
			c->idle_next = wake;
			wake = c;
		}
	}
	pthread_mutex_unlock(&r->lock);
	while (wake) {
		struct rconn *c = wake;
		wake = c->idle_next;
		c->idle_next = NULL;
		/* A stopped worker runs nothing more: remote_free frees c. */
		(void)worker_post(c->w, conn_unpark, c);
	}
}

size_t remote_active(struct remote *r)
{
	return atomic_load(&r->active);
}

struct remote *remote_new(struct worker **workers, size_t n_workers, char *err, size_t errlen)
{
	struct tern_runtime *rt = runtime_acquire();
	if (!rt) {
		snprintf(err, errlen, "no configuration loaded");
		return NULL;
	}
	struct remote *r = calloc(1, sizeof(*r));
	if (!r)
		goto fail;
	pthread_mutex_init(&r->lock, NULL);
	r->workers = workers;
	r->n_workers = n_workers;
	r->resolvers = calloc(n_workers, sizeof(*r->resolvers));
	if (!r->resolvers)
		goto fail;
	const struct conf_dns *dc = &rt->conf->dns;
	for (size_t i = 0; i < n_workers; i++) {
		r->resolvers[i] =
		    dns_resolver_new(worker_base(workers[i]), (const char *const *)dc->forward,
		                     dc->n_forward, dc->trust_anchor_file, err, errlen);
		if (!r->resolvers[i])
			goto fail;
	}
	/* One verifying context for every level (tlspolicy.c relaxes it per
	 * connection below verify): trust anchors from delivery.ca_file or the
	 * system store, DANE ready. Without it STARTTLS is skipped where
	 * opportunistic and mail waits where TLS is required. */
	char terr[512];
	const char *ca = rt->conf->delivery.ca_file;
	if (!(r->tls = tls_client_ctx_new(ca, true, terr, sizeof(terr)))) {
		if (ca) {
			snprintf(err, errlen, "delivery.ca_file: %s", terr);
			goto fail;
		}
		log_warn("event=tls_unavailable direction=outbound reason=\"%s\"", terr);
	} else if (SSL_CTX_dane_enable(r->tls) <= 0) {
		log_warn("event=dane_unavailable direction=outbound reason=\"OpenSSL refused\"");
	}
	/* MTA-STS: the policy fetch trusts what the SMTP side trusts. */
	if (ca) {
		int en = 0;
		if (tern_file_read(ca, 16u << 20, &r->ca_pem, &r->ca_len, &en) != TERN_OK) {
			snprintf(err, errlen, "delivery.ca_file: %s", strerror(en));
			goto fail;
		}
	}
	r->io_pool = pool_new(2); /* SPILL: NULL is fine: spill files are read on the loop */
	if (rt->conf->delivery.mta_sts) {
		if (mtasts_global_init() != TERN_OK || !(r->sts_pool = pool_new(2)))
			log_warn("event=mta_sts_unavailable reason=\"cannot start the fetch "
			         "threads\"");
	}
	runtime_release(rt);
	return r;
fail:
	runtime_release(rt);
	if (!err[0])
		snprintf(err, errlen, "out of memory");
	remote_free(r);
	return NULL;
}

void remote_free(struct remote *r)
{
	if (!r)
		return;
	/* Connections still open when the workers stopped: their jobs stay in
	 * the spool and are tried again after the restart. */
	while (r->conns) {
		struct rconn *c = r->conns;
		remote_job_free(c->job);
		remote_job_free(c->next_job);
		c->job = c->next_job = NULL;
		conn_free(c);
	}
	for (size_t i = 0; r->resolvers && i < r->n_workers; i++)
		dns_resolver_free(r->resolvers[i]);
	free(r->resolvers);
	struct dest *d = r->dests;
	while (d) {
		struct dest *next = d->next;
		struct remote_job *j = d->head;
		while (j) {
			struct remote_job *nj = j->next;
			remote_job_free(j);
			j = nj;
		}
		if (d->wake)
			event_free(d->wake);
		free(d);
		d = next;
	}
	/* After the connections (their jobs now point nowhere): wait for the
	 * fetches, then free the jobs whose completion never ran. A read ahead
	 * under way frees its reader itself (remote_stream.h). */
	pool_free(r->io_pool);
	pool_free(r->sts_pool);
	/* Their completions went to the stopped workers: run them now (each
	 * finds its connection gone and frees itself), so none is left posted
	 * to run after this; then free the jobs whose completion never came. */
	for (size_t i = 0; i < r->n_workers; i++)
		worker_run_pending(r->workers[i]);
	while (r->loads) {
		struct body_load *l = r->loads;
		r->loads = l->next;
		load_free(l);
	}
	while (r->sts_jobs) {
		struct sts_job *j = r->sts_jobs;
		r->sts_jobs = j->next;
		free(j);
	}
	free(r->ca_pem);
	if (r->tls)
		SSL_CTX_free(r->tls);
	pthread_mutex_destroy(&r->lock);
	free(r);
}
