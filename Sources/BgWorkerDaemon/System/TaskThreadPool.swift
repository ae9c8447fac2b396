// Swift Concurrency's default executor on Linux is libdispatch's thread pool, and libdispatch
// arms a 1 Hz timer to watch that pool the first time any task runs on it, for the life of the
// process: an idle daemon would wake once a second for nothing. bgworkerd therefore replaces the
// default executor with this pool (through the runtime's hooks, the way SwiftNIO can run Swift
// Concurrency on its event loops): a few threads that block on a condition variable while there
// is no job, and wait with a deadline only while a timer is pending. Idle, no thread of the pool
// wakes. `Task.sleep` with a clock does not go through the runtime's hooks in Swift 6.3 (it asks
// libdispatch for a timer directly), so the daemon sleeps with `DaemonClock.sleep`, which uses
// this pool's timers when the pool is installed.
import CShims
import Glibc
import Synchronization

/// The threads that run every job the Swift runtime would give its global executor.
///
/// Jobs run in the order they were enqueued (priorities are not used: the daemon's tasks are all
/// short and of one kind); delayed jobs run once due on CLOCK_MONOTONIC.
public final class TaskThreadPool: @unchecked Sendable {
    // Safety of @unchecked Sendable: every stored `var` (the queues, `timerWaiting`) is read and
    // written only with `condition` locked.
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

    /// Written once, by `installAsGlobalExecutor`, before the hooks that read it are installed
    /// and before any thread of the pool exists; only read after that.
    nonisolated(unsafe) static private(set) var installed: TaskThreadPool?

    private init() {}

    /// Makes a pool of `threads` threads (`bgw-task-N`) the global executor of this process.
    /// Call once, first thing in `main`, before any task exists; the calling thread then calls
    /// `runJobs()` or goes on with its own work.
    public static func installAsGlobalExecutor(threads: Int) throws {
        precondition(installed == nil, "TaskThreadPool.installAsGlobalExecutor called twice")
        let pool = TaskThreadPool()
        installed = pool
        _bgw_install_global_executor(
            { job in TaskThreadPool.installed?.enqueue(job!) },
            { job, delay in TaskThreadPool.installed?.enqueue(job!, after: delay) })
        for index in 0..<max(threads, 1) {
            // Synchronous code of tasks (the configuration parser, for one) may nest deeply.
            try startDedicatedThread(name: "bgw-task-\(index)", stackSize: 2 << 20) { pool.runJobs() }
        }
    }

    /// Runs jobs on the calling thread for ever (for `main`, once the work is in tasks).
    public static func runJobsOnThisThread() -> Never {
        guard let pool = installed else { fatalError("TaskThreadPool is not installed") }
        pool.runJobs()
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

private func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// Sleeping without libdispatch: on the task pool's timers where the pool is installed (the
/// daemon), else `Task.sleep` (tests that run the daemon's code in their own process).
public enum DaemonClock {
    /// Sleeps until `deadline` of ContinuousClock. Throws `CancellationError` when the task is
    /// cancelled, at once.
    public static func sleep(until deadline: ContinuousClock.Instant) async throws {
        guard let pool = TaskThreadPool.installed else {
            return try await Task.sleep(until: deadline, clock: .continuous)
        }
        let left = ContinuousClock.now.duration(to: deadline)
        let (seconds, attoseconds) = left.components
        let delay = left <= .zero ? 0 : UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
        let sleeper = Sleeper()
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                sleeper.begin(continuation, pool: pool, delay: delay)
            }
        } onCancel: {
            sleeper.cancel(pool: pool)
        }
    }

    public static func sleep(for duration: Duration) async throws {
        try await sleep(until: ContinuousClock.now.advanced(by: duration))
    }
}

/// One sleep: resumed exactly once, by its timer or by its cancellation, whichever comes first.
private final class Sleeper: Sendable {
    private enum State {
        case idle
        case waiting(CheckedContinuation<Void, any Error>, token: UInt64)
        case cancelled
        case done
    }
    private let state = Mutex(State.idle)

    func begin(_ continuation: CheckedContinuation<Void, any Error>, pool: TaskThreadPool, delay: UInt64) {
        // The state is set before the timer can fire, so the lock is held across `schedule`.
        let cancelledAlready = state.withLock { state -> Bool in
            if case .cancelled = state { return true }
            let token = pool.schedule(after: delay) { [self] in fire() }
            state = .waiting(continuation, token: token)
            return false
        }
        if cancelledAlready { continuation.resume(throwing: CancellationError()) }
    }

    private func fire() {
        let continuation = state.withLock { state -> CheckedContinuation<Void, any Error>? in
            guard case .waiting(let continuation, _) = state else { return nil }
            state = .done
            return continuation
        }
        continuation?.resume()
    }

    func cancel(pool: TaskThreadPool) {
        let continuation = state.withLock { state -> CheckedContinuation<Void, any Error>? in
            switch state {
            case .idle:
                state = .cancelled
                return nil
            case .waiting(let continuation, let token):
                guard pool.cancel(token) else { return nil }  // firing now: let it resume
                state = .done
                return continuation
            case .cancelled, .done:
                return nil
            }
        }
        continuation?.resume(throwing: CancellationError())
    }
}
