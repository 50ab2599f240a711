/*
 * test_spf.c — src/policy/spf*: the pure parts (record parser, macro
 * expander with the RFC 7208 §7.4 examples, target names, CIDR matching),
 * the evaluator's limits and identities against an in-memory zone
 * (spf_zone.h), and the Received-SPF / Authentication-Results writers
 * with hostile input. The OpenSPF suite itself is test_spf_suite.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "dns/dns.h"
#include "policy/spf.h"
#include "spf_zone.h"

/* ======================================================= addresses */

static void test_ip_parse(void **state)
{
	struct spf_ip ip;

	assert_int_equal(spf_ip_parse("192.0.2.3", &ip), TERN_OK);
	assert_int_equal(ip.family, AF_INET);
	assert_memory_equal(ip.addr, ((uint8_t[]){192, 0, 2, 3}), 4);

	assert_int_equal(spf_ip_parse("2001:db8::cb01", &ip), TERN_OK);
	assert_int_equal(ip.family, AF_INET6);
	assert_int_equal(ip.addr[0], 0x20);
	assert_int_equal(ip.addr[15], 0x01);

	/* §5: an IPv4-mapped client is an IPv4 client */
	assert_int_equal(spf_ip_parse("::FFFF:1.2.3.4", &ip), TERN_OK);
	assert_int_equal(ip.family, AF_INET);
	assert_memory_equal(ip.addr, ((uint8_t[]){1, 2, 3, 4}), 4);

	assert_int_equal(spf_ip_parse("1.2.3", &ip), TERN_ESYNTAX);
	assert_int_equal(spf_ip_parse("", &ip), TERN_ESYNTAX);
	assert_int_equal(spf_ip_parse("example.com", &ip), TERN_ESYNTAX);

	struct sockaddr_in6 s6;
	memset(&s6, 0, sizeof(s6));
	s6.sin6_family = AF_INET6;
	inet_pton(AF_INET6, "::ffff:192.0.2.9", &s6.sin6_addr);
	assert_int_equal(spf_ip_from_sockaddr(&s6, &ip), TERN_OK);
	assert_int_equal(ip.family, AF_INET);
	assert_int_equal(ip.addr[3], 9);
}

static void test_prefix_match(void **state)
{
	uint8_t a[4] = {192, 0, 2, 130}, b[4] = {192, 0, 2, 1}, c[4] = {10, 0, 0, 1};

	assert_true(spf_prefix_match(a, b, 4, 24));
	assert_true(spf_prefix_match(a, b, 4, 0));
	assert_false(spf_prefix_match(a, b, 4, 25)); /* 130 = 1000 0010 vs 0000 0001 */
	assert_true(spf_prefix_match(a, b, 4, 24));
	assert_false(spf_prefix_match(a, b, 4, 32));
	assert_true(spf_prefix_match(a, a, 4, 32));
	assert_true(spf_prefix_match(a, a, 4, 99)); /* clamped to the width */
	assert_false(spf_prefix_match(a, c, 4, 1));
	assert_true(spf_prefix_match(a, c, 4, 0));
}

/* ======================================================= record parser */

static struct spf_record parse_ok(const char *text)
{
	struct spf_record r;
	char err[200];
	int rc = spf_record_parse(text, strlen(text), &r, err, sizeof(err));
	if (rc != TERN_OK)
		fail_msg("\"%s\" did not parse: %s", text, err);
	return r;
}

static void test_record_parses_every_term(void **state)
{
	struct spf_record r = parse_ok(
	    "V=SPF1 -ip4:192.0.2.0/24 a:%{d}/24//64 ~MX ?ptr:example.org "
	    "include:_spf.example.com exists:%{i}.bl.example.com ip6:2001:db8::/32 a//56 "
	    "redirect=_spf.example.com exp=explain.%{d} moo.cow-far_out=man:dog/cat default=+  "
	    "-all  ");

	assert_int_equal(r.n_terms, 9);
	assert_true(r.has_all);
	const struct spf_term *t = r.terms;
	assert_int_equal(t[0].mech, SPF_MECH_IP4);
	assert_int_equal(t[0].qualifier, '-');
	assert_int_equal(t[0].cidr4, 24);
	assert_memory_equal(t[0].net, ((uint8_t[]){192, 0, 2, 0}), 4);
	assert_int_equal(t[0].text_len, strlen("-ip4:192.0.2.0/24"));

	assert_int_equal(t[1].mech, SPF_MECH_A);
	assert_int_equal(t[1].qualifier, '+');
	assert_int_equal(t[1].spec_len, 4);
	assert_memory_equal(t[1].spec, "%{d}", 4);
	assert_int_equal(t[1].cidr4, 24);
	assert_int_equal(t[1].cidr6, 64);

	assert_int_equal(t[2].mech, SPF_MECH_MX);
	assert_int_equal(t[2].qualifier, '~');
	assert_null(t[2].spec);
	assert_int_equal(t[2].cidr4, 32);
	assert_int_equal(t[2].cidr6, 128);

	assert_int_equal(t[3].mech, SPF_MECH_PTR);
	assert_int_equal(t[3].qualifier, '?');
	assert_memory_equal(t[3].spec, "example.org", 11);

	assert_int_equal(t[4].mech, SPF_MECH_INCLUDE);
	assert_int_equal(t[5].mech, SPF_MECH_EXISTS);
	assert_int_equal(t[6].mech, SPF_MECH_IP6);
	assert_int_equal(t[6].cidr6, 32);
	assert_int_equal(t[6].net[1], 0x01);
	assert_int_equal(t[7].mech, SPF_MECH_A);
	assert_int_equal(t[7].cidr4, 32);
	assert_int_equal(t[7].cidr6, 56);
	assert_int_equal(t[8].mech, SPF_MECH_ALL);

	assert_non_null(r.redirect);
	assert_int_equal(r.redirect_len, strlen("_spf.example.com"));
	assert_non_null(r.exp);
	assert_memory_equal(r.exp, "explain.%{d}", r.exp_len);
	spf_record_free(&r);

	r = parse_ok("v=spf1");
	assert_int_equal(r.n_terms, 0);
	assert_null(r.redirect);
	spf_record_free(&r);
}

