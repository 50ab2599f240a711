/*
 * capture_mailbox.c — the capture store as a POP3 mailbox (see
 * capture_mailbox.h).
 *
 * Owns: listing the store as a pop3_mailbox (sizes as RETR sends them),
 * handing a message's bytes to the server as a readable fd (a memfd), the
 * QUIT-time deletion, checking logins against the htpasswd set.
 * Must never: delete anything but the messages DELE'd in the session
 * (capture_delete with no ids would empty the store), or block a worker
 * (every hook but close runs on the POP3 pool).
 */
#include "pop3/capture_mailbox.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "http/basic_auth.h"
#include "store/store.h"

#define RAW_MAX ((size_t)1 << 31)

static int cap_verify(void *ctx, const char *login, const char *password)
{
	struct pop3_capture *pc = ctx;
	return http_auth_verify(pc->users, login, password) ? TERN_OK : TERN_EINVAL;
}

static void mb_free(struct pop3_mailbox *mb)
{
	if (!mb)
		return;
	for (size_t i = 0; i < mb->n; i++)
		free(mb->msgs[i].file);
	free(mb->msgs);
	free(mb->dir);
	free(mb);
}

static void cap_close(void *ctx, struct pop3_mailbox *mb)
{
	mb_free(mb);
}

static enum pop3_open_status cap_open(void *ctx, const char *login, size_t max,
                                      struct pop3_mailbox **out, int *errno_out)
{
	struct pop3_capture *pc = ctx;
	*out = NULL;
	*errno_out = 0;
	json_t *list = capture_list(pc->st, NULL, 0, max);
	json_t *msgs = json_object_get(list, "messages");
	struct pop3_mailbox *mb = calloc(1, sizeof(*mb));
	size_t n = json_array_size(msgs);
	struct tbuf raw = TBUF_INIT(RAW_MAX);
	if (!mb || !list || !(mb->dir = tern_strdup("capture")) ||
	    !(mb->msgs = calloc(n ? n : 1, sizeof(*mb->msgs))))
		goto fail;
	/* the list is newest first; POP3 numbers the oldest 1 */
	for (size_t k = n; k-- > 0;) {
		const char *id = json_string_value(json_object_get(json_array_get(msgs, k), "ID"));
		if (!id)
			continue;
		tbuf_reset(&raw);
		int rc = capture_raw(pc->st, id, &raw);
		if (rc == TERN_ENOTFOUND)
			continue; /* deleted meanwhile */
		if (rc != TERN_OK)
			goto fail;
		bool prev_cr = false;
		struct pop3_msg *m = &mb->msgs[mb->n];
		m->size = raw.len + pop3_count_bare_lf(raw.data, raw.len, &prev_cr);
		m->file = tern_strdup(id);
		if (!m->file)
			goto fail;
		m->base_len = strlen(id);
		mb->total += m->size;
		mb->n++;
	}
	json_t *total = json_object_get(list, "total");
	if (json_is_integer(total) && (size_t)json_integer_value(total) > n)
		mb->skipped = (size_t)json_integer_value(total) - n;
	tbuf_free(&raw);
	json_decref(list);
	*out = mb;
	return POP3_OPEN_OK;
fail:
	*errno_out = errno ? errno : EIO;
	tbuf_free(&raw);
	json_decref(list);
	mb_free(mb);
	return POP3_OPEN_FAILED;
}

static int cap_open_msg(void *ctx, struct pop3_mailbox *mb, size_t i)
{
	struct pop3_capture *pc = ctx;
	struct tbuf raw = TBUF_INIT(RAW_MAX);
	int fd = -1;
	int rc = capture_raw(pc->st, mb->msgs[i].file, &raw);
	if (rc != TERN_OK) {
		errno = rc == TERN_ENOTFOUND ? ENOENT : EIO;
		goto out;
	}
	fd = memfd_create("tern-pop3-msg", MFD_CLOEXEC);
	if (fd < 0)
		goto out;
	for (size_t off = 0; off < raw.len;) {
		ssize_t w = write(fd, raw.data + off, raw.len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = errno ? errno : EIO;
			close(fd);
			fd = -1;
			errno = e;
			goto out;
		}
		off += (size_t)w;
	}
out:
	tbuf_free(&raw);
	return fd;
}

static int cap_update(void *ctx, struct pop3_mailbox *mb, size_t *removed, int *errno_out)
{
	struct pop3_capture *pc = ctx;
	const char **ids = calloc(mb->n ? mb->n : 1, sizeof(*ids));
	size_t n = 0;
	int rc = TERN_OK;
	*removed = 0;
	*errno_out = 0;
	if (!ids) {
		rc = TERN_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < mb->n; i++)
		if (mb->msgs[i].deleted)
			ids[n++] = mb->msgs[i].file;
	/* n == 0 must never reach capture_delete: it would empty the store */
	if (n) {
		rc = capture_delete(pc->st, ids, n);
		if (rc == TERN_ENOTFOUND)
			rc = TERN_OK; /* deleted over the API meanwhile: gone either way */
		if (rc == TERN_OK)
			*removed = n;
		else
			*errno_out = EIO;
	}
out:
	free(ids);
	mb_free(mb);
	return rc;
}

void pop3_capture_init(struct pop3_capture *pc, struct capture_store *st,
                       const struct http_auth *users)
{
	pc->st = st;
	pc->users = users;
	pc->backend = (struct pop3_backend){
	    .ctx = pc,
	    .verify = cap_verify,
	    .open = cap_open,
	    .open_msg = cap_open_msg,
	    .update = cap_update,
	    .close = cap_close,
	};
}
