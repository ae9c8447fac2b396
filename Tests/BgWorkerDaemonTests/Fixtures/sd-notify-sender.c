/* A notify sender linked with libsystemd, as a C daemon written for Type=notify would be:
 * sd_notify(READY=1 and STATUS=), then sd_notify_barrier, which passes a pipe end and waits
 * (up to 5 s) for the receiver to close it. Prints "pid N" first and the result of each call.
 * Compiled by NotifyReceiverTests with `cc -o ... -lsystemd`. */
#include <stdio.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>

int main(void) {
        printf("pid %d\n", (int) getpid());
        fflush(stdout);
        int r = sd_notify(0, "READY=1\nSTATUS=from C via sd_notify");
        printf("sd_notify %d\n", r);
        fflush(stdout);
        if (r <= 0)
                return 1;
        r = sd_notify_barrier(0, 5 * 1000 * 1000);
        printf("sd_notify_barrier %d\n", r);
        fflush(stdout);
        return r < 0 ? 2 : 0;
}
