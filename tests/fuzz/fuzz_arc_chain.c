/*
 * fuzz_arc_chain.c — libFuzzer target for ARC chain validation and sealing
 * (src/policy/arc_verify.c, arc_seal.c): the input is a whole message
 * (header block with any ARC fields a sender cares to write, and a body).
 * Keys come from a fixed table: the ValiMail suite's RSA key (so seeds
 * taken from that suite carry genuine chains) and an Ed25519 key made at
 * start-up, which seals.
 *
 * Besides "no crash, no leak, no sanitizer report", it checks:
 *   - the result is none, pass or fail; none only without ARC fields; pass
 *     with 1..50 sets and oldest-pass below the set count;
 *   - arc_instance never returns more than 50;
 *   - sealing what validated: a none or pass chain sealed with its cv
 *     validates pass with one set more; a fail chain sealed validates fail;
 *     a chain whose newest seal says cv=fail gets nothing added;
 *   - arc_trusted_pass (arc_trust.c) reads any header block, answering
 *     only with an instance that exists and a sealer it was told to trust;
 *   - the two-step validator (arc_verify_headers, the body fed in pieces
 *     of any size, arc_verify_body_end) judges exactly as the one-shot one,
 *     and its seal hash is the whole body's relaxed bh=.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "policy/arc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char valimail[] =
    "dummy._domainkey.example.org v=DKIM1; k=rsa; "
    "p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQi"
    "Y/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZy"
    "VYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB\n"
    "temp._domainkey.example.org TEMPFAIL\n";

static struct dkim_key *key;
static struct dkim_keytab *tab;

static void init(void)
{
	char *rec = NULL, err[128];
	if (key)
		return;
	if (dkim_key_generate(DKIM_ALG_ED25519_SHA256, 0, &key) != TERN_OK ||
	    dkim_key_record(key, &rec) != TERN_OK)
		abort();
	size_t n = sizeof(valimail) + strlen(rec) + 64;
	char *text = malloc(n);
	if (!text)
		abort();
	int k = snprintf(text, n, "%sfz._domainkey.fuzz.test %s\n", valimail, rec);
	if (dkim_keytab_parse(text, (size_t)k, &tab, err, sizeof(err)) != TERN_OK)
		abort();
	free(text);
	free(rec);
}

/* Validates msg; false when the input was refused (too big). */
static bool validate(const char *msg, size_t len, struct arc_result *out)
{
	struct arc_verify *v = arc_verify_new();
	if (!v)
		abort();
	int rc = arc_verify_message(v, msg, len, arc_keytab_lookup, tab);
	if (rc != TERN_OK) {
		if (rc != TERN_ELIMIT && rc != TERN_ENOMEM)
			abort();
		arc_verify_free(v);
		return false;
	}
	const struct arc_result *r = arc_verify_result(v);
	if (!r)
		abort();
	*out = *r;
	arc_verify_free(v);
	if (out->cv != ARC_CV_NONE && out->cv != ARC_CV_PASS && out->cv != ARC_CV_FAIL)
		abort();
	if (out->cv == ARC_CV_PASS &&
	    (out->n_sets < 1 || out->n_sets > ARC_MAX_SETS || out->oldest_pass >= out->n_sets + 1))
		abort();
	return true;
}

/* The same message through arc_verify_headers and the body in pieces of
 * `piece` bytes: the same result as validate's, the seal's bh= the whole
 * body's. */
static void two_steps(const char *msg, size_t len, size_t piece, const struct arc_result *want)
{
	size_t hl = 0, bo = 0;
	unsigned qid;
	const char *name;
	char bh[45], whole[45];
	dkim_split_message(msg, len, &hl, &bo);
	struct arc_verify *v = arc_verify_new();
	if (!v || arc_verify_headers(v, msg, hl) != TERN_OK || arc_verify_seal_body(v) != TERN_OK)
		abort();
	while ((name = arc_verify_next_query(v, &qid)) != NULL)
		arc_keytab_lookup(tab, v, qid, name);
	arc_verify_expire(v);
	struct dkim_body *b = arc_verify_body(v);
	if (!b)
		abort(); /* the seal's stream at least */
	for (size_t at = bo; at < len; at += piece)
		dkim_body_update(b, msg + at, len - at < piece ? len - at : piece);
	arc_verify_body_end(v);
	if (arc_verify_state(v) == ARC_VS_READY && arc_verify_finish(v) != TERN_OK)
		abort();
	const struct arc_result *r = arc_verify_result(v);
	if (!r || r->cv != want->cv || r->n_sets != want->n_sets ||
	    r->oldest_pass != want->oldest_pass || r->temporary != want->temporary ||
	    strcmp(r->reason, want->reason) != 0)
		abort();
	if (arc_verify_seal_bh(v, bh) != TERN_OK ||
	    dkim_body_hash_b64(DKIM_CANON_RELAXED, msg + bo, len - bo, whole) != TERN_OK ||
	    strcmp(bh, whole) != 0)
		abort();
	arc_verify_free(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	init();
	if (size > 256 * 1024)
		return 0;
	const char *msg = (const char *)data;
	if (arc_instance(msg, size, true) > ARC_MAX_SETS ||
	    arc_instance(msg, size, false) > ARC_MAX_SETS)
		abort();
	static const char *const trusted[] = {"example.org", "fuzz.test", "lists.example.net"};
	struct arc_trust_query tq = {trusted, 3, "example.org", (unsigned)(size % 3)};
	struct arc_trust tr;
	if (arc_trusted_pass(msg, size, &tq, &tr) &&
	    (tr.instance < 1 || tr.instance > ARC_MAX_SETS || !tr.what ||
	     (strcmp(tr.sealer, "example.org") != 0 && strcmp(tr.sealer, "fuzz.test") != 0 &&
	      strcmp(tr.sealer, "lists.example.net") != 0)))
		abort();
	struct arc_result r;
	if (!validate(msg, size, &r))
		return 0;
	if (r.cv == ARC_CV_NONE && memmem(msg, size, "ARC-", 4) == NULL && r.n_sets != 0)
		abort();
	two_steps(msg, size, 1 + size % 13, &r);

	struct arc_seal_params p = {.domain = "fuzz.test",
	                            .selector = "fz",
	                            .timestamp = 1700000000,
	                            .authres = "mx.fuzz.test; arc=none"};
	char *out = NULL;
	size_t ol = 0;
	int rc = arc_seal(key, &p, r.cv, msg, size, &out, &ol);
	if (rc != TERN_OK) {
		/* a message too big, or a body without a From: only limits */
		if (rc != TERN_ELIMIT && rc != TERN_ENOMEM && rc != TERN_EINVAL)
			abort();
		return 0;
	}
	if (!out) {
		/* nothing added: only for a dead, full or misnamed chain */
		if (r.cv == ARC_CV_PASS && r.n_sets < ARC_MAX_SETS)
			abort();
		return 0;
	}
	char *sealed = malloc(ol + size);
	if (!sealed)
		abort();
	memcpy(sealed, out, ol);
	memcpy(sealed + ol, msg, size);
	struct arc_result after;
	if (validate(sealed, ol + size, &after)) {
		if (r.cv == ARC_CV_FAIL && after.cv != ARC_CV_FAIL)
			abort(); /* a failed chain never passes again */
		/* a chain that passed (or none) stays pass with one more set,
		 * unless the message has a stray CR/LF shape our fields sit on */
		if (r.cv == ARC_CV_PASS && after.cv == ARC_CV_PASS && after.n_sets != r.n_sets + 1)
			abort();
	}
	free(sealed);
	free(out);
	return 0;
}
