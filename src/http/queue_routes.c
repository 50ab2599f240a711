/*
 * queue_routes.c — the queue over the HTTP API (queue_routes.h): listing
 * with its parameters (a pure parser over pointer and length) and the
 * operator's actions on one message.
 *
 * Owns: the listing's JSON shape and the mapping of actions to the queue's
 * public calls (the same ones the control socket uses).
 * Must never: change a recipient that is finished (the spool refuses it),
 * touch scheduler internals (only scheduler_submit/scheduler_retry, which
 * lock), or act without writing one log line naming the key and the id.
 */
#include "http/queue_routes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "http/stats_routes.h"
#include "queue/queue.h"

static const char *const action_names[] = {"retry", "hold", "release", "delete"};

const char *queue_action_name(enum queue_action a)
{
	return (unsigned)a < sizeof(action_names) / sizeof(action_names[0]) ? action_names[a]
	                                                                    : NULL;
}

int queue_action_parse(const char *name)
{
	for (int i = 0; name && i < (int)(sizeof(action_names) / sizeof(action_names[0])); i++)
		if (strcmp(name, action_names[i]) == 0)
			return i;
	return -1;
}

int queue_query_parse(const char *qs, size_t len, struct queue_query *q, const char **why)
{
	static const char *const states[] = {"all", "active", "deferred", "held"};
	const char *v;
	size_t n;
	*q = (struct queue_query){.state = QF_ALL, .limit = 100};
	if (http_qs_raw(qs, len, "state", &v, &n)) {
		bool found = false;
		for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++)
			if (n == strlen(states[i]) && memcmp(v, states[i], n) == 0) {
				q->state = (enum queue_state_filter)i;
				found = true;
			}
		if (!found) {
			*why = "state: deferred, active, held or all";
			return TERN_EINVAL;
		}
	}
	if (http_qs_raw(qs, len, "limit", &v, &n)) {
		unsigned x = 0;
		size_t i = 0;
		for (; i < n && i < 5 && v[i] >= '0' && v[i] <= '9'; i++)
			x = x * 10 + (unsigned)(v[i] - '0');
		if (i == 0 || i != n || x < 1 || x > 1000) {
			*why = "limit: 1 to 1000";
			return TERN_EINVAL;
		}
		q->limit = x;
	}
	if (http_qs_raw(qs, len, "cursor", &v, &n) && n) {
		if (!queue_id_valid(v, n)) {
			*why = "cursor: give back the next_cursor of the previous page";
			return TERN_EINVAL;
		}
		memcpy(q->cursor, v, n);
		q->cursor[n] = '\0';
	}
	return TERN_OK;
}

/* The class of a message, as spool_count_states tells it. */
static enum queue_state_filter class_of(const struct spool_msg *m)
{
	unsigned seen = 0;
	for (size_t k = 0; k < m->n_rcpts; k++)
		seen |= 1u << m->rcpts[k].state;
	if (seen & (1u << RCPT_QUEUED))
		return QF_ACTIVE;
	if (seen & (1u << RCPT_DEFERRED))
		return QF_DEFERRED;
	if (seen & (1u << RCPT_HELD))
		return QF_HELD;
	return QF_ALL; /* nothing open: on its way out of the spool */
}

static bool open_rcpt(enum rcpt_state s)
{
	return s == RCPT_QUEUED || s == RCPT_DEFERRED || s == RCPT_HELD;
}

struct list_ctx {
	const struct queue_query *q;
	json_t *msgs;
	size_t n;
	char last[QUEUE_ID_LEN + 1];
	bool more;
	bool nomem;
};

static json_t *msg_json(const struct spool_msg *m, enum queue_state_filter cls)
{
	json_t *rcpts = json_array();
	for (size_t i = 0; rcpts && i < m->n_rcpts; i++) {
		const struct spool_rcpt *r = &m->rcpts[i];
		if (!open_rcpt(r->state))
			continue; /* delivered, bounced, suppressed: no longer queued */
		json_t *na = r->state == RCPT_DEFERRED && r->next_try
		                 ? json_integer((json_int_t)r->next_try)
		                 : json_null();
		json_array_append_new(rcpts, json_pack("{s:s, s:s, s:i, s:s, s:o}", "rcpt", r->addr,
		                                       "state", rcpt_state_name(r->state),
		                                       "attempts", (int)r->attempts, "reason",
		                                       r->last_reply ? r->last_reply : "",
		                                       "next_attempt", na));
	}
	return json_pack("{s:s, s:s, s:I, s:I, s:b, s:o}", "queue_id", m->id, "from", m->sender,
	                 "size", (json_int_t)m->size, "received", (json_int_t)m->created, "held",
	                 cls == QF_HELD, "recipients", rcpts);
}

