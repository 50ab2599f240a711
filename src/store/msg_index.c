/*
 * msg_index.c — the message index shared by the capture store and the
 * archive (msg_index.h): the messages row, its recipients and its FTS5 entry.
 *
 * Owns: nothing beyond one call (the statements belong to the caller).
 * Must never: build SQL from message bytes (everything is bound), take a
 * lock or open a transaction (the caller's store does both).
 */
#include "store/msg_index.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "core/buf.h"
#include "core/err.h"

#define FTS_BODY_MAX 65536 /* bytes of body text indexed per message */

void msg_index_stmts_free(struct msg_index_stmts *ix)
{
	sqlite3_finalize(ix->msg);
	sqlite3_finalize(ix->rcpt);
	sqlite3_finalize(ix->fts);
	ix->msg = ix->rcpt = ix->fts = NULL;
}

static sqlite3_stmt *prep_once(sqlite3 *db, sqlite3_stmt **slot, const char *sql)
{
	if (!*slot &&
	    sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, slot, NULL) != SQLITE_OK) {
		sqlite3_finalize(*slot);
		*slot = NULL;
	}
	return *slot;
}

/* json_string that never fails on odd bytes (a NULL would drop a field). */
static json_t *jstr(const char *s)
{
	json_t *j = json_string(s ? s : "");
	return j ? j : json_string("");
}

static json_t *addr_json(const char *name, const char *addr)
{
	return json_pack("{s:o,s:o}", "Name", jstr(name), "Address", jstr(addr));
}

static json_t *addrs_json(const struct mime_addrs *a)
{
	json_t *arr = json_array();
	for (size_t i = 0; arr && i < a->n; i++)
		json_array_append_new(arr, addr_json(a->v[i].name, a->v[i].addr));
	return arr;
}

static int insert_recipient(sqlite3_stmt *s, int64_t seq, int kind, const char *name,
                            const char *addr)
{
	sqlite3_reset(s);
	sqlite3_bind_int64(s, 1, seq);
	sqlite3_bind_int(s, 2, kind);
	sqlite3_bind_text(s, 3, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 4, addr, -1, SQLITE_STATIC);
	return sqlite3_step(s) == SQLITE_DONE ? TERN_OK : TERN_EIO;
}

static void append_addrs_text(struct tbuf *b, const struct mime_addrs *a)
{
	for (size_t i = 0; i < a->n; i++)
		tbuf_printf(b, "%s %s ", a->v[i].name, a->v[i].addr);
}

