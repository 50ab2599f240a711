/*
 * main.c — the tern program: picks the subcommand. Invoked as "sendmail",
 * "mailq" or "newaliases" (a link to tern) it behaves like that command.
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static void usage(FILE *out)
{
	fprintf(out,
		"usage: tern COMMAND [options]\n"
		"\n"
		"  serve [-c FILE]            run the mail server (embedded default without -c)\n"
		"  capture [-c FILE] [--smtp IP:PORT] [--http IP:PORT] [--data-dir DIR]\n"
		"                             catch all mail for testing; web UI and Mailpit API\n"
		"  check-config [-c FILE]     validate the config and print it with defaults\n"
		"  user add|passwd|del|list   manage users (passwd-file); --password-stdin\n"
		"  queue list|show|delete|hold|release|flush|damaged\n"
		"                             inspect and control the queue of a running server\n"
		"  sendmail [-t] [-i] [-f ADDR] [RCPT ...]  submit a message as sendmail(1) does\n"
		"  spf check [--dns IP[@PORT]] [--helo NAME] IP MAILFROM\n"
		"                             what SPF says of a client, its HELO and a sender\n"
		"  dkim keygen|dns|check|sign|verify  DKIM keys, their DNS records, signing tools\n"
		"  dovecot-config [-c FILE]   print a Dovecot config serving tern's mailboxes (IMAP)\n"
		"  version                    print the version\n");
}

int main(int argc, char **argv)
{
	const char *base = argc > 0 && argv[0] ? strrchr(argv[0], '/') : NULL;
	base = base ? base + 1 : (argc > 0 && argv[0] ? argv[0] : "tern");
	if (strcmp(base, "sendmail") == 0 || strcmp(base, "mailq") == 0 ||
	    strcmp(base, "newaliases") == 0)
		return cmd_sendmail(argc, argv);
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	if (strcmp(cmd, "serve") == 0)
		return cmd_serve(argc - 1, argv + 1);
	if (strcmp(cmd, "capture") == 0)
		return cmd_capture(argc - 1, argv + 1);
	if (strcmp(cmd, "check-config") == 0)
		return cmd_check_config(argc - 1, argv + 1);
	if (strcmp(cmd, "user") == 0)
		return cmd_user(argc - 1, argv + 1);
	if (strcmp(cmd, "queue") == 0)
		return cmd_queue(argc - 1, argv + 1);
	if (strcmp(cmd, "sendmail") == 0)
		return cmd_sendmail(argc - 1, argv + 1);
	if (strcmp(cmd, "spf") == 0)
		return cmd_spf(argc - 1, argv + 1);
	if (strcmp(cmd, "dkim") == 0)
		return cmd_dkim(argc - 1, argv + 1);
	if (strcmp(cmd, "dovecot-config") == 0)
		return cmd_dovecot_config(argc - 1, argv + 1);
	if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
		printf("tern %s\n", TERN_VERSION);
		return 0;
	}
	if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "tern: unknown command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
