/*
 * dovecot.c — `tern dovecot-config`: prints a complete Dovecot 2.3
 * configuration that serves tern's mailboxes and users over IMAP (and,
 * when asked, POP3) as they are: nothing converted, nothing duplicated.
 *
 * Owns: what Dovecot must be told to agree with tern —
 *   - accounts: tern's users file is Dovecot's passwd-file format;
 *   - mail: DATA/mail/DOMAIN/LOCAL/ Maildir++ (deliver/deliver.h), every
 *     file owned by the account tern runs as (`user`), so a static userdb
 *     with that uid/gid and nothing else may touch them;
 *   - the Junk (and Sent, Drafts, Trash) folders, created for every user;
 *   - POP3 agreement with tern's own POP3 (pop3/pop3.h): the same UIDLs
 *     (pop3_uidl_format = %f) and the same session lock
 *     (pop3_lock_session = yes);
 *   - TLS from tern's own tls { } certificate.
 * Never: writes any file (it prints; the operator installs), or prints a
 * configuration it knows cannot work (no such account, mail as root).
 */
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/conf.h"

struct dc_opts {
	const char *listen;
	unsigned imap_port, imaps_port, pop3_port, pop3s_port;
	const char *base_dir, *state_dir, *log_path;
};

static const struct cli_help dovecot_help = {
    "tern dovecot-config",
    "tern dovecot-config [-c FILE] [--listen ADDRS] [--imap-port N] [--imaps-port N]\n"
    "                    [--pop3-port N] [--pop3s-port N] [--base-dir DIR]\n"
    "                    [--state-dir DIR] [--log-path FILE]",
    "Prints a Dovecot 2.3 configuration serving tern's mailboxes and users.\n"
    "Defaults: --listen \"*, ::\", IMAP on 143 (and 993 with tern's tls { }),\n"
    "no POP3 (tern serves it; a port given turns Dovecot's on), Dovecot's own\n"
    "base, state and log places.\n"};

static int usage(void)
{
	return cli_usage(&dovecot_help, NULL);
}

static bool parse_port(const char *s, unsigned *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v > 65535 || s[0] == '-' || s[0] == '+')
		return false;
	*out = (unsigned)v;
	return true;
}

/* An absolute form of path (relative to the current directory), which
 * need not exist yet; false if it does not fit. */
static bool absolute(const char *path, char *out, size_t outlen)
{
	char cwd[PATH_MAX];
	if (realpath(path, out) != NULL)
		return strlen(out) < outlen;
	if (path[0] == '/')
		return snprintf(out, outlen, "%s", path) < (int)outlen;
	if (!getcwd(cwd, sizeof(cwd)))
		return false;
	const char *rel = strncmp(path, "./", 2) == 0 ? path + 2 : path;
	int n = snprintf(out, outlen, "%s/%s", cwd, rel);
	return n > 0 && (size_t)n < outlen;
}

/* Dovecot reads values up to the end of the line; a path with a newline,
 * a '#' or a quote would not survive. */
static bool safe_value(const char *s)
{
	return strpbrk(s, "\n\r#\"'") == NULL;
}

/* Whether Dovecot's auth process (default_internal_user "dovecot") can
 * read the users file: owned by it, in its group with g+r, or o+r. */
static bool dovecot_can_read(const struct stat *st, char *why, size_t whylen)
{
	struct passwd *dpw = getpwnam("dovecot");
	struct group *dgr = getgrnam("dovecot");
	if (dpw && st->st_uid == dpw->pw_uid && (st->st_mode & S_IRUSR))
		return true;
	if (dgr && st->st_gid == dgr->gr_gid && (st->st_mode & S_IRGRP))
		return true;
	if (st->st_mode & S_IROTH)
		return true;
	snprintf(why, whylen, "mode %04o, group %s", (unsigned)(st->st_mode & 07777),
	         getgrgid(st->st_gid) ? getgrgid(st->st_gid)->gr_name : "?");
	return false;
}

