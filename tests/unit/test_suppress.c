/*
 * test_suppress.c — the suppression list (store/suppress.h) and its HTTP
 * handlers (http/suppress_routes.h): the DSN/ARF report parser on samples
 * (tests/data/suppress, tests/data/arf) and hand-made edge cases, the VERP
 * and one-click tokens (round trip, any case, a flipped byte, the other
 * scheme's token), the store (scopes, normalisation, list, delete), the
 * key file, the List-Unsubscribe header fields, and the unsubscribe and API
 * handlers called directly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/id.h"
#include "http/suppress_routes.h"
#include "queue/queue.h"
#include "store/suppress.h"
#include "store/suppress_filter.h"

#include <sqlite3.h>

static char *slurp(const char *rel, size_t *len)
{
	const char *base = getenv("TERN_TESTDATA");
	char path[2048];
	snprintf(path, sizeof(path), "%s/%s", base ? base : TERN_TESTDATA_DIR, rel);
	FILE *f = fopen(path, "rb");
	if (!f)
		fail_msg("cannot open %s (TERN_TESTDATA overrides the directory)", path);
	char *buf = malloc(1 << 20);
	assert_non_null(buf);
	*len = fread(buf, 1, (1 << 20) - 1, f);
	buf[*len] = '\0';
	fclose(f);
	return buf;
}

static char tmpdir[256];

static int setup_dir(void **state)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_suppress.XXXXXX");
	assert_non_null(mkdtemp(tmpdir));
	return 0;
}

static int teardown_dir(void **state)
{
	suppress_shared_close();
	const char *files[] = {"suppress.db", "suppress.db-wal", "suppress.db-shm", "suppress.key",
	                       "suppress.gen"};
	for (size_t i = 0; i < 5; i++) {
		char p[512];
		snprintf(p, sizeof(p), "%s/%s", tmpdir, files[i]);
		unlink(p);
	}
	rmdir(tmpdir);
	return 0;
}

/* ---- parser ---------------------------------------------------------------- */

static void parses_a_postfix_dsn(void **state)
{
	size_t n;
	char *m = slurp("suppress/dsn-postfix.eml", &n);
	struct suppress_report r;
	suppress_parse_report(m, n, &r);
	assert_int_equal(r.kind, SUPPRESS_REPORT_DSN);
	assert_int_equal(r.n_rcpts, 2);
	assert_string_equal(r.rcpts[0].final_rcpt, "gone@remote.example");
	assert_string_equal(r.rcpts[0].action, "failed");
	assert_string_equal(r.rcpts[0].status, "5.1.1");
	/* the folded Diagnostic-Code, unfolded */
	assert_non_null(strstr(r.rcpts[0].diagnostic, "Recipient address rejected: User unknown"));
	assert_true(suppress_rcpt_is_hard(&r.rcpts[0]));
	assert_string_equal(r.rcpts[1].final_rcpt, "busy@remote.example");
	assert_string_equal(r.rcpts[1].action, "delayed");
	assert_false(suppress_rcpt_is_hard(&r.rcpts[1]));
	assert_string_equal(r.orig_to, "gone@remote.example");
	assert_string_equal(r.orig_from, "alice@example.org");
	assert_string_equal(r.orig_return_path,
	                    "bounce+crfgs2ng1n800000-0-0123456789abcdef@bounces.example.org");
	/* Every prefix parses without harm (ASan watches) and finds no more. */
	for (size_t k = 0; k < n; k += 7) {
		struct suppress_report p;
		suppress_parse_report(m, k, &p);
		assert_true(p.n_rcpts <= 2);
	}
	free(m);
}

static void parses_arf_reports(void **state)
{
	size_t n;
	char *m = slurp("arf/rfc5965-b2.eml", &n);
	struct suppress_report r;
	suppress_parse_report(m, n, &r);
	assert_int_equal(r.kind, SUPPRESS_REPORT_ARF);
	assert_string_equal(r.feedback_type, "abuse");
	assert_string_equal(r.original_rcpt_to, "user@example.com");
	assert_string_equal(r.original_mail_from, "somespammer@example.net");
	assert_string_equal(r.orig_from, "somespammer@example.net");
	assert_string_equal(r.orig_to, ""); /* "<Undisclosed Recipients>": no address */
	free(m);

	m = slurp("arf/no-rcpt-to-lf.eml", &n);
	suppress_parse_report(m, n, &r);
	assert_int_equal(r.kind, SUPPRESS_REPORT_ARF);
	assert_string_equal(r.original_rcpt_to, "");
	assert_string_equal(r.orig_to, "bob@isp.example");
	assert_string_equal(r.orig_from, "news@example.org");
	assert_string_equal(r.orig_return_path,
	                    "bounce+crfgs2ng1n800000-3-0123456789abcdef@bounces.example.org");
	free(m);
}

