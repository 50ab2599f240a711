/*
 * queue_routes.h — the queue over the HTTP API (issue 13 item 4), for the
 * web UI's queue page, independent of the listener (http/api.c routes them,
 * admin scope, on its pool thread):
 *
 *   GET    /api/v1/queue?state=deferred|active|held|all&limit=&cursor=
 *   POST   /api/v1/queue/{queue_id}/retry     every waiting recipient tried now
 *   POST   /api/v1/queue/{queue_id}/hold      queued and deferred ones held
 *   POST   /api/v1/queue/{queue_id}/release   held ones queued again
 *   DELETE /api/v1/queue/{queue_id}           the message removed, no DSN
 *
 * They do what `tern queue` does through the control socket (cli/control.c)
 * with the same queue functions: the spool's and the scheduler's public
 * calls, which take their own locks and may be called from any thread
 * (queue/queue.h); the scheduler's state is only ever changed by them.
 */
#ifndef TERN_HTTP_QUEUE_ROUTES_H
#define TERN_HTTP_QUEUE_ROUTES_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "core/id.h"

struct spool;
struct scheduler;

/* Which messages a listing shows: the classes of /metrics' queue gauge
 * (spool_count_states): active while a recipient is due, deferred while
 * every open one waits for its retry, held when only held ones remain. */
enum queue_state_filter { QF_ALL = 0, QF_ACTIVE, QF_DEFERRED, QF_HELD };

struct queue_query {
	enum queue_state_filter state;
	unsigned limit;                /* 1 to 1000; default 100 */
	char cursor[QUEUE_ID_LEN + 1]; /* "": from the first id */
};

/* Pure: state=, limit= and cursor= (a queue id: the last of the previous
 * page) of a query string. TERN_OK or TERN_EINVAL with *why (static). */
int queue_query_parse(const char *qs, size_t len, struct queue_query *q, const char **why);

/* The listing: 200 with *body {"messages":[...],"next_cursor": id or null}
 * (messages in queue id order), or 400/500 with *why. */
int queue_route_list(struct spool *sp, const char *qs, size_t len, json_t **body, const char **why);

enum queue_action { QA_RETRY, QA_HOLD, QA_RELEASE, QA_DELETE };

/* "retry", "hold", "release", "delete"; or the action named so (-1: none). */
const char *queue_action_name(enum queue_action a);
int queue_action_parse(const char *name);

/*
 * One action on the message id (who: the API key's name, for the log line
 * each action writes). 200 with *body {"queue_id","result":"ok",
 * "recipients": the recipients it changed (delete: the ones still open)},
 * 404 with *why when there is no such message in the queue, 500 when the
 * spool failed.
 */
int queue_route_action(struct spool *sp, struct scheduler *sched, enum queue_action a,
                       const char *id, const char *who, json_t **body, const char **why);

/*
 * The routing of the queue's requests: method ("GET", "POST", "DELETE"),
 * sub the path after "/api/v1/queue" ("", "/ID", "/ID/retry", ...), qs the
 * raw query. The queue id the request names goes to id_out (QUEUE_ID_LEN + 1
 * bytes; "" when none). The status: as above, 404 for an unknown path, 405
 * for a method the path does not take.
 */
int queue_route(struct spool *sp, struct scheduler *sched, const char *method, const char *sub,
                const char *qs, const char *who, char *id_out, json_t **body, const char **why);

#endif
