/*
 * cli.h — subcommand entry points (internal to cli/). Each returns the
 * process exit status: 0 success, 1 failure, 2 usage error.
 */
#ifndef TERN_CLI_CLI_H
#define TERN_CLI_CLI_H

#define TERN_VERSION "0.1.0"

struct spool;
struct scheduler;

int cmd_serve(int argc, char **argv);
int cmd_capture(int argc, char **argv);

/* tern capture's command-line settings, applied over the config. */
struct capture_opts {
	const char *smtp;     /* IP:PORT, default 127.0.0.1:1025 */
	const char *http;     /* IP:PORT, default 127.0.0.1:8025 */
	const char *data_dir; /* or NULL: the config's */
};

/* The daemon (serve.c); cap is NULL for `tern serve`. */
int daemon_run(const char *path, const struct capture_opts *cap);

/* Capture mode's parts (capture.c): the store, the HTTP server on its own
 * worker, the store-to-browser event feed, the API hooks. */
struct capture_mode;
struct capture_mode *capture_mode_start(const char *data_dir, int http_fd, struct spool *sp,
					struct scheduler *sched, char *err, size_t errlen);
void capture_mode_stop(struct capture_mode *cm);
int cmd_check_config(int argc, char **argv);
int cmd_user(int argc, char **argv);
int cmd_queue(int argc, char **argv);
/* `tern spf check` (spf.c) */
int cmd_spf(int argc, char **argv);
int cmd_dkim(int argc, char **argv);
int cmd_dovecot_config(int argc, char **argv); /* dovecot.c */

/* Parses "-c FILE" / "--config FILE" out of argv (removing it); NULL if absent.
 * Returns -1 on a dangling -c. */
int cli_take_config(int *argc, char **argv, const char **path);

/* The daemon side of the control socket (control.c). */
struct control;
struct control *control_start(int listen_fd, struct spool *sp, struct scheduler *sched);
void control_stop(struct control *c);
/* Binds DATA/control.sock; returns the listening fd or -1. */
int control_bind(const char *data_dir);

/* Local submission (submit.h): `tern sendmail` and its daemon side. */
int cmd_sendmail(int argc, char **argv);
struct submit;
struct submit *submit_start(const char *data_dir, struct spool *sp, struct scheduler *sched,
			    char *err, size_t errlen);
void submit_stop(struct submit *s);

#endif
