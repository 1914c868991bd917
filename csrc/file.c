/* file.c: write_atomic(path, data): a whole file replaced atomically and durably (the
   mirror's snapshot); fsync(path): a file written by other means (or a directory) made
   durable. Blocking: the loop waits for the disk while they run. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "file.h"

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Syncs the directory that holds path, so that a rename into it survives a power loss. */
static int sync_dir(const char *path) {
  char dir[PATH_MAX];
  const char *slash = strrchr(path, '/');
  if (!slash) {
    strcpy(dir, ".");
  } else if (slash == path) {
    strcpy(dir, "/");
  } else {
    size_t n = (size_t)(slash - path);
    memcpy(dir, path, n);
    dir[n] = '\0';
  }
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  int e = errno;
  close(fd);
  errno = e;
  return rc;
}

/* The data goes to a fresh temporary file next to path (mode 0600), which is synced, closed
   and renamed over path; then the directory is synced. On failure the temporary file is
   removed and path is left as it was. Returns true, or nil and a message. */
static int write_atomic(lua_State *L) {
  size_t n;
  const char *path = luaL_checkstring(L, 1);
  const char *data = luaL_checklstring(L, 2, &n);
  char tmp[PATH_MAX];
  const char *step = "name";
  int e = ENAMETOOLONG;
  if (strlen(path) + sizeof ".XXXXXX" > sizeof tmp) goto fail;
  snprintf(tmp, sizeof tmp, "%s.XXXXXX", path);
  step = "create";
  int fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0) {
    e = errno;
    goto fail;
  }
  step = "write";
  if (write_all(fd, data, n) < 0 || (step = "fsync", fsync(fd) < 0)) {
    e = errno;
    close(fd);
    unlink(tmp);
    goto fail;
  }
  step = "close";
  if (close(fd) < 0 || (step = "rename", rename(tmp, path) < 0)) {
    e = errno;
    unlink(tmp);
    goto fail;
  }
  step = "fsync directory of";
  if (sync_dir(path) < 0) {
    e = errno;
    goto fail;
  }
  lua_pushboolean(L, 1);
  return 1;
fail:
  lua_pushnil(L);
  lua_pushfstring(L, "%s %s: %s", step, path, strerror(e));
  return 2;
}

/* fsync(path): flushes the file or directory at path to the disk. Returns true, or nil and a
   message. */
static int fsync_path(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0 || fsync(fd) < 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    lua_pushnil(L);
    lua_pushfstring(L, "fsync %s: %s", path, strerror(e));
    return 2;
  }
  close(fd);
  lua_pushboolean(L, 1);
  return 1;
}

void coord_file_register(lua_State *L) {
  static const luaL_Reg fns[] = {{"write_atomic", write_atomic}, {"fsync", fsync_path}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
