/*
 * users.c — the users file (Dovecot passwd-file format, see auth.h):
 * loading it into an immutable lookup table, checking passwords, and
 * editing the file in place for `tern user add/passwd/del`.
 *
 * Owns: parsing and validating the file, password schemes, the atomic
 * rewrite of the file (with an advisory lock against concurrent editors).
 *
 * Must never: compare a secret in time that depends on where it differs,
 * keep cleartext or crypt scratch space around after use (it is wiped),
 * echo a bad line's content into an error message (it may hold a
 * password), change any line of the file other than the one edited, or
 * leave the file readable by others (a new file is 0600; a rewrite keeps the
 * owner and group bits an operator set, never the ones for others).
 * users_verify() and users_file_*() block (crypt, fsync): thread pool only.
 */
#include "auth/auth.h"
#include "auth/sasl_internal.h"
#include "auth/users_internal.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/files.h"
#include "core/fsutil.h"

enum scheme {
	SCHEME_CRYPT,        /* crypt(3) hash: $6$, $2b$, $y$, ... */
	SCHEME_PLAIN,        /* cleartext */
	SCHEME_LOCKED,       /* empty or "!"/"*" hash: exists, never authenticates */
	SCHEME_CRAM_MD5,     /* Dovecot's HMAC-MD5 context, 64 hex digits */
	SCHEME_SCRAM_SHA256, /* Dovecot's "iter,salt,storedkey,serverkey" */
};

struct user {
	char *addr;       /* lowercased; one allocation "addr\0hash\0" */
	const char *hash; /* points into addr's allocation */
	size_t hashlen;
	enum scheme scheme;
	unsigned line;
	bool has_quota;       /* userdb_quota_rule=*:... given */
	uint64_t quota_bytes; /* its storage limit; 0 = unlimited */
};

struct user_db {
	struct user *users; /* file order */
	size_t n, cap;
	struct user **sorted; /* by addr, for bsearch */
};

/* One line of a file image: p/n exclude the line break ("\n" or "\r\n"),
 * full includes it. */
struct line {
	const char *p;
	size_t n;
	size_t full;
};

enum line_kind { LINE_BLANK, LINE_COMMENT, LINE_RECORD };


static bool next_line(const char *buf, size_t len, size_t *pos, struct line *l)
{
	const char *nl;

	if (*pos >= len)
		return false;
	l->p = buf + *pos;
	nl = memchr(l->p, '\n', len - *pos);
	l->full = nl != NULL ? (size_t)(nl - l->p) + 1 : len - *pos;
	l->n = nl != NULL ? l->full - 1 : l->full;
	if (l->n > 0 && l->p[l->n - 1] == '\r')
		l->n--;
	*pos += l->full;
	return true;
}

static enum line_kind classify(const struct line *l)
{
	size_t i = 0;

	while (i < l->n && (l->p[i] == ' ' || l->p[i] == '\t'))
		i++;
	if (i == l->n)
		return LINE_BLANK;
	return l->p[i] == '#' ? LINE_COMMENT : LINE_RECORD;
}

/* The address field of a record line: everything up to the first ':'. */
static size_t addr_span(const struct line *l)
{
	const char *colon = memchr(l->p, ':', l->n);

	return colon != NULL ? (size_t)(colon - l->p) : l->n;
}

static int check_address_n(const char *a, size_t n)
{
	size_t ats = 0, at = 0;

	if (n > USERS_ADDR_MAX)
		return TERN_ELIMIT;
	if (n == 0 || a[0] == '#')
		return TERN_EINVAL;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)a[i];

		if (c <= 0x20 || c == 0x7f || c == ':')
			return TERN_EINVAL;
		if (c == '@') {
			ats++;
			at = i;
		}
	}
	if (ats != 1 || at == 0 || at == n - 1)
		return TERN_EINVAL;
	return TERN_OK;
}

int users_check_address(const char *addr)
{
	if (addr == NULL)
		return TERN_EINVAL;
	return check_address_n(addr, strnlen(addr, USERS_ADDR_MAX + 1));
}

/* The length of the well-formed UTF-8 sequence at p (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	size_t k;
	uint32_t cp, min;

	if (p[0] >= 0xC2 && p[0] <= 0xDF)
		k = 2, cp = p[0] & 0x1Fu, min = 0x80;
	else if (p[0] >= 0xE0 && p[0] <= 0xEF)
		k = 3, cp = p[0] & 0x0Fu, min = 0x800;
	else if (p[0] >= 0xF0 && p[0] <= 0xF4)
		k = 4, cp = p[0] & 0x07u, min = 0x10000;
	else
		return 0;
	if (n < k)
		return 0;
	for (size_t i = 1; i < k; i++) {
		if ((p[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3Fu);
	}
	if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return k;
}

/* RFC 5322 atext, less '/' (a Maildir directory name cannot hold it). */
static bool mailbox_atext(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c != '\0' && strchr("!#$%&'*+-=?^_`{|}~", c) != NULL);
}

