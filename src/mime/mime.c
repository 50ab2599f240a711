/*
 * mime.c — GMime wrappers for the capture store: turn raw message bytes
 * into the decoded fields, bodies and numbered part list of mime.h.
 *
 * Owns: every GMime object it creates (parsed per call, unref'd before
 * returning; nothing GMime-owned escapes, so callers need no GLib).
 * Must never: fail on malformed MIME (read leniently and keep what can be
 * read), return text that is not valid UTF-8, recurse without a bound, or
 * touch the disk.
 */
#include "mime/mime.h"

#include <ctype.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <gmime/gmime.h>

#include "core/codec.h"
#include "core/err.h"
#include "mime/parts_exact.h"

#define MIME_MAX_DEPTH 32    /* nesting deeper than this is not walked */
#define MIME_MAX_PARTS 10000 /* parts listed per message */

static pthread_once_t mime_once = PTHREAD_ONCE_INIT;

static void mime_init_once(void)
{
	g_mime_init();
}

void mime_init(void)
{
	pthread_once(&mime_once, mime_init_once);
}

/* ---- small helpers ---- */

static char *dup_or_empty(const char *s)
{
	return tern_strdup(s ? s : "");
}

/* Replaces bytes that could break a header or a log line (controls). */
static void scrub_controls(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = '_';
}

/* Any bytes in a claimed charset -> valid UTF-8 (malloc'd). Unknown or
 * failing charsets fall back to UTF-8 if the bytes are valid UTF-8, else
 * to Windows-1252 (a superset of Latin-1 that every byte maps through). */
/* True when p[0..n) is 7-bit text without NUL: valid UTF-8 as it is. Eight
 * bytes at a time: a message body is most of the capture path's parsing,
 * and glib validates it byte by byte twice (validate, then make_valid). */
static bool plain_ascii(const char *p, size_t n)
{
	const uint64_t lo = 0x0101010101010101u, hi = 0x8080808080808080u;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t w;
		memcpy(&w, p + i, sizeof(w));
		if ((w & hi) || ((w - lo) & ~w & hi)) /* a byte >= 0x80, or a zero byte */
			return false;
	}
	for (; i < n; i++)
		if (p[i] == '\0' || (unsigned char)p[i] >= 0x80)
			return false;
	return true;
}

static char *to_utf8(const char *p, size_t n, const char *charset)
{
	char *conv = NULL;
	gsize outlen = 0;
	if (charset && *charset && g_ascii_strcasecmp(charset, "utf-8") != 0 &&
	    g_ascii_strcasecmp(charset, "us-ascii") != 0) {
		const char *ic = g_mime_charset_iconv_name(charset);
		conv = g_convert(p, (gssize)n, "UTF-8", ic ? ic : charset, NULL, &outlen, NULL);
	} else if (plain_ascii(p, n)) {
		return tern_strndup(p, n); /* what the slow path below returns for it */
	}
	if (!conv && !g_utf8_validate(p, (gssize)n, NULL))
		conv = g_convert(p, (gssize)n, "UTF-8", "WINDOWS-1252", NULL, &outlen, NULL);
	const char *src = conv ? conv : p;
	size_t srclen = conv ? outlen : n;
	/* make_valid also replaces embedded NULs' neighbours; strip NULs so
	 * the result is a C string with nothing hidden after a terminator */
	gchar *valid = g_utf8_make_valid(src, (gssize)srclen);
	g_free(conv);
	if (!valid)
		return NULL;
	size_t vlen = strlen(valid);
	char *out = tern_strndup(valid, vlen);
	g_free(valid);
	return out;
}

/* An attached message (message/rfc822) exactly as it is in the raw
 * message, decoded only per its own Content-Transfer-Encoding (Mailpit
 * serves it so; GMime would write a regenerated copy). TERN_ENOTFOUND
 * when the span is not known or does not agree with GMime's reading. */
