/*
 * test_data_stream.c — the BDAT line-end scan of a spilled message
 * (src/smtp/data_stream.c). What the session depends on: fed in pieces,
 * it finds a bare CR, a bare LF or a NUL exactly when smtp_scan_line_ends
 * over the whole message does (DESIGN §5.4: a BDAT message that is not
 * BINARYMIME follows the DATA rules), wherever the pieces are cut.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "smtp/data_stream.h"
#include "smtp/smtp.h"

static void test_line_scan_agrees_with_the_whole_message_scan_wherever_cut(void **st)
{
	(void)st;
	const char alphabet[] = {'a', '\r', '\n', '\0'};
	unsigned seed = 7;
	for (int iter = 0; iter < 4000; iter++) {
		char m[16];
		size_t n = (size_t)(iter % 16);
		for (size_t i = 0; i < n; i++) {
			seed = seed * 1103515245u + 12345u;
			m[i] = alphabet[(seed >> 16) % 4];
		}
		bool bare = false, nul = false;
		smtp_scan_line_ends(m, n, &bare, &nul);
		for (size_t a = 0; a <= n; a++) {
			for (size_t b = a; b <= n; b++) {
				struct data_line_scan sc = {0};
				data_line_scan_feed(&sc, m, a);
				data_line_scan_feed(&sc, m + a, b - a);
				data_line_scan_feed(&sc, m + b, n - b);
				data_line_scan_end(&sc);
				assert_int_equal(sc.bare_eol, bare);
				assert_int_equal(sc.has_nul, nul);
			}
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_line_scan_agrees_with_the_whole_message_scan_wherever_cut),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
