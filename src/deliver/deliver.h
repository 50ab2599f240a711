/*
 * deliver.h — delivery: local Maildir (local.c); remote comes later.
 *
 * Maildir layout: DATA/mail/DOMAIN/LOCALPART/{tmp,new,cur}, domain and
 * local part lowercased; a local part that is not safe as a file name
 * ("/", leading ".", control bytes, ...) is refused with TERN_EINVAL.
 * Plus addressing (recipient_delimiter in the running config): a recipient
 * user+tag that is no user of its own is delivered to user's Maildir, into
 * its Maildir++ folder .tag when that exists (any case), else the inbox.
 *
 * Delivery is batched so that many messages share their syncs (DESIGN §6):
 * every item is written into tmp/ and fsync'd, then all are renamed into
 * new/, then each distinct new/ directory is fsync'd once. An item is
 * delivered only when its directory sync succeeded (DESIGN §5.1). Blocking:
 * run it on the thread pool, never on an event loop.
 */
#ifndef TERN_DELIVER_DELIVER_H
#define TERN_DELIVER_DELIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define MAILDIR_NAME_MAX 128

struct maildir_item {
	/* in */
	const char *domain;      /* recipient domain */
	const char *local;       /* recipient local part (dequoted) */
	const struct iovec *iov; /* the file's content: prefix headers + message */
	int iovcnt;
	/* SPILL (queue/spill.h): then src_len bytes of the file src_path from
	 * src_off (a large message's rest, copied file to file); NULL: none */
	const char *src_path;
	uint64_t src_off, src_len;
	bool src_check;   /* the file's first src_off + src_len bytes must have */
	uint32_t src_crc; /* CRC32C src_crc (the record's): checked as copied */
	/*
	 * Optional stable name (see maildir_stable_name): the same recipient of
	 * the same message always gets the same file name, so a delivery that is
	 * repeated after a crash finds its file already in new/ (or, with
	 * check_cur, already moved to cur/ by a reader) and does not write a
	 * duplicate. NULL: a fresh unique name.
	 */
	const char *fixed_name;
	bool check_cur;
	/*
	 * Optional Maildir++ folder: NULL or "" delivers to the inbox; a name
	 * such as "Junk" (DMARC quarantine) delivers to DATA/mail/DOMAIN/LOCAL/
	 * .Junk/, created on first use with the "maildirfolder" marker, as
	 * Dovecot lays folders out. 1..64 letters, digits, '-' or '_' (no '.',
	 * the Maildir++ hierarchy separator); anything else is TERN_EINVAL.
	 */
	const char *folder;
	/*
	 * Quota (Maildir++ maildirsize in the user's Maildir, see below): 0
	 * takes the running config's (the user's userdb_quota_rule, else
	 * mailbox.quota; none without a runtime), > 0 is a limit in bytes, < 0
	 * none. An item that does not fit (usage + size > limit) is not
	 * written: result TERN_ELIMIT with over_quota set.
	 */
	long long quota;
	/* out */
	bool over_quota;
	int result;              /* TERN_OK or an error */
	char name[MAILDIR_NAME_MAX]; /* the file name in new/ */
	char path[4096];         /* the full path of the delivered file */
};

/* mail_root is the data directory DATA. Builds DATA/mail/DOMAIN/LOCAL into out; TERN_EINVAL if unsafe, TERN_ELIMIT if too long. */
int maildir_path(const char *mail_root, const char *domain, const char *local, char *out,
		 size_t outlen);
/* As maildir_path, then "/.FOLDER" when folder is neither NULL nor "" (see
 * struct maildir_item.folder for the names allowed). */
int maildir_folder_path(const char *mail_root, const char *domain, const char *local,
			const char *folder, char *out, size_t outlen);
/* Creates the maildir and its tmp/new/cur (mode 0700), like mkdir -p. */
int maildir_create(const char *path);
/*
 * A unique file name: "SECONDS.M<usec>P<pid>Q<counter>.HOSTNAME,S=SIZE"
 * (the Maildir++ convention Dovecot reads); '/' and ':' in hostname are
 * replaced as the Maildir spec says.
 */