static void test_record_syntax_errors(void **state)
{
	static const char *const bad[] = {
	    "v=spf1 -all moo",                            /* unknown mechanism anywhere (§4.6) */
	    "v=spf1 redirect:example.com",                /* redirect is a modifier */
	    "v=spf1 =all",                                /* empty modifier name */
	    "v=spf1 1up=foo",                             /* modifier names start with ALPHA */
	    "v=spf1 foo=%abc",                            /* unknown modifiers need valid macros */
	    "v=spf1 exp=a.example.com exp=b.example.com", /* twice */
	    "v=spf1 redirect=a.example.com redirect=a.example.com",
	    "v=spf1 exp=",                 /* empty domain-spec */
	    "v=spf1 exp=%{r}.example.com", /* r only in explanation text */
	    "v=spf1 redirect=-all",
	    "v=spf1 -all.",
	    "v=spf1 all:foo",
	    "v=spf1 -all/8",
	    "v=spf1 ptr/0",
	    "v=spf1 ptr:",
	    "v=spf1 a:",
	    "v=spf1 a:museum", /* only a toplabel */
	    "v=spf1 a:museum.",
	    "v=spf1 a:abc.123", /* numeric toplabel */
	    "v=spf1 a:example.-com",
	    "v=spf1 a:foo-bar",
	    "v=spf1 a:example.com:8080",
	    "v=spf1 a/33",
	    "v=spf1 a//129",
	    "v=spf1 a/24/64",
	    "v=spf1 a/024", /* no leading zeros */
	    "v=spf1 mx:foo.example.com/24/64",
	    "v=spf1 include",
	    "v=spf1 include:",
	    "v=spf1 include:example.com/24",
	    "v=spf1 exists",
	    "v=spf1 exists:example.com/24",
	    "v=spf1 ip4",
	    "v=spf1 ip4:1.2.3",
	    "v=spf1 ip4:1.2.3.4:8080",
	    "v=spf1 ip4:1.2.3.4/33",
	    "v=spf1 ip4:1.2.3.4/032",
	    "v=spf1 ip4:1.2.3.4//32",
	    "v=spf1 ip4:01.2.3.4",
	    "v=spf1 ip4:256.2.3.4",
	    "v=spf1 ip6",
	    "v=spf1 ip6::CAFE::BABE",
	    "v=spf1 ip6:::1/129",
	    "v=spf1 ip6:::1//64",
	    "v=spf1 a:%{d0}.example.com", /* a digit transformer must be nonzero */
	    "v=spf1 a:%{x}.example.com",
	    "v=spf1 exists:%(ir).example.com",
	    "v=spf1 exists:foo%.example.com",
	    "v=spf1 a:foo.example.com\r-all", /* only SP separates terms */
	    "v=spf1\tmx",
	    "v=spf1 a:caf\xc3\xa9.example.com", /* US-ASCII only (§3.1) */
	    "v=spf10 mx",
	    "spf1 mx",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct spf_record r;
		char err[200] = "";
		int rc = spf_record_parse(bad[i], strlen(bad[i]), &r, err, sizeof(err));
		if (rc != TERN_ESYNTAX)
			fail_msg("\"%s\" parsed (rc %d)", bad[i], rc);
		assert_true(err[0] != '\0');
		/* words for a person, never the raw bytes */
		for (const char *p = err; *p; p++)
			assert_true(*p >= 0x20 && *p < 0x7f);
		assert_null(r.text);
	}

	/* a NUL inside the record is a byte like any other: refused */
	struct spf_record r;
	assert_int_equal(spf_record_parse("v=spf1 a:x.example.com\0", 24, &r, NULL, 0),
	                 TERN_ESYNTAX);
}

static void test_record_size_bound(void **state)
{
	size_t n = SPF_RECORD_MAX + 1;
	char *big = malloc(n + 1);
	assert_non_null(big);
	memcpy(big, "v=spf1", 6);
	for (size_t i = 6; i < n; i += 2) {
		big[i] = ' ';
		if (i + 1 < n)
			big[i + 1] = 'a';
	}
	big[n] = '\0';
	struct spf_record r;
	char err[200];
	assert_int_equal(spf_record_parse(big, n, &r, err, sizeof(err)), TERN_ESYNTAX);
	assert_non_null(strstr(err, "8192"));
	/* at the bound it parses (every other byte a term) */
	assert_int_equal(spf_record_parse(big, SPF_RECORD_MAX, &r, err, sizeof(err)), TERN_OK);
	assert_int_equal(r.n_terms, (SPF_RECORD_MAX - 6) / 2);
	spf_record_free(&r);
	free(big);
}

static void test_record_version_selection(void **state)
{
	assert_true(spf_record_is_spf1("v=spf1", 6));
	assert_true(spf_record_is_spf1("v=spf1 -all", 11));
	assert_true(spf_record_is_spf1("V=SpF1 mx", 9));
	assert_false(spf_record_is_spf1("v=spf10", 7));
	assert_false(spf_record_is_spf1("v=spf1mx", 8)); /* joined strings, §4.5 */
	assert_false(spf_record_is_spf1(" v=spf1", 7));
	assert_false(spf_record_is_spf1("v=spf", 5));
}

/* ======================================================= macros */

static struct spf_ip ip4_192_0_2_3;
static struct spf_ip ip6_2001_db8__cb01;

static struct spf_macro_ctx rfc_ctx(const struct spf_ip *ip)
{
	static const char sender[] = "strong-bad@email.example.com";
	struct spf_macro_ctx m;
	memset(&m, 0, sizeof(m));
	m.sender = sender;
	m.sender_len = strlen(sender);
	m.local = sender;
	m.local_len = 10;
	m.sender_dom = sender + 11;
	m.sender_dom_len = strlen(sender + 11);
	m.domain = m.sender_dom;
	m.domain_len = m.sender_dom_len;
	m.helo = "mx.example.org";
	m.helo_len = strlen(m.helo);
	m.ptr = "mx.example.org";
	m.ptr_len = strlen(m.ptr);
	m.receiver = "example.net";
	m.receiver_len = strlen(m.receiver);
	m.ip = ip;
	m.now = 1234567890;
	return m;
}

static void expect(const struct spf_macro_ctx *m, enum spf_macro_mode mode, const char *in,
                   const char *want)
{
	struct tbuf b = TBUF_INIT(4096);
	int rc = spf_macro_expand(in, strlen(in), m, mode, &b);
	if (rc != TERN_OK)
		fail_msg("%s: rc %d", in, rc);
	if (strcmp(b.data ? b.data : "", want) != 0)
		fail_msg("%s expanded to \"%s\", want \"%s\"", in, b.data ? b.data : "", want);
	tbuf_free(&b);
}

