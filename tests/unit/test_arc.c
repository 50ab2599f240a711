/*
 * test_arc.c — the pieces of policy/arc.h: the instance parser, the
 * validator's key-query state machine (one query per key name, temporary
 * failures, the deadline, no query for a chain that is already broken),
 * sealing and validating chains of our own (oldest-pass, the cv=fail rules,
 * the 50-set limit), the sealer's refusals, what a trusted sealer's AAR
 * vouches for (arc_trusted_pass), the session's no-ARC-field shortcut
 * (smtp/verify_arc.h), and the two-step validator over a file mapping (the
 * header block, then the body in pieces whose pages go; the seal's bh= from
 * the same pass, arc_seal_header). Keys are generated here
 * (Ed25519: fast); the ValiMail vectors are test_arc_suite.c's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "policy/arc.h"
#include "smtp/verify_arc.h"

static const char MSG[] = "From: Alice <alice@example.test>\r\n"
                          "To: list@lists.example.org\r\n"
                          "Subject: hello\r\n"
                          "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                          "\r\n"
                          "Hello,  world.\r\n";

static struct dkim_key *key;
static struct dkim_keytab *tab;

static int setup(void **state)
{
	char *rec = NULL, *text = NULL, err[128];
	assert_int_equal(dkim_key_generate(DKIM_ALG_ED25519_SHA256, 0, &key), TERN_OK);
	assert_int_equal(dkim_key_record(key, &rec), TERN_OK);
	size_t n = strlen(rec) * 2 + 200;
	text = malloc(n);
	assert_non_null(text);
	snprintf(text, n,
	         "s1._domainkey.example.test %s\n"
	         "s1._domainkey.other.test %s\n"
	         "s1._domainkey.slow.test TEMPFAIL\n",
	         rec, rec);
	assert_int_equal(dkim_keytab_parse(text, strlen(text), &tab, err, sizeof(err)), TERN_OK);
	free(rec);
	free(text);
	return 0;
}

static int teardown(void **state)
{
	dkim_key_free(key);
	dkim_keytab_free(tab);
	return 0;
}

/* ------------------------------------------------------------ helpers */

struct res {
	enum arc_cv cv;
	unsigned n, oldest;
	bool temporary;
	char reason[160];
	char sealer[DKIM_DOMAIN_MAX + 1];
};

static struct res check(const char *msg, size_t len)
{
	struct res r = {0};
	struct arc_verify *v = arc_verify_new();
	assert_non_null(v);
	assert_int_equal(arc_verify_message(v, msg, len, arc_keytab_lookup, tab), TERN_OK);
	const struct arc_result *a = arc_verify_result(v);
	assert_non_null(a);
	r.cv = a->cv;
	r.n = a->n_sets;
	r.oldest = a->oldest_pass;
	r.temporary = a->temporary;
	snprintf(r.reason, sizeof(r.reason), "%s", a->reason);
	snprintf(r.sealer, sizeof(r.sealer), "%s", a->sealer);
	arc_verify_free(v);
	return r;
}

/* Seals msg (freed) for domain with cv; returns the new message (fields +
 * old), or the old one when nothing was added. */
static char *seal_cv(char *msg, size_t *len, const char *domain, enum arc_cv cv, int *added)
{
	struct arc_seal_params p = {.domain = domain,
	                            .selector = "s1",
	                            .timestamp = 1700000000,
	                            .authres = "mx.example.test; arc=none; spf=pass "
	                                       "smtp.mailfrom=alice@example.test"};
	char *out = NULL;
	size_t ol = 0;
	assert_int_equal(arc_seal(key, &p, cv, msg, *len, &out, &ol), TERN_OK);
	*added = out != NULL;
	if (!out)
		return msg;
	char *m = malloc(ol + *len + 1);
	assert_non_null(m);
	memcpy(m, out, ol);
	memcpy(m + ol, msg, *len);
	m[ol + *len] = '\0';
	*len += ol;
	free(out);
	free(msg);
	return m;
}

/* Seals with the cv the validator finds. */
static char *seal(char *msg, size_t *len, const char *domain, int *added)
{
	return seal_cv(msg, len, domain, check(msg, *len).cv, added);
}

static char *dup_msg(const char *s, size_t *len)
{
	*len = strlen(s);
	char *m = malloc(*len + 1);
	assert_non_null(m);
	memcpy(m, s, *len + 1);
	return m;
}

