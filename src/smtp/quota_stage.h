/*
 * quota_stage.h — sending quotas on SMTP submission (store/quota.h): the
 * authenticated user's own (submission_quotas { }) and its envelope
 * sender domain's (quotas { }). Checked at MAIL, charged when the message
 * goes to the spool.
 */
#ifndef TERN_SMTP_QUOTA_STAGE_H
#define TERN_SMTP_QUOTA_STAGE_H

#include <stdbool.h>
#include <stddef.h>

struct tern_config;

/*
 * At MAIL: true when user (the SASL identity) or the domain of sender
 * ("" for the null sender) has no room left in some window; line then
 * holds the whole reply ("452 4.7.1 ..." with the window, the limit and
 * the seconds until it frees, no CRLF). Charges nothing.
 */
bool smtp_quota_refuse(const struct tern_config *conf, const char *user, const char *sender,
                       char *line, size_t len);

/* At the spool put: charges one message to user and the sender's domain
 * (never refuses: the check was at MAIL; sessions in parallel may overrun
 * a limit by the messages they had between MAIL and their end). */
void smtp_quota_charge(const struct tern_config *conf, const char *user, const char *sender);

#endif
