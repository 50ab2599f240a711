/*
 * server.c — the POP3 server session (RFC 1939): one explicit state
 * machine per connection, on the worker thread that accepted it.
 *
 * Owns: connection limits, the AUTHORIZATION -> TRANSACTION -> UPDATE
 * states, USER/PASS and SASL AUTH (auth/auth.h's engine and brute-force
 * throttle), STLS and implicit TLS, the replies with RFC 2449 response
 * codes, and streaming RETR/TOP and long LIST/UIDL answers at the pace the
 * client reads them.
 *
 * Must never: block the loop (crypt, every Maildir operation and every
 * message read run on this server's thread pool; at most one job per
 * session, and no command is read while it runs), delete anything before
 * QUIT (a dropped connection keeps every message), answer QUIT's "+OK"
 * before the deletions are durable, or read input pipelined after STLS
 * (RFC 2595 §4, the CVE-2011-0411 family): it is discarded.
 *
 * SECURITY: this file reads untrusted network input. Every line is bounded
 * (POP3_LINE_MAX) before the pure, fuzzed parser (parse.c) sees it;
 * passwords are wiped once checked and never logged; a client names
 * messages by number only (mailbox.c owns the file names); memory per
 * session is bounded: replies stop being produced past OUT_HIGH_WATERMARK
 * unread bytes and a message is read 64 KiB at a time.
 */
#include "pop3/pop3.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "auth/auth.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/log.h"
#include "core/peer.h"
#include "core/loop.h"
#include "core/runtime.h"
#include "deliver/deliver.h"
#include "tls/tls.h"
#include "tls/tls_close.h"

#define MAX_LISTENERS_PER_WORKER 16
#define MAX_WORKERS 64
#define POOL_THREADS 2
#define READ_HIGH_WATERMARK (64 * 1024)
/* Output backpressure, as in the SMTP server: past OUT_HIGH queued bytes
 * nothing more is produced (no command read, no message chunk read, no
 * listing line) until the client has taken the output down to OUT_LOW. */
#define OUT_HIGH_WATERMARK (64 * 1024)
#define OUT_LOW_WATERMARK (16 * 1024)
#define CHUNK_SIZE (64 * 1024)
/* RFC 1939 §3: an autologout timer of at least 10 minutes. */
#define MIN_IDLE_TIMEOUT 600
/* Messages one session lists; the rest wait for a later session. */
#define MAX_SESSION_MESSAGES 100000
/* Failed logins on one connection before it is closed. */
#define MAX_AUTH_FAILURES 3
/* How often an open mailbox's lock file is touched (stale after 300 s). */
#define LOCK_REFRESH_SECS 60
#define LIST_BATCH 256

enum pstate {
	PS_AUTHORIZATION, /* USER/PASS, AUTH, STLS, CAPA, QUIT */
	PS_TRANSACTION,   /* the mailbox is open and locked */
	PS_CLOSING,       /* the final reply is queued; free once it is written */
};

static const char *const pstate_names[] = {"authorization", "transaction", "closing"};

/* What the session's one pool job is doing (J_NONE: none in flight). */
enum job {
	J_NONE,
	J_PASS,      /* users_verify, then the mailbox open */
	J_SASL,      /* sasl_verify */
	J_OPEN,      /* the mailbox open after SASL */
	J_RETR_OPEN, /* opening a message file */
	J_RETR_READ, /* reading and encoding a chunk */
	J_QUIT,      /* the UPDATE state */
	J_TOUCH,     /* refreshing the lock file */
};

struct p3_worker;

struct session {
	struct session *prev, *next; /* on the worker's list */
	struct p3_worker *pw;
	struct bufferevent *bev;
	struct tern_runtime *rt;
	const struct tern_config *conf; /* rt->conf */
	enum pstate state;
	enum job job;
	bool dead;          /* the peer went away while a job was in flight */
	bool shutting_down; /* close once the work in flight is done */
	bool discard_line;  /* skipping the rest of an over-long line */
	bool out_blocked;   /* production stopped until the output drains */
	bool tls_active;
	SSL *starttls; /* set by STLS: the switch happens once the line is consumed */
	uint32_t errors;
	uint32_t auth_failures;
	uint64_t serial;
	char peer[INET6_ADDRSTRLEN + 2];
	struct sockaddr_storage peer_sa;
	char *user;  /* USER's argument (lowercased) until PASS */
	char *login; /* the authenticated identity */
	/* SASL AUTH */
	struct sasl_config sasl_cfg;
	struct sasl_exchange *sasl;
	bool sasl_wait; /* the next line is a SASL response */
	/* A failed login's answer waits for the throttle's delay. */
	struct event *delay_timer;
	bool delay_pending;
	bool close_after_delay;
	/* the job's inputs and outputs */
	char *job_dir;
	char *job_password;
	int job_rc;
	int job_errno;
	enum pop3_open_status job_open;
	size_t job_removed;
	/* TRANSACTION */
	struct pop3_mailbox *mb;
	struct timespec last_touch;
	struct event *refresh_timer;
	/* RETR and TOP */
	bool streaming;
	bool stream_top;
	size_t stream_idx;
	int stream_fd;
	uint64_t stream_off;
	bool stream_eof;
	struct pop3_encoder enc;
	struct tbuf chunk;
	/* LIST and UIDL without an argument */
	enum pop3_verb listing;
	size_t list_next;
	/* counters for the logout line */
	uint32_t n_retr, n_top, n_dele;
	uint64_t retr_bytes;
	struct tls_close tlsc; /* TLS close in progress (tls/tls_close.h) */
};

struct p3_worker {
	struct pop3_server *srv;
	struct worker *w;
	struct session *sessions;
	struct evconnlistener *listeners[MAX_LISTENERS_PER_WORKER];
	bool implicit[MAX_LISTENERS_PER_WORKER];
	size_t n_listeners;
	uint64_t next_serial;
};

struct pop3_server {
	SSL_CTX *tls;
	struct pool *pool;
	struct throttle *throttle;
	bool own_throttle;
	struct p3_worker *workers[MAX_WORKERS];
	size_t n_workers;
	_Atomic size_t n_sessions;
	struct peer_counts *peers; /* connections per client address (max_connections_per_ip) */
	const struct pop3_backend *backend; /* NULL: users' Maildirs */
};

/* ------------------------------------------------------------ helpers */

static unsigned long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000ull + (unsigned long long)ts.tv_nsec / 1000000;
}

