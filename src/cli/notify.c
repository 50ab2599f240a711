/*
 * notify.c — the systemd readiness protocol (sd_notify(3)) without
 * libsystemd: one datagram "KEY=VALUE\n..." to the AF_UNIX socket named by
 * $NOTIFY_SOCKET ("@name" is the abstract namespace). The whole protocol a
 * Type=notify service needs is READY=1, RELOADING=1 and STOPPING=1, so a
 * library for it is not worth a dependency.
 *
 * Must never: block (a datagram socket; a full or absent receiver loses the
 * message, as sd_notify does), fail the daemon, or send anything when
 * $NOTIFY_SOCKET is unset (not under systemd).
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "cli/cli.h"

void cli_notify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun;
	if (!path || (path[0] != '/' && path[0] != '@'))
		return;
	size_t n = strlen(path);
	if (n < 2 || n >= sizeof(sun.sun_path))
		return;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, n);
	if (sun.sun_path[0] == '@')
		sun.sun_path[0] = '\0';
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return;
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	(void)!sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sun, len);
	close(fd);
}
