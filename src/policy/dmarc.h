/*
 * dmarc.h — DMARC (RFC 9989, DMARCbis; RFC 7489 records read too) and
 * Authentication-Results (RFC 8601) for the mx profile.
 *
 * Layers, from pure to I/O:
 *   - dmarc_record_parse: one TXT record → struct dmarc_record (pure);
 *   - dmarc_from_domains: the RFC5322.From header field(s) of a header
 *     block → the Author Domain(s), A-labels (pure);
 *   - struct dmarc_eval: policy discovery, the organizational domain by the
 *     DNS Tree Walk (§4.10, no public suffix list), identifier alignment and
 *     policy selection as an explicit resumable state machine. It never does
 *     I/O: it asks for DNS queries (dmarc_eval_next) and is resumed with the
 *     answers (dmarc_eval_answer), so the same code runs on the daemon's
 *     async resolver and synchronously over an in-memory DNS in tests;
 *   - dmarc_check_async: that machine on a struct dns_resolver (dns/dns.h);
 *   - dmarc_decide: outcome + the listener profile's settings → what to do
 *     with the message (550, Junk folder, deliver) (pure);
 *   - authres_*: the Authentication-Results field we prepend, and the
 *     removal of forged ones claiming our authserv-id (pure).
 *
 * The SPF and DKIM inputs (struct dmarc_spf, struct dmarc_dkim) are defined
 * here for now so the SPF and DKIM verifiers can feed DMARC and the
 * A-R builder; the lead reconciles them with those modules' own types.
 */
#ifndef TERN_POLICY_DMARC_H
#define TERN_POLICY_DMARC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "dns/dns.h"

/* A domain name in presentation form, lowercase, no trailing dot. */
#define DMARC_DOMAIN_MAX 253
/* RFC 9989 §4.10: a Tree Walk never makes more than 8 queries. */
#define DMARC_WALK_MAX 8
/* Reporting URIs kept per tag (rua, ruf), and the longest one kept. */
#define DMARC_URIS_MAX 8
#define DMARC_URI_MAX 320

/* ------------------------------------------------------ authentication inputs */

/* SPF's result for the MAIL FROM identity (RFC 7208 §2.6). */
enum dmarc_spf_result {
	DMARC_SPF_NONE = 0,
	DMARC_SPF_NEUTRAL,
	DMARC_SPF_PASS,
	DMARC_SPF_FAIL,
	DMARC_SPF_SOFTFAIL,
	DMARC_SPF_TEMPERROR,
	DMARC_SPF_PERMERROR,
};

/* Which identity an SPF result is for (A-R smtp.mailfrom / smtp.helo). */
enum dmarc_spf_identity { DMARC_SPF_MAILFROM = 0, DMARC_SPF_HELO };

struct dmarc_spf {
	enum dmarc_spf_result result;
	enum dmarc_spf_identity identity;
	/* The domain checked: the MAIL FROM domain, or the HELO name when the
	 * reverse-path was null (RFC 7208 §2.4; DMARC then uses it as the SPF
	 * Domain, RFC 9989 §3.2.4). NULL or "" when SPF was not checked. */
	const char *domain;
};

/* One DKIM signature's result (RFC 8601 §2.7.1). */
enum dmarc_dkim_result {
	DMARC_DKIM_NONE = 0,
	DMARC_DKIM_PASS,
	DMARC_DKIM_FAIL,
	DMARC_DKIM_NEUTRAL,
	DMARC_DKIM_POLICY,
	DMARC_DKIM_TEMPERROR,
	DMARC_DKIM_PERMERROR,
};

struct dmarc_dkim {
	enum dmarc_dkim_result result;
	const char *domain;    /* d=; NULL/"" if the signature had none */
	const char *selector;  /* s=, for A-R header.s (may be NULL) */
	const char *signature; /* b= (folding whitespace allowed), for A-R header.b (may be NULL) */
	const char *reason;    /* short words for the A-R reason, or NULL */
	/* the key says t=y (RFC 6376 §3.6.1: the signer is testing, treat the
	 * message as unsigned): a pass is reported in A-R but never counts
	 * toward DMARC alignment */
	bool testing;
};

/* ------------------------------------------------------------------ record */

