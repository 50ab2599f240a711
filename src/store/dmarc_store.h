/*
 * dmarc_store.h — the DMARC reporting database, DATA/dmarc.db (SQLite):
 * every DMARC evaluation the mx session made (what aggregate reports we
 * send are built from) and the rows of the aggregate reports we received
 * (what `tern dmarc report` shows).
 *
 * Two ways in:
 *   - the daemon's write-behind (dmarc_store_open / dmarc_store_record):
 *     the mail path hands over a copy and returns at once; one writer
 *     thread batches the rows into one transaction. A row that cannot be
 *     queued or written is logged and counted, never waited for;
 *   - direct, synchronous access for the report job, the report parser and
 *     the command line (dmarc_db_open), on threads that may block.
 */
#ifndef TERN_STORE_DMARC_STORE_H
#define TERN_STORE_DMARC_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#define DMARC_REC_DOMAIN_MAX 253
#define DMARC_REC_DKIM_MAX 4
#define DMARC_REC_RUA_MAX 1400 /* the rua URIs, one per line */

struct dmarc_rec_dkim {
	char domain[DMARC_REC_DOMAIN_MAX + 1];
	char selector[64];
	char result[16]; /* none pass fail policy neutral temperror permerror */
	bool aligned;
};

/* One DMARC evaluation of one Author Domain for which a policy was found. */
struct dmarc_rec {
	int64_t t;
	char ip[64]; /* the client's address, text */
	char header_from[DMARC_REC_DOMAIN_MAX + 1];
	char env_from[DMARC_REC_DOMAIN_MAX + 1]; /* MAIL FROM domain ("" for <>) */
	char policy_domain[DMARC_REC_DOMAIN_MAX + 1];
	char org_domain[DMARC_REC_DOMAIN_MAX + 1]; /* its organizational domain */
	/* the policy as published (RFC 9990 policy_published) */
	char p[12], sp[12], np[12]; /* none quarantine reject, "" if absent */
	char adkim, aspf;           /* 'r' or 's' */
	bool testing;               /* t=y */
	char psd;                   /* 'y' 'n' 'u' */
	char applied[24];           /* the tag that applied and its policy after t=y: "sp=none" */
	char disposition[12];       /* RFC 9990 policy_evaluated: none pass quarantine reject */
	char dkim_eval[8], spf_eval[8]; /* policy_evaluated dkim/spf: pass or fail (aligned) */
	struct dmarc_rec_dkim dkim[DMARC_REC_DKIM_MAX];
	size_t n_dkim;
	char spf_domain[DMARC_REC_DOMAIN_MAX + 1];
	char spf_scope[8]; /* "mfrom" or "helo" */
	char spf_result[12];
	char rua[DMARC_REC_RUA_MAX]; /* the rua URIs, LF-separated */
};

struct dmarc_store;

/* Opens the write-behind store for DATA/dmarc.db (the file is made on the
 * first write). NULL with err set on out of memory. */
struct dmarc_store *dmarc_store_open(const char *data_dir, char *err, size_t errlen);
/* Writes what is queued, stops the writer, frees. NULL is fine. */
void dmarc_store_close(struct dmarc_store *s);
/* Queues a copy of r for the writer. Never blocks on the disk; any thread. */
void dmarc_store_record(struct dmarc_store *s, const struct dmarc_rec *r);
/* Rows lost so far (queue full, out of memory, write errors). */
uint64_t dmarc_store_failures(const struct dmarc_store *s);
/* Waits until everything queued before the call is written (tests,
 * the report job before it reads). */
void dmarc_store_sync(struct dmarc_store *s);

/* The daemon's one store, set by serve while its listeners run, read by
 * the mx session (smtp/verify.c). NULL: nothing is recorded. */
void dmarc_store_set_default(struct dmarc_store *s);
struct dmarc_store *dmarc_store_default(void);

/* ------------------------------------------------------ direct access */

/* Opens DATA/dmarc.db (creating it and the schema when create), WAL, a busy
 * timeout. NULL with err set. Close with sqlite3_close. */
sqlite3 *dmarc_db_open(const char *data_dir, bool create, char *err, size_t errlen);

/* Inserts one evaluation now (the writer's insert; also used by tests). */
int dmarc_db_insert(sqlite3 *db, const struct dmarc_rec *r);

#endif
