/*
 * capture.c — `tern capture`: the daemon preset for developers. SMTP
 * accepts every sender and recipient; each message is caught in the
 * capture store instead of delivered, straight from end of data through
 * the capture ingest (scheduler_capture_put), which commits it durably
 * before the 250. The HTTP server (Mailpit's API, the web UI, live events)
 * runs on a worker of its own. This file wires those parts together and
 * implements the hooks the HTTP layer calls: send, release, chaos.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>

#include "cli/capture_env.h"
#include "cli/cli.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/id.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/runtime.h"
#include "http/basic_auth.h"
#include "http/http.h"
#include "queue/queue.h"
#include "smtp/smtp.h"
#include "pop3/capture_mailbox.h"
#include "store/capture_webhook.h"
#include "store/store.h"
#include "tls/tls.h"

#define HTTP_WORKER_INDEX 1000 /* only for log lines: not an SMTP worker */

struct capture_mode {
	struct capture_store *store;
	struct worker *http_worker;
	struct http_server *http;
	struct spool *sp;
	struct scheduler *sched;
	struct http_hooks hooks;
	char smtp_address[64];
	struct capture_webhook *webhook; /* --webhook-url, or NULL */
	struct pop3_server *pop3;        /* --pop3, or NULL */
	struct pop3_capture pop3_store;
	struct pool *auth_pool; /* UI logins (bcrypt) with --ui-auth-file, or NULL */
};

/* ------------------------------------------------------------- send hook */

/*
 * POST /api/v1/send: the message goes straight into the store through the
 * capture ingest (group-committed with SMTP mail, durable before done
 * runs), so the API can answer with its capture ID. done runs on a
 * committer thread, or here when the put fails.
 */
static void hook_send(void *ctx, const char *raw, size_t len, const char *from,
		      const char *const *to, size_t n_to,
		      void (*done)(void *arg, int err, const char *id), void *arg)
{
	struct capture_mode *cm = ctx;
	struct spool_rcpt *rcpts = calloc(n_to ? n_to : 1, sizeof(*rcpts));
	int rc = TERN_ENOMEM;
	if (rcpts) {
		for (size_t i = 0; i < n_to; i++) {
			rcpts[i].addr = (char *)to[i];
			rcpts[i].local = true;
		}
		struct spool_msg env = {0};
		queue_id_new(env.id); /* names it in the logs */
		env.sender = (char *)(from ? from : "");
		env.created = (int64_t)time(NULL);
		env.client = "addr=local proto=HTTP";
		env.size = len;
		env.rcpts = rcpts;
		env.n_rcpts = n_to;
		rc = scheduler_capture_put(cm->sched, &env, raw, len, done, arg);
		free(rcpts);
	}
	if (rc != TERN_OK) {
		log_error("event=capture_failed source=api reason=%s", tern_strerror(rc));
		done(arg, rc, NULL);
	}
}

/* ---------------------------------------------------------- release hook */

struct release_commit {
	struct scheduler *sched;
	char id[QUEUE_ID_LEN + 1];
};

static void release_committed(void *arg, int err)
{
	struct release_commit *rc = arg;
	if (err == TERN_OK)
		scheduler_submit(rc->sched, rc->id, NULL, 0);
	else
		log_error("event=release_failed id=%s reason=%s", rc->id, tern_strerror(err));
	free(rc);
}

/*
 * POST /api/v1/message/{ID}/release: the stored message goes into the spool
 * with the given recipients as remote ones, so the normal outbound path
 * (relayhost or routes) delivers it. Without a relayhost or route, release
 * is refused: capture mode must never mail the world by accident.
 */
