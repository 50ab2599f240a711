/*
 * api_json.c — the pure decoders of the native sending API (api.h): request
 * JSON to a message and its envelope, or an error with an HTTP status, a
 * stable code and the field at fault.
 *
 * Owns: the native schema (snake_case keys, addresses as text or objects,
 * attachments and inline images with an explicit encoding, priority,
 * metadata, send_at) and its checks; the translation to Mailpit's send
 * JSON, so that one builder (http_send_build_obj, send.c) writes every message
 * the HTTP server makes; the raw-message request.
 * Must never: do I/O or keep state, accept a message it cannot build
 * whole (every check runs before anything is returned), or put a byte of
 * the request in an error field name without bounding it.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/buf.h"
#include "core/codec.h"
#include "core/err.h"
#include "http/api.h"
#include "smtp/smtp.h"

void api_error_set(struct api_error *e, int status, const char *code, const char *field,
                   const char *fmt, ...)
{
	va_list ap;
	e->status = status;
	e->code = code;
	tern_strlcpy(e->field, field ? field : "", sizeof(e->field));
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof(e->message), fmt, ap);
	va_end(ap);
}

void api_send_free(struct api_send *s)
{
	if (!s)
		return;
	http_send_msg_free(&s->msg);
	free(s->from_domain);
	free(s->metadata);
	free(s->unsub_mailto);
	memset(s, 0, sizeof(*s));
}

json_t *api_json_parse(const char *body, size_t len, struct api_error *e)
{
	json_error_t jerr;
	json_t *j = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &jerr);
	if (!j) {
		api_error_set(e, 400, "malformed_json", NULL, "the body is not valid JSON: %s",
		              jerr.text);
		return NULL;
	}
	if (!json_is_object(j)) {
		api_error_set(e, 400, "invalid_request", NULL, "the body must be a JSON object");
		json_decref(j);
		return NULL;
	}
	return j;
}

/* ----------------------------------------------------------- addresses */

/* A mailbox we can put in an envelope: addr-spec with a domain. */
static bool valid_mailbox(const char *s, size_t n)
{
	struct smtp_path p;
	if (n == 0 || n > SMTP_ADDR_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || s[i] == 0x7f || s[i] == '<' || s[i] == '>')
			return false;
	return smtp_parse_mailbox(s, n, &p) && !p.null_path && p.has_domain && !p.utf8;
}

/* "a@b" or "Name <a@b>" split into email and name (name may be empty). */
static bool split_addr_text(const char *s, char **email, char **name)
{
	size_t n = strlen(s);
	*email = *name = NULL;
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		n--;
	const char *lt = n && s[n - 1] == '>' ? memrchr(s, '<', n) : NULL;
	if (!lt) {
		while (n && (*s == ' ' || *s == '\t'))
			s++, n--;
		*email = tern_strndup(s, n);
		*name = tern_strdup("");
	} else {
		size_t nl = (size_t)(lt - s);
		while (nl && (s[nl - 1] == ' ' || s[nl - 1] == '\t'))
			nl--;
		const char *ns = s;
		while (nl && (*ns == ' ' || *ns == '\t'))
			ns++, nl--;
		/* "Name" in quotes: the quotes are syntax, not the name */
		if (nl >= 2 && ns[0] == '"' && ns[nl - 1] == '"')
			ns++, nl -= 2;
		*email = tern_strndup(lt + 1, (size_t)(s + n - 1 - (lt + 1)));
		*name = tern_strndup(ns, nl);
	}
	return *email && *name;
}

