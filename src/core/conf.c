/*
 * conf.c — turns a parsed UCL tree (core/ucl.h) into a validated, immutable
 * struct tern_config with every default filled in, prints it back, and
 * answers the questions the rest of tern asks of it (local domain? alias?
 * trusted network?).
 *
 * Owns: the list of keys, their types, ranges and defaults (documented in
 * docs/config.md, which must change with this file), the embedded default
 * configuration, CIDR and listen-address parsing.
 * Never: accepts a key it does not know or a value of the wrong type (a typo
 * must not silently turn a setting off), returns a half-built config, or
 * changes a config after conf_load* returned it (sessions share it across
 * threads without locks).
 */
#include "core/conf.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "auth/auth.h"
#include "core/ucl.h"
#include "policy/milter.h"
#include "policy/policy.h"
#include "store/checks.h"

#define DEFAULT_SOURCE "(embedded default)"
#define MAX_PATH_LEN 1024
#define MAX_LOCAL_DOMAINS 10000
#define MAX_ALIASES 100000
#define MAX_ALIAS_TARGETS 1000
#define MAX_NETWORKS 1000
#define MAX_LISTENERS 64
#define MAX_ROUTES 10000
#define MAX_FORWARDERS 16
#define MAX_HTTP_HOSTS 1000
#define MAX_DKIM_KEYS 1000
#define DEFAULT_HTTP_MAX_BODY (64u << 20)
#define DEFAULT_HTTP_MAX_CONNECTIONS 256

/*
 * The configuration tern runs with when no file is given; `tern
 * check-config` without -c prints the result. A file that sets nothing gets
 * exactly these values too (conf.c fills the same defaults in code), which
 * the unit tests check. hostname is left out: it defaults to gethostname().
 */
static const char default_text[] =
    "# tern: the embedded default configuration\n"
    "data_dir = \"./tern-data\";   # users_file defaults to DATA_DIR/users\n"
    "user = \"nobody\";\n"
    "log_level = \"info\";\n"
    "workers = 0;                  # one per core\n"
    "vrfy = true;\n"
    "expn = false;\n"
    "recipient_delimiter = \"+\";     # user+tag@ is delivered to user@ (\"\" turns it off)\n"
    "local_domains = [\"localhost\"];\n"
    "aliases { }\n"
    "senders { }                   # an authenticated user sends as itself and its aliases\n"
    "relay {\n"
    "\tnetworks = [\"127.0.0.0/8\", \"::1/128\"];\n"
    "}\n"
    "auth {                        # AUTH on submission listeners\n"
    "\tallow_plaintext = false;     # AUTH only inside TLS\n"
    "\tmechanisms = [\"PLAIN\", \"LOGIN\"];\n"
    "\treceived_header_user = false;\n"
    "\tthrottle {\n"
    "\t\tdelay_after = 0;\n"
    "\t\tdelay = 1s;\n"
    "\t\tmax_delay = 16s;\n"
    "\t\taddr_block_after = 10;\n"
    "\t\tuser_block_after = 30;\n"
    "\t\tblock_time = 15min;\n"
    "\t\tforget_after = 1h;\n"
    "\t\tmax_entries = 65536;\n"
    "\t}\n"
    "}\n"
    "limits {\n"
    "\tmax_message_size = 32m;\n"
    "\tmax_recipients = 1000;\n"
    "\tmax_connections = 10000;\n"
    "\tmax_connections_per_ip = 100;\n"
    "\tmax_line_length = 2048;\n"
    "\tmax_errors = 20;\n"
    "\tmax_received_headers = 100;\n"
    "\tidle_timeout = 5min;\n"
    "\tdata_timeout = 3min;\n"
    "\tshutdown_grace = 30s;\n"
    "\tinflight_memory = 256m;\n"
    "}\n"
    "listen {\n"
    "\tmx { address = \"127.0.0.1:2525\"; profile = \"mx\"; }\n"
    "\tmx { address = \"127.0.0.1:2525\"; profile = \"mx\"; }\n"
    "\tsubmission { address = \"127.0.0.1:2587\"; profile = \"submission\"; tls = \"starttls\"; }\n"
    "\tsubmissions { address = \"127.0.0.1:2465\"; profile = \"submission\"; tls = \"implicit\"; "
    "}\n"
    "\tpop3 { address = \"127.0.0.1:2110\"; profile = \"pop3\"; tls = \"starttls\"; }\n"
    "\tpop3s { address = \"127.0.0.1:2995\"; profile = \"pop3\"; tls = \"implicit\"; }\n"
    "\tapi { address = \"127.0.0.1:2580\"; profile = \"http\"; }\n"
    "}\n"
    "routes { }\n"
    "# no relayhost: mail for other domains goes to their MX hosts\n"
    "delivery {\n"
    "\tremote_port = 25;\n"
    "\tretry_base = 5min;\n"
    "\tretry_max = 1h;\n"
    "\tmax_lifetime = 5d;\n"
    "\tdelay_warning = 4h;\n"
    "\tmax_per_destination = 10;\n"
    "\tconnect_timeout = 30s;\n"
    "\tcommand_timeout = 5min;\n"
    "}\n"
    "mailbox {\n"
    "\tquota = 1g;                 # per Maildir; 0: unlimited; per user: "
    "userdb_quota_rule=*:storage=512M\n"
    "}\n"
    "dns {\n"
    "\tforward = [];               # empty: the servers in /etc/resolv.conf\n"
    "}\n"
    "capture {\n"
    "\tmax_messages = 0;           # tern capture: 0 keeps every message\n"
    "\tmax_age = 0s;               # 0 keeps messages forever\n"
    "\thttp_allowed_hosts = [];     # besides IP addresses, localhost and hostname\n"
    "\thttp_max_body = 64m;\n"
    "\thttp_max_connections = 256;\n"
    "}\n"
    "tls {\n"
    "\tself_signed = true;          # made in DATA_DIR/tls/ on first start\n"
    "}\n"
    "policy {                      # abuse defences of mx listeners: all off\n"
    "\tdns_timeout = 5s;\n"
    "\tdnsbl { zones = []; threshold = 1; }\n"
    "\tpregreet { delay = 0s; action = \"reject\"; }\n"
    "\tfcrdns { enabled = false; require = false; reject_code = 450; }\n"
    "\tgreylist { enabled = false; delay = 5min; retry_window = 2d; expire = 35d; }\n"
    "\tratelimit {\n"
    "\t\tconnections_per_minute = 0;  # 0: no limit\n"
    "\t\tmessages_per_minute = 0;\n"
    "\t\trecipients_per_minute = 0;\n"
    "\t}\n"
    "}\n"
    "auth_checks {                 # on mx listeners; not for relay.networks or AUTH clients\n"
    "\tspf = true;                 # Received-SPF and spf= in Authentication-Results\n"
    "\tdkim = true;                # dkim= per signature in Authentication-Results\n"
    "\tarc = true;                 # ARC chain (RFC 8617): arc= in Authentication-Results\n"
    "\tdmarc = \"mark\";            # off, mark (record only) or enforce (550 / Junk)\n"
    "\tdefer_on_temperror = false; # DMARC temperror: deliver (false) or 451 (true)\n"
    "\ttimeout = 20s;              # DNS time for each of SPF, DKIM, DMARC\n"
    "}\n"
    "dkim {\n"
    "\tcanonicalization = \"relaxed/relaxed\";\n"
    "\tsign_relayed = false;       # also sign mail from relay.networks (AUTH users: always)\n"
    "\tkeys = [];                  # { domain = \"example.org\"; selector = \"s1\"; key_file = "
    "\"...\"; }\n"
    "}\n"
    "arc {\n"
    "\ttrusted_sealers = [];       # ARC sealers whose results may override a DMARC failure\n"
    "\t# seal_domain = \"example.org\"; # seal forwarded mail with that dkim.keys entry\n"
    "}\n";

static const char *const default_networks[] = {"127.0.0.0/8", "::1/128"};

static const struct conf_limits default_limits = {
    .max_message_size = 32u << 20,
    .max_recipients = 1000,
    .max_connections = 10000,
    .max_connections_per_ip = 100,
    .max_line_length = 2048,
    .max_errors = 20,
    .max_received_headers = 100,
    .idle_timeout = 300,
    .data_timeout = 180,
    .shutdown_grace = 30,
    .inflight_memory = 256u << 20,
    .queued_memory = 128u << 20,
};

static const struct conf_delivery default_delivery = {
    .remote_port = 25,
    .retry_base = 300,
    .retry_max = 3600,
    .max_lifetime = 5 * 86400,
    .delay_warning = 4 * 3600,
    .max_per_destination = 10,
    .connect_timeout = 30,
    .command_timeout = 300,
    .dane = true,
    .mta_sts = true,
    .chunking = true,
    .pipeline_next = true,
    .mta_sts_port = 443,
};

/* ---- errors -------------------------------------------------------------- */

struct ctx {
	const struct ucl_doc *doc;
	char *err;
	size_t errlen;
	/* TLS keys gathered while parsing, resolved by finish_tls once every
	 * section is read (a listener may come before the tls section). */
	const struct ucl_node *listen_tls[MAX_LISTENERS]; /* listen.NAME.tls, or NULL */
	const struct ucl_node *tls_sec, *tls_self_signed;
	char *tls_cert, *tls_key;       /* tls.cert_file / key_file */
	struct conf_tls_cert *tls_list; /* tls.certificates */
	size_t n_tls_list;
	/* suppression.verp_domain / feedback_address, for finish_suppression's errors */
	const struct ucl_node *suppr_verp, *suppr_fbl;
};

__attribute__((format(printf, 3, 4))) static int cerr(struct ctx *x, const struct ucl_node *n,
                                                      const char *fmt, ...)
{
	if (!x->err || x->errlen == 0)
		return TERN_EINVAL;
	/* NAME:LINE: for a key, NAME: for a rule between sections */
	int k = n ? snprintf(x->err, x->errlen, "%s:%u: ", ucl_node_file(x->doc, n), n->line)
	          : snprintf(x->err, x->errlen, "%s: ", ucl_node_file(x->doc, NULL));
	if (k >= 0 && (size_t)k < x->errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(x->err + k, x->errlen - (size_t)k, fmt, ap);
		va_end(ap);
	}
	return TERN_EINVAL;
}

/* A user's string made safe and short for an error message. */
static const char *show(const char *s, char *buf, size_t n)
{
	size_t o = 0, max = n > 4 ? n - 4 : 0;
	for (; *s && o < max; s++)
		buf[o++] = ((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s;
	if (*s && n >= 4) {
		memcpy(buf + o, "...", 3);
		o += 3;
	}
	buf[o] = '\0';
	return buf;
}

static int nomem(struct ctx *x)
{
	if (x->err && x->errlen)
		snprintf(x->err, x->errlen, "%s: out of memory", ucl_node_file(x->doc, NULL));
	return TERN_ENOMEM;
}

/* ---- value checks -------------------------------------------------------- */

static bool valid_domain(const char *s)
{
	size_t n = strlen(s), label = 0;
	if (n == 0 || n > 253)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_'))
			return false;
		if (++label > 63)
			return false;
	}
	return label > 0;
}

/* local@domain with an unquoted local part; what an alias may name. */
static bool valid_address(const char *s)
{
	const char *at = strchr(s, '@');
	if (!at || at == s || (size_t)(at - s) > 64 || strlen(s) > 254)
		return false;
	for (const char *p = s; p < at; p++) {
		unsigned char c = (unsigned char)*p;
		if (c <= 0x20 || c == 0x7f || strchr("<>()[]\\,;:\"@", c))
			return false;
	}
	return valid_domain(at + 1);
}

static bool valid_name(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n == 0 || n > max)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '-' || *s == '_'))
			return false;
	return true;
}

static bool valid_user(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 32)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s <= 0x20 || *s == 0x7f || *s == ':' || *s == '/')
			return false;
	return true;
}

/* ---- typed getters ------------------------------------------------------- */

static const char *got(const struct ucl_node *n, char *buf, size_t len)
{
	char tmp[48];
	switch (n->type) {
	case UCL_STRING:
		snprintf(buf, len, "the string \"%s\"", show(n->str, tmp, sizeof(tmp)));
		return buf;
	case UCL_INT:
		snprintf(buf, len, "the number %lld", (long long)n->ival);
		return buf;
	case UCL_FLOAT:
		snprintf(buf, len, "the number %g", n->fval);
		return buf;
	case UCL_BOOL:
		return n->bval ? "the boolean true" : "the boolean false";
	default:
		return ucl_type_name(n->type);
	}
}

static int want(struct ctx *x, const struct ucl_node *n, const char *path, const char *what)
{
	char g[96];
	return cerr(x, n, "%s: expected %s, got %s", path, what, got(n, g, sizeof(g)));
}

/* Replaces *out with a copy of a string value (empty strings refused). */
static int get_str(struct ctx *x, const struct ucl_node *n, const char *path, char **out)
{
	if (n->type != UCL_STRING)
		return want(x, n, path, "a string");
	if (n->len == 0)
		return cerr(x, n, "%s: must not be empty", path);
	char *s = tern_strdup(n->str);
	if (!s)
		return nomem(x);
	free(*out);
	*out = s;
	return TERN_OK;
}

static int get_path(struct ctx *x, const struct ucl_node *n, const char *path, char **out)
{
	int rc = get_str(x, n, path, out);
	if (rc != TERN_OK)
		return rc;
	if (strlen(*out) > MAX_PATH_LEN)
		return cerr(x, n, "%s: path longer than %d bytes", path, MAX_PATH_LEN);
	for (const char *p = *out; *p; p++) /* they end up in logs and error messages */
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return cerr(x, n, "%s: control character in path", path);
	return TERN_OK;
}

static int get_bool(struct ctx *x, const struct ucl_node *n, const char *path, bool *out)
{
	if (n->type != UCL_BOOL)
		return want(x, n, path, "true or false");
	*out = n->bval;
	return TERN_OK;
}

enum numkind { NK_COUNT, NK_SIZE, NK_TIME };

static int get_num(struct ctx *x, const struct ucl_node *n, const char *path, enum numkind k,
                   uint64_t min, uint64_t max, uint64_t *out)
{
	static const char *const what[] = {
	    "a whole number",
	    "a size (bytes, or a number with k, m or g)",
	    "a time (seconds, or a number with s, min, h, d or w)",
	};
	if (n->type == UCL_FLOAT && k == NK_TIME)
		return cerr(x, n, "%s: must be a whole number of seconds", path);
	if (n->type != UCL_INT)
		return want(x, n, path, what[k]);
	if (n->unit == UCL_UNIT_TIME && k != NK_TIME)
		return cerr(x, n, "%s: expected %s, got a time", path, what[k]);
	if (n->unit == UCL_UNIT_SIZE && k != NK_SIZE)
		return cerr(x, n, "%s: expected %s, got a size", path, what[k]);
	if (n->ival < 0)
		return cerr(x, n, "%s: must not be negative", path);
	uint64_t v = (uint64_t)n->ival;
	if (v < min)
		return cerr(x, n, "%s: %llu is below the minimum %llu", path, (unsigned long long)v,
		            (unsigned long long)min);
	if (v > max)
		return cerr(x, n, "%s: %llu is above the maximum %llu", path, (unsigned long long)v,
		            (unsigned long long)max);
	*out = v;
	return TERN_OK;
}

static int want_section(struct ctx *x, const struct ucl_node *n, const char *path)
{
	if (n->type != UCL_OBJECT)
		return want(x, n, path, "a section { ... }");
	return TERN_OK;
}

static int unknown_key(struct ctx *x, const struct ucl_node *n, const char *section)
{
	char b[80];
	if (!section)
		return cerr(x, n, "unknown key '%s'", show(n->key, b, sizeof(b)));
	return cerr(x, n, "unknown key '%s' in section %s", show(n->key, b, sizeof(b)), section);
}

/* A section whose keys are read after all are known: each slot points at
 * its key's node (NULL when absent; the last one when given twice). */
struct key_slot {
	const char *key;
	const struct ucl_node **node;
};

/* Fills the slots from section m; a key no slot names is an error. */
static int collect_keys(struct ctx *x, const struct ucl_node *m, const char *section,
                        const struct key_slot *slots, size_t n_slots)
{
	for (size_t s = 0; s < n_slots; s++)
		*slots[s].node = NULL;
	for (size_t i = 0; i < m->n_items; i++) {
		const struct ucl_node *k = m->items[i];
		size_t s = 0;
		while (s < n_slots && strcmp(k->key, slots[s].key) != 0)
			s++;
		if (s == n_slots)
			return unknown_key(x, k, section);
		*slots[s].node = k;
	}
	return TERN_OK;
}

/*
 * A list of strings: `[ "a", "b" ]` or, for convenience, one string. Calls
 * fn for each; fn reports its own errors.
 */
typedef int (*str_fn)(struct ctx *x, const struct ucl_node *n, const char *path, void *arg);

static int each_string(struct ctx *x, const struct ucl_node *n, const char *path, size_t max,
                       str_fn fn, void *arg)
{
	if (n->type == UCL_STRING)
		return fn(x, n, path, arg);
	if (n->type != UCL_ARRAY)
		return want(x, n, path, "a list of strings");
	if (n->n_items > max)
		return cerr(x, n, "%s: more than %zu entries", path, max);
	for (size_t i = 0; i < n->n_items; i++) {
		const struct ucl_node *e = n->items[i];
		if (e->type != UCL_STRING)
			return want(x, e, path, "a list of strings");
		int rc = fn(x, e, path, arg);
		if (rc != TERN_OK)
			return rc;
	}
	return TERN_OK;
}

struct strlist {
	char **v;
	size_t n;
};

static void strlist_free(struct strlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

static int strlist_add(struct strlist *l, const char *s)
{
	char **v = realloc(l->v, (l->n + 1) * sizeof(*v));
	if (!v)
		return TERN_ENOMEM;
	l->v = v;
	if (!(v[l->n] = tern_strdup(s)))
		return TERN_ENOMEM;
	tern_ascii_lower(v[l->n]);
	l->n++;
	return TERN_OK;
}

static bool strlist_has(const struct strlist *l, const char *s)
{
	for (size_t i = 0; i < l->n; i++)
		if (tern_ascii_ieq(l->v[i], s))
			return true;
	return false;
}

/* ---- CIDR and addresses -------------------------------------------------- */

/* Parses ADDR[/PREFIX]; *host_bits tells whether bits past the prefix are set. */
static bool cidr_parse_loose(const char *s, struct conf_cidr *out, bool *host_bits)
{
	char ip[INET6_ADDRSTRLEN + 1];
	const char *slash = strchr(s, '/');
	size_t iplen = slash ? (size_t)(slash - s) : strlen(s);
	struct conf_cidr c;
	memset(&c, 0, sizeof(c));
	if (iplen == 0 || iplen >= sizeof(ip))
		return false;
	memcpy(ip, s, iplen);
	ip[iplen] = '\0';
	if (inet_pton(AF_INET, ip, c.addr) == 1)
		c.family = AF_INET;
	else if (inet_pton(AF_INET6, ip, c.addr) == 1)
		c.family = AF_INET6;
	else
		return false;
	unsigned maxp = c.family == AF_INET ? 32 : 128;
	c.prefix = maxp;
	if (slash) {
		const char *d = slash + 1;
		size_t nd = strlen(d);
		if (nd == 0 || nd > 3 || strspn(d, "0123456789") != nd)
			return false;
		unsigned p = 0;
		for (; *d; d++)
			p = p * 10 + (unsigned)(*d - '0');
		if (p > maxp)
			return false;
		c.prefix = p;
	}
	*host_bits = false;
	for (unsigned bit = c.prefix; bit < maxp; bit++)
		if (c.addr[bit / 8] & (0x80u >> (bit % 8)))
			*host_bits = true;
	*out = c;
	return true;
}

bool conf_cidr_parse(const char *s, struct conf_cidr *out)
{
	bool hb;
	struct conf_cidr c;
	if (!s || !cidr_parse_loose(s, &c, &hb) || hb)
		return false;
	if (out)
		*out = c;
	return true;
}

static const uint8_t v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

bool conf_cidr_match(const struct conf_cidr *net, const void *sa)
{
	if (!net || !sa)
		return false;
	sa_family_t fam;
	memcpy(&fam, (const char *)sa + offsetof(struct sockaddr, sa_family), sizeof(fam));
	uint8_t a[16];
	int afam;
	if (fam == AF_INET) {
		struct sockaddr_in sin;
		memcpy(&sin, sa, sizeof(sin));
		memcpy(a, &sin.sin_addr, 4);
		afam = AF_INET;
	} else if (fam == AF_INET6) {
		struct sockaddr_in6 sin6;
		memcpy(&sin6, sa, sizeof(sin6));
		if (memcmp(sin6.sin6_addr.s6_addr, v4mapped_prefix, 12) == 0) {
			memcpy(a, sin6.sin6_addr.s6_addr + 12, 4);
			afam = AF_INET;
		} else {
			memcpy(a, sin6.sin6_addr.s6_addr, 16);
			afam = AF_INET6;
		}
	} else {
		return false;
	}
	/* A network written as ::ffff:a.b.c.d/N (N >= 96) is an IPv4 network. */
	const uint8_t *na = net->addr;
	int nfam = net->family;
	unsigned prefix = net->prefix;
	if (nfam == AF_INET6 && prefix >= 96 && memcmp(na, v4mapped_prefix, 12) == 0) {
		nfam = AF_INET;
		na += 12;
		prefix -= 96;
	}
	if (nfam != afam || prefix > (nfam == AF_INET ? 32u : 128u))
		return false;
	unsigned full = prefix / 8, rest = prefix % 8;
	if (memcmp(na, a, full) != 0)
		return false;
	if (rest) {
		uint8_t mask = (uint8_t)(0xffu << (8 - rest));
		if ((na[full] & mask) != (a[full] & mask))
			return false;
	}
	return true;
}

bool conf_in_relay_networks(const struct tern_config *c, const void *sa)
{
	if (!c)
		return false;
	for (size_t i = 0; i < c->n_relay_networks; i++)
		if (conf_cidr_match(&c->relay_networks[i], sa))
			return true;
	return false;
}

bool conf_parse_address(const char *s, void *ss_out, unsigned *len_out)
{
	char host[INET6_ADDRSTRLEN + 1];
	const char *port;
	size_t hl;
	bool v6;
	if (!s || strlen(s) > 64)
		return false;
	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (!close || close[1] != ':')
			return false;
		hl = (size_t)(close - s - 1);
		memcpy(host, s + 1, hl < sizeof(host) ? hl : 0);
		port = close + 2;
		v6 = true;
	} else {
		const char *colon = strrchr(s, ':');
		if (!colon)
			return false;
		hl = (size_t)(colon - s);
		memcpy(host, s, hl < sizeof(host) ? hl : 0);
		port = colon + 1;
		v6 = false;
	}
	if (hl == 0 || hl >= sizeof(host))
		return false;
	host[hl] = '\0';
	size_t pl = strlen(port);
	if (pl == 0 || pl > 5 || strspn(port, "0123456789") != pl)
		return false;
	unsigned long p = strtoul(port, NULL, 10);
	if (p == 0 || p > 65535)
		return false;
	struct sockaddr_storage ss;
	unsigned len;
	memset(&ss, 0, sizeof(ss));
	if (v6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
			return false;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons((uint16_t)p);
		len = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
			return false;
		a->sin_family = AF_INET;
		a->sin_port = htons((uint16_t)p);
		len = sizeof(*a);
	}
	if (ss_out)
		memcpy(ss_out, &ss, len);
	if (len_out)
		*len_out = len;
	return true;
}

