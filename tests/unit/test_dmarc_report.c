/*
 * test_dmarc_report.c — DMARC aggregate reports (policy/dmarc_report.h):
 * received reports as real reporters send them (tests/data/dmarc-reports,
 * checked against mail-auth's own parse of each), the XML we build read
 * back by our parser, escaping, gzip, rua URIs, external destination
 * decisions, what one evaluation records, and the hostile inputs (DOCTYPE
 * entities, malformed XML, a zip that is no zip).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "core/err.h"
#include "policy/dmarc_report.h"
#include "testdata.h"

static char *slurp(const char *rel, size_t *len)
{
	char path[1024];
	assert_true(testdata_path(path, sizeof(path), rel));
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	struct tbuf b;
	tbuf_init(&b, 1 << 24);
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		assert_int_equal(tbuf_append(&b, chunk, n), TERN_OK);
	fclose(f);
	*len = b.len;
	return tbuf_steal(&b, NULL);
}

/* The facts mail-auth found in sample NNN (its .json) are what we find. */
static void check_against_json(const struct dmarc_feedback *f, const char *num)
{
	char rel[64];
	snprintf(rel, sizeof(rel), "dmarc-reports/%s.json", num);
	size_t len;
	char *text = slurp(rel, &len);
	json_t *j = json_loadb(text, len, 0, NULL);
	assert_non_null(j);
	json_t *md = json_object_get(j, "report_metadata");
	assert_string_equal(f->report_id, json_string_value(json_object_get(md, "report_id")));
	assert_string_equal(f->org_name, json_string_value(json_object_get(md, "org_name")));
	json_t *dr = json_object_get(md, "date_range");
	assert_int_equal(f->begin, json_integer_value(json_object_get(dr, "begin")));
	assert_int_equal(f->end, json_integer_value(json_object_get(dr, "end")));
	assert_string_equal(f->domain, json_string_value(json_object_get(
	                                   json_object_get(j, "policy_published"), "domain")));
	json_t *recs = json_object_get(j, "record");
	assert_int_equal(f->n_rows, json_array_size(recs));
	for (size_t i = 0; i < f->n_rows; i++) {
		json_t *row = json_object_get(json_array_get(recs, i), "row");
		json_t *id = json_object_get(json_array_get(recs, i), "identifiers");
		assert_string_equal(f->rows[i].source_ip,
		                    json_string_value(json_object_get(row, "source_ip")));
		assert_int_equal(f->rows[i].count,
		                 json_integer_value(json_object_get(row, "count")));
		assert_string_equal(f->rows[i].header_from,
		                    json_string_value(json_object_get(id, "header_from")));
	}
	json_decref(j);
	free(text);
}

static void test_received_xml_samples(void **state)
{
	static const char *const nums[] = {"001", "002", "003", "004", "005"};
	for (size_t i = 0; i < 5; i++) {
		char rel[64];
		size_t len;
		snprintf(rel, sizeof(rel), "dmarc-reports/%s.xml", nums[i]);
		char *xml = slurp(rel, &len);
		struct dmarc_feedback f;
		assert_int_equal(dmarc_feedback_parse(xml, len, &f), TERN_OK);
		check_against_json(&f, nums[i]);
		dmarc_feedback_free(&f);
		free(xml);
	}
}

/* Whole messages: Google's zip, gzip attachments, Microsoft's, an
 * octet-stream named .xml.gz. */
static void test_received_messages(void **state)
{
	static const char *const nums[] = {"100", "101", "102", "103", "104"};
	for (size_t i = 0; i < 5; i++) {
		char rel[64];
		size_t len;
		snprintf(rel, sizeof(rel), "dmarc-reports/%s.eml", nums[i]);
		char *msg = slurp(rel, &len);
		struct tbuf xml;
		tbuf_init(&xml, 1 << 24);
		assert_int_equal(dmarc_report_extract(msg, len, 1 << 24, &xml), TERN_OK);
		struct dmarc_feedback f;
		assert_int_equal(dmarc_feedback_parse(xml.data, xml.len, &f), TERN_OK);
		check_against_json(&f, nums[i]);
		dmarc_feedback_free(&f);
		tbuf_free(&xml);
		free(msg);
	}
}

