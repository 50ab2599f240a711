/*
 * smtpload.c — tern's own loopback SMTP load generator, for make bench.
 *
 *   smtpload send HOST PORT [-n MSGS] [-c CONNS] [-p PER_CONN] [-s BYTES] [-P]
 *                           [-f FROM] [-t RCPT] [-w IDLE_S] [-T DEADLINE_S] [-b SRCS]
 *                           [-L TRACE]
 *   smtpload hold HOST PORT [-k CONNS] [-H HOLD_S] [-r PER_S] [-w IDLE_S] [-T DEADLINE_S]
 *                           [-b SRCS]
 *
 * send: MSGS messages (20000) of BYTES bytes (4096, headers included) over
 * CONNS concurrent connections (50), each sending PER_CONN messages (100)
 * before QUIT and a new connection. -P pipelines MAIL, RCPT and DATA in one
 * write (RFC 2920). Latency is per message: MAIL sent -> the 250 that
 * accepts the data. Every message is tried once; its result is accepted
 * (2xx), tempfail (4xx), permfail (5xx) or lost (connection failed mid-way).
 *
 * hold: opens CONNS connections (5000) at PER_S a second (2000), takes each
 * past EHLO, prints "holding N" once all are there (or failed), holds them
 * HOLD_S seconds (10), then QUITs them all. For memory-per-connection figures.
 *
 * -L TRACE (send): one line per accepted message, in the order the 250s came,
 * written to the file TRACE at the end: the 250's time (ms since the start),
 * the connection's slot (0 .. CONNS-1), its local port, and MAIL->250 plus each
 * step's round trip in microseconds. For finding where a latency tail lives
 * (a moment, a connection, a step); the summary does not depend on it.
 *
 * -b SRCS (IPv4 only): connection i binds its source to 127.0.0.(2 + i % SRCS).
 * One source address reaches one server port from about 28,000 ephemeral
 * ports; 50,000 connections need at least two. IP_BIND_ADDRESS_NO_PORT lets
 * the kernel pick the port at connect time, per destination.
 *
 * Output: one human-readable summary line, then one JSON object as the last
 * line of stdout (what the bench scripts parse): counts, elapsed_s, msgs_per_s,
 * lat_p50_ms / p90 / p99 / max, the same per step of an accepted message
 * ("steps": MAIL->250, RCPT->250, DATA->354, end of data->250; without -P
 * only, where each reply has its own round trip), and the distinct error
 * texts with counts.
 *
 * Owns: one epoll loop over non-blocking sockets, one state machine per
 * connection, exact latency percentiles (every sample kept and sorted).
 * Never: connects outside 127.0.0.0/8 or ::1, runs unbounded (message and
 * connection counts, a per-connection idle limit and an overall deadline),
 * or retries a message (a bench counts failures, it does not hide them).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 100000
#define MAX_SRCS 200
#define MAX_MSGS 1000000L
#define MAX_SIZE (64L << 20)
#define INBUF 4096
#define MAX_ERR_KINDS 16

enum phase {
	PH_CONNECTING,
	PH_GREETING,
	PH_EHLO,
	PH_MAIL,
	PH_RCPT,
	PH_DATA,
	PH_PIPE, /* MAIL+RCPT+DATA pipelined: replies counted in c->pending */
	PH_BODY,
	PH_RSET,
	PH_QUIT,
	PH_HELD,
	PH_CLOSED,
};

/* Up to two pieces of output, written in order: a command (or a message's
 * own header block) and the shared body. */
struct out {
	const char *p;
	size_t n;
};

struct conn {
	int fd;
	enum phase ph;
	int pending;        /* PH_PIPE: replies still to come */
	int pipe_bad;       /* PH_PIPE: code of the first unexpected reply, 0 if none */
	char pipe_err[200]; /* PH_PIPE: its text */
	char in[INBUF];
	size_t in_len;
	char cmd[1024]; /* the command(s) or header block being written */
	struct out out[2];
	int n_out;
	bool want_out;       /* EPOLLOUT registered */
	long here;           /* messages started on this connection */
	bool holds_msg;      /* a claimed message is in flight */
	long msg_no;         /* its number */
	double t_mail;       /* when its MAIL went out */
	double t_step;       /* when the command now answered went out (steps) */
	uint32_t step_us[4]; /* this message's MAIL, RCPT, DATA, end-of-data round trips */
	double progress;     /* last time anything was read or written */
	double retry_at;     /* PH_CLOSED: reconnect not before (send mode) */
	uint16_t local_port; /* for -L: tells the server's side of the connection apart */
};