/* "IP:PORT" / "[IPv6]:PORT" in the one spelling inet_ntop gives. */
static bool canonical_address(const char *s, char *out, size_t outlen)
{
	struct sockaddr_storage ss;
	unsigned len;
	char ip[INET6_ADDRSTRLEN];
	if (!conf_parse_address(s, &ss, &len))
		return false;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
		snprintf(out, outlen, "%s:%u", ip, (unsigned)ntohs(a->sin_port));
	} else {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
		snprintf(out, outlen, "[%s]:%u", ip, (unsigned)ntohs(a->sin6_port));
	}
	return true;
}

/* ---- sections ------------------------------------------------------------ */

/* Adds n's string to the string list arg (once), if ok; else the error
 * says what it is not. */
static int add_checked(struct ctx *x, const struct ucl_node *n, const char *path, void *arg,
                       bool ok, const char *is_not)
{
	struct strlist *l = arg;
	char b[80];
	if (!ok)
		return cerr(x, n, "%s: '%s' %s", path, show(n->str, b, sizeof(b)), is_not);
	if (strlist_has(l, n->str))
		return TERN_OK;
	return strlist_add(l, n->str) == TERN_OK ? TERN_OK : nomem(x);
}

static int add_domain(struct ctx *x, const struct ucl_node *n, const char *path, void *arg)
{
	return add_checked(x, n, path, arg, valid_domain(n->str), "is not a valid domain name");
}

static int add_target(struct ctx *x, const struct ucl_node *n, const char *path, void *arg)
{
	return add_checked(x, n, path, arg, valid_address(n->str),
	                   "is not an address (expected local@domain)");
}

/* An entry of senders: an address, or "@domain" for every address in it. */
static int add_sender(struct ctx *x, const struct ucl_node *n, const char *path, void *arg)
{
	bool ok = n->str[0] == '@' ? valid_domain(n->str + 1) : valid_address(n->str);
	return add_checked(x, n, path, arg, ok, "is neither an address nor \"@domain\"");
}

struct netlist {
	struct conf_cidr *v;
	size_t n;
};

static int add_network(struct ctx *x, const struct ucl_node *n, const char *path, void *arg)
{
	struct netlist *l = arg;
	struct conf_cidr c;
	bool hb;
	char b[80];
	if (!cidr_parse_loose(n->str, &c, &hb))
		return cerr(x, n, "%s: '%s' is not a network (expected ADDRESS/PREFIX)", path,
		            show(n->str, b, sizeof(b)));
	if (hb) {
		char ip[INET6_ADDRSTRLEN];
		unsigned maxp = c.family == AF_INET ? 32 : 128;
		for (unsigned bit = c.prefix; bit < maxp; bit++)
			c.addr[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
		inet_ntop(c.family, c.addr, ip, sizeof(ip));
		return cerr(x, n, "%s: '%s' has bits set after the prefix (did you mean %s/%u?)",
		            path, show(n->str, b, sizeof(b)), ip, c.prefix);
	}
	struct conf_cidr *v = realloc(l->v, (l->n + 1) * sizeof(*v));
	if (!v)
		return nomem(x);
	l->v = v;
	v[l->n++] = c;
	return TERN_OK;
}

static int parse_relay(struct ctx *x, const struct ucl_node *sec, struct netlist *nets, bool *given)
{
	int rc = want_section(x, sec, "relay");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		if (strcmp(m->key, "networks") == 0) {
			free(nets->v);
			nets->v = NULL;
			nets->n = 0;
			*given = true;
			rc = each_string(x, m, "relay.networks", MAX_NETWORKS, add_network, nets);
		} else {
			rc = unknown_key(x, m, "relay");
		}
	}
	return rc;
}

struct limit_spec {
	const char *name;
	enum numkind kind;
	size_t off;
	bool wide; /* uint64_t rather than uint32_t */
	uint64_t min, max;
};

#define LIM32(n, k, lo, hi)                                                                        \
	{                                                                                          \
#n, k, offsetof(struct conf_limits, n), false, lo, hi                              \
	}

static const struct limit_spec limit_specs[] = {
    {"max_message_size", NK_SIZE, offsetof(struct conf_limits, max_message_size), true, 1,
     4ull << 30},
    LIM32(max_recipients, NK_COUNT, 1, 100000),
    LIM32(max_connections, NK_COUNT, 1, 1000000),
    LIM32(max_connections_per_ip, NK_COUNT, 1, 1000000),
    LIM32(max_line_length, NK_SIZE, 512, 65536),
    LIM32(max_errors, NK_COUNT, 1, 10000),
    LIM32(max_received_headers, NK_COUNT, 1, 10000),
    LIM32(idle_timeout, NK_TIME, 1, 86400),
    LIM32(data_timeout, NK_TIME, 1, 86400),
    LIM32(shutdown_grace, NK_TIME, 0, 86400),
    {"inflight_memory", NK_SIZE, offsetof(struct conf_limits, inflight_memory), true, 64u << 10,
     1ull << 40},
    {"queued_memory", NK_SIZE, offsetof(struct conf_limits, queued_memory), true, 0, 1ull << 40},
};

#define N_LIMITS (sizeof(limit_specs) / sizeof(limit_specs[0]))

static int parse_limits(struct ctx *x, const struct ucl_node *sec, struct conf_limits *lim)
{
	int rc = want_section(x, sec, "limits");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		const struct limit_spec *ls = NULL;
		for (size_t j = 0; j < N_LIMITS; j++)
			if (strcmp(m->key, limit_specs[j].name) == 0)
				ls = &limit_specs[j];
		if (!ls) {
			rc = unknown_key(x, m, "limits");
			break;
		}
		char path[64];
		uint64_t v = 0;
		snprintf(path, sizeof(path), "limits.%s", ls->name);
		rc = get_num(x, m, path, ls->kind, ls->min, ls->max, &v);
		if (rc != TERN_OK)
			break;
		char *field = (char *)lim + ls->off;
		if (ls->wide) {
			memcpy(field, &v, sizeof(v));
		} else {
			uint32_t v32 = (uint32_t)v;
			memcpy(field, &v32, sizeof(v32));
		}
	}
	return rc;
}

/* Aliases as read, with their order of appearance so that the later of two
 * keys that are equal after lowercasing wins. */
struct alias_tmp {
	struct conf_alias a;
	size_t seq;
};

struct aliaslist {
	struct alias_tmp *v;
	size_t n;
};

static void alias_free_one(struct conf_alias *a)
{
	free(a->from);
	for (size_t j = 0; j < a->n_to; j++)
		free(a->to[j]);
	free(a->to);
}

/*
 * aliases { ADDRESS = [ADDRESS, ...]; } and senders { USER = [ADDRESS or
 * "@DOMAIN", ...]; }: the same shape, an address mapped to a list whose
 * entries add checks (add_target, add_sender).
 */
static int parse_address_map(struct ctx *x, const struct ucl_node *sec, const char *section,
                             str_fn add, struct aliaslist *al)
{
	int rc = want_section(x, sec, section);
	if (rc != TERN_OK)
		return rc;
	if (sec->n_items > MAX_ALIASES)
		return cerr(x, sec, "%s: more than %d entries", section, MAX_ALIASES);
	for (size_t i = 0; i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		char b[80], path[120];
		if (!valid_address(m->key))
			return cerr(x, m, "%s: '%s' is not an address (expected local@domain)",
			            section, show(m->key, b, sizeof(b)));
		snprintf(path, sizeof(path), "%s.\"%s\"", section, show(m->key, b, sizeof(b)));
		if (m->type == UCL_ARRAY && m->n_items == 0)
			return cerr(x, m, "%s: needs at least one address", path);
		struct strlist to = {0};
		rc = each_string(x, m, path, MAX_ALIAS_TARGETS, add, &to);
		if (rc != TERN_OK) {
			strlist_free(&to);
			return rc;
		}
		struct alias_tmp *v = realloc(al->v, (al->n + 1) * sizeof(*v));
		char *from = v ? tern_strdup(m->key) : NULL;
		if (v)
			al->v = v;
		if (!from) {
			strlist_free(&to);
			return nomem(x);
		}
		tern_ascii_lower(from);
		al->v[al->n] = (struct alias_tmp){{from, to.v, to.n}, al->n};
		al->n++;
	}
	return TERN_OK;
}

