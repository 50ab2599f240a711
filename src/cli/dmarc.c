/*
 * dmarc.c — DMARC aggregate reports at the program's level: the daemon's
 * part (the store of evaluations, the reporter thread and how its reports
 * enter the spool, the control socket's DMARC-REPORTS request) and the
 * command `tern dmarc send-reports|report`.
 *
 * Owns: struct dmarc_daemon; the command's output formats.
 *
 * Must never: block a worker (the reporter and the control thread are
 * threads of their own), or hand a report to the spool with a recipient
 * that is no address.
 */
#include <errno.h>
#include <jansson.h>
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
#include "cli/submit.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/id.h"
#include "core/log.h"
#include "core/runtime.h"
#include "policy/dmarc_report.h"
#include "queue/queue.h"
#include "smtp/sign.h"
#include "smtp/smtp.h"
#include "store/dmarc_store.h"

/* ------------------------------------------------------------- daemon */

struct dmarc_daemon {
	const struct tern_config *conf;
	struct spool *sp;
	struct scheduler *sched;
	struct dmarc_store *store;
	struct dmarc_reporter *reporter;
};

/*
 * RFC 9990 §3.5.2: report mail must itself pass DMARC, so it is DKIM-signed
 * like local submissions (smtp/sign.h) with the keys for reports.from's
 * domain, when there are any. The signatures go on top of msg into out.
 * TERN_OK (signed, or nothing to sign with: out holds msg as it is), or an
 * error when a key that should sign could not (the report is not sent
 * unsigned; the rows wait for the next round).
 */
static int sign_report(const char *id, const char *msg, size_t len, struct tbuf *out)
{
	struct tern_runtime *rt = runtime_acquire();
	struct smtp_sign_result r;
	memset(&r, 0, sizeof(r));
	if (rt && rt->dkim_signer)
		smtp_sign_run(rt->dkim_signer, id, msg, len, &r);
	runtime_release(rt);
	int rc = r.status == SMTP_SIGN_ERROR ? TERN_EIO : TERN_OK;
	if (rc == TERN_OK && r.status == SMTP_SIGN_OK)
		rc = tbuf_append(out, r.fields, r.len);
	if (rc == TERN_OK)
		rc = tbuf_append(out, msg, len);
	smtp_sign_result_clear(&r);
	return rc;
}

/* The reporter's way into the queue: signed, spooled (on stable storage)
 * as our own mail from reports.from, then handed to the scheduler. */
static int spool_report(void *arg, const char *from, const char *to, const char *msg0, size_t len0)
{
	struct dmarc_daemon *d = arg;
	struct smtp_path path;
	if (!smtp_parse_mailbox(to, strlen(to), &path))
		return TERN_EINVAL;
	char id[QUEUE_ID_LEN + 1];
	queue_id_new(id);
	struct tbuf signed_msg;
	tbuf_init(&signed_msg, len0 + 64 * 1024);
	int sr = sign_report(id, msg0, len0, &signed_msg);
	if (sr != TERN_OK) {
		tbuf_free(&signed_msg);
		return sr;
	}
	const char *msg = signed_msg.data;
	size_t len = signed_msg.len;
	struct spool_rcpt rc;
	memset(&rc, 0, sizeof(rc));
	rc.addr = (char *)to;
	rc.local = conf_is_local_domain(d->conf, path.domain, strlen(path.domain));
	struct spool_msg env = {0};
	memcpy(env.id, id, sizeof(env.id));
	env.sender = (char *)from;
	env.created = (int64_t)time(NULL);
	env.client = "addr=local proto=dmarc-report";
	env.trusted_client = true;
	env.size = len;
	env.rcpts = &rc;
	env.n_rcpts = 1;
	int r = spool_put_wait(d->sp, &env, msg, len);
	tbuf_free(&signed_msg);
	if (r != TERN_OK)
		return r;
	scheduler_submit(d->sched, env.id, NULL, 0);
	log_info("event=queued id=%s from=<%s> rcpts=1 size=%zu source=dmarc-report", env.id, from,
	         len);
	return TERN_OK;
}

struct dmarc_daemon *dmarc_daemon_start(const struct tern_config *conf, struct spool *sp,
                                        struct scheduler *sched)
{
	if (!conf->dmarc.reports.from)
		return NULL; /* no reports: nothing recorded either */
	struct dmarc_daemon *d = calloc(1, sizeof(*d));
	char err[256];
	if (!d)
		return NULL;
	d->conf = conf;
	d->sp = sp;
	d->sched = sched;
	if (!(d->store = dmarc_store_open(conf->data_dir, err, sizeof(err)))) {
		log_error("event=dmarc_store_failed reason=\"%s\"", err);
		free(d);
		return NULL;
	}
	dmarc_store_set_default(d->store);
	d->reporter = dmarc_reporter_start(conf, spool_report, d);
	if (!d->reporter)
		log_error("event=dmarc_reporter_failed reason=\"cannot start its thread\"");
	return d;
}

