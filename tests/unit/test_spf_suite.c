/*
 * test_spf_suite.c — the OpenSPF RFC 7208 test suite (tests/data/spf/,
 * see its SOURCE.md) run against tern's SPF evaluator.
 *
 * Each scenario's zonedata is served from memory through the evaluator's
 * DNS interface (spf_zone.h) exactly as the reference driver, pyspf's
 * test/testspf.py, serves it; every test checks the MAIL FROM identity
 * (postmaster@HELO when mailfrom is empty) with the default explanation
 * "DEFAULT". A test whose result is a list passes on any of its results;
 * a test with an explanation must produce exactly that text. The run
 * prints "N of N passed" and names every failure; nothing is skipped.
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

#include "core/err.h"
#include "policy/spf.h"
#include "spf_zone.h"
#include "testdata.h"

#define SUITE_TESTS 203 /* rfc7208-tests.yml: 16 scenarios, 203 tests */

static int type_of(const char *t)
{
	static const struct {
		const char *name;
		int type;
	} types[] = {
	    {"A", DNS_A},     {"AAAA", DNS_AAAA}, {"MX", DNS_MX},        {"PTR", DNS_PTR},
	    {"TXT", DNS_TXT}, {"SPF", 99},        {"CNAME", ZONE_CNAME},
	};
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		if (strcmp(types[i].name, t) == 0)
			return types[i].type;
	}
	fail_msg("unknown record type %s in zonedata", t);
	return -1;
}

/* TXT/SPF value: a string, or a list of strings joined without separators
 * (RFC 7208 §3.3). Returns a malloc'd buffer, its length in *len. */
static char *txt_value(json_t *v, size_t *len)
{
	if (json_is_string(v)) {
		*len = json_string_length(v);
		char *s = malloc(*len + 1);
		assert_non_null(s);
		memcpy(s, json_string_value(v), *len);
		s[*len] = '\0';
		return s;
	}
	assert_true(json_is_array(v));
	size_t total = 0, i;
	json_t *e;
	json_array_foreach(v, i, e) total += json_string_length(e);
	char *s = malloc(total + 1);
	assert_non_null(s);
	size_t o = 0;
	json_array_foreach(v, i, e)
	{
		memcpy(s + o, json_string_value(e), json_string_length(e));
		o += json_string_length(e);
	}
	s[o] = '\0';
	*len = o;
	return s;
}

static void add_value(struct zone *z, const char *name, int type, json_t *v)
{
	if (json_is_string(v) && strcmp(json_string_value(v), "TIMEOUT") == 0) {
		zone_add_rr(z, name, type, NULL, 0, 0, true);
		return;
	}
	if (type == DNS_MX) {
		assert_true(json_is_array(v) && json_array_size(v) == 2);
		const char *host = json_string_value(json_array_get(v, 1));
		zone_add_rr(z, name, DNS_MX, host, strlen(host),
		            (unsigned)json_integer_value(json_array_get(v, 0)), false);
		return;
	}
	if (type == DNS_TXT || type == 99) {
		size_t len;
		char *s = txt_value(v, &len);
		zone_add_rr(z, name, type, s, len, 0, false);
		free(s);
		return;
	}
	assert_true(json_is_string(v));
	zone_add(z, name, type, json_string_value(v));
}

/* pyspf testspf.py getrdata(): SPF records are also served as TXT, after
 * the name's other entries, unless the name has a TXT entry (even NONE);
 * NONE values are not served. */
static void load_name(struct zone *z, const char *name, json_t *list)
{
	bool gen = true;
	size_t i;
	json_t *m;
	json_t *gen_txt = json_array();

	json_array_foreach(list, i, m)
	{
		if (json_is_string(m)) {
			assert_string_equal(json_string_value(m), "TIMEOUT");
			zone_add_timeout(z, name);
			continue;
		}
		const char *t;
		json_t *v;
		json_object_foreach(m, t, v)
		{
			int type = type_of(t);
			if (type == DNS_TXT)
				gen = false;
			else if (type == 99 && gen)
				json_array_append(gen_txt, v);
			if (json_is_string(v) && strcmp(json_string_value(v), "NONE") == 0)
				continue;
			add_value(z, name, type, v);
		}
	}
	if (gen) {
		json_array_foreach(gen_txt, i, m) add_value(z, name, DNS_TXT, m);
	}
	json_decref(gen_txt);
}

