/*
 * conf.h — tern's configuration: the UCL-subset parser's output turned into
 * a typed, validated struct with every default filled in.
 *
 * Format (a subset of UCL, the format rspamd uses; see docs/config.md):
 *   key = value;            strings "quoted" or bare words, numbers with
 *                           suffixes (k, m, g = x1024^n; s, min, h, d for
 *                           times), booleans (true/false/yes/no/on/off)
 *   section { ... }         nested objects; "key" may be quoted
 *   list = [ a, b, ];       arrays
 *   # comment, // comment, slash-star comments
 *   .include "file";        relative to the including file
 *
 * A struct tern_config is immutable once built and reference counted: the
 * daemon swaps in a new one on SIGHUP while sessions keep the one they
 * started with.
 */
#ifndef TERN_CORE_CONF_H
#define TERN_CORE_CONF_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* How a listener uses TLS (listen.NAME.tls). */
enum conf_listen_tls {
	CONF_LISTEN_TLS_NONE = 0, /* plain SMTP; STARTTLS is not offered */
	CONF_LISTEN_TLS_STARTTLS, /* STARTTLS offered (RFC 3207) */
	CONF_LISTEN_TLS_IMPLICIT, /* TLS from the first byte, the 220 inside it (RFC 8314) */
};

/* What a listener does when its milter is down, times out or speaks nonsense. */
enum conf_milter_action { CONF_MILTER_TEMPFAIL = 0, CONF_MILTER_ACCEPT, CONF_MILTER_REJECT };

struct conf_listener {
	char *name;               /* the section name: "mx", "submission", ... */
	char *address;            /* "IP:PORT" or "[IPv6]:PORT" */
	char *profile;            /* "mx", "submission", "pop3" or "http" (the API) */
	enum conf_listen_tls tls; /* default: starttls when tls has a certificate, else none */
	/* milters = ["inet:IP:PORT", "unix:/path"]: asked in this order at each
	 * SMTP step (policy/milter.h); default none. */
	char **milters;
	size_t n_milters;
	enum conf_milter_action milter_default_action; /* default tempfail */
	uint32_t milter_timeout;     /* seconds: connect and each step; default 30 */
	uint32_t milter_eom_timeout; /* seconds: the body and end of message; default 300 */
};

struct conf_alias {
	char *from;   /* lowercased address */
	char **to;    /* lowercased local addresses */
	size_t n_to;
};

struct conf_cidr {
	int family;         /* AF_INET or AF_INET6 */
	uint8_t addr[16];   /* network byte order; first 4 bytes for AF_INET */
	unsigned prefix;
};

struct conf_limits {
	uint64_t max_message_size;     /* bytes; default 32 MiB */
	uint32_t max_recipients;       /* per message; default 1000 */
	uint32_t max_connections;      /* total; default 10000 */
	uint32_t max_connections_per_ip; /* default 100 */
	uint32_t max_line_length;      /* SMTP command line incl. CRLF; default 2048 */
	uint32_t max_errors;           /* bad commands before 421; default 20 */
	uint32_t max_received_headers; /* loop detection; default 100 */
	uint32_t idle_timeout;         /* seconds waiting for a command; default 300 */
	uint32_t data_timeout;         /* seconds waiting for data; default 180 */
	uint32_t shutdown_grace;       /* seconds SIGTERM waits for transactions; default 30 */
	uint64_t inflight_memory;      /* bytes all messages being received may hold; 256 MiB */
	uint64_t queued_memory; /* bytes of committed messages kept for delivery; 128 MiB */
};

/*
 * Outbound TLS of a next hop (Postfix's smtp_tls_security_level):
 * none: never STARTTLS; opportunistic: STARTTLS when offered, any
 * certificate, plaintext if the handshake fails; require: TLS or defer, any
 * certificate; verify: TLS or defer, the certificate must chain to a trust
 * anchor (delivery.ca_file or the system store) and name the host (the route's
 * host or the MX name); dane: DANE (RFC 7672) when the host's TLSA records are
 * DNSSEC-secure, else opportunistic. Ordered: a larger value asks for more.
 */
enum conf_tls {
	CONF_TLS_NONE = 0,
	CONF_TLS_OPPORTUNISTIC,
	CONF_TLS_REQUIRE,
	CONF_TLS_VERIFY,
	CONF_TLS_DANE,
};

/* "none", "opportunistic", "require", "verify" or "dane". */
const char *conf_tls_name(enum conf_tls t);

