/*
 * dmarc_report.c — the pure parts of DMARC aggregate reporting
 * (policy/dmarc_report.h): what one evaluation records, the RFC 9990 XML,
 * its file name, Subject and MIME message, gzip, and the rua decisions.
 *
 * Must never: do I/O (dmarc_note only hands a copy to the store's
 * write-behind), read the clock (callers pass now), or put a byte that
 * came from the network into the XML unescaped or into a header field at
 * all (header fields carry only our names and checked domain names).
 */
#include "policy/dmarc_report.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "core/err.h"
#include "core/timefmt.h"
#include "mime/mime.h"

/* ----------------------------------------------------------- recording */

static const char *dkim_word(enum dmarc_dkim_result r)
{
	static const char *const n[] = {"none",   "pass",      "fail",     "neutral",
	                                "policy", "temperror", "permerror"};
	return (unsigned)r < 7 ? n[r] : "none";
}

static const char *spf_word(enum dmarc_spf_result r)
{
	static const char *const n[] = {"none",     "neutral",   "pass",     "fail",
	                                "softfail", "temperror", "permerror"};
	return (unsigned)r < 7 ? n[r] : "none";
}

size_t dmarc_note_fill(const struct dmarc_note *n, struct dmarc_rec out[DMARC_AUTHORS_MAX])
{
	size_t k = 0;
	const struct dmarc_outcome *o = n->o;
	const char *at = n->mailfrom ? strrchr(n->mailfrom, '@') : NULL;
	for (size_t i = 0; o && i < o->n_authors && i < DMARC_AUTHORS_MAX; i++) {
		const struct dmarc_author *a = &o->author[i];
		if (!a->policy_domain[0] ||
		    (a->result != DMARC_RESULT_PASS && a->result != DMARC_RESULT_FAIL))
			continue;
		struct dmarc_rec *r = &out[k++];
		memset(r, 0, sizeof(*r));
		r->t = n->now;
		tern_strlcpy(r->ip, n->ip ? n->ip : "", sizeof(r->ip));
		tern_strlcpy(r->header_from, a->domain, sizeof(r->header_from));
		if (at)
			dmarc_domain_normalize(at + 1, strlen(at + 1), r->env_from);
		tern_strlcpy(r->policy_domain, a->policy_domain, sizeof(r->policy_domain));
		tern_strlcpy(r->org_domain, a->org_domain, sizeof(r->org_domain));
		tern_strlcpy(r->p, dmarc_policy_name(a->record.p), sizeof(r->p));
		tern_strlcpy(r->sp, dmarc_policy_name(a->record.sp), sizeof(r->sp));
		tern_strlcpy(r->np, dmarc_policy_name(a->record.np), sizeof(r->np));
		r->adkim = a->record.adkim_strict ? 's' : 'r';
		r->aspf = a->record.aspf_strict ? 's' : 'r';
		r->testing = a->record.testing;
		r->psd = a->record.psd ? a->record.psd : 'u';
		static const char *const tag[] = {"p", "sp", "np"};
		snprintf(r->applied, sizeof(r->applied), "%s=%s",
		         (unsigned)a->tag < 3 ? tag[a->tag] : "p",
		         a->applied == DMARC_POLICY_UNSET ? "none" : dmarc_policy_name(a->applied));
		const char *disp = "none";
		if (a->result == DMARC_RESULT_PASS)
			disp = "pass";
		else if (n->disposition == DMARC_REJECT)
			disp = "reject";
		else if (n->disposition == DMARC_DELIVER_JUNK)
			disp = "quarantine";
		tern_strlcpy(r->disposition, disp, sizeof(r->disposition));
		tern_strlcpy(r->dkim_eval, a->dkim_aligned ? "pass" : "fail", sizeof(r->dkim_eval));
		tern_strlcpy(r->spf_eval, a->spf_aligned ? "pass" : "fail", sizeof(r->spf_eval));
		for (size_t j = 0; j < n->n_dkim && r->n_dkim < DMARC_REC_DKIM_MAX; j++) {
			const struct dmarc_dkim *d = &n->dkim[j];
			struct dmarc_rec_dkim *rd = &r->dkim[r->n_dkim];
			if (!d->domain ||
			    !dmarc_domain_normalize(d->domain, strlen(d->domain), rd->domain))
				continue;
			tern_strlcpy(rd->selector, d->selector ? d->selector : "",
			             sizeof(rd->selector));
			tern_strlcpy(rd->result, dkim_word(d->result), sizeof(rd->result));
			rd->aligned = a->dkim_aligned && d->result == DMARC_DKIM_PASS &&
			              !d->testing && strcmp(rd->domain, a->dkim_domain) == 0;
			r->n_dkim++;
		}
		if (n->spf && n->spf->domain)
			dmarc_domain_normalize(n->spf->domain, strlen(n->spf->domain),
			                       r->spf_domain);
		tern_strlcpy(r->spf_scope, "mfrom", sizeof(r->spf_scope));
		tern_strlcpy(r->spf_result, n->spf ? spf_word(n->spf->result) : "none",
		             sizeof(r->spf_result));
		size_t used = 0;
		for (size_t u = 0; u < a->record.rua.n; u++) {
			/* "URI" or "URI!SIZE" (the limit kept for dmarc_rua_parse) */
			const char *sz = a->record.rua.size[u];
			size_t len = strlen(a->record.rua.uri[u]), sl = strlen(sz);
			if (used + len + sl + 3 > sizeof(r->rua))
				break;
			memcpy(r->rua + used, a->record.rua.uri[u], len);
			used += len;
			if (sl) {
				r->rua[used++] = '!';
				memcpy(r->rua + used, sz, sl);
				used += sl;
			}
			r->rua[used++] = '\n';
		}
		r->rua[used] = '\0';
	}
	return k;
}

