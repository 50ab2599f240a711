/*
 * spool_fixture.h — what the spool's unit tests share (test_spool.c,
 * test_spool_prep.c, test_spool_retire.c): a scratch directory, a log
 * captured to a file so a test can count what recovery reported, a
 * completion counter for spool_put callbacks and a plain message.
 * Header-only (static inline): each test binary includes it once, after
 * cmocka.h.
 */
#ifndef TERN_TEST_SPOOL_FIXTURE_H
#define TERN_TEST_SPOOL_FIXTURE_H

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"
#include "queue/queue.h"

/* ---- a scratch directory ------------------------------------------------ */

struct tmpdir {
	char path[256];
};

static inline void tmpdir_make(struct tmpdir *t)
{
	const char *base = getenv("TMPDIR");
	snprintf(t->path, sizeof(t->path), "%s/tern-spool-XXXXXX", base ? base : "/tmp");
	assert_non_null(mkdtemp(t->path));
}

/* Removes the files of dir (and of its damaged/ subdirectory), not dir;
 * hidden files too (a prepared spare is ".prep-NONCE"). */
static inline void dir_empty(const char *dir)
{
	char sub[512];
	snprintf(sub, sizeof(sub), "%s/damaged", dir);
	DIR *d = opendir(sub);
	struct dirent *de;
	if (d) {
		while ((de = readdir(d))) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			char p[768];
			snprintf(p, sizeof(p), "%s/%s", sub, de->d_name);
			unlink(p);
		}
		closedir(d);
		rmdir(sub);
	}
	d = opendir(dir);
	if (!d)
		return;
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		char p[512];
		snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
		unlink(p);
	}
	closedir(d);
}

static inline void tmpdir_rm(struct tmpdir *t)
{
	dir_empty(t->path);
	rmdir(t->path);
}

/* ---- the log, captured to a file ---------------------------------------- */

static char log_path[256];
static int log_fd = -1;
static int log_quiet_fd = 2; /* where log_capture_stop sends the log back */

static inline void log_capture_start(void)
{
	const char *base = getenv("TMPDIR");
	snprintf(log_path, sizeof(log_path), "%s/tern-spool-log-XXXXXX", base ? base : "/tmp");
	log_fd = mkstemp(log_path);
	assert_true(log_fd >= 0);
	log_set_fd(log_fd);
}

/* How many log lines since log_capture_start contain a (and b, if given). */
static inline int log_capture_count(const char *a, const char *b)
{
	FILE *f = fopen(log_path, "r");
	assert_non_null(f);
	char line[4096];
	int n = 0;
	while (fgets(line, sizeof(line), f))
		n += strstr(line, a) && (!b || strstr(line, b));
	fclose(f);
	return n;
}

/* Back to log_quiet_fd; the file goes. */
static inline void log_capture_stop(void)
{
	log_set_fd(log_quiet_fd);
	close(log_fd);
	unlink(log_path);
	log_fd = -1;
}

/* ---- completions of spool_put ------------------------------------------- */

struct waiter {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done;
	int ok;
	int last_err;
};

static inline void waiter_init(struct waiter *w)
{
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	w->done = w->ok = 0;
	w->last_err = 0;
}

static inline void waiter_destroy(struct waiter *w)
{
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv);
}

static inline void put_cb(void *arg, int err)
{
	struct waiter *w = arg;
	pthread_mutex_lock(&w->mu);
	w->done++;
	if (err == TERN_OK)
		w->ok++;
	else
		w->last_err = err;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

static inline void waiter_wait(struct waiter *w, int n)
{
	pthread_mutex_lock(&w->mu);
	while (w->done < n)
		pthread_cond_wait(&w->cv, &w->mu);
	pthread_mutex_unlock(&w->mu);
}

/* ---- a plain message ------------------------------------------------------ */

/* A fresh envelope: one recipient, sender and recipient named after seed,
 * size 0 (the caller sets it with the data). */
static inline struct spool_msg *fixture_msg(unsigned seed)
{
	struct spool_msg *m = calloc(1, sizeof(*m));
	assert_non_null(m);
	queue_id_new(m->id);
	char buf[64];
	snprintf(buf, sizeof(buf), "sender%u@example.org", seed);
	m->sender = strdup(buf);
	m->created = 1700000000 + seed;
	m->n_rcpts = 1;
	m->rcpts = calloc(1, sizeof(*m->rcpts));
	assert_non_null(m->rcpts);
	snprintf(buf, sizeof(buf), "rcpt%u@example.net", seed);
	m->rcpts[0].addr = strdup(buf);
	return m;
}

#endif