static int alias_tmp_cmp(const void *a, const void *b)
{
	const struct alias_tmp *x = a, *y = b;
	int r = strcmp(x->a.from, y->a.from);
	if (r)
		return r;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Sorted by address so conf_find_alias can bisect; of equal keys the last
 * one read is kept. */
static int finish_address_map(struct ctx *x, struct aliaslist *al, struct conf_alias **map,
                              size_t *n_map)
{
	size_t n = al->n, o = 0;
	if (n == 0)
		return TERN_OK;
	qsort(al->v, n, sizeof(al->v[0]), alias_tmp_cmp);
	struct conf_alias *out = calloc(n, sizeof(*out));
	if (!out)
		return nomem(x);
	for (size_t i = 0; i < n; i++) {
		if (i + 1 < n && strcmp(al->v[i].a.from, al->v[i + 1].a.from) == 0)
			alias_free_one(&al->v[i].a);
		else
			out[o++] = al->v[i].a;
	}
	free(al->v);
	al->v = NULL;
	al->n = 0;
	*map = out;
	*n_map = o;
	return TERN_OK;
}

static void aliaslist_free(struct aliaslist *al)
{
	for (size_t i = 0; i < al->n; i++)
		alias_free_one(&al->v[i].a);
	free(al->v);
	al->v = NULL;
	al->n = 0;
}

static int listener_add(struct ctx *x, struct tern_config *c, const char *name, const char *address,
                        const char *profile)
{
	struct conf_listener *v = realloc(c->listeners, (c->n_listeners + 1) * sizeof(*v));
	if (!v)
		return nomem(x);
	c->listeners = v;
	struct conf_listener *l = &v[c->n_listeners];
	l->name = tern_strdup(name);
	l->address = tern_strdup(address);
	l->profile = tern_strdup(profile);
	l->tls = CONF_LISTEN_TLS_NONE; /* finish_tls resolves the default */
	l->milters = NULL;
	l->n_milters = 0;
	l->milter_default_action = CONF_MILTER_TEMPFAIL;
	l->milter_timeout = 30;
	l->milter_eom_timeout = 300;
	c->n_listeners++; /* counted even if a copy failed, so unref frees what exists */
	if (!l->name || !l->address || !l->profile)
		return nomem(x);
	return TERN_OK;
}

static const char *const listen_tls_names[] = {"none", "starttls", "implicit"};

static int get_listen_tls(struct ctx *x, const struct ucl_node *n, const char *listener,
                          enum conf_listen_tls *out)
{
	char b[80], sub[128];
	snprintf(sub, sizeof(sub), "%s.tls", listener);
	if (n->type != UCL_STRING)
		return want(x, n, sub, "\"starttls\", \"implicit\" or \"none\"");
	for (size_t i = 0; i < 3; i++) {
		if (strcmp(n->str, listen_tls_names[i]) == 0) {
			*out = (enum conf_listen_tls)i;
			return TERN_OK;
		}
	}
	return cerr(x, n, "%s: must be \"starttls\", \"implicit\" or \"none\", not '%s'", sub,
	            show(n->str, b, sizeof(b)));
}

/* listen.NAME { milters = [...]; milter_default_action = "..."; } */
#define MAX_MILTERS 16

static int add_milter(struct ctx *x, const struct ucl_node *n, const char *path, void *arg)
{
	struct conf_listener *l = arg;
	char b[80];
	if (milter_spec_check(n->str) != TERN_OK)
		return cerr(x, n,
		            "%s: '%s' is not inet:IP:PORT, inet:[IPv6]:PORT or unix:/PATH (a host "
		            "name would need a blocking lookup: give its address)",
		            path, show(n->str, b, sizeof(b)));
	char **v = realloc(l->milters, (l->n_milters + 1) * sizeof(*v));
	if (!v)
		return nomem(x);
	l->milters = v;
	if (!(v[l->n_milters] = tern_strdup(n->str))) /* case kept: a path */
		return nomem(x);
	l->n_milters++;
	return TERN_OK;
}

static int parse_listener_milters(struct ctx *x, struct conf_listener *l, const char *path,
                                  const struct ucl_node *milters, const struct ucl_node *mact,
                                  const struct ucl_node *mto, const struct ucl_node *meom)
{
	char sub[128], b[80];
	l->milters = NULL;
	l->n_milters = 0;
	l->milter_default_action = CONF_MILTER_TEMPFAIL;
	l->milter_timeout = 30;
	l->milter_eom_timeout = 300;
	uint64_t v;
	if (mto) {
		snprintf(sub, sizeof(sub), "%s.milter_timeout", path);
		int rc = get_num(x, mto, sub, NK_TIME, 1, 3600, &v);
		if (rc != TERN_OK)
			return rc;
		l->milter_timeout = (uint32_t)v;
	}
	if (meom) {
		snprintf(sub, sizeof(sub), "%s.milter_eom_timeout", path);
		int rc = get_num(x, meom, sub, NK_TIME, 1, 3600, &v);
		if (rc != TERN_OK)
			return rc;
		l->milter_eom_timeout = (uint32_t)v;
	}
	if (milters) {
		snprintf(sub, sizeof(sub), "%s.milters", path);
		int rc = each_string(x, milters, sub, MAX_MILTERS, add_milter, l);
		if (rc != TERN_OK)
			return rc;
	}
	if (mact) {
		snprintf(sub, sizeof(sub), "%s.milter_default_action", path);
		if (mact->type != UCL_STRING)
			return want(x, mact, sub, "\"tempfail\", \"accept\" or \"reject\"");
		if (strcmp(mact->str, "tempfail") == 0)
			l->milter_default_action = CONF_MILTER_TEMPFAIL;
		else if (strcmp(mact->str, "accept") == 0)
			l->milter_default_action = CONF_MILTER_ACCEPT;
		else if (strcmp(mact->str, "reject") == 0)
			l->milter_default_action = CONF_MILTER_REJECT;
		else
			return cerr(x, mact,
			            "%s: must be \"tempfail\", \"accept\" or \"reject\", not '%s'",
			            sub, show(mact->str, b, sizeof(b)));
	}
	return TERN_OK;
}

static int parse_listener(struct ctx *x, struct tern_config *c, const struct ucl_node *m)
{
	char b[80], path[96], section[96];
	const char *name = show(m->key, b, sizeof(b));
	snprintf(path, sizeof(path), "listen.%s", name);
	snprintf(section, sizeof(section), "listen.%s", name);
	if (!valid_name(m->key, 64))
		return cerr(x, m,
		            "listen: '%s' is not a valid listener name (letters, digits, '-', '_')",
		            name);
	int rc = want_section(x, m, path);
	if (rc != TERN_OK)
		return rc;
	const struct ucl_node *addr, *prof, *tls, *milters, *mact, *mto, *meom;
	const struct key_slot slots[] = {
	    {"address", &addr},
	    {"profile", &prof},
	    {"tls", &tls},
	    {"milters", &milters},
	    {"milter_default_action", &mact},
	    {"milter_timeout", &mto},
	    {"milter_eom_timeout", &meom},
	};
	if ((rc = collect_keys(x, m, section, slots, sizeof(slots) / sizeof(slots[0]))) != TERN_OK)
		return rc;
	if (!addr)
		return cerr(x, m, "%s: missing key 'address'", path);
	if (!prof)
		return cerr(x, m, "%s: missing key 'profile'", path);
	char canon[80], sub[128];
	snprintf(sub, sizeof(sub), "%s.address", path);
	if (addr->type != UCL_STRING)
		return want(x, addr, sub, "\"IP:PORT\" or \"[IPv6]:PORT\"");
	if (!canonical_address(addr->str, canon, sizeof(canon)))
		return cerr(x, addr,
		            "%s: '%s' is not IP:PORT or [IPv6]:PORT with a port from 1 to 65535",
		            sub, show(addr->str, b, sizeof(b)));
	snprintf(sub, sizeof(sub), "%s.profile", path);
	if (prof->type != UCL_STRING)
		return want(x, prof, sub, "\"mx\", \"submission\", \"pop3\" or \"http\"");
	if (strcmp(prof->str, "mx") != 0 && strcmp(prof->str, "submission") != 0 &&
	    strcmp(prof->str, "pop3") != 0 && strcmp(prof->str, "http") != 0)
		return cerr(x, prof,
		            "%s: must be \"mx\", \"submission\", \"pop3\" or \"http\", not '%s'",
		            sub, show(prof->str, b, sizeof(b)));

	for (size_t i = 0; i < c->n_listeners; i++)
		if (strcmp(c->listeners[i].address, canon) == 0)
			return cerr(x, addr, "%s.address: %s is already used by listener '%s'",
			            path, canon, c->listeners[i].name);
	/* tls: "starttls" offers the protocol's upgrade (STARTTLS, POP3's
	 * STLS), "implicit" is TLS from the first byte (465, 995); the default
	 * is finish_tls's. */
	enum conf_listen_tls lt = CONF_LISTEN_TLS_NONE;
	if (tls && (rc = get_listen_tls(x, tls, path, &lt)) != TERN_OK)
		return rc;
	/* http (the sending API, http/api.h): HTTPS is TLS from the first byte;
	 * HTTP has no upgrade that clients use */
	if (strcmp(prof->str, "http") == 0 && (milters || mact || lt == CONF_LISTEN_TLS_STARTTLS))
		return cerr(x, milters ? milters : mact ? mact : tls,
		            "%s: an http listener takes only address, profile and tls = \"implicit\" "
		            "(HTTPS) or \"none\" (milters are for SMTP; HTTP has no STARTTLS)",
		            path);
	if (c->n_listeners >= MAX_LISTENERS)
		return cerr(x, m, "listen: more than %d listeners", MAX_LISTENERS);
	x->listen_tls[c->n_listeners] = tls;
	rc = listener_add(x, c, m->key, canon, prof->str);
	if (rc == TERN_OK) {
		c->listeners[c->n_listeners - 1].tls = lt;
		rc = parse_listener_milters(x, &c->listeners[c->n_listeners - 1], path, milters,
		                            mact, mto, meom);
	}
	return rc;
}

static int parse_listen(struct ctx *x, struct tern_config *c, const struct ucl_node *sec)
{
	int rc = want_section(x, sec, "listen");
	if (rc != TERN_OK)
		return rc;
	if (sec->n_items == 0)
		return cerr(x, sec, "listen: at least one listener is needed");
	if (sec->n_items > MAX_LISTENERS)
		return cerr(x, sec, "listen: more than %d listeners", MAX_LISTENERS);
	for (size_t i = 0; i < sec->n_items; i++) {
		rc = parse_listener(x, c, sec->items[i]);
		if (rc != TERN_OK)
			return rc;
	}
	return TERN_OK;
}

/* ---- routes and relayhost ------------------------------------------------ */

static void route_free(struct conf_route *r)
{
	free(r->domain);
	free(r->host);
	free(r->auth_user);
	free(r->auth_password_file);
}

static const char *const tls_names[] = {"none", "opportunistic", "require", "verify", "dane"};
#define TLS_NAMES_WORDS "\"none\", \"opportunistic\", \"require\", \"verify\" or \"dane\""

const char *conf_tls_name(enum conf_tls t)
{
	return (size_t)t < sizeof(tls_names) / sizeof(tls_names[0]) ? tls_names[t] : "?";
}

/* Is host (as parse_via stores it) an address of this machine's loopback
 * (127.0.0.0/8, ::1)? A name never is: DNS could say otherwise later. */
static bool host_is_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* A host name as DNS knows it. A last label of digits only is not a name
 * (no TLD is numeric), so "10.0.0.256" is refused rather than looked up. */
static bool valid_host_name(const char *s)
{
	if (!valid_domain(s))
		return false;
	const char *last = strrchr(s, '.');
	last = last ? last + 1 : s;
	return strspn(last, "0123456789") != strlen(last);
}

/*
 * via = "smtp://HOST[:PORT]" or "smtps://HOST[:PORT]", HOST a name, an IPv4
 * address or an [IPv6] address. Fills host (canonical: names lowercased, IP
 * addresses as inet_ntop writes them, IPv6 without brackets), port and
 * implicit_tls. Nothing else may be in it: a user name would put a secret
 * in a file that is printed and logged, and a path means the writer
 * expected something tern does not do.
 */
static int parse_via(struct ctx *x, const struct ucl_node *n, const char *path,
                     struct conf_route *r)
{
	char b[80], host[256];
	if (n->type != UCL_STRING)
		return want(x, n, path, "\"smtp://HOST:PORT\" or \"smtps://HOST:PORT\"");
	const char *s = n->str, *p;
	show(s, b, sizeof(b));
	if (strncasecmp(s, "smtp://", 7) == 0) {
		p = s + 7;
		r->implicit_tls = false;
		r->port = 25;
	} else if (strncasecmp(s, "smtps://", 8) == 0) {
		p = s + 8;
		r->implicit_tls = true;
		r->port = 465;
	} else {
		return cerr(x, n, "%s: '%s' must start with smtp:// or smtps://", path, b);
	}
	size_t alen = strcspn(p, "/?#");
	const char *at = memchr(p, '@', alen);
	if (at)
		return cerr(x, n,
		            "%s: '%s' must not contain a user name; use auth_user and "
		            "auth_password_file",
		            path, b);
	if (p[alen] != '\0')
		return cerr(x, n,
		            "%s: '%s' must not have a path, query or fragment after HOST:PORT",
		            path, b);
	const char *hs = p, *port = NULL;
	size_t hl;
	bool bracketed = false;
	if (*p == '[') {
		const char *close = memchr(p, ']', alen);
		if (!close)
			return cerr(x, n, "%s: '%s' has a '[' without a ']'", path, b);
		hs = p + 1;
		hl = (size_t)(close - hs);
		bracketed = true;
		if (close[1] == ':')
			port = close + 2;
		else if (close[1] != '\0')
			return cerr(x, n, "%s: '%s' has text after the ']' that is not :PORT", path,
			            b);
	} else {
		const char *colon = memchr(p, ':', alen);
		if (colon && memchr(colon + 1, ':', alen - (size_t)(colon + 1 - p)))
			return cerr(x, n,
			            "%s: '%s': an IPv6 address must be in brackets, as in "
			            "smtp://[2001:db8::1]:25",
			            path, b);
		hl = colon ? (size_t)(colon - p) : alen;
		if (colon)
			port = colon + 1;
	}
	if (hl == 0)
		return cerr(x, n, "%s: '%s' has no host", path, b);
	if (hl >= sizeof(host))
		return cerr(x, n, "%s: '%s' has a host longer than 253 bytes", path, b);
	memcpy(host, hs, hl);
	host[hl] = '\0';
	unsigned char ip[16];
	if (bracketed) {
		if (inet_pton(AF_INET6, host, ip) != 1)
			return cerr(x, n, "%s: '%s' has a bad IPv6 address in brackets", path, b);
		inet_ntop(AF_INET6, ip, host, sizeof(host));
	} else if (inet_pton(AF_INET, host, ip) == 1) {
		inet_ntop(AF_INET, ip, host, sizeof(host));
	} else if (valid_host_name(host)) {
		tern_ascii_lower(host);
	} else {
		return cerr(x, n,
		            "%s: '%s' has a bad host (expected a host name, an IPv4 address or an "
		            "[IPv6] address)",
		            path, b);
	}
	if (port) {
		size_t pl = strlen(port);
		unsigned long v = 0;
		if (pl >= 1 && pl <= 5 && strspn(port, "0123456789") == pl)
			v = strtoul(port, NULL, 10);
		if (v == 0 || v > 65535)
			return cerr(x, n, "%s: '%s' has a bad port (expected 1 to 65535)", path, b);
		r->port = (uint16_t)v;
	}
	char *h = tern_strdup(host);
	if (!h)
		return nomem(x);
	free(r->host);
	r->host = h;
	return TERN_OK;
}

static int get_tls(struct ctx *x, const struct ucl_node *n, const char *path, enum conf_tls *out)
{
	char b[80];
	if (n->type != UCL_STRING)
		return want(x, n, path, TLS_NAMES_WORDS);
	for (size_t i = 0; i < sizeof(tls_names) / sizeof(tls_names[0]); i++)
		if (strcmp(n->str, tls_names[i]) == 0) {
			*out = (enum conf_tls)i;
			return TERN_OK;
		}
	return cerr(x, n, "%s: must be " TLS_NAMES_WORDS ", not '%s'", path,
	            show(n->str, b, sizeof(b)));
}

/*
 * The body of routes."DOMAIN" or relayhost (name is that path). r is filled
 * in; on failure it may hold some copies, which the caller frees.
 */
static int parse_route_body(struct ctx *x, const struct ucl_node *m, const char *name,
                            struct conf_route *r)
{
	int rc = want_section(x, m, name);
	if (rc != TERN_OK)
		return rc;
	const struct ucl_node *via, *user, *pwfile, *tls;
	const struct key_slot slots[] = {
	    {"via", &via}, {"auth_user", &user}, {"auth_password_file", &pwfile}, {"tls", &tls}};
	if ((rc = collect_keys(x, m, name, slots, sizeof(slots) / sizeof(slots[0]))) != TERN_OK)
		return rc;
	if (!via)
		return cerr(x, m, "%s: missing key 'via'", name);
	/* both or neither: a user without a password (or the reverse) is a
	 * half-finished edit, and sending mail unauthenticated would hide it */
	if (user && !pwfile)
		return cerr(x, m, "%s: missing key 'auth_password_file' (auth_user needs it)",
		            name);
	if (pwfile && !user)
		return cerr(x, m, "%s: missing key 'auth_user' (auth_password_file needs it)",
		            name);
	char sub[160];
	snprintf(sub, sizeof(sub), "%s.via", name);
	if ((rc = parse_via(x, via, sub, r)) != TERN_OK)
		return rc;
	/* Credentials never cross an unverified channel by default. */
	r->tls = user ? CONF_TLS_VERIFY
	              : r->implicit_tls ? CONF_TLS_REQUIRE : CONF_TLS_OPPORTUNISTIC;
	if (tls) {
		snprintf(sub, sizeof(sub), "%s.tls", name);
		if ((rc = get_tls(x, tls, sub, &r->tls)) != TERN_OK)
			return rc;
		if (r->implicit_tls && r->tls == CONF_TLS_NONE)
			return cerr(
			    x, tls,
			    "%s: \"none\" contradicts smtps:// in via, which is TLS from the "
			    "first byte; use smtp:// for a connection without TLS",
			    sub);
		/* A password sent in clear (or to whoever answers STARTTLS when
		 * the handshake fails) is readable on the path; only a next hop
		 * on this machine (a local proxy, a test fake) has no path. */
		if (user && r->tls <= CONF_TLS_OPPORTUNISTIC && !host_is_loopback(r->host))
			return cerr(x, tls,
			            "%s: \"%s\" with auth_user would send the password without "
			            "TLS; use \"verify\" (the default with auth_user) or "
			            "\"require\" (encrypted, certificate not checked)",
			            sub, tls_names[r->tls]);
	}
	if (user) {
		snprintf(sub, sizeof(sub), "%s.auth_user", name);
		if ((rc = get_str(x, user, sub, &r->auth_user)) != TERN_OK)
			return rc;
		if (strlen(r->auth_user) > 255)
			return cerr(x, user, "%s: longer than 255 bytes", sub);
		for (const char *p = r->auth_user; *p; p++)
			if ((unsigned char)*p < 0x20 || *p == 0x7f)
				return cerr(x, user, "%s: control character in user name", sub);
		snprintf(sub, sizeof(sub), "%s.auth_password_file", name);
		/* only the path: the file is read when a connection needs it, so
		 * a changed password needs no reload and the secret never sits in
		 * the shared config */
		if ((rc = get_path(x, pwfile, sub, &r->auth_password_file)) != TERN_OK)
			return rc;
	}
	return TERN_OK;
}

static int parse_routes(struct ctx *x, struct tern_config *c, const struct ucl_node *sec)
{
	int rc = want_section(x, sec, "routes");
	if (rc != TERN_OK)
		return rc;
	if (sec->n_items > MAX_ROUTES)
		return cerr(x, sec, "routes: more than %d entries", MAX_ROUTES);
	for (size_t i = 0; i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		char b[80], name[112];
		show(m->key, b, sizeof(b));
		if (!valid_domain(m->key))
			return cerr(x, m, "routes: '%s' is not a valid domain name%s", b,
			            (m->key[0] == '.' || m->key[0] == '*')
			                ? " (a route is for one exact domain; give each subdomain "
			                  "its own)"
			                : "");
		for (size_t j = 0; j < c->n_routes; j++)
			if (tern_ascii_ieq(c->routes[j].domain, m->key))
				return cerr(x, m,
				            "routes: '%s' is routed twice (domains are compared "
				            "case-insensitively)",
				            b);
		snprintf(name, sizeof(name), "routes.\"%s\"", b);
		struct conf_route r = {0};
		rc = parse_route_body(x, m, name, &r);
		if (rc == TERN_OK && !(r.domain = tern_strdup(m->key)))
			rc = nomem(x);
		struct conf_route *v = NULL;
		if (rc == TERN_OK && !(v = realloc(c->routes, (c->n_routes + 1) * sizeof(*v))))
			rc = nomem(x);
		if (rc != TERN_OK) {
			route_free(&r);
			return rc;
		}
		tern_ascii_lower(r.domain);
		c->routes = v;
		c->routes[c->n_routes++] = r;
	}
	return TERN_OK;
}

static int parse_relayhost(struct ctx *x, struct tern_config *c, const struct ucl_node *sec)
{
	struct conf_route *r = calloc(1, sizeof(*r));
	if (!r)
		return nomem(x);
	int rc = parse_route_body(x, sec, "relayhost", r);
	if (rc != TERN_OK) {
		route_free(r);
		free(r);
		return rc;
	}
	if (TERN_BUG_ON(c->relayhost != NULL)) { /* the parser merges sections */
		route_free(c->relayhost);
		free(c->relayhost);
	}
	c->relayhost = r;
	return TERN_OK;
}

/* ---- delivery ------------------------------------------------------------ */

struct delivery_spec {
	const char *name;
	enum numkind kind;
	size_t off;
	size_t size; /* of the field: 2 or 4 */
	uint64_t min, max;
};

/* clang-format off */
#define DLV(n, k, lo, hi) \
	{#n, k, offsetof(struct conf_delivery, n), sizeof(((struct conf_delivery *)0)->n), lo, hi}

/* one key per line, like limit_specs */
static const struct delivery_spec delivery_specs[] = {
    DLV(remote_port, NK_COUNT, 1, 65535),
    DLV(retry_base, NK_TIME, 1, 86400),
    DLV(retry_max, NK_TIME, 1, 7 * 86400),
    DLV(max_lifetime, NK_TIME, 1, 30 * 86400),
    DLV(delay_warning, NK_TIME, 0, 30 * 86400),
    DLV(max_per_destination, NK_COUNT, 1, 10000),
    DLV(connect_timeout, NK_TIME, 1, 3600),
    DLV(command_timeout, NK_TIME, 1, 3600),
    DLV(mta_sts_port, NK_COUNT, 1, 65535),
};
/* clang-format on */

#define N_DELIVERY (sizeof(delivery_specs) / sizeof(delivery_specs[0]))

static uint64_t delivery_get(const struct conf_delivery *d, const struct delivery_spec *ds)
{
	const char *field = (const char *)d + ds->off;
	if (ds->size == sizeof(uint16_t)) {
		uint16_t v16;
		memcpy(&v16, field, sizeof(v16));
		return v16;
	}
	uint32_t v32;
	memcpy(&v32, field, sizeof(v32));
	return v32;
}

/* mailbox { quota } */
#define MAILBOX_QUOTA_MAX (1ull << 50)
static int parse_mailbox(struct ctx *x, const struct ucl_node *sec, struct conf_mailbox *mb)
{
	int rc = want_section(x, sec, "mailbox");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		if (strcmp(m->key, "quota") == 0)
			rc = get_num(x, m, "mailbox.quota", NK_SIZE, 0, MAILBOX_QUOTA_MAX,
			             &mb->quota);
		else
			rc = unknown_key(x, m, "mailbox");
	}
	return rc;
}

/* webhooks { retry_base; retry_max; retry_window; timeout; } (issue 13). */
static int parse_webhooks(struct ctx *x, const struct ucl_node *sec, struct conf_webhooks *w)
{
	static const struct {
		const char *name;
		uint64_t min, max;
		size_t off;
	} keys[] = {
	    {"retry_base", 1, 86400, offsetof(struct conf_webhooks, retry_base)},
	    {"retry_max", 1, 7 * 86400, offsetof(struct conf_webhooks, retry_max)},
	    {"retry_window", 1, 30 * 86400, offsetof(struct conf_webhooks, retry_window)},
	    {"timeout", 1, 600, offsetof(struct conf_webhooks, timeout)},
	};
	int rc = want_section(x, sec, "webhooks");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		size_t j = 0;
		while (j < sizeof(keys) / sizeof(keys[0]) && strcmp(m->key, keys[j].name) != 0)
			j++;
		if (j == sizeof(keys) / sizeof(keys[0]))
			return unknown_key(x, m, "webhooks");
		char path[64];
		uint64_t v = 0;
		snprintf(path, sizeof(path), "webhooks.%s", keys[j].name);
		rc = get_num(x, m, path, NK_TIME, keys[j].min, keys[j].max, &v);
		if (rc == TERN_OK)
			*(uint32_t *)((char *)w + keys[j].off) = (uint32_t)v;
	}
	return rc;
}

/* events { enabled; retention; } (issue 13). */
static int parse_events(struct ctx *x, const struct ucl_node *sec, struct conf_events *e)
{
	int rc = want_section(x, sec, "events");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		uint64_t v = 0;
		if (strcmp(m->key, "enabled") == 0) {
			rc = get_bool(x, m, "events.enabled", &e->enabled);
			continue;
		}
		if (strcmp(m->key, "retention") != 0)
			return unknown_key(x, m, "events");
		rc = get_num(x, m, "events.retention", NK_TIME, 0, 3650ull * 86400, &v);
		if (rc == TERN_OK)
			e->retention = (uint32_t)v;
	}
	return rc;
}

/* archive { include = ["inbound", "outbound"]; }: one entry. */
static int archive_include_one(struct ctx *x, const struct ucl_node *n, const char *path, void *arg)
{
	struct conf_archive *a = arg;
	if (strcmp(n->str, "inbound") == 0)
		a->inbound = true;
	else if (strcmp(n->str, "outbound") == 0)
		a->outbound = true;
	else
		return cerr(x, n, "%s: \"%s\" is neither \"inbound\" nor \"outbound\"", path,
		            n->str);
	return TERN_OK;
}

/* archive { enabled; retention; include; } (issue 13 item 6). */
static int parse_archive(struct ctx *x, const struct ucl_node *sec, struct conf_archive *a)
{
	int rc = want_section(x, sec, "archive");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		uint64_t v = 0;
		if (strcmp(m->key, "enabled") == 0) {
			rc = get_bool(x, m, "archive.enabled", &a->enabled);
		} else if (strcmp(m->key, "include") == 0) {
			a->inbound = a->outbound = false;
			rc = each_string(x, m, "archive.include", 2, archive_include_one, a);
		} else if (strcmp(m->key, "retention") == 0) {
			rc = get_num(x, m, "archive.retention", NK_TIME, 0, 36500ull * 86400, &v);
			if (rc == TERN_OK)
				a->retention = (uint32_t)v;
		} else {
			return unknown_key(x, m, "archive");
		}
	}
	return rc;
}

static int parse_delivery(struct ctx *x, const struct ucl_node *sec, struct conf_delivery *d)
{
	int rc = want_section(x, sec, "delivery");
	const struct ucl_node *base = NULL, *max = NULL;
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		const struct delivery_spec *ds = NULL;
		if (strcmp(m->key, "ca_file") == 0) {
			free(d->ca_file);
			d->ca_file = NULL;
			if ((rc = get_path(x, m, "delivery.ca_file", &d->ca_file)) != TERN_OK)
				return rc;
			continue;
		}
		if (strcmp(m->key, "chunking") == 0) {
			if ((rc = get_bool(x, m, "delivery.chunking", &d->chunking)) != TERN_OK)
				return rc;
			continue;
		}
		if (strcmp(m->key, "pipeline_next") == 0) {
			if ((rc = get_bool(x, m, "delivery.pipeline_next", &d->pipeline_next)) !=
			    TERN_OK)
				return rc;
			continue;
		}
		if (strcmp(m->key, "dane") == 0 || strcmp(m->key, "mta_sts") == 0) {
			bool dane = m->key[0] == 'd';
			if ((rc = get_bool(x, m, dane ? "delivery.dane" : "delivery.mta_sts",
			                   dane ? &d->dane : &d->mta_sts)) != TERN_OK)
				return rc;
			continue;
		}
		for (size_t j = 0; j < N_DELIVERY; j++)
			if (strcmp(m->key, delivery_specs[j].name) == 0)
				ds = &delivery_specs[j];
		if (!ds)
			return unknown_key(x, m, "delivery");
		char path[64];
		uint64_t v = 0;
		snprintf(path, sizeof(path), "delivery.%s", ds->name);
		rc = get_num(x, m, path, ds->kind, ds->min, ds->max, &v);
		if (rc != TERN_OK)
			return rc;
		char *field = (char *)d + ds->off;
		if (ds->size == sizeof(uint16_t)) {
			uint16_t v16 = (uint16_t)v;
			memcpy(field, &v16, sizeof(v16));
		} else {
			uint32_t v32 = (uint32_t)v;
			memcpy(field, &v32, sizeof(v32));
		}
		if (strcmp(ds->name, "retry_base") == 0)
			base = m;
		else if (strcmp(ds->name, "retry_max") == 0)
			max = m;
	}
	if (rc != TERN_OK || d->retry_base <= d->retry_max)
		return rc;
	/* blame the key that was written; with both, the base */
	if (base)
		return cerr(x, base,
		            "delivery.retry_base: %us is longer than delivery.retry_max (%us)",
		            (unsigned)d->retry_base, (unsigned)d->retry_max);
	return cerr(x, max, "delivery.retry_max: %us is shorter than delivery.retry_base (%us)",
	            (unsigned)d->retry_max, (unsigned)d->retry_base);
}

/* ---- dns ----------------------------------------------------------------- */

/* "IP" or "IP@PORT" (the form libunbound's forwarders take), stored with
 * the address as inet_ntop writes it. */
static int add_forward(struct ctx *x, const struct ucl_node *n, const char *path, void *arg)
{
	struct strlist *l = arg;
	char b[80], ip[INET6_ADDRSTRLEN + 1], canon[INET6_ADDRSTRLEN + 8];
	unsigned char a[16];
	const char *at = strrchr(n->str, '@');
	size_t il = at ? (size_t)(at - n->str) : n->len;
	unsigned long port = 0;
	int family = 0;
	bool ok = il > 0 && il < sizeof(ip);
	if (ok) {
		memcpy(ip, n->str, il);
		ip[il] = '\0';
		if (inet_pton(AF_INET, ip, a) == 1)
			family = AF_INET;
		else if (inet_pton(AF_INET6, ip, a) == 1)
			family = AF_INET6;
		ok = family != 0;
	}
	if (ok && at) {
		size_t pl = strlen(at + 1);
		ok = pl >= 1 && pl <= 5 && strspn(at + 1, "0123456789") == pl;
		port = ok ? strtoul(at + 1, NULL, 10) : 0;
		ok = port >= 1 && port <= 65535;
	}
	if (!ok)
		return cerr(
		    x, n, "%s: '%s' is not an IP address with an optional @PORT (port 1 to 65535)",
		    path, show(n->str, b, sizeof(b)));
	inet_ntop(family, a, ip, sizeof(ip));
	if (at)
		snprintf(canon, sizeof(canon), "%s@%lu", ip, port);
	else
		snprintf(canon, sizeof(canon), "%s", ip);
	if (strlist_has(l, canon))
		return TERN_OK;
	return strlist_add(l, canon) == TERN_OK ? TERN_OK : nomem(x);
}

static int parse_dns(struct ctx *x, struct tern_config *c, const struct ucl_node *sec)
{
	int rc = want_section(x, sec, "dns");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		if (strcmp(m->key, "forward") == 0) {
			struct strlist l = {0};
			rc = each_string(x, m, "dns.forward", MAX_FORWARDERS, add_forward, &l);
			if (rc != TERN_OK) {
				strlist_free(&l);
				break;
			}
			for (size_t j = 0; j < c->dns.n_forward; j++)
				free(c->dns.forward[j]);
			free(c->dns.forward);
			c->dns.forward = l.v;
			c->dns.n_forward = l.n;
		} else if (strcmp(m->key, "trust_anchor_file") == 0) {
			rc = get_path(x, m, "dns.trust_anchor_file", &c->dns.trust_anchor_file);
		} else {
			rc = unknown_key(x, m, "dns");
		}
	}
	return rc;
}

