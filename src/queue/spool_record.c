/*
 * spool_record.c — the spool's record format (see spool_internal.h for the
 * layout): CRC32C, encoders, pure decoders over (pointer, length), and the
 * segment scanner that recovery uses to find every valid record and every
 * damaged range. Also owns the struct spool_msg helpers declared in queue.h.
 *
 * Must never do I/O except through the scanner's read callback, never read
 * outside the bytes it was given, never trust a length or count before
 * checking it against the bytes that remain (and, for a length in a record
 * header, before the header's checksum), and never abort on any input:
 * records come from disk, and a disk can hold anything after a crash or a
 * bit flip.
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
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CRC_HW 1
static bool crc_hw; /* the CPU has SSE 4.2 (set once, in crc_init) */
#endif

static void crc_init(void)
{
#ifdef CRC_HW
	__builtin_cpu_init();
	crc_hw = __builtin_cpu_supports("sse4.2");
#endif
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

#ifdef CRC_HW
/* SSE 4.2's CRC32 instruction computes this very CRC (Castagnoli), eight
 * bytes per instruction: about a tenth of slicing-by-8's work, and every
 * message's bytes pass through here once on the session's worker. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const uint8_t *b,
                                                            size_t n)
{
	uint64_t c = crc;
	for (; n >= 8; n -= 8, b += 8) {
		uint64_t w;
		memcpy(&w, b, 8);
		c = __builtin_ia32_crc32di(c, w);
	}
	uint32_t c32 = (uint32_t)c;
	for (; n; n--, b++)
		c32 = __builtin_ia32_crc32qi(c32, *b);
	return c32;
}
#endif

uint32_t spool_crc32c(uint32_t crc, const void *p, size_t n)
{
	const uint8_t *b = p;
	pthread_once(&crc_once, crc_init);
	crc = ~crc;
#ifdef CRC_HW
	if (crc_hw)
		return ~crc32c_hw(crc, b, n);
#endif
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

static void le64(uint8_t *p, uint64_t v)
{
	le32(p, (uint32_t)v);
	le32(p + 4, (uint32_t)(v >> 32));
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
	case RCPT_SUPPRESSED:
		return "suppressed";
	}
	return "unknown";
}

const char *spool_damage_kind_name(enum spool_damage_kind k)
{
	switch (k) {
	case SPOOL_DAMAGE_HEADER:
		return "header";
	case SPOOL_DAMAGE_CHECKSUM:
		return "checksum";
	case SPOOL_DAMAGE_MALFORMED:
		return "malformed";
	case SPOOL_DAMAGE_TORN:
		return "torn";
	case SPOOL_DAMAGE_READ_ERROR:
		return "read-error";
	case SPOOL_DAMAGE_NONE:
		return "none";
	}
	return "unknown";
}

bool spool_rcpt_state_valid(unsigned st)
{
	return st <= RCPT_SUPPRESSED;
}

bool spool_rcpt_state_final(enum rcpt_state st)
{
	return st == RCPT_DELIVERED || st == RCPT_BOUNCED || st == RCPT_SUPPRESSED;
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
	free(m->auth);
	free(m->api_key);
	free(m->spill);
	free(m);
}

bool spool_spill_name_ok(const char *p, size_t n)
{
	if (n == 0 || n > SPOOL_SPILL_NAME_MAX || p[0] == '.')
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = p[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '-' || c == '_'))
			return false;
	}
	return true;
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

const char *spool_folder_name(enum spool_folder f)
{
	return f == SPOOL_FOLDER_JUNK ? "Junk" : NULL;
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
	c->folder = m->folder;
	c->size = m->size;
	c->spill_size = m->spill_size;
	c->spill_off = m->spill_off;
	c->spill_crc = m->spill_crc;
	c->not_before = m->not_before;
	if (!dup_opt(&c->sender, m->sender) || !dup_opt(&c->envid, m->envid) ||
	    !dup_opt(&c->client, m->client) || !dup_opt(&c->auth, m->auth) ||
	    !dup_opt(&c->api_key, m->api_key) || !dup_opt(&c->spill, m->spill))
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
			h[4] = (uint8_t)SPOOL_REC_V2;
			h[5] = (uint8_t)type;
			h[6] = h[7] = 0;
			le32(h + 8, (uint32_t)plen);
			le32(h + 12, spool_crc32c(0, h + SPOOL_REC_HDR, plen));
			spool_rec_stamp(h, 0);
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
	if (env->spill && (!spool_spill_name_ok(env->spill, strlen(env->spill)) ||
	                   env->spill_off > env->spill_size))
		return TERN_EINVAL;
	for (size_t i = 0; i < env->n_rcpts; i++)
		if (!env->rcpts[i].addr || !spool_rcpt_state_valid(env->rcpts[i].state))
			return TERN_EINVAL;
	struct enc e = {out, TERN_OK};
	size_t at = rec_begin(&e);
	put_bytes(&e, env->id, QUEUE_ID_LEN);
	put_u64(&e, (uint64_t)env->created);
	put_u32(&e, env->body);
	put_u32(&e, env->ret);
	/* A new flag bit keeps the record readable by this code whatever wrote
	 * it (an older tern wrote the bit 0, which is the old meaning); only a
	 * tern older than the bit refuses a record that sets it. */
	put_u8(&e, (env->smtputf8 ? 1 : 0) | (env->trusted_client ? 2 : 0) |
	               (env->folder == SPOOL_FOLDER_JUNK ? 4 : 0) | (env->auth ? 8 : 0) |
	               (env->api_key ? 16 : 0) | (env->not_before ? 32 : 0) |
	               (env->spill ? SPILL_FLAG : 0));
	put_str(&e, env->sender);
	put_str(&e, env->envid);
	put_str(&e, env->client);
	if (env->auth) /* optional: only with flag bit 3, so older records read as they were */
		put_str(&e, env->auth);
	if (env->api_key) /* the same with flag bit 4 */
		put_str(&e, env->api_key);
	if (env->not_before) /* flag bit 5: absent in older records, read as 0 (at once) */
		put_u64(&e, (uint64_t)env->not_before);
	if (env->spill) { /* SPILL: flag bit 6, the typed reference to the tail */
		put_str(&e, env->spill);
		put_u64(&e, env->spill_size);
		put_u64(&e, env->spill_off);
		put_u32(&e, env->spill_crc);
	}
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

void spool_rec_stamp(uint8_t *rec, uint64_t nonce)
{
	le64(rec + 16, nonce);
	le32(rec + 24, spool_crc32c(0, rec, 24));
}

static bool type_known(unsigned t)
{
	return t == SPOOL_REC_MSG || t == SPOOL_REC_RCPT || t == SPOOL_REC_DEL;
}

/* True when the n (< header size) bytes at p could begin a valid header of
 * format f: every field present so far has a value a header can hold. */
static bool header_prefix_ok(const uint8_t *p, size_t n, const struct spool_seg_fmt *f)
{
	static const uint8_t magic[4] = {'T', 'S', 'P', 'L'};
	for (size_t i = 0; i < n && i < 4; i++)
		if (p[i] != magic[i])
			return false;
	if (n > 4 && p[4] != f->version)
		return false;
	if (n > 5 && !type_known(p[5]))
		return false;
	if ((n > 6 && p[6]) || (n > 7 && p[7]))
		return false;
	if (f->version == SPOOL_REC_V2) {
		uint8_t want[8];
		le64(want, f->nonce);
		for (size_t i = 16; i < n && i < 24; i++)
			if (p[i] != want[i - 16])
				return false;
	}
	return true;
}

int spool_rec_header(const uint8_t *p, size_t n, const struct spool_seg_fmt *f,
                     struct spool_rec_hdr *h)
{
	size_t need = f->version == SPOOL_REC_V2 ? SPOOL_REC_HDR : SPOOL_REC_HDR_V1;
	if (f->version != SPOOL_REC_V1 && f->version != SPOOL_REC_V2)
		return TERN_ECORRUPT;
	if (n < need)
		return header_prefix_ok(p, n, f) ? SPOOL_REC_SHORT : TERN_ECORRUPT;
	if (rd32(p) != SPOOL_REC_MAGIC || p[4] != f->version || !type_known(p[5]) || p[6] || p[7])
		return TERN_ECORRUPT;
	uint32_t len = rd32(p + 8);
	if (len > SPOOL_REC_MAX_PAYLOAD)
		return TERN_ECORRUPT;
	h->version = f->version;
	h->type = p[5];
	h->hdr_len = (uint32_t)need;
	h->len = len;
	h->crc = rd32(p + 12);
	h->nonce = 0;
	if (f->version == SPOOL_REC_V2) {
		if (rd32(p + 24) != spool_crc32c(0, p, 24) || rd64(p + 16) != f->nonce)
			return TERN_ECORRUPT;
		h->nonce = f->nonce;
	}
	return TERN_OK;
}

uint32_t spool_rec_crc_seed(const struct spool_rec_hdr *h, const uint8_t *hdr)
{
	return h->version == SPOOL_REC_V1 ? spool_crc32c(0, hdr, 12) : 0;
}

int spool_rec_next(const uint8_t *p, size_t n, const struct spool_seg_fmt *f,
                   struct spool_rec_hdr *h, size_t *reclen)
{
	int rc = spool_rec_header(p, n, f, h);
	if (rc != TERN_OK)
		return rc;
	if (n - h->hdr_len < h->len)
		return SPOOL_REC_SHORT;
	if (spool_crc32c(spool_rec_crc_seed(h, p), p + h->hdr_len, h->len) != h->crc)
		return TERN_ECORRUPT;
	*reclen = (size_t)h->hdr_len + h->len;
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
	if (flags & ~(63u | SPILL_FLAG))
		d.bad = true;
	m->smtputf8 = flags & 1;
	m->trusted_client = (flags & 2) != 0;
	m->folder = (flags & 4) ? SPOOL_FOLDER_JUNK : SPOOL_FOLDER_INBOX;
	if (!get_str(&d, &m->sender, true, &nomem) || !get_str(&d, &m->envid, false, &nomem) ||
	    !get_str(&d, &m->client, false, &nomem))
		goto out;
	if ((flags & 8) && (!get_str(&d, &m->auth, true, &nomem) || !m->auth))
		goto out; /* the bit promises a string: NULL would not re-encode the same */
	if ((flags & 16) && (!get_str(&d, &m->api_key, true, &nomem) || !m->api_key))
		goto out;
	if (flags & 32) {
		m->not_before = (int64_t)get_u64(&d);
		if (m->not_before == 0) /* the bit promises a time: 0 would re-encode without it */
			d.bad = true;
	}
	if (flags & SPILL_FLAG) {
		if (!get_str(&d, &m->spill, true, &nomem) || !m->spill ||
		    !spool_spill_name_ok(m->spill, strlen(m->spill))) {
			d.bad = true;
			goto out;
		}
		m->spill_size = get_u64(&d);
		m->spill_off = get_u64(&d);
		m->spill_crc = get_u32(&d);
		if (m->spill_off > m->spill_size)
			d.bad = true;
	}
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
	if (m->spill_size - m->spill_off > UINT64_MAX - dlen) {
		d.bad = true;
		goto out;
	}
	m->size = dlen + (m->spill_size - m->spill_off);
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

/* ---- scanner ------------------------------------------------------------------ */

/* Bytes read at a time while looking for the next record after damage. */
#define SCAN_WINDOW (256u * 1024u)

struct scan {
	const struct spool_scan_ops *ops;
	const struct spool_seg_fmt *f;
	uint64_t size;
	size_t hdr_len;
	struct tbuf *pay;
	uint8_t *win; /* SCAN_WINDOW bytes, allocated on first need */
	struct spool_scan_result *res;
	uint64_t zero_off; /* where the all-zero tail starts; UINT64_MAX until known */
};

enum probe {
	P_OK,           /* a whole record, checksums hold; payload in pay */
	P_BAD_HEADER,   /* no valid header here */
	P_BAD_PAYLOAD,  /* header valid, payload checksum wrong; payload in pay */
	P_PAST_END,     /* header valid, but the record runs past the end */
	P_SHORT_HEADER, /* fewer bytes than a header left, and they could begin one */
	P_READ_ERROR,
};

/* Reads the payload of the record at off (header h) into pay and checks
 * its checksum. TERN_OK with *ok set, TERN_EIO, or TERN_ENOMEM. */
static int read_payload(struct scan *sc, uint64_t off, const uint8_t *hb,
                        const struct spool_rec_hdr *h, bool *ok)
{
	tbuf_reset(sc->pay);
	int rc = tbuf_reserve(sc->pay, h->len);
	if (rc != TERN_OK)
		return rc == TERN_ELIMIT ? TERN_ENOMEM : rc;
	if (h->len &&
	    sc->ops->read(sc->ops->arg, off + h->hdr_len, sc->pay->data, h->len) != TERN_OK)
		return TERN_EIO;
	sc->pay->len = h->len;
	sc->pay->data[h->len] = '\0';
	*ok = spool_crc32c(spool_rec_crc_seed(h, hb), sc->pay->data, h->len) == h->crc;
	return TERN_OK;
}

/* Classifies the record at off. hb receives its header bytes. Returns
 * TERN_OK or TERN_ENOMEM. */
static int probe(struct scan *sc, uint64_t off, uint8_t *hb, struct spool_rec_hdr *h,
                 enum probe *out)
{
	uint64_t left = sc->size - off;
	size_t n = left < sc->hdr_len ? (size_t)left : sc->hdr_len;
	if (sc->ops->read(sc->ops->arg, off, hb, n) != TERN_OK) {
		*out = P_READ_ERROR;
		return TERN_OK;
	}
	int rc = spool_rec_header(hb, n, sc->f, h);
	if (rc == SPOOL_REC_SHORT) {
		*out = P_SHORT_HEADER;
		return TERN_OK;
	}
	if (rc != TERN_OK) {
		*out = P_BAD_HEADER;
		return TERN_OK;
	}
	if (h->len > left - h->hdr_len) {
		*out = P_PAST_END;
		return TERN_OK;
	}
	bool ok = false;
	rc = read_payload(sc, off, hb, h, &ok);
	if (rc == TERN_EIO) {
		*out = P_READ_ERROR;
		return TERN_OK;
	}
	if (rc != TERN_OK)
		return rc;
	*out = ok ? P_OK : P_BAD_PAYLOAD;
	return TERN_OK;
}

/* Fills d->id when the n bytes at p begin with a queue id. */
static void guess_id(struct spool_scan_damage *d, const uint8_t *p, size_t n)
{
	if (n >= QUEUE_ID_LEN && queue_id_valid((const char *)p, QUEUE_ID_LEN)) {
		memcpy(d->id, p, QUEUE_ID_LEN);
		d->id[QUEUE_ID_LEN] = '\0';
	}
}

static int report(struct scan *sc, uint64_t off, uint64_t len, enum spool_damage_kind kind,
                  unsigned type, const uint8_t *payload, size_t n)
{
	struct spool_scan_damage d = {.off = off, .len = len, .kind = kind};
	d.rec_type = type_known(type) ? type : 0;
	if (payload)
		guess_id(&d, payload, n);
	sc->res->n_damaged++;
	return sc->ops->damage(sc->ops->arg, &d);
}

/*
 * Looks for the first offset >= from where a record starts: for version 2,
 * a header whose checksum holds and that carries the segment's nonce (its
 * length is then trustworthy, whatever its payload holds); for version 1,
 * which has no header checksum, a whole record whose checksum holds.
 * *at = size when there is none. Returns TERN_OK, TERN_EIO (a read failed)
 * or TERN_ENOMEM.
 */
static int find_next(struct scan *sc, uint64_t from, uint64_t *at)
{
	static const uint8_t magic[4] = {'T', 'S', 'P', 'L'};
	*at = sc->size;
	if (!sc->win && !(sc->win = malloc(SCAN_WINDOW)))
		return TERN_ENOMEM;
	uint64_t pos = from;
	while (pos < sc->size && sc->size - pos >= sc->hdr_len) {
		size_t chunk =
		    sc->size - pos < SCAN_WINDOW ? (size_t)(sc->size - pos) : SCAN_WINDOW;
		if (sc->ops->read(sc->ops->arg, pos, sc->win, chunk) != TERN_OK)
			return TERN_EIO;
		for (size_t i = 0; i + sizeof(magic) <= chunk;) {
			const uint8_t *m = memmem(sc->win + i, chunk - i, magic, sizeof(magic));
			if (!m)
				break;
			size_t k = (size_t)(m - sc->win);
			uint64_t cand = pos + k;
			i = k + 1;
			if (sc->size - cand < sc->hdr_len)
				return TERN_OK; /* no room for a header here or later */
			uint8_t hb[SPOOL_REC_HDR];
			if (k + sc->hdr_len <= chunk)
				memcpy(hb, sc->win + k, sc->hdr_len);
			else if (sc->ops->read(sc->ops->arg, cand, hb, sc->hdr_len) != TERN_OK)
				return TERN_EIO;
			struct spool_rec_hdr h;
			if (spool_rec_header(hb, sc->hdr_len, sc->f, &h) != TERN_OK)
				continue;
			if (sc->f->version == SPOOL_REC_V2) {
				*at = cand;
				return TERN_OK;
			}
			if (h.len > sc->size - cand - h.hdr_len)
				continue;
			bool ok = false;
			int rc = read_payload(sc, cand, hb, &h, &ok);
			if (rc != TERN_OK)
				return rc;
			if (ok) {
				*at = cand;
				return TERN_OK;
			}
		}
		if (chunk < SCAN_WINDOW)
			break;
		pos += chunk -
		       (sizeof(magic) - 1); /* a magic split across windows is seen next time */
	}
	return TERN_OK;
}

/* True when the n bytes at p are all zero. */
static bool all_zero(const uint8_t *p, size_t n)
{
	size_t i = 0;
	for (; i + 64 <= n; i += 64) {
		uint64_t w[8], acc = 0;
		memcpy(w, p + i, sizeof(w));
		for (int k = 0; k < 8; k++)
			acc |= w[k];
		if (acc)
			return false;
	}
	for (; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/*
 * Where the all-zero tail of the segment starts (size when its last byte is
 * not zero): found once, reading backwards a window at a time, and only
 * when the scan of a prepared segment (written full of zeros before its
 * first record, spool.c) meets something that is not a record. In a
 * segment written by appending, zeros are never a clean end: they may be
 * a lost write of acknowledged records, and are reported as before.
 * TERN_OK or TERN_EIO / TERN_ENOMEM.
 */
static int zero_tail(struct scan *sc, uint64_t *out)
{
	if (sc->zero_off != UINT64_MAX) {
		*out = sc->zero_off;
		return TERN_OK;
	}
	if (!sc->win && !(sc->win = malloc(SCAN_WINDOW)))
		return TERN_ENOMEM;
	uint64_t end = sc->size;
	while (end > 0) {
		size_t chunk = end < SCAN_WINDOW ? (size_t)end : SCAN_WINDOW;
		uint64_t at = end - chunk;
		if (sc->ops->read(sc->ops->arg, at, sc->win, chunk) != TERN_OK)
			return TERN_EIO;
		if (all_zero(sc->win, chunk)) {
			end = at;
			continue;
		}
		size_t k = chunk;
		while (k > 0 && sc->win[k - 1] == 0)
			k--;
		end = at + k;
		break;
	}
	sc->zero_off = end;
	*out = end;
	return TERN_OK;
}

/* The torn tail of a prepared segment starts at off: says what its bytes
 * seem to hold (a hint for when it is reported, in an older segment). */
static void torn_hint(struct scan *sc, uint64_t off, const uint8_t *hb)
{
	struct spool_scan_damage d = {.off = off};
	uint8_t idb[QUEUE_ID_LEN];
	sc->res->torn_type = type_known(hb[5]) ? hb[5] : 0;
	if (sc->size - off >= sc->hdr_len + QUEUE_ID_LEN &&
	    sc->ops->read(sc->ops->arg, off + sc->hdr_len, idb, sizeof(idb)) == TERN_OK)
		guess_id(&d, idb, sizeof(idb));
	memcpy(sc->res->torn_id, d.id, sizeof(d.id));
	sc->res->torn_off = off;
}

static int scan_loop(struct scan *sc)
{
	const struct spool_seg_fmt *f = sc->f;
	uint64_t off = 0;
	while (off < sc->size) {
		uint8_t hb[SPOOL_REC_HDR];
		struct spool_rec_hdr h;
		enum probe p;
		int rc = probe(sc, off, hb, &h, &p);
		if (rc != TERN_OK)
			return rc;
		uint64_t reclen = (uint64_t)h.hdr_len + h.len; /* meaningful for OK/BAD_PAYLOAD */
		const uint8_t *pl = (const uint8_t *)sc->pay->data;
		uint64_t z = sc->size;
		if (f->recycled && p != P_OK && p != P_READ_ERROR) {
			/* RECYCLE: is any record of this segment left after off? */
			uint64_t nx;
			rc = find_next(sc, off + 1, &nx);
			if (rc == TERN_EIO)
				return report(sc, off, sc->size - off, SPOOL_DAMAGE_READ_ERROR, 0,
				              NULL, 0);
			if (rc != TERN_OK)
				return rc;
			if (nx == sc->size) {
				if (p == P_BAD_HEADER) {
					/* the file's past (or zeros): a clean end */
					sc->res->torn_off = sc->res->zero_off = off;
					return TERN_OK;
				}
				/* a header of ours, its record cut short: torn */
				if (p != P_SHORT_HEADER)
					torn_hint(sc, off, hb);
				sc->res->torn_off = off;
				sc->res->zero_off = sc->size;
				return TERN_OK;
			}
		}
		if (f->prepared && p != P_OK && p != P_READ_ERROR) {
			rc = zero_tail(sc, &z);
			if (rc == TERN_EIO)
				return report(sc, off, sc->size - off, SPOOL_DAMAGE_READ_ERROR, 0,
				              NULL, 0);
			if (rc != TERN_OK)
				return rc;
			if (off >= z) {
				/* Zeros from here to the end: the unused part of a
				 * prepared segment. No record starts with a zero. */
				sc->res->torn_off = sc->res->zero_off = off;
				return TERN_OK;
			}
			/* (zero_off is set only where the scan ends: a record
			 * after damage may itself end with zero bytes) */
		}
		switch (p) {
		case P_OK:
			rc = sc->ops->record(sc->ops->arg, &h, pl, off);
			if (rc == TERN_ECORRUPT)
				rc = report(sc, off, reclen, SPOOL_DAMAGE_MALFORMED, h.type, pl,
				            h.len);
			else if (rc == TERN_OK)
				sc->res->n_records++;
			if (rc != TERN_OK)
				return rc;
			off += reclen;
			continue;
		case P_READ_ERROR:
			return report(sc, off, sc->size - off, SPOOL_DAMAGE_READ_ERROR, 0, NULL, 0);
		case P_SHORT_HEADER:
			sc->res->torn_off = off;
			sc->res->zero_off = z;
			return TERN_OK;
		case P_BAD_PAYLOAD:
			if (f->version == SPOOL_REC_V2 && z < sc->size) {
				/* In a prepared segment, a verified header whose
				 * payload fails, with no record after it, is an append
				 * cut short: its last bytes are still the zeros. */
				uint64_t nx;
				rc = find_next(sc, off + 1, &nx);
				if (rc == TERN_EIO)
					return report(sc, off, sc->size - off,
					              SPOOL_DAMAGE_READ_ERROR, 0, NULL, 0);
				if (rc != TERN_OK)
					return rc;
				if (nx == sc->size) {
					torn_hint(sc, off, hb);
					sc->res->zero_off = z;
					return TERN_OK;
				}
			}
			if (f->version == SPOOL_REC_V2) {
				/* The header is verified: its length is right, and
				 * the next record starts where it says. */
				rc = report(sc, off, reclen, SPOOL_DAMAGE_CHECKSUM, h.type, pl,
				            h.len);
				if (rc != TERN_OK)
					return rc;
				off += reclen;
				continue;
			}
			break;
		case P_PAST_END:
			if (f->version == SPOOL_REC_V2) {
				/* a verified header: an append cut short */
				sc->res->torn_off = off;
				sc->res->zero_off = z;
				return TERN_OK;
			}
			break;
		case P_BAD_HEADER:
			break;
		}
		uint64_t next;
		rc = find_next(sc, off + 1, &next);
		if (rc == TERN_EIO)
			return report(sc, off, sc->size - off, SPOOL_DAMAGE_READ_ERROR, 0, NULL, 0);
		if (rc != TERN_OK)
			return rc;
		if (next == sc->size && (p == P_PAST_END || z < sc->size)) {
			/* Version 1: a plausible header running past the end with
			 * nothing valid after it, as an interrupted append leaves.
			 * Either version: bytes that are no record, then only zeros
			 * up to the end: an append into a prepared segment that a
			 * crash cut short (the rest of its bytes never reached the
			 * disk, or reached it out of order). */
			if (z < sc->size)
				torn_hint(sc, off, hb);
			sc->res->torn_off = off;
			sc->res->zero_off = z;
			return TERN_OK;
		}
		/* What the damaged bytes seem to hold, as a hint for the report. */
		uint8_t idb[QUEUE_ID_LEN];
		size_t idn = 0;
		if (next - off >= sc->hdr_len + QUEUE_ID_LEN &&
		    sc->ops->read(sc->ops->arg, off + sc->hdr_len, idb, sizeof(idb)) == TERN_OK)
			idn = sizeof(idb);
		uint64_t n = next - off;
		rc = report(sc, off, n, SPOOL_DAMAGE_HEADER, n >= 6 ? hb[5] : 0, idn ? idb : NULL,
		            idn);
		if (rc != TERN_OK)
			return rc;
		off = next;
	}
	return TERN_OK;
}

int spool_scan(const struct spool_scan_ops *ops, uint64_t size, const struct spool_seg_fmt *f,
               struct tbuf *pay, struct spool_scan_result *res)
{
	memset(res, 0, sizeof(*res));
	res->torn_off = res->zero_off = size;
	if (f->version != SPOOL_REC_V1 && f->version != SPOOL_REC_V2)
		return TERN_EINVAL;
	struct scan sc = {
	    .ops = ops,
	    .f = f,
	    .size = size,
	    .hdr_len = f->version == SPOOL_REC_V2 ? SPOOL_REC_HDR : SPOOL_REC_HDR_V1,
	    .pay = pay,
	    .res = res,
	    .zero_off = UINT64_MAX,
	};
	int rc = scan_loop(&sc);
	free(sc.win);
	return rc;
}
