#define _GNU_SOURCE
#include "CShims.h"
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/resource.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif

int _bgw_spawn_actions_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

int _bgw_pidfd_open(pid_t pid, unsigned int flags) {
    return (int)syscall(SYS_pidfd_open, pid, flags);
}

int _bgw_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

// Calls `visit` with each entry of the folder at `path` whose name is a number (/proc's pids, a
// task folder's tids), stopping at its first failure. 0, or -1 with errno (the folder cannot be
// listed, or `visit` failed).
static int for_each_numeric_entry(const char *path, int (*visit)(int dirfd, const char *name, void *context), void *context) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    char buffer[32768];
    int rc = 0;
    while (rc == 0) {
        long n = syscall(SYS_getdents64, fd, buffer, sizeof buffer);
        if (n < 0) rc = -1;
        if (n <= 0) break;
        for (long offset = 0; offset < n && rc == 0;) {
            // struct linux_dirent64: d_ino u64, d_off s64, d_reclen u16, d_type u8, d_name[].
            unsigned short length;
            memcpy(&length, buffer + offset + 16, sizeof length);
            const char *name = buffer + offset + 19;
            offset += length;
            if (name[0] < '1' || name[0] > '9') continue;
            rc = visit(fd, name, context);
        }
    }
    int error = errno;
    close(fd);
    errno = error;
    return rc;
}

struct session_scan {
    const pid_t *sessions;
    size_t count;
    pid_t *pids;
    pid_t *found_sessions;
    size_t capacity;
    long found;
};

static int visit_session_member(int dirfd, const char *name, void *context) {
    (void)dirfd;
    struct session_scan *scan = context;
    long pid = 0;
    for (const char *c = name; *c >= '0' && *c <= '9' && pid < 1L << 31; c++) pid = pid * 10 + (*c - '0');
    pid_t session = getsid((pid_t)pid);
    if (session <= 0) return 0;
    size_t low = 0, high = scan->count;
    while (low < high) {
        size_t middle = low + (high - low) / 2;
        if (scan->sessions[middle] < session) low = middle + 1; else high = middle;
    }
    if (low == scan->count || scan->sessions[low] != session) return 0;
    if ((size_t)scan->found < scan->capacity) {
        scan->pids[scan->found] = (pid_t)pid;
        scan->found_sessions[scan->found] = session;
    }
    scan->found++;
    return 0;
}

long _bgw_session_members(const pid_t *sessions, size_t count, pid_t *pids, pid_t *found_sessions, size_t capacity) {
    struct session_scan scan = { sessions, count, pids, found_sessions, capacity, 0 };
    if (for_each_numeric_entry("/proc", visit_session_member, &scan) < 0) return -1;
    return scan.found;
}

int _bgw_set_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}

int _bgw_sigchld_autoreaps(int restore_default) {
    struct sigaction current;
    if (sigaction(SIGCHLD, NULL, &current) < 0) return -1;
    if (current.sa_handler != SIG_IGN && !(current.sa_flags & SA_NOCLDWAIT)) return 0;
    if (restore_default) {
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        if (sigaction(SIGCHLD, &dfl, NULL) < 0) return -1;
    }
    return 1;
}

// Appends the pids of one children file ("1 2 3 \n") to pids; returns the new count or -1.
static long read_children(int dirfd, const char *task, pid_t *pids, size_t capacity, long found) {
    char path[64];
    size_t used = 0;
    for (const char *c = task; *c && used < 40; c++) path[used++] = *c;
    memcpy(path + used, "/children", sizeof "/children");
    int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT) return -1;
        // A thread that exited meanwhile has no folder any more; a folder without the file is a
        // kernel without CONFIG_PROC_CHILDREN, where no list can be trusted.
        if (faccessat(dirfd, task, F_OK, 0) < 0 && errno == ENOENT) return found;
        errno = ENOENT;
        return -1;
    }
    char buffer[8192];
    long pid = 0;
    int digits = 0;
    for (;;) {
        ssize_t n = read(fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int error = errno;
            close(fd);
            errno = error;
            return -1;
        }
        // A number may span two reads: the state (pid, digits) carries over.
        for (ssize_t i = 0; i <= n; i++) {
            if (i < n && buffer[i] >= '0' && buffer[i] <= '9') {
                if (pid < 1L << 31) pid = pid * 10 + (buffer[i] - '0');
                digits++;
            } else if (digits && (i < n || n == 0)) {
                if ((size_t)found < capacity) pids[found] = (pid_t)pid;
                found++;
                pid = 0;
                digits = 0;
            }
        }
        if (n == 0) break;
    }
    close(fd);
    return found;
}

