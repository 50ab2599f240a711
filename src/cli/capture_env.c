/*
 * capture_env.c — `tern capture`'s Mailpit-compatible options: the flag
 * and MP_* environment table, their parsing and checks, and the part of
 * them that lands in the config (see capture_env.h).
 *
 * Owns: the option table (one row per setting: flag, Mailpit's flag name,
 * MP_* names, whether tern honours it), reading them from argv and the
 * environment, and the config overrides.
 * Must never: let an environment variable override a flag; accept an
 * option tern cannot honour as if it did (a login file that would not be
 * checked, TLS that would not be offered): those stop the start with a
 * reason; print a secret (MP_UI_AUTH and friends are never echoed).
 */
#include "cli/capture_env.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/files.h"
#include "core/log.h"
#include "http/basic_auth.h"
#include "store/capture_tags.h"
#include "tls/tls.h"

struct capx_row {
	enum capx key;
	const char *flag;  /* tern's flag */
	const char *alias; /* Mailpit's flag, when it differs, or NULL */
	const char *env;   /* MP_* name, or NULL */
	const char *env2;  /* an older MP_* name, or NULL */
	bool boolean;      /* a switch: takes no value on the command line */
	bool supported;    /* false: asking for it stops the start */
};

static const struct capx_row rows[] = {
    {CX_SMTP, "--smtp", NULL, "MP_SMTP_BIND_ADDR", NULL, false, true},
    {CX_HTTP, "--http", "--listen", "MP_UI_BIND_ADDR", NULL, false, true},
    {CX_DATA_DIR, "--data-dir", NULL, NULL, NULL, false, true},
    {CX_DATABASE, "--database", NULL, "MP_DATABASE", "MP_DATA_FILE", false, true},
    {CX_MAX, "--max", NULL, "MP_MAX_MESSAGES", NULL, false, true},
    {CX_MAX_AGE, "--max-age", NULL, "MP_MAX_AGE", NULL, false, true},
    {CX_ALLOWED_HOSTS, "--allowed-hosts", NULL, NULL, NULL, false, true},
    {CX_UI_AUTH_FILE, "--ui-auth-file", NULL, "MP_UI_AUTH_FILE", NULL, false, true},
    {CX_UI_AUTH, NULL, NULL, "MP_UI_AUTH", NULL, false, true},
    {CX_UI_TLS_CERT, "--ui-tls-cert", NULL, "MP_UI_TLS_CERT", NULL, false, true},
    {CX_UI_TLS_KEY, "--ui-tls-key", NULL, "MP_UI_TLS_KEY", NULL, false, true},
    {CX_SMTP_TLS_CERT, "--smtp-tls-cert", NULL, "MP_SMTP_TLS_CERT", NULL, false, true},
    {CX_SMTP_TLS_KEY, "--smtp-tls-key", NULL, "MP_SMTP_TLS_KEY", NULL, false, true},
    {CX_SMTP_AUTH_ACCEPT_ANY, "--smtp-auth-accept-any", NULL, "MP_SMTP_AUTH_ACCEPT_ANY", NULL, true,
     true},
    {CX_SMTP_AUTH_ALLOW_INSECURE, "--smtp-auth-allow-insecure", NULL, "MP_SMTP_AUTH_ALLOW_INSECURE",
     NULL, true, true},
    {CX_SMTP_AUTH_FILE, "--smtp-auth-file", NULL, "MP_SMTP_AUTH_FILE", NULL, false, true},
    {CX_SMTP_AUTH, NULL, NULL, "MP_SMTP_AUTH", NULL, false, true},
    {CX_SMTP_REQUIRE_STARTTLS, "--smtp-require-starttls", NULL, "MP_SMTP_REQUIRE_STARTTLS", NULL,
     true, true},
    {CX_SMTP_REQUIRE_TLS, "--smtp-require-tls", NULL, "MP_SMTP_REQUIRE_TLS", NULL, true, true},
    {CX_WEBHOOK_URL, "--webhook-url", NULL, "MP_WEBHOOK_URL", NULL, false, true},
    {CX_WEBHOOK_LIMIT, "--webhook-limit", NULL, "MP_WEBHOOK_LIMIT", NULL, false, true},
    {CX_POP3, "--pop3", NULL, "MP_POP3_BIND_ADDR", NULL, false, true},
    {CX_POP3_AUTH_FILE, "--pop3-auth-file", NULL, "MP_POP3_AUTH_FILE", NULL, false, true},
    {CX_POP3_AUTH, NULL, NULL, "MP_POP3_AUTH", NULL, false, true},
    {CX_TAGS_DISABLE, "--tags-disable", NULL, "MP_TAGS_DISABLE", NULL, false, true},
    {CX_SMTP_MAX_RECIPIENTS, "--smtp-max-recipients", NULL, "MP_SMTP_MAX_RECIPIENTS", NULL, false,
     true},
    {CX_ENABLE_CHAOS, "--enable-chaos", NULL, "MP_ENABLE_CHAOS", NULL, true, true},
    {CX_VERBOSE, "--verbose", "-v", "MP_VERBOSE", NULL, true, true},
    {CX_QUIET, "--quiet", "-q", "MP_QUIET", NULL, true, true},
};
#define N_ROWS (sizeof(rows) / sizeof(rows[0]))

