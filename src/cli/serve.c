/*
 * serve.c — `tern serve` and `tern check-config`: the daemon's life.
 *
 * Start-up order matters for safety (DESIGN §2): load and check the config,
 * create the data directory, bind every listener and the control socket,
 * and only then drop to the configured user — before the first byte of
 * network input is read. Signals are taken synchronously by the main
 * thread (sigwait): SIGHUP reloads config and users, SIGTERM/SIGINT stop
 * accepting, let transactions in flight finish for limits.shutdown_grace
 * seconds, then close the spool cleanly and exit 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "auth/auth.h"
#include "cli/cli.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/runtime.h"
#include "deliver/deliver.h"
#include "queue/queue.h"
#include "smtp/smtp.h"

#define MAX_WORKERS 64
#define MAX_FDS 256

static uint64_t elapsed_ms(const struct timespec *since)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	int64_t ms = (int64_t)(now.tv_sec - since->tv_sec) * 1000 +
		     (now.tv_nsec - since->tv_nsec) / 1000000;
	return ms > 0 ? (uint64_t)ms : 0;
}

int cli_take_config(int *argc, char **argv, const char **path)
{
	*path = NULL;
	for (int i = 1; i < *argc; i++) {
		if (strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) {
			if (i + 1 >= *argc)
				return -1;
			*path = argv[i + 1];
			for (int j = i; j + 2 <= *argc; j++)
				argv[j] = argv[j + 2];
			*argc -= 2;
			return 0;
		}
	}
	return 0;
}

int cmd_check_config(int argc, char **argv)
{
	const char *path;
	if (cli_take_config(&argc, argv, &path) != 0 || argc != 1) {
		fprintf(stderr, "usage: tern check-config [-c FILE]\n");
		return 2;
	}
	char err[512];
	struct tern_config *c = conf_load(path, err, sizeof(err));
	if (!c) {
		fprintf(stderr, "tern: %s\n", err);
		return 1;
	}
	conf_report_warnings(c, stderr);
	conf_print(c, stdout);
	conf_unref(c);
	return 0;
}

/* Loads the config; in capture mode the command line's overrides are
 * applied on every load, so a SIGHUP keeps them. */
static struct tern_config *config_load(const char *path, const struct capture_opts *cap,
				       char *err, size_t errlen)
{
	struct tern_config *conf = conf_load(path, err, errlen);
	if (!conf || !cap)
		return conf;
	if (conf_apply_capture(conf, cap->smtp, cap->data_dir) != TERN_OK) {
		snprintf(err, errlen, "--smtp: '%s' is not an IP:PORT address", cap->smtp);
		conf_unref(conf);
		return NULL;
	}
	return conf;
}

static struct tern_runtime *runtime_load(const char *path, const struct capture_opts *cap,
					 char *err, size_t errlen)
{
	struct tern_config *conf = config_load(path, cap, err, errlen);
	if (!conf)
		return NULL;
	struct user_db *users = NULL;
	if (users_load(conf->users_file, &users, err, errlen) != TERN_OK) {
		conf_unref(conf);
		return NULL;
	}
	struct tern_runtime *rt = calloc(1, sizeof(*rt));
	if (!rt) {
		users_free(users);
		conf_unref(conf);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	atomic_init(&rt->refs, 1);
	rt->conf = conf;
	rt->users = users;
	rt->free_users = users_free;
	return rt;
}

/*
 * Binds a listening socket. With reuseport, several sockets (one per
 * worker) share the port and the kernel spreads connections over them; the
 * caller first binds one probe without it (probe_listener), because
 * SO_REUSEPORT would otherwise let a second tern silently share a port that
 * is already taken.
 */
static int bind_listener_opt(const char *address, bool reuseport, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	unsigned len = 0;
	if (!conf_parse_address(address, &ss, &len)) {
		snprintf(err, errlen, "bad listen address '%s'", address);
		return -1;
	}
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (reuseport)
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 4096) != 0)
		goto fail;
	return fd;
fail:
	snprintf(err, errlen, "cannot listen on %s: %s", address, strerror(errno));
	if (fd >= 0)
		close(fd);
	return -1;
}

