/*
 * msg_index.h — the searchable index of parsed messages shared by the
 * capture store (capture.c) and the archive (archive.c): one schema and one
 * insert, so capture_query.c's Mailpit-style search runs on both.
 * (internal to src/store)
 *
 * The tables: messages (aliased "m" by capture_query.c), recipients, tags,
 * message_tags and the FTS5 table fts (subject, sender, recipients, body).
 * A store adds its own tables after MSG_INDEX_SCHEMA.
 */
#ifndef TERN_STORE_MSG_INDEX_H
#define TERN_STORE_MSG_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "mime/mime.h"

#define MSG_INDEX_SCHEMA                                                                           \
	"CREATE TABLE IF NOT EXISTS messages ("                                                    \
	" seq INTEGER PRIMARY KEY,"                                                                \
	" id TEXT NOT NULL UNIQUE,"                                                                \
	" created INTEGER NOT NULL," /* microseconds since the epoch, UTC */                       \
	" read INTEGER NOT NULL DEFAULT 0,"                                                        \
	" size INTEGER NOT NULL,"                                                                  \
	" message_id TEXT NOT NULL DEFAULT '',"                                                    \
	" subject TEXT NOT NULL DEFAULT '',"                                                       \
	" from_name TEXT NOT NULL DEFAULT '',"                                                     \
	" from_addr TEXT NOT NULL DEFAULT '',"                                                     \
	" addrs TEXT NOT NULL DEFAULT '{}'," /* {"To":[..],"Cc":..,"Bcc":..,"ReplyTo":..} */       \
	" env_from TEXT NOT NULL DEFAULT '',"                                                      \
	" env_to TEXT NOT NULL DEFAULT '[]',"                                                      \
	" attachments INTEGER NOT NULL DEFAULT 0,"                                                 \
	" inline INTEGER NOT NULL DEFAULT 0,"                                                      \
	" snippet TEXT NOT NULL DEFAULT '',"                                                       \
	" username TEXT NOT NULL DEFAULT '');"                                                     \
	"CREATE INDEX IF NOT EXISTS messages_created ON messages(created);"                        \
	"CREATE INDEX IF NOT EXISTS messages_read ON messages(read);"                              \
	"CREATE INDEX IF NOT EXISTS messages_message_id ON messages(message_id);"                  \
	"CREATE TABLE IF NOT EXISTS recipients ("                                                  \
	" msg INTEGER NOT NULL, kind INTEGER NOT NULL, name TEXT NOT NULL, addr TEXT NOT NULL);"   \
	"CREATE INDEX IF NOT EXISTS recipients_msg ON recipients(msg);"                            \
	"CREATE TABLE IF NOT EXISTS tags ("                                                        \
	" id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE);"                      \
	"CREATE TABLE IF NOT EXISTS message_tags ("                                                \
	" msg INTEGER NOT NULL, tag INTEGER NOT NULL, PRIMARY KEY (msg, tag)) WITHOUT ROWID;"      \
	"CREATE INDEX IF NOT EXISTS message_tags_tag ON message_tags(tag);"                        \
	"CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(subject, sender, recipients, body,"     \
	" tokenize = 'unicode61 remove_diacritics 2');"

/* Recipient kinds in recipients.kind (capture_query.c uses the same digits). */
enum { MSG_K_TO = 0, MSG_K_CC = 1, MSG_K_BCC = 2, MSG_K_REPLYTO = 3, MSG_K_ENV = 4 };

/* The insert statements, prepared on first use; owned by the caller's
 * store and finalized with msg_index_stmts_free before sqlite3_close. */
struct msg_index_stmts {
	sqlite3_stmt *msg, *rcpt, *fts;
};
void msg_index_stmts_free(struct msg_index_stmts *ix);

/*
 * Inserts the messages row, the recipients and the full-text entry of the
 * parsed message mm under id (created: microseconds, UTC); *seq_out gets
 * the row's seq (= fts rowid). The caller holds whatever serialises db and
 * is inside a transaction. Returns TERN_OK, TERN_EIO or TERN_ENOMEM.
 */
int msg_index_insert(sqlite3 *db, struct msg_index_stmts *ix, const char *id, size_t size,
                     const struct mime_msg *mm, const char *env_from, const char *const *env_to,
                     size_t n_to, int64_t created, int64_t *seq_out);

/* Removes what msg_index_insert added for seq (messages, recipients,
 * message_tags, fts). Same locking as the insert. */
int msg_index_delete(sqlite3 *db, int64_t seq);

#endif
