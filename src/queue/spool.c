/*
 * spool.c — the durable, log-structured spool with group commit (DESIGN §6,
 * queue.h). Owns the segment files DIR/seg-NNNNNNNNNN-NONCE.log (and reads
 * the version 1 DIR/seg-NNNNNNNNNN.log of older spools), the files set
 * aside in DIR/damaged/, the committer thread, the preparer thread and its
 * spare segment file (DIR/.prep-NONCE, PREALLOC below), the in-memory
 * index, the list of damaged ranges and crash recovery. The record format
 * and the segment scanner live in spool_record.c.
 *
 * Must never: acknowledge a put (callback with TERN_OK) before its record
 * and the directory entry of its segment are synced; fsync while holding
 * the lock that spool_put takes; trust a byte read from disk before its
 * CRC is checked; abort on anything found on disk; unlink a segment that
 * holds damaged or unread bytes (it is renamed into DIR/damaged/ instead);
 * cut anything off a segment but the torn tail of the last one; prepare a
 * spare on the committer's path or put one in the segment table before it
 * is renamed into place; read zeros as a clean end in a segment that was
 * not prepared.
 *
 * Threads and locks:
 *   qmu   guards the pending list (puts, RCPT and DEL records in order) and
 *         the closing flag. spool_put takes only qmu, briefly.
 *   mu    guards the index, the segment table and the counters. Taken
 *         before qmu when both are needed (so a message's RCPT and DEL
 *         records are queued in the order their changes were made).
 *   The committer thread is the only writer of segment files. It takes the
 *   whole pending list, writes it with pwritev at the end of the current
 *   segment, fdatasyncs once if the batch holds a message (RCPT/DEL records
 *   ride along with the next sync), then updates the index under mu and
 *   runs the callbacks with no lock held. A put (anything with a callback)
 *   wakes it at once; RCPT and DEL records alone do not, and are written
 *   with the next put's batch or LAZY_NS after the last batch.
 *
 * Damage: recovery scans each segment with spool_scan, which resumes at
 * the next valid record after damage, so a damaged record costs that
 * record (a MSG record: that message, reported with its id when readable;
 * a RCPT or DEL record: at worst a redelivery). Each damaged range is
 * logged (event=spool_damaged) and listed by spool_foreach_damage; its
 * segment is marked damaged, is never appended to again and, once nothing
 * in it is needed, is renamed into DIR/damaged/ where a later start lists
 * it again. A read whose checksum fails after recovery marks the segment
 * the same way.
 *
 * Segment lifetime: a segment holds `live` messages (MSG records whose
 * message is still queued) and `pins`: records that must survive for the
 * on-disk state to replay correctly — RCPT records of a live message, and
 * the DEL record of a removed message whose MSG record still exists in
 * another segment (a "tombstone", released when that segment is removed).
 * ARCHIVE: `apins` counts MSG records here that the archive wanted and has
 * not released yet (spool_archive_release, after its own commit); a
 * finished spilled message's file is kept likewise (aspill). Only the
 * committer unlinks; the release just asks it to look (q_reap).
 * A segment other than the current one with live == 0, pins == 0 and
 * apins == 0 is unlinked by the committer, after a sync that makes every record written
 * so far durable, and the directory is synced before any tombstone it
 * released can let a later segment go.
 * The file's descriptor is then closed by the preparer thread (seg_retire):
 * that last close frees the blocks, slow enough to stall every commit.
 * RECYCLE: one finished file at a time is renamed to a spare's name
 * instead (seg_recycle) and becomes the next segment ("-r"), written over
 * under a new nonce: no zeros to write ahead, no blocks to free.
 *
 * Compaction (spool_maintain): a live message of an old, mostly-dead
 * segment is re-appended as a new MSG record (same id, recipients' current
 * state), queued under mu so it sits in the log after every change it
 * includes and before every change it does not. Once that batch is synced
 * the committer moves the index entry: the old segment loses a live
 * message and the RCPT records written before the copy lose their pins
 * (the copy supersedes them). The old segment number stays in the entry's
 * osegs, so a later DEL is a tombstone for it as well as for the copy's
 * segment. Recovery lets a later MSG record of the same message replace
 * the earlier one; RCPT and DEL records apply to whichever copy came last.
 * A crash before the sync leaves the old copy and its records in place.
 */
#include "queue/queue.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"
#include "core/metrics.h"
#include "queue/spill.h"
#include "queue/spool_internal.h"

#define SEG_MAX_BYTES (64ull * 1024 * 1024)      /* start a new segment past this */
#define PENDING_MAX_BYTES (512ull * 1024 * 1024) /* refuse puts beyond this backlog */
#define IOV_CHUNK 512
/* RCPT and DEL records nobody waits for ride with the next put's batch; the
 * committer writes them on their own only after this long without one. */
#define LAZY_NS (20 * 1000 * 1000L)
#define LAZY_MAX_BYTES (1024 * 1024)
/* PREALLOC: a spare segment file is prepared this big at first, then twice
 * the size of the segment it follows, up to PREP_MAX_BYTES (so a spool that
 * stays small costs little disk, and a busy one rotates every 64 MiB). */
#define PREP_MIN_BYTES (1024ull * 1024)
#define PREP_MAX_BYTES SEG_MAX_BYTES
/* Zeros written (and waited for) at a time. A commit's fdatasync that
 * meets a chunk in the disk's queue waits for it: with 1 MiB chunks the
 * commits during a 64 MiB preparation took 2-5 ms instead of 0.2 (measured,
 * virtio disk); a quarter of that bounds the wait to a quarter. */
#define PREP_CHUNK (256u * 1024u)
/* Dead segments waiting for the preparer to close them; past this many
 * (the preparer is stuck on a slow disk) the caller closes its own. */
#define GRAVE_MAX 64
#define SPARE_PREFIX ".prep-"      /* hidden: not a segment, not in tern_spool_bytes */

/* ---- segments ----------------------------------------------------------- */

struct seg {
	uint32_t no;
	unsigned ver;   /* record format, from the file name (SPOOL_REC_V1/V2) */
	uint64_t nonce; /* version 2: in the file name and in every record */
	int fd;
	uint64_t live;
	uint64_t live_bytes; /* record bytes of the live messages' MSG records here */
	uint64_t size;       /* bytes of whole records in the file */
	/* PREALLOC: bytes of the file written (as zeros) and synced before the
	 * records: appends below this overwrite blocks that exist, so their
	 * fdatasync has only data to write. 0 for a segment made by appending. */
	uint64_t prep_end;
	bool prepared; /* made from a spare: "-p" in its name, zeros are its clean end */
	/* RECYCLE: made from a finished segment's file ("-r" in its name): after
	 * its last record, bytes of the file's past (records under other
	 * nonces) or zeros */
	bool recycled;
	uint64_t pins;
	uint32_t *tombs; /* segments holding DEL records for messages in this one */
	size_t n_tombs, cap_tombs;
	unsigned readers; /* spool_read_data calls using fd right now */
	bool orphan;      /* removed from the table; the last reader frees it */
	bool damaged;     /* holds damaged bytes: set aside, never unlinked */
	bool keep;        /* could not be set aside: stays in place and in the table */
	/* ARCHIVE: MSG records here that the archive has not yet taken (see
	 * spool_archive_release): the segment stays while any is left. */
	uint64_t apins;
};

/* ARCHIVE: a spilled message the archive has not yet taken keeps its spill
 * file; dead: its DEL is written, so the release unlinks the file. */
struct apin_spill {
	char id[QUEUE_ID_LEN + 1];
	char *name;
	bool dead;
};

/* A damaged range (see queue.h, struct spool_damage). */
struct dmg {
	uint32_t seg;
	char file[96]; /* relative to the spool dir */
	uint64_t off, len;
	enum spool_damage_kind kind;
	unsigned rec_type;
	char id[QUEUE_ID_LEN + 1];
};

#define DAMAGED_DIR "damaged"

/* Fault points: named places where a debug build can be told (environment
 * TERN_TEST_FAULT=NAME or NAME:N, the Nth time) to stop the thread that
 * reaches them for good, so that a test can kill -9 the process in exactly
 * that phase. Compiled out of release (NDEBUG) builds. */
enum fault {
	FAULT_NONE,
	FAULT_COMMIT_WRITE,  /* a batch with new messages is written, not synced */
	FAULT_COMMIT_SYNC,   /* ... synced, the puts not yet answered */
	FAULT_GET,           /* spool_get: a delivery looks its message up */
	FAULT_UPDATE_RCPT,   /* spool_update_rcpt: a delivery result, before it is recorded */
	FAULT_COMPACT_WRITE, /* compaction copies written, not synced */
	FAULT_COMPACT_SYNC,  /* ... synced, the old segments not yet removed */
	FAULT_REAP_UNLINK,   /* one finished segment removed, others of the same pass not yet */
};

/* ---- index ------------------------------------------------------------- */

struct entry {
	char id[QUEUE_ID_LEN + 1];
	uint64_t hash;
	uint32_t seg;      /* segment of the MSG record */
	uint64_t rec_off;  /* offset of the MSG record in it */
	uint64_t data_off; /* offset of the message bytes */
	uint64_t data_len;
	uint64_t rec_len; /* whole MSG record, header included */
	struct spool_msg *msg;
	uint32_t *rsegs; /* segments holding RCPT records of this message */
	size_t n_rsegs, cap_rsegs;
	/* Segments that may still hold older MSG copies of this message
	 * (compaction leaves them until their segment goes): a DEL must stay
	 * while any of them exists. Stale numbers are harmless. */
	uint32_t *osegs;
	size_t n_osegs, cap_osegs;
	uint32_t ver;      /* bumped on every change of msg (compaction checks it) */
	struct item *copy; /* compaction copy queued but not yet accounted */
	bool corrupt;      /* its MSG record failed a check when read: never copied */
};

/* Open addressing, linear probing, backward-shift deletion (no tombstones). */
struct index {
	struct entry **slot;
	size_t cap; /* power of two, or 0 */
	size_t count;
};

/* ---- pending records ------------------------------------------------------ */

struct item {
	struct item *next;
	unsigned type;
	char *buf; /* the whole encoded record */
	size_t len;
	char id[QUEUE_ID_LEN + 1];
	/* MSG */
	size_t data_off; /* from the start of the record */
	struct spool_msg *msg;
	bool apin;        /* ARCHIVE: the archive wants it; pinned in seg */
	uint32_t rec_seg; /* where it was written (committer, for the hook) */
	uint64_t rec_off;
	spool_put_cb cb;
	void *arg;
	int result; /* what cb is told */
	/* DEL: what the removed entry pinned, released once the DEL is written */
	uint32_t del_seg;
	uint64_t del_len; /* its MSG record's length (live bytes of del_seg) */
	uint32_t *rsegs;
	size_t n_rsegs;
	uint32_t *osegs; /* more segments with MSG copies: the DEL is a tombstone for each */
	size_t n_osegs, cap_osegs;
	/* MSG written by compaction: a new copy of a message already indexed.
	 * del_item is the DEL of that message when it was removed before the
	 * copy was accounted (that DEL must also outlive the copy's segment). */
	bool copy;
	struct item *del_item;
	/* DEL of a spilled message: its spill file name, unlinked once the DEL
	 * is written (SPILL) */
	char *spill;
};

struct spool {
	char *dir;
	int dirfd;

	pthread_mutex_t qmu;
	pthread_cond_t qcond;
	struct item *qhead, *qtail;
	uint64_t q_bytes;
	bool closing;
	bool q_urgent;    /* the pending list holds an item someone waits for */
	bool q_sleeping;  /* the committer waits with no deadline: lazy items wake it */
	uint64_t seg_max; /* rotate past this many bytes (tests lower it) */

	pthread_mutex_t mu;
	struct index idx;
	struct seg **segs; /* sorted by no */
	size_t n_segs, cap_segs;
	uint32_t cur_no;
	bool reap_hint; /* some count reached zero: look for segments to unlink */
	struct spool_stats stats;
	struct dmg *dmg; /* damaged ranges, in the order found */
	size_t n_dmg, cap_dmg;

	enum fault fault; /* set once at open; FAULT_NONE in release builds */
	unsigned fault_after;
	atomic_uint fault_hits;

	/* committer-only (and spool_open before the thread starts) */
	pthread_t thread;
	bool thread_started;
	struct seg *cur;
	uint64_t cur_size;
	bool unsynced;          /* records written to cur since its last fdatasync */
	bool cur_broken;        /* a failed batch could not be truncated away: rotate */
	spool_commit_hook hook; /* spool_set_commit_hook (the archive), or NULL */
	spool_archive_want want;
	void *hook_arg;
	bool q_reap; /* spool_archive_release: a pin reached zero, the committer reaps */

	/* ARCHIVE (under mu): spill files kept for the archive, and what
	 * recovery found for it (SPOOL_OPEN_ARCHIVE; handed over once) */
	bool archive;

	/* PREALLOC: the spare, the next segment's file prepared ahead by the
	 * preparer thread (written full of zeros and synced under a hidden
	 * name; see spare_prepare). pmu guards these; the committer takes the
	 * spare at a rotation and asks for the next one (spare_want bytes). */
	pthread_mutex_t pmu;
	pthread_cond_t pcond;
	pthread_t pthread;
	bool pthread_started;
	bool pclosing;
	atomic_bool prep_stop; /* spool_close: a preparation under way gives up */
	bool spare_ready;
	int spare_fd;
	uint64_t spare_nonce, spare_size;
	uint64_t spare_want; /* bytes to prepare; 0: none wanted (or the last try failed) */
	uint64_t prep_bytes; /* stats: zeros prepared and not yet used (spare + current's rest) */
	bool spare_recycled; /* RECYCLE: the spare is a finished segment's file */
	/* RECYCLE: a finished segment's file, renamed .prep-NONCE, waiting to be
	 * the next spare (bin_fd -1: none) */
	int bin_fd;
	uint64_t bin_nonce, bin_size;
	/* Dead segments' descriptors, closed by the preparer thread (seg_retire);
	 * under pmu. */
	int grave[GRAVE_MAX];
	size_t n_grave;
	struct apin_spill *aspill;
	size_t n_aspill, cap_aspill;
	struct spool_ref *arec;
	size_t n_arec, cap_arec;
};

static void spill_recover(struct spool *s);

static void item_free(struct item *it)
{
	free(it->buf);
	spool_msg_free(it->msg);
	free(it->rsegs);
	free(it->osegs);
	free(it->spill);
	free(it);
}

static void seg_name(const struct seg *g, char *out, size_t outlen)
{
	if (g->ver == SPOOL_REC_V1)
		snprintf(out, outlen, "seg-%010" PRIu32 ".log", g->no);
	else
		snprintf(out, outlen, "seg-%010" PRIu32 "-%016" PRIx64 "%s.log", g->no, g->nonce,
		         g->recycled   ? "-r"
		         : g->prepared ? "-p"
		                       : "");
}

static void seg_path(const struct spool *s, const struct seg *g, char *out, size_t outlen)
{
	char name[64];
	seg_name(g, name, sizeof(name));
	snprintf(out, outlen, "%s/%s", s->dir, name);
}

/* Parses a segment file name: "seg-" 10 digits ".log" (version 1) or
 * "seg-" 10 digits "-" 16 lowercase hex digits ".log" (version 2), or the
 * same with "-p.log" (version 2, prepared) or "-r.log" (version 2,
 * recycled). */