static struct dmarc_agg sample_agg(struct dmarc_agg_row *rows)
{
	struct dmarc_agg a = {
	    .org_name = "Org <&> \"quoted\"",
	    .email = "dmarc-noreply@example.org",
	    .receiver = "mx.example.org",
	    .report_id = "1700000000.example.com.abc@mx.example.org",
	    .unique = "abc123",
	    .begin = 1700000000,
	    .end = 1700086400,
	    .domain = "example.com",
	    .p = "reject",
	    .sp = "quarantine",
	    .np = "",
	    .adkim = 's',
	    .aspf = 'r',
	    .testing = true,
	    .rows = rows,
	    .n_rows = 2,
	};
	memset(rows, 0, 2 * sizeof(*rows));
	tern_strlcpy(rows[0].ip, "192.0.2.1", sizeof(rows[0].ip));
	rows[0].count = 3;
	tern_strlcpy(rows[0].disposition, "pass", sizeof(rows[0].disposition));
	tern_strlcpy(rows[0].dkim_eval, "pass", sizeof(rows[0].dkim_eval));
	tern_strlcpy(rows[0].spf_eval, "fail", sizeof(rows[0].spf_eval));
	tern_strlcpy(rows[0].header_from, "example.com", sizeof(rows[0].header_from));
	tern_strlcpy(rows[0].env_from, "bounce.example.net", sizeof(rows[0].env_from));
	rows[0].dkim_json =
	    (char *)"[{\"domain\":\"example.com\",\"selector\":\"s<1>\",\"result\":\"pass\","
	            "\"aligned\":true}]";
	tern_strlcpy(rows[0].spf_domain, "bounce.example.net", sizeof(rows[0].spf_domain));
	tern_strlcpy(rows[0].spf_scope, "mfrom", sizeof(rows[0].spf_scope));
	tern_strlcpy(rows[0].spf_result, "pass", sizeof(rows[0].spf_result));
	tern_strlcpy(rows[1].ip, "2001:db8::1", sizeof(rows[1].ip));
	rows[1].count = 1;
	tern_strlcpy(rows[1].disposition, "reject", sizeof(rows[1].disposition));
	tern_strlcpy(rows[1].dkim_eval, "fail", sizeof(rows[1].dkim_eval));
	tern_strlcpy(rows[1].spf_eval, "fail", sizeof(rows[1].spf_eval));
	tern_strlcpy(rows[1].header_from, "example.com", sizeof(rows[1].header_from));
	rows[1].dkim_json = (char *)"[]";
	return a;
}

/* What we send reads back through what we receive: metadata, rows,
 * counts; the values that need escaping arrive intact. */
static void test_xml_round_trip(void **state)
{
	struct dmarc_agg_row rows[2];
	struct dmarc_agg a = sample_agg(rows);
	struct tbuf xml;
	tbuf_init(&xml, 1 << 20);
	assert_int_equal(dmarc_agg_xml(&a, &xml), TERN_OK);
	assert_non_null(strstr(xml.data, "xmlns=\"urn:ietf:params:xml:ns:dmarc-2.0\""));
	assert_non_null(
	    strstr(xml.data, "<org_name>Org &lt;&amp;&gt; &quot;quoted&quot;</org_name>"));
	assert_non_null(strstr(xml.data, "<selector>s&lt;1&gt;</selector>"));
	assert_non_null(strstr(xml.data, "<testing>y</testing>"));
	assert_non_null(strstr(xml.data, "<adkim>s</adkim>"));
	assert_null(strstr(xml.data, "<np>")); /* absent in the record: not published */
	struct dmarc_feedback f;
	assert_int_equal(dmarc_feedback_parse(xml.data, xml.len, &f), TERN_OK);
	assert_string_equal(f.org_name, "Org <&> \"quoted\"");
	assert_string_equal(f.report_id, a.report_id);
	assert_string_equal(f.domain, "example.com");
	assert_int_equal(f.begin, 1700000000);
	assert_int_equal(f.end, 1700086400);
	assert_int_equal(f.n_rows, 2);
	assert_string_equal(f.rows[0].source_ip, "192.0.2.1");
	assert_int_equal(f.rows[0].count, 3);
	assert_string_equal(f.rows[0].disposition, "pass");
	assert_string_equal(f.rows[0].dkim, "pass");
	assert_string_equal(f.rows[0].spf, "fail");
	assert_string_equal(f.rows[0].envelope_from, "bounce.example.net");
	assert_string_equal(f.rows[0].dkim_auth, "example.com=pass");
	assert_string_equal(f.rows[0].spf_auth, "bounce.example.net=pass");
	assert_string_equal(f.rows[1].source_ip, "2001:db8::1");
	assert_string_equal(f.rows[1].disposition, "reject");
	dmarc_feedback_free(&f);

	/* the message: RFC 9990's Subject and file name; the attachment
	 * gunzips to the XML */
	struct tbuf gz, msg, back;
	tbuf_init(&gz, 1 << 20);
	tbuf_init(&msg, 1 << 21);
	tbuf_init(&back, 1 << 20);
	assert_int_equal(dmarc_gzip(xml.data, xml.len, &gz), TERN_OK);
	assert_int_equal(
	    dmarc_agg_message(&a, "rua@example.com", gz.data, gz.len, 1700090000, &msg), TERN_OK);
	assert_non_null(strstr(msg.data, "Subject: Report Domain: example.com Submitter: "
	                                 "mx.example.org\r\n Report-ID: "
	                                 "<1700000000.example.com.abc@mx.example.org>\r\n"));
	assert_non_null(strstr(msg.data, "filename=\"mx.example.org!example.com!1700000000!"
	                                 "1700086400!abc123.xml.gz\""));
	assert_non_null(strstr(msg.data, "Content-Type: application/gzip"));
	assert_int_equal(dmarc_report_extract(msg.data, msg.len, 1 << 20, &back), TERN_OK);
	assert_int_equal(back.len, xml.len);
	assert_memory_equal(back.data, xml.data, xml.len);
	tbuf_free(&gz);
	tbuf_free(&msg);
	tbuf_free(&back);
	tbuf_free(&xml);
}

