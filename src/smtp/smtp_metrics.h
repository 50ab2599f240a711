/*
 * smtp_metrics.h — the SMTP server's metric hooks (core/metrics.h), kept
 * out of server.c so that each hook there is one line.
 *
 * Owns: the mapping of sessions to label values (listener name, profile,
 * code class, mechanism). Never: uses a value from the network as a label
 * (an unknown mechanism is "other"), blocks, or allocates.
 */
#ifndef TERN_SMTP_SMTP_METRICS_H
#define TERN_SMTP_SMTP_METRICS_H

#include <stdbool.h>

struct tern_config;

/* "submission", "capture" (capture mode) or "mx". */
const char *smtp_metrics_profile(const struct tern_config *conf, bool submission);
/* A session starts on the listening socket listen_fd: counts the
 * connection (labelled with the name of the conf listener bound to that
 * socket's address) and one more active session of its profile. */
void smtp_metrics_connect(const struct tern_config *conf, int listen_fd, bool submission);
/* A reply whose code starts with first_digit went out. */
void smtp_metrics_reply(char first_digit);
/* One failed AUTH exchange with mechanism mech (as the client named it). */
void smtp_metrics_auth_failed(const char *mech);

#endif