static bool seg_parse_name(const char *nm, uint32_t *no, unsigned *ver, uint64_t *nonce,
                           bool *prepared, bool *recycled)
{
	size_t n = strlen(nm);
	*prepared = n == 37 && strcmp(nm + 31, "-p.log") == 0;
	*recycled = n == 37 && strcmp(nm + 31, "-r.log") == 0;
	if ((n != 18 && n != 35 && !*prepared && !*recycled) || strncmp(nm, "seg-", 4) != 0 ||
	    strcmp(nm + n - 4, ".log") != 0)
		return false;
	uint64_t v = 0;
	for (int i = 4; i < 14; i++) {
		if (nm[i] < '0' || nm[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(nm[i] - '0');
	}
	if (v == 0 || v > UINT32_MAX)
		return false;
	*no = (uint32_t)v;
	*ver = SPOOL_REC_V1;
	*nonce = 0;
	if (n == 18)
		return true;
	if (nm[14] != '-')
		return false;
	uint64_t x = 0;
	for (int i = 15; i < 31; i++) {
		char c = nm[i];
		unsigned d;
		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else
			return false;
		x = x << 4 | d;
	}
	*ver = SPOOL_REC_V2;
	*nonce = x;
	return true;
}

static struct spool_seg_fmt seg_fmt(const struct seg *g)
{
	return (struct spool_seg_fmt){
	    .version = g->ver, .nonce = g->nonce, .prepared = g->prepared, .recycled = g->recycled};
}

/* A random nonce for a new segment (never 0: the encoders' placeholder). */
static uint64_t new_nonce(void)
{
	uint64_t n = 0;
	while (n == 0) {
		if (getrandom(&n, sizeof(n), 0) != (ssize_t)sizeof(n)) {
			/* Only guessability suffers: a sender would have to guess
			 * it and the disk would have to fail at the right place. */
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			n = ((uint64_t)ts.tv_nsec << 32) ^ (uint64_t)ts.tv_sec ^
			    ((uint64_t)getpid() << 16);
			log_warn("event=spool_nonce_weak errno=%d", errno);
		}
	}
	return n;
}

/* ---- fault points ---------------------------------------------------------- */

#ifndef NDEBUG
static const char *const fault_names[] = {
    "",
    "commit_write",
    "commit_sync",
    "spool_get",
    "update_rcpt",
    "compact_write",
    "compact_sync",
    "reap_unlink",
};

/* Reads TERN_TEST_FAULT and TERN_TEST_SEGMENT_MAX (see enum fault). */
static void fault_arm(struct spool *s)
{
	const char *v = getenv("TERN_TEST_FAULT");
	if (v && *v) {
		const char *colon = strchr(v, ':');
		size_t n = colon ? (size_t)(colon - v) : strlen(v);
		for (size_t i = 1; i < sizeof(fault_names) / sizeof(fault_names[0]); i++)
			if (strlen(fault_names[i]) == n && strncmp(v, fault_names[i], n) == 0)
				s->fault = (enum fault)i;
		s->fault_after = 1;
		if (colon) {
			char *end;
			unsigned long k = strtoul(colon + 1, &end, 10);
			if (*end == '\0' && k > 0 && k < 1000000)
				s->fault_after = (unsigned)k;
		}
		if (s->fault == FAULT_NONE)
			log_warn("event=fault_unknown value=%.64s", v);
		else
			log_warn("event=fault_armed point=%s after=%u", fault_names[s->fault],
			         s->fault_after);
	}
	const char *m = getenv("TERN_TEST_SEGMENT_MAX");
	if (m && *m) {
		char *end;
		unsigned long long b = strtoull(m, &end, 10);
		if (*end == '\0' && b >= 1024) {
			s->seg_max = b;
			log_warn("event=spool_test_segment_max bytes=%llu", b);
		}
	}
}

/* Stops the calling thread for good if the armed fault point is f. */
static void fault_point(struct spool *s, enum fault f)
{
	if (f == FAULT_NONE || s->fault != f ||
	    atomic_fetch_add(&s->fault_hits, 1) + 1 < s->fault_after)
		return;
	log_error("event=fault_point point=%s", fault_names[f]);
	for (;;)
		pause();
}
#else
static void fault_arm(struct spool *s)
{
	(void)s;
}

static void fault_point(struct spool *s, enum fault f)
{
	(void)s;
	(void)f;
}
#endif

/* ---- damage ------------------------------------------------------------------ */

static const char *rec_type_name(unsigned t)
{
	switch (t) {
	case SPOOL_REC_MSG:
		return "msg";
	case SPOOL_REC_RCPT:
		return "rcpt";
	case SPOOL_REC_DEL:
		return "del";
	}
	return NULL;
}

/* Records a damaged range of segment no, held in file (relative to the
 * spool dir), unless it is known already, and logs it. Caller holds mu
 * (or is spool_open before other threads run). */
static void damage_add(struct spool *s, uint32_t no, const char *file, uint64_t off, uint64_t len,
                       enum spool_damage_kind kind, unsigned rec_type, const char *id)
{
	for (size_t i = 0; i < s->n_dmg; i++)
		if (s->dmg[i].seg == no && s->dmg[i].off == off &&
		    strcmp(s->dmg[i].file, file) == 0)
			return;
	const char *rt = rec_type_name(rec_type);
	log_error("event=spool_damaged seg=%" PRIu32 " file=%s offset=%" PRIu64 " length=%" PRIu64
	          " kind=%s%s%s%s%s action=kept",
	          no, file, off, len, spool_damage_kind_name(kind), rt ? " record=" : "",
	          rt ? rt : "", id && *id ? " id=" : "", id && *id ? id : "");
	if (s->n_dmg == s->cap_dmg) {
		size_t nc = s->cap_dmg ? s->cap_dmg * 2 : 8;
		struct dmg *p = realloc(s->dmg, nc * sizeof(*p));
		if (!p) {
			log_error("event=spool_damage_list_failed err=nomem");
			return; /* the segment is still marked, so still kept */
		}
		s->dmg = p;
		s->cap_dmg = nc;
	}
	struct dmg *d = &s->dmg[s->n_dmg++];
	memset(d, 0, sizeof(*d));
	d->seg = no;
	tern_strlcpy(d->file, file, sizeof(d->file));
	d->off = off;
	d->len = len;
	d->kind = kind;
	d->rec_type = rec_type;
	if (id)
		tern_strlcpy(d->id, id, sizeof(d->id));
	s->stats.damaged = s->n_dmg;
}

/* Segment g holds damage: from now on it is kept. Caller holds mu. */
static void seg_mark_damaged(struct spool *s, struct seg *g, uint64_t off, uint64_t len,
                             enum spool_damage_kind kind, unsigned rec_type, const char *id)
{
	char name[64];
	seg_name(g, name, sizeof(name));
	g->damaged = true;
	damage_add(s, g->no, name, off, len, kind, rec_type, id);
}

static void seg_free(struct seg *g)
{
	if (g->fd >= 0)
		close(g->fd);
	free(g->tombs);
	free(g);
}

/*
 * Frees a segment that is out of the table and unlinked, leaving its file's
 * close to the preparer thread: the last close of an unlinked segment frees
 * its blocks, which for a 64 MiB segment took 10-25 ms here (ext4 mounted
 * with discard); done by the committer, it held every commit for as long,
 * and every client waiting for its 250 with it. Its name is gone and the
 * directory synced, so when the file's space comes back changes nothing a
 * restart would see. Caller holds neither mu nor pmu.
 */
static void seg_retire(struct spool *s, struct seg *g)
{
	pthread_mutex_lock(&s->pmu);
	if (g->fd >= 0 && s->pthread_started && !s->pclosing && s->n_grave < GRAVE_MAX) {
		s->grave[s->n_grave++] = g->fd;
		g->fd = -1;
		pthread_cond_signal(&s->pcond);
	}
	pthread_mutex_unlock(&s->pmu);
	seg_free(g);
}

/* Closes the descriptors seg_retire left. Caller holds pmu; drops it while
 * closing. */
static void grave_close(struct spool *s)
{
	int fds[GRAVE_MAX];
	size_t n = s->n_grave;
	memcpy(fds, s->grave, n * sizeof(fds[0]));
	s->n_grave = 0;
	pthread_mutex_unlock(&s->pmu);
	for (size_t i = 0; i < n; i++)
		close(fds[i]);
	pthread_mutex_lock(&s->pmu);
}

/* Binary search in the sorted table; NULL if absent. Caller holds mu. */
static struct seg *seg_find(struct spool *s, uint32_t no, size_t *pos)
{
	size_t lo = 0, hi = s->n_segs;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (s->segs[mid]->no < no)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (pos)
		*pos = lo;
	return lo < s->n_segs && s->segs[lo]->no == no ? s->segs[lo] : NULL;
}

static int seg_insert(struct spool *s, struct seg *g)
{
	size_t pos;
	if (seg_find(s, g->no, &pos))
		return TERN_EEXIST;
	if (s->n_segs == s->cap_segs) {
		size_t nc = s->cap_segs ? s->cap_segs * 2 : 16;
		struct seg **n = realloc(s->segs, nc * sizeof(*n));
		if (!n)
			return TERN_ENOMEM;
		s->segs = n;
		s->cap_segs = nc;
	}
	memmove(s->segs + pos + 1, s->segs + pos, (s->n_segs - pos) * sizeof(*s->segs));
	s->segs[pos] = g;
	s->n_segs++;
	s->stats.segments = s->n_segs;
	return TERN_OK;
}

static void seg_remove_at(struct spool *s, size_t pos)
{
	memmove(s->segs + pos, s->segs + pos + 1, (s->n_segs - pos - 1) * sizeof(*s->segs));
	s->n_segs--;
	s->stats.segments = s->n_segs;
}

/* Appends v to a small uint32 set unless present. */
static int u32set_add(uint32_t **a, size_t *n, size_t *cap, uint32_t v, bool *added)
{
	*added = false;
	for (size_t i = 0; i < *n; i++)
		if ((*a)[i] == v)
			return TERN_OK;
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 4;
		uint32_t *p = realloc(*a, nc * sizeof(*p));
		if (!p)
			return TERN_ENOMEM;
		*a = p;
		*cap = nc;
	}
	(*a)[(*n)++] = v;
	*added = true;
	return TERN_OK;
}

/* ---- index ------------------------------------------------------------- */

static uint64_t id_hash(const char *id)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */
	for (size_t i = 0; i < QUEUE_ID_LEN; i++) {
		h ^= (unsigned char)id[i];
		h *= 1099511628211ull;
	}
	return h ^ (h >> 29);
}

static struct entry *idx_get(const struct index *x, const char *id, size_t *slot)
{
	if (!x->cap)
		return NULL;
	uint64_t h = id_hash(id);
	for (size_t i = h & (x->cap - 1);; i = (i + 1) & (x->cap - 1)) {
		struct entry *e = x->slot[i];
		if (!e)
			return NULL;
		if (e->hash == h && memcmp(e->id, id, QUEUE_ID_LEN) == 0) {
			if (slot)
				*slot = i;
			return e;
		}
	}
}

static void idx_place(struct entry **slot, size_t cap, struct entry *e)
{
	size_t i = e->hash & (cap - 1);
	while (slot[i])
		i = (i + 1) & (cap - 1);
	slot[i] = e;
}

static int idx_put(struct index *x, struct entry *e)
{
	if ((x->count + 1) * 10 > x->cap * 7) { /* keep load <= 0.7 */
		size_t nc = x->cap ? x->cap * 2 : 64;
		struct entry **ns = calloc(nc, sizeof(*ns));
		if (!ns)
			return TERN_ENOMEM;
		for (size_t i = 0; i < x->cap; i++)
			if (x->slot[i])
				idx_place(ns, nc, x->slot[i]);
		free(x->slot);
		x->slot = ns;
		x->cap = nc;
	}
	e->hash = id_hash(e->id);
	idx_place(x->slot, x->cap, e);
	x->count++;
	return TERN_OK;
}

/* Removes the entry at slot i, shifting later members of its probe run
 * back so lookups never stop early. */
static void idx_del_slot(struct index *x, size_t i)
{
	size_t mask = x->cap - 1;
	x->slot[i] = NULL;
	x->count--;
	for (size_t j = (i + 1) & mask; x->slot[j]; j = (j + 1) & mask) {
		size_t home = x->slot[j]->hash & mask;
		/* Move j into the hole at i if its home is not in (i, j]. */
		bool in_range = i <= j ? (home > i && home <= j) : (home > i || home <= j);
		if (!in_range) {
			x->slot[i] = x->slot[j];
			x->slot[j] = NULL;
			i = j;
		}
	}
}

static void entry_free(struct entry *e)
{
	if (!e)
		return;
	spool_msg_free(e->msg);
	free(e->rsegs);
	free(e->osegs);
	free(e);
}

/* ---- accounting (caller holds mu) ----------------------------------------- */

static void seg_unpin(struct spool *s, uint32_t no)
{
	struct seg *g = seg_find(s, no, NULL);
	if (g && g->pins && --g->pins == 0)
		s->reap_hint = true;
}

/* A RCPT record of e was written to segment t. */
static void acct_rcpt(struct spool *s, struct entry *e, struct seg *t)
{
	bool added;
	if (u32set_add(&e->rsegs, &e->n_rsegs, &e->cap_rsegs, t->no, &added) != TERN_OK) {
		/* Without the pin t might be removed early: at worst a redelivery
		 * after a crash. Keep going rather than fail a finished write. */
		log_warn("event=spool_pin_failed seg=%" PRIu32 " id=%s", t->no, e->id);
		return;
	}
	if (added)
		t->pins++;
}

/* The DEL record in t must stay while segment no (holding a MSG record of
 * the removed message) exists. */
static void add_tomb(struct spool *s, uint32_t no, struct seg *t)
{
	struct seg *g = seg_find(s, no, NULL);
	if (!g || !t || t == g)
		return;
	bool added;
	if (u32set_add(&g->tombs, &g->n_tombs, &g->cap_tombs, t->no, &added) == TERN_OK)
		t->pins += added;
	else
		log_warn("event=spool_pin_failed seg=%" PRIu32, t->no);
}

/* The live message whose current MSG record (len bytes) is in g leaves g. */
static void seg_drop_live(struct spool *s, struct seg *g, uint64_t len)
{
	if (!g)
		return;
	g->live_bytes = g->live_bytes > len ? g->live_bytes - len : 0;
	if (g->live && --g->live == 0)
		s->reap_hint = true;
}

/* A message whose current MSG record (msg_len bytes) is in msg_seg, with
 * older copies possibly in osegs, was removed; its DEL record is in t (NULL
 * when the DEL could not be written). */
static void acct_del(struct spool *s, uint32_t msg_seg, uint64_t msg_len, const uint32_t *osegs,
                     size_t n_osegs, const uint32_t *rsegs, size_t n, struct seg *t)
{
	for (size_t i = 0; i < n; i++)
		seg_unpin(s, rsegs[i]);
	seg_drop_live(s, seg_find(s, msg_seg, NULL), msg_len);
	add_tomb(s, msg_seg, t);
	for (size_t i = 0; i < n_osegs; i++)
		add_tomb(s, osegs[i], t);
}

