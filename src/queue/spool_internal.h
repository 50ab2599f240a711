/*
 * spool_internal.h — the spool's on-disk record format, shared by spool.c
 * (which does the I/O), spool_record.c (the pure encoder, decoder and
 * scanner), the unit test and the fuzz target. Not a public header: nothing
 * outside src/queue/ and the spool's own tests includes it.
 *
 * A segment file is a plain sequence of records. Its name says its format:
 *
 *   seg-NNNNNNNNNN-XXXXXXXXXXXXXXXX.log   version 2 (written by this code);
 *                                         X.. = the segment's nonce in hex
 *   seg-NNNNNNNNNN-XXXXXXXXXXXXXXXX-p.log version 2, prepared: the file was
 *                                         written full of zeros (and synced)
 *                                         before its first record, so it ends
 *                                         with zeros, and only in such a file
 *                                         is a zero tail a clean end
 *   seg-NNNNNNNNNN.log                    version 1 (tern before it; read only)
 *
 * Version 2 record, a 28-byte header then the payload, little-endian:
 *
 *   off  size  field
 *     0     4  magic   "TSPL"
 *     4     1  version 2
 *     5     1  type    (enum spool_rec_type)
 *     6     2  flags   (0; reserved)
 *     8     4  payload length
 *    12     4  CRC32C of the payload
 *    16     8  nonce: the segment's, random, the same in every record of it
 *    24     4  CRC32C of header bytes 0..23
 *
 * The header checksum makes a header trustworthy on its own: when only the
 * payload is damaged, its length still says where the next record starts,
 * so one bad record costs that record and nothing after it. When a header
 * is damaged, a scan looks for the next offset holding the magic, a header
 * whose checksum holds, the segment's nonce and a payload whose checksum
 * holds. The nonce is what keeps a message's own bytes from passing for
 * records during that scan: a sender can put anything in a message,
 * including well-formed records with correct checksums, but cannot know a
 * random number that is only in a file name in a private directory.
 *
 * Version 1 record (read for spools written before version 2; never
 * written, never appended to): a 16-byte header — magic, version 1, type,
 * flags, payload length, CRC32C of header bytes 0..11 followed by the
 * payload — then the payload. Without a header checksum a damaged header
 * can only be found again by scanning for a whole record whose checksum
 * holds; without a nonce such a scan could take a record written inside a
 * message for a real one, a risk that lasts only until the old segments
 * have drained.
 *
 * Payloads are the same in both versions. Strings are a u32 length and the
 * bytes (no NUL inside); length 0xffffffff means NULL.
 *
 *   MSG   id[16] created:i64 body:u32 ret:u32
 *         flags:u8(bit0 smtputf8, bit1 trusted_client, bit2 folder Junk,
 *                  bit3 auth follows client, bit4 api_key follows auth,
 *                  bit5 not_before follows api_key, bit6 spill reference follows;
 *                  the other bits 0: a record from before a bit existed has it clear)
 *         sender:str envid:str client:str [auth:str if bit3]
 *         [api_key:str if bit4] [not_before:i64 if bit5, never 0]
 *         [spill:str spill_size:u64 spill_off:u64 spill_crc:u32 if bit6]
 *         n_rcpts:u32
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
#define SPOOL_REC_V1 1u
#define SPOOL_REC_V2 2u
#define SPOOL_REC_HDR_V1 16u
#define SPOOL_REC_HDR 28u /* version 2: what this code writes */
/* Largest payload accepted, written or read. Bounds every allocation that
 * recovery makes from a length found on disk. */
#define SPOOL_REC_MAX_PAYLOAD (1024u * 1024u * 1024u)
/* SPILL: flag bit 6 of a MSG record: the message goes on in its own file
 * (queue/spill.h); its name is 1..SPOOL_SPILL_NAME_MAX of [A-Za-z0-9._-],
 * not starting with '.'. */
#define SPILL_FLAG 64u
#define SPOOL_SPILL_NAME_MAX 64u
bool spool_spill_name_ok(const char *p, size_t n);
/* Returned (positive, not a TERN_* code) when the bytes end inside a record. */
#define SPOOL_REC_SHORT 1