/* One address (text or {"email","name"}) into a Mailpit {"Email","Name"}. */
static int get_address(json_t *v, const char *field, json_t **out, char **email_out,
                       struct api_error *e)
{
	char *email = NULL, *name = NULL;
	int rc = TERN_ESYNTAX;
	*out = NULL;
	if (json_is_string(v)) {
		if (!split_addr_text(json_string_value(v), &email, &name)) {
			api_error_set(e, 500, "internal", field, "out of memory");
			rc = TERN_ENOMEM;
			goto out;
		}
	} else if (json_is_object(v)) {
		json_t *em = json_object_get(v, "email"), *nm = json_object_get(v, "name");
		if (!json_is_string(em)) {
			api_error_set(e, 422, "invalid_address", field,
			              "an address object needs \"email\" as a string");
			goto out;
		}
		if (nm && !json_is_null(nm) && !json_is_string(nm)) {
			api_error_set(e, 422, "invalid_field", field, "\"name\" must be a string");
			goto out;
		}
		email = tern_strdup(json_string_value(em));
		name = tern_strdup(nm && json_is_string(nm) ? json_string_value(nm) : "");
		if (!email || !name) {
			rc = TERN_ENOMEM;
			api_error_set(e, 500, "internal", field, "out of memory");
			goto out;
		}
	} else {
		api_error_set(e, 422, "invalid_address", field,
		              "an address is \"a@b\", \"Name <a@b>\" or {\"email\": \"a@b\"}");
		goto out;
	}
	if (!valid_mailbox(email, strlen(email))) {
		api_error_set(e, 422, "invalid_address", field,
		              "not a valid email address (local@domain, ASCII)");
		goto out;
	}
	if (strlen(name) > 500 || strpbrk(name, "\r\n")) {
		api_error_set(e, 422, "invalid_address", field,
		              "the display name is too long or has a line break");
		goto out;
	}
	*out = name[0] ? json_pack("{s:s, s:s}", "Email", email, "Name", name)
	               : json_pack("{s:s}", "Email", email);
	if (!*out) {
		rc = TERN_ENOMEM;
		api_error_set(e, 500, "internal", field, "out of memory");
		goto out;
	}
	if (email_out) {
		*email_out = email;
		email = NULL;
	}
	rc = TERN_OK;
out:
	free(email);
	free(name);
	return rc;
}

/* An address list (one address or an array) appended to arr; *count grows. */
static int get_address_list(json_t *obj, const char *key, json_t *arr, bool bare, size_t *count,
                            struct api_error *e)
{
	json_t *v = json_object_get(obj, key);
	char field[96];
	if (!v || json_is_null(v))
		return TERN_OK;
	size_t n = json_is_array(v) ? json_array_size(v) : 1;
	for (size_t i = 0; i < n; i++) {
		json_t *item = json_is_array(v) ? json_array_get(v, i) : v;
		if (json_is_array(v))
			snprintf(field, sizeof(field), "%s[%zu]", key, i);
		else
			snprintf(field, sizeof(field), "%s", key);
		if (++*count > API_RCPTS_MAX) {
			api_error_set(e, 422, "too_many_recipients", field,
			              "at most %d recipients per message", API_RCPTS_MAX);
			return TERN_ELIMIT;
		}
		json_t *a;
		char *email = NULL;
		int rc = get_address(item, field, &a, &email, e);
		if (rc != TERN_OK)
			return rc;
		if (bare) { /* Mailpit's Bcc is a list of plain addresses */
			json_decref(a);
			a = json_string(email);
		}
		free(email);
		if (!a || json_array_append_new(arr, a) != 0) {
			api_error_set(e, 500, "internal", field, "out of memory");
			return TERN_ENOMEM;
		}
	}
	return TERN_OK;
}

/* ---------------------------------------------------------- attachments */

/* Base64 as a JSON client sends it: the alphabet, '=' only at the end,
 * whitespace ignored, a whole number of quanta. */
static bool valid_base64(const char *s)
{
	size_t n = 0, pad = 0;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
			continue;
		if (c == '=') {
			pad++;
		} else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		           (c >= '0' && c <= '9') || c == '+' || c == '/') {
			if (pad)
				return false;
		} else {
			return false;
		}
		n++;
	}
	return n % 4 == 0 && pad <= 2;
}

