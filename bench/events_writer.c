/*
 * events_writer.c — the events writer's work per relayed message, with batch
 * sizes that do not depend on the machine (bench/events_writer.py builds it
 * against a build's libternlib.a and runs it under callgrind).
 *
 * Owns: nothing of tern; it drives the public interface of store/events.h the
 * way the relay path does: per message a received event (Message-ID, sender),
 * a queued event per recipient and a delivered event with the next hop's
 * reply, in bursts of BURST messages, each burst written before the next
 * (events_flush), so every batch holds 3 x BURST events whatever the speed
 * (under callgrind the relay bench's batches hold 7 events, at full speed
 * hundreds: the commit's share differs tenfold).
 * Never: writes outside the directory it is given.
 *
 * usage: events_writer DIR MESSAGES BURST
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/events.h"

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: events_writer DIR MESSAGES BURST\n");
		return 2;
	}
	long msgs = strtol(argv[2], NULL, 10), burst = strtol(argv[3], NULL, 10);
	struct events_opts o = {.retry_base = 60, .timeout = 5, .queue_max = 1 << 20};
	if (msgs <= 0 || burst <= 0 || events_start(argv[1], &o) != 0)
		return 1;
	char qid[32], mid[64];
	for (long m = 0; m < msgs;) {
		for (long b = 0; b < burst && m < msgs; b++, m++) {
			snprintf(qid, sizeof(qid), "CRFR26H%09lX", m);
			snprintf(mid, sizeof(mid), "%010ld.0000010807@smtpload.bench", m);
			events_emit_msg(EV_RECEIVED, qid, mid, strlen(mid), "bench@client.test", NULL,
			                NULL);
			events_emit_msg(EV_QUEUED, qid, mid, strlen(mid), "bench@client.test",
			                "sink@remote.test", NULL);
			events_emit_outcome(EV_DELIVERED, qid, mid, strlen(mid), "bench@client.test",
			                    "sink@remote.test", "127.0.0.1:2525", "2.0.0",
			                    "250 2.0.0 Ok: queued as 4XyZ1234", 0, false);
		}
		if (!events_flush(600000))
			return 1;
	}
	events_stop();
	printf("events_writer: %ld messages, dropped %llu\n", msgs,
	       (unsigned long long)events_dropped());
	return 0;
}