/* A host name as RFC 5321 has it: labels of 1-63 letters, digits and
 * '-' (not at either end), at most 253 bytes, and a last label that is not all digits (so
 * that an IPv4 address is not taken for a name). */
static bool mailbox_domain(const char *d, size_t n)
{
	size_t label = 0, digits = 0;

	if (n == 0 || n > 253)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)d[i];

		if (c == '.') {
			if (label == 0 || d[i - 1] == '-')
				return false;
			label = digits = 0;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-'))
			return false;
		if (c == '-' && label == 0)
			return false;
		if (++label > 63)
			return false;
		digits += c >= '0' && c <= '9';
	}
	return label > 0 && d[n - 1] != '-' && digits != label;
}

/* Why users_check_mailbox refuses an address: words a person can act on. */
static const char why_dots[] =
    "the local part starts or ends with '.' or has '..', which SMTP allows only in quotes and "
    "a mailbox directory name not at all";
static const char why_slash[] =
    "the local part has '/', which cannot be in a mailbox directory name";
static const char why_quoted[] =
    "the local part has a character SMTP carries only in quotes (such as '\"', a space, '\\', "
    "',', ':', ';', '<', '>', '@' or a control byte); RCPT TO finds users by the unquoted "
    "local part, so such a mailbox could never get mail";
static const char why_domain[] =
    "the domain is not a host name (letters, digits, '-' and dots, labels of at most 63; "
    "an internationalised domain in its xn-- form; no [address literal])";

int users_check_mailbox(const char *addr, const char **why)
{
	const char *unused;
	const char *at;
	size_t n, ll;

	if (why == NULL)
		why = &unused;
	*why = NULL;
	if (addr == NULL || (n = strnlen(addr, 256)) == 0 || (at = strrchr(addr, '@')) == NULL) {
		*why = "an address has the form local@domain";
		return TERN_EINVAL;
	}
	if (n > 254) {
		*why = "the address is longer than 254 bytes (RFC 5321)";
		return TERN_EINVAL;
	}
	ll = (size_t)(at - addr);
	if (ll == 0) {
		*why = "the local part (before the '@') is empty";
		return TERN_EINVAL;
	}
	if (ll > 64) {
		*why = "the local part is longer than 64 bytes (RFC 5321)";
		return TERN_EINVAL;
	}
	if (addr[0] == '#') {
		*why = "the local part starts with '#', which the users file reads as a comment";
		return TERN_EINVAL;
	}
	for (size_t i = 0; i < ll; i++) {
		unsigned char c = (unsigned char)addr[i];

		if (c == '.') {
			if (i == 0 || i == ll - 1 || addr[i - 1] == '.') {
				*why = why_dots;
				return TERN_EINVAL;
			}
		} else if (c == '/') {
			*why = why_slash;
			return TERN_EINVAL;
		} else if (c >= 0x80) {
			size_t k = utf8_len((const unsigned char *)addr + i, ll - i);

			if (k == 0) {
				*why = "the local part is not valid UTF-8";
				return TERN_EINVAL;
			}
			i += k - 1;
		} else if (!mailbox_atext(c)) {
			*why = why_quoted;
			return TERN_EINVAL;
		}
	}
	if (!mailbox_domain(at + 1, n - ll - 1)) {
		*why = why_domain;
		return TERN_EINVAL;
	}
	return TERN_OK;
}

/* Compares secrets in time that depends only on the stored length. */
static bool ct_equal(const char *stored, size_t slen, const char *given, size_t glen)
{
	volatile unsigned diff = slen != glen;

	for (size_t i = 0; i < slen; i++)
		diff |= (unsigned char)stored[i] ^ (unsigned char)(i < glen ? given[i] : 0);
	return diff == 0;
}

static void seterr(char *err, size_t errlen, const char *name, unsigned line, const char *what)
{
	if (err == NULL || errlen == 0)
		return;
	if (line > 0)
		snprintf(err, errlen, "%s:%u: %s", name, line, what);
	else
		snprintf(err, errlen, "%s: %s", name, what);
}

void users_free(struct user_db *db)
{
	if (db == NULL)
		return;
	for (size_t i = 0; i < db->n; i++) {
		struct user *u = &db->users[i];
		size_t alen = strlen(u->addr);

		/* The allocation holds a hash or a cleartext password: wipe it. */
		explicit_bzero(u->addr, alen + 1 + u->hashlen);
		free(u->addr);
	}
	free(db->users);
	free(db->sorted);
	free(db);
}