/* A next hop: routes { "DOMAIN" { ... } } or relayhost { ... }. */
struct conf_route {
	char *domain;             /* lowercased; NULL for the relayhost */
	char *host;               /* from via = "smtp://HOST:PORT" (name or IP literal) */
	uint16_t port;            /* default 25; smtps:// defaults to 465 */
	bool implicit_tls;        /* via = "smtps://..." */
	enum conf_tls tls;        /* default opportunistic (require for smtps, verify with
	                             auth_user); with auth_user, none and opportunistic are
	                             refused unless host is a loopback address */
	char *auth_user;          /* or NULL */
	char *auth_password_file; /* first line is the password; or NULL */
};

struct conf_delivery {
	uint16_t remote_port;     /* port of other MXes; default 25 (tests point it at loopback) */
	uint32_t retry_base;      /* seconds; default 300 */
	uint32_t retry_max;       /* seconds; default 3600 */
	uint32_t max_lifetime;    /* seconds; default 5 days */
	uint32_t delay_warning;   /* seconds before a DELAY notice; default 4 h; 0 = never */
	uint32_t max_per_destination; /* concurrent connections per next hop; default 10 */
	uint32_t connect_timeout; /* seconds; default 30 */
	uint32_t command_timeout; /* seconds for replies (RFC 5321 §4.5.3.2 minimums apply
				     where longer); default 300 */
	char *ca_file;            /* PEM trust anchors for outbound verify; NULL: system store */
	bool dane;                /* MX delivery: DANE when the TLSA records are DNSSEC-secure
	                             (needs dns.trust_anchor_file); default true */
	bool mta_sts;             /* MX delivery: MTA-STS policies (RFC 8461); default true */
	uint16_t mta_sts_port;    /* port of the policy's HTTPS server; default 443 (tests) */
	bool chunking;            /* to a peer offering CHUNKING and PIPELINING, a message
	                             held in memory goes as MAIL, RCPT and BDAT LAST in one
	                             write (RFC 3030); false: DATA; default true */
	bool pipeline_next;       /* to a peer offering PIPELINING, the next queued message's
	                             MAIL, RCPTs and DATA go out behind the end of data (RFC
	                             2920 §3.1); default true */
};

/*
 * Outbound shaping (deliver/shaping.h): shaping { "DOMAIN" { connections;
 * per_connection; per_minute; } default { ... } backoff = 5min; }. A field
 * left 0 takes the built-in value for the domain, then default's.
 */
struct conf_shape {
	char *domain;            /* lowercase; NULL for default { } */
	uint32_t connections;    /* concurrent connections; 0 = not set */
	uint32_t per_connection; /* messages per connection before QUIT; 0 = not set */
	uint32_t per_minute;     /* messages started per minute; 0 = not set */
};

/* One IP pool (deliver/pools.h): pools { NAME { addresses = [...];
 * ehlo { "ADDR" = "NAME"; } warmup { start = 50; growth = 1.5; } } }. */
struct conf_pool {
	char *name;
	char **addrs; /* literal IPv4/IPv6 source addresses */
	char **ehlo;  /* parallel to addrs: EHLO name, or NULL (hostname) */
	size_t n_addrs;
	uint32_t warmup_start; /* messages per address on its first day; 0: no warm-up */
	double warmup_growth;  /* the daily cap is multiplied by this each day (>= 1) */
};

/* pool_select { keys { K = P; } domains { D = P; } tags { T = P; } default = P; } */
struct conf_pool_rule {
	char *key;  /* API key name, sender domain (lowercase) or tag */
	char *pool; /* the name of a pool in pools { } */
};

struct conf_shaping {
	struct conf_shape *shapes; /* per destination domain */
	size_t n_shapes;
	struct conf_shape dflt; /* default { }: fields 0 when not set */
	uint32_t backoff;       /* first back-off period, seconds; default 300 */
	struct conf_pool *pools;
	size_t n_pools;
	struct conf_pool_rule *sel_keys, *sel_domains, *sel_tags;
	size_t n_sel_keys, n_sel_domains, n_sel_tags;
	char *sel_default; /* pool for mail no rule matches, or NULL: no pool */
};

/*
 * Sending quotas (store/quota.h): quotas { "DOMAIN" { per_second;
 * per_hour; per_day; } } for each sending (From/envelope) domain, and
 * submission_quotas { default { ... } "USER" { ... } } for authenticated
 * submission users. A field left 0 is no limit in that window.
 */
