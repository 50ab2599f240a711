/*
 * sendmail.c — `tern sendmail`, and the binary invoked as sendmail, mailq
 * or newaliases: the command applications (cron, PHP's mail(), git
 * send-email, Symfony's -bs transport) hand their mail to.
 *
 * Owns: the sendmail(1) command line as Postfix documents it, reading the
 * message (a lone "." ends it unless -i), the -bs SMTP dialogue on
 * stdin/stdout, and getting the request (submit.h) to the daemon: over
 * DATA/submit.sock, or, when no daemon listens, durably into
 * DATA/maildrop/ for the daemon to pick up. Exit codes are sysexits(3).
 * Must never: decide the envelope sender or trust itself (the daemon does
 * that from the uid), exit 0 before the daemon answered "OK" (the message
 * is in the spool) or the maildrop file is on stable storage.
 * SECURITY: runs as any local user, often as root (cron); it is not
 * set-uid. Files go into the world-writable maildrop only with O_EXCL,
 * O_NOFOLLOW and random names, renamed without replacing anything.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sysexits.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/submit.h"
#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "smtp/smtp.h"

#define DEFAULT_CONFIG "/etc/tern/tern.conf"
#define REPLY_TIMEOUT_MS (600 * 1000) /* the daemon answers after its commit */
#define SMTP_LINE_MAX 2048

static const char *prog = "sendmail";

/* ----------------------------------------------------- the command line */

/* Options that take an argument (Postfix's getopt list). */
static bool takes_arg(char c)
{
	return c && strchr("ABCFLNORVXbefhoprq", c) != NULL;
}

static bool ieq(const char *a, const char *b)
{
	return tern_ascii_ieq(a, b);
}

/* -N: "never" or a comma list of success, failure, delay; 0 if bad. */
static unsigned notify_bits(const char *s)
{
	if (ieq(s, "never"))
		return SMTP_NOTIFY_NEVER;
	unsigned bits = 0;
	while (*s) {
		const char *e = strchr(s, ',');
		size_t n = e ? (size_t)(e - s) : strlen(s);
		struct strv w = strv_make(s, n);
		unsigned bit = strv_ieq(w, STRV("success"))   ? SMTP_NOTIFY_SUCCESS
		               : strv_ieq(w, STRV("failure")) ? SMTP_NOTIFY_FAILURE
		               : strv_ieq(w, STRV("delay"))   ? SMTP_NOTIFY_DELAY
		                                              : 0;
		if (!bit)
			return 0;
		bits |= bit;
		s += n;
		if (*s == ',')
			s++;
	}
	return bits;
}

static int usage_err(const char **why, const char **why_arg, const char *w, const char *a)
{
	*why = w;
	*why_arg = a;
	return EX_USAGE;
}

