/*
 * checks.h — the message checks of capture mode, in Mailpit's response
 * shapes (tests/data/mailpit-api/swagger.json): the HTML check
 * (HTMLCheckResponse, from caniemail.com's data embedded at build time),
 * the link check (LinkCheckResponse, libcurl) and the spam check
 * (SpamAssassinResponse, rspamd's HTTP protocol or spamd's).
 *
 * html_check and checks_links are pure functions over their input; the
 * network checks block (seconds) and must run on a thread, never on an
 * event loop. Every function returns a new jansson reference, or NULL only
 * when memory ran out.
 */
#ifndef TERN_STORE_CHECKS_H
#define TERN_STORE_CHECKS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* HTMLCheckResponse {Platforms, Total, Warnings} for the HTML body html
 * (len bytes, any bytes; NUL bytes end nothing). */
json_t *html_check(const char *html, size_t len);

/* The http(s) links of a message, each once, in order of first
 * appearance: href and src attributes of html, then URLs in text.
 * Appended to arr (a JSON array of strings); at most max in all. */
void checks_links(const char *html, size_t hlen, const char *text, size_t tlen, size_t max,
                  json_t *arr);

/* LinkCheckResponse {Errors, Links:[{URL, StatusCode, Status}]} for the
 * links (a JSON array of strings): each is asked with HEAD (GET when HEAD
 * is refused), at most LINK_CHECK_PARALLEL at once, timeout_ms each.
 * follow: follow redirects (at most 5). cancel (may be NULL): when it
 * becomes non-zero (any thread) the check ends within ~200 ms, the links
 * not yet answered reported as "check cancelled". */
#define LINK_CHECK_MAX 200
#define LINK_CHECK_PARALLEL 8
json_t *link_check(json_t *links, bool follow, long timeout_ms, const int *cancel);

/*
 * SpamAssassinResponse {Error, IsSpam, Score, Rules:[{Name, Score,
 * Description}]} for the raw message, asked of the scanner named by spec:
 *   "rspamd:HOST:PORT"        rspamd's HTTP protocol (POST /checkv2)
 *   "spamassassin:HOST:PORT"  spamd's protocol (spamc, SYMBOLS / REPORT)
 *   "HOST:PORT"               spamd (Mailpit's MP_ENABLE_SPAMASSASSIN)
 * HOST may be [IPv6]. A scanner that cannot be asked gives Error set
 * (Mailpit's shape); spec NULL or "" gives "SpamAssassin is not enabled".
 */
json_t *spam_check(const char *spec, const char *raw, size_t len, long timeout_ms);
/* Whether spec is one spam_check understands (conf.c checks the config). */
bool spam_check_spec_ok(const char *spec);

#endif