static void test_hostile_xml(void **state)
{
	struct dmarc_feedback f;
	/* billion laughs: a DOCTYPE is refused before any entity grows */
	const char *laughs = "<?xml version=\"1.0\"?><!DOCTYPE feedback [<!ENTITY a \"aaaa\">"
	                     "<!ENTITY b \"&a;&a;&a;&a;&a;&a;\">]><feedback><report_metadata>"
	                     "<report_id>&b;</report_id></report_metadata></feedback>";
	assert_int_equal(dmarc_feedback_parse(laughs, strlen(laughs), &f), TERN_ESYNTAX);
	const char *bad = "<feedback><report_metadata><report_id>x</report_id>";
	assert_int_equal(dmarc_feedback_parse(bad, strlen(bad), &f), TERN_ESYNTAX);
	const char *other = "<html><body>not a report</body></html>";
	assert_int_equal(dmarc_feedback_parse(other, strlen(other), &f), TERN_ESYNTAX);
	/* no report_id or no domain: not an aggregate report */
	const char *noid = "<feedback><policy_published><domain>a.example</domain>"
	                   "</policy_published></feedback>";
	assert_int_equal(dmarc_feedback_parse(noid, strlen(noid), &f), TERN_ESYNTAX);
	/* an element of an extension's namespace never fills our fields */
	const char *ext = "<feedback xmlns=\"urn:ietf:params:xml:ns:dmarc-2.0\" "
	                  "xmlns:x=\"urn:x\"><report_metadata><report_id>r1</report_id>"
	                  "<x:org_name>evil</x:org_name><org_name>good</org_name>"
	                  "</report_metadata><policy_published><domain>a.example</domain>"
	                  "</policy_published></feedback>";
	assert_int_equal(dmarc_feedback_parse(ext, strlen(ext), &f), TERN_OK);
	assert_string_equal(f.org_name, "good");
	dmarc_feedback_free(&f);

	/* a message whose zip attachment is no zip */
	const char *msg = "From: a@b.example\r\nMIME-Version: 1.0\r\n"
	                  "Content-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n"
	                  "\r\nbm90IGEgemlw\r\n";
	struct tbuf xml;
	tbuf_init(&xml, 1 << 20);
	assert_int_equal(dmarc_report_extract(msg, strlen(msg), 1 << 20, &xml), TERN_ESYNTAX);
	const char *plain = "From: a@b.example\r\nSubject: hi\r\n\r\nhello\r\n";
	assert_int_equal(dmarc_report_extract(plain, strlen(plain), 1 << 20, &xml), TERN_ENOTFOUND);
	tbuf_free(&xml);
}

/* A gzip bomb stops at the limit. */
static void test_inflate_limit(void **state)
{
	size_t n = 4u << 20;
	char *zeros = calloc(1, n);
	assert_non_null(zeros);
	struct tbuf gz, msg, out;
	tbuf_init(&gz, 8u << 20);
	tbuf_init(&msg, 1 << 21);
	tbuf_init(&out, 1 << 21);
	assert_int_equal(dmarc_gzip(zeros, n, &gz), TERN_OK);
	struct dmarc_agg_row rows[2];
	struct dmarc_agg a = sample_agg(rows);
	assert_int_equal(dmarc_agg_message(&a, "x@example.com", gz.data, gz.len, 1, &msg), TERN_OK);
	assert_int_equal(dmarc_report_extract(msg.data, msg.len, 1 << 20, &out), TERN_ELIMIT);
	free(zeros);
	tbuf_free(&gz);
	tbuf_free(&msg);
	tbuf_free(&out);
}