/* Replaces the last `from` in m (same length `to`): the oldest set's copy. */
static void poke(char *m, const char *from, const char *to)
{
	char *p = NULL;
	for (char *q = strstr(m, from); q; q = strstr(q + 1, from))
		p = q;
	assert_non_null(p);
	assert_int_equal(strlen(from), strlen(to));
	memcpy(p, to, strlen(to));
}

/* ------------------------------------------------------------ tests */

static void test_instance(void **state)
{
	static const struct {
		const char *v;
		bool aar;
		unsigned want;
	} c[] = {
	    {"i=1; mx.example; spf=pass", true, 1},
	    {" i = 12 ; mx.example", true, 12},
	    {"\r\n\t(comment) i=3;x", true, 3},
	    {"i=50;", true, 50},
	    {"i=51;", true, 0},
	    {"i=0;", true, 0},
	    {"i=1 mx.example", true, 0},
	    {"mx.example; i=1;", true, 0},
	    {"i=;", true, 0},
	    {"i=123;", true, 0},
	    {"a=rsa-sha256; i=7; d=x", false, 7},
	    {"i=1; i=2", false, 0},
	    {"I=1; a=b", false, 0},
	    {"a=b", false, 0},
	    {"i=x1", false, 0},
	};
	for (size_t k = 0; k < sizeof(c) / sizeof(c[0]); k++) {
		if (arc_instance(c[k].v, strlen(c[k].v), c[k].aar) != c[k].want)
			fail_msg("arc_instance(\"%s\", %d) != %u", c[k].v, c[k].aar, c[k].want);
	}
}

static void test_no_chain_is_none_and_asks_nothing(void **state)
{
	struct arc_verify *v = arc_verify_new();
	unsigned qid;
	assert_int_equal(arc_verify_input(v, MSG, strlen(MSG)), TERN_OK);
	assert_int_equal(arc_verify_state(v), ARC_VS_DONE);
	assert_null(arc_verify_next_query(v, &qid));
	assert_int_equal(arc_verify_result(v)->cv, ARC_CV_NONE);
	assert_int_equal(arc_verify_input(v, MSG, strlen(MSG)), TERN_EINVAL);
	arc_verify_free(v);
}

static void test_seal_and_validate_three_hops(void **state)
{
	size_t len;
	int added;
	char *m = dup_msg(MSG, &len);
	m = seal(m, &len, "example.test", &added);
	assert_true(added);
	assert_non_null(
	    strstr(m, "ARC-Seal: i=1; a=ed25519-sha256; cv=none; d=example.test; s=s1;"));
	assert_non_null(
	    strstr(m, "\r\nARC-Authentication-Results: i=1; mx.example.test; arc=none;"));
	struct res r = check(m, len);
	assert_int_equal(r.cv, ARC_CV_PASS);
	assert_int_equal(r.n, 1);
	assert_string_equal(r.sealer, "example.test");
	m = seal(m, &len, "other.test", &added);
	m = seal(m, &len, "example.test", &added);
	assert_non_null(strstr(m, "ARC-Seal: i=3; a=ed25519-sha256; cv=pass;"));
	r = check(m, len);
	assert_int_equal(r.cv, ARC_CV_PASS);
	assert_int_equal(r.n, 3);
	assert_int_equal(r.oldest, 0);
	free(m);
}

static void test_oldest_pass_and_a_changed_body(void **state)
{
	size_t len;
	int added;
	char *m = dup_msg(MSG, &len);
	m = seal(m, &len, "example.test", &added);
	/* a list validates (pass), changes the subject, then seals: AMS 1
	 * breaks, the chain holds */
	struct res r = check(m, len);
	assert_int_equal(r.cv, ARC_CV_PASS);
	poke(m, "Subject: hello", "Subject: HELLO");
	m = seal_cv(m, &len, "other.test", r.cv, &added);
	r = check(m, len);
	assert_int_equal(r.cv, ARC_CV_PASS);
	assert_int_equal(r.oldest, 2);
	/* a change after the last seal breaks the newest AMS: fail */
	poke(m, "Hello,  world.", "Hello,  World.");
	r = check(m, len);
	assert_int_equal(r.cv, ARC_CV_FAIL);
	assert_false(r.temporary);
	assert_string_equal(r.reason, "ARC-Message-Signature i=2: body hash did not verify");
	/* sealing that: cv=fail, over its own set only; it validates as fail,
	 * and after it nobody adds a set */
	m = seal(m, &len, "example.test", &added);
	assert_true(added);
	assert_non_null(strstr(m, "ARC-Seal: i=3; a=ed25519-sha256; cv=fail;"));
	r = check(m, len);
	assert_int_equal(r.cv, ARC_CV_FAIL);
	assert_string_equal(r.reason, "the newest ARC-Seal says cv=fail");
	size_t before = len;
	m = seal(m, &len, "example.test", &added);
	assert_false(added);
	assert_int_equal(len, before);
	free(m);
}

