/* faultshim.c - an LD_PRELOAD shim that injects real system-call failures
 * into the exportd binary under test (tests/common/fault.rs builds and uses
 * it). Every fault applies only to file descriptors / paths whose path
 * contains $FAULT_PATH (checked through /proc/self/fd/N), so the rest of the
 * process behaves normally.
 *
 * Environment (all optional except FAULT_PATH):
 *   FAULT_PATH=substr      which files are affected (required; empty = none)
 *   FAULT_CONTROL=file     faults are active only while this file exists
 *                          (lets a test start and end an "outage")
 *   FAULT_FSYNC=N | N+     the Nth fsync/fdatasync on a matching fd fails
 *                          with EIO (N+: the Nth and every later one); 1-based
 *   FAULT_FSYNC_LOSE=1     with FAULT_FSYNC: a failed sync also loses what it
 *                          should have written, as the disk will show it
 *                          after the kernel dropped the failed pages (or
 *                          after a power cut): the bytes written to that fd
 *                          since its last successful sync become zeros (the
 *                          file keeps its size)
 *   FAULT_WRITE_LIMIT=B    at most B bytes in all are written to matching fds:
 *                          the write crossing B is short, later ones ENOSPC
 *   FAULT_READ=ERRNO       read/pread on a matching fd fails with ERRNO
 *                          (EIO, EACCES, ESTALE, ENOSPC, EAGAIN)
 *   FAULT_OPEN=ERRNO       open/openat of a matching path fails with ERRNO
 *                          (only opens made through libc are seen: rustix's
 *                          raw syscalls bypass this shim; reads do not)
 *   FAULT_COUNT=K          open/read faults fire K times, then stop (default
 *                          unlimited)
 *   FAULT_LOG=file         every injected fault appends one line here
 *   FAULT_INOTIFY_WATCHES=N  inotify_add_watch on a matching path fails with
 *                          ENOSPC (the kernel's fs.inotify.max_user_watches
 *                          reached) once N matching watches were added
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <stdint.h>
#include <sys/uio.h>
#include <unistd.h>

static long fsync_count;
static int fd_matches(int fd);

/* Per fd: file size at its last successful sync (or before its first
 * write); -1 = not known yet. Only for FAULT_FSYNC_LOSE. */
#define MAX_FD 4096
static long long synced_size[MAX_FD];
static int synced_init;

static long long fd_size(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 ? (long long)st.st_size : -1;
}

static void lose_init(void) {
  if (!synced_init) {
    for (int i = 0; i < MAX_FD; i++) synced_size[i] = -1;
    synced_init = 1;
  }
}

static int lose_on(int fd) {
  const char *l = getenv("FAULT_FSYNC_LOSE");
  return l && *l == '1' && fd >= 0 && fd < MAX_FD;
}

/* Before a write to a matching fd: remember where unsynced data starts. */
static void note_before_write(int fd) {
  if (!lose_on(fd) || !fd_matches(fd)) return;
  lose_init();
  if (synced_size[fd] < 0) synced_size[fd] = fd_size(fd);
}

static void note_synced(int fd) {
  if (!lose_on(fd)) return;
  lose_init();
  synced_size[fd] = fd_size(fd);
}

/* A failed sync: the unsynced bytes of fd are gone. */
static void lose_unsynced(int fd) {
  if (!lose_on(fd)) return;
  lose_init();
  long long from = synced_size[fd], to = fd_size(fd);
  if (from < 0 || to <= from) return;
  ssize_t (*rpwrite)(int, const void *, size_t, off_t) = dlsym(RTLD_NEXT, "pwrite");
  static const char zeros[4096];
  for (long long at = from; at < to;) {
    size_t n = (size_t)((to - at) < (long long)sizeof zeros ? (to - at) : (long long)sizeof zeros);
    ssize_t w = rpwrite(fd, zeros, n, (off_t)at);
    if (w <= 0) break;
    at += w;
  }
}
static long long written;
static long fired;

static const char *env(const char *n) {
  const char *v = getenv(n);
  return (v && *v) ? v : NULL;
}

static int active(void) {
  const char *c = env("FAULT_CONTROL");
  if (!c) return 1;
  struct stat st;
  /* raw stat through the real libc symbol is fine: stat is not hooked */
  return stat(c, &st) == 0;
}

static int path_matches(const char *p) {
  const char *want = env("FAULT_PATH");
  return want && p && strstr(p, want) != NULL;
}

static int fd_matches(int fd) {
  if (!env("FAULT_PATH")) return 0;
  char link[64], buf[4096];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, buf, sizeof buf - 1);
  if (n <= 0) return 0;
  buf[n] = 0;
  return path_matches(buf);
}

