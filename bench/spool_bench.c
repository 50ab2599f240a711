/*
 * spool_bench.c — the spool's group-commit throughput, printed for make bench.
 *
 * Owns: opening a fresh spool in a temporary directory, driving it from T
 * threads with 4 KiB messages for a fixed time — each thread keeping W puts
 * in flight (W = 1 is an SMTP session waiting for its 250; W = 32 many
 * sessions per loop thread) — and printing puts/s, the commits/puts ratio
 * and the segment count, then removing the directory.
 *
 * Never: asserts a figure (a benchmark prints, tests assert), writes outside
 * its own temporary directory, or runs unbounded (a deadline per run).
 *
 * usage: spool_bench [-t THREADS] [-s SECONDS] [-d PARENT_DIR]
 * The parent directory defaults to $TERN_BENCH_DIR, else /var/tmp (on disk:
 * /tmp is often tmpfs, where fdatasync costs nothing and the figure lies).
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"
#include "core/id.h"
#include "core/log.h"
#include "queue/queue.h"

#define MSG_SIZE 4096
#define MAX_THREADS 64

/* The message every put stores: text, like mail. Filled once by main. */
static char body[MSG_SIZE];

/* Completions posted by the spool's committer, waited for by a sender. */
struct window {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	long done;
	long ok;
};

struct worker {
	struct spool *sp;
	double until;
	long in_flight;
	long ok;
	bool failed;
	double cpu; /* this sender thread's CPU seconds */
};

static double thread_cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double process_cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* CPU seconds (user + system, clock-tick resolution) of this process's
 * threads named name (the spool names its own: spool-commit, spool-prep). */
static double named_threads_cpu_s(const char *name)
{
	DIR *d = opendir("/proc/self/task");
	if (!d)
		return 0;
	double sum = 0;
	long hz = sysconf(_SC_CLK_TCK);
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		char p[300], buf[1024];
		snprintf(p, sizeof(p), "/proc/self/task/%s/comm", de->d_name);
		FILE *f = fopen(p, "r");
		if (!f)
			continue;
		bool match = fgets(buf, sizeof(buf), f) && strncmp(buf, name, strlen(name)) == 0 &&
		             buf[strlen(name)] == '\n';
		fclose(f);
		snprintf(p, sizeof(p), "/proc/self/task/%s/stat", de->d_name);
		if (!match || !(f = fopen(p, "r")))
			continue;
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[n] = '\0';
		/* fields after the ")" that ends comm: state is field 3, utime 14, stime 15 */
		char *q = strrchr(buf, ')');
		unsigned long ut = 0, st = 0;
		if (q && sscanf(q + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut,
		                &st) == 2)
			sum += (double)(ut + st) / (double)hz;
	}
	closedir(d);
	return sum;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_commit(void *arg, int err)
{
	struct window *w = arg;
	pthread_mutex_lock(&w->mu);
	w->done++;
	if (err == TERN_OK)
		w->ok++;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

static void window_wait(struct window *w, long n)
{
	pthread_mutex_lock(&w->mu);
	while (w->done < n)
		pthread_cond_wait(&w->cv, &w->mu);
	pthread_mutex_unlock(&w->mu);
}

static void *worker_run(void *p)
{
	struct worker *wk = p;
	struct spool_rcpt rcpt = {.addr = "postmaster@bench.test", .local = true};
	struct spool_msg env = {.sender = "bench@client.test",
	                        .client = "addr=127.0.0.1 helo=bench",
	                        .size = sizeof(body),
	                        .rcpts = &rcpt,
	                        .n_rcpts = 1};
	struct window w = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
	long sent = 0;
	while (now_s() < wk->until) {
		queue_id_new(env.id);
		env.created = (int64_t)time(NULL);
		if (spool_put(wk->sp, &env, body, sizeof(body), on_commit, &w) != TERN_OK) {
			wk->failed = true;
			break;
		}
		sent++;
		window_wait(&w, sent - wk->in_flight + 1);
	}
	window_wait(&w, sent);
	wk->cpu = thread_cpu_s();
	wk->ok = w.ok;
	wk->failed |= w.ok != sent;
	pthread_mutex_destroy(&w.mu);
	pthread_cond_destroy(&w.cv);
	return NULL;
}

static void rm_tree(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		char p[1200];
		if (snprintf(p, sizeof(p), "%s/%s", dir, de->d_name) >= (int)sizeof(p))
			continue;
		if (unlink(p) != 0 && errno == EISDIR)
			rm_tree(p);
	}
	closedir(d);
	rmdir(dir);
}