int sendmail_parse_args(int argc, char **argv, struct sendmail_opts *o, const char **why,
                        const char **why_arg)
{
	memset(o, 0, sizeof(*o));
	*why = NULL;
	*why_arg = NULL;
	const char *base = argc > 0 && argv[0] ? strrchr(argv[0], '/') : NULL;
	base = base ? base + 1 : (argc > 0 && argv[0] ? argv[0] : "sendmail");
	if (strcmp(base, "mailq") == 0)
		o->mode = SENDMAIL_MAILQ;
	else if (strcmp(base, "newaliases") == 0)
		o->mode = SENDMAIL_NEWALIASES;
	int i = 1;
	for (; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--") == 0) {
			i++;
			break;
		}
		if (a[0] != '-' || a[1] == '\0')
			break;
		if (strcmp(a, "-q") == 0) { /* not getopt-compatible: no argument */
			o->mode = SENDMAIL_FLUSH;
			continue;
		}
		for (size_t j = 1; a[j]; j++) {
			char c = a[j];
			const char *arg = NULL;
			if (takes_arg(c)) {
				if (a[j + 1]) {
					arg = a + j + 1;
				} else if (i + 1 < argc) {
					arg = argv[++i];
				} else {
					return usage_err(why, why_arg,
					                 "option requires an argument", a);
				}
			}
			switch (c) {
			case 'A':
			case 'L':
			case 'O':
			case 'e':
			case 'h':
			case 'p':
			case 'G':
			case 'U':
			case 'c':
			case 'm':
			case 'v':
			case 'x':
				break; /* accepted and ignored, as Postfix does */
			case 'B':
				if (strcmp(arg, "8BITMIME") == 0)
					o->body = SMTP_BODY_8BITMIME;
				else if (strcmp(arg, "7BIT") == 0)
					o->body = SMTP_BODY_7BIT;
				else
					return usage_err(why, why_arg, "-B needs 8BITMIME or 7BIT",
					                 arg);
				break;
			case 'C':
				o->config = arg;
				break;
			case 'F':
				o->name = arg;
				break;
			case 'I':
				o->mode = SENDMAIL_NEWALIASES;
				break;
			case 'N':
				o->notify = notify_bits(arg);
				if (!o->notify)
					o->warning =
					    "bad -N value (never, or success,failure,delay) "
					    "ignored";
				break;
			case 'R':
				o->ret = ieq(arg, "full")   ? SMTP_RET_FULL
				         : ieq(arg, "hdrs") ? SMTP_RET_HDRS
				                            : 0;
				if (!o->ret)
					o->warning = "bad -R value (full or hdrs) ignored";
				break;
			case 'V': {
				bool ok = strlen(arg) <= SUBMIT_ENVID_MAX && *arg;
				for (const char *p = arg; ok && *p; p++)
					ok = (unsigned char)*p > ' ' && (unsigned char)*p < 0x7f;
				if (ok)
					o->envid = arg;
				else
					o->warning = "bad -V envelope id (1 to 100 printable "
					             "characters) ignored";
				break;
			}
			case 'X':
				return usage_err(why, why_arg, "unsupported option", a);
			case 'b':
				switch (arg[0]) {
				case 'm':
					o->mode = SENDMAIL_DELIVER;
					break;
				case 's':
					o->mode = SENDMAIL_SMTP;
					break;
				case 'p':
					o->mode = SENDMAIL_MAILQ;
					break;
				case 'i':
					o->mode = SENDMAIL_NEWALIASES;
					break;
				case 'h':
				case 'H':
					o->mode = SENDMAIL_NOTHING;
					break;
				case 'd':
					return usage_err(why, why_arg,
					                 "-bd: tern's daemon is `tern serve`", a);
				default:
					return usage_err(why, why_arg, "unsupported mode", a);
				}
				break;
			case 'f':
			case 'r':
				o->from = arg;
				break;
			case 'i':
				o->ignore_dots = true;
				break;
			case 'n':
				return usage_err(why, why_arg, "-n is not supported", a);
			case 'o':
				if (arg[0] == 'i')
					o->ignore_dots = true;
				else if (arg[0] == 'A' && !arg[1])
					return usage_err(why, why_arg, "-oA requires a path name",
					                 a);
				break; /* every other -o option is ignored */
			case 'q':
				if (arg[0] >= '0' && arg[0] <= '9')
					o->mode = SENDMAIL_NOTHING; /* -q1h: a queue-run interval */
				else
					return usage_err(why, why_arg,
					                 "unsupported -q form (use tern queue)", a);
				break;
			case 't':
				o->extract = true;
				break;
			default:
				return usage_err(why, why_arg, "unknown option", a);
			}
			if (arg)
				break; /* the argument used up the rest of this word */
		}
	}
	o->rcpts = argv + i;
	o->n_rcpts = (size_t)(argc - i);
	if (o->extract && o->mode != SENDMAIL_DELIVER)
		return usage_err(why, why_arg, "-t can be used only in delivery mode", NULL);
	if (o->n_rcpts && o->mode != SENDMAIL_DELIVER)
		return usage_err(why, why_arg, "this mode takes no recipients", o->rcpts[0]);
	if (o->mode == SENDMAIL_DELIVER && !o->n_rcpts && !o->extract)
		return usage_err(why, why_arg,
		                 "no recipients: name them on the command line or use -t", NULL);
	return 0;
}

/* ------------------------------------------------------- reading input */

