/*
 * test_dmarc.c — DMARC (src/policy/dmarc_*.c): the record parser with the
 * RFC 9989 examples and its error rules, the From-domain extraction, the
 * DNS Tree Walk and policy discovery over an in-memory DNS (RFC 9989 §B.4
 * examples, psd=y/n, the 8-query limit, answers out of order, DNS errors),
 * alignment relaxed and strict, policy selection p/sp/np/t, the decision
 * per listener profile, and a cross-check of organizational domains with the
 * Public Suffix List test vectors (tests/data/dmarc/, see SOURCE.md there).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/err.h"
#include "policy/dmarc.h"
#include "testdata.h"

#define S(lit) lit, sizeof(lit) - 1

/* ------------------------------------------------------------ records */

static struct dmarc_record parse_ok(const char *txt)
{
	struct dmarc_record r;
	memset(&r, 0x5a, sizeof(r));
	assert_int_equal(dmarc_record_parse(txt, strlen(txt), &r), DMARC_PARSE_OK);
	return r;
}

static void test_record_rfc_examples(void **state)
{
	/* RFC 9989 §B.2.1 (the zone file's strings concatenated) */
	struct dmarc_record r = parse_ok("v=DMARC1; p=none; rua=mailto:dmarc-feedback@example.com");
	assert_int_equal(r.p, DMARC_POLICY_NONE);
	assert_int_equal(r.sp, DMARC_POLICY_UNSET);
	assert_int_equal(r.rua.n, 1);
	assert_string_equal(r.rua.uri[0], "mailto:dmarc-feedback@example.com");
	assert_false(r.adkim_strict);
	assert_false(r.aspf_strict);
	assert_false(r.testing);
	assert_int_equal(r.psd, 'u');
	assert_int_equal(r.fo, DMARC_FO_0);
	assert_int_equal(r.n_bad, 0);

	/* §B.2.2 */
	r = parse_ok("v=DMARC1; p=none; rua=mailto:dmarc-feedback@example.com; "
	             "ruf=mailto:auth-reports@example.com");
	assert_int_equal(r.ruf.n, 1);
	assert_string_equal(r.ruf.uri[0], "mailto:auth-reports@example.com");

	/* §B.2.3's third-party authorisation record */
	r = parse_ok("v=DMARC1;");
	assert_int_equal(r.p, DMARC_POLICY_UNSET);
	assert_true(dmarc_record_usable(&r)); /* absent p: p=none (§4.7) */

	/* §B.2.5: a comma-separated list split across strings, and t=y */
	r = parse_ok("v=DMARC1; p=quarantine; rua=mailto:dmarc-feedback@example.com,"
	             "mailto:tld-test@thirdparty.example.net; t=y");
	assert_int_equal(r.p, DMARC_POLICY_QUARANTINE);
	assert_int_equal(r.rua.n, 2);
	assert_string_equal(r.rua.uri[1], "mailto:tld-test@thirdparty.example.net");
	assert_true(r.testing);
	assert_true(r.t_set);

	/* §B.3.1 */
	r = parse_ok("v=DMARC1; p=reject; aspf=r;\n rua=mailto:dmarc-feedback@example.com");
	/* a line feed inside a value is not a dmarc-value: that tag is dropped */
	assert_int_equal(r.p, DMARC_POLICY_REJECT);
	assert_int_equal(r.rua.n, 0);
	assert_int_equal(r.n_bad, 1);
	r = parse_ok("v=DMARC1; p=reject; aspf=r; rua=mailto:dmarc-feedback@example.com");
	assert_int_equal(r.rua.n, 1);
}

static void test_record_every_tag(void **state)
{
	struct dmarc_record r =
	    parse_ok("v=DMARC1;p=reject;sp=quarantine;np=none;adkim=s;aspf=s;t=n;psd=n;"
	             "fo=1:d:s;ri=3600;pct=100;rua=mailto:a@example.org!10m, "
	             "https://r.example/x;ruf=mailto:f@example.org");
	assert_int_equal(r.p, DMARC_POLICY_REJECT);
	assert_int_equal(r.sp, DMARC_POLICY_QUARANTINE);
	assert_int_equal(r.np, DMARC_POLICY_NONE);
	assert_true(r.adkim_strict);
	assert_true(r.aspf_strict);
	assert_false(r.testing);
	assert_int_equal(r.psd, 'n');
	assert_int_equal(r.fo, DMARC_FO_1 | DMARC_FO_D | DMARC_FO_S);
	assert_int_equal(r.ri, 3600);
	assert_int_equal(r.pct, 100);
	assert_int_equal(r.rua.n, 2);
	assert_string_equal(r.rua.uri[0], "mailto:a@example.org"); /* obsolete size dropped */
	assert_string_equal(r.rua.uri[1], "https://r.example/x");
	assert_int_equal(r.n_bad, 0);
	assert_int_equal(r.n_unknown, 0);

	/* names and keyword values are case-insensitive; blanks around = and ; */
	r = parse_ok("v = DMARC1 ;  P = Reject ; ADKIM=S\t; psd=Y;");
	assert_int_equal(r.p, DMARC_POLICY_REJECT);
	assert_true(r.adkim_strict);
	assert_int_equal(r.psd, 'y');
	assert_int_equal(r.n_bad, 0);
}

static void test_record_not_dmarc(void **state)
{
	static const char *const cases[] = {
	    "",
	    "p=reject; v=DMARC1", /* v not first */
	    "v=DMARC2; p=reject", /* another version */
	    "v=dmarc1; p=reject", /* the value is case-sensitive */
	    "v=DMARC1 p=reject",  /* no separator: the value is not DMARC1 */
	    "v=spf1 -all",
	    "vv=DMARC1; p=reject",
	    "v:DMARC1; p=reject",
	    "=DMARC1",
	};
	struct dmarc_record r;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (dmarc_record_parse(cases[i], strlen(cases[i]), &r) != DMARC_PARSE_NOT_DMARC)
			fail_msg("accepted as DMARC: \"%s\"", cases[i]);
	}
	/* a NUL inside the version ends it differently: not DMARC */
	assert_int_equal(dmarc_record_parse(S("v=DMARC1\0; p=reject"), &r), DMARC_PARSE_NOT_DMARC);
	assert_int_equal(dmarc_record_parse(NULL, 0, &r), DMARC_PARSE_NOT_DMARC);
}

