/*
 * spf.c — `tern spf check`: an operator's view of what tern's SPF check
 * (src/policy/spf.h) says about a client, a HELO name and a sender, on the
 * same async resolver and code path the SMTP session uses.
 *
 *   tern spf check [--dns IP[@PORT]]... [--helo NAME] [--receiver NAME]
 *                  [--timeout MS] IP MAILFROM
 *
 * Prints each identity's result (HELO first, then MAIL FROM) with its
 * mechanism, problem and explanation, then the Received-SPF field tern
 * would add. MAILFROM "" or "<>" is the null reverse-path. Exit status 0
 * when the checks ran (whatever their results), 1 on a setup failure, 2 on
 * a usage error.
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/buf.h"
#include "core/err.h"
#include "dns/dns.h"
#include "policy/spf.h"

#define MAX_DNS 4

struct spf_cli {
	struct event_base *base;
	struct spf_request req;
	bool done;
	struct spf_verdict v;
};

static const struct cli_help spf_help = {
    "tern spf",
    "tern spf check [--dns IP[@PORT]]... [--helo NAME] [--receiver NAME] [--timeout MS]\n"
    "               IP MAILFROM",
    "Evaluates SPF (RFC 7208) as tern's mx listener would for a client at IP:\n"
    "the HELO identity, then MAIL FROM (\"\" or \"<>\": the null path).\n"
    "  --dns IP[@PORT]   resolver to ask (repeatable; default /etc/resolv.conf)\n"
    "  --helo NAME       the client's HELO/EHLO name\n"
    "  --receiver NAME   our host name, for %{r} in explanations\n"
    "  --timeout MS      DNS time budget (1..600000)\n"};

static void print_outcome(const struct spf_outcome *o)
{
	printf("%s: %s\n", spf_identity_name(o->identity), spf_result_name(o->result));
	printf("  domain: %s\n", o->domain);
	if (o->mechanism[0])
		printf("  mechanism: %s\n", o->mechanism);
	if (o->problem[0])
		printf("  problem: %s\n", o->problem);
	if (o->result == SPF_FAIL)
		printf("  explanation: %s\n", o->explanation);
	printf("  lookups: %u, void lookups: %u, DNS queries: %u\n", o->lookups, o->void_lookups,
	       o->queries);
}

static void on_done(void *arg, const struct spf_verdict *v)
{
	struct spf_cli *c = arg;
	c->v = *v;
	c->done = true;
	event_base_loopbreak(c->base);
}

int cmd_spf(int argc, char **argv)
{
	const char *dns[MAX_DNS];
	size_t n_dns = 0;
	struct spf_limits lim;
	struct spf_cli c;
	char host[256] = "";
	const char *args[2];
	size_t n_args = 0;
	int rc = 1;

	memset(&c, 0, sizeof(c));
	spf_limits_default(&lim);
	if (cli_help_asked(argc, argv))
		return cli_help(&spf_help);
	if (argc < 2 || strcmp(argv[1], "check") != 0)
		return cli_usage(&spf_help, NULL);
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		bool has_val = i + 1 < argc;
		if (strcmp(a, "--dns") == 0 && has_val) {
			if (n_dns == MAX_DNS) {
				return cli_usage(&spf_help, "at most %d --dns", MAX_DNS);
			}
			dns[n_dns++] = argv[++i];
		} else if (strcmp(a, "--helo") == 0 && has_val) {
			c.req.helo = argv[++i];
		} else if (strcmp(a, "--receiver") == 0 && has_val) {
			c.req.receiver = argv[++i];
		} else if (strcmp(a, "--timeout") == 0 && has_val) {
			char *end;
			unsigned long ms = strtoul(argv[++i], &end, 10);
			if (*end || ms == 0 || ms > 600000) {
				return cli_usage(&spf_help, "--timeout takes 1..600000 ms");
			}
			lim.timeout_ms = (unsigned)ms;
		} else if (a[0] == '-' && a[1] == '-') {
			return cli_usage(&spf_help, NULL);
		} else if (n_args < 2) {
			args[n_args++] = a;
		} else {
			return cli_usage(&spf_help, NULL);
		}
	}
	if (n_args != 2) {
		return cli_usage(&spf_help, NULL);
	}
	if (spf_ip_parse(args[0], &c.req.ip) != TERN_OK) {
		return cli_usage(&spf_help, "\"%s\" is not an IP address", args[0]);
	}
	c.req.mailfrom = strcmp(args[1], "<>") == 0 ? "" : args[1];
	if (!c.req.helo)
		c.req.helo = "";
	if (!c.req.receiver) {
		if (gethostname(host, sizeof(host) - 1) != 0)
			tern_strlcpy(host, "unknown", sizeof(host));
		c.req.receiver = host;
	}

	char err[256];
	struct dns_resolver *res = NULL;
	struct spf_async *a = NULL;
	c.base = event_base_new();
	if (!c.base) {
		fprintf(stderr, "tern spf: cannot create an event loop\n");
		goto out;
	}
	res = dns_resolver_new(c.base, n_dns ? dns : NULL, n_dns, NULL, err, sizeof(err));
	if (!res) {
		fprintf(stderr, "tern spf: %s\n", err);
		goto out;
	}
	a = spf_check_async(res, c.base, &c.req, &lim, on_done, &c);
	if (!a) {
		fprintf(stderr, "tern spf: out of memory\n");
		goto out;
	}
	event_base_dispatch(c.base);
	if (!c.done) {
		spf_check_async_cancel(a);
		fprintf(stderr, "tern spf: the event loop stopped before the check ended\n");
		goto out;
	}
	print_outcome(&c.v.helo);
	print_outcome(&c.v.mailfrom);
	struct tbuf h = TBUF_INIT(8192);
	if (spf_received_spf(&c.req, &c.v.mailfrom, &h) == TERN_OK)
		fwrite(h.data, 1, h.len, stdout);
	tbuf_reset(&h);
	if (spf_authres(&c.req, &c.v.mailfrom, &h) == TERN_OK)
		printf("Authentication-Results: %s; %s\r\n", c.req.receiver, h.data);
	tbuf_free(&h);
	rc = 0;
out:
	dns_resolver_free(res);
	if (c.base)
		event_base_free(c.base);
	return rc;
}
