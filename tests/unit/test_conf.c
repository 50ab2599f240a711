/*
 * test_conf.c — the configuration a user writes: UCL syntax (core/ucl.c),
 * every key's default and check, every error message a user can see, CIDR
 * matching, aliases, includes and the print/reload round trip (core/conf.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/auth.h"
#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/ucl.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static struct tern_config *load_str(const char *text, char *err, size_t errlen)
{
	return conf_load_string(text, strlen(text), "t.conf", err, errlen);
}

/* conf_print into a malloc'd string. */
static char *print_to_string(const struct tern_config *c)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	assert_non_null(f);
	conf_print(c, f);
	fclose(f);
	return buf;
}

/* ---- UCL syntax ---------------------------------------------------------- */

struct scalar_case {
	const char *text;
	const char *path;
	enum ucl_type type;
	int64_t i;     /* UCL_INT, UCL_BOOL */
	double f;      /* UCL_FLOAT */
	const char *s; /* UCL_STRING */
	enum ucl_unit unit;
};

static const struct scalar_case scalar_cases[] = {
    /* the four ways to assign, with and without separators */
    {"a = 1;", "a", UCL_INT, 1, 0, NULL, UCL_UNIT_NONE},
    {"a 1", "a", UCL_INT, 1, 0, NULL, UCL_UNIT_NONE},
    {"a: 1,", "a", UCL_INT, 1, 0, NULL, UCL_UNIT_NONE},
    {"a=1\nb=2", "b", UCL_INT, 2, 0, NULL, UCL_UNIT_NONE},
    {"s { a = 7 }", "s.a", UCL_INT, 7, 0, NULL, UCL_UNIT_NONE},
    {"s = { a = 7; }", "s.a", UCL_INT, 7, 0, NULL, UCL_UNIT_NONE},
    {"s\n{\n a 7\n}\n", "s.a", UCL_INT, 7, 0, NULL, UCL_UNIT_NONE},
    {"listen mx { port = 25 }", "listen.mx.port", UCL_INT, 25, 0, NULL, UCL_UNIT_NONE},
    {"listen \"mx\" { port = 25 }", "listen.mx.port", UCL_INT, 25, 0, NULL, UCL_UNIT_NONE},
    {"{\"a\": {\"b\": 3}}", "a.b", UCL_INT, 3, 0, NULL, UCL_UNIT_NONE},
    {"\xef\xbb\xbf"
     "a = 1",
     "a", UCL_INT, 1, 0, NULL, UCL_UNIT_NONE},
    {"\"quoted key\" = 1", "quoted key", UCL_INT, 1, 0, NULL, UCL_UNIT_NONE},
    {"'single key' = 1", "single key", UCL_INT, 1, 0, NULL, UCL_UNIT_NONE},
    {"x@example_test+y = 1", "x@example_test+y", UCL_INT, 1, 0, NULL, UCL_UNIT_NONE},
    /* numbers and suffixes */
    {"a = -3", "a", UCL_INT, -3, 0, NULL, UCL_UNIT_NONE},
    {"a = +3", "a", UCL_INT, 3, 0, NULL, UCL_UNIT_NONE},
    {"a = 9223372036854775807", "a", UCL_INT, INT64_MAX, 0, NULL, UCL_UNIT_NONE},
    {"a = -9223372036854775808", "a", UCL_INT, INT64_MIN, 0, NULL, UCL_UNIT_NONE},
    {"a = 1.5", "a", UCL_FLOAT, 0, 1.5, NULL, UCL_UNIT_NONE},
    {"a = 2e3", "a", UCL_FLOAT, 0, 2000, NULL, UCL_UNIT_NONE},
    {"a = 10k", "a", UCL_INT, 10240, 0, NULL, UCL_UNIT_SIZE},
    {"a = 10kb", "a", UCL_INT, 10240, 0, NULL, UCL_UNIT_SIZE},
    {"a = 32m", "a", UCL_INT, 32 << 20, 0, NULL, UCL_UNIT_SIZE},
    {"a = 32MB", "a", UCL_INT, 32 << 20, 0, NULL, UCL_UNIT_SIZE},
    {"a = 2g", "a", UCL_INT, 2ll << 30, 0, NULL, UCL_UNIT_SIZE},
    {"a = 1gb", "a", UCL_INT, 1ll << 30, 0, NULL, UCL_UNIT_SIZE},
    {"a = 1.5k", "a", UCL_INT, 1536, 0, NULL, UCL_UNIT_SIZE},
    {"a = 30s", "a", UCL_INT, 30, 0, NULL, UCL_UNIT_TIME},
    {"a = 5min", "a", UCL_INT, 300, 0, NULL, UCL_UNIT_TIME},
    {"a = 2h", "a", UCL_INT, 7200, 0, NULL, UCL_UNIT_TIME},
    {"a = 1d", "a", UCL_INT, 86400, 0, NULL, UCL_UNIT_TIME},
    {"a = 1w", "a", UCL_INT, 604800, 0, NULL, UCL_UNIT_TIME},
    {"a = 2000ms", "a", UCL_INT, 2, 0, NULL, UCL_UNIT_TIME},
    {"a = 1500ms", "a", UCL_FLOAT, 0, 1.5, NULL, UCL_UNIT_TIME},
    {"a = 0.5min", "a", UCL_INT, 30, 0, NULL, UCL_UNIT_TIME},
    /* booleans, any case */
    {"a = true", "a", UCL_BOOL, 1, 0, NULL, UCL_UNIT_NONE},
    {"a = yes", "a", UCL_BOOL, 1, 0, NULL, UCL_UNIT_NONE},
    {"a = On", "a", UCL_BOOL, 1, 0, NULL, UCL_UNIT_NONE},
    {"a = FALSE", "a", UCL_BOOL, 0, 0, NULL, UCL_UNIT_NONE},
    {"a = no", "a", UCL_BOOL, 0, 0, NULL, UCL_UNIT_NONE},
    {"a = off", "a", UCL_BOOL, 0, 0, NULL, UCL_UNIT_NONE},
    /* bare words that are not numbers stay strings */
    {"a = 127.0.0.1", "a", UCL_STRING, 0, 0, "127.0.0.1", UCL_UNIT_NONE},
    {"a = 10.0.0.0/8", "a", UCL_STRING, 0, 0, "10.0.0.0/8", UCL_UNIT_NONE},
    {"a = ::1/128", "a", UCL_STRING, 0, 0, "::1/128", UCL_UNIT_NONE},
    {"a = 127.0.0.1:25", "a", UCL_STRING, 0, 0, "127.0.0.1:25", UCL_UNIT_NONE},
    {"a = /var/lib/tern", "a", UCL_STRING, 0, 0, "/var/lib/tern", UCL_UNIT_NONE},
    {"a = a//b", "a", UCL_STRING, 0, 0, "a//b", UCL_UNIT_NONE},
    {"a = 10x", "a", UCL_STRING, 0, 0, "10x", UCL_UNIT_NONE},
    {"a = 1.", "a", UCL_STRING, 0, 0, "1.", UCL_UNIT_NONE},
    {"a = *.example+x@y", "a", UCL_STRING, 0, 0, "*.example+x@y", UCL_UNIT_NONE},
    {"a = \"true\"", "a", UCL_STRING, 0, 0, "true", UCL_UNIT_NONE},
    {"a = \"12\"", "a", UCL_STRING, 0, 0, "12", UCL_UNIT_NONE},
    /* escapes */
    {"a = \"q\\\"b\\\\s\\/\"", "a", UCL_STRING, 0, 0, "q\"b\\s/", UCL_UNIT_NONE},
    {"a = \"\\n\\t\\r\\b\\f\"", "a", UCL_STRING, 0, 0, "\n\t\r\b\f", UCL_UNIT_NONE},
    {"a = \"\\u00e9\\u20AC\"", "a", UCL_STRING, 0, 0, "\xc3\xa9\xe2\x82\xac", UCL_UNIT_NONE},
    {"a = \"\\ud83d\\ude00\"", "a", UCL_STRING, 0, 0, "\xf0\x9f\x98\x80", UCL_UNIT_NONE},
    {"a = 'raw \\n \\\\ \"'", "a", UCL_STRING, 0, 0, "raw \\n \\\\ \"", UCL_UNIT_NONE},
    {"a = 'it\\'s'", "a", UCL_STRING, 0, 0, "it's", UCL_UNIT_NONE},
    {"a = \"\"", "a", UCL_STRING, 0, 0, "", UCL_UNIT_NONE},
    {"a = \"tab\there\"", "a", UCL_STRING, 0, 0, "tab\there", UCL_UNIT_NONE},
    /* comments everywhere */
    {"# c\na = 1 # c\n", "a", UCL_INT, 1, 0, NULL, UCL_UNIT_NONE},
    {"// c\na = 1 // c", "a", UCL_INT, 1, 0, NULL, UCL_UNIT_NONE},
    {"/* c\n c */ a /* c */ = /* c */ 1 /* c */;", "a", UCL_INT, 1, 0, NULL, UCL_UNIT_NONE},
    {"a = \"# not a comment\"", "a", UCL_STRING, 0, 0, "# not a comment", UCL_UNIT_NONE},
    /* duplicates: later wins for values, sections merge */
    {"a = 1; a = 2", "a", UCL_INT, 2, 0, NULL, UCL_UNIT_NONE},
    {"s { x = 1 } s { y = 2 }", "s.x", UCL_INT, 1, 0, NULL, UCL_UNIT_NONE},
    {"s { x = 1 } s { y = 2 }", "s.y", UCL_INT, 2, 0, NULL, UCL_UNIT_NONE},
    {"s { x = 1 } s { x = 3 }", "s.x", UCL_INT, 3, 0, NULL, UCL_UNIT_NONE},
    {"s { t { x = 1 } } s { t { y = 2 } }", "s.t.x", UCL_INT, 1, 0, NULL, UCL_UNIT_NONE},
    {"s = 1; s { x = 5 }", "s.x", UCL_INT, 5, 0, NULL, UCL_UNIT_NONE},
    {"s { x = 5 } s = 4", "s", UCL_INT, 4, 0, NULL, UCL_UNIT_NONE},
};

static void test_ucl_scalars(void **state)
{
	for (size_t i = 0; i < N(scalar_cases); i++) {
		const struct scalar_case *tc = &scalar_cases[i];
		struct ucl_doc *doc;
		char err[256];
		int rc = ucl_parse(tc->text, strlen(tc->text), "t", false, &doc, err, sizeof(err));
		if (rc != TERN_OK)
			fail_msg("case %zu '%s': %s", i, tc->text, err);
		const struct ucl_node *n = ucl_lookup_path(doc->root, tc->path);
		if (!n)
			fail_msg("case %zu '%s': %s not found", i, tc->text, tc->path);
		if (n->type != tc->type)
			fail_msg("case %zu '%s': type %d, want %d", i, tc->text, n->type, tc->type);
		switch (tc->type) {
		case UCL_INT:
			assert_int_equal(n->ival, tc->i);
			assert_int_equal(n->unit, tc->unit);
			break;
		case UCL_BOOL:
			assert_int_equal(n->bval, tc->i);
			break;
		case UCL_FLOAT:
			assert_true(n->fval == tc->f);
			assert_int_equal(n->unit, tc->unit);
			break;
		case UCL_STRING:
			assert_string_equal(n->str, tc->s);
			assert_int_equal(n->len, strlen(tc->s));
			break;
		default:
			break;
		}
		ucl_free(doc);
	}
}

static void test_ucl_arrays_and_order(void **state)
{
	static const char text[] = "z = 1\n"
	                           "l = [ \"a\", b, 3,\n"
	                           "      [ 4 ], { k = v }, ]\n"
	                           "nl = [\n  x\n  y\n]\n"
	                           "e = []\n"
	                           "a = 2\n";
	struct ucl_doc *doc;
	char err[256];
	assert_int_equal(ucl_parse(text, strlen(text), "t", false, &doc, err, sizeof(err)),
	                 TERN_OK);
	const struct ucl_node *r = doc->root;
	assert_int_equal(r->n_items, 5);
	const char *order[] = {"z", "l", "nl", "e", "a"};
	for (size_t i = 0; i < N(order); i++)
		assert_string_equal(r->items[i]->key, order[i]);
	const struct ucl_node *l = ucl_lookup(r, "l");
	assert_int_equal(l->type, UCL_ARRAY);
	assert_int_equal(l->n_items, 5);
	assert_string_equal(l->items[0]->str, "a");
	assert_true(l->items[0]->quoted);
	assert_string_equal(l->items[1]->str, "b");
	assert_false(l->items[1]->quoted);
	assert_int_equal(l->items[2]->ival, 3);
	assert_int_equal(l->items[3]->type, UCL_ARRAY);
	assert_int_equal(l->items[4]->type, UCL_OBJECT);
	assert_string_equal(ucl_lookup(l->items[4], "k")->str, "v");
	assert_int_equal(l->items[4]->line, 3);
	assert_int_equal(ucl_lookup(r, "nl")->n_items, 2);
	assert_int_equal(ucl_lookup(r, "e")->n_items, 0);
	assert_int_equal(ucl_lookup(r, "a")->line, 9);
	ucl_free(doc);
}

/* Objects with many members use a hash index; lookups and merges must agree. */
static void test_ucl_many_keys(void **state)
{
	char text[64 * 1024];
	size_t o = 0;
	for (int i = 0; i < 2000; i++)
		o += (size_t)snprintf(text + o, sizeof(text) - o, "k%d = %d\n", i, i);
	for (int i = 0; i < 2000; i += 7)
		o += (size_t)snprintf(text + o, sizeof(text) - o, "k%d = -%d\n", i, i);
	struct ucl_doc *doc;
	char err[256];
	assert_int_equal(ucl_parse(text, o, "t", false, &doc, err, sizeof(err)), TERN_OK);
	assert_int_equal(doc->root->n_items, 2000);
	for (int i = 0; i < 2000; i++) {
		char k[16];
		snprintf(k, sizeof(k), "k%d", i);
		const struct ucl_node *n = ucl_lookup(doc->root, k);
		assert_non_null(n);
		assert_int_equal(n->ival, i % 7 == 0 ? -i : i);
		assert_string_equal(doc->root->items[i]->key, k);
	}
	assert_null(ucl_lookup(doc->root, "k2000"));
	ucl_free(doc);
}

struct err_case {
	const char *text;
	const char *err;
};

static const struct err_case ucl_err_cases[] = {
    {"a = \"abc", "t:1: unterminated string (a string must end on its line)"},
    {"a = \"ab\nc\"", "t:1: unterminated string (a string must end on its line)"},
    {"\n\na = 'abc", "t:3: unterminated string (a string must end on its line)"},
    {"a = \"\\q\"", "t:1: unknown escape \\'q' in string"},
    {"a = \"\\u12\"", "t:1: \\u must be followed by 4 hex digits"},
    {"a = \"\\u0000\"", "t:1: NUL character (\\u0000) in string"},
    {"a = \"\\ud800\"", "t:1: unpaired surrogate \\ud800 in string"},
    {"a = \"\\ude00\"", "t:1: unpaired surrogate \\ude00 in string"},
    {"a = \"x\x01\"", "t:1: control character (byte 0x01) in string; use an escape"},
    {"a = 1\nb = 2 3", "t:2: expected ';' or a new line after a value, found '3'"},
    {"a = ", "t:1: missing value for key 'a'"},
    {"a = ;", "t:1: missing value for key 'a'"},
    {"a", "t:1: missing value for key 'a'"},
    {"s {\n a = 1\n", "t:1: missing '}' for the section opened here"},
    {"l = [1,\n2", "t:1: missing ']' for the array opened here"},
    {"l = [1 2]", "t:1: expected ',' or ']' after an array element"},
    {"l = [1,,2]", "t:1: missing value"},
    {"a = 1 }", "t:1: expected ';' or a new line after a value, found '}'"},
    {"a = 1\n}", "t:2: unexpected '}'"},
    {"= 1", "t:1: expected a key, found '='"},
    {"\"\" = 1", "t:1: empty key"},
    {"a = =", "t:1: unexpected '='"},
    {"a = <x>", "t:1: unexpected '<'"},
    {"a = 1\n/* open\n\n", "t:2: unterminated /* comment"},
    {"a = 99999999999999999999", "t:1: number 99999999999999999999 is out of range"},
    {"a = 9223372036854775808", "t:1: number 9223372036854775808 is out of range"},
    {"a = 9000000000g", "t:1: number 9000000000g is out of range"},
    {"a = 1e999", "t:1: number 1e999 is out of range"},
    {"a = 1\nb = \"x\0y\"", "t:2: NUL byte in configuration text"},
    {".include \"x.conf\"", "t:1: .include is only allowed in configuration files"},
    {".priority 1", "t:1: unknown directive '.priority'"},
    {"{ a = 1 } b = 2", "t:1: text after the closing '}'"},
    {"{ a = 1 ", "t:1: missing '}' for the section opened here"},
    {"a = \x80\x01", "t:1: expected ';' or a new line after a value, found byte 0x01"},
};

