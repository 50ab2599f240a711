/*
 * test_authres.c — Authentication-Results (src/policy/authres.c): the field
 * tern writes (every method, quoting, folding at 78 columns, unsafe values
 * left out), read back by python3-authres through authres_check.py as an
 * independent parser; the authserv-id parser; and the removal of forged
 * Authentication-Results and ARC sets claiming our authserv-id (RFC 8601 §5).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/err.h"
#include "policy/dmarc.h"

#define S(lit) lit, sizeof(lit) - 1

static char tmpdir[256];
static char checker[1024];

static int setup_all(void **state)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/tern-authres-XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	/* the checker sits beside this file (CMake passes an absolute __FILE__) */
	const char *file = __FILE__;
	const char *slash = strrchr(file, '/');
	int n = slash ? snprintf(checker, sizeof(checker), "%.*s/authres_check.py",
	                         (int)(slash - file), file)
	              : snprintf(checker, sizeof(checker), "authres_check.py");
	return n > 0 && (size_t)n < sizeof(checker) ? 0 : -1;
}

static int teardown_all(void **state)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

/* python3-authres must read the field as want (authres_check.py's form). */
static void python_check(const struct tbuf *b, const char *want)
{
	static unsigned seq;
	char path[512], cmd[4096];
	snprintf(path, sizeof(path), "%s/ar-%u.txt", tmpdir, seq++);
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(b->data, 1, b->len, f), b->len);
	assert_int_equal(fclose(f), 0);
	snprintf(cmd, sizeof(cmd), "/usr/bin/python3 '%s' '%s' '%s'", checker, path, want);
	if (system(cmd) != 0)
		fail_msg("authres_check.py disagrees (%s)", cmd);
}

/*
 * Every line at most 78 columns unless it holds one item that cannot be
 * folded (no blank in it after the leading tab); continuation lines start
 * with a tab.
 */
static void check_folding(const struct tbuf *b)
{
	size_t col = 0, start = 0, blanks = 0;
	for (size_t i = 0; i < b->len; i++) {
		if (b->data[i] == '\r') {
			assert_true(i + 1 < b->len && b->data[i + 1] == '\n');
			if (col > 78 && (start == 0 || blanks > 0))
				fail_msg("line of %zu columns in:\n%s", col, b->data);
			col = 0;
			blanks = 0;
			i++;
			start = i + 1;
			if (i + 1 < b->len)
				assert_int_equal(b->data[i + 1], '\t');
			continue;
		}
		blanks += b->data[i] == ' ';
		col += b->data[i] == '\t' ? 8 - col % 8 : 1;
	}
	assert_true(b->len >= 2 && b->data[b->len - 2] == '\r' && b->data[b->len - 1] == '\n');
}

/* A DMARC outcome for one author, as dmarc_eval would leave it. */
static struct dmarc_outcome outcome(enum dmarc_result r, const char *from, const char *record,
                                    enum dmarc_policy applied)
{
	struct dmarc_outcome o;
	memset(&o, 0, sizeof(o));
	o.result = r;
	o.n_authors = 1;
	struct dmarc_author *a = &o.author[0];
	a->result = r;
	tern_strlcpy(a->domain, from, sizeof(a->domain));
	if (record) {
		tern_strlcpy(a->policy_domain, from, sizeof(a->policy_domain));
		assert_int_equal(dmarc_record_parse(record, strlen(record), &a->record),
		                 DMARC_PARSE_OK);
	}
	a->applied = applied;
	return o;
}