static struct {
	bool hold;
	struct sockaddr_storage dst;
	socklen_t dst_len;
	long msgs, conns, per_conn, size, hold_s, rate;
	long srcs; /* -b: source addresses 127.0.0.2 .. 127.0.0.(1 + srcs), 0: the kernel's pick */
	double idle_s, deadline_s;
	bool pipelining;
	const char *from, *rcpt;
	const char *trace; /* -L */
} opt = {
    .msgs = 20000,
    .conns = 50,
    .per_conn = 100,
    .size = 4096,
    .hold_s = 10,
    .rate = 2000,
    .idle_s = 60,
    .deadline_s = 600,
    .from = "bench@client.test",
    .rcpt = "postmaster@bench.test",
};

/* -L: one accepted message (see the top of the file) */
struct trace_row {
	double t;
	uint32_t slot, port, lat_us, step_us[4];
};

static struct {
	long claimed, ok, tempfail, permfail, lost;
	long connect_fail, held, dropped_while_held;
	uint32_t *lat_us;     /* one per accepted message */
	uint32_t *step_us[4]; /* per step, one per accepted message (not with -P) */
	struct trace_row *trace; /* -L: one per accepted message, in order */
	char kinds[MAX_ERR_KINDS][160];
	long kind_n[MAX_ERR_KINDS];
	int n_kinds;
	long other_errors; /* beyond MAX_ERR_KINDS distinct texts */
} res;

static int ep = -1;
static struct conn *conns;
static char *body; /* the shared message body, ending in CRLF . CRLF */
static size_t body_len;
static size_t hdr_len; /* the fixed length of every message's header block */

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Counts an error by its text, so the summary says what went wrong. */
static void note_error(const char *what, const char *text)
{
	char k[160];
	snprintf(k, sizeof(k), "%s: %.120s", what, text);
	for (char *p = k; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == '"' || *p == '\\' || (unsigned char)*p > 0x7e)
			*p = ' ';
	for (int i = 0; i < res.n_kinds; i++)
		if (strcmp(res.kinds[i], k) == 0) {
			res.kind_n[i]++;
			return;
		}
	if (res.n_kinds == MAX_ERR_KINDS) {
		res.other_errors++;
		return;
	}
	memcpy(res.kinds[res.n_kinds], k, sizeof(k));
	res.kind_n[res.n_kinds++] = 1;
}

static void set_events(struct conn *c)
{
	bool want = c->n_out > 0 || c->ph == PH_CONNECTING;
	if (want == c->want_out)
		return;
	struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0u), .data.ptr = c};
	epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
	c->want_out = want;
}

static void queue_out(struct conn *c, const char *p, size_t n)
{
	c->out[c->n_out++] = (struct out){p, n};
}

/* Queues a command (formatted into c->cmd). */
__attribute__((format(printf, 2, 3))) static void send_cmd(struct conn *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(c->cmd, sizeof(c->cmd), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	queue_out(c, c->cmd, (size_t)n < sizeof(c->cmd) ? (size_t)n : sizeof(c->cmd) - 1);
}

/* Writes what is queued; false if the connection failed. */
static bool flush_out(struct conn *c)
{
	while (c->n_out > 0) {
		ssize_t w = send(c->fd, c->out[0].p, c->out[0].n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			if (errno == EINTR)
				continue;
			note_error("write", strerror(errno));
			return false;
		}
		c->progress = now();
		c->out[0].p += w;
		c->out[0].n -= (size_t)w;
		if (c->out[0].n == 0) {
			c->out[0] = c->out[1];
			c->n_out--;
		}
	}
	set_events(c);
	return true;
}

static bool open_conn(struct conn *c)
{
	c->fd = socket(opt.dst.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		note_error("socket", strerror(errno));
		return false;
	}
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (opt.srcs > 0) {
		struct sockaddr_in src = {.sin_family = AF_INET};
		src.sin_addr.s_addr = htonl((127u << 24) | (uint32_t)(2 + (c - conns) % opt.srcs));
		setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		if (bind(c->fd, (struct sockaddr *)&src, sizeof(src)) != 0) {
			note_error("bind", strerror(errno));
			close(c->fd);
			c->fd = -1;
			return false;
		}
	}
	if (connect(c->fd, (struct sockaddr *)&opt.dst, opt.dst_len) != 0 && errno != EINPROGRESS) {
		note_error("connect", strerror(errno));
		close(c->fd);
		c->fd = -1;
		return false;
	}
	struct sockaddr_storage me;
	socklen_t me_len = sizeof(me);
	c->local_port = 0;
	if (getsockname(c->fd, (struct sockaddr *)&me, &me_len) == 0)
		c->local_port =
		    ntohs(me.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&me)->sin6_port
		                                   : ((struct sockaddr_in *)&me)->sin_port);
	c->ph = PH_CONNECTING;
	c->in_len = 0;
	c->n_out = 0;
	c->here = 0;
	c->holds_msg = false;
	c->progress = now();
	struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
	epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
	c->want_out = true;
	return true;
}

