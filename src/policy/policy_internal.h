/*
 * policy_internal.h — what the policy module's files share and nobody else
 * may include: the rate table (ratelimit.c) and the greylist store
 * (greylist.c), both shared by every worker and locked inside.
 */
#ifndef TERN_POLICY_INTERNAL_H
#define TERN_POLICY_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "policy/policy.h"

/* ---- rate table (ratelimit.c) ---- */

enum rl_kind { RL_CONNECTIONS = 0, RL_MESSAGES, RL_RECIPIENTS, RL_KINDS };

struct ratelimit;

struct ratelimit *ratelimit_new(void);
void ratelimit_free(struct ratelimit *r);
/*
 * Counts one event of kind for the client network key, if per_minute
 * allows it (policy_gcra). True if allowed. Thread-safe. The table is
 * bounded: when a bucket is full the entry closest to idle is reused, and
 * when memory runs out the event is allowed (a limit that fails open; the
 * connection limits in `limits` still hold).
 */
bool ratelimit_take(struct ratelimit *r, const uint8_t key[POLICY_NET_KEY_LEN], enum rl_kind kind,
                    uint32_t per_minute, uint64_t now_us);

/* ---- greylist (greylist.c) ---- */

struct greylist;

/*
 * The greylist of DATA_DIR/policy.db: loaded into memory here if the file
 * exists (blocking: call at start-up), then written behind by one thread of
 * its own, which creates the file on the first write. NULL with a message
 * in err on failure.
 */
struct greylist *greylist_open(const char *data_dir, char *err, size_t errlen);
/* Writes what is pending, then frees. */
void greylist_close(struct greylist *g);
/*
 * One attempt of the triplet (client network, sender, recipient) at now:
 * policy_grey_step on the stored entry, which is then updated in memory
 * and queued for the disk. Thread-safe; never does I/O itself.
 */
enum policy_grey_result greylist_check(struct greylist *g, const uint8_t net[POLICY_NET_KEY_LEN],
                                       const char *net_text, const char *sender, const char *rcpt,
                                       int64_t now, const struct policy_grey_params *p,
                                       uint32_t *wait);

#endif
