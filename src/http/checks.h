/*
 * checks.h — the message checks behind /api/v1/message/{ID}/html-check,
 * link-check and sa-check, as the HTTP server runs them (http/checks.c):
 * a job is built on the HTTP worker from the store, run on the server's
 * check pool, and its result (Mailpit's response JSON) replied on the
 * worker. Internal to src/http/.
 */
#ifndef TERN_HTTP_CHECKS_H
#define TERN_HTTP_CHECKS_H

#include <jansson.h>
#include <stdbool.h>

struct capture_store;
struct http_check;

/* A job for the check named by kind ("html-check", "link-check",
 * "sa-check") of message id. NULL when there is nothing to run: then
 * *status says what to answer: 404 (no such message), 400 with the
 * reason in *why (Mailpit's: "message does not contain HTML", "no
 * SpamAssassin service defined"), or 500. */
struct http_check *http_check_new(struct capture_store *st, const char *id, const char *kind,
                                  bool follow, int *status, const char **why);
/* Runs the check (pool thread; blocks on the network for link and spam
 * checks). cancel: see store/checks.h's link_check. */
void http_check_run(struct http_check *c, const int *cancel);
/* The result (a new reference; NULL when memory ran out). */
json_t *http_check_take(struct http_check *c);
void http_check_free(struct http_check *c);

/* Whether a spam scanner is configured (webui's SpamAssassin flag). */
bool http_spam_enabled(void);

#endif
