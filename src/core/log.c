/*
 * log.c — key=value event lines. One write(2) per line keeps lines whole
 * across threads; the timestamp is UTC with milliseconds.
 */
#include "core/log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_fd = 2;
static enum log_level log_min = LOG_LVL_INFO;

void log_set_fd(int fd)
{
	log_fd = fd;
}

void log_set_level(enum log_level lvl)
{
	log_min = lvl;
}

int log_level_parse(const char *s, enum log_level *out)
{
	static const char *names[] = {"debug", "info", "warn", "error"};
	for (int i = 0; i < 4; i++) {
		if (strcmp(s, names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	static const char *names[] = {"debug", "info", "warn", "error"};
	if (lvl < log_min)
		return;
	char line[4096];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, ts.tv_nsec / 1000000, names[lvl]);
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2;
	line[len++] = '\n';
	ssize_t w = write(log_fd, line, len);
	(void)w; /* nowhere to report a failed log write */
}

char *log_quote(const char *p, size_t n, char *out, size_t outlen)
{
	bool plain = n > 0;
	for (size_t i = 0; i < n && plain; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c <= ' ' || c >= 0x7f || c == '"' || c == '=' || c == '\\')
			plain = false;
	}
	size_t o = 0;
	if (outlen < 8) {
		if (outlen)
			out[0] = '\0';
		return out;
	}
	size_t room = outlen - 5; /* keep space for '..."' and NUL */
	if (!plain)
		out[o++] = '"';
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		bool esc = !plain && (c < ' ' || c >= 0x7f || c == '"' || c == '\\');
		size_t need = esc ? 4 : 1;
		if (o + need > room) {
			memcpy(out + o, "...", 3);
			o += 3;
			break;
		}
		if (esc)
			o += (size_t)snprintf(out + o, 5, "\\x%02x", c);
		else
			out[o++] = (char)c;
	}
	if (!plain)
		out[o++] = '"';
	out[o] = '\0';
	return out;
}

char *log_quote_addr(const char *addr, char *out, size_t outlen)
{
	char tmp[530]; /* "<" + the longest SMTP address (quotes included) + ">" */
	size_t n = addr ? strnlen(addr, sizeof(tmp) - 2) : 0;
	tmp[0] = '<';
	if (n)
		memcpy(tmp + 1, addr, n);
	tmp[n + 1] = '>';
	return log_quote(tmp, n + 2, out, outlen);
}
