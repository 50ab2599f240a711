/*
 * pools.c — pool selection, source address choice and warm-up counters
 * (see pools.h for the contract).
 *
 * Owns: the process-wide round-robin cursors and warm-up counters (one
 * mutex), and the file DATA/pools/warmup that keeps the counters across
 * restarts.
 * Never: syncs (see pools.h), writes the counter file on the caller's
 * thread (pool_take runs on the delivery loop: the file is rewritten by a
 * write-behind thread, at most about once a second, and by pools_close),
 * or hands out an address the pool does not list.
 */
#include "deliver/pools.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "core/log.h"

const struct conf_pool *pool_find(const struct conf_shaping *sh, const char *name)
{
	for (size_t i = 0; name && i < sh->n_pools; i++)
		if (strcmp(sh->pools[i].name, name) == 0)
			return &sh->pools[i];
	return NULL;
}

static const char *rule_of(const struct conf_pool_rule *r, size_t n, const char *key, bool icase)
{
	for (size_t i = 0; i < n; i++)
		if (icase ? strcasecmp(r[i].key, key) == 0 : strcmp(r[i].key, key) == 0)
			return r[i].pool;
	return NULL;
}

const char *pool_select(const struct conf_shaping *sh, const char *sender, const char *tag)
{
	const char *p;
	if (tag && tag[0] && (p = rule_of(sh->sel_tags, sh->n_sel_tags, tag, false)))
		return p;
	const char *at = sender ? strrchr(sender, '@') : NULL;
	for (const char *d = at ? at + 1 : NULL; d && *d;) {
		if ((p = rule_of(sh->sel_domains, sh->n_sel_domains, d, true)))
			return p;
		d = strchr(d, '.');
		if (d)
			d++;
	}
	return sh->sel_default;
}

const char *pool_for_key(const struct conf_shaping *sh, const char *name)
{
	return name ? rule_of(sh->sel_keys, sh->n_sel_keys, name, false) : NULL;
}

/* The end of the header line that begins at p (after its CRLF or LF and any
 * folded continuation lines). */
static size_t field_end(const char *d, size_t len, size_t p)
{
	for (;;) {
		const char *nl = memchr(d + p, '\n', len - p);
		if (!nl)
			return len;
		p = (size_t)(nl - d) + 1;
		if (p >= len || (d[p] != ' ' && d[p] != '\t'))
			return p;
	}
}

size_t pool_take_tag(char *data, size_t len, char *tag, size_t taglen)
{
	static const char name[] = POOL_TAG_HEADER ":";
	const size_t nl = sizeof(name) - 1;
	if (taglen)
		tag[0] = '\0';
	size_t p = 0;
	while (p < len) {
		/* The blank line ends the header section. */
		if (data[p] == '\n' || (data[p] == '\r' && p + 1 < len && data[p + 1] == '\n'))
			break;
		size_t e = field_end(data, len, p);
		if (e - p >= nl && strncasecmp(data + p, name, nl) == 0) {
			if (taglen && !tag[0]) {
				size_t s = p + nl, o = 0;
				while (s < e && (data[s] == ' ' || data[s] == '\t'))
					s++;
				for (; s < e && o + 1 < taglen; s++) {
					char ch = data[s];
					if (ch == '\r' || ch == '\n')
						continue;
					tag[o++] = ch;
				}
				while (o > 0 && (tag[o - 1] == ' ' || tag[o - 1] == '\t'))
					o--;
				tag[o] = '\0';
			}
			memmove(data + p, data + e, len - e);
			len -= e - p;
			continue;
		}
		p = e;
	}
	return len;
}

uint64_t pool_warmup_cap(uint32_t start, double growth, unsigned day)
{
	double cap = (double)start;
	for (unsigned i = 0; i < day && cap < 1e9; i++)
		cap *= growth;
	if (cap > 1e9)
		cap = 1e9;
	return (uint64_t)cap;
}

/* ---- state: cursors and warm-up counters ---------------------------------- */

#define MAX_WARM 4096

struct warm {
	char addr[64];
	int64_t first_day, day; /* UTC day numbers */
	uint64_t count;         /* messages on day */
};

struct cursor {
	char pool[65];
	unsigned next;
};

static pthread_mutex_t pl = PTHREAD_MUTEX_INITIALIZER;
static struct warm warm[MAX_WARM];
static size_t n_warm;
static bool loaded;
static struct cursor cursors[64];
static size_t n_cursors;
/* The write-behind: dirty counters, the config they belong to, the thread. */
static pthread_cond_t save_cv = PTHREAD_COND_INITIALIZER;
static const struct tern_config *save_conf;
static bool dirty, saver_on, saver_stop;
static pthread_t saver;

