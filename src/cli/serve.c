/*
 * serve.c — `tern serve` and `tern check-config`: the daemon's life.
 *
 * Start-up order matters for safety (DESIGN §2): load and check the config,
 * create the data directory, bind every listener and the control socket,
 * and only then give up root — before the first byte of network input is
 * read. Started as root with a `user` to run as, the daemon splits
 * (core/privsep.h): this process stays root as a small parent that only
 * reads the files the config names and hands them over, and a forked child
 * drops to the user and runs everything below from those copies. Started
 * as any other user it is one process, as that user. Signals are taken
 * synchronously by the main thread: SIGHUP reloads config and users (in the
 * split, the parent re-reads the files and the child reloads from them),
 * SIGTERM/SIGINT stop accepting, let transactions in flight finish for
 * limits.shutdown_grace seconds, then close the spool cleanly and exit 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "auth/auth.h"
#include "cli/capture_env.h"
#include "cli/cli.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/files.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/metrics.h"
#include "core/privsep.h"
#include "core/runtime.h"
#include "deliver/deliver.h"
#include "deliver/pools.h"
#include "http/metrics_http.h"
#include "http/api.h"
#include "policy/policy.h"
#include "pop3/pop3.h"
#include "queue/queue.h"
#include "smtp/sign.h"
#include "smtp/smtp.h"
#include "store/archive.h"
#include "store/events.h"
#include "store/quota.h"
#include "store/suppress.h"
#include "tls/tls.h"

#define MAX_WORKERS 64
#define MAX_FDS 256
#define JWKS_FILE_MAX (1u << 20) /* oauth_jwks_parse takes no more */
#define AUTH_POOL_MAX 4          /* threads checking passwords (crypt, PBKDF2) */

static uint64_t elapsed_ms(const struct timespec *since)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	int64_t ms =
	    (int64_t)(now.tv_sec - since->tv_sec) * 1000 + (now.tv_nsec - since->tv_nsec) / 1000000;
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

/* Loads the config; in capture mode the command line's overrides are
 * applied on every load, so a SIGHUP keeps them. */
static struct tern_config *config_load(const char *path, const struct capture_opts *cap, char *err,
                                       size_t errlen)
{
	struct tern_config *conf = conf_load(path, err, errlen);
	if (!conf || !cap)
		return conf;
	if (conf_apply_capture(conf, cap->smtp, cap->data_dir) != TERN_OK) {
		snprintf(err, errlen, "--smtp: '%s' is not an IP:PORT address", cap->smtp);
		conf_unref(conf);
		return NULL;
	}
	if (cap->ext && capture_ext_apply_conf(cap->ext, conf) != TERN_OK) {
		snprintf(err, errlen, "out of memory");
		conf_unref(conf);
		return NULL;
	}
	return conf;
}

/* cli.h: the OAuth issuer's public keys, or NULL without auth.oauth. */
int oauth_keys_load(const struct tern_config *conf, struct oauth_keys **out, char *err,
                    size_t errlen)
{
	const char *path = conf->auth.oauth.jwks_file;
	char *json = NULL, why[256];
	size_t len = 0;
	int en = 0;
	*out = NULL;
	if (!path)
		return TERN_OK;
	int rc = tern_file_read(path, JWKS_FILE_MAX, &json, &len, &en);
	if (rc != TERN_OK) {
		snprintf(err, errlen, "auth.oauth.jwks_file: cannot read %s: %s", path,
		         en == EINVAL ? "not a regular file" : strerror(en));
		return rc;
	}
	rc = oauth_jwks_parse(json, len, out, why, sizeof(why));
	if (rc != TERN_OK)
		snprintf(err, errlen, "auth.oauth.jwks_file %s: %s", path,
		         rc == TERN_ESYNTAX ? why : tern_strerror(rc));
	free(json);
	return rc;
}