static int user_cmp(const void *a, const void *b)
{
	const struct user *x = *(struct user *const *)a, *y = *(struct user *const *)b;
	int c = strcmp(x->addr, y->addr);

	if (c != 0)
		return c;
	return (x->line > y->line) - (x->line < y->line);
}

static int user_key_cmp(const void *key, const void *elt)
{
	return strcmp(key, (*(struct user *const *)elt)->addr);
}

static const struct {
	const char *name;
	enum scheme scheme;
} schemes[] = {
    {"CRYPT", SCHEME_CRYPT},
    {"SHA512-CRYPT", SCHEME_CRYPT},
    {"SHA256-CRYPT", SCHEME_CRYPT},
    {"BLF-CRYPT", SCHEME_CRYPT},
    {"MD5-CRYPT", SCHEME_CRYPT},
    {"PLAIN", SCHEME_PLAIN},
    {"CLEARTEXT", SCHEME_PLAIN},
    {"CRAM-MD5", SCHEME_CRAM_MD5},
    {"SCRAM-SHA-256", SCHEME_SCRAM_SHA256},
};

static bool scheme_lookup(const char *p, size_t n, enum scheme *out)
{
	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
		if (strlen(schemes[i].name) == n && strncasecmp(schemes[i].name, p, n) == 0) {
			*out = schemes[i].scheme;
			return true;
		}
	}
	return false;
}

/* A Dovecot quota limit value: digits, then an optional unit b/k/M/G/T (any
 * case, an optional trailing 'B'); without a unit it is in units of dflt
 * (Dovecot: storage= is in kilobytes, bytes= in bytes). */
static const char *quota_value(const char *p, size_t n, uint64_t dflt, uint64_t *out)
{
	uint64_t v = 0, mul = dflt;
	size_t i = 0;

	if (n > 0 && (p[0] == '+' || p[0] == '-' || p[n - 1] == '%'))
		return "relative quota rules (+, -, %) are not supported";
	for (; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
		if (v > (UINT64_MAX - 9) / 10)
			return "quota limit too large";
		v = v * 10 + (uint64_t)(p[i] - '0');
	}
	if (i == 0)
		return "quota limit is not a number";
	if (i < n) {
		switch (p[i] | 0x20) {
		case 'b':
			mul = 1;
			break;
		case 'k':
			mul = 1ull << 10;
			break;
		case 'm':
			mul = 1ull << 20;
			break;
		case 'g':
			mul = 1ull << 30;
			break;
		case 't':
			mul = 1ull << 40;
			break;
		default:
			return "quota limit has an unknown unit (use b, k, M, G or T)";
		}
		i++;
		if (i < n && (p[i] | 0x20) == 'b' && mul != 1)
			i++;
		if (i != n)
			return "quota limit has an unknown unit (use b, k, M, G or T)";
	}
	if (v != 0 && mul > UINT64_MAX / v)
		return "quota limit too large";
	*out = v * mul;
	return NULL;
}

const char *users_parse_quota_rule(const char *p, size_t n, bool *applies, uint64_t *bytes)
{
	const char *colon = memchr(p, ':', n);
	const char *end = p + n;
	bool any = false;

	*applies = false;
	*bytes = 0;
	if (colon == NULL || colon == p)
		return "quota rule is not \"MAILBOX:storage=SIZE\"";
	/* Only the rule for the whole mailbox ("*"); Dovecot's per-folder rules
	 * (Trash:storage=+100M) are for Dovecot alone. */
	if (!(colon - p == 1 && p[0] == '*'))
		return NULL;
	for (const char *q = colon + 1; q <= end;) {
		const char *e = memchr(q, ':', (size_t)(end - q));
		size_t len;
		const char *why;
		uint64_t v;

		if (e == NULL)
			e = end;
		len = (size_t)(e - q);
		if (len == 6 && memcmp(q, "ignore", 6) == 0) {
			*bytes = 0;
			any = true;
		} else if (len > 8 && memcmp(q, "storage=", 8) == 0) {
			if ((why = quota_value(q + 8, len - 8, 1024, &v)) != NULL)
				return why;
			*bytes = v;
			any = true;
		} else if (len > 6 && memcmp(q, "bytes=", 6) == 0) {
			if ((why = quota_value(q + 6, len - 6, 1, &v)) != NULL)
				return why;
			*bytes = v;
			any = true;
		} else if (len > 9 && memcmp(q, "messages=", 9) == 0) {
			/* A message count limit: Dovecot enforces it, tern does not. */
			if ((why = quota_value(q + 9, len - 9, 1, &v)) != NULL)
				return why;
			any = true;
		} else if (len > 0) {
			return "quota rule has an unknown limit (use storage=, bytes= or "
			       "messages=)";
		}
		q = e + 1;
	}
	if (!any)
		return "quota rule has no limit";
	*applies = true;
	return NULL;
}

