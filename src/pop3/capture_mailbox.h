/*
 * capture_mailbox.h — POP3 over capture mode's store (Mailpit's --pop3):
 * a pop3_backend (pop3/pop3.h) whose one mailbox is every caught message,
 * oldest first, for any user of an htpasswd set (Mailpit always asks for
 * a login on POP3). UIDL is the message's capture ID; RETR gives its raw
 * bytes; DELE'd messages leave the store at QUIT.
 */
#ifndef TERN_POP3_CAPTURE_MAILBOX_H
#define TERN_POP3_CAPTURE_MAILBOX_H

#include "pop3/pop3.h"

struct capture_store;
struct http_auth;

struct pop3_capture {
	struct pop3_backend backend; /* give &backend to pop3_server_set_backend */
	struct capture_store *st;
	const struct http_auth *users;
};

/* Fills pc; st and users must outlive the POP3 server. */
void pop3_capture_init(struct pop3_capture *pc, struct capture_store *st,
                       const struct http_auth *users);

#endif