static void test_tampered_seal_fails(void **state)
{
	size_t len;
	int added;
	char *m = dup_msg(MSG, &len);
	m = seal(m, &len, "example.test", &added);
	m = seal(m, &len, "example.test", &added);
	/* the AAR of set 1 is covered by every seal */
	poke(m, "spf=pass", "spf=fail");
	struct res r = check(m, len);
	assert_int_equal(r.cv, ARC_CV_FAIL);
	assert_string_equal(r.reason, "ARC-Seal i=2: signature did not verify");
	free(m);
}

static void test_structure_failures_ask_no_keys(void **state)
{
	size_t len;
	int added;
	char *m = dup_msg(MSG, &len);
	m = seal(m, &len, "example.test", &added);
	/* a second AAR i=1 */
	size_t n2 = len + 64;
	char *m2 = malloc(n2);
	int k = snprintf(m2, n2, "ARC-Authentication-Results: i=1; x.example; none\r\n%s", m);
	struct arc_verify *v = arc_verify_new();
	unsigned qid;
	assert_int_equal(arc_verify_input(v, m2, (size_t)k), TERN_OK);
	assert_int_equal(arc_verify_state(v), ARC_VS_DONE);
	assert_null(arc_verify_next_query(v, &qid));
	assert_int_equal(arc_verify_result(v)->cv, ARC_CV_FAIL);
	arc_verify_free(v);
	/* a gap: set 1 renamed to 2 */
	poke(m, "ARC-Seal: i=1;", "ARC-Seal: i=2;");
	struct res r = check(m, len);
	assert_int_equal(r.cv, ARC_CV_FAIL);
	free(m);
	free(m2);
}

static void test_one_query_per_key_and_temporary_failures(void **state)
{
	size_t len;
	int added;
	char *m = dup_msg(MSG, &len);
	m = seal(m, &len, "example.test", &added);
	m = seal(m, &len, "example.test", &added);
	m = seal(m, &len, "slow.test", &added);
	struct arc_verify *v = arc_verify_new();
	unsigned qid, q[4];
	const char *names[4];
	size_t nq = 0;
	assert_int_equal(arc_verify_input(v, m, len), TERN_OK);
	assert_int_equal(arc_verify_state(v), ARC_VS_WAITING);
	while (nq < 4 && (names[nq] = arc_verify_next_query(v, &qid)) != NULL)
		q[nq++] = qid;
	/* six signatures, two key names */
	assert_int_equal(nq, 2);
	assert_int_equal(arc_verify_pending(v), 2);
	for (size_t i = 0; i < nq; i++)
		if (strcmp(names[i], "s1._domainkey.example.test") == 0)
			arc_keytab_lookup(tab, v, q[i], names[i]);
	assert_int_equal(arc_verify_pending(v), 1);
	assert_int_equal(arc_verify_finish(v), TERN_EINVAL); /* not ready */
	arc_verify_expire(v);                                /* the deadline */
	assert_int_equal(arc_verify_state(v), ARC_VS_READY);
	assert_int_equal(arc_verify_finish(v), TERN_OK);
	const struct arc_result *r = arc_verify_result(v);
	assert_int_equal(r->cv, ARC_CV_FAIL);
	assert_true(r->temporary);
	assert_string_equal(r->reason, "ARC-Message-Signature i=3: key lookup failed (temporary)");
	arc_verify_free(v);
	/* the table's TEMPFAIL line says the same */
	struct res rr = check(m, len);
	assert_true(rr.temporary);
	free(m);
}

