/*
 * fuzz_policy_zone.c — libFuzzer target for the DNSBL zone notation
 * (policy_zone_parse in src/policy/zone.c) over arbitrary bytes, as an
 * operator's config could hold them.
 *
 * Besides "no crash, no leak, no sanitizer report", it checks what the
 * config printer and the engine rely on:
 *   - an accepted spec has a lowercase host-name zone that fits, a weight
 *     within bounds, and a non-empty set per filter octet;
 *   - its canonical form (policy_zone_format) parses back to the same
 *     entry, so `tern check-config` output is itself a valid config;
 *   - a refused spec leaves the output untouched and says why;
 *   - the query names built from the zone fit a DNS name.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/err.h"
#include "policy/policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct policy_zone z, again;
	char err[160];
	memset(&z, 0x5a, sizeof(z));
	struct policy_zone untouched = z;
	int rc = policy_zone_parse((const char *)data, size, &z, err, sizeof(err));
	if (rc != TERN_OK) {
		if (rc != TERN_ESYNTAX || err[0] == '\0' || memcmp(&z, &untouched, sizeof(z)) != 0)
			abort();
		return 0;
	}
	size_t n = strlen(z.zone);
	if (n == 0 || n > POLICY_ZONE_NAME_MAX || z.weight > POLICY_WEIGHT_MAX ||
	    z.weight < -POLICY_WEIGHT_MAX)
		abort();
	for (size_t i = 0; i < n; i++) {
		char c = z.zone[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
		      c == '.'))
			abort();
	}
	for (int o = 0; z.filtered && o < 4; o++) {
		int any = 0;
		for (int b = 0; b < 32; b++)
			any |= z.octet[o][b];
		if (!any)
			abort();
	}
	char out[POLICY_ZONE_NAME_MAX + 4 * 1100];
	if (!policy_zone_format(&z, out, sizeof(out)))
		abort();
	memset(&again, 0, sizeof(again));
	if (policy_zone_parse(out, strlen(out), &again, err, sizeof(err)) != TERN_OK ||
	    memcmp(&z, &again, sizeof(z)) != 0)
		abort();
	char name[DNS_NAME_MAX + 1];
	uint8_t v6[16], v4[4] = {255, 255, 255, 255};
	memset(v6, 0xff, sizeof(v6));
	if (!policy_dnsbl_name(AF_INET, v4, z.zone, name, sizeof(name)) ||
	    !policy_dnsbl_name(AF_INET6, v6, z.zone, name, sizeof(name)) || strlen(name) > 253)
		abort();
	return 0;
}