/* Ends the connection; a message in flight is lost. */
static void close_conn(struct conn *c, bool failed)
{
	if (c->fd >= 0) {
		epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
		c->fd = -1;
	}
	if (c->holds_msg) {
		res.lost++;
		c->holds_msg = false;
	}
	if (c->ph == PH_HELD)
		res.dropped_while_held++;
	if (failed && c->ph <= PH_EHLO)
		res.connect_fail++;
	c->ph = PH_CLOSED;
	/* after a failure, back off a little rather than spin on a refusing server */
	c->retry_at = now() + (failed ? 0.05 : 0);
}

static bool claim_message(struct conn *c)
{
	if (res.claimed >= opt.msgs || c->here >= opt.per_conn)
		return false;
	c->msg_no = res.claimed++;
	c->holds_msg = true;
	c->here++;
	return true;
}

/* The next transaction on c, or QUIT when c has done its share. */
static void next_tx(struct conn *c)
{
	if (!claim_message(c)) {
		send_cmd(c, "QUIT\r\n");
		c->ph = PH_QUIT;
		return;
	}
	c->t_mail = now();
	c->t_step = c->t_mail;
	if (opt.pipelining) {
		int n = snprintf(c->cmd, sizeof(c->cmd),
		                 "MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n", opt.from, opt.rcpt);
		queue_out(c, c->cmd, (size_t)n);
		c->ph = PH_PIPE;
		c->pending = 3;
		c->pipe_bad = 0;
		return;
	}
	send_cmd(c, "MAIL FROM:<%s>\r\n", opt.from);
	c->ph = PH_MAIL;
}

/* Queues message c->msg_no: its own header block, then the shared body. */
static void send_message(struct conn *c)
{
	int n = snprintf(c->cmd, sizeof(c->cmd),
	                 "From: <%s>\r\nTo: <%s>\r\nSubject: bench message %010ld\r\n"
	                 "Message-ID: <%010ld.%010ld@smtpload.bench>\r\n\r\n",
	                 opt.from, opt.rcpt, c->msg_no, c->msg_no, (long)getpid());
	queue_out(c, c->cmd, (size_t)n);
	queue_out(c, body, body_len);
	c->ph = PH_BODY;
}

/* The message in flight failed at reply code/text: count it by its class. */
static void count_failure(struct conn *c, const char *step, int code, const char *text)
{
	note_error(step, text);
	if (code >= 400 && code < 500)
		res.tempfail++;
	else if (code >= 500 && code < 600)
		res.permfail++;
	else
		res.lost++;
	c->holds_msg = false;
}

/* A transaction went wrong: count the message, reset (or close on 421). */
static void tx_failed(struct conn *c, const char *step, int code, const char *text)
{
	count_failure(c, step, code, text);
	if (code == 421) { /* the server is closing the connection */
		close_conn(c, true);
		return;
	}
	send_cmd(c, "RSET\r\n");
	c->ph = PH_RSET;
}

static uint32_t clamp_us(double us)
{
	return us > 4e9 ? 4000000000u : (uint32_t)us;
}

enum { STEP_MAIL, STEP_RCPT, STEP_DATA, STEP_END, N_STEPS };
static const char *const step_names[N_STEPS] = {"mail", "rcpt", "data", "end"};

/* The reply to step k arrived: its round trip, and the next step's start. */
static void step_done(struct conn *c, int k)
{
	double t = now();
	c->step_us[k] = clamp_us((t - c->t_step) * 1e6);
	c->t_step = t;
}

static void accepted(struct conn *c)
{
	step_done(c, STEP_END);
	if (!opt.pipelining)
		for (int k = 0; k < N_STEPS; k++)
			res.step_us[k][res.ok] = c->step_us[k];
	double t = now();
	res.lat_us[res.ok] = clamp_us((t - c->t_mail) * 1e6);
	if (res.trace) {
		struct trace_row *r = &res.trace[res.ok];
		r->t = t;
		r->slot = (uint32_t)(c - conns);
		r->port = c->local_port;
		r->lat_us = res.lat_us[res.ok];
		memcpy(r->step_us, c->step_us, sizeof(r->step_us));
	}
	res.ok++;
	c->holds_msg = false;
}

