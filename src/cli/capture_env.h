/*
 * capture_env.h — `tern capture`'s options beyond --smtp/--http/--data-dir,
 * each with a command-line flag (Mailpit's own name where it has one) and
 * Mailpit's MP_* environment variable, so that a docker-compose file made
 * for Mailpit runs tern by changing only the image and the command.
 * Flags win over the environment, as in Mailpit. docs/capture.md has the
 * table.
 */
#ifndef TERN_CLI_CAPTURE_ENV_H
#define TERN_CLI_CAPTURE_ENV_H

#include <stdbool.h>
#include <stddef.h>

struct tern_config;
struct http_auth;
struct tls_server;

enum capx {
	CX_SMTP,
	CX_HTTP,
	CX_DATA_DIR,
	CX_DATABASE,
	CX_MAX,
	CX_MAX_AGE,
	CX_ALLOWED_HOSTS,
	CX_UI_AUTH_FILE,
	CX_UI_AUTH,
	CX_UI_TLS_CERT,
	CX_UI_TLS_KEY,
	CX_SMTP_TLS_CERT,
	CX_SMTP_TLS_KEY,
	CX_SMTP_AUTH_ACCEPT_ANY,
	CX_SMTP_AUTH_ALLOW_INSECURE,
	CX_SMTP_AUTH_FILE,
	CX_SMTP_AUTH,
	CX_SMTP_REQUIRE_STARTTLS,
	CX_SMTP_REQUIRE_TLS,
	CX_WEBHOOK_URL,
	CX_WEBHOOK_LIMIT,
	CX_POP3,
	CX_POP3_AUTH_FILE,
	CX_POP3_AUTH,
	CX_TAGS_DISABLE,
	CX_SMTP_MAX_RECIPIENTS,
	CX_ENABLE_CHAOS,
	CX_VERBOSE,
	CX_QUIET,
	CX_N
};

/* The values as given (flag or environment; NULL when neither), and
 * where each came from, for log lines. */
struct capture_ext {
	const char *v[CX_N];
	bool from_env[CX_N];
	char data_dir_buf[4096]; /* --database FILE: its directory */
	unsigned max_age_sec;
	unsigned long long max_messages;
	unsigned max_recipients;
	bool max_set, max_age_set, max_rcpt_set;
	struct http_auth *ui_auth;   /* from --ui-auth-file and MP_UI_AUTH, or NULL */
	struct http_auth *pop3_auth; /* from --pop3-auth-file and MP_POP3_AUTH, or NULL */
	struct http_auth *smtp_auth; /* from --smtp-auth-file and MP_SMTP_AUTH, or NULL */
	struct tls_server *ui_tls;   /* --ui-tls-cert/--ui-tls-key loaded, or NULL */
};

/*
 * capture_args_parse: argv[1..argc-1] (the config option already taken)
 * into x. TERN_OK, or TERN_ESYNTAX with the reason in why.
 */
int capture_args_parse(int argc, char **argv, struct capture_ext *x, char *why, size_t whylen);

/*
 * capture_env_apply: every MP_* variable of envp (NULL-terminated
 * "NAME=value" strings) whose option the command line did not set. An
 * MP_* name tern does not know is reported on stderr and ignored, as are
 * Mailpit options without a meaning here. Then checks the whole set:
 * values parse (sizes, ages, booleans) and no option tern cannot honour
 * yet is asked for. --tags-disable takes effect here (the tag rules are
 * process-wide, store/capture_tags.h). TERN_OK or TERN_ESYNTAX with why.
 */
int capture_env_apply(struct capture_ext *x, char *const *envp, char *why, size_t whylen);

/*
 * capture_ext_load_files: reads what the options name that must be read
 * before the daemon starts (as the invoking user, before privileges are
 * dropped): the htpasswd files and inline pairs of the UI, SMTP and POP3,
 * the UI's certificate and key. TERN_OK or an
 * error with why.
 */
int capture_ext_load_files(struct capture_ext *x, char *why, size_t whylen);
void capture_ext_free(struct capture_ext *x);

/* Whether a boolean option is on ("1", "true", "yes", "on"). */
bool capture_ext_on(const struct capture_ext *x, enum capx k);

/*
 * capture_ext_apply_conf: the options that live in the config, applied
 * over a freshly loaded one on every (re)load: capture.max_messages and
 * max_age, capture.http_allowed_hosts (added to), an SMTP certificate
 * (STARTTLS offered), log_level for --verbose/--quiet. TERN_OK or
 * TERN_ENOMEM.
 */
int capture_ext_apply_conf(const struct capture_ext *x, struct tern_config *c);

/* The options' help lines for `tern capture --help`. */
extern const char capture_ext_help[];

#endif