/* ---- policy -------------------------------------------------------------- */

static void print_str(FILE *f, const char *s);

/*
 * policy { dns_timeout; dnsbl { }; pregreet { }; fcrdns { }; greylist { };
 * ratelimit { } }: the abuse defences of mx listeners. The zone specs are
 * parsed by the policy module's pure parser (policy/policy.h), so that the
 * notation has one definition.
 */

static const struct conf_policy default_policy = {
    .dns_timeout = 5,
    .dnsbl_threshold = 1,
    .pregreet_delay = 0,
    .pregreet_reject = true,
    .fcrdns_reject_code = 450,
    .greylist_delay = 300,
    .greylist_retry_window = 2 * 86400,
    .greylist_expire = 35 * 86400,
};

struct zonelist {
	struct policy_zone *v;
	size_t n;
};

static int add_zone(struct ctx *x, const struct ucl_node *n, const char *path, void *arg)
{
	struct zonelist *l = arg;
	char why[160], b[80];
	struct policy_zone z;
	if (policy_zone_parse(n->str, n->len, &z, why, sizeof(why)) != TERN_OK)
		return cerr(x, n, "%s: '%s': %s", path, show(n->str, b, sizeof(b)), why);
	struct policy_zone *v = realloc(l->v, (l->n + 1) * sizeof(*v));
	if (!v)
		return nomem(x);
	l->v = v;
	v[l->n++] = z;
	return TERN_OK;
}

static int parse_dnsbl(struct ctx *x, const struct ucl_node *sec, struct conf_policy *p)
{
	int rc = want_section(x, sec, "policy.dnsbl");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		uint64_t v = 0;
		if (strcmp(m->key, "zones") == 0) {
			struct zonelist l = {0};
			rc =
			    each_string(x, m, "policy.dnsbl.zones", POLICY_ZONES_MAX, add_zone, &l);
			if (rc != TERN_OK) {
				free(l.v);
				break;
			}
			free(p->zones);
			p->zones = l.v;
			p->n_zones = l.n;
		} else if (strcmp(m->key, "threshold") == 0) {
			rc = get_num(x, m, "policy.dnsbl.threshold", NK_COUNT, 1,
			             POLICY_WEIGHT_MAX * POLICY_ZONES_MAX, &v);
			p->dnsbl_threshold = (int32_t)v;
		} else {
			rc = unknown_key(x, m, "policy.dnsbl");
		}
	}
	return rc;
}

static int parse_pregreet(struct ctx *x, const struct ucl_node *sec, struct conf_policy *p)
{
	int rc = want_section(x, sec, "policy.pregreet");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		uint64_t v = 0;
		if (strcmp(m->key, "delay") == 0) {
			rc = get_num(x, m, "policy.pregreet.delay", NK_TIME, 0, 60, &v);
			p->pregreet_delay = (uint32_t)v;
		} else if (strcmp(m->key, "action") == 0) {
			char b[80];
			if (m->type != UCL_STRING)
				return want(x, m, "policy.pregreet.action",
				            "\"reject\" or \"ignore\"");
			if (strcmp(m->str, "reject") == 0)
				p->pregreet_reject = true;
			else if (strcmp(m->str, "ignore") == 0)
				p->pregreet_reject = false;
			else
				return cerr(
				    x, m,
				    "policy.pregreet.action: must be \"reject\" or \"ignore\", "
				    "not '%s'",
				    show(m->str, b, sizeof(b)));
		} else {
			rc = unknown_key(x, m, "policy.pregreet");
		}
	}
	return rc;
}

static int parse_fcrdns(struct ctx *x, const struct ucl_node *sec, struct conf_policy *p)
{
	int rc = want_section(x, sec, "policy.fcrdns");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		uint64_t v = 0;
		if (strcmp(m->key, "enabled") == 0) {
			rc = get_bool(x, m, "policy.fcrdns.enabled", &p->fcrdns_enabled);
		} else if (strcmp(m->key, "require") == 0) {
			rc = get_bool(x, m, "policy.fcrdns.require", &p->fcrdns_require);
		} else if (strcmp(m->key, "reject_code") == 0) {
			rc = get_num(x, m, "policy.fcrdns.reject_code", NK_COUNT, 450, 550, &v);
			if (rc == TERN_OK && v != 450 && v != 550)
				return cerr(x, m, "policy.fcrdns.reject_code: must be 450 or 550");
			p->fcrdns_reject_code = (uint16_t)v;
		} else {
			rc = unknown_key(x, m, "policy.fcrdns");
		}
	}
	return rc;
}

static int parse_greylist(struct ctx *x, const struct ucl_node *sec, struct conf_policy *p)
{
	int rc = want_section(x, sec, "policy.greylist");
	const struct ucl_node *window = NULL;
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		uint64_t v = 0;
		if (strcmp(m->key, "enabled") == 0) {
			rc = get_bool(x, m, "policy.greylist.enabled", &p->greylist);
		} else if (strcmp(m->key, "delay") == 0) {
			rc = get_num(x, m, "policy.greylist.delay", NK_TIME, 0, 86400, &v);
			p->greylist_delay = (uint32_t)v;
		} else if (strcmp(m->key, "retry_window") == 0) {
			rc = get_num(x, m, "policy.greylist.retry_window", NK_TIME, 60, 30 * 86400,
			             &v);
			p->greylist_retry_window = (uint32_t)v;
			window = m;
		} else if (strcmp(m->key, "expire") == 0) {
			rc =
			    get_num(x, m, "policy.greylist.expire", NK_TIME, 3600, 366 * 86400, &v);
			p->greylist_expire = (uint32_t)v;
		} else {
			rc = unknown_key(x, m, "policy.greylist");
		}
	}
	if (rc == TERN_OK && p->greylist_retry_window <= p->greylist_delay)
		return cerr(x, window ? window : sec,
		            "policy.greylist: retry_window (%us) must be longer than delay (%us), "
		            "or no sender could ever pass",
		            (unsigned)p->greylist_retry_window, (unsigned)p->greylist_delay);
	return rc;
}

static int parse_ratelimit(struct ctx *x, const struct ucl_node *sec, struct conf_policy *p)
{
	static const struct {
		const char *name;
		size_t off;
	} keys[] = {
	    {"connections_per_minute", offsetof(struct conf_policy, connections_per_minute)},
	    {"messages_per_minute", offsetof(struct conf_policy, messages_per_minute)},
	    {"recipients_per_minute", offsetof(struct conf_policy, recipients_per_minute)},
	};
	int rc = want_section(x, sec, "policy.ratelimit");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		size_t k = 0;
		while (k < sizeof(keys) / sizeof(keys[0]) && strcmp(m->key, keys[k].name) != 0)
			k++;
		if (k == sizeof(keys) / sizeof(keys[0]))
			return unknown_key(x, m, "policy.ratelimit");
		char path[64];
		uint64_t v = 0;
		snprintf(path, sizeof(path), "policy.ratelimit.%s", keys[k].name);
		rc = get_num(x, m, path, NK_COUNT, 0, 1000000, &v);
		uint32_t v32 = (uint32_t)v;
		if (rc == TERN_OK)
			memcpy((char *)p + keys[k].off, &v32, sizeof(v32));
	}
	return rc;
}

static int parse_policy(struct ctx *x, const struct ucl_node *sec, struct conf_policy *p)
{
	int rc = want_section(x, sec, "policy");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		uint64_t v = 0;
		if (strcmp(m->key, "dns_timeout") == 0) {
			rc = get_num(x, m, "policy.dns_timeout", NK_TIME, 1, 60, &v);
			p->dns_timeout = (uint32_t)v;
		} else if (strcmp(m->key, "dnsbl") == 0) {
			rc = parse_dnsbl(x, m, p);
		} else if (strcmp(m->key, "pregreet") == 0) {
			rc = parse_pregreet(x, m, p);
		} else if (strcmp(m->key, "fcrdns") == 0) {
			rc = parse_fcrdns(x, m, p);
		} else if (strcmp(m->key, "greylist") == 0) {
			rc = parse_greylist(x, m, p);
		} else if (strcmp(m->key, "ratelimit") == 0) {
			rc = parse_ratelimit(x, m, p);
		} else {
			rc = unknown_key(x, m, "policy");
		}
	}
	return rc;
}

static void print_policy(FILE *f, const struct conf_policy *p)
{
	fprintf(f, "policy {\n\tdns_timeout = %us;\n\tdnsbl {\n\t\tzones = [",
	        (unsigned)p->dns_timeout);
	for (size_t i = 0; i < p->n_zones; i++) {
		char spec[POLICY_ZONE_NAME_MAX + 128];
		if (!policy_zone_format(&p->zones[i], spec, sizeof(spec)))
			tern_strlcpy(spec, "?", sizeof(spec));
		fputs(i ? ", " : "", f);
		print_str(f, spec);
	}
	fprintf(f, "];\n\t\tthreshold = %d;\n\t}\n", (int)p->dnsbl_threshold);
	fprintf(f, "\tpregreet {\n\t\tdelay = %us;\n\t\taction = \"%s\";\n\t}\n",
	        (unsigned)p->pregreet_delay, p->pregreet_reject ? "reject" : "ignore");
	fprintf(f, "\tfcrdns {\n\t\tenabled = %s;\n\t\trequire = %s;\n\t\treject_code = %u;\n\t}\n",
	        p->fcrdns_enabled ? "true" : "false", p->fcrdns_require ? "true" : "false",
	        (unsigned)p->fcrdns_reject_code);
	fprintf(f,
	        "\tgreylist {\n\t\tenabled = %s;\n\t\tdelay = %us;\n\t\tretry_window = %us;\n"
	        "\t\texpire = %us;\n\t}\n",
	        p->greylist ? "true" : "false", (unsigned)p->greylist_delay,
	        (unsigned)p->greylist_retry_window, (unsigned)p->greylist_expire);
	fprintf(f,
	        "\tratelimit {\n\t\tconnections_per_minute = %u;\n\t\tmessages_per_minute = %u;\n"
	        "\t\trecipients_per_minute = %u;\n\t}\n}\n",
	        (unsigned)p->connections_per_minute, (unsigned)p->messages_per_minute,
	        (unsigned)p->recipients_per_minute);
}

/*
 * auth { allow_plaintext; mechanisms; received_header_user; oauth { };
 * throttle { } }: AUTH on submission listeners. The mechanism names are
 * the SASL module's (auth.h), so a name means what the engine does.
 */

static const struct throttle_config throttle_default = THROTTLE_CONFIG_DEFAULT;

static void default_auth(struct conf_auth *a)
{
	memset(a, 0, sizeof(*a));
	a->oauth.leeway = OAUTH_LEEWAY_DEFAULT;
	a->throttle = (struct conf_auth_throttle){
	    .delay_after = throttle_default.delay_after,
	    .delay_ms = throttle_default.base_delay_ms,
	    .max_delay_ms = throttle_default.max_delay_ms,
	    .addr_block_after = throttle_default.addr_block_after,
	    .user_block_after = throttle_default.user_block_after,
	    .block_time = throttle_default.block_seconds,
	    .forget_after = throttle_default.window_seconds,
	    .max_entries = (uint32_t)throttle_default.max_entries,
	};
}

/* A time in milliseconds: "1s", "250ms", "1.5s" or a number of seconds. */
static int get_ms(struct ctx *x, const struct ucl_node *n, const char *path, uint32_t max_ms,
                  uint32_t *out)
{
	double ms;
	if (n->type == UCL_INT && n->unit != UCL_UNIT_SIZE)
		ms = (double)n->ival * 1000.0;
	else if (n->type == UCL_FLOAT && n->unit == UCL_UNIT_TIME)
		ms = n->fval * 1000.0;
	else
		return want(x, n, path, "a time (ms, s or min)");
	if (ms < 0)
		return cerr(x, n, "%s: must not be negative", path);
	if (ms > max_ms)
		return cerr(x, n, "%s: above the maximum of %us", path, max_ms / 1000);
	if (ms != (double)(uint32_t)ms)
		return cerr(x, n, "%s: must be a whole number of milliseconds", path);
	*out = (uint32_t)ms;
	return TERN_OK;
}

static int parse_throttle(struct ctx *x, const struct ucl_node *sec, struct conf_auth_throttle *t)
{
	int rc = want_section(x, sec, "auth.throttle");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		const char *k = m->key;
		uint64_t v = 0;
		char path[64];
		snprintf(path, sizeof(path), "auth.throttle.%s", k);
		if (strcmp(k, "delay_after") == 0) {
			rc = get_num(x, m, path, NK_COUNT, 0, 1000000, &v);
			t->delay_after = (uint32_t)v;
		} else if (strcmp(k, "delay") == 0) {
			rc = get_ms(x, m, path, 60000, &t->delay_ms);
		} else if (strcmp(k, "max_delay") == 0) {
			rc = get_ms(x, m, path, 300000, &t->max_delay_ms);
		} else if (strcmp(k, "addr_block_after") == 0) {
			rc = get_num(x, m, path, NK_COUNT, 0, 1000000, &v);
			t->addr_block_after = (uint32_t)v;
		} else if (strcmp(k, "user_block_after") == 0) {
			rc = get_num(x, m, path, NK_COUNT, 0, 1000000, &v);
			t->user_block_after = (uint32_t)v;
		} else if (strcmp(k, "block_time") == 0) {
			rc = get_num(x, m, path, NK_TIME, 1, 30 * 86400, &v);
			t->block_time = (uint32_t)v;
		} else if (strcmp(k, "forget_after") == 0) {
			rc = get_num(x, m, path, NK_TIME, 1, 30 * 86400, &v);
			t->forget_after = (uint32_t)v;
		} else if (strcmp(k, "max_entries") == 0) {
			rc = get_num(x, m, path, NK_COUNT, 16, 1u << 24, &v);
			t->max_entries = (uint32_t)v;
		} else {
			rc = unknown_key(x, m, "auth.throttle");
		}
	}
	if (rc == TERN_OK && t->max_delay_ms < t->delay_ms)
		return cerr(x, sec, "auth.throttle: max_delay must not be shorter than delay");
	return rc;
}

static int parse_oauth(struct ctx *x, const struct ucl_node *sec, struct conf_oauth *o)
{
	int rc = want_section(x, sec, "auth.oauth");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		uint64_t v = 0;
		if (strcmp(m->key, "issuer") == 0) {
			rc = get_str(x, m, "auth.oauth.issuer", &o->issuer);
		} else if (strcmp(m->key, "audience") == 0) {
			rc = get_str(x, m, "auth.oauth.audience", &o->audience);
		} else if (strcmp(m->key, "jwks_file") == 0) {
			rc = get_path(x, m, "auth.oauth.jwks_file", &o->jwks_file);
		} else if (strcmp(m->key, "user_claim") == 0) {
			rc = get_str(x, m, "auth.oauth.user_claim", &o->user_claim);
		} else if (strcmp(m->key, "leeway") == 0) {
			rc = get_num(x, m, "auth.oauth.leeway", NK_TIME, 0, 3600, &v);
			o->leeway = (uint32_t)v;
		} else {
			rc = unknown_key(x, m, "auth.oauth");
		}
	}
	if (rc != TERN_OK)
		return rc;
	if (!o->issuer || !o->audience || !o->jwks_file)
		return cerr(x, sec,
		            "auth.oauth: issuer, audience and jwks_file are all needed (tokens are "
		            "checked against all three)");
	if (!o->user_claim && !(o->user_claim = tern_strdup("email")))
		return nomem(x);
	return TERN_OK;
}

static int add_mechanism(struct ctx *x, const struct ucl_node *n, const char *path, void *arg)
{
	unsigned *mechs = arg;
	enum sasl_mech m;
	char b[80];
	if (sasl_mech_parse(n->str, n->len, &m) != TERN_OK)
		return cerr(x, n,
		            "%s: '%s' is not a mechanism tern knows (PLAIN, LOGIN, CRAM-MD5, "
		            "SCRAM-SHA-256, XOAUTH2, OAUTHBEARER)",
		            path, show(n->str, b, sizeof(b)));
	*mechs |= SASL_MECH_BIT(m);
	return TERN_OK;
}

static int parse_auth(struct ctx *x, const struct ucl_node *sec, struct conf_auth *a,
                      const struct ucl_node **mechs_at)
{
	int rc = want_section(x, sec, "auth");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		if (strcmp(m->key, "allow_plaintext") == 0) {
			rc = get_bool(x, m, "auth.allow_plaintext", &a->allow_plaintext);
		} else if (strcmp(m->key, "received_header_user") == 0) {
			rc = get_bool(x, m, "auth.received_header_user", &a->received_header_user);
		} else if (strcmp(m->key, "mechanisms") == 0) {
			unsigned mechs = 0;
			rc = each_string(x, m, "auth.mechanisms", 16, add_mechanism, &mechs);
			if (rc == TERN_OK && mechs == 0)
				rc = cerr(x, m, "auth.mechanisms: name at least one mechanism");
			a->mechanisms = mechs;
			*mechs_at = m;
		} else if (strcmp(m->key, "oauth") == 0) {
			rc = parse_oauth(x, m, &a->oauth);
		} else if (strcmp(m->key, "throttle") == 0) {
			rc = parse_throttle(x, m, &a->throttle);
		} else {
			rc = unknown_key(x, m, "auth");
		}
	}
	return rc;
}

/* ---- auth_checks { spf; dkim; dmarc; defer_on_temperror; timeout; } ------- */

/* The checks of mail received on mx listeners (smtp/verify.c). One section
 * for the daemon, as policy { } is: submission and capture listeners never
 * check (their mail is outbound, or caught unchanged). */
static const struct conf_auth_checks default_auth_checks = {
    .spf = true,
    .dkim = true,
    .arc = true,
    .dmarc = CONF_DMARC_MARK,
    .defer_on_temperror = false,
    .timeout = 20,
};

static const char *const dmarc_mode_names[] = {"off", "mark", "enforce"};

static int parse_auth_checks(struct ctx *x, const struct ucl_node *sec, struct conf_auth_checks *a)
{
	int rc = want_section(x, sec, "auth_checks");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		if (strcmp(m->key, "spf") == 0) {
			rc = get_bool(x, m, "auth_checks.spf", &a->spf);
		} else if (strcmp(m->key, "dkim") == 0) {
			rc = get_bool(x, m, "auth_checks.dkim", &a->dkim);
		} else if (strcmp(m->key, "arc") == 0) {
			rc = get_bool(x, m, "auth_checks.arc", &a->arc);
		} else if (strcmp(m->key, "defer_on_temperror") == 0) {
			rc = get_bool(x, m, "auth_checks.defer_on_temperror",
			              &a->defer_on_temperror);
		} else if (strcmp(m->key, "timeout") == 0) {
			uint64_t v = 0;
			rc = get_num(x, m, "auth_checks.timeout", NK_TIME, 1, 120, &v);
			a->timeout = (uint32_t)v;
		} else if (strcmp(m->key, "dmarc") == 0) {
			if (m->type == UCL_BOOL && !m->bval) {
				a->dmarc =
				    CONF_DMARC_OFF; /* UCL reads a bare off (or no) as false */
				continue;
			}
			if (m->type != UCL_STRING)
				return want(x, m, "auth_checks.dmarc",
				            "\"off\", \"mark\" or \"enforce\"");
			size_t k = 0;
			while (k < 3 && strcmp(m->str, dmarc_mode_names[k]) != 0)
				k++;
			if (k == 3)
				return cerr(
				    x, m,
				    "auth_checks.dmarc: must be \"off\", \"mark\" (record the "
				    "result, always deliver) or \"enforce\" (reject and quarantine "
				    "as the domain asks)");
			a->dmarc = (enum conf_dmarc_mode)k;
		} else {
			rc = unknown_key(x, m, "auth_checks");
		}
	}
	return rc;
}

static void print_auth_checks(FILE *f, const struct conf_auth_checks *a)
{
	fprintf(f,
	        "auth_checks {\n\tspf = %s;\n\tdkim = %s;\n\tarc = %s;\n\tdmarc = \"%s\";\n"
	        "\tdefer_on_temperror = %s;\n\ttimeout = %us;\n}\n",
	        a->spf ? "true" : "false", a->dkim ? "true" : "false", a->arc ? "true" : "false",
	        dmarc_mode_names[a->dmarc], a->defer_on_temperror ? "true" : "false",
	        (unsigned)a->timeout);
}

/* ---- arc { trusted_sealers; seal_domain; seal_selector; } ------------------ */

static int parse_arc(struct ctx *x, const struct ucl_node *sec, struct conf_arc *a)
{
	int rc = want_section(x, sec, "arc");
	char b[80];
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		if (strcmp(m->key, "trusted_sealers") == 0) {
			struct strlist l = {a->trusted_sealers, a->n_trusted_sealers};
			strlist_free(&l);
			rc = each_string(x, m, "arc.trusted_sealers", 64, add_domain, &l);
			a->trusted_sealers = l.v;
			a->n_trusted_sealers = l.n;
		} else if (strcmp(m->key, "seal_domain") == 0) {
			free(a->seal_domain);
			a->seal_domain = NULL;
			rc = get_str(x, m, "arc.seal_domain", &a->seal_domain);
			if (rc == TERN_OK && !valid_domain(a->seal_domain))
				return cerr(x, m, "arc.seal_domain: '%s' is not a domain name",
				            show(a->seal_domain, b, sizeof(b)));
			if (rc == TERN_OK)
				tern_ascii_lower(a->seal_domain);
		} else if (strcmp(m->key, "seal_selector") == 0) {
			free(a->seal_selector);
			a->seal_selector = NULL;
			rc = get_str(x, m, "arc.seal_selector", &a->seal_selector);
		} else {
			rc = unknown_key(x, m, "arc");
		}
	}
	return rc;
}

