/*
 * milter.c — `tern milter test`: runs tern's milter client (src/policy/milter.h)
 * on an event base against one message read from stdin, exactly as a session
 * would drive it, and prints each step's verdict and the header changes.
 *
 *   tern milter test --milter inet:HOST:PORT|unix:/PATH [--default-action A]
 *                    [--client-ip IP] [--client-name NAME] [--helo NAME]
 *                    [--from ADDR] [--rcpt ADDR]... [--queue-id ID] [--timeout MS]
 *                    < message
 *
 * Output, one line per event:
 *   step=NAME action=ACTION [failed=1] [reply="..."]
 *   mod=add|insert|change|delete index=N name=NAME value="..."
 *   quarantine reason="..."
 * Values are printed with \r, \n, \t, \\ and \" escaped. Stops after the first
 * final verdict. Exit 0 when it ran, 1 on a setup failure, 2 on a usage error.
 */
#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/buf.h"
#include "core/err.h"
#include "policy/milter.h"

#define MAX_RCPT 64
#define MAX_HEADERS 1000
#define MESSAGE_MAX (64u << 20)

struct hdr {
	char *name;
	char *value;
};

struct mtest {
	struct event_base *base;
	struct milter_client *mc;
	const char *client_name, *helo, *from;
	const char *rcpt[MAX_RCPT];
	size_t n_rcpt, i_rcpt;
	struct sockaddr_storage sa;
	bool have_sa;
	struct hdr hdrs[MAX_HEADERS];
	size_t n_hdrs, i_hdr;
	struct tbuf body;
	int stage; /* the step whose verdict is awaited */
	bool done;
};

enum { S_CONNECT, S_HELO, S_MAIL, S_RCPT, S_DATA, S_HEADER, S_EOH, S_BODY, S_EOM };
static const char *const stage_names[] = {"connect", "helo", "mail", "rcpt", "data",
                                          "header",  "eoh",  "body", "eom"};

static void usage(FILE *out)
{
	fprintf(out, "usage: tern milter test --milter inet:HOST:PORT|unix:/PATH\n"
	             "                        [--default-action tempfail|accept|reject]\n"
	             "                        [--client-ip IP] [--client-name NAME] [--helo NAME]\n"
	             "                        [--from ADDR] [--rcpt ADDR]... [--queue-id ID]\n"
	             "                        [--timeout MS] < message\n");
}

