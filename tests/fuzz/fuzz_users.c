/*
 * fuzz_users.c — libFuzzer target for the users file parser and editor
 * (users_parse_buffer, users_edit_buffer in src/auth/users.c).
 *
 * Beyond "no crash, no leak", it checks invariants a user relies on: every
 * listed user can be found; deleting a user removes exactly that user;
 * setting a password makes exactly that password work and keeps the file
 * loadable; adding a user keeps every existing one. PLAIN passwords only,
 * so crypt(3) hashing never slows the fuzzer down.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "auth/users_internal.h"
#include "core/buf.h"
#include "core/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "invariant failed: %s (line %d)\n", #cond, __LINE__);      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

struct first {
	const struct user_db *db;
	char addr[USERS_ADDR_MAX + 1];
	size_t seen;
};

static void check_exists(const char *addr, void *arg)
{
	struct first *f = arg;
	char upper[USERS_ADDR_MAX + 1];
	size_t i;

	if (f->seen++ == 0)
		tern_strlcpy(f->addr, addr, sizeof(f->addr));
	for (i = 0; addr[i] != '\0' && i < USERS_ADDR_MAX; i++)
		upper[i] = (char)(addr[i] >= 'a' && addr[i] <= 'z' ? addr[i] - 32 : addr[i]);
	upper[i] = '\0';
	CHECK(users_exists(f->db, addr));
	CHECK(users_exists(f->db, upper)); /* lookups ignore ASCII case */
}

static struct user_db *reparse(const struct tbuf *b)
{
	struct user_db *db = NULL;
	char err[256];
	int rc = users_parse_buffer(b->data ? b->data : "", b->len, "fuzz", &db, err, sizeof(err));

	if (rc != TERN_OK) {
		fprintf(stderr, "edited file no longer parses: %s\n", err);
		abort();
	}
	return db;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	struct user_db *db = NULL, *db2;
	struct first f = {.seen = 0};
	struct tbuf out = TBUF_INIT(USERS_FILE_MAX);
	char err[256];
	size_t n;
	int rc;

	rc = users_parse_buffer(buf, size, "fuzz", &db, err, sizeof(err));
	if (rc != TERN_OK) {
		CHECK(db == NULL);
		CHECK(memchr(err, '\0', sizeof(err)) != NULL);
		/* The editor must cope with files the parser refuses. */
		rc = users_edit_buffer(buf, size, USERS_EDIT_DEL, "a@b.c", NULL, &out);
		CHECK(rc == TERN_OK || rc == TERN_ENOTFOUND);
		tbuf_free(&out);
		return 0;
	}
	n = users_count(db);
	f.db = db;
	users_foreach(db, check_exists, &f);
	CHECK(f.seen == n);
	if (n == 0) {
		users_free(db);
		return 0;
	}
	CHECK(users_exists(db, f.addr));

	/* Delete the first user: one fewer, that one gone. */
	rc = users_edit_buffer(buf, size, USERS_EDIT_DEL, f.addr, NULL, &out);
	CHECK(rc == TERN_OK);
	db2 = reparse(&out);
	CHECK(users_count(db2) == n - 1);
	CHECK(!users_exists(db2, f.addr));
	users_free(db2);
	tbuf_reset(&out);

	/* New password: exactly it works now, count unchanged. */
	rc = users_edit_buffer(buf, size, USERS_EDIT_PASSWD, f.addr, "{PLAIN}fuzz-pw", &out);
	CHECK(rc == TERN_OK);
	db2 = reparse(&out);
	CHECK(users_count(db2) == n);
	CHECK(users_verify(db2, f.addr, "fuzz-pw") == TERN_OK);
	CHECK(users_verify(db2, f.addr, "fuzz-p") == TERN_EINVAL);
	users_free(db2);
	tbuf_reset(&out);

	/* Adding a new user keeps everyone; adding an existing one is refused. */
	rc = users_edit_buffer(buf, size, USERS_EDIT_ADD, f.addr, "{PLAIN}x", &out);
	CHECK(rc == TERN_EEXIST);
	tbuf_reset(&out);
	if (!users_exists(db, "new-user@fuzz.invalid")) {
		rc = users_edit_buffer(buf, size, USERS_EDIT_ADD, "New-User@fuzz.invalid",
		                       "{PLAIN}y", &out);
		CHECK(rc == TERN_OK);
		db2 = reparse(&out);
		CHECK(users_count(db2) == n + 1);
		CHECK(users_verify(db2, "new-user@fuzz.invalid", "y") == TERN_OK);
		CHECK(users_exists(db2, f.addr));
		users_free(db2);
	}
	tbuf_free(&out);
	users_free(db);
	return 0;
}
