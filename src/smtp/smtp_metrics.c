/*
 * smtp_metrics.c — the SMTP server's metric hooks (smtp/smtp_metrics.h).
 *
 * Owns: label values for SMTP sessions. Never: a label value taken from
 * the network, a lock, an allocation.
 */
#include "smtp/smtp_metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "core/conf.h"
#include "core/metrics.h"

const char *smtp_metrics_profile(const struct tern_config *conf, bool submission)
{
	if (submission)
		return "submission";
	return conf && conf->capture_mode ? "capture" : "mx";
}

/* The name of the listener whose canonical address ("IP:PORT" or
 * "[IPv6]:PORT", as conf.c writes it) the socket is bound to. */
static const char *listener_name(const struct tern_config *conf, int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char ip[INET6_ADDRSTRLEN], addr[INET6_ADDRSTRLEN + 10];
	if (!conf || getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
		return "unknown";
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
		snprintf(addr, sizeof(addr), "%s:%u", ip, (unsigned)ntohs(a->sin_port));
	} else if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
		snprintf(addr, sizeof(addr), "[%s]:%u", ip, (unsigned)ntohs(a->sin6_port));
	} else {
		return "unknown";
	}
	for (size_t i = 0; i < conf->n_listeners; i++)
		if (strcmp(conf->listeners[i].address, addr) == 0)
			return conf->listeners[i].name;
	return "unknown";
}

void smtp_metrics_connect(const struct tern_config *conf, int listen_fd, bool submission)
{
	const char *profile = smtp_metrics_profile(conf, submission);
	metric_inc_l2(M_CONNECTIONS, listener_name(conf, listen_fd), profile);
	metric_inc_l(M_SESSIONS_ACTIVE, profile);
}

void smtp_metrics_reply(char first_digit)
{
	static const char *const cls[] = {"2xx", "3xx", "4xx", "5xx"};
	/* 3xx (354, 334) are intermediate: the exchange ends with another. */
	if (first_digit == '2' || first_digit == '4' || first_digit == '5')
		metric_inc_l(M_SMTP_REPLIES, cls[first_digit - '2']);
}

void smtp_metrics_auth_failed(const char *mech)
{
	static const char *const known[] = {"PLAIN",       "LOGIN",         "CRAM-MD5",
	                                    "SCRAM-SHA-1", "SCRAM-SHA-256", "XOAUTH2",
	                                    "OAUTHBEARER", "EXTERNAL"};
	const char *label = "other";
	for (size_t i = 0; mech && i < sizeof(known) / sizeof(known[0]); i++)
		if (strcasecmp(mech, known[i]) == 0)
			label = known[i];
	metric_inc_l(M_AUTH_FAILURES, label);
}
