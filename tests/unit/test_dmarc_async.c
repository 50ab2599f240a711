/*
 * test_dmarc_async.c — the DMARC state machine on tern's real asynchronous
 * resolver (dmarc_check_async in src/policy/dmarc_async.c), against an
 * unbound started here serving a local "test." zone with DMARC records.
 *
 * Hermetic as test_dns.c: the unbound config lives in a temp dir, nothing
 * leaves 127.0.0.1, and only the unbound started here is killed (by its
 * PID). Skipped when /usr/sbin/unbound (or $TERN_UNBOUND) is missing;
 * scripts/install-deps installs it.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "core/err.h"
#include "dns/dns.h"
#include "policy/dmarc.h"

static struct {
	char dir[256];
	int port;
	pid_t pid;
} srv = {.pid = -1};

static const char *unbound_bin(void)
{
	const char *e = getenv("TERN_UNBOUND");
	return e && *e ? e : "/usr/sbin/unbound";
}

static int free_port(void)
{
	for (int tries = 0; tries < 50; tries++) {
		int u = socket(AF_INET, SOCK_DGRAM, 0), t = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in sa = {.sin_family = AF_INET};
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		socklen_t sl = sizeof(sa);
		int ok = u >= 0 && t >= 0 && bind(u, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
		         getsockname(u, (struct sockaddr *)&sa, &sl) == 0 &&
		         bind(t, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		close(t);
		close(u);
		if (ok)
			return ntohs(sa.sin_port);
	}
	return -1;
}

/* One A query for "example.test." answered within 200 ms: unbound serves. */
static bool server_answers(int port)
{
	static const uint8_t q[] = {0x12, 0x34, 0x01, 0x00, 0,   1,   0,   0,   0,   0,
	                            0,    0,    7,    'e',  'x', 'a', 'm', 'p', 'l', 'e',
	                            4,    't',  'e',  's',  't', 0,   0,   1,   0,   1};
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	bool ok = false;
	if (s >= 0 &&
	    sendto(s, q, sizeof(q), 0, (struct sockaddr *)&sa, sizeof(sa)) == (ssize_t)sizeof(q)) {
		struct pollfd p = {.fd = s, .events = POLLIN};
		uint8_t buf[512];
		ok = poll(&p, 1, 200) == 1 && recv(s, buf, sizeof(buf), 0) >= 12 && buf[0] == 0x12;
	}
	if (s >= 0)
		close(s);
	return ok;
}

static const char conf_fmt[] =
    "server:\n"
    "  interface: 127.0.0.1\n"
    "  port: %d\n"
    "  do-ip6: no\n"
    "  chroot: \"\"\n"
    "  username: \"\"\n"
    "  directory: \"%s\"\n"
    "  pidfile: \"%s/unbound.pid\"\n"
    "  use-syslog: no\n"
    "  logfile: \"%s/unbound.log\"\n"
    "  num-threads: 1\n"
    "  module-config: \"iterator\"\n"
    "  local-zone: \"test.\" static\n"
    "  local-data: \"example.test. 300 IN A 192.0.2.1\"\n"
    "  local-data: 'example.test. 300 IN TXT \"v=spf1 -all\"'\n"
    "  local-data: '_dmarc.example.test. 300 IN TXT \"v=DMARC1; p=reject; \" \"sp=quarantine; "
    "np=reject\"'\n"
    "  local-data: '_dmarc.example.test. 300 IN TXT \"not a policy\"'\n"
    "  local-data: \"www.example.test. 300 IN A 192.0.2.2\"\n"
    "  local-data: '_dmarc.bank.test. 300 IN TXT \"v=DMARC1; p=none; psd=y\"'\n"
    "  local-data: '_dmarc.giant.bank.test. 300 IN TXT \"v=DMARC1; p=reject\"'\n";

