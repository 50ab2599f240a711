/*
 * dkim.c — `tern dkim`: keys and DNS records for DKIM signing, and two
 * operator tools over policy/dkim.h.
 *
 *   keygen DOMAIN SELECTOR  a new key file (0600, written atomically) and the
 *                           TXT record to publish, split into 255-byte strings
 *   dns [DOMAIN]            the records of every configured key
 *   check [DOMAIN]          looks them up and says whether the key matches
 *   sign                    signs a message on stdin (a key file, or the config)
 *   verify                  verifies a message on stdin, in DNS or a table
 *
 * The CLI is not the event loop: lookups run on the same async resolver the
 * daemon uses (dns/dns.h), on an event base of its own, with a deadline.
 * Never: overwrites a key file without --force, signs with a key others can
 * read (dkim_key_load refuses it), or prints network bytes unfiltered.
 */
#include <errno.h>
#include <event2/event.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/files.h"
#include "core/fsutil.h"
#include "dns/dns.h"
#include "policy/dkim.h"

#define STDIN_MAX (64u << 20)
#define DEFAULT_TIMEOUT 10

static const struct cli_help dkim_help = {
    "tern dkim",
    "tern dkim keygen DOMAIN SELECTOR [--type rsa|ed25519] [--bits N] [--out FILE] [--force]\n"
    "tern dkim dns [DOMAIN] [-c FILE]\n"
    "tern dkim check [DOMAIN] [-c FILE] [--timeout SECONDS]\n"
    "tern dkim sign --domain D (--selector S --key FILE | -c FILE) [--canon H/B] [--time T]\n"
    "               [--expire SECONDS] [--headers a:b:c] [--identity I] < message\n"
    "tern dkim verify [-c FILE] [--dns-file FILE] [--now T] [--timeout SECONDS]\n"
    "                 [--allow-unsigned-body] < message",
    "DKIM (RFC 6376, 8463) keys and tools:\n"
    "  keygen    make a key pair (RSA or Ed25519) and print its DNS record\n"
    "  dns       the TXT records to publish for the config's dkim { keys }\n"
    "  check     compare the published records with the keys\n"
    "  sign      sign a message read from standard input\n"
    "  verify    verify every signature of a message read from standard input\n"};

/* --help on stdout; a usage error (its synopsis) on stderr. */
static void usage(FILE *out)
{
	if (out == stdout)
		cli_help(&dkim_help);
	else
		cli_usage(&dkim_help, NULL);
}

/* Network bytes, safe for a terminal: controls and 8-bit as '?'. */
static const char *shown(const char *s, char *buf, size_t n)
{
	size_t k = 0;
	for (; *s && k + 4 < n; s++)
		buf[k++] = ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f) ? '?' : *s;
	if (*s && k + 4 <= n) {
		memcpy(buf + k, "...", 3);
		k += 3;
	}
	buf[k] = '\0';
	return buf;
}

static bool name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 253 || s[0] == '.' || s[n - 1] == '.')
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' || *s == '.'))
			return false;
	return true;
}

static bool parse_u64(const char *s, uint64_t max, uint64_t *out)
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

static struct tern_config *load_conf(const char *path)
{
	char err[512];
	struct tern_config *c = conf_load(path, err, sizeof(err));
	if (!c)
		fprintf(stderr, "tern: %s\n", err);
	return c;
}

static void print_warning(void *arg, const char *text)
{
	fprintf(stderr, "tern: warning: %s\n", text);
}

static struct dkim_keyring *load_ring(const struct tern_config *c)
{
	struct dkim_keyring *kr;
	char err[1024];
	if (dkim_keyring_load(&c->dkim, &kr, print_warning, NULL, err, sizeof(err)) != TERN_OK) {
		fprintf(stderr, "tern: %s\n", err);
		return NULL;
	}
	return kr;
}

/* ------------------------------------------------------------ keygen */