size_t sendmail_dot_end(const char *in, size_t len, bool eof, bool *complete)
{
	*complete = false;
	size_t ls = 0; /* start of the current line */
	while (ls < len) {
		const char *lf = memchr(in + ls, '\n', len - ls);
		size_t le = lf ? (size_t)(lf - in) : len; /* index of the LF, or len */
		size_t n = le - ls;
		bool dot = in[ls] == '.' && (n == 1 || (n == 2 && in[ls + 1] == '\r'));
		if (dot && (lf || eof)) {
			*complete = true;
			return ls;
		}
		if (!lf)
			break;
		ls = le + 1;
	}
	return len;
}

/* Reads the message from stdin into msg, whose cap must be above max (so
 * that a message one byte too big is seen). 0 or a sysexits code. */
static int read_message(bool ignore_dots, uint64_t max, struct tbuf *msg)
{
	char chunk[65536];
	size_t ls = 0; /* the start of the first line not yet known to be complete */
	for (;;) {
		ssize_t r = read(0, chunk, sizeof(chunk));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			fprintf(stderr, "%s: error reading the message: %s\n", prog,
			        strerror(errno));
			return EX_IOERR;
		}
		bool over = false;
		if (r > 0 && tbuf_append(msg, chunk, (size_t)r) != TERN_OK) {
			/* What fits may still hold the lone dot that ends the message. */
			(void)tbuf_append(msg, chunk, msg->max - msg->len);
			over = true;
		}
		if (!ignore_dots && msg->len > ls) {
			bool done = false;
			size_t n = sendmail_dot_end(msg->data + ls, msg->len - ls, r == 0, &done);
			if (done) {
				msg->len = ls + n;
				msg->data[msg->len] = '\0';
				over = false;
				r = 0;
			} else {
				for (size_t k = msg->len; k > ls; k--) {
					if (msg->data[k - 1] == '\n') {
						ls = k;
						break;
					}
				}
			}
		}
		if (over || msg->len > max) {
			fprintf(stderr,
			        "%s: message too big: the limit is %llu bytes "
			        "(limits.max_message_size); nothing was sent\n",
			        prog, (unsigned long long)max);
			return EX_UNAVAILABLE;
		}
		if (r == 0)
			return 0;
	}
}

/* -------------------------------------------------- reaching the daemon */

static int socket_path(const char *data_dir, const char *name, struct sockaddr_un *sun)
{
	memset(sun, 0, sizeof(*sun));
	sun->sun_family = AF_UNIX;
	int n = snprintf(sun->sun_path, sizeof(sun->sun_path), "%s/%s", data_dir, name);
	return n < 0 || (size_t)n >= sizeof(sun->sun_path) ? -1 : 0;
}

/*
 * Writes the request into DATA/maildrop as m.RANDOM: a temp file created
 * exclusively (never through a link), written, synced, made readable for
 * the daemon, renamed without replacing anything, and the file system
 * synced so the new name is durable (others may not open the maildrop
 * directory to fsync it). 0 or errno.
 */
int maildrop_write(const char *data_dir, const struct tbuf *req, char *name, size_t namelen)
{
	unsigned char rnd[16];
	char hex[33];
	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
		return errno ? errno : EIO;
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
	char tmp[4096];
	if (snprintf(tmp, sizeof(tmp), "%s/maildrop/t.%s", data_dir, hex) >= (int)sizeof(tmp) ||
	    snprintf(name, namelen, "%s/maildrop/m.%s", data_dir, hex) >= (int)namelen)
		return ENAMETOOLONG;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return errno;
	int e = 0;
	if (tern_write_full(fd, req->data, req->len) != TERN_OK || fchmod(fd, 0644) != 0 ||
	    fsync(fd) != 0 || renameat2(AT_FDCWD, tmp, AT_FDCWD, name, RENAME_NOREPLACE) != 0)
		e = errno ? errno : EIO;
	else if (syncfs(fd) != 0)
		e = errno;
	if (close(fd) != 0 && !e)
		e = errno;
	if (e)
		unlink(tmp), unlink(name);
	return e;
}

struct outcome {
	int code;       /* sysexits; 0 when the message is safe */
	char id[64];    /* queue id, or "" when it went to the maildrop */
	char text[640]; /* why not, for stderr or an SMTP reply */
};