static void test_rua(void **state)
{
	struct dmarc_rua r;
	assert_true(dmarc_rua_parse("mailto:dmarc@Example.COM", &r));
	assert_string_equal(r.addr, "dmarc@Example.COM");
	assert_string_equal(r.host, "example.com");
	assert_int_equal(r.max_size, 0);
	assert_true(dmarc_rua_parse("mailto:a%2Bb@example.org!10m", &r));
	assert_string_equal(r.addr, "a+b@example.org");
	assert_int_equal(r.max_size, 10u << 20);
	assert_true(dmarc_rua_parse("MAILTO:x@example.org!500", &r));
	assert_int_equal(r.max_size, 500);
	assert_false(dmarc_rua_parse("https://example.org/report", &r));
	assert_false(dmarc_rua_parse("mailto:nobody", &r));
	assert_false(dmarc_rua_parse("mailto:a b@example.org", &r));
	assert_false(dmarc_rua_parse("mailto:a%0D%0ABcc:x@example.org", &r));
	assert_false(dmarc_rua_parse("mailto:caf\xc3\xa9@example.org", &r));
	assert_false(dmarc_rua_parse("mailto:a@b.example,c@d.example", &r));

	assert_false(dmarc_rua_external("example.com", "example.com"));
	assert_false(dmarc_rua_external("example.com", "reports.example.com"));
	assert_true(dmarc_rua_external("example.com", "example.net"));
	assert_true(dmarc_rua_external("example.com", "badexample.com"));
	assert_true(dmarc_rua_external("example.com", "com"));
	assert_true(dmarc_rua_external("", "example.com"));

	const char *yes[] = {"v=DMARC1"};
	const char *yes2[] = {"spf junk", "v = DMARC1; rua=mailto:x@y.example"};
	const char *no[] = {"v=DMARC2", "rua=mailto:x@y.example; v=DMARC1", "v=DMARC1x"};
	assert_true(dmarc_rua_authorized(yes, 1));
	assert_true(dmarc_rua_authorized(yes2, 2));
	assert_false(dmarc_rua_authorized(no, 3));
	assert_false(dmarc_rua_authorized(NULL, 0));

	/* RFC 9990 §3 step 9: the authorizing record may redirect, on its host only */
	struct dmarc_rua over[DMARC_URIS_MAX];
	size_t n = 9;
	const char *keep[] = {"v=DMARC1"};
	assert_int_equal(dmarc_rua_override(keep, 1, "ext.example", over, DMARC_URIS_MAX, &n), 0);
	assert_int_equal(n, 0);
	const char *redirect[] = {"junk", "v=DMARC1; rua=mailto:a@ext.example!1m, "
	                                  "https://ext.example/x, mailto:b@ext.example"};
	assert_int_equal(dmarc_rua_override(redirect, 2, "ext.example", over, DMARC_URIS_MAX, &n),
	                 1);
	assert_int_equal(n, 2);
	assert_string_equal(over[0].addr, "a@ext.example");
	assert_int_equal(over[0].max_size, 1u << 20);
	assert_string_equal(over[1].addr, "b@ext.example");
	const char *elsewhere[] = {"v=DMARC1; rua=mailto:a@ext.example,mailto:x@evil.example"};
	assert_int_equal(dmarc_rua_override(elsewhere, 1, "ext.example", over, DMARC_URIS_MAX, &n),
	                 -1);
	assert_int_equal(n, 0);
}

/* One evaluation → rows: only Author Domains with a record and a pass or
 * fail; what was published and what was done. */
