/*
 * send.c — the message builder behind POST /api/v1/send: Mailpit's send
 * JSON in, RFC 5322 / MIME message bytes out (see http_send_build in
 * http.h).
 *
 * Owns: validating the send JSON and writing the message: header fields
 * (RFC 2047 encoded words for anything not plain ASCII, folded lines),
 * the multipart tree (mixed > related > alternative, only the levels that
 * are needed), quoted-printable or 7bit text, base64 attachments with
 * RFC 2231 file names, and the envelope (From.Email; To, Cc and Bcc).
 * Must never: do I/O or keep state (a pure function of its arguments),
 * let a value from the JSON add a header line or a MIME boundary of its own
 * (CR, LF and other controls in header text become spaces; boundaries
 * contain "=_", which neither quoted-printable nor base64 can produce),
 * or emit a line longer than 998 bytes.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/buf.h"
#include "core/codec.h"
#include "core/err.h"
#include "core/timefmt.h"
#include "mime/mime.h"
#include "http/http.h"

#define MSG_MAX ((size_t)96 * 1024 * 1024) /* built message bound (base64 grows 4/3) */
#define MAX_ADDRS 1000
#define MAX_ATTACHMENTS 1000
#define MAX_HEADERS 200

struct addr {
	const char *email;
	const char *name; /* may be NULL */
};

struct attach {
	const char *filename;
	const char *ctype; /* validated, or NULL: guessed from filename */
	const char *cid;   /* without <>, or NULL */
	struct tbuf data;  /* decoded bytes */
};

struct send_in {
	struct addr from;
	struct addr *to, *cc, *reply_to;
	size_t n_to_hdr, n_cc, n_reply_to;
	const char **bcc;
	size_t n_bcc;
	const char *subject;
	const char *text, *html;
	size_t text_len, html_len;
	struct attach *att;
	size_t n_att;
	json_t *headers; /* borrowed object or NULL */
	const char **tags;
	size_t n_tags;
	char bnd[40]; /* boundary stem */
};

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (errlen)
		vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return TERN_ESYNTAX;
}

/* ------------------------------------------------------------ validation */

static bool is_ascii_text(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			return false;
	return true;
}

/* An address as SMTP and RFC 5322 can carry it: local@domain, no spaces,
 * controls or the characters that would end an angle-addr; UTF-8 allowed
 * (SMTPUTF8). Quoted local parts are not supported. */
static bool valid_email(const char *s)
{
	size_t n = strlen(s);
	if (n < 3 || n > 254)
		return false;
	const char *at = strrchr(s, '@');
	if (!at || at == s || at[1] == '\0')
		return false;
	for (const char *p = s; *p; p++) {
		unsigned char c = (unsigned char)*p;
		if (c <= 0x20 || c == 0x7f || strchr("<>()[]\\,;:\"", c))
			return false;
		if (c == '@' && p != at)
			return false;
	}
	return true;
}

static bool isalnum_ascii(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_token_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && !strchr("()<>@,;:\\\"/[]?=", c);
}

/* type/subtype with optional ";param" tail of printable ASCII. */
static bool valid_ctype(const char *s)
{
	const char *p = s;
	size_t n = 0;
	while (is_token_char((unsigned char)*p))
		p++, n++;
	if (n == 0 || *p != '/')
		return false;
	p++;
	n = 0;
	while (is_token_char((unsigned char)*p))
		p++, n++;
	if (n == 0)
		return false;
	if (*p == '\0')
		return true;
	if (*p != ';' && *p != ' ')
		return false;
	return is_ascii_text(p) && strlen(s) < 200;
}

static bool valid_field_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 76)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s < 33 || (unsigned char)*s > 126 || *s == ':')
			return false;
	return true;
}

static bool valid_cid(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 250)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f || *s == '<' ||
		    *s == '>')
			return false;
	return true;
}

/* ------------------------------------------------------------ JSON input */

static int get_str(json_t *obj, const char *key, const char **out, bool required, char *err,
                   size_t errlen)
{
	json_t *v = json_object_get(obj, key);
	*out = NULL;
	if (!v || json_is_null(v)) {
		if (required)
			return fail(err, errlen, "%s is required", key);
		return TERN_OK;
	}
	if (!json_is_string(v))
		return fail(err, errlen, "%s must be a string", key);
	*out = json_string_value(v);
	return TERN_OK;
}