/* Reads the daemon's one-line answer. */
static void read_answer(int fd, struct outcome *out)
{
	char line[1024];
	size_t n = 0;
	struct pollfd p = {fd, POLLIN, 0};
	while (n < sizeof(line) - 1) {
		int pr = poll(&p, 1, REPLY_TIMEOUT_MS);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr <= 0)
			break;
		ssize_t r = read(fd, line + n, sizeof(line) - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
		if (memchr(line, '\n', n))
			break;
	}
	line[n] = '\0';
	char *nl = strchr(line, '\n');
	if (!nl) {
		out->code = EX_TEMPFAIL;
		snprintf(out->text, sizeof(out->text),
		         "the server closed the connection without an answer; the message may not "
		         "have been queued, try again");
		return;
	}
	*nl = '\0';
	if (strncmp(line, "OK ", 3) == 0) {
		out->code = 0;
		tern_strlcpy(out->id, line + 3, sizeof(out->id));
		return;
	}
	char *end = NULL;
	long code = strncmp(line, "ERR ", 4) == 0 ? strtol(line + 4, &end, 10) : 0;
	if (code < EX__BASE || code > EX__MAX || !end || *end != ' ') {
		out->code = EX_PROTOCOL;
		snprintf(out->text, sizeof(out->text), "unexpected answer from the server");
		return;
	}
	out->code = (int)code;
	tern_strlcpy(out->text, end + 1, sizeof(out->text));
}

/* Hands the request to the daemon, or to the maildrop when none listens. */
static void deliver_request(const struct tern_config *conf, const struct tbuf *req,
                            struct outcome *out)
{
	struct sockaddr_un sun;
	memset(out, 0, sizeof(*out));
	if (socket_path(conf->data_dir, "submit.sock", &sun) != 0) {
		out->code = EX_CONFIG;
		snprintf(out->text, sizeof(out->text), "data_dir path too long: %s",
		         conf->data_dir);
		return;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		out->code = EX_OSERR;
		snprintf(out->text, sizeof(out->text), "socket: %s", strerror(errno));
		return;
	}
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
		size_t off = 0;
		while (off < req->len) {
			ssize_t w = send(fd, req->data + off, req->len - off, MSG_NOSIGNAL);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				break; /* the daemon may have answered early: read it */
			off += (size_t)w;
		}
		shutdown(fd, SHUT_WR);
		read_answer(fd, out);
		close(fd);
		return;
	}
	int ce = errno;
	close(fd);
	if (ce != ENOENT && ce != ECONNREFUSED) {
		out->code = ce == EACCES ? EX_NOPERM : EX_TEMPFAIL;
		snprintf(out->text, sizeof(out->text), "cannot reach the server at %s: %s",
		         sun.sun_path, strerror(ce));
		return;
	}
	/* No daemon: the maildrop keeps the message until one starts. */
	char name[4096];
	int e = maildrop_write(conf->data_dir, req, name, sizeof(name));
	if (e == 0) {
		out->code = 0;
		if (isatty(2))
			fprintf(stderr,
			        "%s: the server is not running; the message waits in %s and "
			        "is sent when it starts\n",
			        prog, name);
		return;
	}
	out->code = EX_TEMPFAIL;
	snprintf(
	    out->text, sizeof(out->text),
	    "the server is not running (%s: %s) and the message could not be left in %s/maildrop "
	    "(%s); nothing was sent, try again",
	    sun.sun_path, strerror(ce), conf->data_dir, strerror(e));
}

/* ----------------------------------------------------------------- -bs */

struct smtp_io {
	char buf[65536];
	size_t len, pos;
	bool eof;
};

/* Fills io from stdin; false at the end of input. */
static bool io_fill(struct smtp_io *io)
{
	if (io->eof)
		return false;
	if (io->pos > 0) {
		memmove(io->buf, io->buf + io->pos, io->len - io->pos);
		io->len -= io->pos;
		io->pos = 0;
	}
	if (io->len == sizeof(io->buf))
		return true;
	for (;;) {
		ssize_t r = read(0, io->buf + io->len, sizeof(io->buf) - io->len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			io->eof = true;
			return false;
		}
		io->len += (size_t)r;
		return true;
	}
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fputs("\r\n", stdout);
	fflush(stdout);
}