const char *users_parse_extra(const char *p, size_t n, bool *has_quota, uint64_t *bytes)
{
	static const char key[] = "userdb_quota_rule=";
	const size_t klen = sizeof(key) - 1;
	const char *end = p + n;

	*has_quota = false;
	*bytes = 0;
	while (p < end) {
		const char *sp;
		size_t len;

		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
		sp = p;
		while (sp < end && *sp != ' ' && *sp != '\t')
			sp++;
		len = (size_t)(sp - p);
		if (len > klen && strncasecmp(p, key, klen) == 0) {
			bool applies;
			uint64_t v;
			const char *why =
			    users_parse_quota_rule(p + klen, len - klen, &applies, &v);

			if (why != NULL) {
				*has_quota = false;
				*bytes = 0;
				return why;
			}
			if (applies) {
				*has_quota = true;
				*bytes = v;
			}
		}
		p = sp;
	}
	return NULL;
}

/*
 * Parses one record line into *u (allocating u->addr). Returns NULL on
 * success or the reason it is bad (never quoting the line: it may hold a
 * password); *oom is set when the failure is an allocation.
 */
static const char *parse_record(const struct line *l, struct user *u, bool *oom)
{
	size_t alen = addr_span(l), hlen;
	const char *pw, *pwend, *hash;
	enum scheme sch = SCHEME_CRYPT;
	char *mem;
	int rc;

	*oom = false;
	if (memchr(l->p, '\0', l->n) != NULL)
		return "NUL byte in line";
	if (alen == l->n)
		return "expected \"address:password\" (no ':' after the address)";
	/* A BOM (at the start of a file saved by some editors) would silently
	 * become part of the address, which then never matches. */
	if (alen >= 3 && memcmp(l->p, "\xef\xbb\xbf", 3) == 0)
		return "line starts with a UTF-8 byte order mark; remove it";
	rc = check_address_n(l->p, alen);
	if (rc == TERN_ELIMIT)
		return "address too long";
	if (rc != TERN_OK)
		return "bad address (need local@domain without spaces or control bytes)";
	pw = l->p + alen + 1;
	pwend = memchr(pw, ':', (size_t)(l->p + l->n - pw));
	if (pwend == NULL)
		pwend = l->p + l->n;
	hash = pw;
	if (pw < pwend && pw[0] == '{') {
		const char *close = memchr(pw, '}', (size_t)(pwend - pw));

		if (close == NULL)
			return "unterminated {SCHEME}";
		if (!scheme_lookup(pw + 1, (size_t)(close - pw - 1), &sch))
			return "unknown password scheme (use CRYPT, SHA512-CRYPT, BLF-CRYPT, "
			       "PLAIN, CRAM-MD5 or SCRAM-SHA-256)";
		hash = close + 1;
	}
	hlen = (size_t)(pwend - hash);
	for (size_t i = 0; i < hlen; i++) {
		if ((unsigned char)hash[i] < 0x20 || hash[i] == 0x7f)
			return "control byte in password field";
	}
	if (hlen == 0 || (sch == SCHEME_CRYPT && (hash[0] == '!' || hash[0] == '*')))
		sch = SCHEME_LOCKED;
	if (sch == SCHEME_CRAM_MD5) {
		unsigned char ctx[CRAM_MD5_CONTEXTLEN];
		bool ok = sasl_cram_parse_stored(hash, hlen, ctx) == TERN_OK;

		explicit_bzero(ctx, sizeof(ctx));
		if (!ok)
			return "CRAM-MD5 value is not 64 hex digits";
	}
	if (sch == SCHEME_SCRAM_SHA256) {
		struct scram_stored st;
		bool ok = scram_parse_stored(hash, hlen, &st) == TERN_OK;

		explicit_bzero(&st, sizeof(st));
		if (!ok)
			return "SCRAM-SHA-256 value is not \"iter,salt,storedkey,serverkey\" "
			       "(iter 4096 to 10000000, 32-byte keys)";
	}

	/* Dovecot's userdb extra fields: everything after the 7th field, joined
	 * back with ':' as Dovecot does (a quota rule has ':' in it). */
	{
		const char *p = pwend, *end = l->p + l->n;
		int colons = 0;
		const char *why;

		while (p < end && colons < 6) {
			if (*p == ':')
				colons++;
			p++;
		}
		if (colons == 6 && (why = users_parse_extra(p, (size_t)(end - p), &u->has_quota,
		                                            &u->quota_bytes)) != NULL)
			return why;
	}
	mem = malloc(alen + 1 + hlen + 1);
	if (mem == NULL) {
		*oom = true;
		return "out of memory";
	}
	memcpy(mem, l->p, alen);
	mem[alen] = '\0';
	tern_ascii_lower(mem);
	memcpy(mem + alen + 1, hash, hlen);
	mem[alen + 1 + hlen] = '\0';
	u->addr = mem;
	u->hash = mem + alen + 1;
	u->hashlen = hlen;
	u->scheme = sch;
	if (sch == SCHEME_CRYPT) {
		int cs = crypt_checksalt(u->hash);

		if (cs == CRYPT_SALT_INVALID || cs == CRYPT_SALT_METHOD_DISABLED) {
			explicit_bzero(mem, alen + 1 + hlen);
			free(mem);
			u->addr = NULL;
			return "password hash not understood by crypt(3)";
		}
	}
	return NULL;
}