pid_t _bgw_gettid(void) {
    return (pid_t)syscall(SYS_gettid);
}

long _bgw_threads_children(const pid_t *tids, size_t ntids, pid_t *pids, size_t capacity) {
    long found = 0;
    char task[48];
    for (size_t i = 0; i < ntids; i++) {
        // "/proc/PID/task/TID": no walk through the /proc/self symlink, no listing of the tasks.
        snprintf(task, sizeof task, "/proc/%d/task/%d", (int)getpid(), (int)tids[i]);
        found = read_children(AT_FDCWD, task, pids, capacity, found);
        if (found < 0) return -1;
    }
    return found;
}

// "/proc/PID/LEAF": 32 bytes hold any pid (10 digits) with "cmdline" or "environ".
static void proc_pid_path(char path[32], pid_t pid, const char *leaf) {
    snprintf(path, 32, "/proc/%d/%s", (int)pid, leaf);
}

int _bgw_cmdline_empty(pid_t pid) {
    char path[32];
    proc_pid_path(path, pid, "cmdline");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char byte;
    ssize_t n;
    do n = read(fd, &byte, 1); while (n < 0 && errno == EINTR);
    int error = errno;
    close(fd);
    if (n < 0) {
        errno = error;
        return -1;
    }
    return n == 0 ? 1 : 0;
}

long _bgw_environ_value(pid_t pid, const char *prefix, char *value, size_t capacity) {
    char path[32];
    proc_pid_path(path, pid, "environ");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -2;
    size_t prefix_length = strlen(prefix);
    // A streaming match, entry by entry (an environment may be megabytes long): `position` bytes
    // of the current entry read, `matching` while they equal the prefix, then copied into value.
    size_t position = 0;
    int matching = 1;
    long result = -1;
    char buffer[8192];
    size_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            result = -2;
            break;
        }
        if (n == 0) {
            // Nothing at all: the process is in the middle of an execve (its new memory's
            // environment is not set up yet: the kernel reads 0 bytes), a zombie, or has an empty
            // environment. Not "no such entry": the caller may look again.
            if (total == 0) result = -3;
            break;
        }
        total += (size_t)n;
        for (ssize_t i = 0; i < n; i++) {
            char c = buffer[i];
            if (c == 0) {
                if (matching && position >= prefix_length) {
                    size_t length = position - prefix_length;
                    result = (long)length;  // the first entry counts, as getenv's
                    goto done;
                }
                position = 0;
                matching = 1;
                continue;
            }
            if (matching) {
                if (position < prefix_length) {
                    if (prefix[position] != c) matching = 0;
                } else if (position - prefix_length < capacity) {
                    value[position - prefix_length] = c;
                }
            }
            position++;
        }
    }
done:
    close(fd);
    return result;
}

int _bgw_exited_child(pid_t *pid) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) < 0) return -1;
    *pid = info.si_pid;
    return 0;
}

int _bgw_reap_pid(pid_t pid) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    return waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG);
}

int _bgw_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

void _bgw_set_thread_name(const char *name) {
    prctl(PR_SET_NAME, name, 0, 0, 0);
}

static int wait_exited(idtype_t type, id_t id, int extra_flags, int *code, int *status) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    int rc;
    do {
        rc = waitid(type, id, &info, WEXITED | extra_flags);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) return -1;
    *code = info.si_pid == 0 ? 0 : info.si_code;
    *status = info.si_status;
    return 0;
}

int _bgw_waitid_pidfd(int pidfd, int extra_flags, int *code, int *status) {
    return wait_exited((idtype_t)P_PIDFD, (id_t)pidfd, extra_flags, code, status);
}

int _bgw_waitid_pid(pid_t pid, int extra_flags, int *code, int *status) {
    return wait_exited(P_PID, (id_t)pid, extra_flags, code, status);
}

// ---- spawning -------------------------------------------------------------------------------

struct spawn_context {
    const struct _bgw_spawn_request *req;
    pid_t parent_pid;
    // Written by the child, read by the parent after the child has executed or exited: the
    // child shares the parent's memory (CLONE_VM) and the parent is suspended meanwhile
    // (CLONE_VFORK), so this needs no pipe and no synchronisation.
    volatile int failed_step;
    volatile int error;
    // stdin, stdout, stderr, record: the low fds the request's ones were duplicated onto, all
    // below keep_below (see low_fds).
    int fds[4];
    int keep_below;
};

