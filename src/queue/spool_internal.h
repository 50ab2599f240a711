/*
 * spool_internal.h — the spool's on-disk record format, shared by spool.c
 * (which does the I/O), spool_record.c (the pure encoder/decoder), the
 * unit test and the fuzz target. Not a public header: nothing outside
 * src/queue/ and the spool's own tests includes it.
 *
 * A segment file is a plain sequence of records. Each record is a 16-byte
 * header followed by its payload; all integers are little-endian:
 *
 *   off  size  field
 *     0     4  magic   "TSPL"
 *     4     1  version (SPOOL_REC_VERSION)
 *     5     1  type    (enum spool_rec_type)
 *     6     2  flags   (0; reserved)
 *     8     4  payload length
 *    12     4  CRC32C of header bytes 0..11 followed by the payload
 *
 * The CRC covers the length and type, so a flipped length is caught
 * before it is used to find the next record. Strings in payloads are a
 * u32 length and the bytes (no NUL inside); length 0xffffffff means NULL.
 *
 *   MSG   id[16] created:i64 body:u32 ret:u32
 *         flags:u8(bit0 smtputf8, bit1 trusted_client; the other bits 0)
 *         sender:str envid:str client:str n_rcpts:u32
 *         n_rcpts x { addr:str orcpt:str notify:u32 local:u8 state:u8
 *                     attempts:u32 next_try:i64 last_reply:str }
 *         data_len:u64 data[data_len]          (data is last, so the index
 *                                               can point straight at it)
 *   RCPT  id[16] idx:u32 state:u8 attempts:u32 next_try:i64 reply:str
 *         (reply NULL = keep the previous last_reply)
 *   DEL   id[16]
 *
 * Decoders are pure functions over (pointer, length): they never read
 * past n, never trust a length before checking it against what is left,
 * and reject any byte sequence that the encoder would not produce (so a
 * decoded record re-encodes to the same bytes).
 */
#ifndef TERN_QUEUE_SPOOL_INTERNAL_H
#define TERN_QUEUE_SPOOL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/id.h"
#include "queue/queue.h"

#define SPOOL_REC_MAGIC 0x4c505354u /* "TSPL" read as little-endian u32 */
#define SPOOL_REC_VERSION 1u
#define SPOOL_REC_HDR 16u
/* Largest payload accepted, written or read. Bounds every allocation that
 * recovery makes from a length found on disk. */
#define SPOOL_REC_MAX_PAYLOAD (1024u * 1024u * 1024u)
/* Returned (positive, not a TERN_* code) when the bytes end inside a record. */
#define SPOOL_REC_SHORT 1

enum spool_rec_type {
	SPOOL_REC_MSG = 1,
	SPOOL_REC_RCPT = 2,
	SPOOL_REC_DEL = 3,
};

struct spool_rec_hdr {
	unsigned type;
	uint32_t len; /* payload bytes */
	uint32_t crc;
};

/* A decoded RCPT record. reply is owned (free it), NULL if the record had none. */
struct spool_rec_rcpt {
	char id[QUEUE_ID_LEN + 1];
	uint32_t idx;
	enum rcpt_state state;
	uint32_t attempts;
	int64_t next_try;
	char *reply;
};

/* CRC32C (Castagnoli). Chainable: crc(crc(0, a), b) == crc(0, a || b). */
uint32_t spool_crc32c(uint32_t crc, const void *p, size_t n);

/* Checks the fixed header in p[0..SPOOL_REC_HDR): magic, version, known
 * type, zero flags, length <= SPOOL_REC_MAX_PAYLOAD. TERN_ECORRUPT if not. */
int spool_rec_header(const uint8_t *p, struct spool_rec_hdr *h);
/* The CRC a record with this header and payload must carry. */
uint32_t spool_rec_crc(const uint8_t *hdr, const uint8_t *payload, size_t n);

/*
 * Looks at the record starting at p[0..n): TERN_OK with *h filled and
 * *reclen = header + payload when it is whole and its CRC matches;
 * SPOOL_REC_SHORT when n ends before the record does (header valid so
 * far); TERN_ECORRUPT when the header or CRC is wrong.
 */
int spool_rec_next(const uint8_t *p, size_t n, struct spool_rec_hdr *h, size_t *reclen);

/*
 * Encoders append one whole record (header with CRC + payload) to out.
 * On error out is left as it was. encode_msg stores len as the message
 * size (env->size is ignored) and sets *data_off to the offset of the
 * data from the start of the record.
 */
int spool_rec_encode_msg(struct tbuf *out, const struct spool_msg *env, const void *data,
                         size_t len, size_t *data_off);
int spool_rec_encode_rcpt(struct tbuf *out, const char *id, uint32_t idx,
                          const struct spool_rcpt *r, bool with_reply);
int spool_rec_encode_del(struct tbuf *out, const char *id);

/*
 * Payload decoders (p, n is the payload only). decode_msg returns a new
 * envelope (msg->size = data length) and the data's offset within the
 * payload; the data itself is not copied. All return TERN_ECORRUPT on
 * malformed input and TERN_ENOMEM on allocation failure.
 */
int spool_rec_decode_msg(const uint8_t *p, size_t n, struct spool_msg **out, size_t *data_off);
int spool_rec_decode_rcpt(const uint8_t *p, size_t n, struct spool_rec_rcpt *out);
int spool_rec_decode_del(const uint8_t *p, size_t n, char id[QUEUE_ID_LEN + 1]);

/* True when state is one the spool accepts (RCPT_QUEUED..RCPT_HELD). */
bool spool_rcpt_state_valid(unsigned st);
/* True for DELIVERED and BOUNCED: the recipient is finished. */
bool spool_rcpt_state_final(enum rcpt_state st);

/* Tests only: start a new segment once the current one passes bytes
 * (default 64 MiB), so segment turnover can be tested with small data. */
void spool_debug_set_segment_max(struct spool *s, uint64_t bytes);

#endif