static bool is_loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
	if (ss->ss_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
		return IN6_IS_ADDR_LOOPBACK(a) ||
		       (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return false;
}

static void reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void reply(struct session *s, const char *fmt, ...)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	va_list ap;
	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

#define SESS_FMT "sess=p%u.%llu client=%s"
#define SESS_ARGS(s) worker_index((s)->pw->w), (unsigned long long)(s)->serial, (s)->peer

/* Passwords and SASL responses go in the clear without TLS: only allowed
 * with TLS, on loopback, or where no certificate was configured at all. */
static bool plaintext_ok(const struct session *s)
{
	return s->tls_active || !s->pw->srv->tls || is_loopback(&s->peer_sa);
}

static bool stls_offered(const struct session *s)
{
	return s->pw->srv->tls && !s->tls_active && s->state == PS_AUTHORIZATION;
}

/* ------------------------------------------------------------- closing */

static void session_free(struct session *s);
static void process_input(struct session *s);
static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void restore_timeouts(struct session *s);

/* TLS sessions close on their socket (tls/tls_close.h); then the session goes. */
static void tls_closed(void *arg)
{
	session_free(arg);
}

static void on_write_closing(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;
	if (evbuffer_get_length(bufferevent_get_output(bev)) > 0)
		return;
	if (s->tls_active)
		tls_close_begin(&s->tlsc, worker_base(s->pw->w), s->bev, tls_closed, s);
	else
		session_free(s);
}

/* Queues nothing more; frees the session once the output is written. The
 * caller has queued the final reply (so the write callback fires). */
static void session_close_after_flush(struct session *s, const char *reason)
{
	char q[128], u[300];
	const char *who = s->login ? s->login : "";
	log_info("event=pop3_disconnect " SESS_FMT " user=%s reason=%s retr=%u top=%u dele=%u "
	         "bytes=%llu",
	         SESS_ARGS(s), log_quote(who, strlen(who), u, sizeof(u)),
	         log_quote(reason, strlen(reason), q, sizeof(q)), s->n_retr, s->n_top, s->n_dele,
	         (unsigned long long)s->retr_bytes);
	s->state = PS_CLOSING;
	s->out_blocked = false;
	bufferevent_disable(s->bev, EV_READ);
	bufferevent_setcb(s->bev, NULL, on_write_closing, on_event, s);
	bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
	bufferevent_enable(s->bev, EV_WRITE);
	struct timeval tv = {10, 0};
	bufferevent_set_timeouts(s->bev, NULL, &tv);
}

/* Counts a client error; true if the session was closed for too many. */
static bool count_error(struct session *s)
{
	if (++s->errors >= s->conf->limits.max_errors) {
		reply(s, "-ERR Too many errors, closing the connection.");
		session_close_after_flush(s, "too-many-errors");
		return true;
	}
	return false;
}

/* ---------------------------------------------------------------- jobs */

static void job_done(void *arg);

/* Runs work on the pool for s; its completion comes back through
 * job_done on s's worker. While it runs no input is read. */
static void submit(struct session *s, enum job kind, task_fn work)
{
	s->job = kind;
	if (pool_submit(s->pw->srv->pool, work, s->pw->w, job_done, s) != 0) {
		/* Out of memory: run it here once rather than lose the step. */
		work(s);
		job_done(s);
	}
}

/* Touches the lock if it was not touched for a while (pool side). */
static void maybe_touch(struct session *s)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (s->mb && !s->pw->srv->backend &&
	    now.tv_sec - s->last_touch.tv_sec >= LOCK_REFRESH_SECS) {
		pop3_mailbox_touch(s->mb);
		s->last_touch = now;
	}
}

/* The Maildir of a users-file address (what local delivery writes). */
static int mailbox_dir(const struct session *s, const char *login, char **out)
{
	char path[4096], domain[256], local[256];
	const char *at = strrchr(login, '@');
	*out = NULL;
	if (s->pw->srv->backend) {
		/* the backend's mailbox key is the login itself */
		*out = tern_strdup(login);
		return *out ? TERN_OK : TERN_ENOMEM;
	}
	if (!at || at == login || (size_t)(at - login) >= sizeof(local) ||
	    strlen(at + 1) >= sizeof(domain))
		return TERN_EINVAL;
	memcpy(local, login, (size_t)(at - login));
	local[at - login] = '\0';
	tern_strlcpy(domain, at + 1, sizeof(domain));
	int rc = maildir_path(s->conf->data_dir, domain, local, path, sizeof(path));
	if (rc != TERN_OK)
		return rc;
	*out = tern_strdup(path);
	return *out ? TERN_OK : TERN_ENOMEM;
}

static void work_open(struct session *s)
{
	const struct pop3_backend *b = s->pw->srv->backend;
	if (b)
		s->job_open =
		    b->open(b->ctx, s->job_dir, MAX_SESSION_MESSAGES, &s->mb, &s->job_errno);
	else
		s->job_open =
		    pop3_mailbox_open(s->job_dir, MAX_SESSION_MESSAGES, &s->mb, &s->job_errno);
	clock_gettime(CLOCK_MONOTONIC, &s->last_touch);
}

static void work_pass(void *arg)
{
	struct session *s = arg;
	const struct pop3_backend *b = s->pw->srv->backend;
	s->job_rc = b ? b->verify(b->ctx, s->user, s->job_password)
	              : users_verify(s->rt->users, s->user, s->job_password);
	size_t n = strlen(s->job_password);
	explicit_bzero(s->job_password, n);
	if (s->job_rc == TERN_OK && s->job_dir)
		work_open(s);
}

static void work_sasl(void *arg)
{
	sasl_verify(((struct session *)arg)->sasl);
}

static void work_open_only(void *arg)
{
	work_open(arg);
}

static void work_retr_open(void *arg)
{
	struct session *s = arg;
	maybe_touch(s);
	const struct pop3_backend *b = s->pw->srv->backend;
	s->stream_fd = b ? b->open_msg(b->ctx, s->mb, s->stream_idx)
	                 : pop3_mailbox_open_msg(s->mb, s->stream_idx);
	s->job_errno = s->stream_fd < 0 ? errno : 0;
}

static void work_retr_read(void *arg)
{
	struct session *s = arg;
	char *buf = malloc(CHUNK_SIZE);
	s->job_rc = TERN_OK;
	maybe_touch(s);
	if (!buf) {
		s->job_rc = TERN_ENOMEM;
		return;
	}
	ssize_t r;
	do
		r = pread(s->stream_fd, buf, CHUNK_SIZE, (off_t)s->stream_off);
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		s->job_rc = TERN_EIO;
		s->job_errno = errno;
	} else if (r > 0) {
		s->stream_off += (uint64_t)r;
		s->job_rc = pop3_encode(&s->enc, buf, (size_t)r, &s->chunk);
	}
	if (s->job_rc == TERN_OK && (r == 0 || s->enc.done)) {
		s->job_rc = pop3_encode_finish(&s->enc, &s->chunk);
		s->stream_eof = true;
	}
	free(buf);
	if (s->stream_eof || s->job_rc != TERN_OK) {
		close(s->stream_fd);
		s->stream_fd = -1;
	}
}

