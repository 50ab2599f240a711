/*
 * fuzz_submit.c — libFuzzer target for local submission's pure pieces
 * (src/cli/submit.h), the ones the daemon runs on bytes any local user
 * chose.
 *
 * Beyond "no crash", it checks:
 *   - submit_parse: a request it accepts survives submit_encode and a
 *     second parse unchanged; every shorter prefix of it asks for more
 *     (reading in pieces agrees with reading at once); an input that asks
 *     for more keeps asking for more when cut shorter;
 *   - submit_crlf against a one-line model: each CRLF, bare CR or bare LF
 *     becomes CRLF, and a missing last line end is added;
 *   - submit_rewrite over CRLF text: the result has no bare CR or LF, no
 *     Bcc field in its header section, and rewriting it again changes
 *     nothing;
 *   - submit_addr_list: every address handed out is non-empty and bounded;
 *   - sendmail_dot_end against a direct scan for the lone-dot line;
 *   - sendmail_parse_args on the input split at NUL bytes never crashes.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli/submit.h"
#include "core/err.h"
#include "smtp/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_DATA (1u << 20)

static void check(int cond)
{
	if (!cond)
		abort();
}

static void same_req(const struct submit_req *a, const struct submit_req *b)
{
	check(a->has_from == b->has_from);
	check(!a->has_from || strcmp(a->from, b->from) == 0);
	check((a->name == NULL) == (b->name == NULL));
	check(!a->name || strcmp(a->name, b->name) == 0);
	check(a->extract == b->extract && a->body == b->body && a->ret == b->ret);
	check(a->notify == b->notify);
	check((a->envid == NULL) == (b->envid == NULL));
	check(!a->envid || strcmp(a->envid, b->envid) == 0);
	check(a->n_rcpts == b->n_rcpts);
	for (size_t i = 0; i < a->n_rcpts; i++)
		check(strcmp(a->rcpts[i], b->rcpts[i]) == 0);
	check(a->len == b->len);
	check(a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

static void fuzz_parse(const char *in, size_t size, uint32_t seed)
{
	struct submit_req r;
	size_t used = 0;
	const char *why = NULL;
	enum submit_parse_status st = submit_parse(in, size, MAX_DATA, &r, &used, &why);
	if (st == SUBMIT_PARSE_ERROR || st == SUBMIT_PARSE_TOO_BIG) {
		check(why != NULL && used == 0);
		return;
	}
	if (st == SUBMIT_PARSE_MORE) {
		check(used == 0 || used > size);
		size_t k = size ? seed % size : 0;
		struct submit_req r2;
		check(submit_parse(in, k, MAX_DATA, &r2, &used, &why) == SUBMIT_PARSE_MORE);
		return;
	}
	check(used <= size);
	struct tbuf b;
	tbuf_init(&b, SUBMIT_HEAD_MAX + MAX_DATA + 64);
	check(submit_encode(&r, &b, &why) == TERN_OK);
	struct submit_req r2;
	size_t used2 = 0;
	check(submit_parse(b.data, b.len, MAX_DATA, &r2, &used2, &why) == SUBMIT_PARSE_DONE);
	check(used2 == b.len);
	same_req(&r, &r2);
	submit_req_free(&r2);
	tbuf_free(&b);
	/* Read in pieces: a shorter prefix never completes or fails. */
	for (int i = 0; i < 4 && used > 0; i++) {
		size_t k = (seed >> (i * 7)) % used;
		struct submit_req r3;
		check(submit_parse(in, k, MAX_DATA, &r3, &used2, &why) == SUBMIT_PARSE_MORE);
	}
	submit_req_free(&r);
}

