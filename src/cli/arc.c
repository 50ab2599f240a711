/*
 * arc.c — `tern arc`: operator tools over policy/arc.h.
 *
 *   verify   validates the ARC chain of a message on stdin (keys from DNS,
 *            or from a table with --dns-file) and prints the arc= result
 *   seal     adds an ARC Set to a message on stdin: validates the chain
 *            first (or takes --cv), then seals with a key file
 *
 * Lookups run on the daemon's async resolver (dns/dns.h) on an event base
 * of the CLI's own, with a deadline. Never: seals with a key others can
 * read (dkim_key_load refuses it), or prints network bytes unfiltered.
 */
#include <errno.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/files.h"
#include "dns/dns.h"
#include "policy/arc.h"

#define STDIN_MAX (64u << 20)
#define DEFAULT_TIMEOUT 10

static void usage(FILE *out)
{
	fprintf(out,
	        "usage: tern arc verify [-c FILE | --dns-file FILE] [--timeout SECONDS] < message\n"
	        "       tern arc seal --domain D --selector S --key FILE --authres PAYLOAD\n"
	        "                     [--cv none|pass|fail | -c FILE | --dns-file FILE]\n"
	        "                     [--time T] [--headers a:b:c] [--sorted] < message\n");
}

/* The message: as read (raw) and with CRLF line ends (msg). */
struct input {
	char *raw, *msg;
	size_t raw_len, len;
	bool lf;
};

static int read_input(struct input *in)
{
	struct tbuf b = TBUF_INIT(STDIN_MAX), m = TBUF_INIT((size_t)STDIN_MAX * 2);
	char chunk[65536];
	size_t r;
	int rc = TERN_OK;
	memset(in, 0, sizeof(*in));
	while (rc == TERN_OK && (r = fread(chunk, 1, sizeof(chunk), stdin)) > 0)
		rc = tbuf_append(&b, chunk, r);
	if (rc != TERN_OK || ferror(stdin)) {
		fprintf(stderr, "tern: cannot read the message (over 64 MiB?)\n");
		tbuf_free(&b);
		return -1;
	}
	if (tbuf_append(&b, "", 0) != TERN_OK)
		return -1;
	in->raw = tbuf_steal(&b, &in->raw_len);
	in->lf = in->raw_len > 0 && !memchr(in->raw, '\r', in->raw_len);
	rc = tbuf_reserve(&m, in->raw_len + 1);
	for (size_t i = 0; rc == TERN_OK && i < in->raw_len; i++) {
		if (in->raw[i] == '\n' && (i == 0 || in->raw[i - 1] != '\r'))
			rc = tbuf_append(&m, "\r", 1);
		if (rc == TERN_OK)
			rc = tbuf_append(&m, in->raw + i, 1);
	}
	if (rc == TERN_OK && tbuf_append(&m, "", 0) == TERN_OK)
		in->msg = tbuf_steal(&m, &in->len);
	tbuf_free(&m);
	return in->msg ? 0 : -1;
}

static void input_free(struct input *in)
{
	free(in->raw);
	free(in->msg);
}

static void loop_done(void *arg)
{
	event_base_loopbreak(arg);
}

/* Validates in's chain into *out: keys from dnsfile, else the config's
 * resolver. 0, or -1 after saying why. */
