/*
 * server.c — the SMTP server session: one explicit state machine per
 * connection, on the worker thread that accepted it.
 *
 * Owns: connection limits, the session states (session_enter_state is the
 * only writer), the command table and its one sequence check, the
 * transaction (MAIL..end of data), the Received header, the hand-off to the
 * spool and the reply that follows the commit. Every reply comes from the
 * table in reply.c; policy verdicts (policy.h) bring their own.
 *
 * Must never: block (no disk, no crypt, no DNS here: the spool commit runs
 * on its committer thread and password checks on the auth pool, both come
 * back through worker_post); take a bare CR or LF as the end of data; answer
 * 250 to end of data before the spool reported the message durable; relay
 * for a client that is neither authenticated nor in relay.networks.
 *
 * SECURITY: this file reads untrusted network input. Every line is bounded
 * (limits.max_line_length) before it is parsed; the parser is pure and
 * fuzzed; message bytes are bounded by limits.max_message_size per
 * message and by limits.inflight_memory over all sessions together. SASL
 * lines (up to RFC 4954's 12288 bytes) go to the SASL engine of auth.h,
 * which decodes them; failed logins are counted and slowed down by its
 * throttle, and every one is logged (event=auth_failed, for fail2ban).
 */
#include "smtp/sign.h"
#include "smtp/smtp.h"
#include "smtp/smtp_metrics.h"
#include "smtp/wire_in.h"
#include "smtp/wire_out.h"
#include "tls/tls.h"
#include "tls/tls_close.h"

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
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <inttypes.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "auth/auth.h"
#include "core/codec.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/timefmt.h"
#include "deliver/deliver.h"
#include "core/id.h"
#include "core/log.h"
#include "core/peer.h"
#include "core/loop.h"
#include "core/metrics.h"
#include "core/runtime.h"
#include "core/send_batch.h"
#include "policy/policy.h"
#include "queue/queue.h"
#include "queue/spill.h"
#include "smtp/data_stream.h"
#include "smtp/milter_stage.h"
#include "smtp/quota_stage.h"
#include "store/events.h"
#include "store/suppress.h"

#define MAX_LISTENERS_PER_WORKER 16
#define READ_HIGH_WATERMARK (256 * 1024)
/* Output backpressure: past OUT_HIGH queued reply bytes the session stops
 * reading commands until the client has taken the output down to OUT_LOW,
 * so a client that pipelines and never reads cannot grow our memory. */
#define OUT_HIGH_WATERMARK (64 * 1024)
#define OUT_LOW_WATERMARK (16 * 1024)
#define RECEIVED_HEADER_MAX 1024

/*
 * The protocol states of a session. session_enter_state() is the only
 * writer of s->state; the table `states` below says for each state what
 * holds in it (the facts the command flags test), how input is read, and
 * which states may follow it (any other change is a bug in this file).
 *
 *  CONNECTED -220-> GREETED -HELO/EHLO-> HELO -MAIL-> MAIL -RCPT-> RCPT -DATA-> DATA
 *     |                ^                  |  ^                       |            |
 *    554           handshake          AUTH|  |235, 5xx           BDAT|            |
 *     v                |                  v  |                       v            v
 *  REFUSED            TLS                 AUTH <-> AUTH_WAIT  CHUNKING <-> BDAT -LAST-> COMMIT
 *  (QUIT only)         ^
 *                      +-- STARTTLS, from GREETED, HELO, MAIL, RCPT or CHUNKING
 *
 * AUTH_WAIT (submission listeners): the credentials are checked on the auth
 * pool, or a failure waits out the throttle's delay; it may also follow
 * HELO directly (an initial response) and returns to HELO or AUTH.
 *
 * Back to HELO ("between transactions"): RSET, HELO/EHLO, the reply after
 * end of data, a refused message. Every state may go to CLOSING.
 *
 * MILTER: while the listener's milters are asked about the greeting,
 * HELO/EHLO, MAIL or RCPT (s->milter_wait) the state stays what the
 * command made it and nothing is read until milter_done answers; at end of
 * message they are asked in SS_VERIFY, after verify.c and before sign.c.
 */
enum session_state {
	SS_CONNECTED, /* accepted; the greeting waits for the connect-time policy */
	SS_REFUSED,   /* a 554 greeting was sent: only QUIT is accepted (RFC 5321 §3.1) */
	SS_GREETED,   /* 220 sent; no HELO/EHLO yet, or STARTTLS made us forget it */
	SS_HELO,      /* HELO/EHLO accepted; between transactions */
	SS_AUTH,      /* a SASL dialogue: the next line answers our 334 */
	SS_AUTH_WAIT, /* AUTH: credentials being checked, or a failure being delayed; nothing
	                 is read */
	SS_MAIL,      /* MAIL accepted; no recipient yet */
	SS_RCPT,      /* at least one recipient accepted */
	SS_DATA,      /* reading the message after 354 until CRLF.CRLF */
	SS_BDAT,      /* reading the bytes of a BDAT chunk */
	SS_CHUNKING,  /* between BDAT chunks: commands again, the message goes on */
	SS_VERIFY,    /* TRUST: SPF/DKIM/DMARC (verify.c), then MILTER: the milters decide
	                 first, then SIGN: our DKIM signatures are made (sign.c); nothing is
	                 read */
	SS_COMMIT,    /* the spool is making the message durable; nothing is processed */
	SS_TLS,       /* STARTTLS answered: the handshake runs on the new layer */
	SS_CLOSING,   /* the final reply is queued; freed once it is written */
	SS__COUNT
};

/* Facts a state implies; the command flags below are written in them. */
#define HAS_HELO 0x01u /* HELO or EHLO accepted (s->helo) */
#define HAS_TX 0x02u   /* a mail transaction is open (s->tx) */
#define HAS_RCPT 0x04u /* ... with at least one recipient */
#define HAS_BDAT 0x08u /* ... whose message BDAT has begun (tx->bdat_started) */

/* How a state reads its input (process_input). */
enum session_input {
	IN_NONE,  /* nothing is read now */
	IN_EARLY, /* input before our greeting: only noted (POLICY: pregreet) */
	IN_CMD,   /* command lines */
	IN_DATA,  /* DATA text */
	IN_BDAT,  /* chunk bytes */
};

#define TO(st) (1u << (st))
#define ANY_TX_END (TO(SS_HELO) | TO(SS_TLS) | TO(SS_CLOSING))

static const struct state_info {
	const char *name; /* in logs */
	unsigned facts;   /* HAS_* */
	enum session_input input;
	bool idle;     /* between transactions: a shutdown closes it at once */
	unsigned next; /* TO(state) for each state that may follow */
} states[SS__COUNT] = {
    [SS_CONNECTED] = {"connected", 0, IN_EARLY, false,
                      TO(SS_GREETED) | TO(SS_REFUSED) | TO(SS_CLOSING)},
    [SS_REFUSED] = {"refused", 0, IN_CMD, true, TO(SS_CLOSING)},
    [SS_GREETED] = {"greeted", 0, IN_CMD, true, TO(SS_HELO) | TO(SS_TLS) | TO(SS_CLOSING)},
    [SS_HELO] = {"helo", HAS_HELO, IN_CMD, true,
                 TO(SS_MAIL) | TO(SS_AUTH) | TO(SS_AUTH_WAIT) | TO(SS_TLS) | TO(SS_CLOSING)},
    [SS_AUTH] = {"auth", HAS_HELO, IN_CMD, true, TO(SS_HELO) | TO(SS_AUTH_WAIT) | TO(SS_CLOSING)},
    /* Not idle: the pool's answer still points at the session. */
    [SS_AUTH_WAIT] = {"auth-wait", HAS_HELO, IN_NONE, false,
                      TO(SS_AUTH) | TO(SS_HELO) | TO(SS_CLOSING)},
    [SS_MAIL] = {"mail", HAS_HELO | HAS_TX, IN_CMD, false, TO(SS_RCPT) | ANY_TX_END},
    [SS_RCPT] = {"rcpt", HAS_HELO | HAS_TX | HAS_RCPT, IN_CMD, false,
                 TO(SS_DATA) | TO(SS_BDAT) | TO(SS_CHUNKING) | ANY_TX_END},
    [SS_DATA] = {"data", HAS_HELO | HAS_TX | HAS_RCPT, IN_DATA, false,
                 TO(SS_VERIFY) | TO(SS_COMMIT) | TO(SS_HELO) | TO(SS_CLOSING)},
    [SS_BDAT] = {"bdat", HAS_HELO | HAS_TX | HAS_RCPT | HAS_BDAT, IN_BDAT, false,
                 TO(SS_CHUNKING) | TO(SS_VERIFY) | TO(SS_COMMIT) | TO(SS_HELO) | TO(SS_CLOSING)},
    [SS_CHUNKING] = {"chunking", HAS_HELO | HAS_TX | HAS_RCPT | HAS_BDAT, IN_CMD, false,
                     TO(SS_BDAT) | ANY_TX_END},
    [SS_VERIFY] = {"verify", HAS_HELO | HAS_TX | HAS_RCPT, IN_NONE, false,
                   TO(SS_COMMIT) | TO(SS_HELO) | TO(SS_CLOSING)},
    [SS_COMMIT] = {"commit", HAS_HELO | HAS_TX | HAS_RCPT, IN_NONE, false,
                   TO(SS_HELO) | TO(SS_CLOSING)},
    [SS_TLS] = {"tls", 0, IN_NONE, true, TO(SS_GREETED) | TO(SS_CLOSING)},
    [SS_CLOSING] = {"closing", 0, IN_NONE, false, 0},
};

struct tx_rcpt {
	char *addr;
	char *orcpt;
	unsigned notify;
	bool local;
};

/* One mail transaction: from MAIL to the reply after end of data (or RSET). */
struct tx {
	struct smtp_server *srv; /* whose inflight budget `charged` is taken from */
	char *sender;
	bool smtputf8;
	enum smtp_body body;
	enum smtp_ret ret;
	char *envid;
	struct tx_rcpt *rcpts;
	size_t n_rcpts, cap_rcpts;
	uint32_t rcpt_cmds; /* accepted RCPT commands, for max_recipients */
	char id[QUEUE_ID_LEN + 1];
	struct tbuf msg;    /* Received header + message, as it goes to the spool */
	size_t hdr_len;     /* bytes of our Received header at the start of msg */
	struct smtp_data_parser dp;
	bool bdat_started;
	bool bdat_failed;   /* a chunk passed the size limit; the rest is discarded */
	char *auth_param;   /* MAIL AUTH= believed (RFC 4954 §5), or NULL */
	uint64_t declared_size; /* MAIL SIZE=, 0 if not given */
	uint64_t charged;       /* bytes of limits.inflight_memory that msg holds (budget_*) */
	uint64_t copies;        /* bytes of it the milters' copies of msg hold (budget_copies) */
	bool over_budget;       /* the budget ran out: msg was freed, the rest is discarded */
	bool bdat_last;
	uint64_t bdat_remaining;
	uint64_t bdat_total;
	int commit_err;
	bool captured;           /* CAPTURE-ACK: committed in the capture store, not spooled */
	struct smtp_verify *vfy; /* TRUST: SPF/DKIM/DMARC of this transaction, or NULL */
	bool verified;           /* TRUST: its verdict is in */
	bool verify_applied;     /* TRUST: its verdict was acted on (verify_apply) */
	uint8_t sign_state;      /* SIGN: enum sign_state (sign.h does the work) */
	struct smtp_sign_result sign;
	enum spool_folder folder; /* where local recipients get it (TRUST, MILTER) */
	bool milter_done;         /* MILTER: the milters had their say about the message */
	bool milter_discard;      /* MILTER: a milter said discard: 250, nothing spooled */
	size_t milter_mark;       /* MILTER: recipients before the RCPT being asked about */
	/* SPILL (smtp/data_stream.h): past SPILL_THRESHOLD the client's bytes
	 * go to their own file; msg keeps our trace fields and the client's
	 * header block (hb_len bytes after hdr_len) */
	struct data_stream *ds;
	uint64_t spilled;            /* client bytes handed to the writer */
	size_t hb_len;               /* client header block kept in msg while streaming */
	uint64_t spill_off;          /* the same block's length in the file (spool_msg.spill_off) */
	int spill_err;               /* a write failed: the rest is dropped, the reply says why */
	bool no_spill;           /* no spilling for this message (its file could not be made) */
	bool spill_end;              /* end of data seen: the last chunk and the sync are due */
	bool spill_final;            /* the last chunk was handed over */
	struct data_line_scan lscan; /* BDAT: bare CR/LF and NUL, chunk by chunk */
};

struct srv_worker;

struct session {
	struct session *prev, *next; /* on the worker's list */
	struct srv_worker *sw;
	struct bufferevent *bev;
	struct tern_runtime *rt;
	const struct tern_config *conf; /* rt->conf */
	enum session_state state;
	bool submission;
	bool dead;          /* the peer went away while a commit was in flight */
	bool shutting_down; /* close after the transaction in flight */
	bool discard_line;  /* skipping the rest of an over-long command line */
	bool out_blocked;   /* reading stopped until the output drains (on_write) */
	/* SPILL: reading stopped until the spill writer catches up */
	bool spill_wait;
	/* wire_out: bytes of the command being handled, still in the input */
	size_t cmd_bytes;
	uint64_t skip_bytes; /* bytes of a refused BDAT chunk still to skip */
	bool esmtp;
	bool tls_active;
	bool offer_starttls; /* TLS: the listener offers STARTTLS and a context is loaded */
	SSL *starttls;      /* set by STARTTLS: the switch happens once the line is consumed */
	struct tls_close tlsc; /* TLS close in progress (tls/tls_close.h) */
	bool authenticated;
	char *auth_user;    /* the SASL identity, once authenticated */
	uint8_t auth_step;  /* capture mode's AUTH dialogue: 0 none, else which response */
	/* AUTH on a submission listener (auth.h): the exchange in progress, the
	 * configuration it reads (built at connect from rt, which the session
	 * holds for its life, so it never changes under an exchange), and what
	 * SS_AUTH_WAIT waits for. */
	struct sasl_exchange *sasl;
	struct session_auth *auth_cfg; /* submission and capture logins only (auth_setup) */
	char auth_mech[24];            /* the mechanism as the client named it (for the log) */
	bool auth_in_pool;             /* sasl_verify runs on the pool: free s only once back */
	struct event *auth_timer;      /* the throttle's delay before a failure's reply */
	enum smtp_reply_id auth_reply; /* the reply that waits for it */
	uint32_t errors;
	uint64_t serial;
	uint32_t n_msgs;
	char *helo;
	char peer[INET6_ADDRSTRLEN + 2];
	struct sockaddr_storage peer_sa;
	struct tx *tx;
	struct policy_session *pol; /* mx listeners: the abuse defences' state, or NULL */
	/* MILTER: the listener's milters (milter_stage.h). While a step is out
	 * (milter_wait) nothing is read and the idle timeout is off: the
	 * milter client's own deadlines bound the wait. */
	const struct conf_listener *milter_listener; /* has milters; NULL: none */
	struct milter_stage *milter;
	bool milter_wait;
	bool milter_greeted; /* the connect step is behind us */
	int milter_at;       /* the step whose answer milter_done waits for */
	char *milter_rcpt;   /* the recipient the milters are asked about (heap) */
};

/* The SASL configuration a session's exchanges read: only sessions that may
 * authenticate carry one, so an idle mx session stays small (issue 11:
 * 50,000 idle sessions at <= 2 KB each). */
struct session_auth {
	struct sasl_config sasl;
	struct oauth_config oauth;
};

/* An idle session costs this struct, its bufferevent (~600 bytes in libevent
 * 2.1), two evbuffers and their callbacks: issue 11 holds it to 2 KB a
 * connection (bench/scale.py measured 1.6 KB at 19,500). Per-session state
 * that only some sessions need (SASL, milters) lives behind a pointer. */
_Static_assert(sizeof(struct session) <= 512, "struct session outgrew its idle-memory budget");

/* Sessions without auth_setup: no users, no mechanisms (as a zeroed config). */
static const struct sasl_config no_sasl_config;

static const struct sasl_config *sasl_cfg_of(const struct session *s)
{
	return s->auth_cfg ? &s->auth_cfg->sasl : &no_sasl_config;
}

struct srv_worker {
	struct smtp_server *srv;
	struct worker *w;
	struct session *sessions;
	struct evconnlistener *listeners[MAX_LISTENERS_PER_WORKER];
	bool listener_submission[MAX_LISTENERS_PER_WORKER];
	enum conf_listen_tls listener_tls[MAX_LISTENERS_PER_WORKER];
	size_t n_listeners;
	uint64_t next_serial;
	bool shutting_down;
};

struct smtp_server {
	SSL_CTX *tls;
	struct policy *policy;
	struct pool *auth_pool;    /* sasl_verify (crypt, PBKDF2) runs here */
	struct throttle *throttle; /* failed logins, over every worker */
	struct pool *verify_pool;  /* TRUST: verify.c hashes large bodies here */
	struct pool *spill_pool;   /* SPILL: large messages are written to their files here */
	struct spool *spool;
	struct scheduler *sched;
	struct srv_worker *workers[64];
	size_t n_workers;
	_Atomic size_t n_sessions;
	_Atomic uint64_t inflight;  /* sum of tx->charged: memory of messages being received */
	_Atomic bool stopping;      /* smtp_server_shutdown was called */
	atomic_flag drained_logged; /* event=smtp_drained is logged once */
	struct peer_counts *peers;  /* connections per client address (max_connections_per_ip) */
};

/* ---------------------------------------------------------------- chaos */

static pthread_mutex_t chaos_lock = PTHREAD_MUTEX_INITIALIZER;
static struct smtp_chaos chaos;
/* smtp_capture_set_login: set once before the listeners start */
static int (*capture_login)(void *arg, const char *login, const char *password);
static void *capture_login_arg;
static bool capture_starttls_first; /* smtp_capture_require_starttls */

void smtp_chaos_set(const struct smtp_chaos *c)
{
	pthread_mutex_lock(&chaos_lock);
	chaos = *c;
	pthread_mutex_unlock(&chaos_lock);
}

void smtp_chaos_get(struct smtp_chaos *out)
{
	pthread_mutex_lock(&chaos_lock);
	*out = chaos;
	pthread_mutex_unlock(&chaos_lock);
}

static _Atomic uint64_t count_accepted, count_accepted_size, count_rejected;

void smtp_counters_get(struct smtp_counters *out)
{
	out->accepted = atomic_load(&count_accepted);
	out->accepted_size = atomic_load(&count_accepted_size);
	out->rejected = atomic_load(&count_rejected);
}

/* Returns the reply code a chaos trigger picks for this command, or 0. */
static int chaos_roll(const struct smtp_chaos_trigger *which_in_global)
{
	pthread_mutex_lock(&chaos_lock);
	struct smtp_chaos_trigger t = *which_in_global;
	pthread_mutex_unlock(&chaos_lock);
	if (t.error_code < 400 || t.error_code > 599 || t.probability == 0)
		return 0;
	unsigned r = (unsigned)(random() % 100);
	if (r >= t.probability)
		return 0;
	atomic_fetch_add(&count_rejected, 1);
	return t.error_code;
}

/* ------------------------------------------------------------- replies */

/* Longer than any reply we write (the longest argument is a HELO name of
 * SMTP_ARG_MAX bytes); a longer one would be cut, never overrun. */
#define REPLY_LINE_MAX 2048

/* Queues one line of entry id (reply.c), with code (0: the entry's), more
 * (a line of a multi-line reply follows) and its n arguments. */
static void reply_line(struct session *s, enum smtp_reply_id id, int code, bool more, size_t n,
                       const char *const *args)
{
	char line[REPLY_LINE_MAX + 2];
	size_t len = smtp_reply_format(line, REPLY_LINE_MAX, id, code, more, args, n);
	if (len >= REPLY_LINE_MAX)
		len = REPLY_LINE_MAX - 1;
	line[len] = '\r';
	line[len + 1] = '\n';
	/* A whole reply, on a plain session with no pipelined command waiting:
	 * straight to the socket (a multi-line reply's lines go out together). */
	wire_out(s->bev, worker_batch(s->sw->w),
	         !more && !s->tls_active &&
	             evbuffer_get_length(bufferevent_get_input(s->bev)) <= s->cmd_bytes,
	         line, len + 2);
	if (!more)
		smtp_metrics_reply(line[0]);
}