void dmarc_daemon_stop(struct dmarc_daemon *d)
{
	if (!d)
		return;
	dmarc_reporter_stop(d->reporter);
	d->reporter = NULL;
}

void dmarc_daemon_free(struct dmarc_daemon *d)
{
	if (!d)
		return;
	dmarc_daemon_stop(d);
	dmarc_store_set_default(NULL);
	dmarc_store_close(d->store);
	free(d);
}

void dmarc_control_request(const char *arg, struct tbuf *b)
{
	struct dmarc_run_stats st;
	if (dmarc_reports_kick(&st) != TERN_OK) {
		tbuf_append_str(b, "ERR DMARC reports are off (no dmarc.reports.from)\n");
		return;
	}
	tbuf_printf(b, "dmarc reports: %u domain%s, %u sent, %u skipped, %u failed\nOK\n",
	            st.domains, st.domains == 1 ? "" : "s", st.sent, st.skipped, st.failed);
}

/* --------------------------------------------------------- the command */

static const struct cli_help dmarc_help = {
    "tern dmarc",
    "tern dmarc send-reports [-c FILE]\n"
    "tern dmarc report [-c FILE] [--domain DOMAIN] [--since DATE] [--json]",
    "DMARC aggregate reports (RFC 9990).\n"
    "  send-reports  send the aggregate reports now, to each policy domain's rua\n"
    "                (what dmarc.reports.interval does): through the running server,\n"
    "                or, while it is down, into the maildrop (they leave when it\n"
    "                starts); --now is accepted and means the same\n"
    "  report        the rows of the aggregate reports received at\n"
    "                dmarc.reports.inbox: source IP, count, header_from, DKIM, SPF,\n"
    "                disposition, reporter\n"
    "  --domain DOMAIN   only reports about this policy domain\n"
    "  --since DATE      only reports whose range ends at or after DATE\n"
    "                    (YYYY-MM-DD, UTC, or seconds since 1970)\n"
    "  --json            one JSON array of objects instead of the table\n"
    "  -c, --config FILE the configuration file (to find the data dir)\n"};

static int control_call(const struct tern_config *conf, const char *req,
                        int (*down)(const struct tern_config *conf))
{
	struct sockaddr_un sun;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	int n = snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/control.sock", conf->data_dir);
	int fd = n > 0 && (size_t)n < sizeof(sun.sun_path)
	             ? socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)
	             : -1;
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		int e = fd < 0 && n > 0 && (size_t)n >= sizeof(sun.sun_path) ? ENAMETOOLONG : errno;
		if (fd >= 0)
			close(fd);
		if ((e == ENOENT || e == ECONNREFUSED) && down)
			return down(conf); /* no server listens */
		fprintf(stderr,
		        "tern: cannot reach the server at %s/control.sock: %s (is tern serve "
		        "running with this config?)\n",
		        conf->data_dir, strerror(e));
		return 1;
	}
	if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
		close(fd);
		fprintf(stderr, "tern: control socket write failed\n");
		return 1;
	}
	struct tbuf b;
	tbuf_init(&b, 1 << 20);
	char chunk[4096];
	ssize_t r;
	while ((r = read(fd, chunk, sizeof(chunk))) > 0)
		if (tbuf_append(&b, chunk, (size_t)r) != TERN_OK)
			break;
	close(fd);
	int status = 1;
	if (b.len > 0 && b.data[b.len - 1] == '\n') {
		b.data[--b.len] = '\0';
		char *last = strrchr(b.data, '\n');
		char *st = last ? last + 1 : b.data;
		if (last)
			fwrite(b.data, 1, (size_t)(last - b.data) + 1, stdout);
		if (strcmp(st, "OK") == 0)
			status = 0;
		else
			fprintf(stderr, "tern: %s\n", strncmp(st, "ERR ", 4) == 0 ? st + 4 : st);
	} else {
		fprintf(stderr, "tern: the server closed the control connection early\n");
	}
	tbuf_free(&b);
	return status;
}

static bool parse_since(const char *s, int64_t *out)
{
	int y, m, d;
	char tail;
	if (sscanf(s, "%4d-%2d-%2d%c", &y, &m, &d, &tail) == 3 && m >= 1 && m <= 12 && d >= 1 &&
	    d <= 31) {
		struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d};
		*out = (int64_t)timegm(&tm);
		return true;
	}
	char *e = NULL;
	errno = 0;
	long long v = strtoll(s, &e, 10);
	if (errno || !e || *e || e == s || v < 0)
		return false;
	*out = v;
	return true;
}