const char capture_ext_help[] =
    "Mailpit's options (each also read from its MP_* variable; flags win):\n"
    "  --listen IP:PORT    the same as --http (MP_UI_BIND_ADDR)\n"
    "  --database FILE     keep caught mail in FILE's directory (MP_DATABASE)\n"
    "  --max N             keep at most N messages, 0 = all (MP_MAX_MESSAGES)\n"
    "  --max-age Nh|Nd     drop messages older than that (MP_MAX_AGE)\n"
    "  --allowed-hosts A,B Host names the web UI answers to besides IPs and\n"
    "                      localhost (a compose service name, say)\n"
    "  --ui-auth-file F    htpasswd users (bcrypt, {SHA}) the web UI and API ask\n"
    "                      for (MP_UI_AUTH_FILE; MP_UI_AUTH=\"user:pass ...\")\n"
    "  --pop3 IP:PORT      serve caught mail over POP3 (MP_POP3_BIND_ADDR); needs\n"
    "  --pop3-auth-file F  its htpasswd users (MP_POP3_AUTH_FILE; MP_POP3_AUTH=\"u:p\")\n"
    "  --ui-tls-cert F, --ui-tls-key F   HTTPS for the web UI and API\n"
    "                      (MP_UI_TLS_CERT, MP_UI_TLS_KEY)\n"
    "  --smtp-tls-cert F, --smtp-tls-key F   offer STARTTLS with this pair\n"
    "  --smtp-require-tls  TLS from the first byte instead (MP_SMTP_REQUIRE_TLS)\n"
    "  --smtp-require-starttls  MAIL only after STARTTLS (MP_SMTP_REQUIRE_STARTTLS)\n"
    "  --smtp-auth-file F  SMTP logins must be htpasswd users of F, and MAIL needs\n"
    "                      one (MP_SMTP_AUTH_FILE; MP_SMTP_AUTH=\"u:p ...\")\n"
    "  --smtp-auth-accept-any  any SMTP login (the default; wins over the file)\n"
    "  --smtp-auth-allow-insecure   accepted: logins work without TLS here\n"
    "  --webhook-url URL   POST each new message's summary JSON there (MP_WEBHOOK_URL)\n"
    "  --webhook-limit N   webhook calls a second at most (MP_WEBHOOK_LIMIT)\n"
    "  --smtp-max-recipients N  recipients a message may have (MP_SMTP_MAX_RECIPIENTS)\n"
    "  --enable-chaos      accepted: the chaos API is always on (MP_ENABLE_CHAOS)\n"
    "  --tags-disable LIST plus-addresses and/or x-tags (MP_TAGS_DISABLE)\n"
    "  -v, --verbose       debug logging (MP_VERBOSE); -q, --quiet: warnings only\n";

