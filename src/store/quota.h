/*
 * quota.h — sending quotas (issue 12 item 6): messages per second, hour
 * and day counted per (kind, name), kind being an API key, a sending
 * domain or a submission user. Checked and charged at acceptance (API:
 * before the spool put of each message; SMTP submission: later).
 *
 * Windows are fixed (aligned to the second, the UTC hour, the UTC day):
 * a refused message is told the seconds until its window ends, which is
 * when a slot frees. The per-second count lives in memory only; hour and
 * day counts are also written to DATA/quota.db (SQLite, no fsync; by a
 * write-behind thread about once a second and at the last quota_close: a
 * crash may forget a second's charges, never refuse mail wrongly) so a
 * restart does not reset a day's count. quota_take never waits for the
 * disk: it may be called on an event loop.
 *
 * Thread safety: one process-wide table under a mutex.
 */
#ifndef TERN_STORE_QUOTA_H
#define TERN_STORE_QUOTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum quota_kind { QUOTA_KEY = 0, QUOTA_DOMAIN = 1, QUOTA_USER = 2 };
enum quota_window { QUOTA_SECOND = 0, QUOTA_HOUR = 1, QUOTA_DAY = 2 };

/* Limits of one subject; 0 = no limit in that window. */
struct quota_limits {
	uint64_t per_second, per_hour, per_day;
};

/* One subject to charge: kind, name (copied on charge; lowercase domains). */
struct quota_ask {
	enum quota_kind kind;
	const char *name;
	struct quota_limits lim;
};

/* Why a message was refused. */
struct quota_refusal {
	enum quota_kind kind;
	char name[256];
	enum quota_window window;
	uint64_t limit;
	int64_t retry_after; /* seconds until the window frees a slot (>= 1) */
};

/* "second", "hour", "day"; "key", "domain", "user". */
const char *quota_window_name(enum quota_window w);
const char *quota_kind_name(enum quota_kind k);
bool quota_limits_any(const struct quota_limits *l);

/*
 * Opens DATA/quota.db (made if missing) and loads the current hour and day
 * counts. Process-wide, counted: each quota_open pairs with one
 * quota_close. With data_dir NULL, memory only (tests). TERN_OK, TERN_EIO
 * (the module still works, in memory).
 */
int quota_open(const char *data_dir);
void quota_close(void);

/*
 * All or nothing: when every ask has room in every window at now (unix
 * seconds), charges each one message and returns TERN_OK; else charges
 * nothing, fills *why (the first full window) and returns TERN_ELIMIT.
 * Asks with no limits are still counted (for usage reports).
 */
int quota_take(const struct quota_ask *asks, size_t n, int64_t now, struct quota_refusal *why);

/* As quota_take without charging: TERN_OK when each ask has room now. */
int quota_check(const struct quota_ask *asks, size_t n, int64_t now, struct quota_refusal *why);

/* Messages counted for (kind, name) in the current second, hour and day at
 * now; zeros when unknown. Any pointer may be NULL. */
void quota_count(enum quota_kind kind, const char *name, int64_t now, uint64_t *sec, uint64_t *hour,
                 uint64_t *day);

/*
 * For the SES account endpoint (GET /v2/email/account): a key's
 * Max24HourSend (its per-day limit, else the per-hour limit times 24, else
 * -1 for none), MaxSendRate (per-second limit, else -1) and SentLast24Hours
 * (today's count: windows are UTC days, not a sliding 24 hours).
 */
void quota_usage(const char *key_name, const struct quota_limits *lim, double *max24h,
                 double *max_rate, double *sent24h);

#endif