static struct tern_runtime *runtime_load(const char *path, const struct capture_opts *cap,
                                         char *err, size_t errlen)
{
	struct tern_config *conf = config_load(path, cap, err, errlen);
	if (!conf)
		return NULL;
	struct user_db *users = NULL;
	struct oauth_keys *keys = NULL;
	if (users_load(conf->users_file, &users, err, errlen) != TERN_OK) {
		conf_unref(conf);
		return NULL;
	}
	if (oauth_keys_load(conf, &keys, err, errlen) != TERN_OK) {
		users_free(users);
		conf_unref(conf);
		return NULL;
	}
	struct tern_runtime *rt = calloc(1, sizeof(*rt));
	if (!rt) {
		oauth_keys_free(keys);
		users_free(users);
		conf_unref(conf);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	atomic_init(&rt->refs, 1);
	rt->conf = conf;
	rt->users = users;
	rt->free_users = users_free;
	rt->oauth_keys = keys;
	rt->free_oauth_keys = oauth_keys_free;
	/* SIGN: a key that does not load is logged and refuses its domain's mail */
	rt->free_dkim_signer = smtp_signer_free;
	if (smtp_signer_load(&conf->dkim, &rt->dkim_signer) != TERN_OK) {
		snprintf(err, errlen, "dkim keys: out of memory");
		runtime_release(rt);
		return NULL;
	}
	return rt;
}

/* The brute-force throttle's settings (read at start only: a reload keeps
 * the counters, and these). */
static struct throttle *auth_throttle_new(const struct tern_config *conf)
{
	const struct conf_auth_throttle *t = &conf->auth.throttle;
	struct throttle_config tc = {
	    .delay_after = t->delay_after,
	    .base_delay_ms = t->delay_ms,
	    .max_delay_ms = t->max_delay_ms,
	    .addr_block_after = t->addr_block_after,
	    .user_block_after = t->user_block_after,
	    .block_seconds = t->block_time,
	    .window_seconds = t->forget_after,
	    .max_entries = t->max_entries,
	};
	return throttle_new(&tc);
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
	static const char *subs[] = {"spool",        "mail",          "users",
	                             "control.sock", "tls",           "apikeys.db",
	                             "events.db",    "events.db-wal", "events.db-shm"};
	for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
		snprintf(cmd_path, sizeof(cmd_path), "%s/%s", dir, subs[i]);
		struct stat st;
		if (lstat(cmd_path, &st) != 0)
			continue;
		/* The users file keeps a group an operator chose (dovecot, so that
		 * Dovecot's passdb can read it: `tern dovecot-config`). */
		bool keep_group = strcmp(subs[i], "users") == 0 && st.st_gid != 0;
		chown_tree(cmd_path, uid, keep_group ? (gid_t)-1 : gid, depth + 1);
	}
}

/* Reads path through the file source and forgets it: in the privileged
 * parent, that records it for the child's bundle. A failure is recorded
 * too; the child reports it where it reads the file. */
static void touch_file(const char *path)
{
	char *d = NULL;
	size_t n = 0;
	int en;
	if (path && tern_file_read(path, FILES_MAX_SIZE, &d, &n, &en) == TERN_OK) {
		explicit_bzero(d, n);
		free(d);
	}
}

/* Every file conf names that the daemon reads (besides the config and its
 * includes, which conf_load read already). Keep in step with the readers:
 * users_load, oauth_keys_load, tls_server_new, dns_resolver_new, remote.c's
 * AUTH and ca_file, dkim_key_load. */
static void touch_referenced(const struct tern_config *conf)
{
	touch_file(conf->users_file);
	char admins[4096]; /* the web UI's admins (http/ui_routes.h), read at each login */
	snprintf(admins, sizeof(admins), "%s/ui-admins", conf->data_dir);
	touch_file(admins);
	touch_file(conf->auth.oauth.jwks_file);
	for (size_t i = 0; i < conf->tls.n_certs; i++) {
		touch_file(conf->tls.certs[i].cert_file);
		touch_file(conf->tls.certs[i].key_file);
	}
	touch_file(conf->dns.trust_anchor_file);
	touch_file(conf->delivery.ca_file); /* remote_new's outbound trust anchors */
	if (conf->relayhost)
		touch_file(conf->relayhost->auth_password_file);
	for (size_t i = 0; i < conf->n_routes; i++)
		touch_file(conf->routes[i].auth_password_file);
	for (size_t i = 0; i < conf->dkim.n_keys; i++) /* policy/dkim.h dkim_key_load */
		touch_file(conf->dkim.keys[i].key_file);
}

/*
 * tls.self_signed: makes (or renews) the generated certificate before anyone
 * reads it. Only a process that may write the data dir for the account that
 * serves does this: the single process, or the privileged parent before it
 * records the files for the child (uid/gid the child's, so the parent's
 * reader, which reads data_dir with the child's rights, can read them).
 */
