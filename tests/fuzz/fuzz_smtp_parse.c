/*
 * fuzz_smtp_parse.c — libFuzzer target for smtp_parse_command(),
 * smtp_parse_mailbox() and the xtext codec.
 *
 * The input is parsed whole as one line and, split at LF (CR stripped
 * before LF), line by line, so dialogue-shaped seeds exercise every
 * command. Each line is copied into an exact-size heap block so ASan
 * catches any read past len. Checked beyond "no crash":
 *   - an error carries a 5xx code, an enhanced code and words;
 *   - every string in the result is NUL-terminated inside its array;
 *   - a parsed address round-trips: smtp_parse_mailbox(addr) succeeds and
 *     gives back the same addr, local and domain (addr is canonical);
 *   - xtext: whatever decodes re-encodes and decodes to the same bytes;
 *   - BDAT reports its chunk size (has_chunk_size) exactly when it read one,
 *     refused or not.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
	if (!cond)
		abort();
}

static void terminated(const char *s, size_t cap)
{
	check(memchr(s, '\0', cap) != NULL);
}

static void one_line(const char *src, size_t len)
{
	char *line = malloc(len ? len : 1);
	check(line != NULL);
	if (len)
		memcpy(line, src, len);

	struct smtp_cmd cmd;
	struct smtp_parse_error err;
	enum smtp_parse_status st = smtp_parse_command(line, len, &cmd, &err);
	if (st == SMTP_PARSE_ERROR) {
		check(err.code == 500 || err.code == 501 || err.code == 553 || err.code == 555);
		check(err.enhanced != NULL && err.enhanced[0] == '5');
		check(err.text != NULL && err.text[0] != '\0');
	} else {
		check(st == SMTP_PARSE_OK);
		check(cmd.verb != SMTP_UNKNOWN);
		terminated(cmd.path.addr, sizeof(cmd.path.addr));
		terminated(cmd.path.local, sizeof(cmd.path.local));
		terminated(cmd.path.domain, sizeof(cmd.path.domain));
		terminated(cmd.envid, sizeof(cmd.envid));
		terminated(cmd.orcpt, sizeof(cmd.orcpt));
		terminated(cmd.arg, sizeof(cmd.arg));
		terminated(cmd.auth_param, sizeof(cmd.auth_param));
		/* AUTH's initial response points into the line, within its bound */
		if (cmd.auth_initial) {
			check(cmd.verb == SMTP_AUTH);
			check(cmd.auth_initial >= line && cmd.auth_initial_len > 0 &&
			      cmd.auth_initial_len <= SMTP_AUTH_LINE_MAX &&
			      cmd.auth_initial + cmd.auth_initial_len <= line + len);
		} else {
			check(cmd.auth_initial_len == 0);
		}
		if (cmd.auth_param[0])
			check(cmd.verb == SMTP_MAIL &&
			      (strcmp(cmd.auth_param, "<>") == 0 || strchr(cmd.auth_param, '@')));
		if ((cmd.verb == SMTP_MAIL || cmd.verb == SMTP_RCPT) && !cmd.path.null_path &&
		    cmd.path.has_domain) {
			struct smtp_path again;
			check(smtp_parse_mailbox(cmd.path.addr, strlen(cmd.path.addr), &again));
			check(strcmp(again.addr, cmd.path.addr) == 0);
			check(strcmp(again.local, cmd.path.local) == 0);
			check(strcmp(again.domain, cmd.path.domain) == 0);
			check(again.utf8 == cmd.path.utf8);
		}
		if (cmd.verb == SMTP_MAIL && cmd.path.null_path)
			check(cmd.path.addr[0] == '\0');
		if (cmd.verb == SMTP_RCPT)
			check(!cmd.path.null_path);
		if (cmd.notify & SMTP_NOTIFY_NEVER)
			check(cmd.notify == SMTP_NOTIFY_NEVER);
		if (cmd.verb == SMTP_BDAT)
			check(cmd.has_chunk_size);
	}
	/* A refused BDAT still tells its size when it read one, and only then:
	 * the server skips that many bytes (or closes when there is none). */
	if (cmd.verb != SMTP_BDAT)
		check(!cmd.has_chunk_size);
	else if (!cmd.has_chunk_size)
		check(cmd.chunk_size == 0);

	/* Deterministic: a second parse gives the same verdict. */
	struct smtp_cmd cmd2;
	struct smtp_parse_error err2;
	check(smtp_parse_command(line, len, &cmd2, &err2) == st);
	check(cmd2.verb == cmd.verb);

	struct smtp_path mb;
	if (smtp_parse_mailbox(line, len, &mb)) {
		struct smtp_path again;
		check(smtp_parse_mailbox(mb.addr, strlen(mb.addr), &again));
		check(strcmp(again.addr, mb.addr) == 0);
	}

	char dec[SMTP_XTEXT_MAX + 1], enc[3 * SMTP_XTEXT_MAX + 1], dec2[SMTP_XTEXT_MAX + 1];
	if (smtp_xtext_decode(line, len, dec, sizeof(dec))) {
		size_t dl = strlen(dec);
		check(smtp_xtext_encode(dec, dl, enc, sizeof(enc)));
		check(smtp_xtext_decode(enc, strlen(enc), dec2, sizeof(dec2)));
		check(strcmp(dec, dec2) == 0);
	}
	free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	one_line(in, size);
	size_t start = 0;
	for (size_t i = 0; i < size; i++) {
		if (in[i] != '\n')
			continue;
		size_t end = i;
		if (end > start && in[end - 1] == '\r')
			end--;
		one_line(in + start, end - start);
		start = i + 1;
	}
	if (start > 0 && start < size)
		one_line(in + start, size - start);
	return 0;
}
