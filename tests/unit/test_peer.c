/*
 * test_peer.c — client addresses (src/core/peer.c), shared by the SMTP and
 * POP3 servers: the text logs show, and the per-address connection counts
 * behind max_connections_per_ip (an address at its limit is refused until
 * one of its connections ends; IPv4 and the same address v4-mapped in IPv6
 * are one client; every entry is gone once its connections are).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "core/peer.h"

static struct sockaddr_storage v4(const char *a)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in *in = (struct sockaddr_in *)&ss;
	in->sin_family = AF_INET;
	assert_int_equal(inet_pton(AF_INET, a, &in->sin_addr), 1);
	return ss;
}

static struct sockaddr_storage v6(const char *a)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
	in6->sin6_family = AF_INET6;
	assert_int_equal(inet_pton(AF_INET6, a, &in6->sin6_addr), 1);
	return ss;
}

static void test_format(void **st)
{
	(void)st;
	char out[64];
	struct sockaddr_storage a = v4("192.0.2.7"), b = v6("2001:db8::1"),
	                        c = v6("::ffff:198.51.100.9"), u;
	peer_format(&a, out, sizeof(out));
	assert_string_equal(out, "192.0.2.7");
	peer_format(&b, out, sizeof(out));
	assert_string_equal(out, "2001:db8::1");
	peer_format(&c, out, sizeof(out)); /* mapped: shown as the IPv4 it is */
	assert_string_equal(out, "198.51.100.9");
	memset(&u, 0, sizeof(u));
	u.ss_family = AF_UNIX;
	peer_format(&u, out, sizeof(out));
	assert_string_equal(out, "unknown");
}

static void test_limit_per_address(void **st)
{
	(void)st;
	struct peer_counts *pc = peer_counts_new();
	assert_non_null(pc);
	struct sockaddr_storage a = v4("192.0.2.7"), a6 = v6("::ffff:192.0.2.7"),
	                        b = v6("2001:db8::1");
	assert_true(peer_counts_acquire(pc, &a, 2));
	assert_true(peer_counts_acquire(pc, &a6, 2)); /* the same client */
	assert_false(peer_counts_acquire(pc, &a, 2)); /* at its limit */
	assert_true(peer_counts_acquire(pc, &b, 2));  /* another one is not */
	peer_counts_release(pc, &a);
	assert_true(peer_counts_acquire(pc, &a6, 2)); /* one ended: room again */
	assert_false(peer_counts_acquire(pc, &a6, 2));
	/* a limit of 0 refuses, and counts nothing to release */
	struct sockaddr_storage z = v4("203.0.113.1");
	assert_false(peer_counts_acquire(pc, &z, 0));
	peer_counts_release(pc, &z); /* never counted: no effect */
	assert_true(peer_counts_acquire(pc, &z, 1));
	assert_false(peer_counts_acquire(pc, &z, 1));
	/* every connection ends: entries go (LeakSanitizer checks the rest) */
	peer_counts_release(pc, &a);
	peer_counts_release(pc, &a);
	peer_counts_release(pc, &a); /* one too many: no effect */
	assert_true(peer_counts_acquire(pc, &a, 1));
	assert_false(peer_counts_acquire(pc, &a, 1));
	peer_counts_release(pc, &a);
	peer_counts_release(pc, &b);
	peer_counts_release(pc, &z);
	peer_counts_free(pc);
	peer_counts_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_format),
	    cmocka_unit_test(test_limit_per_address),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
