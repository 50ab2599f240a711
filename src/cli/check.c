/*
 * check.c — `tern check-config`: loads the config as serve would, then
 * looks at what the config only names — the certificate and key, the OAuth
 * issuer's keys, the DKIM keys, the account to run as, the data directory — so that what
 * serve would refuse at start, or regret later, is found here first. Prints
 * the effective config (or, with --changed, only what differs from the
 * defaults).
 *
 * Must never: change anything (no file created, no ownership fixed: serve
 * does that), or exit 0 when serve would refuse to start.
 */
#include <errno.h>
#include <grp.h>
#include <openssl/ssl.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth/auth.h"
#include "cli/cli.h"
#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "policy/dkim.h"
#include "smtp/verify_arc.h"
#include "tls/tls.h"

static const struct cli_help check_help = {
    "tern check-config", "tern check-config [-c FILE] [--changed]",
    "Loads the configuration as tern serve would and checks what it names:\n"
    "the TLS certificate and key (read and matched), the OAuth issuer's keys\n"
    "(auth.oauth.jwks_file, read and parsed), the ARC sealing key (RSA), the\n"
    "account 'user' (it must exist), the data_dir (that account must be able to\n"
    "create and write it), and relay.networks (a network shorter than /8 is an\n"
    "open relay).\n"
    "Problems go to standard error as \"tern: error: ...\" or \"tern: warning:\n"
    "...\"; the effective configuration, every key with its value, to standard\n"
    "output.\n"
    "  -c, --config FILE   the configuration file (default: the embedded one)\n"
    "  --changed           print only the keys that differ from the defaults\n"
    "                      (what the file sets; Postfix's postconf -n)\n"
    "Exit status: 0 when serve would start, 1 on an error, 2 on a usage error.\n"};

struct check {
	unsigned errors;
};

