// Swift Concurrency's executor hooks: the runtime calls them with the Swift calling convention
// (swiftcall), so they are declared here. See _bgw_install_global_executor in CShims.h.
#include "CShims.h"
#include <stdint.h>

typedef struct {
    const void *identity;      // NULL and 0: the generic executor
    uintptr_t implementation;
} bgw_serial_executor_ref;

extern void *swift_task_enqueueGlobal_hook;
extern void *swift_task_enqueueGlobalWithDelay_hook;
extern void *swift_task_enqueueGlobalWithDeadline_hook;
extern void *swift_task_enqueueMainExecutor_hook;
__attribute__((swiftcall)) extern bgw_serial_executor_ref swift_task_getMainExecutor(void);
__attribute__((swiftcall)) extern void swift_job_run(void *job, bgw_serial_executor_ref executor);
__attribute__((swiftcall)) extern void swift_get_time(long long *seconds, long long *nanoseconds, int clock);

static void (*bgw_enqueue)(void *job);
static void (*bgw_enqueue_after)(void *job, unsigned long long delay_ns);
static void (*bgw_enqueue_main)(void *job);

__attribute__((swiftcall)) static void enqueue_main(void *job, void *original) {
    (void)original;
    bgw_enqueue_main(job);
}

__attribute__((swiftcall)) static void enqueue_global(void *job, void *original) {
    (void)original;
    bgw_enqueue(job);
}

__attribute__((swiftcall)) static void enqueue_global_with_delay(unsigned long long delay_ns, void *job, void *original) {
    (void)original;
    bgw_enqueue_after(job, delay_ns);
}

// The deadline is on the runtime's clock `clock` (continuous or suspending); the delay from now on
// that same clock is what the pool needs.
__attribute__((swiftcall)) static void enqueue_global_with_deadline(long long seconds, long long nanoseconds,
                                                                  long long tolerance_seconds,
                                                                  long long tolerance_nanoseconds,
                                                                  int clock, void *job, void *original) {
    (void)tolerance_seconds; (void)tolerance_nanoseconds; (void)original;
    long long now_seconds = 0, now_nanoseconds = 0;
    swift_get_time(&now_seconds, &now_nanoseconds, clock);
    long long delay = (seconds - now_seconds) * 1000000000LL + (nanoseconds - now_nanoseconds);
    bgw_enqueue_after(job, delay > 0 ? (unsigned long long)delay : 0);
}

int _bgw_install_global_executor(void (*enqueue)(void *job),
                                 void (*enqueue_after)(void *job, unsigned long long delay_ns),
                                 void (*enqueue_main)(void *job)) {
    if (swift_task_enqueueGlobal_hook || swift_task_enqueueGlobalWithDelay_hook ||
        swift_task_enqueueGlobalWithDeadline_hook || swift_task_enqueueMainExecutor_hook) {
        return -1;
    }
    bgw_enqueue = enqueue;
    bgw_enqueue_after = enqueue_after;
    bgw_enqueue_main = enqueue_main;
    swift_task_enqueueMainExecutor_hook = (void *)enqueue_main;
    swift_task_enqueueGlobalWithDeadline_hook = (void *)enqueue_global_with_deadline;
    swift_task_enqueueGlobalWithDelay_hook = (void *)enqueue_global_with_delay;
    swift_task_enqueueGlobal_hook = (void *)enqueue_global;
    return 0;
}

void _bgw_run_global_job(void *job) {
    bgw_serial_executor_ref generic = {0, 0};
    swift_job_run(job, generic);
}

void _bgw_run_main_job(void *job) {
    swift_job_run(job, swift_task_getMainExecutor());
}
