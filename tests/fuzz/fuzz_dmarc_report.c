/*
 * fuzz_dmarc_report.c — libFuzzer target for received DMARC aggregate
 * reports (src/policy/dmarc_report_parse.c): the XML extraction over
 * expat's callbacks and, for the message form, finding and unpacking the
 * attachment (base64, gzip, the zip reader).
 *
 * The first byte picks the form: even, the rest is the XML; odd, the rest
 * is a whole message whose report is extracted (at most 1 MiB inflated)
 * and parsed. Besides "no crash, no leak, no sanitizer report", it checks:
 *   - a parse that succeeds has a report id and a policy domain, at most
 *     DMARC_FB_ROWS_MAX rows, and every string NUL-terminated in its field;
 *   - a parse that fails leaves no rows behind;
 *   - extraction never returns more than its limit.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "policy/dmarc_report.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TERMINATED(s) (memchr((s), '\0', sizeof(s)) != NULL)

static void check(const struct dmarc_feedback *f, int rc)
{
	if (rc != TERN_OK) {
		if (f->rows || f->n_rows)
			abort();
		return;
	}
	if (!f->report_id[0] || !f->domain[0] || f->n_rows > DMARC_FB_ROWS_MAX)
		abort();
	if (!TERMINATED(f->org_name) || !TERMINATED(f->email) || !TERMINATED(f->report_id) ||
	    !TERMINATED(f->domain))
		abort();
	for (size_t i = 0; i < f->n_rows; i++) {
		const struct dmarc_fb_row *r = &f->rows[i];
		if (!TERMINATED(r->source_ip) || !TERMINATED(r->disposition) ||
		    !TERMINATED(r->dkim) || !TERMINATED(r->spf) || !TERMINATED(r->header_from) ||
		    !TERMINATED(r->envelope_from) || !TERMINATED(r->dkim_auth) ||
		    !TERMINATED(r->spf_auth))
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	const char *in = (const char *)data + 1;
	size_t len = size - 1;
	struct dmarc_feedback f;
	if ((data[0] & 1) == 0) {
		int rc = dmarc_feedback_parse(in, len, &f);
		check(&f, rc);
		dmarc_feedback_free(&f);
		return 0;
	}
	struct tbuf xml;
	size_t max = 1u << 20;
	tbuf_init(&xml, max + 1);
	int rc = dmarc_report_extract(in, len, max, &xml);
	if (rc == TERN_OK) {
		if (xml.len > max)
			abort();
		rc = dmarc_feedback_parse(xml.data, xml.len, &f);
		check(&f, rc);
		dmarc_feedback_free(&f);
	}
	tbuf_free(&xml);
	return 0;
}