static int ensure_self_signed(const struct tern_config *conf, uid_t uid, gid_t gid)
{
	char err[512], why[64];
	bool made = false;
	if (!conf->tls.self_signed || conf->tls.n_certs == 0)
		return TERN_OK;
	const struct conf_tls_cert *c = &conf->tls.certs[0];
	int rc = tls_self_signed_ensure(c->cert_file, c->key_file, conf->hostname, uid, gid, &made,
	                                why, sizeof(why), err, sizeof(err));
	if (rc != TERN_OK) {
		log_error("event=tls_self_signed_failed reason=\"%s\"", err);
		return rc;
	}
	if (made)
		log_info("event=tls_self_signed cert=%s hostname=%s reason=%s", c->cert_file,
		         conf->hostname, why);
	return TERN_OK;
}

/* What the privileged parent needs to re-read everything on SIGHUP. */
struct parent_ctx {
	const char *path;
	const struct capture_opts *cap;
	struct privsep_reader rd;
};

/* privsep_reload_fn: the config and every file it names, as the child will
 * read them; NULL (logged) if the config does not load. */
static struct file_bundle *parent_reload(void *arg)
{
	struct parent_ctx *pc = arg;
	char err[512];
	pc->rd.referenced = false;
	pc->rd.tainted = false;
	if (files_record_start(privsep_read_file, &pc->rd) != TERN_OK) {
		log_error("event=reload_failed reason=\"out of memory\" keeping=old-config");
		return NULL;
	}
	struct tern_config *conf = config_load(pc->path, pc->cap, err, sizeof(err));
	if (conf) {
		/* A failure is logged; the child then reports the files missing. */
		(void)ensure_self_signed(conf, pc->rd.uid, pc->rd.gid);
		pc->rd.referenced = true;
		touch_referenced(conf);
		conf_unref(conf);
	}
	struct file_bundle *b = files_record_stop();
	if (!conf) {
		log_error("event=reload_failed reason=\"%s\" keeping=old-config", err);
		file_bundle_free(b);
		return NULL;
	}
	return b;
}

/*
 * What a reload cannot apply: listeners the new config adds ("+NAME=ADDR"),
 * drops ("-NAME=ADDR") or gives another profile or TLS mode ("~NAME=ADDR"),
 * comma separated in out (truncated to fit). Returns how many.
 */
static size_t listener_changes(const struct tern_config *old, const struct tern_config *nw,
                               char *out, size_t outlen)
{
	size_t n = 0, at = 0;
	out[0] = '\0';
	for (int pass = 0; pass < 2; pass++) {
		const struct tern_config *a = pass == 0 ? nw : old, *b = pass == 0 ? old : nw;
		for (size_t i = 0; i < a->n_listeners; i++) {
			const struct conf_listener *l = &a->listeners[i], *m = NULL;
			for (size_t j = 0; j < b->n_listeners && !m; j++)
				if (strcmp(b->listeners[j].address, l->address) == 0)
					m = &b->listeners[j];
			bool changed = m && pass == 0 &&
			               (strcmp(m->profile, l->profile) != 0 || m->tls != l->tls);
			char sign = !m ? (pass == 0 ? '+' : '-') : changed ? '~' : 0;
			if (!sign)
				continue;
			if (at < outlen)
				at += (size_t)snprintf(out + at, outlen - at, "%s%c%s=%s",
				                       n ? "," : "", sign, l->name, l->address);
			n++;
		}
	}
	return n;
}

/*
 * The certificates of a new config, for the handshakes to come (tls/tls.h):
 * TERN_OK, or TERN_EINVAL with err set, and the set in use stays. Listeners
 * are bound and their TLS mode fixed at start, so TLS cannot be added or
 * removed by a reload, only its certificates changed.
 */
static int reload_tls(struct tls_server *tls, const struct tern_config *conf, char *err,
                      size_t errlen)
{
	if (!tls) {
		if (conf->tls.n_certs > 0)
			log_warn(
			    "event=reload_warning reason=\"tls certificates were added: restart "
			    "tern to offer TLS\"");
		return TERN_OK;
	}
	if (conf->tls.n_certs == 0) {
		snprintf(err, errlen,
		         "tls: every certificate was removed, but listeners offer "
		         "TLS (restart tern to turn TLS off)");
		return TERN_EINVAL;
	}
	int rc = tls_server_reload(tls, &conf->tls, err, errlen);
	if (rc == TERN_OK) {
		tls_server_log(tls);
		log_info("event=tls_reloaded certificates=%zu", tls_server_count(tls));
	}
	return rc;
}