// Four fds with low numbers, opened once on /dev/null and kept: before each spawn the request's
// stdin/stdout/stderr/record fds are duplicated onto them (dup3 replaces, never allocates), so
// the child copies only the fds below them (CLOSE_RANGE_UNSHARE) however many the daemon holds;
// after the spawn they point at /dev/null again, so no pipe's write end stays open here.
// `low_lock` is held from the first dup3 to the last: spawns of different threads (tests run
// several runners in one process) take turns.
static pthread_mutex_t low_lock = PTHREAD_MUTEX_INITIALIZER;
static int low_fds[4] = { -1, -1, -1, -1 };
static int low_null = -1;

static int low_fds_ready(void) {
    if (low_null >= 0) return 0;
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0) return -1;
    int fds[4];
    for (int i = 0; i < 4; i++) {
        fds[i] = fcntl(null, F_DUPFD_CLOEXEC, 3);
        if (fds[i] < 0) {
            int e = errno;
            for (int j = 0; j < i; j++) close(fds[j]);
            close(null);
            errno = e;
            return -1;
        }
    }
    memcpy(low_fds, fds, sizeof fds);
    low_null = null;
    return 0;
}

// Raw syscalls for the id changes: glibc's setuid/setgid/setgroups broadcast the change to every
// thread of the process (SIGSETXID), and in a CLONE_VM child "every thread" means the parent's.
static int raw(long rc) { return rc < 0 ? -1 : 0; }

static int child_fail(struct spawn_context *ctx, int step) {
    ctx->error = errno;
    ctx->failed_step = step;
    _exit(127);
}

static int move_fd(int from, int to) {
    if (from == to) {
        // dup2 would be a no-op that keeps O_CLOEXEC; clear it instead.
        int flags = fcntl(from, F_GETFD);
        return flags < 0 ? -1 : fcntl(from, F_SETFD, flags & ~FD_CLOEXEC);
    }
    return dup2(from, to) < 0 ? -1 : 0;
}

// This process's start time, /proc/self/stat field 22 (clock ticks after boot), or 0 when it
// cannot be read: with it the next daemon tells its leader from a later process reusing the pid.
// Only open/read/close and arithmetic: the child shares the parent's memory (CLONE_VM).
static uint64_t own_start_time(void) {
    char buffer[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buffer, sizeof buffer - 1);
    close(fd);
    if (n <= 0) return 0;
    // The command name may hold spaces and parentheses: fields are counted after its last ')'.
    ssize_t at = n - 1;
    while (at >= 0 && buffer[at] != ')') at--;
    if (at < 0) return 0;
    int field = 2;
    for (at++; at < n && field < 22; at++) {
        if (buffer[at] == ' ') field++;
    }
    uint64_t value = 0;
    int digits = 0;
    for (; at < n && buffer[at] >= '0' && buffer[at] <= '9'; at++, digits++) value = value * 10 + (uint64_t)(buffer[at] - '0');
    return field == 22 && digits > 0 ? value : 0;
}