static int get_addr(json_t *v, const char *what, struct addr *a, char *err, size_t errlen)
{
	if (!json_is_object(v))
		return fail(err, errlen, "%s must be an object with Email", what);
	json_t *e = json_object_get(v, "Email");
	if (!json_is_string(e))
		return fail(err, errlen, "%s.Email is required", what);
	a->email = json_string_value(e);
	if (!valid_email(a->email))
		return fail(err, errlen, "%s.Email is not a valid address", what);
	json_t *nm = json_object_get(v, "Name");
	a->name = NULL;
	if (nm && !json_is_null(nm)) {
		if (!json_is_string(nm))
			return fail(err, errlen, "%s.Name must be a string", what);
		a->name = json_string_value(nm);
		if (strlen(a->name) > 500)
			return fail(err, errlen, "%s.Name is too long", what);
	}
	return TERN_OK;
}

static int get_addr_list(json_t *obj, const char *key, struct addr **out, size_t *n, char *err,
                         size_t errlen)
{
	json_t *arr = json_object_get(obj, key);
	*out = NULL;
	*n = 0;
	if (!arr || json_is_null(arr))
		return TERN_OK;
	if (!json_is_array(arr))
		return fail(err, errlen, "%s must be an array", key);
	size_t cnt = json_array_size(arr);
	if (cnt == 0)
		return TERN_OK;
	if (cnt > MAX_ADDRS)
		return fail(err, errlen, "too many %s addresses", key);
	*out = calloc(cnt, sizeof(**out));
	if (!*out)
		return TERN_ENOMEM;
	for (size_t i = 0; i < cnt; i++) {
		int rc = get_addr(json_array_get(arr, i), key, &(*out)[i], err, errlen);
		if (rc)
			return rc;
	}
	*n = cnt;
	return TERN_OK;
}

static int get_str_list(json_t *obj, const char *key, const char ***out, size_t *n, size_t max,
                        char *err, size_t errlen)
{
	json_t *arr = json_object_get(obj, key);
	*out = NULL;
	*n = 0;
	if (!arr || json_is_null(arr))
		return TERN_OK;
	if (!json_is_array(arr))
		return fail(err, errlen, "%s must be an array of strings", key);
	size_t cnt = json_array_size(arr);
	if (cnt == 0)
		return TERN_OK;
	if (cnt > max)
		return fail(err, errlen, "too many %s", key);
	*out = calloc(cnt, sizeof(**out));
	if (!*out)
		return TERN_ENOMEM;
	for (size_t i = 0; i < cnt; i++) {
		json_t *v = json_array_get(arr, i);
		if (!json_is_string(v))
			return fail(err, errlen, "%s must be an array of strings", key);
		(*out)[i] = json_string_value(v);
	}
	*n = cnt;
	return TERN_OK;
}

/* Base64 from a JSON client: tolerate line breaks and spaces, then decode
 * strictly. */
static int decode_content(const char *s, struct tbuf *out)
{
	size_t n = strlen(s);
	struct tbuf clean = TBUF_INIT(n + 1);
	int rc = tbuf_reserve(&clean, n);
	if (rc)
		goto out;
	for (size_t i = 0; i < n; i++)
		if (s[i] != '\r' && s[i] != '\n' && s[i] != ' ' && s[i] != '\t')
			clean.data[clean.len++] = s[i];
	if (clean.data)
		clean.data[clean.len] = '\0';
	rc = tern_base64_decode(clean.data ? clean.data : "", clean.len, out);
out:
	tbuf_free(&clean);
	return rc;
}

