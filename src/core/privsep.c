/*
 * privsep.c — the privileged parent, the child's privilege drop, and the
 * messages between them (see privsep.h for the model and the wire format).
 *
 * SECURITY: the parent runs as root for the daemon's whole life. It parses
 * nothing but its own config (local files root chose, through conf.c) and
 * never reads from the child or the network: the socketpair is write-only on
 * its side, and the only other input is signals. It reads files for the
 * child, so it is careful about whose files: see privsep_read_file. The codec
 * below is pure and fuzzed (tests/fuzz/fuzz_privsep_msg.c).
 */
#include "core/privsep.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"

static const char MAGIC[4] = {'T', 'R', 'N', 'P'};
#define VERSION 1

/* ------------------------------------------------------------ wire codec */

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

int privsep_msg_encode_bundle(const struct file_bundle *b, struct tbuf *out)
{
	size_t n = file_bundle_count(b), body = 4;
	for (size_t i = 0; i < n; i++) {
		const char *path, *data;
		size_t plen, len;
		int en;
		file_bundle_get(b, i, &path, &plen, &en, &data, &len);
		body += PRIVSEP_ENTRY_HDR_LEN + plen + len;
	}
	/* file_bundle_add kept every limit, so a bundle always fits a message. */
	if (TERN_BUG_ON(body > PRIVSEP_MSG_MAX))
		return TERN_ELIMIT;
	size_t start = out->len;
	int rc = tbuf_reserve(out, PRIVSEP_HDR_LEN + body);
	if (rc != TERN_OK)
		return rc;
	uint8_t h[PRIVSEP_HDR_LEN] = {0};
	memcpy(h, MAGIC, 4);
	h[4] = VERSION;
	h[5] = PRIVSEP_MSG_BUNDLE;
	put32(h + 8, (uint32_t)body);
	tbuf_append(out, h, sizeof(h));
	uint8_t c[4];
	put32(c, (uint32_t)n);
	tbuf_append(out, c, 4);
	for (size_t i = 0; i < n; i++) {
		const char *path, *data;
		size_t plen, len;
		int en;
		uint8_t e[PRIVSEP_ENTRY_HDR_LEN];
		file_bundle_get(b, i, &path, &plen, &en, &data, &len);
		put16(e, (uint16_t)plen);
		put16(e + 2, (uint16_t)en);
		put32(e + 4, (uint32_t)len);
		tbuf_append(out, e, sizeof(e));
		tbuf_append(out, path, plen);
		if (len)
			tbuf_append(out, data, len);
	}
	TERN_BUG_ON(out->len != start + PRIVSEP_HDR_LEN + body);
	return TERN_OK;
}

int privsep_msg_header(const void *hdr, unsigned *type, size_t *body_len)
{
	const uint8_t *h = hdr;
	if (memcmp(h, MAGIC, 4) != 0 || h[4] != VERSION || h[5] != PRIVSEP_MSG_BUNDLE ||
	    h[6] != 0 || h[7] != 0)
		return TERN_ESYNTAX;
	uint32_t len = get32(h + 8);
	if (len > PRIVSEP_MSG_MAX)
		return TERN_ELIMIT;
	*type = h[5];
	*body_len = len;
	return TERN_OK;
}

int privsep_msg_decode_bundle(const void *body, size_t len, struct file_bundle **out)
{
	const uint8_t *p = body, *end = p + len;
	int rc = TERN_ESYNTAX;
	*out = NULL;
	if (len > PRIVSEP_MSG_MAX)
		return TERN_ELIMIT;
	if (len < 4)
		return TERN_ESYNTAX;
	uint32_t n = get32(p);
	p += 4;
	if (n > FILES_MAX_COUNT)
		return TERN_ELIMIT;
	struct file_bundle *b = file_bundle_new();
	if (!b)
		return TERN_ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		if ((size_t)(end - p) < PRIVSEP_ENTRY_HDR_LEN)
			goto out;
		size_t plen = get16(p), en = get16(p + 2), dlen = get32(p + 4);
		p += PRIVSEP_ENTRY_HDR_LEN;
		if (plen > (size_t)(end - p) || dlen > (size_t)(end - p) - plen)
			goto out;
		rc = file_bundle_add(b, (const char *)p, plen, (int)en, (const char *)p + plen,
		                     dlen);
		if (rc == TERN_EINVAL || rc == TERN_EEXIST)
			rc = TERN_ESYNTAX;
		if (rc != TERN_OK)
			goto out;
		rc = TERN_ESYNTAX;
		p += plen + dlen;
	}
	if (p != end)
		goto out;
	*out = b;
	return TERN_OK;
