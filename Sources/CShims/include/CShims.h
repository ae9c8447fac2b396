#ifndef BGWORKER_CSHIMS_H
#define BGWORKER_CSHIMS_H
// Only what Swift cannot call directly: raw syscalls (syscall(2) is variadic), code that must run
// in a vfork-style child, and constants glibc 2.36 does not export to Swift. Keep each shim small.
#include <sys/types.h>
#include <signal.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/signalfd.h>
#include <sys/uio.h>
#include <sys/socket.h>
#include <sys/un.h>

/// pidfd_open(2). Returns a pidfd or -1 with errno set.
int _bgw_pidfd_open(pid_t pid, unsigned int flags);
/// pidfd_send_signal(2) with no siginfo. Returns 0 or -1 with errno set.
int _bgw_pidfd_send_signal(int pidfd, int sig);

/// Lists the processes whose session is one of `sessions` (`count` ids, sorted ascending): for
/// each, its pid into `pids` and its session into `found_sessions`, at most `capacity`. One pass
/// over /proc (getdents64) with getsid(2) per entry, no file read: cheap enough for every
/// worker exit. Returns how many were found (more than `capacity` means some were not written),
/// or -1 with errno set when /proc cannot be listed.
long _bgw_session_members(const pid_t *sessions, size_t count, pid_t *pids, pid_t *found_sessions, size_t capacity);

/// prctl(PR_SET_CHILD_SUBREAPER, 1): orphaned descendants are reparented to this process, not to
/// init. Returns 0 or -1 with errno set.
int _bgw_set_child_subreaper(void);

/// Whether the kernel reaps this process's children by itself: SIGCHLD ignored (inherited through
/// execve: a parent's `trap '' CHLD`) or SA_NOCLDWAIT (set in this process: execve clears it). Then no exit status can be read and
/// a child's pid may be reused while it is still signalled. With `restore_default`, SIGCHLD is
/// put back to SIG_DFL. Returns 1 when it did reap (before the restore), 0 when not, -1 with errno.
int _bgw_sigchld_autoreaps(int restore_default);

/// The calling thread's id (what /proc/PID/task lists).
pid_t _bgw_gettid(void);

/// The pids of the children of this process's threads `tids` (/proc/PID/task/TID/children), at
/// most `capacity` into `pids`. Returns how many there are (more than `capacity`: some not
/// written), or -1 with errno set (ENOENT: a kernel without CONFIG_PROC_CHILDREN).
long _bgw_threads_children(const pid_t *tids, size_t ntids, pid_t *pids, size_t capacity);

/// The value of the first entry of /proc/PID/environ (the environment at its last execve) that
/// starts with `prefix` (e.g. "BGWORKER_NAME="): up to `capacity` bytes into `value`, not
/// NUL-terminated. Returns its full length, -1 when there is no such entry, -2 when the file
/// cannot be read, -3 when it is empty (a process in the middle of an execve, before its new
/// environment is set up; a zombie; an empty environment): the answer may differ later.
long _bgw_environ_value(pid_t pid, const char *prefix, char *value, size_t capacity);

/// Whether /proc/PID/cmdline reads as empty: 1 (a process in the middle of an execve, whose new
/// argv is not set up yet, or a zombie), 0 (it has an argv), -1 with errno (gone).
int _bgw_cmdline_empty(pid_t pid);

/// waitid(P_ALL, WEXITED | WNOHANG | WNOWAIT): the pid of an exited child, not reaped, into *pid
/// (0 when none has exited). Returns 0, or -1 with errno set (ECHILD: no children).
int _bgw_exited_child(pid_t *pid);

/// waitid(P_PID, pid, WEXITED | WNOHANG): reaps that child if it has exited. Returns 0 or -1.
int _bgw_reap_pid(pid_t pid);

/// pipe2(fds, O_CLOEXEC): glibc declares pipe2 only under _GNU_SOURCE, which Swift does not set.
int _bgw_pipe_cloexec(int fds[2]);

/// posix_spawn_file_actions_addclosefrom_np(actions, from) (glibc 2.34+, declared only under
/// _GNU_SOURCE): the child closes every fd from `from` up. Returns 0 or an error number.
#include <spawn.h>
int _bgw_spawn_actions_closefrom(posix_spawn_file_actions_t *actions, int from);

/// Names the calling thread (prctl(PR_SET_NAME); at most 15 bytes are kept).
void _bgw_set_thread_name(const char *name);

/// waitid(P_PIDFD, pidfd, WEXITED | extra_flags): reaps exactly that child (never another one).
/// On success returns 0 and sets *code (CLD_EXITED 1, CLD_KILLED 2, CLD_DUMPED 3) and *status
/// (exit status or signal); with WNOHANG and no exit yet, returns 0 with *code = 0.
/// Returns -1 with errno set on failure.
int _bgw_waitid_pidfd(int pidfd, int extra_flags, int *code, int *status);

/// `_bgw_waitid_pidfd` for the child `pid` (waitid(P_PID)): for our own child, whose pid is not
/// reused before this reaps it.
int _bgw_waitid_pid(pid_t pid, int extra_flags, int *code, int *status);