/* RFC 7208 §7.4, every example. */
static void test_macro_rfc7208_examples(void **state)
{
	struct spf_macro_ctx m = rfc_ctx(&ip4_192_0_2_3);
	const enum spf_macro_mode D = SPF_MACRO_DOMAIN;

	expect(&m, D, "%{s}", "strong-bad@email.example.com");
	expect(&m, D, "%{o}", "email.example.com");
	expect(&m, D, "%{d}", "email.example.com");
	expect(&m, D, "%{d4}", "email.example.com");
	expect(&m, D, "%{d3}", "email.example.com");
	expect(&m, D, "%{d2}", "example.com");
	expect(&m, D, "%{d1}", "com");
	expect(&m, D, "%{dr}", "com.example.email");
	expect(&m, D, "%{d2r}", "example.email");
	expect(&m, D, "%{l}", "strong-bad");
	expect(&m, D, "%{l-}", "strong.bad");
	expect(&m, D, "%{lr}", "strong-bad");
	expect(&m, D, "%{lr-}", "bad.strong");
	expect(&m, D, "%{l1r-}", "strong");
	expect(&m, D, "%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com");
	expect(&m, D, "%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com");
	expect(&m, D, "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}",
	       "bad.strong.lp.3.2.0.192.in-addr._spf.example.com");
	expect(&m, D, "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}",
	       "3.2.0.192.in-addr.strong.lp._spf.example.com");
	expect(&m, D, "%{d2}.trusted-domains.example.net",
	       "example.com.trusted-domains.example.net");

	/* The IPv6 example. The RFC prints the nibbles in lowercase; tern
	 * writes them uppercase, as pyspf does and as the OpenSPF suite
	 * expects (v-macro-ip6). DNS names compare without regard to case,
	 * so the query is the same; the text is compared case-blind. */
	struct spf_macro_ctx m6 = rfc_ctx(&ip6_2001_db8__cb01);
	struct tbuf b = TBUF_INIT(4096);
	const char *in = "%{ir}.%{v}._spf.%{d2}";
	assert_int_equal(spf_macro_expand(in, strlen(in), &m6, D, &b), TERN_OK);
	assert_int_equal(strcasecmp(b.data, "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d."
	                                    "0.1.0.0.2.ip6._spf.example.com"),
	                 0);
	assert_non_null(strstr(b.data, ".B.C.")); /* uppercase, as the suite wants */
	tbuf_free(&b);
}

static void test_macro_more(void **state)
{
	struct spf_macro_ctx m = rfc_ctx(&ip4_192_0_2_3);
	const enum spf_macro_mode D = SPF_MACRO_DOMAIN, E = SPF_MACRO_EXPLAIN;

	/* pyspf's doctests */
	expect(&m, D, "%{p}", "mx.example.org");
	expect(&m, D, "%{p2}", "example.org");
	expect(&m, D, "%{p2}.trusted-domains.example.net",
	       "example.org.trusted-domains.example.net");
	expect(&m, E, "%{c}", "192.0.2.3");
	expect(&m, E, "%{r}", "example.net");
	expect(&m, E, "%{t}", "1234567890");
	expect(&m, D, "%{h}", "mx.example.org");
	expect(&m, D, "%{i}", "192.0.2.3");
	expect(&m, D, "%{v}", "in-addr");

	/* escapes: %% %_ %- */
	expect(&m, D, "macro%%percent%_%_space%-url-space.example.com",
	       "macro%percent  space%20url-space.example.com");
	/* uppercase: URL escaping of everything not unreserved */
	struct spf_macro_ctx u = m;
	u.local = "~jack&jill=up-a_b3.c";
	u.local_len = strlen(u.local);
	expect(&u, E, "http://example.com/why.html?l=%{L}",
	       "http://example.com/why.html?l=~jack%26jill%3Dup-a_b3.c");
	expect(&m, D, "%{D2}", "example.com");
	/* several delimiters, empty parts kept, big digit counts */
	u.local = "foo-bar+zip+quux";
	u.local_len = strlen(u.local);
	expect(&u, D, "%{l2r+-}", "bar.foo");
	u.local = "-a--b-";
	u.local_len = strlen(u.local);
	expect(&u, D, "%{l-}", ".a..b.");
	expect(&m, D, "%{d127}", "email.example.com");
	expect(&m, D, "%{d99999999999}", "email.example.com");
	expect(&m, D, "%{dR}", "com.example.email"); /* "r" is case-insensitive */
	/* p and r without values */
	struct spf_macro_ctx n = m;
	n.ptr = NULL;
	n.ptr_len = 0;
	n.receiver = NULL;
	n.receiver_len = 0;
	expect(&n, D, "%{p}", "unknown");
	expect(&n, E, "%{r}", "unknown");
	/* IPv6 c and v */
	struct spf_macro_ctx m6 = rfc_ctx(&ip6_2001_db8__cb01);
	expect(&m6, E, "%{c} %{v}", "2001:db8::cb01 ip6");
	/* SP is literal text only in explanations */
	expect(&m, E, "a b", "a b");
}

static void test_macro_syntax(void **state)
{
	static const char *const bad_domain[] = {
	    "%",     "%x",     "%{",  "%{d",  "%{}",  "%{q}", "%{d0}",       "%{d1x}", "%{d.r}",
	    "%(ir)", "foo%.x", "a b", "%{c}", "%{r}", "%{t}", "caf\xc3\xa9", "\x01",   "%{dr.-x}",
	};
	for (size_t i = 0; i < sizeof(bad_domain) / sizeof(bad_domain[0]); i++) {
		if (spf_macro_check(bad_domain[i], strlen(bad_domain[i]), SPF_MACRO_DOMAIN) !=
		    TERN_ESYNTAX)
			fail_msg("\"%s\" accepted", bad_domain[i]);
	}
	assert_int_equal(spf_macro_check("%{c} %{r} %{t}", 14, SPF_MACRO_EXPLAIN), TERN_OK);
	assert_int_equal(spf_macro_check("The %{x}-files.", 15, SPF_MACRO_EXPLAIN), TERN_ESYNTAX);
	assert_int_equal(spf_macro_check("", 0, SPF_MACRO_DOMAIN), TERN_OK);

	/* an error leaves the output as it was */
	struct spf_macro_ctx m = rfc_ctx(&ip4_192_0_2_3);
	struct tbuf b = TBUF_INIT(100);
	assert_int_equal(spf_macro_expand("%{d}%", 5, &m, SPF_MACRO_DOMAIN, &b), TERN_ESYNTAX);
	assert_int_equal(b.len, 0);
	tbuf_free(&b);

	assert_true(spf_macro_uses_ptr("%{p}", 4));
	assert_true(spf_macro_uses_ptr("x.%{P2r}.y", 10));
	assert_false(spf_macro_uses_ptr("%%{p}", 5)); /* "%%" then "{p}" */
	assert_false(spf_macro_uses_ptr("%{d}.p", 6));
}

static void test_macro_output_caps(void **state)
{
	struct spf_macro_ctx m = rfc_ctx(&ip4_192_0_2_3);
	struct tbuf b = TBUF_INIT(20);

	/* a name may not be cut: the caller gets an error */
	assert_int_equal(spf_macro_expand("%{s}%{s}", 8, &m, SPF_MACRO_DOMAIN, &b), TERN_ELIMIT);
	tbuf_free(&b);
	/* an explanation may: exactly the cap, the rest dropped */
	tbuf_init(&b, 20);
	assert_int_equal(spf_macro_expand("%{s}%{s}", 8, &m, SPF_MACRO_EXPLAIN, &b), TERN_OK);
	assert_int_equal(b.len, 20);
	assert_memory_equal(b.data, "strong-bad@email.exa", 20);
	tbuf_free(&b);
}