static int bool_value(const char *s, bool *out)
{
	static const char *const yes[] = {"1", "true", "yes", "on"};
	static const char *const no[] = {"", "0", "false", "no", "off"};
	for (size_t i = 0; i < 4; i++)
		if (strcasecmp(s, yes[i]) == 0)
			return *out = true, TERN_OK;
	for (size_t i = 0; i < 5; i++)
		if (strcasecmp(s, no[i]) == 0)
			return *out = false, TERN_OK;
	return TERN_ESYNTAX;
}

bool capture_ext_on(const struct capture_ext *x, enum capx k)
{
	bool on = false;
	return x->v[k] && bool_value(x->v[k], &on) == TERN_OK && on;
}

int capture_args_parse(int argc, char **argv, struct capture_ext *x, char *why, size_t whylen)
{
	for (int i = 1; i < argc; i++) {
		const struct capx_row *r = NULL;
		for (size_t j = 0; j < N_ROWS && !r; j++)
			if ((rows[j].flag && strcmp(argv[i], rows[j].flag) == 0) ||
			    (rows[j].alias && strcmp(argv[i], rows[j].alias) == 0))
				r = &rows[j];
		if (!r) {
			snprintf(why, whylen, "unknown option '%s'", argv[i]);
			return TERN_ESYNTAX;
		}
		if (r->boolean) {
			x->v[r->key] = "1";
			continue;
		}
		if (i + 1 >= argc) {
			snprintf(why, whylen, "%s needs a value", argv[i]);
			return TERN_ESYNTAX;
		}
		x->v[r->key] = argv[++i];
	}
	return TERN_OK;
}

/* Mailpit's --max-age: "Nh" or "Nd" (a bare number is hours). */
static bool parse_age(const char *s, unsigned *out)
{
	char *end;
	if (!s || *s < '0' || *s > '9')
		return false;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	unsigned long long mul = 3600;
	if (*end == 'd' || *end == 'D')
		mul = 86400, end++;
	else if (*end == 'h' || *end == 'H')
		end++;
	if (errno || *end || v == 0 || v > 0xffffffffull / mul)
		return false;
	*out = (unsigned)(v * mul);
	return true;
}

static bool parse_count(const char *s, unsigned long long max, unsigned long long *out)
{
	char *end;
	if (!s || *s < '0' || *s > '9')
		return false;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || v > max)
		return false;
	*out = v;
	return true;
}

