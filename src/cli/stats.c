/*
 * stats.c — `tern stats`: the delivery statistics of GET /api/v1/stats
 * (store/stats.h) read from DATA/events.db by the command line, as a table
 * or as the API's JSON.
 *
 * Owns: only the command's options and its table.
 * Must never: write to the store (the daemon's writer owns it), or read the
 * options with another meaning than the API's parameters: they are turned
 * into a query string for the API's own parser (stats_query_parse).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "cli/cli.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/timefmt.h"
#include "http/stats_routes.h"
#include "store/events.h"
#include "store/stats.h"

static const struct cli_help stats_help = {
    "tern stats",
    "tern stats [--since AGE] [--group GROUP] [--bucket hour|day] [--series] [--json]\n"
    "           [-c FILE]",
    "Prints the delivery statistics of the stored events, the numbers the API's\n"
    "GET /api/v1/stats and the web UI show: recipients sent, delivered, deferred,\n"
    "bounced, complained, opened, clicked and suppressed; delivery latency\n"
    "percentiles (receipt to delivery); the top bounce reasons.\n"
    "  --since AGE        the window before now: 24h (default), 7d, 30d, ...\n"
    "  --group GROUP      a row per domain, key, tag or provider (default none)\n"
    "  --bucket STEP      hour or day, for --series (default: hour up to 48h)\n"
    "  --series           a row per hour or day as well\n"
    "  --json             the API's JSON answer\n"
    "  -c, --config FILE  the configuration file (for its data_dir)\n"};

static void counts_row(const char *name, const struct stats_counts *c)
{
	printf("%-30s", name);
	for (int i = 0; i < ST__COUNT; i++)
		printf(" %10" PRIu64, c->n[i]);
	putchar('\n');
}

static void header(const char *first)
{
	printf("%-30s", first);
	for (int i = 0; i < ST__COUNT; i++)
		printf(" %10s", stats_counter_name(i));
	putchar('\n');
}

static void print_table(const struct stats_query *q, const struct stats_result *r, bool series)
{
	char a[TERN_RFC3339_MAX], b[TERN_RFC3339_MAX];
	tern_rfc3339(q->since, a, sizeof(a));
	tern_rfc3339(q->until, b, sizeof(b));
	printf("window %s .. %s\n", a, b);
	header(q->group == STATS_GROUP_NONE ? "" : stats_group_name(q->group));
	counts_row("total", &r->totals);
	for (size_t i = 0; i < r->n_groups; i++)
		counts_row(r->groups[i].name, &r->groups[i].c);
	if (series) {
		putchar('\n');
		header(q->bucket == 3600 ? "hour" : "day");
		for (size_t i = 0; i < r->n_series; i++) {
			tern_rfc3339(r->series[i].t, a, sizeof(a));
			counts_row(a, &r->series[i].c);
		}
	}
	const struct stats_latency *l = &r->latency;
	printf("\nlatency (receipt to delivery): count %" PRIu64 ", p50 %" PRId64
	       " ms, p90 %" PRId64 " ms, p99 %" PRId64 " ms, max %" PRId64 " ms\n",
	       l->count, l->p50, l->p90, l->p99, l->max);
	if (r->n_reasons) {
		printf("\ntop bounce reasons:\n");
		for (size_t i = 0; i < r->n_reasons; i++)
			printf("  %10" PRIu64 "  %-8s %s\n", r->reasons[i].count,
			       r->reasons[i].status[0] ? r->reasons[i].status : "-",
			       r->reasons[i].reason);
	}
	printf("\nnote: %s\n", STATS_OPENS_NOTE);
}

int cmd_stats(int argc, char **argv)
{
	const char *path = NULL;
	if (cli_help_asked(argc, argv))
		return cli_help(&stats_help);
	if (cli_take_config(&argc, argv, &path) != 0)
		return cli_usage(&stats_help, NULL);
	char qs[512] = "";
	size_t n = 0;
	bool json = false, series = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--json") == 0) {
			json = true;
			continue;
		}
		if (strcmp(a, "--series") == 0) {
			series = true;
			continue;
		}
		const char *name = strcmp(a, "--since") == 0    ? "since"
		                   : strcmp(a, "--group") == 0  ? "group"
		                   : strcmp(a, "--bucket") == 0 ? "bucket"
		                                                : NULL;
		if (!name)
			return cli_usage(&stats_help, "unknown option '%s'", a);
		if (!v)
			return cli_usage(&stats_help, "%s needs a value", a);
		i++;
		/* the API's parser reads the raw query: '&' or '=' would only
		 * make another parameter of it */
		if (strpbrk(v, "&=") || strlen(v) > 64)
			return cli_usage(&stats_help, "%s: cannot read '%s'", a, v);
		int k = snprintf(qs + n, sizeof(qs) - n, "%s%s=%s", n ? "&" : "", name, v);
		if (k < 0 || (size_t)k >= sizeof(qs) - n)
			return cli_usage(&stats_help, "too many options");
		n += (size_t)k;
	}
	struct stats_query q;
	const char *why = NULL;
	if (stats_query_parse(qs, n, (int64_t)time(NULL), &q, &why) != TERN_OK)
		return cli_usage(&stats_help, "%s", why);
	sqlite3 *db = cli_events_db(path);
	if (!db)
		return 1;
	struct stats_result r;
	int rc = stats_run(db, &q, &r);
	sqlite3_close(db);
	if (rc != TERN_OK) {
		fprintf(stderr, "tern: the event store cannot be read: %s\n", tern_strerror(rc));
		return 1;
	}
	int status = 0;
	if (json) {
		json_t *j = stats_result_json(&q, &r);
		char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
		if (s)
			printf("%s\n", s);
		else
			status = 1;
		free(s);
		json_decref(j);
	} else {
		print_table(&q, &r, series);
	}
	stats_result_free(&r);
	return status;
}