static void test_ucl_errors(void **state)
{
	for (size_t i = 0; i < N(ucl_err_cases); i++) {
		const struct err_case *tc = &ucl_err_cases[i];
		struct ucl_doc *doc = (void *)1;
		char err[256];
		size_t len = strlen(tc->text);
		if (strstr(tc->err, "NUL byte"))
			len += 3; /* the case has a NUL in the middle */
		int rc = ucl_parse(tc->text, len, "t", false, &doc, err, sizeof(err));
		if (rc == TERN_OK)
			fail_msg("case %zu '%s' parsed", i, tc->text);
		assert_null(doc);
		if (strcmp(err, tc->err) != 0)
			fail_msg("case %zu '%s':\n got  %s\n want %s", i, tc->text, err, tc->err);
	}
}

/* Never reads past len: the bytes after it would make the text valid. */
static void test_ucl_respects_length(void **state)
{
	static const char text[] = "a = \"abc\"; b = 1";
	struct ucl_doc *doc;
	char err[256];
	assert_int_not_equal(ucl_parse(text, 7, "t", false, &doc, err, sizeof(err)), TERN_OK);
	assert_string_equal(err, "t:1: unterminated string (a string must end on its line)");
	assert_int_equal(ucl_parse(text, 3, "t", false, &doc, err, sizeof(err)), TERN_ESYNTAX);
	assert_int_equal(ucl_parse(text, 10, "t", false, &doc, err, sizeof(err)), TERN_OK);
	assert_null(ucl_lookup(doc->root, "b"));
	ucl_free(doc);
	assert_int_equal(ucl_parse(NULL, 0, "t", false, &doc, err, sizeof(err)), TERN_OK);
	assert_int_equal(doc->root->n_items, 0);
	ucl_free(doc);
	/* a tiny error buffer is still NUL-terminated */
	char small[8];
	assert_int_not_equal(ucl_parse("a = \"", 5, "t", false, &doc, small, sizeof(small)),
	                     TERN_OK);
	assert_string_equal(small, "t:1: un");
}

static void test_ucl_depth_limit(void **state)
{
	char text[256];
	for (int depth = UCL_MAX_DEPTH; depth <= UCL_MAX_DEPTH + 1; depth++) {
		size_t o = 0;
		for (int i = 0; i < depth; i++)
			o += (size_t)snprintf(text + o, sizeof(text) - o, "a{");
		for (int i = 0; i < depth; i++)
			text[o++] = '}';
		struct ucl_doc *doc;
		char err[256];
		int rc = ucl_parse(text, o, "t", false, &doc, err, sizeof(err));
		if (depth <= UCL_MAX_DEPTH) {
			assert_int_equal(rc, TERN_OK);
			ucl_free(doc);
		} else {
			assert_int_equal(rc, TERN_ESYNTAX);
			assert_string_equal(err, "t:1: nesting too deep (limit 32)");
		}
	}
	/* arrays count too, and deep input never recurses further */
	char deep[4096];
	memset(deep, '[', sizeof(deep));
	memcpy(deep, "a=", 2);
	struct ucl_doc *doc;
	char err[256];
	assert_int_equal(ucl_parse(deep, sizeof(deep), "t", false, &doc, err, sizeof(err)),
	                 TERN_ESYNTAX);
	assert_string_equal(err, "t:1: nesting too deep (limit 32)");
}

/* ---- defaults ------------------------------------------------------------ */

static void check_defaults(const struct tern_config *c)
{
	char host[256];
	assert_int_equal(gethostname(host, sizeof(host)), 0);
	host[255] = '\0';
	assert_string_equal(c->hostname, host);
	assert_string_equal(c->data_dir, "./tern-data");
	assert_string_equal(c->users_file, "./tern-data/users");
	assert_string_equal(c->user, "nobody");
	assert_string_equal(c->log_level, "info");
	assert_int_equal(c->workers, 0);
	assert_true(c->vrfy);
	assert_false(c->expn);
	assert_int_equal(c->n_local_domains, 1);
	assert_string_equal(c->local_domains[0], "localhost");
	assert_int_equal(c->n_aliases, 0);
	assert_int_equal(c->n_relay_networks, 2);
	assert_int_equal(c->relay_networks[0].family, AF_INET);
	assert_int_equal(c->relay_networks[0].prefix, 8);
	assert_int_equal(c->relay_networks[0].addr[0], 127);
	assert_int_equal(c->relay_networks[1].family, AF_INET6);
	assert_int_equal(c->relay_networks[1].prefix, 128);
	assert_int_equal(c->relay_networks[1].addr[15], 1);
	assert_int_equal(c->limits.max_message_size, 32u << 20);
	assert_int_equal(c->limits.max_recipients, 1000);
	assert_int_equal(c->limits.max_connections, 10000);
	assert_int_equal(c->limits.max_connections_per_ip, 100);
	assert_int_equal(c->limits.max_line_length, 2048);
	assert_int_equal(c->limits.max_errors, 20);
	assert_int_equal(c->limits.max_received_headers, 100);
	assert_int_equal(c->limits.idle_timeout, 300);
	assert_int_equal(c->limits.data_timeout, 180);
	assert_int_equal(c->limits.shutdown_grace, 30);
	assert_string_equal(c->recipient_delimiter, "+");
	/* listeners and tls differ: test_empty_file_gets_every_default and
	 * test_embedded_default_matches_defaults */
	/* delivery, routes, relayhost, dns */
	assert_int_equal(c->delivery.remote_port, 25);
	assert_int_equal(c->delivery.retry_base, 300);
	assert_int_equal(c->delivery.retry_max, 3600);
	assert_int_equal(c->delivery.max_lifetime, 5 * 86400);
	assert_int_equal(c->delivery.delay_warning, 4 * 3600);
	assert_int_equal(c->delivery.max_per_destination, 10);
	assert_int_equal(c->delivery.connect_timeout, 30);
	assert_int_equal(c->delivery.command_timeout, 300);
	assert_true(c->delivery.chunking);
	assert_int_equal(c->n_routes, 0);
	assert_null(c->relayhost);
	assert_null(conf_find_route(c, "example.com"));
	assert_int_equal(c->dns.n_forward, 0);
	assert_null(c->dns.trust_anchor_file);
	/* auth and senders: AUTH only after TLS, PLAIN and LOGIN, the throttle's defaults */
	assert_int_equal(c->n_senders, 0);
	assert_false(c->auth.allow_plaintext);
	assert_false(c->auth.received_header_user);
	assert_int_equal(c->auth.mechanisms,
	                 SASL_MECH_BIT(SASL_MECH_PLAIN) | SASL_MECH_BIT(SASL_MECH_LOGIN));
	assert_null(c->auth.oauth.issuer);
	const struct throttle_config td = THROTTLE_CONFIG_DEFAULT;
	assert_int_equal(c->auth.throttle.delay_after, td.delay_after);
	assert_int_equal(c->auth.throttle.delay_ms, td.base_delay_ms);
	assert_int_equal(c->auth.throttle.max_delay_ms, td.max_delay_ms);
	assert_int_equal(c->auth.throttle.addr_block_after, td.addr_block_after);
	assert_int_equal(c->auth.throttle.user_block_after, td.user_block_after);
	assert_int_equal(c->auth.throttle.block_time, td.block_seconds);
	assert_int_equal(c->auth.throttle.forget_after, td.window_seconds);
	assert_int_equal(c->auth.throttle.max_entries, td.max_entries);
	/* auth_checks: SPF and DKIM on, DMARC marks, temperror delivers */
	assert_true(c->auth_checks.spf);
	assert_true(c->auth_checks.dkim);
	assert_int_equal(c->auth_checks.dmarc, CONF_DMARC_MARK);
	assert_false(c->auth_checks.defer_on_temperror);
	assert_int_equal(c->auth_checks.timeout, 20);
}

static void test_empty_file_gets_every_default(void **state)
{
	char err[256];
	struct tern_config *c = load_str("", err, sizeof(err));
	assert_non_null(c);
	check_defaults(c);
	assert_string_equal(c->source, "t.conf");
	assert_int_equal(c->n_listeners, 2);
	assert_string_equal(c->listeners[0].name, "mx");
	assert_string_equal(c->listeners[0].address, "127.0.0.1:2525");
	assert_string_equal(c->listeners[0].profile, "mx");
	assert_int_equal(c->listeners[0].tls, CONF_LISTEN_TLS_NONE); /* no certificate */
	/* POP3 with STLS once a certificate is set; no 2995 without one */
	assert_string_equal(c->listeners[1].name, "pop3");
	assert_string_equal(c->listeners[1].address, "127.0.0.1:2110");
	assert_string_equal(c->listeners[1].profile, "pop3");
	assert_int_equal(c->listeners[1].tls, CONF_LISTEN_TLS_NONE);
	assert_int_equal(c->tls.n_certs, 0);
	assert_false(c->tls.self_signed);
	conf_unref(c);
}

static void test_embedded_default_matches_defaults(void **state)
{
	char err[256];
	struct tern_config *e = conf_load(NULL, err, sizeof(err));
	assert_non_null(e);
	check_defaults(e);
	assert_string_equal(e->source, "(embedded default)");
	/* DESIGN §1: submission with STARTTLS on 2587, implicit TLS on 2465,
	 * POP3 with STLS on 2110 and TLS on 2995, with a self-signed
	 * certificate made in the data dir; the HTTP API on 2580 (no TLS of its own) */
	assert_int_equal(e->n_listeners, 6);
	static const struct {
		const char *name, *address, *profile;
		enum conf_listen_tls tls;
	} want[] = {
	    {"mx", "127.0.0.1:2525", "mx", CONF_LISTEN_TLS_STARTTLS},
	    {"submission", "127.0.0.1:2587", "submission", CONF_LISTEN_TLS_STARTTLS},
	    {"submissions", "127.0.0.1:2465", "submission", CONF_LISTEN_TLS_IMPLICIT},
	    {"pop3", "127.0.0.1:2110", "pop3", CONF_LISTEN_TLS_STARTTLS},
	    {"pop3s", "127.0.0.1:2995", "pop3", CONF_LISTEN_TLS_IMPLICIT},
	    {"api", "127.0.0.1:2580", "http", CONF_LISTEN_TLS_NONE},
	};
	for (size_t i = 0; i < 6; i++) {
		assert_string_equal(e->listeners[i].name, want[i].name);
		assert_string_equal(e->listeners[i].address, want[i].address);
		assert_string_equal(e->listeners[i].profile, want[i].profile);
		assert_int_equal(e->listeners[i].tls, want[i].tls);
	}
	assert_true(e->tls.self_signed);
	assert_int_equal(e->tls.n_certs, 1);
	assert_string_equal(e->tls.certs[0].cert_file, "./tern-data/tls/selfsigned-cert.pem");
	assert_string_equal(e->tls.certs[0].key_file, "./tern-data/tls/selfsigned-key.pem");
	/* Otherwise a file that sets nothing gets the same values. */
	static const char only_diff[] =
	    "listen {\n"
	    "  mx { address = \"127.0.0.1:2525\"; profile = mx }\n"
	    "  submission { address = \"127.0.0.1:2587\"; profile = submission; tls = starttls }\n"
	    "  submissions { address = \"127.0.0.1:2465\"; profile = submission; tls = implicit }\n"
	    "  pop3 { address = \"127.0.0.1:2110\"; profile = pop3 }\n"
	    "  pop3s { address = \"127.0.0.1:2995\"; profile = pop3; tls = implicit }\n"
	    "  api { address = \"127.0.0.1:2580\"; profile = http }\n"
	    "}\n"
	    "tls { self_signed = true }\n";
	struct tern_config *d = load_str(only_diff, err, sizeof(err));
	if (!d)
		fail_msg("%s", err);
	char *pe = print_to_string(e), *pd = print_to_string(d);
	assert_string_equal(pe, pd);
	free(pe);
	free(pd);
	conf_unref(e);
	conf_unref(d);
}

static void test_ref_counting(void **state)
{
	char err[256];
	struct tern_config *c = conf_load(NULL, err, sizeof(err));
	assert_ptr_equal(conf_ref(c), c);
	conf_unref(c);
	assert_string_equal(c->user, "nobody"); /* still alive: one reference left */
	conf_unref(c);
	conf_unref(NULL);
	assert_null(conf_ref(NULL));
}

/* ---- keys and values ----------------------------------------------------- */

