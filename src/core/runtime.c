/* runtime.c — the current config, users and OAuth keys, reference counted (see runtime.h). */
#include "core/runtime.h"

#include <pthread.h>
#include <stdlib.h>

#include "core/conf.h"

static pthread_mutex_t rt_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tern_runtime *rt_current;

void runtime_install(struct tern_runtime *rt)
{
	pthread_mutex_lock(&rt_lock);
	struct tern_runtime *old = rt_current;
	rt_current = rt;
	pthread_mutex_unlock(&rt_lock);
	if (old)
		runtime_release(old);
}

struct tern_runtime *runtime_acquire(void)
{
	pthread_mutex_lock(&rt_lock);
	struct tern_runtime *rt = rt_current;
	if (rt)
		atomic_fetch_add(&rt->refs, 1);
	pthread_mutex_unlock(&rt_lock);
	return rt;
}

void runtime_release(struct tern_runtime *rt)
{
	if (!rt || atomic_fetch_sub(&rt->refs, 1) != 1)
		return;
	if (rt->users && rt->free_users)
		rt->free_users(rt->users);
	if (rt->oauth_keys && rt->free_oauth_keys)
		rt->free_oauth_keys(rt->oauth_keys);
	if (rt->dkim_signer && rt->free_dkim_signer)
		rt->free_dkim_signer(rt->dkim_signer);
	conf_unref(rt->conf);
	free(rt);
}

void runtime_clear(void)
{
	runtime_install(NULL);
}