static int spawn_child(void *arg) {
    struct spawn_context *ctx = arg;
    const struct _bgw_spawn_request *req = ctx->req;

    // The child shares the parent's fd table (CLONE_FILES): a copy of it, and closing every
    // close-on-exec fd at execve, cost as much as the daemon has fds open (2 per worker), which
    // made each spawn slower as workers were added. Only the low fds are copied (everything
    // the child needs was put there by _bgw_spawn); nothing is touched before this.
    if (close_range((unsigned)ctx->keep_below, ~0U, CLOSE_RANGE_UNSHARE) < 0)
        return child_fail(ctx, _BGW_SPAWN_CLOSE_FDS);

    // Every signal was blocked by the parent before clone. Reset all dispositions to the default
    // (handlers are the parent's code in the parent's memory; ignored signals would be inherited
    // by the program) before the mask is emptied just before execve.
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < _NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        struct sigaction old;
        if (sigaction(sig, NULL, &old) < 0) continue; // glibc-reserved signals: EINVAL
        if (old.sa_handler != SIG_DFL) sigaction(sig, &dfl, NULL);
    }

    // A session of its own, as systemd gives each service: setpgid can only join a group of the
    // caller's session, so no process of another worker can move into this one's group (and be
    // counted as this worker by the notify socket, or hide in its kill group).
    if (setsid() < 0) return child_fail(ctx, _BGW_SPAWN_SETSID);

    // Recorded before the program can run (and fork): a daemon SIGKILLed from here on leaves a
    // group its successor knows. The parent is suspended (CLONE_VFORK), so no write of its own
    // races with this one. The raw getpid: the pid of this clone, whatever glibc may cache.
    if (req->record_fd >= 0) {
        struct { int32_t pgid; uint32_t generation; uint64_t start_time; } entry = {
            (int32_t)syscall(SYS_getpid), req->record_generation, own_start_time() };
        ssize_t written = pwrite(ctx->fds[3], &entry, sizeof entry, req->record_offset);
        if (written != (ssize_t)sizeof entry) {
            if (written >= 0) errno = EIO;
            return child_fail(ctx, _BGW_SPAWN_RECORD);
        }
    }

    // sd_watchdog_enabled() compares WATCHDOG_PID with getpid(): the program's own pid, which
    // only the child knows. The parent is suspended (CLONE_VFORK); the buffer is this spawn's.
    if (req->watchdog_pid_value) {
        char digits[16];
        int count = 0;
        unsigned long pid = (unsigned long)syscall(SYS_getpid);
        do {
            digits[count++] = (char)('0' + pid % 10);
            pid /= 10;
        } while (pid && count < 10);
        for (int i = 0; i < count; i++) req->watchdog_pid_value[i] = digits[count - 1 - i];
        req->watchdog_pid_value[count] = 0;
    }

    if (move_fd(ctx->fds[0], 0) < 0 || move_fd(ctx->fds[1], 1) < 0 || move_fd(ctx->fds[2], 2) < 0)
        return child_fail(ctx, _BGW_SPAWN_STDIO);

    // The daemon raises its own soft limit for its many fds; a program expects the usual one
    // (select() breaks above 1024). Best effort: a seccomp filter of the daemon's unit may refuse
    // setrlimit (@resources), and a worker with the daemon's limit is better than none.
    if (req->nofile_soft > 0) {
        struct rlimit limit;
        if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && (rlim_t)req->nofile_soft < limit.rlim_cur) {
            limit.rlim_cur = (rlim_t)req->nofile_soft;
            setrlimit(RLIMIT_NOFILE, &limit);
        }
    }

    if (req->working_directory && chdir(req->working_directory) < 0)
        return child_fail(ctx, _BGW_SPAWN_CHDIR);

    if (req->set_groups && raw(syscall(SYS_setgroups, req->ngroups, req->groups)) < 0)
        return child_fail(ctx, _BGW_SPAWN_SETGROUPS);
    if (req->set_gid && raw(syscall(SYS_setresgid, req->gid, req->gid, req->gid)) < 0)
        return child_fail(ctx, _BGW_SPAWN_SETGID);
    if (req->set_uid && raw(syscall(SYS_setresuid, req->uid, req->uid, req->uid)) < 0)
        return child_fail(ctx, _BGW_SPAWN_SETUID);

    // After the id change: changing credentials clears the parent-death signal.
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) return child_fail(ctx, _BGW_SPAWN_PDEATHSIG);
    if (getppid() != ctx->parent_pid) {
        errno = ESRCH;
        return child_fail(ctx, _BGW_SPAWN_PARENT_GONE);
    }

    // Whatever another thread of the daemon opened without O_CLOEXEC must not leak into workers.
    if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) < 0) return child_fail(ctx, _BGW_SPAWN_CLOSE_FDS);

    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0) return child_fail(ctx, _BGW_SPAWN_SIGNALS);

    execve(req->path, req->argv, req->envp);
    return child_fail(ctx, _BGW_SPAWN_EXEC);
}

enum { CHILD_STACK_SIZE = 128 * 1024 };
/// The children's stack, made at the first spawn; guarded by low_lock.
static void *spawn_stack;

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#include <dlfcn.h>
// ThreadSanitizer's clone interceptor treats every clone as a fork: with CLONE_VM the child
// rewrites the TSan state it shares with the parent, and the parent then aborts ("CHECK failed:
// tsan_rtl.cpp ... thr->slot"). A TSan build calls glibc's clone itself (the next definition after
// the interceptor in this executable); until execve the child runs on the state of the thread it
// suspends (CLONE_VFORK), as a vfork would. Only -sanitize=thread builds (scripts/sanitize).
typedef int (*bgw_clone_function)(int (*)(void *), void *, int, void *, ...);
#define clone(fn, stack, flags, arg, pidfd) \
    ((bgw_clone_function)dlsym(RTLD_NEXT, "clone"))(fn, stack, flags, arg, pidfd)
