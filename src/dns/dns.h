/*
 * dns.h — asynchronous DNS on libunbound, driven by a libevent loop
 * (DESIGN §2: a session waiting on DNS is suspended, never blocking).
 *
 * One resolver per event-loop worker: its libunbound context's fd sits on
 * that worker's event base, and callbacks run on that worker's thread.
 * Answers carry their DNSSEC status (secure / insecure / bogus) so that
 * DANE and policy code can tell a validated answer from a plain one.
 *
 * The rdata decoders (dns_parse_*) are pure functions over wire-format
 * rdata, unit-tested and fuzzed apart from any resolver.
 */
#ifndef TERN_DNS_DNS_H
#define TERN_DNS_DNS_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DNS_NAME_MAX 255

enum dns_rrtype {
	DNS_A = 1,
	DNS_PTR = 12,
	DNS_MX = 15,
	DNS_TXT = 16,
	DNS_AAAA = 28,
	DNS_TLSA = 52,
};

enum dns_status {
	DNS_OK = 0,      /* at least one record */
	DNS_NODATA,      /* the name exists, no record of this type */
	DNS_NXDOMAIN,    /* the name does not exist */
	DNS_TEMPFAIL,    /* SERVFAIL, timeout, network trouble: try again later */
	DNS_ERROR,       /* malformed answer, bad query, out of memory */
};

const char *dns_status_name(enum dns_status s);

struct dns_mx {
	uint16_t preference;
	char host[DNS_NAME_MAX + 1]; /* lowercase, no trailing dot; "" for the root (null MX) */
};

struct dns_tlsa {
	uint8_t usage, selector, mtype;
	uint8_t *data;   /* owned by the result */
	size_t len;
};

struct dns_result {
	enum dns_status status;
	bool secure;     /* DNSSEC validated */
	bool bogus;      /* DNSSEC validation failed (status is then DNS_TEMPFAIL) */
	int rrtype;
	char qname[DNS_NAME_MAX + 1];
	size_t n;        /* number of entries in the array for rrtype */
	struct dns_mx *mx;          /* DNS_MX, sorted by preference (ties in answer order) */
	struct in_addr *a;          /* DNS_A */
	struct in6_addr *aaaa;      /* DNS_AAAA */
	char **txt;                 /* DNS_TXT: each record's strings concatenated, NUL-terminated */
	char **ptr;                 /* DNS_PTR: names, lowercase, no trailing dot */
	struct dns_tlsa *tlsa;      /* DNS_TLSA */
	char *why_bogus;            /* when bogus: libunbound's reason, or NULL */
};

void dns_result_free(struct dns_result *r);

/* Called once per query on the resolver's worker thread. r is owned by the
 * resolver and freed after the callback returns. */
typedef void (*dns_cb)(void *arg, const struct dns_result *r);

struct dns_resolver;
struct event_base;

/*
 * Creates a resolver on base. forward: "IP" or "IP@PORT" servers to send
 * every query to (the tests' local unbound); NULL/0 uses /etc/resolv.conf.
 * trust_anchor_file: optional, enables DNSSEC validation. On failure
 * returns NULL with a message in err.
 */
struct dns_resolver *dns_resolver_new(struct event_base *base, const char *const *forward,
				      size_t n_forward, const char *trust_anchor_file, char *err,
				      size_t errlen);
/* Cancels outstanding queries (their callbacks do not run) and frees. */
void dns_resolver_free(struct dns_resolver *res);

/*
 * Starts a query; cb runs later (never from inside this call). Returns a
 * positive query id usable with dns_cancel, or a negative TERN_E* code.
 */
int dns_query(struct dns_resolver *res, const char *name, int rrtype, dns_cb cb, void *arg);
void dns_cancel(struct dns_resolver *res, int query_id);

/* ------------------------------------------------- pure rdata decoders */

/* Each decodes one record's rdata (uncompressed wire format, as libunbound
 * returns it); false if malformed. Names come out lowercase without the
 * trailing dot. */
bool dns_parse_mx(const uint8_t *rdata, size_t len, struct dns_mx *out);
bool dns_parse_name(const uint8_t *rdata, size_t len, char *out, size_t outlen, size_t *used);
/* TXT: concatenates the character-strings; out is malloc'd and NUL-terminated. */
bool dns_parse_txt(const uint8_t *rdata, size_t len, char **out);
bool dns_parse_tlsa(const uint8_t *rdata, size_t len, struct dns_tlsa *out);
/* The reverse-lookup name of an address ("4.3.2.1.in-addr.arpa", nibbles for v6). */
bool dns_ptr_name(int family, const void *addr, char *out, size_t outlen);

#endif
