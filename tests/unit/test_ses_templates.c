/*
 * test_ses_templates.c — the SES v2 API's templates (src/store/ses_templates.c):
 * {{name}} rendering as SES's Handlebars does it (HTML escaping in Html
 * parts only, {{{raw}}}, dotted names, numbers and booleans, missing
 * values empty, an unclosed brace kept), the store's CRUD and paging, and
 * the SigV4 pair derivation (src/store/ses_keys.c): stable per master and
 * id, different across ids, and the access key id read back.
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

#include "core/buf.h"
#include "core/err.h"
#include "store/ses_keys.h"
#include "store/ses_templates.h"

static char *render(const char *tpl, const char *data, bool html)
{
	json_error_t je;
	json_t *d = json_loads(data, 0, &je);
	assert_non_null(d);
	struct tbuf b = TBUF_INIT(4096);
	assert_int_equal(ses_template_render(tpl, d, html, &b), TERN_OK);
	assert_int_equal(tbuf_append(&b, "", 1), TERN_OK);
	json_decref(d);
	return b.data;
}

static void check(const char *tpl, const char *data, bool html, const char *want)
{
	char *got = render(tpl, data, html);
	assert_string_equal(got, want);
	free(got);
}

static void renders(void **state)
{
	const char *d = "{\"name\":\"<Tom & 'J'>\",\"n\":42,\"ok\":true,\"x\":null,"
	                "\"user\":{\"first\":\"Ann\"},\"eq\":\"a=`b`\\\"\"}";
	check("Hi {{name}}!", d, false, "Hi <Tom & 'J'>!");
	check("Hi {{name}}!", d, true, "Hi &lt;Tom &amp; &#x27;J&#x27;&gt;!");
	check("{{{name}}}", d, true, "<Tom & 'J'>");
	check("{{eq}}", d, true, "a&#x3D;&#x60;b&#x60;&quot;");
	check("{{ n }}/{{ok}}/{{x}}/{{missing}}/{{user.first}}/{{user.none}}/{{user}}", d, false,
	      "42/true///Ann//");
	check("a {{ unclosed", d, false, "a {{ unclosed");
	check("{{name}", d, false, "{{name}");
	check("", d, true, "");
	check("no braces", d, true, "no braces");
}

static void render_bound(void **state)
{
	json_t *d = json_pack("{s:s}", "v", "0123456789");
	struct tbuf b = TBUF_INIT(16);
	assert_int_equal(ses_template_render("{{v}}{{v}}", d, false, &b), TERN_ELIMIT);
	tbuf_free(&b);
	json_decref(d);
}

struct names {
	char got[8][SES_TEMPLATE_NAME_MAX + 1];
	size_t n;
};

static void collect(const char *name, int64_t created, void *arg)
{
	struct names *ns = arg;
	assert_int_equal(created, 1000);
	snprintf(ns->got[ns->n++], sizeof(ns->got[0]), "%s", name);
}

static void store(void **state)
{
	char dir[] = "/tmp/test_ses_XXXXXX", path[256];
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/ses.db", dir);
	struct ses_templates *s;
	assert_int_equal(ses_templates_open(path, &s), TERN_OK);
	struct ses_template t = {.name = "b", .subject = "S", .text = "T", .html = NULL};
	assert_int_equal(ses_templates_put(s, &t, false, 1000), TERN_OK);
	assert_int_equal(ses_templates_put(s, &t, false, 1000), TERN_EEXIST);
	struct ses_template a = {.name = "a", .subject = "S2", .text = NULL, .html = "<p>"};
	assert_int_equal(ses_templates_put(s, &a, true, 1000), TERN_ENOTFOUND);
	assert_int_equal(ses_templates_put(s, &a, false, 1000), TERN_OK);
	struct ses_template g;
	assert_int_equal(ses_templates_get(s, "a", &g), TERN_OK);
	assert_string_equal(g.subject, "S2");
	assert_null(g.text);
	assert_string_equal(g.html, "<p>");
	ses_template_clear(&g);
	struct names ns = {0};
	bool more;
	assert_int_equal(ses_templates_list(s, 0, 1, collect, &ns, &more), TERN_OK);
	assert_true(more);
	assert_int_equal(ses_templates_list(s, 1, 1, collect, &ns, &more), TERN_OK);
	assert_false(more);
	assert_int_equal(ns.n, 2);
	assert_string_equal(ns.got[0], "a");
	assert_string_equal(ns.got[1], "b");
	assert_int_equal(ses_templates_del(s, "a"), TERN_OK);
	assert_int_equal(ses_templates_del(s, "a"), TERN_ENOTFOUND);
	assert_int_equal(ses_templates_get(s, "a", &g), TERN_ENOTFOUND);
	ses_templates_close(s);
	assert_true(ses_template_name_ok("Welcome_1-x"));
	assert_false(ses_template_name_ok(""));
	assert_false(ses_template_name_ok("a/b"));
	assert_false(ses_template_name_ok("a.b"));
	unlink(path);
	rmdir(dir);
}

static void key_pairs(void **state)
{
	char dir[] = "/tmp/test_ses_XXXXXX", path[256];
	assert_non_null(mkdtemp(dir));
	unsigned char m1[SES_MASTER_LEN], m2[SES_MASTER_LEN];
	assert_int_equal(ses_master_load(dir, false, m1), TERN_ENOTFOUND);
	assert_int_equal(ses_master_load(dir, true, m1), TERN_OK);
	assert_int_equal(ses_master_load(dir, false, m2), TERN_OK);
	assert_memory_equal(m1, m2, SES_MASTER_LEN);
	char akid[SES_AKID_LEN + 1], s1[SES_SECRET_LEN + 1], s2[SES_SECRET_LEN + 1];
	char id[APIKEY_ID_LEN + 1];
	ses_key_pair(m1, "0123456789abcdef", akid, s1);
	assert_string_equal(akid, "AKTERN0123456789ABCDEF");
	assert_int_equal(strlen(s1), 64);
	ses_key_pair(m1, "0123456789abcdef", akid, s2);
	assert_string_equal(s1, s2);
	ses_key_pair(m1, "0123456789abcdee", akid, s2);
	assert_string_not_equal(s1, s2);
	assert_true(ses_akid_to_id("AKTERN0123456789ABCDEF", id));
	assert_string_equal(id, "0123456789abcdef");
	assert_false(ses_akid_to_id("AKIDEXAMPLE", id));
	assert_false(ses_akid_to_id("AKTERN0123456789ABCDEG", id));
	assert_false(ses_akid_to_id("AKTERN0123456789ABCDEF0", id));
	snprintf(path, sizeof(path), "%s/apikeys.master", dir);
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(renders),
	    cmocka_unit_test(render_bound),
	    cmocka_unit_test(store),
	    cmocka_unit_test(key_pairs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
