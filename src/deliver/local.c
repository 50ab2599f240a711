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
 * The batch protocol (DESIGN §6): write every file of the batch into tmp/
 * (starting its writeback at once), then fdatasync each (the device got
 * them all together, so the syncs mostly wait for writes already under
 * way), then rename every file into new/, then fsync each distinct new/
 * directory once. A crash between the steps leaves at worst a file in
 * tmp/ (which Maildir readers clean up, and which a retry under the same
 * stable name replaces) or a file in new/ whose caller will retry it (the
 * stable name finds it: no duplicate, never a loss). Files are staged in
 * chunks of SYNC_CHUNK so that open descriptors stay bounded.
 *
 * Fault points (debug builds, as the spool's: TERN_TEST_FAULT=NAME[:N], the
 * Nth chunk): maildir_write (files written to tmp/, not synced),
 * maildir_sync (synced, not renamed), maildir_rename (in new/, the
 * directory not yet synced), maildir_done (delivered and synced, the
 * caller not yet told: the spool has no delivered mark for them) stop the
 * delivering thread for good so that a test can kill -9 in exactly that
 * phase.
 */
#include "deliver/deliver.h"
#include "deliver/remote_stream.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
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
#include "core/log.h"
#include "core/runtime.h"

/* Longest single path component we accept (NAME_MAX on Linux). */
#define COMPONENT_MAX 255
/* Attempts at a fresh name when tmp/NAME already exists (practically never). */
#define NAME_RETRIES 8
/* Files written before their syncs (one descriptor each). */
#define SYNC_CHUNK 64

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
                           const char *local, const char *folder, char *out, size_t outlen,
                           char *owner, size_t ownerlen)
{
	char addr[600], user[300];
	int rc = maildir_folder_path(mail_root, domain, local, folder, out, outlen);
	tern_strlcpy(owner, local, ownerlen);
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
	tern_strlcpy(owner, user, ownerlen);
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

/* SPILL: the file's size, a spilled message's rest included. */
static bool item_total(const struct maildir_item *it, size_t *total)
{
	if (!iov_total(it->iov, it->iovcnt, total))
		return false;
	if (it->src_path) {
		if (it->src_len > SIZE_MAX - *total)
			return false;
		*total += (size_t)it->src_len;
	}
	return true;
}

/*
 * Step 1 for one item: pick a name, create tmp/NAME, write, then either
 * fsync and close (fd_out NULL) or start the writeback and hand the open
 * descriptor to the caller (*fd_out), who syncs and closes it.
 * On success tmp holds the temp file's path and it->name the name.
 * On failure nothing is left in tmp/.
 */
static int write_tmp(const char *mdir, const char *hostname, struct maildir_item *it, char *tmp,
                     size_t tmplen, int *fd_out)
{
	size_t size;
	bool created_dirs = false;
	int fd = -1, rc, n;

	if (!item_total(it, &size))
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
	if (rc == TERN_OK && it->src_path) /* SPILL: file to file */
		rc = stream_copy_file(fd, it->src_path, it->src_off, it->src_len, it->src_check,
		                      it->src_crc);
	if (rc == TERN_OK && fd_out) {
		/* Only a hint to start writing now: fdatasync decides. */
		(void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
		*fd_out = fd;
		return TERN_OK;
	}
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

/* ------------------------------------------------------------------ quota */

/* A signed decimal at *p (up to end), advancing *p. */
static bool parse_ll(const char **p, const char *end, long long *out)
{
	bool neg = false;
	unsigned long long v = 0;
	const char *q = *p;

	if (q < end && (*q == '-' || *q == '+'))
		neg = *q++ == '-';
	if (q == end || *q < '0' || *q > '9')
		return false;
	for (; q < end && *q >= '0' && *q <= '9'; q++) {
		if (v > ((unsigned long long)LLONG_MAX - 9) / 10)
			return false;
		v = v * 10 + (unsigned long long)(*q - '0');
	}
	*out = neg ? -(long long)v : (long long)v;
	*p = q;
	return true;
}

int maildirsize_parse(const char *buf, size_t len, struct maildirsize *out)
{
	const char *p = buf, *end = buf + len, *nl;

	memset(out, 0, sizeof(*out));
	if (len == 0 || buf[len - 1] != '\n')
		return TERN_ESYNTAX;
	/* The definition line: "NNNS", "NNNC", comma-separated, maybe empty. */
	nl = memchr(p, '\n', len);
	while (p < nl) {
		long long v;

		if (!parse_ll(&p, nl, &v) || v < 0 || p == nl)
			return TERN_ESYNTAX;
		if (*p == 'S') {
			out->has_bytes_limit = true;
			out->bytes_limit = (unsigned long long)v;
		} else if (*p != 'C') {
			return TERN_ESYNTAX;
		}
		p++;
		if (p < nl && *p++ != ',')
			return TERN_ESYNTAX;
	}
	for (p = nl + 1; p < end; p = nl + 1) {
		long long b, c;

		nl = memchr(p, '\n', (size_t)(end - p));
		while (p < nl && *p == ' ')
			p++;
		if (p == nl)
			continue; /* blank line */
		if (!parse_ll(&p, nl, &b) || p == nl || *p != ' ')
			return TERN_ESYNTAX;
		while (p < nl && *p == ' ')
			p++;
		if (!parse_ll(&p, nl, &c))
			return TERN_ESYNTAX;
		while (p < nl && *p == ' ')
			p++;
		if (p != nl)
			return TERN_ESYNTAX;
		if ((b > 0 && out->bytes > LLONG_MAX - b) ||
		    (b < 0 && out->bytes < LLONG_MIN - b) ||
		    (c > 0 && out->count > LLONG_MAX - c) || (c < 0 && out->count < LLONG_MIN - c))
			return TERN_ESYNTAX;
		out->bytes += b;
		out->count += c;
	}
	return TERN_OK;
}

/* The size a file name says (",S=NNN" before any ':' info), else stat's. */
static bool file_size(const char *dir, const char *name, unsigned long long *size)
{
	const char *s = strstr(name, ",S=");
	const char *colon = strchr(name, ':');
	char path[PATH_MAX];
	struct stat st;

	if (s != NULL && (colon == NULL || s < colon) && s[3] >= '0' && s[3] <= '9') {
		unsigned long long v = 0;

		for (s += 3; *s >= '0' && *s <= '9' && v < (1ull << 60); s++)
			v = v * 10 + (unsigned long long)(*s - '0');
		*size = v;
		return true;
	}
	int n = snprintf(path, sizeof(path), "%s/%s", dir, name);
	if (n < 0 || (size_t)n >= sizeof(path) || stat(path, &st) != 0 || !S_ISREG(st.st_mode))
		return false; /* gone meanwhile (expunged, moved to cur/): not counted */
	*size = (unsigned long long)st.st_size;
	return true;
}

/* Adds the messages of DIR/new and DIR/cur. */
static void count_mailbox(const char *dir, unsigned long long *bytes, unsigned long long *count)
{
	static const char *const sub[] = {"new", "cur"};
	char path[PATH_MAX];

	for (size_t i = 0; i < 2; i++) {
		int n = snprintf(path, sizeof(path), "%s/%s", dir, sub[i]);
		if (n < 0 || (size_t)n >= sizeof(path))
			continue;
		DIR *d = opendir(path);
		if (!d)
			continue;
		struct dirent *e;
		while ((e = readdir(d)) != NULL) {
			unsigned long long sz;

			if (e->d_name[0] == '.')
				continue;
			if (file_size(path, e->d_name, &sz)) {
				*bytes += sz;
				(*count)++;
			}
		}
		closedir(d);
	}
}

/* Scans the Maildir and its folders, then replaces root/maildirsize. */
static int quota_recalc(const char *root, unsigned long long limit, unsigned long long *bytes,
                        unsigned long long *count)
{
	char path[PATH_MAX], text[96];
	*bytes = *count = 0;
	count_mailbox(root, bytes, count);
	DIR *d = opendir(root);
	if (d) {
		struct dirent *e;
		while ((e = readdir(d)) != NULL) {
			if (e->d_name[0] != '.' || strcmp(e->d_name, ".") == 0 ||
			    strcmp(e->d_name, "..") == 0)
				continue;
			int n = snprintf(path, sizeof(path), "%s/%s", root, e->d_name);
			if (n > 0 && (size_t)n < sizeof(path))
				count_mailbox(path, bytes, count);
		}
		closedir(d);
	}
	int n = snprintf(path, sizeof(path), "%s/maildirsize", root);
	int t = snprintf(text, sizeof(text), "%lluS\n%llu %llu\n", limit, *bytes, *count);
	if (n < 0 || (size_t)n >= sizeof(path) || t < 0 || (size_t)t >= sizeof(text))
		return TERN_ELIMIT;
	return tern_write_file_atomic(path, text, (size_t)t, NULL);
}

/* Held while a usage is read or recalculated. Two delivery threads that
 * both found no maildirsize (a new mailbox's first messages, in two
 * batches) each recalculated and replaced the file, and the second
 * replacement could land after the first thread had appended its delta:
 * that message went uncounted (test_dovecot_quota_agrees_with_tern saw
 * 1 of 2 messages). Under the lock the second thread reads the file the
 * first one wrote. Rare and short: a read of a small file, or a scan. */
static pthread_mutex_t quota_usage_lock = PTHREAD_MUTEX_INITIALIZER;

static int quota_usage_locked(const char *root, unsigned long long limit, unsigned long long *bytes,
                              unsigned long long *count);

int maildir_quota_usage(const char *root, unsigned long long limit, unsigned long long *bytes,
                        unsigned long long *count)
{
	pthread_mutex_lock(&quota_usage_lock);
	int rc = quota_usage_locked(root, limit, bytes, count);
	pthread_mutex_unlock(&quota_usage_lock);
	return rc;
}

static int quota_usage_locked(const char *root, unsigned long long limit, unsigned long long *bytes,
                              unsigned long long *count)
{
	char path[PATH_MAX], buf[MAILDIRSIZE_RECALC_SIZE + 1];
	struct maildirsize ms;
	size_t len = 0;
	int n = snprintf(path, sizeof(path), "%s/maildirsize", root);

	if (n < 0 || (size_t)n >= sizeof(path))
		return TERN_ELIMIT;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd >= 0) {
		while (len < sizeof(buf)) {
			ssize_t r = read(fd, buf + len, sizeof(buf) - len);
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0)
				break;
			len += (size_t)r;
		}
		close(fd);
		if (len <= MAILDIRSIZE_RECALC_SIZE && maildirsize_parse(buf, len, &ms) == TERN_OK &&
		    ms.has_bytes_limit && ms.bytes_limit == limit && ms.bytes >= 0 &&
		    ms.count >= 0) {
			*bytes = (unsigned long long)ms.bytes;
			*count = (unsigned long long)ms.count;
			return TERN_OK;
		}
	}
	return quota_recalc(root, limit, bytes, count);
}

int maildir_quota_append(const char *root, unsigned long long bytes, int *fd)
{
	char path[PATH_MAX], line[48];
	int n = snprintf(path, sizeof(path), "%s/maildirsize", root);
	int l = snprintf(line, sizeof(line), "%llu 1\n", bytes);

	if (n < 0 || (size_t)n >= sizeof(path) || l < 0 || (size_t)l >= sizeof(line))
		return TERN_ELIMIT;
	int f = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
	if (f < 0)
		return TERN_EIO; /* no file: the next reader recalculates */
	/* One write of a short line: O_APPEND keeps it whole beside Dovecot's. */
	if (tern_write_full(f, line, (size_t)l) != TERN_OK) {
		close(f);
		return TERN_EIO;
	}
	if (*fd >= 0)
		close(*fd);
	*fd = f;
	return TERN_OK;
}

/* Mailboxes found full: a small table, one slot per address hash (a
 * collision only forgets an entry, so RCPT accepts and delivery decides). */
#define FULL_SLOTS 256
static struct {
	char addr[324];
	long long until;
} full_tab[FULL_SLOTS];
static pthread_mutex_t full_lock = PTHREAD_MUTEX_INITIALIZER;

static long long mono_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec;
}

