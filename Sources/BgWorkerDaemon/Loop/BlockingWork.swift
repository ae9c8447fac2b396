// Blocking work kept off the event loop (issue 9): the state file's write and fsync, reading and
// parsing the configuration on Reload/SIGHUP, NSS look-ups of workers' users and groups. One
// dedicated thread (`bgw-io`) runs them in the order given and sleeps on a condition variable
// when there is none; the caller awaits the result, which comes back on the caller's isolation
// (for the supervisor: a job of the loop). While a write waits for the disk, the loop goes on
// with every other worker's exits and respawns.
import Glibc

public final class BlockingWork: @unchecked Sendable {
    // Safety of @unchecked Sendable: `queue` is read and written only with `condition` locked.
    private let condition = ThreadCondition()
    private var queue: [Item] = []
    /// Boxed closure (see `EventHandler` for why closures are boxed in shared containers).
    private struct Item {
        let run: @Sendable () -> Void
    }

    public init(name: String = "bgw-io") throws(SystemCallError) {
        try startDedicatedThread(name: name, stackSize: 2 << 20) { [self] in runItems() }
    }

    /// Queues `work` behind what is queued; `done` is called on the work thread with its result.
    public func submit<T: Sendable>(_ work: @escaping @Sendable () -> T, then done: @escaping @Sendable (T) -> Void) {
        condition.lock()
        queue.append(Item(run: { done(work()) }))
        condition.signal()
        condition.unlock()
    }

    /// Runs `work` on the work thread, after what is queued, and returns its result.
    public func run<T: Sendable>(
        isolation: isolated (any Actor)? = #isolation, _ work: @escaping @Sendable () -> T
    ) async -> T {
        await withCheckedContinuation(isolation: isolation) { continuation in
            submit(work) { continuation.resume(returning: $0) }
        }
    }

    private func runItems() {
        condition.lock()
        while true {
            while queue.isEmpty { condition.wait() }
            let batch = queue
            queue.removeAll(keepingCapacity: true)
            condition.unlock()
            for item in batch { item.run() }
            condition.lock()
        }
    }
}
