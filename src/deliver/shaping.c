/*
 * shaping.c — per-destination limits, per-minute token buckets and the
 * automatic back-off (see shaping.h for the contract).
 *
 * Owns: the built-in provider table and the process-wide state table (one
 * entry per destination site, bounded; past the bound a destination gets
 * no bucket and no back-off rather than memory without end).
 * Never: blocks beyond its one mutex, does I/O but a log line, or touches a
 * message: the caller holds what may not start yet.
 */
#include "deliver/shaping.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/buf.h"
#include "core/log.h"
#include "core/metrics.h"

/*
 * Built-in limits of the big providers. Conservative on purpose: a new
 * sender that opens few connections and sends a modest number of messages
 * over each is what Google's, Microsoft's and Yahoo's sender guidelines ask
 * for, and what the published shaping files of bulk MTAs (KumoMTA's
 * community shaping.toml, PowerMTA's templates) start from. per_minute is
 * left unlimited: those providers answer 421/4.7.x when they want less, and
 * the back-off then halves the rate they get.
 */
struct site {
	const char *domain;
	const char *site;
	uint32_t connections, per_connection, per_minute;
};

static const struct site builtin[] = {
    {"gmail.com", "gmail.com", 5, 50, 0},      {"googlemail.com", "gmail.com", 5, 50, 0},
    {"outlook.com", "outlook.com", 5, 20, 0},  {"hotmail.com", "outlook.com", 5, 20, 0},
    {"live.com", "outlook.com", 5, 20, 0},     {"msn.com", "outlook.com", 5, 20, 0},
    {"yahoo.com", "yahoo.com", 5, 20, 0},      {"ymail.com", "yahoo.com", 5, 20, 0},
    {"rocketmail.com", "yahoo.com", 5, 20, 0}, {"aol.com", "yahoo.com", 5, 20, 0},
    {"icloud.com", "icloud.com", 5, 20, 0},    {"me.com", "icloud.com", 5, 20, 0},
    {"mac.com", "icloud.com", 5, 20, 0},       {"gmx.de", "gmx.net", 5, 20, 0},
    {"gmx.net", "gmx.net", 5, 20, 0},          {"web.de", "gmx.net", 5, 20, 0},
    {"mail.ru", "mail.ru", 5, 20, 0},          {"yandex.ru", "yandex.ru", 5, 20, 0},
};
#define N_BUILTIN (sizeof(builtin) / sizeof(builtin[0]))

static const struct site *builtin_of(const char *domain)
{
	/* Asked for every remote job, mostly about other domains: the first
	 * byte rules out nearly every entry without a call. */
	for (size_t i = 0; i < N_BUILTIN; i++)
		if (builtin[i].domain[0] == domain[0] && strcmp(builtin[i].domain, domain) == 0)
			return &builtin[i];
	return NULL;
}

const char *shaping_site(const char *domain)
{
	const struct site *s = builtin_of(domain);
	return s ? s->site : NULL;
}

static const struct conf_shape *conf_shape_of(const struct conf_shaping *sh, const char *domain)
{
	for (size_t i = 0; sh && domain && i < sh->n_shapes; i++)
		if (strcmp(sh->shapes[i].domain, domain) == 0)
			return &sh->shapes[i];
	return NULL;
}

static void take_unset(struct shape_limits *l, uint32_t c, uint32_t pc, uint32_t pm, bool *pm_set)
{
	if (!l->connections)
		l->connections = c;
	if (!l->per_connection)
		l->per_connection = pc;
	if (!*pm_set && pm) {
		l->per_minute = pm;
		*pm_set = true;
	}
}

/* The built-in entry of a site's own domain (the site name is one). */
static const struct site *site_entry(const char *site)
{
	const struct site *s = site ? builtin_of(site) : NULL;
	return s && strcmp(s->site, site) == 0 ? s : NULL;
}

void shaping_resolve_site(const struct conf_shaping *sh, uint32_t max_per_destination,
                          const char *domain, const char *site, struct shape_limits *out)
{
	memset(out, 0, sizeof(*out));
	bool pm_set = false;
	const struct site *b = builtin_of(domain);
	if (!b)
		b = site_entry(site);
	const struct conf_shape *cs = conf_shape_of(sh, domain);
	if (cs)
		take_unset(out, cs->connections, cs->per_connection, cs->per_minute, &pm_set);
	if (b && strcmp(b->site, domain) != 0 && (cs = conf_shape_of(sh, b->site)))
		take_unset(out, cs->connections, cs->per_connection, cs->per_minute, &pm_set);
	if (b)
		take_unset(out, b->connections, b->per_connection, b->per_minute, &pm_set);
	if (sh)
		take_unset(out, sh->dflt.connections, sh->dflt.per_connection, sh->dflt.per_minute,
		           &pm_set);
	take_unset(out, max_per_destination ? max_per_destination : 1, SHAPE_DEFAULT_PER_CONNECTION,
	           0, &pm_set);
}