/* e's MSG record now also exists, newer and complete, at rec_off in t
 * (record length rec_len, data at data_off): the copy in e->seg and every
 * RCPT record written before the new one are superseded. The old segment
 * must already be in e->osegs (so a later DEL still guards it). */
static void entry_move(struct spool *s, struct entry *e, struct seg *t, uint64_t rec_off,
                       uint64_t data_off, uint64_t rec_len)
{
	seg_drop_live(s, seg_find(s, e->seg, NULL), e->rec_len);
	for (size_t i = 0; i < e->n_rsegs; i++)
		seg_unpin(s, e->rsegs[i]);
	e->n_rsegs = 0;
	e->seg = t->no;
	e->rec_off = rec_off;
	e->data_off = data_off;
	e->rec_len = rec_len;
	t->live++;
	t->live_bytes += rec_len;
}

static bool msg_pending(const struct spool_msg *m)
{
	for (size_t i = 0; i < m->n_rcpts; i++)
		if (!spool_rcpt_state_final(m->rcpts[i].state))
			return true;
	return false;
}

/* ---- segment files -------------------------------------------------------- */

/* The error a failed write or sync reports: a full disk (or file size
 * limit) is TERN_ELIMIT, so that SMTP can say 452 4.3.1; the rest EIO. */
static int io_err(int e)
{
	return e == ENOSPC || e == EDQUOT || e == EFBIG ? TERN_ELIMIT : TERN_EIO;
}

static int dir_sync(struct spool *s)
{
	if (fsync(s->dirfd) != 0) {
		log_error("event=spool_dir_sync_failed dir=%s errno=%d", s->dir, errno);
		return TERN_EIO;
	}
	return TERN_OK;
}

/* Creates segment no, syncs the directory so the file's name is durable
 * before any record in it is acknowledged. */
static int seg_create(struct spool *s, uint32_t no, struct seg **out)
{
	char path[4096];
	struct seg *g = calloc(1, sizeof(*g));
	if (!g)
		return TERN_ENOMEM;
	g->no = no;
	g->ver = SPOOL_REC_V2;
	g->nonce = new_nonce();
	seg_path(s, g, path, sizeof(path));
	g->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (g->fd < 0) {
		log_error("event=spool_segment_create_failed path=%s errno=%d", path, errno);
		free(g);
		return TERN_EIO;
	}
	if (dir_sync(s) != TERN_OK) {
		close(g->fd);
		unlink(path);
		free(g);
		return TERN_EIO;
	}
	log_info("event=spool_segment_new seg=%" PRIu32 " prepared=0", no);
	*out = g;
	return TERN_OK;
}

/* ---- PREALLOC: segments prepared ahead ------------------------------------ */

/*
 * ext4 without a journal (and most file systems) must write the inode as
 * well as the data when an fdatasync follows an append that grew the file:
 * two I/Os per commit. So the next segment is prepared ahead, off the
 * commit path: the preparer thread creates it under a hidden name
 * (.prep-NONCE), writes it full of zeros, fdatasyncs it (data and size);
 * at a rotation the committer renames it to its segment name and syncs
 * the directory, as it would have after creating one. Appends then
 * overwrite blocks that exist and each commit's fdatasync writes data
 * only. Recovery reads the zeros after the last record as a clean end
 * (spool_scan). A spare is never in the segment table (reap must not
 * see it) and is removed at close and, if a crash left one, at open.
 * Preparing fails on a full disk: then segments are appended to as
 * before, with a log line (event=spool_prepare_failed).
 */

static void spare_name(uint64_t nonce, char *out, size_t outlen)
{
	snprintf(out, outlen, SPARE_PREFIX "%016" PRIx64, nonce);
}

/* Writes zeros over [from, to) of fd and fdatasyncs it. Blocks on the disk.
 * Each chunk is written out and waited for before the next is written, so
 * the disk's queue never holds more than a chunk of zeros ahead of the
 * committer's fdatasync (one sync of 64 MiB would make a commit wait for
 * all of it); the last fdatasync then has only the size to write. */
static int zero_fill(int fd, uint64_t from, uint64_t to, atomic_bool *stop)
{
	uint8_t *z = calloc(1, PREP_CHUNK);
	if (!z)
		return TERN_ENOMEM;
	int rc = TERN_OK;
	while (from < to) {
		if (stop && atomic_load(stop)) {
			rc = TERN_EINVAL;
			break;
		}
		size_t n = to - from < PREP_CHUNK ? (size_t)(to - from) : PREP_CHUNK;
		ssize_t w = pwrite(fd, z, n, (off_t)from);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			rc = io_err(w < 0 ? errno : ENOSPC);
			break;
		}
		if (sync_file_range(fd, (off_t)from, w,
		                    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
		                        SYNC_FILE_RANGE_WAIT_AFTER) != 0 &&
		    errno != ENOSYS && errno != EINVAL) {
			rc = io_err(errno);
			break;
		}
		from += (uint64_t)w;
	}
	free(z);
	if (rc == TERN_OK && fdatasync(fd) != 0)
		rc = io_err(errno);
	return rc;
}

/* Creates a hidden file of size zeros, synced. The preparer thread (or
 * spool_open, before the spool is in use): it blocks on the disk. */
