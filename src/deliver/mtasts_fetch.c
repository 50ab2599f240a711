/*
 * mtasts_fetch.c — the blocking half of MTA-STS (see mtasts.h): the policy
 * cache in DATA_DIR/mta-sts/ and the HTTPS fetch with libcurl.
 *
 * Owns: the cache file format ("tern-mta-sts 1", "id ID", "expires T", an
 * empty line, then the policy text as fetched) and the libcurl options of
 * the fetch.
 * Never: runs on an event loop, resolves a name itself (the address comes
 * from tern's resolver through CURLOPT_RESOLVE), follows a redirect, uses a
 * proxy, or writes a cache file that is not a policy that parsed.
 */
#include "deliver/mtasts.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/err.h"
#include "core/files.h"
#include "core/fsutil.h"

#define CACHE_MAGIC "tern-mta-sts 1\n"

int mtasts_global_init(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? TERN_OK : TERN_EIO;
}

/* A domain safe to use as a file name: LDH labels and dots only. */
static bool safe_domain(const char *d)
{
	if (!d[0] || d[0] == '.' || strstr(d, ".."))
		return false;
	for (const char *p = d; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' ||
		      *p == '.' || *p == '_'))
			return false;
	return true;
}

/* Reads the cache of q->domain: true with *pol, id and expiry when present
 * and parseable. */
static bool cache_read(const struct mtasts_req *q, struct mtasts_policy *pol, char *id,
                       size_t idlen, long long *expires)
{
	char path[4400], err[128];
	char *data = NULL;
	size_t len = 0;
	int en = 0;
	bool ok = false;
	snprintf(path, sizeof(path), "%s/%s", q->cache_dir, q->domain);
	if (tern_file_read_fs(path, MTASTS_POLICY_MAX + 512, &data, &len, &en) != TERN_OK)
		return false;
	size_t ml = sizeof(CACHE_MAGIC) - 1;
	if (len < ml || memcmp(data, CACHE_MAGIC, ml) != 0)
		goto out;
	char idbuf[MTASTS_ID_MAX + 1];
	long long exp = 0;
	int used = 0;
	if (sscanf(data + ml, "id %32[A-Za-z0-9]\nexpires %lld\n\n%n", idbuf, &exp, &used) != 2 ||
	    used <= 0)
		goto out;
	size_t off = ml + (size_t)used;
	if (mtasts_policy_parse(data + off, len - off, pol, err, sizeof(err)) != 0)
		goto out;
	snprintf(id, idlen, "%s", idbuf);
	*expires = exp;
	ok = true;
out:
	free(data);
	return ok;
}

static void cache_write(const struct mtasts_req *q, const char *body, size_t blen,
                        long long expires)
{
	char path[4400], head[128];
	if (tern_mkdir_p(q->cache_dir, 0700, false, NULL) != TERN_OK)
		return;
	snprintf(path, sizeof(path), "%s/%s", q->cache_dir, q->domain);
	int hl =
	    snprintf(head, sizeof(head), CACHE_MAGIC "id %s\nexpires %lld\n\n", q->id, expires);
	char *all = malloc((size_t)hl + blen);
	if (!all)
		return;
	memcpy(all, head, (size_t)hl);
	memcpy(all + hl, body, blen);
	/* A lost cache only costs a fetch: no fsync. */
	struct tern_write_opts o = {
	    .mode = 0600, .uid = (uid_t)-1, .gid = (gid_t)-1, .no_sync = true};
	(void)tern_write_file_atomic(path, all, (size_t)hl + blen, &o);
	free(all);
}

struct body {
	char *p;
	size_t n;
	bool too_big;
};

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *arg)
{
	struct body *b = arg;
	size_t n = size * nmemb;
	if (b->n + n > MTASTS_POLICY_MAX) {
		b->too_big = true;
		return 0; /* aborts the transfer */
	}
	char *np = realloc(b->p, b->n + n + 1);
	if (!np)
		return 0;
	b->p = np;
	memcpy(b->p + b->n, ptr, n);
	b->n += n;
	b->p[b->n] = '\0';
	return n;
}

/* Fetches the policy; 0 with the body in *b (the caller frees b->p), or -1
 * with q->why set. */
