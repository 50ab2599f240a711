/*
 * test_conf_check.c — src/core/conf_check.c: which relay networks are too
 * wide to be meant (and that conf_warnings names them), and --changed: the
 * config printed as only what differs from the defaults.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/conf.h"

static void test_cidr_width(void **state)
{
	(void)state;
	static const struct {
		const char *net;
		bool wide;
	} cases[] = {
	    {"0.0.0.0/0", true},      {"::/0", true},          {"128.0.0.0/1", true},
	    {"10.0.0.0/7", true},     {"2000::/3", true},      {"10.0.0.0/8", false},
	    {"127.0.0.0/8", false},   {"192.0.2.0/24", false}, {"::1/128", false},
	    {"2001:db8::/32", false}, {"198.51.100.7", false},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct conf_cidr c;
		print_message("case: %s\n", cases[i].net);
		assert_true(conf_cidr_parse(cases[i].net, &c));
		assert_int_equal(conf_cidr_too_wide(&c), cases[i].wide);
	}
	assert_false(conf_cidr_too_wide(NULL));
}

struct seen {
	int relay;
	char text[512];
};

static void on_warning(const char *key, const char *text, void *arg)
{
	struct seen *s = arg;
	if (strcmp(key, "relay.networks") == 0) {
		s->relay++;
		snprintf(s->text, sizeof(s->text), "%s", text);
	}
}

static struct tern_config *load(const char *text)
{
	char err[256];
	struct tern_config *c = conf_load_string(text, strlen(text), "test", err, sizeof(err));
	if (!c)
		print_error("%s\n", err);
	assert_non_null(c);
	return c;
}

static void test_open_relay_is_a_warning(void **state)
{
	(void)state;
	struct tern_config *c =
	    load("relay { networks = [\"127.0.0.0/8\", \"0.0.0.0/0\", \"10.0.0.0/8\"]; }\n");
	struct seen s = {0};
	conf_warnings(c, on_warning, &s);
	assert_int_equal(s.relay, 1);
	assert_non_null(strstr(s.text, "0.0.0.0/0"));
	assert_non_null(strstr(s.text, "OPEN RELAY"));
	conf_unref(c);

	c = load("relay { networks = [\"192.0.2.0/24\", \"::1/128\"]; }\n");
	memset(&s, 0, sizeof(s));
	conf_warnings(c, on_warning, &s);
	assert_int_equal(s.relay, 0);
	conf_unref(c);
}

static char *changed(const char *text)
{
	struct tern_config *c = load(text);
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);
	assert_non_null(f);
	conf_print_changed(c, f);
	fclose(f);
	conf_unref(c);
	return out;
}

static void test_changed_empty_and_default_values(void **state)
{
	(void)state;
	char *out = changed("");
	assert_string_equal(out, "");
	free(out);
	/* a key set to its default value is not a change */
	out = changed("limits { max_recipients = 1000; }\nvrfy = true;\n");
	assert_string_equal(out, "");
	free(out);
}

static void test_changed_prints_only_changes_in_their_sections(void **state)
{
	(void)state;
	char *out = changed("expn = true;\n"
	                    "limits { max_recipients = 7; max_errors = 20; }\n"
	                    "policy { greylist { enabled = true; } }\n");
	assert_string_equal(out, "expn = true;\n"
	                         "limits {\n"
	                         "\tmax_recipients = 7;\n"
	                         "}\n"
	                         "policy {\n"
	                         "\tgreylist {\n"
	                         "\t\tenabled = true;\n"
	                         "\t}\n"
	                         "}\n");
	/* and the output is a config that loads to the same changes */
	char *again = changed(out);
	assert_string_equal(again, out);
	free(again);
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_cidr_width),
	    cmocka_unit_test(test_open_relay_is_a_warning),
	    cmocka_unit_test(test_changed_empty_and_default_values),
	    cmocka_unit_test(test_changed_prints_only_changes_in_their_sections),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
