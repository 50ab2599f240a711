/*
 * submit.c — the daemon side of local submission: DATA/submit.sock, where
 * `tern sendmail` hands over a message as the calling user, and the pickup
 * of DATA/maildrop/, where it leaves one while the daemon is down.
 *
 * Owns: deciding the envelope (the sender comes from the peer's uid, not
 * from the request: -f is honoured only for root, the daemon's own user
 * and a user's own addresses), the local-submission header work (Received,
 * From/Date/Message-ID when missing, Bcc removed, CRLF line ends), the
 * recipients (command line and, with -t, the header), and the spool commit
 * before the "OK". Local submission is trusted like Postfix's pickup: any
 * local user may send to remote domains.
 * Threads: one listener thread; one thread per connection, at most
 * SUBMIT_CONN_MAX at once, blocking I/O with a timeout; one pickup thread.
 * None of them is an event loop, and the control socket has its own
 * thread, so a slow submitter stalls nothing else.
 * SECURITY: everything a request or a maildrop file says is parsed
 * strictly and bounded (submit_proto.c); the only identity believed is
 * SO_PEERCRED's uid or the owner of a maildrop file in a sticky directory
 * (a single link, a regular file, never followed through a symlink).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "auth/auth.h"
#include "cli/submit.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/id.h"
#include "core/log.h"
#include "core/runtime.h"
#include "core/timefmt.h"
#include "mime/mime.h"
#include "queue/queue.h"
#include "smtp/sign.h"
#include "smtp/smtp.h"
#include "store/events.h"

#define SUBMIT_CONN_MAX 16         /* connections served at once */
#define PICKUP_INTERVAL_MS 5000    /* maildrop scan period */
#define PICKUP_FILES_PER_SCAN 256  /* the rest waits for the next scan */
#define MAILDROP_TMP_MAX_AGE 86400 /* a client's unfinished temp file, seconds */
#define ADDR_BUF (SMTP_ADDR_MAX + 3)
#define TRACE_MAX 2048 /* our Received and the header fields we may add */

struct submit {
	int fd;
	int stop_pipe[2]; /* readable once stopping: every poll here watches it */
	pthread_t listener, pickup;
	bool pickup_started;
	struct spool *sp;
	struct scheduler *sched;
	char *maildrop; /* DATA/maildrop, or NULL when it cannot be used */
	uid_t self_uid;
	pthread_mutex_t mu;
	pthread_cond_t idle;
	unsigned active; /* connection threads alive */
};

/* ------------------------------------------------------------ intake */

/* One message being taken in, from the socket or the maildrop. */
struct intake {
	struct submit *s;
	const struct tern_config *conf;
	const struct user_db *users;
	const struct smtp_signer *signer; /* SIGN: the runtime's DKIM keys, or NULL */
	const struct submit_req *req;
	bool pickup;
	const char *source; /* "sendmail" or "maildrop", for the log */
	uid_t uid;
	char login[64];
	char gecos[SUBMIT_NAME_MAX + 1];
	char sender[ADDR_BUF]; /* "" for the null sender */
	bool utf8;
	struct spool_rcpt *rcpts; /* resolved; addr owned */
	size_t n_rcpts, cap_rcpts;
	size_t n_named; /* addresses named, before aliases: what max_recipients counts */
	char **unknown; /* local recipients with no mailbox (pickup only) */
	size_t n_unknown;
	/* the result: 0 with id, or a sysexits code and words */
	int code;
	char text[512];
	char id[QUEUE_ID_LEN + 1];
};

static void intake_free(struct intake *in)
{
	for (size_t i = 0; i < in->n_rcpts; i++)
		free(in->rcpts[i].addr);
	free(in->rcpts);
	for (size_t i = 0; i < in->n_unknown; i++)
		free(in->unknown[i]);
	free(in->unknown);
}

static int fail(struct intake *in, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct intake *in, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(in->text, sizeof(in->text), fmt, ap);
	va_end(ap);
	in->code = code;
	return -1;
}

static int add_rcpt(struct intake *in, const char *addr, bool local)
{
	for (size_t i = 0; i < in->n_rcpts; i++)
		if (strcmp(in->rcpts[i].addr, addr) == 0)
			return TERN_OK; /* named twice, or by two aliases: deliver once */
	if (in->n_rcpts == in->cap_rcpts) {
		size_t ncap = in->cap_rcpts ? in->cap_rcpts * 2 : 8;
		struct spool_rcpt *n = realloc(in->rcpts, ncap * sizeof(*n));
		if (!n)
			return TERN_ENOMEM;
		in->rcpts = n;
		in->cap_rcpts = ncap;
	}
	char *a = tern_strdup(addr);
	if (!a)
		return TERN_ENOMEM;
	struct spool_rcpt *r = &in->rcpts[in->n_rcpts++];
	memset(r, 0, sizeof(*r));
	r->addr = a;
	r->local = local;
	r->notify = in->req->notify;
	r->state = RCPT_QUEUED;
	return TERN_OK;
}

/* Where an addr-spec's domain starts ('@' outside a quoted local part), or NULL. */
static const char *find_at(const char *a, size_t n)
{
	size_t i = 0;
	if (n && a[0] == '"') {
		for (i = 1; i < n && a[i] != '"'; i++)
			if (a[i] == '\\')
				i++;
		i++;
	}
	const char *at = i < n ? memchr(a + i, '@', n - i) : NULL;
	return at;
}

/* The domain a bare local part gets: recipients go to the first local
 * domain (that is where "root" lives), the sender is user@hostname. */
static const char *rcpt_default_domain(const struct tern_config *c)
{
	return c->n_local_domains ? c->local_domains[0] : c->hostname;
}

/* One recipient: qualify, check, resolve (aliases, users), add. Returns
 * 0 to go on, -1 when in->code says why not. */