static void reply(struct session *s, enum smtp_reply_id id)
{
	reply_line(s, id, 0, false, 0, NULL);
}

/* reply_args(s, id, "a", "b"): an entry with arguments (as many as its "%s"). */
#define REPLY_ARGV(...) ((const char *const[]){__VA_ARGS__})
#define reply_args(s, id, ...)                                                                     \
	reply_line((s), (id), 0, false, sizeof(REPLY_ARGV(__VA_ARGS__)) / sizeof(const char *),    \
	           REPLY_ARGV(__VA_ARGS__))

/* The 220/221/421 replies name our host first (RFC 5321 §4.2). */
static void reply_host(struct session *s, enum smtp_reply_id id)
{
	reply_args(s, id, s->conf->hostname);
}

/* The same reply as a line with its CRLF in text (REPLY_LINE_MAX bytes), for
 * writes that go around the bufferevents; returns its length. */
static size_t host_line(char text[REPLY_LINE_MAX], enum smtp_reply_id id, const char *hostname)
{
	size_t n =
	    smtp_reply_format(text, REPLY_LINE_MAX - 2, id, 0, false, REPLY_ARGV(hostname), 1);
	if (n > REPLY_LINE_MAX - 3)
		n = REPLY_LINE_MAX - 3;
	memcpy(text + n, "\r\n", 2);
	return n + 2;
}

/* A reply written elsewhere as a whole line (a policy verdict, policy.h). */
static void reply_verbatim(struct session *s, const char *line)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	evbuffer_add(out, line, strlen(line));
	evbuffer_add(out, "\r\n", 2);
	smtp_metrics_reply(line[0]);
}

static void reply_size_exceeded(struct session *s)
{
	char n[24];
	snprintf(n, sizeof(n), "%llu", (unsigned long long)s->conf->limits.max_message_size);
	reply_args(s, SMTP_R_SIZE_EXCEEDED, n);
}

/* --------------------------------------------------------------- states */

/*
 * The only writer of s->state. A change the table does not allow is a bug
 * here (test builds abort); the change is made all the same, so a release
 * build goes on with what the caller meant.
 */
static void session_enter_state(struct session *s, enum session_state to)
{
	enum session_state from = s->state;
	if (from == to)
		return;
	(void)TERN_BUG_ON(!(states[from].next & TO(to)));
	log_debug("event=state sess=%u.%llu from=%s to=%s", worker_index(s->sw->w),
	          (unsigned long long)s->serial, states[from].name, states[to].name);
	s->state = to;
}

/* The facts of the current state agree with the session (checked before
 * every command): the state is derived from them, never the other way. */
static void session_check_facts(const struct session *s)
{
	unsigned f = states[s->state].facts;
	const struct tx *t = s->tx;
	(void)TERN_BUG_ON(!(f & HAS_HELO) != !s->helo || !(f & HAS_TX) != !t ||
	                  !(f & HAS_RCPT) != !(t && t->n_rcpts > 0) ||
	                  !(f & HAS_BDAT) != !(t && t->bdat_started));
}

static void session_free(struct session *s);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void restore_idle_timeouts(struct session *s);

/* ------------------------------------------------------------- closing */

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
		/* the filter took the final reply; the socket has it next */
		tls_close_begin(&s->tlsc, worker_base(s->sw->w), s->bev, tls_closed, s);
	else
		session_free(s);
}

/* Queues nothing more; frees the session once the output is written. */
static void session_close_after_flush(struct session *s, const char *reason)
{
	char q[128];
	log_info("event=disconnect sess=%u.%llu client=%s reason=%s messages=%u",
		 worker_index(s->sw->w), (unsigned long long)s->serial, s->peer,
		 log_quote(reason, strlen(reason), q, sizeof(q)), s->n_msgs);
	session_enter_state(s, SS_CLOSING);
	s->out_blocked = false;
	bufferevent_disable(s->bev, EV_READ);
	bufferevent_setcb(s->bev, NULL, on_write_closing, on_event, s);
	bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
	bufferevent_enable(s->bev, EV_WRITE);
	/* A short write timeout so a peer that stops reading cannot pin us.
	 * Callers always queue a final reply first, so the write callback fires. */
	struct timeval tv = {10, 0};
	bufferevent_set_timeouts(s->bev, NULL, &tv);
}

/* Counts a client error; true if the session was closed for too many. */
static bool count_error(struct session *s)
{
	if (++s->errors >= s->conf->limits.max_errors) {
		reply_host(s, SMTP_R_TOO_MANY_ERRORS);
		session_close_after_flush(s, "too-many-errors");
		return true;
	}
	return false;
}

/* ---------------------------------------------------------------- POLICY */

/*
 * The abuse defences of mx listeners (DNSBL, early talkers, reverse DNS,
 * greylisting, rate limits) live in src/policy/. These are the server's
 * only contact points with them: connect (the greeting may wait), MAIL,
 * RCPT, the Received header and session_free, each marked "POLICY:".
 */

static void process_input(struct session *s);

/* MILTER: the hooks (defined with the milter block below). Each returns
 * true when it asked the milters: the reply then waits for milter_done. */
static bool milter_connect(struct session *s);
static bool milter_helo(struct session *s);
static bool milter_mail(struct session *s, struct tx *t);
static bool milter_rcpt(struct session *s, struct tx *t, const char *addr);
static bool milter_message(struct session *s, struct tx *t);
static void milter_abort(struct session *s);
static void milter_listener_of(struct session *s, struct evconnlistener *l);

static void greet(struct session *s)
{
	if (milter_connect(s))
		return; /* MILTER: the greeting waits for the connect step */
	reply_host(s, SMTP_R_GREETING);
	session_enter_state(s, SS_GREETED);
}

/* A MAIL or RCPT verdict; true if the command was refused (reply sent). */
static bool policy_refused_command(struct session *s, const struct policy_verdict *v)
{
	if (v->action == POLICY_PASS)
		return false;
	reply_verbatim(s, v->reply);
	if (v->action == POLICY_CLOSE)
		session_close_after_flush(s, "policy");
	return true;
}

/* The connect-time verdict: the greeting, a 554 instead of it, or a close. */
static void policy_greet_done(void *arg, const struct policy_verdict *v)
{
	struct session *s = arg;
	if (s->state != SS_CONNECTED)
		return; /* closing already (a timeout while the greeting waited) */
	if (v->action == POLICY_CLOSE) {
		reply_verbatim(s, v->reply);
		session_close_after_flush(s, "policy");
		return;
	}
	if (v->action == POLICY_REFUSE) {
		reply_verbatim(s, v->reply);
		session_enter_state(s, SS_REFUSED);
	} else {
		greet(s);
	}
	process_input(s); /* what the client sent meanwhile (pregreet action "ignore") */
}

/* At accept: starts the checks; greets now, or once they are done. */
static void policy_at_connect(struct session *s, bool mx)
{
	struct policy_verdict v = {.action = POLICY_PASS};
	if (mx) {
		char sess[48];
		snprintf(sess, sizeof(sess), "%u.%llu", worker_index(s->sw->w),
		         (unsigned long long)s->serial);
		s->pol = policy_connect(s->sw->srv->policy, s->sw->w, s->conf, &s->peer_sa, sess,
		                        policy_greet_done, s, &v);
	}
	switch (v.action) {
	case POLICY_WAIT:
		if (v.reply[0])
			reply_verbatim(s, v.reply);
		/* SS_CONNECTED still: reading goes on, so early talk is seen */
		break;
	case POLICY_CLOSE:
		reply_verbatim(s, v.reply);
		session_close_after_flush(s, "policy");
		break;
	default:
		greet(s);
		break;
	}
}

/* --------------------------------------------------------- transactions */

static void budget_release(struct tx *t);

static void tx_free(struct tx *t)
{
	if (!t)
		return;
	budget_release(t);
	free(t->sender);
	free(t->envid);
	free(t->auth_param);
	for (size_t i = 0; i < t->n_rcpts; i++) {
		free(t->rcpts[i].addr);
		free(t->rcpts[i].orcpt);
	}
	free(t->rcpts);
	smtp_verify_free(t->vfy, &t->msg); /* TRUST: cancels its checks (RSET, MAIL, QUIT, close) */
	smtp_sign_result_clear(&t->sign);
	tbuf_free(&t->msg);
	/* SPILL: the file goes unless committed; the mapping after any check's
	 * job already queued on the verify pool */
	data_stream_free(t->ds, t->srv->verify_pool);
	free(t);
}

static void tx_reset(struct session *s)
{
	if (s->tx)
		milter_abort(s); /* MILTER: the milters forget the transaction too */
	tx_free(s->tx);
	s->tx = NULL;
}

/* The transaction is over (RSET, HELO/EHLO, the reply after its end, a
 * refused message): back between transactions. Without one, nothing
 * changes. */
static void tx_end(struct session *s)
{
	if (!s->tx)
		return;
	tx_reset(s);
	session_enter_state(s, SS_HELO);
}

static int tx_add_rcpt(struct tx *t, const char *addr, const char *orcpt, unsigned notify,
		       bool local)
{
	for (size_t i = 0; i < t->n_rcpts; i++)
		if (strcmp(t->rcpts[i].addr, addr) == 0)
			return TERN_OK; /* an alias may name someone twice: deliver once */
	if (t->n_rcpts == t->cap_rcpts) {
		size_t ncap = t->cap_rcpts ? t->cap_rcpts * 2 : 4;
		struct tx_rcpt *n = realloc(t->rcpts, ncap * sizeof(*n));
		if (!n)
			return TERN_ENOMEM;
		t->rcpts = n;
		t->cap_rcpts = ncap;
	}
	/* Both copies or neither: a recipient without its ORCPT would lose what
	 * the DSN must report, and a half-built entry is not counted in
	 * n_rcpts, so tx_free would never free it. */
	char *a = tern_strdup(addr);
	char *o = orcpt && *orcpt ? tern_strdup(orcpt) : NULL;
	if (!a || (orcpt && *orcpt && !o)) {
		free(a);
		free(o);
		return TERN_ENOMEM;
	}
	struct tx_rcpt *r = &t->rcpts[t->n_rcpts];
	r->addr = a;
	r->orcpt = o;
	r->notify = notify;
	r->local = local;
	t->n_rcpts++;
	return TERN_OK;
}

/* --------------------------------------------------------------- budget */

/*
 * limits.inflight_memory: one budget for the memory every message being
 * received holds (its buffer, from DATA/BDAT to the reply after its end),
 * over all sessions and workers. A message is charged for its buffer's
 * capacity before the buffer grows, so the sum never passes the limit;
 * when it would, the message gets 452 4.3.1 and its memory goes back at
 * once. The charge is released when the transaction ends (tx_free).
 * A message alone is never refused: with a budget under max_message_size
 * messages are received one at a time rather than never, so memory stays
 * under the larger of the two.
 */

/* The capacity b will have once extra more bytes are appended: tbuf grows
 * by doubling from 64 up to max + 1 (core/buf.c); an upper bound if it
 * ever grows by less. */
static uint64_t msg_cap_after(const struct tbuf *b, uint64_t extra)
{
	uint64_t need = (uint64_t)b->len + extra + 1, cap = b->cap ? b->cap : 64;
	uint64_t top = (uint64_t)b->max + 1;
	while (cap < need && cap < top)
		cap *= 2;
	if (cap > top)
		cap = top;
	return cap > b->cap ? cap : b->cap;
}

/* Raises *slot (t->charged or t->copies) to want bytes, charging the
 * difference to the server's budget; false, with nothing charged, if the
 * budget cannot cover it (a message alone, with its copies, always fits). */
static bool budget_raise(struct session *s, struct tx *t, uint64_t *slot, uint64_t want)
{
	if (want <= *slot)
		return true;
	uint64_t delta = want - *slot, limit = s->conf->limits.inflight_memory;
	_Atomic uint64_t *in = &t->srv->inflight;
	uint64_t cur = atomic_load(in);
	do {
		bool alone = cur == t->charged + t->copies;
		if (!alone && (cur > limit || delta > limit - cur))
			return false;
	} while (!atomic_compare_exchange_weak(in, &cur, cur + delta));
	*slot = want;
	return true;
}

/* Raises the charge of t for its message to want bytes. */
static bool budget_charge(struct session *s, struct tx *t, uint64_t want)
{
	return budget_raise(s, t, &t->charged, want);
}

/* Charges t for the whole-message copies the milter stage makes (the
 * milter client's body, the rewritten message): want bytes on top of
 * msg's, until budget_copies_release. */
static bool budget_copies(struct session *s, struct tx *t, uint64_t want)
{
	return budget_raise(s, t, &t->copies, want);
}

static void budget_copies_release(struct tx *t)
{
	if (t->copies) {
		atomic_fetch_sub(&t->srv->inflight, t->copies);
		t->copies = 0;
	}
}

/* Charges t for appending extra bytes to its message buffer. */
static bool budget_reserve(struct session *s, struct tx *t, uint64_t extra)
{
	return budget_charge(s, t, msg_cap_after(&t->msg, extra));
}

static void budget_release(struct tx *t)
{
	budget_copies_release(t);
	if (t->charged) {
		atomic_fetch_sub(&t->srv->inflight, t->charged);
		t->charged = 0;
	}
}

/* At DATA or the first BDAT, before the buffer exists: room for our
 * Received header, and (only checked, charged as it comes) for the size
 * the client declared, so it hears 452 now rather than after sending all. */
static bool budget_start(struct session *s, struct tx *t)
{
	uint64_t limit = s->conf->limits.inflight_memory;
	uint64_t cur = atomic_load(&t->srv->inflight);
	if (t->declared_size && cur > 0 && (cur > limit || t->declared_size > limit - cur))
		return false;
	return budget_charge(s, t, RECEIVED_HEADER_MAX);
}

/* A message refused for the budget: logged and counted once. */
static void budget_refused(struct session *s, const struct tx *t)
{
	char qid[QUEUE_ID_LEN + 8];
	snprintf(qid, sizeof(qid), "%s%s", t->id[0] ? " id=" : "", t->id);
	log_warn("event=rejected sess=%u.%llu%s client=%s code=452 reason=inflight-memory "
	         "limit=%llu",
	         worker_index(s->sw->w), (unsigned long long)s->serial, qid, s->peer,
	         (unsigned long long)s->conf->limits.inflight_memory);
	atomic_fetch_add(&count_rejected, 1);
}

/* The budget ran out in the middle of a message: its memory goes back
 * now, the rest of its bytes are read and dropped, 452 follows its end. */
static void budget_exceeded(struct session *s, struct tx *t)
{
	t->over_budget = true;
	tbuf_free(&t->msg);
	budget_release(t);
	budget_refused(s, t);
}

static void reply_over_budget(struct session *s)
{
	reply(s, SMTP_R_OVER_BUDGET);
}

/* ---------------------------------------------------------------- SPILL */

/*
 * Messages of any size in bounded memory (issue 11 item 2; the design is
 * in queue/spill.h and smtp/data_stream.h). Up to SPILL_THRESHOLD bytes a
 * message is received as always. Past it the client's bytes go to their
 * own file in chunks of about SPILL_CHUNK, written on spill_pool; while a
 * chunk is being written and the next is full, reading stops
 * (spill_wait) until spill_resume. msg keeps our trace fields and the
 * client's header block, which the end-of-data checks may rewrite; they
 * read the whole message through a read-only mapping of the synced file
 * (msg_view). Capture mode never spills (its store keeps the bytes).
 */

static void finish_message(struct session *s);
static void after_message(struct session *s);
static void spill_resume(void *arg);

static bool spill_allowed(const struct session *s)
{
	return s->sw->srv->spill_pool && s->sw->srv->spool && !s->conf->capture_mode &&
	       !(s->tx && s->tx->no_spill);
}

/* Stops reading until the writer has caught up (spill_resume). */
static void spill_wait_start(struct session *s)
{
	s->spill_wait = true;
	bufferevent_disable(s->bev, EV_READ);
}

/* The message will get 552: the rest of its bytes are read and dropped. */
static void spill_too_big(struct tx *t)
{
	if (t->bdat_started)
		t->bdat_failed = true;
	else
		t->dp.too_big = true;
}

/* Hands what msg holds past the kept part (our trace fields and, once
 * known, the client's header block) to the writer; the kept part moves to
 * a fresh buffer so the session's memory stays small. */
static bool spill_push(struct session *s, struct tx *t, bool final)
{
	size_t from = t->hdr_len + t->hb_len;
	if (!t->spilled) {
		/* The first chunk: the client's header block (up to its empty
		 * line) stays in msg, where the checks at the end may rewrite it. */
		const char *c = t->msg.data + t->hdr_len;
		size_t n = t->msg.len - t->hdr_len;
		size_t hb = 0;
		if (n >= 2 && c[0] == '\r' && c[1] == '\n') {
			hb = 2;
		} else {
			const char *e = memmem(c, n, "\r\n\r\n", 4);
			hb = e ? (size_t)(e - c) + 4 : 0;
		}
		if (hb == 0) {
			/* No end of the header section in the first SPILL_THRESHOLD
			 * bytes: the header block must stay in memory (the checks
			 * rewrite it), so this is a header section too large. */
			log_info("event=rejected id=%s client=%s code=552 reason=header-too-big "
			         "limit=%u",
			         t->id, s->peer, (unsigned)SPILL_THRESHOLD);
			spill_too_big(t);
			return false;
		}
		t->hb_len = hb;
		t->spill_off = hb;
		from = t->hdr_len;
		if (t->bdat_started) /* BDAT: what DATA's parser would have noted */
			smtp_scan_headers(c, n, &t->dp.received_count, &t->dp.has_8bit);
	}
	size_t keep = t->hdr_len + t->hb_len, len = 0, max = t->msg.max;
	char *old = tbuf_steal(&t->msg, &len);
	tbuf_init(&t->msg, max);
	if (!old || tbuf_append(&t->msg, old, keep) != TERN_OK) {
		free(old);
		t->spill_err = TERN_ENOMEM;
		return false;
	}
	size_t n = len - from;
	if (t->bdat_started && t->body != SMTP_BODY_BINARYMIME) {
		data_line_scan_feed(&t->lscan, old + from, n);
		if (final) {
			data_line_scan_end(&t->lscan);
			t->dp.bare_eol = t->lscan.bare_eol;
			t->dp.has_nul = t->lscan.has_nul;
		}
	}
	int rc = data_stream_push(t->ds, old, from, n, final);
	if (rc != TERN_OK) {
		t->spill_err = rc;
		return false;
	}
	t->spilled += n;
	return true;
}

/*
 * Before incoming more bytes go into msg: starts spilling when msg would
 * pass SPILL_THRESHOLD, hands a full chunk to the writer. False when the
 * writer is still busy with the previous chunk: reading stopped.
 */
static bool spill_room(struct session *s, struct tx *t, size_t incoming)
{
	if (t->over_budget || t->dp.too_big || t->bdat_failed || t->spill_err)
		return true;
	/* spilling: a chunk past what msg keeps (a large header block must
	 * not make every read a write, nor be copied for each) */
	size_t limit = t->ds ? t->hdr_len + t->hb_len + SPILL_CHUNK : SPILL_THRESHOLD;
	if (t->msg.len + incoming + 16 <= limit || t->msg.len <= t->hdr_len + t->hb_len)
		return true;
	if (!t->ds) {
		if (!spill_allowed(s))
			return true;
		int rc =
		    data_stream_open(spool_dir(s->sw->srv->spool), t->id, s->sw->srv->spill_pool,
		                     s->sw->w, spill_resume, s, &t->ds);
		if (rc != TERN_OK) {
			/* Kept in memory as before spilling existed (up to
			 * max_message_size), rather than refused. */
			log_warn("event=spill_unavailable id=%s reason=%s", t->id,
			         tern_strerror(rc));
			t->no_spill = true;
			return true;
		}
	}
	if (data_stream_busy(t->ds)) {
		spill_wait_start(s);
		return false;
	}
	if (data_stream_error(t->ds) && !t->spilled) {
		/* SPILL: the file could not be made (on the pool): kept in
		 * memory as before spilling existed, rather than refused. */
		log_warn("event=spill_unavailable id=%s reason=%s", t->id,
		         tern_strerror(data_stream_error(t->ds)));
		data_stream_free(t->ds, NULL);
		t->ds = NULL;
		t->no_spill = true;
		return true;
	}
	if (data_stream_error(t->ds)) {
		t->spill_err = data_stream_error(t->ds);
		return true;
	}
	(void)spill_push(s, t, false);
	return true;
}