static int errno_of(const char *name) {
  if (!name) return 0;
  if (!strcmp(name, "EIO")) return EIO;
  if (!strcmp(name, "EACCES")) return EACCES;
  if (!strcmp(name, "ESTALE")) return ESTALE;
  if (!strcmp(name, "ENOSPC")) return ENOSPC;
  if (!strcmp(name, "EAGAIN")) return EAGAIN;
  if (!strcmp(name, "EPERM")) return EPERM;
  return EIO;
}

static void note(const char *what, int fd, const char *path) {
  const char *l = env("FAULT_LOG");
  if (!l) return;
  int (*ropen)(const char *, int, ...) = dlsym(RTLD_NEXT, "open");
  ssize_t (*rwrite)(int, const void *, size_t) = dlsym(RTLD_NEXT, "write");
  int f = ropen(l, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (f < 0) return;
  char buf[512];
  int n = snprintf(buf, sizeof buf, "%s fd=%d %s\n", what, fd, path ? path : "");
  if (n > 0) rwrite(f, buf, (size_t)n);
  close(f);
}

static int count_allows(void) {
  const char *c = env("FAULT_COUNT");
  if (!c) return 1;
  long k = atol(c);
  if (__atomic_load_n(&fired, __ATOMIC_SEQ_CST) >= k) return 0;
  __atomic_add_fetch(&fired, 1, __ATOMIC_SEQ_CST);
  return 1;
}

static int fsync_fault(int fd, const char *name) {
  const char *spec = env("FAULT_FSYNC");
  if (!spec || !active() || !fd_matches(fd)) return 0;
  long n = __atomic_add_fetch(&fsync_count, 1, __ATOMIC_SEQ_CST);
  long want = atol(spec);
  int plus = spec[strlen(spec) - 1] == '+';
  if (n == want || (plus && n >= want)) {
    note(name, fd, NULL);
    lose_unsynced(fd);
    errno = EIO;
    return 1;
  }
  return 0;
}

int fsync(int fd) {
  static int (*real)(int);
  if (!real) real = dlsym(RTLD_NEXT, "fsync");
  if (fsync_fault(fd, "fsync")) return -1;
  int r = real(fd);
  if (r == 0) note_synced(fd);
  return r;
}

int fdatasync(int fd) {
  static int (*real)(int);
  if (!real) real = dlsym(RTLD_NEXT, "fdatasync");
  if (fsync_fault(fd, "fdatasync")) return -1;
  int r = real(fd);
  if (r == 0) note_synced(fd);
  return r;
}

/* How many of `len` bytes may go to fd now; -1 = none (ENOSPC). */
static long long write_allowance(int fd, size_t len) {
  const char *lim = env("FAULT_WRITE_LIMIT");
  if (!lim || !active() || !fd_matches(fd)) return (long long)len;
  long long limit = atoll(lim);
  long long before = __atomic_fetch_add(&written, (long long)len, __ATOMIC_SEQ_CST);
  if (before >= limit) {
    __atomic_fetch_sub(&written, (long long)len, __ATOMIC_SEQ_CST);
    note("write-enospc", fd, NULL);
    return -1;
  }
  if (before + (long long)len > limit) {
    long long ok = limit - before;
    __atomic_fetch_sub(&written, (long long)len - ok, __ATOMIC_SEQ_CST);
    note("write-short", fd, NULL);
    return ok;
  }
  return (long long)len;
}

ssize_t write(int fd, const void *buf, size_t len) {
  static ssize_t (*real)(int, const void *, size_t);
  if (!real) real = dlsym(RTLD_NEXT, "write");
  note_before_write(fd);
  long long a = write_allowance(fd, len);
  if (a < 0) { errno = ENOSPC; return -1; }
  return real(fd, buf, (size_t)a);
}

int close(int fd) {
  static int (*real)(int);
  if (!real) real = dlsym(RTLD_NEXT, "close");
  if (synced_init && fd >= 0 && fd < MAX_FD) synced_size[fd] = -1;
  return real(fd);
}

static ssize_t do_pwrite(const char *sym, int fd, const void *buf, size_t len, off_t off) {
  ssize_t (*real)(int, const void *, size_t, off_t) = dlsym(RTLD_NEXT, sym);
  long long a = write_allowance(fd, len);
  if (a < 0) { errno = ENOSPC; return -1; }
  return real(fd, buf, (size_t)a, off);
}
ssize_t pwrite(int fd, const void *buf, size_t len, off_t off) { return do_pwrite("pwrite", fd, buf, len, off); }
ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) { return do_pwrite("pwrite64", fd, buf, len, off); }

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
  static ssize_t (*real)(int, const struct iovec *, int);
  if (!real) real = dlsym(RTLD_NEXT, "writev");
  note_before_write(fd);
  size_t total = 0;
  for (int i = 0; i < cnt; i++) total += iov[i].iov_len;
  long long a = write_allowance(fd, total);
  if (a < 0) { errno = ENOSPC; return -1; }
  if ((size_t)a == total) return real(fd, iov, cnt);
  /* short: write the allowed prefix of the first buffers */
  ssize_t (*rw)(int, const void *, size_t) = dlsym(RTLD_NEXT, "write");
  size_t left = (size_t)a, done = 0;
  for (int i = 0; i < cnt && left > 0; i++) {
    size_t n = iov[i].iov_len < left ? iov[i].iov_len : left;
    ssize_t r = rw(fd, iov[i].iov_base, n);
    if (r < 0) return done ? (ssize_t)done : r;
    done += (size_t)r;
    left -= (size_t)r;
    if ((size_t)r < n) break;
  }
  return (ssize_t)done;
}