int maildir_unique_name(const char *hostname, size_t size, char *out, size_t outlen);
/* "CREATED.Q<queue id>R<recipient index>.HOST,S=SIZE": unique per recipient of
 * a message, and the same every time that recipient is delivered. */
int maildir_stable_name(const char *hostname, long long created, const char *queue_id,
			size_t rcpt_idx, size_t size, char *out, size_t outlen);
/* Delivers every item (see above; plus addressing reads the current
 * runtime, core/runtime.h, when one is installed); returns the number
 * delivered. */
size_t maildir_deliver_batch(const char *mail_root, const char *hostname,
			     struct maildir_item *items, size_t n);

/*
 * Maildir++ quota, as Dovecot's "maildir" quota backend keeps it: the file
 * MAILDIR/maildirsize holds the limit on its first line ("NNNS" bytes,
 * ",NNNC" messages) and then one "BYTES COUNT" line per change (negative
 * when Dovecot expunges); the usage is the sum of the lines. Both tern and
 * Dovecot append to it, so both see the same usage. It is recalculated
 * (every file in new/ and cur/ of the Maildir and of each .Folder, sized by
 * its ",S=" name field, else by stat) when it is missing, malformed, larger
 * than 5120 bytes, negative, or says another byte limit than the current
 * one, as Dovecot does.
 */
#define MAILDIRSIZE_RECALC_SIZE 5120
struct maildirsize {
	bool has_bytes_limit;
	unsigned long long bytes_limit; /* the first line's "NNNS" */
	long long bytes, count;         /* the sum of the other lines */
};
/* Pure: parses a maildirsize image. TERN_OK; TERN_ESYNTAX if malformed
 * (including a last line without its line break: an append in progress). */
int maildirsize_parse(const char *buf, size_t len, struct maildirsize *out);
/* The usage of the Maildir at root for a limit of limit bytes (> 0), read
 * from root/maildirsize, recalculated (and the file rewritten durably) when
 * needed, see above. Blocks. */
int maildir_quota_usage(const char *root, unsigned long long limit, unsigned long long *bytes,
                        unsigned long long *count);
/* Appends "BYTES 1" to root/maildirsize (O_APPEND). *fd is a descriptor of
 * the file to sync for durability, replacing (and closing) any one given. */
int maildir_quota_append(const char *root, unsigned long long bytes, int *fd);
/*
 * Whether delivery found the Maildir of addr ("user@domain", lowercase)
 * already at or over its quota within the last MAILDIR_FULL_TTL seconds:
 * a table in memory, so cheap enough for RCPT on the event loop. A
 * delivery that fits clears it; it expires so that space freed through
 * Dovecot is seen by the next delivery.
 */
#define MAILDIR_FULL_TTL 60
bool maildir_quota_known_full(const char *addr);

/* ---------------------------------------------------------------- remote */

/*
 * Remote delivery (remote.c): SMTP to other servers, on the event-loop
 * workers, never blocking. Jobs are grouped per next hop (a route's host,
 * or the recipient domain's MX set); each next hop gets at most
 * delivery.max_per_destination connections, and a connection delivers
 * every job queued for its next hop before it says QUIT (reuse).
 */
enum remote_outcome { REMOTE_PENDING = 0, REMOTE_DELIVERED, REMOTE_DEFERRED, REMOTE_BOUNCED };

struct remote_rcpt {
	char *addr;            /* owned */
	char *orcpt;           /* owned, or NULL */
	unsigned notify;
	size_t idx;            /* index in the spool envelope */
	/* result */
	enum remote_outcome outcome;
	bool dsn_relayed;      /* the peer took DSN parameters over (no SUCCESS notice from us) */
	char status[16];       /* enhanced status, e.g. "5.1.1" */
	char reply[512];       /* "550 5.1.1 ... (in reply to RCPT TO)" or our own reason */
	char remote_mta[256];  /* host that answered, "" if none */
	uint32_t retry_after;  /* deferred: retry no sooner than this (s; a destination's
	                          back-off, deliver/shaping.h); 0: the usual schedule */
};

