/*
 * fuzz_capture_query.c — libFuzzer target for capture_query_parse()
 * (Mailpit search syntax -> SQL WHERE clause + bound parameters).
 *
 * The input is copied into an exact-size heap block so ASan catches any
 * read past len. Checked beyond "no crash":
 *   - on success the clause has exactly one "?" per parameter (user input
 *     never reaches the SQL text, so no other "?" can appear) and no quote
 *     characters except the fixed ESCAPE '\' fragments;
 *   - the clause prepares and runs against an in-memory database with the
 *     capture tables (same names and columns as src/store/capture.c);
 *   - on failure the result is empty.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "core/buf.h"
#include "core/err.h"
#include "store/capture_query.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
	if (!cond)
		abort();
}

static sqlite3 *db;

static void open_db(void)
{
	if (db)
		return;
	check(sqlite3_open(":memory:", &db) == SQLITE_OK);
	check(sqlite3_exec(
	          db,
	          "CREATE TABLE messages (seq INTEGER PRIMARY KEY, id TEXT, created INTEGER,"
	          " read INTEGER, size INTEGER, message_id TEXT, subject TEXT, from_name TEXT,"
	          " from_addr TEXT, addrs TEXT, env_from TEXT, env_to TEXT, attachments "
	          "INTEGER, inline INTEGER, snippet TEXT);"
	          "INSERT INTO messages VALUES (1, 'a', 0, 0, 1, 'm', 's', 'n', 'a@b', '{}', "
	          "'e', '[]', 0, 0, '');"
	          "CREATE TABLE recipients (msg INTEGER, kind INTEGER, name TEXT, addr TEXT);"
	          "CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT UNIQUE COLLATE NOCASE);"
	          "CREATE TABLE message_tags (msg INTEGER, tag INTEGER);"
	          "CREATE VIRTUAL TABLE fts USING fts5(subject, sender, recipients, body,"
	          " tokenize = 'unicode61 remove_diacritics 2');"
	          "INSERT INTO fts (rowid, subject, sender, recipients, body) VALUES (1, 's', "
	          "'n a@b', 'c@d', 'body text');",
	          NULL, NULL, NULL) == SQLITE_OK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	open_db();
	char *in = malloc(size ? size : 1);
	if (!in)
		return 0;
	memcpy(in, data, size);
	struct capture_query q;
	int rc = capture_query_parse(in, size, &q);
	if (rc != TERN_OK) {
		check(rc == TERN_ESYNTAX || rc == TERN_ELIMIT || rc == TERN_ENOMEM);
		check(q.n_params == 0);
		capture_query_free(&q);
		free(in);
		return 0;
	}
	check(q.where.data != NULL && strlen(q.where.data) == q.where.len);
	size_t marks = 0;
	for (const char *p = q.where.data; *p; p++) {
		if (*p == '?')
			marks++;
		if (*p == '"')
			abort();
		if (*p == '\'')
			check(strncmp(p, "'\\'", 3) == 0 ||
			      (p - q.where.data >= 2 && strncmp(p - 2, "'\\'", 3) == 0));
	}
	check(marks == q.n_params);
	for (size_t i = 0; i < q.n_params; i++)
		check(q.params[i].kind == CQ_INT || q.params[i].text != NULL);

	struct tbuf sql = TBUF_INIT(1 << 20);
	check(tbuf_printf(&sql, "SELECT m.id FROM messages m WHERE %s", q.where.data) == TERN_OK);
	sqlite3_stmt *s = NULL;
	check(sqlite3_prepare_v2(db, sql.data, -1, &s, NULL) == SQLITE_OK);
	for (size_t i = 0; i < q.n_params; i++) {
		if (q.params[i].kind == CQ_TEXT)
			sqlite3_bind_text(s, (int)i + 1, q.params[i].text, -1, SQLITE_STATIC);
		else
			sqlite3_bind_int64(s, (int)i + 1, q.params[i].i);
	}
	int step;
	while ((step = sqlite3_step(s)) == SQLITE_ROW)
		;
	/* FTS5 may reject a MATCH string at run time (e.g. a lone "*"), never
	 * anything else */
	check(step == SQLITE_DONE || step == SQLITE_ERROR);
	sqlite3_finalize(s);
	tbuf_free(&sql);
	capture_query_free(&q);
	free(in);
	return 0;
}
