/*
 * metrics_http.h — the Prometheus scrape listener (metrics { address;
 * token; }): GET /metrics on a thread of its own.
 *
 * Owns: one thread, its event base and the listening socket given to it.
 * Never: serves anything but /metrics; answers without the token when one
 * is configured.
 */
#ifndef TERN_HTTP_METRICS_HTTP_H
#define TERN_HTTP_METRICS_HTTP_H

#include <stddef.h>

#include "core/buf.h"

struct spool;
struct metrics_http;

/*
 * Serves the registry (core/metrics.h) on the listening socket fd, which
 * it takes over (closed on failure too). token: required as
 * "Authorization: Bearer TOKEN" when not NULL. sp and spool_dir give the
 * queue and spool figures computed at each scrape; sp must outlive the
 * listener, version must stay valid. Needs loop_global_init() first. NULL
 * with err filled on failure.
 */
struct metrics_http *metrics_http_start(int fd, const char *token, struct spool *sp,
                                        const char *spool_dir, const char *version, char *err,
                                        size_t errlen);
/* The body of one scrape: the registry plus the queue (sp), spool
 * (spool_dir) and process figures, in the text exposition format. For
 * another listener that mounts /metrics (the API's). Any thread. */
int metrics_scrape(struct spool *sp, const char *spool_dir, const char *version, struct tbuf *out);
/* Stops the thread, closes every connection and frees m. NULL is a no-op. */
void metrics_http_stop(struct metrics_http *m);

#endif
