/*
 * suppress_routes.c — the one-click unsubscribe endpoint (RFC 8058) and the
 * suppression API as server-independent handlers (suppress_routes.h).
 *
 * Owns: request decoding (percent-decoding, the query's domain, the PUT
 * body) and the JSON answers. The list itself is store/suppress.c's.
 * Never: unsubscribes on anything but a POST with the One-Click field and a
 * token whose HMAC verifies, or echoes request bytes into a response
 * unescaped (jansson escapes every string).
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/codec.h"
#include "core/err.h"
#include "core/log.h"
#include "http/suppress_routes.h"
#include "store/events.h"
#include "store/suppress.h"

/* Appends a JSON value (consumed) to out. */
static void put_json(struct tbuf *out, json_t *v)
{
	char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
	if (s)
		tbuf_append_str(out, s);
	free(s);
	json_decref(v);
}

static int fail(struct tbuf *out, int status, const char *code, const char *msg)
{
	put_json(out, json_pack("{s:s, s:s}", "error", code, "message", msg));
	return status;
}

static json_t *entry_json(const struct suppress_entry *e)
{
	return json_pack("{s:s, s:s, s:s, s:s, s:I, s:s}", "address", e->addr, "domain", e->scope,
	                 "reason", suppress_reason_name(e->reason), "detail", e->detail, "created",
	                 (json_int_t)e->created, "queue_id", e->queue_id);
}

/* Whether the body holds the RFC 8058 field: "List-Unsubscribe=One-Click"
 * as a form field (between '&' or line breaks, or a multipart part's value). */
static bool one_click(const char *b, size_t n)
{
	static const char form[] = "List-Unsubscribe=One-Click";
	static const char name[] = "name=\"List-Unsubscribe\"";
	size_t fl = sizeof(form) - 1;
	for (size_t i = 0; i + fl <= n; i++) {
		if (memcmp(b + i, form, fl) != 0)
			continue;
		bool start = i == 0 || b[i - 1] == '&' || b[i - 1] == '\n';
		bool end =
		    i + fl == n || b[i + fl] == '&' || b[i + fl] == '\r' || b[i + fl] == '\n';
		if (start && end)
			return true;
	}
	/* multipart/form-data: a part named List-Unsubscribe whose value is One-Click */
	const char *p = memmem(b, n, name, sizeof(name) - 1);
	return p && memmem(p, n - (size_t)(p - b), "\r\n\r\nOne-Click", 13) != NULL;
}

int suppress_http_unsubscribe(const char *data_dir, const char *method, const char *token,
                              size_t token_len, const char *body, size_t body_len, struct tbuf *out)
{
	if (strcmp(method, "POST") != 0)
		return fail(out, 405, "method_not_allowed",
		            "one-click unsubscribe takes a POST with List-Unsubscribe=One-Click "
		            "(RFC 8058)");
	if (!body || !one_click(body, body_len))
		return fail(out, 400, "not_one_click",
		            "the body must hold List-Unsubscribe=One-Click (RFC 8058)");
	unsigned char key[SUPPRESS_KEY_LEN];
	char scope[SUPPRESS_DOMAIN_MAX], addr[SUPPRESS_ADDR_MAX];
	if (suppress_key_load(data_dir, key) != TERN_OK)
		return fail(out, 500, "store_unavailable", "the suppression key cannot be read");
	bool ok =
	    suppress_unsub_verify(key, token, token_len, scope, sizeof(scope), addr, sizeof(addr));
	memset(key, 0, sizeof(key));
	if (!ok)
		return fail(out, 404, "unknown_token", "this unsubscribe link is not valid");
	struct suppress_db *db = suppress_shared(data_dir);
	if (!db || suppress_add(db, scope, addr, SUPPRESS_UNSUBSCRIBE, "one-click (RFC 8058)",
	                        NULL) != TERN_OK)
		return fail(out, 500, "store_failed", "the suppression list cannot be written");
	char qa[LOG_ADDR_MAX], qs[SUPPRESS_DOMAIN_MAX * 4 + 8];
	log_info("event=suppress_added to=%s scope=%s reason=unsubscribe",
	         log_quote_addr(addr, qa, sizeof(qa)),
	         scope[0] ? log_quote(scope, strlen(scope), qs, sizeof(qs)) : "global");
	suppress_emit_event(EV_UNSUBSCRIBED, NULL, addr, scope, "one-click (RFC 8058)");
	put_json(out, json_pack("{s:s, s:s}", "unsubscribed", addr, "domain", scope));
	return 200;
}

/* ---- the API ------------------------------------------------------------- */

/* The query's "domain" parameter: *has false when absent. */
static bool query_domain(const char *q, char *out, size_t outlen, bool *has)
{
	*has = false;
	out[0] = '\0';
	while (q && *q) {
		const char *amp = strchr(q, '&');
		size_t n = amp ? (size_t)(amp - q) : strlen(q);
		if (n >= 7 && strncmp(q, "domain=", 7) == 0) {
			*has = true;
			if (!tern_pct_decode(q + 7, n - 7, out, outlen))
				return false;
		}
		q = amp ? amp + 1 : NULL;
	}
	return true;
}

struct list_arg {
	json_t *arr;
};

static bool add_entry(const struct suppress_entry *e, void *arg)
{
	struct list_arg *l = arg;
	json_array_append_new(l->arr, entry_json(e));
	return true;
}