static void test_build_full(void **state)
{
	struct dmarc_spf spf[] = {
	    {DMARC_SPF_PASS, DMARC_SPF_MAILFROM, "example.com"},
	    {DMARC_SPF_NEUTRAL, DMARC_SPF_HELO, "mx.example.com"},
	};
	struct dmarc_dkim dkim[] = {
	    {DMARC_DKIM_PASS, "example.com", "sel", "ab/c d+ef\r\n\tgh==", NULL, false},
	    {DMARC_DKIM_FAIL, "example.net", "s2", "ZZZZZZZZZZZZ", "bad signature", false},
	};
	struct dmarc_outcome o = outcome(DMARC_RESULT_FAIL, "example.com",
	                                 "v=DMARC1; p=reject; t=y", DMARC_POLICY_QUARANTINE);
	struct authres_input in = {
	    .authserv_id = "mx.example.org",
	    .spf = spf,
	    .n_spf = 2,
	    .dkim = dkim,
	    .n_dkim = 2,
	    .dmarc = &o,
	    .arc = AUTHRES_ARC_PASS,
	    .arc_remote_ip = "192.0.2.1",
	    .arc_oldest_pass = 2,
	    .dmarc_override = "trusted ARC sealer lists.example i=2",
	};
	struct tbuf b = TBUF_INIT(8192);
	assert_int_equal(authres_build(&in, &b), TERN_OK);
	assert_string_equal(b.data, "Authentication-Results: mx.example.org;\r\n"
	                            "\tspf=pass smtp.mailfrom=example.com;\r\n"
	                            "\tspf=neutral smtp.helo=mx.example.com;\r\n"
	                            "\tdkim=pass header.d=example.com header.s=sel "
	                            "header.b=\"ab/cd+ef\";\r\n"
	                            "\tdkim=fail reason=\"bad signature\" header.d=example.net "
	                            "header.s=s2\r\n"
	                            "\theader.b=ZZZZZZZZ;\r\n"
	                            "\tdmarc=fail (p=reject t=y) header.from=example.com\r\n"
	                            "\tpolicy.dmarc=quarantine policy.override=arc\r\n"
	                            "\t(trusted ARC sealer lists.example i=2);\r\n"
	                            "\tarc=pass smtp.remote-ip=192.0.2.1 header.oldest-pass=2\r\n");
	check_folding(&b);
	python_check(&b, "mx.example.org; spf=pass smtp.mailfrom=example.com; "
	                 "spf=neutral smtp.helo=mx.example.com; "
	                 "dkim=pass header.d=example.com header.s=sel header.b=ab/cd+ef; "
	                 "dkim=fail header.d=example.net header.s=s2 header.b=ZZZZZZZZ; "
	                 "dmarc=fail header.from=example.com policy.dmarc=quarantine "
	                 "policy.override=arc; "
	                 "arc=pass smtp.remote-ip=192.0.2.1 header.oldest-pass=2");
	tbuf_reset(&b);
	/* arc=fail: no oldest-pass; the override words only where DMARC failed */
	o.result = o.author[0].result = DMARC_RESULT_PASS;
	in.arc = AUTHRES_ARC_FAIL;
	in.arc_remote_ip = "2001:db8::1a"; /* ':' is not a token character: quoted */
	in.n_spf = in.n_dkim = 0;
	assert_int_equal(authres_build(&in, &b), TERN_OK);
	assert_string_equal(b.data, "Authentication-Results: mx.example.org;\r\n"
	                            "\tdmarc=pass (p=reject t=y) header.from=example.com;\r\n"
	                            "\tarc=fail smtp.remote-ip=\"2001:db8::1a\"\r\n");
	tbuf_free(&b);
}

static void test_build_none_and_errors(void **state)
{
	struct tbuf b = TBUF_INIT(4096);
	struct authres_input in = {.authserv_id = "mx.example.org"};
	assert_int_equal(authres_build(&in, &b), TERN_OK);
	assert_string_equal(b.data, "Authentication-Results: mx.example.org; none\r\n");
	python_check(&b, "mx.example.org");
	tbuf_reset(&b);

	in.authserv_id = "";
	assert_int_equal(authres_build(&in, &b), TERN_EINVAL);
	in.authserv_id = "mx\r\nX-Evil: 1";
	assert_int_equal(authres_build(&in, &b), TERN_EINVAL);
	in.authserv_id = NULL;
	assert_int_equal(authres_build(&in, &b), TERN_EINVAL);
	assert_int_equal(b.len, 0);

	/* an authserv-id that is not a token is quoted */
	in.authserv_id = "auth/1";
	assert_int_equal(authres_build(&in, &b), TERN_OK);
	assert_string_equal(b.data, "Authentication-Results: \"auth/1\"; none\r\n");
	tbuf_reset(&b);

	/* network values with control bytes are left out, never written */
	struct dmarc_dkim dkim = {
	    DMARC_DKIM_PASS, "evil.example\r\nX-Injected: yes", "s\x01", "abc", "why\n", false};
	struct authres_input in2 = {.authserv_id = "mx.example.org", .dkim = &dkim, .n_dkim = 1};
	assert_int_equal(authres_build(&in2, &b), TERN_OK);
	assert_string_equal(b.data, "Authentication-Results: mx.example.org;\r\n"
	                            "\tdkim=pass header.b=abc\r\n");
	assert_null(strstr(b.data, "Injected"));
	tbuf_reset(&b);

	/* a full buffer is the builder's error */
	struct tbuf small = TBUF_INIT(20);
	struct authres_input in3 = {.authserv_id = "mx.example.org"};
	assert_int_equal(authres_build(&in3, &small), TERN_ELIMIT);
	tbuf_free(&small);
	tbuf_free(&b);
}

