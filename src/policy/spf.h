/*
 * spf.h — Sender Policy Framework (RFC 7208): check_host() for the HELO and
 * MAIL FROM identities, explanations, and the Received-SPF header field.
 * (To be folded into policy.h; kept apart while policy.h is being written.)
 *
 * Three layers, each usable alone:
 *   - pure parts over (pointer, length): the record parser (terms -> a typed
 *     list, any syntax error -> permerror), the macro expander (§7, a
 *     function of struct spf_macro_ctx) and the IP/CIDR matcher;
 *   - the evaluator, an explicit state machine that never does I/O: it
 *     asks for one DNS query at a time (name, type) and is resumed with the
 *     answer, so it runs on the async resolver in a session (below) and
 *     synchronously against an in-memory zone in the tests;
 *   - the async adapter on dns/dns.h: spf_check_async() runs the HELO check
 *     and then the MAIL FROM check on a worker's resolver, with a deadline.
 *
 * Everything that reaches a header, a log or a reply (explanation, problem,
 * mechanism) comes out bounded; the header writers quote or replace every
 * byte a sender or a DNS publisher controls.
 */
#ifndef TERN_POLICY_SPF_H
#define TERN_POLICY_SPF_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "core/buf.h"

/* RFC 7208 §4.6.4: DNS-querying terms per check_host(), MX and PTR names
 * looked at per mechanism. Not configurable: the RFC says MUST. */
#define SPF_MAX_LOOKUPS 10
#define SPF_MAX_MX_NAMES 10
#define SPF_MAX_PTR_NAMES 10

#define SPF_NAME_MAX 253    /* a target name, no trailing dot (§7.3) */
#define SPF_RECORD_MAX 8192 /* longer records are a permerror (see spf_record_parse) */
#define SPF_EXP_MAX 512     /* explanation strings are cut here (§6.2 allows it) */
#define SPF_MECH_MAX 128    /* mechanism text kept for Received-SPF */
#define SPF_PROBLEM_MAX 200

/* §2.6: the seven results. */
enum spf_result {
	SPF_NONE = 0,
	SPF_NEUTRAL,
	SPF_PASS,
	SPF_FAIL,
	SPF_SOFTFAIL,
	SPF_TEMPERROR,
	SPF_PERMERROR,
};

/* "none", "neutral", "pass", "fail", "softfail", "temperror", "permerror". */
const char *spf_result_name(enum spf_result r);

enum spf_identity {
	SPF_ID_MAILFROM = 0,
	SPF_ID_HELO,
};

/* "mailfrom" or "helo" (the identity= values of §9.1). */
const char *spf_identity_name(enum spf_identity id);

/* ------------------------------------------------------- addresses */

/* The client address. An IPv4-mapped IPv6 address is stored as IPv4: §5
 * says such a client is an IPv4 client for every mechanism. */
struct spf_ip {
	int family;       /* AF_INET or AF_INET6 */
	uint8_t addr[16]; /* 4 or 16 bytes in network order */
};

/* Parses "192.0.2.1", "2001:db8::1" or "::ffff:192.0.2.1". TERN_OK or
 * TERN_ESYNTAX. */
int spf_ip_parse(const char *s, struct spf_ip *out);
/* From a connected socket's peer address (AF_INET/AF_INET6 only). */
int spf_ip_from_sockaddr(const void *sockaddr, struct spf_ip *out);
/* True when the first `prefix` bits of a and b (each `bytes` long) agree. */
bool spf_prefix_match(const uint8_t *a, const uint8_t *b, size_t bytes, unsigned prefix);

/* ------------------------------------------------------- record parser */

enum spf_mech {
	SPF_MECH_ALL,
	SPF_MECH_INCLUDE,
	SPF_MECH_A,
	SPF_MECH_MX,
	SPF_MECH_PTR,
	SPF_MECH_IP4,
	SPF_MECH_IP6,
	SPF_MECH_EXISTS,
};