/* The sealing key is a dkim.keys entry: it must be there (either section
 * may come first in the file, so this runs once both are read). */
static int finish_arc(struct ctx *x, struct tern_config *c)
{
	const struct conf_arc *a = &c->arc;
	if (a->seal_selector && !a->seal_domain)
		return cerr(x, NULL, "arc.seal_selector is set without arc.seal_domain");
	if (a->seal_domain && !conf_arc_seal_key(c))
		return cerr(x, NULL,
		            "arc.seal_domain: no dkim.keys entry for %s%s%s (ARC seals with a "
		            "DKIM key of that domain)",
		            a->seal_domain, a->seal_selector ? " with selector " : "",
		            a->seal_selector ? a->seal_selector : "");
	return TERN_OK;
}

const struct conf_dkim_key *conf_arc_seal_key(const struct tern_config *c)
{
	for (size_t i = 0; c->arc.seal_domain && i < c->dkim.n_keys; i++) {
		const struct conf_dkim_key *k = &c->dkim.keys[i];
		if (tern_ascii_ieq(k->domain, c->arc.seal_domain) &&
		    (!c->arc.seal_selector || strcmp(k->selector, c->arc.seal_selector) == 0))
			return k;
	}
	return NULL;
}

/* ---- suppression { enabled; verp_domain; feedback_address; unsubscribe_url; } ---- */

static int parse_suppression(struct ctx *x, const struct ucl_node *sec, struct conf_suppression *p)
{
	int rc = want_section(x, sec, "suppression");
	char b[80];
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		char **str = strcmp(m->key, "verp_domain") == 0        ? &p->verp_domain
		             : strcmp(m->key, "feedback_address") == 0 ? &p->feedback_address
		             : strcmp(m->key, "unsubscribe_url") == 0  ? &p->unsubscribe_url
		                                                       : NULL;
		if (strcmp(m->key, "enabled") == 0) {
			rc = get_bool(x, m, "suppression.enabled", &p->enabled);
		} else if (str) {
			free(*str);
			*str = NULL;
			rc = get_str(x, m, "suppression", str);
			if (rc != TERN_OK)
				break;
			if (str == &p->verp_domain && !valid_domain(*str))
				return cerr(x, m,
				            "suppression.verp_domain: '%s' is not a domain name",
				            show(*str, b, sizeof(b)));
			if (str == &p->feedback_address && !valid_address(*str))
				return cerr(x, m,
				            "suppression.feedback_address: '%s' is not an address",
				            show(*str, b, sizeof(b)));
			if (str == &p->unsubscribe_url && strncmp(*str, "https://", 8) != 0 &&
			    strncmp(*str, "http://", 7) != 0)
				return cerr(
				    x, m, "suppression.unsubscribe_url: '%s' is not an http(s) URL",
				    show(*str, b, sizeof(b)));
			if (str != &p->unsubscribe_url)
				tern_ascii_lower(*str);
			if (str == &p->verp_domain)
				x->suppr_verp = m;
			if (str == &p->feedback_address)
				x->suppr_fbl = m;
		} else {
			rc = unknown_key(x, m, "suppression");
		}
	}
	return rc;
}

/* Reports come in by SMTP: their domains must be this host's. */
static int finish_suppression(struct ctx *x, const struct tern_config *c)
{
	const struct conf_suppression *p = &c->suppression;
	const char *fa = p->feedback_address ? strrchr(p->feedback_address, '@') : NULL;
	if (p->verp_domain && !conf_is_local_domain(c, p->verp_domain, strlen(p->verp_domain)))
		return cerr(
		    x, x->suppr_verp,
		    "suppression.verp_domain: %s is not in local_domains (bounces to it must "
		    "be received here)",
		    p->verp_domain);
	if (fa && !conf_is_local_domain(c, fa + 1, strlen(fa + 1)))
		return cerr(x, x->suppr_fbl,
		            "suppression.feedback_address: %s is not in local_domains", fa + 1);
	return TERN_OK;
}

/* Top-level feedback_address = "..."; is suppression.feedback_address. */
static int parse_feedback_address(struct ctx *x, const struct ucl_node *m,
                                  struct conf_suppression *p)
{
	char b[80];
	free(p->feedback_address);
	p->feedback_address = NULL;
	int rc = get_str(x, m, "feedback_address", &p->feedback_address);
	if (rc != TERN_OK)
		return rc;
	if (!valid_address(p->feedback_address))
		return cerr(x, m, "feedback_address: '%s' is not an address",
		            show(p->feedback_address, b, sizeof(b)));
	tern_ascii_lower(p->feedback_address);
	x->suppr_fbl = m;
	return TERN_OK;
}

static void suppression_free(struct conf_suppression *p)
{
	free(p->verp_domain);
	free(p->feedback_address);
	free(p->unsubscribe_url);
}

static void print_suppression(FILE *f, const struct conf_suppression *p)
{
	fprintf(f, "suppression {\n\tenabled = %s;\n", p->enabled ? "true" : "false");
	const char *names[] = {"verp_domain", "feedback_address", "unsubscribe_url"};
	const char *vals[] = {p->verp_domain, p->feedback_address, p->unsubscribe_url};
	for (size_t i = 0; i < 3; i++) {
		if (!vals[i])
			continue;
		fprintf(f, "\t%s = ", names[i]);
		print_str(f, vals[i]);
		fputs(";\n", f);
	}
	fputs("}\n", f);
}

/* ---- tracking { base_url; } ---- */

static int parse_tracking(struct ctx *x, const struct ucl_node *sec, struct conf_tracking *p)
{
	int rc = want_section(x, sec, "tracking");
	char b[80];
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		if (strcmp(m->key, "base_url") != 0) {
			rc = unknown_key(x, m, "tracking");
			continue;
		}
		free(p->base_url);
		p->base_url = NULL;
		if ((rc = get_str(x, m, "tracking", &p->base_url)) != TERN_OK)
			break;
		char *u = p->base_url;
		size_t n = strlen(u);
		while (n && u[n - 1] == '/') /* the routes add their own */
			u[--n] = '\0';
		bool ok = (strncmp(u, "https://", 8) == 0 && n > 8) ||
		          (strncmp(u, "http://", 7) == 0 && n > 7);
		for (size_t k = 0; ok && k < n; k++) /* it goes into href and src values */
			ok = (unsigned char)u[k] > 0x20 && (unsigned char)u[k] < 0x7f &&
			     !strchr("\"'<>?#", u[k]);
		if (!ok)
			return cerr(x, m,
			            "tracking.base_url: '%s' is not an http(s) URL without query "
			            "(e.g. \"https://t.example.org\")",
			            show(u, b, sizeof(b)));
	}
	return rc;
}

static void print_tracking(FILE *f, const struct conf_tracking *p)
{
	if (!p->base_url)
		return;
	fputs("tracking {\n\tbase_url = ", f);
	print_str(f, p->base_url);
	fputs(";\n}\n", f);
}

static void arc_free(struct conf_arc *a)
{
	for (size_t i = 0; i < a->n_trusted_sealers; i++)
		free(a->trusted_sealers[i]);
	free(a->trusted_sealers);
	free(a->seal_domain);
	free(a->seal_selector);
}

static void print_list(FILE *f, char *const *v, size_t n);

static void print_arc(FILE *f, const struct conf_arc *a)
{
	fputs("arc {\n\ttrusted_sealers = ", f);
	print_list(f, a->trusted_sealers, a->n_trusted_sealers);
	fputs(";\n", f);
	if (a->seal_domain) {
		fputs("\tseal_domain = ", f);
		print_str(f, a->seal_domain);
		fputs(";\n", f);
	}
	if (a->seal_selector) {
		fputs("\tseal_selector = ", f);
		print_str(f, a->seal_selector);
		fputs(";\n", f);
	}
	fputs("}\n", f);
}

/* ---- metrics { address; token; } ----------------------------------------- */

static int parse_metrics(struct ctx *x, const struct ucl_node *sec, struct conf_metrics *mt)
{
	int rc = want_section(x, sec, "metrics");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		char canon[80], b[80];
		if (strcmp(m->key, "address") == 0) {
			if (m->type != UCL_STRING)
				return want(x, m, "metrics.address", "\"IP:PORT\" or \"[IPv6]:PORT\"");
			if (!canonical_address(m->str, canon, sizeof(canon)))
				return cerr(x, m,
				            "metrics.address: '%s' is not IP:PORT or [IPv6]:PORT with a "
				            "port from 1 to 65535",
				            show(m->str, b, sizeof(b)));
			char *d = tern_strdup(canon);
			if (!d)
				return nomem(x);
			free(mt->address);
			mt->address = d;
		} else if (strcmp(m->key, "token") == 0) {
			rc = get_str(x, m, "metrics.token", &mt->token);
			/* It travels in an HTTP header: visible ASCII only. */
			for (const char *p = mt->token; rc == TERN_OK && p && *p; p++)
				if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
					rc = cerr(x, m, "metrics.token: only visible ASCII characters, no "
					                "spaces");
		} else {
			rc = unknown_key(x, m, "metrics");
		}
	}
	return rc;
}

static void print_metrics(FILE *f, const struct conf_metrics *mt)
{
	if (!mt->address)
		return;
	fputs("metrics {\n\taddress = ", f);
	print_str(f, mt->address);
	fputs(";\n", f);
	/* A secret: never printed. The placeholder keeps the printed config a
	 * config that loads and prints the same again (fuzz_conf checks it). */
	if (mt->token)
		fputs("\ttoken = \"hidden\"; # set; the real token is not shown\n", f);
	fputs("}\n", f);
}

/* ---- dmarc { reports { from; org_name; inbox; interval; } } ------------------ */

static int parse_dmarc_reports(struct ctx *x, const struct ucl_node *sec,
                               struct conf_dmarc_reports *r)
{
	int rc = want_section(x, sec, "dmarc.reports");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		if (strcmp(m->key, "from") == 0 || strcmp(m->key, "inbox") == 0) {
			bool from = m->key[0] == 'f';
			char **out = from ? &r->from : &r->inbox;
			const char *path = from ? "dmarc.reports.from" : "dmarc.reports.inbox";
			rc = get_str(x, m, path, out);
			const char *at = rc == TERN_OK ? strrchr(*out, '@') : NULL;
			if (rc == TERN_OK && (!at || at == *out || !at[1] || strpbrk(*out, " <>\"\r\n")))
				return cerr(x, m, "%s: must be a mailbox such as \"dmarc@example.org\"",
				            path);
		} else if (strcmp(m->key, "org_name") == 0) {
			rc = get_str(x, m, "dmarc.reports.org_name", &r->org_name);
		} else if (strcmp(m->key, "interval") == 0) {
			uint64_t v = 0;
			rc = get_num(x, m, "dmarc.reports.interval", NK_TIME, 60, 7 * 86400, &v);
			r->interval = (uint32_t)v;
		} else {
			rc = unknown_key(x, m, "dmarc.reports");
		}
	}
	return rc;
}

static int parse_dmarc(struct ctx *x, const struct ucl_node *sec, struct conf_dmarc *d)
{
	int rc = want_section(x, sec, "dmarc");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		if (strcmp(m->key, "reports") == 0)
			rc = parse_dmarc_reports(x, m, &d->reports);
		else
			rc = unknown_key(x, m, "dmarc");
	}
	return rc;
}

static void print_str(FILE *f, const char *s);

static void print_dmarc(FILE *f, const struct conf_dmarc *d)
{
	const struct conf_dmarc_reports *r = &d->reports;
	if (!r->from && !r->inbox)
		return;
	fprintf(f, "dmarc {\n\treports {\n");
	const char *const name[] = {"from", "org_name", "inbox"};
	const char *const val[] = {r->from, r->org_name, r->inbox};
	for (size_t i = 0; i < 3; i++) {
		if (!val[i])
			continue;
		fprintf(f, "\t\t%s = ", name[i]);
		print_str(f, val[i]);
		fputs(";\n", f);
	}
	fprintf(f, "\t\tinterval = %us;\n\t}\n}\n", (unsigned)r->interval);
}

/* ---- dkim { canonicalization; keys = [ { domain; selector; key_file; } ] } - */

static void dkim_keys_free(struct conf_dkim_key *k, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(k[i].domain);
		free(k[i].selector);
		free(k[i].key_file);
	}
	free(k);
}

static int parse_dkim_key(struct ctx *x, const struct ucl_node *e, struct conf_dkim_key *k)
{
	char b[80];
	int rc = TERN_OK;
	if (e->type != UCL_OBJECT)
		return want(x, e, "dkim.keys", "a list of { domain; selector; key_file; }");
	for (size_t i = 0; rc == TERN_OK && i < e->n_items; i++) {
		const struct ucl_node *m = e->items[i];
		if (strcmp(m->key, "domain") == 0) {
			rc = get_str(x, m, "dkim.keys.domain", &k->domain);
			if (rc == TERN_OK && !valid_domain(k->domain))
				return cerr(x, m, "dkim.keys.domain: '%s' is not a domain name",
				            show(k->domain, b, sizeof(b)));
			if (rc == TERN_OK)
				tern_ascii_lower(k->domain);
		} else if (strcmp(m->key, "selector") == 0) {
			rc = get_str(x, m, "dkim.keys.selector", &k->selector);
			if (rc == TERN_OK && !valid_domain(k->selector))
				return cerr(
				    x, m,
				    "dkim.keys.selector: '%s' is not a selector (DNS labels: "
				    "letters, digits, '-', '_', dots between)",
				    show(k->selector, b, sizeof(b)));
		} else if (strcmp(m->key, "key_file") == 0) {
			rc = get_path(x, m, "dkim.keys.key_file", &k->key_file);
		} else {
			return unknown_key(x, m, "dkim.keys");
		}
	}
	if (rc == TERN_OK && (!k->domain || !k->selector || !k->key_file))
		return cerr(x, e, "dkim.keys: each key needs domain, selector and key_file");
	return rc;
}

static int parse_dkim(struct ctx *x, const struct ucl_node *sec, struct conf_dkim *d)
{
	int rc = want_section(x, sec, "dkim");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		char b[80];
		if (strcmp(m->key, "canonicalization") == 0) {
			static const char *const names[] = {"simple/simple", "simple/relaxed",
			                                    "relaxed/simple", "relaxed/relaxed"};
			if (m->type != UCL_STRING)
				return want(x, m, "dkim.canonicalization", "a string");
			size_t k = 0;
			while (k < 4 && strcmp(m->str, names[k]) != 0)
				k++;
			if (k == 4)
				return cerr(x, m,
				            "dkim.canonicalization: '%s' is not relaxed/relaxed, "
				            "relaxed/simple, simple/relaxed or simple/simple",
				            show(m->str, b, sizeof(b)));
			d->header_relaxed = k >= 2;
			d->body_relaxed = k % 2 == 1;
		} else if (strcmp(m->key, "sign_relayed") == 0) {
			rc = get_bool(x, m, "dkim.sign_relayed", &d->sign_relayed);
		} else if (strcmp(m->key, "keys") == 0) {
			/* one { } alone is a list of one, as a single string is elsewhere */
			size_t n = m->type == UCL_ARRAY ? m->n_items : 1;
			if (n > MAX_DKIM_KEYS)
				return cerr(x, m, "dkim.keys: more than %d keys", MAX_DKIM_KEYS);
			struct conf_dkim_key *v = n ? calloc(n, sizeof(*v)) : NULL;
			if (n && !v)
				return nomem(x);
			for (size_t j = 0; rc == TERN_OK && j < n; j++) {
				const struct ucl_node *e = m->type == UCL_ARRAY ? m->items[j] : m;
				rc = parse_dkim_key(x, e, &v[j]);
				for (size_t o = 0; rc == TERN_OK && o < j; o++)
					if (strcmp(v[o].domain, v[j].domain) == 0 &&
					    strcmp(v[o].selector, v[j].selector) == 0)
						rc = cerr(
						    x, e,
						    "dkim.keys: selector '%s' of %s is listed "
						    "twice",
						    show(v[j].selector, b, sizeof(b)), v[j].domain);
			}
			if (rc != TERN_OK) {
				dkim_keys_free(v, n);
				return rc;
			}
			dkim_keys_free(d->keys, d->n_keys);
			d->keys = v;
			d->n_keys = n;
		} else {
			return unknown_key(x, m, "dkim");
		}
	}
	return rc;
}

/* Once the whole file is read: the default mechanisms follow oauth, and
 * the OAuth ones cannot be asked for without it. */
static int finish_auth(struct ctx *x, struct conf_auth *a, const struct ucl_node *mechs_at)
{
	unsigned oauth_bits =
	    SASL_MECH_BIT(SASL_MECH_XOAUTH2) | SASL_MECH_BIT(SASL_MECH_OAUTHBEARER);
	if (!mechs_at) {
		a->mechanisms = SASL_MECH_BIT(SASL_MECH_PLAIN) | SASL_MECH_BIT(SASL_MECH_LOGIN) |
		                (a->oauth.issuer ? oauth_bits : 0);
		return TERN_OK;
	}
	if ((a->mechanisms & oauth_bits) && !a->oauth.issuer)
		return cerr(x, mechs_at,
		            "auth.mechanisms: XOAUTH2 and OAUTHBEARER need an auth.oauth section "
		            "(issuer, audience, jwks_file)");
	return TERN_OK;
}

static void print_auth(FILE *f, const struct conf_auth *a)
{
	fprintf(f, "auth {\n\tallow_plaintext = %s;\n\tmechanisms = [",
	        a->allow_plaintext ? "true" : "false");
	for (int m = 0, k = 0; m < SASL_MECH_COUNT; m++)
		if (a->mechanisms & SASL_MECH_BIT(m))
			fprintf(f, "%s\"%s\"", k++ ? ", " : "", sasl_mech_name((enum sasl_mech)m));
	fprintf(f, "];\n\treceived_header_user = %s;\n",
	        a->received_header_user ? "true" : "false");
	if (a->oauth.issuer) {
		fputs("\toauth {\n\t\tissuer = ", f);
		print_str(f, a->oauth.issuer);
		fputs(";\n\t\taudience = ", f);
		print_str(f, a->oauth.audience);
		fputs(";\n\t\tjwks_file = ", f);
		print_str(f, a->oauth.jwks_file);
		fputs(";\n\t\tuser_claim = ", f);
		print_str(f, a->oauth.user_claim);
		fprintf(f, ";\n\t\tleeway = %us;\n\t}\n", (unsigned)a->oauth.leeway);
	} else {
		fputs("\t# no oauth section: XOAUTH2 and OAUTHBEARER are not offered\n", f);
	}
	const struct conf_auth_throttle *t = &a->throttle;
	fprintf(f,
	        "\tthrottle {\n\t\tdelay_after = %u;\n\t\tdelay = %ums;\n\t\tmax_delay = %ums;\n"
	        "\t\taddr_block_after = %u;\n\t\tuser_block_after = %u;\n\t\tblock_time = %us;\n"
	        "\t\tforget_after = %us;\n\t\tmax_entries = %u;\n\t}\n}\n",
	        (unsigned)t->delay_after, (unsigned)t->delay_ms, (unsigned)t->max_delay_ms,
	        (unsigned)t->addr_block_after, (unsigned)t->user_block_after,
	        (unsigned)t->block_time, (unsigned)t->forget_after, (unsigned)t->max_entries);
}

/* ---- building ------------------------------------------------------------ */

static void free_aliases(struct conf_alias *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		alias_free_one(&v[i]);
	free(v);
}

static void tls_certs_free(struct conf_tls_cert *v, size_t n);

/* ---- shaping, pools and pool_select (deliver/shaping.h, deliver/pools.h) -- */

#define MAX_SHAPES 1024
#define MAX_POOLS 64
#define MAX_POOL_ADDRS 256
#define MAX_POOL_RULES 4096

static int parse_shape(struct ctx *x, const struct ucl_node *sec, const char *path,
                       struct conf_shape *s)
{
	int rc = want_section(x, sec, path);
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		char sub[320];
		uint64_t v = 0;
		uint32_t *f = strcmp(m->key, "connections") == 0      ? &s->connections
		              : strcmp(m->key, "per_connection") == 0 ? &s->per_connection
		              : strcmp(m->key, "per_minute") == 0     ? &s->per_minute
		                                                      : NULL;
		if (!f)
			return unknown_key(x, m, path);
		snprintf(sub, sizeof(sub), "%s.%s", path, m->key);
		if ((rc = get_num(x, m, sub, NK_COUNT, 1, 1000000, &v)) == TERN_OK)
			*f = (uint32_t)v;
	}
	return rc;
}

