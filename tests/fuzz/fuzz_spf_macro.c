/*
 * fuzz_spf_macro.c — libFuzzer target for the SPF macro functions
 * (src/policy/spf_macro.c) over arbitrary bytes.
 *
 * The first byte picks the mode (domain-spec or explanation) and the
 * client address family; the rest is the macro string. Besides "no crash,
 * no leak, no sanitizer report", it checks:
 *   - spf_macro_check and spf_macro_expand agree on what is valid, and an
 *     invalid string leaves the output untouched;
 *   - a valid domain-spec is a valid macro-string;
 *   - a domain expansion stays within the buffer's cap (or says
 *     TERN_ELIMIT), an explanation is cut exactly at the cap;
 *   - spf_target_name gives a name of at most 253 octets with labels of
 *     1 to 63 octets, the right-hand end of its input;
 *   - expanding without %{p} never looks at the ptr value.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/buf.h"
#include "core/err.h"
#include "policy/spf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_name(const char *n, size_t len)
{
	if (len == 0 || len > SPF_NAME_MAX || strlen(n) != len)
		abort();
	size_t label = 0;
	for (size_t i = 0; i <= len; i++) {
		if (i == len || n[i] == '.') {
			if (label == 0 || label > 63)
				abort();
			label = 0;
		} else {
			label++;
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t sel = data[0];
	const char *p = (const char *)data + 1;
	size_t n = size - 1;
	enum spf_macro_mode mode = (sel & 1) ? SPF_MACRO_EXPLAIN : SPF_MACRO_DOMAIN;
	size_t cap = (sel & 4) ? 64 : 4096;

	struct spf_ip ip;
	spf_ip_parse((sel & 2) ? "2001:db8::cb01" : "192.0.2.3", &ip);
	static const char sender[] = "st-ro.ng+bad=x_y,z/w@email.example.com";
	struct spf_macro_ctx m;
	memset(&m, 0, sizeof(m));
	m.sender = sender;
	m.sender_len = sizeof(sender) - 1;
	m.local = sender;
	m.local_len = 20;
	m.sender_dom = sender + 21;
	m.sender_dom_len = strlen(sender + 21);
	m.domain = m.sender_dom;
	m.domain_len = m.sender_dom_len;
	m.helo = "[192.0.2.3] ~\"odd\" helo";
	m.helo_len = strlen(m.helo);
	/* as the evaluator does: a value for p only when it is asked for */
	bool uses_p = spf_macro_uses_ptr(p, n);
	m.ptr = uses_p ? "mx.example.org" : NULL;
	m.ptr_len = uses_p ? 14 : 0;
	m.receiver = "receiver.example";
	m.receiver_len = 16;
	m.ip = &ip;
	m.now = 1700000000;

	int chk = spf_macro_check(p, n, mode);
	if (chk != TERN_OK && chk != TERN_ESYNTAX)
		abort();
	if (mode == SPF_MACRO_DOMAIN && spf_domain_spec_check(p, n) == TERN_OK && chk != TERN_OK)
		abort();

	struct tbuf b = TBUF_INIT(cap);
	if (tbuf_append(&b, "X", 1) != TERN_OK)
		abort();
	int rc = spf_macro_expand(p, n, &m, mode, &b);
	if (chk == TERN_ESYNTAX) {
		if (rc != TERN_ESYNTAX || b.len != 1)
			abort();
		tbuf_free(&b);
		return 0;
	}
	if (rc == TERN_ELIMIT) {
		if (mode != SPF_MACRO_DOMAIN)
			abort();
	} else if (rc != TERN_OK) {
		abort();
	}
	if (b.len > cap || b.data[0] != 'X')
		abort();

	if (rc == TERN_OK && mode == SPF_MACRO_DOMAIN) {
		char name[SPF_NAME_MAX + 1];
		size_t nl = 0;
		if (spf_target_name(b.data + 1, b.len - 1, name, &nl)) {
			check_name(name, nl);
			/* the kept part is the right-hand end (less a final dot) */
			size_t in = b.len - 1;
			if (in && b.data[b.len - 1] == '.')
				in--;
			if (nl > in || memcmp(b.data + 1 + in - nl, name, nl) != 0)
				abort();
		}
	}
	tbuf_free(&b);
	return 0;
}