static int get_attachments(json_t *obj, struct send_in *in, char *err, size_t errlen)
{
	json_t *arr = json_object_get(obj, "Attachments");
	if (!arr || json_is_null(arr))
		return TERN_OK;
	if (!json_is_array(arr))
		return fail(err, errlen, "Attachments must be an array");
	size_t cnt = json_array_size(arr);
	if (cnt == 0)
		return TERN_OK;
	if (cnt > MAX_ATTACHMENTS)
		return fail(err, errlen, "too many Attachments");
	in->att = calloc(cnt, sizeof(*in->att));
	if (!in->att)
		return TERN_ENOMEM;
	for (size_t i = 0; i < cnt; i++) {
		json_t *a = json_array_get(arr, i);
		struct attach *t = &in->att[i];
		tbuf_init(&t->data, MSG_MAX);
		in->n_att = i + 1;
		if (!json_is_object(a))
			return fail(err, errlen, "Attachments[%zu] must be an object", i);
		const char *content;
		int rc = get_str(a, "Content", &content, true, err, errlen);
		if (!rc)
			rc = get_str(a, "Filename", &t->filename, true, err, errlen);
		if (!rc)
			rc = get_str(a, "ContentType", &t->ctype, false, err, errlen);
		if (!rc)
			rc = get_str(a, "ContentID", &t->cid, false, err, errlen);
		if (rc)
			return rc;
		if (t->filename[0] == '\0' || strlen(t->filename) > 255)
			return fail(err, errlen, "Attachments[%zu].Filename must be 1-255 bytes",
			            i);
		if (t->ctype && t->ctype[0] == '\0')
			t->ctype = NULL;
		if (t->ctype && !valid_ctype(t->ctype))
			return fail(err, errlen, "Attachments[%zu].ContentType is not a MIME type",
			            i);
		if (t->cid && t->cid[0] == '\0')
			t->cid = NULL;
		if (t->cid) {
			/* Accept "<x>" as well as "x". */
			size_t cl = strlen(t->cid);
			if (cl >= 2 && t->cid[0] == '<' && t->cid[cl - 1] == '>')
				return fail(err, errlen,
				            "Attachments[%zu].ContentID without angle brackets", i);
			if (!valid_cid(t->cid))
				return fail(err, errlen, "Attachments[%zu].ContentID is invalid",
				            i);
		}
		rc = decode_content(content, &t->data);
		if (rc == TERN_ESYNTAX)
			return fail(err, errlen, "Attachments[%zu].Content is not valid base64", i);
		if (rc)
			return rc;
	}
	return TERN_OK;
}

/* --------------------------------------------------------------- writing */

/* Header text with controls (CR, LF, TAB, ...) turned into spaces: a JSON
 * value can never start a header line of its own. */
static char *clean_text(const char *s)
{
	char *c = tern_strdup(s);
	if (!c)
		return NULL;
	for (char *p = c; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f)
			*p = ' ';
	return c;
}

static bool needs_encoding(const char *s)
{
	if (!is_ascii_text(s) || strstr(s, "=?"))
		return true;
	/* A word too long to fold under 998 bytes. */
	size_t run = 0;
	for (; *s; s++) {
		run = (*s == ' ') ? 0 : run + 1;
		if (run > 900)
			return true;
	}
	return false;
}

/* "Name: value" for unstructured text (Subject, custom headers): plain
 * ASCII folded at spaces near 78 columns, or encoded words. */
static void put_unstructured(struct mime_writer *w, const char *name, const char *value)
{
	char *v = clean_text(value);
	if (!v) {
		mime_writer_fail(w, TERN_ENOMEM);
		return;
	}
	mime_printf(w, "%s:", name);
	if (needs_encoding(v)) {
		mime_puts(w, " ");
		mime_put_encoded_words(w, v, strlen(v));
	} else {
		/* Split into words at single spaces; fold before a word that
		 * would pass column 78. Runs of spaces are kept in the word. */
		const char *p = v;
		bool first = true;
		if (*p == '\0')
			mime_puts(w, " ");
		while (*p) {
			const char *word = p;
			if (!first && *word == ' ')
				word++; /* the separating space */
			const char *e = word;
			while (*e == ' ')
				e++;
			while (*e && *e != ' ')
				e++;
			size_t wl = (size_t)(e - word);
			if (!first && w->col + 1 + wl > 78)
				mime_crlf(w);
			mime_puts(w, " ");
			mime_put(w, word, wl);
			first = false;
			p = e;
		}
	}
	mime_crlf(w);
	free(v);
}