int capture_env_apply(struct capture_ext *x, char *const *envp, char *why, size_t whylen)
{
	for (char *const *e = envp; e && *e; e++) {
		if (strncmp(*e, "MP_", 3) != 0)
			continue;
		const char *eq = strchr(*e, '=');
		if (!eq)
			continue;
		size_t nl = (size_t)(eq - *e);
		const struct capx_row *r = NULL;
		bool older = false;
		for (size_t j = 0; j < N_ROWS && !r; j++) {
			if (rows[j].env && strlen(rows[j].env) == nl &&
			    strncmp(*e, rows[j].env, nl) == 0)
				r = &rows[j];
			else if (rows[j].env2 && strlen(rows[j].env2) == nl &&
			         strncmp(*e, rows[j].env2, nl) == 0)
				r = &rows[j], older = true;
		}
		if (!r) {
			fprintf(stderr,
			        "tern capture: %.*s is a Mailpit setting tern does not have; "
			        "ignored\n",
			        (int)nl, *e);
			continue;
		}
		if (x->v[r->key] && !x->from_env[r->key])
			continue; /* the command line wins */
		if (x->v[r->key] && older)
			continue; /* the current name wins over the old one */
		x->v[r->key] = eq + 1;
		x->from_env[r->key] = true;
	}
	for (size_t j = 0; j < N_ROWS; j++) {
		const struct capx_row *r = &rows[j];
		const char *v = x->v[r->key];
		bool on = false;
		if (!v)
			continue;
		const char *name = x->from_env[r->key] ? r->env : r->flag;
		if (r->boolean && bool_value(v, &on) != TERN_OK) {
			snprintf(why, whylen, "%s: '%s' is not a yes/no value (1, true, 0, false)",
			         name, v);
			return TERN_ESYNTAX;
		}
		if (r->boolean && !on)
			continue;
		if (!r->supported && *v) {
			snprintf(why, whylen,
			         "%s is not supported by this tern yet (see docs/capture.md); "
			         "remove it rather than have it ignored",
			         name);
			return TERN_ESYNTAX;
		}
	}
	if (x->v[CX_MAX]) {
		if (!parse_count(x->v[CX_MAX], 1ull << 40, &x->max_messages)) {
			snprintf(why, whylen, "--max / MP_MAX_MESSAGES: '%s' is not a count",
			         x->v[CX_MAX]);
			return TERN_ESYNTAX;
		}
		x->max_set = true;
	}
	if (x->v[CX_MAX_AGE] && *x->v[CX_MAX_AGE]) {
		if (!parse_age(x->v[CX_MAX_AGE], &x->max_age_sec)) {
			snprintf(why, whylen, "--max-age / MP_MAX_AGE: '%s' is not like 12h or 7d",
			         x->v[CX_MAX_AGE]);
			return TERN_ESYNTAX;
		}
		x->max_age_set = true;
	}
	if (x->v[CX_SMTP_MAX_RECIPIENTS]) {
		unsigned long long n;
		if (!parse_count(x->v[CX_SMTP_MAX_RECIPIENTS], 100000, &n) || n == 0) {
			snprintf(
			    why, whylen,
			    "--smtp-max-recipients / MP_SMTP_MAX_RECIPIENTS: '%s' is not a count "
			    "from 1 to 100000",
			    x->v[CX_SMTP_MAX_RECIPIENTS]);
			return TERN_ESYNTAX;
		}
		x->max_recipients = (unsigned)n;
		x->max_rcpt_set = true;
	}
	if (x->v[CX_WEBHOOK_LIMIT]) {
		unsigned long long n;
		if (!parse_count(x->v[CX_WEBHOOK_LIMIT], 1000000, &n)) {
			snprintf(why, whylen,
			         "--webhook-limit / MP_WEBHOOK_LIMIT: '%s' is not a count",
			         x->v[CX_WEBHOOK_LIMIT]);
			return TERN_ESYNTAX;
		}
	}
	const char *hook = x->v[CX_WEBHOOK_URL];
	if (hook && *hook && strncasecmp(hook, "http://", 7) != 0 &&
	    strncasecmp(hook, "https://", 8) != 0) {
		snprintf(why, whylen,
		         "--webhook-url / MP_WEBHOOK_URL must start with http:// or https://");
		return TERN_ESYNTAX;
	}
	if (x->v[CX_TAGS_DISABLE]) {
		unsigned r;
		if (!capture_tags_parse_disable(x->v[CX_TAGS_DISABLE], &r)) {
			snprintf(why, whylen,
			         "--tags-disable / MP_TAGS_DISABLE: '%s' is not a list of "
			         "plus-addresses and x-tags",
			         x->v[CX_TAGS_DISABLE]);
			return TERN_ESYNTAX;
		}
		capture_tags_set_rules(r);
	}
	if (!x->v[CX_UI_TLS_CERT] != !x->v[CX_UI_TLS_KEY]) {
		snprintf(why, whylen, "--ui-tls-cert and --ui-tls-key go together");
		return TERN_ESYNTAX;
	}
	if (capture_ext_on(x, CX_SMTP_REQUIRE_STARTTLS) && !x->v[CX_SMTP_TLS_CERT]) {
		snprintf(
		    why, whylen,
		    "--smtp-require-starttls / MP_SMTP_REQUIRE_STARTTLS needs --smtp-tls-cert and "
		    "--smtp-tls-key (MP_SMTP_TLS_CERT, MP_SMTP_TLS_KEY)");
		return TERN_ESYNTAX;
	}
	if (capture_ext_on(x, CX_SMTP_REQUIRE_TLS) && !x->v[CX_SMTP_TLS_CERT]) {
		snprintf(why, whylen,
		         "--smtp-require-tls / MP_SMTP_REQUIRE_TLS needs --smtp-tls-cert and "
		         "--smtp-tls-key (MP_SMTP_TLS_CERT, MP_SMTP_TLS_KEY)");
		return TERN_ESYNTAX;
	}
	if (!x->v[CX_SMTP_TLS_CERT] != !x->v[CX_SMTP_TLS_KEY]) {
		snprintf(why, whylen, "--smtp-tls-cert and --smtp-tls-key go together");
		return TERN_ESYNTAX;
	}
	if (x->v[CX_DATABASE] && !x->v[CX_DATA_DIR]) {
		/* Mailpit names its SQLite file; tern keeps a directory (its
		 * store is DIR/capture/capture.db), so the file's directory. */
		const char *db = x->v[CX_DATABASE];
		const char *slash = strrchr(db, '/');
		if (!slash)
			snprintf(x->data_dir_buf, sizeof(x->data_dir_buf), ".");
		else if (slash == db)
			snprintf(x->data_dir_buf, sizeof(x->data_dir_buf), "/");
		else
			snprintf(x->data_dir_buf, sizeof(x->data_dir_buf), "%.*s",
			         (int)(slash - db), db);
		x->v[CX_DATA_DIR] = x->data_dir_buf;
	}
	return TERN_OK;
}

