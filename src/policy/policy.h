/*
 * policy.h — abuse defences for mx listeners: DNSBL/DNSWL scoring, the
 * pre-greeting (early talker) test, forward-confirmed reverse DNS,
 * greylisting and per-client rate limits (docs/config.md, `policy { }`).
 *
 * Two layers:
 *   - pure functions (zone specs, DNSBL query names, scores, client keys,
 *     the rate-limit and greylist arithmetic), unit-tested and fuzzed;
 *   - the engine: one struct policy per daemon (resolvers per worker, the
 *     shared rate table, the greylist), one struct policy_session per SMTP
 *     session on an mx listener. The SMTP server calls it at connect (the
 *     greeting may wait for it), at MAIL and at RCPT; everything else about
 *     the checks lives here.
 *
 * The event loop never blocks: DNS goes through the per-worker async
 * resolver with a deadline, the greylist is an in-memory table written
 * behind to SQLite by its own thread, rate limits are counters in memory.
 * A DNS failure never blocks mail on its own: a DNSBL that does not answer
 * counts as "not listed" and is logged.
 */
#ifndef TERN_POLICY_POLICY_H
#define TERN_POLICY_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "dns/dns.h"

/* ------------------------------------------------------------ pure parts */

#define POLICY_ZONES_MAX 32
#define POLICY_WEIGHT_MAX 1000
/* A zone name leaves room for the 64 bytes of an IPv6 nibble prefix. */
#define POLICY_ZONE_NAME_MAX (DNS_NAME_MAX - 2 - 64)

/*
 * One DNSBL/DNSWL entry in postscreen's notation: "zone[=filter][*weight]".
 * The filter "d.d.d.d" restricts which A record values count as a listing;
 * each d is a number 0-255 or a bracketed list of numbers and ranges,
 * "[2..5]", "[2;4;9..11]". Without a filter any A record lists. A negative
 * weight makes the zone a whitelist (DNSWL).
 */
struct policy_zone {
	char zone[POLICY_ZONE_NAME_MAX + 1]; /* lowercase, no trailing dot */
	bool filtered;
	uint8_t octet[4][32]; /* bit v of octet[i]: value v matches octet i */
	int32_t weight;       /* default 1; -POLICY_WEIGHT_MAX..POLICY_WEIGHT_MAX */
};

/*
 * Parses one zone spec (s, len; need not be NUL-terminated). On error
 * returns TERN_ESYNTAX with a reason (no position, no echo of the input)
 * in err. Pure.
 */
int policy_zone_parse(const char *s, size_t len, struct policy_zone *out, char *err, size_t errlen);

/* Writes the canonical spec ("zone=127.0.0.[2..5]*3"; the weight always,
 * the filter when there is one) that policy_zone_parse reads back to the
 * same struct. Returns false if out is too small. */
bool policy_zone_format(const struct policy_zone *z, char *out, size_t outlen);

/* True if one of the n A records (network byte order) passes z's filter. */
bool policy_zone_matches(const struct policy_zone *z, const struct in_addr *a, size_t n);

/* The A records one query returned for an entry's zone (NULL/0: not listed). */
struct policy_dnsbl_answer {
	const struct in_addr *a;
	size_t n;
};

/*
 * The DNSBL score: the sum of the weights of the entries whose answer
 * passes their filter. *top (if not NULL) gets the index of the listing
 * entry with the highest positive weight (the first on a tie), or n when
 * no entry with a positive weight lists the client. Pure.
 */
int policy_dnsbl_score(const struct policy_zone *zones, const struct policy_dnsbl_answer *ans,
                       size_t n, size_t *top);

/*
 * The client's address in a comparable form: IPv4 (and IPv4-mapped IPv6)
 * as AF_INET with 4 bytes, IPv6 as AF_INET6 with 16. sa is a struct
 * sockaddr_in or sockaddr_in6. False for any other family.
 */
bool policy_client_addr(const struct sockaddr_storage *sa, int *family, uint8_t addr[16]);

/* The DNSBL query name: "4.3.2.1.zone" for IPv4, the 32 reversed nibbles
 * and the zone for IPv6. False if it does not fit or family is unknown. */
bool policy_dnsbl_name(int family, const uint8_t *addr, const char *zone, char *out, size_t outlen);

/*
 * The key of the client's network: family byte then the address with the
 * bits past the prefix cleared (v4_prefix for IPv4, v6_prefix for IPv6).
 * text (if not NULL) gets "192.0.2.0/24" / "2001:db8:1:2::/64".
 */
#define POLICY_NET_KEY_LEN 17
#define POLICY_NET_TEXT_MAX 64
void policy_net_key(int family, const uint8_t *addr, unsigned v4_prefix, unsigned v6_prefix,
                    uint8_t key[POLICY_NET_KEY_LEN], char *text, size_t textlen);

/*
 * A rate limit as a generic cell rate algorithm: per_minute events are
 * allowed in a burst, then one every 60/per_minute seconds. *tat is the
 * cell's state (0 when new), now_us a monotonic clock. Returns true and
 * counts the event if it is allowed; false (state unchanged) if not.
 * per_minute 0 means no limit. Pure.
 */
bool policy_gcra(uint64_t *tat, uint64_t now_us, uint32_t per_minute);

/* One greylist triplet's state (times in seconds since the epoch). */
struct policy_grey_entry {
	int64_t first; /* first attempt of the current round */
	int64_t last;  /* last attempt seen */
	bool passed;   /* retried after the delay: accepted until it expires */
};