static int exact_message(const char *raw, const struct mime_spans *sp, const char *id,
                         struct tbuf *out)
{
	const struct mime_span *s = sp ? mime_span_find(sp, id) : NULL;
	if (!s || strncmp(s->content_type, "message/", 8) != 0)
		return TERN_ENOTFOUND;
	const char *b = raw + s->body_off;
	if (!s->cte[0] || strcmp(s->cte, "7bit") == 0 || strcmp(s->cte, "8bit") == 0 ||
	    strcmp(s->cte, "binary") == 0)
		return tbuf_append(out, b, s->body_len);
	if (strcmp(s->cte, "base64") == 0)
		return tern_base64_decode(b, s->body_len, out) == TERN_ENOMEM ? TERN_ENOMEM
		                                                              : TERN_OK;
	if (strcmp(s->cte, "quoted-printable") == 0)
		return tern_qp_decode(b, s->body_len, out) == TERN_ENOMEM ? TERN_ENOMEM : TERN_OK;
	return TERN_ENOTFOUND;
}

/* Appends the transfer-decoded content of a leaf part (id: its PartID;
 * raw and sp: the message's bytes and spans, for attached messages). */
static int part_bytes(GMimeObject *obj, const char *raw, const struct mime_spans *sp,
                      const char *id, struct tbuf *out)
{
	if (GMIME_IS_MESSAGE_PART(obj) && raw) {
		size_t before = out->len;
		int erc = exact_message(raw, sp, id, out);
		if (erc != TERN_ENOTFOUND && erc != TERN_OK)
			return erc;
		if (erc == TERN_OK)
			return TERN_OK;
		out->len = before;
	}
	GMimeStream *mem = g_mime_stream_mem_new();
	int rc = TERN_OK;
	if (GMIME_IS_MESSAGE_PART(obj)) {
		GMimeMessage *m = g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj));
		if (m)
			g_mime_object_write_to_stream(GMIME_OBJECT(m), NULL, mem);
	} else if (GMIME_IS_PART(obj)) {
		GMimeDataWrapper *w = g_mime_part_get_content(GMIME_PART(obj));
		if (w)
			g_mime_data_wrapper_write_to_stream(w, mem);
	}
	GByteArray *ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
	if (ba && ba->len)
		rc = tbuf_append(out, ba->data, ba->len);
	g_object_unref(mem);
	return rc;
}

static char *mime_type_of(GMimeObject *obj)
{
	GMimeContentType *ct = g_mime_object_get_content_type(obj);
	if (!ct)
		return tern_strdup("text/plain");
	char *t = g_mime_content_type_get_mime_type(ct);
	char *out = tern_strdup(t ? t : "application/octet-stream");
	g_free(t);
	if (out)
		tern_ascii_lower(out);
	return out;
}

static const char *charset_of(GMimeObject *obj)
{
	GMimeContentType *ct = g_mime_object_get_content_type(obj);
	return ct ? g_mime_content_type_get_parameter(ct, "charset") : NULL;
}

static char *filename_of(GMimeObject *obj)
{
	const char *fn = NULL;
	if (GMIME_IS_PART(obj))
		fn = g_mime_part_get_filename(GMIME_PART(obj));
	else {
		/* message/rfc822 and others: same lookup order by hand */
		GMimeContentDisposition *d = g_mime_object_get_content_disposition(obj);
		if (d)
			fn = g_mime_content_disposition_get_parameter(d, "filename");
		if (!fn) {
			GMimeContentType *ct = g_mime_object_get_content_type(obj);
			if (ct)
				fn = g_mime_content_type_get_parameter(ct, "name");
		}
	}
	char *out = dup_or_empty(fn);
	if (out)
		scrub_controls(out);
	return out;
}

static char *content_id_of(GMimeObject *obj)
{
	const char *cid = g_mime_object_get_content_id(obj);
	char *out = dup_or_empty(cid);
	if (out)
		scrub_controls(out);
	return out;
}

/* ---- part walk ---- */

struct walk {
	struct mime_msg *m; /* NULL when only looking a part up */
	const char *raw;    /* the bytes parsed, and where each part lies in them */
	const struct mime_spans *spans;
	/* the direct children of a multipart/alternative: only the first
	 * text/plain and text/html are the bodies (Python, Mailpit) */
	bool in_alt, alt_text, alt_html;
	struct tbuf text, html;
	const char *want; /* mime_part_get: the PartID sought */
	GMimeObject *found;
	unsigned flags;
	size_t cap;
	int err;
};