struct conf_quota {
	char *name; /* lowercase domain, user name, or "default" */
	uint64_t per_second, per_hour, per_day;
};

struct conf_dns {
	char **forward;           /* "IP" or "IP@PORT"; empty = /etc/resolv.conf */
	size_t n_forward;
	char *trust_anchor_file;  /* or NULL: no DNSSEC validation */
};

/* One server certificate: tls { cert_file; key_file; } or an entry of
 * tls.certificates. */
struct conf_tls_cert {
	char *cert_file; /* PEM certificate chain, leaf first */
	char *key_file;  /* PEM private key (mode 0600) */
};

/* The server side of TLS (tls/tls.h). No certificate: no listener offers TLS. */
struct conf_tls_server {
	/* Every certificate, the default first: tls.cert_file/key_file if set,
	 * then tls.certificates in order; with self_signed, the one generated
	 * as DATA_DIR/tls/selfsigned-cert.pem and selfsigned-key.pem. */
	struct conf_tls_cert *certs;
	size_t n_certs;
	bool self_signed; /* certs[0] is made (and renewed) by tern at start and on SIGHUP */
};

/* Capture mode (tern capture): retention of caught messages and the
 * bounds of its HTTP listener. */
struct conf_capture {
	uint64_t max_messages;    /* keep at most this many; 0 = no limit (default 0) */
	uint32_t max_age;         /* seconds; 0 = keep forever (default 0) */
	/* Host names the HTTP API answers to besides IP literals, localhost
	 * and hostname: "name", ".domain" (it and every name under it) or "*"
	 * (any); lowercased. Default: none. */
	char **http_allowed_hosts;
	size_t n_http_allowed_hosts;
	uint64_t http_max_body;        /* request body bytes; default 64 MiB */
	uint32_t http_max_connections; /* concurrent HTTP connections; default 256 */
	/* The spam check of /api/v1/message/{ID}/sa-check: "rspamd:HOST:PORT",
	 * "spamassassin:HOST:PORT", or NULL (off; MP_ENABLE_SPAMASSASSIN may
	 * set it at run time). Syntax as store/checks.h's spam_check. */
	char *spam_check;
};

/* ---- policy { }: abuse defences on mx listeners (src/policy/policy.h) ---- */
struct policy_zone;
struct conf_policy {
	uint32_t dns_timeout;      /* seconds the greeting waits for DNS answers; default 5 */
	struct policy_zone *zones; /* dnsbl.zones, parsed; empty = no DNSBL */
	size_t n_zones;
	int32_t dnsbl_threshold;     /* refuse at this score or more; default 1 */
	uint32_t pregreet_delay;     /* seconds; 0 (default) = no early-talker test */
	bool pregreet_reject;        /* action: "reject" (default) or "ignore" (log only) */
	bool fcrdns_enabled;         /* look up forward-confirmed reverse DNS; default false */
	bool fcrdns_require;         /* refuse MAIL without it (implies enabled); default false */
	uint16_t fcrdns_reject_code; /* 450 (default) or 550 */
	bool greylist;               /* default false */
	uint32_t greylist_delay;     /* seconds; default 300 */
	uint32_t greylist_retry_window;  /* seconds a new triplet may take to retry; default 2 d */
	uint32_t greylist_expire;        /* seconds a passed triplet is remembered; default 35 d */
	uint32_t connections_per_minute; /* per client address (IPv6: /64); 0 = no limit */
	uint32_t messages_per_minute;
	uint32_t recipients_per_minute;
};

/* ---- auth { }: SMTP AUTH on submission listeners (src/auth/auth.h) ---- */

/* auth.oauth { }: XOAUTH2 and OAUTHBEARER with JWT access tokens. */
struct conf_oauth {
	char *issuer; /* NULL: no OAuth (the other fields are NULL too) */
	char *audience;
	char *jwks_file;  /* the issuer's public keys (JWKS), read at start and on SIGHUP */
	char *user_claim; /* the claim naming the user; default "email" */
	uint32_t leeway;  /* seconds of clock skew allowed; default 60 */
};

/* auth.throttle { }: the brute-force throttle (auth.h, struct throttle_config).
 * Read at start only: a SIGHUP keeps the counters and these settings. */
