/*
 * apikeys.c — the API key store on SQLite (apikeys.h).
 *
 * Owns: the apikeys table, making keys (random id and secret from
 * OpenSSL's RAND_bytes), checking a token against SHA-256 of its secret
 * in constant time, revocation.
 * Must never: store or log a secret or a whole token, or tell a caller
 * which part of a wrong token was wrong.
 */
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "store/apikeys.h"

struct apikeys {
	sqlite3 *db;
	unsigned puts; /* results written: every 1000th prunes old ones */
	/* the statements of every request and every result, prepared once
	 * (parsing the SQL cost more than running it); NULL until first used */
	sqlite3_stmt *verify_st, *result_st;
};

/* *st prepared from sql on first use, reset and unbound after each. */
static sqlite3_stmt *cached(struct apikeys *k, sqlite3_stmt **st, const char *sql)
{
	if (!*st &&
	    sqlite3_prepare_v3(k->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) != SQLITE_OK) {
		sqlite3_finalize(*st);
		*st = NULL;
	}
	return *st;
}

static void cached_done(sqlite3_stmt *st)
{
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
}

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS apikeys ("
    " id TEXT PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " scope INTEGER NOT NULL,"
    " domains TEXT NOT NULL DEFAULT '',"
    " secret_sha256 BLOB NOT NULL,"
    " created INTEGER NOT NULL,"
    " revoked INTEGER NOT NULL DEFAULT 0,"
    " per_hour INTEGER," /* quotas (issue 12 item 6): NULL = none */
    " per_day INTEGER);"
    "CREATE UNIQUE INDEX IF NOT EXISTS apikeys_live_name ON apikeys(name) WHERE revoked = 0;"
    "CREATE TABLE IF NOT EXISTS api_results ("
    " queue_id TEXT NOT NULL,"
    " idx INTEGER NOT NULL,"
    " owner TEXT NOT NULL,"
    " sender TEXT NOT NULL,"
    " address TEXT NOT NULL,"
    " state TEXT NOT NULL,"
    " reply TEXT,"
    " updated INTEGER NOT NULL,"
    " PRIMARY KEY (queue_id, idx));"
    "CREATE INDEX IF NOT EXISTS api_results_updated ON api_results(updated);";

#define RESULTS_KEEP (30 * 86400)

const char *apikey_scope_name(enum apikey_scope s)
{
	return s == APIKEY_ADMIN ? "admin" : s == APIKEY_SEND ? "send" : "read";
}

enum apikey_scope apikey_scope_parse(const char *s)
{
	if (strcmp(s, "read") == 0)
		return APIKEY_READ;
	if (strcmp(s, "send") == 0)
		return APIKEY_SEND;
	if (strcmp(s, "admin") == 0)
		return APIKEY_ADMIN;
	return 0;
}

int apikeys_open(const char *path, bool create, struct apikeys **out)
{
	struct stat sb;
	*out = NULL;
	if (!create && stat(path, &sb) != 0)
		return TERN_ENOTFOUND;
	struct apikeys *k = calloc(1, sizeof(*k));
	if (!k)
		return TERN_ENOMEM;
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
	if (sqlite3_open_v2(path, &k->db, flags, NULL) != SQLITE_OK)
		goto fail;
	sqlite3_busy_timeout(k->db, 5000);
	/* rollback journal (not WAL): the CLI may run as root beside a daemon
	 * that runs as another user, and a -wal file of root's would lock the
	 * daemon out; the journal is gone after each commit. */
	if (sqlite3_exec(k->db, schema, NULL, NULL, NULL) != SQLITE_OK)
		goto fail;
	/* per_second came after the table (issue 12 item 6): added to older
	 * stores; the error of a store that has it already is the expected one */
	sqlite3_exec(k->db, "ALTER TABLE apikeys ADD COLUMN per_second INTEGER", NULL, NULL, NULL);
	*out = k;
	return TERN_OK;
fail:
	log_error("event=apikeys_open_failed path=%s reason=\"%s\"", path,
	          k->db ? sqlite3_errmsg(k->db) : "out of memory");
	apikeys_close(k);
	return TERN_EIO;
}

void apikeys_close(struct apikeys *k)
{
	if (!k)
		return;
	sqlite3_finalize(k->verify_st);
	sqlite3_finalize(k->result_st);
	sqlite3_close(k->db);
	free(k);
}

static void hex(const unsigned char *in, size_t n, char *out)
{
	static const char d[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = d[in[i] >> 4];
		out[2 * i + 1] = d[in[i] & 15];
	}
	out[2 * n] = '\0';
}

static bool valid_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > APIKEY_NAME_MAX)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '.' || *s == '_' || *s == '-'))
			return false;
	return true;
}