static int parse_shaping(struct ctx *x, const struct ucl_node *sec, struct conf_shaping *sh)
{
	int rc = want_section(x, sec, "shaping");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		char b[80], path[320];
		if (strcmp(m->key, "backoff") == 0) {
			uint64_t v = 0;
			if ((rc = get_num(x, m, "shaping.backoff", NK_TIME, 1, 86400, &v)) ==
			    TERN_OK)
				sh->backoff = (uint32_t)v;
			continue;
		}
		if (strcmp(m->key, "default") == 0) {
			rc = parse_shape(x, m, "shaping.default", &sh->dflt);
			continue;
		}
		if (!valid_domain(m->key))
			return cerr(x, m, "shaping: '%s' is not a valid domain name (or default)",
			            show(m->key, b, sizeof(b)));
		if (sh->n_shapes >= MAX_SHAPES)
			return cerr(x, m, "shaping: more than %d domains", MAX_SHAPES);
		struct conf_shape s = {0};
		snprintf(path, sizeof(path), "shaping.\"%s\"", show(m->key, b, sizeof(b)));
		if ((rc = parse_shape(x, m, path, &s)) != TERN_OK)
			return rc;
		struct conf_shape *v = realloc(sh->shapes, (sh->n_shapes + 1) * sizeof(*v));
		if (!v || !(s.domain = tern_strdup(m->key))) {
			if (v)
				sh->shapes = v;
			return nomem(x);
		}
		tern_ascii_lower(s.domain);
		sh->shapes = v;
		sh->shapes[sh->n_shapes++] = s;
	}
	return rc;
}

static bool valid_pool_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 64)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '-' || *s == '_'))
			return false;
	return true;
}

/* A source address: a literal IPv4 or IPv6 address, no port. */
static bool valid_source_addr(const char *s)
{
	unsigned char buf[16];
	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static int add_pool_addr(struct ctx *x, const struct ucl_node *n, const char *path, void *arg)
{
	struct conf_pool *p = arg;
	char b[80];
	if (!valid_source_addr(n->str))
		return cerr(x, n, "%s: '%s' is not an IPv4 or IPv6 address", path,
		            show(n->str, b, sizeof(b)));
	for (size_t i = 0; i < p->n_addrs; i++)
		if (strcmp(p->addrs[i], n->str) == 0)
			return cerr(x, n, "%s: '%s' is listed twice", path,
			            show(n->str, b, sizeof(b)));
	char **a = realloc(p->addrs, (p->n_addrs + 1) * sizeof(*a));
	if (!a)
		return nomem(x);
	p->addrs = a;
	char **e = realloc(p->ehlo, (p->n_addrs + 1) * sizeof(*e));
	if (!e)
		return nomem(x);
	p->ehlo = e;
	if (!(p->addrs[p->n_addrs] = tern_strdup(n->str)))
		return nomem(x);
	p->ehlo[p->n_addrs++] = NULL;
	return TERN_OK;
}

static void pool_free_one(struct conf_pool *p)
{
	for (size_t i = 0; i < p->n_addrs; i++) {
		free(p->addrs[i]);
		free(p->ehlo[i]);
	}
	free(p->addrs);
	free(p->ehlo);
	free(p->name);
}

static int parse_pool(struct ctx *x, const struct ucl_node *sec, const char *path,
                      struct conf_pool *p)
{
	int rc = want_section(x, sec, path);
	const struct ucl_node *ehlo = NULL;
	char sub[320], b[80];
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		snprintf(sub, sizeof(sub), "%s.%s", path, m->key);
		if (strcmp(m->key, "addresses") == 0) {
			rc = each_string(x, m, sub, MAX_POOL_ADDRS, add_pool_addr, p);
		} else if (strcmp(m->key, "ehlo") == 0) {
			rc = want_section(x, m, sub);
			ehlo = m;
		} else if (strcmp(m->key, "warmup") == 0) {
			rc = want_section(x, m, sub);
			for (size_t j = 0; rc == TERN_OK && j < m->n_items; j++) {
				const struct ucl_node *w = m->items[j];
				char wp[360];
				snprintf(wp, sizeof(wp), "%s.%s", sub, w->key);
				if (strcmp(w->key, "start") == 0) {
					uint64_t v = 0;
					if ((rc = get_num(x, w, wp, NK_COUNT, 1, 100000000, &v)) ==
					    TERN_OK)
						p->warmup_start = (uint32_t)v;
				} else if (strcmp(w->key, "growth") == 0) {
					double g = w->type == UCL_FLOAT ? w->fval
					           : w->type == UCL_INT ? (double)w->ival
					                                : -1;
					if (g < 1.0 || g > 10.0)
						return cerr(
						    x, w, "%s: expected a number from 1 to 10", wp);
					p->warmup_growth = g;
				} else {
					return unknown_key(x, w, sub);
				}
			}
		} else {
			return unknown_key(x, m, path);
		}
	}
	if (rc != TERN_OK)
		return rc;
	if (p->n_addrs == 0)
		return cerr(x, sec, "%s: needs addresses = [ ... ]", path);
	if (p->warmup_start && p->warmup_growth == 0)
		p->warmup_growth = 1.5;
	for (size_t i = 0; ehlo && i < ehlo->n_items; i++) {
		const struct ucl_node *e = ehlo->items[i];
		size_t k = 0;
		while (k < p->n_addrs && strcmp(p->addrs[k], e->key) != 0)
			k++;
		if (k == p->n_addrs)
			return cerr(x, e, "%s.ehlo: '%s' is not one of the pool's addresses", path,
			            show(e->key, b, sizeof(b)));
		snprintf(sub, sizeof(sub), "%s.ehlo.\"%s\"", path, e->key);
		if ((rc = get_str(x, e, sub, &p->ehlo[k])) != TERN_OK)
			return rc;
		if (!valid_domain(p->ehlo[k]))
			return cerr(x, e, "%s: '%s' is not a valid host name", sub,
			            show(p->ehlo[k], b, sizeof(b)));
	}
	return TERN_OK;
}

static int parse_pools(struct ctx *x, const struct ucl_node *sec, struct conf_shaping *sh)
{
	int rc = want_section(x, sec, "pools");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		char b[80], path[128];
		if (!valid_pool_name(m->key))
			return cerr(x, m,
			            "pools: '%s' is not a pool name (letters, digits, - and _)",
			            show(m->key, b, sizeof(b)));
		if (sh->n_pools >= MAX_POOLS)
			return cerr(x, m, "pools: more than %d pools", MAX_POOLS);
		struct conf_pool *v = realloc(sh->pools, (sh->n_pools + 1) * sizeof(*v));
		if (!v)
			return nomem(x);
		sh->pools = v;
		struct conf_pool *p = &sh->pools[sh->n_pools++];
		memset(p, 0, sizeof(*p));
		if (!(p->name = tern_strdup(m->key)))
			return nomem(x);
		snprintf(path, sizeof(path), "pools.%s", m->key);
		rc = parse_pool(x, m, path, p);
	}
	return rc;
}

static int parse_pool_rules(struct ctx *x, const struct ucl_node *sec, const char *path,
                            bool domains, struct conf_pool_rule **out, size_t *n)
{
	int rc = want_section(x, sec, path);
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		char b[80], sub[320];
		if (domains && !valid_domain(m->key))
			return cerr(x, m, "%s: '%s' is not a valid domain name", path,
			            show(m->key, b, sizeof(b)));
		if (*n >= MAX_POOL_RULES)
			return cerr(x, m, "%s: more than %d entries", path, MAX_POOL_RULES);
		struct conf_pool_rule *v = realloc(*out, (*n + 1) * sizeof(*v));
		if (!v)
			return nomem(x);
		*out = v;
		struct conf_pool_rule *r = &v[(*n)++];
		memset(r, 0, sizeof(*r));
		snprintf(sub, sizeof(sub), "%s.\"%s\"", path, show(m->key, b, sizeof(b)));
		if (!(r->key = tern_strdup(m->key)))
			return nomem(x);
		if (domains)
			tern_ascii_lower(r->key);
		rc = get_str(x, m, sub, &r->pool);
	}
	return rc;
}

static int parse_pool_select(struct ctx *x, const struct ucl_node *sec, struct conf_shaping *sh)
{
	int rc = want_section(x, sec, "pool_select");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		if (strcmp(m->key, "keys") == 0)
			rc = parse_pool_rules(x, m, "pool_select.keys", false, &sh->sel_keys,
			                      &sh->n_sel_keys);
		else if (strcmp(m->key, "domains") == 0)
			rc = parse_pool_rules(x, m, "pool_select.domains", true, &sh->sel_domains,
			                      &sh->n_sel_domains);
		else if (strcmp(m->key, "tags") == 0)
			rc = parse_pool_rules(x, m, "pool_select.tags", false, &sh->sel_tags,
			                      &sh->n_sel_tags);
		else if (strcmp(m->key, "default") == 0)
			rc = get_str(x, m, "pool_select.default", &sh->sel_default);
		else
			return unknown_key(x, m, "pool_select");
	}
	return rc;
}

static bool pool_known(const struct conf_shaping *sh, const char *name)
{
	for (size_t i = 0; i < sh->n_pools; i++)
		if (strcmp(sh->pools[i].name, name) == 0)
			return true;
	return false;
}

/* Once every section is read: each pool a rule names must exist. */
static int finish_pools(struct ctx *x, const struct conf_shaping *sh)
{
	const struct conf_pool_rule *lists[] = {sh->sel_keys, sh->sel_domains, sh->sel_tags};
	const size_t ns[] = {sh->n_sel_keys, sh->n_sel_domains, sh->n_sel_tags};
	static const char *const names[] = {"keys", "domains", "tags"};
	char b[80];
	for (size_t l = 0; l < 3; l++)
		for (size_t i = 0; i < ns[l]; i++)
			if (!pool_known(sh, lists[l][i].pool))
				return cerr(x, NULL,
				            "pool_select.%s: pool '%s' is not in pools { }",
				            names[l], show(lists[l][i].pool, b, sizeof(b)));
	if (sh->sel_default && !pool_known(sh, sh->sel_default))
		return cerr(x, NULL, "pool_select.default: pool '%s' is not in pools { }",
		            show(sh->sel_default, b, sizeof(b)));
	return TERN_OK;
}

static void rules_free(struct conf_pool_rule *r, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(r[i].key);
		free(r[i].pool);
	}
	free(r);
}

/* ---- quotas { } and submission_quotas { } (store/quota.h) ---- */

#define MAX_QUOTAS 4096

static int parse_quota_one(struct ctx *x, const struct ucl_node *sec, const char *path,
                           struct conf_quota *q)
{
	int rc = want_section(x, sec, path);
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		char sub[320];
		uint64_t *f = strcmp(m->key, "per_second") == 0 ? &q->per_second
		              : strcmp(m->key, "per_hour") == 0 ? &q->per_hour
		              : strcmp(m->key, "per_day") == 0  ? &q->per_day
		                                                : NULL;
		if (!f)
			return unknown_key(x, m, path);
		/* the key is one of the three names above; a long path is cut in messages only */
		if (snprintf(sub, sizeof(sub), "%s.%s", path, m->key) < 0)
			sub[0] = '\0';
		rc = get_num(x, m, sub, NK_COUNT, 1, 1000000000, f);
	}
	return rc;
}

/* quotas { "DOMAIN" { ... } } (users: false) or submission_quotas { default
 * { ... } "USER" { ... } } (users: true). */
static int parse_quotas(struct ctx *x, const struct ucl_node *sec, const char *what, bool users,
                        struct conf_quota **out, size_t *n)
{
	int rc = want_section(x, sec, what);
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		char b[80], path[320];
		bool ok = users ? m->key[0] != '\0' && strlen(m->key) <= 255 && !strchr(m->key, '"')
		                : valid_domain(m->key);
		if (!ok)
			return cerr(x, m, "%s: '%s' is not a valid %s", what,
			            show(m->key, b, sizeof(b)),
			            users ? "user name" : "domain name");
		if (*n >= MAX_QUOTAS)
			return cerr(x, m, "%s: more than %d entries", what, MAX_QUOTAS);
		struct conf_quota q = {0};
		snprintf(path, sizeof(path), "%s.\"%s\"", what, show(m->key, b, sizeof(b)));
		if ((rc = parse_quota_one(x, m, path, &q)) != TERN_OK)
			return rc;
		struct conf_quota *v = realloc(*out, (*n + 1) * sizeof(*v));
		if (!v || !(q.name = tern_strdup(m->key))) {
			if (v)
				*out = v;
			return nomem(x);
		}
		if (!users)
			tern_ascii_lower(q.name);
		*out = v;
		(*out)[(*n)++] = q;
	}
	return rc;
}

static void quotas_free(struct conf_quota *q, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(q[i].name);
	free(q);
}

const struct conf_quota *conf_domain_quota(const struct tern_config *c, const char *domain)
{
	for (size_t i = 0; domain && i < c->n_quotas; i++)
		if (strcmp(c->quotas[i].name, domain) == 0)
			return &c->quotas[i];
	return NULL;
}

const struct conf_quota *conf_submission_quota(const struct tern_config *c, const char *user)
{
	const struct conf_quota *d = NULL;
	for (size_t i = 0; i < c->n_sub_quotas; i++) {
		if (user && strcmp(c->sub_quotas[i].name, user) == 0)
			return &c->sub_quotas[i];
		if (strcmp(c->sub_quotas[i].name, "default") == 0)
			d = &c->sub_quotas[i];
	}
	return d;
}

static void print_quotas(FILE *f, const char *what, const struct conf_quota *q, size_t n)
{
	fprintf(f, "%s {\n", what);
	for (size_t i = 0; i < n; i++) {
		fputc('\t', f);
		print_str(f, q[i].name);
		fputs(" {", f);
		if (q[i].per_second)
			fprintf(f, " per_second = %llu;", (unsigned long long)q[i].per_second);
		if (q[i].per_hour)
			fprintf(f, " per_hour = %llu;", (unsigned long long)q[i].per_hour);
		if (q[i].per_day)
			fprintf(f, " per_day = %llu;", (unsigned long long)q[i].per_day);
		fputs(" }\n", f);
	}
	fputs("}\n", f);
}

static void shaping_conf_free(struct conf_shaping *sh)
{
	for (size_t i = 0; i < sh->n_shapes; i++)
		free(sh->shapes[i].domain);
	free(sh->shapes);
	for (size_t i = 0; i < sh->n_pools; i++)
		pool_free_one(&sh->pools[i]);
	free(sh->pools);
	rules_free(sh->sel_keys, sh->n_sel_keys);
	rules_free(sh->sel_domains, sh->n_sel_domains);
	rules_free(sh->sel_tags, sh->n_sel_tags);
	free(sh->sel_default);
}

static void conf_free(struct tern_config *c)
{
	shaping_conf_free(&c->shaping);
	quotas_free(c->quotas, c->n_quotas);
	quotas_free(c->sub_quotas, c->n_sub_quotas);
	free(c->policy.zones);
	tls_certs_free(c->tls.certs, c->tls.n_certs);
	dkim_keys_free(c->dkim.keys, c->dkim.n_keys);
	arc_free(&c->arc);
	free(c->metrics.address);
	free(c->metrics.token);
	suppression_free(&c->suppression);
	free(c->tracking.base_url);
	for (size_t i = 0; i < c->n_routes; i++)
		route_free(&c->routes[i]);
	free(c->routes);
	if (c->relayhost)
		route_free(c->relayhost);
	free(c->relayhost);
	for (size_t i = 0; i < c->dns.n_forward; i++)
		free(c->dns.forward[i]);
	free(c->dns.forward);
	free(c->dns.trust_anchor_file);
	free(c->delivery.ca_file);
	for (size_t i = 0; i < c->capture.n_http_allowed_hosts; i++)
		free(c->capture.http_allowed_hosts[i]);
	free(c->capture.http_allowed_hosts);
	free(c->dmarc.reports.from);
	free(c->dmarc.reports.org_name);
	free(c->dmarc.reports.inbox);
	free(c->capture.spam_check);
	free(c->source);
	free(c->hostname);
	free(c->data_dir);
	free(c->users_file);
	free(c->user);
	free(c->log_level);
	free(c->recipient_delimiter);
	for (size_t i = 0; i < c->n_local_domains; i++)
		free(c->local_domains[i]);
	free(c->local_domains);
	free_aliases(c->aliases, c->n_aliases);
	free_aliases(c->senders, c->n_senders);
	free(c->auth.oauth.issuer);
	free(c->auth.oauth.audience);
	free(c->auth.oauth.jwks_file);
	free(c->auth.oauth.user_claim);
	free(c->relay_networks);
	for (size_t i = 0; i < c->n_listeners; i++) {
		free(c->listeners[i].name);
		free(c->listeners[i].address);
		free(c->listeners[i].profile);
		for (size_t j = 0; j < c->listeners[i].n_milters; j++)
			free(c->listeners[i].milters[j]);
		free(c->listeners[i].milters);
	}
	free(c->listeners);
	free(c);
}

static char *default_hostname(void)
{
	char h[256];
	if (gethostname(h, sizeof(h)) != 0)
		return tern_strdup("localhost");
	h[sizeof(h) - 1] = '\0';
	return tern_strdup(valid_domain(h) ? h : "localhost");
}

static const char *const log_levels[] = {"debug", "info", "warn", "error"};

/* An entry of capture.http_allowed_hosts: "*", ".domain" or a host name,
 * without a port (the listener's port is the only one). */
static int add_http_host(struct ctx *x, const struct ucl_node *n, const char *path, void *arg)
{
	struct strlist *l = arg;
	char b[80];
	const char *s = n->str;
	if (strcmp(s, "*") != 0 && !valid_domain(s[0] == '.' ? s + 1 : s))
		return cerr(x, n,
		            "%s: '%s' is not a host name, \".domain\" or \"*\" (no port; IP "
		            "addresses are always allowed)",
		            path, show(s, b, sizeof(b)));
	if (strlist_has(l, s))
		return TERN_OK;
	return strlist_add(l, s) == TERN_OK ? TERN_OK : nomem(x);
}

static int parse_capture(struct ctx *x, const struct ucl_node *sec, struct conf_capture *cap)
{
	int rc = want_section(x, sec, "capture");
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		uint64_t v = 0;
		if (strcmp(m->key, "max_messages") == 0) {
			rc = get_num(x, m, "capture.max_messages", NK_COUNT, 0, 100000000, &v);
			cap->max_messages = v;
		} else if (strcmp(m->key, "max_age") == 0) {
			rc = get_num(x, m, "capture.max_age", NK_TIME, 0, 3650u * 86400u, &v);
			cap->max_age = (uint32_t)v;
		} else if (strcmp(m->key, "http_allowed_hosts") == 0) {
			struct strlist l = {0};
			rc = each_string(x, m, "capture.http_allowed_hosts", MAX_HTTP_HOSTS,
			                 add_http_host, &l);
			if (rc != TERN_OK) {
				strlist_free(&l);
				break;
			}
			for (size_t j = 0; j < cap->n_http_allowed_hosts; j++)
				free(cap->http_allowed_hosts[j]);
			free(cap->http_allowed_hosts);
			cap->http_allowed_hosts = l.v;
			cap->n_http_allowed_hosts = l.n;
		} else if (strcmp(m->key, "http_max_body") == 0) {
			/* 128m: the ceiling of the send API (HTTP_SEND_MAX_BODY) */
			rc = get_num(x, m, "capture.http_max_body", NK_SIZE, 1024, 128u << 20, &v);
			cap->http_max_body = v;
		} else if (strcmp(m->key, "http_max_connections") == 0) {
			rc = get_num(x, m, "capture.http_max_connections", NK_COUNT, 1, 100000, &v);
			cap->http_max_connections = (uint32_t)v;
		} else if (strcmp(m->key, "spam_check") == 0) {
			free(cap->spam_check);
			cap->spam_check = NULL;
			rc = get_str(x, m, "capture.spam_check", &cap->spam_check);
			if (rc == TERN_OK && !spam_check_spec_ok(cap->spam_check))
				rc = cerr(x, m,
				          "capture.spam_check: want \"rspamd:HOST:PORT\" or "
				          "\"spamassassin:HOST:PORT\"");
		} else {
			return unknown_key(x, m, "capture");
		}
	}
	return rc;
}

#define MAX_TLS_CERTS 1000

static void tls_certs_free(struct conf_tls_cert *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].cert_file);
		free(v[i].key_file);
	}
	free(v);
}

/* An entry of tls.certificates: { cert_file = ...; key_file = ...; }. */
static int parse_tls_cert(struct ctx *x, const struct ucl_node *n, size_t i,
                          struct conf_tls_cert *out)
{
	char path[64], sub[96];
	snprintf(path, sizeof(path), "tls.certificates[%zu]", i);
	int rc = want_section(x, n, path);
	for (size_t j = 0; rc == TERN_OK && j < n->n_items; j++) {
		const struct ucl_node *m = n->items[j];
		if (strcmp(m->key, "cert_file") == 0 || strcmp(m->key, "key_file") == 0) {
			snprintf(sub, sizeof(sub), "%s.%s", path, m->key);
			rc = get_path(x, m, sub,
			              m->key[0] == 'c' ? &out->cert_file : &out->key_file);
		} else {
			return unknown_key(x, m, path);
		}
	}
	if (rc == TERN_OK && (!out->cert_file || !out->key_file))
		return cerr(x, n, "%s: needs both cert_file and key_file", path);
	return rc;
}