static int take_rcpt(void *arg, const char *a, size_t n)
{
	struct intake *in = arg;
	const struct tern_config *conf = in->conf;
	char addr[ADDR_BUF + SMTP_DOMAIN_MAX + 2];
	char q[ADDR_BUF * 4 + 8];
	if (n > ADDR_BUF)
		return fail(in, EX_DATAERR, "a recipient address is too long");
	if (find_at(a, n))
		snprintf(addr, sizeof(addr), "%.*s", (int)n, a);
	else
		snprintf(addr, sizeof(addr), "%.*s@%s", (int)n, a, rcpt_default_domain(conf));
	struct smtp_path path;
	if (!smtp_parse_mailbox(addr, strlen(addr), &path))
		return fail(in, EX_DATAERR, "<%s>: not a valid mail address",
		            log_quote(addr, strlen(addr), q, sizeof(q)));
	if (++in->n_named > conf->limits.max_recipients)
		return fail(in, EX_UNAVAILABLE,
		            "too many recipients: the limit is %u (limits.max_recipients)",
		            (unsigned)conf->limits.max_recipients);
	in->utf8 |= path.utf8;
	if (conf->capture_mode) /* capture catches everything, as its SMTP does */
		return add_rcpt(in, path.addr, true) == TERN_OK
		           ? 0
		           : fail(in, EX_TEMPFAIL, "out of memory, try again later");
	if (!conf_is_local_domain(conf, path.domain, strlen(path.domain)))
		return add_rcpt(in, path.addr, false) == TERN_OK
		           ? 0
		           : fail(in, EX_TEMPFAIL, "out of memory, try again later");
	/* A local domain: an alias, a user, or the postmaster (as SMTP's RCPT). */
	char lc[ADDR_BUF];
	snprintf(lc, sizeof(lc), "%s@%s", path.local, path.domain);
	tern_ascii_lower(lc);
	const struct conf_alias *al = conf_find_alias(conf, lc);
	int rc = TERN_OK;
	if (al) {
		for (size_t i = 0; i < al->n_to && rc == TERN_OK; i++) {
			const char *at = strrchr(al->to[i], '@');
			rc = add_rcpt(in, al->to[i],
			              at && conf_is_local_domain(conf, at + 1, strlen(at + 1)));
		}
	} else if (users_exists(in->users, lc) || tern_ascii_ieq(path.local, "postmaster")) {
		rc = add_rcpt(in, lc, true);
	} else if (in->pickup) {
		/* Nobody to tell now: the sender gets a bounce for it. */
		char **nu = realloc(in->unknown, (in->n_unknown + 1) * sizeof(*nu));
		char *dup = nu ? tern_strdup(lc) : NULL;
		if (nu)
			in->unknown = nu;
		if (!dup)
			return fail(in, EX_TEMPFAIL, "out of memory, try again later");
		in->unknown[in->n_unknown++] = dup;
	} else {
		return fail(in, EX_NOUSER, "<%s>: no such user here (5.1.1)",
		            log_quote(lc, strlen(lc), q, sizeof(q)));
	}
	return rc == TERN_OK ? 0 : fail(in, EX_TEMPFAIL, "out of memory, try again later");
}

/* Who is calling: login name and the first GECOS field. */
static int whoami(struct intake *in)
{
	struct passwd pw, *res = NULL;
	char buf[4096];
	if (getpwuid_r(in->uid, &pw, buf, sizeof(buf), &res) != 0 || !res)
		return fail(in, EX_NOPERM,
		            "uid %u has no login name (no passwd entry): cannot choose a sender",
		            (unsigned)in->uid);
	/* A login name becomes the local part of the sender: keep it plain. */
	size_t n = strlen(pw.pw_name);
	if (n == 0 || n >= sizeof(in->login))
		return fail(in, EX_NOPERM, "uid %u: login name unusable as a sender",
		            (unsigned)in->uid);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)pw.pw_name[i];
		if (c <= ' ' || c >= 0x7f || strchr("<>()[]\\,;:@\"", c))
			return fail(in, EX_NOPERM, "uid %u: login name unusable as a sender",
			            (unsigned)in->uid);
	}
	memcpy(in->login, pw.pw_name, n + 1);
	size_t g = 0;
	for (const char *p = pw.pw_gecos ? pw.pw_gecos : "";
	     *p && *p != ',' && g < sizeof(in->gecos) - 1; p++)
		in->gecos[g++] = (unsigned char)*p < ' ' || *p == 0x7f ? ' ' : *p;
	in->gecos[g] = '\0';
	return 0;
}

/*
 * The envelope sender: LOGIN@hostname, unless -f named another address
 * and the caller may use it: root and the daemon's own user may name any
 * (the null sender too), anyone else only an address of their own login
 * at the hostname or a local domain. Otherwise -f is ignored and logged.
 */