static int hook_release(void *ctx, const char *id, const char *const *to, size_t n_to)
{
	struct capture_mode *cm = ctx;
	struct tern_runtime *rt = runtime_acquire();
	if (!rt)
		return TERN_EINVAL;
	int rc = TERN_OK;
	char *from = NULL;
	char **env_to = NULL;
	size_t n_env = 0;
	struct tbuf raw;
	tbuf_init(&raw, (size_t)rt->conf->limits.max_message_size + 65536);
	struct spool_rcpt *rcpts = NULL;
	if (!rt->conf->relayhost && rt->conf->n_routes == 0) {
		rc = TERN_EINVAL;
		goto out;
	}
	if (n_to == 0 || n_to > rt->conf->limits.max_recipients) {
		rc = TERN_ESYNTAX;
		goto out;
	}
	rc = capture_raw(cm->store, id, &raw);
	if (rc != TERN_OK)
		goto out;
	rc = capture_envelope(cm->store, id, &from, &env_to, &n_env);
	if (rc != TERN_OK)
		goto out;
	rcpts = calloc(n_to, sizeof(*rcpts));
	if (!rcpts) {
		rc = TERN_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n_to; i++) {
		struct smtp_path p;
		if (!smtp_parse_mailbox(to[i], strlen(to[i]), &p) || !p.has_domain) {
			rc = TERN_ESYNTAX;
			goto out;
		}
		rcpts[i].addr = (char *)to[i];
		rcpts[i].local = false;
	}
	struct spool_msg env = {0};
	queue_id_new(env.id);
	env.sender = from ? from : "";
	env.created = (int64_t)time(NULL);
	env.client = "addr=local proto=RELEASE";
	env.size = raw.len;
	env.rcpts = rcpts;
	env.n_rcpts = n_to;
	struct release_commit *c = malloc(sizeof(*c));
	if (!c) {
		rc = TERN_ENOMEM;
		goto out;
	}
	c->sched = cm->sched;
	memcpy(c->id, env.id, sizeof(c->id));
	rc = spool_put(cm->sp, &env, raw.data, raw.len, release_committed, c);
	if (rc != TERN_OK) {
		free(c);
		goto out;
	}
	log_info("event=released capture_id=%s id=%s nrcpt=%zu", id, env.id, n_to);
out:
	free(rcpts);
	free(from);
	for (size_t i = 0; i < n_env; i++)
		free(env_to[i]);
	free(env_to);
	tbuf_free(&raw);
	runtime_release(rt);
	return rc;
}

/* ------------------------------------------------------------ chaos hooks */

/* Mailpit's defaults: 451 for sender and recipient, 535 for authentication. */
static json_t *trigger_json(const struct smtp_chaos_trigger *t, int default_code)
{
	return json_pack("{s:i,s:i}", "ErrorCode", t->error_code ? t->error_code : default_code,
			 "Probability", (int)t->probability);
}

static void hook_chaos_get(void *ctx, char *buf, size_t len)
{
	struct smtp_chaos c;
	smtp_chaos_get(&c);
	json_t *j = json_pack("{s:o,s:o,s:o}", "Authentication",
			      trigger_json(&c.authentication, 535), "Recipient",
			      trigger_json(&c.recipient, 451), "Sender", trigger_json(&c.sender, 451));
	char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	snprintf(buf, len, "%s", s ? s : "{}");
	free(s);
	json_decref(j);
}

static int parse_trigger(json_t *root, const char *name, struct smtp_chaos_trigger *t,
			 int default_code)
{
	json_t *o = json_object_get(root, name);
	if (!o)
		return TERN_OK; /* absent: unchanged */
	if (!json_is_object(o))
		return TERN_ESYNTAX;
	json_t *code = json_object_get(o, "ErrorCode");
	json_t *prob = json_object_get(o, "Probability");
	if (code) {
		if (!json_is_integer(code) || json_integer_value(code) < 400 ||
		    json_integer_value(code) > 599)
			return TERN_ESYNTAX;
		t->error_code = (int)json_integer_value(code);
	}
	if (prob) {
		if (!json_is_integer(prob) || json_integer_value(prob) < 0 ||
		    json_integer_value(prob) > 100)
			return TERN_ESYNTAX;
		t->probability = (unsigned)json_integer_value(prob);
	}
	if (!t->error_code)
		t->error_code = default_code;
	return TERN_OK;
}

static int hook_chaos_set(void *ctx, const char *text, size_t len)
{
	json_error_t e;
	json_t *root = json_loadb(text, len, 0, &e);
	if (!root || !json_is_object(root)) {
		json_decref(root);
		return TERN_ESYNTAX;
	}
	struct smtp_chaos c;
	smtp_chaos_get(&c);
	int rc = parse_trigger(root, "Authentication", &c.authentication, 535);
	if (rc == TERN_OK)
		rc = parse_trigger(root, "Recipient", &c.recipient, 451);
	if (rc == TERN_OK)
		rc = parse_trigger(root, "Sender", &c.sender, 451);
	json_decref(root);
	if (rc != TERN_OK)
		return rc;
	smtp_chaos_set(&c);
	log_info("event=chaos sender=%d/%u%% recipient=%d/%u%% authentication=%d/%u%%",
		 c.sender.error_code, c.sender.probability, c.recipient.error_code,
		 c.recipient.probability, c.authentication.error_code,
		 c.authentication.probability);
	return TERN_OK;
}

static bool hook_release_enabled(void *ctx)
{
	struct tern_runtime *rt = runtime_acquire();
	bool on = rt && (rt->conf->relayhost || rt->conf->n_routes);
	runtime_release(rt);
	return on;
}