static int spare_prepare(struct spool *s, uint64_t size, int *fd_out, uint64_t *nonce_out)
{
	uint64_t nonce = new_nonce();
	char name[64];
	spare_name(nonce, name, sizeof(name));
	int rc = TERN_OK;
	int fd = openat(s->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		rc = io_err(errno);
	else if ((rc = zero_fill(fd, 0, size, &s->prep_stop)) != TERN_OK) {
		int e = errno;
		close(fd);
		unlinkat(s->dirfd, name, 0);
		errno = e;
	}
	if (rc != TERN_OK) {
		if (!atomic_load(&s->prep_stop)) /* else: closing, not a failure */
			log_warn("event=spool_prepare_failed bytes=%" PRIu64 " errno=%d err=%s "
			         "action=append",
			         size, errno, tern_strerror(rc));
		return rc;
	}
	*fd_out = fd;
	*nonce_out = nonce;
	return TERN_OK;
}

/* RECYCLE: removes the file waiting in the bin, if any (it is not a
 * segment: nothing in it is wanted). Caller holds pmu; drops it while
 * removing. */
static void bin_drop_locked(struct spool *s, const char *why)
{
	if (s->bin_fd < 0)
		return;
	int fd = s->bin_fd;
	uint64_t nonce = s->bin_nonce, size = s->bin_size;
	s->bin_fd = -1;
	pthread_mutex_unlock(&s->pmu);
	char name[64];
	spare_name(nonce, name, sizeof(name));
	unlinkat(s->dirfd, name, 0);
	close(fd);
	log_info("event=spool_spare_removed bytes=%" PRIu64 " reason=%s recycled=1", size, why);
	pthread_mutex_lock(&s->pmu);
}

static void *preparer_main(void *arg)
{
	struct spool *s = arg;
	pthread_setname_np(pthread_self(), "spool-prep"); /* for top, perf, spool_bench */
	pthread_mutex_lock(&s->pmu);
	for (;;) {
		while (!s->pclosing && !s->n_grave && (s->spare_ready || !s->spare_want))
			pthread_cond_wait(&s->pcond, &s->pmu);
		if (s->n_grave) {
			grave_close(s);
			continue;
		}
		if (s->pclosing)
			break;
		uint64_t want = s->spare_want;
		if (s->bin_fd >= 0 && s->bin_size >= want) {
			/* RECYCLE: a finished segment's file, already in place
			 * under a spare's name: no zeros to write */
			s->spare_fd = s->bin_fd;
			s->spare_nonce = s->bin_nonce;
			s->spare_size = s->bin_size;
			s->spare_recycled = true;
			s->spare_ready = true;
			s->bin_fd = -1;
			continue;
		}
		bin_drop_locked(s, "smaller than wanted");
		pthread_mutex_unlock(&s->pmu);
		int fd = -1;
		uint64_t nonce = 0;
		int rc = spare_prepare(s, want, &fd, &nonce);
		pthread_mutex_lock(&s->pmu);
		if (rc != TERN_OK) {
			s->spare_want = 0; /* asked again at the next rotation */
			continue;
		}
		s->spare_fd = fd;
		s->spare_nonce = nonce;
		s->spare_size = want;
		s->spare_recycled = false;
		s->spare_ready = true;
	}
	pthread_mutex_unlock(&s->pmu);
	return NULL;
}

/* Committer: asks for the next spare, of the size wanted after one of
 * prev bytes (twice as big, within bounds). */
static void spare_ask(struct spool *s, uint64_t prev, uint64_t seg_max)
{
	uint64_t cap = seg_max < PREP_MAX_BYTES ? seg_max : PREP_MAX_BYTES;
	cap = cap < PREP_MIN_BYTES ? PREP_MIN_BYTES : (cap + 65535) & ~65535ull;
	uint64_t want = prev > cap / 2 ? cap : prev * 2;
	if (want < PREP_MIN_BYTES)
		want = PREP_MIN_BYTES;
	pthread_mutex_lock(&s->pmu);
	if (!s->spare_ready && s->spare_want != want) {
		s->spare_want = want;
		pthread_cond_signal(&s->pcond);
	}
	pthread_mutex_unlock(&s->pmu);
}

static bool spare_ready(struct spool *s)
{
	pthread_mutex_lock(&s->pmu);
	bool r = s->spare_ready;
	pthread_mutex_unlock(&s->pmu);
	return r;
}

/* Removes the spare, if one is ready (a full disk wants the space back, or
 * the spool closes). */
static void spare_drop(struct spool *s, const char *why)
{
	pthread_mutex_lock(&s->pmu);
	bool had = s->spare_ready;
	int fd = s->spare_fd;
	uint64_t nonce = s->spare_nonce, size = s->spare_size;
	s->spare_ready = false;
	s->spare_fd = -1;
	pthread_mutex_unlock(&s->pmu);
	if (!had)
		return;
	char name[64];
	spare_name(nonce, name, sizeof(name));
	close(fd);
	unlinkat(s->dirfd, name, 0);
	log_info("event=spool_spare_removed bytes=%" PRIu64 " reason=%s", size, why);
}

/* Committer (or open): makes the spare segment no: renames it into place
 * and syncs the directory. TERN_ENOTFOUND when no spare is ready. */
static int seg_from_spare(struct spool *s, uint32_t no, struct seg **out)
{
	pthread_mutex_lock(&s->pmu);
	bool ready = s->spare_ready;
	int fd = s->spare_fd;
	uint64_t nonce = s->spare_nonce, size = s->spare_size;
	bool recycled = s->spare_recycled;
	s->spare_ready = false;
	s->spare_fd = -1;
	if (ready)
		s->spare_want = 0; /* the next one's size comes with spare_ask */
	pthread_mutex_unlock(&s->pmu);
	if (!ready)
		return TERN_ENOTFOUND;
	char from[64], to[64];
	spare_name(nonce, from, sizeof(from));
	struct seg *g = calloc(1, sizeof(*g));
	if (!g) {
		close(fd);
		unlinkat(s->dirfd, from, 0);
		return TERN_ENOMEM;
	}
	g->no = no;
	g->ver = SPOOL_REC_V2;
	g->nonce = nonce;
	g->fd = fd;
	g->prep_end = size;
	g->prepared = !recycled;
	g->recycled = recycled;
	seg_name(g, to, sizeof(to));
	if (renameat(s->dirfd, from, s->dirfd, to) != 0) {
		log_warn("event=spool_prepare_failed seg=%" PRIu32 " reason=rename errno=%d "
		         "action=append",
		         no, errno);
		unlinkat(s->dirfd, from, 0);
		seg_free(g);
		return TERN_EIO;
	}
	if (dir_sync(s) != TERN_OK) {
		unlinkat(s->dirfd, to, 0); /* zeros only: nothing in it was acknowledged */
		seg_free(g);
		return TERN_EIO;
	}
	log_info("event=spool_segment_new seg=%" PRIu32 " prepared=%" PRIu64 " recycled=%d", no,
	         size, recycled);
	*out = g;
	return TERN_OK;
}

/* Open: removes the spares a crash left (they are not segments). */
static void spare_sweep(struct spool *s)
{
	int fd = openat(s->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	struct dirent *de;
	while ((de = readdir(d)))
		if (strncmp(de->d_name, SPARE_PREFIX, strlen(SPARE_PREFIX)) == 0 &&
		    unlinkat(s->dirfd, de->d_name, 0) == 0)
			log_info("event=spool_spare_removed file=%s reason=left_by_crash",
			         de->d_name);
	closedir(d);
}

/* Committer: makes a new current segment. The old one keeps its records;
 * its unsynced tail (RCPT/DEL records) is synced now, since later syncs
 * only cover the new file. */
static int rotate(struct spool *s, bool need, uint64_t seg_max)
{
	struct seg *g;
	int rc = seg_from_spare(s, s->cur->no + 1, &g);
	if (rc != TERN_OK && !need) {
		/* PREALLOC: a rotation only to reach prepared space; a spare that
		 * could not be put in place is gone: ask for another. */
		if (rc != TERN_ENOTFOUND)
			spare_ask(s, s->cur->prep_end ? s->cur->prep_end : PREP_MIN_BYTES, seg_max);
		return rc;
	}
	if (s->unsynced && fdatasync(s->cur->fd) != 0)
		log_warn("event=spool_sync_failed seg=%" PRIu32 " errno=%d", s->cur->no, errno);
	s->unsynced = false;
	if (rc != TERN_OK && (rc = seg_create(s, s->cur->no + 1, &g)) != TERN_OK)
		return rc;
	spare_ask(s, g->prep_end ? g->prep_end : PREP_MIN_BYTES, seg_max);
	pthread_mutex_lock(&s->mu);
	rc = seg_insert(s, g);
	if (rc == TERN_OK) {
		s->cur_no = g->no;
		s->reap_hint = true; /* the old segment may already be empty */
	}
	pthread_mutex_unlock(&s->mu);
	if (rc != TERN_OK) {
		char path[4096];
		seg_path(s, g, path, sizeof(path));
		unlink(path); /* new and empty */
		seg_free(g);
		return rc;
	}
	s->cur = g;
	s->cur_size = 0;
	s->cur_broken = false;
	return TERN_OK;
}

/* Unlinks segment g's file. TERN_OK (also if it is gone already) or TERN_EIO. */
static int seg_unlink(struct spool *s, struct seg *g)
{
	char name[64];
	seg_name(g, name, sizeof(name));
	if (unlinkat(s->dirfd, name, 0) != 0 && errno != ENOENT) {
		log_warn("event=spool_segment_unlink_failed seg=%" PRIu32 " file=%s errno=%d",
		         g->no, name, errno);
		return TERN_EIO;
	}
	log_info("event=spool_segment_removed seg=%" PRIu32, g->no);
	return TERN_OK;
}

/* Moves the damaged segment g into DIR/damaged/ (never over another file)
 * and syncs that directory; the caller syncs DIR. TERN_OK or TERN_EIO. */
static int seg_set_aside(struct spool *s, struct seg *g)
{
	char name[64], to[96];
	seg_name(g, name, sizeof(name));
	snprintf(to, sizeof(to), DAMAGED_DIR "/%s", name);
	if (mkdirat(s->dirfd, DAMAGED_DIR, 0700) != 0 && errno != EEXIST) {
		log_error("event=spool_set_aside_failed seg=%" PRIu32 " reason=mkdir errno=%d",
		          g->no, errno);
		return TERN_EIO;
	}
	int rc = renameat2(s->dirfd, name, s->dirfd, to, RENAME_NOREPLACE);
	if (rc != 0 && errno == EINVAL) {
		/* A file system without RENAME_NOREPLACE: check, then rename. */
		struct stat st;
		if (fstatat(s->dirfd, to, &st, AT_SYMLINK_NOFOLLOW) == 0)
			errno = EEXIST;
		else
			rc = renameat(s->dirfd, name, s->dirfd, to);
	}
	if (rc != 0) {
		log_error("event=spool_set_aside_failed seg=%" PRIu32
		          " file=%s errno=%d action=kept",
		          g->no, name, errno);
		return TERN_EIO;
	}
	int dfd = openat(s->dirfd, DAMAGED_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fsync(dfd) != 0)
		log_warn("event=spool_dir_sync_failed dir=%s/" DAMAGED_DIR " errno=%d", s->dir,
		         errno);
	if (dfd >= 0)
		close(dfd);
	pthread_mutex_lock(&s->mu);
	size_t n = 0;
	for (size_t i = 0; i < s->n_dmg; i++)
		if (s->dmg[i].seg == g->no && strcmp(s->dmg[i].file, name) == 0) {
			tern_strlcpy(s->dmg[i].file, to, sizeof(s->dmg[i].file));
			n++;
		}
	pthread_mutex_unlock(&s->mu);
	log_error("event=spool_segment_set_aside seg=%" PRIu32 " file=%s ranges=%zu", g->no, to, n);
	return TERN_OK;
}

/*
 * RECYCLE: a finished segment's file becomes the next spare instead of
 * being unlinked, when the bin is empty and the file is big enough: renamed
 * to a spare's name under a new nonce (the reap's directory sync makes that
 * durable, as it does an unlink), it is overwritten by the records of the
 * segment it becomes. That writes no zeros ahead (a 64 MiB segment's worth
 * every time one is used up) and frees no blocks (a 64 MiB file's took
 * 10-25 ms of the disk, ext4 with discard). Its old records carry another
 * nonce, so recovery reads them as the end of the new segment's records
 * ("-r" name, spool_record.c); a spare is never a segment, so a crash
 * before it is used leaves it to spare_sweep. TERN_OK: renamed.
 */
static int seg_recycle(struct spool *s, struct seg *g)
{
	struct stat st;
	pthread_mutex_lock(&s->pmu);
	bool room = s->bin_fd < 0 && !s->pclosing;
	pthread_mutex_unlock(&s->pmu);
	if (!room || g->fd < 0 || fstat(g->fd, &st) != 0 || (uint64_t)st.st_size < PREP_MIN_BYTES)
		return TERN_ENOTFOUND;
	char from[64], to[64];
	seg_name(g, from, sizeof(from));
	uint64_t nonce = new_nonce();
	spare_name(nonce, to, sizeof(to));
	if (renameat(s->dirfd, from, s->dirfd, to) != 0) {
		log_warn("event=spool_recycle_failed seg=%" PRIu32 " errno=%d action=unlink", g->no,
		         errno);
		return TERN_EIO;
	}
	g->nonce = nonce;        /* the spare's now (seg_free does not look) */
	g->size = (uint64_t)st.st_size;
	log_info("event=spool_segment_recycled seg=%" PRIu32 " bytes=%" PRIu64, g->no, g->size);
	return TERN_OK;
}

/* RECYCLE: after the directory sync, the recycled file waits in the bin for
 * the preparer (preparer_main takes it as the next spare). */
static void bin_put(struct spool *s, struct seg *g)
{
	pthread_mutex_lock(&s->pmu);
	if (s->bin_fd < 0 && g->fd >= 0) {
		s->bin_fd = g->fd;
		s->bin_nonce = g->nonce;
		s->bin_size = g->size;
		g->fd = -1;
		pthread_cond_signal(&s->pcond);
	}
	pthread_mutex_unlock(&s->pmu);
	if (TERN_BUG_ON(g->fd >= 0)) { /* one committer fills the bin: not a segment */
		char name[64];
		spare_name(g->nonce, name, sizeof(name));
		unlinkat(s->dirfd, name, 0);
	}
}

/* Committer (or open, before the committer runs): removes every segment
 * that nothing needs any more — unlinked, or set aside if it is damaged. */
static void reap(struct spool *s)
{
	for (;;) {
		struct seg *dead[64];
		bool aside[64], kept[64], recycled[64];
		size_t nd = 0, pick = SIZE_MAX;
		pthread_mutex_lock(&s->mu);
		s->reap_hint = false;
		for (size_t i = 0; i < s->n_segs && nd < 64;) {
			struct seg *g = s->segs[i];
			if (g->no != s->cur_no && g->live == 0 && g->pins == 0 && g->apins == 0 &&
			    !g->keep) {
				/* RECYCLE: one healthy version 2 file nobody reads (out
				 * of the table now, so nobody will) */
				if (pick == SIZE_MAX && !g->damaged && g->ver == SPOOL_REC_V2 &&
				    g->readers == 0)
					pick = nd;
				aside[nd] = g->damaged;
				recycled[nd] = false;
				dead[nd++] = g;
				seg_remove_at(s, i);
			} else {
				i++;
			}
		}
		pthread_mutex_unlock(&s->mu);
		if (nd == 0)
			return;
		/* The records that released these segments must be durable before
		 * the segments go, or a crash could resurrect finished work. */
		if (s->unsynced && s->cur) {
			if (fdatasync(s->cur->fd) == 0)
				s->unsynced = false;
			else
				log_warn("event=spool_sync_failed seg=%" PRIu32 " errno=%d",
				         s->cur->no, errno);
		}
		for (size_t i = 0; i < nd; i++) {
			struct seg *g = dead[i];
			if (i == pick && seg_recycle(s, g) == TERN_OK)
				recycled[i] = true, kept[i] = false;
			else
				kept[i] =
				    (aside[i] ? seg_set_aside(s, g) : seg_unlink(s, g)) != TERN_OK;
			fault_point(s, FAULT_REAP_UNLINK);
		}
		/* Tombstones in other segments may go only once these unlinks are
		 * durable. */
		dir_sync(s);
		pthread_mutex_lock(&s->mu);
		for (size_t i = 0; i < nd; i++) {
			struct seg *g = dead[i];
			if (kept[i]) {
				/* Still in DIR, so still read at the next start: it
				 * keeps its place, its tombstones and its fd. The table
				 * had room for it a moment ago. */
				g->keep = true;
				TERN_BUG_ON(seg_insert(s, g) != TERN_OK);
				dead[i] = NULL;
				continue;
			}
			for (size_t k = 0; k < g->n_tombs; k++)
				seg_unpin(s, g->tombs[k]);
			if (g->readers) {
				g->orphan = true;
				g = NULL;
			}
			dead[i] = g;
		}
		pthread_mutex_unlock(&s->mu);
		for (size_t i = 0; i < nd; i++) {
			if (dead[i] && recycled[i])
				bin_put(s, dead[i]); /* its name is gone for good: the bin's */
			if (dead[i])
				seg_retire(s, dead[i]);
		}
	}
}

/* ---- committer ------------------------------------------------------------ */

/* Writes every record of the batch at off with as few pwritev calls as the
 * iovec limit allows, continuing after partial writes. */
static int write_batch(int fd, struct item *it, uint64_t off)
{
	size_t skip = 0; /* bytes of *it already written */
	while (it) {
		struct iovec iov[IOV_CHUNK];
		int n = 0;
		size_t sk = skip;
		for (struct item *p = it; p && n < IOV_CHUNK; p = p->next) {
			iov[n].iov_base = p->buf + sk;
			iov[n].iov_len = p->len - sk;
			sk = 0;
			n++;
		}
		ssize_t w = pwritev(fd, iov, n, (off_t)off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = w < 0 ? errno : EIO;
			log_error("event=spool_write_failed errno=%d", e);
			return io_err(e);
		}
		off += (uint64_t)w;
		size_t left = (size_t)w;
		while (left) {
			size_t rem = it->len - skip;
			if (left >= rem) {
				left -= rem;
				it = it->next;
				skip = 0;
			} else {
				skip += left;
				left = 0;
			}
		}
	}
	return TERN_OK;
}

/* Committer: the index side of a batch. err is the batch's write result. */
/* ARCHIVE: keeps the spill file of id (named name) for the archive. Caller
 * holds mu. Without memory the file is not kept: the archive then finds
 * it gone and logs the loss (event=archive_read_failed). */
static void aspill_add(struct spool *s, const char *id, const char *name, bool dead)
{
	for (size_t i = 0; i < s->n_aspill; i++)
		if (strcmp(s->aspill[i].id, id) == 0)
			return; /* recovery read a compaction copy too */
	if (s->n_aspill == s->cap_aspill) {
		size_t nc = s->cap_aspill ? s->cap_aspill * 2 : 8;
		struct apin_spill *v = realloc(s->aspill, nc * sizeof(*v));
		if (!v)
			goto nomem;
		s->aspill = v;
		s->cap_aspill = nc;
	}
	struct apin_spill *a = &s->aspill[s->n_aspill];
	if (!(a->name = tern_strdup(name)))
		goto nomem;
	memcpy(a->id, id, sizeof(a->id));
	a->dead = dead;
	s->n_aspill++;
	return;
nomem:
	log_error("event=spool_pin_failed id=%s reason=nomem what=archive_spill", id);
}

/* ARCHIVE: the DEL of id is written; true when the archive still wants its
 * spill file (the archive's release unlinks it then). */
static bool aspill_dead(struct spool *s, const char *id)
{
	bool kept = false;
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < s->n_aspill; i++)
		if (strcmp(s->aspill[i].id, id) == 0) {
			s->aspill[i].dead = true;
			kept = true;
			break;
		}
	pthread_mutex_unlock(&s->mu);
	return kept;
}

static void commit_account(struct spool *s, struct item *batch, struct seg *cur, uint64_t start,
                           int err, size_t n_msgs, spool_archive_want want, void *harg)
{
	pthread_mutex_lock(&s->mu);
	if (err == TERN_OK && n_msgs)
		s->stats.commits++;
	uint64_t off = start;
	for (struct item *it = batch; it; it = it->next) {
		uint64_t rec_off = off;
		off += it->len;
		if (it->type == SPOOL_REC_MSG && it->copy) {
			it->result = err;
			struct entry *e = idx_get(&s->idx, it->id, NULL);
			if (e && e->copy == it) {
				e->copy = NULL;
				if (err == TERN_OK)
					entry_move(s, e, cur, rec_off, rec_off + it->data_off,
					           it->len);
			} else if (it->del_item) {
				/* Removed after the copy was queued: its DEL (later in
				 * the log) must outlive this copy too. Kept even if the
				 * write failed: an extra pin only delays a removal. */
				bool added;
				if (u32set_add(&it->del_item->osegs, &it->del_item->n_osegs,
				               &it->del_item->cap_osegs, cur->no,
				               &added) != TERN_OK)
					log_warn("event=spool_pin_failed seg=%" PRIu32 " id=%s",
					         cur->no, it->id);
			}
		} else if (it->type == SPOOL_REC_MSG) {
			it->result = err;
			if (err != TERN_OK)
				continue;
			struct entry *e = NULL;
			if (idx_get(&s->idx, it->id, NULL)) {
				/* Recovery keeps the first copy of an id too, unless
				 * the later one is the same message (a compaction copy). */
				it->result = TERN_EEXIST;
			} else if (!(e = calloc(1, sizeof(*e)))) {
				it->result = TERN_ENOMEM;
			} else {
				memcpy(e->id, it->id, sizeof(e->id));
				e->seg = cur->no;
				e->rec_off = rec_off;
				e->data_off = rec_off + it->data_off;
				e->data_len = it->msg->size - spool_msg_tail(it->msg);
				e->rec_len = it->len;
				e->msg = it->msg;
				it->result = idx_put(&s->idx, e);
				if (it->result == TERN_OK) {
					it->msg = NULL;
					cur->live++;
					cur->live_bytes += it->len;
					s->stats.puts++;
					/* ARCHIVE: pinned before any DEL can be
					 * accounted (same lock, later batch) */
					if (want && want(harg, e->msg)) {
						it->apin = true;
						it->rec_seg = cur->no;
						it->rec_off = rec_off;
						cur->apins++;
						if (e->msg->spill)
							aspill_add(s, e->id, e->msg->spill, false);
					}
				} else {
					/* On disk but not indexed: a redelivery after a
					 * restart at worst, never a loss. */
					e->msg = NULL;
					free(e);
				}
			}
		} else if (it->type == SPOOL_REC_RCPT) {
			struct entry *e = idx_get(&s->idx, it->id, NULL);
			if (err == TERN_OK && e)
				acct_rcpt(s, e, cur);
		} else {
			it->result = err;
			acct_del(s, it->del_seg, it->del_len, it->osegs, it->n_osegs, it->rsegs,
			         it->n_rsegs, err == TERN_OK ? cur : NULL);
		}
	}
	if (err == TERN_OK)
		cur->size = off;
	pthread_mutex_unlock(&s->mu);
}

static void commit_batch(struct spool *s, struct item *batch, uint64_t seg_max)
{
	size_t n_msgs = 0, n_recs = 0;
	uint64_t total = 0;
	for (struct item *it = batch; it; it = it->next) {
		n_msgs += it->type == SPOOL_REC_MSG;
		n_recs++;
		total += it->len;
	}
	pthread_mutex_lock(&s->qmu);
	spool_commit_hook hook = s->hook;
	spool_archive_want want = hook ? s->want : NULL;
	void *harg = s->hook_arg;
	pthread_mutex_unlock(&s->qmu);
	/* PREALLOC: past the prepared space, move on to a prepared spare as
	 * soon as one is ready rather than grow the file (unless the current
	 * segment is small and was not prepared: then at seg_max, as ever). */
	bool full = s->cur_size >= seg_max || s->cur_broken;
	bool past = !full && s->cur_size > 0 && s->cur_size + total > s->cur->prep_end &&
	            (s->cur->prep_end > 0 || s->cur_size >= PREP_MIN_BYTES) && spare_ready(s);
	if (past)
		rotate(s, false, seg_max);
	if (full && rotate(s, true, seg_max) != TERN_OK && s->cur_broken) {
		/* The current file holds garbage we could not cut off, and no new
		 * file can be made: fail the batch rather than write after it. */
		commit_account(s, batch, s->cur, s->cur_size, TERN_EIO, n_msgs, want, harg);
		goto callbacks;
	}

	uint64_t start = s->cur_size;
	struct seg *cur = s->cur;
	bool puts = false, copies = false;
	for (struct item *it = batch; it; it = it->next) {
		/* Now that the segment is known, every record gets its nonce. */
		spool_rec_stamp((uint8_t *)it->buf, cur->nonce);
		puts |= it->type == SPOOL_REC_MSG && !it->copy;
		copies |= it->copy;
	}
	struct timespec t0 = metric_now(); /* tern_spool_commit_duration_seconds */
	int err = write_batch(cur->fd, batch, start);
	if (err == TERN_OK) {
		fault_point(s, puts ? FAULT_COMMIT_WRITE : FAULT_NONE);
		fault_point(s, copies ? FAULT_COMPACT_WRITE : FAULT_NONE);
	}
	if (err == TERN_OK && n_msgs && fdatasync(cur->fd) != 0) {
		int e = errno;
		log_error("event=spool_sync_failed seg=%" PRIu32 " errno=%d", cur->no, e);
		err = io_err(e);
	}
	if (err == TERN_OK && n_msgs)
		metric_observe_since(M_SPOOL_COMMIT_DURATION, &t0);
	if (err == TERN_OK)
		fault_point(s, puts ? FAULT_COMMIT_SYNC : FAULT_NONE);
	if (err == TERN_OK) {
		s->cur_size = start + total;
		s->unsynced = n_msgs == 0;
	} else {
		/* Nothing of this batch may survive: recovery would otherwise
		 * resurrect a message whose put was failed. */
		log_warn("event=spool_batch_failed seg=%" PRIu32 " offset=%" PRIu64
		         " records=%zu messages=%zu bytes=%" PRIu64,
		         cur->no, start, n_recs, n_msgs, total);
		if (ftruncate(cur->fd, (off_t)start) != 0) {
			log_error("event=spool_truncate_failed seg=%" PRIu32 " errno=%d", cur->no,
			          errno);
			s->cur_broken = true;
		}
		pthread_mutex_lock(&s->mu);
		if (cur->prep_end > start)
			cur->prep_end = start; /* the prepared space past start is gone */
		pthread_mutex_unlock(&s->mu);
		/* A full disk: give it the spare's space back. */
		if (err == TERN_ELIMIT)
			spare_drop(s, "disk_full");
	}
	commit_account(s, batch, cur, start, err, n_msgs, want, harg);
	if (err == TERN_OK)
		fault_point(s, copies ? FAULT_COMPACT_SYNC : FAULT_NONE);

callbacks:
	for (struct item *it = batch; it; it = it->next)
		if (it->type == SPOOL_REC_MSG && !it->copy && it->cb)
			it->cb(it->arg, it->result);
	/* The commit hook (the archive), after every reply of the batch is on
	 * its way. */
	for (struct item *it = batch; hook && it; it = it->next)
		if (it->apin) {
			struct spool_ref ref = {
			    .seg = it->rec_seg, .rec_off = it->rec_off, .rec_len = it->len};
			memcpy(ref.id, it->id, sizeof(ref.id));
			hook(harg, &ref);
		}
	pthread_mutex_lock(&s->mu);
	bool hint = s->reap_hint;
	pthread_mutex_unlock(&s->mu);
	if (hint)
		reap(s);
	/* Compaction copies report after the reap, so spool_maintain returns
	 * with the segments it emptied gone. */
	for (struct item *it = batch; it; it = it->next)
		if (it->copy && it->cb)
			it->cb(it->arg, it->result);
	while (batch) {
		struct item *nx = batch->next;
		/* SPILL: the DEL is written, so no replay can want the file. */
		if (batch->type == SPOOL_REC_DEL && batch->spill && batch->result == TERN_OK &&
		    !aspill_dead(s, batch->id))
			spill_unlink(s->dirfd, batch->spill);
		item_free(batch);
		batch = nx;
	}
}

static void *committer_main(void *arg)
{
	struct spool *s = arg;
	pthread_setname_np(pthread_self(), "spool-commit");
	for (;;) {
		pthread_mutex_lock(&s->qmu);
		/* A put (or anything with a callback) is written at once. RCPT and
		 * DEL records alone wait up to LAZY_NS for one to ride with: under
		 * load they cost no wake-up and no write of their own. */
		struct timespec dl;
		clock_gettime(CLOCK_MONOTONIC, &dl);
		dl.tv_nsec += LAZY_NS;
		if (dl.tv_nsec >= 1000000000L) {
			dl.tv_sec++;
			dl.tv_nsec -= 1000000000L;
		}
		bool timed_out = false;
		while (!s->q_urgent && !s->closing && !timed_out && !s->q_reap) {
			if (!s->qhead && s->q_sleeping) {
				pthread_cond_wait(&s->qcond, &s->qmu);
				continue;
			}
			timed_out = pthread_cond_timedwait(&s->qcond, &s->qmu, &dl) == ETIMEDOUT;
			if (timed_out && !s->qhead) {
				/* Nothing came in the window: sleep until something does. */
				s->q_sleeping = true;
				timed_out = false;
			}
		}
		s->q_sleeping = false;
		s->q_urgent = false;
		bool reap_req = s->q_reap;
		s->q_reap = false;
		struct item *batch = s->qhead;
		s->qhead = s->qtail = NULL;
		s->q_bytes = 0;
		uint64_t seg_max = s->seg_max;
		pthread_mutex_unlock(&s->qmu);
		if (!batch && reap_req) {
			reap(s); /* ARCHIVE: released pins (spool_archive_release) */
			continue;
		}
		if (!batch)
			break; /* closing and drained */
		commit_batch(s, batch, seg_max);
	}
	if (s->unsynced && s->cur) {
		if (fdatasync(s->cur->fd) != 0)
			log_warn("event=spool_sync_failed seg=%" PRIu32 " errno=%d", s->cur->no,
			         errno);
		s->unsynced = false;
	}
	return NULL;
}

/* Queues an item; fails once the spool is closing. */
static int enqueue(struct spool *s, struct item *it)
{
	pthread_mutex_lock(&s->qmu);
	if (s->closing) {
		pthread_mutex_unlock(&s->qmu);
		return TERN_EINVAL;
	}
	if (it->type == SPOOL_REC_MSG && s->q_bytes + it->len > PENDING_MAX_BYTES) {
		pthread_mutex_unlock(&s->qmu);
		return TERN_ELIMIT;
	}
	it->next = NULL;
	if (s->qtail)
		s->qtail->next = it;
	else
		s->qhead = it;
	s->qtail = it;
	s->q_bytes += it->len;
	bool urgent = it->cb || s->q_bytes > LAZY_MAX_BYTES;
	s->q_urgent |= urgent;
	if (urgent || s->q_sleeping)
		pthread_cond_signal(&s->qcond);
	pthread_mutex_unlock(&s->qmu);
	return TERN_OK;
}

/* ---- recovery ---------------------------------------------------------- */

static int pread_all(int fd, void *buf, size_t n, uint64_t off)
{
	char *p = buf;
	while (n) {
		ssize_t r = pread(fd, p, n, (off_t)off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return TERN_EIO;
		p += r;
		n -= (size_t)r;
		off += (uint64_t)r;
	}
	return TERN_OK;
}

static bool str_eq_opt(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

/* True when b is a copy of message a: everything but the recipients'
 * progress (state, attempts, next_try, last reply) is equal. */
static bool msg_same(const struct spool_msg *a, const struct spool_msg *b)
{
	if (memcmp(a->id, b->id, QUEUE_ID_LEN) || !str_eq_opt(a->sender, b->sender) ||
	    a->created != b->created || a->body != b->body || a->ret != b->ret ||
	    a->smtputf8 != b->smtputf8 || a->trusted_client != b->trusted_client ||
	    !str_eq_opt(a->envid, b->envid) || !str_eq_opt(a->client, b->client) ||
	    !str_eq_opt(a->auth, b->auth) || !str_eq_opt(a->api_key, b->api_key) ||
	    a->not_before != b->not_before || a->size != b->size || a->n_rcpts != b->n_rcpts ||
	    !str_eq_opt(a->spill, b->spill))
		return false;
	for (size_t i = 0; i < a->n_rcpts; i++) {
		const struct spool_rcpt *x = &a->rcpts[i], *y = &b->rcpts[i];
		if (!str_eq_opt(x->addr, y->addr) || !str_eq_opt(x->orcpt, y->orcpt) ||
		    x->notify != y->notify || x->local != y->local)
			return false;
	}
	return true;
}

/* ARCHIVE (SPOOL_OPEN_ARCHIVE): every MSG record recovery reads is pinned
 * and listed for spool_archive_recovered, finished or not: the spool does
 * not know what the archive has, the archive releases what it has. */
static int arec_add(struct spool *s, struct seg *g, const struct spool_msg *m, uint64_t off,
                    uint64_t len)
{
	if (s->n_arec == s->cap_arec) {
		size_t nc = s->cap_arec ? s->cap_arec * 2 : 64;
		struct spool_ref *v = realloc(s->arec, nc * sizeof(*v));
		if (!v)
			return TERN_ENOMEM;
		s->arec = v;
		s->cap_arec = nc;
	}
	struct spool_ref *r = &s->arec[s->n_arec++];
	*r = (struct spool_ref){.seg = g->no, .rec_off = off, .rec_len = len};
	memcpy(r->id, m->id, sizeof(r->id));
	g->apins++;
	if (m->spill)
		aspill_add(s, m->id, m->spill, false);
	return TERN_OK;
}

/* Applies one verified record found at off in segment g. Caller holds mu. */
static int replay_record(struct spool *s, struct seg *g, const struct spool_rec_hdr *h,
                         const uint8_t *p, uint64_t off)
{
	if (h->type == SPOOL_REC_MSG) {
		struct spool_msg *m;
		size_t doff;
		int rc = spool_rec_decode_msg(p, h->len, &m, &doff);
		if (rc != TERN_OK)
			return rc;
		if (s->archive &&
		    (rc = arec_add(s, g, m, off, (uint64_t)h->hdr_len + h->len)) != TERN_OK) {
			spool_msg_free(m);
			return rc;
		}
		struct entry *old = idx_get(&s->idx, m->id, NULL);
		if (old && msg_same(old->msg, m)) {
			/* A compaction copy: it holds the recipients' state as of
			 * when it was written, so it replaces the older copy and
			 * every RCPT record before it; records after it apply. */
			bool added;
			int rc2 = u32set_add(&old->osegs, &old->n_osegs, &old->cap_osegs, old->seg,
			                     &added);
			if (rc2 != TERN_OK) {
				spool_msg_free(m);
				return rc2;
			}
			entry_move(s, old, g, off, off + h->hdr_len + doff,
			           (uint64_t)h->hdr_len + h->len);
			spool_msg_free(old->msg);
			old->msg = m;
			return TERN_OK;
		}
		if (old) {
			/* A different message under a used id (a put refused with
			 * EEXIST): the first one stays. */
			log_warn("event=spool_recover seg=%" PRIu32 " offset=%" PRIu64
			         " duplicate_id=%s",
			         g->no, off, m->id);
			spool_msg_free(m);
			return TERN_OK;
		}
		struct entry *e = calloc(1, sizeof(*e));
		if (!e) {
			spool_msg_free(m);
			return TERN_ENOMEM;
		}
		memcpy(e->id, m->id, sizeof(e->id));
		e->seg = g->no;
		e->rec_off = off;
		e->data_off = off + h->hdr_len + doff;
		e->data_len = m->size - spool_msg_tail(m);
		e->rec_len = (uint64_t)h->hdr_len + h->len;
		e->msg = m;
		if ((rc = idx_put(&s->idx, e)) != TERN_OK) {
			entry_free(e);
			return rc;
		}
		g->live++;
		g->live_bytes += e->rec_len;
		return TERN_OK;
	}
	if (h->type == SPOOL_REC_RCPT) {
		struct spool_rec_rcpt r;
		int rc = spool_rec_decode_rcpt(p, h->len, &r);
		if (rc != TERN_OK)
			return rc;
		struct entry *e = idx_get(&s->idx, r.id, NULL);
		if (e && r.idx < e->msg->n_rcpts) {
			struct spool_rcpt *t = &e->msg->rcpts[r.idx];
			t->state = r.state;
			t->attempts = r.attempts;
			t->next_try = r.next_try;
			if (r.reply) {
				free(t->last_reply);
				t->last_reply = r.reply;
				r.reply = NULL;
			}
			acct_rcpt(s, e, g);
		} else if (e) {
			log_warn("event=spool_recover seg=%" PRIu32 " offset=%" PRIu64
			         " id=%s bad_rcpt_index=%" PRIu32,
			         g->no, off, r.id, r.idx);
		}
		free(r.reply);
		return TERN_OK;
	}
	char id[QUEUE_ID_LEN + 1];
	int rc = spool_rec_decode_del(p, h->len, id);
	if (rc != TERN_OK)
		return rc;
	size_t slot;
	struct entry *e = idx_get(&s->idx, id, &slot);
	if (e) {
		idx_del_slot(&s->idx, slot);
		acct_del(s, e->seg, e->rec_len, e->osegs, e->n_osegs, e->rsegs, e->n_rsegs, g);
		entry_free(e);
	}
	return TERN_OK;
}

/* spool_scan callbacks for a segment being recovered (or, with replay
 * false, one in DIR/damaged/ being listed). */
struct scan_arg {
	struct spool *s;
	struct seg *g;
	bool replay;
	const char *file; /* relative to the spool dir */
};

static int scan_read(void *arg, uint64_t off, void *buf, size_t n)
{
	struct scan_arg *a = arg;
	int rc = pread_all(a->g->fd, buf, n, off);
	if (rc != TERN_OK)
		log_error("event=spool_read_failed seg=%" PRIu32 " offset=%" PRIu64 " errno=%d",
		          a->g->no, off, errno);
	return rc;
}

static int scan_record(void *arg, const struct spool_rec_hdr *h, const uint8_t *p, uint64_t off)
{
	struct scan_arg *a = arg;
	if (!a->replay)
		return TERN_OK;
	pthread_mutex_lock(&a->s->mu);
	int rc = replay_record(a->s, a->g, h, p, off);
	pthread_mutex_unlock(&a->s->mu);
	return rc;
}

static int scan_damage(void *arg, const struct spool_scan_damage *d)
{
	struct scan_arg *a = arg;
	pthread_mutex_lock(&a->s->mu);
	a->g->damaged = true;
	damage_add(a->s, a->g->no, a->file, d->off, d->len, d->kind, d->rec_type, d->id);
	pthread_mutex_unlock(&a->s->mu);
	return TERN_OK;
}

struct seg_ent {
	uint32_t no;
	unsigned ver;
	uint64_t nonce;
	bool prepared;
	bool recycled;
	char name[64];
};

static int cmp_seg_ent(const void *a, const void *b)
{
	uint32_t x = ((const struct seg_ent *)a)->no, y = ((const struct seg_ent *)b)->no;
	return x < y ? -1 : x > y;
}

/* Segment files found in dirfd's directory, sorted by number. Other names
 * are ignored. */
static int list_segments(int dirfd, const char *dir, struct seg_ent **out, size_t *n_out)
{
	*out = NULL;
	*n_out = 0;
	int fd = openat(dirfd, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return errno == ENOENT ? TERN_ENOTFOUND : TERN_EIO;
	}
	struct seg_ent *v = NULL;
	size_t n = 0, cap = 0;
	int rc = TERN_OK;
	struct dirent *de;
	while ((de = readdir(d))) {
		struct seg_ent e;
		if (!seg_parse_name(de->d_name, &e.no, &e.ver, &e.nonce, &e.prepared, &e.recycled))
			continue;
		tern_strlcpy(e.name, de->d_name, sizeof(e.name));
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 16;
			struct seg_ent *p = realloc(v, nc * sizeof(*p));
			if (!p) {
				rc = TERN_ENOMEM;
				break;
			}
			v = p;
			cap = nc;
		}
		v[n++] = e;
	}
	closedir(d);
	if (rc != TERN_OK) {
		free(v);
		return rc;
	}
	if (n)
		qsort(v, n, sizeof(*v), cmp_seg_ent);
	*out = v;
	*n_out = n;
	return TERN_OK;
}

/* Lists the damage in the files an earlier run set aside in DIR/damaged/,
 * so that it stays reported until an operator removes them. Reads only. */
static int scan_set_aside(struct spool *s, struct tbuf *pay)
{
	struct seg_ent *v;
	size_t n;
	int rc = list_segments(s->dirfd, DAMAGED_DIR, &v, &n);
	if (rc == TERN_ENOTFOUND)
		return TERN_OK;
	if (rc != TERN_OK) {
		/* Only the report suffers: the queue itself is elsewhere. */
		log_error("event=spool_damaged_dir_unreadable dir=%s/" DAMAGED_DIR " errno=%d",
		          s->dir, errno);
		return rc == TERN_ENOMEM ? rc : TERN_OK;
	}
	for (size_t i = 0; i < n && rc == TERN_OK; i++) {
		char file[96];
		snprintf(file, sizeof(file), DAMAGED_DIR "/%s", v[i].name);
		struct seg g = {.no = v[i].no,
		                .ver = v[i].ver,
		                .nonce = v[i].nonce,
		                .prepared = v[i].prepared,
		                .recycled = v[i].recycled};
		struct stat st;
		g.fd = openat(s->dirfd, file, O_RDONLY | O_CLOEXEC);
		if (g.fd < 0 || fstat(g.fd, &st) != 0) {
			log_error("event=spool_damaged seg=%" PRIu32 " file=%s kind=read-error "
			          "errno=%d action=kept",
			          g.no, file, errno);
			damage_add(s, g.no, file, 0, 0, SPOOL_DAMAGE_READ_ERROR, 0, NULL);
			if (g.fd >= 0)
				close(g.fd);
			continue;
		}
		struct scan_arg a = {s, &g, false, file};
		struct spool_scan_ops ops = {&a, scan_read, scan_record, scan_damage};
		struct spool_seg_fmt f = seg_fmt(&g);
		struct spool_scan_result res;
		rc = spool_scan(&ops, (uint64_t)st.st_size, &f, pay, &res);
		if (rc == TERN_OK && res.torn_off < res.zero_off)
			damage_add(s, g.no, file, res.torn_off, res.zero_off - res.torn_off,
			           SPOOL_DAMAGE_TORN, 0, NULL);
		if (rc == TERN_OK && !g.damaged)
			damage_add(s, g.no, file, 0, 0, SPOOL_DAMAGE_NONE, 0, NULL);
		close(g.fd);
	}
	free(v);
	return rc;
}

/* Reads every segment in order and rebuilds the index. Picks the current
 * segment: the last one if it is in this version's format and ends cleanly
 * (after cutting a torn tail), else a new one. */
static int recover(struct spool *s)
{
	struct seg_ent *ents;
	size_t n;
	int rc = list_segments(s->dirfd, ".", &ents, &n);
	if (rc != TERN_OK) {
		log_error("event=spool_open_failed dir=%s errno=%d", s->dir, errno);
		return rc == TERN_ENOTFOUND ? TERN_EIO : rc;
	}
	struct tbuf pay = TBUF_INIT(SPOOL_REC_MAX_PAYLOAD);
	if ((rc = scan_set_aside(s, &pay)) != TERN_OK)
		goto out;
	bool need_new = true;
	for (size_t i = 0; i < n; i++) {
		if (i && ents[i].no == ents[i - 1].no) {
			/* Two formats of one number: not something tern writes.
			 * Reading either alone could replay the log out of order. */
			log_error("event=spool_open_failed reason=duplicate_segment seg=%" PRIu32
			          " files=%s,%s",
			          ents[i].no, ents[i - 1].name, ents[i].name);
			rc = TERN_EEXIST;
			goto out;
		}
		struct seg *g = calloc(1, sizeof(*g));
		if (!g) {
			rc = TERN_ENOMEM;
			goto out;
		}
		g->no = ents[i].no;
		g->ver = ents[i].ver;
		g->nonce = ents[i].nonce;
		g->prepared = ents[i].prepared;
		g->recycled = ents[i].recycled;
		g->fd = openat(s->dirfd, ents[i].name, O_RDWR | O_CLOEXEC);
		struct stat st;
		if (g->fd < 0 || fstat(g->fd, &st) != 0) {
			log_error("event=spool_open_failed path=%s/%s errno=%d", s->dir,
			          ents[i].name, errno);
			seg_free(g);
			rc = TERN_EIO;
			goto out;
		}
		pthread_mutex_lock(&s->mu);
		rc = seg_insert(s, g);
		pthread_mutex_unlock(&s->mu);
		if (rc != TERN_OK) {
			seg_free(g);
			goto out;
		}
		uint64_t size = (uint64_t)st.st_size;
		bool last = i + 1 == n;
		struct scan_arg a = {s, g, true, ents[i].name};
		struct spool_scan_ops ops = {&a, scan_read, scan_record, scan_damage};
		struct spool_seg_fmt f = seg_fmt(g);
		struct spool_scan_result res;
		if ((rc = spool_scan(&ops, size, &f, &pay, &res)) != TERN_OK)
			goto out; /* out of memory: not the disk's fault, give up on opening */
		bool reusable = last && g->ver == SPOOL_REC_V2;
		/* PREALLOC: a prepared segment ends with zeros, not with its last
		 * record: the used part ends at zero_off, the file at size. */
		uint64_t used = res.zero_off;
		bool prepared = res.zero_off < size;
		if (res.torn_off < res.zero_off && last && !g->damaged) {
			/* An append that a crash cut short: never acknowledged,
			 * since the sync that would have covered it did not finish.
			 * Cut, or in a prepared segment zeroed (its space stays
			 * prepared, and no stale byte stays after the new end). */
			log_warn("event=spool_recover seg=%" PRIu32 " torn_tail bytes=%" PRIu64
			         " offset=%" PRIu64 " prepared=%d",
			         g->no, res.zero_off - res.torn_off, res.torn_off, prepared);
			int trc =
			    prepared ? zero_fill(g->fd, res.torn_off, res.zero_off, NULL)
			    : ftruncate(g->fd, (off_t)res.torn_off) != 0 || fdatasync(g->fd) != 0
			        ? TERN_EIO
			        : TERN_OK;
			if (trc != TERN_OK) {
				log_error("event=spool_truncate_failed seg=%" PRIu32 " errno=%d",
				          g->no, errno);
				reusable = false; /* do not append after garbage */
			} else {
				used = res.torn_off;
			}
		} else if (res.torn_off < res.zero_off) {
			/* A cut-off record in an older segment, or after damage:
			 * the file is kept as it is, so this is reported too. */
			pthread_mutex_lock(&s->mu);
			seg_mark_damaged(s, g, res.torn_off, res.zero_off - res.torn_off,
			                 SPOOL_DAMAGE_TORN, res.torn_type, res.torn_id);
			pthread_mutex_unlock(&s->mu);
		}
		pthread_mutex_lock(&s->mu);
		g->size = used;
		g->prep_end = prepared ? size : 0;
		pthread_mutex_unlock(&s->mu);
		size = used;
		if (reusable && !g->damaged) {
			need_new = false;
			s->cur = g;
			s->cur_size = size;
		}
	}
	if (need_new) {
		uint32_t no = n ? ents[n - 1].no + 1 : 1;
		struct seg *g;
		if (no == 0) {
			rc = TERN_ELIMIT;
			goto out;
		}
		/* PREALLOC: the first segment is prepared here (small, so an
		 * open stays quick); later ones by the preparer thread. */
		int fd;
		uint64_t nonce;
		if (spare_prepare(s, PREP_MIN_BYTES, &fd, &nonce) == TERN_OK) {
			pthread_mutex_lock(&s->pmu);
			s->spare_fd = fd;
			s->spare_nonce = nonce;
			s->spare_size = PREP_MIN_BYTES;
			s->spare_ready = true;
			pthread_mutex_unlock(&s->pmu);
		}
		if (seg_from_spare(s, no, &g) != TERN_OK && (rc = seg_create(s, no, &g)) != TERN_OK)
			goto out;
		pthread_mutex_lock(&s->mu);
		rc = seg_insert(s, g);
		pthread_mutex_unlock(&s->mu);
		if (rc != TERN_OK) {
			seg_free(g);
			goto out;
		}
		s->cur = g;
		s->cur_size = 0;
	}
	pthread_mutex_lock(&s->mu);
	s->cur_no = s->cur->no;
	pthread_mutex_unlock(&s->mu);
out:
	tbuf_free(&pay);
	free(ents);
	return rc;
}

/* ---- public API ----------------------------------------------------------- */

static bool id_ok(const char *id)
{
	return id && queue_id_valid(id, strnlen(id, QUEUE_ID_LEN + 1));
}

/* Queues the DEL record of e and drops e from the index. Caller holds mu. */
static int remove_locked(struct spool *s, struct entry *e, size_t slot)
{
	struct tbuf b = TBUF_INIT(SPOOL_REC_HDR + QUEUE_ID_LEN);
	struct item *it = calloc(1, sizeof(*it));
	if (!it)
		return TERN_ENOMEM;
	int rc = spool_rec_encode_del(&b, e->id);
	if (rc != TERN_OK) {
		free(it);
		tbuf_free(&b);
		return rc;
	}
	it->type = SPOOL_REC_DEL;
	memcpy(it->id, e->id, sizeof(it->id));
	it->buf = tbuf_steal(&b, &it->len);
	it->del_seg = e->seg;
	it->del_len = e->rec_len;
	it->rsegs = e->rsegs;
	it->n_rsegs = e->n_rsegs;
	it->osegs = e->osegs;
	it->n_osegs = e->n_osegs;
	it->cap_osegs = e->cap_osegs;
	if (e->msg->spill && !(it->spill = tern_strdup(e->msg->spill))) {
		item_free(it);
		return TERN_ENOMEM;
	}
	if ((rc = enqueue(s, it)) != TERN_OK) {
		it->rsegs = NULL;
		it->osegs = NULL;
		item_free(it);
		return rc;
	}
	/* The committer cannot account the DEL before we release mu, nor the
	 * copy after it, so the link is in place in time. */
	if (e->copy)
		e->copy->del_item = it;
	e->rsegs = NULL;
	e->osegs = NULL;
	idx_del_slot(&s->idx, slot);
	entry_free(e);
	return TERN_OK;
}

int spool_open(const char *dir, struct spool **out)
{
	return spool_open_flags(dir, 0, out);
}

int spool_open_flags(const char *dir, unsigned flags, struct spool **out)
{
	int rc;
	*out = NULL;
	if (!dir || !*dir)
		return TERN_EINVAL;
	struct spool *s = calloc(1, sizeof(*s));
	if (!s)
		return TERN_ENOMEM;
	s->archive = flags & SPOOL_OPEN_ARCHIVE;
	s->dirfd = -1;
	s->seg_max = SEG_MAX_BYTES;
	pthread_mutex_init(&s->qmu, NULL);
	pthread_condattr_t ca; /* the lazy window is timed on CLOCK_MONOTONIC */
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->qcond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&s->mu, NULL);
	pthread_mutex_init(&s->pmu, NULL);
	pthread_cond_init(&s->pcond, NULL);
	s->spare_fd = -1;
	s->bin_fd = -1;
	if (!(s->dir = tern_strdup(dir))) {
		rc = TERN_ENOMEM;
		goto fail;
	}
	if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
		log_error("event=spool_open_failed dir=%s errno=%d", dir, errno);
		rc = TERN_EIO;
		goto fail;
	}
	s->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->dirfd < 0) {
		log_error("event=spool_open_failed dir=%s errno=%d", dir, errno);
		rc = TERN_EIO;
		goto fail;
	}
	/* Two writers on one spool would interleave records. */
	if (flock(s->dirfd, LOCK_EX | LOCK_NB) != 0) {
		log_error("event=spool_open_failed dir=%s reason=locked errno=%d", dir, errno);
		rc = TERN_EEXIST;
		goto fail;
	}
	fault_arm(s);
	spare_sweep(s);
	if ((rc = recover(s)) != TERN_OK)
		goto fail;
	for (size_t i = 0; i < s->n_aspill; i++) /* ARCHIVE: finished ones' files */
		s->aspill[i].dead = !idx_get(&s->idx, s->aspill[i].id, NULL);
	reap(s);
	if (pthread_create(&s->thread, NULL, committer_main, s) != 0) {
		rc = TERN_ENOMEM;
		goto fail;
	}
	s->thread_started = true;
	spare_ask(s, s->cur->prep_end > s->cur_size ? s->cur->prep_end : s->cur_size, s->seg_max);
	if (pthread_create(&s->pthread, NULL, preparer_main, s) != 0) {
		rc = TERN_ENOMEM;
		goto fail;
	}
	s->pthread_started = true;

	/* Messages whose last recipient finished just before a crash lost
	 * their DEL record: write it now. */
	size_t finished = 0;
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < s->idx.cap;) {
		struct entry *e = s->idx.slot[i];
		if (e && !msg_pending(e->msg) && remove_locked(s, e, i) == TERN_OK) {
			finished++;
			continue; /* slot i now holds a shifted entry (or NULL) */
		}
		i++;
	}
	size_t count = s->idx.count, segs = s->n_segs, damaged = s->n_dmg;
	pthread_mutex_unlock(&s->mu);
	log_info("event=spool_recovered messages=%zu segments=%zu finished=%zu damaged=%zu dir=%s",
	         count, segs, finished, damaged, dir);
	spill_recover(s);
	if (damaged)
		log_error(
		    "event=spool_damage_found ranges=%zu dir=%s action=\"kept; see tern queue "
		    "damaged\"",
		    damaged, dir);
	*out = s;
	return TERN_OK;