/* Fails if someone already listens on address (see bind_listener_opt). */
static int probe_listener(const char *address, char *err, size_t errlen)
{
	int fd = bind_listener_opt(address, false, err, errlen);
	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

static int bind_listener(const char *address, char *err, size_t errlen)
{
	return bind_listener_opt(address, true, err, errlen);
}

/* chown -R of the data dir to the account we drop to (only as root). */
static void chown_tree(const char *dir, uid_t uid, gid_t gid, int depth)
{
	if (depth > 8)
		return;
	if (lchown(dir, uid, gid) != 0)
		log_warn("event=chown_failed path=%s error=\"%s\"", dir, strerror(errno));
	char cmd_path[4096];
	/* Only the top levels we create are ours to fix; Maildirs and the spool
	 * are created by the daemon after the drop, so two levels suffice. */
	if (depth >= 1)
		return;
	static const char *subs[] = {"spool", "mail", "users", "control.sock"};
	for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
		snprintf(cmd_path, sizeof(cmd_path), "%s/%s", dir, subs[i]);
		struct stat st;
		if (lstat(cmd_path, &st) == 0)
			chown_tree(cmd_path, uid, gid, depth + 1);
	}
}

/* The server-side TLS context, loaded while still root (keys are often
 * readable by root only). NULL with a message in err on failure. */
static SSL_CTX *tls_server_ctx(const struct conf_tls_server *t, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx)
		goto fail;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	if (SSL_CTX_use_certificate_chain_file(ctx, t->cert_file) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, t->key_file, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1)
		goto fail;
	return ctx;
fail: {
	char e[256] = "unknown error";
	unsigned long code = ERR_get_error();
	if (code)
		ERR_error_string_n(code, e, sizeof(e));
	snprintf(err, errlen, "tls: cannot load %s / %s: %s", t->cert_file, t->key_file, e);
	ERR_clear_error();
	if (ctx)
		SSL_CTX_free(ctx);
	return NULL;
}
}

static int drop_privileges(const char *user, const char *data_dir, char *err, size_t errlen)
{
	if (geteuid() != 0)
		return 0;
	if (!user || !*user) {
		log_warn("event=privileges user=root reason=\"no 'user' configured; running as "
			 "root\"");
		return 0;
	}
	struct passwd *pw = getpwnam(user);
	if (!pw) {
		snprintf(err, errlen, "user '%s' (config key 'user') does not exist", user);
		return -1;
	}
	chown_tree(data_dir, pw->pw_uid, pw->pw_gid, 0);
	if (setgroups(0, NULL) != 0 || setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) != 0 ||
	    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) != 0) {
		snprintf(err, errlen, "cannot drop privileges to '%s': %s", user, strerror(errno));
		return -1;
	}
	if (setuid(0) == 0 || geteuid() != pw->pw_uid) {
		snprintf(err, errlen, "privilege drop to '%s' did not stick", user);
		return -1;
	}
	log_info("event=privileges user=%s uid=%u gid=%u", user, (unsigned)pw->pw_uid,
		 (unsigned)pw->pw_gid);
	return 0;
}

int cmd_serve(int argc, char **argv)
{
	const char *path;
	if (cli_take_config(&argc, argv, &path) != 0 || argc != 1) {
		fprintf(stderr, "usage: tern serve [-c FILE]\n");
		return 2;
	}
	return daemon_run(path, NULL);
}