/* One complete reply (its last line) for c. false: c was closed. */
static bool on_reply(struct conn *c, int code, const char *text)
{
	switch (c->ph) {
	case PH_GREETING:
		if (code != 220) {
			note_error("greeting", text);
			close_conn(c, true);
			return false;
		}
		send_cmd(c, "EHLO smtpload.bench\r\n");
		c->ph = PH_EHLO;
		break;
	case PH_EHLO:
		if (code != 250) {
			note_error("EHLO", text);
			close_conn(c, true);
			return false;
		}
		if (opt.hold) {
			c->ph = PH_HELD;
			res.held++;
		} else {
			next_tx(c);
		}
		break;
	case PH_MAIL:
		if (code != 250) {
			tx_failed(c, "MAIL", code, text);
			if (c->fd < 0)
				return false;
			break;
		}
		step_done(c, STEP_MAIL);
		send_cmd(c, "RCPT TO:<%s>\r\n", opt.rcpt);
		c->ph = PH_RCPT;
		break;
	case PH_RCPT:
		if (code != 250 && code != 251) {
			tx_failed(c, "RCPT", code, text);
			if (c->fd < 0)
				return false;
			break;
		}
		step_done(c, STEP_RCPT);
		send_cmd(c, "DATA\r\n");
		c->ph = PH_DATA;
		break;
	case PH_DATA:
		if (code != 354) {
			tx_failed(c, "DATA", code, text);
			if (c->fd < 0)
				return false;
			break;
		}
		step_done(c, STEP_DATA);
		send_message(c);
		break;
	case PH_PIPE: {
		int i = 3 - c->pending--;
		bool good = i < 2 ? code == 250 || code == 251 : code == 354;
		if (!good && !c->pipe_bad) {
			c->pipe_bad = code;
			snprintf(c->pipe_err, sizeof(c->pipe_err), "%s%s",
			         i == 0   ? "MAIL: "
			         : i == 1 ? "RCPT: "
			                  : "DATA: ",
			         text);
		}
		if (c->pending > 0)
			break;
		if (code == 354 && !c->pipe_bad) {
			send_message(c);
		} else if (code == 354) {
			/* DATA was taken though an earlier reply was not: end
			 * that empty message (PH_BODY then resets) */
			count_failure(c, "pipelined", c->pipe_bad, c->pipe_err);
			send_cmd(c, ".\r\n");
			c->ph = PH_BODY;
		} else {
			tx_failed(c, "pipelined", c->pipe_bad, c->pipe_err);
			if (c->fd < 0)
				return false;
		}
		break;
	}
	case PH_BODY:
		if (!c->holds_msg) {
			/* the end of an unwanted empty message (see PH_PIPE) */
			send_cmd(c, "RSET\r\n");
			c->ph = PH_RSET;
			break;
		}
		if (code >= 200 && code < 300) {
			accepted(c);
			next_tx(c);
		} else {
			tx_failed(c, "end of data", code, text);
			if (c->fd < 0)
				return false;
		}
		break;
	case PH_RSET:
		if (code != 250) {
			note_error("RSET", text);
			close_conn(c, true);
			return false;
		}
		next_tx(c);
		break;
	case PH_QUIT:
		close_conn(c, false);
		return false;
	case PH_HELD:
		note_error("while held", text);
		close_conn(c, true);
		return false;
	case PH_CONNECTING:
	case PH_CLOSED:
		break;
	}
	return flush_out(c);
}

