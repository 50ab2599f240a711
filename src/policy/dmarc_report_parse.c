/*
 * dmarc_report_parse.c — aggregate reports we receive (RFC 9990, and
 * RFC 7489's older shape): the XML with expat into rows, the report out of
 * a message (MIME via GMime's parser in mime/, gzip and zip via zlib), the
 * rows into DATA/dmarc.db, and the local delivery hook for reports.inbox.
 *
 * Owns: the element extraction over expat's callbacks (a pure function),
 * a minimal zip reader (the first .xml member of the archive: stored or
 * deflated, as reporters send them), the inbox hook.
 *
 * Must never: expand entities (expat's are off: a DOCTYPE ends the parse,
 * so no billion laughs), grow without a bound (rows, text, inflated
 * size), or let a bad report disturb the delivery of its message.
 */
#include "policy/dmarc_report.h"

#include <expat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <zlib.h>

#include "core/conf.h"
#include "core/err.h"
#include "core/log.h"
#include "mime/mime.h"
#include "smtp/smtp.h"

/* ---------------------------------------------------------------- XML */

#define DEPTH_MAX 16
#define TEXT_MAX 1024

struct fb_parse {
	XML_Parser p;
	struct dmarc_feedback *f;
	int rc;
	char path[DEPTH_MAX][32]; /* local names of the open elements */
	int depth;
	char text[TEXT_MAX + 1];
	size_t text_len;
	bool text_over;
	size_t cap;
	bool in_record;
	struct dmarc_fb_row row;
	/* auth_results/dkim or spf being read */
	char ad_domain[DMARC_REC_DOMAIN_MAX + 1], ad_result[16];
	bool saw_feedback;
};

/* The local name: expat is run with namespaces on, names come as
 * "URI|local"; an element of another namespace (an extension) keeps its
 * URI and so never matches ours. */
static const char *local_name(const char *name)
{
	const char *bar = strchr(name, '|');
	if (!bar)
		return name;
	size_t ul = (size_t)(bar - name);
	/* ours: RFC 9990's namespace, or none at all (RFC 7489 reports) */
	static const char ns[] = "urn:ietf:params:xml:ns:dmarc-2.0";
	if (ul == sizeof(ns) - 1 && memcmp(name, ns, ul) == 0)
		return bar + 1;
	return name; /* contains '|', matches nothing */
}

static bool at(const struct fb_parse *x, const char *a, const char *b, const char *c)
{
	const char *want[3] = {a, b, c};
	int n = c ? 3 : b ? 2 : 1;
	if (x->depth < n)
		return false;
	for (int i = 0; i < n; i++)
		if (strcmp(x->path[x->depth - n + i], want[i]) != 0)
			return false;
	return true;
}

static void fail(struct fb_parse *x, int rc)
{
	if (x->rc == TERN_OK)
		x->rc = rc;
	XML_StopParser(x->p, XML_FALSE);
}

static void XMLCALL on_start(void *arg, const XML_Char *name, const XML_Char **attrs)
{
	struct fb_parse *x = arg;
	const char *ln = local_name(name);
	if (x->depth == 0) {
		if (strcmp(ln, "feedback") != 0) {
			fail(x, TERN_ESYNTAX);
			return;
		}
		x->saw_feedback = true;
	}
	if (x->depth >= DEPTH_MAX) {
		fail(x, TERN_ESYNTAX);
		return;
	}
	tern_strlcpy(x->path[x->depth], strlen(ln) < 32 ? ln : "?", sizeof(x->path[0]));
	x->depth++;
	x->text_len = 0;
	x->text_over = false;
	if (x->depth == 2 && strcmp(ln, "record") == 0) {
		memset(&x->row, 0, sizeof(x->row));
		x->row.count = 1;
		x->in_record = true;
	}
	if (x->in_record &&
	    (at(x, "auth_results", "dkim", NULL) || at(x, "auth_results", "spf", NULL))) {
		x->ad_domain[0] = x->ad_result[0] = '\0';
	}
}

static void XMLCALL on_text(void *arg, const XML_Char *s, int len)
{
	struct fb_parse *x = arg;
	if (len < 0 || x->text_len + (size_t)len > TEXT_MAX) {
		x->text_over = true;
		return;
	}
	memcpy(x->text + x->text_len, s, (size_t)len);
	x->text_len += (size_t)len;
}