int daemon_run(const char *path, const struct capture_opts *cap)
{
	char err[512];
	int status = 1;
	struct tern_runtime *rt = NULL;
	struct worker *workers[MAX_WORKERS] = {0};
	unsigned n_workers = 0;
	int fds[MAX_FDS];
	const char *fd_profiles[MAX_FDS];
	size_t n_fds = 0;
	int control_fd = -1;
	struct spool *sp = NULL;
	struct scheduler *sched = NULL;
	struct smtp_server *srv = NULL;
	struct remote *remote = NULL;
	struct control *ctl = NULL;
	struct submit *sub = NULL;
	struct capture_mode *capm = NULL;
	SSL_CTX *tls = NULL;
	int http_fd = -1;

	/* Every thread inherits this mask; only sigwait below takes the signals. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct tern_config *conf = config_load(path, cap, err, sizeof(err));
	if (!conf) {
		fprintf(stderr, "tern: %s\n", err);
		return 1;
	}
	enum log_level lvl;
	if (log_level_parse(conf->log_level, &lvl) == 0)
		log_set_level(lvl);
	log_info("event=starting version=%s config=%s hostname=%s data_dir=%s", TERN_VERSION,
		 conf->source, conf->hostname, conf->data_dir);
	conf_report_warnings(conf, NULL);

	if (tern_mkdir_p(conf->data_dir, 0750, false, NULL) != TERN_OK) {
		log_error("event=fatal reason=\"cannot create data_dir %s: %s\"", conf->data_dir,
			  strerror(errno));
		goto out;
	}
	n_workers = conf->workers ? conf->workers : (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
	if (n_workers < 1)
		n_workers = 1;
	if (n_workers > MAX_WORKERS)
		n_workers = MAX_WORKERS;

	for (size_t i = 0; i < conf->n_listeners; i++) {
		if (probe_listener(conf->listeners[i].address, err, sizeof(err)) != 0) {
			log_error("event=fatal listener=%s reason=\"%s\"", conf->listeners[i].name,
				  err);
			goto out;
		}
		for (unsigned w = 0; w < n_workers; w++) {
			if (n_fds == MAX_FDS) {
				log_error("event=fatal reason=\"too many listeners\"");
				goto out;
			}
			int fd = bind_listener(conf->listeners[i].address, err, sizeof(err));
			if (fd < 0) {
				log_error("event=fatal listener=%s reason=\"%s\"",
					  conf->listeners[i].name, err);
				goto out;
			}
			fd_profiles[n_fds] = conf->listeners[i].profile;
			fds[n_fds++] = fd;
		}
		log_info("event=listening name=%s address=%s profile=%s",
			 conf->listeners[i].name, conf->listeners[i].address,
			 conf->listeners[i].profile);
	}
	if (cap) {
		http_fd = bind_listener_opt(cap->http, false, err, sizeof(err));
		if (http_fd < 0) {
			log_error("event=fatal listener=http reason=\"%s\"", err);
			goto out;
		}
		log_info("event=listening name=http address=%s profile=capture-http", cap->http);
	}
	control_fd = control_bind(conf->data_dir);
	if (control_fd < 0) {
		log_error("event=fatal reason=\"cannot bind %s/control.sock: %s\"", conf->data_dir,
			  strerror(errno));
		goto out;
	}

	if (conf->tls.cert_file) {
		tls = tls_server_ctx(&conf->tls, err, sizeof(err));
		if (!tls) {
			log_error("event=fatal reason=\"%s\"", err);
			goto out;
		}
		log_info("event=tls_loaded cert=%s", conf->tls.cert_file);
	}
	if (drop_privileges(conf->user, conf->data_dir, err, sizeof(err)) != 0) {
		log_error("event=fatal reason=\"%s\"", err);
		goto out;
	}

	rt = runtime_load(path, cap, err, sizeof(err));
	if (!rt) {
		log_error("event=fatal reason=\"%s\"", err);
		goto out;
	}
	runtime_install(rt);
	rt = NULL;

	char spool_dir[4096];
	snprintf(spool_dir, sizeof(spool_dir), "%s/spool", conf->data_dir);
	if (spool_open(spool_dir, &sp) != TERN_OK) {
		log_error("event=fatal reason=\"cannot open the spool in %s\"", spool_dir);
		goto out;
	}
	sched = scheduler_new(sp, 2);
	srv = sched ? smtp_server_new(sp, sched) : NULL;
	if (!srv || loop_global_init() != 0) {
		log_error("event=fatal reason=\"out of memory\"");
		goto out;
	}
	for (unsigned w = 0; w < n_workers; w++) {
		workers[w] = worker_new(w);
		if (!workers[w]) {
			log_error("event=fatal reason=\"cannot create worker\"");
			goto out;
		}
	}
	remote = remote_new(workers, n_workers, err, sizeof(err));
	if (!remote) {
		log_error("event=fatal reason=\"remote delivery: %s\"", err);
		goto out;
	}
	scheduler_set_remote(sched, remote);
	smtp_server_set_tls(srv, tls);
	for (size_t i = 0; i < n_fds; i++) {
		if (smtp_server_listen(srv, workers[i % n_workers], fds[i], fd_profiles[i]) !=
		    TERN_OK) {
			log_error("event=fatal reason=\"cannot attach listener\"");
			goto out;
		}
		fds[i] = -1; /* owned by the listener now */
	}
	if (cap) {
		capm = capture_mode_start(conf->data_dir, http_fd, sp, sched, err, sizeof(err));
		if (!capm) {
			log_error("event=fatal reason=\"capture: %s\"", err);
			goto out;
		}
		http_fd = -1; /* owned by the HTTP server now */
	}
	for (unsigned w = 0; w < n_workers; w++) {
		if (worker_start(workers[w]) != 0) {
			log_error("event=fatal reason=\"cannot start worker thread %u\"", w);
			goto out;
		}
	}
	ctl = control_start(control_fd, sp, sched);
	if (!ctl) {
		log_error("event=fatal reason=\"cannot start the control socket thread\"");
		goto out;
	}
	control_fd = -1;
	if (!(sub = submit_start(conf->data_dir, sp, sched, err, sizeof(err)))) { /* sendmail */
		log_error("event=fatal reason=\"local submission: %s\"", err);
		goto out;
	}
	scheduler_requeue_all(sched, false);
	log_info("event=ready workers=%u queued=%zu", n_workers, spool_count(sp));

	for (;;) {
		int sig = 0;
		if (sigwait(&sigs, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			struct tern_runtime *nrt = runtime_load(path, cap, err, sizeof(err));
			if (!nrt) {
				log_error("event=reload_failed reason=\"%s\" keeping=old-config", err);
				continue;
			}
			log_info("event=reloaded users=%zu aliases=%zu local_domains=%zu",
				 users_count(nrt->users), nrt->conf->n_aliases,
				 nrt->conf->n_local_domains);
			runtime_install(nrt);
			continue;
		}
		log_info("event=stopping signal=%s sessions=%zu", sig == SIGTERM ? "TERM" : "INT",
			 smtp_server_sessions(srv));
		break;
	}

	smtp_server_shutdown(srv);
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	uint64_t grace_ms = (uint64_t)conf->limits.shutdown_grace * 1000;
	while (smtp_server_sessions(srv) > 0) {
		if (elapsed_ms(&start) >= grace_ms) {
			log_warn("event=shutdown_grace_expired sessions=%zu",
				 smtp_server_sessions(srv));
			break;
		}
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	/* No new remote connection starts; those on the wire get the rest of
	 * the grace (their results are still recorded). */
	remote_stop(remote);
	while (remote_active(remote) > 0) {
		if (elapsed_ms(&start) >= grace_ms) {
			log_warn("event=shutdown_grace_expired remote_connections=%zu",
				 remote_active(remote));
			break;
		}
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	status = 0;

out:
	/*
	 * Teardown order: nothing may call into a part after it is freed.
	 * Workers stop first (no more callbacks from the network); then the
	 * delivery threads; remote results already queued are recorded while
	 * the spool is still open; capture mode goes; closing the spool runs
	 * its last commit callbacks, which post to the (stopped) workers and
	 * may queue scheduler jobs, so the workers' posts run once more before
	 * sessions, the remote engine and the scheduler are freed.
	 */
	if (ctl)
		control_stop(ctl);
	submit_stop(sub);
	if (remote)
		remote_stop(remote);
	for (unsigned w = 0; w < n_workers; w++)
		if (workers[w])
			worker_stop_and_join(workers[w]);
	scheduler_stop(sched);
	scheduler_drain_results(sched);
	capture_mode_stop(capm);
	if (sched)
		scheduler_set_capture(sched, NULL);
	if (sp)
		spool_close(sp);
	for (unsigned w = 0; w < n_workers; w++)
		if (workers[w])
			worker_run_pending(workers[w]);
	smtp_server_free(srv);
	remote_free(remote);
	scheduler_free(sched);
	for (unsigned w = 0; w < n_workers; w++)
		worker_free(workers[w]);
	for (size_t i = 0; i < n_fds; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (control_fd >= 0)
		close(control_fd);
	if (http_fd >= 0)
		close(http_fd);
	if (rt)
		runtime_release(rt);
	if (tls)
		SSL_CTX_free(tls);
	runtime_clear();
	if (status == 0)
		log_info("event=stopped");
	conf_unref(conf);
	return status;
}