/* Reads and answers every complete reply. false: c was closed. */
static bool on_readable(struct conn *c)
{
	for (;;) {
		ssize_t r = recv(c->fd, c->in + c->in_len, sizeof(c->in) - 1 - c->in_len, 0);
		if (r == 0) {
			if (c->ph != PH_QUIT)
				note_error("closed by server", "EOF");
			close_conn(c, c->ph != PH_QUIT);
			return false;
		}
		if (r < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return true;
			if (errno == EINTR)
				continue;
			note_error("read", strerror(errno));
			close_conn(c, true);
			return false;
		}
		c->progress = now();
		c->in_len += (size_t)r;
		c->in[c->in_len] = '\0';
		char *line = c->in;
		char *nl;
		while ((nl = memchr(line, '\n', c->in_len - (size_t)(line - c->in))) != NULL) {
			*nl = '\0';
			if (nl > line && nl[-1] == '\r')
				nl[-1] = '\0';
			bool last = strlen(line) < 4 || line[3] != '-';
			int code = 0;
			for (int i = 0; i < 3 && line[i] >= '0' && line[i] <= '9'; i++)
				code = code * 10 + (line[i] - '0');
			char *next = nl + 1;
			if (last && !on_reply(c, code, line))
				return false;
			line = next;
		}
		size_t rest = c->in_len - (size_t)(line - c->in);
		memmove(c->in, line, rest);
		c->in_len = rest;
		if (c->in_len == sizeof(c->in) - 1) {
			note_error("reply", "line too long");
			close_conn(c, true);
			return false;
		}
	}
}

static void on_event(struct conn *c, uint32_t ev)
{
	if (c->ph == PH_CONNECTING) {
		int err = 0;
		socklen_t el = sizeof(err);
		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
		if (err) {
			note_error("connect", strerror(err));
			close_conn(c, true);
			return;
		}
		c->ph = PH_GREETING;
		set_events(c);
	}
	if ((ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) && !on_readable(c))
		return;
	if ((ev & EPOLLOUT) && c->fd >= 0)
		flush_out(c);
}

/* Every message has a result and every connection is closed. */
static bool send_done(void)
{
	if (res.ok + res.tempfail + res.permfail + res.lost < opt.msgs)
		return false;
	for (long i = 0; i < opt.conns; i++)
		if (conns[i].fd >= 0)
			return false;
	return true;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* The p-quantile of n sorted samples, in ms. */
static double quantile_ms(const uint32_t *v, long n, double p)
{
	if (n == 0)
		return 0;
	long i = (long)(p * (double)(n - 1) + 0.5);
	return v[i] / 1000.0;
}

static double pct_ms(double p)
{
	return quantile_ms(res.lat_us, res.ok, p);
}

/* "steps":{"mail":{"p50_ms":..,"p99_ms":..},...} (sorts the step arrays). */
static void print_steps(void)
{
	printf("\"steps\":{");
	for (int k = 0; k < N_STEPS && !opt.pipelining; k++) {
		qsort(res.step_us[k], (size_t)res.ok, sizeof(uint32_t), cmp_u32);
		printf("%s\"%s\":{\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,"
		       "\"max_ms\":%.3f}",
		       k ? "," : "", step_names[k], quantile_ms(res.step_us[k], res.ok, 0.5),
		       quantile_ms(res.step_us[k], res.ok, 0.9),
		       quantile_ms(res.step_us[k], res.ok, 0.99),
		       quantile_ms(res.step_us[k], res.ok, 1.0));
	}
	printf("},");
}

static void print_errors(void)
{
	printf("\"errors\":{");
	for (int i = 0; i < res.n_kinds; i++)
		printf("%s\"%s\":%ld", i ? "," : "", res.kinds[i], res.kind_n[i]);
	if (res.other_errors)
		printf("%s\"(other)\":%ld", res.n_kinds ? "," : "", res.other_errors);
	printf("}}\n");
}

/* The shared body: lines of 76 letters, filling the message to opt.size
 * bytes with the header block, then the end of data. */
static bool build_body(void)
{
	/* a header block with the longest addresses: its length is fixed */
	char probe[1024];
	int n = snprintf(probe, sizeof(probe),
	                 "From: <%s>\r\nTo: <%s>\r\nSubject: bench message %010ld\r\n"
	                 "Message-ID: <%010ld.%010ld@smtpload.bench>\r\n\r\n",
	                 opt.from, opt.rcpt, 0L, 0L, (long)getpid());
	if (n <= 0 || (size_t)n >= sizeof(probe))
		return false;
	hdr_len = (size_t)n;
	size_t want = (size_t)opt.size > hdr_len + 3 ? (size_t)opt.size - hdr_len : 3;
	body = malloc(want + 8);
	if (!body)
		return false;
	size_t o = 0;
	while (o < want) {
		size_t line = want - o >= 78 ? 76 : want - o >= 3 ? want - o - 2 : 1;
		for (size_t i = 0; i < line; i++, o++)
			body[o] = (char)('a' + o % 26);
		body[o++] = '\r';
		body[o++] = '\n';
	}
	memcpy(body + o, ".\r\n", 3);
	body_len = o + 3;
	return true;
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi) {
		fprintf(stderr, "smtpload: %s: want a number from %ld to %ld\n", s, lo, hi);
		return false;
	}
	*out = v;
	return true;
}