static int get_files(json_t *obj, const char *key, bool inline_img, json_t *out,
                     struct api_error *e)
{
	json_t *arr = json_object_get(obj, key);
	char field[96];
	if (!arr || json_is_null(arr))
		return TERN_OK;
	if (!json_is_array(arr)) {
		api_error_set(e, 422, "invalid_field", key, "%s must be an array of objects", key);
		return TERN_ESYNTAX;
	}
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *a = json_array_get(arr, i);
		snprintf(field, sizeof(field), "%s[%zu]", key, i);
		if (!json_is_object(a)) {
			api_error_set(e, 422, "invalid_field", field, "must be an object");
			return TERN_ESYNTAX;
		}
		json_t *fn = json_object_get(a, "filename"), *ct = json_object_get(a, "content"),
		       *ty = json_object_get(a, "content_type"),
		       *en = json_object_get(a, "encoding"),
		       *cid = json_object_get(a, "content_id");
		if (en && !json_is_null(en) &&
		    (!json_is_string(en) || strcasecmp(json_string_value(en), "base64") != 0)) {
			snprintf(field, sizeof(field), "%s[%zu].encoding", key, i);
			api_error_set(e, 422, "unknown_encoding", field,
			              "the only encoding is \"base64\"");
			return TERN_ESYNTAX;
		}
		if (!json_is_string(fn) || json_string_length(fn) == 0) {
			snprintf(field, sizeof(field), "%s[%zu].filename", key, i);
			api_error_set(e, 422, "missing_field", field, "a file name is required");
			return TERN_ESYNTAX;
		}
		if (!json_is_string(ct) || !valid_base64(json_string_value(ct))) {
			snprintf(field, sizeof(field), "%s[%zu].content", key, i);
			api_error_set(e, 422, "invalid_base64", field,
			              "content must be the file's bytes in base64");
			return TERN_ESYNTAX;
		}
		if (ty && !json_is_null(ty) && !json_is_string(ty)) {
			snprintf(field, sizeof(field), "%s[%zu].content_type", key, i);
			api_error_set(e, 422, "invalid_field", field, "must be a string");
			return TERN_ESYNTAX;
		}
		if (inline_img ? !json_is_string(cid) || json_string_length(cid) == 0
		               : cid != NULL && !json_is_null(cid)) {
			snprintf(field, sizeof(field), "%s[%zu].content_id", key, i);
			api_error_set(e, 422, inline_img ? "missing_field" : "invalid_field", field,
			              inline_img ? "an inline image needs a content_id (the cid: "
			                           "the HTML refers to)"
			                         : "content_id belongs to inline images");
			return TERN_ESYNTAX;
		}
		json_t *m = json_pack("{s:O, s:O}", "Filename", fn, "Content", ct);
		if (m && ty && json_is_string(ty))
			json_object_set(m, "ContentType", ty);
		if (m && inline_img)
			json_object_set(m, "ContentID", cid);
		if (!m || json_array_append_new(out, m) != 0) {
			api_error_set(e, 500, "internal", field, "out of memory");
			return TERN_ENOMEM;
		}
	}
	return TERN_OK;
}

/* --------------------------------------------------------------- others */

static int get_string(json_t *obj, const char *key, json_t *mp, const char *mkey,
                      struct api_error *e)
{
	json_t *v = json_object_get(obj, key);
	if (!v || json_is_null(v))
		return TERN_OK;
	if (!json_is_string(v)) {
		api_error_set(e, 422, "invalid_field", key, "%s must be a string", key);
		return TERN_ESYNTAX;
	}
	if (json_object_set(mp, mkey, v) != 0) {
		api_error_set(e, 500, "internal", key, "out of memory");
		return TERN_ENOMEM;
	}
	return TERN_OK;
}

/* RFC 3339 "YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)" to unix seconds. */
static bool parse_rfc3339(const char *s, long long *out)
{
	int y, mo, d, h, mi, se, n = 0;
	if (sscanf(s, "%4d-%2d-%2d%*1[Tt ]%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &se, &n) != 6 ||
	    n != 19)
		return false;
	const char *p = s + n;
	if (*p == '.') {
		p++;
		if (*p < '0' || *p > '9')
			return false;
		while (*p >= '0' && *p <= '9')
			p++;
	}
	long long off = 0;
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		int oh, om, k = 0;
		if (sscanf(p + 1, "%2d:%2d%n", &oh, &om, &k) != 2 || k != 5 || oh > 23 || om > 59)
			return false;
		off = (oh * 3600LL + om * 60LL) * (*p == '-' ? -1 : 1);
		p += 6;
	} else {
		return false;
	}
	if (*p || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60)
		return false;
	struct tm tm = {.tm_year = y - 1900,
	                .tm_mon = mo - 1,
	                .tm_mday = d,
	                .tm_hour = h,
	                .tm_min = mi,
	                .tm_sec = se};
	*out = (long long)timegm(&tm) - off;
	return true;
}

