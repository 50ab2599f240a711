/*
 * encode.c — a stored message into the text of a RETR or TOP response
 * (RFC 1939 §3): CRLF line ends, dot-stuffing, TOP's line limit, the end
 * marker; and the size count LIST and STAT report for the same bytes.
 *
 * Owns: the byte-level transformation and its state across chunks.
 * Never: does I/O, or lets stored bytes end the response early: every line
 * that starts with "." is stuffed, so the only CRLF "." CRLF on the wire is
 * the one pop3_encode_finish writes.
 */
#include "pop3/pop3.h"

#include <string.h>

#include "core/err.h"

void pop3_encoder_init(struct pop3_encoder *e, bool top, uint32_t lines)
{
	memset(e, 0, sizeof(*e));
	e->top = top;
	e->lines = lines;
	e->at_bol = true;
	e->line_empty = true;
}

/* A line just ended (its CRLF is written): header/body bookkeeping. */
static void end_of_line(struct pop3_encoder *e)
{
	e->ended_eol = true;
	if (!e->in_body) {
		if (e->line_empty) {
			e->in_body = true; /* the empty line between header and body */
			if (e->top && e->lines == 0)
				e->done = true;
		}
	} else if (e->top && --e->lines == 0) {
		e->done = true;
	}
	e->at_bol = true;
	e->line_empty = true;
}

int pop3_encode(struct pop3_encoder *e, const char *in, size_t len, struct tbuf *out)
{
	if (e->done || len == 0)
		return TERN_OK;
	/* Worst case: every byte a "." at the start of a line, or a bare LF. */
	if (len > (SIZE_MAX - 8) / 2)
		return TERN_ELIMIT;
	int rc = tbuf_reserve(out, 2 * len + 4);
	if (rc != TERN_OK)
		return rc;
	char *o = out->data + out->len;
	const char *p = in, *end = in + len;
	while (p < end && !e->done) {
		char b = *p++;
		if (e->pending_cr) {
			e->pending_cr = false;
			if (b == '\n') {
				*o++ = '\r';
				*o++ = '\n';
				end_of_line(e);
				continue;
			}
			/* A CR on its own is content, sent as it is. */
			*o++ = '\r';
			e->at_bol = false;
			e->line_empty = false;
			e->ended_eol = false;
		}
		if (b == '\r') {
			e->pending_cr = true;
			e->wrote_any = true;
			continue;
		}
		e->wrote_any = true;
		if (b == '\n') {
			*o++ = '\r';
			*o++ = '\n';
			end_of_line(e);
			continue;
		}
		if (e->at_bol && b == '.')
			*o++ = '.';
		*o++ = b;
		e->at_bol = false;
		e->line_empty = false;
		e->ended_eol = false;
	}
	out->len = (size_t)(o - out->data);
	out->data[out->len] = '\0';
	return TERN_OK;
}

int pop3_encode_finish(struct pop3_encoder *e, struct tbuf *out)
{
	int rc;
	if (e->pending_cr && !e->done) {
		e->pending_cr = false;
		if ((rc = tbuf_append(out, "\r", 1)) != TERN_OK)
			return rc;
		e->ended_eol = false;
	}
	if (e->wrote_any && !e->ended_eol && (rc = tbuf_append(out, "\r\n", 2)) != TERN_OK)
		return rc;
	return tbuf_append(out, ".\r\n", 3);
}

uint64_t pop3_count_bare_lf(const char *p, size_t n, bool *prev_cr)
{
	uint64_t extra = 0;
	const char *s = p, *end = p + n;
	if (n == 0)
		return 0;
	while (s < end) {
		const char *lf = memchr(s, '\n', (size_t)(end - s));
		if (!lf)
			break;
		bool cr = lf > p ? lf[-1] == '\r' : *prev_cr;
		if (!cr)
			extra++;
		s = lf + 1;
	}
	*prev_cr = end[-1] == '\r';
	return extra;
}
