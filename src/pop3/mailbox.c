/*
 * mailbox.c — a user's Maildir as a POP3 session sees it: the session
 * lock, the listing with sizes and UIDLs, reading a message, and the
 * UPDATE state's deletions (RFC 1939 §6).
 *
 * Owns: the on-disk protocol shared with Dovecot (pop3.h explains it):
 * Dovecot's pop3_lock_session dotlock, new/ -> cur/ moves, Maildir flags.
 * Must never: run on an event loop (every function but the name helpers
 * blocks on the disk), delete a message before QUIT, answer QUIT's "+OK"
 * before the unlinks are on stable storage (the directories are fsync'd),
 * or follow a symbolic link out of the Maildir (files are opened with
 * O_NOFOLLOW and only regular files are listed).
 *
 * SECURITY: names come from the directory listing, never from the client;
 * the client only chooses message numbers, checked against the listing.
 */
#include "pop3/pop3.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "deliver/deliver.h"

/* Dovecot's pop3_lock_session file and its stale timeout (pop3-client.c:
 * POP3_LOCK_FNAME, POP3_SESSION_DOTLOCK_STALE_TIMEOUT_SECS). */
#define LOCK_NAME "dovecot-pop3-session.lock"
#define LOCK_STALE_SECS 300
/* A directory listing stops here, whatever max_messages says: memory per
 * session stays bounded even for a Maildir nobody ever emptied. */
#define SCAN_MAX 1000000
#define READ_CHUNK 65536

/* ------------------------------------------------------------ names */

size_t pop3_maildir_base_len(const char *name, size_t len)
{
	const char *colon = memchr(name, ':', len);
	return colon ? (size_t)(colon - name) : len;
}

bool pop3_maildir_name_vsize(const char *name, size_t len, uint64_t *out)
{
	size_t base = pop3_maildir_base_len(name, len);
	/* The Maildir++ fields come after the first ',' of the base name. */
	for (size_t i = 0; i + 3 <= base; i++) {
		if (name[i] != ',' || name[i + 1] != 'W' || name[i + 2] != '=')
			continue;
		uint64_t v = 0;
		size_t j = i + 3, digits = 0;
		for (; j < base && name[j] >= '0' && name[j] <= '9' && digits < 20; j++, digits++) {
			unsigned d = (unsigned)(name[j] - '0');
			if (v > (UINT64_MAX - d) / 10)
				return false;
			v = v * 10 + d;
		}
		if (digits == 0 || (j < base && name[j] != ','))
			return false;
		*out = v;
		return true;
	}
	return false;
}

int pop3_maildir_add_flag(const char *name, char flag, char *out, size_t outlen)
{
	size_t len = strlen(name);
	size_t base = pop3_maildir_base_len(name, len);
	const char *flags = "";
	size_t nflags = 0;
	if (flag < 'A' || flag > 'Z')
		return TERN_EINVAL;
	if (base < len) {
		if (len - base < 3 || strncmp(name + base, ":2,", 3) != 0)
			return TERN_EINVAL;
		flags = name + base + 3;
		nflags = len - base - 3;
	}
	bool have = memchr(flags, flag, nflags) != NULL;
	/* base + ":2," + flags + the new one + NUL */
	if (base + 3 + nflags + 2 > outlen)
		return TERN_ELIMIT;
	memcpy(out, name, base);
	memcpy(out + base, ":2,", 3);
	size_t o = base + 3;
	bool placed = have;
	for (size_t i = 0; i < nflags; i++) {
		if (!placed && flags[i] > flag) {
			out[o++] = flag;
			placed = true;
		}
		out[o++] = flags[i];
	}
	if (!placed)
		out[o++] = flag;
	out[o] = '\0';
	return have ? TERN_EEXIST : TERN_OK;
}

/* ------------------------------------------------------------ lock */

/* The Maildirs this process holds the lock of: the lock file names our
 * PID, so only this list tells our live sessions from a file an earlier
 * process with the same PID left behind. */
struct held {
	struct held *next;
	char *dir;
};
static pthread_mutex_t held_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct held *held_list;

static bool held_find(const char *dir)
{
	for (struct held *h = held_list; h; h = h->next)
		if (strcmp(h->dir, dir) == 0)
			return true;
	return false;
}

/* Dovecot writes "PID:HOSTNAME" with its my_hostname (gethostname()). */
static void lock_owner(char *out, size_t outlen)
{
	char host[256];
	if (gethostname(host, sizeof(host)) != 0)
		host[0] = '\0';
	host[sizeof(host) - 1] = '\0';
	snprintf(out, outlen, "%ld:%s", (long)getpid(), host);
}