static void parser_edge_cases(void **state)
{
	struct suppress_report r;
	const char *plain = "From: a@b\r\nSubject: x\r\n\r\nbody\r\n";
	suppress_parse_report(plain, strlen(plain), &r);
	assert_int_equal(r.kind, SUPPRESS_REPORT_NONE);
	suppress_parse_report(NULL, 0, &r);
	assert_int_equal(r.kind, SUPPRESS_REPORT_NONE);
	/* multipart/report without a boundary: nothing */
	const char *nob = "Content-Type: multipart/report\r\n\r\n--x\r\n";
	suppress_parse_report(nob, strlen(nob), &r);
	assert_int_equal(r.kind, SUPPRESS_REPORT_NONE);
	/* A boundary that is a prefix of a longer line does not split. */
	const char *m = "Content-Type: Multipart/Report; boundary=b\r\n\r\n"
	                "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
	                "Reporting-MTA: dns; x\r\n\r\n"
	                "Final-Recipient: rfc822;<x@y.test>\r\n--bb not a boundary\r\n"
	                "ACTION: Failed\r\nStatus: 5.7.1 (blocked)\r\n\r\n--b--\r\n";
	suppress_parse_report(m, strlen(m), &r);
	assert_int_equal(r.kind, SUPPRESS_REPORT_DSN);
	assert_int_equal(r.n_rcpts, 1);
	assert_string_equal(r.rcpts[0].final_rcpt, "x@y.test");
	assert_string_equal(r.rcpts[0].action, "failed");
	assert_string_equal(r.rcpts[0].status, "5.7.1");
	/* More recipient blocks than fit: the first SUPPRESS_REPORT_RCPTS. */
	struct tbuf b = TBUF_INIT(1 << 20);
	tbuf_append_str(&b, "Content-Type: multipart/report; boundary=\"q\"\n\n--q\n"
	                    "Content-Type: message/delivery-status\n\nReporting-MTA: dns; x\n");
	for (int i = 0; i < 40; i++)
		tbuf_printf(
		    &b, "\nFinal-Recipient: rfc822; r%d@y.test\nAction: failed\nStatus: 5.1.1\n",
		    i);
	suppress_parse_report(b.data, b.len, &r);
	assert_int_equal(r.n_rcpts, SUPPRESS_REPORT_RCPTS);
	assert_string_equal(r.rcpts[15].final_rcpt, "r15@y.test");
	tbuf_free(&b);
}

/* ---- tokens ------------------------------------------------------------------ */

static void verp_tokens(void **state)
{
	unsigned char key[SUPPRESS_KEY_LEN], other[SUPPRESS_KEY_LEN];
	memset(key, 7, sizeof(key));
	memset(other, 8, sizeof(other));
	char a[300], ref[64];
	assert_int_equal(
	    suppress_verp_address(key, "CRFGS2NG1N800000", 3, "bounces.example.org", a, sizeof(a)),
	    TERN_OK);
	assert_memory_equal(a, "bounce+crfgs2ng1n800000-3-", 26);
	char *at = strchr(a, '@');
	assert_string_equal(at, "@bounces.example.org");
	*at = '\0';
	assert_true(strlen(a) <= SUPPRESS_VERP_LOCAL_MAX);
	assert_true(suppress_verp_verify(key, a, ref, sizeof(ref)));
	assert_string_equal(ref, "crfgs2ng1n800000-3");
	/* Upper case on the way back is fine. */
	char up[80];
	tern_strlcpy(up, a, sizeof(up));
	for (char *p = up; *p; p++)
		*p = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
	assert_true(suppress_verp_verify(key, up, ref, sizeof(ref)));
	/* Another key, a changed index, a flipped MAC digit: refused. */
	assert_false(suppress_verp_verify(other, a, ref, sizeof(ref)));
	char bad[80];
	tern_strlcpy(bad, a, sizeof(bad));
	bad[strlen("bounce+crfgs2ng1n800000-")] = '4';
	assert_false(suppress_verp_verify(key, bad, ref, sizeof(ref)));
	tern_strlcpy(bad, a, sizeof(bad));
	bad[strlen(bad) - 1] ^= 1;
	assert_false(suppress_verp_verify(key, bad, ref, sizeof(ref)));
	assert_false(suppress_verp_verify(key, "bounce+", ref, sizeof(ref)));
	assert_false(suppress_verp_verify(key, "alice", ref, sizeof(ref)));
	assert_false(suppress_verp_verify(key, "", ref, sizeof(ref)));
}