static int get_send_at(json_t *obj, long long now, struct api_send *out, struct api_error *e)
{
	json_t *v = json_object_get(obj, "send_at");
	long long t;
	if (!v || json_is_null(v))
		return TERN_OK;
	if (json_is_integer(v))
		t = (long long)json_integer_value(v);
	else if (!json_is_string(v) || !parse_rfc3339(json_string_value(v), &t)) {
		api_error_set(e, 422, "invalid_field", "send_at",
		              "send_at is an RFC 3339 time (2026-01-02T15:04:05Z) or unix seconds");
		return TERN_ESYNTAX;
	}
	/* As SES does for its scheduled sends: a bounded horizon, so a typo in
	 * the year does not park a message in the queue for good. */
	if (t > now + API_SCHEDULE_MAX) {
		api_error_set(e, 422, "send_at_too_far", "send_at",
		              "send_at may be at most %d hours ahead", API_SCHEDULE_MAX / 3600);
		return TERN_ESYNTAX;
	}
	/* A time already past (or now) means at once. */
	if (t > now)
		out->send_at = (int64_t)t;
	return TERN_OK;
}

static int get_metadata(json_t *obj, struct api_send *out, struct api_error *e)
{
	json_t *v = json_object_get(obj, "metadata");
	const char *k;
	json_t *x;
	if (!v || json_is_null(v))
		return TERN_OK;
	if (!json_is_object(v) || json_object_size(v) > API_METADATA_MAX) {
		api_error_set(e, 422, "invalid_field", "metadata",
		              "metadata is an object of at most %d string values",
		              API_METADATA_MAX);
		return TERN_ESYNTAX;
	}
	json_object_foreach(v, k, x)
	{
		if (!json_is_string(x) || strlen(k) > API_METADATA_LEN ||
		    json_string_length(x) > API_METADATA_LEN) {
			api_error_set(
			    e, 422, "invalid_field", "metadata",
			    "metadata values are strings; keys and values at most %d bytes",
			    API_METADATA_LEN);
			return TERN_ESYNTAX;
		}
	}
	out->metadata = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
	if (!out->metadata) {
		api_error_set(e, 500, "internal", "metadata", "out of memory");
		return TERN_ENOMEM;
	}
	return TERN_OK;
}

static int get_headers(json_t *obj, json_t *mp, struct api_error *e)
{
	json_t *v = json_object_get(obj, "headers");
	json_t *pr = json_object_get(obj, "priority");
	json_t *h = json_object();
	const char *k;
	json_t *x;
	char field[120];
	if (!h)
		goto nomem;
	if (v && !json_is_null(v)) {
		if (!json_is_object(v)) {
			api_error_set(e, 422, "invalid_field", "headers",
			              "headers is an object of string values");
			goto fail;
		}
		json_object_foreach(v, k, x)
		{
			snprintf(field, sizeof(field), "headers.%.80s", k);
			size_t kl = strlen(k);
			bool ok = kl > 0 && kl <= 76;
			for (size_t i = 0; ok && i < kl; i++)
				ok = (unsigned char)k[i] > 32 && (unsigned char)k[i] < 127 &&
				     k[i] != ':';
			if (!ok || !json_is_string(x) || strpbrk(json_string_value(x), "\r\n")) {
				api_error_set(
				    e, 422, "invalid_header", field,
				    "a header name is printable ASCII without ':', its value "
				    "a string without line breaks");
				goto fail;
			}
			if (strncasecmp(k, "Content-", 8) == 0 ||
			    strcasecmp(k, "MIME-Version") == 0 || strcasecmp(k, "Bcc") == 0 ||
			    strcasecmp(k, "From") == 0 || strcasecmp(k, "To") == 0 ||
			    strcasecmp(k, "Cc") == 0 || strcasecmp(k, "Reply-To") == 0 ||
			    strcasecmp(k, "Subject") == 0) {
				api_error_set(e, 422, "invalid_header", field,
				              "this field is set by the API's own keys or the MIME "
				              "structure, not by headers");
				goto fail;
			}
			if (json_object_set(h, k, x) != 0)
				goto nomem;
		}
	}
	if (pr && !json_is_null(pr)) {
		const char *p = json_is_string(pr) ? json_string_value(pr) : "";
		const char *xp = NULL, *imp = NULL;
		if (strcmp(p, "high") == 0)
			xp = "1 (Highest)", imp = "high";
		else if (strcmp(p, "low") == 0)
			xp = "5 (Lowest)", imp = "low";
		else if (strcmp(p, "normal") != 0) {
			api_error_set(e, 422, "invalid_field", "priority",
			              "priority is \"high\", \"normal\" or \"low\"");
			goto fail;
		}
		if (xp && (json_object_set_new(h, "X-Priority", json_string(xp)) != 0 ||
		           json_object_set_new(h, "Importance", json_string(imp)) != 0))
			goto nomem;
	}
	if (json_object_size(h) && json_object_set(mp, "Headers", h) != 0)
		goto nomem;
	json_decref(h);
	return TERN_OK;
nomem:
	api_error_set(e, 500, "internal", NULL, "out of memory");
	json_decref(h);
	return TERN_ENOMEM;
fail:
	json_decref(h);
	return TERN_ESYNTAX;
}