static void test_fifty_sets_and_no_more(void **state)
{
	size_t len;
	int added = 0;
	char *m = dup_msg(MSG, &len);
	for (int i = 0; i < ARC_MAX_SETS; i++) {
		m = seal(m, &len, i % 2 ? "other.test" : "example.test", &added);
		assert_true(added);
	}
	struct res r = check(m, len);
	assert_int_equal(r.cv, ARC_CV_PASS);
	assert_int_equal(r.n, ARC_MAX_SETS);
	m = seal(m, &len, "example.test", &added);
	assert_false(added);
	/* a 51st set, forged by hand, makes the chain fail */
	size_t n2 = len + 200;
	char *m2 = malloc(n2);
	int k =
	    snprintf(m2, n2,
	             "ARC-Seal: i=51; a=ed25519-sha256; cv=pass; d=example.test; s=s1; b=AAAA\r\n"
	             "%s",
	             m);
	r = check(m2, (size_t)k);
	assert_int_equal(r.cv, ARC_CV_FAIL);
	free(m2);
	free(m);
}

static void test_seal_refusals(void **state)
{
	char *out = NULL;
	size_t ol = 0;
	const char *bad_h[] = {"from", "arc-seal"};
	struct arc_seal_params p = {.domain = "example.test",
	                            .selector = "s1",
	                            .timestamp = 1,
	                            .authres = "mx.example.test; arc=none"};
	/* pass or fail of a chain that is not there */
	assert_int_equal(arc_seal(key, &p, ARC_CV_PASS, MSG, strlen(MSG), &out, &ol), TERN_EINVAL);
	p.headers = bad_h;
	p.n_headers = 2;
	assert_int_equal(arc_seal(key, &p, ARC_CV_NONE, MSG, strlen(MSG), &out, &ol), TERN_EINVAL);
	p.headers = NULL;
	p.n_headers = 0;
	p.authres = "mx.example.test; arc=none\r\nX-Injected: yes";
	assert_int_equal(arc_seal(key, &p, ARC_CV_NONE, MSG, strlen(MSG), &out, &ol), TERN_EINVAL);
	p.authres = "mx.example.test; arc=none";
	p.domain = "bad domain";
	assert_int_equal(arc_seal(key, &p, ARC_CV_NONE, MSG, strlen(MSG), &out, &ol), TERN_EINVAL);
	assert_null(out);
	/* the default h= covers what is present, never ARC fields */
	p.domain = "example.test";
	assert_int_equal(arc_seal(key, &p, ARC_CV_NONE, MSG, strlen(MSG), &out, &ol), TERN_OK);
	assert_non_null(strstr(out, "h=from:to:subject:date;"));
	free(out);
}

/* ---------------------------------------------- trusted sealers (§7.2) */

/* MSG sealed by domain with an AAR saying authres. */
static char *sealed_by(const char *domain, const char *authres, size_t *len)
{
	char *msg = dup_msg(MSG, len);
	struct arc_seal_params p = {
	    .domain = domain, .selector = "s1", .timestamp = 1700000000, .authres = authres};
	char *out = NULL;
	size_t ol = 0;
	enum arc_cv cv = check(msg, *len).cv;
	assert_int_equal(arc_seal(key, &p, cv, msg, *len, &out, &ol), TERN_OK);
	assert_non_null(out);
	char *m = malloc(ol + *len + 1);
	assert_non_null(m);
	memcpy(m, out, ol);
	memcpy(m + ol, msg, *len + 1);
	*len += ol;
	free(out);
	free(msg);
	return m;
}

static bool vouches(const char *authres, const char *sealer, const char *trusted, const char *from,
                    unsigned lowest, struct arc_trust *t)
{
	size_t len;
	char *m = sealed_by(sealer, authres, &len);
	assert_int_equal(check(m, len).cv, ARC_CV_PASS);
	const char *list[] = {"nobody.test", trusted};
	struct arc_trust_query q = {list, 2, from, lowest};
	bool ok = arc_trusted_pass(m, len, &q, t);
	free(m);
	return ok;
}