static int cmd_keygen(int argc, char **argv)
{
	const char *domain = NULL, *selector = NULL, *type = "rsa", *out = NULL;
	uint64_t bits = 0;
	bool force = false, have_bits = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--type") == 0 && i + 1 < argc) {
			type = argv[++i];
		} else if (strcmp(a, "--bits") == 0 && i + 1 < argc) {
			if (!parse_u64(argv[++i], 100000, &bits)) {
				fprintf(stderr, "tern: --bits: not a number\n");
				return 2;
			}
			have_bits = true;
		} else if (strcmp(a, "--out") == 0 && i + 1 < argc) {
			out = argv[++i];
		} else if (strcmp(a, "--force") == 0) {
			force = true;
		} else if (a[0] == '-' || (domain && selector)) {
			usage(stderr);
			return 2;
		} else if (!domain) {
			domain = a;
		} else {
			selector = a;
		}
	}
	if (!domain || !selector) {
		usage(stderr);
		return 2;
	}
	if (!name_ok(domain) || !strchr(domain, '.') || !name_ok(selector)) {
		fprintf(stderr, "tern: '%s' / '%s': a domain and a selector are DNS names\n",
		        domain, selector);
		return 2;
	}
	enum dkim_alg alg;
	if (strcmp(type, "rsa") == 0) {
		alg = DKIM_ALG_RSA_SHA256;
		if (!have_bits)
			bits = 2048;
		if (bits < DKIM_RSA_MIN_BITS || bits > 4096) {
			fprintf(stderr,
			        "tern: --bits %llu: RSA keys for DKIM have 1024 to 4096 bits (2048 "
			        "is the norm, RFC 8301)\n",
			        (unsigned long long)bits);
			return 2;
		}
		if (bits < DKIM_RSA_GOOD_BITS)
			fprintf(stderr,
			        "tern: warning: %llu bits is weak: RFC 8301 asks for 2048\n",
			        (unsigned long long)bits);
	} else if (strcmp(type, "ed25519") == 0) {
		alg = DKIM_ALG_ED25519_SHA256;
		if (have_bits) {
			fprintf(stderr, "tern: --bits is for RSA keys (Ed25519 keys have 256)\n");
			return 2;
		}
	} else {
		fprintf(stderr, "tern: --type must be rsa or ed25519\n");
		return 2;
	}
	char defpath[600];
	if (!out) {
		snprintf(defpath, sizeof(defpath), "%s.%s.key", domain, selector);
		out = defpath;
	}
	struct stat st;
	if (!force && lstat(out, &st) == 0) {
		fprintf(stderr, "tern: %s exists; --force replaces it (and the key in it)\n", out);
		return 1;
	}
	struct dkim_key *k = NULL;
	char *pem = NULL, *rec = NULL, *zone = NULL;
	size_t pl = 0;
	int status = 1;
	if (dkim_key_generate(alg, (unsigned)bits, &k) != TERN_OK ||
	    dkim_key_pem(k, &pem, &pl) != TERN_OK || dkim_key_record(k, &rec) != TERN_OK ||
	    dkim_zone_text(selector, domain, rec, &zone) != TERN_OK) {
		fprintf(stderr, "tern: cannot make the key (OpenSSL or memory)\n");
		goto out;
	}
	struct tern_write_opts wo = {.mode = 0600, .uid = (uid_t)-1, .gid = (gid_t)-1};
	if (tern_write_file_atomic(out, pem, pl, &wo) != TERN_OK) {
		fprintf(stderr, "tern: cannot write %s: %s\n", out, strerror(errno));
		goto out;
	}
	char abs[PATH_MAX];
	if (!realpath(out, abs))
		tern_strlcpy(abs, out, sizeof(abs));
	fprintf(stderr, "tern: wrote %s (%s key, mode 0600)\n", out,
	        alg == DKIM_ALG_RSA_SHA256 ? "RSA" : "Ed25519");
	fprintf(stderr,
	        "tern: in tern.conf: dkim { keys = [ { domain = \"%s\"; selector = \"%s\"; "
	        "key_file = \"%s\"; } ]; }\n",
	        domain, selector, abs);
	printf("; DKIM key %s for %s (%s", selector, domain,
	       alg == DKIM_ALG_RSA_SHA256 ? "rsa" : "ed25519");
	if (alg == DKIM_ALG_RSA_SHA256)
		printf(", %llu bits", (unsigned long long)bits);
	printf("). The TXT value, for a DNS provider's form:\n; %s\n%s", rec, zone);
	status = 0;
