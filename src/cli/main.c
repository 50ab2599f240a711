/*
 * main.c — the tern program: picks the subcommand. Invoked as "sendmail",
 * "mailq" or "newaliases" (a link to tern) it behaves like that command,
 * with sendmail(1)'s own options (no --help there: sendmail has none).
 *
 * Every other command answers --help on stdout with exit 0 and a usage
 * error on stderr with exit 2 (usage.c); -V, --version and "version" print
 * the version.
 */
#include <stdio.h>
#include <string.h>

#include <sqlite3.h>

#include "cli/cli.h"

static const struct command {
	const char *name;
	int (*run)(int argc, char **argv);
} commands[] = {
    /* one command a line, so that additions merge cleanly */
    /* clang-format off */
    {"serve", cmd_serve},
    {"capture", cmd_capture},
    {"check-config", cmd_check_config},
    {"user", cmd_user},
    {"queue", cmd_queue},
    {"log", cmd_log},
    {"spf", cmd_spf},
    {"dkim", cmd_dkim},
    {"dovecot-config", cmd_dovecot_config},
    {"arc", cmd_arc},
    {"milter", cmd_milter},
    {"apikey", cmd_apikey},
    {"dmarc", cmd_dmarc},
    {"sendmail", cmd_sendmail},
    {"suppress", cmd_suppress},
    {"events", cmd_events},
    {"webhook", cmd_webhook},
    {"archive", cmd_archive},
    {"stats", cmd_stats},
    /* clang-format on */
};

static const struct cli_help help = {
    "tern",
    "tern COMMAND [options]\n"
    "tern help COMMAND | tern COMMAND --help\n"
    "tern -V | --version | version",
    "Commands:\n"
    "  serve [-c FILE]            run the mail server (embedded default without -c)\n"
    "  capture [-c FILE] [--smtp IP:PORT] [--http IP:PORT] [--data-dir DIR]\n"
    "                             catch all mail for testing; web UI and Mailpit API\n"
    "  check-config [-c FILE] [--changed]\n"
    "                             validate the config and the files it names; print\n"
    "                             it with defaults (--changed: only what differs)\n"
    "  user add|passwd|del|list   manage users (passwd-file); --password-stdin\n"
    "  queue list|show|delete|hold|release|flush|damaged\n"
    "                             inspect and control the queue of a running server\n"
    "  log trace ID|MESSAGE-ID [FILE|-]\n"
    "                             every log line of one message's life\n"
    "  spf check [--dns IP[@PORT]] [--helo NAME] IP MAILFROM\n"
    "                             what SPF says of a client, its HELO and a sender\n"
    "  dkim keygen|dns|check|sign|verify\n"
    "                             DKIM keys, their DNS records, signing tools\n"
    "  dovecot-config [-c FILE]   print a Dovecot config serving tern's mailboxes (IMAP)\n"
    "  arc verify|seal            validate or add an ARC Set (RFC 8617)\n"
    "  milter test --milter SPEC < MSG\n"
    "                             run a message through a milter (rspamd, ...)\n"
    "  apikey create|list|limits|revoke\n"
    "                             keys of the HTTP sending API (serve's http listener)\n"
    "  dmarc send-reports|report  DMARC aggregate reports: send now; show received\n"
    "  suppress list|add|del      the suppression list (bounces, complaints, unsubscribes)\n"
    "  sendmail [-t] [-i] [-f ADDR] [RCPT ...]  submit a message as sendmail(1) does\n"
    "  events tail [--type T] [--recipient R] [--since TIME] [--follow]\n"
    "                             the stored events (delivered, bounced, ...)\n"
    "  webhook add|list|del|enable|attempts\n"
    "                             signed webhook endpoints for events\n"
    "  archive search|show|export|hold|release\n"
    "                             the message archive: search, original bytes, mbox/zip\n"
    "  stats [--since AGE] [--group domain|key|tag|provider]\n"
    "                             delivery statistics from the stored events\n"
    "  version                    print the version\n"
    "\n"
    "Exit status: 0 success, 1 failure, 2 usage error.\n"
    "Manual: tern(8), tern.conf(5), tern-capture(1).\n"};

/* sendmail(1) has no --help (its options are single letters, and "--help"
 * is an unknown option there, exit 64 as Postfix's); "tern help sendmail"
 * is where its summary lives. */
static const struct cli_help sendmail_help = {
    "tern sendmail",
    "tern sendmail [-t] [-i] [-f ADDR] [-F NAME] [-N DSN] [-R full|hdrs] [-V ENVID] [RCPT ...]\n"
    "tern sendmail -bs | -bp | -q | -bi",
    "Submits a message read from standard input, as sendmail(1) does (a link\n"
    "named sendmail, mailq or newaliases to tern behaves the same). The message\n"
    "goes to the running server's submit socket, or, while it is down, to the\n"
    "maildrop in the data directory, picked up at the next start.\n"
    "  -t           take recipients from To, Cc and Bcc\n"
    "  -i, -oi      a lone dot does not end the message\n"
    "  -f ADDR      envelope sender (root only for other users' addresses)\n"
    "  -bs          speak SMTP on stdin/stdout\n"
    "  -bp, mailq   list the queue\n"
    "  -q           flush the queue\n"
    "  -C FILE      the config file\n"
    "Exit status: sendmail's (sysexits.h): 0, 64 usage, 75 temporary, ...\n"};

int main(int argc, char **argv)
{
	/* Before any SQLite use: no allocation statistics (nothing reads them),
	 * so SQLite's malloc and free skip a global mutex each (callgrind: a
	 * tenth of the events writer's instructions). */
	sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
	const char *base = argc > 0 && argv[0] ? strrchr(argv[0], '/') : NULL;
	base = base ? base + 1 : (argc > 0 && argv[0] ? argv[0] : "tern");
	if (strcmp(base, "sendmail") == 0 || strcmp(base, "mailq") == 0 ||
	    strcmp(base, "newaliases") == 0)
		return cmd_sendmail(argc, argv);
	if (argc < 2)
		return cli_usage(&help, "no command given");
	const char *cmd = argv[1];
	if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0 ||
	    strcmp(cmd, "-V") == 0) {
		printf("tern %s\n", TERN_VERSION);
		return 0;
	}
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0)
		return cli_help(&help);
	bool help_of = strcmp(cmd, "help") == 0;
	if (help_of && argc == 2)
		return cli_help(&help);
	if (help_of && argc > 3)
		return cli_usage(&help, "help takes one command");
	const char *name = help_of ? argv[2] : cmd;
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(name, commands[i].name) != 0)
			continue;
		if (help_of && commands[i].run == cmd_sendmail)
			return cli_help(&sendmail_help);
		if (help_of) {
			/* "tern help user" is "tern user --help". */
			char *args[] = {argv[2], (char *)"--help", NULL};
			return commands[i].run(2, args);
		}
		return commands[i].run(argc - 1, argv + 1);
	}
	return cli_usage(&help, "unknown command '%s'", name);
}