static const char *col(sqlite3_stmt *st, int i)
{
	const unsigned char *s = sqlite3_column_text(st, i);
	return s ? (const char *)s : "";
}

/* A value for the table: what a reporter wrote may hold anything; control
 * bytes become '?' so that a report cannot drive the terminal. */
static void cell(char *out, size_t outlen, const char *s, size_t width)
{
	size_t i = 0;
	for (; s[i] && i + 1 < outlen && i < width; i++)
		out[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
	out[i] = '\0';
}

/* Run as root, SQLite may leave its side files (-wal, -shm) behind as
 * root's, which the daemon could then not open: give them to the owner of
 * the database, the daemon's user. */
static void give_back(const char *path, const struct stat *sb)
{
	for (int i = 0; geteuid() == 0 && i < 2; i++) {
		char side[4300];
		snprintf(side, sizeof(side), "%s%s", path, i ? "-shm" : "-wal");
		if (chown(side, sb->st_uid, sb->st_gid) != 0 && errno != ENOENT)
			fprintf(stderr, "tern: warning: cannot give %s to uid %u: %s\n", side,
			        (unsigned)sb->st_uid, strerror(errno));
	}
}

static int show_report(const struct tern_config *conf, const char *domain, int64_t since, bool json)
{
	char err[4400], path[4200];
	snprintf(path, sizeof(path), "%s/dmarc.db", conf->data_dir);
	if (access(path, F_OK) != 0 && errno == ENOENT) {
		/* nothing received yet; never create the daemon's file as another
		 * user (this command may run as root) */
		printf(json ? "[]\n" : "(no aggregate reports received)\n");
		return 0;
	}
	struct stat sb;
	sqlite3 *db = NULL;
	if (stat(path, &sb) != 0)
		snprintf(err, sizeof(err), "cannot read %s: %s", path, strerror(errno));
	else
		db = dmarc_db_open(conf->data_dir, false, err, sizeof(err));
	if (!db) {
		fprintf(stderr, "tern: %s\n", err);
		return 1;
	}
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db,
	                       "SELECT source_ip, count, header_from, dkim, spf, disposition, "
	                       "reporter, report_id, policy_domain, begin, end, envelope_from, "
	                       "dkim_auth, spf_auth FROM received WHERE (?1 IS NULL OR "
	                       "policy_domain = ?1) AND end >= ?2 ORDER BY begin, reporter, id",
	                       -1, &st, NULL) != SQLITE_OK) {
		fprintf(stderr, "tern: %s\n", sqlite3_errmsg(db));
		sqlite3_close(db);
		return 1;
	}
	if (domain)
		sqlite3_bind_text(st, 1, domain, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, since);
	json_t *arr = json ? json_array() : NULL;
	if (!json)
		printf("%-39s %7s %-28s %-9s %-9s %-11s %s\n", "SOURCE IP", "COUNT", "HEADER_FROM",
		       "DKIM", "SPF", "DISPOSITION", "REPORTER");
	size_t n = 0;
	while (sqlite3_step(st) == SQLITE_ROW) {
		n++;
		if (json) {
			json_array_append_new(
			    arr,
			    json_pack(
			        "{s:s, s:I, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I, "
			        "s:s, s:s, s:s}",
			        "source_ip", col(st, 0), "count",
			        (json_int_t)sqlite3_column_int64(st, 1), "header_from", col(st, 2),
			        "dkim", col(st, 3), "spf", col(st, 4), "disposition", col(st, 5),
			        "reporter", col(st, 6), "report_id", col(st, 7), "policy_domain",
			        col(st, 8), "begin", (json_int_t)sqlite3_column_int64(st, 9), "end",
			        (json_int_t)sqlite3_column_int64(st, 10), "envelope_from",
			        col(st, 11), "dkim_auth", col(st, 12), "spf_auth", col(st, 13)));
			continue;
		}
		char c[7][128];
		cell(c[0], sizeof(c[0]), col(st, 0), 39);
		cell(c[1], sizeof(c[1]), col(st, 2), 40);
		cell(c[2], sizeof(c[2]), col(st, 3), 9);
		cell(c[3], sizeof(c[3]), col(st, 4), 9);
		cell(c[4], sizeof(c[4]), col(st, 5), 11);
		cell(c[5], sizeof(c[5]), col(st, 6), 60);
		printf("%-39s %7lld %-28s %-9s %-9s %-11s %s\n", c[0],
		       (long long)sqlite3_column_int64(st, 1), c[1], c[2], c[3], c[4], c[5]);
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	give_back(path, &sb);
	if (json) {
		char *s = json_dumps(arr, JSON_INDENT(1) | JSON_ENSURE_ASCII);
		if (s)
			printf("%s\n", s);
		free(s);
		json_decref(arr);
	} else if (n == 0) {
		printf("(no aggregate reports received%s)\n", domain || since ? " that match" : "");
	}
	return 0;
}