out:
	file_bundle_free(b);
	return rc;
}

/* ------------------------------------------------------- the parent's reads */

/* Whether lookups in directory dir (lstat'ed as d) of an entry e cannot be
 * steered by anyone but root. */
static bool lookup_safe(const struct stat *d, const struct stat *e)
{
	if (!S_ISDIR(d->st_mode) || d->st_uid != 0)
		return false;
	if (!(d->st_mode & (S_IWGRP | S_IWOTH)))
		return true;
	/* Sticky: only an entry's owner (or root) may rename or remove it. */
	return (d->st_mode & S_ISVTX) && e && e->st_uid == 0;
}

bool privsep_path_root_safe(const char *path)
{
	char todo[2 * PATH_MAX], cur[PATH_MAX], tmp[2 * PATH_MAX];
	size_t cl = 0; /* cur[0..cl): the resolved directory, "" for "/" */
	unsigned links = 0;

	if (path[0] == '/') {
		if (tern_strlcpy(todo, path, sizeof(todo)) >= sizeof(todo))
			return false;
	} else {
		char cwd[PATH_MAX];
		if (!getcwd(cwd, sizeof(cwd)))
			return false;
		int k = snprintf(todo, sizeof(todo), "%s/%s", cwd, path);
		if (k < 0 || (size_t)k >= sizeof(todo))
			return false;
	}
	cur[0] = '\0';
	const char *p = todo;
	for (;;) {
		while (*p == '/')
			p++;
		if (!*p)
			return true;
		const char *end = strchrnul(p, '/');
		size_t n = (size_t)(end - p);
		if (n == 1 && p[0] == '.') {
			p = end;
			continue;
		}
		if (n == 2 && p[0] == '.' && p[1] == '.') {
			while (cl > 0 && cur[cl - 1] != '/')
				cl--;
			if (cl > 0)
				cl--; /* the '/' before the last component */
			cur[cl] = '\0';
			p = end;
			continue;
		}
		struct stat d, e;
		if (lstat(cl ? cur : "/", &d) != 0)
			return false;
		if (cl + 1 + n >= sizeof(cur))
			return false;
		cur[cl] = '/';
		memcpy(cur + cl + 1, p, n);
		cur[cl + 1 + n] = '\0';
		if (lstat(cur, &e) != 0) {
			/* Missing: root's open fails as the child's would, if no
			 * one else can create it meanwhile. */
			return lookup_safe(&d, NULL);
		}
		if (!lookup_safe(&d, &e))
			return false;
		if (!S_ISLNK(e.st_mode)) {
			cl += 1 + n;
			p = end;
			continue;
		}
		if (++links > 40)
			return false;
		ssize_t t = readlink(cur, tmp, PATH_MAX);
		if (t <= 0 || t >= PATH_MAX)
			return false;
		cur[cl] = '\0'; /* the link's directory again */
		size_t rest = strlen(end);
		if ((size_t)t + 1 + rest >= sizeof(tmp))
			return false;
		tmp[t] = '/';
		memcpy(tmp + t + 1, end, rest + 1);
		if (tmp[0] == '/')
			cl = 0, cur[0] = '\0';
		memcpy(todo, tmp, (size_t)t + 1 + rest + 1);
		p = todo;
	}
}

/* Reads with uid/gid as the effective ids (the parent's real and saved ids
 * stay root, so it takes root back at once). */
static int read_as(uid_t uid, gid_t gid, const char *path, size_t max, char **out, size_t *outlen,
                   int *err_no)
{
	if (setgroups(0, NULL) != 0 || setegid(gid) != 0) {
		*err_no = errno;
		return TERN_EIO;
	}
	if (seteuid(uid) != 0) {
		*err_no = errno;
		if (TERN_BUG_ON(setegid(0) != 0))
			abort();
		return TERN_EIO;
	}
	int rc = tern_file_read_fs(path, max, out, outlen, err_no);
	if (TERN_BUG_ON(seteuid(0) != 0 || setegid(0) != 0))
		abort(); /* a parent that cannot be root again must not go on */
	return rc;
}