fail:
	spool_close(s);
	return rc;
}

void spool_close(struct spool *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->qmu);
	s->closing = true;
	pthread_cond_signal(&s->qcond);
	pthread_mutex_unlock(&s->qmu);
	if (s->thread_started)
		pthread_join(s->thread, NULL);
	atomic_store(&s->prep_stop, true);
	pthread_mutex_lock(&s->pmu);
	s->pclosing = true;
	pthread_cond_signal(&s->pcond);
	pthread_mutex_unlock(&s->pmu);
	if (s->pthread_started)
		pthread_join(s->pthread, NULL);
	pthread_mutex_lock(&s->pmu);
	grave_close(s); /* what the preparer had not closed yet */
	pthread_mutex_unlock(&s->pmu);
	if (s->dirfd >= 0) {
		spare_drop(s, "close");
		pthread_mutex_lock(&s->pmu);
		bin_drop_locked(s, "close");
		pthread_mutex_unlock(&s->pmu);
	}
	while (s->qhead) { /* only if the committer never started */
		struct item *nx = s->qhead->next;
		item_free(s->qhead);
		s->qhead = nx;
	}
	for (size_t i = 0; i < s->idx.cap; i++)
		entry_free(s->idx.slot[i]);
	free(s->idx.slot);
	for (size_t i = 0; i < s->n_segs; i++)
		seg_free(s->segs[i]);
	free(s->segs);
	free(s->dmg);
	for (size_t i = 0; i < s->n_aspill; i++)
		free(s->aspill[i].name);
	free(s->aspill);
	free(s->arec);
	if (s->dirfd >= 0)
		close(s->dirfd); /* also releases the flock */
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->pcond);
	pthread_mutex_destroy(&s->pmu);
	pthread_cond_destroy(&s->qcond);
	pthread_mutex_destroy(&s->qmu);
	free(s->dir);
	free(s);
}

