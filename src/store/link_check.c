/*
 * link_check.c — capture mode's link check: asks every http(s) link of a
 * message for its status with libcurl (HEAD, then GET when HEAD is refused
 * or fails) and answers Mailpit's LinkCheckResponse {Errors, Links:[{URL,
 * StatusCode, Status}]}.
 *
 * Owns: one curl multi handle per check, at most LINK_CHECK_PARALLEL
 * transfers at once, a timeout per link, bodies discarded (and a GET cut
 * off after BODY_MAX bytes, its status kept).
 * Must never: run on an event loop (a check takes up to a few timeouts),
 * ask anything but http and https (redirects included), or keep a body.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "store/checks.h"

#define BODY_MAX (256u * 1024)

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static bool curl_ok;

static void curl_start(void)
{
	curl_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

struct link {
	const char *url;
	CURL *e;
	bool get;    /* the second try, with GET */
	size_t body; /* bytes of body seen */
	long code;
	char err[CURL_ERROR_SIZE];
	const char *fail; /* set when done with a failure text */
};

static size_t body_cb(char *p, size_t sz, size_t n, void *arg)
{
	struct link *l = arg;
	l->body += sz * n;
	return l->body > BODY_MAX ? 0 : sz * n;
}

static const char *status_text(long code)
{
	static const struct {
		long code;
		const char *text;
	} t[] = {
	    {200, "OK"},
	    {201, "Created"},
	    {202, "Accepted"},
	    {203, "Non-Authoritative Information"},
	    {204, "No Content"},
	    {206, "Partial Content"},
	    {300, "Multiple Choices"},
	    {301, "Moved Permanently"},
	    {302, "Found"},
	    {303, "See Other"},
	    {304, "Not Modified"},
	    {307, "Temporary Redirect"},
	    {308, "Permanent Redirect"},
	    {400, "Bad Request"},
	    {401, "Unauthorized"},
	    {403, "Forbidden"},
	    {404, "Not Found"},
	    {405, "Method Not Allowed"},
	    {406, "Not Acceptable"},
	    {408, "Request Timeout"},
	    {410, "Gone"},
	    {429, "Too Many Requests"},
	    {500, "Internal Server Error"},
	    {501, "Not Implemented"},
	    {502, "Bad Gateway"},
	    {503, "Service Unavailable"},
	    {504, "Gateway Timeout"},
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (t[i].code == code)
			return t[i].text;
	return "";
}

static int link_setup(struct link *l, bool follow, long timeout_ms)
{
	if (!l->e)
		l->e = curl_easy_init();
	if (!l->e)
		return TERN_ENOMEM;
	CURL *e = l->e;
	curl_easy_setopt(e, CURLOPT_URL, l->url);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, follow ? 1L : 0L);
	curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "tern link check");
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, body_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, l);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, l->err);
	curl_easy_setopt(e, CURLOPT_PRIVATE, l);
	if (l->get)
		curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
	else
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	l->body = 0;
	l->err[0] = '\0';
	return TERN_OK;
}

json_t *link_check(json_t *links, bool follow, long timeout_ms, const int *cancel)
{
	pthread_once(&curl_once, curl_start);
	size_t n = json_array_size(links);
	if (n > LINK_CHECK_MAX)
		n = LINK_CHECK_MAX;
	if (!curl_ok)
		return json_pack("{s:i, s:[], s:s}", "Errors", (int)n, "Links", "Error",
		                 "libcurl could not start");
	struct link *v = calloc(n ? n : 1, sizeof(*v));
	CURLM *m = curl_multi_init();
	json_t *res = NULL;
	if (!v || !m)
		goto out;
	curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)LINK_CHECK_PARALLEL);
	size_t next = 0, running_n = 0;
	for (;;) {
		while (running_n < LINK_CHECK_PARALLEL && next < n) {
			struct link *l = &v[next++];
			l->url = json_string_value(json_array_get(links, next - 1));
			if (!l->url || link_setup(l, follow, timeout_ms) != TERN_OK ||
			    curl_multi_add_handle(m, l->e) != CURLM_OK) {
				l->fail = "out of memory";
				continue;
			}
			running_n++;
		}
		if (running_n == 0)
			break;
		if (cancel && __atomic_load_n(cancel, __ATOMIC_RELAXED)) {
			for (size_t i = 0; i < next; i++)
				if (v[i].e && !v[i].fail && !v[i].code) {
					curl_multi_remove_handle(m, v[i].e);
					v[i].fail = "check cancelled";
				}
			for (size_t i = next; i < n; i++) {
				v[i].url = json_string_value(json_array_get(links, i));
				v[i].fail = "check cancelled";
			}
			next = n;
			break;
		}
		int still;
		curl_multi_perform(m, &still);
		CURLMsg *msg;
		int q;
		while ((msg = curl_multi_info_read(m, &q))) {
			if (msg->msg != CURLMSG_DONE)
				continue;
			struct link *l = NULL;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&l);
			CURLcode cc = msg->data.result;
			curl_multi_remove_handle(m, l->e);
			running_n--;
			long code = 0;
			curl_easy_getinfo(l->e, CURLINFO_RESPONSE_CODE, &code);
			if (cc == CURLE_WRITE_ERROR && code > 0)
				cc = CURLE_OK; /* the body cap: the status is known */
			/* HEAD refused or failed: once more with GET */
			if (!l->get && (cc != CURLE_OK || code >= 400) &&
			    cc != CURLE_OPERATION_TIMEDOUT) {
				l->get = true;
				if (link_setup(l, follow, timeout_ms) == TERN_OK &&
				    curl_multi_add_handle(m, l->e) == CURLM_OK) {
					running_n++;
					continue;
				}
			}
			l->code = cc == CURLE_OK ? code : 0;
			if (cc != CURLE_OK) {
				/* the last part of curl's text, as Mailpit shortens Go's:
				 * "Failed to connect to h port 1 after 0 ms: Couldn't
				 * connect to server" -> "Couldn't connect to server" */
				const char *e = l->err[0] ? l->err : curl_easy_strerror(cc);
				const char *c = strstr(e, ": ");
				for (const char *nx = c; nx; nx = strstr(nx + 2, ": "))
					c = nx;
				l->fail = c && c[2] ? c + 2 : e;
			}
			if (!l->fail && l->code == 0)
				l->fail = "no status";
			/* copy the text now: the error buffer is reused by nothing else,
			 * but the handle is cleaned up below */
		}
		if (running_n)
			curl_multi_poll(m, NULL, 0, 200, NULL);
	}
	res = json_object();
	json_t *arr = json_array();
	int errors = 0;
	for (size_t i = 0; res && arr && i < n; i++) {
		struct link *l = &v[i];
		const char *status = l->fail ? l->fail : status_text(l->code);
		char buf[16];
		if (!*status) {
			snprintf(buf, sizeof(buf), "%ld", l->code);
			status = buf;
		}
		if (l->fail || l->code >= 400)
			errors++;
		json_array_append_new(arr, json_pack("{s:s, s:i, s:s}", "URL", l->url ? l->url : "",
		                                     "StatusCode", (int)l->code, "Status", status));
	}
	if (res && arr) {
		json_object_set_new(res, "Errors", json_integer(errors));
		json_object_set_new(res, "Links", arr);
	} else {
		json_decref(arr);
		json_decref(res);
		res = NULL;
	}
out:
	for (size_t i = 0; v && i < n; i++)
		if (v[i].e)
			curl_easy_cleanup(v[i].e);
	if (m)
		curl_multi_cleanup(m);
	free(v);
	return res;
}