int privsep_read_file(void *arg, const char *path, size_t max, char **out, size_t *outlen,
                      int *err_no)
{
	struct privsep_reader *r = arg;
	bool safe = privsep_path_root_safe(path);
	char q[512];
	log_quote(path, strlen(path), q, sizeof(q));
	if (!r->referenced) {
		if (!safe && !r->tainted)
			log_warn("event=config_unsafe path=%s reason=\"an account other than root "
			         "can change this config file; the files it names are read "
			         "without root\"",
			         q);
		if (!safe)
			r->tainted = true;
		return tern_file_read_fs(path, max, out, outlen, err_no);
	}
	if (safe && !r->tainted) {
		log_debug("event=privsep_read path=%s as=root", q);
		return tern_file_read_fs(path, max, out, outlen, err_no);
	}
	log_debug("event=privsep_read path=%s as=uid:%u", q, (unsigned)r->uid);
	return read_as(r->uid, r->gid, path, max, out, outlen, err_no);
}

/* ------------------------------------------------------------ the split */

pid_t privsep_fork(int *sock)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		return -1;
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		int saved = errno;
		close(sv[0]);
		close(sv[1]);
		sigprocmask(SIG_UNBLOCK, &chld, NULL);
		errno = saved;
		return -1;
	}
	if (pid == 0) {
		close(sv[0]);
		sigprocmask(SIG_UNBLOCK, &chld, NULL);
		*sock = sv[1];
		return 0;
	}
	close(sv[1]);
	*sock = sv[0];
	return pid;
}

int privsep_child_drop(pid_t parent, uid_t uid, gid_t gid, const char *user, char *err,
                       size_t errlen)
{
	uid_t ru, eu, su;
	gid_t rg, eg, sg;
	if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 ||
	    setresuid(uid, uid, uid) != 0) {
		snprintf(err, errlen, "cannot drop privileges to '%s': %s", user, strerror(errno));
		return TERN_EIO;
	}
	if (getresuid(&ru, &eu, &su) != 0 || getresgid(&rg, &eg, &sg) != 0 || ru != uid ||
	    eu != uid || su != uid || rg != gid || eg != gid || sg != gid ||
	    getgroups(0, NULL) != 0 || setuid(0) == 0 || seteuid(0) == 0 || setgid(0) == 0) {
		snprintf(err, errlen, "privilege drop to '%s' did not stick", user);
		return TERN_EIO;
	}
	/* Set after the drop: a change of credentials clears it. SIGKILL, so
	 * that no network process outlives its parent (the spool is safe
	 * against a kill at any moment, DESIGN §5.1). */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) {
		snprintf(err, errlen, "the privileged parent is gone");
		return TERN_EIO;
	}
	log_info("event=privileges user=%s uid=%u gid=%u parent=%ld", user, (unsigned)uid,
	         (unsigned)gid, (long)parent);
	return TERN_OK;
}

/* 1: all n bytes; 0: end of stream before the first; -1: error or a
 * stream that ends inside. */
static int read_exact(int fd, void *p, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, (char *)p + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			return got == 0 ? 0 : -1;
		got += (size_t)r;
	}
	return 1;
}

int privsep_child_receive(int sock, struct file_bundle **out, char *err, size_t errlen)
{
	uint8_t h[PRIVSEP_HDR_LEN];
	unsigned type;
	size_t len;
	*out = NULL;
	int r = read_exact(sock, h, sizeof(h));
	if (r == 0) {
		snprintf(err, errlen, "the privileged parent closed the channel");
		return TERN_ENOTFOUND;
	}
	if (r < 0) {
		snprintf(err, errlen, "reading from the privileged parent: %s",
		         errno ? strerror(errno) : "short message");
		return TERN_EIO;
	}
	int rc = privsep_msg_header(h, &type, &len);
	if (rc != TERN_OK) {
		snprintf(err, errlen, "bad message header from the privileged parent");
		return rc;
	}
	char *body = malloc(len ? len : 1);
	if (!body) {
		snprintf(err, errlen, "out of memory");
		return TERN_ENOMEM;
	}
	errno = 0;
	if (read_exact(sock, body, len) != 1 && len > 0) {
		snprintf(err, errlen, "reading from the privileged parent: %s",
		         errno ? strerror(errno) : "short message");
		rc = TERN_EIO;
	} else {
		rc = privsep_msg_decode_bundle(body, len, out);
		if (rc != TERN_OK)
			snprintf(err, errlen, "bad bundle from the privileged parent (%s)",
			         tern_strerror(rc));
	}
	explicit_bzero(body, len);
	free(body);
	return rc;
}

