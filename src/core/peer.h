/*
 * peer.h — the client address of a connection, as the servers (SMTP,
 * POP3) need it: written for logs, and counted for max_connections_per_ip.
 *
 * Owns: a table of connection counts per address (IPv4 and v4-mapped IPv6
 * counted as one), safe to use from every worker thread.
 * Never: logs, or counts an address past the limit it is given.
 */
#ifndef TERN_CORE_PEER_H
#define TERN_CORE_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* The address of ss as text ("192.0.2.1", "2001:db8::1"; a v4-mapped IPv6
 * address as IPv4), or "unknown" for another family. */
void peer_format(const struct sockaddr_storage *ss, char *out, size_t outlen);

struct peer_counts;

/* NULL when out of memory. */
struct peer_counts *peer_counts_new(void);
/* Frees the table (the counts of connections still open go with it). */
void peer_counts_free(struct peer_counts *pc);
/* One more connection from ss, unless it already has limit (or memory ran
 * out): false then, and nothing is counted. */
bool peer_counts_acquire(struct peer_counts *pc, const struct sockaddr_storage *ss, uint32_t limit);
/* One connection from ss less (each successful acquire, once). */
void peer_counts_release(struct peer_counts *pc, const struct sockaddr_storage *ss);

#endif