static void work_quit(void *arg)
{
	struct session *s = arg;
	struct pop3_mailbox *mb = s->mb;
	s->mb = NULL;
	const struct pop3_backend *b = s->pw->srv->backend;
	s->job_rc = b ? b->update(b->ctx, mb, &s->job_removed, &s->job_errno)
	              : pop3_mailbox_update(mb, &s->job_removed, &s->job_errno);
}

static void work_touch(void *arg)
{
	struct session *s = arg;
	if (!s->pw->srv->backend)
		pop3_mailbox_touch(s->mb);
	clock_gettime(CLOCK_MONOTONIC, &s->last_touch);
}

static void work_close_mailbox(void *arg)
{
	pop3_mailbox_close(arg);
}

/* ------------------------------------------------------------- login */

static void sasl_continue(struct session *s, enum sasl_status st);
static void stream_next(struct session *s);
static void on_refresh_timer(evutil_socket_t fd, short what, void *arg);

static void on_delay_timer(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	s->delay_pending = false;
	reply(s, "-ERR [AUTH] Authentication failed.");
	if (s->close_after_delay) {
		session_close_after_flush(s, "auth-failures");
		return;
	}
	process_input(s);
}

/*
 * A login was refused: counted by the throttle (per address and per user),
 * answered after the throttle's delay, and after MAX_AUTH_FAILURES on this
 * connection (or a block) the connection is closed.
 */
static void login_failed(struct session *s, const char *login, const char *why)
{
	struct throttle_result res;
	char u[300];
	const char *who = login ? login : "";
	throttle_fail(s->pw->srv->throttle, s->peer, login, now_ms(), &res);
	s->auth_failures++;
	log_info("event=pop3_auth " SESS_FMT " user=%s result=fail reason=\"%s\" failures=%u %s",
	         SESS_ARGS(s), log_quote(who, strlen(who), u, sizeof(u)), why, s->auth_failures,
	         res.reason);
	s->close_after_delay =
	    s->auth_failures >= MAX_AUTH_FAILURES || res.verdict != THROTTLE_ALLOW;
	if (!s->delay_timer)
		s->delay_timer = evtimer_new(worker_base(s->pw->w), on_delay_timer, s);
	if (!s->delay_timer) {
		on_delay_timer(-1, 0, s);
		return;
	}
	s->delay_pending = true;
	struct timeval tv = {res.delay_ms / 1000, (res.delay_ms % 1000) * 1000};
	evtimer_add(s->delay_timer, &tv);
}

/* Whether logins from this address (and as login, if given) are blocked
 * now; if so the client is told and the connection closed. */
static bool throttled(struct session *s, const char *login)
{
	struct throttle_result res;
	throttle_check(s->pw->srv->throttle, s->peer, login, now_ms(), &res);
	if (res.verdict == THROTTLE_ALLOW)
		return false;
	log_info("event=pop3_auth " SESS_FMT " result=blocked %s", SESS_ARGS(s), res.reason);
	reply(s, "-ERR [LOGIN-DELAY] Too many failed logins; try again in %u seconds.",
	      res.retry_after_s);
	session_close_after_flush(s, "throttled");
	return true;
}

static void refresh_timer_arm(struct session *s)
{
	struct timeval tv = {LOCK_REFRESH_SECS, 0};
	if (s->refresh_timer)
		evtimer_add(s->refresh_timer, &tv);
}

/* The mailbox open finished (J_PASS or J_OPEN): TRANSACTION, or why not. */
static void open_done(struct session *s)
{
	char u[300];
	const char *who = s->login;
	free(s->job_dir);
	s->job_dir = NULL;
	switch (s->job_open) {
	case POP3_OPEN_OK:
		break;
	case POP3_OPEN_IN_USE:
		log_info("event=pop3_login " SESS_FMT " user=%s result=in-use", SESS_ARGS(s),
		         log_quote(who, strlen(who), u, sizeof(u)));
		reply(s, "-ERR [IN-USE] The mailbox is locked by another POP3 session.");
		session_close_after_flush(s, "in-use");
		return;
	case POP3_OPEN_FAILED:
		log_error("event=pop3_mailbox_failed " SESS_FMT " user=%s error=\"%s\"",
		          SESS_ARGS(s), log_quote(who, strlen(who), u, sizeof(u)),
		          strerror(s->job_errno));
		reply(s, "-ERR [SYS/TEMP] The mailbox cannot be opened now; try again later.");
		session_close_after_flush(s, "mailbox-error");
		return;
	}
	s->state = PS_TRANSACTION;
	log_info("event=pop3_login " SESS_FMT " user=%s result=ok messages=%zu octets=%llu%s",
	         SESS_ARGS(s), log_quote(who, strlen(who), u, sizeof(u)), s->mb->n,
	         (unsigned long long)s->mb->total, s->mb->skipped ? " more=yes" : "");
	reply(s, "+OK Logged in: %zu messages (%llu octets).", s->mb->n,
	      (unsigned long long)s->mb->total);
	s->refresh_timer = evtimer_new(worker_base(s->pw->w), on_refresh_timer, s);
	refresh_timer_arm(s);
}

/* Credentials accepted for identity: the throttle forgets the failures,
 * and the mailbox opens on the pool. */
static void login_ok(struct session *s, const char *identity, const char *login_as)
{
	throttle_success(s->pw->srv->throttle, s->peer, login_as);
	s->login = tern_strdup(identity);
	if (!s->login) {
		reply(s, "-ERR [SYS/TEMP] Out of memory; try again later.");
		session_close_after_flush(s, "out-of-memory");
		return;
	}
	if (mailbox_dir(s, s->login, &s->job_dir) != TERN_OK) {
		char u[300];
		log_warn("event=pop3_login " SESS_FMT " user=%s result=no-mailbox", SESS_ARGS(s),
		         log_quote(identity, strlen(identity), u, sizeof(u)));
		reply(s, "-ERR [SYS/PERM] There is no mailbox for this user here.");
		session_close_after_flush(s, "no-mailbox");
		return;
	}
	submit(s, J_OPEN, work_open_only);
}

/* ------------------------------------------------------------ commands */

static bool msg_index(struct session *s, uint32_t msg, size_t *idx)
{
	if (msg == 0 || msg > s->mb->n) {
		reply(s, "-ERR There is no message %u.", msg);
		count_error(s);
		return false;
	}
	if (s->mb->msgs[msg - 1].deleted) {
		reply(s, "-ERR Message %u is deleted.", msg);
		count_error(s);
		return false;
	}
	*idx = msg - 1;
	return true;
}

static void cmd_capa(struct session *s)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	evbuffer_add_printf(out, "+OK Capability list follows\r\nCAPA\r\nTOP\r\nUIDL\r\n"
	                         "RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n");
	if (s->state == PS_AUTHORIZATION && plaintext_ok(s)) {
		char mechs[128];
		evbuffer_add_printf(out, "USER\r\n");
		if (*sasl_mech_list(&s->sasl_cfg, mechs, sizeof(mechs)))
			evbuffer_add_printf(out, "SASL %s\r\n", mechs);
	}
	if (stls_offered(s))
		evbuffer_add_printf(out, "STLS\r\n");
	evbuffer_add_printf(out, "IMPLEMENTATION tern\r\n.\r\n");
}