struct conf_auth_throttle {
	uint32_t delay_after;      /* failures answered at once before delays start; default 0 */
	uint32_t delay_ms;         /* delay of the first delayed failure, doubling; default 1000 */
	uint32_t max_delay_ms;     /* default 16000 */
	uint32_t addr_block_after; /* failures that block a client address; 0 = never; default 10 */
	uint32_t user_block_after; /* failures that block a user; 0 = never; default 30 */
	uint32_t block_time;       /* seconds a block lasts; default 900 */
	uint32_t forget_after;     /* seconds without failure that clear a count; default 3600 */
	uint32_t max_entries;      /* addresses and users remembered; default 65536 */
};

struct conf_auth {
	bool allow_plaintext;      /* offer AUTH without TLS (development only); default false */
	unsigned mechanisms;       /* SASL_MECH_BIT()s of auth.h; default PLAIN and LOGIN, plus
	                              XOAUTH2 and OAUTHBEARER when oauth is set; never 0 */
	bool received_header_user; /* name the user in the Received header; default false */
	struct conf_oauth oauth;
	struct conf_auth_throttle throttle;
};

/* DKIM signing keys: dkim { keys = [ { domain; selector; key_file; }, ... ]; }
 * (policy/dkim.h loads them). Several keys per domain sign each message
 * once each (an RSA and an Ed25519 key, say). */
struct conf_dkim_key {
	char *domain; /* lowercased; signs mail from it and its subdomains without keys */
	char *selector;
	char *key_file; /* PEM, PKCS#1 or PKCS#8, RSA or Ed25519, mode 0600 */
};

struct conf_dkim {
	struct conf_dkim_key *keys;
	size_t n_keys;
	bool header_relaxed; /* canonicalization = "relaxed/relaxed" (default) */
	bool body_relaxed;
	bool sign_relayed; /* also sign relay.networks clients' mail (smtp/sign.h); default false */
};

/* ---- auth_checks { }: SPF, DKIM and DMARC on mx listeners (smtp/verify.c) ---- */
enum conf_dmarc_mode {
	CONF_DMARC_OFF = 0, /* not evaluated */
	CONF_DMARC_MARK,    /* evaluated and recorded in Authentication-Results; delivered */
	CONF_DMARC_ENFORCE, /* p=reject -> 550 5.7.1, p=quarantine -> the Junk folder */
};

struct conf_auth_checks {
	bool spf;                 /* check SPF from MAIL FROM; default true */
	bool dkim;                /* verify DKIM signatures at end of data; default true */
	bool arc;                 /* validate ARC chains (RFC 8617), arc= in A-R; default true */
	enum conf_dmarc_mode dmarc; /* default CONF_DMARC_MARK */
	bool defer_on_temperror;  /* DMARC temperror: 451 (true) or deliver (false, default) */
	uint32_t timeout;         /* seconds for each check's DNS lookups; default 20 */
};

/* ---- dmarc { reports { } }: DMARC aggregate reports (policy/dmarc_report.c) ---- */
struct conf_dmarc_reports {
	char *from;        /* reports.from: sender of our reports; NULL = reporting off */
	char *org_name;    /* reports.org_name: report_metadata org_name; NULL = hostname */
	char *inbox;       /* reports.inbox: a local address whose mail is parsed as reports */
	uint32_t interval; /* reports.interval: seconds between sending rounds; default 1d */
};

struct conf_dmarc {
	struct conf_dmarc_reports reports;
};

/* ---- arc { }: ARC (RFC 8617) on mx listeners (smtp/verify_arc.c); the chain
 * is validated when auth_checks.arc is on ---- */
struct conf_arc {
	/* sealers (ARC-Seal d=) whose recorded assessment may override a DMARC
	 * failure (RFC 8617 §7.2); lowercased; default none */
	char **trusted_sealers;
	size_t n_trusted_sealers;
	/* seal mail forwarded off this host with the dkim.keys entry of this
	 * domain (and selector, when given; else its first entry); NULL: no
	 * sealing */
	char *seal_domain;
	char *seal_selector;
};

/* ---- suppression { }: the suppression list's intake (store/suppress.h) ---- */
struct conf_suppression {
	bool enabled;           /* skip suppressed recipients, add hard bounces; default true */
	char *verp_domain;      /* lowercased; set: VERP return paths bounce+TOKEN@it */
	char *feedback_address; /* lowercased; ARF reports sent here are consumed */
	char *unsubscribe_url;  /* base of one-click unsubscribe URLs, NULL: none */
};