/* A spilled message counts every byte against max_message_size. */
static void spill_check_size(struct session *s, struct tx *t)
{
	if (t->ds && !t->dp.too_big &&
	    t->spilled + (t->msg.len - t->hdr_len - t->hb_len) > s->conf->limits.max_message_size)
		spill_too_big(t);
}

/* The last chunk and the sync, then the end-of-data stages; each step
 * waits for the writer as needed (spill_resume calls again). */
static void spill_finish_step(struct session *s)
{
	struct tx *t = s->tx;
	if (data_stream_busy(t->ds))
		return;
	if (!t->spill_final && !data_stream_error(t->ds) && !t->spill_err) {
		t->spill_final = true;
		if (spill_push(s, t, true))
			return;
	}
	if (!t->spill_err)
		t->spill_err = data_stream_error(t->ds);
	s->spill_wait = false;
	finish_message(s);
	after_message(s);
}

/* True when end of data has to wait for the writer (the message is
 * spilled): spill_finish_step goes on. */
static bool spill_at_end(struct session *s, struct tx *t)
{
	if (!t->ds || t->over_budget || t->dp.too_big || t->bdat_failed || t->spill_err)
		return false;
	t->spill_end = true;
	spill_wait_start(s);
	bufferevent_set_timeouts(s->bev, NULL, NULL);
	spill_finish_step(s);
	return true;
}

/* The writer finished a chunk (on the session's worker). */
static void spill_resume(void *arg)
{
	struct session *s = arg;
	if (!s->spill_wait || !s->tx)
		return;
	if (s->tx->spill_end) {
		spill_finish_step(s);
		return;
	}
	s->spill_wait = false;
	if (s->out_blocked)
		return; /* on_write resumes reading */
	bufferevent_enable(s->bev, EV_READ);
	process_input(s);
}

/* The client's message for the checks at its end: in msg, or (spilled)
 * through a mapping of its synced file. False: refused with 451 (done). */
static bool msg_view(struct session *s, struct tx *t, const char **p, size_t *n)
{
	if (!t->ds) {
		*p = t->msg.data + t->hdr_len;
		*n = t->msg.len - t->hdr_len;
		return true;
	}
	if (data_stream_synced(t->ds) && data_stream_map(t->ds, p, n) == TERN_OK)
		return true;
	log_error("event=spool_failed id=%s client=%s reason=\"cannot map the spill file\"", t->id,
	          s->peer);
	reply(s, SMTP_R_NOMEM);
	tx_end(s);
	return false;
}

/* ------------------------------------------------------------- commands */

static void process_input(struct session *s);

/*
 * What a command needs before it may run. The command table (`commands`,
 * after the handlers) gives each verb its flags; command_allowed() is the
 * one place they are checked, in a fixed order, and each unmet need has
 * its own reply (reply.c). Handlers check only what depends on their
 * arguments.
 */
#define CMD_NEEDS_HELO 0x0001u               /* HELO or EHLO first */
#define CMD_NEEDS_EHLO 0x0002u               /* EHLO, not HELO, first */
#define CMD_NEEDS_TX 0x0004u                 /* an open transaction: MAIL first */
#define CMD_NEEDS_RCPT 0x0008u               /* a recipient: RCPT first */
#define CMD_NOT_IN_TX 0x0010u                /* no transaction open */
#define CMD_NOT_IN_BDAT 0x0020u              /* not once BDAT has begun the message */
#define CMD_NOT_AFTER_TLS 0x0040u            /* not once TLS is active */
#define CMD_NOT_AFTER_AUTH 0x0080u           /* not once authenticated */
#define CMD_NEEDS_AUTH_ON_SUBMISSION 0x0100u /* AUTH first where the listener requires it */
#define CMD_AFTER_REFUSAL 0x0200u            /* accepted after a 554 greeting (QUIT only) */
#define CMD_HAS_CHUNK 0x0400u                /* bytes follow the line whatever we answer (BDAT) */

struct command {
	const char *name; /* the verb, in replies */
	unsigned flags;   /* CMD_* */
	/* NULL, or whether the command is offered to this session at all; when
	 * it is not, the client gets not_offered before any sequence check. */
	bool (*offered)(const struct session *s);
	enum smtp_reply_id not_offered;
	void (*handler)(struct session *s, const struct smtp_cmd *c);
};

static bool tls_offered(const struct session *s)
{
	/* TLS: the listener's mode and a context loaded; inside TLS (implicit
	 * too) the answer is "already active" rather than "not offered". */
	return s->offer_starttls || s->tls_active;
}

/* AUTH exists on submission listeners (users of the users file, OAuth
 * tokens) and in capture mode (any credentials); an mx listener answers
 * 502. */
static bool auth_offered(const struct session *s)
{
	return s->conf->capture_mode || s->submission;
}

/* Whether EHLO announces AUTH: on a submission listener only inside TLS
 * (RFC 4954 §4: no password in clear), unless auth.allow_plaintext. */
static bool auth_advertised(const struct session *s)
{
	if (s->conf->capture_mode)
		return true;
	return s->submission && (s->tls_active || s->conf->auth.allow_plaintext);
}

/*
 * CMD_NEEDS_AUTH_ON_SUBMISSION: whether this session may send MAIL only
 * after AUTH (530 5.7.0 otherwise, RFC 4954 §6). Every client of a
 * submission listener, relay.networks included: the listener is for
 * people's mail programs, and the login is what names the sender.
 */
static bool auth_required(const struct session *s)
{
	if (s->conf->capture_mode)
		return capture_login != NULL; /* Mailpit with --smtp-auth-file */
	return s->submission;
}

/*
 * The one sequence check: the command's flags against the session's state.
 * True if the command may run now; if not, the reply is sent, the error
 * counted, and the chunk of a BDAT skipped (RFC 3030 §4: it follows its
 * line whatever the answer, and its bytes are never commands).
 */
static bool command_allowed(struct session *s, const struct command *cmd, const struct smtp_cmd *c)
{
	session_check_facts(s);
	unsigned f = cmd->flags, has = states[s->state].facts;
	enum smtp_reply_id why;
	if (s->state == SS_REFUSED && !(f & CMD_AFTER_REFUSAL))
		why = SMTP_R_ONLY_QUIT; /* POLICY: after a 554 greeting (RFC 5321 §3.1) */
	else if (cmd->offered && !cmd->offered(s))
		why = cmd->not_offered;
	else if ((f & CMD_NOT_AFTER_TLS) && s->tls_active)
		why = SMTP_R_TLS_ACTIVE;
	else if ((f & CMD_NOT_AFTER_AUTH) && s->authenticated)
		why = SMTP_R_ALREADY_AUTHENTICATED;
	else if ((f & CMD_NEEDS_HELO) && !(has & HAS_HELO))
		why = SMTP_R_NEED_HELO;
	else if ((f & CMD_NEEDS_EHLO) && !s->esmtp)
		why = SMTP_R_NEED_EHLO;
	else if ((f & CMD_NOT_IN_TX) && (has & HAS_TX))
		why = SMTP_R_IN_TRANSACTION;
	else if ((f & CMD_NEEDS_TX) && !(has & HAS_TX))
		why = SMTP_R_NEED_MAIL;
	else if ((f & CMD_NEEDS_RCPT) && !(has & HAS_RCPT))
		why = SMTP_R_NEED_RCPT;
	else if ((f & CMD_NOT_IN_BDAT) && (has & HAS_BDAT))
		why = SMTP_R_AFTER_BDAT;
	else if ((f & CMD_NEEDS_AUTH_ON_SUBMISSION) && auth_required(s) && !s->authenticated)
		why = SMTP_R_AUTH_REQUIRED;
	else
		return true;
	if (f & CMD_HAS_CHUNK)
		s->skip_bytes = c->chunk_size;
	if (smtp_reply_def(why)->nargs)
		reply_args(s, why, cmd->name);
	else
		reply(s, why);
	count_error(s);
	return false;
}

static void helo_reply(struct session *s);

static void cmd_helo(struct session *s, const struct smtp_cmd *c)
{
	char *helo = tern_strdup(c->arg);
	if (!helo) {
		reply(s, SMTP_R_NOMEM); /* and the session stays as it was */
		return;
	}
	tx_reset(s);
	free(s->helo);
	s->helo = helo;
	s->esmtp = c->verb == SMTP_EHLO;
	session_enter_state(s, SS_HELO);
	if (milter_helo(s))
		return; /* MILTER: helo_reply once the milters agree */
	helo_reply(s);
}

/* The answer to HELO/EHLO accepted (s->esmtp says which). */
static void helo_reply(struct session *s)
{
	if (!s->esmtp) {
		reply_host(s, SMTP_R_HELO);
		return;
	}
	/* The EHLO keywords (RFC 5321 §4.1.1.1), one per line after the first. */
	char size[32];
	snprintf(size, sizeof(size), "SIZE %llu",
	         (unsigned long long)s->conf->limits.max_message_size);
	const char *kw[12];
	size_t n = 0;
	kw[n++] = "PIPELINING";
	kw[n++] = size;
	kw[n++] = "8BITMIME";
	kw[n++] = "SMTPUTF8";
	kw[n++] = "ENHANCEDSTATUSCODES";
	kw[n++] = "CHUNKING";
	kw[n++] = "BINARYMIME";
	if (tls_offered(s) && !s->tls_active)
		kw[n++] = "STARTTLS";
	char auth_kw[128] = "AUTH PLAIN LOGIN"; /* capture mode takes those two */
	if (auth_advertised(s) && !s->conf->capture_mode)
		sasl_mech_list(sasl_cfg_of(s), auth_kw + 5, sizeof(auth_kw) - 5);
	if (auth_advertised(s) && auth_kw[5])
		kw[n++] = auth_kw;
	kw[n++] = "DSN";
	reply_line(s, SMTP_R_EHLO, 0, true, 3, REPLY_ARGV(s->conf->hostname, s->helo, s->peer));
	struct evbuffer *out = bufferevent_get_output(s->bev);
	for (size_t i = 0; i < n; i++)
		evbuffer_add_printf(out, "250%c%s\r\n", i + 1 < n ? '-' : ' ', kw[i]);
	smtp_metrics_reply('2');
}

/* A chaos trigger's reply (capture mode): the operator's code, the
 * enhanced code of its class. */
static void reply_chaos(struct session *s, int code, enum smtp_reply_id temp,
                        enum smtp_reply_id perm)
{
	reply_line(s, code >= 500 ? perm : temp, code, false, 0, NULL);
}

/*
 * Submission: an authenticated user sends only as addresses it owns
 * (RFC 6409 §6.1; conf_may_send_as: itself, its aliases, senders). The
 * null sender is allowed: mail programs send read receipts (MDN, RFC 8098)
 * and vacation notices with it, and a bounce cannot be abused to put
 * someone else's address on a message. True if MAIL was refused here.
 */
static bool sender_refused(struct session *s, const struct smtp_cmd *c)
{
	if (!s->submission || !s->authenticated || s->conf->capture_mode || c->path.null_path)
		return false;
	if (conf_may_send_as(s->conf, s->auth_user, c->path.addr))
		return false;
	char qf[LOG_ADDR_MAX], qu[SASL_ID_MAX * 4 + 8];
	log_info("event=rejected sess=%u.%llu client=%s user=%s from=%s code=553 "
	         "reason=sender-not-owned",
	         worker_index(s->sw->w), (unsigned long long)s->serial, s->peer,
	         log_quote(s->auth_user, strlen(s->auth_user), qu, sizeof(qu)),
	         log_quote_addr(c->path.addr, qf, sizeof(qf)));
	reply_args(s, SMTP_R_SENDER_NOT_OWNED, s->auth_user);
	return true;
}

/* TRUST: the checks of received mail (verify.c) start with the transaction. */
static void verify_at_mail(struct session *s, struct tx *t)
{
	char sess[48];
	snprintf(sess, sizeof(sess), "%u.%llu", worker_index(s->sw->w),
	         (unsigned long long)s->serial);
	struct smtp_verify_params vp = {
	    .conf = s->conf,
	    .policy = s->sw->srv->policy,
	    .w = s->sw->w,
	    .pool = s->sw->srv->verify_pool,
	    .peer = &s->peer_sa,
	    .helo = s->helo,
	    .sender = t->sender,
	    .sess = sess,
	    .mx = !s->submission,
	    .authenticated = s->authenticated,
	};
	t->vfy = smtp_verify_start(&vp);
}

/* The mailbox MAIL's AUTH= names for a logged-in user who gave none: its
 * login, completed with our host name when it is not an address. */
static char *auth_identity(const struct session *s)
{
	if (strchr(s->auth_user, '@'))
		return tern_strdup(s->auth_user);
	size_t n = strlen(s->auth_user) + strlen(s->conf->hostname) + 2;
	char *a = malloc(n);
	if (a)
		snprintf(a, n, "%s@%s", s->auth_user, s->conf->hostname);
	return a;
}

/* Submission: the user's and its sender domain's sending quotas
 * (smtp/quota_stage.h); true if MAIL was refused here with 452 4.7.1. */
static bool over_quota(struct session *s, const struct smtp_cmd *c)
{
	char line[400], qu[SASL_ID_MAX * 4 + 8];
	if (!s->submission || !s->authenticated || !s->auth_user || s->conf->capture_mode ||
	    !smtp_quota_refuse(s->conf, s->auth_user, c->path.null_path ? "" : c->path.addr, line,
	                       sizeof(line)))
		return false;
	log_info("event=rejected sess=%u.%llu client=%s user=%s code=452 reason=quota",
	         worker_index(s->sw->w), (unsigned long long)s->serial, s->peer,
	         log_quote(s->auth_user, strlen(s->auth_user), qu, sizeof(qu)));
	reply_verbatim(s, line);
	return true;
}

static void cmd_mail(struct session *s, const struct smtp_cmd *c)
{
	if (s->conf->capture_mode && capture_starttls_first && !s->tls_active) {
		reply(s, SMTP_R_STARTTLS_FIRST); /* Mailpit's --smtp-require-starttls */
		return;
	}
	if (c->path.utf8 && !c->smtputf8) {
		reply(s, SMTP_R_SENDER_NEEDS_SMTPUTF8);
		return;
	}
	if (c->smtputf8 && !s->esmtp) {
		reply(s, SMTP_R_SMTPUTF8_NEEDS_EHLO);
		return;
	}
	if (c->has_size && c->size > s->conf->limits.max_message_size) {
		reply_size_exceeded(s);
		return;
	}
	if (c->auth_param[0] && !auth_offered(s)) {
		reply(s, SMTP_R_MAIL_AUTH_NOT_OFFERED); /* RFC 4954 §5 is part of AUTH */
		count_error(s);
		return;
	}
	if (sender_refused(s, c) || over_quota(s, c))
		return;
	if (s->conf->capture_mode) {
		int code = chaos_roll(&chaos.sender);
		if (code) {
			reply_chaos(s, code, SMTP_R_CHAOS_SENDER_TEMP, SMTP_R_CHAOS_SENDER_PERM);
			return;
		}
	}
	struct policy_verdict pv; /* POLICY: reverse DNS, message rate */
	policy_mail(s->pol, c->path.null_path ? "" : c->path.addr, s->authenticated, &pv);
	if (policy_refused_command(s, &pv))
		return;
	struct tx *t = calloc(1, sizeof(*t));
	if (!t)
		goto nomem;
	t->sender = tern_strdup(c->path.null_path ? "" : c->path.addr);
	t->envid = c->envid[0] ? tern_strdup(c->envid) : NULL;
	/* RFC 4954 §5: who first submitted the message, believed only from an
	 * authenticated or trusted client; from anyone else it is as if
	 * AUTH=<> was given, and so is nothing at all. */
	bool believe = s->authenticated || conf_in_relay_networks(s->conf, &s->peer_sa);
	if (believe && c->auth_param[0] && strcmp(c->auth_param, "<>") != 0 &&
	    !(t->auth_param = tern_strdup(c->auth_param))) {
		tx_free(t);
		goto nomem;
	}
	/* none given by a logged-in client: the user it logged in as (RFC 4954 §5) */
	if (!c->auth_param[0] && s->authenticated && s->auth_user && !s->conf->capture_mode &&
	    !(t->auth_param = auth_identity(s))) {
		tx_free(t);
		goto nomem;
	}
	if (!t->sender || (c->envid[0] && !t->envid)) {
		tx_free(t);
		goto nomem;
	}
	t->srv = s->sw->srv;
	t->smtputf8 = c->smtputf8;
	t->body = c->body;
	t->ret = c->ret;
	t->declared_size = c->has_size ? c->size : 0;
	s->tx = t;
	session_enter_state(s, SS_MAIL);
	verify_at_mail(s, t); /* TRUST: SPF starts now (verify.c) */
	if (milter_mail(s, t))
		return; /* MILTER: the reply waits for the milters */
	reply_args(s, SMTP_R_SENDER_OK, t->sender);
	return;
nomem:
	reply(s, SMTP_R_NOMEM);
}

/* Resolves a local recipient to final mailboxes; false if nobody is there. */
static bool route_local(struct session *s, const struct smtp_cmd *c, struct tx *t, int *err)
{
	char addr[SMTP_ADDR_MAX + 3];
	const struct tern_config *conf = s->conf;
	const char *domain = c->path.has_domain ? c->path.domain : NULL;
	char dom_lc[SMTP_DOMAIN_MAX + 1];
	if (!domain) {
		/* <Postmaster> with no domain: this host's postmaster (RFC 5321 §4.5.1). */
		domain = conf->n_local_domains ? conf->local_domains[0] : "localhost";
	}
	tern_strlcpy(dom_lc, domain, sizeof(dom_lc));
	tern_ascii_lower(dom_lc);
	char local_lc[SMTP_LOCAL_MAX + 1];
	tern_strlcpy(local_lc, c->path.local, sizeof(local_lc));
	tern_ascii_lower(local_lc);
	snprintf(addr, sizeof(addr), "%s@%s", local_lc, dom_lc);

	*err = TERN_OK;
	/* SUPPRESSION: VERP return paths and the feedback address take reports
	 * (store/suppress.h); delivery consumes them. */
	if (suppress_intake_match(conf, addr)) {
		*err = tx_add_rcpt(t, addr, c->orcpt, c->notify, true);
		return true;
	}
	const struct conf_alias *al = conf_find_alias(conf, addr);
	if (al) {
		size_t before = t->n_rcpts;
		for (size_t i = 0; i < al->n_to; i++) {
			const char *to = al->to[i];
			const char *at = strrchr(to, '@');
			bool local = at && conf_is_local_domain(conf, at + 1, strlen(at + 1));
			*err = tx_add_rcpt(t, to, c->orcpt, c->notify, local);
			if (*err != TERN_OK) {
				/* The client is told 451: take back the members already
				 * added, or a retried RCPT would deliver to them twice. */
				while (t->n_rcpts > before) {
					t->n_rcpts--;
					free(t->rcpts[t->n_rcpts].addr);
					free(t->rcpts[t->n_rcpts].orcpt);
				}
				return true;
			}
		}
		return true;
	}
	bool exists = users_exists(s->rt->users, addr) || strcmp(local_lc, "postmaster") == 0;
	/* Plus addressing: user+tag@ is user's (delivery picks the mailbox) */
	size_t base = conf_local_base_len(conf, local_lc, strlen(local_lc));
	char b[SMTP_ADDR_MAX + 3];
	const char *owner = addr; /* whose Maildir it is */
	if (!exists && base > 0 && local_lc[base] != '\0') {
		snprintf(b, sizeof(b), "%.*s@%s", (int)base, local_lc, dom_lc);
		exists = users_exists(s->rt->users, b);
		owner = b;
	}
	if (!exists)
		return false;
	/* QUOTA: a Maildir delivery found full (a table lookup, no disk). */
	if (maildir_quota_known_full(owner)) {
		*err = TERN_ELIMIT;
		return true;
	}
	*err = tx_add_rcpt(t, addr, c->orcpt, c->notify, true);
	return true;
}