static int choose_sender(struct intake *in)
{
	const struct tern_config *conf = in->conf;
	char q[ADDR_BUF * 4 + 8];
	snprintf(in->sender, sizeof(in->sender), "%s@%s", in->login, conf->hostname);
	if (!in->req->has_from)
		return 0;
	const char *f = in->req->from;
	size_t n = strlen(f);
	while (n && (*f == ' ' || *f == '\t'))
		f++, n--;
	while (n && (f[n - 1] == ' ' || f[n - 1] == '\t'))
		n--;
	if (n >= 2 && f[0] == '<' && f[n - 1] == '>')
		f++, n -= 2;
	bool privileged = in->uid == 0 || in->uid == in->s->self_uid;
	char want[ADDR_BUF + SMTP_DOMAIN_MAX + 2] = "";
	bool own = false;
	if (n > 0) {
		if (n > ADDR_BUF)
			return fail(in, EX_DATAERR, "the sender address given with -f is too long");
		if (find_at(f, n))
			snprintf(want, sizeof(want), "%.*s", (int)n, f);
		else
			snprintf(want, sizeof(want), "%.*s@%s", (int)n, f, conf->hostname);
		struct smtp_path path;
		if (!smtp_parse_mailbox(want, strlen(want), &path))
			return fail(in, EX_DATAERR, "-f %s: not a valid mail address",
			            log_quote(want, strlen(want), q, sizeof(q)));
		tern_strlcpy(want, path.addr, sizeof(want));
		own = tern_ascii_ieq(path.local, in->login) &&
		      (tern_ascii_ieq(path.domain, conf->hostname) ||
		       conf_is_local_domain(conf, path.domain, strlen(path.domain)));
		in->utf8 |= path.utf8;
	}
	if (privileged || own) {
		tern_strlcpy(in->sender, want, sizeof(in->sender));
		return 0;
	}
	char u[256];
	log_info("event=sender_ignored source=%s uid=%u user=%s requested=%s used=<%s> "
	         "reason=\"-f is honoured only for root, the daemon's user and the caller's own "
	         "address\"",
	         in->source, (unsigned)in->uid,
	         log_quote(in->login, strlen(in->login), u, sizeof(u)),
	         log_quote(want, strlen(want), q, sizeof(q)), in->sender);
	return 0;
}

/* "From: phrase <sender>" CRLF, the phrase from -F or GECOS. */
static int from_header(const struct intake *in, struct tbuf *out)
{
	const char *name = in->req->name ? in->req->name : in->gecos;
	char def[ADDR_BUF + 32];
	const char *addr = in->sender;
	if (!*addr) {
		snprintf(def, sizeof(def), "MAILER-DAEMON@%s", in->conf->hostname);
		addr = def;
	}
	struct mime_writer w;
	mime_writer_init(&w, out);
	mime_puts(&w, "From: ");
	size_t n = strlen(name);
	bool ascii = true;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)name[i] >= 0x80 || (unsigned char)name[i] < ' ')
			ascii = false;
	if (n && ascii) {
		mime_puts(&w, "\"");
		for (size_t i = 0; i < n; i++) {
			if (name[i] == '"' || name[i] == '\\')
				mime_puts(&w, "\\");
			mime_put(&w, name + i, 1);
		}
		mime_puts(&w, "\" ");
	} else if (n) {
		mime_put_encoded_words(&w, name, n);
		mime_puts(&w, " ");
	}
	mime_printf(&w, "<%s>\r\n", addr);
	return mime_writer_status(&w);
}

/* The recipients: the command line's, then (-t) the header's. */
static int collect_rcpts(struct intake *in, const struct submit_rewrite *rw)
{
	char q[1024];
	for (size_t i = 0; i < in->req->n_rcpts; i++) {
		const char *r = in->req->rcpts[i];
		int rc = submit_addr_list(r, strlen(r), take_rcpt, in);
		if (rc == TERN_ESYNTAX)
			return fail(in, EX_DATAERR, "%s: not a mail address",
			            log_quote(r, strlen(r), q, sizeof(q)));
		if (rc != 0)
			return -1;
	}
	const char *p = rw->rcpts.data;
	for (size_t i = 0; i < rw->n_lists; i++) {
		size_t n = strlen(p);
		int rc = submit_addr_list(p, n, take_rcpt, in);
		if (rc == TERN_ESYNTAX)
			return fail(in, EX_DATAERR,
			            "-t: a To, Cc or Bcc header is not a valid address list: %s",
			            log_quote(p, n, q, sizeof(q)));
		if (rc != 0)
			return -1;
		p += n + 1;
	}
	if (in->n_rcpts == 0 && in->n_unknown == 0)
		return fail(in, EX_USAGE,
		            in->req->extract
		                ? "no recipients: none on the command line and none in the To, "
		                  "Cc or Bcc header"
		                : "no recipients: name them on the command line or use -t");
	return 0;
}

/* The Received line of a local submission (RFC 5321 §4.4). */
static int received_header(const struct intake *in, struct tbuf *out)
{
	char date[TERN_RFC5322_DATE_MAX];
	tern_rfc5322_date((int64_t)time(NULL), date, sizeof(date));
	int rc = tbuf_printf(out,
	                     "Received: from local user (uid %u)\r\n\tby %s (tern) with local "
	                     "id %s",
	                     (unsigned)in->uid, in->conf->hostname, in->id);
	if (rc == TERN_OK && in->n_rcpts == 1 && strlen(in->rcpts[0].addr) < 300)
		rc = tbuf_printf(out, "\r\n\tfor <%s>", in->rcpts[0].addr);
	if (rc == TERN_OK)
		rc = tbuf_printf(out, "; %s\r\n", date);
	return rc;
}

/* The recipient of a bounce about a message from `to`, routed like any. */
static size_t route_one(const struct tern_config *conf, const char *to, struct spool_rcpt *rc,
                        size_t max)
{
	struct smtp_path path;
	char lc[ADDR_BUF];
	tern_strlcpy(lc, to, sizeof(lc));
	const struct conf_alias *al = NULL;
	if (smtp_parse_mailbox(to, strlen(to), &path) &&
	    conf_is_local_domain(conf, path.domain, strlen(path.domain))) {
		tern_ascii_lower(lc);
		al = conf_find_alias(conf, lc);
	}
	size_t n = 0;
	if (al) {
		for (size_t i = 0; i < al->n_to && n < max; i++, n++) {
			const char *at = strrchr(al->to[i], '@');
			rc[n].addr = al->to[i];
			rc[n].local = at && conf_is_local_domain(conf, at + 1, strlen(at + 1));
		}
		return n;
	}
	const char *at = strrchr(to, '@');
	rc[0].addr = (char *)to;
	rc[0].local = at && conf_is_local_domain(conf, at + 1, strlen(at + 1));
	return 1;
}

