/*
 * user.c — `tern user add|passwd|del|list`: edits the users file named by
 * the config (users_file). The running daemon picks changes up on SIGHUP.
 * Passwords come from a terminal prompt (echo off) or, with
 * --password-stdin, from the first line of standard input; never from the
 * command line, where other users could read them in ps.
 */
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "auth/auth.h"
#include "cli/cli.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/privsep.h"

#define PASSWORD_MAX 1024

static int read_password_line(FILE *in, char *out, size_t outlen)
{
	if (!fgets(out, (int)outlen, in))
		return -1;
	size_t n = strlen(out);
	if (n > 0 && out[n - 1] == '\n')
		out[--n] = '\0';
	else if (!feof(in))
		return -1; /* longer than the buffer */
	if (n > 0 && out[n - 1] == '\r')
		out[--n] = '\0';
	return n > 0 ? 0 : -1;
}

static int prompt_password(char *out, size_t outlen)
{
	if (!isatty(STDIN_FILENO)) {
		fprintf(stderr, "tern: no terminal to ask for a password; use --password-stdin\n");
		return -1;
	}
	struct termios old, quiet;
	tcgetattr(STDIN_FILENO, &old);
	quiet = old;
	quiet.c_lflag &= ~(tcflag_t)ECHO;
	char again[PASSWORD_MAX];
	int rc = -1;
	tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
	fprintf(stderr, "Password: ");
	if (read_password_line(stdin, out, outlen) == 0) {
		fprintf(stderr, "\nAgain: ");
		if (read_password_line(stdin, again, sizeof(again)) == 0)
			rc = strcmp(out, again) == 0 ? 0 : -2;
	}
	fprintf(stderr, "\n");
	tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
	memset(again, 0, sizeof(again));
	if (rc == -2)
		fprintf(stderr, "tern: the passwords differ\n");
	return rc == 0 ? 0 : -1;
}

/* The daemon drops to conf->user: as root, hand the file (and a data dir
 * we had to create) to that account so the daemon can read it on SIGHUP —
 * unless only root can change its path: then the daemon's privileged parent
 * reads it as root (core/privsep.h), and it stays root's. */
static void give_to_daemon_user(const struct tern_config *conf, const char *file, bool in_data)
{
	/* A file in the data dir is read with the daemon user's rights (as
	 * apikeys.db is), wherever the data dir is. */
	if (geteuid() != 0 || !conf->user || !*conf->user ||
	    (!in_data && privsep_path_root_safe(file)))
		return;
	struct passwd *pw = getpwnam(conf->user);
	if (!pw)
		return;
	/* A group other than root's was chosen by an operator (group dovecot,
	 * for Dovecot's passdb): keep it. */
	struct stat st;
	gid_t gid = stat(file, &st) == 0 && st.st_gid != 0 ? (gid_t)-1 : pw->pw_gid;
	if (chown(file, pw->pw_uid, gid) != 0)
		fprintf(stderr, "tern: warning: cannot chown %s to %s: %s\n", file, conf->user,
		        strerror(errno));
}