static void digest(GChecksumType t, const struct tbuf *b, char *out, size_t outlen)
{
	const gchar *hex = NULL;
	GChecksum *c = g_checksum_new(t);
	if (c) {
		g_checksum_update(c, (const guchar *)(b->data ? b->data : ""), (gssize)b->len);
		hex = g_checksum_get_string(c);
	}
	tern_strlcpy(out, hex ? hex : "", outlen);
	if (c)
		g_checksum_free(c);
}

static void checksums(struct mime_part *p, const struct tbuf *b)
{
	digest(G_CHECKSUM_MD5, b, p->md5, sizeof(p->md5));
	digest(G_CHECKSUM_SHA1, b, p->sha1, sizeof(p->sha1));
	digest(G_CHECKSUM_SHA256, b, p->sha256, sizeof(p->sha256));
}

static void set_id(char *dst, const char *parent, size_t idx, bool top)
{
	if (top)
		snprintf(dst, MIME_PARTID_MAX, "%zu", idx);
	else
		snprintf(dst, MIME_PARTID_MAX, "%s.%zu", parent, idx);
}

static struct mime_part *new_part(struct walk *w)
{
	struct mime_msg *m = w->m;
	if (m->n_parts >= MIME_MAX_PARTS)
		return NULL;
	if (m->n_parts == w->cap) {
		size_t nc = w->cap ? w->cap * 2 : 8;
		struct mime_part *np = realloc(m->parts, nc * sizeof(*np));
		if (!np) {
			w->err = TERN_ENOMEM;
			return NULL;
		}
		m->parts = np;
		w->cap = nc;
	}
	struct mime_part *p = &m->parts[m->n_parts++];
	memset(p, 0, sizeof(*p));
	return p;
}

static void append_body(struct walk *w, struct tbuf *body, GMimeObject *obj, const char *id)
{
	struct tbuf raw = TBUF_INIT(SIZE_MAX / 2);
	if (part_bytes(obj, w->raw, w->spans, id, &raw) != TERN_OK) {
		w->err = TERN_ENOMEM;
		goto out;
	}
	char *u = to_utf8(raw.data ? raw.data : "", raw.len, charset_of(obj));
	if (!u) {
		w->err = TERN_ENOMEM;
		goto out;
	}
	if (body->len && tbuf_append_str(body, "\n") != TERN_OK)
		w->err = TERN_ENOMEM;
	if (tbuf_append_str(body, u) != TERN_OK)
		w->err = TERN_ENOMEM;
	free(u);
out:
	tbuf_free(&raw);
}

enum mime_role mime_leaf_role(const struct mime_leaf *l, bool *alt_text, bool *alt_html)
{
	bool is_text = strcmp(l->content_type, "text/plain") == 0;
	bool is_html = strcmp(l->content_type, "text/html") == 0;
	enum mime_role role;
	if (l->attachment)
		role = MIME_ROLE_ATTACHMENT;
	else if ((is_text || is_html) && !l->has_filename)
		role = is_text ? MIME_ROLE_TEXT : MIME_ROLE_HTML;
	else if (l->is_message)
		role = MIME_ROLE_ATTACHMENT;
	else if (l->has_content_id || l->inline_disp)
		role = MIME_ROLE_INLINE;
	else
		role = MIME_ROLE_ATTACHMENT;
	if (l->under_alt && (role == MIME_ROLE_TEXT || role == MIME_ROLE_HTML)) {
		bool *seen = role == MIME_ROLE_TEXT ? alt_text : alt_html;
		if (*seen)
			role = MIME_ROLE_OTHER;
		*seen = true;
	}
	return role;
}