static bool valid_domain(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 253 || s[0] == '.' || s[n - 1] == '.' || strstr(s, ".."))
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '.' || *s == '-'))
			return false;
	return true;
}

static void row_to_key(sqlite3_stmt *st, struct apikey *out)
{
	memset(out, 0, sizeof(*out));
	const char *id = (const char *)sqlite3_column_text(st, 0);
	const char *name = (const char *)sqlite3_column_text(st, 1);
	const char *dom = (const char *)sqlite3_column_text(st, 3);
	tern_strlcpy(out->id, id ? id : "", sizeof(out->id));
	tern_strlcpy(out->name, name ? name : "", sizeof(out->name));
	out->scope = (enum apikey_scope)sqlite3_column_int(st, 2);
	tern_strlcpy(out->domains, dom ? dom : "", sizeof(out->domains));
	out->created = sqlite3_column_int64(st, 4);
	out->revoked = sqlite3_column_int64(st, 5);
}

/* The quota columns (per_second, per_hour, per_day) from column base on;
 * NULL or negative reads as 0, no limit. */
static void row_limits(sqlite3_stmt *st, int base, struct apikey *out)
{
	int64_t v[3];
	for (int i = 0; i < 3; i++) {
		v[i] = sqlite3_column_int64(st, base + i);
		if (v[i] < 0)
			v[i] = 0;
	}
	out->per_second = (uint64_t)v[0];
	out->per_hour = (uint64_t)v[1];
	out->per_day = (uint64_t)v[2];
}

int apikeys_create(struct apikeys *k, const char *name, enum apikey_scope scope,
                   const char *const *domains, size_t n_domains, char *token, size_t tokenlen,
                   struct apikey *out)
{
	unsigned char idb[APIKEY_ID_LEN / 2], sec[APIKEY_SECRET_LEN / 2],
	    digest[SHA256_DIGEST_LENGTH];
	char secret[APIKEY_SECRET_LEN + 1];
	sqlite3_stmt *st = NULL;
	int rc = TERN_EIO;
	if (!valid_name(name) || apikey_scope_name(scope) == NULL || scope < APIKEY_READ ||
	    scope > APIKEY_ADMIN || tokenlen < APIKEY_TOKEN_LEN + 1)
		return TERN_EINVAL;
	memset(out, 0, sizeof(*out));
	size_t dl = 0;
	for (size_t i = 0; i < n_domains; i++) {
		if (!valid_domain(domains[i]))
			return TERN_ESYNTAX;
		size_t n = strlen(domains[i]);
		if (dl + n + 1 > APIKEY_DOMAINS_MAX)
			return TERN_ELIMIT;
		if (dl)
			out->domains[dl++] = ',';
		memcpy(out->domains + dl, domains[i], n);
		dl += n;
	}
	out->domains[dl] = '\0';
	tern_ascii_lower(out->domains);
	if (RAND_bytes(idb, sizeof(idb)) != 1 || RAND_bytes(sec, sizeof(sec)) != 1)
		return TERN_EIO;
	hex(idb, sizeof(idb), out->id);
	hex(sec, sizeof(sec), secret);
	SHA256((const unsigned char *)secret, APIKEY_SECRET_LEN, digest);
	tern_strlcpy(out->name, name, sizeof(out->name));
	out->scope = scope;
	out->created = (int64_t)time(NULL);
	if (sqlite3_prepare_v2(k->db,
	                       "INSERT INTO apikeys (id, name, scope, domains, secret_sha256, "
	                       "created) VALUES (?, ?, ?, ?, ?, ?)",
	                       -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, out->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, out->name, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 3, (int)scope);
	sqlite3_bind_text(st, 4, out->domains, -1, SQLITE_STATIC);
	sqlite3_bind_blob(st, 5, digest, sizeof(digest), SQLITE_STATIC);
	sqlite3_bind_int64(st, 6, out->created);
	int s = sqlite3_step(st);
	if (s == SQLITE_CONSTRAINT) {
		rc = TERN_EEXIST;
		goto out;
	}
	if (s != SQLITE_DONE)
		goto out;
	snprintf(token, tokenlen, "tern_%s_%s", out->id, secret);
	rc = TERN_OK;
out:
	OPENSSL_cleanse(sec, sizeof(sec));
	OPENSSL_cleanse(secret, sizeof(secret));
	sqlite3_finalize(st);
	return rc;
}

int apikeys_list(struct apikeys *k, void (*fn)(const struct apikey *key, void *arg), void *arg)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(k->db,
	                       "SELECT id, name, scope, domains, created, revoked, per_second, "
	                       "per_hour, per_day FROM apikeys ORDER BY created, rowid",
	                       -1, &st, NULL) != SQLITE_OK)
		return TERN_EIO;
	int s;
	struct apikey key;
	while ((s = sqlite3_step(st)) == SQLITE_ROW) {
		row_to_key(st, &key);
		row_limits(st, 6, &key);
		fn(&key, arg);
	}
	sqlite3_finalize(st);
	return s == SQLITE_DONE ? TERN_OK : TERN_EIO;
}