static bool parse_dst(const char *host, const char *port)
{
	long p;
	if (!parse_long(port, 1, 65535, &p))
		return false;
	struct sockaddr_in *v4 = (struct sockaddr_in *)&opt.dst;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&opt.dst;
	memset(&opt.dst, 0, sizeof(opt.dst));
	if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
		if ((ntohl(v4->sin_addr.s_addr) >> 24) != 127)
			goto refuse;
		v4->sin_family = AF_INET;
		v4->sin_port = htons((uint16_t)p);
		opt.dst_len = sizeof(*v4);
		return true;
	}
	if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
		if (!IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr))
			goto refuse;
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)p);
		opt.dst_len = sizeof(*v6);
		return true;
	}
	fprintf(stderr, "smtpload: HOST must be a numeric loopback address, not %s\n", host);
	return false;
refuse:
	fprintf(stderr, "smtpload: refusing %s: only 127.0.0.0/8 and ::1\n", host);
	return false;
}

static void usage(void)
{
	fprintf(
	    stderr,
	    "usage: smtpload send HOST PORT [-n MSGS] [-c CONNS] [-p PER_CONN] [-s BYTES] [-P]\n"
	    "                               [-f FROM] [-t RCPT] [-w IDLE_S] [-T DEADLINE_S] [-b "
	    "SRCS]\n"
	    "                               [-L TRACE]\n"
	    "       smtpload hold HOST PORT [-k CONNS] [-H HOLD_S] [-r PER_S] [-w IDLE_S]\n"
	    "                               [-T DEADLINE_S] [-b SRCS]\n");
}

static bool parse_args(int argc, char **argv)
{
	if (argc < 4) {
		usage();
		return false;
	}
	if (strcmp(argv[1], "hold") == 0) {
		opt.hold = true;
		opt.conns = 5000;
		opt.deadline_s = 120;
	} else if (strcmp(argv[1], "send") != 0) {
		usage();
		return false;
	}
	if (!parse_dst(argv[2], argv[3]))
		return false;
	optind = 4;
	int ch;
	long v;
	while ((ch = getopt(argc, argv, "n:c:k:p:s:Pf:t:w:T:H:r:b:L:")) != -1) {
		switch (ch) {
		case 'n':
			if (!parse_long(optarg, 1, MAX_MSGS, &opt.msgs))
				return false;
			break;
		case 'c':
		case 'k':
			if (!parse_long(optarg, 1, MAX_CONNS, &opt.conns))
				return false;
			break;
		case 'p':
			if (!parse_long(optarg, 1, MAX_MSGS, &opt.per_conn))
				return false;
			break;
		case 's':
			if (!parse_long(optarg, 1, MAX_SIZE, &opt.size))
				return false;
			break;
		case 'P':
			opt.pipelining = true;
			break;
		case 'f':
			opt.from = optarg;
			break;
		case 't':
			opt.rcpt = optarg;
			break;
		case 'w':
			if (!parse_long(optarg, 1, 3600, &v))
				return false;
			opt.idle_s = (double)v;
			break;
		case 'T':
			if (!parse_long(optarg, 1, 86400, &v))
				return false;
			opt.deadline_s = (double)v;
			break;
		case 'H':
			if (!parse_long(optarg, 0, 3600, &opt.hold_s))
				return false;
			break;
		case 'r':
			if (!parse_long(optarg, 1, 1000000, &opt.rate))
				return false;
			break;
		case 'b':
			if (!parse_long(optarg, 0, MAX_SRCS, &opt.srcs))
				return false;
			break;
		case 'L':
			opt.trace = optarg;
			break;
		default:
			usage();
			return false;
		}
	}
	if (opt.srcs > 0 && opt.dst.ss_family != AF_INET) {
		fprintf(stderr, "smtpload: -b needs an IPv4 destination\n");
		return false;
	}
	if (optind != argc || strpbrk(opt.from, "<>\r\n") || strpbrk(opt.rcpt, "<>\r\n") ||
	    strlen(opt.from) > 256 || strlen(opt.rcpt) > 256) {
		usage();
		return false;
	}
	return true;
}

/* Enough descriptors for every connection, or a clear refusal. */
static bool raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return true;
	rlim_t want = (rlim_t)opt.conns + 64;
	if (rl.rlim_cur >= want)
		return true;
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < want) {
		fprintf(stderr, "smtpload: the fd limit (%llu) is too low for %ld connections\n",
		        (unsigned long long)rl.rlim_cur, opt.conns);
		return false;
	}
	return true;
}