enum dmarc_policy {
	DMARC_POLICY_UNSET = 0, /* tag absent */
	DMARC_POLICY_NONE,
	DMARC_POLICY_QUARANTINE,
	DMARC_POLICY_REJECT,
	DMARC_POLICY_INVALID, /* tag present with a value that is not one of the three */
};

/* fo= bits; DMARC_FO_0 is the default. */
#define DMARC_FO_0 1u
#define DMARC_FO_1 2u
#define DMARC_FO_D 4u
#define DMARC_FO_S 8u

struct dmarc_uri_list {
	size_t n;         /* URIs kept in uri[] */
	size_t n_invalid; /* syntactically bad ones, dropped */
	size_t n_dropped; /* valid but past DMARC_URIS_MAX/DMARC_URI_MAX */
	char uri[DMARC_URIS_MAX][DMARC_URI_MAX + 1]; /* without an obsolete "!size" suffix */
	/* that suffix as written ("10m"), "" when none: RFC 7489's size limit,
	 * which aggregate reporting still honours (policy/dmarc_report.c) */
	char size[DMARC_URIS_MAX][24];
};

/*
 * A parsed DMARC Policy Record. Every field has its RFC default when the
 * tag is absent or its value is malformed (RFC 9989 §4.8: syntax errors are
 * "discarded in favor of default values"); p/sp/np keep INVALID so that
 * the §4.10.1 rule about bad policies can be applied.
 */
struct dmarc_record {
	enum dmarc_policy p, sp, np;
	bool adkim_strict, aspf_strict; /* default r */
	bool testing;                   /* t=y (or the historic pct=0 when t is absent) */
	bool t_set;                     /* t= present and valid */
	char psd;                       /* 'y', 'n' or 'u' (default) */
	unsigned fo;                    /* DMARC_FO_* bits, default DMARC_FO_0 */
	int pct;                        /* historic pct=0..100, -1 when absent/invalid */
	long ri;                        /* historic ri= seconds, -1 when absent/invalid */
	struct dmarc_uri_list rua, ruf;
	unsigned n_unknown; /* tags ignored because unknown (RFC 9989 §4.7) */
	unsigned n_bad;     /* known tags whose value was malformed, or repeated */
};

enum dmarc_parse {
	DMARC_PARSE_OK = 0,    /* a DMARC record; see n_bad for tags that were dropped */
	DMARC_PARSE_NOT_DMARC, /* no "v=DMARC1" first: the whole record is ignored (§4.7) */
};

/*
 * Parses one TXT record (its strings already concatenated, RFC 9989 §4.5)
 * of len bytes (need not be NUL-terminated; NUL bytes make it malformed).
 * "v=DMARC1" must be the first tag, its value exactly "DMARC1". Tag names
 * are matched case-insensitively, keyword values too (ABNF literals).
 * Unknown tags are ignored; a malformed or repeated known tag is dropped
 * (the first valid occurrence wins) and counted. pct (historic): pct=0 sets
 * testing as t=y would (RFC 9989 §A.6 maps pct=0 to t=y and pct=100 to
 * t=n); pct 1..100 means the policy is applied to every failing message,
 * since RFC 9989 has no sampling; an explicit t= wins over pct. Pure.
 */
enum dmarc_parse dmarc_record_parse(const char *txt, size_t len, struct dmarc_record *out);

/*
 * §4.10.1: a record whose p is invalid, or whose sp or np is present but
 * invalid, is used as if it said p=none when its rua holds at least one valid
 * URI (returns true and rewrites p/sp/np to none), and otherwise is not used
 * at all (returns false). A record without those faults returns true
 * unchanged (an absent p counts as p=none, §4.7).
 */
bool dmarc_record_usable(struct dmarc_record *r);

const char *dmarc_policy_name(enum dmarc_policy p); /* "none", "quarantine", "reject", "" */

/* -------------------------------------------------------------- From domain */

/* At most this many distinct Author Domains are evaluated (RFC 9989 §11.5). */
#define DMARC_AUTHORS_MAX 4

enum dmarc_from_status {
	DMARC_FROM_ONE = 0, /* exactly one From field, all its addresses in one domain */
	DMARC_FROM_NONE,    /* no From field, or one with no usable domain */
	DMARC_FROM_MULTI,   /* several From fields, or addresses in several domains */
	DMARC_FROM_BAD,     /* a From field that does not parse, or a domain that is no
	                       domain name (a literal, bad labels, bad UTF-8) */
};