/*
 * Whether an existing lock file may be taken over, by the rules Dovecot's
 * file_dotlock applies: untouched for LOCK_STALE_SECS, or naming a process
 * of this host that no longer exists. Our own PID counts as dead here,
 * since the caller checked that none of our sessions holds it.
 */
static bool lock_is_stale(const char *path)
{
	struct stat st;
	char buf[512], host[256];
	if (lstat(path, &st) != 0)
		return errno == ENOENT;
	if (time(NULL) > st.st_mtime + LOCK_STALE_SECS)
		return true;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false; /* being written, or not a PID lock: wait for the timeout */
	buf[n] = '\0';
	char *nl = strchr(buf, '\n');
	if (nl)
		*nl = '\0';
	char *colon = strchr(buf, ':');
	if (!colon)
		return false;
	*colon = '\0';
	if (gethostname(host, sizeof(host)) != 0)
		return false;
	host[sizeof(host) - 1] = '\0';
	if (strcmp(colon + 1, host) != 0)
		return false;
	char *endp;
	errno = 0;
	long pid = strtol(buf, &endp, 10);
	if (errno || endp == buf || *endp || pid <= 0)
		return false;
	if (pid == (long)getpid())
		return true;
	return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

static int lock_path(const char *dir, char *out, size_t outlen)
{
	int n = snprintf(out, outlen, "%s/%s", dir, LOCK_NAME);
	return n < 0 || (size_t)n >= outlen ? TERN_ELIMIT : TERN_OK;
}

/* Takes the lock: POP3_OPEN_OK, POP3_OPEN_IN_USE, or POP3_OPEN_FAILED with errno. */
static enum pop3_open_status lock_take(const char *dir)
{
	char path[PATH_MAX], owner[300];
	enum pop3_open_status st = POP3_OPEN_IN_USE;
	if (lock_path(dir, path, sizeof(path)) != TERN_OK) {
		errno = ENAMETOOLONG;
		return POP3_OPEN_FAILED;
	}
	lock_owner(owner, sizeof(owner));
	struct held *h = calloc(1, sizeof(*h));
	char *d = h ? strdup(dir) : NULL;
	if (!d) {
		free(h);
		errno = ENOMEM;
		return POP3_OPEN_FAILED;
	}
	pthread_mutex_lock(&held_mutex);
	if (held_find(dir))
		goto out;
	/* Two rounds: a stale file is removed once, then the exclusive create
	 * decides (another process may win the race: then it is in use). */
	for (int attempt = 0; attempt < 2; attempt++) {
		int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (fd >= 0) {
			int rc = tern_write_full(fd, owner, strlen(owner));
			if (close(fd) != 0 || rc != TERN_OK) {
				int saved = errno;
				unlink(path);
				errno = saved;
				st = POP3_OPEN_FAILED;
				goto out;
			}
			h->dir = d;
			h->next = held_list;
			held_list = h;
			h = NULL;
			d = NULL;
			st = POP3_OPEN_OK;
			goto out;
		}
		if (errno != EEXIST) {
			st = POP3_OPEN_FAILED;
			goto out;
		}
		if (attempt > 0 || !lock_is_stale(path))
			break;
		if (unlink(path) != 0 && errno != ENOENT) {
			st = POP3_OPEN_FAILED;
			goto out;
		}
	}
out:
	pthread_mutex_unlock(&held_mutex);
	int saved = errno;
	free(d);
	free(h);
	errno = saved;
	return st;
}

static void lock_release(const char *dir)
{
	char path[PATH_MAX], owner[300], buf[300];
	pthread_mutex_lock(&held_mutex);
	for (struct held **pp = &held_list; *pp; pp = &(*pp)->next) {
		if (strcmp((*pp)->dir, dir) != 0)
			continue;
		struct held *h = *pp;
		*pp = h->next;
		free(h->dir);
		free(h);
		break;
	}
	/* Remove the file only while it is still ours: after 5 minutes without
	 * a touch another process may have taken it over as stale. */
	if (lock_path(dir, path, sizeof(path)) == TERN_OK) {
		lock_owner(owner, sizeof(owner));
		int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		if (fd >= 0) {
			ssize_t n = read(fd, buf, sizeof(buf) - 1);
			close(fd);
			if (n > 0 && (size_t)n == strlen(owner) &&
			    memcmp(buf, owner, (size_t)n) == 0)
				unlink(path);
		}
	}
	pthread_mutex_unlock(&held_mutex);
}

void pop3_mailbox_touch(struct pop3_mailbox *mb)
{
	char path[PATH_MAX];
	if (mb && mb->locked && lock_path(mb->dir, path, sizeof(path)) == TERN_OK)
		utimensat(AT_FDCWD, path, NULL, AT_SYMLINK_NOFOLLOW);
}

/* ------------------------------------------------------------ listing */

static void msgs_free(struct pop3_msg *m, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(m[i].file);
	free(m);
}

void pop3_mailbox_close(struct pop3_mailbox *mb)
{
	if (!mb)
		return;
	if (mb->locked)
		lock_release(mb->dir);
	msgs_free(mb->msgs, mb->n);
	free(mb->dir);
	free(mb);
}

/* A name a Maildir reader lists: not empty, not hidden (".", "..", the
 * Maildir++ folders, lock and temp files), and printable ASCII or UTF-8
 * without spaces, since its base name goes on the wire as the UIDL (a CR
 * or LF there would split the response). */
static bool listable(const char *name)
{
	if (name[0] == '\0' || name[0] == '.')
		return false;
	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		if (*p <= 0x20 || *p == 0x7f)
			return false;
	return true;
}

static bool is_regular(int dfd, const struct dirent *e)
{
	struct stat st;
	if (e->d_type == DT_REG)
		return true;
	if (e->d_type != DT_UNKNOWN)
		return false;
	return fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
}

/* new/NAME -> cur/NAME:2, for every message, as Dovecot does on opening
 * a mailbox. A failed move leaves the file in new/, listed from there. */
static int move_new(const char *dir, struct pop3_msg **v, size_t *n, size_t *cap)
{
	char from[PATH_MAX], to[PATH_MAX];
	int k = snprintf(from, sizeof(from), "%s/new", dir);
	if (k < 0 || (size_t)k >= sizeof(from))
		return TERN_ELIMIT;
	DIR *d = opendir(from);
	if (!d)
		return errno == ENOENT ? TERN_OK : TERN_EIO;
	struct dirent *e;
	int rc = TERN_OK;
	while ((e = readdir(d)) != NULL) {
		if (!listable(e->d_name) || !is_regular(dirfd(d), e))
			continue;
		bool has_info = strchr(e->d_name, ':') != NULL;
		int a = snprintf(from, sizeof(from), "%s/new/%s", dir, e->d_name);
		int b =
		    snprintf(to, sizeof(to), "%s/cur/%s%s", dir, e->d_name, has_info ? "" : ":2,");
		if (a < 0 || b < 0 || (size_t)a >= sizeof(from) || (size_t)b >= sizeof(to))
			continue;
		if (rename(from, to) == 0)
			continue; /* listed with cur/ */
		if (errno == ENOENT)
			continue; /* another reader moved it: it is in cur/ now */
		if (*n == *cap) {
			size_t nc = *cap ? *cap * 2 : 64;
			struct pop3_msg *nv = realloc(*v, nc * sizeof(*nv));
			if (!nv) {
				rc = TERN_ENOMEM;
				break;
			}
			*v = nv;
			*cap = nc;
		}
		struct pop3_msg *m = &(*v)[*n];
		memset(m, 0, sizeof(*m));
		if (!(m->file = strdup(e->d_name))) {
			rc = TERN_ENOMEM;
			break;
		}
		m->in_new = true;
		(*n)++;
	}
	closedir(d);
	return rc;
}

static int list_cur(const char *dir, struct pop3_msg **v, size_t *n, size_t *cap)
{
	char path[PATH_MAX];
	int k = snprintf(path, sizeof(path), "%s/cur", dir);
	if (k < 0 || (size_t)k >= sizeof(path))
		return TERN_ELIMIT;
	DIR *d = opendir(path);
	if (!d)
		return errno == ENOENT ? TERN_OK : TERN_EIO;
	struct dirent *e;
	int rc = TERN_OK;
	while ((e = readdir(d)) != NULL && *n < SCAN_MAX) {
		if (!listable(e->d_name) || !is_regular(dirfd(d), e))
			continue;
		if (*n == *cap) {
			size_t nc = *cap ? *cap * 2 : 64;
			struct pop3_msg *nv = realloc(*v, nc * sizeof(*nv));
			if (!nv) {
				rc = TERN_ENOMEM;
				break;
			}
			*v = nv;
			*cap = nc;
		}
		struct pop3_msg *m = &(*v)[*n];
		memset(m, 0, sizeof(*m));
		if (!(m->file = strdup(e->d_name))) {
			rc = TERN_ENOMEM;
			break;
		}
		(*n)++;
	}
	closedir(d);
	return rc;
}

/* Delivery order: Maildir names start with the delivery time in seconds;
 * the rest of the name orders messages of the same second. */
static int msg_cmp(const void *a, const void *b)
{
	const struct pop3_msg *x = a, *y = b;
	char *ex, *ey;
	unsigned long long tx = strtoull(x->file, &ex, 10);
	unsigned long long ty = strtoull(y->file, &ey, 10);
	if (ex != x->file && ey != y->file && tx != ty)
		return tx < ty ? -1 : 1;
	return strcmp(x->file, y->file);
}

/* The size RETR will send: the file's size plus one per bare LF. */
static int measure(int fd, uint64_t *out)
{
	char *buf = malloc(READ_CHUNK);
	uint64_t total = 0;
	bool prev_cr = false;
	if (!buf)
		return TERN_ENOMEM;
	for (;;) {
		ssize_t r = read(fd, buf, READ_CHUNK);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			free(buf);
			return TERN_EIO;
		}
		if (r == 0)
			break;
		total += (uint64_t)r + pop3_count_bare_lf(buf, (size_t)r, &prev_cr);
	}
	free(buf);
	*out = total;
	return TERN_OK;
}

