/*
 * cli.h — subcommand entry points (internal to cli/). Each returns the
 * process exit status: 0 success, 1 failure, 2 usage error.
 */
#ifndef TERN_CLI_CLI_H
#define TERN_CLI_CLI_H

#define TERN_VERSION "0.1.0"

#include <stdbool.h>

/* One command's words about itself (usage.c): synopsis lines separated by
 * '\n' (each starts with the command, e.g. "tern user add ADDRESS"), and
 * the --help text after it (options, one per line, ending in '\n'). */
struct cli_help {
	const char *name; /* "tern user": for "Try 'tern user --help'" */
	const char *synopsis;
	const char *text;
};
/* True when argv[1..] holds --help or -h (before any "--"). */
bool cli_help_asked(int argc, char **argv);
/* --help: synopsis and text on stdout. Returns 0, the exit status. */
int cli_help(const struct cli_help *h);
/* A usage error: "tern: WHY" (when fmt is not NULL), the synopsis and a
 * pointer to --help on stderr. Returns 2, the exit status. */
int cli_usage(const struct cli_help *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

struct spool;
struct scheduler;
struct capture_ext;

int cmd_serve(int argc, char **argv);
int cmd_capture(int argc, char **argv);

/* tern capture's command-line settings, applied over the config. */
struct capture_opts {
	const char *smtp;              /* IP:PORT, default 127.0.0.1:1025 */
	const char *http;              /* IP:PORT, default 127.0.0.1:8025 */
	const char *data_dir;          /* or NULL: the config's */
	const struct capture_ext *ext; /* Mailpit's options (cli/capture_env.h), or NULL */
};

/* The daemon (serve.c); cap is NULL for `tern serve`. */
int daemon_run(const char *path, const struct capture_opts *cap);

/* Capture mode's parts (capture.c): the store, the HTTP server on its own
 * worker, the store-to-browser event feed, the API hooks. */
struct capture_mode;
struct capture_mode *capture_mode_start(const char *data_dir, int http_fd, struct spool *sp,
					struct scheduler *sched, const struct capture_ext *ext,
					char *err, size_t errlen);
void capture_mode_stop(struct capture_mode *cm);
int cmd_check_config(int argc, char **argv);
int cmd_log(int argc, char **argv);
int cmd_user(int argc, char **argv);
int cmd_queue(int argc, char **argv);
/* `tern spf check` (spf.c) */
int cmd_spf(int argc, char **argv);
int cmd_dkim(int argc, char **argv);
int cmd_arc(int argc, char **argv); /* `tern arc verify|seal` (arc.c) */
int cmd_dovecot_config(int argc, char **argv); /* dovecot.c */
int cmd_milter(int argc, char **argv);         /* `tern milter test` (milter.c) */
int cmd_dmarc(int argc, char **argv); /* `tern dmarc send-reports|report` (dmarc.c) */
int cmd_suppress(int argc, char **argv);       /* `tern suppress` (suppress.c) */
int cmd_apikey(int argc, char **argv);         /* `tern apikey` (apikey.c) */
int cmd_archive(int argc, char **argv);        /* `tern archive` (archive.c) */
int cmd_events(int argc, char **argv);         /* `tern events tail` (events.c) */
int cmd_webhook(int argc, char **argv);        /* `tern webhook ...` (webhook.c) */
int cmd_stats(int argc, char **argv);          /* `tern stats` (stats.c) */
/* The event store of the data dir path's config names (events.c), for `tern events` and
 * `tern stats`; NULL after printing why to stderr. */
struct sqlite3;
struct sqlite3 *cli_events_db(const char *path);

/*
 * The OAuth issuer's public keys (auth.oauth.jwks_file) read through the file
 * source and parsed as serve does (serve.c); *out is NULL without
 * auth.oauth. TERN_OK, or an error with a message naming the file in err.
 */
struct tern_config;
struct oauth_keys;
int oauth_keys_load(const struct tern_config *conf, struct oauth_keys **out, char *err,
                    size_t errlen);

/*
 * Tells systemd (Type=notify) where the daemon stands: "READY=1",
 * "RELOADING=1", "STOPPING=1" (notify.c). Nothing without $NOTIFY_SOCKET.
 * The serving process sends them, which in the split daemon is the child:
 * the unit says NotifyAccess=all.
 */
void cli_notify(const char *state);

/* Parses "-c FILE" / "--config FILE" out of argv (removing it); NULL if absent.
 * Returns -1 on a dangling -c. */
int cli_take_config(int *argc, char **argv, const char **path);

/* The daemon side of the control socket (control.c). */
struct control;
struct control *control_start(int listen_fd, struct spool *sp, struct scheduler *sched);
void control_stop(struct control *c);
/* DMARC aggregate reports in the daemon (dmarc.c): start after the spool
 * and scheduler (NULL when reports are off); stop before the scheduler
 * stops, free after the workers are joined. The control socket's
 * DMARC-REPORTS request runs a round and waits for it. */
struct dmarc_daemon;
struct tbuf;
struct dmarc_daemon *dmarc_daemon_start(const struct tern_config *conf, struct spool *sp,
                                        struct scheduler *sched);
void dmarc_daemon_stop(struct dmarc_daemon *d);
void dmarc_daemon_free(struct dmarc_daemon *d);
void dmarc_control_request(const char *arg, struct tbuf *b);
/* Binds DATA/control.sock; returns the listening fd or -1. */
int control_bind(const char *data_dir);

/* Local submission (submit.h): `tern sendmail` and its daemon side. */
int cmd_sendmail(int argc, char **argv);
struct submit;
struct submit *submit_start(const char *data_dir, struct spool *sp, struct scheduler *sched,
			    char *err, size_t errlen);
void submit_stop(struct submit *s);

#endif