static void test_record_errors_fall_back_to_defaults(void **state)
{
	/* §4.8: syntax errors in a tag are discarded in favour of defaults */
	struct dmarc_record r =
	    parse_ok("v=DMARC1; p=reject; adkim=x; aspf=; t=maybe; psd=q; fo=0:1; ri=-5; pct=101");
	assert_int_equal(r.p, DMARC_POLICY_REJECT);
	assert_false(r.adkim_strict);
	assert_false(r.aspf_strict);
	assert_false(r.testing);
	assert_int_equal(r.psd, 'u');
	assert_int_equal(r.fo, DMARC_FO_0);
	assert_int_equal(r.ri, -1);
	assert_int_equal(r.pct, -1);
	assert_int_equal(r.n_bad, 7);

	/* unknown tags are ignored, historic rf too; a tag without '=' is bad */
	r = parse_ok("v=DMARC1; p=none; rf=afrf; foo=bar; x-y=z; junk");
	assert_int_equal(r.n_unknown, 2);
	assert_int_equal(r.n_bad, 2); /* "x-y" is not 1*ALPHA, "junk" has no value */

	/* repeated tags: the first valid one stands */
	r = parse_ok("v=DMARC1; p=none; p=reject; v=DMARC1");
	assert_int_equal(r.p, DMARC_POLICY_NONE);
	assert_int_equal(r.n_bad, 2);
	r = parse_ok("v=DMARC1; p=bogus; p=reject");
	assert_int_equal(r.p, DMARC_POLICY_REJECT);

	/* fo: each value once, 0 and 1 not together, no empty item */
	assert_int_equal(parse_ok("v=DMARC1; fo=d").fo, DMARC_FO_D);
	assert_int_equal(parse_ok("v=DMARC1; fo=s:0").fo, DMARC_FO_S | DMARC_FO_0);
	assert_int_equal(parse_ok("v=DMARC1; fo=d:d").fo, DMARC_FO_0);
	assert_int_equal(parse_ok("v=DMARC1; fo=d:").fo, DMARC_FO_0);

	/* URIs: bad ones dropped, good ones kept; '!' only as the size suffix */
	r = parse_ok("v=DMARC1; rua=mailto:ok@example.com, not a uri, mailto:noat, "
	             "mailto:x@example.com!big, 1http://x, mailto:a%2Cb@example.com");
	assert_int_equal(r.rua.n, 2);
	assert_int_equal(r.rua.n_invalid, 4);
	assert_string_equal(r.rua.uri[1], "mailto:a%2Cb@example.com");
	r = parse_ok("v=DMARC1; rua=nothing");
	assert_int_equal(r.rua.n, 0);
	assert_int_equal(r.n_bad, 1);
}

static void test_record_pct_and_t(void **state)
{
	/* RFC 9989 §A.6: pct=0 is what t=y now says; other values apply fully */
	assert_true(parse_ok("v=DMARC1; p=reject; pct=0").testing);
	assert_false(parse_ok("v=DMARC1; p=reject; pct=50").testing);
	assert_false(parse_ok("v=DMARC1; p=reject; pct=100").testing);
	/* an explicit t wins over pct, in either order */
	assert_false(parse_ok("v=DMARC1; p=reject; pct=0; t=n").testing);
	assert_false(parse_ok("v=DMARC1; t=n; p=reject; pct=0").testing);
	assert_true(parse_ok("v=DMARC1; p=reject; pct=100; t=y").testing);
}

static void test_record_usable(void **state)
{
	/* §4.10.1: invalid p, sp or np with a valid rua → p=none */
	struct dmarc_record r = parse_ok("v=DMARC1; p=rejekt; rua=mailto:r@example.com");
	assert_int_equal(r.p, DMARC_POLICY_INVALID);
	assert_true(dmarc_record_usable(&r));
	assert_int_equal(r.p, DMARC_POLICY_NONE);
	assert_int_equal(r.sp, DMARC_POLICY_NONE);
	r = parse_ok("v=DMARC1; p=reject; sp=all; rua=mailto:r@example.com");
	assert_true(dmarc_record_usable(&r));
	assert_int_equal(r.p, DMARC_POLICY_NONE);
	/* ...and without one, no DMARC processing */
	r = parse_ok("v=DMARC1; p=reject; np=");
	assert_int_equal(r.np, DMARC_POLICY_INVALID);
	assert_false(dmarc_record_usable(&r));
	r = parse_ok("v=DMARC1; p=rejekt; rua=bad");
	assert_false(dmarc_record_usable(&r));
	r = parse_ok("v=DMARC1; p=reject; sp=none");
	assert_true(dmarc_record_usable(&r));
	assert_int_equal(r.p, DMARC_POLICY_REJECT);
}

/* ---------------------------------------------------------- From domain */

struct from_case {
	const char *name;
	const char *hdr;
	enum dmarc_from_status status;
	size_t n_domains;
	const char *first;
};

