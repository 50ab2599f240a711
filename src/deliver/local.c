/*
 * local.c — local delivery into Maildir mailboxes (DESIGN §5.1, §6).
 *
 * Owns: the mapping from (domain, local part) to DATA/mail/DOMAIN/LOCAL,
 * creating maildirs, unique file names, and the batched write/sync/rename
 * protocol that makes a delivered message durable.
 *
 * Must never: build a path from a recipient without validating it (a local
 * part is attacker-controlled), report an item delivered before the file
 * and its new/ directory entry are on stable storage, leave a file behind
 * in tmp/ for an item it reports as failed, or run on an event loop (every
 * function here blocks on the disk).
 *
 * The batch protocol (DESIGN §6): write and fsync every file in tmp/, then
 * rename every file into new/, then fsync each distinct new/ directory once.
 * A crash between the steps leaves at worst a complete file in tmp/ (which
 * Maildir readers clean up) or a delivered file whose caller will retry it
 * (a duplicate, never a loss).
 */
#include "deliver/deliver.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "auth/auth.h"
#include "core/buf.h"
#include "core/conf.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "core/runtime.h"

/* Longest single path component we accept (NAME_MAX on Linux). */
#define COMPONENT_MAX 255
/* Attempts at a fresh name when tmp/NAME already exists (practically never). */
#define NAME_RETRIES 8

static _Atomic unsigned long name_counter;

/*
 * A component is safe as a single directory name: not empty, no '/', no
 * control bytes, and no leading '.' (which rules out ".", ".." and hidden
 * names that Maildir++ uses for folders). Bytes >= 0x80 (UTF-8 local parts)
 * are allowed.
 */
static int check_component(const char *s)
{
	size_t n = 0;

	if (s == NULL || s[0] == '\0' || s[0] == '.')
		return TERN_EINVAL;
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++, n++) {
		if (*p == '/' || *p < 0x20 || *p == 0x7f)
			return TERN_EINVAL;
	}
	if (n > COMPONENT_MAX)
		return TERN_ELIMIT;
	return TERN_OK;
}

