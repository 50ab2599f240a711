/*
 * remote_internal.h — what remote.c (connections, destinations, the SMTP
 * client) and remote_dns.c (next-hop resolution: MX, addresses, TLSA,
 * MTA-STS) share: the connection and destination structures and the few
 * steps each side calls of the other. Nothing outside src/deliver/remote*.c
 * includes it; deliver.h is the module's interface.
 *
 * A connection lives on one worker and is touched only from that worker's
 * loop, except the fields the comments say are under the remote's lock.
 */
#ifndef TERN_DELIVER_REMOTE_INTERNAL_H
#define TERN_DELIVER_REMOTE_INTERNAL_H

#include <netinet/in.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/buf.h"
#include "core/conf.h"
#include "deliver/deliver.h"
#include "deliver/mtasts.h"
#include "deliver/remote_stream.h"
#include "deliver/tlspolicy.h"
#include "dns/dns.h"
#include "smtp/smtp.h"

struct event;
struct bufferevent;
struct evbuffer;
struct mem_budget;
struct pool;
struct tern_runtime;
struct worker;

#define MAX_MX 16
#define MAX_TARGETS 32
/* Recipients per transaction: RFC 5321 §4.5.3.1.8 makes every server take
 * at least 100, so a job with more is sent as several transactions. */
#define BATCH_MAX 100

struct dest {
	struct dest *next;
	char key[400];
	struct remote_job *head, *tail;
	unsigned active;
	/* Shaping (deliver/shaping.h, pools.h): the recipient domain whose limits
	 * apply, the IP pool ("" for none), and the timer that starts a
	 * connection when the per-minute rate or the pool's warm-up allows again
	 * (jobs over a limit wait here, not started, never deferred). */
	struct remote *r;
	char domain[256];
	char pool[65];
	struct event *wake; /* on workers[0]'s base */
	bool wake_armed;    /* under lock */
	/* Connections past a transaction with nothing to carry, kept open for
	 * the next job (conn_park): each holds its slot in active. */
	struct rconn *idle; /* under lock, through rconn.idle_next */
};

struct remote {
	struct worker **workers;
	size_t n_workers;
	struct dns_resolver **resolvers;
	SSL_CTX *tls;
	pthread_mutex_t lock;
	struct dest *dests;
	unsigned rr;
	_Atomic size_t active;
	struct rconn *conns;
	bool stopping; /* under lock: remote_stop was called */
	/* MTA-STS: policies are got (cache, HTTPS) on this pool, never on a loop */
	struct pool *sts_pool;
	struct sts_job *sts_jobs; /* under lock: submitted, their done not run yet */
	char *ca_pem;             /* delivery.ca_file's text for the policy fetch, or NULL */
	size_t ca_len;
	/* SPILL: spilled messages are read ahead here, never on a loop
	 * (remote_stream.h); NULL: read on the loop. Dropped bodies are read
	 * back here too (body_load). */
	struct pool *io_pool;
	/* remote_set_body_source: queued jobs' bytes are counted in budget and
	 * dropped past it; load reads them back. NULL: nothing is dropped. */
	struct mem_budget *budget;
	remote_load_fn load;
	void *load_arg;
	struct body_load *loads; /* under lock: submitted, their done not run yet */
};

/* A dropped body being read back on the I/O pool for c's job. c is NULL
 * once the connection is gone (then load_done only frees it, or
 * remote_free does if the workers stopped first). */
struct body_load {
	struct body_load *prev, *next;
	struct remote *r;
	struct rconn *c; /* under r->lock */
	char id[32];
	char *data;
	size_t len;
	int rc;
	bool ahead; /* for c->next_job (PIPE-NEXT), not for c->job */
};

/* One MTA-STS policy lookup on the pool. c is NULL once the connection is
 * gone (then the job frees itself when done, or remote_free frees it). */
struct sts_job {
	struct sts_job *prev, *next;
	struct remote *r;
	struct rconn *c;
	struct mtasts_req q;
};

struct target {
	char host[DNS_NAME_MAX + 1];
	struct sockaddr_storage ss;
	socklen_t len;
};

