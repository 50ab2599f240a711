/*
 * spam_check.c — capture mode's spam check: asks rspamd (its HTTP
 * protocol, POST /checkv2) or SpamAssassin's spamd (the spamc protocol,
 * REPORT) about one message and answers Mailpit's SpamAssassinResponse
 * {Error, IsSpam, Score, Rules:[{Name, Score, Description}]}.
 *
 * Owns: the scanner spec syntax, one TCP exchange per check (connect,
 * send, read to the end, every step bounded by the timeout), and the
 * parsing of both answers.
 * Must never: run on an event loop (it blocks for up to the timeout),
 * read an answer without bound (ANSWER_MAX), or fail without an Error
 * text the UI can show.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "store/checks.h"

#define ANSWER_MAX (4u * 1024 * 1024)

enum scanner { SC_RSPAMD, SC_SPAMD };

struct spec {
	enum scanner kind;
	char host[256];
	char port[8];
};

static bool spec_parse(const char *s, struct spec *out)
{
	if (!s || !*s)
		return false;
	out->kind = SC_SPAMD;
	if (strncasecmp(s, "rspamd:", 7) == 0) {
		out->kind = SC_RSPAMD;
		s += 7;
	} else if (strncasecmp(s, "spamassassin:", 13) == 0) {
		s += 13;
	}
	const char *colon;
	if (*s == '[') {
		const char *rb = strchr(s, ']');
		if (!rb || rb[1] != ':' || rb == s + 1 || (size_t)(rb - s - 1) >= sizeof(out->host))
			return false;
		memcpy(out->host, s + 1, (size_t)(rb - s - 1));
		out->host[rb - s - 1] = '\0';
		colon = rb + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon || colon == s || (size_t)(colon - s) >= sizeof(out->host) ||
		    memchr(s, ':', (size_t)(colon - s)))
			return false;
		memcpy(out->host, s, (size_t)(colon - s));
		out->host[colon - s] = '\0';
	}
	const char *p = colon + 1;
	size_t n = strlen(p);
	if (n == 0 || n > 5 || strspn(p, "0123456789") != n)
		return false;
	long port = strtol(p, NULL, 10);
	if (port < 1 || port > 65535)
		return false;
	memcpy(out->port, p, n + 1);
	for (const char *h = out->host; *h; h++)
		if (!(isalnum((unsigned char)*h) || *h == '.' || *h == '-' || *h == ':' ||
		      *h == '_'))
			return false;
	return true;
}

bool spam_check_spec_ok(const char *spec)
{
	struct spec s;
	return spec_parse(spec, &s);
}

static long ms_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int wait_fd(int fd, short ev, long deadline)
{
	for (;;) {
		long left = deadline - ms_now();
		if (left <= 0) {
			errno = ETIMEDOUT;
			return TERN_EIO;
		}
		struct pollfd p = {.fd = fd, .events = ev};
		int r = poll(&p, 1, (int)left);
		if (r > 0)
			return TERN_OK;
		if (r < 0 && errno != EINTR)
			return TERN_EIO;
	}
}

/* One exchange: connect, send req then body, read all. */
static int exchange(const struct spec *sp, const struct tbuf *req, const char *body, size_t blen,
                    long timeout_ms, struct tbuf *ans, char *err, size_t errlen)
{
	long deadline = ms_now() + timeout_ms;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
	int rc = getaddrinfo(sp->host, sp->port, &hints, &ai);
	if (rc != 0) {
		/* err is a message for people: cut short is acceptable */
		if (snprintf(err, errlen, "cannot resolve %s: %s", sp->host, gai_strerror(rc)) < 0)
			err[0] = '\0';
		return TERN_EIO;
	}
	int fd = -1;
	rc = TERN_EIO;
	for (struct addrinfo *a = ai; a; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			continue;
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		if (errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) == TERN_OK) {
			int e = 0;
			socklen_t el = sizeof(e);
			if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) == 0 && e == 0)
				break;
			errno = e;
		}
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0) {
		if (snprintf(err, errlen, "cannot connect to %s port %s: %s", sp->host, sp->port,
		             strerror(errno)) < 0)
			err[0] = '\0';
		return TERN_EIO;
	}
	const char *parts[2] = {req->data, body};
	size_t lens[2] = {req->len, blen};
	for (int i = 0; i < 2; i++) {
		size_t off = 0;
		while (off < lens[i]) {
			ssize_t w = send(fd, parts[i] + off, lens[i] - off, MSG_NOSIGNAL);
			if (w > 0) {
				off += (size_t)w;
				continue;
			}
			if (w < 0 && (errno == EAGAIN || errno == EINTR) &&
			    wait_fd(fd, POLLOUT, deadline) == TERN_OK)
				continue;
			snprintf(err, errlen, "sending to the scanner failed: %s",
			         w < 0 ? strerror(errno) : "closed");
			goto out;
		}
	}
	/* spamc half-closes after the message; rspamd takes that as the
	 * client leaving and drops the answer, so HTTP relies on its length */
	if (sp->kind == SC_SPAMD)
		shutdown(fd, SHUT_WR);
	for (;;) {
		char buf[16384];
		ssize_t r = recv(fd, buf, sizeof(buf), 0);
		if (r > 0) {
			if (ans->len + (size_t)r > ANSWER_MAX) {
				snprintf(err, errlen, "the scanner's answer is too long");
				goto out;
			}
			if (tbuf_append(ans, buf, (size_t)r) != TERN_OK) {
				rc = TERN_ENOMEM;
				goto out;
			}
			continue;
		}
		if (r == 0)
			break;
		if ((errno == EAGAIN || errno == EINTR) && wait_fd(fd, POLLIN, deadline) == TERN_OK)
			continue;
		snprintf(err, errlen, "no answer from the scanner: %s", strerror(errno));
		goto out;
	}
	rc = TERN_OK;