static int msg_path(const struct pop3_mailbox *mb, const struct pop3_msg *m, char *out,
                    size_t outlen)
{
	int n = snprintf(out, outlen, "%s/%s/%s", mb->dir, m->in_new ? "new" : "cur", m->file);
	return n < 0 || (size_t)n >= outlen ? TERN_ELIMIT : TERN_OK;
}

/* Sizes every message; drops the ones that vanished meanwhile. */
static int measure_all(struct pop3_mailbox *mb)
{
	char path[PATH_MAX];
	size_t k = 0;
	mb->total = 0;
	for (size_t i = 0; i < mb->n; i++) {
		struct pop3_msg *m = &mb->msgs[i];
		uint64_t size = 0;
		bool ok = false;
		m->base_len = pop3_maildir_base_len(m->file, strlen(m->file));
		if (pop3_maildir_name_vsize(m->file, strlen(m->file), &size)) {
			ok = true;
		} else if (msg_path(mb, m, path, sizeof(path)) == TERN_OK) {
			int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
			if (fd >= 0) {
				int rc = measure(fd, &size);
				close(fd);
				if (rc == TERN_ENOMEM)
					return rc;
				ok = rc == TERN_OK;
			}
		}
		if (!ok || m->base_len == 0) {
			free(m->file);
			continue;
		}
		m->size = size;
		mb->total += size;
		mb->msgs[k++] = *m;
	}
	mb->n = k;
	return TERN_OK;
}