int spool_put(struct spool *s, const struct spool_msg *env, const void *data, size_t len,
              spool_put_cb cb, void *arg)
{
	if (!s || !env || !id_ok(env->id) || (len && !data) || !env->n_rcpts || !env->rcpts ||
	    !msg_pending(env) ||
	    (env->spill &&
	     (env->spill_off > env->spill_size || spool_msg_tail(env) > UINT64_MAX - len)))
		return TERN_EINVAL;
	pthread_mutex_lock(&s->mu);
	bool dup = idx_get(&s->idx, env->id, NULL) != NULL;
	pthread_mutex_unlock(&s->mu);
	if (dup)
		return TERN_EEXIST;

	int rc;
	struct tbuf b = TBUF_INIT(SPOOL_REC_HDR + SPOOL_REC_MAX_PAYLOAD);
	struct item *it = calloc(1, sizeof(*it));
	if (!it)
		return TERN_ENOMEM;
	/* One allocation of about the right size instead of doublings. */
	if ((rc = tbuf_reserve(&b, len + 1024)) != TERN_OK ||
	    (rc = spool_rec_encode_msg(&b, env, data, len, &it->data_off)) != TERN_OK)
		goto fail;
	it->type = SPOOL_REC_MSG;
	memcpy(it->id, env->id, QUEUE_ID_LEN);
	it->cb = cb;
	it->arg = arg;
	if (!(it->msg = spool_msg_dup(env))) {
		rc = TERN_ENOMEM;
		goto fail;
	}
	it->msg->size = len + spool_msg_tail(env);
	if (!env->spill)
		it->msg->spill_size = it->msg->spill_off = it->msg->spill_crc = 0;
	it->buf = tbuf_steal(&b, &it->len);
	if ((rc = enqueue(s, it)) != TERN_OK)
		goto fail;
	return TERN_OK;
fail:
	tbuf_free(&b);
	item_free(it);
	return rc;
}

