// Swift Concurrency's default executor on Linux is libdispatch's thread pool, and libdispatch
// arms a 1 Hz timer to watch that pool the first time any task runs on it, for the life of the
// process: an idle daemon would wake once a second for nothing. bgworkerd therefore replaces the
// default executor with this pool (through the runtime's hooks, the way SwiftNIO can run Swift
// Concurrency on its event loops): a few threads that block on a condition variable while there
// is no job, and wait with a deadline only while a timer is pending. Idle, no thread of the pool
// wakes. `Task.sleep` with a clock does not go through the runtime's hooks in Swift 6.3 (it asks
// libdispatch for a timer directly), so the daemon sleeps on its event loop's timers
// (`EventLoop.sleep`).
import CShims
import Glibc
import Synchronization

/// The threads that run every job the Swift runtime would give its global executor.
///
/// Jobs run in the order they were enqueued (priorities are not used: the daemon's tasks are all
/// short and of one kind); delayed jobs run once due on CLOCK_MONOTONIC.
public final class TaskThreadPool: @unchecked Sendable {
    // Safety of @unchecked Sendable: every stored `var` (the queues, `timerWaiting`) is read and
    // written only with `condition` locked; `mainJobs` only with `mainCondition` locked.
    private let condition = ThreadCondition()
    private var ready: [UnsafeMutableRawPointer] = []
    private var readyHead = 0
    /// What is due at a deadline: a job, or an action (a sleeping task's resumption).
    private enum Due {
        case job(UnsafeMutableRawPointer)
        case action(@Sendable () -> Void)
    }
    /// Delayed jobs and actions, sorted by deadline, latest first (the next due is the last).
    private var delayed: [(deadline: UInt64, sequence: UInt64, due: Due)] = []
    private var dueActions: [@Sendable () -> Void] = []
    private var nextSequence: UInt64 = 0
    /// A thread waits with a deadline for the next delayed job; the others wait without one.
    private var timerWaiting = false

    /// Jobs of the main actor, run by `runMainJobsOnThisThread` (the process's main thread).
    private let mainCondition = ThreadCondition()
    private var mainJobs: [UnsafeMutableRawPointer] = []

    /// Written once, by `installAsGlobalExecutor`, before the hooks that read it are installed
    /// and before any thread of the pool exists; only read after that.
    nonisolated(unsafe) static private(set) var installed: TaskThreadPool?

    /// For `installAsGlobalExecutor`, and for tests of the pool's queue and timers (a pool that
    /// is not installed runs what `schedule` and `run` give it, on `threads` threads).
    init(threads: Int = 0, name: String = "bgw-task") throws(SystemCallError) {
        for index in 0..<threads {
            // Synchronous code of tasks (the configuration parser, for one) may nest deeply.
            try startDedicatedThread(name: "\(name)-\(index)", stackSize: 2 << 20) { [self] in runJobs() }
        }
    }

    /// What `installAsGlobalExecutor` did.
    public enum Installation: Sendable, Equatable {
        case installed
        /// Swift Concurrency stays on its default executor (libdispatch), for this reason.
        case notInstalled(String)
    }

    /// Makes a pool of `threads` threads (`bgw-task-N`) the global executor of this process, as
    /// SwiftNIO takes it over: only with a compiler whose runtime hooks it is known to work with
    /// (Swift 6.3), and only when no one has set the hooks already; otherwise it changes nothing
    /// and says why (the daemon then logs a warning and runs on libdispatch: correct, but an idle
    /// daemon wakes once a second). Main-actor jobs are queued for `runMainJobsOnThisThread`, so
    /// a hop to the main actor runs instead of waiting for ever. Call once, first thing in
    /// `main`, before any task exists.
    public static func installAsGlobalExecutor(threads: Int) throws -> Installation {
        #if compiler(>=6.3) && compiler(<6.4)
        guard installed == nil else { return .notInstalled("a pool is installed already") }
        let pool = try TaskThreadPool(threads: 0)
        installed = pool
        let rc = _bgw_install_global_executor(
            { job in TaskThreadPool.installed?.enqueue(job!) },
            { job, delay in TaskThreadPool.installed?.enqueue(job!, after: delay) },
            { job in TaskThreadPool.installed?.enqueueMain(job!) })
        guard rc == 0 else {
            installed = nil
            return .notInstalled("Swift Concurrency's executor hooks are set already (another library took the executor over)")
        }
        for index in 0..<max(threads, 1) {
            try startDedicatedThread(name: "bgw-task-\(index)", stackSize: 2 << 20) { pool.runJobs() }
        }
        return .installed
        #else
        return .notInstalled("the executor hooks are known to work with Swift 6.3 only, not this compiler's runtime")
        #endif
    }

