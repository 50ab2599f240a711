/*
 * data.c — the DATA byte stream: dot-unstuffing, end-of-data detection,
 * and the few header facts the session needs (Received count, 8-bit, NUL).
 *
 * Owns: the byte-level state machine behind smtp_data_feed(),
 * smtp_scan_headers() and smtp_scan_line_ends(). Pure: no I/O, no allocation of its own (output goes
 * to the caller's capped tbuf).
 * Must never: end the data on anything but CR LF "." CR LF (SMTP smuggling,
 * CVE-2023-51764 family; DESIGN §5.4), treat a bare CR or bare LF as a line
 * end, or give a different result depending on how the input was split
 * into reads. Every state lives in struct smtp_data_parser so a read may end
 * on any byte.
 */
#include "smtp/smtp.h"

#include <string.h>
#include <strings.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/err.h"

/*
 * States. "BOL" means the previous bytes were CR LF (or the data just
 * began: the CR LF that ended the DATA command counts). Bytes whose fate
 * depends on what follows (a CR, a dot at BOL) are held in the state, not
 * emitted, until the next byte decides.
 */
enum {
	S_BOL = 0, /* at the start of a line */
	S_MID,     /* inside a line */
	S_CR,      /* a CR is pending: CR LF ends the line, anything else makes it bare */
	S_DOT,     /* "." at BOL is pending: stuffing dot, or start of the end line */
	S_DOT_CR,  /* "." CR at BOL is pending: LF ends the data */
	S_DONE,    /* end of data was consumed */
};

/* hdr_name_len past the 8 letters of "received": */
#define HDR_WSP 9      /* "received" matched, now in optional WSP before ':' */
#define HDR_NOMATCH 10 /* this line cannot be (or already was) a Received field */

static const char received[] = "received";

/* ----------------------------------------------------------- header scan */