/*
 * A maildrop message that cannot go (some or all recipients): its sender
 * gets a failure notice, as Postfix's pickup would bounce. false when no
 * notice could be queued (null sender, spool trouble).
 */
static bool pickup_bounce(struct intake *in, char **addrs, size_t n, const char *status,
                          const char *diag, const char *msg, size_t len)
{
	if (!*in->sender || n == 0)
		return false;
	struct dsn_rcpt *dr = calloc(n, sizeof(*dr));
	if (!dr)
		return false;
	for (size_t i = 0; i < n; i++) {
		dr[i].final_rcpt = addrs[i];
		dr[i].action = "failed";
		dr[i].status = status;
		dr[i].diagnostic = diag;
	}
	int64_t now = (int64_t)time(NULL);
	struct dsn_params p = {
	    .reporting_mta = in->conf->hostname,
	    .queue_id = in->id,
	    .envid = in->req->envid,
	    .arrival = now,
	    .to = in->sender,
	    .ret = in->req->ret,
	    .rcpts = dr,
	    .n_rcpts = n,
	    .original = msg,
	    .original_len = len,
	    .now = now,
	};
	struct tbuf out;
	tbuf_init(&out, len + 256 * 1024);
	bool ok = dsn_build(&p, &out) == TERN_OK;
	free(dr);
	struct spool_rcpt rc[16];
	memset(rc, 0, sizeof(rc));
	struct spool_msg env = {0};
	queue_id_new(env.id);
	env.sender = "";
	env.created = now;
	env.client = "addr=local proto=DSN"; /* never a notice about this notice */
	env.size = out.len;
	env.rcpts = rc;
	env.n_rcpts = route_one(in->conf, in->sender, rc, 16);
	if (ok && spool_put_wait(in->s->sp, &env, out.data, out.len) == TERN_OK) {
		scheduler_submit(in->s->sched, env.id, NULL, 0);
		log_info("event=dsn id=%s dsn_id=%s kind=failure to=<%s> rcpts=%zu source=maildrop",
		         in->id, env.id, in->sender, n);
	} else {
		ok = false;
	}
	tbuf_free(&out);
	return ok;
}

/* SIGN: local submissions are DKIM-signed for their From domain (smtp/sign.h),
 * the signatures right under our Received field (trace bytes); one that should
 * be signed and cannot be is refused for now (75), never queued unsigned. */
static int sign_local(struct intake *in, struct tbuf *msg, size_t trace)
{
	struct smtp_sign_result r;
	int rc = 0;
	smtp_sign_run(in->signer, in->id, msg->data + trace, msg->len - trace, &r);
	if (r.status == SMTP_SIGN_ERROR) {
		rc = fail(in, EX_TEMPFAIL,
		          "local error: the message could not be DKIM-signed (%s); nothing was "
		          "queued, try again later",
		          r.reason);
	} else if (r.status == SMTP_SIGN_OK) {
		msg->max += r.len;
		if (smtp_sign_insert(&r, msg, trace) != TERN_OK)
			rc = fail(in, EX_TEMPFAIL, "out of memory, try again later");
	}
	smtp_sign_result_clear(&r);
	return rc;
}

/* Spools the finished message of in and hands it to the scheduler. */
static int commit(struct intake *in, struct tbuf *msg, bool eight, time_t now, bool had_bcc)
{
	const struct submit_req *req = in->req;
	char u[256];
	struct spool_msg env = {0};
	memcpy(env.id, in->id, sizeof(env.id));
	env.sender = in->sender;
	env.created = (int64_t)now;
	env.body = req->body ? req->body : eight ? SMTP_BODY_8BITMIME : SMTP_BODY_NONE;
	env.ret = req->ret;
	env.smtputf8 = in->utf8;
	env.envid = req->envid;
	char client[256];
	snprintf(client, sizeof(client), "addr=local uid=%u user=%s proto=%s", (unsigned)in->uid,
	         in->login, in->pickup ? "maildrop" : "sendmail");
	env.client = client;
	env.size = msg->len;
	env.rcpts = in->rcpts;
	env.n_rcpts = in->n_rcpts;
	int rc = spool_put_wait(in->s->sp, &env, msg->data, msg->len);
	if (rc != TERN_OK) {
		log_error("event=spool_failed id=%s source=%s reason=%s", in->id, in->source,
		          tern_strerror(rc));
		return fail(in, EX_TEMPFAIL,
		            "local error: could not write the queue, try again later");
	}
	{ /* EVENTS: before the scheduler takes the bytes the Message-ID points into */
		const char *mid = "";
		size_t mid_len = 0;
		if (events_enabled())
			smtp_message_id(msg->data, msg->len, &mid, &mid_len);
		events_emit_msg(EV_RECEIVED, in->id, mid, mid_len, in->sender, NULL, in->login);
		for (size_t i = 0; i < in->n_rcpts; i++)
			events_emit_msg(EV_QUEUED, in->id, mid, mid_len, in->sender,
			                in->rcpts[i].addr, in->login);
	}
	/* The scheduler takes the bytes; a copy when a bounce still needs them
	 * (without one it reads them back from the spool). */
	size_t len = msg->len;
	char *data = NULL;
	if (in->n_unknown == 0) {
		data = tbuf_steal(msg, &len);
	} else if ((data = malloc(len ? len : 1)) != NULL) {
		memcpy(data, msg->data, len);
	}
	scheduler_submit(in->s->sched, in->id, data, data ? len : 0);
	log_info("event=queued id=%s source=%s uid=%u user=%s from=<%s> nrcpt=%zu size=%zu%s",
	         in->id, in->source, (unsigned)in->uid,
	         log_quote(in->login, strlen(in->login), u, sizeof(u)), in->sender, in->n_rcpts,
	         len, had_bcc ? " bcc_removed=yes" : "");
	for (size_t i = 0; i < in->n_rcpts; i++)
		log_debug("event=rcpt id=%s to=<%s> local=%d", in->id, in->rcpts[i].addr,
		          in->rcpts[i].local);
	return 0;
}