static void cmd_stls(struct session *s)
{
	if (!s->pw->srv->tls) {
		reply(s, "-ERR STLS is not offered here (no certificate configured).");
		count_error(s);
		return;
	}
	if (s->tls_active) {
		reply(s, "-ERR TLS is already active.");
		count_error(s);
		return;
	}
	SSL *ssl = SSL_new(s->pw->srv->tls);
	if (!ssl) {
		reply(s, "-ERR [SYS/TEMP] TLS is not available now; try again later.");
		return;
	}
	s->starttls = ssl;
	reply(s, "+OK Begin TLS negotiation.");
}

/* Wraps the socket in TLS (implicit TLS at accept, or after STLS). */
static int tls_wrap(struct session *s, SSL *ssl)
{
	struct bufferevent *plain = s->bev;
	struct bufferevent *tb = bufferevent_openssl_filter_new(
	    worker_base(s->pw->w), plain, ssl, BUFFEREVENT_SSL_ACCEPTING,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (!tb)
		return TERN_ENOMEM;
	s->bev = tb;
	s->tls_active = true;
	bufferevent_setcb(tb, on_read, on_write, on_event, s);
	bufferevent_setwatermark(tb, EV_READ, 0, READ_HIGH_WATERMARK);
	bufferevent_setwatermark(tb, EV_WRITE, OUT_LOW_WATERMARK, 0);
	bufferevent_setwatermark(plain, EV_WRITE, 0, OUT_HIGH_WATERMARK);
	restore_timeouts(s);
	bufferevent_enable(tb, EV_READ | EV_WRITE);
	return TERN_OK;
}

/*
 * After the STLS line is consumed: what the client pipelined after it was
 * sent in clear and is thrown away (RFC 2595 §4, CVE-2011-0411), then TLS
 * goes on top of the socket. Nothing learnt before survives: a USER name
 * given in clear is forgotten.
 */
static void start_tls(struct session *s, struct evbuffer *in)
{
	SSL *ssl = s->starttls;
	s->starttls = NULL;
	size_t junk = evbuffer_get_length(in);
	if (junk) {
		log_warn("event=stls_injection " SESS_FMT " discarded=%zu", SESS_ARGS(s), junk);
		evbuffer_drain(in, junk);
	}
	free(s->user);
	s->user = NULL;
	if (tls_wrap(s, ssl) != TERN_OK) {
		SSL_free(ssl);
		log_error("event=stls_failed " SESS_FMT " reason=out-of-memory", SESS_ARGS(s));
		reply(s, "-ERR [SYS/TEMP] Cannot start TLS; closing.");
		session_close_after_flush(s, "stls-failed");
	}
}

static void cmd_user(struct session *s, const struct pop3_cmd *c)
{
	if (!plaintext_ok(s)) {
		reply(s, "-ERR [AUTH] Plaintext authentication is disallowed without TLS: use "
		         "STLS first.");
		count_error(s);
		return;
	}
	free(s->user);
	s->user = tern_strndup(c->arg, c->arg_len);
	if (!s->user) {
		reply(s, "-ERR [SYS/TEMP] Out of memory; try again later.");
		return;
	}
	tern_ascii_lower(s->user);
	reply(s, "+OK");
}

static void cmd_pass(struct session *s, const struct pop3_cmd *c)
{
	if (!s->user) {
		reply(s, "-ERR Give USER first.");
		count_error(s);
		return;
	}
	if (throttled(s, s->user))
		return;
	s->job_password = tern_strndup(c->arg, c->arg_len);
	if (!s->job_password) {
		reply(s, "-ERR [SYS/TEMP] Out of memory; try again later.");
		return;
	}
	/* The Maildir is opened in the same job if the password is right;
	 * the identity is the users-file address, which USER named. */
	if (mailbox_dir(s, s->user, &s->job_dir) != TERN_OK)
		s->job_dir = NULL;
	submit(s, J_PASS, work_pass);
}

static void pass_done(struct session *s)
{
	char *user = s->user;
	s->user = NULL;
	explicit_bzero(s->job_password, strlen(s->job_password));
	free(s->job_password);
	s->job_password = NULL;
	if (s->job_rc != TERN_OK) {
		free(s->job_dir);
		s->job_dir = NULL;
		login_failed(s, user,
		             s->job_rc == TERN_ENOTFOUND ? "no such user" : "wrong password");
		free(user);
		return;
	}
	throttle_success(s->pw->srv->throttle, s->peer, user);
	s->login = user;
	if (!s->job_dir) {
		char u[300];
		log_warn("event=pop3_login " SESS_FMT " user=%s result=no-mailbox", SESS_ARGS(s),
		         log_quote(user, strlen(user), u, sizeof(u)));
		reply(s, "-ERR [SYS/PERM] There is no mailbox for this user here.");
		session_close_after_flush(s, "no-mailbox");
		return;
	}
	open_done(s);
}

static void cmd_auth(struct session *s, const struct pop3_cmd *c)
{
	if (!plaintext_ok(s)) {
		reply(s, "-ERR [AUTH] Authentication is disallowed without TLS: use STLS first.");
		count_error(s);
		return;
	}
	if (c->arg_len == 0) {
		/* A bare AUTH lists the mechanisms (the pre-RFC 5034 form some
		 * clients still send). */
		char mechs[128];
		struct evbuffer *out = bufferevent_get_output(s->bev);
		evbuffer_add_printf(out, "+OK\r\n");
		sasl_mech_list(&s->sasl_cfg, mechs, sizeof(mechs));
		for (char *m = mechs; *m;) {
			char *sp = strchr(m, ' ');
			size_t n = sp ? (size_t)(sp - m) : strlen(m);
			evbuffer_add(out, m, n);
			evbuffer_add(out, "\r\n", 2);
			m += n + (sp ? 1 : 0);
		}
		evbuffer_add_printf(out, ".\r\n");
		return;
	}
	if (throttled(s, NULL))
		return;
	s->sasl = sasl_new(&s->sasl_cfg);
	if (!s->sasl) {
		reply(s, "-ERR [SYS/TEMP] Out of memory; try again later.");
		return;
	}
	sasl_continue(s, sasl_start(s->sasl, c->arg, c->arg_len, c->initial, c->initial_len));
}

/* Drives the SASL exchange from status st (auth/auth.h's loop). */
static void sasl_continue(struct session *s, enum sasl_status st)
{
	size_t n;
	const char *ch;
	char login[SASL_ID_MAX + 1];
	struct sasl_exchange *x = s->sasl;
	switch (st) {
	case SASL_CONTINUE:
		ch = sasl_challenge(x, &n);
		reply(s, "+ %s", ch);
		s->sasl_wait = true;
		return;
	case SASL_NEED_VERIFY:
		if (throttled(s, sasl_login(x)))
			goto end;
		submit(s, J_SASL, work_sasl);
		return;
	case SASL_OK:
		tern_strlcpy(login, sasl_login(x) ? sasl_login(x) : "", sizeof(login));
		login_ok(s, sasl_identity(x), login);
		goto end;
	case SASL_FAIL:
		login_failed(s, sasl_login(x), sasl_reason(x));
		goto end;
	case SASL_CANCELLED:
		reply(s, "-ERR Authentication cancelled.");
		goto end;
	case SASL_MALFORMED:
	case SASL_PROTOCOL:
		reply(s, "-ERR Invalid SASL response (%s).", sasl_reason(x));
		break;
	case SASL_TOO_LONG:
		reply(s, "-ERR SASL response too long.");
		break;
	case SASL_NOMECH:
		reply(s, "-ERR Unsupported authentication mechanism.");
		break;
	case SASL_TEMPFAIL:
		reply(s, "-ERR [SYS/TEMP] Authentication is not possible now; try again later.");
		goto end;
	}
	sasl_free(x);
	s->sasl = NULL;
	s->sasl_wait = false;
	count_error(s);
	return;
end:
	sasl_free(s->sasl);
	s->sasl = NULL;
	s->sasl_wait = false;
}

static void cmd_stat(struct session *s)
{
	size_t n = 0;
	uint64_t total = 0;
	for (size_t i = 0; i < s->mb->n; i++) {
		if (s->mb->msgs[i].deleted)
			continue;
		n++;
		total += s->mb->msgs[i].size;
	}
	reply(s, "+OK %zu %llu", n, (unsigned long long)total);
}

/* LIST and UIDL without an argument: produced LIST_BATCH lines at a time
 * while the client reads (list_more). */
static void list_more(struct session *s)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	size_t batch = 0;
	while (s->list_next < s->mb->n) {
		if (batch++ == LIST_BATCH || evbuffer_get_length(out) > OUT_HIGH_WATERMARK)
			return; /* on_write continues */
		const struct pop3_msg *m = &s->mb->msgs[s->list_next++];
		if (m->deleted)
			continue;
		if (s->listing == POP3_LIST)
			evbuffer_add_printf(out, "%zu %llu\r\n", s->list_next,
			                    (unsigned long long)m->size);
		else
			evbuffer_add_printf(out, "%zu %.*s\r\n", s->list_next, (int)m->base_len,
			                    m->file);
	}
	evbuffer_add(out, ".\r\n", 3);
	s->listing = POP3_UNKNOWN;
}