/* Closes connections idle for longer than opt.idle_s. */
static void reap_idle(double t)
{
	for (long i = 0; i < opt.conns; i++) {
		struct conn *c = &conns[i];
		if (c->fd < 0 || c->ph == PH_HELD || t - c->progress <= opt.idle_s)
			continue;
		note_error("timeout", c->ph == PH_BODY ? "waiting for the end-of-data reply"
		                                       : "waiting for a reply");
		close_conn(c, true);
	}
}

static bool write_trace(double t0);

static int run_send(double t0)
{
	double end = t0 + opt.deadline_s, t = t0, last_reap = t0;
	bool deadline_hit = false, gave_up = false;
	struct epoll_event evs[256];
	while (!send_done()) {
		if (t >= end) {
			deadline_hit = true;
			break;
		}
		if (!gave_up && res.claimed < opt.msgs && res.connect_fail > 3 * opt.conns + 100) {
			/* the server keeps refusing: the unsent messages are lost */
			gave_up = true;
			note_error("gave up", "too many failed connections");
			res.lost += opt.msgs - res.claimed;
			res.claimed = opt.msgs;
		}
		/* (re)connect while messages are left to claim */
		for (long i = 0; i < opt.conns && res.claimed < opt.msgs; i++)
			if (conns[i].fd < 0 && conns[i].retry_at <= t && !open_conn(&conns[i]))
				conns[i].retry_at = t + 0.05;
		int n = epoll_wait(ep, evs, 256, 20);
		for (int i = 0; i < n; i++)
			on_event(evs[i].data.ptr, evs[i].events);
		t = now();
		if (t - last_reap > 0.5) {
			reap_idle(t);
			last_reap = t;
		}
	}
	double el = now() - t0;
	for (long i = 0; i < opt.conns; i++)
		if (conns[i].fd >= 0)
			close_conn(&conns[i], true); /* only at the deadline */
	res.lost += opt.msgs - res.claimed;          /* never sent (deadline) */
	qsort(res.lat_us, (size_t)res.ok, sizeof(res.lat_us[0]), cmp_u32);
	double rate = el > 0 ? (double)res.ok / el : 0;
	printf(
	    "smtpload: %ld messages of %ld B over %ld connections%s: %ld accepted, %ld tempfail, "
	    "%ld permfail, %ld lost in %.2f s = %.0f msg/s; MAIL->250 p50 %.2f ms, p90 %.2f, "
	    "p99 %.2f, max %.2f%s\n",
	    opt.msgs, opt.size, opt.conns, opt.pipelining ? " (pipelined)" : "", res.ok,
	    res.tempfail, res.permfail, res.lost, el, rate, pct_ms(0.5), pct_ms(0.9), pct_ms(0.99),
	    pct_ms(1.0), deadline_hit ? " [deadline hit]" : "");
	printf("{\"mode\":\"send\",\"messages\":%ld,\"connections\":%ld,\"per_conn\":%ld,"
	       "\"size\":%ld,\"pipelining\":%s,\"ok\":%ld,\"tempfail\":%ld,\"permfail\":%ld,"
	       "\"lost\":%ld,\"elapsed_s\":%.6f,\"msgs_per_s\":%.1f,\"lat_p50_ms\":%.3f,"
	       "\"lat_p90_ms\":%.3f,\"lat_p99_ms\":%.3f,\"lat_max_ms\":%.3f,\"deadline_hit\":%s,",
	       opt.msgs, opt.conns, opt.per_conn, opt.size, opt.pipelining ? "true" : "false",
	       res.ok, res.tempfail, res.permfail, res.lost, el, rate, pct_ms(0.5), pct_ms(0.9),
	       pct_ms(0.99), pct_ms(1.0), deadline_hit ? "true" : "false");
	print_steps();
	print_errors();
	if (opt.trace && !write_trace(t0))
		return 2;
	return res.ok == opt.msgs ? 0 : 1;
}