/// The step of `_bgw_spawn` that failed, for the error message.
enum {
    _BGW_SPAWN_OK = 0,
    _BGW_SPAWN_STACK,      // mmap of the child's stack
    _BGW_SPAWN_CLONE,      // clone(2)
    _BGW_SPAWN_SIGNALS,    // sigaction / sigprocmask
    _BGW_SPAWN_SETSID,     // setsid(): its own session and process group
    _BGW_SPAWN_RECORD,     // pwrite of the child's group into its slot of the record file
    _BGW_SPAWN_STDIO,      // dup2 of stdin, stdout, stderr
    _BGW_SPAWN_CHDIR,      // chdir(working_directory)
    _BGW_SPAWN_SETGROUPS,  // setgroups(2)
    _BGW_SPAWN_SETGID,     // setresgid(2)
    _BGW_SPAWN_SETUID,     // setresuid(2)
    _BGW_SPAWN_PDEATHSIG,  // prctl(PR_SET_PDEATHSIG)
    _BGW_SPAWN_PARENT_GONE,// the parent died before the child could arm PDEATHSIG
    _BGW_SPAWN_CLOSE_FDS,  // close_range(3, ~0, CLOSE_RANGE_CLOEXEC)
    _BGW_SPAWN_EXEC,       // execve(2)
};

/// What `_bgw_spawn` runs. All strings and arrays are prepared by the caller before the call:
/// the child runs in the parent's memory and may only do async-signal-safe, allocation-free work.
struct _bgw_spawn_request {
    const char *path;
    char *const *argv;           // NULL-terminated
    char *const *envp;           // NULL-terminated
    const char *working_directory; // NULL: inherit
    int stdin_fd, stdout_fd, stderr_fd;
    int set_groups;              // nonzero: setgroups(ngroups, groups)
    const gid_t *groups;
    size_t ngroups;
    int set_gid;                 // nonzero: setresgid(gid, gid, gid)
    gid_t gid;
    int set_uid;                 // nonzero: setresuid(uid, uid, uid)
    uid_t uid;
    // The runner's record of process groups (ProcessGroupRecord.swift): right after setsid the
    // child writes { int32 pid, uint32 record_generation, uint64 start time } (native byte order,
    // the start time as /proc/PID/stat field 22, 0 if unreadable) at record_offset of record_fd,
    // before any other step, and fails the spawn if it cannot. -1: no record.
    int record_fd;
    off_t record_offset;
    unsigned int record_generation;
    // The value part of the envp entry "WATCHDOG_PID=..." (room for 10 digits and a NUL): the
    // child writes its own pid there before execve, as systemd sets WATCHDOG_PID. NULL: none.
    char *watchdog_pid_value;
    // > 0: the child's soft RLIMIT_NOFILE is lowered to this (never raised; best effort, a
    // seccomp filter may refuse it); 0: inherited.
    int nofile_soft;
};

/// What `_bgw_spawn` did: on success pid and pidfd of the new process (which has executed
/// `path`); on failure the step and errno that failed (the child, if any, has been reaped).
struct _bgw_spawn_result {
    pid_t pid;
    int pidfd;
    int failed_step;
    int error;
};

/// Starts `req->path` in a new process: clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD), then in the
/// child: default signal dispositions, own session and process group, its group written into the record,
/// stdio, working directory, ids,
/// PR_SET_PDEATHSIG(SIGKILL) (after the id change, which would clear it), check that the parent
/// still lives, mark every other fd close-on-exec, empty signal mask, execve. The caller's
/// thread is suspended until the child has executed the program or failed, so on return the
/// outcome is known. PR_SET_PDEATHSIG fires when the calling *thread* exits: call this from a
/// thread that lives as long as the workers. Returns 0 on success, -1 on failure.
/// SIGCHLD must not be set to SIG_IGN in the process (it would reap the children behind our back).
int _bgw_spawn(const struct _bgw_spawn_request *req, struct _bgw_spawn_result *result);

/// Takes over Swift Concurrency's default executor through the runtime's hook variables
/// (swift_task_enqueueGlobal_hook, ...WithDelay_hook, ...WithDeadline_hook: function pointers of
/// the Swift calling convention, which Swift code cannot declare). From then on the runtime hands
/// every job meant for its global executor (libdispatch) to `enqueue`, and every delayed job
/// (Task.sleep) to `enqueue_after` with its delay in nanoseconds (0 when already due). Call once,
/// before the first task. Jobs of the main actor go to `enqueue_main` (see _bgw_run_main_job).
/// Installs nothing and returns -1 when any of those hooks is set already (someone else, e.g.
/// SwiftNIO, took the executor over); 0 once installed.
int _bgw_install_global_executor(void (*enqueue)(void *job),
                                 void (*enqueue_after)(void *job, unsigned long long delay_ns),
                                 void (*enqueue_main)(void *job));
/// Runs a job received through those hooks, on the generic executor (swift_job_run).
void _bgw_run_global_job(void *job);
/// Runs a main-actor job received through `enqueue_main`, on the main executor.
void _bgw_run_main_job(void *job);

/// `address` as a unix socket's address: an abstract name when it starts with '@' (the '@' stands
/// for the leading NUL, as in NOTIFY_SOCKET), else a path. Fills `out` and its length for bind or
/// connect. Returns 0, or -1 with errno set: EINVAL when empty, ENAMETOOLONG when it does not fit
/// sun_path (107 bytes at most).
int _bgw_sockaddr_un(const char *address, struct sockaddr_un *out, socklen_t *length);

/// A datagram socket (non-blocking, close-on-exec) connected to a notify socket's address as
/// NOTIFY_SOCKET gives it: a path ("/run/...") or an abstract name ("@name"). Returns the fd, or
/// -1 with errno set (EINVAL for any other form, ENAMETOOLONG for one that is too long).
int _bgw_notify_connect(const char *address);

/// send(fd, MSG_DONTWAIT | MSG_NOSIGNAL), again on EINTR: never blocks (EAGAIN when the
/// receiver's queue is full). Returns the bytes sent or -1 with errno set.
long _bgw_send_nowait(int fd, const void *bytes, size_t length);
#endif