static void cmd_list_uidl(struct session *s, const struct pop3_cmd *c)
{
	size_t i;
	if (c->has_msg) {
		if (!msg_index(s, c->msg, &i))
			return;
		const struct pop3_msg *m = &s->mb->msgs[i];
		if (c->verb == POP3_LIST)
			reply(s, "+OK %u %llu", c->msg, (unsigned long long)m->size);
		else
			reply(s, "+OK %u %.*s", c->msg, (int)m->base_len, m->file);
		return;
	}
	if (c->verb == POP3_LIST) {
		size_t n = 0;
		uint64_t total = 0;
		for (size_t k = 0; k < s->mb->n; k++) {
			if (!s->mb->msgs[k].deleted) {
				n++;
				total += s->mb->msgs[k].size;
			}
		}
		reply(s, "+OK %zu messages (%llu octets)", n, (unsigned long long)total);
	} else
		reply(s, "+OK");
	s->listing = c->verb;
	s->list_next = 0;
	list_more(s);
}

static void cmd_retr_top(struct session *s, const struct pop3_cmd *c)
{
	size_t i;
	if (!msg_index(s, c->msg, &i))
		return;
	s->stream_idx = i;
	s->stream_top = c->verb == POP3_TOP;
	s->stream_off = 0;
	s->stream_eof = false;
	pop3_encoder_init(&s->enc, s->stream_top, c->lines);
	submit(s, J_RETR_OPEN, work_retr_open);
}

static void retr_open_done(struct session *s)
{
	const struct pop3_msg *m = &s->mb->msgs[s->stream_idx];
	if (s->stream_fd < 0) {
		if (s->job_errno == ENOENT) {
			reply(s, "-ERR Message %zu was expunged by another client.",
			      s->stream_idx + 1);
		} else {
			log_error("event=pop3_read_failed " SESS_FMT " file=%s error=\"%s\"",
			          SESS_ARGS(s), m->file, strerror(s->job_errno));
			reply(s,
			      "-ERR [SYS/TEMP] The message cannot be read now; try again later.");
		}
		return;
	}
	if (s->stream_top)
		reply(s, "+OK Top of message %zu follows.", s->stream_idx + 1);
	else
		reply(s, "+OK %llu octets", (unsigned long long)m->size);
	s->streaming = true;
	/* The client only reads now: no command, so no idle read timeout;
	 * the write timeout still ends a client that stops reading. */
	struct timeval tv = {s->conf->limits.idle_timeout > MIN_IDLE_TIMEOUT
	                         ? s->conf->limits.idle_timeout
	                         : MIN_IDLE_TIMEOUT,
	                     0};
	bufferevent_set_timeouts(s->bev, NULL, &tv);
	stream_next(s);
}

static void stream_next(struct session *s)
{
	submit(s, J_RETR_READ, work_retr_read);
}

static void retr_read_done(struct session *s)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	if (s->chunk.len) {
		evbuffer_add(out, s->chunk.data, s->chunk.len);
		s->retr_bytes += s->chunk.len;
		tbuf_reset(&s->chunk);
	}
	if (s->job_rc != TERN_OK) {
		/* "+OK" is out: the only honest signal left is the close. */
		log_error("event=pop3_read_failed " SESS_FMT " file=%s error=\"%s\"", SESS_ARGS(s),
		          s->mb->msgs[s->stream_idx].file,
		          s->job_rc == TERN_EIO ? strerror(s->job_errno)
		                                : tern_strerror(s->job_rc));
		s->streaming = false;
		evbuffer_add_printf(out, "\r\n");
		session_close_after_flush(s, "read-error");
		return;
	}
	if (!s->stream_eof) {
		if (evbuffer_get_length(out) <= OUT_HIGH_WATERMARK)
			stream_next(s);
		return; /* else on_write asks for the next chunk */
	}
	s->streaming = false;
	tbuf_free(&s->chunk); /* 128 KiB: not kept by idle sessions */
	if (s->stream_top) {
		s->n_top++;
	} else {
		s->n_retr++;
		s->mb->msgs[s->stream_idx].seen = true;
	}
	restore_timeouts(s);
}

static void cmd_dele(struct session *s, const struct pop3_cmd *c)
{
	size_t i;
	if (!msg_index(s, c->msg, &i))
		return;
	s->mb->msgs[i].deleted = true;
	s->n_dele++;
	reply(s, "+OK Message %u marked for deletion at QUIT.", c->msg);
}