static void test_full_config(void **state)
{
	static const char text[] =
	    "hostname = mx.Example.test\n"
	    "data_dir = /var/lib/tern/\n"
	    "user tern\n"
	    "log_level = debug\n"
	    "workers = 4\n"
	    "vrfy = no\n"
	    "expn = yes\n"
	    "local_domains = [ Example.TEST, \"other.test\", example.test ]\n"
	    "aliases {\n"
	    "  \"Postmaster@Example.test\" = [\"Alice@example.test\", bob@example.test]\n"
	    "  \"x@y.test\" = \"single@example.test\"\n"
	    "}\n"
	    "relay { networks = [\"10.0.0.0/8\", \"2001:db8::/32\", 192.0.2.1] }\n"
	    "limits {\n"
	    "  max_message_size = 10m; max_recipients = 50; max_connections = 2000;\n"
	    "  max_connections_per_ip = 5; max_line_length = 1k; max_errors = 3;\n"
	    "  max_received_headers = 30; idle_timeout = 1min; data_timeout = 600;\n"
	    "  shutdown_grace = 0\n"
	    "}\n"
	    "listen {\n"
	    "  mx { address = \"0.0.0.0:25\"; profile = mx }\n"
	    "  submission { address = \"[::1]:587\"; profile = submission }\n"
	    "}\n";
	char err[256];
	struct tern_config *c = load_str(text, err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_string_equal(c->hostname, "mx.Example.test");
	assert_string_equal(c->data_dir, "/var/lib/tern/");
	assert_string_equal(c->users_file, "/var/lib/tern/users");
	assert_string_equal(c->user, "tern");
	assert_string_equal(c->log_level, "debug");
	assert_int_equal(c->workers, 4);
	assert_false(c->vrfy);
	assert_true(c->expn);
	assert_int_equal(c->n_local_domains, 2); /* lowercased, duplicate dropped */
	assert_string_equal(c->local_domains[0], "example.test");
	assert_string_equal(c->local_domains[1], "other.test");
	assert_int_equal(c->n_aliases, 2);
	assert_int_equal(c->n_relay_networks, 3);
	assert_int_equal(c->relay_networks[2].prefix, 32);
	assert_int_equal(c->limits.max_message_size, 10u << 20);
	assert_int_equal(c->limits.max_recipients, 50);
	assert_int_equal(c->limits.max_connections, 2000);
	assert_int_equal(c->limits.max_connections_per_ip, 5);
	assert_int_equal(c->limits.max_line_length, 1024);
	assert_int_equal(c->limits.max_errors, 3);
	assert_int_equal(c->limits.max_received_headers, 30);
	assert_int_equal(c->limits.idle_timeout, 60);
	assert_int_equal(c->limits.data_timeout, 600);
	assert_int_equal(c->limits.shutdown_grace, 0);
	assert_int_equal(c->n_listeners, 2);
	assert_string_equal(c->listeners[0].name, "mx");
	assert_string_equal(c->listeners[0].address, "0.0.0.0:25");
	assert_string_equal(c->listeners[1].name, "submission");
	assert_string_equal(c->listeners[1].address, "[::1]:587");
	assert_string_equal(c->listeners[1].profile, "submission");
	conf_unref(c);
}

static void test_explicit_empty_lists(void **state)
{
	char err[256];
	struct tern_config *c =
	    load_str("local_domains = []\nrelay { networks = [] }\naliases {}\n", err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->n_local_domains, 0);
	assert_int_equal(c->n_relay_networks, 0);
	assert_int_equal(c->n_aliases, 0);
	assert_false(conf_is_local_domain(c, "localhost", 9));
	struct sockaddr_in sin = {.sin_family = AF_INET};
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	assert_false(conf_in_relay_networks(c, &sin));
	conf_unref(c);
	/* relay {} without networks keeps the default; a single string is a list of one */
	c = load_str("relay { }\nlocal_domains = solo.test", err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->n_relay_networks, 2);
	assert_int_equal(c->n_local_domains, 1);
	assert_string_equal(c->local_domains[0], "solo.test");
	conf_unref(c);
}

static const struct err_case conf_err_cases[] = {
    {"foo = 1", "t.conf:1: unknown key 'foo'"},
    {"\nlimits {\n  max_errors = 3\n  foo = 1\n}", "t.conf:4: unknown key 'foo' in section limits"},
    {"relay { nets = [] }", "t.conf:1: unknown key 'nets' in section relay"},
    {"listen { mx { address = \"127.0.0.1:25\"; profile = mx; tlsmode = yes } }",
     "t.conf:1: unknown key 'tlsmode' in section listen.mx"},
    {"listen { mx { address = \"127.0.0.1:25\"; profile = mx; tls = yes } }",
     "t.conf:1: listen.mx.tls: expected \"starttls\", \"implicit\" or \"none\", got the "
     "boolean true"},
    {"listen { mx { address = \"127.0.0.1:25\"; profile = mx; tls = smtps } }",
     "t.conf:1: listen.mx.tls: must be \"starttls\", \"implicit\" or \"none\", not 'smtps'"},
    {"listen {\n mx { address = \"127.0.0.1:25\"; profile = mx\n  tls = implicit } }",
     "t.conf:3: listen.mx.tls: \"implicit\" needs a certificate: set tls { cert_file; "
     "key_file; }, tls.certificates or tls.self_signed"},
    {"listen { mx { address = \"127.0.0.1:25\"; profile = mx; tls = starttls } }\n"
     "tls { certificates = [] }",
     "t.conf:1: listen.mx.tls: \"starttls\" needs a certificate: set tls { cert_file; "
     "key_file; }, tls.certificates or tls.self_signed"},
    {"tls {\n cert_file = /c\n}", "t.conf:1: tls: cert_file and key_file go together (set "
                                  "both or neither)"},
    {"tls { cert_file = /c; key_file = /k;\n self_signed = true }",
     "t.conf:2: tls.self_signed: cannot be combined with cert_file or certificates (it makes "
     "the only certificate)"},
    {"tls { self_signed = yes; certificates = [ { cert_file = /c; key_file = /k } ] }",
     "t.conf:1: tls.self_signed: cannot be combined with cert_file or certificates (it makes "
     "the only certificate)"},
    {"tls { self_signed = \"yes\" }",
     "t.conf:1: tls.self_signed: expected true or false, got the string \"yes\""},
    {"tls { certificates = { cert_file = /c; key_file = /k } }",
     "t.conf:1: tls.certificates: expected a list of { cert_file = ...; key_file = ...; }, got "
     "a section"},
    {"tls { certificates = [ { cert_file = /c; key_file = /k },\n { cert_file = /d } ] }",
     "t.conf:2: tls.certificates[1]: needs both cert_file and key_file"},
    {"tls { certificates = [ { cert_file = /c; key_file = /k; chain = /x } ] }",
     "t.conf:1: unknown key 'chain' in section tls.certificates[0]"},
    {"tls { certificates = [ \"/c\" ] }",
     "t.conf:1: tls.certificates[0]: expected a section { ... }, got the string \"/c\""},
    {"tls { certificates = [ { cert_file = \"\"; key_file = /k } ] }",
     "t.conf:1: tls.certificates[0].cert_file: must not be empty"},
    {"hostname = 5", "t.conf:1: hostname: expected a string, got the number 5"},
    {"hostname = \"a b\"", "t.conf:1: hostname: 'a b' is not a valid host name"},
    {"hostname = \"\"", "t.conf:1: hostname: must not be empty"},
    {"data_dir = \"/srv/a\\nb\"", "t.conf:1: data_dir: control character in path"},
    {"users_file = \"\"", "t.conf:1: users_file: must not be empty"},
    {"data_dir = [x]", "t.conf:1: data_dir: expected a string, got a list"},
    {"users_file = {}", "t.conf:1: users_file: expected a string, got a section"},
    {"user = \"a:b\"", "t.conf:1: user: 'a:b' is not a valid user name"},
    {"log_level = verbose",
     "t.conf:1: log_level: must be debug, info, warn or error, not 'verbose'"},
    {"workers = -1", "t.conf:1: workers: must not be negative"},
    {"workers = 2000", "t.conf:1: workers: 2000 is above the maximum 1024"},
    {"workers = 1.5", "t.conf:1: workers: expected a whole number, got the number 1.5"},
    {"workers = 4k", "t.conf:1: workers: expected a whole number, got a size"},
    {"vrfy = 1", "t.conf:1: vrfy: expected true or false, got the number 1"},
    {"expn = \"yes\"", "t.conf:1: expn: expected true or false, got the string \"yes\""},
    {"local_domains = 5", "t.conf:1: local_domains: expected a list of strings, got the number 5"},
    {"local_domains = [a.test,\n 7]",
     "t.conf:2: local_domains: expected a list of strings, got the number 7"},
    {"local_domains = [\"bad domain\"]",
     "t.conf:1: local_domains: 'bad domain' is not a valid domain name"},
    {"local_domains = [\"a..b\"]", "t.conf:1: local_domains: 'a..b' is not a valid domain name"},
    {"aliases = [1]", "t.conf:1: aliases: expected a section { ... }, got a list"},
    {"aliases { postmaster = \"a@b.test\" }",
     "t.conf:1: aliases: 'postmaster' is not an address (expected local@domain)"},
    {"aliases {\n \"p@x.test\" = [\"alice\"] }",
     "t.conf:2: aliases.\"p@x.test\": 'alice' is not an address (expected local@domain)"},
    {"aliases { \"p@x.test\" = [] }", "t.conf:1: aliases.\"p@x.test\": needs at least one address"},
    {"aliases { \"p@x.test\" = 3 }",
     "t.conf:1: aliases.\"p@x.test\": expected a list of strings, got the number 3"},
    {"relay = yes", "t.conf:1: relay: expected a section { ... }, got the boolean true"},
    {"relay { networks = [\"10.0.0.0/33\"] }",
     "t.conf:1: relay.networks: '10.0.0.0/33' is not a network (expected ADDRESS/PREFIX)"},
    {"relay { networks = [\"example.com/8\"] }",
     "t.conf:1: relay.networks: 'example.com/8' is not a network (expected ADDRESS/PREFIX)"},
    {"relay { networks = [\"10.1.2.3/8\"] }",
     "t.conf:1: relay.networks: '10.1.2.3/8' has bits set after the prefix (did you mean "
     "10.0.0.0/8?)"},
    {"relay { networks = [\"2001:db8::1/32\"] }",
     "t.conf:1: relay.networks: '2001:db8::1/32' has bits set after the prefix (did you mean "
     "2001:db8::/32?)"},
    {"limits = 1", "t.conf:1: limits: expected a section { ... }, got the number 1"},
    {"limits { max_message_size = 1h }",
     "t.conf:1: limits.max_message_size: expected a size (bytes, or a number with k, m or g), "
     "got a time"},
    {"limits { max_message_size = 5g }",
     "t.conf:1: limits.max_message_size: 5368709120 is above the maximum 4294967296"},
    {"limits { max_message_size = 0 }",
     "t.conf:1: limits.max_message_size: 0 is below the minimum 1"},
    {"limits { max_message_size = \"32m\" }",
     "t.conf:1: limits.max_message_size: expected a size (bytes, or a number with k, m or g), "
     "got the string \"32m\""},
    {"limits { max_line_length = 100 }",
     "t.conf:1: limits.max_line_length: 100 is below the minimum 512"},
    {"limits { max_recipients = 0 }", "t.conf:1: limits.max_recipients: 0 is below the minimum 1"},
    {"limits { idle_timeout = 10m }",
     "t.conf:1: limits.idle_timeout: expected a time (seconds, or a number with s, min, h, d "
     "or w), got a size"},
    {"limits { idle_timeout = 1500ms }",
     "t.conf:1: limits.idle_timeout: must be a whole number of seconds"},
    {"limits { data_timeout = 2d }",
     "t.conf:1: limits.data_timeout: 172800 is above the maximum 86400"},
    {"limits { max_errors = yes }",
     "t.conf:1: limits.max_errors: expected a whole number, got the boolean true"},
    {"listen = \"127.0.0.1:25\"",
     "t.conf:1: listen: expected a section { ... }, got the string \"127.0.0.1:25\""},
    {"listen { }", "t.conf:1: listen: at least one listener is needed"},
    {"listen { mx = 1 }", "t.conf:1: listen.mx: expected a section { ... }, got the number 1"},
    {"listen { \"a b\" { } }",
     "t.conf:1: listen: 'a b' is not a valid listener name (letters, digits, '-', '_')"},
    {"listen {\n mx {\n profile = mx\n }\n}", "t.conf:2: listen.mx: missing key 'address'"},
    {"listen { mx { address = \"127.0.0.1:25\" } }", "t.conf:1: listen.mx: missing key 'profile'"},
    {"listen { mx { address = \"localhost:25\"; profile = mx } }",
     "t.conf:1: listen.mx.address: 'localhost:25' is not IP:PORT or [IPv6]:PORT with a port "
     "from 1 to 65535"},
    {"listen { mx { address = \"127.0.0.1:0\"; profile = mx } }",
     "t.conf:1: listen.mx.address: '127.0.0.1:0' is not IP:PORT or [IPv6]:PORT with a port "
     "from 1 to 65535"},
    {"listen { mx { address = 25; profile = mx } }",
     "t.conf:1: listen.mx.address: expected \"IP:PORT\" or \"[IPv6]:PORT\", got the number 25"},
    {"listen { mx { address = \"127.0.0.1:25\"; profile = relay } }",
     "t.conf:1: listen.mx.profile: must be \"mx\", \"submission\", \"pop3\" or \"http\", not "
     "'relay'"},
    {"listen { api { address = \"127.0.0.1:80\"; profile = http; tls = starttls } }",
     "t.conf:1: listen.api: an http listener takes only address, profile and tls = "
     "\"implicit\" (HTTPS) or \"none\" (milters are for SMTP; HTTP has no STARTTLS)"},
    {"listen { api { address = \"127.0.0.1:80\"; profile = http; tls = implicit } }",
     "t.conf:1: listen.api.tls: \"implicit\" needs a certificate: set tls { cert_file; "
     "key_file; }, tls.certificates or tls.self_signed"},
    {"listen { mx { address = \"127.0.0.1:25\"; profile = true } }",
     "t.conf:1: listen.mx.profile: expected \"mx\", \"submission\", \"pop3\" or \"http\", got the "
     "boolean true"},
    {"recipient_delimiter = 1",
     "t.conf:1: recipient_delimiter: expected a string of delimiter characters, got the number "
     "1"},
    {"recipient_delimiter = \"@\"",
     "t.conf:1: recipient_delimiter: '@' must be up to 8 of the characters !#$%&'*+-=?^_`{|}~ "
     "(or \"\" for none)"},
    {"recipient_delimiter = \".\"",
     "t.conf:1: recipient_delimiter: '.' must be up to 8 of the characters !#$%&'*+-=?^_`{|}~ "
     "(or \"\" for none)"},
    /* tls = "implicit" only with a certificate; "none" is not for pop3 */
    {"listen { p { address = \"127.0.0.1:995\"; profile = pop3; tls = yes } }",
     "t.conf:1: listen.p.tls: expected \"starttls\", \"implicit\" or \"none\", got the "
     "boolean true"},
    {"listen { p { address = \"127.0.0.1:995\"; profile = pop3; tls = always } }",
     "t.conf:1: listen.p.tls: must be \"starttls\", \"implicit\" or \"none\", not 'always'"},
    {"listen {\n p {\n address = \"127.0.0.1:995\"; profile = pop3;\n tls = implicit; }\n}",
     "t.conf:4: listen.p.tls: \"implicit\" needs a certificate: set tls { cert_file; "
     "key_file; }, tls.certificates or tls.self_signed"},
    {"listen { p { address = \"127.0.0.1:110\"; profile = pop3; tls = none } }\n"
     "tls { cert_file = /c; key_file = /k }",
     "t.conf:1: listen.p.tls: \"none\" is not implemented for pop3 listeners (they offer "
     "STLS whenever tls has a certificate)"},
    {"listen {\n a { address = \"127.0.0.1:25\"; profile = mx }\n b { address = 127.0.0.1:25; "
     "profile = mx }\n}",
     "t.conf:3: listen.b.address: 127.0.0.1:25 is already used by listener 'a'"},
    /* routes and relayhost */
    {"routes = 1", "t.conf:1: routes: expected a section { ... }, got the number 1"},
    {"routes {\n \"a b.test\" { via = \"smtp://h.test\" } }",
     "t.conf:2: routes: 'a b.test' is not a valid domain name"},
    {"routes { \".example.test\" { via = \"smtp://h.test\" } }",
     "t.conf:1: routes: '.example.test' is not a valid domain name (a route is for one exact "
     "domain; give each subdomain its own)"},
    {"routes { \"*.example.test\" { via = \"smtp://h.test\" } }",
     "t.conf:1: routes: '*.example.test' is not a valid domain name (a route is for one exact "
     "domain; give each subdomain its own)"},
    {"routes {\n a.test { via = \"smtp://h.test\" }\n A.TEST { via = \"smtp://g.test\" }\n}",
     "t.conf:3: routes: 'A.TEST' is routed twice (domains are compared case-insensitively)"},
    {"routes { a.test = \"smtp://h.test\" }",
     "t.conf:1: routes.\"a.test\": expected a section { ... }, got the string "
     "\"smtp://h.test\""},
    {"routes {\n a.test {\n  tls = require\n }\n}",
     "t.conf:2: routes.\"a.test\": missing key 'via'"},
    {"routes { a.test { via = \"smtp://h.test\"; port = 2 } }",
     "t.conf:1: unknown key 'port' in section routes.\"a.test\""},
    {"relayhost { }", "t.conf:1: relayhost: missing key 'via'"},
    {"relayhost = \"smtp://h.test\"",
     "t.conf:1: relayhost: expected a section { ... }, got the string \"smtp://h.test\""},
    {"relayhost { via = \"smtp://h.test\"; password = x }",
     "t.conf:1: unknown key 'password' in section relayhost"},
    {"relayhost { via = 25 }",
     "t.conf:1: relayhost.via: expected \"smtp://HOST:PORT\" or \"smtps://HOST:PORT\", got "
     "the number 25"},
    {"relayhost {\n via = \"smtp://h.test\"\n auth_user = u\n}",
     "t.conf:1: relayhost: missing key 'auth_password_file' (auth_user needs it)"},
    {"relayhost {\n via = \"smtp://h.test\"\n auth_password_file = /etc/pw\n}",
     "t.conf:1: relayhost: missing key 'auth_user' (auth_password_file needs it)"},
    {"relayhost { via = \"smtp://h.test\"; auth_user = \"\"; auth_password_file = /p }",
     "t.conf:1: relayhost.auth_user: must not be empty"},
    {"relayhost { via = \"smtp://h.test\"; auth_user = \"a\\tb\"; auth_password_file = /p }",
     "t.conf:1: relayhost.auth_user: control character in user name"},
    {"relayhost { via = \"smtp://h.test\"; auth_user = u; auth_password_file = \"\" }",
     "t.conf:1: relayhost.auth_password_file: must not be empty"},
    {"relayhost { via = \"smtp://h.test\"; auth_user = u; auth_password_file = 5 }",
     "t.conf:1: relayhost.auth_password_file: expected a string, got the number 5"},
    {"relayhost {\n via = \"smtp://h.test\"\n tls = always\n}",
     "t.conf:3: relayhost.tls: must be \"none\", \"opportunistic\", \"require\", \"verify\" or "
     "\"dane\", not 'always'"},
    /* credentials never in clear, nor to whoever answers, except to this machine */
    {"relayhost { via = \"smtp://h.test\"; auth_user = u; auth_password_file = /p;\n"
     " tls = none }",
     "t.conf:2: relayhost.tls: \"none\" with auth_user would send the password without TLS; "
     "use \"verify\" (the default with auth_user) or \"require\" (encrypted, certificate not "
     "checked)"},
    {"routes { a.test { via = \"smtp://[2001:db8::1]\"; auth_user = u; auth_password_file = /p;"
     " tls = opportunistic } }",
     "t.conf:1: routes.\"a.test\".tls: \"opportunistic\" with auth_user would send the password "
     "without TLS; use \"verify\" (the default with auth_user) or \"require\" (encrypted, "
     "certificate not checked)"},
    {"delivery { ca_file = 5 }", "t.conf:1: delivery.ca_file: expected a string, got the number 5"},
    {"delivery { dane = 3 }", "t.conf:1: delivery.dane: expected true or false, got the number 3"},
    {"delivery { chunking = 1 }",
     "t.conf:1: delivery.chunking: expected true or false, got the number 1"},
    {"relayhost { via = \"smtp://h.test\"; tls = true }",
     "t.conf:1: relayhost.tls: expected \"none\", \"opportunistic\", \"require\", \"verify\" or "
     "\"dane\", got the boolean true"},
    {"routes {\n a.test {\n  via = \"smtps://h.test\"\n  tls = none\n }\n}",
     "t.conf:4: routes.\"a.test\".tls: \"none\" contradicts smtps:// in via, which is TLS from "
     "the first byte; use smtp:// for a connection without TLS"},
    /* delivery */
    {"delivery = 1", "t.conf:1: delivery: expected a section { ... }, got the number 1"},
    {"delivery {\n retries = 3\n}", "t.conf:2: unknown key 'retries' in section delivery"},
    {"delivery { remote_port = 0 }", "t.conf:1: delivery.remote_port: 0 is below the minimum 1"},
    {"delivery { remote_port = 65536 }",
     "t.conf:1: delivery.remote_port: 65536 is above the maximum 65535"},
    {"delivery { remote_port = 25s }",
     "t.conf:1: delivery.remote_port: expected a whole number, got a time"},
    {"delivery { retry_base = 5m }",
     "t.conf:1: delivery.retry_base: expected a time (seconds, or a number with s, min, h, d or "
     "w), got a size"},
    {"delivery { retry_base = \"5min\" }",
     "t.conf:1: delivery.retry_base: expected a time (seconds, or a number with s, min, h, d or "
     "w), got the string \"5min\""},
    {"delivery { retry_base = 0 }", "t.conf:1: delivery.retry_base: 0 is below the minimum 1"},
    {"delivery { connect_timeout = 1500ms }",
     "t.conf:1: delivery.connect_timeout: must be a whole number of seconds"},
    {"delivery { max_lifetime = 31d }",
     "t.conf:1: delivery.max_lifetime: 2678400 is above the maximum 2592000"},
    {"delivery { max_per_destination = 0 }",
     "t.conf:1: delivery.max_per_destination: 0 is below the minimum 1"},
    {"delivery { delay_warning = -1 }", "t.conf:1: delivery.delay_warning: must not be negative"},
    {"delivery {\n retry_max = 10min\n retry_base = 1h\n}",
     "t.conf:3: delivery.retry_base: 3600s is longer than delivery.retry_max (600s)"},
    {"delivery {\n retry_max = 1min\n}",
     "t.conf:2: delivery.retry_max: 60s is shorter than delivery.retry_base (300s)"},
    /* dns */
    {"dns = []", "t.conf:1: dns: expected a section { ... }, got a list"},
    {"dns { servers = [] }", "t.conf:1: unknown key 'servers' in section dns"},
    {"dns { forward = 5 }", "t.conf:1: dns.forward: expected a list of strings, got the number 5"},
    {"dns { trust_anchor_file = \"\" }", "t.conf:1: dns.trust_anchor_file: must not be empty"},
    /* the parser's own errors come through conf_load_string unchanged */
    {"limits {\n max_errors = 3\n", "t.conf:1: missing '}' for the section opened here"},
    /* an unknown key with control bytes is shown safely */
    {"\"a\\nb\" = 1", "t.conf:1: unknown key 'a?b'"},
    /* auth and senders */
    {"auth { allow_plaintext = 1 }",
     "t.conf:1: auth.allow_plaintext: expected true or false, got the number 1"},
    {"auth { mechanisms = [PLAIN, DIGEST-MD5] }",
     "t.conf:1: auth.mechanisms: 'DIGEST-MD5' is not a mechanism tern knows (PLAIN, LOGIN, "
     "CRAM-MD5, SCRAM-SHA-256, XOAUTH2, OAUTHBEARER)"},
    {"auth { mechanisms = [] }", "t.conf:1: auth.mechanisms: name at least one mechanism"},
    {"auth { mechanisms = [PLAIN, XOAUTH2] }",
     "t.conf:1: auth.mechanisms: XOAUTH2 and OAUTHBEARER need an auth.oauth section (issuer, "
     "audience, jwks_file)"},
    {"auth { oauth { issuer = i; audience = a } }",
     "t.conf:1: auth.oauth: issuer, audience and jwks_file are all needed (tokens are checked "
     "against all three)"},
    {"auth { oauth { issuer = i; audience = a; jwks_file = j; scope = x } }",
     "t.conf:1: unknown key 'scope' in section auth.oauth"},
    {"auth { throttle { delay = 2min } }",
     "t.conf:1: auth.throttle.delay: above the maximum of 60s"},
    {"auth { throttle { delay = 0.0005s } }",
     "t.conf:1: auth.throttle.delay: must be a whole number of milliseconds"},
    {"auth { throttle { delay = 5s; max_delay = 1s } }",
     "t.conf:1: auth.throttle: max_delay must not be shorter than delay"},
    {"auth { throttle { delay = 1k } }",
     "t.conf:1: auth.throttle.delay: expected a time (ms, s or min), got the number 1024"},
    {"auth { throttle { block_time = 0 } }",
     "t.conf:1: auth.throttle.block_time: 0 is below the minimum 1"},
    {"auth { sasl = yes }", "t.conf:1: unknown key 'sasl' in section auth"},
    {"senders { alice = [\"a@b.test\"] }",
     "t.conf:1: senders: 'alice' is not an address (expected local@domain)"},
    {"senders { \"alice@b.test\" = [\"example.net\"] }",
     "t.conf:1: senders.\"alice@b.test\": 'example.net' is neither an address nor \"@domain\""},
    {"senders { \"alice@b.test\" = [] }",
     "t.conf:1: senders.\"alice@b.test\": needs at least one address"},
};

static void test_conf_errors(void **state)
{
	for (size_t i = 0; i < N(conf_err_cases); i++) {
		const struct err_case *tc = &conf_err_cases[i];
		char err[256];
		struct tern_config *c = load_str(tc->text, err, sizeof(err));
		if (c) {
			conf_unref(c);
			fail_msg("case %zu '%s' loaded", i, tc->text);
		}
		if (strcmp(err, tc->err) != 0)
			fail_msg("case %zu '%s':\n got  %s\n want %s", i, tc->text, err, tc->err);
	}
}

/* ---- CIDR and addresses -------------------------------------------------- */

static void make_sa(const char *ip, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
	} else {
		assert_int_equal(inet_pton(AF_INET6, ip, &s6->sin6_addr), 1);
		s6->sin6_family = AF_INET6;
	}
}

