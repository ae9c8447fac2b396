// A serial executor that is one dedicated thread: the supervisor's, when its runner offers none
// of its own (the systemd runner). The thread sleeps on a condition variable while there is no job.
import Glibc

final class SerialThreadExecutor: SerialExecutor, @unchecked Sendable {
    // Safety of @unchecked Sendable: `jobs` is read and written only with `mutex` held; `mutex`
    // and `condition` are pthread objects at stable heap addresses that live as long as the
    // executor (its thread holds it, and never ends).
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var jobs: [UnownedJob] = []

    init(name: String) throws(SystemCallError) {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        pthread_cond_init(condition, nil)
        try startDedicatedThread(name: name, stackSize: 2 << 20) { [self] in run() }
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        pthread_mutex_lock(mutex)
        jobs.append(job)
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    private func run() {
        let me = asUnownedSerialExecutor()
        pthread_mutex_lock(mutex)
        while true {
            while jobs.isEmpty { pthread_cond_wait(condition, mutex) }
            let batch = jobs
            jobs.removeAll(keepingCapacity: true)
            pthread_mutex_unlock(mutex)
            for job in batch { job.runSynchronously(on: me) }
            pthread_mutex_lock(mutex)
        }
    }
}