static void cmd_rset(struct session *s)
{
	for (size_t i = 0; i < s->mb->n; i++)
		s->mb->msgs[i].deleted = false;
	s->n_dele = 0;
	reply(s, "+OK %zu messages.", s->mb->n);
}

static void cmd_quit(struct session *s)
{
	if (s->state != PS_TRANSACTION) {
		reply(s, "+OK Logging out.");
		session_close_after_flush(s, "quit");
		return;
	}
	if (s->refresh_timer)
		evtimer_del(s->refresh_timer);
	submit(s, J_QUIT, work_quit);
}

static void quit_done(struct session *s)
{
	if (s->job_rc != TERN_OK) {
		log_error("event=pop3_update_failed " SESS_FMT " removed=%zu error=\"%s\"",
		          SESS_ARGS(s), s->job_removed, strerror(s->job_errno));
		reply(s, "-ERR [SYS/TEMP] Some deleted messages were not removed (%s).",
		      strerror(s->job_errno));
		session_close_after_flush(s, "update-failed");
		return;
	}
	reply(s, "+OK Logging out: %zu messages deleted.", s->job_removed);
	session_close_after_flush(s, "quit");
}

/* Commands allowed in each state. */
static bool allowed(const struct session *s, enum pop3_verb v, const char **why)
{
	switch (v) {
	case POP3_CAPA:
	case POP3_QUIT:
		return true;
	case POP3_USER:
	case POP3_PASS:
	case POP3_AUTH:
	case POP3_APOP:
		*why = "Already logged in.";
		return s->state == PS_AUTHORIZATION;
	case POP3_STLS:
		*why = "STLS is only allowed before logging in.";
		return s->state == PS_AUTHORIZATION;
	default:
		*why = "Not logged in: USER and PASS (or AUTH) first.";
		return s->state == PS_TRANSACTION;
	}
}

static void dispatch(struct session *s, const char *line, size_t len)
{
	struct pop3_cmd c;
	const char *why;
	if (!pop3_parse_command(line, len, &c, &why)) {
		if (c.verb == POP3_UNKNOWN)
			reply(s, "-ERR Unknown command.");
		else
			reply(s, "-ERR %s: %s.", pop3_verb_name(c.verb), why);
		count_error(s);
		return;
	}
	if (!allowed(s, c.verb, &why)) {
		reply(s, "-ERR %s", why);
		count_error(s);
		return;
	}
	switch (c.verb) {
	case POP3_CAPA:
		cmd_capa(s);
		break;
	case POP3_STLS:
		cmd_stls(s);
		break;
	case POP3_USER:
		cmd_user(s, &c);
		break;
	case POP3_PASS:
		cmd_pass(s, &c);
		break;
	case POP3_AUTH:
		cmd_auth(s, &c);
		break;
	case POP3_APOP:
		reply(s, "-ERR APOP is not offered: use USER and PASS, or AUTH, over TLS.");
		count_error(s);
		break;
	case POP3_STAT:
		cmd_stat(s);
		break;
	case POP3_LIST:
	case POP3_UIDL:
		cmd_list_uidl(s, &c);
		break;
	case POP3_RETR:
	case POP3_TOP:
		cmd_retr_top(s, &c);
		break;
	case POP3_DELE:
		cmd_dele(s, &c);
		break;
	case POP3_NOOP:
		reply(s, "+OK");
		break;
	case POP3_RSET:
		cmd_rset(s);
		break;
	case POP3_QUIT:
		cmd_quit(s);
		break;
	case POP3_UNKNOWN:
		break;
	}
}

/* ------------------------------------------------------------ job end */

static void job_done(void *arg)
{
	struct session *s = arg;
	enum job kind = s->job;
	s->job = J_NONE;
	if (s->dead) {
		session_free(s);
		return;
	}
	switch (kind) {
	case J_PASS:
		pass_done(s);
		break;
	case J_OPEN:
		open_done(s);
		break;
	case J_SASL:
		sasl_continue(s, sasl_finish(s->sasl));
		break;
	case J_RETR_OPEN:
		retr_open_done(s);
		break;
	case J_RETR_READ:
		retr_read_done(s);
		break;
	case J_QUIT:
		quit_done(s);
		return;
	case J_TOUCH:
		refresh_timer_arm(s);
		break;
	case J_NONE:
		break;
	}
	process_input(s);
}

/* The lock refresh timer: touch the lock file on the pool when idle
 * (busy jobs touch it themselves, maybe_touch). */
static void on_refresh_timer(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	if (s->state != PS_TRANSACTION || !s->mb)
		return;
	if (s->job != J_NONE || s->streaming) {
		refresh_timer_arm(s);
		return;
	}
	submit(s, J_TOUCH, work_touch);
}

/* ------------------------------------------------------------- reading */

static void restore_timeouts(struct session *s)
{
	uint32_t t = s->conf->limits.idle_timeout;
	struct timeval tv = {t > MIN_IDLE_TIMEOUT ? t : MIN_IDLE_TIMEOUT, 0};
	bufferevent_set_timeouts(s->bev, &tv, &tv);
}

/* A line too long for anyone: a SASL exchange waiting for it ends too. */
static void line_too_long(struct session *s, size_t max)
{
	if (s->sasl_wait) {
		sasl_free(s->sasl);
		s->sasl = NULL;
		s->sasl_wait = false;
	}
	reply(s, "-ERR Line too long (limit %zu bytes).", max);
	count_error(s);
}

/* One command line from the input; false when more input is needed. */
static bool read_command(struct session *s, struct evbuffer *in)
{
	const size_t max = POP3_LINE_MAX;
	struct evbuffer_ptr lf = evbuffer_search(in, "\n", 1, NULL);
	if (s->discard_line) {
		if (lf.pos < 0) {
			evbuffer_drain(in, evbuffer_get_length(in));
			return false;
		}
		evbuffer_drain(in, (size_t)lf.pos + 1);
		s->discard_line = false;
		line_too_long(s, max);
		return true;
	}
	if (lf.pos < 0) {
		if (evbuffer_get_length(in) > max) {
			s->discard_line = true;
			evbuffer_drain(in, evbuffer_get_length(in));
		}
		return false;
	}
	size_t linelen = (size_t)lf.pos + 1;
	if (linelen > max) {
		evbuffer_drain(in, linelen);
		line_too_long(s, max);
		return true;
	}
	const char *line = (const char *)evbuffer_pullup(in, (ev_ssize_t)linelen);
	size_t n = linelen - 1;
	if (n > 0 && line[n - 1] == '\r')
		n--;
	if (s->sasl_wait) {
		s->sasl_wait = false;
		sasl_continue(s, sasl_step(s->sasl, line, n));
	} else {
		dispatch(s, line, n);
	}
	/* The line may hold a password: wipe it before it goes back to the
	 * buffer's free chunks. */
	explicit_bzero((char *)line, linelen);
	evbuffer_drain(in, linelen);
	if (s->starttls) {
		start_tls(s, in);
		return false; /* the old input buffer is no longer the session's */
	}
	return true;
}