static int validate(const struct input *in, const char *dnsfile, const char *path, unsigned timeout,
                    struct arc_result *out)
{
	struct arc_verify *v = arc_verify_new();
	struct dkim_keytab *tab = NULL;
	struct tern_config *c = NULL;
	struct event_base *base = NULL;
	struct dns_resolver *res = NULL;
	struct dkim_dns *dd = NULL;
	char err[512];
	int rc, status = -1;
	if (!v)
		goto out;
	if (dnsfile) {
		char *text = NULL;
		size_t tl;
		int en;
		if (tern_file_read(dnsfile, 16u << 20, &text, &tl, &en) != TERN_OK) {
			fprintf(stderr, "tern: cannot read %s: %s\n", dnsfile, strerror(en));
			goto out;
		}
		rc = dkim_keytab_parse(text, tl, &tab, err, sizeof(err));
		free(text);
		if (rc != TERN_OK) {
			fprintf(stderr, "tern: %s: %s\n", dnsfile, err);
			goto out;
		}
		rc = arc_verify_message(v, in->msg, in->len, arc_keytab_lookup, tab);
	} else {
		if (!(c = conf_load(path, err, sizeof(err)))) {
			fprintf(stderr, "tern: %s\n", err);
			goto out;
		}
		if (!(base = event_base_new()) ||
		    !(res = dns_resolver_new(base, (const char *const *)c->dns.forward,
		                             c->dns.n_forward, c->dns.trust_anchor_file, err,
		                             sizeof(err)))) {
			fprintf(stderr, "tern: DNS: %s\n", base ? err : "no event base");
			goto out;
		}
		rc = arc_verify_input(v, in->msg, in->len);
		if (rc == TERN_OK && arc_verify_state(v) == ARC_VS_WAITING) {
			if (!(dd = arc_verify_dns_start(v, res, base, timeout * 1000, loop_done,
			                                base)))
				goto out;
			struct timeval tv = {(time_t)timeout + 1, 0};
			event_base_loopexit(base, &tv);
			event_base_dispatch(base);
			arc_verify_expire(v);
		}
		if (rc == TERN_OK && arc_verify_state(v) == ARC_VS_READY)
			rc = arc_verify_finish(v);
	}
	if (rc != TERN_OK) {
		fprintf(stderr, "tern: cannot validate: %s\n",
		        rc == TERN_ELIMIT ? "the header is too large" : tern_strerror(rc));
		goto out;
	}
	*out = *arc_verify_result(v);
	status = 0;
out:
	dkim_dns_free(dd);
	dns_resolver_free(res);
	if (base)
		event_base_free(base);
	if (c)
		conf_unref(c);
	dkim_keytab_free(tab);
	arc_verify_free(v);
	return status;
}

static bool parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
	char *end;
	errno = 0;
	if (!*s || *s == '-')
		return false;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || v > max)
		return false;
	*out = v;
	return true;
}

static int cmd_verify(int argc, char **argv)
{
	const char *path, *dnsfile = NULL;
	unsigned long long timeout = DEFAULT_TIMEOUT;
	if (cli_take_config(&argc, argv, &path) != 0) {
		usage(stderr);
		return 2;
	}
	for (int i = 1; i < argc; i++) {
		bool more = i + 1 < argc;
		if (strcmp(argv[i], "--dns-file") == 0 && more)
			dnsfile = argv[++i];
		else if (strcmp(argv[i], "--timeout") == 0 && more &&
		         parse_uint(argv[i + 1], 3600, &timeout) && timeout > 0)
			i++;
		else {
			usage(stderr);
			return 2;
		}
	}
	struct input in;
	struct arc_result r;
	int status = 2;
	if (read_input(&in) == 0 && validate(&in, dnsfile, path, (unsigned)timeout, &r) == 0) {
		printf("arc=%s", arc_cv_name(r.cv));
		if (r.cv == ARC_CV_FAIL)
			printf(" (%s)", r.reason);
		if (r.cv == ARC_CV_PASS)
			printf(" (i=%u; oldest-pass=%u) header.s=%s", r.n_sets, r.oldest_pass,
			       r.sealer);
		printf("\n");
		status = r.cv == ARC_CV_PASS ? 0 : 1;
	}
	input_free(&in);
	return status;
}