static void server_stop(void)
{
	if (srv.pid > 0) {
		kill(srv.pid, SIGTERM);
		for (int i = 0; i < 300 && srv.pid > 0; i++) {
			if (waitpid(srv.pid, NULL, WNOHANG) == srv.pid)
				srv.pid = -1;
			else
				usleep(10000);
		}
		if (srv.pid > 0) {
			kill(srv.pid, SIGKILL);
			waitpid(srv.pid, NULL, 0);
			srv.pid = -1;
		}
	}
	if (srv.dir[0]) {
		DIR *d = opendir(srv.dir);
		struct dirent *de;
		while (d && (de = readdir(d))) {
			char p[512];
			snprintf(p, sizeof(p), "%s/%s", srv.dir, de->d_name);
			if (de->d_name[0] != '.')
				unlink(p);
		}
		if (d)
			closedir(d);
		rmdir(srv.dir);
		srv.dir[0] = '\0';
	}
}

static int server_setup(void **state)
{
	if (access(unbound_bin(), X_OK) != 0)
		return 0; /* each test skips */
	const char *base = getenv("TMPDIR");
	snprintf(srv.dir, sizeof(srv.dir), "%s/tern-dmarc-XXXXXX", base ? base : "/tmp");
	if (!mkdtemp(srv.dir) || (srv.port = free_port()) < 0)
		return -1;
	char conf[4096], path[512];
	snprintf(conf, sizeof(conf), conf_fmt, srv.port, srv.dir, srv.dir, srv.dir);
	snprintf(path, sizeof(path), "%s/unbound.conf", srv.dir);
	FILE *f = fopen(path, "w");
	if (!f || fputs(conf, f) < 0 || fclose(f) != 0)
		return -1;
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
	for (int i = 0; i < 50; i++) { /* bounded: about 10 s */
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

/* ------------------------------------------------------------ running */

struct ctx {
	struct event_base *base;
	struct dns_resolver *res;
	bool in_call; /* inside dmarc_check_async */
	int calls;
	bool called_inside;
	struct dmarc_outcome out;
};

static void done(void *arg, const struct dmarc_outcome *o)
{
	struct ctx *c = arg;
	c->calls++;
	c->called_inside |= c->in_call;
	c->out = *o;
	event_base_loopbreak(c->base);
}

static void setup_ctx(struct ctx *c)
{
	char fwd[64], err[256];
	memset(c, 0, sizeof(*c));
	c->base = event_base_new();
	assert_non_null(c->base);
	snprintf(fwd, sizeof(fwd), "127.0.0.1@%d", srv.port);
	const char *fw[] = {fwd};
	c->res = dns_resolver_new(c->base, fw, 1, NULL, err, sizeof(err));
	if (!c->res)
		fail_msg("dns_resolver_new: %s", err);
}

static void free_ctx(struct ctx *c)
{
	dns_resolver_free(c->res);
	event_base_free(c->base);
}

/* Evaluates a message (From header, passing SPF domain, passing DKIM d=). */
static void check(struct ctx *c, const char *hdr, const char *spf, const char *dkim)
{
	struct dmarc_from from;
	dmarc_from_domains(hdr, strlen(hdr), &from);
	struct dmarc_dkim dk = {DMARC_DKIM_PASS, dkim, "s", "b", NULL, false};
	struct dmarc_input in = {&from,
	                         {spf ? DMARC_SPF_PASS : DMARC_SPF_NONE, DMARC_SPF_MAILFROM, spf},
	                         &dk,
	                         dkim ? 1 : 0};
	c->calls = 0;
	c->in_call = true;
	struct dmarc_check *chk = dmarc_check_async(c->res, c->base, &in, done, c);
	c->in_call = false;
	assert_non_null(chk);
	struct timeval tv = {10, 0}; /* bounded: DNS answers come from loopback */
	event_base_loopexit(c->base, &tv);
	event_base_dispatch(c->base);
	assert_int_equal(c->calls, 1);
	assert_false(c->called_inside);
}

#define NEED_SERVER()                                                                              \
	do {                                                                                       \
		if (srv.pid <= 0)                                                                  \
			skip();                                                                    \
	} while (0)

static void test_async_policies(void **state)
{
	NEED_SERVER();
	struct ctx c;
	setup_ctx(&c);

	/* p=reject from the two-string record; the other TXT is not DMARC */
	check(&c, "From: a@example.test\r\n", NULL, NULL);
	assert_int_equal(c.out.result, DMARC_RESULT_FAIL);
	assert_int_equal(c.out.action, DMARC_ACTION_REJECT);
	assert_int_equal(c.out.n_queries, 2); /* _dmarc.example.test, _dmarc.test */

	/* an existing subdomain: sp; a non-existent one: np (one more question) */
	check(&c, "From: a@www.example.test\r\n", NULL, NULL);
	assert_int_equal(c.out.author[0].tag, DMARC_TAG_SP);
	assert_int_equal(c.out.action, DMARC_ACTION_QUARANTINE);
	assert_false(c.out.author[0].nonexistent);
	check(&c, "From: a@nx.example.test\r\n", NULL, NULL);
	assert_int_equal(c.out.author[0].tag, DMARC_TAG_NP);
	assert_true(c.out.author[0].nonexistent);
	assert_int_equal(c.out.action, DMARC_ACTION_REJECT);

	/* relaxed DKIM alignment through a second walk */
	check(&c, "From: a@example.test\r\n", "other.test", "mail.example.test");
	assert_int_equal(c.out.result, DMARC_RESULT_PASS);
	assert_true(c.out.author[0].dkim_aligned);
	assert_false(c.out.author[0].spf_aligned);

	/* psd=y: giant.bank.test is its own organizational domain */
	check(&c, "From: a@x.giant.bank.test\r\n", "mail.giant.bank.test", NULL);
	assert_int_equal(c.out.result, DMARC_RESULT_PASS);
	assert_string_equal(c.out.author[0].org_domain, "giant.bank.test");
	check(&c, "From: a@x.giant.bank.test\r\n", "mega.bank.test", NULL);
	assert_int_equal(c.out.result, DMARC_RESULT_FAIL);
	assert_int_equal(c.out.action, DMARC_ACTION_REJECT);

	/* no DMARC record anywhere */
	check(&c, "From: a@nothing.test\r\n", NULL, NULL);
	assert_int_equal(c.out.result, DMARC_RESULT_NONE);

	/* no From: nothing to ask, still called back from the loop */
	check(&c, "To: a@example.test\r\n", NULL, NULL);
	assert_int_equal(c.out.result, DMARC_RESULT_NONE);
	assert_int_equal(c.out.n_queries, 0);
	free_ctx(&c);
}

static void must_not_run(void *arg, const struct dmarc_outcome *o)
{
	fail_msg("callback after cancel");
}

static void test_async_cancel(void **state)
{
	NEED_SERVER();
	struct ctx c;
	setup_ctx(&c);
	struct dmarc_from from;
	dmarc_from_domains("From: a@x.y.example.test\r\n", 26, &from);
	struct dmarc_input in = {.from = &from};
	struct dmarc_check *chk = dmarc_check_async(c.res, c.base, &in, must_not_run, NULL);
	assert_non_null(chk);
	dmarc_check_cancel(chk);
	/* the same with a check that needs no DNS (its event is pending) */
	dmarc_from_domains("To: a@example.test\r\n", 20, &from);
	chk = dmarc_check_async(c.res, c.base, &in, must_not_run, NULL);
	assert_non_null(chk);
	dmarc_check_cancel(chk);
	dmarc_check_cancel(NULL);
	struct timeval tv = {0, 300000};
	event_base_loopexit(c.base, &tv);
	event_base_dispatch(c.base);
	free_ctx(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_async_policies),
	    cmocka_unit_test(test_async_cancel),
	};
	return cmocka_run_group_tests(tests, server_setup, server_teardown);
}