static bool is_atext_phrase(const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (!(c == ' ' || (c > 0x20 && c < 0x7f && !strchr("()<>[]:;@\\,.\"", c))))
			return false;
	}
	return true;
}

/* A display name: atoms as they are, other ASCII as a quoted-string,
 * anything else as encoded words. */
static void put_phrase(struct mime_writer *w, const char *name)
{
	char *v = clean_text(name);
	if (!v) {
		mime_writer_fail(w, TERN_ENOMEM);
		return;
	}
	size_t n = strlen(v);
	if (needs_encoding(v) || n > 70) {
		mime_put_encoded_words(w, v, n);
	} else if (is_atext_phrase(v) && v[0] != ' ' && v[n - 1] != ' ') {
		mime_put(w, v, n);
	} else {
		mime_puts(w, "\"");
		for (size_t i = 0; i < n; i++) {
			if (v[i] == '"' || v[i] == '\\')
				mime_puts(w, "\\");
			mime_put(w, &v[i], 1);
		}
		mime_puts(w, "\"");
	}
	free(v);
}

static void put_addr_list(struct mime_writer *w, const char *field, const struct addr *a, size_t n)
{
	if (n == 0)
		return;
	mime_printf(w, "%s: ", field);
	for (size_t i = 0; i < n; i++) {
		if (i)
			mime_puts(w, ",\r\n ");
		if (a[i].name && a[i].name[0]) {
			put_phrase(w, a[i].name);
			mime_printf(w, " <%s>", a[i].email);
		} else {
			mime_puts(w, a[i].email);
		}
	}
	mime_crlf(w);
}

/* Text that can go out as 7bit: printable ASCII and tabs, CRLF line ends
 * (after normalisation), lines of at most 998 bytes, nothing that could
 * look like one of our boundaries. */
static bool fits_7bit(const char *s, size_t n)
{
	size_t line = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '\n') {
			line = 0;
			continue;
		}
		if (c == '\r')
			continue;
		if ((c < 0x20 && c != '\t') || c > 0x7e)
			return false;
		if (++line > 998)
			return false;
	}
	return memmem(s, n, "=_", 2) == NULL;
}

/* Any of CR, LF, CR LF becomes CR LF. */
static int crlf_normalise(const char *s, size_t n, struct tbuf *out)
{
	struct mime_writer w;

	mime_writer_init(&w, out);
	if (tbuf_reserve(out, n + n / 8 + 2) != TERN_OK)
		return TERN_ENOMEM;
	/* the bytes between line ends go in one piece (one by one cost ~70
	 * instructions a byte of the body) */
	size_t run = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] != '\r' && s[i] != '\n')
			continue;
		mime_put(&w, s + run, i - run);
		mime_crlf(&w);
		if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
			i++;
		run = i + 1;
	}
	mime_put(&w, s + run, n - run);
	return mime_writer_status(&w);
}

static void put_text_entity(struct mime_writer *w, const char *subtype, const char *s, size_t n)
{
	struct tbuf norm = TBUF_INIT(MSG_MAX);
	int rc = crlf_normalise(s, n, &norm);
	if (rc != TERN_OK) {
		mime_writer_fail(w, rc);
		goto out;
	}
	const char *p = norm.data ? norm.data : "";
	bool plain = fits_7bit(p, norm.len);
	mime_printf(w,
	            "Content-Type: text/%s; charset=utf-8\r\n"
	            "Content-Transfer-Encoding: %s\r\n\r\n",
	            subtype, plain ? "7bit" : "quoted-printable");
	if (plain)
		mime_put(w, p, norm.len);
	else
		mime_put_qp_body(w, p, norm.len);
out:
	tbuf_free(&norm);
}