/* Appends s to out at *pos, lowercasing ASCII when lower is set. */
static int append(char *out, size_t outlen, size_t *pos, const char *s, bool lower)
{
	for (; *s != '\0'; s++) {
		char c = *s;

		if (*pos + 1 >= outlen)
			return TERN_ELIMIT;
		if (lower && c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		out[(*pos)++] = c;
	}
	out[*pos] = '\0';
	return TERN_OK;
}

/*
 * mail_root is the data directory (DATA); the result is
 * DATA/mail/DOMAIN/LOCAL with DOMAIN and LOCAL lowercased (ASCII only).
 * On any error out is left as an empty string (when outlen > 0).
 */
int maildir_path(const char *mail_root, const char *domain, const char *local, char *out,
                 size_t outlen)
{
	size_t pos = 0;
	int rc;

	if (out == NULL || outlen == 0)
		return TERN_ELIMIT;
	out[0] = '\0';
	if (mail_root == NULL || mail_root[0] == '\0')
		return TERN_EINVAL;
	if ((rc = check_component(domain)) != TERN_OK)
		return rc;
	if ((rc = check_component(local)) != TERN_OK)
		return rc;
	if ((rc = append(out, outlen, &pos, mail_root, false)) != TERN_OK ||
	    (rc = append(out, outlen, &pos, "/mail/", false)) != TERN_OK ||
	    (rc = append(out, outlen, &pos, domain, true)) != TERN_OK ||
	    (rc = append(out, outlen, &pos, "/", false)) != TERN_OK ||
	    (rc = append(out, outlen, &pos, local, true)) != TERN_OK) {
		out[0] = '\0';
		return rc;
	}
	return TERN_OK;
}

/* A Maildir++ folder name we create: 1..FOLDER_MAX of [A-Za-z0-9_-]. */
#define FOLDER_MAX 64
static bool folder_ok(const char *f)
{
	size_t n = 0;

	for (; f[n] != '\0'; n++) {
		char c = f[n];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_'))
			return false;
	}
	return n > 0 && n <= FOLDER_MAX;
}

int maildir_folder_path(const char *mail_root, const char *domain, const char *local,
			const char *folder, char *out, size_t outlen)
{
	int rc = maildir_path(mail_root, domain, local, out, outlen);
	size_t pos;

	if (rc != TERN_OK || folder == NULL || folder[0] == '\0')
		return rc;
	if (!folder_ok(folder)) {
		out[0] = '\0';
		return TERN_EINVAL;
	}
	pos = strlen(out);
	if ((rc = append(out, outlen, &pos, "/.", false)) != TERN_OK ||
	    (rc = append(out, outlen, &pos, folder, false)) != TERN_OK) {
		out[0] = '\0';
		return rc;
	}
	return TERN_OK;
}

/*
 * mkdir -p of path plus tmp/, new/, cur/ inside it, all mode 0700. Every
 * directory that had to be created gets its parent fsync'd right away:
 * creation happens once per mailbox, so these syncs are rare, and doing
 * them here keeps "the new/ entry is durable" true even for the first
 * message of a new user.
 */
static int create_dirs(const char *path)
{
	static const char *const subdirs[] = {"tmp", "new", "cur"};
	char buf[PATH_MAX];
	bool created, any_sub = false;
	int rc = tern_mkdir_p(path, 0700, true, NULL);

	if (rc != TERN_OK)
		return rc;
	for (size_t i = 0; i < sizeof(subdirs) / sizeof(subdirs[0]); i++) {
		int n = snprintf(buf, sizeof(buf), "%s/%s", path, subdirs[i]);
		if (n < 0 || (size_t)n >= sizeof(buf))
			return TERN_ELIMIT;
		rc = tern_mkdir_p(buf, 0700, false, &created);
		if (rc != TERN_OK)
			return rc;
		any_sub |= created;
	}
	return any_sub ? tern_fsync_dir(path) : TERN_OK;
}

/*
 * A Maildir++ folder of the Maildir at mdir named tag, compared ignoring
 * ASCII case (the address was lowercased; folders keep the case a mail
 * program gave them): appends "/.NAME" to mdir and returns true when one
 * exists (a directory with cur/ in it). Only existing folders: an address
 * never creates one.
 */
static bool find_folder(char *mdir, size_t mdirlen, const char *tag)
{
	char probe[PATH_MAX];
	struct stat st;
	bool found = false;
	if (check_component(tag) != TERN_OK)
		return false;
	DIR *d = opendir(mdir);
	if (!d)
		return false;
	struct dirent *e;
	while (!found && (e = readdir(d)) != NULL) {
		if (e->d_name[0] != '.' || strcasecmp(e->d_name + 1, tag) != 0)
			continue;
		int n = snprintf(probe, sizeof(probe), "%s/%s/cur", mdir, e->d_name);
		if (n < 0 || (size_t)n >= sizeof(probe) || stat(probe, &st) != 0 ||
		    !S_ISDIR(st.st_mode))
			continue;
		size_t len = strlen(mdir);
		n = snprintf(mdir + len, mdirlen - len, "/%s", e->d_name);
		if (n > 0 && (size_t)n < mdirlen - len)
			found = true;
		else
			mdir[len] = '\0';
	}
	closedir(d);
	return found;
}

/*
 * The Maildir of a local recipient: maildir_path's, except for plus
 * addressing (recipient_delimiter in the running config): a local part that
 * is no user of its own but whose part before the first delimiter is goes
 * to that user's Maildir, into the folder named by the rest when it exists
 * ("bob+lists" -> DATA/mail/DOMAIN/bob/.Lists), else into the inbox. rt may
 * be NULL (no running config: tools, tests): plain maildir_path.
 */
static int resolve_maildir(const struct tern_runtime *rt, const char *mail_root, const char *domain,
                           const char *local, const char *folder, char *out, size_t outlen)
{
	char addr[600], user[300];
	int rc = maildir_folder_path(mail_root, domain, local, folder, out, outlen);
	if (!rt || !rt->conf || !rt->users)
		return rc;
	size_t len = strlen(local);
	size_t base = conf_local_base_len(rt->conf, local, len);
	if (base == 0 || base == len || base >= sizeof(user))
		return rc;
	int n = snprintf(addr, sizeof(addr), "%s@%s", local, domain);
	if (n < 0 || (size_t)n >= sizeof(addr) || users_exists(rt->users, addr))
		return rc; /* a user whose name has the delimiter in it */
	memcpy(user, local, base);
	user[base] = '\0';
	n = snprintf(addr, sizeof(addr), "%s@%s", user, domain);
	if (n < 0 || (size_t)n >= sizeof(addr) || !users_exists(rt->users, addr))
		return rc;
	/* A folder the message must go to (DMARC quarantine: Junk) wins over
	 * the one the tag names. */
	if ((rc = maildir_folder_path(mail_root, domain, user, folder, out, outlen)) != TERN_OK)
		return rc;
	if (folder == NULL || folder[0] == '\0')
		(void)find_folder(out, outlen, local + base + 1);
	return TERN_OK;
}

int maildir_create(const char *path)
{
	if (path == NULL || path[0] == '\0')
		return TERN_EINVAL;
	return create_dirs(path);
}

/*
 * Copies hostname into out, escaping '/' as \057 and ':' as \072 (the
 * Maildir spec), plus ',' (which starts Maildir++ fields such as ",S=") and
 * any control, space or non-ASCII byte, all as \ooo, so that the name
 * stays one safe path component that readers parse correctly.
 */
static int append_host(char *out, size_t outlen, size_t *pos, const char *host)
{
	for (const unsigned char *p = (const unsigned char *)host; *p != '\0'; p++) {
		if (*p == '/' || *p == ':' || *p == ',' || *p == '\\' || *p <= 0x20 || *p >= 0x7f) {
			if (*pos + 5 > outlen)
				return TERN_ELIMIT;
			out[(*pos)++] = '\\';
			out[(*pos)++] = (char)('0' + ((*p >> 6) & 7));
			out[(*pos)++] = (char)('0' + ((*p >> 3) & 7));
			out[(*pos)++] = (char)('0' + (*p & 7));
		} else {
			if (*pos + 2 > outlen)
				return TERN_ELIMIT;
			out[(*pos)++] = (char)*p;
		}
	}
	out[*pos] = '\0';
	return TERN_OK;
}

/*
 * Uniqueness: seconds + microseconds + pid tell processes apart, the
 * process-wide atomic counter tells apart names made in the same
 * microsecond by any thread of this process. A NULL or empty hostname
 * means gethostname().
 */
int maildir_unique_name(const char *hostname, size_t size, char *out, size_t outlen)
{
	char hostbuf[256];
	struct timespec ts;
	unsigned long q = atomic_fetch_add_explicit(&name_counter, 1, memory_order_relaxed);
	size_t pos;
	int n, rc;

	if (out == NULL || outlen == 0)
		return TERN_ELIMIT;
	out[0] = '\0';
	if (hostname == NULL || hostname[0] == '\0') {
		if (gethostname(hostbuf, sizeof(hostbuf)) != 0)
			return TERN_EIO;
		hostbuf[sizeof(hostbuf) - 1] = '\0';
		hostname = hostbuf[0] != '\0' ? hostbuf : "localhost";
	}
	if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
		return TERN_EIO;
	n = snprintf(out, outlen, "%lld.M%ldP%ldQ%lu.", (long long)ts.tv_sec,
	             (long)(ts.tv_nsec / 1000), (long)getpid(), q);
	if (n < 0 || (size_t)n >= outlen)
		goto toolong;
	pos = (size_t)n;
	if ((rc = append_host(out, outlen, &pos, hostname)) != TERN_OK)
		goto toolong;
	n = snprintf(out + pos, outlen - pos, ",S=%zu", size);
	if (n < 0 || (size_t)n >= outlen - pos)
		goto toolong;
	return TERN_OK;
toolong:
	out[0] = '\0';
	return TERN_ELIMIT;
}

int maildir_stable_name(const char *hostname, long long created, const char *queue_id,
			size_t rcpt_idx, size_t size, char *out, size_t outlen)
{
	char hostbuf[256];
	if (out == NULL || outlen == 0)
		return TERN_ELIMIT;
	if (hostname == NULL || hostname[0] == '\0') {
		if (gethostname(hostbuf, sizeof(hostbuf)) != 0)
			return TERN_EIO;
		hostbuf[sizeof(hostbuf) - 1] = '\0';
		hostname = hostbuf[0] != '\0' ? hostbuf : "localhost";
	}
	for (const char *p = queue_id; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'A' && *p <= 'Z')))
			return TERN_EINVAL;
	int n = snprintf(out, outlen, "%lld.Q%sR%zu.", created, queue_id, rcpt_idx);
	if (n < 0 || (size_t)n >= outlen)
		goto toolong;
	size_t pos = (size_t)n;
	if (append_host(out, outlen, &pos, hostname) != TERN_OK)
		goto toolong;
	n = snprintf(out + pos, outlen - pos, ",S=%zu", size);
	if (n < 0 || (size_t)n >= outlen - pos)
		goto toolong;
	return TERN_OK;