int users_parse_buffer(const char *buf, size_t len, const char *name, struct user_db **out,
                       char *err, size_t errlen)
{
	struct user_db *db;
	struct line l;
	size_t pos = 0;
	unsigned lineno = 0;
	int rc = TERN_OK;

	*out = NULL;
	if (name == NULL)
		name = "(users)";
	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (len > USERS_FILE_MAX) {
		seterr(err, errlen, name, 0, "file too large");
		return TERN_ELIMIT;
	}
	db = calloc(1, sizeof(*db));
	if (db == NULL)
		goto nomem;
	while (next_line(buf, len, &pos, &l)) {
		struct user u = {0};
		const char *why;
		bool oom;

		if (lineno == UINT32_MAX) {
			seterr(err, errlen, name, lineno, "too many lines");
			rc = TERN_ELIMIT;
			goto out;
		}
		lineno++;
		if (classify(&l) != LINE_RECORD)
			continue;
		why = parse_record(&l, &u, &oom);
		if (why != NULL) {
			if (oom)
				goto nomem;
			seterr(err, errlen, name, lineno, why);
			rc = TERN_ESYNTAX;
			goto out;
		}
		u.line = lineno;
		if (db->n == db->cap) {
			size_t ncap = db->cap ? db->cap * 2 : 16;
			struct user *nu = reallocarray(db->users, ncap, sizeof(*nu));

			if (nu == NULL) {
				free(u.addr);
				goto nomem;
			}
			db->users = nu;
			db->cap = ncap;
		}
		db->users[db->n++] = u;
	}

	db->sorted = calloc(db->n ? db->n : 1, sizeof(*db->sorted));
	if (db->sorted == NULL)
		goto nomem;
	for (size_t i = 0; i < db->n; i++)
		db->sorted[i] = &db->users[i];
	qsort(db->sorted, db->n, sizeof(*db->sorted), user_cmp);
	for (size_t i = 1; i < db->n; i++) {
		if (strcmp(db->sorted[i - 1]->addr, db->sorted[i]->addr) == 0) {
			char what[96];

			snprintf(what, sizeof(what), "duplicate user (first on line %u)",
			         db->sorted[i - 1]->line);
			/* Report the later line, like a compiler's redefinition. */
			seterr(err, errlen, name, db->sorted[i]->line, what);
			rc = TERN_ESYNTAX;
			goto out;
		}
	}
	*out = db;
	return TERN_OK;
nomem:
	seterr(err, errlen, name, 0, "out of memory");
	rc = TERN_ENOMEM;
out:
	users_free(db);
	return rc;
}

/* Reads a whole file into b. *missing is set (and TERN_OK returned) when
 * it does not exist. */
static int read_file(const char *path, struct tbuf *b, bool *missing, struct stat *st)
{
	int fd, rc = TERN_OK;

	*missing = false;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT) {
			*missing = true;
			return TERN_OK;
		}
		return TERN_EIO;
	}
	if (fstat(fd, st) != 0) {
		rc = TERN_EIO;
		goto out;
	}
	if (!S_ISREG(st->st_mode)) {
		errno = EINVAL;
		rc = TERN_EIO;
		goto out;
	}
	for (;;) {
		size_t room = b->max - b->len;
		ssize_t r;

		if (room == 0) {
			/* At the cap: fine only if the file ends exactly here. */
			char c;

			do
				r = read(fd, &c, 1);
			while (r < 0 && errno == EINTR);
			rc = r == 0 ? TERN_OK : r > 0 ? TERN_ELIMIT : TERN_EIO;
			goto out;
		}
		if ((rc = tbuf_reserve(b, room < 65536 ? room : 65536)) != TERN_OK)
			goto out;
		r = read(fd, b->data + b->len, b->cap - 1 - b->len);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			rc = TERN_EIO;
			goto out;
		}
		if (r == 0)
			break;
		b->len += (size_t)r;
		b->data[b->len] = '\0';
	}
