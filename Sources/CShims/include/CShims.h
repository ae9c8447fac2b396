#ifndef BGWORKER_CSHIMS_H
#define BGWORKER_CSHIMS_H
// Only what Swift cannot call directly: raw syscalls (syscall(2) is variadic)
// and constants glibc 2.36 does not export to Swift. Keep each shim a few lines.
#include <sys/types.h>
#include <signal.h>

/// pidfd_open(2). Returns a pidfd or -1 with errno set.
int _bgw_pidfd_open(pid_t pid, unsigned int flags);
/// pidfd_send_signal(2) with no siginfo. Returns 0 or -1 with errno set.
int _bgw_pidfd_send_signal(int pidfd, int sig);

/// pipe2(fds, O_CLOEXEC): glibc declares pipe2 only under _GNU_SOURCE, which Swift does not set.
int _bgw_pipe_cloexec(int fds[2]);

#endif