void dmarc_note(const struct dmarc_note *n)
{
	struct dmarc_store *s = dmarc_store_default();
	if (!s)
		return;
	struct dmarc_rec recs[DMARC_AUTHORS_MAX];
	size_t k = dmarc_note_fill(n, recs);
	for (size_t i = 0; i < k; i++)
		dmarc_store_record(s, &recs[i]);
}

/* ----------------------------------------------------------- the XML */

void dmarc_agg_free(struct dmarc_agg *a)
{
	for (size_t i = 0; a && i < a->n_rows; i++)
		free(a->rows[i].dkim_json);
	if (a)
		free(a->rows);
	if (a) {
		a->rows = NULL;
		a->n_rows = 0;
	}
}

/* Appends s with &, <, >, " and ' escaped; control bytes other than TAB,
 * LF, CR (which XML 1.0 cannot carry) become '?'. */
static void xml_text(struct tbuf *b, const char *s)
{
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;
		switch (c) {
		case '&':
			tbuf_append_str(b, "&amp;");
			break;
		case '<':
			tbuf_append_str(b, "&lt;");
			break;
		case '>':
			tbuf_append_str(b, "&gt;");
			break;
		case '"':
			tbuf_append_str(b, "&quot;");
			break;
		case '\'':
			tbuf_append_str(b, "&apos;");
			break;
		default:
			if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
				c = '?';
			tbuf_append(b, &c, 1);
		}
	}
}

static void xml_el(struct tbuf *b, const char *indent, const char *name, const char *value)
{
	tbuf_printf(b, "%s<%s>", indent, name);
	xml_text(b, value);
	tbuf_printf(b, "</%s>\n", name);
}

/* The stored DKIM results (a JSON array, dmarc_store's) as
 * auth_results/dkim elements. */
static void xml_dkim(struct tbuf *b, const char *json)
{
	json_t *a = json ? json_loads(json, 0, NULL) : NULL;
	size_t i;
	json_t *v;
	json_array_foreach(a, i, v)
	{
		const char *d = json_string_value(json_object_get(v, "domain"));
		const char *s = json_string_value(json_object_get(v, "selector"));
		const char *r = json_string_value(json_object_get(v, "result"));
		tbuf_append_str(b, "      <dkim>\n");
		xml_el(b, "        ", "domain", d ? d : "");
		xml_el(b, "        ", "selector", s ? s : "");
		xml_el(b, "        ", "result", r ? r : "none");
		tbuf_append_str(b, "      </dkim>\n");
	}
	json_decref(a);
}

