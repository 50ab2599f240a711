/*
 * id.h — queue ids.
 *
 * A queue id is 16 characters of Crockford base32 (0-9, A-Z without I L O U)
 * made of the creation time in microseconds and a per-process counter, so
 * ids sort by arrival and never repeat within one spool.
 */
#ifndef TERN_CORE_ID_H
#define TERN_CORE_ID_H

#include <stdbool.h>
#include <stddef.h>

#define QUEUE_ID_LEN 16

void queue_id_new(char out[QUEUE_ID_LEN + 1]);
bool queue_id_valid(const char *s, size_t n);

#endif