static void test_build_dmarc_forms(void **state)
{
	struct tbuf b = TBUF_INIT(4096);
	/* pass: no policy.dmarc (nothing was applied), published policy shown */
	struct dmarc_outcome o =
	    outcome(DMARC_RESULT_PASS, "example.com", "v=DMARC1; p=quarantine; sp=none; np=reject",
	            DMARC_POLICY_NONE);
	struct authres_input in = {.authserv_id = "mx.example.org", .dmarc = &o};
	assert_int_equal(authres_build(&in, &b), TERN_OK);
	assert_string_equal(b.data, "Authentication-Results: mx.example.org;\r\n"
	                            "\tdmarc=pass (p=quarantine sp=none np=reject) "
	                            "header.from=example.com\r\n");
	python_check(&b, "mx.example.org; dmarc=pass header.from=example.com");
	tbuf_reset(&b);

	/* none: no record, no comment */
	o = outcome(DMARC_RESULT_NONE, "example.com", NULL, DMARC_POLICY_NONE);
	assert_int_equal(authres_build(&in, &b), TERN_OK);
	assert_string_equal(b.data, "Authentication-Results: mx.example.org;\r\n"
	                            "\tdmarc=none header.from=example.com\r\n");
	tbuf_reset(&b);

	/* no Author Domain at all */
	memset(&o, 0, sizeof(o));
	o.result = DMARC_RESULT_PERMERROR;
	o.from = DMARC_FROM_BAD;
	assert_int_equal(authres_build(&in, &b), TERN_OK);
	assert_string_equal(b.data, "Authentication-Results: mx.example.org;\r\n"
	                            "\tdmarc=permerror reason=\"From header field does not "
	                            "parse\"\r\n");
	python_check(&b, "mx.example.org; dmarc=permerror");
	tbuf_reset(&b);

	/* an internationalised From domain in U-labels would need quoting; ours
	 * are A-labels, which are tokens */
	o = outcome(DMARC_RESULT_FAIL, "xn--bcher-kva.example", "v=DMARC1; p=reject",
	            DMARC_POLICY_REJECT);
	assert_int_equal(authres_build(&in, &b), TERN_OK);
	python_check(&b, "mx.example.org; dmarc=fail header.from=xn--bcher-kva.example "
	                 "policy.dmarc=reject");
	tbuf_free(&b);
}

static void test_build_folds_long_values(void **state)
{
	char d1[80], d2[80];
	memset(d1, 'a', 60);
	memcpy(d1 + 60, ".example.com", 13);
	memset(d2, 'b', 61);
	memcpy(d2 + 61, ".example.net", 13);
	struct dmarc_dkim dkim[] = {
	    {DMARC_DKIM_PASS, d1, "selector-with-a-long-name-2026", "abcdefghijkl", NULL, false},
	    {DMARC_DKIM_TEMPERROR, d2, "s", "x", "key record lookup failed", false},
	};
	struct dmarc_spf spf = {DMARC_SPF_SOFTFAIL, DMARC_SPF_MAILFROM, d2};
	struct authres_input in = {
	    .authserv_id = "mail-gateway-01.inbound.example.org",
	    .spf = &spf,
	    .n_spf = 1,
	    .dkim = dkim,
	    .n_dkim = 2,
	    .arc = AUTHRES_ARC_FAIL,
	};
	struct tbuf b = TBUF_INIT(4096);
	assert_int_equal(authres_build(&in, &b), TERN_OK);
	check_folding(&b);
	char want[1024];
	snprintf(want, sizeof(want),
	         "mail-gateway-01.inbound.example.org; spf=softfail smtp.mailfrom=%s; "
	         "dkim=pass header.d=%s header.s=selector-with-a-long-name-2026 "
	         "header.b=abcdefgh; dkim=temperror header.d=%s header.s=s header.b=x; arc=fail",
	         d2, d1, d2);
	python_check(&b, want);
	tbuf_free(&b);
}

