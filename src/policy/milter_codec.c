/*
 * milter_codec.c — the milter protocol's wire format (see milter.h): packet
 * framing, the command encoders, the reply decoder.
 *
 * Owns: turning arguments into packets and packets into struct milter_reply.
 * Must never: do I/O, allocate while decoding, trust a length or a string
 * from the milter without checking it against the packet's bounds.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

#include "core/err.h"
#include "policy/milter.h"

static uint32_t rd32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void wr32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

enum milter_frame_rc milter_frame_parse(const uint8_t *p, size_t n, size_t max, uint8_t *cmd,
                                        const uint8_t **data, size_t *dlen, size_t *used)
{
	if (n < 4)
		return MILTER_FRAME_MORE;
	uint32_t len = rd32(p);
	if (len == 0 || len > max)
		return MILTER_FRAME_BAD;
	if (n - 4 < len)
		return MILTER_FRAME_MORE;
	*cmd = p[4];
	*data = p + 5;
	*dlen = len - 1;
	*used = 4 + (size_t)len;
	return MILTER_FRAME_OK;
}

/* ---- encoders ------------------------------------------------------------ */

/* A packet is assembled in place: header reserved first, length patched. */
static int pkt_begin(struct tbuf *out, uint8_t cmd, size_t *start)
{
	uint8_t h[5] = {0, 0, 0, 0, cmd};
	*start = out->len;
	return tbuf_append(out, h, sizeof(h));
}

static int pkt_end(struct tbuf *out, size_t start, int rc)
{
	if (rc != TERN_OK) {
		out->len = start;
		if (out->data)
			out->data[start] = '\0';
		return rc;
	}
	size_t len = out->len - start - 4;
	if (len > UINT32_MAX || len - 1 > MILTER_PACKET_MAX) {
		out->len = start;
		out->data[start] = '\0';
		return TERN_EINVAL;
	}
	wr32((uint8_t *)out->data + start, (uint32_t)len);
	return TERN_OK;
}

static int add_str(struct tbuf *out, const char *s)
{
	return tbuf_append(out, s, strlen(s) + 1);
}

int milter_enc_packet(struct tbuf *out, uint8_t cmd, const void *data, size_t len)
{
	size_t st;
	int rc = pkt_begin(out, cmd, &st);
	if (rc != TERN_OK)
		return rc;
	if (len > MILTER_PACKET_MAX)
		return pkt_end(out, st, TERN_EINVAL);
	if (len)
		rc = tbuf_append(out, data, len);
	return pkt_end(out, st, rc);
}

int milter_enc_optneg(struct tbuf *out, uint32_t version, uint32_t actions, uint32_t protocol)
{
	uint8_t d[12];
	wr32(d, version);
	wr32(d + 4, actions);
	wr32(d + 8, protocol);
	return milter_enc_packet(out, MILTER_CMD_OPTNEG, d, sizeof(d));
}

int milter_enc_connect(struct tbuf *out, const char *hostname, const struct sockaddr *sa)
{
	size_t st;
	int rc = pkt_begin(out, MILTER_CMD_CONNECT, &st);
	if (rc != TERN_OK)
		return rc;
	char addr[INET6_ADDRSTRLEN + 1];
	char fam = 'U';
	uint16_t port = 0;
	const char *astr = NULL;
	if (sa && sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
		fam = '4';
		port = s4->sin_port; /* already network order */
		astr = inet_ntop(AF_INET, &s4->sin_addr, addr, sizeof(addr));
	} else if (sa && sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		fam = '6';
		port = s6->sin6_port;
		astr = inet_ntop(AF_INET6, &s6->sin6_addr, addr, sizeof(addr));
	} else if (sa && sa->sa_family == AF_UNIX) {
		fam = 'L';
		astr = ((const struct sockaddr_un *)sa)->sun_path;
	}
	if (fam != 'U' && !astr)
		fam = 'U';
	rc = add_str(out, hostname ? hostname : "unknown");
	if (rc == TERN_OK)
		rc = tbuf_append(out, &fam, 1);
	if (rc == TERN_OK && fam != 'U') {
		rc = tbuf_append(out, &port, 2);
		if (rc == TERN_OK)
			rc = add_str(out, astr);
	}
	return pkt_end(out, st, rc);
}

int milter_enc_helo(struct tbuf *out, const char *helo)
{
	size_t st;
	int rc = pkt_begin(out, MILTER_CMD_HELO, &st);
	if (rc == TERN_OK)
		rc = pkt_end(out, st, add_str(out, helo));
	return rc;
}

int milter_enc_envelope(struct tbuf *out, uint8_t cmd, const char *addr, const char *const *args,
                        size_t nargs)
{
	size_t st;
	int rc = pkt_begin(out, cmd, &st);
	if (rc != TERN_OK)
		return rc;
	rc = tbuf_append(out, "<", 1);
	if (rc == TERN_OK)
		rc = tbuf_append_str(out, addr);
	if (rc == TERN_OK)
		rc = tbuf_append(out, ">", 2); /* with its NUL */
	for (size_t i = 0; rc == TERN_OK && i < nargs; i++)
		rc = add_str(out, args[i]);
	return pkt_end(out, st, rc);
}