static size_t full_slot(const char *addr)
{
	uint32_t h = 2166136261u;
	for (const unsigned char *p = (const unsigned char *)addr; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % FULL_SLOTS;
}

static void full_note(const char *addr, bool is_full)
{
	if (strlen(addr) >= sizeof(full_tab[0].addr))
		return;
	size_t i = full_slot(addr);
	pthread_mutex_lock(&full_lock);
	if (is_full) {
		tern_strlcpy(full_tab[i].addr, addr, sizeof(full_tab[i].addr));
		full_tab[i].until = mono_now() + MAILDIR_FULL_TTL;
	} else if (strcmp(full_tab[i].addr, addr) == 0) {
		full_tab[i].addr[0] = '\0';
	}
	pthread_mutex_unlock(&full_lock);
}

bool maildir_quota_known_full(const char *addr)
{
	bool r = false;
	if (addr == NULL || strlen(addr) >= sizeof(full_tab[0].addr))
		return false;
	size_t i = full_slot(addr);
	pthread_mutex_lock(&full_lock);
	r = strcmp(full_tab[i].addr, addr) == 0 && full_tab[i].until > mono_now();
	pthread_mutex_unlock(&full_lock);
	return r;
}

/* The limit for an item: its own, else the user's rule, else mailbox.quota. */
static unsigned long long item_quota(const struct tern_runtime *rt, const struct maildir_item *it,
                                     const char *owner_addr)
{
	uint64_t q;
	if (it->quota != 0)
		return it->quota > 0 ? (unsigned long long)it->quota : 0;
	if (!rt || !rt->conf)
		return 0;
	if (rt->users && users_quota(rt->users, owner_addr, &q) == TERN_OK)
		return q;
	return rt->conf->mailbox.quota;
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

/* maildirsize files appended to in a batch, each synced once at its end.
 * The usage is read once per batch and then counted here: reading the file
 * again for each message cost an access, an open, reads and a close per
 * message. An item that fails after being counted (quota_undo) stays
 * counted here until the batch ends: the batch errs on the full side. */
struct quota_file {
	char *root;
	int fd;
	bool known; /* used and nmsg hold root's usage for limit */
	unsigned long long limit, used, nmsg;
};

/* The slot of root in qf (adding it); NULL when out of memory or qf is. */
static struct quota_file *quota_slot(struct quota_file *qf, size_t *nqf, size_t cap,
                                     const char *root)
{
	if (qf == NULL)
		return NULL;
	for (size_t i = 0; i < *nqf; i++)
		if (strcmp(qf[i].root, root) == 0)
			return &qf[i];
	if (*nqf == cap || (qf[*nqf].root = tern_strdup(root)) == NULL)
		return NULL;
	qf[*nqf].fd = -1;
	qf[*nqf].known = false;
	return &qf[(*nqf)++];
}

/* ------------------------------------------------------------ fault points */

enum mfault { MF_NONE, MF_WRITE, MF_SYNC, MF_RENAME, MF_DONE };

#ifndef NDEBUG
static const char *const mfault_names[] = {"", "maildir_write", "maildir_sync", "maildir_rename",
                                           "maildir_done"};
static pthread_once_t mfault_once = PTHREAD_ONCE_INIT;
static enum mfault mfault_armed;
static unsigned mfault_after;
static atomic_uint mfault_hits;

static void mfault_arm(void)
{
	const char *v = getenv("TERN_TEST_FAULT");
	if (!v || !*v)
		return;
	const char *colon = strchr(v, ':');
	size_t n = colon ? (size_t)(colon - v) : strlen(v);
	for (size_t i = 1; i < sizeof(mfault_names) / sizeof(mfault_names[0]); i++)
		if (strlen(mfault_names[i]) == n && strncmp(v, mfault_names[i], n) == 0)
			mfault_armed = (enum mfault)i;
	if (mfault_armed == MF_NONE)
		return; /* maybe another module's: it says so itself */
	mfault_after = 1;
	if (colon) {
		char *end;
		unsigned long k = strtoul(colon + 1, &end, 10);
		if (*end == '\0' && k > 0 && k < 1000000)
			mfault_after = (unsigned)k;
	}
	log_warn("event=fault_armed point=%s after=%u", mfault_names[mfault_armed], mfault_after);
}

/* Stops the calling thread for good if the armed point is f (armed, and
 * logged as such, at the first delivery). */
static void mfault_point(enum mfault f)
{
	if (f == MF_NONE)
		return;
	pthread_once(&mfault_once, mfault_arm);
	if (mfault_armed != f || atomic_fetch_add(&mfault_hits, 1) + 1 < mfault_after)
		return;
	log_error("event=fault_point point=%s", mfault_names[f]);
	for (;;)
		pause();
}
#else
static void mfault_point(enum mfault f)
{
	(void)f;
}
#endif

/* ----------------------------------------------------------------- batch */

/* A file written into tmp/, its descriptor open until the chunk's syncs. */
struct staged {
	size_t idx; /* into items */
	int fd;
	char *tmp;  /* DIR/tmp/NAME */
	char *mdir; /* DIR */
	char *root; /* the quota root when a delta was counted, else NULL */
	size_t size;
};

/* An item that failed after its quota delta was counted: take it back
 * (Maildir++ allows negative lines; a failure only undercounts otherwise). */
static void quota_undo(const char *root, size_t size)
{
	char path[PATH_MAX], line[48];
	int n = snprintf(path, sizeof(path), "%s/maildirsize", root);
	int l = snprintf(line, sizeof(line), "-%zu -1\n", size);
	if (n < 0 || (size_t)n >= sizeof(path) || l < 0 || (size_t)l >= sizeof(line))
		return;
	int f = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
	if (f < 0)
		return;
	(void)tern_write_full(f, line, (size_t)l);
	(void)fdatasync(f);
	close(f);
}

static void staged_free(struct staged *g)
{
	free(g->tmp);
	free(g->mdir);
	free(g->root);
	g->tmp = g->mdir = g->root = NULL;
}

/*
 * Steps 2 and 3 for a chunk of staged files: fdatasync each (their writes
 * were started together), then rename each into new/. A file that fails is
 * removed from tmp/ and its item reports the error; the others join pend
 * for the directory syncs (step 4).
 */
static void flush_staged(struct staged *stg, size_t nstg, struct maildir_item *items,
                         struct pending *pend, size_t *npend)
{
	mfault_point(MF_WRITE);
	for (size_t k = 0; k < nstg; k++) {
		struct staged *g = &stg[k];
		int rc = fdatasync(g->fd) == 0 ? TERN_OK : TERN_EIO;
		/* close() can report a deferred write error (NFS, quotas): check it. */
		if (close(g->fd) != 0 && rc == TERN_OK)
			rc = TERN_EIO;
		g->fd = -1;
		items[g->idx].result = rc;
	}
	mfault_point(MF_SYNC);
	for (size_t k = 0; k < nstg; k++) {
		struct staged *g = &stg[k];
		struct maildir_item *it = &items[g->idx];
		if (it->result == TERN_OK)
			it->result = move_to_new(g->mdir, g->tmp, it);
		if (it->result == TERN_OK) {
			pend[*npend].path = it->path;
			pend[*npend].dirlen = strlen(it->path) - strlen(it->name) - 1;
			pend[*npend].idx = g->idx;
			(*npend)++;
		} else {
			unlink(g->tmp);
			it->path[0] = '\0';
			it->name[0] = '\0';
			if (g->root)
				quota_undo(g->root, g->size);
		}
		staged_free(g);
	}
}

size_t maildir_deliver_batch(const char *mail_root, const char *hostname,
                             struct maildir_item *items, size_t n)
{
	char mdir[PATH_MAX], tmp[PATH_MAX], root[PATH_MAX], owner[300], owner_addr[600];
	struct quota_file *qf = NULL;
	size_t nqf = 0;
	struct pending *pend = NULL;
	struct staged *stg = NULL;
	size_t npend = 0, nstg = 0, delivered = 0;
	int rc;

	if (items == NULL || n == 0)
		return 0;
	/* If these fail we fall back to one sync of each kind per item. */
	pend = calloc(n, sizeof(*pend));
	qf = calloc(n, sizeof(*qf));
	stg = pend ? calloc(n < SYNC_CHUNK ? n : SYNC_CHUNK, sizeof(*stg)) : NULL;
	/* The users and recipient_delimiter, for plus addressing. */
	struct tern_runtime *rt = runtime_acquire();

	/* Step 1 per item: the file in tmp/ (staged, or durable and renamed
	 * at once in the fallback). */
	for (size_t i = 0; i < n; i++) {
		struct maildir_item *it = &items[i];
		int len, fd = -1;

		it->name[0] = '\0';
		it->path[0] = '\0';
		it->over_quota = false;
		rc = resolve_maildir(rt, mail_root, it->domain, it->local, it->folder, mdir,
		                     sizeof(mdir), owner, sizeof(owner));
		if (rc == TERN_OK && it->fixed_name &&
		    already_delivered(mdir, it, it->path, sizeof(it->path))) {
			tern_strlcpy(it->name, it->fixed_name, sizeof(it->name));
			it->result = TERN_OK;
			delivered++;
			continue;
		}
		/* Quota: the whole Maildir of the owner (plus address, folders). */
		unsigned long long limit = 0, used = 0, nmsg = 0;
		size_t size = 0;
		if (rc == TERN_OK) {
			int k =
			    snprintf(owner_addr, sizeof(owner_addr), "%s@%s", owner, it->domain);
			tern_ascii_lower(owner_addr);
			limit = k > 0 && (size_t)k < sizeof(owner_addr)
			            ? item_quota(rt, it, owner_addr)
			            : 0;
			if (!item_total(it, &size))
				rc = TERN_EINVAL;
		}
		struct quota_file *slot = NULL;
		if (rc == TERN_OK && limit > 0) {
			rc = maildir_path(mail_root, it->domain, owner, root, sizeof(root));
			slot = rc == TERN_OK ? quota_slot(qf, &nqf, n, root) : NULL;
			if (slot && slot->known && slot->limit == limit) {
				used = slot->used; /* read before, counted since */
				nmsg = slot->nmsg;
			} else {
				/* The first message of a new user: the Maildir holds maildirsize. */
				if (rc == TERN_OK && access(root, F_OK) != 0)
					rc = create_dirs(root);
				if (rc == TERN_OK)
					rc = maildir_quota_usage(root, limit, &used, &nmsg);
				if (rc == TERN_OK && slot)
					*slot = (struct quota_file){.root = slot->root,
					                            .fd = slot->fd,
					                            .known = true,
					                            .limit = limit,
					                            .used = used,
					                            .nmsg = nmsg};
			}
			if (rc == TERN_OK && (used > limit || size > limit - used)) {
				full_note(owner_addr, used >= limit);
				it->over_quota = true;
				rc = TERN_ELIMIT;
			}
		}
		if (rc == TERN_OK)
			rc = write_tmp(mdir, hostname, it, tmp, sizeof(tmp), stg ? &fd : NULL);
		if (rc == TERN_OK) {
			len = snprintf(it->path, sizeof(it->path), "%s/new/%s", mdir, it->name);
			if (len < 0 || (size_t)len >= sizeof(it->path))
				rc = TERN_ELIMIT;
			else if (fd < 0)
				rc = move_to_new(mdir, tmp, it);
			if (rc == TERN_OK && fd >= 0) {
				struct staged *g = &stg[nstg];
				*g = (struct staged){.idx = i, .fd = fd, .size = size};
				g->tmp = tern_strdup(tmp);
				g->mdir = tern_strdup(mdir);
				g->root = limit > 0 ? tern_strdup(root) : NULL;
				if (!g->tmp || !g->mdir || (limit > 0 && !g->root)) {
					staged_free(g);
					rc = TERN_ENOMEM;
				} else {
					nstg++;
				}
			}
			if (rc != TERN_OK) {
				if (fd >= 0)
					close(fd);
				unlink(tmp);
				it->path[0] = '\0';
			}
		}
		it->result = rc;
		if (rc != TERN_OK) {
			it->name[0] = '\0';
			continue;
		}
		if (limit > 0) {
			/* Counted now, so that the next item of the same owner sees
			 * it; as durable as the message (synced before the directory
			 * syncs below); taken back if the item fails after all.
			 * Failing to write it only undercounts until the next
			 * recalculation. */
			int lone = -1;
			(void)maildir_quota_append(root, size, slot ? &slot->fd : &lone);
			if (lone >= 0) {
				(void)fdatasync(lone);
				close(lone);
			}
			if (slot) {
				slot->used += size;
				slot->nmsg++;
			}
			full_note(owner_addr, used + size >= limit);
		}
		if (fd >= 0) {
			if (nstg == SYNC_CHUNK) {
				flush_staged(stg, nstg, items, pend, &npend);
				nstg = 0;
			}
		} else if (pend != NULL) {
			pend[npend].path = it->path;
			pend[npend].dirlen = strlen(it->path) - strlen(it->name) - 1;
			pend[npend].idx = i;
			npend++;
		} else {
			it->result = tern_fsync_parent(it->path);
			delivered += it->result == TERN_OK;
		}
	}
	if (nstg)
		flush_staged(stg, nstg, items, pend, &npend);
	free(stg);
	if (rt)
		runtime_release(rt);
	/* The quota deltas, before the directory syncs that make the messages
	 * delivered: a delivered message always has its delta on disk. */
	for (size_t i = 0; i < nqf; i++) {
		if (qf[i].fd >= 0) {
			(void)fdatasync(qf[i].fd);
			close(qf[i].fd);
		}
		free(qf[i].root);
	}
	free(qf);
	if (pend == NULL)
		return delivered;

	/* Step 4: one fsync per distinct new/ directory; its result is theirs. */
	mfault_point(npend ? MF_RENAME : MF_NONE);
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
	mfault_point(npend ? MF_DONE : MF_NONE);
	free(pend);
	return delivered;
}
