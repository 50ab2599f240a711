/*
 * control.c — the control socket DATA/control.sock, both ends.
 *
 * Protocol: the client sends one request line ("LIST", "SHOW ID",
 * "DELETE ID", "HOLD ID", "RELEASE ID", "FLUSH", "DAMAGED"); the daemon
 * answers with text lines and a last line "OK" or "ERR words". The daemon side runs on its own
 * thread with blocking I/O (requests are rare, small and local), so no event loop ever waits on it.
 * The socket is mode 0600: only the daemon's user (and root) may control the queue.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/id.h"
#include "core/log.h"
#include "core/timefmt.h"
#include "queue/queue.h"

#define REQUEST_MAX 256

struct control {
	int fd;
	int stop_pipe[2];
	pthread_t thread;
	struct spool *sp;
	struct scheduler *sched;
};

static int control_path(const char *data_dir, struct sockaddr_un *sun)
{
	memset(sun, 0, sizeof(*sun));
	sun->sun_family = AF_UNIX;
	int n = snprintf(sun->sun_path, sizeof(sun->sun_path), "%s/control.sock", data_dir);
	if (n < 0 || (size_t)n >= sizeof(sun->sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

int control_bind(const char *data_dir)
{
	struct sockaddr_un sun;
	if (control_path(data_dir, &sun) != 0)
		return -1;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	unlink(sun.sun_path); /* a stale socket from a previous run */
	mode_t old = umask(077);
	int rc = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (rc != 0 || listen(fd, 16) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* scheduled: the message's send_at is still ahead (a queued recipient
 * shows as "scheduled", not tried before it) */
static void put_rcpt(struct tbuf *b, const struct spool_rcpt *r, bool scheduled)
{
	char next[TERN_RFC3339_MAX] = "";
	tbuf_printf(b, "  to=<%s> state=%s attempts=%u local=%s", r->addr,
	            scheduled && r->state == RCPT_QUEUED ? "scheduled" : rcpt_state_name(r->state),
	            r->attempts, r->local ? "yes" : "no");
	if (r->state == RCPT_DEFERRED && r->next_try) {
		tern_rfc3339(r->next_try, next, sizeof(next));
		tbuf_printf(b, " next_try=%s", next);
	}
	if (r->orcpt)
		tbuf_printf(b, " orcpt=%s", r->orcpt);
	if (r->last_reply)
		tbuf_printf(b, " reply=\"%s\"", r->last_reply);
	tbuf_append_str(b, "\n");
}

struct list_ctx {
	struct tbuf *b;
	size_t n;
};

static bool list_one(const struct spool_msg *m, void *arg)
{
	struct list_ctx *lc = arg;
	char created[TERN_RFC3339_MAX];
	tern_rfc3339(m->created, created, sizeof(created));
	tbuf_printf(lc->b, "%s size=%llu created=%s from=<%s> rcpts=%zu\n", m->id,
	            (unsigned long long)m->size, created, m->sender, m->n_rcpts);
	bool sched = m->not_before > (int64_t)time(NULL);
	for (size_t i = 0; i < m->n_rcpts; i++)
		put_rcpt(lc->b, &m->rcpts[i], sched);
	lc->n++;
	return lc->b->len < lc->b->max - 65536; /* stop before the reply cap */
}

static void show_one(struct tbuf *b, const struct spool_msg *m)
{
	static const char *bodies[] = {"", "7BIT", "8BITMIME", "BINARYMIME"};
	static const char *rets[] = {"", "FULL", "HDRS"};
	char created[TERN_RFC3339_MAX];
	tern_rfc3339(m->created, created, sizeof(created));
	tbuf_printf(b, "id: %s\nfrom: <%s>\ncreated: %s\nsize: %llu\n", m->id, m->sender, created,
	            (unsigned long long)m->size);
	if (m->client)
		tbuf_printf(b, "client: %s\n", m->client);
	if (m->body < 4 && m->body)
		tbuf_printf(b, "body: %s\n", bodies[m->body]);
	if (m->ret < 3 && m->ret)
		tbuf_printf(b, "ret: %s\n", rets[m->ret]);
	if (m->envid)
		tbuf_printf(b, "envid: %s\n", m->envid);
	if (m->smtputf8)
		tbuf_append_str(b, "smtputf8: yes\n");
	bool sched = m->not_before > (int64_t)time(NULL);
	if (m->not_before) { /* the API's send_at */
		char nb[TERN_RFC3339_MAX];
		tern_rfc3339(m->not_before, nb, sizeof(nb));
		tbuf_printf(b, "send_at: %s%s\n", nb, sched ? " (scheduled)" : "");
	}
	for (size_t i = 0; i < m->n_rcpts; i++) {
		tbuf_append_str(b, "rcpt:");
		put_rcpt(b, &m->rcpts[i], sched);
	}
}