/* A recipient is in: counted, and the transaction has one now. */
static void rcpt_ok(struct session *s, struct tx *t, const char *addr)
{
	t->rcpt_cmds++;
	session_enter_state(s, SS_RCPT);
	reply_args(s, SMTP_R_RCPT_OK, addr);
}

/* Takes back the recipients the current RCPT added (an alias's members with
 * it), when a later check refuses it: a retried RCPT must not deliver twice. */
static void rcpt_take_back(struct tx *t)
{
	while (t->n_rcpts > t->milter_mark) {
		t->n_rcpts--;
		free(t->rcpts[t->n_rcpts].addr);
		free(t->rcpts[t->n_rcpts].orcpt);
	}
}

/* tern takes the recipient; greylisting and the milters may still refuse it.
 * Greylisting comes only now, after the lookup and the relay check: an
 * unknown or relay-denied recipient gets its true 550, never a 451 that
 * invites a pointless retry (postgrey's and Postfix's order). */
static void rcpt_accepted(struct session *s, struct tx *t, const struct smtp_cmd *c)
{
	struct policy_verdict pv; /* POLICY: greylisting */
	policy_rcpt_greylist(s->pol, t->sender, c->path.has_domain ? c->path.addr : "postmaster",
	                     s->authenticated, &pv);
	if (policy_refused_command(s, &pv)) {
		rcpt_take_back(t);
		return;
	}
	if (milter_rcpt(s, t, c->path.addr))
		return; /* MILTER: rcpt_ok or a refusal once they answered */
	rcpt_ok(s, t, c->path.addr);
}

static void cmd_rcpt(struct session *s, const struct smtp_cmd *c)
{
	struct tx *t = s->tx;
	t->milter_mark = t->n_rcpts; /* MILTER: what a refusal takes back */
	if (c->path.utf8 && !t->smtputf8) {
		reply(s, SMTP_R_RCPT_NEEDS_SMTPUTF8);
		return;
	}
	if (t->rcpt_cmds >= s->conf->limits.max_recipients) {
		reply(s, SMTP_R_TOO_MANY_RCPTS);
		return;
	}
	struct policy_verdict pv; /* POLICY: recipient rate (greylisting: rcpt_accepted) */
	policy_rcpt_rate(s->pol, t->sender, c->path.has_domain ? c->path.addr : "postmaster",
	                 s->authenticated, &pv);
	if (policy_refused_command(s, &pv))
		return;
	char q[LOG_ADDR_MAX], qf[LOG_ADDR_MAX];
	if (s->conf->capture_mode) {
		/* Capture mode catches everything: any recipient, any domain. */
		int code = chaos_roll(&chaos.recipient);
		if (code) {
			reply_chaos(s, code, SMTP_R_CHAOS_RCPT_TEMP, SMTP_R_CHAOS_RCPT_PERM);
			return;
		}
		if (tx_add_rcpt(t, c->path.has_domain ? c->path.addr : "postmaster", c->orcpt,
				c->notify, true) != TERN_OK) {
			reply(s, SMTP_R_NOMEM);
			return;
		}
		rcpt_accepted(s, t, c);
		return;
	}
	bool local = !c->path.has_domain ||
		     conf_is_local_domain(s->conf, c->path.domain, strlen(c->path.domain));
	int err = TERN_OK;
	if (local) {
		if (!route_local(s, c, t, &err)) {
			log_info("event=rejected sess=%u.%llu client=%s from=%s to=%s "
			         "code=550 reason=unknown-user",
			         worker_index(s->sw->w), (unsigned long long)s->serial, s->peer,
			         log_quote_addr(t->sender, qf, sizeof(qf)),
			         log_quote_addr(c->path.addr, q, sizeof(q)));
			reply_args(s, SMTP_R_NO_SUCH_USER, c->path.addr);
			return;
		}
	} else {
		/* DESIGN §5.2: other domains only for a logged-in user or a
		 * trusted network; everyone else gets 550 5.7.1. */
		if (!s->authenticated && !conf_in_relay_networks(s->conf, &s->peer_sa)) {
			log_info("event=rejected sess=%u.%llu client=%s from=%s to=%s "
			         "code=550 reason=relay-denied",
			         worker_index(s->sw->w), (unsigned long long)s->serial, s->peer,
			         log_quote_addr(t->sender, qf, sizeof(qf)),
			         log_quote_addr(c->path.addr, q, sizeof(q)));
			reply_args(s, SMTP_R_RELAY_DENIED, c->path.addr);
			return;
		}
		err = tx_add_rcpt(t, c->path.addr, c->orcpt, c->notify, false);
	}
	if (err == TERN_ELIMIT) {
		log_info("event=rejected sess=%u.%llu client=%s from=%s to=%s code=452 "
		         "reason=mailbox-full",
		         worker_index(s->sw->w), (unsigned long long)s->serial, s->peer,
		         log_quote_addr(t->sender, qf, sizeof(qf)),
		         log_quote_addr(c->path.addr, q, sizeof(q)));
		reply_args(s, SMTP_R_MAILBOX_FULL, c->path.addr);
		return;
	}
	if (err != TERN_OK) {
		reply(s, SMTP_R_NOMEM);
		return;
	}
	rcpt_accepted(s, t, c);
}

static const char *proto_keyword(const struct session *s, const struct tx *t)
{
	/* RFC 3848 / RFC 6531: S for TLS, A for an authenticated client. */
	static const char *const kw[2][2][2] = {
	    {{"ESMTP", "ESMTPA"}, {"ESMTPS", "ESMTPSA"}},
	    {{"UTF8SMTP", "UTF8SMTPA"}, {"UTF8SMTPS", "UTF8SMTPSA"}},
	};
	if (!s->esmtp && !t->smtputf8)
		return "SMTP";
	return kw[t->smtputf8][s->tls_active][s->authenticated];
}

/* A client's word (HELO name, login) made safe for a header comment:
 * printable ASCII without spaces or parentheses, cut to fit out. */
static const char *header_word(const char *in, char *out, size_t outlen)
{
	size_t h = 0;
	for (const char *p = in; *p && h < outlen - 1; p++)
		out[h++] = (*p > ' ' && *p < 0x7f && *p != '(' && *p != ')') ? *p : '?';
	out[h] = '\0';
	return out;
}

/* Starts the message buffer with our Received header (RFC 5321 §4.4). The
 * login is not in it (the A of ESMTPA says there was one), unless
 * auth.received_header_user asks, as Postfix's
 * smtpd_sasl_authenticated_header does. */
static int begin_message(struct session *s, struct tx *t)
{
	queue_id_new(t->id);
	tbuf_init(&t->msg, RECEIVED_HEADER_MAX + s->conf->limits.max_message_size);
	char date[TERN_RFC5322_DATE_MAX];
	tern_rfc5322_date((int64_t)time(NULL), date, sizeof(date));
	char helo[128], user[128];
	header_word(s->helo, helo, sizeof(helo));
	const char *rdns = policy_client_name(s->pol); /* POLICY: forward-confirmed name */
	int rc = tbuf_printf(&t->msg, "Received: from %s (%s%s[%s])", helo, rdns ? rdns : "",
	                     rdns ? " " : "", s->peer);
	if (rc == TERN_OK && s->authenticated && s->auth_user && s->conf->auth.received_header_user)
		rc = tbuf_printf(&t->msg, "\r\n\t(Authenticated sender: %s)",
		                 header_word(s->auth_user, user, sizeof(user)));
	if (rc == TERN_OK)
		rc = tbuf_printf(&t->msg, "\r\n\tby %s (tern) with %s id %s", s->conf->hostname,
		                 proto_keyword(s, t), t->id);
	if (rc == TERN_OK && t->n_rcpts == 1 && strlen(t->rcpts[0].addr) < 300)
		rc = tbuf_printf(&t->msg, "\r\n\tfor <%s>", t->rcpts[0].addr);
	if (rc == TERN_OK)
		rc = tbuf_printf(&t->msg, "; %s\r\n", date);
	t->hdr_len = t->msg.len;
	return rc;
}

static void cmd_data(struct session *s, const struct smtp_cmd *c)
{
	struct tx *t = s->tx;
	if (t->body == SMTP_BODY_BINARYMIME) {
		reply(s, SMTP_R_BINARYMIME_NEEDS_BDAT); /* RFC 3030 §3 */
		count_error(s);
		return;
	}
	if (!budget_start(s, t)) {
		budget_refused(s, t);
		reply_over_budget(s);
		return;
	}
	if (begin_message(s, t) != TERN_OK) {
		reply(s, SMTP_R_NOMEM);
		return;
	}
	smtp_data_init(&t->dp);
	session_enter_state(s, SS_DATA);
	struct timeval tv = {s->conf->limits.data_timeout, 0};
	bufferevent_set_timeouts(s->bev, &tv, &tv);
	reply(s, SMTP_R_DATA_GO);
}

/* A chunk that will not be kept (RFC 3030 §4: it follows its line whatever
 * we answer, so its bytes are skipped); the transaction ends with LAST. */
static void bdat_refuse_chunk(struct session *s, const struct smtp_cmd *c)
{
	s->skip_bytes = c->chunk_size;
	if (c->last)
		tx_end(s);
	else
		session_enter_state(s, SS_CHUNKING);
}

static void cmd_bdat(struct session *s, const struct smtp_cmd *c)
{
	struct tx *t = s->tx;
	if (!t->bdat_started && !budget_start(s, t)) {
		/* BDAT has begun, and failed: no DATA or RCPT may follow, and the
		 * chunks pipelined behind get 452 until the LAST one ends it. */
		t->bdat_started = true;
		t->over_budget = true;
		budget_refused(s, t);
	}
	if (t->bdat_failed || t->over_budget) {
		if (t->over_budget)
			reply_over_budget(s);
		else
			reply_size_exceeded(s);
		bdat_refuse_chunk(s, c);
		return;
	}
	if (!t->bdat_started) {
		if (begin_message(s, t) != TERN_OK) {
			reply(s, SMTP_R_NOMEM);
			s->skip_bytes = c->chunk_size;
			tx_end(s);
			return;
		}
		t->bdat_started = true;
	}
	/* The whole chunk is charged before it is read (a chunk that passes
	 * max_message_size is not kept at all: read_bdat). */
	/* SPILL: a chunk that may be spilled is charged as it is kept (read_bdat) */
	uint64_t charge = c->chunk_size;
	if (spill_allowed(s) && charge > SPILL_THRESHOLD)
		charge = SPILL_THRESHOLD;
	if (t->bdat_total + c->chunk_size <= s->conf->limits.max_message_size &&
	    !budget_reserve(s, t, charge))
		budget_exceeded(s, t);
	t->bdat_remaining = c->chunk_size;
	t->bdat_last = c->last;
	session_enter_state(s, SS_BDAT);
	struct timeval tv = {s->conf->limits.data_timeout, 0};
	bufferevent_set_timeouts(s->bev, &tv, &tv);
}

/* -------------------------------------------------------------- STARTTLS */

static void cmd_starttls(struct session *s, const struct smtp_cmd *c)
{
	SSL *ssl = SSL_new(s->sw->srv->tls);
	if (!ssl) {
		reply(s, SMTP_R_TLS_UNAVAILABLE);
		return;
	}
	s->starttls = ssl;
	reply(s, SMTP_R_STARTTLS_GO);
}

/*
 * Puts a server-side TLS layer (taking ssl) on the session's socket: after
 * STARTTLS, or at accept on an implicit-TLS listener. The handshake runs as
 * the layer is read and written; what the session writes meanwhile waits in
 * it. False (ssl freed, the session unchanged) if out of memory.
 */
static bool tls_layer_on(struct session *s, SSL *ssl)
{
	struct bufferevent *plain = s->bev;
	struct bufferevent *tb = bufferevent_openssl_filter_new(
	    worker_base(s->sw->w), plain, ssl, BUFFEREVENT_SSL_ACCEPTING,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (!tb) {
		SSL_free(ssl);
		return false;
	}
	/* A client that closes without close_notify after QUIT is common and
	 * harmless here (SMTP has its own end): report it as EOF. */
	bufferevent_openssl_set_allow_dirty_shutdown(tb, 1);
	s->bev = tb;
	s->tls_active = true;
	bufferevent_setcb(tb, on_read, on_write, on_event, s);
	bufferevent_setwatermark(tb, EV_READ, 0, READ_HIGH_WATERMARK);
	bufferevent_setwatermark(tb, EV_WRITE, OUT_LOW_WATERMARK, 0);
	/* The TLS filter moves our output into the socket bufferevent's as
	 * fast as it can; its write high watermark makes the filter hold the
	 * rest, so the backpressure above sees the client's pace here too.
	 * (tls_close_begin lifts it again for the close_notify.) */
	bufferevent_setwatermark(plain, EV_WRITE, 0, OUT_HIGH_WATERMARK);
	restore_idle_timeouts(s);
	bufferevent_enable(tb, EV_READ | EV_WRITE);
	return true;
}

/*
 * After the STARTTLS line is consumed: anything the client pipelined after
 * it was sent in clear and is thrown away (RFC 3207 §4.2, CVE-2011-0411),
 * the TLS layer goes on top of the socket, and the session forgets
 * everything it learned before (HELO, transaction, AUTH). Commands are read
 * again once the handshake is done (on_event, BEV_EVENT_CONNECTED).
 */
static void start_tls(struct session *s, struct evbuffer *in)
{
	SSL *ssl = s->starttls;
	s->starttls = NULL;
	size_t junk = evbuffer_get_length(in);
	if (junk) {
		log_warn("event=starttls_injection sess=%u.%llu client=%s discarded=%zu",
			 worker_index(s->sw->w), (unsigned long long)s->serial, s->peer, junk);
		evbuffer_drain(in, junk);
	}
	if (!tls_layer_on(s, ssl)) {
		log_error("event=starttls_failed client=%s reason=out-of-memory", s->peer);
		reply_host(s, SMTP_R_TLS_FAILED);
		session_close_after_flush(s, "starttls-failed");
		return;
	}
	tx_reset(s);
	free(s->helo);
	s->helo = NULL;
	s->esmtp = false;
	s->authenticated = false;
	free(s->auth_user);
	s->auth_user = NULL;
	session_enter_state(s, SS_TLS);
}

/* ----------------------------------------------------- AUTH in capture mode */

/*
 * Capture mode takes any credentials (applications under test log in with
 * whatever they have); the "authentication" chaos trigger can fail them.
 * Only PLAIN and LOGIN, decoded here; submission listeners use the SASL
 * engine (below).
 */

/* Which response capture mode's AUTH dialogue waits for (in SS_AUTH). */
enum { AUTH_NONE = 0, AUTH_PLAIN_RESPONSE, AUTH_LOGIN_USER, AUTH_LOGIN_PASS };

/*
 * A SASL response must be valid base64 (RFC 4954 §4). For PLAIN it is
 * authzid NUL authcid NUL passwd, and user gets authcid; for a LOGIN user
 * name step, the decoded text. user is printable ASCII only (it ends up in
 * logs and the capture store), cut to fit.
 */
static bool sasl_response_ok(const char *p, size_t n, bool plain, char *user, size_t userlen)
{
	struct tbuf b;
	tbuf_init(&b, 4096);
	bool ok = tern_base64_decode(p, n, &b) == TERN_OK;
	const char *u = b.data ? b.data : "";
	size_t ul = b.len;
	if (ok && plain) {
		const char *nul1 = memchr(u, '\0', b.len);
		const char *nul2 = nul1 ? memchr(nul1 + 1, '\0', b.len - (size_t)(nul1 + 1 - u)) : NULL;
		ok = nul1 && nul2 && !memchr(nul2 + 1, '\0', b.len - (size_t)(nul2 + 1 - u));
		if (ok) {
			u = nul1 + 1;
			ul = (size_t)(nul2 - u);
		}
	}
	if (user && userlen) {
		size_t k = 0;
		for (size_t i = 0; ok && i < ul && k < userlen - 1; i++)
			user[k++] = (u[i] > ' ' && u[i] < 0x7f) ? u[i] : '?';
		user[k] = '\0';
	}
	tbuf_free(&b);
	return ok;
}

/* The dialogue is over, one way or the other: back between transactions. */
static void capture_auth_end(struct session *s)
{
	s->auth_step = AUTH_NONE;
	session_enter_state(s, SS_HELO);
}

/* A 334 (RFC 4954 §4): the next line answers it. */
static void capture_auth_challenge(struct session *s, uint8_t step, const char *b64)
{
	s->auth_step = step;
	session_enter_state(s, SS_AUTH);
	reply_args(s, SMTP_R_SASL_CHALLENGE, b64);
}

static void capture_auth_succeed(struct session *s, const char *mech, const char *user)
{
	capture_auth_end(s);
	s->authenticated = true;
	free(s->auth_user);
	s->auth_user = tern_strdup(user);
	char q[160];
	log_info("event=auth sess=%u.%llu client=%s mechanism=%s user=%s result=ok mode=capture",
		 worker_index(s->sw->w), (unsigned long long)s->serial, s->peer, mech,
		 log_quote(user ? user : "", user ? strlen(user) : 0, q, sizeof(q)));
	reply(s, SMTP_R_AUTH_OK);
}

#define SASL_USERNAME "VXNlcm5hbWU6" /* base64 "Username:" */
#define SASL_PASSWORD "UGFzc3dvcmQ6" /* base64 "Password:" */

static void capture_auth(struct session *s, const struct smtp_cmd *c)
{
	const char *arg = c->arg;
	size_t ml = strlen(arg);
	bool plain = ml == 5 && strncasecmp(arg, "PLAIN", 5) == 0;
	bool login = ml == 5 && strncasecmp(arg, "LOGIN", 5) == 0;
	if (!plain && !login) {
		reply(s, SMTP_R_AUTH_MECHANISM);
		count_error(s);
		return;
	}
	int code = chaos_roll(&chaos.authentication);
	if (code) {
		reply_chaos(s, code, SMTP_R_CHAOS_AUTH_TEMP, SMTP_R_CHAOS_AUTH_PERM);
		return;
	}
	const char *initial = c->auth_initial;
	size_t ilen = c->auth_initial_len;
	if (initial && !(ilen == 1 && initial[0] == '=')) {
		char user[128];
		if (!sasl_response_ok(initial, ilen, plain, user, sizeof(user))) {
			reply(s, SMTP_R_AUTH_BAD_INITIAL);
			count_error(s);
			return;
		}
		if (plain) {
			capture_auth_succeed(s, "PLAIN", user);
			return;
		}
		free(s->auth_user);
		s->auth_user = tern_strdup(user);
		/* the initial response was the user name */
		capture_auth_challenge(s, AUTH_LOGIN_PASS, SASL_PASSWORD);
		return;
	}
	if (plain)
		capture_auth_challenge(s, AUTH_PLAIN_RESPONSE, "");
	else
		capture_auth_challenge(s, AUTH_LOGIN_USER, SASL_USERNAME);
}

/* A line of capture mode's AUTH dialogue (SS_AUTH: after a 334). */
static void capture_auth_continue(struct session *s, const char *line, size_t n)
{
	if (n == 1 && line[0] == '*') {
		capture_auth_end(s);
		reply(s, SMTP_R_AUTH_CANCELLED);
		return;
	}
	uint8_t step = s->auth_step;
	(void)TERN_BUG_ON(step == AUTH_NONE); /* SS_AUTH is entered with a step */
	char user[128];
	if (!sasl_response_ok(line, n, step == AUTH_PLAIN_RESPONSE, user, sizeof(user))) {
		capture_auth_end(s);
		reply(s, SMTP_R_AUTH_BAD_RESPONSE);
		count_error(s);
		return;
	}
	if (step == AUTH_LOGIN_USER) {
		free(s->auth_user);
		s->auth_user = tern_strdup(user);
		capture_auth_challenge(s, AUTH_LOGIN_PASS, SASL_PASSWORD);
		return;
	}
	if (step == AUTH_PLAIN_RESPONSE) {
		capture_auth_succeed(s, "PLAIN", user);
		return;
	}
	char login_user[128];
	tern_strlcpy(login_user, s->auth_user ? s->auth_user : "", sizeof(login_user));
	capture_auth_succeed(s, "LOGIN", login_user);
}

/* -------------------------------------------------- AUTH on submission */

/*
 * A submission listener runs the SASL engine of auth.h against the users
 * file and the OAuth issuer's keys (s->sasl_cfg):
 *
 *   AUTH -> sasl_start -> 334 challenge <-> sasl_step (SS_AUTH)
 *        -> credentials complete: throttle_check, then sasl_verify on the
 *           auth pool (SS_AUTH_WAIT: nothing is read, the session is not
 *           freed under the job) -> sasl_finish on this worker
 *        -> 235; or a failure: throttle_fail, its delay on a timer
 *           (SS_AUTH_WAIT again), then 535 5.7.8, or 454 4.7.0 once the
 *           address or the user is blocked; a blocked address's next AUTH
 *           gets 421 4.7.0 and the connection is closed.
 *
 * Every exchange that does not end in 235 is logged as one event=auth_failed
 * line with the client, the mechanism, the login the client gave (quoted:
 * client bytes) and why (contrib/fail2ban/tern-auth.conf reads it).
 */

_Static_assert(SMTP_AUTH_LINE_MAX == SASL_LINE_MAX, "one bound for SASL lines");

static unsigned long long monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000ull +
	       (unsigned long long)ts.tv_nsec / 1000000ull;
}