static int fetch(struct mtasts_req *q, struct body *b)
{
	char url[DNS_NAME_MAX + 64], resolve[DNS_NAME_MAX + 96];
	int rc = -1;
	struct curl_slist *rl = NULL;
	CURL *h = curl_easy_init();
	if (!h) {
		snprintf(q->why, sizeof(q->why), "libcurl: cannot start a transfer");
		return -1;
	}
	bool v6 = strchr(q->addr, ':') != NULL;
	snprintf(url, sizeof(url), "https://mta-sts.%s/.well-known/mta-sts.txt", q->domain);
	snprintf(resolve, sizeof(resolve), "mta-sts.%s:%u:%s%s%s", q->domain, (unsigned)q->port,
	         v6 ? "[" : "", q->addr, v6 ? "]" : "");
	rl = curl_slist_append(NULL, resolve);
	if (!rl)
		goto out;
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_PORT, (long)q->port);
	curl_easy_setopt(h, CURLOPT_RESOLVE, rl);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https");
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L); /* §3.3: no redirects */
	curl_easy_setopt(h, CURLOPT_PROXY, "");          /* never a proxy from the environment */
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT, (long)(q->timeout ? q->timeout : 60));
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "tern (MTA-STS)");
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
	if (q->ca_pem) {
		struct curl_blob blob = {(void *)(uintptr_t)q->ca_pem, q->ca_len, CURL_BLOB_COPY};
		curl_easy_setopt(h, CURLOPT_CAINFO_BLOB, &blob);
	}
	CURLcode cc = curl_easy_perform(h);
	if (cc != CURLE_OK) {
		snprintf(q->why, sizeof(q->why), "%s",
		         b->too_big ? "policy larger than 64 KiB" : curl_easy_strerror(cc));
		goto out;
	}
	long status = 0;
	char *ctype = NULL;
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ctype);
	if (status != 200) {
		snprintf(q->why, sizeof(q->why), "HTTP status %ld", status);
		goto out;
	}
	if (!ctype || strncasecmp(ctype, "text/plain", 10) != 0 ||
	    (ctype[10] != '\0' && ctype[10] != ';' && ctype[10] != ' ')) {
		snprintf(q->why, sizeof(q->why), "Content-Type is not text/plain");
		goto out;
	}
	rc = 0;
out:
	if (rc != 0 && !q->why[0])
		snprintf(q->why, sizeof(q->why), "out of memory");
	curl_slist_free_all(rl);
	curl_easy_cleanup(h);
	return rc;
}

void mtasts_get(struct mtasts_req *q)
{
	struct mtasts_policy cached;
	char cid[MTASTS_ID_MAX + 1] = "";
	long long expires = 0;
	q->have = false;
	q->source = "none";
	q->why[0] = '\0';
	if (!safe_domain(q->domain)) {
		snprintf(q->why, sizeof(q->why), "domain not usable as a cache name");
		return;
	}
	bool have_cache =
	    cache_read(q, &cached, cid, sizeof(cid), &expires) && expires > (long long)q->now;
	if (have_cache && (!q->id[0] || strcmp(cid, q->id) == 0)) {
		q->policy = cached;
		q->have = true;
		q->source = "cache";
		return;
	}
	if (!q->id[0])
		return; /* no record, no (live) cache: no policy */
	if (!q->addr[0]) {
		snprintf(q->why, sizeof(q->why), "mta-sts.%s has no address", q->domain);
	} else {
		struct body b = {0};
		if (fetch(q, &b) == 0) {
			char err[128];
			struct mtasts_policy pol;
			if (mtasts_policy_parse(b.p ? b.p : "", b.n, &pol, err, sizeof(err)) == 0) {
				q->policy = pol;
				q->have = true;
				q->source = "fetched";
				cache_write(q, b.p ? b.p : "", b.n,
				            (long long)q->now + (long long)pol.max_age);
				free(b.p);
				return;
			}
			snprintf(q->why, sizeof(q->why), "policy refused: %s", err);
		}
		free(b.p);
	}
	/* §5.1: a failed refresh keeps the cached policy until it expires */
	if (have_cache) {
		q->policy = cached;
		q->have = true;
		q->source = "stale-cache";
	}
}