struct remote_job;
struct mem_budget; /* core/budget.h */
typedef void (*remote_done_fn)(struct remote_job *job, void *arg);

/* One message to one destination domain. Everything is owned by the job. */
struct remote_job {
	struct remote_job *next; /* internal queue link */
	char id[32];
	char *sender;
	unsigned body, ret;
	bool smtputf8;
	bool has_8bit;           /* the message has bytes >= 0x80 */
	char *envid;
	char *auth;              /* MAIL AUTH= for the next hop (RFC 4954 §5), or NULL */
	char *api_key;           /* the HTTP API key that sent it (pool_select.keys), or NULL */
	/* The message's bytes. NULL once the engine dropped them while the job
	 * waited in its destination's queue past limits.queued_memory (len is
	 * kept): they are read back (remote_set_body_source) when a connection
	 * takes the job, and a job finished without them was never sent. */
	char *data;
	size_t len;
	/* Bytes of data counted in *held_in (core/budget.h), given back when
	 * the job is taken off its queue or freed; 0: none counted. */
	struct mem_budget *held_in;
	size_t held;
	/* SPILL (deliver/remote_stream.h): the message goes on with spill_len
	 * bytes of the file spill_path from spill_off (NULL: data is all) */
	char *spill_path;
	uint64_t spill_off, spill_len;
	/* SPILL: with spill_check, the file's first spill_off + spill_len bytes
	 * must have CRC32C spill_crc (the record's): checked as they are sent */
	bool spill_check;
	uint32_t spill_crc;
	char domain[256];        /* lowercase recipient domain */
	struct remote_rcpt *rcpts;
	size_t n_rcpts;
	remote_done_fn done;     /* runs on a worker thread once every recipient has a result */
	void *done_arg;
};

void remote_job_free(struct remote_job *job);

struct remote;
struct worker;

/* Creates the engine over the given workers (their bases must exist; call
 * before they start). Reads the current runtime for config. */
struct remote *remote_new(struct worker **workers, size_t n_workers, char *err, size_t errlen);
/* Takes ownership of job. Safe from any thread. */
void remote_submit(struct remote *r, struct remote_job *job);
/*
 * Bounded memory for jobs waiting behind busy connections: a queued job's
 * bytes are counted in budget (the scheduler's, limits.queued_memory) and,
 * once it is full, dropped; load(arg, id, &data, &len) reads message id
 * back (a malloc'd copy of what was handed in; TERN_OK or a TERN_* code)
 * when a connection takes the job. load blocks: it runs on the engine's
 * I/O pool, never on a loop. Without it (or without that pool) nothing is
 * dropped. Set once, before the first submit.
 */
typedef int (*remote_load_fn)(void *arg, const char *id, char **data, size_t *len);
void remote_set_body_source(struct remote *r, struct mem_budget *budget, remote_load_fn load,
                            void *arg);
/* Connections in progress (for shutdown and tests). */
size_t remote_active(struct remote *r);
/* After the workers stopped. Jobs still queued are freed without a result
 * (they are still in the spool and will be retried after restart). */
void remote_free(struct remote *r);
/*
 * Shutdown, before the workers are joined; safe from any thread, more than
 * once, and with r NULL. Afterwards: remote_submit frees the job at once,
 * no new connection starts (a connection posted but not yet begun ends
 * without resolving), and a connection on the wire finishes the job it has
 * (its results are reported) and then QUITs instead of taking the next job.
 * Every job not finished is freed by remote_free without a result: it is
 * still in the spool and is retried after the restart. remote_active()
 * falls to 0 as the connections on the wire end.
 */
void remote_stop(struct remote *r);

#endif