/* The login the client claimed so far (client bytes), or "". */
static const char *auth_login(const struct session *s)
{
	const char *l = s->sasl ? sasl_login(s->sasl) : NULL;
	return l ? l : "";
}

/* The one line every failed exchange gets; extra is "" or " key=value...". */
static void auth_log_failed(struct session *s, const char *reason, const char *extra)
{
	char qm[64], qu[SASL_ID_MAX * 4 + 8], qr[512];
	const char *login = auth_login(s);
	smtp_metrics_auth_failed(s->auth_mech);
	log_warn("event=auth_failed sess=%u.%llu client=%s mechanism=%s user=%s reason=%s%s",
	         worker_index(s->sw->w), (unsigned long long)s->serial, s->peer,
	         log_quote(s->auth_mech, strlen(s->auth_mech), qm, sizeof(qm)),
	         log_quote(login, strlen(login), qu, sizeof(qu)),
	         log_quote(reason, strlen(reason), qr, sizeof(qr)), extra);
}

/* The exchange is over, whatever its outcome: its secrets go, and the
 * session is back between transactions. */
static void auth_done(struct session *s)
{
	sasl_free(s->sasl);
	s->sasl = NULL;
	session_enter_state(s, SS_HELO);
}

/* Suspends reading while the exchange waits (the pool, or a delay). */
static void auth_wait(struct session *s)
{
	session_enter_state(s, SS_AUTH_WAIT);
	bufferevent_disable(s->bev, EV_READ);
	bufferevent_set_timeouts(s->bev, NULL, NULL);
}

/* Out of SS_AUTH_WAIT: reading again, with what the client sent meanwhile
 * (pipelined commands after a failure are read only after its reply). */
static void auth_resume(struct session *s)
{
	if (s->state == SS_AUTH_WAIT || s->state == SS_CLOSING)
		return;
	restore_idle_timeouts(s);
	if (s->out_blocked)
		return; /* on_write resumes reading once the client took its replies */
	bufferevent_enable(s->bev, EV_READ);
	process_input(s);
}

/* The throttle refuses: a blocked address is told so and disconnected, a
 * blocked user (from any address) gets 454 and may try another login. */
static void auth_blocked(struct session *s, const struct throttle_result *tr)
{
	char reason[192];
	snprintf(reason, sizeof(reason), "throttled: %s", tr->reason);
	auth_log_failed(s, reason, "");
	if (tr->verdict == THROTTLE_BLOCK_ADDR) {
		reply_host(s, SMTP_R_AUTH_BLOCKED_CLOSE);
		sasl_free(s->sasl);
		s->sasl = NULL;
		session_close_after_flush(s, "auth-blocked");
		return;
	}
	reply(s, SMTP_R_AUTH_BLOCKED);
	auth_done(s);
}

static void auth_status(struct session *s, enum sasl_status st);

static void auth_verify_work(void *arg)
{
	struct session *s = arg;
	sasl_verify(s->sasl); /* only the exchange and the immutable config */
}

static void auth_verify_done(void *arg)
{
	struct session *s = arg;
	s->auth_in_pool = false;
	if (s->dead) { /* the client went away meanwhile (on_event) */
		session_free(s);
		return;
	}
	auth_status(s, sasl_finish(s->sasl));
	auth_resume(s);
}

/* The credentials are complete: unless the throttle refuses at once (a
 * blocked login costs no crypt), they are checked, on the pool when that
 * takes time. */
static void auth_verify(struct session *s)
{
	struct smtp_server *srv = s->sw->srv;
	if (srv->throttle) {
		struct throttle_result tr;
		throttle_check(srv->throttle, s->peer, sasl_login(s->sasl), monotonic_ms(), &tr);
		if (tr.verdict != THROTTLE_ALLOW) {
			auth_blocked(s, &tr);
			return;
		}
	}
	if (!sasl_verify_is_slow(s->sasl)) {
		sasl_verify(s->sasl); /* an HMAC or a signature: microseconds */
		auth_status(s, sasl_finish(s->sasl));
		return;
	}
	auth_wait(s);
	s->auth_in_pool = true;
	if (!srv->auth_pool || pool_submit(srv->auth_pool, auth_verify_work, s->sw->w,
	                                   auth_verify_done, s) != TERN_OK) {
		s->auth_in_pool = false;
		auth_log_failed(s, srv->auth_pool ? "out of memory" : "no auth pool", "");
		reply(s, SMTP_R_AUTH_TEMPFAIL);
		auth_done(s);
	}
}

/* The throttle's delay is over: the failure's reply, and reading again. */
static void on_auth_timer(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	reply(s, s->auth_reply);
	auth_done(s);
	auth_resume(s);
}

/* Credentials refused: counted, logged, answered after the throttle's delay. */
static void auth_failed(struct session *s)
{
	struct smtp_server *srv = s->sw->srv;
	struct throttle_result tr = {.verdict = THROTTLE_ALLOW};
	if (srv->throttle)
		throttle_fail(srv->throttle, s->peer, sasl_login(s->sasl), monotonic_ms(), &tr);
	char extra[192];
	snprintf(extra, sizeof(extra), " failures=%u delay_ms=%u%s", tr.failures, tr.delay_ms,
	         tr.verdict == THROTTLE_ALLOW ? "" : " blocked=yes");
	auth_log_failed(s, sasl_reason(s->sasl), extra);
	/* The exchange's secrets need not wait for the reply. */
	sasl_free(s->sasl);
	s->sasl = NULL;
	s->auth_reply = tr.verdict == THROTTLE_ALLOW ? SMTP_R_AUTH_FAILED : SMTP_R_AUTH_BLOCKED;
	if (tr.delay_ms > 0 && !s->auth_timer)
		s->auth_timer = evtimer_new(worker_base(s->sw->w), on_auth_timer, s);
	if (tr.delay_ms == 0 || !s->auth_timer) {
		reply(s, s->auth_reply);
		auth_done(s);
		return;
	}
	auth_wait(s);
	struct timeval tv = {tr.delay_ms / 1000, (long)(tr.delay_ms % 1000) * 1000};
	evtimer_add(s->auth_timer, &tv);
}

static void auth_succeeded(struct session *s)
{
	struct smtp_server *srv = s->sw->srv;
	const char *id = sasl_identity(s->sasl);
	char *user = id ? tern_strdup(id) : NULL;
	if (!user) {
		auth_log_failed(s, id ? "out of memory" : "no identity", "");
		reply(s, SMTP_R_AUTH_TEMPFAIL);
		auth_done(s);
		return;
	}
	if (srv->throttle) {
		const char *login = sasl_login(s->sasl);
		throttle_success(srv->throttle, s->peer, login ? login : user);
	}
	s->authenticated = true;
	free(s->auth_user);
	s->auth_user = user;
	char qu[SASL_ID_MAX * 4 + 8];
	log_info("event=auth sess=%u.%llu client=%s user=%s mechanism=%s", worker_index(s->sw->w),
	         (unsigned long long)s->serial, s->peer,
	         log_quote(user, strlen(user), qu, sizeof(qu)),
	         sasl_mech_name(sasl_exchange_mech(s->sasl)));
	reply(s, SMTP_R_AUTH_OK);
	auth_done(s);
}

/* Where the engine's answer leads (auth.h lists the replies). */
static void auth_status(struct session *s, enum sasl_status st)
{
	enum smtp_reply_id id;
	bool syntax = false; /* the client's fault: counts against max_errors */
	switch (st) {
	case SASL_CONTINUE:
		session_enter_state(s, SS_AUTH);
		reply_args(s, SMTP_R_SASL_CHALLENGE, sasl_challenge(s->sasl, NULL));
		return;
	case SASL_NEED_VERIFY:
		auth_verify(s);
		return;
	case SASL_OK:
		auth_succeeded(s);
		return;
	case SASL_FAIL:
		auth_failed(s);
		return;
	case SASL_CANCELLED:
		id = SMTP_R_AUTH_CANCELLED;
		break;
	case SASL_MALFORMED:
		id = SMTP_R_AUTH_BAD_RESPONSE;
		syntax = true;
		break;
	case SASL_PROTOCOL:
		id = SMTP_R_AUTH_INITIAL_REFUSED;
		syntax = true;
		break;
	case SASL_TOO_LONG:
		id = SMTP_R_AUTH_LINE_TOO_LONG;
		syntax = true;
		break;
	case SASL_NOMECH:
		id = SMTP_R_AUTH_NO_MECHANISM;
		syntax = true;
		break;
	case SASL_TEMPFAIL:
	default:
		id = SMTP_R_AUTH_TEMPFAIL;
		break;
	}
	auth_log_failed(s, sasl_reason(s->sasl), "");
	if (id == SMTP_R_AUTH_NO_MECHANISM) {
		char list[128];
		reply_args(s, id, sasl_mech_list(sasl_cfg_of(s), list, sizeof(list)));
	} else {
		reply(s, id);
	}
	auth_done(s);
	if (syntax)
		count_error(s); /* may close the session: last */
}

/* AUTH on a submission listener: only inside TLS (RFC 4954 §4) unless
 * auth.allow_plaintext, and not from a blocked address. */
static void submission_auth(struct session *s, const struct smtp_cmd *c)
{
	if (!s->tls_active && !s->conf->auth.allow_plaintext && !s->conf->capture_mode) {
		log_info("event=auth_refused sess=%u.%llu client=%s reason=tls-required",
		         worker_index(s->sw->w), (unsigned long long)s->serial, s->peer);
		reply(s, SMTP_R_AUTH_NEEDS_TLS);
		return;
	}
	tern_strlcpy(s->auth_mech, c->arg, sizeof(s->auth_mech));
	if (s->sw->srv->throttle) {
		struct throttle_result tr;
		throttle_check(s->sw->srv->throttle, s->peer, NULL, monotonic_ms(), &tr);
		if (tr.verdict == THROTTLE_BLOCK_ADDR) {
			auth_blocked(s, &tr);
			return;
		}
	}
	(void)TERN_BUG_ON(s->sasl != NULL); /* every exchange ends in auth_done */
	s->sasl = sasl_new(sasl_cfg_of(s));
	if (!s->sasl) {
		auth_log_failed(s, "out of memory", "");
		reply(s, SMTP_R_AUTH_TEMPFAIL);
		return;
	}
	auth_status(
	    s, sasl_start(s->sasl, c->arg, strlen(c->arg), c->auth_initial, c->auth_initial_len));
}

/* The SASL configuration of a submission session (at connect): the users
 * and keys of the runtime it holds, the mechanisms auth.mechanisms names.
 * TERN_ENOMEM: the session cannot be served. */
static int auth_setup(struct session *s)
{
	const struct conf_auth *a = &s->conf->auth;
	s->auth_cfg = calloc(1, sizeof(*s->auth_cfg));
	if (!s->auth_cfg)
		return TERN_ENOMEM;
	s->auth_cfg->oauth = (struct oauth_config){
	    .issuer = a->oauth.issuer,
	    .audience = a->oauth.audience,
	    .jwks_file = a->oauth.jwks_file,
	    .user_claim = a->oauth.user_claim,
	    .leeway_seconds = a->oauth.leeway,
	};
	s->auth_cfg->sasl = (struct sasl_config){
	    .users = s->rt->users,
	    .oauth = a->oauth.issuer ? &s->auth_cfg->oauth : NULL,
	    .oauth_keys = s->rt->oauth_keys,
	    .mechs = a->mechanisms,
	    .hostname = s->conf->hostname,
	};
	if (s->conf->capture_mode) /* capture's own users: PLAIN and LOGIN */
		s->auth_cfg->sasl = (struct sasl_config){.verify_password = capture_login,
		                                         .store_arg = capture_login_arg,
		                                         .hostname = s->conf->hostname};
	return TERN_OK;
}

void smtp_capture_set_login(int (*verify)(void *arg, const char *login, const char *password),
                            void *arg)
{
	capture_login = verify;
	capture_login_arg = arg;
}

void smtp_capture_require_starttls(bool on)
{
	capture_starttls_first = on;
}

static void cmd_auth(struct session *s, const struct smtp_cmd *c)
{
	if (s->conf->capture_mode && !capture_login)
		capture_auth(s, c);
	else
		submission_auth(s, c);
}

/* A line of the AUTH dialogue (SS_AUTH: it answers our 334). */
static void auth_line(struct session *s, const char *line, size_t n)
{
	if (s->sasl)
		auth_status(s, sasl_step(s->sasl, line, n));
	else
		capture_auth_continue(s, line, n);
}

/* ------------------------------------------------- the other commands */

static void cmd_rset(struct session *s, const struct smtp_cmd *c)
{
	tx_end(s);
	reply(s, SMTP_R_OK);
}

static void cmd_noop(struct session *s, const struct smtp_cmd *c)
{
	reply(s, SMTP_R_OK);
}

static void cmd_quit(struct session *s, const struct smtp_cmd *c)
{
	reply_host(s, SMTP_R_QUIT);
	session_close_after_flush(s, "quit");
}

static void cmd_help(struct session *s, const struct smtp_cmd *c)
{
	reply_line(s, SMTP_R_HELP, 0, true, 0, NULL);
	reply(s, SMTP_R_HELP_END);
}

/* VRFY and EXPN: never disclose (RFC 5321 §3.5.3 allows 252), or disabled. */
static void cmd_vrfy(struct session *s, const struct smtp_cmd *c)
{
	bool vrfy = c->verb == SMTP_VRFY;
	if (c->arg[0] == '\0') {
		reply_args(s, SMTP_R_ADDRESS_SYNTAX, vrfy ? "VRFY" : "EXPN");
		count_error(s);
		return;
	}
	if (vrfy)
		reply(s, s->conf->vrfy ? SMTP_R_VRFY : SMTP_R_VRFY_DISABLED);
	else
		reply(s, s->conf->expn ? SMTP_R_EXPN : SMTP_R_EXPN_DISABLED);
}

/*
 * After a refused BDAT line (already answered). Its chunk follows whatever
 * we answer (RFC 3030 §4): those bytes are message data, never commands,
 * so they are skipped when the size was readable, and the connection is
 * closed when it was not (nothing tells where the chunk ends). The
 * transaction cannot go on without that chunk: it is dropped, and the BDAT
 * commands the client pipelined behind get 503 and are skipped in turn.
 */
static void bad_bdat(struct session *s, const struct smtp_cmd *c)
{
	tx_end(s);
	if (!c->has_chunk_size) {
		reply_host(s, SMTP_R_BDAT_NO_SIZE);
		session_close_after_flush(s, "bad-bdat");
		return;
	}
	s->skip_bytes = c->chunk_size;
	count_error(s);
}

/*
 * The command table: for each verb the parser knows, what it needs before
 * it may run (checked once, by command_allowed) and who runs it.
 */
static const struct command commands[] = {
    [SMTP_HELO] = {"HELO", 0, NULL, 0, cmd_helo},
    [SMTP_EHLO] = {"EHLO", 0, NULL, 0, cmd_helo},
    [SMTP_MAIL] = {"MAIL", CMD_NEEDS_HELO | CMD_NOT_IN_TX | CMD_NEEDS_AUTH_ON_SUBMISSION, NULL, 0,
                   cmd_mail},
    [SMTP_RCPT] = {"RCPT", CMD_NEEDS_TX | CMD_NOT_IN_BDAT, NULL, 0, cmd_rcpt},
    [SMTP_DATA] = {"DATA", CMD_NEEDS_TX | CMD_NEEDS_RCPT | CMD_NOT_IN_BDAT, NULL, 0, cmd_data},
    [SMTP_BDAT] = {"BDAT", CMD_NEEDS_TX | CMD_NEEDS_RCPT | CMD_HAS_CHUNK, NULL, 0, cmd_bdat},
    [SMTP_RSET] = {"RSET", 0, NULL, 0, cmd_rset},
    [SMTP_NOOP] = {"NOOP", 0, NULL, 0, cmd_noop},
    [SMTP_QUIT] = {"QUIT", CMD_AFTER_REFUSAL, NULL, 0, cmd_quit},
    [SMTP_HELP] = {"HELP", 0, NULL, 0, cmd_help},
    [SMTP_VRFY] = {"VRFY", 0, NULL, 0, cmd_vrfy},
    [SMTP_EXPN] = {"EXPN", 0, NULL, 0, cmd_vrfy},
    [SMTP_STARTTLS] = {"STARTTLS", CMD_NOT_AFTER_TLS, tls_offered, SMTP_R_STARTTLS_NOT_OFFERED,
                       cmd_starttls},
    [SMTP_AUTH] = {"AUTH", CMD_NOT_AFTER_AUTH | CMD_NEEDS_EHLO | CMD_NOT_IN_TX, auth_offered,
                   SMTP_R_NOT_IMPLEMENTED, cmd_auth},
};

static void dispatch(struct session *s, const char *line, size_t len)
{
	struct smtp_cmd *c = malloc(sizeof(*c));
	if (!c) {
		reply(s, SMTP_R_NOMEM);
		return;
	}
	struct smtp_parse_error perr = {0};
	if (smtp_parse_command(line, len, c, &perr) != SMTP_PARSE_OK) {
		/* parse.c's refusals are data already (code, enhanced code, text) */
		evbuffer_add_printf(bufferevent_get_output(s->bev), "%d %s %s\r\n", perr.code,
		                    perr.enhanced, perr.text);
		smtp_metrics_reply((char)('0' + perr.code / 100));
		if (c->verb == SMTP_BDAT)
			bad_bdat(s, c);
		else
			count_error(s);
		goto out;
	}
	/* The parser answers OK only for the verbs of the table. */
	const struct command *cmd =
	    (size_t)c->verb < sizeof(commands) / sizeof(commands[0]) ? &commands[c->verb] : NULL;
	if (TERN_BUG_ON(!cmd || !cmd->handler)) {
		reply(s, SMTP_R_UNKNOWN_COMMAND);
		count_error(s);
		goto out;
	}
	if (command_allowed(s, cmd, c))
		cmd->handler(s, c);
out:
	free(c);
}

/* ---------------------------------------------------------------- commit */

static void commit_done(void *arg);

static void commit_cb(void *arg, int err)
{
	struct session *s = arg;
	s->tx->commit_err = err;
	if (worker_post(s->sw->w, commit_done, s) != 0) {
		/* Cannot happen short of OOM; the message is durable or not, but the
		 * session is stuck: log so the operator knows. */
		log_error("event=commit_post_failed id=%s", s->tx->id);
	}
}

static void restore_idle_timeouts(struct session *s)
{
	struct timeval tv = {s->conf->limits.idle_timeout, 0};
	bufferevent_set_timeouts(s->bev, &tv, &tv);
}

/* A message the spool could not take: TERN_ELIMIT is a full disk (ENOSPC,
 * EDQUOT, EFBIG) or too much already waiting for it, worth RFC 3463's
 * 4.3.1 (mail system full); anything else is a local error. */