int milter_enc_header(struct tbuf *out, const char *name, const char *value)
{
	size_t st;
	int rc = pkt_begin(out, MILTER_CMD_HEADER, &st);
	if (rc != TERN_OK)
		return rc;
	rc = add_str(out, name);
	if (rc == TERN_OK)
		rc = add_str(out, value);
	return pkt_end(out, st, rc);
}

int milter_enc_macros(struct tbuf *out, uint8_t for_cmd, const char *const *names,
                      const char *const *values, size_t n)
{
	size_t st;
	int rc = pkt_begin(out, MILTER_CMD_MACRO, &st);
	if (rc != TERN_OK)
		return rc;
	rc = tbuf_append(out, &for_cmd, 1);
	for (size_t i = 0; rc == TERN_OK && i < n; i++) {
		rc = add_str(out, names[i]);
		if (rc == TERN_OK)
			rc = add_str(out, values[i]);
	}
	return pkt_end(out, st, rc);
}

/* ---- decoder ------------------------------------------------------------- */

/* The NUL-terminated string starting at *pos: its length, *pos moved past
 * the NUL. -1 if no NUL before end. */
static long take_str(const uint8_t *d, size_t len, size_t *pos, const char **s)
{
	if (*pos >= len)
		return -1;
	const uint8_t *nul = memchr(d + *pos, '\0', len - *pos);
	if (!nul)
		return -1;
	*s = (const char *)d + *pos;
	long n = (long)(nul - (d + *pos));
	*pos = (size_t)(nul - d) + 1;
	return n;
}

/* RFC 5322 field name: printable ASCII except ':'. */
static bool valid_name(const char *s, size_t n)
{
	if (n == 0 || n > MILTER_HDR_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 33 || c > 126 || c == ':')
			return false;
	}
	return true;
}

/* A header value: every CR or LF belongs to a line end ("\r\n" or "\n")
 * followed by SP or HT, so a milter cannot start a new header or end the
 * header block. */
static bool valid_value(const char *s, size_t n)
{
	if (n > MILTER_HDR_VALUE_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\r') {
			if (i + 1 >= n || s[i + 1] != '\n')
				return false;
			i++;
		}
		if (s[i] == '\n') {
			if (i + 1 >= n || (s[i + 1] != ' ' && s[i + 1] != '\t'))
				return false;
		}
	}
	return true;
}

static int decode_header(const uint8_t *d, size_t len, bool indexed, struct milter_reply *r)
{
	size_t pos = 0;
	if (indexed) {
		if (len < 4)
			return TERN_ESYNTAX;
		r->index = rd32(d);
		pos = 4;
	}
	const char *name, *value;
	long nl = take_str(d, len, &pos, &name);
	if (nl < 0)
		return TERN_ESYNTAX;
	long vl = take_str(d, len, &pos, &value);
	if (vl < 0 || pos != len)
		return TERN_ESYNTAX;
	if (!valid_name(name, (size_t)nl) || !valid_value(value, (size_t)vl))
		return TERN_ESYNTAX;
	r->name = name;
	r->name_len = (size_t)nl;
	r->value = value;
	r->value_len = (size_t)vl;
	return TERN_OK;
}

/* One string (the whole data, NUL-terminated, nothing after it); args allows
 * a second string (ADDRCPT_PAR, CHGFROM). */
static int decode_one(const uint8_t *d, size_t len, bool args, struct milter_reply *r)
{
	size_t pos = 0;
	const char *s, *a;
	long n = take_str(d, len, &pos, &s);
	if (n < 0)
		return TERN_ESYNTAX;
	if (pos != len && (!args || take_str(d, len, &pos, &a) < 0 || pos != len))
		return TERN_ESYNTAX;
	r->value = s;
	r->value_len = (size_t)n;
	return TERN_OK;
}

static int decode_replycode(const uint8_t *d, size_t len, struct milter_reply *r)
{
	int rc = decode_one(d, len, false, r);
	if (rc != TERN_OK)
		return rc;
	const char *s = r->value;
	size_t n = r->value_len;
	/* "4XX text" / "5XX text" (or "5XX-" for a multi-line reply); libmilter
	 * itself refuses anything but 4xx and 5xx. */
	if (n < 5 || (s[0] != '4' && s[0] != '5') || s[1] < '0' || s[1] > '9' || s[2] < '0' ||
	    s[2] > '9' || (s[3] != ' ' && s[3] != '-'))
		return TERN_ESYNTAX;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 32 && c != '\r' && c != '\n' && c != '\t')
			return TERN_ESYNTAX;
	}
	r->code =
	    (unsigned)(s[0] - '0') * 100 + (unsigned)(s[1] - '0') * 10 + (unsigned)(s[2] - '0');
	return TERN_OK;
}

