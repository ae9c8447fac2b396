import CShims
import CDBus
import Glibc
import Synchronization
import SystemSupport

/// Something for the connection thread to do: a closure over the thread's state, or a job of a
/// task that prefers this connection as its executor (method handlers run that way, so a
/// handler that does not suspend answers without leaving the connection thread).
enum LoopItem {
    case work(@Sendable (LoopState) -> Void)
    case job(UnownedJob)
}

struct WorkQueue {
    var items: [LoopItem] = []
    /// An eventfd write is outstanding, or the loop will look at the queue before it sleeps.
    var wakePending = false
    /// The loop has ended; nothing is accepted any more.
    var closed = false
}

/// The shared part of a connection: what other threads may touch (the work queue, the object
/// registry, the unique name, the event subscribers), plus the thread-confined `LoopState`.
///
/// It is also a `TaskExecutor` that runs jobs on the connection thread, so method handlers start
/// on the thread that received the call and reply without a thread hop.
final class ConnectionCore: TaskExecutor, Sendable {
    let queue = Mutex(WorkQueue())
    let eventFD: Int32
    /// pthread_self() of the connection thread once it runs, 0 before.
    private let loopThread = Atomic<UInt>(0)
    /// The loop thread's kernel id, for tests that read its /proc entries.
    let loopThreadID = Atomic<Int32>(0)
    private let stateBox: LoopStateBox
    let exports = Mutex<[ObjectPath: ExportedObject]>([:])
    let uniqueName = Mutex<String?>(nil)
    let events = Mutex(EventHub())
    /// Armed by `DBusConnection.yieldOnNextWake`; taken by the next wake of the connection thread.
    let yieldOnWake = Atomic<Bool>(false)

    init() throws(DBusConnectionError) {
        let fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard fd >= 0 else { throw DBusConnectionError(.connectFailed, "eventfd: \(String(cString: strerror(errno)))") }
        eventFD = fd
        stateBox = LoopStateBox()
        try stateBox.state.setUp(core: self)
    }

    deinit {
        // Closed here, not when the loop ends: other threads may still hold the core and must
        // never write to a descriptor number that has been reused.
        Glibc.close(eventFD)
    }

    var isOnLoopThread: Bool { loopThread.load(ordering: .acquiring) == UInt(pthread_self()) }

    func forgetLoopThread() { loopThread.store(0, ordering: .releasing) }

    /// Only before the thread starts (setting the handle) or on the connection thread.
    var loopStateForSetup: LoopState { stateBox.state }

    /// Starts the connection thread, which opens `address` and (as a bus client) says Hello.
    /// Resumes `ready` once the connection can be used, or with the failure.
    func start(address: String, busClient: Bool, timeout: Duration,
               ready: CheckedContinuation<Void, any Error>) throws(DBusConnectionError) {
        do {
            // Named, so that `top -H` and /proc tell it from the thread that created it.
            try startDedicatedThread(name: "bgw-bus", stackSize: 8 << 20) { [self] in
                self.loopThread.store(UInt(pthread_self()), ordering: .releasing)
                self.loopThreadID.store(_bgw_gettid(), ordering: .releasing)
                self.stateBox.state.run(address: address, busClient: busClient, timeout: timeout, ready: ready)
            }
        } catch {
            throw DBusConnectionError(.connectFailed, "cannot start the connection thread: \(errnoText(error.errno))")
        }
    }

    /// Runs `work` on the connection thread: at once when called from a handler running there
    /// (so replies and signals keep their order without a wake-up), else queued in FIFO order.
    /// Returns false when the connection has ended (the work is not run).
    @discardableResult
    func submit(_ work: @escaping @Sendable (LoopState) -> Void) -> Bool {
        // Once `.disconnected` is announced nothing more is taken, although the loop thread may
        // not have closed its queue yet: work taken then would be dropped without an error.
        guard events.withLock({ $0.terminal == nil }) else { return false }
        if isOnLoopThread {
            let state = stateBox.state
            if state.inlineAllowed && !state.finished {
                state.inlineAllowed = false
                work(state)
                state.inlineAllowed = true
                return true
            }
        }
        return push(.work(work))
    }

    private func push(_ item: LoopItem) -> Bool {
        let onLoop = isOnLoopThread
        let (accepted, wake) = queue.withLock { q -> (Bool, Bool) in
            guard !q.closed else { return (false, false) }
            q.items.append(item)
            // The loop drains the queue before it sleeps, so its own pushes need no wake-up.
            if onLoop || q.wakePending { return (true, false) }
            q.wakePending = true
            return (true, true)
        }
        if wake {
            var one: UInt64 = 1
            _ = write(eventFD, &one, 8)
            if yieldOnWake.exchange(false, ordering: .relaxed) { sched_yield() }
        }
        return accepted
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let unownedJob = UnownedJob(job)
        if !push(.job(unownedJob)) {
            // The connection has ended: its tasks go on on the global executor.
            globalConcurrentExecutor.enqueue(ExecutorJob(unownedJob))
        }
    }

    /// Asks the connection thread to close the connection.
    func close(reason: DBusConnectionError) {
        submit { $0.shutdown(reason) }
    }
}

/// The connection thread's entry point, retained across pthread_create.

/// Holds the thread-confined state. `@unchecked Sendable` is safe because `state` is touched
/// only on the connection thread, except `setUp` and setting `handle`, both done before the
/// thread is created (pthread_create orders them before everything the thread does).
final class LoopStateBox: @unchecked Sendable {
    let state = LoopState()
}

/// Subscribers of connection events; the terminal event is kept for late subscribers.
struct EventHub {
    var subscribers: [UInt64: AsyncStream<ConnectionEvent>.Continuation] = [:]
    var nextID: UInt64 = 0
    var terminal: ConnectionEvent?
}

/// A timeout in nanoseconds for libdbus's pending calls: never negative.
func timeoutNanoseconds(_ duration: Duration) -> UInt64 {
    UInt64(max(nanoseconds(duration), 0))
}
