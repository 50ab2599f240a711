/*
 * deliver.h — delivery: local Maildir (local.c); remote comes later.
 *
 * Maildir layout: DATA/mail/DOMAIN/LOCALPART/{tmp,new,cur}, domain and
 * local part lowercased; a local part that is not safe as a file name
 * ("/", leading ".", control bytes, ...) is refused with TERN_EINVAL.
 *
 * Delivery is batched so that many messages share their syncs (DESIGN §6):
 * every item is written into tmp/ and fsync'd, then all are renamed into
 * new/, then each distinct new/ directory is fsync'd once. An item is
 * delivered only when its directory sync succeeded (DESIGN §5.1). Blocking:
 * run it on the thread pool, never on an event loop.
 */
#ifndef TERN_DELIVER_DELIVER_H
#define TERN_DELIVER_DELIVER_H

#include <stddef.h>
#include <sys/uio.h>

#define MAILDIR_NAME_MAX 128

struct maildir_item {
	/* in */
	const char *domain;      /* recipient domain */
	const char *local;       /* recipient local part (dequoted) */
	const struct iovec *iov; /* the file's content: prefix headers + message */
	int iovcnt;
	/* out */
	int result;              /* TERN_OK or an error */
	char name[MAILDIR_NAME_MAX]; /* the file name in new/ */
	char path[4096];         /* the full path of the delivered file */
};

/* mail_root is the data directory DATA. Builds DATA/mail/DOMAIN/LOCAL into out; TERN_EINVAL if unsafe, TERN_ELIMIT if too long. */
int maildir_path(const char *mail_root, const char *domain, const char *local, char *out,
		 size_t outlen);
/* Creates the maildir and its tmp/new/cur (mode 0700), like mkdir -p. */
int maildir_create(const char *path);
/*
 * A unique file name: "SECONDS.M<usec>P<pid>Q<counter>.HOSTNAME,S=SIZE"
 * (the Maildir++ convention Dovecot reads); '/' and ':' in hostname are
 * replaced as the Maildir spec says.
 */
int maildir_unique_name(const char *hostname, size_t size, char *out, size_t outlen);
/* Delivers every item (see above); returns the number delivered. */
size_t maildir_deliver_batch(const char *mail_root, const char *hostname,
			     struct maildir_item *items, size_t n);

#endif