void spool_set_commit_hook(struct spool *s, spool_archive_want want, spool_commit_hook fn,
                           void *arg)
{
	pthread_mutex_lock(&s->qmu); /* the committer reads it after taking a batch */
	s->hook_arg = arg;
	s->want = want;
	s->hook = fn;
	pthread_mutex_unlock(&s->qmu);
}

/* ---- ARCHIVE: the archive follows the spool ------------------------------- */

size_t spool_archive_recovered(struct spool *s, void (*fn)(void *arg, const struct spool_ref *r),
                               void *arg)
{
	pthread_mutex_lock(&s->mu);
	struct spool_ref *v = s->arec;
	size_t n = s->n_arec;
	s->arec = NULL;
	s->n_arec = s->cap_arec = 0;
	pthread_mutex_unlock(&s->mu);
	for (size_t i = 0; i < n; i++)
		fn(arg, &v[i]);
	free(v);
	return n;
}

void spool_archive_release(struct spool *s, const struct spool_ref *refs, size_t n)
{
	bool hint = false;
	char **unl = NULL;
	size_t n_unl = 0;
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < n; i++) {
		struct seg *g = seg_find(s, refs[i].seg, NULL);
		TERN_BUG_ON(!g || !g->apins); /* a release without its pin */
		if (--g->apins == 0 && g->live == 0)
			hint = s->reap_hint = true;
		for (size_t k = 0; k < s->n_aspill; k++) {
			if (strcmp(s->aspill[k].id, refs[i].id) != 0)
				continue;
			if (s->aspill[k].dead) {
				char **nv = realloc(unl, (n_unl + 1) * sizeof(*nv));
				if (nv) {
					unl = nv;
					unl[n_unl++] = s->aspill[k].name;
					s->aspill[k].name = NULL;
				}
			}
			free(s->aspill[k].name);
			s->aspill[k] = s->aspill[--s->n_aspill];
			break;
		}
	}
	pthread_mutex_unlock(&s->mu);
	/* A finished message's spill file: its DEL is written, nothing else
	 * wants it (the segment itself is the committer's to unlink). */
	for (size_t i = 0; i < n_unl; i++) {
		spill_unlink(s->dirfd, unl[i]);
		free(unl[i]);
	}
	free(unl);
	if (hint) {
		pthread_mutex_lock(&s->qmu);
		s->q_reap = true;
		pthread_cond_signal(&s->qcond);
		pthread_mutex_unlock(&s->qmu);
	}
}

int spool_archive_read(struct spool *s, const struct spool_ref *ref, struct spool_msg **m,
                       struct tbuf *out)
{
	*m = NULL;
	if (ref->rec_len > SPOOL_REC_MAX_PAYLOAD + (uint64_t)SPOOL_REC_HDR * 2)
		return TERN_ECORRUPT;
	pthread_mutex_lock(&s->mu);
	struct seg *g = seg_find(s, ref->seg, NULL);
	if (!g) {
		pthread_mutex_unlock(&s->mu);
		return TERN_ENOTFOUND;
	}
	g->readers++;
	struct spool_seg_fmt f = seg_fmt(g);
	pthread_mutex_unlock(&s->mu);
	int rc;
	struct spool_rec_hdr h;
	size_t reclen, doff;
	uint8_t *rec = malloc(ref->rec_len ? ref->rec_len : 1);
	if (!rec) {
		rc = TERN_ENOMEM;
		goto out;
	}
	if ((rc = pread_all(g->fd, rec, ref->rec_len, ref->rec_off)) != TERN_OK)
		goto out;
	if (spool_rec_next(rec, ref->rec_len, &f, &h, &reclen) != TERN_OK ||
	    reclen != ref->rec_len || h.type != SPOOL_REC_MSG) {
		rc = TERN_ECORRUPT;
		goto out;
	}
	if ((rc = spool_rec_decode_msg(rec + h.hdr_len, h.len, m, &doff)) != TERN_OK)
		goto out;
	size_t dlen = (size_t)((*m)->size - spool_msg_tail(*m));
	if (strcmp((*m)->id, ref->id) != 0 || doff + dlen > h.len) {
		rc = TERN_ECORRUPT;
		goto out;
	}
	if ((rc = tbuf_append(out, rec + h.hdr_len + doff, dlen)) != TERN_OK)
		goto out;
	if ((*m)->spill)
		rc = spill_read(s->dirfd, (*m)->id, (*m)->spill, (*m)->spill_size, (*m)->spill_crc,
		                (*m)->spill_off, (*m)->spill_size - (*m)->spill_off, true, out);
out:
	free(rec);
	if (rc != TERN_OK) {
		spool_msg_free(*m);
		*m = NULL;
	}
	pthread_mutex_lock(&s->mu);
	bool last = --g->readers == 0 && g->orphan;
	pthread_mutex_unlock(&s->mu);
	if (last)
		seg_retire(s, g);
	return rc;
}

struct spool_msg *spool_get(struct spool *s, const char *id)
{
	if (!s || !id_ok(id))
		return NULL;
	fault_point(s, FAULT_GET);
	pthread_mutex_lock(&s->mu);
	struct entry *e = idx_get(&s->idx, id, NULL);
	struct spool_msg *m = e ? spool_msg_dup(e->msg) : NULL;
	pthread_mutex_unlock(&s->mu);
	return m;
}

static int read_verified(struct spool *s, struct seg *g, const char *id, uint64_t rec_off,
                         uint64_t data_off, uint64_t dlen, struct tbuf *out);

int spool_read_data(struct spool *s, const char *id, struct tbuf *out)
{
	if (!s || !id_ok(id) || !out)
		return TERN_EINVAL;
	pthread_mutex_lock(&s->mu);
	struct entry *e = idx_get(&s->idx, id, NULL);
	struct seg *g = e ? seg_find(s, e->seg, NULL) : NULL;
	if (!g) {
		pthread_mutex_unlock(&s->mu);
		return TERN_ENOTFOUND;
	}
	g->readers++; /* keeps fd open even if the message goes meanwhile */
	uint64_t rec_off = e->rec_off, data_off = e->data_off, dlen = e->data_len;
	uint64_t ssize = e->msg->spill_size, soff = e->msg->spill_off;
	uint32_t scrc = e->msg->spill_crc;
	char *spill = e->msg->spill ? tern_strdup(e->msg->spill) : NULL;
	bool nomem = e->msg->spill && !spill;
	pthread_mutex_unlock(&s->mu);
	int rc = read_verified(s, g, id, rec_off, data_off, dlen, out);
	if (rc == TERN_OK && nomem)
		rc = TERN_ENOMEM;
	if (rc == TERN_OK && spill)
		rc = spill_read(s->dirfd, id, spill, ssize, scrc, soff, ssize - soff, true, out);
	free(spill);
	return rc;
}

int spool_read_head(struct spool *s, const char *id, size_t max, struct tbuf *out,
                    uint64_t *file_off)
{
	*file_off = 0;
	if (!s || !id_ok(id) || !out)
		return TERN_EINVAL;
	pthread_mutex_lock(&s->mu);
	struct entry *e = idx_get(&s->idx, id, NULL);
	struct seg *g = e ? seg_find(s, e->seg, NULL) : NULL;
	if (!g) {
		pthread_mutex_unlock(&s->mu);
		return TERN_ENOTFOUND;
	}
	g->readers++;
	uint64_t rec_off = e->rec_off, data_off = e->data_off, dlen = e->data_len;
	uint64_t ssize = e->msg->spill_size, soff = e->msg->spill_off;
	uint32_t scrc = e->msg->spill_crc;
	char *spill = e->msg->spill ? tern_strdup(e->msg->spill) : NULL;
	bool nomem = e->msg->spill && !spill;
	pthread_mutex_unlock(&s->mu);
	int rc = read_verified(s, g, id, rec_off, data_off, dlen, out);
	if (rc == TERN_OK && nomem)
		rc = TERN_ENOMEM;
	if (rc == TERN_OK && spill) {
		size_t before = out->len;
		uint64_t want = ssize - soff < max ? ssize - soff : max;
		rc = spill_read(s->dirfd, id, spill, ssize, scrc, soff, want, false, out);
		*file_off = soff + (out->len - before);
	}
	free(spill);
	return rc;
}

int spool_spill_path(const struct spool *s, const char *name, char *out, size_t outlen)
{
	if (!s || !name || !spool_spill_name_ok(name, strlen(name)))
		return TERN_EINVAL;
	int n = snprintf(out, outlen, "%s/%s/%s", s->dir, SPILL_DIR, name);
	return n > 0 && (size_t)n < outlen ? TERN_OK : TERN_ELIMIT;
}

const char *spool_dir(const struct spool *s)
{
	return s->dir;
}

/* SPILL at open: every live record's file must be there and whole (else a
 * loud error: the message stays, undeliverable, for the operator); a file
 * no record names was left by a crash before its commit: removed. */
static bool spill_named(void *arg, const char *name)
{
	struct spool *s = arg;
	for (size_t i = 0; i < s->n_aspill; i++)
		if (strcmp(s->aspill[i].name, name) == 0)
			return true; /* ARCHIVE: not archived yet */
	for (size_t i = 0; i < s->idx.cap; i++) {
		struct entry *e = s->idx.slot[i];
		if (e && e->msg->spill && strcmp(e->msg->spill, name) == 0)
			return true;
	}
	return false;
}

static void spill_recover(struct spool *s)
{
	pthread_mutex_lock(&s->mu);
	size_t bad = 0;
	for (size_t i = 0; i < s->idx.cap; i++) {
		struct entry *e = s->idx.slot[i];
		if (e && e->msg->spill &&
		    spill_check(s->dirfd, e->id, e->msg->spill, e->msg->spill_size) != TERN_OK)
			bad++;
	}
	spill_sweep(s->dirfd, spill_named, s);
	pthread_mutex_unlock(&s->mu);
	if (bad)
		log_error("event=spool_spill_damage messages=%zu dir=%s action=\"kept, not "
		          "deliverable; see the spool_spill_missing lines\"",
		          bad, s->dir);
}

/* Reads the data of the MSG record at rec_off in g into out (appending),
 * checking the record's checksums. The caller took a reader reference on g
 * (under mu); it is dropped here. A record that fails its check marks g
 * damaged, so that the file is kept. */
static int read_verified(struct spool *s, struct seg *g, const char *id, uint64_t rec_off,
                         uint64_t data_off, uint64_t dlen, struct tbuf *out)
{
	/* Re-check the record on the way out, so damage done to the file after
	 * recovery is caught before the bytes are delivered. The data is read
	 * straight into out; only the header and envelope are buffered. */
	int rc = TERN_OK;
	size_t headlen = (size_t)(data_off - rec_off);
	uint8_t *head = malloc(headlen);
	struct spool_rec_hdr h;
	struct spool_seg_fmt f = seg_fmt(g);
	enum spool_damage_kind kind = SPOOL_DAMAGE_HEADER;
	if (!head) {
		rc = TERN_ENOMEM;
		goto out;
	}
	if ((rc = pread_all(g->fd, head, headlen, rec_off)) != TERN_OK)
		goto out;
	if (spool_rec_header(head, headlen, &f, &h) != TERN_OK || h.type != SPOOL_REC_MSG ||
	    (uint64_t)h.len != headlen - h.hdr_len + dlen) {
		rc = TERN_ECORRUPT;
		goto out;
	}
	if ((rc = tbuf_reserve(out, (size_t)dlen)) != TERN_OK)
		goto out;
	if ((rc = pread_all(g->fd, out->data + out->len, (size_t)dlen, data_off)) != TERN_OK)
		goto out;
	uint32_t crc = spool_rec_crc_seed(&h, head);
	crc = spool_crc32c(crc, head + h.hdr_len, headlen - h.hdr_len);
	crc = spool_crc32c(crc, out->data + out->len, (size_t)dlen);
	if (crc != h.crc) {
		out->data[out->len] = '\0';
		kind = SPOOL_DAMAGE_CHECKSUM;
		rc = TERN_ECORRUPT;
		goto out;
	}
	out->len += (size_t)dlen;
	out->data[out->len] = '\0';
out:
	if (rc == TERN_EIO)
		log_error("event=spool_read_failed id=%s seg=%" PRIu32 " errno=%d", id, g->no,
		          errno);
	if (rc == TERN_ECORRUPT)
		log_error("event=spool_read_corrupt id=%s seg=%" PRIu32 " offset=%" PRIu64, id,
		          g->no, rec_off);
	free(head);
	pthread_mutex_lock(&s->mu);
	/* Unless the segment already left the table: then its message was
	 * finished before this read, and the file is gone or going. */
	if ((rc == TERN_ECORRUPT || rc == TERN_EIO) && seg_find(s, g->no, NULL) == g) {
		seg_mark_damaged(s, g, rec_off, data_off - rec_off + dlen,
		                 rc == TERN_EIO ? SPOOL_DAMAGE_READ_ERROR : kind, SPOOL_REC_MSG,
		                 id);
		struct entry *e = idx_get(&s->idx, id, NULL);
		if (e && e->seg == g->no && e->rec_off == rec_off)
			e->corrupt = true;
	}
	bool last = --g->readers == 0 && g->orphan;
	pthread_mutex_unlock(&s->mu);
	if (last)
		seg_retire(s, g);
	return rc;
}