/* -L: the accepted messages' rows (see the top of the file). */
static bool write_trace(double t0)
{
	FILE *f = fopen(opt.trace, "w");
	if (!f) {
		fprintf(stderr, "smtpload: %s: %s\n", opt.trace, strerror(errno));
		return false;
	}
	fprintf(f, "t_ms slot port lat_us mail_us rcpt_us data_us end_us\n");
	for (long i = 0; i < res.ok; i++) {
		const struct trace_row *r = &res.trace[i];
		fprintf(f, "%.3f %u %u %u %u %u %u %u\n", (r->t - t0) * 1e3, r->slot, r->port,
		        r->lat_us, r->step_us[0], r->step_us[1], r->step_us[2], r->step_us[3]);
	}
	if (fclose(f) != 0) {
		fprintf(stderr, "smtpload: %s: %s\n", opt.trace, strerror(errno));
		return false;
	}
	return true;
}

static int run_hold(double t0)
{
	double end = t0 + opt.deadline_s, t = t0, release_at = 0, last_reap = t0;
	long opened = 0;
	bool deadline_hit = false, quitting = false;
	struct epoll_event evs[256];
	for (;;) {
		if (t >= end) {
			deadline_hit = true;
			break;
		}
		/* open at opt.rate per second */
		long due = (long)((t - t0) * (double)opt.rate) + 1;
		while (opened < opt.conns && opened < due) {
			if (!open_conn(&conns[opened]))
				res.connect_fail++;
			opened++;
		}
		if (!release_at && opened == opt.conns) {
			bool settled = true;
			for (long i = 0; i < opt.conns && settled; i++)
				settled = conns[i].fd < 0 || conns[i].ph == PH_HELD;
			if (settled) {
				printf("holding %ld\n", res.held);
				fflush(stdout);
				release_at = t + (double)opt.hold_s;
			}
		}
		if (release_at && !quitting && t >= release_at) {
			quitting = true;
			for (long i = 0; i < opt.conns; i++) {
				struct conn *c = &conns[i];
				if (c->fd < 0)
					continue;
				send_cmd(c, "QUIT\r\n");
				c->ph = PH_QUIT;
				flush_out(c);
			}
		}
		if (quitting) {
			bool all_closed = true;
			for (long i = 0; i < opt.conns && all_closed; i++)
				all_closed = conns[i].fd < 0;
			if (all_closed)
				break;
		}
		int n = epoll_wait(ep, evs, 256, 20);
		for (int i = 0; i < n; i++)
			on_event(evs[i].data.ptr, evs[i].events);
		t = now();
		if (t - last_reap > 0.5) {
			reap_idle(t);
			last_reap = t;
		}
	}
	for (long i = 0; i < opt.conns; i++)
		if (conns[i].fd >= 0)
			close_conn(&conns[i], true);
	double el = now() - t0;
	printf("smtpload: %ld of %ld connections held past EHLO for %ld s, %ld dropped while "
	       "held, %ld failed to get there%s\n",
	       res.held, opt.conns, opt.hold_s, res.dropped_while_held, res.connect_fail,
	       deadline_hit ? " [deadline hit]" : "");
	printf("{\"mode\":\"hold\",\"wanted\":%ld,\"held\":%ld,\"dropped\":%ld,\"failed\":%ld,"
	       "\"elapsed_s\":%.6f,\"deadline_hit\":%s,",
	       opt.conns, res.held, res.dropped_while_held, res.connect_fail, el,
	       deadline_hit ? "true" : "false");
	print_errors();
	return res.held == opt.conns ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (!parse_args(argc, argv) || !raise_fd_limit())
		return 2;
	signal(SIGPIPE, SIG_IGN);
	ep = epoll_create1(EPOLL_CLOEXEC);
	conns = calloc((size_t)opt.conns, sizeof(*conns));
	res.lat_us = calloc((size_t)opt.msgs, sizeof(*res.lat_us));
	bool steps_ok = true;
	for (int k = 0; k < N_STEPS; k++)
		steps_ok =
		    (res.step_us[k] = calloc((size_t)opt.msgs, sizeof(uint32_t))) && steps_ok;
	if (opt.trace && !opt.hold)
		steps_ok = (res.trace = calloc((size_t)opt.msgs, sizeof(*res.trace))) && steps_ok;
	if (ep < 0 || !conns || !res.lat_us || !steps_ok || (!opt.hold && !build_body())) {
		fprintf(stderr, "smtpload: out of memory or descriptors\n");
		return 2;
	}
	for (long i = 0; i < opt.conns; i++) {
		conns[i].fd = -1;
		conns[i].ph = PH_CLOSED;
	}
	double t0 = now();
	int rc = opt.hold ? run_hold(t0) : run_send(t0);
	free(body);
	free(res.lat_us);
	free(res.trace);
	for (int k = 0; k < N_STEPS; k++)
		free(res.step_us[k]);
	free(conns);
	close(ep);
	return rc;
}
