/*
 * testdata.h — where unit tests find the vectors in tests/data/ (one folder
 * per set, each with a SOURCE.md: origin, commit, license).
 *
 * Owns: the one rule for that path — $TERN_TESTDATA when set (ctest sets
 * it), else the absolute <repo>/tests/data CMake compiles in.
 * Never: points outside the repository (the project stands alone: a clone
 * with nothing beside it passes its tests).
 */
#ifndef TERN_TESTS_UNIT_TESTDATA_H
#define TERN_TESTS_UNIT_TESTDATA_H

#include <stdio.h>
#include <stdlib.h>

#ifndef TERN_TESTDATA_DIR
#define TERN_TESTDATA_DIR "tests/data" /* built outside CMake: run from the repo root */
#endif

static inline const char *testdata_dir(void)
{
	const char *s = getenv("TERN_TESTDATA");
	return s && *s ? s : TERN_TESTDATA_DIR;
}

/* "<testdata>/rel" into buf; false if it does not fit. */
static inline int testdata_path(char *buf, size_t len, const char *rel)
{
	int n = snprintf(buf, len, "%s/%s", testdata_dir(), rel);
	return n > 0 && (size_t)n < len;
}

#endif