static void wipe_reset(struct tbuf *b)
{
	if (b->data)
		explicit_bzero(b->data, b->cap);
	tbuf_reset(b);
}

/* Queues b's message behind whatever is still being written. */
static void queue_bundle(struct tbuf *out, struct file_bundle *b)
{
	size_t before = out->len;
	int rc = privsep_msg_encode_bundle(b, out);
	if (rc != TERN_OK) {
		out->len = before;
		if (out->data)
			out->data[before] = '\0';
		log_error("event=reload_failed reason=\"cannot queue the files for the child: %s\" "
		          "keeping=old-config",
		          tern_strerror(rc));
	}
	file_bundle_free(b);
}

static int child_status(pid_t child, int st, bool asked)
{
	if (WIFEXITED(st)) {
		int code = WEXITSTATUS(st);
		if (code != 0 || !asked)
			log_msg(code ? LOG_LVL_ERROR : LOG_LVL_WARN,
			        "event=child_exited pid=%ld status=%d%s", (long)child, code,
			        asked ? "" : " reason=\"not asked to stop\"");
		return code;
	}
	int sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
	const char *name = sig ? sigabbrev_np(sig) : NULL;
	log_error("event=child_died pid=%ld signal=%s%s", (long)child, name ? name : "?",
	          WCOREDUMP(st) ? " core=yes" : "");
	return 1;
}

int privsep_parent_run(pid_t child, int sock, struct file_bundle *first, privsep_reload_fn reload,
                       void *arg)
{
	/* Twice the largest message: one being written, one queued behind. */
	struct tbuf out = TBUF_INIT(2 * (PRIVSEP_HDR_LEN + PRIVSEP_MSG_MAX));
	size_t off = 0;
	bool asked = false, broken = false;
	int status = 1, sfd = -1;
	sigset_t sigs;

	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGCHLD);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
	if (sfd < 0 || fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) | O_NONBLOCK) != 0) {
		log_error("event=fatal reason=\"privileged parent: %s\"", strerror(errno));
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
		file_bundle_free(first);
		goto out;
	}
	log_info("event=privsep parent=%ld child=%ld", (long)getpid(), (long)child);
	queue_bundle(&out, first);
	for (;;) {
		struct pollfd p[2] = {
		    {.fd = sfd, .events = POLLIN},
		    {.fd = off < out.len && !broken ? sock : -1, .events = POLLOUT}};
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_error("event=fatal reason=\"privileged parent: poll: %s\"",
			          strerror(errno));
			kill(child, SIGKILL);
			waitpid(child, NULL, 0);
			goto out;
		}
		if (p[1].revents) {
			ssize_t w =
			    send(sock, out.data + off, out.len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (w > 0) {
				off += (size_t)w;
				if (off == out.len) {
					wipe_reset(&out);
					off = 0;
				}
			} else if (w < 0 && errno != EAGAIN && errno != EINTR) {
				/* The child is going away; SIGCHLD follows. */
				log_warn("event=privsep_send_failed reason=\"%s\"",
				         strerror(errno));
				broken = true;
				wipe_reset(&out);
				off = 0;
			}
		}
		if (!(p[0].revents & POLLIN))
			continue;
		struct signalfd_siginfo si;
		if (read(sfd, &si, sizeof(si)) != (ssize_t)sizeof(si))
			continue;
		if (si.ssi_signo == SIGHUP) {
			if (asked || broken)
				continue;
			struct file_bundle *b = reload(arg);
			if (b) {
				log_info("event=reload_sent files=%zu", file_bundle_count(b));
				queue_bundle(&out, b);
			}
		} else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
			asked = true;
			kill(child, (int)si.ssi_signo);
		} else if (si.ssi_signo == SIGCHLD) {
			int st;
			pid_t r = waitpid(child, &st, WNOHANG);
			if (r == child) {
				status = child_status(child, st, asked);
				break;
			}
		}
	}
out:
	if (out.data)
		explicit_bzero(out.data, out.cap);
	tbuf_free(&out);
	if (sfd >= 0)
		close(sfd);
	close(sock);
	return status;
}