static const char *const known_keys[] = {
    "from",        "to",       "cc",      "bcc",
    "reply_to",    "subject",  "text",    "html",
    "attachments", "inline",   "headers", "tags",
    "metadata",    "priority", "send_at", "list_unsubscribe",
};

/* list_unsubscribe: true/false, or {"mailto": ADDRESS}; one recipient only. */
static int get_list_unsub(json_t *obj, size_t n_rcpt, struct api_send *out, struct api_error *e)
{
	json_t *v = json_object_get(obj, "list_unsubscribe");
	if (!v || json_is_null(v) || json_is_false(v))
		return TERN_OK;
	json_t *m = json_is_object(v) ? json_object_get(v, "mailto") : NULL;
	const char *ms = json_string_value(m);
	bool ok = json_is_true(v) || (json_is_object(v) && json_object_size(v) == 1 && ms);
	if (ok && ms) {
		const char *at = strchr(ms, '@');
		size_t ml = strlen(ms);
		ok = at && at != ms && at[1] && ml <= 254 && !strchr(at + 1, '@');
		for (size_t i = 0; ok && i < ml; i++)
			ok = (unsigned char)ms[i] > ' ' && (unsigned char)ms[i] < 0x7f &&
			     !strchr("<>,\"()[]\\;:", ms[i]);
	}
	if (!ok) {
		api_error_set(e, 422, "invalid_field", "list_unsubscribe",
		              "list_unsubscribe is true or {\"mailto\": \"address\"}");
		return TERN_ESYNTAX;
	}
	json_t *h = json_object_get(obj, "headers");
	const char *hk;
	json_t *hv;
	if (json_is_object(h)) {
		json_object_foreach(h, hk, hv)
		{
			if (strncasecmp(hk, "List-Unsubscribe", 16) == 0) {
				api_error_set(
				    e, 422, "invalid_field", "headers",
				    "list_unsubscribe adds List-Unsubscribe and "
				    "List-Unsubscribe-Post itself: do not give them in headers");
				return TERN_ESYNTAX;
			}
		}
	}
	if (n_rcpt != 1) {
		api_error_set(e, 422, "list_unsubscribe_one_recipient", "list_unsubscribe",
		              "a message with list_unsubscribe has exactly one recipient (the link "
		              "names it): send one message per recipient, e.g. in a batch");
		return TERN_ESYNTAX;
	}
	if (ms && !(out->unsub_mailto = strdup(ms))) {
		api_error_set(e, 500, "internal", "list_unsubscribe", "out of memory");
		return TERN_ENOMEM;
	}
	out->list_unsub = true;
	return TERN_OK;
}