static void test_cidr_match(void **state)
{
	static const struct {
		const char *net, *ip;
		bool match;
	} cases[] = {
	    {"127.0.0.0/8", "127.0.0.1", true},
	    {"127.0.0.0/8", "127.255.255.255", true},
	    {"127.0.0.0/8", "128.0.0.1", false},
	    {"10.1.0.0/16", "10.1.200.3", true},
	    {"10.1.0.0/16", "10.2.0.3", false},
	    {"192.168.1.128/25", "192.168.1.200", true},
	    {"192.168.1.128/25", "192.168.1.127", false},
	    {"192.0.2.7", "192.0.2.7", true},
	    {"192.0.2.7/32", "192.0.2.8", false},
	    {"0.0.0.0/0", "203.0.113.9", true},
	    {"0.0.0.0/0", "::1", false},
	    {"::1/128", "::1", true},
	    {"::1/128", "::2", false},
	    {"::1/128", "127.0.0.1", false},
	    {"2001:db8::/32", "2001:db8:ffff::1", true},
	    {"2001:db8::/32", "2001:db9::1", false},
	    {"2001:db8:0:80::/57", "2001:db8:0:ff::1", true},
	    {"2001:db8:0:80::/57", "2001:db8:0:7f::1", false},
	    {"::/0", "2001:db8::1", true},
	    {"::/0", "10.0.0.1", false},
	    /* a v4-mapped client address is an IPv4 client */
	    {"127.0.0.0/8", "::ffff:127.0.0.1", true},
	    {"10.0.0.0/8", "::ffff:11.0.0.1", false},
	    {"0.0.0.0/0", "::ffff:1.2.3.4", true},
	    {"::/0", "::ffff:1.2.3.4", false},
	    /* a network written v4-mapped is an IPv4 network */
	    {"::ffff:10.0.0.0/104", "10.9.9.9", true},
	    {"::ffff:10.0.0.0/104", "::ffff:10.9.9.9", true},
	    {"::ffff:10.0.0.0/104", "11.9.9.9", false},
	};
	for (size_t i = 0; i < N(cases); i++) {
		struct conf_cidr net;
		struct sockaddr_storage ss;
		if (!conf_cidr_parse(cases[i].net, &net))
			fail_msg("case %zu: %s did not parse", i, cases[i].net);
		make_sa(cases[i].ip, &ss);
		if (conf_cidr_match(&net, &ss) != cases[i].match)
			fail_msg("case %zu: %s in %s should be %d", i, cases[i].ip, cases[i].net,
			         cases[i].match);
	}
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	ss.ss_family = AF_UNIX;
	struct conf_cidr all;
	assert_true(conf_cidr_parse("0.0.0.0/0", &all));
	assert_false(conf_cidr_match(&all, &ss));
	assert_false(conf_cidr_match(NULL, &ss));
}

static void test_cidr_parse(void **state)
{
	static const struct {
		const char *s;
		bool ok;
		int family;
		unsigned prefix;
	} cases[] = {
	    {"10.0.0.0/8", true, AF_INET, 8},
	    {"10.0.0.1", true, AF_INET, 32},
	    {"0.0.0.0/0", true, AF_INET, 0},
	    {"::1/128", true, AF_INET6, 128},
	    {"::", true, AF_INET6, 128},
	    {"fe80::/10", true, AF_INET6, 10},
	    {"10.0.0.0/33", false, 0, 0},
	    {"::/129", false, 0, 0},
	    {"10.0.0.0/", false, 0, 0},
	    {"10.0.0.0/-1", false, 0, 0},
	    {"10.0.0.0/+8", false, 0, 0},
	    {"10.0.0.0/0008", false, 0, 0},
	    {"10.0.0.0/8x", false, 0, 0},
	    {"10.0.0.1/8", false, 0, 0}, /* host bits set */
	    {"10.0.0/8", false, 0, 0},
	    {"010.0.0.0/8", false, 0, 0},
	    {"/8", false, 0, 0},
	    {"", false, 0, 0},
	    {"localhost", false, 0, 0},
	    {"fe80::1%eth0/64", false, 0, 0},
	    {"1:2:3:4:5:6:7:8:9/64", false, 0, 0},
	};
	for (size_t i = 0; i < N(cases); i++) {
		struct conf_cidr c;
		bool ok = conf_cidr_parse(cases[i].s, &c);
		if (ok != cases[i].ok)
			fail_msg("case %zu: '%s' parse %d, want %d", i, cases[i].s, ok,
			         cases[i].ok);
		if (ok) {
			assert_int_equal(c.family, cases[i].family);
			assert_int_equal(c.prefix, cases[i].prefix);
		}
	}
	assert_false(conf_cidr_parse(NULL, NULL));
}

static void test_parse_address(void **state)
{
	static const struct {
		const char *s;
		bool ok;
		int family;
		unsigned port;
	} cases[] = {
	    {"127.0.0.1:2525", true, AF_INET, 2525},
	    {"0.0.0.0:25", true, AF_INET, 25},
	    {"[::1]:2525", true, AF_INET6, 2525},
	    {"[::]:587", true, AF_INET6, 587},
	    {"[::ffff:127.0.0.1]:1", true, AF_INET6, 1},
	    {"127.0.0.1:65535", true, AF_INET, 65535},
	    {"127.0.0.1", false, 0, 0},
	    {"127.0.0.1:", false, 0, 0},
	    {"127.0.0.1:0", false, 0, 0},
	    {"127.0.0.1:65536", false, 0, 0},
	    {"127.0.0.1:99999", false, 0, 0},
	    {"127.0.0.1:-1", false, 0, 0},
	    {"127.0.0.1:+25", false, 0, 0},
	    {"127.0.0.1:25x", false, 0, 0},
	    {"127.0.0.1:000025", false, 0, 0},
	    {"localhost:25", false, 0, 0},
	    {"mx.example.test:25", false, 0, 0},
	    {"::1:25", false, 0, 0},
	    {"[::1]", false, 0, 0},
	    {"[::1]25", false, 0, 0},
	    {"[127.0.0.1]:25", false, 0, 0},
	    {"[::1:25", false, 0, 0},
	    {":25", false, 0, 0},
	    {"[]:25", false, 0, 0},
	    {"", false, 0, 0},
	};
	for (size_t i = 0; i < N(cases); i++) {
		struct sockaddr_storage ss;
		unsigned len = 0;
		bool ok = conf_parse_address(cases[i].s, &ss, &len);
		if (ok != cases[i].ok)
			fail_msg("case %zu: '%s' parse %d, want %d", i, cases[i].s, ok,
			         cases[i].ok);
		if (!ok)
			continue;
		assert_int_equal(ss.ss_family, cases[i].family);
		if (cases[i].family == AF_INET) {
			assert_int_equal(len, sizeof(struct sockaddr_in));
			assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port),
			                 cases[i].port);
		} else {
			assert_int_equal(len, sizeof(struct sockaddr_in6));
			assert_int_equal(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port),
			                 cases[i].port);
		}
	}
	assert_false(conf_parse_address(NULL, NULL, NULL));
	assert_true(conf_parse_address("127.0.0.1:25", NULL, NULL));
}