/* One content byte of the (unstuffed) message; CR LF pairs go to hdr_eol. */
static void hdr_byte(struct smtp_data_parser *p, unsigned char c)
{
	if (!p->in_headers)
		return;
	if (p->at_line_start) {
		p->at_line_start = false;
		p->hdr_name_len = 0;
	}
	size_t m = p->hdr_name_len;
	if (m < 8) {
		unsigned char lc = (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
		if (lc == (unsigned char)received[m]) {
			p->hdr_name[m] = (char)c;
			p->hdr_name_len = m + 1;
		} else {
			p->hdr_name_len = HDR_NOMATCH;
		}
	} else if (m == 8 || m == HDR_WSP) {
		if (c == ' ' || c == '\t') {
			p->hdr_name_len = HDR_WSP;
		} else if (c == ':') {
			if (p->received_count < UINT32_MAX)
				p->received_count++;
			p->hdr_name_len = HDR_NOMATCH;
		} else {
			p->hdr_name_len = HDR_NOMATCH;
		}
	}
}

/* A CR LF in the message: an empty line ends the header section. */
static void hdr_eol(struct smtp_data_parser *p)
{
	if (!p->in_headers)
		return;
	if (p->at_line_start)
		p->in_headers = false;
	else
		p->at_line_start = true;
	p->hdr_name_len = 0;
}

/* --------------------------------------------------------------- output */

/* Output is gathered in a small stack buffer so the tbuf sees few appends. */
struct emitter {
	struct smtp_data_parser *p;
	struct tbuf *out;
	size_t n;
	char buf[2048];
};

/* Appends n output bytes to the caller's tbuf, keeping exactly the prefix
 * that fits the cap, so that what is kept does not depend on how the input
 * was split into reads. */
static void store(struct smtp_data_parser *p, struct tbuf *out, const char *b, size_t n)
{
	if (n == 0 || !out || p->too_big)
		return;
	int rc = tbuf_append(out, b, n);
	if (rc != TERN_OK) {
		if (rc == TERN_ELIMIT && out->max > out->len) {
			size_t room = out->max - out->len;
			if (room > n)
				room = n;
			(void)tbuf_append(out, b, room);
		}
		/* Out of memory also ends storing: the message cannot be
		 * kept whole, and the session must still find its end. */
		p->too_big = true;
	}
}

static void flush(struct emitter *e)
{
	store(e->p, e->out, e->buf, e->n);
	e->n = 0;
}

static void put(struct emitter *e, unsigned char c)
{
	struct smtp_data_parser *p = e->p;
	p->total_bytes++;
	if (c >= 0x80)
		p->has_8bit = true;
	else if (c == 0)
		p->has_nul = true;
	if (e->n == sizeof(e->buf))
		flush(e);
	e->buf[e->n++] = (char)c;
}

/* A content byte (not part of a line-ending CR LF). */
static void emit(struct emitter *e, unsigned char c)
{
	hdr_byte(e->p, c);
	put(e, c);
}

static void emit_crlf(struct emitter *e)
{
	put(e, '\r');
	put(e, '\n');
	hdr_eol(e->p);
}

/* ------------------------------------------------------------------ API */

void smtp_data_init(struct smtp_data_parser *p)
{
	memset(p, 0, sizeof(*p));
	p->state = S_BOL;
	p->at_line_start = true;
	p->in_headers = true;
}

/* Byte c inside a line (state S_MID semantics). */
static int mid_byte(struct smtp_data_parser *p, struct emitter *e, unsigned char c)
{
	if (c == '\r')
		return S_CR;
	if (c == '\n')
		p->bare_eol = true; /* bare LF: content, never a line end */
	emit(e, c);
	return S_MID;
}

#if defined(__SSE2__)
/* Sixteen bytes a step (every x86-64 CPU has SSE2); a tail of 16 or more
 * bytes is covered by one last, overlapping load. */
unsigned smtp_scan_bytes(const char *b, size_t n)
{
	unsigned r = 0;
	if (n >= 16) {
		const __m128i cr = _mm_set1_epi8('\r'), zero = _mm_setzero_si128();
		__m128i acc_cr = zero, acc_nul = zero, acc_hi = zero;
		for (size_t k = 0;; k += 16) {
			if (k + 16 > n)
				k = n - 16;
			__m128i v = _mm_loadu_si128((const __m128i *)(const void *)(b + k));
			acc_cr = _mm_or_si128(acc_cr, _mm_cmpeq_epi8(v, cr));
			acc_nul = _mm_or_si128(acc_nul, _mm_cmpeq_epi8(v, zero));
			acc_hi = _mm_or_si128(acc_hi, v);
			if (k + 16 == n)
				break;
		}
		if (_mm_movemask_epi8(acc_cr))
			r |= SMTP_SCAN_CR;
		if (_mm_movemask_epi8(acc_nul))
			r |= SMTP_SCAN_NUL;
		if (_mm_movemask_epi8(acc_hi))
			r |= SMTP_SCAN_8BIT;
		return r;
	}
	for (size_t k = 0; k < n; k++) {
		unsigned char c = (unsigned char)b[k];
		if (c == '\r')
			r |= SMTP_SCAN_CR;
		else if (c == 0)
			r |= SMTP_SCAN_NUL;
		else if (c >= 0x80)
			r |= SMTP_SCAN_8BIT;
	}
	return r;
}
#else
unsigned smtp_scan_bytes(const char *b, size_t n)
{
	const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
	const uint64_t crs = 0x0d * ones;
	uint64_t any = 0, cr = 0, nul = 0;
	size_t k = 0;
	for (; k + 8 <= n; k += 8) {
		uint64_t w, x;
		memcpy(&w, b + k, 8);
		any |= w;
		/* (v - 1...) & ~v has a byte's high bit set only at or above a
		 * zero byte: exact as "has a zero byte" once masked with highs. */
		x = w ^ crs;
		cr |= (x - ones) & ~x;
		nul |= (w - ones) & ~w;
	}
	unsigned r = 0;
	for (; k < n; k++) {
		unsigned char c = (unsigned char)b[k];
		any |= c;
		if (c == '\r')
			r |= SMTP_SCAN_CR;
		else if (c == 0)
			r |= SMTP_SCAN_NUL;
	}
	if (cr & highs)
		r |= SMTP_SCAN_CR;
	if (nul & highs)
		r |= SMTP_SCAN_NUL;
	if (any & highs)
		r |= SMTP_SCAN_8BIT;
	return r;
}
#endif

/*
 * The body's common case in bulk: from in[i] (inside a line, or at the start
 * of one that does not begin with a dot) to the first LF, when that LF is
 * the only one and is preceded by the only CR of the stretch. Such a line
 * is content plus one CR LF whatever the state machine would decide byte
 * by byte, so it is stored in one piece. Returns the bytes taken (0: not
 * such a line, or still in the header section, where every byte counts).
 * *lf_at is where the stretch's LF is (len when there is none), so that a
 * caller that gets 0 knows how far the byte-wise path must go.
 */
static size_t bulk_line(struct emitter *e, const unsigned char *in, size_t len, size_t *lf_at)
{
	struct smtp_data_parser *p = e->p;
	const unsigned char *lf = memchr(in, '\n', len);
	*lf_at = lf ? (size_t)(lf - in) : len;
	if (p->in_headers || !lf || lf == in || lf[-1] != '\r')
		return 0;
	size_t n = (size_t)(lf - in) - 1; /* content bytes before the CR */
	unsigned seen = smtp_scan_bytes((const char *)in, n);
	if (seen & SMTP_SCAN_CR)
		return 0; /* a bare CR: the byte-wise path marks it */
	if (seen & SMTP_SCAN_8BIT)
		p->has_8bit = true;
	if (seen & SMTP_SCAN_NUL)
		p->has_nul = true;
	p->total_bytes += n + 2;
	if (e->n + n + 2 <= sizeof(e->buf)) {
		memcpy(e->buf + e->n, in, n + 2);
		e->n += n + 2;
	} else {
		flush(e);
		store(p, e->out, (const char *)in, n + 2);
	}
	return n + 2;
}

enum smtp_data_status smtp_data_feed(struct smtp_data_parser *p, const char *in, size_t len,
                                     size_t *consumed, struct tbuf *out)
{
	struct emitter e;
	e.p = p;
	e.out = out;
	e.n = 0;
	int st = p->state;
	size_t i = 0;
	enum smtp_data_status ret = SMTP_DATA_MORE;

	if (st == S_DONE) {
		if (consumed)
			*consumed = 0;
		return SMTP_DATA_END;
	}

	size_t bytewise_to = 0; /* the byte-wise path goes on up to here */
	for (; i < len; i++) {
		unsigned char c = (unsigned char)in[i];
		if (i >= bytewise_to && (st == S_MID || (st == S_BOL && c != '.'))) {
			size_t lf_at;
			size_t took = bulk_line(&e, (const unsigned char *)in + i, len - i, &lf_at);
			if (took) {
				i += took - 1; /* the loop's i++ steps past the LF */
				st = S_BOL;
				continue;
			}
			bytewise_to = i + lf_at + 1;
		}
		switch (st) {
		case S_BOL:
			if (c == '.')
				st = S_DOT;
			else
				st = mid_byte(p, &e, c);
			break;
		case S_MID:
			st = mid_byte(p, &e, c);
			break;
		case S_CR:
			if (c == '\n') {
				emit_crlf(&e);
				st = S_BOL;
			} else {
				p->bare_eol = true; /* bare CR: content, never a line end */
				emit(&e, '\r');
				st = mid_byte(p, &e, c);
			}
			break;
		case S_DOT:
			/* The dot at BOL is dropped whatever follows (RFC 5321
			 * §4.5.2); only "." CR LF is the end. */
			if (c == '\r')
				st = S_DOT_CR;
			else
				st = mid_byte(p, &e, c);
			break;
		case S_DOT_CR:
			if (c == '\n') {
				st = S_DONE;
				i++;
				ret = SMTP_DATA_END;
				goto out;
			}
			/* "." CR x: the dot was stuffing, the CR is bare. */
			p->bare_eol = true;
			emit(&e, '\r');
			st = mid_byte(p, &e, c);
			break;
		default:
			break;
		}
	}
out:
	flush(&e);
	p->state = st;
	if (consumed)
		*consumed = i;
	return ret;
}

void smtp_scan_headers(const char *msg, size_t len, uint32_t *received_count, bool *has_8bit)
{
	struct smtp_data_parser p;
	bool eight = false;
	smtp_data_init(&p);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)msg[i];
		if (c >= 0x80)
			eight = true;
		if (!p.in_headers) {
			if (eight)
				break;
			continue;
		}
		if (c == '\r' && i + 1 < len && msg[i + 1] == '\n') {
			hdr_eol(&p);
			i++;
		} else {
			hdr_byte(&p, c);
		}
	}
	if (received_count)
		*received_count = p.received_count;
	if (has_8bit)
		*has_8bit = eight;
}