    /// Runs the main actor's jobs on the calling thread (the main thread) for ever.
    public static func runMainJobsOnThisThread() -> Never {
        guard let pool = installed else { fatalError("TaskThreadPool is not installed") }
        pool.mainCondition.lock()
        while true {
            while pool.mainJobs.isEmpty { pool.mainCondition.wait() }
            let batch = pool.mainJobs
            pool.mainJobs.removeAll(keepingCapacity: true)
            pool.mainCondition.unlock()
            for job in batch { _bgw_run_main_job(job) }
            pool.mainCondition.lock()
        }
    }

    private func enqueueMain(_ job: UnsafeMutableRawPointer) {
        mainCondition.lock()
        mainJobs.append(job)
        mainCondition.signal()
        mainCondition.unlock()
    }

    private func enqueue(_ job: UnsafeMutableRawPointer) {
        condition.lock()
        ready.append(job)
        condition.signal()
        condition.unlock()
    }

    private func enqueue(_ job: UnsafeMutableRawPointer, after delay: UInt64) {
        condition.lock()
        insert(.job(job), at: monotonicNanoseconds() &+ delay)
        condition.unlock()
    }

    /// Runs `action` on a thread of the pool once `delay` has passed (on CLOCK_MONOTONIC); returns
    /// a token for `cancel`.
    func schedule(after delay: UInt64, _ action: @escaping @Sendable () -> Void) -> UInt64 {
        condition.lock()
        defer { condition.unlock() }
        return insert(.action(action), at: monotonicNanoseconds() &+ delay)
    }

    /// Takes back a scheduled action; false when it has run (or is running) already.
    func cancel(_ token: UInt64) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard let index = delayed.firstIndex(where: { $0.sequence == token }) else { return false }
        delayed.remove(at: index)
        return true
    }

    /// With `condition` locked.
    @discardableResult
    private func insert(_ due: Due, at deadline: UInt64) -> UInt64 {
        nextSequence &+= 1
        let sequence = nextSequence
        // Binary search for the place that keeps `delayed` sorted latest first.
        var low = 0, high = delayed.count
        while low < high {
            let middle = (low + high) / 2
            let other = delayed[middle]
            if (other.deadline, other.sequence) > (deadline, sequence) { low = middle + 1 } else { high = middle }
        }
        delayed.insert((deadline, sequence, due), at: low)
        // A new earliest deadline: the thread waiting for the old one must look again.
        if low == delayed.count - 1 { condition.broadcast() }
        return sequence
    }

    /// Runs `action` on a thread of the pool, after the jobs queued before it (tests).
    func run(_ action: @escaping @Sendable () -> Void) {
        _ = schedule(after: 0, action)
    }

    private func runJobs() -> Never {
        condition.lock()
        while true {
            let now = monotonicNanoseconds()
            while let next = delayed.last, next.deadline <= now {
                delayed.removeLast()
                switch next.due {
                case .job(let job): ready.append(job)
                case .action(let action): dueActions.append(action)
                }
            }
            if !dueActions.isEmpty {
                let actions = dueActions
                dueActions = []
                condition.unlock()
                actions.forEach { $0() }
                condition.lock()
            } else if readyHead < ready.count {
                let job = ready[readyHead]
                readyHead += 1
                if readyHead == ready.count {
                    ready.removeAll(keepingCapacity: true)
                    readyHead = 0
                } else {
                    // A queue that never empties must not grow for ever.
                    if readyHead >= 4096 && readyHead * 2 >= ready.count {
                        ready.removeFirst(readyHead)
                        readyHead = 0
                    }
                    condition.signal()  // more work: another thread may take it
                }
                condition.unlock()
                _bgw_run_global_job(job)
                condition.lock()
            } else if let next = delayed.last, !timerWaiting {
                timerWaiting = true
                condition.wait(until: next.deadline)
                timerWaiting = false
                // Someone must wait for the remaining deadlines if this thread goes to run a job.
                if !delayed.isEmpty { condition.signal() }
            } else {
                condition.wait()
            }
        }
    }
}