static void classify_leaf(struct walk *w, GMimeObject *obj, struct mime_part *p, bool under_alt)
{
	const char *disp = g_mime_object_get_disposition(obj);
	bool attach = disp && g_ascii_strcasecmp(disp, "attachment") == 0;
	bool inl = disp && g_ascii_strcasecmp(disp, "inline") == 0;
	p->role = mime_leaf_role(&(struct mime_leaf){.content_type = p->content_type,
	                                             .attachment = attach,
	                                             .inline_disp = inl,
	                                             .has_filename = p->filename[0] != '\0',
	                                             .has_content_id = p->content_id[0] != '\0',
	                                             .is_message = GMIME_IS_MESSAGE_PART(obj),
	                                             .under_alt = under_alt},
	                         &w->alt_text, &w->alt_html);

	if (p->role == MIME_ROLE_TEXT)
		append_body(w, &w->text, obj, p->part_id);
	else if (p->role == MIME_ROLE_HTML)
		append_body(w, &w->html, obj, p->part_id);
	else if (p->role == MIME_ROLE_ATTACHMENT)
		w->m->n_attachments++;
	else if (p->role == MIME_ROLE_INLINE)
		w->m->n_inline++;
}

static void walk(struct walk *w, GMimeObject *obj, const char *id, int depth)
{
	bool under_alt = w->in_alt;
	w->in_alt = false;
	if (!obj || w->err || w->found || depth > MIME_MAX_DEPTH)
		return;
	bool leaf = !GMIME_IS_MULTIPART(obj);
	if (w->want) {
		if (leaf && strcmp(w->want, id) == 0)
			w->found = obj;
	} else {
		struct mime_part *p = new_part(w);
		if (!p)
			return;
		tern_strlcpy(p->part_id, id, sizeof(p->part_id));
		p->content_type = mime_type_of(obj);
		p->filename = filename_of(obj);
		p->content_id = content_id_of(obj);
		if (!p->content_type || !p->filename || !p->content_id) {
			w->err = TERN_ENOMEM;
			return;
		}
		if (leaf) {
			struct tbuf b = TBUF_INIT(SIZE_MAX / 2);
			if (part_bytes(obj, w->raw, w->spans, id, &b) != TERN_OK)
				w->err = TERN_ENOMEM;
			p->size = b.len;
			if (w->flags & MIME_CHECKSUMS)
				checksums(p, &b);
			tbuf_free(&b);
			classify_leaf(w, obj, p, under_alt);
		} else {
			p->role = MIME_ROLE_CONTAINER;
		}
	}
	if (leaf)
		return;
	GMimeMultipart *mp = GMIME_MULTIPART(obj);
	int n = g_mime_multipart_get_count(mp);
	/* enmime numbering: the root multipart's children are "1", "2", ... */
	bool top = depth == 0;
	GMimeContentType *ct = g_mime_object_get_content_type(obj);
	const char *sub = ct ? g_mime_content_type_get_media_subtype(ct) : NULL;
	bool alt = sub && g_ascii_strcasecmp(sub, "alternative") == 0;
	bool saved_text = w->alt_text, saved_html = w->alt_html;
	if (alt)
		w->alt_text = w->alt_html = false;
	for (int i = 0; i < n && !w->err && !w->found; i++) {
		char cid[MIME_PARTID_MAX];
		set_id(cid, id, (size_t)i + 1, top);
		w->in_alt = alt;
		walk(w, g_mime_multipart_get_part(mp, i), cid, depth + 1);
	}
	w->in_alt = false;
	if (alt) {
		w->alt_text = saved_text;
		w->alt_html = saved_html;
	}
}

/* ---- parsing ---- */

static GMimeMessage *parse_message(const char *raw, size_t len);

/*
 * Parses raw as every other reader does: where a header block has two
 * Content-Type fields the first counts (GMime would take the last), by
 * parsing a same-length copy in which the later ones are renamed. Fills
 * spans (free with mime_spans_free); *bytes is what was parsed (raw or
 * the copy, free *copy). NULL when GMime read nothing.
 */
static GMimeMessage *parse_exact(const char *raw, size_t len, struct mime_spans *spans, char **copy,
                                 const char **bytes, int *err)
{
	*copy = NULL;
	*bytes = raw;
	*err = mime_spans(raw, len, spans);
	if (*err != TERN_OK)
		return NULL;
	if (spans->n_dups) {
		*copy = mime_first_ct_copy(raw, len, spans);
		if (!*copy) {
			*err = TERN_ENOMEM;
			return NULL;
		}
		*bytes = *copy;
	}
	return parse_message(*bytes, len);
}