int apikeys_set_limits(struct apikeys *k, const char *name_or_id, uint64_t per_second,
                       uint64_t per_hour, uint64_t per_day)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(k->db,
	                       "UPDATE apikeys SET per_second = ?, per_hour = ?, per_day = ? "
	                       "WHERE revoked = 0 AND (name = ? OR id = ?)",
	                       -1, &st, NULL) != SQLITE_OK)
		return TERN_EIO;
	const uint64_t v[3] = {per_second, per_hour, per_day};
	for (int i = 0; i < 3; i++) {
		if (v[i] && v[i] <= INT64_MAX)
			sqlite3_bind_int64(st, i + 1, (sqlite3_int64)v[i]);
		else
			sqlite3_bind_null(st, i + 1);
	}
	sqlite3_bind_text(st, 4, name_or_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, name_or_id, -1, SQLITE_STATIC);
	int s = sqlite3_step(st);
	sqlite3_finalize(st);
	if (s != SQLITE_DONE)
		return TERN_EIO;
	return sqlite3_changes(k->db) > 0 ? TERN_OK : TERN_ENOTFOUND;
}

int apikeys_revoke(struct apikeys *k, const char *name_or_id)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(k->db,
	                       "UPDATE apikeys SET revoked = ? WHERE revoked = 0 AND (name = ? OR "
	                       "id = ?)",
	                       -1, &st, NULL) != SQLITE_OK)
		return TERN_EIO;
	sqlite3_bind_int64(st, 1, (int64_t)time(NULL));
	sqlite3_bind_text(st, 2, name_or_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, name_or_id, -1, SQLITE_STATIC);
	int s = sqlite3_step(st);
	sqlite3_finalize(st);
	if (s != SQLITE_DONE)
		return TERN_EIO;
	return sqlite3_changes(k->db) > 0 ? TERN_OK : TERN_ENOTFOUND;
}

bool apikey_token_split(const char *token, size_t len, char id[APIKEY_ID_LEN + 1],
                        char secret[APIKEY_SECRET_LEN + 1])
{
	if (len != APIKEY_TOKEN_LEN || memcmp(token, "tern_", 5) != 0 ||
	    token[5 + APIKEY_ID_LEN] != '_')
		return false;
	for (size_t i = 5; i < len; i++) {
		char c = token[i];
		if (i == 5 + APIKEY_ID_LEN)
			continue;
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return false;
	}
	memcpy(id, token + 5, APIKEY_ID_LEN);
	id[APIKEY_ID_LEN] = '\0';
	memcpy(secret, token + 6 + APIKEY_ID_LEN, APIKEY_SECRET_LEN);
	secret[APIKEY_SECRET_LEN] = '\0';
	return true;
}

int apikeys_verify(struct apikeys *k, const char *token, size_t len, struct apikey *out)
{
	char id[APIKEY_ID_LEN + 1], secret[APIKEY_SECRET_LEN + 1];
	unsigned char digest[SHA256_DIGEST_LENGTH];
	sqlite3_stmt *st = NULL;
	int rc = TERN_ENOTFOUND;
	if (!apikey_token_split(token, len, id, secret))
		return TERN_ENOTFOUND;
	SHA256((const unsigned char *)secret, APIKEY_SECRET_LEN, digest);
	OPENSSL_cleanse(secret, sizeof(secret));
	if (!(st = cached(k, &k->verify_st,
	                  "SELECT id, name, scope, domains, created, revoked, secret_sha256, "
	                  "per_second, per_hour, per_day FROM apikeys WHERE id = ?")))
		return TERN_EIO;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	int s = sqlite3_step(st);
	if (s == SQLITE_ROW) {
		const void *h = sqlite3_column_blob(st, 6);
		int hl = sqlite3_column_bytes(st, 6);
		row_to_key(st, out);
		row_limits(st, 7, out);
		if (h && hl == (int)sizeof(digest) &&
		    CRYPTO_memcmp(h, digest, sizeof(digest)) == 0 && out->revoked == 0)
			rc = TERN_OK;
	} else if (s != SQLITE_DONE) {
		rc = TERN_EIO;
	}
	cached_done(st);
	return rc;
}

