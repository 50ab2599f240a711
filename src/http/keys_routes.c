/*
 * keys_routes.c — /api/v1/keys (keys_routes.h) over store/apikeys.h.
 *
 * Owns: the JSON shape of a key and the checks of a new one's fields.
 * Must never: answer a token but once (the creation's answer), or a hash.
 */
#include <string.h>

#include "core/err.h"
#include "http/api.h"
#include "http/keys_routes.h"
#include "store/apikeys.h"

static json_t *key_obj(const struct apikey *k)
{
	json_t *doms = json_array();
	const char *p = k->domains;
	while (doms && *p) {
		const char *c = strchr(p, ',');
		size_t n = c ? (size_t)(c - p) : strlen(p);
		if (n)
			json_array_append_new(doms, json_stringn(p, n));
		p += n + (c ? 1 : 0);
	}
	return json_pack("{s:s, s:s, s:s, s:o, s:I, s:I, s:I, s:I, s:o}", "id", k->id, "name",
	                 k->name, "scope", apikey_scope_name(k->scope), "from_domains",
	                 doms ? doms : json_array(), "per_second", (json_int_t)k->per_second,
	                 "per_hour", (json_int_t)k->per_hour, "per_day", (json_int_t)k->per_day,
	                 "created", (json_int_t)k->created, "revoked",
	                 k->revoked ? json_integer(k->revoked) : json_null());
}

static void list_one(const struct apikey *k, void *arg)
{
	json_array_append_new(arg, key_obj(k));
}

/* A quota field: absent or null is 0 (no limit); else a non-negative integer. */
static bool quota_field(json_t *o, const char *name, uint64_t *v, struct api_error *e)
{
	json_t *x = json_object_get(o, name);
	*v = 0;
	if (!x || json_is_null(x))
		return true;
	if (!json_is_integer(x) || json_integer_value(x) < 0) {
		api_error_set(e, 422, "invalid_field", name, "%s must be a non-negative integer",
		              name);
		return false;
	}
	*v = (uint64_t)json_integer_value(x);
	return true;
}

static int create(struct apikeys *k, const char *body, size_t n, json_t **out, struct api_error *e)
{
	json_t *o = api_json_parse(body, n, e);
	if (!o)
		return e->status;
	int st = 422;
	const char *name = json_string_value(json_object_get(o, "name"));
	json_t *sc = json_object_get(o, "scope");
	enum apikey_scope scope = sc ? apikey_scope_parse(json_string_value(sc)) : APIKEY_SEND;
	json_t *dj = json_object_get(o, "from_domains");
	const char *doms[KEYS_DOMAINS_MAX];
	size_t nd = 0;
	uint64_t ps, ph, pd;
	if (!name || !name[0]) {
		api_error_set(e, 422, "invalid_field", "name", "name is required");
		goto out;
	}
	if (!scope || (sc && !json_is_string(sc))) {
		api_error_set(e, 422, "invalid_field", "scope", "scope is read, send or admin");
		goto out;
	}
	if (dj && !json_is_null(dj)) {
		if (!json_is_array(dj) || json_array_size(dj) > KEYS_DOMAINS_MAX) {
			api_error_set(e, 422, "invalid_field", "from_domains",
			              "from_domains is a list of at most %d domains",
			              KEYS_DOMAINS_MAX);
			goto out;
		}
		for (size_t i = 0; i < json_array_size(dj); i++) {
			const char *d = json_string_value(json_array_get(dj, i));
			if (!d || !d[0]) {
				api_error_set(e, 422, "invalid_field", "from_domains",
				              "from_domains[%zu] is not a domain", i);
				goto out;
			}
			doms[nd++] = d;
		}
	}
	if (!quota_field(o, "per_second", &ps, e) || !quota_field(o, "per_hour", &ph, e) ||
	    !quota_field(o, "per_day", &pd, e))
		goto out;
	char token[APIKEY_TOKEN_LEN + 1];
	struct apikey key;
	int rc = apikeys_create(k, name, scope, doms, nd, token, sizeof(token), &key);
	if (rc == TERN_OK && (ps || ph || pd)) {
		rc = apikeys_set_limits(k, key.id, ps, ph, pd);
		key.per_second = ps;
		key.per_hour = ph;
		key.per_day = pd;
	}
	if (rc == TERN_EEXIST) {
		st = 409;
		api_error_set(e, 409, "key_exists", "name", "a key named '%.64s' exists", name);
	} else if (rc == TERN_EINVAL || rc == TERN_ESYNTAX || rc == TERN_ELIMIT) {
		api_error_set(e, 422, "invalid_field", "name",
		              "name is 1-64 of A-Z a-z 0-9 . _ - and the domains domain names");
	} else if (rc != TERN_OK) {
		st = 503;
		api_error_set(e, 503, "store_unavailable", NULL, "the key store failed: %s",
		              tern_strerror(rc));
	} else {
		json_t *r = key_obj(&key);
		json_object_set_new(r, "token", json_string(token));
		*out = r;
		st = 201;
	}
	explicit_bzero(token, sizeof(token));
out:
	json_decref(o);
	return st;
}

int keys_route(struct apikeys *k, const char *method, const char *name, const char *body, size_t n,
               json_t **out, struct api_error *e)
{
	*out = NULL;
	if (!name[0] && strcmp(method, "GET") == 0) {
		json_t *arr = json_array();
		if (!arr || apikeys_list(k, list_one, arr) != TERN_OK) {
			json_decref(arr);
			api_error_set(e, 503, "store_unavailable", NULL, "the key store failed");
			return 503;
		}
		*out = json_pack("{s:o}", "keys", arr);
		return 200;
	}
	if (!name[0] && strcmp(method, "POST") == 0)
		return create(k, body, n, out, e);
	if (name[0] && strcmp(method, "DELETE") == 0) {
		int rc = apikeys_revoke(k, name);
		if (rc == TERN_ENOTFOUND) {
			api_error_set(e, 404, "not_found", NULL, "no live key named '%.64s'", name);
			return 404;
		}
		if (rc != TERN_OK) {
			api_error_set(e, 503, "store_unavailable", NULL, "the key store failed");
			return 503;
		}
		*out = json_pack("{s:s, s:b}", "name", name, "revoked", 1);
		return 200;
	}
	api_error_set(e, 405, "method_not_allowed", NULL, "this route does not take that method");
	return 405;
}