enum spool_rec_type {
	SPOOL_REC_MSG = 1,
	SPOOL_REC_RCPT = 2,
	SPOOL_REC_DEL = 3,
};

/* What a segment's records must look like; from its file name. */
struct spool_seg_fmt {
	unsigned version; /* SPOOL_REC_V1 or SPOOL_REC_V2 */
	uint64_t nonce;   /* version 2: every record carries it */
	bool prepared;    /* version 2: written full of zeros first ("-p" name) */
	bool recycled;    /* version 2: a finished segment's file reused ("-r" name) */
};

struct spool_rec_hdr {
	unsigned version;
	unsigned type;
	uint32_t hdr_len; /* SPOOL_REC_HDR_V1 or SPOOL_REC_HDR */
	uint32_t len;     /* payload bytes */
	/* version 1: CRC of header bytes 0..11 then the payload;
	 * version 2: CRC of the payload alone */
	uint32_t crc;
	uint64_t nonce; /* version 2 */
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

/*
 * Checks the header at p[0..n) against the segment format f: magic,
 * version, known type, zero flags, length <= SPOOL_REC_MAX_PAYLOAD, and
 * for version 2 the header checksum and the nonce. TERN_OK with *h filled;
 * SPOOL_REC_SHORT when n ends before the header does and the bytes so far
 * could still begin a valid header; TERN_ECORRUPT otherwise.
 */
int spool_rec_header(const uint8_t *p, size_t n, const struct spool_seg_fmt *f,
                     struct spool_rec_hdr *h);
/* The CRC a payload must have, its bytes fed in pieces: start with
 * spool_rec_crc_seed(h, hdr), chain spool_crc32c over the payload, compare
 * with h->crc. hdr is the record's header bytes. */
uint32_t spool_rec_crc_seed(const struct spool_rec_hdr *h, const uint8_t *hdr);

/*
 * Looks at the record starting at p[0..n): TERN_OK with *h filled and
 * *reclen = header + payload when it is whole and its checksums hold;
 * SPOOL_REC_SHORT when n ends before the record does (header valid so
 * far); TERN_ECORRUPT when the header or a checksum is wrong.
 */
int spool_rec_next(const uint8_t *p, size_t n, const struct spool_seg_fmt *f,
                   struct spool_rec_hdr *h, size_t *reclen);

/*
 * Encoders append one whole version 2 record to out, with nonce 0 (the
 * committer stamps each record with its segment's nonce when it knows
 * which segment the record goes to). On error out is left as it was.
 * encode_msg stores len as the message size (env->size is ignored) and
 * sets *data_off to the offset of the data from the start of the record.
 */
int spool_rec_encode_msg(struct tbuf *out, const struct spool_msg *env, const void *data,
                         size_t len, size_t *data_off);
int spool_rec_encode_rcpt(struct tbuf *out, const char *id, uint32_t idx,
                          const struct spool_rcpt *r, bool with_reply);
int spool_rec_encode_del(struct tbuf *out, const char *id);
/* Sets the nonce of the version 2 record whose header is at rec (its first
 * SPOOL_REC_HDR bytes) and recomputes the header checksum. */
void spool_rec_stamp(uint8_t *rec, uint64_t nonce);

/*
 * Payload decoders (p, n is the payload only). decode_msg returns a new
 * envelope (msg->size = the message's size: the data length, plus
 * spool_msg_tail(msg) for a spilled message) and the data's offset within
 * the payload; the data itself is not copied. All return TERN_ECORRUPT on
 * malformed input and TERN_ENOMEM on allocation failure.
 */
int spool_rec_decode_msg(const uint8_t *p, size_t n, struct spool_msg **out, size_t *data_off);
int spool_rec_decode_rcpt(const uint8_t *p, size_t n, struct spool_rec_rcpt *out);
int spool_rec_decode_del(const uint8_t *p, size_t n, char id[QUEUE_ID_LEN + 1]);

/* True when state is one the spool accepts (RCPT_QUEUED..RCPT_SUPPRESSED). */
bool spool_rcpt_state_valid(unsigned st);
/* True for DELIVERED, BOUNCED and SUPPRESSED: the recipient is finished. */
bool spool_rcpt_state_final(enum rcpt_state st);

/* ---- scanning a segment -------------------------------------------------- */

/*
 * spool_scan walks a segment of `size` bytes from its start and accounts
 * for every byte exactly once: as a whole, valid record (handed to
 * ops->record, in order), as a damaged range (handed to ops->damage), or as
 * the torn tail left by an interrupted append (reported in the result, not
 * as damage: whether that is harmless depends on whether the segment is the
 * last one, which the caller knows), or as the zero tail. After a damaged
 * range the scan goes on at the next valid record, so damage costs only the
 * records it touches.
 *
 * PREALLOC: a prepared segment (f->prepared; spool.c) is written full of
 * zeros before its first record, so it ends with zeros rather than with its
 * last record.
 * No record starts with a zero byte, so where the scan meets something that
 * is not a record it looks at the end of the file once (reading backwards
 * while it finds zeros): from a byte on which everything is zero, the
 * segment ends cleanly there (not damage, not torn); bytes that are no
 * record followed by nothing but zeros (no valid record after them) are
 * the torn tail of an append a crash cut short, even when their header is
 * whole; bytes that are no record followed by a valid record are damage,
 * reported as before. In a segment that is not prepared nothing changes.
 *
 * RECYCLE: a recycled segment (f->recycled) is a finished segment's file
 * written over from its start under a new nonce, so after its last record
 * come the old records (whose headers carry another nonce, so they are no
 * records of this segment) and maybe zeros. Where the scan meets something
 * that is not a record and no record of this segment follows, the segment
 * ends: cleanly when no header of this segment starts there, else (a
 * header of ours whose record is cut short) with a torn tail from there to
 * the end of the file, which the caller cuts off. What is followed by a
 * record of this segment is damage, reported as before.
 *
 * It never trusts a length before the header holding it is verified, and
 * reads only through ops->read; a read error ends the scan with the rest of
 * the segment reported as damage (kind read-error).
 */
struct spool_scan_damage {
	uint64_t off, len;
	enum spool_damage_kind kind;
	unsigned rec_type; /* enum spool_rec_type when known, else 0 */
	/* The queue id the damaged record seems to name, read from its
	 * (damaged) bytes: a hint for the operator; "" when none. */
	char id[QUEUE_ID_LEN + 1];
};

struct spool_scan_ops {
	void *arg;
	/* Reads exactly n bytes at off into buf: TERN_OK or TERN_EIO. */
	int (*read)(void *arg, uint64_t off, void *buf, size_t n);
	/* A whole record whose checksums hold; payload is h->len bytes.
	 * TERN_OK, TERN_ECORRUPT (well-checksummed but malformed: reported as
	 * damage of kind malformed, scan goes on) or another error (stops the
	 * scan, which returns it). */
	int (*record)(void *arg, const struct spool_rec_hdr *h, const uint8_t *payload,
	              uint64_t off);
	/* One damaged range. TERN_OK, or an error that stops the scan. */
	int (*damage)(void *arg, const struct spool_scan_damage *d);
};

struct spool_scan_result {
	/* The segment ends: records (and damaged ranges) up to torn_off, the
	 * torn tail [torn_off, zero_off), then only zeros [zero_off, size).
	 * torn_off == zero_off: no torn tail; zero_off == size: no zero tail. */
	uint64_t torn_off;
	uint64_t zero_off;
	/* a torn tail in a prepared segment: what its bytes seem to hold (a
	 * hint for reporting it as damage when the segment is not the last) */
	unsigned torn_type;
	char torn_id[QUEUE_ID_LEN + 1];
	size_t n_records;
	size_t n_damaged; /* ranges reported through ops->damage */
};

/* pay is scratch space for payloads (its max bounds the largest record the
 * scan can verify; give it SPOOL_REC_MAX_PAYLOAD). Returns TERN_OK, an
 * error from ops, or TERN_ENOMEM. */
int spool_scan(const struct spool_scan_ops *ops, uint64_t size, const struct spool_seg_fmt *f,
               struct tbuf *pay, struct spool_scan_result *res);

/* ---- tests only ------------------------------------------------------------ */

/* Start a new segment once the current one passes bytes (default 64 MiB),
 * so segment turnover can be tested with small data. */
void spool_debug_set_segment_max(struct spool *s, uint64_t bytes);

#endif