/*
 * Makes a new runtime current (SIGHUP), with the new certificates; a failure
 * of either keeps both old. may_generate: this process may make the
 * self-signed certificate (not the split child: its parent did).
 */
static bool reload_runtime(const char *path, const struct capture_opts *cap, struct tls_server *tls,
                           bool may_generate)
{
	char err[512] = "";
	cli_notify("RELOADING=1");
	struct tern_runtime *nrt = runtime_load(path, cap, err, sizeof(err));
	bool ok = nrt != NULL;
	if (ok && may_generate && ensure_self_signed(nrt->conf, (uid_t)-1, (gid_t)-1) != TERN_OK) {
		snprintf(err, sizeof(err), "tls: the self-signed certificate could not be made");
		ok = false;
	}
	if (ok && reload_tls(tls, nrt->conf, err, sizeof(err)) != TERN_OK)
		ok = false;
	if (!ok) {
		if (nrt)
			runtime_release(nrt);
		log_error("event=reload_failed reason=\"%s\" keeping=old-config", err);
		cli_notify("READY=1\nSTATUS=reload failed; running the old config");
		return false;
	}
	struct tern_runtime *cur = runtime_acquire();
	char diff[512], q[600];
	size_t nd = cur ? listener_changes(cur->conf, nrt->conf, diff, sizeof(diff)) : 0;
	runtime_release(cur);
	if (nd == 0)
		log_info("event=reloaded users=%zu aliases=%zu senders=%zu oauth_keys=%zu "
		         "local_domains=%zu",
		         users_count(nrt->users), nrt->conf->n_aliases, nrt->conf->n_senders,
		         oauth_keys_count(nrt->oauth_keys), nrt->conf->n_local_domains);
	else /* the rest applies; the sockets stay those bound at start */
		log_warn(
		    "event=reload_needs_restart users=%zu aliases=%zu senders=%zu "
		    "oauth_keys=%zu local_domains=%zu listeners=%s reason=\"listeners are bound "
		    "at start only: everything but listen { } is reloaded; restart tern to "
		    "apply the listener changes\"",
		    users_count(nrt->users), nrt->conf->n_aliases, nrt->conf->n_senders,
		    oauth_keys_count(nrt->oauth_keys), nrt->conf->n_local_domains,
		    log_quote(diff, strlen(diff), q, sizeof(q)));
	runtime_install(nrt);
	cli_notify(nd ? "READY=1\nSTATUS=reloaded; listener changes need a restart"
	              : "READY=1\nSTATUS=accepting mail");
	return true;
}

/* The split child's reload: the parent sent the files afresh. If the new
 * config or users do not load, the old files stay too. */
static void reload_from_bundle(struct file_bundle *b, const char *path,
                               const struct capture_opts *cap, struct tls_server *tls)
{
	struct file_bundle *old = files_serve_bundle(b);
	if (reload_runtime(path, cap, tls, false))
		file_bundle_free(old);
	else
		file_bundle_free(files_serve_bundle(old));
}

enum daemon_event { EV_SIGNAL, EV_BUNDLE, EV_PARENT_GONE };

/*
 * The main thread's wait. A single process takes signals with sigwait; the
 * split child also watches the channel from its parent (sfd is a signalfd
 * for the same signals).
 */
static enum daemon_event wait_event(const sigset_t *sigs, int sfd, int ps_sock, int *sig,
                                    struct file_bundle **b)
{
	char err[256];
	if (ps_sock < 0) {
		while (sigwait(sigs, sig) != 0)
			;
		return EV_SIGNAL;
	}
	for (;;) {
		struct pollfd p[2] = {{.fd = sfd, .events = POLLIN},
		                      {.fd = ps_sock, .events = POLLIN}};
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_error("event=privsep_channel_failed reason=\"poll: %s\"",
			          strerror(errno));
			return EV_PARENT_GONE;
		}
		if (p[0].revents & POLLIN) {
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
				*sig = (int)si.ssi_signo;
				return EV_SIGNAL;
			}
		}
		if (p[1].revents) {
			int rc = privsep_child_receive(ps_sock, b, err, sizeof(err));
			if (rc == TERN_OK)
				return EV_BUNDLE;
			log_error("event=privsep_channel_failed reason=\"%s\"", err);
			return EV_PARENT_GONE;
		}
	}
}

/*
 * Whether to split (core/privsep.h): 1 when started as root with an account
 * to run as (its ids in *uid, *gid), 0 to stay one process, -1 (logged) when
 * the configured account does not exist.
 */