static const struct {
	const char *ext;
	const char *type;
} mime_types[] = {
    {"txt", "text/plain"},
    {"html", "text/html"},
    {"htm", "text/html"},
    {"css", "text/css"},
    {"csv", "text/csv"},
    {"ics", "text/calendar"},
    {"xml", "application/xml"},
    {"json", "application/json"},
    {"js", "text/javascript"},
    {"pdf", "application/pdf"},
    {"zip", "application/zip"},
    {"gz", "application/gzip"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"gif", "image/gif"},
    {"webp", "image/webp"},
    {"svg", "image/svg+xml"},
    {"ico", "image/x-icon"},
    {"bmp", "image/bmp"},
    {"tif", "image/tiff"},
    {"tiff", "image/tiff"},
    {"mp3", "audio/mpeg"},
    {"wav", "audio/wav"},
    {"mp4", "video/mp4"},
    {"eml", "message/rfc822"},
    {"doc", "application/msword"},
    {"xls", "application/vnd.ms-excel"},
    {"docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"},
    {"xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"},
};

static const char *guess_type(const char *filename)
{
	const char *dot = strrchr(filename, '.');
	if (dot)
		for (size_t i = 0; i < sizeof(mime_types) / sizeof(mime_types[0]); i++)
			if (tern_ascii_ieq(dot + 1, mime_types[i].ext))
				return mime_types[i].type;
	return "application/octet-stream";
}

/* A file name parameter: name="x" when it is plain ASCII, otherwise the
 * RFC 2231 form name*=utf-8''%XX... */
static void put_filename_param(struct mime_writer *w, const char *param, const char *filename)
{
	char *v = clean_text(filename);
	if (!v) {
		mime_writer_fail(w, TERN_ENOMEM);
		return;
	}
	if (is_ascii_text(v)) {
		mime_printf(w, ";\r\n %s=\"", param);
		for (const char *p = v; *p; p++) {
			if (*p == '"' || *p == '\\')
				mime_puts(w, "\\");
			mime_put(w, p, 1);
		}
		mime_puts(w, "\"");
	} else {
		mime_printf(w, ";\r\n %s*=utf-8''", param);
		for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
			if (*p < 0x7f && (isalnum_ascii(*p) || strchr("!#$&+-.^_`|~", *p)))
				mime_put(w, p, 1);
			else
				mime_printf(w, "%%%02X", *p);
		}
	}
	free(v);
}

static void put_attachment_entity(struct mime_writer *w, const struct attach *a)
{
	const char *ct = a->ctype ? a->ctype : guess_type(a->filename);
	mime_puts(w, "Content-Type: ");
	mime_puts(w, ct);
	put_filename_param(w, "name", a->filename);
	mime_puts(w, "\r\nContent-Disposition: ");
	mime_puts(w, a->cid ? "inline" : "attachment");
	put_filename_param(w, "filename", a->filename);
	mime_crlf(w);
	if (a->cid)
		mime_printf(w, "Content-ID: <%s>\r\n", a->cid);
	mime_puts(w, "Content-Transfer-Encoding: base64\r\n\r\n");
	mime_put_base64_body(w, a->data.data ? a->data.data : "", a->data.len);
}

/* "Content-Type: multipart/KIND; boundary=..." and a blank line. */
static void put_multipart_header(struct mime_writer *w, const char *kind, const char *bnd,
                                 const char *suffix)
{
	mime_printf(w, "Content-Type: multipart/%s;\r\n boundary=\"%s%s\"\r\n\r\n", kind, bnd,
	            suffix);
}

/* Body entity without attachments: text, html, or alternative of both. */
static void put_alternative(struct mime_writer *w, const struct send_in *in)
{
	bool t = in->text_len > 0, h = in->html_len > 0;
	char bnd[64];

	if (t && h) {
		snprintf(bnd, sizeof(bnd), "%s_alt", in->bnd);
		put_multipart_header(w, "alternative", in->bnd, "_alt");
		mime_put_boundary(w, bnd, true, false);
		put_text_entity(w, "plain", in->text, in->text_len);
		mime_put_boundary(w, bnd, false, false);
		put_text_entity(w, "html", in->html, in->html_len);
		mime_put_boundary(w, bnd, false, true);
		return;
	}
	if (h)
		put_text_entity(w, "html", in->html, in->html_len);
	else
		put_text_entity(w, "plain", t ? in->text : "", in->text_len);
}