static int parse_tls(struct ctx *x, struct tern_config *c, const struct ucl_node *sec)
{
	int rc = want_section(x, sec, "tls");
	x->tls_sec = sec;
	for (size_t i = 0; rc == TERN_OK && i < sec->n_items; i++) {
		const struct ucl_node *m = sec->items[i];
		if (strcmp(m->key, "cert_file") == 0) {
			rc = get_path(x, m, "tls.cert_file", &x->tls_cert);
		} else if (strcmp(m->key, "key_file") == 0) {
			rc = get_path(x, m, "tls.key_file", &x->tls_key);
		} else if (strcmp(m->key, "self_signed") == 0) {
			x->tls_self_signed = m;
			rc = get_bool(x, m, "tls.self_signed", &c->tls.self_signed);
		} else if (strcmp(m->key, "certificates") == 0) {
			if (m->type != UCL_ARRAY)
				return want(x, m, "tls.certificates",
				            "a list of { cert_file = ...; key_file = ...; }");
			if (m->n_items > MAX_TLS_CERTS)
				return cerr(x, m, "tls.certificates: more than %d certificates",
				            MAX_TLS_CERTS);
			struct conf_tls_cert *v = calloc(m->n_items ? m->n_items : 1, sizeof(*v));
			if (!v)
				return nomem(x);
			for (size_t j = 0; rc == TERN_OK && j < m->n_items; j++)
				rc = parse_tls_cert(x, m->items[j], j, &v[j]);
			if (rc != TERN_OK) {
				tls_certs_free(v, m->n_items);
				return rc;
			}
			tls_certs_free(x->tls_list, x->n_tls_list);
			x->tls_list = v;
			x->n_tls_list = m->n_items;
		} else {
			return unknown_key(x, m, "tls");
		}
	}
	return rc;
}

/* What build() collects while it reads the file, before the config is whole. */
struct build_tmp {
	struct strlist domains;
	bool domains_given;
	struct netlist nets;
	bool nets_given;
	struct aliaslist aliases;
	struct aliaslist senders;
	bool listen_given;
	const struct ucl_node *mechanisms; /* where auth.mechanisms was given, or NULL */
};

/* DATA_DIR/name, with or without a slash at the end of data_dir. */
static char *data_path(const char *dir, const char *name)
{
	size_t n = strlen(dir), len = n + 1 + strlen(name) + 1;
	char *p = malloc(len);
	if (p)
		snprintf(p, len, "%s%s%s", dir, n > 0 && dir[n - 1] == '/' ? "" : "/", name);
	return p;
}

/*
 * Once every section is read: the certificate list (the single pair first,
 * then tls.certificates, or the self-signed one), and each listener's TLS
 * mode: the default is STARTTLS when there is a certificate; starttls or
 * implicit asked for without one is an error at that listener.
 */
static int finish_tls(struct ctx *x, struct tern_config *c)
{
	struct conf_tls_server *t = &c->tls;
	if ((!x->tls_cert) != (!x->tls_key))
		return cerr(x, x->tls_sec,
		            "tls: cert_file and key_file go together (set both or neither)");
	size_t n = (x->tls_cert ? 1 : 0) + x->n_tls_list;
	if (t->self_signed && n > 0)
		return cerr(
		    x, x->tls_self_signed,
		    "tls.self_signed: cannot be combined with cert_file or certificates (it "
		    "makes the only certificate)");
	if (t->self_signed)
		n = 1;
	if (n > 0 && !(t->certs = calloc(n, sizeof(*t->certs))))
		return nomem(x);
	if (t->self_signed) {
		t->n_certs = 1;
		t->certs[0].cert_file = data_path(c->data_dir, "tls/selfsigned-cert.pem");
		t->certs[0].key_file = data_path(c->data_dir, "tls/selfsigned-key.pem");
		if (!t->certs[0].cert_file || !t->certs[0].key_file)
			return nomem(x);
	} else {
		if (x->tls_cert) {
			t->certs[t->n_certs].cert_file = x->tls_cert;
			t->certs[t->n_certs++].key_file = x->tls_key;
			x->tls_cert = x->tls_key = NULL;
		}
		for (size_t i = 0; i < x->n_tls_list; i++)
			t->certs[t->n_certs++] = x->tls_list[i];
		free(x->tls_list);
		x->tls_list = NULL;
		x->n_tls_list = 0;
	}
	for (size_t i = 0; i < c->n_listeners; i++) {
		struct conf_listener *l = &c->listeners[i];
		const struct ucl_node *node = i < MAX_LISTENERS ? x->listen_tls[i] : NULL;
		if (!node)
			l->tls = t->n_certs && strcmp(l->profile, "http") != 0
			             ? CONF_LISTEN_TLS_STARTTLS
			             : CONF_LISTEN_TLS_NONE;
		else if (l->tls == CONF_LISTEN_TLS_NONE && t->n_certs > 0 &&
		         strcmp(l->profile, "pop3") == 0)
			return cerr(x, node,
			            "listen.%s.tls: \"none\" is not implemented for pop3 listeners "
			            "(they offer STLS whenever tls has a certificate)",
			            l->name);
		else if (l->tls != CONF_LISTEN_TLS_NONE && t->n_certs == 0)
			return cerr(
			    x, node,
			    "listen.%s.tls: \"%s\" needs a certificate: set tls { cert_file; "
			    "key_file; }, tls.certificates or tls.self_signed",
			    l->name, listen_tls_names[l->tls]);
	}
	return TERN_OK;
}

static void ctx_free_tls(struct ctx *x)
{
	free(x->tls_cert);
	free(x->tls_key);
	tls_certs_free(x->tls_list, x->n_tls_list);
}

static int parse_top(struct ctx *x, struct tern_config *c, const struct ucl_node *m,
                     struct build_tmp *bt)
{
	const char *k = m->key;
	char b[80];
	int rc;
	uint64_t v = 0;
	if (strcmp(k, "hostname") == 0) {
		rc = get_str(x, m, k, &c->hostname);
		if (rc == TERN_OK && !valid_domain(c->hostname))
			return cerr(x, m, "hostname: '%s' is not a valid host name",
			            show(c->hostname, b, sizeof(b)));
		return rc;
	}
	if (strcmp(k, "data_dir") == 0)
		return get_path(x, m, k, &c->data_dir);
	if (strcmp(k, "users_file") == 0)
		return get_path(x, m, k, &c->users_file);
	if (strcmp(k, "user") == 0) {
		rc = get_str(x, m, k, &c->user);
		if (rc == TERN_OK && !valid_user(c->user))
			return cerr(x, m, "user: '%s' is not a valid user name",
			            show(c->user, b, sizeof(b)));
		return rc;
	}
	if (strcmp(k, "log_level") == 0) {
		rc = get_str(x, m, k, &c->log_level);
		if (rc != TERN_OK)
			return rc;
		for (size_t i = 0; i < 4; i++)
			if (strcmp(c->log_level, log_levels[i]) == 0)
				return TERN_OK;
		return cerr(x, m, "log_level: must be debug, info, warn or error, not '%s'",
		            show(c->log_level, b, sizeof(b)));
	}
	if (strcmp(k, "workers") == 0) {
		rc = get_num(x, m, k, NK_COUNT, 0, 1024, &v);
		if (rc == TERN_OK)
			c->workers = (uint32_t)v;
		return rc;
	}
	if (strcmp(k, "vrfy") == 0)
		return get_bool(x, m, k, &c->vrfy);
	if (strcmp(k, "expn") == 0)
		return get_bool(x, m, k, &c->expn);
	if (strcmp(k, "recipient_delimiter") == 0) {
		/* RFC 5322 atext specials only: a delimiter must be able to
		 * occur in a dot-atom local part, and "" is allowed (off). */
		if (m->type != UCL_STRING)
			return want(x, m, k, "a string of delimiter characters");
		if (m->len > 8 || strspn(m->str, "!#$%&'*+-=?^_`{|}~") != m->len)
			return cerr(x, m,
			            "recipient_delimiter: '%s' must be up to 8 of the characters "
			            "!#$%%&'*+-=?^_`{|}~ (or \"\" for none)",
			            show(m->str, b, sizeof(b)));
		char *d = tern_strdup(m->str);
		if (!d)
			return nomem(x);
		free(c->recipient_delimiter);
		c->recipient_delimiter = d;
		return TERN_OK;
	}
	if (strcmp(k, "local_domains") == 0) {
		bt->domains_given = true;
		strlist_free(&bt->domains);
		return each_string(x, m, k, MAX_LOCAL_DOMAINS, add_domain, &bt->domains);
	}
	if (strcmp(k, "aliases") == 0)
		return parse_address_map(x, m, "aliases", add_target, &bt->aliases);
	if (strcmp(k, "senders") == 0)
		return parse_address_map(x, m, "senders", add_sender, &bt->senders);
	if (strcmp(k, "auth") == 0)
		return parse_auth(x, m, &c->auth, &bt->mechanisms);
	if (strcmp(k, "relay") == 0)
		return parse_relay(x, m, &bt->nets, &bt->nets_given);
	if (strcmp(k, "limits") == 0)
		return parse_limits(x, m, &c->limits);
	if (strcmp(k, "listen") == 0) {
		bt->listen_given = true;
		return parse_listen(x, c, m);
	}
	if (strcmp(k, "routes") == 0)
		return parse_routes(x, c, m);
	if (strcmp(k, "relayhost") == 0)
		return parse_relayhost(x, c, m);
	if (strcmp(k, "delivery") == 0)
		return parse_delivery(x, m, &c->delivery);
	if (strcmp(k, "mailbox") == 0)
		return parse_mailbox(x, m, &c->mailbox);
	if (strcmp(k, "dns") == 0)
		return parse_dns(x, c, m);
	if (strcmp(k, "capture") == 0)
		return parse_capture(x, m, &c->capture);
	if (strcmp(k, "policy") == 0)
		return parse_policy(x, m, &c->policy);
	if (strcmp(k, "dkim") == 0)
		return parse_dkim(x, m, &c->dkim);
	if (strcmp(k, "auth_checks") == 0)
		return parse_auth_checks(x, m, &c->auth_checks);
	if (strcmp(k, "dmarc") == 0)
		return parse_dmarc(x, m, &c->dmarc);
	if (strcmp(k, "arc") == 0)
		return parse_arc(x, m, &c->arc);
	if (strcmp(k, "metrics") == 0)
		return parse_metrics(x, m, &c->metrics);
	if (strcmp(k, "suppression") == 0)
		return parse_suppression(x, m, &c->suppression);
	if (strcmp(k, "tracking") == 0)
		return parse_tracking(x, m, &c->tracking);
	if (strcmp(k, "feedback_address") == 0) /* issue 12's spelling of the same key */
		return parse_feedback_address(x, m, &c->suppression);
	if (strcmp(k, "webhooks") == 0)
		return parse_webhooks(x, m, &c->webhooks);
	if (strcmp(k, "events") == 0)
		return parse_events(x, m, &c->events);
	if (strcmp(k, "archive") == 0)
		return parse_archive(x, m, &c->archive);
	if (strcmp(k, "tls") == 0)
		return parse_tls(x, c, m);
	if (strcmp(k, "shaping") == 0)
		return parse_shaping(x, m, &c->shaping);
	if (strcmp(k, "pools") == 0)
		return parse_pools(x, m, &c->shaping);
	if (strcmp(k, "pool_select") == 0)
		return parse_pool_select(x, m, &c->shaping);
	if (strcmp(k, "quotas") == 0)
		return parse_quotas(x, m, "quotas", false, &c->quotas, &c->n_quotas);
	if (strcmp(k, "submission_quotas") == 0)
		return parse_quotas(x, m, "submission_quotas", true, &c->sub_quotas,
		                    &c->n_sub_quotas);
	return unknown_key(x, m, NULL);
}

static int fill_defaults(struct ctx *x, struct tern_config *c)
{
	if (!c->hostname && !(c->hostname = default_hostname()))
		return nomem(x);
	if (!c->data_dir && !(c->data_dir = tern_strdup("./tern-data")))
		return nomem(x);
	if (!c->user && !(c->user = tern_strdup("nobody")))
		return nomem(x);
	if (!c->log_level && !(c->log_level = tern_strdup("info")))
		return nomem(x);
	if (!c->recipient_delimiter && !(c->recipient_delimiter = tern_strdup("+")))
		return nomem(x);
	if (!c->users_file) {
		size_t n = strlen(c->data_dir);
		bool slash = n > 0 && c->data_dir[n - 1] == '/';
		c->users_file = malloc(n + sizeof("/users"));
		if (!c->users_file)
			return nomem(x);
		snprintf(c->users_file, n + sizeof("/users"), "%s%s", c->data_dir,
		         slash ? "users" : "/users");
	}
	return TERN_OK;
}

static struct tern_config *build(const struct ucl_doc *doc, const char *source, char *err,
                                 size_t errlen)
{
	struct ctx x = {.doc = doc, .err = err, .errlen = errlen};
	struct build_tmp bt = {0};
	int rc = TERN_OK;
	struct tern_config *c = calloc(1, sizeof(*c));
	if (!c) {
		nomem(&x);
		return NULL;
	}
	atomic_init(&c->refs, 1);
	c->limits = default_limits;
	c->delivery = default_delivery;
	c->shaping.backoff = 300;
	c->mailbox.quota = 1ull << 30;
	c->webhooks = (struct conf_webhooks){5, 3600, 86400, 10};
	c->events.enabled = true;
	c->events.retention = 30 * 86400;
	c->archive = (struct conf_archive){
	    .enabled = false, .retention = 365 * 86400, .inbound = true, .outbound = true};
	c->capture.http_max_body = DEFAULT_HTTP_MAX_BODY;
	c->capture.http_max_connections = DEFAULT_HTTP_MAX_CONNECTIONS;
	c->policy = default_policy;
	default_auth(&c->auth);
	c->auth_checks = default_auth_checks;
	c->dmarc.reports.interval = 86400;
	c->vrfy = true;
	c->expn = false;
	c->dkim.header_relaxed = c->dkim.body_relaxed = true;
	c->suppression.enabled = true;
	for (size_t i = 0; rc == TERN_OK && i < doc->root->n_items; i++)
		rc = parse_top(&x, c, doc->root->items[i], &bt);
	if (rc != TERN_OK)
		goto fail;
	if ((rc = fill_defaults(&x, c)) != TERN_OK)
		goto fail;
	if ((rc = finish_pools(&x, &c->shaping)) != TERN_OK)
		goto fail;
	if ((rc = finish_auth(&x, &c->auth, bt.mechanisms)) != TERN_OK)
		goto fail;
	if (!bt.domains_given && strlist_add(&bt.domains, "localhost") != TERN_OK) {
		rc = nomem(&x);
		goto fail;
	}
	for (size_t i = 0; !bt.nets_given && i < 2; i++) {
		struct conf_cidr *v = realloc(bt.nets.v, (bt.nets.n + 1) * sizeof(*v));
		if (!v) {
			rc = nomem(&x);
			goto fail;
		}
		bt.nets.v = v;
		conf_cidr_parse(default_networks[i], &bt.nets.v[bt.nets.n++]);
	}
	if (!bt.listen_given &&
	    ((rc = listener_add(&x, c, "mx", "127.0.0.1:2525", "mx")) != TERN_OK ||
	     (rc = listener_add(&x, c, "pop3", "127.0.0.1:2110", "pop3")) != TERN_OK))
		goto fail;
	if ((rc = finish_address_map(&x, &bt.aliases, &c->aliases, &c->n_aliases)) != TERN_OK ||
	    (rc = finish_address_map(&x, &bt.senders, &c->senders, &c->n_senders)) != TERN_OK)
		goto fail;
	if ((rc = finish_tls(&x, c)) != TERN_OK)
		goto fail;
	if ((rc = finish_arc(&x, c)) != TERN_OK)
		goto fail;
	ctx_free_tls(&x);
	if (!(c->source = tern_strdup(source))) {
		rc = nomem(&x);
		goto fail;
	}
	c->local_domains = bt.domains.v;
	c->n_local_domains = bt.domains.n;
	c->relay_networks = bt.nets.v;
	c->n_relay_networks = bt.nets.n;
	if (finish_suppression(&x, c) != TERN_OK) {
		conf_free(c); /* it owns the lists now */
		return NULL;
	}
	return c;
fail:
	strlist_free(&bt.domains);
	free(bt.nets.v);
	aliaslist_free(&bt.aliases);
	aliaslist_free(&bt.senders);
	ctx_free_tls(&x);
	conf_free(c);
	return NULL;
}

/* ---- public -------------------------------------------------------------- */

struct tern_config *conf_load_string(const char *text, size_t len, const char *name, char *err,
                                     size_t errlen)
{
	struct ucl_doc *doc;
	if (err && errlen)
		err[0] = '\0';
	if (!name)
		name = "(string)";
	if (ucl_parse(text, len, name, false, &doc, err, errlen) != TERN_OK)
		return NULL;
	struct tern_config *c = build(doc, name, err, errlen);
	ucl_free(doc);
	return c;
}

struct tern_config *conf_load(const char *path, char *err, size_t errlen)
{
	struct ucl_doc *doc;
	if (!path)
		return conf_load_string(default_text, sizeof(default_text) - 1, DEFAULT_SOURCE, err,
		                        errlen);
	if (err && errlen)
		err[0] = '\0';
	if (ucl_parse_file(path, &doc, err, errlen) != TERN_OK)
		return NULL;
	struct tern_config *c = build(doc, path, err, errlen);
	ucl_free(doc);
	return c;
}

struct tern_config *conf_ref(struct tern_config *c)
{
	if (c)
		atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	return c;
}

int conf_apply_capture(struct tern_config *c, const char *smtp_address, const char *data_dir)
{
	struct sockaddr_storage ss;
	unsigned len;
	if (!conf_parse_address(smtp_address, &ss, &len))
		return TERN_EINVAL;
	struct conf_listener *l = calloc(1, sizeof(*l));
	if (!l)
		return TERN_ENOMEM;
	l->name = tern_strdup("capture");
	l->address = tern_strdup(smtp_address);
	l->profile = tern_strdup("capture");
	char *dd = data_dir ? tern_strdup(data_dir) : NULL;
	char *uf = NULL;
	if (dd) {
		size_t n = strlen(dd);
		uf = malloc(n + sizeof("/users"));
		if (uf)
			snprintf(uf, n + sizeof("/users"), "%s/users", dd);
	}
	if (!l->name || !l->address || !l->profile || (data_dir && (!dd || !uf))) {
		free(l->name);
		free(l->address);
		free(l->profile);
		free(l);
		free(dd);
		free(uf);
		return TERN_ENOMEM;
	}
	for (size_t i = 0; i < c->n_listeners; i++) {
		free(c->listeners[i].name);
		free(c->listeners[i].address);
		free(c->listeners[i].profile);
		for (size_t j = 0; j < c->listeners[i].n_milters; j++)
			free(c->listeners[i].milters[j]);
		free(c->listeners[i].milters);
	}
	free(c->listeners);
	c->listeners = l;
	c->n_listeners = 1;
	/* Mailpit offers STARTTLS only with a certificate it was given: the
	 * embedded default's self-signed one would make clients that upgrade
	 * whenever offered (and verify) fail against the catcher. */
	if (c->tls.self_signed) {
		tls_certs_free(c->tls.certs, c->tls.n_certs);
		c->tls.certs = NULL;
		c->tls.n_certs = 0;
		c->tls.self_signed = false;
	}
	l->tls = c->tls.n_certs ? CONF_LISTEN_TLS_STARTTLS : CONF_LISTEN_TLS_NONE;
	if (dd) {
		free(c->data_dir);
		free(c->users_file);
		c->data_dir = dd;
		c->users_file = uf;
	}
	c->capture_mode = true;
	return TERN_OK;
}

void conf_unref(struct tern_config *c)
{
	/* acq_rel: the last owner must see every other owner's reads finished */
	if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
		conf_free(c);
}

size_t conf_local_base_len(const struct tern_config *c, const char *local, size_t len)
{
	const char *d = c && c->recipient_delimiter ? c->recipient_delimiter : "";
	for (size_t i = 0; *d && i < len; i++)
		if (strchr(d, local[i]) && local[i] != '\0')
			return i;
	return len;
}

bool conf_is_local_domain(const struct tern_config *c, const char *domain, size_t len)
{
	if (!c || !domain || len == 0)
		return false;
	for (size_t i = 0; i < c->n_local_domains; i++) {
		const char *d = c->local_domains[i];
		if (strlen(d) == len && strncasecmp(d, domain, len) == 0)
			return true;
	}
	return false;
}

static int alias_key_cmp(const void *key, const void *elem)
{
	return strcmp(key, ((const struct conf_alias *)elem)->from);
}

const struct conf_alias *conf_find_alias(const struct tern_config *c, const char *addr)
{
	if (!c || !addr || c->n_aliases == 0)
		return NULL;
	return bsearch(addr, c->aliases, c->n_aliases, sizeof(c->aliases[0]), alias_key_cmp);
}

/* a@b against a map entry: the address itself, or "@domain" for its domain. */
static bool sender_entry_matches(const char *entry, const char *addr)
{
	if (entry[0] != '@')
		return tern_ascii_ieq(entry, addr);
	const char *at = strrchr(addr, '@');
	return at && at != addr && tern_ascii_ieq(entry + 1, at + 1);
}

/* conf_may_send_as for a lowercased user and address. */
static bool owns(const struct tern_config *c, const char *user, const char *addr)
{
	if (strcmp(user, addr) == 0)
		return true;
	/* An alias that delivers to the user is an address the user reads. */
	const struct conf_alias *al = conf_find_alias(c, addr);
	for (size_t i = 0; al && i < al->n_to; i++)
		if (strcmp(al->to[i], user) == 0)
			return true;
	const struct conf_alias *s = c->n_senders ? bsearch(user, c->senders, c->n_senders,
	                                                    sizeof(c->senders[0]), alias_key_cmp)
	                                          : NULL;
	for (size_t i = 0; s && i < s->n_to; i++)
		if (sender_entry_matches(s->to[i], addr))
			return true;
	return false;
}