__attribute__((format(printf, 2, 3))) static void error(struct check *ck, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("tern: error: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	ck->errors++;
}

__attribute__((format(printf, 1, 2))) static void warning(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("tern: warning: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* The certificates and keys, loaded exactly as serve loads them (tls/tls.h).
 * tls.self_signed is made by serve at start: nothing to check before. */
static void check_tls(struct check *ck, const struct tern_config *c)
{
	if (c->tls.n_certs == 0 || c->tls.self_signed)
		return;
	char err[512];
	struct tls_server *ts = tls_server_new(&c->tls, err, sizeof(err));
	if (!ts) {
		error(ck, "%s", err);
		return;
	}
	tls_server_free(ts);
}

/* delivery.ca_file, loaded as remote_new loads it: one that does not load
 * stops serve at start. */
static void check_ca_file(struct check *ck, const struct tern_config *c)
{
	char err[512];
	if (!c->delivery.ca_file)
		return;
	SSL_CTX *ctx = tls_client_ctx_new(c->delivery.ca_file, true, err, sizeof(err));
	if (!ctx)
		error(ck, "delivery.ca_file: %s", err);
	SSL_CTX_free(ctx);
}

/* The OAuth issuer's keys, read and parsed as serve does: a file that does
 * not load stops serve at start. */
static void check_oauth(struct check *ck, const struct tern_config *c)
{
	char err[512];
	struct oauth_keys *keys = NULL;
	if (oauth_keys_load(c, &keys, err, sizeof(err)) != TERN_OK)
		error(ck, "%s", err);
	oauth_keys_free(keys);
}

/* The DKIM signing keys, each loaded as serve loads it (mode checked): serve
 * starts without a key that does not load, but refuses its domain's mail
 * from logged-in users with 451 (smtp/sign.h), so it is an error here. */
static void check_dkim(struct check *ck, const struct tern_config *c)
{
	for (size_t i = 0; i < c->dkim.n_keys; i++) {
		const struct conf_dkim_key *k = &c->dkim.keys[i];
		struct dkim_key *key = NULL;
		char warn[512], err[512];
		if (dkim_key_load(k->key_file, &key, warn, sizeof(warn), err, sizeof(err)) !=
		    TERN_OK) {
			error(ck,
			      "dkim.keys: the key of %s (selector %s) does not load: %s; mail from "
			      "%s would get 451 until it does",
			      k->domain, k->selector, err, k->domain);
			continue;
		}
		if (warn[0])
			warning("dkim.keys: %s", warn);
		dkim_key_free(key);
	}
}

/*
 * Whether uid/gid may access path with mode (access(2) bits), asked in a
 * child that has become that account: the kernel's answer, ACLs and
 * every directory on the way included. Only when we are root.
 */
static bool account_can(uid_t uid, gid_t gid, const char *path, int mode)
{
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return true; /* cannot tell: say nothing rather than something false */
	if (pid == 0) {
		if (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0)
			_exit(2);
		_exit(access(path, mode) == 0 ? 0 : 1);
	}
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return !(WIFEXITED(st) && WEXITSTATUS(st) == 1);
}

/* The nearest existing directory at or above path (path itself first). */
static bool nearest_existing(const char *path, char *out, size_t outlen)
{
	if (tern_strlcpy(out, path, outlen) >= outlen)
		return false;
	for (;;) {
		struct stat st;
		if (stat(out, &st) == 0)
			return true;
		char *slash = strrchr(out, '/');
		if (!slash) {
			tern_strlcpy(out, ".", outlen);
			return true;
		}
		if (slash == out) {
			out[1] = '\0';
			return true;
		}
		*slash = '\0';
	}
}

/*
 * The data directory must be writable by the account the daemon runs as.
 * Started as root with a 'user', serve creates the directory as root and
 * hands it (not its parents) to that account: then the account must be
 * able to reach it through every directory above.
 */
static void check_data_dir(struct check *ck, const struct tern_config *c)
{
	char dirbuf[4096];
	/* "/var/lib/tern/" is "/var/lib/tern": its parent is /var/lib */
	size_t dl = tern_strlcpy(dirbuf, c->data_dir, sizeof(dirbuf));
	if (dl >= sizeof(dirbuf)) {
		error(ck, "data_dir %s: path too long", c->data_dir);
		return;
	}
	while (dl > 1 && dirbuf[dl - 1] == '/')
		dirbuf[--dl] = '\0';
	const char *dir = dirbuf;
	struct passwd *pw = NULL;
	if (geteuid() == 0 && c->user && *c->user)
		pw = getpwnam(c->user);
	bool dropping = pw && pw->pw_uid != 0;
	char at[4096];
	if (!nearest_existing(dir, at, sizeof(at))) {
		error(ck, "data_dir %s: path too long", dir);
		return;
	}
	bool exists = strcmp(at, dir) == 0;
	struct stat st;
	if (exists && stat(dir, &st) == 0 && !S_ISDIR(st.st_mode)) {
		error(ck, "data_dir %s is not a directory", dir);
		return;
	}
	if (!exists && stat(at, &st) == 0 && !S_ISDIR(st.st_mode)) {
		error(ck, "data_dir %s cannot be created: %s is not a directory", dir, at);
		return;
	}
	struct statvfs vfs;
	if (statvfs(at, &vfs) == 0 && (vfs.f_flag & ST_RDONLY)) {
		error(ck, "data_dir %s is on a read-only file system", dir);
		return;
	}
	if (!dropping) {
		/* The daemon runs as whoever runs this. */
		if (access(at, W_OK | X_OK) != 0)
			error(ck, "data_dir %s: %s is not writable by this account (%s)", dir, at,
			      strerror(errno));
		return;
	}
	/* serve, as root, creates what is missing and chowns the top. */
	char parent[4096];
	if (tern_strlcpy(parent, dir, sizeof(parent)) >= sizeof(parent))
		return;
	char *slash = strrchr(parent, '/');
	if (!slash)
		tern_strlcpy(parent, ".", sizeof(parent));
	else if (slash == parent)
		parent[1] = '\0';
	else
		*slash = '\0';
	if (exists || strcmp(at, parent) == 0) {
		if (!account_can(pw->pw_uid, pw->pw_gid, parent, X_OK))
			error(ck,
			      "data_dir %s: user '%s' cannot reach it (a directory above is "
			      "closed to that account; serve would fail after dropping privileges)",
			      dir, c->user);
	} else if (!account_can(pw->pw_uid, pw->pw_gid, at, X_OK)) {
		error(ck,
		      "data_dir %s: user '%s' cannot reach %s, under which it would be "
		      "created",
		      dir, c->user, at);
	} else {
		warning("data_dir %s does not exist: serve creates it and the directories up to "
		        "it as root (mode 0750); make those readable by '%s' or create them first",
		        dir, c->user);
	}
	if (exists && stat(dir, &st) == 0 &&
	    (st.st_mode & (S_IWUSR | S_IXUSR)) != (S_IWUSR | S_IXUSR))
		error(ck,
		      "data_dir %s: its owner cannot write it (mode %03o); serve hands it "
		      "to '%s' but keeps the mode",
		      dir, (unsigned)(st.st_mode & 0777), c->user);
}

static void check_user(struct check *ck, const struct tern_config *c)
{
	if (!c->user || !*c->user)
		return;
	errno = 0;
	if (getpwnam(c->user))
		return;
	if (geteuid() == 0)
		error(ck,
		      "user '%s' does not exist (serve, started as root, would refuse to "
		      "start)",
		      c->user);
	else
		warning("user '%s' does not exist; serve started as root would refuse to start",
		        c->user);
}

int cmd_check_config(int argc, char **argv)
{
	const char *path;
	bool changed = false;
	if (cli_help_asked(argc, argv))
		return cli_help(&check_help);
	if (cli_take_config(&argc, argv, &path) != 0)
		return cli_usage(&check_help, "-c needs a file name");
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--changed") == 0 || strcmp(argv[i], "-n") == 0)
			changed = true;
		else
			return cli_usage(&check_help, "unexpected argument '%s'", argv[i]);
	}
	char err[512];
	struct tern_config *c = conf_load(path, err, sizeof(err));
	if (!c) {
		fprintf(stderr, "tern: %s\n", err);
		return 1;
	}
	struct check ck = {0};
	conf_report_warnings(c, stderr);
	check_user(&ck, c);
	check_data_dir(&ck, c);
	check_tls(&ck, c);
	check_ca_file(&ck, c);
	check_oauth(&ck, c);
	check_dkim(&ck, c);
	if (!smtp_arc_key_usable(c, err, sizeof(err))) /* ARC: the sealing key (verify_arc.h) */
		error(&ck, "%s", err);
	if (changed)
		conf_print_changed(c, stdout);
	else
		conf_print(c, stdout);
	conf_unref(c);
	if (ck.errors)
		fprintf(stderr,
		        "tern: %u error%s: tern serve would refuse this config or fail "
		        "soon after starting\n",
		        ck.errors, ck.errors == 1 ? "" : "s");
	return ck.errors ? 1 : 0;
}
