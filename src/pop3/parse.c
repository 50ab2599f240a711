/*
 * parse.c — POP3 command lines (RFC 1939 §3, RFC 2449, RFC 2595, RFC 5034)
 * into struct pop3_cmd.
 *
 * Owns: keyword recognition, argument splitting, message numbers.
 * Never: reads past the line it was given, allocates, or does I/O; it is
 * fuzzed (tests/fuzz/fuzz_pop3_cmd.c) with whatever bytes a client may send.
 *
 * Leniency, where clients differ from the RFC: keywords in any case, extra
 * spaces before an argument and trailing spaces or tabs are ignored
 * (Dovecot does the same); arguments may be longer than RFC 1939's 40
 * octets (up to POP3_ARG_MAX). A PASS argument is the rest of the line,
 * spaces included (RFC 1939 §7 allows it).
 */
#include "pop3/pop3.h"

#include <string.h>

struct keyword {
	const char name[5];
	enum pop3_verb verb;
};

static const struct keyword keywords[] = {
    {"USER", POP3_USER}, {"PASS", POP3_PASS}, {"APOP", POP3_APOP}, {"AUTH", POP3_AUTH},
    {"STLS", POP3_STLS}, {"CAPA", POP3_CAPA}, {"STAT", POP3_STAT}, {"LIST", POP3_LIST},
    {"RETR", POP3_RETR}, {"DELE", POP3_DELE}, {"NOOP", POP3_NOOP}, {"RSET", POP3_RSET},
    {"TOP", POP3_TOP},   {"UIDL", POP3_UIDL}, {"QUIT", POP3_QUIT},
};

const char *pop3_verb_name(enum pop3_verb v)
{
	for (size_t i = 0; i < sizeof(keywords) / sizeof(keywords[0]); i++)
		if (keywords[i].verb == v)
			return keywords[i].name;
	return "?";
}

static char upper(char c)
{
	return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

/* A cursor over the arguments: p..end, spaces skipped before each. */
struct cur {
	const char *p, *end;
};

static void skip_spaces(struct cur *c)
{
	while (c->p < c->end && *c->p == ' ')
		c->p++;
}

/* The next space-separated word; false if there is none. */
static bool next_word(struct cur *c, const char **w, size_t *n)
{
	skip_spaces(c);
	if (c->p == c->end)
		return false;
	const char *s = c->p;
	while (c->p < c->end && *c->p != ' ')
		c->p++;
	*w = s;
	*n = (size_t)(c->p - s);
	return true;
}

static bool at_end(struct cur *c)
{
	skip_spaces(c);
	return c->p == c->end;
}

/* Decimal digits only, no sign; false past max or when empty. */
static bool parse_u64(const char *s, size_t n, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;
	if (n == 0 || n > 20)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (max - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

/* A message number: 1..UINT32_MAX. */
static bool msg_number(struct cur *c, uint32_t *out, const char **why)
{
	const char *w;
	size_t n;
	uint64_t v;
	if (!next_word(c, &w, &n)) {
		*why = "message number expected";
		return false;
	}
	if (!parse_u64(w, n, UINT32_MAX, &v) || v == 0) {
		*why = "invalid message number";
		return false;
	}
	*out = (uint32_t)v;
	return true;
}

/* A printable argument: no control bytes (UTF-8 is fine). */
static bool printable(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char b = (unsigned char)s[i];
		if (b < 0x20 || b == 0x7f)
			return false;
	}
	return true;
}

bool pop3_parse_command(const char *line, size_t len, struct pop3_cmd *out, const char **why)
{
	memset(out, 0, sizeof(*out));
	*why = "unknown command";

	/* Trailing spaces and tabs are noise some clients add. */
	while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t'))
		len--;
	size_t kw = 0;
	while (kw < len && line[kw] != ' ')
		kw++;
	if (kw < 3 || kw > 4)
		return false;
	char name[5] = {0};
	for (size_t i = 0; i < kw; i++)
		name[i] = upper(line[i]);
	for (size_t i = 0; i < sizeof(keywords) / sizeof(keywords[0]); i++) {
		if (strcmp(keywords[i].name, name) == 0) {
			out->verb = keywords[i].verb;
			break;
		}
	}
	if (out->verb == POP3_UNKNOWN)
		return false;

	struct cur c = {line + kw, line + len};
	const char *w;
	size_t n;
	uint64_t v;
	switch (out->verb) {
	case POP3_USER:
		if (!next_word(&c, &w, &n)) {
			*why = "user name expected";
			return false;
		}
		if (!at_end(&c)) {
			*why = "a user name has no spaces";
			return false;
		}
		if (n > POP3_ARG_MAX || !printable(w, n)) {
			*why = "invalid user name";
			return false;
		}
		out->arg = w;
		out->arg_len = n;
		return true;
	case POP3_PASS:
		skip_spaces(&c);
		n = (size_t)(c.end - c.p);
		if (n == 0) {
			*why = "password expected";
			return false;
		}
		if (n > POP3_ARG_MAX || !printable(c.p, n)) {
			*why = "invalid password";
			return false;
		}
		out->arg = c.p;
		out->arg_len = n;
		return true;
	case POP3_AUTH:
		if (!next_word(&c, &w, &n)) {
			out->arg = line + kw;
			out->arg_len = 0;
			return true; /* bare AUTH: list the mechanisms */
		}
		if (n > 40 || !printable(w, n)) {
			*why = "invalid mechanism name";
			return false;
		}
		out->arg = w;
		out->arg_len = n;
		if (next_word(&c, &w, &n)) {
			if (!printable(w, n)) {
				*why = "invalid initial response";
				return false;
			}
			out->initial = w;
			out->initial_len = n;
		}
		if (!at_end(&c)) {
			*why = "too many arguments";
			return false;
		}
		return true;
	case POP3_RETR:
	case POP3_DELE:
		if (!msg_number(&c, &out->msg, why))
			return false;
		out->has_msg = true;
		break;
	case POP3_TOP:
		if (!msg_number(&c, &out->msg, why))
			return false;
		out->has_msg = true;
		if (!next_word(&c, &w, &n)) {
			*why = "number of lines expected";
			return false;
		}
		if (!parse_u64(w, n, UINT64_MAX, &v)) {
			/* longer than 20 digits: more lines than any message has */
			bool digits = n > 0;
			for (size_t i = 0; i < n; i++)
				digits = digits && w[i] >= '0' && w[i] <= '9';
			if (!digits) {
				*why = "invalid number of lines";
				return false;
			}
			v = UINT64_MAX;
		}
		out->lines = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
		break;
	case POP3_LIST:
	case POP3_UIDL:
		if (!at_end(&c)) {
			if (!msg_number(&c, &out->msg, why))
				return false;
			out->has_msg = true;
		}
		break;
	case POP3_APOP:
		return true; /* refused by the server whatever follows */
	default:
		break;
	}
	if (!at_end(&c)) {
		*why = "too many arguments";
		return false;
	}
	return true;
}