/* The element's text, trimmed of white space. */
static const char *text_of(struct fb_parse *x)
{
	x->text[x->text_len] = '\0';
	char *s = x->text;
	while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
		s++;
	char *e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
		*--e = '\0';
	return s;
}

static void put(char *dst, size_t dstlen, const char *s)
{
	tern_strlcpy(dst, s, dstlen);
}

static void append_pair(char *dst, size_t dstlen, const char *d, const char *r)
{
	size_t n = strlen(dst);
	/* A summary for people: a pair cut at the end of dst is acceptable. */
	if (n < dstlen && snprintf(dst + n, dstlen - n, "%s%s=%s", n ? " " : "", d[0] ? d : "-",
	                           r[0] ? r : "none") < 0)
		dst[n] = '\0';
}

static int64_t to_int(const char *s)
{
	char *e = NULL;
	long long v = strtoll(s, &e, 10);
	return e && e != s && *e == '\0' && v >= 0 ? (int64_t)v : 0;
}

static void XMLCALL on_end(void *arg, const XML_Char *name)
{
	struct fb_parse *x = arg;
	(void)name;
	if (x->depth <= 0)
		return;
	const char *t = x->text_over ? "" : text_of(x);
	struct dmarc_feedback *f = x->f;
	struct dmarc_fb_row *r = &x->row;
	if (x->depth == 3 && at(x, "report_metadata", "org_name", NULL))
		put(f->org_name, sizeof(f->org_name), t);
	else if (x->depth == 3 && at(x, "report_metadata", "email", NULL))
		put(f->email, sizeof(f->email), t);
	else if (x->depth == 3 && at(x, "report_metadata", "report_id", NULL))
		put(f->report_id, sizeof(f->report_id), t);
	else if (x->depth == 4 && at(x, "report_metadata", "date_range", "begin"))
		f->begin = to_int(t);
	else if (x->depth == 4 && at(x, "report_metadata", "date_range", "end"))
		f->end = to_int(t);
	else if (x->depth == 3 && at(x, "policy_published", "domain", NULL))
		put(f->domain, sizeof(f->domain), t);
	else if (x->in_record && x->depth == 4 && at(x, "record", "row", "source_ip"))
		put(r->source_ip, sizeof(r->source_ip), t);
	else if (x->in_record && x->depth == 4 && at(x, "record", "row", "count"))
		r->count = (uint64_t)to_int(t);
	else if (x->in_record && x->depth == 5 && at(x, "policy_evaluated", "disposition", NULL))
		put(r->disposition, sizeof(r->disposition), t);
	else if (x->in_record && x->depth == 5 && at(x, "row", "policy_evaluated", "dkim"))
		put(r->dkim, sizeof(r->dkim), t);
	else if (x->in_record && x->depth == 5 && at(x, "row", "policy_evaluated", "spf"))
		put(r->spf, sizeof(r->spf), t);
	else if (x->in_record && x->depth == 4 && at(x, "record", "identifiers", "header_from"))
		put(r->header_from, sizeof(r->header_from), t);
	else if (x->in_record && x->depth == 4 && at(x, "record", "identifiers", "envelope_from"))
		put(r->envelope_from, sizeof(r->envelope_from), t);
	else if (x->in_record && x->depth == 5 &&
	         (at(x, "auth_results", "dkim", "domain") ||
	          at(x, "auth_results", "spf", "domain")))
		put(x->ad_domain, sizeof(x->ad_domain), t);
	else if (x->in_record && x->depth == 5 &&
	         (at(x, "auth_results", "dkim", "result") ||
	          at(x, "auth_results", "spf", "result")))
		put(x->ad_result, sizeof(x->ad_result), t);
	else if (x->in_record && x->depth == 4 && at(x, "record", "auth_results", "dkim"))
		append_pair(r->dkim_auth, sizeof(r->dkim_auth), x->ad_domain, x->ad_result);
	else if (x->in_record && x->depth == 4 && at(x, "record", "auth_results", "spf"))
		append_pair(r->spf_auth, sizeof(r->spf_auth), x->ad_domain, x->ad_result);
	else if (x->in_record && x->depth == 2 && at(x, "record", NULL, NULL)) {
		x->in_record = false;
		if (f->n_rows >= DMARC_FB_ROWS_MAX) {
			fail(x, TERN_ELIMIT);
		} else {
			if (f->n_rows == x->cap) {
				size_t nc = x->cap ? x->cap * 2 : 16;
				struct dmarc_fb_row *nr = realloc(f->rows, nc * sizeof(*nr));
				if (!nr) {
					fail(x, TERN_ENOMEM);
					goto out;
				}
				f->rows = nr;
				x->cap = nc;
			}
			f->rows[f->n_rows++] = *r;
		}
	}
out:
	x->depth--;
	x->text_len = 0;
	x->text_over = false;
}