toolong:
	out[0] = '\0';
	return TERN_ELIMIT;
}

/*
 * A new Maildir++ folder DIR/.NAME (already made by create_dirs): the
 * "maildirfolder" marker file inside, and the parent maildir's own
 * tmp/new/cur, so the mailbox is whole for readers even when its first
 * message went to a folder.
 */
static int create_folder(const char *folder_dir)
{
	char buf[PATH_MAX];
	const char *slash = strrchr(folder_dir, '/');
	int n, fd, rc;

	if (slash == NULL || (size_t)(slash - folder_dir) >= sizeof(buf))
		return TERN_EINVAL;
	memcpy(buf, folder_dir, (size_t)(slash - folder_dir));
	buf[slash - folder_dir] = '\0';
	if ((rc = create_dirs(buf)) != TERN_OK)
		return rc;
	n = snprintf(buf, sizeof(buf), "%s/maildirfolder", folder_dir);
	if (n < 0 || (size_t)n >= sizeof(buf))
		return TERN_ELIMIT;
	fd = open(buf, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return TERN_EIO;
	if (close(fd) != 0)
		return TERN_EIO;
	return tern_fsync_dir(folder_dir);
}

/* Is a file with this stable name already delivered: in new/, or in cur/
 * under the same name plus a ":2,FLAGS" info suffix? */
static bool already_delivered(const char *mdir, const struct maildir_item *it, char *path,
			      size_t pathlen)
{
	int n = snprintf(path, pathlen, "%s/new/%s", mdir, it->fixed_name);
	if (n > 0 && (size_t)n < pathlen && access(path, F_OK) == 0)
		return true;
	if (!it->check_cur)
		return false;
	char cur[PATH_MAX];
	n = snprintf(cur, sizeof(cur), "%s/cur", mdir);
	if (n < 0 || (size_t)n >= sizeof(cur))
		return false;
	DIR *d = opendir(cur);
	if (!d)
		return false;
	size_t nl = strlen(it->fixed_name);
	bool found = false;
	struct dirent *e;
	while (!found && (e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, it->fixed_name, nl) == 0 &&
		    (e->d_name[nl] == '\0' || e->d_name[nl] == ':')) {
			int k = snprintf(path, pathlen, "%s/%s", cur, e->d_name);
			found = k > 0 && (size_t)k < pathlen;
		}
	}
	closedir(d);
	return found;
}

