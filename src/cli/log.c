/*
 * log.c — `tern log trace ID|MESSAGE-ID [FILE|-]`: every line of one
 * message's life from tern's log (what Postfix users do with grep and a
 * queue id). A queue id matches the lines carrying id=ID, and the lines of
 * the delivery status notifications it caused (dsn_id=, followed by their
 * own id=); a Message-ID is first turned into the queue ids of the queued
 * lines that carry it (msgid=), so a message received twice shows both.
 *
 * Must never: print a line of another message (ids match as whole
 * key=value tokens, never as substrings), or read the log more than twice.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/log.h"

#define IDS_MAX 64
#define ID_LEN 64

static const struct cli_help log_help = {
    "tern log", "tern log trace ID|MESSAGE-ID [FILE|-]",
    "Prints every log line of one message's life, in order, from a tern log\n"
    "(standard input when FILE is absent or \"-\"):\n"
    "  ID           a queue id, as in 250 Ok: queued as ID and id=ID in the log;\n"
    "               lines of the bounces it caused (dsn_id=) come too\n"
    "  MESSAGE-ID   the Message-ID header (with or without <>): the queued\n"
    "               lines carrying msgid=<...> give the queue ids to follow\n"
    "Exit status: 0 when lines were found, 1 when none, 2 on a usage error.\n"};

struct ids {
	char id[IDS_MAX][ID_LEN];
	size_t n;
};

static bool ids_has(const struct ids *s, const char *v, size_t n)
{
	for (size_t i = 0; i < s->n; i++)
		if (strlen(s->id[i]) == n && memcmp(s->id[i], v, n) == 0)
			return true;
	return false;
}

static void ids_add(struct ids *s, const char *v, size_t n)
{
	if (n == 0 || n >= ID_LEN || s->n == IDS_MAX || ids_has(s, v, n))
		return;
	memcpy(s->id[s->n], v, n);
	s->id[s->n][n] = '\0';
	s->n++;
}

/* The value of the whole token "key=VALUE" in line (space separated; a
 * value in quotes runs to its closing quote), or NULL. */
static const char *token(const char *line, const char *key, size_t *vlen)
{
	size_t klen = strlen(key);
	for (const char *p = line; (p = strstr(p, key)) != NULL; p += klen) {
		if (p != line && p[-1] != ' ')
			continue;
		if (p[klen] != '=')
			continue;
		const char *v = p + klen + 1, *e = v;
		if (*v == '"') {
			for (e = v + 1; *e && *e != '"'; e++)
				if (*e == '\\' && e[1])
					e++;
			if (*e == '"')
				e++;
		} else {
			while (*e && *e != ' ' && *e != '\n')
				e++;
		}
		*vlen = (size_t)(e - v);
		return v;
	}
	return NULL;
}

static bool is_message_id(const char *arg)
{
	return arg[0] == '<' || strchr(arg, '@') != NULL;
}

/* Pass one for a Message-ID: the queue ids of the queued lines with it. */
static void find_queue_ids(FILE *in, const char *quoted, struct ids *ids)
{
	char *line = NULL;
	size_t cap = 0;
	size_t qlen = strlen(quoted);
	while (getline(&line, &cap, in) > 0) {
		size_t vlen, ilen;
		const char *v = token(line, "msgid", &vlen);
		if (!v || vlen != qlen || memcmp(v, quoted, qlen) != 0 ||
		    !strstr(line, "event=queued "))
			continue;
		const char *id = token(line, "id", &ilen);
		if (id)
			ids_add(ids, id, ilen);
	}
	free(line);
}

/* Pass two: the lines of the ids, adding the DSNs they cause. */
static size_t print_lines(FILE *in, struct ids *ids)
{
	char *line = NULL;
	size_t cap = 0, n = 0;
	ssize_t got;
	while ((got = getline(&line, &cap, in)) > 0) {
		size_t vlen;
		const char *v = token(line, "id", &vlen);
		if (!v || !ids_has(ids, v, vlen))
			continue;
		const char *d = token(line, "dsn_id", &vlen);
		if (d)
			ids_add(ids, d, vlen);
		fwrite(line, 1, (size_t)got, stdout);
		if (line[got - 1] != '\n')
			putchar('\n');
		n++;
	}
	free(line);
	return n;
}

static int trace(const char *what, const char *file)
{
	FILE *in = stdin, *spill = NULL;
	int status = 1;
	struct ids ids = {.n = 0};
	if (file && strcmp(file, "-") != 0 && !(in = fopen(file, "r"))) {
		fprintf(stderr, "tern: cannot open %s: %s\n", file, strerror(errno));
		return 1;
	}
	if (!is_message_id(what)) {
		ids_add(&ids, what, strlen(what));
		if (ids.n == 0) {
			fprintf(stderr, "tern: '%s' is not a queue id\n", what);
			goto out;
		}
	} else {
		/* The log quotes a Message-ID as it quotes every value; match the
		 * same rendering. */
		char mid[1024], quoted[1100];
		int n = snprintf(mid, sizeof(mid), what[0] == '<' ? "%s" : "<%s>", what);
		if (n < 0 || (size_t)n >= sizeof(mid)) {
			fprintf(stderr, "tern: Message-ID too long\n");
			goto out;
		}
		log_quote(mid, (size_t)n, quoted, sizeof(quoted));
		if (in == stdin) {
			/* Two passes over a pipe: keep a copy. */
			char buf[65536];
			size_t r;
			if (!(spill = tmpfile())) {
				fprintf(stderr, "tern: cannot make a temporary file: %s\n",
				        strerror(errno));
				goto out;
			}
			while ((r = fread(buf, 1, sizeof(buf), stdin)) > 0)
				if (fwrite(buf, 1, r, spill) != r) {
					fprintf(stderr, "tern: cannot keep a copy of the log: %s\n",
					        strerror(errno));
					goto out;
				}
			in = spill;
			rewind(in);
		}
		find_queue_ids(in, quoted, &ids);
		if (ids.n == 0) {
			fprintf(stderr, "tern: no queued line with msgid=%s\n", quoted);
			goto out;
		}
		rewind(in);
	}
	if (print_lines(in, &ids) > 0)
		status = 0;
	else
		fprintf(stderr, "tern: no log lines for id=%s\n", ids.id[0]);
out:
	if (spill)
		fclose(spill);
	if (in && in != stdin && in != spill)
		fclose(in);
	return status;
}

int cmd_log(int argc, char **argv)
{
	if (cli_help_asked(argc, argv))
		return cli_help(&log_help);
	if (argc < 2)
		return cli_usage(&log_help, "which log command?");
	if (strcmp(argv[1], "trace") != 0)
		return cli_usage(&log_help, "unknown subcommand '%s'", argv[1]);
	if (argc < 3 || argc > 4)
		return cli_usage(&log_help,
		                 "trace needs an ID or a Message-ID, and at most a file");
	return trace(argv[2], argc == 4 ? argv[3] : NULL);
}