static enum smtp_reply_id spool_failure_reply(int err)
{
	return err == TERN_ELIMIT ? SMTP_R_SPOOL_FULL : SMTP_R_SPOOL_FAILED;
}

static void commit_finish(struct session *s);

/* The direct path: the capture store committed the message (or failed),
 * nothing was spooled; commit_done answers at once. */
static void capture_put_done(void *arg, int err, const char *capture_id)
{
	struct session *s = arg;
	s->tx->captured = err == TERN_OK;
	commit_cb(s, err);
}


static void commit_done(void *arg)
{
	struct session *s = arg;
	struct tx *t = s->tx;
	/* SS_COMMIT processed no input until this answer: nothing else ran. */
	(void)TERN_BUG_ON(s->state != SS_COMMIT || !t);
	if (t->commit_err == TERN_OK) {
		size_t len = 0;
		char *data = tbuf_steal(&t->msg, &len);
		char qh[SMTP_DOMAIN_MAX * 4 + 8], qf[LOG_ADDR_MAX], qm[1024];
		const char *mid = "";
		size_t mid_len = 0;
		/* before submitting: the scheduler owns (and may free) data after */
		smtp_message_id(data, len, &mid, &mid_len); /* none: msgid="" */
		log_quote(mid, mid_len, qm, sizeof(qm));
		/* EVENTS: before submitting (mid points into data; received comes first) */
		const char *eu = s->authenticated ? s->auth_user : NULL;
		events_emit_msg(EV_RECEIVED, t->id, mid, mid_len, t->sender, NULL, eu);
		for (size_t i = 0; i < t->n_rcpts; i++)
			events_emit_msg(EV_QUEUED, t->id, mid, mid_len, t->sender, t->rcpts[i].addr,
			                eu);
		uint64_t tail = 0;
		if (t->ds) { /* SPILL: committed, the file is the spool's now */
			data_stream_keep(t->ds);
			tail = data_stream_size(t->ds) - t->spill_off;
		}
		if (t->captured) {
			free(data); /* capture mode: stored and synced, the 250 may go */
		} else if (t->ds) {
			free(data); /* SPILL: the scheduler reads what it needs from the spool */
			scheduler_submit(s->sw->srv->sched, t->id, NULL, 0);
		} else {
			scheduler_submit(s->sw->srv->sched, t->id, data, len);
		}
		/* Who sent it, when a login says so: user= (the SASL identity)
		 * and auth= (MAIL's AUTH=, when believed). */
		char qu[SASL_ID_MAX * 4 + 16], qa[LOG_ADDR_MAX + 8], ux[SASL_ID_MAX * 4 + 8];
		qu[0] = qa[0] = '\0';
		if (s->authenticated && s->auth_user)
			snprintf(qu, sizeof(qu), " user=%s",
			         log_quote(s->auth_user, strlen(s->auth_user), ux, sizeof(ux)));
		if (t->auth_param) {
			char ax[LOG_ADDR_MAX];
			snprintf(qa, sizeof(qa), " auth=%s",
			         log_quote_addr(t->auth_param, ax, sizeof(ax)));
		}
		log_info("event=queued id=%s sess=%u.%llu client=%s helo=%s from=%s nrcpt=%zu "
		         "size=%zu msgid=%s%s%s",
		         t->id, worker_index(s->sw->w), (unsigned long long)s->serial, s->peer,
		         log_quote(s->helo ? s->helo : "", s->helo ? strlen(s->helo) : 0, qh,
		                   sizeof(qh)),
		         log_quote_addr(t->sender, qf, sizeof(qf)), t->n_rcpts,
		         (size_t)(len - t->hdr_len + tail), qm, qu, qa);
		for (size_t i = 0; i < t->n_rcpts; i++)
			log_debug("event=rcpt id=%s to=%s local=%d", t->id,
			          log_quote_addr(t->rcpts[i].addr, qf, sizeof(qf)),
			          t->rcpts[i].local);
		s->n_msgs++;
		atomic_fetch_add(&count_accepted, 1);
		metric_inc_l(M_MESSAGES_RECEIVED, smtp_metrics_profile(s->conf, s->submission));
		atomic_fetch_add(&count_accepted_size, len - t->hdr_len + tail);
		/* The bytes are the scheduler's now: give the memory budget back
		 * before the 250, which may leave at once (wire_out), so that the
		 * client's next message is measured against what is really held. */
		budget_release(t);
		if (!s->dead)
			reply_args(s, SMTP_R_QUEUED, t->id);
	} else {
		log_error("event=spool_failed id=%s client=%s reason=%s", t->id, s->peer,
			  tern_strerror(t->commit_err));
		if (!s->dead)
			reply(s, spool_failure_reply(t->commit_err));
	}
	commit_finish(s);
}

/* After the answer to a commit: the transaction ends, reading resumes. */
static void commit_finish(struct session *s)
{
	if (s->dead) {
		tx_reset(s);
		session_free(s);
		return;
	}
	tx_end(s);
	restore_idle_timeouts(s);
	if (s->shutting_down) {
		reply_host(s, SMTP_R_SHUTDOWN);
		session_close_after_flush(s, "shutdown");
		return;
	}
	if (s->out_blocked)
		return; /* on_write resumes reading once the client took its replies */
	bufferevent_enable(s->bev, EV_READ);
	process_input(s);
}

/* ---------------------------------------------------------------- TRUST */

static void finish_message(struct session *s);
static void spool_message(struct session *s);

/*
 * The verdict of verify.c: a refusal is answered here (nothing is spooled);
 * otherwise the trace fields go on top of the message and *folder says
 * where local recipients get it. False when the message was refused (the
 * reply is sent, the transaction over).
 */
static bool verify_apply(struct session *s, struct tx *t, enum spool_folder *folder)
{
	struct smtp_verify_verdict vd;
	smtp_verify_verdict(t->vfy, &vd);
	if (vd.action == SMTP_VERIFY_REJECT || vd.action == SMTP_VERIFY_DEFER) {
		reply_verbatim(s, vd.reply);
		log_info("event=rejected id=%s client=%s code=%.3s reason=dmarc", t->id, s->peer,
		         vd.reply);
		atomic_fetch_add(&count_rejected, 1);
		tx_end(s);
		return false;
	}
	/* Our fields are not the client's bytes: room past max_message_size,
	 * charged to the budget like every byte of the buffer. */
	size_t grow = smtp_verify_growth(t->vfy);
	t->msg.max += grow;
	if (!budget_reserve(s, t, grow)) {
		budget_exceeded(s, t);
		reply_over_budget(s);
		tx_end(s);
		return false;
	}
	if (smtp_verify_rewrite(t->vfy, &t->msg, &t->hdr_len) != TERN_OK) {
		reply(s, SMTP_R_NOMEM);
		tx_end(s);
		return false;
	}
	*folder = vd.action == SMTP_VERIFY_JUNK ? SPOOL_FOLDER_JUNK : SPOOL_FOLDER_INBOX;
	return true;
}

static void after_message(struct session *s);

/* verify.c's callback: the session waited in SS_VERIFY with reading off. */
static void verify_done(void *arg)
{
	struct session *s = arg;
	(void)TERN_BUG_ON(s->state != SS_VERIFY || !s->tx);
	s->tx->verified = true;
	finish_message(s);
	after_message(s);
}

/* After end of data was handled while reading was off (SS_VERIFY): a
 * refusal was answered, so the next command; SS_COMMIT (or a milter being
 * asked) goes on elsewhere. */
static void after_message(struct session *s)
{
	if (s->state != SS_HELO)
		return; /* SS_COMMIT: commit_done goes on from here */
	/* refused: the next command, as after any reply at end of data */
	if (s->shutting_down) {
		reply_host(s, SMTP_R_SHUTDOWN);
		session_close_after_flush(s, "shutdown");
		return;
	}
	if (s->out_blocked)
		return; /* on_write resumes reading */
	bufferevent_enable(s->bev, EV_READ);
	process_input(s);
}

/* ---------------------------------------------------------------- SIGN */

enum sign_state { SIGN_NOT = 0, SIGN_RUNNING, SIGN_DONE, SIGN_APPLIED };

/* Whose mail is DKIM-signed (sign.h): a logged-in user's on any listener,
 * and with dkim.sign_relayed a relay.networks client's; never in capture mode. */
static bool sign_wanted(const struct session *s)
{
	return !s->conf->capture_mode && smtp_signer_count(s->rt->dkim_signer) > 0 &&
	       (s->authenticated ||
	        (s->conf->dkim.sign_relayed && conf_in_relay_networks(s->conf, &s->peer_sa)));
}

/* sign.c's answer: the session waited in SS_VERIFY with reading off. */
static void sign_done(void *arg)
{
	struct session *s = arg;
	(void)TERN_BUG_ON(s->state != SS_VERIFY || !s->tx);
	s->tx->sign_state = SIGN_DONE;
	if (s->dead) { /* the client left meanwhile (on_event): nothing is queued */
		tx_reset(s);
		session_free(s);
		return;
	}
	finish_message(s);
	if (s->state != SS_HELO)
		return; /* SS_COMMIT (or SS_VERIFY again): their callbacks go on */
	if (s->shutting_down) {
		reply_host(s, SMTP_R_SHUTDOWN);
		session_close_after_flush(s, "shutdown");
		return;
	}
	if (s->out_blocked)
		return;
	bufferevent_enable(s->bev, EV_READ);
	process_input(s);
}

/*
 * Starts signing on the pool (false: wait for sign_done), or puts the
 * signatures on top of the client's header (true: go on), or refuses the
 * message with 451 4.3.0 when it should be signed and cannot be (false).
 */
/*
 * The domain a login may sign for: that of the envelope sender when the
 * user may send as it (submission has checked so at MAIL), else that of the
 * login itself; "" when neither names a domain. NULL (no check) for clients
 * signed because they are in relay.networks (dkim.sign_relayed).
 */
static const char *sign_owner(const struct session *s, const struct tx *t)
{
	if (!s->authenticated || !s->auth_user)
		return NULL;
	const char *a = s->auth_user;
	if (t->sender && t->sender[0] && conf_may_send_as(s->conf, s->auth_user, t->sender))
		a = t->sender;
	const char *at = strrchr(a, '@');
	return at ? at + 1 : "";
}

static bool sign_stage(struct session *s, struct tx *t)
{
	if (t->sign_state == SIGN_NOT && sign_wanted(s)) {
		const char *mp;
		size_t mn;
		if (!msg_view(s, t, &mp, &mn))
			return false;
		t->sign_state = SIGN_RUNNING;
		if (smtp_sign_submit(s->sw->srv->verify_pool, s->sw->w, s->rt->dkim_signer, t->id,
		                     mp, mn, t->ds != NULL /* SPILL: a mapping */, sign_owner(s, t),
		                     &t->sign, sign_done, s) == TERN_OK) {
			session_enter_state(s, SS_VERIFY);
			bufferevent_disable(s->bev, EV_READ);
			bufferevent_set_timeouts(s->bev, NULL, NULL);
			return false;
		}
		t->sign_state = SIGN_DONE;
		t->sign.status = SMTP_SIGN_ERROR;
		tern_strlcpy(t->sign.reason, "out of memory", sizeof(t->sign.reason));
		log_error("event=dkim_sign id=%s dkim_sign=error reason=\"out of memory\"", t->id);
	}
	if (t->sign_state != SIGN_DONE)
		return true;
	t->sign_state = SIGN_APPLIED;
	if (t->sign.status == SMTP_SIGN_ERROR) {
		reply_args(s, SMTP_R_SIGN_FAILED, t->sign.reason);
		log_info("event=rejected id=%s client=%s code=451 reason=dkim-sign", t->id,
		         s->peer);
		atomic_fetch_add(&count_rejected, 1);
		tx_end(s);
		return false;
	}
	if (t->sign.status != SMTP_SIGN_OK)
		return true;
	/* Our fields are not the client's bytes: room past max_message_size,
	 * charged to the budget like every byte of the buffer. */
	t->msg.max += t->sign.len;
	if (!budget_reserve(s, t, t->sign.len)) {
		budget_exceeded(s, t);
		reply_over_budget(s);
		tx_end(s);
		return false;
	}
	if (smtp_sign_insert(&t->sign, &t->msg, t->hdr_len) != TERN_OK) {
		reply(s, SMTP_R_NOMEM);
		tx_end(s);
		return false;
	}
	t->hdr_len += t->sign.len;
	return true;
}

/* Whether the client has left while reading was off: reset, or closed
 * with nothing sent after the end of data. A client that pipelined more (a
 * QUIT) before closing its side waits for our replies (test_commit_read's
 * half-close), so it has not left. Over TLS the bytes after the end of
 * data may be a close_notify: unread bytes count as "not gone" there too,
 * so a TLS client that says goodbye properly is not seen (its message is
 * kept, as before). A look at the socket; nothing is read. */