/* Sum of iov lengths; false on overflow or a bad iovec. */
static bool iov_total(const struct iovec *iov, int iovcnt, size_t *total)
{
	size_t sum = 0;

	if (iovcnt < 0 || (iovcnt > 0 && iov == NULL))
		return false;
	for (int i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len > 0 && iov[i].iov_base == NULL)
			return false;
		if (iov[i].iov_len > SIZE_MAX - sum)
			return false;
		sum += iov[i].iov_len;
	}
	*total = sum;
	return true;
}

/*
 * Step 1 for one item: pick a name, create tmp/NAME, write, fsync, close.
 * On success tmp holds the temp file's path and it->name the name.
 * On failure nothing is left in tmp/.
 */
static int write_tmp(const char *mdir, const char *hostname, struct maildir_item *it, char *tmp,
                     size_t tmplen)
{
	size_t size;
	bool created_dirs = false;
	int fd = -1, rc, n;

	if (!iov_total(it->iov, it->iovcnt, &size))
		return TERN_EINVAL;
	for (int attempt = 0;; attempt++) {
		if (it->fixed_name) {
			if (tern_strlcpy(it->name, it->fixed_name, sizeof(it->name)) >=
			    sizeof(it->name))
				return TERN_ELIMIT;
		} else {
			rc = maildir_unique_name(hostname, size, it->name, sizeof(it->name));
			if (rc != TERN_OK)
				return rc;
		}
		n = snprintf(tmp, tmplen, "%s/tmp/%s", mdir, it->name);
		if (n < 0 || (size_t)n >= tmplen)
			return TERN_ELIMIT;
		fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (fd >= 0)
			break;
		if (errno == ENOENT && !created_dirs) {
			/* First message for this mailbox (or tmp/ went missing). */
			created_dirs = true;
			if ((rc = create_dirs(mdir)) != TERN_OK)
				return rc;
			if (it->folder && it->folder[0] && (rc = create_folder(mdir)) != TERN_OK)
				return rc;
			continue;
		}
		if (errno == EEXIST && it->fixed_name && attempt < NAME_RETRIES) {
			/* A stable name left in tmp/ by a crash: that attempt never
			 * reached new/, so its file is ours to replace. */
			unlink(tmp);
			continue;
		}
		if (errno == EINTR || (errno == EEXIST && attempt < NAME_RETRIES))
			continue;
		return TERN_EIO;
	}
	rc = tern_writev_full(fd, it->iov, it->iovcnt);
	if (rc == TERN_OK && fsync(fd) != 0)
		rc = TERN_EIO;
	/* close() can report a deferred write error (NFS, quotas): check it. */
	if (close(fd) != 0 && rc == TERN_OK)
		rc = TERN_EIO;
	if (rc != TERN_OK) {
		int saved = errno;

		unlink(tmp);
		errno = saved;
	}
	return rc;
}

