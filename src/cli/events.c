/*
 * events.c — `tern events tail`: the event store (DATA/events.db) read by
 * the command line, filtered, once or following new events.
 *
 * Owns: only the command's options and its output lines.
 * Must never: write to the store (the daemon's writer owns it), or loop
 * without a bound other than --follow (which the user ends).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cli/cli.h"
#include "core/conf.h"
#include "core/err.h"
#include "store/events.h"

static const struct cli_help events_help = {
    "tern events",
    "tern events tail [--type TYPE] [--recipient ADDR] [--tag TAG] [--since TIME]\n"
    "                 [--limit N] [--json] [--follow] [-c FILE]",
    "Prints the stored events (received, queued, delivered, deferred, bounced,\n"
    "complained, suppressed, opened, clicked, unsubscribed), oldest first, one a\n"
    "line: time, type, queue id, recipient, status, reply.\n"
    "  --type TYPE        only this type\n"
    "  --recipient ADDR   only this recipient\n"
    "  --tag TAG          only events carrying this tag\n"
    "  --since TIME       2026-12-06T07:00:00Z, unix seconds, or 10min, 2h, 1d ago\n"
    "  --limit N          the last N events (default 100; all with --since)\n"
    "  --json             one JSON object a line (the API's shape)\n"
    "  --follow           keep printing new events (until interrupted)\n"
    "  -c, --config FILE  the configuration file (for its data_dir)\n"};

struct out {
	bool json;
};

static void print_event(void *arg, int64_t id, const char *js)
{
	struct out *o = arg;
	if (o->json) {
		printf("%s\n", js);
		return;
	}
	json_t *e = json_loads(js, 0, NULL);
	if (!e)
		return;
	const char *f[] = {"time", "type", "queue_id", "recipient", "status", "reply"};
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		const char *v = json_string_value(json_object_get(e, f[i]));
		printf("%s%s", i ? " " : "", v && *v ? v : "-");
	}
	const char *na = json_string_value(json_object_get(e, "next_attempt"));
	if (na)
		printf(" next_attempt=%s", na);
	const char *b = json_string_value(json_object_get(e, "bounce"));
	if (b)
		printf(" bounce=%s", b);
	putchar('\n');
	json_decref(e);
}

sqlite3 *cli_events_db(const char *path)
{
	char err[512];
	struct tern_config *conf = conf_load(path, err, sizeof(err));
	if (!conf) {
		fprintf(stderr, "tern: %s\n", err);
		return NULL;
	}
	sqlite3 *db = events_db_open(conf->data_dir, err, sizeof(err));
	conf_unref(conf);
	if (!db)
		fprintf(stderr, "tern: %s\n", err);
	return db;
}

int cmd_events(int argc, char **argv)
{
	const char *path = NULL;
	if (cli_help_asked(argc, argv))
		return cli_help(&events_help);
	if (cli_take_config(&argc, argv, &path) != 0 || argc < 2)
		return cli_usage(&events_help, NULL);
	if (strcmp(argv[1], "tail") != 0)
		return cli_usage(&events_help, "unknown subcommand '%s'", argv[1]);
	struct events_query q = {0};
	struct out o = {false};
	bool follow = false, limited = false;
	long limit = 100;
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--json") == 0) {
			o.json = true;
			continue;
		}
		if (strcmp(a, "--follow") == 0 || strcmp(a, "-f") == 0) {
			follow = true;
			continue;
		}
		if (!v)
			return cli_usage(&events_help, "%s needs a value", a);
		i++;
		if (strcmp(a, "--type") == 0) {
			if (events_type_parse(v) < 0)
				return cli_usage(&events_help, "no event type '%s'", v);
			q.type = v;
		} else if (strcmp(a, "--recipient") == 0) {
			q.recipient = v;
		} else if (strcmp(a, "--tag") == 0) {
			q.tag = v;
		} else if (strcmp(a, "--since") == 0) {
			if ((q.since = events_parse_time(v, (int64_t)time(NULL))) < 0)
				return cli_usage(&events_help, "--since: cannot read '%s'", v);
		} else if (strcmp(a, "--limit") == 0) {
			char *end;
			limit = strtol(v, &end, 10);
			if (*end || limit < 1 || limit > 1000000)
				return cli_usage(&events_help, "--limit: 1 to 1000000");
			limited = true;
		} else {
			return cli_usage(&events_help, "unknown option '%s'", a);
		}
	}
	sqlite3 *db = cli_events_db(path);
	if (!db)
		return 1;
	int status = 1;
	int64_t last = 0;
	if (!q.since || limited) {
		/* The last `limit` matching events: the id they begin after. */
		if (events_query_tail(db, &q, (unsigned)limit, &q.after) != TERN_OK)
			goto fail;
	}
	last = q.after;
	for (;;) {
		int n;
		q.limit = 1000;
		while ((n = events_query_run(db, &q, print_event, &o, &last)) > 0)
			q.after = last;
		if (n < 0)
			goto fail;
		fflush(stdout);
		if (!follow)
			break;
		sleep(1);
	}
	status = 0;
	goto out;
fail:
	fprintf(stderr, "tern: cannot read the event store: %s\n", sqlite3_errmsg(db));
out:
	sqlite3_close(db);
	return status;
}
