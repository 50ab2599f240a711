/*
 * fsutil.h — making directory entries durable. A new or renamed file is
 * only on stable storage once the directory that names it is fsync'd too
 * (DESIGN §5.1); every module that creates files uses these two.
 */
#ifndef TERN_CORE_FSUTIL_H
#define TERN_CORE_FSUTIL_H

/* Opens dir and fsyncs it. TERN_OK or TERN_EIO. */
int tern_fsync_dir(const char *dir);
/* fsyncs the directory that contains path ("." for a bare name). TERN_OK,
 * TERN_EIO, or TERN_ELIMIT if the directory name is too long. */
int tern_fsync_parent(const char *path);

#endif