out:
	close(fd);
	return rc;
}

/* Scores to one decimal, rounded down, as Mailpit shows them. */
static double round1(double x)
{
	double t = x * 10 + 1e-9;
	if (!(t > -1e15 && t < 1e15)) /* NaN or absurd: leave it */
		return x;
	long long i = (long long)t; /* toward zero; floor below (no libm) */
	if ((double)i > t)
		i--;
	return (double)i / 10;
}

static json_t *error_result(const char *msg)
{
	return json_pack("{s:s, s:b, s:f, s:[]}", "Error", msg, "IsSpam", 0, "Score", 0.0, "Rules");
}

static int rule_cmp(const void *a, const void *b)
{
	json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
	double sx = json_real_value(json_object_get(x, "Score"));
	double sy = json_real_value(json_object_get(y, "Score"));
	if (sx != sy)
		return sx < sy ? 1 : -1;
	return strcmp(json_string_value(json_object_get(x, "Name")),
	              json_string_value(json_object_get(y, "Name")));
}

/* Sorts the Rules array, highest score first (Mailpit's UI order). */
static void rules_sort(json_t *rules)
{
	size_t n = json_array_size(rules);
	if (n < 2)
		return;
	json_t **v = malloc(n * sizeof(*v));
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		v[i] = json_incref(json_array_get(rules, i));
	qsort(v, n, sizeof(*v), rule_cmp);
	json_array_clear(rules);
	for (size_t i = 0; i < n; i++)
		json_array_append_new(rules, v[i]);
	free(v);
}

/* The body of an HTTP/1.x answer with status 200, or NULL. */
static const char *http_body(const struct tbuf *ans, int *status)
{
	*status = 0;
	if (!ans->data || ans->len < 12 || strncmp(ans->data, "HTTP/1.", 7) != 0)
		return NULL;
	*status = (int)strtol(ans->data + 9, NULL, 10);
	const char *b = strstr(ans->data, "\r\n\r\n");
	return b ? b + 4 : NULL;
}

static json_t *rspamd_parse(const struct tbuf *ans)
{
	int status;
	const char *body = http_body(ans, &status);
	if (!body || status != 200) {
		char m[160], first[64];
		size_t k = 0;
		for (size_t i = 0; ans->data && i < ans->len && k + 1 < sizeof(first); i++) {
			if (ans->data[i] == '\r' || ans->data[i] == '\n')
				break;
			first[k++] =
			    (ans->data[i] >= 0x20 && ans->data[i] < 0x7f) ? ans->data[i] : '?';
		}
		first[k] = '\0';
		snprintf(m, sizeof(m), "rspamd did not answer 200 (\"%s\")", k ? first : "nothing");
		return error_result(m);
	}
	json_error_t e;
	json_t *j = json_loadb(body, ans->len - (size_t)(body - ans->data), 0, &e);
	if (!json_is_object(j)) {
		json_decref(j);
		return error_result("rspamd's answer is not JSON");
	}
	double score = json_number_value(json_object_get(j, "score"));
	double req = json_number_value(json_object_get(j, "required_score"));
	const char *action = json_string_value(json_object_get(j, "action"));
	bool spam =
	    (req > 0 && score >= req) ||
	    (action && (strcmp(action, "reject") == 0 || strcmp(action, "add header") == 0 ||
	                strcmp(action, "rewrite subject") == 0));
	json_t *rules = json_array();
	const char *name;
	json_t *sym;
	json_object_foreach(json_object_get(j, "symbols"), name, sym)
	{
		const char *d = json_string_value(json_object_get(sym, "description"));
		json_array_append_new(
		    rules, json_pack("{s:s, s:f, s:s}", "Name", name, "Score",
		                     round1(json_number_value(json_object_get(sym, "score"))),
		                     "Description", d ? d : ""));
	}
	rules_sort(rules);
	json_t *res = json_pack("{s:s, s:b, s:f, s:o}", "Error", "", "IsSpam", spam, "Score",
	                        round1(score), "Rules", rules);
	json_decref(j);
	return res;
}