static void test_note_fill(void **state)
{
	struct dmarc_outcome o;
	memset(&o, 0, sizeof(o));
	o.n_authors = 2;
	struct dmarc_author *a = &o.author[0];
	tern_strlcpy(a->domain, "example.com", sizeof(a->domain));
	tern_strlcpy(a->policy_domain, "example.com", sizeof(a->policy_domain));
	tern_strlcpy(a->org_domain, "example.com", sizeof(a->org_domain));
	a->result = DMARC_RESULT_FAIL;
	a->tag = DMARC_TAG_P;
	a->applied = DMARC_POLICY_QUARANTINE; /* p=reject, t=y: one level lower */
	const char rec[] =
	    "v=DMARC1; p=reject; adkim=s; t=y; rua=mailto:r@example.com, mailto:s@example.com!10m";
	assert_int_equal(dmarc_record_parse(rec, strlen(rec), &a->record), DMARC_PARSE_OK);
	tern_strlcpy(o.author[1].domain, "nopolicy.example", sizeof(a->domain));
	o.author[1].result = DMARC_RESULT_NONE;
	struct dmarc_dkim dk[2] = {
	    {DMARC_DKIM_PASS, "example.com", "s1", "b", NULL, true},
	    {DMARC_DKIM_FAIL, "Other.Example", "s2", "b", NULL, false},
	};
	struct dmarc_spf spf = {DMARC_SPF_SOFTFAIL, DMARC_SPF_MAILFROM, "bounce.example.net"};
	struct dmarc_note n = {1700000000, "192.0.2.7", "x@Bounce.Example.NET", &o, &spf, dk,
	                       2,          DMARC_REJECT};
	struct dmarc_rec out[DMARC_AUTHORS_MAX];
	assert_int_equal(dmarc_note_fill(&n, out), 1);
	assert_string_equal(out[0].ip, "192.0.2.7");
	assert_string_equal(out[0].header_from, "example.com");
	assert_string_equal(out[0].env_from, "bounce.example.net");
	assert_string_equal(out[0].policy_domain, "example.com");
	assert_string_equal(out[0].p, "reject");
	assert_string_equal(out[0].sp, "");
	assert_int_equal(out[0].adkim, 's');
	assert_int_equal(out[0].aspf, 'r');
	assert_true(out[0].testing);
	assert_string_equal(out[0].applied, "p=quarantine");
	assert_string_equal(out[0].disposition, "reject");
	assert_string_equal(out[0].dkim_eval, "fail");
	assert_string_equal(out[0].spf_eval, "fail");
	assert_int_equal(out[0].n_dkim, 2);
	assert_string_equal(out[0].dkim[0].result, "pass");
	assert_false(out[0].dkim[0].aligned); /* a t=y key's pass counts for nothing */
	assert_string_equal(out[0].dkim[1].domain, "other.example");
	assert_string_equal(out[0].spf_domain, "bounce.example.net");
	assert_string_equal(out[0].spf_result, "softfail");
	assert_string_equal(out[0].rua, "mailto:r@example.com\nmailto:s@example.com!10m\n");
}

/* The write-behind: rows recorded from another thread are in the
 * database once dmarc_store_sync returns; closing writes what is left. */
static void test_store_write_behind(void **state)
{
	char dir[] = "/tmp/tern-dmarc-store-XXXXXX";
	assert_non_null(mkdtemp(dir));
	char err[256];
	struct dmarc_store *s = dmarc_store_open(dir, err, sizeof(err));
	assert_non_null(s);
	struct dmarc_rec r;
	memset(&r, 0, sizeof(r));
	r.t = 1700000000;
	tern_strlcpy(r.ip, "192.0.2.9", sizeof(r.ip));
	tern_strlcpy(r.header_from, "example.com", sizeof(r.header_from));
	tern_strlcpy(r.policy_domain, "example.com", sizeof(r.policy_domain));
	tern_strlcpy(r.disposition, "none", sizeof(r.disposition));
	r.n_dkim = 1;
	tern_strlcpy(r.dkim[0].domain, "example.com", sizeof(r.dkim[0].domain));
	tern_strlcpy(r.dkim[0].result, "pass", sizeof(r.dkim[0].result));
	for (int i = 0; i < 50; i++)
		dmarc_store_record(s, &r);
	dmarc_store_sync(s);
	sqlite3 *db = dmarc_db_open(dir, false, err, sizeof(err));
	assert_non_null(db);
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_prepare_v2(db,
	                                    "SELECT COUNT(*), MIN(dkim) FROM evals WHERE ip = "
	                                    "'192.0.2.9' AND policy_domain = 'example.com'",
	                                    -1, &st, NULL),
	                 SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(st, 0), 50);
	assert_non_null(strstr((const char *)sqlite3_column_text(st, 1), "\"result\":\"pass\""));
	sqlite3_finalize(st);
	sqlite3_close(db);
	assert_int_equal(dmarc_store_failures(s), 0);
	dmarc_store_close(s);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_received_xml_samples),
	    cmocka_unit_test(test_received_messages),
	    cmocka_unit_test(test_xml_round_trip),
	    cmocka_unit_test(test_hostile_xml),
	    cmocka_unit_test(test_inflate_limit),
	    cmocka_unit_test(test_rua),
	    cmocka_unit_test(test_note_fill),
	    cmocka_unit_test(test_store_write_behind),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
