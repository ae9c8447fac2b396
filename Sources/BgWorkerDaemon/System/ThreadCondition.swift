// A pthread mutex with one condition variable on CLOCK_MONOTONIC, for the daemon's own threads
// that sleep until there is work (TaskThreadPool, BlockingWork).
import Glibc

final class ThreadCondition: @unchecked Sendable {
    // Safety of @unchecked Sendable: pthread objects are made for use from many threads; they sit
    // at stable heap addresses, made in init and never freed (their owners live as long as the
    // process, with threads that never end).
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    init() {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
    /// With the lock held: releases it until signalled.
    func wait() { pthread_cond_wait(condition, mutex) }
    /// With the lock held: releases it until signalled or `deadline` (CLOCK_MONOTONIC nanoseconds).
    func wait(until deadline: UInt64) {
        var time = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        pthread_cond_timedwait(condition, mutex, &time)
    }
    func signal() { pthread_cond_signal(condition) }
    func broadcast() { pthread_cond_broadcast(condition) }
}