struct host_addrs {
	char host[DNS_NAME_MAX + 1];
	struct in6_addr v6[8];
	struct in_addr v4[8];
	size_t n6, n4;
	int pending;
	enum dns_status st4, st6;
	enum tlsp_dane dane;   /* what its TLSA lookup gave (none when not looked up) */
	bool sts_enforce;      /* an enforced MTA-STS policy names it: verify at least */
	bool addr_insecure;    /* an address answer was not DNSSEC-secure: no DANE */
	struct dns_tlsa *tlsa; /* the usable records (data owned here), freed with the conn */
	size_t n_tlsa;
};

enum rc_state {
	RC_NONE, /* not begun yet */
	RC_DNS,
	RC_CONNECT,
	RC_GREETING,
	RC_EHLO,
	RC_HELO,
	RC_STARTTLS,
	RC_TLS_HANDSHAKE,
	RC_AUTH,
	RC_AUTH_LOGIN_USER,
	RC_AUTH_LOGIN_PASS,
	RC_TX,
	RC_DOT,
	RC_RSET,
	RC_IDLE, /* parked between jobs (conn_park), nothing owed either way */
	RC_LOAD, /* the job's bytes are read back from the spool (body_load) */
	RC_QUIT,
};

/* What the next reply in a pipelined transaction answers. EX_BDAT: the
 * BDAT LAST sent with the message in the same write as MAIL and RCPT
 * (one_write), i.e. the end of the data. */
enum expect { EX_MAIL, EX_RCPT, EX_DATA, EX_BDAT };

/* An address lookup's callback argument: which host slot and family. They
 * live inside the connection (not malloc'd), because a resolver freed at
 * shutdown drops its pending queries without calling back. */
struct addr_query {
	struct rconn *c;
	size_t host;
	int family;
};