/* One run: threads x in_flight for secs. false if the spool failed. */
static bool run(const char *parent, int threads, long in_flight, double secs)
{
	char dir[1024];
	if (snprintf(dir, sizeof(dir), "%s/tern-spool-bench-XXXXXX", parent) >= (int)sizeof(dir) ||
	    !mkdtemp(dir)) {
		fprintf(stderr, "spool_bench: cannot make a directory under %s: %s\n", parent,
		        strerror(errno));
		return false;
	}
	struct spool *sp = NULL;
	bool good = false;
	if (spool_open(dir, &sp) != TERN_OK) {
		fprintf(stderr, "spool_bench: cannot open a spool in %s\n", dir);
		goto out;
	}
	pthread_t th[MAX_THREADS];
	struct worker wk[MAX_THREADS];
	int started = 0;
	double cpu0 = process_cpu_s(), prep0 = named_threads_cpu_s("spool-prep");
	double t0 = now_s();
	for (int i = 0; i < threads; i++) {
		wk[i] = (struct worker){.sp = sp, .until = t0 + secs, .in_flight = in_flight};
		if (pthread_create(&th[i], NULL, worker_run, &wk[i]) != 0)
			break;
		started++;
	}
	long total = 0;
	good = started == threads;
	for (int i = 0; i < started; i++) {
		pthread_join(th[i], NULL);
		total += wk[i].ok;
		good &= !wk[i].failed;
	}
	double dt = now_s() - t0;
	/* The spool's own threads (committer, preparer): the process's CPU less
	 * the senders' (encoding a put is theirs). */
	double spool_cpu = process_cpu_s() - cpu0, prep = named_threads_cpu_s("spool-prep") - prep0;
	for (int i = 0; i < started; i++)
		spool_cpu -= wk[i].cpu;
	struct spool_stats st;
	spool_get_stats(sp, &st);
	printf("spool: %d threads x %ld in flight, 4 KiB: %.0f puts/s (%ld puts in %.1f s, "
	       "%" PRIu64 " commits, commits/puts %.3f, %" PRIu64 " segments)%s\n",
	       threads, in_flight, (double)total / dt, total, dt, st.commits,
	       st.puts ? (double)st.commits / (double)st.puts : 0.0, st.segments,
	       good ? "" : "  [puts failed]");
	if (total)
		printf("spool:   spool threads' CPU %.1f us/put (preparer %.1f us/put)\n",
		       spool_cpu * 1e6 / (double)total, prep * 1e6 / (double)total);
	fflush(stdout);
	spool_close(sp);
out:
	rm_tree(dir);
	return good;
}

static bool parse_num(const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

int main(int argc, char **argv)
{
	long threads = 8, secs = 2;
	const char *parent = getenv("TERN_BENCH_DIR");
	if (!parent || !*parent)
		parent = "/var/tmp";
	int opt;
	while ((opt = getopt(argc, argv, "t:s:d:")) != -1) {
		if (opt == 't' && parse_num(optarg, 1, MAX_THREADS, &threads))
			continue;
		if (opt == 's' && parse_num(optarg, 1, 600, &secs))
			continue;
		if (opt == 'd') {
			parent = optarg;
			continue;
		}
		fprintf(stderr, "usage: spool_bench [-t THREADS<=%d] [-s SECONDS<=600] [-d DIR]\n",
		        MAX_THREADS);
		return 2;
	}
	log_set_level(LOG_LVL_WARN);
	/* 76 letters and a CRLF per line */
	for (size_t i = 0; i < sizeof(body); i++)
		body[i] = i % 78 == 76 ? '\r' : i % 78 == 77 ? '\n' : (char)('a' + i % 26);
	bool ok = run(parent, (int)threads, 1, (double)secs); /* a session waits for its 250 */
	ok &= run(parent, (int)threads, 32, (double)secs);    /* pipelined sessions */
	return ok ? 0 : 1;
}