static int add_hosts(struct tern_config *c, const char *list)
{
	const char *p = list;
	while (*p) {
		while (*p == ',' || *p == ' ')
			p++;
		const char *e = p;
		while (*e && *e != ',' && *e != ' ')
			e++;
		if (e > p) {
			char **v = realloc(c->capture.http_allowed_hosts,
			                   (c->capture.n_http_allowed_hosts + 1) * sizeof(*v));
			if (!v)
				return TERN_ENOMEM;
			c->capture.http_allowed_hosts = v;
			char *h = tern_strndup(p, (size_t)(e - p));
			if (!h)
				return TERN_ENOMEM;
			for (char *q = h; *q; q++)
				if (*q >= 'A' && *q <= 'Z')
					*q = (char)(*q - 'A' + 'a');
			v[c->capture.n_http_allowed_hosts++] = h;
		}
		p = e;
	}
	return TERN_OK;
}

int capture_ext_apply_conf(const struct capture_ext *x, struct tern_config *c)
{
	if (x->max_set)
		c->capture.max_messages = x->max_messages;
	if (x->max_age_set)
		c->capture.max_age = x->max_age_sec;
	if (x->max_rcpt_set)
		c->limits.max_recipients = x->max_recipients;
	if (x->v[CX_ALLOWED_HOSTS] && add_hosts(c, x->v[CX_ALLOWED_HOSTS]) != TERN_OK)
		return TERN_ENOMEM;
	if (x->v[CX_SMTP_TLS_CERT] && x->v[CX_SMTP_TLS_KEY]) {
		struct conf_tls_cert *cert = calloc(1, sizeof(*cert));
		if (!cert)
			return TERN_ENOMEM;
		cert->cert_file = tern_strdup(x->v[CX_SMTP_TLS_CERT]);
		cert->key_file = tern_strdup(x->v[CX_SMTP_TLS_KEY]);
		if (!cert->cert_file || !cert->key_file) {
			free(cert->cert_file);
			free(cert->key_file);
			free(cert);
			return TERN_ENOMEM;
		}
		for (size_t i = 0; i < c->tls.n_certs; i++) {
			free(c->tls.certs[i].cert_file);
			free(c->tls.certs[i].key_file);
		}
		free(c->tls.certs);
		c->tls.certs = cert;
		c->tls.n_certs = 1;
		c->tls.self_signed = false;
		/* --smtp-require-tls: TLS from the first byte (port 465 style) */
		enum conf_listen_tls mode = capture_ext_on(x, CX_SMTP_REQUIRE_TLS)
		                                ? CONF_LISTEN_TLS_IMPLICIT
		                                : CONF_LISTEN_TLS_STARTTLS;
		for (size_t i = 0; i < c->n_listeners; i++)
			c->listeners[i].tls = mode;
	}
	const char *lvl = capture_ext_on(x, CX_VERBOSE) ? "debug"
	                  : capture_ext_on(x, CX_QUIET) ? "warn"
	                                                : NULL;
	if (lvl) {
		char *s = tern_strdup(lvl);
		if (!s)
			return TERN_ENOMEM;
		free(c->log_level);
		c->log_level = s;
	}
	return TERN_OK;
}