out:
	close(fd);
	return rc;
}

int users_load(const char *path, struct user_db **out, char *err, size_t errlen)
{
	char *data = NULL;
	size_t len = 0;
	int rc, en = 0;

	*out = NULL;
	if (path == NULL) {
		seterr(err, errlen, "(users)", 0, "no users file given");
		return TERN_EINVAL;
	}
	/* Through the file source: from the privileged parent's bundle when the
	 * daemon runs split (core/files.h). No file means no users. */
	rc = tern_file_read(path, USERS_FILE_MAX, &data, &len, &en);
	if (rc == TERN_EIO && en == ENOENT)
		rc = TERN_OK;
	if (rc == TERN_ELIMIT) {
		seterr(err, errlen, path, 0, "file too large");
		goto out;
	}
	if (rc != TERN_OK) {
		char ebuf[128];

		/* GNU strerror_r: thread-safe, returns the message pointer. */
		const char *why = rc != TERN_EIO ? tern_strerror(rc)
		                  : en == EINVAL ? "not a regular file"
		                                 : strerror_r(en, ebuf, sizeof(ebuf));

		seterr(err, errlen, path, 0, why);
		goto out;
	}
	rc = users_parse_buffer(data ? data : "", len, path, out, err, errlen);
out:
	if (data != NULL)
		explicit_bzero(data, len);
	free(data);
	return rc;
}

size_t users_count(const struct user_db *db)
{
	return db != NULL ? db->n : 0;
}

static const struct user *find(const struct user_db *db, const char *addr)
{
	char key[USERS_ADDR_MAX + 1];
	struct user *const *hit;
	size_t n;

	if (db == NULL || addr == NULL || db->n == 0)
		return NULL;
	n = strnlen(addr, sizeof(key));
	if (n >= sizeof(key))
		return NULL;
	memcpy(key, addr, n + 1);
	tern_ascii_lower(key);
	hit = bsearch(key, db->sorted, db->n, sizeof(*db->sorted), user_key_cmp);
	return hit != NULL ? *hit : NULL;
}

bool users_exists(const struct user_db *db, const char *addr)
{
	return find(db, addr) != NULL;
}

int users_verify(const struct user_db *db, const char *addr, const char *password)
{
	const struct user *u = find(db, addr);
	struct crypt_data *cd;
	const char *h;
	int rc = TERN_EINVAL;

	if (u == NULL)
		return TERN_ENOTFOUND;
	if (password == NULL)
		return TERN_EINVAL;
	switch (u->scheme) {
	case SCHEME_LOCKED:
		return TERN_EINVAL;
	case SCHEME_PLAIN:
		return ct_equal(u->hash, u->hashlen, password, strlen(password)) ? TERN_OK
		                                                                 : TERN_EINVAL;
	case SCHEME_CRAM_MD5:
		return sasl_cram_check_password(u->hash, u->hashlen, password);
	case SCHEME_SCRAM_SHA256: /* PBKDF2: as slow as crypt, by design */
		return sasl_scram_check_password(u->hash, u->hashlen, password);
	case SCHEME_CRYPT:
		break;
	}
	/* struct crypt_data is ~32 KiB: too big for a pool thread's stack. */
	cd = calloc(1, sizeof(*cd));
	if (cd == NULL)
		return TERN_ENOMEM;
	h = crypt_rn(password, u->hash, cd, (int)sizeof(*cd));
	/* A NULL or "*..." result means an unusable hash or an over-long
	 * password: never a match. */
	if (h != NULL && h[0] != '*' && ct_equal(u->hash, u->hashlen, h, strlen(h)))
		rc = TERN_OK;
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return rc;
}

void users_foreach(const struct user_db *db, void (*fn)(const char *addr, void *arg), void *arg)
{
	if (db == NULL || fn == NULL)
		return;
	for (size_t i = 0; i < db->n; i++)
		fn(db->users[i].addr, arg);
}

/* A password we will hash: present, no line breaks (NUL cannot occur in a
 * C string), not longer than crypt accepts. */