int suppress_http_api(const char *data_dir, const char *method, const char *path, const char *query,
                      const char *body, size_t body_len, struct tbuf *out)
{
	size_t pl = strlen(SUPPRESS_API_PATH);
	if (strncmp(path, SUPPRESS_API_PATH, pl) != 0 || (path[pl] && path[pl] != '/'))
		return fail(out, 404, "not_found", "no such resource");
	const char *rest = path[pl] == '/' ? path + pl + 1 : "";
	char domain[SUPPRESS_DOMAIN_MAX], addr[SUPPRESS_ADDR_MAX];
	bool has_domain;
	if (!query_domain(query, domain, sizeof(domain), &has_domain))
		return fail(out, 400, "bad_domain", "the domain parameter is malformed");
	tern_ascii_lower(domain);
	struct suppress_db *db = suppress_shared(data_dir);
	if (!db)
		return fail(out, 500, "store_unavailable", "the suppression list cannot be opened");

	if (!*rest) {
		if (strcmp(method, "GET") != 0)
			return fail(out, 405, "method_not_allowed", "the collection takes GET");
		struct list_arg l = {json_array()};
		int n = suppress_list(db, has_domain ? domain : NULL, add_entry, &l);
		if (n < 0) {
			json_decref(l.arr);
			return fail(out, n == TERN_EINVAL ? 400 : 500, "list_failed",
			            "the suppression list cannot be read");
		}
		put_json(out, json_pack("{s:o}", "suppressions", l.arr));
		return 200;
	}
	if (!tern_pct_decode(rest, strlen(rest), addr, sizeof(addr)) || strchr(addr, '/'))
		return fail(out, 400, "bad_address", "the path does not name an address");
	char norm[SUPPRESS_ADDR_MAX];
	if (!suppress_norm_addr(addr, norm, sizeof(norm)))
		return fail(out, 400, "bad_address", "not an email address");

	struct suppress_entry e;
	if (strcmp(method, "GET") == 0) {
		/* Without a domain: the global entry; with one, that domain's only. */
		bool found = suppress_check(db, has_domain ? domain : NULL, norm, &e) &&
		             strcmp(e.scope, has_domain ? domain : "") == 0;
		if (!found)
			return fail(out, 404, "not_suppressed", "the address is not on that list");
		put_json(out, entry_json(&e));
		return 200;
	}
	if (strcmp(method, "DELETE") == 0) {
		int rc = suppress_del(db, domain, norm);
		if (rc == TERN_ENOTFOUND)
			return fail(out, 404, "not_suppressed", "the address is not on the list");
		if (rc != TERN_OK)
			return fail(out, rc == TERN_EINVAL ? 400 : 500, "delete_failed",
			            "the entry cannot be removed");
		return 204;
	}
	if (strcmp(method, "PUT") != 0)
		return fail(out, 405, "method_not_allowed", "an entry takes GET, PUT or DELETE");
	json_error_t jerr;
	json_t *j =
	    body_len ? json_loadb(body, body_len, JSON_REJECT_DUPLICATES, &jerr) : json_object();
	if (!j || !json_is_object(j)) {
		json_decref(j);
		return fail(out, 400, "bad_json", "the body must be a JSON object");
	}
	const char *d = has_domain ? domain : "", *r = "manual", *detail = "added through the API";
	json_t *v;
	bool ok = true;
	if ((v = json_object_get(j, "domain")))
		ok = ok && json_is_string(v) && (d = json_string_value(v));
	if ((v = json_object_get(j, "reason")))
		ok = ok && json_is_string(v) && (r = json_string_value(v));
	if ((v = json_object_get(j, "detail")))
		ok = ok && json_is_string(v) && (detail = json_string_value(v));
	enum suppress_reason reason;
	int status;
	if (!ok || !suppress_reason_parse(r, &reason)) {
		status = fail(out, 400, "bad_field",
		              "domain and detail are strings; reason is bounce, complaint, "
		              "unsubscribe or manual");
	} else if (suppress_add(db, d, norm, reason, detail, NULL) != TERN_OK) {
		status = fail(out, 400, "bad_entry", "the domain or address is not valid");
	} else if (!suppress_check(db, d, norm, &e)) {
		status = fail(out, 500, "store_failed", "the entry cannot be read back");
	} else {
		put_json(out, entry_json(&e));
		status = 200;
	}
	json_decref(j);
	return status;
}

enum suppress_scope_kind suppress_http_api_scope(const char *method, const char *path,
                                                 const char *query, const char *body,
                                                 size_t body_len, char *out, size_t outlen)
{
	bool has;
	if (!outlen || !query_domain(query, out, outlen, &has))
		return SUPPRESS_SCOPE_BAD;
	size_t pl = strlen(SUPPRESS_API_PATH);
	bool collection = strncmp(path, SUPPRESS_API_PATH, pl) == 0 && path[pl] == '\0';
	if (collection && strcmp(method, "GET") == 0 && !has)
		return SUPPRESS_SCOPE_ALL;
	if (strcmp(method, "PUT") == 0 && !collection && body_len) {
		json_error_t jerr;
		json_t *j = json_loadb(body, body_len, JSON_REJECT_DUPLICATES, &jerr);
		json_t *v = json_is_object(j) ? json_object_get(j, "domain") : NULL;
		bool ok = json_is_object(j) && (!v || json_is_string(v));
		if (ok && v)
			ok = tern_strlcpy(out, json_string_value(v), outlen) < outlen;
		json_decref(j);
		if (!ok)
			return SUPPRESS_SCOPE_BAD;
	}
	tern_ascii_lower(out);
	return SUPPRESS_SCOPE_ONE;
}