static void fuzz_crlf_rewrite(const char *in, size_t size)
{
	struct tbuf out;
	bool nul, eight;
	tbuf_init(&out, 4 * size + 16);
	check(submit_crlf(in, size, 4 * size + 16, &out, &nul, &eight) == TERN_OK);
	/* The model. */
	struct tbuf ref;
	tbuf_init(&ref, 4 * size + 16);
	for (size_t i = 0; i < size; i++) {
		if (in[i] == '\r' && i + 1 < size && in[i + 1] == '\n') {
			check(tbuf_append(&ref, "\r\n", 2) == TERN_OK);
			i++;
		} else if (in[i] == '\r' || in[i] == '\n') {
			check(tbuf_append(&ref, "\r\n", 2) == TERN_OK);
		} else {
			check(tbuf_append(&ref, in + i, 1) == TERN_OK);
		}
	}
	if (ref.len && ref.data[ref.len - 1] != '\n')
		check(tbuf_append(&ref, "\r\n", 2) == TERN_OK);
	check(ref.len == out.len);
	check(ref.len == 0 || memcmp(ref.data, out.data, ref.len) == 0);
	check(nul == (memchr(in, 0, size) != NULL));

	struct submit_rewrite rw = {.add_from = "From: <u@h>\r\n",
				    .add_date = "Date: d\r\n",
				    .add_message_id = "Message-ID: <m@h>\r\n",
				    .collect = true};
	tbuf_init(&rw.rcpts, out.len + 16);
	struct tbuf r1;
	tbuf_init(&r1, out.len + 256);
	check(submit_rewrite(out.data ? out.data : "", out.len, &rw, &r1) == TERN_OK);
	size_t nuls = 0;
	for (size_t i = 0; i < rw.rcpts.len; i++)
		nuls += rw.rcpts.data[i] == '\0';
	if (!nul)
		check(nuls == rw.n_lists);
	for (size_t i = 0; i < r1.len; i++) {
		if (r1.data[i] == '\n')
			check(i > 0 && r1.data[i - 1] == '\r');
		if (r1.data[i] == '\r')
			check(i + 1 < r1.len && r1.data[i + 1] == '\n');
	}
	struct submit_rewrite rw2 = rw;
	tbuf_init(&rw2.rcpts, r1.len + 16);
	struct tbuf r2;
	tbuf_init(&r2, r1.len + 256);
	check(submit_rewrite(r1.data ? r1.data : "", r1.len, &rw2, &r2) == TERN_OK);
	check(!rw2.had_bcc);
	check(r2.len == r1.len && (r1.len == 0 || memcmp(r1.data, r2.data, r1.len) == 0));
	tbuf_free(&rw.rcpts);
	tbuf_free(&rw2.rcpts);
	tbuf_free(&r1);
	tbuf_free(&r2);
	tbuf_free(&ref);
	tbuf_free(&out);
}

static int addr_ok(void *arg, const char *a, size_t n)
{
	(void)arg;
	check(n > 0 && n <= SMTP_ADDR_MAX + 3);
	check(a[0] != '<' && a[n - 1] != '>');
	return 0;
}

static void fuzz_dot(const char *in, size_t size, bool eof)
{
	bool complete = false;
	size_t got = sendmail_dot_end(in, size, eof, &complete);
	size_t want = size;
	bool wc = false;
	for (size_t ls = 0; ls < size;) {
		const char *lf = memchr(in + ls, '\n', size - ls);
		size_t le = lf ? (size_t)(lf - in) : size;
		bool dot = (le - ls == 1 && in[ls] == '.') ||
			   (le - ls == 2 && in[ls] == '.' && in[ls + 1] == '\r');
		if (dot && (lf || eof)) {
			want = ls;
			wc = true;
			break;
		}
		if (!lf)
			break;
		ls = le + 1;
	}
	check(got == want && complete == wc);
}

static void fuzz_args(const char *in, size_t size)
{
	char *copy = malloc(size + 1);
	char *argv[64];
	int argc = 0;
	check(copy != NULL);
	memcpy(copy, in, size);
	copy[size] = '\0';
	argv[argc++] = "sendmail";
	for (size_t i = 0; i <= size && argc < 63;) {
		argv[argc++] = copy + i;
		i += strlen(copy + i) + 1;
	}
	argv[argc] = NULL;
	struct sendmail_opts o;
	const char *why, *why_arg;
	int rc = sendmail_parse_args(argc, argv, &o, &why, &why_arg);
	check(rc == 0 || (rc == 64 && why != NULL));
	if (rc == 0)
		check(o.n_rcpts <= (size_t)argc);
	free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	uint32_t seed = 2166136261u;
	for (size_t i = 0; i < size; i++)
		seed = (seed ^ data[i]) * 16777619u;
	fuzz_parse(in, size, seed);
	fuzz_crlf_rewrite(in, size);
	(void)submit_addr_list(in, size, addr_ok, NULL);
	fuzz_dot(in, size, seed & 1);
	fuzz_args(in, size < 4096 ? size : 4096);
	return 0;
}