struct tern_config {
	_Atomic int refs;
	char *source;        /* file it came from, or "(embedded default)" */
	char *hostname;      /* default: gethostname() */
	char *data_dir;      /* default "./tern-data" */
	char *users_file;    /* default DATA/users */
	char *user;          /* account to drop to when started as root; default "nobody" */
	char *log_level;     /* debug, info, warn, error; default info */
	uint32_t workers;    /* event-loop threads; 0 (default) = one per core */
	bool vrfy;           /* VRFY answers 252 without disclosing (default true) */
	bool expn;           /* EXPN allowed? default false: 502 */
	/* Plus addressing: each of these characters ends the user part of a
	 * local part (user+tag@ is user@). Default "+"; "" turns it off. */
	char *recipient_delimiter;

	char **local_domains; /* lowercased; default ["localhost"] */
	size_t n_local_domains;

	struct conf_alias *aliases;
	size_t n_aliases;

	/* senders { USER = [ADDRESS or "@DOMAIN", ...]; }: more addresses an
	 * authenticated user may send as (conf_may_send_as). The same shape as
	 * an alias: from is the user, to what it may use; sorted by user. */
	struct conf_alias *senders;
	size_t n_senders;

	struct conf_cidr *relay_networks; /* default 127.0.0.0/8 and ::1/128 */
	size_t n_relay_networks;

	struct conf_limits limits;

	struct conf_listener *listeners; /* default: mx on 127.0.0.1:2525, pop3 on 127.0.0.1:2110 */
	size_t n_listeners;

	struct conf_route *routes;       /* per-domain next hops */
	size_t n_routes;
	struct conf_route *relayhost;    /* default next hop, or NULL for MX delivery */
	struct conf_delivery delivery;
	struct conf_shaping shaping; /* shaping { }, pools { }, pool_select { } */
	struct conf_quota *quotas, *sub_quotas; /* quotas { }, submission_quotas { } */
	size_t n_quotas, n_sub_quotas;
	/* mailbox { quota = 1g; }: the storage limit of each local Maildir
	 * (Maildir++ maildirsize, as Dovecot counts it) for a user whose line in
	 * the users file has no userdb_quota_rule; 0 = unlimited. */
	struct conf_mailbox {
		uint64_t quota;
	} mailbox;
	struct conf_dns dns;
	struct conf_capture capture;
	struct conf_tls_server tls;
	struct conf_policy policy;
	struct conf_auth auth;
	struct conf_dkim dkim;
	struct conf_auth_checks auth_checks;
	struct conf_dmarc dmarc;
	struct conf_arc arc;
	/* metrics { address = "IP:PORT"; token = "..."; }: the Prometheus
	 * scrape listener (http/metrics_http.h). address NULL: off (default);
	 * token NULL: no Authorization needed. */
	struct conf_metrics {
		char *address;
		char *token;
	} metrics;
	struct conf_suppression suppression;
	/* tracking { base_url; }: the public base (http(s), no trailing '/') under
	 * which the API listener's /t/o/ and /t/c/ routes answer (http/tracking.h);
	 * NULL: a send asking for tracking is refused. */
	struct conf_tracking {
		char *base_url;
	} tracking;
	/* webhooks { }: the retry schedule of webhook deliveries (store/webhook.c). */
	struct conf_webhooks {
		uint32_t retry_base;   /* first retry; default 5 s */
		uint32_t retry_max;    /* longest wait between retries; default 1 h */
		uint32_t retry_window; /* failing this long disables the endpoint; 24 h */
		uint32_t timeout;      /* per request; default 10 s */
	} webhooks;
	/* events { retention = 30d; }: how long DATA/events.db keeps events. */
	struct conf_events {
		bool enabled;       /* default true; false: nothing recorded, no webhooks */
		uint32_t retention; /* seconds; 0 = forever */
	} events;
	/* archive { enabled; retention = 365d; include = [...]; } (store/archive.h) */
	struct conf_archive {
		bool enabled;       /* default false */
		uint32_t retention; /* seconds; 0 = forever; default 365 d */
		bool inbound;       /* messages with a local recipient; default on */
		bool outbound;      /* messages with a remote recipient; default on */
	} archive;
	/* Set by `tern capture` (never from a file): every recipient is
	 * accepted and caught in the capture store instead of delivered. */
	bool capture_mode;
};

/* The route for a recipient domain: a per-domain route, else the relayhost,
 * else NULL (deliver by MX). domain need not be lowercase. */
const struct conf_route *conf_find_route(const struct tern_config *c, const char *domain);

/* The dkim.keys entry arc.seal_domain (and seal_selector) names, or NULL
 * when there is none or sealing is off. */