static int read_fault(int fd) {
  const char *e = env("FAULT_READ");
  if (!e || !active() || !fd_matches(fd) || !count_allows()) return 0;
  note("read", fd, NULL);
  errno = errno_of(e);
  return 1;
}

ssize_t read(int fd, void *buf, size_t len) {
  static ssize_t (*real)(int, void *, size_t);
  if (!real) real = dlsym(RTLD_NEXT, "read");
  if (read_fault(fd)) return -1;
  return real(fd, buf, len);
}

ssize_t pread64(int fd, void *buf, size_t len, off_t off) {
  static ssize_t (*real)(int, void *, size_t, off_t);
  if (!real) real = dlsym(RTLD_NEXT, "pread64");
  if (read_fault(fd)) return -1;
  return real(fd, buf, len, off);
}

static int open_fault(const char *path) {
  const char *e = env("FAULT_OPEN");
  if (!e || !active() || !path_matches(path) || !count_allows()) return 0;
  note("open", -1, path);
  errno = errno_of(e);
  return 1;
}

#define OPEN_MODE(flags, mode)                      \
  mode_t mode = 0;                                  \
  if ((flags) & (O_CREAT | O_TMPFILE)) {            \
    va_list ap;                                     \
    va_start(ap, flags);                            \
    mode = (mode_t)va_arg(ap, int);                 \
    va_end(ap);                                     \
  }

int open(const char *path, int flags, ...) {
  OPEN_MODE(flags, mode);
  static int (*real)(const char *, int, ...);
  if (!real) real = dlsym(RTLD_NEXT, "open");
  if (open_fault(path)) return -1;
  return real(path, flags, mode);
}
int open64(const char *path, int flags, ...) {
  OPEN_MODE(flags, mode);
  static int (*real)(const char *, int, ...);
  if (!real) real = dlsym(RTLD_NEXT, "open64");
  if (open_fault(path)) return -1;
  return real(path, flags, mode);
}
int openat(int dir, const char *path, int flags, ...) {
  OPEN_MODE(flags, mode);
  static int (*real)(int, const char *, int, ...);
  if (!real) real = dlsym(RTLD_NEXT, "openat");
  if (open_fault(path)) return -1;
  return real(dir, path, flags, mode);
}
int openat64(int dir, const char *path, int flags, ...) {
  OPEN_MODE(flags, mode);
  static int (*real)(int, const char *, int, ...);
  if (!real) real = dlsym(RTLD_NEXT, "openat64");
  if (open_fault(path)) return -1;
  return real(dir, path, flags, mode);
}

/* The watch limit: N matching watches succeed, then ENOSPC (while active). */
static long inotify_added;
int inotify_add_watch(int fd, const char *path, uint32_t mask) {
  static int (*real)(int, const char *, uint32_t);
  if (!real) real = dlsym(RTLD_NEXT, "inotify_add_watch");
  const char *lim = env("FAULT_INOTIFY_WATCHES");
  if (lim && path_matches(path)) {
    if (active() && __atomic_load_n(&inotify_added, __ATOMIC_SEQ_CST) >= atol(lim)) {
      note("inotify_add_watch", fd, path);
      errno = ENOSPC;
      return -1;
    }
    int wd = real(fd, path, mask);
    if (wd >= 0) __atomic_add_fetch(&inotify_added, 1, __ATOMIC_SEQ_CST);
    return wd;
  }
  return real(fd, path, mask);
}
