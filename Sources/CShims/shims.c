#define _GNU_SOURCE
#include "CShims.h"
#include <sys/syscall.h>
#include <fcntl.h>
#include <unistd.h>

int _bgw_pidfd_open(pid_t pid, unsigned int flags) {
    return (int)syscall(SYS_pidfd_open, pid, flags);
}

int _bgw_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

int _bgw_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}