int milter_reply_decode(uint8_t cmd, const uint8_t *d, size_t len, struct milter_reply *r)
{
	memset(r, 0, sizeof(*r));
	switch (cmd) {
	case MILTER_REP_ACCEPT:
		r->kind = MILTER_R_ACCEPT;
		break;
	case MILTER_REP_CONTINUE:
		r->kind = MILTER_R_CONTINUE;
		break;
	case MILTER_REP_REJECT:
		r->kind = MILTER_R_REJECT;
		break;
	case MILTER_REP_TEMPFAIL:
		r->kind = MILTER_R_TEMPFAIL;
		break;
	case MILTER_REP_DISCARD:
		r->kind = MILTER_R_DISCARD;
		break;
	case MILTER_REP_PROGRESS:
		r->kind = MILTER_R_PROGRESS;
		break;
	case MILTER_REP_SKIP:
		r->kind = MILTER_R_SKIP;
		break;
	case MILTER_REP_SHUTDOWN:
	case MILTER_REP_CONN_FAIL:
		r->kind = MILTER_R_SHUTDOWN;
		break;
	case MILTER_REP_REPLYCODE:
		r->kind = MILTER_R_REPLYCODE;
		return decode_replycode(d, len, r);
	case MILTER_REP_ADDHEADER:
		r->kind = MILTER_R_ADDHEADER;
		return decode_header(d, len, false, r);
	case MILTER_REP_INSHEADER:
		r->kind = MILTER_R_INSHEADER;
		return decode_header(d, len, true, r);
	case MILTER_REP_CHGHEADER:
		r->kind = MILTER_R_CHGHEADER;
		return decode_header(d, len, true, r);
	case MILTER_REP_QUARANTINE:
		r->kind = MILTER_R_QUARANTINE;
		return decode_one(d, len, false, r);
	case MILTER_REP_ADDRCPT:
		r->kind = MILTER_R_ADDRCPT;
		return decode_one(d, len, false, r);
	case MILTER_REP_ADDRCPT_PAR:
		r->kind = MILTER_R_ADDRCPT;
		return decode_one(d, len, true, r);
	case MILTER_REP_DELRCPT:
		r->kind = MILTER_R_DELRCPT;
		return decode_one(d, len, false, r);
	case MILTER_REP_CHGFROM:
		r->kind = MILTER_R_CHGFROM;
		return decode_one(d, len, true, r);
	case MILTER_REP_REPLBODY:
		r->kind = MILTER_R_REPLBODY;
		r->value = (const char *)d;
		r->value_len = len;
		return TERN_OK;
	case MILTER_REP_SETSYMLIST:
		r->kind = MILTER_R_SETSYMLIST;
		return TERN_OK;
	case MILTER_REP_OPTNEG:
		/* version, actions, protocol; libmilter may append SETSYMLIST
		 * lists (stage + names), which tern does not use. */
		if (len < 12)
			return TERN_ESYNTAX;
		r->kind = MILTER_R_OPTNEG;
		r->version = rd32(d);
		r->actions = rd32(d + 4);
		r->protocol = rd32(d + 8);
		return TERN_OK;
	default:
		return TERN_ESYNTAX;
	}
	/* The one-byte verdicts carry no data (a NUL or two from old milters
	 * is tolerated, as libmilter pads some of them). */
	for (size_t i = 0; i < len; i++)
		if (d[i] != 0)
			return TERN_ESYNTAX;
	return TERN_OK;
}

const char *milter_reply_kind_name(enum milter_reply_kind k)
{
	static const char *const names[] = {
	    [MILTER_R_ACCEPT] = "accept",         [MILTER_R_CONTINUE] = "continue",
	    [MILTER_R_REJECT] = "reject",         [MILTER_R_TEMPFAIL] = "tempfail",
	    [MILTER_R_DISCARD] = "discard",       [MILTER_R_REPLYCODE] = "replycode",
	    [MILTER_R_PROGRESS] = "progress",     [MILTER_R_SKIP] = "skip",
	    [MILTER_R_ADDHEADER] = "addheader",   [MILTER_R_INSHEADER] = "insheader",
	    [MILTER_R_CHGHEADER] = "chgheader",   [MILTER_R_QUARANTINE] = "quarantine",
	    [MILTER_R_ADDRCPT] = "addrcpt",       [MILTER_R_DELRCPT] = "delrcpt",
	    [MILTER_R_CHGFROM] = "chgfrom",       [MILTER_R_REPLBODY] = "replbody",
	    [MILTER_R_OPTNEG] = "optneg",         [MILTER_R_SHUTDOWN] = "shutdown",
	    [MILTER_R_SETSYMLIST] = "setsymlist",
	};
	if ((size_t)k >= sizeof(names) / sizeof(names[0]) || !names[k])
		return "?";
	return names[k];
}