out:
	if (pem)
		explicit_bzero(pem, pl);
	free(pem);
	free(rec);
	free(zone);
	dkim_key_free(k);
	return status;
}

/* ------------------------------------------------------------ dns */

static bool key_selected(const struct dkim_keyring_key *k, const char *domain)
{
	return !domain || strcasecmp(k->domain, domain) == 0;
}

static int cmd_dns(int argc, char **argv)
{
	const char *path, *domain = NULL;
	if (cli_take_config(&argc, argv, &path) != 0 || argc > 2 ||
	    (argc == 2 && argv[1][0] == '-')) {
		usage(stderr);
		return 2;
	}
	if (argc == 2)
		domain = argv[1];
	struct tern_config *c = load_conf(path);
	if (!c)
		return 1;
	struct dkim_keyring *kr = load_ring(c);
	int status = kr ? 0 : 1;
	size_t shown_n = 0;
	for (size_t i = 0; kr && i < dkim_keyring_count(kr); i++) {
		const struct dkim_keyring_key *k = dkim_keyring_get(kr, i);
		if (!key_selected(k, domain))
			continue;
		char *rec = NULL, *zone = NULL;
		if (dkim_key_record(k->key, &rec) != TERN_OK ||
		    dkim_zone_text(k->selector, k->domain, rec, &zone) != TERN_OK) {
			fprintf(stderr, "tern: %s: cannot make its record\n", k->key_file);
			status = 1;
		} else {
			printf("; %s (%s)\n%s", k->key_file,
			       dkim_key_alg(k->key) == DKIM_ALG_RSA_SHA256 ? "rsa" : "ed25519",
			       zone);
			shown_n++;
		}
		free(rec);
		free(zone);
	}
	if (kr && shown_n == 0) {
		fprintf(stderr, "tern: no dkim key%s%s in %s\n", domain ? " for " : "",
		        domain ? domain : "", c->source);
		status = 1;
	}
	dkim_keyring_free(kr);
	conf_unref(c);
	return status;
}

/* ------------------------------------------------------------ lookups */

struct dns_run {
	struct event_base *base;
	struct dns_resolver *res;
	size_t outstanding;
};

static int dns_run_init(struct dns_run *r, const struct tern_config *c)
{
	char err[512];
	memset(r, 0, sizeof(*r));
	if (!(r->base = event_base_new())) {
		fprintf(stderr, "tern: cannot make an event base\n");
		return -1;
	}
	r->res = dns_resolver_new(r->base, (const char *const *)c->dns.forward, c->dns.n_forward,
	                          c->dns.trust_anchor_file, err, sizeof(err));
	if (!r->res) {
		fprintf(stderr, "tern: DNS: %s\n", err);
		event_base_free(r->base);
		r->base = NULL;
		return -1;
	}
	return 0;
}

static void dns_run_free(struct dns_run *r)
{
	dns_resolver_free(r->res);
	if (r->base)
		event_base_free(r->base);
}

/* Runs the loop until done() breaks it or timeout seconds pass. */
static void dns_run_loop(struct dns_run *r, unsigned timeout)
{
	struct timeval tv = {(time_t)timeout, 0};
	event_base_loopexit(r->base, &tv);
	event_base_dispatch(r->base);
}

/* ------------------------------------------------------------ check */

struct check_item {
	const struct dkim_keyring_key *k;
	struct dns_run *run;
	char name[300];
	bool answered;
	enum dns_status st;
	char **txt;
	size_t n;
};

static void check_answer(void *arg, const struct dns_result *r)
{
	struct check_item *it = arg;
	it->answered = true;
	it->st = r->status;
	if (r->status == DNS_OK && r->n > 0 && (it->txt = calloc(r->n, sizeof(char *)))) {
		for (size_t i = 0; i < r->n; i++)
			if ((it->txt[i] = tern_strdup(r->txt[i])))
				it->n++;
	}
	if (--it->run->outstanding == 0)
		event_base_loopbreak(it->run->base);
}