/* spamd's REPORT answer: "SPAMD/1.1 0 EX_OK", headers with "Spam: True ;
 * 6.1 / 5.0", a blank line, then the report whose table lines are
 * " pts rule name  description" with continuation lines indented. */
static json_t *spamd_parse(const struct tbuf *ans)
{
	const char *a = ans->data ? ans->data : "";
	if (strncmp(a, "SPAMD/", 6) != 0)
		return error_result("spamd's answer is not SPAMD/1.x");
	const char *sp = strchr(a, ' ');
	int code = sp ? (int)strtol(sp + 1, NULL, 10) : -1;
	if (code != 0) {
		char m[128];
		const char *eol = strpbrk(a, "\r\n");
		snprintf(m, sizeof(m), "spamd refused the check: %.*s",
		         (int)(eol ? eol - a : (long)strlen(a)), a);
		return error_result(m);
	}
	bool spam = false;
	double score = 0;
	const char *h = strcasestr(a, "\nSpam:");
	if (h) {
		h += 6;
		while (*h == ' ')
			h++;
		spam = strncasecmp(h, "true", 4) == 0 || strncasecmp(h, "yes", 3) == 0;
		const char *semi = strchr(h, ';');
		if (semi)
			score = strtod(semi + 1, NULL);
	}
	json_t *rules = json_array();
	const char *body = strstr(a, "\r\n\r\n");
	body = body ? body + 4 : "";
	/* the table starts after the "---- ----" ruler line */
	const char *t = strstr(body, "\n----");
	const char *p = t ? strchr(t + 1, '\n') : NULL;
	json_t *last = NULL;
	while (p && *p) {
		p++;
		const char *eol = strchr(p, '\n');
		size_t n = eol ? (size_t)(eol - p) : strlen(p);
		char line[1024];
		snprintf(line, sizeof(line), "%.*s", (int)(n < sizeof(line) ? n : sizeof(line) - 1),
		         p);
		size_t l = strlen(line);
		while (l && (line[l - 1] == '\r' || line[l - 1] == ' '))
			line[--l] = '\0';
		char *s = line;
		while (*s == ' ')
			s++;
		char *end;
		double pts = strtod(s, &end);
		if (end != s && *end == ' ') {
			char *nm = end;
			while (*nm == ' ')
				nm++;
			char *ne = nm;
			while (*ne && *ne != ' ')
				ne++;
			char *desc = ne;
			while (*desc == ' ')
				desc++;
			*ne = '\0';
			last = json_pack("{s:s, s:f, s:s}", "Name", nm, "Score", round1(pts),
			                 "Description", desc);
			json_array_append_new(rules, last);
		} else if (last && *s && line[0] == ' ') {
			const char *d = json_string_value(json_object_get(last, "Description"));
			char *nd = NULL;
			if (asprintf(&nd, "%s %s", d ? d : "", s) > 0) {
				json_object_set_new(last, "Description", json_string(nd));
				free(nd);
			}
		} else if (!*s) {
			break;
		}
		p = eol;
	}
	/* the report's order, as Mailpit keeps it */
	return json_pack("{s:s, s:b, s:f, s:o}", "Error", "", "IsSpam", spam, "Score",
	                 round1(score), "Rules", rules);
}

json_t *spam_check(const char *spec, const char *raw, size_t len, long timeout_ms)
{
	struct spec sp;
	if (!spec || !*spec)
		return error_result("SpamAssassin is not enabled");
	if (!spec_parse(spec, &sp))
		return error_result("the spam check is misconfigured");
	struct tbuf req = TBUF_INIT(4096), ans = TBUF_INIT(ANSWER_MAX + 1);
	char err[256] = "";
	json_t *res = NULL;
	if (sp.kind == SC_RSPAMD)
		tbuf_printf(&req,
		            "POST /checkv2 HTTP/1.0\r\nHost: %s\r\nContent-Length: %zu\r\n"
		            "Connection: close\r\n\r\n",
		            sp.host, len);
	else
		tbuf_printf(&req, "REPORT SPAMC/1.5\r\nContent-length: %zu\r\n\r\n", len);
	if (!req.data) {
		res = NULL;
		goto out;
	}
	int rc = exchange(&sp, &req, raw, len, timeout_ms, &ans, err, sizeof(err));
	if (rc == TERN_ENOMEM)
		goto out;
	if (rc != TERN_OK) {
		res = error_result(err[0] ? err : "the scanner could not be asked");
		goto out;
	}
	res = sp.kind == SC_RSPAMD ? rspamd_parse(&ans) : spamd_parse(&ans);
out:
	tbuf_free(&req);
	tbuf_free(&ans);
	return res;
}
