/*
 * test_smtp_parse.c — SMTP command lines: verbs, paths, ESMTP parameters,
 * the replies a malformed line gets, and RFC 3461 xtext. Table-driven; each
 * row is named after the behaviour a client or user depends on.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtp/smtp.h"

#define S(lit) lit, sizeof(lit) - 1

/* ------------------------------------------------------------- refusals */

struct err_case {
	const char *name;
	const char *line;
	size_t len;
	enum smtp_verb verb; /* what out->verb says on error */
	int code;
	const char *enhanced;
};

static const struct err_case err_cases[] = {
    {"empty line is not a command", S(""), SMTP_UNKNOWN, 500, "5.5.2"},
    {"unknown verb", S("WHATISTHIS"), SMTP_UNKNOWN, 500, "5.5.2"},
    {"verb glued to argument is unknown", S("MAILFROM:<a@b>"), SMTP_UNKNOWN, 500, "5.5.2"},
    {"verb followed by tab is unknown", S("MAIL\tFROM:<a@b>"), SMTP_UNKNOWN, 500, "5.5.2"},
    {"leading space is unknown", S(" MAIL FROM:<a@b>"), SMTP_UNKNOWN, 500, "5.5.2"},
    {"NUL in verb", S("NO\0OP"), SMTP_UNKNOWN, 500, "5.5.2"},
    {"NUL in address", S("MAIL FROM:<a\0@b>"), SMTP_UNKNOWN, 500, "5.5.2"},
    {"NUL at end of line", S("QUIT\0"), SMTP_UNKNOWN, 500, "5.5.2"},
    {"CR inside command", S("RCPT TO:<a@b>\rMAIL FROM:<c@d>"), SMTP_UNKNOWN, 500, "5.5.2"},
    {"LF inside command", S("NOOP\nQUIT"), SMTP_UNKNOWN, 500, "5.5.2"},
    {"HELO without domain", S("HELO"), SMTP_HELO, 501, "5.5.4"},
    {"EHLO without domain", S("EHLO"), SMTP_EHLO, 501, "5.5.4"},
    {"EHLO with only spaces", S("EHLO   "), SMTP_EHLO, 501, "5.5.4"},
    {"EHLO with two words", S("EHLO host junk"), SMTP_EHLO, 501, "5.5.4"},
    {"EHLO with bad literal", S("EHLO [1.2.3]"), SMTP_EHLO, 501, "5.5.4"},
    {"EHLO with invalid UTF-8", S("EHLO h\xff.example"), SMTP_EHLO, 501, "5.5.4"},
    {"EHLO with angle brackets", S("EHLO <host>"), SMTP_EHLO, 501, "5.5.4"},
    {"MAIL without FROM", S("MAIL"), SMTP_MAIL, 501, "5.5.4"},
    {"MAIL with wrong keyword", S("MAIL LALA: <>"), SMTP_MAIL, 501, "5.5.4"},
    {"MAIL FROM without colon", S("MAIL FROM <a@b>"), SMTP_MAIL, 501, "5.5.4"},
    {"MAIL FROM with nothing after colon", S("MAIL FROM:"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM without brackets", S("MAIL FROM:a@b"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM without closing bracket", S("MAIL FROM:<a@b"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM without domain", S("MAIL FROM:<pepe>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM postmaster without domain", S("MAIL FROM:<postmaster>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM label with trailing hyphen", S("MAIL FROM:<a@xn--->"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM label with leading hyphen", S("MAIL FROM:<a@-b.c>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM domain with trailing dot", S("MAIL FROM:<a@b.c.>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM domain with empty label", S("MAIL FROM:<a@b..c>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM domain with underscore", S("MAIL FROM:<a@b_c.d>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM empty domain", S("MAIL FROM:<a@>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM empty local part", S("MAIL FROM:<@b.c>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM two at signs", S("MAIL FROM:<a@b@c>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM leading dot in local", S("MAIL FROM:<.a@b>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM trailing dot in local", S("MAIL FROM:<a.@b>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM double dot in local", S("MAIL FROM:<a..b@c>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM space in local", S("MAIL FROM:<a b@c>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM unbalanced quote", S("MAIL FROM:<\"abc@b>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM quote then backslash at end", S("MAIL FROM:<\"abc\\"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM empty quoted local", S("MAIL FROM:<\"\"@b>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM control char in quotes", S("MAIL FROM:<\"a\tb\"@c>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM garbage after bracket", S("MAIL FROM:<a@b>x"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM params glued to bracket", S("MAIL FROM:<a@b>SIZE=1"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM invalid UTF-8 in local", S("MAIL FROM:<a\xc3@b>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM overlong UTF-8", S("MAIL FROM:<\xc0\xaf@b>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM UTF-8 surrogate", S("MAIL FROM:<\xed\xa0\x80@b>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM invalid UTF-8 in domain", S("MAIL FROM:<a@b\xfe.c>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM bad IPv4 literal", S("MAIL FROM:<a@[256.1.1.1]>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM bad IPv6 literal", S("MAIL FROM:<a@[IPv6:1::2::3]>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM general literal tag", S("MAIL FROM:<a@[x400:abc]>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM unclosed literal", S("MAIL FROM:<a@[1.2.3.4>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM bad source route", S("MAIL FROM:<@a,b:c@d>"), SMTP_MAIL, 501, "5.1.7"},
    {"MAIL FROM source route without colon", S("MAIL FROM:<@a c@d>"), SMTP_MAIL, 501, "5.1.7"},
    {"RCPT without TO", S("RCPT LALA: <>"), SMTP_RCPT, 501, "5.5.4"},
    {"RCPT TO with nothing", S("RCPT TO:"), SMTP_RCPT, 501, "5.1.3"},
    {"RCPT TO without brackets", S("RCPT TO: user@testserver"), SMTP_RCPT, 501, "5.1.3"},
    {"RCPT TO null path", S("RCPT TO:<>"), SMTP_RCPT, 501, "5.1.3"},
    {"RCPT TO without domain", S("RCPT TO:<pepe>"), SMTP_RCPT, 501, "5.1.3"},
    {"RCPT TO quoted postmaster needs domain", S("RCPT TO:<\"postmaster\">"), SMTP_RCPT, 501,
     "5.1.3"},
    {"RCPT TO invalid UTF-8", S("RCPT TO:<henry\xe2\x85@testserver>"), SMTP_RCPT, 501, "5.1.3"},
    {"unknown MAIL parameter", S("MAIL FROM:<a@b> FOO=bar"), SMTP_MAIL, 555, "5.5.4"},
    {"unknown RCPT parameter", S("RCPT TO:<a@b> XYZ"), SMTP_RCPT, 555, "5.5.4"},
    {"NOTIFY on MAIL", S("MAIL FROM:<a@b> NOTIFY=NEVER"), SMTP_MAIL, 555, "5.5.4"},
    {"ORCPT on MAIL", S("MAIL FROM:<a@b> ORCPT=rfc822;a@b"), SMTP_MAIL, 555, "5.5.4"},
    {"SIZE on RCPT", S("RCPT TO:<a@b> SIZE=10"), SMTP_RCPT, 555, "5.5.4"},
    {"ENVID on RCPT", S("RCPT TO:<a@b> ENVID=x"), SMTP_RCPT, 555, "5.5.4"},
    {"duplicate SIZE", S("MAIL FROM:<a@b> SIZE=1 SIZE=1"), SMTP_MAIL, 501, "5.5.4"},
    {"duplicate parameter differing in case", S("MAIL FROM:<a@b> BODY=7BIT body=8bitmime"),
     SMTP_MAIL, 501, "5.5.4"},
    {"duplicate NOTIFY", S("RCPT TO:<a@b> NOTIFY=NEVER NOTIFY=NEVER"), SMTP_RCPT, 501, "5.5.4"},
    {"SIZE overflowing 64 bits", S("MAIL FROM:<a@b> SIZE=99999999999999999999999"), SMTP_MAIL, 501,
     "5.5.4"},
    {"SIZE without value", S("MAIL FROM:<a@b> SIZE"), SMTP_MAIL, 501, "5.5.4"},
    {"SIZE with empty value", S("MAIL FROM:<a@b> SIZE="), SMTP_MAIL, 501, "5.5.4"},
    {"SIZE negative", S("MAIL FROM:<a@b> SIZE=-1"), SMTP_MAIL, 501, "5.5.4"},
    {"SIZE with letters", S("MAIL FROM:<a@b> SIZE=12k"), SMTP_MAIL, 501, "5.5.4"},
    {"BODY without value", S("MAIL FROM:<a@b> BODY"), SMTP_MAIL, 501, "5.5.4"},
    {"BODY unknown", S("MAIL FROM:<a@b> BODY=9BIT"), SMTP_MAIL, 501, "5.5.4"},
    {"SMTPUTF8 with a value", S("MAIL FROM:<a@b> SMTPUTF8=yes"), SMTP_MAIL, 501, "5.5.4"},
    {"RET unknown", S("MAIL FROM:<a@b> RET=ALL"), SMTP_MAIL, 501, "5.5.4"},
    {"ENVID bad xtext", S("MAIL FROM:<a@b> ENVID=a+2"), SMTP_MAIL, 501, "5.5.4"},
    {"ENVID decoding to a control char", S("MAIL FROM:<a@b> ENVID=a+0Db"), SMTP_MAIL, 501, "5.5.4"},
    {"ENVID decoding to NUL", S("MAIL FROM:<a@b> ENVID=a+00"), SMTP_MAIL, 501, "5.5.4"},
    {"NOTIFY NEVER with others", S("RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS"), SMTP_RCPT, 501, "5.5.4"},
    {"NOTIFY unknown word", S("RCPT TO:<a@b> NOTIFY=SOMETIMES"), SMTP_RCPT, 501, "5.5.4"},
    {"NOTIFY empty item", S("RCPT TO:<a@b> NOTIFY=SUCCESS,,DELAY"), SMTP_RCPT, 501, "5.5.4"},
    {"NOTIFY trailing comma", S("RCPT TO:<a@b> NOTIFY=SUCCESS,"), SMTP_RCPT, 501, "5.5.4"},
    {"NOTIFY without value", S("RCPT TO:<a@b> NOTIFY"), SMTP_RCPT, 501, "5.5.4"},
    {"ORCPT without type", S("RCPT TO:<a@b> ORCPT=a@b"), SMTP_RCPT, 501, "5.5.4"},
    {"ORCPT with empty address", S("RCPT TO:<a@b> ORCPT=rfc822;"), SMTP_RCPT, 501, "5.5.4"},
    {"ORCPT with empty type", S("RCPT TO:<a@b> ORCPT=;a@b"), SMTP_RCPT, 501, "5.5.4"},
    {"ORCPT bad xtext", S("RCPT TO:<a@b> ORCPT=rfc822;a+zz"), SMTP_RCPT, 501, "5.5.4"},
    {"parameter keyword starting with hyphen", S("MAIL FROM:<a@b> -X"), SMTP_MAIL, 501, "5.5.4"},
    {"parameter value with equals sign", S("MAIL FROM:<a@b> ENVID=a=b"), SMTP_MAIL, 501, "5.5.4"},
    {"parameter value with 8-bit byte", S("MAIL FROM:<a@b> ENVID=\xc3\xa9"), SMTP_MAIL, 501,
     "5.5.4"},
    {"bare equals as parameter", S("MAIL FROM:<a@b> =x"), SMTP_MAIL, 501, "5.5.4"},
    {"DATA with argument", S("DATA now"), SMTP_DATA, 501, "5.5.4"},
    {"RSET with argument", S("RSET x"), SMTP_RSET, 501, "5.5.4"},
    {"QUIT with argument", S("QUIT now"), SMTP_QUIT, 501, "5.5.4"},
    {"STARTTLS with argument", S("STARTTLS x"), SMTP_STARTTLS, 501, "5.5.4"},
    {"BDAT without size", S("BDAT"), SMTP_BDAT, 501, "5.5.4"},
    {"BDAT with only LAST", S("BDAT LAST"), SMTP_BDAT, 501, "5.5.4"},
    {"BDAT negative size", S("BDAT -5"), SMTP_BDAT, 501, "5.5.4"},
    {"BDAT size overflow", S("BDAT 99999999999999999999999"), SMTP_BDAT, 501, "5.5.4"},
    {"BDAT junk after size", S("BDAT 10 FIRST"), SMTP_BDAT, 501, "5.5.4"},
    {"BDAT junk after LAST", S("BDAT 10 LAST x"), SMTP_BDAT, 501, "5.5.4"},
    {"BDAT size with letters", S("BDAT 10k"), SMTP_BDAT, 501, "5.5.4"},
};

static void test_refusals(void **state)
{
	for (size_t i = 0; i < sizeof(err_cases) / sizeof(err_cases[0]); i++) {
		const struct err_case *c = &err_cases[i];
		struct smtp_cmd cmd;
		struct smtp_parse_error err;
		print_message("case: %s\n", c->name);
		assert_int_equal(smtp_parse_command(c->line, c->len, &cmd, &err), SMTP_PARSE_ERROR);
		assert_int_equal(cmd.verb, c->verb);
		assert_int_equal(err.code, c->code);
		assert_string_equal(err.enhanced, c->enhanced);
		assert_non_null(err.text);
		assert_true(strlen(err.text) > 0);
	}
}

/* ---------------------------------------------------------------- paths */

struct path_case {
	const char *name;
	const char *line;
	enum smtp_verb verb;
	bool null_path;
	bool has_domain;
	bool quoted;
	bool utf8;
	const char *addr;
	const char *local;
	const char *domain;
};

static const struct path_case path_cases[] = {
    {"plain sender", "MAIL FROM:<user@example.org>", SMTP_MAIL, false, true, false, false,
     "user@example.org", "user", "example.org"},
    {"verb and keyword case-insensitive", "mail from:<a@b>", SMTP_MAIL, false, true, false, false,
     "a@b", "a", "b"},
    {"mixed-case keyword", "MaIl FrOm:<a@b>", SMTP_MAIL, false, true, false, false, "a@b", "a",
     "b"},
    {"space after colon tolerated", "MAIL FROM: <a@b>", SMTP_MAIL, false, true, false, false, "a@b",
     "a", "b"},
    {"spaces around colon tolerated", "RCPT TO : <a@b>", SMTP_RCPT, false, true, false, false,
     "a@b", "a", "b"},
    {"domain case kept as sent", "RCPT TO:<User@Example.ORG>", SMTP_RCPT, false, true, false, false,
     "User@Example.ORG", "User", "Example.ORG"},
    {"null reverse path", "MAIL FROM:<>", SMTP_MAIL, true, false, false, false, "", "", ""},
    {"null reverse path with space", "MAIL FROM: <>", SMTP_MAIL, true, false, false, false, "", "",
     ""},
    {"postmaster without domain", "RCPT TO:<Postmaster>", SMTP_RCPT, false, false, false, false,
     "Postmaster", "Postmaster", ""},
    {"postmaster lowercase", "RCPT TO:<postmaster>", SMTP_RCPT, false, false, false, false,
     "postmaster", "postmaster", ""},
    {"postmaster with domain is ordinary", "RCPT TO:<postmaster@x.org>", SMTP_RCPT, false, true,
     false, false, "postmaster@x.org", "postmaster", "x.org"},
    {"source route stripped", "RCPT TO:<@a.org,@b.org:user@c.org>", SMTP_RCPT, false, true, false,
     false, "user@c.org", "user", "c.org"},
    {"single hop source route stripped", "MAIL FROM:<@relay:u@d>", SMTP_MAIL, false, true, false,
     false, "u@d", "u", "d"},
    {"atext specials in local part", "MAIL FROM:<a!#$%&'*+-/=?^_`{|}~b@d>", SMTP_MAIL, false, true,
     false, false, "a!#$%&'*+-/=?^_`{|}~b@d", "a!#$%&'*+-/=?^_`{|}~b", "d"},
    {"dotted local part", "MAIL FROM:<first.last@d>", SMTP_MAIL, false, true, false, false,
     "first.last@d", "first.last", "d"},
    {"needless quotes dropped in addr", "RCPT TO:<\"john\"@d>", SMTP_RCPT, false, true, true, false,
     "john@d", "john", "d"},
    {"quoted local with space keeps quotes", "RCPT TO:<\"john smith\"@d>", SMTP_RCPT, false, true,
     true, false, "\"john smith\"@d", "john smith", "d"},
    {"quoted-pair dequoted and re-escaped", "RCPT TO:<\"a\\\"b\\\\c\"@d>", SMTP_RCPT, false, true,
     true, false, "\"a\\\"b\\\\c\"@d", "a\"b\\c", "d"},
    {"needless quoted-pair dropped", "RCPT TO:<\"\\a\"@d>", SMTP_RCPT, false, true, true, false,
     "a@d", "a", "d"},
    {"quoted local with at sign and bracket", "RCPT TO:<\"a@b>\"@d>", SMTP_RCPT, false, true, true,
     false, "\"a@b>\"@d", "a@b>", "d"},
    {"quoted dots that are not a dot-atom", "RCPT TO:<\"a..b\"@d>", SMTP_RCPT, false, true, true,
     false, "\"a..b\"@d", "a..b", "d"},
    {"IPv4 address literal", "RCPT TO:<u@[192.0.2.1]>", SMTP_RCPT, false, true, false, false,
     "u@[192.0.2.1]", "u", "[192.0.2.1]"},
    {"IPv6 address literal", "RCPT TO:<u@[IPv6:2001:db8::1]>", SMTP_RCPT, false, true, false, false,
     "u@[IPv6:2001:db8::1]", "u", "[IPv6:2001:db8::1]"},
    {"IPv6 tag case-insensitive", "RCPT TO:<u@[ipv6:::1]>", SMTP_RCPT, false, true, false, false,
     "u@[ipv6:::1]", "u", "[ipv6:::1]"},
    {"numeric and hyphenated labels", "RCPT TO:<u@1-2.3com.x-y>", SMTP_RCPT, false, true, false,
     false, "u@1-2.3com.x-y", "u", "1-2.3com.x-y"},
    {"UTF-8 local part", "RCPT TO:<henry\xe2\x85\xa3@testserver>", SMTP_RCPT, false, true, false,
     true, "henry\xe2\x85\xa3@testserver", "henry\xe2\x85\xa3", "testserver"},
    {"UTF-8 domain", "MAIL FROM:<a@b\xc3\xa9.fr>", SMTP_MAIL, false, true, false, true,
     "a@b\xc3\xa9.fr", "a", "b\xc3\xa9.fr"},
    {"UTF-8 in quoted local", "RCPT TO:<\"\xc3\xa9 x\"@d>", SMTP_RCPT, false, true, true, true,
     "\"\xc3\xa9 x\"@d", "\xc3\xa9 x", "d"},
    {"4-byte UTF-8", "RCPT TO:<\xf0\x9f\x98\x80@d>", SMTP_RCPT, false, true, false, true,
     "\xf0\x9f\x98\x80@d", "\xf0\x9f\x98\x80", "d"},
};

static void test_paths(void **state)
{
	for (size_t i = 0; i < sizeof(path_cases) / sizeof(path_cases[0]); i++) {
		const struct path_case *c = &path_cases[i];
		struct smtp_cmd cmd;
		struct smtp_parse_error err;
		print_message("case: %s\n", c->name);
		enum smtp_parse_status st =
		    smtp_parse_command(c->line, strlen(c->line), &cmd, &err);
		if (st != SMTP_PARSE_OK)
			fail_msg("%s: %d %s %s", c->name, err.code, err.enhanced, err.text);
		assert_int_equal(cmd.verb, c->verb);
		assert_int_equal(cmd.path.null_path, c->null_path);
		assert_int_equal(cmd.path.has_domain, c->has_domain);
		assert_int_equal(cmd.path.quoted, c->quoted);
		assert_int_equal(cmd.path.utf8, c->utf8);
		assert_string_equal(cmd.path.addr, c->addr);
		assert_string_equal(cmd.path.local, c->local);
		assert_string_equal(cmd.path.domain, c->domain);
	}
}

/* ------------------------------------------------------------ parameters */

struct param_case {
	const char *name;
	const char *line;
	bool has_size;
	uint64_t size;
	enum smtp_body body;
	bool smtputf8;
	enum smtp_ret ret;
	const char *envid;
	unsigned notify;
	const char *orcpt;
};

static const struct param_case param_cases[] = {
    {"no parameters", "MAIL FROM:<a@b>", false, 0, SMTP_BODY_NONE, false, SMTP_RET_NONE, "", 0, ""},
    {"trailing spaces ignored", "MAIL FROM:<a@b>   ", false, 0, SMTP_BODY_NONE, false,
     SMTP_RET_NONE, "", 0, ""},
    {"SIZE", "MAIL FROM:<a@b> SIZE=12345", true, 12345, SMTP_BODY_NONE, false, SMTP_RET_NONE, "", 0,
     ""},
    {"SIZE zero", "MAIL FROM:<> SIZE=0", true, 0, SMTP_BODY_NONE, false, SMTP_RET_NONE, "", 0, ""},
    {"SIZE at 64-bit max", "MAIL FROM:<a@b> SIZE=18446744073709551615", true, UINT64_MAX,
     SMTP_BODY_NONE, false, SMTP_RET_NONE, "", 0, ""},
    {"all MAIL parameters, any case, several spaces",
     "MAIL FROM:<a@b>  size=1  Body=8BITMIME smtputf8 ret=hdrs ENVID=QQ+2Bx+3Dy", true, 1,
     SMTP_BODY_8BITMIME, true, SMTP_RET_HDRS, "QQ+x=y", 0, ""},
    {"BODY 7BIT", "MAIL FROM:<a@b> BODY=7bit", false, 0, SMTP_BODY_7BIT, false, SMTP_RET_NONE, "",
     0, ""},
    {"BODY BINARYMIME", "MAIL FROM:<a@b> BODY=BINARYMIME", false, 0, SMTP_BODY_BINARYMIME, false,
     SMTP_RET_NONE, "", 0, ""},
    {"RET FULL", "MAIL FROM:<a@b> RET=FULL", false, 0, SMTP_BODY_NONE, false, SMTP_RET_FULL, "", 0,
     ""},
    {"NOTIFY NEVER", "RCPT TO:<a@b> NOTIFY=NEVER", false, 0, SMTP_BODY_NONE, false, SMTP_RET_NONE,
     "", SMTP_NOTIFY_NEVER, ""},
    {"NOTIFY list", "RCPT TO:<a@b> notify=success,Failure,DELAY", false, 0, SMTP_BODY_NONE, false,
     SMTP_RET_NONE, "", SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY, ""},
    {"ORCPT decoded keeping its type", "RCPT TO:<a@b> ORCPT=rfc822;x+2By@example.org", false, 0,
     SMTP_BODY_NONE, false, SMTP_RET_NONE, "", 0, "rfc822;x+y@example.org"},
    {"ORCPT and NOTIFY together", "RCPT TO:<a@b> ORCPT=RFC822;a@b NOTIFY=FAILURE", false, 0,
     SMTP_BODY_NONE, false, SMTP_RET_NONE, "", SMTP_NOTIFY_FAILURE, "RFC822;a@b"},
    {"postmaster with params", "RCPT TO:<Postmaster> NOTIFY=DELAY", false, 0, SMTP_BODY_NONE, false,
     SMTP_RET_NONE, "", SMTP_NOTIFY_DELAY, ""},
};

static void test_params(void **state)
{
	for (size_t i = 0; i < sizeof(param_cases) / sizeof(param_cases[0]); i++) {
		const struct param_case *c = &param_cases[i];
		struct smtp_cmd cmd;
		struct smtp_parse_error err;
		print_message("case: %s\n", c->name);
		if (smtp_parse_command(c->line, strlen(c->line), &cmd, &err) != SMTP_PARSE_OK)
			fail_msg("%s: %d %s %s", c->name, err.code, err.enhanced, err.text);
		assert_int_equal(cmd.has_size, c->has_size);
		assert_true(cmd.size == c->size);
		assert_int_equal(cmd.body, c->body);
		assert_int_equal(cmd.smtputf8, c->smtputf8);
		assert_int_equal(cmd.ret, c->ret);
		assert_string_equal(cmd.envid, c->envid);
		assert_int_equal(cmd.notify, c->notify);
		assert_string_equal(cmd.orcpt, c->orcpt);
	}
}

/* ------------------------------------------------- other verbs and args */

struct verb_case {
	const char *name;
	const char *line;
	enum smtp_verb verb;
	const char *arg;
	uint64_t chunk;
	bool last;
};

static const struct verb_case verb_cases[] = {
    {"HELO with domain", "HELO localhost", SMTP_HELO, "localhost", 0, false},
    {"EHLO lowercase verb", "ehlo mail.example.org", SMTP_EHLO, "mail.example.org", 0, false},
    {"EHLO IPv4 literal", "EHLO [192.0.2.7]", SMTP_EHLO, "[192.0.2.7]", 0, false},
    {"EHLO IPv6 literal", "EHLO [IPv6:::1]", SMTP_EHLO, "[IPv6:::1]", 0, false},
    {"EHLO underscore tolerated", "EHLO my_pc.local", SMTP_EHLO, "my_pc.local", 0, false},
    {"EHLO trailing space trimmed", "EHLO host ", SMTP_EHLO, "host", 0, false},
    {"DATA", "DATA", SMTP_DATA, "", 0, false},
    {"DATA trailing space tolerated", "data ", SMTP_DATA, "", 0, false},
    {"RSET", "RSET", SMTP_RSET, "", 0, false},
    {"QUIT", "quit", SMTP_QUIT, "", 0, false},
    {"STARTTLS", "StartTLS", SMTP_STARTTLS, "", 0, false},
    {"NOOP without argument", "NOOP", SMTP_NOOP, "", 0, false},
    {"NOOP keeps its argument", "NOOP hello there", SMTP_NOOP, "hello there", 0, false},
    {"HELP with topic", "HELP MAIL", SMTP_HELP, "MAIL", 0, false},
    {"VRFY argument", "VRFY <user@d>", SMTP_VRFY, "<user@d>", 0, false},
    {"EXPN argument", "EXPN list", SMTP_EXPN, "list", 0, false},
    {"AUTH mechanism (the initial response apart)", "AUTH PLAIN dXNlcgB1c2VyAHBhc3M=", SMTP_AUTH,
     "PLAIN", 0, false},
    {"AUTH without mechanism left to the session", "AUTH", SMTP_AUTH, "", 0, false},
    {"BDAT size", "BDAT 1000", SMTP_BDAT, "", 1000, false},
    {"BDAT zero LAST", "BDAT 0 LAST", SMTP_BDAT, "", 0, true},
    {"BDAT last lowercase", "bdat 42 last", SMTP_BDAT, "", 42, true},
    {"BDAT max size", "BDAT 18446744073709551615", SMTP_BDAT, "", UINT64_MAX, false},
};

static void test_verbs(void **state)
{
	for (size_t i = 0; i < sizeof(verb_cases) / sizeof(verb_cases[0]); i++) {
		const struct verb_case *c = &verb_cases[i];
		struct smtp_cmd cmd;
		struct smtp_parse_error err;
		print_message("case: %s\n", c->name);
		if (smtp_parse_command(c->line, strlen(c->line), &cmd, &err) != SMTP_PARSE_OK)
			fail_msg("%s: %d %s %s", c->name, err.code, err.enhanced, err.text);
		assert_int_equal(cmd.verb, c->verb);
		assert_string_equal(cmd.arg, c->arg);
		assert_true(cmd.chunk_size == c->chunk);
		assert_int_equal(cmd.last, c->last);
	}
}

/*
 * A refused BDAT still tells how many bytes follow it when the size was
 * readable: the server skips them instead of running them as commands
 * ("BDAT 5 LASTX" followed by five bytes of "MAIL ..." must not execute).
 */
static void test_bdat_refusal_keeps_chunk_size(void **state)
{
	static const struct {
		const char *line;
		bool has_size;
		uint64_t size;
	} cases[] = {
	    /* clang-format off */
	    {"BDAT 5 LASTX", true, 5},
	    {"BDAT 10 LAST x", true, 10},
	    {"BDAT 7 FIRST", true, 7},
	    {"BDAT", false, 0},
	    {"BDAT LAST", false, 0},
	    {"BDAT 10k", false, 0},
	    {"BDAT -5", false, 0},
	    {"BDAT 99999999999999999999999", false, 0},
	    /* clang-format on */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct smtp_cmd cmd;
		struct smtp_parse_error err;
		print_message("case: %s\n", cases[i].line);
		assert_int_equal(
		    smtp_parse_command(cases[i].line, strlen(cases[i].line), &cmd, &err),
		    SMTP_PARSE_ERROR);
		assert_int_equal(cmd.verb, SMTP_BDAT);
		assert_int_equal(cmd.has_chunk_size, cases[i].has_size);
		if (cases[i].has_size)
			assert_true(cmd.chunk_size == cases[i].size);
	}
	struct smtp_cmd ok;
	assert_int_equal(smtp_parse_command("BDAT 3 LAST", 11, &ok, NULL), SMTP_PARSE_OK);
	assert_true(ok.has_chunk_size && ok.chunk_size == 3 && ok.last);
}

/* ---------------------------------------------------------------- limits */

/* Builds "PREFIX<local@domain>" with the given part lengths into buf. */
static size_t build_addr(char *buf, size_t cap, const char *prefix, size_t local_len,
                         size_t label_len, size_t labels)
{
	size_t n = (size_t)snprintf(buf, cap, "%s<", prefix);
	for (size_t i = 0; i < local_len; i++)
		buf[n++] = 'l';
	buf[n++] = '@';
	for (size_t l = 0; l < labels; l++) {
		if (l)
			buf[n++] = '.';
		for (size_t i = 0; i < label_len; i++)
			buf[n++] = 'd';
	}
	buf[n++] = '>';
	assert_true(n < cap);
	buf[n] = '\0';
	return n;
}

static void expect(const char *line, size_t len, int code, const char *enh)
{
	struct smtp_cmd cmd;
	struct smtp_parse_error err;
	enum smtp_parse_status st = smtp_parse_command(line, len, &cmd, &err);
	if (code == 0) {
		if (st != SMTP_PARSE_OK)
			fail_msg("expected OK: %d %s %s", err.code, err.enhanced, err.text);
		return;
	}
	assert_int_equal(st, SMTP_PARSE_ERROR);
	assert_int_equal(err.code, code);
	assert_string_equal(err.enhanced, enh);
}

/* AUTH: the mechanism in arg, the initial response where it is in the line
 * (it may be longer than arg: RFC 4954 §4 allows 12288 octets). */
static void test_auth_command(void **state)
{
	static const struct {
		const char *line, *mech, *initial;
	} cases[] = {
	    {"AUTH PLAIN dXNlcgB1c2VyAHBhc3M=", "PLAIN", "dXNlcgB1c2VyAHBhc3M="},
	    {"auth login", "login", NULL},
	    {"AUTH PLAIN =", "PLAIN", "="},
	    {"AUTH  XOAUTH2   dG9rZW4=  ", "XOAUTH2", "dG9rZW4="}, /* extra spaces tolerated */
	    {"AUTH CRAM-MD5 ", "CRAM-MD5", NULL},
	    {"AUTH", "", NULL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct smtp_cmd cmd;
		struct smtp_parse_error err;
		print_message("case: %s\n", cases[i].line);
		assert_int_equal(
		    smtp_parse_command(cases[i].line, strlen(cases[i].line), &cmd, &err),
		    SMTP_PARSE_OK);
		assert_int_equal(cmd.verb, SMTP_AUTH);
		assert_string_equal(cmd.arg, cases[i].mech);
		if (!cases[i].initial) {
			assert_null(cmd.auth_initial);
			continue;
		}
		assert_int_equal(cmd.auth_initial_len, strlen(cases[i].initial));
		assert_memory_equal(cmd.auth_initial, cases[i].initial, cmd.auth_initial_len);
		/* it points into the line: no copy, no length limit of its own */
		assert_true(cmd.auth_initial > cases[i].line &&
		            cmd.auth_initial < cases[i].line + strlen(cases[i].line));
	}

	/* an initial response of SMTP_AUTH_LINE_MAX is taken; one more byte is 500 5.5.6 */
	size_t n = 13 + SMTP_AUTH_LINE_MAX + 1;
	char *line = malloc(n + 1);
	assert_non_null(line);
	memcpy(line, "AUTH XOAUTH2 ", 13);
	memset(line + 13, 'A', SMTP_AUTH_LINE_MAX + 1);
	struct smtp_cmd cmd;
	struct smtp_parse_error err;
	assert_int_equal(smtp_parse_command(line, n - 1, &cmd, &err), SMTP_PARSE_OK);
	assert_int_equal(cmd.auth_initial_len, SMTP_AUTH_LINE_MAX);
	assert_int_equal(smtp_parse_command(line, n, &cmd, &err), SMTP_PARSE_ERROR);
	assert_int_equal(err.code, 500);
	assert_string_equal(err.enhanced, "5.5.6");
	free(line);
}

/* MAIL's AUTH= (RFC 4954 §5): "<>" or an xtext-encoded mailbox. */
static void test_mail_auth_param(void **state)
{
	static const struct {
		const char *line;
		int code; /* 0: accepted */
		const char *auth;
	} cases[] = {
	    {"MAIL FROM:<a@b.test> AUTH=<>", 0, "<>"},
	    {"MAIL FROM:<a@b.test> AUTH=alice@b.test", 0, "alice@b.test"},
	    {"MAIL FROM:<a@b.test> auth=al+2Bice@b.test SIZE=10", 0, "al+ice@b.test"},
	    {"MAIL FROM:<a@b.test> AUTH=alice", 501, NULL},        /* not an address */
	    {"MAIL FROM:<a@b.test> AUTH=a+0Ab@c.test", 501, NULL}, /* a control character */
	    {"MAIL FROM:<a@b.test> AUTH=a+ZZ@c.test", 501, NULL},  /* bad xtext */
	    {"MAIL FROM:<a@b.test> AUTH=<> AUTH=<>", 501, NULL},   /* twice */
	    {"RCPT TO:<a@b.test> AUTH=<>", 555, NULL},             /* MAIL only */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct smtp_cmd cmd;
		struct smtp_parse_error err;
		print_message("case: %s\n", cases[i].line);
		enum smtp_parse_status st =
		    smtp_parse_command(cases[i].line, strlen(cases[i].line), &cmd, &err);
		if (cases[i].code) {
			assert_int_equal(st, SMTP_PARSE_ERROR);
			assert_int_equal(err.code, cases[i].code);
			continue;
		}
		assert_int_equal(st, SMTP_PARSE_OK);
		assert_string_equal(cmd.auth_param, cases[i].auth);
	}
	struct smtp_cmd cmd;
	struct smtp_parse_error err;
	assert_int_equal(smtp_parse_command("MAIL FROM:<a@b>", 15, &cmd, &err), SMTP_PARSE_OK);
	assert_string_equal(cmd.auth_param, "");
}

static void test_length_limits(void **state)
{
	static char buf[4096];
	size_t n;

	/* Local part: 256 accepted (beyond RFC's 64, as real mail needs), 257 not. */
	n = build_addr(buf, sizeof(buf), "MAIL FROM:", SMTP_LOCAL_MAX, 3, 1);
	expect(buf, n, 0, NULL);
	n = build_addr(buf, sizeof(buf), "MAIL FROM:", SMTP_LOCAL_MAX + 1, 3, 1);
	expect(buf, n, 501, "5.1.7");
	n = build_addr(buf, sizeof(buf), "RCPT TO:", SMTP_LOCAL_MAX + 1, 3, 1);
	expect(buf, n, 501, "5.1.3");
	/* Labels: 63 accepted, 64 not. */
	n = build_addr(buf, sizeof(buf), "RCPT TO:", 1, 63, 2);
	expect(buf, n, 0, NULL);
	n = build_addr(buf, sizeof(buf), "RCPT TO:", 1, 64, 2);
	expect(buf, n, 501, "5.1.3");
	/* Domain: 4 labels of 63 + 3 dots = 255 accepted; one more label not. */
	n = build_addr(buf, sizeof(buf), "RCPT TO:", 1, 63, 4);
	expect(buf, n, 0, NULL);
	n = build_addr(buf, sizeof(buf), "RCPT TO:", 1, 63, 5);
	expect(buf, n, 501, "5.1.3");
	/* Longest local and domain together still fit addr. */
	n = build_addr(buf, sizeof(buf), "RCPT TO:", SMTP_LOCAL_MAX, 63, 4);
	expect(buf, n, 0, NULL);

	/* A quoted local part of 256 characters that all need escaping does
	 * not fit the canonical form: refused as too long, never truncated. */
	n = (size_t)snprintf(buf, sizeof(buf), "RCPT TO:<\"");
	for (int i = 0; i < SMTP_LOCAL_MAX; i++) {
		buf[n++] = '\\';
		buf[n++] = '"';
	}
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\"@d>");
	expect(buf, n, 501, "5.1.3");
	struct smtp_cmd cmd;
	struct smtp_parse_error err;
	/* ... but 200 of them fit, and addr holds the escaped form. */
	n = (size_t)snprintf(buf, sizeof(buf), "RCPT TO:<\"");
	for (int i = 0; i < 200; i++) {
		buf[n++] = '\\';
		buf[n++] = '"';
	}
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\"@d>");
	assert_int_equal(smtp_parse_command(buf, n, &cmd, &err), SMTP_PARSE_OK);
	assert_int_equal(strlen(cmd.path.local), 200);
	assert_int_equal(strlen(cmd.path.addr), 2 + 400 + 2);

	/* Arguments: SMTP_ARG_MAX accepted, one more refused. */
	memcpy(buf, "NOOP ", 5);
	memset(buf + 5, 'x', SMTP_ARG_MAX + 1);
	expect(buf, 5 + SMTP_ARG_MAX, 0, NULL);
	expect(buf, 5 + SMTP_ARG_MAX + 1, 501, "5.5.4");
	memcpy(buf, "AUTH ", 5);
	expect(buf, 5 + SMTP_ARG_MAX + 1, 501, "5.5.4");

	/* HELO names longer than a domain can be. */
	memcpy(buf, "EHLO ", 5);
	memset(buf + 5, 'h', 300);
	expect(buf, 5 + 300, 501, "5.5.4");

	/* ENVID up to SMTP_XTEXT_MAX decoded characters. */
	n = (size_t)snprintf(buf, sizeof(buf), "MAIL FROM:<a@b> ENVID=");
	memset(buf + n, 'e', SMTP_XTEXT_MAX);
	expect(buf, n + SMTP_XTEXT_MAX, 0, NULL);
	memset(buf + n, 'e', SMTP_XTEXT_MAX + 1);
	expect(buf, n + SMTP_XTEXT_MAX + 1, 501, "5.5.4");
}

static void test_overlong_line_is_bounded(void **state)
{
	size_t n = 1u << 20;
	char *line = malloc(n);
	assert_non_null(line);
	struct smtp_cmd cmd;
	struct smtp_parse_error err;
	memset(line, 'A', n);
	assert_int_equal(smtp_parse_command(line, n, &cmd, &err), SMTP_PARSE_ERROR);
	assert_int_equal(err.code, 500);
	memcpy(line, "MAIL FROM:<", 11);
	assert_int_equal(smtp_parse_command(line, n, &cmd, &err), SMTP_PARSE_ERROR);
	assert_int_equal(err.code, 501);
	memcpy(line, "RCPT TO:<\"", 10);
	assert_int_equal(smtp_parse_command(line, n, &cmd, &err), SMTP_PARSE_ERROR);
	assert_int_equal(err.code, 501);
	memcpy(line, "MAIL FROM:<a@b> SIZE=", 21);
	memset(line + 21, '9', n - 21);
	assert_int_equal(smtp_parse_command(line, n, &cmd, &err), SMTP_PARSE_ERROR);
	assert_int_equal(err.code, 501);
	free(line);
}

/* The parser must not read past len: the byte after it is poison. */
static void test_never_reads_past_len(void **state)
{
	static const char *lines[] = {
	    "MAIL FROM:<a@b>",
	    "MAIL FROM:<\"a",
	    "RCPT TO:<a@[1.2.3.4",
	    "BDAT 5",
	    "MAIL FROM:<a@b> ENVID=a+4",
	    "RCPT TO:<Postmaster",
	    "EHLO h",
	    "MAIL FROM:<a\xc3",
	    "RCPT TO:<a@b> NOTIFY=NEVER",
	};
	for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
		size_t len = strlen(lines[i]);
		for (size_t cut = 0; cut <= len; cut++) {
			char *copy = malloc(cut ? cut : 1); /* exact size: ASan catches overreads */
			assert_non_null(copy);
			memcpy(copy, lines[i], cut);
			struct smtp_cmd cmd;
			struct smtp_parse_error err;
			(void)smtp_parse_command(copy, cut, &cmd, &err);
			free(copy);
		}
	}
}

/* ---------------------------------------------------------------- mailbox */

struct mbox_case {
	const char *name;
	const char *in;
	bool ok;
	const char *addr;
};

static const struct mbox_case mbox_cases[] = {
    {"plain mailbox", "user@example.org", true, "user@example.org"},
    {"quoted mailbox canonicalised", "\"user\"@example.org", true, "user@example.org"},
    {"quoted mailbox with space", "\"a b\"@d", true, "\"a b\"@d"},
    {"no domain", "user", false, NULL},
    {"postmaster alone not a mailbox", "postmaster", false, NULL},
    {"angle brackets not allowed", "<user@d>", false, NULL},
    {"trailing garbage", "user@d x", false, NULL},
    {"trailing dot", "user@d.", false, NULL},
    {"empty", "", false, NULL},
    {"address literal", "u@[10.0.0.1]", true, "u@[10.0.0.1]"},
    {"UTF-8", "j\xc3\xb6rg@d", true, "j\xc3\xb6rg@d"},
};

static void test_mailbox(void **state)
{
	for (size_t i = 0; i < sizeof(mbox_cases) / sizeof(mbox_cases[0]); i++) {
		const struct mbox_case *c = &mbox_cases[i];
		struct smtp_path p;
		print_message("case: %s\n", c->name);
		assert_int_equal(smtp_parse_mailbox(c->in, strlen(c->in), &p), c->ok);
		if (c->ok)
			assert_string_equal(p.addr, c->addr);
	}
}

/* ------------------------------------------------------------------ xtext */

struct xtext_case {
	const char *name;
	const char *in;
	bool ok;
	const char *out;
};

static const struct xtext_case xtext_cases[] = {
    {"plain", "abc", true, "abc"},
    {"empty", "", true, ""},
    {"hex plus", "a+2Bb", true, "a+b"},
    {"hex equals and space", "+3D+20", true, "= "},
    {"lowercase hex tolerated", "+2b", true, "+"},
    {"8-bit byte", "+C3+A9", true, "\xc3\xa9"},
    {"truncated hex", "a+2", false, NULL},
    {"plus at end", "a+", false, NULL},
    {"non-hex digit", "+GG", false, NULL},
    {"raw equals", "a=b", false, NULL},
    {"raw space", "a b", false, NULL},
    {"NUL encoded", "+00", false, NULL},
    {"raw 8-bit", "\xc3\xa9", false, NULL},
};

static void test_xtext_decode(void **state)
{
	char out[64];
	for (size_t i = 0; i < sizeof(xtext_cases) / sizeof(xtext_cases[0]); i++) {
		const struct xtext_case *c = &xtext_cases[i];
		print_message("case: %s\n", c->name);
		assert_int_equal(smtp_xtext_decode(c->in, strlen(c->in), out, sizeof(out)), c->ok);
		if (c->ok)
			assert_string_equal(out, c->out);
	}
	/* Output too small: refused, not truncated. */
	assert_false(smtp_xtext_decode("abcd", 4, out, 4));
	assert_true(smtp_xtext_decode("abc", 3, out, 4));
	assert_false(smtp_xtext_decode("a", 1, out, 0));
}

static void test_xtext_round_trip(void **state)
{
	char all[255];
	for (int i = 0; i < 255; i++)
		all[i] = (char)(i + 1); /* every byte but NUL */
	char enc[1024], dec[512];
	assert_true(smtp_xtext_encode(all, sizeof(all), enc, sizeof(enc)));
	for (const char *p = enc; *p; p++) {
		unsigned char c = (unsigned char)*p;
		assert_true(c >= 33 && c <= 126 && c != '=');
	}
	assert_true(smtp_xtext_decode(enc, strlen(enc), dec, sizeof(dec)));
	assert_int_equal(strlen(dec), sizeof(all));
	assert_memory_equal(dec, all, sizeof(all));

	assert_true(smtp_xtext_encode("a+b=c d", 7, enc, sizeof(enc)));
	assert_string_equal(enc, "a+2Bb+3Dc+20d");
	/* Exact fit and one short. */
	assert_true(smtp_xtext_encode("a+", 2, enc, 5));
	assert_string_equal(enc, "a+2B");
	assert_false(smtp_xtext_encode("a+", 2, enc, 4));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_refusals),
	    cmocka_unit_test(test_paths),
	    cmocka_unit_test(test_params),
	    cmocka_unit_test(test_verbs),
	    cmocka_unit_test(test_auth_command),
	    cmocka_unit_test(test_mail_auth_param),
	    cmocka_unit_test(test_bdat_refusal_keeps_chunk_size),
	    cmocka_unit_test(test_length_limits),
	    cmocka_unit_test(test_overlong_line_is_bounded),
	    cmocka_unit_test(test_never_reads_past_len),
	    cmocka_unit_test(test_mailbox),
	    cmocka_unit_test(test_xtext_decode),
	    cmocka_unit_test(test_xtext_round_trip),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