/* The daemon is down: the reports go to the maildrop, from reports.from,
 * and leave with the daemon's next start. */
static int maildrop_report(void *arg, const char *from, const char *to, const char *msg, size_t len)
{
	const struct tern_config *conf = arg;
	char *rcpt = (char *)to, name[4200];
	struct submit_req req = {
	    .has_from = true,
	    .from = (char *)from,
	    .rcpts = &rcpt,
	    .n_rcpts = 1,
	    .data = msg,
	    .len = len,
	};
	struct tbuf b;
	const char *why = NULL;
	tbuf_init(&b, len + 64 * 1024);
	int rc = submit_encode(&req, &b, &why);
	int e = rc == TERN_OK ? maildrop_write(conf->data_dir, &b, name, sizeof(name)) : 0;
	tbuf_free(&b);
	if (rc != TERN_OK || e != 0) {
		fprintf(stderr, "tern: cannot write to %s/maildrop: %s\n", conf->data_dir,
		        rc != TERN_OK ? (why ? why : tern_strerror(rc)) : strerror(e));
		return rc != TERN_OK ? rc : TERN_EIO;
	}
	return TERN_OK;
}

/* send-reports without a running daemon: the same round, here. */
static int send_direct(const struct tern_config *conf)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/dmarc.db", conf->data_dir);
	if (access(path, F_OK) != 0) {
		printf(
		    "dmarc reports: 0 domains, 0 sent, 0 skipped, 0 failed (nothing recorded)\n");
		return 0;
	}
	struct stat sb;
	if (stat(path, &sb) != 0) {
		fprintf(stderr, "tern: cannot read %s: %s\n", path, strerror(errno));
		return 1;
	}
	struct dmarc_run_stats st;
	int64_t now = (int64_t)time(NULL);
	int rc = dmarc_reports_run(conf, now, now, maildrop_report, (void *)conf, &st);
	give_back(path, &sb);
	if (rc != TERN_OK) {
		fprintf(stderr, "tern: cannot read %s\n", path);
		return 1;
	}
	printf("dmarc reports: %u domain%s, %u sent, %u skipped, %u failed (in the maildrop: "
	       "they leave when the server starts)\n",
	       st.domains, st.domains == 1 ? "" : "s", st.sent, st.skipped, st.failed);
	return st.failed ? 1 : 0;
}

int cmd_dmarc(int argc, char **argv)
{
	const char *path;
	if (cli_help_asked(argc, argv))
		return cli_help(&dmarc_help);
	if (cli_take_config(&argc, argv, &path) != 0 || argc < 2)
		return cli_usage(&dmarc_help, NULL);
	const char *sub = argv[1], *domain = NULL;
	int64_t since = 0;
	bool json = false;
	for (int i = 2; i < argc; i++) {
		if (strcmp(sub, "send-reports") == 0 && strcmp(argv[i], "--now") == 0)
			continue;
		if (strcmp(sub, "report") != 0)
			return cli_usage(&dmarc_help, "unexpected argument: %s", argv[i]);
		if (strcmp(argv[i], "--json") == 0)
			json = true;
		else if (strcmp(argv[i], "--domain") == 0 && i + 1 < argc)
			domain = argv[++i];
		else if (strcmp(argv[i], "--since") == 0 && i + 1 < argc) {
			if (!parse_since(argv[++i], &since))
				return cli_usage(&dmarc_help, "--since: not a date: %s", argv[i]);
		} else
			return cli_usage(&dmarc_help, "unexpected argument: %s", argv[i]);
	}
	if (strcmp(sub, "send-reports") != 0 && strcmp(sub, "report") != 0)
		return cli_usage(&dmarc_help, "unknown subcommand: %s", sub);
	char err[512];
	struct tern_config *conf = conf_load(path, err, sizeof(err));
	if (!conf) {
		fprintf(stderr, "tern: %s\n", err);
		return 1;
	}
	int rc;
	if (strcmp(sub, "send-reports") == 0) {
		if (!conf->dmarc.reports.from) {
			fprintf(stderr, "tern: DMARC reports are off (set dmarc.reports.from)\n");
			rc = 1;
		} else {
			rc = control_call(conf, "DMARC-REPORTS\n", send_direct);
		}
	} else {
		char dom[DMARC_DOMAIN_MAX + 1];
		if (domain && !dmarc_domain_normalize(domain, strlen(domain), dom)) {
			conf_unref(conf);
			return cli_usage(&dmarc_help, "--domain: not a domain name: %s", domain);
		}
		rc = show_report(conf, domain ? dom : NULL, since, json);
	}
	conf_unref(conf);
	return rc;
}