/* ------------------------------------------------------------- parsing */

static void test_parse_id(void **state)
{
	char id[64];
	unsigned v, i;
	struct {
		const char *val;
		bool arc;
		bool ok;
		const char *id;
		unsigned version, instance;
	} cases[] = {
	    {" mx.example.org; spf=pass", false, true, "mx.example.org", 1, 0},
	    {" (c) mx.example.org (more) 1 ; none", false, true, "mx.example.org", 1, 0},
	    {" mx.example.org 2; spf=pass", false, true, "mx.example.org", 2, 0},
	    {" \"mx.example.org\"; none", false, true, "mx.example.org", 1, 0},
	    {" \"a\\\"b\";", false, true, "a\"b", 1, 0},
	    {"\r\n\tmx.example.org", false, true, "mx.example.org", 1, 0},
	    {" mx.example.org spf=pass", false, false, NULL, 0, 0},
	    {" ; spf=pass", false, false, NULL, 0, 0},
	    {"", false, false, NULL, 0, 0},
	    {" (unclosed mx.example.org;", false, false, NULL, 0, 0},
	    {" i=3; mx.example.org; arc=pass", true, true, "mx.example.org", 1, 3},
	    {" i = 12 ; (x) mx.example.org 1; none", true, true, "mx.example.org", 1, 12},
	    {" mx.example.org; arc=pass", true, false, NULL, 0, 0},
	    {" i=; mx.example.org", true, false, NULL, 0, 0},
	};
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		bool ok = authres_parse_id(cases[k].val, strlen(cases[k].val), cases[k].arc, id,
		                           sizeof(id), &v, &i);
		if (ok != cases[k].ok || (ok && (strcmp(id, cases[k].id) != 0 ||
		                                 v != cases[k].version || i != cases[k].instance)))
			fail_msg("case %zu \"%s\": ok %d id \"%s\" v %u i %u", k, cases[k].val, ok,
			         ok ? id : "", v, i);
	}
	/* an id longer than the buffer is refused, not cut */
	assert_false(authres_parse_id(S(" abcdefghij; none"), false, id, 5, &v, &i));
}

/* ------------------------------------------------------------- removal */

static char *strip(const char *hdr, const struct authres_strip_opts *o, size_t *removed)
{
	struct tbuf b = TBUF_INIT(1 << 20);
	assert_int_equal(authres_strip(hdr, strlen(hdr), o, &b, removed), TERN_OK);
	if (!b.data)
		return tern_strdup("");
	return tbuf_steal(&b, NULL);
}