struct dmarc_from {
	enum dmarc_from_status status;
	size_t n_fields;  /* From header fields seen */
	size_t n_domains; /* distinct domains found (may exceed DMARC_AUTHORS_MAX) */
	/* the first DMARC_AUTHORS_MAX distinct domains, lowercase A-labels */
	char domain[DMARC_AUTHORS_MAX][DMARC_DOMAIN_MAX + 1];
};

/*
 * Finds every From field in the header block hdr (hdr_len bytes: the
 * message's header fields up to, not including, the empty line; CRLF line
 * ends, bare LF tolerated) and extracts the domains of their addresses
 * (RFC 5322 §3.4 with the obsolete forms, groups of RFC 6854, comments).
 * A domain in U-labels (SMTPUTF8) is converted to A-labels (RFC 9989
 * §5.3.1) with Punycode; the label must already be in the lowercase,
 * normalised form IDNA2008 requires (no Unicode case folding or NFC is
 * done here). Pure.
 */
void dmarc_from_domains(const char *hdr, size_t hdr_len, struct dmarc_from *out);

/*
 * Normalises one domain name (an SPF domain, a DKIM d=, an Author
 * Domain): ASCII lowercase, a trailing dot removed, U-labels to A-labels,
 * each label 1..63 bytes of letters, digits, '-' or '_', at most
 * DMARC_DOMAIN_MAX in all. False if it is no such name. Pure.
 */
bool dmarc_domain_normalize(const char *s, size_t len, char out[DMARC_DOMAIN_MAX + 1]);

/* ------------------------------------------------------------- evaluation */

enum dmarc_result {
	DMARC_RESULT_NONE = 0, /* no policy record: DMARC does not apply */
	DMARC_RESULT_PASS,
	DMARC_RESULT_FAIL,
	DMARC_RESULT_TEMPERROR, /* a DNS query that mattered failed */
	DMARC_RESULT_PERMERROR, /* an unusable record (§4.10.1), no usable Author Domain */
};

const char *dmarc_result_name(enum dmarc_result r); /* the RFC 8601 words */

enum dmarc_action {
	DMARC_ACTION_NONE = 0,
	DMARC_ACTION_QUARANTINE,
	DMARC_ACTION_REJECT,
};

/* Which tag of the record gave the policy. */
enum dmarc_policy_tag { DMARC_TAG_P = 0, DMARC_TAG_SP, DMARC_TAG_NP };

/* The evaluation of one Author Domain. */
struct dmarc_author {
	char domain[DMARC_DOMAIN_MAX + 1];
	enum dmarc_result result;
	char policy_domain[DMARC_DOMAIN_MAX + 1]; /* where the record is; "" if none */
	char org_domain[DMARC_DOMAIN_MAX + 1];    /* "" if no record was found */
	bool psd_record;                          /* the record applied is a PSD's (psd=y) */
	bool nonexistent;                         /* the Author Domain is NXDOMAIN (np applied) */
	struct dmarc_record record;  /* the record applied (valid if policy_domain[0]) */
	enum dmarc_policy_tag tag;   /* p, sp or np */
	enum dmarc_policy requested; /* that tag's policy, as published */
	enum dmarc_policy applied;   /* after t=y: one level lower */
	bool spf_aligned, dkim_aligned;
	char dkim_domain[DMARC_DOMAIN_MAX + 1]; /* the aligned d=, "" if none */
	const char *why;                        /* a few static words for logs and headers */
};

struct dmarc_outcome {
	enum dmarc_result result;    /* the worst over the authors evaluated */
	enum dmarc_action action;    /* the strictest applied policy among failures */
	enum dmarc_from_status from; /* as given in the input */
	size_t n_authors;
	bool incomplete; /* more distinct Author Domains than were evaluated */
	struct dmarc_author author[DMARC_AUTHORS_MAX];
	unsigned n_queries; /* DNS questions asked (for logs and tests) */
};

/* What the evaluation is given. Everything is copied by dmarc_eval_new. */
struct dmarc_input {
	const struct dmarc_from *from;
	struct dmarc_spf spf;
	const struct dmarc_dkim *dkim;
	size_t n_dkim;
};