bool apikey_allows_domain(const struct apikey *key, const char *domain)
{
	const char *p = key->domains;
	size_t dl = strlen(domain);
	if (!*p)
		return true;
	while (*p) {
		const char *e = strchr(p, ',');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (n &&
		    ((dl == n && memcmp(domain, p, n) == 0) ||
		     (dl > n && domain[dl - n - 1] == '.' && memcmp(domain + dl - n, p, n) == 0)))
			return true;
		p += n + (e ? 1 : 0);
	}
	return false;
}

int apikeys_result_put(struct apikeys *k, const char *id, size_t idx, const char *owner,
                       const char *sender, const char *addr, const char *state, const char *reply,
                       int64_t now)
{
	sqlite3_stmt *st = NULL;
	if (k->puts++ == 0) /* results are a convenience: no fsync for them */
		sqlite3_exec(k->db, "PRAGMA synchronous = OFF", NULL, NULL, NULL);
	if (k->puts % 1000 == 0 &&
	    sqlite3_prepare_v2(k->db, "DELETE FROM api_results WHERE updated < ?", -1, &st, NULL) ==
	        SQLITE_OK) {
		sqlite3_bind_int64(st, 1, now - RESULTS_KEEP);
		sqlite3_step(st);
		sqlite3_finalize(st);
		st = NULL;
	}
	if (!(st = cached(k, &k->result_st,
	                  "INSERT OR REPLACE INTO api_results (queue_id, idx, owner, sender, "
	                  "address, state, reply, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")))
		return TERN_EIO;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (int64_t)idx);
	sqlite3_bind_text(st, 3, owner, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, sender, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, addr, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, state, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 7, reply, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 8, now);
	int s = sqlite3_step(st);
	cached_done(st);
	return s == SQLITE_DONE ? TERN_OK : TERN_EIO;
}

int apikeys_results(struct apikeys *k, const char *id,
                    void (*fn)(void *arg, const char *owner, const char *sender, const char *addr,
                               const char *state, const char *reply, int64_t updated),
                    void *arg)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(k->db,
	                       "SELECT owner, sender, address, state, reply, updated FROM "
	                       "api_results WHERE queue_id = ? ORDER BY idx",
	                       -1, &st, NULL) != SQLITE_OK)
		return TERN_EIO;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	int s, n = 0;
	while ((s = sqlite3_step(st)) == SQLITE_ROW) {
		const char *c[5];
		for (int i = 0; i < 5; i++)
			c[i] = (const char *)sqlite3_column_text(st, i);
		fn(arg, c[0] ? c[0] : "", c[1] ? c[1] : "", c[2] ? c[2] : "", c[3] ? c[3] : "",
		   c[4], sqlite3_column_int64(st, 5));
		n++;
	}
	sqlite3_finalize(st);
	if (s != SQLITE_DONE)
		return TERN_EIO;
	return n ? TERN_OK : TERN_ENOTFOUND;
}

int apikeys_get(struct apikeys *k, const char *id, struct apikey *out)
{
	sqlite3_stmt *st = NULL;
	int rc = TERN_EIO;
	if (sqlite3_prepare_v2(k->db,
	                       "SELECT id, name, scope, domains, created, revoked, per_second, "
	                       "per_hour, per_day FROM apikeys WHERE id = ? AND revoked = 0",
	                       -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	int s = sqlite3_step(st);
	if (s == SQLITE_ROW) {
		/* the quotas too: an SES-signed send is charged by them (api.c) */
		row_to_key(st, out);
		row_limits(st, 6, out);
		rc = TERN_OK;
	} else {
		rc = s == SQLITE_DONE ? TERN_ENOTFOUND : TERN_EIO;
	}
out:
	sqlite3_finalize(st);
	return rc;
}

int apikeys_count_sent(struct apikeys *k, const char *owner, int64_t since, int64_t *out)
{
	sqlite3_stmt *st = NULL;
	int rc = TERN_EIO;
	*out = 0;
	if (sqlite3_prepare_v2(k->db,
	                       "SELECT COUNT(*) FROM api_results WHERE owner = ? AND updated >= ? "
	                       "AND state IN ('delivered', 'bounced')",
	                       -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, owner, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, since);
	if (sqlite3_step(st) == SQLITE_ROW) {
		*out = sqlite3_column_int64(st, 0);
		rc = TERN_OK;
	}
out:
	sqlite3_finalize(st);
	return rc;
}