static void unsubscribe_tokens_and_headers(void **state)
{
	unsigned char key[SUPPRESS_KEY_LEN];
	memset(key, 9, sizeof(key));
	char tok[2048], scope[256], addr[320];
	assert_int_equal(
	    suppress_unsub_token(key, "Example.ORG", "Bob@ISP.example", tok, sizeof(tok)), TERN_OK);
	assert_true(
	    suppress_unsub_verify(key, tok, strlen(tok), scope, sizeof(scope), addr, sizeof(addr)));
	assert_string_equal(scope, "example.org");
	assert_string_equal(addr, "Bob@isp.example");
	/* global scope */
	assert_int_equal(suppress_unsub_token(key, "", "x@y.test", tok, sizeof(tok)), TERN_OK);
	assert_true(
	    suppress_unsub_verify(key, tok, strlen(tok), scope, sizeof(scope), addr, sizeof(addr)));
	assert_string_equal(scope, "");
	/* a changed payload byte, a truncated token, a VERP-style MAC: refused */
	char bad[2048];
	tern_strlcpy(bad, tok, sizeof(bad));
	bad[1] = bad[1] == '0' ? '1' : '0';
	assert_false(
	    suppress_unsub_verify(key, bad, strlen(bad), scope, sizeof(scope), addr, sizeof(addr)));
	assert_false(suppress_unsub_verify(key, tok, strlen(tok) - 1, scope, sizeof(scope), addr,
	                                   sizeof(addr)));
	assert_false(suppress_unsub_verify(key, "", 0, scope, sizeof(scope), addr, sizeof(addr)));
	assert_false(
	    suppress_unsub_verify(key, "zz.zz", 5, scope, sizeof(scope), addr, sizeof(addr)));
	assert_int_equal(suppress_unsub_token(key, "", "not-an-address", tok, sizeof(tok)),
	                 TERN_EINVAL);

	char h[4096];
	assert_int_equal(suppress_unsub_headers(key, "https://mail.example.org/", "example.org",
	                                        "bob@isp.example", "unsub@example.org", h,
	                                        sizeof(h)),
	                 TERN_OK);
	static const char lu[] = "List-Unsubscribe: <https://mail.example.org/unsubscribe/";
	assert_memory_equal(h, lu, sizeof(lu) - 1);
	assert_non_null(strstr(h, ">, <mailto:unsub@example.org>\r\n"
	                          "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
	assert_int_equal(
	    suppress_unsub_headers(key, "https://x", "", "bob@isp.example", NULL, h, 40),
	    TERN_ELIMIT);
}

/* ---- store ------------------------------------------------------------------- */

static bool count_entry(const struct suppress_entry *e, void *arg)
{
	(*(int *)arg)++;
	return true;
}

/* The serve process keeps its check statement prepared between messages;
 * entries written meanwhile through another handle (tern suppress add, the
 * API's writer) must still be seen by its next check, and removals too. */
static void store_check_sees_other_writers(void **state)
{
	struct suppress_db *serve, *cli;
	char err[256];
	assert_int_equal(suppress_open(tmpdir, &serve, err, sizeof(err)), TERN_OK);
	assert_int_equal(suppress_open(tmpdir, &cli, err, sizeof(err)), TERN_OK);
	struct suppress_entry e;
	assert_false(suppress_check(serve, "example.org", "late@b.test", &e));
	assert_int_equal(suppress_add(cli, "", "late@b.test", SUPPRESS_COMPLAINT, "fbl", "Q9"),
	                 TERN_OK);
	assert_true(suppress_check(serve, "example.org", "late@b.test", &e));
	assert_string_equal(e.queue_id, "Q9");
	assert_int_equal(suppress_del(cli, "", "late@b.test"), TERN_OK);
	assert_false(suppress_check(serve, "example.org", "late@b.test", NULL));
	suppress_close(cli);
	suppress_close(serve);
}

static void store_scopes(void **state)
{
	struct suppress_db *db;
	char err[256];
	assert_int_equal(suppress_open(tmpdir, &db, err, sizeof(err)), TERN_OK);
	struct suppress_entry e;
	assert_false(suppress_check(db, "example.org", "a@b.test", &e));
	assert_int_equal(suppress_add(db, "Example.org", "a@B.Test", SUPPRESS_BOUNCE,
	                              "5.1.1 550 no such user", "Q1"),
	                 TERN_OK);
	assert_true(suppress_check(db, "example.org", "a@b.test", &e));
	assert_string_equal(e.scope, "example.org");
	assert_string_equal(e.addr, "a@b.test");
	assert_int_equal(e.reason, SUPPRESS_BOUNCE);
	assert_string_equal(e.queue_id, "Q1");
	/* local parts keep their case */
	assert_false(suppress_check(db, "example.org", "A@b.test", NULL));
	/* another domain's mail, and the null sender, are not affected */
	assert_false(suppress_check(db, "other.org", "a@b.test", NULL));
	assert_false(suppress_check(db, "", "a@b.test", NULL));
	/* the global list applies to every domain */
	assert_int_equal(suppress_add(db, "", "g@b.test", SUPPRESS_MANUAL, NULL, NULL), TERN_OK);
	assert_true(suppress_check(db, "other.org", "g@b.test", &e));
	assert_string_equal(e.scope, "");
	assert_true(suppress_check(db, NULL, "g@b.test", NULL));
	/* both: the domain's entry is the one reported */
	assert_int_equal(
	    suppress_add(db, "example.org", "g@b.test", SUPPRESS_COMPLAINT, "abuse", NULL),
	    TERN_OK);
	assert_true(suppress_check(db, "example.org", "g@b.test", &e));
	assert_int_equal(e.reason, SUPPRESS_COMPLAINT);
	int n = 0;
	assert_int_equal(suppress_list(db, NULL, count_entry, &n), 3);
	n = 0;
	assert_int_equal(suppress_list(db, "", count_entry, &n), 1);
	assert_int_equal(suppress_del(db, "", "g@b.test"), TERN_OK);
	assert_int_equal(suppress_del(db, "", "g@b.test"), TERN_ENOTFOUND);
	assert_false(suppress_check(db, "other.org", "g@b.test", NULL));
	/* bad input */
	assert_int_equal(suppress_add(db, "", "nobody", SUPPRESS_MANUAL, NULL, NULL), TERN_EINVAL);
	assert_int_equal(suppress_add(db, "", "a b@c", SUPPRESS_MANUAL, NULL, NULL), TERN_EINVAL);
	assert_int_equal(suppress_add(db, "x@y", "a@c", SUPPRESS_MANUAL, NULL, NULL), TERN_EINVAL);
	/* VERP map */
	assert_int_equal(suppress_verp_remember(db, "QABC", 2, "r@x.test", "example.org"), TERN_OK);
	char rc[320], sd[256];
	assert_int_equal(suppress_verp_lookup(db, "qabc-2", rc, sizeof(rc), sd, sizeof(sd)),
	                 TERN_OK);
	assert_string_equal(rc, "r@x.test");
	assert_string_equal(sd, "example.org");
	assert_int_equal(suppress_verp_lookup(db, "qabc-3", rc, sizeof(rc), sd, sizeof(sd)),
	                 TERN_ENOTFOUND);
	suppress_close(db);

	/* the key: created 0600 once, the same afterwards */
	unsigned char k1[SUPPRESS_KEY_LEN], k2[SUPPRESS_KEY_LEN];
	assert_int_equal(suppress_key_load(tmpdir, k1), TERN_OK);
	assert_int_equal(suppress_key_load(tmpdir, k2), TERN_OK);
	assert_memory_equal(k1, k2, sizeof(k1));
	char kp[512];
	snprintf(kp, sizeof(kp), "%s/suppress.key", tmpdir);
	struct stat st;
	assert_int_equal(stat(kp, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
}

/* ---- HTTP handlers ------------------------------------------------------------- */

static int call_unsub(const char *method, const char *tok, const char *body, struct tbuf *out)
{
	tbuf_reset(out);
	return suppress_http_unsubscribe(tmpdir, method, tok, strlen(tok), body,
	                                 body ? strlen(body) : 0, out);
}

static void one_click_unsubscribe(void **state)
{
	unsigned char key[SUPPRESS_KEY_LEN];
	assert_int_equal(suppress_key_load(tmpdir, key), TERN_OK);
	char tok[2048];
	assert_int_equal(
	    suppress_unsub_token(key, "example.org", "reader@isp.test", tok, sizeof(tok)), TERN_OK);
	struct tbuf out = TBUF_INIT(1 << 16);
	/* A GET (a link scanner) or a POST without the field unsubscribes nobody. */
	assert_int_equal(call_unsub("GET", tok, NULL, &out), 405);
	assert_int_equal(call_unsub("POST", tok, "", &out), 400);
	assert_int_equal(call_unsub("POST", tok, "List-Unsubscribe=One-Clickety", &out), 400);
	struct suppress_db *db = suppress_shared(tmpdir);
	assert_non_null(db);
	assert_false(suppress_check(db, "example.org", "reader@isp.test", NULL));
	/* A forged token: 404. */
	char bad[2048];
	tern_strlcpy(bad, tok, sizeof(bad));
	bad[strlen(bad) - 1] = bad[strlen(bad) - 1] == 'a' ? 'b' : 'a';
	assert_int_equal(call_unsub("POST", bad, "List-Unsubscribe=One-Click", &out), 404);
	assert_non_null(strstr(out.data, "\"unknown_token\""));
	/* The fields the API adds, from the config: the same token works. */
	char text[600], h[4096];
	snprintf(
	    text, sizeof(text),
	    "data_dir = \"%s\";\nsuppression { unsubscribe_url = \"https://m.example.org\"; }\n",
	    tmpdir);
	char err[256];
	struct tern_config *c = conf_load_string(text, strlen(text), "t", err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(suppress_list_unsubscribe_fields(c, "shop@Example.ORG", "reader@isp.test",
	                                                  NULL, h, sizeof(h)),
	                 TERN_OK);
	static const char pre[] = "List-Unsubscribe: <https://m.example.org/unsubscribe/";
	assert_memory_equal(h, pre, sizeof(pre) - 1);
	char *end = strchr(h + sizeof(pre) - 1, '>');
	assert_non_null(end);
	*end = '\0';
	assert_string_equal(h + sizeof(pre) - 1, tok);
	conf_unref(c);
	c = conf_load_string("suppression { }", 15, "t", err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(
	    suppress_list_unsubscribe_fields(c, "a@b.test", "reader@isp.test", NULL, h, sizeof(h)),
	    TERN_ENOTFOUND);
	conf_unref(c);
	/* The real thing, form-encoded and again as multipart/form-data. */
	assert_int_equal(call_unsub("POST", tok, "List-Unsubscribe=One-Click", &out), 200);
	assert_non_null(strstr(out.data, "\"unsubscribed\":\"reader@isp.test\""));
	struct suppress_entry e;
	assert_true(suppress_check(db, "example.org", "reader@isp.test", &e));
	assert_int_equal(e.reason, SUPPRESS_UNSUBSCRIBE);
	assert_false(suppress_check(db, "other.org", "reader@isp.test", NULL));
	assert_int_equal(call_unsub("POST", tok,
	                            "--x\r\nContent-Disposition: form-data; "
	                            "name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--x--\r\n",
	                            &out),
	                 200);
	tbuf_free(&out);
}

static int api(const char *method, const char *path, const char *query, const char *body,
               struct tbuf *out)
{
	tbuf_reset(out);
	return suppress_http_api(tmpdir, method, path, query, body, body ? strlen(body) : 0, out);
}

/* The scope a request acts on, as the caller checks it against a key:
 * the same reading as the handler (the last domain=, a PUT body's domain
 * over the query's), so no request names one list to the check and
 * another to the handler. */
static void api_scope(void **state)
{
	char d[SUPPRESS_DOMAIN_MAX];
	const char *P = "/api/v1/suppressions", *E = "/api/v1/suppressions/a@x.test";
	assert_int_equal(suppress_http_api_scope("GET", P, NULL, NULL, 0, d, sizeof(d)),
	                 SUPPRESS_SCOPE_ALL);
	assert_int_equal(suppress_http_api_scope("GET", P, "domain=", NULL, 0, d, sizeof(d)),
	                 SUPPRESS_SCOPE_ONE);
	assert_string_equal(d, "");
	assert_int_equal(suppress_http_api_scope("GET", P, "domain=Ex.ORG", NULL, 0, d, sizeof(d)),
	                 SUPPRESS_SCOPE_ONE);
	assert_string_equal(d, "ex.org");
	assert_int_equal(suppress_http_api_scope("DELETE", E, "domain=a.org&domain=b.org", NULL, 0,
	                                         d, sizeof(d)),
	                 SUPPRESS_SCOPE_ONE);
	assert_string_equal(d, "b.org"); /* the handler's too: the last one */
	assert_int_equal(suppress_http_api_scope("GET", E, NULL, NULL, 0, d, sizeof(d)),
	                 SUPPRESS_SCOPE_ONE);
	assert_string_equal(d, ""); /* an entry without domain: the global list */
	const char *b = "{\"domain\": \"B.org\"}";
	assert_int_equal(
	    suppress_http_api_scope("PUT", E, "domain=a.org", b, strlen(b), d, sizeof(d)),
	    SUPPRESS_SCOPE_ONE);
	assert_string_equal(d, "b.org");
	b = "{\"reason\": \"manual\"}";
	assert_int_equal(
	    suppress_http_api_scope("PUT", E, "domain=a.org", b, strlen(b), d, sizeof(d)),
	    SUPPRESS_SCOPE_ONE);
	assert_string_equal(d, "a.org");
	static const char *const bad[] = {"{\"domain\": 1}", "[1]", "{",
	                                  "{\"domain\": \"a\", \"domain\": \"b\"}"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(
		    suppress_http_api_scope("PUT", E, NULL, bad[i], strlen(bad[i]), d, sizeof(d)),
		    SUPPRESS_SCOPE_BAD);
	assert_int_equal(suppress_http_api_scope("GET", P, "domain=%zz", NULL, 0, d, sizeof(d)),
	                 SUPPRESS_SCOPE_BAD);
}

static void suppression_api(void **state)
{
	struct tbuf out = TBUF_INIT(1 << 16);
	assert_int_equal(api("GET", "/api/v1/suppressions", NULL, NULL, &out), 200);
	assert_string_equal(out.data, "{\"suppressions\":[]}");
	assert_int_equal(api("PUT", "/api/v1/suppressions/a%40b.test", NULL,
	                     "{\"domain\":\"Example.org\",\"reason\":\"complaint\"}", &out),
	                 200);
	assert_non_null(strstr(out.data, "\"domain\":\"example.org\""));
	assert_non_null(strstr(out.data, "\"reason\":\"complaint\""));
	assert_int_equal(api("PUT", "/api/v1/suppressions/g@b.test", NULL, NULL, &out), 200);
	assert_int_equal(api("GET", "/api/v1/suppressions", "domain=example.org", NULL, &out), 200);
	assert_non_null(strstr(out.data, "a@b.test"));
	assert_null(strstr(out.data, "g@b.test"));
	assert_int_equal(api("GET", "/api/v1/suppressions", "domain=", NULL, &out), 200);
	assert_non_null(strstr(out.data, "g@b.test"));
	assert_int_equal(api("GET", "/api/v1/suppressions/g@b.test", NULL, NULL, &out), 200);
	assert_int_equal(api("GET", "/api/v1/suppressions/a@b.test", NULL, NULL, &out), 404);
	assert_int_equal(
	    api("GET", "/api/v1/suppressions/a@b.test", "domain=example.org", NULL, &out), 200);
	assert_int_equal(
	    api("DELETE", "/api/v1/suppressions/a@b.test", "domain=example.org", NULL, &out), 204);
	assert_int_equal(
	    api("DELETE", "/api/v1/suppressions/a@b.test", "domain=example.org", NULL, &out), 404);
	/* bad input */
	assert_int_equal(
	    api("PUT", "/api/v1/suppressions/x@y.test", NULL, "{\"reason\":\"whim\"}", &out), 400);
	assert_int_equal(api("PUT", "/api/v1/suppressions/x@y.test", NULL, "[1", &out), 400);
	assert_int_equal(api("PUT", "/api/v1/suppressions/x@y.test", NULL, "{\"domain\":7}", &out),
	                 400);
	assert_int_equal(api("PUT", "/api/v1/suppressions/nobody", NULL, NULL, &out), 400);
	assert_int_equal(api("PUT", "/api/v1/suppressions/a%4", NULL, NULL, &out), 400);
	assert_int_equal(api("PUT", "/api/v1/suppressions/a%00@b", NULL, NULL, &out), 400);
	assert_int_equal(api("POST", "/api/v1/suppressions", NULL, NULL, &out), 405);
	assert_int_equal(api("PATCH", "/api/v1/suppressions/g@b.test", NULL, NULL, &out), 405);
	assert_int_equal(api("GET", "/api/v1/suppressionsX", NULL, NULL, &out), 404);
	tbuf_free(&out);
}

/* ---- the spool's suppressed state ---------------------------------------------- */

struct put_wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done, err;
};

static void put_cb(void *arg, int err)
{
	struct put_wait *w = arg;
	pthread_mutex_lock(&w->mu);
	w->done = 1;
	w->err = err;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

/* RCPT_SUPPRESSED is a final state: recorded, read back after recovery,
 * named "suppressed", and a message whose recipients are all final leaves. */
static void spool_keeps_suppressed_state(void **state)
{
	char dir[512];
	snprintf(dir, sizeof(dir), "%s/spool", tmpdir);
	struct spool *sp;
	assert_int_equal(spool_open(dir, &sp), TERN_OK);
	struct spool_rcpt rc[2] = {{.addr = (char *)"a@remote.test"},
	                           {.addr = (char *)"b@remote.test"}};
	struct spool_msg env = {.sender = (char *)"s@example.org", .rcpts = rc, .n_rcpts = 2};
	queue_id_new(env.id);
	env.size = 5;
	struct put_wait w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
	assert_int_equal(spool_put(sp, &env, "hello", 5, put_cb, &w), TERN_OK);
	pthread_mutex_lock(&w.mu);
	while (!w.done)
		pthread_cond_wait(&w.cv, &w.mu);
	pthread_mutex_unlock(&w.mu);
	assert_int_equal(w.err, TERN_OK);
	assert_int_equal(spool_update_rcpt(sp, env.id, 0, RCPT_SUPPRESSED, 0, "suppressed: x"),
	                 TERN_OK);
	spool_close(sp);
	assert_int_equal(spool_open(dir, &sp), TERN_OK);
	struct spool_msg *m = spool_get(sp, env.id);
	assert_non_null(m);
	assert_int_equal(m->rcpts[0].state, RCPT_SUPPRESSED);
	assert_string_equal(rcpt_state_name(m->rcpts[0].state), "suppressed");
	assert_int_equal(m->rcpts[1].state, RCPT_QUEUED);
	spool_msg_free(m);
	/* A final state stays final. */
	assert_int_not_equal(spool_update_rcpt(sp, env.id, 0, RCPT_QUEUED, 0, NULL), TERN_OK);
	assert_int_equal(spool_update_rcpt(sp, env.id, 1, RCPT_SUPPRESSED, 0, "suppressed: y"),
	                 TERN_OK);
	assert_null(spool_get(sp, env.id));
	spool_close(sp);
	char cmd[700];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

/* ---- suppression { } --------------------------------------------------------------- */

static void config_section(void **state)
{
	char err[512];
	const char *good = "local_domains = [\"example.org\", \"B.example.org\"];\n"
	                   "suppression { verp_domain = \"B.Example.org\"; "
	                   "feedback_address = \"FBL@example.org\"; "
	                   "unsubscribe_url = \"https://m.example.org/\"; }\n";
	struct tern_config *c = conf_load_string(good, strlen(good), "t", err, sizeof(err));
	assert_non_null(c);
	assert_true(c->suppression.enabled);
	assert_string_equal(c->suppression.verp_domain, "b.example.org");
	assert_string_equal(c->suppression.feedback_address, "fbl@example.org");
	assert_true(suppress_intake_match(c, "fbl@example.org"));
	assert_true(suppress_intake_match(c, "bounce+x-0-0123456789abcdef@b.example.org"));
	assert_false(suppress_intake_match(c, "alice@b.example.org"));
	assert_false(suppress_intake_match(c, "bounce+x@example.org"));
	conf_unref(c);
	/* issue 12's top-level spelling */
	const char *top = "feedback_address = \"Complaints@example.org\";\n"
	                  "local_domains = [\"example.org\"];\n";
	c = conf_load_string(top, strlen(top), "t", err, sizeof(err));
	assert_non_null(c);
	assert_string_equal(c->suppression.feedback_address, "complaints@example.org");
	assert_true(suppress_intake_match(c, "complaints@example.org"));
	conf_unref(c);
	c = conf_load_string("suppression { enabled = false; }", 32, "t", err, sizeof(err));
	assert_non_null(c);
	assert_false(c->suppression.enabled);
	conf_unref(c);
	const char *bad[] = {
	    "suppression { verp_domain = \"not a domain\"; }",
	    "suppression { verp_domain = \"elsewhere.org\"; }", /* not a local domain */
	    "suppression { feedback_address = \"fbl@elsewhere.org\"; }",
	    "suppression { feedback_address = \"nobody\"; }",
	    "suppression { unsubscribe_url = \"ftp://x\"; }",
	    "suppression { frobnicate = 1; }",
	    "suppression { enabled = \"yes please\"; }",
	    "feedback_address = \"fbl@elsewhere.org\";",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		c = conf_load_string(bad[i], strlen(bad[i]), "t", err, sizeof(err));
		if (c)
			fail_msg("accepted: %s", bad[i]);
		assert_non_null(strstr(err, "suppression"));
		/* named by file and line, as every config error is */
		if (strncmp(err, "t:1: ", 5) != 0)
			fail_msg("error without its place: %s", err);
	}
}

/* The negative filter (suppress_filter.h): never a false "not suppressed"
 * for a key it holds, few false "maybe"s for keys it does not, and full at
 * its cap (a full filter is rebuilt, never silently wrong). */
static void filter_has_no_false_negatives(void **state)
{
	struct suppress_filter f;
	suppress_filter_init(&f);
	assert_true(suppress_filter_maybe(&f, "", "x@y.test")); /* no bits yet: ask SQLite */
	assert_true(suppress_filter_reset(&f, 5000));
	char a[64];
	for (int i = 0; i < 5000; i++) {
		snprintf(a, sizeof(a), "user%d@list.test", i);
		assert_true(suppress_filter_add(&f, i % 2 ? "example.org" : "", a));
	}
	for (int i = 0; i < 5000; i++) {
		snprintf(a, sizeof(a), "user%d@list.test", i);
		assert_true(suppress_filter_maybe(&f, i % 2 ? "example.org" : "", a));
	}
	/* The scope is part of the key. */
	size_t fp = 0, scoped = 0;
	for (int i = 0; i < 100000; i++) {
		snprintf(a, sizeof(a), "other%d@list.test", i);
		fp += suppress_filter_maybe(&f, "", a);
	}
	for (int i = 0; i < 5000; i += 2) {
		snprintf(a, sizeof(a), "user%d@list.test", i);
		scoped += suppress_filter_maybe(&f, "example.org", a);
	}
	if (fp > 1000 || scoped > 50)
		fail_msg("too many false positives: %zu of 100000, %zu of 2500 by scope", fp,
		         scoped);
	while (suppress_filter_add(&f, "", "more@list.test"))
		;
	assert_int_equal(f.n_keys, f.cap);
	suppress_filter_free(&f);
}

static bool wait_check(struct suppress_db *db, const char *sd, const char *addr, bool want)
{
	/* Bounded: a writer outside tern is seen within a second (FILTER_RECHECK_MS). */
	for (int i = 0; i < 100; i++) {
		if (suppress_check(db, sd, addr, NULL) == want)
			return true;
		usleep(50 * 1000);
	}
	return false;
}

/* Every way the entries change reaches a daemon whose filter says "on no
 * list": another tern handle (the CLI, counted in suppress.gen), its own
 * writes (hard bounces, the API), and a plain SQLite writer (data_version). */
static void store_filter_sees_every_writer(void **state)
{
	struct suppress_db *serve, *cli;
	char err[256], a[64];
	assert_int_equal(suppress_open(tmpdir, &serve, err, sizeof(err)), TERN_OK);
	assert_int_equal(suppress_open(tmpdir, &cli, err, sizeof(err)), TERN_OK);
	for (int i = 0; i < 2000; i++) {
		snprintf(a, sizeof(a), "bulk%d@list.test", i);
		assert_int_equal(
		    suppress_add(cli, i % 2 ? "example.org" : "", a, SUPPRESS_MANUAL, "", NULL),
		    TERN_OK);
	}
	for (int i = 0; i < 2000; i++) {
		snprintf(a, sizeof(a), "bulk%d@list.test", i);
		assert_true(suppress_check(serve, "example.org", a, NULL));
		assert_int_equal(suppress_check(serve, "other.org", a, NULL), i % 2 == 0);
		snprintf(a, sizeof(a), "free%d@list.test", i);
		assert_false(suppress_check(serve, "example.org", a, NULL));
	}
	/* its own writes, straight into the filter */
	assert_false(suppress_check(serve, "example.org", "own@b.test", NULL));
	assert_int_equal(
	    suppress_add(serve, "example.org", "own@b.test", SUPPRESS_BOUNCE, "5.1.1", "Q1"),
	    TERN_OK);
	assert_true(suppress_check(serve, "example.org", "own@b.test", NULL));
	assert_int_equal(suppress_del(serve, "example.org", "own@b.test"), TERN_OK);
	assert_false(suppress_check(serve, "example.org", "own@b.test", NULL));
	/* another handle's add and delete, seen by the very next check */
	assert_int_equal(suppress_add(cli, "", "cli@b.test", SUPPRESS_MANUAL, "", NULL), TERN_OK);
	assert_true(suppress_check(serve, "example.org", "cli@b.test", NULL));
	assert_int_equal(suppress_del(cli, "", "cli@b.test"), TERN_OK);
	assert_false(suppress_check(serve, "example.org", "cli@b.test", NULL));
	/* a writer that is not tern: no counter, seen through data_version */
	assert_false(suppress_check(serve, "example.org", "raw@b.test", NULL));
	char path[512];
	snprintf(path, sizeof(path), "%s/suppress.db", tmpdir);
	sqlite3 *raw;
	assert_int_equal(sqlite3_open(path, &raw), SQLITE_OK);
	sqlite3_busy_timeout(raw, 5000);
	assert_int_equal(sqlite3_exec(raw,
	                              "INSERT INTO suppressed (scope, addr, reason, created) "
	                              "VALUES ('', 'raw@b.test', 'manual', 0)",
	                              NULL, NULL, NULL),
	                 SQLITE_OK);
	sqlite3_close(raw);
	assert_true(wait_check(serve, "example.org", "raw@b.test", true));
	suppress_close(cli);
	suppress_close(serve);
}

/* Without its counter file (here a directory is in the way) the store still
 * answers right: every lookup goes to SQLite. */
static void store_works_without_counter(void **state)
{
	char gpath[512];
	snprintf(gpath, sizeof(gpath), "%s/suppress.gen", tmpdir);
	assert_int_equal(mkdir(gpath, 0700), 0);
	struct suppress_db *serve, *cli;
	char err[256];
	assert_int_equal(suppress_open(tmpdir, &serve, err, sizeof(err)), TERN_OK);
	assert_int_equal(suppress_open(tmpdir, &cli, err, sizeof(err)), TERN_OK);
	assert_false(suppress_check(serve, "", "x@b.test", NULL));
	assert_int_equal(suppress_add(cli, "", "x@b.test", SUPPRESS_MANUAL, "", NULL), TERN_OK);
	assert_true(suppress_check(serve, "", "x@b.test", NULL));
	suppress_close(cli);
	suppress_close(serve);
	assert_int_equal(rmdir(gpath), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(parses_a_postfix_dsn),
	    cmocka_unit_test(parses_arf_reports),
	    cmocka_unit_test(parser_edge_cases),
	    cmocka_unit_test(verp_tokens),
	    cmocka_unit_test(config_section),
	    cmocka_unit_test(unsubscribe_tokens_and_headers),
	    cmocka_unit_test_setup_teardown(store_scopes, setup_dir, teardown_dir),
	    cmocka_unit_test_setup_teardown(store_check_sees_other_writers, setup_dir,
	                                    teardown_dir),
	    cmocka_unit_test(filter_has_no_false_negatives),
	    cmocka_unit_test_setup_teardown(store_filter_sees_every_writer, setup_dir,
	                                    teardown_dir),
	    cmocka_unit_test_setup_teardown(store_works_without_counter, setup_dir, teardown_dir),
	    cmocka_unit_test_setup_teardown(one_click_unsubscribe, setup_dir, teardown_dir),
	    cmocka_unit_test_setup_teardown(suppression_api, setup_dir, teardown_dir),
	    cmocka_unit_test(api_scope),
	    cmocka_unit_test_setup_teardown(spool_keeps_suppressed_state, setup_dir, teardown_dir),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