static void print_config(FILE *out, const struct tern_config *c, const struct dc_opts *o,
                         const struct passwd *pw, const char *data_dir, const char *users,
                         const char *cert, const char *key, const char *users_note)
{
	bool tls = cert != NULL;
	unsigned imaps = tls ? o->imaps_port : 0, pop3s = tls ? o->pop3s_port : 0;
	bool pop3 = o->pop3_port || pop3s;

	fprintf(out,
	        "# Dovecot 2.3 configuration for tern's mailboxes and users, printed by\n"
	        "# `tern dovecot-config` from %s.\n"
	        "# Install it as /etc/dovecot/dovecot.conf (it is complete: it replaces\n"
	        "# Debian's conf.d files) and restart Dovecot. Print it again after changing\n"
	        "# data_dir, users_file, user or tls in tern's config.\n\n",
	        c->source);
	fprintf(out, "protocols = imap%s\nlisten = %s\n", pop3 ? " pop3" : "", o->listen);
	if (o->base_dir)
		fprintf(out, "base_dir = %s\n", o->base_dir);
	if (o->state_dir)
		fprintf(out, "state_dir = %s\n", o->state_dir);
	if (o->log_path)
		fprintf(out, "log_path = %s\n", o->log_path);

	fprintf(out,
	        "\n# Accounts: tern's users file is Dovecot's passwd-file format. Dovecot's\n"
	        "# auth process runs as user \"dovecot\" and must be able to read it:\n"
	        "#   chgrp dovecot %s && chmod 0640 %s\n"
	        "# (`tern user add|passwd|del` keep that mode and group from then on).%s%s\n"
	        "auth_mechanisms = plain login\n"
	        "passdb {\n"
	        "  driver = passwd-file\n"
	        "  args = scheme=CRYPT %s\n"
	        "}\n",
	        users, users, users_note ? "\n# NOTE: " : "", users_note ? users_note : "", users);
	fprintf(out,
	        "\n# Mail: DATA/mail/DOMAIN/USER/, a Maildir++ per user, every file owned by\n"
	        "# the account tern runs as (user = \"%s\"), which Dovecot uses too.\n"
	        "# The users file first, for a user's own userdb_quota_rule (extra field),\n"
	        "# then the static fields every user has.\n"
	        "userdb {\n"
	        "  driver = passwd-file\n"
	        "  args = username_format=%%Lu %s\n"
	        "  result_success = continue-ok\n"
	        "  result_failure = continue\n"
	        "}\n"
	        "userdb {\n"
	        "  driver = static\n"
	        "  args = uid=%lu gid=%lu home=%s/mail/%%Ld/%%Ln\n"
	        "}\n"
	        "first_valid_uid = %lu\n"
	        "last_valid_uid = %lu\n"
	        "first_valid_gid = %lu\n"
	        "last_valid_gid = %lu\n"
	        "mail_location = maildir:~\n",
	        pw->pw_name, users, (unsigned long)pw->pw_uid, (unsigned long)pw->pw_gid, data_dir,
	        (unsigned long)pw->pw_uid, (unsigned long)pw->pw_uid, (unsigned long)pw->pw_gid,
	        (unsigned long)pw->pw_gid);
	fprintf(out, "\nnamespace inbox {\n"
	             "  inbox = yes\n"
	             "  separator = .\n"
	             "  mailbox Drafts {\n    special_use = \\Drafts\n    auto = subscribe\n  }\n"
	             "  mailbox Junk {\n    special_use = \\Junk\n    auto = subscribe\n  }\n"
	             "  mailbox Sent {\n    special_use = \\Sent\n    auto = subscribe\n  }\n"
	             "  mailbox Trash {\n    special_use = \\Trash\n    auto = subscribe\n  }\n"
	             "}\n");
	/* The quota both count: Maildir++ maildirsize (tern's mailbox { quota }). */
	fprintf(out,
	        "\n# Quota: the Maildir++ maildirsize file that tern's delivery keeps too, so\n"
	        "# both agree on usage. The default is tern's mailbox { quota }; a user's\n"
	        "# userdb_quota_rule=*:storage=SIZE in the users file overrides it.\n"
	        "mail_plugins = $mail_plugins quota\n"
	        "protocol imap {\n"
	        "  mail_plugins = $mail_plugins imap_quota\n"
	        "}\n"
	        "plugin {\n"
	        "  quota = maildir:User quota\n");
	if (c->mailbox.quota > 0)
		fprintf(out, "  quota_rule = *:storage=%lluB\n",
		        (unsigned long long)c->mailbox.quota);
	else
		fprintf(out, "  # mailbox { quota = 0; } in tern: no limit\n");
	fprintf(out, "}\n");
	fprintf(out,
	        "\n# POP3, here or in tern: the same UIDLs (the Maildir file's base name) and\n"
	        "# the same session lock (dovecot-pop3-session.lock), so users can move\n"
	        "# between the two and never have two POP3 sessions on one mailbox.\n"
	        "pop3_uidl_format = %%f\n"
	        "pop3_lock_session = yes\n");
	if (tls)
		fprintf(out,
		        "\n# TLS with tern's certificate (tls { } in its config).\n"
		        "ssl = required\n"
		        "ssl_cert = <%s\n"
		        "ssl_key = <%s\n"
		        "ssl_min_protocol = TLSv1.2\n",
		        cert, key);
	else
		fprintf(out,
		        "\n# No tls { } in tern's config: no TLS here either, so passwords are\n"
		        "# only accepted from this host (disable_plaintext_auth). Configure\n"
		        "# tls { cert_file; key_file; } in tern and print this again.\n"
		        "ssl = no\n");
	fprintf(out, "disable_plaintext_auth = yes\n");
	fprintf(out,
	        "\nservice imap-login {\n"
	        "  inet_listener imap {\n    port = %u\n  }\n"
	        "  inet_listener imaps {\n    port = %u\n    ssl = yes\n  }\n"
	        "}\n",
	        o->imap_port, imaps);
	if (pop3)
		fprintf(out,
		        "service pop3-login {\n"
		        "  inet_listener pop3 {\n    port = %u\n  }\n"
		        "  inet_listener pop3s {\n    port = %u\n    ssl = yes\n  }\n"
		        "}\n",
		        o->pop3_port, pop3s);
}

