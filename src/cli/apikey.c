/*
 * apikey.c — `tern apikey create|list|limits|revoke`: the keys of the HTTP
 * sending API (store/apikeys.h), written straight into DATA/apikeys.db;
 * a running server sees every change at its next request (no reload).
 *
 * Owns: the command line, showing a new token once (stdout, nothing else
 * on that line so scripts can take it), and giving a store made by root
 * to the daemon's user.
 * Must never: print a token again after creation, or take one from argv.
 */
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/timefmt.h"
#include "store/apikeys.h"
#include "store/quota.h"
#include "store/ses_keys.h"

#define DOMAINS_MAX 32

static const struct cli_help apikey_help = {
    "tern apikey",
    "tern apikey create NAME [--scope send|read|admin] [--from-domain D]...\n"
    "                  [--per-second N] [--per-hour N] [--per-day N] [--sigv4] [-c FILE]\n"
    "tern apikey list [-c FILE]\n"
    "tern apikey limits NAME|ID [--per-second N] [--per-hour N] [--per-day N] [-c FILE]\n"
    "tern apikey revoke NAME|ID [-c FILE]",
    "Manages the keys of the HTTP sending API (listen { NAME { profile = \"http\"; } }),\n"
    "kept in DATA/apikeys.db. create prints the new key's token once, on a line of\n"
    "its own: give it as \"Authorization: Bearer TOKEN\" (or as the password of\n"
    "Basic auth, for Mailpit clients). Only a SHA-256 hash of it is stored.\n"
    "A running server sees changes at once.\n"
    "  --scope S           read: message status only; send (default): send and\n"
    "                      read; admin: everything, every key's messages\n"
    "  --from-domain D     the key may send only with a From address in D or a\n"
    "                      subdomain of it (repeat for several; default: any)\n"
    "  --per-second N, --per-hour N, --per-day N\n"
    "                      sending quotas: messages the key may send per second,\n"
    "                      UTC hour, UTC day; over one the API answers 429 with\n"
    "                      Retry-After (default: no limit). list shows the usage.\n"
    "                      limits changes a live key's: the windows given (0:\n"
    "                      no limit), the others kept; it prints them all.\n"
    "  --sigv4             also print the key's AWS SigV4 pair (\"ACCESS_KEY_ID\n"
    "                      SECRET_ACCESS_KEY\" on the next line) for the SES v2\n"
    "                      compatible API (/v2/email/...)\n"
    "  -c, --config FILE   the configuration file\n"};

/* The store in the data dir, made if missing (create) and given to the
 * daemon's user when we are root, so the daemon can open it too. */
static int open_store(const struct tern_config *conf, bool create, struct apikeys **out)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/apikeys.db", conf->data_dir);
	if (create && mkdir(conf->data_dir, 0750) == 0 && geteuid() == 0) {
		struct passwd *pw = conf->user && *conf->user ? getpwnam(conf->user) : NULL;
		if (pw && chown(conf->data_dir, pw->pw_uid, pw->pw_gid) != 0)
			fprintf(stderr, "tern: warning: cannot chown %s\n", conf->data_dir);
	}
	int rc = apikeys_open(path, create, out);
	if (rc == TERN_ENOTFOUND) {
		fprintf(stderr, "tern: no API keys yet (%s does not exist)\n", path);
		return rc;
	}
	if (rc != TERN_OK) {
		fprintf(stderr, "tern: cannot open %s\n", path);
		return rc;
	}
	/* root makes it for the daemon's user (as `tern user add` does the data dir) */
	struct passwd *pw =
	    geteuid() == 0 && conf->user && *conf->user ? getpwnam(conf->user) : NULL;
	if (pw && chown(path, pw->pw_uid, pw->pw_gid) != 0)
		fprintf(stderr, "tern: warning: cannot chown %s\n", path);
	chmod(path, 0600);
	return TERN_OK;
}

/* "N/L" (count this window / its limit), or "N" when the window has none. */
static void usage_cell(char *out, size_t len, uint64_t n, uint64_t lim)
{
	if (lim)
		snprintf(out, len, "%llu/%llu", (unsigned long long)n, (unsigned long long)lim);
	else
		snprintf(out, len, "%llu", (unsigned long long)n);
}

static void print_key(const struct apikey *k, void *arg)
{
	char created[TERN_RFC5322_DATE_MAX], hour[48], day[48];
	tern_rfc5322_date(k->created, created, sizeof(created));
	uint64_t nh = 0, nd = 0;
	quota_count(QUOTA_KEY, k->name, (int64_t)time(NULL), NULL, &nh, &nd);
	usage_cell(hour, sizeof(hour), nh, k->per_hour);
	usage_cell(day, sizeof(day), nd, k->per_day);
	printf("%-16s %-20s %-5s %-8s %-12s %-12s %s  %s\n", k->id, k->name,
	       apikey_scope_name(k->scope), k->revoked ? "revoked" : "live", hour, day,
	       k->domains[0] ? k->domains : "*", created);
}