#endif
#endif

int _bgw_spawn(const struct _bgw_spawn_request *req, struct _bgw_spawn_result *result) {
    result->pid = -1;
    result->pidfd = -1;
    result->failed_step = _BGW_SPAWN_OK;
    result->error = 0;

    // One child stack for every spawn, kept: spawns take low_lock, and a CLONE_VFORK child is
    // done with its stack (exec'd or exited) before clone returns in the parent. Its pages stay
    // mapped, so a child does not fault them in again at each spawn.
    pthread_mutex_lock(&low_lock);
    if (spawn_stack == NULL) {
        void *stack = mmap(NULL, CHILD_STACK_SIZE, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED) {
            result->failed_step = _BGW_SPAWN_STACK;
            result->error = errno;
            pthread_mutex_unlock(&low_lock);
            return -1;
        }
        spawn_stack = stack;
    }
    void *stack = spawn_stack;

    // No signal handler may run in the child while it shares our memory.
    sigset_t all, saved;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &saved);

    struct spawn_context ctx = { .req = req, .parent_pid = getpid(), .failed_step = 0, .error = 0 };
    int low_errno = 0;
    if (low_fds_ready() < 0) {
        low_errno = errno;
    } else {
        int from[4] = { req->stdin_fd, req->stdout_fd, req->stderr_fd, req->record_fd >= 0 ? req->record_fd : low_null };
        ctx.keep_below = 0;
        for (int i = 0; i < 4 && low_errno == 0; i++) {
            ctx.fds[i] = low_fds[i];
            if (low_fds[i] + 1 > ctx.keep_below) ctx.keep_below = low_fds[i] + 1;
            if (dup3(from[i], low_fds[i], O_CLOEXEC) < 0) low_errno = errno;
        }
    }
    int pidfd = -1;
    pid_t pid = -1;
    int clone_errno = low_errno;
    if (low_errno == 0) {
        pid = clone(spawn_child, (char *)stack + CHILD_STACK_SIZE,
                    CLONE_VM | CLONE_VFORK | CLONE_FILES | CLONE_PIDFD | SIGCHLD, &ctx, &pidfd);
        clone_errno = errno;
    }
    if (low_null >= 0) {
        for (int i = 0; i < 4; i++) dup3(low_null, low_fds[i], O_CLOEXEC);
    }
    pthread_mutex_unlock(&low_lock);

    pthread_sigmask(SIG_SETMASK, &saved, NULL);

    if (pid < 0) {
        result->failed_step = low_errno != 0 ? _BGW_SPAWN_STDIO : _BGW_SPAWN_CLONE;
        result->error = clone_errno;
        return -1;
    }
    if (ctx.failed_step != _BGW_SPAWN_OK) {
        int code, status;
        _bgw_waitid_pidfd(pidfd, 0, &code, &status);
        close(pidfd);
        result->failed_step = ctx.failed_step;
        result->error = ctx.error;
        return -1;
    }
    result->pid = pid;
    result->pidfd = pidfd;
    return 0;
}

int _bgw_sockaddr_un(const char *address, struct sockaddr_un *out, socklen_t *length) {
    size_t size = strlen(address);
    memset(out, 0, sizeof *out);
    out->sun_family = AF_UNIX;
    if (size == 0) {
        errno = EINVAL;
        return -1;
    }
    // A path keeps its terminating NUL inside sun_path; an abstract name is as long as written.
    if (size >= sizeof out->sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(out->sun_path, address, size);
    int abstract = address[0] == '@';
    if (abstract) out->sun_path[0] = 0;
    *length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + size + (abstract ? 0 : 1));
    return 0;
}

int _bgw_notify_connect(const char *address) {
    if (address[0] != '/' && address[0] != '@') {
        errno = EINVAL;
        return -1;
    }
    struct sockaddr_un sun;
    socklen_t size;
    if (_bgw_sockaddr_un(address, &sun, &size) < 0) return -1;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&sun, size) < 0) {
        int error = errno;
        close(fd);
        errno = error;
        return -1;
    }
    return fd;
}

long _bgw_send_nowait(int fd, const void *bytes, size_t length) {
    ssize_t sent;
    do {
        sent = send(fd, bytes, length, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    return sent;
}