void smtp_scan_line_ends(const char *msg, size_t len, bool *bare_eol, bool *has_nul)
{
	bool bare = false, nul = false;
	for (size_t i = 0; i < len && !(bare && nul); i++) {
		unsigned char c = (unsigned char)msg[i];
		if (c == '\0') {
			nul = true;
		} else if (c == '\r') {
			if (i + 1 >= len || msg[i + 1] != '\n')
				bare = true; /* a CR at the very end has no LF either */
			else
				i++;         /* CR LF: a real line end */
		} else if (c == '\n') {
			bare = true; /* an LF not consumed after a CR above is bare */
		}
	}
	if (bare_eol)
		*bare_eol = bare;
	if (has_nul)
		*has_nul = nul;
}

/* ---- header lookup --------------------------------------------------------- */

bool smtp_header_find(const char *msg, size_t len, const char *name, const char **val, size_t *vlen)
{
	size_t nlen = strlen(name), i = 0;
	while (i < len) {
		/* i is at the start of a line of the header section */
		const char *line = msg + i;
		const char *crlf = NULL;
		for (size_t k = i; k + 1 < len; k++)
			if (msg[k] == '\r' && msg[k + 1] == '\n') {
				crlf = msg + k;
				break;
			}
		if (crlf == line)
			return false; /* the empty line: the body begins */
		size_t llen = crlf ? (size_t)(crlf - line) : len - i;
		if (llen > nlen && line[nlen] == ':' && strncasecmp(line, name, nlen) == 0) {
			/* the field runs on over folded lines (CRLF then WSP) */
			const char *v = line + nlen + 1, *end = crlf ? crlf : msg + len;
			while (crlf && (size_t)(crlf - msg) + 2 < len &&
			       (crlf[2] == ' ' || crlf[2] == '\t')) {
				const char *next = NULL;
				for (const char *k = crlf + 2; k + 1 < msg + len; k++)
					if (k[0] == '\r' && k[1] == '\n') {
						next = k;
						break;
					}
				end = next ? next : msg + len;
				crlf = next;
			}
			while (v < end && (*v == ' ' || *v == '\t' || *v == '\r' || *v == '\n'))
				v++;
			while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
				end--;
			*val = v;
			*vlen = (size_t)(end - v);
			return true;
		}
		if (!crlf)
			return false;
		i = (size_t)(crlf - msg) + 2;
	}
	return false;
}

bool smtp_message_id(const char *msg, size_t len, const char **id, size_t *idlen)
{
	const char *v;
	size_t n;
	if (!smtp_header_find(msg, len, "Message-ID", &v, &n) || n == 0)
		return false;
	const char *lt = memchr(v, '<', n);
	const char *gt = lt ? memchr(lt, '>', n - (size_t)(lt - v)) : NULL;
	if (lt && gt) { /* msg-id = "<" id-left "@" id-right ">" (RFC 5322 §3.6.4) */
		*id = lt;
		*idlen = (size_t)(gt - lt) + 1;
	} else {
		*id = v;
		*idlen = n;
	}
	return true;
}