/* A quota flag's value: 1 to 10^9 (0 too, "no limit", when zero_ok). */
static bool parse_limit(const char *s, bool zero_ok, uint64_t *out)
{
	char *end;
	if (!s || *s < '0' || *s > '9')
		return false;
	unsigned long long v = strtoull(s, &end, 10);
	if (*end || (v == 0 && !zero_ok) || v > 1000000000ULL)
		return false;
	*out = v;
	return true;
}

/* apikeys_list callback: the live key whose name or id is name_or_id. */
struct key_find {
	const char *name_or_id;
	struct apikey key;
	bool found;
};

static void find_key(const struct apikey *k, void *arg)
{
	struct key_find *f = arg;
	if (!k->revoked &&
	    (strcmp(k->name, f->name_or_id) == 0 || strcmp(k->id, f->name_or_id) == 0)) {
		f->key = *k;
		f->found = true;
	}
}

/* `limits`: the windows given in set[] change, the others keep their value. */
static int set_limits(struct apikeys *ks, const char *arg, const uint64_t lim[3], const bool set[3])
{
	struct key_find f = {.name_or_id = arg};
	if (apikeys_list(ks, find_key, &f) != TERN_OK) {
		fprintf(stderr, "tern: cannot read the key store\n");
		return 1;
	}
	if (!f.found) {
		fprintf(stderr, "tern: no live key with that name or id\n");
		return 1;
	}
	uint64_t v[3] = {f.key.per_second, f.key.per_hour, f.key.per_day};
	for (int i = 0; i < 3; i++)
		if (set[i])
			v[i] = lim[i];
	int rc = apikeys_set_limits(ks, f.key.id, v[0], v[1], v[2]);
	if (rc != TERN_OK) {
		fprintf(stderr, "tern: %s\n",
		        rc == TERN_ENOTFOUND ? "no live key with that name or id"
		                             : "cannot write the key store");
		return 1;
	}
	char c[3][24];
	for (int i = 0; i < 3; i++) {
		if (v[i])
			snprintf(c[i], sizeof(c[i]), "%llu", (unsigned long long)v[i]);
		else
			snprintf(c[i], sizeof(c[i]), "none");
	}
	printf("%s %s per_second=%s per_hour=%s per_day=%s\n", f.key.id, f.key.name, c[0], c[1],
	       c[2]);
	return 0;
}

/* The SigV4 pair of key id (store/ses_keys.h) on one stdout line, "AKID
 * SECRET", after the token; the master file is made on first use and
 * given to the daemon's user as the key store is. */
static int print_sigv4(const struct tern_config *conf, const char *id)
{
	unsigned char master[SES_MASTER_LEN];
	char akid[SES_AKID_LEN + 1], secret[SES_SECRET_LEN + 1], path[4096];
	if (ses_master_load(conf->data_dir, true, master) != TERN_OK) {
		fprintf(stderr, "tern: cannot read or make %s/apikeys.master\n", conf->data_dir);
		return 1;
	}
	snprintf(path, sizeof(path), "%s/apikeys.master", conf->data_dir);
	struct passwd *pw =
	    geteuid() == 0 && conf->user && *conf->user ? getpwnam(conf->user) : NULL;
	if (pw && chown(path, pw->pw_uid, pw->pw_gid) != 0)
		fprintf(stderr, "tern: warning: cannot chown %s\n", path);
	ses_key_pair(master, id, akid, secret);
	fprintf(stderr, "SigV4 (SES v2 API): access key id and secret access key, shown only "
	                "now:\n");
	printf("%s %s\n", akid, secret);
	memset(secret, 0, sizeof(secret));
	memset(master, 0, sizeof(master));
	return 0;
}

