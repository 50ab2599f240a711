/*
 * test_sign.c — smtp/sign.c: which keys sign a message (the single From
 * field's domain, else its nearest parent with keys), what is left unsigned
 * (no From, several From, a domain without keys), a key that did not load
 * refusing its domain's mail (never signing with the others alone), and
 * where the signatures go in the stored message. The signatures themselves
 * are checked with the library's verifier against the keys' own records.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "policy/dkim.h"
#include "smtp/sign.h"

#define S(lit) (lit), (sizeof(lit) - 1)

struct world {
	char dir[64];
	char rsa[128], ed[128], bad[128];
	char *rec_rsa, *rec_ed;
	struct tern_config *conf;
	struct smtp_signer *sg;
};

static void write_file(const char *path, const char *data, size_t n, mode_t mode)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, n, f), n);
	fclose(f);
	assert_int_equal(chmod(path, mode), 0);
}

static void make_key(enum dkim_alg alg, const char *path, char **record)
{
	struct dkim_key *k;
	char *pem;
	size_t pl;
	assert_int_equal(dkim_key_generate(alg, 2048, &k), TERN_OK);
	assert_int_equal(dkim_key_pem(k, &pem, &pl), TERN_OK);
	write_file(path, pem, pl, 0600);
	free(pem);
	assert_int_equal(dkim_key_record(k, record), TERN_OK);
	dkim_key_free(k);
}

static int setup(void **state)
{
	struct world *w = calloc(1, sizeof(*w));
	assert_non_null(w);
	snprintf(w->dir, sizeof(w->dir), "/tmp/tern-sign-XXXXXX");
	assert_non_null(mkdtemp(w->dir));
	snprintf(w->rsa, sizeof(w->rsa), "%s/rsa.pem", w->dir);
	snprintf(w->ed, sizeof(w->ed), "%s/ed.pem", w->dir);
	snprintf(w->bad, sizeof(w->bad), "%s/bad.pem", w->dir);
	make_key(DKIM_ALG_RSA_SHA256, w->rsa, &w->rec_rsa);
	make_key(DKIM_ALG_ED25519_SHA256, w->ed, &w->rec_ed);
	write_file(w->bad, S("not a key\n"), 0600);
	char conf[2000], err[400];
	snprintf(conf, sizeof(conf),
	         "dkim { keys = [\n"
	         "  { domain = \"example.com\"; selector = \"rsa1\"; key_file = \"%s\"; },\n"
	         "  { domain = \"example.com\"; selector = \"ed1\"; key_file = \"%s\"; },\n"
	         "  { domain = \"broken.test\"; selector = \"ok\"; key_file = \"%s\"; },\n"
	         "  { domain = \"broken.test\"; selector = \"bad\"; key_file = \"%s\"; } ]; }\n",
	         w->rsa, w->ed, w->rsa, w->bad);
	w->conf = conf_load_string(conf, strlen(conf), "t.conf", err, sizeof(err));
	if (!w->conf)
		fail_msg("%s", err);
	assert_int_equal(smtp_signer_load(&w->conf->dkim, &w->sg), TERN_OK);
	assert_non_null(w->sg);
	assert_int_equal(smtp_signer_count(w->sg), 4);
	*state = w;
	return 0;
}

static int teardown(void **state)
{
	struct world *w = *state;
	smtp_signer_free(w->sg);
	conf_unref(w->conf);
	unlink(w->rsa);
	unlink(w->ed);
	unlink(w->bad);
	rmdir(w->dir);
	free(w->rec_rsa);
	free(w->rec_ed);
	free(w);
	return 0;
}

static const char body[] = "\r\nHello,\r\n\r\nsigned at receipt.\r\n";

static char *message(const char *header)
{
	size_t n = strlen(header) + sizeof(body);
	char *m = malloc(n);
	assert_non_null(m);
	snprintf(m, n, "%s%s", header, body);
	return m;
}

/* The verifier's verdict on msg (signature fields on top), keys answered
 * from the world's records. */
static void lookup(void *arg, struct dkim_verify *v, unsigned qid, const char *name)
{
	struct world *w = arg;
	const char *rec = strncmp(name, "rsa1.", 5) == 0  ? w->rec_rsa
	                  : strncmp(name, "ed1.", 4) == 0 ? w->rec_ed
	                                                  : NULL;
	dkim_verify_key_answer(v, qid, rec ? DKIM_LOOKUP_OK : DKIM_LOOKUP_NOTFOUND, &rec,
	                       rec ? 1 : 0);
}