static void test_from_domains(void **state)
{
	static const struct from_case cases[] = {
	    {"plain", "From: a@Example.COM\r\n", DMARC_FROM_ONE, 1, "example.com"},
	    {"display name", "From: \"Doe, John\" <john@example.com>\r\n", DMARC_FROM_ONE, 1,
	     "example.com"},
	    {"comments", "From: (x@evil.example) John <john(@evil.example)@example.com> (c)\r\n",
	     DMARC_FROM_ONE, 1, "example.com"},
	    {"folded", "Subject: x\r\nFrom: John\r\n <john@\r\n\texample.com>\r\nTo: y@z.test\r\n",
	     DMARC_FROM_ONE, 1, "example.com"},
	    {"quoted local", "From: \"john@evil.example\"@example.com\r\n", DMARC_FROM_ONE, 1,
	     "example.com"},
	    {"quoted name with angle", "From: \"victim@bank.example <x>\" <a@evil.example>\r\n",
	     DMARC_FROM_ONE, 1, "evil.example"},
	    {"trailing dot", "From: a@example.com.\r\n", DMARC_FROM_ONE, 1, "example.com"},
	    {"two addresses one domain", "From: a@example.com, B <b@EXAMPLE.com>\r\n",
	     DMARC_FROM_ONE, 1, "example.com"},
	    {"two domains", "From: a@example.com, b@example.net\r\n", DMARC_FROM_MULTI, 2,
	     "example.com"},
	    {"two fields", "From: a@example.com\r\nFrom: a@example.com\r\n", DMARC_FROM_MULTI, 1,
	     "example.com"},
	    {"obsolete blank before colon", "From : a@example.com\r\n", DMARC_FROM_ONE, 1,
	     "example.com"},
	    {"bare LF", "From: a@example.com\nTo: b@x.test\n", DMARC_FROM_ONE, 1, "example.com"},
	    {"group", "From: Team: a@example.com, b@example.com;\r\n", DMARC_FROM_ONE, 1,
	     "example.com"},
	    {"empty group", "From: undisclosed-senders:;\r\n", DMARC_FROM_NONE, 0, NULL},
	    {"obs route", "From: <@relay.test,@r2.test:a@example.com>\r\n", DMARC_FROM_ONE, 1,
	     "example.com"},
	    {"U-label",
	     "From: a@b\xc3\xbc"
	     "cher.example\r\n",
	     DMARC_FROM_ONE, 1, "xn--bcher-kva.example"},
	    {"no From", "To: a@example.com\r\nX-From: b@example.com\r\n", DMARC_FROM_NONE, 0, NULL},
	    {"empty", "", DMARC_FROM_NONE, 0, NULL},
	    {"From in a body-like line", "Subject: From: a@example.com\r\n", DMARC_FROM_NONE, 0,
	     NULL},
	    {"no domain", "From: john\r\n", DMARC_FROM_BAD, 0, NULL},
	    {"domain literal", "From: a@[192.0.2.1]\r\n", DMARC_FROM_BAD, 0, NULL},
	    {"unclosed angle", "From: John <john@example.com\r\n", DMARC_FROM_BAD, 0, NULL},
	    {"unclosed comment", "From: john@example.com (x\r\n", DMARC_FROM_BAD, 0, NULL},
	    {"two addr-specs without comma", "From: a@evil.example b@bank.example\r\n",
	     DMARC_FROM_BAD, 0, NULL},
	    {"atom after the domain", "From: a@evil.example b\r\n", DMARC_FROM_BAD, 0, NULL},
	    {"obsolete domain with blanks", "From: a@example . com\r\n", DMARC_FROM_ONE, 1,
	     "example.com"},
	    {"bad label", "From: a@exa_mple..com\r\n", DMARC_FROM_BAD, 0, NULL},
	    {"bad utf-8", "From: a@\xc3(.example\r\n", DMARC_FROM_BAD, 0, NULL},
	    {"empty From", "From: \r\n", DMARC_FROM_NONE, 0, NULL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct from_case *c = &cases[i];
		struct dmarc_from f;
		dmarc_from_domains(c->hdr, strlen(c->hdr), &f);
		if (f.status != c->status || (c->first && strcmp(f.domain[0], c->first) != 0) ||
		    (c->status != DMARC_FROM_BAD && f.n_domains != c->n_domains))
			fail_msg("%s: status %d n %zu first \"%s\"", c->name, (int)f.status,
			         f.n_domains, f.domain[0]);
	}
	/* more distinct domains than are evaluated: counted, the first kept */
	struct dmarc_from f;
	const char *many =
	    "From: a@d1.test, a@d2.test, a@d3.test, a@d4.test, a@d5.test, a@d1.test\r\n";
	dmarc_from_domains(many, strlen(many), &f);
	assert_int_equal(f.status, DMARC_FROM_MULTI);
	assert_true(f.n_domains > DMARC_AUTHORS_MAX);
	assert_string_equal(f.domain[3], "d4.test");
}

static void test_domain_normalize(void **state)
{
	char out[DMARC_DOMAIN_MAX + 1];
	struct {
		const char *in, *out;
	} ok[] = {
	    {"Example.COM.", "example.com"},
	    /* RFC 3492 §7.1 samples and the PSL's IDN labels */
	    {"m\xc3\xbcnchen.example", "xn--mnchen-3ya.example"},
	    {"\xe9\xa3\x9f\xe7\x8b\xae.com.cn", "xn--85x722f.com.cn"},
	    {"\xe4\xb8\xad\xe5\x9b\xbd", "xn--fiqs8s"},
	    {"_dmarc.example.com", "_dmarc.example.com"},
	    {"xn--bcher-kva.example", "xn--bcher-kva.example"},
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		assert_true(dmarc_domain_normalize(ok[i].in, strlen(ok[i].in), out));
		assert_string_equal(out, ok[i].out);
	}
	static const char *const bad[] = {
	    "",        ".",       ".com",     "a..b",
	    "a b.com", "a@b.com", "\xff.com", "\xed\xa0\x80.com" /* surrogate */};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (dmarc_domain_normalize(bad[i], strlen(bad[i]), out))
			fail_msg("normalised \"%s\"", bad[i]);
	/* label and name length limits */
	char lab[80];
	memset(lab, 'a', 63);
	memcpy(lab + 63, ".com", 5);
	assert_true(dmarc_domain_normalize(lab, strlen(lab), out));
	memset(lab, 'a', 64);
	memcpy(lab + 64, ".com", 5);
	assert_false(dmarc_domain_normalize(lab, strlen(lab), out));
	char longname[300];
	for (size_t i = 0; i < 25; i++)
		memcpy(longname + i * 10, "abcdefghi.", 10);
	memcpy(longname + 250, "com", 4); /* 253 bytes: fits */
	assert_true(dmarc_domain_normalize(longname, strlen(longname), out));
	memcpy(longname + 250, "comx", 5);
	assert_false(dmarc_domain_normalize(longname, strlen(longname), out));
}

/* ------------------------------------------------------- in-memory DNS */

struct rr {
	const char *name; /* owner name (for TXT: including "_dmarc.") */
	const char *txt;  /* NULL: the name exists with no TXT */
};

struct fake_dns {
	const struct rr *rr;
	size_t n;
	const char *tempfail; /* a name whose queries fail, or NULL */
	bool reverse;         /* answer each round's questions last first */
	char asked[256][DNS_NAME_MAX + 1];
	int asked_type[256];
	size_t n_asked;
};

/* RFC 8020 semantics: a name exists if it owns a record or has a name below. */
static bool name_exists(const struct fake_dns *d, const char *name)
{
	size_t nl = strlen(name);
	for (size_t i = 0; i < d->n; i++) {
		size_t l = strlen(d->rr[i].name);
		if (strcmp(d->rr[i].name, name) == 0 ||
		    (l > nl && d->rr[i].name[l - nl - 1] == '.' &&
		     strcmp(d->rr[i].name + l - nl, name) == 0))
			return true;
	}
	return false;
}

static void answer(struct dmarc_eval *e, struct fake_dns *d, const struct dmarc_query *q)
{
	const char *txt[8];
	size_t n = 0;

	assert_true(d->n_asked < 256);
	tern_strlcpy(d->asked[d->n_asked], q->name, sizeof(d->asked[0]));
	d->asked_type[d->n_asked++] = q->rrtype;
	if (d->tempfail && strcmp(q->name, d->tempfail) == 0) {
		dmarc_eval_answer(e, q->id, DNS_TEMPFAIL, NULL, 0);
		return;
	}
	for (size_t i = 0; i < d->n && q->rrtype == DNS_TXT; i++)
		if (strcmp(d->rr[i].name, q->name) == 0 && d->rr[i].txt && n < 8)
			txt[n++] = d->rr[i].txt;
	if (n > 0)
		dmarc_eval_answer(e, q->id, DNS_OK, txt, n);
	else
		dmarc_eval_answer(e, q->id, name_exists(d, q->name) ? DNS_NODATA : DNS_NXDOMAIN,
		                  NULL, 0);
}

/* Drives the machine to the end: each round's questions are collected,
 * then answered (in reverse when d->reverse). */
static const struct dmarc_outcome *run(struct dmarc_eval *e, struct fake_dns *d)
{
	for (int round = 0; round < 64; round++) {
		struct dmarc_query q[64];
		size_t n = 0;
		enum dmarc_step st;
		while ((st = dmarc_eval_next(e, &q[n])) == DMARC_STEP_QUERY) {
			assert_true(++n < 64);
		}
		if (st == DMARC_STEP_DONE) {
			assert_int_equal(n, 0);
			return dmarc_eval_outcome(e);
		}
		assert_true(n > 0); /* WAIT with nothing asked would hang */
		for (size_t i = 0; i < n; i++)
			answer(e, d, &q[d->reverse ? n - 1 - i : i]);
	}
	fail_msg("evaluation did not end");
	return NULL;
}

static bool was_asked(const struct fake_dns *d, const char *name)
{
	for (size_t i = 0; i < d->n_asked; i++)
		if (strcmp(d->asked[i], name) == 0)
			return true;
	return false;
}

struct msg {
	const char *from;
	const char *spf_domain; /* passing SPF MAIL FROM domain, or NULL */
	const char *dkim[4];    /* passing DKIM d= domains */
	const char *dkim_fail;  /* a failing signature's d= */
};

static const struct dmarc_outcome *evaluate(struct fake_dns *d, const struct msg *m,
                                            struct dmarc_eval **ep)
{
	static struct dmarc_from from;
	static struct dmarc_dkim dk[5];
	char hdr[512];
	size_t n = 0;

	snprintf(hdr, sizeof(hdr), "From: %s\r\n", m->from);
	dmarc_from_domains(hdr, strlen(hdr), &from);
	for (size_t i = 0; i < 4 && m->dkim[i]; i++)
		dk[n++] = (struct dmarc_dkim){DMARC_DKIM_PASS, m->dkim[i], "s", "b", NULL, false};
	if (m->dkim_fail)
		dk[n++] = (struct dmarc_dkim){DMARC_DKIM_FAIL, m->dkim_fail, "s", "b", NULL, false};
	struct dmarc_input in = {
	    .from = &from,
	    .spf = {m->spf_domain ? DMARC_SPF_PASS : DMARC_SPF_NONE, DMARC_SPF_MAILFROM,
	            m->spf_domain},
	    .dkim = dk,
	    .n_dkim = n,
	};
	*ep = dmarc_eval_new(&in);
	assert_non_null(*ep);
	return run(*ep, d);
}

/* RFC 6376 §3.6.1: a pass by a key published with t=y (testing) is the
 * same as no signature for DMARC; the only aligned identifier here is that
 * signature, so DMARC fails. A non-testing pass of the same d= passes. */
static void test_dkim_testing_key_not_aligned(void **state)
{
	static const struct rr zone[] = {{"_dmarc.example.com", "v=DMARC1; p=reject"}};
	struct dmarc_from from;
	const char hdr[] = "From: a@example.com\r\n";
	dmarc_from_domains(hdr, strlen(hdr), &from);
	for (int testing = 0; testing < 2; testing++) {
		struct fake_dns dns = {.rr = zone, .n = 1};
		struct dmarc_dkim dk = {DMARC_DKIM_PASS, "example.com", "s", "b", NULL,
		                        testing != 0};
		struct dmarc_input in = {
		    .from = &from,
		    .spf = {DMARC_SPF_NONE, DMARC_SPF_MAILFROM, NULL},
		    .dkim = &dk,
		    .n_dkim = 1,
		};
		struct dmarc_eval *e = dmarc_eval_new(&in);
		assert_non_null(e);
		const struct dmarc_outcome *o = run(e, &dns);
		if (testing) {
			assert_int_equal(o->result, DMARC_RESULT_FAIL);
			assert_false(o->author[0].dkim_aligned);
			assert_int_equal(o->action, DMARC_ACTION_REJECT);
		} else {
			assert_int_equal(o->result, DMARC_RESULT_PASS);
			assert_true(o->author[0].dkim_aligned);
		}
		dmarc_eval_free(e);
	}
}

#define ZONE(...)                                                                                  \
	static const struct rr zone[] = {__VA_ARGS__};                                             \
	struct fake_dns dns = {.rr = zone, .n = sizeof(zone) / sizeof(zone[0])}

/* RFC 9989 §B.4.1 */
static void test_walk_simple(void **state)
{
	ZONE({"_dmarc.example.com", "v=DMARC1; p=reject"},
	     {"_dmarc.signing.example.com", "v=DMARC1; p=none"});
	struct dmarc_eval *e;
	struct msg m = {"a@example.com", "example.com", {"signing.example.com"}, NULL};
	const struct dmarc_outcome *o = evaluate(&dns, &m, &e);
	const struct dmarc_author *a = &o->author[0];
	assert_int_equal(o->result, DMARC_RESULT_PASS);
	assert_string_equal(a->policy_domain, "example.com");
	assert_string_equal(a->org_domain, "example.com");
	assert_true(a->spf_aligned);
	assert_true(a->dkim_aligned);
	assert_string_equal(a->dkim_domain, "signing.example.com");
	/* the names the RFC lists, each once */
	assert_int_equal(dns.n_asked, 3);
	assert_true(was_asked(&dns, "_dmarc.example.com"));
	assert_true(was_asked(&dns, "_dmarc.com"));
	assert_true(was_asked(&dns, "_dmarc.signing.example.com"));
	dmarc_eval_free(e);
}

/* RFC 9989 §B.4.2: the query limit */
static void test_walk_deep(void **state)
{
	ZONE({"_dmarc.example.com", "v=DMARC1; p=reject"},
	     {"_dmarc.signing.example.com", "v=DMARC1; p=none"});
	struct dmarc_eval *e;
	struct msg m = {
	    "x@a.b.c.d.e.f.g.h.i.j.k.example.com", "example.com", {"signing.example.com"}, NULL};
	const struct dmarc_outcome *o = evaluate(&dns, &m, &e);
	assert_int_equal(o->result, DMARC_RESULT_PASS);
	assert_string_equal(o->author[0].policy_domain, "example.com");
	assert_string_equal(o->author[0].org_domain, "example.com");
	static const char *const rfc[] = {"_dmarc.a.b.c.d.e.f.g.h.i.j.k.example.com",
	                                  "_dmarc.g.h.i.j.k.example.com",
	                                  "_dmarc.h.i.j.k.example.com",
	                                  "_dmarc.i.j.k.example.com",
	                                  "_dmarc.j.k.example.com",
	                                  "_dmarc.k.example.com",
	                                  "_dmarc.example.com",
	                                  "_dmarc.com"};
	for (size_t i = 0; i < 8; i++)
		assert_true(was_asked(&dns, rfc[i]));
	/* the author's walk: exactly the 8 names; then signing.example.com's own */
	assert_int_equal(dns.n_asked, 9);
	assert_string_equal(dns.asked[0], rfc[0]); /* alone in the first round */
	assert_int_equal(o->n_queries, 9);
	dmarc_eval_free(e);

	/* 8 labels: the start and its 7 parents, 8 queries */
	dns.n_asked = 0;
	struct msg m8 = {"x@a.b.c.d.e.f.example.com", NULL, {NULL}, NULL};
	o = evaluate(&dns, &m8, &e);
	assert_int_equal(o->result, DMARC_RESULT_FAIL);
	assert_int_equal(dns.n_asked, 8);
	assert_int_equal(o->action, DMARC_ACTION_REJECT);
	assert_true(was_asked(&dns, "_dmarc.b.c.d.e.f.example.com"));
	dmarc_eval_free(e);
}

/* RFC 9989 §B.4.3: a PSD record with psd=y */
static void test_walk_psd(void **state)
{
	ZONE({"_dmarc.bank.example", "v=DMARC1; p=reject; psd=y"},
	     {"_dmarc.giant.bank.example", "v=DMARC1; p=quarantine"},
	     {"mail.giant.bank.example", NULL}, {"mail.mega.bank.example", NULL});
	struct dmarc_eval *e;
	struct msg m = {
	    "a@giant.bank.example", "mail.giant.bank.example", {"mail.mega.bank.example"}, NULL};
	const struct dmarc_outcome *o = evaluate(&dns, &m, &e);
	const struct dmarc_author *a = &o->author[0];
	assert_int_equal(o->result, DMARC_RESULT_PASS);
	assert_string_equal(a->org_domain, "giant.bank.example");
	assert_string_equal(a->policy_domain, "giant.bank.example");
	assert_true(a->spf_aligned);   /* same organizational domain */
	assert_false(a->dkim_aligned); /* mega.bank.example is another one */
	/* giant.bank.example alone, then bank.example and example together (the
	 * latter asked in parallel though psd=y ends the walk before it); SPF's
	 * walk adds mail.giant.bank.example; mail.mega.bank.example is not
	 * below giant.bank.example, so it cannot align and needs no walk */
	assert_int_equal(dns.n_asked, 4);
	assert_true(was_asked(&dns, "_dmarc.mail.giant.bank.example"));
	assert_false(was_asked(&dns, "_dmarc.mail.mega.bank.example"));
	dmarc_eval_free(e);

	/* the same message without SPF: fails with giant's own p */
	struct msg m2 = {"a@giant.bank.example", NULL, {"mail.mega.bank.example"}, NULL};
	dns.n_asked = 0;
	o = evaluate(&dns, &m2, &e);
	assert_int_equal(o->result, DMARC_RESULT_FAIL);
	assert_int_equal(o->author[0].requested, DMARC_POLICY_QUARANTINE);
	assert_int_equal(o->action, DMARC_ACTION_QUARANTINE);
	dmarc_eval_free(e);

	/* an author under the PSD without records of its own: the PSD's policy
	 * applies to the org domain one label below it */
	struct msg m3 = {"a@x.other.bank.example", NULL, {NULL}, NULL};
	dns.n_asked = 0;
	o = evaluate(&dns, &m3, &e);
	assert_int_equal(o->result, DMARC_RESULT_FAIL);
	assert_string_equal(o->author[0].org_domain, "other.bank.example");
	assert_string_equal(o->author[0].policy_domain, "bank.example");
	assert_true(o->author[0].psd_record);
	assert_int_equal(o->author[0].tag, DMARC_TAG_P); /* no sp/np in the record */
	assert_int_equal(o->action, DMARC_ACTION_REJECT);
	dmarc_eval_free(e);
}

/* psd=n ends the walk and names the organizational domain (§4.10.2 rule 1) */
static void test_walk_psd_n(void **state)
{
	ZONE({"_dmarc.example.com", "v=DMARC1; p=reject"},
	     {"_dmarc.mail.example.com", "v=DMARC1; p=none; psd=n"},
	     {"_dmarc.com", "v=DMARC1; p=none; psd=y"});
	struct dmarc_eval *e;
	/* the author's org domain is mail.example.com; SPF's is example.com */
	struct msg m = {"a@x.mail.example.com", "example.com", {NULL}, NULL};
	const struct dmarc_outcome *o = evaluate(&dns, &m, &e);
	const struct dmarc_author *a = &o->author[0];
	assert_string_equal(a->org_domain, "mail.example.com");
	assert_string_equal(a->policy_domain, "mail.example.com");
	assert_int_equal(o->result, DMARC_RESULT_FAIL);
	assert_int_equal(o->action, DMARC_ACTION_NONE);
	/* the author's walk only (4 names); example.com is not below
	 * mail.example.com, so SPF needs no walk */
	assert_int_equal(dns.n_asked, 4);
	dmarc_eval_free(e);

	/* psd=n at the start ends the walk at once: one question */
	struct msg m2 = {"a@mail.example.com", NULL, {NULL}, NULL};
	dns.n_asked = 0;
	o = evaluate(&dns, &m2, &e);
	assert_int_equal(dns.n_asked, 1);
	assert_string_equal(o->author[0].org_domain, "mail.example.com");
	dmarc_eval_free(e);
}

/* §4.10.2 rule 3: the record with the fewest labels */
static void test_walk_fewest_labels(void **state)
{
	ZONE({"_dmarc.mail.example.com", "v=DMARC1; p=reject"},
	     {"_dmarc.example.com", "v=DMARC1; p=none"});
	struct dmarc_eval *e;
	struct msg m = {"a@a.mail.example.com", NULL, {"example.com"}, NULL};
	const struct dmarc_outcome *o = evaluate(&dns, &m, &e);
	assert_string_equal(o->author[0].org_domain, "example.com");
	/* the policy is the organizational domain's (example.com, none), not
	 * mail.example.com's */
	assert_string_equal(o->author[0].policy_domain, "example.com");
	assert_int_equal(o->result, DMARC_RESULT_PASS);
	dmarc_eval_free(e);
}

static void test_walk_record_selection(void **state)
{
	/* two DMARC records at one name: both discarded; other TXT ignored */
	ZONE({"_dmarc.example.com", "v=DMARC1; p=reject"},
	     {"_dmarc.example.com", "v=DMARC1; p=none"}, {"_dmarc.example.org", "v=spf1 -all"},
	     {"_dmarc.example.org", "v=DMARC1; p=reject"}, {"_dmarc.example.net", "some text"});
	struct dmarc_eval *e;
	struct msg m = {"a@example.com", NULL, {NULL}, NULL};
	const struct dmarc_outcome *o = evaluate(&dns, &m, &e);
	assert_int_equal(o->result, DMARC_RESULT_NONE);
	assert_int_equal(o->action, DMARC_ACTION_NONE);
	dmarc_eval_free(e);
	struct msg m2 = {"a@example.org", NULL, {NULL}, NULL};
	o = evaluate(&dns, &m2, &e);
	assert_int_equal(o->result, DMARC_RESULT_FAIL);
	assert_int_equal(o->action, DMARC_ACTION_REJECT);
	dmarc_eval_free(e);
	struct msg m3 = {"a@example.net", NULL, {NULL}, NULL};
	o = evaluate(&dns, &m3, &e);
	assert_int_equal(o->result, DMARC_RESULT_NONE);
	dmarc_eval_free(e);
}

static void test_walk_unusable_record(void **state)
{
	ZONE({"_dmarc.example.com", "v=DMARC1; p=rejekt"},
	     {"_dmarc.example.org", "v=DMARC1; p=rejekt; rua=mailto:d@example.org"});
	struct dmarc_eval *e;
	struct msg m = {"a@example.com", NULL, {NULL}, NULL};
	const struct dmarc_outcome *o = evaluate(&dns, &m, &e);
	assert_int_equal(o->result, DMARC_RESULT_PERMERROR);
	assert_int_equal(o->action, DMARC_ACTION_NONE);
	dmarc_eval_free(e);
	struct msg m2 = {"a@example.org", NULL, {NULL}, NULL};
	o = evaluate(&dns, &m2, &e);
	assert_int_equal(o->result, DMARC_RESULT_FAIL);
	assert_int_equal(o->author[0].requested, DMARC_POLICY_NONE);
	assert_int_equal(o->action, DMARC_ACTION_NONE);
	dmarc_eval_free(e);
}

/* Answers out of order give the same outcome as in order. */
static void test_walk_answers_reversed(void **state)
{
	ZONE({"_dmarc.bank.example", "v=DMARC1; p=reject; psd=y"},
	     {"_dmarc.giant.bank.example", "v=DMARC1; p=quarantine"},
	     {"_dmarc.a.b.c.giant.bank.example", "v=DMARC1; p=none"});
	struct dmarc_eval *e1, *e2;
	struct msg m = {"a@x.y.z.giant.bank.example",
	                "a.b.c.giant.bank.example",
	                {"q.giant.bank.example", "other.example"},
	                NULL};
	const struct dmarc_outcome *o1 = evaluate(&dns, &m, &e1);
	dns.reverse = true;
	const struct dmarc_outcome *o2 = evaluate(&dns, &m, &e2);
	assert_int_equal(o1->result, DMARC_RESULT_PASS);
	assert_int_equal(o2->result, o1->result);
	assert_string_equal(o2->author[0].org_domain, "giant.bank.example");
	assert_true(o2->author[0].spf_aligned);
	assert_true(o2->author[0].dkim_aligned);
	assert_int_equal(o1->n_queries, o2->n_queries);
	dmarc_eval_free(e1);
	dmarc_eval_free(e2);
}

static void test_walk_dns_errors(void **state)
{
	ZONE({"_dmarc.example.com", "v=DMARC1; p=reject"},
	     {"_dmarc.sub.example.net", "v=DMARC1; p=reject"});
	struct dmarc_eval *e;
	/* the author's walk fails: temperror, whatever SPF says */
	dns.tempfail = "_dmarc.example.com";
	struct msg m = {"a@example.com", "example.com", {NULL}, NULL};
	const struct dmarc_outcome *o = evaluate(&dns, &m, &e);
	assert_int_equal(o->result, DMARC_RESULT_TEMPERROR);
	assert_int_equal(o->action, DMARC_ACTION_NONE);
	dmarc_eval_free(e);

	/* a failure past the point the walk needed changes nothing: the
	 * author's record is found at the start, but _dmarc.com fails, and
	 * the org domain needs it → temperror only when nothing aligned */
	dns.tempfail = "_dmarc.com";
	struct msg m2 = {"a@example.com", "example.com", {NULL}, NULL};
	o = evaluate(&dns, &m2, &e);
	assert_int_equal(o->result, DMARC_RESULT_TEMPERROR); /* the walk reads _dmarc.com */
	dmarc_eval_free(e);

	/* an identifier's walk fails but another identifier aligns: pass */
	dns.tempfail = "_dmarc.x.sub.example.net";
	struct msg m3 = {"a@sub.example.net", "x.sub.example.net", {"sub.example.net"}, NULL};
	dns.rr = zone;
	o = evaluate(&dns, &m3, &e);
	assert_int_equal(o->result, DMARC_RESULT_PASS);
	assert_true(o->author[0].dkim_aligned);
	dmarc_eval_free(e);
	/* ...and when nothing else aligns, temperror, not fail */
	struct msg m4 = {"a@sub.example.net", "x.sub.example.net", {NULL}, NULL};
	o = evaluate(&dns, &m4, &e);
	assert_int_equal(o->result, DMARC_RESULT_TEMPERROR);
	dmarc_eval_free(e);
}

/* RFC 9989 §B.1 and Table 1, relaxed and strict */
struct align_case {
	const char *record;
	const char *from, *spf, *dkim;
	bool spf_aligned, dkim_aligned;
};

static void test_alignment_table(void **state)
{
	static const struct align_case cases[] = {
	    /* §B.1.1 examples 1-3, §B.1.2 examples 1-3 (relaxed) */
	    {"v=DMARC1; p=reject", "example.com", "example.com", "example.com", true, true},
	    {"v=DMARC1; p=reject", "example.com", "child.example.com", NULL, true, false},
	    {"v=DMARC1; p=reject", "child.example.com", "example.net", NULL, false, false},
	    {"v=DMARC1; p=reject", "child.example.com", NULL, "example.com", false, true},
	    {"v=DMARC1; p=reject", "child.example.com", NULL, "example.net", false, false},
	    /* Table 1 */
	    {"v=DMARC1; p=reject", "news.example.com", "foo.example.com", "foo.example.com", true,
	     true},
	    {"v=DMARC1; p=reject", "news.example.com", "foo.example.net", "foo.example.net", false,
	     false},
	    /* strict: only identical names */
	    {"v=DMARC1; p=reject; aspf=s; adkim=s", "news.example.com", "foo.example.com",
	     "foo.example.com", false, false},
	    {"v=DMARC1; p=reject; aspf=s; adkim=s", "news.example.com", "news.example.com",
	     "NEWS.Example.COM.", true, true},
	    {"v=DMARC1; p=reject; aspf=s", "news.example.com", "example.com", "example.com", false,
	     true},
	    {"v=DMARC1; p=reject; adkim=s", "example.com", "a.example.com", "a.example.com", true,
	     false},
	    /* a parent of the author aligns relaxed too */
	    {"v=DMARC1; p=reject", "a.b.example.com", "b.example.com", "example.com", true, true},
	    /* a look-alike suffix is not a subdomain */
	    {"v=DMARC1; p=reject", "example.com", "badexample.com", "xexample.com", false, false},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct align_case *c = &cases[i];
		const struct rr zone[] = {{"_dmarc.example.com", c->record}};
		struct fake_dns dns = {.rr = zone, .n = 1};
		char from[300];
		snprintf(from, sizeof(from), "x@%s", c->from);
		struct msg m = {from, c->spf, {c->dkim}, NULL};
		struct dmarc_eval *e;
		const struct dmarc_outcome *o = evaluate(&dns, &m, &e);
		bool pass = c->spf_aligned || c->dkim_aligned;
		if (o->author[0].spf_aligned != c->spf_aligned ||
		    o->author[0].dkim_aligned != c->dkim_aligned ||
		    o->result != (pass ? DMARC_RESULT_PASS : DMARC_RESULT_FAIL))
			fail_msg("case %zu (%s from %s spf %s dkim %s): spf %d dkim %d result %s",
			         i, c->record, c->from, c->spf ? c->spf : "-",
			         c->dkim ? c->dkim : "-", o->author[0].spf_aligned,
			         o->author[0].dkim_aligned, dmarc_result_name(o->result));
		dmarc_eval_free(e);
	}
}

static void test_alignment_needs_passing_results(void **state)
{
	ZONE({"_dmarc.example.com", "v=DMARC1; p=reject"});
	struct dmarc_eval *e;
	/* a failing DKIM signature from the author's own domain does not align */
	struct msg m = {"a@example.com", NULL, {NULL}, "example.com"};
	const struct dmarc_outcome *o = evaluate(&dns, &m, &e);
	assert_int_equal(o->result, DMARC_RESULT_FAIL);
	assert_int_equal(o->action, DMARC_ACTION_REJECT);
	dmarc_eval_free(e);

	/* SPF softfail / HELO identity do not count */
	struct dmarc_from from;
	dmarc_from_domains(S("From: a@example.com\r\n"), &from);
	struct dmarc_input in = {.from = &from,
	                         .spf = {DMARC_SPF_SOFTFAIL, DMARC_SPF_MAILFROM, "example.com"}};
	e = dmarc_eval_new(&in);
	assert_int_equal(run(e, &dns)->result, DMARC_RESULT_FAIL);
	dmarc_eval_free(e);
	in.spf = (struct dmarc_spf){DMARC_SPF_PASS, DMARC_SPF_HELO, "example.com"};
	e = dmarc_eval_new(&in);
	assert_int_equal(run(e, &dns)->result, DMARC_RESULT_FAIL);
	dmarc_eval_free(e);
	in.spf = (struct dmarc_spf){DMARC_SPF_PASS, DMARC_SPF_MAILFROM, "Example.COM"};
	e = dmarc_eval_new(&in);
	assert_int_equal(run(e, &dns)->result, DMARC_RESULT_PASS);
	dmarc_eval_free(e);
}

/* p for the author's own record; sp for existing subdomains; np for
 * non-existent ones; t=y lowers by one. */
struct policy_case {
	const char *record;
	const char *from;
	enum dmarc_policy_tag tag;
	enum dmarc_policy requested, applied;
	enum dmarc_action action;
};

static void test_policy_selection(void **state)
{
	static const struct policy_case cases[] = {
	    {"v=DMARC1; p=reject; sp=none; np=quarantine", "example.com", DMARC_TAG_P,
	     DMARC_POLICY_REJECT, DMARC_POLICY_REJECT, DMARC_ACTION_REJECT},
	    {"v=DMARC1; p=reject; sp=none; np=quarantine", "www.example.com", DMARC_TAG_SP,
	     DMARC_POLICY_NONE, DMARC_POLICY_NONE, DMARC_ACTION_NONE},
	    {"v=DMARC1; p=reject; sp=none; np=quarantine", "nx.example.com", DMARC_TAG_NP,
	     DMARC_POLICY_QUARANTINE, DMARC_POLICY_QUARANTINE, DMARC_ACTION_QUARANTINE},
	    /* no np: sp for non-existent subdomains too; no sp: p */
	    {"v=DMARC1; p=reject; sp=quarantine", "nx.example.com", DMARC_TAG_SP,
	     DMARC_POLICY_QUARANTINE, DMARC_POLICY_QUARANTINE, DMARC_ACTION_QUARANTINE},
	    {"v=DMARC1; p=reject", "nx.example.com", DMARC_TAG_P, DMARC_POLICY_REJECT,
	     DMARC_POLICY_REJECT, DMARC_ACTION_REJECT},
	    {"v=DMARC1; p=none; np=reject", "www.example.com", DMARC_TAG_P, DMARC_POLICY_NONE,
	     DMARC_POLICY_NONE, DMARC_ACTION_NONE},
	    {"v=DMARC1; p=none; np=reject", "a.nx.example.com", DMARC_TAG_NP, DMARC_POLICY_REJECT,
	     DMARC_POLICY_REJECT, DMARC_ACTION_REJECT},
	    /* absent p: none */
	    {"v=DMARC1; rua=mailto:a@example.com", "example.com", DMARC_TAG_P, DMARC_POLICY_NONE,
	     DMARC_POLICY_NONE, DMARC_ACTION_NONE},
	    /* t=y: reject → quarantine, quarantine → none, none stays */
	    {"v=DMARC1; p=reject; t=y", "example.com", DMARC_TAG_P, DMARC_POLICY_REJECT,
	     DMARC_POLICY_QUARANTINE, DMARC_ACTION_QUARANTINE},
	    {"v=DMARC1; p=quarantine; t=y", "example.com", DMARC_TAG_P, DMARC_POLICY_QUARANTINE,
	     DMARC_POLICY_NONE, DMARC_ACTION_NONE},
	    {"v=DMARC1; p=reject; sp=reject; t=y", "www.example.com", DMARC_TAG_SP,
	     DMARC_POLICY_REJECT, DMARC_POLICY_QUARANTINE, DMARC_ACTION_QUARANTINE},
	    {"v=DMARC1; p=reject; pct=0", "example.com", DMARC_TAG_P, DMARC_POLICY_REJECT,
	     DMARC_POLICY_QUARANTINE, DMARC_ACTION_QUARANTINE},
	    {"v=DMARC1; p=reject; pct=20", "example.com", DMARC_TAG_P, DMARC_POLICY_REJECT,
	     DMARC_POLICY_REJECT, DMARC_ACTION_REJECT},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct policy_case *c = &cases[i];
		const struct rr zone[] = {{"_dmarc.example.com", c->record},
		                          {"www.example.com", NULL}};
		struct fake_dns dns = {.rr = zone, .n = 2};
		char from[300];
		snprintf(from, sizeof(from), "x@%s", c->from);
		struct msg m = {from, "other.example", {"other.example"}, NULL};
		struct dmarc_eval *e;
		const struct dmarc_outcome *o = evaluate(&dns, &m, &e);
		const struct dmarc_author *a = &o->author[0];
		if (o->result != DMARC_RESULT_FAIL || a->tag != c->tag ||
		    a->requested != c->requested || a->applied != c->applied ||
		    o->action != c->action)
			fail_msg("case %zu (%s, %s): result %s tag %d requested %s applied %s", i,
			         c->record, c->from, dmarc_result_name(o->result), (int)a->tag,
			         dmarc_policy_name(a->requested), dmarc_policy_name(a->applied));
		/* the existence question is asked only when np could matter */
		char nxq[300];
		snprintf(nxq, sizeof(nxq), "%s", c->from);
		bool asked = was_asked(&dns, nxq);
		bool np = strstr(c->record, "np=") != NULL && strcmp(c->from, "example.com") != 0;
		if (asked != np)
			fail_msg("case %zu: existence query %s", i, asked ? "asked" : "not asked");
		dmarc_eval_free(e);
	}
}

static void test_multiple_authors(void **state)
{
	ZONE({"_dmarc.example.com", "v=DMARC1; p=quarantine"},
	     {"_dmarc.example.org", "v=DMARC1; p=reject"},
	     {"_dmarc.example.net", "v=DMARC1; p=none"});
	struct dmarc_eval *e;
	/* the strictest failing policy wins (RFC 9989 §11.5) */
	struct msg m = {"a@example.com, b@example.org, c@example.net", "example.org", {NULL}, NULL};
	const struct dmarc_outcome *o = evaluate(&dns, &m, &e);
	assert_int_equal(o->from, DMARC_FROM_MULTI);
	assert_int_equal(o->n_authors, 3);
	assert_int_equal(o->author[0].result, DMARC_RESULT_FAIL);
	assert_int_equal(o->author[1].result, DMARC_RESULT_PASS);
	assert_int_equal(o->result, DMARC_RESULT_FAIL);
	assert_int_equal(o->action, DMARC_ACTION_QUARANTINE);
	assert_false(o->incomplete);
	dmarc_eval_free(e);

	/* a From we cannot read: permerror, nothing asked */
	struct dmarc_from f;
	dmarc_from_domains(S("From: a@[192.0.2.1]\r\n"), &f);
	struct dmarc_input in = {.from = &f};
	e = dmarc_eval_new(&in);
	dns.n_asked = 0;
	o = run(e, &dns);
	assert_int_equal(o->result, DMARC_RESULT_PERMERROR);
	assert_int_equal(dns.n_asked, 0);
	dmarc_eval_free(e);
	/* no From: none */
	dmarc_from_domains(S("To: a@example.com\r\n"), &f);
	e = dmarc_eval_new(&in);
	o = run(e, &dns);
	assert_int_equal(o->result, DMARC_RESULT_NONE);
	dmarc_eval_free(e);
}

/* Every cached name is asked once, however many walks share it. */
static void test_names_asked_once(void **state)
{
	ZONE({"_dmarc.example.com", "v=DMARC1; p=reject"});
	struct dmarc_eval *e;
	struct msg m = {"a@x.example.com",
	                "y.example.com",
	                {"z.example.com", "a.z.example.com", "b.z.example.com", "Z.example.com"},
	                NULL};
	const struct dmarc_outcome *o = evaluate(&dns, &m, &e);
	assert_int_equal(o->result, DMARC_RESULT_PASS);
	for (size_t i = 0; i < dns.n_asked; i++)
		for (size_t j = i + 1; j < dns.n_asked; j++)
			if (strcmp(dns.asked[i], dns.asked[j]) == 0 &&
			    dns.asked_type[i] == dns.asked_type[j])
				fail_msg("asked twice: %s", dns.asked[i]);
	dmarc_eval_free(e);
}

/* ------------------------------------------------------------- decision */

static void test_decide(void **state)
{
	ZONE({"_dmarc.example.com", "v=DMARC1; p=reject"},
	     {"_dmarc.example.org", "v=DMARC1; p=quarantine"},
	     {"_dmarc.example.net", "v=DMARC1; p=reject; t=y"});
	struct dmarc_profile enforce = {DMARC_MODE_ENFORCE, false}, mark = {DMARC_MODE_MARK, false},
	                     off = {DMARC_MODE_OFF, false};
	struct dmarc_decision d;
	struct dmarc_eval *e;

	struct msg rej = {"a@example.com", NULL, {NULL}, NULL};
	const struct dmarc_outcome *o = evaluate(&dns, &rej, &e);
	dmarc_decide(o, &enforce, &d);
	assert_int_equal(d.disposition, DMARC_REJECT);
	assert_string_equal(d.reply, "550 5.7.1 Email rejected per DMARC policy for example.com "
	                             "(no aligned SPF or DKIM pass)");
	assert_null(d.folder);
	dmarc_decide(o, &mark, &d);
	assert_int_equal(d.disposition, DMARC_DELIVER);
	assert_non_null(strstr(d.header, "X-Tern-DMARC: reject; domain=example.com"));
	assert_non_null(strstr(d.header, "only marks"));
	assert_int_equal(d.reply[0], '\0');
	dmarc_decide(o, &off, &d);
	assert_int_equal(d.disposition, DMARC_DELIVER);
	assert_int_equal(d.header[0], '\0');
	dmarc_eval_free(e);

	struct msg q = {"a@example.org", NULL, {NULL}, NULL};
	o = evaluate(&dns, &q, &e);
	dmarc_decide(o, &enforce, &d);
	assert_int_equal(d.disposition, DMARC_DELIVER_JUNK);
	assert_string_equal(d.folder, "Junk");
	assert_non_null(strstr(d.header, "X-Tern-DMARC: quarantine; domain=example.org"));
	assert_non_null(strstr(d.header, "Junk folder"));
	assert_int_equal(strcmp(d.header + strlen(d.header) - 2, "\r\n"), 0);
	dmarc_eval_free(e);

	/* t=y: reject lowered to quarantine, and the header says so */
	struct msg t = {"a@example.net", NULL, {NULL}, NULL};
	o = evaluate(&dns, &t, &e);
	dmarc_decide(o, &enforce, &d);
	assert_int_equal(d.disposition, DMARC_DELIVER_JUNK);
	assert_non_null(strstr(d.header, "testing (t=y): reject lowered to quarantine"));
	dmarc_eval_free(e);

	/* pass: nothing to do */
	struct msg p = {"a@example.com", "example.com", {NULL}, NULL};
	o = evaluate(&dns, &p, &e);
	dmarc_decide(o, &enforce, &d);
	assert_int_equal(d.disposition, DMARC_DELIVER);
	assert_int_equal(d.header[0], '\0');
	dmarc_eval_free(e);

	/* temperror: delivered, or 451 when the profile asks */
	dns.tempfail = "_dmarc.example.com";
	o = evaluate(&dns, &rej, &e);
	dmarc_decide(o, &enforce, &d);
	assert_int_equal(d.disposition, DMARC_DELIVER);
	struct dmarc_profile defer = {DMARC_MODE_ENFORCE, true};
	dmarc_decide(o, &defer, &d);
	assert_int_equal(d.disposition, DMARC_DEFER);
	assert_int_equal(strncmp(d.reply, "451 4.7.1 ", 10), 0);
	dmarc_decide(o, &mark, &d);
	assert_int_equal(d.disposition, DMARC_DELIVER);
	dmarc_eval_free(e);
}

/* ------------------------------------------- Public Suffix List vectors */

/*
 * tests/data/dmarc/test_psl.txt: checkPublicSuffix('input', 'expected').
 * For every input whose registrable domain R is known, two synthetic DNS
 * trees must give R as the organizational domain:
 *   A. the public suffix (R minus its first label) publishes psd=y and
 *      nothing else does: the walk stops there (rule 2);
 *   B. only R publishes a record (no psd tag), as most organizations do:
 *      R is the record with the fewest labels (rule 3).
 * Inputs that are themselves public suffixes (expected null) are skipped:
 * the Tree Walk makes them their own organizational domain, where the PSL
 * says they have none. Inputs that are not domain names (a leading dot)
 * must be refused by the normaliser.
 */
static bool quoted_arg(const char **p, char *out, size_t outlen, bool *is_null)
{
	const char *s = *p;
	while (*s == ' ' || *s == ',' || *s == '(')
		s++;
	if (strncmp(s, "null", 4) == 0) {
		*is_null = true;
		*p = s + 4;
		return true;
	}
	if (*s != '\'')
		return false;
	const char *end = strchr(s + 1, '\'');
	if (!end || (size_t)(end - s - 1) >= outlen)
		return false;
	memcpy(out, s + 1, (size_t)(end - s - 1));
	out[end - s - 1] = '\0';
	*is_null = false;
	*p = end + 1;
	return true;
}

static void test_psl_vectors(void **state)
{
	char path[1024], line[512];
	assert_true(testdata_path(path, sizeof(path), "dmarc/test_psl.txt"));
	FILE *fp = fopen(path, "r");
	assert_non_null(fp);
	size_t checked = 0, skipped_suffix = 0, refused = 0;
	while (fgets(line, sizeof(line), fp)) {
		const char *p = strstr(line, "checkPublicSuffix(");
		if (!p || strncmp(line, "//", 2) == 0)
			continue;
		p += strlen("checkPublicSuffix");
		char in[256], want[256], d[DMARC_DOMAIN_MAX + 1], r[DMARC_DOMAIN_MAX + 1];
		bool in_null, want_null;
		assert_true(quoted_arg(&p, in, sizeof(in), &in_null));
		assert_true(quoted_arg(&p, want, sizeof(want), &want_null));
		if (in_null)
			continue;
		if (in[0] == '.') {
			assert_false(dmarc_domain_normalize(in, strlen(in), d));
			refused++;
			continue;
		}
		assert_true(dmarc_domain_normalize(in, strlen(in), d));
		if (want_null) {
			skipped_suffix++;
			continue;
		}
		assert_true(dmarc_domain_normalize(want, strlen(want), r));
		const char *suffix = strchr(r, '.');
		assert_non_null(suffix);
		suffix++;
		char psd_name[300], org_name[300], from[300];
		snprintf(psd_name, sizeof(psd_name), "_dmarc.%s", suffix);
		snprintf(org_name, sizeof(org_name), "_dmarc.%s", r);
		snprintf(from, sizeof(from), "x@%s", d);
		for (int scenario = 0; scenario < 2; scenario++) {
			struct rr zone[1] = {
			    scenario == 0 ? (struct rr){psd_name, "v=DMARC1; p=reject; psd=y"}
			                  : (struct rr){org_name, "v=DMARC1; p=quarantine"}};
			struct fake_dns dns = {.rr = zone, .n = 1};
			struct msg m = {from, NULL, {NULL}, NULL};
			struct dmarc_eval *e;
			const struct dmarc_outcome *o = evaluate(&dns, &m, &e);
			if (strcmp(o->author[0].org_domain, r) != 0 ||
			    o->result != DMARC_RESULT_FAIL)
				fail_msg("%s scenario %c: org \"%s\", the PSL says %s", in,
				         'A' + scenario, o->author[0].org_domain, r);
			/* the PSD's policy applies where the org publishes none */
			assert_int_equal(o->action, scenario == 0 ? DMARC_ACTION_REJECT
			                                          : DMARC_ACTION_QUARANTINE);
			dmarc_eval_free(e);
		}
		checked++;
	}
	fclose(fp);
	/* the file's counts: 52 with a registrable domain, 21 suffixes, 4 with a dot */
	assert_int_equal(checked, 52);
	assert_int_equal(skipped_suffix, 21);
	assert_int_equal(refused, 4);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_record_rfc_examples),
	    cmocka_unit_test(test_record_every_tag),
	    cmocka_unit_test(test_record_not_dmarc),
	    cmocka_unit_test(test_record_errors_fall_back_to_defaults),
	    cmocka_unit_test(test_record_pct_and_t),
	    cmocka_unit_test(test_record_usable),
	    cmocka_unit_test(test_from_domains),
	    cmocka_unit_test(test_domain_normalize),
	    cmocka_unit_test(test_walk_simple),
	    cmocka_unit_test(test_walk_deep),
	    cmocka_unit_test(test_walk_psd),
	    cmocka_unit_test(test_walk_psd_n),
	    cmocka_unit_test(test_walk_fewest_labels),
	    cmocka_unit_test(test_walk_record_selection),
	    cmocka_unit_test(test_walk_unusable_record),
	    cmocka_unit_test(test_walk_answers_reversed),
	    cmocka_unit_test(test_walk_dns_errors),
	    cmocka_unit_test(test_alignment_table),
	    cmocka_unit_test(test_alignment_needs_passing_results),
	    cmocka_unit_test(test_policy_selection),
	    cmocka_unit_test(test_multiple_authors),
	    cmocka_unit_test(test_names_asked_once),
	    cmocka_unit_test(test_decide),
	    cmocka_unit_test(test_psl_vectors),
	    cmocka_unit_test(test_dkim_testing_key_not_aligned),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