/* One directive. Every pointer points into the owning record's text. */
struct spf_term {
	enum spf_mech mech;
	char qualifier;   /* '+', '-', '~' or '?' (the default '+' filled in) */
	const char *text; /* the whole directive as published, e.g. "-ip4:192.0.2.0/24" */
	size_t text_len;
	const char *spec; /* domain-spec, unexpanded; NULL when absent (a, mx, ptr) */
	size_t spec_len;
	uint8_t cidr4, cidr6; /* a, mx, ip4, ip6: prefix lengths (32/128 when absent) */
	uint8_t net[16];      /* ip4 (first 4 bytes) and ip6: the network */
};

struct spf_record {
	char *text; /* owned copy of the record (NUL-terminated) */
	size_t len;
	struct spf_term *terms; /* owned: the mechanisms, in order */
	size_t n_terms;
	const char *redirect; /* redirect= domain-spec, or NULL */
	size_t redirect_len;
	const char *exp; /* exp= domain-spec, or NULL */
	size_t exp_len;
	bool has_all; /* an "all" anywhere: redirect= is then ignored (§6.1) */
};

/* True when the record text starts with the version section "v=spf1"
 * (case-insensitive) ended by a space or the end (§4.5). */
bool spf_record_is_spf1(const char *p, size_t n);

/*
 * Parses one SPF record (already selected: it starts with "v=spf1").
 * Checks the whole record against RFC 7208 §12 before anything is
 * evaluated (§4.6): unknown mechanisms, bad CIDR lengths, bad addresses,
 * domain-specs that do not end in a toplabel or a macro, macro syntax (and
 * c/r/t outside explanations), duplicate redirect=/exp=, any byte that is
 * not SP or visible ASCII. Unknown modifiers are checked and dropped.
 * Records over SPF_RECORD_MAX bytes are refused (a bound on what one
 * hostile record can make a check allocate; real records stay under 512).
 * Returns TERN_OK (out owned by the caller: spf_record_free), TERN_ESYNTAX
 * with words for a person in err, or TERN_ENOMEM.
 */
int spf_record_parse(const char *p, size_t n, struct spf_record *out, char *err, size_t errlen);
void spf_record_free(struct spf_record *r);

/* ------------------------------------------------------- macros (§7) */

/* The values macros expand to. Every field is a byte range the caller
 * owns for the duration of the call; ptr may be NULL when the caller knows
 * the string uses no %{p} (spf_macro_uses_ptr). */
struct spf_macro_ctx {
	const char *sender;
	size_t sender_len; /* s: local@domain */
	const char *local;
	size_t local_len; /* l ("postmaster" if none) */
	const char *sender_dom;
	size_t sender_dom_len; /* o */
	const char *domain;
	size_t domain_len; /* d: the current <domain> */
	const char *helo;
	size_t helo_len; /* h */
	const char *ptr;
	size_t ptr_len; /* p: validated name or "unknown" */
	const char *receiver;
	size_t receiver_len;     /* r (explanations only) */
	const struct spf_ip *ip; /* i, c, v */
	int64_t now;             /* t (explanations only) */
};

enum spf_macro_mode {
	SPF_MACRO_DOMAIN,  /* domain-spec / unknown modifier: no SP, no c/r/t */
	SPF_MACRO_EXPLAIN, /* explain-string (the TXT of exp=): SP and c/r/t allowed */
};

/* Syntax check alone (no values needed). TERN_OK or TERN_ESYNTAX. */
int spf_macro_check(const char *p, size_t n, enum spf_macro_mode mode);
/* domain-spec = macro-string domain-end (§7.1): the string must also end in
 * "." toplabel ["."] or in a macro. TERN_OK or TERN_ESYNTAX. */
int spf_domain_spec_check(const char *p, size_t n);
/* True when the string contains %{p} (any case): expanding it needs the
 * validated PTR names first. */
bool spf_macro_uses_ptr(const char *p, size_t n);

/*
 * Expands p..n into out. Uppercase macro letters are URL-escaped (§7.3).
 * Output longer than out's max: in SPF_MACRO_DOMAIN mode TERN_ELIMIT; in
 * SPF_MACRO_EXPLAIN mode the text is cut at the cap and TERN_OK returned.
 * TERN_ESYNTAX for a bad macro, TERN_ENOMEM. out is appended to.
 */
int spf_macro_expand(const char *p, size_t n, const struct spf_macro_ctx *ctx,
                     enum spf_macro_mode mode, struct tbuf *out);

