/*
 * capture_webhook.c — the new-message webhook of capture mode (see
 * capture_webhook.h).
 *
 * Owns: the bounded queue of JSON bodies, the one poster thread and its
 * curl handle, the per-second spacing, the log lines of each call.
 * Must never: block the caller (the store's insert threads) on the
 * network or on a full queue, follow redirects or use a protocol but
 * http/https, or let a receiver hold the poster longer than its timeout.
 */
#include "store/capture_webhook.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/buf.h"
#include "core/log.h"

#define CALL_TIMEOUT_SEC 10L
#define CONNECT_TIMEOUT_SEC 5L

struct capture_webhook {
	char *url;
	unsigned limit;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	char *q[CAPTURE_WEBHOOK_QUEUE];
	size_t head, n;
	bool stopping;
	unsigned long long dropped;
	time_t drop_logged;
};

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
	return size * n;
}

static double now_sec(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void call(struct capture_webhook *w, CURL *c, const char *json)
{
	struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_URL, w->url);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, CALL_TIMEOUT_SEC);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_SEC);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "tern-capture-webhook");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, json);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(json));
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
	CURLcode rc = curl_easy_perform(c);
	long status = 0;
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	char qurl[256];
	log_quote(w->url, strlen(w->url), qurl, sizeof(qurl));
	if (rc != CURLE_OK)
		log_warn("event=webhook_failed url=%s reason=\"%s\"", qurl, curl_easy_strerror(rc));
	else if (status < 200 || status > 299)
		log_warn("event=webhook_failed url=%s status=%ld", qurl, status);
	else
		log_debug("event=webhook url=%s status=%ld", qurl, status);
	curl_slist_free_all(hdr);
}

static void *poster(void *arg)
{
	struct capture_webhook *w = arg;
	CURL *c = curl_easy_init();
	double next = 0;
	for (;;) {
		pthread_mutex_lock(&w->mu);
		while (w->n == 0 && !w->stopping)
			pthread_cond_wait(&w->cv, &w->mu);
		if (w->stopping) {
			pthread_mutex_unlock(&w->mu);
			break;
		}
		char *json = w->q[w->head];
		w->head = (w->head + 1) % CAPTURE_WEBHOOK_QUEUE;
		w->n--;
		pthread_mutex_unlock(&w->mu);
		if (w->limit) {
			/* at most limit calls a second: wait for this call's slot */
			double t = now_sec();
			if (next > t) {
				double d = next - t;
				struct timespec ts = {(time_t)d,
				                      (long)((d - (double)(time_t)d) * 1e9)};
				nanosleep(&ts, NULL);
			}
			next = (next > t ? next : t) + 1.0 / w->limit;
		}
		if (c)
			call(w, c, json);
		else
			log_error("event=webhook_failed reason=\"curl_easy_init failed\"");
		free(json);
	}
	if (c)
		curl_easy_cleanup(c);
	return NULL;
}

struct capture_webhook *capture_webhook_start(const char *url, unsigned limit, char *err,
                                              size_t errlen)
{
	if (!url || (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)) {
		snprintf(err, errlen, "the webhook URL must start with http:// or https://");
		return NULL;
	}
	/* once per process, on the starting thread (not thread-safe in curl 7) */
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		snprintf(err, errlen, "libcurl did not initialise");
		return NULL;
	}
	struct capture_webhook *w = calloc(1, sizeof(*w));
	if (!w || !(w->url = tern_strdup(url))) {
		free(w);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	w->limit = limit;
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	if (pthread_create(&w->thread, NULL, poster, w) != 0) {
		pthread_mutex_destroy(&w->mu);
		pthread_cond_destroy(&w->cv);
		free(w->url);
		free(w);
		snprintf(err, errlen, "cannot start the webhook thread");
		return NULL;
	}
	return w;
}

void capture_webhook_post(struct capture_webhook *w, const char *json)
{
	if (!w || !json)
		return;
	char *copy = tern_strdup(json);
	pthread_mutex_lock(&w->mu);
	if (copy && w->n < CAPTURE_WEBHOOK_QUEUE && !w->stopping) {
		w->q[(w->head + w->n) % CAPTURE_WEBHOOK_QUEUE] = copy;
		w->n++;
		copy = NULL;
		pthread_cond_signal(&w->cv);
	} else {
		w->dropped++;
		time_t now = time(NULL);
		if (now != w->drop_logged) {
			w->drop_logged = now;
			log_warn("event=webhook_dropped reason=queue_full queued=%zu dropped=%llu",
			         w->n, w->dropped);
		}
	}
	pthread_mutex_unlock(&w->mu);
	free(copy);
}

void capture_webhook_stop(struct capture_webhook *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->mu);
	w->stopping = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->thread, NULL);
	for (; w->n; w->n--, w->head = (w->head + 1) % CAPTURE_WEBHOOK_QUEUE)
		free(w->q[w->head]);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv);
	free(w->url);
	free(w);
	curl_global_cleanup();
}