static void test_trusted_sealer_vouches(void **state)
{
	struct arc_trust t;
	/* dmarc=pass for the From domain, from a trusted sealer */
	assert_true(vouches("lists.other.test; dmarc=pass header.from=example.test", "other.test",
	                    "OTHER.test", "example.test", 0, &t));
	assert_int_equal(t.instance, 1);
	assert_string_equal(t.sealer, "other.test");
	assert_string_equal(t.what, "dmarc=pass");
	/* the same words from a sealer nobody trusts, or for another domain */
	assert_false(vouches("lists.other.test; dmarc=pass header.from=example.test", "other.test",
	                     "third.test", "example.test", 0, &t));
	assert_false(vouches("lists.other.test; dmarc=pass header.from=example.test", "other.test",
	                     "other.test", "example.org", 0, &t));
	/* below the validated range (oldest-pass 2): not read */
	assert_false(vouches("lists.other.test; dmarc=pass header.from=example.test", "other.test",
	                     "other.test", "example.test", 2, &t));
	/* an aligned SPF or DKIM pass: the domain of smtp.mailfrom, header.d, exactly */
	assert_true(vouches("x.test; dmarc=fail header.from=example.test; spf=pass "
	                    "smtp.mailfrom=bounce@Example.TEST",
	                    "other.test", "other.test", "example.test", 0, &t));
	assert_string_equal(t.what, "spf=pass");
	assert_true(vouches("x.test 1; dkim=pass (good; signature) header.d=\"example.test\" "
	                    "header.s=s1; arc=none",
	                    "other.test", "other.test", "example.test", 0, &t));
	assert_string_equal(t.what, "dkim=pass");
	assert_false(vouches("x.test; dkim=pass header.d=sub.example.test; spf=pass "
	                     "smtp.mailfrom=a@evil.test; dmarc=fail header.from=example.test",
	                     "other.test", "other.test", "example.test", 0, &t));
	/* a pass of a method that does not stand for the author, or a fail */
	assert_false(vouches("x.test; arc=pass header.from=example.test; dkim=fail "
	                     "header.d=example.test",
	                     "other.test", "other.test", "example.test", 0, &t));
	/* nothing to read */
	assert_false(vouches("x.test; none", "other.test", "other.test", "example.test", 0, &t));
	struct arc_trust_query q = {NULL, 0, "example.test", 0};
	assert_false(arc_trusted_pass(MSG, strlen(MSG), &q, &t));
}

/* verify_arc.c's shortcut: a message with no ARC- field is judged none
 * without being copied; any field named ARC-* (any case) takes the long way. */
/* A message of about 3 MiB: MSG's header, a long body with what relaxed
 * canonicalization changes. malloc'd. */
static char *big_msg(size_t *len)
{
	struct tbuf t = TBUF_INIT(8u << 20);
	assert_int_equal(tbuf_append_str(&t, MSG), TERN_OK);
	for (unsigned i = 0; i < 40000; i++)
		assert_int_equal(tbuf_printf(&t, "line %06u  of a digest,\t padded %s\r\n", i,
		                             i % 5 ? "" : " \t "),
		                 TERN_OK);
	char *m = tbuf_steal(&t, len);
	assert_non_null(m);
	tbuf_free(&t);
	return m;
}

/* A read-only shared mapping of a file holding p[0..n), as a spilled
 * message is checked. */