struct rconn {
	struct rconn *prev, *next; /* on remote->conns, for shutdown */
	struct remote *r;
	struct worker *w;
	struct dns_resolver *res;
	struct dest *dest;
	struct tern_runtime *rt;
	const struct tern_config *conf;
	const struct conf_route *route;
	struct remote_job *job;
	/* PIPE-NEXT: the job whose MAIL, RCPTs and DATA went out behind job's
	 * end of data (pipeline_next), answered once job's final reply is in
	 * (take_next); until then nothing of it was answered or recorded. */
	struct remote_job *next_job;
	size_t tail_after_dot; /* PIPE-NEXT: its bytes queued behind the end of data */
	/* PIPE-NEXT: next_job's commands have not gone out yet: it waited
	 * without its bytes (queued_memory) and was taken early to read them
	 * back while job goes out (reserve_next; c->load while the read runs).
	 * They go behind job's end of data once both are there (pipeline_next,
	 * load_done_ahead); if job's transaction ends first, next_job is begun
	 * as the current job (tx_next). */
	bool next_unsent;
	char domain[DNS_NAME_MAX + 1];
	enum rc_state st;
	uint16_t port;
	/* DNS */
	struct host_addrs hosts[MAX_MX];
	struct addr_query aq[MAX_MX][2];
	struct addr_query tq[MAX_MX]; /* TLSA lookups (family 0) */
	size_t n_hosts;
	int pending_dns;
	bool dns_failed_perm;
	bool mx_secure; /* the MX answer was DNSSEC-secure: DANE may apply (RFC 7672 §2.2.1) */
	/* MTA-STS (MX delivery): the TXT id and the policy host's address, then the policy */
	int sts_pending;
	int sts_txt_records; /* TXT records that begin with v=STSv1 */
	char sts_id[MTASTS_ID_MAX + 1];
	char sts_addr[64];
	struct sts_job *sts_job;
	bool sts_have;
	struct mtasts_policy sts;
	/* targets */
	struct target targets[MAX_TARGETS];
	size_t n_targets, cur;
	bool tls_disabled; /* a TLS handshake failed on this target: retry in clear */
	/* SMTP */
	struct bufferevent *bev;
	struct smtp_reply_parser rp;
	struct smtp_ehlo_caps caps;
	bool tls_active;
	bool tls_verified;   /* the TLS channel met a verify or dane level */
	enum conf_tls level; /* TLS the current target must meet (tlspolicy.h) */
	bool greeted_ok;     /* a server took us past EHLO: failures are no longer per-target */
	bool implicit_tls;   /* smtps:// handshake under way: the greeting comes after it */
	bool in_step;        /* inside a step (step_begin): freeing waits for its end */
	bool dead;           /* freed while in_step */
	/* Parked (RC_IDLE): on dest->idle, under the remote's lock. Taken off
	 * the list by remote_submit or remote_stop, which then post
	 * conn_unpark; until it runs the connection stays in RC_IDLE. */
	bool parked;
	struct rconn *idle_next;
	/*
	 * Waits (RFC 5321 §4.5.3.2): one timer per connection. Each wait — a
	 * whole reply, the greeting, the TLS handshake, the message data — has
	 * a deadline that bytes trickling in do not push back, so a peer that
	 * drips a byte at a time cannot hold the connection past it.
	 */
	struct event *timer;
	double deadline;           /* monotonic seconds; 0: nothing armed */
	uint32_t wait_secs;        /* length of the current wait (the data phase: its window) */
	unsigned awaiting;         /* replies due: commands sent, not answered yet */
	bool body_pending;         /* message data not all handed to the kernel yet */
	struct evbuffer *wire_out; /* the socket's output, under any TLS layer */
	/* Plain sockets: what a step sends is collected here and leaves at the
	 * step's end, straight to the socket when nothing is queued
	 * (remote_wire.h). Empty outside a step; NULL until the first. */
	struct evbuffer *cork;
	bool corking; /* inside a step: out_of gives the cork on a plain socket */
	/* Plain sockets once connected: our read event in place of the
	 * bufferevent's (own_reads), or NULL: libevent reads (TLS, connecting). */
	struct event *rd_ev;
	/* transaction: one batch of at most BATCH_MAX of the job's recipients */
	size_t batch_start, batch_end;         /* the batch is rcpts[batch_start .. batch_end) */
	enum expect expect[1 + BATCH_MAX + 1]; /* MAIL, the batch's RCPTs, DATA or BDAT */
	size_t n_expect, i_expect;
	size_t rcpt_cursor;       /* next recipient to send (non-pipelined) */
	size_t rcpt_reply_cursor; /* next recipient whose reply we wait for */
	size_t n_accepted;
	bool mail_failed;
	bool one_write;         /* this transaction went as MAIL, RCPTs, BDAT LAST + body at once */
	struct evbuffer *chunk; /* one_write: the chunk is encoded here first (its size
	                           leads it); empty between transactions, or NULL */
	struct tbuf converted;  /* downconverted body, when needed */
	struct body_pump pump;  /* SPILL: the rest of a spilled message, from its file */
	struct body_load *load; /* RC_LOAD: the job's dropped bytes being read back */
	int pump_err;           /* SPILL: the file failed (TERN_*): on_deadline ends the tx */
	char last_error[512];
	char last_status[16];
	bool last_perm;
	/* shaping and pools */
	unsigned n_msgs;       /* jobs taken by this connection (shaping per_connection) */
	bool backed_off;       /* this connection reported a back-off already */
	bool closed_421;       /* ... and it was a 421: deferrals wait for the back-off */
	const char *ehlo_name; /* the source address's EHLO name (in c->conf), or NULL */
	char src_addr[64];     /* the pool address bound, or "" */
	char reserved[64];     /* the warm-up pool address counted for our first job, or "" */
};

/* ---- remote.c, for remote_dns.c */

/* Records the connection's last error (perm: 5xx, else 4xx), formatted. */
void rconn_set_error(struct rconn *c, bool perm, const char *status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The connection's one writer of c->st (logged at debug). */
void rconn_enter_state(struct rconn *c, enum rc_state st);
/* Hands c->job's recipient results to the scheduler (exactly once per job). */
void rconn_job_finish(struct rconn *c);
/* The next queued job of d, or NULL (and d released when release_if_empty). */
struct remote_job *remote_dest_pop(struct remote *r, struct dest *d, bool release_if_empty);
/* Whether target t is this server itself (RFC 5321 §5.1: an MX that is us). */
bool rconn_is_self(const struct rconn *c, const struct target *t);
/* Connects to c->targets[c->cur], or moves on to the next; the end of the
 * list ends the connection. */
void rconn_next_target(struct rconn *c);
/* Ends the connection: its jobs answered, its slot given back. */
void rconn_end(struct rconn *c);

/* ---- remote_dns.c, for remote.c */

/* Resolves c's next hop (route, relayhost or MX; addresses; TLSA where DANE
 * may apply; the MTA-STS policy for MX delivery), fills c->targets and goes
 * on with rconn_next_target, or fails c's jobs (fail_dns) and ends it. */
void rconn_resolve(struct rconn *c);

#endif