bool conf_may_send_as(const struct tern_config *c, const char *user, const char *addr)
{
	char lc[512], ulc[512], base[512];
	if (!c || !user || !addr || !*user || !*addr || strlen(addr) >= sizeof(lc) ||
	    strlen(user) >= sizeof(ulc))
		return false;
	tern_strlcpy(lc, addr, sizeof(lc));
	tern_ascii_lower(lc);
	tern_strlcpy(ulc, user, sizeof(ulc));
	tern_ascii_lower(ulc);
	if (owns(c, ulc, lc))
		return true;
	/* user+tag@domain is user@domain's (recipient_delimiter), as RCPT and
	 * local delivery see it. A quoted local part is taken as it is. */
	const char *at = strrchr(lc, '@');
	size_t llen = at ? (size_t)(at - lc) : 0;
	size_t b = conf_local_base_len(c, lc, llen);
	if (!at || lc[0] == '"' || b == 0 || b == llen)
		return false;
	snprintf(base, sizeof(base), "%.*s%s", (int)b, lc, at);
	return owns(c, ulc, base);
}

const struct conf_route *conf_find_route(const struct tern_config *c, const char *domain)
{
	if (!c)
		return NULL;
	for (size_t i = 0; domain && i < c->n_routes; i++)
		if (tern_ascii_ieq(c->routes[i].domain, domain))
			return &c->routes[i];
	return c->relayhost;
}

/* ---- warnings ------------------------------------------------------------ */

static const char warn_submission[] =
    "no TLS on this listener (no certificate in tls { }, or tls = \"none\"), so AUTH is "
    "never offered here (it needs TLS) and, as MAIL needs AUTH on a submission listener, "
    "nobody can send through it: set tls.cert_file and tls.key_file, tls.certificates or "
    "tls.self_signed (or auth.allow_plaintext for development)";

static const char warn_plaintext[] =
    "AUTH is offered without TLS: passwords and tokens cross the network in clear and can "
    "be read by anyone on the path; for development only";

static size_t warn_route(const struct conf_route *r, const char *name,
                         void (*fn)(const char *, const char *, void *), void *arg)
{
	char key[336], text[512]; /* the caller's name (< 320 bytes) + ".tls" */
	if (r->tls != CONF_TLS_REQUIRE)
		return 0;
	snprintf(key, sizeof(key), "%s.tls", name);
	snprintf(text, sizeof(text),
	         "\"require\"%s makes the connection encrypted but the server's certificate is "
	         "not verified (no CA or host name check), so an attacker in the middle is not "
	         "stopped%s",
	         r->implicit_tls ? " (what smtps:// means)" : "",
	         r->auth_user ? ", and the password in auth_password_file would go to it" : "");
	fn(key, text, arg);
	return 1;
}

size_t conf_warnings(const struct tern_config *c,
                     void (*fn)(const char *key, const char *text, void *arg), void *arg)
{
	size_t n = 0;
	char key[320];
	if (!c || !fn)
		return 0;
	bool submission = false;
	for (size_t i = 0; i < c->n_listeners; i++) {
		if (strcmp(c->listeners[i].profile, "submission") != 0)
			continue;
		submission = true;
		if (c->listeners[i].tls != CONF_LISTEN_TLS_NONE || c->auth.allow_plaintext)
			continue;
		snprintf(key, sizeof(key), "listen.%s.profile", c->listeners[i].name);
		fn(key, warn_submission, arg);
		n++;
	}
	if (c->auth.allow_plaintext && submission) {
		fn("auth.allow_plaintext", warn_plaintext, arg);
		n++;
	}
	for (size_t i = 0; i < c->n_listeners; i++) {
		const char *a = c->listeners[i].address;
		if (strcmp(c->listeners[i].profile, "http") != 0 ||
		    c->listeners[i].tls == CONF_LISTEN_TLS_IMPLICIT || strncmp(a, "127.", 4) == 0 ||
		    strncmp(a, "[::1]:", 6) == 0)
			continue;
		snprintf(key, sizeof(key), "listen.%s.address", c->listeners[i].name);
		fn(key,
		   "the HTTP API has no TLS on this listener: API keys and mail cross the network "
		   "in clear on this address; set tls = \"implicit\" (HTTPS) or keep it on "
		   "loopback",
		   arg);
		n++;
	}
	for (size_t i = 0; i < c->n_listeners; i++) {
		const char *prof = c->listeners[i].profile;
		if (c->listeners[i].n_milters == 0 || strcmp(prof, "mx") == 0 ||
		    strcmp(prof, "submission") == 0)
			continue;
		snprintf(key, sizeof(key), "listen.%s.milters", c->listeners[i].name);
		fn(key, "only mx and submission listeners receive mail: these milters are never asked",
		   arg);
		n++;
	}
	for (size_t i = 0; i < c->n_routes; i++) {
		snprintf(key, sizeof(key), "routes.\"%s\"", c->routes[i].domain);
		n += warn_route(&c->routes[i], key, fn, arg);
	}
	if (c->relayhost)
		n += warn_route(c->relayhost, "relayhost", fn, arg);
	for (size_t i = 0; i < c->n_relay_networks; i++) {
		const struct conf_cidr *net = &c->relay_networks[i];
		char ip[INET6_ADDRSTRLEN], text[400];
		if (!conf_cidr_too_wide(net))
			continue;
		if (!inet_ntop(net->family, net->addr, ip, sizeof(ip)))
			tern_strlcpy(ip, "?", sizeof(ip));
		snprintf(text, sizeof(text),
		         "OPEN RELAY: %s/%u covers %s; every client in it may send mail to any "
		         "domain through this server. List only your own networks",
		         ip, net->prefix,
		         net->prefix == 0 ? "the whole internet" : "a large part of the internet");
		fn("relay.networks", text, arg);
		n++;
	}
	const struct conf_dmarc_reports *dr = &c->dmarc.reports;
	const char *at = dr->inbox ? strrchr(dr->inbox, '@') : NULL;
	if (at && !conf_is_local_domain(c, at + 1, strlen(at + 1))) {
		fn("dmarc.reports.inbox",
		   "not in local_domains: mail to it is relayed, never delivered here, so no "
		   "aggregate report is read",
		   arg);
		n++;
	}
	if (dr->from && c->auth_checks.dmarc == CONF_DMARC_OFF) {
		fn("dmarc.reports.from",
		   "auth_checks.dmarc is off: nothing is evaluated, so no report is ever sent", arg);
		n++;
	}
	return n;
}

static void warning_line(const char *key, const char *text, void *arg)
{
	FILE *out = arg;
	if (out) {
		fprintf(out, "tern: warning: %s: %s\n", key, text);
	} else {
		char q[768];
		log_warn("event=config_warning key=%s detail=%s", key,
		         log_quote(text, strlen(text), q, sizeof(q)));
	}
}

void conf_report_warnings(const struct tern_config *c, FILE *out)
{
	conf_warnings(c, warning_line, out);
}

/* ---- printing ------------------------------------------------------------ */

static void print_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch == '\n')
			fputs("\\n", f);
		else if (ch == '\t')
			fputs("\\t", f);
		else if (ch < 0x20 || ch == 0x7f)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static void print_size(FILE *f, uint64_t v)
{
	static const char units[] = "gmk";
	for (int i = 0; i < 3; i++) {
		uint64_t m = 1ull << (10 * (3 - i));
		if (v != 0 && v % m == 0) {
			fprintf(f, "%llu%c", (unsigned long long)(v / m), units[i]);
			return;
		}
	}
	fprintf(f, "%llu", (unsigned long long)v);
}

static void print_list(FILE *f, char *const *v, size_t n)
{
	fputc('[', f);
	for (size_t i = 0; i < n; i++) {
		if (i)
			fputs(", ", f);
		print_str(f, v[i]);
	}
	fputc(']', f);
}

/* The keys of a route; never a password, only where it is kept. */
static void print_route(FILE *f, const struct conf_route *r, const char *indent)
{
	bool v6 = strchr(r->host, ':') != NULL;
	fprintf(f, "%svia = \"%s://%s%s%s:%u\";\n", indent, r->implicit_tls ? "smtps" : "smtp",
	        v6 ? "[" : "", r->host, v6 ? "]" : "", (unsigned)r->port);
	fprintf(f, "%stls = \"%s\";\n", indent, tls_names[r->tls]);
	if (r->auth_user) {
		fprintf(f, "%sauth_user = ", indent);
		print_str(f, r->auth_user);
		fprintf(f, ";\n%sauth_password_file = ", indent);
		print_str(f, r->auth_password_file);
		fputs(";\n", f);
	}
}

/* shaping { }, pools { } and pool_select { }: only what is set (the built-in
 * provider limits are not settings; deliver/shaping.c has them). */
static void print_shape(FILE *f, const struct conf_shape *sh)
{
	if (sh->connections)
		fprintf(f, " connections = %u;", (unsigned)sh->connections);
	if (sh->per_connection)
		fprintf(f, " per_connection = %u;", (unsigned)sh->per_connection);
	if (sh->per_minute)
		fprintf(f, " per_minute = %u;", (unsigned)sh->per_minute);
}

static void print_rules(FILE *f, const char *name, const struct conf_pool_rule *r, size_t n)
{
	fprintf(f, "\t%s {\n", name);
	for (size_t i = 0; i < n; i++) {
		fputs("\t\t", f);
		print_str(f, r[i].key);
		fputs(" = ", f);
		print_str(f, r[i].pool);
		fputs(";\n", f);
	}
	fputs("\t}\n", f);
}

static void print_shaping(FILE *f, const struct conf_shaping *sh)
{
	fprintf(f, "shaping {\n\tbackoff = %u;\n", (unsigned)sh->backoff);
	for (size_t i = 0; i < sh->n_shapes; i++) {
		fputc('\t', f);
		print_str(f, sh->shapes[i].domain);
		fputs(" {", f);
		print_shape(f, &sh->shapes[i]);
		fputs(" }\n", f);
	}
	fputs("\tdefault {", f);
	print_shape(f, &sh->dflt);
	fputs(" }\n}\npools {\n", f);
	for (size_t i = 0; i < sh->n_pools; i++) {
		const struct conf_pool *p = &sh->pools[i];
		fprintf(f, "\t%s {\n\t\taddresses = ", p->name);
		print_list(f, p->addrs, p->n_addrs);
		fputs(";\n\t\tehlo {\n", f);
		for (size_t k = 0; k < p->n_addrs; k++) {
			if (!p->ehlo[k])
				continue;
			fputs("\t\t\t", f);
			print_str(f, p->addrs[k]);
			fputs(" = ", f);
			print_str(f, p->ehlo[k]);
			fputs(";\n", f);
		}
		fputs("\t\t}\n", f);
		if (p->warmup_start)
			fprintf(f, "\t\twarmup { start = %u; growth = %g; }\n",
			        (unsigned)p->warmup_start, p->warmup_growth);
		fputs("\t}\n", f);
	}
	fputs("}\npool_select {\n", f);
	print_rules(f, "keys", sh->sel_keys, sh->n_sel_keys);
	print_rules(f, "domains", sh->sel_domains, sh->n_sel_domains);
	print_rules(f, "tags", sh->sel_tags, sh->n_sel_tags);
	if (sh->sel_default) {
		fputs("\tdefault = ", f);
		print_str(f, sh->sel_default);
		fputs(";\n", f);
	}
	fputs("}\n", f);
}

void conf_print(const struct tern_config *c, FILE *out)
{
	if (!c || !out)
		return;
	fputs("# tern configuration: every key with its effective value\n", out);
	fputs("hostname = ", out);
	print_str(out, c->hostname);
	fputs(";\ndata_dir = ", out);
	print_str(out, c->data_dir);
	fputs(";\nusers_file = ", out);
	print_str(out, c->users_file);
	fputs(";\nuser = ", out);
	print_str(out, c->user);
	fputs(";\nlog_level = ", out);
	print_str(out, c->log_level);
	fprintf(out, ";\nworkers = %u;\n", (unsigned)c->workers);
	fprintf(out, "vrfy = %s;\n", c->vrfy ? "true" : "false");
	fprintf(out, "expn = %s;\n", c->expn ? "true" : "false");
	fputs("recipient_delimiter = ", out);
	print_str(out, c->recipient_delimiter);
	fputs(";\n", out);
	fputs("local_domains = ", out);
	print_list(out, c->local_domains, c->n_local_domains);
	fputs(";\naliases {\n", out);
	for (size_t i = 0; i < c->n_aliases; i++) {
		fputc('\t', out);
		print_str(out, c->aliases[i].from);
		fputs(" = ", out);
		print_list(out, c->aliases[i].to, c->aliases[i].n_to);
		fputs(";\n", out);
	}
	fputs("}\nsenders {\n", out);
	for (size_t i = 0; i < c->n_senders; i++) {
		fputc('\t', out);
		print_str(out, c->senders[i].from);
		fputs(" = ", out);
		print_list(out, c->senders[i].to, c->senders[i].n_to);
		fputs(";\n", out);
	}
	fputs("}\nrelay {\n\tnetworks = [", out);
	for (size_t i = 0; i < c->n_relay_networks; i++) {
		const struct conf_cidr *n = &c->relay_networks[i];
		char ip[INET6_ADDRSTRLEN];
		if (!inet_ntop(n->family, n->addr, ip, sizeof(ip)))
			tern_strlcpy(ip, "?", sizeof(ip));
		fprintf(out, "%s\"%s/%u\"", i ? ", " : "", ip, n->prefix);
	}
	fputs("];\n}\n", out);
	print_auth(out, &c->auth);
	fputs("limits {\n", out);
	for (size_t i = 0; i < N_LIMITS; i++) {
		const struct limit_spec *ls = &limit_specs[i];
		const char *field = (const char *)&c->limits + ls->off;
		uint64_t v = 0;
		if (ls->wide) {
			memcpy(&v, field, sizeof(v));
		} else {
			uint32_t v32;
			memcpy(&v32, field, sizeof(v32));
			v = v32;
		}
		fprintf(out, "\t%s = ", ls->name);
		if (ls->wide) /* message sizes read best as 32m; line lengths as 2048 */
			print_size(out, v);
		else
			fprintf(out, "%llu%s", (unsigned long long)v,
			        ls->kind == NK_TIME ? "s" : "");
		fputs(";\n", out);
	}
	fputs("}\nlisten {\n", out);
	for (size_t i = 0; i < c->n_listeners; i++) {
		const struct conf_listener *l = &c->listeners[i];
		fputc('\t', out);
		print_str(out, l->name);
		fputs(" {\n\t\taddress = ", out);
		print_str(out, l->address);
		fputs(";\n\t\tprofile = ", out);
		print_str(out, l->profile);
		fprintf(out, ";\n\t\ttls = \"%s\"", listen_tls_names[l->tls]);
		if (l->n_milters) {
			static const char *const acts[] = {"tempfail", "accept", "reject"};
			fputs(";\n\t\tmilters = [", out);
			for (size_t j = 0; j < l->n_milters; j++) {
				fputs(j ? ", " : "", out);
				print_str(out, l->milters[j]);
			}
			fputs("];\n\t\tmilter_default_action = ", out);
			print_str(out, acts[l->milter_default_action]);
			fprintf(out, ";\n\t\tmilter_timeout = %us;\n\t\tmilter_eom_timeout = %us",
			        l->milter_timeout, l->milter_eom_timeout);
		}
		fputs(";\n\t}\n", out);
	}
	fputs("}\nroutes {\n", out);
	for (size_t i = 0; i < c->n_routes; i++) {
		fputc('\t', out);
		print_str(out, c->routes[i].domain);
		fputs(" {\n", out);
		print_route(out, &c->routes[i], "\t\t");
		fputs("\t}\n", out);
	}
	fputs("}\n", out);
	if (c->relayhost) {
		fputs("relayhost {\n", out);
		print_route(out, c->relayhost, "\t");
		fputs("}\n", out);
	} else {
		fputs("# no relayhost: mail for other domains goes to their MX hosts\n", out);
	}
	fputs("delivery {\n", out);
	for (size_t i = 0; i < N_DELIVERY; i++) {
		const struct delivery_spec *ds = &delivery_specs[i];
		fprintf(out, "\t%s = %llu%s;\n", ds->name,
		        (unsigned long long)delivery_get(&c->delivery, ds),
		        ds->kind == NK_TIME ? "s" : "");
	}
	if (c->delivery.ca_file) {
		fputs("\tca_file = ", out);
		print_str(out, c->delivery.ca_file);
		fputs(";\n", out);
	} else {
		fputs("\t# no ca_file: outbound verification uses the system trust store\n", out);
	}
	fprintf(out, "\tdane = %s;\n", c->delivery.dane ? "true" : "false");
	fprintf(out, "\tmta_sts = %s;\n", c->delivery.mta_sts ? "true" : "false");
	fprintf(out, "\tchunking = %s;\n", c->delivery.chunking ? "true" : "false");
	fprintf(out, "\tpipeline_next = %s;\n", c->delivery.pipeline_next ? "true" : "false");
	fputs("}\nmailbox {\n\tquota = ", out);
	print_size(out, c->mailbox.quota);
	fputs(";\n}\ndns {\n\tforward = ", out);
	print_list(out, c->dns.forward, c->dns.n_forward);
	fputs(";\n", out);
	if (c->dns.trust_anchor_file) {
		fputs("\ttrust_anchor_file = ", out);
		print_str(out, c->dns.trust_anchor_file);
		fputs(";\n", out);
	} else {
		fputs("\t# no trust_anchor_file: answers are not DNSSEC-validated\n", out);
	}
	fprintf(out, "}\ncapture {\n\tmax_messages = %llu;\n\tmax_age = %us;\n",
	        (unsigned long long)c->capture.max_messages, (unsigned)c->capture.max_age);
	fputs("\thttp_allowed_hosts = ", out);
	print_list(out, c->capture.http_allowed_hosts, c->capture.n_http_allowed_hosts);
	fputs(";\n\thttp_max_body = ", out);
	print_size(out, c->capture.http_max_body);
	fprintf(out, ";\n\thttp_max_connections = %u;\n",
	        (unsigned)c->capture.http_max_connections);
	if (c->capture.spam_check && c->capture.spam_check[0]) {
		fputs("\tspam_check = ", out);
		print_str(out, c->capture.spam_check);
		fputs(";\n", out);
	}
	fputs("}\n", out);
	fprintf(out, "dkim {\n\tcanonicalization = \"%s/%s\";\n\tsign_relayed = %s;\n\tkeys = [",
	        c->dkim.header_relaxed ? "relaxed" : "simple",
	        c->dkim.body_relaxed ? "relaxed" : "simple",
	        c->dkim.sign_relayed ? "true" : "false");
	for (size_t i = 0; i < c->dkim.n_keys; i++) {
		fputs(i ? ",\n\t\t{ domain = " : "\n\t\t{ domain = ", out);
		print_str(out, c->dkim.keys[i].domain);
		fputs("; selector = ", out);
		print_str(out, c->dkim.keys[i].selector);
		fputs("; key_file = ", out);
		print_str(out, c->dkim.keys[i].key_file);
		fputs("; }", out);
	}
	fputs(c->dkim.n_keys ? "\n\t];\n}\n" : "];\n}\n", out);
	fprintf(out, "tls {\n\tself_signed = %s;\n", c->tls.self_signed ? "true" : "false");
	if (c->tls.self_signed) /* the generated pair is not a setting */
		fputs("\t# certificate: DATA_DIR/tls/selfsigned-cert.pem (made by tern)\n", out);
	fputs("\tcertificates = [", out);
	for (size_t i = 0; !c->tls.self_signed && i < c->tls.n_certs; i++) {
		fputs("\n\t\t{ cert_file = ", out);
		print_str(out, c->tls.certs[i].cert_file);
		fputs("; key_file = ", out);
		print_str(out, c->tls.certs[i].key_file);
		fputs("; },", out);
	}
	fputs(c->tls.n_certs && !c->tls.self_signed ? "\n\t];\n}\n" : "];\n}\n", out);
	print_policy(out, &c->policy);
	print_auth_checks(out, &c->auth_checks);
	print_dmarc(out, &c->dmarc);
	print_arc(out, &c->arc);
	print_metrics(out, &c->metrics);
	print_suppression(out, &c->suppression);
	print_tracking(out, &c->tracking);
	print_shaping(out, &c->shaping);
	print_quotas(out, "quotas", c->quotas, c->n_quotas);
	print_quotas(out, "submission_quotas", c->sub_quotas, c->n_sub_quotas);
	fprintf(out,
	        "webhooks {\n\tretry_base = %us;\n\tretry_max = %us;\n\tretry_window = %us;\n"
	        "\ttimeout = %us;\n}\nevents {\n\tenabled = %s;\n\tretention = %us;\n}\n",
	        (unsigned)c->webhooks.retry_base, (unsigned)c->webhooks.retry_max,
	        (unsigned)c->webhooks.retry_window, (unsigned)c->webhooks.timeout,
	        c->events.enabled ? "true" : "false", (unsigned)c->events.retention);
	fprintf(out, "archive {\n\tenabled = %s;\n\tretention = %us;\n\tinclude = [%s%s%s];\n}\n",
	        c->archive.enabled ? "true" : "false", (unsigned)c->archive.retention,
	        c->archive.inbound ? "\"inbound\"" : "",
	        c->archive.inbound && c->archive.outbound ? ", " : "",
	        c->archive.outbound ? "\"outbound\"" : "");
}