static void test_domain_spec(void **state)
{
	static const char *const good[] = {
	    "example.com",
	    "example.com.",
	    "%{d}",
	    "foo.%{d}.com",
	    "_spf.%{d2}",
	    "a.xn--zckzah",
	    "foo:bar/baz.example.com",
	    "x.123-456",
	    "%{ir}.%{v}._spf.%{d2}",
	    "%{d}%%",
	    ".com",
	};
	static const char *const bad[] = {
	    "",
	    "museum",
	    "museum.",
	    "abc.123",
	    "example.-com",
	    "example.com-",
	    "%{d}.",
	    "%{d}com",
	    "example.com:8080",
	    "example.com/24",
	    "example..",
	    "foo.c_m",
	};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		if (spf_domain_spec_check(good[i], strlen(good[i])) != TERN_OK)
			fail_msg("\"%s\" refused", good[i]);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (spf_domain_spec_check(bad[i], strlen(bad[i])) != TERN_ESYNTAX)
			fail_msg("\"%s\" accepted", bad[i]);
	}
}

static void test_target_name(void **state)
{
	char out[SPF_NAME_MAX + 1];
	size_t n;

	assert_true(spf_target_name("example.com.", 12, out, &n));
	assert_string_equal(out, "example.com");
	assert_int_equal(n, 11);
	assert_false(spf_target_name("a..example.com", 14, out, &n));
	assert_false(spf_target_name("", 0, out, &n));
	assert_false(spf_target_name(".", 1, out, &n));
	assert_false(spf_target_name(".example.com", 12, out, &n));
	char l63[80], l64[80];
	memset(l63, 'a', 63);
	memcpy(l63 + 63, ".example.com", 13);
	memset(l64, 'a', 64);
	memcpy(l64 + 64, ".example.com", 13);
	assert_true(spf_target_name(l63, strlen(l63), out, &n));
	assert_false(spf_target_name(l64, strlen(l64), out, &n));

	/* §7.3: over 253, whole labels go from the left */
	char big[600];
	size_t o = 0;
	for (int i = 0; i < 30; i++)
		o += (size_t)snprintf(big + o, sizeof(big) - o, "label%02d.", i);
	o += (size_t)snprintf(big + o, sizeof(big) - o, "example.com");
	assert_true(spf_target_name(big, o, out, &n));
	assert_true(n <= 253);
	assert_true(n > 253 - 9);
	assert_string_equal(out + n - 11, "example.com");
	assert_true(strncmp(out, "label", 5) == 0); /* starts at a label boundary */
	/* one label over 253: nothing can be left */
	char huge[300];
	memset(huge, 'x', 299);
	huge[299] = '\0';
	assert_false(spf_target_name(huge, 299, out, &n));
}

/* ======================================================= the evaluator */

struct run {
	struct zone z;
	struct spf_request req;
	struct spf_limits lim;
	struct spf_outcome out;
};

static void run_init(struct run *r, const char *ip, const char *helo, const char *mailfrom)
{
	memset(r, 0, sizeof(*r));
	assert_int_equal(spf_ip_parse(ip, &r->req.ip), TERN_OK);
	r->req.helo = helo;
	r->req.mailfrom = mailfrom;
	r->req.receiver = "mx.tern.example";
	r->req.now = 1700000000;
	spf_limits_default(&r->lim);
}

static enum spf_result run_check(struct run *r, enum spf_identity id)
{
	struct spf_dns dns = {zone_resolve, &r->z};
	r->z.queries = 0;
	assert_int_equal(spf_check_sync(&r->req, id, &r->lim, &dns, &r->out), TERN_OK);
	return r->out.result;
}

static void test_helo_identity(void **state)
{
	struct run r;
	run_init(&r, "192.0.2.10", "mail.example.com", "someone@other.example");
	zone_add(&r.z, "mail.example.com", DNS_TXT, "v=spf1 exists:%{l}.%{o}.s.example -all");
	zone_add(&r.z, "postmaster.mail.example.com.s.example", DNS_A, "127.0.0.2");
	zone_add(&r.z, "other.example", DNS_TXT, "v=spf1 -all");

	/* §2.3: <sender> is postmaster@HELO, <domain> the HELO name */
	assert_int_equal(run_check(&r, SPF_ID_HELO), SPF_PASS);
	assert_int_equal(r.out.identity, SPF_ID_HELO);
	assert_string_equal(r.out.domain, "mail.example.com");
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_FAIL);
	assert_string_equal(r.out.domain, "other.example");

	/* a null reverse-path is postmaster@HELO for MAIL FROM too (§2.4) */
	r.req.mailfrom = "";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PASS);
	assert_string_equal(r.out.domain, "mail.example.com");
	zone_free(&r.z);

	assert_true(spf_helo_checkable("mail.example.com"));
	assert_true(spf_helo_checkable("mail.example.com."));
	assert_true(spf_helo_checkable("a-1.b_2.example"));
	assert_false(spf_helo_checkable(NULL));
	assert_false(spf_helo_checkable(""));
	assert_false(spf_helo_checkable("localhost"));
	assert_false(spf_helo_checkable("[192.0.2.1]"));
	assert_false(spf_helo_checkable("192.0.2.1"));
	assert_false(spf_helo_checkable("a..example.com"));
	assert_false(spf_helo_checkable("JUMPIN' JUPITER"));
	assert_false(spf_helo_checkable("m\xc3\xa4il.example.com")); /* U-label: A-labels only */
}

static void test_basic_results(void **state)
{
	struct run r;
	run_init(&r, "192.0.2.10", "mail.example.com", "a@example.com");
	zone_add(&r.z, "example.com", DNS_TXT, "v=spf1 ip4:192.0.2.0/24 -all");
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PASS);
	assert_string_equal(r.out.mechanism, "ip4:192.0.2.0/24");
	assert_string_equal(r.out.explanation, "");
	assert_int_equal(r.z.queries, 1);
	/* a zeroed spf_limits is the defaults, not a cap of 0 queries */
	memset(&r.lim, 0, sizeof(r.lim));
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PASS);
	spf_limits_default(&r.lim);

	/* no record -> none; NXDOMAIN -> none; a DNS error -> temperror */
	r.req.mailfrom = "a@norecord.example";
	zone_add(&r.z, "norecord.example", DNS_A, "192.0.2.1");
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_NONE);
	assert_true(r.out.problem[0] != '\0');
	r.req.mailfrom = "a@nowhere.example";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_NONE);
	r.req.mailfrom = "a@error.example";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_TEMPERROR);

	/* the default explanation names the domain and the client */
	r.req.ip.addr[0] = 198;
	r.req.mailfrom = "a@example.com";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_FAIL);
	assert_string_equal(r.out.mechanism, "-all");
	assert_string_equal(r.out.explanation,
	                    "example.com does not designate 198.0.2.10 as permitted sender");

	/* a domain given with a trailing dot is the same domain */
	r.req.mailfrom = "a@example.com.";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_FAIL);
	zone_free(&r.z);
}