struct damage_ctx {
	struct tbuf *b; /* NULL: only count the files */
	size_t files;
	char last_file[128];
};

/* One line per damaged range of the spool (ranges come sorted by file). */
static bool damage_one(const struct spool_damage *d, void *arg)
{
	struct damage_ctx *dc = arg;
	if (strcmp(dc->last_file, d->file) != 0) {
		dc->files++;
		snprintf(dc->last_file, sizeof(dc->last_file), "%s", d->file);
	}
	if (!dc->b)
		return true;
	tbuf_printf(dc->b, "seg=%u file=%s offset=%llu length=%llu kind=%s", (unsigned)d->seg,
	            d->file, (unsigned long long)d->offset, (unsigned long long)d->length,
	            spool_damage_kind_name(d->kind));
	if (d->record)
		tbuf_printf(dc->b, " record=%s", d->record);
	if (d->id[0])
		tbuf_printf(dc->b, " id=%s", d->id);
	tbuf_append_str(dc->b, "\n");
	return dc->b->len < dc->b->max - 65536;
}

static void handle_request(struct control *c, const char *req, struct tbuf *b)
{
	const char *arg = strchr(req, ' ');
	size_t verb_len = arg ? (size_t)(arg - req) : strlen(req);
	if (arg)
		arg++;
	if (verb_len == 4 && strncmp(req, "LIST", 4) == 0) {
		struct list_ctx lc = {b, 0};
		spool_foreach(c->sp, list_one, &lc);
		if (lc.n == 0)
			tbuf_append_str(b, "queue is empty\n");
		else
			tbuf_printf(b, "%zu message%s in queue\n", lc.n, lc.n == 1 ? "" : "s");
		struct damage_ctx dc = {NULL, 0, ""};
		size_t nd = spool_foreach_damage(c->sp, damage_one, &dc);
		if (nd)
			tbuf_printf(
			    b,
			    "warning: the spool has %zu damaged range%s in %zu file%s; what they "
			    "held is not in this list (see tern queue damaged)\n",
			    nd, nd == 1 ? "" : "s", dc.files, dc.files == 1 ? "" : "s");
		tbuf_append_str(b, "OK\n");
		return;
	}
	if (verb_len == 7 && strncmp(req, "DAMAGED", 7) == 0) {
		struct damage_ctx dc = {b, 0, ""};
		size_t nd = spool_foreach_damage(c->sp, damage_one, &dc);
		if (nd == 0)
			tbuf_append_str(b, "no damaged spool segments\n");
		else
			tbuf_printf(b,
			            "%zu damaged range%s in %zu segment file%s (paths relative to "
			            "DATA/spool; the files are kept: inspect, then remove them)\n",
			            nd, nd == 1 ? "" : "s", dc.files, dc.files == 1 ? "" : "s");
		tbuf_append_str(b, "OK\n");
		return;
	}
	if (verb_len == 13 && strncmp(req, "DMARC-REPORTS", 13) == 0) {
		dmarc_control_request(arg, b); /* cli/dmarc.c */
		return;
	}
	if (verb_len == 5 && strncmp(req, "FLUSH", 5) == 0) {
		scheduler_requeue_all(c->sched, true);
		log_info("event=queue_flush source=control");
		tbuf_append_str(b,
		                "queue flushed: every waiting recipient will be tried now\nOK\n");
		return;
	}
	bool show = verb_len == 4 && strncmp(req, "SHOW", 4) == 0;
	bool del = verb_len == 6 && strncmp(req, "DELETE", 6) == 0;
	bool hold = verb_len == 4 && strncmp(req, "HOLD", 4) == 0;
	bool release = verb_len == 7 && strncmp(req, "RELEASE", 7) == 0;
	if (hold || release) {
		struct spool_msg *m =
		    arg && queue_id_valid(arg, strlen(arg)) ? spool_get(c->sp, arg) : NULL;
		if (!m) {
			tbuf_printf(b, "ERR no such message: %s\n", arg ? arg : "(no id given)");
			return;
		}
		size_t n = 0;
		for (size_t i = 0; i < m->n_rcpts; i++) {
			enum rcpt_state st = m->rcpts[i].state;
			bool change =
			    hold ? (st == RCPT_QUEUED || st == RCPT_DEFERRED) : st == RCPT_HELD;
			if (change &&
			    spool_update_rcpt(c->sp, arg, i, hold ? RCPT_HELD : RCPT_QUEUED, 0,
			                      NULL) == TERN_OK)
				n++;
		}
		if (release && n)
			scheduler_submit(c->sched, arg, NULL, 0);
		log_info("event=queue_%s id=%s source=control rcpts=%zu", hold ? "hold" : "release",
		         arg, n);
		tbuf_printf(b, "%s %s: %zu recipient%s\nOK\n", hold ? "held" : "released", arg, n,
		            n == 1 ? "" : "s");
		spool_msg_free(m);
		return;
	}
	if (show || del) {
		if (!arg || !queue_id_valid(arg, strlen(arg))) {
			tbuf_printf(b, "ERR no such message: %s\n", arg ? arg : "(no id given)");
			return;
		}
		struct spool_msg *m = spool_get(c->sp, arg);
		if (!m) {
			tbuf_printf(b, "ERR no such message: %s\n", arg);
			return;
		}
		if (show) {
			show_one(b, m);
			tbuf_append_str(b, "OK\n");
		} else if (spool_remove(c->sp, arg) == TERN_OK) {
			log_info("event=queue_delete id=%s source=control rcpts=%zu", arg,
			         m->n_rcpts);
			tbuf_printf(b, "deleted %s\nOK\n", arg);
		} else {
			tbuf_printf(b, "ERR could not delete %s\n", arg);
		}
		spool_msg_free(m);
		return;
	}
	tbuf_append_str(b, "ERR unknown request (LIST, SHOW ID, DELETE ID, HOLD ID, RELEASE ID, "
	                   "FLUSH, DAMAGED)\n");
}