static int64_t utc_day(void)
{
	return (int64_t)time(NULL) / 86400;
}

static void warm_path(const struct tern_config *conf, char *out, size_t n)
{
	snprintf(out, n, "%s/pools/warmup", conf->data_dir);
}

/* Under pl: reads the counter file once. */
static void warm_load(const struct tern_config *conf)
{
	if (loaded)
		return;
	loaded = true;
	char path[4200];
	warm_path(conf, path, sizeof(path));
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	char line[256];
	while (n_warm < MAX_WARM && fgets(line, sizeof(line), f)) {
		struct warm w = {0};
		long long fd, d;
		unsigned long long c;
		if (sscanf(line, "%63s %lld %lld %llu", w.addr, &fd, &d, &c) != 4)
			continue;
		w.first_day = fd;
		w.day = d;
		w.count = c;
		warm[n_warm++] = w;
	}
	fclose(f);
}

/* Writes a snapshot of the counters (no sync; see pools.h). Called without
 * pl held: the snapshot is taken under it, the file written outside it. */
static void warm_write(const struct tern_config *conf)
{
	struct tbuf b = TBUF_INIT(1u << 20);
	pthread_mutex_lock(&pl);
	dirty = false;
	for (size_t i = 0; i < n_warm; i++) {
		char line[160];
		int k = snprintf(line, sizeof(line), "%s %lld %lld %llu\n", warm[i].addr,
		                 (long long)warm[i].first_day, (long long)warm[i].day,
		                 (unsigned long long)warm[i].count);
		if (k > 0 && tbuf_append(&b, line, (size_t)k) != TERN_OK)
			break;
	}
	pthread_mutex_unlock(&pl);
	char path[4200], dir[4200];
	snprintf(dir, sizeof(dir), "%s/pools", conf->data_dir);
	warm_path(conf, path, sizeof(path));
	struct tern_write_opts o = {
	    .mode = 0600, .uid = (uid_t)-1, .gid = (gid_t)-1, .no_sync = true};
	if (tern_mkdir_p(dir, 0700, false, NULL) != TERN_OK ||
	    tern_write_file_atomic(path, b.data ? b.data : "", b.len, &o) != TERN_OK)
		log_warn("event=warmup_save_failed path=%s", path);
	tbuf_free(&b);
}

/* The write-behind thread: rewrites the file when the counters changed, at
 * most about once a second, until pools_close. */
static void *saver_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&pl);
	while (!saver_stop) {
		if (!dirty) {
			pthread_cond_wait(&save_cv, &pl);
			continue;
		}
		const struct tern_config *conf = save_conf;
		pthread_mutex_unlock(&pl);
		warm_write(conf);
		/* A pause, so that a busy pool costs one write a second; cut short
		 * by pools_close. */
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 1;
		pthread_mutex_lock(&pl);
		while (!saver_stop && pthread_cond_timedwait(&save_cv, &pl, &until) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&pl);
	return NULL;
}

/* Under pl: marks the counters for the write-behind (started on first use;
 * without a thread, the counters are written by pools_close alone). */
static void warm_save(const struct tern_config *conf)
{
	save_conf = conf;
	dirty = true;
	if (!saver_on && !saver_stop)
		saver_on = pthread_create(&saver, NULL, saver_main, NULL) == 0;
	pthread_cond_signal(&save_cv);
}

/* Under pl: the counter of addr (made if new, first used today). */
static struct warm *warm_get(const char *addr, bool create)
{
	int64_t today = utc_day();
	for (size_t i = 0; i < n_warm; i++) {
		if (strcmp(warm[i].addr, addr) == 0) {
			if (warm[i].day != today) {
				warm[i].day = today;
				warm[i].count = 0;
			}
			return &warm[i];
		}
	}
	if (!create || n_warm >= MAX_WARM)
		return NULL;
	struct warm *w = &warm[n_warm++];
	memset(w, 0, sizeof(*w));
	tern_strlcpy(w->addr, addr, sizeof(w->addr));
	w->first_day = w->day = today;
	return w;
}

/* Under pl: may addr send one more message today? */
static bool warm_room(const struct conf_pool *pool, const char *addr)
{
	if (!pool->warmup_start)
		return true;
	struct warm *w = warm_get(addr, false);
	if (!w)
		return true; /* never used: its first day's cap is >= 1 */
	int64_t day = w->day - w->first_day;
	uint64_t cap = pool_warmup_cap(pool->warmup_start, pool->warmup_growth,
	                               day < 0        ? 0
	                               : day > 100000 ? 100000
	                                              : (unsigned)day);
	return w->count < cap;
}

