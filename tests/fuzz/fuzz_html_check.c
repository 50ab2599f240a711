/*
 * fuzz_html_check.c — libFuzzer target for capture mode's HTML check and
 * link extraction (src/store/html_check.c): any bytes as a message's HTML
 * body (and its text body). Beyond "no crash, no leak", it checks what the
 * API and the UI rely on:
 *   - html_check always answers (memory permitting) with Warnings, Platforms
 *     and Total; Total's shares are within 0..100 and add up to 100;
 *   - every warning has a Slug and a Score whose Found is at least 1;
 *   - checks_links returns only http(s) URLs, each once, at most max.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "store/checks.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "invariant failed: %s (line %d)\n", #cond, __LINE__);      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data;
	json_t *r = html_check(p, size);
	if (r) {
		json_t *t = json_object_get(r, "Total");
		CHECK(json_is_object(t));
		CHECK(json_is_object(json_object_get(r, "Platforms")));
		double s = json_real_value(json_object_get(t, "Supported"));
		double pa = json_real_value(json_object_get(t, "Partial"));
		double u = json_real_value(json_object_get(t, "Unsupported"));
		CHECK(pa >= 0 && u >= 0 && s <= 100.0001);
		CHECK(s + pa + u > 99.999 && s + pa + u < 100.001);
		size_t i;
		json_t *w;
		json_array_foreach(json_object_get(r, "Warnings"), i, w)
		{
			CHECK(json_string_value(json_object_get(w, "Slug")));
			CHECK(json_integer_value(
			          json_object_get(json_object_get(w, "Score"), "Found")) >= 1);
		}
		json_decref(r);
	}
	json_t *links = json_array();
	if (!links)
		return 0;
	checks_links(p, size, p, size, 16, links);
	CHECK(json_array_size(links) <= 16);
	for (size_t i = 0; i < json_array_size(links); i++) {
		const char *u = json_string_value(json_array_get(links, i));
		CHECK(u &&
		      (strncasecmp(u, "http://", 7) == 0 || strncasecmp(u, "https://", 8) == 0));
		for (size_t j = 0; j < i; j++)
			CHECK(strcmp(u, json_string_value(json_array_get(links, j))) != 0);
	}
	json_decref(links);
	return 0;
}