static GMimeMessage *parse_message(const char *raw, size_t len)
{
	mime_init();
	GMimeStream *s = g_mime_stream_mem_new_with_buffer(raw, len);
	GMimeParser *p = g_mime_parser_new_with_stream(s);
	g_mime_parser_set_format(p, GMIME_FORMAT_MESSAGE);
	GMimeMessage *msg = g_mime_parser_construct_message(p, NULL);
	g_object_unref(p);
	g_object_unref(s);
	return msg;
}

static int addrs_from_list(InternetAddressList *l, struct mime_addrs *out, int depth)
{
	if (!l || depth > 4)
		return TERN_OK;
	int n = internet_address_list_length(l);
	for (int i = 0; i < n; i++) {
		InternetAddress *a = internet_address_list_get_address(l, i);
		if (INTERNET_ADDRESS_IS_GROUP(a)) {
			int rc = addrs_from_list(
			    internet_address_group_get_members(INTERNET_ADDRESS_GROUP(a)), out,
			    depth + 1);
			if (rc != TERN_OK)
				return rc;
			continue;
		}
		if (!INTERNET_ADDRESS_IS_MAILBOX(a))
			continue;
		struct mime_addr *nv = realloc(out->v, (out->n + 1) * sizeof(*nv));
		if (!nv)
			return TERN_ENOMEM;
		out->v = nv;
		const char *name = internet_address_get_name(a);
		const char *addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(a));
		char *nm = to_utf8(name ? name : "", name ? strlen(name) : 0, NULL);
		char *ad = to_utf8(addr ? addr : "", addr ? strlen(addr) : 0, NULL);
		if (!nm || !ad) {
			free(nm);
			free(ad);
			return TERN_ENOMEM;
		}
		scrub_controls(nm);
		scrub_controls(ad);
		nv[out->n].name = nm;
		nv[out->n].addr = ad;
		out->n++;
	}
	return TERN_OK;
}

static void addrs_free(struct mime_addrs *a)
{
	for (size_t i = 0; i < a->n; i++) {
		free(a->v[i].name);
		free(a->v[i].addr);
	}
	free(a->v);
	a->v = NULL;
	a->n = 0;
}

/* Strips tags, drops <style>/<script>/<head> content, decodes the common
 * entities; good enough for a 250-character preview. */
static void html_to_text(const char *h, struct tbuf *out)
{
	const char *p = h;
	while (*p) {
		if (*p == '<') {
			static const char *const skip[] = {"style", "script", "head", "title"};
			bool skipped = false;
			for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++) {
				size_t sl = strlen(skip[i]);
				if (g_ascii_strncasecmp(p + 1, skip[i], sl) == 0 &&
				    (p[1 + sl] == '>' || g_ascii_isspace(p[1 + sl]))) {
					char close[16];
					snprintf(close, sizeof(close), "</%s", skip[i]);
					const char *e = p + 1;
					while (*e &&
					       g_ascii_strncasecmp(e, close, strlen(close)) != 0)
						e++;
					p = e;
					skipped = true;
					break;
				}
			}
			if (skipped && !*p)
				break;
			while (*p && *p != '>')
				p++;
			if (*p)
				p++;
			tbuf_append_str(out, " ");
			continue;
		}
		if (*p == '&') {
			static const struct {
				const char *e, *r;
			} ents[] = {{"&amp;", "&"},   {"&lt;", "<"},  {"&gt;", ">"},
			            {"&quot;", "\""}, {"&#39;", "'"}, {"&nbsp;", " "},
			            {"&apos;", "'"}};
			bool done = false;
			for (size_t i = 0; i < sizeof(ents) / sizeof(ents[0]); i++) {
				size_t el = strlen(ents[i].e);
				if (g_ascii_strncasecmp(p, ents[i].e, el) == 0) {
					tbuf_append_str(out, ents[i].r);
					p += el;
					done = true;
					break;
				}
			}
			if (done)
				continue;
		}
		tbuf_append(out, p, 1);
		p++;
	}
}

