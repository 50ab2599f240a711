/*
 * spool_record.c — the spool's record format (see spool_internal.h for the
 * layout): CRC32C, encoders, and pure decoders over (pointer, length).
 * Also owns the struct spool_msg helpers declared in queue.h.
 *
 * Must never do I/O, never read outside the bytes it was given, never trust
 * a length or count before checking it against the bytes that remain, and
 * never abort on any input: records come from disk, and a disk can hold
 * anything after a crash or a bit flip.
 */
#include "queue/spool_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"

#define STR_NULL 0xffffffffu
/* Smallest encoded recipient: 3 empty strings + fixed fields. Used to bound
 * n_rcpts by the bytes left before allocating. */
#define RCPT_MIN_BYTES (4u + 4u + 4u + 1u + 1u + 4u + 8u + 4u)

/* ---- CRC32C, slicing-by-8 ------------------------------------------------ */

static uint32_t crc_tab[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1; /* reflected Castagnoli */
		crc_tab[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_tab[t][i] =
			    (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xff];
}

uint32_t spool_crc32c(uint32_t crc, const void *p, size_t n)
{
	const uint8_t *b = p;
	pthread_once(&crc_once, crc_init);
	crc = ~crc;
	/* Eight bytes per step: the tables fold each byte's contribution through
	 * the remaining shifts, so one lookup per byte and no per-bit loop. */
	while (n >= 8) {
		uint32_t lo = crc ^ ((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
		                     (uint32_t)b[3] << 24);
		crc = crc_tab[7][lo & 0xff] ^ crc_tab[6][(lo >> 8) & 0xff] ^
		      crc_tab[5][(lo >> 16) & 0xff] ^ crc_tab[4][lo >> 24] ^ crc_tab[3][b[4]] ^
		      crc_tab[2][b[5]] ^ crc_tab[1][b[6]] ^ crc_tab[0][b[7]];
		b += 8;
		n -= 8;
	}
	while (n--)
		crc = (crc >> 8) ^ crc_tab[0][(crc ^ *b++) & 0xff];
	return ~crc;
}

/* ---- little-endian helpers ------------------------------------------------ */

static void le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p)
{
	return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

/* ---- spool_msg helpers (queue.h) ------------------------------------------ */

const char *rcpt_state_name(enum rcpt_state s)
{
	switch (s) {
	case RCPT_QUEUED:
		return "queued";
	case RCPT_DEFERRED:
		return "deferred";
	case RCPT_DELIVERED:
		return "delivered";
	case RCPT_BOUNCED:
		return "bounced";
	case RCPT_HELD:
		return "held";
	}
	return "unknown";
}

bool spool_rcpt_state_valid(unsigned st)
{
	return st <= RCPT_HELD;
}

bool spool_rcpt_state_final(enum rcpt_state st)
{
	return st == RCPT_DELIVERED || st == RCPT_BOUNCED;
}

void spool_msg_free(struct spool_msg *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->n_rcpts; i++) {
		free(m->rcpts[i].addr);
		free(m->rcpts[i].orcpt);
		free(m->rcpts[i].last_reply);
	}
	free(m->rcpts);
	free(m->sender);
	free(m->envid);
	free(m->client);
	free(m);
}

/* Duplicates s (NULL stays NULL); false only when an allocation failed. */
static bool dup_opt(char **dst, const char *s)
{
	*dst = NULL;
	if (!s)
		return true;
	*dst = tern_strdup(s);
	return *dst != NULL;
}

struct spool_msg *spool_msg_dup(const struct spool_msg *m)
{
	if (!m)
		return NULL;
	struct spool_msg *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	memcpy(c->id, m->id, sizeof(c->id));
	c->id[QUEUE_ID_LEN] = '\0';
	c->created = m->created;
	c->body = m->body;
	c->ret = m->ret;
	c->smtputf8 = m->smtputf8;
	c->trusted_client = m->trusted_client;
	c->size = m->size;
	if (!dup_opt(&c->sender, m->sender) || !dup_opt(&c->envid, m->envid) ||
	    !dup_opt(&c->client, m->client))
		goto fail;
	if (m->n_rcpts) {
		c->rcpts = calloc(m->n_rcpts, sizeof(*c->rcpts));
		if (!c->rcpts)
			goto fail;
		c->n_rcpts = m->n_rcpts;
		for (size_t i = 0; i < m->n_rcpts; i++) {
			const struct spool_rcpt *r = &m->rcpts[i];
			struct spool_rcpt *d = &c->rcpts[i];
			*d = *r;
			d->addr = d->orcpt = d->last_reply = NULL;
			if (!dup_opt(&d->addr, r->addr) || !dup_opt(&d->orcpt, r->orcpt) ||
			    !dup_opt(&d->last_reply, r->last_reply))
				goto fail;
		}
	}
	return c;
fail:
	spool_msg_free(c);
	return NULL;
}

/* ---- encoder ---------------------------------------------------------------- */

struct enc {
	struct tbuf *b;
	int err;
};

static void put_bytes(struct enc *e, const void *p, size_t n)
{
	if (e->err == TERN_OK)
		e->err = tbuf_append(e->b, p, n);
}

static void put_u8(struct enc *e, uint8_t v)
{
	put_bytes(e, &v, 1);
}

static void put_u32(struct enc *e, uint32_t v)
{
	uint8_t b[4];
	le32(b, v);
	put_bytes(e, b, 4);
}

static void put_u64(struct enc *e, uint64_t v)
{
	uint8_t b[8];
	le32(b, (uint32_t)v);
	le32(b + 4, (uint32_t)(v >> 32));
	put_bytes(e, b, 8);
}

static void put_str(struct enc *e, const char *s)
{
	if (!s) {
		put_u32(e, STR_NULL);
		return;
	}
	size_t n = strlen(s);
	if (n >= STR_NULL) {
		e->err = TERN_ELIMIT;
		return;
	}
	put_u32(e, (uint32_t)n);
	put_bytes(e, s, n);
}

/* Starts a record: reserves the header, returns its offset in the buffer. */
static size_t rec_begin(struct enc *e)
{
	size_t at = e->b->len;
	uint8_t zero[SPOOL_REC_HDR] = {0};
	put_bytes(e, zero, sizeof(zero));
	return at;
}

/* Fills in the header of the record that starts at `at` and ends at the
 * end of the buffer; on any earlier error, rolls the buffer back. */
static int rec_end(struct enc *e, size_t at, unsigned type)
{
	if (e->err == TERN_OK) {
		size_t plen = e->b->len - at - SPOOL_REC_HDR;
		if (plen > SPOOL_REC_MAX_PAYLOAD) {
			e->err = TERN_ELIMIT;
		} else {
			uint8_t *h = (uint8_t *)e->b->data + at;
			le32(h, SPOOL_REC_MAGIC);
			h[4] = (uint8_t)SPOOL_REC_VERSION;
			h[5] = (uint8_t)type;
			h[6] = h[7] = 0;
			le32(h + 8, (uint32_t)plen);
			le32(h + 12, spool_rec_crc(h, h + SPOOL_REC_HDR, plen));
		}
	}
	if (e->err != TERN_OK && e->b->len > at) {
		e->b->len = at;
		e->b->data[at] = '\0';
	}
	return e->err;
}

static bool id_ok(const char *id)
{
	return id && queue_id_valid(id, strnlen(id, QUEUE_ID_LEN + 1));
}

int spool_rec_encode_msg(struct tbuf *out, const struct spool_msg *env, const void *data,
                         size_t len, size_t *data_off)
{
	if (!env || !id_ok(env->id) || !env->sender || (len && !data) ||
	    env->n_rcpts > UINT32_MAX || (env->n_rcpts && !env->rcpts))
		return TERN_EINVAL;
	if (len > SPOOL_REC_MAX_PAYLOAD)
		return TERN_ELIMIT;
	for (size_t i = 0; i < env->n_rcpts; i++)
		if (!env->rcpts[i].addr || !spool_rcpt_state_valid(env->rcpts[i].state))
			return TERN_EINVAL;
	struct enc e = {out, TERN_OK};
	size_t at = rec_begin(&e);
	put_bytes(&e, env->id, QUEUE_ID_LEN);
	put_u64(&e, (uint64_t)env->created);
	put_u32(&e, env->body);
	put_u32(&e, env->ret);
	put_u8(&e, (env->smtputf8 ? 1 : 0) | (env->trusted_client ? 2 : 0));
	put_str(&e, env->sender);
	put_str(&e, env->envid);
	put_str(&e, env->client);
	put_u32(&e, (uint32_t)env->n_rcpts);
	for (size_t i = 0; i < env->n_rcpts; i++) {
		const struct spool_rcpt *r = &env->rcpts[i];
		put_str(&e, r->addr);
		put_str(&e, r->orcpt);
		put_u32(&e, r->notify);
		put_u8(&e, r->local ? 1 : 0);
		put_u8(&e, (uint8_t)r->state);
		put_u32(&e, r->attempts);
		put_u64(&e, (uint64_t)r->next_try);
		put_str(&e, r->last_reply);
	}
	put_u64(&e, (uint64_t)len);
	size_t doff = out->len - at;
	put_bytes(&e, data, len);
	int rc = rec_end(&e, at, SPOOL_REC_MSG);
	if (rc == TERN_OK && data_off)
		*data_off = doff;
	return rc;
}

int spool_rec_encode_rcpt(struct tbuf *out, const char *id, uint32_t idx,
                          const struct spool_rcpt *r, bool with_reply)
{
	if (!id_ok(id) || !r || !spool_rcpt_state_valid(r->state))
		return TERN_EINVAL;
	struct enc e = {out, TERN_OK};
	size_t at = rec_begin(&e);
	put_bytes(&e, id, QUEUE_ID_LEN);
	put_u32(&e, idx);
	put_u8(&e, (uint8_t)r->state);
	put_u32(&e, r->attempts);
	put_u64(&e, (uint64_t)r->next_try);
	put_str(&e, with_reply ? r->last_reply : NULL);
	return rec_end(&e, at, SPOOL_REC_RCPT);
}

int spool_rec_encode_del(struct tbuf *out, const char *id)
{
	if (!id_ok(id))
		return TERN_EINVAL;
	struct enc e = {out, TERN_OK};
	size_t at = rec_begin(&e);
	put_bytes(&e, id, QUEUE_ID_LEN);
	return rec_end(&e, at, SPOOL_REC_DEL);
}

/* ---- header and framing ------------------------------------------------------ */

uint32_t spool_rec_crc(const uint8_t *hdr, const uint8_t *payload, size_t n)
{
	return spool_crc32c(spool_crc32c(0, hdr, 12), payload, n);
}

int spool_rec_header(const uint8_t *p, struct spool_rec_hdr *h)
{
	if (rd32(p) != SPOOL_REC_MAGIC || p[4] != SPOOL_REC_VERSION || p[6] || p[7])
		return TERN_ECORRUPT;
	unsigned type = p[5];
	if (type != SPOOL_REC_MSG && type != SPOOL_REC_RCPT && type != SPOOL_REC_DEL)
		return TERN_ECORRUPT;
	uint32_t len = rd32(p + 8);
	if (len > SPOOL_REC_MAX_PAYLOAD)
		return TERN_ECORRUPT;
	h->type = type;
	h->len = len;
	h->crc = rd32(p + 12);
	return TERN_OK;
}

int spool_rec_next(const uint8_t *p, size_t n, struct spool_rec_hdr *h, size_t *reclen)
{
	if (n < SPOOL_REC_HDR) {
		/* Judge what is there: a torn header is SHORT only if its bytes
		 * so far could still be a header. */
		uint8_t tmp[SPOOL_REC_HDR] = {0};
		memcpy(tmp, p, n);
		static const uint8_t magic[4] = {'T', 'S', 'P', 'L'};
		for (size_t i = 0; i < n && i < 4; i++)
			if (tmp[i] != magic[i])
				return TERN_ECORRUPT;
		return SPOOL_REC_SHORT;
	}
	if (spool_rec_header(p, h) != TERN_OK)
		return TERN_ECORRUPT;
	if (n - SPOOL_REC_HDR < h->len)
		return SPOOL_REC_SHORT;
	if (spool_rec_crc(p, p + SPOOL_REC_HDR, h->len) != h->crc)
		return TERN_ECORRUPT;
	*reclen = SPOOL_REC_HDR + (size_t)h->len;
	return TERN_OK;
}

/* ---- decoder ------------------------------------------------------------------ */

struct dec {
	const uint8_t *p;
	size_t n;
	size_t pos;
	bool bad;
};

static const uint8_t *take(struct dec *d, size_t k)
{
	if (d->bad || d->n - d->pos < k) {
		d->bad = true;
		return NULL;
	}
	const uint8_t *r = d->p + d->pos;
	d->pos += k;
	return r;
}

static uint8_t get_u8(struct dec *d)
{
	const uint8_t *b = take(d, 1);
	return b ? b[0] : 0;
}

static uint32_t get_u32(struct dec *d)
{
	const uint8_t *b = take(d, 4);
	return b ? rd32(b) : 0;
}

static uint64_t get_u64(struct dec *d)
{
	const uint8_t *b = take(d, 8);
	return b ? rd64(b) : 0;
}

/* Reads an optional string into *out (owned). Returns false on malformed
 * input (d->bad set) or allocation failure (*nomem set). */
static bool get_str(struct dec *d, char **out, bool required, bool *nomem)
{
	*out = NULL;
	uint32_t len = get_u32(d);
	if (d->bad)
		return false;
	if (len == STR_NULL) {
		if (required)
			d->bad = true;
		return !required;
	}
	const uint8_t *b = take(d, len);
	if (!b)
		return false;
	if (len && memchr(b, '\0', len)) {
		d->bad = true; /* the encoder never writes NUL inside a string */
		return false;
	}
	*out = tern_strndup((const char *)b, len);
	if (!*out) {
		*nomem = true;
		return false;
	}
	return true;
}

static bool get_id(struct dec *d, char id[QUEUE_ID_LEN + 1])
{
	const uint8_t *b = take(d, QUEUE_ID_LEN);
	if (!b || !queue_id_valid((const char *)b, QUEUE_ID_LEN)) {
		d->bad = true;
		return false;
	}
	memcpy(id, b, QUEUE_ID_LEN);
	id[QUEUE_ID_LEN] = '\0';
	return true;
}

int spool_rec_decode_msg(const uint8_t *p, size_t n, struct spool_msg **out, size_t *data_off)
{
	struct dec d = {p, n, 0, false};
	bool nomem = false;
	*out = NULL;
	struct spool_msg *m = calloc(1, sizeof(*m));
	if (!m)
		return TERN_ENOMEM;
	if (!get_id(&d, m->id))
		goto out;
	m->created = (int64_t)get_u64(&d);
	m->body = get_u32(&d);
	m->ret = get_u32(&d);
	uint8_t flags = get_u8(&d);
	if (flags & ~3u)
		d.bad = true;
	m->smtputf8 = flags & 1;
	m->trusted_client = (flags & 2) != 0;
	if (!get_str(&d, &m->sender, true, &nomem) || !get_str(&d, &m->envid, false, &nomem) ||
	    !get_str(&d, &m->client, false, &nomem))
		goto out;
	uint32_t nr = get_u32(&d);
	if (d.bad || nr == 0 || nr > (d.n - d.pos) / RCPT_MIN_BYTES) {
		d.bad = true;
		goto out;
	}
	m->rcpts = calloc(nr, sizeof(*m->rcpts));
	if (!m->rcpts) {
		nomem = true;
		goto out;
	}
	for (uint32_t i = 0; i < nr; i++) {
		struct spool_rcpt *r = &m->rcpts[i];
		m->n_rcpts = i + 1; /* so spool_msg_free sees what was filled */
		if (!get_str(&d, &r->addr, true, &nomem) || !get_str(&d, &r->orcpt, false, &nomem))
			goto out;
		r->notify = get_u32(&d);
		uint8_t local = get_u8(&d);
		uint8_t st = get_u8(&d);
		if (local > 1 || !spool_rcpt_state_valid(st))
			d.bad = true;
		r->local = local;
		r->state = (enum rcpt_state)st;
		r->attempts = get_u32(&d);
		r->next_try = (int64_t)get_u64(&d);
		if (!get_str(&d, &r->last_reply, false, &nomem))
			goto out;
	}
	uint64_t dlen = get_u64(&d);
	if (d.bad || dlen != d.n - d.pos) {
		d.bad = true;
		goto out;
	}
	m->size = dlen;
	*data_off = d.pos;
	*out = m;
	return TERN_OK;
out:
	spool_msg_free(m);
	return nomem && !d.bad ? TERN_ENOMEM : TERN_ECORRUPT;
}

int spool_rec_decode_rcpt(const uint8_t *p, size_t n, struct spool_rec_rcpt *out)
{
	struct dec d = {p, n, 0, false};
	bool nomem = false;
	memset(out, 0, sizeof(*out));
	if (!get_id(&d, out->id))
		return TERN_ECORRUPT;
	out->idx = get_u32(&d);
	uint8_t st = get_u8(&d);
	out->attempts = get_u32(&d);
	out->next_try = (int64_t)get_u64(&d);
	if (!spool_rcpt_state_valid(st))
		d.bad = true;
	out->state = (enum rcpt_state)st;
	if (!get_str(&d, &out->reply, false, &nomem) || d.pos != d.n) {
		free(out->reply);
		out->reply = NULL;
		return nomem && !d.bad ? TERN_ENOMEM : TERN_ECORRUPT;
	}
	return TERN_OK;
}

int spool_rec_decode_del(const uint8_t *p, size_t n, char id[QUEUE_ID_LEN + 1])
{
	struct dec d = {p, n, 0, false};
	if (!get_id(&d, id) || d.pos != d.n)
		return TERN_ECORRUPT;
	return TERN_OK;
}