enum pop3_open_status pop3_mailbox_open(const char *dir, size_t max_messages,
                                        struct pop3_mailbox **out, int *errno_out)
{
	struct pop3_mailbox *mb = calloc(1, sizeof(*mb));
	size_t cap = 0;
	enum pop3_open_status st = POP3_OPEN_FAILED;
	int rc;
	*out = NULL;
	*errno_out = 0;
	if (!mb || !(mb->dir = strdup(dir))) {
		*errno_out = ENOMEM;
		goto fail;
	}
	/* A user with no mail yet has no Maildir: make the empty one, as
	 * delivery would (and Dovecot does), so the lock has a home. */
	if ((rc = maildir_create(dir)) != TERN_OK) {
		*errno_out = rc == TERN_ELIMIT ? ENAMETOOLONG : errno;
		goto fail;
	}
	st = lock_take(dir);
	if (st != POP3_OPEN_OK) {
		*errno_out = errno;
		goto fail;
	}
	mb->locked = true;
	st = POP3_OPEN_FAILED;
	if ((rc = move_new(dir, &mb->msgs, &mb->n, &cap)) != TERN_OK ||
	    (rc = list_cur(dir, &mb->msgs, &mb->n, &cap)) != TERN_OK) {
		*errno_out = rc == TERN_ENOMEM ? ENOMEM : errno;
		goto fail;
	}
	if (mb->n > 1)
		qsort(mb->msgs, mb->n, sizeof(*mb->msgs), msg_cmp);
	if (max_messages && mb->n > max_messages) {
		/* The oldest are served; the rest wait for a session that has
		 * deleted some. */
		for (size_t i = max_messages; i < mb->n; i++)
			free(mb->msgs[i].file);
		mb->skipped = mb->n - max_messages;
		mb->n = max_messages;
	}
	if ((rc = measure_all(mb)) != TERN_OK) {
		*errno_out = ENOMEM;
		goto fail;
	}
	*out = mb;
	return POP3_OPEN_OK;
fail:
	pop3_mailbox_close(mb);
	return st;
}