int cmd_dovecot_config(int argc, char **argv)
{
	const char *path;
	struct dc_opts o = {
	    .listen = "*, ::", .imap_port = 143, .imaps_port = 993, .pop3s_port = 995};
	bool pop3s_given = false;
	if (cli_help_asked(argc, argv))
		return cli_help(&dovecot_help);
	if (cli_take_config(&argc, argv, &path) != 0)
		return usage();
	/* Options come in pairs: NAME VALUE. */
	for (int i = 1; i < argc; i += 2) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v)
			return usage();
		unsigned *port = strcmp(a, "--imap-port") == 0    ? &o.imap_port
		                 : strcmp(a, "--imaps-port") == 0 ? &o.imaps_port
		                 : strcmp(a, "--pop3-port") == 0  ? &o.pop3_port
		                 : strcmp(a, "--pop3s-port") == 0 ? &o.pop3s_port
		                                                  : NULL;
		if (port) {
			if (!parse_port(v, port)) {
				fprintf(stderr, "tern: %s: '%s' is not a port (0-65535)\n", a, v);
				return 2;
			}
			pop3s_given |= port == &o.pop3s_port;
		} else if (strcmp(a, "--listen") == 0) {
			o.listen = v;
		} else if (strcmp(a, "--base-dir") == 0) {
			o.base_dir = v;
		} else if (strcmp(a, "--state-dir") == 0) {
			o.state_dir = v;
		} else if (strcmp(a, "--log-path") == 0) {
			o.log_path = v;
		} else {
			return usage();
		}
	}
	/* POP3 is tern's unless a port asks Dovecot to serve it too. */
	if (!o.pop3_port && !pop3s_given)
		o.pop3s_port = 0;
	const char *vals[] = {o.listen, o.base_dir, o.state_dir, o.log_path};
	for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
		if (vals[i] && (!*vals[i] || !safe_value(vals[i]))) {
			fprintf(stderr, "tern: '%s' cannot go into a Dovecot config\n", vals[i]);
			return 2;
		}
	}

	char err[512];
	struct tern_config *c = conf_load(path, err, sizeof(err));
	if (!c) {
		fprintf(stderr, "tern: %s\n", err);
		return 1;
	}
	int status = 1;
	char data_dir[PATH_MAX], users[PATH_MAX], cert[PATH_MAX], key[PATH_MAX];
	struct passwd *found = c->user && *c->user ? getpwnam(c->user) : NULL;
	/* getpwnam's result is overwritten by the next lookup: keep a copy. */
	struct passwd acct = found ? *found : (struct passwd){0};
	const struct passwd *pw = found ? &acct : NULL;
	if (found && !(acct.pw_name = strdup(found->pw_name))) {
		fprintf(stderr, "tern: out of memory\n");
		goto out;
	}
	if (!pw) {
		fprintf(
		    stderr,
		    "tern: the account tern runs as (user = \"%s\") does not exist here; create "
		    "it first, e.g. adduser --system --group --no-create-home %s\n",
		    c->user ? c->user : "", c->user ? c->user : "vmail");
		goto out;
	}
	if (pw->pw_uid == 0 || pw->pw_gid == 0) {
		fprintf(stderr,
		        "tern: user = \"%s\" is root: Dovecot will not serve mail as root; "
		        "run tern as a dedicated account such as vmail\n",
		        c->user);
		goto out;
	}
	/* TLS: Dovecot gets tern's default certificate (the first; it has no SNI
	 * list to give the others to). */
	const struct conf_tls_cert *tc = c->tls.n_certs ? &c->tls.certs[0] : NULL;
	if (!absolute(c->data_dir, data_dir, sizeof(data_dir)) ||
	    !absolute(c->users_file, users, sizeof(users)) ||
	    (tc && (!absolute(tc->cert_file, cert, sizeof(cert)) ||
	            !absolute(tc->key_file, key, sizeof(key))))) {
		fprintf(stderr, "tern: a path in the config is too long\n");
		goto out;
	}
	if (!safe_value(data_dir) || !safe_value(users) ||
	    (tc && (!safe_value(cert) || !safe_value(key)))) {
		fprintf(stderr,
		        "tern: data_dir, users_file or a tls file has a character Dovecot's "
		        "config cannot hold (newline, '#', quote)\n");
		goto out;
	}
	if (strcmp(pw->pw_name, "nobody") == 0)
		fprintf(stderr,
		        "tern: note: mail belongs to \"nobody\", which other daemons share; "
		        "a dedicated account (user = \"vmail\") keeps it private\n");
	char why[128], note[PATH_MAX + 256];
	const char *users_note = NULL;
	struct stat st;
	if (stat(users, &st) == 0 && !dovecot_can_read(&st, why, sizeof(why))) {
		snprintf(note, sizeof(note),
		         "Dovecot cannot read %s now (%s): run the chgrp and chmod above.", users,
		         why);
		users_note = note;
		fprintf(stderr, "tern: note: %s\n", note);
	}
	print_config(stdout, c, &o, pw, data_dir, users, tc ? cert : NULL, tc ? key : NULL,
	             users_note);
	status = fflush(stdout) == 0 && !ferror(stdout) ? 0 : 1;
out:
	free(acct.pw_name);
	conf_unref(c);
	return status;
}