int dmarc_agg_xml(const struct dmarc_agg *a, struct tbuf *b)
{
	char n[32];
	tbuf_append_str(b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	                   "<feedback xmlns=\"urn:ietf:params:xml:ns:dmarc-2.0\">\n"
	                   "  <version>1.0</version>\n  <report_metadata>\n");
	xml_el(b, "    ", "org_name", a->org_name);
	xml_el(b, "    ", "email", a->email);
	xml_el(b, "    ", "report_id", a->report_id);
	tbuf_printf(b,
	            "    <date_range>\n      <begin>%lld</begin>\n      <end>%lld</end>\n"
	            "    </date_range>\n",
	            (long long)a->begin, (long long)a->end);
	xml_el(b, "    ", "generator", "tern");
	tbuf_append_str(b, "  </report_metadata>\n  <policy_published>\n");
	xml_el(b, "    ", "domain", a->domain);
	xml_el(b, "    ", "p", a->p[0] ? a->p : "none"); /* required; absent p is none */
	if (a->sp[0])
		xml_el(b, "    ", "sp", a->sp);
	if (a->np[0])
		xml_el(b, "    ", "np", a->np);
	tbuf_printf(b, "    <adkim>%c</adkim>\n    <aspf>%c</aspf>\n", a->adkim == 's' ? 's' : 'r',
	            a->aspf == 's' ? 's' : 'r');
	xml_el(b, "    ", "discovery_method", "treewalk");
	tbuf_printf(b, "    <testing>%c</testing>\n", a->testing ? 'y' : 'n');
	tbuf_append_str(b, "  </policy_published>\n");
	for (size_t i = 0; i < a->n_rows; i++) {
		const struct dmarc_agg_row *r = &a->rows[i];
		snprintf(n, sizeof(n), "%llu", (unsigned long long)r->count);
		tbuf_append_str(b, "  <record>\n    <row>\n");
		xml_el(b, "      ", "source_ip", r->ip);
		xml_el(b, "      ", "count", n);
		tbuf_append_str(b, "      <policy_evaluated>\n");
		xml_el(b, "        ", "disposition", r->disposition);
		xml_el(b, "        ", "dkim", r->dkim_eval);
		xml_el(b, "        ", "spf", r->spf_eval);
		tbuf_append_str(b, "      </policy_evaluated>\n    </row>\n    <identifiers>\n");
		if (r->env_from[0])
			xml_el(b, "      ", "envelope_from", r->env_from);
		xml_el(b, "      ", "header_from", r->header_from);
		tbuf_append_str(b, "    </identifiers>\n    <auth_results>\n");
		xml_dkim(b, r->dkim_json);
		tbuf_append_str(b, "      <spf>\n");
		xml_el(b, "        ", "domain", r->spf_domain);
		xml_el(b, "        ", "scope", r->spf_scope[0] ? r->spf_scope : "mfrom");
		xml_el(b, "        ", "result", r->spf_result[0] ? r->spf_result : "none");
		tbuf_append_str(b, "      </spf>\n    </auth_results>\n  </record>\n");
	}
	return tbuf_append_str(b, "</feedback>\n");
}

void dmarc_agg_filename(const struct dmarc_agg *a, char *out, size_t outlen)
{
	snprintf(out, outlen, "%s!%s!%lld!%lld!%s.xml.gz", a->receiver, a->domain,
	         (long long)a->begin, (long long)a->end, a->unique);
}

int dmarc_gzip(const void *in, size_t len, struct tbuf *out)
{
	z_stream z;
	memset(&z, 0, sizeof(z));
	/* 15 + 16: a gzip wrapper rather than zlib's */
	if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		return TERN_EIO;
	int rc = tbuf_reserve(out, deflateBound(&z, (uLong)len));
	if (rc != TERN_OK) {
		deflateEnd(&z);
		return rc;
	}
	z.next_in = (Bytef *)(uintptr_t)in;
	z.avail_in = (uInt)len;
	z.next_out = (Bytef *)out->data + out->len;
	z.avail_out = (uInt)(out->cap - out->len);
	int zr = deflate(&z, Z_FINISH);
	if (zr == Z_STREAM_END)
		out->len += z.total_out;
	deflateEnd(&z);
	return zr == Z_STREAM_END ? TERN_OK : TERN_EIO;
}

int dmarc_agg_message(const struct dmarc_agg *a, const char *to, const void *gz, size_t gz_len,
                      int64_t now, struct tbuf *out)
{
	struct mime_writer w;
	char date[64], fname[700];
	mime_writer_init(&w, out);
	if (!tern_rfc5322_date(now, date, sizeof(date)))
		return TERN_EINVAL;
	dmarc_agg_filename(a, fname, sizeof(fname));
	/* the boundary: our random id cannot occur in base64 or our text */
	char boundary[96];
	snprintf(boundary, sizeof(boundary), "=_dmarc_%s", a->unique);
	mime_printf(&w, "From: %s\r\nTo: %s\r\n", a->email, to);
	mime_printf(&w, "Subject: Report Domain: %s Submitter: %s\r\n Report-ID: <%s>\r\n",
	            a->domain, a->receiver, a->report_id);
	mime_printf(&w, "Date: %s\r\nMessage-ID: <%s>\r\n", date, a->report_id);
	mime_puts(&w, "Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n");
	mime_printf(&w, "Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\n", boundary);
	mime_put_boundary(&w, boundary, true, false);
	mime_puts(&w, "Content-Type: text/plain; charset=us-ascii\r\n\r\n");
	mime_printf(&w, "This is a DMARC aggregate report (RFC 9990) for %s from %s,\r\n",
	            a->domain, a->receiver);
	mime_printf(&w, "covering %lld to %lld (seconds since 1970, UTC).\r\n", (long long)a->begin,
	            (long long)a->end);
	mime_put_boundary(&w, boundary, false, false);
	mime_printf(&w, "Content-Type: application/gzip; name=\"%s\"\r\n", fname);
	mime_printf(&w, "Content-Disposition: attachment; filename=\"%s\"\r\n", fname);
	mime_puts(&w, "Content-Transfer-Encoding: base64\r\n\r\n");
	mime_put_base64_body(&w, gz, gz_len);
	mime_put_boundary(&w, boundary, false, true);
	mime_crlf(&w);
	return mime_writer_status(&w);
}