static void test_lookup_limit(void **state)
{
	struct run r;
	run_init(&r, "192.0.2.10", "mail.example.com", "a@ten.example");
	/* ten DNS-querying terms are allowed, the eleventh is permerror */
	zone_add(&r.z, "ten.example", DNS_TXT, "v=spf1 a a a a a a a a a a ip4:192.0.2.10 -all");
	zone_add(&r.z, "ten.example", DNS_A, "198.51.100.1");
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PASS);
	assert_int_equal(r.out.lookups, 10);
	zone_add(&r.z, "eleven.example", DNS_TXT,
	         "v=spf1 a a a a a a a a a a a ip4:192.0.2.10 -all");
	zone_add(&r.z, "eleven.example", DNS_A, "198.51.100.1");
	r.req.mailfrom = "a@eleven.example";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PERMERROR);
	assert_non_null(strstr(r.out.problem, "10 DNS-querying terms"));
	assert_int_equal(r.z.queries, 11); /* the record and ten a: no 11th query */

	/* ip4, ip6, all and exp= do not count */
	zone_add(&r.z, "cheap.example", DNS_TXT,
	         "v=spf1 a a a a a a a a a a ip6:2001:db8::/32 ip4:198.51.100.0/24 "
	         "ip4:192.0.2.10 -all");
	zone_add(&r.z, "cheap.example", DNS_A, "198.51.100.1");
	r.req.mailfrom = "a@cheap.example";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PASS);

	/* includes and their terms share the one limit (§4.1) */
	zone_add(&r.z, "outer.example", DNS_TXT,
	         "v=spf1 a include:inner.example a ip4:192.0.2.10 -all");
	zone_add(&r.z, "outer.example", DNS_A, "198.51.100.1");
	zone_add(&r.z, "inner.example", DNS_TXT, "v=spf1 a a a a a a a a");
	zone_add(&r.z, "inner.example", DNS_A, "198.51.100.1");
	r.req.mailfrom = "a@outer.example";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PERMERROR);
	zone_free(&r.z);
}

static void test_void_limit(void **state)
{
	struct run r;
	run_init(&r, "192.0.2.10", "mail.example.com", "a@v.example");
	zone_add(&r.z, "v.example", DNS_TXT,
	         "v=spf1 a:gone1.example mx:gone2.example exists:gone3.example ?all");
	zone_add(&r.z, "gone2.example", DNS_A, "198.51.100.7"); /* exists, no MX: void */
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PERMERROR);
	assert_int_equal(r.out.void_lookups, 3);
	assert_non_null(strstr(r.out.problem, "void"));

	/* configurable (§4.6.4 MAY): 3 allowed */
	r.lim.max_void = 3;
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_NEUTRAL);
	assert_string_equal(r.out.mechanism, "?all");
	zone_free(&r.z);
}

static void test_mx_and_ptr_name_limits(void **state)
{
	struct run r;
	run_init(&r, "192.0.2.10", "mail.example.com", "a@ten.example");
	zone_add(&r.z, "ten.example", DNS_TXT, "v=spf1 mx -all");
	zone_add(&r.z, "eleven.example", DNS_TXT, "v=spf1 mx -all");
	for (unsigned i = 0; i < 10; i++) {
		char host[64];
		snprintf(host, sizeof(host), "mx%u.example", i);
		zone_add_mx(&r.z, "ten.example", i, host);
		zone_add_mx(&r.z, "eleven.example", i, host);
		zone_add(&r.z, host, DNS_A, i == 9 ? "192.0.2.10" : "198.51.100.1");
	}
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PASS);
	assert_int_equal(r.z.queries, 12);
	zone_add_mx(&r.z, "eleven.example", 20, "mx0.example");
	r.req.mailfrom = "a@eleven.example";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PERMERROR);
	assert_non_null(strstr(r.out.problem, "more than 10 MX"));

	/* PTR: only the first 10 names are looked at, the rest ignored */
	zone_add(&r.z, "p.example", DNS_TXT, "v=spf1 ptr -all");
	for (unsigned i = 0; i < 11; i++) {
		char host[64];
		snprintf(host, sizeof(host), "h%u.p.example", i);
		zone_add(&r.z, "10.2.0.192.in-addr.arpa", DNS_PTR, host);
		zone_add(&r.z, host, DNS_A, i == 10 ? "192.0.2.10" : "198.51.100.1");
	}
	r.req.mailfrom = "a@p.example";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_FAIL);
	assert_int_equal(r.z.queries, 1 + 1 + 10);
	zone_free(&r.z);
}

static void test_query_cap_and_deadline(void **state)
{
	struct run r;
	run_init(&r, "192.0.2.10", "mail.example.com", "a@c.example");
	zone_add(&r.z, "c.example", DNS_TXT, "v=spf1 a a a a ip4:192.0.2.10 -all");
	zone_add(&r.z, "c.example", DNS_A, "198.51.100.1");
	r.lim.max_queries = 3;
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PERMERROR);
	assert_int_equal(r.z.queries, 3);
	assert_non_null(strstr(r.out.problem, "3 DNS queries"));

	/* the deadline ends a check that waits on DNS with temperror */
	struct spf_check *c = spf_check_new(&r.req, SPF_ID_MAILFROM, NULL);
	const struct spf_query *q;
	assert_non_null(c);
	assert_int_equal(spf_check_run(c, NULL, &q), SPF_STEP_QUERY);
	assert_string_equal(q->name, "c.example");
	assert_int_equal(q->type, DNS_TXT);
	spf_check_expire(c);
	assert_int_equal(spf_check_run(c, NULL, &q), SPF_STEP_DONE);
	assert_int_equal(spf_check_outcome(c)->result, SPF_TEMPERROR);
	assert_non_null(strstr(spf_check_outcome(c)->problem, "timed out"));
	spf_check_free(c);

	/* ...but once the result is fail, only its explanation is given up */
	zone_add(&r.z, "x.example", DNS_TXT, "v=spf1 -all exp=why.x.example");
	r.req.mailfrom = "a@x.example";
	c = spf_check_new(&r.req, SPF_ID_MAILFROM, NULL);
	assert_non_null(c);
	struct spf_answer ans;
	enum spf_step st = spf_check_run(c, NULL, &q);
	while (st == SPF_STEP_QUERY && strcmp(q->name, "why.x.example") != 0) {
		zone_resolve(&r.z, q, &ans);
		st = spf_check_run(c, &ans, &q);
	}
	assert_int_equal(st, SPF_STEP_QUERY);
	spf_check_expire(c);
	assert_int_equal(spf_check_run(c, NULL, &q), SPF_STEP_DONE);
	assert_int_equal(spf_check_outcome(c)->result, SPF_FAIL);
	assert_string_equal(spf_check_outcome(c)->explanation,
	                    "x.example does not designate 192.0.2.10 as permitted sender");
	spf_check_free(c);
	zone_free(&r.z);
}

