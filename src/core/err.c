/* err.c — names for the TERN_E* codes, for log lines. */
#include "core/err.h"

#include <stdlib.h>

#include "core/log.h"

void tern_bug(const char *file, int line, const char *expr)
{
	log_msg(LOG_LVL_ERROR, "event=bug file=%s line=%d check=\"%s\"", file, line, expr);
#ifndef NDEBUG
	abort();
#endif
}

const char *tern_strerror(int err)
{
	switch (err) {
	case TERN_OK:
		return "ok";
	case TERN_ENOMEM:
		return "out-of-memory";
	case TERN_ELIMIT:
		return "limit";
	case TERN_EIO:
		return "io-error";
	case TERN_ESYNTAX:
		return "syntax";
	case TERN_ENOTFOUND:
		return "not-found";
	case TERN_EEXIST:
		return "exists";
	case TERN_ECORRUPT:
		return "corrupt";
	case TERN_EINVAL:
		return "invalid";
	}
	return "unknown-error";
}