static const char *map_copy(const char *p, size_t n)
{
	char path[] = "/tmp/tern-test-arc-map-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	assert_int_equal(write(fd, p, n), (ssize_t)n);
	void *m = mmap(NULL, n, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	assert_true(m != MAP_FAILED);
	return m;
}

/* The two-step validator over a mapping (header block, then the body fed in
 * pieces whose pages go, the seal's hash in the same pass). */
static const struct arc_result *two_steps(struct arc_verify *v, const char *map, size_t len,
                                          char bh[45])
{
	size_t hl = 0, bo = 0;
	unsigned qid;
	const char *name;
	dkim_split_message(map, len, &hl, &bo);
	assert_int_equal(arc_verify_headers(v, map, hl), TERN_OK);
	assert_int_equal(arc_verify_seal_body(v), TERN_OK);
	while ((name = arc_verify_next_query(v, &qid)) != NULL)
		arc_keytab_lookup(tab, v, qid, name);
	/* every key is in, the body is not: not ready */
	assert_int_equal(arc_verify_state(v), ARC_VS_WAITING);
	struct dkim_body *b = arc_verify_body(v);
	assert_non_null(b);
	dkim_body_feed(&b, 1, map + bo, len - bo, true);
	arc_verify_body_end(v);
	assert_null(arc_verify_body(v));
	assert_int_equal(arc_verify_state(v), ARC_VS_READY);
	assert_int_equal(arc_verify_finish(v), TERN_OK);
	assert_int_equal(arc_verify_seal_bh(v, bh), TERN_OK);
	return arc_verify_result(v);
}

static void test_large_body_in_pieces_from_a_mapping(void **state)
{
	size_t len, hl = 0, bo = 0;
	int added;
	char *m = big_msg(&len);
	m = seal(m, &len, "example.test", &added);
	m = seal(m, &len, "other.test", &added);
	assert_int_equal(check(m, len).cv, ARC_CV_PASS);
	dkim_split_message(m, len, &hl, &bo);

	const char *map = map_copy(m, len);
	struct arc_verify *v = arc_verify_new();
	char bh[45], want[45];
	const struct arc_result *r = two_steps(v, map, len, bh);
	assert_int_equal(r->cv, ARC_CV_PASS);
	assert_int_equal(r->n_sets, 2);
	assert_memory_equal(map, m, len); /* released pages read back from the file */
	/* the seal's bh= from the pass is the whole body's, and sealing with it
	 * makes arc_seal's very set */
	assert_int_equal(dkim_body_hash_b64(DKIM_CANON_RELAXED, m + bo, len - bo, want), TERN_OK);
	assert_string_equal(bh, want);
	struct arc_seal_params p = {.domain = "example.test",
	                            .selector = "s1",
	                            .timestamp = 1700000000,
	                            .authres = "mx.example.test; arc=pass"};
	char *o1 = NULL, *o2 = NULL;
	size_t l1 = 0, l2 = 0;
	assert_int_equal(arc_seal(key, &p, ARC_CV_PASS, m, len, &o1, &l1), TERN_OK);
	assert_int_equal(arc_seal_header(key, &p, ARC_CV_PASS, m, hl, bh, &o2, &l2), TERN_OK);
	assert_non_null(o1);
	assert_int_equal(l1, l2);
	assert_memory_equal(o1, o2, l1);
	free(o2);
	assert_int_equal(arc_seal_header(key, &p, ARC_CV_PASS, m, hl, "short", &o2, &l2),
	                 TERN_EINVAL);
	free(o1);
	free(o2);
	arc_verify_free(v);
	munmap((void *)map, len);

	/* one byte changed deep in the body: the newest AMS fails */
	poke(m, "line 039000", "line 039001");
	map = map_copy(m, len);
	v = arc_verify_new();
	r = two_steps(v, map, len, bh);
	assert_int_equal(r->cv, ARC_CV_FAIL);
	assert_string_equal(r->reason, "ARC-Message-Signature i=2: body hash did not verify");
	/* and no second header block */
	assert_int_equal(arc_verify_headers(v, m, hl), TERN_EINVAL);
	arc_verify_free(v);
	munmap((void *)map, len);
	free(m);
}

static void test_has_arc_fields(void **state)
{
	static const char none[] = "From: a@example.test\r\nSubject: ARC-Seal: no\r\n"
	                           "X-ARC-Seal: no\r\n folded ARC-Seal: no\r\n";
	assert_false(smtp_arc_has_fields(none, strlen(none)));
	static const char yes[] = "From: a@example.test\r\narc-seal: i=1\r\n";
	assert_true(smtp_arc_has_fields(yes, strlen(yes)));
	assert_true(smtp_arc_has_fields("ARC-Authentication-Results: i=1; x\r\n", 38));
	assert_false(smtp_arc_has_fields("ARC", 3));
	assert_false(smtp_arc_has_fields("", 0));
	size_t len;
	char *m = sealed_by("other.test", "x.test; none", &len);
	assert_true(smtp_arc_has_fields(m, len));
	free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_instance),
	    cmocka_unit_test(test_no_chain_is_none_and_asks_nothing),
	    cmocka_unit_test(test_seal_and_validate_three_hops),
	    cmocka_unit_test(test_oldest_pass_and_a_changed_body),
	    cmocka_unit_test(test_tampered_seal_fails),
	    cmocka_unit_test(test_structure_failures_ask_no_keys),
	    cmocka_unit_test(test_one_query_per_key_and_temporary_failures),
	    cmocka_unit_test(test_fifty_sets_and_no_more),
	    cmocka_unit_test(test_seal_refusals),
	    cmocka_unit_test(test_trusted_sealer_vouches),
	    cmocka_unit_test(test_has_arc_fields),
	    cmocka_unit_test(test_large_body_in_pieces_from_a_mapping),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
