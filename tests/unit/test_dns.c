/*
 * test_dns.c — src/dns: the pure rdata decoders (table-driven, wire bytes
 * in, C values out) and the resolver against a real unbound started here on
 * a free loopback port with static local zones, so every status a caller
 * acts on (OK with data, NODATA, NXDOMAIN, TEMPFAIL) is seen end to end.
 *
 * The resolver tests are hermetic: the unbound config lives in a temp dir,
 * nothing leaves 127.0.0.1, and only the unbound started here is killed (by
 * its PID). They are skipped when /usr/sbin/unbound (or $TERN_UNBOUND) is
 * missing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"
#include "dns/dns.h"

/* TERN_UNBOUND overrides, as in the integration harness */
static const char *unbound_bin(void)
{
	const char *e = getenv("TERN_UNBOUND");
	return e && *e ? e : "/usr/sbin/unbound";
}

/* ======================================================= rdata decoders */

#define B(...) ((const uint8_t[]){__VA_ARGS__}), sizeof((const uint8_t[]){__VA_ARGS__})

struct name_case {
	const char *what;
	const uint8_t *wire;
	size_t len;
	bool ok;
	const char *want;
	size_t used;
};

static void test_parse_name_table(void **state)
{
	const struct name_case cases[] = {
	    {"root is the empty name", B(0), true, "", 1},
	    {"plain name",
	     B(3, 'm', 'x', '1', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0), true,
	     "mx1.example.com", 17},
	    {"uppercase comes out lowercase",
	     B(3, 'M', 'X', '1', 7, 'E', 'x', 'A', 'm', 'P', 'l', 'E', 0), true, "mx1.example", 13},
	    {"dot inside a label is escaped", B(3, 'a', '.', 'b', 1, 'c', 0), true, "a\\.b.c", 7},
	    {"backslash inside a label is escaped", B(2, 'a', '\\', 0), true, "a\\\\", 4},
	    {"space and control bytes become \\DDD", B(3, ' ', 0x01, 0xff, 0), true,
	     "\\032\\001\\255", 5},
	    {"bytes after the name are not consumed", B(1, 'a', 0, 0xde, 0xad), true, "a", 3},
	    {"compression pointer is rejected", B(0xc0, 0x0c), false, "", 0},
	    {"pointer after a label is rejected", B(1, 'a', 0xc0, 0x00), false, "", 0},
	    {"extended label type 0x40 is rejected", B(0x41, 'a', 0), false, "", 0},
	    {"label type 0x80 is rejected", B(0x81, 'a', 0), false, "", 0},
	    {"empty input is truncated", NULL, 0, false, "", 0},
	    {"missing root label", B(1, 'a'), false, "", 0},
	    {"label longer than the input", B(5, 'a', 'b', 0), false, "", 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct name_case *c = &cases[i];
		char out[DNS_NAME_MAX + 1];
		size_t used = 99;
		uint8_t empty = 0;
		bool ok =
		    dns_parse_name(c->wire ? c->wire : &empty, c->len, out, sizeof(out), &used);
		if (ok != c->ok)
			fail_msg("%s: ok=%d, want %d", c->what, ok, c->ok);
		assert_string_equal(out, c->want);
		if (ok && used != c->used)
			fail_msg("%s: used=%zu, want %zu", c->what, used, c->used);
	}
}

static void test_parse_name_length_limits(void **state)
{
	uint8_t wire[300];
	char out[DNS_NAME_MAX + 1];
	size_t used;

	/* four 63-byte labels: 4 * 64 + 1 = 257 wire octets > 255 */
	size_t o = 0;
	for (int l = 0; l < 4; l++) {
		wire[o++] = 63;
		memset(wire + o, 'a', 63);
		o += 63;
	}
	wire[o++] = 0;
	assert_false(dns_parse_name(wire, o, out, sizeof(out), &used));

	/* 3 * 64 + 62 + 1 = 255 octets exactly: the longest legal name */
	o = 0;
	for (int l = 0; l < 3; l++) {
		wire[o++] = 63;
		memset(wire + o, 'b', 63);
		o += 63;
	}
	wire[o++] = 61;
	memset(wire + o, 'c', 61);
	o += 61;
	wire[o++] = 0;
	assert_int_equal(o, 255);
	assert_true(dns_parse_name(wire, o, out, sizeof(out), &used));
	assert_int_equal(used, 255);
	assert_int_equal(strlen(out), 253);

	/* a legal name whose escaped form does not fit the buffer */
	uint8_t esc[] = {4, 1, 2, 3, 4, 0};
	char small[8];
	assert_false(dns_parse_name(esc, sizeof(esc), small, sizeof(small), &used));
	assert_string_equal(small, "");
	char fits[17];
	assert_true(dns_parse_name(esc, sizeof(esc), fits, sizeof(fits), &used));
	assert_string_equal(fits, "\\001\\002\\003\\004");
	/* used may be NULL */
	assert_true(dns_parse_name(esc, sizeof(esc), fits, sizeof(fits), NULL));
}

struct mx_case {
	const char *what;
	const uint8_t *wire;
	size_t len;
	bool ok;
	uint16_t pref;
	const char *host;
};

static void test_parse_mx_table(void **state)
{
	const struct mx_case cases[] = {
	    {"preference and host", B(0, 10, 2, 'm', 'x', 4, 't', 'e', 's', 't', 0), true, 10,
	     "mx.test"},
	    {"big-endian preference", B(0x01, 0x02, 1, 'a', 0), true, 258, "a"},
	    {"null MX (RFC 7505) is the empty host", B(0, 0, 0), true, 0, ""},
	    {"host is lowercased", B(0xff, 0xff, 2, 'M', 'X', 0), true, 65535, "mx"},
	    {"compressed host is rejected", B(0, 10, 0xc0, 0x0c), false, 0, ""},
	    {"trailing bytes are rejected", B(0, 10, 0, 0), false, 0, ""},
	    {"truncated host", B(0, 10, 3, 'a', 'b'), false, 0, ""},
	    {"only a preference", B(0, 10), false, 0, ""},
	    {"one byte", B(0), false, 0, ""},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct mx_case *c = &cases[i];
		struct dns_mx mx;
		memset(&mx, 0x5a, sizeof(mx));
		bool ok = dns_parse_mx(c->wire, c->len, &mx);
		if (ok != c->ok)
			fail_msg("%s: ok=%d, want %d", c->what, ok, c->ok);
		if (ok) {
			assert_int_equal(mx.preference, c->pref);
			assert_string_equal(mx.host, c->host);
		}
	}
	struct dns_mx mx;
	assert_false(dns_parse_mx(NULL, 0, &mx));
}

struct txt_case {
	const char *what;
	const uint8_t *wire;
	size_t len;
	bool ok;
	const char *want;
};

static void test_parse_txt_table(void **state)
{
	const struct txt_case cases[] = {
	    {"one string", B(3, 'a', 'b', 'c'), true, "abc"},
	    {"several strings are concatenated",
	     B(7, 'v', '=', 's', 'p', 'f', '1', ' ', 4, '-', 'a', 'l', 'l'), true, "v=spf1 -all"},
	    {"an empty string", B(0), true, ""},
	    {"empty strings between others", B(0, 1, 'x', 0, 1, 'y', 0), true, "xy"},
	    {"case is kept", B(2, 'A', 'b'), true, "Ab"},
	    {"a 255-byte string", NULL, 0, true, NULL}, /* built below */
	    {"string longer than the rdata", B(4, 'a', 'b'), false, NULL},
	    {"second string truncated", B(1, 'a', 2, 'b'), false, NULL},
	    {"embedded NUL would cut the text short", B(3, 'a', 0, 'b'), false, NULL},
	    {"no strings at all", B(1, 'z') /* len set to 0 below */, false, NULL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct txt_case *c = &cases[i];
		uint8_t big[256];
		const uint8_t *wire = c->wire;
		size_t len = c->len;
		if (!wire) {
			big[0] = 255;
			memset(big + 1, 'q', 255);
			wire = big;
			len = sizeof(big);
		}
		if (strcmp(c->what, "no strings at all") == 0)
			len = 0;
		char *out = (char *)1;
		bool ok = dns_parse_txt(wire, len, &out);
		if (ok != c->ok)
			fail_msg("%s: ok=%d, want %d", c->what, ok, c->ok);
		if (!ok) {
			assert_null(out);
			continue;
		}
		if (c->want)
			assert_string_equal(out, c->want);
		else
			assert_int_equal(strlen(out), 255);
		free(out);
	}
}

static void test_parse_tlsa_table(void **state)
{
	struct dns_tlsa t;
	const uint8_t full[] = {3, 1, 1, 0xde, 0xad, 0xbe, 0xef};
	assert_true(dns_parse_tlsa(full, sizeof(full), &t));
	assert_int_equal(t.usage, 3);
	assert_int_equal(t.selector, 1);
	assert_int_equal(t.mtype, 1);
	assert_int_equal(t.len, 4);
	assert_memory_equal(t.data, full + 3, 4);
	free(t.data);

	/* no association data: accepted, nothing allocated */
	const uint8_t bare[] = {2, 0, 0};
	assert_true(dns_parse_tlsa(bare, sizeof(bare), &t));
	assert_int_equal(t.usage, 2);
	assert_int_equal(t.len, 0);
	assert_null(t.data);

	const uint8_t shortr[] = {3, 1};
	assert_false(dns_parse_tlsa(shortr, sizeof(shortr), &t));
	assert_null(t.data);
	assert_false(dns_parse_tlsa(shortr, 0, &t));
}

static void test_ptr_names(void **state)
{
	struct {
		int family;
		const char *addr;
		const char *want;
	} cases[] = {
	    {AF_INET, "192.0.2.1", "1.2.0.192.in-addr.arpa"},
	    {AF_INET, "255.0.10.9", "9.10.0.255.in-addr.arpa"},
	    {AF_INET6, "2001:db8::567:89ab",
	     "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"},
	    {AF_INET6, "::1",
	     "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		unsigned char a[16];
		char out[DNS_NAME_MAX + 1];
		assert_int_equal(inet_pton(cases[i].family, cases[i].addr, a), 1);
		assert_true(dns_ptr_name(cases[i].family, a, out, sizeof(out)));
		assert_string_equal(out, cases[i].want);
	}
	unsigned char a4[4] = {192, 0, 2, 1};
	char small[10];
	assert_false(dns_ptr_name(AF_INET, a4, small, sizeof(small)));
	assert_string_equal(small, "");
	char exact[sizeof("1.2.0.192.in-addr.arpa")];
	assert_true(dns_ptr_name(AF_INET, a4, exact, sizeof(exact)));
	assert_false(dns_ptr_name(AF_UNIX, a4, exact, sizeof(exact)));
}

static void test_status_names(void **state)
{
	assert_string_equal(dns_status_name(DNS_OK), "ok");
	assert_string_equal(dns_status_name(DNS_NODATA), "nodata");
	assert_string_equal(dns_status_name(DNS_NXDOMAIN), "nxdomain");
	assert_string_equal(dns_status_name(DNS_TEMPFAIL), "tempfail");
	assert_string_equal(dns_status_name(DNS_ERROR), "error");
	assert_string_equal(dns_status_name((enum dns_status)42), "unknown");
}

static void test_result_free_leaves_empty_result(void **state)
{
	struct dns_result r;
	memset(&r, 0, sizeof(r));
	r.rrtype = DNS_TXT;
	r.n = 2;
	r.txt = calloc(2, sizeof(char *));
	r.txt[0] = strdup("a");
	r.txt[1] = strdup("b");
	r.why_bogus = strdup("x");
	dns_result_free(&r);
	assert_int_equal(r.n, 0);
	assert_null(r.txt);
	assert_null(r.why_bogus);
	dns_result_free(&r); /* twice is harmless */
	dns_result_free(NULL);

	memset(&r, 0, sizeof(r));
	r.rrtype = DNS_TLSA;
	r.n = 1;
	r.tlsa = calloc(1, sizeof(*r.tlsa));
	r.tlsa[0].data = malloc(3);
	r.tlsa[0].len = 3;
	dns_result_free(&r);
	assert_null(r.tlsa);
}

/* ======================================================= a real unbound */

struct server {
	char dir[256];
	int port;
	pid_t pid;
};

static struct server srv = {.pid = -1};

/* A port nothing listens on right now, UDP and TCP alike. */
static int free_port(void)
{
	for (int tries = 0; tries < 50; tries++) {
		int u = socket(AF_INET, SOCK_DGRAM, 0);
		assert_true(u >= 0);
		struct sockaddr_in sa = {.sin_family = AF_INET};
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		socklen_t sl = sizeof(sa);
		assert_int_equal(bind(u, (struct sockaddr *)&sa, sizeof(sa)), 0);
		assert_int_equal(getsockname(u, (struct sockaddr *)&sa, &sl), 0);
		int t = socket(AF_INET, SOCK_STREAM, 0);
		assert_true(t >= 0);
		int ok = bind(t, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		close(t);
		close(u);
		if (ok)
			return ntohs(sa.sin_port);
	}
	fail_msg("no free port");
	return -1;
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_true(fputs(text, f) >= 0);
	assert_int_equal(fclose(f), 0);
}

/* Sends one A query for "example.test." and waits up to 200 ms for any
 * answer: true once unbound is serving. */
static bool server_answers(int port)
{
	static const uint8_t q[] = {0x12, 0x34, 0x01, 0x00, 0,   1,   0,   0,   0,   0,
	                            0,    0,    7,    'e',  'x', 'a', 'm', 'p', 'l', 'e',
	                            4,    't',  'e',  's',  't', 0,   0,   1,   0,   1};
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	assert_true(s >= 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	bool ok = false;
	if (sendto(s, q, sizeof(q), 0, (struct sockaddr *)&sa, sizeof(sa)) == (ssize_t)sizeof(q)) {
		struct pollfd p = {.fd = s, .events = POLLIN};
		uint8_t buf[512];
		if (poll(&p, 1, 200) == 1 && recv(s, buf, sizeof(buf), 0) >= 12 && buf[0] == 0x12 &&
		    buf[1] == 0x34)
			ok = true;
	}
	close(s);
	return ok;
}

static const char unbound_conf_fmt[] =
    "server:\n"
    "  interface: 127.0.0.1\n"
    "  port: %d\n"
    "  do-ip6: no\n"
    "  do-not-query-localhost: no\n"
    "  chroot: \"\"\n"
    "  username: \"\"\n"
    "  directory: \"%s\"\n"
    "  pidfile: \"%s/unbound.pid\"\n"
    "  use-syslog: no\n"
    "  logfile: \"%s/unbound.log\"\n"
    "  verbosity: 1\n"
    "  num-threads: 1\n"
    "  module-config: \"iterator\"\n"
    "  rrset-roundrobin: no\n"
    "  local-zone: \"example.test.\" static\n"
    "  local-data: \"example.test. 300 IN MX 20 mx2.example.test.\"\n"
    "  local-data: \"example.test. 300 IN MX 10 mx1.example.test.\"\n"
    "  local-data: \"example.test. 300 IN MX 10 MX1B.Example.TEST.\"\n"
    "  local-data: \"example.test. 300 IN A 192.0.2.1\"\n"
    "  local-data: \"example.test. 300 IN AAAA 2001:db8::1\"\n"
    "  local-data: 'example.test. 300 IN TXT \"v=spf1 \" \"\" \"-all\"'\n"
    "  local-data: 'example.test. 300 IN TXT \"second record\"'\n"
    "  local-data: \"mx1.example.test. 300 IN A 127.0.0.2\"\n"
    "  local-data: \"mx1.example.test. 300 IN A 127.0.0.3\"\n"
    "  local-data: \"noma.example.test. 300 IN A 127.0.0.4\"\n"
    "  local-data: \"_25._tcp.mx1.example.test. 300 IN TLSA 3 1 1 "
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"\n"
    "  local-zone: \"nullmx.test.\" static\n"
    "  local-data: \"nullmx.test. 300 IN MX 0 .\"\n"
    "  local-data-ptr: \"192.0.2.1 example.test\"\n"
    "  local-data-ptr: \"2001:db8::1 V6.Example.Test\"\n";

static void rm_tree(const char *path)
{
	DIR *d = opendir(path);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		char p[512];
		snprintf(p, sizeof(p), "%s/%s", path, de->d_name);
		unlink(p);
	}
	closedir(d);
	rmdir(path);
}

static void server_stop(void)
{
	if (srv.pid > 0) {
		kill(srv.pid, SIGTERM);
		/* bounded: SIGKILL after 3 s */
		for (int i = 0; i < 300; i++) {
			if (waitpid(srv.pid, NULL, WNOHANG) == srv.pid) {
				srv.pid = -1;
				break;
			}
			usleep(10000);
		}
		if (srv.pid > 0) {
			kill(srv.pid, SIGKILL);
			waitpid(srv.pid, NULL, 0);
			srv.pid = -1;
		}
	}
	if (srv.dir[0]) {
		rm_tree(srv.dir);
		srv.dir[0] = '\0';
	}
}

static int server_setup(void **state)
{
	if (access(unbound_bin(), X_OK) != 0)
		return 0; /* each test skips */
	const char *base = getenv("TMPDIR");
	snprintf(srv.dir, sizeof(srv.dir), "%s/tern-dns-XXXXXX", base ? base : "/tmp");
	if (!mkdtemp(srv.dir))
		return -1;
	srv.port = free_port();
	char conf[4096], path[512];
	snprintf(conf, sizeof(conf), unbound_conf_fmt, srv.port, srv.dir, srv.dir, srv.dir);
	snprintf(path, sizeof(path), "%s/unbound.conf", srv.dir);
	write_file(path, conf);

	srv.pid = fork();
	if (srv.pid < 0)
		return -1;
	if (srv.pid == 0) {
		int nul = open("/dev/null", O_RDWR);
		if (nul >= 0) {
			dup2(nul, 0);
			dup2(nul, 1);
			dup2(nul, 2);
		}
		execl(unbound_bin(), "unbound", "-d", "-c", path, (char *)NULL);
		_exit(127);
	}
	/* bounded wait: up to 10 s for the first answer */
	for (int i = 0; i < 50; i++) {
		if (server_answers(srv.port))
			return 0;
		if (waitpid(srv.pid, NULL, WNOHANG) == srv.pid) {
			srv.pid = -1;
			break;
		}
	}
	fprintf(stderr, "unbound did not start; see %s/unbound.log\n", srv.dir);
	server_stop();
	return -1;
}

static int server_teardown(void **state)
{
	server_stop();
	return 0;
}

#define NEED_SERVER()                                                                              \
	do {                                                                                       \
		if (srv.pid <= 0)                                                                  \
			skip();                                                                    \
	} while (0)

/* ---- running queries on a loop ------------------------------------------ */

struct got {
	bool done;
	int calls;
	enum dns_status status;
	bool secure, bogus;
	int rrtype;
	char qname[DNS_NAME_MAX + 1];
	size_t n;
	struct dns_mx mx[8];
	struct in_addr a[8];
	struct in6_addr aaaa[8];
	char txt[8][128];
	char ptr[8][DNS_NAME_MAX + 1];
	struct dns_tlsa tlsa[4];
	uint8_t tlsa_data[4][64];
};

struct run {
	struct event_base *base;
	int pending;
};

static struct run *cur_run;

static void record(void *arg, const struct dns_result *r)
{
	struct got *g = arg;
	g->calls++;
	g->done = true;
	g->status = r->status;
	g->secure = r->secure;
	g->bogus = r->bogus;
	g->rrtype = r->rrtype;
	snprintf(g->qname, sizeof(g->qname), "%s", r->qname);
	g->n = r->n;
	for (size_t i = 0; i < r->n && i < 8; i++) {
		switch (r->rrtype) {
		case DNS_MX:
			g->mx[i] = r->mx[i];
			break;
		case DNS_A:
			g->a[i] = r->a[i];
			break;
		case DNS_AAAA:
			g->aaaa[i] = r->aaaa[i];
			break;
		case DNS_TXT:
			snprintf(g->txt[i], sizeof(g->txt[i]), "%s", r->txt[i]);
			break;
		case DNS_PTR:
			snprintf(g->ptr[i], sizeof(g->ptr[i]), "%s", r->ptr[i]);
			break;
		case DNS_TLSA:
			if (i < 4) {
				g->tlsa[i] = r->tlsa[i];
				size_t l = r->tlsa[i].len < 64 ? r->tlsa[i].len : 64;
				memcpy(g->tlsa_data[i], r->tlsa[i].data, l);
				g->tlsa[i].data = g->tlsa_data[i];
			}
			break;
		}
	}
	if (cur_run && --cur_run->pending == 0)
		event_base_loopbreak(cur_run->base);
}

/* Runs base until run->pending reaches 0 or limit_ms passes. */
static void run_loop(struct run *run, int limit_ms)
{
	struct timeval tv = {limit_ms / 1000, (limit_ms % 1000) * 1000};
	cur_run = run;
	if (run->pending > 0) {
		event_base_loopexit(run->base, &tv);
		event_base_dispatch(run->base);
	}
	cur_run = NULL;
}

static struct dns_resolver *resolver_for_port(struct event_base *base, int port)
{
	char fwd[64], err[256];
	snprintf(fwd, sizeof(fwd), "127.0.0.1@%d", port);
	const char *fw[] = {fwd};
	struct dns_resolver *res = dns_resolver_new(base, fw, 1, NULL, err, sizeof(err));
	if (!res)
		fail_msg("dns_resolver_new: %s", err);
	return res;
}

static void start(struct dns_resolver *res, struct run *run, const char *name, int type,
                  struct got *g)
{
	memset(g, 0, sizeof(*g));
	int id = dns_query(res, name, type, record, g);
	if (id <= 0)
		fail_msg("dns_query(%s): %d", name, id);
	/* the contract: never from inside dns_query */
	assert_false(g->done);
	run->pending++;
}

static void test_resolver_answers_each_type(void **state)
{
	NEED_SERVER();
	struct event_base *base = event_base_new();
	struct dns_resolver *res = resolver_for_port(base, srv.port);
	struct run run = {base, 0};
	struct got mx, nullmx, a, aaaa, txt, tlsa, ptr4, ptr6, a2;
	char p4[DNS_NAME_MAX + 1], p6[DNS_NAME_MAX + 1];
	unsigned char v4[4], v6[16];
	assert_int_equal(inet_pton(AF_INET, "192.0.2.1", v4), 1);
	assert_int_equal(inet_pton(AF_INET6, "2001:db8::1", v6), 1);
	assert_true(dns_ptr_name(AF_INET, v4, p4, sizeof(p4)));
	assert_true(dns_ptr_name(AF_INET6, v6, p6, sizeof(p6)));

	start(res, &run, "example.test", DNS_MX, &mx);
	start(res, &run, "nullmx.test", DNS_MX, &nullmx);
	start(res, &run, "Example.Test.", DNS_A, &a);
	start(res, &run, "example.test", DNS_AAAA, &aaaa);
	start(res, &run, "example.test", DNS_TXT, &txt);
	start(res, &run, "_25._tcp.mx1.example.test", DNS_TLSA, &tlsa);
	start(res, &run, p4, DNS_PTR, &ptr4);
	start(res, &run, p6, DNS_PTR, &ptr6);
	start(res, &run, "mx1.example.test", DNS_A, &a2);
	run_loop(&run, 10000);
	assert_int_equal(run.pending, 0);

	/* MX: sorted by preference, hosts lowercase without the dot */
	assert_int_equal(mx.calls, 1);
	assert_int_equal(mx.status, DNS_OK);
	assert_int_equal(mx.rrtype, DNS_MX);
	assert_string_equal(mx.qname, "example.test");
	assert_false(mx.secure);
	assert_false(mx.bogus);
	assert_int_equal(mx.n, 3);
	assert_int_equal(mx.mx[0].preference, 10);
	assert_int_equal(mx.mx[1].preference, 10);
	assert_int_equal(mx.mx[2].preference, 20);
	assert_string_equal(mx.mx[2].host, "mx2.example.test");
	bool one_a = strcmp(mx.mx[0].host, "mx1.example.test") == 0 &&
	             strcmp(mx.mx[1].host, "mx1b.example.test") == 0;
	bool one_b = strcmp(mx.mx[1].host, "mx1.example.test") == 0 &&
	             strcmp(mx.mx[0].host, "mx1b.example.test") == 0;
	assert_true(one_a || one_b);

	/* null MX: one record, preference 0, host "" */
	assert_int_equal(nullmx.status, DNS_OK);
	assert_int_equal(nullmx.n, 1);
	assert_int_equal(nullmx.mx[0].preference, 0);
	assert_string_equal(nullmx.mx[0].host, "");

	assert_int_equal(a.status, DNS_OK);
	assert_string_equal(a.qname, "example.test");
	assert_int_equal(a.n, 1);
	char s[INET6_ADDRSTRLEN];
	assert_string_equal(inet_ntop(AF_INET, &a.a[0], s, sizeof(s)), "192.0.2.1");

	assert_int_equal(a2.status, DNS_OK);
	assert_int_equal(a2.n, 2);

	assert_int_equal(aaaa.status, DNS_OK);
	assert_int_equal(aaaa.n, 1);
	assert_string_equal(inet_ntop(AF_INET6, &aaaa.aaaa[0], s, sizeof(s)), "2001:db8::1");

	/* TXT: one entry per record, strings of a record concatenated */
	assert_int_equal(txt.status, DNS_OK);
	assert_int_equal(txt.n, 2);
	bool t1 =
	    strcmp(txt.txt[0], "v=spf1 -all") == 0 && strcmp(txt.txt[1], "second record") == 0;
	bool t2 =
	    strcmp(txt.txt[1], "v=spf1 -all") == 0 && strcmp(txt.txt[0], "second record") == 0;
	assert_true(t1 || t2);

	assert_int_equal(tlsa.status, DNS_OK);
	assert_int_equal(tlsa.n, 1);
	assert_int_equal(tlsa.tlsa[0].usage, 3);
	assert_int_equal(tlsa.tlsa[0].selector, 1);
	assert_int_equal(tlsa.tlsa[0].mtype, 1);
	assert_int_equal(tlsa.tlsa[0].len, 32);
	assert_int_equal(tlsa.tlsa_data[0][0], 0x01);
	assert_int_equal(tlsa.tlsa_data[0][31], 0xef);

	assert_int_equal(ptr4.status, DNS_OK);
	assert_int_equal(ptr4.n, 1);
	assert_string_equal(ptr4.ptr[0], "example.test");
	assert_int_equal(ptr6.status, DNS_OK);
	assert_int_equal(ptr6.n, 1);
	assert_string_equal(ptr6.ptr[0], "v6.example.test");

	dns_resolver_free(res);
	event_base_free(base);
}

static void test_resolver_negative_answers(void **state)
{
	NEED_SERVER();
	struct event_base *base = event_base_new();
	struct dns_resolver *res = resolver_for_port(base, srv.port);
	struct run run = {base, 0};
	struct got nx, nx2, nodata_mx, nodata_aaaa, nodata_null;

	start(res, &run, "nonexistent.example.test", DNS_MX, &nx);
	start(res, &run, "deeper.nonexistent.nullmx.test", DNS_A, &nx2);
	/* a name with an A record but no MX: the router's implicit-MX case */
	start(res, &run, "noma.example.test", DNS_MX, &nodata_mx);
	start(res, &run, "noma.example.test", DNS_AAAA, &nodata_aaaa);
	start(res, &run, "nullmx.test", DNS_A, &nodata_null);
	run_loop(&run, 10000);
	assert_int_equal(run.pending, 0);

	assert_int_equal(nx.status, DNS_NXDOMAIN);
	assert_int_equal(nx.n, 0);
	assert_string_equal(nx.qname, "nonexistent.example.test");
	assert_int_equal(nx2.status, DNS_NXDOMAIN);
	assert_int_equal(nodata_mx.status, DNS_NODATA);
	assert_int_equal(nodata_mx.n, 0);
	assert_int_equal(nodata_aaaa.status, DNS_NODATA);
	assert_int_equal(nodata_null.status, DNS_NODATA);

	dns_resolver_free(res);
	event_base_free(base);
}

struct timed {
	struct got g;
	struct timespec t0, t1;
	struct run *run;
};

static void timed_cb(void *arg, const struct dns_result *r)
{
	struct timed *t = arg;
	clock_gettime(CLOCK_MONOTONIC, &t->t1);
	t->g.calls++;
	t->g.status = r->status;
	if (--t->run->pending == 0)
		event_base_loopbreak(t->run->base);
}

static double elapsed(const struct timed *t)
{
	return (double)(t->t1.tv_sec - t->t0.tv_sec) +
	       (double)(t->t1.tv_nsec - t->t0.tv_nsec) / 1e9;
}

/*
 * Silent forwarders end in TEMPFAIL, in bounded time: one dead forwarder
 * is given up on by libunbound itself (about 5 s with our options); with
 * three, libunbound alone takes 40 s and more, and the resolver's own
 * 10 s deadline ends the query. Both run at once to keep the test short.
 */
static void test_dead_forwarders_are_tempfail_in_bounded_time(void **state)
{
	struct event_base *base = event_base_new();
	char f1[32], f2[32], f3[32], err[256];
	snprintf(f1, sizeof(f1), "127.0.0.1@%d", free_port());
	snprintf(f2, sizeof(f2), "127.0.0.1@%d", free_port());
	snprintf(f3, sizeof(f3), "127.0.0.1@%d", free_port());
	const char *one[] = {f1};
	const char *three[] = {f1, f2, f3};
	struct dns_resolver *r1 = dns_resolver_new(base, one, 1, NULL, err, sizeof(err));
	struct dns_resolver *r3 = dns_resolver_new(base, three, 3, NULL, err, sizeof(err));
	assert_non_null(r1);
	assert_non_null(r3);
	struct run run = {base, 2};
	static struct timed t1, t3;
	memset(&t1, 0, sizeof(t1));
	memset(&t3, 0, sizeof(t3));
	t1.run = t3.run = &run;
	clock_gettime(CLOCK_MONOTONIC, &t1.t0);
	t3.t0 = t1.t0;
	assert_true(dns_query(r1, "example.test", DNS_MX, timed_cb, &t1) > 0);
	assert_true(dns_query(r3, "example.test", DNS_MX, timed_cb, &t3) > 0);
	run_loop(&run, 15000);
	assert_int_equal(run.pending, 0);
	fprintf(stderr, "dead forwarders -> tempfail: one in %.1f s, three in %.1f s\n",
	        elapsed(&t1), elapsed(&t3));
	assert_int_equal(t1.g.calls, 1);
	assert_int_equal(t1.g.status, DNS_TEMPFAIL);
	assert_int_equal(t3.g.calls, 1);
	assert_int_equal(t3.g.status, DNS_TEMPFAIL);
	assert_true(elapsed(&t1) < 9.5);
	assert_true(elapsed(&t3) < 12.0);

	dns_resolver_free(r1);
	dns_resolver_free(r3);
	event_base_free(base);
}

/* ---- lifecycle: cancel, free, re-entrancy ------------------------------ */

static struct got *must_not_run_g;

static void must_not_run(void *arg, const struct dns_result *r)
{
	fail_msg("callback of a cancelled query ran (%s)", r->qname);
}

/* Runs the loop for ms regardless of pending queries: long enough for any
 * answer that is on its way to arrive and be dropped. */
static void run_for(struct event_base *base, int ms)
{
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
	event_base_loopexit(base, &tv);
	event_base_dispatch(base);
}

static void test_cancelled_query_never_calls_back(void **state)
{
	NEED_SERVER();
	struct event_base *base = event_base_new();
	struct dns_resolver *res = resolver_for_port(base, srv.port);
	struct run run = {base, 0};
	struct got g;

	int c1 = dns_query(res, "example.test", DNS_MX, must_not_run, NULL);
	assert_true(c1 > 0);
	start(res, &run, "example.test", DNS_A, &g);
	int c2 = dns_query(res, "example.test", DNS_TXT, must_not_run, NULL);
	assert_true(c2 > 0);
	assert_int_not_equal(c1, c2);
	dns_cancel(res, c1);
	dns_cancel(res, c2);
	dns_cancel(res, c2);     /* twice: harmless */
	dns_cancel(res, 999999); /* unknown id: harmless */
	dns_cancel(res, -5);
	run_loop(&run, 10000);
	assert_int_equal(g.status, DNS_OK);
	run_for(base, 300);
	dns_cancel(res, c1); /* after the fact: harmless */

	dns_resolver_free(res);
	event_base_free(base);
	(void)must_not_run_g;
}

static void test_free_with_pending_queries_calls_nothing(void **state)
{
	NEED_SERVER();
	struct event_base *base = event_base_new();
	struct dns_resolver *res = resolver_for_port(base, srv.port);
	for (int i = 0; i < 20; i++)
		assert_true(dns_query(res, "example.test", DNS_MX, must_not_run, NULL) > 0);
	dns_resolver_free(res);
	run_for(base, 200);
	dns_resolver_free(NULL);
	event_base_free(base);
}

struct reent {
	struct dns_resolver *res;
	struct run *run;
	int victim; /* query to cancel from inside a callback */
	bool victim_cancelled, victim_ran;
	struct got chained; /* query started from inside a callback */
	int calls;
};

static void victim_cb(void *arg, const struct dns_result *r)
{
	struct reent *x = arg;
	/* its answer may legitimately beat the canceller's */
	if (x->victim_cancelled)
		fail_msg("callback ran after dns_cancel");
	x->victim_ran = true;
	if (--x->run->pending == 0)
		event_base_loopbreak(x->run->base);
}

static void cancel_then_chain(void *arg, const struct dns_result *r)
{
	struct reent *x = arg;
	x->calls++;
	assert_int_equal(r->status, DNS_OK);
	if (!x->victim_ran) {
		dns_cancel(x->res, x->victim);
		x->victim_cancelled = true;
		x->run->pending--; /* it will never call */
	}
	/* the router's pattern: MX answer, then address lookups */
	const char *host = NULL;
	for (size_t i = 0; i < r->n; i++) {
		if (strcmp(r->mx[i].host, "mx1.example.test") == 0)
			host = r->mx[i].host;
	}
	assert_non_null(host);
	memset(&x->chained, 0, sizeof(x->chained));
	int id = dns_query(x->res, host, DNS_A, record, &x->chained);
	assert_true(id > 0);
	assert_false(x->chained.done);
	/* this one is done, the chained one is new: pending unchanged */
}

static void test_callbacks_may_query_and_cancel(void **state)
{
	NEED_SERVER();
	struct event_base *base = event_base_new();
	struct dns_resolver *res = resolver_for_port(base, srv.port);
	struct run run = {base, 0};
	struct reent x = {.res = res, .run = &run};

	assert_true(dns_query(res, "example.test", DNS_MX, cancel_then_chain, &x) > 0);
	x.victim = dns_query(res, "example.test", DNS_AAAA, victim_cb, &x);
	assert_true(x.victim > 0);
	run.pending = 2;
	run_loop(&run, 10000);
	assert_int_equal(run.pending, 0);
	run_for(base, 200);
	assert_int_equal(x.calls, 1);
	assert_int_equal(x.chained.calls, 1);
	assert_int_equal(x.chained.status, DNS_OK);
	assert_int_equal(x.chained.n, 2); /* mx1.example.test has two A */

	dns_resolver_free(res);
	event_base_free(base);
}

struct killer {
	struct dns_resolver *res;
	struct event_base *base;
	int calls;
};

static void free_resolver_cb(void *arg, const struct dns_result *r)
{
	struct killer *k = arg;
	k->calls++;
	dns_resolver_free(k->res);
	k->res = NULL;
	event_base_loopbreak(k->base);
}

static void after_free_cb(void *arg, const struct dns_result *r)
{
	struct killer *k = arg;
	/* answers that arrive before the killer's are fine; none after */
	if (!k->res)
		fail_msg("callback ran after its resolver was freed");
}

static void test_callback_may_free_the_resolver(void **state)
{
	NEED_SERVER();
	struct event_base *base = event_base_new();
	struct killer k = {resolver_for_port(base, srv.port), base, 0};

	/* answers to all of these are likely in the pipe together: the
	 * first callback frees the resolver, the rest must stay silent */
	assert_true(dns_query(k.res, "example.test", DNS_A, free_resolver_cb, &k) > 0);
	for (int i = 0; i < 10; i++)
		assert_true(dns_query(k.res, "example.test", DNS_A, after_free_cb, &k) > 0);
	struct timeval tv = {10, 0};
	event_base_loopexit(base, &tv);
	event_base_dispatch(base);
	assert_int_equal(k.calls, 1);
	assert_null(k.res);
	run_for(base, 100);
	event_base_free(base);
}

struct many {
	int calls[400];
	int ok, nx;
	struct run *run;
};

struct many_arg {
	struct many *m;
	int i;
};

static void count_cb(void *arg, const struct dns_result *r)
{
	struct many_arg *a = arg;
	a->m->calls[a->i]++;
	if (r->status == DNS_OK)
		a->m->ok++;
	else if (r->status == DNS_NXDOMAIN)
		a->m->nx++;
	if (--a->m->run->pending == 0)
		event_base_loopbreak(a->m->run->base);
}

static void test_many_concurrent_queries_each_answered_once(void **state)
{
	NEED_SERVER();
	struct event_base *base = event_base_new();
	struct dns_resolver *res = resolver_for_port(base, srv.port);
	struct run run = {base, 0};
	static struct many m;
	static struct many_arg args[400];
	memset(&m, 0, sizeof(m));
	m.run = &run;
	int last = 0;
	for (int i = 0; i < 400; i++) {
		char name[64];
		/* every 4th exists, the rest do not */
		if (i % 4 == 0)
			snprintf(name, sizeof(name), "%s", "mx1.example.test");
		else
			snprintf(name, sizeof(name), "n%d.example.test", i);
		args[i] = (struct many_arg){&m, i};
		int id = dns_query(res, name, DNS_A, count_cb, &args[i]);
		assert_true(id > last); /* positive, increasing, so distinct */
		last = id;
		run.pending++;
	}
	run_loop(&run, 15000);
	assert_int_equal(run.pending, 0);
	for (int i = 0; i < 400; i++)
		assert_int_equal(m.calls[i], 1);
	assert_int_equal(m.ok, 100);
	assert_int_equal(m.nx, 300);
	dns_resolver_free(res);
	event_base_free(base);
}

static void test_bad_queries_are_refused_up_front(void **state)
{
	struct event_base *base = event_base_new();
	/* no server needed: nothing is sent */
	struct dns_resolver *res = resolver_for_port(base, 9);
	char longname[DNS_NAME_MAX + 10];
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';

	assert_int_equal(dns_query(res, NULL, DNS_A, must_not_run, NULL), TERN_EINVAL);
	assert_int_equal(dns_query(res, "a.test", DNS_A, NULL, NULL), TERN_EINVAL);
	assert_int_equal(dns_query(res, "a.test", 99, must_not_run, NULL), TERN_EINVAL);
	assert_int_equal(dns_query(NULL, "a.test", DNS_A, must_not_run, NULL), TERN_EINVAL);
	assert_int_equal(dns_query(res, "", DNS_A, must_not_run, NULL), TERN_ESYNTAX);
	assert_int_equal(dns_query(res, "a b.test", DNS_A, must_not_run, NULL), TERN_ESYNTAX);
	assert_int_equal(dns_query(res, "a\r\n.test", DNS_A, must_not_run, NULL), TERN_ESYNTAX);
	assert_int_equal(dns_query(res, "\xc3\xa9.test", DNS_A, must_not_run, NULL), TERN_ESYNTAX);
	assert_int_equal(dns_query(res, longname, DNS_A, must_not_run, NULL), TERN_ESYNTAX);
	run_for(base, 50);
	dns_resolver_free(res);
	event_base_free(base);
}

static void test_name_libunbound_rejects_is_error(void **state)
{
	NEED_SERVER();
	struct event_base *base = event_base_new();
	struct dns_resolver *res = resolver_for_port(base, srv.port);
	struct run run = {base, 0};
	struct got g1, g2;
	/* a 64-octet label passes our character check but is not a name */
	char lab[80];
	memset(lab, 'a', 64);
	snprintf(lab + 64, sizeof(lab) - 64, ".test");
	start(res, &run, lab, DNS_A, &g1);
	start(res, &run, "a..test", DNS_A, &g2);
	run_loop(&run, 10000);
	assert_int_equal(run.pending, 0);
	assert_int_equal(g1.status, DNS_ERROR);
	assert_int_equal(g2.status, DNS_ERROR);
	dns_resolver_free(res);
	event_base_free(base);
}

static void test_bad_configuration_fails_with_a_message(void **state)
{
	struct event_base *base = event_base_new();
	char err[256];
	const char *bad[] = {"not-an-address"};
	assert_null(dns_resolver_new(base, bad, 1, NULL, err, sizeof(err)));
	assert_non_null(strstr(err, "not-an-address"));

	const char *ok[] = {"127.0.0.1@53"};
	err[0] = '\0';
	assert_null(dns_resolver_new(base, ok, 1, "/nonexistent/root.key", err, sizeof(err)));
	assert_non_null(strstr(err, "/nonexistent/root.key"));

	/* an anchor file that exists but does not parse fails here too, not
	 * at the first query */
	char dir[] = "/tmp/tern-dns-ta-XXXXXX", ta[64];
	assert_non_null(mkdtemp(dir));
	snprintf(ta, sizeof(ta), "%s/bad.key", dir);
	write_file(ta, "this is not a trust anchor\n");
	err[0] = '\0';
	assert_null(dns_resolver_new(base, ok, 1, ta, err, sizeof(err)));
	assert_true(err[0] != '\0');
	unlink(ta);
	rmdir(dir);

	assert_null(dns_resolver_new(NULL, ok, 1, NULL, err, sizeof(err)));
	assert_null(dns_resolver_new(base, NULL, 1, NULL, err, sizeof(err)));

	/* IPv6 and port-less forms are accepted */
	const char *forms[] = {"::1@5353", "127.0.0.1"};
	struct dns_resolver *res = dns_resolver_new(base, forms, 2, NULL, err, sizeof(err));
	assert_non_null(res);
	dns_resolver_free(res);
	event_base_free(base);
}

static void test_system_resolver_is_the_default(void **state)
{
	/* reads /etc/resolv.conf (or falls back to 127.0.0.1); sends nothing */
	struct event_base *base = event_base_new();
	char err[256];
	struct dns_resolver *res = dns_resolver_new(base, NULL, 0, NULL, err, sizeof(err));
	if (!res)
		fail_msg("%s", err);
	dns_resolver_free(res);
	event_base_free(base);
}

/* A trust anchor for a zone the server does not sign: answers under it
 * fail validation (bogus -> TEMPFAIL), answers outside it are insecure. */
static void test_unsigned_zone_under_trust_anchor_is_bogus(void **state)
{
	NEED_SERVER();
	char ta[512], fwd[64], err[256];
	snprintf(ta, sizeof(ta), "%s/ta.key", srv.dir);
	write_file(ta, "example.test. IN DS 12345 8 2 "
	               "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF\n");
	snprintf(fwd, sizeof(fwd), "127.0.0.1@%d", srv.port);
	const char *fw[] = {fwd};
	struct event_base *base = event_base_new();
	struct dns_resolver *res = dns_resolver_new(base, fw, 1, ta, err, sizeof(err));
	if (!res)
		fail_msg("%s", err);
	struct run run = {base, 0};
	struct got bogus, insecure;
	start(res, &run, "example.test", DNS_MX, &bogus);
	start(res, &run, "nullmx.test", DNS_MX, &insecure);
	run_loop(&run, 15000);
	assert_int_equal(run.pending, 0);
	assert_int_equal(bogus.status, DNS_TEMPFAIL);
	assert_true(bogus.bogus);
	assert_false(bogus.secure);
	assert_int_equal(bogus.n, 0);
	assert_int_equal(insecure.status, DNS_OK);
	assert_false(insecure.bogus);
	assert_false(insecure.secure);
	dns_resolver_free(res);
	event_base_free(base);
}

int main(void)
{
	/* libunbound's own "error:" lines for the dead forwarder are expected */
	const struct CMUnitTest pure[] = {
	    cmocka_unit_test(test_parse_name_table),
	    cmocka_unit_test(test_parse_name_length_limits),
	    cmocka_unit_test(test_parse_mx_table),
	    cmocka_unit_test(test_parse_txt_table),
	    cmocka_unit_test(test_parse_tlsa_table),
	    cmocka_unit_test(test_ptr_names),
	    cmocka_unit_test(test_status_names),
	    cmocka_unit_test(test_result_free_leaves_empty_result),
	};
	const struct CMUnitTest live[] = {
	    cmocka_unit_test(test_resolver_answers_each_type),
	    cmocka_unit_test(test_resolver_negative_answers),
	    cmocka_unit_test(test_cancelled_query_never_calls_back),
	    cmocka_unit_test(test_free_with_pending_queries_calls_nothing),
	    cmocka_unit_test(test_callbacks_may_query_and_cancel),
	    cmocka_unit_test(test_callback_may_free_the_resolver),
	    cmocka_unit_test(test_many_concurrent_queries_each_answered_once),
	    cmocka_unit_test(test_bad_queries_are_refused_up_front),
	    cmocka_unit_test(test_name_libunbound_rejects_is_error),
	    cmocka_unit_test(test_bad_configuration_fails_with_a_message),
	    cmocka_unit_test(test_system_resolver_is_the_default),
	    cmocka_unit_test(test_unsigned_zone_under_trust_anchor_is_bogus),
	    cmocka_unit_test(test_dead_forwarders_are_tempfail_in_bounded_time),
	};
	int fails = cmocka_run_group_tests_name("dns_rdata", pure, NULL, NULL);
	fails += cmocka_run_group_tests_name("dns_resolver", live, server_setup, server_teardown);
	return fails;
}