/*
 * Takes one request in: decides the envelope, builds the message, commits
 * it. Sets in->code (0 on success with in->id set, else a sysexits code
 * and in->text). A maildrop message with unknown local recipients goes to
 * the others, and its sender gets a bounce for those.
 */
static void intake_run(struct intake *in)
{
	const struct tern_config *conf = in->conf;
	const struct submit_req *req = in->req;
	uint64_t max = conf->limits.max_message_size;
	struct tbuf crlf, body, msg, add;
	tbuf_init(&crlf, max + 2);
	tbuf_init(&body, max + TRACE_MAX);
	tbuf_init(&msg, max + 2 * TRACE_MAX);
	tbuf_init(&add, TRACE_MAX);
	struct submit_rewrite rw = {.collect = req->extract};
	tbuf_init(&rw.rcpts, SUBMIT_HEAD_MAX);
	char date[TERN_RFC5322_DATE_MAX + 16], msgid[ADDR_BUF + 64];
	int rc;

	queue_id_new(in->id);
	if (whoami(in) != 0 || choose_sender(in) != 0)
		goto out;
	bool nul = false, eight = false;
	rc = req->len > max ? TERN_ELIMIT
	                    : submit_crlf(req->data, req->len, max, &crlf, &nul, &eight);
	if (rc == TERN_ELIMIT) {
		fail(in, EX_UNAVAILABLE,
		     "message too big: the limit is %llu bytes (limits.max_message_size) (5.3.4)",
		     (unsigned long long)max);
		goto out;
	}
	if (rc != TERN_OK) {
		fail(in, EX_TEMPFAIL, "out of memory, try again later");
		goto out;
	}
	if (nul) {
		fail(in, EX_DATAERR,
		     "the message contains NUL bytes; send text, or encode "
		     "binary attachments (base64) (5.6.0)");
		goto out;
	}
	/* The header fields a local message gets when it lacks them. */
	time_t now = time(NULL);
	char d[TERN_RFC5322_DATE_MAX], stamp[32];
	struct tm tm;
	tern_rfc5322_date((int64_t)now, d, sizeof(d));
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%d%H%M%S", &tm);
	snprintf(date, sizeof(date), "Date: %s\r\n", d);
	snprintf(msgid, sizeof(msgid), "Message-ID: <%s.%s@%s>\r\n", stamp, in->id, conf->hostname);
	if (from_header(in, &add) != TERN_OK) {
		fail(in, EX_TEMPFAIL, "out of memory, try again later");
		goto out;
	}
	rw.add_from = add.data;
	rw.add_date = date;
	rw.add_message_id = msgid;
	if (submit_rewrite(crlf.data ? crlf.data : "", crlf.len, &rw, &body) != TERN_OK) {
		fail(in, EX_TEMPFAIL, "out of memory, try again later");
		goto out;
	}
	tbuf_free(&crlf);
	if (collect_rcpts(in, &rw) != 0)
		goto out;
	if (received_header(in, &msg) != TERN_OK) {
		fail(in, EX_TEMPFAIL, "out of memory, try again later");
		goto out;
	}
	size_t trace = msg.len;
	if (tbuf_append(&msg, body.data, body.len) != TERN_OK) {
		fail(in, EX_TEMPFAIL, "out of memory, try again later");
		goto out;
	}
	tbuf_free(&body);
	if (in->n_rcpts > 0 && sign_local(in, &msg, trace) != 0)
		goto out;

	if (in->n_rcpts > 0 && commit(in, &msg, eight, now, rw.had_bcc) != 0)
		goto out;
	if (in->n_unknown) {
		/* Maildrop only (a socket caller was refused with 67 instead),
		 * after the message itself is safe, so a retry never bounces twice. */
		for (size_t i = 0; i < in->n_unknown; i++)
			log_info("event=rejected id=%s source=maildrop uid=%u to=<%s> code=550 "
			         "reason=unknown-user",
			         in->id, (unsigned)in->uid, in->unknown[i]);
		bool told = pickup_bounce(in, in->unknown, in->n_unknown, "5.1.1",
		                          "550 5.1.1 no such user here", msg.data, msg.len);
		if (!told && in->n_rcpts == 0) {
			if (*in->sender)
				fail(in, EX_TEMPFAIL, "could not queue the bounce, will retry");
			else
				fail(in, EX_NOUSER, "no recipient has a mailbox here");
			goto out;
		}
		if (!told)
			log_error("event=dsn_failed id=%s source=maildrop reason=\"the unknown "
			          "recipients could not be reported to the sender\"",
			          in->id);
	}
	in->code = 0;
out:
	if (in->code != 0 && in->code != EX_TEMPFAIL && in->pickup) {
		char t[1024];
		log_info("event=rejected id=%s source=maildrop uid=%u code=%d reason=%s", in->id,
		         (unsigned)in->uid, in->code,
		         log_quote(in->text, strlen(in->text), t, sizeof(t)));
	}
	tbuf_free(&crlf);
	tbuf_free(&body);
	tbuf_free(&msg);
	tbuf_free(&add);
	tbuf_free(&rw.rcpts);
}

/* ----------------------------------------------------------- the socket */

