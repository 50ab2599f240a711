/*
 * checks.c — the jobs of html-check, link-check and sa-check for the HTTP
 * server: what each needs from the store (the message's HTML and text, or
 * its raw bytes), which spam scanner is configured (capture.spam_check,
 * else Mailpit's MP_ENABLE_SPAMASSASSIN), and running the check of
 * store/checks.h on a pool thread.
 *
 * Owns: the job's inputs and result. Never touches evhttp (server.c
 * replies) and never runs a network check on the caller's thread
 * (http_check_new only reads the store).
 */
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/runtime.h"
#include "http/checks.h"
#include "store/checks.h"
#include "store/store.h"

#define LINK_TIMEOUT_MS 5000  /* per link */
#define SPAM_TIMEOUT_MS 30000 /* per message */

enum kind { CHECK_HTML, CHECK_LINK, CHECK_SPAM };

struct http_check {
	enum kind kind;
	bool follow;
	json_t *msg; /* capture_message: HTML, Text */
	struct tbuf raw;
	char *spec;
	json_t *result;
};

/* The configured spam scanner, or NULL. Caller frees. */
static char *spam_spec_dup(void)
{
	char *spec = NULL;
	struct tern_runtime *rt = runtime_acquire();
	if (rt) {
		if (rt->conf->capture.spam_check && rt->conf->capture.spam_check[0])
			spec = tern_strdup(rt->conf->capture.spam_check);
		runtime_release(rt);
	}
	const char *env = getenv("MP_ENABLE_SPAMASSASSIN");
	if (!spec && env && *env && spam_check_spec_ok(env))
		spec = tern_strdup(env);
	return spec;
}

bool http_spam_enabled(void)
{
	char *s = spam_spec_dup();
	free(s);
	return s != NULL;
}

struct http_check *http_check_new(struct capture_store *st, const char *id, const char *kind,
                                  bool follow, int *status, const char **why)
{
	*status = 500;
	*why = NULL;
	struct http_check *c = calloc(1, sizeof(*c));
	if (!c) {
		*status = 500;
		return NULL;
	}
	c->kind = strcmp(kind, "html-check") == 0   ? CHECK_HTML
	          : strcmp(kind, "link-check") == 0 ? CHECK_LINK
	                                            : CHECK_SPAM;
	c->follow = follow;
	c->raw = (struct tbuf)TBUF_INIT(SIZE_MAX / 2);
	c->msg = capture_message(st, id, false);
	if (!c->msg) {
		*status = 404;
		goto fail;
	}
	const char *html = json_string_value(json_object_get(c->msg, "HTML"));
	if (c->kind == CHECK_HTML && (!html || !*html)) {
		*status = 400;
		*why = "message does not contain HTML";
		goto fail;
	}
	if (c->kind == CHECK_SPAM) {
		c->spec = spam_spec_dup();
		if (!c->spec) {
			*status = 400;
			*why = "no SpamAssassin service defined";
			goto fail;
		}
		int rc = capture_raw(st, id, &c->raw);
		if (rc != TERN_OK) {
			*status = rc == TERN_ENOTFOUND ? 404 : 500;
			goto fail;
		}
	}
	return c;
fail:
	http_check_free(c);
	return NULL;
}

void http_check_run(struct http_check *c, const int *cancel)
{
	json_t *jh = json_object_get(c->msg, "HTML"), *jt = json_object_get(c->msg, "Text");
	const char *html = json_string_value(jh), *text = json_string_value(jt);
	size_t hl = html ? json_string_length(jh) : 0, tl = text ? json_string_length(jt) : 0;
	switch (c->kind) {
	case CHECK_HTML:
		c->result = html_check(html ? html : "", hl);
		break;
	case CHECK_LINK: {
		json_t *links = json_array();
		if (links) {
			checks_links(html ? html : "", hl, text ? text : "", tl, LINK_CHECK_MAX,
			             links);
			c->result = link_check(links, c->follow, LINK_TIMEOUT_MS, cancel);
			json_decref(links);
		}
		break;
	}
	case CHECK_SPAM:
		c->result = spam_check(c->spec, c->raw.data ? c->raw.data : "", c->raw.len,
		                       SPAM_TIMEOUT_MS);
		break;
	}
}

json_t *http_check_take(struct http_check *c)
{
	json_t *r = c->result;
	c->result = NULL;
	return r;
}

void http_check_free(struct http_check *c)
{
	if (!c)
		return;
	json_decref(c->msg);
	json_decref(c->result);
	tbuf_free(&c->raw);
	free(c->spec);
	free(c);
}
