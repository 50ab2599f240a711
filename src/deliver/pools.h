/*
 * pools.h — IP pools for outbound mail (remote.c asks it): which pool a
 * message leaves from, which source address of the pool a connection binds,
 * the EHLO name of that address, and the warm-up caps of new addresses.
 *
 * Owns: pool selection (pool_select { } of the config: message tag, then
 * sender domain, then default; API keys through pool_for_key), the
 * X-Tern-Tag header (read and removed before the message leaves), the
 * round-robin choice within a pool, and the warm-up counters, persisted as
 * DATA/pools/warmup (one "ADDRESS FIRST_DAY DAY COUNT" line per address).
 * Never: blocks on a sync or writes a file on the caller's thread (the
 * counter file is rewritten by a write-behind thread about once a second
 * after counts change, and at pools_close, without fsync: a crash may lose
 * the last second's counts, which only lets an address send a little more
 * that day), or lets a message leave from an address the pool does not list.
 */
#ifndef TERN_DELIVER_POOLS_H
#define TERN_DELIVER_POOLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/conf.h"

#define POOL_TAG_MAX 64
#define POOL_TAG_HEADER "X-Tern-Tag"

/*
 * Pure: the pool for a message: pool_select.tags[tag] when tag is neither
 * NULL nor "", else pool_select.domains for the sender's domain (the domain,
 * then each parent domain: "mail.example.org" matches "example.org"), else
 * pool_select.default; NULL: no pool (the system's source address and
 * hostname, as without pools).
 */
const char *pool_select(const struct conf_shaping *sh, const char *sender, const char *tag);
/* Pure: pool_select.keys[name] (an API key's name), or NULL. For the HTTP
 * API: a key's pool overrides pool_select's choice. */
const char *pool_for_key(const struct conf_shaping *sh, const char *name);
/* The pool named name, or NULL. */
const struct conf_pool *pool_find(const struct conf_shaping *sh, const char *name);

/*
 * Pure: finds the X-Tern-Tag header in the header section of data[0..len),
 * copies its value (trimmed, at most POOL_TAG_MAX-1 bytes, "" if none) to
 * tag, and removes every such header (with its folded lines) from data.
 * Returns the new length.
 */
size_t pool_take_tag(char *data, size_t len, char *tag, size_t taglen);

/* Pure: the warm-up cap on day (0 = the address's first day): start *
 * growth^day, at most 1e9. */
uint64_t pool_warmup_cap(uint32_t start, double growth, unsigned day);

/*
 * A source address of pool for a destination of family (AF_INET or
 * AF_INET6): prefer (an address pool_take reserved for this connection)
 * when it is of that family, else round robin over the pool's addresses of
 * that family, skipping any at its warm-up cap today. TERN_OK with *ss and
 * *len (port 0), *ehlo (the address's EHLO name, or NULL for the hostname)
 * and the address text; TERN_ENOTFOUND when the pool has no address of
 * that family; TERN_ELIMIT when every one is at its cap.
 */
int pool_pick(const struct tern_config *conf, const struct conf_pool *pool, int family,
              const char *prefer, struct sockaddr_storage *ss, socklen_t *len, const char **ehlo,
              char *addr, size_t addrlen);
/*
 * Counts one message against the warm-up cap of an address of pool, in the
 * same step as the check, so that connections racing for the last message
 * of the day cannot both take it: want (the address a connection is bound
 * to) when not "", else the next address with room (copied to addr). false:
 * no room (want's, or any address's). Pools without warm-up always give
 * (and count nothing; addr is then "").
 */
bool pool_take(const struct tern_config *conf, const struct conf_pool *pool, const char *want,
               char *addr, size_t addrlen);
/* Whether some address of pool may still send today; false with *wait the
 * seconds to the next UTC day. Pools without warm-up always may. */
bool pool_has_room(const struct tern_config *conf, const struct conf_pool *pool, double *wait);
/* At shutdown, after the delivery side stopped: stops the write-behind and
 * writes the last counts. */
void pools_close(void);
/* Forgets the counters (unit tests). */
void pools_reset(void);

#endif