static void serve_client(struct control *c, int fd)
{
	char req[REQUEST_MAX + 1];
	size_t n = 0;
	/* The client writes one short line; a bounded wait keeps a silent client
	 * from holding the control thread. */
	struct pollfd pfd = {fd, POLLIN, 0};
	while (n < REQUEST_MAX) {
		if (poll(&pfd, 1, 2000) <= 0)
			return;
		ssize_t r = read(fd, req + n, REQUEST_MAX - n);
		if (r <= 0)
			return;
		n += (size_t)r;
		if (memchr(req, '\n', n))
			break;
	}
	req[n] = '\0';
	char *nl = strchr(req, '\n');
	if (!nl)
		return;
	*nl = '\0';
	if (nl > req && nl[-1] == '\r')
		nl[-1] = '\0';
	struct tbuf b;
	tbuf_init(&b, 64 * 1024 * 1024);
	handle_request(c, req, &b);
	size_t off = 0;
	while (off < b.len) {
		ssize_t w = write(fd, b.data + off, b.len - off);
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	tbuf_free(&b);
}

static void *control_main(void *arg)
{
	struct control *c = arg;
	struct pollfd pfd[2] = {{c->fd, POLLIN, 0}, {c->stop_pipe[0], POLLIN, 0}};
	for (;;) {
		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd[1].revents)
			break;
		if (pfd[0].revents & POLLIN) {
			int fd = accept4(c->fd, NULL, NULL, SOCK_CLOEXEC);
			if (fd < 0)
				continue;
			serve_client(c, fd);
			close(fd);
		}
	}
	return NULL;
}

struct control *control_start(int listen_fd, struct spool *sp, struct scheduler *sched)
{
	struct control *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->fd = listen_fd;
	c->sp = sp;
	c->sched = sched;
	if (pipe2(c->stop_pipe, O_CLOEXEC) != 0) {
		free(c);
		return NULL;
	}
	if (pthread_create(&c->thread, NULL, control_main, c) != 0) {
		close(c->stop_pipe[0]);
		close(c->stop_pipe[1]);
		free(c);
		return NULL;
	}
	return c;
}

void control_stop(struct control *c)
{
	ssize_t w = write(c->stop_pipe[1], "x", 1);
	(void)w;
	pthread_join(c->thread, NULL);
	close(c->stop_pipe[0]);
	close(c->stop_pipe[1]);
	close(c->fd);
	free(c);
}