int api_json_send(json_t *obj, long long now, const char *msgid, struct api_send *out,
                  struct api_error *e)
{
	int rc = TERN_ESYNTAX;
	json_t *mp = json_object(), *to = json_array(), *cc = json_array(), *bcc = json_array(),
	       *rt = json_array(), *att = json_array(), *from = NULL;
	char *from_email = NULL, err[256];
	size_t n_rcpt = 0, n_rt = 0;
	const char *k;
	json_t *x;
	memset(out, 0, sizeof(*out));
	if (!mp || !to || !cc || !bcc || !rt || !att) {
		api_error_set(e, 500, "internal", NULL, "out of memory");
		rc = TERN_ENOMEM;
		goto out;
	}
	if (!json_is_object(obj)) {
		api_error_set(e, 400, "invalid_request", NULL, "a message must be a JSON object");
		goto out;
	}
	json_object_foreach(obj, k, x)
	{
		bool known = false;
		for (size_t i = 0; i < sizeof(known_keys) / sizeof(known_keys[0]) && !known; i++)
			known = strcmp(k, known_keys[i]) == 0;
		if (!known) {
			char f[80];
			snprintf(f, sizeof(f), "%.70s", k);
			api_error_set(e, 422, "unknown_field", f,
			              "unknown key (see /api/openapi.json for the message schema)");
			goto out;
		}
	}
	json_t *fv = json_object_get(obj, "from");
	if (!fv || json_is_null(fv)) {
		api_error_set(e, 422, "missing_field", "from", "from is required");
		goto out;
	}
	if (json_is_array(fv)) {
		api_error_set(e, 422, "invalid_address", "from", "from is one address");
		goto out;
	}
	if ((rc = get_address(fv, "from", &from, &from_email, e)) != TERN_OK)
		goto out;
	if ((rc = get_address_list(obj, "to", to, false, &n_rcpt, e)) != TERN_OK ||
	    (rc = get_address_list(obj, "cc", cc, false, &n_rcpt, e)) != TERN_OK ||
	    (rc = get_address_list(obj, "bcc", bcc, true, &n_rcpt, e)) != TERN_OK ||
	    (rc = get_address_list(obj, "reply_to", rt, false, &n_rt, e)) != TERN_OK)
		goto out;
	rc = TERN_ESYNTAX;
	if (n_rcpt == 0) {
		api_error_set(e, 422, "missing_recipients", "to",
		              "no recipients: give to, cc or bcc");
		goto out;
	}
	json_t *text = json_object_get(obj, "text"), *html = json_object_get(obj, "html");
	if ((!text || json_is_null(text)) && (!html || json_is_null(html))) {
		api_error_set(e, 422, "missing_body", "text", "give text, html or both");
		goto out;
	}
	if ((rc = get_string(obj, "subject", mp, "Subject", e)) != TERN_OK ||
	    (rc = get_string(obj, "text", mp, "Text", e)) != TERN_OK ||
	    (rc = get_string(obj, "html", mp, "HTML", e)) != TERN_OK ||
	    (rc = get_files(obj, "attachments", false, att, e)) != TERN_OK ||
	    (rc = get_files(obj, "inline", true, att, e)) != TERN_OK ||
	    (rc = get_headers(obj, mp, e)) != TERN_OK || (rc = get_metadata(obj, out, e)) ||
	    (rc = get_send_at(obj, now, out, e)) != TERN_OK ||
	    (rc = get_list_unsub(obj, n_rcpt, out, e)) != TERN_OK)
		goto out;
	json_t *tags = json_object_get(obj, "tags");
	if (tags && !json_is_null(tags)) {
		bool ok = json_is_array(tags) && json_array_size(tags) <= 100;
		for (size_t i = 0; ok && i < json_array_size(tags); i++) {
			json_t *t = json_array_get(tags, i);
			ok = json_is_string(t) && json_string_length(t) > 0 &&
			     json_string_length(t) <= 100 &&
			     !strpbrk(json_string_value(t), "\r\n,");
		}
		if (!ok) {
			api_error_set(e, 422, "invalid_field", "tags",
			              "tags is an array of at most 100 strings of 1-100 bytes, no "
			              "comma");
			rc = TERN_ESYNTAX;
			goto out;
		}
		json_object_set(mp, "Tags", tags);
	}
	rc = TERN_ENOMEM;
	if (json_object_set(mp, "From", from) != 0 || json_object_set(mp, "To", to) != 0 ||
	    json_object_set(mp, "Cc", cc) != 0 || json_object_set(mp, "Bcc", bcc) != 0 ||
	    json_object_set(mp, "ReplyTo", rt) != 0 || json_object_set(mp, "Attachments", att) != 0)
		goto nomem;
	/* the object itself: a text round trip cost two more passes over the body */
	rc = http_send_build_obj(mp, now, msgid, &out->msg, err, sizeof(err));
	if (rc == TERN_ELIMIT) {
		api_error_set(e, 413, "message_too_large", NULL, "the message is too large");
		goto out;
	}
	if (rc == TERN_ENOMEM)
		goto nomem;
	if (rc != TERN_OK) { /* what our checks let through but the builder refused */
		api_error_set(e, 422, "invalid_request", NULL, "%s", err);
		goto out;
	}
	const char *at = strrchr(from_email, '@');
	if (!(out->from_domain = tern_strdup(at + 1)))
		goto nomem;
	tern_ascii_lower(out->from_domain);
	rc = TERN_OK;
	goto out;
nomem:
	rc = TERN_ENOMEM;
	api_error_set(e, 500, "internal", NULL, "out of memory");
out:
	if (rc != TERN_OK)
		api_send_free(out);
	json_decref(mp);
	json_decref(to);
	json_decref(cc);
	json_decref(bcc);
	json_decref(rt);
	json_decref(att);
	json_decref(from);
	free(from_email);
	return rc;
}

