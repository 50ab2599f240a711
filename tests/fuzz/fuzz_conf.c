/*
 * fuzz_conf.c — libFuzzer target for the config loader (core/ucl.c and
 * core/conf.c) over arbitrary text, without includes (conf_load_string never
 * touches the file system).
 *
 * Besides "no crash, no leak, no sanitizer report", it checks the property
 * `tern check-config` relies on: whatever loads prints to text that loads
 * again and prints identically.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/conf.h"

static char *print_to_string(const struct tern_config *c, size_t *len)
{
	char *buf = NULL;
	FILE *f = open_memstream(&buf, len);
	if (!f)
		abort();
	conf_print(c, f);
	fclose(f);
	return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[512];
	struct tern_config *c =
	    conf_load_string((const char *)data, size, "fuzz", err, sizeof(err));
	if (!c) {
		/* every failure explains itself as NAME:LINE: ... */
		if (strncmp(err, "fuzz:", 5) != 0)
			abort();
		return 0;
	}
	size_t l1, l2;
	char *p1 = print_to_string(c, &l1);
	struct tern_config *c2 = conf_load_string(p1, l1, "printed", err, sizeof(err));
	if (!c2) {
		fprintf(stderr, "printed config does not load: %s\n%s", err, p1);
		abort();
	}
	char *p2 = print_to_string(c2, &l2);
	if (l1 != l2 || memcmp(p1, p2, l1) != 0) {
		fprintf(stderr, "print is not stable:\n%s\n---\n%s", p1, p2);
		abort();
	}
	/* the lookups must cope with whatever was configured */
	for (size_t i = 0; i < c->n_aliases; i++)
		if (conf_find_alias(c, c->aliases[i].from) != &c->aliases[i])
			abort();
	for (size_t i = 0; i < c->n_local_domains; i++)
		if (!conf_is_local_domain(c, c->local_domains[i], strlen(c->local_domains[i])))
			abort();
	free(p1);
	free(p2);
	conf_unref(c2);
	conf_unref(c);
	return 0;
}