static int split_account(const struct tern_config *conf, uid_t *uid, gid_t *gid)
{
	if (geteuid() != 0)
		return 0;
	if (!conf->user || !*conf->user) {
		log_warn("event=privileges user=root reason=\"no 'user' configured; running as "
		         "root\"");
		return 0;
	}
	struct passwd *pw = getpwnam(conf->user);
	if (!pw) {
		log_error("event=fatal reason=\"user '%s' (config key 'user') does not exist\"",
		          conf->user);
		return -1;
	}
	if (pw->pw_uid == 0) {
		log_warn("event=privileges user=%s reason=\"'user' is root; running as root\"",
		         conf->user);
		return 0;
	}
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
	return 1;
}

static const struct cli_help serve_help = {
    "tern serve", "tern serve [-c FILE]",
    "Runs the mail server: every listener, the queue, delivery, HTTP. Without -c\n"
    "it runs the embedded default (SMTP on 127.0.0.1:2525, data in ./tern-data).\n"
    "Started as root it binds, reads keys as root and runs the rest as 'user'.\n"
    "  -c, --config FILE   the configuration file (tern.conf(5))\n"
    "Signals: SIGHUP reloads certificates, users, routes and policies (new\n"
    "listeners need a restart); SIGTERM stops after the transactions in flight.\n"
    "Logs go to standard error, one key=value line per event.\n"};