static char *make_snippet(const char *text, const char *html)
{
	struct tbuf src = TBUF_INIT(SIZE_MAX / 2);
	const char *s = text;
	bool blank = true;
	for (const char *q = text; *q; q++)
		if (!g_ascii_isspace(*q)) {
			blank = false;
			break;
		}
	if (blank) {
		html_to_text(html, &src);
		s = src.data ? src.data : "";
	}
	struct tbuf out = TBUF_INIT(SIZE_MAX / 2);
	size_t chars = 0;
	bool space = false;
	for (const char *q = s; *q && chars < MIME_SNIPPET_CHARS;) {
		if (g_ascii_isspace(*q)) {
			space = true;
			q++;
			continue;
		}
		if (space && out.len) {
			tbuf_append_str(&out, " ");
			chars++;
			if (chars >= MIME_SNIPPET_CHARS)
				break;
		}
		space = false;
		const char *nx = g_utf8_next_char(q);
		tbuf_append(&out, q, (size_t)(nx - q));
		chars++;
		q = nx;
	}
	tbuf_free(&src);
	char *r = tern_strdup(out.data ? out.data : "");
	tbuf_free(&out);
	return r;
}

static char *trim_brackets(const char *s)
{
	if (!s)
		return tern_strdup("");
	while (*s == ' ' || *s == '\t' || *s == '<')
		s++;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '>' || s[n - 1] == '\r' ||
	             s[n - 1] == '\n'))
		n--;
	char *out = tern_strndup(s, n);
	if (out)
		scrub_controls(out);
	return out;
}

static char *header_dup(GMimeObject *obj, const char *name)
{
	const char *v = g_mime_object_get_header(obj, name);
	if (!v)
		return tern_strdup("");
	char *u = to_utf8(v, strlen(v), NULL);
	if (u)
		scrub_controls(u);
	return u;
}