/*
 * Turns an expanded domain-spec into a target name (§4.8, §7.3): drops one
 * trailing dot, removes whole labels from the left while it is over 253
 * characters. False when what remains cannot be a DNS name (empty, an empty
 * label, a label over 63): the evaluator treats such a name as matching
 * nothing. out has SPF_NAME_MAX + 1 bytes.
 */
bool spf_target_name(const char *p, size_t n, char *out, size_t *out_len);

/* ------------------------------------------------------- the evaluator */

/* What the caller passes for one SMTP transaction. Strings are borrowed
 * for the call that takes the request (the evaluator copies them). */
struct spf_request {
	struct spf_ip ip;
	const char *helo;        /* HELO/EHLO argument as received; NULL or "" if none */
	const char *mailfrom;    /* reverse-path without <>; "" for the null path */
	const char *receiver;    /* our host name: %{r}, receiver=; NULL -> "unknown" */
	const char *default_exp; /* explain-string for fail without exp=; NULL -> built in */
	int64_t now;             /* %{t}; 0 -> time(NULL) at creation */
};

/* Zero in max_queries or timeout_ms means the default; max_void may be 0. */
struct spf_limits {
	unsigned max_void;    /* §4.6.4 void lookups; default 2 */
	unsigned max_queries; /* every DNS query of one check_host(); default 128, more
	                         than a conforming evaluation can make (10 terms of 11
	                         queries, the records, %{p}, exp=): a bound on bugs */
	unsigned timeout_ms;  /* spf_check_async: per identity; default 20000 (§4.6.4) */
};

void spf_limits_default(struct spf_limits *l);

/* What a check comes to. Every string is NUL-terminated and bounded. */
struct spf_outcome {
	enum spf_result result;
	enum spf_identity identity;
	char domain[SPF_NAME_MAX + 3];           /* the <domain> checked, as given (may be
	                                            the malformed text that made it "none") */
	char mechanism[SPF_MECH_MAX + 1];        /* the directive that decided, as published
	                                            ("-all", "include:_spf.example.com"),
	                                            "default" if none matched; "" on errors */
	char problem[SPF_PROBLEM_MAX + 1];       /* why none/temperror/permerror; "" else */
	char explanation[SPF_EXP_MAX + 1];       /* fail only: exp= text or the default,
	                                            printable US-ASCII */
	unsigned lookups, void_lookups, queries; /* what the check spent */
};

/* One DNS question the evaluator needs answered. name is raw bytes as the
 * SPF text made them (no escapes, no trailing dot, any byte but NUL). */
struct spf_query {
	char name[SPF_NAME_MAX + 1];
	int type; /* DNS_A, DNS_AAAA, DNS_MX, DNS_TXT or DNS_PTR (dns/dns.h numbers) */
};

enum spf_dns_status {
	SPF_DNS_OK,       /* n >= 1 records */
	SPF_DNS_NODATA,   /* RCODE 0, no record of the type */
	SPF_DNS_NXDOMAIN, /* RCODE 3 */
	SPF_DNS_TEMPFAIL, /* SERVFAIL, any other RCODE, timeout, malformed answer */
};

/* One answer, borrowed for the duration of spf_check_run. */
struct spf_answer {
	enum spf_dns_status status;
	size_t n;
	const struct in_addr *a;     /* DNS_A */
	const struct in6_addr *aaaa; /* DNS_AAAA */
	const struct strv *txt;      /* DNS_TXT: each record, its strings joined, any bytes */
	const struct strv *names;    /* DNS_MX (in preference order) and DNS_PTR: raw names,
	                                any case, trailing dot allowed; "" or "." is a null MX */
};

struct spf_check;

/*
 * Starts check_host() for one identity (§4.1): for SPF_ID_MAILFROM the
 * sender is req->mailfrom (postmaster@HELO when it is empty, §2.4), for
 * SPF_ID_HELO it is postmaster@HELO (§2.3). lim may be NULL (defaults).
 * Returns NULL only when out of memory.
 */
struct spf_check *spf_check_new(const struct spf_request *req, enum spf_identity id,
                                const struct spf_limits *lim);
void spf_check_free(struct spf_check *c);

enum spf_step {
	SPF_STEP_QUERY, /* *q holds the next question; answer it, call again */
	SPF_STEP_DONE,  /* spf_check_outcome() is final */
};