/* One command line (CRLF or LF stripped) into line; 0 line, 1 too long
 * (skipped), -1 end of input. */
static int read_line(struct smtp_io *io, char *line, size_t max, size_t *n)
{
	bool toolong = false;
	for (;;) {
		char *lf = memchr(io->buf + io->pos, '\n', io->len - io->pos);
		if (lf) {
			size_t l = (size_t)(lf - (io->buf + io->pos));
			if (!toolong && l < max) {
				memcpy(line, io->buf + io->pos, l);
				if (l && line[l - 1] == '\r')
					l--;
				line[l] = '\0';
				*n = l;
			}
			io->pos += (size_t)(lf - (io->buf + io->pos)) + 1;
			return toolong || l >= max ? 1 : 0;
		}
		if (io->len - io->pos >= max) {
			toolong = true;
			io->pos = io->len;
		}
		if (!io_fill(io))
			return -1;
	}
}

/* The sysexits answer of a submission as an SMTP reply. */
static void smtp_answer(const struct outcome *o)
{
	if (o->code == 0) {
		if (o->id[0])
			say("250 2.0.0 Ok: queued as %s", o->id);
		else
			say("250 2.0.0 Ok: queued in the maildrop (the server is not running)");
	} else if (o->code == EX_TEMPFAIL || o->code == EX_OSERR || o->code == EX_IOERR ||
	           o->code == EX_SOFTWARE) {
		say("451 4.3.0 %s", o->text);
	} else if (o->code == EX_NOUSER) {
		say("550 5.1.1 %s", o->text);
	} else {
		say("554 5.0.0 %s", o->text);
	}
}