/* cur/ entry whose base name is m's (the file was renamed by a flag
 * change since we listed it): updates m->file. TERN_ENOTFOUND if gone. */
static int refind(struct pop3_mailbox *mb, struct pop3_msg *m)
{
	char path[PATH_MAX];
	int k = snprintf(path, sizeof(path), "%s/cur", mb->dir);
	if (k < 0 || (size_t)k >= sizeof(path))
		return TERN_ELIMIT;
	DIR *d = opendir(path);
	if (!d)
		return TERN_ENOTFOUND;
	struct dirent *e;
	int rc = TERN_ENOTFOUND;
	while ((e = readdir(d)) != NULL) {
		size_t n = strlen(e->d_name);
		if (pop3_maildir_base_len(e->d_name, n) != m->base_len ||
		    memcmp(e->d_name, m->file, m->base_len) != 0)
			continue;
		char *f = strdup(e->d_name);
		if (!f) {
			rc = TERN_ENOMEM;
			break;
		}
		free(m->file);
		m->file = f;
		m->in_new = false;
		rc = TERN_OK;
		break;
	}
	closedir(d);
	return rc;
}

int pop3_mailbox_open_msg(struct pop3_mailbox *mb, size_t i)
{
	char path[PATH_MAX];
	struct pop3_msg *m = &mb->msgs[i];
	for (int attempt = 0; attempt < 2; attempt++) {
		if (msg_path(mb, m, path, sizeof(path)) != TERN_OK) {
			errno = ENAMETOOLONG;
			return -1;
		}
		int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		if (fd >= 0 || errno != ENOENT || attempt > 0)
			return fd;
		if (refind(mb, m) != TERN_OK) {
			errno = ENOENT;
			return -1;
		}
	}
	errno = ENOENT;
	return -1;
}

int pop3_mailbox_update(struct pop3_mailbox *mb, size_t *removed, int *errno_out)
{
	char path[PATH_MAX], from[PATH_MAX], to[PATH_MAX], name[NAME_MAX + 1];
	int rc = TERN_OK;
	*removed = 0;
	*errno_out = 0;
	for (size_t i = 0; i < mb->n; i++) {
		struct pop3_msg *m = &mb->msgs[i];
		if (m->deleted) {
			for (int attempt = 0; attempt < 2; attempt++) {
				if (msg_path(mb, m, path, sizeof(path)) != TERN_OK)
					break;
				if (unlink(path) == 0) {
					(*removed)++;
					break;
				}
				if (errno != ENOENT) {
					*errno_out = errno;
					rc = TERN_EIO;
					break;
				}
				if (attempt > 0 || refind(mb, m) != TERN_OK) {
					(*removed)++; /* already expunged by another client */
					break;
				}
			}
		} else if (m->seen && !m->in_new) {
			/* Best effort, as Dovecot's own flag updates: a failure
			 * costs the S flag, never a message. */
			if (pop3_maildir_add_flag(m->file, 'S', name, sizeof(name)) != TERN_OK)
				continue;
			int a = snprintf(from, sizeof(from), "%s/cur/%s", mb->dir, m->file);
			int b = snprintf(to, sizeof(to), "%s/cur/%s", mb->dir, name);
			if (a > 0 && b > 0 && (size_t)a < sizeof(from) && (size_t)b < sizeof(to) &&
			    rename(from, to) != 0 && errno == ENOENT && refind(mb, m) == TERN_OK &&
			    pop3_maildir_add_flag(m->file, 'S', name, sizeof(name)) == TERN_OK) {
				snprintf(from, sizeof(from), "%s/cur/%s", mb->dir, m->file);
				snprintf(to, sizeof(to), "%s/cur/%s", mb->dir, name);
				(void)rename(from, to);
			}
		}
	}
	/* The unlinks (and the moves out of new/ this session made) are
	 * durable once their directories are synced. */
	int k = snprintf(path, sizeof(path), "%s/cur", mb->dir);
	if (k > 0 && (size_t)k < sizeof(path) && tern_fsync_dir(path) != TERN_OK && rc == TERN_OK) {
		*errno_out = errno;
		rc = TERN_EIO;
	}
	k = snprintf(path, sizeof(path), "%s/new", mb->dir);
	if (k > 0 && (size_t)k < sizeof(path) && tern_fsync_dir(path) != TERN_OK && rc == TERN_OK) {
		*errno_out = errno;
		rc = TERN_EIO;
	}
	pop3_mailbox_close(mb);
	return rc;
}
