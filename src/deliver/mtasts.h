/*
 * mtasts.h — SMTP MTA Strict Transport Security (RFC 8461) for MX delivery:
 * the TXT record and policy parsers (pure functions over (ptr, len), unit
 * tested and fuzzed), MX pattern matching, and the blocking policy getter
 * (cache in DATA_DIR/mta-sts/, HTTPS fetch with libcurl) that remote.c runs
 * on its thread pool.
 *
 * Owns: what a policy says and whether an MX host is allowed by it; the
 * cache files (one per domain: the TXT id, the expiry and the policy text).
 * Never: runs on an event loop (mtasts_get blocks: files and network),
 * follows a redirect, uses a proxy from the environment, reads more than
 * MTASTS_POLICY_MAX bytes of a policy, or trusts a policy fetched over a
 * certificate that does not verify for mta-sts.DOMAIN.
 * SECURITY: the TXT record and the policy body are untrusted input; both
 * parsers are bounded and fuzzed (tests/fuzz/fuzz_mtasts.c).
 */
#ifndef TERN_DELIVER_MTASTS_H
#define TERN_DELIVER_MTASTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "dns/dns.h"

#define MTASTS_POLICY_MAX (64u * 1024u) /* RFC 8461 §3.3: 64 KiB is plenty */
#define MTASTS_MAX_MX 32                /* patterns kept; more are ignored */
#define MTASTS_MAX_AGE 31557600u        /* RFC 8461 §3.2: at most a year */
#define MTASTS_ID_MAX 32

enum mtasts_mode { MTASTS_NONE = 0, MTASTS_TESTING, MTASTS_ENFORCE };

struct mtasts_policy {
	enum mtasts_mode mode;
	uint32_t max_age;
	size_t n_mx;
	char mx[MTASTS_MAX_MX][DNS_NAME_MAX + 1]; /* lowercase, no trailing dot; "*.x.y" */
};

const char *mtasts_mode_name(enum mtasts_mode m);

/*
 * The policy body (RFC 8461 §3.2): "key: value" lines ended by LF or CRLF;
 * version STSv1, mode, max_age (at most MTASTS_MAX_AGE) are required, and
 * at least one mx unless the mode is none; the first of a repeated key
 * counts (every mx counts); unknown keys are ignored. 0, or -1 with the
 * reason in err.
 */
int mtasts_policy_parse(const char *p, size_t len, struct mtasts_policy *out, char *err,
                        size_t errlen);

/*
 * One TXT record's text: "v=STSv1; id=ID; ..." (RFC 8461 §3.1). The id (1-32
 * letters and digits) into id; false if the record is not an STSv1 record
 * or is malformed.
 */
bool mtasts_txt_parse(const char *p, size_t len, char id[MTASTS_ID_MAX + 1]);

/* Does host (an MX name) match one of the policy's mx patterns? "*.a.b"
 * stands for exactly one more label; case-insensitive; a trailing dot on
 * host is ignored. */
bool mtasts_mx_match(const struct mtasts_policy *p, const char *host);

/* ------------------------------------------------ the blocking getter */

struct mtasts_req {
	/* in */
	char domain[DNS_NAME_MAX + 1]; /* the recipient domain, lowercase */
	char id[MTASTS_ID_MAX + 1];    /* the TXT id, or "" (no valid record) */
	char addr[64];                 /* an address of mta-sts.DOMAIN, or "" */
	uint16_t port;                 /* delivery.mta_sts_port */
	const char *ca_pem;            /* trust anchors (PEM) or NULL: system store */
	size_t ca_len;
	char cache_dir[4096]; /* DATA_DIR/mta-sts */
	uint32_t timeout;     /* seconds for the whole fetch */
	time_t now;
	/* out */
	bool have; /* a policy applies (policy is set) */
	struct mtasts_policy policy;
	const char *source; /* "cache", "fetched", "stale-cache", "none" */
	char why[400];      /* when a fetch failed: why */
};

/*
 * Finds the policy of q->domain: the cached one when its id is q->id (or
 * q->id is "" — RFC 8461 §5.1: a cached policy outlives its TXT record) and
 * it has not expired; else, when q->id is set, fetches
 * https://mta-sts.DOMAIN/.well-known/mta-sts.txt from q->addr:q->port
 * (status 200, text/plain, no redirect, at most MTASTS_POLICY_MAX bytes)
 * and caches it for its max_age; a failed fetch keeps a cached policy that
 * has not expired. Blocks: run it on the thread pool.
 */
void mtasts_get(struct mtasts_req *q);

/* Once, before any thread calls mtasts_get (libcurl's global set-up). */
int mtasts_global_init(void);

#endif