/* A DNS question the machine needs answered. */
struct dmarc_query {
	unsigned id;                 /* hand back to dmarc_eval_answer */
	int rrtype;                  /* DNS_TXT (policy records) or DNS_A (existence) */
	char name[DNS_NAME_MAX + 1]; /* "_dmarc.example.com", or the domain itself */
};

enum dmarc_step {
	DMARC_STEP_QUERY, /* q is filled: ask it, answer later with its id */
	DMARC_STEP_WAIT,  /* questions are outstanding and nothing else can be asked */
	DMARC_STEP_DONE,  /* dmarc_eval_outcome is final */
};

struct dmarc_eval;

/* NULL on out of memory. */
struct dmarc_eval *dmarc_eval_new(const struct dmarc_input *in);
void dmarc_eval_free(struct dmarc_eval *e);

/*
 * Advances as far as the answers so far allow. QUERY: q holds one more
 * question; call again for the next (all questions of one round can be
 * outstanding at once, in any order). WAIT: answer at least one
 * outstanding question first. DONE: finished. Never more than
 * DMARC_WALK_MAX questions per Tree Walk; each name is asked once per
 * evaluation (walks for several identifiers share answers).
 */
enum dmarc_step dmarc_eval_next(struct dmarc_eval *e, struct dmarc_query *q);

/*
 * The answer to question id: status and, for DNS_OK TXT answers, the n
 * records (each one's strings concatenated, NUL-terminated; copied as
 * needed). An unknown or already answered id is ignored.
 */
void dmarc_eval_answer(struct dmarc_eval *e, unsigned id, enum dns_status status,
                       const char *const *txt, size_t n);

/* The outcome so far (final after DONE). Owned by e. */
const struct dmarc_outcome *dmarc_eval_outcome(const struct dmarc_eval *e);

/* ------------------------------------------------------------------ async */

struct dns_resolver;
struct dmarc_check;

/* Runs on the resolver's worker once the evaluation is done (never from
 * inside dmarc_check_async). o is valid during the call only. */
typedef void (*dmarc_done_cb)(void *arg, const struct dmarc_outcome *o);

/*
 * Evaluates in on resolver res, whose worker runs base: each round's
 * questions are asked in parallel; a query that fails to start counts as a
 * temporary DNS error (each query has the resolver's own deadline). An
 * evaluation that needs no DNS (no From domain) still calls back from base,
 * never from inside this call. Returns a handle for dmarc_check_cancel, or
 * NULL on out of memory (then cb never runs). The handle is freed after cb
 * returns.
 */
struct event_base;
struct dmarc_check *dmarc_check_async(struct dns_resolver *res, struct event_base *base,
                                      const struct dmarc_input *in, dmarc_done_cb cb, void *arg);
/* Cancels the DNS queries and frees; cb does not run. NULL is fine. Not
 * from inside cb. */
void dmarc_check_cancel(struct dmarc_check *c);

/* ---------------------------------------------------------------- decision */

enum dmarc_mode {
	DMARC_MODE_OFF = 0, /* not checked */
	DMARC_MODE_MARK,    /* checked and recorded in Authentication-Results; always delivered */
	DMARC_MODE_ENFORCE, /* reject → 550, quarantine → the Junk folder */
};

/* A listener profile's DMARC settings. */
struct dmarc_profile {
	enum dmarc_mode mode;
	/* temperror: false delivers ("fail open"), true answers 451 so the
	 * client retries (RFC 9989 §5.3.6 leaves it to the receiver). */
	bool defer_on_temperror;
};

enum dmarc_disposition {
	DMARC_DELIVER = 0,  /* to the inbox */
	DMARC_DELIVER_JUNK, /* to the recipient's Junk folder, with header */
	DMARC_REJECT,       /* reply (5xx) at end of data */
	DMARC_DEFER,        /* reply (4xx) at end of data */
};

#define DMARC_JUNK_FOLDER "Junk" /* Maildir++ ".Junk", as Dovecot names it */
#define DMARC_HEADER_NAME "X-Tern-DMARC"

struct dmarc_decision {
	enum dmarc_disposition disposition;
	char reply[512]; /* REJECT/DEFER: the reply line without CRLF; else "" */
	/* A header field to prepend (with its CRLF) saying what DMARC asked and
	 * what was done, when the policy was not simply passed: a quarantine
	 * (enforced or marked) or a reject in mark mode; else "". */
	char header[1024];
	const char *folder; /* DMARC_JUNK_FOLDER for DELIVER_JUNK, else NULL */
};

