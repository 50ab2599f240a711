/*
 * ses.c — the SES v2 compatible API (see ses.h): SigV4 authentication,
 * the routes, SES's JSON shapes and errors. Owns nothing past one call
 * but the template store handle of the pool thread; must never commit
 * mail itself (api.c does, after the from-domain and size checks) nor
 * log a secret.
 */
#include "http/ses.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/codec.h"
#include "core/err.h"
#include "mime/mime.h"
#include "store/quota.h"
#include "store/ses_keys.h"
#include "store/ses_templates.h"
#include "store/suppress.h"

#define SES_PAGE_MAX 1000

void ses_error(struct ses_answer *a, int status, const char *type, const char *fmt, ...)
{
	char m[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(m, sizeof(m), fmt, ap);
	va_end(ap);
	json_decref(a->body);
	a->status = status;
	a->err_type = type;
	a->body = json_pack("{s:s}", "message", m);
}

const char *ses_error_type(int status, const char *code)
{
	if (code && strcmp(code, "forbidden_from_domain") == 0)
		return "MessageRejected";
	if (status == 413 || status == 400 || status == 415 || status == 422)
		return "BadRequestException";
	if (status == 403)
		return "AccessDeniedException";
	if (status == 429)
		return "TooManyRequestsException";
	return "InternalFailure";
}

static void ok(struct ses_answer *a, json_t *body)
{
	a->status = 200;
	a->body = body ? body : json_object();
}

static const char *header(const struct ses_request *r, const char *name)
{
	for (size_t i = 0; i < r->n_hdr; i++)
		if (strcasecmp(r->hdr[i].name, name) == 0)
			return r->hdr[i].value;
	return NULL;
}

/* ------------------------------------------------------------ signature */

static bool authenticate(const struct ses_request *r, struct ses_answer *a)
{
	const char *h = header(r, "Authorization"), *date = header(r, "X-Amz-Date");
	struct sigv4_auth sa;
	if (!h) {
		ses_error(a, 403, "MissingAuthenticationTokenException",
		          "Missing Authentication Token: sign the request with AWS Signature "
		          "Version 4 and a key pair from `tern apikey create NAME --sigv4`");
		return false;
	}
	if (sigv4_parse_auth(h, strlen(h), &sa) != TERN_OK || !date) {
		ses_error(a, 400, "IncompleteSignatureException",
		          "the Authorization header is not a complete AWS4-HMAC-SHA256 "
		          "signature, or X-Amz-Date is missing");
		return false;
	}
	int64_t t;
	if (!sigv4_parse_date(date, &t) || strncmp(date, sa.date, 8) != 0) {
		ses_error(a, 400, "IncompleteSignatureException",
		          "X-Amz-Date is malformed or does not match the credential scope date");
		return false;
	}
	if (t < r->now - SIGV4_SKEW_MAX || t > r->now + SIGV4_SKEW_MAX) {
		ses_error(a, 403, "RequestExpired",
		          "Signature expired: %s is more than 15 minutes away from the server "
		          "time",
		          date);
		return false;
	}
	char id[APIKEY_ID_LEN + 1];
	unsigned char master[SES_MASTER_LEN];
	int rc = ses_akid_to_id(sa.akid, id) ? apikeys_get(r->keys, id, &a->key) : TERN_ENOTFOUND;
	if (rc == TERN_OK)
		rc = ses_master_load(r->data_dir, false, master);
	if (rc == TERN_EIO) {
		ses_error(a, 503, "ServiceUnavailable", "the key store cannot be read now");
		return false;
	}
	if (rc != TERN_OK) {
		ses_error(a, 403, "UnrecognizedClientException",
		          "The security token included in the request is invalid.");
		return false;
	}
	char akid[SES_AKID_LEN + 1], secret[SES_SECRET_LEN + 1], ph[65], sig[65];
	ses_key_pair(master, id, akid, secret);
	memset(master, 0, sizeof(master));
	sigv4_sha256_hex(r->body, r->len, ph);
	const char *xh = header(r, "x-amz-content-sha256");
	if (xh && strcmp(xh, "UNSIGNED-PAYLOAD") != 0 && strcmp(xh, ph) != 0) {
		memset(secret, 0, sizeof(secret));
		ses_error(a, 400, "XAmzContentSHA256Mismatch",
		          "x-amz-content-sha256 is not the SHA-256 of the body");
		return false;
	}
	bool host_signed = false;
	for (const char *p = sa.signed_headers; p && *p;
	     p = strchr(p, ';') ? strchr(p, ';') + 1 : NULL)
		if (strncmp(p, "host", 4) == 0 && (p[4] == ';' || p[4] == '\0'))
			host_signed = true;
	rc = host_signed ? sigv4_signature(secret, r->method, r->path, r->query, r->hdr, r->n_hdr,
	                                   &sa, date, xh ? xh : ph, sig)
	                 : TERN_ESYNTAX;
	memset(secret, 0, sizeof(secret));
	if (rc == TERN_ENOMEM) {
		ses_error(a, 500, "InternalFailure", "out of memory");
		return false;
	}
	if (rc != TERN_OK || !sigv4_equal(sig, sa.signature)) {
		ses_error(a, 403, "SignatureDoesNotMatch",
		          "The request signature we calculated does not match the signature you "
		          "provided. Check your AWS Secret Access Key and signing method.");
		return false;
	}
	a->have_key = true;
	return true;
}

static bool need_scope(struct ses_answer *a, enum apikey_scope s)
{
	if (a->key.scope >= s)
		return true;
	ses_error(a, 403, "AccessDeniedException", "the key '%s' has scope %s; this needs %s",
	          a->key.name, apikey_scope_name(a->key.scope), apikey_scope_name(s));
	return false;
}

/* ------------------------------------------------------------ helpers */

/* The value of query parameter name, decoded into out; false when absent. */
static bool query_get(const char *q, const char *name, char *out, size_t cap)
{
	size_t nl = strlen(name);
	while (q && *q) {
		const char *amp = strchr(q, '&');
		size_t l = amp ? (size_t)(amp - q) : strlen(q);
		if (l > nl && strncmp(q, name, nl) == 0 && q[nl] == '=')
			return tern_pct_decode(q + nl + 1, l - nl - 1, out, cap);
		q = amp ? amp + 1 : NULL;
	}
	return false;
}

static size_t page_size(const char *q)
{
	char v[32];
	if (!query_get(q, "PageSize", v, sizeof(v)))
		return SES_PAGE_MAX;
	char *end;
	long n = strtol(v, &end, 10);
	return *end || n < 1 ? SES_PAGE_MAX : n > SES_PAGE_MAX ? SES_PAGE_MAX : (size_t)n;
}

/* NextToken is an offset in decimal (opaque to clients). */
static size_t page_offset(const char *q)
{
	char v[32];
	if (!query_get(q, "NextToken", v, sizeof(v)))
		return 0;
	char *end;
	long long n = strtoll(v, &end, 10);
	return *end || n < 0 ? 0 : (size_t)n;
}

static json_t *body_object(const struct ses_request *r, struct ses_answer *a)
{
	json_error_t je;
	json_t *j = json_loadb(r->len ? r->body : "{}", r->len ? r->len : 2, 0, &je);
	if (!json_is_object(j)) {
		json_decref(j);
		ses_error(a, 400, "BadRequestException", "the body is not a JSON object");
		return NULL;
	}
	return j;
}

static const char *str_at(json_t *o, const char *k1, const char *k2)
{
	json_t *v = json_object_get(o, k1);
	if (k2)
		v = json_object_get(v, k2);
	return json_string_value(v);
}

/* ------------------------------------------------------------ templates */

static struct ses_templates *templates(const struct ses_request *r, struct ses_answer *a)
{
	char path[4096];
	struct ses_templates *t = NULL;
	snprintf(path, sizeof(path), "%s/ses.db", r->data_dir);
	if (ses_templates_open(path, &t) != TERN_OK) {
		ses_error(a, 503, "ServiceUnavailable", "the template store cannot be opened");
		return NULL;
	}
	return t;
}

/* TemplateContent {Subject, Text, Html} into t's strings. */
static bool content_of(json_t *c, struct ses_template *t, struct ses_answer *a)
{
	const char *s = str_at(c, "Subject", NULL), *x = str_at(c, "Text", NULL),
	           *h = str_at(c, "Html", NULL);
	if (!json_is_object(c) || !s || (!x && !h)) {
		ses_error(a, 400, "BadRequestException",
		          "TemplateContent needs a Subject and a Text or Html part");
		return false;
	}
	t->subject = tern_strdup(s);
	t->text = x ? tern_strdup(x) : NULL;
	t->html = h ? tern_strdup(h) : NULL;
	if (!t->subject || (x && !t->text) || (h && !t->html)) {
		ses_error(a, 500, "InternalFailure", "out of memory");
		return false;
	}
	return true;
}

static void put_template(const struct ses_request *r, struct ses_answer *a, const char *name,
                         bool replace)
{
	struct ses_template t = {0};
	struct ses_templates *db = NULL;
	json_t *b = body_object(r, a);
	if (!b)
		return;
	if (!replace)
		name = str_at(b, "TemplateName", NULL);
	if (!name || !ses_template_name_ok(name)) {
		ses_error(a, 400, "BadRequestException",
		          "TemplateName is 1-64 of letters, digits, _ and -");
		goto out;
	}
	tern_strlcpy(t.name, name, sizeof(t.name));
	if (!content_of(json_object_get(b, "TemplateContent"), &t, a) || !(db = templates(r, a)))
		goto out;
	int rc = ses_templates_put(db, &t, replace, r->now);
	if (rc == TERN_OK)
		ok(a, NULL);
	else if (rc == TERN_EEXIST)
		ses_error(a, 400, "AlreadyExistsException", "Template %s already exists.", name);
	else if (rc == TERN_ENOTFOUND)
		ses_error(a, 404, "NotFoundException", "Template %s does not exist.", name);
	else
		ses_error(a, 503, "ServiceUnavailable", "the template store cannot be written");
out:
	ses_template_clear(&t);
	ses_templates_close(db);
	json_decref(b);
}

static json_t *opt_str(const char *s)
{
	return s ? json_string(s) : NULL;
}

static void get_template(const struct ses_request *r, struct ses_answer *a, const char *name)
{
	struct ses_templates *db = templates(r, a);
	struct ses_template t;
	if (!db)
		return;
	int rc = ses_templates_get(db, name, &t);
	if (rc == TERN_OK) {
		json_t *c = json_pack("{s:s}", "Subject", t.subject ? t.subject : "");
		if (c && t.text)
			json_object_set_new(c, "Text", opt_str(t.text));
		if (c && t.html)
			json_object_set_new(c, "Html", opt_str(t.html));
		ok(a, json_pack("{s:s, s:o*}", "TemplateName", t.name, "TemplateContent", c));
		ses_template_clear(&t);
	} else if (rc == TERN_ENOTFOUND) {
		ses_error(a, 404, "NotFoundException", "Template %s does not exist.", name);
	} else {
		ses_error(a, 503, "ServiceUnavailable", "the template store cannot be read");
	}
	ses_templates_close(db);
}

static void del_template(const struct ses_request *r, struct ses_answer *a, const char *name)
{
	struct ses_templates *db = templates(r, a);
	if (!db)
		return;
	int rc = ses_templates_del(db, name);
	if (rc == TERN_OK)
		ok(a, NULL);
	else if (rc == TERN_ENOTFOUND)
		ses_error(a, 404, "NotFoundException", "Template %s does not exist.", name);
	else
		ses_error(a, 503, "ServiceUnavailable", "the template store cannot be written");
	ses_templates_close(db);
}

static void list_one_template(const char *name, int64_t created, void *arg)
{
	json_array_append_new(arg, json_pack("{s:s, s:I}", "TemplateName", name, "CreatedTimestamp",
	                                     (json_int_t)created));
}

static void list_templates(const struct ses_request *r, struct ses_answer *a)
{
	struct ses_templates *db = templates(r, a);
	if (!db)
		return;
	size_t off = page_offset(r->query), lim = page_size(r->query);
	json_t *arr = json_array();
	bool more = false;
	if (ses_templates_list(db, off, lim, list_one_template, arr, &more) != TERN_OK) {
		json_decref(arr);
		ses_error(a, 503, "ServiceUnavailable", "the template store cannot be read");
	} else {
		json_t *o = json_pack("{s:o}", "TemplatesMetadata", arr);
		if (o && more) {
			char tok[32];
			snprintf(tok, sizeof(tok), "%zu", off + lim);
			json_object_set_new(o, "NextToken", json_string(tok));
		}
		ok(a, o);
	}
	ses_templates_close(db);
}

/* Renders s with data into a new JSON string, or sets the error. */
static json_t *render(const char *s, json_t *data, bool html, struct ses_answer *a)
{
	struct tbuf b = TBUF_INIT(16 * 1024 * 1024);
	json_t *v = NULL;
	if (ses_template_render(s, data, html, &b) == TERN_OK)
		v = json_stringn(b.data ? b.data : "", b.len);
	tbuf_free(&b);
	if (!v)
		ses_error(a, 400, "BadRequestException",
		          "the rendered template is too large or not UTF-8");
	return v;
}

/* Content.Template into subject/text/html of the native object o. */
static bool template_content(const struct ses_request *r, json_t *tc, json_t *o,
                             struct ses_answer *a)
{
	struct ses_template t = {0};
	json_t *data = NULL;
	bool done = false;
	const char *name = str_at(tc, "TemplateName", NULL), *arn = str_at(tc, "TemplateArn", NULL);
	json_t *inline_c = json_object_get(tc, "TemplateContent");
	if (!name && arn) { /* arn:aws:ses:REGION:ACCOUNT:template/NAME */
		const char *sl = strrchr(arn, '/');
		name = sl ? sl + 1 : NULL;
	}
	if (inline_c) {
		if (!content_of(inline_c, &t, a))
			goto out;
	} else if (name) {
		struct ses_templates *db = templates(r, a);
		if (!db)
			goto out;
		int rc = ses_templates_get(db, name, &t);
		ses_templates_close(db);
		if (rc != TERN_OK) {
			if (rc == TERN_ENOTFOUND)
				ses_error(a, 404, "NotFoundException",
				          "Template %.100s does not exist.", name);
			else
				ses_error(a, 503, "ServiceUnavailable",
				          "the template store cannot be read");
			goto out;
		}
	} else {
		ses_error(a, 400, "BadRequestException",
		          "Content.Template needs TemplateName, TemplateArn or TemplateContent");
		goto out;
	}
	const char *td = str_at(tc, "TemplateData", NULL);
	json_error_t je;
	data = td ? json_loads(td, 0, &je) : json_object();
	if (!json_is_object(data)) {
		ses_error(a, 400, "BadRequestException", "TemplateData is not a JSON object");
		goto out;
	}
	json_t *v;
	if (!(v = render(t.subject ? t.subject : "", data, false, a)))
		goto out;
	json_object_set_new(o, "subject", v);
	if (t.text) {
		if (!(v = render(t.text, data, false, a)))
			goto out;
		json_object_set_new(o, "text", v);
	}
	if (t.html) {
		if (!(v = render(t.html, data, true, a)))
			goto out;
		json_object_set_new(o, "html", v);
	}
	done = true;
out:
	json_decref(data);
	ses_template_clear(&t);
	return done;
}

/* ------------------------------------------------------------ SendEmail */

/* Raw content without FromEmailAddress or Destination: the From, To, Cc
 * and Bcc header fields of the message (read by the MIME parser, GMime)
 * fill what is missing of the envelope. */
static bool raw_envelope(const char *b64, json_t *o, json_t *rcpts, struct ses_answer *a)
{
	struct tbuf dec = TBUF_INIT(64 * 1024 * 1024);
	struct mime_msg m;
	bool ok = false;
	memset(&m, 0, sizeof(m));
	if (tern_base64_decode(b64, strlen(b64), &dec) != TERN_OK) {
		ses_error(a, 400, "BadRequestException", "Raw.Data is not base64");
		goto out;
	}
	mime_init();
	if (mime_parse(dec.data ? dec.data : "", dec.len, 0, &m) != TERN_OK) {
		ses_error(a, 500, "InternalFailure", "out of memory");
		goto out;
	}
	if (!json_object_get(o, "from") && m.from.addr && m.from.addr[0])
		json_object_set_new(o, "from", json_string(m.from.addr));
	if (!json_array_size(rcpts)) {
		const struct mime_addrs *l[3] = {&m.to, &m.cc, &m.bcc};
		for (int i = 0; i < 3; i++)
			for (size_t j = 0; j < l[i]->n; j++)
				if (l[i]->v[j].addr && l[i]->v[j].addr[0])
					json_array_append_new(rcpts, json_string(l[i]->v[j].addr));
	}
	ok = true;
out:
	mime_msg_free(&m);
	tbuf_free(&dec);
	return ok;
}

/*
 * Simple.Attachments and Simple.Headers (newer SDKs have them; Debian's
 * botocore model does not yet): Attachments [{RawContent (base64),
 * FileName, ContentType, ContentDisposition ATTACHMENT|INLINE, ContentId}]
 * become the native attachments and inline lists; Headers [{Name, Value}]
 * the native headers (checked there as for the native API).
 */
static bool simple_extras(json_t *simple, json_t *o, struct ses_answer *a)
{
	json_t *atts = json_object_get(simple, "Attachments"),
	       *hs = json_object_get(simple, "Headers");
	size_t i;
	json_t *x;
	json_array_foreach(atts, i, x)
	{
		const char *raw = str_at(x, "RawContent", NULL), *fn = str_at(x, "FileName", NULL),
		           *ty = str_at(x, "ContentType", NULL),
		           *disp = str_at(x, "ContentDisposition", NULL),
		           *cid = str_at(x, "ContentId", NULL);
		bool inl = disp && strcmp(disp, "INLINE") == 0;
		if (!raw || !fn) {
			ses_error(a, 400, "BadRequestException",
			          "Attachments[%zu] needs RawContent and FileName", i);
			return false;
		}
		json_t *n = json_pack("{s:s, s:s, s:s}", "filename", fn, "content", raw, "encoding",
		                      "base64");
		if (n && ty)
			json_object_set_new(n, "content_type", json_string(ty));
		if (n && inl && cid)
			json_object_set_new(n, "content_id", json_string(cid));
		const char *list = inl ? "inline" : "attachments";
		json_t *l = json_object_get(o, list);
		if (!l) {
			l = json_array();
			json_object_set_new(o, list, l);
		}
		json_array_append_new(l, n);
	}
	json_array_foreach(hs, i, x)
	{
		const char *k = str_at(x, "Name", NULL), *v = str_at(x, "Value", NULL);
		if (!k || !v) {
			ses_error(a, 400, "BadRequestException",
			          "Headers[%zu] needs Name and Value", i);
			return false;
		}
		json_t *h = json_object_get(o, "headers");
		if (!h) {
			h = json_object();
			json_object_set_new(o, "headers", h);
		}
		json_object_set_new(h, k, json_string(v));
	}
	return true;
}

static void send_email(const struct ses_request *r, struct ses_answer *a)
{
	json_t *b = body_object(r, a), *o = json_object();
	if (!b || !o)
		goto fail;
	json_t *content = json_object_get(b, "Content"), *dest = json_object_get(b, "Destination");
	const char *from = str_at(b, "FromEmailAddress", NULL);
	json_t *simple = json_object_get(content, "Simple"), *raw = json_object_get(content, "Raw"),
	       *tpl = json_object_get(content, "Template");
	if ((simple != NULL) + (raw != NULL) + (tpl != NULL) != 1) {
		ses_error(a, 400, "BadRequestException",
		          "Content needs exactly one of Simple, Raw and Template");
		goto fail;
	}
	if (from)
		json_object_set_new(o, "from", json_string(from));
	static const char *const dk[3] = {"ToAddresses", "CcAddresses", "BccAddresses"};
	static const char *const nk[3] = {"to", "cc", "bcc"};
	json_t *all = json_array();
	for (int i = 0; i < 3; i++) {
		json_t *l = json_object_get(dest, dk[i]);
		if (!l)
			continue;
		if (!json_is_array(l)) {
			json_decref(all);
			ses_error(a, 400, "BadRequestException", "Destination.%s is a list", dk[i]);
			goto fail;
		}
		json_array_extend(all, l);
		if (!raw && json_array_size(l))
			json_object_set(o, nk[i], l);
	}
	if (raw) {
		/* the envelope: Destination's addresses, else (as SES does) the
		 * message's To, Cc and Bcc; FromEmailAddress, else its From */
		json_t *d = json_object_get(raw, "Data");
		if (json_is_string(d) && (!from || !json_array_size(all)) &&
		    !raw_envelope(json_string_value(d), o, all, a)) {
			json_decref(all);
			goto fail;
		}
		json_object_set_new(o, "to", all);
		if (!json_object_get(o, "from") || !json_is_string(d) || !json_array_size(all)) {
			ses_error(
			    a, 400, "BadRequestException",
			    "Raw content needs Data with a sender (FromEmailAddress or From) and "
			    "recipients (Destination or To, Cc, Bcc)");
			goto fail;
		}
		json_object_set(o, "raw", d);
		a->raw = true;
	} else {
		json_decref(all);
		json_t *rt = json_object_get(b, "ReplyToAddresses");
		if (json_array_size(rt))
			json_object_set(o, "reply_to", rt);
		if (simple) {
			const char *subj = str_at(simple, "Subject", "Data");
			json_t *body = json_object_get(simple, "Body");
			const char *text = str_at(body, "Text", "Data"),
			           *html = str_at(body, "Html", "Data");
			if (subj)
				json_object_set_new(o, "subject", json_string(subj));
			if (text)
				json_object_set_new(o, "text", json_string(text));
			if (html)
				json_object_set_new(o, "html", json_string(html));
			if (!simple_extras(simple, o, a))
				goto fail;
		} else if (!template_content(r, tpl, o, a)) {
			goto fail;
		}
	}
	/* EmailTags become the message's metadata (a log line, as tags) */
	json_t *tags = json_object_get(b, "EmailTags"), *md = NULL;
	size_t i;
	json_t *tag;
	json_array_foreach(tags, i, tag)
	{
		const char *k = str_at(tag, "Name", NULL), *v = str_at(tag, "Value", NULL);
		if (!k || !v)
			continue;
		if (!md)
			md = json_object();
		json_object_set_new(md, k, json_string(v));
	}
	if (md && !a->raw)
		json_object_set_new(o, "metadata", md);
	else
		json_decref(md);
	json_decref(b);
	a->send = o;
	return;
fail:
	json_decref(b);
	json_decref(o);
}

/* ------------------------------------------------------------ account */

/* SendQuota is the key's own sending quota (store/quota.h): Max24HourSend
 * its per-day limit (else per-hour x 24), MaxSendRate its per-second limit,
 * -1 where the key has none (SES's model: -1 is an unlimited quota), and
 * SentLast24Hours the messages counted against it this UTC day, in the same
 * unit as the limit it is compared with. */
static void get_account(const struct ses_request *r, struct ses_answer *a)
{
	struct quota_limits lim = {a->key.per_second, a->key.per_hour, a->key.per_day};
	double max24h, max_rate, sent;
	quota_usage(a->key.name, &lim, &max24h, &max_rate, &sent);
	ok(a, json_pack("{s:b, s:s, s:b, s:b, s:{s:f, s:f, s:f}, s:{s:[s,s]}}",
	                "DedicatedIpAutoWarmupEnabled", 0, "EnforcementStatus", "HEALTHY",
	                "ProductionAccessEnabled", 1, "SendingEnabled", 1, "SendQuota",
	                "Max24HourSend", max24h, "MaxSendRate", max_rate, "SentLast24Hours", sent,
	                "SuppressionAttributes", "SuppressedReasons", "BOUNCE", "COMPLAINT"));
}

/* ------------------------------------------------------------ suppression */

/* SES knows BOUNCE and COMPLAINT; tern's unsubscribe and manual entries
 * read as COMPLAINT (the recipient did not want the mail). */
static const char *ses_reason(enum suppress_reason r)
{
	return r == SUPPRESS_BOUNCE ? "BOUNCE" : "COMPLAINT";
}

static struct suppress_db *supp(const struct ses_request *r, struct ses_answer *a)
{
	struct suppress_db *db = suppress_shared(r->data_dir);
	if (!db)
		ses_error(a, 503, "ServiceUnavailable", "the suppression list cannot be opened");
	return db;
}

static void put_suppressed(const struct ses_request *r, struct ses_answer *a)
{
	json_t *b = body_object(r, a);
	struct suppress_db *db;
	if (!b)
		return;
	const char *addr = str_at(b, "EmailAddress", NULL), *rs = str_at(b, "Reason", NULL);
	enum suppress_reason reason;
	if (!addr || !rs || (strcmp(rs, "BOUNCE") != 0 && strcmp(rs, "COMPLAINT") != 0)) {
		ses_error(a, 400, "BadRequestException",
		          "EmailAddress and Reason (BOUNCE or COMPLAINT) are required");
	} else if ((db = supp(r, a))) {
		reason = strcmp(rs, "BOUNCE") == 0 ? SUPPRESS_BOUNCE : SUPPRESS_COMPLAINT;
		int rc = suppress_add(db, "", addr, reason, "SES API", "");
		if (rc == TERN_OK)
			ok(a, NULL);
		else if (rc == TERN_EINVAL)
			ses_error(a, 400, "BadRequestException", "EmailAddress is not an address");
		else
			ses_error(a, 503, "ServiceUnavailable",
			          "the suppression list cannot be written");
	}
	json_decref(b);
}

static void get_suppressed(const struct ses_request *r, struct ses_answer *a, const char *addr)
{
	struct suppress_db *db = supp(r, a);
	struct suppress_entry e;
	if (!db)
		return;
	if (!suppress_check(db, NULL, addr, &e) || e.scope[0]) {
		ses_error(a, 404, "NotFoundException", "%.320s is not on the suppression list",
		          addr);
		return;
	}
	ok(a, json_pack("{s:{s:s, s:s, s:I, s:{s:s}}}", "SuppressedDestination", "EmailAddress",
	                e.addr, "Reason", ses_reason(e.reason), "LastUpdateTime",
	                (json_int_t)e.created, "Attributes", "MessageId", e.queue_id));
}

static void del_suppressed(const struct ses_request *r, struct ses_answer *a, const char *addr)
{
	struct suppress_db *db = supp(r, a);
	if (!db)
		return;
	int rc = suppress_del(db, "", addr);
	if (rc == TERN_OK)
		ok(a, NULL);
	else if (rc == TERN_ENOTFOUND || rc == TERN_EINVAL)
		ses_error(a, 404, "NotFoundException", "%.320s is not on the suppression list",
		          addr);
	else
		ses_error(a, 503, "ServiceUnavailable", "the suppression list cannot be written");
}

struct list_ctx {
	json_t *arr;
	const char *reason; /* filter, or NULL */
	size_t skip, left, seen;
	bool more;
};

static bool list_one(const struct suppress_entry *e, void *arg)
{
	struct list_ctx *l = arg;
	if (e->scope[0])
		return true;
	if (l->reason && strcmp(l->reason, ses_reason(e->reason)) != 0)
		return true;
	l->seen++;
	if (l->skip) {
		l->skip--;
		return true;
	}
	if (!l->left) {
		l->more = true;
		return false;
	}
	l->left--;
	json_array_append_new(l->arr, json_pack("{s:s, s:s, s:I}", "EmailAddress", e->addr,
	                                        "Reason", ses_reason(e->reason), "LastUpdateTime",
	                                        (json_int_t)e->created));
	return true;
}

static void list_suppressed(const struct ses_request *r, struct ses_answer *a)
{
	struct suppress_db *db = supp(r, a);
	if (!db)
		return;
	char reason[16];
	size_t off = page_offset(r->query), lim = page_size(r->query);
	struct list_ctx l = {.arr = json_array(), .skip = off, .left = lim};
	if (query_get(r->query, "Reason", reason, sizeof(reason)))
		l.reason = reason;
	if (suppress_list(db, "", list_one, &l) < 0) {
		json_decref(l.arr);
		ses_error(a, 503, "ServiceUnavailable", "the suppression list cannot be read");
		return;
	}
	json_t *o = json_pack("{s:o}", "SuppressedDestinationSummaries", l.arr);
	if (o && l.more) {
		char tok[32];
		snprintf(tok, sizeof(tok), "%zu", off + lim);
		json_object_set_new(o, "NextToken", json_string(tok));
	}
	ok(a, o);
}

/* ------------------------------------------------------------ routing */

/* The decoded last segment after prefix (one segment, non-empty), or false. */
static bool tail_of(const char *path, const char *prefix, char *out, size_t cap)
{
	size_t pl = strlen(prefix);
	if (strncmp(path, prefix, pl) != 0 || !path[pl] || strchr(path + pl, '/'))
		return false;
	return tern_pct_decode(path + pl, strlen(path + pl), out, cap);
}

void ses_handle(const struct ses_request *r, struct ses_answer *a)
{
	memset(a, 0, sizeof(*a));
	if (!authenticate(r, a))
		return;
	const char *m = r->method, *p = r->path;
	bool get = strcmp(m, "GET") == 0, post = strcmp(m, "POST") == 0,
	     put = strcmp(m, "PUT") == 0, del = strcmp(m, "DELETE") == 0;
	char seg[SUPPRESS_ADDR_MAX + 8];
	if (strcmp(p, "/v2/email/outbound-emails") == 0 && post) {
		if (need_scope(a, APIKEY_SEND))
			send_email(r, a);
	} else if (strcmp(p, "/v2/email/account") == 0 && get) {
		if (need_scope(a, APIKEY_READ))
			get_account(r, a);
	} else if (strcmp(p, "/v2/email/templates") == 0 && (get || post)) {
		if (need_scope(a, get ? APIKEY_READ : APIKEY_SEND)) {
			if (get)
				list_templates(r, a);
			else
				put_template(r, a, NULL, false);
		}
	} else if (tail_of(p, "/v2/email/templates/", seg, sizeof(seg)) && (get || put || del)) {
		if (need_scope(a, get ? APIKEY_READ : APIKEY_SEND)) {
			if (get)
				get_template(r, a, seg);
			else if (put)
				put_template(r, a, seg, true);
			else
				del_template(r, a, seg);
		}
	} else if (strcmp(p, "/v2/email/suppression/addresses") == 0 && (get || put)) {
		/* the account-level list is tern's global one: admin keys only,
		 * as in the native API */
		if (need_scope(a, APIKEY_ADMIN)) {
			if (get)
				list_suppressed(r, a);
			else
				put_suppressed(r, a);
		}
	} else if (tail_of(p, "/v2/email/suppression/addresses/", seg, sizeof(seg)) &&
	           (get || del)) {
		if (need_scope(a, APIKEY_ADMIN)) {
			if (get)
				get_suppressed(r, a, seg);
			else
				del_suppressed(r, a, seg);
		}
	} else {
		ses_error(a, 404, "NotFoundException",
		          "tern does not implement %.8s %.200s of SES v2 (see docs/config.md)", m,
		          p);
	}
}