static void test_relay_networks(void **state)
{
	char err[256];
	struct tern_config *c = conf_load(NULL, err, sizeof(err));
	static const struct {
		const char *ip;
		bool trusted;
	} cases[] = {
	    {"127.0.0.1", true},        {"127.9.8.7", true},  {"::1", true},
	    {"::ffff:127.0.0.1", true}, {"192.0.2.1", false}, {"::2", false},
	    {"2001:db8::1", false},
	};
	for (size_t i = 0; i < N(cases); i++) {
		struct sockaddr_storage ss;
		make_sa(cases[i].ip, &ss);
		if (conf_in_relay_networks(c, &ss) != cases[i].trusted)
			fail_msg("%s trusted should be %d", cases[i].ip, cases[i].trusted);
	}
	conf_unref(c);
}

/* ---- domains and aliases ------------------------------------------------- */

static void test_local_domains(void **state)
{
	char err[256];
	struct tern_config *c =
	    load_str("local_domains = [example.test, Mail.Example.Test]", err, sizeof(err));
	assert_non_null(c);
	static const struct {
		const char *d;
		size_t len;
		bool local;
	} cases[] = {
	    {"example.test", 12, true},
	    {"EXAMPLE.TEST", 12, true},
	    {"mail.example.test", 17, true},
	    {"example.testXYZ", 12, true}, /* not NUL-terminated: only len counts */
	    {"example.tes", 11, false},
	    {"sub.example.test", 16, false},
	    {"localhost", 9, false},
	    {"", 0, false},
	    {"example.test\0", 13, false},
	};
	for (size_t i = 0; i < N(cases); i++)
		if (conf_is_local_domain(c, cases[i].d, cases[i].len) != cases[i].local)
			fail_msg("case %zu: %.*s", i, (int)cases[i].len, cases[i].d);
	conf_unref(c);
}

static void test_alias_lookup(void **state)
{
	static const char text[] = "aliases {\n"
	                           "  \"Postmaster@Example.TEST\" = [\"Alice@Example.test\", "
	                           "\"bob@example.test\", \"alice@example.test\"];\n"
	                           "  \"abuse@example.test\" = \"carol@example.test\";\n"
	                           "  \"zed@example.test\" = \"old@example.test\";\n"
	                           "  \"ZED@example.test\" = \"new@example.test\";\n"
	                           "}\n";
	char err[256];
	struct tern_config *c = load_str(text, err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->n_aliases, 3);
	const struct conf_alias *a = conf_find_alias(c, "postmaster@example.test");
	assert_non_null(a);
	assert_string_equal(a->from, "postmaster@example.test");
	assert_int_equal(a->n_to, 2); /* lowercased, and the repeat dropped */
	assert_string_equal(a->to[0], "alice@example.test");
	assert_string_equal(a->to[1], "bob@example.test");
	a = conf_find_alias(c, "abuse@example.test");
	assert_non_null(a);
	assert_int_equal(a->n_to, 1);
	assert_string_equal(a->to[0], "carol@example.test");
	/* equal after lowercasing: the later one wins */
	a = conf_find_alias(c, "zed@example.test");
	assert_non_null(a);
	assert_string_equal(a->to[0], "new@example.test");
	assert_null(conf_find_alias(c, "Postmaster@example.test")); /* callers lowercase */
	assert_null(conf_find_alias(c, "nobody@example.test"));
	assert_null(conf_find_alias(c, NULL));
	conf_unref(c);

	/* many aliases: the sorted lookup finds each */
	char big[200000];
	size_t o = (size_t)snprintf(big, sizeof(big), "aliases {\n");
	for (int i = 0; i < 3000; i++)
		o += (size_t)snprintf(big + o, sizeof(big) - o, "\"u%d@x.test\" = \"t%d@y.test\"\n",
		                      (i * 7919) % 3000, i);
	o += (size_t)snprintf(big + o, sizeof(big) - o, "}\n");
	c = conf_load_string(big, o, "big", err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->n_aliases, 3000);
	for (int i = 0; i < 3000; i++) {
		char k[32], t[32];
		snprintf(k, sizeof(k), "u%d@x.test", (i * 7919) % 3000);
		snprintf(t, sizeof(t), "t%d@y.test", i);
		a = conf_find_alias(c, k);
		assert_non_null(a);
		assert_string_equal(a->to[0], t);
	}
	conf_unref(c);
}

/* ---- includes (files in a temporary directory) --------------------------- */

struct tmpdir {
	char path[64];
	char files[8][128];
	int n;
};

static const char *write_file(struct tmpdir *t, const char *rel, const char *content)
{
	assert_true(t->n < 8);
	char *p = t->files[t->n++], dir[64];
	tern_strlcpy(dir, t->path, sizeof(dir));
	snprintf(p, 128, "%s/%s", dir, rel);
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fputs(content, f);
	fclose(f);
	return p;
}

static void tmpdir_make(struct tmpdir *t)
{
	memset(t, 0, sizeof(*t));
	tern_strlcpy(t->path, "/tmp/tern-test-conf-XXXXXX", sizeof(t->path));
	assert_non_null(mkdtemp(t->path));
	char sub[96];
	snprintf(sub, sizeof(sub), "%s/conf.d", t->path);
	assert_int_equal(mkdir(sub, 0700), 0);
}

static void tmpdir_remove(struct tmpdir *t)
{
	for (int i = 0; i < t->n; i++)
		unlink(t->files[i]);
	char sub[96];
	snprintf(sub, sizeof(sub), "%s/conf.d", t->path);
	rmdir(sub);
	rmdir(t->path);
}

static void test_include_files(void **state)
{
	struct tmpdir t;
	tmpdir_make(&t);
	write_file(&t, "conf.d/limits.conf",
	           "limits { max_errors = 7 }\n"
	           ".include \"more.conf\"  # relative to conf.d/\n");
	write_file(&t, "conf.d/more.conf", "limits { max_recipients = 9 }\nworkers = 3\n");
	const char *inner = write_file(&t, "conf.d/inner.conf", "max_received_headers = 42\n");
	char text[512];
	snprintf(text, sizeof(text),
	         "workers = 1\n"
	         ".include \"conf.d/limits.conf\";\n"
	         "limits { idle_timeout = 2min\n"
	         "  .include \"%s\" # absolute, and inside a section\n"
	         "}\n"
	         "local_domains = [a.test]\n",
	         inner);
	const char *main_conf = write_file(&t, "tern.conf", text);
	char err[512];
	struct tern_config *c = conf_load(main_conf, err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->limits.max_errors, 7);
	assert_int_equal(c->limits.max_recipients, 9);
	assert_int_equal(c->limits.idle_timeout, 120);
	assert_int_equal(c->limits.max_received_headers, 42);
	assert_int_equal(c->workers, 3); /* the include came after workers = 1 */
	assert_string_equal(c->source, main_conf);
	conf_unref(c);
	tmpdir_remove(&t);
}

