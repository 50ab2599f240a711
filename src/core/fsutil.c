/* fsutil.c — directory syncs (see fsutil.h). */
#include "core/fsutil.h"

#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"

int tern_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return TERN_EIO;
	int rc = fsync(fd) == 0 ? TERN_OK : TERN_EIO;
	/* close() can report a deferred error: it counts. */
	if (close(fd) != 0 && rc == TERN_OK)
		rc = TERN_EIO;
	return rc;
}

int tern_fsync_parent(const char *path)
{
	char parent[PATH_MAX];
	const char *slash = strrchr(path, '/');
	if (slash == NULL)
		return tern_fsync_dir(".");
	size_t n = (size_t)(slash - path);
	if (n == 0)
		return tern_fsync_dir("/");
	if (n >= sizeof(parent))
		return TERN_ELIMIT;
	memcpy(parent, path, n);
	parent[n] = '\0';
	return tern_fsync_dir(parent);
}
