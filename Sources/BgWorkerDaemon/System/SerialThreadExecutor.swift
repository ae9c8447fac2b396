// A serial executor that is one dedicated thread: the supervisor's, when its runner offers none
// of its own (the systemd runner). The thread sleeps on a condition variable while there is no job.
import Glibc

final class SerialThreadExecutor: SerialExecutor, @unchecked Sendable {
    // Safety of @unchecked Sendable: `jobs` is read and written only with `condition` locked.
    private let condition = ThreadCondition()
    private var jobs: [UnownedJob] = []

    init(name: String) throws(SystemCallError) {
        try startDedicatedThread(name: name, stackSize: 2 << 20) { [self] in run() }
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    private func run() {
        let me = asUnownedSerialExecutor()
        condition.lock()
        while true {
            while jobs.isEmpty { condition.wait() }
            let batch = jobs
            jobs.removeAll(keepingCapacity: true)
            condition.unlock()
            for job in batch { job.runSynchronously(on: me) }
            condition.lock()
        }
    }
}