/* ----------------------------------------------------------------- raw */

bool api_from_domain(const char *value, size_t n, char *out, size_t outlen)
{
	/* strip comments (one level is what mail uses) and find the one '@' */
	char buf[1024];
	size_t k = 0;
	int depth = 0;
	bool quoted = false;
	for (size_t i = 0; i < n; i++) {
		char c = value[i];
		if (quoted) {
			if (c == '\\' && i + 1 < n)
				i++;
			else if (c == '"')
				quoted = false;
			continue; /* a display name in quotes may hold '@' and ',' */
		}
		if (c == '"' && depth == 0) {
			quoted = true;
			continue;
		}
		if (c == '(')
			depth++;
		else if (c == ')' && depth > 0)
			depth--;
		else if (depth == 0 && k + 1 < sizeof(buf))
			buf[k++] = c;
	}
	buf[k] = '\0';
	if (quoted || depth || strchr(buf, ','))
		return false; /* several mailboxes, or unbalanced */
	char *s = buf, *e = buf + k;
	char *lt = strchr(buf, '<');
	if (lt) {
		char *gt = strchr(lt, '>');
		if (!gt || strchr(lt + 1, '<') || strchr(gt + 1, '<'))
			return false;
		s = lt + 1;
		e = gt;
	}
	while (s < e && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n'))
		s++;
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
		e--;
	if (!valid_mailbox(s, (size_t)(e - s)))
		return false;
	const char *at = memrchr(s, '@', (size_t)(e - s));
	size_t dl = (size_t)(e - at - 1);
	if (dl + 1 > outlen)
		return false;
	memcpy(out, at + 1, dl);
	out[dl] = '\0';
	tern_ascii_lower(out);
	return true;
}

/* The value of the one From field of a CRLF message, unfolded, or false. */
static bool raw_from(const char *m, size_t len, char *out, size_t outlen)
{
	const char *p = m, *end = m + len;
	int found = 0;
	while (p < end) {
		const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
		if (!eol || eol == p)
			break; /* the end of the header section */
		/* the whole field: this line and its continuation lines */
		const char *fe = eol;
		while (fe + 2 < end && (fe[2] == ' ' || fe[2] == '\t')) {
			const char *n = memmem(fe + 2, (size_t)(end - fe - 2), "\r\n", 2);
			if (!n)
				break;
			fe = n;
		}
		if ((size_t)(eol - p) >= 5 && strncasecmp(p, "From:", 5) == 0) {
			if (found++)
				return false;
			size_t k = 0;
			for (const char *q = p + 5; q < fe && k + 1 < outlen; q++)
				if (*q != '\r' && *q != '\n')
					out[k++] = *q;
			out[k] = '\0';
		}
		p = fe + 2;
	}
	return found == 1;
}

int api_json_raw(json_t *obj, size_t max, struct api_send *out, struct api_error *e)
{
	json_t *fv = json_object_get(obj, "from"), *rv = json_object_get(obj, "raw");
	struct tbuf dec = TBUF_INIT(max + 1), crlf = TBUF_INIT(2 * max + 2);
	char from_hdr[1024], dom[SMTP_DOMAIN_MAX + 1];
	const char *k;
	json_t *x;
	size_t n = 0;
	int rc = TERN_ESYNTAX;
	memset(out, 0, sizeof(*out));
	json_object_foreach(obj, k, x)
	{
		if (strcmp(k, "from") != 0 && strcmp(k, "to") != 0 && strcmp(k, "raw") != 0) {
			char f[80];
			snprintf(f, sizeof(f), "%.70s", k);
			api_error_set(e, 422, "unknown_field", f,
			              "a raw send has only from, to and raw");
			goto out;
		}
	}
	if (!json_is_string(fv) || !valid_mailbox(json_string_value(fv), json_string_length(fv))) {
		api_error_set(e, 422, fv ? "invalid_address" : "missing_field", "from",
		              "from is the envelope sender, an address");
		goto out;
	}
	if (!json_is_string(rv) || !valid_base64(json_string_value(rv))) {
		api_error_set(e, 422, rv ? "invalid_base64" : "missing_body", "raw",
		              "raw is the RFC 5322 message in base64");
		goto out;
	}
	json_t *tmp = json_array();
	if (!tmp)
		goto nomem;
	rc = get_address_list(obj, "to", tmp, true, &n, e);
	if (rc == TERN_OK && n == 0) {
		api_error_set(e, 422, "missing_recipients", "to", "to is required");
		rc = TERN_ESYNTAX;
	}
	if (rc != TERN_OK) {
		json_decref(tmp);
		goto out;
	}
	/* the base64 text without whitespace, then decoded */
	const char *s = json_string_value(rv);
	size_t sl = json_string_length(rv);
	if (sl / 4 * 3 > max + 3) {
		json_decref(tmp);
		api_error_set(e, 413, "message_too_large", "raw", "the message is too large");
		rc = TERN_ELIMIT;
		goto out;
	}
	char *clean = malloc(sl + 1);
	size_t cl = 0;
	if (!clean) {
		json_decref(tmp);
		goto nomem;
	}
	for (size_t i = 0; i < sl; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
			clean[cl++] = s[i];
	clean[cl] = '\0';
	rc = tern_base64_decode(clean, cl, &dec);
	free(clean);
	if (rc != TERN_OK || dec.len > max) {
		json_decref(tmp);
		if (rc == TERN_ENOMEM)
			goto nomem;
		bool big = rc == TERN_ELIMIT || dec.len > max;
		api_error_set(e, big ? 413 : 422, big ? "message_too_large" : "invalid_base64",
		              "raw", big ? "the message is too large" : "raw is not valid base64");
		rc = big ? TERN_ELIMIT : TERN_ESYNTAX;
		goto out;
	}
	/* CRLF line ends, as the spool stores messages */
	for (size_t i = 0; i < dec.len && rc == TERN_OK; i++) {
		char c = dec.data[i];
		if (c == '\r' && i + 1 < dec.len && dec.data[i + 1] == '\n')
			rc = tbuf_append(&crlf, "\r\n", 2), i++;
		else if (c == '\r' || c == '\n')
			rc = tbuf_append(&crlf, "\r\n", 2);
		else if (c == '\0')
			rc = TERN_EINVAL;
		else
			rc = tbuf_append(&crlf, &c, 1);
	}
	if (rc == TERN_OK && (crlf.len < 2 || memcmp(crlf.data + crlf.len - 2, "\r\n", 2) != 0))
		rc = tbuf_append(&crlf, "\r\n", 2);
	if (rc != TERN_OK) {
		json_decref(tmp);
		if (rc == TERN_ENOMEM)
			goto nomem;
		api_error_set(e, rc == TERN_EINVAL ? 422 : 413,
		              rc == TERN_EINVAL ? "invalid_message" : "message_too_large", "raw",
		              rc == TERN_EINVAL ? "the message holds a NUL byte"
		                                : "the message is too large");
		rc = rc == TERN_EINVAL ? TERN_ESYNTAX : TERN_ELIMIT;
		goto out;
	}
	if (!raw_from(crlf.data, crlf.len, from_hdr, sizeof(from_hdr)) ||
	    !api_from_domain(from_hdr, strlen(from_hdr), dom, sizeof(dom))) {
		json_decref(tmp);
		api_error_set(e, 422, "invalid_message", "raw",
		              "the message needs exactly one From field with one valid address");
		rc = TERN_ESYNTAX;
		goto out;
	}
	out->msg.to = calloc(n, sizeof(char *));
	out->msg.from = tern_strdup(json_string_value(fv));
	out->from_domain = tern_strdup(dom);
	if (!out->msg.to || !out->msg.from || !out->from_domain) {
		json_decref(tmp);
		goto nomem;
	}
	for (size_t i = 0; i < n; i++) {
		const char *a = json_string_value(json_array_get(tmp, i));
		bool dup = false;
		for (size_t j = 0; j < out->msg.n_to && !dup; j++)
			dup = tern_ascii_ieq(out->msg.to[j], a);
		if (dup)
			continue;
		if (!(out->msg.to[out->msg.n_to] = tern_strdup(a))) {
			json_decref(tmp);
			goto nomem;
		}
		out->msg.n_to++;
	}
	json_decref(tmp);
	out->msg.raw = tbuf_steal(&crlf, &out->msg.len);
	rc = TERN_OK;
	goto out;
nomem:
	rc = TERN_ENOMEM;
	api_error_set(e, 500, "internal", NULL, "out of memory");
out:
	if (rc != TERN_OK)
		api_send_free(out);
	tbuf_free(&dec);
	tbuf_free(&crlf);
	return rc;
}