static int smtp_mode(const struct tern_config *conf, const struct sendmail_opts *o)
{
	struct smtp_io *io = calloc(1, sizeof(*io));
	struct smtp_cmd *c = calloc(1, sizeof(*c));
	char *line = malloc(SMTP_LINE_MAX + 1);
	struct submit_req req = {0};
	bool helo = false, in_tx = false;
	int status = EX_OK;
	uint64_t max = conf->limits.max_message_size;
	if (!io || !c || !line) {
		fprintf(stderr, "%s: out of memory\n", prog);
		status = EX_OSERR;
		goto out;
	}
	say("220 %s ESMTP tern (sendmail -bs)", conf->hostname);
	for (;;) {
		size_t n = 0;
		int lr = read_line(io, line, SMTP_LINE_MAX, &n);
		if (lr < 0)
			break;
		if (lr > 0) {
			say("500 5.5.2 Line too long");
			continue;
		}
		struct smtp_parse_error perr = {0};
		if (smtp_parse_command(line, n, c, &perr) != SMTP_PARSE_OK) {
			say("%d %s %s", perr.code, perr.enhanced, perr.text);
			continue;
		}
		switch (c->verb) {
		case SMTP_HELO:
			helo = true;
			say("250 %s", conf->hostname);
			break;
		case SMTP_EHLO:
			helo = true;
			say("250-%s\r\n250-PIPELINING\r\n250-SIZE %llu\r\n250-8BITMIME\r\n"
			    "250-SMTPUTF8\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES",
			    conf->hostname, (unsigned long long)max);
			break;
		case SMTP_MAIL:
			if (!helo) {
				say("503 5.5.1 Send HELO/EHLO first");
				break;
			}
			if (in_tx) {
				say("503 5.5.1 Nested MAIL command");
				break;
			}
			if (c->has_size && c->size > max) {
				say("552 5.3.4 Message size exceeds fixed limit of %llu bytes",
				    (unsigned long long)max);
				break;
			}
			submit_req_free(&req);
			req.has_from = true;
			req.from = tern_strdup(c->path.null_path ? "" : c->path.addr);
			req.envid = c->envid[0] ? tern_strdup(c->envid) : NULL;
			req.body = c->body == SMTP_BODY_8BITMIME || c->body == SMTP_BODY_7BIT
			               ? c->body
			               : 0;
			req.ret = c->ret;
			if (!req.from || (c->envid[0] && !req.envid)) {
				say("451 4.3.0 Out of memory");
				break;
			}
			in_tx = true;
			say("250 2.1.0 Ok");
			break;
		case SMTP_RCPT: {
			if (!in_tx) {
				say("503 5.5.1 Need MAIL command first");
				break;
			}
			if (req.n_rcpts >= conf->limits.max_recipients) {
				say("452 4.5.3 Too many recipients");
				break;
			}
			char **nr = realloc(req.rcpts, (req.n_rcpts + 1) * sizeof(*nr));
			if (nr)
				req.rcpts = nr;
			char *a = nr ? tern_strdup(c->path.has_domain ? c->path.addr : "postmaster")
			             : NULL;
			if (!a) {
				say("451 4.3.0 Out of memory");
				break;
			}
			req.rcpts[req.n_rcpts++] = a;
			/* One NOTIFY travels per message: the first recipient's. */
			if (!req.notify)
				req.notify = c->notify;
			say("250 2.1.5 Ok");
			break;
		}
		case SMTP_DATA: {
			if (!in_tx || req.n_rcpts == 0) {
				say("503 5.5.1 Need MAIL and RCPT first");
				break;
			}
			say("354 End data with <CR><LF>.<CR><LF>");
			struct smtp_data_parser dp;
			struct tbuf msg;
			tbuf_init(&msg, max);
			smtp_data_init(&dp);
			bool ended = false;
			for (;;) {
				size_t used = 0;
				if (io->pos < io->len &&
				    smtp_data_feed(&dp, io->buf + io->pos, io->len - io->pos, &used,
				                   &msg) == SMTP_DATA_END) {
					io->pos += used;
					ended = true;
					break;
				}
				io->pos += used;
				if (!io_fill(io))
					break;
			}
			if (!ended) {
				tbuf_free(&msg);
				goto out; /* input ended inside DATA: nothing was accepted */
			}
			if (dp.too_big) {
				say("552 5.3.4 Message size exceeds fixed limit of %llu bytes",
				    (unsigned long long)max);
			} else if (dp.bare_eol || dp.has_nul) {
				say("554 5.6.0 Message refused: it contains a bare CR, bare LF or "
				    "NUL; lines must end with CRLF");
			} else {
				struct tbuf r;
				const char *why = NULL;
				struct outcome oc;
				tbuf_init(&r, SUBMIT_HEAD_MAX + max + 64);
				req.data = msg.data ? msg.data : "";
				req.len = msg.len;
				if (submit_encode(&req, &r, &why) != TERN_OK) {
					say("554 5.5.4 %s",
					    why ? why : "cannot encode the request");
				} else {
					deliver_request(conf, &r, &oc);
					smtp_answer(&oc);
				}
				tbuf_free(&r);
			}
			tbuf_free(&msg);
			req.data = NULL;
			req.len = 0;
			submit_req_free(&req);
			in_tx = false;
			break;
		}
		case SMTP_RSET:
			submit_req_free(&req);
			in_tx = false;
			say("250 2.0.0 Ok");
			break;
		case SMTP_NOOP:
			say("250 2.0.0 Ok");
			break;
		case SMTP_QUIT:
			say("221 2.0.0 Bye");
			goto out;
		case SMTP_VRFY:
			say("252 2.0.0 Send some mail, I'll try my best");
			break;
		case SMTP_HELP:
			say("214 2.0.0 See the sendmail(1) page of tern: HELO EHLO MAIL RCPT DATA "
			    "RSET NOOP QUIT");
			break;
		default:
			say("502 5.5.1 Command not implemented in sendmail -bs");
			break;
		}
	}
out:
	(void)o;
	submit_req_free(&req);
	free(line);
	free(c);
	free(io);
	return status;
}

/* ------------------------------------------------------------ the command */

static void usage(void)
{
	fprintf(stderr,
	        "usage: %s [-t] [-i] [-f sender] [-F name] [-C config] [-bm|-bs|-bp] "
	        "[--] [recipient ...]\n"
	        "       (also: mailq, newaliases; see docs/config.md, \"sendmail\")\n",
	        prog);
}

