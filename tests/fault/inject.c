/* An interposed libc for the I/O fault tests (tests/test_io_faults.cpp):
 * loaded with LD_PRELOAD into a real `cairn` process, it makes the Nth call
 * of one function on a file inside one folder fail with one errno, and can
 * count those calls. Real process, real files, real error paths: only the
 * return value of that one call is replaced (a failed close still closes).
 *
 *   CAIRN_FAULT_DIR    the folder (a path prefix): calls on files below it count
 *                      (close: only of descriptors open for writing)
 *   CAIRN_FAULT_CALL   write | pwrite | ftruncate | fsync | fdatasync | close | rename | link
 *   CAIRN_FAULT_NTH    which counted call fails (1 = the first; 0 or unset: none)
 *   CAIRN_FAULT_ERRNO  the errno it fails with (default EIO)
 *   CAIRN_FAULT_COUNTS a file to which the process appends "name count" lines at exit
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

enum { F_WRITE, F_PWRITE, F_FTRUNCATE, F_FSYNC, F_FDATASYNC, F_CLOSE, F_RENAME, F_LINK, F_COUNT };
static const char* const names[F_COUNT] = {"write", "pwrite", "ftruncate", "fsync",
                                           "fdatasync", "close", "rename", "link"};
static atomic_long counts[F_COUNT];
static const char* dir;
static size_t dir_len;
static int target = -1;
static long nth;
static int fault_errno = EIO;

__attribute__((constructor)) static void setup(void) {
  dir = getenv("CAIRN_FAULT_DIR");
  dir_len = dir ? strlen(dir) : 0;
  const char* call = getenv("CAIRN_FAULT_CALL");
  for (int i = 0; call && i < F_COUNT; ++i) {
    if (strcmp(call, names[i]) == 0) target = i;
  }
  const char* n = getenv("CAIRN_FAULT_NTH");
  nth = n ? atol(n) : 0;
  const char* e = getenv("CAIRN_FAULT_ERRNO");
  if (e) fault_errno = atoi(e);
}

__attribute__((destructor)) static void report(void) {
  const char* out = getenv("CAIRN_FAULT_COUNTS");
  if (!out) return;
  FILE* f = fopen(out, "a");
  if (!f) return;
  for (int i = 0; i < F_COUNT; ++i) fprintf(f, "%s %ld\n", names[i], (long)atomic_load(&counts[i]));
  fclose(f);
}

static int below(const char* path) {
  return dir_len > 0 && path && strncmp(path, dir, dir_len) == 0 && (path[dir_len] == '/' || path[dir_len] == 0);
}

static int fd_below(int fd) {
  if (dir_len == 0 || fd < 0) return 0;
  char link[64], path[4096];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return 0;
  path[n] = 0;
  return below(path);
}

/* Counts a call on a file below the folder; 1 when this one is to fail. */
static int fails(int which, int counted) {
  if (!counted) return 0;
  const long k = atomic_fetch_add(&counts[which], 1) + 1;
  return which == target && k == nth;
}

#define REAL(ret, name, ...) \
  static ret (*real)(__VA_ARGS__); \
  if (!real) real = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, name)

ssize_t write(int fd, const void* buf, size_t n) {
  REAL(ssize_t, "write", int, const void*, size_t);
  if (fails(F_WRITE, fd > 2 && fd_below(fd))) { errno = fault_errno; return -1; }
  return real(fd, buf, n);
}

ssize_t pwrite(int fd, const void* buf, size_t n, off_t off) {
  REAL(ssize_t, "pwrite", int, const void*, size_t, off_t);
  if (fails(F_PWRITE, fd_below(fd))) { errno = fault_errno; return -1; }
  return real(fd, buf, n, off);
}

int ftruncate(int fd, off_t length) {
  REAL(int, "ftruncate", int, off_t);
  if (fails(F_FTRUNCATE, fd_below(fd))) { errno = fault_errno; return -1; }
  return real(fd, length);
}

int fsync(int fd) {
  REAL(int, "fsync", int);
  if (fails(F_FSYNC, fd_below(fd))) { errno = fault_errno; return -1; }
  return real(fd);
}

int fdatasync(int fd) {
  REAL(int, "fdatasync", int);
  if (fails(F_FDATASYNC, fd_below(fd))) { errno = fault_errno; return -1; }
  return real(fd);
}

/* A descriptor open for writing: the close that can report a lost write. */
static int writable(int fd) {
  const int flags = fcntl(fd, F_GETFL);
  return flags >= 0 && (flags & O_ACCMODE) != O_RDONLY;
}

int close(int fd) {
  REAL(int, "close", int);
  const int fail = fails(F_CLOSE, fd_below(fd) && writable(fd));
  const int r = real(fd); /* the descriptor is released either way, as Linux does on EIO */
  if (fail) { errno = fault_errno; return -1; }
  return r;
}

int rename(const char* from, const char* to) {
  REAL(int, "rename", const char*, const char*);
  if (fails(F_RENAME, below(from) || below(to))) { errno = fault_errno; return -1; }
  return real(from, to);
}

int link(const char* from, const char* to) {
  REAL(int, "link", const char*, const char*);
  if (fails(F_LINK, below(from) || below(to))) { errno = fault_errno; return -1; }
  return real(from, to);
}