static void print_escaped(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '\r')
			fputs("\\r", stdout);
		else if (c == '\n')
			fputs("\\n", stdout);
		else if (c == '\t')
			fputs("\\t", stdout);
		else if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 32 || c == 127)
			printf("\\x%02x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void next_step(struct mtest *t)
{
	switch (t->stage) {
	case S_CONNECT:
		milter_step_connect(t->mc, t->client_name,
		                    t->have_sa ? (struct sockaddr *)&t->sa : NULL);
		break;
	case S_HELO:
		milter_step_helo(t->mc, t->helo);
		break;
	case S_MAIL:
		milter_step_mail(t->mc, t->from, NULL, 0);
		break;
	case S_RCPT:
		milter_step_rcpt(t->mc, t->rcpt[t->i_rcpt], NULL, 0);
		break;
	case S_DATA:
		milter_step_data(t->mc);
		break;
	case S_HEADER:
		milter_step_header(t->mc, t->hdrs[t->i_hdr].name, t->hdrs[t->i_hdr].value);
		break;
	case S_EOH:
		milter_step_eoh(t->mc);
		break;
	case S_BODY:
		milter_step_body(t->mc, t->body.data, t->body.len);
		break;
	case S_EOM:
		milter_step_eom(t->mc);
		break;
	}
}

static void on_verdict(void *arg, const struct milter_verdict *v)
{
	struct mtest *t = arg;
	printf("step=%s action=%s", stage_names[t->stage], milter_action_name(v->action));
	if (v->failed)
		fputs(" failed=1", stdout);
	if (v->reply[0]) {
		fputs(" reply=", stdout);
		print_escaped(v->reply);
	}
	putchar('\n');
	if (t->stage == S_EOM) {
		static const char *const kinds[] = {"add", "insert", "change", "delete"};
		for (size_t i = 0; i < v->n_mods; i++) {
			const struct milter_mod *m = &v->mods[i];
			printf("mod=%s index=%u name=", kinds[m->kind], m->index);
			print_escaped(m->name);
			fputs(" value=", stdout);
			print_escaped(m->value);
			putchar('\n');
		}
		if (v->quarantine) {
			fputs("quarantine reason=", stdout);
			print_escaped(v->quarantine_reason);
			putchar('\n');
		}
	}
	fflush(stdout);
	bool rcpt_only =
	    t->stage == S_RCPT && (v->action == MILTER_REJECT || v->action == MILTER_TEMPFAIL);
	if ((v->action != MILTER_CONTINUE && !rcpt_only) || t->stage == S_EOM) {
		t->done = true;
		event_base_loopbreak(t->base);
		return;
	}
	/* Advance. */
	if (t->stage == S_RCPT && ++t->i_rcpt < t->n_rcpt) {
	} else if (t->stage == S_HEADER && ++t->i_hdr < t->n_hdrs) {
	} else {
		t->stage++;
		if (t->stage == S_HEADER && t->n_hdrs == 0)
			t->stage++;
	}
	next_step(t);
}

/* Splits the message: header fields (unfolded lines kept with their CRLF)
 * and the body with CRLF line ends. */
static int parse_message(struct mtest *t, const char *m, size_t n)
{
	struct tbuf crlf = TBUF_INIT(2 * (size_t)MESSAGE_MAX);
	int rc = TERN_OK;
	for (size_t i = 0; rc == TERN_OK && i < n; i++) {
		if (m[i] == '\n' && (i == 0 || m[i - 1] != '\r'))
			rc = tbuf_append(&crlf, "\r", 1);
		if (rc == TERN_OK)
			rc = tbuf_append(&crlf, &m[i], 1);
	}
	if (rc != TERN_OK || !crlf.data) {
		tbuf_free(&crlf);
		return rc == TERN_OK ? TERN_OK : rc;
	}
	const char *p = crlf.data, *end = crlf.data + crlf.len;
	while (p < end) {
		const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
		if (!eol)
			eol = end;
		if (eol == p) { /* the blank line */
			p += 2;
			break;
		}
		const char *colon = memchr(p, ':', (size_t)(eol - p));
		if ((*p == ' ' || *p == '\t') && t->n_hdrs > 0) {
			/* continuation: append "\r\n" + line */
			struct hdr *h = &t->hdrs[t->n_hdrs - 1];
			size_t ol = strlen(h->value), nl = (size_t)(eol - p);
			char *v = realloc(h->value, ol + 2 + nl + 1);
			if (!v) {
				rc = TERN_ENOMEM;
				break;
			}
			memcpy(v + ol, "\r\n", 2);
			memcpy(v + ol + 2, p, nl);
			v[ol + 2 + nl] = '\0';
			h->value = v;
		} else if (colon && t->n_hdrs < MAX_HEADERS) {
			struct hdr *h = &t->hdrs[t->n_hdrs++];
			h->name = tern_strndup(p, (size_t)(colon - p));
			h->value = tern_strndup(colon + 1, (size_t)(eol - colon - 1));
			if (!h->name || !h->value) {
				rc = TERN_ENOMEM;
				break;
			}
		} else {
			break; /* not a header: the body starts here */
		}
		p = eol < end ? eol + 2 : end;
	}
	if (rc == TERN_OK && p < end)
		rc = tbuf_append(&t->body, p, (size_t)(end - p));
	tbuf_free(&crlf);
	return rc;
}

static int milter_test(int argc, char **argv)
{
	struct milter_opts o = {.default_action = MILTER_TEMPFAIL, .myhostname = "tern.test"};
	struct mtest t = {
	    .client_name = "localhost", .helo = "client.test", .from = "sender@example.org"};
	const char *ip = "127.0.0.1";
	unsigned long timeout = 0;
	tbuf_init(&t.body, MESSAGE_MAX);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v) {
			usage(stderr);
			return 2;
		}
		i++;
		if (strcmp(a, "--milter") == 0)
			o.spec = v;
		else if (strcmp(a, "--default-action") == 0) {
			if (milter_action_parse(v, &o.default_action) != TERN_OK) {
				usage(stderr);
				return 2;
			}
		} else if (strcmp(a, "--client-ip") == 0)
			ip = v;
		else if (strcmp(a, "--client-name") == 0)
			t.client_name = v;
		else if (strcmp(a, "--helo") == 0)
			t.helo = v;
		else if (strcmp(a, "--from") == 0)
			t.from = v;
		else if (strcmp(a, "--rcpt") == 0 && t.n_rcpt < MAX_RCPT)
			t.rcpt[t.n_rcpt++] = v;
		else if (strcmp(a, "--queue-id") == 0)
			o.queue_id = v;
		else if (strcmp(a, "--timeout") == 0) {
			char *end;
			timeout = strtoul(v, &end, 10);
			if (*end || timeout == 0 || timeout > 3600000) {
				usage(stderr);
				return 2;
			}
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (!o.spec) {
		usage(stderr);
		return 2;
	}
	if (milter_spec_check(o.spec) != TERN_OK) {
		fprintf(stderr,
		        "tern milter: '%s' is not inet:IP:PORT, inet:[IPv6]:PORT or "
		        "unix:/PATH\n",
		        o.spec);
		return 2;
	}
	if (t.n_rcpt == 0)
		t.rcpt[t.n_rcpt++] = "rcpt@example.org";
	o.connect_timeout_ms = o.command_timeout_ms = o.eom_timeout_ms = (uint32_t)timeout;
	struct sockaddr_in *s4 = (struct sockaddr_in *)&t.sa;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&t.sa;
	if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons(40000);
		t.have_sa = true;
	} else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(40000);
		t.have_sa = true;
	}

	int status = 1;
	struct tbuf msg = TBUF_INIT(MESSAGE_MAX);
	char chunk[65536];
	ssize_t r;
	while ((r = read(0, chunk, sizeof(chunk))) > 0)
		if (tbuf_append(&msg, chunk, (size_t)r) != TERN_OK) {
			fprintf(stderr, "tern milter: message too large\n");
			goto out;
		}
	if (parse_message(&t, msg.data ? msg.data : "", msg.len) != TERN_OK) {
		fprintf(stderr, "tern milter: out of memory\n");
		goto out;
	}
	t.base = event_base_new();
	if (!t.base)
		goto out;
	t.mc = milter_client_new(t.base, &o, on_verdict, &t);
	if (!t.mc)
		goto out;
	t.stage = S_CONNECT;
	next_step(&t);
	event_base_dispatch(t.base);
	status = t.done ? 0 : 1;
out:
	milter_client_free(t.mc);
	if (t.base)
		event_base_free(t.base);
	for (size_t i = 0; i < t.n_hdrs; i++) {
		free(t.hdrs[i].name);
		free(t.hdrs[i].value);
	}
	tbuf_free(&t.body);
	tbuf_free(&msg);
	return status;
}

int cmd_milter(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "test") == 0)
		return milter_test(argc - 1, argv + 1);
	if (cli_help_asked(argc, argv)) {
		usage(stdout);
		return 0;
	}
	usage(stderr);
	return 2;
}