/* A DOCTYPE (and with it any entity declaration) ends the parse. */
static void XMLCALL on_doctype(void *arg, const XML_Char *name, const XML_Char *sysid,
                               const XML_Char *pubid, int has_internal)
{
	fail(arg, TERN_ESYNTAX);
}

static void XMLCALL on_entity(void *arg, const XML_Char *name, int is_param, const XML_Char *value,
                              int value_len, const XML_Char *base, const XML_Char *sysid,
                              const XML_Char *pubid, const XML_Char *notation)
{
	fail(arg, TERN_ESYNTAX);
}

void dmarc_feedback_free(struct dmarc_feedback *f)
{
	if (!f)
		return;
	free(f->rows);
	f->rows = NULL;
	f->n_rows = 0;
}

int dmarc_feedback_parse(const char *xml, size_t len, struct dmarc_feedback *out)
{
	memset(out, 0, sizeof(*out));
	if (len > (size_t)INT32_MAX)
		return TERN_ELIMIT;
	struct fb_parse x = {.f = out, .rc = TERN_OK};
	x.p = XML_ParserCreateNS(NULL, '|');
	if (!x.p)
		return TERN_ENOMEM;
	XML_SetUserData(x.p, &x);
	XML_SetElementHandler(x.p, on_start, on_end);
	XML_SetCharacterDataHandler(x.p, on_text);
	XML_SetStartDoctypeDeclHandler(x.p, on_doctype);
	XML_SetEntityDeclHandler(x.p, on_entity);
	enum XML_Status st = XML_Parse(x.p, xml, (int)len, XML_TRUE);
	int rc = x.rc;
	if (rc == TERN_OK && st != XML_STATUS_OK)
		rc = TERN_ESYNTAX;
	if (rc == TERN_OK && (!x.saw_feedback || !out->report_id[0] || !out->domain[0]))
		rc = TERN_ESYNTAX;
	XML_ParserFree(x.p);
	if (rc != TERN_OK)
		dmarc_feedback_free(out);
	return rc;
}

/* ------------------------------------------------------- decompression */

/* Inflates in..len (windowBits: 15+32 gzip or zlib by header, -15 raw)
 * into out, at most max bytes. */
static int inflate_to(const void *in, size_t len, int window_bits, size_t max, struct tbuf *out)
{
	z_stream z;
	memset(&z, 0, sizeof(z));
	if (inflateInit2(&z, window_bits) != Z_OK)
		return TERN_ENOMEM;
	z.next_in = (Bytef *)(uintptr_t)in;
	z.avail_in = (uInt)(len > UINT32_MAX ? UINT32_MAX : len);
	int rc = TERN_OK, zr = Z_OK;
	while (zr != Z_STREAM_END) {
		if (out->len >= max) {
			rc = TERN_ELIMIT;
			break;
		}
		size_t chunk = max - out->len < 65536 ? max - out->len : 65536;
		if ((rc = tbuf_reserve(out, chunk)) != TERN_OK)
			break;
		z.next_out = (Bytef *)out->data + out->len;
		z.avail_out = (uInt)chunk;
		zr = inflate(&z, Z_NO_FLUSH);
		out->len += chunk - z.avail_out;
		if (zr != Z_OK && zr != Z_STREAM_END) {
			rc = TERN_ESYNTAX;
			break;
		}
		if (zr == Z_OK && z.avail_in == 0 && z.avail_out != 0) {
			rc = TERN_ESYNTAX; /* truncated */
			break;
		}
	}
	inflateEnd(&z);
	if (rc == TERN_OK && out->data)
		out->data[out->len] = '\0';
	return rc;
}