static int cmd_check(int argc, char **argv)
{
	const char *path, *domain = NULL;
	uint64_t timeout = DEFAULT_TIMEOUT;
	if (cli_take_config(&argc, argv, &path) != 0) {
		usage(stderr);
		return 2;
	}
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
			if (!parse_u64(argv[++i], 3600, &timeout) || timeout == 0) {
				fprintf(stderr, "tern: --timeout: seconds, 1 to 3600\n");
				return 2;
			}
		} else if (argv[i][0] != '-' && !domain) {
			domain = argv[i];
		} else {
			usage(stderr);
			return 2;
		}
	}
	struct tern_config *c = load_conf(path);
	if (!c)
		return 1;
	struct dkim_keyring *kr = load_ring(c);
	struct check_item *items = NULL;
	struct dns_run run;
	size_t n = 0;
	int status = 1;
	bool have_run = false;
	if (!kr)
		goto out;
	if (!(items = calloc(dkim_keyring_count(kr) + 1, sizeof(*items))))
		goto out;
	for (size_t i = 0; i < dkim_keyring_count(kr); i++) {
		const struct dkim_keyring_key *k = dkim_keyring_get(kr, i);
		if (key_selected(k, domain))
			items[n++].k = k;
	}
	if (n == 0) {
		fprintf(stderr, "tern: no dkim key%s%s in %s\n", domain ? " for " : "",
		        domain ? domain : "", c->source);
		goto out;
	}
	if (dns_run_init(&run, c) != 0)
		goto out;
	have_run = true;
	for (size_t i = 0; i < n; i++) {
		items[i].run = &run;
		snprintf(items[i].name, sizeof(items[i].name), "%s._domainkey.%s",
		         items[i].k->selector, items[i].k->domain);
		if (dns_query(run.res, items[i].name, DNS_TXT, check_answer, &items[i]) > 0)
			run.outstanding++;
		else
			items[i].answered = true, items[i].st = DNS_ERROR;
	}
	if (run.outstanding)
		dns_run_loop(&run, (unsigned)timeout);
	status = 0;
	for (size_t i = 0; i < n; i++) {
		struct check_item *it = &items[i];
		char buf[200];
		const char *why = NULL;
		bool ok = false;
		if (!it->answered) {
			printf("%s: no answer within %llu s\n", it->name,
			       (unsigned long long)timeout);
		} else if (it->st == DNS_NXDOMAIN || it->st == DNS_NODATA) {
			printf("%s: missing: no TXT record there (`tern dkim dns %s` prints it)\n",
			       it->name, it->k->domain);
		} else if (it->st != DNS_OK) {
			printf("%s: DNS error (%s): try again later\n", it->name,
			       dns_status_name(it->st));
		} else {
			/* ok if one record of the RRset carries our key */
			for (size_t j = 0; j < it->n && !ok; j++) {
				const char *w;
				ok = dkim_key_matches_record(it->k->key, it->txt[j], &w);
				if (ok || !why)
					why = w;
			}
			if (it->n > 1 && ok)
				why =
				    "matches (but several TXT records: receivers may pick another)";
			printf("%s: %s%s\n", it->name,
			       ok ? "ok: " : "MISMATCH: ", why ? why : "no record");
			if (!ok && it->n > 0)
				printf("  published: %s\n", shown(it->txt[0], buf, sizeof(buf)));
		}
		if (!ok)
			status = 1;
	}
out:
	for (size_t i = 0; items && i < n; i++) {
		for (size_t j = 0; j < items[i].n; j++)
			free(items[i].txt[j]);
		free(items[i].txt);
	}
	free(items);
	if (have_run)
		dns_run_free(&run);
	dkim_keyring_free(kr);
	conf_unref(c);
	return status;
}

/* ------------------------------------------------------------ stdin */

struct input {
	char *raw; /* as read */
	size_t raw_len;
	char *msg; /* CRLF line ends */
	size_t len;
	bool lf; /* the input had no CR at all: answer with LF line ends */
};