static bool client_gone(struct session *s)
{
	struct bufferevent *under = bufferevent_get_underlying(s->bev); /* TLS: the socket's */
	if (evbuffer_get_length(bufferevent_get_input(s->bev)) > 0 ||
	    (under && evbuffer_get_length(bufferevent_get_input(under)) > 0))
		return false;
	struct pollfd p = {.fd = bufferevent_getfd(under ? under : s->bev), .events = POLLRDHUP};
	if (p.fd < 0 || poll(&p, 1, 0) != 1)
		return false;
	if (p.revents & (POLLHUP | POLLERR))
		return true; /* reset */
	if (!(p.revents & POLLRDHUP))
		return false;
	char c;
	ssize_t n = recv(p.fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
	return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* End of DATA or the LAST BDAT chunk: check the message, then commit. */
static void finish_message(struct session *s)
{
	struct tx *t = s->tx;
	const struct smtp_data_parser *dp = &t->dp;
	(void)TERN_BUG_ON(s->state != SS_DATA && s->state != SS_BDAT && s->state != SS_VERIFY);
	restore_idle_timeouts(s);
	if (t->over_budget) {
		reply_over_budget(s);
		tx_end(s);
		return;
	}
	if (t->spill_err && !dp->too_big && !t->bdat_failed) {
		log_error("event=spool_failed id=%s client=%s reason=%s stage=spill", t->id,
		          s->peer, tern_strerror(t->spill_err));
		reply(s, spool_failure_reply(t->spill_err));
		tx_end(s);
		return;
	}
	if (dp->too_big || t->bdat_failed) {
		reply_size_exceeded(s);
		log_info("event=rejected id=%s client=%s code=552 reason=too-big", t->id, s->peer);
		atomic_fetch_add(&count_rejected, 1);
		tx_end(s);
		return;
	}
	if (dp->bare_eol || dp->has_nul) {
		reply(s, SMTP_R_BARE_LINE_END);
		log_info("event=rejected id=%s client=%s code=554 reason=%s", t->id, s->peer,
			 dp->has_nul ? "nul-byte" : "bare-cr-or-lf");
		atomic_fetch_add(&count_rejected, 1);
		tx_end(s);
		return;
	}
	if (dp->received_count > s->conf->limits.max_received_headers) {
		char n[16];
		snprintf(n, sizeof(n), "%u", dp->received_count);
		reply_args(s, SMTP_R_MAIL_LOOP, n);
		log_info("event=rejected id=%s client=%s code=554 reason=mail-loop received=%u",
			 t->id, s->peer, dp->received_count);
		tx_end(s);
		return;
	}

	/* TRUST: SPF, DKIM and DMARC (verify.c) decide before anything is spooled,
	 * over the message as the client sent it. */
	if (t->vfy && !t->verified) {
		bool fwd = false; /* ARC: a recipient elsewhere means we forward (verify.c seals) */
		for (size_t i = 0; i < t->n_rcpts && !fwd; i++)
			fwd = !t->rcpts[i].local;
		smtp_verify_forwarding(t->vfy, fwd);
		const char *mp;
		size_t mn;
		if (!msg_view(s, t, &mp, &mn))
			return;
		if (t->ds)
			smtp_verify_mapped(t->vfy); /* SPILL: mp is data_stream_map's */
		smtp_verify_message(t->vfy, t->id, mp, mn, verify_done, s);
		session_enter_state(s, SS_VERIFY);
		bufferevent_disable(s->bev, EV_READ);
		bufferevent_set_timeouts(s->bev, NULL, NULL);
		return;
	}
	if (t->vfy && !t->verify_applied) {
		if (!verify_apply(s, t, &t->folder))
			return;
		t->verify_applied = true; /* sign_done comes back here: once is enough */
	}
	/* MILTER: the listener's milters, which may change header fields: after
	 * the checks of what the client sent, before our signatures cover it. */
	if (milter_message(s, t))
		return;        /* milter_done_message comes back here */
	if (!sign_stage(s, t)) /* SIGN: our DKIM signatures, before the spool commit */
		return;
	/* The checks took a while with reading off (SS_VERIFY): a client that
	 * closed meanwhile believes the message failed and will send it again.
	 * Not committed yet, so it is dropped; once SS_COMMIT has begun it is
	 * kept (RFC 5321 §4.1.1.4's duplicate case). Straight from end of data
	 * there was no wait worth a system call. */
	if (s->state == SS_VERIFY && client_gone(s)) {
		log_info("event=aborted id=%s sess=%u.%llu client=%s reason=client-gone "
		         "stage=checks",
		         t->id, worker_index(s->sw->w), (unsigned long long)s->serial, s->peer);
		tx_end(s);
		reply_host(s, SMTP_R_CLIENT_GONE); /* a half-closed client still hears it */
		session_close_after_flush(s, "client-gone");
		return;
	}
	spool_message(s);
}

/* The message goes to the spool; the reply waits for its commit. */
static void spool_message(struct session *s)
{
	struct tx *t = s->tx;
	/* The budget counted every byte this buffer holds (budget_reserve). */
	(void)TERN_BUG_ON(t->msg.cap > t->charged);
	struct spool_msg env = {0};
	memcpy(env.id, t->id, sizeof(env.id));
	env.sender = t->sender;
	env.created = (int64_t)time(NULL);
	env.body = t->body;
	env.ret = t->ret;
	env.smtputf8 = t->smtputf8;
	/* Whether we may send this sender the SUCCESS/DELAY notices it asks
	 * for (queue.h); decided now, by who the client is, and kept with the
	 * message. */
	env.trusted_client = s->authenticated || conf_in_relay_networks(s->conf, &s->peer_sa);
	env.folder = t->folder; /* TRUST: DMARC quarantine, MILTER quarantine -> Junk */
	env.envid = t->envid;
	env.auth = t->auth_param; /* RFC 4954 §5: carried to the next hop */
	char client[512];
	/* auth= goes last: the capture store reads everything after it. */
	snprintf(client, sizeof(client), "addr=%s helo=%.200s proto=%s%s%.128s", s->peer, s->helo,
		 proto_keyword(s, t), s->authenticated ? " auth=" : "",
		 s->authenticated && s->auth_user ? s->auth_user : "");
	env.client = client;
	env.size = t->msg.len;
	if (t->ds) { /* SPILL: the record names the synced file (queue/spill.h) */
		env.spill = (char *)data_stream_name(t->ds);
		env.spill_size = data_stream_size(t->ds);
		env.spill_off = t->spill_off;
		env.spill_crc = data_stream_crc(t->ds);
		env.size += spool_msg_tail(&env);
	}
	env.n_rcpts = t->n_rcpts;
	env.rcpts = calloc(t->n_rcpts, sizeof(*env.rcpts));
	if (!env.rcpts) {
		reply(s, SMTP_R_NOMEM);
		tx_end(s);
		return;
	}
	for (size_t i = 0; i < t->n_rcpts; i++) {
		env.rcpts[i].addr = t->rcpts[i].addr;
		env.rcpts[i].orcpt = t->rcpts[i].orcpt;
		env.rcpts[i].notify = t->rcpts[i].notify;
		env.rcpts[i].local = t->rcpts[i].local;
		env.rcpts[i].state = RCPT_QUEUED;
	}
	/* CAPTURE-ACK: in capture mode the store is the only durable home. */
	int rc = s->conf->capture_mode
	             ? scheduler_capture_put(s->sw->srv->sched, &env, t->msg.data, t->msg.len,
	                                     capture_put_done, s)
	             : spool_put(s->sw->srv->spool, &env, t->msg.data, t->msg.len, commit_cb, s);
	free(env.rcpts);
	if (rc == TERN_OK && s->submission && s->authenticated && s->auth_user &&
	    !s->conf->capture_mode)
		smtp_quota_charge(s->conf, s->auth_user, t->sender);
	if (rc != TERN_OK) {
		log_error("event=spool_failed id=%s client=%s reason=%s", t->id, s->peer,
			  tern_strerror(rc));
		reply(s, spool_failure_reply(rc));
		tx_end(s);
		return;
	}
	/* Nothing more is processed until the commit answers: replies stay in
	 * order. A plain session keeps reading on (turning it off and on cost two
	 * epoll_ctl a message): SS_COMMIT takes no input, the read high watermark
	 * bounds what waits, and a client's end of the connection meanwhile is
	 * read again once commit_finish reads on (on_event). Over TLS reading
	 * stops, as the filter's end of connection is not read twice. */
	session_enter_state(s, SS_COMMIT);
	if (s->tls_active)
		bufferevent_disable(s->bev, EV_READ);
	bufferevent_set_timeouts(s->bev, NULL, NULL);
}

/* ---------------------------------------------------------------- MILTER */

/*
 * The listener's milters (milter_stage.h, issue 9 item 8). The hooks above
 * call these: at the greeting (connect), HELO/EHLO, MAIL, RCPT and end of
 * message (after tern's own checks and verify.c, before the spool); the
 * reply to that command waits for milter_done. RSET, a new MAIL or HELO and
 * the end of a transaction abort the milters' transaction (tx_reset).
 */

/* Room header changes may add to a message, on top of max_message_size. */
#define MILTER_GROWTH_MAX (256u * 1024u)

enum { MILTER_AT_CONNECT, MILTER_AT_HELO, MILTER_AT_MAIL, MILTER_AT_RCPT, MILTER_AT_MSG };

static void milter_done(void *arg, const struct milter_stage_result *r);

/* At accept: which listener this is and whether it has milters (a look at
 * the configuration only when some listener has them). */
static void milter_listener_of(struct session *s, struct evconnlistener *l)
{
	bool any = false;
	for (size_t i = 0; i < s->conf->n_listeners && !any; i++)
		any = s->conf->listeners[i].n_milters > 0;
	if (!any)
		return;
	struct sockaddr_storage bound;
	socklen_t blen = sizeof(bound);
	if (getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&bound, &blen) != 0)
		return;
	s->milter_listener = milter_stage_listener(s->conf, (struct sockaddr *)&bound);
}

/* Reading stops until milter_done. */
static void milter_wait(struct session *s, int at)
{
	s->milter_wait = true;
	s->milter_at = at;
	bufferevent_disable(s->bev, EV_READ);
	bufferevent_set_timeouts(s->bev, NULL, NULL);
}

static const char *tls_version(const struct session *s)
{
	SSL *ssl = s->tls_active ? bufferevent_openssl_get_ssl(s->bev) : NULL;
	return ssl ? SSL_get_version(ssl) : NULL;
}

static bool milter_connect(struct session *s)
{
	if (!s->milter_listener || s->milter_greeted)
		return false;
	s->milter_greeted = true;
	char sess[48], name[SMTP_DOMAIN_MAX + 8], ifa[INET6_ADDRSTRLEN + 2];
	snprintf(sess, sizeof(sess), "%u.%llu", worker_index(s->sw->w),
	         (unsigned long long)s->serial);
	const char *rdns = policy_client_name(s->pol); /* POLICY: forward-confirmed name */
	if (rdns)
		snprintf(name, sizeof(name), "%s", rdns);
	else
		snprintf(name, sizeof(name), "[%s]", s->peer);
	/* our end, for {if_addr}: asked now rather than kept in every session */
	struct sockaddr_storage local_sa = {0};
	socklen_t llen = sizeof(local_sa);
	evutil_socket_t fd = bufferevent_getfd(s->bev);
	if (fd < 0 || getsockname(fd, (struct sockaddr *)&local_sa, &llen) != 0)
		memset(&local_sa, 0, sizeof(local_sa));
	peer_format(&local_sa, ifa, sizeof(ifa));
	struct milter_stage_params p = {
	    .base = worker_base(s->sw->w),
	    .listener = s->milter_listener,
	    .myhostname = s->conf->hostname,
	    .sess = sess,
	    .peer = &s->peer_sa,
	    .client_addr = s->peer,
	    .client_name = name,
	    .if_addr = local_sa.ss_family ? ifa : NULL,
	};
	s->milter = milter_stage_new(&p, milter_done, s);
	if (!s->milter) {
		/* out of memory: as if every milter were down */
		enum conf_milter_action da = s->milter_listener->milter_default_action;
		s->milter_listener = NULL;
		if (da == CONF_MILTER_ACCEPT)
			return false;
		reply_verbatim(s, da == CONF_MILTER_REJECT
		                      ? "554 5.7.1 Mail filter unavailable"
		                      : "421 4.7.1 Mail filter unavailable, try again later");
		session_close_after_flush(s, "milter");
		return true;
	}
	milter_stage_connect(s->milter);
	milter_wait(s, MILTER_AT_CONNECT);
	return true;
}

static bool milter_helo(struct session *s)
{
	if (!s->milter)
		return false;
	milter_stage_helo(s->milter, s->helo, tls_version(s));
	milter_wait(s, MILTER_AT_HELO);
	return true;
}

static bool milter_mail(struct session *s, struct tx *t)
{
	if (!s->milter)
		return false;
	milter_stage_mail(s->milter, t->sender, s->authenticated ? s->auth_user : NULL,
	                  tls_version(s));
	milter_wait(s, MILTER_AT_MAIL);
	return true;
}

static bool milter_rcpt(struct session *s, struct tx *t, const char *addr)
{
	if (!s->milter || t->milter_discard)
		return false;
	char *copy = strdup(addr);
	if (!copy) {
		rcpt_take_back(t);
		reply(s, SMTP_R_NOMEM);
		return true;
	}
	free(s->milter_rcpt);
	s->milter_rcpt = copy;
	milter_stage_rcpt(s->milter, addr);
	milter_wait(s, MILTER_AT_RCPT);
	return true;
}

/* A message a milter said to discard: the client hears it was queued. */
static void milter_discarded(struct session *s, struct tx *t, const char *milter)
{
	char q[256];
	log_info("event=milter_discard id=%s client=%s milter=%s", t->id, s->peer,
	         log_quote(milter, strlen(milter), q, sizeof(q)));
	budget_release(t);
	reply_args(s, SMTP_R_QUEUED, t->id);
	tx_end(s);
}

static bool milter_message(struct session *s, struct tx *t)
{
	if (!s->milter || t->milter_done)
		return false;
	if (t->ds) {
		/* SPILL: a message past SPILL_THRESHOLD is not given to milters
		 * (as Postfix's milter and rspamd's max size let large mail pass
		 * unscanned): logged, once. */
		t->milter_done = true;
		log_info("event=milter_skipped id=%s client=%s reason=too-big size=%" PRIu64
		         " limit=%u",
		         t->id, s->peer, t->spilled, (unsigned)SPILL_THRESHOLD);
		return false;
	}
	if (t->milter_discard) {
		milter_discarded(s, t, "");
		return true;
	}
	/* BUDGET: while the milters run, each milter's client holds a copy of
	 * the body while it sends it, and header changes leave one rewritten
	 * message between milters (milter_stage.c), the next built beside it:
	 * at most two copies at a time. (A milter taking the body without a
	 * reply per chunk, NR_BODY, also has it in its socket's output buffer
	 * until it reads it: not counted.) */
	if (!budget_copies(s, t, 2 * ((uint64_t)t->msg.len + MILTER_GROWTH_MAX))) {
		budget_exceeded(s, t);
		reply_over_budget(s);
		tx_end(s);
		return true; /* answered: after_message reads on */
	}
	milter_stage_message(s->milter, t->id, t->msg.data, t->msg.len, t->hdr_len,
	                     MILTER_GROWTH_MAX);
	session_enter_state(s, SS_VERIFY); /* nothing is read: the checks decide first */
	milter_wait(s, MILTER_AT_MSG);
	return true;
}

static void milter_abort(struct session *s)
{
	if (s->milter)
		milter_stage_abort(s->milter);
}

/* A milter's refusal of a command or the message: logged, answered. */
static void milter_refused(struct session *s, const struct milter_stage_result *r, const char *step)
{
	char q[256], qa[LOG_ADDR_MAX];
	const struct tx *t = s->tx;
	log_info("event=rejected sess=%u.%llu%s%s client=%s step=%s%s%s code=%.3s reason=milter "
	         "milter=%s%s",
	         worker_index(s->sw->w), (unsigned long long)s->serial, t && t->id[0] ? " id=" : "",
	         t && t->id[0] ? t->id : "", s->peer, step, strcmp(step, "rcpt") == 0 ? " to=" : "",
	         strcmp(step, "rcpt") == 0 ? log_quote_addr(s->milter_rcpt, qa, sizeof(qa)) : "",
	         r->reply, log_quote(r->milter, strlen(r->milter), q, sizeof(q)),
	         r->failed ? " failed=1" : "");
	reply_verbatim(s, r->reply);
}

/* End of message: header changes into the buffer (charged like the rest). */
static bool milter_take_message(struct session *s, struct tx *t,
                                const struct milter_stage_result *r)
{
	if (!r->modified)
		return true;
	size_t grow = r->len > t->msg.len ? r->len - t->msg.len : 0;
	t->msg.max += grow;
	if (!budget_reserve(s, t, grow)) {
		budget_exceeded(s, t);
		reply_over_budget(s);
		return false;
	}
	tbuf_reset(&t->msg);
	if (tbuf_append(&t->msg, r->msg, r->len) != TERN_OK) {
		reply(s, SMTP_R_NOMEM);
		return false;
	}
	/* what is ours at the top now (sign.c signs what follows) */
	t->hdr_len = r->trace_len;
	return true;
}

/* End of message answered: the milters' copies are freed, and uncharged. */
static void milter_copies_done(struct session *s, struct tx *t)
{
	milter_stage_release_copies(s->milter);
	budget_copies_release(t);
}

static void milter_done_message(struct session *s, const struct milter_stage_result *r)
{
	struct tx *t = s->tx;
	if (r->action == MILTER_REJECT || r->action == MILTER_TEMPFAIL) {
		milter_refused(s, r, "eom");
		atomic_fetch_add(&count_rejected, 1);
		tx_end(s);
		if (strncmp(r->reply, "421", 3) == 0)
			session_close_after_flush(s, "milter-421"); /* 421 means closing */
	} else if (r->action == MILTER_DISCARD) {
		milter_discarded(s, t, r->milter);
	} else if (!milter_take_message(s, t, r)) {
		tx_end(s);
	} else {
		milter_copies_done(s, t); /* msg has what it needs of them */
		if (r->quarantine) {
			char q[1024];
			log_info("event=milter_quarantine id=%s client=%s reason=%s", t->id,
			         s->peer,
			         log_quote(r->quarantine_reason, strlen(r->quarantine_reason), q,
			                   sizeof(q)));
			t->folder = SPOOL_FOLDER_JUNK;
		}
		t->milter_done = true;
		finish_message(s); /* SIGN, then the spool */
	}
	if (s->state == SS_HELO)
		restore_idle_timeouts(s); /* milter_wait took them off */
	after_message(s);
}

static void milter_done(void *arg, const struct milter_stage_result *r)
{
	struct session *s = arg;
	s->milter_wait = false;
	if (s->state == SS_CLOSING)
		return; /* a shutdown closed it meanwhile */
	if (s->milter_at == MILTER_AT_MSG) {
		milter_done_message(s, r);
		return;
	}
	bool refused = r->action == MILTER_REJECT || r->action == MILTER_TEMPFAIL;
	struct tx *t = s->tx;
	switch (s->milter_at) {
	case MILTER_AT_CONNECT:
		/* Greeted whatever the milters said (as Postfix does): a refusal
		 * here stays with the milter's client and answers HELO/EHLO and
		 * every command after, so the client hears it with a reply it
		 * reads as one (not as a greeting it may retry at once). */
		if (refused || r->failed) {
			char q[256];
			log_info(
			    "event=milter_connect sess=%u.%llu client=%s action=%s milter=%s%s",
			    worker_index(s->sw->w), (unsigned long long)s->serial, s->peer,
			    milter_action_name(r->action),
			    log_quote(r->milter, strlen(r->milter), q, sizeof(q)),
			    r->failed ? " failed=1" : "");
		}
		greet(s);
		break;
	case MILTER_AT_HELO:
		if (refused)
			milter_refused(s, r, "helo");
		else
			helo_reply(s);
		break;
	case MILTER_AT_MAIL:
		if (refused) {
			milter_refused(s, r, "mail");
			tx_end(s);
			break;
		}
		t->milter_discard = r->action == MILTER_DISCARD;
		reply_args(s, SMTP_R_SENDER_OK, t->sender);
		break;
	case MILTER_AT_RCPT:
		if (refused) {
			rcpt_take_back(t); /* this recipient only */
			milter_refused(s, r, "rcpt");
			break;
		}
		if (r->action == MILTER_DISCARD)
			t->milter_discard = true;
		rcpt_ok(s, t, s->milter_rcpt);
		break;
	}
	if (refused && strncmp(r->reply, "421", 3) == 0 && s->state != SS_CLOSING)
		session_close_after_flush(s, "milter-421"); /* 421 means closing */
	if (s->state == SS_CLOSING)
		return;
	restore_idle_timeouts(s);
	if (s->shutting_down && states[s->state].idle) {
		reply_host(s, SMTP_R_SHUTDOWN);
		session_close_after_flush(s, "shutdown");
		return;
	}
	if (s->out_blocked)
		return; /* on_write reads on */
	bufferevent_enable(s->bev, EV_READ);
	process_input(s);
}

/* ------------------------------------------------------------- reading */

static void reply_line_too_long(struct session *s)
{
	char n[24];
	snprintf(n, sizeof(n), "%zu", (size_t)s->conf->limits.max_line_length);
	reply_args(s, SMTP_R_LINE_TOO_LONG, n);
	count_error(s);
}

/*
 * The longest line the session reads now: limits.max_line_length, but on a
 * submission listener RFC 4954 §4's 12288 bytes for a SASL response and
 * for an AUTH command's initial response (an OAuth token is often longer
 * than a command line may be).
 */
static size_t line_limit(const struct session *s, struct evbuffer *in)
{
	size_t max = s->conf->limits.max_line_length;
	if (!s->submission)
		return max;
	size_t sasl = SMTP_AUTH_LINE_MAX + 2; /* CRLF */
	if (s->state == SS_AUTH)
		return max > sasl ? max : sasl;
	/* "AUTH XOAUTH2 " and the like before the response: room for a name */
	char head[5];
	if (s->state == SS_HELO && evbuffer_copyout(in, head, sizeof(head)) == sizeof(head) &&
	    strncasecmp(head, "AUTH ", sizeof(head)) == 0)
		return max > sasl + 64 ? max : sasl + 64;
	return max;
}

/* One command line from the input; false when more input is needed. */
static bool read_command(struct session *s, struct evbuffer *in)
{
	size_t max = line_limit(s, in);
	struct evbuffer_ptr lf = evbuffer_search(in, "\n", 1, NULL);
	if (s->discard_line) {
		if (lf.pos < 0) {
			evbuffer_drain(in, evbuffer_get_length(in));
			return false;
		}
		evbuffer_drain(in, (size_t)lf.pos + 1);
		s->discard_line = false;
		reply_line_too_long(s);
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
		reply_line_too_long(s);
		return true;
	}
	const char *line = (const char *)evbuffer_pullup(in, (ev_ssize_t)linelen);
	size_t n = linelen - 1;
	if (n > 0 && line[n - 1] == '\r')
		n--;
	s->cmd_bytes = linelen; /* wire_out: a reply with nothing pipelined after it */
	if (s->state == SS_AUTH)
		auth_line(s, line, n);
	else
		dispatch(s, line, n);
	s->cmd_bytes = 0;
	/* dispatch may have closed the session, but the buffer is still ours. */
	evbuffer_drain(in, linelen);
	if (s->starttls) {
		start_tls(s, in);
		return false; /* the old input buffer is no longer the session's */
	}
	return true;
}

/* Feeds DATA bytes to the parser; false when more input is needed. */
static bool read_data(struct session *s, struct evbuffer *in)
{
	struct tx *t = s->tx;
	struct evbuffer_iovec v[16];
	int nv = evbuffer_peek(in, -1, NULL, v, 16);
	size_t used = 0;
	bool end = false;
	for (int i = 0; i < nv && i < 16 && !end; i++) {
		size_t consumed = 0;
		if (!spill_room(s, t, v[i].iov_len)) /* SPILL: the writer is behind */
			break;
		/* Unstuffing only shrinks: the input length (plus the few bytes
		 * the parser may hold back from the last read) bounds the output. */
		if (!t->over_budget && !t->dp.too_big && !budget_reserve(s, t, v[i].iov_len + 8))
			budget_exceeded(s, t);
		if (smtp_data_feed(&t->dp, v[i].iov_base, v[i].iov_len, &consumed,
		                   t->over_budget || t->spill_err ? NULL : &t->msg) ==
		    SMTP_DATA_END)
			end = true;
		used += consumed;
		spill_check_size(s, t);
	}
	evbuffer_drain(in, used);
	if (end) {
		if (spill_at_end(s, t))
			return false; /* SPILL: spill_resume finishes the message */
		finish_message(s);
		return true;
	}
	if (s->spill_wait)
		return false;
	return evbuffer_get_length(in) > 0; /* more than 16 chunks were waiting */
}

static bool read_bdat(struct session *s, struct evbuffer *in)
{
	struct tx *t = s->tx;
	size_t avail = evbuffer_get_length(in);
	size_t take = t->bdat_remaining < avail ? (size_t)t->bdat_remaining : avail;
	/* SPILL: in pieces, so a spilling session buffers a bounded amount */
	if (take > SPILL_CHUNK / 4 && spill_allowed(s))
		take = SPILL_CHUNK / 4;
	if (take > 0) {
		if (!t->bdat_failed && !t->over_budget && !t->spill_err) {
			if (t->bdat_total + take > s->conf->limits.max_message_size) {
				t->bdat_failed = true;
			} else {
				if (!spill_room(s, t, take))
					return false; /* SPILL: spill_resume reads on */
				const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)take);
				if (!budget_reserve(s, t, take))
					budget_exceeded(s, t);
				else if (tbuf_append(&t->msg, p, take) != TERN_OK)
					t->bdat_failed = true;
			}
		}
		t->bdat_total += take;
		t->bdat_remaining -= take;
		evbuffer_drain(in, take);
	}
	if (t->bdat_remaining > 0)
		return false;
	/* The chunk is complete. */
	if (t->bdat_last) {
		if (t->over_budget) { /* nothing kept (the buffer is gone): 452 */
			finish_message(s);
			return true;
		}
		if (!t->bdat_failed && spill_at_end(s, t))
			return false; /* SPILL: spill_resume finishes the message */
		const char *body = t->msg.data + t->hdr_len;
		size_t body_len = t->msg.len - t->hdr_len;
		smtp_scan_headers(body, body_len, &t->dp.received_count, &t->dp.has_8bit);
		/* Only BINARYMIME is byte-exact. Any other BODY must follow the
		 * DATA rules (RFC 3030 §3): bare CR, bare LF or NUL is refused as
		 * DATA refuses it, or a relay hop that turns this into DATA
		 * could be made to end the message early (smuggling, §5.4). */
		if (t->body != SMTP_BODY_BINARYMIME && !t->bdat_failed)
			smtp_scan_line_ends(body, body_len, &t->dp.bare_eol, &t->dp.has_nul);
		finish_message(s);
		return true;
	}
	session_enter_state(s, SS_CHUNKING);
	restore_idle_timeouts(s);
	if (t->over_budget) {
		reply_over_budget(s);
	} else if (t->bdat_failed) {
		reply_size_exceeded(s);
	} else {
		char n[24];
		snprintf(n, sizeof(n), "%llu", (unsigned long long)t->bdat_total);
		reply_args(s, SMTP_R_CHUNK_OK, n);
	}
	return true;
}