static int check_password(const char *password)
{
	size_t n;

	if (password == NULL)
		return TERN_EINVAL;
	n = strnlen(password, CRYPT_MAX_PASSPHRASE_SIZE);
	if (n >= CRYPT_MAX_PASSPHRASE_SIZE)
		return TERN_ELIMIT;
	if (memchr(password, '\n', n) != NULL || memchr(password, '\r', n) != NULL)
		return TERN_EINVAL;
	return TERN_OK;
}

int users_hash_password(const char *password, char *out, size_t outlen)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd = NULL;
	const char *h;
	int rc, n;

	if (out != NULL && outlen > 0)
		out[0] = '\0';
	if (out == NULL || outlen == 0)
		return TERN_ELIMIT;
	if ((rc = check_password(password)) != TERN_OK)
		return rc;
	/* NULL random bytes: libxcrypt reads the OS's random source itself. */
	if (crypt_gensalt_rn("$6$", 0, NULL, 0, salt, (int)sizeof(salt)) == NULL)
		return TERN_EIO;
	cd = calloc(1, sizeof(*cd));
	if (cd == NULL)
		return TERN_ENOMEM;
	h = crypt_rn(password, salt, cd, (int)sizeof(*cd));
	if (h == NULL || h[0] == '*') {
		rc = TERN_EIO;
		goto out;
	}
	n = snprintf(out, outlen, "{SHA512-CRYPT}%s", h);
	if (n < 0 || (size_t)n >= outlen) {
		out[0] = '\0';
		rc = TERN_ELIMIT;
		goto out;
	}
	rc = TERN_OK;
out:
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return rc;
}

static bool span_ieq(const char *a, size_t an, const char *b)
{
	return strlen(b) == an && strncasecmp(a, b, an) == 0;
}

int users_edit_buffer(const char *buf, size_t len, enum users_edit_op op, const char *addr,
                      const char *pwfield, struct tbuf *out)
{
	struct line l;
	size_t pos = 0;
	bool found = false;
	int rc;

	if ((rc = users_check_address(addr)) != TERN_OK)
		return rc;
	if (op != USERS_EDIT_DEL && (pwfield == NULL || strpbrk(pwfield, ":\r\n") != NULL))
		return TERN_EINVAL;
	if (op != USERS_EDIT_ADD && op != USERS_EDIT_PASSWD && op != USERS_EDIT_DEL)
		return TERN_EINVAL;
	while (next_line(buf, len, &pos, &l)) {
		size_t alen;

		if (classify(&l) != LINE_RECORD || !span_ieq(l.p, alen = addr_span(&l), addr)) {
			if ((rc = tbuf_append(out, l.p, l.full)) != TERN_OK)
				return rc;
			continue;
		}
		found = true;
		if (op == USERS_EDIT_ADD)
			return TERN_EEXIST;
		if (op == USERS_EDIT_DEL)
			continue;
		/* PASSWD: keep the address as written and every field after the
		 * password (uid, gid, ..., and the line break) byte for byte. */
		{
			const char *rest = l.p + l.full;

			if (alen < l.n) {
				const char *pw = l.p + alen + 1;
				const char *c = memchr(pw, ':', (size_t)(l.p + l.n - pw));

				rest = c != NULL ? c : l.p + l.n;
			} else {
				rest = l.p + l.n;
			}
			if ((rc = tbuf_append(out, l.p, alen)) != TERN_OK ||
			    (rc = tbuf_append(out, ":", 1)) != TERN_OK ||
			    (rc = tbuf_append_str(out, pwfield)) != TERN_OK ||
			    (rc = tbuf_append(out, rest, (size_t)(l.p + l.full - rest))) != TERN_OK)
				return rc;
		}
	}
	if (op == USERS_EDIT_ADD) {
		char lower[USERS_ADDR_MAX + 1];

		tern_strlcpy(lower, addr, sizeof(lower));
		tern_ascii_lower(lower);
		if (out->len > 0 && out->data[out->len - 1] != '\n' &&
		    (rc = tbuf_append(out, "\n", 1)) != TERN_OK)
			return rc;
		if ((rc = tbuf_printf(out, "%s:%s\n", lower, pwfield)) != TERN_OK)
			return rc;
		return TERN_OK;
	}
	return found ? TERN_OK : TERN_ENOTFOUND;
}


/*
 * Replaces path with data (core/fsutil: temp file, fsync, rename, directory
 * fsync). A new file is 0600. An existing one keeps the owner and group
 * permissions an operator gave it (0640 and group dovecot, so that
 * Dovecot's auth process can read it: `tern dovecot-config`) but never any
 * for others, and, when root edits it, its owner and group (the account
 * tern drops to must still read it).
 */