static void hook_runtime_stats(void *ctx, uint64_t *accepted, uint64_t *accepted_size,
			       uint64_t *rejected, uint64_t *deleted)
{
	struct capture_mode *cm = ctx;
	struct smtp_counters c;
	smtp_counters_get(&c);
	*accepted = c.accepted;
	*accepted_size = c.accepted_size;
	*rejected = c.rejected;
	*deleted = capture_deleted(cm->store);
}

/* ------------------------------------------------------------ live events */

static void on_store_event(void *arg, const char *type, json_t *data)
{
	struct capture_mode *cm = arg;
	if (!cm->http && !cm->webhook)
		return;
	char *text = json_dumps(data, JSON_COMPACT);
	if (text) {
		if (cm->http)
			http_server_publish(cm->http, type, text);
		if (cm->webhook && strcmp(type, "new") == 0)
			capture_webhook_post(cm->webhook, text);
		free(text);
	}
}

/* ------------------------------------------------------------------ POP3 */

/* --pop3: the POP3 server (pop3/) on the HTTP worker, over the store.
 * Called before that worker starts. */
static int pop3_start(struct capture_mode *cm, const char *address, const struct http_auth *users,
		      char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	unsigned len = 0;
	int one = 1;
	if (!conf_parse_address(address, &ss, &len)) {
		snprintf(err, errlen, "--pop3: '%s' is not an IP:PORT address", address);
		return TERN_EINVAL;
	}
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 128) != 0) {
		snprintf(err, errlen, "cannot listen on %s for POP3: %s", address, strerror(errno));
		if (fd >= 0)
			close(fd);
		return TERN_EIO;
	}
	cm->pop3 = pop3_server_new(NULL);
	if (!cm->pop3) {
		close(fd);
		snprintf(err, errlen, "out of memory");
		return TERN_ENOMEM;
	}
	pop3_capture_init(&cm->pop3_store, cm->store, users);
	pop3_server_set_backend(cm->pop3, &cm->pop3_store.backend);
	if (pop3_server_listen(cm->pop3, cm->http_worker, fd, false) != TERN_OK) {
		close(fd);
		snprintf(err, errlen, "cannot start the POP3 listener");
		return TERN_EIO;
	}
	log_info("event=listening name=pop3 address=%s profile=capture-pop3", address);
	return TERN_OK;
}

/* -------------------------------------------------------------- lifecycle */