/*
 * True (and reading stopped) when the client has left more than
 * OUT_HIGH_WATERMARK bytes of replies unread. Reading resumes in on_write
 * once the output is down to OUT_LOW_WATERMARK. Only for the states that
 * read commands or message bytes: SS_COMMIT processes nothing until
 * commit_done, SS_CLOSING reads nothing more.
 */
static bool output_full(struct session *s)
{
	enum session_input how = states[s->state].input;
	if (how != IN_CMD && how != IN_DATA && how != IN_BDAT)
		return false;
	if (evbuffer_get_length(bufferevent_get_output(s->bev)) <= OUT_HIGH_WATERMARK)
		return false;
	s->out_blocked = true;
	bufferevent_disable(s->bev, EV_READ);
	return true;
}

static void process_input(struct session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	bool progress = true;
	if (s->out_blocked || s->milter_wait || s->spill_wait)
		return;
	while (progress && evbuffer_get_length(in) > 0) {
		if (output_full(s))
			return;
		if (s->milter_wait || s->spill_wait)
			return; /* MILTER: milter_done reads on; SPILL: spill_resume */
		if (s->skip_bytes > 0) {
			size_t avail = evbuffer_get_length(in);
			size_t n = s->skip_bytes < avail ? (size_t)s->skip_bytes : avail;
			evbuffer_drain(in, n);
			s->skip_bytes -= n;
			continue;
		}
		if (s->shutting_down && states[s->state].idle) {
			reply_host(s, SMTP_R_SHUTDOWN);
			session_close_after_flush(s, "shutdown");
			return;
		}
		switch (states[s->state].input) {
		case IN_CMD:
			progress = read_command(s, in);
			break;
		case IN_DATA:
			progress = read_data(s, in);
			break;
		case IN_BDAT:
			progress = read_bdat(s, in);
			break;
		case IN_EARLY:
			/* POLICY: the client spoke before our greeting */
			policy_client_spoke(s->pol);
			return;
		case IN_NONE:
			return;
		}
		if (s->state == SS_CLOSING)
			return;
	}
	/* A BDAT 0 LAST needs no bytes: finish it even with an empty buffer. */
	if (s->state == SS_BDAT && s->tx->bdat_remaining == 0 && !s->spill_wait)
		read_bdat(s, in);
	/* Shutting down: a session back between transactions is closed now. */
	if (s->shutting_down && states[s->state].idle) {
		reply_host(s, SMTP_R_SHUTDOWN);
		session_close_after_flush(s, "shutdown");
	}
}

static void on_read(struct bufferevent *bev, void *arg)
{
	process_input(arg);
}

/* The output went down to OUT_LOW_WATERMARK (the write low watermark). */
static void on_write(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;
	if (!s->out_blocked)
		return;
	s->out_blocked = false;
	if (s->state == SS_COMMIT || s->state == SS_VERIFY || s->state == SS_AUTH_WAIT ||
	    s->milter_wait)
		return; /* commit_done (verify_done, milter_done) or auth_resume reads on */
	bufferevent_enable(s->bev, EV_READ);
	process_input(s);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;
	if (what & BEV_EVENT_CONNECTED) {
		/* The STARTTLS handshake is done: commands again, a new greeting
		 * is not sent (RFC 3207 §4.2: the client starts with EHLO). After
		 * implicit TLS the greeting was already waiting in the layer. */
		char d[600];
		metric_inc_l2(M_TLS_HANDSHAKES, "inbound", "ok");
		log_info("event=tls sess=%u.%llu client=%s %s", worker_index(s->sw->w),
		         (unsigned long long)s->serial, s->peer,
		         tls_describe(bufferevent_openssl_get_ssl(bev), d, sizeof(d)));
		if (s->state == SS_TLS) {
			session_enter_state(s, SS_GREETED);
			process_input(s); /* what came with the end of the handshake */
		}
		return;
	}
	if ((what & BEV_EVENT_ERROR) && s->tls_active && s->state != SS_CLOSING) {
		SSL *ssl = bufferevent_openssl_get_ssl(bev); /* TLS: why a handshake failed */
		if (ssl && !SSL_is_init_finished(ssl)) {
			char why[256];
			metric_inc_l2(M_TLS_HANDSHAKES, "inbound", "failed");
			log_warn(
			    "event=tls_failed sess=%u.%llu client=%s reason=\"%s\"",
			    worker_index(s->sw->w), (unsigned long long)s->serial, s->peer,
			    tls_last_error(bufferevent_get_openssl_error(bev), why, sizeof(why)));
		}
	}
	if (s->state == SS_CLOSING) {
		session_free(s);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		if (s->state == SS_COMMIT || s->state == SS_VERIFY || s->state == SS_AUTH_WAIT ||
		    s->milter_wait)
			return; /* we are the slow one; the commit (verify.c, a milter) or the
			           check will answer */
		enum session_input how = states[s->state].input;
		reply_host(s, SMTP_R_TIMEOUT);
		session_close_after_flush(s, how == IN_DATA || how == IN_BDAT ? "data-timeout"
		                                                              : "idle-timeout");
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		if (s->state == SS_COMMIT && !s->tls_active &&
		    what == (BEV_EVENT_READING | BEV_EVENT_EOF))
			return; /* libevent stopped reading; after the commit's reply
			           commit_finish reads on and meets the end again, after
			           whatever the client sent before it (a QUIT) */
		if (s->state == SS_COMMIT || s->auth_in_pool ||
		    (s->tx && s->tx->sign_state == SIGN_RUNNING)) {
			/* The commit callback or the pool's answer still points at
			 * us: free there. */
			s->dead = true;
			bufferevent_disable(s->bev, EV_READ | EV_WRITE);
			return;
		}
		log_info("event=disconnect sess=%u.%llu client=%s reason=%s state=%s messages=%u",
		         worker_index(s->sw->w), (unsigned long long)s->serial, s->peer,
		         (what & BEV_EVENT_EOF) ? "peer-closed" : "io-error", states[s->state].name,
		         s->n_msgs);
		session_free(s);
	}
}

/* ------------------------------------------------------------ lifecycle */

/* After shutdown: the last session is gone (logged once, by whichever of
 * smtp_server_shutdown and session_free sees it first). */
static void log_drained(struct smtp_server *srv)
{
	if (!atomic_flag_test_and_set(&srv->drained_logged))
		log_info("event=smtp_drained sessions=0");
}

static void session_free(struct session *s)
{
	struct srv_worker *sw = s->sw;
	send_batch_flush(worker_batch(sw->w)); /* a reply may wait there: before the close */
	if (s->prev)
		s->prev->next = s->next;
	else
		sw->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	peer_counts_release(sw->srv->peers, &s->peer_sa);
	metric_dec_l(M_SESSIONS_ACTIVE, smtp_metrics_profile(s->conf, s->submission));
	if (atomic_fetch_sub(&sw->srv->n_sessions, 1) == 1 && atomic_load(&sw->srv->stopping))
		log_drained(sw->srv);
	tx_free(s->tx);
	milter_stage_free(s->milter); /* MILTER: QUIT to each; no callback after */
	policy_session_free(s->pol); /* POLICY: cancels its DNS queries and timers */
	free(s->helo);
	free(s->auth_user);
	free(s->milter_rcpt);
	free(s->auth_cfg);
	(void)TERN_BUG_ON(s->auth_in_pool); /* auth_verify_done frees, not us */
	sasl_free(s->sasl);
	if (s->auth_timer)
		event_free(s->auth_timer);
	if (s->starttls)
		SSL_free(s->starttls);
	tls_close_clear(&s->tlsc); /* before the filter (and the socket) go, below */
	bufferevent_free(s->bev);
	runtime_release(s->rt);
	free(s);
}

/* Refuses a connection over a limit with a 421 written straight away. */
static void refuse(evutil_socket_t fd, const struct tern_config *conf, enum smtp_reply_id id)
{
	char text[REPLY_LINE_MAX];
	size_t n = host_line(text, id, conf->hostname);
	ssize_t w = send(fd, text, n, MSG_NOSIGNAL | MSG_DONTWAIT);
	(void)w; /* best effort: the peer learns why, or simply sees the close */
	close(fd);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
		      int salen, void *arg)
{
	struct srv_worker *sw = arg;
	struct smtp_server *srv = sw->srv;
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

	size_t n = atomic_fetch_add(&srv->n_sessions, 1) + 1;
	if (n > conf->limits.max_connections) {
		atomic_fetch_sub(&srv->n_sessions, 1);
		log_warn("event=refused client=%s reason=max-connections limit=%u", peer,
			 conf->limits.max_connections);
		refuse(fd, conf, SMTP_R_TOO_MANY_CONNECTIONS);
		runtime_release(rt);
		return;
	}
	if (!peer_counts_acquire(srv->peers, &ss, conf->limits.max_connections_per_ip)) {
		atomic_fetch_sub(&srv->n_sessions, 1);
		log_warn("event=refused client=%s reason=max-connections-per-ip limit=%u", peer,
			 conf->limits.max_connections_per_ip);
		refuse(fd, conf, SMTP_R_TOO_MANY_CONNECTIONS_IP);
		runtime_release(rt);
		return;
	}

	struct session *s = calloc(1, sizeof(*s));
	struct bufferevent *bev =
		s ? bufferevent_socket_new(worker_base(sw->w), fd, BEV_OPT_CLOSE_ON_FREE) : NULL;
	if (!s || !bev) {
		free(s);
		peer_counts_release(srv->peers, &ss);
		atomic_fetch_sub(&srv->n_sessions, 1);
		refuse(fd, conf, SMTP_R_NOMEM_CLOSE);
		runtime_release(rt);
		return;
	}
	s->sw = sw;
	s->bev = bev;
	s->rt = rt;
	s->conf = conf;
	s->state = SS_CONNECTED; /* the one write outside session_enter_state: the first */
	s->serial = ++sw->next_serial;
	s->peer_sa = ss;
	tern_strlcpy(s->peer, peer, sizeof(s->peer));
	enum conf_listen_tls ltls = CONF_LISTEN_TLS_NONE;
	for (size_t i = 0; i < sw->n_listeners; i++) {
		if (sw->listeners[i] == l) {
			s->submission = sw->listener_submission[i];
			ltls = sw->listener_tls[i];
		}
	}
	s->offer_starttls = ltls == CONF_LISTEN_TLS_STARTTLS && srv->tls != NULL;
	milter_listener_of(s, l); /* MILTER: this listener's milters, if any */
	if ((s->submission || (conf->capture_mode && capture_login)) && auth_setup(s) != TERN_OK) {
		/* not linked yet: undone here, and the client hears why */
		bufferevent_setfd(bev, -1);
		bufferevent_free(bev);
		free(s);
		peer_counts_release(srv->peers, &ss);
		atomic_fetch_sub(&srv->n_sessions, 1);
		refuse(fd, conf, SMTP_R_NOMEM_CLOSE);
		runtime_release(rt);
		return;
	}
	s->next = sw->sessions;
	if (s->next)
		s->next->prev = s;
	sw->sessions = s;
	smtp_metrics_connect(conf, evconnlistener_get_fd(l), s->submission);

	bufferevent_setcb(bev, on_read, on_write, on_event, s);
	bufferevent_setwatermark(bev, EV_READ, 0, READ_HIGH_WATERMARK);
	bufferevent_setwatermark(bev, EV_WRITE, OUT_LOW_WATERMARK, 0);
	/* One recv per read instead of FIONREAD + readv; a failure keeps
	 * libevent's reader, which behaves the same. */
	(void)wire_in_attach(bev);
	restore_idle_timeouts(s);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	log_info("event=connect sess=%u.%llu client=%s%s", worker_index(sw->w),
	         (unsigned long long)s->serial, peer,
	         ltls == CONF_LISTEN_TLS_IMPLICIT ? " tls=implicit" : "");
	/* TLS: implicit TLS (RFC 8314) puts the TLS layer on at once, as after
	 * STARTTLS; the greeting below waits in it for the handshake. */
	if (ltls == CONF_LISTEN_TLS_IMPLICIT) {
		SSL *ssl = srv->tls ? SSL_new(srv->tls) : NULL;
		if (!ssl || !tls_layer_on(s, ssl)) {
			log_error("event=tls_failed sess=%u.%llu client=%s reason=\"%s\"",
			          worker_index(sw->w), (unsigned long long)s->serial, peer,
			          srv->tls ? "out of memory" : "no certificate loaded");
			session_free(s);
			return;
		}
	}
	policy_at_connect(s, !s->submission && !conf->capture_mode); /* POLICY: then greets */
}

struct smtp_server *smtp_server_new(struct spool *sp, struct scheduler *sched)
{
	struct smtp_server *srv = calloc(1, sizeof(*srv));
	if (!srv)
		return NULL;
	srv->spool = sp;
	srv->sched = sched;
	srv->verify_pool = pool_new(1); /* TRUST: NULL is fine: bodies hashed on the loop */
	srv->spill_pool = pool_new(2);  /* SPILL: NULL is fine: messages stay in memory */
	atomic_flag_clear(&srv->drained_logged);
	if (!(srv->peers = peer_counts_new())) {
		pool_free(srv->verify_pool);
		pool_free(srv->spill_pool);
		free(srv);
		return NULL;
	}
	return srv;
}

static struct srv_worker *srv_worker_for(struct smtp_server *srv, struct worker *w)
{
	for (size_t i = 0; i < srv->n_workers; i++)
		if (srv->workers[i]->w == w)
			return srv->workers[i];
	if (srv->n_workers == sizeof(srv->workers) / sizeof(srv->workers[0]))
		return NULL;
	struct srv_worker *sw = calloc(1, sizeof(*sw));
	if (!sw)
		return NULL;
	sw->srv = srv;
	sw->w = w;
	srv->workers[srv->n_workers++] = sw;
	return sw;
}

int smtp_server_listen(struct smtp_server *srv, struct worker *w, int listen_fd,
                       const char *profile, enum conf_listen_tls tls)
{
	struct srv_worker *sw = srv_worker_for(srv, w);
	if (!sw || sw->n_listeners == MAX_LISTENERS_PER_WORKER)
		return TERN_ELIMIT;
	/* backlog 0: the socket already listens (serve.c, 4096); libevent's -1
	 * would call listen(fd, 128) again and drop bursts of connections. */
	struct evconnlistener *l = evconnlistener_new(worker_base(w), on_accept, sw,
						      LEV_OPT_CLOSE_ON_FREE, 0, listen_fd);
	if (!l)
		return TERN_EIO;
	sw->listener_submission[sw->n_listeners] = strcmp(profile, "submission") == 0;
	sw->listener_tls[sw->n_listeners] = tls;
	sw->listeners[sw->n_listeners++] = l;
	return TERN_OK;
}

static void worker_shutdown(void *arg)
{
	struct srv_worker *sw = arg;
	sw->shutting_down = true;
	for (size_t i = 0; i < sw->n_listeners; i++) {
		evconnlistener_free(sw->listeners[i]);
		sw->listeners[i] = NULL;
	}
	sw->n_listeners = 0;
	struct session *s = sw->sessions;
	while (s) {
		struct session *next = s->next;
		/* Between transactions: close now. With a transaction open (after
		 * MAIL, before its end of data) the client may finish it; the
		 * session closes once it ends (process_input, commit_done), and
		 * the daemon's shutdown_grace bounds the wait. */
		if (states[s->state].idle) {
			reply_host(s, SMTP_R_SHUTDOWN);
			session_close_after_flush(s, "shutdown");
		} else if (tls_close_our_side_done(&s->tlsc)) {
			session_free(s); /* TLS close with ours sent: no need to wait for theirs */
		} else {
			s->shutting_down = true;
		}
		s = next;
	}
}

void smtp_server_shutdown(struct smtp_server *srv)
{
	atomic_store(&srv->stopping, true);
	if (atomic_load(&srv->n_sessions) == 0)
		log_drained(srv);
	for (size_t i = 0; i < srv->n_workers; i++)
		worker_post(srv->workers[i]->w, worker_shutdown, srv->workers[i]);
}

void smtp_server_set_tls(struct smtp_server *srv, struct ssl_ctx_st *ctx)
{
	if (ctx)
		SSL_CTX_up_ref(ctx);
	if (srv->tls)
		SSL_CTX_free(srv->tls);
	srv->tls = ctx;
}

void smtp_server_set_policy(struct smtp_server *srv, struct policy *p)
{
	srv->policy = p;
}

void smtp_server_set_auth(struct smtp_server *srv, struct pool *pool, struct throttle *throttle)
{
	srv->auth_pool = pool;
	srv->throttle = throttle;
}

size_t smtp_server_sessions(struct smtp_server *srv)
{
	return atomic_load(&srv->n_sessions);
}

/*
 * A TLS session's last word: the 421 and a close_notify, encrypted into a
 * memory BIO put in place of the filter's (SSL_set0_wbio keeps the read
 * side's reference) and sent straight to the socket. Nothing may go
 * through the bufferevents here: with the loops stopped, the deferred
 * callbacks a write schedules would hold references that are never
 * dropped, and the session's memory would leak.
 */
static void tls_last_word(struct session *s, evutil_socket_t fd)
{
	SSL *ssl = bufferevent_openssl_get_ssl(s->bev);
	if (!ssl || !SSL_is_init_finished(ssl))
		return; /* mid-handshake: just close */
	BIO *mem = BIO_new(BIO_s_mem());
	if (!mem)
		return;
	SSL_set0_wbio(ssl, mem);
	char line[REPLY_LINE_MAX];
	size_t n = host_line(line, SMTP_R_SHUTDOWN, s->conf->hostname);
	if (SSL_write(ssl, line, (int)n) <= 0)
		return;
	(void)SSL_shutdown(ssl); /* close_notify: the 421 was the last word */
	char *rec;
	long len = BIO_get_mem_data(mem, &rec);
	if (len > 0)
		(void)send(fd, rec, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT);
	smtp_metrics_reply(line[0]);
}

/*
 * A session still in a transaction when shutdown_grace ran out (a large
 * DATA under way, say; its end of data not reached, or its checks still
 * running): its message is not queued, and the client is told so with 421
 * rather than a bare close. The loops have stopped, so the reply is
 * written straight to the socket (what fits; it is non-blocking).
 */
static void session_last_word(struct session *s)
{
	/* Not in SS_COMMIT: the spool may have the message already. */
	if (!s->bev || !(states[s->state].facts & HAS_TX) || s->state == SS_COMMIT)
		return;
	struct bufferevent *sock = s->tls_active ? bufferevent_get_underlying(s->bev) : s->bev;
	evutil_socket_t fd = sock ? bufferevent_getfd(sock) : -1;
	if (fd < 0)
		return;
	log_info("event=disconnect sess=%u.%llu client=%s reason=shutdown id=%s "
	         "message=not-queued",
	         worker_index(s->sw->w), (unsigned long long)s->serial, s->peer,
	         s->tx ? s->tx->id : "-");
	if (s->tls_active) {
		tls_last_word(s, fd);
		return;
	}
	reply_host(s, SMTP_R_SHUTDOWN);
	(void)evbuffer_write(bufferevent_get_output(s->bev), fd);
}

void smtp_server_free(struct smtp_server *srv)
{
	if (!srv)
		return;
	/* Sessions still here outlived shutdown_grace: freeing them now is
	 * not a drain, and must not be logged as one. */
	atomic_flag_test_and_set(&srv->drained_logged);
	pool_free(srv->verify_pool); /* TRUST: no body job outlives its session's memory */
	pool_free(srv->spill_pool);  /* SPILL: a stream freed below has no job left */
	srv->verify_pool = srv->spill_pool = NULL; /* tx_free must not queue on them */
	for (size_t i = 0; i < srv->n_workers; i++) {
		struct srv_worker *sw = srv->workers[i];
		for (size_t j = 0; j < sw->n_listeners; j++)
			evconnlistener_free(sw->listeners[j]);
		send_batch_flush(worker_batch(sw->w)); /* the last turn's, before any last word */
		while (sw->sessions) {
			session_last_word(sw->sessions);
			session_free(sw->sessions);
		}
		free(sw);
	}
	peer_counts_free(srv->peers);
	if (srv->tls)
		SSL_CTX_free(srv->tls);
	free(srv);
}