/* Whether the session may read its next command now. */
static bool ready(const struct session *s)
{
	return s->state != PS_CLOSING && s->job == J_NONE && !s->streaming &&
	       s->listing == POP3_UNKNOWN && !s->delay_pending && !s->out_blocked;
}

static void process_input(struct session *s)
{
	if (s->state == PS_CLOSING)
		return;
	if (s->shutting_down && ready(s)) {
		reply(s, "-ERR [SYS/TEMP] The server is shutting down; nothing was deleted.");
		session_close_after_flush(s, "shutdown");
		return;
	}
	struct evbuffer *in = bufferevent_get_input(s->bev);
	while (ready(s) && evbuffer_get_length(in) > 0) {
		if (evbuffer_get_length(bufferevent_get_output(s->bev)) > OUT_HIGH_WATERMARK) {
			s->out_blocked = true;
			return;
		}
		if (!read_command(s, in))
			break;
		in = bufferevent_get_input(s->bev);
	}
}

static void on_read(struct bufferevent *bev, void *arg)
{
	process_input(arg);
}

/* The output went down to OUT_LOW_WATERMARK: produce more. */
static void on_write(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;
	if (s->state == PS_CLOSING)
		return;
	if (s->streaming && s->job == J_NONE) {
		stream_next(s);
		return;
	}
	if (s->listing != POP3_UNKNOWN)
		list_more(s);
	if (s->out_blocked) {
		s->out_blocked = false;
	}
	process_input(s);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;
	if (what & BEV_EVENT_CONNECTED) {
		char d[600]; /* TLS: the same words as every TLS log line (tls/tls.h) */
		log_info("event=tls " SESS_FMT " %s", SESS_ARGS(s),
		         tls_describe(bufferevent_openssl_get_ssl(bev), d, sizeof(d)));
		return;
	}
	if (s->state == PS_CLOSING) {
		session_free(s);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		if (what & BEV_EVENT_WRITING) {
			/* The client stopped reading what we send: no reply can
			 * reach it any more. */
			log_info("event=pop3_disconnect " SESS_FMT " reason=write-timeout state=%s",
			         SESS_ARGS(s), pstate_names[s->state]);
			if (s->job != J_NONE) {
				s->dead = true;
				bufferevent_disable(s->bev, EV_READ | EV_WRITE);
				return;
			}
			session_free(s);
			return;
		}
		if (s->job != J_NONE || s->streaming || s->listing != POP3_UNKNOWN) {
			/* We are the slow one, or the client is busy reading. */
			bufferevent_enable(s->bev, EV_READ);
			return;
		}
		reply(s, "-ERR Disconnected for inactivity.");
		session_close_after_flush(s, "idle-timeout");
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		if (s->job != J_NONE) {
			/* The job still points at us: free when it is done. */
			s->dead = true;
			bufferevent_disable(s->bev, EV_READ | EV_WRITE);
			return;
		}
		char u[300];
		const char *who = s->login ? s->login : "";
		log_info("event=pop3_disconnect " SESS_FMT " user=%s reason=%s state=%s retr=%u "
		         "dele_discarded=%u",
		         SESS_ARGS(s), log_quote(who, strlen(who), u, sizeof(u)),
		         (what & BEV_EVENT_EOF) ? "peer-closed" : "io-error",
		         pstate_names[s->state], s->n_retr, s->n_dele);
		session_free(s);
	}
}

/* ------------------------------------------------------------ lifecycle */

static void session_free(struct session *s)
{
	struct p3_worker *pw = s->pw;
	struct pop3_server *srv = pw->srv;
	TERN_BUG_ON(s->job != J_NONE);
	if (s->prev)
		s->prev->next = s->next;
	else
		pw->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	peer_counts_release(srv->peers, &s->peer_sa);
	atomic_fetch_sub(&srv->n_sessions, 1);
	if (s->stream_fd >= 0)
		close(s->stream_fd);
	/* Not QUIT: the mailbox is released with nothing deleted (RFC 1939
	 * §6), on the pool since unlocking touches the disk. */
	if (s->mb && srv->backend)
		srv->backend->close(srv->backend->ctx, s->mb); /* no lock, no disk */
	else if (s->mb &&
	         (!srv->pool || pool_submit(srv->pool, work_close_mailbox, NULL, NULL, s->mb) != 0))
		pop3_mailbox_close(s->mb);
	if (s->sasl)
		sasl_free(s->sasl);
	if (s->job_password) {
		explicit_bzero(s->job_password, strlen(s->job_password));
		free(s->job_password);
	}
	free(s->job_dir);
	free(s->user);
	free(s->login);
	tbuf_free(&s->chunk);
	if (s->delay_timer)
		event_free(s->delay_timer);
	if (s->refresh_timer)
		event_free(s->refresh_timer);
	tls_close_clear(&s->tlsc); /* before the filter (and the socket) go, below */
	if (s->starttls)
		SSL_free(s->starttls);
	bufferevent_free(s->bev);
	runtime_release(s->rt);
	free(s);
}

