/*
 * log.h — one line per event, key=value.
 *
 * Every line is "TIMESTAMP LEVEL event=NAME key=value ...", written with a
 * single write(2) so lines from different threads never interleave. Callers
 * format the key=value part; values that may contain spaces or come from the
 * network go through log_quote() so a client cannot forge log fields.
 */
#ifndef TERN_CORE_LOG_H
#define TERN_CORE_LOG_H

#include <stddef.h>

enum log_level { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };

/* Where log lines go: fd 2 by default. Not thread-safe: call at startup. */
void log_set_fd(int fd);
void log_set_level(enum log_level lvl);
int log_level_parse(const char *s, enum log_level *out);

void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_LVL_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)

/*
 * Renders untrusted bytes as a log value: printable ASCII without spaces,
 * quotes or '=' is copied as is; anything else is put in double quotes with
 * control bytes, quotes and backslashes escaped as \xHH. Output is truncated
 * (with "...") to fit out; always NUL-terminated. Returns out.
 */
char *log_quote(const char *p, size_t n, char *out, size_t outlen);

/*
 * An envelope address (without brackets; "" for the null path) as a log
 * value: "<addr>" rendered by log_quote(), so an ordinary address reads
 * from=<a@example.org> and a quoted local part with spaces, quotes or '='
 * cannot forge fields. LOG_ADDR_MAX is enough for any SMTP address.
 */
#define LOG_ADDR_MAX 2200
char *log_quote_addr(const char *addr, char *out, size_t outlen);

#endif