/* Runs `tern queue SUB [-c FILE]` for mailq and -q. */
static int queue_cmd(const char *sub, const char *config)
{
	char a0[] = "queue", a2[] = "-c";
	char *sv = tern_strdup(sub), *cv = config ? tern_strdup(config) : NULL;
	char *args[5] = {a0, sv, config ? a2 : NULL, cv, NULL};
	if (!sv || (config && !cv)) {
		free(sv);
		free(cv);
		return EX_OSERR;
	}
	int rc = cmd_queue(config ? 4 : 2, args);
	free(sv);
	free(cv);
	return rc == 0 ? EX_OK : rc == 2 ? EX_USAGE : EX_UNAVAILABLE;
}

/* The config: -C, else $TERN_CONFIG, else /etc/tern/tern.conf if there is
 * one, else the embedded default (data under ./tern-data). */
static const char *config_path(const struct sendmail_opts *o)
{
	if (o->config)
		return o->config;
	const char *env = getenv("TERN_CONFIG");
	if (env && *env)
		return env;
	return access(DEFAULT_CONFIG, F_OK) == 0 ? DEFAULT_CONFIG : NULL;
}

int cmd_sendmail(int argc, char **argv)
{
	struct sendmail_opts o;
	const char *why, *why_arg;
	const char *base = argc > 0 && argv[0] ? strrchr(argv[0], '/') : NULL;
	prog = base ? base + 1 : (argc > 0 && argv[0] ? argv[0] : "sendmail");
	if (sendmail_parse_args(argc, argv, &o, &why, &why_arg) != 0) {
		fprintf(stderr, "%s: %s%s%s\n", prog, why, why_arg ? ": " : "",
		        why_arg ? why_arg : "");
		usage();
		return EX_USAGE;
	}
	const char *path = config_path(&o);
	switch (o.mode) {
	case SENDMAIL_NOTHING:
		return EX_OK;
	case SENDMAIL_NEWALIASES:
		printf("%s: tern reads aliases from its configuration (aliases { ... }); there is "
		       "no alias database to rebuild. After editing the config, send SIGHUP to "
		       "`tern serve` to reload it.\n",
		       prog);
		return EX_OK;
	case SENDMAIL_MAILQ:
		return queue_cmd("list", path);
	case SENDMAIL_FLUSH:
		return queue_cmd("flush", path);
	default:
		break;
	}
	char err[512];
	struct tern_config *conf = conf_load(path, err, sizeof(err));
	if (!conf) {
		fprintf(stderr, "%s: cannot read the configuration: %s\n", prog, err);
		return EX_CONFIG;
	}
	if (o.warning)
		fprintf(stderr, "%s: warning: %s\n", prog, o.warning);
	int status;
	if (o.mode == SENDMAIL_SMTP) {
		status = smtp_mode(conf, &o);
		conf_unref(conf);
		return status;
	}
	uint64_t max = conf->limits.max_message_size;
	struct tbuf msg, req;
	tbuf_init(&msg, max + 1);
	tbuf_init(&req, SUBMIT_HEAD_MAX + max + 64);
	status = read_message(o.ignore_dots, max, &msg);
	if (status == 0) {
		struct submit_req r = {
		    .has_from = o.from != NULL,
		    .from = (char *)o.from,
		    .name = o.name && *o.name ? (char *)o.name : NULL,
		    .extract = o.extract,
		    .body = o.body,
		    .ret = o.ret,
		    .notify = o.notify,
		    .envid = (char *)o.envid,
		    .rcpts = o.rcpts,
		    .n_rcpts = o.n_rcpts,
		    .data = msg.data ? msg.data : "",
		    .len = msg.len,
		};
		if (submit_encode(&r, &req, &why) != TERN_OK) {
			fprintf(stderr, "%s: %s\n", prog, why ? why : "out of memory");
			status = why ? EX_USAGE : EX_OSERR;
		} else {
			struct outcome oc;
			deliver_request(conf, &req, &oc);
			status = oc.code;
			if (status)
				fprintf(stderr, "%s: %s\n", prog, oc.text);
		}
	}
	tbuf_free(&msg);
	tbuf_free(&req);
	conf_unref(conf);
	return status;
}
