/*
 * fuzz_dkim_sig.c — libFuzzer target for the DKIM-Signature tag-list parser
 * and the signature checks (src/policy/dkim_parse.c), and for the verifier
 * that consumes them: the input is a DKIM-Signature value (what any sender
 * can put in a header field).
 *
 * Besides "no crash, no leak, no sanitizer report", it checks:
 *   - every tag's name, value and raw span lie inside the input, in order,
 *     the value inside the raw span, without whitespace at either end; no
 *     two tags share a name;
 *   - a signature that parses names From in h=, has a b= and a bh=, an i=
 *     with an '@', and x= after t= when both are there;
 *   - through the whole verifier (message + this field, a fixed key table),
 *     nothing passes unless the input is a genuine signature of the fixed
 *     message: the fuzzer cannot forge Ed25519, so a pass is a bug.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "policy/dkim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char keys[] = "s._domainkey.example.com v=DKIM1; k=ed25519; "
                           "p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n"
                           "r._domainkey.example.com v=DKIM1; "
                           "p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk"
                           "08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBs"
                           "CR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT"
                           "+l/K4w3QIDAQAB\n"
                           "t._domainkey.example.com TEMPFAIL\n";

static bool is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static void check_tags(const char *s, size_t n)
{
	static struct dkim_taglist l;
	const char *why;
	if (dkim_tags_parse(s, n, &l, &why) != TERN_OK)
		return;
	size_t prev_end = 0;
	for (size_t i = 0; i < l.n; i++) {
		const struct dkim_tag *t = &l.tag[i];
		if (t->name.p < s + prev_end || t->name.n == 0)
			abort();
		if (t->raw_start > t->raw_end || t->raw_end > n)
			abort();
		if (t->value.p < s + t->raw_start || t->value.p + t->value.n > s + t->raw_end)
			abort();
		if (t->value.n && (is_ws(t->value.p[0]) || is_ws(t->value.p[t->value.n - 1])))
			abort();
		for (size_t j = 0; j < i; j++)
			if (strv_eq(l.tag[j].name, t->name))
				abort();
		prev_end = t->raw_end;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct dkim_sig sig;
	static struct dkim_keytab *tab;
	char err[100];
	if (!tab && dkim_keytab_parse(keys, strlen(keys), &tab, err, sizeof(err)) != TERN_OK)
		abort();
	const char *s = (const char *)data;
	check_tags(s, size);

	enum dkim_status st;
	const char *why;
	if (dkim_sig_parse(s, size, &sig, &st, &why) == TERN_OK) {
		bool from = false;
		for (size_t i = 0; i < sig.n_h; i++)
			from = from || strv_ieq(sig.h[i], STRV("from"));
		if (!from || sig.b_len == 0 || !strchr(sig.auid, '@'))
			abort();
		if (sig.has_t && sig.has_x && sig.x <= sig.t)
			abort();
	} else if (st == DKIM_PASS || !why || !*why) {
		abort();
	}

	/* The field on top of a small message, through the verifier. A field
	 * with a bare line end would end the header early: that is the
	 * header index's business, and still must not pass. */
	struct tbuf m = TBUF_INIT(size + 256);
	if (tbuf_append_str(&m, "DKIM-Signature:") != TERN_OK || tbuf_append(&m, s, size) ||
	    tbuf_append_str(&m, "\r\nFrom: a@example.com\r\nSubject: x\r\n\r\nbody\r\n")) {
		tbuf_free(&m);
		return 0;
	}
	struct dkim_verify_opts o;
	dkim_verify_opts_init(&o);
	o.now = 1700000000;
	struct dkim_verify *v = dkim_verify_new(&o);
	if (v && dkim_verify_message(v, m.data, m.len, dkim_keytab_lookup, tab) == TERN_OK) {
		for (size_t i = 0; i < dkim_verify_count(v); i++) {
			const struct dkim_result *r = dkim_verify_result(v, i);
			if (r->status == DKIM_PASS || !r->reason || !r->domain || !r->b)
				abort();
			if (dkim_verify_b_prefix_len(v, i) > strlen(r->b))
				abort();
		}
	}
	dkim_verify_free(v);
	tbuf_free(&m);
	return 0;
}