int msg_index_insert(sqlite3 *db, struct msg_index_stmts *ix, const char *id, size_t size,
                     const struct mime_msg *mm, const char *env_from, const char *const *env_to,
                     size_t n_to, int64_t created, int64_t *seq_out)
{
	int rc = TERN_EIO;
	sqlite3_stmt *s = NULL, *r = NULL;
	char *addrs_s = NULL, *envto_s = NULL;
	struct tbuf rcpt = TBUF_INIT(SIZE_MAX / 2), sender = TBUF_INIT(SIZE_MAX / 2);

	/* Envelope recipients that no To/Cc/Bcc header names were blind
	 * copies: list them as Bcc, as Mailpit does. */
	json_t *bcc = addrs_json(&mm->bcc);
	for (size_t i = 0; bcc && i < n_to; i++) {
		const char *e = env_to[i] ? env_to[i] : "";
		bool named = !*e;
		const struct mime_addrs *hl[] = {&mm->to, &mm->cc, &mm->bcc};
		for (size_t k = 0; !named && k < 3; k++)
			for (size_t j = 0; !named && j < hl[k]->n; j++)
				named = strcasecmp(hl[k]->v[j].addr, e) == 0;
		if (!named)
			json_array_append_new(bcc, addr_json("", e));
	}
	json_t *addrs =
	    json_pack("{s:o,s:o,s:o,s:o}", "To", addrs_json(&mm->to), "Cc", addrs_json(&mm->cc),
	              "Bcc", bcc ? bcc : json_array(), "ReplyTo", addrs_json(&mm->reply_to));
	json_t *envto = json_array();
	for (size_t i = 0; envto && i < n_to; i++)
		json_array_append_new(envto, jstr(env_to[i]));
	addrs_s = addrs ? json_dumps(addrs, JSON_COMPACT) : NULL;
	envto_s = envto ? json_dumps(envto, JSON_COMPACT) : NULL;
	json_decref(addrs);
	json_decref(envto);
	if (!addrs_s || !envto_s) {
		rc = TERN_ENOMEM;
		goto out;
	}
	s = prep_once(db, &ix->msg,
	              "INSERT INTO messages (id, created, read, size, message_id, subject, "
	              "from_name, from_addr, addrs, env_from, env_to, attachments, inline, "
	              "snippet) VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
	if (!s)
		goto out;
	sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, created);
	sqlite3_bind_int64(s, 3, (sqlite3_int64)size);
	sqlite3_bind_text(s, 4, mm->message_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 5, mm->subject, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 6, mm->from.name, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 7, mm->from.addr, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 8, addrs_s, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 9, env_from ? env_from : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 10, envto_s, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 11, (sqlite3_int64)mm->n_attachments);
	sqlite3_bind_int64(s, 12, (sqlite3_int64)mm->n_inline);
	sqlite3_bind_text(s, 13, mm->snippet, -1, SQLITE_STATIC);
	if (sqlite3_step(s) != SQLITE_DONE)
		goto out;
	int64_t seq = sqlite3_last_insert_rowid(db);
	*seq_out = seq;

	r = prep_once(db, &ix->rcpt,
	              "INSERT INTO recipients (msg, kind, name, addr) VALUES (?, ?, ?, ?)");
	if (!r)
		goto out;
	const struct mime_addrs *lists[] = {&mm->to, &mm->cc, &mm->bcc, &mm->reply_to};
	const int kinds[] = {MSG_K_TO, MSG_K_CC, MSG_K_BCC, MSG_K_REPLYTO};
	for (size_t k = 0; k < 4; k++)
		for (size_t i = 0; i < lists[k]->n; i++)
			if (insert_recipient(r, seq, kinds[k], lists[k]->v[i].name,
			                     lists[k]->v[i].addr) != TERN_OK)
				goto out;
	for (size_t i = 0; i < n_to; i++)
		if (insert_recipient(r, seq, MSG_K_ENV, "", env_to[i] ? env_to[i] : "") != TERN_OK)
			goto out;

	append_addrs_text(&rcpt, &mm->to);
	append_addrs_text(&rcpt, &mm->cc);
	append_addrs_text(&rcpt, &mm->bcc);
	for (size_t i = 0; i < n_to; i++)
		tbuf_printf(&rcpt, "%s ", env_to[i] ? env_to[i] : "");
	tbuf_printf(&sender, "%s %s %s", mm->from.name, mm->from.addr, env_from ? env_from : "");

	sqlite3_reset(s);
	s = prep_once(db, &ix->fts,
	              "INSERT INTO fts (rowid, subject, sender, recipients, "
	              "body) VALUES (?, ?, ?, ?, ?)");
	if (!s)
		goto out;
	/* body: the text (or the HTML when there is no text) plus file names */
	const char *body = mm->text[0] ? mm->text : mm->html;
	size_t blen = strlen(body);
	if (blen > FTS_BODY_MAX)
		blen = FTS_BODY_MAX;
	struct tbuf b = TBUF_INIT(SIZE_MAX / 2);
	tbuf_append(&b, body, blen);
	for (size_t i = 0; i < mm->n_parts; i++)
		if (mm->parts[i].filename[0])
			tbuf_printf(&b, " %s", mm->parts[i].filename);
	sqlite3_bind_int64(s, 1, seq);
	sqlite3_bind_text(s, 2, mm->subject, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 3, sender.data ? sender.data : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 4, rcpt.data ? rcpt.data : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 5, b.data ? b.data : "", (int)b.len, SQLITE_STATIC);
	int step = sqlite3_step(s);
	tbuf_free(&b);
	if (step != SQLITE_DONE)
		goto out;
	rc = TERN_OK;
out:
	if (s)
		sqlite3_reset(s); /* cached: never finalized here */
	if (r)
		sqlite3_reset(r);
	free(addrs_s);
	free(envto_s);
	tbuf_free(&rcpt);
	tbuf_free(&sender);
	return rc;
}

int msg_index_delete(sqlite3 *db, int64_t seq)
{
	static const char *const sql[] = {
	    "DELETE FROM recipients WHERE msg = ?", "DELETE FROM message_tags WHERE msg = ?",
	    "DELETE FROM fts WHERE rowid = ?", "DELETE FROM messages WHERE seq = ?"};
	for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]); i++) {
		sqlite3_stmt *s = NULL;
		if (sqlite3_prepare_v2(db, sql[i], -1, &s, NULL) != SQLITE_OK) {
			sqlite3_finalize(s);
			return TERN_EIO;
		}
		sqlite3_bind_int64(s, 1, seq);
		int st = sqlite3_step(s);
		sqlite3_finalize(s);
		if (st != SQLITE_DONE)
			return TERN_EIO;
	}
	return TERN_OK;
}