static void test_invalid_target_is_not_asked(void **state)
{
	struct run r;
	/* a macro expands to a name with a label over 63 octets: no match,
	 * and no query for it */
	run_init(&r, "192.0.2.10", "%%%%%%%%%%%%%%%%%%%%%%%%%%%%", "a@t.example");
	zone_add(&r.z, "t.example", DNS_TXT, "v=spf1 a:%{H}.bar.example -all");
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_FAIL);
	assert_int_equal(r.z.queries, 1);
	/* through include: it is none, hence permerror (§5.2) */
	zone_add(&r.z, "u.example", DNS_TXT, "v=spf1 include:%{H}.bar.example -all");
	r.req.mailfrom = "a@u.example";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PERMERROR);
	/* an odd but well-formed name is asked as it is */
	r.req.helo = "JUMPIN' JUPITER";
	r.req.mailfrom = "a@t.example";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_FAIL);
	assert_int_equal(r.z.queries, 2);
	assert_string_equal(r.z.last, "JUMPIN%27%20JUPITER.bar.example");
	zone_free(&r.z);
}

static void test_ipv6_client(void **state)
{
	struct run r;
	run_init(&r, "2001:db8::10", "mail.example.com", "a@six.example");
	zone_add(&r.z, "six.example", DNS_TXT, "v=spf1 a/24//64 exists:%{ir}.x.example -all");
	zone_add(&r.z, "six.example", DNS_A, "192.0.2.10");
	zone_add(&r.z, "six.example", DNS_AAAA, "2001:db8::1");
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PASS);
	assert_int_equal(r.z.last_type, DNS_AAAA); /* a: AAAA for an IPv6 client */
	assert_string_equal(r.out.mechanism, "a/24//64");

	zone_add(&r.z, "seven.example", DNS_TXT, "v=spf1 exists:%{ir}.x.example -all");
	zone_add(&r.z, "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.x.example",
	         DNS_A, "127.0.0.2");
	r.req.mailfrom = "a@seven.example";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PASS);
	assert_int_equal(r.z.last_type, DNS_A); /* exists: always A (§5.7) */
	zone_free(&r.z);
}

static void test_ptr_macro_computed_once(void **state)
{
	struct run r;
	run_init(&r, "192.0.2.10", "mail.example.com", "a@p.example");
	zone_add(&r.z, "p.example", DNS_TXT,
	         "v=spf1 exists:%{p}.a.example exists:%{p}.b.example -all exp=why.p.example");
	zone_add(&r.z, "why.p.example", DNS_TXT, "%{p} / %{c} / %{r} / %{t}");
	zone_add(&r.z, "10.2.0.192.in-addr.arpa", DNS_PTR, "host.p.example.");
	zone_add(&r.z, "10.2.0.192.in-addr.arpa", DNS_PTR, "other.example");
	zone_add(&r.z, "host.p.example", DNS_A, "192.0.2.10");
	zone_add(&r.z, "other.example", DNS_A, "192.0.2.10");
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_FAIL);
	/* record, PTR, 2 validations, 2 exists, exp TXT: the names are
	 * validated once for the whole check */
	assert_int_equal(r.z.queries, 7);
	assert_string_equal(r.out.explanation,
	                    "host.p.example / 192.0.2.10 / mx.tern.example / 1700000000");
	zone_free(&r.z);
}

static void test_explanation_is_safe(void **state)
{
	struct run r;
	run_init(&r, "192.0.2.10", "evil\x01\x7f\xc3\xa9.example", "a\r\nb@e.example");
	zone_add(&r.z, "e.example", DNS_TXT, "v=spf1 -all exp=why.e.example");
	zone_add(&r.z, "why.e.example", DNS_TXT, "helo %{h} sender %{s}");
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_FAIL);
	assert_string_equal(r.out.explanation, "helo evil????.example sender a??b@e.example");

	/* cut at SPF_EXP_MAX */
	char big[SPF_EXP_MAX * 2];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	zone_add(&r.z, "long.example", DNS_TXT, "v=spf1 -all exp=why.long.example");
	zone_add(&r.z, "why.long.example", DNS_TXT, big);
	r.req.mailfrom = "a@long.example";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_FAIL);
	assert_int_equal(strlen(r.out.explanation), SPF_EXP_MAX);
	zone_free(&r.z);
}

static void test_include_and_redirect(void **state)
{
	struct run r;
	run_init(&r, "192.0.2.10", "mail.example.com", "a@i.example");
	zone_add(&r.z, "i.example", DNS_TXT, "v=spf1 -include:bad.example include:ok.example -all");
	zone_add(&r.z, "bad.example", DNS_TXT, "v=spf1 ip4:198.51.100.0/24 -all");
	zone_add(&r.z, "ok.example", DNS_TXT, "v=spf1 redirect=_spf.ok.example");
	zone_add(&r.z, "_spf.ok.example", DNS_TXT, "v=spf1 ip4:192.0.2.0/24 -all");
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PASS);
	assert_string_equal(r.out.mechanism, "include:ok.example");

	/* redirect= is ignored when the record has "all" (§5.1, §6.1) */
	zone_add(&r.z, "j.example", DNS_TXT, "v=spf1 redirect=_spf.ok.example ?all");
	r.req.mailfrom = "a@j.example";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_NEUTRAL);
	/* redirect to nothing is permerror, not none */
	zone_add(&r.z, "k.example", DNS_TXT, "v=spf1 redirect=gone.example");
	r.req.mailfrom = "a@k.example";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_PERMERROR);
	/* no mechanism matched, no redirect: neutral, mechanism "default" */
	zone_add(&r.z, "l.example", DNS_TXT, "v=spf1 ip4:198.51.100.1");
	r.req.mailfrom = "a@l.example";
	assert_int_equal(run_check(&r, SPF_ID_MAILFROM), SPF_NEUTRAL);
	assert_string_equal(r.out.mechanism, "default");
	zone_free(&r.z);
}

/* ======================================================= recording */

/* Checks the things every Received-SPF must be: one field, CRLF only at
 * folds (each followed by a tab) and at the end, printable ASCII. */