/* ----------------------------------------------------------- rua URIs */

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

bool dmarc_rua_parse(const char *uri, struct dmarc_rua *out)
{
	memset(out, 0, sizeof(*out));
	if (strncasecmp(uri, "mailto:", 7) != 0)
		return false;
	const char *s = uri + 7, *bang = strchr(s, '!');
	const char *end = bang ? bang : s + strlen(s);
	size_t o = 0;
	for (const char *p = s; p < end; p++) {
		char c = *p;
		if (c == '%' && p + 2 < end && hexval(p[1]) >= 0 && hexval(p[2]) >= 0) {
			c = (char)(hexval(p[1]) * 16 + hexval(p[2]));
			p += 2;
		}
		/* an address we can put in To: and RCPT as it is: printable
		 * ASCII without the characters that would change its meaning */
		if ((unsigned char)c <= 0x20 || (unsigned char)c >= 0x7f || c == '<' || c == '>' ||
		    c == '"' || c == '\\' || c == ',' || c == '?' || o + 1 >= sizeof(out->addr))
			return false;
		out->addr[o++] = c;
	}
	out->addr[o] = '\0';
	const char *at = strrchr(out->addr, '@');
	if (!at || at == out->addr || !dmarc_domain_normalize(at + 1, strlen(at + 1), out->host))
		return false;
	if (bang) {
		char *e = NULL;
		unsigned long long v = strtoull(bang + 1, &e, 10);
		uint64_t mul = 1;
		if (e && (*e == 'k' || *e == 'K'))
			mul = 1ull << 10;
		else if (e && (*e == 'm' || *e == 'M'))
			mul = 1ull << 20;
		else if (e && (*e == 'g' || *e == 'G'))
			mul = 1ull << 30;
		else if (e && (*e == 't' || *e == 'T'))
			mul = 1ull << 40;
		if (e != bang + 1 && v < (1ull << 20))
			out->max_size = v * mul;
	}
	return true;
}

bool dmarc_rua_external(const char *org, const char *host)
{
	size_t lo = strlen(org), lh = strlen(host);
	if (lo == 0)
		return true;
	if (lh == lo)
		return strcmp(host, org) != 0;
	return !(lh > lo && host[lh - lo - 1] == '.' && strcmp(host + lh - lo, org) == 0);
}

int dmarc_rua_override(const char *const *txt, size_t n, const char *host, struct dmarc_rua *out,
                       size_t max, size_t *n_out)
{
	*n_out = 0;
	for (size_t i = 0; i < n; i++) {
		const char *one[1] = {txt[i]};
		struct dmarc_record rec;
		if (!dmarc_rua_authorized(one, 1) ||
		    dmarc_record_parse(txt[i], strlen(txt[i]), &rec) != DMARC_PARSE_OK)
			continue;
		for (size_t u = 0; u < rec.rua.n; u++) {
			char uri[DMARC_URI_MAX + 32];
			struct dmarc_rua x;
			snprintf(uri, sizeof(uri), "%s%s%s", rec.rua.uri[u],
			         rec.rua.size[u][0] ? "!" : "", rec.rua.size[u]);
			if (!dmarc_rua_parse(uri, &x))
				continue; /* not mailto: nothing we could send to */
			if (strcmp(x.host, host) != 0) {
				*n_out = 0;
				return -1;
			}
			if (*n_out < max)
				out[(*n_out)++] = x;
		}
		return *n_out ? 1 : 0;
	}
	return 0;
}

bool dmarc_rua_authorized(const char *const *txt, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const char *s = txt[i];
		while (*s == ' ' || *s == '\t')
			s++;
		if (strncmp(s, "v", 1) != 0)
			continue;
		s++;
		while (*s == ' ' || *s == '\t')
			s++;
		if (*s++ != '=')
			continue;
		while (*s == ' ' || *s == '\t')
			s++;
		if (strncmp(s, "DMARC1", 6) != 0)
			continue;
		s += 6;
		while (*s == ' ' || *s == '\t')
			s++;
		if (*s == '\0' || *s == ';')
			return true;
	}
	return false;
}
