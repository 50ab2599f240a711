/*
 * fuzz_spf_record.c — libFuzzer target for the SPF record parser
 * (src/policy/spf_record.c) and, through it, the evaluator
 * (src/policy/spf_eval.c) over arbitrary record bytes.
 *
 * Besides "no crash, no leak, no sanitizer report", it checks:
 *   - a record with any byte other than SP and visible ASCII is refused;
 *   - every parsed term lies inside the record, its domain-spec passes the
 *     domain-spec check, and parsing is deterministic;
 *   - evaluating the record against a zone where every name publishes the
 *     same record (so include: and redirect= recurse into it), has
 *     addresses, MX and PTR names, ends within the limits: a result in
 *     range, at most 10 lookups counted past the limit by one, no more
 *     queries than the cap, bounded printable strings, and an explanation
 *     only on fail.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "dns/dns.h"
#include "policy/spf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fake {
	const char *rec;
	size_t len;
	struct strv txt[2];
	struct strv names[3];
	struct in_addr a[2];
	struct in6_addr aaaa[1];
	unsigned queries;
};

/* Answers derived from the name so that every kind of answer occurs. */
static void resolve(void *arg, const struct spf_query *q, struct spf_answer *ans)
{
	struct fake *f = arg;
	size_t n = strlen(q->name);
	unsigned h = 0;

	f->queries++;
	for (size_t i = 0; i < n; i++)
		h = h * 31 + (unsigned char)q->name[i];
	memset(ans, 0, sizeof(*ans));
	switch (h % 7) {
	case 0:
		ans->status = SPF_DNS_NXDOMAIN;
		return;
	case 1:
		ans->status = SPF_DNS_TEMPFAIL;
		return;
	case 2:
		ans->status = SPF_DNS_NODATA;
		return;
	default:
		break;
	}
	ans->status = SPF_DNS_OK;
	switch (q->type) {
	case DNS_TXT:
		f->txt[0] = strv_make(f->rec, f->len);
		f->txt[1] = strv_make("not spf", 7);
		ans->txt = f->txt;
		ans->n = (h % 5 == 3) ? 1 : 2;
		break;
	case DNS_A:
		inet_pton(AF_INET, "192.0.2.1", &f->a[0]);
		inet_pton(AF_INET, "198.51.100.7", &f->a[1]);
		ans->a = f->a;
		ans->n = 2;
		break;
	case DNS_AAAA:
		inet_pton(AF_INET6, "2001:db8::1", &f->aaaa[0]);
		ans->aaaa = f->aaaa;
		ans->n = 1;
		break;
	case DNS_MX:
	case DNS_PTR:
		f->names[0] = strv_make("mx.example.com", 14);
		f->names[1] = strv_make(".", 1);
		f->names[2] = strv_make(q->name, n);
		ans->names = f->names;
		ans->n = 3;
		break;
	default:
		ans->status = SPF_DNS_TEMPFAIL;
	}
}

static void check_string(const char *s, size_t cap)
{
	size_t n = strnlen(s, cap + 1);
	if (n > cap)
		abort();
	for (size_t i = 0; i < n; i++) {
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data;
	struct spf_record r, r2;
	char err[256];

	int rc = spf_record_parse(p, size, &r, err, sizeof(err));
	bool clean = true;
	for (size_t i = 0; i < size; i++) {
		if (data[i] != ' ' && (data[i] < 0x21 || data[i] > 0x7e))
			clean = false;
	}
	if (rc == TERN_OK && !clean)
		abort();
	if (rc != TERN_OK) {
		if (rc != TERN_ESYNTAX && rc != TERN_ENOMEM)
			abort();
		check_string(err, sizeof(err) - 1);
	} else {
		for (size_t i = 0; i < r.n_terms; i++) {
			const struct spf_term *t = &r.terms[i];
			if (t->text < r.text || t->text + t->text_len > r.text + r.len)
				abort();
			if (t->spec &&
			    (t->spec < t->text || t->spec + t->spec_len > t->text + t->text_len ||
			     spf_domain_spec_check(t->spec, t->spec_len) != TERN_OK))
				abort();
			if (t->cidr4 > 32 || t->cidr6 > 128)
				abort();
		}
		if (spf_record_parse(p, size, &r2, err, sizeof(err)) != TERN_OK ||
		    r2.n_terms != r.n_terms || r2.has_all != r.has_all ||
		    (r2.redirect == NULL) != (r.redirect == NULL))
			abort();
		spf_record_free(&r2);
		spf_record_free(&r);
	}

	/* evaluate it, whatever the parser said (a refused record is a
	 * permerror the evaluator must reach cleanly too) */
	struct fake f;
	memset(&f, 0, sizeof(f));
	f.rec = p;
	f.len = size;
	struct spf_request req;
	struct spf_outcome out;
	struct spf_dns dns = {resolve, &f};
	memset(&req, 0, sizeof(req));
	spf_ip_parse(size % 2 ? "2001:db8::1" : "192.0.2.1", &req.ip);
	req.helo = "mail.example.com";
	req.mailfrom = "user-name+tag@example.com";
	req.receiver = "mx.example.net";
	req.now = 1;
	if (spf_check_sync(&req, size % 3 ? SPF_ID_MAILFROM : SPF_ID_HELO, NULL, &dns, &out) !=
	    TERN_OK)
		return 0;
	if (out.result > SPF_PERMERROR || out.lookups > SPF_MAX_LOOKUPS + 1 || out.queries > 128 ||
	    f.queries != out.queries)
		abort();
	check_string(out.mechanism, SPF_MECH_MAX);
	check_string(out.problem, SPF_PROBLEM_MAX);
	check_string(out.explanation, SPF_EXP_MAX);
	check_string(out.domain, sizeof(out.domain) - 1);
	if (out.explanation[0] && out.result != SPF_FAIL)
		abort();
	return 0;
}