static uint32_t le16(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

static uint32_t le32(const unsigned char *p)
{
	return le16(p) | le16(p + 2) << 16;
}

/* The first member of a zip archive (local file headers, in order): stored
 * or deflated. Members with a data descriptor (sizes after the data) are
 * read when deflated, since inflate finds the end itself. */
static int unzip_first(const unsigned char *z, size_t len, size_t max, struct tbuf *out)
{
	size_t off = 0;
	while (off + 30 <= len && le32(z + off) == 0x04034b50u) {
		uint32_t flags = le16(z + off + 6), method = le16(z + off + 8);
		uint32_t csize = le32(z + off + 18), usize = le32(z + off + 22);
		uint32_t nlen = le16(z + off + 26), xlen = le16(z + off + 28);
		size_t data = off + 30 + nlen + xlen;
		if (data > len || (flags & 1u))
			return TERN_ESYNTAX; /* truncated, or encrypted */
		size_t avail = len - data;
		bool descriptor = flags & 8u;
		if (!descriptor && csize > avail)
			return TERN_ESYNTAX;
		size_t clen = descriptor ? avail : csize;
		if (method == 0) {
			if (descriptor)
				return TERN_ESYNTAX;
			if (usize > max)
				return TERN_ELIMIT;
			int rc = tbuf_append(out, z + data, clen);
			if (rc == TERN_OK)
				out->data[out->len] = '\0';
			return rc;
		}
		if (method == 8)
			return inflate_to(z + data, clen, -15, max, out);
		return TERN_ESYNTAX;
	}
	return TERN_ESYNTAX;
}

/* ------------------------------------------------------- the message */

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

enum kind { K_NONE = 0, K_GZIP, K_ZIP, K_XML };

static enum kind kind_of(const char *type, const char *fname)
{
	if (fname && (ends_with(fname, ".gz") || ends_with(fname, ".gzip")))
		return K_GZIP;
	if (fname && ends_with(fname, ".zip"))
		return K_ZIP;
	if (fname && ends_with(fname, ".xml"))
		return K_XML;
	if (!type)
		return K_NONE;
	if (strcasecmp(type, "application/gzip") == 0 ||
	    strcasecmp(type, "application/x-gzip") == 0)
		return K_GZIP;
	if (strcasecmp(type, "application/zip") == 0 ||
	    strcasecmp(type, "application/x-zip-compressed") == 0 ||
	    strcasecmp(type, "application/x-zip") == 0)
		return K_ZIP;
	if (strcasecmp(type, "text/xml") == 0 || strcasecmp(type, "application/xml") == 0)
		return K_XML;
	return K_NONE;
}

int dmarc_report_extract(const char *msg, size_t len, size_t max, struct tbuf *xml)
{
	struct mime_msg m;
	char ct[128], fn[256];
	mime_init();
	if (mime_parse(msg, len, 0, &m) != TERN_OK) {
		mime_msg_free(&m);
		return TERN_ESYNTAX;
	}
	int rc = TERN_ENOTFOUND;
	for (size_t i = 0; i < m.n_parts && rc == TERN_ENOTFOUND; i++) {
		const struct mime_part *p = &m.parts[i];
		enum kind k = kind_of(p->content_type, p->filename);
		if (k == K_NONE)
			continue;
		struct tbuf raw;
		tbuf_init(&raw, max);
		rc = mime_part_get(msg, len, p->part_id, &raw, ct, sizeof(ct), fn, sizeof(fn));
		if (rc == TERN_OK) {
			tbuf_reset(xml);
			if (k == K_XML) {
				rc = tbuf_append(xml, raw.data, raw.len);
				if (rc == TERN_OK)
					xml->data[xml->len] = '\0';
			} else if (k == K_GZIP) {
				rc = inflate_to(raw.data, raw.len, 15 + 32, max, xml);
			} else {
				rc =
				    unzip_first((const unsigned char *)raw.data, raw.len, max, xml);
			}
		} else if (rc != TERN_ELIMIT) {
			rc = TERN_ESYNTAX;
		}
		tbuf_free(&raw);
	}
	mime_msg_free(&m);
	return rc;
}

/* ------------------------------------------------------------- storing */

int dmarc_feedback_store(sqlite3 *db, const struct dmarc_feedback *f, int64_t now)
{
	sqlite3_stmt *del = NULL, *ins = NULL;
	int rc = TERN_EIO;
	if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
		return TERN_EIO;
	if (sqlite3_prepare_v2(db, "DELETE FROM received WHERE reporter = ? AND report_id = ?", -1,
	                       &del, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(
	        db,
	        "INSERT INTO received (stored, reporter, reporter_email, report_id, "
	        "begin, end, policy_domain, source_ip, count, disposition, dkim, spf, "
	        "header_from, envelope_from, dkim_auth, spf_auth) VALUES "
	        "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
	        -1, &ins, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(del, 1, f->org_name, -1, SQLITE_STATIC);
	sqlite3_bind_text(del, 2, f->report_id, -1, SQLITE_STATIC);
	if (sqlite3_step(del) != SQLITE_DONE)
		goto out;
	for (size_t i = 0; i < f->n_rows; i++) {
		const struct dmarc_fb_row *r = &f->rows[i];
		sqlite3_reset(ins);
		sqlite3_bind_int64(ins, 1, now);
		sqlite3_bind_text(ins, 2, f->org_name, -1, SQLITE_STATIC);
		sqlite3_bind_text(ins, 3, f->email, -1, SQLITE_STATIC);
		sqlite3_bind_text(ins, 4, f->report_id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(ins, 5, f->begin);
		sqlite3_bind_int64(ins, 6, f->end);
		sqlite3_bind_text(ins, 7, f->domain, -1, SQLITE_STATIC);
		sqlite3_bind_text(ins, 8, r->source_ip, -1, SQLITE_STATIC);
		sqlite3_bind_int64(ins, 9, (int64_t)r->count);
		sqlite3_bind_text(ins, 10, r->disposition, -1, SQLITE_STATIC);
		sqlite3_bind_text(ins, 11, r->dkim, -1, SQLITE_STATIC);
		sqlite3_bind_text(ins, 12, r->spf, -1, SQLITE_STATIC);
		sqlite3_bind_text(ins, 13, r->header_from, -1, SQLITE_STATIC);
		sqlite3_bind_text(ins, 14, r->envelope_from, -1, SQLITE_STATIC);
		sqlite3_bind_text(ins, 15, r->dkim_auth, -1, SQLITE_STATIC);
		sqlite3_bind_text(ins, 16, r->spf_auth, -1, SQLITE_STATIC);
		if (sqlite3_step(ins) != SQLITE_DONE)
			goto out;
	}
	if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK)
		rc = TERN_OK;
out:
	sqlite3_finalize(del);
	sqlite3_finalize(ins);
	if (rc != TERN_OK)
		sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

/* Largest report we inflate: big providers' daily reports stay far below. */
#define REPORT_XML_MAX (32u << 20)

bool dmarc_inbox_deliver(const struct tern_config *conf, const char *rcpt, const char *id,
                         const char *msg, size_t len)
{
	const char *inbox = conf->dmarc.reports.inbox;
	if (!inbox || !rcpt || !tern_ascii_ieq(inbox, rcpt))
		return false;
	struct tbuf xml;
	struct dmarc_feedback f;
	char err[512], q[1100], q2[600];
	tbuf_init(&xml, REPORT_XML_MAX + 1);
	int rc = dmarc_report_extract(msg, len, REPORT_XML_MAX, &xml);
	const char *why = rc == TERN_ENOTFOUND ? "no-report-attachment"
	                  : rc == TERN_ELIMIT  ? "too-large"
	                                       : "cannot-decode-attachment";
	if (rc == TERN_OK) {
		rc = dmarc_feedback_parse(xml.data, xml.len, &f);
		why = rc == TERN_ELIMIT ? "too-many-records" : "not-an-aggregate-report";
	}
	tbuf_free(&xml);
	if (rc != TERN_OK) {
		log_warn("event=dmarc_report_unparsable id=%s reason=%s action=delivered-only", id,
		         why);
		return true;
	}
	sqlite3 *db = dmarc_db_open(conf->data_dir, true, err, sizeof(err));
	rc = db ? dmarc_feedback_store(db, &f, (int64_t)time(NULL)) : TERN_EIO;
	if (rc == TERN_OK)
		log_info("event=dmarc_report_received id=%s reporter=%s report_id=%s domain=%s "
		         "records=%zu",
		         id, log_quote(f.org_name, strlen(f.org_name), q, sizeof(q)),
		         log_quote(f.report_id, strlen(f.report_id), q2, sizeof(q2)),
		         log_quote(f.domain, strlen(f.domain), err, sizeof(err)), f.n_rows);
	else
		log_error("event=dmarc_report_store_failed id=%s reason=%s", id,
		          db ? sqlite3_errmsg(db) : "cannot open the database");
	if (db)
		sqlite3_close(db);
	dmarc_feedback_free(&f);
	return true;
}