static int read_input(struct input *in)
{
	struct tbuf b = TBUF_INIT(STDIN_MAX);
	char chunk[65536];
	size_t r;
	memset(in, 0, sizeof(*in));
	while ((r = fread(chunk, 1, sizeof(chunk), stdin)) > 0)
		if (tbuf_append(&b, chunk, r) != TERN_OK) {
			fprintf(stderr, "tern: the message is larger than 64 MiB\n");
			tbuf_free(&b);
			return -1;
		}
	if (ferror(stdin)) {
		fprintf(stderr, "tern: cannot read the message: %s\n", strerror(errno));
		tbuf_free(&b);
		return -1;
	}
	if (tbuf_append(&b, "", 0) != TERN_OK)
		return -1;
	in->raw = tbuf_steal(&b, &in->raw_len);
	in->lf = in->raw_len > 0 && !memchr(in->raw, '\r', in->raw_len);
	/* a file from an editor has LF line ends; the wire has CRLF */
	struct tbuf m = TBUF_INIT((size_t)STDIN_MAX * 2);
	int rc = tbuf_reserve(&m, in->raw_len + 1);
	for (size_t i = 0; rc == TERN_OK && i < in->raw_len; i++) {
		if (in->raw[i] == '\n' && (i == 0 || in->raw[i - 1] != '\r'))
			rc = tbuf_append(&m, "\r", 1);
		if (rc == TERN_OK)
			rc = tbuf_append(&m, in->raw + i, 1);
	}
	if (rc == TERN_OK)
		rc = tbuf_append(&m, "", 0);
	if (rc == TERN_OK)
		in->msg = tbuf_steal(&m, &in->len);
	tbuf_free(&m);
	if (!in->msg)
		fprintf(stderr, "tern: out of memory\n");
	return in->msg ? 0 : -1;
}

static void input_free(struct input *in)
{
	free(in->raw);
	free(in->msg);
}

/* Writes fields (CRLF) in the input's line-end convention, then the input. */
static int write_signed(const struct input *in, const char *fields, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (in->lf && fields[i] == '\r')
			continue;
		putchar(fields[i]);
	}
	fwrite(in->raw, 1, in->raw_len, stdout);
	return fflush(stdout) == 0 ? 0 : 1;
}

/* ------------------------------------------------------------ sign */