/* ---------------------------------------------------------- client side */

static const struct cli_help queue_help = {
    "tern queue",
    "tern queue list|flush|damaged [-c FILE]\n"
    "tern queue show|delete|hold|release ID [-c FILE]",
    "Inspects and controls the queue of a running server through its control\n"
    "socket (DATA/control.sock), as postqueue(1) and postsuper(1) do.\n"
    "  list          every queued message: id, age, size, sender, recipients\n"
    "  show ID       one message's envelope and each recipient's state\n"
    "  delete ID     remove a message (no bounce)\n"
    "  hold ID       keep a message from delivery until released\n"
    "  release ID    let a held message go\n"
    "  flush         retry every deferred message now\n"
    "  damaged       spool records that could not be read, kept aside\n"
    "  -c, --config FILE   the configuration file (to find the data dir)\n"};

int cmd_queue(int argc, char **argv)
{
	const char *path;
	if (cli_help_asked(argc, argv))
		return cli_help(&queue_help);
	if (cli_take_config(&argc, argv, &path) != 0 || argc < 2)
		return cli_usage(&queue_help, NULL);
	const char *sub = argv[1];
	char req[REQUEST_MAX];
	if (strcmp(sub, "list") == 0 && argc == 2)
		snprintf(req, sizeof(req), "LIST\n");
	else if (strcmp(sub, "flush") == 0 && argc == 2)
		snprintf(req, sizeof(req), "FLUSH\n");
	else if (strcmp(sub, "damaged") == 0 && argc == 2)
		snprintf(req, sizeof(req), "DAMAGED\n");
	else if (strcmp(sub, "show") == 0 && argc == 3 && strlen(argv[2]) < 64)
		snprintf(req, sizeof(req), "SHOW %s\n", argv[2]);
	else if (strcmp(sub, "delete") == 0 && argc == 3 && strlen(argv[2]) < 64)
		snprintf(req, sizeof(req), "DELETE %s\n", argv[2]);
	else if (strcmp(sub, "hold") == 0 && argc == 3 && strlen(argv[2]) < 64)
		snprintf(req, sizeof(req), "HOLD %s\n", argv[2]);
	else if (strcmp(sub, "release") == 0 && argc == 3 && strlen(argv[2]) < 64)
		snprintf(req, sizeof(req), "RELEASE %s\n", argv[2]);
	else
		return cli_usage(&queue_help, NULL);

	char err[512];
	struct tern_config *conf = conf_load(path, err, sizeof(err));
	if (!conf) {
		fprintf(stderr, "tern: %s\n", err);
		return 1;
	}
	struct sockaddr_un sun;
	int rc = control_path(conf->data_dir, &sun);
	int fd = rc == 0 ? socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0) : -1;
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		fprintf(stderr,
		        "tern: cannot reach the server at %s/control.sock: %s (is tern "
		        "serve running with this config?)\n",
		        conf->data_dir, strerror(errno));
		if (fd >= 0)
			close(fd);
		conf_unref(conf);
		return 1;
	}
	conf_unref(conf);
	ssize_t w = write(fd, req, strlen(req));
	if (w != (ssize_t)strlen(req)) {
		fprintf(stderr, "tern: control socket write failed\n");
		close(fd);
		return 1;
	}
	struct tbuf b;
	tbuf_init(&b, 256 * 1024 * 1024);
	char chunk[8192];
	ssize_t r;
	while ((r = read(fd, chunk, sizeof(chunk))) > 0)
		if (tbuf_append(&b, chunk, (size_t)r) != TERN_OK)
			break;
	close(fd);
	/* Everything before the last line is output; the last line is the status. */
	int status = 1;
	if (b.len > 0 && b.data[b.len - 1] == '\n') {
		b.data[--b.len] = '\0';
		char *last = strrchr(b.data, '\n');
		char *status_line = last ? last + 1 : b.data;
		size_t body_len = last ? (size_t)(last - b.data) + 1 : 0;
		fwrite(b.data, 1, body_len, stdout);
		if (strcmp(status_line, "OK") == 0) {
			status = 0;
		} else if (strncmp(status_line, "ERR ", 4) == 0) {
			fprintf(stderr, "tern: %s\n", status_line + 4);
		} else {
			fprintf(stderr, "tern: unexpected reply from the server\n");
		}
	} else {
		fprintf(stderr, "tern: the server closed the control connection early\n");
	}
	tbuf_free(&b);
	return status;
}