/*
 * Drives the check. Call first with ans == NULL; each SPF_STEP_QUERY hands
 * out one question in *q (valid until the next call), and the next call
 * must carry its answer. Never blocks, never does I/O. After
 * SPF_STEP_DONE every further call returns SPF_STEP_DONE.
 */
enum spf_step spf_check_run(struct spf_check *c, const struct spf_answer *ans,
                            const struct spf_query **q);

/* The deadline passed: the check ends now with temperror (§4.6.4), or, if
 * only the explanation was being fetched, with its fail and the default
 * explanation. */
void spf_check_expire(struct spf_check *c);

const struct spf_outcome *spf_check_outcome(const struct spf_check *c);

/* A resolver the synchronous driver can call: fills *ans (memory valid
 * until the next call of resolve on the same arg). */
struct spf_dns {
	void (*resolve)(void *arg, const struct spf_query *q, struct spf_answer *ans);
	void *arg;
};

/* Runs a whole check synchronously against dns (tests, tools). out gets
 * the outcome. TERN_OK or TERN_ENOMEM. */
int spf_check_sync(const struct spf_request *req, enum spf_identity id,
                   const struct spf_limits *lim, const struct spf_dns *dns,
                   struct spf_outcome *out);

/* True when HELO is a name the HELO identity can be checked for (§2.3: a
 * valid multi-label domain name, not an address literal). */
bool spf_helo_checkable(const char *helo);

/* ------------------------------------------------------- async adapter */

/* Both identities of one transaction (§2.3, §2.4). helo.result is SPF_NONE
 * with a problem when the HELO name cannot be checked. When the reverse
 * path is null, the MAIL FROM identity is postmaster@HELO, the very check
 * the HELO identity made: its outcome is copied (identity=mailfrom), not
 * looked up twice. */
struct spf_verdict {
	struct spf_outcome helo;
	struct spf_outcome mailfrom;
};

typedef void (*spf_done_cb)(void *arg, const struct spf_verdict *v);

struct spf_async;
struct dns_resolver;
struct event_base;

/*
 * Checks HELO first, then MAIL FROM (RFC 7208 §2.3: "checking HELO before
 * MAIL FROM is the RECOMMENDED sequence"), on res, whose callbacks run on
 * base's thread. Each identity has lim->timeout_ms (NULL: defaults); a
 * check that runs out of time is temperror. req's strings are copied.
 * cb runs exactly once, on base's thread, never from inside this call,
 * unless spf_check_async_cancel() comes first; v is valid during cb only
 * and the handle is freed when cb returns. Returns NULL when out of memory
 * (cb will not run).
 */
struct spf_async *spf_check_async(struct dns_resolver *res, struct event_base *base,
                                  const struct spf_request *req, const struct spf_limits *lim,
                                  spf_done_cb cb, void *arg);
/* Stops a check whose callback has not run yet (RSET, QUIT, disconnect):
 * outstanding queries are cancelled, cb will not run, the handle is freed. */
void spf_check_async_cancel(struct spf_async *a);

/* ------------------------------------------------------- recording (§9) */

/*
 * Appends a complete "Received-SPF: ..." field, folded under 78 columns,
 * CRLF-terminated, for outcome o of request req (§9.1): the result, a
 * comment for people, then client-ip, envelope-from (MAIL FROM identity),
 * helo, receiver, identity, mechanism (when one decided) and problem (on
 * errors). A value that is not a dot-atom is a quoted-string; any byte a
 * header cannot carry (controls, non-ASCII) becomes '?', and sender-made
 * values are cut at 256 bytes. TERN_OK, TERN_ELIMIT (out's cap), TERN_ENOMEM.
 */
int spf_received_spf(const struct spf_request *req, const struct spf_outcome *o, struct tbuf *out);

/*
 * Appends the spf resinfo of an Authentication-Results field (RFC 8601
 * §2.7.2), e.g. "spf=pass smtp.mailfrom=example.com" or "spf=none
 * smtp.helo=mail.example.com", for the caller to place after its
 * authserv-id. Same safety rules as spf_received_spf.
 */
int spf_authres(const struct spf_request *req, const struct spf_outcome *o, struct tbuf *out);

#endif
