/*
 * webhook.c — `tern webhook add|list|del|enable|attempts`: the webhook
 * endpoints in DATA/events.db. A running server sees changes at its next
 * event batch (the writer polls PRAGMA data_version) and its sender's next
 * pass (within a second): no signal needed.
 *
 * Owns: only the command's options and output.
 * Must never: print a secret except once, when the endpoint is made.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/conf.h"
#include "core/err.h"
#include "store/events.h"
#include "store/webhook.h"

static const struct cli_help webhook_help = {
    "tern webhook",
    "tern webhook add URL [--events TYPE,TYPE...] [--key NAME] [-c FILE]\n"
    "tern webhook list [-c FILE]\n"
    "tern webhook del ID [-c FILE]\n"
    "tern webhook enable ID [-c FILE]\n"
    "tern webhook attempts ID [--limit N] [-c FILE]",
    "Manages the endpoints events are posted to (Standard Webhooks: webhook-id,\n"
    "webhook-timestamp and webhook-signature headers, HMAC-SHA256). add prints\n"
    "the endpoint's id and its secret (whsec_...), once. Failed posts are retried\n"
    "with backoff (webhooks { } in tern.conf(5)); an endpoint failing for the\n"
    "whole retry window is disabled ('disabled: failing since ...' in list) and\n"
    "its events wait until enable. attempts lists the last posts: time, event,\n"
    "HTTP status, error.\n"
    "  --events LIST      event types to send (default: all)\n"
    "  --key NAME         the API key or user the endpoint belongs to\n"
    "  -c, --config FILE  the configuration file (for its data_dir)\n"};

static int parse_id(const char *s, int64_t *id)
{
	char *end;
	long long v = strtoll(s, &end, 10);
	if (*s == '\0' || *end || v <= 0)
		return TERN_EINVAL;
	*id = v;
	return TERN_OK;
}

int cmd_webhook(int argc, char **argv)
{
	const char *path = NULL, *events = "", *key = "";
	long limit = 50;
	if (cli_help_asked(argc, argv))
		return cli_help(&webhook_help);
	if (cli_take_config(&argc, argv, &path) != 0 || argc < 2)
		return cli_usage(&webhook_help, NULL);
	const char *sub = argv[1], *arg = NULL;
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		if (strncmp(a, "--", 2) != 0) {
			if (arg)
				return cli_usage(&webhook_help, "unexpected argument '%s'", a);
			arg = a;
			continue;
		}
		if (i + 1 >= argc)
			return cli_usage(&webhook_help, "%s needs a value", a);
		const char *v = argv[++i];
		if (strcmp(a, "--events") == 0 && strcmp(sub, "add") == 0) {
			char bad[64];
			if (webhook_filter_check(v, bad, sizeof(bad)) != TERN_OK)
				return cli_usage(&webhook_help, "no event type '%s'", bad);
			events = v;
		} else if (strcmp(a, "--key") == 0 && strcmp(sub, "add") == 0) {
			key = v;
		} else if (strcmp(a, "--limit") == 0 && strcmp(sub, "attempts") == 0) {
			char *end;
			limit = strtol(v, &end, 10);
			if (*end || limit < 1 || limit > 100000)
				return cli_usage(&webhook_help, "--limit: 1 to 100000");
		} else {
			return cli_usage(&webhook_help, "unknown option '%s'", a);
		}
	}
	int64_t id = 0;
	if (strcmp(sub, "add") == 0) {
		if (!arg || (strncmp(arg, "http://", 7) != 0 && strncmp(arg, "https://", 8) != 0))
			return cli_usage(&webhook_help, "add needs an http:// or https:// URL");
	} else if (strcmp(sub, "list") == 0) {
		if (arg)
			return cli_usage(&webhook_help, "list takes no argument");
	} else if (strcmp(sub, "del") == 0 || strcmp(sub, "enable") == 0 ||
	           strcmp(sub, "attempts") == 0) {
		if (!arg || parse_id(arg, &id) != TERN_OK)
			return cli_usage(&webhook_help, "%s needs an endpoint id", sub);
	} else {
		return cli_usage(&webhook_help, "unknown subcommand '%s'", sub);
	}
	char err[512];
	struct tern_config *conf = conf_load(path, err, sizeof(err));
	if (!conf) {
		fprintf(stderr, "tern: %s\n", err);
		return 1;
	}
	sqlite3 *db = events_db_open(conf->data_dir, err, sizeof(err));
	conf_unref(conf);
	if (!db) {
		fprintf(stderr, "tern: %s\n", err);
		return 1;
	}
	int rc;
	if (strcmp(sub, "add") == 0) {
		char secret[64];
		rc = webhook_add(db, arg, events, key, &id, secret, sizeof(secret));
		if (rc == TERN_OK)
			printf("id %lld\nsecret %s\n", (long long)id, secret);
	} else if (strcmp(sub, "list") == 0) {
		rc = webhook_list(db, stdout);
	} else if (strcmp(sub, "del") == 0) {
		rc = webhook_del(db, id);
	} else if (strcmp(sub, "enable") == 0) {
		rc = webhook_enable(db, id);
	} else {
		rc = webhook_attempts(db, id, (unsigned)limit, stdout);
	}
	if (rc == TERN_ENOTFOUND)
		fprintf(stderr, "tern: no webhook endpoint %lld\n", (long long)id);
	else if (rc != TERN_OK)
		fprintf(stderr, "tern: the event store failed: %s\n", sqlite3_errmsg(db));
	sqlite3_close(db);
	return rc == TERN_OK ? 0 : 1;
}