static bool list_one(const struct spool_msg *m, void *arg)
{
	struct list_ctx *lc = arg;
	if (lc->q->cursor[0] && strcmp(m->id, lc->q->cursor) <= 0)
		return true; /* ids come in order: the previous pages' */
	enum queue_state_filter cls = class_of(m);
	if (cls == QF_ALL || (lc->q->state != QF_ALL && cls != lc->q->state))
		return true;
	if (lc->n == lc->q->limit) {
		lc->more = true;
		return false;
	}
	json_t *o = msg_json(m, cls);
	if (!o || json_array_append_new(lc->msgs, o) != 0) {
		lc->nomem = true;
		return false;
	}
	tern_strlcpy(lc->last, m->id, sizeof(lc->last));
	lc->n++;
	return true;
}

int queue_route_list(struct spool *sp, const char *qs, size_t len, json_t **body, const char **why)
{
	struct queue_query q;
	*body = NULL;
	if (queue_query_parse(qs, len, &q, why) != TERN_OK)
		return 400;
	struct list_ctx lc = {.q = &q, .msgs = json_array()};
	if (lc.msgs)
		spool_foreach(sp, list_one, &lc);
	if (!lc.msgs || lc.nomem ||
	    !(*body = json_pack("{s:o, s:o}", "messages", lc.msgs, "next_cursor",
	                        lc.more ? json_string(lc.last) : json_null()))) {
		if (!lc.msgs || lc.nomem)
			json_decref(lc.msgs);
		*why = "out of memory";
		return 500;
	}
	return 200;
}

int queue_route_action(struct spool *sp, struct scheduler *sched, enum queue_action a,
                       const char *id, const char *who, json_t **body, const char **why)
{
	*body = NULL;
	struct spool_msg *m = id && queue_id_valid(id, strlen(id)) ? spool_get(sp, id) : NULL;
	if (!m) {
		*why = "no such message in the queue (unknown id, delivered, or deleted)";
		return 404;
	}
	size_t n = 0;
	int rc = TERN_OK;
	for (size_t i = 0; i < m->n_rcpts; i++) {
		enum rcpt_state st = m->rcpts[i].state;
		switch (a) {
		case QA_RETRY:
			n += st == RCPT_QUEUED || st == RCPT_DEFERRED;
			break;
		case QA_HOLD:
			if ((st == RCPT_QUEUED || st == RCPT_DEFERRED) &&
			    spool_update_rcpt(sp, id, i, RCPT_HELD, 0, NULL) == TERN_OK)
				n++;
			break;
		case QA_RELEASE:
			if (st == RCPT_HELD &&
			    spool_update_rcpt(sp, id, i, RCPT_QUEUED, 0, NULL) == TERN_OK)
				n++;
			break;
		case QA_DELETE:
			n += open_rcpt(st);
			break;
		}
	}
	if (a == QA_RETRY && n)
		scheduler_retry(sched, id); /* deferred ones are due at once (like a flush) */
	else if (a == QA_RELEASE && n)
		scheduler_submit(sched, id, NULL, 0);
	else if (a == QA_DELETE)
		rc = spool_remove(sp, id);
	spool_msg_free(m);
	char kq[200];
	log_info("event=queue_%s id=%s source=api key=%s rcpts=%zu%s", queue_action_name(a), id,
	         log_quote(who ? who : "-", strlen(who ? who : "-"), kq, sizeof(kq)), n,
	         rc == TERN_OK ? "" : " result=failed");
	if (rc == TERN_ENOTFOUND) {
		*why = "no such message in the queue (unknown id, delivered, or deleted)";
		return 404;
	}
	if (rc != TERN_OK) {
		*why = "the spool could not record the change";
		return 500;
	}
	*body = json_pack("{s:s, s:s, s:I}", "queue_id", id, "result", "ok", "recipients",
	                  (json_int_t)n);
	if (!*body) {
		*why = "out of memory";
		return 500;
	}
	return 200;
}

int queue_route(struct spool *sp, struct scheduler *sched, const char *method, const char *sub,
                const char *qs, const char *who, char *id_out, json_t **body, const char **why)
{
	bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
	*body = NULL;
	id_out[0] = '\0';
	if (sub[0] == '\0') {
		if (get)
			return queue_route_list(sp, qs, qs ? strlen(qs) : 0, body, why);
		*why = "GET lists the queue; act on one message with POST /api/v1/queue/ID/ACTION";
		return 405;
	}
	const char *id = sub + 1, *slash = strchr(id, '/');
	size_t idlen = slash ? (size_t)(slash - id) : strlen(id);
	if (sub[0] != '/' || !queue_id_valid(id, idlen)) {
		*why = "no such message in the queue: that is not a queue id";
		return 404;
	}
	memcpy(id_out, id, idlen);
	id_out[idlen] = '\0';
	int act = slash ? queue_action_parse(slash + 1) : QA_DELETE;
	if (act < 0 || (slash && act == QA_DELETE)) {
		*why = "no such action: retry, hold or release (POST), or DELETE the message";
		return 404;
	}
	if (strcmp(method, slash ? "POST" : "DELETE") != 0) {
		*why = slash ? "an action takes POST"
		             : "a message takes DELETE (or POST .../retry, "
		               ".../hold, .../release)";
		return 405;
	}
	return queue_route_action(sp, sched, (enum queue_action)act, id_out, who, body, why);
}