int cmd_apikey(int argc, char **argv)
{
	const char *path = NULL;
	if (cli_help_asked(argc, argv))
		return cli_help(&apikey_help);
	if (cli_take_config(&argc, argv, &path) != 0 || argc < 2)
		return cli_usage(&apikey_help, NULL);
	const char *sub = argv[1], *arg = NULL, *domains[DOMAINS_MAX];
	size_t n_domains = 0;
	enum apikey_scope scope = APIKEY_SEND;
	uint64_t lim[3] = {0, 0, 0}; /* --per-second, --per-hour, --per-day */
	bool lim_set[3] = {false, false, false};
	static const char *const lim_flag[3] = {"--per-second", "--per-hour", "--per-day"};
	bool sigv4 = false;
	bool limits = strcmp(sub, "limits") == 0;
	if (strcmp(sub, "create") != 0 && strcmp(sub, "list") != 0 && strcmp(sub, "revoke") != 0 &&
	    !limits)
		return cli_usage(&apikey_help, "unknown subcommand '%s'", sub);
	for (int i = 2; i < argc; i++) {
		bool create = strcmp(sub, "create") == 0;
		int lf = -1;
		for (int f = 0; f < 3 && (create || limits); f++)
			if (strcmp(argv[i], lim_flag[f]) == 0)
				lf = f;
		if (lf >= 0) {
			if (i + 1 >= argc || !parse_limit(argv[++i], limits, &lim[lf]))
				return cli_usage(&apikey_help,
				                 "%s takes a number from %d to 1000000000",
				                 lim_flag[lf], limits ? 0 : 1);
			lim_set[lf] = true;
		} else if (create && strcmp(argv[i], "--scope") == 0 && i + 1 < argc) {
			if (!(scope = apikey_scope_parse(argv[++i])))
				return cli_usage(&apikey_help, "--scope is send, read or admin");
		} else if (create && strcmp(argv[i], "--from-domain") == 0 && i + 1 < argc) {
			if (n_domains == DOMAINS_MAX)
				return cli_usage(&apikey_help, "at most %d --from-domain",
				                 DOMAINS_MAX);
			domains[n_domains++] = argv[++i];
		} else if (create && strcmp(argv[i], "--sigv4") == 0) {
			sigv4 = true;
		} else if (argv[i][0] == '-' || arg || strcmp(sub, "list") == 0) {
			return cli_usage(&apikey_help, "unexpected argument '%s'", argv[i]);
		} else {
			arg = argv[i];
		}
	}
	if (strcmp(sub, "list") != 0 && !arg)
		return cli_usage(&apikey_help, "%s needs a key name", sub);
	char err[512];
	struct tern_config *conf = conf_load(path, err, sizeof(err));
	if (!conf) {
		fprintf(stderr, "tern: %s\n", err);
		return 1;
	}
	int status = 1;
	struct apikeys *ks = NULL;
	if (open_store(conf, strcmp(sub, "create") == 0, &ks) != TERN_OK) {
		status = strcmp(sub, "list") == 0 ? 0 : 1; /* no store: no keys */
		goto out;
	}
	if (strcmp(sub, "list") == 0) {
		/* usage from the daemon's counters, when it has any */
		char qpath[4096];
		struct stat qs;
		snprintf(qpath, sizeof(qpath), "%s/quota.db", conf->data_dir);
		bool q = stat(qpath, &qs) == 0 && quota_open(conf->data_dir) == TERN_OK;
		printf("%-16s %-20s %-5s %-8s %-12s %-12s %s  %s\n", "ID", "NAME", "SCOPE", "STATE",
		       "HOUR", "DAY", "DOMAINS", "CREATED");
		status = apikeys_list(ks, print_key, NULL) == TERN_OK ? 0 : 1;
		if (q)
			quota_close();
	} else if (limits) {
		status = set_limits(ks, arg, lim, lim_set);
	} else if (strcmp(sub, "revoke") == 0) {
		int rc = apikeys_revoke(ks, arg);
		if (rc == TERN_OK) {
			printf("revoked %s\n", arg);
			status = 0;
		} else {
			fprintf(stderr, "tern: %s\n",
			        rc == TERN_ENOTFOUND ? "no live key with that name or id"
			                             : "cannot update the key store");
		}
	} else {
		char token[APIKEY_TOKEN_LEN + 1];
		struct apikey k;
		int rc =
		    apikeys_create(ks, arg, scope, domains, n_domains, token, sizeof(token), &k);
		if (rc == TERN_OK && (lim[0] || lim[1] || lim[2]) &&
		    apikeys_set_limits(ks, k.id, lim[0], lim[1], lim[2]) != TERN_OK) {
			apikeys_revoke(ks,
			               k.id); /* not a key without the limits it was asked for */
			rc = TERN_EIO;
		}
		if (rc == TERN_OK) {
			fprintf(stderr,
			        "created key %s (id %s, scope %s, domains %s); the token below is "
			        "shown only now:\n",
			        k.name, k.id, apikey_scope_name(k.scope),
			        k.domains[0] ? k.domains : "*");
			printf("%s\n", token);
			memset(token, 0, sizeof(token));
			status = sigv4 ? print_sigv4(conf, k.id) : 0;
		} else {
			fprintf(stderr, "tern: %s\n",
			        rc == TERN_EEXIST    ? "a live key already has that name"
			        : rc == TERN_EINVAL  ? "a key name is 1-64 of A-Z a-z 0-9 . _ -"
			        : rc == TERN_ESYNTAX ? "--from-domain takes a domain name"
			        : rc == TERN_ELIMIT  ? "too many domains"
			                             : "cannot write the key store");
		}
	}
out:
	apikeys_close(ks);
	conf_unref(conf);
	return status;
}