static bool result_ok(json_t *want, const char *got)
{
	if (json_is_string(want))
		return strcmp(json_string_value(want), got) == 0;
	size_t i;
	json_t *e;
	json_array_foreach(want, i, e)
	{
		if (strcmp(json_string_value(e), got) == 0)
			return true;
	}
	return false;
}

static void show_want(json_t *want, char *buf, size_t len)
{
	if (json_is_string(want)) {
		snprintf(buf, len, "%s", json_string_value(want));
		return;
	}
	size_t i, o = 0;
	json_t *e;
	buf[0] = '\0';
	json_array_foreach(want, i, e)
	{
		int k = snprintf(buf + o, len - o, "%s%s", i ? "|" : "", json_string_value(e));
		if (k < 0 || (size_t)k >= len - o)
			break;
		o += (size_t)k;
	}
}

static void test_openspf_rfc7208_suite(void **state)
{
	char path[4096];
	json_error_t jerr;

	assert_true(testdata_path(path, sizeof(path), "spf/rfc7208-tests.json"));
	json_t *suite = json_load_file(path, JSON_ALLOW_NUL, &jerr);
	if (!suite)
		fail_msg("%s: %s (line %d)", path, jerr.text, jerr.line);
	assert_true(json_is_array(suite));

	size_t total = 0, passed = 0, si;
	json_t *scen;
	json_array_foreach(suite, si, scen)
	{
		struct zone z;
		memset(&z, 0, sizeof(z));
		const char *name;
		json_t *list;
		json_object_foreach(json_object_get(scen, "zonedata"), name, list)
		    load_name(&z, name, list);

		const char *tname;
		json_t *t;
		json_object_foreach(json_object_get(scen, "tests"), tname, t)
		{
			struct spf_request req;
			struct spf_outcome out;
			struct spf_dns dns = {zone_resolve, &z};

			total++;
			memset(&req, 0, sizeof(req));
			const char *host = json_string_value(json_object_get(t, "host"));
			assert_int_equal(spf_ip_parse(host, &req.ip), TERN_OK);
			req.helo = json_string_value(json_object_get(t, "helo"));
			req.mailfrom = json_string_value(json_object_get(t, "mailfrom"));
			req.receiver = "receiver.example";
			req.default_exp = "DEFAULT";
			req.now = 1700000000;
			assert_int_equal(spf_check_sync(&req, SPF_ID_MAILFROM, NULL, &dns, &out),
			                 TERN_OK);

			json_t *want = json_object_get(t, "result");
			const char *got = spf_result_name(out.result);
			json_t *exp = json_object_get(t, "explanation");
			bool ok = result_ok(want, got);
			if (ok && exp && strcmp(json_string_value(exp), out.explanation) != 0)
				ok = false;
			if (ok && getenv("SPF_SUITE_VERBOSE"))
				printf("ok   %s: %s (mechanism: %s; problem: %s)\n", tname, got,
				       out.mechanism, out.problem);
			if (ok) {
				passed++;
				continue;
			}
			char w[64];
			show_want(want, w, sizeof(w));
			printf("FAIL %s / %s: got %s, want %s",
			       json_string_value(json_object_get(scen, "description")), tname, got,
			       w);
			if (exp)
				printf("; explanation \"%s\", want \"%s\"", out.explanation,
				       json_string_value(exp));
			printf(" (problem: %s; mechanism: %s)\n", out.problem, out.mechanism);
		}
		zone_free(&z);
	}
	json_decref(suite);
	printf("OpenSPF RFC 7208 suite: %zu of %zu passed (none skipped)\n", passed, total);
	assert_int_equal(total, SUITE_TESTS);
	assert_int_equal(passed, total);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_openspf_rfc7208_suite),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