static void put_related(struct mime_writer *w, const struct send_in *in, size_t n_inline)
{
	char bnd[64];

	if (n_inline == 0) {
		put_alternative(w, in);
		return;
	}
	snprintf(bnd, sizeof(bnd), "%s_rel", in->bnd);
	put_multipart_header(w, "related", in->bnd, "_rel");
	mime_put_boundary(w, bnd, true, false);
	put_alternative(w, in);
	for (size_t i = 0; i < in->n_att; i++) {
		if (!in->att[i].cid)
			continue;
		mime_put_boundary(w, bnd, false, false);
		put_attachment_entity(w, &in->att[i]);
	}
	mime_put_boundary(w, bnd, false, true);
}

static void put_body(struct mime_writer *w, const struct send_in *in)
{
	size_t n_inline = 0;
	char bnd[64];

	for (size_t i = 0; i < in->n_att; i++)
		n_inline += in->att[i].cid != NULL;
	if (n_inline == in->n_att) {
		put_related(w, in, n_inline);
		return;
	}
	snprintf(bnd, sizeof(bnd), "%s_mix", in->bnd);
	put_multipart_header(w, "mixed", in->bnd, "_mix");
	mime_put_boundary(w, bnd, true, false);
	put_related(w, in, n_inline);
	for (size_t i = 0; i < in->n_att; i++) {
		if (in->att[i].cid)
			continue;
		mime_put_boundary(w, bnd, false, false);
		put_attachment_entity(w, &in->att[i]);
	}
	mime_put_boundary(w, bnd, false, true);
}

/* Headers (from the JSON) replace the fields the builder would write
 * itself: Date, From, Reply-To, To, Cc, Subject, Message-ID, X-Tags. */
static bool custom_has(const struct send_in *in, const char *name)
{
	return in->headers && json_object_get(in->headers, name) != NULL;
}

/* json_object_get is case-sensitive; Headers keys are matched without
 * case, so look for each spelling by walking the object. */
static bool custom_has_ci(const struct send_in *in, const char *name)
{
	const char *k;
	json_t *v;
	if (custom_has(in, name))
		return true;
	if (!in->headers)
		return false;
	json_object_foreach(in->headers, k, v)
	{
		if (tern_ascii_ieq(k, name))
			return true;
	}
	return false;
}