static struct cursor *cursor_of(const char *pool)
{
	for (size_t i = 0; i < n_cursors; i++)
		if (strcmp(cursors[i].pool, pool) == 0)
			return &cursors[i];
	if (n_cursors == sizeof(cursors) / sizeof(cursors[0]))
		return &cursors[0];
	struct cursor *c = &cursors[n_cursors++];
	tern_strlcpy(c->pool, pool, sizeof(c->pool));
	c->next = 0;
	return c;
}

static bool to_sockaddr(const char *a, int family, struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
		if (inet_pton(AF_INET, a, &s4->sin_addr) != 1)
			return false;
		s4->sin_family = AF_INET;
		*len = sizeof(*s4);
		return true;
	}
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET6, a, &s6->sin6_addr) != 1)
		return false;
	s6->sin6_family = AF_INET6;
	*len = sizeof(*s6);
	return true;
}

int pool_pick(const struct tern_config *conf, const struct conf_pool *pool, int family,
              const char *prefer, struct sockaddr_storage *ss, socklen_t *len, const char **ehlo,
              char *addr, size_t addrlen)
{
	int rc = TERN_ENOTFOUND;
	pthread_mutex_lock(&pl);
	warm_load(conf);
	for (size_t i = 0; prefer && prefer[0] && i < pool->n_addrs; i++) {
		if (strcmp(pool->addrs[i], prefer) == 0 &&
		    to_sockaddr(pool->addrs[i], family, ss, len)) {
			*ehlo = pool->ehlo[i];
			tern_strlcpy(addr, pool->addrs[i], addrlen);
			pthread_mutex_unlock(&pl);
			return TERN_OK;
		}
	}
	struct cursor *cur = cursor_of(pool->name);
	for (size_t k = 0; k < pool->n_addrs; k++) {
		size_t i = (cur->next + k) % pool->n_addrs;
		if (!to_sockaddr(pool->addrs[i], family, ss, len))
			continue;
		if (!warm_room(pool, pool->addrs[i])) {
			rc = TERN_ELIMIT;
			continue;
		}
		cur->next = (unsigned)(i + 1);
		*ehlo = pool->ehlo[i];
		tern_strlcpy(addr, pool->addrs[i], addrlen);
		rc = TERN_OK;
		break;
	}
	pthread_mutex_unlock(&pl);
	return rc;
}

bool pool_take(const struct tern_config *conf, const struct conf_pool *pool, const char *want,
               char *addr, size_t addrlen)
{
	if (addrlen)
		addr[0] = '\0';
	if (!pool->warmup_start)
		return true;
	bool ok = false;
	pthread_mutex_lock(&pl);
	warm_load(conf);
	struct cursor *cur = cursor_of(pool->name);
	for (size_t k = 0; k < pool->n_addrs && !ok; k++) {
		size_t i = (cur->next + k) % pool->n_addrs;
		const char *a = pool->addrs[i];
		if (want && want[0] && strcmp(a, want) != 0)
			continue;
		if (!warm_room(pool, a))
			continue;
		struct warm *w = warm_get(a, true);
		if (!w)
			continue;
		w->count++;
		if (!(want && want[0]))
			cur->next = (unsigned)(i + 1);
		tern_strlcpy(addr, a, addrlen);
		ok = true;
	}
	if (ok)
		warm_save(conf);
	pthread_mutex_unlock(&pl);
	return ok;
}

bool pool_has_room(const struct tern_config *conf, const struct conf_pool *pool, double *wait)
{
	*wait = 0;
	if (!pool->warmup_start)
		return true;
	pthread_mutex_lock(&pl);
	warm_load(conf);
	bool room = false;
	for (size_t i = 0; i < pool->n_addrs && !room; i++)
		room = warm_room(pool, pool->addrs[i]);
	pthread_mutex_unlock(&pl);
	if (!room)
		*wait = (double)((utc_day() + 1) * 86400 - (int64_t)time(NULL));
	return room;
}

void pools_close(void)
{
	pthread_mutex_lock(&pl);
	bool on = saver_on;
	saver_stop = true;
	pthread_cond_signal(&save_cv);
	pthread_mutex_unlock(&pl);
	if (on)
		pthread_join(saver, NULL);
	pthread_mutex_lock(&pl);
	const struct tern_config *conf = dirty ? save_conf : NULL;
	saver_on = false;
	pthread_mutex_unlock(&pl);
	if (conf)
		warm_write(conf);
}

void pools_reset(void)
{
	pthread_mutex_lock(&pl);
	n_warm = 0;
	n_cursors = 0;
	loaded = false;
	dirty = false;
	saver_stop = false;
	pthread_mutex_unlock(&pl);
}