/* Pure. */
void dmarc_decide(const struct dmarc_outcome *o, const struct dmarc_profile *prof,
                  struct dmarc_decision *d);

/* -------------------------------------------------- Authentication-Results */

enum authres_arc { AUTHRES_ARC_UNSET = 0, AUTHRES_ARC_NONE, AUTHRES_ARC_PASS, AUTHRES_ARC_FAIL };

struct authres_input {
	const char *authserv_id; /* our hostname */
	/* SPF results, one per identity checked (0..2); result NONE with an
	 * empty domain is skipped */
	const struct dmarc_spf *spf;
	size_t n_spf;
	const struct dmarc_dkim *dkim; /* one A-R result per signature */
	size_t n_dkim;
	const struct dmarc_outcome *dmarc; /* NULL: not checked */
	enum authres_arc arc;              /* UNSET: not reported */
	/* RFC 8617 §6: with arc, smtp.remote-ip (the client's address, NULL:
	 * left out) and, with arc pass, header.oldest-pass (0: every AMS
	 * verified) */
	const char *arc_remote_ip;
	unsigned arc_oldest_pass;
	/* Non-NULL: DMARC failed but a trusted ARC sealer's assessment made us
	 * deliver anyway: each failing dmarc result gets policy.override=arc
	 * and this text as a comment ("trusted ARC sealer d=... i=N") */
	const char *dmarc_override;
};

/*
 * Appends "Authentication-Results: ID; method=result props; ..." CRLF
 * to out, one resinfo per line, folded so that no line passes 78
 * columns where a break is possible. Values that are not RFC 2045 tokens are
 * quoted; values with control bytes are left out (they come from the
 * network). With nothing to report it writes "ID; none". dkim header.b is
 * the first 8 characters of b=. dmarc carries header.from and
 * policy.dmarc (RFC 9989 §9.1), the published policy in a comment.
 * TERN_OK, TERN_EINVAL (no or a bad authserv-id), or out's error.
 */
int authres_build(const struct authres_input *in, struct tbuf *out);

enum authres_strip_mode {
	AUTHRES_REMOVE = 0, /* delete the fields */
	AUTHRES_RENAME,     /* keep them as "X-Untrusted-<name>" (RFC 8601 §5 "obscure") */
};

struct authres_strip_opts {
	const char *authserv_id;
	enum authres_strip_mode mode;
	/* ARC sets whose ARC-Seal d= is one of these (our own sealing domains)
	 * are kept even when their AAR carries our authserv-id: a message we
	 * sealed may come back to us (mailing list, forward loop), and removing
	 * a set breaks every later seal. NULL-terminated, may be NULL. */
	const char *const *own_arc_domains;
	/* other field names (our private headers, e.g. DMARC_HEADER_NAME) that
	 * no incoming message may carry; NULL-terminated, may be NULL */
	const char *const *extra_names;
};

/*
 * Copies the header block hdr (as for dmarc_from_domains) into out
 * without the fields no sender may bring in (RFC 8601 §5):
 *   - Authentication-Results whose authserv-id is ours (ASCII case-
 *     insensitive) or whose version is not 1 (a version we do not know);
 *   - every field of an ARC set (ARC-Authentication-Results, ARC-Message-
 *     Signature, ARC-Seal with the same i=) whose AAR claims our
 *     authserv-id, unless its seal's d= is one of own_arc_domains;
 *   - the extra_names fields.
 * Other bytes are copied unchanged. *removed (if not NULL) gets the number
 * of fields removed or renamed. Pure. TERN_OK or out's error.
 */
int authres_strip(const char *hdr, size_t hdr_len, const struct authres_strip_opts *o,
                  struct tbuf *out, size_t *removed);

/*
 * The authserv-id of one Authentication-Results (or, with arc set, ARC-
 * Authentication-Results, after its "i=N;") field value, unquoted, into id;
 * *version gets the version (1 when absent). False if it does not parse.
 * Pure; exposed for tests and for the ARC verifier.
 */
bool authres_parse_id(const char *val, size_t len, bool arc, char *id, size_t idlen,
                      unsigned *version, unsigned *instance);

#endif
