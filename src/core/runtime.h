/*
 * runtime.h — the reloadable state every session and delivery reads: the
 * config, the users database, the OAuth issuer's keys and the DKIM signing
 * keys, swapped together on SIGHUP.
 *
 * A holder takes a reference with runtime_acquire() and keeps a consistent
 * view until runtime_release(), however many reloads happen meanwhile.
 */
#ifndef TERN_CORE_RUNTIME_H
#define TERN_CORE_RUNTIME_H

#include <stdatomic.h>

struct tern_config;
struct user_db;
struct oauth_keys;
struct smtp_signer;

struct tern_runtime {
	_Atomic int refs;
	struct tern_config *conf;                 /* owned (one conf reference) */
	struct user_db *users;                    /* owned */
	void (*free_users)(struct user_db *users);
	struct oauth_keys *oauth_keys; /* owned; NULL without auth.oauth */
	void (*free_oauth_keys)(struct oauth_keys *keys);
	struct smtp_signer *dkim_signer; /* owned; NULL without dkim { keys } (smtp/sign.h) */
	void (*free_dkim_signer)(struct smtp_signer *sg);
};

/* Makes rt current; takes over the caller's reference. */
void runtime_install(struct tern_runtime *rt);
/* The current runtime with one more reference; NULL before the first install. */
struct tern_runtime *runtime_acquire(void);
void runtime_release(struct tern_runtime *rt);
/* Drops the current runtime (at shutdown). */
void runtime_clear(void);

#endif