static void test_strip_authres(void **state)
{
	const char *hdr =
	    "Received: from x by y; Mon, 1 Jan 2026 00:00:00 +0000\r\n"
	    "Authentication-Results: MX.Example.ORG; dkim=pass header.d=bank.example\r\n"
	    "Authentication-Results: other.example; spf=pass smtp.mailfrom=a.test\r\n"
	    "authentication-results:\r\n"
	    "\t(forged) mx.example.org.;\r\n"
	    "\tdmarc=pass header.from=bank.example\r\n"
	    "Authentication-Results: other.example 2; future=stuff\r\n"
	    "Authentication-Results: \"mx.example.org\"; none\r\n"
	    "Authentication-Results: mx.example.org.evil; none\r\n"
	    "Authentication-Results: garbage without semicolon\r\n"
	    "Authentication-Results: mx.example.org dmarc=pass header.from=bank.example\r\n"
	    "X-Tern-DMARC: quarantine; domain=bank.example\r\n"
	    "Subject: Authentication-Results: mx.example.org; none\r\n"
	    "From: a@bank.example\r\n";
	static const char *const extra[] = {DMARC_HEADER_NAME, NULL};
	struct authres_strip_opts o = {"mx.example.org", AUTHRES_REMOVE, NULL, extra};
	size_t removed;
	char *out = strip(hdr, &o, &removed);
	assert_string_equal(out, "Received: from x by y; Mon, 1 Jan 2026 00:00:00 +0000\r\n"
	                         "Authentication-Results: other.example; spf=pass "
	                         "smtp.mailfrom=a.test\r\n"
	                         "Authentication-Results: mx.example.org.evil; none\r\n"
	                         "Authentication-Results: garbage without semicolon\r\n"
	                         "Subject: Authentication-Results: mx.example.org; none\r\n"
	                         "From: a@bank.example\r\n");
	assert_int_equal(removed, 6);
	free(out);

	/* rename: the same fields kept under another name, bytes unchanged */
	o.mode = AUTHRES_RENAME;
	out = strip(hdr, &o, &removed);
	assert_int_equal(removed, 6);
	assert_non_null(
	    strstr(out, "X-Untrusted-Authentication-Results: MX.Example.ORG; dkim=pass"));
	assert_non_null(strstr(out, "X-Untrusted-authentication-results:\r\n"
	                            "\t(forged) mx.example.org.;\r\n"));
	assert_non_null(strstr(out, "X-Untrusted-X-Tern-DMARC: quarantine"));
	assert_int_equal(strlen(out), strlen(hdr) + 6 * strlen("X-Untrusted-"));
	free(out);

	/* nothing to remove: an identical copy, bare LF and odd lines kept */
	const char *plain = "A: 1\nB: 2\r\n continued\r\nnot a field line\r\n";
	o.mode = AUTHRES_REMOVE;
	out = strip(plain, &o, &removed);
	assert_string_equal(out, plain);
	assert_int_equal(removed, 0);
	free(out);
}

static void test_strip_arc(void **state)
{
	const char *hdr =
	    "ARC-Seal: i=2; a=rsa-sha256; cv=pass; d=list.example; s=k; b=AAA\r\n"
	    "ARC-Message-Signature: i=2; a=rsa-sha256; d=list.example; s=k;\r\n"
	    "\th=from; bh=x; b=BBB\r\n"
	    "ARC-Authentication-Results: i=2; list.example; dmarc=pass\r\n"
	    "ARC-Seal: i=1; a=rsa-sha256; cv=none; d=evil.example; s=k; b=CCC\r\n"
	    "ARC-Message-Signature: i=1; a=rsa-sha256; d=evil.example; s=k; h=from; b=DDD\r\n"
	    "ARC-Authentication-Results: i=1; mx.example.org; dmarc=pass\r\n"
	    "From: a@bank.example\r\n";
	struct authres_strip_opts o = {"mx.example.org", AUTHRES_REMOVE, NULL, NULL};
	size_t removed;
	char *out = strip(hdr, &o, &removed);
	/* the set claiming us (i=1) goes whole; the list's set stays */
	assert_int_equal(removed, 3);
	assert_null(strstr(out, "i=1;"));
	assert_non_null(strstr(out, "ARC-Message-Signature: i=2; a=rsa-sha256; d=list.example; "
	                            "s=k;\r\n\th=from; bh=x; b=BBB\r\n"));
	assert_non_null(strstr(out, "From: a@bank.example\r\n"));
	free(out);

	/* a set we sealed ourselves (it came back through a list) stays */
	static const char *const own[] = {"other.example", "EVIL.example", NULL};
	o.own_arc_domains = own;
	out = strip(hdr, &o, &removed);
	assert_int_equal(removed, 0);
	assert_string_equal(out, hdr);
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_build_full),
	    cmocka_unit_test(test_build_none_and_errors),
	    cmocka_unit_test(test_build_dmarc_forms),
	    cmocka_unit_test(test_build_folds_long_values),
	    cmocka_unit_test(test_parse_id),
	    cmocka_unit_test(test_strip_authres),
	    cmocka_unit_test(test_strip_arc),
	};
	return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
