/*
 * dmarc_report.h — DMARC aggregate reports (RFC 9990), both ways.
 *
 * Layers, from pure to I/O:
 *   - dmarc_note_fill: one mx evaluation → the rows to record (pure);
 *     dmarc_note: the same into the daemon's store (store/dmarc_store.h);
 *   - dmarc_agg_*: a report's parts — grouping of rows, the XML, the file
 *     name, the Subject, the gzip, the whole MIME message (pure);
 *   - dmarc_rua_*: which rua URIs may get a report: mailto only, the
 *     external destination verification of RFC 9990 §3 (the decision is
 *     pure, the DNS is the caller's);
 *   - dmarc_reports_run: one sending round over DATA/dmarc.db (blocking:
 *     a thread of its own or the command line, never an event loop);
 *   - dmarc_feedback_parse: a received report's XML → rows (pure, over
 *     expat's callbacks), dmarc_inbox_*: a received message → its report
 *     attachment (gzip, zip, plain XML) → rows in the store.
 */
#ifndef TERN_POLICY_DMARC_REPORT_H
#define TERN_POLICY_DMARC_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "policy/dmarc.h"
#include "store/dmarc_store.h"

struct tern_config;

/* ----------------------------------------------------------- recording */

struct dmarc_note {
	int64_t now;
	const char *ip;       /* the client's address as text */
	const char *mailfrom; /* the reverse-path ("" for <>) */
	const struct dmarc_outcome *o;
	const struct dmarc_spf *spf; /* SPF for the MAIL FROM identity (may be NULL) */
	const struct dmarc_dkim *dkim;
	size_t n_dkim;
	enum dmarc_disposition disposition; /* what the session did with the message */
};

/* Fills out[] with one row per Author Domain that had a policy record and
 * a pass or fail result; returns how many. Pure. */
size_t dmarc_note_fill(const struct dmarc_note *n, struct dmarc_rec out[DMARC_AUTHORS_MAX]);
/* dmarc_note_fill into dmarc_store_default(); never blocks. */
void dmarc_note(const struct dmarc_note *n);

/* ---------------------------------------------------------- the report */

/* One <record>: the rows with the same source, identifiers and results. */
struct dmarc_agg_row {
	char ip[64];
	uint64_t count;
	char disposition[12], dkim_eval[8], spf_eval[8];
	char header_from[DMARC_REC_DOMAIN_MAX + 1], env_from[DMARC_REC_DOMAIN_MAX + 1];
	char *dkim_json; /* the store's DKIM results (owned) */
	char spf_domain[DMARC_REC_DOMAIN_MAX + 1], spf_scope[8], spf_result[12];
};

struct dmarc_agg {
	const char *org_name; /* report_metadata */
	const char *email;    /* reports.from */
	const char *receiver; /* our hostname: Submitter and the file name */
	char report_id[128];  /* "BEGIN.POLICYDOMAIN.RANDOM@RECEIVER" */
	char unique[40];      /* the file name's unique-id (alnum) */
	int64_t begin, end;
	/* policy_published: the latest evaluation's view of the record */
	char domain[DMARC_REC_DOMAIN_MAX + 1];
	char p[12], sp[12], np[12];
	char adkim, aspf, psd;
	bool testing;
	struct dmarc_agg_row *rows;
	size_t n_rows;
};

void dmarc_agg_free(struct dmarc_agg *a); /* the rows */

/* The RFC 9990 XML (namespace urn:ietf:params:xml:ns:dmarc-2.0), every
 * value escaped. Pure. TERN_OK or out's error. */
int dmarc_agg_xml(const struct dmarc_agg *a, struct tbuf *out);

/* receiver!policy-domain!begin!end!unique.xml.gz into out. Pure. */
void dmarc_agg_filename(const struct dmarc_agg *a, char *out, size_t outlen);

/* gzip (RFC 1952) of in..len appended to out. TERN_OK, TERN_ENOMEM,
 * TERN_ELIMIT (past out's max), TERN_EIO (zlib). */
int dmarc_gzip(const void *in, size_t len, struct tbuf *out);

/* The whole message (CRLF): From reports.from, To rua, Subject "Report
 * Domain: D Submitter: R Report-ID: <ID>", Date (now), Message-ID <ID>,
 * a text/plain part and the application/gzip attachment. Pure. */
int dmarc_agg_message(const struct dmarc_agg *a, const char *to, const void *gz, size_t gz_len,
                      int64_t now, struct tbuf *out);

/* ----------------------------------------------------------- rua URIs */

struct dmarc_rua {
	char addr[DMARC_URI_MAX + 1];    /* the mailto address, unescaped */
	char host[DMARC_DOMAIN_MAX + 1]; /* its domain, lowercase */
	uint64_t max_size;               /* "!10m": bytes; 0 = no limit */
};

/* Parses one "mailto:addr[!size]" URI; false for other schemes or what is
 * no address. Pure. */
bool dmarc_rua_parse(const char *uri, struct dmarc_rua *out);

/* Does a report for policy_domain (organizational domain org) to host
 * need RFC 9990's external destination verification? True when host is
 * outside org (neither org nor one of its subdomains). Pure. */
bool dmarc_rua_external(const char *org, const char *host);