static void test_include_errors(void **state)
{
	struct tmpdir t;
	tmpdir_make(&t);
	const char *bad = write_file(&t, "conf.d/bad.conf", "\n\nlimits { max_errors = lots }\n");
	const char *syn = write_file(&t, "conf.d/syn.conf", "a = \"open\n");
	const char *loop = write_file(&t, "loop.conf", "workers = 1\n.include \"loop.conf\"\n");
	const char *main1 = write_file(&t, "m1.conf", "\n.include \"conf.d/bad.conf\"\n");
	const char *main2 = write_file(&t, "m2.conf", ".include \"conf.d/syn.conf\"\n");
	const char *main3 = write_file(&t, "m3.conf", "\n\n.include \"nope.conf\"\n");
	const char *main4 = write_file(&t, "m4.conf", ".include 5\n");
	char err[512], want[512];

	/* an error inside an included file names that file and its line */
	assert_null(conf_load(main1, err, sizeof(err)));
	snprintf(want, sizeof(want),
	         "%s:3: limits.max_errors: expected a whole number, got the string \"lots\"", bad);
	assert_string_equal(err, want);
	assert_null(conf_load(main2, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s:1: unterminated string (a string must end on its line)",
	         syn);
	assert_string_equal(err, want);
	assert_null(conf_load(main3, err, sizeof(err)));
	snprintf(want, sizeof(want),
	         "%s:3: cannot read included file '%s/nope.conf': No such file or directory", main3,
	         t.path);
	assert_string_equal(err, want);
	assert_null(conf_load(loop, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s:2: includes nested too deeply (limit 8)", loop);
	assert_string_equal(err, want);
	assert_null(conf_load(main4, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s:1: .include needs a file name", main4);
	assert_string_equal(err, want);
	/* the main file itself */
	snprintf(want, sizeof(want), "%s/none.conf", t.path);
	assert_null(conf_load(want, err, sizeof(err)));
	assert_non_null(strstr(err, "none.conf: cannot read: No such file or directory"));
	assert_null(conf_load(t.path, err, sizeof(err)));
	assert_non_null(strstr(err, ": cannot read: not a regular file"));
	tmpdir_remove(&t);
}

/* A FIFO (or any file that is not regular) as the config or an include is
 * refused at once: open(2) of a FIFO without O_NONBLOCK waits for a writer
 * forever. alarm() turns a hang into a failure of this test. */
static void test_fifo_refused(void **state)
{
	struct tmpdir t;
	tmpdir_make(&t);
	char fifo[128], want[512], err[512];
	snprintf(fifo, sizeof(fifo), "%s/conf.d/fifo.conf", t.path);
	assert_int_equal(mkfifo(fifo, 0600), 0);
	const char *main_conf =
	    write_file(&t, "m.conf", "workers = 1\n.include \"conf.d/fifo.conf\"\n");
	alarm(20);
	assert_null(conf_load(fifo, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s: cannot read: not a regular file (a FIFO)", fifo);
	assert_string_equal(err, want);
	assert_null(conf_load(main_conf, err, sizeof(err)));
	snprintf(want, sizeof(want),
	         "%s:2: cannot read included file '%s': not a regular file (a FIFO)", main_conf,
	         fifo);
	assert_string_equal(err, want);
	assert_null(conf_load("/dev/null", err, sizeof(err)));
	assert_string_equal(err, "/dev/null: cannot read: not a regular file (a device)");
	alarm(0);
	unlink(fifo);
	tmpdir_remove(&t);
}

/* ---- routes, delivery, dns ---------------------------------------------- */

struct via_case {
	const char *via;
	const char *host; /* NULL: an error, and err is the message after "t.conf:3: " */
	unsigned port;
	bool implicit_tls;
	const char *err;
};

static const struct via_case via_cases[] = {
    {"smtp://relay.example.test", "relay.example.test", 25, false, NULL},
    {"smtp://relay.example.test:587", "relay.example.test", 587, false, NULL},
    {"SMTP://Relay.Example.TEST:2525", "relay.example.test", 2525, false, NULL},
    {"smtps://relay.example.test", "relay.example.test", 465, true, NULL},
    {"smtps://relay.example.test:10465", "relay.example.test", 10465, true, NULL},
    {"smtp://localhost:1", "localhost", 1, false, NULL},
    {"smtp://127.0.0.1:65535", "127.0.0.1", 65535, false, NULL},
    {"smtp://[::1]:2526", "::1", 2526, false, NULL},
    {"smtps://[2001:DB8:0::1]", "2001:db8::1", 465, true, NULL},
    {"smtp://[::ffff:127.0.0.1]:25", "::ffff:127.0.0.1", 25, false, NULL},
    {"smtp://host_1.test", "host_1.test", 25, false, NULL},
    {"lmtp://h.test", NULL, 0, false, "'lmtp://h.test' must start with smtp:// or smtps://"},
    {"h.test:25", NULL, 0, false, "'h.test:25' must start with smtp:// or smtps://"},
    {"smtp:/h.test", NULL, 0, false, "'smtp:/h.test' must start with smtp:// or smtps://"},
    {"smtp://user@h.test:587", NULL, 0, false,
     "'smtp://user@h.test:587' must not contain a user name; use auth_user and "
     "auth_password_file"},
    {"smtp://u:pw@h.test", NULL, 0, false,
     "'smtp://u:pw@h.test' must not contain a user name; use auth_user and auth_password_file"},
    {"smtp://h.test:25/", NULL, 0, false,
     "'smtp://h.test:25/' must not have a path, query or fragment after HOST:PORT"},
    {"smtp://h.test/x", NULL, 0, false,
     "'smtp://h.test/x' must not have a path, query or fragment after HOST:PORT"},
    {"smtp://h.test?tls=1", NULL, 0, false,
     "'smtp://h.test?tls=1' must not have a path, query or fragment after HOST:PORT"},
    {"smtp://h.test#a", NULL, 0, false,
     "'smtp://h.test#a' must not have a path, query or fragment after HOST:PORT"},
    {"smtp://h.test/a@b", NULL, 0, false,
     "'smtp://h.test/a@b' must not have a path, query or fragment after HOST:PORT"},
    {"smtp://", NULL, 0, false, "'smtp://' has no host"},
    {"smtp://:25", NULL, 0, false, "'smtp://:25' has no host"},
    {"smtp://[]:25", NULL, 0, false, "'smtp://[]:25' has no host"},
    {"smtp://h.test:", NULL, 0, false, "'smtp://h.test:' has a bad port (expected 1 to 65535)"},
    {"smtp://h.test:0", NULL, 0, false, "'smtp://h.test:0' has a bad port (expected 1 to 65535)"},
    {"smtp://h.test:65536", NULL, 0, false,
     "'smtp://h.test:65536' has a bad port (expected 1 to 65535)"},
    {"smtp://h.test:123456", NULL, 0, false,
     "'smtp://h.test:123456' has a bad port (expected 1 to 65535)"},
    {"smtp://h.test:-1", NULL, 0, false, "'smtp://h.test:-1' has a bad port (expected 1 to 65535)"},
    {"smtp://h.test:2x", NULL, 0, false, "'smtp://h.test:2x' has a bad port (expected 1 to 65535)"},
    {"smtp://[::1]:x", NULL, 0, false, "'smtp://[::1]:x' has a bad port (expected 1 to 65535)"},
    {"smtp://::1", NULL, 0, false,
     "'smtp://::1': an IPv6 address must be in brackets, as in smtp://[2001:db8::1]:25"},
    {"smtp://2001:db8::1:25", NULL, 0, false,
     "'smtp://2001:db8::1:25': an IPv6 address must be in brackets, as in "
     "smtp://[2001:db8::1]:25"},
    {"smtp://[::1", NULL, 0, false, "'smtp://[::1' has a '[' without a ']'"},
    {"smtp://[::1]25", NULL, 0, false, "'smtp://[::1]25' has text after the ']' that is not :PORT"},
    {"smtp://[127.0.0.1]:25", NULL, 0, false,
     "'smtp://[127.0.0.1]:25' has a bad IPv6 address in brackets"},
    {"smtp://[h.test]", NULL, 0, false, "'smtp://[h.test]' has a bad IPv6 address in brackets"},
    {"smtp://256.1.1.1", NULL, 0, false,
     "'smtp://256.1.1.1' has a bad host (expected a host name, an IPv4 address or an [IPv6] "
     "address)"},
    {"smtp://10.0.0", NULL, 0, false,
     "'smtp://10.0.0' has a bad host (expected a host name, an IPv4 address or an [IPv6] "
     "address)"},
    {"smtp://a..b", NULL, 0, false,
     "'smtp://a..b' has a bad host (expected a host name, an IPv4 address or an [IPv6] "
     "address)"},
    {"smtp://h.test.", NULL, 0, false,
     "'smtp://h.test.' has a bad host (expected a host name, an IPv4 address or an [IPv6] "
     "address)"},
    {"smtp://h test", NULL, 0, false,
     "'smtp://h test' has a bad host (expected a host name, an IPv4 address or an [IPv6] "
     "address)"},
};

static void test_route_via_forms(void **state)
{
	for (size_t i = 0; i < N(via_cases); i++) {
		const struct via_case *tc = &via_cases[i];
		/* the same check in a per-domain route and in the relayhost */
		for (int relay = 0; relay < 2; relay++) {
			char text[512], err[512], want[512];
			if (relay)
				snprintf(text, sizeof(text), "relayhost {\n\n via = \"%s\"\n}\n",
				         tc->via);
			else
				snprintf(text, sizeof(text),
				         "routes {\n example.test {\n  via = \"%s\"\n }\n}\n",
				         tc->via);
			struct tern_config *c = load_str(text, err, sizeof(err));
			if (!tc->host) {
				if (c)
					fail_msg("case %zu '%s' loaded", i, tc->via);
				snprintf(want, sizeof(want), "t.conf:3: %s.via: %s",
				         relay ? "relayhost" : "routes.\"example.test\"", tc->err);
				if (strcmp(err, want) != 0)
					fail_msg("case %zu:\n got  %s\n want %s", i, err, want);
				continue;
			}
			if (!c)
				fail_msg("case %zu '%s': %s", i, tc->via, err);
			const struct conf_route *r = relay ? c->relayhost : &c->routes[0];
			assert_non_null(r);
			assert_string_equal(r->host, tc->host);
			assert_int_equal(r->port, tc->port);
			assert_int_equal(r->implicit_tls, tc->implicit_tls);
			if (relay)
				assert_null(r->domain);
			else
				assert_string_equal(r->domain, "example.test");
			assert_null(r->auth_user);
			assert_null(r->auth_password_file);
			conf_unref(c);
		}
	}
}

static void test_route_tls_defaults(void **state)
{
	static const struct {
		const char *via, *tls; /* tls NULL: not given */
		enum conf_tls want;
	} cases[] = {
	    {"smtp://h.test", NULL, CONF_TLS_OPPORTUNISTIC},
	    {"smtps://h.test", NULL, CONF_TLS_REQUIRE},
	    {"smtp://h.test", "none", CONF_TLS_NONE},
	    {"smtp://h.test", "opportunistic", CONF_TLS_OPPORTUNISTIC},
	    {"smtp://h.test", "require", CONF_TLS_REQUIRE},
	    {"smtps://h.test", "opportunistic", CONF_TLS_OPPORTUNISTIC},
	    {"smtps://h.test", "require", CONF_TLS_REQUIRE},
	    {"smtp://h.test", "verify", CONF_TLS_VERIFY},
	    {"smtps://h.test", "verify", CONF_TLS_VERIFY},
	    {"smtp://h.test", "dane", CONF_TLS_DANE},
	};
	for (size_t i = 0; i < N(cases); i++) {
		char text[256], err[256];
		if (cases[i].tls)
			snprintf(text, sizeof(text), "relayhost { via = \"%s\"; tls = %s }",
			         cases[i].via, cases[i].tls);
		else
			snprintf(text, sizeof(text), "relayhost { via = \"%s\" }", cases[i].via);
		struct tern_config *c = load_str(text, err, sizeof(err));
		if (!c)
			fail_msg("case %zu: %s", i, err);
		if (c->relayhost->tls != cases[i].want)
			fail_msg("case %zu: tls %d, want %d", i, c->relayhost->tls, cases[i].want);
		conf_unref(c);
	}
}

/* With auth_user the default is verify; lower levels only to a loopback address. */
static void test_route_tls_with_auth(void **state)
{
	static const struct {
		const char *via, *tls; /* tls NULL: not given */
		enum conf_tls want;
	} cases[] = {
	    {"smtp://h.test", NULL, CONF_TLS_VERIFY},
	    {"smtps://h.test", NULL, CONF_TLS_VERIFY},
	    {"smtp://h.test", "require", CONF_TLS_REQUIRE},
	    {"smtp://h.test", "dane", CONF_TLS_DANE},
	    {"smtp://127.0.0.20:2525", "none", CONF_TLS_NONE},
	    {"smtp://[::1]", "opportunistic", CONF_TLS_OPPORTUNISTIC},
	};
	for (size_t i = 0; i < N(cases); i++) {
		char text[300], err[256];
		snprintf(
		    text, sizeof(text),
		    "relayhost { via = \"%s\"; auth_user = u; auth_password_file = /p; %s%s%s }",
		    cases[i].via, cases[i].tls ? "tls = " : "", cases[i].tls ? cases[i].tls : "",
		    cases[i].tls ? ";" : "");
		struct tern_config *c = load_str(text, err, sizeof(err));
		if (!c)
			fail_msg("case %zu: %s", i, err);
		if (c->relayhost->tls != cases[i].want)
			fail_msg("case %zu: tls %d, want %d", i, c->relayhost->tls, cases[i].want);
		conf_unref(c);
	}
	/* A name is never "loopback": DNS could point it anywhere. */
	char err[256];
	struct tern_config *c = load_str("relayhost { via = \"smtp://localhost\"; auth_user = u; "
	                                 "auth_password_file = /p; tls = none }",
	                                 err, sizeof(err));
	assert_null(c);
}

static void test_route_auth_and_relative_paths(void **state)
{
	char err[256];
	struct tern_config *c =
	    load_str("relayhost {\n"
	             "  via = \"smtp://smtp.relay.test:587\"; tls = require\n"
	             "  auth_user = \"apikey\"; auth_password_file = \"secrets/relay.pw\"\n"
	             "}\n",
	             err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_string_equal(c->relayhost->auth_user, "apikey");
	/* kept as written, like data_dir: relative to the directory tern starts in */
	assert_string_equal(c->relayhost->auth_password_file, "secrets/relay.pw");
	conf_unref(c);
}

/* The password file is only named in the config: not read at load, never printed. */
static void test_password_file_not_read_or_printed(void **state)
{
	struct tmpdir t;
	tmpdir_make(&t);
	const char *pw = write_file(&t, "relay.pw", "Sup3rSecretPassw0rd\n");
	char text[512], err[512];
	snprintf(text, sizeof(text),
	         "relayhost { via = \"smtp://h.test:587\"; auth_user = u; auth_password_file = "
	         "\"%s\" }\n"
	         "routes { a.test { via = \"smtp://g.test\"; auth_user = v;\n"
	         "  auth_password_file = \"%s/missing.pw\" } }\n",
	         pw, t.path);
	const char *conf = write_file(&t, "tern.conf", text);
	struct tern_config *c = conf_load(conf, err, sizeof(err));
	if (!c) /* a missing password file is the deliverer's error, not the loader's */
		fail_msg("%s", err);
	char *p = print_to_string(c);
	assert_null(strstr(p, "Sup3rSecret"));
	char want[256];
	snprintf(want, sizeof(want), "\tauth_password_file = \"%s\";\n", pw);
	assert_non_null(strstr(p, want));
	free(p);
	conf_unref(c);
	tmpdir_remove(&t);
}

static void test_find_route_precedence(void **state)
{
	static const char text[] = "routes {\n"
	                           "  Example.TEST { via = \"smtp://a.test:2525\" }\n"
	                           "  \"other.test\" { via = \"smtps://[::1]\" }\n"
	                           "}\n"
	                           "relayhost { via = \"smtp://relay.test:587\" }\n";
	char err[256];
	struct tern_config *c = load_str(text, err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->n_routes, 2);
	assert_string_equal(c->routes[0].domain, "example.test"); /* lowercased */
	static const struct {
		const char *domain;
		const char *host; /* of the route expected */
	} cases[] = {
	    {"example.test", "a.test"},
	    {"EXAMPLE.test", "a.test"},
	    {"Other.Test", "::1"},
	    {"sub.example.test", "relay.test"},
	    {"example.test.org", "relay.test"},
	    {"xample.test", "relay.test"},
	    {"elsewhere.test", "relay.test"},
	};
	for (size_t i = 0; i < N(cases); i++) {
		const struct conf_route *r = conf_find_route(c, cases[i].domain);
		assert_non_null(r);
		if (strcmp(r->host, cases[i].host) != 0)
			fail_msg("case %zu: %s routed to %s, want %s", i, cases[i].domain, r->host,
			         cases[i].host);
	}
	assert_ptr_equal(conf_find_route(c, "elsewhere.test"), c->relayhost);
	assert_ptr_equal(conf_find_route(c, NULL), c->relayhost);
	conf_unref(c);

	/* without a relayhost, unrouted domains go by MX (NULL) */
	c = load_str("routes { a.test { via = \"smtp://h.test\" } }", err, sizeof(err));
	assert_non_null(c);
	assert_non_null(conf_find_route(c, "A.test"));
	assert_null(conf_find_route(c, "b.test"));
	assert_null(c->relayhost);
	conf_unref(c);
	assert_null(conf_find_route(NULL, "a.test"));
}

static void test_delivery_values(void **state)
{
	static const struct {
		const char *text;
		size_t off; /* offsetof(struct conf_delivery, ...) */
		uint32_t want;
	} cases[] = {
	    {"remote_port = 2525", offsetof(struct conf_delivery, remote_port), 2525},
	    {"retry_base = 30s", offsetof(struct conf_delivery, retry_base), 30},
	    {"retry_base = 1", offsetof(struct conf_delivery, retry_base), 1},
	    {"retry_max = 2h", offsetof(struct conf_delivery, retry_max), 7200},
	    {"retry_base = 5min; retry_max = 5min", offsetof(struct conf_delivery, retry_max), 300},
	    {"max_lifetime = 5d", offsetof(struct conf_delivery, max_lifetime), 432000},
	    {"max_lifetime = 1w", offsetof(struct conf_delivery, max_lifetime), 604800},
	    {"max_lifetime = 90", offsetof(struct conf_delivery, max_lifetime), 90},
	    {"delay_warning = 0", offsetof(struct conf_delivery, delay_warning), 0},
	    {"delay_warning = 12h", offsetof(struct conf_delivery, delay_warning), 43200},
	    {"max_per_destination = 1", offsetof(struct conf_delivery, max_per_destination), 1},
	    {"connect_timeout = 0.5min", offsetof(struct conf_delivery, connect_timeout), 30},
	    {"connect_timeout = 2000ms", offsetof(struct conf_delivery, connect_timeout), 2},
	    {"command_timeout = 10min", offsetof(struct conf_delivery, command_timeout), 600},
	};
	for (size_t i = 0; i < N(cases); i++) {
		char text[128], err[256];
		snprintf(text, sizeof(text), "delivery { %s }", cases[i].text);
		struct tern_config *c = load_str(text, err, sizeof(err));
		if (!c)
			fail_msg("case %zu '%s': %s", i, cases[i].text, err);
		const char *field = (const char *)&c->delivery + cases[i].off;
		uint32_t got;
		if (cases[i].off == offsetof(struct conf_delivery, remote_port)) {
			uint16_t g16;
			memcpy(&g16, field, sizeof(g16));
			got = g16;
		} else {
			memcpy(&got, field, sizeof(got));
		}
		if (got != cases[i].want)
			fail_msg("case %zu '%s': %u, want %u", i, cases[i].text, got,
			         cases[i].want);
		conf_unref(c);
	}
}

static void test_dns_forward(void **state)
{
	static const struct {
		const char *in;
		const char *want; /* NULL: refused */
	} cases[] = {
	    {"127.0.0.1", "127.0.0.1"},
	    {"127.0.0.1@5353", "127.0.0.1@5353"},
	    {"::1", "::1"},
	    {"::1@53", "::1@53"},
	    {"2001:DB8:0::53@65535", "2001:db8::53@65535"},
	    {"192.0.2.1@1", "192.0.2.1@1"},
	    {"localhost", NULL},
	    {"ns.example.test@53", NULL},
	    {"127.0.0.1:53", NULL},
	    {"[::1]@53", NULL},
	    {"[::1]", NULL},
	    {"127.0.0.1@", NULL},
	    {"127.0.0.1@0", NULL},
	    {"127.0.0.1@65536", NULL},
	    {"127.0.0.1@-53", NULL},
	    {"127.0.0.1@53@53", NULL},
	    {"@53", NULL},
	    {"127.0.0.1/32", NULL},
	    {"256.0.0.1", NULL},
	    {"fe80::1%lo", NULL},
	};
	for (size_t i = 0; i < N(cases); i++) {
		char text[128], err[256];
		snprintf(text, sizeof(text), "dns {\n forward = [\"127.0.0.2\",\n \"%s\"]\n}",
		         cases[i].in);
		struct tern_config *c = load_str(text, err, sizeof(err));
		if (!cases[i].want) {
			if (c)
				fail_msg("case %zu '%s' loaded", i, cases[i].in);
			char want[256];
			snprintf(
			    want, sizeof(want),
			    "t.conf:3: dns.forward: '%s' is not an IP address with an optional "
			    "@PORT (port 1 to 65535)",
			    cases[i].in);
			if (strcmp(err, want) != 0)
				fail_msg("case %zu:\n got  %s\n want %s", i, err, want);
			continue;
		}
		if (!c)
			fail_msg("case %zu '%s': %s", i, cases[i].in, err);
		assert_int_equal(c->dns.n_forward, 2);
		assert_string_equal(c->dns.forward[0], "127.0.0.2");
		assert_string_equal(c->dns.forward[1], cases[i].want);
		conf_unref(c);
	}
	/* a single string is a list of one; repeats are dropped; [] means resolv.conf;
	 * trust_anchor_file is kept as written */
	char err[256];
	struct tern_config *c =
	    load_str("dns { forward = \"::1@5353\"; trust_anchor_file = \"root.key\" }\n"
	             "dns { forward = [\"::1\", \"0:0::1\"] }",
	             err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->dns.n_forward, 1); /* the later forward replaced the first */
	assert_string_equal(c->dns.forward[0], "::1");
	assert_string_equal(c->dns.trust_anchor_file, "root.key");
	conf_unref(c);
	c = load_str("dns { forward = [] }", err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->dns.n_forward, 0);
	assert_null(c->dns.trust_anchor_file);
	conf_unref(c);
}

/* ---- print and reload ---------------------------------------------------- */

static void test_auth_checks_section(void **state)
{
	char err[256];
	struct tern_config *c = load_str(
	    "auth_checks { spf = no; dkim = yes; dmarc = enforce; defer_on_temperror = true;\n"
	    "  timeout = 5s }",
	    err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_false(c->auth_checks.spf);
	assert_true(c->auth_checks.dkim);
	assert_int_equal(c->auth_checks.dmarc, CONF_DMARC_ENFORCE);
	assert_true(c->auth_checks.defer_on_temperror);
	assert_int_equal(c->auth_checks.timeout, 5);
	assert_true(c->auth_checks.arc); /* ARC is validated unless turned off */
	conf_unref(c);
	c = load_str("auth_checks { arc = false }", err, sizeof(err));
	assert_non_null(c);
	assert_false(c->auth_checks.arc);
	conf_unref(c);
	c = load_str("auth_checks { dmarc = off }", err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->auth_checks.dmarc, CONF_DMARC_OFF);
	conf_unref(c);
	static const struct {
		const char *text, *want;
	} bad[] = {
	    {"auth_checks { dmarc = reject }", "auth_checks.dmarc: must be \"off\", \"mark\""},
	    {"auth_checks { dmarc = true }", "auth_checks.dmarc: expected"},
	    {"auth_checks { spf = 1 }", "auth_checks.spf: expected true or false"},
	    {"auth_checks { timeout = 0 }", "auth_checks.timeout"},
	    {"auth_checks { arc = 1 }", "auth_checks.arc: expected true or false"},
	    {"auth_checks { bimi = true }", "bimi"},
	    {"auth_checks = true", "auth_checks"},
	};
	for (size_t i = 0; i < N(bad); i++) {
		c = load_str(bad[i].text, err, sizeof(err));
		if (c)
			fail_msg("case %zu loaded", i);
		if (!strstr(err, bad[i].want))
			fail_msg("case %zu: %s", i, err);
	}
}

static void test_arc_section(void **state)
{
	char err[256];
	static const char keys[] =
	    "dkim { keys = [\n"
	    "  { domain = \"example.org\"; selector = \"s1\"; key_file = \"/k1\"; },\n"
	    "  { domain = \"example.org\"; selector = \"s2\"; key_file = \"/k2\"; } ] }\n";
	char text[1024];
	/* the sealing key is a dkim.keys entry, whichever section comes first */
	snprintf(text, sizeof(text),
	         "arc { trusted_sealers = [\"Google.com\", \"lists.example.net\"];\n"
	         "  seal_domain = \"Example.ORG\"; seal_selector = \"s2\"; }\n%s",
	         keys);
	struct tern_config *c = load_str(text, err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->arc.n_trusted_sealers, 2);
	assert_string_equal(c->arc.trusted_sealers[0], "google.com");
	assert_string_equal(c->arc.seal_domain, "example.org");
	const struct conf_dkim_key *k = conf_arc_seal_key(c);
	assert_non_null(k);
	assert_string_equal(k->key_file, "/k2");
	conf_unref(c);
	/* without a selector: the domain's first key; no arc section: no sealing */
	snprintf(text, sizeof(text), "%sarc { seal_domain = example.org }", keys);
	c = load_str(text, err, sizeof(err));
	assert_non_null(c);
	assert_string_equal(conf_arc_seal_key(c)->key_file, "/k1");
	conf_unref(c);
	c = load_str(keys, err, sizeof(err));
	assert_non_null(c);
	assert_null(conf_arc_seal_key(c));
	assert_int_equal(c->arc.n_trusted_sealers, 0);
	conf_unref(c);
	static const struct {
		const char *text, *want;
	} bad[] = {
	    {"arc { seal_domain = example.org }", "no dkim.keys entry for example.org"},
	    {"arc { seal_selector = s1 }", "arc.seal_selector is set without arc.seal_domain"},
	    {"arc { trusted_sealers = [\"not a domain\"] }", "arc.trusted_sealers"},
	    {"arc { seal_domain = \"-bad-\" }", "arc.seal_domain"},
	    {"arc { sealer = x }", "unknown key 'sealer' in section arc"},
	};
	for (size_t i = 0; i < N(bad); i++) {
		c = load_str(bad[i].text, err, sizeof(err));
		if (c)
			fail_msg("case %zu loaded", i);
		if (!strstr(err, bad[i].want))
			fail_msg("case %zu: %s", i, err);
	}
	snprintf(text, sizeof(text), "%sarc { seal_domain = example.org; seal_selector = s9 }",
	         keys);
	assert_null(load_str(text, err, sizeof(err)));
	assert_non_null(strstr(err, "with selector s9"));
}

static void test_recipient_delimiter(void **state)
{
	char err[256];
	struct tern_config *c = load_str("recipient_delimiter = \"+-\"", err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(conf_local_base_len(c, "alice+work", 10), 5);
	assert_int_equal(conf_local_base_len(c, "alice-x+y", 9), 5);
	assert_int_equal(conf_local_base_len(c, "alice", 5), 5);
	assert_int_equal(conf_local_base_len(c, "+tag", 4), 0);
	assert_int_equal(conf_local_base_len(c, "alice+work", 4), 4); /* never past len */
	conf_unref(c);
	c = load_str("recipient_delimiter = \"\"", err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(conf_local_base_len(c, "alice+work", 10), 10);
	conf_unref(c);
}

static void test_print_reload_round_trip(void **state)
{
	static const char *const configs[] = {
	    "",
	    "hostname = h.test; data_dir = \"/srv/mail data\"; users_file = '/etc/tern/u\"q';\n"
	    "user = \"_tern\"; log_level = error; workers = 16; vrfy = off; expn = on;\n"
	    "local_domains = [a.test, b.test]\n"
	    "aliases { \"x@a.test\" = [\"y@b.test\", \"z@b.test\"]; \"q@a.test\" = \"r@a.test\" }\n"
	    "relay { networks = [\"192.0.2.0/24\", \"2001:db8::/48\", \"::ffff:10.0.0.0/104\"] }\n"
	    "limits { max_message_size = 12345; max_line_length = 1000; idle_timeout = 1d;\n"
	    "  shutdown_grace = 0; max_errors = 1 }\n"
	    "listen { b { address = \"[::]:25\"; profile = submission }\n"
	    "  a { address = \"[0:0::1]:26\"; profile = mx } }\n",
	    "local_domains = []\nrelay { networks = [] }\nlimits { max_message_size = 3g }",
	    "limits { max_message_size = 1025k }",
	    "routes {\n"
	    "  Example.test { via = \"smtp://mx.a.test:2525\"; tls = none }\n"
	    "  \"b.test\" { via = \"smtps://[2001:db8::25]\"; auth_user = \"u\\\"q\";\n"
	    "    auth_password_file = \"/etc/tern/b pw\" }\n"
	    "  c.test { via = \"SMTP://192.0.2.25\"; tls = require }\n"
	    "}\n"
	    "relayhost { via = smtp://relay.test:587; tls = require; auth_user = apikey;\n"
	    "  auth_password_file = relay.pw }\n"
	    "delivery { remote_port = 2525; retry_base = 1min; retry_max = 2h; max_lifetime = 3d;\n"
	    "  delay_warning = 0; max_per_destination = 3; connect_timeout = 10s;\n"
	    "  command_timeout = 1h }\n"
	    "dns { forward = [\"127.0.0.1@5353\", \"::1\"]; trust_anchor_file = /var/lib/root.key "
	    "}\n",
	    "relayhost { via = \"smtps://[::1]:4650\"; tls = opportunistic }\ndns { forward = [] }",
	    "senders { \"Alice@a.test\" = [\"Sales@a.test\", \"@B.test\"]; \"b@a.test\" = "
	    "\"c@a.test\" }\n"
	    "auth { allow_plaintext = yes; received_header_user = on;\n"
	    "  mechanisms = [scram-sha-256, \"PLAIN\", XOAUTH2, cram-md5];\n"
	    "  oauth { issuer = \"https://id.a.test/\"; audience = tern; jwks_file = /k.json;\n"
	    "    leeway = 2min }\n"
	    "  throttle { delay_after = 2; delay = 250ms; max_delay = 1.5s; addr_block_after = 0;\n"
	    "    user_block_after = 7; block_time = 1h; forget_after = 1d; max_entries = 100 } }\n",
	    "auth { oauth { issuer = i; audience = a; jwks_file = j; user_claim = sub } }",
	    "tls { cert_file = \"/etc/t/a b.pem\"; key_file = /etc/t/a.key;\n"
	    "  certificates = [ { cert_file = /b.pem; key_file = /b.key } ] }\n"
	    "listen { a { address = \"127.0.0.1:25\"; profile = mx; tls = none }\n"
	    "  b { address = \"127.0.0.1:465\"; profile = submission; tls = implicit }\n"
	    "  c { address = \"127.0.0.1:587\"; profile = submission } }\n",
	    "tls { self_signed = true }\ndata_dir = /srv/t/",
	    "auth_checks { spf = false; dmarc = enforce; defer_on_temperror = true; timeout = 1min "
	    "}",
	    "auth_checks { dkim = off; dmarc = \"off\" }",
	    "shaping { \"Gmail.com\" { connections = 2; per_minute = 60 } default { per_connection "
	    "= 9 }\n"
	    "  backoff = 2min }\n"
	    "pools { tx { addresses = [\"192.0.2.1\", \"2001:db8::1\"]; ehlo { \"192.0.2.1\" = "
	    "m.test } }\n"
	    "  bulk { addresses = \"192.0.2.2\"; warmup { start = 50; growth = 2 } } }\n"
	    "pool_select { tags { news = bulk }; domains { \"A.test\" = tx }; keys { k = tx };\n"
	    "  default = tx }\n",
	    "recipient_delimiter = \"\"",
	    "recipient_delimiter = \"+-\"",
	    "tls { cert_file = /etc/tern/c.pem; key_file = /etc/tern/k.pem }\n"
	    "listen { p { address = \"127.0.0.1:995\"; profile = pop3; tls = implicit }\n"
	    "  q { address = \"127.0.0.1:110\"; profile = pop3; tls = starttls } }\n",
	};
	for (size_t i = 0; i < N(configs); i++) {
		char err[256];
		struct tern_config *c1 = load_str(configs[i], err, sizeof(err));
		if (!c1)
			fail_msg("case %zu: %s", i, err);
		char *p1 = print_to_string(c1);
		struct tern_config *c2 =
		    conf_load_string(p1, strlen(p1), "printed", err, sizeof(err));
		if (!c2)
			fail_msg("case %zu: printed config does not load: %s\n%s", i, err, p1);
		char *p2 = print_to_string(c2);
		assert_string_equal(p1, p2);
		free(p1);
		free(p2);
		conf_unref(c1);
		conf_unref(c2);
	}
}

static void test_print_shows_values(void **state)
{
	char err[256];
	struct tern_config *c =
	    load_str("listen { sub { address = \"[0:0::1]:587\"; profile = submission } }\n"
	             "data_dir = \"a\\\"b\\\\c d\"\nlimits { max_message_size = 1536 }",
	             err, sizeof(err));
	assert_non_null(c);
	char *p = print_to_string(c);
	assert_non_null(strstr(p, "data_dir = \"a\\\"b\\\\c d\";\n"));
	assert_non_null(strstr(p, "users_file = \"a\\\"b\\\\c d/users\";\n"));
	assert_non_null(strstr(p, "\t\taddress = \"[::1]:587\";\n")); /* canonical form */
	assert_non_null(strstr(p, "\tmax_message_size = 1536;\n"));
	assert_non_null(strstr(p, "\tmax_line_length = 2048;\n"));
	assert_non_null(strstr(p, "\tidle_timeout = 300s;\n"));
	assert_non_null(strstr(p, "networks = [\"127.0.0.0/8\", \"::1/128\"];"));
	free(p);
	conf_unref(c);
}

static void test_print_shows_routes(void **state)
{
	char err[256];
	struct tern_config *c = load_str(
	    "routes { A.Test { via = \"smtps://[2001:DB8::1]\" } }\n"
	    "relayhost { via = \"smtp://Relay.Test\"; auth_user = k; auth_password_file = /pw }\n"
	    "delivery { retry_max = 1h; remote_port = 2525 }\n"
	    "dns { forward = \"127.0.0.1@5353\" }",
	    err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	char *p = print_to_string(c);
	static const char *const want[] = {
	    "routes {\n\t\"a.test\" {\n\t\tvia = \"smtps://[2001:db8::1]:465\";\n"
	    "\t\ttls = \"require\";\n\t}\n}\n",
	    "relayhost {\n\tvia = \"smtp://relay.test:25\";\n\ttls = \"verify\";\n"
	    "\tauth_user = \"k\";\n\tauth_password_file = \"/pw\";\n}\n",
	    "\tremote_port = 2525;\n",
	    "\tretry_max = 3600s;\n",
	    "\tdelay_warning = 14400s;\n",
	    "\tforward = [\"127.0.0.1@5353\"];\n",
	};
	for (size_t i = 0; i < N(want); i++)
		if (!strstr(p, want[i]))
			fail_msg("missing:\n%s\nin:\n%s", want[i], p);
	free(p);
	conf_unref(c);
	/* the defaults say what they mean */
	c = load_str("", err, sizeof(err));
	p = print_to_string(c);
	assert_non_null(strstr(p, "routes {\n}\n# no relayhost"));
	assert_non_null(strstr(p, "\tforward = [];\n\t# no trust_anchor_file"));
	free(p);
	conf_unref(c);
}

/* ---- capture: the HTTP listener's bounds ---------------------------------- */

static void test_capture_http_keys(void **state)
{
	char err[256];
	struct tern_config *c = load_str("", err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->capture.n_http_allowed_hosts, 0);
	assert_int_equal(c->capture.http_max_body, 64u << 20);
	assert_int_equal(c->capture.http_max_connections, 256);
	conf_unref(c);

	c = load_str("capture {\n"
	             "  http_allowed_hosts = [\"Mail.Dev.Example\", \".preview.example\", \"*\",\n"
	             "                        \"mail.dev.example\"]\n"
	             "  http_max_body = 1m; http_max_connections = 10\n"
	             "}\n",
	             err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->capture.n_http_allowed_hosts, 3); /* lowercased, repeats dropped */
	assert_string_equal(c->capture.http_allowed_hosts[0], "mail.dev.example");
	assert_string_equal(c->capture.http_allowed_hosts[1], ".preview.example");
	assert_string_equal(c->capture.http_allowed_hosts[2], "*");
	assert_int_equal(c->capture.http_max_body, 1u << 20);
	assert_int_equal(c->capture.http_max_connections, 10);
	char *p1 = print_to_string(c);
	assert_non_null(strstr(p1, "\thttp_allowed_hosts = [\"mail.dev.example\", "
	                           "\".preview.example\", \"*\"];\n\thttp_max_body = 1m;\n"
	                           "\thttp_max_connections = 10;\n}\n"));
	struct tern_config *c2 = conf_load_string(p1, strlen(p1), "printed", err, sizeof(err));
	if (!c2)
		fail_msg("printed config does not load: %s\n%s", err, p1);
	char *p2 = print_to_string(c2);
	assert_string_equal(p1, p2);
	free(p1);
	free(p2);
	conf_unref(c2);
	conf_unref(c);

	c = load_str("capture { http_allowed_hosts = \"one.example\" }", err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->capture.n_http_allowed_hosts, 1);
	conf_unref(c);

	static const struct {
		const char *text, *err;
	} bad[] = {
	    {"capture { http_allowed_hosts = [\"mail.dev.example:8025\"] }",
	     "t.conf:1: capture.http_allowed_hosts: 'mail.dev.example:8025' is not a host name, "
	     "\".domain\" or \"*\" (no port; IP addresses are always allowed)"},
	    {"capture { http_allowed_hosts = [\"http://x.example\"] }",
	     "t.conf:1: capture.http_allowed_hosts: 'http://x.example' is not a host name, "
	     "\".domain\" or \"*\" (no port; IP addresses are always allowed)"},
	    {"capture { http_allowed_hosts = [\"*.example\"] }",
	     "t.conf:1: capture.http_allowed_hosts: '*.example' is not a host name, \".domain\" or "
	     "\"*\" (no port; IP addresses are always allowed)"},
	    {"capture { http_allowed_hosts = [5] }",
	     "t.conf:1: capture.http_allowed_hosts: expected a list of strings, got the number 5"},
	    {"capture { http_max_body = 100 }",
	     "t.conf:1: capture.http_max_body: 100 is below the minimum 1024"},
	    {"capture { http_max_body = 1g }",
	     "t.conf:1: capture.http_max_body: 1073741824 is above the maximum 134217728"},
	    {"capture { http_max_body = 10s }", "t.conf:1: capture.http_max_body: expected a size "
	                                        "(bytes, or a number with k, m or g), "
	                                        "got a time"},
	    {"capture { http_max_connections = 0 }",
	     "t.conf:1: capture.http_max_connections: 0 is below the minimum 1"},
	};
	for (size_t i = 0; i < N(bad); i++) {
		c = load_str(bad[i].text, err, sizeof(err));
		if (c) {
			conf_unref(c);
			fail_msg("'%s' loaded", bad[i].text);
		}
		if (strcmp(err, bad[i].err) != 0)
			fail_msg("'%s':\n got  %s\n want %s", bad[i].text, err, bad[i].err);
	}
}

/* ---- warnings: settings that do less than their name says --------------- */

struct warn_seen {
	char keys[8][320];
	char texts[8][512];
	size_t n;
};

static void collect_warning(const char *key, const char *text, void *arg)
{
	struct warn_seen *w = arg;
	assert_true(w->n < 8);
	tern_strlcpy(w->keys[w->n], key, sizeof(w->keys[0]));
	tern_strlcpy(w->texts[w->n], text, sizeof(w->texts[0]));
	w->n++;
}

static void test_warnings(void **state)
{
	char err[256];
	struct warn_seen w = {0};
	struct tern_config *c =
	    load_str("listen { mx { address = \"127.0.0.1:25\"; profile = mx }\n"
	             "  sub { address = \"127.0.0.1:587\"; profile = submission } }\n"
	             "routes { a.test { via = \"smtp://h.test\"; tls = require }\n"
	             "  b.test { via = \"smtps://h.test\" }\n"
	             "  c.test { via = \"smtp://h.test\" }\n"
	             "  d.test { via = \"smtp://h.test\"; tls = none } }\n"
	             "relayhost { via = \"smtp://r.test:587\"; tls = require; auth_user = u;\n"
	             "  auth_password_file = /pw }\n",
	             err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(conf_warnings(c, collect_warning, &w), 4);
	assert_string_equal(w.keys[0], "listen.sub.profile");
	assert_non_null(strstr(w.texts[0], "AUTH is never offered"));
	assert_string_equal(w.keys[1], "routes.\"a.test\".tls");
	assert_non_null(strstr(w.texts[1], "certificate is not verified"));
	assert_null(strstr(w.texts[1], "password"));
	assert_string_equal(w.keys[2], "routes.\"b.test\".tls");
	assert_non_null(strstr(w.texts[2], "smtps://"));
	assert_string_equal(w.keys[3], "relayhost.tls");
	assert_non_null(strstr(w.texts[3], "password"));
	/* capture mode replaces the listeners: no submission warning there */
	assert_int_equal(conf_apply_capture(c, "127.0.0.1:1025", NULL), TERN_OK);
	w.n = 0;
	assert_int_equal(conf_warnings(c, collect_warning, &w), 3);
	assert_string_equal(w.keys[0], "routes.\"a.test\".tls");
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	conf_report_warnings(c, f);
	fclose(f);
	assert_non_null(strstr(buf, "tern: warning: relayhost.tls: \"require\" makes"));
	free(buf);
	conf_unref(c);

	/* a submission listener with a certificate does what it says; allow_plaintext
	 * is worth a warning of its own, and then the certificate is not needed */
	static const char *const sub =
	    "listen { sub { address = \"127.0.0.1:587\"; profile = submission } }\n";
	char text[512];
	snprintf(text, sizeof(text), "%stls { cert_file = /c; key_file = /k }\n", sub);
	c = load_str(text, err, sizeof(err));
	w.n = 0;
	assert_int_equal(conf_warnings(c, collect_warning, &w), 0);
	conf_unref(c);
	snprintf(text, sizeof(text), "%sauth { allow_plaintext = true }\n", sub);
	c = load_str(text, err, sizeof(err));
	assert_int_equal(conf_warnings(c, collect_warning, &w), 1);
	assert_string_equal(w.keys[0], "auth.allow_plaintext");
	assert_non_null(strstr(w.texts[0], "in clear"));
	conf_unref(c);
	/* without a submission listener allow_plaintext changes nothing */
	c = load_str("auth { allow_plaintext = true }", err, sizeof(err));
	w.n = 0;
	assert_int_equal(conf_warnings(c, collect_warning, &w), 0);
	conf_unref(c);

	/* an empty file promises nothing it does not do; nor does the embedded
	 * default, whose submission listeners have TLS (its self-signed
	 * certificate), so AUTH is offered there */
	c = load_str("", err, sizeof(err));
	w.n = 0;
	assert_int_equal(conf_warnings(c, collect_warning, &w), 0);
	conf_unref(c);
	c = conf_load(NULL, err, sizeof(err));
	w.n = 0;
	assert_int_equal(conf_warnings(c, collect_warning, &w), 0);
	conf_unref(c);
}

/* ---- tls: certificates and the listeners' modes --------------------------- */

/* tracking { base_url }: an http(s) base, its trailing '/' dropped, printed back; anything
 * else refused (it goes into href and src values of mail). */
static void test_tracking_base_url(void **state)
{
	(void)state;
	char err[512];
	struct tern_config *c = load_str("", err, sizeof(err));
	assert_non_null(c);
	assert_null(c->tracking.base_url);
	conf_unref(c);
	c = load_str("tracking { base_url = \"https://t.example.org/\"; }", err, sizeof(err));
	assert_non_null(c);
	assert_string_equal(c->tracking.base_url, "https://t.example.org");
	char *p = print_to_string(c);
	assert_non_null(strstr(p, "tracking {\n\tbase_url = \"https://t.example.org\";\n}"));
	free(p);
	conf_unref(c);
	const char *bad[] = {"ftp://t.example.org", "https://", "https://t.example.org/?x=1",
	                     "https://t.example.org/\\\"><script>", "t.example.org"};
	for (size_t i = 0; i < N(bad); i++) {
		char text[256];
		snprintf(text, sizeof(text), "tracking { base_url = \"%s\"; }", bad[i]);
		c = load_str(text, err, sizeof(err));
		assert_null(c);
		assert_non_null(strstr(err, "tracking.base_url"));
	}
	c = load_str("tracking { url = \"https://x\"; }", err, sizeof(err));
	assert_null(c);
}

static void test_tls_keys(void **state)
{
	char err[256];
	/* the single pair is the default, then the list in order */
	struct tern_config *c = load_str(
	    "tls { certificates = [ { cert_file = /b.pem; key_file = /b.key },\n"
	    "  { cert_file = /c.pem; key_file = /c.key; } ];\n"
	    "  cert_file = /a.pem; key_file = /a.key }\n"
	    "listen { mx { address = \"127.0.0.1:25\"; profile = mx }\n"
	    "  plain { address = \"127.0.0.1:26\"; profile = mx; tls = none }\n"
	    "  smtps { address = \"127.0.0.1:465\"; profile = submission; tls = implicit } }\n",
	    err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->tls.n_certs, 3);
	assert_false(c->tls.self_signed);
	static const char *const files[][2] = {
	    {"/a.pem", "/a.key"}, {"/b.pem", "/b.key"}, {"/c.pem", "/c.key"}};
	for (size_t i = 0; i < 3; i++) {
		assert_string_equal(c->tls.certs[i].cert_file, files[i][0]);
		assert_string_equal(c->tls.certs[i].key_file, files[i][1]);
	}
	/* with a certificate, a listener without tls offers STARTTLS */
	assert_int_equal(c->listeners[0].tls, CONF_LISTEN_TLS_STARTTLS);
	assert_int_equal(c->listeners[1].tls, CONF_LISTEN_TLS_NONE);
	assert_int_equal(c->listeners[2].tls, CONF_LISTEN_TLS_IMPLICIT);
	char *p = print_to_string(c);
	assert_non_null(strstr(p, "\t\ttls = \"implicit\";\n"));
	assert_non_null(strstr(p, "tls {\n\tself_signed = false;\n\tcertificates = [\n"
	                          "\t\t{ cert_file = \"/a.pem\"; key_file = \"/a.key\"; },\n"));
	free(p);
	/* capture mode keeps configured certificates: its listener offers STARTTLS */
	assert_int_equal(conf_apply_capture(c, "127.0.0.1:1025", NULL), TERN_OK);
	assert_int_equal(c->listeners[0].tls, CONF_LISTEN_TLS_STARTTLS);
	assert_int_equal(c->tls.n_certs, 3);
	conf_unref(c);

	/* the self-signed pair lives in the data dir */
	c = load_str("data_dir = /srv/t/\ntls { self_signed = true }", err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->tls.n_certs, 1);
	assert_string_equal(c->tls.certs[0].cert_file, "/srv/t/tls/selfsigned-cert.pem");
	assert_string_equal(c->tls.certs[0].key_file, "/srv/t/tls/selfsigned-key.pem");
	assert_int_equal(c->listeners[0].tls, CONF_LISTEN_TLS_STARTTLS);
	/* ... but not in capture mode (Mailpit offers no TLS it was not given) */
	assert_int_equal(conf_apply_capture(c, "127.0.0.1:1025", NULL), TERN_OK);
	assert_int_equal(c->tls.n_certs, 0);
	assert_false(c->tls.self_signed);
	assert_int_equal(c->listeners[0].tls, CONF_LISTEN_TLS_NONE);
	conf_unref(c);
}

/* ---- auth and senders ---------------------------------------------------- */

static void test_auth_keys(void **state)
{
	char err[256];
	struct tern_config *c = load_str(
	    "auth { allow_plaintext = true; received_header_user = true;\n"
	    "  mechanisms = [\"cram-md5\", PLAIN, plain, SCRAM-SHA-256];\n"
	    "  throttle { delay_after = 3; delay = 250ms; max_delay = 2s; addr_block_after = 5;\n"
	    "    user_block_after = 0; block_time = 10min; forget_after = 2h; max_entries = 99 } "
	    "}\n",
	    err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_true(c->auth.allow_plaintext);
	assert_true(c->auth.received_header_user);
	assert_int_equal(c->auth.mechanisms, SASL_MECH_BIT(SASL_MECH_PLAIN) |
	                                         SASL_MECH_BIT(SASL_MECH_CRAM_MD5) |
	                                         SASL_MECH_BIT(SASL_MECH_SCRAM_SHA256));
	assert_int_equal(c->auth.throttle.delay_after, 3);
	assert_int_equal(c->auth.throttle.delay_ms, 250);
	assert_int_equal(c->auth.throttle.max_delay_ms, 2000);
	assert_int_equal(c->auth.throttle.addr_block_after, 5);
	assert_int_equal(c->auth.throttle.user_block_after, 0);
	assert_int_equal(c->auth.throttle.block_time, 600);
	assert_int_equal(c->auth.throttle.forget_after, 7200);
	assert_int_equal(c->auth.throttle.max_entries, 99);
	char *p = print_to_string(c);
	assert_non_null(
	    strstr(p, "\tmechanisms = [\"PLAIN\", \"CRAM-MD5\", \"SCRAM-SHA-256\"];\n"));
	assert_non_null(strstr(p, "\t\tdelay = 250ms;\n"));
	free(p);
	conf_unref(c);

	/* OAuth: the OAuth mechanisms join the default list; user_claim defaults */
	c = load_str("auth { oauth { issuer = \"https://id.test/\"; audience = \"tern\";\n"
	             "  jwks_file = \"/etc/tern/jwks.json\" } }",
	             err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_string_equal(c->auth.oauth.issuer, "https://id.test/");
	assert_string_equal(c->auth.oauth.audience, "tern");
	assert_string_equal(c->auth.oauth.jwks_file, "/etc/tern/jwks.json");
	assert_string_equal(c->auth.oauth.user_claim, "email");
	assert_int_equal(c->auth.oauth.leeway, OAUTH_LEEWAY_DEFAULT);
	assert_int_equal(c->auth.mechanisms, SASL_MECH_BIT(SASL_MECH_PLAIN) |
	                                         SASL_MECH_BIT(SASL_MECH_LOGIN) |
	                                         SASL_MECH_BIT(SASL_MECH_XOAUTH2) |
	                                         SASL_MECH_BIT(SASL_MECH_OAUTHBEARER));
	conf_unref(c);
	/* ... unless the list is given */
	c = load_str(
	    "auth { mechanisms = PLAIN; oauth { issuer = i; audience = a; jwks_file = j } }", err,
	    sizeof(err));
	assert_int_equal(c->auth.mechanisms, SASL_MECH_BIT(SASL_MECH_PLAIN));
	conf_unref(c);
}

static void test_may_send_as(void **state)
{
	char err[256];
	struct tern_config *c = load_str(
	    "aliases { \"sales@example.org\" = [\"alice@example.org\", \"bob@example.org\"];\n"
	    "  \"info@example.org\" = \"carol@example.org\" }\n"
	    "senders { \"Alice@Example.org\" = [\"News@example.org\", \"@Example.NET\"];\n"
	    "  \"dave@example.org\" = \"@example.org\" }\n",
	    err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->n_senders, 2);
	static const struct {
		const char *user, *addr;
		bool ok;
	} cases[] = {
	    {"alice@example.org", "alice@example.org", true}, /* itself */
	    {"alice@example.org", "ALICE@example.ORG", true}, /* in any case */
	    {"alice@example.org", "sales@example.org", true}, /* an alias that reaches it */
	    {"bob@example.org", "Sales@Example.org", true},
	    {"alice@example.org", "info@example.org", false},  /* an alias for someone else */
	    {"alice@example.org", "news@example.org", true},   /* senders: an address */
	    {"alice@example.org", "anyone@example.net", true}, /* senders: "@domain" */
	    {"alice@example.org", "x@sub.example.net", false}, /* not a subdomain */
	    {"alice@example.org", "x@example.net.evil", false},
	    {"alice@example.org", "bob@example.org", false}, /* another user */
	    {"dave@example.org", "whoever@example.org", true},
	    {"dave@example.org", "x@example.net", false},
	    {"carol@example.org", "news@example.org", false}, /* senders are per user */
	    {"alice@example.org", "", false},                 /* <> is the caller's call */
	    {"alice@example.org", "@example.net", false},     /* not an address */
	    {"", "alice@example.org", false},
	    /* recipient_delimiter ("+" by default): a tagged address is the base's */
	    {"alice@example.org", "alice+lists@example.org", true},
	    {"alice@example.org", "sales+q4@example.org", true},
	    {"alice@example.org", "bob+alice@example.org", false},
	    {"alice@example.org", "+alice@example.org", false},
	    {"alice@example.org", "alice-lists@example.org", false},
	};
	for (size_t i = 0; i < N(cases); i++)
		if (conf_may_send_as(c, cases[i].user, cases[i].addr) != cases[i].ok)
			fail_msg("case %zu: %s as %s: expected %d", i, cases[i].user, cases[i].addr,
			         cases[i].ok);
	assert_false(conf_may_send_as(NULL, "a@b.test", "a@b.test"));
	assert_false(conf_may_send_as(c, NULL, "a@b.test"));
	conf_unref(c);
	/* without a delimiter a tag is just another address */
	c = load_str("recipient_delimiter = \"\"", err, sizeof(err));
	assert_false(conf_may_send_as(c, "alice@example.org", "alice+lists@example.org"));
	assert_true(conf_may_send_as(c, "alice@example.org", "Alice@example.org"));
	conf_unref(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ucl_scalars),
	    cmocka_unit_test(test_ucl_arrays_and_order),
	    cmocka_unit_test(test_ucl_many_keys),
	    cmocka_unit_test(test_ucl_errors),
	    cmocka_unit_test(test_ucl_respects_length),
	    cmocka_unit_test(test_ucl_depth_limit),
	    cmocka_unit_test(test_empty_file_gets_every_default),
	    cmocka_unit_test(test_embedded_default_matches_defaults),
	    cmocka_unit_test(test_ref_counting),
	    cmocka_unit_test(test_full_config),
	    cmocka_unit_test(test_explicit_empty_lists),
	    cmocka_unit_test(test_conf_errors),
	    cmocka_unit_test(test_cidr_match),
	    cmocka_unit_test(test_cidr_parse),
	    cmocka_unit_test(test_parse_address),
	    cmocka_unit_test(test_relay_networks),
	    cmocka_unit_test(test_local_domains),
	    cmocka_unit_test(test_alias_lookup),
	    cmocka_unit_test(test_include_files),
	    cmocka_unit_test(test_include_errors),
	    cmocka_unit_test(test_fifo_refused),
	    cmocka_unit_test(test_route_via_forms),
	    cmocka_unit_test(test_route_tls_defaults),
	    cmocka_unit_test(test_route_tls_with_auth),
	    cmocka_unit_test(test_route_auth_and_relative_paths),
	    cmocka_unit_test(test_password_file_not_read_or_printed),
	    cmocka_unit_test(test_find_route_precedence),
	    cmocka_unit_test(test_delivery_values),
	    cmocka_unit_test(test_dns_forward),
	    cmocka_unit_test(test_auth_checks_section),
	    cmocka_unit_test(test_arc_section),
	    cmocka_unit_test(test_recipient_delimiter),
	    cmocka_unit_test(test_print_reload_round_trip),
	    cmocka_unit_test(test_print_shows_values),
	    cmocka_unit_test(test_print_shows_routes),
	    cmocka_unit_test(test_capture_http_keys),
	    cmocka_unit_test(test_warnings),
	    cmocka_unit_test(test_auth_keys),
	    cmocka_unit_test(test_may_send_as),
	    cmocka_unit_test(test_tls_keys),
	    cmocka_unit_test(test_tracking_base_url),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