const struct conf_dkim_key *conf_arc_seal_key(const struct tern_config *c);

/*
 * Builds a config from a file (path) or, when path is NULL, from the
 * embedded default. On failure returns NULL and writes a message of the
 * form "FILE:LINE: what is wrong" into err.
 */
struct tern_config *conf_load(const char *path, char *err, size_t errlen);
/* Same, from text in memory; name is used in messages. */
struct tern_config *conf_load_string(const char *text, size_t len, const char *name,
				     char *err, size_t errlen);

/* Turns a freshly loaded config (refcount 1, not yet shared) into capture
 * mode: one SMTP listener on smtp_address with profile "capture", and
 * data_dir (and the users file in it) replaced when data_dir is not NULL. */
int conf_apply_capture(struct tern_config *c, const char *smtp_address, const char *data_dir);

struct tern_config *conf_ref(struct tern_config *c);
void conf_unref(struct tern_config *c);

/* Prints the effective configuration (every key, defaults included) in the
 * same format conf_load reads. */
void conf_print(const struct tern_config *c, FILE *out);

/*
 * Settings that load but do less than their name promises, or more than is
 * safe (listed in docs/config.md): a submission listener nobody can log in
 * to (no certificate, so AUTH is never offered), auth.allow_plaintext
 * (passwords in clear), an outbound tls "require" (encrypts, does not
 * verify the certificate) and a relay network too wide to be meant
 * (conf_cidr_too_wide). Calls fn once per warning with the key's path
 * and what it does; returns the count.
 * conf_report_warnings writes them as "tern: warning: KEY: TEXT" lines on
 * out, or with out NULL logs each as event=config_warning.
 */
size_t conf_warnings(const struct tern_config *c,
                     void (*fn)(const char *key, const char *text, void *arg), void *arg);
void conf_report_warnings(const struct tern_config *c, FILE *out);

/*
 * conf_check.c. A relay network shorter than /CONF_RELAY_MIN_PREFIX (IPv4
 * or IPv6; 0.0.0.0/0 and ::/0 above all) lets most of the internet relay:
 * conf_warnings names it, loudly.
 */
#define CONF_RELAY_MIN_PREFIX 8
bool conf_cidr_too_wide(const struct conf_cidr *net);
/*
 * Prints c as conf_print does, but only the keys whose value differs from
 * the defaults (an empty config file), under the sections that hold them
 * (Postfix's postconf -n). Returns how many keys were printed.
 */
size_t conf_print_changed(const struct tern_config *c, FILE *out);

/* The user part of a local part under recipient_delimiter: the length
 * before the first delimiter character, or len when there is none. */
size_t conf_local_base_len(const struct tern_config *c, const char *local, size_t len);
/* Case-insensitive; domain need not be NUL-terminated. */
bool conf_is_local_domain(const struct tern_config *c, const char *domain, size_t len);
/* The quotas { } entry of a sending domain (lowercase; exact match), or
 * NULL; conf_submission_quota: the user's submission_quotas entry, else
 * its default, else NULL. */
const struct conf_quota *conf_domain_quota(const struct tern_config *c, const char *domain);
const struct conf_quota *conf_submission_quota(const struct tern_config *c, const char *user);
/* Looks up an alias for a lowercased address; NULL if none. */
const struct conf_alias *conf_find_alias(const struct tern_config *c, const char *addr);
/*
 * Whether user (an authenticated identity) may send with addr as its
 * envelope sender (RFC 6409 §6.1): addr is user itself, an alias one of
 * whose targets is user, or an entry of senders[user] (an address, or
 * "@domain" for every address of that domain); or one of those with a
 * recipient_delimiter tag (user+tag@domain). ASCII case-insensitive.
 * The null sender is the caller's decision; "" is never owned. Pure.
 */
bool conf_may_send_as(const struct tern_config *c, const char *user, const char *addr);
/* sa is a struct sockaddr_in or sockaddr_in6 (v4-mapped v6 matches v4 nets). */
bool conf_in_relay_networks(const struct tern_config *c, const void *sa);
bool conf_cidr_parse(const char *s, struct conf_cidr *out);
bool conf_cidr_match(const struct conf_cidr *net, const void *sa);
/* Parses "IP:PORT" / "[IPv6]:PORT" into a sockaddr_storage; false if bad. */
bool conf_parse_address(const char *s, void *ss_out, unsigned *len_out);

#endif