/* Writes one reply line; errors are the client's problem (it exits 75). */
static void reply_line(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply_line(int fd, const char *fmt, ...)
{
	char line[640];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	ssize_t w = send(fd, line, (size_t)n, MSG_NOSIGNAL);
	(void)w;
}

/* Waits for input on fd; false on timeout, stop or error. */
static bool wait_readable(struct submit *s, int fd, unsigned timeout_s)
{
	struct pollfd p[2] = {{fd, POLLIN, 0}, {s->stop_pipe[0], POLLIN, 0}};
	for (;;) {
		int r = poll(p, 2, (int)(timeout_s * 1000));
		if (r < 0 && errno == EINTR)
			continue;
		return r > 0 && !p[1].revents && p[0].revents;
	}
}

static void serve_conn(struct submit *s, int fd)
{
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0) {
		reply_line(fd, "ERR %d cannot tell who is calling (SO_PEERCRED)", EX_SOFTWARE);
		return;
	}
	struct tern_runtime *rt = runtime_acquire();
	if (!rt) {
		reply_line(fd, "ERR %d the server is starting, try again", EX_TEMPFAIL);
		return;
	}
	const struct tern_config *conf = rt->conf;
	uint64_t max = conf->limits.max_message_size;
	unsigned timeout = conf->limits.data_timeout ? conf->limits.data_timeout : 60;
	struct tbuf in;
	tbuf_init(&in, SUBMIT_HEAD_MAX + max + 16);
	struct submit_req req;
	size_t need = 0, used = 0;
	const char *why = NULL;
	char chunk[65536];
	enum submit_parse_status st = SUBMIT_PARSE_MORE;
	for (;;) {
		if (in.len >= need) {
			st = submit_parse(in.data ? in.data : "", in.len, max, &req, &need, &why);
			if (st != SUBMIT_PARSE_MORE)
				break;
		}
		if (!wait_readable(s, fd, timeout)) {
			log_info("event=submit_aborted uid=%u reason=timeout-or-shutdown",
			         (unsigned)cred.uid);
			reply_line(fd, "ERR %d timed out waiting for the message", EX_TEMPFAIL);
			goto out;
		}
		ssize_t r = read(fd, chunk, sizeof(chunk));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			log_info(
			    "event=submit_aborted uid=%u reason=\"client closed before the end "
			    "of the request\"",
			    (unsigned)cred.uid);
			goto out;
		}
		if (tbuf_append(&in, chunk, (size_t)r) != TERN_OK) {
			reply_line(fd, "ERR %d request too big", EX_UNAVAILABLE);
			goto out;
		}
	}
	if (st == SUBMIT_PARSE_TOO_BIG) {
		log_info("event=rejected source=sendmail uid=%u code=552 reason=too-big",
		         (unsigned)cred.uid);
		reply_line(fd,
		           "ERR %d message too big: the limit is %llu bytes "
		           "(limits.max_message_size) (5.3.4)",
		           EX_UNAVAILABLE, (unsigned long long)max);
		goto out;
	}
	if (st == SUBMIT_PARSE_ERROR) {
		log_info("event=rejected source=sendmail uid=%u reason=\"bad request: %s\"",
		         (unsigned)cred.uid, why);
		reply_line(fd, "ERR %d bad request: %s", EX_PROTOCOL, why);
		goto out;
	}
	/* The request is everything up to the client's half-close: a byte
	 * after END is an error, however the reads happened to split. */
	used = need;
	bool extra = used != in.len;
	while (!extra && wait_readable(s, fd, timeout)) {
		ssize_t r = read(fd, chunk, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		extra = true;
	}
	if (extra) {
		submit_req_free(&req);
		reply_line(fd, "ERR %d bad request: bytes after END", EX_PROTOCOL);
		goto out;
	}
	struct intake it = {.s = s,
	                    .conf = conf,
	                    .users = rt->users,
	                    .signer = rt->dkim_signer,
	                    .req = &req,
	                    .source = "sendmail",
	                    .uid = cred.uid};
	intake_run(&it);
	if (it.code == 0) {
		reply_line(fd, "OK %s", it.id);
	} else {
		char u[256], t[1024];
		if (it.code != EX_TEMPFAIL)
			log_info("event=rejected source=sendmail uid=%u user=%s code=%d reason=%s",
			         (unsigned)cred.uid,
			         log_quote(it.login, strlen(it.login), u, sizeof(u)), it.code,
			         log_quote(it.text, strlen(it.text), t, sizeof(t)));
		reply_line(fd, "ERR %d %s", it.code, it.text);
	}
	intake_free(&it);
	submit_req_free(&req);
out:
	tbuf_free(&in);
	runtime_release(rt);
}

struct conn {
	struct submit *s;
	int fd;
};

static void *conn_main(void *arg)
{
	struct conn *c = arg;
	struct submit *s = c->s;
	serve_conn(s, c->fd);
	close(c->fd);
	free(c);
	pthread_mutex_lock(&s->mu);
	s->active--;
	pthread_cond_broadcast(&s->idle);
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

static void *listen_main(void *arg)
{
	struct submit *s = arg;
	struct pollfd p[2] = {{s->fd, POLLIN, 0}, {s->stop_pipe[0], POLLIN, 0}};
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	for (;;) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[1].revents)
			break;
		if (!(p[0].revents & POLLIN))
			continue;
		int fd = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		pthread_mutex_lock(&s->mu);
		bool full = s->active >= SUBMIT_CONN_MAX;
		if (!full)
			s->active++;
		pthread_mutex_unlock(&s->mu);
		if (full) {
			log_warn("event=submit_busy connections=%u", SUBMIT_CONN_MAX);
			reply_line(fd, "ERR %d too many local submissions at once, try again",
			           EX_TEMPFAIL);
			close(fd);
			continue;
		}
		struct conn *c = malloc(sizeof(*c));
		pthread_t t;
		if (c) {
			c->s = s;
			c->fd = fd;
		}
		if (!c || pthread_create(&t, &attr, conn_main, c) != 0) {
			free(c);
			reply_line(fd, "ERR %d out of resources, try again", EX_TEMPFAIL);
			close(fd);
			pthread_mutex_lock(&s->mu);
			s->active--;
			pthread_cond_broadcast(&s->idle);
			pthread_mutex_unlock(&s->mu);
			continue;
		}
	}
	pthread_attr_destroy(&attr);
	return NULL;
}