int mime_parse(const char *raw, size_t len, unsigned flags, struct mime_msg *out)
{
	memset(out, 0, sizeof(*out));
	int rc = TERN_ENOMEM;
	struct walk w = {.m = out,
	                 .flags = flags,
	                 .text = TBUF_INIT(SIZE_MAX / 2),
	                 .html = TBUF_INIT(SIZE_MAX / 2)};
	struct mime_spans spans;
	char *copy;
	int perr;
	const char *bytes;
	GMimeMessage *msg = parse_exact(raw, len, &spans, &copy, &bytes, &perr);
	w.raw = raw; /* attached messages as sent, even where the copy renamed a field */
	w.spans = &spans;
	if (perr != TERN_OK) {
		mime_spans_free(&spans);
		free(copy);
		return perr;
	}
	if (!msg) {
		mime_spans_free(&spans);
		free(copy);
		/* nothing GMime could read: the whole input is the text */
		out->subject = tern_strdup("");
		out->message_id = tern_strdup("");
		out->return_path = tern_strdup("");
		out->from.name = tern_strdup("");
		out->from.addr = tern_strdup("");
		out->text = to_utf8(raw, len, NULL);
		out->html = tern_strdup("");
		out->list_unsub = tern_strdup("");
		out->list_unsub_post = tern_strdup("");
		if (!out->subject || !out->message_id || !out->return_path || !out->from.name ||
		    !out->from.addr || !out->text || !out->html || !out->list_unsub ||
		    !out->list_unsub_post)
			return TERN_ENOMEM;
		out->snippet = make_snippet(out->text, "");
		return out->snippet ? TERN_OK : TERN_ENOMEM;
	}
	GMimeObject *mo = GMIME_OBJECT(msg);
	const char *subj = g_mime_message_get_subject(msg);
	out->subject = to_utf8(subj ? subj : "", subj ? strlen(subj) : 0, NULL);
	out->message_id = trim_brackets(g_mime_message_get_message_id(msg));
	out->return_path = trim_brackets(g_mime_object_get_header(mo, "Return-Path"));
	out->list_unsub = header_dup(mo, "List-Unsubscribe");
	out->list_unsub_post = header_dup(mo, "List-Unsubscribe-Post");
	if (!out->subject || !out->message_id || !out->return_path || !out->list_unsub ||
	    !out->list_unsub_post)
		goto out;
	scrub_controls(out->subject);

	struct mime_addrs from = {0};
	if (addrs_from_list(g_mime_message_get_from(msg), &from, 0) != TERN_OK) {
		addrs_free(&from);
		goto out;
	}
	if (from.n) {
		out->from = from.v[0];
		for (size_t i = 1; i < from.n; i++) {
			free(from.v[i].name);
			free(from.v[i].addr);
		}
		free(from.v);
	} else {
		free(from.v);
		out->from.name = tern_strdup("");
		out->from.addr = tern_strdup("");
		if (!out->from.name || !out->from.addr)
			goto out;
	}
	if (addrs_from_list(g_mime_message_get_addresses(msg, GMIME_ADDRESS_TYPE_TO), &out->to,
	                    0) != TERN_OK ||
	    addrs_from_list(g_mime_message_get_addresses(msg, GMIME_ADDRESS_TYPE_CC), &out->cc,
	                    0) != TERN_OK ||
	    addrs_from_list(g_mime_message_get_addresses(msg, GMIME_ADDRESS_TYPE_BCC), &out->bcc,
	                    0) != TERN_OK ||
	    addrs_from_list(g_mime_message_get_reply_to(msg), &out->reply_to, 0) != TERN_OK)
		goto out;

	GDateTime *dt = g_mime_message_get_date(msg);
	if (dt) {
		out->has_date = true;
		out->date = g_date_time_to_unix(dt);
		out->date_tz_min = (int)(g_date_time_get_utc_offset(dt) / G_TIME_SPAN_MINUTE);
	}

	GMimeObject *top = g_mime_message_get_mime_part(msg);
	if (top) {
		/* a multipart root's children start at "1"; a single part is "0" */
		walk(&w, top, "0", 0);
		if (w.err)
			goto out;
	}
	out->text = tern_strdup(w.text.data ? w.text.data : "");
	out->html = tern_strdup(w.html.data ? w.html.data : "");
	if (!out->text || !out->html)
		goto out;
	out->snippet = make_snippet(out->text, out->html);
	if (!out->snippet)
		goto out;
	rc = TERN_OK;
out:
	tbuf_free(&w.text);
	tbuf_free(&w.html);
	g_object_unref(msg);
	mime_spans_free(&spans);
	free(copy);
	return rc;
}

void mime_msg_free(struct mime_msg *m)
{
	if (!m)
		return;
	free(m->subject);
	free(m->message_id);
	free(m->return_path);
	free(m->from.name);
	free(m->from.addr);
	addrs_free(&m->to);
	addrs_free(&m->cc);
	addrs_free(&m->bcc);
	addrs_free(&m->reply_to);
	free(m->text);
	free(m->html);
	free(m->snippet);
	free(m->list_unsub);
	free(m->list_unsub_post);
	for (size_t i = 0; i < m->n_parts; i++) {
		free(m->parts[i].content_type);
		free(m->parts[i].filename);
		free(m->parts[i].content_id);
	}
	free(m->parts);
	memset(m, 0, sizeof(*m));
}