struct capture_mode *capture_mode_start(const char *data_dir, int http_fd, struct spool *sp,
					struct scheduler *sched, const struct capture_ext *ext,
					char *err, size_t errlen)
{
	struct capture_mode *cm = calloc(1, sizeof(*cm));
	if (!cm) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	cm->sp = sp;
	cm->sched = sched;
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s/capture", data_dir);
	if (capture_open(dir, &cm->store, err, errlen) != TERN_OK)
		goto fail;
	cm->http_worker = worker_new(HTTP_WORKER_INDEX);
	if (!cm->http_worker) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	struct tern_runtime *rt = runtime_acquire();
	if (rt) {
		snprintf(cm->smtp_address, sizeof(cm->smtp_address), "%s",
			 rt->conf->n_listeners ? rt->conf->listeners[0].address : "");
		runtime_release(rt);
	}
	cm->hooks = (struct http_hooks){
		.ctx = cm,
		.send = hook_send,
		.release = hook_release,
		.chaos_get = hook_chaos_get,
		.chaos_set = hook_chaos_set,
		.release_enabled = hook_release_enabled,
		.runtime_stats = hook_runtime_stats,
		.version = TERN_VERSION,
		.smtp_address = cm->smtp_address,
		.ui_auth = ext ? ext->ui_auth : NULL,
		.ui_tls = ext && ext->ui_tls ? tls_server_ctx(ext->ui_tls) : NULL,
	};
	if (ext && ext->ui_auth) {
		cm->auth_pool = pool_new(1);
		if (!cm->auth_pool) {
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
		cm->hooks.pool = cm->auth_pool;
	}
	if (ext && ext->v[CX_WEBHOOK_URL] && *ext->v[CX_WEBHOOK_URL]) {
		unsigned long long lim = 0;
		if (ext->v[CX_WEBHOOK_LIMIT])
			lim = strtoull(ext->v[CX_WEBHOOK_LIMIT], NULL, 10); /* checked at parse */
		cm->webhook = capture_webhook_start(ext->v[CX_WEBHOOK_URL], (unsigned)lim, err, errlen);
		if (!cm->webhook)
			goto fail;
	}
	cm->http = http_server_new(cm->http_worker, http_fd, cm->store, &cm->hooks);
	if (!cm->http) {
		snprintf(err, errlen, "cannot start the HTTP server");
		goto fail;
	}
	if (ext && ext->v[CX_POP3] && *ext->v[CX_POP3] &&
	    pop3_start(cm, ext->v[CX_POP3], ext->pop3_auth, err, errlen) != TERN_OK)
		goto fail;
	capture_subscribe(cm->store, on_store_event, cm);
	capture_set_batch_sync(cm->store, true);
	scheduler_set_capture(sched, cm->store);
	if (worker_start(cm->http_worker) != 0) {
		snprintf(err, errlen, "cannot start the HTTP thread");
		scheduler_set_capture(sched, NULL);
		goto fail;
	}
	uint64_t msgs = 0, unread = 0, bytes = 0;
	capture_stats(cm->store, &msgs, &unread, &bytes);
	log_info("event=capture_ready store=%s messages=%llu unread=%llu", dir,
		 (unsigned long long)msgs, (unsigned long long)unread);
	return cm;
fail:
	capture_mode_stop(cm);
	return NULL;
}

void capture_mode_stop(struct capture_mode *cm)
{
	if (!cm)
		return;
	if (cm->pop3)
		pop3_server_shutdown(cm->pop3);
	if (cm->http_worker)
		worker_stop_and_join(cm->http_worker);
	if (cm->store)
		capture_subscribe(cm->store, NULL, NULL);
	capture_webhook_stop(cm->webhook);
	pool_free(cm->auth_pool); /* finishes login checks in progress */
	pop3_server_free(cm->pop3);
	if (cm->http_worker)
		worker_run_pending(cm->http_worker);
	http_server_free(cm->http);
	worker_free(cm->http_worker);
	capture_close(cm->store);
	free(cm);
}

/* SMTP logins against --smtp-auth-file (on the auth pool: bcrypt is slow). */
static int smtp_login_verify(void *arg, const char *login, const char *password)
{
	return http_auth_verify(arg, login, password) ? TERN_OK : TERN_EINVAL;
}

/* --------------------------------------------------------------- command */

static const struct cli_help capture_help = {
    "tern capture",
    "tern capture [-c FILE] [--smtp IP:PORT] [--http IP:PORT] [--data-dir DIR] [MAILPIT OPTIONS]",
    "Runs tern for testing, as Mailpit does: accepts every message for any\n"
    "recipient, delivers none, and shows them in a web UI with Mailpit's API.\n"
    "  -c, --config FILE   a configuration file (tern.conf(5)); its listeners\n"
    "                      are replaced by the one --smtp names\n"
    "  --smtp IP:PORT      SMTP listener (default 127.0.0.1:1025; MP_SMTP_BIND_ADDR)\n"
    "  --http IP:PORT      web UI and API (default 127.0.0.1:8025)\n"
    "  --data-dir DIR      where caught messages are kept (default the config's)\n"};

int cmd_capture(int argc, char **argv)
{
	const char *path;
	if (cli_help_asked(argc, argv)) {
		cli_help(&capture_help);
		fputs(capture_ext_help, stdout);
		fputs("See tern-capture(1) and docs/capture.md.\n", stdout);
		return 0;
	}
	if (cli_take_config(&argc, argv, &path) != 0)
		return cli_usage(&capture_help, "-c needs a file name");
	static struct capture_ext ext; /* lives as long as the daemon */
	char why[512];
	if (capture_args_parse(argc, argv, &ext, why, sizeof(why)) != TERN_OK ||
	    capture_env_apply(&ext, environ, why, sizeof(why)) != TERN_OK)
		return cli_usage(&capture_help, "%s", why);
	if (capture_ext_load_files(&ext, why, sizeof(why)) != TERN_OK) {
		fprintf(stderr, "tern: %s\n", why);
		return 1;
	}
	/* Mailpit: --smtp-auth-accept-any wins over a users file */
	if (ext.smtp_auth && !capture_ext_on(&ext, CX_SMTP_AUTH_ACCEPT_ANY))
		smtp_capture_set_login(smtp_login_verify, ext.smtp_auth);
	smtp_capture_require_starttls(capture_ext_on(&ext, CX_SMTP_REQUIRE_STARTTLS));
	struct capture_opts opts = {
	    ext.v[CX_SMTP] ? ext.v[CX_SMTP] : "127.0.0.1:1025",
	    ext.v[CX_HTTP] ? ext.v[CX_HTTP] : "127.0.0.1:8025",
	    ext.v[CX_DATA_DIR],
	    &ext,
	};
	int rc = daemon_run(path, &opts);
	capture_ext_free(&ext);
	return rc;
}