void shaping_resolve(const struct conf_shaping *sh, uint32_t max_per_destination,
                     const char *domain, struct shape_limits *out)
{
	shaping_resolve_site(sh, max_per_destination, domain, NULL, out);
}

/* MX host suffixes of the providers: "suffix" matches the name itself and
 * any name ending in ".suffix". */
static const struct {
	const char *suffix, *site;
} mx_sites[] = {
    {"google.com", "gmail.com"},    {"googlemail.com", "gmail.com"}, {"outlook.com", "outlook.com"},
    {"hotmail.com", "outlook.com"}, {"yahoodns.net", "yahoo.com"},   {"icloud.com", "icloud.com"},
    {"gmx.net", "gmx.net"},         {"web.de", "gmx.net"},           {"mail.ru", "mail.ru"},
    {"yandex.net", "yandex.ru"},    {"yandex.ru", "yandex.ru"},
};

const char *shaping_mx_site(const char *mxhost)
{
	size_t n = strlen(mxhost);
	while (n > 0 && mxhost[n - 1] == '.')
		n--; /* a trailing root dot */
	for (size_t i = 0; i < sizeof(mx_sites) / sizeof(mx_sites[0]); i++) {
		size_t k = strlen(mx_sites[i].suffix);
		if (n < k || strncasecmp(mxhost + n - k, mx_sites[i].suffix, k) != 0)
			continue;
		if (n == k || mxhost[n - k - 1] == '.')
			return mx_sites[i].site;
	}
	return NULL;
}

bool shape_bucket_take(struct shape_bucket *b, uint32_t per_minute, double now, double *wait)
{
	*wait = 0;
	if (per_minute == 0)
		return true;
	double cap = (double)per_minute, rate = (double)per_minute / 60.0;
	if (!b->init) {
		b->tokens = cap;
		b->last = now;
		b->init = true;
	}
	if (now > b->last) {
		b->tokens += (now - b->last) * rate;
		if (b->tokens > cap)
			b->tokens = cap;
		b->last = now;
	}
	if (b->tokens >= 1.0) {
		b->tokens -= 1.0;
		return true;
	}
	*wait = (1.0 - b->tokens) / rate;
	return false;
}

bool shaping_is_backoff_reply(int code, const char *enhanced)
{
	if (code == 421)
		return true;
	return code >= 400 && code < 500 && enhanced && strncmp(enhanced, "4.7.", 4) == 0;
}

void shape_backoff_hit(struct shape_backoff *b, double now, uint32_t base)
{
	(void)shape_backoff_level(b, now, base);
	if (b->level < SHAPE_BACKOFF_MAX_LEVEL)
		b->level++;
	b->until = now + (double)base * b->level;
}

unsigned shape_backoff_level(struct shape_backoff *b, double now, uint32_t base)
{
	while (b->level > 0 && now >= b->until) {
		b->level--;
		b->until += (double)(base ? base : 1);
	}
	return b->level;
}

void shape_apply_backoff(struct shape_limits *l, unsigned level)
{
	for (unsigned i = 0; i < level; i++) {
		if (l->connections > 1)
			l->connections /= 2;
		if (l->per_minute > 1)
			l->per_minute /= 2;
	}
}

/* ---- process-wide state ---------------------------------------------------- */

#define STATE_BUCKETS 256
#define STATE_MAX 65536

struct dstate {
	struct dstate *next;
	struct shape_bucket bucket;
	uint32_t bucket_rate; /* the per_minute the bucket was filled for */
	struct shape_backoff bo;
	const char *site; /* entries "=DOMAIN": the site learned from its MX */
	char key[257];
};

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static struct dstate *state[STATE_BUCKETS];
static size_t n_state;

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Under state_lock: the entry of key, made when create; NULL if none. */
static struct dstate *state_get(const char *key, bool create)
{
	uint32_t h = 2166136261u;
	for (const char *p = key; *p; p++)
		h = (h ^ (uint8_t)*p) * 16777619u;
	struct dstate **pp = &state[h % STATE_BUCKETS];
	for (struct dstate *d = *pp; d; d = d->next)
		if (strcmp(d->key, key) == 0)
			return d;
	if (!create || n_state >= STATE_MAX)
		return NULL;
	struct dstate *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	tern_strlcpy(d->key, key, sizeof(d->key));
	d->next = *pp;
	*pp = d;
	n_state++;
	return d;
}

/* "=DOMAIN", the key of what its MX taught (cut to fit, as snprintf did):
 * built for every remote job, so without a format string. */
static void learned_key(const char *domain, char *k, size_t klen)
{
	size_t n = strlen(domain);
	if (n > klen - 2)
		n = klen - 2;
	k[0] = '=';
	memcpy(k + 1, domain, n);
	k[n + 1] = '\0';
}

/* Under state_lock: the site domain belongs to (built-in, else learned from
 * its MX), or NULL. */
