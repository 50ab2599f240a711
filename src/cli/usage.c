/*
 * usage.c — the one style every tern subcommand uses to talk about its own
 * command line: --help prints the synopsis and the options on stdout and
 * exits 0; a usage error prints why and the synopsis on stderr and exits 2
 * (the convention of getopt-based Unix tools, so scripts can tell "you
 * called me wrong" from "the work failed").
 *
 * Must never: print help on stderr, or exit 0 on a usage error.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static void print_synopsis(FILE *out, const char *synopsis)
{
	const char *p = synopsis;
	bool first = true;
	while (*p) {
		const char *nl = strchr(p, '\n');
		size_t n = nl ? (size_t)(nl - p) : strlen(p);
		fprintf(out, "%s%.*s\n", first ? "usage: " : "       ", (int)n, p);
		first = false;
		p += n;
		if (*p == '\n')
			p++;
	}
}

bool cli_help_asked(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0)
			return false;
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
			return true;
	}
	return false;
}

int cli_help(const struct cli_help *h)
{
	print_synopsis(stdout, h->synopsis);
	if (h->text && *h->text)
		printf("\n%s", h->text);
	fflush(stdout);
	return 0;
}

int cli_usage(const struct cli_help *h, const char *fmt, ...)
{
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		fputs("tern: ", stderr);
		vfprintf(stderr, fmt, ap);
		fputc('\n', stderr);
		va_end(ap);
	}
	print_synopsis(stderr, h->synopsis);
	fprintf(stderr, "Try '%s --help' for more.\n", h->name);
	return 2;
}
