/* A notify sender linked with libsystemd, as a C daemon written for Type=notify would be:
 * sd_notify(READY=1 and STATUS=), then sd_notify_barrier, which passes a pipe end and waits
 * (up to 5 s) for the receiver to close it. Prints "pid N" first and the result of each call.
 * With arguments, the message is those lines instead (`sd-notify-sender WATCHDOG=trigger`).
 * Compiled by NotifyReceiverTests with `cc -o ... -lsystemd`. */
#include <stdio.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>

int main(int argc, char **argv) {
        printf("pid %d\n", (int) getpid());
        fflush(stdout);
        char message[4096] = "READY=1\nSTATUS=from C via sd_notify";
        if (argc > 1) {
                size_t used = 0;
                for (int i = 1; i < argc; i++) {
                        int n = snprintf(message + used, sizeof message - used, "%s%s", i > 1 ? "\n" : "", argv[i]);
                        if (n < 0 || (size_t) n >= sizeof message - used)
                                return 3;
                        used += (size_t) n;
                }
        }
        int r = sd_notify(0, message);
        printf("sd_notify %d\n", r);
        fflush(stdout);
        if (r <= 0)
                return 1;
        r = sd_notify_barrier(0, 5 * 1000 * 1000);
        printf("sd_notify_barrier %d\n", r);
        fflush(stdout);
        return r < 0 ? 2 : 0;
}
