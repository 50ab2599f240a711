/*
 * fuzz_capture_tags.c — libFuzzer target for the tags a caught message
 * gets (src/store/capture_tags.c): the input is a message (X-Tags fields)
 * and, split at its first NUL, an address (plus-address rule).
 *
 * Besides "no crash, no sanitizer report", it checks: at most
 * CAPTURE_TAGS_PER_MSG tags, each 1..CAPTURE_TAG_MAX bytes of letters,
 * digits, '-', '_', '.' and single inner spaces, no two equal ignoring
 * case; cleaning is idempotent.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "store/capture_tags.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_set(const struct capture_tag_set *s)
{
	if (s->n > CAPTURE_TAGS_PER_MSG)
		abort();
	for (size_t i = 0; i < s->n; i++) {
		size_t n = strlen(s->v[i]);
		if (n == 0 || n > CAPTURE_TAG_MAX || s->v[i][0] == ' ' || s->v[i][n - 1] == ' ' ||
		    strstr(s->v[i], "  "))
			abort();
		for (size_t k = 0; k < n; k++) {
			char c = s->v[i][k];
			if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			      c == '-' || c == '_' || c == '.' || c == ' '))
				abort();
		}
		char again[CAPTURE_TAG_MAX + 1];
		if (capture_tag_clean(s->v[i], n, again) != n || strcmp(again, s->v[i]) != 0)
			abort();
		for (size_t j = 0; j < i; j++)
			if (strcasecmp(s->v[i], s->v[j]) == 0)
				abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data;
	struct capture_tag_set s = {.n = 0};
	capture_tags_xtags(p, size, &s);
	check_set(&s);
	const char *nul = memchr(p, '\0', size);
	char addr[512];
	size_t an = nul ? (size_t)(nul - p) : size;
	if (an >= sizeof(addr))
		an = sizeof(addr) - 1;
	memcpy(addr, p, an);
	addr[an] = '\0';
	const char *to[] = {addr};
	capture_tags_derive(NULL, p, size, to, 1, CAPTURE_TAGS_PLUS | CAPTURE_TAGS_XTAGS, &s);
	check_set(&s);
	unsigned r;
	(void)capture_tags_parse_disable(addr, &r);
	return 0;
}
