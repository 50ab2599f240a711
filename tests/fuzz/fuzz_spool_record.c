/*
 * fuzz_spool_record.c — libFuzzer over the spool's record decoder and
 * segment scanner (src/queue/spool_record.c): a segment's bytes are scanned
 * exactly as recovery does (spool_scan, resynchronising after damage), and
 * every record it accepts must re-encode to the same bytes (the decoder
 * accepts nothing the encoder would not write). Every byte must be
 * accounted for once, in order: records and damaged ranges, then at most a
 * torn tail. Must never crash, leak or read out of bounds.
 *
 * Input: one mode byte, then segment bytes. Mode bit 1 selects the format:
 * clear = version 2 (records carrying FUZZ_NONCE), set = version 1. With
 * mode bit 0 set, the checksums of the records along the chain from offset
 * 0 are fixed up first, so the fuzzer reaches the payload decoders instead
 * of stopping at a checksum. Version 2 only: bit 2 scans it as a prepared
 * segment (zeros after the last record), bit 3 as a recycled one (the
 * file's past after it, any bytes).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "queue/spool_internal.h"

#define FUZZ_NONCE 0x0123456789abcdefull

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Fixes the checksums of each record along the chain from offset 0 while
 * its header fields are plausible and it fits. */
static void fix_checksums(uint8_t *buf, size_t size, const struct spool_seg_fmt *f)
{
	size_t hl = f->version == SPOOL_REC_V2 ? SPOOL_REC_HDR : SPOOL_REC_HDR_V1;
	size_t off = 0;
	while (size - off >= hl) {
		uint8_t *p = buf + off;
		uint32_t len = get32(p + 8);
		if (len > size - off - hl || len > SPOOL_REC_MAX_PAYLOAD)
			return;
		if (f->version == SPOOL_REC_V2) {
			put32(p + 12, spool_crc32c(0, p + hl, len));
			spool_rec_stamp(p, f->nonce);
		} else {
			put32(p + 12, spool_crc32c(spool_crc32c(0, p, 12), p + hl, len));
		}
		off += hl + len;
	}
}

struct ctx {
	const uint8_t *buf;
	size_t size;
	uint64_t pos; /* where the next record or damaged range must start */
	struct spool_seg_fmt f;
};

static int mem_read(void *arg, uint64_t off, void *out, size_t n)
{
	struct ctx *c = arg;
	if (off > c->size || n > c->size - off)
		abort(); /* the scanner never reads past the end it was given */
	memcpy(out, c->buf + off, n);
	return TERN_OK;
}

/* Re-encodes the decoded record; v2 must come back byte for byte, v1 must
 * come back with the same payload. */
static void check_reencode(const struct ctx *c, const struct spool_rec_hdr *h, const uint8_t *p,
                           uint64_t off)
{
	const uint8_t *rec = c->buf + off;
	struct tbuf b = TBUF_INIT(SPOOL_REC_HDR + SPOOL_REC_MAX_PAYLOAD);
	int rc = TERN_ECORRUPT;
	if (h->type == SPOOL_REC_MSG) {
		struct spool_msg *m;
		size_t doff, roff;
		if (spool_rec_decode_msg(p, h->len, &m, &doff) != TERN_OK)
			return;
		struct spool_msg *cp = spool_msg_dup(m);
		if (cp) {
			/* the record's data; a spilled message's tail is in its file */
			rc = spool_rec_encode_msg(&b, cp, p + doff,
			                          (size_t)(m->size - spool_msg_tail(m)), &roff);
			if (rc == TERN_OK && roff != doff + SPOOL_REC_HDR)
				abort();
		}
		spool_msg_free(cp);
		spool_msg_free(m);
	} else if (h->type == SPOOL_REC_RCPT) {
		struct spool_rec_rcpt r;
		if (spool_rec_decode_rcpt(p, h->len, &r) != TERN_OK)
			return;
		struct spool_rcpt x = {.state = r.state,
		                       .attempts = r.attempts,
		                       .next_try = r.next_try,
		                       .last_reply = r.reply};
		rc = spool_rec_encode_rcpt(&b, r.id, r.idx, &x, r.reply != NULL);
		free(r.reply);
	} else {
		char id[QUEUE_ID_LEN + 1];
		if (spool_rec_decode_del(p, h->len, id) != TERN_OK)
			return;
		rc = spool_rec_encode_del(&b, id);
	}
	if (rc == TERN_OK) {
		if (b.len != SPOOL_REC_HDR + (size_t)h->len ||
		    memcmp(b.data + SPOOL_REC_HDR, p, h->len) != 0)
			abort();
		if (h->version == SPOOL_REC_V2) {
			spool_rec_stamp((uint8_t *)b.data, c->f.nonce);
			if (memcmp(b.data, rec, SPOOL_REC_HDR) != 0)
				abort();
		}
	}
	tbuf_free(&b);
}

static int on_record(void *arg, const struct spool_rec_hdr *h, const uint8_t *payload, uint64_t off)
{
	struct ctx *c = arg;
	if (off != c->pos || h->version != c->f.version ||
	    (uint64_t)h->hdr_len + h->len > c->size - off ||
	    memcmp(payload, c->buf + off + h->hdr_len, h->len) != 0)
		abort();
	check_reencode(c, h, payload, off);
	c->pos = off + h->hdr_len + h->len;
	return TERN_OK;
}

static int on_damage(void *arg, const struct spool_scan_damage *d)
{
	struct ctx *c = arg;
	if (d->off != c->pos || d->len == 0 || d->len > c->size - d->off)
		abort();
	c->pos = d->off + d->len;
	return TERN_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	int fix = data[0] & 1;
	struct ctx c = {.f = {.version = data[0] & 2 ? SPOOL_REC_V1 : SPOOL_REC_V2}};
	if (c.f.version == SPOOL_REC_V2) {
		c.f.nonce = FUZZ_NONCE;
		c.f.prepared = data[0] & 4; /* PREALLOC: zeros after the last record */
		c.f.recycled = data[0] & 8; /* RECYCLE: the file's past after it */
	}
	size -= 1;
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data + 1, size);
	if (fix)
		fix_checksums(buf, size, &c.f);
	c.buf = buf;
	c.size = size;
	struct spool_scan_ops ops = {&c, mem_read, on_record, on_damage};
	struct spool_scan_result res;
	struct tbuf pay = TBUF_INIT(SPOOL_REC_MAX_PAYLOAD);
	int rc = spool_scan(&ops, size, &c.f, &pay, &res);
	bool ends_early = c.f.prepared || c.f.recycled;
	if (rc == TERN_OK && (c.pos != res.torn_off || res.torn_off > res.zero_off ||
	                      res.zero_off > size || (!ends_early && res.zero_off != size)))
		abort();
	/* a zero tail holds only zeros (a recycled segment's end is followed by
	 * its past, any bytes) */
	for (uint64_t i = res.zero_off; rc == TERN_OK && !c.f.recycled && i < size; i++)
		if (buf[i])
			abort();
	tbuf_free(&pay);
	free(buf);
	return 0;
}