/* Step 2 for one item: tmp/NAME -> new/NAME (it->path). */
static int move_to_new(const char *mdir, const char *tmp, struct maildir_item *it)
{
	if (rename(tmp, it->path) == 0)
		return TERN_OK;
	if (errno == ENOENT && access(tmp, F_OK) == 0) {
		/* new/ is missing although tmp/ is there: recreate, retry once. */
		if (create_dirs(mdir) == TERN_OK && rename(tmp, it->path) == 0)
			return TERN_OK;
	}
	return TERN_EIO;
}

struct pending {
	const char *path; /* the item's path, DIR/new/NAME */
	size_t dirlen;    /* length of DIR/new */
	size_t idx;       /* index into items */
};

static int pending_cmp(const void *a, const void *b)
{
	const struct pending *x = a, *y = b;
	size_t n = x->dirlen < y->dirlen ? x->dirlen : y->dirlen;
	int c = memcmp(x->path, y->path, n);

	if (c != 0)
		return c;
	return (x->dirlen > y->dirlen) - (x->dirlen < y->dirlen);
}

/* fsyncs the directory named by the first dirlen bytes of path. */
static int fsync_dir_prefix(const char *path, size_t dirlen)
{
	char dir[PATH_MAX];

	if (dirlen >= sizeof(dir))
		return TERN_ELIMIT;
	memcpy(dir, path, dirlen);
	dir[dirlen] = '\0';
	return tern_fsync_dir(dir);
}

size_t maildir_deliver_batch(const char *mail_root, const char *hostname,
                             struct maildir_item *items, size_t n)
{
	char mdir[PATH_MAX], tmp[PATH_MAX];
	struct pending *pend = NULL;
	size_t npend = 0, delivered = 0;
	int rc;

	if (items == NULL || n == 0)
		return 0;
	/* If this fails we fall back to one directory sync per item. */
	pend = calloc(n, sizeof(*pend));
	/* The users and recipient_delimiter, for plus addressing. */
	struct tern_runtime *rt = runtime_acquire();

	/* Steps 1 and 2 per item: durable file in tmp/, then rename into new/. */
	for (size_t i = 0; i < n; i++) {
		struct maildir_item *it = &items[i];
		int len;

		it->name[0] = '\0';
		it->path[0] = '\0';
		rc = resolve_maildir(rt, mail_root, it->domain, it->local, it->folder, mdir,
				     sizeof(mdir));
		if (rc == TERN_OK && it->fixed_name &&
		    already_delivered(mdir, it, it->path, sizeof(it->path))) {
			tern_strlcpy(it->name, it->fixed_name, sizeof(it->name));
			it->result = TERN_OK;
			delivered++;
			continue;
		}
		if (rc == TERN_OK)
			rc = write_tmp(mdir, hostname, it, tmp, sizeof(tmp));
		if (rc == TERN_OK) {
			len = snprintf(it->path, sizeof(it->path), "%s/new/%s", mdir, it->name);
			if (len < 0 || (size_t)len >= sizeof(it->path))
				rc = TERN_ELIMIT;
			else
				rc = move_to_new(mdir, tmp, it);
			if (rc != TERN_OK) {
				unlink(tmp);
				it->path[0] = '\0';
			}
		}
		it->result = rc;
		if (rc != TERN_OK) {
			it->name[0] = '\0';
			continue;
		}
		if (pend != NULL) {
			pend[npend].path = it->path;
			pend[npend].dirlen = strlen(it->path) - strlen(it->name) - 1;
			pend[npend].idx = i;
			npend++;
		} else {
			it->result = tern_fsync_parent(it->path);
			delivered += it->result == TERN_OK;
		}
	}
	if (rt)
		runtime_release(rt);
	if (pend == NULL)
		return delivered;

	/* Step 3: one fsync per distinct new/ directory; its result is theirs. */
	qsort(pend, npend, sizeof(*pend), pending_cmp);
	for (size_t i = 0; i < npend;) {
		size_t j = i + 1;

		rc = fsync_dir_prefix(pend[i].path, pend[i].dirlen);
		while (j < npend && pending_cmp(&pend[i], &pend[j]) == 0)
			j++;
		for (; i < j; i++) {
			/* On failure the file stays in new/: the caller retries, so a
			 * duplicate is possible but nothing is lost (DESIGN §5.1). */
			items[pend[i].idx].result = rc;
			delivered += rc == TERN_OK;
		}
	}
	free(pend);
	return delivered;
}
