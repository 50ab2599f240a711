/*
 * ses_keys.h — the SigV4 key pairs of API keys (issue 12 item 3). The
 * access key id is "AKTERN" and the key id in upper case; the secret
 * access key is HMAC-SHA256(master, id) in hex, where master is 32 random
 * bytes in DATA/apikeys.master (0600, the daemon's user). So the key
 * database alone holds no usable secret (as for bearer tokens, whose
 * SHA-256 only it keeps), and nothing more needs storing per key: the
 * daemon recomputes the secret of a key id on each request.
 */
#ifndef TERN_STORE_SES_KEYS_H
#define TERN_STORE_SES_KEYS_H

#include <stdbool.h>
#include <stddef.h>

#include "store/apikeys.h"

#define SES_MASTER_LEN 32
#define SES_AKID_LEN (6 + APIKEY_ID_LEN)
#define SES_SECRET_LEN 64

/*
 * Reads DATA/apikeys.master into master; when it is missing and create is
 * true, makes it (32 random bytes, 0600, exclusively: a concurrent maker
 * wins and is read back). TERN_OK, TERN_ENOTFOUND, TERN_EIO.
 */
int ses_master_load(const char *data_dir, bool create, unsigned char master[SES_MASTER_LEN]);

/* The pair of key id (16 lowercase hex): akid ("AKTERN" + upper id) and
 * the secret (64 hex). Pure. */
void ses_key_pair(const unsigned char master[SES_MASTER_LEN], const char *id,
                  char akid[SES_AKID_LEN + 1], char secret[SES_SECRET_LEN + 1]);

/* The key id an access key id names (lowercased into id), or false when
 * it is not one of ours. Pure. */
bool ses_akid_to_id(const char *akid, char id[APIKEY_ID_LEN + 1]);

#endif