static int cmd_sign(int argc, char **argv)
{
	const char *path, *domain = NULL, *selector = NULL, *keyfile = NULL, *canon = NULL,
	                  *headers = NULL, *identity = NULL;
	uint64_t t = 0, expire = 0;
	bool have_t = false;
	if (cli_take_config(&argc, argv, &path) != 0) {
		usage(stderr);
		return 2;
	}
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		bool more = i + 1 < argc;
		if (strcmp(a, "--domain") == 0 && more)
			domain = argv[++i];
		else if (strcmp(a, "--selector") == 0 && more)
			selector = argv[++i];
		else if (strcmp(a, "--key") == 0 && more)
			keyfile = argv[++i];
		else if (strcmp(a, "--canon") == 0 && more)
			canon = argv[++i];
		else if (strcmp(a, "--headers") == 0 && more)
			headers = argv[++i];
		else if (strcmp(a, "--identity") == 0 && more)
			identity = argv[++i];
		else if (strcmp(a, "--time") == 0 && more &&
		         parse_u64(argv[i + 1], 999999999999ull, &t))
			have_t = true, i++;
		else if (strcmp(a, "--expire") == 0 && more &&
		         parse_u64(argv[i + 1], 100u * 365 * 86400, &expire))
			i++;
		else {
			usage(stderr);
			return 2;
		}
	}
	if (!domain || (keyfile && !selector) || (!keyfile && (selector || !path)) ||
	    (!keyfile && (canon || headers || identity || expire))) {
		fprintf(stderr, "tern: sign needs --domain and either --selector with --key, or -c "
		                "FILE (the config's keys; --canon, --headers, --identity and "
		                "--expire go with --key)\n");
		return 2;
	}
	struct dkim_sign_params p;
	dkim_sign_params_init(&p, domain, selector);
	if (have_t)
		p.timestamp = (int64_t)t;
	p.expire = (uint32_t)expire;
	p.auid = identity;
	if (canon) {
		const char *slash = strchr(canon, '/');
		size_t hl = slash ? (size_t)(slash - canon) : strlen(canon);
		bool hr = hl == 7 && strncmp(canon, "relaxed", 7) == 0;
		bool hs = hl == 6 && strncmp(canon, "simple", 6) == 0;
		bool br = slash && strcmp(slash + 1, "relaxed") == 0;
		bool bs = !slash || strcmp(slash + 1, "simple") == 0;
		if (!(hr || hs) || !(br || bs)) {
			fprintf(stderr, "tern: --canon: relaxed/relaxed, relaxed/simple, "
			                "simple/relaxed or simple/simple\n");
			return 2;
		}
		p.hcanon = hr ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
		p.bcanon = br ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
	}
	char *hcopy = NULL;
	const char *hv[DKIM_H_MAX];
	if (headers) {
		size_t n = 0;
		if (!(hcopy = tern_strdup(headers)))
			return 1;
		for (char *s = hcopy, *e; s && n < DKIM_H_MAX; s = e) {
			e = strchr(s, ':');
			if (e)
				*e++ = '\0';
			hv[n++] = s;
		}
		p.headers = hv;
		p.n_headers = n;
	}
	struct input in;
	struct tern_config *c = NULL;
	struct dkim_keyring *kr = NULL;
	struct dkim_key *k = NULL;
	char *out = NULL;
	size_t ol = 0;
	int status = 1, rc;
	if (read_input(&in) != 0)
		goto out;
	if (keyfile) {
		char warn[600], err[600];
		if (dkim_key_load(keyfile, &k, warn, sizeof(warn), err, sizeof(err)) != TERN_OK) {
			fprintf(stderr, "tern: %s\n", err);
			goto out;
		}
		if (warn[0])
			fprintf(stderr, "tern: warning: %s\n", warn);
		rc = dkim_sign(k, &p, in.msg, in.len, &out, &ol);
	} else {
		if (!(c = load_conf(path)) || !(kr = load_ring(c)))
			goto out;
		if (!dkim_keyring_domain_for(kr, domain)) {
			fprintf(stderr, "tern: no dkim key for %s (or a parent domain) in %s\n",
			        domain, c->source);
			goto out;
		}
		rc = dkim_keyring_sign(kr, domain, in.msg, in.len,
		                       have_t ? (int64_t)t : DKIM_SIGN_TIME_NOW, &out, &ol);
	}
	if (rc != TERN_OK) {
		fprintf(stderr, "tern: cannot sign: %s\n",
		        rc == TERN_EINVAL ? "the message has no From field, or a parameter is not "
		                            "valid (domain, selector, --headers must name From)"
		                          : tern_strerror(rc));
		goto out;
	}
	status = write_signed(&in, out, ol);
out:
	free(out);
	free(hcopy);
	dkim_key_free(k);
	dkim_keyring_free(kr);
	if (c)
		conf_unref(c);
	input_free(&in);
	return status;
}

/* ------------------------------------------------------------ verify */

static void verify_done(void *arg)
{
	event_base_loopbreak(arg);
}

static void print_results(const struct dkim_verify *v)
{
	size_t n = dkim_verify_count(v);
	if (n == 0)
		printf("dkim=none (no signature)\n");
	for (size_t i = 0; i < n; i++) {
		const struct dkim_result *r = dkim_verify_result(v, i);
		char d[300], s[300], a[64], id[600], why[300], b[64];
		size_t bl = dkim_verify_b_prefix_len(v, i);
		printf("dkim=%s (", dkim_status_name(r->status));
		if (r->status == DKIM_PASS && !r->reason[0])
			printf("%s, %u-bit key", shown(r->algorithm, a, sizeof(a)), r->key_bits);
		else
			printf("%s", shown(r->reason, why, sizeof(why)));
		if (r->testing)
			printf("; testing (t=y)");
		if (r->body_limited)
			printf("; l=%llu of %llu bytes", (unsigned long long)r->body_signed,
			       (unsigned long long)r->body_length);
		printf(") header.d=%s header.s=%s header.i=%s", shown(r->domain, d, sizeof(d)),
		       shown(r->selector, s, sizeof(s)), shown(r->auid, id, sizeof(id)));
		snprintf(b, sizeof(b), "%.*s", (int)(bl < 60 ? bl : 60), r->b);
		printf(" header.b=%s\n", shown(b, why, sizeof(why)));
	}
}