/* ---------------------------------------------------------- the maildrop */

/* Sets a maildrop file aside (kept for the operator, never retried). */
static void quarantine(struct submit *s, int dfd, const char *name, const char *why)
{
	char bad[NAME_MAX + 8];
	snprintf(bad, sizeof(bad), "bad.%s", name);
	if (renameat(dfd, name, dfd, bad) != 0)
		unlinkat(dfd, name, 0);
	char t[1024];
	log_error("event=maildrop_quarantined file=%s/%s reason=%s", s->maildrop, bad,
	          log_quote(why, strlen(why), t, sizeof(t)));
}

static void pickup_file(struct submit *s, int dfd, const char *name)
{
	struct tern_runtime *rt = runtime_acquire();
	if (!rt)
		return;
	const struct tern_config *conf = rt->conf;
	uint64_t max = conf->limits.max_message_size;
	struct tbuf buf;
	tbuf_init(&buf, SUBMIT_HEAD_MAX + max + 16);
	struct submit_req req;
	bool have_req = false;
	int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	struct stat st;
	if (fd < 0) {
		if (errno != ENOENT)
			quarantine(s, dfd, name, "cannot be opened (a symlink or unreadable)");
		goto out;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
		quarantine(s, dfd, name, "not a regular file with a single link");
		goto out;
	}
	if ((uint64_t)st.st_size > buf.max) {
		quarantine(s, dfd, name, "larger than a request can be");
		goto out;
	}
	char chunk[65536];
	ssize_t r;
	while ((r = read(fd, chunk, sizeof(chunk))) > 0)
		if (tbuf_append(&buf, chunk, (size_t)r) != TERN_OK)
			break;
	if (r != 0) {
		quarantine(s, dfd, name, "read error or grew while read");
		goto out;
	}
	size_t used = 0;
	const char *why = NULL;
	enum submit_parse_status ps =
	    submit_parse(buf.data ? buf.data : "", buf.len, max, &req, &used, &why);
	if (ps == SUBMIT_PARSE_TOO_BIG) {
		/* Written while a bigger limit was configured: there is no
		 * message to bounce with, only its size. */
		quarantine(s, dfd, name, "message larger than limits.max_message_size");
		goto out;
	}
	if (ps != SUBMIT_PARSE_DONE || used != buf.len) {
		quarantine(s, dfd, name, ps == SUBMIT_PARSE_ERROR ? why : "truncated request");
		goto out;
	}
	have_req = true;
	struct intake it = {.s = s,
	                    .conf = conf,
	                    .users = rt->users,
	                    .signer = rt->dkim_signer,
	                    .req = &req,
	                    .pickup = true,
	                    .source = "maildrop",
	                    .uid = st.st_uid};
	intake_run(&it);
	if (it.code == 0) {
		unlinkat(dfd, name, 0);
	} else if (it.code == EX_TEMPFAIL || it.code == EX_SOFTWARE || it.code == EX_OSERR) {
		char t[1024];
		log_warn("event=maildrop_deferred file=%s/%s reason=%s", s->maildrop, name,
		         log_quote(it.text, strlen(it.text), t, sizeof(t)));
	} else {
		/* Refused as a whole: the sender hears why, the file goes. The
		 * notice names the recipients as resolved, or as written when
		 * the refusal came first. */
		size_t n = it.n_rcpts ? it.n_rcpts : req.n_rcpts;
		char **addrs = n ? calloc(n, sizeof(*addrs)) : NULL;
		for (size_t i = 0; addrs && i < n; i++)
			addrs[i] = it.n_rcpts ? it.rcpts[i].addr : req.rcpts[i];
		struct tbuf orig;
		bool nul, eight;
		tbuf_init(&orig, max + 2);
		if (submit_crlf(req.data, req.len, max, &orig, &nul, &eight) != TERN_OK || nul)
			tbuf_reset(&orig); /* the notice then says what, without the message */
		char diag[600];
		snprintf(diag, sizeof(diag), "550 5.0.0 %s", it.text);
		bool bounced = addrs && pickup_bounce(&it, addrs, n, "5.0.0", diag,
		                                      orig.data ? orig.data : "", orig.len);
		free(addrs);
		tbuf_free(&orig);
		if (bounced)
			unlinkat(dfd, name, 0);
		else
			quarantine(s, dfd, name, it.text);
	}
	intake_free(&it);
out:
	if (have_req)
		submit_req_free(&req);
	if (fd >= 0)
		close(fd);
	tbuf_free(&buf);
	runtime_release(rt);
}

static void pickup_scan(struct submit *s)
{
	int dfd = open(s->maildrop, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		log_warn("event=maildrop_unreadable dir=%s error=\"%s\"", s->maildrop,
		         strerror(errno));
		return;
	}
	DIR *d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return;
	}
	/* Names first, then the work: a directory is not read while it changes. */
	char(*names)[NAME_MAX + 1] = calloc(PICKUP_FILES_PER_SCAN, NAME_MAX + 1);
	size_t n = 0;
	time_t now = time(NULL);
	struct dirent *de;
	while (names && n < PICKUP_FILES_PER_SCAN && (de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, "m.", 2) == 0) {
			tern_strlcpy(names[n++], de->d_name, NAME_MAX + 1);
		} else if (strncmp(de->d_name, "t.", 2) == 0) {
			/* A client that died while writing left this. */
			struct stat st;
			if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
			    now - st.st_mtime > MAILDROP_TMP_MAX_AGE &&
			    unlinkat(dfd, de->d_name, 0) == 0)
				log_info("event=maildrop_stale_removed file=%s/%s", s->maildrop,
				         de->d_name);
		}
	}
	for (size_t i = 0; i < n; i++) {
		struct pollfd p = {s->stop_pipe[0], POLLIN, 0};
		if (poll(&p, 1, 0) > 0)
			break; /* stopping: the rest waits for the next start */
		pickup_file(s, dfd, names[i]);
	}
	free(names);
	closedir(d);
}

