/*
 * archive.c — `tern archive search|show|export|hold|release`: the message
 * archive (DATA/archive, store/archive.h) read and marked from the command
 * line, on the data directory directly (a running server need not answer).
 *
 * Owns: only the command's options, its output and the export file.
 * Must never: change an archived message's bytes or index (only its hold
 * flag), or write an export anywhere but the file it was told (or stdout).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cli/cli.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "store/archive.h"

static const struct cli_help archive_help = {
    "tern archive",
    "tern archive search [--json] [--start N] [--limit N] [-c FILE] QUERY\n"
    "tern archive show [-c FILE] ID\n"
    "tern archive export [--format mbox|zip] -o FILE [-c FILE] QUERY\n"
    "tern archive hold|release [-c FILE] ID",
    "The message archive (archive { enabled = true; } in tern.conf): every message\n"
    "the server accepted, kept as it arrived.\n"
    "  search QUERY   newest first, one a line: ID, time, direction, hold, from,\n"
    "                 subject. QUERY is the capture search syntax: words of the\n"
    "                 body or subject, from:, to:, subject:, before:YYYY-MM-DD,\n"
    "                 after:YYYY-MM-DD, \"a phrase\", -negation; \"\" for all.\n"
    "  show ID        the original bytes of message ID (its queue id) on stdout\n"
    "  export QUERY   every matching message, oldest first, as an mbox (mboxrd)\n"
    "                 or a zip of ID.eml files holding the original bytes\n"
    "  hold ID        legal hold: retention never deletes ID until released\n"
    "  release ID     retention applies to ID again\n"
    "  --json         search: the API's JSON answer\n"
    "  -o FILE        export: the file to write (\"-\": stdout)\n"
    "  -c, --config FILE  the configuration file (for its data_dir)\n"};

static int open_archive(const char *path, struct archive **ar)
{
	char err[512];
	struct tern_config *conf = conf_load(path, err, sizeof(err));
	if (!conf) {
		fprintf(stderr, "tern: %s\n", err);
		return 1;
	}
	int rc = archive_open(conf->data_dir, ar, err, sizeof(err));
	conf_unref(conf);
	if (rc != TERN_OK) {
		fprintf(stderr, "tern: %s\n", err);
		return 1;
	}
	return 0;
}

static int query_error(int rc)
{
	if (rc == TERN_ESYNTAX || rc == TERN_ELIMIT) {
		fprintf(stderr, "tern: archive: the query is not valid (%s)\n", tern_strerror(rc));
		return 2;
	}
	fprintf(stderr, "tern: archive: %s\n", tern_strerror(rc));
	return 1;
}

static int do_search(struct archive *ar, const char *q, bool json, size_t start, size_t limit)
{
	int rc;
	json_t *res = archive_search(ar, q, start, limit, &rc);
	if (!res)
		return query_error(rc);
	if (json) {
		json_dumpf(res, stdout, JSON_COMPACT);
		putchar('\n');
	} else {
		json_t *m;
		size_t i;
		json_array_foreach(json_object_get(res, "messages"), i, m)
		{
			json_t *from = json_object_get(m, "From");
			printf("%s %s %s %s %s %s\n", json_string_value(json_object_get(m, "ID")),
			       json_string_value(json_object_get(m, "Created")),
			       json_string_value(json_object_get(m, "Direction")),
			       json_is_true(json_object_get(m, "Hold")) ? "hold" : "-",
			       json_string_value(json_object_get(from, "Address")),
			       json_string_value(json_object_get(m, "Subject")));
		}
		fprintf(stderr, "%lld of %lld messages match\n",
		        (long long)json_integer_value(json_object_get(res, "messages_count")),
		        (long long)json_integer_value(json_object_get(res, "total")));
	}
	json_decref(res);
	return 0;
}

static int write_out(const char *file, const struct tbuf *b)
{
	int fd = strcmp(file, "-") == 0
	             ? STDOUT_FILENO
	             : open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0 || tern_write_full(fd, b->data, b->len) != TERN_OK) {
		fprintf(stderr, "tern: cannot write %s: %s\n", file, strerror(errno));
		if (fd > STDOUT_FILENO)
			close(fd);
		return 1;
	}
	if (fd != STDOUT_FILENO && close(fd) != 0) {
		fprintf(stderr, "tern: cannot write %s: %s\n", file, strerror(errno));
		return 1;
	}
	return 0;
}

int cmd_archive(int argc, char **argv)
{
	const char *path = NULL, *out = NULL, *arg = NULL;
	bool json = false;
	long start = 0, limit = 50;
	enum archive_format fmt = ARCHIVE_MBOX;
	if (cli_help_asked(argc, argv))
		return cli_help(&archive_help);
	if (cli_take_config(&argc, argv, &path) != 0 || argc < 2)
		return cli_usage(&archive_help, NULL);
	const char *sub = argv[1];
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--json") == 0) {
			json = true;
			continue;
		}
		if (strcmp(a, "--") == 0 && v && !arg && i + 2 == argc) {
			arg = v;
			break;
		}
		if (a[0] != '-' || a[1] == '\0') {
			if (arg)
				return cli_usage(&archive_help, "one %s only", "argument");
			arg = a;
			continue;
		}
		if (!v)
			return cli_usage(&archive_help, "%s needs a value", a);
		i++;
		char *end = NULL;
		if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
			out = v;
		} else if (strcmp(a, "--format") == 0) {
			if (!archive_format_parse(v, strlen(v), &fmt))
				return cli_usage(&archive_help, "--format: mbox or zip");
		} else if (strcmp(a, "--start") == 0) {
			start = strtol(v, &end, 10);
			if (*end || start < 0 || start > 100000000)
				return cli_usage(&archive_help, "--start: 0 to 100000000");
		} else if (strcmp(a, "--limit") == 0) {
			limit = strtol(v, &end, 10);
			if (*end || limit < 1 || limit > 1000)
				return cli_usage(&archive_help, "--limit: 1 to 1000");
		} else {
			return cli_usage(&archive_help, "unknown option '%s'", a);
		}
	}
	bool is_search = strcmp(sub, "search") == 0, is_export = strcmp(sub, "export") == 0,
	     is_show = strcmp(sub, "show") == 0, is_hold = strcmp(sub, "hold") == 0,
	     is_release = strcmp(sub, "release") == 0;
	if (!is_search && !is_export && !is_show && !is_hold && !is_release)
		return cli_usage(&archive_help, "unknown subcommand '%s'", sub);
	if (!arg && !is_search)
		return cli_usage(&archive_help, "%s needs %s", sub,
		                 is_export ? "a QUERY" : "an ID");
	if (is_export && !out)
		return cli_usage(&archive_help, "export needs -o FILE");
	struct archive *ar = NULL;
	if (open_archive(path, &ar) != 0)
		return 1;
	int status = 1, rc;
	struct tbuf b = TBUF_INIT(SIZE_MAX / 2);
	if (is_search) {
		status = do_search(ar, arg ? arg : "", json, (size_t)start, (size_t)limit);
	} else if (is_show) {
		rc = archive_raw(ar, arg, &b);
		if (rc == TERN_OK)
			status = write_out("-", &b);
		else
			fprintf(stderr, "tern: archive: %s: %s\n", arg,
			        rc == TERN_ENOTFOUND || rc == TERN_EINVAL ? "no such message"
			                                                  : tern_strerror(rc));
	} else if (is_export) {
		size_t n = 0;
		rc = archive_export(ar, arg, fmt, &b, &n);
		if (rc == TERN_OK) {
			status = write_out(out, &b);
			if (status == 0)
				fprintf(stderr, "%zu messages exported to %s\n", n, out);
		} else if (rc == TERN_ELIMIT) {
			fprintf(stderr, "tern: archive: too many messages or bytes for one export; "
			                "narrow the query (before:, after:)\n");
		} else {
			status = query_error(rc);
		}
	} else {
		rc = archive_set_hold(ar, arg, is_hold);
		if (rc == TERN_OK) {
			printf("%s %s\n", arg, is_hold ? "held" : "released");
			status = 0;
		} else {
			fprintf(stderr, "tern: archive: %s: %s\n", arg,
			        rc == TERN_ENOTFOUND || rc == TERN_EINVAL ? "no such message"
			                                                  : tern_strerror(rc));
		}
	}
	tbuf_free(&b);
	archive_close(ar);
	return status;
}
