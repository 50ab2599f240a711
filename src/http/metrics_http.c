/*
 * metrics_http.c — the Prometheus scrape listener: `metrics { address;
 * token; }` served by libevent's evhttp on a thread of its own, so that a
 * scrape never waits behind mail and works without any other HTTP
 * listener.
 *
 * Owns: its thread, event base, evhttp and the listening socket handed to
 * it. Answers only GET (or HEAD) /metrics; 404 for any other path, 405 for
 * another method, 401 without the bearer token when one is configured
 * (compared in constant time). Never: writes the spool, or holds a lock of
 * the mail path longer than one pass over the spool's index per scrape
 * (spool_count_states: no copies, no allocation).
 */
#include "http/metrics_http.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "core/metrics.h"
#include "queue/queue.h"

#define SCRAPE_MAX (4u << 20) /* the whole exposition; far above what we render */

struct metrics_http {
	struct event_base *base;
	struct evhttp *http;
	pthread_t thread;
	bool started;
	struct spool *sp;
	char *spool_dir;
	char *token; /* or NULL */
	const char *version;
};

/* Bytes of the regular files directly in dir (the spool keeps its
 * segments there), or -1 when it cannot be read. */
static int64_t dir_bytes(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return -1;
	int64_t sum = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		struct stat st;
		if (de->d_name[0] == '.')
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    S_ISREG(st.st_mode))
			sum += (int64_t)st.st_size;
	}
	closedir(d);
	return sum;
}

int metrics_scrape(struct spool *sp, const char *spool_dir, const char *version, struct tbuf *out)
{
	struct metrics_extra e = {.version = version};
	struct spool_state_counts qc;
	spool_count_states(sp, &qc);
	e.queue_active = (int64_t)qc.active;
	e.queue_deferred = (int64_t)qc.deferred;
	e.queue_hold = (int64_t)qc.hold;
	/* What the queue's records use; the zeros the spool prepared ahead (a
	 * spare segment and the current one's rest) are not counted. */
	struct spool_stats ss;
	spool_get_stats(sp, &ss);
	e.spool_bytes = sp ? (int64_t)ss.bytes : dir_bytes(spool_dir);
	metrics_collect_process(&e);
	return metrics_render(out, &e);
}

static bool token_ok(const struct metrics_http *m, struct evhttp_request *req)
{
	if (!m->token)
		return true;
	const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	if (!h || strncasecmp(h, "Bearer ", 7) != 0)
		return false;
	h += 7;
	size_t a = strlen(h), b = strlen(m->token);
	/* Compare over the configured length whatever the given one, so the
	 * time does not tell how much of a guess was right. */
	bool same = CRYPTO_memcmp(h, m->token, a < b ? a : b) == 0;
	return same && a == b;
}

static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *text)
{
	struct evbuffer *b = evbuffer_new();
	if (b)
		evbuffer_add(b, text, strlen(text));
	evhttp_send_reply(req, code, reason, b);
	if (b)
		evbuffer_free(b);
}

static void handle(struct evhttp_request *req, void *arg)
{
	struct metrics_http *m = arg;
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	evhttp_add_header(out, "Content-Type", "text/plain; charset=utf-8");
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	if (!path || strcmp(path, "/metrics") != 0) {
		reply_text(req, 404, "Not Found", "not found: the only page here is /metrics\n");
		return;
	}
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(out, "Allow", "GET, HEAD");
		reply_text(req, 405, "Method Not Allowed", "only GET /metrics\n");
		return;
	}
	if (!token_ok(m, req)) {
		evhttp_add_header(out, "WWW-Authenticate", "Bearer realm=\"tern metrics\"");
		reply_text(req, 401, "Unauthorized", "a bearer token is required\n");
		return;
	}
	struct tbuf t = TBUF_INIT(SCRAPE_MAX);
	if (metrics_scrape(m->sp, m->spool_dir, m->version, &t) != TERN_OK) {
		tbuf_free(&t);
		log_error("event=metrics_render_failed");
		reply_text(req, 500, "Internal Server Error", "cannot render the metrics\n");
		return;
	}
	evhttp_remove_header(out, "Content-Type");
	evhttp_add_header(out, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	struct evbuffer *b = evbuffer_new();
	if (b)
		evbuffer_add(b, t.data, t.len);
	tbuf_free(&t);
	evhttp_send_reply(req, 200, "OK", b);
	if (b)
		evbuffer_free(b);
}

static void *run(void *arg)
{
	struct metrics_http *m = arg;
	event_base_dispatch(m->base);
	return NULL;
}

struct metrics_http *metrics_http_start(int fd, const char *token, struct spool *sp,
                                        const char *spool_dir, const char *version, char *err,
                                        size_t errlen)
{
	struct metrics_http *m = calloc(1, sizeof(*m));
	if (!m) {
		snprintf(err, errlen, "out of memory");
		goto fail_fd;
	}
	m->sp = sp;
	m->version = version;
	if (!(m->spool_dir = strdup(spool_dir)) || (token && !(m->token = strdup(token)))) {
		snprintf(err, errlen, "out of memory");
		goto fail_fd;
	}
	if (!(m->base = event_base_new()) || !(m->http = evhttp_new(m->base))) {
		snprintf(err, errlen, "cannot create the event loop");
		goto fail_fd;
	}
	evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
	                                        EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE);
	evhttp_set_max_headers_size(m->http, 16 * 1024);
	evhttp_set_max_body_size(m->http, 0);
	evhttp_set_timeout(m->http, 30);
	evhttp_set_gencb(m->http, handle, m);
	if (!evhttp_accept_socket_with_handle(m->http, fd)) {
		snprintf(err, errlen, "cannot listen: %s", strerror(errno));
		goto fail_fd;
	}
	fd = -1; /* evhttp's now */
	if (pthread_create(&m->thread, NULL, run, m) != 0) {
		snprintf(err, errlen, "cannot start the metrics thread");
		goto fail;
	}
	m->started = true;
	return m;
fail_fd:
	if (fd >= 0)
		close(fd);
fail:
	metrics_http_stop(m);
	return NULL;
}

void metrics_http_stop(struct metrics_http *m)
{
	if (!m)
		return;
	if (m->started) {
		event_base_loopbreak(m->base);
		pthread_join(m->thread, NULL);
	}
	if (m->http)
		evhttp_free(m->http);
	if (m->base)
		event_base_free(m->base);
	free(m->spool_dir);
	free(m->token);
	free(m);
}