static void assert_header_shape(const char *h, size_t len, bool long_tokens)
{
	assert_true(len > 2);
	assert_memory_equal(h + len - 2, "\r\n", 2);
	size_t col = 0;
	for (size_t i = 0; i < len - 2; i++) {
		unsigned char c = (unsigned char)h[i];
		if (c == '\r') {
			assert_int_equal(h[i + 1], '\n');
			assert_int_equal(h[i + 2], '\t');
			i++;
			col = 0;
			continue;
		}
		assert_true((c >= 0x20 && c < 0x7f) || c == '\t');
		col++;
		/* RFC 5322 §2.1.1: 78 characters (a tab counts as 8 here) */
		if (c == '\t')
			col += 7;
		assert_true(col <= 78 || long_tokens);
		assert_true(col <= 998); /* the hard limit, whatever the tokens */
	}
	assert_true(col > 0);
}

static void test_received_spf(void **state)
{
	struct spf_request req;
	struct spf_outcome o;
	struct tbuf b = TBUF_INIT(8192);

	memset(&req, 0, sizeof(req));
	memset(&o, 0, sizeof(o));
	spf_ip_parse("192.0.2.1", &req.ip);
	req.helo = "foo.example.com";
	req.mailfrom = "myname@example.com";
	req.receiver = "mybox.example.org";
	o.result = SPF_PASS;
	o.identity = SPF_ID_MAILFROM;
	tern_strlcpy(o.domain, "example.com", sizeof(o.domain));
	tern_strlcpy(o.mechanism, "ip4:192.0.2.1", sizeof(o.mechanism));
	assert_int_equal(spf_received_spf(&req, &o, &b), TERN_OK);
	assert_string_equal(b.data,
	                    "Received-SPF: pass (mybox.example.org: domain of myname@example.com "
	                    "designates\r\n"
	                    "\t192.0.2.1 as permitted sender) client-ip=192.0.2.1;\r\n"
	                    "\tenvelope-from=\"myname@example.com\"; helo=foo.example.com;\r\n"
	                    "\treceiver=mybox.example.org; identity=mailfrom;\r\n"
	                    "\tmechanism=\"ip4:192.0.2.1\"\r\n");
	assert_header_shape(b.data, b.len, false);

	/* HELO identity: no envelope-from; errors carry problem=, no mechanism */
	tbuf_reset(&b);
	o.identity = SPF_ID_HELO;
	o.result = SPF_PERMERROR;
	o.mechanism[0] = '\0';
	tern_strlcpy(o.problem, "in the SPF record of example.com: unknown mechanism \"moo\"",
	             sizeof(o.problem));
	assert_int_equal(spf_received_spf(&req, &o, &b), TERN_OK);
	assert_header_shape(b.data, b.len, false);
	assert_non_null(strstr(b.data, "Received-SPF: permerror ("));
	assert_null(strstr(b.data, "envelope-from"));
	assert_null(strstr(b.data, "mechanism="));
	assert_non_null(strstr(b.data, "identity=helo;"));
	assert_non_null(strstr(b.data, "problem=\"in the SPF record of example.com: unknown "));
	assert_non_null(strstr(b.data, "\\\"moo\\\"\"\r\n"));

	/* IPv6 client-ip is a quoted-string (':' is not atext) */
	tbuf_reset(&b);
	spf_ip_parse("2001:db8::1", &req.ip);
	o.result = SPF_NEUTRAL;
	tern_strlcpy(o.mechanism, "default", sizeof(o.mechanism));
	o.problem[0] = '\0';
	assert_int_equal(spf_received_spf(&req, &o, &b), TERN_OK);
	assert_non_null(strstr(b.data, "client-ip=\"2001:db8::1\";"));
	assert_non_null(strstr(b.data, "mechanism=default\r\n"));
	tbuf_free(&b);
}

static void test_received_spf_hostile_values(void **state)
{
	struct spf_request req;
	struct spf_outcome o;
	struct tbuf b = TBUF_INIT(8192);
	char longfrom[1000];

	memset(&req, 0, sizeof(req));
	memset(&o, 0, sizeof(o));
	spf_ip_parse("192.0.2.1", &req.ip);
	req.helo = "x\r\nX-Injected: yes\r\n (evil) \\\"\x80";
	memset(longfrom, 'a', sizeof(longfrom) - 13);
	memcpy(longfrom + sizeof(longfrom) - 13, "@example.com", 13);
	req.mailfrom = longfrom;
	req.receiver = "mx(1).example";
	o.result = SPF_FAIL;
	o.identity = SPF_ID_MAILFROM;
	tern_strlcpy(o.mechanism, "-all", sizeof(o.mechanism));
	assert_int_equal(spf_received_spf(&req, &o, &b), TERN_OK);
	assert_header_shape(b.data, b.len, true);
	/* no injected line, no bare CR/LF; the helo is one quoted-string */
	assert_null(strstr(b.data, "\r\nX-Injected"));
	assert_non_null(strstr(b.data, "helo=\"x??X-Injected: yes?? (evil) \\\\\\\"?\";"));
	/* the comment holds no parenthesis of the sender's */
	assert_non_null(strstr(b.data, "(mx?1?.example: domain of\r\n\taaaa"));
	/* cut at 256 bytes */
	assert_non_null(strstr(b.data, "aaa...\""));
	assert_true(b.len < 2000);
	tbuf_free(&b);

	/* a too-small buffer leaves nothing half-written */
	struct tbuf small = TBUF_INIT(40);
	assert_int_equal(tbuf_append_str(&small, "X: y\r\n"), TERN_OK);
	assert_int_equal(spf_received_spf(&req, &o, &small), TERN_ELIMIT);
	assert_int_equal(small.len, 6);
	assert_string_equal(small.data, "X: y\r\n");
	tbuf_free(&small);
}