static void refuse(evutil_socket_t fd, const char *text)
{
	ssize_t w = send(fd, text, strlen(text), MSG_NOSIGNAL | MSG_DONTWAIT);
	(void)w; /* best effort: the peer learns why, or simply sees the close */
	close(fd);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
	struct p3_worker *pw = arg;
	struct pop3_server *srv = pw->srv;
	struct tern_runtime *rt = runtime_acquire();
	if (!rt) {
		close(fd);
		return;
	}
	const struct tern_config *conf = rt->conf;
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	memcpy(&ss, sa, (size_t)salen < sizeof(ss) ? (size_t)salen : sizeof(ss));
	char peer[INET6_ADDRSTRLEN + 2];
	peer_format(&ss, peer, sizeof(peer));
	bool implicit = false;
	for (size_t i = 0; i < pw->n_listeners; i++)
		if (pw->listeners[i] == l)
			implicit = pw->implicit[i];

	size_t n = atomic_fetch_add(&srv->n_sessions, 1) + 1;
	if (n > conf->limits.max_connections ||
	    !peer_counts_acquire(srv->peers, &ss, conf->limits.max_connections_per_ip)) {
		bool total = n > conf->limits.max_connections;
		atomic_fetch_sub(&srv->n_sessions, 1);
		log_warn("event=pop3_refused client=%s reason=%s", peer,
		         total ? "max-connections" : "max-connections-per-ip");
		/* Over implicit TLS a clear-text answer would be noise. */
		if (implicit)
			close(fd);
		else
			refuse(fd, "-ERR [SYS/TEMP] Too many connections; try again later.\r\n");
		runtime_release(rt);
		return;
	}
	struct session *s = calloc(1, sizeof(*s));
	struct bufferevent *bev =
	    s ? bufferevent_socket_new(worker_base(pw->w), fd, BEV_OPT_CLOSE_ON_FREE) : NULL;
	if (!s || !bev) {
		free(s);
		peer_counts_release(srv->peers, &ss);
		atomic_fetch_sub(&srv->n_sessions, 1);
		if (implicit)
			close(fd);
		else
			refuse(fd, "-ERR [SYS/TEMP] Out of memory; try again later.\r\n");
		runtime_release(rt);
		return;
	}
	s->pw = pw;
	s->bev = bev;
	s->rt = rt;
	s->conf = conf;
	s->state = PS_AUTHORIZATION;
	s->stream_fd = -1;
	s->serial = ++pw->next_serial;
	s->peer_sa = ss;
	tbuf_init(&s->chunk, 2 * CHUNK_SIZE + 16);
	tern_strlcpy(s->peer, peer, sizeof(s->peer));
	s->sasl_cfg.users = rt->users;
	if (pw->srv->backend) {
		s->sasl_cfg.users = NULL;
		s->sasl_cfg.verify_password = pw->srv->backend->verify;
		s->sasl_cfg.store_arg = pw->srv->backend->ctx;
	}
	s->sasl_cfg.hostname = conf->hostname;
	s->next = pw->sessions;
	if (s->next)
		s->next->prev = s;
	pw->sessions = s;
	s->refresh_timer = NULL;

	bufferevent_setcb(bev, on_read, on_write, on_event, s);
	bufferevent_setwatermark(bev, EV_READ, 0, READ_HIGH_WATERMARK);
	bufferevent_setwatermark(bev, EV_WRITE, OUT_LOW_WATERMARK, 0);
	restore_timeouts(s);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	log_info("event=pop3_connect " SESS_FMT " tls=%s", SESS_ARGS(s),
	         implicit ? "implicit" : "no");
	if (implicit) {
		SSL *ssl = srv->tls ? SSL_new(srv->tls) : NULL;
		if (!ssl || tls_wrap(s, ssl) != TERN_OK) {
			if (ssl)
				SSL_free(ssl);
			log_error("event=pop3_tls_failed " SESS_FMT " reason=out-of-memory",
			          SESS_ARGS(s));
			session_free(s);
			return;
		}
	}
	/* No APOP timestamp in the greeting: APOP is not offered. */
	reply(s, "+OK tern POP3 server ready.");
}

struct pop3_server *pop3_server_new(struct throttle *shared)
{
	struct pop3_server *srv = calloc(1, sizeof(*srv));
	if (!srv || !(srv->peers = peer_counts_new())) {
		free(srv);
		return NULL;
	}
	srv->pool = pool_new(POOL_THREADS);
	if (shared) {
		srv->throttle = shared;
	} else {
		struct throttle_config tc = THROTTLE_CONFIG_DEFAULT;
		srv->throttle = throttle_new(&tc);
		srv->own_throttle = true;
	}
	if (!srv->pool || !srv->throttle) {
		pop3_server_free(srv);
		return NULL;
	}
	return srv;
}

static struct p3_worker *p3_worker_for(struct pop3_server *srv, struct worker *w)
{
	for (size_t i = 0; i < srv->n_workers; i++)
		if (srv->workers[i]->w == w)
			return srv->workers[i];
	if (srv->n_workers == MAX_WORKERS)
		return NULL;
	struct p3_worker *pw = calloc(1, sizeof(*pw));
	if (!pw)
		return NULL;
	pw->srv = srv;
	pw->w = w;
	srv->workers[srv->n_workers++] = pw;
	return pw;
}

int pop3_server_listen(struct pop3_server *srv, struct worker *w, int listen_fd, bool implicit_tls)
{
	if (implicit_tls && !srv->tls)
		return TERN_EINVAL;
	struct p3_worker *pw = p3_worker_for(srv, w);
	if (!pw || pw->n_listeners == MAX_LISTENERS_PER_WORKER)
		return TERN_ELIMIT;
	/* backlog 0: already listening with serve.c's backlog (-1 would cut it to 128) */
	struct evconnlistener *l =
	    evconnlistener_new(worker_base(w), on_accept, pw, LEV_OPT_CLOSE_ON_FREE, 0, listen_fd);
	if (!l)
		return TERN_EIO;
	pw->implicit[pw->n_listeners] = implicit_tls;
	pw->listeners[pw->n_listeners++] = l;
	return TERN_OK;
}

void pop3_server_set_tls(struct pop3_server *srv, struct ssl_ctx_st *ctx)
{
	if (ctx)
		SSL_CTX_up_ref(ctx);
	if (srv->tls)
		SSL_CTX_free(srv->tls);
	srv->tls = ctx;
}

static void worker_shutdown(void *arg)
{
	struct p3_worker *pw = arg;
	for (size_t i = 0; i < pw->n_listeners; i++) {
		evconnlistener_free(pw->listeners[i]);
		pw->listeners[i] = NULL;
	}
	pw->n_listeners = 0;
	struct session *s = pw->sessions;
	while (s) {
		struct session *next = s->next;
		if (s->state != PS_CLOSING) {
			s->shutting_down = true;
			process_input(s); /* closes it now unless work is in flight */
		}
		s = next;
	}
}

void pop3_server_shutdown(struct pop3_server *srv)
{
	if (!srv)
		return;
	for (size_t i = 0; i < srv->n_workers; i++)
		worker_post(srv->workers[i]->w, worker_shutdown, srv->workers[i]);
}

void pop3_server_set_backend(struct pop3_server *srv, const struct pop3_backend *b)
{
	srv->backend = b;
}

size_t pop3_server_sessions(struct pop3_server *srv)
{
	return srv ? atomic_load(&srv->n_sessions) : 0;
}

void pop3_server_free(struct pop3_server *srv)
{
	if (!srv)
		return;
	/* Every job finishes; its completion is posted to its (stopped)
	 * worker, and running those leaves no session with a job. */
	pool_free(srv->pool);
	srv->pool = NULL;
	for (size_t i = 0; i < srv->n_workers; i++)
		worker_run_pending(srv->workers[i]->w);
	for (size_t i = 0; i < srv->n_workers; i++) {
		struct p3_worker *pw = srv->workers[i];
		for (size_t j = 0; j < pw->n_listeners; j++)
			evconnlistener_free(pw->listeners[j]);
		while (pw->sessions) {
			struct session *s = pw->sessions;
			s->job = J_NONE;
			session_free(s); /* with no pool, the mailbox closes here */
		}
		free(pw);
	}
	peer_counts_free(srv->peers);
	if (srv->own_throttle)
		throttle_free(srv->throttle);
	if (srv->tls)
		SSL_CTX_free(srv->tls);
	free(srv);
}