static int cmd_verify(int argc, char **argv)
{
	const char *path, *dnsfile = NULL;
	uint64_t now = 0, timeout = DEFAULT_TIMEOUT;
	bool allow = false;
	if (cli_take_config(&argc, argv, &path) != 0) {
		usage(stderr);
		return 2;
	}
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		bool more = i + 1 < argc;
		if (strcmp(a, "--dns-file") == 0 && more)
			dnsfile = argv[++i];
		else if (strcmp(a, "--now") == 0 && more &&
		         parse_u64(argv[i + 1], 999999999999ull, &now))
			i++;
		else if (strcmp(a, "--timeout") == 0 && more &&
		         parse_u64(argv[i + 1], 3600, &timeout) && timeout > 0)
			i++;
		else if (strcmp(a, "--allow-unsigned-body") == 0)
			allow = true;
		else {
			usage(stderr);
			return 2;
		}
	}
	struct dkim_verify_opts o;
	dkim_verify_opts_init(&o);
	o.now = (int64_t)now;
	o.allow_unsigned_body = allow;
	struct input in;
	struct dkim_keytab *tab = NULL;
	struct tern_config *c = NULL;
	struct dkim_verify *v = NULL;
	struct dkim_dns *dd = NULL;
	struct dns_run run;
	bool have_run = false;
	int status = 2, rc;
	if (read_input(&in) != 0)
		goto out;
	if (!(v = dkim_verify_new(&o)))
		goto out;
	if (dnsfile) {
		char *text = NULL, err[300];
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
		rc = dkim_verify_message(v, in.msg, in.len, dkim_keytab_lookup, tab);
	} else {
		/* the daemon's way: queries on the async resolver, the body meanwhile */
		size_t hl, bo;
		if (!(c = load_conf(path)) || dns_run_init(&run, c) != 0)
			goto out;
		have_run = true;
		dkim_split_message(in.msg, in.len, &hl, &bo);
		if ((rc = dkim_verify_headers(v, in.msg, hl)) == TERN_OK) {
			dd = dkim_verify_dns_start(v, run.res, run.base, (unsigned)timeout * 1000,
			                           verify_done, run.base);
			if (!dd)
				goto out;
			dkim_body_update(dkim_verify_body(v), in.msg + bo, in.len - bo);
			dkim_verify_body_end(v);
			dns_run_loop(&run, (unsigned)timeout + 1);
			dkim_verify_expire(v);
			rc = dkim_verify_finish(v);
		}
	}
	if (rc != TERN_OK) {
		fprintf(stderr, "tern: cannot verify: %s\n",
		        rc == TERN_ELIMIT ? "the header is too large" : tern_strerror(rc));
		goto out;
	}
	print_results(v);
	status = 1;
	for (size_t i = 0; i < dkim_verify_count(v); i++)
		if (dkim_verify_result(v, i)->status == DKIM_PASS)
			status = 0;
out:
	dkim_dns_free(dd);
	if (have_run)
		dns_run_free(&run);
	dkim_verify_free(v);
	dkim_keytab_free(tab);
	if (c)
		conf_unref(c);
	input_free(&in);
	return status;
}

int cmd_dkim(int argc, char **argv)
{
	if (cli_help_asked(argc, argv))
		return cli_help(&dkim_help);
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *sub = argv[1];
	if (strcmp(sub, "keygen") == 0)
		return cmd_keygen(argc - 1, argv + 1);
	if (strcmp(sub, "dns") == 0)
		return cmd_dns(argc - 1, argv + 1);
	if (strcmp(sub, "check") == 0)
		return cmd_check(argc - 1, argv + 1);
	if (strcmp(sub, "sign") == 0)
		return cmd_sign(argc - 1, argv + 1);
	if (strcmp(sub, "verify") == 0)
		return cmd_verify(argc - 1, argv + 1);
	if (strcmp(sub, "help") == 0 || strcmp(sub, "--help") == 0) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "tern: unknown dkim command '%s'\n", sub);
	usage(stderr);
	return 2;
}