static int write_atomic(const char *path, const char *data, size_t len, const struct stat *orig)
{
	struct tern_write_opts o = {.mode = 0600, .uid = (uid_t)-1, .gid = (gid_t)-1};

	if (orig != NULL) {
		o.mode = orig->st_mode & 0770;
		o.uid = orig->st_uid;
		o.gid = orig->st_gid;
	}
	return tern_write_file_atomic(path, data, len, &o);
}

/*
 * Serialises editors (two `tern user add` runs, or API threads) on
 * PATH.lock, so that no edit is lost between read and rename. The lock
 * file is left in place: removing it would race with the next editor.
 */
static int lock_file(const char *path, int *lockfd)
{
	char lp[4096];
	int n = snprintf(lp, sizeof(lp), "%s.lock", path);

	if (n < 0 || (size_t)n >= sizeof(lp))
		return TERN_ELIMIT;
	*lockfd = open(lp, O_CREAT | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (*lockfd < 0)
		return TERN_EIO;
	while (flock(*lockfd, LOCK_EX) != 0) {
		if (errno != EINTR) {
			close(*lockfd);
			*lockfd = -1;
			return TERN_EIO;
		}
	}
	return TERN_OK;
}

static int file_edit(const char *path, enum users_edit_op op, const char *addr,
                     const char *password)
{
	struct tbuf in = TBUF_INIT(USERS_FILE_MAX), out = TBUF_INIT(USERS_FILE_MAX);
	char pwfield[CRYPT_OUTPUT_SIZE + 32];
	struct stat st;
	bool missing;
	int lockfd = -1, rc;

	pwfield[0] = '\0';
	if (path == NULL)
		return TERN_EINVAL;
	if ((rc = users_check_address(addr)) != TERN_OK)
		return rc;
	/* A new user must be able to receive mail; passwd and del still work
	 * on any entry the file holds, so an old bad one can be removed. */
	if (op == USERS_EDIT_ADD && users_check_mailbox(addr, NULL) != TERN_OK)
		return TERN_EINVAL;
	/* Hash before taking the lock: crypt is the slow part. */
	if (op != USERS_EDIT_DEL &&
	    (rc = users_hash_password(password, pwfield, sizeof(pwfield))) != TERN_OK)
		return rc;
	if ((rc = lock_file(path, &lockfd)) != TERN_OK)
		goto out;
	if ((rc = read_file(path, &in, &missing, &st)) != TERN_OK)
		goto out;
	rc = users_edit_buffer(in.data ? in.data : "", in.len, op, addr, pwfield, &out);
	if (rc != TERN_OK)
		goto out;
	rc = write_atomic(path, out.data ? out.data : "", out.len, missing ? NULL : &st);
out:
	if (lockfd >= 0)
		close(lockfd); /* releases the flock */
	if (in.data != NULL)
		explicit_bzero(in.data, in.len);
	if (out.data != NULL)
		explicit_bzero(out.data, out.len);
	tbuf_free(&in);
	tbuf_free(&out);
	return rc;
}

int users_file_add(const char *path, const char *addr, const char *password)
{
	return file_edit(path, USERS_EDIT_ADD, addr, password);
}

int users_file_passwd(const char *path, const char *addr, const char *password)
{
	return file_edit(path, USERS_EDIT_PASSWD, addr, password);
}

int users_file_del(const char *path, const char *addr)
{
	return file_edit(path, USERS_EDIT_DEL, addr, NULL);
}

int users_get_secret(const struct user_db *db, const char *addr, enum user_secret_scheme *scheme,
                     const char **secret, size_t *len)
{
	const struct user *u = find(db, addr);

	if (u == NULL)
		return TERN_ENOTFOUND;
	switch (u->scheme) {
	case SCHEME_CRYPT:
		*scheme = USER_SECRET_CRYPT;
		break;
	case SCHEME_PLAIN:
		*scheme = USER_SECRET_PLAIN;
		break;
	case SCHEME_LOCKED:
		*scheme = USER_SECRET_LOCKED;
		break;
	case SCHEME_CRAM_MD5:
		*scheme = USER_SECRET_CRAM_MD5;
		break;
	case SCHEME_SCRAM_SHA256:
		*scheme = USER_SECRET_SCRAM_SHA256;
		break;
	}
	*secret = u->hash;
	*len = u->hashlen;
	return TERN_OK;
}

int users_quota(const struct user_db *db, const char *addr, uint64_t *bytes)
{
	const struct user *u = db != NULL ? find(db, addr) : NULL;

	if (u == NULL || !u->has_quota)
		return TERN_ENOTFOUND;
	*bytes = u->quota_bytes;
	return TERN_OK;
}