int mime_part_get(const char *raw, size_t len, const char *part_id, struct tbuf *out,
                  char *content_type, size_t ctlen, char *filename, size_t fnlen)
{
	struct mime_spans spans;
	char *copy;
	const char *bytes;
	int rc;
	GMimeMessage *msg = parse_exact(raw, len, &spans, &copy, &bytes, &rc);
	if (!msg) {
		mime_spans_free(&spans);
		free(copy);
		return rc == TERN_OK ? TERN_ENOTFOUND : rc;
	}
	rc = TERN_ENOTFOUND;
	struct walk w = {.want = part_id, .raw = raw, .spans = &spans};
	GMimeObject *top = g_mime_message_get_mime_part(msg);
	if (top)
		walk(&w, top, "0", 0);
	if (!w.found)
		goto out;
	rc = part_bytes(w.found, raw, &spans, part_id, out);
	if (rc != TERN_OK)
		goto out;
	char *ct = mime_type_of(w.found);
	char *fn = filename_of(w.found);
	if (!ct || !fn) {
		free(ct);
		free(fn);
		rc = TERN_ENOMEM;
		goto out;
	}
	const char *cs = charset_of(w.found);
	if (content_type) {
		bool safe_cs = cs && *cs && strlen(cs) < 40;
		for (const char *q = cs; safe_cs && *q; q++)
			if (!g_ascii_isalnum(*q) && !strchr("-_.:", *q))
				safe_cs = false;
		if (strncmp(ct, "text/", 5) == 0 && safe_cs)
			snprintf(content_type, ctlen, "%s; charset=%s", ct, cs);
		else
			snprintf(content_type, ctlen, "%s", ct);
	}
	if (filename)
		tern_strlcpy(filename, fn, fnlen);
	free(ct);
	free(fn);
out:
	g_object_unref(msg);
	mime_spans_free(&spans);
	free(copy);
	return rc;
}

/* Appends the fields of one header list; unfolds as Go's textproto does
 * (a line break and the blanks after it become one space). */
static int headers_from(GMimeHeaderList *hl, struct mime_header **out, size_t *n, size_t *cap)
{
	int count = hl ? g_mime_header_list_get_count(hl) : 0;
	for (int i = 0; i < count; i++) {
		GMimeHeader *h = g_mime_header_list_get_header_at(hl, i);
		const char *name = g_mime_header_get_name(h);
		const char *rv = g_mime_header_get_raw_value(h);
		if (!rv)
			rv = "";
		if (*n == *cap) {
			size_t nc = *cap ? *cap * 2 : 32;
			struct mime_header *nh = realloc(*out, nc * sizeof(*nh));
			if (!nh)
				return TERN_ENOMEM;
			*out = nh;
			*cap = nc;
		}
		struct tbuf v = TBUF_INIT(SIZE_MAX / 2);
		int rc = TERN_OK;
		for (const char *q = rv; *q && rc == TERN_OK; q++) {
			if (*q == '\r' || *q == '\n') {
				while (q[1] == '\r' || q[1] == '\n' || q[1] == ' ' || q[1] == '\t')
					q++;
				rc = tbuf_append_str(&v, " ");
				continue;
			}
			rc = tbuf_append(&v, q, 1);
		}
		const char *vs = v.data ? v.data : "";
		while (*vs == ' ' || *vs == '\t')
			vs++;
		size_t vl = strlen(vs);
		while (vl && (vs[vl - 1] == ' ' || vs[vl - 1] == '\t'))
			vl--;
		struct mime_header *mh = &(*out)[*n];
		mh->name = to_utf8(name ? name : "", name ? strlen(name) : 0, NULL);
		mh->value = to_utf8(vs, vl, NULL);
		tbuf_free(&v);
		(*n)++;
		if (!mh->name || !mh->value || rc != TERN_OK)
			return TERN_ENOMEM;
	}
	return TERN_OK;
}

int mime_headers(const char *raw, size_t len, struct mime_header **out, size_t *n)
{
	*out = NULL;
	*n = 0;
	size_t cap = 0;
	GMimeMessage *msg = parse_message(raw, len);
	if (!msg)
		return TERN_OK;
	/* GMime keeps the Content-* fields of the top level on its MIME part */
	int rc = headers_from(g_mime_object_get_header_list(GMIME_OBJECT(msg)), out, n, &cap);
	GMimeObject *top = g_mime_message_get_mime_part(msg);
	if (rc == TERN_OK && top)
		rc = headers_from(g_mime_object_get_header_list(top), out, n, &cap);
	g_object_unref(msg);
	if (rc != TERN_OK) {
		mime_headers_free(*out, *n);
		*out = NULL;
		*n = 0;
	}
	return rc;
}

void mime_headers_free(struct mime_header *h, size_t n)
{
	if (!h)
		return;
	for (size_t i = 0; i < n; i++) {
		free(h[i].name);
		free(h[i].value);
	}
	free(h);
}