static void put_headers(struct mime_writer *w, const struct send_in *in, long long now,
                        const char *msgid)
{
	if (!custom_has_ci(in, "Date")) {
		char date[TERN_RFC5322_DATE_MAX];
		if (!tern_rfc5322_date(now, date, sizeof(date)))
			mime_writer_fail(w, TERN_EINVAL);
		mime_printf(w, "Date: %s\r\n", date);
	}
	if (!custom_has_ci(in, "From"))
		put_addr_list(w, "From", &in->from, 1);
	if (!custom_has_ci(in, "Reply-To"))
		put_addr_list(w, "Reply-To", in->reply_to, in->n_reply_to);
	if (!custom_has_ci(in, "To"))
		put_addr_list(w, "To", in->to, in->n_to_hdr);
	if (!custom_has_ci(in, "Cc"))
		put_addr_list(w, "Cc", in->cc, in->n_cc);
	if (!custom_has_ci(in, "Subject"))
		put_unstructured(w, "Subject", in->subject ? in->subject : "");
	if (!custom_has_ci(in, "Message-ID"))
		mime_printf(w, "Message-ID: <%s>\r\n", msgid);
	if (in->n_tags && !custom_has_ci(in, "X-Tags")) {
		struct tbuf t = TBUF_INIT(1024 * 1024);
		struct mime_writer tw;

		mime_writer_init(&tw, &t);
		for (size_t i = 0; i < in->n_tags; i++)
			mime_printf(&tw, "%s%s", i ? ", " : "", in->tags[i]);
		if (mime_writer_status(&tw) != TERN_OK)
			mime_writer_fail(w, mime_writer_status(&tw));
		else
			put_unstructured(w, "X-Tags", t.data ? t.data : "");
		tbuf_free(&t);
	}
	if (in->headers) {
		const char *k;
		json_t *v;
		json_object_foreach(in->headers, k, v)
		{
			put_unstructured(w, k, json_string_value(v));
		}
	}
	mime_puts(w, "MIME-Version: 1.0\r\n");
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
	const unsigned char *s = p;
	for (size_t i = 0; i < n; i++) {
		h ^= s[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

static int parse_input(json_t *root, struct send_in *in, char *err, size_t errlen)
{
	int rc;
	if (!json_is_object(root))
		return fail(err, errlen, "request body must be a JSON object");
	json_t *from = json_object_get(root, "From");
	if (!from || json_is_null(from))
		return fail(err, errlen, "From is required");
	if ((rc = get_addr(from, "From", &in->from, err, errlen)))
		return rc;
	if ((rc = get_addr_list(root, "To", &in->to, &in->n_to_hdr, err, errlen)) ||
	    (rc = get_addr_list(root, "Cc", &in->cc, &in->n_cc, err, errlen)) ||
	    (rc = get_addr_list(root, "ReplyTo", &in->reply_to, &in->n_reply_to, err, errlen)) ||
	    (rc = get_str_list(root, "Bcc", &in->bcc, &in->n_bcc, MAX_ADDRS, err, errlen)) ||
	    (rc = get_str_list(root, "Tags", &in->tags, &in->n_tags, 100, err, errlen)) ||
	    (rc = get_str(root, "Subject", &in->subject, false, err, errlen)) ||
	    (rc = get_str(root, "Text", &in->text, false, err, errlen)) ||
	    (rc = get_str(root, "HTML", &in->html, false, err, errlen)))
		return rc;
	for (size_t i = 0; i < in->n_bcc; i++)
		if (!valid_email(in->bcc[i]))
			return fail(err, errlen, "Bcc address %zu is not a valid address", i + 1);
	if (in->n_to_hdr + in->n_cc + in->n_bcc == 0)
		return fail(err, errlen, "no recipients: To, Cc or Bcc is required");
	for (size_t i = 0; i < in->n_tags; i++)
		if (in->tags[i][0] == '\0' || strlen(in->tags[i]) > 100 ||
		    strpbrk(in->tags[i], "\r\n,"))
			return fail(err, errlen, "Tags[%zu] is empty, too long or has a comma", i);
	in->text_len = in->text ? strlen(in->text) : 0;
	in->html_len = in->html ? strlen(in->html) : 0;
	json_t *h = json_object_get(root, "Headers");
	if (h && !json_is_null(h)) {
		if (!json_is_object(h))
			return fail(err, errlen, "Headers must be an object of strings");
		if (json_object_size(h) > MAX_HEADERS)
			return fail(err, errlen, "too many Headers");
		const char *k;
		json_t *v;
		json_object_foreach(h, k, v)
		{
			if (!json_is_string(v))
				return fail(err, errlen, "Headers values must be strings");
			if (!valid_field_name(k))
				return fail(err, errlen, "Headers: invalid field name");
			/* The MIME structure is ours; Bcc would defeat the
			 * envelope-only rule. */
			if (strncasecmp(k, "Content-", 8) == 0 ||
			    tern_ascii_ieq(k, "MIME-Version") || tern_ascii_ieq(k, "Bcc"))
				return fail(err, errlen, "Headers: %s cannot be set", k);
		}
		in->headers = h;
	}
	return get_attachments(root, in, err, errlen);
}

static void free_input(struct send_in *in)
{
	free(in->to);
	free(in->cc);
	free(in->reply_to);
	free(in->bcc);
	free(in->tags);
	for (size_t i = 0; i < in->n_att; i++)
		tbuf_free(&in->att[i].data);
	free(in->att);
}

void http_send_msg_free(struct http_send_msg *m)
{
	if (!m)
		return;
	free(m->raw);
	free(m->from);
	for (size_t i = 0; i < m->n_to; i++)
		free(m->to[i]);
	free(m->to);
	for (size_t i = 0; i < m->n_tags; i++)
		free(m->tags[i]);
	free(m->tags);
	memset(m, 0, sizeof(*m));
}

static int fill_envelope(const struct send_in *in, struct http_send_msg *out)
{
	size_t n = in->n_to_hdr + in->n_cc + in->n_bcc;
	out->from = tern_strdup(in->from.email);
	out->to = calloc(n, sizeof(char *));
	if (!out->from || !out->to)
		return TERN_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const char *e = i < in->n_to_hdr ? in->to[i].email
		                : i < in->n_to_hdr + in->n_cc
		                    ? in->cc[i - in->n_to_hdr].email
		                    : in->bcc[i - in->n_to_hdr - in->n_cc];
		/* Each address once: SMTP would deliver a duplicate twice. */
		bool dup = false;
		for (size_t j = 0; j < out->n_to && !dup; j++)
			dup = tern_ascii_ieq(out->to[j], e);
		if (dup)
			continue;
		if (!(out->to[out->n_to] = tern_strdup(e)))
			return TERN_ENOMEM;
		out->n_to++;
	}
	if (in->n_tags) {
		out->tags = calloc(in->n_tags, sizeof(char *));
		if (!out->tags)
			return TERN_ENOMEM;
		for (size_t i = 0; i < in->n_tags; i++) {
			if (!(out->tags[i] = tern_strdup(in->tags[i])))
				return TERN_ENOMEM;
			out->n_tags++;
		}
	}
	return TERN_OK;
}

/* The build from a parsed send object root. seed, seed_len: bytes the
 * boundary is drawn from with msgid (the request text, or the parts' text),
 * so a part cannot know it in advance. */
static int build(json_t *root, const void *seed, size_t seed_len, long long now, const char *msgid,
                 struct http_send_msg *out, char *err, size_t errlen)
{
	struct send_in in;
	struct tbuf b = TBUF_INIT(MSG_MAX);
	int rc;

	memset(&in, 0, sizeof(in));
	if ((rc = parse_input(root, &in, err, errlen)))
		goto out;
	uint64_t h = fnv1a(0xcbf29ce484222325ull, seed, seed_len);
	if (!seed) /* the object's own text parts */
		h = fnv1a(fnv1a(h, in.text ? in.text : "", in.text_len), in.html ? in.html : "",
		          in.html_len);
	h = fnv1a(h, msgid, strlen(msgid));
	snprintf(in.bnd, sizeof(in.bnd), "=_tern_%016llx", (unsigned long long)h);
	struct mime_writer w;
	mime_writer_init(&w, &b);
	put_headers(&w, &in, now, msgid);
	put_body(&w, &in);
	if ((rc = mime_writer_status(&w)))
		goto out;
	/* The message ends with CRLF: after a close delimiter, or after a
	 * single part's text that did not end with one. */
	if (b.len >= 2 && memcmp(b.data + b.len - 2, "\r\n", 2) != 0 &&
	    (rc = tbuf_append_str(&b, "\r\n")))
		goto out;
	if ((rc = fill_envelope(&in, out)))
		goto out;
	out->raw = tbuf_steal(&b, &out->len);
	if (TERN_BUG_ON(out->raw == NULL)) { /* the headers are never empty */
		rc = TERN_EINVAL;
		goto out;
	}
	rc = TERN_OK;
out:
	if (rc == TERN_ELIMIT && errlen)
		snprintf(err, errlen, "message too large");
	else if (rc == TERN_ENOMEM && errlen)
		snprintf(err, errlen, "out of memory");
	if (rc)
		http_send_msg_free(out);
	free_input(&in);
	tbuf_free(&b);
	return rc;
}

int http_send_build(const char *json, size_t len, long long now, const char *msgid,
                    struct http_send_msg *out, char *err, size_t errlen)
{
	json_error_t jerr;

	memset(out, 0, sizeof(*out));
	if (errlen)
		err[0] = '\0';
	if (len > HTTP_SEND_MAX_BODY)
		return fail(err, errlen, "request body too large");
	json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return fail(err, errlen, "invalid JSON: %s", jerr.text);
	int rc = build(root, json, len, now, msgid, out, err, errlen);
	json_decref(root);
	return rc;
}

int http_send_build_obj(json_t *root, long long now, const char *msgid, struct http_send_msg *out,
                        char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	if (errlen)
		err[0] = '\0';
	return build(root, NULL, 0, now, msgid, out, err, errlen);
}