static void test_both_keys_sign_and_verify(void **state)
{
	struct world *w = *state;
	char *m = message("From: Alice <alice@example.com>\r\nTo: bob@example.net\r\n"
	                  "Subject: hi\r\n");
	struct smtp_sign_result r;
	smtp_sign_run(w->sg, "TESTID0000000001", m, strlen(m), &r);
	assert_int_equal(r.status, SMTP_SIGN_OK);
	assert_non_null(r.fields);
	/* put under a Received field, as the session does */
	struct tbuf t = TBUF_INIT(1 << 20);
	const char rcv[] = "Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n";
	assert_int_equal(tbuf_append(&t, S(rcv)), TERN_OK);
	assert_int_equal(tbuf_append(&t, m, strlen(m)), TERN_OK);
	assert_int_equal(smtp_sign_insert(&r, &t, sizeof(rcv) - 1), TERN_OK);
	assert_int_equal(t.len, sizeof(rcv) - 1 + r.len + strlen(m));
	assert_memory_equal(t.data, rcv, sizeof(rcv) - 1);
	assert_memory_equal(t.data + sizeof(rcv) - 1, "DKIM-Signature:", 15);
	assert_memory_equal(t.data + sizeof(rcv) - 1 + r.len, m, strlen(m));

	struct dkim_verify *v = dkim_verify_new(NULL);
	assert_non_null(v);
	assert_int_equal(dkim_verify_message(v, t.data, t.len, lookup, w), TERN_OK);
	assert_int_equal(dkim_verify_count(v), 2);
	for (size_t i = 0; i < 2; i++) {
		const struct dkim_result *res = dkim_verify_result(v, i);
		assert_int_equal(res->status, DKIM_PASS);
		assert_string_equal(res->domain, "example.com");
	}
	assert_string_equal(dkim_verify_result(v, 0)->algorithm, "rsa-sha256");
	assert_string_equal(dkim_verify_result(v, 1)->algorithm, "ed25519-sha256");
	dkim_verify_free(v);
	tbuf_free(&t);
	smtp_sign_result_clear(&r);
	assert_null(r.fields);
	free(m);
}

static void test_subdomain_takes_the_parents_keys(void **state)
{
	struct world *w = *state;
	char *m = message("From: n@News.Example.COM\r\nSubject: hi\r\n");
	struct smtp_sign_result r;
	smtp_sign_run(w->sg, "TESTID0000000002", m, strlen(m), &r);
	assert_int_equal(r.status, SMTP_SIGN_OK);
	assert_non_null(strstr(r.fields, "d=example.com;"));
	smtp_sign_result_clear(&r);
	free(m);
}

static void test_what_is_not_signed(void **state)
{
	struct world *w = *state;
	static const struct {
		const char *header, *why;
	} cases[] = {
	    {"Subject: no from\r\n", "no From field"},
	    {"From: a@example.com\r\nFrom: b@example.com\r\n", "several From fields"},
	    {"From: a@example.com, b@other.org\r\n", "addresses of several domains in From"},
	    {"From: a@other.org\r\n", "no key for other.org"},
	    {"From: a@notexample.com\r\n", "no key for notexample.com"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *m = message(cases[i].header);
		struct smtp_sign_result r;
		smtp_sign_run(w->sg, "TESTID0000000003", m, strlen(m), &r);
		assert_int_equal(r.status, SMTP_SIGN_NONE);
		assert_null(r.fields);
		assert_string_equal(r.reason, cases[i].why);
		free(m);
	}
}

/* A key that did not load refuses its domain (and subdomains that take its
 * keys): the domain's other key must not sign alone. */
static void test_broken_key_refuses_its_domain(void **state)
{
	struct world *w = *state;
	const char *froms[] = {"From: a@broken.test\r\n", "From: a@sub.broken.test\r\n"};
	for (size_t i = 0; i < 2; i++) {
		char *m = message(froms[i]);
		struct smtp_sign_result r;
		smtp_sign_run(w->sg, "TESTID0000000004", m, strlen(m), &r);
		assert_int_equal(r.status, SMTP_SIGN_ERROR);
		assert_null(r.fields);
		assert_non_null(strstr(r.reason, "broken.test (selector bad)"));
		smtp_sign_result_clear(&r);
		free(m);
	}
}

static void test_no_keys_no_signer(void **state)
{
	struct conf_dkim none = {0};
	struct smtp_signer *sg = (struct smtp_signer *)1;
	assert_int_equal(smtp_signer_load(&none, &sg), TERN_OK);
	assert_null(sg);
	assert_int_equal(smtp_signer_count(NULL), 0);
	char *m = message("From: a@example.com\r\n");
	struct smtp_sign_result r;
	smtp_sign_run(NULL, "TESTID0000000005", m, strlen(m), &r);
	assert_int_equal(r.status, SMTP_SIGN_NONE);
	free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_both_keys_sign_and_verify),
	    cmocka_unit_test(test_subdomain_takes_the_parents_keys),
	    cmocka_unit_test(test_what_is_not_signed),
	    cmocka_unit_test(test_broken_key_refuses_its_domain),
	    cmocka_unit_test(test_no_keys_no_signer),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