#define AUTH_FILE_MAX (4u * 1024 * 1024)

/* One htpasswd set from a file and/or inline pairs into *out (NULL when
 * neither is given). */
static int load_users(const char *path, const char *pairs, const char *what, struct http_auth **out,
                      char *why, size_t whylen)
{
	char *text = NULL, err[256];
	size_t len = 0;
	int en = 0, rc;
	*out = NULL;
	if ((!path || !*path) && (!pairs || !*pairs))
		return TERN_OK;
	if (path && *path) {
		rc = tern_file_read(path, AUTH_FILE_MAX, &text, &len, &en);
		if (rc != TERN_OK) {
			snprintf(why, whylen, "%s %s: %s", what, path,
			         en ? strerror(en) : tern_strerror(rc));
			return rc;
		}
	}
	rc = http_auth_parse(text, len, pairs, out, err, sizeof(err));
	if (text) {
		explicit_bzero(text, len);
		free(text);
	}
	if (rc != TERN_OK) {
		snprintf(why, whylen, "%s %s: %s", what, path && *path ? path : "(inline)", err);
		return rc;
	}
	if (http_auth_count(*out) == 0) {
		snprintf(why, whylen, "%s %s names no user: nobody could log in", what,
		         path && *path ? path : "(inline)");
		http_auth_free(*out);
		*out = NULL;
		return TERN_ESYNTAX;
	}
	return TERN_OK;
}

int capture_ext_load_files(struct capture_ext *x, char *why, size_t whylen)
{
	int rc = load_users(x->v[CX_UI_AUTH_FILE], x->v[CX_UI_AUTH], "--ui-auth-file/MP_UI_AUTH",
	                    &x->ui_auth, why, whylen);
	if (rc != TERN_OK)
		return rc;
	if (x->v[CX_UI_TLS_CERT] && *x->v[CX_UI_TLS_CERT]) {
		struct conf_tls_cert cert = {(char *)x->v[CX_UI_TLS_CERT],
		                             (char *)x->v[CX_UI_TLS_KEY]};
		struct conf_tls_server t = {.certs = &cert, .n_certs = 1};
		char err[512];
		x->ui_tls = tls_server_new(&t, err, sizeof(err));
		if (!x->ui_tls) {
			snprintf(why, whylen, "--ui-tls-cert/--ui-tls-key: %s", err);
			return TERN_EINVAL;
		}
	}
	rc = load_users(x->v[CX_SMTP_AUTH_FILE], x->v[CX_SMTP_AUTH],
	                "--smtp-auth-file/MP_SMTP_AUTH", &x->smtp_auth, why, whylen);
	if (rc != TERN_OK)
		return rc;
	if (x->v[CX_POP3] && *x->v[CX_POP3]) {
		rc = load_users(x->v[CX_POP3_AUTH_FILE], x->v[CX_POP3_AUTH],
		                "--pop3-auth-file/MP_POP3_AUTH", &x->pop3_auth, why, whylen);
		if (rc == TERN_OK && !x->pop3_auth) {
			snprintf(why, whylen,
			         "--pop3 needs users: --pop3-auth-file FILE or MP_POP3_AUTH "
			         "(POP3 always asks for a login, as in Mailpit)");
			rc = TERN_ESYNTAX;
		}
	}
	return rc;
}

void capture_ext_free(struct capture_ext *x)
{
	http_auth_free(x->ui_auth);
	x->ui_auth = NULL;
	http_auth_free(x->pop3_auth);
	x->pop3_auth = NULL;
	http_auth_free(x->smtp_auth);
	x->smtp_auth = NULL;
	tls_server_free(x->ui_tls);
	x->ui_tls = NULL;
}