int cmd_serve(int argc, char **argv)
{
	const char *path;
	if (cli_help_asked(argc, argv))
		return cli_help(&serve_help);
	if (cli_take_config(&argc, argv, &path) != 0)
		return cli_usage(&serve_help, "-c needs a file name");
	if (argc != 1)
		return cli_usage(&serve_help, "unexpected argument '%s'", argv[1]);
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
	enum conf_listen_tls fd_tls[MAX_FDS];
	struct pop3_server *pop3 = NULL;
	size_t n_fds = 0;
	int control_fd = -1;
	struct spool *sp = NULL;
	struct archive *arch = NULL; /* ARCHIVE (store/archive.h), or NULL */
	struct scheduler *sched = NULL;
	struct smtp_server *srv = NULL;
	struct remote *remote = NULL;
	struct policy *policy = NULL;
	struct control *ctl = NULL;
	struct submit *sub = NULL;
	struct dmarc_daemon *dmarcd = NULL;
	struct capture_mode *capm = NULL;
	struct pool *auth_pool = NULL;
	struct throttle *throttle = NULL;
	struct tls_server *tls = NULL;
	int http_fd = -1;
	int metrics_fd = -1;
	struct metrics_http *metrics = NULL;
	int api_fds[MAX_FDS];  /* listeners with profile "http": http/api.h */
	bool api_tls[MAX_FDS]; /* ... and whether each is HTTPS (tls = "implicit") */
	size_t n_api_fds = 0;
	struct api *api = NULL;
	struct parent_ctx pc = {.path = path, .cap = cap};
	struct file_bundle *bundle = NULL;
	int split = 0, ps_sock = -1, sfd = -1;
	bool is_parent = false;

	/* Every thread inherits this mask; only the main thread takes them. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* As root, every file read from here on is recorded: if the daemon
	 * splits, the record is the child's first bundle. */
	if (geteuid() == 0 && files_record_start(privsep_read_file, &pc.rd) != TERN_OK) {
		fprintf(stderr, "tern: out of memory\n");
		return 1;
	}
	struct tern_config *conf = config_load(path, cap, err, sizeof(err));
	if (!conf) {
		fprintf(stderr, "tern: %s\n", err);
		file_bundle_free(files_record_stop());
		return 1;
	}
	enum log_level lvl;
	if (log_level_parse(conf->log_level, &lvl) == 0)
		log_set_level(lvl);
	log_info("event=starting version=%s config=%s hostname=%s data_dir=%s", TERN_VERSION,
	         conf->source, conf->hostname, conf->data_dir);
	conf_report_warnings(conf, NULL);
	metrics_reset(); /* every series from zero, the fixed label sets shown */
	split = split_account(conf, &pc.rd.uid, &pc.rd.gid);
	if (split < 0)
		goto out;
	if (!split)
		file_bundle_free(files_record_stop());

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
		if (strcmp(conf->listeners[i].profile, "http") == 0) {
			int fd = n_api_fds < MAX_FDS ? bind_listener_opt(conf->listeners[i].address,
			                                                 false, err, sizeof(err))
			                             : -1;
			if (fd < 0) {
				log_error("event=fatal listener=%s reason=\"%s\"",
				          conf->listeners[i].name, err);
				goto out;
			}
			api_tls[n_api_fds] = conf->listeners[i].tls == CONF_LISTEN_TLS_IMPLICIT;
			log_info("event=listening name=%s address=%s profile=http tls=%s",
			         conf->listeners[i].name, conf->listeners[i].address,
			         api_tls[n_api_fds] ? "implicit" : "none");
			api_fds[n_api_fds++] = fd;
			continue;
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
			fd_tls[n_fds] = conf->listeners[i].tls;
			fds[n_fds++] = fd;
		}
		static const char *const tls_modes[] = {"none", "starttls", "implicit"};
		log_info("event=listening name=%s address=%s profile=%s tls=%s",
		         conf->listeners[i].name, conf->listeners[i].address,
		         conf->listeners[i].profile, tls_modes[conf->listeners[i].tls]);
	}
	if (cap) {
		http_fd = bind_listener_opt(cap->http, false, err, sizeof(err));
		if (http_fd < 0) {
			log_error("event=fatal listener=http reason=\"%s\"", err);
			goto out;
		}
		log_info("event=listening name=http address=%s profile=capture-http", cap->http);
	}
	if (conf->metrics.address) {
		metrics_fd = bind_listener_opt(conf->metrics.address, false, err, sizeof(err));
		if (metrics_fd < 0) {
			log_error("event=fatal listener=metrics reason=\"%s\"", err);
			goto out;
		}
		log_info("event=listening name=metrics address=%s profile=metrics token=%s",
		         conf->metrics.address, conf->metrics.token ? "yes" : "no");
	}
	control_fd = control_bind(conf->data_dir);
	if (control_fd < 0) {
		log_error("event=fatal reason=\"cannot bind %s/control.sock: %s\"", conf->data_dir,
		          strerror(errno));
		goto out;
	}

	/* Before the split: the child cannot write it for itself. */
	if (ensure_self_signed(conf, split ? pc.rd.uid : (uid_t)-1,
	                       split ? pc.rd.gid : (gid_t)-1) != TERN_OK)
		goto out;
	if (split) {
		chown_tree(conf->data_dir, pc.rd.uid, pc.rd.gid, 0);
		pc.rd.referenced = true;
		touch_referenced(conf);
		bundle = files_record_stop();
		pid_t parent = getpid();
		pid_t child = privsep_fork(&ps_sock);
		if (child < 0) {
			log_error("event=fatal reason=\"cannot fork: %s\"", strerror(errno));
			goto out;
		}
		if (child > 0) {
			/* The parent holds no listener: every connection is the child's. */
			is_parent = true;
			for (size_t i = 0; i < n_fds; i++)
				close(fds[i]);
			n_fds = 0;
			for (size_t i = 0; i < n_api_fds; i++)
				close(api_fds[i]);
			n_api_fds = 0;
			close(control_fd);
			control_fd = -1;
			if (http_fd >= 0)
				close(http_fd);
			http_fd = -1;
			if (metrics_fd >= 0)
				close(metrics_fd);
			metrics_fd = -1;
			status = privsep_parent_run(child, ps_sock, bundle, parent_reload, &pc);
			bundle = NULL;
			ps_sock = -1;
			goto out;
		}
		/* The child: the parent sends its own copy of the files. */
		file_bundle_free(bundle);
		bundle = NULL;
		if (privsep_child_drop(parent, pc.rd.uid, pc.rd.gid, conf->user, err,
		                       sizeof(err)) != TERN_OK) {
			log_error("event=fatal reason=\"%s\"", err);
			goto out;
		}
		struct file_bundle *first = NULL;
		if (privsep_child_receive(ps_sock, &first, err, sizeof(err)) != TERN_OK) {
			log_error("event=fatal reason=\"%s\"", err);
			goto out;
		}
		files_serve_bundle(first);
		sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
		if (sfd < 0) {
			log_error("event=fatal reason=\"signalfd: %s\"", strerror(errno));
			goto out;
		}
	}

	if (conf->tls.n_certs > 0) {
		tls = tls_server_new(&conf->tls, err, sizeof(err));
		if (!tls) {
			log_error("event=fatal reason=\"%s\"", err);
			goto out;
		}
		tls_server_log(tls);
		log_info("event=tls_loaded certificates=%zu", conf->tls.n_certs);
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
	/* ARCHIVE: recovery keeps, for the archive, what it may lack */
	if (spool_open_flags(spool_dir, !cap && conf->archive.enabled ? SPOOL_OPEN_ARCHIVE : 0,
	                     &sp) != TERN_OK) {
		log_error("event=fatal reason=\"cannot open the spool in %s\"", spool_dir);
		goto out;
	}
	if (!cap && conf->events.enabled) /* capture mode emits no events */
		events_start_conf(conf);
	if (!cap && conf->archive.enabled) { /* ARCHIVE: every committed message */
		if (archive_open(conf->data_dir, &arch, err, sizeof(err)) != TERN_OK ||
		    archive_start(arch, &conf->archive) != TERN_OK) {
			log_error("event=fatal reason=\"archive: %s\"", err);
			goto out;
		}
		archive_catch_up(arch, sp); /* what a kill kept from it: still in the spool */
		spool_set_commit_hook(sp, archive_want, archive_on_commit, arch);
	}
	sched = scheduler_new(sp, 2);
	if (sched)
		scheduler_set_held_max(sched, (size_t)conf->limits.queued_memory);
	if (sched && arch) /* ARCHIVE: remote recipients' outcomes */
		scheduler_set_archive_observer(sched, archive_on_result, arch);
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
	policy = policy_new(workers, n_workers, conf, err, sizeof(err));
	if (!policy) {
		log_error("event=fatal reason=\"policy: %s\"", err);
		goto out;
	}
	smtp_server_set_policy(srv, policy);
	smtp_server_set_tls(srv, tls_server_ctx(tls));
	/* AUTH: crypt and PBKDF2 run on their own threads, never on a worker. */
	auth_pool = pool_new(n_workers < AUTH_POOL_MAX ? n_workers : AUTH_POOL_MAX);
	throttle = auth_throttle_new(conf);
	if (!auth_pool || !throttle) {
		log_error("event=fatal reason=\"out of memory\"");
		goto out;
	}
	smtp_server_set_auth(srv, auth_pool, throttle);
	/* POP3 counts failed logins in the same throttle: guesses spread over
	 * both services count together. */
	if (!(pop3 = pop3_server_new(throttle))) {
		log_error("event=fatal reason=\"out of memory\"");
		goto out;
	}
	pop3_server_set_tls(pop3, tls_server_ctx(tls));
	for (size_t i = 0; i < n_fds; i++) {
		bool is_pop3 = strcmp(fd_profiles[i], "pop3") == 0;
		if ((is_pop3 ? pop3_server_listen(pop3, workers[i % n_workers], fds[i],
		                                  fd_tls[i] == CONF_LISTEN_TLS_IMPLICIT)
		             : smtp_server_listen(srv, workers[i % n_workers], fds[i],
		                                  fd_profiles[i], fd_tls[i])) != TERN_OK) {
			log_error("event=fatal reason=\"cannot attach listener\"");
			goto out;
		}
		fds[i] = -1; /* owned by the listener now */
	}
	if (cap) {
		capm = capture_mode_start(conf->data_dir, http_fd, sp, sched, cap->ext, err,
		                          sizeof(err));
		if (!capm) {
			log_error("event=fatal reason=\"capture: %s\"", err);
			goto out;
		}
		http_fd = -1; /* owned by the HTTP server now */
	}
	quota_open(conf->data_dir); /* sending quotas (store/quota.h): API and submission */
	/* before anything is submitted: it watches the scheduler's results */
	if (n_api_fds && !(api = api_start(conf->data_dir, sp, sched, api_fds, api_tls, n_api_fds,
	                                   tls_server_ctx(tls), err, sizeof(err)))) {
		log_error("event=fatal reason=\"http api: %s\"", err);
		goto out;
	}
	for (unsigned w = 0; w < n_workers; w++) {
		if (worker_start(workers[w]) != 0) {
			log_error("event=fatal reason=\"cannot start worker thread %u\"", w);
			goto out;
		}
	}
	if (metrics_fd >= 0) {
		metrics = metrics_http_start(metrics_fd, conf->metrics.token, sp, spool_dir,
		                             TERN_VERSION, err, sizeof(err));
		metrics_fd = -1; /* the listener's, even when it failed */
		if (!metrics) {
			log_error("event=fatal listener=metrics reason=\"%s\"", err);
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
	dmarcd = dmarc_daemon_start(conf, sp, sched); /* DMARC aggregate reports */
	scheduler_requeue_all(sched, false);
	log_info("event=ready workers=%u queued=%zu", n_workers, spool_count(sp));
	cli_notify("READY=1\nSTATUS=accepting mail");

	for (;;) {
		int sig = 0;
		struct file_bundle *nb = NULL;
		enum daemon_event ev = wait_event(&sigs, sfd, ps_sock, &sig, &nb);
		if (ev == EV_BUNDLE) {
			reload_from_bundle(nb, path, cap, tls);
			continue;
		}
		if (ev == EV_PARENT_GONE) {
			log_info("event=stopping reason=parent-gone sessions=%zu",
			         smtp_server_sessions(srv));
			break;
		}
		if (sig == SIGHUP && split) {
			log_warn(
			    "event=reload_ignored reason=\"only the privileged parent can read "
			    "the files: send SIGHUP to pid %ld\"",
			    (long)getppid());
			continue;
		}
		if (sig == SIGHUP) {
			reload_runtime(path, cap, tls, true);
			continue;
		}
		log_info("event=stopping signal=%s sessions=%zu", sig == SIGTERM ? "TERM" : "INT",
		         smtp_server_sessions(srv));
		break;
	}
	cli_notify("STOPPING=1");

	smtp_server_shutdown(srv);
	pop3_server_shutdown(pop3);
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	uint64_t grace_ms = (uint64_t)conf->limits.shutdown_grace * 1000;
	while (smtp_server_sessions(srv) + pop3_server_sessions(pop3) > 0) {
		if (elapsed_ms(&start) >= grace_ms) {
			log_warn("event=shutdown_grace_expired sessions=%zu pop3_sessions=%zu",
			         smtp_server_sessions(srv), pop3_server_sessions(pop3));
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
	metrics_http_stop(metrics); /* it reads the spool */
	dmarc_daemon_stop(dmarcd);
	if (ctl)
		control_stop(ctl);
	submit_stop(sub);
	api_stop(api);
	if (remote)
		remote_stop(remote);
	for (unsigned w = 0; w < n_workers; w++)
		if (workers[w])
			worker_stop_and_join(workers[w]);
	dmarc_daemon_free(dmarcd); /* its store: after the workers, which record */
	dmarcd = NULL;
	scheduler_stop(sched);
	scheduler_drain_results(sched);
	api_free(api); /* after the last result it could be told of */
	quota_close(); /* after the workers: writes the last counts */
	pools_close(); /* likewise the warm-up counters */
	capture_mode_stop(capm);
	if (sched)
		scheduler_set_capture(sched, NULL);
	archive_stop(arch); /* its writer reads the spool: stopped before it closes */
	if (sp)
		spool_close(sp);
	archive_close(arch); /* after the spool: its committer calls the archive */
	/* Checks still running post their answers to the (stopped) workers,
	 * which run them below, before the sessions are freed. */
	pool_free(auth_pool);
	for (unsigned w = 0; w < n_workers; w++)
		if (workers[w])
			worker_run_pending(workers[w]);
	pop3_server_free(pop3); /* waits for its pool, runs the completions on the workers */
	smtp_server_free(srv);
	throttle_free(throttle);
	policy_free(policy); /* after the sessions: they cancel their queries on its resolvers */
	remote_free(remote);
	events_stop(); /* after every emitter: sessions, delivery, the spool's callbacks */
	scheduler_free(sched);
	suppress_shared_close(); /* after the delivery threads, its only users */
	for (unsigned w = 0; w < n_workers; w++)
		worker_free(workers[w]);
	for (size_t i = 0; i < n_fds; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (control_fd >= 0)
		close(control_fd);
	if (http_fd >= 0)
		close(http_fd);
	if (metrics_fd >= 0)
		close(metrics_fd);
	for (size_t i = 0; i < n_api_fds; i++)
		if (api_fds[i] >= 0)
			close(api_fds[i]);
	if (rt)
		runtime_release(rt);
	tls_server_free(tls); /* after the sessions: they hold its context */
	runtime_clear();
	if (sfd >= 0)
		close(sfd);
	if (ps_sock >= 0)
		close(ps_sock);
	file_bundle_free(bundle);
	file_bundle_free(files_record_stop());
	file_bundle_free(files_serve_bundle(NULL));
	if (status == 0 && !is_parent)
		log_info("event=stopped");
	conf_unref(conf);
	return status;
}
