/*
 * suppress.c — `tern suppress list|add|del`: the suppression list
 * (store/suppress.h) read and changed on DATA/suppress.db directly, so it
 * works whether the daemon runs or not; the daemon queries the file on each
 * delivery, so a change counts from the next attempt on.
 *
 * Never: prints stored bytes unfiltered (addresses and details came from
 * the network), or accepts an address that is not an addr-spec.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/timefmt.h"
#include "store/suppress.h"

static const struct cli_help suppress_help = {
    "tern suppress",
    "tern suppress list [--domain D | --global] [--json] [-c FILE]\n"
    "tern suppress add ADDRESS [--domain D] [--reason R] [--detail TEXT] [-c FILE]\n"
    "tern suppress del ADDRESS [--domain D] [-c FILE]",
    "The suppression list: addresses tern does not send to (reported as\n"
    "suppressed). Entries belong to a sending domain (--domain) or, without\n"
    "it, to the global list, which applies to every sender.\n"
    "  list      every entry (--domain D: that domain's; --global: the global list)\n"
    "  add       add an address (--reason bounce|complaint|unsubscribe|manual,\n"
    "            default manual)\n"
    "  del       remove an address\n"
    "  --json    one JSON array of {scope, address, reason, detail, created, queue_id}\n"};

/* Stored text, safe for a terminal and inside a JSON string: controls,
 * quotes, backslashes and 8-bit bytes as '?'. */
static const char *shown(const char *s, char *buf, size_t n)
{
	size_t k = 0;
	for (; *s && k + 1 < n; s++) {
		unsigned char c = (unsigned char)*s;
		buf[k++] = (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') ? '?' : (char)c;
	}
	buf[k] = '\0';
	return buf;
}

struct list_ctx {
	bool json;
	size_t n;
};

static bool print_entry(const struct suppress_entry *e, void *arg)
{
	struct list_ctx *l = arg;
	char a[SUPPRESS_ADDR_MAX], d[512], t[TERN_RFC3339_MAX];
	tern_rfc3339(e->created, t, sizeof(t));
	if (l->json)
		printf("%s\n  {\"scope\": \"%s\", \"address\": \"%s\", \"reason\": \"%s\", "
		       "\"detail\": \"%s\", \"created\": \"%s\", \"queue_id\": \"%s\"}",
		       l->n ? "," : "", e->scope, shown(e->addr, a, sizeof(a)),
		       suppress_reason_name(e->reason), shown(e->detail, d, sizeof(d)), t,
		       e->queue_id);
	else
		printf("%-24s %-40s %-12s %s %s %s\n", e->scope[0] ? e->scope : "(global)",
		       shown(e->addr, a, sizeof(a)), suppress_reason_name(e->reason), t,
		       e->queue_id[0] ? e->queue_id : "-", shown(e->detail, d, sizeof(d)));
	l->n++;
	return true;
}

int cmd_suppress(int argc, char **argv)
{
	const char *path = NULL;
	if (cli_help_asked(argc, argv))
		return cli_help(&suppress_help);
	if (cli_take_config(&argc, argv, &path) != 0 || argc < 2)
		return cli_usage(&suppress_help, argc < 2 ? "no subcommand given" : NULL);
	const char *sub = argv[1];
	const char *addr = NULL, *domain = NULL, *detail = NULL;
	bool json = false, global = false;
	enum suppress_reason reason = SUPPRESS_MANUAL;
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--json") == 0) {
			json = true;
		} else if (strcmp(a, "--global") == 0) {
			global = true;
		} else if (strcmp(a, "--domain") == 0 && v) {
			domain = v;
			i++;
		} else if (strcmp(a, "--detail") == 0 && v) {
			detail = v;
			i++;
		} else if (strcmp(a, "--reason") == 0 && v) {
			if (!suppress_reason_parse(v, &reason))
				return cli_usage(&suppress_help, "unknown reason '%s'", v);
			i++;
		} else if (a[0] != '-' && !addr) {
			addr = a;
		} else {
			return cli_usage(&suppress_help, "unexpected argument '%s'", a);
		}
	}
	bool is_list = strcmp(sub, "list") == 0;
	if (!is_list && strcmp(sub, "add") != 0 && strcmp(sub, "del") != 0)
		return cli_usage(&suppress_help, "unknown subcommand '%s'", sub);
	if (is_list ? addr != NULL : !addr)
		return cli_usage(&suppress_help,
		                 is_list ? "list takes no address" : "%s needs an ADDRESS", sub);
	if (global && domain)
		return cli_usage(&suppress_help, "--global and --domain exclude each other");
	char norm[SUPPRESS_ADDR_MAX];
	if (addr && !suppress_norm_addr(addr, norm, sizeof(norm))) {
		fprintf(stderr, "tern: '%s' is not an address\n", addr);
		return 2;
	}
	if (domain && (strchr(domain, '@') || !*domain)) {
		fprintf(stderr, "tern: --domain wants a domain name, not '%s'\n", domain);
		return 2;
	}

	char err[512];
	struct tern_config *c = conf_load(path, err, sizeof(err));
	if (!c) {
		fprintf(stderr, "tern: %s\n", err);
		return 1;
	}
	int status = 1;
	struct suppress_db *db = NULL;
	if (suppress_open(c->data_dir, &db, err, sizeof(err)) != TERN_OK) {
		fprintf(stderr, "tern: %s\n", err);
		goto out;
	}
	const char *scope = domain ? domain : "";
	if (is_list) {
		struct list_ctx l = {.json = json};
		if (json)
			fputs("[", stdout);
		int n = suppress_list(db, domain || global ? scope : NULL, print_entry, &l);
		if (json)
			fputs(l.n ? "\n]\n" : "]\n", stdout);
		if (n < 0) {
			fprintf(stderr, "tern: cannot read the suppression list: %s\n",
			        tern_strerror(n));
			goto out;
		}
		status = 0;
	} else if (strcmp(sub, "add") == 0) {
		int rc = suppress_add(db, scope, norm, reason,
		                      detail ? detail : "added by tern suppress", NULL);
		if (rc != TERN_OK) {
			fprintf(stderr, "tern: cannot add %s: %s\n", norm, tern_strerror(rc));
			goto out;
		}
		printf("suppressed %s (%s, %s)\n", norm, domain ? domain : "global",
		       suppress_reason_name(reason));
		status = 0;
	} else {
		int rc = suppress_del(db, scope, norm);
		if (rc == TERN_ENOTFOUND) {
			fprintf(stderr, "tern: %s is not on the %s list\n", norm,
			        domain ? domain : "global");
			goto out;
		}
		if (rc != TERN_OK) {
			fprintf(stderr, "tern: cannot remove %s: %s\n", norm, tern_strerror(rc));
			goto out;
		}
		printf("removed %s (%s)\n", norm, domain ? domain : "global");
		status = 0;
	}
out:
	suppress_close(db);
	conf_unref(c);
	return status;
}