int spool_update_rcpt(struct spool *s, const char *id, size_t idx, enum rcpt_state st,
                      int64_t next_try, const char *reply)
{
	if (!s || !id_ok(id) || !spool_rcpt_state_valid(st))
		return TERN_EINVAL;
	fault_point(s, FAULT_UPDATE_RCPT);
	int rc;
	char *nreply = NULL;
	struct tbuf b = TBUF_INIT(SPOOL_REC_MAX_PAYLOAD);
	struct item *it = NULL;
	if (reply && !(nreply = tern_strdup(reply)))
		return TERN_ENOMEM;
	pthread_mutex_lock(&s->mu);
	size_t slot;
	struct entry *e = idx_get(&s->idx, id, &slot);
	if (!e) {
		rc = TERN_ENOTFOUND;
		goto out;
	}
	if (idx >= e->msg->n_rcpts || idx > UINT32_MAX) {
		rc = TERN_EINVAL;
		goto out;
	}
	struct spool_rcpt *r = &e->msg->rcpts[idx];
	if (spool_rcpt_state_final(r->state)) {
		rc = TERN_EINVAL; /* a finished recipient stays finished */
		goto out;
	}
	struct spool_rcpt n = *r;
	n.state = st;
	n.next_try = next_try;
	/* An attempt is a result from a delivery; queue/hold are operator moves. */
	if (st == RCPT_DEFERRED || spool_rcpt_state_final(st))
		n.attempts = r->attempts + 1;
	if (nreply)
		n.last_reply = nreply;
	if (!(it = calloc(1, sizeof(*it)))) {
		rc = TERN_ENOMEM;
		goto out;
	}
	if ((rc = spool_rec_encode_rcpt(&b, id, (uint32_t)idx, &n, nreply != NULL)) != TERN_OK)
		goto out;
	it->type = SPOOL_REC_RCPT;
	memcpy(it->id, e->id, sizeof(it->id));
	it->buf = tbuf_steal(&b, &it->len);
	if ((rc = enqueue(s, it)) != TERN_OK)
		goto out;
	it = NULL;
	if (nreply) {
		free(r->last_reply);
		nreply = NULL;
	}
	*r = n;
	e->ver++;
	if (!msg_pending(e->msg)) {
		/* Already applied in memory; if the DEL cannot be queued the
		 * message is finished anyway and recovery will remove it. */
		int drc = remove_locked(s, e, slot);
		if (drc != TERN_OK)
			log_warn("event=spool_remove_failed id=%s err=%s", id, tern_strerror(drc));
	}
out:
	pthread_mutex_unlock(&s->mu);
	tbuf_free(&b);
	if (it)
		item_free(it);
	free(nreply);
	return rc;
}

int spool_remove(struct spool *s, const char *id)
{
	if (!s || !id_ok(id))
		return TERN_EINVAL;
	pthread_mutex_lock(&s->mu);
	size_t slot;
	struct entry *e = idx_get(&s->idx, id, &slot);
	int rc = e ? remove_locked(s, e, slot) : TERN_ENOTFOUND;
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static int cmp_msg_id(const void *a, const void *b)
{
	const struct spool_msg *x = *(const struct spool_msg *const *)a;
	const struct spool_msg *y = *(const struct spool_msg *const *)b;
	return memcmp(x->id, y->id, QUEUE_ID_LEN);
}

void spool_foreach(struct spool *s, bool (*fn)(const struct spool_msg *m, void *arg), void *arg)
{
	if (!s || !fn)
		return;
	pthread_mutex_lock(&s->mu);
	size_t n = 0, cap = s->idx.count;
	struct spool_msg **v = calloc(cap ? cap : 1, sizeof(*v));
	if (v) {
		for (size_t i = 0; i < s->idx.cap; i++) {
			struct entry *e = s->idx.slot[i];
			if (e && (v[n] = spool_msg_dup(e->msg)))
				n++;
		}
	}
	pthread_mutex_unlock(&s->mu);
	if (!v) {
		log_error("event=spool_foreach_failed err=nomem");
		return;
	}
	if (n != cap)
		log_error("event=spool_foreach_partial err=nomem listed=%zu of=%zu", n, cap);
	qsort(v, n, sizeof(*v), cmp_msg_id);
	size_t i = 0;
	for (; i < n; i++)
		if (!fn(v[i], arg))
			break;
	for (i = 0; i < n; i++)
		spool_msg_free(v[i]);
	free(v);
}

size_t spool_count(struct spool *s)
{
	if (!s)
		return 0;
	pthread_mutex_lock(&s->mu);
	size_t n = s->idx.count;
	pthread_mutex_unlock(&s->mu);
	return n;
}

void spool_count_states(struct spool *s, struct spool_state_counts *out)
{
	*out = (struct spool_state_counts){0};
	if (!s)
		return;
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < s->idx.cap; i++) {
		const struct entry *e = s->idx.slot[i];
		if (!e)
			continue;
		unsigned seen = 0; /* bit per enum rcpt_state */
		for (size_t k = 0; k < e->msg->n_rcpts; k++)
			seen |= 1u << e->msg->rcpts[k].state;
		if (seen & (1u << RCPT_QUEUED))
			out->active++;
		else if (seen & (1u << RCPT_DEFERRED))
			out->deferred++;
		else if (seen & (1u << RCPT_HELD))
			out->hold++;
	}
	pthread_mutex_unlock(&s->mu);
}

/* ---- compaction --------------------------------------------------------- */

/* A segment is compacted once its live messages take less than 1/4 of it
 * and at least one whole segment was written after it (messages that just
 * rotated out are likely to finish soon; copying them would be waste). */
#define COMPACT_LIVE_DIV 4
/* Record bytes copied per spool_maintain call (at least one message), so
 * one call holds bounded memory and adds a bounded write to one batch. */
#define COMPACT_BUDGET (16ull * 1024 * 1024)
#define COMPACT_MAX_SEGS 16

struct compact_job {
	char id[QUEUE_ID_LEN + 1];
	struct seg *g; /* reader reference taken under mu, dropped by read_verified */
	uint32_t seg_no;
	uint64_t rec_off, data_off, data_len;
	uint32_t ver;
	struct spool_msg *msg; /* envelope snapshot at ver */
};

struct compact_wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	size_t done, ok;
};

static void compact_cb(void *arg, int err)
{
	struct compact_wait *w = arg;
	pthread_mutex_lock(&w->mu);
	w->done++;
	w->ok += err == TERN_OK;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

/* Picks the messages to copy: the live messages of the oldest eligible
 * segments, within the budget. Takes a reader reference on each one's
 * segment. Caller holds mu. */
static int compact_pick(struct spool *s, struct compact_job **out, size_t *n_out)
{
	uint32_t cand[COMPACT_MAX_SEGS];
	size_t nc = 0, n = 0, cap = 0;
	uint64_t planned = 0;
	struct compact_job *jobs = NULL;
	int rc = TERN_OK;
	for (size_t i = 0; i < s->n_segs && nc < COMPACT_MAX_SEGS; i++) {
		struct seg *g = s->segs[i];
		/* A damaged segment goes first and whatever its fill: once its
		 * live messages are copied, it can be set aside. */
		bool eligible = g->damaged ? g->no != s->cur_no
		                           : (uint64_t)g->no + 1 < s->cur_no &&
		                                 g->live_bytes < g->size / COMPACT_LIVE_DIV;
		if (!g->live || !eligible)
			continue;
		if (nc && planned + g->live_bytes > COMPACT_BUDGET)
			break;
		planned += g->live_bytes;
		cand[nc++] = g->no;
	}
	for (size_t i = 0; nc && i < s->idx.cap; i++) {
		struct entry *e = s->idx.slot[i];
		if (!e || e->copy || e->corrupt)
			continue;
		bool hit = false;
		for (size_t k = 0; k < nc && !hit; k++)
			hit = e->seg == cand[k];
		struct seg *g = hit ? seg_find(s, e->seg, NULL) : NULL;
		if (!g)
			continue;
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			struct compact_job *p = realloc(jobs, ncap * sizeof(*p));
			if (!p) {
				rc = TERN_ENOMEM;
				break;
			}
			jobs = p;
			cap = ncap;
		}
		struct compact_job *j = &jobs[n];
		if (!(j->msg = spool_msg_dup(e->msg))) {
			rc = TERN_ENOMEM;
			break;
		}
		memcpy(j->id, e->id, sizeof(j->id));
		j->g = g;
		g->readers++;
		j->seg_no = e->seg;
		j->rec_off = e->rec_off;
		j->data_off = e->data_off;
		j->data_len = e->data_len;
		j->ver = e->ver;
		n++;
	}
	*out = jobs;
	*n_out = n;
	return n ? TERN_OK : rc; /* with some picked, copy those */
}

/* Reads one picked message, encodes it as a fresh MSG record with the
 * snapshot's recipient states and queues it, unless the message changed or
 * went meanwhile. Returns true when queued (its callback will come). */
static bool compact_one(struct spool *s, struct compact_job *j, struct tbuf *data,
                        struct compact_wait *w)
{
	tbuf_reset(data);
	int rc = read_verified(s, j->g, j->id, j->rec_off, j->data_off, j->data_len, data);
	j->g = NULL;
	if (rc != TERN_OK) {
		/* Never copy damaged bytes forward under a fresh checksum. */
		log_warn("event=spool_compact_skipped id=%s seg=%" PRIu32 " err=%s", j->id,
		         j->seg_no, tern_strerror(rc));
		return false;
	}
	struct tbuf b = TBUF_INIT(SPOOL_REC_HDR + SPOOL_REC_MAX_PAYLOAD);
	struct item *it = calloc(1, sizeof(*it));
	if (!it || tbuf_reserve(&b, data->len + 1024) != TERN_OK ||
	    spool_rec_encode_msg(&b, j->msg, data->data, data->len, &it->data_off) != TERN_OK) {
		tbuf_free(&b);
		free(it);
		return false;
	}
	it->type = SPOOL_REC_MSG;
	it->copy = true;
	memcpy(it->id, j->id, sizeof(it->id));
	it->cb = compact_cb;
	it->arg = w;
	it->buf = tbuf_steal(&b, &it->len);

	/* Queued under mu, as spool_update_rcpt queues under mu: every change
	 * made before is in the snapshot (ver is unchanged) and is queued
	 * before the copy; every change made after is queued after it. */
	bool queued = false, added;
	pthread_mutex_lock(&s->mu);
	struct entry *e = idx_get(&s->idx, j->id, NULL);
	if (e && !e->copy && e->seg == j->seg_no && e->rec_off == j->rec_off && e->ver == j->ver &&
	    u32set_add(&e->osegs, &e->n_osegs, &e->cap_osegs, e->seg, &added) == TERN_OK &&
	    enqueue(s, it) == TERN_OK) {
		e->copy = it;
		queued = true;
	}
	pthread_mutex_unlock(&s->mu);
	if (!queued)
		item_free(it);
	return queued;
}

int spool_maintain(struct spool *s)
{
	if (!s)
		return TERN_EINVAL;
	struct compact_job *jobs;
	size_t n;
	pthread_mutex_lock(&s->mu);
	int rc = compact_pick(s, &jobs, &n);
	pthread_mutex_unlock(&s->mu);
	if (rc != TERN_OK || n == 0) {
		free(jobs);
		return rc;
	}
	struct compact_wait w = {.done = 0, .ok = 0};
	pthread_mutex_init(&w.mu, NULL);
	pthread_cond_init(&w.cv, NULL);
	struct tbuf data = TBUF_INIT(SPOOL_REC_MAX_PAYLOAD);
	size_t queued = 0;
	uint64_t bytes = 0;
	for (size_t i = 0; i < n; i++) {
		if (compact_one(s, &jobs[i], &data, &w)) {
			queued++;
			bytes += jobs[i].data_len;
		}
		spool_msg_free(jobs[i].msg);
	}
	tbuf_free(&data);
	free(jobs);
	/* The committer writes the copies with the next batch, syncs, moves
	 * the index entries and unlinks what they emptied, then calls back. */
	pthread_mutex_lock(&w.mu);
	while (w.done < queued)
		pthread_cond_wait(&w.cv, &w.mu);
	size_t ok = w.ok;
	pthread_mutex_unlock(&w.mu);
	pthread_cond_destroy(&w.cv);
	pthread_mutex_destroy(&w.mu);
	pthread_mutex_lock(&s->mu);
	size_t segs = s->n_segs;
	pthread_mutex_unlock(&s->mu);
	log_info("event=spool_compacted picked=%zu copied=%zu bytes=%" PRIu64 " segments=%zu", n,
	         ok, bytes, segs);
	return (int)(ok > INT32_MAX ? INT32_MAX : ok);
}

static int cmp_damage(const void *a, const void *b)
{
	const struct spool_damage *x = a, *y = b;
	if (x->seg != y->seg)
		return x->seg < y->seg ? -1 : 1;
	int c = strcmp(x->file, y->file);
	if (c)
		return c;
	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

size_t spool_foreach_damage(struct spool *s, bool (*fn)(const struct spool_damage *d, void *arg),
                            void *arg)
{
	if (!s)
		return 0;
	pthread_mutex_lock(&s->mu);
	size_t n = s->n_dmg;
	struct dmg *copy = n ? malloc(n * sizeof(*copy)) : NULL;
	struct spool_damage *v = n ? malloc(n * sizeof(*v)) : NULL;
	if (copy && v)
		memcpy(copy, s->dmg, n * sizeof(*copy));
	pthread_mutex_unlock(&s->mu);
	if (n && (!copy || !v)) {
		log_error("event=spool_damage_list_failed err=nomem");
		free(copy);
		free(v);
		return n;
	}
	for (size_t i = 0; i < n; i++) {
		v[i] = (struct spool_damage){
		    .seg = copy[i].seg,
		    .file = copy[i].file,
		    .offset = copy[i].off,
		    .length = copy[i].len,
		    .kind = copy[i].kind,
		    .record = rec_type_name(copy[i].rec_type),
		};
		memcpy(v[i].id, copy[i].id, sizeof(v[i].id));
	}
	if (n)
		qsort(v, n, sizeof(*v), cmp_damage);
	for (size_t i = 0; fn && i < n; i++)
		if (!fn(&v[i], arg))
			break;
	free(v);
	free(copy);
	return n;
}

void spool_debug_set_segment_max(struct spool *s, uint64_t bytes)
{
	pthread_mutex_lock(&s->qmu);
	s->seg_max = bytes;
	pthread_mutex_unlock(&s->qmu);
}

void spool_get_stats(struct spool *s, struct spool_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!s)
		return;
	pthread_mutex_lock(&s->mu);
	*out = s->stats;
	out->segments = s->n_segs;
	for (size_t i = 0; i < s->n_segs; i++)
		out->bytes += s->segs[i]->size;
	const struct seg *cur = seg_find(s, s->cur_no, NULL);
	if (cur && cur->prep_end > cur->size)
		out->prepared = cur->prep_end - cur->size;
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_lock(&s->pmu);
	if (s->spare_ready)
		out->prepared += s->spare_size;
	pthread_mutex_unlock(&s->pmu);
}