/* An address as the user typed it, safe to print (control bytes as '?'). */
static const char *printable(const char *s, char *buf, size_t n)
{
	size_t k = 0;
	for (; *s && k + 4 < n; s++)
		buf[k++] = ((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s;
	if (*s)
		k += (size_t)snprintf(buf + k, n - k, "...");
	buf[k] = '\0';
	return buf;
}

/*
 * Whether a user can be created for addr (auth.h, users_check_mailbox):
 * an address RCPT TO and local delivery can both use. Says why not; says
 * too when mail to it would not be delivered here (a submission-only
 * user, which is allowed).
 */
static bool mailbox_usable(const struct tern_config *conf, const char *addr, bool ui_admin)
{
	char shown[300];
	const char *why;
	if (users_check_mailbox(addr, &why) != TERN_OK) {
		fprintf(stderr, "tern: cannot add '%s': %s\n",
		        printable(addr, shown, sizeof(shown)), why);
		return false;
	}
	const char *domain = strrchr(addr, '@') + 1;
	if (!ui_admin && !conf_is_local_domain(conf, domain, strlen(domain)))
		fprintf(stderr,
		        "tern: note: %s is not in local_domains: this user can authenticate, but "
		        "mail to it is not delivered here\n",
		        printable(domain, shown, sizeof(shown)));
	return true;
}

static void print_addr(const char *addr, void *arg)
{
	printf("%s\n", addr);
}

static const struct cli_help user_help = {
    "tern user",
    "tern user add ADDRESS [--password-stdin] [-c FILE]\n"
    "tern user passwd ADDRESS [--password-stdin] [-c FILE]\n"
    "tern user del ADDRESS [-c FILE]\n"
    "tern user list [-c FILE]\n"
    "tern user add|passwd|del|list ... --ui-admin",
    "Manages the users of the users_file the config names (passwd-file format,\n"
    "crypt(3) hashes): who may log in for submission and POP3, and whose\n"
    "mailboxes exist. A running server applies changes on SIGHUP.\n"
    "  --password-stdin    read the password from the first line of standard\n"
    "                      input (default: ask twice on the terminal; never on\n"
    "                      the command line, where ps would show it)\n"
    "  --ui-admin          the admins of the web UI of `tern serve` (/ui/ on the\n"
    "                      http listener) instead: DATA/ui-admins, same format;\n"
    "                      a running server applies changes on SIGHUP too\n"
    "  -c, --config FILE   the configuration file\n"};

static int usage(void)
{
	return cli_usage(&user_help, NULL);
}

int cmd_user(int argc, char **argv)
{
	const char *path;
	if (cli_help_asked(argc, argv))
		return cli_help(&user_help);
	if (cli_take_config(&argc, argv, &path) != 0 || argc < 2)
		return usage();
	if (strcmp(argv[1], "add") != 0 && strcmp(argv[1], "passwd") != 0 &&
	    strcmp(argv[1], "del") != 0 && strcmp(argv[1], "list") != 0)
		return cli_usage(&user_help, "unknown subcommand '%s'", argv[1]);
	bool from_stdin = false, ui_admin = false;
	int nargs = 0;
	const char *args[3];
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--password-stdin") == 0)
			from_stdin = true;
		else if (strcmp(argv[i], "--ui-admin") == 0)
			ui_admin = true;
		else if (nargs < 3)
			args[nargs++] = argv[i];
		else
			return usage();
	}
	const char *sub = args[0];
	if (strcmp(sub, "list") == 0 ? nargs != 1 : nargs != 2)
		return usage();
	char err[512];
	struct tern_config *conf = conf_load(path, err, sizeof(err));
	if (!conf) {
		fprintf(stderr, "tern: %s\n", err);
		return 1;
	}
	int status = 1;
	char password[PASSWORD_MAX];
	password[0] = '\0';
	char admins[4096];
	snprintf(admins, sizeof(admins), "%s/ui-admins", conf->data_dir);
	const char *file = ui_admin ? admins : conf->users_file;

	if (strcmp(sub, "list") == 0 && nargs == 1) {
		struct user_db *db = NULL;
		if (users_load(file, &db, err, sizeof(err)) != TERN_OK) {
			fprintf(stderr, "tern: %s\n", err);
			goto out;
		}
		users_foreach(db, print_addr, NULL);
		users_free(db);
		status = 0;
		goto out;
	}
	if (nargs != 2) {
		status = usage();
		goto out;
	}
	const char *addr = args[1];
	int rc;
	if (strcmp(sub, "add") == 0 && !mailbox_usable(conf, addr, ui_admin))
		goto out; /* before the password prompt: nothing to type for nothing */
	if (strcmp(sub, "add") == 0 || strcmp(sub, "passwd") == 0) {
		/* The users file usually lives in the data dir, which may not exist yet. */
		if (mkdir(conf->data_dir, 0750) == 0 && geteuid() == 0) {
			struct passwd *pw = conf->user && *conf->user ? getpwnam(conf->user) : NULL;
			if (pw && chown(conf->data_dir, pw->pw_uid, pw->pw_gid) != 0)
				fprintf(stderr, "tern: warning: cannot chown %s\n", conf->data_dir);
		}
		int got = from_stdin ? read_password_line(stdin, password, sizeof(password))
		                     : prompt_password(password, sizeof(password));
		if (got != 0) {
			fprintf(stderr, "tern: no usable password given\n");
			goto out;
		}
		rc = strcmp(sub, "add") == 0 ? users_file_add(file, addr, password)
		                             : users_file_passwd(file, addr, password);
	} else if (strcmp(sub, "del") == 0) {
		rc = users_file_del(file, addr);
	} else {
		status = usage();
		goto out;
	}
	switch (rc) {
	case TERN_OK:
		give_to_daemon_user(conf, file, ui_admin);
		printf("%s: %s done in %s (send SIGHUP to a running tern to apply)\n", addr, sub,
		       file);
		status = 0;
		break;
	case TERN_EEXIST:
		fprintf(stderr, "tern: %s already exists in %s\n", addr, file);
		break;
	case TERN_ENOTFOUND:
		fprintf(stderr, "tern: no user %s in %s\n", addr, file);
		break;
	case TERN_EINVAL:
		fprintf(stderr,
		        "tern: '%s' is not a valid address (local@domain) or the password "
		        "has a newline\n",
		        addr);
		break;
	default:
		fprintf(stderr, "tern: cannot update %s: %s\n", file, tern_strerror(rc));
		break;
	}
out:
	memset(password, 0, sizeof(password));
	conf_unref(conf);
	return status;
}