struct policy_grey_params {
	uint32_t delay;        /* seconds a new triplet must wait */
	uint32_t retry_window; /* seconds a new triplet waits for its retry */
	uint32_t expire;       /* seconds a passed triplet stays passed after its last use */
};

enum policy_grey_result {
	POLICY_GREY_NEW,        /* first attempt (or the old round expired): defer */
	POLICY_GREY_EARLY,      /* retried before the delay ran out: defer */
	POLICY_GREY_PASS_FIRST, /* first retry after the delay: accept, triplet now passed */
	POLICY_GREY_PASS,       /* a passed triplet: accept */
};

/*
 * Updates e for an attempt at now (exists: e holds a stored entry; if not,
 * e is initialised) and says what to do. *wait gets the seconds left for
 * NEW/EARLY. Pure.
 */
enum policy_grey_result policy_grey_step(struct policy_grey_entry *e, bool exists, int64_t now,
                                         const struct policy_grey_params *p, uint32_t *wait);

/* --------------------------------------------------------------- engine */

#define POLICY_REPLY_MAX 512

enum policy_action {
	POLICY_PASS = 0, /* go on as if there were no policy */
	POLICY_WAIT,     /* connect only: the greeting waits for the callback */
	POLICY_REJECT,   /* MAIL/RCPT: this command fails with reply; the session goes on */
	POLICY_REFUSE,   /* connect: reply replaces the greeting; then only QUIT is accepted
	                    (RFC 5321 §3.1) */
	POLICY_CLOSE,    /* write reply, then close the connection */
};

struct policy_verdict {
	enum policy_action action;
	/* The reply line without CRLF, for REJECT/REFUSE/CLOSE; for WAIT,
	 * when not empty, the first line of a multi-line greeting ("220-...")
	 * to write at once. */
	char reply[POLICY_REPLY_MAX];
};

struct policy;
struct policy_session;
struct tern_config;
struct worker;

/*
 * The daemon's policy engine for workers[0..n_workers). conf is the start
 * configuration: the resolvers use its dns section (a change needs a
 * restart); the greylist is kept in DATA_DIR/policy.db and loaded here if it
 * exists (this reads the disk: call before the workers start). NULL with a
 * message in err on failure.
 */
struct policy *policy_new(struct worker *const *workers, size_t n_workers,
                          const struct tern_config *conf, char *err, size_t errlen);
/* After the workers stopped and every session was freed: writes what the
 * greylist has not written yet, and frees. */
void policy_free(struct policy *p);

/* Called on the session's worker when the connect-time checks are done
 * (never from inside a policy_* call). v->action is PASS, REFUSE or CLOSE. */
typedef void (*policy_cb)(void *arg, const struct policy_verdict *v);

/*
 * Starts the checks for a new session on an mx listener, on worker w's
 * thread. conf must outlive the session (the SMTP session holds it); sa is
 * the client; sess names the session in logs ("0.12"). Fills v:
 *   PASS:  greet now;
 *   CLOSE: write v->reply and close (a rate limit);
 *   WAIT:  write v->reply if not empty, keep reading (so early talk is
 *          seen, see policy_client_spoke) but execute nothing, and greet
 *          when cb says so.
 * Returns the session for the later hooks, or NULL when nothing more is to
 * be checked (relay.networks clients, a CLOSE, out of memory: then the
 * client is let through and the failure logged).
 */
struct policy_session *policy_connect(struct policy *p, struct worker *w,
                                      const struct tern_config *conf,
                                      const struct sockaddr_storage *sa, const char *sess,
                                      policy_cb cb, void *arg, struct policy_verdict *v);

/* The client sent bytes while the greeting was waiting. ps may be NULL. */
void policy_client_spoke(struct policy_session *ps);

/* At MAIL (sender "" for the null path): reverse-DNS requirement, message
 * rate. v->action is PASS, REJECT or CLOSE. ps may be NULL (PASS). */
void policy_mail(struct policy_session *ps, const char *sender, bool authenticated,
                 struct policy_verdict *v);

/* At RCPT, before the recipient is looked up: the recipient rate (every
 * RCPT counts, a harvest of unknown names too). v->action is PASS or REJECT. */
void policy_rcpt_rate(struct policy_session *ps, const char *sender, const char *rcpt,
                      bool authenticated, struct policy_verdict *v);

/* At RCPT, once tern would take the recipient (it exists, or relaying is
 * allowed): greylisting. Unknown and relay-denied recipients get their
 * permanent refusal first, so a 451 is never a lie (postgrey's order).
 * v->action is PASS or REJECT. */
void policy_rcpt_greylist(struct policy_session *ps, const char *sender, const char *rcpt,
                          bool authenticated, struct policy_verdict *v);

/* The client's forward-confirmed reverse name (for Received and logs), or
 * NULL when not checked or not confirmed. ps may be NULL. */
const char *policy_client_name(const struct policy_session *ps);

/* Cancels what is outstanding (no callback runs afterwards) and frees.
 * NULL is fine. */
void policy_session_free(struct policy_session *ps);
/* The async resolver of worker w (made on w's thread on first use, with
 * the config's dns section), for other checks of mx sessions (SPF, DKIM,
 * DMARC: smtp/verify.c) to share. NULL if it could not be made (logged
 * once) or w is not one of p's workers. Call on w's thread only. */
struct dns_resolver *policy_resolver(struct policy *p, struct worker *w);

#endif