static void test_authres(void **state)
{
	struct spf_request req;
	struct spf_outcome o;
	struct tbuf b = TBUF_INIT(1024);

	memset(&req, 0, sizeof(req));
	memset(&o, 0, sizeof(o));
	req.helo = "mail.example.org";
	req.mailfrom = "user@example.net";
	o.result = SPF_PASS;
	o.identity = SPF_ID_MAILFROM;
	tern_strlcpy(o.domain, "example.net", sizeof(o.domain));
	assert_int_equal(spf_authres(&req, &o, &b), TERN_OK);
	assert_string_equal(b.data, "spf=pass smtp.mailfrom=example.net");
	tbuf_reset(&b);
	o.identity = SPF_ID_HELO;
	o.result = SPF_NONE;
	assert_int_equal(spf_authres(&req, &o, &b), TERN_OK);
	assert_string_equal(b.data, "spf=none smtp.helo=mail.example.org");
	tbuf_reset(&b);
	req.helo = "[192.0.2.1] \"x\"";
	assert_int_equal(spf_authres(&req, &o, &b), TERN_OK);
	assert_string_equal(b.data, "spf=none smtp.helo=\"[192.0.2.1] \\\"x\\\"\"");
	/* RFC 2045 tspecials and odd bytes are quoted, though atext in RFC 5322 */
	tbuf_reset(&b);
	req.helo = "a/b=c?d.example";
	assert_int_equal(spf_authres(&req, &o, &b), TERN_OK);
	assert_string_equal(b.data, "spf=none smtp.helo=\"a/b=c?d.example\"");
	tbuf_reset(&b);
	req.helo = "x\x01y.example";
	assert_int_equal(spf_authres(&req, &o, &b), TERN_OK);
	assert_string_equal(b.data, "spf=none smtp.helo=\"x?y.example\"");
	tbuf_free(&b);

	for (int r = SPF_NONE; r <= SPF_PERMERROR; r++)
		assert_true(strlen(spf_result_name((enum spf_result)r)) > 0);
	assert_string_equal(spf_result_name(SPF_SOFTFAIL), "softfail");
	assert_string_equal(spf_identity_name(SPF_ID_HELO), "helo");
}

/* ======================================================= async adapter */

/* A DNS "server" that never answers: a bound UDP socket nobody reads. The
 * adapter's own deadline must end the check; no real DNS is involved. */
struct blackhole {
	int fd;
	char addr[64];
};

static void blackhole_open(struct blackhole *b)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	b->fd = socket(AF_INET, SOCK_DGRAM, 0);
	assert_true(b->fd >= 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(b->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(b->fd, (struct sockaddr *)&sa, &len), 0);
	snprintf(b->addr, sizeof(b->addr), "127.0.0.1@%u", ntohs(sa.sin_port));
}

struct async_run {
	int calls;
	struct spf_verdict v;
	struct event_base *base;
};

static void async_done(void *arg, const struct spf_verdict *v)
{
	struct async_run *r = arg;
	r->calls++;
	r->v = *v;
	event_base_loopbreak(r->base);
}

/* Runs the loop until the callback or `ms` (a bound, not an assertion). */
static void loop_for(struct event_base *base, unsigned ms)
{
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
	event_base_loopexit(base, &tv);
	event_base_dispatch(base);
}

static void test_async_deadline_and_cancel(void **state)
{
	struct blackhole bh;
	struct async_run r;
	struct spf_request req;
	struct spf_limits lim;
	char err[256];

	blackhole_open(&bh);
	memset(&r, 0, sizeof(r));
	r.base = event_base_new();
	assert_non_null(r.base);
	const char *fwd[] = {bh.addr};
	struct dns_resolver *res = dns_resolver_new(r.base, fwd, 1, NULL, err, sizeof(err));
	assert_non_null(res);
	memset(&req, 0, sizeof(req));
	spf_ip_parse("192.0.2.1", &req.ip);
	req.helo = "mail.example.com";
	req.mailfrom = "a@example.com";
	req.receiver = "mx.tern.example";
	spf_limits_default(&lim);
	lim.timeout_ms = 200;

	/* the deadline ends each identity with temperror; the callback runs
	 * once, from the loop, never from inside spf_check_async */
	struct spf_async *a = spf_check_async(res, r.base, &req, &lim, async_done, &r);
	assert_non_null(a);
	assert_int_equal(r.calls, 0);
	loop_for(r.base, 10000);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.v.helo.result, SPF_TEMPERROR);
	assert_int_equal(r.v.helo.identity, SPF_ID_HELO);
	assert_non_null(strstr(r.v.helo.problem, "timed out"));
	assert_int_equal(r.v.mailfrom.result, SPF_TEMPERROR);
	assert_int_equal(r.v.mailfrom.identity, SPF_ID_MAILFROM);
	assert_string_equal(r.v.mailfrom.domain, "example.com");

	/* cancelled before the loop ran: no callback, nothing leaks */
	r.calls = 0;
	a = spf_check_async(res, r.base, &req, &lim, async_done, &r);
	assert_non_null(a);
	spf_check_async_cancel(a);
	loop_for(r.base, 400);
	assert_int_equal(r.calls, 0);

	/* cancelled with a query outstanding: the same */
	a = spf_check_async(res, r.base, &req, &lim, async_done, &r);
	assert_non_null(a);
	loop_for(r.base, 50);
	assert_int_equal(r.calls, 0);
	spf_check_async_cancel(a);
	loop_for(r.base, 400);
	assert_int_equal(r.calls, 0);

	/* no DNS needed (a HELO that is no domain, the null path): the
	 * answer still comes from the loop */
	req.helo = "[192.0.2.1]";
	req.mailfrom = "";
	a = spf_check_async(res, r.base, &req, &lim, async_done, &r);
	assert_non_null(a);
	assert_int_equal(r.calls, 0);
	loop_for(r.base, 10000);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.v.helo.result, SPF_NONE);
	assert_int_equal(r.v.mailfrom.result, SPF_NONE);
	assert_int_equal(r.v.mailfrom.queries, 0);

	dns_resolver_free(res);
	event_base_free(r.base);
	close(bh.fd);
}

static int setup(void **state)
{
	spf_ip_parse("192.0.2.3", &ip4_192_0_2_3);
	spf_ip_parse("2001:db8::cb01", &ip6_2001_db8__cb01);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ip_parse),
	    cmocka_unit_test(test_prefix_match),
	    cmocka_unit_test(test_record_parses_every_term),
	    cmocka_unit_test(test_record_syntax_errors),
	    cmocka_unit_test(test_record_size_bound),
	    cmocka_unit_test(test_record_version_selection),
	    cmocka_unit_test(test_macro_rfc7208_examples),
	    cmocka_unit_test(test_macro_more),
	    cmocka_unit_test(test_macro_syntax),
	    cmocka_unit_test(test_macro_output_caps),
	    cmocka_unit_test(test_domain_spec),
	    cmocka_unit_test(test_target_name),
	    cmocka_unit_test(test_helo_identity),
	    cmocka_unit_test(test_basic_results),
	    cmocka_unit_test(test_lookup_limit),
	    cmocka_unit_test(test_void_limit),
	    cmocka_unit_test(test_mx_and_ptr_name_limits),
	    cmocka_unit_test(test_query_cap_and_deadline),
	    cmocka_unit_test(test_invalid_target_is_not_asked),
	    cmocka_unit_test(test_ipv6_client),
	    cmocka_unit_test(test_ptr_macro_computed_once),
	    cmocka_unit_test(test_explanation_is_safe),
	    cmocka_unit_test(test_include_and_redirect),
	    cmocka_unit_test(test_received_spf),
	    cmocka_unit_test(test_received_spf_hostile_values),
	    cmocka_unit_test(test_authres),
	    cmocka_unit_test(test_async_deadline_and_cancel),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