static int cmd_seal(int argc, char **argv)
{
	const char *path, *dnsfile = NULL, *domain = NULL, *selector = NULL, *keyfile = NULL,
	                  *authres = NULL, *headers = NULL, *cvs = NULL;
	unsigned long long t = 0;
	bool have_t = false, sorted = false;
	if (cli_take_config(&argc, argv, &path) != 0) {
		usage(stderr);
		return 2;
	}
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		bool more = i + 1 < argc;
		if (strcmp(a, "--dns-file") == 0 && more)
			dnsfile = argv[++i];
		else if (strcmp(a, "--domain") == 0 && more)
			domain = argv[++i];
		else if (strcmp(a, "--selector") == 0 && more)
			selector = argv[++i];
		else if (strcmp(a, "--key") == 0 && more)
			keyfile = argv[++i];
		else if (strcmp(a, "--authres") == 0 && more)
			authres = argv[++i];
		else if (strcmp(a, "--headers") == 0 && more)
			headers = argv[++i];
		else if (strcmp(a, "--cv") == 0 && more)
			cvs = argv[++i];
		else if (strcmp(a, "--sorted") == 0)
			sorted = true;
		else if (strcmp(a, "--time") == 0 && more &&
		         parse_uint(argv[i + 1], 999999999999ull, &t))
			have_t = true, i++;
		else {
			usage(stderr);
			return 2;
		}
	}
	enum arc_cv cv = ARC_CV_NONE;
	if (cvs && strcmp(cvs, "pass") == 0)
		cv = ARC_CV_PASS;
	else if (cvs && strcmp(cvs, "fail") == 0)
		cv = ARC_CV_FAIL;
	else if (cvs && strcmp(cvs, "none") != 0)
		cvs = "";
	if (!domain || !selector || !keyfile || !authres || (cvs && !*cvs) ||
	    (!cvs && !dnsfile && !path)) {
		fprintf(stderr,
		        "tern: seal needs --domain, --selector, --key, --authres and one of "
		        "--cv none|pass|fail, --dns-file FILE or -c FILE (to validate)\n");
		return 2;
	}
	const char *hv[DKIM_H_MAX];
	size_t nh = 0;
	char *hcopy = headers ? tern_strdup(headers) : NULL;
	for (char *s = hcopy, *e; s && nh < DKIM_H_MAX; s = e) {
		e = strchr(s, ':');
		if (e)
			*e++ = '\0';
		hv[nh++] = s;
	}
	struct input in = {0};
	struct dkim_key *k = NULL;
	char *out = NULL, warn[600], err[600];
	size_t ol = 0;
	int status = 1, rc;
	if (headers && !hcopy)
		goto out;
	if (read_input(&in) != 0)
		goto out;
	if (!cvs) {
		struct arc_result r;
		if (validate(&in, dnsfile, path, DEFAULT_TIMEOUT, &r) != 0)
			goto out;
		cv = r.cv;
	}
	if (dkim_key_load(keyfile, &k, warn, sizeof(warn), err, sizeof(err)) != TERN_OK) {
		fprintf(stderr, "tern: %s\n", err);
		goto out;
	}
	if (warn[0])
		fprintf(stderr, "tern: warning: %s\n", warn);
	struct arc_seal_params p = {
	    .domain = domain,
	    .selector = selector,
	    .timestamp = have_t ? (int64_t)t : DKIM_SIGN_TIME_NOW,
	    .headers = hcopy ? hv : NULL,
	    .n_headers = nh,
	    .authres = authres,
	    .sorted_tags = sorted,
	};
	if ((rc = arc_seal(k, &p, cv, in.msg, in.len, &out, &ol)) != TERN_OK) {
		fprintf(stderr, "tern: cannot seal: %s\n",
		        rc == TERN_EINVAL ? "bad parameters (names, headers or --authres)"
		                          : tern_strerror(rc));
		goto out;
	}
	if (!out)
		fprintf(stderr, "tern: nothing added: the chain already failed or is full\n");
	for (size_t i = 0; i < ol; i++)
		if (!(in.lf && out[i] == '\r'))
			putchar(out[i]);
	fwrite(in.raw, 1, in.raw_len, stdout);
	status = fflush(stdout) == 0 ? 0 : 1;
out:
	free(out);
	free(hcopy);
	dkim_key_free(k);
	input_free(&in);
	return status;
}

int cmd_arc(int argc, char **argv)
{
	const char *sub = argc > 1 ? argv[1] : NULL;
	if (!sub) {
		usage(stderr);
		return 2;
	}
	if (strcmp(sub, "verify") == 0)
		return cmd_verify(argc - 1, argv + 1);
	if (strcmp(sub, "seal") == 0)
		return cmd_seal(argc - 1, argv + 1);
	if (strcmp(sub, "help") == 0 || strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "tern: unknown arc command '%s'\n", sub);
	usage(stderr);
	return 2;
}