static const char *site_of_locked(const char *domain)
{
	const char *s = shaping_site(domain);
	if (s)
		return s;
	char k[260];
	learned_key(domain, k, sizeof(k));
	struct dstate *d = state_get(k, false);
	return d ? d->site : NULL;
}

/* Under state_lock: the key of domain's bucket and back-off. */
static const char *key_of_locked(const char *domain)
{
	const char *s = site_of_locked(domain);
	return s ? s : domain;
}

void shaping_learn_mx(const char *domain, const char *mxhost)
{
	const char *site = shaping_mx_site(mxhost);
	if (!site || shaping_site(domain))
		return;
	char k[260];
	learned_key(domain, k, sizeof(k));
	pthread_mutex_lock(&state_lock);
	struct dstate *d = state_get(k, true);
	if (d)
		d->site = site; /* static storage: the suffix table's */
	pthread_mutex_unlock(&state_lock);
}

void shaping_limits(const struct tern_config *conf, const char *domain, struct shape_limits *out)
{
	pthread_mutex_lock(&state_lock);
	const char *site = site_of_locked(domain);
	struct dstate *d = state_get(site ? site : domain, false);
	unsigned level = d ? shape_backoff_level(&d->bo, mono(), conf->shaping.backoff) : 0;
	pthread_mutex_unlock(&state_lock);
	shaping_resolve_site(&conf->shaping, conf->delivery.max_per_destination, domain, site, out);
	shape_apply_backoff(out, level);
}

/*
 * tern_destination_throttled_total{destination}: the site (a fixed set), a
 * domain the configuration shapes, else "other". A recipient domain comes
 * from the network and must not become a label of its own.
 */
static void count_throttled(const struct tern_config *conf, const char *domain, const char *key)
{
	const char *label = "other";
	if (strcmp(key, domain) != 0)
		label = key; /* a site name */
	else if (conf_shape_of(&conf->shaping, domain))
		label = domain;
	metric_inc_l(M_DESTINATION_THROTTLED, label);
}

bool shaping_take(const struct tern_config *conf, const char *domain, double *wait)
{
	struct shape_limits l;
	shaping_limits(conf, domain, &l);
	*wait = 0;
	if (l.per_minute == 0)
		return true;
	char key[257];
	pthread_mutex_lock(&state_lock);
	tern_strlcpy(key, key_of_locked(domain), sizeof(key));
	struct dstate *d = state_get(key, true);
	bool ok = true;
	if (d) {
		if (d->bucket_rate != l.per_minute && d->bucket.init &&
		    d->bucket.tokens > (double)l.per_minute)
			d->bucket.tokens =
			    (double)l.per_minute; /* a back-off lowers the burst too */
		d->bucket_rate = l.per_minute;
		ok = shape_bucket_take(&d->bucket, l.per_minute, mono(), wait);
	}
	pthread_mutex_unlock(&state_lock);
	if (!ok)
		count_throttled(conf, domain, key);
	return ok;
}

void shaping_note_reply(const struct tern_config *conf, const char *domain, const char *id,
                        int code, const char *enhanced, const char *text)
{
	if (!shaping_is_backoff_reply(code, enhanced))
		return;
	char key[257];
	pthread_mutex_lock(&state_lock);
	tern_strlcpy(key, key_of_locked(domain), sizeof(key));
	struct dstate *d = state_get(key, true);
	unsigned level = 0;
	double secs = 0, now = mono();
	if (d) {
		shape_backoff_hit(&d->bo, now, conf->shaping.backoff);
		level = d->bo.level;
		secs = d->bo.until - now;
	}
	pthread_mutex_unlock(&state_lock);
	count_throttled(conf, domain, key);
	/* Both came from the network: quoted. */
	char q[700], qk[300], reason[600];
	bool enh = enhanced && enhanced[0];
	snprintf(reason, sizeof(reason), "%d%s%s %s", code, enh ? " " : "", enh ? enhanced : "",
	         text ? text : "");
	log_warn("event=backoff id=%s dest=%s level=%u for=%.0fs reason=%s", id ? id : "-",
	         log_quote(key, strlen(key), qk, sizeof(qk)), level, secs,
	         log_quote(reason, strlen(reason), q, sizeof(q)));
}

uint32_t shaping_backoff_left(const struct tern_config *conf, const char *domain)
{
	double left = 0, now = mono();
	pthread_mutex_lock(&state_lock);
	struct dstate *d = state_get(key_of_locked(domain), false);
	if (d && shape_backoff_level(&d->bo, now, conf->shaping.backoff) > 0 && d->bo.until > now)
		left = d->bo.until - now;
	pthread_mutex_unlock(&state_lock);
	return (uint32_t)(left + 0.999);
}

void shaping_reset(void)
{
	pthread_mutex_lock(&state_lock);
	for (size_t i = 0; i < STATE_BUCKETS; i++) {
		while (state[i]) {
			struct dstate *d = state[i];
			state[i] = d->next;
			free(d);
		}
	}
	n_state = 0;
	pthread_mutex_unlock(&state_lock);
}