static void *pickup_main(void *arg)
{
	struct submit *s = arg;
	for (;;) {
		pickup_scan(s);
		struct pollfd p = {s->stop_pipe[0], POLLIN, 0};
		int r = poll(&p, 1, PICKUP_INTERVAL_MS);
		if (r > 0)
			break;
	}
	return NULL;
}

/* ------------------------------------------------------------ start, stop */

/* DATA/maildrop, mode 1733 and ours, or NULL (pickup off, logged). */
static char *maildrop_prepare(const char *data_dir)
{
	char path[4096];
	int n = snprintf(path, sizeof(path), "%s/maildrop", data_dir);
	if (n < 0 || (size_t)n >= sizeof(path))
		return NULL;
	if (mkdir(path, 0700) != 0 && errno != EEXIST) {
		log_warn("event=maildrop_disabled dir=%s error=\"%s\"", path, strerror(errno));
		return NULL;
	}
	struct stat st;
	if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid()) {
		log_warn("event=maildrop_disabled dir=%s reason=\"not a directory owned by the "
		         "daemon's user\"",
		         path);
		return NULL;
	}
	if ((st.st_mode & 07777) != 01733 && chmod(path, 01733) != 0) {
		log_warn("event=maildrop_disabled dir=%s error=\"%s\"", path, strerror(errno));
		return NULL;
	}
	return tern_strdup(path);
}

struct submit *submit_start(const char *data_dir, struct spool *sp, struct scheduler *sched,
                            char *err, size_t errlen)
{
	struct submit *s = calloc(1, sizeof(*s));
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->fd = -1;
	s->stop_pipe[0] = s->stop_pipe[1] = -1;
	s->sp = sp;
	s->sched = sched;
	s->self_uid = geteuid();
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->idle, NULL);
	int n = snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/submit.sock", data_dir);
	if (n < 0 || (size_t)n >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "%s/submit.sock: path too long for a socket", data_dir);
		goto fail;
	}
	/* Local users reach the socket and the maildrop through DATA: let
	 * them search it (never list or read it; everything else in it is
	 * 0700 or 0600). */
	struct stat st;
	if (stat(data_dir, &st) == 0 && !(st.st_mode & S_IXOTH)) {
		if (st.st_uid == geteuid() && chmod(data_dir, (st.st_mode & 07777) | S_IXOTH) == 0)
			log_info(
			    "event=submit_data_dir dir=%s mode=%04o reason=\"others may search "
			    "it to reach submit.sock and maildrop\"",
			    data_dir, (unsigned)((st.st_mode & 07777) | S_IXOTH));
		else
			log_warn("event=submit_data_dir dir=%s reason=\"other users cannot search "
			         "it: only its owner can use sendmail\"",
			         data_dir);
	}
	s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s->fd < 0)
		goto fail_errno;
	unlink(sun.sun_path); /* a stale socket from a previous run */
	if (bind(s->fd, (struct sockaddr *)&sun, sizeof(sun)) != 0 ||
	    chmod(sun.sun_path, 0666) != 0 || listen(s->fd, 64) != 0)
		goto fail_errno;
	if (pipe2(s->stop_pipe, O_CLOEXEC) != 0)
		goto fail_errno;
	s->maildrop = maildrop_prepare(data_dir);
	if (pthread_create(&s->listener, NULL, listen_main, s) != 0) {
		snprintf(err, errlen, "cannot start the submit thread");
		goto fail;
	}
	if (s->maildrop) {
		if (pthread_create(&s->pickup, NULL, pickup_main, s) != 0) {
			log_warn(
			    "event=maildrop_disabled reason=\"cannot start the pickup thread\"");
		} else {
			s->pickup_started = true;
		}
	}
	log_info("event=listening name=submit address=%s profile=sendmail maildrop=%s",
	         sun.sun_path, s->maildrop ? s->maildrop : "off");
	return s;
fail_errno:
	snprintf(err, errlen, "%s: %s", sun.sun_path, strerror(errno));
fail:
	if (s->fd >= 0)
		close(s->fd);
	if (s->stop_pipe[0] >= 0) {
		close(s->stop_pipe[0]);
		close(s->stop_pipe[1]);
	}
	pthread_cond_destroy(&s->idle);
	pthread_mutex_destroy(&s->mu);
	free(s->maildrop);
	free(s);
	return NULL;
}

void submit_stop(struct submit *s)
{
	if (!s)
		return;
	ssize_t w = write(s->stop_pipe[1], "x", 1);
	(void)w;
	pthread_join(s->listener, NULL);
	if (s->pickup_started)
		pthread_join(s->pickup, NULL);
	/* Connection threads see the pipe too: those reading give up at once,
	 * one waiting for its commit finishes it first. */
	pthread_mutex_lock(&s->mu);
	while (s->active > 0)
		pthread_cond_wait(&s->idle, &s->mu);
	pthread_mutex_unlock(&s->mu);
	close(s->fd);
	close(s->stop_pipe[0]);
	close(s->stop_pipe[1]);
	pthread_cond_destroy(&s->idle);
	pthread_mutex_destroy(&s->mu);
	free(s->maildrop);
	free(s);
}
