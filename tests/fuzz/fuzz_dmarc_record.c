/*
 * fuzz_dmarc_record.c — libFuzzer target for the DMARC Policy Record parser
 * (dmarc_record_parse in src/policy/dmarc_record.c) over arbitrary bytes, as
 * anyone's DNS could serve them.
 *
 * Besides "no crash, no leak, no sanitizer report", it checks what the
 * evaluation relies on:
 *   - a record that is not DMARC leaves the output untouched;
 *   - every field of an accepted record is within its domain (policies,
 *     psd, fo bits, pct, URIs NUL-terminated, within DMARC_URI_MAX, with no
 *     separator or blank inside);
 *   - parsing is deterministic, and the §4.10.1 fallback is idempotent and
 *     leaves only valid policies.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy/dmarc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_uris(const struct dmarc_uri_list *l)
{
	if (l->n > DMARC_URIS_MAX)
		abort();
	for (size_t i = 0; i < l->n; i++) {
		size_t n = strnlen(l->uri[i], DMARC_URI_MAX + 1);
		if (n == 0 || n > DMARC_URI_MAX || memchr(l->uri[i], ',', n) ||
		    memchr(l->uri[i], '!', n) || memchr(l->uri[i], ' ', n) ||
		    memchr(l->uri[i], ';', n) || strchr(l->uri[i], ':') == NULL)
			abort();
	}
}

static bool policy_ok(enum dmarc_policy p)
{
	return p >= DMARC_POLICY_UNSET && p <= DMARC_POLICY_INVALID;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dmarc_record r, again;
	memset(&r, 0x5a, sizeof(r));
	struct dmarc_record untouched = r;

	if (dmarc_record_parse((const char *)data, size, &r) != DMARC_PARSE_OK) {
		if (memcmp(&r, &untouched, sizeof(r)) != 0)
			abort();
		return 0;
	}
	if (!policy_ok(r.p) || !policy_ok(r.sp) || !policy_ok(r.np))
		abort();
	if (r.psd != 'y' && r.psd != 'n' && r.psd != 'u')
		abort();
	if (r.fo == 0 || (r.fo & ~0xfu) || ((r.fo & DMARC_FO_0) && (r.fo & DMARC_FO_1)))
		abort();
	if (r.pct < -1 || r.pct > 100 || r.ri < -1 || r.ri > 0xffffffffL)
		abort();
	if (r.pct == 0 && !r.t_set && !r.testing)
		abort();
	check_uris(&r.rua);
	check_uris(&r.ruf);
	if (dmarc_record_parse((const char *)data, size, &again) != DMARC_PARSE_OK ||
	    memcmp(&r, &again, sizeof(r)) != 0)
		abort();
	if (dmarc_record_usable(&r)) {
		if (r.p == DMARC_POLICY_INVALID || r.sp == DMARC_POLICY_INVALID ||
		    r.np == DMARC_POLICY_INVALID)
			abort();
		again = r;
		if (!dmarc_record_usable(&again) || memcmp(&r, &again, sizeof(r)) != 0)
			abort();
	} else if (r.rua.n != 0) {
		abort();
	}
	return 0;
}
