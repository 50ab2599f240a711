/*
 * fuzz_spool_record.c — libFuzzer over the spool's record decoder
 * (src/queue/spool_record.c): a segment's bytes are walked record by record
 * exactly as recovery does, and every record that decodes must re-encode
 * to the same bytes (the decoder accepts nothing the encoder would not
 * write). Must never crash, leak or read out of bounds.
 *
 * Input: one mode byte, then segment bytes. With mode bit 0 set, the CRC
 * of each record is fixed up before it is checked, so the fuzzer reaches
 * the payload decoders instead of stopping at the checksum.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "queue/spool_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void check_reencode(const uint8_t *rec, size_t reclen, const struct spool_rec_hdr *h)
{
	const uint8_t *p = rec + SPOOL_REC_HDR;
	struct tbuf b = TBUF_INIT(SPOOL_REC_HDR + SPOOL_REC_MAX_PAYLOAD);
	int rc = TERN_ECORRUPT;
	if (h->type == SPOOL_REC_MSG) {
		struct spool_msg *m;
		size_t doff, roff;
		if (spool_rec_decode_msg(p, h->len, &m, &doff) != TERN_OK)
			return;
		struct spool_msg *c = spool_msg_dup(m);
		if (c) {
			rc = spool_rec_encode_msg(&b, c, p + doff, (size_t)m->size, &roff);
			if (rc == TERN_OK && roff != doff + SPOOL_REC_HDR)
				abort();
		}
		spool_msg_free(c);
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
	if (rc == TERN_OK && (b.len != reclen || memcmp(b.data, rec, reclen) != 0))
		abort();
	tbuf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	int fix_crc = data[0] & 1;
	size -= 1;
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data + 1, size);
	size_t off = 0;
	while (off < size) {
		struct spool_rec_hdr h;
		size_t reclen;
		if (fix_crc && size - off >= SPOOL_REC_HDR &&
		    spool_rec_header(buf + off, &h) == TERN_OK &&
		    size - off - SPOOL_REC_HDR >= h.len)
			put32(buf + off + 12,
			      spool_rec_crc(buf + off, buf + off + SPOOL_REC_HDR, h.len));
		int rc = spool_rec_next(buf + off, size - off, &h, &reclen);
		if (rc != TERN_OK)
			break;
		if (reclen < SPOOL_REC_HDR || reclen > size - off)
			abort();
		check_reencode(buf + off, reclen, &h);
		off += reclen;
	}
	free(buf);
	return 0;
}