/* Do the TXT records at POLICYDOMAIN._report._dmarc.HOST authorize it
 * (at least one starts with v=DMARC1)? Pure. */
bool dmarc_rua_authorized(const char *const *txt, size_t n);

/*
 * RFC 9990 §3 step 9: the first authorizing record (v=DMARC1 first) may
 * carry its own rua, which replaces the destination, as long as every
 * overriding mailto URI is on the same host. Returns 0 (no override: keep
 * the original), 1 (out[0..*n_out) replace it), or -1 (an override names
 * another host: send to neither). Pure.
 */
int dmarc_rua_override(const char *const *txt, size_t n, const char *host, struct dmarc_rua *out,
                       size_t max, size_t *n_out);

/* ------------------------------------------------------ sending round */

/* Hands one finished report message to the queue. TERN_OK when spooled. */
typedef int (*dmarc_submit_fn)(void *arg, const char *from, const char *to, const char *msg,
                               size_t len);

struct dmarc_run_stats {
	unsigned domains, sent, skipped, failed;
};

/*
 * One round: every policy domain whose oldest unreported evaluation is at
 * or before due (now - interval for the timer, now for a round asked for
 * by hand) gets one report per rua (mailto, verified when external, size limit kept);
 * the rows reported are deleted afterwards (so are rows with no usable
 * rua, and rows older than 7 days whose report could not be sent).
 * DNS questions go to conf's resolver, synchronously. Logs one line per
 * report. Blocking; TERN_OK, or TERN_EIO when the database cannot be read.
 */
int dmarc_reports_run(const struct tern_config *conf, int64_t now, int64_t due,
                      dmarc_submit_fn submit, void *arg, struct dmarc_run_stats *st);

/* The daemon's sending timer: a thread that looks every few minutes (at
 * most every reports.interval) for domains whose oldest evaluation is one
 * interval old and reports them — so a daemon restarted more often than the
 * interval still reports — and runs a full round when dmarc_reports_kick
 * asks; it submits with submit. Nothing runs without reports.from. NULL is
 * fine for stop. */
struct dmarc_reporter;
struct dmarc_reporter *dmarc_reporter_start(const struct tern_config *conf, dmarc_submit_fn submit,
                                            void *arg);
void dmarc_reporter_stop(struct dmarc_reporter *r);
/* Runs one round now on the reporter's thread and waits for it (the
 * control socket's DMARC-REPORTS); st gets its figures. TERN_OK, or
 * TERN_EINVAL when no reporter runs. */
int dmarc_reports_kick(struct dmarc_run_stats *st);

/* -------------------------------------------------- received reports */

struct dmarc_fb_row {
	char source_ip[64];
	uint64_t count;
	char disposition[16], dkim[16], spf[16];
	char header_from[DMARC_REC_DOMAIN_MAX + 1], envelope_from[DMARC_REC_DOMAIN_MAX + 1];
	char dkim_auth[256]; /* "domain=result" pairs, space-separated */
	char spf_auth[256];
};

struct dmarc_feedback {
	char org_name[256], email[256], report_id[256];
	int64_t begin, end;
	char domain[DMARC_REC_DOMAIN_MAX + 1]; /* policy_published domain */
	struct dmarc_fb_row *rows;
	size_t n_rows;
};

#define DMARC_FB_ROWS_MAX 100000

void dmarc_feedback_free(struct dmarc_feedback *f);

/*
 * Parses an aggregate report's XML (RFC 9990 or RFC 7489's, with or
 * without the namespace) with expat: metadata, the published domain and
 * each record's row. TERN_OK when it is a <feedback> document with a
 * report_id and a policy domain; TERN_ESYNTAX for malformed XML or no
 * such document; TERN_ELIMIT past DMARC_FB_ROWS_MAX rows. No entity
 * expansion beyond XML's own five (a DOCTYPE is refused). Pure.
 */
int dmarc_feedback_parse(const char *xml, size_t len, struct dmarc_feedback *out);

/*
 * The report inside a message (CRLF, header and body): the first part of
 * type application/gzip, application/x-gzip, application/zip,
 * application/x-zip-compressed, text/xml or application/xml (or one whose
 * file name ends .xml.gz, .zip or .xml), decoded and decompressed into xml
 * (at most max bytes). TERN_OK, TERN_ENOTFOUND (no such part), TERN_ESYNTAX
 * (cannot decode it), TERN_ELIMIT. Pure.
 */
int dmarc_report_extract(const char *msg, size_t len, size_t max, struct tbuf *xml);

/* Stores a parsed report's rows (replacing an earlier copy of the same
 * reporter and report id). Blocking. */
int dmarc_feedback_store(sqlite3 *db, const struct dmarc_feedback *f, int64_t now);

/*
 * The local delivery hook: a copy of every message delivered to
 * reports.inbox. Parses and stores on the calling (delivery) thread; a
 * message that holds no parsable report is logged (event=dmarc_report_
 * unparsable) and nothing else happens: the message itself is delivered
 * whatever this returns. True when rcpt is the inbox.
 */
bool dmarc_inbox_deliver(const struct tern_config *conf, const char *rcpt, const char *id,
                         const char *msg, size_t len);

#endif
